//! A started consumer ([`Running`]), graceful shutdown and the signals.

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::dispatch::{poll_once, start, Dispatch};
use super::ordering::busy;
use super::stats::{Counter, Summary};
use super::{settle, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::transport;
use crate::wire::{self};

/// A started consumer (see [`Consumer::start`](super::Consumer::start)): its events are handled in
/// a task of its own until [`shutdown`](Self::shutdown).
///
/// Dropping it shuts the consumer down in the background, as `shutdown`
/// does, without waiting for the summary.
#[must_use = "dropping a running consumer shuts it down"]
pub struct Running {
    pub(super) name: Arc<str>,
    pub(super) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(super) task: tokio::task::JoinHandle<Result<Summary>>,
}

impl Running {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the consumer has stopped by itself (its subscriptions
    /// ended: see [`Consumer::run`](super::Consumer::run)); `shutdown` then returns why.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Shuts down gracefully and returns what was done:
    ///
    /// 1. stop fetching: nothing more is asked of the broker;
    /// 2. release what was fetched ahead and not started: each is nacked at
    ///    once, in order, for another instance to take (with
    ///    [`ordered_by_key`](super::Consumer::ordered_by_key), an event whose key
    ///    has an earlier event in flight waits for that one to settle
    ///    first, so the key's events are handed back in order; the next
    ///    instance gets them in that order where the backend keeps it: the
    ///    memory bus, and a JetStream stream partitioned by key);
    /// 3. let in-flight handlers finish within the
    ///    [`shutdown_timeout`](super::Consumer::shutdown_timeout), then nack (never
    ///    ack) those still running, in key order;
    /// 4. flush, and confirm with the broker that every ack and nack
    ///    arrived (JetStream: a server round trip).
    ///
    /// Returns within the shutdown timeout plus a few seconds for steps 2
    /// and 4 (each bounded), whatever the handlers and the broker do.
    ///
    /// # Errors
    ///
    /// As [`Consumer::run`](super::Consumer::run): the consumer had stopped by itself because its
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
    /// As [`Consumer::run`](super::Consumer::run).
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

    pub(super) async fn join(&mut self) -> Result<Summary> {
        joined((&mut self.task).await)
    }
}

pub(super) fn joined(
    ended: std::result::Result<Result<Summary>, tokio::task::JoinError>,
) -> Result<Summary> {
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

/// How long shutdown waits, at most, for what follows the handlers: the
/// nacks of what did not finish, and the broker's confirmation of every
/// settle.
pub(super) const SETTLE_GRACE: Duration = Duration::from_secs(3);

/// How long shutdown waits, at most, for the subscriptions to hand over
/// what they fetched ahead (JetStream: until each open pull ends on the
/// server, within its expiry, 5 s by default). In-flight handlers go on
/// meanwhile.
pub(super) const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// The longest shutdown timeout honoured (a longer one is saturated): far
/// beyond any broker's ack wait, and clear of timer overflow.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

impl<S> Shared<S> {
    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Resolves once shutdown's deadline has passed, as seen at a poll:
    /// `run` polls every handling again when it sets the flag.
    pub(super) fn cancellation(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|_| {
            if self.is_cancelled() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

impl<S: Send + Sync + 'static> Dispatch<S> {
    /// Stops fetching, releases what was fetched and not started, gives
    /// in-flight work its deadline, then confirms every settle.
    pub(super) async fn shut_down(mut self, ended: Option<Error>) -> Result<Summary> {
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
    pub(super) async fn release(&mut self, delivery: transport::Delivery) {
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
            _ => poll_once(|cx| start(&mut self.in_flight, Box::pin(released), cx)).await,
        }
    }
}

/// Resolves on ctrl-c or, on Unix, SIGTERM: pass it to [`Consumer::run`](super::Consumer::run).
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
