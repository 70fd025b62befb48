//! AsyncAPI 3.0 documents of what a service publishes and handles.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{json, Map, Value};

use super::bundle::{hoist, ref_fragment, ref_name};
use super::schema::{settings, Catalog, Entry};
use super::snapshot::StoredSnapshot;
use crate::bus::Bus;
use crate::envelope::EventPayload;
use crate::error::{Error, Result};
use crate::wire::{Codec, ContentMode, DEFAULT_PREFIX, SPEC_VERSION, STRUCTURED_CONTENT_TYPE};

/// The AsyncAPI version written.
const ASYNCAPI_VERSION: &str = "3.0.0";
/// The NATS bindings' version (operation bindings; the channel, server and
/// message bindings of NATS have no fields yet).
const NATS_BINDING_VERSION: &str = "0.1.0";
/// Where schemas live in the document.
const SCHEMAS: &str = "#/components/schemas/";
/// The component schemas this module adds beside the payloads'; a dot
/// keeps them apart from schemars' names, which are Rust identifiers.
const STRUCTURED: &str = "cloudevents.structured";
const STRUCTURED_HEADERS: &str = "cloudevents.structured-headers";
const BINARY_HEADERS: &str = "cloudevents.binary-headers";
const DEAD_LETTER_HEADERS: &str = "events.dead-letter-headers";

/// An AsyncAPI 3.0 document of a service, built from what it does: the
/// types its bus publishes, the types its consumers have handlers for, and
/// the catalog that gives their schemas.
///
/// Each `(TYPE, VERSION)` is a channel on its NATS subject
/// (`<prefix>.<TYPE>`) with two messages, one per CloudEvents content mode:
/// `structured` (the event as `application/cloudevents+json`, the payload
/// under `data`) and `binary` (attributes as `ce-*` headers, the payload as
/// the body). Publishing is a `send` operation with the message of the bus's
/// content mode; each consumer's handler is a `receive` operation with both
/// (consumers decode both) and the NATS binding's queue group, the
/// consumer's name. Each consumer's dead-letter subject is a channel of its
/// own. Payload schemas and their subschemas are under
/// `components.schemas`.
///
/// ```
/// # #[derive(Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct OrderPlaced { order_id: String }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// # #[derive(Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct StockReserved { order_id: String }
/// # impl events::EventPayload for StockReserved { const TYPE: &'static str = "inventory.stock_reserved"; }
/// use events::consumer::{Consumer, Context, HandlerError};
/// use events::contract::{AsyncApi, Catalog};
/// use events::{Bus, Event};
///
/// async fn confirm(_: Event<StockReserved>, _: Context<()>) -> Result<(), HandlerError> { Ok(()) }
///
/// let bus = Bus::memory("orders");
/// let consumer = Consumer::new(&bus, "orders")?.handle(confirm);
/// let catalog = Catalog::new().with::<OrderPlaced>().with::<StockReserved>();
///
/// let document = AsyncApi::new("orders", "1.0.0")
///     .bus(&bus)
///     .catalog(&catalog)
///     .publishes::<OrderPlaced>()
///     .consumer(&consumer)
///     .server("production", "nats://nats.internal:4222")
///     .build()?;
/// let doc = document.as_value();
/// assert_eq!(doc["channels"]["orders.order_placed.v1"]["address"], "events.orders.order_placed");
/// assert_eq!(doc["operations"]["orders.receive.inventory.stock_reserved.v1"]["bindings"]["nats"]["queue"], "orders");
/// # Ok::<(), events::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    prefix: String,
    content_mode: ContentMode,
    /// `(name, url)`, in the order given.
    servers: Vec<(String, String)>,
    catalog: Catalog,
    sends: BTreeSet<(&'static str, u32)>,
    receivers: Vec<Receiver>,
    snapshots: Vec<StoredSnapshot>,
}

/// A consumer, as the document needs it.
#[derive(Debug, Clone)]
struct Receiver {
    name: String,
    dead_letter_subject: String,
    types: Vec<&'static str>,
}

impl AsyncApi {
    /// A document of the service called `title`, at `version` (the
    /// service's, not the AsyncAPI spec's). Subjects start with the default
    /// prefix and publishing is in structured mode, until
    /// [`bus`](Self::bus) says otherwise.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        AsyncApi {
            title: title.into(),
            version: version.into(),
            description: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            content_mode: ContentMode::default(),
            servers: Vec::new(),
            catalog: Catalog::new(),
            sends: BTreeSet::new(),
            receivers: Vec::new(),
            snapshots: Vec::new(),
        }
    }

    /// A description of the service (CommonMark).
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// The bus the service publishes with: its subject prefix and content
    /// mode.
    pub fn bus(mut self, bus: &Bus) -> Self {
        self.prefix = bus.codec().prefix().to_owned();
        self.content_mode = bus.content_mode();
        self
    }

    /// The subject prefix, without a bus (`events` by default): where the
    /// bus is at hand, [`bus`](Self::bus) sets it. An invalid prefix fails
    /// [`build`](Self::build).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A NATS server the service connects to (`nats://host:port`,
    /// `tls://host:port`, or `host:port`). Credentials in the URL are left
    /// out of the document.
    pub fn server(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.servers.push((name.into(), url.into()));
        self
    }

    /// Adds the types of `catalog`: where the schemas of the types
    /// consumers handle are looked up.
    pub fn catalog(mut self, catalog: &Catalog) -> Self {
        self.catalog = self.catalog.merge(catalog);
        self
    }

    /// Adds one type to the catalog, without saying who publishes it.
    pub fn schema<T: EventPayload + schemars::JsonSchema>(mut self) -> Self {
        self.catalog = self.catalog.with::<T>();
        self
    }

    /// The service publishes events of type `T`.
    pub fn publishes<T: EventPayload + schemars::JsonSchema>(mut self) -> Self {
        self.catalog = self.catalog.with::<T>();
        self.sends.insert((T::TYPE, T::VERSION));
        self
    }

    /// A channel for a stored schema snapshot, with its messages and no
    /// operation: for a document of the contracts themselves, written where
    /// the Rust types are not at hand (the `events schema export` command
    /// does this with [`Snapshots::load`](super::Snapshots::load)).
    ///
    /// ```
    /// use events::contract::{AsyncApi, Snapshots};
    ///
    /// let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    /// let document = Snapshots::new(fixtures)
    ///     .load()?
    ///     .iter()
    ///     .fold(AsyncApi::new("contracts", "1.0.0"), AsyncApi::snapshot)
    ///     .build()?;
    /// let channel = &document.as_value()["channels"]["orders.order_placed.v2"];
    /// assert_eq!(channel["address"], "events.orders.order_placed");
    /// # Ok::<(), events::Error>(())
    /// ```
    pub fn snapshot(mut self, snapshot: &StoredSnapshot) -> Self {
        self.snapshots.push(snapshot.clone());
        self
    }

    /// The service runs `consumer`: a receive operation for each type it
    /// has a handler for (the schema comes from the catalog, which must
    /// have exactly one version of the type), and its dead letters.
    #[cfg(feature = "runtime")]
    #[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
    pub fn consumer<S: Send + Sync + 'static>(
        mut self,
        consumer: &crate::consumer::Consumer<S>,
    ) -> Self {
        self.receivers.push(Receiver {
            name: consumer.name().to_owned(),
            dead_letter_subject: consumer.get_dead_letter_subject().as_str().to_owned(),
            types: consumer.handled_types().collect(),
        });
        self
    }

    /// Writes the document.
    ///
    /// Fails with [`InvalidInput`](crate::ErrorKind::InvalidInput) if a
    /// consumer handles a type the catalog has no schema for (or has more
    /// than one version of: which one the handler decodes into cannot be
    /// told), if two Rust types share a `(TYPE, VERSION)`, if a snapshot
    /// gives a `(TYPE, VERSION)` the document has already or a TYPE that
    /// is not a valid subject token, or if a server URL is not a NATS URL.
    pub fn build(&self) -> Result<AsyncApiDocument> {
        self.catalog.validate()?;
        let codec = Codec::new(&self.prefix)?;

        // Every (TYPE, VERSION) sent or received, with who receives it.
        let mut channels: BTreeMap<(&'static str, u32), Vec<&Receiver>> =
            self.sends.iter().map(|key| (*key, Vec::new())).collect();
        for receiver in &self.receivers {
            for event_type in &receiver.types {
                let entry = self.handled_entry(receiver, event_type)?;
                channels
                    .entry((entry.event_type, entry.version))
                    .or_default()
                    .push(receiver);
            }
        }

        let mut generator = settings()
            .with(|s| s.definitions_path = "/components/schemas".into())
            .into_generator();
        let mut doc_channels = Map::new();
        let mut operations = Map::new();
        for ((event_type, version), receivers) in &channels {
            let entry = self.entry(event_type, *version)?;
            let mut payload = (entry.subschema)(&mut generator);
            for transform in generator.transforms_mut() {
                transform.transform(&mut payload);
            }
            let channel_id = format!("{event_type}.v{version}");
            let channel_ref = json!({ "$ref": format!("#/channels/{channel_id}") });
            let message_ref =
                |name: &str| json!({ "$ref": format!("#/channels/{channel_id}/messages/{name}") });
            let address = codec.subject_for(event_type)?;
            let summary = format!(
                "{event_type} version {version} events, payload type `{}`.",
                entry.rust_type
            );
            doc_channels.insert(
                channel_id.clone(),
                channel(&channel_id, address.as_str(), summary, payload.to_value()),
            );
            if self.sends.contains(&(*event_type, *version)) {
                let mode = match self.content_mode {
                    ContentMode::Binary => "binary",
                    _ => "structured",
                };
                operations.insert(
                    format!("send.{channel_id}"),
                    json!({
                        "action": "send",
                        "channel": channel_ref,
                        "title": format!("Publish {channel_id}"),
                        "summary": format!("{} publishes {channel_id} in {mode} mode.", self.title),
                        "messages": [message_ref(mode)],
                        "bindings": { "nats": { "bindingVersion": NATS_BINDING_VERSION } },
                    }),
                );
            }
            for receiver in receivers {
                operations.insert(
                    format!("{}.receive.{channel_id}", receiver.name),
                    json!({
                        "action": "receive",
                        "channel": channel_ref,
                        "title": format!("{} handles {channel_id}", receiver.name),
                        "summary": format!(
                            "Consumer `{}` handles {channel_id} (both content modes; older versions are upcast).",
                            receiver.name
                        ),
                        "messages": [message_ref("structured"), message_ref("binary")],
                        "bindings": { "nats": {
                            "queue": receiver.name,
                            "bindingVersion": NATS_BINDING_VERSION,
                        } },
                    }),
                );
            }
        }
        for receiver in &self.receivers {
            let channel_id = format!("deadletter.{}", receiver.name);
            doc_channels.insert(channel_id.clone(), dead_letter_channel(receiver));
            operations.insert(
                format!("{}.dead_letter", receiver.name),
                json!({
                    "action": "send",
                    "channel": { "$ref": format!("#/channels/{channel_id}") },
                    "title": format!("{} dead-letters an event", receiver.name),
                    "summary": "A copy of an event the consumer gave up on, with the reason.",
                    "messages": [
                        { "$ref": format!("#/channels/{channel_id}/messages/dead_letter") }
                    ],
                    "bindings": { "nats": { "bindingVersion": NATS_BINDING_VERSION } },
                }),
            );
        }

        let mut schemas = generator.take_definitions(true);
        schemas.insert(STRUCTURED.into(), structured_envelope());
        schemas.insert(STRUCTURED_HEADERS.into(), structured_headers());
        schemas.insert(BINARY_HEADERS.into(), binary_headers());
        if !self.receivers.is_empty() {
            schemas.insert(DEAD_LETTER_HEADERS.into(), dead_letter_headers());
        }
        for snapshot in &self.snapshots {
            let channel_id = snapshot.cloudevents_type();
            if doc_channels.contains_key(&channel_id) {
                return Err(Error::invalid(format!(
                    "{channel_id} is in the document twice (a snapshot of a type it has already)"
                )));
            }
            let address = codec.subject_for(snapshot.event_type())?;
            let name = hoist(&channel_id, snapshot.schema(), SCHEMAS, &mut schemas);
            let summary = format!(
                "{} version {} events, schema from its snapshot.",
                snapshot.event_type(),
                snapshot.version()
            );
            let payload = json!({ "$ref": format!("{SCHEMAS}{}", ref_fragment(&name)) });
            doc_channels.insert(
                channel_id.clone(),
                channel(&channel_id, address.as_str(), summary, payload),
            );
        }

        let mut info = Map::new();
        info.insert("title".into(), self.title.clone().into());
        info.insert("version".into(), self.version.clone().into());
        if let Some(description) = &self.description {
            info.insert("description".into(), description.clone().into());
        }
        let mut document = Map::new();
        document.insert("asyncapi".into(), ASYNCAPI_VERSION.into());
        document.insert("info".into(), Value::Object(info));
        document.insert("defaultContentType".into(), STRUCTURED_CONTENT_TYPE.into());
        if !self.servers.is_empty() {
            let mut servers = Map::new();
            for (name, url) in &self.servers {
                servers.insert(name.clone(), server(url)?);
            }
            document.insert("servers".into(), Value::Object(servers));
        }
        document.insert("channels".into(), Value::Object(doc_channels));
        document.insert("operations".into(), Value::Object(operations));
        document.insert(
            "components".into(),
            json!({ "schemas": Value::Object(schemas) }),
        );
        let mut value = Value::Object(document);
        sanitize_schema_names(&mut value);
        Ok(AsyncApiDocument { value })
    }

    fn entry(&self, event_type: &str, version: u32) -> Result<&Entry> {
        self.catalog
            .versions_of(event_type)
            .into_iter()
            .find(|e| e.version == version)
            .ok_or_else(|| Error::invalid(format!("no schema for {event_type} v{version}")))
    }

    /// The one catalog entry of a type a consumer handles.
    fn handled_entry(&self, receiver: &Receiver, event_type: &str) -> Result<&Entry> {
        match self.catalog.versions_of(event_type)[..] {
            [entry] => Ok(entry),
            [] => Err(Error::invalid(format!(
                "consumer `{}` handles {event_type}, which the catalog has no schema for: add its type to the catalog",
                receiver.name
            ))),
            [a, b, ..] => Err(Error::invalid(format!(
                "consumer `{}` handles {event_type}, which the catalog has at v{} and v{}: keep the version the consumer decodes into",
                receiver.name, a.version, b.version
            ))),
        }
    }
}

/// A written AsyncAPI document.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncApiDocument {
    value: Value,
}

impl AsyncApiDocument {
    /// The document as JSON.
    pub fn as_value(&self) -> &Value {
        &self.value
    }

    /// The document as JSON, owned.
    pub fn into_value(self) -> Value {
        self.value
    }

    /// The document as indented JSON text (AsyncAPI accepts JSON as well
    /// as YAML), ending with a newline.
    pub fn to_json_pretty(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(&self.value).expect("a JSON value always serializes");
        text.push('\n');
        text
    }
}

impl fmt::Display for AsyncApiDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_pretty())
    }
}

/// A channel: one `(TYPE, VERSION)` on its subject, one message per
/// content mode.
fn channel(channel_id: &str, address: &str, summary: String, payload: Value) -> Value {
    json!({
        "address": address,
        "title": channel_id,
        "summary": summary,
        "messages": {
            "structured": {
                "name": format!("{channel_id}.structured"),
                "title": format!("{channel_id} (structured mode)"),
                "summary": "The whole event as CloudEvents JSON; the payload is `data`.",
                "contentType": STRUCTURED_CONTENT_TYPE,
                "headers": { "$ref": format!("{SCHEMAS}{STRUCTURED_HEADERS}") },
                "payload": {
                    "allOf": [
                        { "$ref": format!("{SCHEMAS}{STRUCTURED}") },
                        {
                            "type": "object",
                            "properties": {
                                "type": { "type": "string", "const": channel_id },
                                "data": payload,
                            },
                            "required": ["data"],
                        },
                    ],
                },
                "correlationId": { "location": "$message.payload#/correlationid" },
            },
            "binary": {
                "name": format!("{channel_id}.binary"),
                "title": format!("{channel_id} (binary mode)"),
                "summary": "CloudEvents attributes as percent-encoded `ce-*` headers; the body is the payload.",
                "contentType": crate::envelope::JSON_CONTENT_TYPE,
                "headers": {
                    "allOf": [
                        { "$ref": format!("{SCHEMAS}{BINARY_HEADERS}") },
                        {
                            "type": "object",
                            "properties": { "ce-type": { "type": "string", "const": channel_id } },
                        },
                    ],
                },
                "payload": payload,
                "correlationId": { "location": "$message.header#/ce-correlationid" },
            },
        },
        // The NATS channel binding has no fields (the subject is the address).
        "bindings": { "nats": {} },
    })
}

fn dead_letter_channel(receiver: &Receiver) -> Value {
    json!({
        "address": receiver.dead_letter_subject,
        "title": format!("Dead letters of {}", receiver.name),
        "summary": "Events the consumer gave up on: the original headers and body, plus `dead-letter-*` headers.",
        "messages": {
            "dead_letter": {
                "name": "dead_letter",
                "title": "Dead letter",
                "summary": "The original message (either content mode), with why and after how many attempts it was given up.",
                "headers": { "$ref": format!("{SCHEMAS}{DEAD_LETTER_HEADERS}") },
                "payload": { "description": "The original body, as received (empty when it did not fit with the headers)." },
            },
        },
        "bindings": { "nats": {} },
    })
}

/// The attributes of the structured JSON format, with the extensions this
/// crate writes.
fn structured_envelope() -> Value {
    json!({
        "type": "object",
        "description": "A CloudEvents 1.0 event in the JSON format. The version rides in `type` (`<TYPE>.v<VERSION>`).",
        "properties": {
            "specversion": { "type": "string", "const": SPEC_VERSION },
            "id": { "type": "string", "minLength": 1, "description": "Unique per event (a UUIDv7 by default); the deduplication key." },
            "source": { "type": "string", "minLength": 1, "description": "The producing service." },
            "type": { "type": "string", "minLength": 1 },
            "time": { "type": "string", "format": "date-time" },
            "subject": { "type": "string", "minLength": 1, "description": "The entity the event is about; the ordering key." },
            "datacontenttype": { "type": "string" },
            "dataschema": { "type": "string", "format": "uri" },
            "correlationid": { "type": "string", "description": "The id shared by every event of one business flow." },
            "causationid": { "type": "string", "description": "The id of the event this one reacts to." },
            "traceparent": { "type": "string", "description": "W3C trace context." },
            "tracestate": { "type": "string", "description": "W3C trace state." },
            "data": {},
        },
        "required": ["specversion", "id", "source", "type"],
    })
}

fn structured_headers() -> Value {
    json!({
        "type": "object",
        "properties": {
            "Content-Type": { "type": "string", "const": STRUCTURED_CONTENT_TYPE },
        },
        "required": ["Content-Type"],
    })
}

/// The `ce-*` headers of binary mode; values are percent-encoded.
fn binary_headers() -> Value {
    let attribute = |description: &str| json!({ "type": "string", "description": description });
    json!({
        "type": "object",
        "description": "CloudEvents attributes, one `ce-<name>` header each, values percent-encoded (NATS protocol binding).",
        "properties": {
            "ce-specversion": { "type": "string", "const": SPEC_VERSION },
            "ce-id": attribute("Unique per event; the deduplication key."),
            "ce-source": attribute("The producing service."),
            "ce-type": attribute("`<TYPE>.v<VERSION>`."),
            "ce-time": attribute("RFC 3339."),
            "ce-subject": attribute("The entity the event is about; the ordering key."),
            "ce-datacontenttype": attribute("The payload's media type."),
            "ce-dataschema": attribute("A URI of the payload's schema."),
            "ce-correlationid": attribute("The id shared by every event of one business flow."),
            "ce-causationid": attribute("The id of the event this one reacts to."),
            "ce-traceparent": attribute("W3C trace context."),
            "ce-tracestate": attribute("W3C trace state."),
            "content-type": attribute("`ce-datacontenttype`, not encoded, for clients that know nothing of CloudEvents."),
        },
        "required": ["ce-specversion", "ce-id", "ce-source", "ce-type"],
    })
}

/// The headers a dead-letter copy adds.
#[cfg(feature = "runtime")]
fn dead_letter_headers() -> Value {
    use crate::consumer::{dead_letter_headers as h, Reason};
    let reasons = Reason::ALL.map(Reason::as_str);
    let count = json!({ "type": "string", "pattern": "^[0-9]+$" });
    let text = |description: &str| json!({ "type": "string", "description": description });
    let properties: Map<String, Value> = [
        (h::REASON, json!({ "type": "string", "enum": reasons })),
        (h::ERROR, text("The error text, percent-encoded.")),
        (h::ATTEMPTS, count.clone()),
        (h::CONSUMER, text("The consumer that gave up.")),
        (h::SUBJECT, text("The subject the event was published on.")),
        (h::TIME, json!({ "type": "string", "format": "date-time" })),
        (h::BODY_OMITTED, count.clone()),
        (h::STREAM_SEQUENCE, count),
    ]
    .into_iter()
    .map(|(name, schema)| (name.to_owned(), schema))
    .collect();
    json!({
        "type": "object",
        "description": "The original message's headers, plus these.",
        "properties": properties,
        "required": [h::REASON, h::ATTEMPTS, h::CONSUMER, h::SUBJECT, h::TIME],
    })
}

#[cfg(not(feature = "runtime"))]
fn dead_letter_headers() -> Value {
    // Without the runtime there are no consumers, so no dead letters.
    Value::Null
}

/// An AsyncAPI server object from a NATS URL, credentials left out.
fn server(url: &str) -> Result<Value> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
    if !matches!(scheme, "nats" | "tls") {
        return Err(Error::invalid(format!(
            "server URL scheme {scheme:?} is not nats or tls"
        )));
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err(Error::invalid(
            "server URL must be nats://host:port or tls://host:port",
        ));
    }
    let mut server = json!({ "host": host, "protocol": "nats" });
    if scheme == "tls" {
        server["description"] = "TLS required.".into();
    }
    Ok(server)
}

/// Renames component schemas whose names AsyncAPI does not allow (its keys
/// are `[A-Za-z0-9._-]+`; schemars names generic types with `<`, `>` and
/// `,`), and rewrites every reference to them.
fn sanitize_schema_names(document: &mut Value) {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let bad: Vec<String> = schemas
        .keys()
        .filter(|k| !k.chars().all(allowed))
        .cloned()
        .collect();
    if bad.is_empty() {
        return;
    }
    let mut renames = BTreeMap::new();
    for name in bad {
        let base: String = name
            .chars()
            .map(|c| if allowed(c) { c } else { '_' })
            .collect();
        let mut candidate = base.clone();
        let mut n = 2;
        while schemas.contains_key(&candidate) {
            candidate = format!("{base}_{n}");
            n += 1;
        }
        if let Some(schema) = schemas.remove(&name) {
            schemas.insert(candidate.clone(), schema);
        }
        renames.insert(name, candidate);
    }
    rewrite_refs(document, &renames);
}

fn rewrite_refs(value: &mut Value, renames: &BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get_mut("$ref") {
                if let Some(encoded) = reference.strip_prefix(SCHEMAS) {
                    if let Some(new) = renames.get(&ref_name(encoded)) {
                        *reference = format!("{SCHEMAS}{new}");
                    }
                }
            }
            map.values_mut().for_each(|v| rewrite_refs(v, renames));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, renames)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
