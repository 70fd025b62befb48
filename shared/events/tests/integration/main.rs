//! Integration tests, one binary (link once on two cores).
#![allow(unreachable_pub, missing_docs)]

#[cfg(feature = "nats")]
mod auth;
mod bad_input;
#[cfg(feature = "jetstream")]
mod cluster;
mod conformance;
#[cfg(feature = "jetstream")]
mod faults;
mod fixtures;
#[cfg(feature = "jetstream")]
mod idempotency;
#[cfg(feature = "jetstream")]
mod jetstream;
mod layers;
mod lifecycle;
#[cfg(feature = "nats")]
mod nats;
#[cfg(all(feature = "postgres", feature = "jetstream"))]
mod outbox;
#[cfg(all(feature = "postgres", feature = "jetstream"))]
mod outbox_kills;
#[cfg(feature = "jetstream")]
mod partitions;
mod props;
#[cfg(feature = "jetstream")]
mod publish;
mod runtime;
#[cfg(feature = "jetstream")]
mod server_features;
mod settings;
mod support;
mod wire_fidelity;
