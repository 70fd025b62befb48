//! What a handler receives and what it answers.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;

use crate::bus::Bus;
use crate::envelope::{Cause, Event, EventPayload};
use crate::error::BoxError;

/// Why a handler did not finish its work, and what should happen next.
///
/// Any error converts into a *retryable* `HandlerError` with `?`; say
/// [`HandlerError::reject`] when retrying cannot help (the event goes to the
/// dead-letter subject at once).
///
/// # As a standard error
///
/// `HandlerError` does not implement [`std::error::Error`] itself, for the
/// reason `Box<dyn Error>` and `anyhow::Error` do not: it converts from
/// every error (that is what makes `?` work in a handler), and a type that
/// converts from every error cannot be one, or its conversion from itself
/// would be defined twice. It works with code that expects one all the
/// same:
/// - `?` turns it into a `Box<dyn Error>`, and
///   [`into_boxed`](Self::into_boxed) into a [`BoxError`] (`Send + Sync`);
///   either has the same message and the handler's error as its
///   [`source`](std::error::Error::source);
/// - [`as_error`](Self::as_error) (and `AsRef`) borrows it as a
///   `&dyn Error`, for a log line or an error report;
/// - a boxed `HandlerError` converts back without losing what it asks for:
///   a handler that returns `Result<(), BoxError>` (or any error type that
///   converts into one) can still reject.
///
/// ```
/// use events::consumer::HandlerError;
/// use events::BoxError;
///
/// fn check(total: i64) -> Result<(), Box<dyn std::error::Error>> {
///     if total < 0 {
///         Err(HandlerError::reject("negative total"))?;
///     }
///     Ok(())
/// }
/// let err = check(-1).unwrap_err();
/// assert_eq!(err.to_string(), "handler rejected the event: negative total");
/// assert_eq!(err.source().unwrap().to_string(), "negative total");
///
/// let boxed: BoxError = HandlerError::reject("negative total").into_boxed();
/// assert!(!HandlerError::from(boxed).is_retryable(), "still a rejection");
/// ```
pub struct HandlerError(Failure);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    Retry(Option<Duration>),
    Reject,
}

/// What a [`HandlerError`] holds; the `std::error::Error` it is seen as.
struct Failure {
    disposition: Disposition,
    source: BoxError,
}

impl Failure {
    /// `error`'s own cause if it is a boxed `HandlerError` (so wrapping one
    /// again does not repeat its message), else `error`.
    fn cause(error: impl Into<BoxError>) -> BoxError {
        match error.into().downcast::<Failure>() {
            Ok(failure) => failure.source,
            Err(other) => other,
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("disposition", &self.disposition)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Failure {
    // The source's text is part of the message: the dead-letter header
    // and the runtime's logs carry this one line, not the chain.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.disposition {
            Disposition::Retry(_) => write!(f, "handler failed (retryable): {}", self.source),
            Disposition::Reject => write!(f, "handler rejected the event: {}", self.source),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl HandlerError {
    fn new(disposition: Disposition, error: impl Into<BoxError>) -> Self {
        HandlerError(Failure {
            disposition,
            source: Failure::cause(error),
        })
    }

    /// Try again, after the retry policy's backoff.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Self::new(Disposition::Retry(None), error)
    }

    /// Try again after `delay` (e.g. a rate limit's reset time), instead of
    /// the policy's backoff. Still counts against the attempt budget. Any
    /// delay is taken; a backend that counts in a narrower unit caps it
    /// (JetStream: about 292 years).
    pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> Self {
        Self::new(Disposition::Retry(Some(delay)), error)
    }

    /// Give up now: the event is dead-lettered without further attempts.
    pub fn reject(error: impl Into<BoxError>) -> Self {
        Self::new(Disposition::Reject, error)
    }

    /// Whether another attempt was asked for.
    pub fn is_retryable(&self) -> bool {
        matches!(self.0.disposition, Disposition::Retry(_))
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0.source
    }

    /// This error as a `&dyn Error`: the same message, and the underlying
    /// error as its source.
    pub fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &self.0
    }

    /// This error boxed as a `std::error::Error`, with the same message and
    /// the underlying error as its source. Converting the box back into a
    /// `HandlerError` (`HandlerError::from`, or `?`) keeps what it asks for
    /// (retry, retry after a delay, reject).
    pub fn into_boxed(self) -> BoxError {
        Box::new(self.0)
    }

    pub(crate) fn disposition(&self) -> Disposition {
        self.0.disposition
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        // A boxed `HandlerError` keeps its disposition; any other error is
        // retryable.
        match error.into().downcast::<Failure>() {
            Ok(failure) => HandlerError(*failure),
            Err(other) => HandlerError::retry(other),
        }
    }
}

impl From<HandlerError> for Box<dyn std::error::Error> {
    fn from(error: HandlerError) -> Self {
        Box::new(error.0)
    }
}

impl From<HandlerError> for Box<dyn std::error::Error + Send> {
    fn from(error: HandlerError) -> Self {
        Box::new(error.0)
    }
}

impl AsRef<dyn std::error::Error + Send + Sync> for HandlerError {
    fn as_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &self.0
    }
}

impl AsRef<dyn std::error::Error> for HandlerError {
    fn as_ref(&self) -> &(dyn std::error::Error + 'static) {
        &self.0
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
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
/// where `E` converts into [`HandlerError`], closures included. It is called
/// through a shared reference and never cloned: a closure may own what it
/// needs without being `Clone`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event handler for `{T}`",
    note = "a handler is an `async fn(events::Event<T>, events::consumer::Context<S>) -> Result<(), E>` with `E: Into<events::consumer::HandlerError>`"
)]
pub trait Handler<T, S>: Send + Sync + 'static {
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
    F: Fn(Event<T>, Context<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<HandlerError>,
{
    fn call(
        &self,
        event: Event<T>,
        context: Context<S>,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        // A `map` rather than an `async` block: the block would hold the
        // handler's future twice (captured, and moved into its `.await`),
        // and the box is allocated and written once per event.
        Box::pin((self)(event, context).map(|result| result.map_err(Into::into)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_error_is_usable_as_a_std_error() {
        let err = HandlerError::reject(std::io::Error::other("disk full"));
        assert_eq!(err.as_error().to_string(), err.to_string());
        assert_eq!(
            err.as_error().source().map(|s| s.to_string()).as_deref(),
            Some("disk full")
        );
        let by_ref: &dyn std::error::Error = err.as_ref();
        assert_eq!(by_ref.to_string(), "handler rejected the event: disk full");

        fn report() -> Result<(), Box<dyn std::error::Error>> {
            Err(HandlerError::retry("flaky"))?;
            Ok(())
        }
        let boxed = report().unwrap_err();
        assert_eq!(boxed.to_string(), "handler failed (retryable): flaky");
        assert_eq!(boxed.source().unwrap().to_string(), "flaky");
        let sendable: Box<dyn std::error::Error + Send> = HandlerError::retry("x").into();
        assert_eq!(sendable.to_string(), "handler failed (retryable): x");
    }

    #[test]
    fn a_boxed_handler_error_converts_back_with_its_disposition() {
        let delay = Duration::from_secs(7);
        let cases = [
            HandlerError::reject("bad"),
            HandlerError::retry("flaky"),
            HandlerError::retry_after("rate limited", delay),
        ];
        for err in cases {
            let (disposition, text) = (err.disposition(), err.to_string());
            let back = HandlerError::from(err.into_boxed());
            assert_eq!(back.disposition(), disposition);
            assert_eq!(back.to_string(), text, "not wrapped twice");
        }
        // A handler returning a boxed error can still reject.
        fn handler() -> Result<(), BoxError> {
            Err(HandlerError::reject("unknown SKU").into_boxed())
        }
        let err: HandlerError = handler().unwrap_err().into();
        assert!(!err.is_retryable());
        assert_eq!(err.source().to_string(), "unknown SKU");
        // Any other error is retryable.
        let other: HandlerError = std::io::Error::other("io").into();
        assert!(other.is_retryable());
        // Wrapping a handler error in a new one keeps one message.
        let again = HandlerError::reject(HandlerError::retry("inner").into_boxed());
        assert_eq!(again.to_string(), "handler rejected the event: inner");
    }
}
