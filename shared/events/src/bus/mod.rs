//! The typed bus: publish [`Event<T>`]s, subscribe to typed deliveries.
//!
//! A [`Bus`] joins a [`Transport`] with the wire [`Codec`], a source name,
//! upcasters and a version policy. It is cheap to clone and shares one
//! transport between clones.

mod subscriber;

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

pub use subscriber::{Delivery, DeliveryError, RawDelivery, RawSubscriber, Subscriber};

use crate::envelope::{Event, EventPayload};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{Capability, Message, SubjectPattern, SubscribeOptions, Transport};
use crate::versioning::{Upcasters, VersionPolicy};
use crate::wire::{Codec, ContentMode};

/// A typed event bus over one transport.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// # struct OrderPlaced { order_id: String }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), events::Error> {
/// use events::Bus;
///
/// let bus = Bus::memory("orders");
/// let mut placed = bus.subscribe::<OrderPlaced>().await?;
///
/// bus.publish(&bus.event(OrderPlaced { order_id: "o-1".into() })).await?;
///
/// let delivery = placed.next().await.expect("subscribed").expect("decodes");
/// assert_eq!(delivery.payload().order_id, "o-1");
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    transport: Arc<dyn Transport>,
    codec: Codec,
    source: String,
    mode: ContentMode,
    pub(crate) upcasters: Upcasters,
    version_policy: VersionPolicy,
}

impl Bus {
    /// A bus on a new in-memory transport, publishing as `source`; an empty
    /// `source` means the default, as if none was given to
    /// [`BusBuilder::source`] (the executable's name).
    ///
    /// ```
    /// let bus = events::Bus::memory("");
    /// assert!(!bus.source().is_empty());
    /// ```
    #[cfg(feature = "memory")]
    #[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
    pub fn memory(source: impl Into<String>) -> Bus {
        let source = source.into();
        let mut builder = Bus::builder(crate::backend::memory::MemoryTransport::new());
        if !source.is_empty() {
            builder = builder.source(source);
        }
        // `build` checks the prefix (here the default) and that the source
        // is not empty (here it is not, or the default): it cannot fail.
        builder
            .build()
            .expect("the default prefix and a non-empty source are valid")
    }

    /// Starts building a bus on `transport`.
    pub fn builder(transport: impl Transport) -> BusBuilder {
        BusBuilder::new(Arc::new(transport))
    }

    /// Starts building a bus on a shared transport (e.g. one chosen from
    /// configuration at run time).
    pub fn builder_shared(transport: Arc<dyn Transport>) -> BusBuilder {
        BusBuilder::new(transport)
    }

    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// The codec (subject prefix).
    pub fn codec(&self) -> &Codec {
        &self.inner.codec
    }

    /// The content mode [`publish`](Self::publish) uses.
    pub fn content_mode(&self) -> ContentMode {
        self.inner.mode
    }

    /// The source this bus stamps on the events it creates.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// A new event from this bus's source.
    pub fn event<T: EventPayload>(&self, payload: T) -> Event<T> {
        Event::new(self.inner.source.clone(), payload)
    }

    /// A new event from this bus's source in reaction to `cause` (same
    /// correlation id, the cause's id as causation id).
    pub fn reaction<T: EventPayload, C>(&self, cause: &Event<C>, payload: T) -> Event<T> {
        Event::caused_by(self.inner.source.clone(), &cause.metadata, payload)
    }

    /// Publishes an event in the bus's content mode.
    ///
    /// Invalid metadata, an unserializable payload or a message over the
    /// transport's size limit fail before anything is sent.
    pub async fn publish<T: EventPayload>(&self, event: &Event<T>) -> Result<()> {
        self.publish_with(event, self.inner.mode).await
    }

    /// Publishes an event in the given content mode.
    pub async fn publish_with<T: EventPayload>(
        &self,
        event: &Event<T>,
        mode: ContentMode,
    ) -> Result<()> {
        let span = tracing::debug_span!(
            "events.publish",
            event.r#type = T::TYPE,
            event.id = event.metadata.id(),
            subject = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        #[cfg(feature = "opentelemetry")]
        let message = crate::otel::Outgoing::producer(&span).encode(self, event, mode)?;
        #[cfg(not(feature = "opentelemetry"))]
        let message = self.encode(event, mode)?;
        span.record("subject", message.subject.as_str());
        let result = self.inner.transport.publish(message).instrument(span).await;
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "events_published_total",
            "type" => T::TYPE,
            "outcome" => if result.is_ok() { "ok" } else { "error" }
        )
        .increment(1);
        result
    }

    /// Publishes many events, letting the transport pipeline them (JetStream
    /// sends windows of 256, then awaits their acks together). One result
    /// per event, in order; an event that fails to encode fails alone.
    ///
    /// The events reported `Ok` are stored (or queued, on core NATS) in the
    /// slice's order. On JetStream an event whose first send was lost and
    /// whose resend was stored behind later events of the call fails with
    /// [`ErrorKind::Backend`]: it is stored, out of order. Once an event
    /// cannot be published for want of the server, the rest of the call
    /// fails without being sent ([`ErrorKind::Unavailable`]), so an outage
    /// costs one `publish_timeout` (per window of 256 on JetStream), not
    /// one per event. An event that failed may still be stored (its ack was
    /// lost); published again, it is deduplicated on JetStream but lands
    /// after the events that followed it.
    pub async fn publish_all<T: EventPayload>(&self, events: &[Event<T>]) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = Vec::with_capacity(events.len());
        let mut messages = Vec::with_capacity(events.len());
        let span = tracing::debug_span!(
            "events.publish_all",
            event.r#type = T::TYPE,
            count = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        #[cfg(feature = "opentelemetry")]
        let outgoing = crate::otel::Outgoing::producer(&span);
        for event in events {
            #[cfg(feature = "opentelemetry")]
            let encoded = outgoing.encode(self, event, self.inner.mode);
            #[cfg(not(feature = "opentelemetry"))]
            let encoded = self.encode(event, self.inner.mode);
            match encoded {
                Ok(message) => {
                    messages.push(message);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        span.record("count", messages.len());
        let mut sent = self
            .inner
            .transport
            .publish_batch(messages)
            .instrument(span)
            .await
            .into_iter();
        results
            .into_iter()
            .map(|r| match r {
                Some(err) => err,
                None => sent.next().unwrap_or_else(|| {
                    Err(Error::new(
                        ErrorKind::Backend,
                        "transport returned too few results",
                    ))
                }),
            })
            .collect()
    }

    /// Publishes events all-or-nothing: when it returns `Ok`, every event
    /// is stored; when it fails, none is. An event that fails to encode
    /// fails the whole call before anything is sent.
    ///
    /// Needs a transport declaring
    /// [`Capability::AtomicPublish`]
    /// (JetStream on nats-server 2.12.1 or later, with a stream that allows
    /// it: `StreamConfig::atomic_publish` in `backend::jetstream`);
    /// others refuse with [`ErrorKind::Unsupported`]. At most
    /// 1,000 events per call on JetStream. Events of several types go
    /// through [`Bus::encode`] and the transport's
    /// [`publish_atomic`](crate::transport::Transport::publish_atomic).
    pub async fn publish_atomic<T: EventPayload>(&self, events: &[Event<T>]) -> Result<()> {
        let span = tracing::debug_span!(
            "events.publish_atomic",
            event.r#type = T::TYPE,
            count = events.len(),
            otel.kind = tracing::field::Empty,
        );
        #[cfg(feature = "opentelemetry")]
        let outgoing = crate::otel::Outgoing::producer(&span);
        let mut messages = Vec::with_capacity(events.len());
        for event in events {
            #[cfg(feature = "opentelemetry")]
            let message = outgoing.encode(self, event, self.inner.mode)?;
            #[cfg(not(feature = "opentelemetry"))]
            let message = self.encode(event, self.inner.mode)?;
            messages.push(message);
        }
        let result = self
            .inner
            .transport
            .publish_atomic(messages)
            .instrument(span)
            .await;
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "events_published_total",
            "type" => T::TYPE,
            "outcome" => if result.is_ok() { "ok" } else { "error" }
        )
        .increment(events.len() as u64);
        result
    }

    /// Encodes an event into the message this bus would publish, checking
    /// it against the transport's size limit.
    pub fn encode<T: EventPayload>(&self, event: &Event<T>, mode: ContentMode) -> Result<Message> {
        let message = self.inner.codec.encode(event, mode)?;
        self.check_size(&message)?;
        Ok(message)
    }

    /// [`Bus::encode`] with other metadata than the event's own.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn encode_parts<T: EventPayload>(
        &self,
        metadata: &crate::envelope::EventMetadata,
        payload: &T,
        mode: ContentMode,
    ) -> Result<Message> {
        let message = self.inner.codec.encode_parts(metadata, payload, mode)?;
        self.check_size(&message)?;
        Ok(message)
    }

    fn check_size(&self, message: &Message) -> Result<()> {
        let limit = self.inner.transport.capabilities().max_message_size;
        let size = message.wire_len();
        if size > limit {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "event on `{}` encodes to {size} bytes; the {} transport accepts at most {limit}",
                    message.subject,
                    self.inner.transport.name()
                ),
            ));
        }
        Ok(())
    }

    /// Subscribes to events of type `T`. Await the returned builder, or set
    /// options on it first:
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Serialize, Deserialize)]
    /// # struct OrderPlaced { order_id: String }
    /// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), events::Error> {
    /// let bus = events::Bus::memory("inventory");
    /// let workers = bus.subscribe::<OrderPlaced>().queue_group("inventory").max_deliver(5).await?;
    /// # Ok(()) }
    /// ```
    pub fn subscribe<T: EventPayload>(&self) -> Subscribe<T> {
        let pattern = self.inner.codec.pattern_for(T::TYPE);
        Subscribe {
            bus: self.clone(),
            options: pattern.map(SubscribeOptions::new),
            version_policy: self.inner.version_policy,
            required: Vec::new(),
            _type: PhantomData,
        }
    }

    /// Subscribes to every event whose type matches `type_pattern`, relative
    /// to the prefix (`orders.>` listens on `<prefix>.orders.>`, or on
    /// `<prefix>.*.orders.>` with keys in subjects), with the payload left
    /// undecoded.
    pub async fn subscribe_raw(&self, type_pattern: &str) -> Result<RawSubscriber> {
        let codec = &self.inner.codec;
        let keys = if codec.keys_in_subjects() { "*." } else { "" };
        let full = format!("{}.{keys}{type_pattern}", codec.prefix());
        let options = SubscribeOptions::new(SubjectPattern::parse(&full)?);
        self.subscribe_raw_with(options).await
    }

    /// Subscribes with explicit transport options, payload undecoded.
    pub async fn subscribe_raw_with(&self, options: SubscribeOptions) -> Result<RawSubscriber> {
        let subscription = self.inner.transport.subscribe(options).await?;
        Ok(RawSubscriber::new(subscription))
    }

    /// Waits until everything published has left this process.
    pub async fn flush(&self) -> Result<()> {
        self.inner.transport.flush().await
    }

    /// Flushes and closes the transport.
    pub async fn close(&self) -> Result<()> {
        self.inner.transport.close().await
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("transport", &self.inner.transport)
            .field("source", &self.inner.source)
            .field("prefix", &self.inner.codec.prefix())
            .field("mode", &self.inner.mode)
            .field("upcasters", &self.inner.upcasters)
            .field("version_policy", &self.inner.version_policy)
            .finish()
    }
}

/// Builds a [`Bus`].
#[derive(Debug)]
pub struct BusBuilder {
    transport: Arc<dyn Transport>,
    prefix: String,
    source: Option<String>,
    mode: ContentMode,
    upcasters: Upcasters,
    version_policy: VersionPolicy,
    keys_in_subjects: Option<bool>,
}

impl BusBuilder {
    fn new(transport: Arc<dyn Transport>) -> Self {
        BusBuilder {
            transport,
            prefix: crate::wire::DEFAULT_PREFIX.to_owned(),
            source: None,
            mode: ContentMode::Structured,
            upcasters: Upcasters::new(),
            version_policy: VersionPolicy::Reject,
            keys_in_subjects: None,
        }
    }

    /// Whether subjects carry the event's key,
    /// `<prefix>.<key token>.<type>` (see
    /// [`Codec::with_keys_in_subjects`](crate::wire::Codec::with_keys_in_subjects)).
    /// Defaults to whether the transport's stream is partitioned by key;
    /// set it for a bus on another transport whose events reach such a
    /// stream (core NATS publishers of a partitioned JetStream stream).
    pub fn keys_in_subjects(mut self, keyed: bool) -> Self {
        self.keys_in_subjects = Some(keyed);
        self
    }

    /// The CloudEvents `source` of events this bus creates: the service's
    /// name, e.g. `orders`. Defaults to the executable's name; an empty one
    /// makes [`build`](Self::build) fail with
    /// [`ErrorKind::InvalidInput`].
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The subject prefix (default `events`): dot-separated subject tokens
    /// of `[A-Za-z0-9_-]`, checked by [`build`](Self::build).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The content mode for publishing (default structured). Both modes are
    /// always decoded.
    pub fn content_mode(mut self, mode: ContentMode) -> Self {
        self.mode = mode;
        self
    }

    /// The upcasters subscriptions use to read older versions.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// What subscriptions do with newer versions (default: reject).
    pub fn version_policy(mut self, policy: VersionPolicy) -> Self {
        self.version_policy = policy;
        self
    }

    /// Builds the bus; fails if the prefix or source is invalid.
    pub fn build(self) -> Result<Bus> {
        let caps = self.transport.capabilities();
        let keyed = self.keys_in_subjects.unwrap_or(caps.key_partitions > 0);
        let codec = Codec::new(&self.prefix)?
            .with_dedup_ids(caps.publish_dedup)
            .with_keys_in_subjects(keyed);
        let source = match self.source {
            Some(source) => source,
            None => default_source(),
        };
        crate::envelope::validate_non_empty("bus source", &source)?;
        Ok(Bus {
            inner: Arc::new(Inner {
                transport: self.transport,
                codec,
                source,
                mode: self.mode,
                upcasters: self.upcasters,
                version_policy: self.version_policy,
            }),
        })
    }
}

fn default_source() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "events".to_owned())
}

/// A pending typed subscription: set options, then `.await` it.
#[must_use = "a subscription does nothing until awaited"]
pub struct Subscribe<T> {
    bus: Bus,
    options: Result<SubscribeOptions>,
    version_policy: VersionPolicy,
    required: Vec<Capability>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Subscribe<T> {
    fn map_options(mut self, f: impl FnOnce(SubscribeOptions) -> Result<SubscribeOptions>) -> Self {
        self.options = self.options.and_then(f);
        self
    }

    /// Joins a queue group: each event goes to one member.
    pub fn queue_group(self, group: impl Into<String>) -> Self {
        let group = group.into();
        self.map_options(|o| o.queue_group(group))
            .require(Capability::QueueGroups)
    }

    /// A durable name: the subscription resumes where it left off (requires
    /// a durable backend).
    pub fn durable(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.map_options(|o| o.durable_name(name))
            .require(Capability::Durable)
    }

    /// Stops redelivering an event after this many attempts.
    pub fn max_deliver(self, attempts: u32) -> Self {
        self.map_options(|o| Ok(o.max_deliver(attempts)))
    }

    /// How long a delivery may stay unsettled before it comes back.
    pub fn ack_wait(self, wait: Duration) -> Self {
        self.map_options(|o| Ok(o.ack_wait(wait)))
    }

    /// Buffer capacity of the subscription.
    pub fn capacity(self, capacity: usize) -> Self {
        self.map_options(|o| Ok(o.capacity(capacity)))
    }

    /// What to do with versions newer than `T` (overrides the bus's policy).
    pub fn version_policy(mut self, policy: VersionPolicy) -> Self {
        self.version_policy = policy;
        self
    }

    /// Fails the subscription at start if the transport lacks `capability`.
    pub fn require(mut self, capability: Capability) -> Self {
        if !self.required.contains(&capability) {
            self.required.push(capability);
        }
        self
    }
}

impl<T: EventPayload> IntoFuture for Subscribe<T> {
    type Output = Result<Subscriber<T>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let options = self.options?;
            let transport = &self.bus.inner.transport;
            transport
                .capabilities()
                .require(transport.name(), &self.required)?;
            let subscription = transport.subscribe(options).await?;
            Ok(Subscriber::new(
                subscription,
                self.bus.inner.clone(),
                self.version_policy,
            ))
        })
    }
}

impl<T> std::fmt::Debug for Subscribe<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscribe")
            .field("type", &std::any::type_name::<T>())
            .field("options", &self.options)
            .field("version_policy", &self.version_policy)
            .field("required", &self.required)
            .finish()
    }
}

#[cfg(test)]
mod tests;
