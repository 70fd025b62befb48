//! What a handler receives and what it answers.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::bus::Bus;
use crate::envelope::{Cause, Event, EventPayload};
use crate::error::BoxError;

/// Why a handler did not finish its work, and what should happen next.
///
/// Any error converts into a *retryable* `HandlerError` with `?`; say
/// [`HandlerError::reject`] when retrying cannot help (the event goes to the
/// dead-letter subject at once).
pub struct HandlerError {
    disposition: Disposition,
    source: BoxError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    Retry(Option<Duration>),
    Reject,
}

impl HandlerError {
    /// Try again, after the retry policy's backoff.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        HandlerError {
            disposition: Disposition::Retry(None),
            source: error.into(),
        }
    }

    /// Try again after `delay` (e.g. a rate limit's reset time), instead of
    /// the policy's backoff. Still counts against the attempt budget.
    pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> Self {
        HandlerError {
            disposition: Disposition::Retry(Some(delay)),
            source: error.into(),
        }
    }

    /// Give up now: the event is dead-lettered without further attempts.
    pub fn reject(error: impl Into<BoxError>) -> Self {
        HandlerError {
            disposition: Disposition::Reject,
            source: error.into(),
        }
    }

    /// Whether another attempt was asked for.
    pub fn is_retryable(&self) -> bool {
        matches!(self.disposition, Disposition::Retry(_))
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    pub(crate) fn disposition(&self) -> Disposition {
        self.disposition
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::retry(error)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("disposition", &self.disposition)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.disposition {
            Disposition::Retry(_) => write!(f, "handler failed (retryable): {}", self.source),
            Disposition::Reject => write!(f, "handler rejected the event: {}", self.source),
        }
    }
}

/// What a handler gets besides the event: the shared state, the attempt
/// number and a bus to publish reactions on.
pub struct Context<S> {
    env: Arc<Env<S>>,
    attempt: u32,
    cause: Cause,
}

/// What every handling of one consumer run shares, behind one `Arc`: a
/// context costs one reference count per event, not one per field.
pub(crate) struct Env<S> {
    pub(crate) state: S,
    pub(crate) bus: Bus,
    pub(crate) consumer: Arc<str>,
}

impl<S> Context<S> {
    pub(crate) fn new(env: Arc<Env<S>>, attempt: u32, cause: Cause) -> Self {
        Context {
            env,
            attempt,
            cause,
        }
    }

    /// The application state given to [`Consumer::state`](super::Consumer::state).
    pub fn state(&self) -> &S {
        &self.env.state
    }
    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.env.consumer
    }
    /// The bus the consumer runs on.
    pub fn bus(&self) -> &Bus {
        &self.env.bus
    }
    /// A new event in reaction to the one being handled: it joins its
    /// correlation, names it as cause and continues its trace.
    pub fn reaction<T: EventPayload>(&self, payload: T) -> Event<T> {
        let mut event = Event::new(self.env.bus.source().to_owned(), payload);
        event.metadata.set_cause(&self.cause);
        event
    }
}

impl<S: fmt::Debug> fmt::Debug for Context<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("state", &self.env.state)
            .field("consumer", &self.env.consumer)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// A typed handler: any `async fn(Event<T>, Context<S>) -> Result<(), E>`
/// where `E` converts into [`HandlerError`], closures included.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event handler for `{T}`",
    note = "a handler is an `async fn(events::Event<T>, events::consumer::Context<S>) -> Result<(), E>` with `E: Into<events::consumer::HandlerError>`"
)]
pub trait Handler<T, S>: Clone + Send + Sync + 'static {
    /// Handles one event.
    fn call(
        &self,
        event: Event<T>,
        context: Context<S>,
    ) -> BoxFuture<'static, Result<(), HandlerError>>;
}

impl<T, S, F, Fut, E> Handler<T, S> for F
where
    T: EventPayload,
    S: Send + 'static,
    F: Fn(Event<T>, Context<S>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<HandlerError>,
{
    fn call(
        &self,
        event: Event<T>,
        context: Context<S>,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        let fut = (self)(event, context);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
