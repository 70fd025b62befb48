//! The trait every event payload implements.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A payload that can travel as an event: a plain serde type with a stable
/// type name and a schema version.
///
/// ```
/// use events::EventPayload;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct OrderPlaced {
///     order_id: String,
///     total_cents: u64,
/// }
///
/// impl EventPayload for OrderPlaced {
///     const TYPE: &'static str = "orders.order_placed";
///     const VERSION: u32 = 1;
/// }
/// ```
///
/// # Rules that keep consumers working
/// - [`TYPE`](Self::TYPE) never changes once published: it is the routing
///   key (the NATS subject is `<prefix>.<TYPE>`) and the CloudEvents `type`
///   (`<TYPE>.v<VERSION>`). It must be lowercase tokens of `[a-z0-9_-]`
///   joined by dots, and its last token must not look like a version (`v2`).
/// - Adding an optional field (`Option<_>` or `#[serde(default)]`) does not
///   need a new version. Renaming, removing or changing the meaning or type of
///   a field does: bump [`VERSION`](Self::VERSION) and register an upcaster
///   from the previous version (see [`crate::versioning`]).
/// - Never put `#[serde(deny_unknown_fields)]` on a payload: readers must
///   tolerate fields added by newer producers.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event payload",
    label = "implement `events::EventPayload` for `{Self}`",
    note = "an event payload is a serde type with `const TYPE: &str` (e.g. \"orders.order_placed\") and `const VERSION: u32`"
)]
pub trait EventPayload: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable, versionless type name, e.g. `orders.order_placed`.
    const TYPE: &'static str;
    /// The schema's major version, starting at 1.
    const VERSION: u32 = 1;
}
