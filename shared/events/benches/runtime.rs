//! Consumer runtime with a no-op handler, against a hand-written loop over a
//! typed subscription doing the same decode and ack, on the in-memory bus,
//! with two measures per variant:
//!
//! - **events/s**, variants alternating, median of [`ROUNDS`];
//! - **instructions per event**: the bench runs itself under
//!   `valgrind --tool=callgrind`, one variant per process, counting only
//!   inside [`measured_window`] (`--toggle-collect`): publishing and
//!   handling the events; creating the bus, subscribing, starting the
//!   consumer and shutting it down are not counted. Skipped when `valgrind`
//!   is not on PATH or with `RUNTIME_BENCH_INSTRUCTIONS=0`.
//!
//! Run with `cargo bench -p events --bench runtime`. Environment:
//! `RUNTIME_BENCH_ONLY=<variant>` (hand, runtime-1, runtime-16) runs one
//! variant's rounds, for a profiler; `RUNTIME_BENCH_COUNTED` sets the events
//! of the callgrind runs (default 20000).

#![allow(missing_docs)]

#[path = "support/callgrind.rs"]
mod callgrind;

use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::backend::memory::{MemoryConfig, MemoryTransport};
use events::consumer::{Consumer, Context, HandlerError, RetryPolicy};
use events::{Bus, Event, EventPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer_id: String,
    total_cents: u64,
    note: String,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "orders.order_placed";
}

const EVENTS: u64 = 50_000;
const ROUNDS: usize = 5;

/// The variants: key (for `RUNTIME_BENCH_ONLY` and the callgrind runs),
/// title, and the runtime's concurrency (`None`: the hand-written loop).
const VARIANTS: [(&str, &str, Option<usize>); 3] = [
    ("hand", "hand-written typed loop", None),
    ("runtime-1", "runtime, concurrency 1", Some(1)),
    ("runtime-16", "runtime, concurrency 16", Some(16)),
];

fn payload() -> OrderPlaced {
    OrderPlaced {
        order_id: "o-0000001".into(),
        customer_id: "c-42".into(),
        total_cents: 4200,
        note: "x".repeat(190),
    }
}

fn bus() -> Bus {
    let transport = MemoryTransport::with_config(MemoryConfig::new().capacity(4096));
    Bus::builder(transport).source("bench").build().unwrap()
}

async fn publish_all(bus: Bus, n: u64) {
    let event = bus.event(payload());
    for _ in 0..n {
        bus.publish(&event).await.unwrap();
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A prepared round: the measured part, then what tears it down.
struct Round {
    run: BoxFuture<Duration>,
    teardown: BoxFuture<()>,
}

/// Everything done here is counted by callgrind (the name is what
/// `--toggle-collect` matches); nothing else is.
#[inline(never)]
fn measured_window(rt: &tokio::runtime::Runtime, run: BoxFuture<Duration>) -> Duration {
    rt.block_on(run)
}

/// The hand-written baseline: typed subscription, decode, ack.
async fn baseline(n: u64) -> Round {
    let bus = bus();
    let mut sub = bus
        .subscribe::<OrderPlaced>()
        .queue_group("bench")
        .await
        .unwrap();
    Round {
        run: Box::pin(async move {
            let start = Instant::now();
            let producer = tokio::spawn(publish_all(bus.clone(), n));
            let mut handled = 0;
            while handled < n {
                let delivery = sub.next().await.unwrap().unwrap();
                std::hint::black_box(delivery.payload());
                delivery.ack().await.unwrap();
                handled += 1;
            }
            let elapsed = start.elapsed();
            producer.await.unwrap();
            elapsed
        }),
        teardown: Box::pin(async {}),
    }
}

#[derive(Clone)]
struct Counter {
    handled: Arc<AtomicU64>,
    target: u64,
    done: Arc<Notify>,
}

async fn noop(event: Event<OrderPlaced>, ctx: Context<Counter>) -> Result<(), HandlerError> {
    std::hint::black_box(&event.payload);
    let state = ctx.state();
    if state.handled.fetch_add(1, Ordering::Relaxed) + 1 == state.target {
        state.done.notify_one();
    }
    Ok(())
}

/// The runtime with a no-op handler, concurrency `concurrency`, started
/// (subscribed) before the round begins.
async fn runtime(concurrency: usize, n: u64) -> Round {
    let bus = bus();
    let counter = Counter {
        handled: Arc::default(),
        target: n,
        done: Arc::default(),
    };
    let done = counter.done.clone();
    let running = Consumer::new(&bus, "bench")
        .unwrap()
        .state(counter)
        .handle(noop)
        .retry(RetryPolicy::none())
        .concurrency(concurrency)
        .start()
        .await
        .unwrap();
    Round {
        run: Box::pin(async move {
            let start = Instant::now();
            let producer = tokio::spawn(publish_all(bus.clone(), n));
            done.notified().await;
            let elapsed = start.elapsed();
            producer.await.unwrap();
            elapsed
        }),
        teardown: Box::pin(async move {
            let summary = running.shutdown().await.unwrap();
            assert_eq!(summary.handled, n);
        }),
    }
}

/// One round of one variant.
fn round(rt: &tokio::runtime::Runtime, concurrency: Option<usize>, n: u64) -> Duration {
    let Round { run, teardown } = rt.block_on(async {
        match concurrency {
            None => baseline(n).await,
            Some(c) => runtime(c, n).await,
        }
    });
    let elapsed = measured_window(rt, run);
    rt.block_on(teardown);
    elapsed
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn rate(d: Duration) -> f64 {
    EVENTS as f64 / d.as_secs_f64()
}

/// Instructions per event of one variant, from a callgrind run of this
/// binary in `--one` mode; `None` without valgrind.
fn instructions(key: &str, n: u64) -> Option<f64> {
    callgrind::instructions_per_event(&["--one", key, &n.to_string()], n)
}

fn concurrency_of(key: &str) -> Option<usize> {
    VARIANTS
        .iter()
        .find(|(k, _, _)| *k == key)
        .unwrap_or_else(|| panic!("no variant {key:?}"))
        .2
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a listing
    }
    // One thread: the numbers then compare CPU work per event, not how the
    // scheduler spreads a producer and a consumer over two cores; and
    // callgrind counts every task of the variant.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(i) = args.iter().position(|a| a == "--one") {
        // One round of one variant, for callgrind.
        let n: u64 = args[i + 2].parse().unwrap();
        round(&rt, concurrency_of(&args[i + 1]), n);
        return;
    }
    if let Ok(only) = std::env::var("RUNTIME_BENCH_ONLY") {
        // For profiling one variant: `RUNTIME_BENCH_ONLY=runtime-16 perf record ...`.
        let concurrency = concurrency_of(&only);
        for _ in 0..ROUNDS {
            println!("{:.0} events/s", rate(round(&rt, concurrency, EVENTS)));
        }
        return;
    }
    let counted = std::env::var("RUNTIME_BENCH_COUNTED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let with_instructions = std::env::var("RUNTIME_BENCH_INSTRUCTIONS").as_deref() != Ok("0")
        && Command::new("valgrind")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); VARIANTS.len()];
    for _ in 0..ROUNDS {
        for (i, (_, _, concurrency)) in VARIANTS.iter().enumerate() {
            times[i].push(round(&rt, *concurrency, EVENTS));
        }
    }
    let rates: Vec<f64> = times.into_iter().map(|t| rate(median(t))).collect();
    let irs: Vec<Option<f64>> = VARIANTS
        .iter()
        .map(|(key, _, _)| {
            if with_instructions {
                instructions(key, counted)
            } else {
                None
            }
        })
        .collect();
    println!("memory bus, {EVENTS} events of 256 B, no-op handler, median of {ROUNDS} rounds; instructions/event over {counted} events (callgrind)");
    println!(
        "  {:<30} {:>10}  {:>5}  {:>12}  {:>5}",
        "", "events/s", "ratio", "instr/event", "ratio"
    );
    for (i, (_, title, _)) in VARIANTS.iter().enumerate() {
        let ir = irs[i].map_or("-".to_owned(), |x| format!("{x:.0}"));
        let ir_ratio = match (irs[0], irs[i]) {
            (Some(h), Some(o)) => format!("{:.2}", o / h),
            _ => "-".to_owned(),
        };
        println!(
            "  {title:<30} {:>10.0}  {:>5.2}  {ir:>12}  {ir_ratio:>5}",
            rates[i],
            rates[i] / rates[0],
        );
    }
}
