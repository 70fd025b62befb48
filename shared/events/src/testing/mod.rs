//! Test utilities: a private `nats-server` per test.
//!
//! Behind the `testing` feature, which needs nothing beyond the standard
//! library, so it costs a service's test build no extra dependencies.

mod nats_server;

pub use nats_server::{NatsServer, NatsServerBuilder};
