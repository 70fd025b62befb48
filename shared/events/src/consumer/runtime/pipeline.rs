//! The layers an event goes through, and the verdict they come to.
//!
//! Outermost first, each in its own file:
//!
//! 1. concurrency (`dispatch`): at most `concurrency` events in flight;
//! 2. ordering (`ordering`): an event waits for its key's previous one;
//! 3. tracing (`spans`): the handling's span, continuing the producer's
//!    trace;
//! 4. routing (here): the handler of the event's type, or none;
//! 5. idempotency (`idempotency`): the claim on the event's id;
//! 6. retry (`retry`): the attempts, in process or through the broker;
//! 7. timeout (`timeout`): each attempt within the handler timeout, a
//!    panic caught;
//! 8. the user's layers ([`Layer`](crate::consumer::Layer)), then the
//!    handler;
//!
//! and, on the way out, dead letter (`dead_letter`): the [`Verdict`] is
//! told to the broker (ack, nack, or a dead-letter copy then a term).
//!
//! The composition is static, in [`Shared::process`]: each layer is a
//! plain `async fn` taking the layers inside it as a future, so nothing is
//! boxed per event for it, and the builder's settings turn each on or off.
//! The order of the built-in layers is fixed because it carries the
//! guarantees: ordering outside everything (a retry holds its key), the
//! claim outside the retries (one claim for all attempts), the dead letter
//! after the claim is given up. The user's layers sit inside, around each
//! attempt, where any order of theirs is safe. The fast path of `dispatch`
//! (no ordering, no idempotency, the handler done in its first poll) runs
//! the same layers inline, and enters this composition only for what has to
//! wait.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

use super::ordering::{in_order, KeyOrder};
use super::retry::Begun;
use super::stats::Counter;
use super::{Held, Shared, UNKNOWN_TYPE};
use crate::consumer::dead_letter::Reason;
use crate::wire::RawEvent;

/// What the handling of one delivery comes to: what the broker is told.
pub(super) enum Verdict {
    /// Acknowledged: `handled` by the handler, or settled without it (a
    /// duplicate, a newer version skipped by policy).
    Ack { handled: bool },
    /// Handed back to the broker, to come again after the delay (at once
    /// with none).
    Nack(Option<Duration>),
    /// Copied to the dead-letter subject, then terminated.
    DeadLetter(Letter),
}

/// Why an event is dead-lettered, for its dead-letter copy.
pub(super) struct Letter {
    pub(super) reason: Reason,
    pub(super) error: String,
    /// Attempts made, counting in-process retries.
    pub(super) attempts: u32,
    pub(super) event_type: &'static str,
}

impl Verdict {
    pub(super) fn dead_letter(
        reason: Reason,
        error: &dyn std::fmt::Display,
        attempts: u32,
        event_type: &'static str,
    ) -> Self {
        Verdict::DeadLetter(Letter {
            reason,
            error: error.to_string(),
            attempts,
            event_type,
        })
    }
}

impl<S: Send + Sync + 'static> Shared<S> {
    /// The full path of one delivery through every layer.
    ///
    /// The event and the delivery come boxed: this future is itself boxed
    /// and moved once per event, and every state it can be in is as large
    /// as its largest; the paths off the success path are boxed for the
    /// same reason.
    pub(super) async fn process(
        self: Arc<Self>,
        from: usize,
        raw: Box<RawEvent>,
        delivery: Held,
        order: Option<KeyOrder>,
    ) {
        let ordered = order.is_some();
        in_order(delivery, order, |delivery| {
            let span = self.span(&raw.metadata, &delivery);
            self.handle(from, raw, delivery, ordered).instrument(span)
        })
        .await
    }

    /// The layers inside tracing, for an event decoded as raw: routing,
    /// idempotency, the attempts, and the verdict told to the broker.
    /// `ordered`: see [`attempts`](Self::attempts).
    pub(super) async fn handle(
        &self,
        from: usize,
        raw: Box<RawEvent>,
        delivery: Held,
        ordered: bool,
    ) {
        let verdict = match self.route(from, raw.metadata.event_type()) {
            None => self.unrouted(raw.metadata.event_type(), delivery.attempt()),
            Some((event_type, handler)) => {
                let key = self.claim_key(raw.metadata.id());
                let attempts = self.attempts(
                    event_type,
                    &**handler,
                    &delivery,
                    Begun::Fresh(raw),
                    ordered,
                );
                self.idempotent(key, event_type, &delivery, attempts).await
            }
        };
        self.conclude(delivery, verdict).await
    }

    /// An event of a type this consumer has no handler for.
    fn unrouted(&self, event_type: &str, attempt: u32) -> Verdict {
        if self.native_redelivery && self.retry.allows_another(attempt) {
            // Instances of one consumer share its broker consumer, whose
            // types change with a release: during a rolling deploy an older
            // instance gets the types only newer ones handle. Handed back
            // (the broker counts the attempt), and dead-lettered only once
            // the attempts run out.
            tracing::debug!(
                event.r#type = event_type,
                attempt,
                "no handler here; handed back for an instance that has one"
            );
            self.count(Counter::Retried, UNKNOWN_TYPE);
            return Verdict::Nack(Some(self.retry.delay(attempt)));
        }
        let text = format!("no handler for {event_type}");
        Verdict::dead_letter(Reason::NoHandler, &text, attempt, UNKNOWN_TYPE)
    }
}
