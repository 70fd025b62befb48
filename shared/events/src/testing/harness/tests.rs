use serde::{Deserialize, Serialize};

use super::*;
use crate::consumer::{Consumer, Reason, RetryPolicy};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Placed {
    order_id: String,
}

impl EventPayload for Placed {
    const TYPE: &'static str = "orders.placed";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reserved {
    order_id: String,
}

impl EventPayload for Reserved {
    const TYPE: &'static str = "inventory.reserved";
}

const BOUND: Duration = Duration::from_secs(10);

fn fast_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential()
        .max_attempts(attempts)
        .initial_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
}

/// The consumer under test: `script` handles every `Placed`, retried up to
/// `attempts` times.
async fn start_scripted(
    harness: &Harness,
    script: &Script,
    attempts: u32,
) -> crate::consumer::Running {
    Consumer::new(harness.bus(), "inventory")
        .unwrap()
        .handle(script.handler::<Placed, ()>())
        .retry(fast_retries(attempts))
        .start()
        .await
        .unwrap()
}

async fn publish(bus: &Bus, order_id: &str) -> String {
    let event = bus.event(Placed {
        order_id: order_id.into(),
    });
    bus.publish(&event).await.unwrap();
    event.metadata.id().to_owned()
}

#[tokio::test]
async fn it_waits_until_n_events_are_handled_and_reads_reactions_typed() {
    let harness = Harness::new("orders");
    let inventory = harness.service("inventory").unwrap();
    let react = |event: Event<Placed>, ctx: Context<()>| async move {
        let reserved = ctx.reaction(Reserved {
            order_id: event.payload.order_id,
        });
        ctx.bus().publish(&reserved).await
    };
    let running = Consumer::new(&inventory, "inventory")
        .unwrap()
        .handle(react)
        .start()
        .await
        .unwrap();
    let ids = [
        publish(harness.bus(), "o-1").await,
        publish(harness.bus(), "o-2").await,
    ];
    harness.wait_for(2, BOUND).await.unwrap();
    assert_eq!(harness.handled(), 2);
    let reserved = harness.wait_published::<Reserved>(2, BOUND).await.unwrap();
    let mut orders: Vec<&str> = reserved
        .iter()
        .map(|e| e.payload.order_id.as_str())
        .collect();
    orders.sort_unstable();
    assert_eq!(orders, ["o-1", "o-2"]);
    assert!(reserved.iter().all(|e| e.metadata.source() == "inventory"));
    assert_eq!(harness.published::<Placed>().unwrap().len(), 2);
    for id in ids {
        assert_eq!(harness.attempts(&id), 1);
    }
    assert_eq!(harness.dead_lettered(), 0);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn scripted_failures_are_retried_and_every_attempt_is_recorded() {
    let harness = Harness::new("orders");
    let script = Script::new().fail(2);
    let running = start_scripted(&harness, &script, 5).await;
    let id = publish(harness.bus(), "o-1").await;
    harness.wait_for(1, BOUND).await.unwrap();
    assert_eq!(script.calls(), 3);
    assert_eq!(harness.attempts(&id), 3);
    let settlements: Vec<(u32, Settlement)> = harness
        .settlements()
        .into_iter()
        .map(|s| (s.attempt, s.settlement))
        .collect();
    assert!(
        matches!(
            settlements[..],
            [
                (1, Settlement::Nacked { delay: Some(_) }),
                (2, Settlement::Nacked { delay: Some(_) }),
                (3, Settlement::Acked)
            ]
        ),
        "{settlements:?}"
    );
    assert!(harness.dead_letters().unwrap().is_empty());
    let summary = running.shutdown().await.unwrap();
    assert_eq!((summary.handled, summary.retried), (1, 2));
}

#[tokio::test]
async fn a_rejection_is_dead_lettered_at_once_and_counted_by_wait_for() {
    let harness = Harness::new("orders");
    let script = Script::new().reject();
    let running = start_scripted(&harness, &script, 5).await;
    let id = publish(harness.bus(), "o-1").await;
    harness.wait_for(1, BOUND).await.unwrap();
    assert_eq!(harness.handled(), 0);
    let dead = harness.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, Reason::Rejected);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].consumer, "inventory");
    assert!(dead[0].error.contains("scripted rejection on call 1"));
    assert_eq!(harness.attempts(&id), 1);
    // The original is terminated once the copy is out.
    harness
        .wait_until(BOUND, |r| {
            r.settled
                .iter()
                .any(|s| s.settlement == Settlement::Terminated)
        })
        .await
        .unwrap();
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn failing_on_every_attempt_ends_in_a_dead_letter_after_the_last() {
    let harness = Harness::new("orders");
    let script = Script::new().then_fail_forever();
    let running = start_scripted(&harness, &script, 3).await;
    let id = publish(harness.bus(), "o-1").await;
    harness.wait_for(1, BOUND).await.unwrap();
    let dead = harness.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, Reason::AttemptsExhausted);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(script.calls(), 3);
    assert_eq!(harness.attempts(&id), 3);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wait_that_is_not_met_fails_in_time_and_says_what_it_saw() {
    let harness = Harness::new("orders");
    publish(harness.bus(), "o-1").await;
    let started = std::time::Instant::now();
    let err = harness
        .wait_for(1, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(started.elapsed() < BOUND);
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        err.to_string(),
        "broker unavailable: waited 50ms before 1 events were handled or dead-lettered (handled 0, dead-lettered 0)"
    );
    let err = harness
        .wait_published::<Reserved>(1, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(err
        .to_string()
        .contains("before 1 inventory.reserved events were published"));
}

#[test]
fn a_script_runs_its_steps_in_order_then_succeeds_or_keeps_failing() {
    let script = Script::new().fail(1).reject().fail(1);
    let outcomes: Vec<Option<bool>> = (0..4)
        .map(|_| script.step().err().map(|e| e.is_retryable()))
        .collect();
    assert_eq!(outcomes, [Some(true), Some(false), Some(true), None]);
    let forever = Script::new().then_fail_forever();
    assert!((0..10).all(|_| forever.step().is_err()));
    assert_eq!(forever.calls(), 10);
    // Clones share the script.
    let shared = Script::new().fail(1);
    assert!(shared.clone().step().is_err());
    assert!(shared.step().is_ok());
    assert_eq!(shared.calls(), 2);
}
