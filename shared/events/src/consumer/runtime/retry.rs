//! The retry layer: the attempts at one event. The handler is called
//! (through the timeout layer and the user's layers) until it succeeds,
//! rejects the event or runs out of attempts; between attempts the event
//! waits in process, or goes back to the broker, which redelivers it.

use std::time::Duration;

use super::erased::ErasedHandler;
use super::keep_alive::holding;
use super::pipeline::Verdict;
use super::stats::Counter;
use super::timeout::guarded;
use super::{HandlerFuture, Shared};
use crate::consumer::dead_letter::Reason;
use crate::consumer::handler::{Disposition, HandlerError};
use crate::transport;
use crate::wire::{self, RawEvent};

/// Where the first attempt at an event stands when [`Shared::attempts`]
/// takes it over.
pub(super) enum Begun {
    /// Not started: decode the event and call the handler.
    Fresh(Box<RawEvent>),
    /// Called (by `run`'s fast path) and polled once, not finished; when
    /// that poll began, if a handler timeout counts from it.
    Running(HandlerFuture, Option<tokio::time::Instant>),
    /// Called (by `run`'s fast path) and failed.
    Failed(HandlerError),
}

impl<S: Send + Sync + 'static> Shared<S> {
    /// Runs the handler from where `begun` stands until the event is
    /// handled, to be dead-lettered, or to be handed back to the broker.
    ///
    /// `ordered`: the event's key is handled strictly in order, so a failed
    /// attempt is retried here, holding the key, rather than handed back to
    /// the broker (whose redelivery would let the key's next event overtake).
    pub(super) async fn attempts(
        &self,
        event_type: &'static str,
        handler: &dyn ErasedHandler<S>,
        delivery: &transport::Delivery,
        mut begun: Begun,
        ordered: bool,
    ) -> Verdict {
        let mut attempt = delivery.attempt();
        // Retries run in process where the backend cannot redeliver, and for
        // ordered keys; otherwise the broker redelivers and counts.
        let in_process = !self.native_redelivery || ordered;
        loop {
            let outcome = match begun {
                Begun::Fresh(raw) => match self.call(handler, *raw, attempt) {
                    Ok(future) => self.wait_for(delivery, future, None).await,
                    Err(error) => return self.undecodable(error, attempt, event_type),
                },
                Begun::Running(future, started) => self.wait_for(delivery, future, started).await,
                Begun::Failed(error) => Some(Err(error)),
            };
            let Some(result) = outcome else {
                self.count(Counter::NackedOnShutdown, event_type);
                tracing::info!("shutdown deadline passed; event nacked");
                return Verdict::Nack(None);
            };
            let error = match result {
                Ok(()) => {
                    self.count(Counter::Handled, event_type);
                    return Verdict::Ack { handled: true };
                }
                Err(error) => error,
            };
            let delay = match error.disposition() {
                Disposition::Reject => {
                    return Verdict::dead_letter(Reason::Rejected, &error, attempt, event_type);
                }
                Disposition::Retry(_) if !self.retry.allows_another(attempt) => {
                    tracing::warn!(error = %error, "attempts exhausted");
                    return Verdict::dead_letter(
                        Reason::AttemptsExhausted,
                        &error,
                        attempt,
                        event_type,
                    );
                }
                Disposition::Retry(delay) => delay.unwrap_or_else(|| self.retry.delay(attempt)),
            };
            self.count(Counter::Retried, event_type);
            tracing::debug!(error = %error, ?delay, "attempt failed; retrying");
            if !in_process {
                // The broker counts the attempt and redelivers: no second,
                // in-process retry loop stacked on top.
                return Verdict::Nack(Some(delay));
            }
            if !self.pause(delivery, delay).await {
                self.count(Counter::NackedOnShutdown, event_type);
                return Verdict::Nack(None);
            }
            attempt += 1;
            // The handler took the event: the next attempt decodes it again
            // from the message, which the delivery keeps (cheaper than a
            // copy of every event for the few that are retried).
            begun = match wire::decode(delivery.message()) {
                Ok(raw) => Begun::Fresh(Box::new(raw)),
                Err(error) => return self.undecodable(error, attempt, event_type),
            };
        }
    }

    /// Polls a handler's future to its end, holding the delivery, within
    /// the handler timeout (counted from `started`, its first poll, if it
    /// was polled before); `None` if shutdown's deadline passed first.
    pub(super) async fn wait_for(
        &self,
        delivery: &transport::Delivery,
        future: HandlerFuture,
        started: Option<tokio::time::Instant>,
    ) -> Option<Result<(), HandlerError>> {
        let limit = self
            .handler_timeout
            .map(|limit| (started.unwrap_or_else(tokio::time::Instant::now), limit));
        tokio::select! {
            biased;
            () = self.cancellation() => None,
            result = holding(delivery, guarded(limit, future)) => Some(result),
        }
    }

    /// Waits `delay` holding `delivery` (its ack wait kept from running
    /// out); false if shutdown's deadline passed first.
    pub(super) async fn pause(&self, delivery: &transport::Delivery, delay: Duration) -> bool {
        Box::pin(holding(delivery, async {
            tokio::select! {
                biased;
                () = self.cancellation() => false,
                _ = tokio::time::sleep(delay) => true,
            }
        }))
        .await
    }
}
