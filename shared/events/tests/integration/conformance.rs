//! One conformance suite, written once against the transport trait and the
//! typed bus, run against every backend.
//!
//! A backend joins with one line:
//! `conformance_suite!(my_backend, || async { Arc::new(MyTransport::new()) as Arc<dyn Transport> });`
//! Each case gets a fresh transport and a unique subject prefix. The
//! backend's declared capabilities decide which cases apply, and for every
//! capability it does *not* declare a case checks that it is really absent,
//! so a declaration cannot lie in either direction.
//!
//! Backends must make a subscription effective before `subscribe` returns
//! (core NATS: the SUB has reached the server).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::transport::{Capability, Transport};
use events::{Bus, ErrorKind, Event};

use crate::support::Ping;

/// How long a case waits for something that should arrive.
const ARRIVE: Duration = Duration::from_secs(10);
/// How long a case watches for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// A subject prefix no other case uses: `conf.p<pid>x<n>`. The fixed first
/// token lets a JetStream backend capture every case with one stream
/// (`conf.>`, plus `deadletter.>` for the runtime's dead letters).
pub fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("conf.p{}x{n}", std::process::id())
}

pub async fn bus_on<F, Fut>(make: &F) -> Bus
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let transport = make().await;
    Bus::builder_shared(transport)
        .source("conformance")
        .prefix(unique_prefix())
        .build()
        .unwrap()
}

fn ping(bus: &Bus, seq: u64) -> Event<Ping> {
    bus.event(Ping {
        seq,
        note: format!("n{seq}"),
    })
}

async fn next_ping(sub: &mut events::bus::Subscriber<Ping>) -> events::bus::Delivery<Ping> {
    tokio::time::timeout(ARRIVE, sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
        .expect("decodes")
}

async fn quiet(sub: &mut events::bus::Subscriber<Ping>) -> bool {
    tokio::time::timeout(QUIET, sub.next()).await.is_err()
}

fn supports(bus: &Bus, c: Capability) -> bool {
    bus.transport().capabilities().supports(c)
}

pub async fn many_events_arrive_once_each<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let mut sub = bus.subscribe::<Ping>().capacity(4096).await.unwrap();
    let sent: Vec<_> = (0..1000).map(|i| ping(&bus, i)).collect();
    for e in &sent {
        bus.publish(e).await.unwrap();
    }
    let mut ids = HashSet::new();
    for _ in 0..sent.len() {
        let d = next_ping(&mut sub).await;
        assert!(
            ids.insert(d.metadata().id().to_owned()),
            "duplicate {}",
            d.metadata().id()
        );
        d.ack().await.unwrap();
    }
    let expected: HashSet<_> = sent.iter().map(|e| e.metadata.id().to_owned()).collect();
    assert_eq!(ids, expected);
    assert!(quiet(&mut sub).await, "nothing more than was sent");
    bus.close().await.unwrap();
}

pub async fn concurrent_publishers_reach_concurrent_subscribers<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(bus.subscribe::<Ping>().capacity(4096).await.unwrap());
    }
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    bus.publish(&ping(&bus, p * 1000 + i)).await.unwrap();
                }
            })
        })
        .collect();
    let ordered = supports(&bus, Capability::OrderedPerPublisher);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                let mut last: HashMap<u64, u64> = HashMap::new();
                for _ in 0..800 {
                    let d = next_ping(&mut sub).await;
                    let seq = d.payload().seq;
                    if ordered {
                        let (publisher, i) = (seq / 1000, seq % 1000);
                        if let Some(prev) = last.insert(publisher, i) {
                            assert!(i > prev, "publisher {publisher}: {i} after {prev}");
                        }
                    }
                    assert!(seen.insert(seq), "duplicate {seq}");
                    d.ack().await.unwrap();
                }
                seen.len()
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), 800);
    }
    bus.close().await.unwrap();
}

pub async fn queue_groups_share_and_fan_out_reaches_everyone<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    if !supports(&bus, Capability::QueueGroups) {
        let err = bus.subscribe::<Ping>().queue_group("g").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        return;
    }
    let mut group = Vec::new();
    for _ in 0..3 {
        group.push(
            bus.subscribe::<Ping>()
                .queue_group("workers")
                .await
                .unwrap(),
        );
    }
    let mut fan_a = bus.subscribe::<Ping>().await.unwrap();
    let mut fan_b = bus.subscribe::<Ping>().await.unwrap();
    for i in 0..60 {
        bus.publish(&ping(&bus, i)).await.unwrap();
    }
    let mut shared = Vec::new();
    let mut members_used = 0;
    for member in &mut group {
        let mut got = 0;
        while let Ok(Some(Ok(d))) = tokio::time::timeout(QUIET, member.next()).await {
            shared.push(d.payload().seq);
            got += 1;
            d.ack().await.unwrap();
        }
        if got > 0 {
            members_used += 1;
        }
    }
    shared.sort_unstable();
    assert_eq!(
        shared,
        (0..60).collect::<Vec<_>>(),
        "each event to exactly one member"
    );
    assert!(members_used >= 2, "load is shared");
    for fan in [&mut fan_a, &mut fan_b] {
        for i in 0..60 {
            assert_eq!(next_ping(fan).await.payload().seq, i);
        }
    }
    bus.close().await.unwrap();
}

pub async fn nack_redelivers_ack_and_term_do_not<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let mut sub = bus.subscribe::<Ping>().await.unwrap();
    bus.publish(&ping(&bus, 1)).await.unwrap();
    let first = next_ping(&mut sub).await;
    assert_eq!(first.attempt(), 1);
    if !supports(&bus, Capability::Redelivery) {
        assert_eq!(
            first.nack(None).await.unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        assert!(
            quiet(&mut sub).await,
            "no redelivery where none is declared"
        );
        return;
    }
    first.nack(None).await.unwrap();
    let second = next_ping(&mut sub).await;
    assert_eq!(second.payload().seq, 1);
    assert_eq!(second.attempt(), 2);
    second.ack().await.unwrap();
    assert!(quiet(&mut sub).await, "ack does not redeliver");

    bus.publish(&ping(&bus, 2)).await.unwrap();
    next_ping(&mut sub).await.term().await.unwrap();
    assert!(quiet(&mut sub).await, "term does not redeliver");
    bus.close().await.unwrap();
}

pub async fn delayed_redelivery_waits_at_least_the_delay<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    if !supports(&bus, Capability::DelayedRedelivery) {
        return; // Covered by the redelivery case: nack is refused or immediate.
    }
    let mut sub = bus.subscribe::<Ping>().await.unwrap();
    bus.publish(&ping(&bus, 1)).await.unwrap();
    let delay = Duration::from_millis(800);
    let nacked = Instant::now();
    next_ping(&mut sub).await.nack(Some(delay)).await.unwrap();
    let again = next_ping(&mut sub).await;
    assert!(
        nacked.elapsed() >= delay,
        "redelivered after {:?}",
        nacked.elapsed()
    );
    assert_eq!(again.attempt(), 2);
    again.ack().await.unwrap();
    bus.close().await.unwrap();
}

pub async fn history_and_durability_match_the_declaration<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    if !supports(&bus, Capability::Persistent) {
        bus.publish(&ping(&bus, 1)).await.unwrap();
        let mut late = bus.subscribe::<Ping>().await.unwrap();
        assert!(quiet(&mut late).await, "no history where none is declared");
    }
    if !supports(&bus, Capability::Durable) {
        let err = bus.subscribe::<Ping>().durable("d").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
    bus.close().await.unwrap();
}

pub async fn metadata_arrives_exactly_in_both_modes<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    use events::envelope::TraceContext;
    use events::wire::ContentMode;
    let bus = bus_on(&make).await;
    let mut sub = bus.subscribe::<Ping>().await.unwrap();
    for mode in [ContentMode::Structured, ContentMode::Binary] {
        let mut e = ping(&bus, 7)
            .with_subject("key with spaces € and \"quotes\"")
            .with_correlation_id("corr")
            .with_trace(
                TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                    .unwrap()
                    .with_tracestate("a=b"),
            )
            .with_extension("tenant", "acme")
            .unwrap();
        e.metadata.set_causation_id(Some("cause".into()));
        let sent = bus.encode(&e, mode).unwrap();
        bus.publish_with(&e, mode).await.unwrap();
        let d = next_ping(&mut sub).await;
        assert_eq!(d.event(), &e, "{mode:?}");
        assert_eq!(
            d.message().payload,
            sent.payload,
            "body byte-exact ({mode:?})"
        );
        for (name, value) in sent.headers.iter() {
            assert_eq!(
                d.message().headers.get(name),
                Some(value),
                "header {name} ({mode:?})"
            );
        }
        d.ack().await.unwrap();
    }
    bus.close().await.unwrap();
}

pub async fn large_payloads_up_to_the_limit<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let limit = bus.transport().capabilities().max_message_size;
    let mut sub = bus.subscribe::<Ping>().await.unwrap();
    // Find the largest note that still fits, then one byte more.
    let overhead = bus
        .encode(&ping(&bus, 0), Default::default())
        .unwrap()
        .wire_len()
        - "n0".len();
    let fits = Ping {
        seq: 1,
        note: "x".repeat(limit - overhead),
    };
    let event = bus.event(fits);
    assert!(bus.encode(&event, Default::default()).unwrap().wire_len() <= limit);
    bus.publish(&event).await.unwrap();
    let d = next_ping(&mut sub).await;
    assert_eq!(d.payload().note.len(), limit - overhead);
    d.ack().await.unwrap();
    let too_big = bus.event(Ping {
        seq: 2,
        note: "x".repeat(limit - overhead + 64),
    });
    assert_eq!(
        bus.publish(&too_big).await.unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );
    bus.close().await.unwrap();
}

pub async fn close_refuses_work_and_loses_nothing_acknowledged<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let mut sub = bus.subscribe::<Ping>().capacity(4096).await.unwrap();
    for i in 0..500 {
        bus.publish(&ping(&bus, i)).await.unwrap();
    }
    bus.close().await.unwrap();
    let err = bus.publish(&ping(&bus, 999)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    // Every publish that returned Ok reaches the open subscription before
    // its stream ends, in order, once.
    let mut seqs = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(ARRIVE, sub.next()).await {
        let d = item.expect("decodes");
        seqs.push(d.payload().seq);
        let _ = d.ack().await;
    }
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "in order, no gaps, no duplicates"
    );
    if supports(&bus, Capability::Redelivery) {
        assert_eq!(seqs.len(), 500);
    } else {
        // Core NATS: closing drains this connection's own subscription from
        // the server, which may end it before the last messages come back.
        // `nats::close_delivers_everything_published_before_it` checks with a
        // second connection that the server got every one of them.
        assert!(!seqs.is_empty());
    }
}

/// Generates one `#[tokio::test]` per case for a backend.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance as c;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn many_events_arrive_once_each() {
                c::many_events_arrive_once_each($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_publishers_reach_concurrent_subscribers() {
                c::concurrent_publishers_reach_concurrent_subscribers($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn queue_groups_share_and_fan_out_reaches_everyone() {
                c::queue_groups_share_and_fan_out_reaches_everyone($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nack_redelivers_ack_and_term_do_not() {
                c::nack_redelivers_ack_and_term_do_not($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delayed_redelivery_waits_at_least_the_delay() {
                c::delayed_redelivery_waits_at_least_the_delay($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn history_and_durability_match_the_declaration() {
                c::history_and_durability_match_the_declaration($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn metadata_arrives_exactly_in_both_modes() {
                c::metadata_arrives_exactly_in_both_modes($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn large_payloads_up_to_the_limit() {
                c::large_payloads_up_to_the_limit($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_refuses_work_and_loses_nothing_acknowledged() {
                c::close_refuses_work_and_loses_nothing_acknowledged($make).await
            }
        }
    };
}

#[cfg(feature = "memory")]
conformance_suite!(memory, || async {
    Arc::new(events::backend::memory::MemoryTransport::new()) as Arc<dyn Transport>
});
