//! The timeout layer, with panic recovery: one attempt's handler future
//! limited to the handler timeout, and a panic in it turned into a failed
//! attempt, so one bad handler call cannot take the consumer down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::FutureExt as _;

use super::erased::panicked;
use super::HandlerFuture;
use crate::consumer::handler::HandlerError;

/// Runs a handler with an optional deadline (from when it started, for
/// how long); a panic becomes a retryable error.
pub(super) fn guarded(
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
