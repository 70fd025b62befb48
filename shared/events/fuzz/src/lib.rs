//! Shared pieces of the fuzz targets: the invariants every decoded message
//! must satisfy, the golden fixtures as starting points, and a versioned
//! sample payload with its upcaster.
//!
//! The invariants, checked by every target:
//! - decoding never panics; a failure is a typed `ErrorKind::Decode`;
//! - an event that decoded and re-encodes (in either content mode) decodes
//!   again to the same metadata and the same data. Re-encoding may refuse
//!   what we would never send (an event type that is not a valid subject
//!   token, an empty optional attribute, data declared JSON that is not),
//!   but only with a typed error.

use std::sync::OnceLock;

use bytes::Bytes;
use events::transport::{Headers, Message, Subject};
use events::versioning::Upcasters;
use events::wire::{self, Codec, ContentMode, RawEvent};
use events::{EventMetadata, EventPayload};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The subject received messages are labelled with (never published to).
pub fn subject() -> Subject {
    Subject::received("events.fuzz")
}

/// A structured-mode message: `body` with the CloudEvents content type.
pub fn structured_message(body: &[u8]) -> Message {
    let mut message = Message::new(subject(), Bytes::copy_from_slice(body));
    message
        .headers
        .append("Content-Type", wire::STRUCTURED_CONTENT_TYPE)
        .expect("a valid header");
    message
}

/// Parses a NATS header block the way a client reads one from the wire
/// (`name: value` lines; the first line, `NATS/1.0`, is optional here), and
/// keeps the headers [`Headers::append`] accepts, as a transport does. The
/// block ends at the first empty line; what follows is the body.
pub fn message_from_block(input: &[u8]) -> Message {
    let (block, body) = split_block(input);
    let mut headers = Headers::new();
    for line in String::from_utf8_lossy(block)
        .split("\r\n")
        .flat_map(|l| l.split('\n'))
    {
        if line.is_empty() || line.starts_with("NATS/") {
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            // Refused names and values are skipped, not fatal: that is a
            // typed error path of `Headers`, and the rest must still decode.
            let _ = headers.append(name.to_owned(), value.trim().to_owned());
        }
    }
    let mut message = Message::new(subject(), Bytes::copy_from_slice(body));
    message.headers = headers;
    message
}

/// Percent-encodes a header value as the CloudEvents NATS binding says (and
/// as the crate does): space, `"`, `%` and every byte outside
/// U+0021..U+007E as `%XX`.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn split_block(input: &[u8]) -> (&[u8], &[u8]) {
    for (end, sep) in [(b"\r\n\r\n".as_slice(), 4), (b"\n\n".as_slice(), 2)] {
        if let Some(at) = input.windows(sep).position(|w| w == end) {
            return (&input[..at], &input[at + sep..]);
        }
    }
    (input, &[])
}

/// Decodes a message and checks the invariants. Returns the decoded event.
pub fn decode_and_check(message: &Message) -> Option<RawEvent> {
    match wire::decode(message) {
        Ok(raw) => {
            check_round_trip(&raw);
            Some(raw)
        }
        Err(e) => {
            assert_eq!(
                e.kind(),
                events::ErrorKind::Decode,
                "untyped decode error: {e}"
            );
            None
        }
    }
}

/// Re-encodes a decoded event in both modes; each message that encodes must
/// decode to the same metadata and data.
pub fn check_round_trip(raw: &RawEvent) {
    let codec = Codec::default();
    for mode in [ContentMode::Structured, ContentMode::Binary] {
        let message = match codec.encode_raw(raw, mode) {
            Ok(message) => message,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        events::ErrorKind::InvalidInput | events::ErrorKind::Encode
                    ),
                    "untyped encode error in {mode:?} mode: {e}"
                );
                continue;
            }
        };
        let again = wire::decode(&message).unwrap_or_else(|e| {
            panic!(
                "a decoded event re-encoded in {mode:?} mode does not decode: {e}\n\
                 metadata: {:?}\nmessage: {message:?}",
                raw.metadata
            )
        });
        assert_same_metadata(&raw.metadata, &again.metadata, mode);
        assert_eq!(
            expected_data(raw, mode),
            again.data,
            "data changed through {mode:?} mode; metadata {:?}",
            raw.metadata
        );
    }
}

/// Metadata must survive unchanged, except that binary mode carries every
/// extension value as text (the CloudEvents binding rule).
pub fn assert_same_metadata(before: &EventMetadata, after: &EventMetadata, mode: ContentMode) {
    if mode == ContentMode::Structured {
        assert_eq!(before, after, "metadata changed through structured mode");
        return;
    }
    let (before_rest, before_ext) = split_extensions(before);
    let (after_rest, after_ext) = split_extensions(after);
    assert_eq!(
        before_rest, after_rest,
        "metadata changed through binary mode"
    );
    assert_eq!(
        before_ext, after_ext,
        "extensions changed through binary mode"
    );
}

fn split_extensions(m: &EventMetadata) -> (EventMetadata, Vec<(String, String)>) {
    let mut rest = m.clone();
    let mut texts = Vec::new();
    for (name, value) in m.extensions().iter() {
        texts.push((name.to_owned(), value.to_string()));
        rest.extensions_mut().remove(name);
    }
    (rest, texts)
}

/// What the data must be after a round trip in `mode`.
fn expected_data(raw: &RawEvent, mode: ContentMode) -> Option<Bytes> {
    let data = raw.data.clone()?;
    match mode {
        // The body is the data, untouched; an empty body means no data.
        ContentMode::Binary => (!data.is_empty()).then_some(data),
        // JSON data is embedded as a JSON value: whitespace around it is
        // not kept, and a JSON `null` is no data.
        ContentMode::Structured if raw.data_is_json() => {
            let trimmed = data.slice_ref(trim_json_whitespace(&data));
            (&trimmed[..] != b"null").then_some(trimmed)
        }
        // Other data travels as base64 and comes back byte for byte.
        _ => Some(data),
    }
}

fn trim_json_whitespace(data: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = data.iter().position(|b| !ws(b)).unwrap_or(data.len());
    let end = data.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &data[start..end]
}

/// Today's version of the sample event (as in the golden fixtures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// The total, in cents (v1 had euros as a float).
    pub total_cents: u64,
    /// The customer (v1: `customer`).
    pub customer_id: String,
    /// Added without a version bump: optional.
    #[serde(default)]
    pub coupon: Option<String>,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "orders.order_placed";
    const VERSION: u32 = 2;
}

/// v1 -> v2, as the fixture test registers it: euros become cents,
/// `customer` becomes `customer_id`.
pub fn upcasters() -> &'static Upcasters {
    static UPCASTERS: OnceLock<Upcasters> = OnceLock::new();
    UPCASTERS.get_or_init(|| {
        Upcasters::new().register(OrderPlaced::TYPE, 1, |mut v: Value| {
            let obj = v.as_object_mut().ok_or("payload is not an object")?;
            let euros = obj
                .remove("amount")
                .and_then(|a| a.as_f64())
                .ok_or("amount missing")?;
            let customer = obj.remove("customer").ok_or("customer missing")?;
            obj.insert("total_cents".into(), json!((euros * 100.0).round() as u64));
            obj.insert("customer_id".into(), customer);
            Ok(v)
        })
    })
}

/// A binary-mode fixture: headers (values as they travel) and body.
pub type BinaryFixture = (Vec<(String, String)>, Vec<u8>);

/// The golden binary-mode fixtures, read from `tests/fixtures` at compile
/// time.
pub fn binary_fixtures() -> &'static [BinaryFixture] {
    static FIXTURES: OnceLock<Vec<BinaryFixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        [
            include_str!("../../tests/fixtures/orders.order_placed/v1.binary.json"),
            include_str!("../../tests/fixtures/orders.order_placed/v2.binary.json"),
        ]
        .iter()
        .map(|text| {
            let json: Value = serde_json::from_str(text).expect("fixture is JSON");
            let headers = json["headers"]
                .as_object()
                .expect("fixture headers")
                .iter()
                .map(|(n, v)| (n.clone(), v.as_str().expect("text").to_owned()))
                .collect();
            let body = serde_json::to_vec(&json["body"]).expect("fixture body");
            (headers, body)
        })
        .collect()
    })
}
