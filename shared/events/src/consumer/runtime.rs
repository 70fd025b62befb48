//! The consumer: subscriptions, dispatch, retries, dead letters, shutdown.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, Either};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, Stream, StreamExt};
use std::panic::AssertUnwindSafe;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::dead_letter::{bounded_error, DeadLetter, Reason};
use super::handler::{Context, Disposition, Env, Handler, HandlerError};
use super::idempotency::{Claim, ClaimToken, IdempotencyStore};
use super::retry::RetryPolicy;
use crate::bus::Bus;
use crate::envelope::{validate_subject_token, Cause, Event, EventMetadata, EventPayload};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{
    self, Capability, Message, Subject, SubjectPattern, SubscribeOptions, Subscription,
};
use crate::versioning::VersionPolicy;
use crate::wire::{self, RawEvent};

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

/// Counts of what a consumer did, returned by [`Consumer::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Events handled successfully and acknowledged.
    pub handled: u64,
    /// Failed attempts that were scheduled for another attempt.
    pub retried: u64,
    /// Events copied to the dead-letter subject and terminated.
    pub dead_lettered: u64,
    /// Deliveries of already handled ids, acknowledged without handling.
    pub duplicates: u64,
    /// Events acknowledged without handling by policy ([`NewerVersion::Skip`]).
    pub skipped: u64,
    /// Dead-letter copies that could not be published (the originals were
    /// nacked, not lost).
    pub dead_letter_failures: u64,
    /// In-flight events nacked because shutdown's deadline passed.
    pub nacked_on_shutdown: u64,
    /// Events fetched ahead and never started, released (nacked without
    /// delay) on shutdown for another instance to take.
    pub released_on_shutdown: u64,
}

/// What the runtime counts; each is also a `metrics` counter (feature
/// `metrics`) labelled with the consumer and the event type.
#[derive(Debug, Clone, Copy)]
enum Counter {
    Handled,
    Retried,
    DeadLettered,
    Duplicates,
    Skipped,
    DeadLetterFailures,
    NackedOnShutdown,
    ReleasedOnShutdown,
}

impl Counter {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn metric_name(self) -> &'static str {
        match self {
            Counter::Handled => "events_handled_total",
            Counter::Retried => "events_retried_total",
            Counter::DeadLettered => "events_dead_lettered_total",
            Counter::Duplicates => "events_duplicates_total",
            Counter::Skipped => "events_skipped_total",
            Counter::DeadLetterFailures => "events_dead_letter_failures_total",
            Counter::NackedOnShutdown => "events_nacked_on_shutdown_total",
            Counter::ReleasedOnShutdown => "events_released_on_shutdown_total",
        }
    }
}

#[derive(Default)]
struct Stats {
    counts: [AtomicU64; 8],
}

impl Stats {
    fn bump(&self, counter: Counter) {
        self.counts[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn summary(&self) -> Summary {
        let get = |c: Counter| self.counts[c as usize].load(Ordering::Relaxed);
        Summary {
            handled: get(Counter::Handled),
            retried: get(Counter::Retried),
            dead_lettered: get(Counter::DeadLettered),
            duplicates: get(Counter::Duplicates),
            skipped: get(Counter::Skipped),
            dead_letter_failures: get(Counter::DeadLetterFailures),
            nacked_on_shutdown: get(Counter::NackedOnShutdown),
            released_on_shutdown: get(Counter::ReleasedOnShutdown),
        }
    }
}

/// A type-erased handler: decodes the raw event into its type, then calls
/// the user's handler.
trait ErasedHandler<S>: Send + Sync {
    fn prepare(
        &self,
        raw: RawEvent,
        policy: VersionPolicy,
        ctx: ContextParts<S>,
    ) -> Result<HandlerFuture>;

    /// The fast path: `message` decoded in one pass straight into the
    /// handler's type (see `wire::decode_fast`) and the handler called, in
    /// the span `span` makes; `None` where that does not apply.
    fn try_call(
        &self,
        message: &Message,
        env: &Arc<Env<S>>,
        attempt: u32,
        span: &dyn Fn(&EventMetadata) -> tracing::Span,
    ) -> Option<(tracing::Span, HandlerFuture)>;
}

struct ContextParts<S> {
    env: Arc<Env<S>>,
    attempt: u32,
}

struct Typed<T, H> {
    handler: H,
    _type: PhantomData<fn() -> T>,
}

impl<T, S, H> ErasedHandler<S> for Typed<T, H>
where
    T: EventPayload,
    S: Send + 'static,
    H: Handler<T, S>,
{
    fn prepare(
        &self,
        raw: RawEvent,
        policy: VersionPolicy,
        ctx: ContextParts<S>,
    ) -> Result<HandlerFuture> {
        let decoded = raw.into_event::<T>(&ctx.env.bus.inner().upcasters, policy)?;
        let context = Context::new(ctx.env, ctx.attempt, Cause::of(&decoded.event.metadata));
        Ok(self.call(decoded.event, context))
    }

    fn try_call(
        &self,
        message: &Message,
        env: &Arc<Env<S>>,
        attempt: u32,
        span: &dyn Fn(&EventMetadata) -> tracing::Span,
    ) -> Option<(tracing::Span, HandlerFuture)> {
        // A panic in the payload's `Deserialize` is left to the general
        // path, which decodes again, catches it and dead-letters the event.
        let decoded =
            std::panic::catch_unwind(AssertUnwindSafe(|| wire::decode_fast::<T>(message)));
        let event = decoded.ok()??;
        let span = span(&event.metadata);
        let context = Context::new(env.clone(), attempt, Cause::of(&event.metadata));
        let future = {
            let _entered = span.enter();
            self.call(event, context)
        };
        Some((span, future))
    }
}

impl<T: EventPayload, H> Typed<T, H> {
    /// Calls the handler. Its synchronous part (a closure may do work
    /// before returning its future) runs here: a panic there fails the
    /// attempt, as a panic in its future does, and the handler is not
    /// called again for it.
    fn call<S>(&self, event: Event<T>, context: Context<S>) -> HandlerFuture
    where
        H: Handler<T, S>,
    {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.call(event, context))) {
            Ok(future) => future,
            Err(panic) => Box::pin(std::future::ready(Err(panicked(&*panic)))),
        }
    }
}

/// A handler registered before [`Consumer::state`] changed the state's
/// type: it keeps the state (and context) it was registered with, since its
/// signature names that type.
struct Restated<S> {
    handler: Arc<dyn ErasedHandler<S>>,
    env: Arc<Env<S>>,
}

impl<S: Send + Sync + 'static, S2> ErasedHandler<S2> for Restated<S> {
    fn prepare(
        &self,
        raw: RawEvent,
        policy: VersionPolicy,
        ctx: ContextParts<S2>,
    ) -> Result<HandlerFuture> {
        let parts = ContextParts {
            env: self.env.clone(),
            attempt: ctx.attempt,
        };
        self.handler.prepare(raw, policy, parts)
    }

    fn try_call(
        &self,
        message: &Message,
        _env: &Arc<Env<S2>>,
        attempt: u32,
        span: &dyn Fn(&EventMetadata) -> tracing::Span,
    ) -> Option<(tracing::Span, HandlerFuture)> {
        self.handler.try_call(message, &self.env, attempt, span)
    }
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
        })
    }
}

impl<S: Send + Sync + 'static> Consumer<S> {
    /// Shared application state, which every handler's [`Context`] sees:
    /// one value, shared by all handlings (never cloned, so it need not be
    /// `Clone`: a connection pool or a cache as is) and dropped when
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
    async fn prepare(self) -> Result<Dispatch<S>> {
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

/// A started consumer (see [`Consumer::start`]): its events are handled in
/// a task of its own until [`shutdown`](Self::shutdown).
///
/// Dropping it shuts the consumer down in the background, as `shutdown`
/// does, without waiting for the summary.
#[must_use = "dropping a running consumer shuts it down"]
pub struct Running {
    name: Arc<str>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Summary>>,
}

impl Running {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the consumer has stopped by itself (its subscriptions
    /// ended: see [`Consumer::run`]); `shutdown` then returns why.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Shuts down gracefully and returns what was done:
    ///
    /// 1. stop fetching: nothing more is asked of the broker;
    /// 2. release what was fetched ahead and not started: each is nacked at
    ///    once, in order, for another instance to take (with
    ///    [`ordered_by_key`](Consumer::ordered_by_key), an event whose key
    ///    has an earlier event in flight waits for that one to settle
    ///    first, so the key's events come back in order);
    /// 3. let in-flight handlers finish within the
    ///    [`shutdown_timeout`](Consumer::shutdown_timeout), then nack (never
    ///    ack) those still running, in key order;
    /// 4. flush, and confirm with the broker that every ack and nack
    ///    arrived (JetStream: a server round trip).
    ///
    /// Returns within the shutdown timeout plus a few seconds for steps 2
    /// and 4 (each bounded), whatever the handlers and the broker do.
    ///
    /// # Errors
    ///
    /// As [`Consumer::run`]: the consumer had stopped by itself because its
    /// subscriptions ended.
    pub async fn shutdown(mut self) -> Result<Summary> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await
    }

    /// Runs until `shutdown` resolves (then shuts down as
    /// [`shutdown`](Self::shutdown) does), or until the consumer stops by
    /// itself.
    ///
    /// # Errors
    ///
    /// As [`Consumer::run`].
    pub async fn until(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<Summary> {
        tokio::select! {
            () = shutdown => self.shutdown().await,
            ended = &mut self.task => joined(ended),
        }
    }

    /// Stops at once, as a crash would: the consumer's task ends where it
    /// stands, nothing in flight is settled (the broker redelivers it after
    /// its ack wait). For tests of what a crashed instance leaves behind.
    pub async fn abort(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    async fn join(&mut self) -> Result<Summary> {
        joined((&mut self.task).await)
    }
}

fn joined(ended: std::result::Result<Result<Summary>, tokio::task::JoinError>) -> Result<Summary> {
    ended.unwrap_or_else(|e| {
        Err(Error::new(
            ErrorKind::Backend,
            format!("the consumer's task ended abnormally: {e}"),
        ))
    })
}

impl Drop for Running {
    fn drop(&mut self) {
        // The task shuts down by itself once the sender is gone.
        drop(self.stop.take());
    }
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.name)
            .field("finished", &self.task.is_finished())
            .finish_non_exhaustive()
    }
}

/// How many deliveries a consumer's broker consumer allows per event: the
/// retry budget, plus room for what is not a failed attempt (a nack on
/// shutdown, a dead-letter copy that could not be published yet).
/// Finite, so an event whose dead-letter copy keeps failing does not come
/// back forever.
fn max_deliver(retry: &RetryPolicy) -> u32 {
    retry.get_max_attempts().saturating_add(DELIVERY_MARGIN)
}

/// Deliveries allowed beyond the retry budget: see [`max_deliver`].
const DELIVERY_MARGIN: u32 = 10;

/// How long shutdown waits, at most, for what follows the handlers: the
/// nacks of what did not finish, and the broker's confirmation of every
/// settle.
const SETTLE_GRACE: Duration = Duration::from_secs(3);

/// How long shutdown waits, at most, for the subscriptions to hand over
/// what they fetched ahead (JetStream: until each open pull ends on the
/// server, within its expiry, 5 s by default). In-flight handlers go on
/// meanwhile.
const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// The dispatch loop of a started consumer and what it owns.
struct Dispatch<S> {
    shared: Arc<Shared<S>>,
    deliveries: Merged,
    concurrency: usize,
    ordered_by_key: bool,
    shutdown_timeout: Duration,
    // In-flight handlers run as futures polled by this task, not as
    // spawned tasks: no task spawn and no cross-thread wake-up per event
    // (a spawned task per event ran at under half the throughput of a
    // hand-written loop). Handlers that need CPU parallelism spawn their
    // heavy work themselves.
    in_flight: FuturesUnordered<BoxFuture<'static, ()>>,
    /// Per key, the completion signal of its last event in flight.
    keys: HashMap<String, watch::Receiver<bool>>,
}

impl<S: Send + Sync + 'static> Dispatch<S> {
    async fn run(mut self, stop: impl Future<Output = ()> + Send) -> Result<Summary> {
        let mut stop = std::pin::pin!(stop);
        // Set when the subscription ends by itself (not by shutdown): the
        // last error it reported, which `run` returns after draining.
        let mut subscription_error: Option<Error> = None;
        let mut ended: Option<Error> = None;

        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                Some(()) = self.in_flight.next(), if !self.in_flight.is_empty() => {}
                // Backpressure: pull the next event only when a slot is free.
                item = self.deliveries.next(), if self.in_flight.len() < self.concurrency => {
                    let Some((from, item)) = item else {
                        ended = Some(subscription_error.take().unwrap_or_else(|| {
                            Error::closed("the subscription ended (the transport was closed?)")
                        }));
                        break;
                    };
                    match item {
                        Ok(delivery) => self.dispatch(from, delivery).await,
                        Err(error) => {
                            tracing::warn!(consumer = %self.shared.name, error = %error, "subscription error");
                            subscription_error = Some(error);
                        }
                    }
                }
            }
        }
        self.shut_down(ended).await
    }

    /// Starts handling one delivery.
    async fn dispatch(&mut self, from: usize, delivery: transport::Delivery) {
        let shared = &self.shared;
        if !self.ordered_by_key && shared.idempotency.is_none() {
            let rest = poll_once(|cx| shared.begin(from, delivery, cx)).await;
            self.in_flight.extend(rest);
            return;
        }
        let raw = match wire::decode(delivery.message()) {
            Ok(raw) => raw,
            Err(error) => {
                start(
                    &mut self.in_flight,
                    shared.clone().unreadable(delivery, error),
                )
                .await;
                return;
            }
        };
        // Per-key ordering: each event of a key waits for the previous one
        // of the same key, in delivery order.
        let key = raw
            .metadata
            .subject()
            .filter(|_| self.ordered_by_key)
            .map(str::to_owned);
        if self.keys.len() > self.concurrency.saturating_mul(4) {
            // Forget keys whose last event is done (or gone).
            self.keys.retain(|_, rx| busy(rx));
        }
        let key_busy = key
            .as_ref()
            .and_then(|key| self.keys.get(key))
            .is_some_and(busy);
        if !key_busy && shared.idempotency.is_none() {
            // Nothing of its key in flight: the fast path. The key is
            // registered only if the handling has to wait; its successors
            // then wait for it.
            let ordered = key.is_some();
            let rest = poll_once(|cx| shared.begin_raw(from, raw, delivery, ordered, cx)).await;
            match (rest, key) {
                (Some(rest), Some(key)) => {
                    let (done_tx, done_rx) = watch::channel(false);
                    self.keys.insert(key, done_rx);
                    self.in_flight.push(Box::pin(async move {
                        rest.await;
                        let _ = done_tx.send(true);
                    }));
                }
                (rest, _) => self.in_flight.extend(rest),
            }
        } else {
            let order = key.map(|key| {
                let (done_tx, done_rx) = watch::channel(false);
                (self.keys.insert(key, done_rx), done_tx)
            });
            let handling = shared
                .clone()
                .process(from, Box::new(raw), Box::new(delivery), order);
            start(&mut self.in_flight, Box::pin(handling)).await;
        }
    }

    /// Stops fetching, releases what was fetched and not started, gives
    /// in-flight work its deadline, then confirms every settle.
    async fn shut_down(mut self, ended: Option<Error>) -> Result<Summary> {
        let shared = self.shared.clone();
        self.deliveries.stop();
        tracing::info!(consumer = %shared.name, in_flight = self.in_flight.len(), "consumer stopping");
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout.min(MAX_WAIT);
        // What the subscriptions fetched ahead: released at once, in order,
        // except behind a busy key (below). In-flight handlers go on
        // meanwhile.
        let released = tokio::time::timeout(RELEASE_GRACE, async {
            loop {
                tokio::select! {
                    biased;
                    Some(()) = self.in_flight.next(), if !self.in_flight.is_empty() => {}
                    item = self.deliveries.next() => match item {
                        Some((_, Ok(delivery))) => self.release(delivery).await,
                        Some((_, Err(_))) => {}
                        None => break,
                    },
                }
            }
        })
        .await;
        if released.is_err() {
            tracing::warn!(consumer = %shared.name, "the subscriptions did not hand over what they fetched in time; it comes back after the ack wait");
        }
        // Unsubscribes, and releases whatever is still buffered.
        drop(self.deliveries);
        let drained = tokio::time::timeout_at(deadline, async {
            while self.in_flight.next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            // Past the deadline: every handler still running is cancelled
            // and its delivery nacked, never acked; an event waiting for its
            // key's predecessor is nacked after it.
            shared.cancelled.store(true, Ordering::Release);
            let running: Vec<_> = std::mem::take(&mut self.in_flight).into_iter().collect();
            // A handling sees the flag when it is next polled: push each
            // one again, which polls it.
            self.in_flight.extend(running);
        }
        let settled = tokio::time::timeout(SETTLE_GRACE, async {
            while self.in_flight.next().await.is_some() {}
            // Acks and nacks are fire-and-forget: confirm the broker has
            // them before the consumer reports it is done.
            shared.bus.flush().await
        })
        .await;
        match settled {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(consumer = %shared.name, error = %e, "could not confirm the last acks on shutdown")
            }
            Err(_) => {
                tracing::warn!(consumer = %shared.name, left = self.in_flight.len(), "settling on shutdown did not finish in time; unsettled events come back after the ack wait")
            }
        }
        drop(self.in_flight);
        let summary = shared.stats.summary();
        if let Some(error) = ended {
            tracing::error!(consumer = %shared.name, ?summary, %error, "consumer stopped: its subscription ended");
            return Err(error);
        }
        tracing::info!(consumer = %shared.name, ?summary, "consumer stopped");
        Ok(summary)
    }

    /// Shutdown: a delivery fetched ahead and never started is nacked
    /// without delay, at once or, if an earlier event of its key is still
    /// in flight, right after that one settles.
    async fn release(&mut self, delivery: transport::Delivery) {
        let shared = self.shared.clone();
        let key = if self.ordered_by_key {
            wire::decode(delivery.message())
                .ok()
                .and_then(|raw| raw.metadata.subject().map(str::to_owned))
        } else {
            None
        };
        let previous = key
            .as_ref()
            .and_then(|key| self.keys.get(key))
            .filter(|rx| busy(rx))
            .cloned();
        let released = async move {
            shared.stats.bump(Counter::ReleasedOnShutdown);
            settle(delivery.release().await);
        };
        match (previous, key) {
            (Some(mut previous), Some(key)) => {
                let (done_tx, done_rx) = watch::channel(false);
                self.keys.insert(key, done_rx);
                self.in_flight.push(Box::pin(async move {
                    let _ = previous.wait_for(|done| *done).await;
                    released.await;
                    let _ = done_tx.send(true);
                }));
            }
            _ => start(&mut self.in_flight, Box::pin(released)).await,
        }
    }
}

/// Whether a key's last event is still in flight.
fn busy(done: &watch::Receiver<bool>) -> bool {
    !*done.borrow() && done.has_changed().is_ok()
}

/// The longest shutdown timeout honoured (a longer one is saturated): far
/// beyond any broker's ack wait, and clear of timer overflow.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

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

fn reason_for(error: &Error) -> Reason {
    match error.kind() {
        ErrorKind::UnsupportedVersion => Reason::UnsupportedVersion,
        ErrorKind::MissingUpcaster => Reason::MissingUpcaster,
        _ => Reason::Decode,
    }
}

/// The receiver of the previous event of a key, and the sender this event
/// signals when done.
type KeyOrder = (Option<watch::Receiver<bool>>, watch::Sender<bool>);

struct Shared<S> {
    bus: Bus,
    name: Arc<str>,
    env: Arc<Env<S>>,
    /// The handlers, in the order of the subscriptions (one per type).
    routes: Vec<(&'static str, Arc<dyn ErasedHandler<S>>)>,
    retry: RetryPolicy,
    native_redelivery: bool,
    dead_letter_subject: Subject,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    version_policy: VersionPolicy,
    newer_version: NewerVersion,
    handler_timeout: Option<Duration>,
    stats: Stats,
    /// Set when shutdown's deadline passes. Handlings check it each time
    /// they are polled (no waker registered per event): `run` polls every
    /// one of them again once it is set.
    cancelled: AtomicBool,
}

/// An event type's handler, with the type's static name.
type Route<'a, S> = (&'static str, &'a Arc<dyn ErasedHandler<S>>);

/// A delivery being handled, boxed: see [`Shared::process`].
type Held = Box<transport::Delivery>;

/// What a handler returns, once called.
type HandlerFuture = BoxFuture<'static, Result<(), HandlerError>>;

/// Where the first attempt at an event stands when [`Shared::attempts`]
/// takes it over.
enum Begun {
    /// Not started: decode the event and call the handler.
    Fresh(Box<RawEvent>),
    /// Called (by `run`'s fast path) and polled once, not finished; when
    /// that poll began, if a handler timeout counts from it.
    Running(HandlerFuture, Option<tokio::time::Instant>),
    /// Called (by `run`'s fast path) and failed.
    Failed(HandlerError),
}

/// An idempotency claim on the id of the event being handled.
struct Claimed<'a> {
    store: &'a dyn IdempotencyStore,
    key: String,
    token: ClaimToken,
}

/// The least a consumer fetches ahead of its handlers by default: enough
/// to keep a broker round trip off the delivery path.
const DEFAULT_PREFETCH: usize = 256;

/// How often a consumer first looks again at an event id claimed elsewhere;
/// the pause doubles up to [`CLAIM_POLL_MAX`].
const CLAIM_POLL_START: Duration = Duration::from_millis(50);
const CLAIM_POLL_MAX: Duration = Duration::from_secs(1);

/// The type label of messages that could not be read far enough to know it.
const UNKNOWN_TYPE: &str = "unknown";

impl<S> Shared<S> {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Resolves once shutdown's deadline has passed, as seen at a poll:
    /// `run` polls every handling again when it sets the flag.
    fn cancellation(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|_| {
            if self.is_cancelled() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    fn count(&self, counter: Counter, event_type: &'static str) {
        self.stats.bump(counter);
        #[cfg(feature = "metrics")]
        metrics::counter!(
            counter.metric_name(),
            // No allocation per event: the name is shared, the type static.
            "consumer" => self.name.clone(),
            "type" => event_type
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = event_type;
    }
}

impl<S: Send + Sync + 'static> Shared<S> {
    /// The fast path of `run`, for events without per-key ordering or
    /// idempotency: decodes the event (in one pass, straight into the
    /// handler's type, where it can), calls the handler and polls it once,
    /// in the event's span, and settles the event if that finished it.
    /// Most handlers of most events finish in one poll, and then no
    /// handling future is built, boxed or scheduled. What has to wait (a
    /// handler still running, a failure to retry or dead-letter, an ack not
    /// yet sent) continues in the returned future.
    fn begin(
        self: &Arc<Self>,
        from: usize,
        delivery: transport::Delivery,
        cx: &mut std::task::Context<'_>,
    ) -> Option<BoxFuture<'static, ()>> {
        if let Some((event_type, handler)) = self.routes.get(from) {
            let span = |metadata: &EventMetadata| self.span(metadata, &delivery);
            let fast = handler.try_call(delivery.message(), &self.env, delivery.attempt(), &span);
            if let Some((span, future)) = fast {
                return self.drive((event_type, handler), span, future, delivery, false, cx);
            }
        }
        match wire::decode(delivery.message()) {
            Ok(raw) => self.begin_raw(from, raw, delivery, false, cx),
            Err(error) => Some(self.clone().unreadable(delivery, error)),
        }
    }

    /// [`begin`](Self::begin) for an event already decoded as raw;
    /// `ordered`: its key is handled in order (see [`handle`](Self::handle)),
    /// and nothing else of the key is in flight.
    fn begin_raw(
        self: &Arc<Self>,
        from: usize,
        raw: RawEvent,
        delivery: transport::Delivery,
        ordered: bool,
        cx: &mut std::task::Context<'_>,
    ) -> Option<BoxFuture<'static, ()>> {
        let span = self.span(&raw.metadata, &delivery);
        let Some((event_type, handler)) = self.route(from, raw.metadata.event_type()) else {
            let handling = self
                .clone()
                .handle(from, Box::new(raw), Box::new(delivery), ordered);
            return Some(Box::pin(handling.instrument(span)));
        };
        let attempt = delivery.attempt();
        let called = {
            let _entered = span.enter();
            self.call(&**handler, raw, attempt)
        };
        match called {
            Ok(future) => self.drive((event_type, handler), span, future, delivery, ordered, cx),
            Err(error) => {
                let shared = self.clone();
                let delivery = Box::new(delivery);
                Some(Box::pin(
                    async move {
                        shared
                            .undecodable(delivery, error, attempt, event_type)
                            .await
                    }
                    .instrument(span),
                ))
            }
        }
    }

    /// Polls a handler's first attempt once and settles the event if that
    /// finished it; else the rest of the handling, as a future.
    fn drive(
        self: &Arc<Self>,
        (event_type, handler): Route<'_, S>,
        span: tracing::Span,
        mut future: HandlerFuture,
        delivery: transport::Delivery,
        ordered: bool,
        cx: &mut std::task::Context<'_>,
    ) -> Option<BoxFuture<'static, ()>> {
        use std::task::Poll;
        let entered = span.enter();
        let started = self.handler_timeout.map(|_| tokio::time::Instant::now());
        let begun = match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(Ok(()))) => {
                self.count(Counter::Handled, event_type);
                let Some(mut ack) = delivery.into_ack() else {
                    // A backend without acknowledgements: nothing to send.
                    return None;
                };
                if let Poll::Ready(result) = ack.as_mut().poll(cx) {
                    settle(result);
                    return None;
                }
                drop(entered);
                return Some(Box::pin(async move { settle(ack.await) }.instrument(span)));
            }
            Ok(Poll::Ready(Err(error))) => Begun::Failed(error),
            Ok(Poll::Pending) => Begun::Running(future, started),
            Err(panic) => Begun::Failed(panicked(&*panic)),
        };
        drop(entered);
        let shared = self.clone();
        let handler = handler.clone();
        let delivery = Box::new(delivery);
        Some(Box::pin(
            async move {
                shared
                    .attempts(event_type, handler, delivery, begun, None, ordered)
                    .await
            }
            .instrument(span),
        ))
    }

    /// A message that is not an event at all: dead-lettered at once.
    fn unreadable(
        self: Arc<Self>,
        delivery: transport::Delivery,
        error: Error,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let attempt = delivery.attempt();
            self.dead_letter(
                Box::new(delivery),
                reason_for(&error),
                &error.to_string(),
                attempt,
                UNKNOWN_TYPE,
            )
            .await;
        })
    }

    /// The full path: handles one delivery, after the previous event of its
    /// key (if ordered), then signals the next one.
    ///
    /// The event and the delivery come boxed: this future is itself boxed
    /// and moved once per event, and every state it can be in is as large
    /// as its largest; the paths off the success path are boxed for the
    /// same reason.
    async fn process(
        self: Arc<Self>,
        from: usize,
        raw: Box<RawEvent>,
        delivery: Held,
        order: Option<KeyOrder>,
    ) {
        let (previous, done) = match order {
            Some((previous, done)) => (previous, Some(done)),
            None => (None, None),
        };
        if let Some(mut previous) = previous {
            // Either the predecessor signals, or it is gone. The wait can be
            // long (the predecessor retrying): the delivery is held meanwhile.
            Box::pin(holding(&delivery, async move {
                let _ = previous.wait_for(|done| *done).await;
            }))
            .await;
        }
        let span = self.span(&raw.metadata, &delivery);
        let ordered = done.is_some();
        self.handle(from, raw, delivery, ordered)
            .instrument(span)
            .await;
        if let Some(done) = done {
            let _ = done.send(true);
        }
    }

    /// The span of one handling.
    fn span(&self, metadata: &EventMetadata, delivery: &transport::Delivery) -> tracing::Span {
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

    /// The handler of `event_type`, with the type's static name, for an
    /// event from subscription `from`. Each subscription is for one type, so
    /// that is the handler, unless the event says otherwise (a message
    /// published on another type's subject).
    fn route(&self, from: usize, event_type: &str) -> Option<Route<'_, S>> {
        let matches = |route: &&(&'static str, Arc<dyn ErasedHandler<S>>)| route.0 == event_type;
        self.routes
            .get(from)
            .filter(matches)
            .or_else(|| self.routes.iter().find(matches))
            .map(|(event_type, handler)| (*event_type, handler))
    }

    /// Decodes `raw` for `handler` and calls it: the handler's future, not
    /// yet polled.
    fn call(
        &self,
        handler: &dyn ErasedHandler<S>,
        raw: RawEvent,
        attempt: u32,
    ) -> Result<HandlerFuture> {
        let parts = ContextParts {
            env: self.env.clone(),
            attempt,
        };
        // Decoding runs user code too (upcasters, custom `Deserialize`):
        // a panic there dead-letters the event instead of ending `run`.
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            handler.prepare(raw, self.version_policy, parts)
        }))
        .unwrap_or_else(|panic| {
            let text = panic_text(&*panic);
            tracing::error!(panic = %text, "decoding an event panicked");
            Err(Error::decode(format!("decoding panicked: {text}")))
        })
    }

    /// Finds the event's handler and claims its id (with idempotency),
    /// then runs the attempts.
    ///
    /// `ordered`: the event's key is handled strictly in order, so a failed
    /// attempt is retried here, holding the key, rather than handed back to
    /// the broker (whose redelivery would let the key's next event overtake).
    async fn handle(
        self: Arc<Self>,
        from: usize,
        raw: Box<RawEvent>,
        delivery: Held,
        ordered: bool,
    ) {
        let Some((event_type, handler)) = self.route(from, raw.metadata.event_type()) else {
            let text = format!("no handler for {}", raw.metadata.event_type());
            let attempt = delivery.attempt();
            if self.native_redelivery && self.retry.allows_another(attempt) {
                // Instances of one consumer share its broker consumer, whose
                // types change with a release: during a rolling deploy an
                // older instance gets the types only newer ones handle.
                // Handed back (the broker counts the attempt), and
                // dead-lettered only once the attempts run out.
                tracing::debug!(
                    event.r#type = raw.metadata.event_type(),
                    attempt,
                    "no handler here; handed back for an instance that has one"
                );
                self.count(Counter::Retried, UNKNOWN_TYPE);
                let delay = self.retry.delay(attempt);
                return settle(Box::pin(delivery.nack(Some(delay))).await);
            }
            return self
                .dead_letter(delivery, Reason::NoHandler, &text, attempt, UNKNOWN_TYPE)
                .await;
        };
        let handler = handler.clone();
        let mut claim = None;
        if let Some(store) = &self.idempotency {
            let key = format!("{}/{}", self.name, raw.metadata.id());
            let mut pause = CLAIM_POLL_START;
            loop {
                match store.claim(&key).await {
                    Ok(Claim::Acquired(token)) => {
                        claim = Some(Claimed {
                            store: store.as_ref(),
                            key,
                            token,
                        });
                        break;
                    }
                    Ok(Claim::Done) => {
                        self.count(Counter::Duplicates, event_type);
                        tracing::debug!("duplicate event acknowledged without handling");
                        return settle(Box::pin(delivery.ack()).await);
                    }
                    Ok(Claim::InProgress) => {
                        // Another delivery of this id is being handled (a
                        // republished copy, or an earlier delivery still
                        // running elsewhere). Wait for its outcome here,
                        // holding this delivery: a nack per poll would spend
                        // the broker's delivery attempts on waiting.
                        tracing::debug!(?pause, "event id is being handled elsewhere; waiting");
                        if !self.pause(&delivery, pause).await {
                            self.count(Counter::NackedOnShutdown, event_type);
                            return settle(Box::pin(delivery.nack(None)).await);
                        }
                        pause = (pause * 2).min(CLAIM_POLL_MAX);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "idempotency store unavailable; event nacked");
                        let delay = self.retry.delay(delivery.attempt());
                        return settle(Box::pin(delivery.nack(Some(delay))).await);
                    }
                }
            }
        }
        self.attempts(
            event_type,
            handler,
            delivery,
            Begun::Fresh(raw),
            claim,
            ordered,
        )
        .await
    }

    /// Runs the handler until the event is handled, dead-lettered or handed
    /// back to the broker, from where `begun` stands.
    async fn attempts(
        &self,
        event_type: &'static str,
        handler: Arc<dyn ErasedHandler<S>>,
        delivery: Held,
        mut begun: Begun,
        claim: Option<Claimed<'_>>,
        ordered: bool,
    ) {
        // Given up when the delivery is (nack, dead letter), not between
        // in-process attempts: a copy arriving meanwhile keeps waiting.
        let release = || async {
            if let Some(claim) = &claim {
                if let Err(e) = claim.store.release(&claim.key, claim.token).await {
                    tracing::warn!(error = %e, "could not release an idempotency claim");
                }
            }
        };
        let mut attempt = delivery.attempt();
        // Retries run in process where the backend cannot redeliver, and for
        // ordered keys; otherwise the broker redelivers and counts.
        let in_process = !self.native_redelivery || ordered;
        loop {
            let outcome = match begun {
                Begun::Fresh(raw) => match self.call(&*handler, *raw, attempt) {
                    Ok(future) => self.wait_for(&delivery, future, None).await,
                    Err(error) => {
                        release().await;
                        return Box::pin(self.undecodable(delivery, error, attempt, event_type))
                            .await;
                    }
                },
                Begun::Running(future, started) => self.wait_for(&delivery, future, started).await,
                Begun::Failed(error) => Some(Err(error)),
            };
            let Some(result) = outcome else {
                release().await;
                self.count(Counter::NackedOnShutdown, event_type);
                tracing::info!("shutdown deadline passed; event nacked");
                return settle(Box::pin(delivery.nack(None)).await);
            };
            let error = match result {
                Ok(()) => {
                    if let Some(claim) = &claim {
                        Box::pin(self.complete(claim.store, &claim.key, claim.token)).await;
                    }
                    self.count(Counter::Handled, event_type);
                    return settle(delivery.ack().await);
                }
                Err(error) => error,
            };
            let delay = match error.disposition() {
                Disposition::Reject => {
                    release().await;
                    return self
                        .dead_letter(
                            delivery,
                            Reason::Rejected,
                            &error.to_string(),
                            attempt,
                            event_type,
                        )
                        .await;
                }
                Disposition::Retry(_) if !self.retry.allows_another(attempt) => {
                    tracing::warn!(error = %error, "attempts exhausted");
                    release().await;
                    return self
                        .dead_letter(
                            delivery,
                            Reason::AttemptsExhausted,
                            &error.to_string(),
                            attempt,
                            event_type,
                        )
                        .await;
                }
                Disposition::Retry(delay) => delay.unwrap_or_else(|| self.retry.delay(attempt)),
            };
            self.count(Counter::Retried, event_type);
            tracing::debug!(error = %error, ?delay, "attempt failed; retrying");
            if !in_process {
                // The broker counts the attempt and redelivers: no second,
                // in-process retry loop stacked on top.
                release().await;
                return settle(Box::pin(delivery.nack(Some(delay))).await);
            }
            if !self.pause(&delivery, delay).await {
                release().await;
                self.count(Counter::NackedOnShutdown, event_type);
                return settle(Box::pin(delivery.nack(None)).await);
            }
            attempt += 1;
            // The handler took the event: the next attempt decodes it again
            // from the message, which the delivery keeps (cheaper than a
            // copy of every event for the few that are retried).
            begun = match wire::decode(delivery.message()) {
                Ok(raw) => Begun::Fresh(Box::new(raw)),
                Err(error) => {
                    release().await;
                    return Box::pin(self.undecodable(delivery, error, attempt, event_type)).await;
                }
            };
        }
    }

    /// Polls a handler's future to its end, holding the delivery, within
    /// the handler timeout (counted from `started`, its first poll, if it
    /// was polled before); `None` if shutdown's deadline passed first.
    async fn wait_for(
        &self,
        delivery: &transport::Delivery,
        future: HandlerFuture,
        started: Option<tokio::time::Instant>,
    ) -> Option<Result<(), HandlerError>> {
        let limit = self
            .handler_timeout
            .map(|limit| (started.unwrap_or_else(tokio::time::Instant::now), limit));
        tokio::select! {
            biased;
            () = self.cancellation() => None,
            result = holding(delivery, guarded(limit, future)) => Some(result),
        }
    }

    /// Waits `delay` holding `delivery` (its ack wait kept from running
    /// out); false if shutdown's deadline passed first.
    async fn pause(&self, delivery: &transport::Delivery, delay: Duration) -> bool {
        Box::pin(holding(delivery, async {
            tokio::select! {
                biased;
                () = self.cancellation() => false,
                _ = tokio::time::sleep(delay) => true,
            }
        }))
        .await
    }

    /// Records `key` as handled. A failed write (the store's server
    /// restarting) is retried with the retry policy's backoff, up to its
    /// attempts, before the event is acked: if the ack were lost as well,
    /// the redelivery would find the claim still pending and, once it timed
    /// out, handle the event a second time.
    async fn complete(&self, store: &dyn IdempotencyStore, key: &str, token: ClaimToken) {
        let mut attempt = 1;
        loop {
            let error = match store.complete(key, token).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if !self.retry.allows_another(attempt) || self.is_cancelled() {
                tracing::warn!(error = %error, attempt, "could not record the event as handled");
                return;
            }
            tracing::debug!(error = %error, attempt, "recording the event as handled failed; retrying");
            tokio::select! {
                biased;
                () = self.cancellation() => {}
                _ = tokio::time::sleep(self.retry.delay(attempt)) => {}
            }
            attempt += 1;
        }
    }

    /// An event that could not be decoded into its handler's type.
    async fn undecodable(
        &self,
        delivery: Held,
        error: Error,
        attempt: u32,
        event_type: &'static str,
    ) {
        let reason = reason_for(&error);
        if reason == Reason::UnsupportedVersion {
            match self.newer_version {
                NewerVersion::DeadLetter => {}
                NewerVersion::Skip => {
                    tracing::warn!(error = %error, "newer event version skipped by policy");
                    self.count(Counter::Skipped, event_type);
                    return settle(delivery.ack().await);
                }
                NewerVersion::Retry
                    if self.retry.allows_another(attempt) && self.native_redelivery =>
                {
                    self.count(Counter::Retried, event_type);
                    return settle(delivery.nack(Some(self.retry.delay(attempt))).await);
                }
                NewerVersion::Retry => {}
            }
        }
        self.dead_letter(delivery, reason, &error.to_string(), attempt, event_type)
            .await
    }

    /// Publishes the dead-letter copy and, only once that succeeded,
    /// terminates the original. If the copy cannot be published, the
    /// original is nacked: it comes back, it is never lost.
    /// `attempts` counts in-process retries too, where the backend cannot
    /// redeliver.
    async fn dead_letter(
        &self,
        delivery: Held,
        reason: Reason,
        error: &str,
        attempts: u32,
        event_type: &'static str,
    ) {
        // Boxed, like the other paths off the success path: the handling
        // future is moved once per event, and its size is the largest
        // state any of its paths can be in.
        Box::pin(self.dead_letter_now(delivery, reason, error, attempts, event_type)).await
    }

    async fn dead_letter_now(
        &self,
        delivery: Held,
        reason: Reason,
        error: &str,
        attempts: u32,
        event_type: &'static str,
    ) {
        let letter = DeadLetter {
            original: delivery.message().clone(),
            reason,
            error: bounded_error(error),
            attempts,
            consumer: self.name.to_string(),
            time: chrono::Utc::now(),
            stream_sequence: delivery.info().stream_sequence,
            body_omitted: None,
        };
        let transport = self.bus.transport();
        let mut published = transport
            .publish(letter.to_message(self.dead_letter_subject.clone()))
            .await;
        if matches!(&published, Err(e) if e.kind() == ErrorKind::PayloadTooLarge) {
            // The original fitted; with the dead-letter headers it does not.
            // Nacking would bring it back until `max_deliver` and then
            // nowhere: a copy without the body (its length and stream
            // sequence in headers) keeps the event visible.
            tracing::warn!(dead_letter_subject = %self.dead_letter_subject, "dead-letter copy too large; sent without the body");
            published = transport
                .publish(
                    letter
                        .without_body()
                        .to_message(self.dead_letter_subject.clone()),
                )
                .await;
        }
        match published {
            Ok(()) => {
                self.count(Counter::DeadLettered, event_type);
                tracing::warn!(reason = reason.as_str(), error, dead_letter_subject = %self.dead_letter_subject, "event dead-lettered");
                settle(delivery.term().await);
            }
            Err(e) => {
                self.count(Counter::DeadLetterFailures, event_type);
                tracing::error!(error = %e, "dead-letter copy failed; original nacked");
                let delay = self.retry.delay(delivery.attempt());
                settle(delivery.nack(Some(delay)).await);
            }
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// The retryable error a panicking handler becomes.
fn panicked(panic: &(dyn std::any::Any + Send)) -> HandlerError {
    let text = panic_text(panic);
    tracing::error!(panic = %text, "handler panicked");
    HandlerError::retry(format!("handler panicked: {text}"))
}

/// Runs a handler with an optional deadline; a panic becomes a retryable
/// error, so one bad handler call cannot take the consumer down.
fn guarded(
    timeout: Option<(tokio::time::Instant, Duration)>,
    handler: HandlerFuture,
) -> impl Future<Output = Result<(), HandlerError>> + Send {
    let caught = AssertUnwindSafe(handler).catch_unwind();
    let limited = match timeout {
        None => Either::Left(caught.map(Ok)),
        // Boxed: a timer is large, and most consumers set no handler timeout.
        // A deadline past what an `Instant` holds is no deadline.
        Some((started, limit)) => match started.checked_add(limit) {
            Some(deadline) => Either::Right(Either::Left(Box::pin(tokio::time::timeout_at(
                deadline, caught,
            )))),
            None => Either::Right(Either::Right(caught.map(Ok))),
        },
    };
    limited.map(move |outcome| match outcome {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(panicked(&*panic)),
        Err(_) => Err(HandlerError::retry(format!(
            "handler did not finish within {:?}",
            timeout.map(|(_, limit)| limit).unwrap_or_default()
        ))),
    })
}

/// Runs `f` once with the task's context: for the dispatch loop's fast
/// path, which polls a handler in place.
async fn poll_once<T>(f: impl FnOnce(&mut std::task::Context<'_>) -> T) -> T {
    let mut f = Some(f);
    std::future::poll_fn(|cx| std::task::Poll::Ready(f.take().expect("polled once")(cx))).await
}

/// Polls a new handling once, and adds it to `in_flight` only if it is
/// still running: most finish in that first poll (a quick handler, an ack
/// without a round trip) and so skip the in-flight set's bookkeeping.
async fn start(
    in_flight: &mut FuturesUnordered<BoxFuture<'static, ()>>,
    mut handling: BoxFuture<'static, ()>,
) {
    if poll_once(|cx| handling.as_mut().poll(cx))
        .await
        .is_pending()
    {
        in_flight.push(handling);
    }
}

/// The deliveries of a consumer's subscriptions (one per event type), taken
/// in turn so that no type starves the others. Unlike
/// `futures_util::stream::select_all`, it allocates nothing per item.
struct Merged {
    /// Each subscription with its index in the consumer's routes.
    streams: Vec<(usize, Subscription)>,
    /// Where the next poll starts: after the stream that yielded last.
    next: usize,
}

impl Merged {
    fn new(streams: Vec<Subscription>) -> Self {
        Merged {
            streams: streams.into_iter().enumerate().collect(),
            next: 0,
        }
    }
}

impl Merged {
    /// Stops fetching: each subscription that can stop yields what it
    /// fetched, then ends; one that cannot (core NATS, at-most-once) is
    /// dropped at once.
    fn stop(&mut self) {
        self.streams.retain_mut(|(_, stream)| {
            let stoppable = stream.can_stop();
            stream.stop();
            stoppable
        });
    }
}

impl Stream for Merged {
    /// The index of the subscription, and what it yielded.
    type Item = (usize, <Subscription as Stream>::Item);

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let mut polled = 0;
        while polled < self.streams.len() {
            let index = (self.next + polled) % self.streams.len();
            let (from, stream) = &mut self.streams[index];
            match stream.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => {
                    let from = *from;
                    self.next = index + 1;
                    return Poll::Ready(Some((from, item)));
                }
                // An ended stream leaves the rotation, and the scan starts
                // again from the one moved into its place: every stream is
                // polled before this returns `Pending`.
                Poll::Ready(None) => {
                    self.streams.swap_remove(index);
                    self.next = index;
                    polled = 0;
                }
                Poll::Pending => polled += 1,
            }
        }
        if self.streams.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// Runs `work` while telling the backend, every half of its ack wait, that
/// `delivery` is still being handled: a handler (or a wait) longer than the
/// ack wait is not handed to another instance meanwhile. Free on backends
/// that never redeliver a held delivery.
pub(super) async fn holding<F: Future>(delivery: &transport::Delivery, work: F) -> F::Output {
    let Some(ack_wait) = delivery.info().ack_wait else {
        return work.await;
    };
    let period = (ack_wait / 2).max(Duration::from_millis(10));
    let mut work = std::pin::pin!(work);
    // Work that finishes at once (most handlers of most events) needs no
    // timer.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(output) = first {
        return output;
    }
    // The first report is due half an ack wait after the wait last
    // restarted, which may be before the hand-over (an event kept alive
    // while it waited in a buffer). One too far away for an `Instant` never
    // comes: nothing to keep alive.
    let Some(mut due) = delivery
        .ack_wait_since()
        .unwrap_or_else(std::time::Instant::now)
        .checked_add(period)
    else {
        return work.await;
    };
    loop {
        tokio::select! {
            biased;
            output = &mut work => return output,
            // Boxed: a timer is large, and only backends with an ack wait
            // need one.
            _ = Box::pin(tokio::time::sleep_until(due.into())) => {
                if let Err(e) = delivery.in_progress().await {
                    tracing::debug!(error = %e, "could not extend the ack wait");
                }
                let Some(next) = std::time::Instant::now().checked_add(period) else {
                    return work.await;
                };
                due = next;
            }
        }
    }
}

/// Logs a failed settle: the broker will redeliver after its ack wait, which
/// is the safe direction.
fn settle(result: Result<()>) {
    match result {
        Ok(()) => {}
        // Core NATS: there is no redelivery to ask for; the event is gone
        // (at-most-once), and the log must say so rather than promise a retry.
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            tracing::error!(error = %e, "the backend cannot redeliver; event dropped (at-most-once)");
        }
        Err(e) => tracing::warn!(error = %e, "settling a delivery failed; it will be redelivered"),
    }
}

/// Resolves on ctrl-c or, on Unix, SIGTERM: pass it to [`Consumer::run`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
