//! User middleware around handler calls: [`Layer`] and [`Next`].

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::handler::HandlerError;

/// What a handler call returns, and so what a [`Layer`] returns: the
/// handling's future, boxed.
pub type HandlerFuture = BoxFuture<'static, Result<(), HandlerError>>;

/// Middleware around every handler call of a consumer: a rate limit, a
/// circuit breaker, a timing or an audit of your own.
///
/// A layer gets the rest of the pipeline as [`Next`]: the layers inside it,
/// then the handler. It may run it ([`Next::run`] calls the handler and
/// returns its future, which does the work when polled), wrap what it
/// returns, or not run it at all and return its own result. Whatever it
/// returns is the attempt's result, and the runtime settles the event from
/// it as from a handler's: `Ok` acks, a retryable [`HandlerError`] retries
/// with the consumer's policy, a rejection dead-letters. A panic in a layer
/// fails the attempt as a panicking handler does.
///
/// Layers are added with [`Consumer::layer`](super::Consumer::layer); the
/// first added is the outermost. A consumer without layers calls its
/// handlers directly, with nothing boxed or allocated for them.
///
/// A circuit breaker that stops calling the handler after five failures in
/// a row, and tries one call again after 30 seconds:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::{Duration, Instant};
///
/// use events::consumer::{HandlerError, HandlerFuture, Layer, Next};
///
/// #[derive(Default)]
/// struct Breaker {
///     failures: u32,
///     open_until: Option<Instant>,
/// }
///
/// #[derive(Clone, Default)]
/// struct CircuitBreaker(Arc<Mutex<Breaker>>);
///
/// impl Layer for CircuitBreaker {
///     fn call(&self, next: Next<'_>) -> HandlerFuture {
///         let open = self.0.lock().unwrap().open_until.is_some_and(|t| Instant::now() < t);
///         if open {
///             // Not called: retried later with the consumer's backoff.
///             return Box::pin(async { Err::<(), _>(HandlerError::retry("circuit open")) });
///         }
///         let handling = next.run();
///         let breaker = self.0.clone();
///         Box::pin(async move {
///             let result = handling.await;
///             let mut b = breaker.lock().unwrap();
///             if result.is_ok() {
///                 *b = Breaker::default();
///             } else {
///                 b.failures += 1;
///                 if b.failures >= 5 {
///                     b.open_until = Some(Instant::now() + Duration::from_secs(30));
///                 }
///             }
///             result
///         })
///     }
/// }
///
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct OrderPlaced { order_id: String }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// # async fn reserve(_: events::Event<OrderPlaced>, _: events::consumer::Context<()>) -> Result<(), HandlerError> { Ok(()) }
/// let bus = events::Bus::memory("inventory");
/// let consumer = events::consumer::Consumer::new(&bus, "inventory")?
///     .layer(CircuitBreaker::default())
///     .handle(reserve);
/// # let _ = consumer;
/// # Ok::<(), events::Error>(())
/// ```
pub trait Layer: Send + Sync + 'static {
    /// Handles one attempt at one event: runs `next`, or not.
    fn call(&self, next: Next<'_>) -> HandlerFuture;
}

/// The rest of the pipeline below a [`Layer`]: the layers inside it, then
/// the handler. Running it is the only way to reach the handler, and it
/// can be run once.
pub struct Next<'a> {
    event_type: &'static str,
    attempt: u32,
    layers: &'a [Arc<dyn Layer>],
    handler: &'a mut (dyn FnMut() -> HandlerFuture + 'a),
}

impl Next<'_> {
    /// The type of the event being handled (its `EventPayload::TYPE`).
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Runs the next layer or, after the last, calls the handler: returns
    /// the handling's future, not yet polled.
    pub fn run(self) -> HandlerFuture {
        match self.layers.split_first() {
            Some((layer, inner)) => layer.call(Next {
                layers: inner,
                ..self
            }),
            None => (self.handler)(),
        }
    }
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("event_type", &self.event_type)
            .field("attempt", &self.attempt)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

/// Calls `handler` through `layers` (outermost first).
pub(crate) fn layered(
    layers: &[Arc<dyn Layer>],
    event_type: &'static str,
    attempt: u32,
    handler: impl FnOnce() -> HandlerFuture,
) -> HandlerFuture {
    let mut handler = Some(handler);
    // `Next::run` takes `Next` by value, and only the innermost one calls
    // this: the handler is called at most once.
    let mut call = || match handler.take() {
        Some(handler) => handler(),
        None => Box::pin(std::future::ready(Err(HandlerError::retry(
            "the handler was already called for this attempt",
        )))),
    };
    Next {
        event_type,
        attempt,
        layers,
        handler: &mut call,
    }
    .run()
}
