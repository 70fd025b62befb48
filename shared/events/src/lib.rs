//! Typed, versioned events for Rust services, as CloudEvents over an
//! in-memory bus, NATS or NATS JetStream.
//!
//! # Overview
//! A service defines its events as plain serde structs implementing
//! [`EventPayload`], publishes them through a [`Bus`], and subscribes to the
//! events of others as typed deliveries. The same code runs on the
//! in-memory transport in tests and on NATS in production.
//!
//! ```text
//!  typed bus      Bus: publish Event<T>, subscribe::<T>() -> typed deliveries
//!  wire           Event<T> <-> (subject, headers, bytes): CloudEvents 1.0, upcasting
//!  transport      byte-level, broker-agnostic trait: publish, subscribe, ack/nack/term
//!  backends       memory (default) | nats | jetstream
//!  envelope       EventPayload, EventMetadata, Event<T>: pure data
//! ```
//!
//! # Quickstart
//! ```
//! use events::{Bus, EventPayload};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct OrderPlaced {
//!     order_id: String,
//!     total_cents: u64,
//! }
//!
//! impl EventPayload for OrderPlaced {
//!     const TYPE: &'static str = "orders.order_placed";
//!     const VERSION: u32 = 1;
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::memory("orders");
//! let mut orders = bus.subscribe::<OrderPlaced>().await?;
//!
//! let placed = bus.event(OrderPlaced { order_id: "o-1".into(), total_cents: 1250 }).with_subject("o-1");
//! bus.publish(&placed).await?;
//!
//! let delivery = orders.next().await.expect("open")?;
//! assert_eq!(delivery.payload().total_cents, 1250);
//! assert_eq!(delivery.metadata().id(), placed.metadata.id());
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
//!
//! # Core concepts
//! - **Envelope** ([`envelope`]): [`Event<T>`] = [`EventMetadata`] (UUIDv7 id,
//!   type, version, source, time, subject, correlation and causation ids,
//!   trace context, extensions) + payload.
//! - **Wire format** ([`wire`]): CloudEvents 1.0, structured mode by default,
//!   binary mode (`ce-` headers) as an option, both decoded. Subject
//!   `<prefix>.<type>`; the version rides in the CloudEvents type
//!   (`orders.order_placed.v2`).
//! - **Versioning** ([`versioning`]): upcasters bring older payloads up to
//!   date; newer ones are rejected or tolerated by policy.
//! - **Transport** ([`transport`]): an object-safe trait with declared
//!   [`Capabilities`](transport::Capabilities).
//!
//! # Backends and delivery guarantees
//! | | memory | core NATS | JetStream |
//! |---|---|---|---|
//! | publish returns | in every subscriber's buffer | queued in the client | stored, PubAck received |
//! | guarantee | at-most-once in process, redelivery on nack | at-most-once | at-least-once |
//! | nack with delay | yes (in-process timer) | no | native |
//! | competing consumers | queue groups | queue groups | durable consumer |
//!
//! # Feature flags
//! - `memory` (default): the in-memory transport. Without it, only the
//!   envelope, wire format and transport trait remain.
//! - `runtime` (default): the consumer runtime ([`consumer`]).
//! - `nats`, `jetstream`: the NATS transports on async-nats.
//! - `metrics`: counters through the `metrics` facade.
//! - `opentelemetry`: handling spans continue the event's W3C trace context
//!   and publishes stamp the current span's, through `tracing-opentelemetry`
//!   (the service installs its own tracer provider and layer). Without it,
//!   the trace context travels as data only.
//! - `postgres`: the transactional outbox and inbox on PostgreSQL
//!   ([`outbox`]): events staged in the business transaction and relayed
//!   to any transport, handler writes committed with the "handled" mark.
//! - `schema`: contracts ([`contract`]): JSON Schemas of payload types
//!   (schemars), AsyncAPI 3.0 documents of what a service publishes and
//!   handles, and a check that a type changed compatibly or got a new
//!   `VERSION`.
//! - `testing`: private `nats-server` processes and clusters for tests,
//!   and a harness that runs real handlers on the memory bus and records
//!   what they publish and how each delivery is settled.
//!
//! # Minimum supported Rust version
//! 1.89.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

pub mod backend;
pub mod bus;
#[cfg(feature = "runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
pub mod consumer;
#[cfg(feature = "schema")]
#[cfg_attr(docsrs, doc(cfg(feature = "schema")))]
pub mod contract;
pub mod envelope;
mod error;
#[cfg(feature = "opentelemetry")]
mod otel;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod outbox;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
pub mod transport;
pub mod versioning;
pub mod wire;

#[doc(inline)]
pub use bus::Bus;
#[doc(inline)]
pub use envelope::{Event, EventMetadata, EventPayload};
#[doc(inline)]
pub use error::{BoxError, Error, ErrorKind, Result};
