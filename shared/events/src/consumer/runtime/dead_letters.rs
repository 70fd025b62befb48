//! Events that cannot be handled: copied to the dead-letter subject, then
//! terminated (or nacked, if the copy fails).

use super::builder::NewerVersion;
use super::stats::Counter;
use super::{settle, Held, Shared};
use crate::consumer::dead_letter::{bounded_error, DeadLetter, Reason};
use crate::error::{Error, ErrorKind};

pub(super) fn reason_for(error: &Error) -> Reason {
    match error.kind() {
        ErrorKind::UnsupportedVersion => Reason::UnsupportedVersion,
        ErrorKind::MissingUpcaster => Reason::MissingUpcaster,
        _ => Reason::Decode,
    }
}

impl<S: Send + Sync + 'static> Shared<S> {
    /// An event that could not be decoded into its handler's type.
    pub(super) async fn undecodable(
        &self,
        delivery: Held,
        error: Error,
        attempt: u32,
        event_type: &'static str,
    ) {
        let reason = reason_for(&error);
        if reason == Reason::UnsupportedVersion {
            match self.newer_version {
                NewerVersion::DeadLetter => {}
                NewerVersion::Skip => {
                    tracing::warn!(error = %error, "newer event version skipped by policy");
                    self.count(Counter::Skipped, event_type);
                    return settle(delivery.ack().await);
                }
                NewerVersion::Retry
                    if self.retry.allows_another(attempt) && self.native_redelivery =>
                {
                    self.count(Counter::Retried, event_type);
                    return settle(delivery.nack(Some(self.retry.delay(attempt))).await);
                }
                NewerVersion::Retry => {}
            }
        }
        self.dead_letter(delivery, reason, &error.to_string(), attempt, event_type)
            .await
    }

    /// Publishes the dead-letter copy and, only once that succeeded,
    /// terminates the original. If the copy cannot be published, the
    /// original is nacked: it comes back, it is never lost.
    /// `attempts` counts in-process retries too, where the backend cannot
    /// redeliver.
    pub(super) async fn dead_letter(
        &self,
        delivery: Held,
        reason: Reason,
        error: &str,
        attempts: u32,
        event_type: &'static str,
    ) {
        // Boxed, like the other paths off the success path: the handling
        // future is moved once per event, and its size is the largest
        // state any of its paths can be in.
        Box::pin(self.dead_letter_now(delivery, reason, error, attempts, event_type)).await
    }

    pub(super) async fn dead_letter_now(
        &self,
        delivery: Held,
        reason: Reason,
        error: &str,
        attempts: u32,
        event_type: &'static str,
    ) {
        let letter = DeadLetter {
            original: delivery.message().clone(),
            reason,
            error: bounded_error(error),
            attempts,
            consumer: self.name.to_string(),
            time: chrono::Utc::now(),
            stream_sequence: delivery.info().stream_sequence,
            body_omitted: None,
        };
        let transport = self.bus.transport();
        let mut published = transport
            .publish(letter.to_message(self.dead_letter_subject.clone()))
            .await;
        if matches!(&published, Err(e) if e.kind() == ErrorKind::PayloadTooLarge) {
            // The original fitted; with the dead-letter headers it does not.
            // Nacking would bring it back until `max_deliver` and then
            // nowhere: a copy without the body (its length and stream
            // sequence in headers) keeps the event visible.
            tracing::warn!(dead_letter_subject = %self.dead_letter_subject, "dead-letter copy too large; sent without the body");
            published = transport
                .publish(
                    letter
                        .without_body()
                        .to_message(self.dead_letter_subject.clone()),
                )
                .await;
        }
        match published {
            Ok(()) => {
                self.count(Counter::DeadLettered, event_type);
                tracing::warn!(reason = reason.as_str(), error, dead_letter_subject = %self.dead_letter_subject, "event dead-lettered");
                settle(delivery.term().await);
            }
            Err(e) => {
                self.count(Counter::DeadLetterFailures, event_type);
                tracing::error!(error = %e, "dead-letter copy failed; original nacked");
                let delay = self.retry.delay(delivery.attempt());
                settle(delivery.nack(Some(delay)).await);
            }
        }
    }
}
