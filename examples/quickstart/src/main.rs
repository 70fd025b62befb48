//! Quickstart: define an event, publish it, receive it typed, react to it.
//!
//! Runs on the in-memory bus, no server needed:
//!
//! ```text
//! cargo run -p quickstart
//! ```
//!
//! With `NATS_URL` set, the same code runs on NATS:
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p quickstart
//! ```

use std::time::Duration;

use events::{Bus, EventPayload};
use serde::{Deserialize, Serialize};

/// Published by the orders service when a customer places an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    total_cents: u64,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "orders.order_placed";
    const VERSION: u32 = 1;
}

/// Published by the inventory service in reaction to an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StockReserved {
    order_id: String,
}

impl EventPayload for StockReserved {
    const TYPE: &'static str = "inventory.stock_reserved";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = transport_from_env().await?;
    println!("transport: {}", transport.name());
    let orders = Bus::builder_shared(transport.clone())
        .source("orders")
        .build()?;
    let inventory = Bus::builder_shared(transport).source("inventory").build()?;

    // Subscribe before publishing: plain pub/sub keeps no history.
    let mut placed = inventory.subscribe::<OrderPlaced>().await?;
    let mut reserved = orders.subscribe::<StockReserved>().await?;

    let order = orders
        .event(OrderPlaced {
            order_id: "o-1001".into(),
            total_cents: 4200,
        })
        .with_subject("o-1001");
    orders.publish(&order).await?;
    println!(
        "published {} v{} id={} subject={:?}",
        order.metadata.event_type(),
        order.metadata.version(),
        order.metadata.id(),
        order.metadata.subject().unwrap_or_default()
    );

    let delivery = tokio::time::timeout(Duration::from_secs(5), placed.next())
        .await?
        .ok_or("subscription ended")??;
    println!(
        "inventory received {} id={} attempt={} payload={:?}",
        delivery.metadata().event_type(),
        delivery.metadata().id(),
        delivery.attempt(),
        delivery.payload()
    );

    // React: the new event joins the order's correlation and names it as cause.
    let reaction = inventory.reaction(
        delivery.event(),
        StockReserved {
            order_id: delivery.payload().order_id.clone(),
        },
    );
    inventory.publish(&reaction).await?;
    delivery.ack().await?;
    println!(
        "published {} caused by {}",
        reaction.metadata.event_type(),
        order.metadata.id()
    );

    let confirmed = tokio::time::timeout(Duration::from_secs(5), reserved.next())
        .await?
        .ok_or("subscription ended")??;
    println!(
        "orders received {} correlation={} causation={}",
        confirmed.metadata().event_type(),
        confirmed.metadata().correlation_id().unwrap_or_default(),
        confirmed.metadata().causation_id().unwrap_or_default()
    );
    confirmed.ack().await?;

    orders.close().await?;
    println!("done");
    Ok(())
}

/// The in-memory transport, or NATS when `NATS_URL` is set.
async fn transport_from_env(
) -> Result<std::sync::Arc<dyn events::transport::Transport>, Box<dyn std::error::Error>> {
    if std::env::var_os("NATS_URL").is_some() {
        let config = events::backend::nats::NatsConfig::from_env()?;
        return Ok(std::sync::Arc::new(
            events::backend::nats::NatsTransport::connect(config).await?,
        ));
    }
    Ok(std::sync::Arc::new(
        events::backend::memory::MemoryTransport::new(),
    ))
}
