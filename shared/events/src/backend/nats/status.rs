//! Connection state and counters, fed by the client's event callback.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::watch;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected yet (retrying the first connection).
    Connecting,
    /// Connected to a server.
    Connected,
    /// The connection was lost; the client is reconnecting.
    Disconnected,
    /// Closed for good (by `close`, or after the last reconnect attempt).
    Closed,
}

/// A snapshot of the connection's health.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsStatus {
    /// The current state.
    pub state: ConnectionState,
    /// Successful connections, the first one included (`connects - 1`
    /// reconnects).
    pub connects: u64,
    /// Connections lost.
    pub disconnects: u64,
    /// Times a subscription's buffer was full and the client dropped
    /// messages for it. Any non-zero value means lost messages.
    pub slow_consumer_events: u64,
    /// The server announced it is shutting down (lame duck mode): the client
    /// will move to another server.
    pub lame_duck: bool,
    /// The last error the server or client reported, if any.
    pub last_error: Option<String>,
}

/// Why a transport the application did not close is `Closed`.
pub(crate) const LOST: &str =
    "the nats client's connection task stopped (it gave up reconnecting, \
     or failed on something it could not handle); nothing more is received or sent: \
     connect a new transport";

/// When a publish (or one window of a batch) gives up: `limit` after it
/// started. A limit too large for an `Instant` (`Duration::MAX`, "wait as
/// long as it takes") means no deadline, never an overflow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    started: tokio::time::Instant,
    limit: Duration,
    at: Option<tokio::time::Instant>,
}

impl Deadline {
    /// `limit` from now.
    pub(crate) fn after(limit: Duration) -> Self {
        let started = tokio::time::Instant::now();
        Deadline {
            started,
            limit,
            at: started.checked_add(limit),
        }
    }

    /// The limit it was made with.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// Time since it started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time left (`Duration::MAX` without a deadline).
    pub(crate) fn left(&self) -> Duration {
        self.at.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(tokio::time::Instant::now())
        })
    }

    /// The earlier of the deadline and `wait` from now (`None`: neither
    /// fits in an `Instant`).
    #[cfg(feature = "jetstream")]
    pub(crate) fn within(&self, wait: Duration) -> Option<tokio::time::Instant> {
        let wait = tokio::time::Instant::now().checked_add(wait);
        match (wait, self.at) {
            (Some(w), Some(at)) => Some(w.min(at)),
            (w, at) => w.or(at),
        }
    }

    /// Runs `f` until the deadline: `None` if it passed first.
    #[cfg(feature = "jetstream")]
    pub(crate) async fn run<F: Future>(&self, f: F) -> Option<F::Output> {
        match self.at {
            Some(at) => tokio::time::timeout_at(at, f).await.ok(),
            None => Some(f.await),
        }
    }
}

/// Sleeps until `until`; forever for `None`.
#[cfg(feature = "jetstream")]
pub(crate) async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Shared between the event callback and the transport.
#[derive(Debug)]
pub(crate) struct Tracker {
    transport: &'static str,
    state: watch::Sender<ConnectionState>,
    status: Mutex<NatsStatus>,
    /// Set by the watchdog once the connection has been down for longer
    /// than the publish timeout (or closed); cleared on reconnect.
    unavailable: std::sync::atomic::AtomicBool,
    /// The server refused the credentials since the last successful connect
    /// (revoked, or its config reloaded): the reconnects will not succeed.
    refused: std::sync::atomic::AtomicBool,
    /// Publishes blocked on a full client queue, woken when `unavailable`
    /// is set.
    blocked: BlockedPublishers,
}

/// The wakers of publishes blocked on a full client queue. A task is
/// registered once however often it is polled while blocked (deduplicated
/// with [`Waker::will_wake`]) and nothing is unregistered when a send
/// completes: no lock pair and no waker clone per blocked poll, which is
/// what the publisher pays at saturation. The set stays bounded: past
/// [`BlockedPublishers::MAX`] entries, every registered task is woken and
/// forgotten; those still blocked poll again and register anew.
#[derive(Debug, Default)]
struct BlockedPublishers {
    wakers: Mutex<Vec<Waker>>,
}

impl BlockedPublishers {
    const MAX: usize = 64;

    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if wakers.iter().any(|w| w.will_wake(waker)) {
            return;
        }
        let forgotten = if wakers.len() >= Self::MAX {
            std::mem::take(&mut *wakers)
        } else {
            Vec::new()
        };
        wakers.push(waker.clone());
        drop(wakers);
        forgotten.into_iter().for_each(Waker::wake);
    }

    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl Tracker {
    pub(crate) fn new(transport: &'static str, initial: ConnectionState) -> Arc<Self> {
        Arc::new(Tracker {
            transport,
            state: watch::Sender::new(initial),
            status: Mutex::new(NatsStatus {
                state: initial,
                connects: 0,
                disconnects: 0,
                slow_consumer_events: 0,
                lame_duck: false,
                last_error: None,
            }),
            unavailable: std::sync::atomic::AtomicBool::new(false),
            refused: std::sync::atomic::AtomicBool::new(false),
            blocked: BlockedPublishers::default(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut NatsStatus)) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut status);
        let state = status.state;
        drop(status);
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// Records one client event and logs it.
    pub(crate) fn on_event(&self, event: async_nats::Event) {
        use async_nats::Event;
        let transport = self.transport;
        match event {
            Event::Connected => {
                self.refused
                    .store(false, std::sync::atomic::Ordering::Release);
                let mut connects = 0;
                self.update(|s| {
                    s.connects += 1;
                    s.lame_duck = false;
                    connects = s.connects;
                    if s.state != ConnectionState::Closed {
                        s.state = ConnectionState::Connected;
                    }
                });
                if connects > 1 {
                    tracing::info!(
                        transport,
                        reconnects = connects - 1,
                        "nats connection re-established"
                    );
                } else {
                    tracing::debug!(transport, "nats connected");
                }
            }
            Event::Disconnected => {
                self.update(|s| {
                    s.disconnects += 1;
                    if s.state != ConnectionState::Closed {
                        s.state = ConnectionState::Disconnected;
                    }
                });
                tracing::warn!(transport, "nats connection lost; reconnecting");
            }
            Event::LameDuckMode => {
                self.update(|s| s.lame_duck = true);
                tracing::warn!(
                    transport,
                    "nats server entered lame duck mode; it will shut down soon"
                );
            }
            Event::SlowConsumer(sid) => {
                self.update(|s| s.slow_consumer_events += 1);
                tracing::warn!(transport, subscription = sid, "nats slow consumer: the subscription's buffer is full and messages were dropped");
            }
            Event::Draining => tracing::debug!(transport, "nats connection draining"),
            Event::Closed => {
                self.update(|s| s.state = ConnectionState::Closed);
                tracing::debug!(transport, "nats connection closed");
            }
            Event::ServerError(e) => {
                let text = e.to_string();
                if matches!(e, async_nats::ServerError::AuthorizationViolation) {
                    self.refused
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                tracing::error!(transport, error = %text, "nats server reported an error");
                self.update(|s| s.last_error = Some(text));
            }
            Event::ClientError(e) => {
                // The client stops for good after its last reconnect attempt:
                // the connection is closed, not merely disconnected.
                let gave_up = matches!(e, async_nats::ClientError::MaxReconnects);
                let text = if gave_up {
                    "gave up reconnecting (max_reconnects reached); the nats client's \
                     connection task stopped: connect a new transport"
                        .to_owned()
                } else {
                    e.to_string()
                };
                tracing::error!(transport, error = %text, "nats client error");
                self.update(|s| {
                    s.last_error = Some(text);
                    if gave_up {
                        s.state = ConnectionState::Closed;
                    }
                });
            }
        }
    }

    /// Marks the connection closed by us.
    pub(crate) fn set_closed(&self) {
        self.update(|s| s.state = ConnectionState::Closed);
    }

    /// The client's connection task is gone while the transport was open
    /// (it gave up reconnecting, or stopped on something it could not
    /// handle) and its own state may still say otherwise. Records it once,
    /// as `Closed` with the reason.
    pub(crate) fn set_lost(&self) {
        let mut first = false;
        self.update(|s| {
            // Closed already (by `close`, or after the last reconnect
            // attempt, whose error stays): nothing new to record.
            first = s.state != ConnectionState::Closed;
            if first {
                s.state = ConnectionState::Closed;
                s.last_error = Some(LOST.to_owned());
            }
        });
        if first {
            tracing::error!(transport = self.transport, "{LOST}");
        }
    }

    /// Whether the server refused the credentials since the last
    /// successful connect.
    pub(crate) fn refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the connection has been unusable for longer than the
    /// publish timeout.
    pub(crate) fn is_unavailable(&self) -> bool {
        self.unavailable.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Awaits `send` (a JetStream publish or an ack): `None` if it is still
    /// blocked after `limit` (a full queue, or no ack permit) or when the
    /// watchdog declares the connection unavailable. Only a send that does
    /// not complete at once arms a timer.
    #[cfg(feature = "jetstream")]
    pub(crate) async fn bounded_send<T>(
        &self,
        send: impl Future<Output = T>,
        limit: Duration,
    ) -> Option<T> {
        let mut send = std::pin::pin!(send);
        let first = std::future::poll_fn(|cx| Poll::Ready(self.poll_send(send.as_mut(), cx))).await;
        match first {
            Poll::Ready(done) => done,
            Poll::Pending => tokio::time::timeout(
                limit,
                std::future::poll_fn(|cx| self.poll_send(send.as_mut(), cx)),
            )
            .await
            .ok()
            .flatten(),
        }
    }

    /// As [`bounded_send`](Self::bounded_send), until `deadline`.
    #[cfg(feature = "jetstream")]
    pub(crate) async fn send_until<T>(
        &self,
        send: impl Future<Output = T>,
        deadline: &Deadline,
    ) -> Option<T> {
        let mut send = std::pin::pin!(send);
        let first = std::future::poll_fn(|cx| Poll::Ready(self.poll_send(send.as_mut(), cx))).await;
        match first {
            Poll::Ready(done) => done,
            Poll::Pending => deadline
                .run(std::future::poll_fn(|cx| self.poll_send(send.as_mut(), cx)))
                .await
                .flatten(),
        }
    }

    /// Polls `send` (a publish into the client's queue); while it is blocked
    /// on a full queue, the task is registered to be woken if the watchdog
    /// declares the connection unavailable. `None` when that happened first.
    pub(crate) fn poll_send<T>(
        &self,
        send: Pin<&mut impl Future<Output = T>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<T>> {
        if let Poll::Ready(output) = send.poll(cx) {
            return Poll::Ready(Some(output));
        }
        if self.is_unavailable() {
            return Poll::Ready(None);
        }
        self.blocked.register(cx.waker());
        // The watchdog may have set the flag and woken the set between the
        // check and the registration: look again.
        if self.is_unavailable() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn set_unavailable(&self, unavailable: bool) {
        self.unavailable
            .store(unavailable, std::sync::atomic::Ordering::Release);
        if unavailable {
            self.blocked.wake_all();
        }
    }

    /// Starts the task that declares the connection unavailable after it
    /// has been down for `limit`, and available again on reconnect. It ends
    /// with the tracker.
    pub(crate) fn spawn_watchdog(self: &Arc<Self>, limit: std::time::Duration) {
        let tracker = Arc::downgrade(self);
        let mut state = self.state.subscribe();
        tokio::spawn(async move {
            let set = |unavailable: bool| match tracker.upgrade() {
                Some(t) => {
                    t.set_unavailable(unavailable);
                    true
                }
                None => false,
            };
            loop {
                if state
                    .wait_for(|s| *s != ConnectionState::Connected)
                    .await
                    .is_err()
                {
                    return;
                }
                if *state.borrow() == ConnectionState::Closed {
                    set(true);
                    return;
                }
                // Keep no `Ref` of the watch across an await (not `Send`).
                let back = tokio::time::timeout(
                    limit,
                    state.wait_for(|s| *s == ConnectionState::Connected),
                )
                .await
                .map(|r| r.is_ok());
                match back {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(_elapsed) => {
                        if !set(true) {
                            return;
                        }
                        if state
                            .wait_for(|s| {
                                *s != ConnectionState::Disconnected
                                    && *s != ConnectionState::Connecting
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                        if *state.borrow() == ConnectionState::Closed {
                            return;
                        }
                        if !set(false) {
                            return;
                        }
                    }
                }
            }
        });
    }

    pub(crate) fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    pub(crate) fn snapshot(&self) -> NatsStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// Waits up to `limit` for the state to satisfy `done`; whether it did.
    pub(crate) async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(ConnectionState) -> bool,
    ) -> bool {
        let mut rx = self.state.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|s| done(*s)))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn woken(tasks: &[Arc<Counted>]) -> usize {
        tasks.iter().map(|t| t.0.load(Ordering::SeqCst)).sum()
    }

    #[test]
    fn blocked_publishers_register_once_stay_bounded_and_are_all_woken() {
        let set = BlockedPublishers::default();
        let tasks: Vec<Arc<Counted>> = (0..=BlockedPublishers::MAX)
            .map(|_| Arc::default())
            .collect();
        let wakers: Vec<Waker> = tasks.iter().map(|t| Waker::from(t.clone())).collect();
        for waker in &wakers[..BlockedPublishers::MAX] {
            // Polled three times while blocked: registered once.
            for _ in 0..3 {
                set.register(waker);
            }
        }
        assert_eq!(set.wakers.lock().unwrap().len(), BlockedPublishers::MAX);
        assert_eq!(woken(&tasks), 0);

        // One more task: the full set is woken (so none waits unregistered)
        // and forgotten.
        set.register(&wakers[BlockedPublishers::MAX]);
        assert_eq!(woken(&tasks), BlockedPublishers::MAX);
        assert_eq!(set.wakers.lock().unwrap().len(), 1);

        set.wake_all();
        assert_eq!(tasks[BlockedPublishers::MAX].0.load(Ordering::SeqCst), 1);
        assert!(set.wakers.lock().unwrap().is_empty());
    }

    #[cfg(feature = "jetstream")]
    #[tokio::test(start_paused = true)]
    async fn a_deadline_too_far_for_an_instant_is_no_deadline_not_a_panic() {
        let forever = Deadline::after(Duration::MAX);
        assert_eq!(forever.left(), Duration::MAX);
        assert!(forever.within(Duration::MAX).is_none());
        assert!(forever.within(Duration::from_secs(1)).is_some());
        assert_eq!(forever.run(async { 7 }).await, Some(7));

        let soon = Deadline::after(Duration::from_secs(2));
        let first = soon.within(Duration::from_secs(1)).unwrap();
        assert_eq!(
            soon.within(Duration::MAX),
            soon.within(Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(first < tokio::time::Instant::now());
        assert_eq!(soon.left(), Duration::from_millis(500));
        assert_eq!(soon.run(std::future::pending::<()>()).await, None);
        assert_eq!(soon.left(), Duration::ZERO);
        assert!(soon.elapsed() >= Duration::from_secs(2));
    }

    #[test]
    fn a_blocked_send_ends_when_the_connection_is_declared_unavailable() {
        let tracker = Tracker::new("nats", ConnectionState::Connected);
        let task = Arc::new(Counted::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut blocked = std::pin::pin!(std::future::pending::<()>());
        assert!(tracker.poll_send(blocked.as_mut(), &mut cx).is_pending());
        tracker.set_unavailable(true);
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "woken");
        assert_eq!(
            tracker.poll_send(blocked.as_mut(), &mut cx),
            Poll::Ready(None)
        );
        let mut ready = std::pin::pin!(std::future::ready(7));
        assert_eq!(
            tracker.poll_send(ready.as_mut(), &mut cx),
            Poll::Ready(Some(7)),
            "a send that completes wins even then"
        );
    }
}
