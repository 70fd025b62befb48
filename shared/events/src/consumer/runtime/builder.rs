//! The consumer and its settings, and subscribing when it starts.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;

use super::dispatch::{Dispatch, Merged};
use super::erased::{ErasedHandler, Restated, Typed};
use super::shutdown::Running;
use super::stats::{Stats, Summary};
use super::Shared;
use crate::bus::Bus;
use crate::consumer::handler::{Env, Handler};
use crate::consumer::idempotency::IdempotencyStore;
use crate::consumer::layer::Layer;
use crate::consumer::retry::RetryPolicy;
use crate::envelope::{validate_subject_token, EventPayload};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{Capability, Subject, SubjectPattern, SubscribeOptions};
use crate::versioning::VersionPolicy;

/// What to do with an event whose version is newer than the handler's type
/// (under [`VersionPolicy::Reject`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewerVersion {
    /// Dead-letter it at once (the default): nothing is lost, and a replay
    /// after the upgrade handles it.
    #[default]
    DeadLetter,
    /// Retry with the consumer's backoff, waiting for a redeploy that knows
    /// the version; dead-lettered when the attempts run out.
    Retry,
    /// Acknowledge it without handling, with a warning.
    Skip,
}

/// A consumer: typed handlers for one or more event types, run with a
/// retry policy, dead letters, optional idempotency, a concurrency limit and
/// graceful shutdown.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # struct OrderPlaced { order_id: String }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// use events::consumer::{Consumer, Context, HandlerError, RetryPolicy};
/// use events::{Bus, Event};
///
/// async fn reserve(event: Event<OrderPlaced>, ctx: Context<()>) -> Result<(), HandlerError> {
///     println!("reserving stock for {} (attempt {})", event.payload.order_id, ctx.attempt());
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), events::Error> {
/// let bus = Bus::memory("inventory");
/// let consumer = Consumer::new(&bus, "inventory")?
///     .handle(reserve)
///     .retry(RetryPolicy::exponential().max_attempts(5))
///     .concurrency(8);
/// // Run until shutdown resolves (here: at once); usually `events::consumer::shutdown_signal()`.
/// let summary = consumer.run(async {}).await?;
/// assert_eq!(summary.handled, 0);
/// # Ok(()) }
/// ```
pub struct Consumer<S = ()> {
    bus: Bus,
    name: Arc<str>,
    state: S,
    handlers: HashMap<&'static str, Arc<dyn ErasedHandler<S>>>,
    /// Types given a second handler: `run` refuses to start with them.
    duplicates: Vec<&'static str>,
    retry: RetryPolicy,
    concurrency: usize,
    ordered_by_key: bool,
    dead_letter_subject: Subject,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    shutdown_timeout: Duration,
    version_policy: VersionPolicy,
    newer_version: NewerVersion,
    handler_timeout: Option<Duration>,
    ack_wait: Option<Duration>,
    prefetch: Option<usize>,
    layers: Vec<Arc<dyn Layer>>,
}

impl Consumer<()> {
    /// A consumer called `name` (a subject token: it names the queue group,
    /// the durable consumer and the dead-letter subject) on `bus`.
    pub fn new(bus: &Bus, name: &str) -> Result<Self> {
        validate_subject_token(name)?;
        let prefix = bus.codec().prefix();
        let dead_letter_subject = Subject::from_tokens(
            std::iter::once("deadletter")
                .chain(prefix.split('.'))
                .chain([name]),
        )?;
        Ok(Consumer {
            bus: bus.clone(),
            name: name.into(),
            state: (),
            handlers: HashMap::new(),
            duplicates: Vec::new(),
            retry: RetryPolicy::exponential(),
            concurrency: 16,
            ordered_by_key: false,
            dead_letter_subject,
            idempotency: None,
            shutdown_timeout: Duration::from_secs(30),
            version_policy: VersionPolicy::Reject,
            newer_version: NewerVersion::DeadLetter,
            handler_timeout: None,
            ack_wait: None,
            prefetch: None,
            layers: Vec::new(),
        })
    }
}

impl<S: Send + Sync + 'static> Consumer<S> {
    /// Shared application state, which every handler's
    /// [`Context`](crate::consumer::Context) sees: one value, shared by all
    /// handlings (never cloned, so it need not be `Clone`: a connection pool
    /// or a cache as is) and dropped when
    /// [`run`](Self::run) returns.
    ///
    /// Call it before `handle`. A handler registered earlier is written for
    /// the state type of that moment (`()` at first), and keeps that state.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Serialize, Deserialize)]
    /// # struct OrderPlaced { order_id: String }
    /// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use events::consumer::{Consumer, Context, HandlerError};
    /// use events::Event;
    ///
    /// async fn count(_: Event<OrderPlaced>, ctx: Context<AtomicU64>) -> Result<(), HandlerError> {
    ///     ctx.state().fetch_add(1, Ordering::Relaxed);
    ///     Ok(())
    /// }
    ///
    /// let bus = events::Bus::memory("orders");
    /// let consumer = Consumer::new(&bus, "counter")?.state(AtomicU64::new(0)).handle(count);
    /// # Ok::<(), events::Error>(())
    /// ```
    pub fn state<S2: Send + Sync + 'static>(self, state: S2) -> Consumer<S2> {
        let mut handlers: HashMap<&'static str, Arc<dyn ErasedHandler<S2>>> = HashMap::new();
        if !self.handlers.is_empty() {
            let env = Arc::new(Env {
                state: self.state,
                bus: self.bus.clone(),
                consumer: self.name.clone(),
            });
            for (event_type, handler) in self.handlers {
                let restated = Restated {
                    handler,
                    env: env.clone(),
                };
                handlers.insert(event_type, Arc::new(restated));
            }
        }
        Consumer {
            bus: self.bus,
            name: self.name,
            state,
            handlers,
            duplicates: self.duplicates,
            retry: self.retry,
            concurrency: self.concurrency,
            ordered_by_key: self.ordered_by_key,
            dead_letter_subject: self.dead_letter_subject,
            idempotency: self.idempotency,
            shutdown_timeout: self.shutdown_timeout,
            version_policy: self.version_policy,
            newer_version: self.newer_version,
            handler_timeout: self.handler_timeout,
            ack_wait: self.ack_wait,
            prefetch: self.prefetch,
            layers: self.layers,
        }
    }

    /// Registers the handler for events of type `T`. One handler per event
    /// type (whatever its version): a second one for the same type makes
    /// [`run`](Self::run) refuse to start with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput), naming
    /// the type, rather than one silently replacing the other.
    pub fn handle<T: EventPayload, H: Handler<T, S>>(mut self, handler: H) -> Self {
        if self.handlers.contains_key(T::TYPE) {
            if !self.duplicates.contains(&T::TYPE) {
                self.duplicates.push(T::TYPE);
            }
            return self;
        }
        let erased: Arc<dyn ErasedHandler<S>> = Arc::new(Typed::<T, H> {
            handler,
            _type: PhantomData,
        });
        self.handlers.insert(T::TYPE, erased);
        self
    }

    /// Wraps every handler call in `layer` (see [`Layer`]): the first layer
    /// added is the outermost. What a layer returns is the attempt's result,
    /// settled as a handler's would be: retries and dead letters stay
    /// outside every layer, and the handler timeout counts the layers' time
    /// too.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// The retry policy (default: 5 attempts, exponential backoff from
    /// 100 ms to 30 s with jitter).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How many events are handled at once (default 16; at least 1, and
    /// `usize::MAX` means no limit).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit.max(1);
        self
    }

    /// Handle events with the same subject (the entity key) strictly one at
    /// a time, in delivery order, while different keys run in parallel.
    /// Events without a subject are not ordered.
    pub fn ordered_by_key(mut self, ordered: bool) -> Self {
        self.ordered_by_key = ordered;
        self
    }

    /// Where dead letters go (default `deadletter.<prefix>.<consumer>`). On
    /// JetStream, a stream must capture this subject for them to be durable.
    pub fn dead_letter_subject(mut self, subject: Subject) -> Self {
        self.dead_letter_subject = subject;
        self
    }

    /// Handle each event id once, remembering handled ids in `store`.
    pub fn idempotency(mut self, store: impl IdempotencyStore) -> Self {
        self.idempotency = Some(Arc::new(store));
        self
    }

    /// How long shutdown waits for in-flight handlers before it nacks them
    /// (default 30 s; `Duration::MAX` waits for them without bound).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How to read versions newer than the handler's type (default reject).
    pub fn version_policy(mut self, policy: VersionPolicy) -> Self {
        self.version_policy = policy;
        self
    }

    /// What to do with rejected newer versions (default dead-letter).
    pub fn on_newer_version(mut self, action: NewerVersion) -> Self {
        self.newer_version = action;
        self
    }

    /// A deadline per attempt: a handler still running after it fails the
    /// attempt (retryable). A deadline too far away to be represented
    /// (`Duration::MAX`) is no deadline.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// How long a delivery may stay unsettled before the transport gives it
    /// to another instance (the transport's default otherwise: 30 s for
    /// memory and JetStream). This is how long a crashed instance's events
    /// wait; keep it above the longest handler run (or use
    /// [`handler_timeout`](Self::handler_timeout)). Any duration is taken;
    /// JetStream caps it at about 292 years, the longest the server counts.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = Some(wait);
        self
    }

    /// How many events each subscription of this instance fetches ahead of
    /// its handlers (default: twice the concurrency, at least 256, the
    /// JetStream pull size). More hides the broker's round trips; but on
    /// JetStream an event's ack wait runs from the moment it is fetched, so
    /// keep `prefetch / (events handled per second)` well under the ack
    /// wait, or lower this for slow handlers. At least 1, at most
    /// [`MAX_CAPACITY`](crate::transport::MAX_CAPACITY).
    pub fn prefetch(mut self, events: usize) -> Self {
        self.prefetch = Some(events.clamp(1, crate::transport::MAX_CAPACITY));
        self
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subject dead letters go to.
    pub fn get_dead_letter_subject(&self) -> &Subject {
        &self.dead_letter_subject
    }

    /// Subscribes and handles events until `shutdown` resolves, then shuts
    /// down gracefully (see [`Running::shutdown`]). Returns what was done.
    ///
    /// The same as [`start`](Self::start) followed by
    /// [`Running::until`]`(shutdown)`.
    ///
    /// # Errors
    ///
    /// Besides failing to start (no handlers, two handlers for one event
    /// type, an invalid subject, a dead-letter subject no stream stores),
    /// `run` fails if its
    /// subscriptions end before `shutdown` resolves: the bus was closed
    /// ([`ErrorKind::Closed`]), or the connection is gone for good. It still
    /// drains in-flight handlers first; the error is the last one the
    /// subscriptions reported. A service should exit (and be restarted)
    /// rather than idle without a subscription.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<Summary> {
        // Driven here rather than in a task of its own: dropping this
        // future drops the consumer at once (nothing settled, as in a
        // crash), where dropping a `Running` shuts it down gracefully.
        self.prepare().await?.run(shutdown).await
    }

    /// Subscribes to every handled type and starts handling events in a
    /// task of its own. Returns once every subscription is live: an event
    /// published after `start` returns is handled (on a durable backend,
    /// every stored event is, whenever it was published).
    ///
    /// ```
    /// # use events::{Bus, Event, EventPayload};
    /// # use events::consumer::{Consumer, Context, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct OrderPlaced { order_id: String }
    /// # impl EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; const VERSION: u32 = 1; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), events::Error> {
    /// let bus = Bus::memory("orders");
    /// let running = Consumer::new(&bus, "inventory")?
    ///     .handle(|_e: Event<OrderPlaced>, _ctx: Context<()>| async { Ok::<_, HandlerError>(()) })
    ///     .start()
    ///     .await?;
    /// // Subscribed: nothing published from here on is missed.
    /// bus.publish(&bus.event(OrderPlaced { order_id: "o-1".into() })).await?;
    /// let summary = running.shutdown().await?;
    /// # let _ = summary;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run) when starting.
    pub async fn start(self) -> Result<Running> {
        let name = self.name.clone();
        let dispatch = self.prepare().await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            // Sent, or the sender dropped with its `Running`: both stop.
            let _ = stopped.await;
        };
        Ok(Running {
            name,
            stop: Some(stop),
            task: tokio::spawn(dispatch.run(stopped)),
        })
    }

    /// Subscribes: the dispatch loop, ready to run.
    pub(super) async fn prepare(self) -> Result<Dispatch<S>> {
        if self.handlers.is_empty() {
            return Err(Error::invalid(format!(
                "consumer {:?} has no handlers",
                self.name
            )));
        }
        if !self.duplicates.is_empty() {
            return Err(Error::invalid(format!(
                "consumer {:?} has more than one handler for {}",
                self.name,
                self.duplicates.join(", ")
            )));
        }
        let transport = self.bus.transport().clone();
        let caps = transport.capabilities().clone();
        // A dead-letter subject no stream stores would make every dead letter
        // fail (and its original come back forever): refuse to start instead.
        transport
            .check_subject(&self.dead_letter_subject)
            .await
            .map_err(|e| {
                Error::new(
                    e.kind(),
                    format!(
                        "consumer {:?} cannot dead-letter to {}: {e}",
                        self.name, self.dead_letter_subject
                    ),
                )
            })?;
        let routes: Vec<_> = self.handlers.into_iter().collect();
        let mut subscriptions = Vec::with_capacity(routes.len());
        if self.ordered_by_key && routes.len() > 1 && !caps.supports(Capability::MultiPattern) {
            // Order across types needs the broker's one stream for all of
            // them; with a subscription per type it would silently not hold.
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "consumer {:?} orders by key across {} event types, which needs one \
                     subscription for several subjects; the {} transport has none (core NATS \
                     delivers each subscription on its own; JetStream needs nats-server 2.10 \
                     or later): order one type per consumer there",
                    self.name,
                    routes.len(),
                    transport.name()
                ),
            ));
        }
        let prefetch = self
            .prefetch
            .unwrap_or((self.concurrency.saturating_mul(2)).max(DEFAULT_PREFETCH));
        let options_for = |pattern: SubjectPattern| {
            let options = SubscribeOptions::new(pattern)
                .capacity(prefetch)
                .max_deliver(max_deliver(&self.retry));
            match self.ack_wait {
                Some(wait) => options.ack_wait(wait),
                None => options,
            }
        };
        let mut patterns = Vec::with_capacity(routes.len());
        for (event_type, _) in &routes {
            patterns.push(self.bus.codec().pattern_for(event_type)?);
        }
        if self.ordered_by_key && caps.supports(Capability::OrderedAcrossInstances) {
            // A stream partitioned by key: one subscription per partition,
            // each durable `<consumer>-p<n>` held by one instance at a
            // time, every type it handles in each. A key's events, of all
            // its types, are in one partition, read in stream order by one
            // instance: per-key order holds across instances.
            for partition in 0..caps.key_partitions {
                let mut patterns = patterns.iter().cloned();
                let mut options = options_for(patterns.next().expect("at least one handler"));
                for pattern in patterns {
                    options = options.also(pattern);
                }
                options = options
                    .durable_name(partition_name(&self.name, partition))?
                    .redefine(true)
                    .partition(partition, self.name.to_string())?;
                subscriptions.push(transport.subscribe(options).await?);
            }
        } else if caps.supports(Capability::MultiPattern) {
            // One subscription for every handled type: the broker's one
            // stream, in its order, so a key's events of several types are
            // handled in the order they were published. Instances share it:
            // the durable consumer `<consumer>` (which takes over from the
            // per-type ones of earlier builds, and is redefined when the
            // handled types change), else the queue group `<consumer>`.
            let mut patterns = patterns.into_iter();
            let mut options = options_for(patterns.next().expect("at least one handler"));
            for pattern in patterns {
                options = options.also(pattern);
            }
            options = if caps.supports(Capability::Durable) {
                options
                    .durable_name(self.name.to_string())?
                    .redefine(true)
                    .replaces(
                        routes
                            .iter()
                            .map(|(event_type, _)| durable_name(&self.name, event_type)),
                    )
            } else if caps.supports(Capability::QueueGroups) {
                options.queue_group(self.name.to_string())?
            } else {
                options
            };
            subscriptions.push(transport.subscribe(options).await?);
        } else {
            // One subscription per type (core NATS delivers each
            // subscription on its own; nats-server 2.9 has no consumer
            // with several filters): a key's events of one type are in
            // order, of several types not.
            for ((event_type, _), pattern) in routes.iter().zip(patterns) {
                let mut options = options_for(pattern);
                // Instances of one consumer compete for its events: a shared
                // durable consumer where the backend has one, else a queue group.
                options = if caps.supports(Capability::Durable) {
                    options.durable_name(durable_name(&self.name, event_type))?
                } else if caps.supports(Capability::QueueGroups) {
                    options.queue_group(self.name.to_string())?
                } else {
                    options
                };
                // The transport's own stream: the runtime decodes each message
                // itself, into a value it boxes only if the handling must wait.
                subscriptions.push(transport.subscribe(options).await?);
            }
        }
        let deliveries = Merged::new(subscriptions);
        tracing::info!(consumer = %self.name, types = routes.len(), transport = transport.name(), "consumer started");

        let shared = Arc::new(Shared {
            bus: self.bus.clone(),
            name: self.name.clone(),
            env: Arc::new(Env {
                state: self.state,
                bus: self.bus.clone(),
                consumer: self.name.clone(),
            }),
            routes,
            retry: self.retry,
            native_redelivery: caps.supports(Capability::Redelivery),
            dead_letter_subject: self.dead_letter_subject,
            idempotency: self.idempotency,
            version_policy: self.version_policy,
            newer_version: self.newer_version,
            handler_timeout: self.handler_timeout,
            layers: self.layers,
            stats: Stats::default(),
            cancelled: AtomicBool::new(false),
        });
        Ok(Dispatch {
            shared,
            deliveries,
            concurrency: self.concurrency,
            ordered_by_key: self.ordered_by_key,
            shutdown_timeout: self.shutdown_timeout,
            in_flight: FuturesUnordered::new(),
            keys: HashMap::new(),
        })
    }

    /// The event types this consumer has handlers for (each handler's
    /// `EventPayload::TYPE`), sorted: what a contract document lists as its
    /// receive operations.
    pub fn handled_types(&self) -> impl Iterator<Item = &'static str> {
        let mut types: Vec<&'static str> = self.handlers.keys().copied().collect();
        types.sort_unstable();
        types.into_iter()
    }

    /// Applies the settings that `settings` sets (from the environment with
    /// [`ConsumerSettings::from_env`](crate::consumer::ConsumerSettings::from_env),
    /// or built in code) through the setters above; what it leaves unset
    /// keeps its value here.
    ///
    /// ```
    /// use events::consumer::{Consumer, ConsumerSettings};
    ///
    /// let bus = events::Bus::memory("billing");
    /// let consumer = Consumer::new(&bus, "billing")?.settings(&ConsumerSettings::from_env()?);
    /// # let _ = consumer;
    /// # Ok::<(), events::Error>(())
    /// ```
    pub fn settings(mut self, settings: &crate::consumer::ConsumerSettings) -> Self {
        if let Some(limit) = settings.get_concurrency() {
            self = self.concurrency(limit);
        }
        if let Some(events) = settings.get_prefetch() {
            self = self.prefetch(events);
        }
        if let Some(wait) = settings.get_ack_wait() {
            self = self.ack_wait(wait);
        }
        if let Some(policy) = settings.get_retry() {
            self = self.retry(policy.clone());
        }
        if let Some(timeout) = settings.get_shutdown_timeout() {
            self = self.shutdown_timeout(timeout);
        }
        if let Some(timeout) = settings.get_handler_timeout() {
            self = self.handler_timeout(timeout);
        }
        self
    }
}

/// How many deliveries a consumer's broker consumer allows per event: the
/// retry budget, plus room for what is not a failed attempt (a nack on
/// shutdown, a dead-letter copy that could not be published yet).
/// Finite, so an event whose dead-letter copy keeps failing does not come
/// back forever.
pub(super) fn max_deliver(retry: &RetryPolicy) -> u32 {
    retry.get_max_attempts().saturating_add(DELIVERY_MARGIN)
}

/// Deliveries allowed beyond the retry budget: see [`max_deliver`].
pub(super) const DELIVERY_MARGIN: u32 = 10;

impl<S> fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.handlers.keys().collect();
        types.sort();
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("types", &types)
            .field("duplicates", &self.duplicates)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .field("ordered_by_key", &self.ordered_by_key)
            .field("dead_letter_subject", &self.dead_letter_subject)
            .field("idempotency", &self.idempotency)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

/// The durable consumer of consumer `consumer` for `event_type`:
/// `<consumer>_<type with '.' as '_'>_<8 hex digits>`, the digits a hash of
/// the exact pair. The readable part alone is ambiguous (`a` + `b.c` and
/// `a_b` + `c`, or the types `a.b` and `a_b`, would share a durable
/// consumer and steal each other's events); the hash keeps names apart and
/// stable across releases (FNV-1a, not std's unspecified hasher). A
/// readable part too long for a server name (255 bytes) is cut; the hash
/// stays.
pub(crate) fn durable_name(consumer: &str, event_type: &str) -> String {
    const MAX_DURABLE_LEN: usize = 255;
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = consumer
        .bytes()
        .chain([0])
        .chain(event_type.bytes())
        .fold(FNV_OFFSET, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        });
    let suffix = format!("_{:08x}", hash as u32);
    let mut readable = format!("{consumer}_{}", event_type.replace('.', "_"));
    // ASCII only (validated names), so any byte index is a boundary.
    // nats-server allows names of at most 255 bytes.
    readable.truncate(MAX_DURABLE_LEN - suffix.len());
    readable + &suffix
}

/// The durable consumer of consumer `consumer` for one partition of a
/// stream partitioned by key: `<consumer>-p<partition>`, the consumer's
/// name cut to keep it within the server's 255 bytes.
pub(crate) fn partition_name(consumer: &str, partition: u32) -> String {
    let suffix = format!("-p{partition}");
    // ASCII only (validated names), so any byte index is a boundary.
    let keep = consumer.len().min(255 - suffix.len());
    format!("{}{suffix}", &consumer[..keep])
}

/// The least a consumer fetches ahead of its handlers by default: enough
/// to keep a broker round trip off the delivery path.
pub(super) const DEFAULT_PREFETCH: usize = 256;
