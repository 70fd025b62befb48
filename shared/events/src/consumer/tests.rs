use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::*;
use crate::backend::memory::{MemoryConfig, MemoryTransport};
use crate::transport::{Subject, SubjectPattern, SubscribeOptions, Subscription};
use crate::{Bus, Event, EventPayload};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    n: u32,
}
impl EventPayload for Job {
    const TYPE: &'static str = "jobs.created";
}

/// Runs `consumer` in the background; the returned sender stops it.
fn start<S: Send + Sync + 'static>(
    consumer: Consumer<S>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<crate::Result<Summary>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

async fn stop(
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<crate::Result<Summary>>,
) -> Summary {
    let _ = stop.send(());
    handle.await.unwrap().unwrap()
}

async fn dead_letters(bus: &Bus, consumer: &str) -> Subscription {
    let subject = format!("deadletter.{}.{consumer}", bus.codec().prefix());
    bus.transport()
        .subscribe(SubscribeOptions::new(
            SubjectPattern::parse(&subject).unwrap(),
        ))
        .await
        .unwrap()
}

async fn next_dead_letter(sub: &mut Subscription) -> DeadLetter {
    let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let letter = DeadLetter::from_message(d.message()).unwrap();
    d.ack().await.unwrap();
    letter
}

async fn wait_until(mut check: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached in time");
}

#[tokio::test(start_paused = true)]
async fn a_handler_failing_twice_is_called_three_times_with_growing_backoff() {
    let bus = Bus::memory("test");
    type Calls = Arc<Mutex<Vec<(u32, Instant)>>>;
    let calls: Calls = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(calls.clone())
        .handle(|_e: Event<Job>, ctx: Context<Calls>| async move {
            let attempt = ctx.attempt();
            ctx.state().lock().unwrap().push((attempt, Instant::now()));
            if attempt < 3 {
                Err(HandlerError::retry("not yet"))
            } else {
                Ok(())
            }
        })
        .retry(
            RetryPolicy::exponential()
                .max_attempts(5)
                .initial_delay(Duration::from_secs(1))
                .jitter(false),
        );
    let (tx, handle) = start(consumer);
    tokio::task::yield_now().await;
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    wait_until(|| calls.lock().unwrap().len() == 3).await;
    let summary = stop(tx, handle).await;
    let calls = calls.lock().unwrap().clone();
    let attempts: Vec<u32> = calls.iter().map(|c| c.0).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(
        calls[1].1 - calls[0].1 >= Duration::from_secs(1),
        "first backoff"
    );
    assert!(
        calls[2].1 - calls[1].1 >= Duration::from_secs(2),
        "second backoff doubles"
    );
    assert_eq!(summary.handled, 1);
    assert_eq!(summary.retried, 2);
    assert_eq!(summary.dead_lettered, 0);
}

#[tokio::test]
async fn a_rejected_event_skips_the_remaining_attempts() {
    let bus = Bus::memory("test");
    let mut dlq = dead_letters(&bus, "worker").await;
    let consumer =
        Consumer::new(&bus, "worker").unwrap().handle(
            |_e: Event<Job>, _ctx: Context<()>| async move {
                Err(HandlerError::reject("invalid order"))
            },
        );
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    let letter = next_dead_letter(&mut dlq).await;
    assert_eq!(letter.reason, Reason::Rejected);
    assert_eq!(letter.attempts, 1);
    assert_eq!(stop(tx, handle).await.retried, 0);
}

#[tokio::test]
async fn if_the_dead_letter_copy_fails_the_original_is_nacked_not_lost() {
    // The copy carries extra headers, the error text among them: with a
    // tight size limit and a long error, the original fits and the copy
    // does not, even without the body, so dead-lettering fails.
    let transport = MemoryTransport::with_config(MemoryConfig::new().max_message_size(420));
    let bus = Bus::builder(transport).source("t").build().unwrap();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .handle(|_e: Event<Job>, _ctx: Context<()>| async move {
            Err(HandlerError::reject("no".repeat(200)))
        })
        .retry(
            RetryPolicy::exponential()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(10)),
        );
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = stop(tx, handle).await;
    assert_eq!(summary.dead_lettered, 0);
    assert!(
        summary.dead_letter_failures >= 2,
        "the original came back: {summary:?}"
    );
}

#[tokio::test]
async fn a_consumer_without_handlers_or_with_a_bad_name_is_refused() {
    let bus = Bus::memory("test");
    assert!(Consumer::new(&bus, "bad name").is_err());
    let err = Consumer::new(&bus, "x")
        .unwrap()
        .run(async {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
}

#[test]
fn handler_errors_say_whether_to_retry() {
    let e: HandlerError = std::io::Error::other("db down").into();
    assert!(e.is_retryable());
    assert_eq!(e.to_string(), "handler failed (retryable): db down");
    let e = HandlerError::reject("bad data");
    assert!(!e.is_retryable());
    assert_eq!(e.to_string(), "handler rejected the event: bad data");
}

#[cfg(feature = "metrics")]
mod metrics_counters {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;

    /// Counts every counter by name and sorted labels.
    #[derive(Default)]
    struct Counting(Mutex<HashMap<String, Arc<Count>>>);

    #[derive(Default)]
    struct Count(AtomicU64);

    impl CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    fn render(key: &Key) -> String {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl Recorder for Counting {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let count = self
                .0
                .lock()
                .unwrap()
                .entry(render(key))
                .or_default()
                .clone();
            Counter::from_arc(count)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    fn recorder() -> &'static Counting {
        static RECORDER: OnceLock<&'static Counting> = OnceLock::new();
        RECORDER.get_or_init(|| {
            let recorder: &'static Counting = Box::leak(Box::default());
            metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
            recorder
        })
    }

    fn value(name: &str) -> u64 {
        recorder()
            .0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn the_runtime_and_the_bus_feed_metrics_counters() {
        let _ = recorder();
        let bus = Bus::memory("test");
        let consumer = Consumer::new(&bus, "metered").unwrap().handle(
            |e: Event<Job>, _ctx: Context<()>| async move {
                if e.payload.n == 0 {
                    Err(HandlerError::reject("no"))
                } else {
                    Ok(())
                }
            },
        );
        let (tx, handle) = start(consumer);
        tokio::time::sleep(Duration::from_millis(20)).await;
        for n in 0..3 {
            bus.publish(&bus.event(Job { n })).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let summary = stop(tx, handle).await;
        assert_eq!((summary.handled, summary.dead_lettered), (2, 1));
        assert_eq!(
            value("events_handled_total{consumer=metered,type=jobs.created}"),
            2
        );
        assert_eq!(
            value("events_dead_lettered_total{consumer=metered,type=jobs.created}"),
            1
        );
        assert!(value("events_published_total{outcome=ok,type=jobs.created}") >= 3);
    }
}

/// A store whose first `failures` completions fail, as a key-value store
/// does while its server restarts.
#[derive(Debug)]
struct FlakyStore {
    inner: Arc<MemoryIdempotencyStore>,
    failures: Mutex<u32>,
}

impl IdempotencyStore for FlakyStore {
    fn claim(&self, key: &str) -> futures_util::future::BoxFuture<'_, crate::Result<Claim>> {
        self.inner.claim(key)
    }
    fn complete(
        &self,
        key: &str,
        token: ClaimToken,
    ) -> futures_util::future::BoxFuture<'_, crate::Result<()>> {
        let mut failures = self.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Box::pin(async {
                Err(crate::Error::new(
                    crate::ErrorKind::Unavailable,
                    "store restarting",
                ))
            });
        }
        self.inner.complete(key, token)
    }
    fn release(
        &self,
        key: &str,
        token: ClaimToken,
    ) -> futures_util::future::BoxFuture<'_, crate::Result<()>> {
        self.inner.release(key, token)
    }
}

#[tokio::test]
async fn a_failed_completion_is_retried_so_a_redelivery_is_not_handled_again() {
    let bus = Bus::memory("test");
    let inner = Arc::new(MemoryIdempotencyStore::new(Duration::from_secs(60)));
    let handled = Arc::new(Mutex::new(0u32));
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(handled.clone())
        .handle(|_e: Event<Job>, ctx: Context<Arc<Mutex<u32>>>| async move {
            *ctx.state().lock().unwrap() += 1;
            Ok::<_, HandlerError>(())
        })
        .idempotency(FlakyStore {
            inner: inner.clone(),
            failures: Mutex::new(2),
        })
        .retry(
            RetryPolicy::exponential()
                .initial_delay(Duration::from_millis(10))
                .jitter(false),
        );
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let event = bus.event(Job { n: 1 });
    bus.publish(&event).await.unwrap();
    wait_until(|| *handled.lock().unwrap() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = format!("worker/{}", event.metadata.id());
    assert_eq!(
        inner.claim(&key).await.unwrap(),
        Claim::Done,
        "the completion was recorded after the store came back"
    );
    // A redelivery (here: the same event again) is a duplicate, not handled.
    bus.publish(&event).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let summary = stop(tx, handle).await;
    assert_eq!(*handled.lock().unwrap(), 1);
    assert_eq!((summary.handled, summary.duplicates), (1, 1));
}

#[test]
fn durable_names_keep_ambiguous_pairs_apart_and_stay_valid() {
    use super::runtime::durable_name;
    let a = durable_name("a", "b.c");
    let b = durable_name("a_b", "c");
    assert!(
        a.starts_with("a_b_c_") && b.starts_with("a_b_c_"),
        "{a} {b}"
    );
    assert_ne!(a, b);
    assert_ne!(durable_name("c", "a.b"), durable_name("c", "a_b"));
    // Pinned (FNV-1a of "inventory\0orders.placed", computed apart): a
    // changed name would orphan every deployed durable consumer.
    assert_eq!(
        durable_name("inventory", "orders.placed"),
        "inventory_orders_placed_3b6efa3f"
    );
    let long = durable_name(
        &"c".repeat(crate::envelope::MAX_TOKEN_LEN),
        &"t".repeat(200),
    );
    assert_eq!(long.len(), 255, "nats-server's longest name");
    crate::envelope::validate_subject_token(&long).unwrap();
    crate::envelope::validate_subject_token(&a).unwrap();
}

/// Counts progress reports.
#[cfg(feature = "jetstream")]
#[derive(Debug)]
struct CountingAcker(Arc<std::sync::atomic::AtomicU32>);

#[cfg(feature = "jetstream")]
impl crate::transport::Acker for CountingAcker {
    fn ack(self: Box<Self>) -> futures_util::future::BoxFuture<'static, crate::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn nack(
        self: Box<Self>,
        _message: crate::transport::Message,
        _delay: Option<Duration>,
    ) -> futures_util::future::BoxFuture<'static, crate::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn term(self: Box<Self>) -> futures_util::future::BoxFuture<'static, crate::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn in_progress(&self) -> futures_util::future::BoxFuture<'_, crate::Result<()>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(feature = "jetstream")]
#[tokio::test]
async fn the_handlers_keep_alive_counts_from_the_buffers_last_report() {
    use crate::transport::{Delivery as RawTransportDelivery, DeliveryInfo, Message, Subject};
    let reports = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut info = DeliveryInfo::attempt(1);
    info.ack_wait = Some(Duration::from_millis(400));
    let mut delivery = RawTransportDelivery::new(
        Message::new(Subject::parse("a").unwrap(), &b"{}"[..]),
        info,
        Box::new(CountingAcker(reports.clone())),
    );
    // The buffer last reported 150 ms ago: the next report is due 50 ms
    // into handling, not half an ack wait (200 ms) after the hand-over.
    delivery.set_ack_wait_since(std::time::Instant::now() - Duration::from_millis(150));
    super::runtime::holding(&delivery, tokio::time::sleep(Duration::from_millis(120))).await;
    assert_eq!(reports.load(std::sync::atomic::Ordering::SeqCst), 1);
    delivery.ack().await.unwrap();
}

type Handled = Arc<Mutex<Vec<u32>>>;

/// (handled, retried, dead-lettered)
fn outcome(summary: &Summary) -> (u64, u64, u64) {
    (summary.handled, summary.retried, summary.dead_lettered)
}

fn assert_letter(letter: &DeadLetter, reason: Reason, attempts: u32, text: &str) {
    assert_eq!((letter.reason, letter.attempts), (reason, attempts));
    assert!(letter.error.contains(text), "{}", letter.error);
}

fn two_quick_attempts() -> RetryPolicy {
    RetryPolicy::exponential()
        .max_attempts(2)
        .initial_delay(Duration::from_millis(100))
        .jitter(false)
}

/// A panic in a handler, in its first poll (which the dispatch loop makes
/// in place) or after it waited, fails the attempt: the consumer goes on,
/// and the event is dead-lettered once its attempts run out.
#[tokio::test(start_paused = true)]
async fn a_panicking_handler_fails_its_attempt_and_the_consumer_goes_on() {
    let bus = Bus::memory("test");
    let mut dlq = dead_letters(&bus, "worker").await;
    let handled: Handled = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(handled.clone())
        .handle(|e: Event<Job>, ctx: Context<Handled>| async move {
            match e.payload.n {
                1 => panic!("at once"),
                2 => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    panic!("after waiting")
                }
                n => {
                    ctx.state().lock().unwrap().push(n);
                    Ok::<_, HandlerError>(())
                }
            }
        })
        .retry(two_quick_attempts());
    let (tx, handle) = start(consumer);
    tokio::task::yield_now().await;
    for n in 1..=3 {
        bus.publish(&bus.event(Job { n })).await.unwrap();
    }
    let mut letters = [
        next_dead_letter(&mut dlq).await,
        next_dead_letter(&mut dlq).await,
    ];
    letters.sort_by(|a, b| a.error.cmp(&b.error));
    for (letter, text) in letters.iter().zip(["after waiting", "at once"]) {
        assert_letter(
            letter,
            Reason::AttemptsExhausted,
            2,
            &format!("handler panicked: {text}"),
        );
    }
    assert_eq!(*handled.lock().unwrap(), [3]);
    let summary = stop(tx, handle).await;
    assert_eq!(outcome(&summary), (1, 2, 2));
}

/// A handler still running at its timeout fails the attempt (the timeout
/// counts from its first poll, made in place by the dispatch loop).
#[tokio::test(start_paused = true)]
async fn a_handler_past_its_timeout_fails_its_attempt() {
    let bus = Bus::memory("test");
    let mut dlq = dead_letters(&bus, "worker").await;
    let started: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(started.clone())
        .handle(
            |_e: Event<Job>, ctx: Context<Arc<Mutex<Vec<Instant>>>>| async move {
                ctx.state().lock().unwrap().push(Instant::now());
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, HandlerError>(())
            },
        )
        .handler_timeout(Duration::from_secs(1))
        .retry(two_quick_attempts());
    let (tx, handle) = start(consumer);
    tokio::task::yield_now().await;
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    let letter = next_dead_letter(&mut dlq).await;
    let failed = Instant::now();
    assert_letter(
        &letter,
        Reason::AttemptsExhausted,
        2,
        "did not finish within 1s",
    );
    let started = started.lock().unwrap().clone();
    assert_eq!(started.len(), 2);
    // Each attempt ends at its timeout, not at the handler's 10 s.
    assert!(started[1] - started[0] < Duration::from_secs(2));
    assert!(failed - started[1] < Duration::from_secs(2));
    let summary = stop(tx, handle).await;
    assert_eq!((summary.handled, summary.dead_lettered), (0, 1));
}

/// A payload whose `Deserialize` panics.
#[derive(Debug, Serialize)]
struct Fragile {
    n: u32,
}
impl<'de> Deserialize<'de> for Fragile {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        panic!("payload code panicked")
    }
}
impl EventPayload for Fragile {
    const TYPE: &'static str = "jobs.fragile";
}

/// Decoding runs user code too: a panic there dead-letters the event at
/// once (it would panic on every attempt), and the consumer goes on.
#[tokio::test(start_paused = true)]
async fn a_payload_that_panics_while_decoding_is_dead_lettered_at_once() {
    let bus = Bus::memory("test");
    let mut dlq = dead_letters(&bus, "worker").await;
    let handled: Handled = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(handled.clone())
        .handle(
            |_e: Event<Fragile>, _ctx: Context<Handled>| async move { Ok::<_, HandlerError>(()) },
        )
        .handle(|e: Event<Job>, ctx: Context<Handled>| async move {
            ctx.state().lock().unwrap().push(e.payload.n);
            Ok::<_, HandlerError>(())
        })
        .retry(two_quick_attempts());
    let (tx, handle) = start(consumer);
    tokio::task::yield_now().await;
    bus.publish(&bus.event(Fragile { n: 1 })).await.unwrap();
    bus.publish(&bus.event(Job { n: 2 })).await.unwrap();
    let letter = next_dead_letter(&mut dlq).await;
    assert_letter(
        &letter,
        Reason::Decode,
        1,
        "decoding panicked: payload code panicked",
    );
    let summary = stop(tx, handle).await;
    assert_eq!(*handled.lock().unwrap(), [2]);
    assert_eq!(outcome(&summary), (1, 0, 1));
}

/// A handler's synchronous part (a closure that works before returning
/// its future) panicking fails the attempt like a panic in its future; the
/// runtime calls it once per attempt, never again for the same delivery.
#[tokio::test(start_paused = true)]
async fn a_handler_panicking_before_its_future_is_called_once_per_attempt() {
    let bus = Bus::memory("test");
    let mut dlq = dead_letters(&bus, "worker").await;
    let calls: Handled = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(calls.clone())
        .handle(|e: Event<Job>, ctx: Context<Handled>| {
            ctx.state().lock().unwrap().push(e.payload.n);
            if e.payload.n == 1 {
                panic!("before its future");
            }
            async move { Ok::<_, HandlerError>(()) }
        })
        .retry(two_quick_attempts());
    let (tx, handle) = start(consumer);
    tokio::task::yield_now().await;
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    bus.publish(&bus.event(Job { n: 2 })).await.unwrap();
    let letter = next_dead_letter(&mut dlq).await;
    assert_letter(
        &letter,
        Reason::AttemptsExhausted,
        2,
        "handler panicked: before its future",
    );
    let summary = stop(tx, handle).await;
    let mut calls = calls.lock().unwrap().clone();
    calls.sort_unstable();
    assert_eq!(calls, [1, 1, 2], "one call per attempt");
    assert_eq!(outcome(&summary), (1, 1, 1));
}

/// Letters a replay leaves alone (skipped by its filter) stay unsettled and
/// come back after the ack wait: each is counted once, and their coming
/// back does not keep the replay going (with an ack wait shorter than the
/// idle time it used to run forever, counting the same letter again).
#[tokio::test(start_paused = true)]
async fn a_replay_counts_a_letter_it_leaves_alone_once_and_still_ends() {
    let bus = Bus::memory("test");
    let subject = Subject::parse(&format!("deadletter.{}.worker", bus.codec().prefix())).unwrap();
    let mut dlq = bus
        .transport()
        .subscribe(
            SubscribeOptions::new(SubjectPattern::exact(&subject))
                .ack_wait(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    for error in ["a", "b", "c"] {
        let letter = DeadLetter {
            original: crate::transport::Message::new(
                Subject::parse("test.jobs.created").unwrap(),
                &b"{}"[..],
            ),
            reason: Reason::Rejected,
            error: error.into(),
            attempts: 1,
            consumer: "worker".into(),
            time: chrono::Utc::now(),
            stream_sequence: None,
            body_omitted: None,
        };
        bus.transport()
            .publish(letter.to_message(subject.clone()))
            .await
            .unwrap();
    }
    let mut originals = bus
        .transport()
        .subscribe(SubscribeOptions::new(
            SubjectPattern::parse("test.jobs.created").unwrap(),
        ))
        .await
        .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        replay(
            bus.transport().as_ref(),
            &mut dlq,
            10,
            Duration::from_secs(1),
            |l| l.error != "b",
        ),
    )
    .await
    .expect("the replay ends")
    .unwrap();
    assert_eq!((report.replayed, report.skipped), (2, 1));
    for _ in 0..2 {
        originals
            .next()
            .await
            .unwrap()
            .unwrap()
            .ack()
            .await
            .unwrap();
    }
}

/// The concurrency limit bounds the handlers running at once, counting the
/// one the dispatch loop is polling in place: the limit is reached and
/// never passed.
#[tokio::test(start_paused = true)]
async fn the_concurrency_limit_bounds_the_handlers_running_at_once() {
    /// (running now, most at once, finished)
    type Gauge = Arc<Mutex<(usize, usize, usize)>>;
    for limit in [1, 3] {
        let bus = Bus::memory("test");
        let gauge: Gauge = Arc::default();
        let consumer = Consumer::new(&bus, "worker")
            .unwrap()
            .state(gauge.clone())
            .handle(|_e: Event<Job>, ctx: Context<Gauge>| async move {
                {
                    let mut g = ctx.state().lock().unwrap();
                    g.0 += 1;
                    g.1 = g.1.max(g.0);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                {
                    let mut g = ctx.state().lock().unwrap();
                    g.0 -= 1;
                    g.2 += 1;
                }
                Ok::<_, HandlerError>(())
            })
            .concurrency(limit);
        let (tx, handle) = start(consumer);
        tokio::task::yield_now().await;
        for n in 0..20 {
            bus.publish(&bus.event(Job { n })).await.unwrap();
        }
        wait_until(|| gauge.lock().unwrap().2 == 20).await;
        let summary = stop(tx, handle).await;
        assert_eq!(gauge.lock().unwrap().1, limit, "concurrency {limit}");
        assert_eq!(summary.handled, 20);
    }
}

/// State needs no `Clone`: one value is shared by every handling.
#[tokio::test]
async fn state_that_is_not_clone_is_shared_by_every_handling() {
    struct Ledger {
        seen: Mutex<Vec<u32>>,
    }
    let bus = Bus::memory("test");
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(Ledger {
            seen: Mutex::new(Vec::new()),
        })
        .handle(|e: Event<Job>, ctx: Context<Ledger>| async move {
            let count = {
                let mut seen = ctx.state().seen.lock().unwrap();
                seen.push(e.payload.n);
                seen.len()
            };
            if count == 3 {
                ctx.bus().publish(&ctx.reaction(Done)).await.ok();
            }
            Ok::<_, HandlerError>(())
        });
    let mut done = bus.subscribe::<Done>().await.unwrap();
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for n in 1..=3 {
        bus.publish(&bus.event(Job { n })).await.unwrap();
    }
    let d = tokio::time::timeout(Duration::from_secs(5), done.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    d.ack().await.unwrap();
    assert_eq!(stop(tx, handle).await.handled, 3);
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done;
impl EventPayload for Done {
    const TYPE: &'static str = "jobs.done";
}

/// Records when the call enters and leaves it, under its name.
struct Recording {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Layer for Recording {
    fn call(&self, next: Next<'_>) -> HandlerFuture {
        let (name, log) = (self.name, self.log.clone());
        log.lock().unwrap().push(format!(
            "{name} in {} {}",
            next.event_type(),
            next.attempt()
        ));
        let handling = next.run();
        Box::pin(async move {
            let result = handling.await;
            log.lock()
                .unwrap()
                .push(format!("{name} out {}", result.is_ok()));
            result
        })
    }
}

/// Layers wrap every attempt, the first added outermost, and what the
/// handler returns goes back out through them.
#[tokio::test(start_paused = true)]
async fn layers_wrap_each_attempt_the_first_added_outermost() {
    let bus = Bus::memory("test");
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let layer = |name| Recording {
        name,
        log: log.clone(),
    };
    let handler_log = log.clone();
    let running = Consumer::new(&bus, "worker")
        .unwrap()
        .layer(layer("outer"))
        .layer(layer("inner"))
        .handle(move |_e: Event<Job>, ctx: Context<()>| {
            let log = handler_log.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push(format!("handler {}", ctx.attempt()));
                if ctx.attempt() == 1 {
                    return Err(HandlerError::retry("first attempt fails"));
                }
                Ok(())
            }
        })
        .retry(two_quick_attempts())
        .start()
        .await
        .unwrap();
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    wait_until(|| log.lock().unwrap().len() == 10).await;
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer in jobs.created 1",
            "inner in jobs.created 1",
            "handler 1",
            "inner out false",
            "outer out false",
            "outer in jobs.created 2",
            "inner in jobs.created 2",
            "handler 2",
            "inner out true",
            "outer out true",
        ]
    );
    assert_eq!(outcome(&running.shutdown().await.unwrap()), (1, 1, 0));
}

/// Publishes job 1 with the key `key-1`.
async fn publish_keyed_job(bus: &Bus) {
    let mut event = bus.event(Job { n: 1 });
    event.metadata.set_subject(Some("key-1".to_owned()));
    bus.publish(&event).await.unwrap();
}

/// Refuses every event without calling the handler.
struct Refuse;

impl Layer for Refuse {
    fn call(&self, _next: Next<'_>) -> HandlerFuture {
        Box::pin(async { Err(HandlerError::reject("refused by the layer")) })
    }
}

/// A layer that does not run the rest settles the event with its own
/// result, on the dispatch loop's fast path and on the ordered path alike.
#[tokio::test(start_paused = true)]
async fn a_layer_that_does_not_run_next_decides_the_outcome_alone() {
    for ordered in [false, true] {
        let bus = Bus::memory("test");
        let mut dlq = dead_letters(&bus, "worker").await;
        let called = Arc::new(Mutex::new(0));
        let handler_called = called.clone();
        let running = Consumer::new(&bus, "worker")
            .unwrap()
            .ordered_by_key(ordered)
            .layer(Refuse)
            .handle(move |_e: Event<Job>, _ctx: Context<()>| {
                *handler_called.lock().unwrap() += 1;
                async { Ok::<_, HandlerError>(()) }
            })
            .start()
            .await
            .unwrap();
        publish_keyed_job(&bus).await;
        let letter = next_dead_letter(&mut dlq).await;
        assert_letter(&letter, Reason::Rejected, 1, "refused by the layer");
        assert_eq!(*called.lock().unwrap(), 0, "ordered: {ordered}");
        let summary = running.shutdown().await.unwrap();
        assert_eq!(outcome(&summary), (0, 0, 1), "ordered: {ordered}");
    }
}

/// Hangs on the first attempt (it never runs the rest), runs it on the
/// others.
struct HangsOnce;

impl Layer for HangsOnce {
    fn call(&self, next: Next<'_>) -> HandlerFuture {
        if next.attempt() == 1 {
            return Box::pin(std::future::pending());
        }
        next.run()
    }
}

/// User layers sit inside the runtime's timeout and retry layers: a layer
/// that hangs is cut off by the handler timeout like a handler, and the
/// attempt is retried, on the fast path and on the ordered path alike.
#[tokio::test(start_paused = true)]
async fn a_hanging_layer_is_cut_off_by_the_handler_timeout_and_retried() {
    for ordered in [false, true] {
        let bus = Bus::memory("test");
        let handled = Arc::new(Mutex::new(Vec::new()));
        let log = handled.clone();
        let running = Consumer::new(&bus, "worker")
            .unwrap()
            .ordered_by_key(ordered)
            .layer(HangsOnce)
            .handler_timeout(Duration::from_millis(100))
            .retry(two_quick_attempts())
            .handle(move |_e: Event<Job>, ctx: Context<()>| {
                log.lock().unwrap().push(ctx.attempt());
                async { Ok::<_, HandlerError>(()) }
            })
            .start()
            .await
            .unwrap();
        publish_keyed_job(&bus).await;
        wait_until(|| !handled.lock().unwrap().is_empty()).await;
        let summary = running.shutdown().await.unwrap();
        assert_eq!(*handled.lock().unwrap(), [2], "ordered: {ordered}");
        assert_eq!(outcome(&summary), (1, 1, 0), "ordered: {ordered}");
    }
}

/// The README's layer example is `Layer`'s doc test, whose hidden lines
/// (`# `) the README leaves out: the two must not drift apart.
#[test]
fn the_readme_layer_example_is_the_doc_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).unwrap();
    let section = &readme[readme.find("### Your own layers").unwrap()..];
    let start = section.find("```rust\n").unwrap() + "```rust\n".len();
    let end = start + section[start..].find("```").unwrap();
    let in_readme: Vec<&str> = section[start..end].lines().collect();

    let source = std::fs::read_to_string(root.join("src/consumer/layer.rs")).unwrap();
    let doc: Vec<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("///"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let open = doc.iter().position(|l| *l == "```").unwrap();
    let close = open + 1 + doc[open + 1..].iter().position(|l| *l == "```").unwrap();
    let in_doc: Vec<&str> = doc[open + 1..close]
        .iter()
        .copied()
        .filter(|l| !l.starts_with("# ") && *l != "#")
        .collect();
    assert!(in_doc.len() > 20, "{in_doc:?}");
    assert_eq!(in_readme, in_doc);
}
