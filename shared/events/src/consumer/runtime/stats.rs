//! What a consumer counts: the [`Summary`] and the `metrics` counters.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Shared;

/// Counts of what a consumer did, returned by [`Consumer::run`](super::Consumer::run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Events handled successfully and acknowledged.
    pub handled: u64,
    /// Failed attempts that were scheduled for another attempt.
    pub retried: u64,
    /// Events copied to the dead-letter subject and terminated.
    pub dead_lettered: u64,
    /// Deliveries of already handled ids, acknowledged without handling.
    pub duplicates: u64,
    /// Events acknowledged without handling by policy
    /// ([`NewerVersion::Skip`](super::NewerVersion::Skip)).
    pub skipped: u64,
    /// Dead-letter copies that could not be published (the originals were
    /// nacked, not lost).
    pub dead_letter_failures: u64,
    /// In-flight events nacked because shutdown's deadline passed.
    pub nacked_on_shutdown: u64,
    /// Events fetched ahead and never started, released (nacked without
    /// delay) on shutdown for another instance to take.
    pub released_on_shutdown: u64,
}

/// What the runtime counts; each is also a `metrics` counter (feature
/// `metrics`) labelled with the consumer and the event type.
#[derive(Debug, Clone, Copy)]
pub(super) enum Counter {
    Handled,
    Retried,
    DeadLettered,
    Duplicates,
    Skipped,
    DeadLetterFailures,
    NackedOnShutdown,
    ReleasedOnShutdown,
}

impl Counter {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(super) fn metric_name(self) -> &'static str {
        match self {
            Counter::Handled => "events_handled_total",
            Counter::Retried => "events_retried_total",
            Counter::DeadLettered => "events_dead_lettered_total",
            Counter::Duplicates => "events_duplicates_total",
            Counter::Skipped => "events_skipped_total",
            Counter::DeadLetterFailures => "events_dead_letter_failures_total",
            Counter::NackedOnShutdown => "events_nacked_on_shutdown_total",
            Counter::ReleasedOnShutdown => "events_released_on_shutdown_total",
        }
    }
}

#[derive(Default)]
pub(super) struct Stats {
    counts: [AtomicU64; 8],
}

impl Stats {
    pub(super) fn bump(&self, counter: Counter) {
        self.counts[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn summary(&self) -> Summary {
        let get = |c: Counter| self.counts[c as usize].load(Ordering::Relaxed);
        Summary {
            handled: get(Counter::Handled),
            retried: get(Counter::Retried),
            dead_lettered: get(Counter::DeadLettered),
            duplicates: get(Counter::Duplicates),
            skipped: get(Counter::Skipped),
            dead_letter_failures: get(Counter::DeadLetterFailures),
            nacked_on_shutdown: get(Counter::NackedOnShutdown),
            released_on_shutdown: get(Counter::ReleasedOnShutdown),
        }
    }
}

impl<S> Shared<S> {
    pub(super) fn count(&self, counter: Counter, event_type: &'static str) {
        self.stats.bump(counter);
        #[cfg(feature = "metrics")]
        metrics::counter!(
            counter.metric_name(),
            // No allocation per event: the name is shared, the type static.
            "consumer" => self.name.clone(),
            "type" => event_type
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = event_type;
    }
}
