//! The tracing layer: each handling runs in a span named `events.handle`
//! (consumer, event type and id, subject, attempt), which continues the
//! producer's trace where the `opentelemetry` feature is on.

use super::Shared;
use crate::envelope::EventMetadata;
use crate::transport;

impl<S> Shared<S> {
    /// The span of one handling.
    pub(super) fn span(
        &self,
        metadata: &EventMetadata,
        delivery: &transport::Delivery,
    ) -> tracing::Span {
        let span = tracing::info_span!(
            "events.handle",
            consumer = %self.name,
            event.r#type = metadata.event_type(),
            event.id = metadata.id(),
            subject = delivery.message().subject.as_str(),
            attempt = delivery.attempt(),
            otel.kind = tracing::field::Empty,
        );
        #[cfg(feature = "opentelemetry")]
        crate::otel::continue_trace(&span, metadata);
        span
    }
}
