//! The idempotency layer: the event's id is claimed in the consumer's
//! idempotency store before the attempts, recorded as handled after a
//! success and released after anything else, so an event delivered twice
//! (a redelivery, a republished copy) is handled once.

use std::future::Future;
use std::time::Duration;

use super::pipeline::Verdict;
use super::stats::Counter;
use super::Shared;
use crate::consumer::idempotency::{Claim, ClaimToken, IdempotencyStore};
use crate::transport;

/// How often a consumer first looks again at an event id claimed elsewhere;
/// the pause doubles up to [`CLAIM_POLL_MAX`].
pub(super) const CLAIM_POLL_START: Duration = Duration::from_millis(50);
pub(super) const CLAIM_POLL_MAX: Duration = Duration::from_secs(1);

impl<S: Send + Sync + 'static> Shared<S> {
    /// The key an event's claim is stored under, if this consumer has an
    /// idempotency store.
    pub(super) fn claim_key(&self, event_id: &str) -> Option<String> {
        self.idempotency
            .as_ref()
            .map(|_| format!("{}/{event_id}", self.name))
    }

    /// Runs `inner` (the layers inside: the attempts) once the claim on
    /// `key` is acquired; without a key (no store), runs it at once.
    /// `inner` is not polled when the claim says the event was handled
    /// already, or cannot be taken.
    pub(super) async fn idempotent(
        &self,
        key: Option<String>,
        event_type: &'static str,
        delivery: &transport::Delivery,
        inner: impl Future<Output = Verdict>,
    ) -> Verdict {
        let (Some(store), Some(key)) = (&self.idempotency, key) else {
            return inner.await;
        };
        let store = &**store;
        let mut pause = CLAIM_POLL_START;
        let token = loop {
            match store.claim(&key).await {
                Ok(Claim::Acquired(token)) => break token,
                Ok(Claim::Done) => {
                    self.count(Counter::Duplicates, event_type);
                    tracing::debug!("duplicate event acknowledged without handling");
                    return Verdict::Ack { handled: false };
                }
                Ok(Claim::InProgress) => {
                    // Another delivery of this id is being handled (a
                    // republished copy, or an earlier delivery still
                    // running elsewhere). Wait for its outcome here,
                    // holding this delivery: a nack per poll would spend
                    // the broker's delivery attempts on waiting.
                    tracing::debug!(?pause, "event id is being handled elsewhere; waiting");
                    if !self.pause(delivery, pause).await {
                        self.count(Counter::NackedOnShutdown, event_type);
                        return Verdict::Nack(None);
                    }
                    pause = (pause * 2).min(CLAIM_POLL_MAX);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "idempotency store unavailable; event nacked");
                    return Verdict::Nack(Some(self.retry.delay(delivery.attempt())));
                }
            }
        };
        let verdict = inner.await;
        if let Verdict::Ack { handled: true } = verdict {
            Box::pin(self.complete(store, &key, token)).await;
        } else if let Err(e) = store.release(&key, token).await {
            // Given up when the delivery is (nack, dead letter), not
            // between in-process attempts: a copy arriving meanwhile keeps
            // waiting.
            tracing::warn!(error = %e, "could not release an idempotency claim");
        }
        verdict
    }

    /// Records `key` as handled. A failed write (the store's server
    /// restarting) is retried with the retry policy's backoff, up to its
    /// attempts, before the event is acked: if the ack were lost as well,
    /// the redelivery would find the claim still pending and, once it timed
    /// out, handle the event a second time.
    async fn complete(&self, store: &dyn IdempotencyStore, key: &str, token: ClaimToken) {
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
