//! The relay: publishes committed outbox rows through a transport.
//!
//! # Turns
//! Any number of relays may run on one outbox; they take turns. A turn (a
//! "round" in [`RelaySummary`]) starts by taking the outbox's relay lock
//! (`pg_try_advisory_lock`, the session's, on a connection the turn keeps)
//! and ends by releasing it, when the outbox is empty, after [`TURN`]
//! (1 s) of rows, or at a publish not confirmed. While it holds the lock
//! no other relay touches the table, so claims take no row locks: a claim
//! is a plain `SELECT ... ORDER BY id LIMIT n` of the oldest rows, and the
//! next turn, whoever takes it, sees every delete of this one. A relay
//! whose connection dies mid-turn loses the lock with it (the connection
//! is closed, never handed back to the pool holding it); what it had
//! published is published again with the same `Nats-Msg-Id`, which
//! JetStream drops within its duplicate window.
//!
//! # Pipeline
//! Within a turn a publisher task publishes the claimed batches one after
//! the other while the turn's connection runs, per batch, one statement
//! that settles what was published since the last one (deletes the
//! confirmed rows, moves the refused ones to the failed table; committed
//! at once, without waiting for its flush: a lost settle only means a
//! republish, which the dedup id absorbs) and claims the next batch,
//! leaving out the rows still in flight. Claims run up to two batches
//! ahead, so the publisher seldom waits on the database: the relay runs at
//! nearly the speed of pipelined publishing (BENCHMARKS.md).
//!
//! # Order
//! A batch publishes a key's rows in waves, one row per key per wave, each
//! wave pipelined and its acks awaited before the next, and a batch only
//! once the previous one's acks are in: a key's next event goes out only
//! once its previous one is stored, so neither a retry nor a reconnect that
//! loses an earlier publish while a later one gets through can reorder a
//! key. A publish not confirmed stops its key and ends the turn; the next
//! turn starts again from the oldest row. Per key, row order is commit
//! order (the staging lock, [`Outbox::stage`]), and a key's row never
//! becomes visible before an older one of its key (the older one had
//! committed before the newer one drew its id), so a claim that leaves out
//! only rows in flight never skips a key's older row: a key's events are
//! published in commit order.
//!
//! Claims by several relays at once (each skipping the other's locked
//! rows, in an earlier design) let a few events overtake an earlier one of
//! their key in tests, hence the turns: a second relay adds availability,
//! not throughput.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row as _};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::{db_error, Outbox};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{Headers, Message, Subject, Transport};

/// The most rows a relay claims at once ([`Relay::batch_size`] is capped to
/// it): a turn holds up to three batches' messages in memory until they
/// are settled.
pub const MAX_BATCH: usize = 65_536;

/// How long a relay's turn lasts at most while rows keep coming: how long
/// other relays wait for a turn.
const TURN: Duration = Duration::from_secs(1);

/// The most rows a turn's first claim takes (see `Relay::turn`).
const FIRST_CLAIM: usize = 64;

/// Builds and starts a relay ([`Outbox::relay`]).
///
/// ```no_run
/// # async fn example(outbox: events::outbox::Outbox) -> Result<(), events::Error> {
/// use std::time::Duration;
///
/// let relay = outbox
///     .relay()
///     .batch_size(512)
///     .poll_interval(Duration::from_secs(1))          // when no NOTIFY comes
///     .keep_published(Duration::from_secs(24 * 3600)) // default: delete once published
///     .start();
/// // ...
/// let summary = relay.shutdown().await?;
/// println!("{summary:?}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Relay {
    outbox: Outbox,
    transport: Arc<dyn Transport>,
    batch_size: usize,
    poll_interval: Duration,
    listen: bool,
    keep_published: Option<Duration>,
    housekeeping_interval: Duration,
    max_backoff: Duration,
    shutdown_timeout: Duration,
}

impl Relay {
    pub(crate) fn new(outbox: Outbox) -> Self {
        Relay {
            transport: outbox.bus().transport().clone(),
            outbox,
            batch_size: 256,
            poll_interval: Duration::from_secs(1),
            listen: true,
            keep_published: None,
            housekeeping_interval: Duration::from_secs(10),
            max_backoff: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// Publish through `transport` instead of the outbox's bus's transport.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = transport;
        self
    }

    /// How many rows a claim takes and a batch publishes (default 256, at
    /// least 1, at most [`MAX_BATCH`]).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.clamp(1, MAX_BATCH);
        self
    }

    /// How long an idle relay waits for a notification before it looks
    /// anyway (default 1 s): the latency when NOTIFY is off or lost (a
    /// notification sent while the relay's listening connection was down).
    /// At least 1 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Whether to `LISTEN` for the staging transactions' notifications
    /// (default `true`); without, the relay polls only.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Keep published rows in `events_outbox_published` for `retention`
    /// (purged every [`housekeeping_interval`](Self::housekeeping_interval)),
    /// instead of deleting them once published (the default). For audits
    /// and replays; costs a copy per event.
    pub fn keep_published(mut self, retention: Duration) -> Self {
        self.keep_published = Some(retention);
        self
    }

    /// How often the relay reports its backlog (the `metrics` gauges) and
    /// purges published rows past their retention (default 10 s, at least
    /// 10 ms).
    pub fn housekeeping_interval(mut self, interval: Duration) -> Self {
        self.housekeeping_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The longest pause between turns after a failure (default 2 s): the
    /// database or the transport unreachable, or a publish not confirmed.
    /// Pauses start at 50 ms and double up to it.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff.max(Duration::from_millis(1));
        self
    }

    /// How long [`RunningRelay::shutdown`] lets the turn in progress
    /// finish (it claims nothing more once the relay is stopping; default
    /// 10 s) before it drops it: its rows not yet settled stay in the
    /// queue, and what it had published of them goes again (with the same
    /// dedup id) on the next claim.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Starts the relay in a task of its own.
    pub fn start(self) -> RunningRelay {
        let (stop_tx, stop_rx) = watch::channel(false);
        let shutdown_timeout = self.shutdown_timeout;
        let handle = tokio::spawn(self.run_loop(stop_rx));
        RunningRelay {
            stop: stop_tx,
            handle: Some(handle),
            shutdown_timeout,
        }
    }

    /// Runs until `signal` resolves, then shuts down as
    /// [`RunningRelay::shutdown`] does.
    pub async fn run(self, signal: impl std::future::Future<Output = ()>) -> Result<RelaySummary> {
        let mut running = self.start();
        let handle = running.handle.as_mut().expect("just started");
        tokio::select! {
            () = signal => running.shutdown().await,
            ended = handle => {
                running.handle = None;
                ended.map_err(join_error)?
            }
        }
    }

    async fn run_loop(self, mut stop: watch::Receiver<bool>) -> Result<RelaySummary> {
        let wake = Arc::new(Notify::new());
        let _listener = self.listen.then(|| {
            AbortOnDrop(tokio::spawn(listen(
                self.outbox.clone(),
                wake.clone(),
                self.max_backoff,
            )))
        });
        // The first report before the first turn (a relay starting on a
        // backlog shows it at once), the later ones in a task of their own:
        // counting a large backlog takes a while, and the turns go on
        // meanwhile.
        self.housekeeping().await;
        let _housekeeper = AbortOnDrop(tokio::spawn({
            let relay = self.clone();
            async move {
                loop {
                    tokio::time::sleep(relay.housekeeping_interval).await;
                    relay.housekeeping().await;
                }
            }
        }));
        let mut summary = RelaySummary::default();
        let mut backoff = Backoff::new(self.max_backoff);
        let mut last_warning: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                return Ok(summary);
            }
            // What to wait for before the next round: `None` goes at once;
            // `Some((delay, wakeable))` sleeps, cut short by a notification
            // if `wakeable`.
            let pause = match self.round(&stop).await {
                Ok(round) => {
                    summary.turns += 1;
                    summary.published += round.published;
                    summary.failed += round.failed;
                    if let Some(error) = round.closed {
                        return Err(error);
                    }
                    if let Some(error) = round.error {
                        warn_limited(&mut last_warning, "outbox round failed; retrying", &error);
                        Some((backoff.next(), false))
                    } else if let Some(error) = round.unconfirmed {
                        warn_limited(&mut last_warning, "publish not confirmed; retrying", &error);
                        Some((backoff.next(), false))
                    } else if round.more {
                        backoff.reset();
                        None
                    } else if round.busy {
                        // Another relay's turn: look again soon.
                        Some((self.poll_interval.min(Duration::from_millis(20)), true))
                    } else {
                        backoff.reset();
                        Some((self.poll_interval, true))
                    }
                }
                Err(error) => {
                    warn_limited(&mut last_warning, "outbox round failed; retrying", &error);
                    Some((backoff.next(), false))
                }
            };
            let Some((delay, wakeable)) = pause else {
                continue;
            };
            let woken = async {
                if wakeable {
                    wake.notified().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = stop.changed() => return Ok(summary),
                () = woken => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One turn: while holding the relay lock, claim, publish and settle
    /// batches, pipelined (see the module docs), until the outbox is empty,
    /// a publish is not confirmed, [`TURN`] has passed or the relay is
    /// stopping.
    async fn round(&self, stop: &watch::Receiver<bool>) -> Result<Round> {
        let conn = self
            .outbox
            .pool()
            .acquire()
            .await
            .map_err(|e| db_error("claim", e))?;
        let mut conn = TurnConnection::new(conn);
        // One turn at a time across the relays of this outbox: the next
        // relay's claim sees this turn's deletes, and within a turn no
        // other relay touches the table, so claims need no row locks. The
        // lock is the session's (a turn's batches commit one by one), so
        // the connection goes back to the pool only once it is released
        // (see `TurnConnection`).
        //
        // Losing a settle's commit in a crash only means publishing its
        // rows again, which the dedup id absorbs: the turn's statements do
        // not wait for their flush (`synchronous_commit` is reset at the
        // end of the turn, set with the lock to save a round trip).
        let (class, lock) = self.outbox.relay_lock();
        let turn: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock($1, $2)
             FROM (SELECT set_config('synchronous_commit', 'off', false)) AS s",
        )
        .bind(class)
        .bind(lock)
        .fetch_one(conn.get())
        .await
        .map_err(|e| db_error("claim", e))?;
        if !turn {
            sqlx::raw_sql("RESET synchronous_commit")
                .execute(conn.get())
                .await
                .map_err(|e| db_error("claim", e))?;
            conn.release();
            return Ok(Round {
                busy: true,
                ..Round::default()
            });
        }
        let mut round = Round::default();
        let turn = self.turn(conn.get(), stop, &mut round).await;
        #[cfg(feature = "metrics")]
        {
            let schema = self.outbox.get_schema().to_owned();
            metrics::counter!("events_outbox_published_total", "schema" => schema.clone())
                .increment(round.published);
            metrics::counter!("events_outbox_failed_total", "schema" => schema)
                .increment(round.failed);
        }
        let ended = match turn {
            Ok(()) => sqlx::raw_sql(AssertSqlSafe(format!(
                "RESET synchronous_commit; SELECT pg_advisory_unlock({class}, {lock})"
            )))
            .execute(conn.get())
            .await
            .map_err(|e| db_error("settle", e)),
            Err(e) => Err(e),
        };
        match ended {
            Ok(_) => conn.release(),
            // The connection is in an unknown state: closed, not released,
            // which releases the lock too.
            Err(error) => round.error = Some(error),
        }
        Ok(round)
    }

    /// The batches of a turn, on the connection holding the relay lock;
    /// what they did goes into `round` as each batch settles.
    async fn turn(
        &self,
        conn: &mut PgConnection,
        stop: &watch::Receiver<bool>,
        round: &mut Round,
    ) -> Result<()> {
        let started = Instant::now();
        // Claimed batches go to a publisher task through `ready` (one
        // waits there while another publishes: claims run up to two
        // batches ahead); their outcomes come back through `done`, in batch
        // order, and settle with the next claim. The task stops after a
        // batch with a publish not confirmed (its keys must not go on),
        // and is aborted if the turn ends early.
        let (ready, mut batches) = mpsc::channel::<Batch>(1);
        let (outcomes, mut done) = mpsc::unbounded_channel::<Settled>();
        let transport = self.transport.clone();
        let mut publisher = AbortOnDrop(tokio::spawn(async move {
            while let Some(batch) = batches.recv().await {
                let mut outcome = publish(&*transport, batch.waves).await;
                outcome.failed.extend(batch.failed);
                let stalled = outcome.unconfirmed.is_some() || outcome.closed.is_some();
                if outcomes.send(outcome).is_err() || stalled {
                    break;
                }
            }
        }));
        // The ids of the batches claimed and not yet settled, oldest first:
        // what a claim leaves out.
        let mut in_flight: VecDeque<Vec<i64>> = VecDeque::new();
        let mut settle = Settled::default();
        // The turn's first claim is small, so publishing starts while the
        // next, full ones run (nothing is claimed ahead of the first).
        let mut limit = self.batch_size.min(FIRST_CLAIM);
        loop {
            while let Ok(outcome) = done.try_recv() {
                in_flight.pop_front();
                settle.merge(outcome);
            }
            let exclude: Vec<i64> = in_flight.iter().flatten().copied().collect();
            let batch = self
                .claim(
                    &mut *conn,
                    &exclude,
                    std::mem::take(&mut settle),
                    limit,
                    round,
                )
                .await?;
            if batch.ids.is_empty() {
                break;
            }
            let full = batch.ids.len() == limit;
            limit = self.batch_size;
            in_flight.push_back(batch.ids.clone());
            if ready.send(batch).await.is_err() {
                // The publisher stopped: a publish was not confirmed.
                break;
            }
            if !full {
                break;
            }
            if started.elapsed() >= TURN || *stop.borrow() {
                round.more = true;
                break;
            }
        }
        // No more claims: the publisher ends once the batches sent are
        // published; then what they did settles.
        drop(ready);
        while let Some(outcome) = done.recv().await {
            settle.merge(outcome);
        }
        // A panic in the transport goes on as the relay's, as it would
        // without the task.
        if let Err(e) = (&mut publisher.0).await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        if !settle.is_empty() {
            self.claim(&mut *conn, &[], settle, 0, round).await?;
        }
        Ok(())
    }

    /// Settles `done` (deletes, or moves to the published table, the
    /// confirmed rows; moves the refused ones to the failed table), counting
    /// it in `round`, and claims up to `limit` of the oldest rows but
    /// `in_flight` (the batches claimed and not settled), checked and sorted into
    /// waves: the n-th valid row of each key goes in wave n; rows without a
    /// key are not ordered and all go in the first. One statement.
    async fn claim(
        &self,
        conn: &mut PgConnection,
        in_flight: &[i64],
        done: Settled,
        limit: usize,
        round: &mut Round,
    ) -> Result<Batch> {
        let statements = self.outbox.statements();
        let statement = if self.keep_published.is_some() {
            statements.claim_keep.clone()
        } else {
            statements.claim_delete.clone()
        };
        let (failed_ids, reasons): (Vec<i64>, Vec<&str>) = done
            .failed
            .iter()
            .map(|(id, reason)| (*id, reason.as_str()))
            .unzip();
        let rows = sqlx::query(statement)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(in_flight)
            .bind(&done.published)
            .bind(&failed_ids)
            .bind(&reasons)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| db_error("claim", e))?;
        round.published += done.published.len() as u64;
        round.failed += done.failed.len() as u64;
        round.unconfirmed = round.unconfirmed.take().or(done.unconfirmed);
        round.closed = round.closed.take().or(done.closed);

        let mut batch = Batch {
            ids: Vec::with_capacity(rows.len()),
            waves: Vec::new(),
            failed: Vec::new(),
        };
        let mut per_key: HashMap<i32, usize> = HashMap::new();
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(|e| db_error("claim", e))?;
            let lock_key: Option<i32> = row.try_get(1).map_err(|e| db_error("claim", e))?;
            batch.ids.push(id);
            let message = match to_message(row) {
                Ok(message) => message,
                Err(reason) => {
                    tracing::error!(row = id, %reason, "outbox row cannot be published; kept as failed");
                    batch.failed.push((id, reason));
                    continue;
                }
            };
            let wave = match lock_key {
                Some(key) => {
                    let n = per_key.entry(key).or_insert(0);
                    *n += 1;
                    *n - 1
                }
                None => 0,
            };
            if batch.waves.len() <= wave {
                batch.waves.resize_with(wave + 1, Vec::new);
            }
            batch.waves[wave].push(Pending {
                id,
                lock_key,
                message,
            });
        }
        Ok(batch)
    }

    /// Reports the backlog and purges published rows past retention;
    /// failures are logged, never fatal.
    async fn housekeeping(&self) {
        match self.outbox.status().await {
            Ok(_status) => {
                #[cfg(feature = "metrics")]
                {
                    let schema = self.outbox.get_schema().to_owned();
                    metrics::gauge!("events_outbox_pending", "schema" => schema.clone())
                        .set(_status.pending as f64);
                    metrics::gauge!("events_outbox_oldest_pending_seconds", "schema" => schema.clone())
                        .set(_status.oldest_pending_age.map_or(0.0, |a| a.as_secs_f64()));
                    metrics::gauge!("events_outbox_failed", "schema" => schema)
                        .set(_status.failed as f64);
                }
            }
            Err(e) => tracing::debug!(error = %e, "outbox status unavailable"),
        }
        if let Some(retention) = self.keep_published {
            const SLICE: i64 = 10_000;
            let interval = sqlx::postgres::types::PgInterval::try_from(retention).unwrap_or(
                sqlx::postgres::types::PgInterval {
                    months: 0,
                    days: i32::MAX,
                    microseconds: 0,
                },
            );
            loop {
                match sqlx::query(self.outbox.statements().purge_published.clone())
                    .bind(interval)
                    .bind(SLICE)
                    .execute(self.outbox.pool())
                    .await
                {
                    Ok(done) if done.rows_affected() == SLICE as u64 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "purging published outbox rows failed");
                        break;
                    }
                }
            }
        }
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("outbox", &self.outbox)
            .field("transport", &self.transport.name())
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("listen", &self.listen)
            .field("keep_published", &self.keep_published)
            .finish_non_exhaustive()
    }
}

struct Pending {
    id: i64,
    lock_key: Option<i32>,
    message: Message,
}

/// A claimed batch, checked.
struct Batch {
    /// Every row claimed, valid or not: what the next claim leaves out.
    ids: Vec<i64>,
    waves: Vec<Vec<Pending>>,
    /// Rows that are not what `stage` writes, with the reason.
    failed: Vec<(i64, String)>,
}

/// What became of batches' rows, to settle.
#[derive(Debug, Default)]
struct Settled {
    published: Vec<i64>,
    failed: Vec<(i64, String)>,
    /// A publish that may succeed later (the broker unreachable, no ack).
    unconfirmed: Option<Error>,
    /// The transport is closed.
    closed: Option<Error>,
}

impl Settled {
    fn merge(&mut self, other: Settled) {
        self.published.extend(other.published);
        self.failed.extend(other.failed);
        self.unconfirmed = self.unconfirmed.take().or(other.unconfirmed);
        self.closed = self.closed.take().or(other.closed);
    }

    fn is_empty(&self) -> bool {
        self.published.is_empty()
            && self.failed.is_empty()
            && self.unconfirmed.is_none()
            && self.closed.is_none()
    }
}

/// What one turn did.
#[derive(Debug, Default)]
struct Round {
    /// Another relay was in its turn.
    busy: bool,
    /// The turn ended with rows left to claim (its time was up, or the
    /// relay is stopping).
    more: bool,
    published: u64,
    failed: u64,
    /// A publish that may succeed later (the broker unreachable, no ack).
    unconfirmed: Option<Error>,
    /// The transport is closed: the relay stops with this.
    closed: Option<Error>,
    /// The database failed mid-turn (what settled before still counts).
    error: Option<Error>,
}

/// A row back into the message it was staged as, checked: a row written by
/// hand, or damaged, becomes a failed row with the reason instead of
/// something published that no consumer can read.
fn to_message(row: &sqlx::postgres::PgRow) -> std::result::Result<Message, String> {
    let subject: String = row
        .try_get(2)
        .map_err(|e| format!("unreadable subject: {e}"))?;
    let headers: Vec<String> = row
        .try_get(3)
        .map_err(|e| format!("unreadable headers: {e}"))?;
    let body: Vec<u8> = row
        .try_get(4)
        .map_err(|e| format!("unreadable body: {e}"))?;
    let event_id: String = row
        .try_get(5)
        .map_err(|e| format!("unreadable event id: {e}"))?;
    let subject = Subject::parse(&subject).map_err(|e| format!("corrupt subject: {e}"))?;
    if !headers.len().is_multiple_of(2) {
        return Err(format!(
            "corrupt headers: {} values, not name/value pairs",
            headers.len()
        ));
    }
    let mut message = Message::new(subject, Bytes::from(body));
    let mut pairs = headers.into_iter();
    message.headers = Headers::with_capacity(pairs.len() / 2);
    while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
        message
            .headers
            .append(name, value)
            .map_err(|e| format!("corrupt headers: {e}"))?;
    }
    let event = crate::wire::decode(&message).map_err(|e| format!("corrupt event: {e}"))?;
    if event.metadata.id() != event_id {
        return Err(format!(
            "corrupt row: the event's id {:?} is not the row's {event_id:?}",
            event.metadata.id()
        ));
    }
    message.dedup_id = Some(event_id);
    Ok(message)
}

/// Publishes a batch's waves, each pipelined and its acks awaited
/// before the next: a key's next event goes out only once its previous
/// one is stored.
async fn publish(transport: &dyn Transport, waves: Vec<Vec<Pending>>) -> Settled {
    let mut outcome = Settled::default();
    // Keys whose event did not go: their later ones wait.
    let mut stalled: HashSet<i32> = HashSet::new();
    for wave in waves {
        let (ids, messages): (Vec<(i64, Option<i32>)>, Vec<Message>) = wave
            .into_iter()
            .filter(|p| p.lock_key.is_none_or(|k| !stalled.contains(&k)))
            .map(|p| ((p.id, p.lock_key), p.message))
            .unzip();
        if messages.is_empty() {
            continue;
        }
        let results = transport.publish_batch(messages).await;
        for ((id, lock_key), result) in ids.into_iter().zip(results) {
            match result {
                Ok(()) => outcome.published.push(id),
                Err(e) if e.is_retryable() || e.kind() == ErrorKind::Closed => {
                    if let Some(key) = lock_key {
                        stalled.insert(key);
                    }
                    if e.kind() == ErrorKind::Closed {
                        outcome.closed.get_or_insert(e);
                    } else {
                        outcome.unconfirmed.get_or_insert(e);
                    }
                }
                Err(e) => {
                    tracing::error!(row = id, error = %e, "publish refused; outbox row kept as failed");
                    outcome.failed.push((id, refusal(&e)));
                }
            }
        }
    }
    outcome
}

/// The reason kept with a refused row: the error and its causes.
fn refusal(error: &Error) -> String {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

fn warn_limited(last: &mut Option<Instant>, what: &str, error: &Error) {
    if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
        tracing::warn!(error = %error, "{what}");
        *last = Some(Instant::now());
    } else {
        tracing::debug!(error = %error, "{what}");
    }
}

/// Listens for the staging transactions' notifications and wakes the
/// relay; wakes it too on every (re)connect, for what committed while it
/// was not listening.
async fn listen(outbox: Outbox, wake: Arc<Notify>, max_backoff: Duration) {
    let mut backoff = Backoff::new(max_backoff);
    loop {
        match PgListener::connect_with(outbox.pool()).await {
            Ok(mut listener) => {
                listener.eager_reconnect(false);
                match listener.listen(outbox.channel()).await {
                    Ok(()) => {
                        backoff.reset();
                        wake.notify_one();
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(_)) => wake.notify_one(),
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::debug!(error = %e, "outbox listener lost");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "outbox LISTEN failed"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "outbox listener cannot connect"),
        }
        wake.notify_one();
        tokio::time::sleep(backoff.next()).await;
    }
}

struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);

    fn new(max: Duration) -> Self {
        Backoff {
            next: Self::FIRST.min(max),
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }
}

/// The connection of a turn. It may hold the session's relay lock and
/// `synchronous_commit = off`: unless [`release`](Self::release)d after
/// both were undone, it is closed when dropped (an error, or the turn's
/// future dropped at a shutdown timeout), never returned to the pool
/// where another user would inherit them. Closing it releases the lock.
struct TurnConnection(Option<PoolConnection<Postgres>>);

impl TurnConnection {
    fn new(conn: PoolConnection<Postgres>) -> Self {
        TurnConnection(Some(conn))
    }

    fn get(&mut self) -> &mut PgConnection {
        self.0.as_mut().expect("present until released")
    }

    /// Back to the pool: the connection holds no lock and no setting of
    /// the turn.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for TurnConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A relay running in its own task ([`Relay::start`]). Dropping it stops
/// the relay after its current round, in the background.
#[derive(Debug)]
pub struct RunningRelay {
    stop: watch::Sender<bool>,
    handle: Option<JoinHandle<Result<RelaySummary>>>,
    shutdown_timeout: Duration,
}

impl RunningRelay {
    /// Stops the relay: the turn in progress finishes (within the
    /// shutdown timeout; past it, it is dropped and its rows not yet
    /// settled stay in the queue), then the counts. An error if the relay had stopped on its
    /// own because its transport was closed.
    pub async fn shutdown(mut self) -> Result<RelaySummary> {
        let _ = self.stop.send(true);
        let mut handle = self.handle.take().expect("present until shutdown");
        match tokio::time::timeout(self.shutdown_timeout, &mut handle).await {
            Ok(ended) => ended.map_err(join_error)?,
            Err(_) => {
                handle.abort();
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "the relay's turn did not finish within the shutdown timeout; its rows \
                     not yet settled stay in the queue",
                ))
            }
        }
    }

    /// Whether the relay has stopped on its own (its transport closed, or
    /// it panicked).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::new(ErrorKind::Backend, "the relay's task failed").with_source(e)
}

/// What a relay did ([`RunningRelay::shutdown`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelaySummary {
    /// Events published and confirmed.
    pub published: u64,
    /// Rows moved to the failed table.
    pub failed: u64,
    /// Turns tried (also those that found another relay in its turn).
    pub turns: u64,
}
