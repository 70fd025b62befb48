//! The transactional outbox against the real PostgreSQL (each test in a
//! schema of its own, dropped after) and private nats-servers: rollback,
//! bad rows, two relays, NATS down, PostgreSQL restarted. Run with
//! `--nocapture` to see the counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::backend::jetstream::{JetStreamConfig, JetStreamTransport, StreamConfig};
use events::consumer::{Consumer, Context, HandlerError, RetryPolicy};
use events::outbox::{Inbox, Outbox, RelaySummary, Tx};
use events::testing::NatsServer;
use events::{Bus, Event, EventPayload};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

use crate::nats::config;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(30);

/// The database the tests make their schemas in: `EVENTS_TEST_DATABASE_URL`,
/// else the local server's `postgres` database.
pub fn database_url() -> String {
    std::env::var("EVENTS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// One event of a business transaction: the `seq`-th of its key, in
/// commit order (drawn from a counter row the transaction updates), and
/// the `n`-th transaction of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub key: String,
    pub seq: i64,
    pub n: i64,
}

impl EventPayload for Step {
    const TYPE: &'static str = "outbox.step";
}

/// A schema of its own for one test, dropped when the test ends (also
/// when it fails).
pub struct TestSchema {
    pub pool: PgPool,
    pub name: String,
    url: String,
}

impl TestSchema {
    pub async fn new(test: &str) -> TestSchema {
        Self::on(&database_url(), test).await
    }

    pub async fn on(url: &str, test: &str) -> TestSchema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t_{test}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pool = pool(url, 8).await;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};
             CREATE TABLE {name}.counters (key text PRIMARY KEY, seq bigint NOT NULL);
             CREATE TABLE {name}.business (n bigint PRIMARY KEY, key text NOT NULL, seq bigint NOT NULL);"
        )))
        .execute(&pool)
        .await
        .expect("creates the test schema");
        TestSchema {
            pool,
            name,
            url: url.to_owned(),
        }
    }

    /// A schema that already exists (a child process's view of its
    /// parent's); left in place on drop.
    pub async fn existing(url: &str, name: &str) -> TestSchema {
        TestSchema {
            pool: pool(url, 8).await,
            name: name.to_owned(),
            url: String::new(),
        }
    }

    pub fn outbox(&self, bus: &Bus) -> Outbox {
        Outbox::new(self.pool.clone(), bus)
            .schema(self.name.clone())
            .unwrap()
    }

    /// One business transaction: the next number of `key` (the counter
    /// row's lock orders the key's transactions, so `seq` is commit order),
    /// a business row, and its event staged, all committed together.
    pub async fn transact(
        &self,
        outbox: &Outbox,
        bus: &Bus,
        n: i64,
        key: &str,
    ) -> events::Result<()> {
        let s = &self.name;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let seq: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO {s}.counters (key, seq) VALUES ($1, 1)
             ON CONFLICT (key) DO UPDATE SET seq = counters.seq + 1 RETURNING seq"
        )))
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {s}.business (n, key, seq) VALUES ($1, $2, $3)"
        )))
        .bind(n)
        .bind(key)
        .bind(seq)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let event = bus
            .event(Step {
                key: key.to_owned(),
                seq,
                n,
            })
            .with_subject(key);
        outbox.stage(&mut tx, &event).await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Whether business transaction `n` committed (`false` when the
    /// database cannot tell now).
    pub async fn committed(&self, n: i64) -> bool {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {}.business WHERE n = $1)",
            self.name
        )))
        .bind(n)
        .fetch_one(&self.pool)
        .await
        .unwrap_or(false)
    }

    /// `(key, seq)` of every committed business transaction.
    pub async fn business(&self) -> Vec<(String, i64)> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT key, seq FROM {}.business ORDER BY n",
            self.name
        )))
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if self.url.is_empty() {
            return;
        }
        let (url, name) = (self.url.clone(), self.name.clone());
        // Async drop is not a thing: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(pool) = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(&url)
                    .await
                {
                    let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {name} CASCADE"
                    )))
                    .execute(&pool)
                    .await;
                }
            });
        })
        .join();
    }
}

/// An error with its causes, for a failure message.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn db(e: sqlx::Error) -> events::Error {
    events::Error::new(events::ErrorKind::Unavailable, "test database").with_source(e)
}

pub async fn pool(url: &str, connections: u32) -> PgPool {
    let options: PgConnectOptions = url.parse().unwrap();
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} (EVENTS_TEST_DATABASE_URL): {e}"))
}

/// A JetStream transport with a stream `OUTBOX` on `outbox.>`: reconnects
/// fast, publishes give up after 1 s.
pub fn js_config(server: &NatsServer) -> JetStreamConfig {
    JetStreamConfig::new(
        config(server).request_timeout(Duration::from_secs(2)),
        StreamConfig::new("OUTBOX", ["outbox.>", "deadletter.outbox.>"]),
    )
    .ack_timeout(Duration::from_secs(1))
    .publish_attempts(2)
}

pub async fn connect(config: JetStreamConfig) -> JetStreamTransport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match JetStreamTransport::connect(config.clone()).await {
            Ok(t) => return t,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

pub fn bus(transport: JetStreamTransport) -> Bus {
    Bus::builder(transport)
        .source("outbox-tests")
        .prefix("outbox")
        .build()
        .unwrap()
}

/// An event as the stream stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: String,
    pub step: Step,
}

/// Every event in the stream `OUTBOX`, in stream order.
pub async fn stored(transport: &JetStreamTransport) -> Vec<Stored> {
    let stream = transport.context().get_stream("OUTBOX").await.unwrap();
    let state = stream.get_info().await.unwrap().state;
    let mut out = Vec::with_capacity(state.messages as usize);
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let message = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            Err(e) => panic!("stream message {seq}: {e}"),
        };
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        out.push(Stored {
            id: body["id"].as_str().unwrap().to_owned(),
            step: serde_json::from_value(body["data"].clone()).unwrap(),
        });
    }
    out
}

pub async fn stored_count(transport: &JetStreamTransport) -> u64 {
    match transport.context().get_stream("OUTBOX").await {
        Ok(stream) => match stream.get_info().await {
            Ok(info) => info.state.messages,
            Err(_) => 0,
        },
        Err(_) => 0,
    }
}

/// Waits (bounded) until the stream holds `n` events and the outbox is
/// empty.
pub async fn wait_drained(
    transport: &JetStreamTransport,
    outbox: &Outbox,
    n: u64,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let count = stored_count(transport).await;
        let pending = outbox.status().await.map(|s| s.pending).unwrap_or(u64::MAX);
        if count >= n && pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not drained within {within:?}: {count} of {n} stored, {pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the stream shows against what committed.
#[derive(Debug, Default)]
pub struct Verdict {
    pub committed: usize,
    pub stored: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Events stored after a later event of their key.
    pub out_of_order: usize,
    /// Events stored that no committed transaction made.
    pub phantom: usize,
    pub keys: usize,
}

impl Verdict {
    pub fn assert_exact(&self, what: &str) {
        assert!(
            self.lost == 0
                && self.duplicated == 0
                && self.out_of_order == 0
                && self.phantom == 0
                && self.stored == self.committed,
            "{what}: {self:?}"
        );
    }
}

/// Every committed `(key, seq)` stored once, in `seq` order per key.
pub fn verdict(committed: &[(String, i64)], stored: &[Stored]) -> Verdict {
    let mut seen: HashMap<(String, i64), u32> = HashMap::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut verdict = Verdict {
        committed: committed.len(),
        stored: stored.len(),
        ..Verdict::default()
    };
    for event in stored {
        let key = (event.step.key.clone(), event.step.seq);
        *seen.entry(key).or_default() += 1;
        let previous = last.entry(event.step.key.clone()).or_insert(0);
        if event.step.seq <= *previous {
            verdict.out_of_order += 1;
        } else {
            *previous = event.step.seq;
        }
    }
    for (key, seq) in committed {
        match seen.remove(&(key.clone(), *seq)) {
            None => verdict.lost += 1,
            Some(1) => {}
            Some(_) => verdict.duplicated += 1,
        }
    }
    verdict.phantom = seen.len();
    verdict.keys = last.len();
    verdict
}

fn key(n: i64, keys: i64) -> String {
    format!("k{}", n % keys)
}

#[tokio::test]
async fn a_rolled_back_transaction_never_publishes() {
    let db = TestSchema::new("rollback").await;
    let server = NatsServer::with_jetstream();
    let transport = connect(js_config(&server)).await;
    let bus = bus(transport.clone());
    let outbox = db.outbox(&bus);
    outbox.migrate().await.unwrap();
    let relay = outbox.relay().start();

    // Staged, then rolled back: in the table only inside the transaction.
    let mut tx = db.pool.begin().await.unwrap();
    let doomed = bus
        .event(Step {
            key: "a".into(),
            seq: 1,
            n: 0,
        })
        .with_subject("a");
    outbox.stage(&mut tx, &doomed).await.unwrap();
    let inside: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.events_outbox",
        db.name
    )))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(inside, 1, "staged in the transaction");
    tx.rollback().await.unwrap();
    // A transaction dropped without commit rolls back too.
    {
        let mut tx = db.pool.begin().await.unwrap();
        let dropped = bus
            .event(Step {
                key: "a".into(),
                seq: 2,
                n: 1,
            })
            .with_subject("a");
        outbox.stage(&mut tx, &dropped).await.unwrap();
    }
    // Then one that commits: staged after them, published after anything
    // they could have left.
    db.transact(&outbox, &bus, 2, "a").await.unwrap();
    wait_drained(&transport, &outbox, 1, WAIT).await;
    let summary = relay.shutdown().await.unwrap();

    let stored = stored(&transport).await;
    println!("rollback: stored {stored:?}, relay {summary:?}");
    assert_eq!(stored.len(), 1, "only the committed event: {stored:?}");
    assert_eq!(stored[0].step.n, 2);
    assert_ne!(stored[0].id, doomed.metadata.id());
    assert_eq!(summary.published, 1);
}

#[tokio::test]
async fn a_corrupt_row_becomes_a_failed_row_with_its_reason_and_the_relay_goes_on() {
    let db = TestSchema::new("corrupt").await;
    let server = NatsServer::with_jetstream();
    let transport = connect(js_config(&server)).await;
    let bus = bus(transport.clone());
    let outbox = db.outbox(&bus);
    outbox.migrate().await.unwrap();

    db.transact(&outbox, &bus, 0, "k").await.unwrap();
    let s = &db.name;
    // Written by hand: headers that are not pairs, a header with a line
    // break, a body that is not an event, an event whose id is not the
    // row's, a subject with a wildcard. Same key as the good events.
    let good = bus
        .encode(
            &bus.event(Step {
                key: "k".into(),
                seq: 9,
                n: 9,
            }),
            events::wire::ContentMode::Structured,
        )
        .unwrap();
    let cases: Vec<(Vec<String>, Vec<u8>, &str, &str)> = vec![
        (
            vec!["content-type".into()],
            good.payload.to_vec(),
            "x-1",
            "outbox.outbox.step",
        ),
        (
            vec![
                "content-type".into(),
                "application/cloudevents+json\r\nx: y".into(),
            ],
            good.payload.to_vec(),
            "x-2",
            "outbox.outbox.step",
        ),
        (
            vec!["content-type".into(), "application/cloudevents+json".into()],
            b"{not json".to_vec(),
            "x-3",
            "outbox.outbox.step",
        ),
        (
            vec!["content-type".into(), "application/cloudevents+json".into()],
            good.payload.to_vec(),
            "not-the-event-id",
            "outbox.outbox.step",
        ),
        (
            vec!["content-type".into(), "application/cloudevents+json".into()],
            good.payload.to_vec(),
            "x-5",
            "outbox.*",
        ),
    ];
    for (headers, body, id, subject) in &cases {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {s}.events_outbox (lock_key, key, subject, headers, body, event_id)
             VALUES (NULL, 'k', $1, $2, $3, $4)"
        )))
        .bind(subject)
        .bind(headers)
        .bind(body)
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    db.transact(&outbox, &bus, 1, "k").await.unwrap();

    let relay = outbox.relay().start();
    wait_drained(&transport, &outbox, 2, WAIT).await;
    let summary = relay.shutdown().await.unwrap();
    let stored = stored(&transport).await;
    let failed = outbox.failed(100).await.unwrap();
    let status = outbox.status().await.unwrap();
    println!("corrupt rows: relay {summary:?}, status {status:?}");
    for f in &failed {
        println!("  failed row {}: {}", f.id, f.reason);
    }
    assert_eq!(stored.iter().map(|s| s.step.n).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(failed.len(), cases.len(), "{failed:?}");
    assert_eq!((status.pending, status.failed), (0, cases.len() as u64));
    assert!(status.oldest_failed_age.is_some());
    let reasons: Vec<&str> = failed.iter().map(|f| f.reason.as_str()).collect();
    assert!(reasons[0].contains("not name/value pairs"), "{reasons:?}");
    assert!(reasons[1].contains("corrupt headers"), "{reasons:?}");
    assert!(reasons[2].contains("corrupt event"), "{reasons:?}");
    assert!(reasons[3].contains("not the row's"), "{reasons:?}");
    assert!(reasons[4].contains("corrupt subject"), "{reasons:?}");
    assert_eq!(summary.failed, cases.len() as u64);

    // Requeued once fixed: back at the end of the queue.
    let fixed = &failed[3];
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {s}.events_outbox_failed SET event_id = $1 WHERE id = $2"
    )))
    .bind(
        serde_json::from_slice::<serde_json::Value>(&good.payload).unwrap()["id"]
            .as_str()
            .unwrap(),
    )
    .bind(fixed.id)
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(outbox.requeue(fixed.id).await.unwrap());
    assert!(
        !outbox.requeue(fixed.id).await.unwrap(),
        "gone from the failed rows"
    );
    let relay = outbox.relay().start();
    wait_drained(&transport, &outbox, 3, WAIT).await;
    relay.shutdown().await.unwrap();
    assert_eq!(
        outbox.status().await.unwrap().failed,
        cases.len() as u64 - 1
    );
}

/// Runs `transactions` business transactions over `keys` keys from
/// `producers` concurrent tasks; `done` counts the committed ones. Every
/// transaction must commit (a failed one is retried, and counted).
pub fn produce(
    db: Arc<TestSchema>,
    outbox: Outbox,
    bus: Bus,
    transactions: i64,
    keys: i64,
    producers: i64,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..producers {
            let (db, outbox, bus, next, done) = (
                db.clone(),
                outbox.clone(),
                bus.clone(),
                next.clone(),
                done.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut failures = 0;
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst) as i64;
                    if n >= transactions {
                        return failures;
                    }
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while let Err(e) = db.transact(&outbox, &bus, n, &key(n, keys)).await {
                        // A commit whose reply was lost (the server stopped
                        // right after committing it) must not be retried:
                        // the retry's business row would collide with the
                        // committed one, for good.
                        if db.committed(n).await {
                            break;
                        }
                        failures += 1;
                        assert!(
                            Instant::now() < deadline,
                            "transaction {n} keeps failing: {}",
                            chain(&e)
                        );
                        // A retry's pause (the database may be restarting).
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        let mut failures = 0;
        for task in tasks {
            failures += task.await.unwrap();
        }
        failures
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_at_once_store_every_event_once_in_key_order() {
    const EVENTS: i64 = 2000;
    let db = Arc::new(TestSchema::new("two_relays").await);
    let server = NatsServer::with_jetstream();
    let transport = connect(js_config(&server)).await;
    let bus = bus(transport.clone());
    let outbox = db.outbox(&bus);
    outbox.migrate().await.unwrap();

    // Half staged before the relays start (a backlog both claim from),
    // half while they run.
    let done = Arc::new(AtomicU64::new(0));
    produce(
        db.clone(),
        outbox.clone(),
        bus.clone(),
        EVENTS / 2,
        16,
        4,
        done.clone(),
    )
    .await
    .unwrap();
    let one = outbox.relay().batch_size(32).start();
    let two = outbox.relay().batch_size(32).start();
    let more = {
        let (db, outbox, bus, done) = (db.clone(), outbox.clone(), bus.clone(), done.clone());
        tokio::spawn(async move {
            for n in EVENTS / 2..EVENTS {
                db.transact(&outbox, &bus, n, &key(n, 16)).await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    more.await.unwrap();
    wait_drained(&transport, &outbox, EVENTS as u64, WAIT).await;
    let (one, two): (RelaySummary, RelaySummary) =
        (one.shutdown().await.unwrap(), two.shutdown().await.unwrap());

    let verdict = verdict(&db.business().await, &stored(&transport).await);
    println!("two relays: {verdict:?}; relay one {one:?}, relay two {two:?}");
    verdict.assert_exact("two relays");
    assert_eq!(
        one.published + two.published,
        EVENTS as u64,
        "each event published by exactly one relay"
    );
    assert!(
        one.published > 0 && two.published > 0,
        "both relays worked: {one:?} {two:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_for_10_s_every_transaction_commits_and_the_backlog_drains_in_key_order() {
    const EVENTS: i64 = 5000;
    const DOWN: Duration = Duration::from_secs(10);
    let began = Instant::now();
    let db = Arc::new(TestSchema::new("nats_down").await);
    let mut server = NatsServer::with_jetstream();
    let transport = connect(js_config(&server)).await;
    let bus = bus(transport.clone());
    let outbox = db.outbox(&bus);
    outbox.migrate().await.unwrap();
    let relay = outbox.relay().start();

    let done = Arc::new(AtomicU64::new(0));
    let producer = produce(
        db.clone(),
        outbox.clone(),
        bus.clone(),
        EVENTS,
        50,
        4,
        done.clone(),
    );
    // Down once a fifth has committed; the producers go on meanwhile.
    let deadline = Instant::now() + WAIT;
    while done.load(Ordering::SeqCst) < EVENTS as u64 / 5 {
        assert!(Instant::now() < deadline, "producers stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let killed_at = (done.load(Ordering::SeqCst), stored_count_local(&db).await);
    let down_since = Instant::now();
    // Fault injection, not synchronization: the outage lasts 10 s.
    tokio::time::sleep(DOWN).await;
    let during = done.load(Ordering::SeqCst) - killed_at.0;
    let backlog = outbox.status().await.unwrap();
    server.restart();
    let restarted = Instant::now();
    let failures = tokio::time::timeout(WAIT, producer)
        .await
        .expect("producers finish")
        .unwrap();
    wait_drained(&transport, &outbox, EVENTS as u64, Duration::from_secs(60)).await;
    let drained_in = restarted.elapsed();
    let summary = relay.shutdown().await.unwrap();

    let verdict = verdict(&db.business().await, &stored(&transport).await);
    println!(
        "nats down {:?}: committed {} before the kill ({} pending then), {during} while down, \
         backlog at restart {} (oldest {:?}), drained {drained_in:?} after restart, \
         transaction retries {failures}; {verdict:?}; relay {summary:?}; total {:?}",
        down_since.elapsed().min(DOWN),
        killed_at.0,
        killed_at.1,
        backlog.pending,
        backlog.oldest_pending_age,
        began.elapsed()
    );
    verdict.assert_exact("nats down");
    assert_eq!(failures, 0, "no business transaction failed");
    assert!(during > 0, "transactions committed while NATS was down");
    assert!(
        backlog.pending > 0,
        "a backlog built up while NATS was down"
    );
}

async fn stored_count_local(db: &TestSchema) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.events_outbox",
        db.name
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A handler for the inbox test: writes its effect, then fails on the
/// first attempt of `n = 0` and panics on the first attempt of `n = 1`;
/// the rest succeed.
async fn apply(event: Event<Step>, ctx: Context<String>, mut tx: Tx) -> Result<(), HandlerError> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}.effects (n, attempt) VALUES ($1, $2)",
        ctx.state()
    )))
    .bind(event.payload.n)
    .bind(i32::try_from(ctx.attempt()).unwrap())
    .execute(&mut *tx)
    .await?;
    match (event.payload.n, ctx.attempt()) {
        (0, 1) => Err(HandlerError::retry("fails after writing")),
        (1, 1) => panic!("panics after writing"),
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_commits_effects_once_and_rolls_back_failed_and_panicking_attempts() {
    let db = TestSchema::new("inbox").await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {}.effects (n bigint NOT NULL, attempt int NOT NULL)",
        db.name
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let inbox = Inbox::new(db.pool.clone()).schema(db.name.clone()).unwrap();
    inbox.migrate().await.unwrap();
    let bus = Bus::memory("inbox-test");
    let running = Consumer::new(&bus, "inventory")
        .unwrap()
        .state(db.name.clone())
        .handle(inbox.handler(apply))
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .initial_delay(Duration::from_millis(10)),
        )
        .start()
        .await
        .unwrap();
    let events: Vec<_> = (0..3)
        .map(|n| {
            bus.event(Step {
                key: "k".into(),
                seq: n,
                n,
            })
        })
        .collect();
    for event in &events {
        bus.publish(event).await.unwrap();
    }
    // The same event again (a republish with the same id): no second effect.
    bus.publish(&events[2]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let marks = format!("SELECT count(*) FROM {}.events_inbox", db.name);
    loop {
        let marked: i64 = sqlx::query_scalar(AssertSqlSafe(marks.clone()))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if marked == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{marked} of 3 events handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let summary = running.shutdown().await.unwrap();
    let effects: Vec<(i64, i32)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT n, attempt FROM {}.effects ORDER BY n",
        db.name
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    println!("inbox: effects {effects:?}, consumer {summary:?}");
    // The failed and the panicking first attempts left nothing; each event
    // has exactly one effect, from the attempt that committed.
    assert_eq!(effects, [(0, 2), (1, 2), (2, 1)]);
    assert_eq!(summary.handled, 4, "the duplicate was acknowledged too");
    assert_eq!(summary.retried, 2);
    assert_eq!(
        inbox.purge(Duration::ZERO).await.unwrap(),
        3,
        "marks purged"
    );
}

/// Records the outbox's gauges (every value set) and counters, for the
/// status test: the only recorder of this test binary.
#[cfg(feature = "metrics")]
mod recorded {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    #[derive(Default)]
    pub struct Recorded {
        gauges: Mutex<HashMap<String, Arc<Values>>>,
        counters: Mutex<HashMap<String, Arc<Count>>>,
    }

    #[derive(Default)]
    pub struct Values(Mutex<Vec<f64>>);

    impl GaugeFn for Values {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            self.0.lock().unwrap().push(value);
        }
    }

    #[derive(Default)]
    pub struct Count(AtomicU64);

    impl CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    fn name(key: &Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl Recorder for Recorded {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(
                self.counters
                    .lock()
                    .unwrap()
                    .entry(name(key))
                    .or_default()
                    .clone(),
            )
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(
                self.gauges
                    .lock()
                    .unwrap()
                    .entry(name(key))
                    .or_default()
                    .clone(),
            )
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    pub fn recorder() -> &'static Recorded {
        static RECORDER: OnceLock<&'static Recorded> = OnceLock::new();
        RECORDER.get_or_init(|| {
            let recorder: &'static Recorded = Box::leak(Box::default());
            metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
            recorder
        })
    }

    impl Recorded {
        pub fn gauge(&self, name: &str) -> Vec<f64> {
            self.gauges
                .lock()
                .unwrap()
                .get(name)
                .map(|v| v.0.lock().unwrap().clone())
                .unwrap_or_default()
        }
        pub fn counter(&self, name: &str) -> u64 {
            self.counters
                .lock()
                .unwrap()
                .get(name)
                .map_or(0, |c| c.0.load(Ordering::Relaxed))
        }
    }
}

#[tokio::test]
async fn status_and_gauges_report_the_backlog_and_published_rows_are_kept_for_their_retention() {
    #[cfg(feature = "metrics")]
    let recorder = recorded::recorder();
    let db = TestSchema::new("status").await;
    let server = NatsServer::with_jetstream();
    let transport = connect(js_config(&server)).await;
    let bus = bus(transport.clone());
    let outbox = db.outbox(&bus);
    outbox.migrate().await.unwrap();
    assert_eq!(
        outbox.migrate().await.unwrap(),
        Vec::<i32>::new(),
        "applied once"
    );

    let empty = outbox.status().await.unwrap();
    assert_eq!((empty.pending, empty.oldest_pending_age), (0, None));
    for n in 0..3 {
        db.transact(&outbox, &bus, n, "k").await.unwrap();
    }
    let backlog = outbox.status().await.unwrap();
    assert_eq!(backlog.pending, 3);
    assert!(backlog.oldest_pending_age.is_some());

    // Kept an hour: published, then still there.
    let relay = outbox
        .relay()
        .keep_published(Duration::from_secs(3600))
        .housekeeping_interval(Duration::from_millis(20))
        .start();
    wait_drained(&transport, &outbox, 3, WAIT).await;
    let kept = outbox.status().await.unwrap();
    assert_eq!((kept.pending, kept.published_retained), (0, 3));
    #[cfg(feature = "metrics")]
    {
        let gauge = format!("events_outbox_pending{{schema={}}}", db.name);
        let deadline = Instant::now() + WAIT;
        // The first report (before the first claim) saw the backlog; a
        // later one sees it gone.
        while recorder.gauge(&gauge).last() != Some(&0.0) {
            assert!(Instant::now() < deadline, "{:?}", recorder.gauge(&gauge));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(recorder.gauge(&gauge).first(), Some(&3.0));
        let published = format!("events_outbox_published_total{{schema={}}}", db.name);
        assert_eq!(recorder.counter(&published), 3);
    }
    relay.shutdown().await.unwrap();

    // A retention that has passed: purged at the next housekeeping.
    let relay = outbox
        .relay()
        .keep_published(Duration::ZERO)
        .housekeeping_interval(Duration::from_millis(20))
        .start();
    let deadline = Instant::now() + WAIT;
    while outbox.status().await.unwrap().published_retained > 0 {
        assert!(Instant::now() < deadline, "published rows never purged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.shutdown().await.unwrap();
    assert_eq!(stored(&transport).await.len(), 3);
}

/// A test's schema, private nats-server, transport, bus and migrated
/// outbox.
async fn setup(test: &str) -> (TestSchema, NatsServer, JetStreamTransport, Bus, Outbox) {
    let db = TestSchema::new(test).await;
    let server = NatsServer::with_jetstream();
    let transport = connect(js_config(&server)).await;
    let bus = bus(transport.clone());
    let outbox = db.outbox(&bus);
    outbox.migrate().await.unwrap();
    (db, server, transport, bus, outbox)
}

/// A JetStream transport with faults: its publishes never complete
/// (`hang`: a relay's turn on it stays in progress until something drops
/// it), or the first publish of one event fails as unconfirmed.
#[derive(Debug, Default)]
struct Faulty {
    inner: Option<JetStreamTransport>,
    hang: bool,
    publishing: Arc<tokio::sync::Notify>,
    fail_once: std::sync::Mutex<Option<String>>,
}

impl Faulty {
    fn inner(&self) -> &JetStreamTransport {
        self.inner.as_ref().expect("a transport to wrap")
    }
}

impl events::transport::Transport for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn capabilities(&self) -> &events::transport::Capabilities {
        events::transport::Transport::capabilities(self.inner())
    }
    fn publish(&self, message: events::transport::Message) -> BoxFuture<'_, events::Result<()>> {
        self.publishing.notify_one();
        if self.hang {
            return Box::pin(std::future::pending());
        }
        let mut fail = self.fail_once.lock().unwrap();
        if fail.is_some() && *fail == message.dedup_id {
            *fail = None;
            return Box::pin(async {
                Err(events::Error::new(
                    events::ErrorKind::Unavailable,
                    "no ack (injected)",
                ))
            });
        }
        events::transport::Transport::publish(self.inner(), message)
    }
    fn subscribe(
        &self,
        options: events::transport::SubscribeOptions,
    ) -> BoxFuture<'_, events::Result<events::transport::Subscription>> {
        events::transport::Transport::subscribe(self.inner(), options)
    }
    fn flush(&self) -> BoxFuture<'_, events::Result<()>> {
        events::transport::Transport::flush(self.inner())
    }
    fn close(&self) -> BoxFuture<'_, events::Result<()>> {
        events::transport::Transport::close(self.inner())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_not_confirmed_holds_back_its_key_in_the_batches_claimed_ahead() {
    let (db, _server, transport, bus, outbox) = setup("unconfirmed").await;
    for n in 0..4 {
        db.transact(&outbox, &bus, n, "k").await.unwrap();
    }
    let first: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT event_id FROM {}.events_outbox ORDER BY id LIMIT 1",
        db.name
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();

    // One row per batch: while the first is published (and not
    // confirmed), the next ones of its key are already claimed.
    let faulty = Arc::new(Faulty {
        inner: Some(transport.clone()),
        fail_once: std::sync::Mutex::new(Some(first)),
        ..Faulty::default()
    });
    let relay = outbox
        .relay()
        .transport(faulty.clone())
        .batch_size(1)
        .start();
    wait_drained(&transport, &outbox, 4, WAIT).await;
    let summary = relay.shutdown().await.unwrap();

    let verdict = verdict(&db.business().await, &stored(&transport).await);
    println!("unconfirmed first publish: {verdict:?}; relay {summary:?}");
    assert!(
        faulty.fail_once.lock().unwrap().is_none(),
        "the first publish failed"
    );
    verdict.assert_exact("unconfirmed first publish");
    assert_eq!(summary.published, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_turn_dropped_at_the_shutdown_timeout_leaves_the_relay_lock_to_other_relays() {
    let (db, _server, transport, bus, outbox) = setup("dropped_turn").await;
    db.transact(&outbox, &bus, 0, "k").await.unwrap();

    // A turn stuck in its publish, holding the relay lock, dropped when
    // shutdown gives up on it.
    let stuck = Arc::new(Faulty {
        inner: Some(transport.clone()),
        hang: true,
        ..Faulty::default()
    });
    let relay = outbox
        .relay()
        .transport(stuck.clone())
        .shutdown_timeout(Duration::from_millis(200))
        .start();
    tokio::time::timeout(WAIT, stuck.publishing.notified())
        .await
        .expect("the turn publishes");
    let err = relay.shutdown().await.unwrap_err();
    assert_eq!(err.kind(), events::ErrorKind::Unavailable, "{err}");

    // A relay of another process (a pool of its own) gets a turn: the
    // dropped turn's connection was closed, not handed back to its pool
    // (still open here) with the lock.
    let other = Outbox::new(pool(&database_url(), 2).await, &bus)
        .schema(db.name.clone())
        .unwrap();
    let relay = other.relay().start();
    wait_drained(&transport, &other, 1, WAIT).await;
    let summary = relay.shutdown().await.unwrap();
    assert_eq!(summary.published, 1);
    assert_eq!(stored(&transport).await.len(), 1);
    // The first pool's connections are alive and free of the lock.
    sqlx::query("SELECT 1").execute(&db.pool).await.unwrap();
}
