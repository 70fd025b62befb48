//! Routing an event to its handler, and the idempotency claim on its id.

use std::sync::Arc;
use std::time::Duration;

use super::attempts::Begun;
use super::stats::Counter;
use super::{settle, Held, Shared, UNKNOWN_TYPE};
use crate::consumer::dead_letter::Reason;
use crate::consumer::idempotency::{Claim, ClaimToken, IdempotencyStore};
use crate::wire::RawEvent;

/// An idempotency claim on the id of the event being handled.
pub(super) struct Claimed<'a> {
    pub(super) store: &'a dyn IdempotencyStore,
    pub(super) key: String,
    pub(super) token: ClaimToken,
}

/// How often a consumer first looks again at an event id claimed elsewhere;
/// the pause doubles up to [`CLAIM_POLL_MAX`].
pub(super) const CLAIM_POLL_START: Duration = Duration::from_millis(50);
pub(super) const CLAIM_POLL_MAX: Duration = Duration::from_secs(1);

impl<S: Send + Sync + 'static> Shared<S> {
    /// Finds the event's handler and claims its id (with idempotency),
    /// then runs the attempts.
    ///
    /// `ordered`: the event's key is handled strictly in order, so a failed
    /// attempt is retried here, holding the key, rather than handed back to
    /// the broker (whose redelivery would let the key's next event overtake).
    pub(super) async fn handle(
        self: Arc<Self>,
        from: usize,
        raw: Box<RawEvent>,
        delivery: Held,
        ordered: bool,
    ) {
        let Some((event_type, handler)) = self.route(from, raw.metadata.event_type()) else {
            let text = format!("no handler for {}", raw.metadata.event_type());
            let attempt = delivery.attempt();
            if self.native_redelivery && self.retry.allows_another(attempt) {
                // Instances of one consumer share its broker consumer, whose
                // types change with a release: during a rolling deploy an
                // older instance gets the types only newer ones handle.
                // Handed back (the broker counts the attempt), and
                // dead-lettered only once the attempts run out.
                tracing::debug!(
                    event.r#type = raw.metadata.event_type(),
                    attempt,
                    "no handler here; handed back for an instance that has one"
                );
                self.count(Counter::Retried, UNKNOWN_TYPE);
                let delay = self.retry.delay(attempt);
                return settle(Box::pin(delivery.nack(Some(delay))).await);
            }
            return self
                .dead_letter(delivery, Reason::NoHandler, &text, attempt, UNKNOWN_TYPE)
                .await;
        };
        let handler = handler.clone();
        let mut claim = None;
        if let Some(store) = &self.idempotency {
            let key = format!("{}/{}", self.name, raw.metadata.id());
            let mut pause = CLAIM_POLL_START;
            loop {
                match store.claim(&key).await {
                    Ok(Claim::Acquired(token)) => {
                        claim = Some(Claimed {
                            store: store.as_ref(),
                            key,
                            token,
                        });
                        break;
                    }
                    Ok(Claim::Done) => {
                        self.count(Counter::Duplicates, event_type);
                        tracing::debug!("duplicate event acknowledged without handling");
                        return settle(Box::pin(delivery.ack()).await);
                    }
                    Ok(Claim::InProgress) => {
                        // Another delivery of this id is being handled (a
                        // republished copy, or an earlier delivery still
                        // running elsewhere). Wait for its outcome here,
                        // holding this delivery: a nack per poll would spend
                        // the broker's delivery attempts on waiting.
                        tracing::debug!(?pause, "event id is being handled elsewhere; waiting");
                        if !self.pause(&delivery, pause).await {
                            self.count(Counter::NackedOnShutdown, event_type);
                            return settle(Box::pin(delivery.nack(None)).await);
                        }
                        pause = (pause * 2).min(CLAIM_POLL_MAX);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "idempotency store unavailable; event nacked");
                        let delay = self.retry.delay(delivery.attempt());
                        return settle(Box::pin(delivery.nack(Some(delay))).await);
                    }
                }
            }
        }
        self.attempts(
            event_type,
            handler,
            delivery,
            Begun::Fresh(raw),
            claim,
            ordered,
        )
        .await
    }

    /// Records `key` as handled. A failed write (the store's server
    /// restarting) is retried with the retry policy's backoff, up to its
    /// attempts, before the event is acked: if the ack were lost as well,
    /// the redelivery would find the claim still pending and, once it timed
    /// out, handle the event a second time.
    pub(super) async fn complete(
        &self,
        store: &dyn IdempotencyStore,
        key: &str,
        token: ClaimToken,
    ) {
        let mut attempt = 1;
        loop {
            let error = match store.complete(key, token).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if !self.retry.allows_another(attempt) || self.is_cancelled() {
                tracing::warn!(error = %error, attempt, "could not record the event as handled");
                return;
            }
            tracing::debug!(error = %error, attempt, "recording the event as handled failed; retrying");
            tokio::select! {
                biased;
                () = self.cancellation() => {}
                _ = tokio::time::sleep(self.retry.delay(attempt)) => {}
            }
            attempt += 1;
        }
    }
}
