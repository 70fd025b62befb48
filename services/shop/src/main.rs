//! Two services reacting to each other's events: orders and inventory.
//!
//! The orders service places orders; inventory reserves stock (or reports it
//! out of stock); orders settles each order. Every reaction carries the
//! order's correlation id and names its cause.
//!
//! Run with `cargo run -p shop` (in-memory bus), or against NATS with
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p shop --features nats`.
//!
//! With `DATABASE_URL` set (and `--features postgres`), orders are written
//! to PostgreSQL with their `OrderPlaced` in one transaction (the outbox),
//! a relay publishes them, and inventory applies them through the inbox:
//! `DATABASE_URL=postgres://postgres@127.0.0.1/postgres cargo run -p shop --features postgres`.
//!
//! `cargo run -p shop -- asyncapi orders` (or `inventory`) prints the
//! service's AsyncAPI 3.0 document, generated from its code.
//! `cargo run -p shop -- snapshots <dir>` writes the schema snapshot of
//! every type as the code has it now into `<dir>`, for
//! `events schema check --old services/shop/contracts --new <dir>`.

mod contracts;
#[cfg(feature = "postgres")]
mod durable;
mod inventory;
mod orders;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::transport::Transport;
use events::Bus;

use contracts::{OrderPlaced, OrderSettled};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `shop asyncapi <service>`: print the service's AsyncAPI document.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [command, argument] = &args[..] {
        if command == "snapshots" {
            let report = events::contract::Snapshots::new(argument)
                .update(true)
                .check(&contracts::catalog())?;
            println!("{report}");
            return Ok(());
        }
        let service = argument;
        if command == "asyncapi" {
            print!(
                "{}",
                contracts::asyncapi(service, &Bus::memory(service.clone()))?
            );
            return Ok(());
        }
    }
    if !args.is_empty() {
        return Err(format!(
            "usage: shop [asyncapi <{}> | snapshots <dir>]",
            contracts::SERVICES.join("|")
        )
        .into());
    }
    let transport = transport_from_env().await?;
    println!("transport: {}", transport.name());
    let orders_bus = Bus::builder_shared(transport.clone())
        .source("orders")
        .build()?;
    let inventory_bus = Bus::builder_shared(transport.clone())
        .source("inventory")
        .build()?;

    // Watch the outcome before anything is published.
    let mut settled = orders_bus.subscribe::<OrderSettled>().await?;

    #[cfg(feature = "postgres")]
    let durable = match std::env::var("DATABASE_URL") {
        Ok(url) => Some(durable::Durable::connect(&url, &orders_bus, "sku-42", 10).await?),
        Err(_) => None,
    };
    #[cfg(not(feature = "postgres"))]
    if std::env::var_os("DATABASE_URL").is_some() {
        return Err("DATABASE_URL is set: run with `--features postgres` to use it".into());
    }
    #[cfg(feature = "postgres")]
    println!(
        "store: {}",
        if durable.is_some() {
            "postgres (outbox and inbox)"
        } else {
            "memory"
        }
    );

    let stock = Arc::new(Mutex::new(HashMap::from([("sku-42".to_owned(), 10)])));
    // `start` returns once each consumer is subscribed: nothing published
    // from here on is missed.
    #[cfg(feature = "postgres")]
    let (inventory, relay) = match &durable {
        Some(d) => (d.inventory(&inventory_bus)?.start().await?, Some(d.relay())),
        None => (
            inventory::consumer(&inventory_bus, stock)?.start().await?,
            None,
        ),
    };
    #[cfg(not(feature = "postgres"))]
    let inventory = inventory::consumer(&inventory_bus, stock)?.start().await?;
    let orders = orders::consumer(&orders_bus)?.start().await?;

    let mut placed = HashMap::new();
    for (order_id, quantity) in [("o-1", 3), ("o-2", 20), ("o-3", 7)] {
        let event = orders_bus
            .event(OrderPlaced {
                order_id: order_id.into(),
                sku: "sku-42".into(),
                quantity,
            })
            .with_subject(order_id);
        #[cfg(feature = "postgres")]
        match &durable {
            // The order row and its event commit together, or neither.
            Some(d) => d.place(&event).await?,
            None => orders_bus.publish(&event).await?,
        }
        #[cfg(not(feature = "postgres"))]
        orders_bus.publish(&event).await?;
        println!(
            "orders     published OrderPlaced   {order_id} x{quantity} id={}",
            event.metadata.id()
        );
        placed.insert(order_id.to_owned(), event.metadata.id().to_owned());
    }

    for _ in 0..placed.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), settled.next())
            .await?
            .ok_or("bus closed")??;
        let order = delivery.payload();
        let correlation = delivery.metadata().correlation_id().unwrap_or_default();
        println!(
            "orders     settled {} confirmed={} correlation={} (the OrderPlaced id: {})",
            order.order_id,
            order.confirmed,
            correlation,
            correlation == placed[&order.order_id]
        );
        delivery.ack().await?;
    }

    println!("inventory  {:?}", inventory.shutdown().await?);
    #[cfg(feature = "postgres")]
    if let Some(relay) = relay {
        println!("relay      {:?}", relay.shutdown().await?);
    }
    println!("orders     {:?}", orders.shutdown().await?);
    orders_bus.close().await?;
    Ok(())
}

async fn transport_from_env() -> Result<Arc<dyn Transport>, Box<dyn std::error::Error>> {
    if std::env::var_os("NATS_URL").is_some() {
        #[cfg(feature = "nats")]
        {
            let config = events::backend::nats::NatsConfig::from_env()?;
            return Ok(Arc::new(
                events::backend::nats::NatsTransport::connect(config).await?,
            ));
        }
        #[cfg(not(feature = "nats"))]
        return Err("NATS_URL is set: run with `--features nats` to use it".into());
    }
    Ok(Arc::new(events::backend::memory::MemoryTransport::new()))
}
