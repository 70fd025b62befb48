//! The outbox against what it replaces, measured in one run against the
//! real PostgreSQL (`EVENTS_TEST_DATABASE_URL`, default the local server;
//! a schema of its own, dropped after) and a private nats-server:
//!
//! - staging cost: a business transaction staging one event vs the same
//!   transaction inserting the same bytes into a plain table;
//! - relay throughput: committed rows to PubAck vs pipelined JetStream
//!   publish (`Bus::publish_all`) of the same events;
//! - latency from commit to PubAck, with LISTEN/NOTIFY and polling only.
//!
//! Run with `cargo bench -p events --features jetstream,postgres,testing --bench outbox`
//! (`OUTBOX_BENCH_SCALE=0.2` for a quicker, noisier run;
//! `OUTBOX_BENCH_ONLY=staging`, `relay` or `latency` for one part, as when
//! profiling).

#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::backend::jetstream::{JetStreamConfig, JetStreamTransport, StreamConfig};
use events::backend::nats::NatsConfig;
use events::outbox::Outbox;
use events::testing::NatsServer;
use events::transport::{Capabilities, Message, SubscribeOptions, Subscription, Transport};
use events::wire::ContentMode;
use events::{Bus, EventPayload};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    total_cents: i64,
    note: String,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "bench.order_placed";
}

const SCHEMA: &str = "events_outbox_bench";
const KEYS: usize = 1000;

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("OUTBOX_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(10)
}

/// Whether to run `part` (`OUTBOX_BENCH_ONLY` unset runs them all).
fn runs(part: &str) -> bool {
    std::env::var("OUTBOX_BENCH_ONLY").map_or(true, |only| only == part)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn order(bus: &Bus, n: usize) -> events::Event<OrderPlaced> {
    bus.event(OrderPlaced {
        order_id: format!("o-{n}"),
        total_cents: n as i64,
        note: "x".repeat(180),
    })
    .with_subject(format!("customer-{}", n % KEYS))
}

async fn business_insert(tx: &mut sqlx::PgConnection, n: usize) {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {SCHEMA}.orders (id, total_cents) VALUES ($1, $2)"
    )))
    .bind(format!("o-{n}-{}", uuid::Uuid::now_v7()))
    .bind(n as i64)
    .execute(tx)
    .await
    .unwrap();
}

/// `count` transactions: an order row plus the event staged. Seconds.
async fn staged(pool: &PgPool, outbox: &Outbox, bus: &Bus, count: usize) -> f64 {
    let start = Instant::now();
    for n in 0..count {
        let event = order(bus, n);
        let mut tx = pool.begin().await.unwrap();
        business_insert(&mut tx, n).await;
        outbox.stage(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// The same transactions inserting the same bytes (the message the bus
/// would publish) into a plain table with the same columns. Seconds.
async fn plain(pool: &PgPool, bus: &Bus, count: usize) -> f64 {
    let sql = format!(
        "INSERT INTO {SCHEMA}.plain (key, subject, headers, body, event_id) VALUES ($1, $2, $3, $4, $5)"
    );
    let start = Instant::now();
    for n in 0..count {
        let event = order(bus, n);
        let message = bus.encode(&event, ContentMode::Structured).unwrap();
        let headers: Vec<&str> = message.headers.iter().flat_map(|(n, v)| [n, v]).collect();
        let mut tx = pool.begin().await.unwrap();
        business_insert(&mut tx, n).await;
        sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(event.metadata.subject())
            .bind(message.subject.as_str())
            .bind(headers)
            .bind(&message.payload[..])
            .bind(event.metadata.id())
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    start.elapsed().as_secs_f64()
}

async fn stream_messages(transport: &JetStreamTransport) -> u64 {
    let stream = transport.context().get_stream("BENCH").await.unwrap();
    stream.get_info().await.unwrap().state.messages
}

/// Pipelined JetStream publish of `count` events. Events/s.
async fn direct(bus: &Bus, count: usize) -> f64 {
    let events: Vec<_> = (0..count).map(|n| order(bus, n)).collect();
    let start = Instant::now();
    for result in bus.publish_all(&events).await {
        result.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// A relay started and idle, then `count` events staged in one transaction
/// (untimed): from its commit to the last PubAck (the table empty).
/// Events/s.
async fn relayed(
    pool: &PgPool,
    outbox: &Outbox,
    transport: &JetStreamTransport,
    count: usize,
    batch: usize,
) -> f64 {
    let bus = outbox.bus().clone();
    // Running before the events commit, as in production: its start-up
    // (the first backlog report, connections) is not what is measured.
    let relay = outbox.relay().batch_size(batch).start();
    let before = stream_messages(transport).await;
    let events: Vec<_> = (0..count).map(|n| order(&bus, n)).collect();
    let mut tx = pool.begin().await.unwrap();
    outbox.stage_all(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    let start = Instant::now();
    // A cheap probe (a count every few ms would compete with the relay).
    let probe = format!("SELECT EXISTS (SELECT 1 FROM {SCHEMA}.events_outbox)");
    loop {
        let pending: bool = sqlx::query_scalar(AssertSqlSafe(probe.clone()))
            .fetch_one(pool)
            .await
            .unwrap();
        if !pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let summary = relay.shutdown().await.unwrap();
    assert_eq!(summary.published as usize, count);
    assert_eq!(stream_messages(transport).await - before, count as u64);
    count as f64 / elapsed
}

/// A transport that notes when each event's publish was confirmed.
#[derive(Debug)]
struct Timed {
    inner: Arc<dyn Transport>,
    acked: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Transport for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn publish(&self, message: Message) -> BoxFuture<'_, events::Result<()>> {
        self.inner.publish(message)
    }
    fn publish_batch(&self, messages: Vec<Message>) -> BoxFuture<'_, Vec<events::Result<()>>> {
        Box::pin(async move {
            let ids: Vec<Option<String>> = messages.iter().map(|m| m.dedup_id.clone()).collect();
            let results = self.inner.publish_batch(messages).await;
            let now = Instant::now();
            let mut acked = self.acked.lock().unwrap();
            for (id, result) in ids.into_iter().zip(&results) {
                if let (Some(id), Ok(())) = (id, result) {
                    acked.insert(id, now);
                }
            }
            results
        })
    }
    fn subscribe(&self, options: SubscribeOptions) -> BoxFuture<'_, events::Result<Subscription>> {
        self.inner.subscribe(options)
    }
    fn flush(&self) -> BoxFuture<'_, events::Result<()>> {
        self.inner.flush()
    }
    fn close(&self) -> BoxFuture<'_, events::Result<()>> {
        self.inner.close()
    }
}

/// Commit to PubAck, one event at a time with a pseudo-random pause of up
/// to `max_gap` before each commit (so commits fall anywhere in a poll
/// interval). Sorted latencies.
async fn latencies(
    pool: &PgPool,
    outbox: &Outbox,
    relay: events::outbox::Relay,
    transport: Arc<dyn Transport>,
    count: usize,
    max_gap: Duration,
) -> Vec<Duration> {
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let timed = Arc::new(Timed {
        inner: transport,
        acked: acked.clone(),
    });
    let running = relay.transport(timed).start();
    let bus = outbox.bus().clone();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let gap = max_gap.mul_f64((seed % 1000) as f64 / 1000.0);
        tokio::time::sleep(gap).await;
        let event = order(&bus, n);
        let mut tx = pool.begin().await.unwrap();
        outbox.stage(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
        let committed = Instant::now();
        let id = event.metadata.id().to_owned();
        let deadline = committed + Duration::from_secs(30);
        let at = loop {
            if let Some(at) = acked.lock().unwrap().get(&id) {
                break *at;
            }
            assert!(Instant::now() < deadline, "event {n} never acknowledged");
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        out.push(at.saturating_duration_since(committed));
    }
    running.shutdown().await.unwrap();
    out.sort();
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let url = std::env::var("EVENTS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};
         CREATE TABLE {SCHEMA}.orders (id text PRIMARY KEY, total_cents bigint NOT NULL);
         CREATE TABLE {SCHEMA}.plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             key text, subject text NOT NULL, headers text[] NOT NULL, body bytea NOT NULL,
             event_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let server = NatsServer::with_jetstream();
    let config = JetStreamConfig::new(
        NatsConfig::new(server.url()),
        StreamConfig::new("BENCH", ["bench.>"]),
    );
    let transport = JetStreamTransport::connect(config).await.unwrap();
    let bus = Bus::builder(transport.clone())
        .source("bench")
        .prefix("bench")
        .build()
        .unwrap();
    let outbox = Outbox::new(pool.clone(), &bus).schema(SCHEMA).unwrap();
    outbox.migrate().await.unwrap();
    let quiet = outbox.clone().notify(false);

    println!("| benchmark | measure | outbox | baseline | ratio |");
    println!("|---|---|---|---|---|");

    if runs("staging") {
        staging(&pool, &outbox, &quiet, &bus).await;
    }
    if runs("relay") {
        throughput(&pool, &outbox, &transport, &bus).await;
    }
    if runs("latency") {
        latency(&pool, &outbox, &quiet, &bus).await;
    }
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {SCHEMA} CASCADE")))
        .execute(&pool)
        .await
        .unwrap();
}

/// Staging cost: alternating rounds, median time per transaction.
async fn staging(pool: &PgPool, outbox: &Outbox, quiet: &Outbox, bus: &Bus) {
    let transactions = scaled(1000);
    let (mut with, mut without, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        with.push(staged(pool, outbox, bus, transactions).await / transactions as f64);
        base.push(plain(pool, bus, transactions).await / transactions as f64);
        without.push(staged(pool, quiet, bus, transactions).await / transactions as f64);
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "TRUNCATE {SCHEMA}.events_outbox, {SCHEMA}.plain, {SCHEMA}.orders"
    )))
    .execute(pool)
    .await
    .unwrap();
    let (with, without, base) = (median(with), median(without), median(base));
    println!(
        "| staging: order row + event, one transaction ({transactions} x 5 rounds) | µs per transaction | {:.0} | {:.0} (same bytes into a plain table) | {:.2} |",
        with * 1e6,
        base * 1e6,
        with / base
    );
    println!(
        "| staging without NOTIFY | µs per transaction | {:.0} | {:.0} | {:.2} |",
        without * 1e6,
        base * 1e6,
        without / base
    );
}

/// Relay throughput vs pipelined publish, alternating: five pairs, each
/// measured back to back (so both sides of a pair see the same load on a
/// shared machine); the medians, and the median of the pairs' ratios.
async fn throughput(pool: &PgPool, outbox: &Outbox, transport: &JetStreamTransport, bus: &Bus) {
    const PAIRS: usize = 5;
    let events = scaled(20_000);
    for batch in [256, 1024] {
        let (mut relay, mut publish, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..PAIRS {
            let direct = direct(bus, events).await;
            let relayed = relayed(pool, outbox, transport, events, batch).await;
            publish.push(direct);
            relay.push(relayed);
            ratios.push(relayed / direct);
        }
        println!(
            "| relay throughput, batch {batch}, {KEYS} keys ({events} events x {PAIRS} pairs) | events/s, committed rows to PubAck | {:.0} | {:.0} (pipelined JetStream publish) | {:.2} |",
            median(relay),
            median(publish),
            median(ratios)
        );
    }
}

/// Latency from commit to PubAck.
async fn latency(pool: &PgPool, outbox: &Outbox, quiet: &Outbox, bus: &Bus) {
    let shared: Arc<dyn Transport> = bus.transport().clone();
    let samples = scaled(500);
    let notified = latencies(
        pool,
        outbox,
        outbox.relay(),
        shared.clone(),
        samples,
        Duration::from_millis(5),
    )
    .await;
    println!(
        "| latency, LISTEN/NOTIFY ({samples} events, one at a time) | commit to PubAck | p50 {:.2} ms, p99 {:.2} ms | | |",
        percentile(&notified, 0.5).as_secs_f64() * 1e3,
        percentile(&notified, 0.99).as_secs_f64() * 1e3
    );
    let poll = Duration::from_millis(100);
    let samples = scaled(100);
    let polled = latencies(
        pool,
        quiet,
        quiet.relay().listen(false).poll_interval(poll),
        shared,
        samples,
        poll,
    )
    .await;
    println!(
        "| latency, polling only every {} ms ({samples} events, one at a time) | commit to PubAck | p50 {:.2} ms, p99 {:.2} ms | | |",
        poll.as_millis(),
        percentile(&polled, 0.5).as_secs_f64() * 1e3,
        percentile(&polled, 0.99).as_secs_f64() * 1e3
    );
}
