//! Connection state and counters, fed by the client's event callback.

use std::sync::{Arc, Mutex};
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

/// Shared between the event callback and the transport.
#[derive(Debug)]
pub(crate) struct Tracker {
    transport: &'static str,
    state: watch::Sender<ConnectionState>,
    status: Mutex<NatsStatus>,
    /// Set by the watchdog once the connection has been down for longer
    /// than the publish timeout (or closed); cleared on reconnect.
    unavailable: std::sync::atomic::AtomicBool,
    /// Wakes publishes blocked on a full client queue when `unavailable`
    /// is set.
    unavailable_waiters: tokio::sync::Notify,
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
            unavailable_waiters: tokio::sync::Notify::new(),
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
                tracing::error!(transport, error = %text, "nats server reported an error");
                self.update(|s| s.last_error = Some(text));
            }
            Event::ClientError(e) => {
                let text = e.to_string();
                tracing::error!(transport, error = %text, "nats client error");
                self.update(|s| s.last_error = Some(text));
            }
        }
    }

    /// Marks the connection closed by us.
    pub(crate) fn set_closed(&self) {
        self.update(|s| s.state = ConnectionState::Closed);
    }

    /// Resolves once the connection has been unusable for longer than the
    /// publish timeout. One lock to register, no timer: cheap enough for
    /// every publish that finds the client's queue full.
    pub(crate) async fn unavailable(&self) {
        let notified = self.unavailable_waiters.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if self.unavailable.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    fn set_unavailable(&self, unavailable: bool) {
        self.unavailable
            .store(unavailable, std::sync::atomic::Ordering::Release);
        if unavailable {
            self.unavailable_waiters.notify_waiters();
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
