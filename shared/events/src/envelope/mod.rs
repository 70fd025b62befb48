//! The envelope: [`Event<T>`] = [`EventMetadata`] + a typed payload.
//!
//! Pure data: nothing here does I/O or depends on a broker.

mod id;
mod metadata;
mod payload;
mod validate;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use id::new_event_id;
#[cfg(feature = "runtime")]
pub(crate) use metadata::Cause;
pub(crate) use metadata::Received;
pub use metadata::{EventMetadata, ExtensionValue, Extensions, TraceContext, JSON_CONTENT_TYPE};
pub use payload::EventPayload;
pub(crate) use validate::{is_attribute_name, parse_version_token, validate_non_empty};
pub use validate::{
    validate_extension_name, validate_subject_token, validate_type_name, MAX_EXTENSION_NAME_LEN,
    MAX_TOKEN_LEN, MAX_TYPE_LEN,
};

use crate::error::Result;

/// An event: metadata plus a typed payload.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)]
/// # struct OrderPlaced { order_id: String }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// use events::Event;
///
/// let placed = Event::new("orders", OrderPlaced { order_id: "o-1".into() })
///     .with_subject("o-1");
/// assert_eq!(placed.metadata.event_type(), "orders.order_placed");
/// assert_eq!(placed.metadata.subject(), Some("o-1"));
/// ```
///
/// Serialized with serde, an event is its metadata's fields next to a
/// `data` field; the CloudEvents wire form is made by [`crate::wire`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<T> {
    /// Id, type, source, time, causality, trace context, extensions.
    #[serde(flatten)]
    pub metadata: EventMetadata,
    /// The typed payload.
    #[serde(rename = "data")]
    pub payload: T,
}

impl<T: EventPayload> Event<T> {
    /// A new event from `source` (the producing service, e.g. `orders`), with
    /// a fresh UUIDv7 id and the current time.
    pub fn new(source: impl Into<String>, payload: T) -> Self {
        Event {
            metadata: EventMetadata::new(T::TYPE, T::VERSION, source),
            payload,
        }
    }

    /// A new event in reaction to `cause`: same correlation, the cause's id
    /// as causation id, the cause's trace context.
    pub fn caused_by(source: impl Into<String>, cause: &EventMetadata, payload: T) -> Self {
        let mut event = Event::new(source, payload);
        event.metadata.set_caused_by(cause);
        event
    }

    /// Sets the subject: the entity the event is about (e.g. the order id),
    /// used as ordering key.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.metadata.set_subject(Some(subject.into()));
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.set_correlation_id(Some(id.into()));
        self
    }

    /// Sets the trace context.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.metadata.set_trace(Some(trace));
        self
    }

    /// Sets the time the event happened.
    pub fn with_time(mut self, time: DateTime<Utc>) -> Self {
        self.metadata.set_time(Some(time));
        self
    }

    /// Adds an extension attribute; fails if the name is not
    /// `[a-z0-9]{1,20}` or is reserved.
    pub fn with_extension(
        mut self,
        name: impl Into<String>,
        value: impl Into<ExtensionValue>,
    ) -> Result<Self> {
        self.metadata.extensions_mut().insert(name, value)?;
        Ok(self)
    }
}

impl<T> Event<T> {
    /// Builds an event from parts, e.g. after decoding.
    pub fn from_parts(metadata: EventMetadata, payload: T) -> Self {
        Event { metadata, payload }
    }

    /// Splits the event into metadata and payload.
    pub fn into_parts(self) -> (EventMetadata, T) {
        (self.metadata, self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Placed {
        order_id: String,
    }
    impl EventPayload for Placed {
        const TYPE: &'static str = "orders.placed";
        const VERSION: u32 = 3;
    }

    #[test]
    fn new_takes_type_and_version_from_the_payload_type() {
        let e = Event::new(
            "orders",
            Placed {
                order_id: "o".into(),
            },
        );
        assert_eq!(e.metadata.event_type(), "orders.placed");
        assert_eq!(e.metadata.version(), 3);
        assert_eq!(e.metadata.source(), "orders");
    }

    #[test]
    fn caused_by_carries_correlation_and_causation() {
        let cause = Event::new(
            "orders",
            Placed {
                order_id: "o".into(),
            },
        )
        .with_correlation_id("corr");
        let reaction = Event::caused_by(
            "inventory",
            &cause.metadata,
            Placed {
                order_id: "o".into(),
            },
        );
        assert_eq!(reaction.metadata.correlation_id(), Some("corr"));
        assert_eq!(reaction.metadata.causation_id(), Some(cause.metadata.id()));
        assert_ne!(reaction.metadata.id(), cause.metadata.id());
    }

    #[test]
    fn events_round_trip_through_serde() {
        let e = Event::new(
            "orders",
            Placed {
                order_id: "o-9".into(),
            },
        )
        .with_subject("o-9")
        .with_extension("tenant", "acme")
        .unwrap();
        let json = serde_json::to_string(&e).unwrap();
        let back: Event<Placed> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn with_extension_rejects_invalid_names() {
        let e = Event::new(
            "orders",
            Placed {
                order_id: "o".into(),
            },
        );
        assert!(e.with_extension("Bad Name", "x").is_err());
    }
}
