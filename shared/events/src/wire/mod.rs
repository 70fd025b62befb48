//! The wire format: [`Event<T>`] to and from a transport [`Message`],
//! following CloudEvents 1.0 on NATS.
//!
//! - **Structured mode** (the default): the body is the CloudEvents JSON
//!   event format, header `Content-Type: application/cloudevents+json`.
//! - **Binary mode**: every attribute is a lowercase `ce-<name>` header with
//!   a percent-encoded value, `content-type` repeats `ce-datacontenttype`, and
//!   the body is the payload's JSON, untouched.
//!
//! Decoding detects the mode: a `Content-Type` starting with
//! `application/cloudevents` is structured, otherwise a `ce-specversion`
//! header means binary, otherwise the body is tried as structured JSON.
//!
//! The NATS subject is `<prefix>.<type>`, built from validated tokens only,
//! never from event attributes; with keys in subjects (for a stream
//! partitioned by key) it is `<prefix>.<key token>.<type>`, the key token
//! made safe as [`key_token`] says. The full mapping table is in
//! `ARCHITECTURE.md`.

mod binary;
mod keys;
mod structured;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::envelope::{parse_version_token, Event, EventMetadata, EventPayload, Received};
use crate::error::{Error, Result};
use crate::transport::{Message, Subject, SubjectPattern};
use crate::versioning::{Upcasters, VersionPolicy};

pub use keys::{key_token, partition_of, MAX_LITERAL_KEY, NO_KEY};

/// The CloudEvents spec version written and accepted.
pub const SPEC_VERSION: &str = "1.0";
/// The media type of the structured JSON event format.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "events";

/// How an event is laid out in a message. CloudEvents defines more modes
/// (batch) than this crate writes, so matches need a wildcard arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentMode {
    /// The whole event as CloudEvents JSON in the body.
    #[default]
    Structured,
    /// Attributes in `ce-` headers, the payload alone in the body.
    Binary,
}

/// Encodes events into messages and decodes messages into events.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// # struct OrderPlaced { order_id: String }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// use events::wire::{Codec, ContentMode};
/// use events::Event;
///
/// let codec = Codec::new("events")?;
/// let event = Event::new("orders", OrderPlaced { order_id: "o-1".into() });
/// let message = codec.encode(&event, ContentMode::Binary)?;
/// assert_eq!(message.subject.as_str(), "events.orders.order_placed");
/// assert_eq!(message.headers.get("ce-type"), Some("orders.order_placed.v1"));
///
/// let decoded = codec.decode(&message)?.into_event::<OrderPlaced>(&Default::default(), Default::default())?;
/// assert_eq!(decoded.event, event);
/// # Ok::<(), events::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Codec {
    prefix: String,
    /// Subjects of the Rust payload types seen so far: building and
    /// validating a subject per event would cost an allocation and a scan.
    subjects: Arc<RwLock<HashMap<&'static str, Subject>>>,
    /// The size of the last structured body, to allocate the next one once.
    size_hint: Arc<AtomicUsize>,
    /// Whether messages carry the event id as dedup id (only useful, and
    /// only paid for, where the transport deduplicates publishes).
    dedup_ids: bool,
    /// Whether subjects carry the key token after the prefix.
    keyed: bool,
}

impl Codec {
    /// A codec whose subjects start with `prefix` (one or more dot-separated
    /// tokens of `[A-Za-z0-9_-]`).
    pub fn new(prefix: &str) -> Result<Self> {
        Subject::parse(prefix)?;
        Ok(Codec {
            prefix: prefix.to_owned(),
            subjects: Arc::default(),
            size_hint: Arc::default(),
            dedup_ids: true,
            keyed: false,
        })
    }

    /// Whether encoded messages carry the event id as
    /// [`Message::dedup_id`] (default true). The bus turns it off for
    /// transports without publish deduplication.
    pub fn with_dedup_ids(mut self, enabled: bool) -> Self {
        self.dedup_ids = enabled;
        self
    }

    /// Whether subjects carry the event's key (default false):
    /// `<prefix>.<key token>.<type>` instead of `<prefix>.<type>`, so a
    /// stream can partition by key and every event of one entity, whatever
    /// its type, lands in one partition. Publishers and subscribers of one
    /// stream must agree; the bus turns it on when its transport's stream
    /// is partitioned by key
    /// ([`Capabilities::key_partitions`](crate::transport::Capabilities::key_partitions)).
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// # struct OrderPlaced { order_id: String }
    /// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
    /// use events::wire::{Codec, ContentMode};
    /// use events::Event;
    ///
    /// let codec = Codec::new("events")?.with_keys_in_subjects(true);
    /// let event = Event::new("orders", OrderPlaced { order_id: "o-1".into() }).with_subject("o-1");
    /// let message = codec.encode(&event, ContentMode::Binary)?;
    /// assert_eq!(message.subject.as_str(), "events.o-1.orders.order_placed");
    /// assert_eq!(codec.pattern_for("orders.order_placed")?.as_str(), "events.*.orders.order_placed");
    /// # Ok::<(), events::Error>(())
    /// ```
    pub fn with_keys_in_subjects(mut self, keyed: bool) -> Self {
        self.keyed = keyed;
        self
    }

    /// Whether subjects carry the event's key (see
    /// [`with_keys_in_subjects`](Self::with_keys_in_subjects)).
    pub fn keys_in_subjects(&self) -> bool {
        self.keyed
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject events of `event_type` are published on, without keys in
    /// subjects (with them, the key token follows the prefix: see
    /// [`pattern_for`](Self::pattern_for) to subscribe).
    pub fn subject_for(&self, event_type: &str) -> Result<Subject> {
        crate::envelope::validate_type_name(event_type)?;
        Subject::from_tokens(self.prefix.split('.').chain(event_type.split('.')))
    }

    /// The pattern matching every event of `event_type`, whatever its key:
    /// `<prefix>.<type>`, or `<prefix>.*.<type>` with keys in subjects.
    pub fn pattern_for(&self, event_type: &str) -> Result<SubjectPattern> {
        let subject = self.subject_for(event_type)?;
        if !self.keyed {
            return Ok(SubjectPattern::exact(&subject));
        }
        SubjectPattern::parse(&format!("{}.*.{event_type}", self.prefix))
    }

    /// The subject of one event: the type's, with the key token after the
    /// prefix when keys are in subjects.
    fn keyed_subject(&self, type_subject: Subject, metadata: &EventMetadata) -> Subject {
        if !self.keyed {
            return type_subject;
        }
        let token = key_token(metadata.subject());
        let rest = &type_subject.as_str()[self.prefix.len()..];
        let mut subject = String::with_capacity(type_subject.as_str().len() + token.len() + 1);
        subject.push_str(&self.prefix);
        subject.push('.');
        subject.push_str(&token);
        subject.push_str(rest);
        // Every token is valid: the prefix and type were validated, and a
        // key token is safe by construction.
        Subject::from_valid(subject)
    }

    /// The pattern matching every event under this prefix (`<prefix>.>`).
    pub fn all_events(&self) -> SubjectPattern {
        SubjectPattern::parse(&format!("{}.>", self.prefix))
            .expect("a valid prefix makes a valid pattern")
    }

    /// The subject of payload type `T`, from the cache.
    fn subject_of<T: EventPayload>(&self) -> Result<Subject> {
        let cached = self
            .subjects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(T::TYPE)
            .cloned();
        match cached {
            Some(subject) => Ok(subject),
            None => {
                let subject = self.subject_for(T::TYPE)?;
                let mut map = self.subjects.write().unwrap_or_else(|e| e.into_inner());
                map.insert(T::TYPE, subject.clone());
                Ok(subject)
            }
        }
    }

    /// Encodes a typed event. Validates the metadata first; fails with
    /// [`ErrorKind::Encode`](crate::ErrorKind::Encode) if the payload does not
    /// serialize.
    pub fn encode<T: EventPayload>(&self, event: &Event<T>, mode: ContentMode) -> Result<Message> {
        self.encode_parts(&event.metadata, &event.payload, mode)
    }

    /// [`Codec::encode`] with the metadata apart from the payload, so a
    /// publish can send other metadata (an injected trace context) without
    /// owning or cloning the event.
    pub(crate) fn encode_parts<T: EventPayload>(
        &self,
        metadata: &EventMetadata,
        payload: &T,
        mode: ContentMode,
    ) -> Result<Message> {
        if metadata.event_type() != T::TYPE {
            metadata.validate()?;
            return Err(Error::invalid(format!(
                "metadata type {:?} does not match the payload type {:?}",
                metadata.event_type(),
                T::TYPE
            )));
        }
        // The type name is `T::TYPE`, validated (once per type) by the
        // subject lookup.
        let subject = self.keyed_subject(self.subject_of::<T>()?, metadata);
        metadata.validate_except_type()?;
        let (headers, payload) = match mode {
            ContentMode::Structured => {
                let hint = self.size_hint.load(Ordering::Relaxed);
                let encoded = structured::encode(metadata, payload, hint)?;
                self.size_hint.store(encoded.1.len(), Ordering::Relaxed);
                encoded
            }
            ContentMode::Binary => binary::encode(metadata, payload)?,
        };
        Ok(Message {
            subject,
            headers,
            payload,
            dedup_id: self.dedup_ids.then(|| metadata.id().to_owned()),
        })
    }

    /// Encodes an event whose payload is already-encoded data (used to
    /// forward or republish events without knowing their Rust type).
    pub fn encode_raw(&self, event: &RawEvent, mode: ContentMode) -> Result<Message> {
        let metadata = &event.metadata;
        metadata.validate()?;
        let subject = self.keyed_subject(self.subject_for(metadata.event_type())?, metadata);
        let (headers, payload) = match mode {
            ContentMode::Structured => {
                structured::encode_raw(metadata, event.data.as_ref(), event.data_is_json())?
            }
            ContentMode::Binary => {
                binary::encode_raw(metadata, event.data.clone().unwrap_or_default())
            }
        };
        Ok(Message {
            subject,
            headers,
            payload,
            dedup_id: self.dedup_ids.then(|| metadata.id().to_owned()),
        })
    }

    /// Decodes a message into metadata and undecoded data, detecting the
    /// content mode. Never panics, whatever the bytes.
    pub fn decode(&self, message: &Message) -> Result<RawEvent> {
        decode(message)
    }
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            prefix: DEFAULT_PREFIX.to_owned(),
            subjects: Arc::default(),
            size_hint: Arc::default(),
            dedup_ids: true,
            keyed: false,
        }
    }
}

/// Decodes a message into metadata and undecoded data. See [`Codec::decode`].
pub fn decode(message: &Message) -> Result<RawEvent> {
    match mode(message) {
        Mode::Batch => Err(Error::decode(
            "batched CloudEvents (application/cloudevents-batch) are not supported",
        )),
        Mode::Structured => structured::decode(&message.payload),
        Mode::Binary => binary::decode(message),
    }
}

/// Decodes a message into an event of type `T`, upcasting older versions
/// and applying `policy` to newer ones: the same as [`decode`] then
/// [`RawEvent::into_event`], but in a single pass over the body in the
/// common case (a structured event of exactly `T`'s type and version, JSON
/// data), where the payload is deserialized as the parser meets it instead
/// of being scanned as raw JSON first. Typed subscriptions and the consumer
/// runtime decode this way.
///
/// # Errors
///
/// As [`decode`] and [`RawEvent::into_event`].
pub fn decode_event<T: EventPayload>(
    message: &Message,
    upcasters: &Upcasters,
    policy: VersionPolicy,
) -> Result<Decoded<T>> {
    match decode_fast::<T>(message) {
        Some(event) => Ok(Decoded {
            event,
            wire_version: T::VERSION,
        }),
        None => decode(message).and_then(|raw| raw.into_event(upcasters, policy)),
    }
}

/// The common case of [`decode_event`] in one pass over the body: a
/// structured event of exactly `T`'s type and version, its data JSON (a
/// second pass over a 4 KiB payload was 10-15% of its handling). `None`
/// for anything else, which the general path decodes, upcasts or rejects
/// with its errors.
pub(crate) fn decode_fast<T: EventPayload>(message: &Message) -> Option<Event<T>> {
    match mode(message) {
        Mode::Structured => structured::decode_typed::<T>(&message.payload),
        Mode::Batch | Mode::Binary => None,
    }
}

/// How a message carries its event.
enum Mode {
    Batch,
    Structured,
    Binary,
}

fn mode(message: &Message) -> Mode {
    let headers = &message.headers;
    const CLOUDEVENTS: &str = "application/cloudevents";
    match headers.get("content-type") {
        // `application/cloudevents-batch` is read once, in two parts.
        Some(ct) if starts_with_ignore_case(ct, CLOUDEVENTS) => match ct.get(CLOUDEVENTS.len()..) {
            Some(rest) if starts_with_ignore_case(rest, "-batch") => Mode::Batch,
            _ => Mode::Structured,
        },
        _ if headers.get("ce-specversion").is_some() => Mode::Binary,
        _ => Mode::Structured,
    }
}

/// A decoded event whose payload is still bytes: what a consumer sees before
/// it picks a Rust type, and what dead-letter and replay tools handle.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// The event's attributes. `version` is the version on the wire.
    pub metadata: EventMetadata,
    /// The payload bytes: JSON text for JSON content types, otherwise the
    /// bytes as sent. `None` if the event carries no data.
    pub data: Option<Bytes>,
}

impl RawEvent {
    /// Whether the data is JSON (content type `application/json`, `text/json`,
    /// `*/*+json`, or none given).
    pub fn data_is_json(&self) -> bool {
        self.metadata
            .data_content_type()
            .is_none_or(is_json_content_type)
    }

    /// The data parsed as a JSON value.
    pub fn data_json(&self) -> Result<serde_json::Value> {
        let data = self.json_data()?;
        serde_json::from_slice(data)
            .map_err(|e| Error::decode("payload is not valid JSON").with_source(e))
    }

    fn json_data(&self) -> Result<&[u8]> {
        if !self.data_is_json() {
            return Err(Error::decode(format!(
                "payload content type {:?} is not JSON",
                self.metadata.data_content_type().unwrap_or_default()
            )));
        }
        self.data
            .as_deref()
            .ok_or_else(|| Error::decode("event has no data"))
    }

    /// Decodes the payload into `T`, bringing older versions up to date with
    /// `upcasters` and handling newer ones by `policy`.
    ///
    /// Errors: [`Decode`](crate::ErrorKind::Decode) if the type differs or the
    /// payload does not match `T`; [`UnsupportedVersion`](crate::ErrorKind::UnsupportedVersion)
    /// for a newer version under [`VersionPolicy::Reject`];
    /// [`MissingUpcaster`](crate::ErrorKind::MissingUpcaster) for a gap in the chain.
    pub fn into_event<T: EventPayload>(
        self,
        upcasters: &Upcasters,
        policy: VersionPolicy,
    ) -> Result<Decoded<T>> {
        if self.metadata.event_type() != T::TYPE {
            return Err(Error::decode(format!(
                "expected an event of type {:?}, got {:?}",
                T::TYPE,
                self.metadata.event_type()
            )));
        }
        let wire_version = self.metadata.version();
        // No data reads as JSON `null`: what a payload such as a unit struct
        // or an `Option` serializes to, and `"data":null` is no data to the
        // JSON format. A type that needs data fails to decode from it.
        let data = match &self.data {
            None if self.data_is_json() => b"null".as_slice(),
            _ => self.json_data()?,
        };
        let payload: T = if wire_version < T::VERSION {
            let value = serde_json::from_slice(data)
                .map_err(|e| Error::decode("payload is not valid JSON").with_source(e))?;
            let value = upcasters.upcast(T::TYPE, wire_version, T::VERSION, value)?;
            serde_json::from_value(value).map_err(|e| payload_error::<T>(wire_version, e))?
        } else {
            if wire_version > T::VERSION && policy == VersionPolicy::Reject {
                return Err(Error::new(
                    crate::ErrorKind::UnsupportedVersion,
                    format!(
                        "{} v{wire_version} is newer than v{} known here",
                        T::TYPE,
                        T::VERSION
                    ),
                ));
            }
            serde_json::from_slice(data).map_err(|e| payload_error::<T>(wire_version, e))?
        };
        let mut metadata = self.metadata;
        metadata.set_version(T::VERSION);
        Ok(Decoded {
            event: Event::from_parts(metadata, payload),
            wire_version,
        })
    }
}

fn payload_error<T: EventPayload>(version: u32, e: serde_json::Error) -> Error {
    Error::decode(format!(
        "payload of {} v{version} does not match the Rust type",
        T::TYPE
    ))
    .with_source(e)
}

/// A typed event decoded from the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    /// The event, its metadata's version set to the Rust type's version.
    pub event: Event<T>,
    /// The version the producer sent (lower than the type's after upcasting,
    /// higher under a tolerant policy).
    pub wire_version: u32,
}

/// `orders.placed.v2` -> (`orders.placed`, 2); a type without a version
/// suffix is version 1 (other producers may not use suffixes).
pub(crate) fn split_versioned_type(ce_type: &str) -> (&str, u32) {
    // A byte search: every decoded event comes here, and `rsplit_once` with
    // a `char` costs several times as much on short types.
    let dot = ce_type.bytes().rposition(|b| b == b'.');
    if let Some((base, last)) = dot.map(|i| (&ce_type[..i], &ce_type[i + 1..])) {
        if let Some(version) = parse_version_token(last) {
            if !base.is_empty() {
                return (base, version);
            }
        }
    }
    (ce_type, 1)
}

/// RFC 3339 in UTC with `Z` and as many fractional digits as needed (0, 3,
/// 6 or 9). Written by hand: chrono's formatter costs several hundred
/// nanoseconds per event, which is most of the envelope's budget.
pub(crate) fn format_time(time: DateTime<Utc>) -> String {
    let mut buf = [0; TIME_TEXT_MAX];
    match time_text(time, &mut buf) {
        Some(text) => text.iter().map(|&b| char::from(b)).collect(),
        None => time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

/// The longest [`time_text`]: `9999-12-31T23:59:59.123456789Z`.
pub(crate) const TIME_TEXT_MAX: usize = 30;

/// [`format_time`] into `buf`, for the four-digit years without a leap
/// second; `None` for the rest, which chrono formats. The text is ASCII
/// digits, `-`, `:`, `T`, `.` and `Z`: nothing JSON would escape.
pub(crate) fn time_text(time: DateTime<Utc>, buf: &mut [u8; TIME_TEXT_MAX]) -> Option<&[u8]> {
    use chrono::{Datelike, Timelike};
    let (year, nanos) = (time.year(), time.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut at = 0;
    let mut put = |n: u32, width: usize, after: Option<u8>| {
        let mut v = n;
        for d in buf[at..at + width].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += width;
        if let Some(c) = after {
            buf[at] = c;
            at += 1;
        }
    };
    put(year as u32, 4, Some(b'-'));
    put(time.month(), 2, Some(b'-'));
    put(time.day(), 2, Some(b'T'));
    put(time.hour(), 2, Some(b':'));
    put(time.minute(), 2, Some(b':'));
    let fraction = match nanos {
        0 => None,
        n if n % 1_000_000 == 0 => Some((n / 1_000_000, 3)),
        n if n % 1_000 == 0 => Some((n / 1_000, 6)),
        n => Some((n, 9)),
    };
    match fraction {
        None => put(time.second(), 2, Some(b'Z')),
        Some((value, width)) => {
            put(time.second(), 2, Some(b'.'));
            put(value, width, Some(b'Z'));
        }
    }
    Some(&buf[..at])
}

/// Parses RFC 3339. The common UTC form (`...Z`) takes a hand-written path;
/// offsets and anything unusual go through chrono.
///
/// A time whose UTC form leaves the four-digit years (an offset can move
/// `9999-12-31T23:59:59-01:00` into year 10000) is a decode error: it could
/// not be written again as RFC 3339, so re-encoding the event would make it
/// unreadable.
pub(crate) fn parse_time(value: &str) -> Result<DateTime<Utc>> {
    use chrono::Datelike;
    parse_utc_fast(value).map(Ok).unwrap_or_else(|| {
        let time = DateTime::parse_from_rfc3339(value)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Error::decode(format!("time {value:?} is not RFC 3339")).with_source(e))?;
        if !(0..=9999).contains(&time.year()) {
            return Err(Error::decode(format!(
                "time {value:?} is outside the years 0000 to 9999 in UTC"
            )));
        }
        Ok(time)
    })
}

fn parse_utc_fast(value: &str) -> Option<DateTime<Utc>> {
    let b = value.as_bytes();
    if b.len() < 20 || !matches!(b[b.len() - 1], b'Z' | b'z') || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            num(20..20 + digits.len())? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let time =
        chrono::NaiveTime::from_hms_nano_opt(num(11..13)?, num(14..16)?, num(17..19)?, nanos)?;
    Some(date.and_time(time).and_utc())
}

pub(crate) fn is_json_content_type(ct: &str) -> bool {
    // The media type ends at the first `;` (parameters follow). Found with
    // a plain byte loop: `split` sets up a character searcher, which costs
    // more than the loop on values this short. `;` is ASCII, so the cut is
    // at a character boundary.
    let end = ct.bytes().position(|b| b == b';').unwrap_or(ct.len());
    let media = ct[..end].trim();
    // The usual spelling first: an exact comparison is a few word compares,
    // a case-insensitive one a loop over every byte.
    media == "application/json"
        || media.eq_ignore_ascii_case("application/json")
        || media.eq_ignore_ascii_case("text/json")
        // Bytes, not a str slice: the value comes from the network and a
        // multi-byte character there must not make us slice inside it.
        || media.len() >= 5
            && media.as_bytes()[media.len() - 5..].eq_ignore_ascii_case(b"+json")
}

fn starts_with_ignore_case(value: &str, prefix: &str) -> bool {
    // The usual spelling first: an exact comparison is a few word compares,
    // a case-insensitive one a loop over every byte (every received message
    // has its content type read).
    value.len() >= prefix.len()
        && (value.as_bytes().starts_with(prefix.as_bytes())
            || value.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The context attributes a decoder read (extensions aside), each as the
/// text it came as: borrowed where the decoder could borrow it. `None` is an
/// attribute the event does not have.
#[derive(Debug, Default)]
pub(crate) struct Attributes<'a> {
    pub(crate) specversion: Option<Cow<'a, str>>,
    pub(crate) id: Option<Cow<'a, str>>,
    pub(crate) source: Option<Cow<'a, str>>,
    pub(crate) ce_type: Option<Cow<'a, str>>,
    pub(crate) time: Option<Cow<'a, str>>,
    pub(crate) subject: Option<Cow<'a, str>>,
    pub(crate) data_content_type: Option<Cow<'a, str>>,
    pub(crate) data_schema: Option<Cow<'a, str>>,
}

/// Required attributes shared by both decoders: checks them and builds the
/// metadata, allocating only for what the metadata keeps.
pub(crate) fn metadata_from_attributes(attributes: Attributes<'_>) -> Result<EventMetadata> {
    let specversion = attributes
        .specversion
        .ok_or_else(|| Error::decode("missing required attribute specversion"))?;
    if specversion != SPEC_VERSION {
        return Err(Error::decode(format!(
            "specversion {specversion:?} is not supported (only 1.0)"
        )));
    }
    let required = |name: &str, v: Option<Cow<'_, str>>| match v {
        Some(v) if !v.is_empty() => Ok(v.into_owned()),
        Some(_) => Err(Error::decode(format!("required attribute {name} is empty"))),
        None => Err(Error::decode(format!("missing required attribute {name}"))),
    };
    let id = required("id", attributes.id)?;
    let source = required("source", attributes.source)?;
    let ce_type = attributes
        .ce_type
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::decode("missing or empty required attribute type"))?;
    let time = attributes.time.as_deref().map(parse_time).transpose()?;
    let subject = attributes.subject;
    if subject.as_deref() == Some("") {
        return Err(Error::decode("attribute subject is empty"));
    }
    let (base, version) = split_versioned_type(&ce_type);
    // Without a suffix the base is the whole type, written back as it came.
    let type_has_version = base.len() < ce_type.len();
    let data_content_type = attributes.data_content_type.map(|ct| {
        // Nearly every event is JSON: share the constant instead of allocating.
        if ct == crate::envelope::JSON_CONTENT_TYPE {
            Cow::Borrowed(crate::envelope::JSON_CONTENT_TYPE)
        } else {
            Cow::Owned(ct.into_owned())
        }
    });
    Ok(EventMetadata::from_wire(Received {
        id,
        event_type: base.to_owned(),
        version,
        type_has_version,
        source,
        time,
        subject: subject.map(Cow::into_owned),
        data_content_type,
        data_schema: attributes.data_schema.map(Cow::into_owned),
    }))
}

/// Sorts a decoded extension into the typed fields it maps onto, or keeps it
/// as an extension.
pub(crate) fn apply_extension(
    metadata: &mut EventMetadata,
    name: String,
    value: crate::envelope::ExtensionValue,
) -> Result<()> {
    use crate::envelope::{ExtensionValue, TraceContext};
    if !crate::envelope::is_attribute_name(&name) {
        return Err(Error::decode(format!(
            "attribute name {name:?} must be [a-z0-9]+"
        )));
    }
    let text = || match &value {
        ExtensionValue::String(s) => s.clone(),
        other => other.to_string(),
    };
    match name.as_str() {
        "correlationid" => metadata.set_correlation_id(Some(text())),
        "causationid" => metadata.set_causation_id(Some(text())),
        "traceparent" => match TraceContext::new(text()) {
            Ok(trace) => {
                let state = metadata
                    .trace()
                    .and_then(|t| t.tracestate())
                    .map(str::to_owned);
                let trace = match state {
                    Some(s) => trace.with_tracestate(s),
                    None => trace,
                };
                *metadata.trace_mut() = Some(trace);
            }
            // W3C: an invalid traceparent is ignored and a new trace starts.
            Err(_) => tracing::debug!(event.id = metadata.id(), "ignoring invalid traceparent"),
        },
        "tracestate" => {
            // Kept until (or after) traceparent is seen; dropped without one.
            let state = text();
            match metadata.trace_mut() {
                Some(trace) => *trace = trace.clone().with_tracestate(state),
                None => metadata
                    .extensions_mut()
                    .insert_received("tracestate".into(), ExtensionValue::String(state)),
            }
        }
        _ => metadata.extensions_mut().insert_received(name, value),
    }
    Ok(())
}

/// Moves a `tracestate` that arrived before its `traceparent` into the trace
/// context, or drops it if there is no trace context (W3C: tracestate is
/// meaningless without traceparent).
pub(crate) fn settle_tracestate(metadata: &mut EventMetadata) {
    if let Some(crate::envelope::ExtensionValue::String(state)) =
        metadata.extensions_mut().remove("tracestate")
    {
        if let Some(trace) = metadata.trace_mut() {
            *trace = trace.clone().with_tracestate(state);
        }
    }
}

/// Outside the crate, a match on a content mode needs a wildcard arm (more
/// modes may come); one without must not compile:
///
/// ```compile_fail,E0004
/// use events::wire::ContentMode;
/// fn name(mode: ContentMode) -> &'static str {
///     match mode {
///         ContentMode::Structured => "structured",
///         ContentMode::Binary => "binary",
///     }
/// }
/// ```
#[allow(dead_code)]
const NON_EXHAUSTIVE: () = ();

#[cfg(test)]
mod tests;
