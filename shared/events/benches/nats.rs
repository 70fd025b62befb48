//! The crate against hand-written async-nats + serde_json code doing the
//! same job (the same CloudEvents JSON body and headers), against one
//! private nats-server, with two measures per row:
//!
//! - **events/s** in rotated rounds (hand-written first in even rounds, the
//!   crate first in odd ones), median of [`ROUNDS`];
//! - **instructions per event** of the client: the bench runs itself under
//!   `valgrind --tool=callgrind`, one row and one side per process, counting
//!   only inside [`measured_window`] (`--toggle-collect`); setup (connecting,
//!   creating streams and consumers, filling a stream) and teardown are not
//!   counted. Skipped when `valgrind` is not on PATH or with
//!   `NATS_BENCH_INSTRUCTIONS=0`.
//!
//! Both sides run on the same single-threaded tokio runtime, so every task
//! of the client (async-nats's connection task, the crate's pullers and
//! runtime tasks, a producer task) runs on the thread callgrind counts, and
//! the server has the other core. Both sides have the same clock
//! boundaries: each row's window is written once and handed the side's
//! closures.
//!
//! Run with `cargo bench -p events --features jetstream,runtime,testing
//! --bench nats`. Environment: `NATS_BENCH_SCALE=0.2` for a quicker, noisier
//! run; `NATS_BENCH_ONLY=<row key>` for one row (keys: core-publish,
//! core-receive, js-publish, js-consume, js-runtime); `NATS_BENCH_SIZE` for
//! the payload size (default 256).

#![allow(missing_docs)]

#[path = "support/callgrind.rs"]
mod callgrind;

use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use events::backend::jetstream::{
    ConsumerDefaults, DeliverPolicy, JetStreamConfig, JetStreamTransport, StreamConfig,
};
use events::backend::nats::{NatsConfig, NatsTransport};
use events::consumer::{Consumer, Context, HandlerError};
use events::testing::NatsServer;
use events::transport::Subject;
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
    id: &'a str,
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

fn hand_encode(payload: &Payload, id: &str) -> Vec<u8> {
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

fn hand_decode(body: &[u8]) -> InEnvelope {
    serde_json::from_slice(body).unwrap()
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

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("NATS_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(100)
}

const SUBJECT: &str = "events.bench.payload";
const STREAM: &str = "BENCH";
/// Publishes in flight in the JetStream publish row, both sides.
const WINDOW: usize = 256;
/// Rounds per row for the wall clock; the median counts.
const ROUNDS: usize = 7;

/// The rows: key (for `NATS_BENCH_ONLY` and the callgrind runs), title,
/// events per wall-clock round.
const ROWS: [(&str, &str, usize); 5] = [
    ("core-publish", "core publish", 50_000),
    ("core-receive", "core publish -> typed receive", 50_000),
    ("js-publish", "JetStream publish, 256 in flight", 10_000),
    ("js-consume", "JetStream consume + decode + ack", 10_000),
    (
        "js-runtime",
        "JetStream consumer runtime, no-op handler (vs the hand-written consume loop)",
        10_000,
    ),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Hand,
    Crate,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Hand => "hand",
            Side::Crate => "crate",
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A prepared round: the measured part, then what tears it down.
struct Round {
    run: BoxFuture<Duration>,
    teardown: Option<BoxFuture<()>>,
}

/// Everything the client does here is counted by callgrind (the name is
/// what `--toggle-collect` matches); nothing else is.
#[inline(never)]
fn measured_window(rt: &tokio::runtime::Runtime, run: BoxFuture<Duration>) -> Duration {
    rt.block_on(run)
}

async fn client(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url()).await.unwrap()
}

async fn core_bus(server: &NatsServer) -> Bus {
    let transport = NatsTransport::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    Bus::builder(transport).source("bench").build().unwrap()
}

async fn js_bus(server: &NatsServer) -> Bus {
    let config = JetStreamConfig::new(
        NatsConfig::new(server.url()),
        StreamConfig::new(STREAM, ["events.>"]),
    )
    .consumers(ConsumerDefaults::new().durable_deliver_policy(DeliverPolicy::All));
    let transport = JetStreamTransport::connect(config).await.unwrap();
    Bus::builder(transport).source("bench").build().unwrap()
}

async fn fresh_stream(server: &NatsServer) -> jetstream::Context {
    let js = jetstream::new(client(server).await);
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["events.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

/// Hand-written pipelined JetStream publish (also fills the stream for the
/// consume rows).
async fn hand_js_publish(js: &jetstream::Context, p: &Payload, n: usize) {
    let mut sent = 0;
    while sent < n {
        let mut acks = Vec::with_capacity(WINDOW);
        for _ in 0..WINDOW.min(n - sent) {
            let id = uuid::Uuid::now_v7().to_string();
            let mut h = headers();
            h.insert("Nats-Msg-Id", id.as_str());
            let p = p.clone();
            acks.push(
                js.publish_with_headers(SUBJECT, h, hand_encode(&p, &id).into())
                    .await
                    .unwrap(),
            );
            sent += 1;
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// A hand-written durable pull consumer of the bench's subject, and its
/// message stream (async-nats's defaults).
async fn hand_messages(
    js: &jetstream::Context,
    durable: &str,
) -> jetstream::consumer::pull::Stream {
    js.get_stream(STREAM)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(durable.into()),
            filter_subject: SUBJECT.into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap()
}

/// First and last event seen, for windows that start at the first event
/// handled (the runtime row), on both sides.
#[derive(Clone, Default)]
struct Marks(Arc<Mutex<Tally>>);

/// Events seen so far, when the first and the `n`th were.
type Tally = (usize, Option<Instant>, Option<Instant>);

impl Marks {
    /// Counts one event; true at the `n`th.
    fn mark(&self, n: usize) -> bool {
        let mut m = self.0.lock().unwrap();
        m.0 += 1;
        let now = Instant::now();
        m.1.get_or_insert(now);
        if m.0 == n {
            m.2 = Some(now);
            return true;
        }
        false
    }

    fn elapsed(&self) -> Duration {
        let m = self.0.lock().unwrap();
        m.2.unwrap() - m.1.unwrap()
    }
}

/// Sets up one round of a row for one side; nothing in here is measured.
async fn prepare(server: &NatsServer, key: &str, side: Side, p: &Payload, n: usize) -> Round {
    let p = p.clone();
    match (key, side) {
        ("core-publish", Side::Hand) => {
            let client = client(server).await;
            Round {
                run: Box::pin(async move {
                    let start = Instant::now();
                    for _ in 0..n {
                        // Each event's payload is a new value, on both sides.
                        let p = p.clone();
                        let id = uuid::Uuid::now_v7().to_string();
                        client
                            .publish_with_headers(SUBJECT, headers(), hand_encode(&p, &id).into())
                            .await
                            .unwrap();
                    }
                    client.flush().await.unwrap();
                    start.elapsed()
                }),
                teardown: None,
            }
        }
        ("core-publish", Side::Crate) => {
            let bus = core_bus(server).await;
            let closing = bus.clone();
            Round {
                run: Box::pin(async move {
                    let start = Instant::now();
                    for _ in 0..n {
                        bus.publish(&bus.event(p.clone())).await.unwrap();
                    }
                    bus.flush().await.unwrap();
                    start.elapsed()
                }),
                teardown: Some(Box::pin(async move { closing.close().await.unwrap() })),
            }
        }
        ("core-receive", Side::Hand) => {
            let client = client(server).await;
            let mut sub = client.subscribe(SUBJECT).await.unwrap();
            client.flush().await.unwrap();
            Round {
                run: Box::pin(async move {
                    let start = Instant::now();
                    let publisher = client.clone();
                    let producer = tokio::spawn(async move {
                        for _ in 0..n {
                            let p = p.clone();
                            let id = uuid::Uuid::now_v7().to_string();
                            publisher
                                .publish_with_headers(
                                    SUBJECT,
                                    headers(),
                                    hand_encode(&p, &id).into(),
                                )
                                .await
                                .unwrap();
                        }
                        publisher.flush().await.unwrap();
                    });
                    for _ in 0..n {
                        let m = sub.next().await.unwrap();
                        std::hint::black_box(hand_decode(&m.payload));
                    }
                    producer.await.unwrap();
                    start.elapsed()
                }),
                teardown: None,
            }
        }
        ("core-receive", Side::Crate) => {
            let bus = core_bus(server).await;
            let mut sub = bus.subscribe::<Payload>().await.unwrap();
            let closing = bus.clone();
            Round {
                run: Box::pin(async move {
                    let start = Instant::now();
                    let publisher = bus.clone();
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
                    producer.await.unwrap();
                    start.elapsed()
                }),
                teardown: Some(Box::pin(async move { closing.close().await.unwrap() })),
            }
        }
        ("js-publish", Side::Hand) => {
            let js = fresh_stream(server).await;
            Round {
                run: Box::pin(async move {
                    let start = Instant::now();
                    hand_js_publish(&js, &p, n).await;
                    start.elapsed()
                }),
                teardown: None,
            }
        }
        ("js-publish", Side::Crate) => {
            fresh_stream(server).await;
            let bus = js_bus(server).await;
            let closing = bus.clone();
            Round {
                run: Box::pin(async move {
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
                    start.elapsed()
                }),
                teardown: Some(Box::pin(async move { closing.close().await.unwrap() })),
            }
        }
        ("js-consume", Side::Hand) => {
            let js = fresh_stream(server).await;
            hand_js_publish(&js, &p, n).await;
            let mut messages = hand_messages(&js, "hand").await;
            Round {
                run: Box::pin(async move {
                    let start = Instant::now();
                    for _ in 0..n {
                        let m = messages.next().await.unwrap().unwrap();
                        std::hint::black_box(hand_decode(&m.payload));
                        m.ack().await.unwrap();
                    }
                    js.client().flush().await.unwrap();
                    start.elapsed()
                }),
                teardown: None,
            }
        }
        ("js-consume", Side::Crate) => {
            let js = fresh_stream(server).await;
            hand_js_publish(&js, &p, n).await;
            let bus = js_bus(server).await;
            let mut sub = bus.subscribe::<Payload>().durable("ours").await.unwrap();
            let closing = bus.clone();
            Round {
                run: Box::pin(async move {
                    let start = Instant::now();
                    for _ in 0..n {
                        let d = sub.next().await.unwrap().unwrap();
                        std::hint::black_box(d.payload());
                        d.ack().await.unwrap();
                    }
                    bus.flush().await.unwrap();
                    start.elapsed()
                }),
                teardown: Some(Box::pin(async move { closing.close().await.unwrap() })),
            }
        }
        // The runtime creates its consumer when it starts, so here both
        // sides create theirs inside the window (counted once per round, a
        // few requests), and both clocks run from the first event handled
        // to the `n`th. The hand-written durable's name is as long as the
        // runtime's (`runtime_bench_payload_` and a hash): the name is in
        // every delivery's reply subject, which both clients parse and
        // copy, at some 20 instructions per character and event.
        ("js-runtime", Side::Hand) => {
            let js = fresh_stream(server).await;
            hand_js_publish(&js, &p, n).await;
            let marks = Marks::default();
            Round {
                run: Box::pin(async move {
                    let mut messages = hand_messages(&js, "runtime_bench_payload_hand0000").await;
                    for _ in 0..n {
                        let m = messages.next().await.unwrap().unwrap();
                        std::hint::black_box(hand_decode(&m.payload));
                        marks.mark(n);
                        m.ack().await.unwrap();
                    }
                    js.client().flush().await.unwrap();
                    marks.elapsed()
                }),
                teardown: None,
            }
        }
        ("js-runtime", Side::Crate) => {
            let js = fresh_stream(server).await;
            hand_js_publish(&js, &p, n).await;
            let bus = js_bus(server).await;
            let closing = bus.clone();
            let marks = Marks::default();
            let all = Arc::new(tokio::sync::Notify::new());
            let done = all.clone();
            let consumer = Consumer::new(&bus, "runtime")
                .unwrap()
                .state((marks.clone(), all))
                .handle(
                    move |e: Event<Payload>, ctx: Context<(Marks, Arc<tokio::sync::Notify>)>| async move {
                        std::hint::black_box(&e.payload);
                        let (marks, all) = ctx.state();
                        if marks.mark(n) {
                            all.notify_one();
                        }
                        Ok::<_, HandlerError>(())
                    },
                )
                .dead_letter_subject(Subject::parse("events.deadletter.runtime").unwrap());
            Round {
                run: Box::pin(async move {
                    let summary = consumer.run(done.notified_owned()).await.unwrap();
                    assert!(summary.handled >= n as u64);
                    bus.flush().await.unwrap();
                    marks.elapsed()
                }),
                teardown: Some(Box::pin(async move { closing.close().await.unwrap() })),
            }
        }
        _ => panic!("no row {key:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One round of one row for one side.
fn round(
    rt: &tokio::runtime::Runtime,
    server: &NatsServer,
    key: &str,
    side: Side,
    p: &Payload,
    n: usize,
) -> Duration {
    let Round { run, teardown } = rt.block_on(prepare(server, key, side, p, n));
    let elapsed = measured_window(rt, run);
    if let Some(teardown) = teardown {
        rt.block_on(teardown);
    }
    elapsed
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Instructions per event of one side of one row, from a callgrind run of
/// this binary in `--one` mode; `None` without valgrind.
fn instructions(key: &str, side: Side, size: usize, n: usize) -> Option<f64> {
    let (size, count) = (size.to_string(), n.to_string());
    callgrind::instructions_per_event(&["--one", key, side.name(), &size, &count], n as u64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a listing
    }
    if let Some(i) = args.iter().position(|a| a == "--one") {
        // One round of one side, for callgrind.
        let key = &args[i + 1];
        let side = if args[i + 2] == "hand" {
            Side::Hand
        } else {
            Side::Crate
        };
        let size: usize = args[i + 3].parse().unwrap();
        let n: usize = args[i + 4].parse().unwrap();
        let server = NatsServer::with_jetstream();
        let rt = runtime();
        round(&rt, &server, key, side, &payload(size), n);
        return;
    }

    let only = std::env::var("NATS_BENCH_ONLY").unwrap_or_default();
    let size = env_usize("NATS_BENCH_SIZE", 256);
    let counted = env_usize("NATS_BENCH_COUNTED", 10_000);
    let with_instructions = std::env::var("NATS_BENCH_INSTRUCTIONS").as_deref() != Ok("0")
        && Command::new("valgrind")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    let p = payload(size);
    let server = NatsServer::with_jetstream();
    let rt = runtime();

    println!(
        "| path ({size} B payload) | hand-written, instructions/event | crate, instructions/event | ratio | hand-written, events/s | crate, events/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (key, title, n) in ROWS {
        if !key.contains(only.as_str()) {
            continue;
        }
        let n = scaled(n);
        let (mut hand, mut ours) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            let order = if r % 2 == 0 {
                [Side::Hand, Side::Crate]
            } else {
                [Side::Crate, Side::Hand]
            };
            for side in order {
                let d = round(&rt, &server, key, side, &p, n);
                match side {
                    Side::Hand => hand.push(d),
                    Side::Crate => ours.push(d),
                }
            }
        }
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let (hand_rate, our_rate) = (rate(median(hand)), rate(median(ours)));
        let (hand_ir, our_ir) = if with_instructions {
            (
                instructions(key, Side::Hand, size, counted),
                instructions(key, Side::Crate, size, counted),
            )
        } else {
            (None, None)
        };
        let ir = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.0}"));
        let ir_ratio = match (hand_ir, our_ir) {
            (Some(h), Some(o)) => format!("{:.2}", o / h),
            _ => "-".to_owned(),
        };
        println!(
            "| {title} | {} | {} | {ir_ratio} | {hand_rate:.0} | {our_rate:.0} | {:.2} |",
            ir(hand_ir),
            ir(our_ir),
            our_rate / hand_rate
        );
    }
}
