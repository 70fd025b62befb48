//! Contracts: what a service's events look like, written down where tools
//! can read them and checked before a change ships.
//!
//! - [`schema_of`] gives the JSON Schema of a payload type from its Rust
//!   type: derive [`schemars::JsonSchema`] beside `Serialize` and
//!   `Deserialize`, nothing else. A [`Catalog`] lists a service's types.
//! - [`AsyncApi`] writes an AsyncAPI 3.0 document of what a service does:
//!   the types its bus publishes and the types its consumers really handle
//!   (read from each [`Consumer`](crate::consumer::Consumer)), one channel
//!   per type and version on its NATS subject, both CloudEvents content
//!   modes as messages, the NATS bindings and the payload schemas.
//! - [`compare`] finds the changes between two schemas of one type and
//!   which of them break readers or writers; [`Snapshots`] keeps one schema
//!   per `(TYPE, VERSION)` in the repository and fails when a type changed
//!   incompatibly without a new `VERSION`. [`Snapshots::load`] reads a
//!   folder of them for tools without the Rust types: two folders compare
//!   with [`SnapshotStatus::between`], and [`AsyncApi::snapshot`] or
//!   [`bundle`] write them as one document.
//!
//! ```
//! use events::contract::{schema_of, Catalog, Snapshots};
//! use events::EventPayload;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
//! struct OrderPlaced {
//!     order_id: String,
//!     total_cents: u64,
//!     coupon: Option<String>,
//! }
//!
//! impl EventPayload for OrderPlaced {
//!     const TYPE: &'static str = "orders.order_placed";
//!     const VERSION: u32 = 1;
//! }
//!
//! let schema = schema_of::<OrderPlaced>();
//! assert_eq!(schema.cloudevents_type(), "orders.order_placed.v1");
//! assert_eq!(schema.schema()["required"], serde_json::json!(["order_id", "total_cents"]));
//!
//! // In a test: every type matches its snapshot, or changed compatibly.
//! let dir = std::env::temp_dir().join(format!("contracts-doc-{}", std::process::id()));
//! let catalog = Catalog::new().with::<OrderPlaced>();
//! let snapshots = Snapshots::new(&dir).update(true); // first run: record
//! assert!(snapshots.check(&catalog)?.is_ok());
//! assert!(Snapshots::new(&dir).check(&catalog)?.is_ok());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), events::Error>(())
//! ```
//!
//! The schemas are JSON Schema draft-07, the dialect AsyncAPI 3.0 schemas
//! build on, and describe what the type *accepts* when it deserializes
//! (a field with `#[serde(default)]` or of an `Option` type is optional).

mod asyncapi;
mod bundle;
mod compat;
mod schema;
mod snapshot;

pub use asyncapi::{AsyncApi, AsyncApiDocument};
pub use bundle::bundle;
pub use compat::{compare, Breaks, Change, ChangeKind};
pub use schema::{schema_of, Catalog, PayloadSchema, SCHEMA_DIALECT};
pub use snapshot::{
    SnapshotReport, SnapshotStatus, Snapshots, StoredSnapshot, TypeReport, UPDATE_ENV,
};

/// The schemars crate this module derives schemas with, for
/// `#[schemars(crate = "events::contract::schemars")]` where a service does
/// not depend on it itself.
pub use schemars;
