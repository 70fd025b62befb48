//! The JetStream transport against private `nats-server` processes with
//! their own store directories (never the machine's server on 4222).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::backend::jetstream::{
    ConsumerDefaults, DeliverPolicy, JetStreamConfig, JetStreamTransport, StreamConfig,
};
use events::backend::nats::ConnectionState;
use events::testing::NatsServer;
use events::transport::{Message, Subject, Transport};
use events::{Bus, ErrorKind};

use crate::nats::{config, raw_publish, WithServer, WAIT};
use crate::support::Ping;

/// How long a test watches for something that must not arrive.
const QUIET: Duration = Duration::from_millis(1500);
const PREFIX: &str = "js";

fn js_config(server: &NatsServer) -> JetStreamConfig {
    JetStreamConfig::new(config(server), StreamConfig::new("EVENTS", ["js.>"]))
        .ack_timeout(Duration::from_secs(1))
        .consumers(ConsumerDefaults::new().expires(Duration::from_secs(1)))
}

async fn connect(config: JetStreamConfig) -> JetStreamTransport {
    JetStreamTransport::connect(config)
        .await
        .expect("connects and provisions the stream")
}

fn bus(transport: JetStreamTransport) -> Bus {
    Bus::builder(transport)
        .source("js-tests")
        .prefix(PREFIX)
        .build()
        .unwrap()
}

fn ping(bus: &Bus, seq: u64) -> events::Event<Ping> {
    bus.event(Ping {
        seq,
        note: format!("n{seq}"),
    })
}

async fn next(sub: &mut events::bus::Subscriber<Ping>) -> events::bus::Delivery<Ping> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("decodes")
}

async fn quiet(sub: &mut events::bus::Subscriber<Ping>) -> bool {
    tokio::time::timeout(QUIET, sub.next()).await.is_err()
}

async fn stored(t: &JetStreamTransport) -> u64 {
    let mut stream = t.context().get_stream(t.stream_name()).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// A JetStream transport on its own server, with a stream capturing every
/// conformance and runtime case (`conf.<unique>.…`) and their dead letters.
pub async fn suite_transport() -> Arc<dyn Transport> {
    let server = NatsServer::with_jetstream();
    let stream = StreamConfig::new("CONF", ["conf.>", "deadletter.>"]);
    let config = JetStreamConfig::new(config(&server), stream)
        .consumers(ConsumerDefaults::new().expires(Duration::from_secs(1)));
    let transport = connect(config).await;
    Arc::new(WithServer {
        transport,
        _server: server,
    }) as Arc<dyn Transport>
}

crate::conformance_suite!(jetstream_conformance, suite_transport);
crate::runtime_suite!(jetstream_runtime, suite_transport);

#[tokio::test]
async fn capabilities_and_server_version_are_read_at_connect() {
    let server = NatsServer::with_jetstream();
    let t = connect(js_config(&server)).await;
    let caps = t.capabilities();
    assert!(
        caps.redelivery
            && caps.delayed_redelivery
            && caps.durable
            && caps.persistent
            && caps.publish_dedup
    );
    assert!(caps.queue_groups && caps.wildcards && caps.ordered_per_publisher);
    assert!(caps.max_message_size > 1_000_000 && caps.max_message_size < 1024 * 1024);
    assert!(t.server_version() >= (2, 9, 0), "{:?}", t.server_version());
    t.close().await.unwrap();
}

#[tokio::test]
async fn options_an_older_server_would_silently_ignore_are_refused() {
    let server = NatsServer::with_jetstream();
    let version = connect(js_config(&server)).await.server_version();
    let cases = [
        (
            "stream metadata",
            JetStreamConfig::new(
                config(&server),
                StreamConfig::new("META", ["meta.>"]).metadata("owner", "orders"),
            ),
            (2, 10),
        ),
        (
            "consumer metadata",
            js_config(&server).consumers(ConsumerDefaults::new().metadata("owner", "billing")),
            (2, 10),
        ),
        (
            "a per-message TTL",
            js_config(&server).message_ttl(Duration::from_secs(60)),
            (2, 11),
        ),
    ];
    for (what, config, needs) in cases {
        let result = JetStreamTransport::connect(config).await;
        if (version.0, version.1) < needs {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{what}: {err}");
            assert!(err.to_string().contains(what), "{err}");
            assert!(
                err.to_string()
                    .contains(&format!("{}.{}", needs.0, needs.1)),
                "{err}"
            );
        } else {
            result.unwrap_or_else(|e| panic!("{what} is supported by {version:?}: {e}"));
        }
    }
}

#[tokio::test]
async fn an_existing_stream_is_updated_to_the_configuration_and_can_be_bound_without_managing_it() {
    let server = NatsServer::with_jetstream();
    let first = connect(JetStreamConfig::new(
        config(&server),
        StreamConfig::new("EVENTS", ["js.>"]).max_age(Duration::from_secs(3600)),
    ))
    .await;
    first.close().await.unwrap();
    let second = connect(JetStreamConfig::new(
        config(&server),
        StreamConfig::new("EVENTS", ["js.>"])
            .max_age(Duration::from_secs(7200))
            .duplicate_window(Duration::from_secs(30))
            .max_bytes(1 << 20),
    ))
    .await;
    let info = second
        .context()
        .get_stream("EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.max_age,
        Duration::from_secs(7200),
        "create_or_update reconciles"
    );
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));
    assert_eq!(info.config.max_bytes, 1 << 20);

    let bound = connect(JetStreamConfig::bind(config(&server), "EVENTS")).await;
    assert_eq!(bound.stream_name(), "EVENTS");
    let err = JetStreamTransport::connect(JetStreamConfig::bind(config(&server), "MISSING"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    second.close().await.unwrap();
    bound.close().await.unwrap();
}

#[tokio::test]
async fn no_event_is_lost_or_stored_twice_when_the_server_is_killed_mid_run() {
    let mut server = NatsServer::with_jetstream();
    let t = connect(js_config(&server).publish_attempts(3)).await;
    let bus = bus(t.clone());
    const N: u64 = 1500;
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(N as usize);
            let mut retried = 0u32;
            for seq in 0..N {
                let event = ping(&bus, seq);
                let started = Instant::now();
                // What a producer does with a retryable error: publish the
                // same event (same id) again.
                loop {
                    match bus.publish(&event).await {
                        Ok(()) => break,
                        Err(e)
                            if e.is_retryable() && started.elapsed() < Duration::from_secs(60) =>
                        {
                            retried += 1
                        }
                        Err(e) => panic!("event {seq}: {e}"),
                    }
                }
                ids.push(event.metadata.id().to_owned());
            }
            (ids, retried)
        })
    };
    let deadline = Instant::now() + WAIT;
    while stored(&t).await < 300 {
        assert!(Instant::now() < deadline, "publishing started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let mut state = t.watch_state();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| *s == ConnectionState::Disconnected),
    )
    .await
    .unwrap()
    .unwrap();
    server.restart();
    let (ids, retried) = tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("publisher finished")
        .unwrap();

    let stream = t.context().get_stream("EVENTS").await.unwrap();
    let mut info = stream.clone();
    assert_eq!(
        info.info().await.unwrap().state.messages,
        N,
        "every event stored exactly once ({retried} retried publishes)"
    );
    let mut seen = HashSet::new();
    for seq in 1..=N {
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .expect("every message carries its id")
            .as_str()
            .to_owned();
        assert!(seen.insert(id), "stream sequence {seq} holds a duplicate");
    }
    assert_eq!(seen, ids.into_iter().collect::<HashSet<_>>());
    assert!(t.status().disconnects >= 1);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn batch_publish_pipelines_and_a_republished_batch_is_deduplicated() {
    let server = NatsServer::with_jetstream();
    let t = connect(js_config(&server)).await;
    let bus = bus(t.clone());
    let events: Vec<_> = (0..1000).map(|i| ping(&bus, i)).collect();
    assert!(bus
        .publish_all(&events)
        .await
        .into_iter()
        .all(|r| r.is_ok()));
    assert_eq!(stored(&t).await, 1000);
    assert!(
        bus.publish_all(&events)
            .await
            .into_iter()
            .all(|r| r.is_ok()),
        "duplicates count as success"
    );
    assert_eq!(stored(&t).await, 1000, "the server dropped the duplicates");
    let mut sub = bus.subscribe::<Ping>().durable("reader").await.unwrap();
    for i in 0..1000 {
        let d = next(&mut sub).await;
        assert_eq!(d.payload().seq, i, "stored in publish order");
        assert_eq!(d.message().dedup_id.as_deref(), Some(d.metadata().id()));
        d.ack().await.unwrap();
    }
    bus.close().await.unwrap();
}

#[tokio::test]
async fn nack_with_delay_is_redelivered_no_sooner_with_the_attempt_counted() {
    let server = NatsServer::with_jetstream();
    let bus = bus(connect(js_config(&server)).await);
    let mut sub = bus.subscribe::<Ping>().durable("delayed").await.unwrap();
    bus.publish(&ping(&bus, 1)).await.unwrap();
    let first = next(&mut sub).await;
    assert_eq!(first.attempt(), 1);
    let info = first.info();
    assert_eq!(
        (info.stream_sequence, info.consumer_sequence),
        (Some(1), Some(1))
    );
    let mut last = Instant::now();
    first.nack(Some(Duration::from_millis(1000))).await.unwrap();
    for (attempt, delay) in [(2, 1000), (3, 500)] {
        let d = next(&mut sub).await;
        let waited = last.elapsed();
        assert!(
            waited >= Duration::from_millis(delay),
            "attempt {attempt} after {waited:?}"
        );
        assert_eq!(d.attempt(), attempt);
        assert_eq!(d.info().stream_sequence, Some(1));
        last = Instant::now();
        if attempt == 3 {
            d.ack().await.unwrap();
        } else {
            d.nack(Some(Duration::from_millis(500))).await.unwrap();
        }
    }
    assert!(quiet(&mut sub).await, "acked: never again");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn max_deliver_stops_redelivery() {
    let server = NatsServer::with_jetstream();
    let bus = bus(connect(js_config(&server)).await);
    let mut sub = bus
        .subscribe::<Ping>()
        .durable("limited")
        .max_deliver(3)
        .await
        .unwrap();
    bus.publish(&ping(&bus, 1)).await.unwrap();
    for attempt in 1..=3 {
        let d = next(&mut sub).await;
        assert_eq!(d.attempt(), attempt);
        d.nack(None).await.unwrap();
    }
    assert!(quiet(&mut sub).await, "no fourth attempt");
    // The consumer is not stuck: the next event still arrives.
    bus.publish(&ping(&bus, 2)).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!((d.payload().seq, d.attempt()), (2, 1));
    d.ack().await.unwrap();
    bus.close().await.unwrap();
}

#[tokio::test]
async fn term_and_in_progress_are_honoured() {
    let server = NatsServer::with_jetstream();
    let bus = bus(connect(js_config(&server)).await);
    let mut sub = bus
        .subscribe::<Ping>()
        .durable("worker")
        .ack_wait(Duration::from_millis(1500))
        .await
        .unwrap();
    bus.publish(&ping(&bus, 1)).await.unwrap();
    let d = next(&mut sub).await;
    // Working for longer than the ack wait, reporting progress: no redelivery meanwhile.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        d.in_progress().await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(700), sub.next())
            .await
            .is_err(),
        "in progress: not redelivered"
    );
    d.term().await.unwrap();
    assert!(quiet(&mut sub).await, "terminated: never again");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_durable_consumer_resumes_where_it_left_off_after_the_process_restarts() {
    let server = NatsServer::with_jetstream();
    {
        let bus = bus(connect(js_config(&server)).await);
        for seq in 1..=10 {
            bus.publish(&ping(&bus, seq)).await.unwrap();
        }
        let mut sub = bus
            .subscribe::<Ping>()
            .durable("billing")
            .ack_wait(Duration::from_secs(1))
            .await
            .unwrap();
        for seq in 1..=5 {
            let d = next(&mut sub).await;
            assert_eq!(d.payload().seq, seq);
            d.ack().await.unwrap();
        }
        drop(sub);
        // The last ack is confirmed by close, not lost with the connection.
        bus.close().await.unwrap();
    }
    let bus = bus(connect(js_config(&server)).await);
    let mut sub = bus
        .subscribe::<Ping>()
        .durable("billing")
        .ack_wait(Duration::from_secs(1))
        .await
        .unwrap();
    let mut rest = Vec::new();
    for _ in 6..=10 {
        let d = next(&mut sub).await;
        rest.push(d.payload().seq);
        d.ack().await.unwrap();
    }
    rest.sort_unstable();
    assert_eq!(rest, [6, 7, 8, 9, 10]);
    assert!(quiet(&mut sub).await, "nothing acknowledged comes back");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn deliver_policies_choose_where_a_new_consumer_starts() {
    let server = NatsServer::with_jetstream();
    let publisher = bus(connect(js_config(&server)).await);
    for seq in 1..=3 {
        publisher.publish(&ping(&publisher, seq)).await.unwrap();
    }
    let middle = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for seq in 4..=5 {
        publisher.publish(&ping(&publisher, seq)).await.unwrap();
    }
    let cases = [
        (DeliverPolicy::All, 1),
        (DeliverPolicy::ByStartSequence(3), 3),
        (DeliverPolicy::ByStartTime(middle), 4),
    ];
    for (policy, first) in cases {
        let b = bus(connect(
            js_config(&server).consumers(ConsumerDefaults::new().ephemeral_deliver_policy(policy)),
        )
        .await);
        let mut sub = b.subscribe::<Ping>().await.unwrap();
        assert_eq!(next(&mut sub).await.payload().seq, first, "{policy:?}");
        b.close().await.unwrap();
    }
    let b = bus(connect(
        js_config(&server)
            .consumers(ConsumerDefaults::new().ephemeral_deliver_policy(DeliverPolicy::New)),
    )
    .await);
    let mut sub = b.subscribe::<Ping>().await.unwrap();
    publisher.publish(&ping(&publisher, 6)).await.unwrap();
    assert_eq!(
        next(&mut sub).await.payload().seq,
        6,
        "new: only what comes after"
    );
    b.close().await.unwrap();
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn binding_to_an_existing_consumer_uses_it_as_it_is() {
    let server = NatsServer::with_jetstream();
    let managing = bus(connect(js_config(&server)).await);
    // A short ack wait: the dropped subscription's pull request may still
    // wait on the server when the event is published, and take it (seen
    // once in four full-suite runs, and once in three runs of this test
    // alone); the binding side would then wait out the default ack wait,
    // longer than `WAIT`. With one second, it comes back in time.
    drop(
        managing
            .subscribe::<Ping>()
            .durable("audit")
            .max_deliver(7)
            .ack_wait(Duration::from_secs(1))
            .await
            .unwrap(),
    );
    managing.publish(&ping(&managing, 1)).await.unwrap();

    let binding = bus(connect(
        js_config(&server).consumers(ConsumerDefaults::new().bind_existing(true)),
    )
    .await);
    let mut sub = binding.subscribe::<Ping>().durable("audit").await.unwrap();
    next(&mut sub).await.ack().await.unwrap();
    let t = binding.transport().clone();
    let err = binding
        .subscribe::<Ping>()
        .durable("missing")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    drop(t);
    binding.close().await.unwrap();
    managing.close().await.unwrap();
}

#[tokio::test]
async fn a_consumer_whose_dead_letters_no_stream_stores_refuses_to_start() {
    use events::consumer::{Consumer, Context, HandlerError};

    let server = NatsServer::with_jetstream();
    let bus = bus(connect(js_config(&server)).await);
    let consumer = |bus: &Bus| {
        Consumer::new(bus, "worker").unwrap().handle(
            |_e: events::Event<Ping>, _ctx: Context<()>| async { Ok::<_, HandlerError>(()) },
        )
    };
    // The stream captures `js.>`; the default `deadletter.js.worker` is not stored.
    let refused = tokio::time::timeout(WAIT, consumer(&bus).run(std::future::pending()))
        .await
        .expect("refuses at once")
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidInput, "{refused}");
    assert!(
        refused.to_string().contains("deadletter.js.worker"),
        "{refused}"
    );

    let stored = Subject::parse("js.deadletter.worker").unwrap();
    let summary = consumer(&bus)
        .dead_letter_subject(stored)
        .run(tokio::time::sleep(Duration::from_millis(300)))
        .await
        .expect("starts when a stream stores its dead letters");
    assert_eq!(summary.handled, 0);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_fails_before_it_is_sent() {
    let server = NatsServer::builder()
        .jetstream()
        .config("max_payload: 4096\n")
        .start();
    let t = connect(js_config(&server)).await;
    let subject = Subject::parse("js.big").unwrap();
    let mut m = Message::new(subject.clone(), vec![b'x'; 4096 - 20]);
    m.dedup_id = Some("0190a0a0-0000-7000-8000-000000000000".into());
    // Body alone fits; with the Nats-Msg-Id header it does not.
    let err = t.publish(m).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    let bus = bus(t.clone());
    let big = bus.event(Ping {
        seq: 1,
        note: "x".repeat(5000),
    });
    assert_eq!(
        bus.publish(&big).await.unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );
    bus.publish(&ping(&bus, 2)).await.unwrap();
    assert_eq!(stored(&t).await, 1, "only the small one was sent");
    assert_eq!(t.status().disconnects, 0);
    bus.close().await.unwrap();
}

mod kv_idempotency {
    use std::sync::Mutex;

    use events::backend::jetstream::KvIdempotencyStore;
    use events::consumer::{Claim, Consumer, Context, HandlerError, IdempotencyStore};
    use events::Event;

    use super::*;
    use crate::runtime::Job;

    #[tokio::test]
    async fn claims_are_exclusive_completed_released_and_taken_over_when_abandoned() {
        let server = NatsServer::with_jetstream();
        let t = connect(js_config(&server)).await;
        let store = KvIdempotencyStore::open(&t, "dedup", Duration::from_secs(60))
            .await
            .unwrap()
            .claim_timeout(Duration::from_secs(1));
        let other = KvIdempotencyStore::open(&t, "dedup", Duration::from_secs(60))
            .await
            .unwrap();
        let acquired = |claim: Claim| match claim {
            Claim::Acquired(token) => token,
            other => panic!("expected to acquire, got {other:?}"),
        };
        let token = acquired(store.claim("c/1").await.unwrap());
        assert_eq!(
            other.claim("c/1").await.unwrap(),
            Claim::InProgress,
            "one winner"
        );
        store.complete("c/1", token).await.unwrap();
        assert_eq!(other.claim("c/1").await.unwrap(), Claim::Done);
        let odd = "c/odd id: ä/#"; // any id is a valid key
        let token = acquired(store.claim(odd).await.unwrap());
        store.release(odd, token).await.unwrap();
        let abandoned = acquired(other.claim(odd).await.unwrap());
        // `other`'s claim is now abandoned; a claim timeout after its first
        // look at it, `store` takes it over.
        assert_eq!(store.claim(odd).await.unwrap(), Claim::InProgress);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let current = acquired(store.claim(odd).await.unwrap());
        // The late holder can neither release nor complete the new claim.
        other.release(odd, abandoned).await.unwrap();
        other.complete(odd, abandoned).await.unwrap();
        assert_eq!(
            other.claim(odd).await.unwrap(),
            Claim::InProgress,
            "still the new holder's"
        );
        store.complete(odd, current).await.unwrap();
        assert_eq!(other.claim(odd).await.unwrap(), Claim::Done);
        t.close().await.unwrap();
    }

    #[tokio::test]
    async fn two_instances_sharing_the_store_handle_a_republished_event_once() {
        let server = NatsServer::with_jetstream();
        let transport = Arc::new(connect(js_config(&server)).await);
        let bus = Bus::builder_shared(transport.clone())
            .source("js")
            .prefix(PREFIX)
            .build()
            .unwrap();
        let handled: Arc<Mutex<Vec<u32>>> = Arc::default();
        let mut runs = Vec::new();
        let mut stops = Vec::new();
        for _ in 0..2 {
            let store = KvIdempotencyStore::open(&transport, "dedup", Duration::from_secs(120))
                .await
                .unwrap();
            let consumer = Consumer::new(&bus, "worker")
                .unwrap()
                .state(handled.clone())
                .handle(
                    |e: Event<Job>, ctx: Context<Arc<Mutex<Vec<u32>>>>| async move {
                        ctx.state().lock().unwrap().push(e.payload.n);
                        Ok::<_, HandlerError>(())
                    },
                )
                .idempotency(store)
                // The stream stores `js.>` only.
                .dead_letter_subject(Subject::parse("js.deadletter.worker").unwrap());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            runs.push(tokio::spawn(consumer.run(async move {
                let _ = rx.await;
            })));
            stops.push(tx);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Each event republished three times under fresh dedup ids (an
        // outbox replay): the stream stores all of them.
        for n in 0..10 {
            let event = bus.event(Job { n });
            for _ in 0..3 {
                let mut message = bus.encode(&event, Default::default()).unwrap();
                message.dedup_id = None;
                transport.publish(message).await.unwrap();
            }
        }
        let start = Instant::now();
        while handled.lock().unwrap().len() < 10 && start.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await; // time for any extra handling
        let mut summaries = Vec::new();
        for (tx, run) in stops.into_iter().zip(runs) {
            let _ = tx.send(());
            summaries.push(run.await.unwrap().unwrap());
        }
        let mut seen = handled.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..10).collect::<Vec<_>>(),
            "each event handled exactly once"
        );
        let duplicates: u64 = summaries.iter().map(|s| s.duplicates).sum();
        let handled: u64 = summaries.iter().map(|s| s.handled).sum();
        assert_eq!((handled, duplicates), (10, 20));
        bus.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_header_with_an_empty_name_does_not_keep_the_event_from_its_handler() {
    use events::wire::ContentMode;
    let server = NatsServer::with_jetstream();
    let bus = bus(connect(js_config(&server)).await);
    let mut sub = bus
        .subscribe::<Ping>()
        .durable("lenient")
        .ack_wait(Duration::from_secs(1))
        .await
        .unwrap();
    let event = ping(&bus, 7);
    let message = bus.codec().encode(&event, ContentMode::Binary).unwrap();
    // async-nats reads `: x` as a header with an empty name; nats-server
    // stores it as it came.
    raw_publish(&server, &message, ": x\r\n").await;
    let d = next(&mut sub).await;
    assert_eq!((d.payload().seq, d.attempt()), (7, 1));
    assert_eq!(d.event().metadata.id(), event.metadata.id());
    d.ack().await.unwrap();
    assert!(quiet(&mut sub).await, "handled once, not redelivered");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_client_that_gives_up_reconnecting_ends_the_consumer_with_an_error() {
    let mut server = NatsServer::with_jetstream();
    let config = JetStreamConfig::new(
        crate::nats::giving_up(config(&server)),
        StreamConfig::new("EVENTS", ["js.>"]),
    );
    let transport = connect(config).await;
    let bus = bus(transport.clone());
    crate::nats::kill_the_client_under(
        |c| c.dead_letter_subject(Subject::parse("js.deadletter.victim").unwrap()),
        &mut server,
        &bus,
        || transport.status(),
    )
    .await;
}

#[tokio::test]
async fn events_waiting_behind_a_slow_handler_are_not_redelivered() {
    use std::sync::Mutex;

    use events::consumer::{Consumer, Context, HandlerError};

    type Seen = Arc<Mutex<Vec<(u64, u32)>>>;
    let server = NatsServer::with_jetstream();
    let bus = bus(connect(js_config(&server)).await);
    let seen: Seen = Arc::default();
    // One at a time, 150 ms each, with the default prefetch: the last of 20
    // events waits about 3 s in the buffer, three times the ack wait.
    let consumer = Consumer::new(&bus, "slow")
        .unwrap()
        .dead_letter_subject(Subject::parse("js.deadletter.slow").unwrap())
        .ack_wait(Duration::from_secs(1))
        .concurrency(1)
        .state(seen.clone())
        .handle(|e: events::Event<Ping>, ctx: Context<Seen>| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            ctx.state()
                .lock()
                .unwrap()
                .push((e.payload.seq, ctx.attempt()));
            Ok::<_, HandlerError>(())
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for seq in 0..20 {
        bus.publish(&ping(&bus, seq)).await.unwrap();
    }
    let start = Instant::now();
    while seen.lock().unwrap().len() < 20 {
        assert!(
            start.elapsed() < WAIT,
            "handled in time: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything redelivered would come back within another ack wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop.send(());
    let summary = running.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, (0..20).map(|seq| (seq, 1)).collect::<Vec<_>>());
    assert_eq!(summary.handled, 20);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_batch_larger_than_the_ack_inflight_limit_is_published() {
    let server = NatsServer::with_jetstream();
    let t = connect(js_config(&server).max_ack_inflight(4)).await;
    let bus = bus(t.clone());
    let batch: Vec<_> = (0..50).map(|seq| ping(&bus, seq)).collect();
    // A window wider than the permits would wait on acks it holds itself.
    let results = tokio::time::timeout(WAIT, bus.publish_all(&batch))
        .await
        .expect("no deadlock on ack permits");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(stored(&t).await, 50);
    bus.close().await.unwrap();
}

/// Pins the nats-server bug the transport warns about at connect (fixed in
/// 2.10.14, nats-server PR #5305), with async-nats alone: a redelivery that
/// comes due while the only pull request waiting has lost its subscriber
/// (an instance that crashed mid-pull) moves the consumer back one message,
/// and the next pull gets that message again as new, delivery count 1,
/// even after it was acked. On a fixed server the message comes once.
#[tokio::test]
async fn before_2_10_14_a_redelivery_meeting_a_dead_pull_delivers_an_event_twice() {
    use async_nats::jetstream::{self, consumer::pull, stream};
    use futures_util::StreamExt;

    let server = NatsServer::with_jetstream();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: "REWIND".into(),
            subjects: vec!["rewind.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("d".into()),
            filter_subject: "rewind.x".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish("rewind.x", "one".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // The first delivery is never acked: its instance crashes, leaving its
    // next pull request queued on the server with nobody listening.
    let mut first = consumer.fetch().max_messages(1).messages().await.unwrap();
    first.next().await.unwrap().unwrap();
    drop(first);
    let inbox = client.new_inbox();
    let mut dead = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(
            "$JS.API.CONSUMER.MSG.NEXT.REWIND.d",
            inbox,
            r#"{"batch":10,"expires":10000000000}"#.into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    dead.unsubscribe().await.unwrap();
    client.flush().await.unwrap();
    // The ack wait runs out with only the dead request waiting; then
    // another instance pulls, and acks what it gets.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut batch = consumer
        .batch()
        .max_messages(10)
        .expires(Duration::from_millis(1500))
        .messages()
        .await
        .unwrap();
    let mut counts = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        let info = message.info().unwrap();
        assert_eq!(info.stream_sequence, 1);
        counts.push(info.delivered);
        message.ack().await.unwrap();
    }
    if crate::support::server_rewinds_redeliveries() {
        assert!(
            counts.first().is_some_and(|&c| c >= 2) && counts[1..].contains(&1),
            "the bug is gone from {:?}: {counts:?}",
            client.server_info().version
        );
    } else {
        assert!(matches!(counts[..], [c] if c >= 2), "{counts:?}");
    }
}
