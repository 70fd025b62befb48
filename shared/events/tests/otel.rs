//! OpenTelemetry trace propagation (feature `opentelemetry`), on the memory
//! bus with the consumer runtime.
//!
//! Each test installs its own subscriber (a `tracing-opentelemetry` layer
//! over an SDK tracer provider with an in-memory exporter) as the
//! thread-local default, on a current-thread runtime, so the consumer's
//! handlers run on the same thread and tests do not share a global.
//!
//! This is a test binary of its own, and its tests run one at a time
//! ([`SERIAL`]): `tracing` decides once per process whether a span site is
//! enabled, from the subscribers alive at that moment, and a site first
//! reached on one thread while another thread installs its subscriber can
//! stay cached as disabled (one CI run lost its `events.publish` span so).

use std::time::Duration;

use events::consumer::{Consumer, Context, HandlerError, Summary};
use events::envelope::TraceContext;
use events::transport::{Message, Subject};
use events::{Bus, Event, EventPayload};
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::registry::{LookupSpan, Registry};

#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    n: u32,
}
impl EventPayload for Ping {
    const TYPE: &'static str = "otel.ping";
}

#[derive(Debug, Serialize, Deserialize)]
struct Pong {
    n: u32,
}
impl EventPayload for Pong {
    const TYPE: &'static str = "otel.pong";
}

const ARRIVE: Duration = Duration::from_secs(10);

/// Held for the whole of each test: one subscriber alive at a time, so
/// installing it recomputes every span site's interest from it alone.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The trace context each handled event arrived with, by payload number.
type Seen = mpsc::UnboundedSender<(u32, Option<TraceContext>)>;

fn otel_layer<S>(tracer: &SdkTracer) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(tracer.clone())
}

/// Where debug spans (`events.publish`) are filtered out, if anywhere.
#[derive(Debug, Clone, Copy)]
enum Filter {
    None,
    /// For every layer: the span is disabled.
    Global,
    /// For the OpenTelemetry layer only: the span exists, without an
    /// OpenTelemetry context.
    OtelLayer,
}

/// A tracer provider exporting to memory, installed as this thread's
/// default subscriber until dropped.
struct Otel {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Otel {
    fn install() -> Self {
        Self::install_filtered(Filter::None)
    }

    fn install_filtered(filter: Filter) -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("events-test");
        let info = LevelFilter::INFO;
        let guard = match filter {
            Filter::None => {
                tracing::subscriber::set_default(Registry::default().with(otel_layer(&tracer)))
            }
            Filter::Global => tracing::subscriber::set_default(
                Registry::default().with(info).with(otel_layer(&tracer)),
            ),
            Filter::OtelLayer => tracing::subscriber::set_default(
                Registry::default().with(otel_layer(&tracer).with_filter(info)),
            ),
        };
        Otel {
            exporter,
            provider,
            _guard: guard,
        }
    }

    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }
}

/// Ping handlers answer with a reaction (published through the handler's
/// bus), pong handlers only report; both report what they received.
fn consumer(bus: &Bus, seen: Seen) -> Consumer<Seen> {
    Consumer::new(bus, "tracer")
        .unwrap()
        .state(seen)
        .handle(|e: Event<Ping>, ctx: Context<Seen>| async move {
            let _ = ctx.state().send((e.payload.n, e.metadata.trace().cloned()));
            ctx.bus()
                .publish(&ctx.reaction(Pong {
                    n: e.payload.n + 100,
                }))
                .await?;
            Ok::<_, HandlerError>(())
        })
        .handle(|e: Event<Pong>, ctx: Context<Seen>| async move {
            let _ = ctx.state().send((e.payload.n, e.metadata.trace().cloned()));
            Ok::<_, HandlerError>(())
        })
}

type Running = (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<events::Result<Summary>>,
);

/// Runs the consumer inside a `service` span, as a service's main would:
/// the handling spans must not join it.
async fn start(consumer: Consumer<Seen>) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let run = consumer.run(async move {
        let _ = stopped.await;
    });
    let handle = tokio::spawn(run.instrument(tracing::info_span!("service")));
    // Let the consumer subscribe before anything is published.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (stop, handle)
}

async fn stop((stop, handle): Running) -> Summary {
    let _ = stop.send(());
    handle.await.unwrap().unwrap()
}

async fn next(
    seen: &mut mpsc::UnboundedReceiver<(u32, Option<TraceContext>)>,
) -> (u32, Option<TraceContext>) {
    tokio::time::timeout(ARRIVE, seen.recv())
        .await
        .expect("handled in time")
        .expect("open")
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The one span named `name` whose `event.type` is `event_type`.
fn span<'a>(spans: &'a [SpanData], name: &str, event_type: &str) -> &'a SpanData {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| attribute(s, "event.type").map(|v| v.as_str()) == Some(event_type.into()))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span for {event_type}: {spans:#?}"
    );
    found[0]
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
    found[0]
}

fn w3c(span: &SpanData) -> String {
    format!(
        "00-{}-{}-01",
        span.span_context.trace_id(),
        span.span_context.span_id()
    )
}

/// What a ping (published in a `root` span) and its pong reaction carried
/// and left as spans.
struct PingPong {
    ping_trace: TraceContext,
    pong_trace: TraceContext,
    spans: Vec<SpanData>,
}

async fn ping_pong(otel: Otel) -> PingPong {
    let bus = Bus::memory("otel");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let running = start(consumer(&bus, tx)).await;

    let root = tracing::info_span!("root");
    bus.publish(&bus.event(Ping { n: 1 }))
        .instrument(root.clone())
        .await
        .unwrap();
    let (n, ping_trace) = next(&mut seen).await;
    assert_eq!(n, 1);
    let (n, pong_trace) = next(&mut seen).await;
    assert_eq!(n, 101);
    let summary = stop(running).await;
    assert_eq!(summary.handled, 2);
    drop(root);
    PingPong {
        ping_trace: ping_trace.expect("a trace context"),
        pong_trace: pong_trace.expect("a trace context"),
        spans: otel.spans(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_trace_crosses_publish_handling_and_a_reaction() {
    let _serial = SERIAL.lock().await;
    let PingPong {
        ping_trace,
        pong_trace,
        spans,
    } = ping_pong(Otel::install()).await;
    let root = named(&spans, "root");
    let publish_ping = span(&spans, "events.publish", "otel.ping");
    let handle_ping = span(&spans, "events.handle", "otel.ping");
    let publish_pong = span(&spans, "events.publish", "otel.pong");
    let handle_pong = span(&spans, "events.handle", "otel.pong");
    let trace_id = root.span_context.trace_id();
    assert_ne!(trace_id, TraceId::INVALID);
    for s in [publish_ping, handle_ping, publish_pong, handle_pong] {
        assert_eq!(
            s.span_context.trace_id(),
            trace_id,
            "{} in the root's trace",
            s.name
        );
    }
    // The hop: root -> publish (producer) -> handle (consumer), whose parent
    // came over the wire.
    assert_eq!(publish_ping.parent_span_id, root.span_context.span_id());
    assert_eq!(publish_ping.span_kind, SpanKind::Producer);
    assert_eq!(
        handle_ping.parent_span_id,
        publish_ping.span_context.span_id()
    );
    assert!(handle_ping.parent_span_is_remote);
    assert_eq!(handle_ping.span_kind, SpanKind::Consumer);
    assert_eq!(ping_trace.traceparent(), w3c(publish_ping));
    // The reaction: published inside handler A, handled by B as its child.
    assert_eq!(
        publish_pong.parent_span_id,
        handle_ping.span_context.span_id()
    );
    assert_eq!(
        handle_pong.parent_span_id,
        publish_pong.span_context.span_id()
    );
    assert_eq!(pong_trace.traceparent(), w3c(publish_pong));
    // The consumer's own span is no part of the trace.
    let service = named(&spans, "service");
    assert_ne!(service.span_context.trace_id(), trace_id);
}

#[tokio::test(flavor = "current_thread")]
async fn without_publish_spans_the_publishing_span_is_the_parent() {
    let _serial = SERIAL.lock().await;
    for filter in [Filter::Global, Filter::OtelLayer] {
        let PingPong {
            ping_trace,
            pong_trace,
            spans,
        } = ping_pong(Otel::install_filtered(filter)).await;
        assert!(
            spans.iter().all(|s| s.name != "events.publish"),
            "{filter:?}: debug spans filtered out"
        );
        let root = named(&spans, "root");
        let handle_ping = span(&spans, "events.handle", "otel.ping");
        let handle_pong = span(&spans, "events.handle", "otel.pong");
        assert_eq!(
            handle_ping.parent_span_id,
            root.span_context.span_id(),
            "{filter:?}"
        );
        assert_eq!(ping_trace.traceparent(), w3c(root), "{filter:?}");
        assert_eq!(
            handle_pong.parent_span_id,
            handle_ping.span_context.span_id(),
            "{filter:?}"
        );
        assert_eq!(pong_trace.traceparent(), w3c(handle_ping), "{filter:?}");
        assert_eq!(
            handle_pong.span_context.trace_id(),
            root.span_context.trace_id()
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_event_without_a_valid_traceparent_starts_a_new_trace() {
    let _serial = SERIAL.lock().await;
    let otel = Otel::install();
    let bus = Bus::memory("otel");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let running = start(consumer(&bus, tx)).await;

    // Another producer's events: one with a broken traceparent (dropped on
    // decode), one with only a tracestate. Sent raw, so nothing injects.
    let subject = Subject::parse("events.otel.pong").unwrap();
    for (n, trace) in [
        (
            1,
            serde_json::json!({"traceparent": "00-not-a-trace-01", "tracestate": "a=1"}),
        ),
        (2, serde_json::json!({"tracestate": "a=1"})),
    ] {
        let mut body = serde_json::json!({
            "specversion": "1.0", "id": format!("raw-{n}"), "source": "elsewhere",
            "type": "otel.pong", "data": {"n": n},
        });
        body.as_object_mut()
            .unwrap()
            .extend(trace.as_object().unwrap().clone());
        let message = Message::new(subject.clone(), serde_json::to_vec(&body).unwrap());
        bus.transport().publish(message).await.unwrap();
    }
    let mut received = [next(&mut seen).await, next(&mut seen).await];
    received.sort_by_key(|(n, _)| *n);
    assert_eq!(
        received.map(|(n, trace)| (n, trace.is_none())),
        [(1, true), (2, true)]
    );
    assert_eq!(stop(running).await.handled, 2);

    let spans = otel.spans();
    let service = named(&spans, "service");
    let handles: Vec<_> = spans.iter().filter(|s| s.name == "events.handle").collect();
    assert_eq!(handles.len(), 2);
    for handle in &handles {
        assert_eq!(handle.parent_span_id, SpanId::INVALID, "a root span");
        assert_ne!(
            handle.span_context.trace_id(),
            service.span_context.trace_id()
        );
    }
    assert_ne!(
        handles[0].span_context.trace_id(),
        handles[1].span_context.trace_id(),
        "one new trace per event"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_explicit_trace_context_of_another_trace_is_kept() {
    let _serial = SERIAL.lock().await;
    let otel = Otel::install();
    let bus = Bus::memory("otel");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let running = start(consumer(&bus, tx)).await;

    let explicit = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut pong = bus.event(Pong { n: 7 });
    pong.metadata.set_trace(Some(
        TraceContext::new(explicit)
            .unwrap()
            .with_tracestate("vendor=x"),
    ));
    let root = tracing::info_span!("root");
    bus.publish(&pong).instrument(root.clone()).await.unwrap();
    let (_, trace) = next(&mut seen).await;
    let trace = trace.expect("a trace context");
    assert_eq!(trace.traceparent(), explicit);
    assert_eq!(trace.tracestate(), Some("vendor=x"));
    stop(running).await;
    drop(root);

    let spans = otel.spans();
    let handle = span(&spans, "events.handle", "otel.pong");
    assert_eq!(
        handle.span_context.trace_id(),
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
    );
    assert_eq!(
        handle.parent_span_id,
        SpanId::from_hex("b7ad6b7169203331").unwrap()
    );
    assert_eq!(handle.span_context.trace_state().get("vendor"), Some("x"));
}

#[tokio::test(flavor = "current_thread")]
async fn without_an_opentelemetry_layer_the_trace_context_travels_as_data() {
    let _serial = SERIAL.lock().await;
    // A subscriber, but no OpenTelemetry layer in it.
    let _guard = tracing::subscriber::set_default(Registry::default());
    let bus = Bus::memory("otel");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let running = start(consumer(&bus, tx)).await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut ping = bus.event(Ping { n: 1 });
    ping.metadata
        .set_trace(Some(TraceContext::new(traceparent).unwrap()));
    bus.publish(&ping)
        .instrument(tracing::info_span!("root"))
        .await
        .unwrap();
    bus.publish(&bus.event(Ping { n: 2 })).await.unwrap();
    let mut received = Vec::new();
    for _ in 0..4 {
        received.push(next(&mut seen).await);
    }
    received.sort_by_key(|(n, _)| *n);
    let traceparents: Vec<_> = received
        .iter()
        .map(|(n, t)| (*n, t.as_ref().map(|t| t.traceparent().to_owned())))
        .collect();
    let unchanged = Some(traceparent.to_owned());
    assert_eq!(
        traceparents,
        [
            (1, unchanged.clone()),
            (2, None),
            (101, unchanged),
            (102, None)
        ]
    );
    stop(running).await;
}
