//! Arbitrary header sets and bodies in binary mode.
//!
//! The input is structured with `arbitrary`: start from one of the golden
//! binary fixtures' headers (or none), then set, append or remove headers
//! named after the CloudEvents attributes (any case), extensions or anything
//! else, with typical values, raw text or percent-encoded bytes. Headers that
//! `Headers` refuses are skipped, as a transport receiving them would.
//! Invariant: no panic, a typed error or an event that survives re-encoding.
#![no_main]

use std::fmt::Write as _;

use arbitrary::Arbitrary;
use bytes::Bytes;
use events::transport::{Headers, Message};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Attr {
    SpecVersion,
    Id,
    Source,
    Type,
    Time,
    Subject,
    DataContentType,
    DataSchema,
    CorrelationId,
    CausationId,
    TraceParent,
    TraceState,
    Data,
    DataBase64,
    Tenant,
}

impl Attr {
    fn name(self) -> &'static str {
        match self {
            Attr::SpecVersion => "specversion",
            Attr::Id => "id",
            Attr::Source => "source",
            Attr::Type => "type",
            Attr::Time => "time",
            Attr::Subject => "subject",
            Attr::DataContentType => "datacontenttype",
            Attr::DataSchema => "dataschema",
            Attr::CorrelationId => "correlationid",
            Attr::CausationId => "causationid",
            Attr::TraceParent => "traceparent",
            Attr::TraceState => "tracestate",
            Attr::Data => "data",
            Attr::DataBase64 => "data_base64",
            Attr::Tenant => "tenant",
        }
    }

    /// Values a producer might send, valid or nearly so (as they travel:
    /// percent-encoded where needed).
    fn typical(self) -> &'static [&'static str] {
        match self {
            Attr::SpecVersion => &["1.0", "0.3", "1.0%20", "1.00"],
            Attr::Id => &["1", "0190f3a2-7b1c-7d4e-8a5b-3c2d1e0f9a8c", "%E2%82%AC"],
            Attr::Source => &["orders", "https://example.com/orders", "/a%20b"],
            Attr::Type => &[
                "orders.order_placed.v2",
                "orders.order_placed.v1",
                "orders.order_placed",
                "orders.order_placed.v3",
                "com.example.Placed",
                "a.v0",
                "a.v01",
                "v2",
                ".v2",
                "a..b",
                "x.v4294967296",
            ],
            Attr::Time => &[
                "2024-07-01T09:30:00Z",
                "2024-09-15T14:00:00.250Z",
                "2024-07-01T09:30:00.123456789Z",
                "2024-07-01T09:30:00.1234567891Z",
                "2024-07-01t09:30:00z",
                "2016-12-31T23:59:60Z",
                "2024-02-30T00:00:00Z",
                "2024-07-01T09:30:00+02:00",
                "9999-12-31T23:59:59-01:00",
                "0000-01-01T00:30:00+01:00",
            ],
            Attr::Subject => &["o-1", "o-2002%20%E2%82%AC", "%C0%A0", "%"],
            Attr::DataContentType => &[
                "application/json",
                "text/plain",
                "application/json;%20charset=utf-8",
                "application/vnd.example+json",
                "application/cloudevents+json",
                "application/cloudevents-batch+json",
                "application/octet-stream",
                "",
            ],
            Attr::DataSchema => &["https://example.com/schema/v2"],
            Attr::CorrelationId | Attr::CausationId => &["corr-1", ""],
            Attr::TraceParent => &[
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ab",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736",
            ],
            Attr::TraceState => &["vendor=1", "a=1,b=2", ""],
            Attr::Data | Attr::DataBase64 => &["e30=", "{}"],
            Attr::Tenant => &["acme", "true", "42", ""],
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Name<'a> {
    /// `ce-<attribute>`.
    Ce(Attr),
    /// `CE-<ATTRIBUTE>`: names are case-insensitive.
    CeUpper(Attr),
    /// `content-type` (binary mode's copy of `datacontenttype`).
    ContentType,
    /// `Content-Type`.
    ContentTypeTitle,
    /// `ce-<anything>`: an extension, valid or not.
    Extension(&'a str),
    /// Any name at all.
    Other(&'a str),
}

impl Name<'_> {
    fn text(&self) -> String {
        match self {
            Name::Ce(a) => format!("ce-{}", a.name()),
            Name::CeUpper(a) => format!("CE-{}", a.name().to_ascii_uppercase()),
            Name::ContentType => "content-type".into(),
            Name::ContentTypeTitle => "Content-Type".into(),
            Name::Extension(s) => format!("ce-{s}"),
            Name::Other(s) => (*s).to_owned(),
        }
    }

    fn typical(&self) -> &'static [&'static str] {
        match self {
            Name::Ce(a) | Name::CeUpper(a) => a.typical(),
            Name::ContentType | Name::ContentTypeTitle => Attr::DataContentType.typical(),
            Name::Extension(_) | Name::Other(_) => Attr::Tenant.typical(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Value<'a> {
    /// One of the name's typical values.
    Typical(u8),
    /// Text as it is.
    Text(&'a str),
    /// Text percent-encoded as the binding says.
    Encoded(&'a str),
    /// Every byte as `%XX`: decodes to anything, valid UTF-8 or not.
    Escaped(&'a [u8]),
}

impl Value<'_> {
    fn text(&self, name: &Name<'_>) -> String {
        match self {
            Value::Typical(i) => {
                let typical = name.typical();
                typical[usize::from(*i) % typical.len()].to_owned()
            }
            Value::Text(s) => (*s).to_owned(),
            Value::Encoded(s) => events_fuzz::percent_encode(s),
            Value::Escaped(bytes) => bytes.iter().fold(String::new(), |mut out, b| {
                let _ = write!(out, "%{b:02X}");
                out
            }),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Edit<'a> {
    /// Replace every header of that name (or add it).
    Set(Name<'a>, Value<'a>),
    /// Add another header of that name (duplicates are decode errors).
    Append(Name<'a>, Value<'a>),
    Remove(Name<'a>),
}

#[derive(Arbitrary, Debug)]
enum Body<'a> {
    /// The base fixture's body (none without a base).
    Base,
    /// JSON-ish edge cases.
    Json(u8),
    Bytes(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// 0: no headers to start with; otherwise one of the binary fixtures.
    base: u8,
    edits: Vec<Edit<'a>>,
    body: Body<'a>,
}

const JSON_BODIES: &[&[u8]] = &[b"null", b" {} ", b"\"text\"", b"5", b"[1,2]", b"{", b""];

fuzz_target!(|input: Input<'_>| {
    let fixtures = events_fuzz::binary_fixtures();
    let base = match input.base {
        0 => None,
        n => Some(&fixtures[usize::from(n - 1) % fixtures.len()]),
    };
    let mut headers = Headers::new();
    if let Some((base_headers, _)) = base {
        for (name, value) in base_headers {
            headers
                .append(name.clone(), value.clone())
                .expect("fixture headers are valid");
        }
    }
    for edit in &input.edits {
        // A refused name or value leaves the headers as they were (or
        // without the name, for `Set`): a typed error, skipped like a
        // transport skips what it cannot carry.
        match edit {
            Edit::Set(name, value) => {
                let _ = headers.insert(name.text(), value.text(name));
            }
            Edit::Append(name, value) => {
                let _ = headers.append(name.text(), value.text(name));
            }
            Edit::Remove(name) => headers.remove(&name.text()),
        }
    }
    let body = match input.body {
        Body::Base => base
            .map(|(_, body)| Bytes::copy_from_slice(body))
            .unwrap_or_default(),
        Body::Json(i) => Bytes::from_static(JSON_BODIES[usize::from(i) % JSON_BODIES.len()]),
        Body::Bytes(bytes) => Bytes::copy_from_slice(bytes),
    };
    let mut message = Message::new(events_fuzz::subject(), body);
    message.headers = headers;
    events_fuzz::decode_and_check(&message);
});
