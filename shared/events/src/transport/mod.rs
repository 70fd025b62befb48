//! The byte-level, broker-agnostic transport interface (the SPI every
//! backend implements).
//!
//! A transport moves [`Message`]s: it knows nothing of typed events,
//! CloudEvents or versions, which live once above it in [`crate::wire`] and
//! [`crate::bus`], so every backend behaves the same. The trait is object
//! safe: a service holds an `Arc<dyn Transport>` chosen from configuration.

mod capabilities;
#[cfg(feature = "runtime")]
pub(crate) mod idempotency;
mod message;
pub(crate) mod percent;
#[cfg(feature = "jetstream")]
pub(crate) mod reply;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::future::BoxFuture;

pub use capabilities::{Capabilities, Capability};
#[cfg(feature = "nats")]
pub(crate) use message::is_header_name;
pub use message::{Headers, Message, Subject, SubjectPattern};

use crate::error::{Error, ErrorKind, Result};

/// A message transport: publish bytes, subscribe to subjects, settle
/// deliveries.
///
/// Implementations document their delivery guarantees and declare them in
/// [`capabilities`](Transport::capabilities); callers that need a capability
/// check it before they start (see [`Capabilities::require`]).
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// A short name for errors and logs (`memory`, `nats`, `jetstream`).
    fn name(&self) -> &'static str;

    /// What this transport can do.
    fn capabilities(&self) -> &Capabilities;

    /// Publishes one message. What `Ok` means depends on the backend: handed
    /// to local queues (memory), queued in the client (core NATS), stored
    /// and acknowledged (JetStream).
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<()>>;

    /// Publishes many messages, letting the backend pipeline them. Returns
    /// one result per message, in order.
    fn publish_batch(&self, messages: Vec<Message>) -> BoxFuture<'_, Vec<Result<()>>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(messages.len());
            for message in messages {
                results.push(self.publish(message).await);
            }
            results
        })
    }

    /// Publishes `messages` all-or-nothing: when it returns `Ok`, every
    /// message is stored; when it fails, none is (a failed batch is never
    /// partly stored). Where [`Capabilities::atomic_publish`] is declared;
    /// the default refuses with [`ErrorKind::Unsupported`], as a backend
    /// without it must (a loop of publishes would not be atomic).
    fn publish_atomic(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<()>> {
        let _ = messages;
        Box::pin(async move {
            Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the {} transport does not offer {}",
                    self.name(),
                    Capability::AtomicPublish
                ),
            ))
        })
    }

    /// Opens a subscription.
    fn subscribe(&self, options: SubscribeOptions) -> BoxFuture<'_, Result<Subscription>>;

    /// Waits until everything published so far has left this process (or is
    /// stored, for a durable backend).
    fn flush(&self) -> BoxFuture<'_, Result<()>>;

    /// Flushes, then closes: later publishes and subscribes fail with
    /// [`ErrorKind::Closed`], open subscriptions end after what they already
    /// buffered.
    fn close(&self) -> BoxFuture<'_, Result<()>>;

    /// Checks, where the backend can tell in advance, that messages published
    /// to `subject` will be accepted and kept: JetStream answers
    /// [`ErrorKind::InvalidInput`] when no stream captures the subject. Any
    /// publisher that must not find this out one failed publish at a time
    /// asks it before it starts (the consumer runtime does for its
    /// dead-letter subject, so a missing stream is a start-up error rather
    /// than every dead letter failing later). It is a question about the
    /// backend's storage, which only the transport can answer, so it stays
    /// on the trait rather than in an extension of the runtime's. The
    /// default (every subject is fine) suits backends without storage.
    fn check_subject(&self, subject: &Subject) -> BoxFuture<'_, Result<()>> {
        let _ = subject;
        Box::pin(async { Ok(()) })
    }
}

/// The largest buffer capacity a setting takes; larger values are capped
/// to it ([`SubscribeOptions::capacity`], the memory transport's capacity,
/// the NATS client's buffers, JetStream pull sizes).
///
/// It is `usize::MAX >> 3`, the most permits tokio's semaphore counts (its
/// bounded channels are built on one): a larger capacity would panic there.
/// No buffer can hold that many messages, so the cap changes nothing a
/// caller can observe but the absence of the panic.
pub const MAX_CAPACITY: usize = usize::MAX >> 3;

/// What to subscribe to and how.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pattern: SubjectPattern,
    /// More patterns, for one subscription to several subjects.
    also: Vec<SubjectPattern>,
    /// Durable names this subscription's consumer replaces (see
    /// [`SubscribeOptions::replaces`]).
    replaces: Vec<String>,
    /// See [`SubscribeOptions::redefine`].
    redefine: bool,
    queue_group: Option<String>,
    durable_name: Option<String>,
    max_deliver: Option<u32>,
    ack_wait: Option<Duration>,
    capacity: Option<usize>,
    partition: Option<(u32, String)>,
}

impl SubscribeOptions {
    /// Subscribe to `pattern`, with the backend's defaults for the rest.
    pub fn new(pattern: SubjectPattern) -> Self {
        SubscribeOptions {
            pattern,
            also: Vec::new(),
            replaces: Vec::new(),
            redefine: false,
            queue_group: None,
            durable_name: None,
            max_deliver: None,
            ack_wait: None,
            capacity: None,
            partition: None,
        }
    }

    /// Read only partition `index` of a stream partitioned by key
    /// ([`Capabilities::key_partitions`](crate::transport::Capabilities::key_partitions)),
    /// as one of the instances of `group` (a subject token, typically the
    /// consumer's name): with a durable name, the partition is held by one
    /// instance of the group at a time, and the group's instances share the
    /// partitions ([`Capability::OrderedAcrossInstances`]). The patterns
    /// name published subjects, as for any subscription.
    pub fn partition(mut self, index: u32, group: impl Into<String>) -> Result<Self> {
        let group = group.into();
        crate::envelope::validate_subject_token(&group)?;
        self.partition = Some((index, group));
        Ok(self)
    }

    /// Subscribe to `pattern` too, in the same subscription: messages on
    /// any of the patterns arrive as one stream, in the order the broker
    /// received them. Needs [`Capability::MultiPattern`].
    pub fn also(mut self, pattern: SubjectPattern) -> Self {
        if pattern != self.pattern && !self.also.contains(&pattern) {
            self.also.push(pattern);
        }
        self
    }

    /// Durable consumers this one takes over from (JetStream): if it does
    /// not exist yet, it is created to start after the lowest position any
    /// of them had acknowledged, instead of at the start of the stream, and
    /// the ones found are logged for removal. For a service moving from one
    /// consumer per event type to one for all of them.
    pub fn replaces(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.replaces = names.into_iter().collect();
        self
    }

    /// The named consumer is this subscription's to redefine: one that
    /// exists with other patterns is updated to these, instead of refused.
    /// For a consumer whose set of subjects changes between releases of
    /// the one service that owns it (the consumer runtime's); never for a
    /// name other code may use for other subjects.
    pub fn redefine(mut self, redefine: bool) -> Self {
        self.redefine = redefine;
        self
    }

    /// Join a queue group: each message goes to one member of the group.
    /// The name must be a valid subject token.
    pub fn queue_group(mut self, group: impl Into<String>) -> Result<Self> {
        let group = group.into();
        crate::envelope::validate_subject_token(&group)?;
        self.queue_group = Some(group);
        Ok(self)
    }

    /// A durable name: where the backend is durable, reopening a
    /// subscription with the same name resumes where it left off.
    pub fn durable_name(mut self, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        crate::envelope::validate_subject_token(&name)?;
        self.durable_name = Some(name);
        Ok(self)
    }

    /// Stop redelivering a message after this many attempts (at least 1).
    pub fn max_deliver(mut self, attempts: u32) -> Self {
        self.max_deliver = Some(attempts.max(1));
        self
    }

    /// How long a delivery may stay unsettled before it is redelivered.
    /// Any duration is taken; a backend that counts in a narrower unit caps
    /// it (JetStream: about 292 years, the server's `i64` nanoseconds).
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = Some(wait);
        self
    }

    /// How many messages the subscription buffers before publishers (memory)
    /// or the broker (NATS) must wait: at least 1, at most [`MAX_CAPACITY`].
    ///
    /// ```
    /// use events::transport::{SubjectPattern, SubscribeOptions, MAX_CAPACITY};
    /// let options = SubscribeOptions::new(SubjectPattern::parse("a.>")?).capacity(usize::MAX);
    /// assert_eq!(options.get_capacity(), Some(MAX_CAPACITY));
    /// # Ok::<(), events::Error>(())
    /// ```
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity.clamp(1, MAX_CAPACITY));
        self
    }

    /// The (first) subject pattern.
    pub fn get_pattern(&self) -> &SubjectPattern {
        &self.pattern
    }
    /// Every subject pattern: the first, then those added with
    /// [`also`](Self::also).
    pub fn get_patterns(&self) -> impl Iterator<Item = &SubjectPattern> {
        std::iter::once(&self.pattern).chain(&self.also)
    }
    /// Whether there is more than one pattern.
    pub fn is_multi_pattern(&self) -> bool {
        !self.also.is_empty()
    }
    /// The durable names this subscription's consumer replaces.
    pub fn get_replaces(&self) -> &[String] {
        &self.replaces
    }
    /// Whether an existing consumer with other patterns is updated.
    pub fn get_redefine(&self) -> bool {
        self.redefine
    }
    /// The queue group, if any.
    pub fn get_queue_group(&self) -> Option<&str> {
        self.queue_group.as_deref()
    }
    /// The durable name, if any.
    pub fn get_durable_name(&self) -> Option<&str> {
        self.durable_name.as_deref()
    }
    /// The maximum number of delivery attempts, if limited.
    pub fn get_max_deliver(&self) -> Option<u32> {
        self.max_deliver
    }
    /// The ack wait, if set.
    pub fn get_ack_wait(&self) -> Option<Duration> {
        self.ack_wait
    }
    /// The buffer capacity, if set.
    pub fn get_capacity(&self) -> Option<usize> {
        self.capacity
    }
    /// The partition and the group sharing the partitions, if set.
    pub fn get_partition(&self) -> Option<(u32, &str)> {
        self.partition.as_ref().map(|(p, g)| (*p, g.as_str()))
    }
}

/// Facts about one delivery of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryInfo {
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// The position in the stream, for persistent backends.
    pub stream_sequence: Option<u64>,
    /// The position in this consumer's deliveries, for durable backends.
    pub consumer_sequence: Option<u64>,
    /// How long the backend waits, while this delivery is held unsettled,
    /// before it gives the message to another consumer instance; `None`
    /// where a held delivery is never redelivered (memory, core NATS).
    /// [`Delivery::in_progress`] restarts that wait.
    pub ack_wait: Option<Duration>,
}

impl DeliveryInfo {
    /// The info of a delivery that is attempt `attempt`.
    pub const fn attempt(attempt: u32) -> Self {
        DeliveryInfo {
            attempt,
            stream_sequence: None,
            consumer_sequence: None,
            ack_wait: None,
        }
    }
}

/// The backend side of settling a delivery. Backends implement this; users
/// call the methods of [`Delivery`].
pub trait Acker: Send + Sync + fmt::Debug + 'static {
    /// The message was handled: never deliver it again.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// The message was not handled: deliver it again, after `delay` if given.
    /// `message` is handed back for backends that redeliver it themselves.
    fn nack(
        self: Box<Self>,
        message: Message,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<()>>;
    /// The message can never be handled: do not deliver it again.
    fn term(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// Handling goes on: reset the redelivery timer.
    fn in_progress(&self) -> BoxFuture<'_, Result<()>>;
    /// The message was fetched ahead and never handled (its subscription
    /// or consumer is closing): hand it back for another reader to take
    /// now. The default nacks it without delay; a broker on which that is
    /// not safe may leave it to its ack wait instead.
    fn release(self: Box<Self>, message: Message) -> BoxFuture<'static, Result<()>> {
        self.nack(message, None)
    }
    /// The delivery was dropped without being settled. The default does
    /// nothing, for brokers that redeliver unsettled messages on their own
    /// after their ack wait.
    fn abandon(self: Box<Self>, message: Message) {
        let _ = message;
    }
}

/// One delivery of a message, to be settled with [`ack`](Self::ack),
/// [`nack`](Self::nack) or [`term`](Self::term).
///
/// A delivery dropped without being settled is treated like a crashed
/// handler: the backend delivers it again after its ack wait. Backends
/// without acknowledgements (core NATS) accept `ack` and `term` as no-ops
/// and refuse `nack` with [`ErrorKind::Unsupported`].
#[must_use = "a delivery should be settled with ack, nack or term"]
pub struct Delivery {
    message: Option<Message>,
    info: DeliveryInfo,
    settle: Settle,
    /// When the backend's ack wait last (re)started for it, where that was
    /// before it was handed over (a delivery kept alive in a buffer).
    /// Read by the consumer runtime's keep-alive.
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    ack_wait_since: Option<std::time::Instant>,
}

/// How a delivery is settled.
enum Settle {
    /// Not at all: the backend has no acknowledgements, or it was settled.
    Nothing,
    /// Through a backend's [`Acker`].
    Acker(Box<dyn Acker>),
    /// By a publish to the reply subject, held in place: settling it
    /// allocates neither an acker nor a future.
    #[cfg(feature = "jetstream")]
    Reply(reply::ReplyAcker),
}

impl Settle {
    fn take(&mut self) -> Settle {
        std::mem::replace(self, Settle::Nothing)
    }
}

/// The error of handing a message back on a transport without
/// acknowledgements.
fn cannot_redeliver() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "this transport has no acknowledgements, so it cannot redeliver",
    )
}

impl Delivery {
    /// A delivery settled through `acker`.
    pub fn new(message: Message, info: DeliveryInfo, acker: Box<dyn Acker>) -> Self {
        Delivery {
            message: Some(message),
            info,
            settle: Settle::Acker(acker),
            ack_wait_since: None,
        }
    }

    /// A delivery settled by a publish to its reply subject.
    #[cfg(feature = "jetstream")]
    pub(crate) fn settled_by_reply(
        message: Message,
        info: DeliveryInfo,
        acker: reply::ReplyAcker,
    ) -> Self {
        Delivery {
            message: Some(message),
            info,
            settle: Settle::Reply(acker),
            ack_wait_since: None,
        }
    }

    /// A delivery from a backend without acknowledgements.
    pub fn unacknowledged(message: Message, info: DeliveryInfo) -> Self {
        Delivery {
            message: Some(message),
            info,
            settle: Settle::Nothing,
            ack_wait_since: None,
        }
    }

    /// When the ack wait last (re)started, if the backend knows it to be
    /// earlier than the hand-over.
    #[cfg(feature = "runtime")]
    pub(crate) fn ack_wait_since(&self) -> Option<std::time::Instant> {
        self.ack_wait_since
    }

    #[cfg(feature = "jetstream")]
    pub(crate) fn set_ack_wait_since(&mut self, since: std::time::Instant) {
        self.ack_wait_since = Some(since);
    }

    /// The message.
    pub fn message(&self) -> &Message {
        self.message
            .as_ref()
            .expect("message is present until settled")
    }

    /// Attempt number and positions.
    pub fn info(&self) -> DeliveryInfo {
        self.info
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.info.attempt
    }

    /// Whether this delivery must be settled (the backend has acks).
    pub fn needs_ack(&self) -> bool {
        !matches!(self.settle, Settle::Nothing)
    }

    /// Marks the message handled.
    pub fn ack(self) -> impl Future<Output = Result<()>> + Send + 'static {
        // Not an `async fn`: that would keep the delivery twice in its
        // future (argument and local), and the consumer runtime holds this
        // future in every handling.
        let mut delivery = self;
        async move {
            match delivery.settle.take() {
                Settle::Nothing => Ok(()),
                Settle::Acker(acker) => acker.ack().await,
                #[cfg(feature = "jetstream")]
                Settle::Reply(acker) => acker.ack().await,
            }
        }
    }

    /// [`ack`](Self::ack) as the backend's own future, for a caller that
    /// polls it in place (the consumer runtime's fast path); `None` where
    /// there is nothing to wait for. Unlike `ack`, the delivery is gone at
    /// once: dropping the future unpolled does not abandon it (the backend
    /// redelivers after its ack wait, or never on memory), so poll it.
    #[cfg(feature = "runtime")]
    pub(crate) fn into_ack(mut self) -> Option<BoxFuture<'static, Result<()>>> {
        match self.settle.take() {
            Settle::Nothing => None,
            Settle::Acker(acker) => Some(acker.ack()),
            #[cfg(feature = "jetstream")]
            Settle::Reply(acker) => Some(Box::pin(acker.ack())),
        }
    }

    /// Asks for the message again, after `delay` if given.
    pub fn nack(
        self,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        // Not an `async fn`: that would keep the delivery twice in its
        // future (argument and local).
        let mut delivery = self;
        async move {
            match delivery.settle.take() {
                Settle::Nothing => Err(cannot_redeliver()),
                Settle::Acker(acker) => {
                    let message = delivery
                        .message
                        .take()
                        .expect("message is present until settled");
                    acker.nack(message, delay).await
                }
                #[cfg(feature = "jetstream")]
                Settle::Reply(acker) => acker.nack(delay).await,
            }
        }
    }

    /// Hands back a delivery that was never handled (fetched ahead by a
    /// subscription or consumer that is closing), for another reader to
    /// take at once: a nack without delay, unless the backend knows that is
    /// unsafe (see [`Acker::release`]). Fails with
    /// [`ErrorKind::Unsupported`] without acknowledgements (the message is
    /// gone: at-most-once).
    pub fn release(self) -> impl Future<Output = Result<()>> + Send + 'static {
        let mut delivery = self;
        async move {
            match delivery.settle.take() {
                Settle::Nothing => Err(cannot_redeliver()),
                Settle::Acker(acker) => {
                    let message = delivery
                        .message
                        .take()
                        .expect("message is present until settled");
                    acker.release(message).await
                }
                // Released as `Acker::release` does by default: a nack.
                #[cfg(feature = "jetstream")]
                Settle::Reply(acker) => acker.nack(None).await,
            }
        }
    }

    /// Marks the message as never deliverable again.
    pub fn term(self) -> impl Future<Output = Result<()>> + Send + 'static {
        let mut delivery = self;
        async move {
            match delivery.settle.take() {
                Settle::Nothing => Ok(()),
                Settle::Acker(acker) => acker.term().await,
                #[cfg(feature = "jetstream")]
                Settle::Reply(acker) => acker.term().await,
            }
        }
    }

    /// Tells the backend that handling goes on (resets its ack wait).
    pub async fn in_progress(&self) -> Result<()> {
        match &self.settle {
            Settle::Nothing => Ok(()),
            Settle::Acker(acker) => acker.in_progress().await,
            #[cfg(feature = "jetstream")]
            Settle::Reply(acker) => acker.in_progress().await,
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // One settled by reply, dropped unsettled, is redelivered after the
        // ack wait, as the default `Acker::abandon` leaves it.
        if let (Settle::Acker(acker), Some(message)) = (self.settle.take(), self.message.take()) {
            acker.abandon(message);
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("info", &self.info)
            .field("needs_ack", &self.needs_ack())
            .finish()
    }
}

/// A stream of deliveries. Ends when the subscription or the transport is
/// closed; an `Err` item reports a transport problem and the stream goes on.
///
/// Dropping a subscription releases what it fetched ahead and did not hand
/// out yet (JetStream: nacked at once, for another instance to take),
/// instead of leaving it to the ack wait. [`close`](Self::close) does the
/// same and waits until it is done.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>,
    /// The backend's way to stop fetching; `None` once used, or for a
    /// backend that fetches nothing ahead of the reader.
    stop: Option<Box<dyn FnOnce() + Send>>,
}

/// How long [`Subscription::close`] waits for a backend to hand over what
/// it fetched ahead (JetStream: until its open pull ends on the server,
/// within the pull's expiry, 5 s by default).
const CLOSE_GRACE: Duration = Duration::from_secs(10);

impl Subscription {
    /// Wraps a backend's stream.
    pub fn new(stream: impl Stream<Item = Result<Delivery>> + Send + 'static) -> Self {
        Subscription {
            inner: Box::pin(stream),
            stop: None,
        }
    }

    /// Wraps a backend's stream with the backend's way to stop fetching:
    /// after `stop` runs, the stream yields what the backend already holds
    /// for this subscription, then ends.
    pub fn with_stop(
        stream: impl Stream<Item = Result<Delivery>> + Send + 'static,
        stop: impl FnOnce() + Send + 'static,
    ) -> Self {
        Subscription {
            inner: Box::pin(stream),
            stop: Some(Box::new(stop)),
        }
    }

    /// The next delivery, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        futures_util::StreamExt::next(self).await
    }

    /// Stops fetching: nothing more is asked of the broker for this
    /// subscription. The stream still yields what was fetched before (read
    /// it to the end, or drop it to release it), then ends. On a backend
    /// that does not fetch ahead, this does nothing and the stream goes on.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }

    /// Whether [`stop`](Self::stop) ends this stream (the backend fetches
    /// ahead and knows what it holds).
    pub fn can_stop(&self) -> bool {
        self.stop.is_some()
    }

    /// Stops fetching and releases everything fetched ahead and not yet
    /// handed out: each delivery is nacked without delay, in the order it
    /// was received, so the broker hands it to another reader at once (in
    /// that order). Returns how many were released. Deliveries handed out
    /// before are the caller's to settle.
    ///
    /// On a backend without acknowledgements (core NATS), what was
    /// buffered is dropped (at-most-once); on one without a stop hook,
    /// only what is already buffered is taken.
    pub async fn close(mut self) -> usize {
        use futures_util::FutureExt as _;
        let mut released = 0;
        if self.can_stop() {
            self.stop();
            // Read to the end: the backend hands over what it fetched,
            // then ends the stream. Bounded, in case the broker is gone.
            let drain = async {
                while let Some(item) = self.next().await {
                    released += release(item).await;
                }
            };
            if within_grace(drain).await.is_none() {
                tracing::warn!(?CLOSE_GRACE, "a closing subscription did not end in time; what it still holds comes back after the ack wait");
            }
        } else {
            while let Some(item) = self.next().now_or_never().flatten() {
                released += release(item).await;
            }
        }
        released
    }
}

/// Nacks a delivery a closing subscription had not handed out; 1 if there
/// was one.
async fn release(item: Result<Delivery>) -> usize {
    let Ok(delivery) = item else { return 0 };
    match delivery.release().await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            tracing::debug!("a buffered message of a closing subscription dropped (at-most-once)");
        }
        Err(e) => {
            tracing::warn!(error = %e, "releasing a buffered delivery failed; it comes back after the ack wait");
        }
    }
    1
}

/// `work`, bounded by [`CLOSE_GRACE`] inside a tokio runtime; `None` if
/// that passed first.
#[cfg(any(feature = "memory", feature = "runtime", feature = "nats"))]
async fn within_grace<F: Future>(work: F) -> Option<F::Output> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Some(work.await);
    }
    tokio::time::timeout(CLOSE_GRACE, work).await.ok()
}

#[cfg(not(any(feature = "memory", feature = "runtime", feature = "nats")))]
async fn within_grace<F: Future>(work: F) -> Option<F::Output> {
    let _ = CLOSE_GRACE;
    Some(work.await)
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The backend releases what it holds once its reader is gone; the
        // stop hook lets it stop fetching first.
        self.stop();
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("can_stop", &self.can_stop())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: Box<dyn Transport>, _: Box<dyn Acker>) {}

    #[test]
    fn the_capacity_cap_is_tokio_s_semaphore_limit() {
        // Defined without tokio (the transport layer does not depend on
        // it): the two must agree, or a capped capacity could still panic.
        assert_eq!(MAX_CAPACITY, tokio::sync::Semaphore::MAX_PERMITS);
        let options = SubscribeOptions::new(SubjectPattern::parse("a").unwrap());
        assert_eq!(options.clone().capacity(0).get_capacity(), Some(1));
        assert_eq!(
            options.capacity(usize::MAX).get_capacity(),
            Some(MAX_CAPACITY)
        );
    }

    #[test]
    fn options_validate_group_and_durable_names() {
        let p = SubjectPattern::parse("a.b").unwrap();
        assert!(SubscribeOptions::new(p.clone())
            .queue_group("workers")
            .is_ok());
        assert!(SubscribeOptions::new(p.clone()).queue_group("a.b").is_err());
        assert!(SubscribeOptions::new(p).durable_name("").is_err());
    }

    #[tokio::test]
    async fn unacknowledged_deliveries_refuse_nack_and_accept_ack() {
        let m = Message::new(Subject::parse("a").unwrap(), &b"x"[..]);
        let d = Delivery::unacknowledged(m.clone(), DeliveryInfo::attempt(1));
        assert!(!d.needs_ack());
        assert_eq!(
            d.nack(None).await.unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        Delivery::unacknowledged(m, DeliveryInfo::attempt(1))
            .ack()
            .await
            .unwrap();
    }
}
