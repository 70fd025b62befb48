//! The core NATS transport against private `nats-server` processes (never
//! the machine's shared server on 4222).

use std::sync::Arc;
use std::time::{Duration, Instant};

use events::backend::nats::{ConnectionState, NatsConfig, NatsTransport, ReconnectPolicy};
use events::testing::NatsServer;
use events::transport::{
    Capabilities, Message, Subject, SubscribeOptions, Subscription, Transport,
};
use events::wire::ContentMode;
use events::{Bus, ErrorKind, EventPayload};
use futures_util::future::BoxFuture;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::conformance::unique_prefix;
use crate::support::Ping;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// A transport that owns the server it talks to, so a conformance case that
/// only sees `Arc<dyn Transport>` still stops its server when it is done.
#[derive(Debug)]
pub struct WithServer<T> {
    pub transport: T,
    pub _server: NatsServer,
}

impl<T: Transport> Transport for WithServer<T> {
    fn name(&self) -> &'static str {
        self.transport.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.transport.capabilities()
    }
    fn publish(&self, message: Message) -> BoxFuture<'_, events::Result<()>> {
        self.transport.publish(message)
    }
    fn publish_batch(&self, messages: Vec<Message>) -> BoxFuture<'_, Vec<events::Result<()>>> {
        self.transport.publish_batch(messages)
    }
    fn subscribe(&self, options: SubscribeOptions) -> BoxFuture<'_, events::Result<Subscription>> {
        self.transport.subscribe(options)
    }
    fn flush(&self) -> BoxFuture<'_, events::Result<()>> {
        self.transport.flush()
    }
    fn close(&self) -> BoxFuture<'_, events::Result<()>> {
        self.transport.close()
    }
    fn check_subject(&self, subject: &Subject) -> BoxFuture<'_, events::Result<()>> {
        self.transport.check_subject(subject)
    }
}

/// Settings for a test: reconnect fast, give up publishing after 1 s.
pub fn config(server: &NatsServer) -> NatsConfig {
    NatsConfig::new(server.url())
        .name("events-tests")
        .reconnect(
            ReconnectPolicy::new()
                .min_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(200)),
        )
        .publish_timeout(Duration::from_secs(1))
}

async fn transport(server: &NatsServer) -> NatsTransport {
    NatsTransport::connect(config(server))
        .await
        .expect("connects to the private server")
}

fn bus(transport: NatsTransport) -> Bus {
    Bus::builder(transport)
        .source("nats-tests")
        .prefix(unique_prefix())
        .build()
        .unwrap()
}

async fn wait_state(transport: &NatsTransport, wanted: ConnectionState) {
    let mut rx = transport.watch_state();
    tokio::time::timeout(WAIT, rx.wait_for(|s| *s == wanted))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "state {wanted:?} within {WAIT:?}, status {:?}",
                transport.status()
            )
        })
        .unwrap();
}

pub async fn suite_transport() -> Arc<dyn Transport> {
    let server = NatsServer::core();
    let transport = transport(&server).await;
    Arc::new(WithServer {
        transport,
        _server: server,
    }) as Arc<dyn Transport>
}

crate::conformance_suite!(core_nats_conformance, suite_transport);
crate::runtime_suite!(core_nats_runtime, suite_transport);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pong {
    seq: u64,
}
impl EventPayload for Pong {
    const TYPE: &'static str = "test.pong";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Audit {
    seq: u64,
}
impl EventPayload for Audit {
    const TYPE: &'static str = "audit.entry";
}

#[tokio::test]
async fn capabilities_are_declared_honestly() {
    let server = NatsServer::core();
    let t = transport(&server).await;
    let caps = t.capabilities();
    assert!(caps.queue_groups && caps.wildcards && caps.ordered_per_publisher);
    assert!(
        !caps.redelivery
            && !caps.delayed_redelivery
            && !caps.durable
            && !caps.persistent
            && !caps.publish_dedup
    );
    assert_eq!(
        caps.max_message_size,
        1024 * 1024,
        "the server's default max_payload"
    );
    let pattern = events::transport::SubjectPattern::parse("a.b").unwrap();
    let err = t
        .subscribe(SubscribeOptions::new(pattern).durable_name("d").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    t.close().await.unwrap();
}

#[tokio::test]
async fn a_fresh_subscription_sees_a_publish_another_connection_makes_right_after() {
    let server = NatsServer::core();
    let publisher = async_nats::connect(server.url()).await.unwrap();
    // `subscribe` returning means the server has the SUB; a flush alone
    // (bytes out of the socket) lost about a third of these first events.
    for round in 0..20 {
        let t = transport(&server).await;
        let subject = format!("fresh.{round}");
        let mut sub = t
            .subscribe(SubscribeOptions::new(
                events::transport::SubjectPattern::parse(&subject).unwrap(),
            ))
            .await
            .unwrap();
        publisher.publish(subject, "first".into()).await.unwrap();
        publisher.flush().await.unwrap();
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the first event was lost"))
            .unwrap()
            .unwrap();
        assert_eq!(&d.message().payload[..], b"first");
        t.close().await.unwrap();
    }
}

#[tokio::test]
async fn binary_mode_headers_seen_by_a_plain_nats_client_follow_the_cloudevents_binding() {
    let server = NatsServer::core();
    let t = transport(&server).await;
    let raw = async_nats::connect(server.url()).await.unwrap();
    let bus = bus(t);
    let mut plain = raw
        .subscribe(format!("{}.>", bus.codec().prefix()))
        .await
        .unwrap();
    // A round trip (not `flush`, which only empties the socket buffer): the
    // server has the SUB before the bus publishes from its own connection.
    let nobody = raw.new_inbox();
    let probe = raw.request(nobody, Vec::new().into()).await.unwrap_err();
    assert_eq!(probe.kind(), async_nats::RequestErrorKind::NoResponders);

    let event = bus
        .event(Ping {
            seq: 1,
            note: "n".into(),
        })
        .with_subject("Euro € 😀")
        .with_correlation_id("c 1%")
        .with_extension("tenant", "acme")
        .unwrap();
    bus.publish_with(&event, ContentMode::Binary).await.unwrap();
    bus.flush().await.unwrap();

    let m = tokio::time::timeout(WAIT, plain.next())
        .await
        .unwrap()
        .unwrap();
    let headers = m.headers.expect("binary mode sends headers");
    let mut ce = Vec::new();
    for (name, values) in headers.iter() {
        let name = name.to_string();
        if name.to_ascii_lowercase().starts_with("ce-") {
            assert_eq!(
                name,
                name.to_ascii_lowercase(),
                "ce- header names are lowercase"
            );
            for v in values {
                let v = v.as_str();
                assert!(
                    v.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'),
                    "{name}: {v:?} must be percent-encoded printable ASCII without space or quote"
                );
                assert!(
                    !v.contains('%')
                        || v.split('%')
                            .skip(1)
                            .all(|s| s.len() >= 2 && s[..2].chars().all(|c| c.is_ascii_hexdigit())),
                    "{name}: {v:?}"
                );
            }
            ce.push(name);
        }
    }
    let get = |n: &str| headers.get(n).map(|v| v.as_str().to_owned());
    assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(get("ce-id").as_deref(), Some(event.metadata.id()));
    assert_eq!(get("ce-source").as_deref(), Some("nats-tests"));
    assert_eq!(get("ce-type").as_deref(), Some("test.ping.v1"));
    assert_eq!(
        get("ce-subject").as_deref(),
        Some("Euro%20%E2%82%AC%20%F0%9F%98%80")
    );
    assert_eq!(get("ce-correlationid").as_deref(), Some("c%201%25"));
    assert_eq!(get("ce-tenant").as_deref(), Some("acme"));
    let time = get("ce-time").expect("ce-time");
    chrono::DateTime::parse_from_rfc3339(&time.replace("%3A", ":")).expect("ce-time is RFC 3339");
    let ct = get("ce-datacontenttype").expect("ce-datacontenttype");
    assert_eq!(
        get("content-type").or_else(|| get("Content-Type")),
        Some(ct)
    );
    assert_eq!(
        serde_json::from_slice::<Ping>(&m.payload).unwrap().note,
        "n",
        "body is the payload untouched"
    );
    assert!(ce.len() >= 7, "{ce:?}");
    bus.close().await.unwrap();
}

#[tokio::test]
async fn pattern_subscriptions_match_nats_wildcards() {
    let server = NatsServer::core();
    let bus = bus(transport(&server).await);
    let mut test_star = bus.subscribe_raw("test.*").await.unwrap();
    let mut all = bus.subscribe_raw(">").await.unwrap();
    let mut pongs = bus.subscribe::<Pong>().await.unwrap();

    bus.publish(&bus.event(Ping {
        seq: 1,
        note: String::new(),
    }))
    .await
    .unwrap();
    bus.publish(&bus.event(Pong { seq: 2 })).await.unwrap();
    bus.publish(&bus.event(Audit { seq: 3 })).await.unwrap();

    let mut types = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(WAIT, test_star.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        types.push(d.metadata().event_type().to_owned());
    }
    assert_eq!(types, ["test.ping", "test.pong"]);
    let mut types = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(WAIT, all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        types.push(d.metadata().event_type().to_owned());
    }
    assert_eq!(types, ["test.ping", "test.pong", "audit.entry"]);
    let d = tokio::time::timeout(WAIT, pongs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.payload().seq, 2);
    // The audit entry never reaches `test.*`, the ping never the typed pong subscription.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), test_star.next())
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), pongs.next())
            .await
            .is_err()
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn publish_while_the_server_is_down_fails_as_unavailable_within_the_bound() {
    let mut server = NatsServer::core();
    let t = transport(&server).await;
    let bound = t.config().get_publish_timeout();
    let bus = bus(t.clone());
    bus.publish(&bus.event(Ping {
        seq: 0,
        note: String::new(),
    }))
    .await
    .unwrap();
    server.kill();
    wait_state(&t, ConnectionState::Disconnected).await;

    for seq in 1..=3 {
        let started = Instant::now();
        let err = bus
            .publish(&bus.event(Ping {
                seq,
                note: String::new(),
            }))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.is_retryable());
        assert!(
            took >= bound,
            "waited the configured bound first ({took:?})"
        );
        assert!(
            took < bound + Duration::from_secs(2),
            "and not much longer ({took:?})"
        );
    }
    assert!(t.status().disconnects >= 1);

    // Once the server is back, publishing works again.
    server.restart();
    wait_state(&t, ConnectionState::Connected).await;
    bus.publish(&bus.event(Ping {
        seq: 9,
        note: String::new(),
    }))
    .await
    .unwrap();
    assert!(t.status().connects >= 2, "{:?}", t.status());
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_core_subscription_resumes_after_the_server_restarts() {
    let mut server = NatsServer::core();
    let t = transport(&server).await;
    let bus = bus(t.clone());
    let mut sub = bus.subscribe::<Ping>().await.unwrap();
    bus.publish(&bus.event(Ping {
        seq: 1,
        note: String::new(),
    }))
    .await
    .unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.payload().seq, 1);

    server.kill();
    wait_state(&t, ConnectionState::Disconnected).await;
    server.restart();
    wait_state(&t, ConnectionState::Connected).await;

    bus.publish(&bus.event(Ping {
        seq: 2,
        note: String::new(),
    }))
    .await
    .unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("the subscription was renewed on the new connection")
        .unwrap()
        .unwrap();
    assert_eq!(d.payload().seq, 2);
    let status = t.status();
    assert_eq!(
        (status.disconnects, status.state),
        (1, ConnectionState::Connected),
        "{status:?}"
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn close_delivers_everything_published_before_it() {
    let server = NatsServer::core();
    let receiver = transport(&server).await;
    let sender = transport(&server).await;
    let prefix = unique_prefix();
    let recv_bus = Bus::builder(receiver)
        .source("r")
        .prefix(&prefix)
        .build()
        .unwrap();
    let send_bus = Bus::builder(sender)
        .source("s")
        .prefix(&prefix)
        .build()
        .unwrap();
    let mut sub = recv_bus.subscribe::<Ping>().await.unwrap();
    const N: u64 = 10_000;
    let event = send_bus.event(Ping {
        seq: 0,
        note: String::new(),
    });
    for _ in 0..N {
        send_bus.publish(&event).await.unwrap();
    }
    // No flush: close alone must get everything out before the connection goes.
    send_bus.close().await.unwrap();
    let err = send_bus.publish(&event).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    for i in 0..N {
        let _delivered = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {N} arrived"))
            .unwrap()
            .unwrap();
    }
    recv_bus.close().await.unwrap();
}

#[tokio::test]
async fn a_full_subscription_buffer_is_reported_as_a_slow_consumer() {
    let server = NatsServer::core();
    let t = NatsTransport::connect(config(&server).subscription_capacity(8))
        .await
        .unwrap();
    let bus = bus(t.clone());
    let _unread = bus.subscribe::<Ping>().await.unwrap();
    for seq in 0..500 {
        bus.publish(&bus.event(Ping {
            seq,
            note: String::new(),
        }))
        .await
        .unwrap();
    }
    bus.flush().await.unwrap();
    let deadline = Instant::now() + WAIT;
    while t.status().slow_consumer_events == 0 {
        assert!(
            Instant::now() < deadline,
            "no slow consumer event: {:?}",
            t.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.close().await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_fails_before_it_is_sent_and_the_connection_survives() {
    let server = NatsServer::builder().config("max_payload: 4096\n").start();
    let t = transport(&server).await;
    assert_eq!(t.capabilities().max_message_size, 4096);
    let subject = Subject::parse("big.one").unwrap();
    let mut sub = t
        .subscribe(SubscribeOptions::new(
            events::transport::SubjectPattern::exact(&subject),
        ))
        .await
        .unwrap();
    let err = t
        .publish(Message::new(subject.clone(), vec![b'x'; 5000]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    // Headers count against the limit too.
    let mut almost = Message::new(subject.clone(), vec![b'x'; 4090]);
    almost.headers.append("x-pad", "0123456789").unwrap();
    assert_eq!(
        t.publish(almost).await.unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );

    // Through the bus the check happens while encoding.
    let bus = bus(t.clone());
    let big = bus.event(Ping {
        seq: 1,
        note: "x".repeat(5000),
    });
    assert_eq!(
        bus.publish(&big).await.unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );

    // Nothing reached the server, which would have closed the connection.
    t.publish(Message::new(subject, &b"small"[..]))
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&d.message().payload[..], b"small");
    assert_eq!(t.status().disconnects, 0, "{:?}", t.status());
    t.close().await.unwrap();
}

#[tokio::test]
async fn token_auth_connects_with_the_token_and_refuses_without_it() {
    let server = NatsServer::builder()
        .arg("--auth")
        .arg("s3cret-token")
        .start();
    let ok = NatsTransport::connect(config(&server).token("s3cret-token"))
        .await
        .unwrap();
    let bus = bus(ok);
    let mut sub = bus.subscribe::<Ping>().await.unwrap();
    bus.publish(&bus.event(Ping {
        seq: 1,
        note: String::new(),
    }))
    .await
    .unwrap();
    let _delivered = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    bus.close().await.unwrap();

    for bad in [config(&server).token("wrong"), config(&server)] {
        let err = NatsTransport::connect(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        assert!(!err.is_retryable());
        assert!(
            err.to_string().contains("rejected the credentials"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn user_password_auth_from_a_config_file_and_a_wrong_password_is_a_typed_error() {
    let server = NatsServer::builder()
        .config("authorization {\n  users = [ { user: alice, password: \"correct horse\" } ]\n}\n")
        .start();
    let ok = NatsTransport::connect(config(&server).user_password("alice", "correct horse"))
        .await
        .unwrap();
    ok.flush().await.unwrap();
    ok.close().await.unwrap();

    let err = NatsTransport::connect(config(&server).user_password("alice", "battery staple"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    assert!(
        err.to_string()
            .contains("rejected the credentials (user/password)"),
        "{err}"
    );
    assert!(
        !format!("{err:?}{err}").contains("battery staple"),
        "the password is never shown"
    );
}

#[tokio::test]
async fn connecting_to_nothing_is_unavailable_fast() {
    let server = NatsServer::core();
    let url = server.url();
    drop(server);
    let started = Instant::now();
    let err = NatsTransport::connect(NatsConfig::new(url).connect_timeout(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The case the pitfall list warns of: publishers blocked on a full client
/// queue when the connection drops. Each publish must come back (queued in
/// the client, or `Unavailable`) within about the bound, never hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_blocked_on_a_full_queue_fail_within_the_bound_when_the_server_dies() {
    let mut server = NatsServer::core();
    let t = NatsTransport::connect(config(&server).client_capacity(4))
        .await
        .unwrap();
    let bound = t.config().get_publish_timeout();
    let bus = bus(t.clone());
    server.kill();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut unavailable = 0;
                for seq in 0..6 {
                    let note = "x".repeat(1024);
                    let started = Instant::now();
                    let result = bus
                        .publish(&bus.event(Ping {
                            seq: p * 100 + seq,
                            note,
                        }))
                        .await;
                    let took = started.elapsed();
                    assert!(
                        took < bound + Duration::from_secs(2),
                        "a publish took {took:?}"
                    );
                    if let Err(e) = result {
                        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                        unavailable += 1;
                    }
                }
                unavailable
            })
        })
        .collect();
    let mut failed = 0;
    for p in publishers {
        failed += tokio::time::timeout(bound * 6 + Duration::from_secs(10), p)
            .await
            .expect("no publisher hangs")
            .unwrap();
    }
    assert!(
        failed > 0,
        "with the server gone, publishes fail as unavailable"
    );
    drop(server);
}

/// Publishes `message` over a raw protocol connection (as a client of any
/// language could), with `extra` header lines before its own headers.
pub async fn raw_publish(server: &NatsServer, message: &Message, extra: &str) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    let mut block = format!("NATS/1.0\r\n{extra}");
    for (name, value) in message.headers.iter() {
        block.push_str(&format!("{name}: {value}\r\n"));
    }
    block.push_str("\r\n");
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let mut conn = BufReader::new(stream);
    let mut info = String::new();
    conn.read_line(&mut info).await.unwrap();
    assert!(info.starts_with("INFO "), "{info}");
    let mut out = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true,\"protocol\":1}}\r\nHPUB {} {} {}\r\n{block}",
        message.subject,
        block.len(),
        block.len() + message.payload.len()
    )
    .into_bytes();
    out.extend_from_slice(&message.payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    conn.get_mut().write_all(&out).await.unwrap();
    let mut reply = String::new();
    conn.read_line(&mut reply).await.unwrap();
    assert_eq!(reply, "PONG\r\n", "the server took the publish");
}

/// Runs a consumer of `Ping` (set up by `configure`) until it has handled
/// one event, then stops the server for good: the client (configured with
/// [`giving_up`]) exhausts its reconnect attempts and its connection task
/// ends. Waiting cannot heal that, so `run` must end with `Closed` instead
/// of idling without a subscription, and publishes must fail `Closed`.
pub async fn kill_the_client_under(
    configure: impl FnOnce(events::consumer::Consumer<()>) -> events::consumer::Consumer<()>,
    server: &mut NatsServer,
    bus: &Bus,
    status: impl Fn() -> events::backend::nats::NatsStatus,
) {
    use events::consumer::{Consumer, Context, HandlerError};

    let (handled_tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let consumer = configure(Consumer::new(bus, "victim").unwrap()).handle(
        move |e: events::Event<Ping>, _ctx: Context<()>| {
            let _ = handled_tx.send(e.payload.seq);
            async { Ok::<_, HandlerError>(()) }
        },
    );
    let running = tokio::spawn(consumer.run(std::future::pending()));
    let ping = bus.event(Ping {
        seq: 1,
        note: String::new(),
    });
    // Published until one is handled: the consumer is then subscribed.
    loop {
        bus.publish(&ping).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(200), handled.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    server.kill();
    let ended = tokio::time::timeout(WAIT, running)
        .await
        .expect("the consumer does not idle on a dead client")
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.kind(), ErrorKind::Closed, "{ended}");
    let status = status();
    assert_eq!(status.state, ConnectionState::Closed);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("connection task"),
        "{status:?}"
    );
    let refused = bus.publish(&ping).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Closed, "{refused}");
}

/// `config` whose client gives up after two reconnect attempts.
pub fn giving_up(config: NatsConfig) -> NatsConfig {
    config.reconnect(
        ReconnectPolicy::new()
            .min_delay(Duration::from_millis(50))
            .max_delay(Duration::from_millis(100))
            .max_reconnects(Some(2)),
    )
}

#[tokio::test]
async fn a_client_that_gives_up_reconnecting_ends_the_consumer_with_an_error() {
    let mut server = NatsServer::core();
    let transport = NatsTransport::connect(giving_up(config(&server)))
        .await
        .unwrap();
    let bus = bus(transport.clone());
    kill_the_client_under(|c| c, &mut server, &bus, || transport.status()).await;
}
