//! Test utilities: a private `nats-server` (or a cluster of them) per test,
//! and, with the `memory` and `runtime` features (both default), a
//! [`Harness`] that runs real handlers on the memory bus and records what
//! they publish and how every delivery is settled, with a [`Script`] of
//! handler failures.
//!
//! Behind the `testing` feature, which needs nothing beyond the standard
//! library and what the other features bring, so it costs a service's test
//! build no extra dependencies.

mod cluster;
#[cfg(all(feature = "memory", feature = "runtime"))]
mod harness;
mod nats_server;

pub use cluster::NatsCluster;
#[cfg(all(feature = "memory", feature = "runtime"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "memory", feature = "runtime"))))]
pub use harness::{Harness, Script, Settled, Settlement};
pub use nats_server::{NatsServer, NatsServerBuilder};
