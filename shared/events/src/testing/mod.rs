//! Test utilities: a private `nats-server` (or a cluster of them) per test.
//!
//! Behind the `testing` feature, which needs nothing beyond the standard
//! library, so it costs a service's test build no extra dependencies.

mod cluster;
mod nats_server;

pub use cluster::NatsCluster;
pub use nats_server::{NatsServer, NatsServerBuilder};
