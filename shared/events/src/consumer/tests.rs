use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::*;
use crate::backend::memory::{MemoryConfig, MemoryTransport};
use crate::envelope::TraceContext;
use crate::transport::{Message, SubjectPattern, SubscribeOptions, Subscription};
use crate::{Bus, Event, EventPayload};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    n: u32,
}
impl EventPayload for Job {
    const TYPE: &'static str = "jobs.created";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JobDone {
    n: u32,
}
impl EventPayload for JobDone {
    const TYPE: &'static str = "jobs.done";
}

/// Runs `consumer` in the background; the returned sender stops it.
fn start<S: Clone + Send + Sync + 'static>(
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
async fn a_poison_event_is_dead_lettered_once_while_the_others_flow() {
    let bus = Bus::memory("test");
    let mut dlq = dead_letters(&bus, "worker").await;
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
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .initial_delay(Duration::from_millis(5)),
        );
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for n in 0..100 {
        bus.publish(&bus.event(Job { n })).await.unwrap();
    }
    let letter = next_dead_letter(&mut dlq).await;
    assert_eq!(letter.reason, Reason::AttemptsExhausted);
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.consumer, "worker");
    assert_eq!(letter.original.subject.as_str(), "events.jobs.created");
    assert!(letter.error.contains("poison"), "{}", letter.error);
    let poison: Job =
        serde_json::from_slice(&crate::wire::decode(&letter.original).unwrap().data.unwrap())
            .unwrap();
    assert_eq!(poison.n, 50);
    wait_until(|| handled.lock().unwrap().len() == 99).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), dlq.next())
            .await
            .is_err(),
        "exactly once"
    );
    let summary = stop(tx, handle).await;
    assert_eq!(summary.handled, 99);
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(summary.retried, 2);
}

#[tokio::test]
async fn undecodable_and_unknown_version_events_are_dead_lettered_at_once() {
    let bus = Bus::memory("test");
    let mut dlq = dead_letters(&bus, "worker").await;
    let calls = Arc::new(Mutex::new(0));
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(calls.clone())
        .handle(|_e: Event<Job>, ctx: Context<Arc<Mutex<u32>>>| async move {
            *ctx.state().lock().unwrap() += 1;
            Ok::<_, HandlerError>(())
        });
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let subject = bus.codec().subject_for(Job::TYPE).unwrap();
    bus.transport()
        .publish(Message::new(subject, &b"garbage"[..]))
        .await
        .unwrap();
    let letter = next_dead_letter(&mut dlq).await;
    assert_eq!(letter.reason, Reason::Decode);
    assert_eq!(letter.attempts, 1);
    assert_eq!(
        &letter.original.payload[..],
        b"garbage",
        "original body kept"
    );

    #[derive(Serialize, Deserialize)]
    struct JobV9 {
        n: u32,
    }
    impl EventPayload for JobV9 {
        const TYPE: &'static str = "jobs.created";
        const VERSION: u32 = 9;
    }
    bus.publish(&bus.event(JobV9 { n: 1 })).await.unwrap();
    let letter = next_dead_letter(&mut dlq).await;
    assert_eq!(letter.reason, Reason::UnsupportedVersion);
    assert_eq!(letter.attempts, 1);
    let summary = stop(tx, handle).await;
    assert_eq!(summary.dead_lettered, 2);
    assert_eq!(*calls.lock().unwrap(), 0, "the handler never saw them");
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
    // The copy carries extra headers: with a tight size limit, the original
    // fits and the copy does not, so dead-lettering fails.
    let transport = MemoryTransport::with_config(MemoryConfig::new().max_message_size(420));
    let bus = Bus::builder(transport).source("t").build().unwrap();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .handle(|_e: Event<Job>, _ctx: Context<()>| async move { Err(HandlerError::reject("no")) })
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
async fn shutdown_nacks_unfinished_handlers_and_acks_nothing_unhandled() {
    let bus = Bus::memory("test");
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(started.clone())
        .handle(
            |e: Event<Job>, ctx: Context<Arc<tokio::sync::Semaphore>>| async move {
                ctx.state().add_permits(1);
                if e.payload.n == 0 {
                    return Ok::<_, HandlerError>(());
                }
                tokio::time::sleep(Duration::from_secs(3600)).await; // stuck
                Ok(())
            },
        )
        .concurrency(4)
        .shutdown_timeout(Duration::from_millis(100));
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for n in 0..3 {
        bus.publish(&bus.event(Job { n })).await.unwrap();
    }
    let _ = started.acquire_many(3).await.unwrap();
    // A second instance of the same consumer group picks up what is nacked.
    let mut other = bus.subscribe::<Job>().queue_group("worker").await.unwrap();
    let summary = stop(tx, handle).await;
    assert_eq!(summary.handled, 1);
    assert_eq!(summary.nacked_on_shutdown, 2);
    let mut redelivered = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), other.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.attempt(), 2, "came back as a new attempt");
        redelivered.push(d.payload().n);
        d.ack().await.unwrap();
    }
    redelivered.sort_unstable();
    assert_eq!(redelivered, [1, 2]);
}

#[tokio::test]
async fn with_idempotency_a_duplicate_event_is_handled_once() {
    let bus = Bus::memory("test");
    let count = Arc::new(Mutex::new(0u32));
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(count.clone())
        .handle(|_e: Event<Job>, ctx: Context<Arc<Mutex<u32>>>| async move {
            *ctx.state().lock().unwrap() += 1;
            Ok::<_, HandlerError>(())
        })
        .idempotency(MemoryIdempotencyStore::new(Duration::from_secs(120)));
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let event = bus.event(Job { n: 1 });
    for _ in 0..3 {
        bus.publish(&event).await.unwrap(); // a producer retrying the same event
    }
    bus.publish(&bus.event(Job { n: 2 })).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let summary = stop(tx, handle).await;
    assert_eq!(*count.lock().unwrap(), 2);
    assert_eq!(summary.handled, 2);
    assert_eq!(summary.duplicates, 2);
}

#[tokio::test]
async fn events_of_one_key_are_handled_in_order_under_concurrency_8() {
    let bus = Bus::memory("test");
    type Log = Arc<Mutex<HashMap<String, Vec<u32>>>>;
    type Running = Arc<Mutex<HashMap<String, bool>>>;
    let log: Log = Arc::default();
    let running: Running = Arc::default();
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state((log.clone(), running.clone()))
        .handle(|e: Event<Job>, ctx: Context<(Log, Running)>| async move {
            let key = e.metadata.subject().unwrap().to_owned();
            let (log, running) = ctx.state();
            assert!(
                !running
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
            running.lock().unwrap().insert(key, false);
            Ok::<_, HandlerError>(())
        })
        .concurrency(8)
        .ordered_by_key(true);
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for n in 0..80 {
        let key = format!("k{}", n % 4);
        bus.publish(&bus.event(Job { n }).with_subject(key))
            .await
            .unwrap();
    }
    wait_until(|| log.lock().unwrap().values().map(Vec::len).sum::<usize>() == 80).await;
    let summary = stop(tx, handle).await;
    assert_eq!(summary.handled, 80);
    for (key, ns) in log.lock().unwrap().iter() {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "order of {key}");
        assert_eq!(ns.len(), 20);
    }
}

#[tokio::test]
async fn trace_context_and_causality_survive_publish_handle_publish() {
    let bus = Bus::memory("test");
    let consumer = Consumer::new(&bus, "worker").unwrap().handle(
        |_e: Event<Job>, ctx: Context<()>| async move {
            let reaction = ctx.reaction(JobDone { n: 1 });
            ctx.bus().publish(&reaction).await?;
            Ok::<_, HandlerError>(())
        },
    );
    let mut done = bus.subscribe::<JobDone>().await.unwrap();
    let (tx, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let trace = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .unwrap()
        .with_tracestate("vendor=x");
    let first = bus
        .event(Job { n: 1 })
        .with_trace(trace.clone())
        .with_correlation_id("order-flow-1");
    bus.publish(&first).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), done.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.metadata().trace(), Some(&trace));
    assert_eq!(d.metadata().correlation_id(), Some("order-flow-1"));
    assert_eq!(d.metadata().causation_id(), Some(first.metadata.id()));
    d.ack().await.unwrap();
    stop(tx, handle).await;
}

#[tokio::test]
async fn dead_letters_can_be_replayed_to_their_original_subject() {
    let bus = Bus::memory("test");
    let mut dlq = dead_letters(&bus, "worker").await;
    let fail = Arc::new(Mutex::new(true));
    let consumer = Consumer::new(&bus, "worker")
        .unwrap()
        .state(fail.clone())
        .handle(
            |_e: Event<Job>, ctx: Context<Arc<Mutex<bool>>>| async move {
                if *ctx.state().lock().unwrap() {
                    Err(HandlerError::reject("bug"))
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
    *fail.lock().unwrap() = false; // the fix is deployed
    let report = replay(
        bus.transport().as_ref(),
        &mut dlq,
        10,
        Duration::from_millis(200),
        |l| l.reason == Reason::Rejected,
    )
    .await
    .unwrap();
    assert_eq!(report.replayed, 3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let summary = stop(tx, handle).await;
    assert_eq!(summary.dead_lettered, 3);
    assert_eq!(summary.handled, 3, "replayed events were handled");
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
