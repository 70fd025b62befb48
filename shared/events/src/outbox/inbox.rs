//! The inbox: a handler's writes and the event's "handled" mark in one
//! transaction.

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::oneshot;

use super::schema::{self, Statements};
use super::{db_error, Outbox};
use crate::consumer::{Context, Handler, HandlerError};
use crate::envelope::{Event, EventPayload};
use crate::error::Result;

/// Exactly-once effects for handlers that write to PostgreSQL: the
/// handler's writes and the mark "consumer C handled event E" commit in one
/// transaction, so an event delivered again (a crash before the ack, a
/// redelivery, a republish with the same id) has no second effect, with no
/// other idempotency store.
///
/// Wrap a handler that takes a third argument, the transaction ([`Tx`]),
/// and register it as any other:
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)]
/// # struct OrderPlaced { order_id: String, qty: i32 }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// # async fn example(bus: events::Bus, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use events::consumer::{Consumer, Context, HandlerError};
/// use events::outbox::{Inbox, Tx};
/// use events::Event;
///
/// async fn reserve(event: Event<OrderPlaced>, _ctx: Context<()>, mut tx: Tx) -> Result<(), HandlerError> {
///     sqlx::query("UPDATE stock SET reserved = reserved + $1 WHERE order_id = $2")
///         .bind(event.payload.qty)
///         .bind(&event.payload.order_id)
///         .execute(&mut *tx)
///         .await?;
///     Ok(()) // the runtime commits the writes with the mark, then acks
/// }
///
/// let inbox = Inbox::new(pool).schema("inventory")?;
/// Consumer::new(&bus, "inventory")?
///     .handle(inbox.handler(reserve))
///     .run(events::consumer::shutdown_signal())
///     .await?;
/// # Ok(()) }
/// ```
///
/// For each delivery the wrapper begins a transaction and inserts the mark
/// first. If it is already there (committed by an earlier delivery) the
/// handler is not called and the delivery is acknowledged. If another
/// delivery of the same event is being handled right now, the insert waits
/// for that transaction: committed, this one is a duplicate; rolled back,
/// this one goes on. Then the handler runs with the transaction; `Ok`
/// commits it (a failed commit is a retryable error: nothing happened),
/// an error or a panic rolls it back, and the runtime retries or
/// dead-letters as usual. A process killed anywhere in between leaves
/// either both the writes and the mark, or neither.
///
/// Marks are kept until [`purge`](Inbox::purge) removes them: keep them
/// longer than an event can come back (the broker's redelivery limits, a
/// replay of dead letters).
#[derive(Clone)]
pub struct Inbox {
    inner: Arc<InboxInner>,
}

struct InboxInner {
    pool: PgPool,
    schema: String,
    statements: Statements,
}

impl Inbox {
    /// An inbox in the schema `public` of `pool`'s database.
    pub fn new(pool: PgPool) -> Inbox {
        Inbox::build(pool, "public".to_owned())
    }

    fn build(pool: PgPool, schema: String) -> Inbox {
        Inbox {
            inner: Arc::new(InboxInner {
                statements: Statements::new(&schema, false),
                pool,
                schema,
            }),
        }
    }

    pub(crate) fn from_outbox(outbox: &Outbox) -> Inbox {
        Inbox::build(outbox.pool().clone(), outbox.get_schema().to_owned())
    }

    /// The schema holding `events_inbox` (default `public`); the same rules
    /// as [`Outbox::schema`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a
    /// name that is not a plain identifier.
    pub fn schema(self, schema: impl Into<String>) -> Result<Inbox> {
        let schema = schema.into();
        schema::validate_identifier(&schema)?;
        Ok(Inbox::build(self.inner.pool.clone(), schema))
    }

    /// Creates or updates the tables, as [`Outbox::migrate`] does (they
    /// are the same migrations).
    pub async fn migrate(&self) -> Result<Vec<i32>> {
        let lock = i64::from(super::fnv1a32(
            format!("events.outbox.migrate:{}", self.inner.schema).as_bytes(),
        ));
        schema::migrate(&self.inner.pool, &self.inner.schema, lock).await
    }

    /// Wraps `handler` (an `async fn(Event<T>, Context<S>, Tx) -> Result<(), E>`)
    /// into a handler [`Consumer::handle`](crate::consumer::Consumer::handle)
    /// takes.
    pub fn handler<F>(&self, handler: F) -> InboxHandler<F> {
        InboxHandler {
            inbox: self.clone(),
            handler: Arc::new(handler),
        }
    }

    /// Removes the marks of events handled more than `older_than` ago: how
    /// many. An event delivered again after its mark is gone is handled
    /// again.
    pub async fn purge(&self, older_than: Duration) -> Result<u64> {
        let interval = sqlx::postgres::types::PgInterval::try_from(older_than).unwrap_or(
            sqlx::postgres::types::PgInterval {
                months: 0,
                days: i32::MAX,
                microseconds: 0,
            },
        );
        let done = sqlx::query(self.inner.statements.inbox_purge.clone())
            .bind(interval)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| db_error("inbox purge", e))?;
        Ok(done.rows_affected())
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

/// A handler wrapped by [`Inbox::handler`].
pub struct InboxHandler<F> {
    inbox: Inbox,
    handler: Arc<F>,
}

impl<F> fmt::Debug for InboxHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxHandler")
            .field("inbox", &self.inbox)
            .field("handler", &std::any::type_name::<F>())
            .finish()
    }
}

impl<T, S, F, Fut, E> Handler<T, S> for InboxHandler<F>
where
    T: EventPayload,
    S: Send + Sync + 'static,
    F: Fn(Event<T>, Context<S>, Tx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: Into<HandlerError>,
{
    fn call(
        &self,
        event: Event<T>,
        context: Context<S>,
    ) -> BoxFuture<'static, std::result::Result<(), HandlerError>> {
        let inbox = self.inbox.clone();
        let handler = self.handler.clone();
        Box::pin(async move {
            let inner = &inbox.inner;
            let mut tx = inner
                .pool
                .begin()
                .await
                .map_err(|e| HandlerError::retry(db_error("inbox begin", e)))?;
            let marked = sqlx::query(inner.statements.inbox_mark.clone())
                .bind(context.consumer())
                .bind(event.metadata.id())
                .execute(&mut *tx)
                .await
                .map_err(|e| HandlerError::retry(db_error("inbox mark", e)))?
                .rows_affected();
            if marked == 0 {
                tracing::debug!(
                    consumer = context.consumer(),
                    event.id = event.metadata.id(),
                    "event already handled (inbox mark present); not handled again"
                );
                let _ = tx.rollback().await;
                return Ok(());
            }
            let (back, mut returned) = oneshot::channel();
            let outcome = handler(
                event,
                context,
                Tx {
                    tx: Some(tx),
                    back: Some(back),
                },
            )
            .await
            .map_err(Into::<HandlerError>::into);
            // A handler's arguments are dropped when its future completes,
            // so the transaction is back by now unless the handler moved it
            // somewhere that outlives it.
            let tx = returned.try_recv().ok();
            match (outcome, tx) {
                (Ok(()), Some(tx)) => tx
                    .commit()
                    .await
                    .map_err(|e| HandlerError::retry(db_error("inbox commit", e))),
                (Ok(()), None) => Err(HandlerError::retry(
                    "the handler kept its inbox transaction past its end; nothing was committed",
                )),
                (Err(error), tx) => {
                    if let Some(tx) = tx {
                        let _ = tx.rollback().await;
                    }
                    Err(error)
                }
            }
        })
    }
}

/// The inbox transaction a handler writes through: it derefs to the
/// connection, so `query.execute(&mut *tx)` runs in it. The runtime
/// commits it (with the event's "handled" mark) when the handler returns
/// `Ok`, and rolls it back otherwise. Keep it in the handler: one moved
/// elsewhere and still alive when the handler returns makes the attempt
/// fail, since its writes cannot be committed with the mark.
pub struct Tx {
    tx: Option<Transaction<'static, Postgres>>,
    back: Option<oneshot::Sender<Transaction<'static, Postgres>>>,
}

impl Tx {
    fn conn(&self) -> &Transaction<'static, Postgres> {
        self.tx.as_ref().expect("present until dropped")
    }
}

impl Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn()
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.tx.as_mut().expect("present until dropped")
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // Back to the wrapper, which commits or rolls back; if it is gone
        // (the handling was dropped), the transaction drops here and
        // rolls back.
        if let (Some(tx), Some(back)) = (self.tx.take(), self.back.take()) {
            let _ = back.send(tx);
        }
    }
}

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}
