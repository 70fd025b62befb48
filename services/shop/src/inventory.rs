//! The inventory service: reserves stock when an order is placed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use events::consumer::{Consumer, Context, HandlerError, MemoryIdempotencyStore, RetryPolicy};
use events::{Bus, Event};

use crate::contracts::{OrderPlaced, OutOfStock, StockReserved};

/// Stock per SKU, shared by the handlers.
pub(crate) type Stock = Arc<Mutex<HashMap<String, u32>>>;

async fn on_order_placed(
    event: Event<OrderPlaced>,
    ctx: Context<Stock>,
) -> Result<(), HandlerError> {
    let order = &event.payload;
    let outcome = {
        let mut stock = ctx
            .state()
            .lock()
            .map_err(|_| HandlerError::retry("stock lock poisoned"))?;
        let available = stock.get(&order.sku).copied().unwrap_or(0);
        if available >= order.quantity {
            let remaining = available - order.quantity;
            stock.insert(order.sku.clone(), remaining);
            Ok(remaining)
        } else {
            Err(available)
        }
    };
    // Reactions carry the order's correlation id and name it as their cause.
    match outcome {
        Ok(remaining) => {
            let reserved = StockReserved {
                order_id: order.order_id.clone(),
                remaining,
            };
            ctx.bus()
                .publish(&ctx.reaction(reserved).with_subject(order.order_id.clone()))
                .await?;
        }
        Err(available) => {
            let out = OutOfStock {
                order_id: order.order_id.clone(),
                available,
            };
            ctx.bus()
                .publish(&ctx.reaction(out).with_subject(order.order_id.clone()))
                .await?;
        }
    }
    Ok(())
}

/// The inventory consumer on `bus`, starting with `stock`.
pub(crate) fn consumer(bus: &Bus, stock: Stock) -> events::Result<Consumer<Stock>> {
    Ok(Consumer::new(bus, "inventory")?
        .state(stock)
        .handle(on_order_placed)
        .retry(RetryPolicy::exponential().max_attempts(5))
        .idempotency(MemoryIdempotencyStore::new(std::time::Duration::from_secs(
            300,
        )))
        // Orders of one id are handled in order, different ids in parallel.
        .ordered_by_key(true)
        .concurrency(8))
}
