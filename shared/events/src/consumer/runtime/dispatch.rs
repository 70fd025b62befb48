//! The dispatch loop: takes deliveries from the subscriptions within the
//! concurrency limit and starts their handling, on a fast path that polls
//! the handler in place when nothing has to wait.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::task::{waker_ref, ArcWake, AtomicWaker};
use futures_util::{Stream, StreamExt};
use std::panic::AssertUnwindSafe;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::dead_letter::reason_for;
use super::erased::{panic_text, panicked, ContextParts, ErasedHandler};
use super::ordering::busy;
use super::pipeline::Verdict;
use super::retry::Begun;
use super::stats::{Counter, Summary};
use super::{settle, HandlerFuture, Route, Shared, UNKNOWN_TYPE};
use crate::envelope::EventMetadata;
use crate::error::{Error, Result};
use crate::transport::{self, Subscription};
use crate::wire::{self, RawEvent};

/// The dispatch loop of a started consumer and what it owns.
pub(super) struct Dispatch<S> {
    pub(super) shared: Arc<Shared<S>>,
    pub(super) deliveries: Merged,
    pub(super) concurrency: usize,
    pub(super) ordered_by_key: bool,
    pub(super) shutdown_timeout: Duration,
    // In-flight handlers run as futures polled by this task, not as
    // spawned tasks: no task spawn and no cross-thread wake-up per event
    // (a spawned task per event ran at under half the throughput of a
    // hand-written loop). Handlers that need CPU parallelism spawn their
    // heavy work themselves.
    pub(super) in_flight: FuturesUnordered<BoxFuture<'static, ()>>,
    /// Per key, the completion signal of its last event in flight.
    pub(super) keys: HashMap<String, watch::Receiver<bool>>,
}

impl<S: Send + Sync + 'static> Dispatch<S> {
    pub(super) async fn run(mut self, stop: impl Future<Output = ()> + Send) -> Result<Summary> {
        let mut stop = Gated::new(stop);
        // The last error the subscription reported, returned by `run` after
        // draining if the subscription ends by itself (not by shutdown).
        let mut subscription_error: Option<Error> = None;
        let ended =
            std::future::poll_fn(|cx| self.poll_run(&mut stop, &mut subscription_error, cx)).await;
        self.shut_down(ended).await
    }

    /// The dispatch loop until shutdown (`Ready(None)`) or the end of the
    /// subscriptions (`Ready(Some(why))`). Each turn, in this order: is it
    /// time to stop; a finished handling; a new delivery, only while a slot
    /// is free (backpressure). Every delivery ready is started within one
    /// call, without a return to the executor in between.
    fn poll_run<F: Future<Output = ()>>(
        &mut self,
        stop: &mut Gated<F>,
        subscription_error: &mut Option<Error>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Error>> {
        stop.register(cx);
        loop {
            if stop.poll().is_ready() {
                return Poll::Ready(None);
            }
            if !self.in_flight.is_empty() {
                if let Poll::Ready(Some(())) = self.in_flight.poll_next_unpin(cx) {
                    continue;
                }
            }
            if self.in_flight.len() >= self.concurrency {
                return Poll::Pending;
            }
            match self.deliveries.poll_next_unpin(cx) {
                Poll::Ready(Some((from, Ok(delivery)))) => self.dispatch(from, delivery, cx),
                Poll::Ready(Some((_, Err(error)))) => {
                    tracing::warn!(consumer = %self.shared.name, error = %error, "subscription error");
                    *subscription_error = Some(error);
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Some(subscription_error.take().unwrap_or_else(|| {
                        Error::closed("the subscription ended (the transport was closed?)")
                    })));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Starts handling one delivery.
    pub(super) fn dispatch(
        &mut self,
        from: usize,
        delivery: transport::Delivery,
        cx: &mut std::task::Context<'_>,
    ) {
        let shared = &self.shared;
        if !self.ordered_by_key && shared.idempotency.is_none() {
            let rest = shared.begin(from, delivery, cx);
            self.in_flight.extend(rest);
            return;
        }
        let raw = match wire::decode(delivery.message()) {
            Ok(raw) => raw,
            Err(error) => {
                start(
                    &mut self.in_flight,
                    shared.clone().unreadable(delivery, error),
                    cx,
                );
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
            let rest = shared.begin_raw(from, raw, delivery, ordered, cx);
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
            start(&mut self.in_flight, Box::pin(handling), cx);
        }
    }
}

/// The shutdown future, polled only when it may have become ready: on the
/// first turn, and after it woke the task. Polling it on every turn of the
/// dispatch loop would cost every event a poll (a lock, for some).
pub(super) struct Gated<F> {
    future: std::pin::Pin<Box<F>>,
    woken: Arc<WakeFlag>,
}

/// Set by the gated future's waker, which then wakes the task.
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for WakeFlag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.woken.store(true, Ordering::Release);
        arc_self.task.wake();
    }
}

impl<F: Future<Output = ()>> Gated<F> {
    fn new(future: F) -> Self {
        Gated {
            future: Box::pin(future),
            woken: Arc::new(WakeFlag {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }

    /// Makes `cx`'s task the one woken: called each time the task polls.
    fn register(&self, cx: &std::task::Context<'_>) {
        self.woken.task.register(cx.waker());
    }

    /// Polls the future if its waker was called since the last poll.
    fn poll(&mut self) -> Poll<()> {
        if !self.woken.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = waker_ref(&self.woken);
        self.future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
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
    pub(super) fn begin(
        self: &Arc<Self>,
        from: usize,
        delivery: transport::Delivery,
        cx: &mut std::task::Context<'_>,
    ) -> Option<BoxFuture<'static, ()>> {
        if let Some((event_type, handler)) = self.routes.get(from) {
            let span = |metadata: &EventMetadata| self.span(metadata, &delivery);
            let fast = handler.try_call(
                delivery.message(),
                &self.env,
                delivery.attempt(),
                &self.layers,
                &span,
            );
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
    pub(super) fn begin_raw(
        self: &Arc<Self>,
        from: usize,
        raw: RawEvent,
        delivery: transport::Delivery,
        ordered: bool,
        cx: &mut std::task::Context<'_>,
    ) -> Option<BoxFuture<'static, ()>> {
        let span = self.span(&raw.metadata, &delivery);
        let Some((event_type, handler)) = self.route(from, raw.metadata.event_type()) else {
            let shared = self.clone();
            let handling = async move {
                shared
                    .handle(from, Box::new(raw), Box::new(delivery), ordered)
                    .await
            };
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
                        let verdict = shared.undecodable(error, attempt, event_type);
                        shared.conclude(delivery, verdict).await
                    }
                    .instrument(span),
                ))
            }
        }
    }

    /// Polls a handler's first attempt once and settles the event if that
    /// finished it; else the rest of the handling, as a future.
    pub(super) fn drive(
        self: &Arc<Self>,
        (event_type, handler): Route<'_, S>,
        span: tracing::Span,
        mut future: HandlerFuture,
        delivery: transport::Delivery,
        ordered: bool,
        cx: &mut std::task::Context<'_>,
    ) -> Option<BoxFuture<'static, ()>> {
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
                let verdict = shared
                    .attempts(event_type, &*handler, &delivery, begun, ordered)
                    .await;
                shared.conclude(delivery, verdict).await
            }
            .instrument(span),
        ))
    }

    /// A message that is not an event at all: dead-lettered at once.
    pub(super) fn unreadable(
        self: Arc<Self>,
        delivery: transport::Delivery,
        error: Error,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let verdict =
                Verdict::dead_letter(reason_for(&error), &error, delivery.attempt(), UNKNOWN_TYPE);
            self.conclude(Box::new(delivery), verdict).await;
        })
    }

    /// The handler of `event_type`, with the type's static name, for an
    /// event from subscription `from`. Each subscription is for one type, so
    /// that is the handler, unless the event says otherwise (a message
    /// published on another type's subject).
    pub(super) fn route(&self, from: usize, event_type: &str) -> Option<Route<'_, S>> {
        let matches = |route: &&(&'static str, Arc<dyn ErasedHandler<S>>)| route.0 == event_type;
        self.routes
            .get(from)
            .filter(matches)
            .or_else(|| self.routes.iter().find(matches))
            .map(|(event_type, handler)| (*event_type, handler))
    }

    /// Decodes `raw` for `handler` and calls it: the handler's future, not
    /// yet polled.
    pub(super) fn call(
        &self,
        handler: &dyn ErasedHandler<S>,
        raw: RawEvent,
        attempt: u32,
    ) -> Result<HandlerFuture> {
        let parts = ContextParts {
            env: self.env.clone(),
            attempt,
            layers: &self.layers,
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
}

/// Runs `f` once with the task's context, for code in an `async fn` that
/// polls something in place.
pub(super) async fn poll_once<T>(f: impl FnOnce(&mut std::task::Context<'_>) -> T) -> T {
    let mut f = Some(f);
    std::future::poll_fn(|cx| Poll::Ready(f.take().expect("polled once")(cx))).await
}

/// Polls a new handling once, and adds it to `in_flight` only if it is
/// still running: most finish in that first poll (a quick handler, an ack
/// without a round trip) and so skip the in-flight set's bookkeeping.
pub(super) fn start(
    in_flight: &mut FuturesUnordered<BoxFuture<'static, ()>>,
    mut handling: BoxFuture<'static, ()>,
    cx: &mut std::task::Context<'_>,
) {
    if handling.as_mut().poll(cx).is_pending() {
        in_flight.push(handling);
    }
}

/// The deliveries of a consumer's subscriptions (one per event type), taken
/// in turn so that no type starves the others. Unlike
/// `futures_util::stream::select_all`, it allocates nothing per item.
pub(super) struct Merged {
    /// Each subscription with its index in the consumer's routes.
    streams: Vec<(usize, Subscription)>,
    /// Where the next poll starts: after the stream that yielded last.
    next: usize,
}

impl Merged {
    pub(super) fn new(streams: Vec<Subscription>) -> Self {
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
    pub(super) fn stop(&mut self) {
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
        // One subscription (one event type): nothing to take turns with.
        if let [(from, stream)] = &mut self.streams[..] {
            return match stream.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => Poll::Ready(Some((*from, item))),
                Poll::Ready(None) => {
                    self.streams.clear();
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
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
