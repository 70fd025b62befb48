//! The events the two services exchange. In a real system this module is a
//! small shared crate that both services depend on.
//!
//! Each payload derives `JsonSchema` beside serde: its JSON Schema, the
//! AsyncAPI documents of the two services (`cargo run -p shop -- asyncapi
//! orders`) and the check of every type against its snapshot in
//! `services/shop/contracts/` come from these types alone.

use events::consumer::Consumer;
use events::contract::{AsyncApi, AsyncApiDocument, Catalog};
use events::{Bus, EventPayload};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{inventory, orders};

/// Orders: a customer placed an order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct OrderPlaced {
    /// The order's id, also the event's subject.
    pub(crate) order_id: String,
    /// The stock-keeping unit ordered.
    pub(crate) sku: String,
    /// How many units.
    pub(crate) quantity: u32,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "orders.order_placed";
}

/// Inventory: stock was reserved for an order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct StockReserved {
    pub(crate) order_id: String,
    pub(crate) remaining: u32,
}

impl EventPayload for StockReserved {
    const TYPE: &'static str = "inventory.stock_reserved";
}

/// Inventory: not enough stock for an order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct OutOfStock {
    pub(crate) order_id: String,
    pub(crate) available: u32,
}

impl EventPayload for OutOfStock {
    const TYPE: &'static str = "inventory.out_of_stock";
}

/// Orders: the order is confirmed (stock reserved) or cancelled.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct OrderSettled {
    pub(crate) order_id: String,
    pub(crate) confirmed: bool,
}

impl EventPayload for OrderSettled {
    const TYPE: &'static str = "orders.order_settled";
}

/// Every type the shop's services exchange.
pub(crate) fn catalog() -> Catalog {
    Catalog::new()
        .with::<OrderPlaced>()
        .with::<StockReserved>()
        .with::<OutOfStock>()
        .with::<OrderSettled>()
}

/// The services whose AsyncAPI documents the shop writes.
pub(crate) const SERVICES: [&str; 2] = ["orders", "inventory"];

/// The AsyncAPI document of `service` ("orders" or "inventory") on `bus`:
/// what it publishes, and what its consumer (built as the service builds
/// it) handles.
pub(crate) fn asyncapi(service: &str, bus: &Bus) -> events::Result<AsyncApiDocument> {
    let document = AsyncApi::new(service, env!("CARGO_PKG_VERSION"))
        .bus(bus)
        .catalog(&catalog())
        .server("local", "nats://127.0.0.1:4222");
    let document = match service {
        "orders" => document
            .description("Places orders and settles them once inventory has answered.")
            .publishes::<OrderPlaced>()
            .publishes::<OrderSettled>()
            .consumer(&orders::consumer(bus)?),
        "inventory" => document
            .description("Reserves stock for placed orders, or reports it out of stock.")
            .publishes::<StockReserved>()
            .publishes::<OutOfStock>()
            .consumer(&inventory_consumer(bus)?),
        other => {
            return Err(events::Error::new(
                events::ErrorKind::InvalidInput,
                format!("no service {other:?}: the shop has {SERVICES:?}"),
            ))
        }
    };
    document.build()
}

fn inventory_consumer(bus: &Bus) -> events::Result<Consumer<inventory::Stock>> {
    inventory::consumer(bus, inventory::Stock::default())
}

#[cfg(test)]
mod tests;
