//! Golden fixtures: every published version of every event keeps decoding.

use std::path::{Path, PathBuf};

use events::transport::{Headers, Message, Subject};
use events::versioning::VersionPolicy;
use events::wire::{self, ContentMode};
use events::{Event, EventPayload};
use serde_json::Value;

use crate::support::{upcasters, OrderPlaced};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Reads a fixture file into the message it describes.
fn load(path: &Path) -> Message {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap();
    let subject = Subject::parse("events.orders.order_placed").unwrap();
    if path.to_string_lossy().ends_with(".binary.json") {
        let mut headers = Headers::new();
        for (name, value) in json["headers"].as_object().unwrap() {
            headers
                .append(name.clone(), value.as_str().unwrap().to_owned())
                .unwrap();
        }
        let mut m = Message::new(subject, serde_json::to_vec(&json["body"]).unwrap());
        m.headers = headers;
        m
    } else {
        let mut m = Message::new(subject, text);
        m.headers
            .append("Content-Type", "application/cloudevents+json")
            .unwrap();
        m
    }
}

/// What each fixture must decode to, as today's type.
fn expected(file: &str) -> OrderPlaced {
    let (order_id, total_cents, customer_id, coupon) = match file {
        "v1.structured.json" => ("o-1001", 1250, "c-7", None),
        "v1.binary.json" => ("o-1002", 99, "c-8", None),
        "v2.structured.json" => ("o-2001", 4200, "c-9", Some("WELCOME")),
        "v2.binary.json" => ("o-2002", 99, "c-10", None),
        other => panic!("fixture {other} has no expectation: add one here"),
    };
    OrderPlaced {
        order_id: order_id.into(),
        total_cents,
        customer_id: customer_id.into(),
        coupon: coupon.map(Into::into),
    }
}

fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixture_dir().join(OrderPlaced::TYPE))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        // Schema snapshots live beside the wire fixtures (checked below).
        .filter(|p| !p.to_string_lossy().ends_with(".schema.json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_fixture_decodes_into_todays_type() {
    let files = fixture_files();
    assert!(files.len() >= 4, "fixtures for v1 and v2 in both modes");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let decoded = wire::decode(&load(&path))
            .and_then(|raw| raw.into_event::<OrderPlaced>(&upcasters(), VersionPolicy::Reject))
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(decoded.event.payload, expected(&name), "{name}");
        let wire_version: u32 = name[1..name.find('.').unwrap()].parse().unwrap();
        assert_eq!(decoded.wire_version, wire_version, "{name}");
        assert_eq!(decoded.event.metadata.version(), OrderPlaced::VERSION);
        assert_eq!(decoded.event.metadata.source(), "orders");
        assert!(decoded.event.metadata.time().is_some());
    }
}

#[test]
fn the_current_version_of_every_type_has_fixtures_in_both_modes() {
    let dir = fixture_dir().join(OrderPlaced::TYPE);
    for mode in ["structured", "binary"] {
        let file = dir.join(format!("v{}.{mode}.json", OrderPlaced::VERSION));
        assert!(
            file.exists(),
            "publish a fixture for the current version: {}",
            file.display()
        );
    }
}

#[test]
fn todays_encoder_writes_what_the_latest_fixture_pins() {
    // Re-encode the decoded v2 fixture: the attributes and data must come out
    // as pinned, or the wire format changed under published consumers.
    for (mode, name) in [
        (ContentMode::Structured, "v2.structured.json"),
        (ContentMode::Binary, "v2.binary.json"),
    ] {
        let file = fixture_dir().join(OrderPlaced::TYPE).join(name);
        let original = load(&file);
        let decoded = wire::decode(&original)
            .unwrap()
            .into_event::<OrderPlaced>(&upcasters(), VersionPolicy::Reject)
            .unwrap();
        let again = wire::Codec::default().encode(&decoded.event, mode).unwrap();
        match mode {
            ContentMode::Structured => {
                let a: Value = serde_json::from_slice(&original.payload).unwrap();
                let b: Value = serde_json::from_slice(&again.payload).unwrap();
                assert_eq!(a, b);
            }
            _ => {
                let mut a: Vec<_> = original.headers.iter().collect();
                let mut b: Vec<_> = again.headers.iter().collect();
                a.sort();
                b.sort();
                assert_eq!(a, b);
                let a: Value = serde_json::from_slice(&original.payload).unwrap();
                let b: Value = serde_json::from_slice(&again.payload).unwrap();
                // `coupon: null` is how serde writes the absent optional field.
                assert_eq!(
                    a.as_object().unwrap().len() + 1,
                    b.as_object().unwrap().len()
                );
            }
        }
    }
}

#[test]
fn readers_tolerate_extra_payload_fields_and_unknown_extensions() {
    let mut body: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("orders.order_placed/v2.structured.json"))
            .unwrap(),
    )
    .unwrap();
    body["data"]["gift_wrap"] = Value::Bool(true);
    body["data"]["lines"] = serde_json::json!([{"sku": "a", "qty": 2}]);
    body["partitionkey"] = Value::String("p-7".into());
    body["sampled"] = Value::Bool(true);
    let message = Message::new(
        Subject::parse("events.orders.order_placed").unwrap(),
        serde_json::to_vec(&body).unwrap(),
    );
    let event: Event<OrderPlaced> = wire::decode(&message)
        .unwrap()
        .into_event(&upcasters(), VersionPolicy::Reject)
        .unwrap()
        .event;
    assert_eq!(event.payload, expected("v2.structured.json"));
    let ext = event.metadata.extensions();
    assert_eq!(ext.get("partitionkey").unwrap().to_string(), "p-7");
    assert_eq!(ext.get("sampled").unwrap().to_string(), "true");
    // Unknown extensions are forwarded, not dropped.
    let forwarded = wire::Codec::default()
        .encode(&event, ContentMode::Binary)
        .unwrap();
    assert_eq!(forwarded.headers.get("ce-partitionkey"), Some("p-7"));
}

/// Every published version of every type has its schema snapshot beside
/// its wire fixtures, and today's types match theirs (or changed
/// compatibly). `EVENTS_UPDATE_SNAPSHOTS=1` records a new version's.
#[cfg(feature = "schema")]
#[test]
fn every_versions_schema_matches_its_snapshot() {
    use events::contract::{Catalog, Snapshots};
    let catalog = Catalog::new()
        .with::<OrderPlaced>()
        .with::<crate::support::OrderPlacedV1>();
    let report = Snapshots::new(fixture_dir()).check(&catalog).unwrap();
    println!("{report}");
    assert_eq!(report.types().len(), 2);
    if let Err(e) = report.into_result() {
        panic!("{e}");
    }
}

/// The check agrees that v2 needed its bump: from v1's snapshot, v2 renamed
/// and retyped fields.
#[cfg(feature = "schema")]
#[test]
fn the_check_finds_why_v2_needed_a_new_version() {
    use events::contract::{compare, schema_of, ChangeKind};
    let file = fixture_dir().join(OrderPlaced::TYPE).join("v1.schema.json");
    let v1: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let changes = compare(&v1, schema_of::<OrderPlaced>().schema());
    let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
    let removed: Vec<&str> = changes
        .iter()
        .filter(|c| c.kind() == ChangeKind::FieldRemoved)
        .map(|c| c.path())
        .collect();
    assert_eq!(removed, ["$.amount", "$.customer"], "{text:#?}");
    assert!(
        text.iter().any(
            |t| t.starts_with("$.customer: required field removed (renamed to `customer_id`?)")
        ),
        "{text:#?}"
    );
    assert!(changes
        .iter()
        .all(|c| c.path() == "$.coupon" || c.is_breaking()));
}
