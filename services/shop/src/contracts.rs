//! The events the two services exchange. In a real system this module is a
//! small shared crate that both services depend on.

use events::EventPayload;
use serde::{Deserialize, Serialize};

/// Orders: a customer placed an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: String,
    pub(crate) sku: String,
    pub(crate) quantity: u32,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "orders.order_placed";
}

/// Inventory: stock was reserved for an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StockReserved {
    pub(crate) order_id: String,
    pub(crate) remaining: u32,
}

impl EventPayload for StockReserved {
    const TYPE: &'static str = "inventory.stock_reserved";
}

/// Inventory: not enough stock for an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutOfStock {
    pub(crate) order_id: String,
    pub(crate) available: u32,
}

impl EventPayload for OutOfStock {
    const TYPE: &'static str = "inventory.out_of_stock";
}

/// Orders: the order is confirmed (stock reserved) or cancelled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OrderSettled {
    pub(crate) order_id: String,
    pub(crate) confirmed: bool,
}

impl EventPayload for OrderSettled {
    const TYPE: &'static str = "orders.order_settled";
}
