//! Fault injection: a numbered run of events is published with retries and
//! handled by the consumer runtime with idempotency on, while nats-server
//! (or the consumer) is SIGKILLed and restarted; afterwards every number
//! must have been handled exactly once. Run with `--nocapture` to see the
//! counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::backend::jetstream::{
    ConsumerDefaults, JetStreamConfig, JetStreamTransport, KvIdempotencyStore, StreamConfig,
};
use events::backend::nats::NatsConfig;
use events::consumer::{
    Claim, ClaimToken, Consumer, Context, HandlerError, IdempotencyStore, Summary,
};
use events::testing::NatsServer;
use events::{Bus, Event};
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;

use crate::nats::config;
use crate::runtime::Job;

/// Events in a run.
const EVENTS: u32 = 3000;
/// Server (or consumer) kills in a run.
const KILLS: u32 = 4;
/// No test may take longer than this, whatever goes wrong.
const BUDGET: Duration = Duration::from_secs(50);
/// How long the test keeps watching for late duplicates once all is handled.
const SETTLE: Duration = Duration::from_secs(3);
/// Handled ids are claimed this long by an instance before another may take
/// the claim over (its holder crashed).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times each event number was handled to completion.
#[derive(Clone)]
pub struct Tally(Arc<Vec<AtomicU32>>);

impl Tally {
    pub fn new(events: u32) -> Self {
        Tally(Arc::new((0..events).map(|_| AtomicU32::new(0)).collect()))
    }

    pub fn record(&self, n: u32) {
        self.0[n as usize].fetch_add(1, Ordering::SeqCst);
    }

    /// Numbers handled at least once.
    pub fn distinct(&self) -> u32 {
        self.0
            .iter()
            .filter(|c| c.load(Ordering::SeqCst) > 0)
            .count() as u32
    }

    /// Numbers never handled.
    pub fn lost(&self) -> Vec<u32> {
        (0..self.0.len() as u32)
            .filter(|&n| self.0[n as usize].load(Ordering::SeqCst) == 0)
            .collect()
    }

    /// Numbers handled more than once, with how often.
    pub fn duplicated(&self) -> Vec<(u32, u32)> {
        (0..self.0.len() as u32)
            .map(|n| (n, self.0[n as usize].load(Ordering::SeqCst)))
            .filter(|&(_, c)| c > 1)
            .collect()
    }

    /// Waits (bounded by `deadline`) until every number was handled, then
    /// `SETTLE` longer for late duplicates.
    pub async fn wait_all(&self, deadline: Instant) {
        while self.distinct() < self.0.len() as u32 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(SETTLE).await;
    }
}

/// What the producer did.
#[derive(Debug)]
pub struct Produced {
    pub published: u32,
    /// Publishes that failed as unavailable and were sent again.
    pub retries: u32,
    /// The longest time between two successful publishes.
    pub max_gap: Duration,
    pub elapsed: Duration,
}

/// Publishes `Job { n }` for every `n` below `events`, one at a time; a
/// publish failing as `Unavailable` is sent again (same event, same
/// `Nats-Msg-Id`) until `deadline`. `published` counts the acknowledged ones.
pub fn spawn_producer(
    bus: Bus,
    events: u32,
    published: Arc<AtomicU32>,
    deadline: Instant,
) -> JoinHandle<Produced> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = start;
        let mut max_gap = Duration::ZERO;
        let mut retries = 0;
        for n in 0..events {
            let event = bus.event(Job { n });
            loop {
                match bus.publish(&event).await {
                    Ok(()) => break,
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("event {n}: {e} (after {retries} retries in the run)"),
                }
            }
            let now = Instant::now();
            max_gap = max_gap.max(now - last);
            last = now;
            published.store(n + 1, Ordering::SeqCst);
        }
        Produced {
            published: events,
            retries,
            max_gap,
            elapsed: start.elapsed(),
        }
    })
}

/// A JetStream transport with a stream for the run (and its dead letters);
/// fast reconnects, publishes and requests bounded at 1–2 s, pulls of 1 s.
pub fn js_config(connection: NatsConfig, stream: StreamConfig) -> JetStreamConfig {
    JetStreamConfig::new(connection.request_timeout(Duration::from_secs(2)), stream)
        .ack_timeout(Duration::from_secs(1))
        .publish_attempts(3)
        .consumers(ConsumerDefaults::new().expires(Duration::from_secs(1)))
}

pub fn stream() -> StreamConfig {
    StreamConfig::new("FAULTS", ["faults.>", "deadletter.faults.>"])
}

pub async fn connect(config: JetStreamConfig) -> JetStreamTransport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match JetStreamTransport::connect(config.clone()).await {
            Ok(t) => return t,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

pub fn bus(transport: JetStreamTransport) -> Bus {
    Bus::builder(transport)
        .source("faults")
        .prefix("faults")
        .build()
        .unwrap()
}

/// Where the handler's effect goes: the tally and, in the consumer-kill
/// test, the ledger that commits it together with the "handled" mark.
#[derive(Clone)]
pub struct Effects {
    pub tally: Tally,
    pub ledger: Option<Ledger>,
}

/// The consumer under test: records each handled number. `pause` is spent
/// in the handler before the (synchronous) record, so a killed instance has
/// handlers in flight.
pub fn consumer(
    bus: &Bus,
    effects: Effects,
    store: impl IdempotencyStore,
    pause: Duration,
) -> Consumer<Effects> {
    Consumer::new(bus, "worker")
        .unwrap()
        .state(effects)
        .handle(move |e: Event<Job>, ctx: Context<Effects>| async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let effects = ctx.state();
            match &effects.ledger {
                Some(ledger) => ledger.commit(&format!("worker/{}", e.metadata.id()), || {
                    effects.tally.record(e.payload.n)
                }),
                None => effects.tally.record(e.payload.n),
            }
            Ok::<_, HandlerError>(())
        })
        .idempotency(store)
        .ack_wait(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_secs(5))
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    Pending(Instant),
    Done,
}

/// An idempotency store that outlives consumer instances and commits the
/// "handled" mark in one step with the handler's effect, as a database
/// transaction writing both would (the idempotent-consumer pattern). A
/// store written after the effect (a key-value bucket) cannot be exactly
/// once across a crash between the two: the effect happened, the mark did
/// not, and the event is handled again when its claim times out.
/// Claims a killed instance left pending are taken over after
/// `CLAIM_TIMEOUT`.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<HashMap<String, Entry>>>);

impl Ledger {
    /// Applies `effect` and marks `key` handled, atomically.
    pub fn commit(&self, key: &str, effect: impl FnOnce()) {
        let mut entries = self.0.lock().unwrap();
        effect();
        entries.insert(key.to_owned(), Entry::Done);
    }
}

impl IdempotencyStore for Ledger {
    fn claim(&self, key: &str) -> BoxFuture<'_, events::Result<Claim>> {
        let mut entries = self.0.lock().unwrap();
        let claim = match entries.get(key) {
            Some(Entry::Done) => Claim::Done,
            Some(Entry::Pending(at)) if at.elapsed() < CLAIM_TIMEOUT => Claim::InProgress,
            _ => {
                let at = Instant::now();
                entries.insert(key.to_owned(), Entry::Pending(at));
                // The claim's start names it: a later takeover has another.
                Claim::Acquired(ClaimToken::new(nanos_since_start(at)))
            }
        };
        Box::pin(async move { Ok(claim) })
    }

    fn complete(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, events::Result<()>> {
        let mut entries = self.0.lock().unwrap();
        match entries.get(key) {
            Some(Entry::Pending(at)) if nanos_since_start(*at) != token.get() => {}
            _ => {
                entries.insert(key.to_owned(), Entry::Done);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn release(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, events::Result<()>> {
        let mut entries = self.0.lock().unwrap();
        if let Some(Entry::Pending(at)) = entries.get(key) {
            if nanos_since_start(*at) == token.get() {
                entries.remove(key);
            }
        }
        Box::pin(async { Ok(()) })
    }
}

/// An instant as nanoseconds since the first call (a claim token).
fn nanos_since_start(at: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| at - Duration::from_secs(3600));
    u64::try_from(at.duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

pub async fn store(transport: &JetStreamTransport) -> KvIdempotencyStore {
    KvIdempotencyStore::open(transport, "faults_dedup", Duration::from_secs(600))
        .await
        .expect("opens the idempotency bucket")
        .claim_timeout(CLAIM_TIMEOUT)
}

type Running = (
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<events::Result<Summary>>,
);

pub fn start(consumer: Consumer<Effects>) -> Running {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(consumer.run(async move {
        let _ = rx.await;
    }));
    (tx, handle)
}

pub async fn stop((tx, handle): Running) -> Summary {
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the consumer stops in time")
        .unwrap()
        .expect("the consumer ran")
}

/// Asserts nothing was lost or handled twice, with the evidence if so.
pub fn assert_exactly_once(tally: &Tally, what: &str) {
    let lost = tally.lost();
    let duplicated = tally.duplicated();
    assert!(
        lost.is_empty() && duplicated.is_empty(),
        "{what}: {} lost (first: {:?}), {} handled more than once (first: {:?})",
        lost.len(),
        &lost[..lost.len().min(10)],
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_handled_exactly_once_while_the_server_is_killed_and_restarted() {
    let began = Instant::now();
    let deadline = began + BUDGET;
    let server = NatsServer::with_jetstream();
    let producer_bus = bus(connect(js_config(config(&server), stream())).await);
    let consumer_transport = connect(js_config(config(&server), stream())).await;
    let consumer_bus = bus(consumer_transport.clone());
    let tally = Tally::new(EVENTS);
    let effects = Effects {
        tally: tally.clone(),
        ledger: None,
    };
    let running = start(consumer(
        &consumer_bus,
        effects,
        store(&consumer_transport).await,
        Duration::ZERO,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let published = Arc::new(AtomicU32::new(0));
    let producer = spawn_producer(producer_bus.clone(), EVENTS, published.clone(), deadline);
    // The killer: SIGKILL the server each time another fifth of the run is
    // published and the consumer has made progress since the last restart
    // (so both are hit mid-run), leave it down 300 ms, restart it on the
    // same port and store. Returns the server, the kills and the longest
    // time the consumer took to handle events again after a restart.
    let killer = {
        let published = published.clone();
        let tally = tally.clone();
        tokio::task::spawn_blocking(move || {
            let mut server = server;
            let mut kills = 0;
            let mut recovery = Duration::ZERO;
            let mut restarted: Option<(Instant, u32)> = None;
            for k in 1..=KILLS {
                let threshold = EVENTS * k / (KILLS + 1);
                loop {
                    let handled = tally.distinct();
                    if let Some((at, before)) = restarted {
                        if handled > before {
                            recovery = recovery.max(at.elapsed());
                            restarted = None;
                        }
                    }
                    if (published.load(Ordering::SeqCst) >= threshold && restarted.is_none())
                        || Instant::now() >= deadline
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                assert!(Instant::now() < deadline, "the run stalled before kill {k}");
                // Let the consumer get some way past its first event again.
                std::thread::sleep(Duration::from_millis(50));
                server.kill();
                kills += 1;
                eprintln!(
                    "kill {k} at {:?}: published {}, handled {}",
                    began.elapsed(),
                    published.load(Ordering::SeqCst),
                    tally.distinct()
                );
                std::thread::sleep(Duration::from_millis(300));
                server.restart();
                restarted = Some((Instant::now(), tally.distinct()));
            }
            while let Some((at, before)) = restarted {
                if tally.distinct() > before || Instant::now() >= deadline {
                    recovery = recovery.max(at.elapsed());
                    restarted = None;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (server, kills, recovery)
        })
    };
    let (server, kills, recovery) = killer.await.unwrap();
    let produced = tokio::time::timeout_at(deadline.into(), producer)
        .await
        .expect("the producer finished within the budget")
        .unwrap();
    tally.wait_all(deadline).await;
    let summary = stop(running).await;
    let stored = {
        let mut s = consumer_transport
            .context()
            .get_stream("FAULTS")
            .await
            .unwrap();
        s.info().await.unwrap().state.messages
    };
    let lost = tally.lost().len();
    let duplicated = tally.duplicated().len();
    println!(
        "server kills: events published {}, kills survived {kills}, publish retries {}, \
         stored {stored}, handled {}, lost {lost}, duplicates handled {duplicated}, \
         duplicate deliveries acked {}, longest publish stall {:?} (publishing took {:?}), \
         longest consumer recovery after a restart {recovery:?}, run {:?}",
        produced.published,
        produced.retries,
        summary.handled,
        summary.duplicates,
        produced.max_gap,
        produced.elapsed,
        began.elapsed()
    );
    assert_eq!(kills, KILLS);
    assert_eq!(stored, u64::from(EVENTS), "every event stored exactly once");
    assert_exactly_once(&tally, "server kills");
    assert_eq!(summary.handled, u64::from(EVENTS));
    assert_eq!(summary.dead_lettered, 0);
    assert!(
        produced.max_gap >= Duration::from_millis(300),
        "the kills interrupted publishing (else the test proves nothing)"
    );
    producer_bus.close().await.unwrap();
    consumer_bus.close().await.unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_handled_exactly_once_while_the_consumer_is_killed_and_restarted() {
    let began = Instant::now();
    let deadline = began + BUDGET;
    let server = NatsServer::with_jetstream();
    let producer_bus = bus(connect(js_config(config(&server), stream())).await);
    let tally = Tally::new(EVENTS);
    let published = Arc::new(AtomicU32::new(0));
    let producer = spawn_producer(producer_bus.clone(), EVENTS, published.clone(), deadline);

    // Each instance is a process of its own: its own connection and store
    // handle. A kill aborts its run mid-flight (nothing settled, claims left
    // pending) and drops its connection.
    let ledger = Ledger::default();
    let mut kills = 0;
    let mut instance = None;
    for k in 1..=KILLS + 1 {
        let transport = connect(js_config(config(&server), stream())).await;
        let bus = bus(transport.clone());
        let effects = Effects {
            tally: tally.clone(),
            ledger: Some(ledger.clone()),
        };
        let running = start(consumer(
            &bus,
            effects,
            ledger.clone(),
            Duration::from_millis(2),
        ));
        if k > KILLS {
            instance = Some((running, bus));
            break;
        }
        let threshold = EVENTS * k / (KILLS + 1);
        while tally.distinct() < threshold && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(Instant::now() < deadline, "the run stalled before kill {k}");
        let (_stop, handle) = running;
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
        kills += 1;
        eprintln!(
            "consumer kill {k} at {:?}: published {}, handled {}",
            began.elapsed(),
            published.load(Ordering::SeqCst),
            tally.distinct()
        );
        drop(bus);
        drop(transport);
    }
    let produced = tokio::time::timeout_at(deadline.into(), producer)
        .await
        .expect("the producer finished within the budget")
        .unwrap();
    let (running, bus) = instance.unwrap();
    tally.wait_all(deadline).await;
    let summary = stop(running).await;
    let lost = tally.lost().len();
    let duplicated = tally.duplicated().len();
    println!(
        "consumer kills: events published {}, kills survived {kills}, lost {lost}, \
         duplicates handled {duplicated}, last instance handled {} and acked {} duplicate deliveries, run {:?}",
        produced.published,
        summary.handled,
        summary.duplicates,
        began.elapsed()
    );
    assert_eq!(kills, KILLS);
    assert_exactly_once(&tally, "consumer kills");
    assert_eq!(summary.dead_lettered, 0);
    producer_bus.close().await.unwrap();
    bus.close().await.unwrap();
}
