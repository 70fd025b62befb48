//! Streams partitioned by key: keys in subjects, the server's partition
//! function, and per-key order across the instances of one consumer, with
//! an instance SIGKILLed mid-run and another started.
//!
//! Each instance of the order test is a process of its own: this test
//! binary run again with [`worker_process`] alone, configured through the
//! environment. It records every event it handles, before acking it, in a
//! file of its own (one `write` per record: a SIGKILL loses nothing
//! written).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use events::backend::jetstream::{
    ConsumerDefaults, JetStreamConfig, JetStreamTransport, StreamConfig,
};
use events::consumer::{Consumer, Context, HandlerError};
use events::testing::NatsServer;
use events::transport::{Capability, SubjectPattern, SubscribeOptions, Transport};
use events::wire::{key_token, partition_of, ContentMode};
use events::{Bus, Event, EventPayload};
use serde::{Deserialize, Serialize};

use crate::nats::config;

const PARTITIONS: u32 = 8;
const STREAM: &str = "PARTS";
const PREFIX: &str = "parts";

/// Three types of one entity: the order test publishes them in turn for
/// every key, so per-key order is across types.
macro_rules! step {
    ($name:ident, $type:literal) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            pub n: u32,
        }
        impl EventPayload for $name {
            const TYPE: &'static str = $type;
        }
    };
}
step!(Opened, "entity.opened");
step!(Changed, "entity.changed");
step!(Closed, "entity.closed");

fn stream_config() -> StreamConfig {
    StreamConfig::new(STREAM, [format!("{PREFIX}.>")]).partitions(PARTITIONS)
}

fn js_config(url: &str) -> JetStreamConfig {
    let connection = events::backend::nats::NatsConfig::new(url);
    JetStreamConfig::new(connection, stream_config())
        .consumers(ConsumerDefaults::new().pin_timeout(Duration::from_secs(2)))
}

async fn bus(transport: JetStreamTransport) -> Bus {
    Bus::builder(transport)
        .source("partitions")
        .prefix(PREFIX)
        .build()
        .unwrap()
}

/// A stream partitioned by key captures only its prefix: dead letters need
/// a stream of their own.
async fn dead_letter_stream(jetstream: &async_nats::jetstream::Context) {
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "DEAD".into(),
            subjects: vec!["deadletter.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The server's version, from a transport.
async fn version(url: &str) -> (u64, u64, u64) {
    let t = JetStreamTransport::connect(JetStreamConfig::new(
        events::backend::nats::NatsConfig::new(url),
        StreamConfig::new("VERSION", ["version.>"]),
    ))
    .await
    .unwrap();
    let v = t.server_version();
    t.close().await.unwrap();
    v
}

/// Keys, some of them not valid subject tokens (hashed into one).
fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|k| match k % 4 {
            0 => format!("order/{k}"),
            1 => format!("customer {k}"),
            _ => format!("k-{k}"),
        })
        .collect()
}

/// Round `round`: three events per key, one of each type, back to back
/// (numbered `3 * round` on), so a key's events arrive together.
async fn publish_round(bus: &Bus, keys: &[String], round: u32) {
    let codec = bus.codec();
    let mode = ContentMode::Binary;
    let mut batch = Vec::new();
    for key in keys {
        let n = 3 * round;
        let key = key.clone();
        batch.push(codec.encode(
            &Event::new("partitions", Opened { n }).with_subject(key.clone()),
            mode,
        ));
        batch.push(codec.encode(
            &Event::new("partitions", Changed { n: n + 1 }).with_subject(key.clone()),
            mode,
        ));
        batch.push(codec.encode(
            &Event::new("partitions", Closed { n: n + 2 }).with_subject(key),
            mode,
        ));
    }
    let batch = batch.into_iter().map(Result::unwrap).collect();
    for result in bus.transport().publish_batch(batch).await {
        result.unwrap();
    }
}

#[tokio::test]
async fn the_server_stores_each_key_in_the_partition_the_crate_computes() {
    let server = NatsServer::with_jetstream();
    if version(&server.url()).await < (2, 10, 0) {
        // Refused at connect there: see `older_servers_refuse_partitions`.
        return;
    }
    let transport = JetStreamTransport::connect(js_config(&server.url()))
        .await
        .unwrap();
    assert_eq!(transport.capabilities().key_partitions, PARTITIONS);
    let bus = bus(transport.clone()).await;
    assert!(bus.codec().keys_in_subjects());
    let keys = keys(32);
    publish_round(&bus, &keys, 0).await;

    // Read back as stored: the partition token the server computed.
    let mut stream = transport.context().get_stream(STREAM).await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(stored, 3 * keys.len() as u64);
    let mut used = std::collections::BTreeSet::new();
    for (i, key) in keys.iter().enumerate() {
        let message = stream.get_raw_message(3 * i as u64 + 1).await.unwrap();
        let token = key_token(Some(key));
        let partition = partition_of(&token, PARTITIONS);
        used.insert(partition);
        assert_eq!(
            message.subject.as_str(),
            format!("{PREFIX}.{partition}.{token}.entity.opened"),
            "key {key:?}"
        );
    }
    assert!(
        used.len() > 4,
        "32 keys over 8 partitions used only {used:?}"
    );

    // A subscription to one partition gets that partition's keys, under
    // the subjects they were published on.
    let wanted = 3;
    let mut sub = transport
        .subscribe(
            SubscribeOptions::new(
                SubjectPattern::parse(&format!("{PREFIX}.*.entity.opened")).unwrap(),
            )
            .durable_name("one-partition")
            .unwrap()
            .partition(wanted, "one")
            .unwrap(),
        )
        .await
        .unwrap();
    let expected: Vec<_> = keys
        .iter()
        .filter(|k| partition_of(&key_token(Some(k)), PARTITIONS) == wanted)
        .collect();
    for key in &expected {
        let delivery = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        assert_eq!(
            delivery.message().subject.as_str(),
            format!("{PREFIX}.{}.entity.opened", key_token(Some(key)))
        );
        delivery.ack().await.unwrap();
    }
    let info = stream.consumer_info("one-partition").await.unwrap();
    assert_eq!(info.num_pending, 0, "only this partition's events matched");
    drop(sub);
    transport.close().await.unwrap();
}

#[tokio::test]
async fn older_servers_refuse_partitions_and_other_transports_refuse_partition_subscriptions() {
    let server = NatsServer::with_jetstream();
    let v = version(&server.url()).await;
    let connected = JetStreamTransport::connect(js_config(&server.url())).await;
    if v < (2, 10, 0) {
        let e = connected.expect_err("refused on 2.9");
        assert_eq!(e.kind(), events::ErrorKind::Unsupported, "{e}");
    } else {
        let t = connected.unwrap();
        assert_eq!(
            t.capabilities()
                .supports(Capability::OrderedAcrossInstances),
            v >= (2, 11, 0)
        );
        t.close().await.unwrap();
    }
    // A stream partitioned by key must capture one `<prefix>.>`.
    let bad = JetStreamConfig::new(
        config(&server),
        StreamConfig::new("BAD", ["a.>", "b.>"]).partitions(4),
    );
    let e = JetStreamTransport::connect(bad).await.err().unwrap();
    assert_eq!(e.kind(), events::ErrorKind::InvalidInput, "{e}");
    let too_many = JetStreamConfig::new(
        config(&server),
        StreamConfig::new("BAD", ["a.>"]).partitions(u32::MAX),
    );
    let e = JetStreamTransport::connect(too_many).await.err().unwrap();
    assert_eq!(e.kind(), events::ErrorKind::InvalidInput, "{e}");

    let memory = events::backend::memory::MemoryTransport::new();
    let options = SubscribeOptions::new(SubjectPattern::parse("a.>").unwrap())
        .partition(0, "g")
        .unwrap();
    let e = memory.subscribe(options).await.err().unwrap();
    assert_eq!(e.kind(), events::ErrorKind::Unsupported);
}

// ---------------------------------------------------------------------
// Per-key order across instances, with a SIGKILL.

/// The environment a worker process reads.
const URL_VAR: &str = "EVENTS_PARTITION_WORKER_URL";
const OUT_VAR: &str = "EVENTS_PARTITION_WORKER_OUT";

#[derive(Clone)]
struct Record(std::sync::Arc<std::sync::Mutex<std::fs::File>>);

impl Record {
    fn write(&self, key: &str, n: u32) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        // One write per line: what a SIGKILL interrupts is never half a
        // record in the file.
        let line = format!("{at} {n} {key}\n");
        self.0
            .lock()
            .unwrap()
            .write_all(line.as_bytes())
            .expect("record");
    }
}

async fn record<T: EventPayload + Step>(
    event: Event<T>,
    ctx: Context<Record>,
) -> Result<(), HandlerError> {
    // A pause, so a killed instance has events in flight, and a key's
    // events would overlap if two instances had them at once.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let key = event.metadata.subject().unwrap_or_default().to_owned();
    ctx.state().write(&key, event.payload.n());
    Ok(())
}

trait Step {
    fn n(&self) -> u32;
}
impl Step for Opened {
    fn n(&self) -> u32 {
        self.n
    }
}
impl Step for Changed {
    fn n(&self) -> u32 {
        self.n
    }
}
impl Step for Closed {
    fn n(&self) -> u32 {
        self.n
    }
}

/// Not a test: one instance of the order test's consumer, run as a process
/// of its own by [`per_key_order_holds_across_instances_and_a_kill`] (the
/// environment says where). Runs until its stdin closes, then shuts down.
#[tokio::test]
#[ignore = "a worker process of per_key_order_holds_across_instances_and_a_kill"]
async fn worker_process() {
    let (Ok(url), Ok(out)) = (std::env::var(URL_VAR), std::env::var(OUT_VAR)) else {
        return;
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .unwrap();
    let transport = JetStreamTransport::connect(js_config(&url)).await.unwrap();
    let bus = bus(transport).await;
    let running = Consumer::new(&bus, "worker")
        .unwrap()
        .state(Record(std::sync::Arc::new(std::sync::Mutex::new(file))))
        .ordered_by_key(true)
        .concurrency(32)
        .handle(record::<Opened>)
        .handle(record::<Changed>)
        .handle(record::<Closed>)
        .start()
        .await
        .unwrap();
    println!("\nworker-ready");
    std::io::stdout().flush().unwrap();
    // Until the parent closes stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await
    .unwrap();
    running.shutdown().await.unwrap();
    bus.close().await.unwrap();
}

struct Worker {
    child: Child,
    out: PathBuf,
}

async fn spawn_worker(url: &str, dir: &Path, index: usize) -> Worker {
    let out = dir.join(format!("worker-{index}.log"));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "partitions::worker_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URL_VAR, url)
        .env(OUT_VAR, &out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Ready once subscribed.
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let mut ready_tx = Some(ready_tx);
        // Read to the end: the worker's test harness reports on stdout.
        for line in lines.by_ref().map_while(Result::ok) {
            if line.trim_end().ends_with("worker-ready") {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    let ready = tokio::time::timeout(Duration::from_secs(30), ready).await;
    assert!(
        matches!(ready, Ok(Ok(()))),
        "worker {index} was not ready within 30 s"
    );
    Worker { child, out }
}

/// Every record of a worker: (time, n, key).
fn records(path: &Path) -> Vec<(u128, u32, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let at = parts.next()?.parse().ok()?;
            let n = parts.next()?.parse().ok()?;
            Some((at, n, parts.next()?.to_owned()))
        })
        .collect()
}

fn distinct_handled(workers: &[&Worker]) -> usize {
    let mut seen = std::collections::HashSet::new();
    for w in workers {
        for (_, n, key) in records(&w.out) {
            seen.insert((key, n));
        }
    }
    seen.len()
}

async fn wait_for(what: &str, deadline: Instant, mut check: impl FnMut() -> bool) {
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_across_instances_and_a_kill() {
    const KEYS: usize = 24;
    const ROUNDS: u32 = 100;
    const PACE: Duration = Duration::from_millis(40);
    let server = NatsServer::with_jetstream();
    let v = version(&server.url()).await;
    if v < (2, 11, 0) {
        eprintln!("skipped: per-key order across instances needs nats-server 2.11 (pinned consumers); this one is {v:?}");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(150);
    let url = server.url();
    let producer = JetStreamTransport::connect(js_config(&url)).await.unwrap();
    assert!(producer
        .capabilities()
        .supports(Capability::OrderedAcrossInstances));
    dead_letter_stream(producer.context()).await;
    let bus = bus(producer).await;
    let dir = server.dir().join("workers");
    std::fs::create_dir_all(&dir).unwrap();
    let keys = keys(KEYS);
    let total = KEYS * 3 * ROUNDS as usize;

    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(spawn_worker(&url, &dir, i).await);
    }
    // A steady stream of events for the whole run (paced, so the kill
    // and the new instance land in its middle).
    let published = Arc::new(AtomicU32::new(0));
    let producer = {
        let (bus, keys, published) = (bus.clone(), keys.clone(), published.clone());
        tokio::spawn(async move {
            for n in 0..ROUNDS {
                publish_round(&bus, &keys, n).await;
                published.store(n + 1, Ordering::SeqCst);
                tokio::time::sleep(PACE).await;
            }
        })
    };
    // The instances share the partitions: each handles events.
    wait_for("every instance to handle events", deadline, || {
        workers.iter().all(|w| !records(&w.out).is_empty())
    })
    .await;
    let before_kill: Vec<usize> = workers.iter().map(|w| records(&w.out).len()).collect();
    // The instance killed is one handling events right now (holding
    // partitions, with events in flight): its partitions move by the pin
    // timeout, what it had in flight by redelivery.
    let counts = |workers: &[Worker]| -> Vec<usize> {
        workers.iter().map(|w| records(&w.out).len()).collect()
    };
    let from = counts(&workers);
    wait_for("an instance handling events", deadline, || {
        counts(&workers)
            .iter()
            .zip(&from)
            .any(|(now, then)| now > then)
    })
    .await;
    let victim = counts(&workers)
        .iter()
        .zip(&from)
        .enumerate()
        .max_by_key(|(_, (now, then))| **now - **then)
        .map(|(i, _)| i)
        .unwrap();

    // Mid-run: SIGKILL it, and start a fourth.
    workers[victim].child.kill().unwrap();
    workers[victim].child.wait().unwrap();
    let killed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let published_at_kill = published.load(Ordering::SeqCst);
    assert!(
        published_at_kill < ROUNDS * 2 / 3,
        "the kill came late in the run (round {published_at_kill} of {ROUNDS}): it proves little"
    );
    workers.push(spawn_worker(&url, &dir, 3).await);
    tokio::time::timeout_at(deadline.into(), producer)
        .await
        .expect("the producer finished in time")
        .unwrap();
    wait_for("every event handled", deadline, || {
        distinct_handled(&workers.iter().collect::<Vec<_>>()) == total
    })
    .await;
    let end = Instant::now();
    for (_, w) in workers.iter_mut().enumerate().filter(|(i, _)| *i != victim) {
        drop(w.child.stdin.take());
    }
    for (_, w) in workers.iter_mut().enumerate().filter(|(i, _)| *i != victim) {
        let status = w.child.wait().unwrap();
        assert!(status.success(), "a worker failed: {status}");
    }

    // Every event handled; per key, in time order, n never goes back.
    let mut by_key: HashMap<String, Vec<(u128, u32, usize)>> = HashMap::new();
    for (i, w) in workers.iter().enumerate() {
        for (at, n, key) in records(&w.out) {
            by_key.entry(key).or_default().push((at, n, i));
        }
    }
    assert_eq!(by_key.len(), KEYS);
    let mut twice = 0;
    let mut twice_not_from_the_kill = Vec::new();
    for (key, mut handled) in by_key {
        handled.sort();
        let mut last: Option<(u32, usize)> = None;
        let context = |i: usize| {
            let around: Vec<String> = handled[i.saturating_sub(4)..(i + 3).min(handled.len())]
                .iter()
                .map(|(at, n, w)| {
                    let since_kill =
                        i128::try_from(*at).unwrap() - i128::try_from(killed_at).unwrap();
                    format!("n={n} by {w} at {}ms from the kill", since_kill / 1_000_000)
                })
                .collect();
            around.join("; ")
        };
        for (i, &(at, n, worker)) in handled.iter().enumerate() {
            if let Some((previous, by)) = last {
                assert!(
                    n >= previous,
                    "key {key:?}: {n} handled after {previous} (by {worker} after {by}): {}",
                    context(i)
                );
                assert!(
                    n <= previous + 1,
                    "key {key:?}: {n} skipped ahead of {previous}: {}",
                    context(i)
                );
                if n == previous {
                    twice += 1;
                    // Handled again: only what the killed instance had in
                    // flight, taken over after its death.
                    if by != victim || at < killed_at {
                        twice_not_from_the_kill.push((key.clone(), n, by, worker));
                    }
                }
            } else {
                assert_eq!(n, 0, "key {key:?} starts at {n}: {}", context(i));
            }
            last = Some((n, worker));
        }
        assert_eq!(last.map(|l| l.0), Some(3 * ROUNDS - 1), "key {key:?}");
    }
    let shares: BTreeMap<usize, usize> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| (i, records(&w.out).len()))
        .collect();
    println!(
        "partitions on {v:?}: {total} events over {KEYS} keys x 3 types, instance records before the kill {before_kill:?}, \
         at the end {shares:?}, killed instance {victim} at round {published_at_kill} of {ROUNDS}, handled twice {twice} \
         (all after the kill, by the killed instance first), run {:?}",
        end.duration_since(deadline - Duration::from_secs(150))
    );
    assert!(
        twice_not_from_the_kill.is_empty(),
        "handled twice without a kill: {twice_not_from_the_kill:?}"
    );
    assert!(shares[&3] > 0, "the fourth instance took partitions over");
    bus.close().await.unwrap();
}

/// What the handover test's instances share: the first one's count of
/// events it is stuck on, the second one's log of what it handled.
#[derive(Clone)]
struct Handover {
    stuck: Arc<tokio::sync::Semaphore>,
    log: Arc<std::sync::Mutex<Vec<(String, u32)>>>,
}

/// The first instance: each key's first event never finishes.
async fn stuck_on_first<T: EventPayload + Step>(
    event: Event<T>,
    ctx: Context<Handover>,
) -> Result<(), HandlerError> {
    if event.payload.n() == 0 {
        ctx.state().stuck.add_permits(1);
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// The second instance: logs each event it handles.
async fn log_handled<T: EventPayload + Step>(
    event: Event<T>,
    ctx: Context<Handover>,
) -> Result<(), HandlerError> {
    let key = event.metadata.subject().unwrap_or_default().to_owned();
    ctx.state()
        .log
        .lock()
        .unwrap()
        .push((key, event.payload.n()));
    Ok(())
}

/// A rolling restart on a stream partitioned by key: the first instance
/// shuts down with each key's first event unfinished and the key's later
/// events (of three types) fetched behind it; the second instance, already
/// running, takes the partitions over and handles every key's events in
/// publish order, the unfinished first one first. (On a stream not
/// partitioned by key, nats-server may redeliver what is nacked out of
/// order: see the lifecycle suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_handover_keeps_each_key_s_order_across_types() {
    let server = NatsServer::with_jetstream();
    let v = version(&server.url()).await;
    if v < (2, 11, 0) {
        eprintln!("skipped: per-key order across instances needs nats-server 2.11 (pinned consumers); this one is {v:?}");
        return;
    }
    let connect = || async {
        bus(JetStreamTransport::connect(js_config(&server.url()))
            .await
            .unwrap())
        .await
    };
    let producer = connect().await;
    producer
        .transport()
        .capabilities()
        .supports(Capability::OrderedAcrossInstances)
        .then_some(())
        .expect("partitions on 2.11+");
    dead_letter_stream(&async_nats::jetstream::new(
        async_nats::connect(server.url()).await.unwrap(),
    ))
    .await;
    let state = Handover {
        stuck: Arc::new(tokio::sync::Semaphore::new(0)),
        log: Arc::default(),
    };
    let start = |bus: Bus, first: bool| {
        let state = state.clone();
        async move {
            let consumer = Consumer::new(&bus, "handover").unwrap().state(state);
            let consumer = if first {
                consumer
                    .handle(stuck_on_first::<Opened>)
                    .handle(stuck_on_first::<Changed>)
                    .handle(stuck_on_first::<Closed>)
            } else {
                consumer
                    .handle(log_handled::<Opened>)
                    .handle(log_handled::<Changed>)
                    .handle(log_handled::<Closed>)
            };
            consumer
                .ordered_by_key(true)
                // Room for both keys' first events whatever the order the
                // partitions hand them in: a key's later events, waiting
                // for its first, take slots too.
                .concurrency(8)
                .shutdown_timeout(Duration::from_millis(500))
                .start()
                .await
                .unwrap()
        }
    };
    let first = start(connect().await, true).await;
    // Two keys, their events interleaved, the types in turn: a key's
    // events are of three types.
    let keys = ["order/1", "k-2"];
    for n in 0..6u32 {
        for key in keys {
            let result = match n % 3 {
                0 => {
                    producer
                        .publish(
                            &Event::new("partitions", Opened { n }).with_subject(key.to_owned()),
                        )
                        .await
                }
                1 => {
                    producer
                        .publish(
                            &Event::new("partitions", Changed { n }).with_subject(key.to_owned()),
                        )
                        .await
                }
                _ => {
                    producer
                        .publish(
                            &Event::new("partitions", Closed { n }).with_subject(key.to_owned()),
                        )
                        .await
                }
            };
            result.unwrap();
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), state.stuck.acquire_many(2))
        .await
        .expect("both keys' first events are being handled")
        .unwrap();
    let second = start(connect().await, false).await;
    let summary = first.shutdown().await.unwrap();
    assert_eq!(summary.handled, 0, "{summary:?}");
    // The two stuck, and the later events that were waiting for them.
    assert!(summary.nacked_on_shutdown >= 2, "{summary:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_for(
        "every event handled by the second instance",
        deadline,
        || state.log.lock().unwrap().len() >= 12,
    )
    .await;
    let summary = second.shutdown().await.unwrap();
    assert_eq!(summary.handled, 12, "{summary:?}");
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for (key, n) in state.log.lock().unwrap().iter() {
        per_key.entry(key.clone()).or_default().push(*n);
    }
    for key in keys {
        assert_eq!(
            per_key[key],
            [0, 1, 2, 3, 4, 5],
            "key {key} in publish order"
        );
    }
}
