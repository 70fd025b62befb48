//! The attempts at one event: the handler called, within its timeout,
//! retried in process or handed back to the broker, until the event is
//! handled or dead-lettered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::FutureExt as _;
use std::panic::AssertUnwindSafe;

use super::claims::Claimed;
use super::erased::{panicked, ErasedHandler};
use super::keep_alive::holding;
use super::stats::Counter;
use super::{settle, HandlerFuture, Held, Shared};
use crate::consumer::dead_letter::Reason;
use crate::consumer::handler::{Disposition, HandlerError};
use crate::error::Result;
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
    /// Runs the handler until the event is handled, dead-lettered or handed
    /// back to the broker, from where `begun` stands.
    pub(super) async fn attempts(
        &self,
        event_type: &'static str,
        handler: Arc<dyn ErasedHandler<S>>,
        delivery: Held,
        mut begun: Begun,
        claim: Option<Claimed<'_>>,
        ordered: bool,
    ) {
        // Given up when the delivery is (nack, dead letter), not between
        // in-process attempts: a copy arriving meanwhile keeps waiting.
        let release = || async {
            if let Some(claim) = &claim {
                if let Err(e) = claim.store.release(&claim.key, claim.token).await {
                    tracing::warn!(error = %e, "could not release an idempotency claim");
                }
            }
        };
        let mut attempt = delivery.attempt();
        // Retries run in process where the backend cannot redeliver, and for
        // ordered keys; otherwise the broker redelivers and counts.
        let in_process = !self.native_redelivery || ordered;
        loop {
            let outcome = match begun {
                Begun::Fresh(raw) => match self.call(&*handler, *raw, attempt) {
                    Ok(future) => self.wait_for(&delivery, future, None).await,
                    Err(error) => {
                        release().await;
                        return Box::pin(self.undecodable(delivery, error, attempt, event_type))
                            .await;
                    }
                },
                Begun::Running(future, started) => self.wait_for(&delivery, future, started).await,
                Begun::Failed(error) => Some(Err(error)),
            };
            let Some(result) = outcome else {
                release().await;
                self.count(Counter::NackedOnShutdown, event_type);
                tracing::info!("shutdown deadline passed; event nacked");
                return settle(Box::pin(delivery.nack(None)).await);
            };
            let error = match result {
                Ok(()) => {
                    if let Some(claim) = &claim {
                        Box::pin(self.complete(claim.store, &claim.key, claim.token)).await;
                    }
                    self.count(Counter::Handled, event_type);
                    return settle(delivery.ack().await);
                }
                Err(error) => error,
            };
            let delay = match error.disposition() {
                Disposition::Reject => {
                    release().await;
                    return self
                        .dead_letter(
                            delivery,
                            Reason::Rejected,
                            &error.to_string(),
                            attempt,
                            event_type,
                        )
                        .await;
                }
                Disposition::Retry(_) if !self.retry.allows_another(attempt) => {
                    tracing::warn!(error = %error, "attempts exhausted");
                    release().await;
                    return self
                        .dead_letter(
                            delivery,
                            Reason::AttemptsExhausted,
                            &error.to_string(),
                            attempt,
                            event_type,
                        )
                        .await;
                }
                Disposition::Retry(delay) => delay.unwrap_or_else(|| self.retry.delay(attempt)),
            };
            self.count(Counter::Retried, event_type);
            tracing::debug!(error = %error, ?delay, "attempt failed; retrying");
            if !in_process {
                // The broker counts the attempt and redelivers: no second,
                // in-process retry loop stacked on top.
                release().await;
                return settle(Box::pin(delivery.nack(Some(delay))).await);
            }
            if !self.pause(&delivery, delay).await {
                release().await;
                self.count(Counter::NackedOnShutdown, event_type);
                return settle(Box::pin(delivery.nack(None)).await);
            }
            attempt += 1;
            // The handler took the event: the next attempt decodes it again
            // from the message, which the delivery keeps (cheaper than a
            // copy of every event for the few that are retried).
            begun = match wire::decode(delivery.message()) {
                Ok(raw) => Begun::Fresh(Box::new(raw)),
                Err(error) => {
                    release().await;
                    return Box::pin(self.undecodable(delivery, error, attempt, event_type)).await;
                }
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

/// Runs a handler with an optional deadline; a panic becomes a retryable
/// error, so one bad handler call cannot take the consumer down.
pub(super) fn guarded(
    timeout: Option<(tokio::time::Instant, Duration)>,
    handler: HandlerFuture,
) -> impl Future<Output = Result<(), HandlerError>> + Send {
    let caught = AssertUnwindSafe(handler).catch_unwind();
    let limited = match timeout {
        None => Either::Left(caught.map(Ok)),
        // Boxed: a timer is large, and most consumers set no handler timeout.
        // A deadline past what an `Instant` holds is no deadline.
        Some((started, limit)) => match started.checked_add(limit) {
            Some(deadline) => Either::Right(Either::Left(Box::pin(tokio::time::timeout_at(
                deadline, caught,
            )))),
            None => Either::Right(Either::Right(caught.map(Ok))),
        },
    };
    limited.map(move |outcome| match outcome {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(panicked(&*panic)),
        Err(_) => Err(HandlerError::retry(format!(
            "handler did not finish within {:?}",
            timeout.map(|(_, limit)| limit).unwrap_or_default()
        ))),
    })
}
