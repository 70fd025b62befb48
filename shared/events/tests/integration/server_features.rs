//! What each nats-server version offers, used where it is offered and
//! refused at connect where it is not: every test reads the version from
//! the transport and checks the feature on newer servers and the refusal
//! on older ones, so it means something on every version of the matrix.

use std::time::Duration;

use events::backend::jetstream::{JetStreamConfig, JetStreamTransport, StreamConfig};
use events::testing::NatsServer;
use events::transport::{Message, Subject, Transport};
use events::ErrorKind;

use crate::nats::{config, WAIT};

/// The server's version, read through a transport without any option that
/// needs a particular one.
async fn version_of(server: &NatsServer) -> (u64, u64, u64) {
    let probe = JetStreamTransport::connect(JetStreamConfig::new(
        config(server),
        StreamConfig::new("PROBE", ["probe.>"]),
    ))
    .await
    .expect("connects without version-dependent options");
    let version = probe.server_version();
    probe.close().await.unwrap();
    version
}

async fn stored(t: &JetStreamTransport) -> u64 {
    let mut stream = t.context().get_stream(t.stream_name()).await.unwrap();
    stream.info().await.unwrap().state.messages
}

fn message(subject: &str, id: &str) -> Message {
    let mut message = Message::new(Subject::parse(subject).unwrap(), b"x".to_vec());
    message.dedup_id = Some(id.to_owned());
    message
}

/// Waits (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let polled = tokio::time::timeout(limit, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "{what} within {limit:?}");
}

#[tokio::test]
async fn a_message_ttl_expires_messages_on_2_11_and_is_refused_at_connect_before() {
    let server = NatsServer::with_jetstream();
    let version = version_of(&server).await;
    let connected = JetStreamTransport::connect(
        JetStreamConfig::new(config(&server), StreamConfig::new("TTL", ["ttl.>"]))
            .message_ttl(Duration::from_secs(1)),
    )
    .await;
    if version < (2, 11, 0) {
        let err = connected.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        return;
    }
    let t = connected.unwrap_or_else(|e| panic!("TTL is offered by {version:?}: {e}"));
    t.publish(message("ttl.a", "ttl-1"))
        .await
        .unwrap_or_else(|e| panic!("a publish with a TTL is stored on {version:?}: {e:?}"));
    assert_eq!(stored(&t).await, 1);
    eventually("the message expires", WAIT, || async {
        stored(&t).await == 0
    })
    .await;
    t.close().await.unwrap();

    // A bound stream is not changed: it must allow TTLs already.
    let bind = |name: &str| {
        JetStreamTransport::connect(
            JetStreamConfig::bind(config(&server), name).message_ttl(Duration::from_secs(1)),
        )
    };
    let err = bind("PROBE").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("allow_msg_ttl"), "{err}");
    bind("TTL")
        .await
        .unwrap_or_else(|e| panic!("TTL allows TTLs on {version:?}: {e:?}"))
        .close()
        .await
        .unwrap();
}

/// The stream as the server has it now.
async fn stream_config(
    t: &JetStreamTransport,
    name: &str,
) -> async_nats::jetstream::stream::Config {
    let mut stream = t.context().get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

#[tokio::test]
async fn provisioning_updates_only_managed_fields_and_never_turns_a_flag_off() {
    use async_nats::jetstream::stream::{Compression, Config, StorageType};

    let server = NatsServer::with_jetstream();
    let version = version_of(&server).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // What an operator set, each on the servers that have it.
    let mut operator = Config {
        name: "OPS".into(),
        subjects: vec!["ops.>".into()],
        description: Some("owned by the platform team".into()),
        max_messages_per_subject: 5,
        deny_delete: true,
        // Fields the crate models but this service does not set.
        storage: StorageType::Memory,
        max_bytes: 1 << 20,
        ..Default::default()
    };
    if version >= (2, 10, 0) {
        operator.compression = Some(Compression::S2);
        operator.metadata = [("owner".to_owned(), "platform".to_owned())].into();
    }
    if version >= (2, 11, 0) {
        operator.allow_message_ttl = true;
        operator.subject_delete_marker_ttl = Some(Duration::from_secs(60));
        operator.allow_rollup = true;
    }
    if version >= (2, 12, 0) {
        operator.allow_atomic_publish = true;
        operator.allow_message_schedules = true;
    }
    if version >= (2, 14, 0) {
        operator.allow_batch_publish = true;
    }
    js.create_stream(operator).await.unwrap();

    let mut ours = StreamConfig::new("OPS", ["ops.>"]).max_age(Duration::from_secs(3600));
    if version >= (2, 10, 0) {
        ours = ours.metadata("service", "orders");
    }
    let t = JetStreamTransport::connect(JetStreamConfig::new(config(&server), ours))
        .await
        .unwrap_or_else(|e| {
            panic!("connects to a stream an operator changed on {version:?}: {e:?}")
        });
    let after = stream_config(&t, "OPS").await;
    assert_eq!(
        after.max_age,
        Duration::from_secs(3600),
        "a managed field is updated"
    );
    assert_eq!(
        after.description.as_deref(),
        Some("owned by the platform team")
    );
    assert_eq!(after.max_messages_per_subject, 5);
    assert!(after.deny_delete);
    assert_eq!(
        (after.storage, after.max_bytes),
        (StorageType::Memory, 1 << 20),
        "a modelled field the service leaves at its default is not managed"
    );
    if version >= (2, 10, 0) {
        assert_eq!(after.compression, Some(Compression::S2));
        assert_eq!(
            after.metadata.get("owner").map(String::as_str),
            Some("platform")
        );
        assert_eq!(
            after.metadata.get("service").map(String::as_str),
            Some("orders")
        );
    }
    if version >= (2, 11, 0) {
        assert!(after.allow_message_ttl);
        assert_eq!(
            after.subject_delete_marker_ttl,
            Some(Duration::from_secs(60))
        );
    }
    if version >= (2, 12, 0) {
        assert!(after.allow_atomic_publish && after.allow_message_schedules);
    }
    if version >= (2, 14, 0) {
        assert!(after.allow_batch_publish);
    }
    t.close().await.unwrap();

    // Counters exclude TTLs and schedules, so on a stream of their own; the
    // server refuses any change of the setting.
    if version >= (2, 12, 0) {
        js.create_stream(Config {
            name: "COUNTERS".into(),
            subjects: vec!["counters.>".into()],
            allow_message_counter: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let t = JetStreamTransport::connect(JetStreamConfig::new(
            config(&server),
            StreamConfig::new("COUNTERS", ["counters.>"]).max_age(Duration::from_secs(3600)),
        ))
        .await
        .unwrap_or_else(|e| panic!("connects to a counter stream on {version:?}: {e:?}"));
        assert!(stream_config(&t, "COUNTERS").await.allow_message_counter);
        t.close().await.unwrap();
    }
}

#[tokio::test]
async fn bind_compares_the_whole_filter_set_of_an_existing_consumer() {
    use async_nats::jetstream::consumer::pull;
    use events::backend::jetstream::ConsumerDefaults;
    use events::transport::{SubjectPattern, SubscribeOptions};

    let server = NatsServer::with_jetstream();
    let version = version_of(&server).await;
    let stream_config = || StreamConfig::new("BIND", ["bind.>"]);
    let managing =
        JetStreamTransport::connect(JetStreamConfig::new(config(&server), stream_config()))
            .await
            .unwrap();
    let stream = managing.context().get_stream("BIND").await.unwrap();
    let create = |name: &str, single: &str, plural: &[&str]| {
        stream.create_consumer(pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: single.to_owned(),
            filter_subjects: plural.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
    };
    create("other", "bind.b", &[]).await.unwrap();
    create("same", "bind.a", &[]).await.unwrap();
    // `filter_subjects` is 2.10's: 2.9 would create these reading the
    // whole stream.
    let plural = version >= (2, 10, 0);
    if plural {
        create("multi", "", &["bind.a", "bind.b"]).await.unwrap();
        create("one", "", &["bind.a"]).await.unwrap();
    }

    let binding = JetStreamTransport::connect(
        JetStreamConfig::new(config(&server), stream_config()).consumers(
            ConsumerDefaults::new()
                .expires(Duration::from_secs(1))
                .bind_existing(true),
        ),
    )
    .await
    .unwrap();
    let options = |name: &str| {
        SubscribeOptions::new(SubjectPattern::parse("bind.a").unwrap())
            .durable_name(name)
            .unwrap()
    };
    let mut refused = vec!["other"];
    let mut accepted = vec!["same"];
    if plural {
        refused.push("multi");
        accepted.push("one");
    }
    for name in refused {
        let err = binding.subscribe(options(name)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}: {err}");
        assert!(err.to_string().contains("bind.b"), "{name}: {err}");
    }
    managing.publish(message("bind.b", "b-1")).await.unwrap();
    managing.publish(message("bind.a", "a-1")).await.unwrap();
    for name in accepted {
        let mut sub = binding
            .subscribe(options(name))
            .await
            .unwrap_or_else(|e| panic!("{name} reads exactly bind.a: {e:?}"));
        let delivery = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("a delivery in time")
            .expect("open")
            .unwrap();
        assert_eq!(delivery.message().subject.as_str(), "bind.a", "{name}");
        delivery.ack().await.unwrap();
    }
    binding.close().await.unwrap();
    managing.close().await.unwrap();
}

#[tokio::test]
async fn atomic_batches_store_all_or_nothing_on_2_12_1_and_are_refused_before() {
    use events::backend::jetstream::MAX_ATOMIC_BATCH;
    use events::transport::Capability;
    use events::Bus;

    use crate::support::Ping;

    let server = NatsServer::with_jetstream();
    let plain = JetStreamTransport::connect(JetStreamConfig::new(
        config(&server),
        StreamConfig::new("PLAIN", ["plain.>"]),
    ))
    .await
    .unwrap();
    let version = plain.server_version();
    // A stream without allow_atomic, on any version, and every older
    // server: refused before anything is sent.
    assert!(!plain.capabilities().supports(Capability::AtomicPublish));
    let err = plain
        .publish_atomic(vec![message("plain.a", "p-1")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(stored(&plain).await, 0);

    let connected = JetStreamTransport::connect(JetStreamConfig::new(
        config(&server),
        StreamConfig::new("ATOMIC", ["atomic.>"]).atomic_publish(true),
    ))
    .await;
    if version < (2, 12, 1) {
        let err = connected.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("2.12.1"), "{err}");
        return;
    }
    let t = connected.unwrap_or_else(|e| panic!("atomic batches on {version:?}: {e:?}"));
    assert!(t.capabilities().supports(Capability::AtomicPublish));

    let batch: Vec<Message> = (0..3)
        .map(|i| message(&format!("atomic.{i}"), &format!("a-{i}")))
        .collect();
    t.publish_atomic(batch).await.unwrap();
    assert_eq!(stored(&t).await, 3);

    // The middle message's dedup id is stored already: the server refuses
    // the batch at its commit, and the first message, staged, is not kept.
    let err = t
        .publish_atomic(vec![
            message("atomic.x", "fresh-1"),
            message("atomic.x", "a-1"),
            message("atomic.x", "fresh-2"),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("10201"), "{err}");
    assert_eq!(stored(&t).await, 3, "nothing of a refused batch is stored");

    // Refused before sending: too many, or a subject of another stream.
    let too_many: Vec<Message> = (0..=MAX_ATOMIC_BATCH)
        .map(|i| message("atomic.many", &format!("m-{i}")))
        .collect();
    let err = t.publish_atomic(too_many).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = t
        .publish_atomic(vec![message("atomic.a", "o-1"), message("plain.a", "o-2")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(stored(&t).await, 3);

    // The largest batch the server takes, through the typed bus.
    let bus = Bus::builder(t.clone())
        .source("atomic-tests")
        .prefix("atomic")
        .build()
        .unwrap();
    let events: Vec<_> = (0..MAX_ATOMIC_BATCH as u64)
        .map(|seq| {
            bus.event(Ping {
                seq,
                note: String::new(),
            })
        })
        .collect();
    bus.publish_atomic(&events).await.unwrap();
    assert_eq!(stored(&t).await, 3 + MAX_ATOMIC_BATCH as u64);
    // The same events again: each is a duplicate, so the batch is refused
    // whole (a retry after a lost commit answer reads this as success).
    let err = bus.publish_atomic(&events).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert_eq!(stored(&t).await, 3 + MAX_ATOMIC_BATCH as u64);
    t.close().await.unwrap();
    plain.close().await.unwrap();
}

#[tokio::test]
async fn the_memory_bus_refuses_atomic_batches() {
    let bus = events::Bus::memory("atomic-tests");
    let event = bus.event(crate::support::Ping {
        seq: 1,
        note: String::new(),
    });
    let err = bus.publish_atomic(&[event]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

/// Connects, retrying for up to 30 s: a fresh cluster on a loaded machine
/// can take longer than one management request's 10 s to place an R3
/// stream or answer for it.
async fn connect_within(config: JetStreamConfig) -> JetStreamTransport {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match JetStreamTransport::connect(config.clone()).await {
            Ok(t) => return t,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("connect failed, retrying: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connect: {e:?}"),
        }
    }
}

/// One run of [`failover_stall_is_the_ack_timeout_or_the_stream_leader_election`]:
/// a producer connected to one node of a fresh 3-node cluster, an R3
/// stream, the producer's node SIGKILLed mid-run, publishes waiting
/// `ack_timeout` for their ack. Returns the longest gap
/// between acknowledged publishes and the publishes sent again.
async fn failover_stall(kill_the_leader: bool, ack_timeout: Duration) -> (Duration, u32, String) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use events::backend::nats::{NatsConfig, ReconnectPolicy};
    use events::testing::NatsCluster;

    use crate::faults::{bus, js_config, spawn_producer, stream};

    const EVENTS: u32 = 600;
    let mut cluster = NatsCluster::start(3);
    let connection = |urls: String| {
        NatsConfig::new(urls)
            .name("events-failover-tests")
            .reconnect(
                ReconnectPolicy::new()
                    .min_delay(Duration::from_millis(50))
                    .max_delay(Duration::from_millis(200)),
            )
            .publish_timeout(Duration::from_secs(1))
    };
    let setup = connect_within(js_config(
        connection(cluster.urls().join(",")),
        stream().replicas(3),
    ))
    .await;
    let info = setup
        .context()
        .get_stream("FAULTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("a stream leader");
    let leader = cluster.index_of(&leader).expect("a node of the cluster");
    let victim = if kill_the_leader {
        leader
    } else {
        (0..cluster.len()).find(|i| *i != leader).unwrap()
    };
    // Only the victim's URL: the client fails over to the nodes the
    // server announces.
    let producer = connect_within(
        js_config(connection(cluster.url(victim)), stream().replicas(3)).ack_timeout(ack_timeout),
    )
    .await;
    let victim_name = cluster.server_name(victim).to_owned();
    assert_eq!(
        producer.context().client().server_info().server_name,
        victim_name
    );
    let deadline = Instant::now() + Duration::from_secs(40);

    let published = Arc::new(AtomicU32::new(0));
    let run = spawn_producer(bus(producer.clone()), EVENTS, published.clone(), deadline);
    while published.load(Ordering::SeqCst) < EVENTS / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        published.load(Ordering::SeqCst) < EVENTS,
        "the kill comes mid-run"
    );
    cluster.kill(victim);
    let produced = tokio::time::timeout_at(deadline.into(), run)
        .await
        .expect("the producer finished within the budget")
        .unwrap();
    let stored = setup
        .context()
        .get_stream("FAULTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(stored, u64::from(EVENTS), "every event stored once");
    let now_on = producer.context().client().server_info().server_name;
    assert_ne!(now_on, victim_name, "the client failed over");
    producer.close().await.unwrap();
    setup.close().await.unwrap();
    (produced.max_gap, produced.retries, victim_name)
}

/// Publishing stalls for the ack timeout of the publish in flight when the
/// killed node does not lead the stream (its ack died with the node; the
/// retry goes to the node the client reconnected to), and for the remaining
/// replicas' leader election (nats-server's Raft election timeout, 4 to 9 s,
/// randomized, not configurable) when it does. Run with `--nocapture` for
/// the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_stall_is_the_ack_timeout_or_the_stream_leader_election() {
    for ack_timeout in [Duration::from_secs(1), Duration::from_millis(250)] {
        let (stall, retries, node) = failover_stall(false, ack_timeout).await;
        println!(
            "failover, killed {node} (not the stream leader), ack timeout {ack_timeout:?}: \
             publishing stalled {stall:?}, {retries} publishes failed and were sent again"
        );
        // The ack timeout, the first retry's pause and a margin: nothing
        // waits for an election (4 s at least).
        assert!(
            stall < ack_timeout + Duration::from_millis(750),
            "{stall:?}"
        );
    }
    let (stall, retries, node) = failover_stall(true, Duration::from_secs(1)).await;
    println!(
        "failover, killed {node} (the stream leader), ack timeout 1s: publishing stalled \
         {stall:?}, {retries} publishes failed and were sent again"
    );
    // The longest election timeout, the detection before it and a margin
    // for a loaded machine.
    assert!(stall < Duration::from_secs(20), "{stall:?}");
}

/// One run of [`a_server_sigkill_can_forget_the_latest_acks_whatever_the_sync_interval`]:
/// a consumer acking as fast as it can, the server SIGKILLed once the
/// server reports `ACKED` acks applied, then restarted. Returns the ack
/// floor the server reported before the kill and after the restart, and
/// how long the acks before the kill took.
async fn ack_floor_across_a_kill(sync_always: bool) -> (u64, u64, Duration) {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use futures_util::StreamExt as _;

    const STORED: u64 = 10_000;
    const ACKED: u64 = 3_000;
    let mut builder = NatsServer::builder().jetstream();
    if sync_always {
        builder = builder.config("jetstream {\n  sync_interval: always\n}\n");
    }
    let mut server = builder.start();
    let t = JetStreamTransport::connect(JetStreamConfig::new(
        config(&server),
        StreamConfig::new("DUPS", ["dups.>"]),
    ))
    .await
    .unwrap();
    let batch: Vec<Message> = (0..STORED)
        .map(|i| message("dups.a", &format!("d-{i}")))
        .collect();
    assert!(t.publish_batch(batch).await.iter().all(Result::is_ok));
    let stream = t.context().get_stream("DUPS").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("c".into()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: -1,
            ..Default::default()
        })
        .await
        .unwrap();
    let acker = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let Ok(mut messages) = consumer.messages().await else {
                return;
            };
            while let Some(Ok(message)) = messages.next().await {
                if message.ack().await.is_err() {
                    return;
                }
            }
        })
    };
    let began = std::time::Instant::now();
    let mut info_source = consumer.clone();
    let mut before = 0;
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            before = info_source.info().await.unwrap().ack_floor.stream_sequence;
            if before >= ACKED {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{ACKED} acks applied in time");
    let acking = began.elapsed();
    server.kill();
    acker.abort();
    t.close().await.ok();
    server.restart();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("DUPS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        STORED,
        "nothing stored is lost"
    );
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("DUPS")
        .await
        .unwrap()
        .get_consumer("c")
        .await
        .unwrap();
    let after = consumer.info().await.unwrap().ack_floor.stream_sequence;
    (before, after, acking)
}

/// A SIGKILLed server comes back with an older ack floor for a busy
/// consumer: nats-server writes a consumer's state asynchronously,
/// coalescing updates (at most about ten writes a second), so the latest
/// acks it had applied are forgotten and those events are delivered again,
/// on every version. `sync_interval` decides when written data is fsynced,
/// which matters when the machine goes down, not the process: `always`
/// does not prevent this. Run with `--nocapture` for the numbers.
#[tokio::test]
async fn a_server_sigkill_can_forget_the_latest_acks_whatever_the_sync_interval() {
    let version = version_of(&NatsServer::with_jetstream()).await;
    let mut runs = vec![false];
    // `sync_interval` is a 2.10 setting.
    if version >= (2, 10, 0) {
        runs.push(true);
    }
    for sync_always in runs {
        let (before, after, acking) = ack_floor_across_a_kill(sync_always).await;
        let forgotten = before.saturating_sub(after);
        let mode = if sync_always {
            "always"
        } else {
            "default (2 min)"
        };
        println!(
            "server SIGKILL on {version:?}, sync_interval {mode}: ack floor {before} after \
             {acking:?} of acking, {after} after the restart: {forgotten} applied acks \
             forgotten, the last {:?} of acks",
            acking.mul_f64(forgotten as f64 / before.max(1) as f64)
        );
    }
}

#[tokio::test]
async fn stream_and_consumer_metadata_reach_the_server_on_2_10_and_are_refused_before() {
    use events::backend::jetstream::ConsumerDefaults;
    use events::transport::{SubjectPattern, SubscribeOptions};

    let server = NatsServer::with_jetstream();
    let version = version_of(&server).await;
    let connected = JetStreamTransport::connect(
        JetStreamConfig::new(
            config(&server),
            StreamConfig::new("META", ["meta.>"]).metadata("owner", "orders"),
        )
        .consumers(
            ConsumerDefaults::new()
                .metadata("team", "billing")
                .expires(Duration::from_secs(1)),
        ),
    )
    .await;
    if version < (2, 10, 0) {
        let err = connected.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("2.10"), "{err}");
        return;
    }
    let t = connected.unwrap_or_else(|e| panic!("metadata on {version:?}: {e:?}"));
    let stream = stream_config(&t, "META").await;
    assert_eq!(
        stream.metadata.get("owner").map(String::as_str),
        Some("orders")
    );
    let sub = t
        .subscribe(
            SubscribeOptions::new(SubjectPattern::parse("meta.a").unwrap())
                .durable_name("meta-reader")
                .unwrap(),
        )
        .await
        .unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = t
        .context()
        .get_stream("META")
        .await
        .unwrap()
        .get_consumer("meta-reader")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.config.metadata.get("team").map(String::as_str),
        Some("billing")
    );
    drop(sub);
    t.close().await.unwrap();
}

/// A node of [`MixedCluster`]: killed on drop.
struct MixedNode {
    name: String,
    client_port: u16,
    child: std::process::Child,
}

impl Drop for MixedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 3-node cluster being upgraded: two nodes run `new`, one (`old`,
/// tagged `old`) runs `old`. Its directory goes on drop.
struct MixedCluster {
    nodes: Vec<MixedNode>,
    dir: std::path::PathBuf,
}

impl Drop for MixedCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

impl MixedCluster {
    fn start(new: &str, old: &str) -> MixedCluster {
        let dir = std::env::temp_dir().join(format!("events-mixed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (client, route)) in ports.iter().enumerate() {
            let name = if i == 2 {
                "old".to_owned()
            } else {
                format!("new{i}")
            };
            let binary = if i == 2 { old } else { new };
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(node_dir.join("store")).unwrap();
            let routes: Vec<String> = ports
                .iter()
                .filter(|(_, r)| r != route)
                .map(|(_, r)| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect();
            let config = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{client}\"\nserver_tags: [\"{name}\"]\n\
                 jetstream {{\n  store_dir: {store:?}\n}}\n\
                 cluster {{\n  name: mixed\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                store = node_dir.join("store").display().to_string(),
                routes = routes.join(", "),
            );
            let path = node_dir.join("server.conf");
            std::fs::write(&path, config).unwrap();
            let log = std::fs::File::create(node_dir.join("server.log")).unwrap();
            let child = std::process::Command::new(binary)
                .arg("-c")
                .arg(&path)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
            nodes.push(MixedNode {
                name,
                client_port: *client,
                child,
            });
        }
        let cluster = MixedCluster { nodes, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for node in &cluster.nodes {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.client_port));
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} listens within 10 s",
                    node.name
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cluster
    }

    fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }
}

/// The version a `nats-server` binary reports (`nats-server: v2.9.10`).
fn binary_version(binary: &str) -> (u64, u64, u64) {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {binary} --version: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    });
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// In a cluster being upgraded, the node a client reaches can be newer
/// than the one leading its stream: a per-message TTL checked against the
/// connected node alone would be accepted, and the old leader would keep
/// every message forever. The stream's configuration as its leader
/// answers it is checked instead, so connect refuses. The old node is
/// `nats-server` on `PATH` (2.9.10 here), the new ones `NATS_SERVER_BIN`;
/// with no newer server at hand, the connected node's own version refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_led_by_an_older_node_is_checked_per_stream() {
    use async_nats::jetstream::stream::{Config, Placement};

    // As the harness picks it.
    let new = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
    let old = "nats-server";
    let (new_version, old_version) = (binary_version(&new), binary_version(old));
    let cluster = MixedCluster::start(&new, old);
    let connection = config_for(&cluster.url(0));
    // The cluster is ready once it creates a stream placed on the old node.
    let client = async_nats::connect(cluster.url(0)).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let created = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match js
                .create_stream(Config {
                    name: "UPG".into(),
                    subjects: vec!["upg.>".into()],
                    placement: Some(Placement {
                        cluster: None,
                        tags: vec!["old".into()],
                    }),
                    ..Default::default()
                })
                .await
            {
                Ok(stream) => return stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("the mixed cluster creates a stream within 30 s");
    let leader = created.cached_info().cluster.clone().and_then(|c| c.leader);
    assert_eq!(leader.as_deref(), Some(cluster.nodes[2].name.as_str()));

    let connected = JetStreamTransport::connect(
        JetStreamConfig::new(connection, StreamConfig::new("UPG", ["upg.>"]))
            .message_ttl(Duration::from_secs(60)),
    )
    .await;
    let err = connected.expect_err("a TTL the stream's leader would ignore is refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err:?}");
    println!(
        "connected to {:?}, stream led by {:?}: {err}",
        new_version, old_version
    );
    let upgrading =
        (new_version.0, new_version.1) >= (2, 11) && (old_version.0, old_version.1) < (2, 11);
    if upgrading {
        assert!(
            err.to_string()
                .contains("is led by a nats-server older than 2.11"),
            "{err}"
        );
    }
    // The same for atomic batches, and for a bound stream.
    let err = JetStreamTransport::connect(JetStreamConfig::new(
        config_for(&cluster.url(0)),
        StreamConfig::new("UPG", ["upg.>"]).atomic_publish(true),
    ))
    .await
    .expect_err("atomic batches the stream's leader would store one by one are refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err:?}");
    let err = JetStreamTransport::connect(
        JetStreamConfig::bind(config_for(&cluster.url(1)), "UPG")
            .message_ttl(Duration::from_secs(60)),
    )
    .await
    .expect_err("a bound stream whose leader ignores TTLs is refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err:?}");
    // Nothing a feature needs: the service starts. While the leader is
    // older than the node connected to, its answer lacks what it does not
    // know, and the stream is left as it is rather than updated from it.
    let t = JetStreamTransport::connect(JetStreamConfig::new(
        config_for(&cluster.url(0)),
        StreamConfig::new("UPG", ["upg.>"]).max_age(Duration::from_secs(3600)),
    ))
    .await
    .unwrap_or_else(|e| panic!("a plain service starts during the upgrade: {e:?}"));
    let max_age = stream_config(&t, "UPG").await.max_age;
    if upgrading {
        assert_eq!(
            max_age,
            Duration::ZERO,
            "not updated from the old leader's answer"
        );
    } else {
        assert_eq!(max_age, Duration::from_secs(3600));
    }
    t.close().await.unwrap();
}

fn config_for(url: &str) -> events::backend::nats::NatsConfig {
    events::backend::nats::NatsConfig::new(url)
        .name("events-mixed-tests")
        .publish_timeout(Duration::from_secs(1))
}
