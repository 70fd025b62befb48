//! The orders service: settles an order once inventory has answered.

use events::consumer::{Consumer, Context, HandlerError};
use events::{Bus, Event};

use crate::contracts::{OrderSettled, OutOfStock, StockReserved};

async fn on_stock_reserved(
    event: Event<StockReserved>,
    ctx: Context<()>,
) -> Result<(), HandlerError> {
    let settled = OrderSettled {
        order_id: event.payload.order_id.clone(),
        confirmed: true,
    };
    ctx.bus()
        .publish(&ctx.reaction(settled).with_subject(event.payload.order_id))
        .await?;
    Ok(())
}

async fn on_out_of_stock(event: Event<OutOfStock>, ctx: Context<()>) -> Result<(), HandlerError> {
    let settled = OrderSettled {
        order_id: event.payload.order_id.clone(),
        confirmed: false,
    };
    ctx.bus()
        .publish(&ctx.reaction(settled).with_subject(event.payload.order_id))
        .await?;
    Ok(())
}

/// The orders consumer on `bus`: one consumer, two event types.
pub(crate) fn consumer(bus: &Bus) -> events::Result<Consumer<()>> {
    Ok(Consumer::new(bus, "orders")?
        .handle(on_stock_reserved)
        .handle(on_out_of_stock))
}
