//! Wire fidelity: what goes in comes out. Every finite `f64` keeps its
//! bits through encode -> decode in both content modes and through the
//! in-memory bus; double-quoted binary-mode header values are read as the
//! NATS binding says; a type received from another producer is
//! republished byte for byte.

use std::collections::BTreeMap;
use std::time::Duration;

use events::consumer::{replay, DeadLetter, Reason};
use events::transport::{Message, Subject, SubjectPattern, SubscribeOptions};
use events::versioning::{Upcasters, VersionPolicy};
use events::wire::{self, Codec, ContentMode};
use events::{Bus, Event, EventPayload};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

const MODES: [ContentMode; 2] = [ContentMode::Structured, ContentMode::Binary];
const WAIT: Duration = Duration::from_secs(10);

/// Floats where a service keeps them: a field, a list, a map, and lists
/// nested in maps in a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Measured {
    value: f64,
    list: Vec<f64>,
    by_name: BTreeMap<String, f64>,
    nested: Vec<BTreeMap<String, Vec<f64>>>,
}

impl EventPayload for Measured {
    const TYPE: &'static str = "fidelity.measured";
    const VERSION: u32 = 2;
}

/// The same shape as version 1, so decoding into [`Measured`] goes through
/// an upcaster and therefore through `serde_json::Value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MeasuredV1 {
    value: f64,
    list: Vec<f64>,
    by_name: BTreeMap<String, f64>,
    nested: Vec<BTreeMap<String, Vec<f64>>>,
}

impl EventPayload for MeasuredV1 {
    const TYPE: &'static str = "fidelity.measured";
    const VERSION: u32 = 1;
}

impl Measured {
    fn v1(&self) -> MeasuredV1 {
        MeasuredV1 {
            value: self.value,
            list: self.list.clone(),
            by_name: self.by_name.clone(),
            nested: self.nested.clone(),
        }
    }

    /// Every float's bits, in a fixed order: `==` on floats takes `-0.0`
    /// for `0.0`, so equality alone would miss a changed sign.
    fn bits(&self) -> Vec<u64> {
        let mut bits = vec![self.value.to_bits()];
        bits.extend(self.list.iter().map(|f| f.to_bits()));
        bits.extend(self.by_name.values().map(|f| f.to_bits()));
        for map in &self.nested {
            for list in map.values() {
                bits.extend(list.iter().map(|f| f.to_bits()));
            }
        }
        bits
    }
}

fn identity_upcaster() -> Upcasters {
    Upcasters::new().register(Measured::TYPE, 1, Ok)
}

/// `10^exponent`, as Rust reads it (correctly rounded).
fn power_of_ten(exponent: i32) -> f64 {
    format!("1e{exponent}").parse().unwrap()
}

/// Any finite double, weighted towards the values that parsers get wrong.
fn finite_f64() -> impl Strategy<Value = f64> {
    let any_finite = any::<u64>()
        .prop_map(f64::from_bits)
        .prop_filter("finite", |f| f.is_finite());
    let subnormal = (1u64..(1 << 52), any::<bool>())
        .prop_map(|(m, negative)| f64::from_bits(m | u64::from(negative) << 63));
    let edge = prop::sample::select(vec![
        0.0,
        -0.0,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        f64::EPSILON,
        f64::from_bits(1),
        f64::from_bits((1 << 52) - 1),
        123_456_789.123_456_79,
        1e-23,
        5.370_034_505_566e-42,
        0.1,
        1.0 / 3.0,
        9_007_199_254_740_993.0,
    ]);
    // A few units in the last place around a power of ten, either sign.
    let near_power_of_ten = (-323i32..=308, -3i64..=3, any::<bool>()).prop_filter_map(
        "finite and nonzero",
        |(exponent, ulps, negative)| {
            let p = power_of_ten(exponent).to_bits() as i64 + ulps;
            let f = f64::from_bits(p.max(1) as u64);
            f.is_finite().then_some(if negative { -f } else { f })
        },
    );
    // Decimals of up to 17 significant digits at any magnitude, as a
    // producer in another language writes them.
    let decimal = (1u64..100_000_000_000_000_000, -340i32..=290).prop_filter_map(
        "finite",
        |(digits, exponent)| {
            let f: f64 = format!("{digits}e{exponent}").parse().ok()?;
            f.is_finite().then_some(f)
        },
    );
    prop_oneof![any_finite, subnormal, edge, near_power_of_ten, decimal]
}

prop_compose! {
    fn measured()(
        value in finite_f64(),
        list in prop::collection::vec(finite_f64(), 0..8),
        by_name in prop::collection::btree_map("[a-z]{1,6}", finite_f64(), 0..4),
        nested in prop::collection::vec(
            prop::collection::btree_map("[a-z]{1,4}", prop::collection::vec(finite_f64(), 0..4), 0..3),
            0..3,
        ),
    ) -> Measured {
        Measured { value, list, by_name, nested }
    }
}

/// Every way the crate decodes a payload, each checked for the exact bits:
/// the general decode and the one-pass typed decode, re-encoding the raw
/// event (the forwarding path), the JSON value a raw consumer reads, and an
/// upcast (which goes through `serde_json::Value`).
fn check_codec(payload: &Measured) -> Result<(), TestCaseError> {
    let want = payload.bits();
    let codec = Codec::default();
    let event = Event::new("fidelity", payload.clone());
    for mode in MODES {
        let m = codec.encode(&event, mode).unwrap();
        let general = wire::decode(&m)
            .unwrap()
            .into_event::<Measured>(&Upcasters::new(), VersionPolicy::Reject)
            .unwrap();
        prop_assert_eq!(
            general.event.payload.bits(),
            want.clone(),
            "{:?} general",
            mode
        );
        let typed =
            wire::decode_event::<Measured>(&m, &Upcasters::new(), VersionPolicy::Reject).unwrap();
        prop_assert_eq!(
            typed.event.payload.bits(),
            want.clone(),
            "{:?} one pass",
            mode
        );

        let raw = wire::decode(&m).unwrap();
        let from_value: Measured = serde_json::from_value(raw.data_json().unwrap()).unwrap();
        prop_assert_eq!(
            from_value.bits(),
            want.clone(),
            "{:?} as a JSON value",
            mode
        );
        for again in MODES {
            let forwarded = codec.encode_raw(&raw, again).unwrap();
            let back = wire::decode_event::<Measured>(
                &forwarded,
                &Upcasters::new(),
                VersionPolicy::Reject,
            )
            .unwrap();
            prop_assert_eq!(
                back.event.payload.bits(),
                want.clone(),
                "{:?} forwarded as {:?}",
                mode,
                again
            );
        }

        let old = codec
            .encode(&Event::new("fidelity", payload.v1()), mode)
            .unwrap();
        let upcast =
            wire::decode_event::<Measured>(&old, &identity_upcaster(), VersionPolicy::Reject)
                .unwrap();
        prop_assert_eq!(upcast.wire_version, 1);
        prop_assert_eq!(
            upcast.event.payload.bits(),
            want.clone(),
            "{:?} upcast",
            mode
        );
    }
    Ok(())
}

/// Publishes `payload` on a memory bus in both modes and checks what a typed
/// subscriber receives.
async fn check_bus(payload: &Measured) -> Result<(), TestCaseError> {
    let bus = Bus::memory("fidelity");
    let mut sub = bus.subscribe::<Measured>().await.unwrap();
    for mode in MODES {
        bus.publish_with(&bus.event(payload.clone()), mode)
            .await
            .unwrap();
        let delivery = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("delivered")
            .unwrap()
            .unwrap();
        prop_assert_eq!(
            delivery.payload().bits(),
            payload.bits(),
            "{:?} through the bus",
            mode
        );
        delivery.ack().await.unwrap();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_finite_f64_keeps_its_bits_through_the_codec(payload in measured()) {
        check_codec(&payload)?;
    }

    #[test]
    fn every_finite_f64_keeps_its_bits_through_the_memory_bus(payload in measured()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(check_bus(&payload))?;
    }
}

#[tokio::test]
async fn the_floats_a_default_serde_json_misreads_arrive_unchanged() {
    // 123456789.12345679 (sent by the Python SDK) is the shortest form that
    // reads back as this double; a parser that rounds wrongly gives
    // 123456789.1234568. The others are what the property tests found
    // (one a subnormal).
    for f in [123_456_789.123_456_79_f64, 1e-23, 5.370_034_505_566e-42] {
        let payload = Measured {
            value: f,
            list: vec![f, -f],
            by_name: BTreeMap::from([("x".to_owned(), f)]),
            nested: vec![BTreeMap::from([("y".to_owned(), vec![f])])],
        };
        check_codec(&payload).unwrap_or_else(|e| panic!("{f:e}: {e}"));
        check_bus(&payload)
            .await
            .unwrap_or_else(|e| panic!("{f:e}: {e}"));
    }
}

/// A binary-mode message with these headers and a JSON body, as another
/// client publishes it.
fn binary_message(subject: &str, headers: &[(&str, &str)], body: &'static [u8]) -> Message {
    let mut m = Message::new(Subject::parse(subject).unwrap(), body);
    for (name, value) in headers {
        m.headers
            .append(name.to_string(), value.to_string())
            .unwrap();
    }
    m
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Greeting {
    text: String,
}

impl EventPayload for Greeting {
    const TYPE: &'static str = "fidelity.greeting";
}

/// The issue's event: a subject sent as a double-quoted string.
fn quoted_greeting(subject: &str) -> Message {
    binary_message(
        subject,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "\"q-1\""),
            ("ce-source", "\"/python sdk\""),
            ("ce-type", "fidelity.greeting.v1"),
            ("ce-subject", "\"hello world\""),
            ("ce-tenant", "\"a \\\"quoted\\\" name\""),
            ("content-type", "application/json"),
        ],
        br#"{"text":"hi"}"#,
    )
}

fn check_quoted_greeting(event: &Event<Greeting>) {
    assert_eq!(event.metadata.id(), "q-1");
    assert_eq!(event.metadata.source(), "/python sdk");
    assert_eq!(event.metadata.subject(), Some("hello world"));
    assert_eq!(
        event
            .metadata
            .extensions()
            .get("tenant")
            .map(|v| v.to_string()),
        Some("a \"quoted\" name".to_owned())
    );
}

#[tokio::test]
async fn a_double_quoted_header_value_is_read_without_its_quotes_on_the_memory_bus() {
    let bus = Bus::memory("fidelity");
    let mut sub = bus.subscribe::<Greeting>().await.unwrap();
    bus.transport()
        .publish(quoted_greeting("events.fidelity.greeting"))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("delivered")
        .unwrap()
        .unwrap();
    check_quoted_greeting(delivery.event());
    delivery.ack().await.unwrap();
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn a_double_quoted_header_value_is_read_without_its_quotes_over_nats() {
    use events::backend::nats::NatsTransport;
    use events::testing::NatsServer;

    let server = NatsServer::core();
    let transport = NatsTransport::connect(crate::nats::config(&server))
        .await
        .unwrap();
    let bus = Bus::builder(transport).source("fidelity").build().unwrap();
    let mut sub = bus.subscribe::<Greeting>().await.unwrap();
    // Written on the wire as another client would, quotes and all.
    crate::nats::raw_publish(&server, &quoted_greeting("events.fidelity.greeting"), "").await;
    let delivery = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("delivered")
        .unwrap()
        .unwrap();
    check_quoted_greeting(delivery.event());
    bus.close().await.unwrap();
}

/// A payload type named like another producer's events, without a version
/// suffix (version 1 here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FromSdk {
    n: u32,
}

impl EventPayload for FromSdk {
    const TYPE: &'static str = "interop.fromsdk";
}

/// An event as the Python SDK publishes it, type `ce_type`.
fn foreign(ce_type: &str, mode: ContentMode) -> Message {
    let subject = Subject::parse("events.interop.fromsdk").unwrap();
    match mode {
        ContentMode::Structured => {
            let body = serde_json::json!({
                "specversion": "1.0", "id": "sdk-1", "source": "/python",
                "type": ce_type, "time": "2024-05-01T12:00:00+02:00",
                "datacontenttype": "application/json", "data": {"n": 7},
            });
            let mut m = Message::new(subject, serde_json::to_vec(&body).unwrap());
            m.headers
                .append("content-type", "application/cloudevents+json")
                .unwrap();
            m
        }
        ContentMode::Binary => {
            let mut m = Message::new(subject, &br#"{"n":7}"#[..]);
            for (name, value) in [
                ("ce-specversion", "1.0"),
                ("ce-id", "sdk-1"),
                ("ce-source", "/python"),
                ("ce-type", ce_type),
                ("ce-time", "2024-05-01T12:00:00+02:00"),
                ("content-type", "application/json"),
            ] {
                m.headers.append(name, value.to_owned()).unwrap();
            }
            m
        }
        other => panic!("no foreign message for {other:?}"),
    }
}

/// The CloudEvents `type` exactly as a message carries it.
fn wire_type(m: &Message) -> String {
    match m.headers.get("ce-type") {
        Some(t) => t.to_owned(),
        None => {
            let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            body["type"].as_str().unwrap().to_owned()
        }
    }
}

/// A bus on the same transport whose subjects start with `mirror`: where a
/// relay forwards what it receives (the same subject would loop).
fn mirror(bus: &Bus, mode: ContentMode) -> Bus {
    Bus::builder_shared(bus.transport().clone())
        .source("relay")
        .prefix("mirror")
        .content_mode(mode)
        .build()
        .unwrap()
}

async fn next_message(sub: &mut events::transport::Subscription) -> Message {
    let delivery = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("delivered")
        .expect("subscribed")
        .unwrap();
    let message = delivery.message().clone();
    delivery.ack().await.unwrap();
    message
}

async fn mirror_subscription(bus: &Bus) -> events::transport::Subscription {
    bus.transport()
        .subscribe(SubscribeOptions::new(
            SubjectPattern::parse("mirror.>").unwrap(),
        ))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_relay_forwards_another_producers_type_byte_for_byte_raw_and_typed() {
    for ce_type in ["interop.fromsdk", "interop.fromsdk.v1"] {
        for arrive in MODES {
            for leave in MODES {
                let bus = Bus::memory("relay");
                let relay = mirror(&bus, leave);
                let mut out = mirror_subscription(&bus).await;
                let mut raw = bus.subscribe_raw("interop.>").await.unwrap();
                let mut typed = bus.subscribe::<FromSdk>().await.unwrap();
                bus.transport()
                    .publish(foreign(ce_type, arrive))
                    .await
                    .unwrap();

                // Untyped: a handler re-encoding the received event.
                let received = tokio::time::timeout(WAIT, raw.next())
                    .await
                    .expect("delivered")
                    .unwrap()
                    .unwrap();
                let again = relay.codec().encode_raw(received.event(), leave).unwrap();
                relay.transport().publish(again).await.unwrap();
                let forwarded = next_message(&mut out).await;
                let case = format!("{ce_type} {arrive:?} -> raw {leave:?}");
                assert_eq!(wire_type(&forwarded), ce_type, "{case}");
                assert_eq!(
                    wire::decode(&forwarded).unwrap().metadata,
                    received.event().metadata,
                    "{case}"
                );
                received.ack().await.unwrap();

                // Typed: a handler publishing the event it received.
                let delivery = tokio::time::timeout(WAIT, typed.next())
                    .await
                    .expect("delivered")
                    .unwrap()
                    .unwrap();
                assert_eq!(delivery.payload(), &FromSdk { n: 7 });
                relay.publish(delivery.event()).await.unwrap();
                let forwarded = next_message(&mut out).await;
                let case = format!("{ce_type} {arrive:?} -> typed {leave:?}");
                assert_eq!(wire_type(&forwarded), ce_type, "{case}");
                delivery.ack().await.unwrap();

                // An event this crate creates carries its version.
                relay.publish(&relay.event(FromSdk { n: 8 })).await.unwrap();
                assert_eq!(
                    wire_type(&next_message(&mut out).await),
                    "interop.fromsdk.v1"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_upcast_event_is_forwarded_with_the_version_it_now_has() {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct FromSdkV2 {
        n: u32,
        doubled: u32,
    }
    impl EventPayload for FromSdkV2 {
        const TYPE: &'static str = "interop.fromsdk";
        const VERSION: u32 = 2;
    }
    let upcasters = Upcasters::new().register(FromSdkV2::TYPE, 1, |mut v| {
        let n = v["n"].as_u64().ok_or("n missing")?;
        v["doubled"] = serde_json::json!(n * 2);
        Ok(v)
    });
    let bus = Bus::builder(events::backend::memory::MemoryTransport::new())
        .source("relay")
        .upcasters(upcasters)
        .build()
        .unwrap();
    let relay = mirror(&bus, ContentMode::Structured);
    let mut out = mirror_subscription(&bus).await;
    let mut typed = bus.subscribe::<FromSdkV2>().await.unwrap();
    bus.transport()
        .publish(foreign("interop.fromsdk", ContentMode::Structured))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, typed.next())
        .await
        .expect("delivered")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.wire_version(), 1);
    relay.publish(delivery.event()).await.unwrap();
    // The payload has the v2 shape now: the unsuffixed type would say v1.
    assert_eq!(
        wire_type(&next_message(&mut out).await),
        "interop.fromsdk.v2"
    );
}

#[tokio::test]
async fn a_replayed_dead_letter_keeps_another_producers_type() {
    for mode in MODES {
        let bus = Bus::memory("relay");
        let original = foreign("interop.fromsdk", mode);
        let letter = DeadLetter::new(original.clone(), Reason::Rejected, "rejected", "worker");
        let mut letters = bus
            .transport()
            .subscribe(SubscribeOptions::new(
                SubjectPattern::parse("deadletter.events.worker").unwrap(),
            ))
            .await
            .unwrap();
        let mut originals = bus
            .transport()
            .subscribe(SubscribeOptions::new(
                SubjectPattern::parse("events.interop.>").unwrap(),
            ))
            .await
            .unwrap();
        bus.transport()
            .publish(letter.to_message(Subject::parse("deadletter.events.worker").unwrap()))
            .await
            .unwrap();
        let report = replay(
            bus.transport().as_ref(),
            &mut letters,
            1,
            Duration::from_secs(5),
            |_| true,
        )
        .await
        .unwrap();
        assert_eq!(report.replayed, 1);
        let replayed = next_message(&mut originals).await;
        assert_eq!(wire_type(&replayed), "interop.fromsdk", "{mode:?}");
        assert_eq!(replayed.payload, original.payload, "{mode:?}");
    }
}
