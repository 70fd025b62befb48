//! Example service: inventory reserves stock when an order is placed.
//!
//! Shows a second crate of the workspace using the shared `events` crate
//! (`events = { workspace = true }`). It runs on the in-memory bus and, to
//! have something to react to, plays the orders service too.
//!
//! Run with `cargo run -p inventory`.

use std::collections::HashMap;
use std::time::Duration;

use events::{Bus, EventPayload};
use serde::{Deserialize, Serialize};

/// The event this service consumes (owned by the orders service).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    sku: String,
    quantity: u32,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "orders.order_placed";
}

/// The event this service publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum StockOutcome {
    Reserved { order_id: String },
    OutOfStock { order_id: String, available: u32 },
}

impl EventPayload for StockOutcome {
    const TYPE: &'static str = "inventory.stock_checked";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::memory("inventory");
    let orders = Bus::builder_shared(bus.transport().clone())
        .source("orders")
        .build()?;
    let mut placed = bus
        .subscribe::<OrderPlaced>()
        .queue_group("inventory")
        .await?;
    let mut outcomes = orders.subscribe::<StockOutcome>().await?;

    for (order_id, quantity) in [("o-1", 3), ("o-2", 20)] {
        let event = orders.event(OrderPlaced {
            order_id: order_id.into(),
            sku: "sku-42".into(),
            quantity,
        });
        orders.publish(&event.with_subject(order_id)).await?;
    }

    let mut stock = HashMap::from([("sku-42".to_owned(), 10u32)]);
    for _ in 0..2 {
        let delivery = placed.next().await.ok_or("bus closed")??;
        let order = delivery.payload();
        let available = stock.get(&order.sku).copied().unwrap_or(0);
        let outcome = if available >= order.quantity {
            stock.insert(order.sku.clone(), available - order.quantity);
            StockOutcome::Reserved {
                order_id: order.order_id.clone(),
            }
        } else {
            StockOutcome::OutOfStock {
                order_id: order.order_id.clone(),
                available,
            }
        };
        bus.publish(&bus.reaction(delivery.event(), outcome))
            .await?;
        delivery.ack().await?;
    }

    for _ in 0..2 {
        let outcome = tokio::time::timeout(Duration::from_secs(5), outcomes.next())
            .await?
            .ok_or("bus closed")??;
        println!(
            "{:?} (caused by {})",
            outcome.payload(),
            outcome.metadata().causation_id().unwrap_or("?")
        );
        outcome.ack().await?;
    }
    bus.close().await?;
    Ok(())
}
