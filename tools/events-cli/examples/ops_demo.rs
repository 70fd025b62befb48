//! A small service on JetStream for trying the `events` command on: a
//! billing consumer that rejects orders of nothing, so dead letters pile up.
//!
//! It provisions the stream `EVENTS` (`events.>` and `deadletter.>`),
//! publishes three orders (one of nothing), and bills orders until Ctrl-C.
//!
//! Run with `NATS_URL=nats://127.0.0.1:4222 cargo run -p events-cli --example ops_demo`
//! against a server started with `nats-server -js`.

use std::time::Duration;

use events::backend::jetstream::{JetStreamConfig, JetStreamTransport, StreamConfig};
use events::backend::nats::NatsConfig;
use events::consumer::{shutdown_signal, Consumer, ConsumerSettings, Context, HandlerError};
use events::{Bus, Event, EventPayload};
use serde::{Deserialize, Serialize};

/// An order was placed.
#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    total_cents: u64,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "orders.order_placed";
}

async fn bill(event: Event<OrderPlaced>, _: Context<()>) -> Result<(), HandlerError> {
    if event.payload.total_cents == 0 {
        return Err(HandlerError::reject("an order of nothing cannot be billed"));
    }
    println!(
        "billing    billed {} ({} cents)",
        event.payload.order_id, event.payload.total_cents
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = StreamConfig::new("EVENTS", ["events.>", "deadletter.>"])
        .max_age(Duration::from_secs(24 * 3600));
    let transport =
        JetStreamTransport::connect(JetStreamConfig::new(NatsConfig::from_env()?, stream)).await?;
    let bus = Bus::builder(transport).source("shop").build()?;
    // EVENTS_CONSUMER_* tune the consumer without a rebuild.
    let billing = Consumer::new(&bus, "billing")?
        .handle(bill)
        .settings(&ConsumerSettings::from_env()?)
        .start()
        .await?;
    for (order_id, total_cents) in [("o-1", 1250), ("o-2", 0), ("o-3", 990)] {
        let order = OrderPlaced {
            order_id: order_id.into(),
            total_cents,
        };
        bus.publish(&bus.event(order).with_subject(order_id))
            .await?;
    }
    println!("billing    running; Ctrl-C to stop");
    shutdown_signal().await;
    println!("billing    {:?}", billing.shutdown().await?);
    bus.close().await?;
    Ok(())
}
