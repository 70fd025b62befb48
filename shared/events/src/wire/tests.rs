use serde::{Deserialize, Serialize};
use serde_json::json;

use super::*;
use crate::envelope::{ExtensionValue, TraceContext};
use crate::transport::Headers;
use crate::ErrorKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Placed {
    order_id: String,
    total_cents: u64,
}
impl EventPayload for Placed {
    const TYPE: &'static str = "orders.placed";
    const VERSION: u32 = 2;
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn full_event() -> Event<Placed> {
    let mut e = Event::new(
        "orders-svc",
        Placed {
            order_id: "o-1".into(),
            total_cents: 995,
        },
    )
    .with_subject("o-1 \"special\" € 😀")
    .with_correlation_id("corr-1")
    .with_trace(TraceContext::new(TP).unwrap().with_tracestate("vendor=x"))
    .with_extension("tenant", "acme")
    .unwrap()
    .with_extension("priority", 3)
    .unwrap()
    .with_extension("urgent", true)
    .unwrap();
    e.metadata.set_causation_id(Some("cause-1".into()));
    e.metadata
        .set_data_schema(Some("https://schemas.example.com/orders/placed/2".into()));
    e
}

fn decode_typed(message: &Message) -> Result<Decoded<Placed>> {
    decode(message)?.into_event::<Placed>(&Upcasters::new(), VersionPolicy::Reject)
}

#[test]
fn structured_mode_writes_the_cloudevents_json_format() {
    let e = full_event();
    let m = Codec::default()
        .encode(&e, ContentMode::Structured)
        .unwrap();
    assert_eq!(m.subject.as_str(), "events.orders.placed");
    assert_eq!(m.headers.get("content-type"), Some(STRUCTURED_CONTENT_TYPE));
    assert_eq!(m.headers.len(), 1);
    assert_eq!(m.dedup_id.as_deref(), Some(e.metadata.id()));
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], e.metadata.id());
    assert_eq!(body["source"], "orders-svc");
    assert_eq!(body["type"], "orders.placed.v2");
    assert_eq!(body["subject"], "o-1 \"special\" € 😀");
    assert_eq!(body["datacontenttype"], "application/json");
    assert_eq!(body["correlationid"], "corr-1");
    assert_eq!(body["causationid"], "cause-1");
    assert_eq!(body["traceparent"], TP);
    assert_eq!(body["tracestate"], "vendor=x");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["priority"], 3);
    assert_eq!(body["urgent"], true);
    assert_eq!(body["data"], json!({"order_id": "o-1", "total_cents": 995}));
    let time = body["time"].as_str().unwrap();
    assert!(time.ends_with('Z'), "{time}");
    assert_eq!(parse_time(time).unwrap(), e.metadata.time().unwrap());
}

#[test]
fn binary_mode_writes_percent_encoded_ce_headers_and_the_bare_payload() {
    let e = full_event();
    let m = Codec::default().encode(&e, ContentMode::Binary).unwrap();
    let h = &m.headers;
    assert_eq!(h.get("ce-specversion"), Some("1.0"));
    assert_eq!(h.get("ce-id"), Some(e.metadata.id()));
    assert_eq!(h.get("ce-type"), Some("orders.placed.v2"));
    assert_eq!(h.get("ce-source"), Some("orders-svc"));
    assert_eq!(
        h.get("ce-subject"),
        Some("o-1%20%22special%22%20%E2%82%AC%20%F0%9F%98%80")
    );
    assert_eq!(h.get("ce-datacontenttype"), Some("application/json"));
    assert_eq!(h.get("content-type"), Some("application/json"));
    assert_eq!(h.get("ce-correlationid"), Some("corr-1"));
    assert_eq!(h.get("ce-traceparent"), Some(TP));
    assert_eq!(h.get("ce-tracestate"), Some("vendor=x"));
    assert_eq!(h.get("ce-tenant"), Some("acme"));
    assert_eq!(h.get("ce-priority"), Some("3"));
    assert_eq!(
        h.get("ce-dataschema"),
        Some("https://schemas.example.com/orders/placed/2")
    );
    for (name, value) in h.iter() {
        assert_eq!(name, name.to_lowercase(), "header names are lowercase");
        assert!(
            value.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{name}: {value}"
        );
    }
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap(),
        json!({"order_id": "o-1", "total_cents": 995})
    );
}

#[test]
fn both_modes_round_trip_every_attribute() {
    let e = full_event();
    for mode in [ContentMode::Structured, ContentMode::Binary] {
        let m = Codec::default().encode(&e, mode).unwrap();
        let d = decode_typed(&m).unwrap();
        assert_eq!(d.wire_version, 2);
        let mut expected = e.clone();
        if mode == ContentMode::Binary {
            // Binary mode carries every extension as a string.
            let ext = expected.metadata.extensions_mut();
            ext.insert("priority", "3").unwrap();
            ext.insert("urgent", "true").unwrap();
        }
        assert_eq!(d.event, expected, "{mode:?}");
    }
}

#[test]
fn decoding_detects_the_mode_from_headers_case_insensitively() {
    let e = full_event();
    let mut m = Codec::default()
        .encode(&e, ContentMode::Structured)
        .unwrap();
    m.headers = Headers::new();
    m.headers
        .append(
            "CONTENT-TYPE",
            "Application/CloudEvents+JSON; charset=utf-8",
        )
        .unwrap();
    assert_eq!(
        decode_typed(&m).unwrap().event.metadata.id(),
        e.metadata.id()
    );
    m.headers = Headers::new();
    assert_eq!(
        decode_typed(&m).unwrap().event.metadata.id(),
        e.metadata.id(),
        "no headers: structured JSON is tried"
    );

    let b = Codec::default().encode(&e, ContentMode::Binary).unwrap();
    let mut upper = Headers::new();
    for (n, v) in b.headers.iter() {
        upper.append(n.to_uppercase(), v.to_owned()).unwrap();
    }
    let m = Message {
        headers: upper,
        ..b
    };
    assert_eq!(
        decode_typed(&m).unwrap().event.metadata.subject(),
        e.metadata.subject()
    );
}

#[test]
fn a_binary_event_without_ce_datacontenttype_falls_back_to_content_type() {
    let e = full_event();
    let mut m = Codec::default().encode(&e, ContentMode::Binary).unwrap();
    m.headers.remove("ce-datacontenttype");
    let d = decode_typed(&m).unwrap();
    assert_eq!(
        d.event.metadata.data_content_type(),
        Some("application/json")
    );
}

#[test]
fn foreign_structured_events_are_read_tolerantly() {
    // As the Python SDK writes it: offset time, no version suffix, an
    // unknown extension, attribute order of its own.
    let body = json!({
        "data": {"order_id": "py-1", "total_cents": 1, "added_later": [1, 2]},
        "type": "orders.placed",
        "source": "/python/orders",
        "id": "A234-1234-1234",
        "specversion": "1.0",
        "time": "2024-05-01T12:00:00.123456+02:00",
        "subject": null,
        "region": "eu"
    });
    let m = Message::new(
        Subject::parse("events.orders.placed").unwrap(),
        serde_json::to_vec(&body).unwrap(),
    );
    let raw = decode(&m).unwrap();
    assert_eq!(raw.metadata.version(), 1, "no suffix means version 1");
    assert_eq!(
        raw.metadata.time().unwrap().to_rfc3339(),
        "2024-05-01T10:00:00.123456+00:00"
    );
    assert_eq!(raw.metadata.subject(), None);
    assert_eq!(
        raw.metadata.extensions().get("region"),
        Some(&ExtensionValue::String("eu".into()))
    );
    // Version 1 is older than the type's version 2 and no upcaster is set.
    let err = raw
        .into_event::<Placed>(&Upcasters::new(), VersionPolicy::Reject)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingUpcaster);
}

#[test]
fn data_base64_and_text_data_are_decoded_to_bytes() {
    let body = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t.x",
        "datacontenttype": "application/octet-stream", "data_base64": "AAEC/w=="});
    let m = Message::new(
        Subject::parse("events.t.x").unwrap(),
        serde_json::to_vec(&body).unwrap(),
    );
    let raw = decode(&m).unwrap();
    assert_eq!(raw.data.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    assert!(!raw.data_is_json());

    let body = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t.x",
        "datacontenttype": "text/plain", "data": "hello \"world\""});
    let m = Message::new(
        Subject::parse("events.t.x").unwrap(),
        serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(
        decode(&m).unwrap().data.as_deref(),
        Some(&b"hello \"world\""[..])
    );
}

#[test]
fn raw_events_re_encode_in_both_modes() {
    let e = full_event();
    let m = Codec::default()
        .encode(&e, ContentMode::Structured)
        .unwrap();
    let raw = decode(&m).unwrap();
    for mode in [ContentMode::Structured, ContentMode::Binary] {
        let again = Codec::default().encode_raw(&raw, mode).unwrap();
        assert_eq!(
            decode(&again).unwrap().data_json().unwrap(),
            raw.data_json().unwrap()
        );
        assert_eq!(decode(&again).unwrap().metadata.id(), raw.metadata.id());
        assert_eq!(again.dedup_id.as_deref(), Some(raw.metadata.id()));
        // Like `encode`, `encode_raw` honours the codec's dedup-id setting.
        let plain = Codec::default().with_dedup_ids(false);
        assert_eq!(plain.encode_raw(&raw, mode).unwrap().dedup_id, None);
        assert_eq!(plain.encode(&e, mode).unwrap().dedup_id, None);
    }
    let body = json!({"specversion": "1.0", "id": "b-1", "source": "s", "type": "blobs.stored.v1",
        "datacontenttype": "application/octet-stream", "data_base64": "AJ+Slg=="});
    let binary = decode(&Message::new(
        Subject::parse("x").unwrap(),
        serde_json::to_vec(&body).unwrap(),
    ))
    .unwrap();
    assert_eq!(binary.data.as_deref(), Some(&[0u8, 159, 146, 150][..]));
    let m = Codec::default()
        .encode_raw(&binary, ContentMode::Structured)
        .unwrap();
    assert_eq!(
        decode(&m).unwrap().data.as_deref(),
        Some(&[0u8, 159, 146, 150][..])
    );
}

#[test]
fn binary_mode_never_announces_a_cloudevents_content_type() {
    // Data that is itself a structured event: as `content-type` its media
    // type would make the receiver decode the inner event (or a batch
    // error) instead of the outer one. Found by the `decode_binary` fuzzer.
    let inner = Codec::default()
        .encode(&full_event(), ContentMode::Structured)
        .unwrap();
    for ct in [
        STRUCTURED_CONTENT_TYPE,
        "application/cloudevents-batch+json",
        "Application/CloudEvents+JSON",
    ] {
        let mut headers = Headers::new();
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "outer-1"),
            ("ce-source", "relay"),
            ("ce-type", "relay.wrapped.v1"),
            ("ce-datacontenttype", ct),
        ] {
            headers.append(name, value).unwrap();
        }
        let mut received = Message::new(Subject::parse("x").unwrap(), inner.payload.clone());
        received.headers = headers;
        let outer = decode(&received).unwrap();
        assert_eq!(outer.metadata.id(), "outer-1");

        let m = Codec::default()
            .encode_raw(&outer, ContentMode::Binary)
            .unwrap();
        assert_eq!(m.headers.get("content-type"), None, "{ct}");
        assert_eq!(m.headers.get("ce-datacontenttype"), Some(ct));
        assert_eq!(decode(&m).unwrap(), outer, "{ct}");
    }
}

#[test]
fn upcasting_and_version_policy_apply_on_decode() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct PlacedV1 {
        order_id: String,
        amount: f64,
    }
    impl EventPayload for PlacedV1 {
        const TYPE: &'static str = "orders.placed";
    }
    let old = Event::new(
        "orders",
        PlacedV1 {
            order_id: "o".into(),
            amount: 9.95,
        },
    );
    let m = Codec::default().encode(&old, ContentMode::Binary).unwrap();
    let upcasters = Upcasters::new().register("orders.placed", 1, |mut v: serde_json::Value| {
        let euros = v["amount"].as_f64().ok_or("amount missing")?;
        v["total_cents"] = json!((euros * 100.0).round() as u64);
        Ok(v)
    });
    let d = decode(&m)
        .unwrap()
        .into_event::<Placed>(&upcasters, VersionPolicy::Reject)
        .unwrap();
    assert_eq!(
        d.event.payload,
        Placed {
            order_id: "o".into(),
            total_cents: 995
        }
    );
    assert_eq!(d.wire_version, 1);
    assert_eq!(d.event.metadata.version(), 2);

    // A v2 event read by a v1 consumer: rejected by default, tolerated on request.
    let new = Codec::default()
        .encode(&full_event(), ContentMode::Structured)
        .unwrap();
    let err = decode(&new)
        .unwrap()
        .into_event::<PlacedV1>(&upcasters, VersionPolicy::Reject)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsupportedVersion);
    let err = decode(&new)
        .unwrap()
        .into_event::<PlacedV1>(&upcasters, VersionPolicy::Tolerant)
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Decode,
        "tolerant still fails when the shape changed"
    );
}

#[test]
fn a_different_type_is_a_decode_error() {
    #[derive(Debug, Serialize, Deserialize)]
    struct Other {}
    impl EventPayload for Other {
        const TYPE: &'static str = "orders.cancelled";
    }
    let m = Codec::default()
        .encode(&full_event(), ContentMode::Structured)
        .unwrap();
    let err = decode(&m)
        .unwrap()
        .into_event::<Other>(&Upcasters::new(), VersionPolicy::Reject)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.detail().contains("orders.cancelled"), "{err}");
}

#[test]
fn versioned_type_names_split_at_a_valid_suffix_only() {
    assert_eq!(split_versioned_type("a.b.v3"), ("a.b", 3));
    assert_eq!(split_versioned_type("a.b"), ("a.b", 1));
    assert_eq!(split_versioned_type("a.v0"), ("a.v0", 1));
    assert_eq!(split_versioned_type(".v2"), (".v2", 1));
    assert_eq!(split_versioned_type("v2"), ("v2", 1));
}

#[test]
fn json_content_types_are_recognised() {
    for ct in [
        "application/json",
        "Application/JSON; charset=utf-8",
        "text/json",
        "application/vnd.x+json",
        " application/json ;x",
        "application/json;",
        "application/json;a;b",
        "\u{e9}+json; x=\u{e9}",
    ] {
        assert!(is_json_content_type(ct), "{ct}");
    }
    for ct in [
        "text/plain",
        "application/octet-stream",
        "json",
        "application/jsonx",
        ";application/json",
        "",
        ";",
        "\u{e9}",
        "application/json\u{e9}",
    ] {
        assert!(!is_json_content_type(ct), "{ct}");
    }
}

#[test]
fn codec_prefixes_are_validated() {
    assert!(Codec::new("acme.events").is_ok());
    for bad in ["", "a..b", "a.*", "a b", "a.>"] {
        assert_eq!(
            Codec::new(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{bad:?}"
        );
    }
    assert_eq!(
        Codec::new("acme.events").unwrap().all_events().as_str(),
        "acme.events.>"
    );
}

#[test]
fn time_formatting_matches_chrono_and_parsing_round_trips() {
    use chrono::TimeZone;
    let cases = [
        Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2024, 7, 1, 9, 5, 3).unwrap() + chrono::Duration::milliseconds(250),
        Utc.with_ymd_and_hms(2024, 7, 1, 9, 5, 3).unwrap()
            + chrono::Duration::microseconds(123_456),
        Utc.with_ymd_and_hms(2024, 7, 1, 9, 5, 3).unwrap() + chrono::Duration::nanoseconds(7),
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
    ];
    for t in cases {
        let ours = format_time(t);
        assert_eq!(ours, t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        assert_eq!(parse_time(&ours).unwrap(), t, "{ours}");
    }
    assert_eq!(
        parse_time("2024-05-01T12:00:00.5+02:00").unwrap(),
        Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap() + chrono::Duration::milliseconds(500)
    );
    assert_eq!(
        parse_time("2024-05-01t12:00:00z").unwrap(),
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    );
    for bad in [
        "2024-02-30T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:00.Z",
        "2024-01-01 00:00:00",
        "20240101T000000Z",
        "2024-01-01T00:00:00",
        "+2024-01-01T00:00:00Z",
        "2024-1-01T00:00:00Z",
        // Valid RFC 3339, but years 10000 and -1 in UTC, which RFC 3339
        // cannot write back (found by the `decode_binary` fuzzer).
        "9999-12-31T23:59:59-01:00",
        "0000-01-01T00:30:00+01:00",
    ] {
        assert_eq!(
            parse_time(bad).unwrap_err().kind(),
            ErrorKind::Decode,
            "{bad}"
        );
    }
}

/// The one-pass typed decode and the general one (raw, then `into_event`).
fn both_ways(body: &[u8]) -> (Option<Event<Placed>>, Result<Decoded<Placed>>) {
    let m = Message::new(
        Subject::parse("events.orders.placed").unwrap(),
        body.to_vec(),
    );
    (decode_fast::<Placed>(&m), decode_typed(&m))
}

#[test]
fn the_one_pass_decode_gives_what_the_general_decode_gives() {
    for e in [
        full_event(),
        Event::new(
            "s",
            Placed {
                order_id: "o\"\\é".into(),
                total_cents: 0,
            },
        ),
    ] {
        let m = Codec::default()
            .encode(&e, ContentMode::Structured)
            .unwrap();
        let (fast, general) = both_ways(&m.payload);
        let general = general.unwrap();
        assert_eq!(general.event, e);
        assert_eq!(
            fast,
            Some(general.event),
            "the common case takes the fast path"
        );
        let decoded = decode_event::<Placed>(&m, &Upcasters::new(), VersionPolicy::Reject).unwrap();
        assert_eq!((decoded.event, decoded.wire_version), (e, 2));
    }
}

#[test]
fn the_one_pass_decode_leaves_every_unusual_event_to_the_general_decode() {
    let body =
        |members: &str| format!(r#"{{"specversion":"1.0","id":"1","source":"s",{members}}}"#);
    let data = r#""data":{"order_id":"o-1","total_cents":5}"#;
    let cases = [
        // Data before the type: the parser cannot know what it reads.
        format!(r#"{data},"type":"orders.placed.v2""#),
        // An older version (upcast) or a newer one (version policy).
        format!(r#""type":"orders.placed.v1",{data}"#),
        format!(r#""type":"orders.placed.v3",{data}"#),
        // Another type.
        format!(r#""type":"orders.shipped.v2",{data}"#),
        // A content type after the data, or a non-JSON one before it.
        format!(r#""type":"orders.placed.v2",{data},"datacontenttype":"application/json""#),
        format!(r#""type":"orders.placed.v2","datacontenttype":"text/plain",{data}"#),
        // Base64 data, both kinds of data, null data, no data.
        r#""type":"orders.placed.v2","data_base64":"e30=""#.to_owned(),
        format!(r#""type":"orders.placed.v2",{data},"data_base64":"e30=""#),
        r#""type":"orders.placed.v2","data":null"#.to_owned(),
        r#""type":"orders.placed.v2""#.to_owned(),
        // Data that is not a `Placed`, and bad attributes around good data.
        r#""type":"orders.placed.v2","data":{"order_id":5}"#.to_owned(),
        format!(r#""type":"orders.placed.v2","time":"yesterday",{data}"#),
        format!(r#""type":"orders.placed.v2",{data},"subject":"""#),
        format!(r#""type":"orders.placed.v2",{data},{data}"#),
    ];
    for members in cases {
        let (fast, _) = both_ways(body(&members).as_bytes());
        assert_eq!(fast, None, "{members}");
    }
    // Invalid UTF-8 in a string the payload type skips: the general path
    // refuses the raw data, so the one-pass path must not read it.
    let mut bad = body(&format!(r#""type":"orders.placed.v2",{data}"#)).into_bytes();
    let at = bad.len() - 2;
    bad.splice(at..at, *b",\"extra\":\"\xff\"");
    let (fast, general) = both_ways(&bad);
    assert!(general.is_err(), "the general path refuses invalid UTF-8");
    assert_eq!(fast, None);
    // Binary mode is one pass already.
    let m = Codec::default()
        .encode(&full_event(), ContentMode::Binary)
        .unwrap();
    assert_eq!(decode_fast::<Placed>(&m), None);
    assert_eq!(
        decode_event::<Placed>(&m, &Upcasters::new(), VersionPolicy::Reject)
            .unwrap()
            .event,
        decode_typed(&m).unwrap().event
    );
}

proptest::proptest! {
    /// Whatever the bytes: where the one-pass decode gives an event, the
    /// general decode gives the same event.
    #[test]
    fn the_one_pass_decode_never_disagrees_with_the_general_one(
        cut in proptest::prelude::any::<proptest::sample::Index>(),
        flip in proptest::prelude::any::<u8>(),
        insert in "[{}\",:a-z0-9\\\\]{0,3}",
    ) {
        let m = Codec::default().encode(&full_event(), ContentMode::Structured).unwrap();
        let mut body = m.payload.to_vec();
        let i = cut.index(body.len());
        let mutations = [
            { let mut b = body.clone(); b[i] ^= flip; b },
            { let mut b = body.clone(); b.splice(i..i, insert.bytes()); b },
            { body.truncate(i); body },
        ];
        for body in mutations {
            let (fast, general) = both_ways(&body);
            if let Some(fast) = fast {
                proptest::prop_assert_eq!(Some(fast), general.ok().map(|d| d.event));
            }
        }
    }
}

#[test]
fn a_payload_without_fields_round_trips_and_one_with_fields_needs_data() {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Tick;
    impl EventPayload for Tick {
        const TYPE: &'static str = "clock.tick";
    }
    // A unit struct serializes to `null`, which the JSON format reads as no
    // data: it still decodes, in both modes.
    for mode in [ContentMode::Structured, ContentMode::Binary] {
        let e = Event::new("clock", Tick);
        let m = Codec::default().encode(&e, mode).unwrap();
        let back = decode_event::<Tick>(&m, &Upcasters::new(), VersionPolicy::Reject).unwrap();
        assert_eq!(back.event, e, "{mode:?}");
    }
    // A payload with fields cannot come from no data.
    let body = r#"{"specversion":"1.0","id":"1","source":"s","type":"orders.placed.v2"}"#;
    let m = Message::new(Subject::parse("events.orders.placed").unwrap(), body);
    let error = decode_typed(&m).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Decode);
    assert!(error.to_string().contains("does not match"), "{error}");
}

/// A binary-mode message carrying exactly these headers and a JSON body.
fn binary_message(headers: &[(&str, &str)]) -> Message {
    let mut m = Message::new(
        Subject::parse("events.x").unwrap(),
        &br#"{"order_id":"o-1","total_cents":5}"#[..],
    );
    for (name, value) in headers {
        m.headers
            .append(name.to_string(), value.to_string())
            .unwrap();
    }
    m
}

/// The example message of the NATS binding (main branch, 3.1.4).
const BINDING_EXAMPLE: [(&str, &str); 6] = [
    ("ce-specversion", "1.0"),
    ("ce-type", "com.example.someevent"),
    ("ce-time", "2018-04-05T03:56:24Z"),
    ("ce-id", "1234-1234-1234"),
    ("ce-source", "/mycontext/subcontext"),
    ("ce-datacontenttype", "application/json"),
];

#[test]
fn the_binding_example_reads_the_same_with_every_value_double_quoted() {
    let plain = decode(&binary_message(&BINDING_EXAMPLE)).unwrap();
    assert_eq!(plain.metadata.id(), "1234-1234-1234");
    assert_eq!(plain.metadata.source(), "/mycontext/subcontext");
    assert_eq!(plain.metadata.event_type(), "com.example.someevent");
    // Section 3.1.3.2: a value MUST first be unescaped with respect to
    // double-quoted strings, for encoders that quoted instead of
    // percent-encoding.
    let quoted: Vec<(&str, String)> = BINDING_EXAMPLE
        .iter()
        .map(|(name, value)| (*name, format!("\"{value}\"")))
        .collect();
    let quoted: Vec<(&str, &str)> = quoted.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(decode(&binary_message(&quoted)).unwrap(), plain);
}

#[test]
fn header_values_are_unquoted_then_percent_decoded_once() {
    for (header, subject) in [
        // The issue's case.
        ("\"hello world\"", "hello world"),
        // The binding's percent-encoding vector, bare and quoted.
        ("Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro € 😀"),
        ("\"Euro%20%E2%82%AC%20%F0%9F%98%80\"", "Euro € 😀"),
        // Lower-case hex and needless encoding MUST be accepted.
        ("Euro%20%e2%82%ac", "Euro €"),
        ("%41%42", "AB"),
        // Backslash escapes inside quotes; outside them a backslash is text.
        (r#""a \"b\" c""#, r#"a "b" c"#),
        (r#""a\\b""#, r"a\b"),
        (r#""\x""#, "x"),
        (r"a\b", r"a\b"),
        // A quoted part within a value.
        ("x\"y z\"w", "xy zw"),
        ("\"\u{e9}t\u{e9}\"", "\u{e9}t\u{e9}"),
        // Percent-encoded quotes are text (what our encoder writes), and
        // one round of percent-decoding follows the unquoting.
        ("%22hello%20world%22", "\"hello world\""),
        ("\"100%25\"", "100%"),
        ("\"%2522\"", "%22"),
    ] {
        let mut headers = BINDING_EXAMPLE.to_vec();
        headers.push(("ce-subject", header));
        let raw = decode(&binary_message(&headers)).unwrap_or_else(|e| panic!("{header}: {e}"));
        assert_eq!(raw.metadata.subject(), Some(subject), "{header}");
    }
}

#[test]
fn header_values_the_binding_refuses_stay_refused() {
    for header in [
        // Invalid UTF-8 after percent-decoding (an overlong space), quoted
        // or not.
        "%C0%A0",
        "\"%C0%A0\"",
        "%FF",
        // Not a quoted string: unterminated, or ending inside an escape.
        "\"unterminated",
        "\"ends in an escape\\",
        "a\"b",
        // Empty once unquoted (an empty subject).
        "\"\"",
    ] {
        let mut headers = BINDING_EXAMPLE.to_vec();
        headers.push(("ce-subject", header));
        let err = decode(&binary_message(&headers)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode, "{header}");
    }
}

#[test]
fn the_encoder_never_quotes_and_every_value_it_writes_reads_back() {
    // Percent-encoding space and `"` leaves nothing to quote (3.1.3.2: the
    // result SHOULD NOT be further encoded).
    let mut e = full_event();
    e.metadata.set_subject(Some("\"quoted\" \\ \"half".into()));
    let m = Codec::default().encode(&e, ContentMode::Binary).unwrap();
    for (name, value) in m.headers.iter() {
        assert!(!value.contains('"'), "{name}: {value}");
    }
    assert_eq!(
        decode_typed(&m).unwrap().event.metadata.subject(),
        e.metadata.subject()
    );
}

/// A structured or binary event from another producer, of type `ce_type`.
fn foreign(ce_type: &str, mode: ContentMode) -> Message {
    let subject = Subject::parse("events.interop.fromsdk").unwrap();
    match mode {
        ContentMode::Structured => {
            let body = json!({"specversion": "1.0", "id": "sdk-1", "source": "/python",
                "type": ce_type, "data": {"n": 7}});
            Message::new(subject, serde_json::to_vec(&body).unwrap())
        }
        ContentMode::Binary => {
            let mut m = Message::new(subject, &br#"{"n":7}"#[..]);
            for (name, value) in [
                ("ce-specversion", "1.0"),
                ("ce-id", "sdk-1"),
                ("ce-source", "/python"),
                ("ce-type", ce_type),
            ] {
                m.headers.append(name, value.to_owned()).unwrap();
            }
            m
        }
    }
}

/// The `type` attribute exactly as a message carries it.
fn wire_type(m: &Message) -> String {
    match m.headers.get("ce-type") {
        Some(t) => t.to_owned(),
        None => {
            let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            body["type"].as_str().unwrap().to_owned()
        }
    }
}

const MODES: [ContentMode; 2] = [ContentMode::Structured, ContentMode::Binary];

#[test]
fn a_received_type_is_re_encoded_byte_for_byte() {
    for ce_type in [
        "interop.fromsdk",
        "interop.fromsdk.v1",
        "interop.fromsdk.v7",
        "com.example.someevent",
        // Not version suffixes: part of the name.
        "interop.fromsdk.v0",
        "interop.fromsdk.v01",
        "interop.fromsdk.v4294967296",
    ] {
        for arrive in MODES {
            let received = decode(&foreign(ce_type, arrive)).unwrap();
            assert_eq!(received.metadata.cloudevents_type(), ce_type);
            for leave in MODES {
                let again = Codec::default().encode_raw(&received, leave).unwrap();
                let case = format!("{ce_type} {arrive:?} -> {leave:?}");
                assert_eq!(wire_type(&again), ce_type, "{case}");
                assert_eq!(decode(&again).unwrap(), received, "{case}");
            }
        }
    }
}

#[test]
fn a_typed_event_keeps_a_received_type_and_ours_carry_their_version() {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct FromSdk {
        n: u32,
    }
    impl EventPayload for FromSdk {
        const TYPE: &'static str = "interop.fromsdk";
    }
    for arrive in MODES {
        let m = foreign("interop.fromsdk", arrive);
        let one_pass = decode_event::<FromSdk>(&m, &Upcasters::new(), VersionPolicy::Reject)
            .unwrap()
            .event;
        let general = decode_typed_as::<FromSdk>(&m).event;
        assert_eq!(one_pass, general);
        for leave in MODES {
            let again = Codec::default().encode(&one_pass, leave).unwrap();
            assert_eq!(
                wire_type(&again),
                "interop.fromsdk",
                "{arrive:?} -> {leave:?}"
            );
        }
    }
    // An event made here, even with a received event's payload, is ours.
    let ours = Event::new("relay", FromSdk { n: 1 });
    for mode in MODES {
        let m = Codec::default().encode(&ours, mode).unwrap();
        assert_eq!(wire_type(&m), "interop.fromsdk.v1", "{mode:?}");
    }
    // Upcast to version 2, the payload has the v2 shape: the type says so.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct FromSdkV2 {
        n: u32,
    }
    impl EventPayload for FromSdkV2 {
        const TYPE: &'static str = "interop.fromsdk";
        const VERSION: u32 = 2;
    }
    let upcasters = Upcasters::new().register("interop.fromsdk", 1, Ok);
    let up = decode_event::<FromSdkV2>(
        &foreign("interop.fromsdk", ContentMode::Structured),
        &upcasters,
        VersionPolicy::Reject,
    )
    .unwrap();
    assert_eq!(up.wire_version, 1);
    let m = Codec::default()
        .encode(&up.event, ContentMode::Structured)
        .unwrap();
    assert_eq!(wire_type(&m), "interop.fromsdk.v2");
}

fn decode_typed_as<T: EventPayload>(message: &Message) -> Decoded<T> {
    decode(message)
        .unwrap()
        .into_event::<T>(&Upcasters::new(), VersionPolicy::Reject)
        .unwrap()
}
