//! Structured content mode: the CloudEvents JSON event format in the body.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    apply_extension, format_time, metadata_from_attributes, settle_tracestate, time_text,
    Attributes, RawEvent, SPEC_VERSION, STRUCTURED_CONTENT_TYPE, TIME_TEXT_MAX,
};
use crate::envelope::{Event, EventMetadata, EventPayload, ExtensionValue};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::Headers;

/// Encodes metadata and a typed payload as one JSON object. Written by hand
/// rather than through an intermediate `Value` so the payload is serialized
/// once, straight into the output buffer.
pub(super) fn encode<T: Serialize>(
    metadata: &EventMetadata,
    payload: &T,
    size_hint: usize,
) -> Result<(Headers, Bytes)> {
    let mut out = Vec::with_capacity(size_hint.clamp(384, 64 * 1024) + 64);
    write_attributes(&mut out, metadata)?;
    out.extend_from_slice(b",\"data\":");
    serde_json::to_writer(&mut out, payload).map_err(|e| {
        Error::new(
            ErrorKind::Encode,
            format!("payload of {} does not serialize", metadata.event_type()),
        )
        .with_source(e)
    })?;
    out.push(b'}');
    Ok((content_type_header(), Bytes::from(out)))
}

/// Encodes metadata and already-encoded data.
pub(super) fn encode_raw(
    metadata: &EventMetadata,
    data: Option<&Bytes>,
    is_json: bool,
) -> Result<(Headers, Bytes)> {
    let mut out = Vec::with_capacity(320 + data.map_or(0, |d| d.len()));
    write_attributes(&mut out, metadata)?;
    match data {
        None => {}
        Some(data) if is_json => {
            // Validate rather than trust: an invalid body would make the whole
            // event unreadable for every consumer.
            let raw: &RawValue = serde_json::from_slice(data).map_err(|e| {
                Error::new(ErrorKind::Encode, "data is not valid JSON").with_source(e)
            })?;
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(raw.get().as_bytes());
        }
        Some(data) => {
            out.extend_from_slice(b",\"data_base64\":\"");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .as_bytes(),
            );
            out.push(b'"');
        }
    }
    out.push(b'}');
    Ok((content_type_header(), Bytes::from(out)))
}

fn content_type_header() -> Headers {
    let mut headers = Headers::with_capacity(1);
    headers.push_trusted("Content-Type", STRUCTURED_CONTENT_TYPE);
    headers
}

fn write_attributes(out: &mut Vec<u8>, m: &EventMetadata) -> Result<()> {
    fn field(out: &mut Vec<u8>, name: &str, value: &str) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
    out.extend_from_slice(b"{\"specversion\":\"");
    out.extend_from_slice(SPEC_VERSION.as_bytes());
    out.push(b'"');
    field(out, "id", m.id());
    field(out, "source", m.source());
    out.extend_from_slice(b",\"type\":");
    let _ = serde_json::to_writer(&mut *out, m.event_type());
    if m.type_has_version() {
        // The version suffix is digits: safe to splice in before the closing quote.
        out.pop();
        let _ = write!(out, ".v{}\"", m.version());
    }
    if let Some(time) = m.time() {
        let mut buf = [0; TIME_TEXT_MAX];
        match time_text(time, &mut buf) {
            Some(text) => {
                out.extend_from_slice(b",\"time\":\"");
                out.extend_from_slice(text);
                out.push(b'"');
            }
            None => field(out, "time", &format_time(time)),
        }
    }
    let optional = [
        ("subject", m.subject()),
        ("datacontenttype", m.data_content_type()),
        ("dataschema", m.data_schema()),
        ("correlationid", m.correlation_id()),
        ("causationid", m.causation_id()),
        ("traceparent", m.trace().map(|t| t.traceparent())),
        ("tracestate", m.trace().and_then(|t| t.tracestate())),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            field(out, name, value);
        }
    }
    for (name, value) in m.extensions().iter() {
        match value {
            ExtensionValue::String(s) => field(out, name, s),
            other => {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                out.extend_from_slice(other.to_string().as_bytes());
            }
        }
    }
    Ok(())
}

/// Decodes a structured-mode body.
pub(super) fn decode(body: &Bytes) -> Result<RawEvent> {
    let parsed: Parsed<'_, NoPayload> = serde_json::from_slice(body).map_err(|e| {
        let detail = if e.is_eof() {
            "body is truncated JSON"
        } else if e.is_syntax() {
            "body is not JSON"
        } else {
            "body is not a CloudEvents JSON object"
        };
        Error::decode(detail).with_source(e)
    })?;
    let (metadata, data) = finish(parsed)?;
    let data = match data {
        Data::Typed(never) => match never {},
        Data::Raw(raw) => raw_data(body, &metadata, raw)?,
        Data::Null | Data::Absent => None,
        Data::Base64(b64) => Some(from_base64(&b64)?),
    };
    Ok(RawEvent { metadata, data })
}

/// Decodes a structured-mode body straight into `T`, in one pass over the
/// body: `data` is deserialized as `T` where it is read, rather than kept
/// as raw JSON and parsed a second time. Applies only to the common case,
/// an event of exactly `T`'s type and version whose attributes before
/// `data` say it is JSON; `None` for everything else (another type or
/// version, base64 data, a content type after `data`, any error), which
/// the caller decodes the general way, with its upcasting and its errors.
pub(super) fn decode_typed<T: EventPayload>(body: &Bytes) -> Option<Event<T>> {
    // The whole body is checked as UTF-8 first: the general path checks the
    // raw data it keeps, but a payload type that skips a field (or reads
    // bytes) would let an invalid string through here.
    let text = std::str::from_utf8(body).ok()?;
    let parsed: Parsed<'_, T> = serde_json::from_str(text).ok()?;
    if parsed.after_typed_data {
        return None;
    }
    match finish(parsed).ok()? {
        (metadata, Data::Typed(payload)) => Some(Event::from_parts(metadata, payload)),
        _ => None,
    }
}

/// Checks the attributes and builds the metadata; the data as read.
fn finish<T>(parsed: Parsed<'_, T>) -> Result<(EventMetadata, Data<'_, T>)> {
    let Parsed {
        specversion,
        id,
        source,
        ce_type,
        time,
        subject,
        datacontenttype,
        dataschema,
        data,
        data_base64,
        extensions,
        after_typed_data: _,
    } = parsed;
    let mut metadata = metadata_from_attributes(Attributes {
        specversion,
        id,
        source,
        ce_type,
        time,
        subject,
        data_content_type: datacontenttype,
        data_schema: dataschema,
    })?;
    for (name, value) in extensions {
        if value.is_null() {
            continue;
        }
        let value = extension_value(&name, value)?;
        apply_extension(&mut metadata, name, value)?;
    }
    settle_tracestate(&mut metadata);
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => return Err(Error::decode("both data and data_base64 are present")),
        (None, Some(b64)) => Data::Base64(b64),
        (Some(data), None) => data,
        (None, None) => Data::Absent,
    };
    Ok((metadata, data))
}

fn from_base64(b64: &str) -> Result<Bytes> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map(Bytes::from)
        .map_err(|e| Error::decode("data_base64 is not valid base64").with_source(e))
}

/// The bytes of a `data` member kept raw.
fn raw_data(body: &Bytes, metadata: &EventMetadata, raw: &RawValue) -> Result<Option<Bytes>> {
    let json_type = metadata
        .data_content_type()
        .is_none_or(super::is_json_content_type);
    if !json_type && raw.get().starts_with('"') {
        // JSON format 3.1: a non-JSON data content type carried as a
        // JSON string is that string's text.
        let text: String = serde_json::from_str(raw.get())
            .map_err(|e| Error::decode("data string is not valid JSON").with_source(e))?;
        Ok(Some(Bytes::from(text)))
    } else {
        Ok(Some(body.slice_ref(raw.get().as_bytes())))
    }
}

fn extension_value(name: &str, value: serde_json::Value) -> Result<ExtensionValue> {
    match value {
        serde_json::Value::String(s) => Ok(ExtensionValue::String(s)),
        serde_json::Value::Bool(b) => Ok(ExtensionValue::Bool(b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .map(ExtensionValue::Integer)
            .ok_or_else(|| {
                Error::decode(format!("extension {name:?}: {n} is not a 32-bit integer"))
            }),
        other => Err(Error::decode(format!(
            "extension {name:?} must be a string, boolean or integer, not {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
        _ => "a scalar",
    }
}

/// The attributes of a structured event, borrowed from the body where the
/// JSON has no escapes, and `data` as read: raw, or as `T` (see
/// [`decode_typed`]).
struct Parsed<'a, T> {
    specversion: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    source: Option<Cow<'a, str>>,
    ce_type: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
    subject: Option<Cow<'a, str>>,
    datacontenttype: Option<Cow<'a, str>>,
    dataschema: Option<Cow<'a, str>>,
    data: Option<Data<'a, T>>,
    data_base64: Option<Cow<'a, str>>,
    extensions: Vec<(String, serde_json::Value)>,
    /// `datacontenttype` or `data_base64` came after a `data` read as `T`:
    /// the typed reading may not stand.
    after_typed_data: bool,
}

/// The `data` member.
enum Data<'a, T> {
    /// Kept as raw JSON.
    Raw(&'a RawValue),
    /// Decoded as the payload type.
    Typed(T),
    /// `null`: no data.
    Null,
    /// No `data` member (or `data_base64`, below).
    Absent,
    /// `data_base64`.
    Base64(Cow<'a, str>),
}

/// The payload type of an untyped decode: `data` is always kept raw.
enum NoPayload {}

/// What [`Parsed`] may decode `data` into.
trait Payload: Sized {
    /// Whether a CloudEvents type (`orders.placed.v2`) is exactly this
    /// payload's type and version.
    fn matches(ce_type: &str) -> bool;
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error>;
}

impl Payload for NoPayload {
    fn matches(_: &str) -> bool {
        false
    }
    fn deserialize<'de, D: Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        Err(de::Error::custom("untyped decode"))
    }
}

impl<T: EventPayload> Payload for T {
    fn matches(ce_type: &str) -> bool {
        super::split_versioned_type(ce_type) == (T::TYPE, T::VERSION)
    }
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        <T as Deserialize>::deserialize(d)
    }
}

/// Reads `data` as `T`, or `null` as no data.
struct TypedData<T>(std::marker::PhantomData<T>);

impl<'de, T: Payload> de::DeserializeSeed<'de> for TypedData<T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Payload> Visitor<'de> for V<T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("event data")
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Self::Value, D::Error> {
                T::deserialize(d).map(Some)
            }
        }
        d.deserialize_option(V(std::marker::PhantomData))
    }
}

/// A string borrowed from the input when possible.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de, T: Payload> Deserialize<'de> for Parsed<'de, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Payload> Visitor<'de> for V<T> {
            type Value = Parsed<'de, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CloudEvents JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut p = Parsed {
                    specversion: None,
                    id: None,
                    source: None,
                    ce_type: None,
                    time: None,
                    subject: None,
                    datacontenttype: None,
                    dataschema: None,
                    data: None,
                    data_base64: None,
                    extensions: Vec::new(),
                    after_typed_data: false,
                };
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    let slot = match &*key {
                        "specversion" => &mut p.specversion,
                        "id" => &mut p.id,
                        "source" => &mut p.source,
                        "type" => &mut p.ce_type,
                        "time" => &mut p.time,
                        "subject" => &mut p.subject,
                        "datacontenttype" | "data_base64"
                            if matches!(p.data, Some(Data::Typed(_))) =>
                        {
                            p.after_typed_data = true;
                            if key == "datacontenttype" {
                                &mut p.datacontenttype
                            } else {
                                &mut p.data_base64
                            }
                        }
                        "datacontenttype" => &mut p.datacontenttype,
                        "dataschema" => &mut p.dataschema,
                        "data_base64" => &mut p.data_base64,
                        "data" => {
                            if p.data.is_some() {
                                return Err(de::Error::duplicate_field("data"));
                            }
                            // Typed where everything read so far says this
                            // is JSON data of exactly `T`'s type and version.
                            let typed = p.data_base64.is_none()
                                && p.ce_type.as_deref().is_some_and(T::matches)
                                && p.datacontenttype
                                    .as_deref()
                                    .is_none_or(super::is_json_content_type);
                            p.data = Some(if typed {
                                match map
                                    .next_value_seed(TypedData::<T>(std::marker::PhantomData))?
                                {
                                    Some(payload) => Data::Typed(payload),
                                    None => Data::Null,
                                }
                            } else {
                                let raw: &RawValue = map.next_value()?;
                                if raw.get() == "null" {
                                    Data::Null
                                } else {
                                    Data::Raw(raw)
                                }
                            });
                            continue;
                        }
                        _ => {
                            let value = map.next_value()?;
                            p.extensions.push((key.into_owned(), value));
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(de::Error::custom(format!("duplicate attribute `{key}`")));
                    }
                    // JSON format: a null attribute is treated as absent.
                    *slot = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                }
                Ok(p)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}
