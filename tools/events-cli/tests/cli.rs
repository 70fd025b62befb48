//! The `events` binary end to end, against private nats-servers: each
//! command, and bad input that must fail with one line and a non-zero exit
//! without doing anything.

use std::process::{Output, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use events::backend::jetstream::{JetStreamConfig, JetStreamTransport, StreamConfig};
use events::backend::nats::NatsConfig;
use events::consumer::{Consumer, Context, HandlerError, RetryPolicy};
use events::testing::NatsServer;
use events::transport::{SubjectPattern, SubscribeOptions, Transport as _};
use events::wire::ContentMode;
use events::{Bus, Event, EventPayload};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

#[path = "cli/schema.rs"]
mod schema;

/// The longest any one command may take here.
const BOUND: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    total_cents: u64,
}

impl EventPayload for OrderPlaced {
    const TYPE: &'static str = "orders.order_placed";
}

/// The binary with only the given NATS settings (none of the caller's
/// `NATS_*` variables).
fn command(url: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_events"));
    for (name, _) in std::env::vars() {
        if name.starts_with("NATS_") || name.starts_with("EVENTS_") {
            command.env_remove(name);
        }
    }
    command
        .env("NATS_URL", url)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn run(url: &str, args: &[&str]) -> Output {
    tokio::time::timeout(BOUND, command(url, args).output())
        .await
        .unwrap_or_else(|_| panic!("events {args:?} did not finish within {BOUND:?}"))
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command that must succeed, and gives its stdout.
async fn ok(url: &str, args: &[&str]) -> String {
    let output = run(url, args).await;
    assert!(
        output.status.success(),
        "events {args:?} failed: {}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

/// Asserts `output` is a failure told in one `error:` line, not a panic.
fn assert_one_line_failure(output: &Output, args: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "events {args:?} succeeded");
    assert_ne!(output.status.code(), Some(101), "events {args:?} panicked");
    assert_eq!(stderr.lines().count(), 1, "events {args:?}: {stderr}");
    assert!(stderr.starts_with("error:"), "events {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "events {args:?}: {stderr}");
}

/// A JetStream server with the stream `EVENTS` storing events and dead
/// letters, and a bus on it.
async fn jetstream_setup() -> (NatsServer, Bus, jetstream::Context) {
    let server = NatsServer::with_jetstream();
    let config = JetStreamConfig::new(
        NatsConfig::new(server.url()),
        StreamConfig::new("EVENTS", ["events.>", "deadletter.>"]),
    );
    let transport = JetStreamTransport::connect(config).await.unwrap();
    let js = transport.context().clone();
    let bus = Bus::builder(transport).source("shop").build().unwrap();
    (server, bus, js)
}

async fn stored_count(js: &jetstream::Context, filter: &str) -> usize {
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    let info = stream.info().await.unwrap();
    if info.state.messages == 0 {
        return 0;
    }
    let mut subjects = stream.info_with_subjects(filter).await.unwrap();
    let mut total = 0;
    while let Some(entry) = subjects.next().await {
        total += entry.unwrap().1;
    }
    total
}

/// How many consumers the stream has.
async fn consumers(js: &jetstream::Context) -> usize {
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

fn order(id: &str, total_cents: u64) -> OrderPlaced {
    OrderPlaced {
        order_id: id.into(),
        total_cents,
    }
}

#[tokio::test]
async fn publish_goes_through_the_library_codec_and_waits_for_the_stream_ack() {
    let (server, bus, js) = jetstream_setup().await;
    let url = server.url();
    let file = server.dir().join("order.json");
    std::fs::write(
        &file,
        "{\n  \"order_id\": \"o-1\",\n  \"total_cents\": 1250\n}\n",
    )
    .unwrap();
    let data = format!("@{}", file.display());
    let mut typed = bus.subscribe::<OrderPlaced>().await.unwrap();

    let out = ok(
        &url,
        &[
            "publish",
            "orders.order_placed",
            "--data",
            &data,
            "--subject",
            "o-1",
            "--id",
            "evt-1",
        ],
    )
    .await;
    assert!(out.contains("stored in stream EVENTS"), "{out}");
    let out = ok(
        &url,
        &[
            "publish",
            "orders.order_placed",
            "-d",
            r#"{"order_id":"o-2","total_cents":990}"#,
            "--binary",
            "--id",
            "evt-2",
            "--correlation-id",
            "c-9",
        ],
    )
    .await;
    assert!(out.contains("id=evt-2"), "{out}");

    // A typed subscriber of the library reads both, whatever the mode.
    for (id, expected, key) in [
        ("evt-1", order("o-1", 1250), Some("o-1")),
        ("evt-2", order("o-2", 990), None),
    ] {
        let delivery = tokio::time::timeout(BOUND, typed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(delivery.metadata().id(), id);
        assert_eq!(delivery.metadata().subject(), key);
        assert_eq!(delivery.payload(), &expected);
        delivery.ack().await.unwrap();
    }
    let stream = js.get_stream("EVENTS").await.unwrap();
    let first = stream.get_raw_message(1).await.unwrap();
    let body = std::str::from_utf8(&first.payload).unwrap();
    assert!(
        body.contains(r#""data":{"order_id":"o-1","total_cents":1250}"#),
        "the data is written as serde writes it: {body}"
    );
    let second = stream.get_raw_message(2).await.unwrap();
    assert_eq!(
        second.headers.get("ce-specversion").map(|v| v.as_str()),
        Some("1.0"),
        "binary mode"
    );
    assert_eq!(
        second.headers.get("ce-correlationid").map(|v| v.as_str()),
        Some("c-9")
    );

    // The event id is the JetStream dedup id, as the library publishes it:
    // the same id again is stored once.
    ok(
        &url,
        &[
            "publish",
            "orders.order_placed",
            "-d",
            "{\"order_id\":\"o-1\",\"total_cents\":1250}",
            "--id",
            "evt-1",
        ],
    )
    .await;
    assert_eq!(stored_count(&js, "events.>").await, 2);
}

/// The stream `KEYED` on `events.>`, partitioned by key in 4; `None`
/// (the test skipped) on a server without partitions (2.9:
/// `scripts/test.sh` runs these tests on the newest release too).
async fn keyed_stream(url: &str) -> Option<JetStreamTransport> {
    let config = JetStreamConfig::new(
        NatsConfig::new(url),
        StreamConfig::new("KEYED", ["events.>"]).partitions(4),
    );
    match JetStreamTransport::connect(config).await {
        Ok(transport) => Some(transport),
        Err(e) if e.kind() == events::ErrorKind::Unsupported => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn publish_to_a_stream_partitioned_by_key_puts_the_key_in_the_subject() {
    let server = NatsServer::with_jetstream();
    let Some(transport) = keyed_stream(&server.url()).await else {
        return;
    };
    let js = transport.context().clone();
    let out = ok(
        &server.url(),
        &[
            "publish",
            "orders.order_placed",
            "--subject",
            "o-1",
            "--data",
            r#"{"order_id":"o-1","total_cents":5}"#,
        ],
    )
    .await;
    assert!(
        out.contains("on events.o-1.orders.order_placed (stored in stream KEYED)"),
        "{out}"
    );
    // Stored in the key's partition, where a consumer ordered by key reads it.
    let partition = events::wire::partition_of("o-1", 4);
    let stored = js
        .get_stream("KEYED")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(
        stored.subject.as_str(),
        format!("events.{partition}.o-1.orders.order_placed")
    );
    transport.close().await.unwrap();
}

#[tokio::test]
async fn tail_finds_events_by_type_on_a_stream_partitioned_by_key() {
    let server = NatsServer::with_jetstream();
    let url = server.url();
    let Some(transport) = keyed_stream(&url).await else {
        return;
    };
    let bus = Bus::builder(transport).source("shop").build().unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let event = bus
            .event(order(&format!("o-{i}"), i))
            .with_subject(format!("o-{i}"));
        bus.publish(&event).await.unwrap();
        ids.push(event.metadata.id().to_owned());
    }

    // Stored: by type, whatever the key and partition; shown under the
    // subject they were published on.
    let out = ok(
        &url,
        &[
            "tail",
            "orders.order_placed",
            "--stream",
            "--last",
            "2",
            "-n",
            "2",
            "--json",
        ],
    )
    .await;
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let shown: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(shown, [ids[1].as_str(), ids[2].as_str()], "{out}");
    for line in &lines {
        let key = line["subject"].as_str().unwrap();
        assert_eq!(
            line["nats_subject"],
            format!("events.{key}.orders.order_placed"),
            "{out}"
        );
    }

    // Live, on core NATS: the same type, any key.
    let mut child = command(&url, &["tail", "orders.*", "--count", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(BOUND, stderr.next_line())
        .await
        .expect("tail says it listens")
        .unwrap()
        .unwrap_or_default();
    assert!(line.starts_with("listening on events.*.orders.*"), "{line}");
    let live = bus.event(order("o-9", 9)).with_subject("o-9");
    bus.publish(&live).await.unwrap();
    let output = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("tail stops after --count events")
        .unwrap();
    assert!(output.status.success());
    let shown: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(shown["id"], live.metadata.id());
    bus.close().await.unwrap();
}

#[tokio::test]
async fn publish_without_a_stream_goes_to_core_nats() {
    let server = NatsServer::core();
    let url = server.url();
    let bus = Bus::builder(
        events::backend::nats::NatsTransport::connect(NatsConfig::new(&url))
            .await
            .unwrap(),
    )
    .build()
    .unwrap();
    let mut typed = bus.subscribe::<OrderPlaced>().await.unwrap();
    bus.transport().flush().await.unwrap();
    let out = ok(
        &url,
        &[
            "publish",
            "orders.order_placed",
            "-d",
            r#"{"order_id":"o-3","total_cents":5}"#,
        ],
    )
    .await;
    assert!(out.contains("core NATS"), "{out}");
    let status = ok(&url, &["status"]).await;
    assert!(status.contains("JetStream off"), "{status}");
    assert!(status.contains("nothing is stored"), "{status}");
    let delivery = tokio::time::timeout(BOUND, typed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(delivery.payload(), &order("o-3", 5));
}

#[tokio::test]
async fn tail_prints_live_events_of_both_content_modes() {
    let server = NatsServer::core();
    let url = server.url();
    let bus = Bus::builder(
        events::backend::nats::NatsTransport::connect(NatsConfig::new(&url))
            .await
            .unwrap(),
    )
    .source("orders")
    .build()
    .unwrap();
    let mut child = command(&url, &["tail", "orders.*", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(BOUND, stderr.next_line())
        .await
        .expect("tail says it listens")
        .unwrap()
        .unwrap_or_default();
    assert!(line.starts_with("listening on events.orders.*"), "{line}");

    let structured = bus.event(order("o-1", 100)).with_subject("o-1");
    let binary = bus.event(order("o-2", 200)).with_subject("o-2");
    bus.publish(&structured).await.unwrap();
    bus.publish_with(&binary, ContentMode::Binary)
        .await
        .unwrap();
    bus.transport().flush().await.unwrap();

    let output = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("tail stops after --count events")
        .unwrap();
    assert!(output.status.success());
    let out = stdout(&output);
    let blocks: Vec<&str> = out.split("\n\n").filter(|b| !b.trim().is_empty()).collect();
    assert_eq!(blocks.len(), 2, "{out}");
    assert!(
        blocks[0].starts_with("orders.order_placed.v1 (structured) on events.orders.order_placed"),
        "{out}"
    );
    assert!(blocks[0].contains(structured.metadata.id()), "{out}");
    assert!(
        blocks[0].contains(r#"{"order_id":"o-1","total_cents":100}"#),
        "{out}"
    );
    assert!(blocks[1].contains("(binary)"), "{out}");
    assert!(blocks[1].contains(binary.metadata.id()), "{out}");
    assert!(blocks[1].contains("subject      o-2"), "{out}");
    assert!(blocks[1].contains("source       orders"), "{out}");
}

#[tokio::test]
async fn tail_of_a_stream_shows_the_last_events_raw_and_leaves_durable_consumers_alone() {
    let (server, bus, js) = jetstream_setup().await;
    let url = server.url();
    let mut ids = Vec::new();
    for i in 0..5 {
        let event = bus.event(order(&format!("o-{i}"), i));
        bus.publish(&event).await.unwrap();
        ids.push(event.metadata.id().to_owned());
    }
    // A durable consumer with all five pending: tail must not take any.
    let stream = js.get_stream("EVENTS").await.unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("billing".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let out = ok(
        &url,
        &[
            "tail",
            "orders.order_placed",
            "--stream",
            "--last",
            "2",
            "-n",
            "2",
            "--json",
            "--raw",
        ],
    )
    .await;
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let shown: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(shown, [ids[3].as_str(), ids[4].as_str()]);
    assert_eq!(lines[1]["data"]["total_cents"], 4);
    assert_eq!(lines[1]["stream"], "EVENTS #5");
    assert!(lines[1]["raw"]["body"]
        .as_str()
        .unwrap()
        .contains("\"specversion\":\"1.0\""));

    let since = ok(
        &url,
        &[
            "tail", "orders.*", "--stream", "--since", "1h", "-n", "5", "--json",
        ],
    )
    .await;
    let all: Vec<String> = since
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].to_string())
        .collect();
    assert_eq!(all.len(), 5, "{since}");
    assert_eq!(all[0], format!("{:?}", ids[0]));

    let durable = stream.consumer_info("billing").await.unwrap();
    assert_eq!((durable.num_pending, durable.num_ack_pending), (5, 0));
    assert_eq!(consumers(&js).await, 1, "tail's reader is gone");
}

/// A billing consumer that rejects orders of nothing: dead letters for the
/// CLI to find.
async fn dead_letters_setup() -> (NatsServer, Bus, jetstream::Context, Vec<String>) {
    let (server, bus, js) = jetstream_setup().await;
    async fn bill(event: Event<OrderPlaced>, _: Context<()>) -> Result<(), HandlerError> {
        if event.payload.total_cents == 0 {
            return Err(HandlerError::reject("an order of nothing"));
        }
        Ok(())
    }
    let running = Consumer::new(&bus, "billing")
        .unwrap()
        .handle(bill)
        .retry(RetryPolicy::none())
        .start()
        .await
        .unwrap();
    let mut dead = Vec::new();
    for (id, total) in [("o-1", 0), ("o-2", 500), ("o-3", 0)] {
        let event = bus.event(order(id, total)).with_subject(id);
        bus.publish(&event).await.unwrap();
        if total == 0 {
            dead.push(event.metadata.id().to_owned());
        }
    }
    let mut letters = 0;
    let deadline = tokio::time::Instant::now() + BOUND;
    while letters < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered within the bound"
        );
        // Waits on the server's answer, not on a timer.
        letters = stored_count(&js, "deadletter.>").await;
        tokio::task::yield_now().await;
    }
    running.shutdown().await.unwrap();
    (server, bus, js, dead)
}

#[tokio::test]
async fn dead_letters_are_listed_and_shown_without_being_consumed() {
    let (server, _bus, js, dead) = dead_letters_setup().await;
    let url = server.url();
    for _ in 0..2 {
        let out = ok(&url, &["dead-letters", "list"]).await;
        assert!(out.contains("2 dead letters"), "{out}");
        assert!(out.contains(&dead[0]) && out.contains(&dead[1]), "{out}");
        for id in &dead {
            let row = out.lines().find(|l| l.contains(id.as_str())).unwrap();
            let columns: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(
                columns[1..6],
                ["EVENTS", columns[2], "billing", "rejected", "1"]
            );
            assert!(row.ends_with("an order of nothing"), "{row}");
        }
    }
    assert_eq!(stored_count(&js, "deadletter.>").await, 2);
    assert_eq!(consumers(&js).await, 1, "only the billing consumer is left");

    let out = ok(&url, &["dead-letters", "list", "--id", &dead[1], "--json"]).await;
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["id"], dead[1].as_str());
    assert_eq!(line["reason"], "rejected");
    assert_eq!(line["consumer"], "billing");
    let sequence = line["dead_letter"]
        .as_str()
        .unwrap()
        .trim_start_matches('#')
        .split(' ')
        .next()
        .unwrap()
        .to_owned();

    let out = ok(&url, &["dead-letters", "show", &sequence]).await;
    assert!(
        out.starts_with("orders.order_placed.v1 (structured)"),
        "{out}"
    );
    assert!(out.contains("subject      o-3"), "{out}");
    assert!(out.contains("reason       rejected"), "{out}");
    assert!(out.contains("attempts     1"), "{out}");
    assert!(
        out.contains(r#"{"order_id":"o-3","total_cents":0}"#),
        "{out}"
    );

    let none = ok(&url, &["dead-letters", "list", "--consumer", "shipping"]).await;
    assert!(none.contains("0 dead letters"), "{none}");
    let by_type = ok(
        &url,
        &[
            "dead-letters",
            "list",
            "--type",
            "orders.order_placed.v1",
            "--reason",
            "rejected",
        ],
    )
    .await;
    assert!(by_type.contains("2 dead letters"), "{by_type}");
}

#[tokio::test]
async fn replay_republishes_the_original_and_only_then_removes_the_letter() {
    let (server, bus, js, dead) = dead_letters_setup().await;
    let url = server.url();
    let mut watch = bus
        .transport()
        .subscribe(SubscribeOptions::new(
            SubjectPattern::parse("events.orders.order_placed").unwrap(),
        ))
        .await
        .unwrap();
    let before = stored_count(&js, "events.>").await;

    let out = ok(&url, &["dead-letters", "replay", "--id", &dead[0]]).await;
    assert!(out.contains("replayed 1"), "{out}");
    assert!(out.contains("stored in stream EVENTS"), "{out}");
    assert_eq!(stored_count(&js, "events.>").await, before + 1);
    assert_eq!(stored_count(&js, "deadletter.>").await, 1);
    let left = ok(&url, &["dead-letters", "list"]).await;
    assert!(
        !left.contains(&dead[0]) && left.contains(&dead[1]),
        "{left}"
    );

    // The republished message is the original event, id and all (the
    // watch starts at new messages: the replay is the first with its id).
    let mut found = false;
    while let Ok(Some(delivery)) = tokio::time::timeout(BOUND, watch.next()).await {
        let delivery = delivery.unwrap();
        let event = events::wire::decode(delivery.message()).unwrap();
        found = event.metadata.id() == dead[0];
        delivery.ack().await.unwrap();
        if found {
            break;
        }
    }
    assert!(found, "the replayed event reached the subject");

    let none = run(&url, &["dead-letters", "replay"]).await;
    assert_one_line_failure(&none, &["dead-letters", "replay"]);
    assert_eq!(stored_count(&js, "deadletter.>").await, 1);
}

#[tokio::test]
async fn purge_asks_for_yes_then_removes_only_what_the_filter_picks() {
    let (server, _bus, js, dead) = dead_letters_setup().await;
    let url = server.url();
    let args = ["dead-letters", "purge", "--id", dead[0].as_str()];
    let refused = run(&url, &args).await;
    assert_one_line_failure(&refused, &args);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(stored_count(&js, "deadletter.>").await, 2);

    let out = ok(&url, &["dead-letters", "purge", "--id", &dead[0], "--yes"]).await;
    assert!(out.contains("purged 1 dead letter"), "{out}");
    let left = ok(&url, &["dead-letters", "list"]).await;
    assert!(
        !left.contains(&dead[0]) && left.contains(&dead[1]),
        "{left}"
    );

    ok(&url, &["dead-letters", "purge", "--all", "--yes"]).await;
    assert_eq!(stored_count(&js, "deadletter.>").await, 0);
    assert!(stored_count(&js, "events.>").await >= 3, "events are kept");
}

#[tokio::test]
async fn status_shows_server_streams_consumers_and_the_dead_letter_backlog() {
    let (server, _bus, _js, _dead) = dead_letters_setup().await;
    let out = ok(&server.url(), &["status"]).await;
    let version = std::process::Command::new(
        std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into()),
    )
    .arg("--version")
    .output()
    .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version.trim().rsplit('v').next().unwrap();
    assert!(out.contains(&format!("nats-server {version}")), "{out}");
    assert!(out.contains("JetStream on"), "{out}");
    assert!(
        out.contains("JetStream (EVENTS) supports: redelivery on nack"),
        "{out}"
    );
    assert!(out.contains("core NATS     supports:"), "{out}");
    let consumer = out
        .lines()
        .find(|l| l.starts_with("EVENTS  billing"))
        .unwrap_or_else(|| panic!("the billing consumer is listed: {out}"));
    let numbers: Vec<&str> = consumer.split_whitespace().skip(3).collect();
    // pending, ack pending, redelivered, waiting, last delivered: all
    // five events seen, none pending (the dead letters included).
    assert_eq!(&numbers[..3], ["0", "0", "0"], "{consumer}");
    let backlog = out
        .lines()
        .find(|l| l.contains("deadletter.events.billing"))
        .unwrap_or_else(|| panic!("the backlog is listed: {out}"));
    assert!(backlog.trim_end().ends_with(" 2"), "{backlog}");
}

#[tokio::test]
async fn bad_input_fails_in_one_line_without_acting() {
    let (server, _bus, js) = jetstream_setup().await;
    let url = server.url();
    let unreachable = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("nats://{}", free.local_addr().unwrap())
    };
    let cases: [&[&str]; 11] = [
        &["publish", "orders.order_placed", "--data", "{\"order_id\":"],
        &[
            "publish",
            "orders.order_placed",
            "--data",
            "@/no/such/file.json",
        ],
        &["publish", "orders..placed", "--data", "{}"],
        &[
            "publish",
            "orders.order_placed",
            "--data",
            "{}",
            "--version",
            "0",
        ],
        &["publish", "orders.order_placed", "--data", "{}", "--bogus"],
        &["tail", "orders.>.x"],
        &["tail", "orders.*", "--last", "3"],
        &["dead-letters", "list", "--reason", "tired"],
        &["dead-letters", "purge"],
        &["--prefix", "bad prefix", "status"],
        &["schema", "export"],
    ];
    for args in cases {
        let output = run(&url, args).await;
        assert_one_line_failure(&output, args);
    }
    let output = run(&unreachable, &["status"]).await;
    assert_one_line_failure(&output, &["status"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("unavailable"));
    assert_eq!(stored_count(&js, ">").await, 0, "nothing was published");
}
