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
//!   after the ack wait. Each subscription keeps its waiting redeliveries in
//!   one timer queue, polled by its stream (no task per nack). While
//!   [`MemoryConfig::max_waiting_redeliveries`] wait, it takes no new
//!   messages from its buffer (publishers then wait for room, as for a slow
//!   subscriber), like JetStream at a consumer's max ack pending; a nack is
//!   never refused or dropped.
//! - A queue-group member that leaves hands its buffered messages and
//!   waiting redeliveries to the remaining members, as do its deliveries
//!   settled later. With no member left they are dropped, with a `warn` log
//!   that counts them.
//! - Nothing survives the process: no durability, no history.

use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

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
    max_waiting_redeliveries: usize,
}

impl MemoryConfig {
    /// The defaults: 1,024 buffered messages per subscription, publishes
    /// wait up to 5 s for room, unsettled deliveries come back after 30 s,
    /// messages up to 1 MiB (the NATS default, so tests catch oversized
    /// events before production does), up to 1,024 redeliveries waiting per
    /// subscription.
    pub fn new() -> Self {
        MemoryConfig {
            capacity: 1024,
            publish_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
            max_message_size: 1024 * 1024,
            max_waiting_redeliveries: 1024,
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

    /// How many redeliveries (nacked, or dropped unsettled and waiting for
    /// the ack wait) a subscription holds before it stops taking new
    /// messages until some are due, as JetStream stops at a consumer's max
    /// ack pending (at least 1). New messages then stay in its buffer and
    /// publishers wait for room. A nack is never refused.
    ///
    /// ```
    /// let config = events::backend::memory::MemoryConfig::new().max_waiting_redeliveries(256);
    /// assert_eq!(config.get_max_waiting_redeliveries(), 256);
    /// ```
    pub fn max_waiting_redeliveries(mut self, redeliveries: usize) -> Self {
        self.max_waiting_redeliveries = redeliveries.max(1);
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
    /// Redeliveries a subscription holds before it stops taking new ones.
    pub fn get_max_waiting_redeliveries(&self) -> usize {
        self.max_waiting_redeliveries
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
    patterns: Vec<SubjectPattern>,
    group: Option<String>,
    tx: mpsc::Sender<Queued>,
    /// Where a leaving member of its group hands it work.
    redeliveries: Arc<Redeliveries>,
}

impl Sub {
    fn matches(&self, subject: &Subject) -> bool {
        self.patterns.iter().any(|p| p.matches(subject))
    }
}

struct Queued {
    message: Message,
    attempt: u32,
}

/// A subscription's redeliveries waiting for their time: one timer queue,
/// polled by the subscription's stream, instead of a task per nack.
struct Redeliveries {
    timers: Mutex<Timers>,
    /// While this many wait, the subscription takes no new messages.
    bound: usize,
}

struct Timers {
    heap: BinaryHeap<Timed>,
    /// Keeps redeliveries due at the same instant in the order they came.
    seq: u64,
    /// The subscription's stream, waiting for a new earliest redelivery.
    waker: Option<Waker>,
    /// The subscription has left: a push is refused and handed on.
    closed: bool,
}

struct Timed {
    due: Instant,
    seq: u64,
    queued: Queued,
}

// The heap is a max-heap: the earliest (due, seq) compares greatest.
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Timed {}

impl Redeliveries {
    fn new(bound: usize) -> Self {
        Redeliveries {
            timers: Mutex::new(Timers {
                heap: BinaryHeap::new(),
                seq: 0,
                waker: None,
                closed: false,
            }),
            bound,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Timers> {
        // Every change under the lock is one heap operation: a panic
        // elsewhere cannot leave it half done.
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `queued` for `due`; gives it back if the subscription has left.
    fn push(&self, due: Instant, queued: Queued) -> std::result::Result<(), Queued> {
        let waker = {
            let mut timers = self.lock();
            if timers.closed {
                return Err(queued);
            }
            let seq = timers.seq;
            timers.seq += 1;
            let earliest = timers.heap.peek().is_none_or(|first| due < first.due);
            timers.heap.push(Timed { due, seq, queued });
            // A later one is found when the stream wakes for the earliest.
            if earliest {
                timers.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Refuses further pushes; what waits stays.
    fn refuse(&self) {
        self.lock().closed = true;
    }

    /// Refuses further pushes and takes what waits.
    fn close(&self) -> Vec<Timed> {
        let mut timers = self.lock();
        timers.closed = true;
        timers.waker = None;
        std::mem::take(&mut timers.heap).into_vec()
    }
}

impl fmt::Debug for Redeliveries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redeliveries")
            .field("waiting", &self.lock().heap.len())
            .field("bound", &self.bound)
            .finish()
    }
}

/// `now + delay`, or about 30 years from now if that overflows (a nack may
/// ask for any delay; an `Instant` cannot hold every one).
fn due_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// How often a subscription holding back new messages says so.
const PAUSED_WARN_EVERY: Duration = Duration::from_secs(10);

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
        capabilities.multi_pattern = true;
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
            .filter(|s| s.matches(&message.subject))
            .cloned()
            .collect();
        for group in &routes.groups {
            if let Some(member) = Self::pick_member(group, |s| s.matches(&message.subject)) {
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

    /// A live member of `group` for a message on `subject`: only a member
    /// whose pattern matches, since members of one group may subscribe to
    /// different subjects (different event types).
    fn group_member(&self, group: &str, subject: &Subject) -> Option<Arc<Sub>> {
        self.snapshot()
            .groups
            .iter()
            .find(|g| g.name == group)
            .and_then(|g| Self::pick_member(g, |s| s.matches(subject)))
    }

    /// A subscription stops: out of the routing table, and its timer
    /// queue refuses new redeliveries (later nacks of its deliveries go to
    /// the rest of its group). What already waits there is handed on when
    /// the subscription is dropped.
    fn leave(&self, id: u64, redeliveries: &Redeliveries) {
        self.update(|subs| subs.retain(|s| s.id != id));
        redeliveries.refuse();
    }

    /// Hands a leaving member's messages to the remaining members of
    /// `group`, each at its due time. Returns how many found no member.
    fn hand_on(&self, group: &str, messages: impl IntoIterator<Item = (Instant, Queued)>) -> usize {
        let mut dropped = 0;
        for (due, mut queued) in messages {
            // A member picked as it leaves refuses the message; it is out
            // of the routing table by then, so the next pick is another.
            let mut tries = 0;
            loop {
                let member = if tries < 16 {
                    self.group_member(group, &queued.message.subject)
                } else {
                    None
                };
                let Some(member) = member else {
                    dropped += 1;
                    break;
                };
                match member.redeliveries.push(due, queued) {
                    Ok(()) => break,
                    Err(back) => queued = back,
                }
                tries += 1;
            }
        }
        dropped
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
            if options.get_partition().is_some() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "the memory transport has no streams partitioned by key",
                ));
            }
            if options.get_durable_name().is_some() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "the memory transport has no durable subscriptions",
                ));
            }
            let capacity = options.get_capacity().unwrap_or(shared.config.capacity);
            let (tx, rx) = mpsc::channel(capacity);
            let redeliveries = Arc::new(Redeliveries::new(shared.config.max_waiting_redeliveries));
            let sub = Arc::new(Sub {
                id: shared.next_id.fetch_add(1, Ordering::Relaxed),
                patterns: options.get_patterns().cloned().collect(),
                group: options.get_queue_group().map(str::to_owned),
                tx,
                redeliveries: redeliveries.clone(),
            });
            let id = sub.id;
            let group = sub.group.clone();
            shared.update(|subs| subs.push(sub));
            tracing::debug!(subscription = id, pattern = %options.get_pattern(), group = ?group, "memory subscription opened");
            let shared = self.shared.clone();
            let leaving = redeliveries.clone();
            Ok(Subscription::with_stop(
                MemorySubscription {
                    rx,
                    shared: self.shared.clone(),
                    id,
                    group,
                    max_deliver: options.get_max_deliver(),
                    ack_wait: options.get_ack_wait().unwrap_or(shared.config.ack_wait),
                    redeliveries,
                    sleep: None,
                    last_paused_warning: None,
                },
                // Out of the routing table, nothing new arrives: the stream
                // yields what it buffered, then ends. What it nacks from
                // here on, and what waits to be redelivered to it, goes to
                // the rest of its group.
                move || shared.leave(id, &leaving),
            ))
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
    redeliveries: Arc<Redeliveries>,
    /// Wakes the stream when its earliest redelivery is due.
    sleep: Option<Pin<Box<Sleep>>>,
    last_paused_warning: Option<Instant>,
}

impl MemorySubscription {
    fn delivery(&self, Queued { message, attempt }: Queued) -> Delivery {
        let acker = MemoryAcker {
            shared: self.shared.clone(),
            group: self.group.clone(),
            redeliveries: self.redeliveries.clone(),
            attempt,
            max_deliver: self.max_deliver,
            ack_wait: self.ack_wait,
        };
        Delivery::new(message, DeliveryInfo::attempt(attempt), Box::new(acker))
    }

    fn warn_paused(&mut self, waiting: usize) {
        let now = Instant::now();
        if self
            .last_paused_warning
            .is_some_and(|at| now.duration_since(at) < PAUSED_WARN_EVERY)
        {
            return;
        }
        self.last_paused_warning = Some(now);
        tracing::warn!(
            subscription = self.id,
            pending_redeliveries = waiting,
            "memory subscription takes no new messages until some of its redeliveries are due (max_waiting_redeliveries reached); publishers wait for room"
        );
    }
}

impl Stream for MemorySubscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // The deadline of a timer that has fired: due whatever the clock
        // reads, so that a fired timer never spins the loop.
        let mut fired = None;
        loop {
            // A closed transport yields what was buffered, then ends;
            // redeliveries still waiting end with it.
            if this.shared.closed.load(Ordering::Acquire) {
                return match this.rx.poll_recv(cx) {
                    Poll::Ready(Some(queued)) => Poll::Ready(Some(Ok(this.delivery(queued)))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                };
            }
            let now = fired.map_or_else(Instant::now, |due| Instant::now().max(due));
            let (next_due, waiting) = {
                let mut timers = this.redeliveries.lock();
                if timers.heap.peek().is_some_and(|first| first.due <= now) {
                    if let Some(timed) = timers.heap.pop() {
                        drop(timers);
                        return Poll::Ready(Some(Ok(this.delivery(timed.queued))));
                    }
                }
                if !timers
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    timers.waker = Some(cx.waker().clone());
                }
                (timers.heap.peek().map(|first| first.due), timers.heap.len())
            };
            if waiting < this.redeliveries.bound {
                match this.rx.poll_recv(cx) {
                    Poll::Ready(Some(queued)) => {
                        return Poll::Ready(Some(Ok(this.delivery(queued))))
                    }
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => {}
                }
            } else {
                this.warn_paused(waiting);
            }
            let Some(due) = next_due else {
                return Poll::Pending;
            };
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if sleep.deadline() != due {
                sleep.as_mut().reset(due);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            fired = Some(due);
        }
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.update(|subs| subs.retain(|s| s.id != id));
        self.rx.close();
        let waiting = self.redeliveries.close();
        let mut buffered = Vec::new();
        while let Ok(queued) = self.rx.try_recv() {
            buffered.push(queued);
        }
        if self.shared.closed.load(Ordering::Acquire) {
            tracing::debug!(subscription = id, "memory subscription closed");
            return;
        }
        match &self.group {
            // What this member of a queue group holds belongs to the group:
            // the remaining members get it, the buffered messages at once
            // and the redeliveries when due.
            Some(group) => {
                let now = Instant::now();
                let messages = buffered
                    .into_iter()
                    .map(|queued| (now, queued))
                    .chain(waiting.into_iter().map(|timed| (timed.due, timed.queued)));
                let dropped = self.shared.hand_on(group, messages);
                if dropped > 0 {
                    tracing::warn!(
                        subscription = id,
                        group = group.as_str(),
                        dropped,
                        "a leaving queue-group member's messages were dropped: no member of the group subscribed to their subjects remains (the memory bus is at-most-once in process)"
                    );
                }
            }
            // An unsubscribe, as on NATS: what it had not read is gone.
            None => tracing::debug!(
                subscription = id,
                buffered = buffered.len(),
                redeliveries = waiting.len(),
                "memory subscription closed with messages unread"
            ),
        }
        tracing::debug!(subscription = id, "memory subscription closed");
    }
}

#[derive(Debug)]
struct MemoryAcker {
    shared: Arc<Shared>,
    group: Option<String>,
    /// The timer queue of the subscription that delivered it.
    redeliveries: Arc<Redeliveries>,
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
    /// Schedules attempt `attempt + 1` of `message` after `delay`, on the
    /// subscription's timer queue, or another member's if it has left.
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
        if self.shared.closed.load(Ordering::Acquire) {
            tracing::debug!(subject = %message.subject, "transport closed before redelivery");
            return;
        }
        let queued = Queued {
            message,
            attempt: self.attempt + 1,
        };
        let due = due_after(delay);
        let Err(queued) = self.redeliveries.push(due, queued) else {
            return;
        };
        match &self.group {
            Some(group) => {
                let subject = queued.message.subject.clone();
                if self.shared.hand_on(group, [(due, queued)]) > 0 {
                    tracing::warn!(
                        group = group.as_str(),
                        dropped = 1,
                        subject = %subject,
                        "a redelivery was dropped: no member of the group subscribed to its subject remains (the memory bus is at-most-once in process)"
                    );
                }
            }
            None => {
                tracing::debug!(subject = %queued.message.subject, "subscription closed before redelivery")
            }
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
