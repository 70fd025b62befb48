//! Consumer runtime throughput with a no-op handler, against a hand-written
//! loop over a typed subscription doing the same decode and ack, on the
//! in-memory bus. Both run in one process, alternating, five rounds each.
//!
//! Run with `cargo bench -p events --bench runtime`.

#![allow(missing_docs)]

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

async fn publish_all(bus: Bus) {
    let event = bus.event(payload());
    for _ in 0..EVENTS {
        bus.publish(&event).await.unwrap();
    }
}

/// The hand-written baseline: typed subscription, decode, ack.
async fn baseline() -> Duration {
    let bus = bus();
    let mut sub = bus
        .subscribe::<OrderPlaced>()
        .queue_group("bench")
        .await
        .unwrap();
    let start = Instant::now();
    let producer = tokio::spawn(publish_all(bus.clone()));
    let mut handled = 0;
    while handled < EVENTS {
        let delivery = sub.next().await.unwrap().unwrap();
        std::hint::black_box(delivery.payload());
        delivery.ack().await.unwrap();
        handled += 1;
    }
    let elapsed = start.elapsed();
    producer.await.unwrap();
    elapsed
}

#[derive(Clone)]
struct Counter {
    handled: Arc<AtomicU64>,
    done: Arc<Notify>,
}

async fn noop(event: Event<OrderPlaced>, ctx: Context<Counter>) -> Result<(), HandlerError> {
    std::hint::black_box(&event.payload);
    if ctx.state().handled.fetch_add(1, Ordering::Relaxed) + 1 == EVENTS {
        ctx.state().done.notify_one();
    }
    Ok(())
}

/// The runtime with a no-op handler, concurrency `concurrency`.
async fn runtime(concurrency: usize) -> Duration {
    let bus = bus();
    let counter = Counter {
        handled: Arc::default(),
        done: Arc::default(),
    };
    let done = counter.done.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = Consumer::new(&bus, "bench")
        .unwrap()
        .state(counter)
        .handle(noop)
        .retry(RetryPolicy::none())
        .concurrency(concurrency);
    let running = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    let producer = tokio::spawn(publish_all(bus.clone()));
    done.notified().await;
    let elapsed = start.elapsed();
    producer.await.unwrap();
    let _ = stop.send(());
    let summary = running.await.unwrap().unwrap();
    assert_eq!(summary.handled, EVENTS);
    elapsed
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn rate(d: Duration) -> f64 {
    EVENTS as f64 / d.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a listing
    }
    // One thread: the numbers then compare CPU work per event, not how the
    // scheduler spreads a producer and a consumer over two cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut base, mut run1, mut run16) = (Vec::new(), Vec::new(), Vec::new());
    if let Ok(only) = std::env::var("RUNTIME_BENCH_ONLY") {
        // For profiling one variant: `RUNTIME_BENCH_ONLY=16 perf record ...`.
        let concurrency = only.parse().unwrap_or(1);
        for _ in 0..ROUNDS {
            let d = if concurrency == 0 {
                rt.block_on(baseline())
            } else {
                rt.block_on(runtime(concurrency))
            };
            println!("{:.0} events/s", rate(d));
        }
        return;
    }
    for _ in 0..ROUNDS {
        base.push(rt.block_on(baseline()));
        run1.push(rt.block_on(runtime(1)));
        run16.push(rt.block_on(runtime(16)));
    }
    let (b, r1, r16) = (median(base), median(run1), median(run16));
    println!("memory bus, {EVENTS} events of 256 B, no-op handler, median of {ROUNDS} rounds");
    println!("  hand-written typed loop       {:>10.0} events/s", rate(b));
    println!(
        "  runtime, concurrency 1        {:>10.0} events/s  ratio {:.2}",
        rate(r1),
        rate(r1) / rate(b)
    );
    println!(
        "  runtime, concurrency 16       {:>10.0} events/s  ratio {:.2}",
        rate(r16),
        rate(r16) / rate(b)
    );
}
