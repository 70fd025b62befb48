//! Integration tests, one binary (link once on two cores).
#![allow(unreachable_pub, missing_docs)]

mod bad_input;
mod conformance;
mod fixtures;
#[cfg(feature = "jetstream")]
mod faults;
#[cfg(feature = "jetstream")]
mod jetstream;
#[cfg(feature = "nats")]
mod nats;
mod props;
mod runtime;
mod support;
