//! The dead-letter layer: events that cannot be handled are copied to the
//! dead-letter subject, then terminated (or nacked, if the copy fails). It
//! is also where every handling ends: the verdict of the layers inside is
//! told to the broker.

use super::builder::NewerVersion;
use super::pipeline::{Letter, Verdict};
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
    /// What becomes of an event that could not be decoded into its
    /// handler's type: dead-lettered, unless it is of a newer version than
    /// this consumer knows and the policy says to skip or wait for it.
    pub(super) fn undecodable(
        &self,
        error: Error,
        attempt: u32,
        event_type: &'static str,
    ) -> Verdict {
        let reason = reason_for(&error);
        if reason == Reason::UnsupportedVersion {
            match self.newer_version {
                NewerVersion::DeadLetter => {}
                NewerVersion::Skip => {
                    tracing::warn!(error = %error, "newer event version skipped by policy");
                    self.count(Counter::Skipped, event_type);
                    return Verdict::Ack { handled: false };
                }
                NewerVersion::Retry
                    if self.retry.allows_another(attempt) && self.native_redelivery =>
                {
                    self.count(Counter::Retried, event_type);
                    return Verdict::Nack(Some(self.retry.delay(attempt)));
                }
                NewerVersion::Retry => {}
            }
        }
        Verdict::dead_letter(reason, &error, attempt, event_type)
    }

    /// Tells the broker the verdict on `delivery`.
    pub(super) async fn conclude(&self, delivery: Held, verdict: Verdict) {
        match verdict {
            Verdict::Ack { .. } => settle(delivery.ack().await),
            // Boxed, like the other paths off the success path: the
            // handling future is moved once per event, and its size is the
            // largest state any of its paths can be in.
            Verdict::Nack(delay) => settle(Box::pin(delivery.nack(delay)).await),
            Verdict::DeadLetter(letter) => Box::pin(self.dead_letter(delivery, letter)).await,
        }
    }

    /// Publishes the dead-letter copy and, only once that succeeded,
    /// terminates the original. If the copy cannot be published, the
    /// original is nacked: it comes back, it is never lost.
    async fn dead_letter(&self, delivery: Held, letter: Letter) {
        let Letter {
            reason,
            error,
            attempts,
            event_type,
        } = letter;
        let letter = DeadLetter {
            original: delivery.message().clone(),
            reason,
            error: bounded_error(&error),
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
                tracing::warn!(reason = reason.as_str(), error = error.as_str(), dead_letter_subject = %self.dead_letter_subject, "event dead-lettered");
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
