//! With `DATABASE_URL` (feature `postgres`): orders are written to
//! PostgreSQL together with their `OrderPlaced` in one transaction (the
//! outbox), a relay publishes what committed, and inventory applies each
//! `OrderPlaced` through the inbox: its stock update, the "handled" mark and
//! its reaction (staged in the outbox too) commit together, so a
//! redelivered event changes nothing twice and no reaction is lost.

use events::consumer::{Consumer, Context, HandlerError, RetryPolicy};
use events::outbox::{Inbox, Outbox, RunningRelay, Tx};
use events::{Bus, Event};
use sqlx::PgPool;

use crate::contracts::{OrderPlaced, OutOfStock, StockReserved};

/// The schema the example's tables live in.
const SCHEMA: &str = "shop";

pub(crate) struct Durable {
    pool: PgPool,
    outbox: Outbox,
}

impl Durable {
    /// Connects, creates the outbox tables and the example's own (stock
    /// starts at `stock` for `sku`, orders start empty).
    pub(crate) async fn connect(
        url: &str,
        bus: &Bus,
        sku: &str,
        stock: i32,
    ) -> Result<Durable, Box<dyn std::error::Error>> {
        let pool = PgPool::connect(url).await?;
        let outbox = Outbox::new(pool.clone(), bus).schema(SCHEMA)?;
        outbox.migrate().await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS shop.orders (id text PRIMARY KEY, sku text NOT NULL, quantity int NOT NULL);
             CREATE TABLE IF NOT EXISTS shop.stock (sku text PRIMARY KEY, available int NOT NULL);
             TRUNCATE shop.orders, shop.stock, shop.events_inbox;",
        )
        .execute(&pool)
        .await?;
        sqlx::query("INSERT INTO shop.stock (sku, available) VALUES ($1, $2)")
            .bind(sku)
            .bind(stock)
            .execute(&pool)
            .await?;
        Ok(Durable { pool, outbox })
    }

    /// The relay publishing what the transactions staged.
    pub(crate) fn relay(&self) -> RunningRelay {
        self.outbox.relay().start()
    }

    /// Writes the order and stages its `OrderPlaced`, in one transaction.
    pub(crate) async fn place(&self, event: &Event<OrderPlaced>) -> events::Result<()> {
        let order = &event.payload;
        let mut tx = self.pool.begin().await.map_err(database)?;
        sqlx::query("INSERT INTO shop.orders (id, sku, quantity) VALUES ($1, $2, $3)")
            .bind(&order.order_id)
            .bind(&order.sku)
            .bind(i32::try_from(order.quantity).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(database)?;
        self.outbox.stage(&mut tx, event).await?;
        tx.commit().await.map_err(database)
    }

    /// The inventory consumer, applying orders through the inbox.
    pub(crate) fn inventory(&self, bus: &Bus) -> events::Result<Consumer<Outbox>> {
        let inbox = Inbox::new(self.pool.clone()).schema(SCHEMA)?;
        Ok(Consumer::new(bus, "inventory")?
            .state(self.outbox.clone())
            .handle(inbox.handler(on_order_placed))
            .retry(RetryPolicy::exponential().max_attempts(5))
            .ordered_by_key(true)
            .concurrency(8))
    }
}

async fn on_order_placed(
    event: Event<OrderPlaced>,
    ctx: Context<Outbox>,
    mut tx: Tx,
) -> Result<(), HandlerError> {
    let order = &event.payload;
    let quantity = i32::try_from(order.quantity).unwrap_or(i32::MAX);
    // The stock row is locked until the inbox transaction commits.
    let available: i32 =
        sqlx::query_scalar("SELECT available FROM shop.stock WHERE sku = $1 FOR UPDATE")
            .bind(&order.sku)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(0);
    let key = order.order_id.clone();
    if available >= quantity {
        sqlx::query("UPDATE shop.stock SET available = available - $1 WHERE sku = $2")
            .bind(quantity)
            .bind(&order.sku)
            .execute(&mut *tx)
            .await?;
        let reserved = StockReserved {
            order_id: order.order_id.clone(),
            remaining: u32::try_from(available - quantity).unwrap_or(0),
        };
        // Staged in the same transaction: published only if this commits.
        ctx.state()
            .stage(&mut tx, &ctx.reaction(reserved).with_subject(key))
            .await?;
    } else {
        let out = OutOfStock {
            order_id: order.order_id.clone(),
            available: u32::try_from(available).unwrap_or(0),
        };
        ctx.state()
            .stage(&mut tx, &ctx.reaction(out).with_subject(key))
            .await?;
    }
    Ok(())
}

fn database(e: sqlx::Error) -> events::Error {
    events::Error::new(events::ErrorKind::Unavailable, "shop database").with_source(e)
}
