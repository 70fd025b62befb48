//! Typed and raw subscriptions and their deliveries.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use super::Inner;
use crate::envelope::{Event, EventMetadata, EventPayload};
use crate::error::{Error, Result};
use crate::transport::{self, DeliveryInfo, Message, Subscription};
use crate::versioning::{Upcasters, VersionPolicy};
use crate::wire::{self, RawEvent};

/// A stream of typed deliveries of `T`.
///
/// Each item is either a decoded [`Delivery`] or a [`DeliveryError`] that
/// carries the raw delivery when there is one, so an undecodable message is
/// never lost: settle it (typically `term` after dead-lettering it, or
/// `nack` with a delay for [`UnsupportedVersion`](crate::ErrorKind::UnsupportedVersion)).
pub struct Subscriber<T> {
    subscription: Subscription,
    bus: Arc<Inner>,
    version_policy: VersionPolicy,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T: EventPayload> Subscriber<T> {
    pub(super) fn new(
        subscription: Subscription,
        bus: Arc<Inner>,
        version_policy: VersionPolicy,
    ) -> Self {
        Subscriber {
            subscription,
            bus,
            version_policy,
            _type: std::marker::PhantomData,
        }
    }

    /// The next delivery, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<Delivery<T>, DeliveryError>> {
        futures_util::StreamExt::next(self).await
    }

    /// Stops fetching: nothing more is asked of the broker for this
    /// subscriber; what it fetched before is still yielded, then the stream
    /// ends (on core NATS, which fetches nothing ahead, it goes on).
    pub fn stop(&mut self) {
        self.subscription.stop();
    }

    /// Stops fetching and releases every event fetched ahead and not yet
    /// handed out: each is nacked without delay, in order, so another
    /// subscriber of the same durable consumer or queue group gets it at
    /// once instead of after the ack wait. Returns how many were released.
    /// Deliveries already handed out stay the caller's to settle.
    ///
    /// Dropping the subscriber releases them too, without waiting.
    pub async fn close(self) -> usize {
        self.subscription.close().await
    }

    fn decode(&self, delivery: transport::Delivery) -> Result<Delivery<T>, DeliveryError> {
        let decoded =
            wire::decode_event::<T>(delivery.message(), &self.bus.upcasters, self.version_policy);
        match decoded {
            Ok(decoded) => {
                tracing::debug!(
                    event.r#type = T::TYPE,
                    event.id = decoded.event.metadata.id(),
                    subject = delivery.message().subject.as_str(),
                    attempt = delivery.attempt(),
                    "event received"
                );
                Ok(Delivery {
                    event: decoded.event,
                    wire_version: decoded.wire_version,
                    inner: delivery,
                })
            }
            Err(error) => {
                tracing::debug!(
                    event.r#type = T::TYPE,
                    subject = delivery.message().subject.as_str(),
                    attempt = delivery.attempt(),
                    error = %error,
                    "event could not be decoded"
                );
                Err(DeliveryError {
                    error,
                    raw: Some(Box::new(delivery)),
                })
            }
        }
    }
}

impl<T: EventPayload> Stream for Subscriber<T> {
    type Item = Result<Delivery<T>, DeliveryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.subscription).poll_next(cx) {
            Poll::Ready(Some(Ok(delivery))) => Poll::Ready(Some(self.decode(delivery))),
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(DeliveryError { error, raw: None })))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("type", &std::any::type_name::<T>())
            .field("version_policy", &self.version_policy)
            .finish_non_exhaustive()
    }
}

/// One typed delivery: the decoded event plus the means to settle it.
#[must_use = "a delivery should be settled with ack, nack or term"]
pub struct Delivery<T> {
    event: Event<T>,
    wire_version: u32,
    inner: transport::Delivery,
}

impl<T> Delivery<T> {
    /// The event.
    pub fn event(&self) -> &Event<T> {
        &self.event
    }
    /// The payload.
    pub fn payload(&self) -> &T {
        &self.event.payload
    }
    /// The metadata.
    pub fn metadata(&self) -> &EventMetadata {
        &self.event.metadata
    }
    /// The version the producer sent, before upcasting.
    pub fn wire_version(&self) -> u32 {
        self.wire_version
    }
    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt()
    }
    /// Attempt number and stream positions.
    pub fn info(&self) -> DeliveryInfo {
        self.inner.info()
    }
    /// The message as received.
    pub fn message(&self) -> &Message {
        self.inner.message()
    }
    /// Splits into the event and the raw delivery that settles it.
    pub fn into_parts(self) -> (Event<T>, transport::Delivery) {
        (self.event, self.inner)
    }
    /// Marks the event handled.
    pub fn ack(self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.inner.ack()
    }
    /// Asks for the event again, after `delay` if given.
    pub fn nack(
        self,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        self.inner.nack(delay)
    }
    /// Marks the event as never deliverable again.
    pub fn term(self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.inner.term()
    }
    /// Tells the broker that handling goes on.
    pub async fn in_progress(&self) -> Result<()> {
        self.inner.in_progress().await
    }
}

impl<T: fmt::Debug> fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("metadata", &self.event.metadata)
            .field("wire_version", &self.wire_version)
            .field("info", &self.inner.info())
            .finish_non_exhaustive()
    }
}

/// A delivery that could not be turned into a typed event, or a transport
/// error. Holds the raw delivery when there is one, so it can still be
/// settled or dead-lettered.
#[derive(Debug)]
pub struct DeliveryError {
    error: Error,
    // Boxed: errors travel in `Result`s, and the delivery is large.
    raw: Option<Box<transport::Delivery>>,
}

impl DeliveryError {
    /// What went wrong.
    pub fn error(&self) -> &Error {
        &self.error
    }
    /// The raw delivery, if the error concerns a message.
    pub fn raw(&self) -> Option<&transport::Delivery> {
        self.raw.as_deref()
    }
    /// Splits into the error and the raw delivery.
    pub fn into_parts(self) -> (Error, Option<transport::Delivery>) {
        (self.error, self.raw.map(|raw| *raw))
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.raw {
            Some(raw) => write!(
                f,
                "delivery on `{}` failed: {}",
                raw.message().subject,
                self.error
            ),
            None => write!(f, "subscription failed: {}", self.error),
        }
    }
}

impl std::error::Error for DeliveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

/// A stream of deliveries whose payloads are not decoded: for generic
/// routers, dead-letter tools and pattern subscriptions across types.
#[derive(Debug)]
pub struct RawSubscriber {
    subscription: Subscription,
}

impl RawSubscriber {
    pub(super) fn new(subscription: Subscription) -> Self {
        RawSubscriber { subscription }
    }

    /// The next delivery, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<RawDelivery, DeliveryError>> {
        futures_util::StreamExt::next(self).await
    }

    /// Stops fetching: nothing more is asked of the broker for this
    /// subscriber; what it fetched before is still yielded, then the stream
    /// ends (on core NATS, which fetches nothing ahead, it goes on).
    pub fn stop(&mut self) {
        self.subscription.stop();
    }

    /// Stops fetching and releases every event fetched ahead and not yet
    /// handed out: each is nacked without delay, in order, so another
    /// subscriber of the same durable consumer or queue group gets it at
    /// once instead of after the ack wait. Returns how many were released.
    /// Deliveries already handed out stay the caller's to settle.
    ///
    /// Dropping the subscriber releases them too, without waiting.
    pub async fn close(self) -> usize {
        self.subscription.close().await
    }
}

impl Stream for RawSubscriber {
    type Item = Result<RawDelivery, DeliveryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.subscription).poll_next(cx) {
            Poll::Ready(Some(Ok(delivery))) => {
                Poll::Ready(Some(match wire::decode(delivery.message()) {
                    Ok(event) => Ok(RawDelivery {
                        event: Box::new(event),
                        inner: delivery,
                    }),
                    Err(error) => Err(DeliveryError {
                        error,
                        raw: Some(Box::new(delivery)),
                    }),
                }))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(DeliveryError { error, raw: None })))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A delivery with decoded metadata and undecoded payload.
#[derive(Debug)]
#[must_use = "a delivery should be settled with ack, nack or term"]
pub struct RawDelivery {
    // Boxed: the metadata is about 300 bytes, and a delivery moves through
    // streams and (in the consumer runtime) into every state of the handling
    // future; a pointer keeps those moves small.
    event: Box<RawEvent>,
    inner: transport::Delivery,
}

impl RawDelivery {
    /// The metadata and payload bytes.
    pub fn event(&self) -> &RawEvent {
        &self.event
    }
    /// The metadata.
    pub fn metadata(&self) -> &EventMetadata {
        &self.event.metadata
    }
    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt()
    }
    /// The message as received.
    pub fn message(&self) -> &Message {
        self.inner.message()
    }
    /// Decodes the payload as `T`; on failure the raw delivery comes back
    /// inside the error.
    pub fn decode<T: EventPayload>(
        self,
        upcasters: &Upcasters,
        policy: VersionPolicy,
    ) -> Result<Delivery<T>, DeliveryError> {
        match self.event.into_event::<T>(upcasters, policy) {
            Ok(decoded) => Ok(Delivery {
                event: decoded.event,
                wire_version: decoded.wire_version,
                inner: self.inner,
            }),
            Err(error) => Err(DeliveryError {
                error,
                raw: Some(Box::new(self.inner)),
            }),
        }
    }
    /// Splits into the raw event and the delivery that settles it.
    pub fn into_parts(self) -> (RawEvent, transport::Delivery) {
        (*self.event, self.inner)
    }
    /// Marks the event handled.
    pub fn ack(self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.inner.ack()
    }
    /// Asks for the event again, after `delay` if given.
    pub fn nack(
        self,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        self.inner.nack(delay)
    }
    /// Marks the event as never deliverable again.
    pub fn term(self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.inner.term()
    }
}
