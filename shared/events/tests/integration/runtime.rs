//! The consumer runtime's behaviour, written once and run on every backend
//! (like the conformance suite: `runtime_suite!(backend, make)`).
//!
//! Dead letters go to `deadletter.<prefix>.worker`; a JetStream backend's
//! stream must capture `deadletter.conf.>` as well as `conf.>`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::consumer::{
    replay, Consumer, Context, DeadLetter, HandlerError, MemoryIdempotencyStore, Reason,
    RetryPolicy, Running, Summary,
};
use events::envelope::TraceContext;
use events::transport::{
    Capability, Message, SubjectPattern, SubscribeOptions, Subscription, Transport,
};
use events::wire::ContentMode;
use events::{Bus, Event, EventPayload};
use serde::{Deserialize, Serialize};

use crate::conformance::bus_on;
use crate::support;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub n: u32,
}
impl EventPayload for Job {
    const TYPE: &'static str = "jobs.created";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDone {
    pub n: u32,
}
impl EventPayload for JobDone {
    const TYPE: &'static str = "jobs.done";
}

const ARRIVE: Duration = Duration::from_secs(20);

/// (event number, attempt) pairs a handler saw.
type Seen = Arc<Mutex<Vec<(u32, u32)>>>;
type Flag = Arc<Mutex<bool>>;
type Count = Arc<Mutex<u32>>;

/// Starts `consumer`: returns once its subscriptions are live.
async fn start<S: Send + Sync + 'static>(consumer: Consumer<S>) -> Running {
    consumer.start().await.expect("the consumer starts")
}

async fn stop(running: Running) -> Summary {
    running.shutdown().await.unwrap()
}

async fn dead_letters(bus: &Bus) -> Subscription {
    let subject = format!("deadletter.{}.worker", bus.codec().prefix());
    bus.transport()
        .subscribe(SubscribeOptions::new(
            SubjectPattern::parse(&subject).unwrap(),
        ))
        .await
        .unwrap()
}

async fn next_dead_letter(sub: &mut Subscription) -> DeadLetter {
    let d = tokio::time::timeout(ARRIVE, sub.next())
        .await
        .expect("a dead letter in time")
        .expect("open")
        .expect("no transport error");
    let letter = DeadLetter::from_message(d.message()).unwrap();
    d.ack().await.unwrap();
    letter
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < ARRIVE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential()
        .max_attempts(attempts)
        .initial_delay(Duration::from_millis(200))
        .max_delay(Duration::from_secs(2))
        .jitter(false)
}

pub async fn retries_count_attempts_and_respect_the_backoff<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    // Attempt, when, and what the handler got: every attempt gets the same
    // event (in-process retries decode it again from the message).
    type Calls = Arc<Mutex<Vec<(u32, Instant, String, u32)>>>;
    let calls: Calls = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(calls.clone())
        .handle(|e: Event<Job>, ctx: Context<Calls>| async move {
            ctx.state().lock().unwrap().push((
                ctx.attempt(),
                Instant::now(),
                e.metadata.id().to_owned(),
                e.payload.n,
            ));
            if ctx.attempt() < 3 {
                Err(HandlerError::retry("not yet"))
            } else {
                Ok(())
            }
        })
        .retry(fast_retry(5));
    let running = start(consumer).await;
    let event = bus.event(Job { n: 7 });
    bus.publish(&event).await.unwrap();
    wait_until("three attempts", || calls.lock().unwrap().len() == 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let summary = stop(running).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(|c| c.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "no fourth call"
    );
    for call in &calls {
        assert_eq!((call.2.as_str(), call.3), (event.metadata.id(), 7));
    }
    assert!(calls[1].1 - calls[0].1 >= Duration::from_millis(200));
    assert!(calls[2].1 - calls[1].1 >= Duration::from_millis(400));
    assert_eq!(
        (summary.handled, summary.retried, summary.dead_lettered),
        (1, 2, 0)
    );
    bus.close().await.unwrap();
}

pub async fn a_poison_event_is_dead_lettered_once_while_the_others_flow<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let mut dlq = dead_letters(&bus).await;
    let handled: Arc<Mutex<Vec<u32>>> = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(handled.clone())
        .handle(
            |e: Event<Job>, ctx: Context<Arc<Mutex<Vec<u32>>>>| async move {
                if e.payload.n == 50 {
                    return Err(HandlerError::retry("poison"));
                }
                ctx.state().lock().unwrap().push(e.payload.n);
                Ok(())
            },
        )
        .retry(fast_retry(3));
    let running = start(consumer).await;
    for n in 0..100 {
        bus.publish(&bus.event(Job { n })).await.unwrap();
    }
    let letter = next_dead_letter(&mut dlq).await;
    assert_eq!(letter.reason, Reason::AttemptsExhausted);
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.consumer, "worker");
    assert!(letter.error.contains("poison"), "{}", letter.error);
    let poison: Job = serde_json::from_slice(
        &events::wire::decode(&letter.original)
            .unwrap()
            .data
            .unwrap(),
    )
    .unwrap();
    assert_eq!(poison.n, 50);
    wait_until("99 handled", || handled.lock().unwrap().len() == 99).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), dlq.next())
            .await
            .is_err(),
        "dead-lettered once"
    );
    let summary = stop(running).await;
    assert_eq!(
        (summary.handled, summary.dead_lettered, summary.retried),
        (99, 1, 2)
    );
    let mut seen = handled.lock().unwrap().clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 99, "each handled once");
    bus.close().await.unwrap();
}

pub async fn undecodable_and_unknown_version_events_are_dead_lettered_at_once<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    #[derive(Serialize, Deserialize)]
    struct JobV9 {
        n: u32,
    }
    impl EventPayload for JobV9 {
        const TYPE: &'static str = "jobs.created";
        const VERSION: u32 = 9;
    }
    let bus = bus_on(&make).await;
    let mut dlq = dead_letters(&bus).await;
    let calls = Arc::new(Mutex::new(0));
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(calls.clone())
        .handle(|_e: Event<Job>, ctx: Context<Arc<Mutex<u32>>>| async move {
            *ctx.state().lock().unwrap() += 1;
            Ok::<_, HandlerError>(())
        });
    let running = start(consumer).await;
    let subject = bus.codec().subject_for(Job::TYPE).unwrap();
    bus.transport()
        .publish(Message::new(subject, &b"garbage"[..]))
        .await
        .unwrap();
    let letter = next_dead_letter(&mut dlq).await;
    assert_eq!((letter.reason, letter.attempts), (Reason::Decode, 1));
    assert_eq!(
        &letter.original.payload[..],
        b"garbage",
        "original body kept"
    );
    bus.publish(&bus.event(JobV9 { n: 1 })).await.unwrap();
    let letter = next_dead_letter(&mut dlq).await;
    assert_eq!(
        (letter.reason, letter.attempts),
        (Reason::UnsupportedVersion, 1)
    );
    let summary = stop(running).await;
    assert_eq!(summary.dead_lettered, 2);
    assert_eq!(*calls.lock().unwrap(), 0, "the handler never saw them");
    bus.close().await.unwrap();
}

pub async fn shutdown_nacks_unfinished_handlers_and_acks_nothing_unhandled<F, Fut>(make: F)
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
        return; // Nothing to nack into: at-most-once backends lose in-flight work by contract.
    }
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(started.clone())
        .handle(
            |e: Event<Job>, ctx: Context<Arc<tokio::sync::Semaphore>>| async move {
                ctx.state().add_permits(1);
                if e.payload.n > 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await; // stuck
                }
                Ok::<_, HandlerError>(())
            },
        )
        .concurrency(4)
        .shutdown_timeout(Duration::from_millis(300));
    let first = start(consumer).await;
    for n in 0..3 {
        bus.publish(&bus.event(Job { n })).await.unwrap();
    }
    let _ = tokio::time::timeout(ARRIVE, started.acquire_many(3))
        .await
        .unwrap()
        .unwrap();
    // A second instance of the same consumer joins, then the first stops:
    // the second gets exactly the unfinished events.
    let again: Seen = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(again.clone())
        .handle(|e: Event<Job>, ctx: Context<Seen>| async move {
            ctx.state()
                .lock()
                .unwrap()
                .push((e.payload.n, ctx.attempt()));
            Ok::<_, HandlerError>(())
        });
    let second = start(consumer).await;
    let summary = stop(first).await;
    assert_eq!((summary.handled, summary.nacked_on_shutdown), (1, 2));
    let events = |seen: &[(u32, u32)]| {
        let mut events: Vec<u32> = seen.iter().map(|(n, _)| *n).collect();
        events.sort_unstable();
        events.dedup();
        events
    };
    wait_until("two redeliveries", || {
        events(&again.lock().unwrap()) == [1, 2]
    })
    .await;
    // Nothing else comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(second).await;
    let mut again = again.lock().unwrap().clone();
    again.sort_unstable();
    // On nats-server before 2.10.14 a redelivery that finds only a dead
    // pull request rewinds the consumer: the event comes with its delivery
    // count back at 1, and can come twice (see
    // `a_crashed_instance_s_unfinished_event_goes_to_another_instance`).
    let rewinds = bus.transport().name() == "jetstream" && support::server_rewinds_redeliveries();
    if rewinds {
        assert_eq!(events(&again), [1, 2], "only the unfinished: {again:?}");
        assert!(
            again.len() <= 4 && again.iter().all(|(_, attempt)| *attempt <= 2),
            "as their second attempt, or a rewound first: {again:?}"
        );
    } else {
        assert_eq!(
            again,
            [(1, 2), (2, 2)],
            "only the unfinished, as their second attempt"
        );
    }
    bus.close().await.unwrap();
}

pub async fn with_idempotency_a_duplicate_event_is_handled_once<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let count = Arc::new(Mutex::new(0u32));
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(count.clone())
        .handle(|_e: Event<Job>, ctx: Context<Arc<Mutex<u32>>>| async move {
            *ctx.state().lock().unwrap() += 1;
            Ok::<_, HandlerError>(())
        })
        .idempotency(MemoryIdempotencyStore::new(Duration::from_secs(120)));
    let running = start(consumer).await;
    let event = bus.event(Job { n: 1 });
    // The same event published again under a new dedup id, as a producer
    // replaying its outbox would: the broker cannot deduplicate it.
    for _ in 0..3 {
        let mut message = bus.encode(&event, Default::default()).unwrap();
        message.dedup_id = None;
        bus.transport().publish(message).await.unwrap();
    }
    bus.publish(&bus.event(Job { n: 2 })).await.unwrap();
    wait_until("both handled", || *count.lock().unwrap() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = stop(running).await;
    assert_eq!(*count.lock().unwrap(), 2);
    assert_eq!((summary.handled, summary.duplicates), (2, 2));
    bus.close().await.unwrap();
}

pub async fn events_of_one_key_are_handled_in_order_under_concurrency_8<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    type Log = Arc<Mutex<HashMap<String, Vec<u32>>>>;
    type Busy = Arc<Mutex<HashMap<String, bool>>>;
    let bus = bus_on(&make).await;
    if !bus
        .transport()
        .capabilities()
        .supports(Capability::OrderedPerPublisher)
    {
        return;
    }
    let log: Log = Arc::default();
    let busy: Busy = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state((log.clone(), busy.clone()))
        .handle(|e: Event<Job>, ctx: Context<(Log, Busy)>| async move {
            let key = e.metadata.subject().unwrap().to_owned();
            let (log, busy) = ctx.state();
            assert!(
                !busy
                    .lock()
                    .unwrap()
                    .insert(key.clone(), true)
                    .unwrap_or(false),
                "two at once for {key}"
            );
            // Later events of a key finish faster: only ordering keeps them in line.
            tokio::time::sleep(Duration::from_millis(u64::from(20 - e.payload.n % 20))).await;
            log.lock()
                .unwrap()
                .entry(key.clone())
                .or_default()
                .push(e.payload.n);
            busy.lock().unwrap().insert(key, false);
            Ok::<_, HandlerError>(())
        })
        .concurrency(8)
        .ordered_by_key(true);
    let running = start(consumer).await;
    for n in 0..80 {
        bus.publish(&bus.event(Job { n }).with_subject(format!("k{}", n % 4)))
            .await
            .unwrap();
    }
    wait_until("80 handled", || {
        log.lock().unwrap().values().map(Vec::len).sum::<usize>() == 80
    })
    .await;
    let summary = stop(running).await;
    assert_eq!(summary.handled, 80);
    for (key, ns) in log.lock().unwrap().iter() {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "order of {key}");
        assert_eq!(ns.len(), 20);
    }
    bus.close().await.unwrap();
}

pub async fn trace_context_and_causality_survive_publish_handle_publish<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let consumer = Consumer::new(&bus, "worker").unwrap().handle(
        |_e: Event<Job>, ctx: Context<()>| async move {
            ctx.bus().publish(&ctx.reaction(JobDone { n: 1 })).await?;
            Ok::<_, HandlerError>(())
        },
    );
    let mut done = bus.subscribe::<JobDone>().await.unwrap();
    let running = start(consumer).await;
    let trace = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .unwrap()
        .with_tracestate("vendor=x");
    let first = bus
        .event(Job { n: 1 })
        .with_trace(trace.clone())
        .with_correlation_id("flow-1");
    bus.publish(&first).await.unwrap();
    let d = tokio::time::timeout(ARRIVE, done.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.metadata().trace(), Some(&trace));
    assert_eq!(d.metadata().correlation_id(), Some("flow-1"));
    assert_eq!(d.metadata().causation_id(), Some(first.metadata.id()));
    d.ack().await.unwrap();
    stop(running).await;
    bus.close().await.unwrap();
}

pub async fn dead_letters_can_be_replayed_after_a_fix<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let mut dlq = dead_letters(&bus).await;
    let fixed = Arc::new(Mutex::new(false));
    let handled = Arc::new(Mutex::new(0u32));
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state((fixed.clone(), handled.clone()))
        .handle(|_e: Event<Job>, ctx: Context<(Flag, Count)>| async move {
            if !*ctx.state().0.lock().unwrap() {
                return Err(HandlerError::reject("bug"));
            }
            *ctx.state().1.lock().unwrap() += 1;
            Ok(())
        });
    let running = start(consumer).await;
    for n in 0..3 {
        bus.publish(&bus.event(Job { n })).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    *fixed.lock().unwrap() = true; // the fix is deployed
    let report = replay(
        bus.transport().as_ref(),
        &mut dlq,
        10,
        Duration::from_secs(1),
        |l| l.reason == Reason::Rejected,
    )
    .await
    .unwrap();
    assert_eq!(report.replayed, 3);
    wait_until("replayed events handled", || *handled.lock().unwrap() == 3).await;
    let summary = stop(running).await;
    assert_eq!((summary.dead_lettered, summary.handled), (3, 3));
    bus.close().await.unwrap();
}

pub async fn a_crashed_instance_s_unfinished_event_goes_to_another_instance<F, Fut>(make: F)
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
        return; // At-most-once: a crash loses in-flight events by contract.
    }
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let crashing = Consumer::new(&bus, "worker")
        .unwrap()
        .state(started.clone())
        .handle(
            |_e: Event<Job>, ctx: Context<Arc<tokio::sync::Semaphore>>| async move {
                ctx.state().add_permits(1);
                tokio::time::sleep(Duration::from_secs(3600)).await; // the process dies in here
                Ok::<_, HandlerError>(())
            },
        )
        .ack_wait(Duration::from_secs(1));
    let crashing = start(crashing).await;
    bus.publish(&bus.event(Job { n: 7 })).await.unwrap();
    let _ = tokio::time::timeout(ARRIVE, started.acquire())
        .await
        .unwrap()
        .unwrap();

    // The other instance is up (its pull waiting) before the crash.
    let seen: Seen = Arc::default();
    let survivor = Consumer::new(&bus, "worker")
        .unwrap()
        .state(seen.clone())
        .handle(|e: Event<Job>, ctx: Context<Seen>| async move {
            ctx.state()
                .lock()
                .unwrap()
                .push((e.payload.n, ctx.attempt()));
            Ok::<_, HandlerError>(())
        })
        .ack_wait(Duration::from_secs(1));
    let survivor = start(survivor).await;
    // A crash: the consumer's task ends mid-handling, nothing is settled.
    crashing.abort().await;

    wait_until("the redelivery", || !seen.lock().unwrap().is_empty()).await;
    let summary = stop(survivor).await;
    let seen = seen.lock().unwrap().clone();
    // Handled once more, as a redelivery: attempt 2, or later if the server
    // first handed it to the dead instance's pull request, still open on
    // the shared connection (and so waited one more ack wait). On
    // nats-server before 2.10.14 (nats-server PR #5305), a redelivery that
    // comes due while the only pull request waiting is a dead one also
    // rewinds the consumer, which then delivers the event once more with
    // its delivery count back at 1, even after the survivor acked it (about
    // one full-suite run in three on 2.9.10, under load; reproduced with
    // async-nats alone). The transport warns about such servers at connect.
    let rewinds = bus.transport().name() == "jetstream" && support::server_rewinds_redeliveries();
    let once_more = match seen[..] {
        [(7, attempt)] => attempt >= 2,
        [(7, attempt), (7, 1)] => attempt >= 2 && rewinds,
        _ => false,
    };
    assert!(once_more, "handled once more, as a redelivery: {seen:?}");
    assert_eq!(summary.handled, seen.len() as u64);
    bus.close().await.unwrap();
}

pub async fn a_handler_longer_than_the_ack_wait_keeps_its_event<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let calls: Count = Arc::default();
    let instance = || {
        Consumer::new(&bus, "worker")
            .unwrap()
            .state(calls.clone())
            .handle(|_e: Event<Job>, ctx: Context<Count>| async move {
                *ctx.state().lock().unwrap() += 1;
                // Well past the ack wait: the runtime must keep the delivery.
                tokio::time::sleep(Duration::from_millis(2500)).await;
                Ok::<_, HandlerError>(())
            })
            .ack_wait(Duration::from_secs(1))
    };
    let (first, second) = (start(instance()).await, start(instance()).await);
    bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
    wait_until("the first call", || *calls.lock().unwrap() == 1).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let handled = stop(first).await.handled + stop(second).await.handled;
    assert_eq!(*calls.lock().unwrap(), 1, "handed to another instance");
    assert_eq!(handled, 1);
    bus.close().await.unwrap();
}

pub async fn a_retried_event_keeps_its_place_in_its_key_s_order<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    if !bus
        .transport()
        .capabilities()
        .supports(Capability::OrderedPerPublisher)
    {
        return;
    }
    let seen: Seen = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(seen.clone())
        .handle(|e: Event<Job>, ctx: Context<Seen>| async move {
            ctx.state()
                .lock()
                .unwrap()
                .push((e.payload.n, ctx.attempt()));
            if e.payload.n == 0 && ctx.attempt() < 3 {
                Err(HandlerError::retry("not yet"))
            } else {
                Ok(())
            }
        })
        .retry(fast_retry(5))
        .concurrency(8)
        .ordered_by_key(true);
    let running = start(consumer).await;
    for n in 0..3 {
        bus.publish(&bus.event(Job { n }).with_subject("k"))
            .await
            .unwrap();
    }
    wait_until("three handled", || seen.lock().unwrap().len() == 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = stop(running).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [(0, 1), (0, 2), (0, 3), (1, 1), (2, 1)],
        "the key's next events waited for the retried one"
    );
    assert_eq!((summary.handled, summary.retried), (3, 2));
    bus.close().await.unwrap();
}

pub async fn a_duplicate_arriving_during_handling_waits_for_the_outcome<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let bus = bus_on(&make).await;
    let calls: Count = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(calls.clone())
        .handle(|_e: Event<Job>, ctx: Context<Count>| async move {
            *ctx.state().lock().unwrap() += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, HandlerError>(())
        })
        .idempotency(MemoryIdempotencyStore::new(Duration::from_secs(120)));
    let running = start(consumer).await;
    let event = bus.event(Job { n: 1 });
    for _ in 0..2 {
        let mut message = bus.encode(&event, Default::default()).unwrap();
        message.dedup_id = None;
        bus.transport().publish(message).await.unwrap();
    }
    wait_until("the first call", || *calls.lock().unwrap() == 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let summary = stop(running).await;
    assert_eq!(*calls.lock().unwrap(), 1);
    // The copy waited for the first delivery and was then acknowledged as a
    // duplicate: not dropped (core NATS cannot redeliver), not retried.
    assert_eq!(
        (summary.handled, summary.duplicates, summary.retried),
        (1, 1, 0)
    );
    bus.close().await.unwrap();
}

pub async fn a_dead_letter_too_large_for_one_message_goes_without_its_body<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    /// A `jobs.created` event with padding (a `Job` to the handler).
    #[derive(Serialize, Deserialize)]
    struct BigJob {
        n: u32,
        pad: String,
    }
    impl EventPayload for BigJob {
        const TYPE: &'static str = "jobs.created";
    }
    let bus = bus_on(&make).await;
    let limit = bus.transport().capabilities().max_message_size;
    let mut dlq = dead_letters(&bus).await;
    let consumer =
        Consumer::new(&bus, "worker")
            .unwrap()
            .handle(|_e: Event<Job>, _ctx: Context<()>| async {
                Err::<(), _>(HandlerError::reject("too big to handle"))
            });
    let running = start(consumer).await;
    // The event fits with 64 bytes to spare; its copy, with the
    // dead-letter headers, does not.
    let mut event = bus.event(BigJob {
        n: 1,
        pad: String::new(),
    });
    let empty = bus.codec().encode(&event, ContentMode::Structured).unwrap();
    event.payload.pad = "x".repeat(limit - empty.wire_len() - 64);
    let sent = bus.codec().encode(&event, ContentMode::Structured).unwrap();
    assert_eq!(sent.wire_len(), limit - 64);
    bus.publish(&event).await.unwrap();
    let letter = next_dead_letter(&mut dlq).await;
    assert_eq!((letter.reason, letter.attempts), (Reason::Rejected, 1));
    assert_eq!(letter.body_omitted, Some(sent.payload.len()));
    assert!(letter.original.payload.is_empty());
    assert_eq!(letter.original.subject, sent.subject);
    assert!(
        letter.error.ends_with("too big to handle"),
        "{}",
        letter.error
    );
    let summary = stop(running).await;
    assert_eq!(
        (summary.dead_lettered, summary.dead_letter_failures),
        (1, 0)
    );
    bus.close().await.unwrap();
}

/// Generates one `#[tokio::test]` per runtime case for a backend.
#[macro_export]
macro_rules! runtime_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            use $crate::runtime as r;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retries_count_attempts_and_respect_the_backoff() {
                r::retries_count_attempts_and_respect_the_backoff($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_poison_event_is_dead_lettered_once_while_the_others_flow() {
                r::a_poison_event_is_dead_lettered_once_while_the_others_flow($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn undecodable_and_unknown_version_events_are_dead_lettered_at_once() {
                r::undecodable_and_unknown_version_events_are_dead_lettered_at_once($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_dead_letter_too_large_for_one_message_goes_without_its_body() {
                r::a_dead_letter_too_large_for_one_message_goes_without_its_body($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shutdown_nacks_unfinished_handlers_and_acks_nothing_unhandled() {
                r::shutdown_nacks_unfinished_handlers_and_acks_nothing_unhandled($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn with_idempotency_a_duplicate_event_is_handled_once() {
                r::with_idempotency_a_duplicate_event_is_handled_once($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn events_of_one_key_are_handled_in_order_under_concurrency_8() {
                r::events_of_one_key_are_handled_in_order_under_concurrency_8($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn trace_context_and_causality_survive_publish_handle_publish() {
                r::trace_context_and_causality_survive_publish_handle_publish($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_crashed_instance_s_unfinished_event_goes_to_another_instance() {
                r::a_crashed_instance_s_unfinished_event_goes_to_another_instance($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_handler_longer_than_the_ack_wait_keeps_its_event() {
                r::a_handler_longer_than_the_ack_wait_keeps_its_event($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_retried_event_keeps_its_place_in_its_key_s_order() {
                r::a_retried_event_keeps_its_place_in_its_key_s_order($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_duplicate_arriving_during_handling_waits_for_the_outcome() {
                r::a_duplicate_arriving_during_handling_waits_for_the_outcome($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dead_letters_can_be_replayed_after_a_fix() {
                r::dead_letters_can_be_replayed_after_a_fix($make).await
            }
        }
    };
}

runtime_suite!(memory, || async {
    Arc::new(events::backend::memory::MemoryTransport::new()) as Arc<dyn Transport>
});
