//! The crate against hand-written async-nats + serde_json code doing the
//! same job (the same CloudEvents JSON body and headers), in one process,
//! against one private nats-server, alternating rounds.
//!
//! Run with `cargo bench -p events --features jetstream --bench nats`
//! (`NATS_BENCH_SCALE=0.2` for a quicker, noisier run).

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use events::backend::jetstream::{
    ConsumerDefaults, DeliverPolicy, JetStreamConfig, JetStreamTransport, StreamConfig,
};
use events::backend::nats::{NatsConfig, NatsTransport};
use events::testing::NatsServer;
use events::{Bus, Event, EventPayload};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    seq: u64,
    note: String,
}

impl EventPayload for Payload {
    const TYPE: &'static str = "bench.payload";
}

/// What a user writes by hand for the same CloudEvents body.
#[derive(Serialize)]
struct OutEnvelope<'a> {
    specversion: &'a str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    time: DateTime<Utc>,
    datacontenttype: &'a str,
    data: &'a Payload,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct InEnvelope {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    ty: String,
    time: Option<DateTime<Utc>>,
    datacontenttype: Option<String>,
    data: Payload,
}

fn hand_encode(payload: &Payload) -> Vec<u8> {
    hand_encode_with_id(payload, uuid::Uuid::now_v7().to_string())
}

fn hand_encode_with_id(payload: &Payload, id: String) -> Vec<u8> {
    serde_json::to_vec(&OutEnvelope {
        specversion: "1.0",
        id,
        source: "bench",
        ty: "bench.payload.v1",
        time: Utc::now(),
        datacontenttype: "application/json",
        data: payload,
    })
    .unwrap()
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Content-Type", "application/cloudevents+json");
    h
}

fn payload(size: usize) -> Payload {
    let empty = serde_json::to_vec(&Payload {
        seq: 0,
        note: String::new(),
    })
    .unwrap()
    .len();
    Payload {
        seq: 0,
        note: "x".repeat(size.saturating_sub(empty)),
    }
}

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("NATS_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(100)
}

const SUBJECT: &str = "events.bench.payload";

async fn client(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url()).await.unwrap()
}

async fn core_bus(server: &NatsServer) -> Bus {
    let transport = NatsTransport::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    Bus::builder(transport).source("bench").build().unwrap()
}

// ---- core publish ----

async fn base_publish(server: &NatsServer, p: &Payload, n: usize) -> Duration {
    let client = client(server).await;
    let start = Instant::now();
    for _ in 0..n {
        // Each event's payload is a new value, on both sides.
        let p = p.clone();
        client
            .publish_with_headers(SUBJECT, headers(), hand_encode(&p).into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    start.elapsed()
}

async fn ours_publish(server: &NatsServer, p: &Payload, n: usize) -> Duration {
    let bus = core_bus(server).await;
    let start = Instant::now();
    for _ in 0..n {
        bus.publish(&bus.event(p.clone())).await.unwrap();
    }
    bus.flush().await.unwrap();
    let elapsed = start.elapsed();
    bus.close().await.unwrap();
    elapsed
}

// ---- core publish -> typed subscribe ----

async fn base_pubsub(server: &NatsServer, p: &Payload, n: usize) -> Duration {
    let client = client(server).await;
    let mut sub = client.subscribe(SUBJECT).await.unwrap();
    client.flush().await.unwrap();
    let publisher = client.clone();
    let p = p.clone();
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..n {
            let p = p.clone();
            publisher
                .publish_with_headers(SUBJECT, headers(), hand_encode(&p).into())
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
    });
    for _ in 0..n {
        let m = sub.next().await.unwrap();
        let e: InEnvelope = serde_json::from_slice(&m.payload).unwrap();
        std::hint::black_box(e);
    }
    let elapsed = start.elapsed();
    producer.await.unwrap();
    elapsed
}

async fn ours_pubsub(server: &NatsServer, p: &Payload, n: usize) -> Duration {
    let bus = core_bus(server).await;
    let mut sub = bus.subscribe::<Payload>().await.unwrap();
    let publisher = bus.clone();
    let p = p.clone();
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..n {
            publisher
                .publish(&publisher.event(p.clone()))
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
    });
    for _ in 0..n {
        let d = sub.next().await.unwrap().unwrap();
        std::hint::black_box(d.payload());
        d.ack().await.unwrap();
    }
    let elapsed = start.elapsed();
    producer.await.unwrap();
    bus.close().await.unwrap();
    elapsed
}

// ---- JetStream ----

const WINDOW: usize = 256;

async fn fresh_stream(server: &NatsServer, name: &str) -> jetstream::Context {
    let js = jetstream::new(client(server).await);
    let _ = js.delete_stream(name).await;
    js.create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec!["events.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

async fn base_js_publish(server: &NatsServer, p: &Payload, n: usize) -> Duration {
    let js = fresh_stream(server, "BENCH").await;
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let mut acks = Vec::with_capacity(WINDOW);
        for _ in 0..WINDOW.min(n - sent) {
            let id = uuid::Uuid::now_v7().to_string();
            let mut h = headers();
            h.insert("Nats-Msg-Id", id.as_str());
            let p = p.clone();
            acks.push(
                js.publish_with_headers(SUBJECT, h, hand_encode_with_id(&p, id).into())
                    .await
                    .unwrap(),
            );
            sent += 1;
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    start.elapsed()
}

async fn js_bus(server: &NatsServer) -> Bus {
    let config = JetStreamConfig::new(
        NatsConfig::new(server.url()),
        StreamConfig::new("BENCH", ["events.>"]),
    )
    .consumers(ConsumerDefaults::new().durable_deliver_policy(DeliverPolicy::All));
    let transport = JetStreamTransport::connect(config).await.unwrap();
    Bus::builder(transport).source("bench").build().unwrap()
}

async fn ours_js_publish(server: &NatsServer, p: &Payload, n: usize) -> Duration {
    let _ = fresh_stream(server, "BENCH").await;
    let bus = js_bus(server).await;
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let batch: Vec<Event<Payload>> = (0..WINDOW.min(n - sent))
            .map(|_| bus.event(p.clone()))
            .collect();
        for r in bus.publish_all(&batch).await {
            r.unwrap();
        }
        sent += batch.len();
    }
    let elapsed = start.elapsed();
    bus.close().await.unwrap();
    elapsed
}

/// Fills the stream with `n` events (not timed).
async fn fill(server: &NatsServer, p: &Payload, n: usize) {
    base_js_publish(server, p, n).await;
}

async fn base_js_consume(server: &NatsServer, p: &Payload, n: usize) -> Duration {
    fill(server, p, n).await;
    let js = jetstream::new(client(server).await);
    let stream = js.get_stream("BENCH").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("base".into()),
            filter_subject: SUBJECT.into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let start = Instant::now();
    let mut messages = consumer.messages().await.unwrap();
    for _ in 0..n {
        let m = messages.next().await.unwrap().unwrap();
        let e: InEnvelope = serde_json::from_slice(&m.payload).unwrap();
        std::hint::black_box(e);
        m.ack().await.unwrap();
    }
    start.elapsed()
}

async fn ours_js_consume(server: &NatsServer, p: &Payload, n: usize) -> Duration {
    fill(server, p, n).await;
    let bus = js_bus(server).await;
    let start = Instant::now();
    let mut sub = bus.subscribe::<Payload>().durable("ours").await.unwrap();
    for _ in 0..n {
        let d = sub.next().await.unwrap().unwrap();
        std::hint::black_box(d.payload());
        d.ack().await.unwrap();
    }
    let elapsed = start.elapsed();
    bus.close().await.unwrap();
    elapsed
}

/// The consumer runtime with a no-op handler (decode, dispatch, ack), timed
/// from the first event handled to the `n`th, so that creating the durable
/// consumer is outside the timing as it is for the baseline; the baseline
/// is the hand-written consume loop above, which decodes and acks each
/// message the same way.
async fn ours_js_runtime(server: &NatsServer, p: &Payload, n: usize) -> Duration {
    use events::consumer::{Consumer, Context, HandlerError};
    use events::transport::Subject;
    use std::sync::{Arc, Mutex};

    /// Events handled so far, when the first and the `n`th were.
    type Tally = (usize, Option<Instant>, Option<Instant>);

    #[derive(Clone)]
    struct Progress {
        n: usize,
        handled: Arc<Mutex<Tally>>,
        all: Arc<tokio::sync::Notify>,
    }

    fill(server, p, n).await;
    let bus = js_bus(server).await;
    let progress = Progress {
        n,
        handled: Arc::default(),
        all: Arc::default(),
    };
    let consumer = Consumer::new(&bus, "runtime")
        .unwrap()
        .state(progress.clone())
        .handle(|e: Event<Payload>, ctx: Context<Progress>| async move {
            std::hint::black_box(&e.payload);
            let progress = ctx.state();
            let mut handled = progress.handled.lock().unwrap();
            handled.0 += 1;
            handled.1.get_or_insert_with(Instant::now);
            if handled.0 == progress.n {
                handled.2 = Some(Instant::now());
                progress.all.notify_one();
            }
            Ok::<_, HandlerError>(())
        })
        .dead_letter_subject(Subject::parse("events.deadletter.runtime").unwrap());
    let summary = consumer.run(progress.all.notified()).await.unwrap();
    assert!(summary.handled >= n as u64);
    bus.close().await.unwrap();
    let (_, first, last) = *progress.handled.lock().unwrap();
    last.unwrap() - first.unwrap()
}

/// Rounds per row, alternating hand-written and crate; the median counts.
const ROUNDS: usize = 9;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

macro_rules! compare {
    ($rt:expr, $rows:expr, $name:expr, $size:expr, $n:expr, $base:ident, $ours:ident, $server:expr) => {{
        // `NATS_BENCH_ONLY=<part of a name>` runs the matching rows only (for profiling).
        let only = std::env::var("NATS_BENCH_ONLY").unwrap_or_default();
        if $name.contains(only.as_str()) {
            let p = payload($size);
            let (mut b, mut o) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                b.push($rt.block_on($base($server, &p, $n)));
                o.push($rt.block_on($ours($server, &p, $n)));
            }
            let (b, o) = (median(b), median(o));
            let rate = |d: Duration| $n as f64 / d.as_secs_f64();
            let row = format!(
                "| {} | {} B | {} | {:.0} | {:.0} | {:.2} |",
                $name,
                $size,
                $n,
                rate(b),
                rate(o),
                rate(o) / rate(b)
            );
            println!("{row}");
            $rows.push(row);
        }
    }};
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
    let server = NatsServer::with_jetstream();
    let mut rows: Vec<String> = Vec::new();
    println!("| benchmark | payload | events | hand-written (events/s) | events crate (events/s) | ratio |");
    println!("|---|---|---|---|---|---|");
    for size in [16, 256, 4096] {
        let n = scaled(if size == 4096 { 20_000 } else { 50_000 });
        compare!(
            rt,
            rows,
            "core publish",
            size,
            n,
            base_publish,
            ours_publish,
            &server
        );
        compare!(
            rt,
            rows,
            "core publish -> typed subscribe",
            size,
            n,
            base_pubsub,
            ours_pubsub,
            &server
        );
    }
    for size in [16, 256, 4096] {
        let n = scaled(10_000);
        compare!(
            rt,
            rows,
            "JetStream pipelined publish",
            size,
            n,
            base_js_publish,
            ours_js_publish,
            &server
        );
        compare!(
            rt,
            rows,
            "JetStream consume + ack",
            size,
            n,
            base_js_consume,
            ours_js_consume,
            &server
        );
        compare!(
            rt,
            rows,
            "JetStream consumer runtime, no-op handler",
            size,
            n,
            base_js_consume,
            ours_js_runtime,
            &server
        );
    }
}
