//! A table of bad inputs, each answered by the right typed error.

use events::transport::{Headers, Message, Subject, SubjectPattern, Transport};
use events::versioning::{Upcasters, VersionPolicy};
use events::wire::{self, Codec, ContentMode};
use events::{ErrorKind, Event, EventPayload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{upcasters, OrderPlaced, OrderPlacedV1};

macro_rules! bad_type {
    ($name:ident, $ty:expr) => {
        #[derive(Debug, Serialize, Deserialize)]
        struct $name {}
        impl EventPayload for $name {
            const TYPE: &'static str = $ty;
        }
    };
}
bad_type!(Upper, "Orders.Placed");
bad_type!(Wildcard, "orders.*");
bad_type!(EmptyToken, "orders..placed");
bad_type!(Suffixed, "orders.placed.v2");
bad_type!(Spaced, "orders placed");

fn encode_err<T: EventPayload>(payload: T) -> ErrorKind {
    Codec::default()
        .encode(&Event::new("svc", payload), ContentMode::Structured)
        .unwrap_err()
        .kind()
}

#[test]
fn invalid_type_names_are_refused_before_encoding() {
    assert_eq!(encode_err(Upper {}), ErrorKind::InvalidInput);
    assert_eq!(encode_err(Wildcard {}), ErrorKind::InvalidInput);
    assert_eq!(encode_err(EmptyToken {}), ErrorKind::InvalidInput);
    assert_eq!(encode_err(Suffixed {}), ErrorKind::InvalidInput);
    assert_eq!(encode_err(Spaced {}), ErrorKind::InvalidInput);
}

#[test]
fn wildcard_and_empty_subject_tokens_are_refused() {
    for tokens in [
        vec!["events", "*"],
        vec!["events", ">"],
        vec!["events", ""],
        vec!["a.b"],
        vec!["a b"],
        vec![],
    ] {
        let err = Subject::from_tokens(tokens.iter().copied()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{tokens:?}");
    }
    assert_eq!(
        SubjectPattern::parse("a.>.b").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn header_values_with_line_breaks_are_refused() {
    let mut h = Headers::new();
    for value in ["a\r\nb", "a\nb", "a\rb", "a\0b"] {
        assert_eq!(
            h.append("x-test", value).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{value:?}"
        );
    }
    // User data in attributes is percent-encoded in binary mode, never refused.
    let e = Event::new(
        "svc\r\nInjected: yes",
        crate::support::Ping {
            seq: 1,
            note: String::new(),
        },
    )
    .with_subject("x\r\ny");
    let m = Codec::default().encode(&e, ContentMode::Binary).unwrap();
    assert_eq!(m.headers.get("ce-source"), Some("svc%0D%0AInjected:%20yes"));
    assert_eq!(m.headers.get("ce-subject"), Some("x%0D%0Ay"));
    assert!(m.headers.get("Injected").is_none());
}

fn structured(body: serde_json::Value) -> Message {
    Message::new(
        Subject::parse("events.orders.order_placed").unwrap(),
        serde_json::to_vec(&body).unwrap(),
    )
}

fn binary(headers: &[(&str, &str)], body: &str) -> Message {
    let mut m = Message::new(
        Subject::parse("events.orders.order_placed").unwrap(),
        body.to_owned(),
    );
    for (n, v) in headers {
        m.headers.append(n.to_string(), v.to_string()).unwrap();
    }
    m
}

fn valid_v2() -> serde_json::Value {
    json!({"specversion": "1.0", "id": "1", "source": "s", "type": "orders.order_placed.v2",
           "data": {"order_id": "o", "total_cents": 1, "customer_id": "c"}})
}

const BINARY_OK: [(&str, &str); 4] = [
    ("ce-specversion", "1.0"),
    ("ce-id", "1"),
    ("ce-source", "s"),
    ("ce-type", "orders.order_placed.v2"),
];

fn decode_kind(message: &Message) -> Result<(), ErrorKind> {
    wire::decode(message)
        .and_then(|raw| raw.into_event::<OrderPlaced>(&upcasters(), VersionPolicy::Reject))
        .map(|_| ())
        .map_err(|e| e.kind())
}

#[test]
fn malformed_messages_are_decode_errors() {
    let valid = serde_json::to_vec(&valid_v2()).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = valid_v2();
        f(&mut v);
        structured(v)
    };
    let subject = || Subject::parse("a").unwrap();
    let payload = r#"{"order_id":"o","total_cents":1,"customer_id":"c"}"#;
    let cases: Vec<(&str, Message)> = vec![
        ("truncated body", Message::new(subject(), valid[..valid.len() / 2].to_vec())),
        ("non-JSON body", Message::new(subject(), &b"hello"[..])),
        ("empty body, no headers", Message::new(subject(), &b""[..])),
        ("JSON array", Message::new(subject(), &b"[1,2]"[..])),
        ("binary garbage", Message::new(subject(), vec![0xff, 0xfe, 0x00, 0x7b])),
        ("missing id", with(&|v| drop(v.as_object_mut().unwrap().remove("id")))),
        ("missing source", with(&|v| drop(v.as_object_mut().unwrap().remove("source")))),
        ("missing type", with(&|v| drop(v.as_object_mut().unwrap().remove("type")))),
        ("missing specversion", with(&|v| drop(v.as_object_mut().unwrap().remove("specversion")))),
        ("empty id", with(&|v| v["id"] = json!(""))),
        ("specversion 0.3", with(&|v| v["specversion"] = json!("0.3"))),
        ("id is a number", with(&|v| v["id"] = json!(7))),
        ("time not RFC 3339", with(&|v| v["time"] = json!("yesterday"))),
        ("extension is an object", with(&|v| v["ext"] = json!({"a": 1}))),
        ("extension is a float", with(&|v| v["ext"] = json!(1.5))),
        ("extension name uppercase", with(&|v| v["Ext"] = json!("x"))),
        ("duplicate data", Message::new(subject(), br#"{"specversion":"1.0","id":"1","source":"s","type":"orders.order_placed.v2","data":{},"data":{}}"#.to_vec())),
        ("data and data_base64", with(&|v| v["data_base64"] = json!("AA=="))),
        ("bad base64", with(&|v| { v.as_object_mut().unwrap().remove("data"); v["data_base64"] = json!("***"); })),
        ("payload of the wrong shape", with(&|v| v["data"] = json!({"order_id": 5}))),
        ("no data", with(&|v| drop(v.as_object_mut().unwrap().remove("data")))),
        ("other type", with(&|v| v["type"] = json!("orders.order_cancelled.v2"))),
        ("batch mode", {
            let mut m = structured(valid_v2());
            m.headers.append("content-type", "application/cloudevents-batch+json").unwrap();
            m
        }),
        ("binary: missing ce-id", binary(&[BINARY_OK[0], BINARY_OK[2], BINARY_OK[3]], payload)),
        ("binary: missing ce-source", binary(&[BINARY_OK[0], BINARY_OK[1], BINARY_OK[3]], payload)),
        ("binary: missing ce-type", binary(&BINARY_OK[..3], payload)),
        ("binary: invalid UTF-8 after percent-decoding", {
            let mut h = BINARY_OK.to_vec();
            h.push(("ce-subject", "%C0%A0"));
            binary(&h, payload)
        }),
        ("binary: duplicate attribute", {
            let mut h = BINARY_OK.to_vec();
            h.push(("CE-ID", "2"));
            binary(&h, payload)
        }),
        ("binary: truncated payload", binary(&BINARY_OK, &payload[..10])),
        ("binary: non-JSON payload with JSON content type", {
            let mut h = BINARY_OK.to_vec();
            h.push(("content-type", "application/json"));
            binary(&h, "not json")
        }),
        ("binary: non-JSON content type", {
            let mut h = BINARY_OK.to_vec();
            h.push(("ce-datacontenttype", "text/plain"));
            binary(&h, payload)
        }),
    ];
    assert!(cases.len() > 25);
    for (name, message) in &cases {
        assert_eq!(decode_kind(message), Err(ErrorKind::Decode), "{name}");
    }
}

#[test]
fn versions_newer_than_known_or_without_upcaster_get_their_own_errors() {
    let mut v3 = valid_v2();
    v3["type"] = json!("orders.order_placed.v3");
    assert_eq!(
        decode_kind(&structured(v3.clone())),
        Err(ErrorKind::UnsupportedVersion)
    );
    // Tolerant policy reads it when the shape is compatible.
    let tolerant = wire::decode(&structured(v3))
        .unwrap()
        .into_event::<OrderPlaced>(&upcasters(), VersionPolicy::Tolerant)
        .unwrap();
    assert_eq!(tolerant.wire_version, 3);

    let v1 = Codec::default()
        .encode(
            &Event::new(
                "s",
                OrderPlacedV1 {
                    order_id: "o".into(),
                    amount: 1.0,
                    customer: "c".into(),
                },
            ),
            ContentMode::Binary,
        )
        .unwrap();
    let err = wire::decode(&v1)
        .unwrap()
        .into_event::<OrderPlaced>(&Upcasters::new(), VersionPolicy::Reject)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingUpcaster);
    // A step that fails on bad old data is the same kind, with the cause.
    let mut broken = v1.clone();
    broken.payload = br#"{"order_id":"o"}"#.to_vec().into();
    let err = wire::decode(&broken)
        .unwrap()
        .into_event::<OrderPlaced>(&upcasters(), VersionPolicy::Reject)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingUpcaster);
    assert!(std::error::Error::source(&err)
        .unwrap()
        .to_string()
        .contains("amount missing"));
}

#[tokio::test]
async fn oversized_events_are_refused_before_sending() {
    let transport = events::backend::memory::MemoryTransport::new();
    let limit = transport.capabilities().max_message_size;
    let bus = events::Bus::builder(transport)
        .source("svc")
        .build()
        .unwrap();
    let big = crate::support::Ping {
        seq: 1,
        note: "x".repeat(limit),
    };
    let err = bus.publish(&bus.event(big)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    // Just under the limit goes through (CloudEvents asks every hop to take 64 KiB).
    let fits = crate::support::Ping {
        seq: 1,
        note: "x".repeat(64 * 1024),
    };
    bus.publish(&bus.event(fits)).await.unwrap();
}

#[test]
fn invalid_extension_names_and_traceparents_are_refused_at_construction() {
    let e = Event::new(
        "svc",
        crate::support::Ping {
            seq: 1,
            note: String::new(),
        },
    );
    for name in [
        "",
        "UPPER",
        "with-dash",
        "data",
        "specversion",
        "abcdefghijklmnopqrstuvwxyz",
    ] {
        assert_eq!(
            e.clone().with_extension(name, "v").unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{name:?}"
        );
    }
    assert_eq!(
        events::envelope::TraceContext::new("nope")
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}
