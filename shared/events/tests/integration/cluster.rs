//! A 3-node nats-server cluster on loopback: a stream with 3 replicas keeps
//! a publish/consume run whole when the node the producer is connected to
//! is SIGKILLed mid-run. Run with `--nocapture` to see the stall.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::backend::jetstream::JetStreamTransport;
use events::backend::nats::{NatsConfig, ReconnectPolicy};
use events::consumer::MemoryIdempotencyStore;
use events::testing::NatsCluster;

use crate::faults::{
    assert_exactly_once, bus, connect, consumer, js_config, spawn_producer, start, stop, stream,
    Effects, Tally,
};

const EVENTS: u32 = 2000;
const BUDGET: Duration = Duration::from_secs(50);

/// All three nodes' URLs: the client starts on one and fails over to the
/// others.
fn cluster_config(cluster: &NatsCluster) -> NatsConfig {
    NatsConfig::new(cluster.urls().join(","))
        .name("events-cluster-tests")
        .reconnect(
            ReconnectPolicy::new()
                .min_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(200)),
        )
        .publish_timeout(Duration::from_secs(1))
}

/// The `server_name` of the node a transport is connected to.
fn connected_to(t: &JetStreamTransport) -> String {
    t.context().client().server_info().server_name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_stream_loses_nothing_when_the_producer_s_node_is_killed() {
    let began = Instant::now();
    let deadline = began + BUDGET;
    let mut cluster = NatsCluster::start(3);
    let config = js_config(cluster_config(&cluster), stream().replicas(3));
    let producer_transport = connect(config.clone()).await;
    let consumer_transport = connect(config).await;
    let info = producer_transport
        .context()
        .get_stream("FAULTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    // A shared idempotency bucket is replicated like the events it guards.
    events::backend::jetstream::KvIdempotencyStore::open(
        &producer_transport,
        "cluster_dedup",
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let kv = producer_transport
        .context()
        .get_stream("KV_cluster_dedup")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .num_replicas;
    assert_eq!(kv, 3, "the idempotency bucket has the stream's replicas");
    let stream_leader = info.cluster.and_then(|c| c.leader).unwrap_or_default();

    let tally = Tally::new(EVENTS);
    let consumer_bus = bus(consumer_transport.clone());
    let effects = Effects {
        tally: tally.clone(),
        ledger: None,
    };
    let running = start(consumer(
        &consumer_bus,
        effects,
        MemoryIdempotencyStore::new(Duration::from_secs(600)),
        Duration::ZERO,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let producer_bus = bus(producer_transport.clone());
    let published = Arc::new(AtomicU32::new(0));
    let producer = spawn_producer(producer_bus.clone(), EVENTS, published.clone(), deadline);
    while published.load(Ordering::SeqCst) < EVENTS / 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let victim_name = connected_to(&producer_transport);
    let victim = cluster
        .index_of(&victim_name)
        .expect("a node of the cluster");
    let consumer_node = connected_to(&consumer_transport);
    let at = published.load(Ordering::SeqCst);
    assert!(at < EVENTS, "the kill comes mid-run");
    cluster.kill(victim);
    eprintln!(
        "killed {victim_name} (producer's node; consumer on {consumer_node}, stream leader \
         {stream_leader}) at {:?} after {at} events",
        began.elapsed()
    );

    let produced = tokio::time::timeout_at(deadline.into(), producer)
        .await
        .expect("the producer finished within the budget")
        .unwrap();
    tally.wait_all(deadline).await;
    let summary = stop(running).await;
    let failed_over_to = connected_to(&producer_transport);
    let stored = producer_transport
        .context()
        .get_stream("FAULTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    println!(
        "cluster node loss: events published {}, stored {stored}, handled {}, lost {}, \
         duplicates handled {}, duplicate deliveries acked {}, publish retries {}, \
         producer failed over {victim_name} -> {failed_over_to}, \
         publishing stalled {:?} (longest gap between acknowledged publishes), run {:?}",
        produced.published,
        summary.handled,
        tally.lost().len(),
        tally.duplicated().len(),
        summary.duplicates,
        produced.retries,
        produced.max_gap,
        began.elapsed()
    );
    assert_ne!(failed_over_to, victim_name, "the client failed over");
    assert!(!cluster.is_running(victim));
    assert_eq!(stored, u64::from(EVENTS), "every event stored exactly once");
    assert_exactly_once(&tally, "cluster node loss");
    assert_eq!(summary.dead_lettered, 0);
    producer_bus.close().await.unwrap();
    consumer_bus.close().await.unwrap();
}
