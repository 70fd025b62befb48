//! A test harness: real handlers on the memory bus, and a record of what
//! was published and how every delivery was settled, to wait on and assert
//! against without sleeping.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::Stream;
use tokio::sync::Notify;

use crate::backend::memory::{MemoryConfig, MemoryTransport};
use crate::bus::Bus;
use crate::consumer::{dead_letter_headers, Context, DeadLetter, Handler, HandlerError};
use crate::envelope::{Event, EventPayload};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{
    Acker, Capabilities, Delivery, Message, Subject, SubscribeOptions, Subscription, Transport,
};
use crate::versioning::{Upcasters, VersionPolicy};

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Acknowledged: handled (or a duplicate or skipped by policy).
    Acked,
    /// Handed back for another attempt, after `delay` if given.
    Nacked {
        /// The delay asked for.
        delay: Option<Duration>,
    },
    /// Terminated: never delivered again (dead-lettered).
    Terminated,
    /// Released unhandled by a closing subscription or consumer.
    Released,
}

/// One settled delivery, as the [`Harness`] recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settled {
    /// The subject it was delivered on.
    pub subject: String,
    /// The CloudEvents id, if the message decoded as an event.
    pub event_id: Option<String>,
    /// The delivery attempt, from 1.
    pub attempt: u32,
    /// How it was settled.
    pub settlement: Settlement,
    /// Whether it was a dead-letter copy (delivered to a reader of dead
    /// letters), rather than an event.
    pub dead_letter: bool,
}

/// What the harness saw.
#[derive(Default)]
struct Record {
    published: Vec<Message>,
    settled: Vec<Settled>,
}

/// The record and the means to wait for it to change.
#[derive(Default)]
struct Log {
    record: Mutex<Record>,
    changed: Notify,
}

impl Log {
    fn record(&self) -> MutexGuard<'_, Record> {
        // A panic while holding the lock leaves a record that is still
        // whole (every update is one push), so it stays readable.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.record());
        self.changed.notify_waiters();
    }
}

/// Real handlers on the memory bus, with a record of every message
/// published and every delivery settled (acked, nacked, terminated,
/// released): wait until `n` events are handled or dead-lettered, read what
/// was published as typed events, and count attempts and dead letters.
/// Every wait is bounded and wakes on the change it waits for: no sleeps.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # struct OrderPlaced { order_id: String }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # struct StockReserved { order_id: String }
/// # impl events::EventPayload for StockReserved { const TYPE: &'static str = "inventory.stock_reserved"; }
/// use std::time::Duration;
/// use events::consumer::{Consumer, Context, HandlerError, RetryPolicy};
/// use events::testing::{Harness, Script};
/// use events::Event;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let harness = Harness::new("inventory");
/// // The database is down for the first two attempts.
/// let script = Script::new().fail(2);
/// let steps = script.clone();
/// let reserve = move |event: Event<OrderPlaced>, ctx: Context<()>| {
///     let steps = steps.clone();
///     async move {
///         steps.step()?;
///         let reserved = ctx.reaction(StockReserved { order_id: event.payload.order_id });
///         ctx.bus().publish(&reserved).await?;
///         Ok::<_, HandlerError>(())
///     }
/// };
/// let retry = RetryPolicy::exponential().initial_delay(Duration::from_millis(1));
/// let consumer = Consumer::new(harness.bus(), "inventory")?.handle(reserve).retry(retry);
/// let running = consumer.start().await?;
///
/// let placed = harness.bus().event(OrderPlaced { order_id: "o-1".into() });
/// harness.bus().publish(&placed).await?;
/// harness.wait_for(1, Duration::from_secs(5)).await?;
///
/// assert_eq!(harness.attempts(placed.metadata.id()), 3);
/// assert_eq!(script.calls(), 3);
/// let reserved = harness.published::<StockReserved>()?;
/// assert_eq!(reserved[0].payload.order_id, "o-1");
/// assert!(harness.dead_letters()?.is_empty());
/// running.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Harness {
    bus: Bus,
    transport: Arc<Recording>,
}

impl Harness {
    /// A harness whose bus publishes as `source`, on a memory transport
    /// with the default settings.
    pub fn new(source: &str) -> Self {
        Harness::with_config(source, MemoryConfig::new())
            .expect("the default prefix and a memory transport make a bus")
    }

    /// A harness on a memory transport with `config`; fails with
    /// [`InvalidInput`](ErrorKind::InvalidInput) for a bad `source`.
    pub fn with_config(source: &str, config: MemoryConfig) -> Result<Self> {
        let transport = Arc::new(Recording {
            inner: MemoryTransport::with_config(config),
            log: Arc::default(),
        });
        let bus = Bus::builder_shared(transport.clone())
            .source(source)
            .build()?;
        Ok(Harness { bus, transport })
    }

    /// The bus: publish with it, and build the consumers under test on it.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Another service's bus on the same transport, publishing as
    /// `source`: for tests of services that react to each other.
    pub fn service(&self, source: &str) -> Result<Bus> {
        Bus::builder_shared(self.transport.clone())
            .source(source)
            .build()
    }

    /// Every message published so far, in order (dead-letter copies
    /// included).
    pub fn published_messages(&self) -> Vec<Message> {
        self.transport.log.record().published.clone()
    }

    /// Every event of type `T` published so far, decoded, in order.
    /// Fails with [`Decode`](ErrorKind::Decode) if one does not decode as
    /// `T` at its version.
    pub fn published<T: EventPayload>(&self) -> Result<Vec<Event<T>>> {
        let subject = self.bus.codec().subject_for(T::TYPE)?;
        self.transport
            .log
            .record()
            .published
            .iter()
            .filter(|m| m.subject == subject && !is_dead_letter(m))
            .map(|m| {
                let raw = crate::wire::decode(m)?;
                Ok(raw
                    .into_event::<T>(&Upcasters::default(), VersionPolicy::Reject)?
                    .event)
            })
            .collect()
    }

    /// Every dead-letter copy published so far, in order.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.transport
            .log
            .record()
            .published
            .iter()
            .filter(|m| is_dead_letter(m))
            .map(DeadLetter::from_message)
            .collect()
    }

    /// Every settled delivery so far, in order.
    pub fn settlements(&self) -> Vec<Settled> {
        self.transport.log.record().settled.clone()
    }

    /// How many deliveries of event `id` were settled by a reader (acked,
    /// nacked or terminated; releases are not attempts). Dead-letter copies
    /// do not count.
    pub fn attempts(&self, id: &str) -> u32 {
        let record = self.transport.log.record();
        let attempts = record
            .settled
            .iter()
            .filter(|s| {
                !s.dead_letter
                    && s.event_id.as_deref() == Some(id)
                    && s.settlement != Settlement::Released
            })
            .count();
        u32::try_from(attempts).unwrap_or(u32::MAX)
    }

    /// Events handled so far: deliveries acked (dead-letter copies apart).
    pub fn handled(&self) -> usize {
        handled(&self.transport.log.record())
    }

    /// Events dead-lettered so far: dead-letter copies published.
    pub fn dead_lettered(&self) -> usize {
        dead_lettered(&self.transport.log.record())
    }

    /// Waits until at least `n` events were handled or dead-lettered, at
    /// most `timeout`. Fails with [`Unavailable`](ErrorKind::Unavailable),
    /// saying what it saw, when the time is up.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, |record| handled(record) + dead_lettered(record) >= n)
            .await
            .map_err(|e| {
                let record = self.transport.log.record();
                Error::new(
                    e.kind(),
                    format!(
                        "{} before {n} events were handled or dead-lettered (handled {}, dead-lettered {})",
                        e.detail(),
                        handled(&record),
                        dead_lettered(&record)
                    ),
                )
            })
    }

    /// Waits until `n` events of type `T` were published, at most
    /// `timeout`, and returns them all.
    pub async fn wait_published<T: EventPayload>(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Event<T>>> {
        let subject = self.bus.codec().subject_for(T::TYPE)?;
        self.wait_until(timeout, |record| {
            record
                .published
                .iter()
                .filter(|m| m.subject == subject)
                .count()
                >= n
        })
        .await
        .map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "{} before {n} {} events were published",
                    e.detail(),
                    T::TYPE
                ),
            )
        })?;
        self.published::<T>()
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Record) -> bool,
    ) -> Result<()> {
        let log = &self.transport.log;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a change between the check
            // and the wait still wakes it.
            let changed = log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&log.record()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("waited {timeout:?}"),
                ));
            }
        }
    }
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let record = self.transport.log.record();
        f.debug_struct("Harness")
            .field("source", &self.bus.source())
            .field("published", &record.published.len())
            .field("settled", &record.settled.len())
            .finish()
    }
}

fn is_dead_letter(message: &Message) -> bool {
    message.headers.get(dead_letter_headers::REASON).is_some()
}

fn handled(record: &Record) -> usize {
    record
        .settled
        .iter()
        .filter(|s| !s.dead_letter && s.settlement == Settlement::Acked)
        .count()
}

fn dead_lettered(record: &Record) -> usize {
    record
        .published
        .iter()
        .filter(|m| is_dead_letter(m))
        .count()
}

/// The memory transport, recording publishes and settlements.
#[derive(Debug)]
struct Recording {
    inner: MemoryTransport,
    log: Arc<Log>,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log").finish_non_exhaustive()
    }
}

impl Transport for Recording {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    fn publish(&self, message: Message) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let copy = message.clone();
            self.inner.publish(message).await?;
            self.log.update(|r| r.published.push(copy));
            Ok(())
        })
    }

    fn subscribe(&self, options: SubscribeOptions) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(async move {
            let inner = self.inner.subscribe(options).await?;
            let can_stop = inner.can_stop();
            let stop = Arc::new(AtomicBool::new(false));
            let stream = Recorded {
                inner,
                log: self.log.clone(),
                stop: stop.clone(),
            };
            Ok(if can_stop {
                Subscription::with_stop(stream, move || stop.store(true, Ordering::SeqCst))
            } else {
                Subscription::new(stream)
            })
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.flush()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.close()
    }

    fn check_subject(&self, subject: &Subject) -> BoxFuture<'_, Result<()>> {
        self.inner.check_subject(subject)
    }
}

/// A subscription whose deliveries record how they are settled.
struct Recorded {
    inner: Subscription,
    log: Arc<Log>,
    /// Set by the outer subscription's stop: passed on at the next poll.
    stop: Arc<AtomicBool>,
}

impl Stream for Recorded {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.stop.swap(false, Ordering::SeqCst) {
            self.inner.stop();
        }
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        polled.map(|item| item.map(|result| result.map(|d| self.wrap(d))))
    }
}

impl Recorded {
    fn wrap(&self, delivery: Delivery) -> Delivery {
        if !delivery.needs_ack() {
            return delivery;
        }
        let message = delivery.message().clone();
        let info = delivery.info();
        // The memory transport starts no ack wait before the hand-over
        // (only JetStream reports one), so the new delivery needs none.
        let acker = RecordingAcker {
            event_id: crate::wire::decode(&message)
                .ok()
                .map(|raw| raw.metadata.id().to_owned()),
            subject: message.subject.as_str().to_owned(),
            attempt: info.attempt,
            dead_letter: is_dead_letter(&message),
            inner: delivery,
            log: self.log.clone(),
        };
        Delivery::new(message, info, Box::new(acker))
    }
}

/// Settles the original delivery and records how.
struct RecordingAcker {
    inner: Delivery,
    log: Arc<Log>,
    subject: String,
    event_id: Option<String>,
    attempt: u32,
    dead_letter: bool,
}

impl fmt::Debug for RecordingAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingAcker")
            .field("subject", &self.subject)
            .field("event_id", &self.event_id)
            .finish_non_exhaustive()
    }
}

impl RecordingAcker {
    /// Settles through `settle`, and records it once that succeeded.
    fn settle<F>(self, settlement: Settlement, settle: F) -> BoxFuture<'static, Result<()>>
    where
        F: FnOnce(Delivery) -> BoxFuture<'static, Result<()>>,
    {
        let RecordingAcker {
            inner,
            log,
            subject,
            event_id,
            attempt,
            dead_letter,
        } = self;
        let done = settle(inner);
        Box::pin(async move {
            done.await?;
            log.update(|r| {
                r.settled.push(Settled {
                    subject,
                    event_id,
                    attempt,
                    settlement,
                    dead_letter,
                })
            });
            Ok(())
        })
    }
}

impl Acker for RecordingAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.settle(Settlement::Acked, |d| Box::pin(d.ack()))
    }

    fn nack(
        self: Box<Self>,
        _: Message,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<()>> {
        self.settle(Settlement::Nacked { delay }, move |d| {
            Box::pin(d.nack(delay))
        })
    }

    fn term(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.settle(Settlement::Terminated, |d| Box::pin(d.term()))
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.inner.in_progress())
    }

    fn release(self: Box<Self>, _: Message) -> BoxFuture<'static, Result<()>> {
        self.settle(Settlement::Released, |d| Box::pin(d.release()))
    }

    fn abandon(self: Box<Self>, _: Message) {
        // Dropping the original hands it to its own acker's `abandon`.
        drop(self.inner);
    }
}

/// A handler's script: fail the first attempts, then succeed (or keep
/// failing), counting every call. Clones share the script.
///
/// Call [`step`](Self::step) at the start of a handler (it returns the
/// scripted error, if any, for `?`), or use [`handler`](Self::handler) for
/// a handler that does nothing else.
///
/// ```
/// use events::testing::Script;
///
/// let script = Script::new().fail(2).reject();
/// assert!(script.step().unwrap_err().is_retryable());
/// assert!(script.step().unwrap_err().is_retryable());
/// assert!(!script.step().unwrap_err().is_retryable());
/// assert!(script.step().is_ok());
/// assert_eq!(script.calls(), 4);
/// ```
#[derive(Clone, Default)]
pub struct Script {
    state: Arc<Mutex<ScriptState>>,
}

#[derive(Default)]
struct ScriptState {
    steps: VecDeque<Step>,
    /// What follows the steps: success, or failing forever.
    then_fail: bool,
    calls: u32,
}

#[derive(Clone, Copy)]
enum Step {
    Retry,
    Reject,
}

impl Script {
    /// A script that always succeeds.
    pub fn new() -> Self {
        Script::default()
    }

    /// The next `times` calls fail with a retryable error.
    pub fn fail(self, times: u32) -> Self {
        self.push((0..times).map(|_| Step::Retry))
    }

    /// The next call fails with a non-retryable error (dead-lettered at
    /// once).
    pub fn reject(self) -> Self {
        self.push([Step::Reject])
    }

    /// After the scripted steps, every call fails with a retryable error
    /// (until the retry policy gives up).
    pub fn then_fail_forever(self) -> Self {
        self.lock().then_fail = true;
        self
    }

    fn push(self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.lock().steps.extend(steps);
        self
    }

    fn lock(&self) -> MutexGuard<'_, ScriptState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next step: `Ok` or the scripted error.
    pub fn step(&self) -> Result<(), HandlerError> {
        let mut state = self.lock();
        state.calls += 1;
        let call = state.calls;
        let step = match state.steps.pop_front() {
            Some(step) => step,
            None if state.then_fail => Step::Retry,
            None => return Ok(()),
        };
        Err(match step {
            Step::Retry => HandlerError::retry(format!("scripted failure on call {call}")),
            Step::Reject => HandlerError::reject(format!("scripted rejection on call {call}")),
        })
    }

    /// How many times [`step`](Self::step) was called.
    pub fn calls(&self) -> u32 {
        self.lock().calls
    }

    /// A handler for `T` that only follows this script.
    pub fn handler<T: EventPayload, S: Send + 'static>(&self) -> impl Handler<T, S> {
        let script = self.clone();
        move |_: Event<T>, _: Context<S>| {
            let result = script.step();
            async move { result }
        }
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Script")
            .field("calls", &state.calls)
            .field("steps_left", &state.steps.len())
            .field("then_fail", &state.then_fail)
            .finish()
    }
}

#[cfg(test)]
mod tests;
