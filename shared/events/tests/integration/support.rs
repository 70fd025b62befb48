//! Event types and helpers shared by the integration tests.

use events::versioning::Upcasters;
use events::EventPayload;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The current (v2) shape of `orders.order_placed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OrderPlaced {
    pub order_id: String,
    pub total_cents: u64,
    pub customer_id: String,
    /// Added in v2 without a version bump of its own: optional.
    #[serde(default)]
    pub coupon: Option<String>,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "orders.order_placed";
    const VERSION: u32 = 2;
}

/// The v1 shape, as old producers still send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OrderPlacedV1 {
    pub order_id: String,
    pub amount: f64,
    pub customer: String,
}

impl EventPayload for OrderPlacedV1 {
    const TYPE: &'static str = "orders.order_placed";
    const VERSION: u32 = 1;
}

/// v1 -> v2: euros become cents, `customer` becomes `customer_id`.
pub fn upcasters() -> Upcasters {
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
}

/// A small payload for transport tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub seq: u64,
    pub note: String,
}

impl EventPayload for Ping {
    const TYPE: &'static str = "test.ping";
}

/// Whether the `nats-server` the tests start (`NATS_SERVER_BIN`, else the
/// one on PATH) has the
/// JetStream bug fixed by nats-server PR #5305 in 2.10.14: a redelivery
/// that finds only an expired or abandoned pull request rewinds the
/// consumer by one message, which is then delivered again with delivery
/// count 1 (even if it was acked).
pub fn server_rewinds_redeliveries() -> bool {
    let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .expect("nats-server --version");
    let text = String::from_utf8_lossy(&output.stdout);
    // "nats-server: v2.9.10"
    let version: Vec<u64> = text
        .trim()
        .rsplit('v')
        .next()
        .unwrap_or("")
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    version < vec![2, 10, 14]
}
