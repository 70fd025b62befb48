//! Encode/decode of a 256-byte payload in both content modes, the same for
//! a 256-byte payload of floats (what float parsing costs), and the
//! in-memory bus from publish to typed receive.
//!
//! Run with `cargo bench -p events --bench codec`. Before the timings it
//! prints the heap allocations per operation, counted by a wrapping global
//! allocator.
//!
//! With `CODEC_BENCH_RUN=<payload>:<case>:<iterations>` set (payload `usual`
//! or `floats`; case `decode_structured`, `decode_structured_one_pass`,
//! `decode_binary`, `baseline_serde_json_decode` or `none`) the binary runs
//! that decode a fixed number of times and exits, for counting
//! instructions under `valgrind --tool=cachegrind`: on a shared machine
//! wall-clock timings move by more than the differences worth measuring,
//! instruction counts do not.

// A counting global allocator needs `unsafe impl GlobalAlloc`; the library itself forbids unsafe code.
#![allow(unsafe_code, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use events::backend::memory::{MemoryConfig, MemoryTransport};
use events::versioning::{Upcasters, VersionPolicy};
use events::wire::{self, Codec, ContentMode};
use events::{Bus, Event, EventPayload};
use serde::{Deserialize, Serialize};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

/// A payload whose JSON is 256 bytes.
fn payload() -> OrderPlaced {
    let mut p = OrderPlaced {
        order_id: "o-0000001".into(),
        customer_id: "c-42".into(),
        total_cents: 4200,
        note: String::new(),
    };
    let base = serde_json::to_vec(&p).unwrap().len();
    p.note = "x".repeat(256 - base);
    assert_eq!(serde_json::to_vec(&p).unwrap().len(), 256);
    p
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measured {
    sensor: String,
    readings: Vec<f64>,
}

impl EventPayload for Measured {
    const TYPE: &'static str = "sensors.measured";
}

/// A payload whose JSON is 256 bytes, nearly all of it 12 floats written
/// with 16 or 17 significant digits (measurements, coordinates, prices
/// computed in floating point): the numbers whose parsing is slowest.
fn float_payload() -> Measured {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let readings = (0..12)
        .map(|_| {
            // xorshift64: fixed, evenly spread values in [0, 10000).
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 10_000.0
        })
        .collect();
    let mut p = Measured {
        sensor: String::new(),
        readings,
    };
    let base = serde_json::to_vec(&p).unwrap().len();
    assert!(base <= 256, "{base}");
    p.sensor = "s".repeat(256 - base);
    assert_eq!(serde_json::to_vec(&p).unwrap().len(), 256);
    p
}

fn allocations_per<F: FnMut()>(mut f: F) -> f64 {
    const N: u64 = 10_000;
    f();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..N {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64
}

fn report_allocations() {
    let codec = Codec::default();
    let event = Event::new("orders", payload());
    let structured = codec.encode(&event, ContentMode::Structured).unwrap();
    let binary = codec.encode(&event, ContentMode::Binary).unwrap();
    let up = Upcasters::new();
    println!("allocations per operation (256-byte payload):");
    println!(
        "  new event (id + time)      {:>5.1}",
        allocations_per(|| drop(Event::new("orders", payload())))
            - allocations_per(|| drop(payload()))
    );
    println!(
        "  encode structured          {:>5.1}",
        allocations_per(|| drop(codec.encode(&event, ContentMode::Structured).unwrap()))
    );
    println!(
        "  encode binary              {:>5.1}",
        allocations_per(|| drop(codec.encode(&event, ContentMode::Binary).unwrap()))
    );
    println!(
        "  decode structured (typed)  {:>5.1}",
        allocations_per(|| drop(
            wire::decode(&structured)
                .unwrap()
                .into_event::<OrderPlaced>(&up, VersionPolicy::Reject)
                .unwrap()
        ))
    );
    println!(
        "  decode binary (typed)      {:>5.1}",
        allocations_per(|| drop(
            wire::decode(&binary)
                .unwrap()
                .into_event::<OrderPlaced>(&up, VersionPolicy::Reject)
                .unwrap()
        ))
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = Bus::builder(MemoryTransport::with_config(
            MemoryConfig::new().capacity(16),
        ))
        .source("orders")
        .build()
        .unwrap();
        let mut sub = bus.subscribe::<OrderPlaced>().await.unwrap();
        let event = bus.event(payload());
        const N: u64 = 10_000;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..N {
            bus.publish(&event).await.unwrap();
            sub.next().await.unwrap().unwrap().ack().await.unwrap();
        }
        let per = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64;
        println!("  memory publish -> typed receive -> ack (structured) {per:>5.1}");
    });
}

fn codec_benches(c: &mut Criterion) {
    report_allocations();
    let codec = Codec::default();
    let event = Event::new("orders", payload());
    let up = Upcasters::new();
    let mut group = c.benchmark_group("codec_256B");
    group.throughput(Throughput::Elements(1));
    for (name, mode) in [
        ("structured", ContentMode::Structured),
        ("binary", ContentMode::Binary),
    ] {
        group.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| codec.encode(&event, mode).unwrap())
        });
        let message = codec.encode(&event, mode).unwrap();
        group.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                wire::decode(&message)
                    .unwrap()
                    .into_event::<OrderPlaced>(&up, VersionPolicy::Reject)
                    .unwrap()
            })
        });
    }
    // The hand-written baseline: serde_json of a plain struct, no envelope.
    let p = payload();
    group.bench_function("baseline_serde_json_encode", |b| {
        b.iter(|| serde_json::to_vec(&p).unwrap())
    });
    let bytes = serde_json::to_vec(&p).unwrap();
    group.bench_function("baseline_serde_json_decode", |b| {
        b.iter(|| serde_json::from_slice::<OrderPlaced>(&bytes).unwrap())
    });
    group.bench_function("new_event", |b| {
        b.iter_batched(payload, |p| Event::new("orders", p), BatchSize::SmallInput)
    });
    // What typed subscriptions and the consumer runtime do: one pass.
    let message = codec.encode(&event, ContentMode::Structured).unwrap();
    group.bench_function("decode_structured_one_pass", |b| {
        b.iter(|| wire::decode_event::<OrderPlaced>(&message, &up, VersionPolicy::Reject).unwrap())
    });
    group.finish();

    // The same decodes over a payload that is mostly floats: the rows that
    // show what correctly rounded float parsing costs.
    let event = Event::new("sensors", float_payload());
    let mut group = c.benchmark_group("codec_floats_256B");
    group.throughput(Throughput::Elements(1));
    for (name, mode) in [
        ("structured", ContentMode::Structured),
        ("binary", ContentMode::Binary),
    ] {
        let message = codec.encode(&event, mode).unwrap();
        group.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                wire::decode(&message)
                    .unwrap()
                    .into_event::<Measured>(&up, VersionPolicy::Reject)
                    .unwrap()
            })
        });
    }
    let message = codec.encode(&event, ContentMode::Structured).unwrap();
    group.bench_function("decode_structured_one_pass", |b| {
        b.iter(|| wire::decode_event::<Measured>(&message, &up, VersionPolicy::Reject).unwrap())
    });
    let bytes = serde_json::to_vec(&event.payload).unwrap();
    group.bench_function("baseline_serde_json_decode", |b| {
        b.iter(|| serde_json::from_slice::<Measured>(&bytes).unwrap())
    });
    group.finish();
}

fn memory_bus_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("memory_bus_256B");
    const BATCH: u64 = 1000;
    group.throughput(Throughput::Elements(BATCH));
    for (name, mode) in [
        ("structured", ContentMode::Structured),
        ("binary", ContentMode::Binary),
    ] {
        let (bus, sub) = rt.block_on(async {
            let bus = Bus::builder(MemoryTransport::with_config(
                MemoryConfig::new().capacity(BATCH as usize),
            ))
            .source("orders")
            .content_mode(mode)
            .build()
            .unwrap();
            let sub = bus.subscribe::<OrderPlaced>().await.unwrap();
            (bus, sub)
        });
        let event = bus.event(payload());
        let mut sub = sub;
        group.bench_function(format!("publish_receive_ack_{name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    for _ in 0..BATCH {
                        bus.publish(&event).await.unwrap();
                    }
                    for _ in 0..BATCH {
                        sub.next().await.unwrap().unwrap().ack().await.unwrap();
                    }
                })
            })
        });
    }
    group.finish();
}

/// Runs `case` on `event` `iterations` times (see the module docs).
fn fixed_run<T: EventPayload + serde::de::DeserializeOwned>(
    event: Event<T>,
    case: &str,
    iterations: u64,
) {
    use std::hint::black_box;
    let codec = Codec::default();
    let up = Upcasters::new();
    let structured = codec.encode(&event, ContentMode::Structured).unwrap();
    let binary = codec.encode(&event, ContentMode::Binary).unwrap();
    let bytes = serde_json::to_vec(&event.payload).unwrap();
    let general = |m: &events::transport::Message| {
        wire::decode(black_box(m))
            .unwrap()
            .into_event::<T>(&up, VersionPolicy::Reject)
            .unwrap()
    };
    for _ in 0..iterations {
        match case {
            "decode_structured" => drop(black_box(general(&structured))),
            "decode_binary" => drop(black_box(general(&binary))),
            "decode_structured_one_pass" => drop(black_box(
                wire::decode_event::<T>(black_box(&structured), &up, VersionPolicy::Reject)
                    .unwrap(),
            )),
            "baseline_serde_json_decode" => drop(black_box(
                serde_json::from_slice::<T>(black_box(&bytes)).unwrap(),
            )),
            "none" => {}
            other => panic!("unknown case {other:?}"),
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = codec_benches, memory_bus_benches
}

fn main() {
    if let Ok(spec) = std::env::var("CODEC_BENCH_RUN") {
        let parts: Vec<&str> = spec.split(':').collect();
        let [payload, case, iterations] = parts[..] else {
            panic!("CODEC_BENCH_RUN is <payload>:<case>:<iterations>, not {spec:?}");
        };
        let iterations = iterations.parse().expect("a number of iterations");
        match payload {
            "usual" => fixed_run(Event::new("orders", self::payload()), case, iterations),
            "floats" => fixed_run(Event::new("sensors", float_payload()), case, iterations),
            other => panic!("unknown payload {other:?}"),
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
