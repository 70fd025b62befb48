//! Every public setting at its extremes: no setter, constructor or
//! combination of them panics a running consumer. Each value is either
//! refused with a typed error or capped where it is used, and the tests run
//! it end to end: on the memory bus, and on JetStream against a private
//! nats-server where the setting reaches the server.

use std::time::Duration;

use events::backend::memory::{MemoryConfig, MemoryTransport};
use events::consumer::{
    replay, Consumer, Context, HandlerError, MemoryIdempotencyStore, Reason, RetryPolicy, Summary,
};
use events::transport::{
    Acker, Capabilities, Delivery, Message, SubjectPattern, SubscribeOptions, Subscription,
    Transport,
};
use events::versioning::Upcasters;
use events::{Bus, ErrorKind, Event, EventPayload};
use futures_util::future::BoxFuture;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub n: u32,
}
impl EventPayload for Job {
    const TYPE: &'static str = "jobs.created";
}

/// How long a test waits for something that must happen.
const WAIT: Duration = Duration::from_secs(20);

/// What the test handlers report: the number of each event they handled.
type Handled = mpsc::UnboundedSender<u32>;

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn memory() -> (MemoryTransport, Bus) {
    memory_with(MemoryConfig::new())
}

fn memory_with(config: MemoryConfig) -> (MemoryTransport, Bus) {
    let transport = MemoryTransport::with_config(config);
    let bus = Bus::builder(transport.clone())
        .source("settings")
        .build()
        .unwrap();
    (transport, bus)
}

/// A consumer whose handler reports each event it handles. The handler
/// waits on a timer before it finishes, so every handling takes the path
/// with timers (handler timeout, keep-alive), not only the one-poll fast
/// path.
fn reporting(bus: &Bus, tx: Handled) -> Consumer<Handled> {
    Consumer::new(bus, "settings").unwrap().state(tx).handle(
        |e: Event<Job>, ctx: Context<Handled>| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let _ = ctx.state().send(e.payload.n);
            Ok::<(), HandlerError>(())
        },
    )
}

/// Runs `consumer`, publishes one event once `subscribed` says so, waits
/// until the handler reported it, then shuts the consumer down and returns
/// its summary. A `run` that ends early (a panic, an error) fails the test
/// with what it returned.
async fn handle_one<S: Send + Sync + 'static>(
    bus: &Bus,
    consumer: Consumer<S>,
    handled: &mut mpsc::UnboundedReceiver<u32>,
    subscribed: impl Fn() -> bool,
) -> Summary {
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    within("the consumer to subscribe", async {
        while !subscribed() {
            assert!(!running.is_finished(), "run ended before it subscribed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    let outcome = tokio::select! {
        n = within("the handler", handled.recv()) => Ok(n),
        ended = running_to_end(&running) => Err(ended),
    };
    match outcome {
        Ok(n) => assert_eq!(n, Some(1)),
        Err(ended) => panic!("run ended before the event was handled: {ended}"),
    }
    let _ = stop.send(());
    within("run to return", running)
        .await
        .expect("run does not panic")
        .expect("run returns a summary")
}

/// Resolves when `running` has finished, with a description of how.
async fn running_to_end(running: &tokio::task::JoinHandle<events::Result<Summary>>) -> String {
    while !running.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    "run finished (panicked or failed)".to_owned()
}

async fn handle_one_on_memory(
    configure: impl FnOnce(Consumer<Handled>) -> Consumer<Handled>,
) -> Summary {
    let (transport, bus) = memory();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = configure(reporting(&bus, tx));
    let summary = handle_one(&bus, consumer, &mut rx, || {
        transport.subscription_count() > 0
    })
    .await;
    assert_eq!(summary.handled, 1, "{summary:?}");
    summary
}

#[tokio::test]
async fn a_consumer_with_concurrency_usize_max_handles_an_event() {
    handle_one_on_memory(|c| c.concurrency(usize::MAX)).await;
    handle_one_on_memory(|c| c.concurrency(usize::MAX).ordered_by_key(true)).await;
    handle_one_on_memory(|c| c.concurrency(0)).await;
}

#[tokio::test]
async fn a_consumer_with_a_handler_timeout_of_duration_max_handles_an_event() {
    handle_one_on_memory(|c| c.handler_timeout(Duration::MAX)).await;
    // The general path (per-key order) times each attempt from its start too.
    handle_one_on_memory(|c| c.handler_timeout(Duration::MAX).ordered_by_key(true)).await;
}

#[tokio::test]
async fn a_consumer_with_a_prefetch_of_usize_max_handles_an_event() {
    handle_one_on_memory(|c| c.prefetch(usize::MAX)).await;
    handle_one_on_memory(|c| c.prefetch(0)).await;
}

#[tokio::test]
async fn a_consumer_with_an_ack_wait_and_shutdown_timeout_of_duration_max_handles_an_event() {
    handle_one_on_memory(|c| c.ack_wait(Duration::MAX).shutdown_timeout(Duration::MAX)).await;
    handle_one_on_memory(|c| c.ack_wait(Duration::ZERO).shutdown_timeout(Duration::ZERO)).await;
}

#[tokio::test]
async fn a_consumer_with_an_idempotency_store_of_duration_max_handles_an_event_once() {
    let (transport, bus) = memory();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let store = MemoryIdempotencyStore::new(Duration::MAX).claim_timeout(Duration::MAX);
    let consumer = reporting(&bus, tx).idempotency(store);
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    within("the consumer to subscribe", async {
        while transport.subscription_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let event = bus.event(Job { n: 1 });
    bus.publish(&event).await.unwrap();
    bus.publish(&event).await.unwrap(); // a republished copy: same id
    bus.publish(&bus.event(Job { n: 2 })).await.unwrap();
    assert_eq!(within("the first event", rx.recv()).await, Some(1));
    assert_eq!(within("the second event", rx.recv()).await, Some(2));
    let _ = stop.send(());
    let summary = within("run to return", running).await.unwrap().unwrap();
    assert_eq!((summary.handled, summary.duplicates), (2, 1), "{summary:?}");
}

/// A retry policy at its extremes: the first failure is nacked with the
/// longest delay there is, and the consumer goes on with the next event.
#[tokio::test]
async fn a_consumer_with_a_retry_policy_at_its_extremes_goes_on_after_a_failure() {
    let policy = RetryPolicy::exponential()
        .max_attempts(u32::MAX)
        .initial_delay(Duration::MAX)
        .max_delay(Duration::MAX)
        .multiplier(f64::MAX);
    for ordered in [false, true] {
        let (transport, bus) = memory();
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        let consumer = Consumer::new(&bus, "settings")
            .unwrap()
            .state(tx)
            .handle(|e: Event<Job>, ctx: Context<Handled>| async move {
                if e.payload.n == 1 {
                    return Err(HandlerError::retry("always fails"));
                }
                let _ = ctx.state().send(e.payload.n);
                Ok(())
            })
            .retry(policy.clone())
            .ordered_by_key(ordered)
            .shutdown_timeout(Duration::from_millis(100));
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(consumer.run(async move {
            let _ = stopped.await;
        }));
        within("the consumer to subscribe", async {
            while transport.subscription_count() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        bus.publish(&bus.event(Job { n: 1 }).with_subject("a"))
            .await
            .unwrap();
        bus.publish(&bus.event(Job { n: 2 }).with_subject("b"))
            .await
            .unwrap();
        assert_eq!(within("the second event", rx.recv()).await, Some(2));
        let _ = stop.send(());
        let summary = within("run to return", running).await.unwrap().unwrap();
        assert_eq!((summary.handled, summary.retried), (1, 1), "{summary:?}");
        if ordered {
            // Retried in process: the pause is cut short by shutdown.
            assert_eq!(summary.nacked_on_shutdown, 1, "{summary:?}");
        }
    }
}

#[tokio::test]
async fn a_handler_may_ask_for_a_retry_after_duration_max() {
    let (transport, bus) = memory();
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let consumer = Consumer::new(&bus, "settings").unwrap().state(tx).handle(
        |e: Event<Job>, ctx: Context<Handled>| async move {
            if e.payload.n == 1 {
                return Err(HandlerError::retry_after("later", Duration::MAX));
            }
            let _ = ctx.state().send(e.payload.n);
            Ok(())
        },
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    within("the consumer to subscribe", async {
        while transport.subscription_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    bus.publish(&bus.event(Job { n: 2 })).await.unwrap();
    assert_eq!(within("the second event", rx.recv()).await, Some(2));
    let _ = stop.send(());
    let summary = within("run to return", running).await.unwrap().unwrap();
    assert_eq!((summary.handled, summary.retried), (1, 1), "{summary:?}");
}

#[tokio::test]
async fn the_retry_policy_computes_delays_at_its_extremes() {
    let extremes = [
        RetryPolicy::exponential()
            .initial_delay(Duration::MAX)
            .max_delay(Duration::MAX)
            .multiplier(f64::MAX),
        RetryPolicy::exponential()
            .initial_delay(Duration::MAX)
            .max_delay(Duration::ZERO),
        RetryPolicy::exponential()
            .initial_delay(Duration::ZERO)
            .max_delay(Duration::MAX)
            .multiplier(f64::INFINITY),
        RetryPolicy::exponential()
            .initial_delay(Duration::from_nanos(1))
            .max_delay(Duration::MAX)
            .multiplier(f64::NAN)
            .max_attempts(0),
    ];
    for policy in extremes {
        for attempt in [0, 1, 2, 64, u32::MAX - 1, u32::MAX] {
            let base = policy.base_delay(attempt);
            let delay = policy.delay(attempt);
            assert!(delay <= base && delay >= base / 2, "{policy:?} {attempt}");
        }
        assert!(policy.get_max_attempts() >= 1);
    }
}

#[tokio::test]
async fn replay_with_an_idle_time_of_duration_max_returns_once_it_replayed_max_letters() {
    let (transport, bus) = memory();
    let mut dlq = transport
        .subscribe(SubscribeOptions::new(
            SubjectPattern::parse("deadletter.events.settings").unwrap(),
        ))
        .await
        .unwrap();
    let consumer = Consumer::new(&bus, "settings")
        .unwrap()
        .handle(|_: Event<Job>, _: Context<()>| async { Err::<(), _>(HandlerError::reject("no")) });
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    within("the consumer to subscribe", async {
        while transport.subscription_count() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    let report = within(
        "the replay",
        replay(&transport, &mut dlq, 1, Duration::MAX, |l| {
            l.reason == Reason::Rejected
        }),
    )
    .await
    .unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");
    let _ = stop.send(());
    within("run to return", running).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_memory_bus_with_an_empty_source_publishes_as_the_default_source() {
    let bus = Bus::memory("");
    assert!(!bus.source().is_empty());
    let mut sub = bus.subscribe::<Job>().await.unwrap();
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    let delivery = within("the event", sub.next()).await.unwrap().unwrap();
    assert_eq!(delivery.metadata().source(), bus.source());
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn invalid_names_are_refused_with_invalid_input() {
    let transport = MemoryTransport::new();
    let builders = [
        Bus::builder(transport.clone()).source(""),
        Bus::builder(transport.clone()).prefix(""),
        Bus::builder(transport.clone()).prefix("a b"),
        Bus::builder(transport.clone()).prefix("a.*"),
    ];
    for builder in builders {
        let debug = format!("{builder:?}");
        let err = builder.build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{debug}: {err}");
    }
    let bus = Bus::memory("settings");
    for name in ["", "a.b", "a b", "*", ">"] {
        let err = Consumer::new(&bus, name).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}: {err}");
    }
    // The longest name is fine: the durable consumer name is cut, with its
    // hash; a longer one is refused.
    Consumer::new(&bus, &"c".repeat(256)).unwrap();
    let err = Consumer::new(&bus, &"c".repeat(257)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_subscription_with_capacity_max_deliver_and_ack_wait_at_their_extremes_delivers() {
    let (_transport, bus) = memory();
    let mut sub = bus
        .subscribe::<Job>()
        .capacity(usize::MAX)
        .max_deliver(u32::MAX)
        .ack_wait(Duration::MAX)
        .await
        .unwrap();
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    let d = within("the event", sub.next()).await.unwrap().unwrap();
    assert_eq!(d.payload().n, 1);
    d.ack().await.unwrap();
    let mut zero = bus
        .subscribe::<Job>()
        .capacity(0)
        .max_deliver(0)
        .ack_wait(Duration::ZERO)
        .await
        .unwrap();
    bus.publish(&bus.event(Job { n: 2 })).await.unwrap();
    let d = within("the event", zero.next()).await.unwrap().unwrap();
    assert_eq!(d.payload().n, 2);
    d.ack().await.unwrap();
}

#[tokio::test]
async fn a_memory_transport_with_every_setting_at_its_extreme_delivers() {
    let (transport, bus) = memory_with(
        MemoryConfig::new()
            .capacity(usize::MAX)
            .publish_timeout(Duration::MAX)
            .ack_wait(Duration::MAX)
            .max_message_size(usize::MAX),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let summary = handle_one(&bus, reporting(&bus, tx), &mut rx, || {
        transport.subscription_count() > 0
    })
    .await;
    assert_eq!(summary.handled, 1);
    // A subscription without its own capacity takes the transport's.
    let mut sub = bus.subscribe::<Job>().await.unwrap();
    bus.publish(&bus.event(Job { n: 2 })).await.unwrap();
    let d = within("the event", sub.next()).await.unwrap().unwrap();
    assert_eq!(d.payload().n, 2);
    d.ack().await.unwrap();

    // A full buffer and a publish timeout of Duration::MAX: the publish
    // waits for room, and goes once there is some.
    let (_transport, bus) = memory_with(
        MemoryConfig::new()
            .capacity(1)
            .publish_timeout(Duration::MAX),
    );
    let mut sub = bus.subscribe::<Job>().await.unwrap();
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    let bus2 = bus.clone();
    let blocked = tokio::spawn(async move { bus2.publish(&bus2.event(Job { n: 2 })).await });
    let first = within("the first event", sub.next())
        .await
        .unwrap()
        .unwrap();
    first.ack().await.unwrap();
    within("the blocked publish", blocked)
        .await
        .unwrap()
        .unwrap();
    let second = within("the second event", sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.payload().n, 2);
    second.ack().await.unwrap();

    // No room at all for a message: a typed error, before anything is sent.
    let (_transport, bus) = memory_with(MemoryConfig::new().max_message_size(0));
    let err = bus.publish(&bus.event(Job { n: 1 })).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
}

#[test]
fn upcasters_accept_every_version() {
    let upcasters = Upcasters::new()
        .register("jobs.created", u32::MAX - 1, Ok)
        .register("jobs.created", u32::MAX, Ok);
    let shown = format!("{upcasters:?}");
    assert!(
        shown.contains(&format!("v{}", u64::from(u32::MAX) + 1)),
        "{shown}"
    );
    let value = serde_json::json!({"n": 1});
    assert_eq!(
        upcasters
            .upcast("jobs.created", u32::MAX - 1, u32::MAX, value.clone())
            .unwrap(),
        value
    );
    let bus = Bus::builder(MemoryTransport::new())
        .source("settings")
        .upcasters(upcasters)
        .build()
        .unwrap();
    assert!(format!("{bus:?}").contains("jobs.created"));
}

/// A memory transport whose deliveries say the backend would redeliver a
/// held one only after `Duration::MAX` (a custom transport's "never").
#[derive(Debug)]
struct EndlessAckWait(MemoryTransport);

#[derive(Debug)]
struct Forward(Delivery);

impl Acker for Forward {
    fn ack(self: Box<Self>) -> BoxFuture<'static, events::Result<()>> {
        Box::pin(self.0.ack())
    }
    fn nack(
        self: Box<Self>,
        _message: Message,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, events::Result<()>> {
        Box::pin(self.0.nack(delay))
    }
    fn term(self: Box<Self>) -> BoxFuture<'static, events::Result<()>> {
        Box::pin(self.0.term())
    }
    fn in_progress(&self) -> BoxFuture<'_, events::Result<()>> {
        Box::pin(self.0.in_progress())
    }
}

impl Transport for EndlessAckWait {
    fn name(&self) -> &'static str {
        "endless-ack-wait"
    }
    fn capabilities(&self) -> &Capabilities {
        self.0.capabilities()
    }
    fn publish(&self, message: Message) -> BoxFuture<'_, events::Result<()>> {
        self.0.publish(message)
    }
    fn subscribe(&self, options: SubscribeOptions) -> BoxFuture<'_, events::Result<Subscription>> {
        Box::pin(async move {
            let inner = self.0.subscribe(options).await?;
            Ok(Subscription::new(inner.map(|item| {
                item.map(|delivery| {
                    let message = delivery.message().clone();
                    let mut info = delivery.info();
                    info.ack_wait = Some(Duration::MAX);
                    Delivery::new(message, info, Box::new(Forward(delivery)))
                })
            })))
        })
    }
    fn flush(&self) -> BoxFuture<'_, events::Result<()>> {
        self.0.flush()
    }
    fn close(&self) -> BoxFuture<'_, events::Result<()>> {
        self.0.close()
    }
}

#[tokio::test]
async fn a_consumer_on_a_transport_with_an_ack_wait_of_duration_max_handles_an_event() {
    let memory = MemoryTransport::new();
    let bus = Bus::builder(EndlessAckWait(memory.clone()))
        .source("settings")
        .build()
        .unwrap();
    for ordered in [false, true] {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let consumer = reporting(&bus, tx).ordered_by_key(ordered);
        let summary = handle_one(&bus, consumer, &mut rx, || memory.subscription_count() > 0).await;
        assert_eq!(summary.handled, 1);
    }
}

#[tokio::test]
async fn state_after_handle_keeps_the_handlers_registered_before() {
    let (transport, bus) = memory();
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let early = tx.clone();
    let consumer = Consumer::new(&bus, "settings")
        .unwrap()
        .handle(move |e: Event<Job>, ctx: Context<()>| {
            let early = early.clone();
            async move {
                let () = ctx.state();
                let _ = early.send(e.payload.n);
                Ok::<(), HandlerError>(())
            }
        })
        .state(tx)
        .handle(|e: Event<Other>, ctx: Context<Handled>| async move {
            let _ = ctx.state().send(1000 + e.payload.n);
            Ok::<(), HandlerError>(())
        });
    let running = consumer.start().await.unwrap();
    assert!(transport.subscription_count() >= 1);
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    bus.publish(&bus.event(Other { n: 2 })).await.unwrap();
    let mut seen = vec![
        within("an event", rx.recv()).await.unwrap(),
        within("an event", rx.recv()).await.unwrap(),
    ];
    seen.sort();
    assert_eq!(seen, [1, 1002]);
    let summary = within("the consumer to stop", running.shutdown())
        .await
        .unwrap();
    assert_eq!(summary.handled, 2);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Other {
    pub n: u32,
}
impl EventPayload for Other {
    const TYPE: &'static str = "jobs.other";
}

#[tokio::test]
async fn a_second_handler_for_one_event_type_is_refused_when_the_consumer_starts() {
    let (_transport, bus) = memory();
    let consumer = Consumer::new(&bus, "settings")
        .unwrap()
        .handle(|_: Event<Job>, _: Context<()>| async { Ok::<(), HandlerError>(()) })
        .handle(|_: Event<Other>, _: Context<()>| async { Ok::<(), HandlerError>(()) })
        .handle(|_: Event<Job>, _: Context<()>| async { Ok::<(), HandlerError>(()) });
    let err = within("run", consumer.run(std::future::pending()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("jobs.created"), "{err}");
    assert!(!err.to_string().contains("jobs.other"), "{err}");
}

#[tokio::test]
async fn a_handler_need_not_be_clone() {
    let (transport, bus) = memory();
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    // A mutex is not `Clone`, and the closure owns it: neither is the closure.
    let tx = std::sync::Mutex::new(tx);
    let consumer =
        Consumer::new(&bus, "settings")
            .unwrap()
            .handle(move |e: Event<Job>, _: Context<()>| {
                let _ = tx.lock().unwrap().send(e.payload.n);
                async { Ok::<(), HandlerError>(()) }
            });
    let summary = handle_one(&bus, consumer, &mut rx, || {
        transport.subscription_count() > 0
    })
    .await;
    assert_eq!(summary.handled, 1);
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use events::backend::nats::{NatsConfig, NatsTransport, ReconnectPolicy};
    use events::testing::NatsServer;

    fn extreme(server: &NatsServer) -> NatsConfig {
        NatsConfig::new(server.url())
            .connect_timeout(Duration::MAX)
            .request_timeout(Duration::MAX)
            .ping_interval(Duration::MAX)
            .client_capacity(usize::MAX)
            .subscription_capacity(usize::MAX)
            .reconnect(
                ReconnectPolicy::new()
                    .max_reconnects(Some(usize::MAX))
                    .min_delay(Duration::MAX)
                    .max_delay(Duration::MAX),
            )
    }

    #[tokio::test]
    async fn a_nats_connection_with_every_setting_at_its_extreme_delivers() {
        let server = NatsServer::core();
        let transport = within("connect", NatsTransport::connect(extreme(&server)))
            .await
            .unwrap();
        let bus = Bus::builder(transport).source("settings").build().unwrap();
        let mut sub = bus.subscribe::<Job>().capacity(usize::MAX).await.unwrap();
        bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
        let d = within("the event", sub.next()).await.unwrap().unwrap();
        assert_eq!(d.payload().n, 1);
        d.ack().await.unwrap();
        bus.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_zero_ping_interval_is_refused_at_connect() {
        let server = NatsServer::core();
        let config = NatsConfig::new(server.url()).ping_interval(Duration::ZERO);
        let err = within("connect", NatsTransport::connect(config))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("ping interval"), "{err}");
    }

    #[test]
    fn reconnect_delays_saturate() {
        let policy = ReconnectPolicy::new()
            .min_delay(Duration::MAX)
            .max_delay(Duration::MAX)
            .max_reconnects(Some(usize::MAX));
        assert_eq!(policy.get_max_reconnects(), Some(usize::MAX));
        let config = NatsConfig::new("nats://127.0.0.1:1").reconnect(policy);
        assert_eq!(config.get_reconnect().get_min_delay(), Duration::MAX);
    }
}

#[cfg(feature = "jetstream")]
mod jetstream {
    use super::*;
    use events::backend::jetstream::{
        ConsumerDefaults, JetStreamConfig, JetStreamTransport, KvIdempotencyStore, StreamConfig,
    };
    use events::backend::nats::NatsConfig;
    use events::testing::NatsServer;

    /// The longest duration nats-server takes: it counts in `i64`
    /// nanoseconds (about 292 years).
    const SERVER_MAX: Duration = Duration::from_nanos(i64::MAX as u64);

    fn stream() -> StreamConfig {
        StreamConfig::new("SETTINGS", ["st.>", "deadletter.>"])
    }

    async fn connect(
        server: &NatsServer,
        configure: impl FnOnce(JetStreamConfig) -> JetStreamConfig,
    ) -> JetStreamTransport {
        let config = configure(JetStreamConfig::new(
            NatsConfig::new(server.url()),
            stream(),
        ));
        within("connect", JetStreamTransport::connect(config))
            .await
            .expect("connects and provisions the stream")
    }

    fn bus(transport: &JetStreamTransport) -> Bus {
        Bus::builder(transport.clone())
            .source("settings")
            .prefix("st")
            .build()
            .unwrap()
    }

    /// The configurations of the stream's consumers, as the server has them.
    async fn consumers(
        transport: &JetStreamTransport,
    ) -> Vec<async_nats::jetstream::consumer::Config> {
        let stream = transport
            .context()
            .get_stream(transport.stream_name())
            .await
            .unwrap();
        let mut infos = stream.consumers();
        let mut configs = Vec::new();
        while let Some(info) = infos.next().await {
            configs.push(info.unwrap().config);
        }
        configs
    }

    #[tokio::test]
    async fn a_stream_with_durations_of_duration_max_is_kept_as_long_as_the_server_can() {
        let server = NatsServer::with_jetstream();
        let transport = within(
            "connect",
            JetStreamTransport::connect(JetStreamConfig::new(
                NatsConfig::new(server.url()),
                stream()
                    .max_age(Duration::MAX)
                    .duplicate_window(Duration::MAX)
                    .max_messages(u64::MAX),
            )),
        )
        .await
        .expect("the server takes the stream");
        let mut stream = transport
            .context()
            .get_stream(transport.stream_name())
            .await
            .unwrap();
        let config = stream.info().await.unwrap().config.clone();
        assert_eq!(config.max_age, SERVER_MAX);
        assert_eq!(config.duplicate_window, SERVER_MAX);
        let bus = bus(&transport);
        let mut sub = bus.subscribe::<Job>().await.unwrap();
        bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
        let d = within("the event", sub.next()).await.unwrap().unwrap();
        d.ack().await.unwrap();
        bus.close().await.unwrap();
    }

    /// The server reserves a stream's `max_bytes` up front: more than it
    /// has is its typed refusal, not a panic.
    #[tokio::test]
    async fn a_stream_larger_than_the_server_s_storage_is_refused_with_a_typed_error() {
        let server = NatsServer::with_jetstream();
        let err = within(
            "connect",
            JetStreamTransport::connect(JetStreamConfig::new(
                NatsConfig::new(server.url()),
                stream().max_bytes(u64::MAX),
            )),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
        assert!(err.to_string().contains("SETTINGS"), "{err}");
    }

    #[tokio::test]
    async fn consumer_defaults_at_their_extremes_reach_the_server_saturated_and_deliver() {
        let server = NatsServer::with_jetstream();
        let transport = connect(&server, |c| {
            c.consumers(
                ConsumerDefaults::new()
                    .ack_wait(Duration::MAX)
                    .max_deliver(u32::MAX)
                    .max_ack_pending(u32::MAX)
                    .batch(usize::MAX)
                    .shared_batch(usize::MAX)
                    .expires(Duration::MAX),
            )
            .max_ack_inflight(usize::MAX)
            .ack_timeout(Duration::MAX)
        })
        .await;
        let bus = bus(&transport);
        let mut durable = bus.subscribe::<Job>().durable("d").await.unwrap();
        let mut shared = bus.subscribe::<Other>().queue_group("q").await.unwrap();
        bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
        bus.publish(&bus.event(Other { n: 2 })).await.unwrap();
        let d = within("the durable's event", durable.next())
            .await
            .unwrap()
            .unwrap();
        d.ack().await.unwrap();
        let d = within("the group's event", shared.next())
            .await
            .unwrap()
            .unwrap();
        d.ack().await.unwrap();
        let configs = consumers(&transport).await;
        assert_eq!(configs.len(), 2);
        for config in configs {
            assert_eq!(config.ack_wait, SERVER_MAX, "{config:?}");
            assert_eq!(config.max_deliver, i64::from(u32::MAX), "{config:?}");
            assert_eq!(config.max_ack_pending, i64::from(u32::MAX), "{config:?}");
        }
        bus.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_backoff_of_duration_max_reaches_the_server_saturated() {
        let server = NatsServer::with_jetstream();
        let transport = connect(&server, |c| {
            c.consumers(
                ConsumerDefaults::new()
                    .max_deliver(5)
                    .backoff([Duration::MAX, Duration::MAX]),
            )
        })
        .await;
        let bus = bus(&transport);
        let mut sub = bus.subscribe::<Job>().durable("d").await.unwrap();
        bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
        let d = within("the event", sub.next()).await.unwrap().unwrap();
        d.ack().await.unwrap();
        let configs = consumers(&transport).await;
        assert_eq!(configs[0].backoff, [SERVER_MAX, SERVER_MAX]);
        bus.close().await.unwrap();
    }

    #[tokio::test]
    async fn subscribe_options_at_their_extremes_reach_the_server_saturated() {
        let server = NatsServer::with_jetstream();
        let transport = connect(&server, |c| c).await;
        let bus = bus(&transport);
        let mut sub = bus
            .subscribe::<Job>()
            .durable("d")
            .capacity(usize::MAX)
            .max_deliver(u32::MAX)
            .ack_wait(Duration::MAX)
            .await
            .unwrap();
        bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
        let d = within("the event", sub.next()).await.unwrap().unwrap();
        d.ack().await.unwrap();
        let configs = consumers(&transport).await;
        assert_eq!(configs[0].ack_wait, SERVER_MAX);
        assert_eq!(configs[0].max_deliver, i64::from(u32::MAX));
        bus.close().await.unwrap();
    }

    /// A nack asking for the longest delay there is: the server waits as
    /// long as it can count, it does not redeliver at once.
    #[tokio::test]
    async fn a_nack_with_a_delay_of_duration_max_is_not_redelivered_at_once() {
        let server = NatsServer::with_jetstream();
        let transport = connect(&server, |c| c).await;
        let bus = bus(&transport);
        let mut sub = bus
            .subscribe::<Job>()
            .durable("d")
            .ack_wait(Duration::from_secs(30))
            .await
            .unwrap();
        bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
        let d = within("the event", sub.next()).await.unwrap().unwrap();
        d.nack(Some(Duration::MAX)).await.unwrap();
        bus.publish(&bus.event(Job { n: 2 })).await.unwrap();
        let next = within("the next event", sub.next()).await.unwrap().unwrap();
        assert_eq!(next.payload().n, 2, "the nacked event came back at once");
        next.ack().await.unwrap();
        let again = tokio::time::timeout(Duration::from_secs(2), sub.next()).await;
        assert!(again.is_err(), "the nacked event came back: {again:?}");
        bus.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_consumer_on_jetstream_with_every_setting_at_its_extreme_handles_an_event() {
        let server = NatsServer::with_jetstream();
        let transport = connect(&server, |c| c).await;
        let bus = bus(&transport);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let consumer = reporting(&bus, tx)
            .concurrency(usize::MAX)
            .prefetch(usize::MAX)
            .handler_timeout(Duration::MAX)
            .ack_wait(Duration::MAX)
            .shutdown_timeout(Duration::MAX)
            .retry(
                RetryPolicy::exponential()
                    .max_attempts(u32::MAX)
                    .initial_delay(Duration::MAX)
                    .max_delay(Duration::MAX),
            );
        // A durable consumer starts at the first stored event: no need to
        // wait for the subscription before publishing.
        let summary = handle_one(&bus, consumer, &mut rx, || true).await;
        assert_eq!(summary.handled, 1);
        let configs = consumers(&transport).await;
        assert_eq!(configs[0].ack_wait, SERVER_MAX);
        bus.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_kv_idempotency_store_with_a_ttl_of_duration_max_opens() {
        let server = NatsServer::with_jetstream();
        let transport = connect(&server, |c| c).await;
        let store = within(
            "the bucket",
            KvIdempotencyStore::open(&transport, "settings_dedup", Duration::MAX),
        )
        .await
        .expect("the server takes the bucket")
        .claim_timeout(Duration::MAX);
        let bus = bus(&transport);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let consumer = reporting(&bus, tx).idempotency(store);
        let summary = handle_one(&bus, consumer, &mut rx, || true).await;
        assert_eq!(summary.handled, 1);
        bus.close().await.unwrap();
    }
}
