//! Property tests: every valid event survives encode -> decode in both
//! modes, and no input makes the decoder panic.

use chrono::{DateTime, Utc};
use events::envelope::{ExtensionValue, TraceContext};
use events::transport::{Headers, Message, Subject};
use events::versioning::{Upcasters, VersionPolicy};
use events::wire::{self, Codec, ContentMode};
use events::{Event, EventPayload};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payload {
    text: String,
    number: i64,
    list: Vec<String>,
    maybe: Option<bool>,
}

impl EventPayload for Payload {
    const TYPE: &'static str = "props.payload";
    const VERSION: u32 = 4;
}

fn non_empty_text() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("non-empty", |s| !s.is_empty())
}

fn extension_value() -> impl Strategy<Value = ExtensionValue> {
    prop_oneof![
        any::<String>().prop_map(ExtensionValue::String),
        any::<bool>().prop_map(ExtensionValue::Bool),
        any::<i32>().prop_map(ExtensionValue::Integer),
    ]
}

prop_compose! {
    fn event()(
        source in non_empty_text(),
        id in proptest::option::of(non_empty_text()),
        subject in proptest::option::of(non_empty_text()),
        correlation in proptest::option::of(non_empty_text()),
        causation in proptest::option::of(non_empty_text()),
        // Whole microseconds from 1970 to 2200: what RFC 3339 with AutoSi keeps.
        micros in 0i64..7_258_118_400_000_000,
        trace in proptest::option::of(("[0-9a-f]{31}[1-9a-f]", "[0-9a-f]{15}[1-9a-f]", proptest::option::of("[a-z]{1,8}=[a-z0-9]{1,8}"))),
        extensions in proptest::collection::btree_map("[a-z0-9]{1,20}", extension_value(), 0..5),
        text in any::<String>(),
        number in any::<i64>(),
        list in proptest::collection::vec(any::<String>(), 0..4),
        maybe in proptest::option::of(any::<bool>()),
    ) -> Event<Payload> {
        let mut e = Event::new(source, Payload { text, number, list, maybe });
        if let Some(id) = id { e.metadata.set_id(id); }
        e.metadata.set_subject(subject);
        e.metadata.set_correlation_id(correlation);
        e.metadata.set_causation_id(causation);
        e.metadata.set_time(Some(DateTime::<Utc>::from_timestamp_micros(micros).unwrap()));
        if let Some((trace_id, parent, state)) = trace {
            let mut t = TraceContext::new(format!("00-{trace_id}-{parent}-01")).unwrap();
            if let Some(state) = state { t = t.with_tracestate(state); }
            e.metadata.set_trace(Some(t));
        }
        for (name, value) in extensions {
            // Reserved names are refused by design; skip them here.
            let _ = e.metadata.extensions_mut().insert(name, value);
        }
        e
    }
}

fn stringify_extensions(mut e: Event<Payload>) -> Event<Payload> {
    let ext: Vec<(String, ExtensionValue)> = e
        .metadata
        .extensions()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
    for (name, value) in ext {
        e.metadata
            .extensions_mut()
            .insert(name, value.to_string())
            .unwrap();
    }
    e
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_event_survives_structured_mode(e in event()) {
        let m = Codec::default().encode(&e, ContentMode::Structured).unwrap();
        let back = wire::decode(&m).unwrap().into_event::<Payload>(&Upcasters::new(), VersionPolicy::Reject).unwrap();
        prop_assert_eq!(back.event, e);
    }

    #[test]
    fn any_valid_event_survives_binary_mode(e in event()) {
        let m = Codec::default().encode(&e, ContentMode::Binary).unwrap();
        for (_, value) in m.headers.iter() {
            prop_assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)));
        }
        let back = wire::decode(&m).unwrap().into_event::<Payload>(&Upcasters::new(), VersionPolicy::Reject).unwrap();
        // Binary mode carries extension values as strings, as the spec says.
        prop_assert_eq!(back.event, stringify_extensions(e));
    }

    #[test]
    fn decoding_arbitrary_bodies_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode(&Message::new(Subject::parse("a").unwrap(), body));
    }

    #[test]
    fn decoding_arbitrary_headers_never_panics(
        headers in proptest::collection::vec(("(ce-|CE-|content-)?[a-z]{0,12}", "[ -~]{0,40}"), 0..10),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut h = Headers::new();
        for (n, v) in headers {
            let _ = h.append(n, v);
        }
        let mut m = Message::new(Subject::parse("a").unwrap(), body);
        m.headers = h;
        if let Ok(raw) = wire::decode(&m) {
            let _ = raw.into_event::<Payload>(&Upcasters::new(), VersionPolicy::Tolerant);
        }
    }

    #[test]
    fn decoding_mutated_valid_events_never_panics(e in event(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
        let m = Codec::default().encode(&e, ContentMode::Structured).unwrap();
        let mut body = m.payload.to_vec();
        let i = cut.index(body.len());
        body[i] ^= flip;
        let _ = wire::decode(&Message::new(Subject::parse("a").unwrap(), body.clone()));
        body.truncate(i);
        let _ = wire::decode(&Message::new(Subject::parse("a").unwrap(), body));
    }
}
