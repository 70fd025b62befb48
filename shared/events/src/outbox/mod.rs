//! The transactional outbox and inbox on PostgreSQL (feature `postgres`).
//!
//! A service that writes its database and then publishes an event loses the
//! event if it stops between the two, or publishes one for a change that
//! rolled back. Here the event is written in the business transaction
//! instead ([`Outbox::stage`]), and a [`Relay`] publishes what committed;
//! on the consuming side, an [`Inbox`] commits a handler's own writes
//! together with the event's "handled" mark, so a redelivered event has no
//! second effect.
//!
//! ```text
//!  business transaction: your writes + Outbox::stage(event) ── COMMIT ──┐ (NOTIFY)
//!  Relay: claim committed rows ─► publish (Nats-Msg-Id = event id) ─► PubAck ─► delete (or keep)
//!  consumer: Inbox::handler ─► BEGIN ─► mark (consumer, event id) ─► your writes ─► COMMIT ─► ack
//! ```
//!
//! | | guarantee |
//! |---|---|
//! | a transaction that rolls back | its events are never published |
//! | a committed transaction | each of its events is published at least once; on JetStream stored once (the event id is `Nats-Msg-Id`) if the relay publishes it again within the stream's duplicate window |
//! | order | per key (the CloudEvents `subject`), events are published in the order their transactions committed, with any number of relays |
//! | a publish refused for good | the row moves to `events_outbox_failed` with the reason; the relay goes on |
//! | the inbox | a handler's writes and the "handled" mark commit together: each event has its effect once, however often it is delivered |
//!
//! # Setup
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Serialize, Deserialize)]
//! # struct OrderPlaced { order_id: String }
//! # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
//! # async fn example(bus: events::Bus) -> Result<(), Box<dyn std::error::Error>> {
//! use events::outbox::Outbox;
//!
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/shop").await?;
//! let outbox = Outbox::new(pool.clone(), &bus).schema("shop")?;
//! outbox.migrate().await?;                       // or apply `migrations("shop")` with your tool
//! let relay = outbox.relay().start();            // publishes through the bus's transport
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO shop.orders (id) VALUES ($1)").bind("o-1").execute(&mut *tx).await?;
//! outbox.stage(&mut tx, &bus.event(OrderPlaced { order_id: "o-1".into() }).with_subject("o-1")).await?;
//! tx.commit().await?;                            // now, and only now, the relay sees it
//!
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```

mod inbox;
mod relay;
mod schema;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row as _};
use tracing::Instrument as _;

pub use inbox::{Inbox, InboxHandler, Tx};
pub use relay::{Relay, RelaySummary, RunningRelay, MAX_BATCH};
pub use schema::{migrations, Migration};

use crate::bus::Bus;
use crate::envelope::{Event, EventPayload};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::Message;
use crate::wire::ContentMode;
use schema::Statements;

/// Where events wait between the business transaction that stages them and
/// the relay that publishes them: tables in one schema of a PostgreSQL
/// database, and the bus whose encoding they are staged in.
///
/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    bus: Bus,
    schema: String,
    notify: bool,
    statements: Statements,
    /// The class of the staging locks on keys (the first of the two
    /// `int4` advisory lock keys; see [`Outbox::stage`]).
    key_lock_class: i32,
    /// The advisory lock a relay holds for one turn (claims, publishes,
    /// settles): relays of one outbox take turns.
    relay_lock: i32,
    /// `LISTEN` / `NOTIFY` channel of this schema's outbox.
    channel: String,
}

impl Outbox {
    /// An outbox in the schema `public` of `pool`'s database, staging
    /// events as `bus` publishes them (its subject prefix, content mode and
    /// size limit). NOTIFY is on.
    pub fn new(pool: PgPool, bus: &Bus) -> Outbox {
        Outbox::build(pool, bus.clone(), "public".to_owned(), true)
    }

    fn build(pool: PgPool, bus: Bus, schema: String, notify: bool) -> Outbox {
        Outbox {
            inner: Arc::new(Inner {
                statements: Statements::new(&schema, notify),
                key_lock_class: fnv1a32(format!("events.outbox.key:{schema}").as_bytes()),
                relay_lock: fnv1a32(format!("events.outbox.relay:{schema}").as_bytes()),
                channel: format!("{schema}.events_outbox"),
                pool,
                bus,
                schema,
                notify,
            }),
        }
    }

    /// The schema holding the tables (default `public`): lowercase letters,
    /// digits and `_`, not starting with a digit, at most 63 bytes. Several
    /// outboxes can share a database in schemas of their own; their locks
    /// and notifications are apart.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for any other name (it is put into SQL
    /// as it is, so nothing else is taken).
    pub fn schema(self, schema: impl Into<String>) -> Result<Outbox> {
        let schema = schema.into();
        schema::validate_identifier(&schema)?;
        Ok(Outbox::build(
            self.inner.pool.clone(),
            self.inner.bus.clone(),
            schema,
            self.inner.notify,
        ))
    }

    /// Whether a staging transaction sends `NOTIFY` at commit (default
    /// `true`), so a relay publishes within milliseconds instead of at its
    /// next poll. PostgreSQL serializes the commits of notifying
    /// transactions (a lock on its notification queue); a service with
    /// many concurrent writers may turn it off and rely on the relay's
    /// polling ([`Relay::poll_interval`]).
    pub fn notify(self, notify: bool) -> Outbox {
        Outbox::build(
            self.inner.pool.clone(),
            self.inner.bus.clone(),
            self.inner.schema.clone(),
            notify,
        )
    }

    /// Creates the schema and tables, or brings them up to date: the
    /// versions it applied (none if all were there). Safe to run from every
    /// instance at start-up: an advisory lock makes them take turns.
    pub async fn migrate(&self) -> Result<Vec<i32>> {
        let lock = i64::from(fnv1a32(
            format!("events.outbox.migrate:{}", self.inner.schema).as_bytes(),
        ));
        schema::migrate(&self.inner.pool, &self.inner.schema, lock).await
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The bus events are encoded for.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// The schema holding the tables.
    pub fn get_schema(&self) -> &str {
        &self.inner.schema
    }

    /// Stages `event` in the caller's transaction: the message the bus
    /// would publish (subject, headers, body; the event id as dedup id,
    /// the CloudEvents `subject` as ordering key) becomes a row that the
    /// relay sees once, and only if, the transaction commits.
    ///
    /// Pass the transaction (`&mut tx` derefs to the connection). Staged on
    /// a connection outside a transaction, the row commits at once.
    ///
    /// **Order.** Per key, the relay publishes in row order; so that row
    /// order is commit order, staging takes a transaction-scoped advisory
    /// lock on the key, held until the transaction ends: two transactions
    /// staging events of one key run their remaining statements one after
    /// the other. Two transactions that each stage several keys can
    /// deadlock if they take them in opposite orders (PostgreSQL then
    /// aborts one after `deadlock_timeout`): stage a transaction's events
    /// in a consistent key order, or with [`stage_all`](Self::stage_all),
    /// which sorts them. Events without a subject are not ordered and take
    /// no lock.
    ///
    /// # Errors
    ///
    /// What [`Bus::encode`] refuses (invalid metadata, a payload that does
    /// not serialize, a message over the transport's size limit), before
    /// any I/O; the database's errors as [`ErrorKind::Unavailable`]
    /// (connection, pool) or [`ErrorKind::Backend`].
    pub async fn stage<T: EventPayload>(
        &self,
        conn: &mut PgConnection,
        event: &Event<T>,
    ) -> Result<()> {
        self.stage_with(conn, event, self.inner.bus.content_mode())
            .await
    }

    /// [`stage`](Self::stage) in the given content mode.
    pub async fn stage_with<T: EventPayload>(
        &self,
        conn: &mut PgConnection,
        event: &Event<T>,
        mode: ContentMode,
    ) -> Result<()> {
        let span = tracing::debug_span!(
            "events.outbox.stage",
            event.r#type = T::TYPE,
            event.id = event.metadata.id(),
            otel.kind = tracing::field::Empty,
        );
        #[cfg(feature = "opentelemetry")]
        let message =
            crate::otel::Outgoing::producer(&span).encode(&self.inner.bus, event, mode)?;
        #[cfg(not(feature = "opentelemetry"))]
        let message = self.inner.bus.encode(event, mode)?;
        self.insert(conn, message, event.metadata.id(), event.metadata.subject())
            .instrument(span)
            .await
    }

    /// Stages several events in the caller's transaction, in the order
    /// given, taking their keys' locks in sorted order first (see
    /// [`stage`](Self::stage)), so concurrent transactions staging the same
    /// keys cannot deadlock on them.
    pub async fn stage_all<T: EventPayload>(
        &self,
        conn: &mut PgConnection,
        events: &[Event<T>],
    ) -> Result<()> {
        let mut keys: Vec<i32> = events
            .iter()
            .filter_map(|e| e.metadata.subject().map(|k| fnv1a32(k.as_bytes())))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() > 1 {
            sqlx::query("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k")
                .bind(self.inner.key_lock_class)
                .bind(&keys)
                .execute(&mut *conn)
                .await
                .map_err(|e| db_error("stage", e))?;
        }
        for event in events {
            self.stage(&mut *conn, event).await?;
        }
        Ok(())
    }

    async fn insert(
        &self,
        conn: &mut PgConnection,
        message: Message,
        id: &str,
        key: Option<&str>,
    ) -> Result<()> {
        let mut headers = Vec::with_capacity(message.headers.len() * 2);
        for (name, value) in message.headers.iter() {
            headers.push(name);
            headers.push(value);
        }
        let query = sqlx::query(self.inner.statements.stage.clone())
            .bind(key.map(|k| fnv1a32(k.as_bytes())))
            .bind(key)
            .bind(message.subject.as_str())
            .bind(headers)
            .bind(&message.payload[..])
            .bind(id)
            .bind(self.inner.key_lock_class);
        let query = if self.inner.notify {
            query.bind(self.inner.channel.as_str())
        } else {
            query
        };
        query
            .execute(conn)
            .await
            .map_err(|e| db_error("stage", e))?;
        Ok(())
    }

    /// A relay for this outbox, publishing through the bus's transport
    /// (see [`Relay`] for its settings).
    pub fn relay(&self) -> Relay {
        Relay::new(self.clone())
    }

    /// An inbox in this outbox's schema and pool.
    pub fn inbox(&self) -> Inbox {
        Inbox::from_outbox(self)
    }

    /// The backlog: events waiting to be published and the age of the
    /// oldest, failed rows kept, published rows retained.
    pub async fn status(&self) -> Result<OutboxStatus> {
        let row = sqlx::query(self.inner.statements.status.clone())
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| db_error("status", e))?;
        let age = |seconds: Option<f64>| {
            seconds.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX))
        };
        let get = |i: usize| -> Result<i64> { row.try_get(i).map_err(|e| db_error("status", e)) };
        let get_age =
            |i: usize| -> Result<Option<f64>> { row.try_get(i).map_err(|e| db_error("status", e)) };
        Ok(OutboxStatus {
            pending: u64::try_from(get(0)?).unwrap_or(0),
            oldest_pending_age: age(get_age(1)?),
            failed: u64::try_from(get(2)?).unwrap_or(0),
            oldest_failed_age: age(get_age(3)?),
            published_retained: u64::try_from(get(4)?).unwrap_or(0),
        })
    }

    /// The failed rows, oldest first, at most `limit`.
    pub async fn failed(&self, limit: u32) -> Result<Vec<FailedEvent>> {
        let rows = sqlx::query(self.inner.statements.failed.clone())
            .bind(i64::from(limit))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| db_error("failed rows", e))?;
        rows.iter()
            .map(|row| {
                Ok(FailedEvent {
                    id: row.try_get(0)?,
                    key: row.try_get(1)?,
                    subject: row.try_get(2)?,
                    event_id: row.try_get(3)?,
                    created_at: row.try_get(4)?,
                    failed_at: row.try_get(5)?,
                    reason: row.try_get(6)?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| db_error("failed rows", e))
    }

    /// Puts a failed row back in the queue, after what is staged now (its
    /// key's later events went on without it), once its cause is fixed.
    /// `false` if there is no failed row `id`.
    pub async fn requeue(&self, id: i64) -> Result<bool> {
        let row = sqlx::query(self.inner.statements.requeue.clone())
            .bind(id)
            .bind(self.inner.channel.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| db_error("requeue", e))?;
        Ok(row.is_some())
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.inner.statements
    }

    /// The `(class, key)` of the advisory lock relays take turns on.
    pub(crate) fn relay_lock(&self) -> (i32, i32) {
        (self.inner.key_lock_class, self.inner.relay_lock)
    }

    pub(crate) fn channel(&self) -> &str {
        &self.inner.channel
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's options hold the password: not printed.
        f.debug_struct("Outbox")
            .field("schema", &self.inner.schema)
            .field("notify", &self.inner.notify)
            .field("bus", &self.inner.bus)
            .finish_non_exhaustive()
    }
}

/// What waits in an outbox ([`Outbox::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Committed events not yet published.
    pub pending: u64,
    /// How long the oldest of them has waited since its transaction
    /// started; `None` when none waits.
    pub oldest_pending_age: Option<Duration>,
    /// Rows the relay gave up on (kept in `events_outbox_failed`).
    pub failed: u64,
    /// How long ago the oldest of them failed.
    pub oldest_failed_age: Option<Duration>,
    /// Published rows kept for [`Relay::keep_published`].
    pub published_retained: u64,
}

/// A row the relay could not publish, and why ([`Outbox::failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedEvent {
    /// Its row id (for [`Outbox::requeue`]).
    pub id: i64,
    /// Its ordering key (the CloudEvents `subject`).
    pub key: Option<String>,
    /// The subject it was to be published on.
    pub subject: String,
    /// The event id (the dedup id).
    pub event_id: String,
    /// When its transaction staged it.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When the relay gave up.
    pub failed_at: chrono::DateTime<chrono::Utc>,
    /// Why: the transport's refusal, or what is wrong with the row.
    pub reason: String,
}

/// A database error as the crate's error: connection and pool trouble is
/// [`ErrorKind::Unavailable`] (retrying later may work), as are
/// serialization failures and deadlocks; anything else is
/// [`ErrorKind::Backend`]. The detail names the operation; the driver's
/// error is the source (it never holds the connection's password).
pub(crate) fn db_error(what: &'static str, e: sqlx::Error) -> Error {
    let kind = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                // serialization_failure, deadlock_detected, admin_shutdown,
                // crash_shutdown, cannot_connect_now
                Some("40001" | "40P01" | "57P01" | "57P02" | "57P03")
            ) =>
        {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Backend,
    };
    Error::new(kind, format!("postgres: {what} failed")).with_source(e)
}

/// FNV-1a, 32 bits, as the `int4` PostgreSQL advisory locks take: stable
/// across releases and processes (std's hasher is neither), so every
/// instance locks the same key the same way.
pub(crate) fn fnv1a32(bytes: &[u8]) -> i32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let hash = bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u32::from(b)).wrapping_mul(PRIME));
    i32::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_are_pinned() {
        // FNV-1a 32 of "" and "a", from the reference values: a change here
        // would let two releases lock one key differently.
        assert_eq!(fnv1a32(b"") as u32, 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a") as u32, 0xe40c_292c);
    }

    #[test]
    fn database_errors_map_to_kinds() {
        assert_eq!(
            db_error("x", sqlx::Error::PoolTimedOut).kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            db_error("x", sqlx::Error::RowNotFound).kind(),
            ErrorKind::Backend
        );
        let err = db_error("stage", sqlx::Error::PoolClosed);
        assert_eq!(
            err.to_string(),
            "broker unavailable: postgres: stage failed"
        );
    }
}
