//! Settling a delivery by a publish to its reply subject (JetStream's
//! acks), held in place in the [`Delivery`](super::Delivery): settling it
//! allocates neither an acker nor a future.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::AckKind;

use crate::error::{Error, ErrorKind, Result};

/// A settlement's publish, as the client makes it.
pub(crate) type SendSettlement<'a> =
    Pin<&'a mut (dyn Future<Output = std::result::Result<(), async_nats::PublishError>> + Send)>;

/// What a backend that settles through reply subjects provides.
pub(crate) trait ReplySettle: Send + Sync + 'static {
    /// The client settlements are published with.
    fn client(&self) -> &async_nats::Client;
    /// How long a settlement may wait for room in the client.
    fn limit(&self) -> Duration;
    /// Polls a settlement's publish; `Ready(None)` when the connection was
    /// declared unavailable first.
    fn poll_send(
        &self,
        send: SendSettlement<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<(), async_nats::PublishError>>>;
    /// A settlement was handed to the client.
    fn sent(&self);
    /// A redelivery delay as the server can read it.
    fn nak_delay(&self, delay: Duration) -> Duration;
}

/// Settles one delivery through its reply subject.
pub(crate) struct ReplyAcker {
    reply: async_nats::Subject,
    backend: Arc<dyn ReplySettle>,
    /// Dropped once settled (after the settlement was sent), for a backend
    /// that counts what is unsettled.
    _guard: Option<Box<dyn Any + Send + Sync>>,
}

impl ReplyAcker {
    pub(crate) fn new(
        reply: async_nats::Subject,
        backend: Arc<dyn ReplySettle>,
        guard: Option<Box<dyn Any + Send + Sync>>,
    ) -> Self {
        ReplyAcker {
            reply,
            backend,
            _guard: guard,
        }
    }

    /// Publishes `kind` to `reply`. An ack is a publish: while disconnected
    /// it would wait for room in the client's buffer without bound, so it
    /// is bounded like a publish (no timer for one that completes at once).
    async fn send(&self, reply: async_nats::Subject, kind: AckKind) -> Result<()> {
        let backend = &*self.backend;
        let limit = backend.limit();
        let publish = backend.client().publish(reply, kind.into());
        let mut publish = std::pin::pin!(publish);
        let first =
            std::future::poll_fn(|cx| Poll::Ready(backend.poll_send(publish.as_mut(), cx))).await;
        let sent = match first {
            Poll::Ready(done) => done,
            Poll::Pending => tokio::time::timeout(
                limit,
                std::future::poll_fn(|cx| backend.poll_send(publish.as_mut(), cx)),
            )
            .await
            .ok()
            .flatten(),
        };
        match sent {
            Some(Ok(())) => {
                backend.sent();
                Ok(())
            }
            Some(Err(e)) => Err(
                Error::new(ErrorKind::Backend, format!("sending {kind:?} failed")).with_source(e),
            ),
            None => Err(Error::new(
                ErrorKind::Unavailable,
                format!("sending {kind:?} gave up after {limit:?}: the nats server is unreachable"),
            )),
        }
    }

    /// The reply subject, for the one settlement that consumes it.
    fn take_reply(&mut self) -> async_nats::Subject {
        std::mem::replace(&mut self.reply, async_nats::Subject::from_static(""))
    }

    /// The message was handled.
    pub(crate) async fn ack(mut self) -> Result<()> {
        let reply = self.take_reply();
        self.send(reply, AckKind::Ack).await
    }

    /// Deliver it again, after `delay` if given.
    pub(crate) async fn nack(mut self, delay: Option<Duration>) -> Result<()> {
        let delay = delay
            .filter(|d| !d.is_zero())
            .map(|d| self.backend.nak_delay(d));
        let reply = self.take_reply();
        self.send(reply, AckKind::Nak(delay)).await
    }

    /// Never deliver it again.
    pub(crate) async fn term(mut self) -> Result<()> {
        let reply = self.take_reply();
        self.send(reply, AckKind::Term).await
    }

    /// Handling goes on: the ack wait starts again.
    pub(crate) async fn in_progress(&self) -> Result<()> {
        self.send(self.reply.clone(), AckKind::Progress).await
    }
}
