use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::transport::Subject;

fn message(subject: &str, body: &str) -> Message {
    Message::new(Subject::parse(subject).unwrap(), body.to_owned())
}

fn options(pattern: &str) -> SubscribeOptions {
    SubscribeOptions::new(SubjectPattern::parse(pattern).unwrap())
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a delivery within 5 s")
        .expect("subscription open")
        .expect("no transport error")
}

async fn nothing_within(sub: &mut Subscription, wait: Duration) -> bool {
    tokio::time::timeout(wait, sub.next()).await.is_err()
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.message().payload.to_vec()).unwrap()
}

#[tokio::test]
async fn every_plain_subscriber_gets_every_message() {
    let t = MemoryTransport::new();
    let mut a = t.subscribe(options("events.orders.placed")).await.unwrap();
    let mut b = t.subscribe(options("events.orders.*")).await.unwrap();
    let mut c = t.subscribe(options("events.>")).await.unwrap();
    let mut other = t.subscribe(options("events.billing.>")).await.unwrap();
    for i in 0..10 {
        t.publish(message("events.orders.placed", &i.to_string()))
            .await
            .unwrap();
    }
    for sub in [&mut a, &mut b, &mut c] {
        for i in 0..10 {
            let d = next(sub).await;
            assert_eq!(body(&d), i.to_string(), "in publish order");
            assert_eq!(d.attempt(), 1);
            d.ack().await.unwrap();
        }
    }
    assert!(nothing_within(&mut other, Duration::from_millis(20)).await);
}

#[tokio::test]
async fn a_queue_group_shares_messages_and_each_goes_to_one_member() {
    let t = MemoryTransport::new();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(
            t.subscribe(options("events.jobs").queue_group("workers").unwrap())
                .await
                .unwrap(),
        );
    }
    let mut watcher = t.subscribe(options("events.jobs")).await.unwrap();
    for i in 0..30 {
        t.publish(message("events.jobs", &i.to_string()))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for member in &mut members {
        let mut count = 0;
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(20), member.next()).await
        {
            seen.push(body(&d));
            count += 1;
            d.ack().await.unwrap();
        }
        assert!(count > 0, "every member gets a share");
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(seen, expected, "each message exactly once across the group");
    for i in 0..30 {
        assert_eq!(
            body(&next(&mut watcher).await),
            i.to_string(),
            "plain subscribers still get all"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn nack_redelivers_after_the_delay_with_the_attempt_increased() {
    let t = MemoryTransport::new();
    let mut sub = t.subscribe(options("a")).await.unwrap();
    t.publish(message("a", "x")).await.unwrap();
    let first = next(&mut sub).await;
    assert_eq!(first.attempt(), 1);
    let nacked_at = tokio::time::Instant::now();
    first.nack(Some(Duration::from_secs(3))).await.unwrap();
    assert!(
        nothing_within(&mut sub, Duration::from_millis(2_900)).await,
        "not before the delay"
    );
    let second = next(&mut sub).await;
    assert!(nacked_at.elapsed() >= Duration::from_secs(3));
    assert_eq!(second.attempt(), 2);
    assert_eq!(body(&second), "x");
    second.nack(None).await.unwrap();
    let third = next(&mut sub).await;
    assert_eq!(third.attempt(), 3);
    third.ack().await.unwrap();
    assert!(
        nothing_within(&mut sub, Duration::from_secs(60)).await,
        "ack does not redeliver"
    );
}

#[tokio::test(start_paused = true)]
async fn term_does_not_redeliver_and_max_deliver_stops_redelivery() {
    let t = MemoryTransport::new();
    let mut sub = t.subscribe(options("a").max_deliver(2)).await.unwrap();
    t.publish(message("a", "x")).await.unwrap();
    next(&mut sub).await.nack(None).await.unwrap();
    let second = next(&mut sub).await;
    assert_eq!(second.attempt(), 2);
    second.nack(None).await.unwrap();
    assert!(
        nothing_within(&mut sub, Duration::from_secs(60)).await,
        "max_deliver = 2"
    );

    t.publish(message("a", "y")).await.unwrap();
    next(&mut sub).await.term().await.unwrap();
    assert!(nothing_within(&mut sub, Duration::from_secs(60)).await);
}

#[tokio::test(start_paused = true)]
async fn an_unsettled_delivery_comes_back_after_the_ack_wait() {
    let t = MemoryTransport::new();
    let mut sub = t
        .subscribe(options("a").ack_wait(Duration::from_secs(10)))
        .await
        .unwrap();
    t.publish(message("a", "x")).await.unwrap();
    drop(next(&mut sub).await);
    assert!(nothing_within(&mut sub, Duration::from_millis(9_900)).await);
    let again = next(&mut sub).await;
    assert_eq!(again.attempt(), 2);
    again.ack().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_subscriber_blocks_publishers_then_fails_them_without_partial_delivery() {
    let t =
        MemoryTransport::with_config(MemoryConfig::new().publish_timeout(Duration::from_secs(2)));
    let mut slow = t.subscribe(options("a").capacity(2)).await.unwrap();
    let mut fast = t.subscribe(options("a")).await.unwrap();
    t.publish(message("a", "1")).await.unwrap();
    t.publish(message("a", "2")).await.unwrap();

    let err = t.publish(message("a", "3")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());

    // The fast subscriber did not get "3": delivery is all or nothing.
    assert_eq!(body(&next(&mut fast).await), "1");
    assert_eq!(body(&next(&mut fast).await), "2");
    assert!(nothing_within(&mut fast, Duration::from_millis(10)).await);

    // A publish waiting for room goes through as soon as the slow one reads.
    let t2 = t.clone();
    let pending = tokio::spawn(async move { t2.publish(message("a", "4")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pending.is_finished(),
        "publisher waits while the buffer is full"
    );
    assert_eq!(body(&next(&mut slow).await), "1");
    pending.await.unwrap().unwrap();
    assert_eq!(body(&next(&mut slow).await), "2");
    assert_eq!(body(&next(&mut slow).await), "4");
    assert_eq!(body(&next(&mut fast).await), "4");
}

#[tokio::test]
async fn a_queue_group_prefers_a_member_with_room() {
    let t = MemoryTransport::with_config(
        MemoryConfig::new().publish_timeout(Duration::from_millis(50)),
    );
    let _stuck = t
        .subscribe(options("a").queue_group("g").unwrap().capacity(1))
        .await
        .unwrap();
    let mut free = t
        .subscribe(options("a").queue_group("g").unwrap().capacity(100))
        .await
        .unwrap();
    for i in 0..20 {
        t.publish(message("a", &i.to_string())).await.unwrap();
    }
    let mut got = HashSet::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(20), free.next()).await {
        got.insert(body(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(got.len(), 19, "all but the one the stuck member holds");
}

#[tokio::test]
async fn close_ends_subscriptions_after_their_buffer_and_refuses_new_work() {
    let t = MemoryTransport::new();
    let mut sub = t.subscribe(options("a")).await.unwrap();
    t.publish(message("a", "before")).await.unwrap();
    t.close().await.unwrap();
    assert_eq!(
        body(&next(&mut sub).await),
        "before",
        "buffered messages are still delivered"
    );
    assert!(sub.next().await.is_none(), "then the stream ends");
    assert_eq!(
        t.publish(message("a", "after")).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        t.subscribe(options("a")).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    t.close().await.unwrap();
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes_and_hands_group_messages_on() {
    let t = MemoryTransport::new();
    let a = t
        .subscribe(options("a").queue_group("g").unwrap())
        .await
        .unwrap();
    let mut b = t
        .subscribe(options("a").queue_group("g").unwrap())
        .await
        .unwrap();
    for i in 0..10 {
        t.publish(message("a", &i.to_string())).await.unwrap();
    }
    assert_eq!(t.subscription_count(), 2);
    drop(a);
    assert_eq!(t.subscription_count(), 1);
    let mut got = HashSet::new();
    for _ in 0..10 {
        let d = next(&mut b).await;
        got.insert(body(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(
        got.len(),
        10,
        "messages buffered by the dropped member were handed on"
    );
}

#[tokio::test]
async fn oversized_messages_and_durable_names_are_refused() {
    let t = MemoryTransport::with_config(MemoryConfig::new().max_message_size(100));
    let err = t.publish(message("a", &"x".repeat(101))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    t.publish(message("a", &"x".repeat(100))).await.unwrap();
    let err = t
        .subscribe(options("a").durable_name("d").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[tokio::test]
async fn publishing_with_no_subscriber_succeeds_and_delivers_nothing_later() {
    let t = MemoryTransport::new();
    t.publish(message("a", "lost")).await.unwrap();
    let mut sub = t.subscribe(options("a")).await.unwrap();
    assert!(
        nothing_within(&mut sub, Duration::from_millis(20)).await,
        "no history"
    );
}

#[test]
fn declared_capabilities_match_the_semantics() {
    let caps = MemoryTransport::new().capabilities().clone();
    assert!(caps.redelivery && caps.delayed_redelivery && caps.queue_groups && caps.wildcards);
    assert!(!caps.durable && !caps.persistent && !caps.publish_dedup);
}

#[tokio::test]
async fn group_redelivery_only_goes_to_members_whose_pattern_matches() {
    let t = MemoryTransport::new();
    let mut placed = t
        .subscribe(options("events.placed").queue_group("billing").unwrap())
        .await
        .unwrap();
    let mut cancelled = t
        .subscribe(options("events.cancelled").queue_group("billing").unwrap())
        .await
        .unwrap();
    t.publish(message("events.placed", "p")).await.unwrap();
    for attempt in 1..=5 {
        let d = next(&mut placed).await;
        assert_eq!(d.attempt(), attempt);
        d.nack(None).await.unwrap();
    }
    assert!(
        nothing_within(&mut cancelled, Duration::from_millis(50)).await,
        "never to the other subject's member"
    );
    next(&mut placed).await.ack().await.unwrap();
}

/// Warnings logged on this thread while the guard lives, as
/// `message field=value ...` lines.
mod warnings {
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt as _};
    use tracing_subscriber::Layer;

    #[derive(Clone, Default)]
    pub(super) struct Warnings(Arc<Mutex<Vec<String>>>);

    impl Warnings {
        pub(super) fn lines(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.0, "{value:?}");
            } else {
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Warnings {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::WARN {
                let mut line = Line(String::new());
                event.record(&mut line);
                self.0.lock().unwrap().push(line.0);
            }
        }
    }

    /// Captures warnings on this thread (the tests run on a current-thread
    /// runtime) until the guard drops.
    pub(super) fn capture() -> (Warnings, tracing::subscriber::DefaultGuard) {
        let warnings = Warnings::default();
        let subscriber = tracing_subscriber::registry().with(warnings.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        (warnings, guard)
    }
}

#[tokio::test(start_paused = true)]
async fn nacks_wait_in_one_timer_queue_per_subscription_not_a_task_each() {
    let t = MemoryTransport::new();
    let mut sub = t.subscribe(options("a").capacity(2_000)).await.unwrap();
    for i in 0..1_000 {
        t.publish(message("a", &i.to_string())).await.unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..1_000 {
        held.push(next(&mut sub).await);
    }
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    for d in held {
        d.nack(Some(Duration::from_secs(3_600))).await.unwrap();
    }
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks,
        "no task per nack"
    );
    assert!(nothing_within(&mut sub, Duration::from_secs(3_598)).await);
    let mut seen = HashSet::new();
    for _ in 0..1_000 {
        let d = next(&mut sub).await;
        assert_eq!(d.attempt(), 2);
        seen.insert(body(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(seen.len(), 1_000);
}

#[tokio::test(start_paused = true)]
async fn a_subscription_holding_its_bound_of_delayed_redeliveries_takes_no_new_messages() {
    let (warnings, _guard) = warnings::capture();
    let t = MemoryTransport::with_config(
        MemoryConfig::new()
            .publish_timeout(Duration::from_millis(100))
            .max_waiting_redeliveries(2),
    );
    let mut sub = t.subscribe(options("a").capacity(2)).await.unwrap();
    t.publish(message("a", "1")).await.unwrap();
    t.publish(message("a", "2")).await.unwrap();
    let first = next(&mut sub).await;
    let second = next(&mut sub).await;
    first.nack(Some(Duration::from_secs(600))).await.unwrap();
    second.nack(Some(Duration::from_secs(600))).await.unwrap();
    t.publish(message("a", "3")).await.unwrap();
    t.publish(message("a", "4")).await.unwrap();
    assert!(
        nothing_within(&mut sub, Duration::from_secs(598)).await,
        "new messages wait while the redeliveries fill the bound"
    );
    assert_eq!(
        t.publish(message("a", "5")).await.unwrap_err().kind(),
        ErrorKind::Unavailable,
        "backpressure reaches the publisher"
    );
    assert!(
        warnings
            .lines()
            .iter()
            .any(|l| l.contains("pending_redeliveries=2")),
        "{:?}",
        warnings.lines()
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = next(&mut sub).await;
        got.push((body(&d), d.attempt()));
        d.ack().await.unwrap();
    }
    assert_eq!(
        got,
        [
            ("1".to_owned(), 2),
            ("2".to_owned(), 2),
            ("3".to_owned(), 1),
            ("4".to_owned(), 1)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_leaving_member_hands_its_buffer_and_delayed_redeliveries_to_a_full_member() {
    let t = MemoryTransport::with_config(
        MemoryConfig::new().publish_timeout(Duration::from_millis(100)),
    );
    let mut leaving = t
        .subscribe(options("a").queue_group("g").unwrap().capacity(20))
        .await
        .unwrap();
    let mut staying = t
        .subscribe(options("a").queue_group("g").unwrap().capacity(2))
        .await
        .unwrap();
    for i in 0..12 {
        t.publish(message("a", &i.to_string())).await.unwrap();
    }
    // The leaving member nacks one with a delay, then leaves with nine
    // buffered; the staying member's buffer is full.
    next(&mut leaving)
        .await
        .nack(Some(Duration::from_secs(60)))
        .await
        .unwrap();
    drop(leaving);
    let mut got = HashSet::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(120), staying.next()).await
    {
        got.insert(body(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(got.len(), 12, "nothing was dropped: {got:?}");
}

#[tokio::test(start_paused = true)]
async fn a_leaving_member_with_no_one_left_warns_how_many_events_it_dropped() {
    let (warnings, _guard) = warnings::capture();
    let t = MemoryTransport::new();
    let mut member = t
        .subscribe(options("a").queue_group("g").unwrap())
        .await
        .unwrap();
    for i in 0..5 {
        t.publish(message("a", &i.to_string())).await.unwrap();
    }
    next(&mut member)
        .await
        .nack(Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let unsettled = next(&mut member).await;
    drop(member);
    let lines = warnings.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("dropped=4") && l.contains("group=\"g\"")),
        "one delayed redelivery and three buffered: {lines:?}"
    );
    unsettled.nack(None).await.unwrap();
    let lines = warnings.lines();
    assert!(
        lines.iter().any(|l| l.contains("dropped=1")),
        "the nack after the last member left: {lines:?}"
    );
}
