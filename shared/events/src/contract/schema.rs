//! JSON Schemas of payload types, and the catalog of a service's types.

use std::fmt;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

use crate::envelope::EventPayload;
use crate::error::{Error, Result};

/// The JSON Schema dialect of every schema this module writes (draft-07,
/// the one AsyncAPI 3.0's default schema format builds on).
pub const SCHEMA_DIALECT: &str = "http://json-schema.org/draft-07/schema#";

/// The generator settings every schema here comes from: draft-07, and the
/// deserialize contract (what a consumer accepts).
pub(super) fn settings() -> SchemaSettings {
    SchemaSettings::draft07().for_deserialize()
}

/// The JSON Schema of one payload type at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadSchema {
    event_type: &'static str,
    version: u32,
    rust_type: &'static str,
    schema: Value,
}

impl PayloadSchema {
    /// The payload's [`EventPayload::TYPE`].
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// The payload's [`EventPayload::VERSION`].
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The CloudEvents `type` attribute of this version
    /// (`orders.order_placed.v2`).
    pub fn cloudevents_type(&self) -> String {
        format!("{}.v{}", self.event_type, self.version)
    }

    /// The Rust type's path, as [`std::any::type_name`] gives it.
    pub fn rust_type(&self) -> &'static str {
        self.rust_type
    }

    /// The schema: a self-contained draft-07 document (its subschemas under
    /// `definitions`).
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// The schema, owned.
    pub fn into_schema(self) -> Value {
        self.schema
    }
}

/// The JSON Schema of payload type `T`, derived from its Rust type.
///
/// `T` needs only `#[derive(schemars::JsonSchema)]` beside its serde
/// derives; serde attributes (`rename`, `default`, `tag`, `flatten`...) are
/// honoured, and doc comments become descriptions.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// struct StockReserved {
///     /// The order the stock is held for.
///     order_id: String,
///     remaining: u32,
/// }
/// impl events::EventPayload for StockReserved {
///     const TYPE: &'static str = "inventory.stock_reserved";
/// }
///
/// let schema = events::contract::schema_of::<StockReserved>();
/// let order_id = &schema.schema()["properties"]["order_id"];
/// assert_eq!(order_id["type"], "string");
/// assert_eq!(order_id["description"], "The order the stock is held for.");
/// ```
pub fn schema_of<T: EventPayload + JsonSchema>() -> PayloadSchema {
    PayloadSchema {
        event_type: T::TYPE,
        version: T::VERSION,
        rust_type: std::any::type_name::<T>(),
        schema: settings()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value(),
    }
}

/// A type in a [`Catalog`], its schema functions erased to pointers.
#[derive(Clone, Copy)]
pub(super) struct Entry {
    pub(super) event_type: &'static str,
    pub(super) version: u32,
    pub(super) rust_type: &'static str,
    /// The schema alone (a `$ref` for a named type), its subschemas added
    /// to the generator: for documents that gather every type's subschemas
    /// in one place.
    pub(super) subschema: fn(&mut SchemaGenerator) -> Schema,
    pub(super) root: fn() -> PayloadSchema,
}

impl Entry {
    fn of<T: EventPayload + JsonSchema>() -> Self {
        fn subschema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
            generator.subschema_for::<T>()
        }
        Entry {
            event_type: T::TYPE,
            version: T::VERSION,
            rust_type: std::any::type_name::<T>(),
            subschema: subschema::<T>,
            root: schema_of::<T>,
        }
    }

    fn key(&self) -> (&'static str, u32) {
        (self.event_type, self.version)
    }
}

/// The payload types of a service (or of a crate of shared contracts), by
/// `(TYPE, VERSION)`: what [`AsyncApi`](super::AsyncApi) looks schemas up
/// in and [`Snapshots`](super::Snapshots) checks.
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct OrderPlaced { order_id: String }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct OrderSettled { order_id: String, confirmed: bool }
/// # impl events::EventPayload for OrderSettled { const TYPE: &'static str = "orders.order_settled"; }
/// use events::contract::Catalog;
///
/// let catalog = Catalog::new().with::<OrderPlaced>().with::<OrderSettled>();
/// let types: Vec<_> = catalog.schemas().map(|s| s.cloudevents_type()).collect();
/// assert_eq!(types, ["orders.order_placed.v1", "orders.order_settled.v1"]);
/// ```
#[derive(Clone, Default)]
pub struct Catalog {
    /// Sorted by `(TYPE, VERSION)`, then Rust type; one entry per Rust type.
    entries: Vec<Entry>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Catalog::default()
    }

    /// Adds payload type `T`. Adding a type twice keeps it once. Two Rust
    /// types with one `(TYPE, VERSION)` are kept both, and every use of the
    /// catalog fails with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)
    /// naming them: a consumer could not tell their events apart.
    pub fn with<T: EventPayload + JsonSchema>(mut self) -> Self {
        self.insert(Entry::of::<T>());
        self
    }

    /// Adds every type of `other`.
    pub fn merge(mut self, other: &Catalog) -> Self {
        for entry in &other.entries {
            self.insert(*entry);
        }
        self
    }

    pub(super) fn insert(&mut self, entry: Entry) {
        let position = self
            .entries
            .binary_search_by(|e| (e.key(), e.rust_type).cmp(&(entry.key(), entry.rust_type)));
        if let Err(at) = position {
            self.entries.insert(at, entry);
        }
    }

    /// The number of types.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the catalog has no type.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every type's schema, in `(TYPE, VERSION)` order.
    pub fn schemas(&self) -> impl Iterator<Item = PayloadSchema> + '_ {
        self.entries.iter().map(|e| (e.root)())
    }

    /// The schema of `event_type` at `version`, if the catalog has it.
    pub fn get(&self, event_type: &str, version: u32) -> Option<PayloadSchema> {
        self.entries
            .iter()
            .find(|e| e.event_type == event_type && e.version == version)
            .map(|e| (e.root)())
    }

    /// The entries of `event_type`, every version.
    pub(super) fn versions_of(&self, event_type: &str) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.event_type == event_type)
            .collect()
    }

    /// Fails if two Rust types share a `(TYPE, VERSION)`.
    pub(super) fn validate(&self) -> Result<()> {
        for pair in self.entries.windows(2) {
            if pair[0].key() == pair[1].key() {
                return Err(Error::invalid(format!(
                    "{} v{} is defined by two Rust types, {} and {}",
                    pair[0].event_type, pair[0].version, pair[0].rust_type, pair[1].rust_type
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| format!("{}.v{} ({})", e.event_type, e.version, e.rust_type)),
            )
            .finish()
    }
}
