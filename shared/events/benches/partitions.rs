//! Ordered scale-out on a stream partitioned by key: events/s of a
//! consumer ordered by key with 1, 2 and 3 instances, next to the same
//! consumer unordered, on one private nats-server (2.11 or later: set
//! `NATS_SERVER_BIN`; `scripts/bench.sh` uses the newest of the matrix).
//!
//! Each handler awaits 2 ms (a database write, say): what instances add is
//! parallelism, which per-key order limits to one event per key at a time.
//! 64 keys, 3 event types in turn per key, 16 partitions, concurrency 8
//! per instance. Instances start and learn of each other (3 s) before the
//! events are published; the clock runs from the first publish to the last
//! event handled. Rounds alternate the rows; the median counts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::backend::jetstream::{JetStreamConfig, JetStreamTransport, StreamConfig};
use events::backend::nats::NatsConfig;
use events::consumer::{Consumer, Context, HandlerError};
use events::testing::NatsServer;
use events::transport::{Capability, Subject};
use events::wire::ContentMode;
use events::{Bus, Event, EventPayload};
use serde::{Deserialize, Serialize};

const KEYS: usize = 64;
const PARTITIONS: u32 = 16;
const CONCURRENCY: usize = 8;
const WORK: Duration = Duration::from_millis(2);
const ROUNDS: usize = 3;

macro_rules! step {
    ($name:ident, $type:literal) => {
        #[derive(Debug, Clone, Serialize, Deserialize)]
        struct $name {
            n: u32,
        }
        impl EventPayload for $name {
            const TYPE: &'static str = $type;
        }
    };
}
step!(Opened, "bench.opened");
step!(Changed, "bench.changed");
step!(Closed, "bench.closed");

#[derive(Clone)]
struct Tally {
    handled: Arc<AtomicUsize>,
    all: Arc<tokio::sync::Notify>,
    n: usize,
}

impl Tally {
    fn bump(&self) {
        if self.handled.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.all.notify_one();
        }
    }
}

async fn work<T: EventPayload>(_: Event<T>, ctx: Context<Tally>) -> Result<(), HandlerError> {
    tokio::time::sleep(WORK).await;
    ctx.state().bump();
    Ok(())
}

async fn bus(url: &str, stream: &str, prefix: &str) -> Bus {
    let stream = StreamConfig::new(stream, [format!("{prefix}.>")]).partitions(PARTITIONS);
    let transport = JetStreamTransport::connect(JetStreamConfig::new(NatsConfig::new(url), stream))
        .await
        .unwrap();
    Bus::builder(transport)
        .source("bench")
        .prefix(prefix)
        .build()
        .unwrap()
}

/// Events/s of `instances` instances, ordered by key or not.
async fn run(url: &str, round: usize, instances: usize, ordered: bool, n: usize) -> f64 {
    let name = format!("R{round}I{instances}{}", if ordered { "O" } else { "U" });
    let prefix = name.to_lowercase();
    let tally = Tally {
        handled: Arc::default(),
        all: Arc::default(),
        n,
    };
    let producer = bus(url, &name, &prefix).await;
    assert!(producer
        .transport()
        .capabilities()
        .supports(Capability::OrderedAcrossInstances));
    let mut running = Vec::new();
    for _ in 0..instances {
        let bus = bus(url, &name, &prefix).await;
        let consumer = Consumer::new(&bus, "bench")
            .unwrap()
            .state(tally.clone())
            .ordered_by_key(ordered)
            .concurrency(CONCURRENCY)
            .dead_letter_subject(Subject::parse(&format!("{prefix}.dead.bench")).unwrap())
            .handle(work::<Opened>)
            .handle(work::<Changed>)
            .handle(work::<Closed>);
        running.push((consumer.start().await.unwrap(), bus));
    }
    // Instances learn of each other before the first event.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let codec = producer.codec().clone();
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let mut messages = Vec::with_capacity(n);
    for i in 0..n {
        let key = keys[i % KEYS].clone();
        let round = u32::try_from(i / KEYS).unwrap();
        let mode = ContentMode::Binary;
        messages.push(
            match round % 3 {
                0 => codec.encode(
                    &Event::new("bench", Opened { n: round }).with_subject(key),
                    mode,
                ),
                1 => codec.encode(
                    &Event::new("bench", Changed { n: round }).with_subject(key),
                    mode,
                ),
                _ => codec.encode(
                    &Event::new("bench", Closed { n: round }).with_subject(key),
                    mode,
                ),
            }
            .unwrap(),
        );
    }
    let notified = tally.all.notified();
    let started = Instant::now();
    for chunk in messages.chunks(1000) {
        for result in producer.transport().publish_batch(chunk.to_vec()).await {
            result.unwrap();
        }
    }
    tokio::time::timeout(Duration::from_secs(300), notified)
        .await
        .expect("every event handled within 300 s");
    let elapsed = started.elapsed();
    for (running, bus) in running {
        running.shutdown().await.unwrap();
        bus.close().await.unwrap();
    }
    producer.close().await.unwrap();
    n as f64 / elapsed.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale: f64 = std::env::var("NATS_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = ((6_000.0 * scale) as usize).max(KEYS * 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = NatsServer::with_jetstream();
    let url = server.url();
    let rows: [(&str, usize, bool); 5] = [
        ("unordered, 1 instance", 1, false),
        ("unordered, 3 instances", 3, false),
        ("ordered by key, 1 instance", 1, true),
        ("ordered by key, 2 instances", 2, true),
        ("ordered by key, 3 instances", 3, true),
    ];
    let mut rates = vec![Vec::new(); rows.len()];
    for round in 0..ROUNDS {
        for (i, (_, instances, ordered)) in rows.iter().enumerate() {
            rates[i].push(rt.block_on(run(&url, round * 10 + i, *instances, *ordered, n)));
        }
    }
    let base = median(rates[0].clone());
    println!(
        "| consumer ({n} events, {KEYS} keys x 3 types, {PARTITIONS} partitions, 2 ms handler, concurrency {CONCURRENCY} per instance) | events/s | vs unordered, 1 instance |"
    );
    println!("|---|---|---|");
    for ((name, _, _), rates) in rows.iter().zip(rates) {
        let rate = median(rates);
        println!("| {name} | {rate:.0} | {:.2} |", rate / base);
    }
}
