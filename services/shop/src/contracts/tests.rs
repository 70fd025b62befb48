//! The shop's contracts: snapshots, AsyncAPI documents that validate, and
//! documents that say what the services really do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::contract::Snapshots;
use events::testing::Harness;

use super::*;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_contract_matches_its_schema_snapshot_or_changed_compatibly() {
    let snapshots = Snapshots::new(manifest_dir().join("contracts"));
    let report = snapshots.check(&catalog()).expect("the check runs");
    println!("{report}");
    assert_eq!(report.types().len(), 4, "{report}");
    if let Err(e) = report.into_result() {
        panic!("{e}");
    }
}

#[test]
fn the_asyncapi_documents_validate_with_the_official_parser() {
    if Command::new("node").arg("--version").output().is_err() {
        println!("SKIPPED: node is not installed, so the AsyncAPI parser cannot run (scripts/test.sh installs it)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("shop-asyncapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for service in SERVICES {
        let document = asyncapi(service, &Bus::memory(service)).unwrap();
        let file = dir.join(format!("{service}.asyncapi.json"));
        std::fs::write(&file, document.to_json_pretty()).unwrap();
        files.push(file);
    }
    let script = manifest_dir().join("../../scripts/asyncapi-validate.sh");
    let output = Command::new(&script)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
    println!("{text}");
    assert!(
        output.status.success(),
        "the parser refused a document:\n{text}"
    );
    assert_eq!(
        text.matches("valid AsyncAPI 3.0.0 (0 errors, 0 warnings)")
            .count(),
        SERVICES.len(),
        "{text}"
    );
}

/// The operations of `action` in `document`, as channel ids.
fn channels_of(document: &AsyncApiDocument, action: &str) -> BTreeSet<String> {
    let operations = document.as_value()["operations"].as_object().unwrap();
    operations
        .values()
        .filter(|op| op["action"] == action)
        .map(|op| {
            let reference = op["channel"]["$ref"].as_str().unwrap();
            reference.trim_start_matches("#/channels/").to_owned()
        })
        .filter(|channel| !channel.starts_with("deadletter."))
        .collect()
}

#[tokio::test]
async fn the_documents_list_what_each_service_really_publishes_and_handles() {
    let harness = Harness::new("orders");
    let orders_bus = harness.bus().clone();
    let inventory_bus = harness.service("inventory").unwrap();
    let stock = Arc::new(Mutex::new(HashMap::from([("sku-42".to_owned(), 10)])));
    let inventory = inventory::consumer(&inventory_bus, stock)
        .unwrap()
        .start()
        .await
        .unwrap();
    let orders = orders::consumer(&orders_bus)
        .unwrap()
        .start()
        .await
        .unwrap();

    // One order inventory can serve, one it cannot: every type is published.
    for (order_id, quantity) in [("o-1", 3), ("o-2", 20)] {
        let placed = OrderPlaced {
            order_id: order_id.into(),
            sku: "sku-42".into(),
            quantity,
        };
        orders_bus
            .publish(&orders_bus.event(placed).with_subject(order_id))
            .await
            .unwrap();
    }
    let settled = harness
        .wait_published::<OrderSettled>(2, Duration::from_secs(10))
        .await
        .unwrap();
    let confirmed: BTreeMap<&str, bool> = settled
        .iter()
        .map(|e| (e.payload.order_id.as_str(), e.payload.confirmed))
        .collect();
    assert_eq!(confirmed, BTreeMap::from([("o-1", true), ("o-2", false)]));
    // Two orders, one answer each, two settlements: four handled.
    harness.wait_for(4, Duration::from_secs(10)).await.unwrap();
    let summaries = HashMap::from([
        ("inventory", inventory.shutdown().await.unwrap()),
        ("orders", orders.shutdown().await.unwrap()),
    ]);
    assert_eq!(harness.dead_lettered(), 0);

    // (source, CloudEvents type) -> count, from what was really published.
    let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
    for message in harness.published_messages() {
        let metadata = events::wire::decode(&message).unwrap().metadata;
        *seen
            .entry((metadata.source().to_owned(), metadata.cloudevents_type()))
            .or_default() += 1;
    }
    for service in SERVICES {
        let document = asyncapi(service, &orders_bus).unwrap();
        let published: BTreeSet<String> = seen
            .keys()
            .filter(|(source, _)| source == service)
            .map(|(_, ce_type)| ce_type.clone())
            .collect();
        assert_eq!(
            channels_of(&document, "send"),
            published,
            "{service} publishes exactly what its document says"
        );
        // Every event of a type the document says the consumer handles was
        // handled, and nothing else was.
        let receives = channels_of(&document, "receive");
        let of_those: u64 = seen
            .iter()
            .filter(|((_, ce_type), _)| receives.contains(ce_type))
            .map(|(_, count)| count)
            .sum();
        let summary = &summaries[service];
        assert!(of_those > 0, "{service} handles something");
        assert_eq!(
            summary.handled, of_those,
            "{service}: {summary:?}, {seen:?}"
        );
        assert_eq!(summary.dead_lettered, 0, "{service}: {summary:?}");
    }
}
