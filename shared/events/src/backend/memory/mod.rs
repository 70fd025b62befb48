//! The in-memory transport: the embedded default, for tests and single-process
//! services. No server needed.
//!
//! Semantics:
//! - `publish` returns once the message sits in the buffer of every matching
//!   subscription (one member per queue group). It is all or nothing: if one
//!   buffer is still full after [`MemoryConfig::publish_timeout`], no
//!   subscriber gets the message and the call fails with
//!   [`ErrorKind::Unavailable`]. Nothing is dropped silently and no buffer
//!   grows without bound.
//! - A message nobody subscribes to is discarded, as on NATS.
//! - `nack` redelivers after the requested delay with the attempt count
//!   increased; a delivery dropped without being settled is redelivered
//!   after the ack wait. Redelivery in a queue group may go to another member.
//! - Nothing survives the process: no durability, no history.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};
use crate::transport::{
    Acker, Capabilities, Delivery, DeliveryInfo, Message, Subject, SubjectPattern,
    SubscribeOptions, Subscription, Transport,
};

/// Settings of the in-memory transport.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    capacity: usize,
    publish_timeout: Duration,
    ack_wait: Duration,
    max_message_size: usize,
}

impl MemoryConfig {
    /// The defaults: 1,024 buffered messages per subscription, publishes
    /// wait up to 5 s for room, unsettled deliveries come back after 30 s,
    /// messages up to 1 MiB (the NATS default, so tests catch oversized
    /// events before production does).
    pub fn new() -> Self {
        MemoryConfig {
            capacity: 1024,
            publish_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
            max_message_size: 1024 * 1024,
        }
    }

    /// Messages buffered per subscription, unless the subscription sets its
    /// own: at least 1, at most [`MAX_CAPACITY`](crate::transport::MAX_CAPACITY).
    ///
    /// ```
    /// let config = events::backend::memory::MemoryConfig::new().capacity(64);
    /// assert_eq!(config.get_capacity(), 64);
    /// ```
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.clamp(1, crate::transport::MAX_CAPACITY);
        self
    }

    /// How long a publish waits for room in a full buffer before failing
    /// with [`ErrorKind::Unavailable`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How long a delivery may stay unsettled (dropped) before it is
    /// delivered again, unless the subscription sets its own.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// The largest message accepted (headers and body).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Default buffer capacity per subscription.
    pub fn get_capacity(&self) -> usize {
        self.capacity
    }
    /// Publish timeout.
    pub fn get_publish_timeout(&self) -> Duration {
        self.publish_timeout
    }
    /// Default ack wait.
    pub fn get_ack_wait(&self) -> Duration {
        self.ack_wait
    }
    /// Largest message accepted.
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The in-memory transport. Cheap to clone; clones share the same bus.
#[derive(Clone)]
pub struct MemoryTransport {
    shared: Arc<Shared>,
}

struct Shared {
    /// Copy-on-write routing table: publishers take a snapshot without
    /// holding the lock across an await.
    routes: RwLock<Arc<Routes>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    config: MemoryConfig,
    capabilities: Capabilities,
}

#[derive(Default)]
struct Routes {
    plain: Vec<Arc<Sub>>,
    groups: Vec<Group>,
}

struct Group {
    name: String,
    members: Vec<Arc<Sub>>,
    /// Round-robin start; shared across table rebuilds of the same group.
    next: Arc<AtomicUsize>,
}

struct Sub {
    id: u64,
    pattern: SubjectPattern,
    group: Option<String>,
    tx: mpsc::Sender<Queued>,
    max_deliver: Option<u32>,
    ack_wait: Duration,
}

struct Queued {
    message: Message,
    attempt: u32,
}

impl MemoryTransport {
    /// A new, empty bus with default settings.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::new())
    }

    /// A new, empty bus.
    pub fn with_config(config: MemoryConfig) -> Self {
        let mut capabilities = Capabilities::none();
        capabilities.redelivery = true;
        capabilities.delayed_redelivery = true;
        capabilities.ordered_per_publisher = true;
        capabilities.queue_groups = true;
        capabilities.wildcards = true;
        capabilities.max_message_size = config.max_message_size;
        MemoryTransport {
            shared: Arc::new(Shared {
                routes: RwLock::new(Arc::new(Routes::default())),
                next_id: AtomicU64::new(1),
                closed: AtomicBool::new(false),
                config,
                capabilities,
            }),
        }
    }

    /// How many subscriptions are open.
    pub fn subscription_count(&self) -> usize {
        let routes = self.shared.snapshot();
        routes.plain.len() + routes.groups.iter().map(|g| g.members.len()).sum::<usize>()
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("config", &self.shared.config)
            .field("subscriptions", &self.subscription_count())
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Shared {
    fn snapshot(&self) -> Arc<Routes> {
        // A poisoned lock only means a panic elsewhere while swapping an
        // Arc; the table itself is always whole.
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut Vec<Arc<Sub>>)) {
        let mut guard = self.routes.write().unwrap_or_else(|e| e.into_inner());
        let mut subs: Vec<Arc<Sub>> = guard
            .plain
            .iter()
            .chain(guard.groups.iter().flat_map(|g| g.members.iter()))
            .cloned()
            .collect();
        change(&mut subs);
        let mut routes = Routes::default();
        for sub in subs {
            match &sub.group {
                None => routes.plain.push(sub),
                Some(name) => match routes.groups.iter_mut().find(|g| &g.name == name) {
                    Some(group) => group.members.push(sub),
                    None => {
                        let next = guard
                            .groups
                            .iter()
                            .find(|g| &g.name == name)
                            .map_or_else(|| Arc::new(AtomicUsize::new(0)), |g| g.next.clone());
                        routes.groups.push(Group {
                            name: name.clone(),
                            members: vec![sub],
                            next,
                        });
                    }
                },
            }
        }
        *guard = Arc::new(routes);
    }

    /// The subscriptions a message on `subject` goes to: every matching plain
    /// subscription and one matching member per group, preferring a member
    /// with room in its buffer.
    fn targets(routes: &Routes, message: &Message) -> Vec<Arc<Sub>> {
        let mut out: Vec<Arc<Sub>> = routes
            .plain
            .iter()
            .filter(|s| s.pattern.matches(&message.subject))
            .cloned()
            .collect();
        for group in &routes.groups {
            if let Some(member) = Self::pick_member(group, |s| s.pattern.matches(&message.subject))
            {
                out.push(member);
            }
        }
        out
    }

    fn pick_member(group: &Group, eligible: impl Fn(&Sub) -> bool) -> Option<Arc<Sub>> {
        let n = group.members.len();
        let start = group.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for i in 0..n {
            let member = &group.members[(start + i) % n];
            if !eligible(member) || member.tx.is_closed() {
                continue;
            }
            if member.tx.capacity() > 0 {
                return Some(member.clone());
            }
            fallback.get_or_insert_with(|| member.clone());
        }
        fallback
    }

    /// Where a redelivery goes: the same subscription, or for a queue group
    /// any live member of the group.
    fn redelivery_target(
        &self,
        sub_id: u64,
        group: Option<&str>,
        subject: &Subject,
    ) -> Option<Arc<Sub>> {
        let routes = self.snapshot();
        match group {
            // Only a member whose pattern matches: members of one group may
            // subscribe to different subjects (different event types).
            Some(name) => routes
                .groups
                .iter()
                .find(|g| g.name == name)
                .and_then(|g| Self::pick_member(g, |s| s.pattern.matches(subject))),
            None => routes.plain.iter().find(|s| s.id == sub_id).cloned(),
        }
    }
}

impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    fn publish(&self, message: Message) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let shared = &self.shared;
            if shared.closed.load(Ordering::Acquire) {
                return Err(Error::closed("the memory transport is closed"));
            }
            let size = message.wire_len();
            if size > shared.config.max_message_size {
                return Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "message of {size} bytes exceeds the limit of {} bytes",
                        shared.config.max_message_size
                    ),
                ));
            }
            let routes = shared.snapshot();
            let targets = Shared::targets(&routes, &message);
            if targets.is_empty() {
                return Ok(());
            }
            // Reserve a slot in every target first, then send: either every
            // subscriber gets the message or none does.
            let mut permits = Vec::with_capacity(targets.len());
            for target in &targets {
                let permit = match target.tx.try_reserve() {
                    Ok(permit) => Some(permit),
                    Err(mpsc::error::TrySendError::Closed(())) => None,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        match tokio::time::timeout(shared.config.publish_timeout, target.tx.reserve()).await {
                            Ok(Ok(permit)) => Some(permit),
                            Ok(Err(_closed)) => None,
                            Err(_elapsed) => {
                                return Err(Error::new(
                                    ErrorKind::Unavailable,
                                    format!(
                                        "a subscriber of `{}` has been full for {:?}; nothing was delivered",
                                        message.subject, shared.config.publish_timeout
                                    ),
                                ))
                            }
                        }
                    }
                };
                permits.push(permit);
            }
            let mut permits = permits.into_iter().flatten().peekable();
            let mut message = Some(message);
            while let Some(permit) = permits.next() {
                let m = if permits.peek().is_some() {
                    message.clone()
                } else {
                    message.take()
                };
                if let Some(m) = m {
                    permit.send(Queued {
                        message: m,
                        attempt: 1,
                    });
                }
            }
            Ok(())
        })
    }

    fn subscribe(&self, options: SubscribeOptions) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(async move {
            let shared = &self.shared;
            if shared.closed.load(Ordering::Acquire) {
                return Err(Error::closed("the memory transport is closed"));
            }
            if options.get_durable_name().is_some() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "the memory transport has no durable subscriptions",
                ));
            }
            let capacity = options.get_capacity().unwrap_or(shared.config.capacity);
            let (tx, rx) = mpsc::channel(capacity);
            let sub = Arc::new(Sub {
                id: shared.next_id.fetch_add(1, Ordering::Relaxed),
                pattern: options.get_pattern().clone(),
                group: options.get_queue_group().map(str::to_owned),
                tx,
                max_deliver: options.get_max_deliver(),
                ack_wait: options.get_ack_wait().unwrap_or(shared.config.ack_wait),
            });
            let id = sub.id;
            let group = sub.group.clone();
            let max_deliver = sub.max_deliver;
            let ack_wait = sub.ack_wait;
            shared.update(|subs| subs.push(sub));
            tracing::debug!(subscription = id, pattern = %options.get_pattern(), group = ?group, "memory subscription opened");
            Ok(Subscription::new(MemorySubscription {
                rx,
                shared: self.shared.clone(),
                id,
                group,
                max_deliver,
                ack_wait,
            }))
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        // A successful publish has already placed the message in every
        // subscriber's buffer: there is nothing in flight to wait for.
        Box::pin(async { Ok(()) })
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if !self.shared.closed.swap(true, Ordering::AcqRel) {
                // Dropping the table drops the senders: each subscription
                // yields what it has buffered, then ends.
                self.shared.update(Vec::clear);
                tracing::debug!("memory transport closed");
            }
            Ok(())
        })
    }
}

struct MemorySubscription {
    rx: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
    id: u64,
    group: Option<String>,
    max_deliver: Option<u32>,
    ack_wait: Duration,
}

impl Stream for MemorySubscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Queued { message, attempt })) => {
                let acker = MemoryAcker {
                    shared: self.shared.clone(),
                    sub_id: self.id,
                    group: self.group.clone(),
                    attempt,
                    max_deliver: self.max_deliver,
                    ack_wait: self.ack_wait,
                };
                Poll::Ready(Some(Ok(Delivery::new(
                    message,
                    DeliveryInfo::attempt(attempt),
                    Box::new(acker),
                ))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.update(|subs| subs.retain(|s| s.id != id));
        self.rx.close();
        // Messages this member of a queue group had buffered belong to the
        // group: hand them to the remaining members rather than lose them.
        if let Some(group) = self.group.clone() {
            while let Ok(queued) = self.rx.try_recv() {
                match self
                    .shared
                    .redelivery_target(id, Some(&group), &queued.message.subject)
                {
                    Some(target) => {
                        if let Err(e) = target.tx.try_send(queued) {
                            let q = match e {
                                mpsc::error::TrySendError::Full(q)
                                | mpsc::error::TrySendError::Closed(q) => q,
                            };
                            tracing::warn!(subject = %q.message.subject, group, "message of a closed queue-group member dropped: the other members are full");
                        }
                    }
                    None => break,
                }
            }
        }
        tracing::debug!(subscription = id, "memory subscription closed");
    }
}

#[derive(Debug)]
struct MemoryAcker {
    shared: Arc<Shared>,
    sub_id: u64,
    group: Option<String>,
    attempt: u32,
    max_deliver: Option<u32>,
    ack_wait: Duration,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl MemoryAcker {
    /// Schedules attempt `attempt + 1` of `message` after `delay`.
    fn redeliver(self, message: Message, delay: Duration) {
        if let Some(max) = self.max_deliver {
            if self.attempt >= max {
                tracing::warn!(
                    subject = %message.subject,
                    attempts = self.attempt,
                    "message reached max_deliver and will not be delivered again"
                );
                return;
            }
        }
        let queued = Queued {
            message,
            attempt: self.attempt + 1,
        };
        let deliver = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return;
            }
            match self.shared.redelivery_target(
                self.sub_id,
                self.group.as_deref(),
                &queued.message.subject,
            ) {
                Some(target) => {
                    if let Err(e) = target.tx.send(queued).await {
                        tracing::debug!(subject = %e.0.message.subject, "redelivery target closed");
                    }
                }
                None => {
                    tracing::debug!(subject = %queued.message.subject, "subscription closed before redelivery")
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(deliver);
            }
            Err(_) => tracing::warn!(
                "a memory delivery was dropped outside a tokio runtime and cannot be redelivered"
            ),
        }
    }
}

impl Acker for MemoryAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn nack(
        self: Box<Self>,
        message: Message,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<()>> {
        self.redeliver(message, delay.unwrap_or_default());
        Box::pin(async { Ok(()) })
    }

    fn term(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn abandon(self: Box<Self>, message: Message) {
        let wait = self.ack_wait;
        self.redeliver(message, wait);
    }
}

#[cfg(test)]
mod tests;
