//! OpenTelemetry trace propagation (feature `opentelemetry`).
//!
//! The envelope carries a W3C trace context as plain data
//! ([`TraceContext`]); this module connects it to the OpenTelemetry context
//! of `tracing` spans, through `tracing-opentelemetry`:
//!
//! - **Extraction.** The runtime's `events.handle` span gets the event's
//!   `traceparent` / `tracestate` as its OpenTelemetry parent, and span kind
//!   `consumer`. An event without a (valid) trace context starts a new trace
//!   instead of joining whatever span the consumer loop happens to run in.
//! - **Injection.** A publish stamps the context of its `events.publish`
//!   span (kind `producer`, a child of the caller's span) on the outgoing
//!   event; if that span is filtered out, the caller's span is used. The
//!   event keeps its own trace context when it belongs to another trace (set
//!   explicitly); one of the same trace (inherited from a cause) is
//!   replaced, so the parent id names the span that really published it.
//!
//! Nothing here installs a global: without an OpenTelemetry layer in the
//! current subscriber every span context is invalid and events travel with
//! the trace context they already had.
//!
//! Only the OpenTelemetry API is used (libraries should leave the SDK to the
//! application), so the `traceparent` is parsed and formatted here, following
//! the SDK's `TraceContextPropagator`; a test checks both agree.

use std::str::FromStr as _;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::bus::Bus;
use crate::envelope::{Event, EventMetadata, EventPayload, TraceContext};
use crate::error::Result;
use crate::transport::Message;
use crate::wire::ContentMode;

/// The name of the `tracing` field that `tracing-opentelemetry` reads as the
/// span kind. The runtime's and the bus's spans declare it empty, so it
/// shows in logs only once recorded here.
const SPAN_KIND: &str = "otel.kind";

/// Parents `span` (an `events.handle` span, not yet entered) on the trace
/// context `metadata` arrived with.
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
pub(crate) fn continue_trace(span: &tracing::Span, metadata: &EventMetadata) {
    // An empty parent makes the span a root: a new trace. Set first, it is
    // also the probe: an error means no OpenTelemetry layer sees this span,
    // and then nothing is parsed.
    if span.set_parent(Context::new()).is_err() {
        return;
    }
    if let Some(remote) = metadata.trace().and_then(remote_span_context) {
        // The span has not started (not entered yet): the parent can still
        // be replaced.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
    span.record(SPAN_KIND, "consumer");
}

/// The OpenTelemetry span context a publish stamps on its events.
#[derive(Debug)]
pub(crate) struct Outgoing(Option<SpanContext>);

impl Outgoing {
    /// The context of `span` (the `events.publish` span, kind `producer`),
    /// else of the caller's current span; none without an OpenTelemetry
    /// layer.
    pub(crate) fn producer(span: &tracing::Span) -> Self {
        if !span.is_disabled() {
            // Recorded before `context()` starts the span: the kind is fixed
            // at start.
            span.record(SPAN_KIND, "producer");
            if let Some(context) = valid(span.context()) {
                return Outgoing(Some(context));
            }
        }
        Outgoing(valid(tracing::Span::current().context()))
    }

    /// Encodes `event` as `bus` would, with the trace context this publish
    /// gives it.
    pub(crate) fn encode<T: EventPayload>(
        &self,
        bus: &Bus,
        event: &Event<T>,
        mode: ContentMode,
    ) -> Result<Message> {
        match self.inject(&event.metadata) {
            Some(metadata) => bus.encode_parts(&metadata, &event.payload, mode),
            None => bus.encode(event, mode),
        }
    }

    /// The metadata to send instead of `metadata`, or `None` to send it as
    /// it is (no context here, another trace's context there, or already
    /// the same).
    fn inject(&self, metadata: &EventMetadata) -> Option<EventMetadata> {
        let context = self.0.as_ref()?;
        let own = metadata.trace();
        if let Some(own) = own {
            // Another trace was set on purpose; keep it.
            if TraceId::from_hex(own.trace_id()).ok() != Some(context.trace_id()) {
                return None;
            }
        }
        let traceparent = traceparent(context);
        if own.is_some_and(|own| own.traceparent() == traceparent) {
            return None;
        }
        let mut trace = TraceContext::new(traceparent).ok()?;
        let state = context.trace_state().header();
        if !state.is_empty() {
            trace = trace.with_tracestate(state);
        } else if let Some(state) = own.and_then(TraceContext::tracestate) {
            // Same trace: what the cause carried still applies.
            trace = trace.with_tracestate(state);
        }
        let mut metadata = metadata.clone();
        metadata.set_trace(Some(trace));
        Some(metadata)
    }
}

fn valid(context: Context) -> Option<SpanContext> {
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// The W3C form of a span context: version 00, the sampled flag only.
fn traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags() & TraceFlags::SAMPLED
    )
}

/// The remote span context a trace context names, or `None` if it names
/// none OpenTelemetry accepts. [`TraceContext`] has checked the shape
/// (lowercase hex fields, nonzero ids, version not `ff`); W3C also wants a
/// version-00 value to end after the flags.
fn remote_span_context(trace: &TraceContext) -> Option<SpanContext> {
    let traceparent = trace.traceparent();
    let field = |range: std::ops::Range<usize>| traceparent.get(range);
    if field(0..2)? == "00" && traceparent.len() != 55 {
        return None;
    }
    let trace_id = TraceId::from_hex(field(3..35)?).ok()?;
    let span_id = SpanId::from_hex(field(36..52)?).ok()?;
    // Only the sampled bit is defined; W3C says to ignore the others.
    let flags = TraceFlags::new(u8::from_str_radix(field(53..55)?, 16).ok()?) & TraceFlags::SAMPLED;
    // A tracestate OpenTelemetry cannot parse is dropped, as its propagator
    // does; the traceparent alone still continues the trace.
    let state = trace
        .tracestate()
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    let context = SpanContext::new(trace_id, span_id, flags, true, state);
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn propagator_extract(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let mut carrier = HashMap::new();
        carrier.insert("traceparent".to_owned(), traceparent.to_owned());
        if let Some(state) = tracestate {
            carrier.insert("tracestate".to_owned(), state.to_owned());
        }
        let context = TraceContextPropagator::new().extract(&carrier);
        valid(context)
    }

    #[test]
    fn extraction_agrees_with_the_sdk_propagator() {
        let cases = [
            (TP, None),
            (TP, Some("vendor=value,other=1")),
            (TP, Some("not a tracestate")),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                None,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-08-future",
                None,
            ),
        ];
        for (traceparent, tracestate) in cases {
            let ours = TraceContext::new(traceparent).ok().and_then(|mut trace| {
                if let Some(state) = tracestate {
                    trace = trace.with_tracestate(state);
                }
                remote_span_context(&trace)
            });
            let sdk = propagator_extract(traceparent, tracestate);
            assert_eq!(ours, sdk, "{traceparent} / {tracestate:?}");
        }
        // The table is not vacuous: most cases continue a trace.
        let trace = TraceContext::new(TP).unwrap();
        let context = remote_span_context(&trace).unwrap();
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(
            context.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
    }

    #[test]
    fn injection_formats_traceparent_as_the_sdk_propagator_does() {
        for flags in [
            TraceFlags::SAMPLED,
            TraceFlags::default(),
            TraceFlags::new(0xff),
        ] {
            let context = SpanContext::new(
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
                SpanId::from_hex("00000000000000ab").unwrap(),
                flags,
                false,
                TraceState::from_key_value([("k", "v")]).unwrap(),
            );
            let mut carrier: HashMap<String, String> = HashMap::new();
            TraceContextPropagator::new().inject_context(
                &Context::new().with_remote_span_context(context.clone()),
                &mut carrier,
            );
            assert_eq!(traceparent(&context), carrier["traceparent"]);
        }
    }

    fn metadata(trace: Option<&str>) -> EventMetadata {
        let mut metadata = EventMetadata::new("orders.order_placed", 1, "test");
        metadata.set_trace(trace.map(|tp| TraceContext::new(tp).unwrap().with_tracestate("a=1")));
        metadata
    }

    fn outgoing(trace_id: &str) -> Outgoing {
        Outgoing(Some(SpanContext::new(
            TraceId::from_hex(trace_id).unwrap(),
            SpanId::from_hex("1111111111111111").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )))
    }

    #[test]
    fn a_publish_stamps_its_span_on_an_event_without_trace_or_of_the_same_trace() {
        let same = outgoing("4bf92f3577b34da6a3ce929d0e0e4736");
        let expected = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
        let fresh = same.inject(&metadata(None)).unwrap();
        assert_eq!(fresh.trace().unwrap().traceparent(), expected);
        assert_eq!(fresh.trace().unwrap().tracestate(), None);
        let inherited = same.inject(&metadata(Some(TP))).unwrap();
        assert_eq!(inherited.trace().unwrap().traceparent(), expected);
        // The cause's tracestate stays when the span has none.
        assert_eq!(inherited.trace().unwrap().tracestate(), Some("a=1"));
        // Already stamped: nothing to change.
        assert!(same.inject(&inherited).is_none());
    }

    #[test]
    fn an_explicit_trace_of_another_trace_is_kept() {
        let other = outgoing("0af7651916cd43dd8448eb211c80319c");
        assert!(other.inject(&metadata(Some(TP))).is_none());
    }

    #[test]
    fn without_a_span_context_events_travel_as_they_are() {
        assert!(Outgoing(None).inject(&metadata(None)).is_none());
        assert!(Outgoing(None).inject(&metadata(Some(TP))).is_none());
        // No subscriber at all: the span is disabled, no context.
        assert!(Outgoing::producer(&tracing::Span::none()).0.is_none());
    }
}
