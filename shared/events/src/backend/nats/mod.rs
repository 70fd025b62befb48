//! The core NATS transport, on [`async_nats`].
//!
//! Semantics (the "core NATS" column of the delivery table in the crate
//! documentation):
//! - **at most once.** `publish` returns once the message is queued in the
//!   client, not when the server has it. A message in the client's socket
//!   buffer when the connection drops is lost; durability is JetStream's
//!   job.
//! - **bounded publish.** While the connection is down a publish waits up to
//!   [`NatsConfig::publish_timeout`] for it to come back, then fails with
//!   [`ErrorKind::Unavailable`] saying how long it waited (async-nats alone
//!   would queue until its buffer is full and then block forever). A batch
//!   stops at the first message that gives up: the rest fail unsent.
//! - **no acknowledgements.** Deliveries are
//!   [`Delivery::unacknowledged`]: `ack` and `term` do nothing, `nack` is
//!   refused with [`ErrorKind::Unsupported`]. Durable names are refused.
//! - **size.** Headers and body together must fit the server's
//!   `max_payload` (1 MiB by default); a larger message fails with
//!   [`ErrorKind::PayloadTooLarge`] before anything is sent.
//! - **clean shutdown.** [`close`](Transport::close) flushes, then drains:
//!   everything published before it reaches the server, and open
//!   subscriptions end after the messages already on their way.
//! - **health.** Connection events (lost, re-established, slow consumer,
//!   lame duck) are logged through `tracing` and counted in
//!   [`NatsTransport::status`].

mod config;
mod status;

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt as _;
use tokio::sync::watch;

pub use config::{Auth, NatsConfig, ReconnectPolicy, DEFAULT_URL};
pub use status::{ConnectionState, NatsStatus};

#[cfg(feature = "jetstream")]
pub(crate) use status::sleep_until;
pub(crate) use status::{Deadline, Tracker, LOST};

use crate::error::{Error, ErrorKind, Result};
use crate::transport::{
    Capabilities, Delivery, DeliveryInfo, Headers, Message, Subject, SubscribeOptions,
    Subscription, Transport,
};

/// A transport on core NATS: at-most-once, queue groups, wildcards.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), events::Error> {
/// use events::backend::nats::{NatsConfig, NatsTransport};
///
/// let transport = NatsTransport::connect(NatsConfig::from_env()?).await?;
/// let bus = events::Bus::builder(transport).source("orders").build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    tracker: Arc<Tracker>,
    config: NatsConfig,
    capabilities: Capabilities,
    closed: AtomicBool,
}

impl NatsTransport {
    /// Connects with `config`.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] if no server can be reached (unless
    /// [`NatsConfig::retry_initial_connect`] is set),
    /// [`ErrorKind::Unauthorized`] if the server refuses the credentials or
    /// the client certificate, [`ErrorKind::Backend`] if another TLS failure
    /// (such as an untrusted server certificate) stops the handshake,
    /// [`ErrorKind::InvalidInput`] for an unusable configuration.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        let (client, tracker) = connect(&config, "nats").await?;
        let mut capabilities = Capabilities::none();
        capabilities.queue_groups = true;
        capabilities.wildcards = true;
        capabilities.ordered_per_publisher = true;
        capabilities.max_message_size = client.max_payload();
        Ok(NatsTransport {
            inner: Arc::new(Inner {
                client,
                tracker,
                config,
                capabilities,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The connection's health now.
    pub fn status(&self) -> NatsStatus {
        self.inner.tracker.snapshot()
    }

    /// A receiver that sees every change of the connection state.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.tracker.watch()
    }

    /// The underlying client, for what this crate does not wrap (request /
    /// reply, raw subjects).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The settings it was connected with.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }
}

impl fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransport")
            .field("servers", &self.inner.config.redacted_servers())
            .field("state", &self.inner.tracker.state())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    fn publish(&self, message: Message) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let inner = &*self.inner;
            if inner.closed.load(Ordering::Acquire) {
                return Err(Error::closed("the nats transport is closed"));
            }
            check_size(&inner.client, &message)?;
            let headers = to_nats_headers(&message.headers)?;
            let limit = inner.config.get_publish_timeout();
            // The clock is read only on the slow paths (waiting for the
            // connection, a blocked send), for the error to say how long
            // the publish waited.
            let mut waiting = None;
            if inner.tracker.state() != ConnectionState::Connected {
                let deadline = Deadline::after(limit);
                waiting = Some(deadline);
                wait_connected(&inner.tracker, &message.subject, &deadline).await?;
            }
            let subject = nats_subject(&message.subject);
            let send = async {
                match headers {
                    Some(headers) => {
                        inner
                            .client
                            .publish_with_headers(subject, headers, message.payload)
                            .await
                    }
                    None => inner.client.publish(subject, message.payload).await,
                }
            };
            // A send that cannot complete at once (the client's queue is
            // full) also waits for the watchdog declaring the connection
            // unavailable (down for longer than the publish timeout): no
            // timer per publish, and a blocked publisher is registered once.
            let mut send = std::pin::pin!(send);
            let result = std::future::poll_fn(|cx| {
                let polled = inner.tracker.poll_send(send.as_mut(), cx);
                if polled.is_pending() {
                    waiting.get_or_insert_with(|| Deadline::after(limit));
                }
                polled
            })
            .await;
            let Some(result) = result else {
                let waited = waiting.unwrap_or_else(|| Deadline::after(limit));
                return Err(unavailable(&inner.tracker, &message.subject, &waited));
            };
            result.map_err(|e| {
                if e.kind() == async_nats::client::PublishErrorKind::Send
                    && !inner.closed.load(Ordering::Acquire)
                {
                    inner.tracker.set_lost();
                }
                publish_error(&message.subject, e)
            })
        })
    }

    /// One publish after the other; once one gives up waiting for the
    /// server (or the transport is closed), the rest fail without waiting
    /// again: a batch costs at most one `publish_timeout` of an outage, not
    /// one per message, and nothing is published behind an event that
    /// failed.
    fn publish_batch(&self, messages: Vec<Message>) -> BoxFuture<'_, Vec<Result<()>>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(messages.len());
            let mut stop: Option<ErrorKind> = None;
            for message in messages {
                if let Some(kind) = stop {
                    results.push(Err(not_sent(kind, &message.subject)));
                    continue;
                }
                let subject = message.subject.clone();
                let result = self.publish(message).await;
                if let Err(e) = &result {
                    if matches!(
                        e.kind(),
                        ErrorKind::Unavailable | ErrorKind::Unauthorized | ErrorKind::Closed
                    ) {
                        stop = Some(e.kind());
                        tracing::debug!(%subject, error = %e, "publish_all stops at an unavailable server");
                    }
                }
                results.push(result);
            }
            results
        })
    }

    fn subscribe(&self, options: SubscribeOptions) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(async move {
            let inner = &*self.inner;
            if inner.closed.load(Ordering::Acquire) {
                return Err(Error::closed("the nats transport is closed"));
            }
            if options.get_partition().is_some() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "core nats has no streams partitioned by key",
                ));
            }
            if options.get_durable_name().is_some() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "core nats has no durable subscriptions; use the jetstream transport",
                ));
            }
            if options.is_multi_pattern() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "core nats delivers each subscription's messages on its own; subscribe once per pattern",
                ));
            }
            let pattern = options.get_pattern().as_str().to_owned();
            let subscriber = match options.get_queue_group() {
                Some(group) => {
                    inner
                        .client
                        .queue_subscribe(pattern, group.to_owned())
                        .await
                }
                None => inner.client.subscribe(pattern).await,
            }
            .map_err(|e| {
                Error::new(
                    ErrorKind::Backend,
                    format!("subscribe to `{}` failed", options.get_pattern()),
                )
                .with_source(e)
            })?;
            // The subscription counts from the moment the server has
            // processed the SUB: wait for that, so a publish right after
            // `subscribe` returns is seen, from any connection.
            round_trip(&inner.client, inner.config.get_publish_timeout()).await?;
            tracing::debug!(pattern = %options.get_pattern(), group = ?options.get_queue_group(), "nats subscription opened");
            let stream = subscriber.map(|m| {
                let (headers, _) = received_headers(m.headers, None)?;
                let message = Message {
                    subject: Subject::received_nats(m.subject),
                    headers,
                    payload: m.payload,
                    dedup_id: None,
                };
                Ok(Delivery::unacknowledged(message, DeliveryInfo::attempt(1)))
            });
            // The client ends a subscription only when it is unsubscribed,
            // closed, or its connection task is gone: the last says so.
            let this = self.inner.clone();
            let end = futures_util::stream::once(async move {
                if this.closed.load(Ordering::Acquire) {
                    return None;
                }
                this.tracker.set_lost();
                Some(Err(Error::closed(LOST)))
            })
            .filter_map(std::future::ready);
            Ok(Subscription::new(stream.chain(end)))
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.inner.closed.load(Ordering::Acquire) {
                return Ok(());
            }
            flush(&self.inner.client, self.inner.config.get_publish_timeout()).await
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let inner = &*self.inner;
            if inner.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            close_client(
                &inner.client,
                &inner.tracker,
                inner.config.get_publish_timeout(),
            )
            .await
        })
    }
}

/// Connects a client whose events feed a new [`Tracker`].
pub(crate) async fn connect(
    config: &NatsConfig,
    transport: &'static str,
) -> Result<(async_nats::Client, Arc<Tracker>)> {
    if config.get_servers().is_empty() {
        return Err(Error::invalid("no nats server url configured"));
    }
    let initial = if config.get_retry_initial_connect() {
        ConnectionState::Connecting
    } else {
        ConnectionState::Connected
    };
    let tracker = Tracker::new(transport, initial);
    let events = tracker.clone();
    let options = config
        .connect_options()
        .await?
        .event_callback(move |event| {
            let events = events.clone();
            async move { events.on_event(event) }
        });
    let servers = config
        .get_servers()
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::invalid(format!(
                "invalid nats server url in {}",
                config.redacted_servers().join(",")
            ))
            .with_source(e)
        })?;
    let client = options
        .connect(servers)
        .await
        .map_err(|e| connect_error(config, e))?;
    tracing::debug!(transport, config = %config, "nats client connected");
    tracker.spawn_watchdog(config.get_publish_timeout());
    Ok((client, tracker))
}

fn connect_error(config: &NatsConfig, e: async_nats::ConnectError) -> Error {
    use async_nats::rustls::{AlertDescription as A, Error as TlsError};
    use async_nats::ConnectErrorKind as K;
    let servers = config.redacted_servers().join(",");
    let method = config.get_auth().method();
    // A failed TLS handshake reaches us as an I/O error wrapping the rustls
    // error (async-nats's `Tls` kind only covers loading the files), so
    // look into the chain before trusting the kind.
    let tls = tls_error(&e);
    let (kind, detail) = match (e.kind(), tls) {
        (K::AuthorizationViolation, _) => (
            ErrorKind::Unauthorized,
            format!("the nats server at {servers} rejected the credentials ({method})"),
        ),
        // The client could not produce a signature: the seed is malformed.
        (K::Authentication, _) => (
            ErrorKind::InvalidInput,
            format!("the {method} credentials could not sign the server's challenge"),
        ),
        // The server closed the handshake because of our certificate (or
        // the lack of one). Go's TLS stack answers a missing certificate
        // with `certificate_required` (TLS 1.3) or `bad_certificate`, and
        // one from an unknown CA with `bad_certificate` or `unknown_ca`.
        (
            _,
            Some(TlsError::AlertReceived(
                alert @ (A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::AccessDenied),
            )),
        ) => (
            ErrorKind::Unauthorized,
            format!("the nats server at {servers} refused the tls client identity ({alert:?})"),
        ),
        // We do not trust the server's certificate: a configuration fault
        // on one side or the other, which a retry does not fix.
        (_, Some(TlsError::InvalidCertificate(reason))) => (
            ErrorKind::Backend,
            format!(
                "the tls certificate of the nats server at {servers} is not trusted ({reason:?}); \
                 is its CA configured with `root_certificate` / NATS_CA?"
            ),
        ),
        (_, Some(_)) | (K::Tls, None) => (
            ErrorKind::Backend,
            format!("tls with the nats server at {servers} failed"),
        ),
        (K::ServerParse, None) => (
            ErrorKind::InvalidInput,
            format!("invalid nats server url in {servers}"),
        ),
        (K::Dns | K::Io | K::TimedOut | K::MaxReconnects, None) => (
            ErrorKind::Unavailable,
            format!("cannot connect to nats at {servers}"),
        ),
    };
    Error::new(kind, detail).with_source(e)
}

/// The rustls error somewhere in `e`'s source chain, if any. An
/// `io::Error` hides the error it wraps from `source()` (it returns the
/// wrapped error's own source), so each link is also opened as an I/O error.
fn tls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a async_nats::rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<async_nats::rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<async_nats::rustls::Error>())
        {
            return Some(tls);
        }
        next = err.source();
    }
    None
}

/// Flushes, then drains the client and waits (bounded) until it is closed,
/// so nothing queued is lost.
pub(crate) async fn close_client(
    client: &async_nats::Client,
    tracker: &Tracker,
    limit: Duration,
) -> Result<()> {
    let flushed = flush(client, limit).await;
    let drained = client.drain().await.map_err(|e| {
        Error::new(ErrorKind::Backend, "draining the nats connection failed").with_source(e)
    });
    // `drain` only starts the work; the connection reports `Closed` when
    // every subscription has been drained and the buffers written.
    if drained.is_ok()
        && !tracker
            .wait_for(limit, |s| s == ConnectionState::Closed)
            .await
    {
        tracing::warn!(?limit, "nats connection did not finish draining in time");
    }
    tracker.set_closed();
    flushed.and(drained)
}

/// Waits until the client has written everything and the server answered
/// (a PING/PONG round trip), for at most `limit`.
pub(crate) async fn flush(client: &async_nats::Client, limit: Duration) -> Result<()> {
    match tokio::time::timeout(limit, client.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            Err(Error::new(ErrorKind::Closed, "the nats connection is closed").with_source(e))
        }
        Err(_) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("flush did not complete within {limit:?}: the server is unreachable"),
        )),
    }
}

/// A round trip through the server: once it returns, the server has
/// processed everything this client sent before (a subscription is live).
/// `flush` is not enough: it only proves the bytes left the socket, and a
/// publish from another connection could still overtake a fresh `SUB` (seen
/// as a lost first event). The probe is a message to a private inbox this
/// connection subscribes to for the purpose: the server handles one
/// connection's operations in order, so the message coming back means the
/// earlier ones are done. No other connection can keep it from coming back
/// (a request to an unserved subject, answered with "no responders", is
/// not answered at all while anyone subscribes to `>`).
pub(crate) async fn round_trip(client: &async_nats::Client, limit: Duration) -> Result<()> {
    let closed = |e: Box<dyn std::error::Error + Send + Sync>| {
        Error::new(ErrorKind::Closed, "the nats connection is closed").with_source(e)
    };
    let probe = async {
        let inbox = client.new_inbox();
        let mut echo = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| closed(e.into()))?;
        client
            .publish(inbox, bytes::Bytes::new())
            .await
            .map_err(|e| closed(e.into()))?;
        // Dropping `echo` afterwards unsubscribes.
        match echo.next().await {
            Some(_) => Ok(()),
            None => Err(Error::new(
                ErrorKind::Closed,
                "the nats connection is closed",
            )),
        }
    };
    match tokio::time::timeout(limit, probe).await {
        Ok(done) => done,
        Err(_) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("the nats server did not answer within {limit:?}"),
        )),
    }
}

/// Waits until the connection is up, or fails at `deadline`.
pub(crate) async fn wait_connected(
    tracker: &Tracker,
    subject: &Subject,
    deadline: &Deadline,
) -> Result<()> {
    match tracker.state() {
        ConnectionState::Connected => Ok(()),
        ConnectionState::Closed => Err(Error::closed("the nats connection is closed")),
        ConnectionState::Connecting | ConnectionState::Disconnected => {
            if tracker
                .wait_for(deadline.left(), |s| {
                    matches!(s, ConnectionState::Connected | ConnectionState::Closed)
                })
                .await
            {
                match tracker.state() {
                    ConnectionState::Closed => Err(Error::closed("the nats connection is closed")),
                    _ => Ok(()),
                }
            } else {
                Err(unavailable(tracker, subject, deadline))
            }
        }
    }
}

/// Why a publish that gave up waiting for the connection could not go:
/// `Unauthorized` when the server has been refusing the credentials since
/// the connection dropped (they were revoked: waiting longer will not
/// help), else `Unavailable`.
pub(crate) fn unreachable(tracker: &Tracker) -> (ErrorKind, &'static str) {
    if tracker.refused() {
        (
            ErrorKind::Unauthorized,
            "the nats server refuses the credentials since the connection dropped \
             (authorization violation)",
        )
    } else {
        (ErrorKind::Unavailable, "the nats server is unreachable")
    }
}

/// A publish that gave up waiting for the connection, with the time it
/// really waited.
pub(crate) fn unavailable(tracker: &Tracker, subject: &Subject, deadline: &Deadline) -> Error {
    let (kind, why) = unreachable(tracker);
    Error::new(
        kind,
        format!(
            "publish to `{subject}` gave up after {:.2?} (publish_timeout {:?}): {why}",
            deadline.elapsed(),
            deadline.limit()
        ),
    )
}

/// A message of a batch not sent because an earlier one failed with `kind`.
pub(crate) fn not_sent(kind: ErrorKind, subject: &Subject) -> Error {
    Error::new(
        kind,
        format!("publish to `{subject}` not sent: an earlier message of the batch could not be published"),
    )
}

/// Whether the client's connection task is gone (its command channel is
/// closed): the transport cannot recover by waiting.
#[cfg(feature = "jetstream")]
pub(crate) async fn connection_task_gone(client: &async_nats::Client) -> bool {
    // A closed channel fails the send at once; a live but disconnected
    // client would hold the flush until it reconnects, which is no answer.
    matches!(
        tokio::time::timeout(Duration::from_millis(100), client.flush()).await,
        Ok(Err(e)) if e.kind() == async_nats::client::FlushErrorKind::SendError
    )
}

fn publish_error(subject: &Subject, e: async_nats::PublishError) -> Error {
    use async_nats::client::PublishErrorKind as K;
    let (kind, detail) = match e.kind() {
        K::MaxPayloadExceeded => (
            ErrorKind::PayloadTooLarge,
            format!("message on `{subject}` exceeds the server's max_payload"),
        ),
        K::InvalidSubject => (
            ErrorKind::InvalidInput,
            format!("subject `{subject}` rejected by the client"),
        ),
        K::Send => (
            ErrorKind::Closed,
            "the nats connection is closed".to_owned(),
        ),
    };
    Error::new(kind, detail).with_source(e)
}

/// The subject for async-nats, copied when async-nats takes it (a copy:
/// handing async-nats shared `Bytes` of a cached subject lost messages
/// intermittently in our tests).
pub(crate) fn nats_subject(subject: &Subject) -> NatsSubject<'_> {
    NatsSubject(subject)
}

/// A subject async-nats copies once, when it takes it: an
/// `async_nats::Subject` handed over is cloned again, which for a fresh
/// copy costs one more allocation.
pub(crate) struct NatsSubject<'a>(&'a Subject);

impl async_nats::subject::ToSubject for NatsSubject<'_> {
    fn to_subject(&self) -> async_nats::Subject {
        async_nats::Subject::from(self.0.as_str())
    }
}

/// Refuses a message larger than the server accepts, before sending: a
/// server that receives one closes the connection.
pub(crate) fn check_size(client: &async_nats::Client, message: &Message) -> Result<()> {
    let limit = client.max_payload();
    let size = message.wire_len();
    if size > limit {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "message on `{}` is {size} bytes with headers; the server accepts at most {limit}",
                message.subject
            ),
        ));
    }
    Ok(())
}

/// Our headers as an async-nats map, built only with the fallible
/// constructors (`HeaderMap::insert` with `&str` panics on bad input).
/// `None` when there are none, so the message goes out as a plain `PUB`.
pub(crate) fn to_nats_headers(headers: &Headers) -> Result<Option<async_nats::HeaderMap>> {
    if headers.is_empty() {
        return Ok(None);
    }
    let mut map = async_nats::HeaderMap::new();
    add_nats_headers(&mut map, headers, |_| false)?;
    Ok(Some(map))
}

/// Adds our headers, except those `skip` names, to an async-nats map with
/// their values in order, and returns the bytes they take on the wire
/// (`name: value\r\n` each). `map` must not hold any of their names yet.
///
/// A name the crate wrote (`'static` text) becomes a header name without
/// being copied or checked again: every name in [`Headers`] was checked
/// on the way in, by rules stricter than async-nats's. Values are checked
/// by async-nats's fallible constructor.
pub(crate) fn add_nats_headers(
    map: &mut async_nats::HeaderMap,
    headers: &Headers,
    skip: impl Fn(&str) -> bool,
) -> Result<usize> {
    let mut wire = 0;
    let Some(entries) = headers.entries() else {
        // Received headers sent on (a dead letter, a replay): every name
        // checked by async-nats's constructor too.
        for (name, value) in headers.iter() {
            if skip(name) {
                continue;
            }
            let n = async_nats::HeaderName::try_from(name).map_err(|e| {
                Error::invalid(format!("header name {name:?} is not valid for nats")).with_source(e)
            })?;
            let v = async_nats::HeaderValue::try_from(value).map_err(|e| {
                Error::invalid(format!("header {name:?} has a value not valid for nats"))
                    .with_source(e)
            })?;
            wire += name.len() + value.len() + 4;
            map.append(n, v);
        }
        return Ok(wire);
    };
    for (i, (name, value)) in entries.iter().enumerate() {
        if skip(name) {
            continue;
        }
        let n = match name {
            Cow::Borrowed(name) => async_nats::HeaderName::from_static(name),
            Cow::Owned(name) => async_nats::HeaderName::try_from(name.as_str()).map_err(|e| {
                Error::invalid(format!("header name {name:?} is not valid for nats")).with_source(e)
            })?,
        };
        let v = async_nats::HeaderValue::try_from(value.as_ref()).map_err(|e| {
            Error::invalid(format!("header {name:?} has a value not valid for nats")).with_source(e)
        })?;
        wire += name.len() + value.len() + 4;
        // A name seen before gets one more value; a new one is inserted
        // (one lookup instead of two).
        if entries[..i].iter().any(|(earlier, _)| earlier == name) {
            map.append(n, v);
        } else {
            map.insert(n, v);
        }
    }
    Ok(wire)
}

/// Not part of the API: the received-header conversion, exposed for the
/// `nats_headers` fuzz target in `shared/events/fuzz` only. It may change or
/// disappear in any release.
#[doc(hidden)]
pub fn __fuzz_from_nats_headers(headers: Option<&async_nats::HeaderMap>) -> Result<Headers> {
    from_nats_headers(headers)
}

/// Received headers in our form, as [`from_nats_headers`] makes them, but
/// read in place when every name and value is valid as it is (the common
/// case); without the headers called `hidden`, whose first value comes
/// back beside them.
pub(crate) fn received_headers(
    headers: Option<async_nats::HeaderMap>,
    hidden: Option<&'static str>,
) -> Result<(Headers, Option<String>)> {
    let Some(map) = headers else {
        return Ok((Headers::new(), None));
    };
    match Headers::received(map, hidden) {
        Ok(received) => Ok(received),
        Err(map) => {
            let mut headers = from_nats_headers(Some(&map))?;
            let value = hidden.and_then(|name| {
                let value = headers.get(name).map(str::to_owned);
                headers.remove(name);
                value
            });
            Ok((headers, value))
        }
    }
}

/// Received headers in our form. Every value is checked again: a broker is
/// not trusted to uphold our invariants.
pub(crate) fn from_nats_headers(headers: Option<&async_nats::HeaderMap>) -> Result<Headers> {
    let Some(map) = headers else {
        return Ok(Headers::new());
    };
    let mut out = Headers::with_capacity(map.len());
    for (name, values) in map.iter() {
        // async-nats accepts one name our headers refuse: the empty one (a
        // `: value` line). Refusing the message for it would leave it
        // unsettled and redelivered until `max_deliver`; such a header
        // cannot be a CloudEvents attribute, so it is dropped.
        let name: &str = name.as_ref();
        if !crate::transport::is_header_name(name) {
            tracing::debug!(header = ?name, "received header with an invalid name dropped");
            continue;
        }
        for value in values {
            // async-nats accepts values our headers refuse (a NUL byte, say).
            // Refusing the whole message would leave it unsettled and
            // redelivered forever; percent-encoding the value keeps it
            // deliverable (and a `ce-` value decodes back to the original).
            if out
                .append(name.to_string(), value.as_str().to_owned())
                .is_err()
            {
                tracing::debug!(header = %name, "received header value percent-encoded");
                out.append(
                    name.to_string(),
                    crate::transport::percent::encode(value.as_str()),
                )
                .map_err(|e| Error::decode(format!("received header {name}: {}", e.detail())))?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_convert_both_ways_and_bad_ones_are_errors_not_panics() {
        let mut h = Headers::new();
        h.append("ce-id", "1").unwrap();
        h.append("content-type", "application/json").unwrap();
        h.append("x-multi", "a").unwrap();
        h.append("x-multi", "b").unwrap();
        let map = to_nats_headers(&h).unwrap().unwrap();
        let back = from_nats_headers(Some(&map)).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.get("ce-id"), Some("1"));
        assert_eq!(back.get("Content-Type"), Some("application/json"));
        assert!(to_nats_headers(&Headers::new()).unwrap().is_none());
        // A value async-nats accepts but our headers refuse is kept, encoded.
        let mut raw = async_nats::HeaderMap::new();
        raw.insert("x-nul", async_nats::HeaderValue::try_from("a\0b").unwrap());
        let kept = from_nats_headers(Some(&raw)).unwrap();
        assert_eq!(kept.get("x-nul"), Some("a%00b"));
        assert_eq!(from_nats_headers(None).unwrap().len(), 0);
    }

    #[test]
    fn a_received_header_with_an_empty_name_is_dropped_not_the_message() {
        // As async-nats parses `NATS/1.0\r\n: empty\r\nce-id: 7\r\n`.
        let mut raw = async_nats::HeaderMap::new();
        raw.append("", "empty");
        raw.append("ce-id", "7");
        let kept = from_nats_headers(Some(&raw)).unwrap();
        assert_eq!(kept.iter().collect::<Vec<_>>(), [("ce-id", "7")]);
    }

    #[test]
    fn received_headers_read_in_place_equal_the_converted_ones() {
        let maps: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("Content-Type", "application/cloudevents+json")],
            vec![
                ("ce-id", "1"),
                ("Nats-Msg-Id", "m-1"),
                ("x-multi", "a"),
                ("x-multi", "b"),
            ],
            vec![("nats-msg-id", "m-2"), ("NATS-MSG-ID", "m-3")],
            // Not valid as they are: converted (dropped, percent-encoded).
            vec![("", "empty"), ("ce-id", "7")],
            vec![("x-nul", "a\0b"), ("Nats-Msg-Id", "m\0")],
        ];
        for pairs in maps {
            let mut map = async_nats::HeaderMap::new();
            for (name, value) in &pairs {
                map.append(*name, *value);
            }
            for hidden in [None, Some("Nats-Msg-Id")] {
                let mut expected = from_nats_headers(Some(&map)).unwrap();
                let expected_value = hidden.and_then(|h| expected.get(h).map(str::to_owned));
                if let Some(h) = hidden {
                    expected.remove(h);
                }
                let (headers, value) = received_headers(Some(map.clone()), hidden).unwrap();
                assert_eq!(headers, expected, "{pairs:?} without {hidden:?}");
                assert_eq!(headers.len(), expected.len());
                assert_eq!(headers.wire_len(), expected.wire_len());
                assert_eq!(value, expected_value, "{pairs:?} without {hidden:?}");
                for (name, _) in &pairs {
                    let upper = name.to_ascii_uppercase();
                    assert_eq!(headers.get(&upper), expected.get(&upper), "{name}");
                }
                // Changed, a received map becomes a list with the change.
                let mut changed = headers.clone();
                changed.append("x-added", "1").unwrap();
                expected.append("x-added", "1").unwrap();
                assert_eq!(changed, expected);
            }
        }
        assert_eq!(received_headers(None, None).unwrap().0, Headers::new());
    }

    fn _transport_is_object_safe(t: NatsTransport) -> Arc<dyn Transport> {
        Arc::new(t)
    }
}
