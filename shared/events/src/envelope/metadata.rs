//! Event metadata: everything about an event except its payload.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::validate::{validate_extension_name, validate_non_empty, validate_type_name};
use crate::error::{Error, Result};

/// What a reaction needs of its cause: its id, its correlation (its own id
/// if it starts one) and its trace context. Kept by a handler's context
/// instead of a clone of the whole metadata; ids as short as a UUID are
/// kept without an allocation.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    id: ShortString,
    correlation_id: Option<ShortString>,
    trace: Option<TraceContext>,
}

impl Cause {
    pub(crate) fn of(metadata: &EventMetadata) -> Self {
        Cause {
            id: ShortString::new(&metadata.id),
            correlation_id: metadata.correlation_id.as_deref().map(ShortString::new),
            trace: metadata.trace.clone(),
        }
    }
}

/// A string stored inline up to [`ShortString::INLINE`] bytes (a UUID's 36
/// fit), on the heap beyond.
#[derive(Clone)]
enum ShortString {
    Inline {
        len: u8,
        bytes: [u8; ShortString::INLINE],
    },
    Heap(Box<str>),
}

impl ShortString {
    const INLINE: usize = 46;

    fn new(s: &str) -> Self {
        if s.len() <= Self::INLINE {
            let mut bytes = [0; Self::INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            ShortString::Inline {
                // At most `INLINE`: fits.
                len: s.len() as u8,
                bytes,
            }
        } else {
            ShortString::Heap(s.into())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            ShortString::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                // A whole `str` was copied in.
                .expect("a copy of a str"),
            ShortString::Heap(s) => s,
        }
    }
}

impl fmt::Debug for ShortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The metadata of an event, mapped one to one onto CloudEvents attributes
/// (see `ARCHITECTURE.md` for the table).
///
/// Type and version are set from the payload type and cannot be changed;
/// the other attributes have setters. Serialized with serde, the field names
/// are the CloudEvents attribute names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    id: String,
    #[serde(rename = "type")]
    event_type: Cow<'static, str>,
    version: u32,
    source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(
        default,
        rename = "correlationid",
        skip_serializing_if = "Option::is_none"
    )]
    correlation_id: Option<String>,
    #[serde(
        default,
        rename = "causationid",
        skip_serializing_if = "Option::is_none"
    )]
    causation_id: Option<String>,
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    trace: Option<TraceContext>,
    #[serde(
        default,
        rename = "datacontenttype",
        skip_serializing_if = "Option::is_none"
    )]
    data_content_type: Option<Cow<'static, str>>,
    #[serde(
        default,
        rename = "dataschema",
        skip_serializing_if = "Option::is_none"
    )]
    data_schema: Option<String>,
    #[serde(default, skip_serializing_if = "Extensions::is_empty")]
    extensions: Extensions,
    /// The event came from another producer whose `type` has no `.v<N>`
    /// suffix: it is written back as received (`event_type` alone), so
    /// forwarding an event does not change its type.
    #[serde(
        default,
        rename = "typewithoutversion",
        skip_serializing_if = "is_false"
    )]
    type_without_version: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl EventMetadata {
    /// Metadata for a new event: a fresh UUIDv7 id and the current time.
    ///
    /// `event_type` is the versionless type name. It is validated when the
    /// event is encoded (and by [`validate`](Self::validate)).
    pub fn new(
        event_type: impl Into<Cow<'static, str>>,
        version: u32,
        source: impl Into<String>,
    ) -> Self {
        EventMetadata {
            id: super::new_event_id(),
            event_type: event_type.into(),
            version,
            source: source.into(),
            time: Some(Utc::now()),
            subject: None,
            correlation_id: None,
            causation_id: None,
            trace: None,
            data_content_type: Some(Cow::Borrowed(JSON_CONTENT_TYPE)),
            data_schema: None,
            extensions: Extensions::default(),
            type_without_version: false,
        }
    }

    /// The event id (a UUIDv7 for events made here; any non-empty string for
    /// events received from elsewhere).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The versionless type name, e.g. `orders.order_placed`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The payload's major version.
    pub fn version(&self) -> u32 {
        self.version
    }
    /// The CloudEvents `type`: the type name with its version suffix, e.g.
    /// `orders.order_placed.v2`.
    ///
    /// An event received from another producer keeps the `type` it came
    /// with: one without a version suffix (`com.example.someevent`, read as
    /// version 1) is written back without one, unless an upcaster changed
    /// its version.
    pub fn cloudevents_type(&self) -> String {
        if self.type_without_version {
            self.event_type.clone().into_owned()
        } else {
            format!("{}.v{}", self.event_type, self.version)
        }
    }

    /// Whether the CloudEvents `type` carries a version suffix: false only
    /// for an event received without one (see
    /// [`cloudevents_type`](Self::cloudevents_type)).
    pub(crate) fn type_has_version(&self) -> bool {
        !self.type_without_version
    }
    /// The producing service (CloudEvents `source`).
    pub fn source(&self) -> &str {
        &self.source
    }
    /// When the event happened, in UTC. Always set for events made here;
    /// other producers may omit it.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        self.time
    }
    /// The entity the event is about, e.g. an order id (CloudEvents
    /// `subject`). Used as the ordering and partitioning key; never used to
    /// build a NATS subject.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    /// The id shared by every event of one business transaction.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }
    /// The id of the event this one reacts to.
    pub fn causation_id(&self) -> Option<&str> {
        self.causation_id.as_deref()
    }
    /// The W3C trace context the event was published in.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }
    /// The payload's media type (`application/json` for typed payloads).
    pub fn data_content_type(&self) -> Option<&str> {
        self.data_content_type.as_deref()
    }
    /// An informational schema URI; never used for dispatch.
    pub fn data_schema(&self) -> Option<&str> {
        self.data_schema.as_deref()
    }
    /// Extension attributes, including unknown ones received from other
    /// producers (they are kept and forwarded).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Replaces the id, e.g. to republish a stored event under its own id.
    pub fn set_id(&mut self, id: impl Into<String>) {
        self.id = id.into();
    }
    /// Sets the time the event happened.
    pub fn set_time(&mut self, time: Option<DateTime<Utc>>) {
        self.time = time;
    }
    /// Sets the subject (the entity key).
    pub fn set_subject(&mut self, subject: Option<String>) {
        self.subject = subject;
    }
    /// Sets the correlation id.
    pub fn set_correlation_id(&mut self, id: Option<String>) {
        self.correlation_id = id;
    }
    /// Sets the causation id.
    pub fn set_causation_id(&mut self, id: Option<String>) {
        self.causation_id = id;
    }
    /// Sets the trace context.
    pub fn set_trace(&mut self, trace: Option<TraceContext>) {
        self.trace = trace;
    }
    /// Sets the informational schema URI.
    pub fn set_data_schema(&mut self, uri: Option<String>) {
        self.data_schema = uri;
    }
    /// Mutable access to the extension attributes.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Makes this event a reaction to `cause`: it joins the cause's
    /// correlation (or starts one at the cause's id), records the cause's id
    /// as causation id, and continues the cause's trace if it has none yet.
    pub fn set_caused_by(&mut self, cause: &EventMetadata) {
        self.set_cause(&Cause::of(cause));
    }

    /// [`set_caused_by`](Self::set_caused_by) from the parts kept of a cause.
    pub(crate) fn set_cause(&mut self, cause: &Cause) {
        let id = cause.id.as_str();
        let correlation_id = cause
            .correlation_id
            .as_ref()
            .map_or(id, ShortString::as_str);
        self.correlation_id = Some(correlation_id.to_owned());
        self.causation_id = Some(id.to_owned());
        if self.trace.is_none() {
            self.trace = cause.trace.clone();
        }
    }

    /// Checks every attribute against the CloudEvents rules and ours. Runs
    /// before every publish; exposed for tools that build metadata by hand.
    pub fn validate(&self) -> Result<()> {
        validate_type_name(&self.event_type)?;
        self.validate_except_type()
    }

    /// [`EventMetadata::validate`] without the type name, for a caller that
    /// has checked it already (the codec, once per payload type).
    pub(crate) fn validate_except_type(&self) -> Result<()> {
        if self.version == 0 {
            return Err(Error::invalid("event version must be at least 1"));
        }
        validate_non_empty("event id", &self.id)?;
        validate_non_empty("event source", &self.source)?;
        if let Some(subject) = &self.subject {
            validate_non_empty("event subject", subject)?;
        }
        if let Some(id) = &self.correlation_id {
            validate_non_empty("correlation id", id)?;
        }
        if let Some(id) = &self.causation_id {
            validate_non_empty("causation id", id)?;
        }
        if let Some(ct) = &self.data_content_type {
            validate_non_empty("data content type", ct)?;
        }
        if let Some(trace) = &self.trace {
            TraceContext::check_traceparent(&trace.traceparent)?;
        }
        // Names we accept from other producers may be longer than the 20
        // characters we allow on insert; they are still forwarded.
        for name in self.extensions.0.keys() {
            if !super::validate::is_attribute_name(name)
                || super::validate::RESERVED_ATTRIBUTES.contains(&name.as_str())
            {
                validate_extension_name(name)?;
            }
        }
        Ok(())
    }

    /// Builds metadata from decoded attributes, which the caller has
    /// checked.
    pub(crate) fn from_wire(decoded: Received) -> Self {
        EventMetadata {
            id: decoded.id,
            event_type: Cow::Owned(decoded.event_type),
            version: decoded.version,
            source: decoded.source,
            time: decoded.time,
            subject: decoded.subject,
            correlation_id: None,
            causation_id: None,
            trace: None,
            data_content_type: decoded.data_content_type,
            data_schema: decoded.data_schema,
            extensions: Extensions::default(),
            type_without_version: !decoded.type_has_version,
        }
    }

    /// Sets the version a decoded event now has. An upcast event's payload
    /// has the new version's shape, so its type names that version even if
    /// it arrived without a suffix.
    pub(crate) fn set_version(&mut self, version: u32) {
        if version != self.version {
            self.type_without_version = false;
        }
        self.version = version;
    }

    pub(crate) fn trace_mut(&mut self) -> &mut Option<TraceContext> {
        &mut self.trace
    }
}

/// The media type of JSON payloads.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A W3C trace context (`traceparent` and optional `tracestate`), carried by
/// the CloudEvents distributed-tracing extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
}

impl TraceContext {
    /// A trace context from a `traceparent` value
    /// (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`).
    pub fn new(traceparent: impl Into<String>) -> Result<Self> {
        let traceparent = traceparent.into();
        Self::check_traceparent(&traceparent)?;
        Ok(TraceContext {
            traceparent,
            tracestate: None,
        })
    }

    /// Adds a `tracestate` (vendor-specific key/value list).
    pub fn with_tracestate(mut self, tracestate: impl Into<String>) -> Self {
        let state = tracestate.into();
        self.tracestate = (!state.is_empty()).then_some(state);
        self
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }
    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    pub(crate) fn check_traceparent(value: &str) -> Result<()> {
        let b = value.as_bytes();
        let hex = |r: std::ops::Range<usize>| {
            b[r].iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        };
        // Later versions may append fields after the flags, separated by '-'.
        let valid = b.len() >= 55
            && (b.len() == 55 || b[55] == b'-')
            && b[2] == b'-'
            && b[35] == b'-'
            && b[52] == b'-'
            && hex(0..2)
            && &b[0..2] != b"ff"
            && hex(3..35)
            && hex(36..52)
            && hex(53..55)
            && b[3..35].iter().any(|&c| c != b'0')
            && b[36..52].iter().any(|&c| c != b'0');
        if valid {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "{value:?} is not a valid W3C traceparent"
            )))
        }
    }
}

/// The value of an extension attribute: CloudEvents allows strings, booleans
/// and 32-bit integers in the JSON format. In binary mode every value
/// travels as a string, so a receiver sees strings there. CloudEvents has
/// more attribute types (URI, timestamp, binary) that may get variants of
/// their own, so matches need a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ExtensionValue {
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// A 32-bit integer.
    Integer(i32),
}

impl fmt::Display for ExtensionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtensionValue::String(s) => f.write_str(s),
            ExtensionValue::Bool(b) => write!(f, "{b}"),
            ExtensionValue::Integer(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for ExtensionValue {
    fn from(v: &str) -> Self {
        ExtensionValue::String(v.to_owned())
    }
}
impl From<String> for ExtensionValue {
    fn from(v: String) -> Self {
        ExtensionValue::String(v)
    }
}
impl From<bool> for ExtensionValue {
    fn from(v: bool) -> Self {
        ExtensionValue::Bool(v)
    }
}
impl From<i32> for ExtensionValue {
    fn from(v: i32) -> Self {
        ExtensionValue::Integer(v)
    }
}

/// Extension attributes, ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Extensions(BTreeMap<String, ExtensionValue>);

impl Extensions {
    /// Adds or replaces an extension; the name must be `[a-z0-9]{1,20}` and
    /// not a reserved attribute name.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: impl Into<ExtensionValue>,
    ) -> Result<()> {
        let name = name.into();
        validate_extension_name(&name)?;
        self.0.insert(name, value.into());
        Ok(())
    }

    /// Adds an extension read from the wire: the name was checked by the
    /// decoder with the (looser) reading rules.
    pub(crate) fn insert_received(&mut self, name: String, value: ExtensionValue) {
        self.0.insert(name, value);
    }

    /// Removes an extension.
    pub fn remove(&mut self, name: &str) -> Option<ExtensionValue> {
        self.0.remove(name)
    }
    /// The value of an extension.
    pub fn get(&self, name: &str) -> Option<&ExtensionValue> {
        self.0.get(name)
    }
    /// Extensions in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ExtensionValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// How many extensions there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Outside the crate, a match on an extension value needs a wildcard arm
/// (more CloudEvents types may come); one without must not compile:
///
/// ```compile_fail,E0004
/// use events::envelope::ExtensionValue;
/// fn text(value: &ExtensionValue) -> String {
///     match value {
///         ExtensionValue::String(s) => s.clone(),
///         ExtensionValue::Bool(b) => b.to_string(),
///         ExtensionValue::Integer(i) => i.to_string(),
///     }
/// }
/// ```
#[allow(dead_code)]
const NON_EXHAUSTIVE: () = ();

/// The checked attributes of a received event, for
/// [`EventMetadata::from_wire`].
pub(crate) struct Received {
    pub(crate) id: String,
    /// The type without its version suffix.
    pub(crate) event_type: String,
    pub(crate) version: u32,
    /// Whether the received `type` ended in the version suffix.
    pub(crate) type_has_version: bool,
    pub(crate) source: String,
    pub(crate) time: Option<DateTime<Utc>>,
    pub(crate) subject: Option<String>,
    pub(crate) data_content_type: Option<Cow<'static, str>>,
    pub(crate) data_schema: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn new_metadata_has_a_v7_id_a_time_and_json_content_type() {
        let m = EventMetadata::new("orders.placed", 1, "orders");
        assert_eq!(uuid::Uuid::parse_str(m.id()).unwrap().get_version_num(), 7);
        assert!(m.time().is_some());
        assert_eq!(m.data_content_type(), Some(JSON_CONTENT_TYPE));
        assert_eq!(m.cloudevents_type(), "orders.placed.v1");
        m.validate().unwrap();
    }

    #[test]
    fn a_reaction_joins_the_correlation_and_points_at_its_cause() {
        let mut first = EventMetadata::new("orders.placed", 1, "orders");
        first.set_trace(Some(TraceContext::new(TP).unwrap()));
        let mut second = EventMetadata::new("stock.reserved", 1, "inventory");
        second.set_caused_by(&first);
        assert_eq!(second.correlation_id(), Some(first.id()));
        assert_eq!(second.causation_id(), Some(first.id()));
        assert_eq!(second.trace(), first.trace());

        let mut third = EventMetadata::new("billing.charged", 1, "billing");
        third.set_caused_by(&second);
        assert_eq!(
            third.correlation_id(),
            Some(first.id()),
            "correlation is inherited"
        );
        assert_eq!(third.causation_id(), Some(second.id()));
    }

    #[test]
    fn a_cause_keeps_ids_of_any_length() {
        for len in [1, 36, ShortString::INLINE, ShortString::INLINE + 1, 300] {
            let id = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let correlation = format!("c-{id}");
            let mut cause = EventMetadata::new("orders.placed", 1, "orders");
            cause.set_id(id.clone());
            cause.set_correlation_id(Some(correlation.clone()));
            let mut reaction = EventMetadata::new("stock.reserved", 1, "inventory");
            reaction.set_caused_by(&cause);
            assert_eq!(reaction.causation_id(), Some(id.as_str()));
            assert_eq!(reaction.correlation_id(), Some(correlation.as_str()));
        }
    }

    #[test]
    fn traceparent_validation_follows_w3c() {
        assert!(TraceContext::new(TP).is_ok());
        assert!(
            TraceContext::new(format!("{TP}-extra")).is_ok(),
            "future versions may append"
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(TraceContext::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            TraceContext::new(TP).unwrap().trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn validate_rejects_empty_required_attributes() {
        let mut m = EventMetadata::new("orders.placed", 1, "");
        assert_eq!(
            m.validate().unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );
        m = EventMetadata::new("Orders", 1, "orders");
        assert!(m.validate().is_err());
        m = EventMetadata::new("orders.placed", 0, "orders");
        assert!(m.validate().is_err());
        m = EventMetadata::new("orders.placed", 1, "orders");
        m.set_subject(Some(String::new()));
        assert!(m.validate().is_err());
        m.set_subject(None);
        m.set_id("");
        assert!(m.validate().is_err());
    }

    #[test]
    fn extensions_reject_invalid_names_and_keep_values_typed() {
        let mut ext = Extensions::default();
        ext.insert("tenant", "acme").unwrap();
        ext.insert("priority", 5).unwrap();
        ext.insert("urgent", true).unwrap();
        assert!(ext.insert("Tenant", "x").is_err());
        assert!(ext.insert("traceparent", "x").is_err());
        assert_eq!(ext.get("priority"), Some(&ExtensionValue::Integer(5)));
        assert_eq!(ext.get("urgent").unwrap().to_string(), "true");
        assert_eq!(ext.len(), 3);
        let names: Vec<_> = ext.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["priority", "tenant", "urgent"]);
    }

    #[test]
    fn metadata_round_trips_through_serde_with_cloudevents_names() {
        let mut m = EventMetadata::new("orders.placed", 2, "orders");
        m.set_subject(Some("order-1".into()));
        m.set_correlation_id(Some("c-1".into()));
        m.set_trace(Some(TraceContext::new(TP).unwrap().with_tracestate("k=v")));
        m.extensions_mut().insert("tenant", "acme").unwrap();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["type"], "orders.placed");
        assert_eq!(json["correlationid"], "c-1");
        assert_eq!(json["traceparent"], TP);
        assert_eq!(json["extensions"]["tenant"], "acme");
        let back: EventMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
        assert!(back.type_has_version());
    }

    #[test]
    fn a_received_type_without_version_survives_serde_and_ends_with_an_upcast() {
        let mut m = EventMetadata::from_wire(super::Received {
            id: "sdk-1".into(),
            event_type: "com.example.someevent".into(),
            version: 1,
            type_has_version: false,
            source: "/sdk".into(),
            time: None,
            subject: None,
            data_content_type: None,
            data_schema: None,
        });
        assert_eq!(m.cloudevents_type(), "com.example.someevent");
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["typewithoutversion"], true);
        let back: EventMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(back.cloudevents_type(), "com.example.someevent");
        m.set_version(1);
        assert_eq!(m.cloudevents_type(), "com.example.someevent");
        m.set_version(2);
        assert_eq!(m.cloudevents_type(), "com.example.someevent.v2");
    }
}
