//! The consumer runtime, one concern per file. An event goes through the
//! runtime's layers (see `pipeline` for their order and why it is fixed):
//!
//! - `dispatch`: the dispatch loop and the concurrency limit, its fast
//!   path and the merged subscriptions;
//! - `ordering`: per-key order (an event waits for its key's previous one);
//! - `spans`: the tracing span of each handling;
//! - `pipeline`: the composition of the layers, routing, and the verdict
//!   they come to;
//! - `idempotency`: the claim on the event's id;
//! - `retry`: the attempts at one event, in process or by the broker;
//! - `timeout`: each attempt within the handler timeout, panics caught;
//! - `erased`: handlers behind one object-safe trait, decode, the user's
//!   layers and the call;
//! - `dead_letter`: the verdict told to the broker, dead-letter copies;
//! - `keep_alive`: holding a delivery's ack wait while it is worked on;
//! - `builder`: [`Consumer`], its settings, and subscribing (`prepare`);
//! - `stats`: [`Summary`] and the counters;
//! - `shutdown`: [`Running`], graceful shutdown and [`shutdown_signal`].

mod builder;
mod dead_letter;
mod dispatch;
mod erased;
mod idempotency;
mod keep_alive;
mod ordering;
mod pipeline;
mod retry;
mod shutdown;
mod spans;
mod stats;
mod timeout;

pub use builder::{Consumer, NewerVersion};
pub use shutdown::{shutdown_signal, Running};
pub use stats::Summary;
#[cfg(test)]
pub(super) use {builder::durable_name, keep_alive::holding};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::bus::Bus;
use crate::consumer::handler::Env;
use crate::consumer::idempotency::IdempotencyStore;
use crate::consumer::layer::{HandlerFuture, Layer};
use crate::consumer::retry::RetryPolicy;
use crate::error::{ErrorKind, Result};
use crate::transport::{self, Subject};
use crate::versioning::VersionPolicy;
use erased::ErasedHandler;
use stats::Stats;

struct Shared<S> {
    bus: Bus,
    name: Arc<str>,
    env: Arc<Env<S>>,
    /// The handlers, in the order of the subscriptions (one per type).
    routes: Vec<(&'static str, Arc<dyn ErasedHandler<S>>)>,
    retry: RetryPolicy,
    native_redelivery: bool,
    dead_letter_subject: Subject,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    version_policy: VersionPolicy,
    newer_version: NewerVersion,
    handler_timeout: Option<Duration>,
    /// User layers around handler calls, outermost first.
    layers: Vec<Arc<dyn Layer>>,
    stats: Stats,
    /// Set when shutdown's deadline passes. Handlings check it each time
    /// they are polled (no waker registered per event): `run` polls every
    /// one of them again once it is set.
    cancelled: AtomicBool,
}

/// An event type's handler, with the type's static name.
type Route<'a, S> = (&'static str, &'a Arc<dyn ErasedHandler<S>>);

/// A delivery being handled, boxed: see [`Shared::process`].
type Held = Box<transport::Delivery>;

/// The type label of messages that could not be read far enough to know it.
const UNKNOWN_TYPE: &str = "unknown";

/// Logs a failed settle: the broker will redeliver after its ack wait, which
/// is the safe direction.
fn settle(result: Result<()>) {
    match result {
        Ok(()) => {}
        // Core NATS: there is no redelivery to ask for; the event is gone
        // (at-most-once), and the log must say so rather than promise a retry.
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            tracing::error!(error = %e, "the backend cannot redeliver; event dropped (at-most-once)");
        }
        Err(e) => tracing::warn!(error = %e, "settling a delivery failed; it will be redelivered"),
    }
}
