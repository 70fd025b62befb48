//! Subscription and consumer lifecycles on every backend: names that never
//! re-target a subscription, readiness, and shutdowns that release what was
//! fetched ahead at once and in key order (`lifecycle_suite!`), plus the
//! JetStream-only parts (consumer settings, ephemeral consumers, confirmed
//! acks).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::consumer::{Consumer, Context, HandlerError};
use events::transport::{Capability, Transport};
use events::{Bus, ErrorKind, Event, EventPayload};
use serde::{Deserialize, Serialize};

use crate::conformance::bus_on;
use crate::support::server_rewinds_redeliveries;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    pub key: String,
    pub n: u32,
}
impl EventPayload for Placed {
    const TYPE: &'static str = "life.placed";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    pub key: String,
}
impl EventPayload for Cancelled {
    const TYPE: &'static str = "life.cancelled";
}

const ARRIVE: Duration = Duration::from_secs(20);
/// Well under the ack wait the tests set (30 s): a release must beat it.
const PROMPT: Duration = Duration::from_secs(8);
/// The ack wait of the release tests.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// Whether `bus` hands a released delivery to another reader at once:
/// memory and JetStream do; core NATS never redelivers.
fn releases_at_once(bus: &Bus) -> bool {
    bus.transport()
        .capabilities()
        .supports(Capability::Redelivery)
}

async fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Item: a durable or queue-group name used for two event types. The second
/// subscription must either be refused with a typed error (JetStream: the
/// name is one consumer with one filter) or live beside the first (memory,
/// core NATS: groups are per subject); never take over the first one's
/// consumer, whose events would then go unread or arrive undecodable.
pub async fn one_name_for_two_types_never_moves_the_first_subscription<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let durable = bus.transport().capabilities().supports(Capability::Durable);
    for use_durable in [false, true] {
        if use_durable && !durable {
            continue;
        }
        let name = if use_durable { "inventory" } else { "workers" };
        let subscribe_placed = bus.subscribe::<Placed>();
        let mut placed = if use_durable {
            subscribe_placed.durable(name).await.unwrap()
        } else {
            subscribe_placed.queue_group(name).await.unwrap()
        };
        let subscribe_cancelled = bus.subscribe::<Cancelled>();
        let cancelled = if use_durable {
            subscribe_cancelled.durable(name).await
        } else {
            subscribe_cancelled.queue_group(name).await
        };
        let mut cancelled = match cancelled {
            Ok(sub) => {
                assert_ne!(
                    bus.transport().name(),
                    "jetstream",
                    "a JetStream consumer name reads one filter"
                );
                Some(sub)
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
                assert!(e.to_string().contains(name), "{e}");
                None
            }
        };
        for n in 0..5 {
            let key = format!("k{n}");
            bus.publish(&bus.event(Placed {
                key: key.clone(),
                n,
            }))
            .await
            .unwrap();
            bus.publish(&bus.event(Cancelled { key })).await.unwrap();
        }
        for n in 0..5 {
            let d = tokio::time::timeout(ARRIVE, placed.next())
                .await
                .expect("the first subscription keeps its events")
                .expect("open")
                .expect("an event of the first subscription's own type");
            assert_eq!(d.payload().n, n);
            d.ack().await.unwrap();
        }
        if let Some(cancelled) = &mut cancelled {
            for n in 0..5 {
                let d = tokio::time::timeout(ARRIVE, cancelled.next())
                    .await
                    .expect("the second subscription gets its own type")
                    .expect("open")
                    .expect("an event of its own type");
                assert_eq!(d.payload().key, format!("k{n}"));
                d.ack().await.unwrap();
            }
        }
    }
    bus.close().await.unwrap();
}

/// Items: a closed or dropped subscriber does not keep what it fetched
/// ahead for the ack wait; another member of its group gets it at once.
pub async fn a_closed_or_dropped_subscriber_releases_what_it_fetched<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    if !releases_at_once(&bus) {
        return; // Core NATS: at-most-once, nothing to release into.
    }
    // nats-server before 2.10.14 can deliver the last message of a
    // consumer once more when a redelivery finds only an abandoned pull
    // (see `server_rewinds_redeliveries`): there a second copy is allowed.
    let rewinds = bus.transport().name() == "jetstream" && server_rewinds_redeliveries();
    for (round, close) in [(0, true), (1, false)] {
        let subscribe = || {
            bus.subscribe::<Placed>()
                .queue_group("workers")
                .ack_wait(ACK_WAIT)
        };
        let mut first = subscribe().await.unwrap();
        // Numbered apart from the other round's.
        let numbers = round * 20..round * 20 + 20;
        for n in numbers.clone() {
            bus.publish(&bus.event(Placed { key: "k".into(), n }))
                .await
                .unwrap();
        }
        let d = tokio::time::timeout(ARRIVE, first.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let taken = d.payload().n;
        d.ack().await.unwrap();
        // Whatever the first member has not handed out yet is released.
        let mut second = subscribe().await.unwrap();
        let started = Instant::now();
        if close {
            first.close().await;
        } else {
            drop(first);
        }
        let mut rest = Vec::new();
        let mut late = false;
        while rest.len() < 19 {
            let d = match tokio::time::timeout(PROMPT, second.next()).await {
                Ok(d) => d,
                // The same bug: the released message the server handed to
                // an expired pull comes back after the ack wait, once.
                Err(_) if rewinds && !late => {
                    late = true;
                    tokio::time::timeout(ACK_WAIT + ARRIVE, second.next())
                        .await
                        .unwrap_or_else(|_| panic!("not even after the ack wait: {rest:?}"))
                }
                Err(_) => panic!(
                    "released at once, not after the ack wait (close: {close}); got {rest:?}"
                ),
            }
            .unwrap()
            .unwrap();
            let n = d.payload().n;
            d.ack().await.unwrap();
            if n == taken || rest.contains(&n) || !numbers.contains(&n) {
                assert!(
                    rewinds,
                    "{n} delivered twice (close: {close}); got {rest:?}"
                );
                continue;
            }
            rest.push(n);
        }
        assert!(late || started.elapsed() < PROMPT);
        rest.push(taken);
        rest.sort_unstable();
        assert_eq!(rest, numbers.collect::<Vec<_>>(), "close: {close}");
        second.close().await;
    }
    bus.close().await.unwrap();
}

/// Item: `start` returns once the consumer is subscribed, so an event
/// published right after is handled, on every backend (a memory or core
/// subscription made late would miss it).
pub async fn an_event_published_right_after_start_is_handled<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    for round in 0..5u32 {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let running = Consumer::new(&bus, &format!("ready{round}"))
            .unwrap()
            .state(seen.clone())
            .handle(
                |e: Event<Placed>, ctx: Context<Arc<Mutex<Vec<u32>>>>| async move {
                    ctx.state().lock().unwrap().push(e.payload.n);
                    Ok::<_, HandlerError>(())
                },
            )
            .start()
            .await
            .unwrap();
        bus.publish(&bus.event(Placed {
            key: "k".into(),
            n: round,
        }))
        .await
        .unwrap();
        wait_until("the event published right after start", ARRIVE, || {
            seen.lock().unwrap().contains(&round)
        })
        .await;
        let summary = running.shutdown().await.unwrap();
        assert!(summary.handled >= 1);
    }
    bus.close().await.unwrap();
}

type Log = Arc<Mutex<Vec<(String, u32)>>>;

/// Items: a shutdown releases the events it fetched and never started at
/// once (not after the ack wait), and the events of an ordered key come
/// back in order, where the broker keeps the order of what is nacked: the
/// unfinished first one, then its successors.
pub async fn shutdown_releases_unstarted_events_promptly_and_in_key_order<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    if !bus
        .transport()
        .capabilities()
        .supports(Capability::Redelivery)
    {
        return; // At-most-once: a shutdown drops what was not handled.
    }
    let prompt = releases_at_once(&bus);
    // Where releases wait out the ack wait, a short one keeps the test
    // short; order must hold either way.
    let ack_wait = if prompt {
        ACK_WAIT
    } else {
        Duration::from_secs(2)
    };
    let blocked = Arc::new(tokio::sync::Semaphore::new(0));
    let first = Consumer::new(&bus, "orders")
        .unwrap()
        .state(blocked.clone())
        .handle(
            |e: Event<Placed>, ctx: Context<Arc<tokio::sync::Semaphore>>| async move {
                if e.payload.n == 0 {
                    // Each key's first event never finishes here.
                    ctx.state().add_permits(1);
                    std::future::pending::<()>().await;
                }
                Ok::<_, HandlerError>(())
            },
        )
        .ordered_by_key(true)
        .concurrency(2)
        .ack_wait(ack_wait)
        .shutdown_timeout(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    for n in 0..5 {
        for key in ["a", "b"] {
            let mut event = bus.event(Placed { key: key.into(), n });
            event.metadata.set_subject(Some(key.to_owned()));
            bus.publish(&event).await.unwrap();
        }
    }
    // Both keys' first events are being handled, the rest wait behind them.
    let _ = tokio::time::timeout(ARRIVE, blocked.acquire_many(2))
        .await
        .expect("both first events started")
        .unwrap();

    let log: Log = Arc::default();
    let second = Consumer::new(&bus, "orders")
        .unwrap()
        .state(log.clone())
        .handle(|e: Event<Placed>, ctx: Context<Log>| async move {
            ctx.state()
                .lock()
                .unwrap()
                .push((e.payload.key.clone(), e.payload.n));
            Ok::<_, HandlerError>(())
        })
        .ordered_by_key(true)
        .ack_wait(ack_wait)
        .start()
        .await
        .unwrap();
    let stopping = Instant::now();
    let summary = first.shutdown().await.unwrap();
    assert_eq!(summary.handled, 0);
    assert_eq!(summary.nacked_on_shutdown, 2, "{summary:?}");
    let within = if prompt { PROMPT } else { ARRIVE };
    // nats-server before 2.10.14 can deliver a consumer's last message once
    // more (see `server_rewinds_redeliveries`): there a second copy is
    // allowed, and left out below.
    let rewinds = bus.transport().name() == "jetstream" && server_rewinds_redeliveries();
    let distinct = || {
        let mut log = log.lock().unwrap().clone();
        log.sort_unstable();
        log.dedup();
        log.len()
    };
    // With the same bug, a released message the server handed to an
    // expired pull comes back after the ack wait: one may be late there.
    wait_until("all but one handled by the second instance", within, || {
        distinct() >= 9
    })
    .await;
    let late = rewinds
        && tokio::time::timeout(within, async {
            while distinct() < 10 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_err();
    let within = if late { ack_wait + ARRIVE } else { within };
    wait_until("every event handled by the second instance", within, || {
        distinct() >= 10
    })
    .await;
    if prompt && !late {
        assert!(stopping.elapsed() < PROMPT, "released at once");
    }
    let summary = second.shutdown().await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(summary.handled, log.len() as u64);
    if !rewinds {
        assert_eq!(log.len(), 10, "each event handled once: {log:?}");
    }
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for (key, n) in &log {
        let seen = per_key.entry(key.clone()).or_default();
        // A second copy (allowed above) is not another place in the order.
        if !seen.contains(n) {
            seen.push(*n);
        }
    }
    // The first instance nacks a key's events in order. Whether the next
    // one gets them in that order is the broker's: the memory bus hands
    // them over as told, and a stream partitioned by key
    // (`OrderedAcrossInstances`) catches up in stream order. Elsewhere
    // nats-server may redeliver out of order: a nacked message that finds
    // no waiting pull request goes to the back of the consumer's
    // redelivery queue (seen on 2.10.26: a key's first event came back
    // after its four successors). There, each event still comes back once.
    let in_order = bus.transport().name() == "memory"
        || bus
            .transport()
            .capabilities()
            .supports(Capability::OrderedAcrossInstances);
    for key in ["a", "b"] {
        let got = per_key.get_mut(key).unwrap();
        if !in_order {
            got.sort_unstable();
        }
        assert_eq!(got, &[0, 1, 2, 3, 4], "key {key} (in order: {in_order})");
    }
    bus.close().await.unwrap();
}

/// Item: shutdown returns within its deadline plus a bounded settle phase,
/// whatever the handlers do.
pub async fn shutdown_returns_within_its_deadline<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let running = Consumer::new(&bus, "stuck")
        .unwrap()
        .state(started.clone())
        .handle(
            |_e: Event<Placed>, ctx: Context<Arc<tokio::sync::Semaphore>>| async move {
                ctx.state().add_permits(1);
                std::future::pending::<()>().await;
                Ok::<_, HandlerError>(())
            },
        )
        .concurrency(3)
        .shutdown_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    for n in 0..10 {
        bus.publish(&bus.event(Placed { key: "k".into(), n }))
            .await
            .unwrap();
    }
    let _ = tokio::time::timeout(ARRIVE, started.acquire_many(3))
        .await
        .unwrap()
        .unwrap();
    let stopping = Instant::now();
    let summary = running.shutdown().await.unwrap();
    // 0.3 s of deadline, then at most a few seconds of settling.
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(summary.handled, 0);
    bus.close().await.unwrap();
}

type Order = Arc<Mutex<Vec<(String, String)>>>;

/// Item: one consumer handling several event types of one entity handles a
/// key's events in the order they were published, across the types; a
/// transport that cannot (one subscription per type) refuses at start.
pub async fn a_key_s_events_of_several_types_are_handled_in_publish_order<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let log: Order = Arc::default();
    let consumer = Consumer::new(&bus, "lifecycle")
        .unwrap()
        .state(log.clone())
        .handle(|e: Event<Placed>, ctx: Context<Order>| async move {
            let key = e.metadata.subject().unwrap_or_default().to_owned();
            ctx.state()
                .lock()
                .unwrap()
                .push((key, format!("placed{}", e.payload.n)));
            Ok::<_, HandlerError>(())
        })
        .handle(|e: Event<Cancelled>, ctx: Context<Order>| async move {
            let key = e.metadata.subject().unwrap_or_default().to_owned();
            ctx.state()
                .lock()
                .unwrap()
                .push((key, format!("cancelled:{}", e.payload.key)));
            Ok::<_, HandlerError>(())
        })
        .ordered_by_key(true)
        .concurrency(4);
    if !bus
        .transport()
        .capabilities()
        .supports(Capability::MultiPattern)
    {
        let refused = consumer.start().await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Unsupported, "{refused}");
        bus.close().await.unwrap();
        return;
    }
    let running = consumer.start().await.unwrap();
    // Per key: three of one type, then alternating: a subscription per
    // type, taken in turn, hands the second type's first event over
    // before the first type's second.
    let mut published: HashMap<String, Vec<String>> = HashMap::new();
    for round in 0..6u32 {
        for k in 0..16 {
            let key = format!("order-{k}");
            let placed = matches!(round, 0 | 1 | 2 | 4);
            let label = if placed {
                let mut event = bus.event(Placed {
                    key: key.clone(),
                    n: round,
                });
                event.metadata.set_subject(Some(key.clone()));
                bus.publish(&event).await.unwrap();
                format!("placed{round}")
            } else {
                let mut event = bus.event(Cancelled {
                    key: format!("{key}/{round}"),
                });
                event.metadata.set_subject(Some(key.clone()));
                bus.publish(&event).await.unwrap();
                format!("cancelled:{key}/{round}")
            };
            published.entry(key).or_default().push(label);
        }
    }
    wait_until("every event handled", ARRIVE, || {
        log.lock().unwrap().len() >= 96
    })
    .await;
    let summary = running.shutdown().await.unwrap();
    assert_eq!(summary.handled, 96);
    let mut handled: HashMap<String, Vec<String>> = HashMap::new();
    for (key, label) in log.lock().unwrap().iter() {
        handled.entry(key.clone()).or_default().push(label.clone());
    }
    assert_eq!(
        handled, published,
        "each key in publish order, across types"
    );
    bus.close().await.unwrap();
}

/// The capability behind cross-type order: a subscription to several
/// patterns is one stream in publish order where declared, and refused
/// (`Unsupported`) where not.
pub async fn several_patterns_make_one_stream_in_publish_order_or_are_refused<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    use events::transport::{SubjectPattern, SubscribeOptions};
    let bus = bus_on(&make).await;
    let codec = bus.codec();
    let placed = SubjectPattern::exact(&codec.subject_for(Placed::TYPE).unwrap());
    let cancelled = SubjectPattern::exact(&codec.subject_for(Cancelled::TYPE).unwrap());
    let options = SubscribeOptions::new(placed).also(cancelled);
    let subscribed = bus.transport().subscribe(options).await;
    if !bus
        .transport()
        .capabilities()
        .supports(Capability::MultiPattern)
    {
        let refused = subscribed.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Unsupported, "{refused}");
        bus.close().await.unwrap();
        return;
    }
    let mut sub = subscribed.unwrap();
    let mut published = Vec::new();
    for n in 0..40u32 {
        let key = format!("k{n}");
        let message = if n % 3 == 0 {
            bus.encode(
                &bus.event(Cancelled { key: key.clone() }),
                Default::default(),
            )
        } else {
            bus.encode(
                &bus.event(Placed {
                    key: key.clone(),
                    n,
                }),
                Default::default(),
            )
        }
        .unwrap();
        published.push(message.subject.to_string());
        bus.transport().publish(message).await.unwrap();
    }
    let mut received = Vec::new();
    while received.len() < published.len() {
        let d = tokio::time::timeout(ARRIVE, sub.next())
            .await
            .expect("both subjects arrive")
            .expect("open")
            .expect("no transport error");
        received.push(d.message().subject.to_string());
        d.ack().await.unwrap();
    }
    assert_eq!(received, published, "one stream, in publish order");
    drop(sub);
    bus.close().await.unwrap();
}

#[macro_export]
macro_rules! lifecycle_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            use $crate::lifecycle as l;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_name_for_two_types_never_moves_the_first_subscription() {
                l::one_name_for_two_types_never_moves_the_first_subscription($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_closed_or_dropped_subscriber_releases_what_it_fetched() {
                l::a_closed_or_dropped_subscriber_releases_what_it_fetched($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_event_published_right_after_start_is_handled() {
                l::an_event_published_right_after_start_is_handled($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shutdown_releases_unstarted_events_promptly_and_in_key_order() {
                l::shutdown_releases_unstarted_events_promptly_and_in_key_order($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_key_s_events_of_several_types_are_handled_in_publish_order() {
                l::a_key_s_events_of_several_types_are_handled_in_publish_order($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn several_patterns_make_one_stream_in_publish_order_or_are_refused() {
                l::several_patterns_make_one_stream_in_publish_order_or_are_refused($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shutdown_returns_within_its_deadline() {
                l::shutdown_returns_within_its_deadline($make).await
            }
        }
    };
}

lifecycle_suite!(memory, || async {
    Arc::new(events::backend::memory::MemoryTransport::new()) as Arc<dyn Transport>
});
#[cfg(feature = "nats")]
lifecycle_suite!(core_nats, crate::nats::suite_transport);
#[cfg(feature = "jetstream")]
lifecycle_suite!(jetstream, crate::jetstream::suite_transport);

#[cfg(feature = "jetstream")]
mod jetstream_only {
    use super::*;
    use crate::nats::config;
    use events::backend::jetstream::{
        ConsumerDefaults, JetStreamConfig, JetStreamTransport, StreamConfig,
    };
    use events::testing::NatsServer;

    async fn transport(server: &NatsServer) -> JetStreamTransport {
        let stream = StreamConfig::new("LIFE", ["events.>", "deadletter.>"]);
        let config = JetStreamConfig::new(config(server), stream)
            .consumers(ConsumerDefaults::new().expires(Duration::from_secs(1)));
        JetStreamTransport::connect(config).await.unwrap()
    }

    async fn consumer_count(t: &JetStreamTransport) -> usize {
        let mut stream = t.context().get_stream(t.stream_name()).await.unwrap();
        stream.info().await.unwrap().state.consumer_count
    }

    #[tokio::test]
    async fn consumers_get_a_finite_max_deliver_from_the_retry_policy() {
        use events::consumer::RetryPolicy;
        let server = NatsServer::with_jetstream();
        let t = transport(&server).await;
        let bus = Bus::builder(t.clone()).source("life").build().unwrap();
        let running = Consumer::new(&bus, "billing")
            .unwrap()
            .retry(RetryPolicy::exponential().max_attempts(4))
            .handle(|_e: Event<Placed>, _ctx: Context<()>| async { Ok::<_, HandlerError>(()) })
            .start()
            .await
            .unwrap();
        let stream = t.context().get_stream(t.stream_name()).await.unwrap();
        let mut names = Vec::new();
        let mut listed = stream.consumer_names();
        while let Some(name) = futures_util::StreamExt::next(&mut listed).await {
            names.push(name.unwrap());
        }
        assert_eq!(names.len(), 1, "{names:?}");
        let info = stream.consumer_info(&names[0]).await.unwrap();
        // The retry budget plus room for shutdown nacks and dead-letter
        // copies that could not be published yet; never unlimited.
        assert_eq!(info.config.max_deliver, 4 + 10);
        running.shutdown().await.unwrap();
        bus.close().await.unwrap();
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Shipped {
        key: String,
    }
    impl EventPayload for Shipped {
        const TYPE: &'static str = "life.shipped";
    }

    /// One durable consumer per service (2.10+): it takes over from the
    /// per-type consumers of an earlier build at their acknowledged
    /// position, and is redefined when the handled types change. On 2.9 the
    /// runtime keeps one consumer per type.
    #[tokio::test]
    async fn one_consumer_per_service_takes_over_from_per_type_consumers() {
        let server = NatsServer::with_jetstream();
        let t = transport(&server).await;
        let bus = Bus::builder(t.clone()).source("life").build().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = |seen: &Arc<Mutex<Vec<String>>>, what: String| {
            seen.lock().unwrap().push(what);
        };
        // An earlier build: one durable per type, three of five events of
        // the first type handled and acknowledged.
        let earlier = |name: &str| {
            events::transport::SubscribeOptions::new(events::transport::SubjectPattern::exact(
                &bus.codec().subject_for(Placed::TYPE).unwrap(),
            ))
            .durable_name(name.to_owned())
            .unwrap()
        };
        for n in 0..5 {
            bus.publish(&bus.event(Placed {
                key: format!("k{n}"),
                n,
            }))
            .await
            .unwrap();
        }
        // The name the earlier build used for (shipping, life.placed).
        let earlier_name = durable_name_of("shipping", Placed::TYPE);
        let mut old = bus
            .transport()
            .subscribe(earlier(&earlier_name))
            .await
            .unwrap();
        for _ in 0..3 {
            let d = tokio::time::timeout(ARRIVE, old.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            d.ack().await.unwrap();
        }
        old.close().await;
        bus.flush().await.unwrap();

        let seen2 = seen.clone();
        let seen3 = seen.clone();
        let consumer = Consumer::new(&bus, "shipping")
            .unwrap()
            .handle(move |e: Event<Placed>, _ctx: Context<()>| {
                record(&seen2, format!("placed{}", e.payload.n));
                async { Ok::<_, HandlerError>(()) }
            })
            .handle(move |e: Event<Shipped>, _ctx: Context<()>| {
                record(&seen3, format!("shipped:{}", e.payload.key));
                async { Ok::<_, HandlerError>(()) }
            });
        if t.server_version() < (2, 10, 0) {
            // No consumer with several filters: one per type, as before.
            let running = consumer.start().await.unwrap();
            running.shutdown().await.unwrap();
            bus.close().await.unwrap();
            return;
        }
        let running = consumer.start().await.unwrap();
        bus.publish(&bus.event(Shipped { key: "k0".into() }))
            .await
            .unwrap();
        wait_until("the two unhandled and the new event", ARRIVE, || {
            seen.lock().unwrap().len() >= 3
        })
        .await;
        running.shutdown().await.unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        // Not the three the earlier build handled.
        assert_eq!(seen, ["placed3", "placed4", "shipped:k0"]);
        let stream = t.context().get_stream(t.stream_name()).await.unwrap();
        let info = stream.consumer_info("shipping").await.unwrap();
        let mut filters = info.config.filter_subjects.clone();
        filters.sort();
        assert_eq!(filters, ["events.life.placed", "events.life.shipped"]);
        // The earlier consumer stays until removed, as the log says.
        t.delete_consumer(&earlier_name).await.unwrap();
        bus.close().await.unwrap();
    }

    /// `<consumer>_<type with '.' as '_'>_<8 hex digits of FNV-1a>`: the
    /// runtime's per-type durable name.
    fn durable_name_of(consumer: &str, event_type: &str) -> String {
        let hash = consumer
            .bytes()
            .chain([0])
            .chain(event_type.bytes())
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        format!(
            "{consumer}_{}_{:08x}",
            event_type.replace('.', "_"),
            hash as u32
        )
    }

    #[tokio::test]
    async fn dropped_subscriptions_delete_their_ephemeral_consumers() {
        let server = NatsServer::with_jetstream();
        let t = transport(&server).await;
        let bus = Bus::builder(t.clone()).source("life").build().unwrap();
        for round in 0..30 {
            let sub = bus.subscribe::<Placed>().await.unwrap();
            if round % 2 == 0 {
                drop(sub);
            } else {
                sub.close().await;
            }
        }
        let start = Instant::now();
        loop {
            let count = consumer_count(&t).await;
            if count == 0 {
                break;
            }
            // The server's inactivity threshold is 30 s: far beyond this.
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{count} ephemeral consumers left behind"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bus.close().await.unwrap();
    }

    #[tokio::test]
    async fn acks_are_confirmed_by_the_server_when_shutdown_returns() {
        let server = NatsServer::with_jetstream();
        let t = transport(&server).await;
        let bus = Bus::builder(t.clone()).source("life").build().unwrap();
        let handled = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let running = Consumer::new(&bus, "audit")
            .unwrap()
            .state(handled.clone())
            .handle(
                |_e: Event<Placed>, ctx: Context<Arc<std::sync::atomic::AtomicU32>>| async move {
                    ctx.state()
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                },
            )
            .start()
            .await
            .unwrap();
        let events: Vec<_> = (0..200)
            .map(|n| bus.event(Placed { key: "k".into(), n }))
            .collect();
        for result in bus.publish_all(&events).await {
            result.unwrap();
        }
        wait_until("every event handled", ARRIVE, || {
            handled.load(std::sync::atomic::Ordering::SeqCst) == 200
        })
        .await;
        let summary = running.shutdown().await.unwrap();
        assert_eq!(summary.handled, 200);
        // No close, no flush of our own: the acks are already applied.
        let stream = t.context().get_stream(t.stream_name()).await.unwrap();
        let mut listed = stream.consumer_names();
        let name = futures_util::StreamExt::next(&mut listed)
            .await
            .unwrap()
            .unwrap();
        let info = stream.consumer_info(&name).await.unwrap();
        assert_eq!(info.num_ack_pending, 0, "{info:?}");
        assert_eq!(info.ack_floor.stream_sequence, 200);
        bus.close().await.unwrap();
    }
}
