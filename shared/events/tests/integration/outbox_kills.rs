//! Outbox and inbox under process kills and a PostgreSQL restart. The
//! killed processes are children: this test binary run again with one
//! ignored test selected (`child_producer`, `child_consumer`) and its
//! settings in `EVENTS_OUTBOX_CHILD_*` variables, so SIGKILL takes a real
//! process with its connections and open transactions. The PostgreSQL
//! that is restarted is a private one (initdb into a temporary directory,
//! its own port), never the machine's. Run with `--nocapture` for counts.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::consumer::{Consumer, Context, HandlerError};
use events::outbox::{Inbox, Tx};
use events::testing::NatsServer;
use events::Event;
use sqlx::AssertSqlSafe;

use crate::outbox::{
    bus, connect, database_url, js_config, produce, stored, stored_count, verdict, wait_drained,
    Step, TestSchema,
};

/// Business transactions (or events) in a kill run.
const RUN: i64 = 3000;
/// Kills in a run.
const KILLS: u32 = 4;
/// No run may take longer than this, whatever goes wrong.
const BUDGET: Duration = Duration::from_secs(120);
const KEYS: i64 = 50;

const ROLE: &str = "EVENTS_OUTBOX_CHILD";
const NATS: &str = "EVENTS_OUTBOX_CHILD_NATS_URL";
const DB: &str = "EVENTS_OUTBOX_CHILD_DATABASE_URL";
const SCHEMA: &str = "EVENTS_OUTBOX_CHILD_SCHEMA";

/// A child process of this test binary, running one ignored test.
struct ChildProcess {
    child: Child,
    lines: Option<std::thread::JoinHandle<()>>,
}

impl ChildProcess {
    /// Starts `test` in a child with `vars`; each stdout line starting with
    /// `@` goes to `on_line` (without the `@`).
    fn start(
        test: &str,
        vars: &[(&str, String)],
        on_line: impl Fn(&str) + Send + 'static,
    ) -> ChildProcess {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("starts the child");
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(rest) = line.strip_prefix('@') {
                    on_line(rest);
                }
            }
        });
        ChildProcess {
            child,
            lines: Some(lines),
        }
    }

    /// SIGKILL, then reap.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(lines) = self.lines.take() {
            let _ = lines.join();
        }
    }

    /// Waits (bounded) for the child to exit by itself: whether it succeeded.
    fn wait(mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded by `deadline`) until `progress` reaches `target`.
async fn wait_for(what: &str, deadline: Instant, target: i64, progress: impl AsyncFn() -> i64) {
    loop {
        let now = progress().await;
        if now >= target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: stalled at {now} of {target}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn count(db: &TestSchema, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.replace("{s}", &db.name)))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The producer: business transactions from where the last one stopped,
/// each printed (`@committed n`) right after its commit, and a relay in the
/// same process. Exits once all are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the producer-kill test"]
async fn child_producer() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    assert_eq!(role, "producer");
    let server_url = std::env::var(NATS).unwrap();
    let db =
        TestSchema::existing(&std::env::var(DB).unwrap(), &std::env::var(SCHEMA).unwrap()).await;
    let transport = connect(js_config_url(&server_url)).await;
    let bus = bus(transport.clone());
    let outbox = db.outbox(&bus);
    let relay = outbox.relay().start();
    let start = count(&db, "SELECT coalesce(max(n) + 1, 0) FROM {s}.business").await;
    for n in start..RUN {
        db.transact(&outbox, &bus, n, &format!("k{}", n % KEYS))
            .await
            .unwrap();
        println!("@committed {n}");
    }
    wait_drained(&transport, &outbox, 0, BUDGET).await;
    relay.shutdown().await.unwrap();
}

fn js_config_url(url: &str) -> events::backend::jetstream::JetStreamConfig {
    use events::backend::jetstream::{JetStreamConfig, StreamConfig};
    use events::backend::nats::{NatsConfig, ReconnectPolicy};
    let connection = NatsConfig::new(url)
        .reconnect(
            ReconnectPolicy::new()
                .min_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(200)),
        )
        .publish_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(2));
    JetStreamConfig::new(
        connection,
        StreamConfig::new("OUTBOX", ["outbox.>", "deadletter.outbox.>"]),
    )
    .ack_timeout(Duration::from_secs(1))
    .publish_attempts(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_killed_between_commit_and_publish_4_times_loses_nothing_and_stores_each_once_in_commit_order(
) {
    let began = Instant::now();
    let deadline = began + BUDGET;
    let db = TestSchema::new("producer_kill").await;
    let server = NatsServer::with_jetstream();
    let transport = connect(js_config(&server)).await;
    let outbox = db.outbox(&bus(transport.clone()));
    outbox.migrate().await.unwrap();
    let vars = vec![
        (ROLE, "producer".to_owned()),
        (NATS, server.url()),
        (DB, database_url()),
        (SCHEMA, db.name.clone()),
    ];
    let committed = Arc::new(AtomicU64::new(0));
    let start = |committed: Arc<AtomicU64>| {
        ChildProcess::start("outbox_kills::child_producer", &vars, move |line| {
            if let Some(n) = line.strip_prefix("committed ") {
                committed.store(n.parse::<u64>().unwrap() + 1, Ordering::SeqCst);
            }
        })
    };
    let mut child = start(committed.clone());
    let mut pending_at_kills = Vec::new();
    for k in 1..=KILLS {
        let threshold = RUN as u64 * u64::from(k) / u64::from(KILLS + 1);
        while committed.load(Ordering::SeqCst) < threshold {
            assert!(
                Instant::now() < deadline,
                "the producer stalled before kill {k}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Right after a commit was reported: its event is committed, and
        // (the relay takes milliseconds) most likely not published yet.
        child.kill();
        let pending = count(&db, "SELECT count(*) FROM {s}.events_outbox").await;
        let at = committed.load(Ordering::SeqCst);
        eprintln!(
            "kill {k} at {:?}: {at} committed, {pending} not yet published",
            began.elapsed()
        );
        pending_at_kills.push(pending);
        child = start(committed.clone());
    }
    let finished = tokio::task::spawn_blocking(move || child.wait(BUDGET))
        .await
        .unwrap();
    assert!(finished, "the last producer finished its run and drained");
    wait_drained(&transport, &outbox, RUN as u64, Duration::from_secs(10)).await;

    let verdict = verdict(&db.business().await, &stored(&transport).await);
    println!(
        "producer kills: {KILLS} SIGKILLs, committed but unpublished at each kill {pending_at_kills:?}; \
         {verdict:?}; {:?}",
        began.elapsed()
    );
    verdict.assert_exact("producer kills");
    assert!(
        pending_at_kills.iter().any(|&p| p > 0),
        "at least one kill fell between a commit and its publish"
    );
}

/// The consumer: the inbox-wrapped handler writes one effect row per event
/// (no unique constraint: a second effect would be a second row), holding
/// its transaction open a little so kills land mid-handling. No
/// idempotency store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the consumer-kill test"]
async fn child_consumer() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    assert_eq!(role, "consumer");
    let server_url = std::env::var(NATS).unwrap();
    let db =
        TestSchema::existing(&std::env::var(DB).unwrap(), &std::env::var(SCHEMA).unwrap()).await;
    let transport = connect(js_config_url(&server_url)).await;
    let bus = bus(transport);
    let inbox = Inbox::new(db.pool.clone()).schema(db.name.clone()).unwrap();
    let effects = format!("INSERT INTO {}.effects (n) VALUES ($1)", db.name);
    let handler = move |event: Event<Step>, _ctx: Context<()>, mut tx: Tx| {
        let effects = effects.clone();
        async move {
            sqlx::query(AssertSqlSafe(effects))
                .bind(event.payload.n)
                .execute(&mut *tx)
                .await?;
            tokio::time::sleep(Duration::from_millis(3)).await;
            Ok::<_, HandlerError>(())
        }
    };
    let running = Consumer::new(&bus, "inventory")
        .unwrap()
        .handle(inbox.handler(handler))
        .concurrency(16)
        .ack_wait(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    println!("@started");
    // Runs until killed.
    std::future::pending::<()>().await;
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_consumer_killed_mid_handling_4_times_applies_every_effect_exactly_once() {
    let began = Instant::now();
    let deadline = began + BUDGET;
    let db = TestSchema::new("inbox_kill").await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {}.effects (n bigint NOT NULL)",
        db.name
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let inbox = Inbox::new(db.pool.clone()).schema(db.name.clone()).unwrap();
    inbox.migrate().await.unwrap();
    let server = NatsServer::with_jetstream();
    let transport = connect(js_config(&server)).await;
    let bus = bus(transport.clone());
    let events: Vec<Event<Step>> = (0..RUN)
        .map(|n| {
            bus.event(Step {
                key: format!("k{}", n % KEYS),
                seq: n,
                n,
            })
        })
        .collect();
    for chunk in events.chunks(500) {
        for result in bus.publish_all(chunk).await {
            result.unwrap();
        }
    }
    let vars = vec![
        (ROLE, "consumer".to_owned()),
        (NATS, server.url()),
        (DB, database_url()),
        (SCHEMA, db.name.clone()),
    ];
    let start = || ChildProcess::start("outbox_kills::child_consumer", &vars, |_| {});
    let applied = || count(&db, "SELECT count(DISTINCT n) FROM {s}.effects");
    let mut child = start();
    let mut open_at_kills = Vec::new();
    for k in 1..=KILLS {
        let threshold = RUN * i64::from(k) / i64::from(KILLS + 1);
        wait_for("the consumer", deadline, threshold, applied).await;
        // Inbox transactions open right now: handlings cut short by the kill.
        let open = count(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' \
             AND query LIKE 'INSERT INTO {s}.effects%'",
        )
        .await;
        child.kill();
        eprintln!(
            "kill {k} at {:?}: {} applied, {open} transactions open",
            began.elapsed(),
            applied().await
        );
        open_at_kills.push(open);
        child = start();
    }
    wait_for("the consumer", deadline, RUN, applied).await;
    // Everything acknowledged: nothing left to redeliver that could add a
    // second effect.
    let consumer_state = loop {
        let stream = transport.context().get_stream("OUTBOX").await.unwrap();
        let names: Vec<String> = {
            use futures_util::TryStreamExt as _;
            stream.consumer_names().try_collect().await.unwrap()
        };
        let mut idle = true;
        let mut state = Vec::new();
        for name in names {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(&name).await.unwrap();
            let info = consumer.info().await.unwrap();
            idle &= info.num_pending == 0 && info.num_ack_pending == 0;
            state.push((info.num_pending, info.num_ack_pending));
        }
        if idle {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer never settled: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill();

    let rows = count(&db, "SELECT count(*) FROM {s}.effects").await;
    let distinct = applied().await;
    let marks = count(&db, "SELECT count(*) FROM {s}.events_inbox").await;
    let stored = stored_count(&transport).await;
    println!(
        "inbox consumer kills: {KILLS} SIGKILLs, inbox transactions open at each kill {open_at_kills:?}; \
         events {stored}, effect rows {rows}, distinct {distinct}, marks {marks}, consumer {consumer_state:?}; {:?}",
        began.elapsed()
    );
    assert_eq!(stored, RUN as u64);
    assert_eq!(distinct, RUN, "every event applied");
    assert_eq!(rows, RUN, "no event applied twice");
    assert_eq!(marks, RUN);
    assert!(
        open_at_kills.iter().any(|&o| o > 0),
        "at least one kill cut handlings short"
    );
}

/// A private PostgreSQL: initdb into a temporary directory, on a free
/// port, run as the `postgres` user when the tests run as root (initdb
/// refuses root). Stopped and removed on drop.
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::env::var_os("EVENTS_TEST_PG_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                    .ok()?
                    .filter_map(|e| Some(e.ok()?.path().join("bin")))
                    .filter(|p| p.join("initdb").exists())
                    .collect();
                found.sort();
                found.pop()
            })
            .expect("PostgreSQL server binaries (initdb, pg_ctl): set EVENTS_TEST_PG_BIN");
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "events-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Below the kernel's ephemeral range (32768 and up here): the
        // port is free while the server restarts, and a port from
        // `bind(0)` (every private nats-server of the suite) or an outgoing
        // connection could otherwise take it (seen once in a full run:
        // the restarted server never came back).
        let start = 20_000 + (std::process::id() % 10_000) as u16;
        let port = (0..10_000u16)
            .map(|i| 20_000 + (start - 20_000 + i) % 12_000)
            .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
            .expect("a free port below the ephemeral range");
        let pg = PrivatePostgres { dir, port, bin };
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pg.dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown the data directory to postgres");
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.pg_start();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .output()
            .expect("runs the PostgreSQL tool");
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// An immediate stop (what a crash leaves: recovery at the next start),
    /// `down` of outage, and a start on the same port and data.
    pub fn restart(&self, down: Duration) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        std::thread::sleep(down);
        self.pg_start();
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data();
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

// Once run alone (ignored in the parallel suite): beside the suite's load
// its producers failed for 60 s after a restart. The cause was the test's
// own retry: a COMMIT that reached the server just before the stop lost
// its reply, and the producer retried the transaction, whose business row
// then collided with the committed one for good (the error chain showed
// the unique violation; reproduced alone under three busy loops in 1 run
// of 6). A busier machine reads the reply later, which widens the window.
// The producers now ask whether a failed transaction committed after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_the_relay_it_resumes_by_itself_and_nothing_is_lost() {
    const EVENTS: i64 = 2000;
    const RESTARTS: i64 = 2;
    let began = Instant::now();
    let pg = PrivatePostgres::start();
    let db = Arc::new(TestSchema::on(&pg.url(), "pg_restart").await);
    let server = NatsServer::with_jetstream();
    let transport = connect(js_config(&server)).await;
    let bus = bus(transport.clone());
    let outbox = db.outbox(&bus);
    outbox.migrate().await.unwrap();
    let relay = outbox.relay().start();

    let done = Arc::new(AtomicU64::new(0));
    let producer = produce(
        db.clone(),
        outbox.clone(),
        bus.clone(),
        EVENTS,
        KEYS,
        2,
        done.clone(),
    );
    let mut published_before = Vec::new();
    for r in 1..=RESTARTS {
        let threshold = (EVENTS * r / (RESTARTS + 1)) as u64;
        let deadline = Instant::now() + BUDGET;
        while done.load(Ordering::SeqCst) < threshold {
            assert!(
                Instant::now() < deadline,
                "producers stalled before restart {r}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        published_before.push(stored_count(&transport).await);
        // Blocking tools; the relay and producers go on meanwhile.
        tokio::task::block_in_place(|| pg.restart(Duration::from_millis(500)));
        eprintln!(
            "restart {r} at {:?}: {} committed",
            began.elapsed(),
            done.load(Ordering::SeqCst)
        );
    }
    let failures = tokio::time::timeout(BUDGET, producer)
        .await
        .expect("producers finish")
        .unwrap();
    wait_drained(&transport, &outbox, EVENTS as u64, Duration::from_secs(60)).await;
    let summary = relay.shutdown().await.unwrap();

    let verdict = verdict(&db.business().await, &stored(&transport).await);
    println!(
        "postgres restarts: {RESTARTS} immediate stops under the relay (stored before each {published_before:?}), \
         transactions retried by the producers {failures}; {verdict:?}; relay {summary:?} (the same relay \
         throughout); {:?}",
        began.elapsed()
    );
    verdict.assert_exact("postgres restarts");
}
