//! Integration tests, one binary (link once on two cores).
#![allow(unreachable_pub, missing_docs)]

mod bad_input;
mod conformance;
mod fixtures;
mod props;
mod runtime;
mod support;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "jetstream")]
mod jetstream;
