//! The JetStream transport: durable, at-least-once, on [`async_nats`].
//!
//! Semantics (the "JetStream" column of the delivery table in the crate
//! documentation):
//! - **publish returns once stored**: the PubAck has been received. Every
//!   publish carries `Nats-Msg-Id` = [`Message::dedup_id`] (the event id on
//!   the typed bus); when an ack does not come (within
//!   [`ack_timeout`](JetStreamConfig::ack_timeout), or it was lost with the
//!   connection) the message is sent again with the same id, and a message
//!   that was stored after all is answered as a duplicate, never stored
//!   twice (within the stream's duplicate window).
//! - **one deadline**: a publish gives up
//!   [`publish_timeout`](crate::backend::nats::NatsConfig::publish_timeout)
//!   after it was called, whatever it was waiting for (the connection, room
//!   in the client, an ack, the pause before a resend); its error says how
//!   long it took and how many attempts it made.
//! - **batches**: [`publish_batch`](Transport::publish_batch) pipelines
//!   windows of 256 messages: a window is sent whole, its acks are awaited
//!   together, and what they do not confirm is sent again together, in
//!   order, within `publish_timeout` per window. A window with a message
//!   that could not be stored for want of the server ends the batch: the
//!   later messages fail without being sent.
//! - **publish order**: messages published one after the other are stored
//!   in that order, and so are those of a batch that it reports `Ok`. A
//!   batch message whose resend was stored behind later messages of its
//!   window fails with [`ErrorKind::Backend`] saying so (it is stored, out
//!   of order).
//! - **consumers are pull consumers**: durable when the subscription has a
//!   durable name, shared by every instance with the same queue group
//!   (competing consumers), ephemeral otherwise. Filters use the singular
//!   `filter_subject`.
//! - **deliveries** map `ack` / `nack(delay)` / `term` / `in_progress` onto
//!   `+ACK` / `-NAK {delay}` / `+TERM` / `+WPI`, and report the server's
//!   delivery count as the attempt, with stream and consumer sequences.
//! - **server compatibility**: the server's version is read at connect;
//!   options an older server would silently ignore (stream or consumer
//!   metadata before 2.10, per-message TTL before 2.11, atomic batches
//!   before 2.12.1) are refused with [`ErrorKind::Unsupported`] instead.
//!   In a cluster being upgraded the stream's leader can be older than the
//!   node connected to: its version (reported by 2.11 and later) and the
//!   configuration it answers are checked too, and what it would ignore is
//!   refused the same way.
//! - **provisioning** updates only the fields [`StreamConfig`] manages and
//!   never turns a stream flag off (see there).
//! - **close** refuses new work, flushes, confirms the acks sent so far with
//!   a server round trip, and lets open subscriptions deliver what is still
//!   pending for them before they end.

mod batch;
mod config;
#[cfg(feature = "runtime")]
mod idempotency;
mod partition;
mod provision;
mod publish;
mod subscription;

use std::fmt;
use std::future::{Future as _, IntoFuture as _};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;

pub use batch::MAX_ATOMIC_BATCH;
pub use config::{
    ConsumerDefaults, DeliverPolicy, JetStreamConfig, Retention, Storage, StreamConfig,
    StreamSetup, MAX_PARTITIONS,
};
#[cfg(feature = "runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
pub use idempotency::KvIdempotencyStore;

use crate::backend::nats::{self as core, ConnectionState, Deadline, NatsStatus, Tracker};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::reply::{ReplyAcker, ReplySettle, SendSettlement};
use crate::transport::{
    Capabilities, Delivery, DeliveryInfo, Message, Subject, SubscribeOptions, Subscription,
    Transport,
};
use subscription::*;

/// The header JetStream deduplicates on.
const MSG_ID: &str = "Nats-Msg-Id";
/// The header of a message's time to live.
const TTL: &str = "Nats-TTL";
/// Publishes sent before their acks are awaited, in a batch.
const PIPELINE_WINDOW: usize = 256;

/// How long past its `expires` a stopping subscription waits for its pull
/// to end on the server.
const PULL_END_MARGIN: Duration = Duration::from_secs(2);

/// The least a JetStream management request (stream and consumer
/// creation, lookups) waits, whatever the publish `ack_timeout`.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The first nats-server without the redelivery rewind (nats-server PR
/// #5305): before it, a redelivery that finds only an expired or abandoned
/// pull request moves the consumer back one message, which is delivered
/// again as new.
pub(crate) const REDELIVERY_REWIND_FIXED: (u64, u64, u64) = (2, 10, 14);

/// A transport on NATS JetStream: stored, acknowledged, redelivered.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), events::Error> {
/// use events::backend::jetstream::{JetStreamConfig, JetStreamTransport, StreamConfig};
/// use events::backend::nats::NatsConfig;
///
/// let config = JetStreamConfig::new(NatsConfig::from_env()?, StreamConfig::new("EVENTS", ["events.>"]));
/// let transport = JetStreamTransport::connect(config).await?;
/// let bus = events::Bus::builder(transport).source("orders").build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JetStreamTransport {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    /// For publishing: requests wait `ack_timeout`.
    context: jetstream::Context,
    /// For managing streams and consumers, which a replicated stream on a
    /// busy cluster can take longer to answer than a tight `ack_timeout`.
    admin: jetstream::Context,
    /// Bound to `admin`, as are the consumers made from it.
    stream: jetstream::stream::Stream,
    tracker: Arc<Tracker>,
    config: JetStreamConfig,
    capabilities: Capabilities,
    server_version: (u64, u64, u64),
    closed: AtomicBool,
    closing: watch::Sender<bool>,
    open_subscriptions: AtomicUsize,
    acks_sent: AtomicU64,
    /// `acks_sent` as of the last server round trip after a flush.
    acks_confirmed: AtomicU64,
    /// Subscriptions whose reader is gone and whose puller has not yet
    /// released what was left unread: `close` waits for them.
    settling: AtomicUsize,
    settled: tokio::sync::Notify,
    /// How the stream is partitioned by key, if it is.
    partitioning: Option<partition::Partitioning>,
    /// The instances of each consumer group reading partitions, while a
    /// subscription of this transport is one of them.
    members:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<partition::Members>>>,
}

/// Parses `2.9.10` (or `2.10.0-beta.1`) into numbers; unknown parts are 0.
fn parse_version(version: &str) -> (u64, u64, u64) {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

impl JetStreamTransport {
    /// Connects, checks the server can honour every configured option, and
    /// provisions (or binds to) the stream.
    ///
    /// # Errors
    /// As [`NatsTransport::connect`](crate::backend::nats::NatsTransport::connect);
    /// also [`ErrorKind::Unsupported`] when the server has JetStream off or
    /// is too old for a configured option, [`ErrorKind::Backend`] when the
    /// stream cannot be created or does not exist (bind).
    pub async fn connect(config: JetStreamConfig) -> Result<Self> {
        if let StreamSetup::Provision(stream) = &config.stream {
            stream.validate()?;
        }
        let (client, tracker) = core::connect(&config.connection, "jetstream").await?;
        let info = client.server_info();
        let server_version = parse_version(&info.version);
        let refuse = |what: &str, needs: (u64, u64)| -> Result<()> {
            if (server_version.0, server_version.1) < needs {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{what} needs nats-server {}.{} or later, but the server runs {:?}, which would silently ignore it",
                        needs.0, needs.1, info.version
                    ),
                ));
            }
            Ok(())
        };
        if !info.jetstream {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the nats server {:?} has JetStream disabled (start it with -js)",
                    info.server_name
                ),
            ));
        }
        if let StreamSetup::Provision(stream) = &config.stream {
            if !stream.to_nats().metadata.is_empty() {
                refuse("stream metadata", (2, 10))?;
            }
        }
        if !config.consumers.metadata.is_empty() {
            refuse("consumer metadata", (2, 10))?;
        }
        if matches!(&config.stream, StreamSetup::Provision(s) if s.get_partitions() > 0) {
            refuse("a stream partitioned by key (a subject transform)", (2, 10))?;
        }
        // Stream flags the configured features need: turned on when the
        // transport provisions the stream, required of a bound one.
        let mut flags = Vec::new();
        if config.message_ttl.is_some() {
            refuse("a per-message TTL (Nats-TTL)", (2, 11))?;
            flags.push(provision::MSG_TTL);
        }
        if matches!(&config.stream, StreamSetup::Provision(s) if s.get_atomic_publish()) {
            let needs = provision::ATOMIC.needs;
            if server_version < needs {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{} needs nats-server {}.{}.{} or later, but the server runs {:?}",
                        provision::ATOMIC.what,
                        needs.0,
                        needs.1,
                        needs.2,
                        info.version
                    ),
                ));
            }
            flags.push(provision::ATOMIC);
        }
        if server_version < REDELIVERY_REWIND_FIXED {
            // Measured on 2.9.10 (tests/integration/jetstream.rs): once per
            // connection, not per event.
            tracing::warn!(
                server = %info.version,
                "this nats-server may deliver an event once more, with its delivery count back at 1 \
                 and even after it was acked, when a redelivery comes due while the only pull request \
                 waiting is expired or abandoned (fixed in 2.10.14, nats-server PR #5305): \
                 keep handlers idempotent (Consumer::idempotency) or upgrade the server"
            );
        }

        let context = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .max_ack_inflight(config.max_ack_inflight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        // Measured: creating a durable consumer on an R3 stream of a
        // three-node cluster, with the machine busy, took over the 1 s
        // ack timeout a fault test sets for fast publish failover.
        let admin = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout.max(API_TIMEOUT))
            .build(client.clone());
        let name = match &config.stream {
            StreamSetup::Provision(stream) => {
                let provisioned =
                    provision::provision(&admin, stream, &flags, server_version).await?;
                tracing::debug!(
                    stream = %stream.get_name(),
                    changed = provisioned.changed,
                    "jetstream stream provisioned"
                );
                stream.get_name()
            }
            StreamSetup::Bind(name) => name,
        };
        let stream = admin.get_stream(name).await.map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                format!("the jetstream stream {name} is not available"),
            )
            .with_source(e)
        })?;
        if let StreamSetup::Bind(name) = &config.stream {
            let bound = serde_json::to_value(&stream.cached_info().config).unwrap_or_default();
            provision::check_flags(name, &bound, &flags)?;
        }

        let mut capabilities = Capabilities::none();
        capabilities.redelivery = true;
        capabilities.delayed_redelivery = true;
        capabilities.durable = true;
        capabilities.persistent = true;
        capabilities.publish_dedup = true;
        capabilities.ordered_per_publisher = true;
        capabilities.queue_groups = true;
        capabilities.wildcards = true;
        // `filter_subjects`: 2.9 ignores it (the consumer would read the
        // whole stream).
        capabilities.multi_pattern = server_version >= (2, 10, 0);
        // From the stream's configuration as its leader answered it: an
        // older leader does not report `allow_atomic`, and would store a
        // batch's messages one by one.
        capabilities.atomic_publish = server_version >= provision::ATOMIC.needs
            && stream.cached_info().config.allow_atomic_publish;
        // Read from the stream as it is (provisioned here, or by an
        // operator in the same form). Partitions held by one instance at a
        // time need pinned consumers (2.11).
        let partitioning = if server_version >= (2, 10, 0) {
            partition::Partitioning::of(stream.cached_info().config.subject_transform.as_ref())
        } else {
            None
        };
        if let StreamSetup::Provision(wanted) = &config.stream {
            let got = partitioning
                .as_ref()
                .map_or(0, partition::Partitioning::count);
            if wanted.get_partitions() != got {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "stream {name} was asked for {} partitions by key, and the server kept {got}",
                        wanted.get_partitions()
                    ),
                ));
            }
        }
        capabilities.key_partitions = partitioning
            .as_ref()
            .map_or(0, partition::Partitioning::count);
        capabilities.ordered_across_instances =
            partitioning.is_some() && server_version >= (2, 11, 0);
        // Room for the Nats-Msg-Id header the transport adds (name, a
        // UUID-sized value, separators) is kept out of the advertised
        // limit, so the bus's size check stays exact.
        capabilities.max_message_size = client
            .max_payload()
            .saturating_sub(MSG_ID.len() + 64 + 4 + 12);
        Ok(JetStreamTransport {
            inner: Arc::new(Inner {
                client,
                context,
                admin,
                stream,
                tracker,
                config,
                capabilities,
                server_version,
                closed: AtomicBool::new(false),
                closing: watch::Sender::new(false),
                open_subscriptions: AtomicUsize::new(0),
                acks_sent: AtomicU64::new(0),
                acks_confirmed: AtomicU64::new(0),
                settling: AtomicUsize::new(0),
                settled: tokio::sync::Notify::new(),
                partitioning,
                members: std::sync::Mutex::default(),
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

    /// How many replicas the transport's stream has (as the server reported
    /// it at connect).
    #[cfg(feature = "runtime")]
    pub(crate) fn stream_replicas(&self) -> usize {
        self.inner.stream.cached_info().config.num_replicas.max(1)
    }

    /// The server's version as read at connect (major, minor, patch).
    pub fn server_version(&self) -> (u64, u64, u64) {
        self.inner.server_version
    }

    /// The JetStream context, for what this crate does not wrap (stream
    /// info, purges, key-value).
    pub fn context(&self) -> &jetstream::Context {
        &self.inner.context
    }

    /// The name of the stream this transport uses.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream.cached_info().config.name
    }

    /// Deletes the consumer `name` of the stream (its position and pending
    /// events are gone): for durable consumers nothing reads any more, such
    /// as the per-type consumers of an earlier build of a
    /// [`Consumer`](crate::consumer::Consumer), which it logs at start.
    ///
    /// # Errors
    /// [`ErrorKind::Backend`] if the server refuses (no such consumer,
    /// among others), [`ErrorKind::Closed`] once the transport is closed.
    pub async fn delete_consumer(&self, name: &str) -> Result<()> {
        self.inner.check_open()?;
        self.inner
            .stream
            .delete_consumer(name)
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Backend,
                    format!(
                        "deleting consumer {name} of stream {} failed",
                        self.stream_name()
                    ),
                )
                .with_source(e)
            })
    }
}

impl fmt::Debug for JetStreamTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamTransport")
            .field("servers", &self.inner.config.connection.redacted_servers())
            .field("stream", &self.stream_name())
            .field("state", &self.inner.tracker.state())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn consumer_error(
        &self,
        filter: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::new(
            ErrorKind::Backend,
            format!(
                "creating a consumer for `{filter}` on stream {} failed",
                self.stream.cached_info().config.name
            ),
        )
        .with_source(e)
    }

    /// The existing consumer `name`, which must read exactly `filters`.
    async fn bind_consumer(&self, name: &str, filters: &[&str]) -> Result<PullConsumer> {
        let consumer: PullConsumer = self.stream.get_consumer(name).await.map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                format!(
                    "cannot bind to consumer {name} of stream {}",
                    self.stream.cached_info().config.name
                ),
            )
            .with_source(e)
        })?;
        check_filter(name, &consumer.cached_info().config, filters)?;
        Ok(consumer)
    }

    /// The consumer configuration for a subscription: one filter, or
    /// several (`filter_subjects`, 2.10+).
    fn consumer_config(
        &self,
        name: Option<&str>,
        filters: &[&str],
        options: &SubscribeOptions,
    ) -> jetstream::consumer::pull::Config {
        let first = filters.first().copied().unwrap_or_default();
        let mut config = self.config.consumers.pull_config(name, first, options);
        if filters.len() > 1 {
            config.filter_subject = String::new();
            config.filter_subjects = filters.iter().map(|f| (*f).to_owned()).collect();
        }
        if self.pinned(options) {
            let pin_timeout = self.config.consumers.pin_timeout;
            config.priority_policy = jetstream::consumer::PriorityPolicy::PinnedClient;
            config.priority_groups = vec![partition::GROUP.to_owned()];
            config.priority_timeout = pin_timeout;
            // What a dead holder left unsettled must be due again before
            // its pin moves (see the partition module).
            config.ack_wait = config.ack_wait.min(pin_timeout / 2);
        }
        config
    }

    /// Whether a subscription reads one partition held by one instance at
    /// a time (a pinned consumer, 2.11+).
    fn pinned(&self, options: &SubscribeOptions) -> bool {
        options.get_partition().is_some()
            && options.get_durable_name().is_some()
            && self.capabilities.ordered_across_instances
    }

    /// The instances of `group` reading partitions: joined on the first
    /// subscription of this transport, left with the last.
    async fn members(&self, group: &str) -> Result<Arc<partition::Members>> {
        if let Some(members) = self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(group)
            .and_then(std::sync::Weak::upgrade)
        {
            return Ok(members);
        }
        let subject = format!(
            "_EVENTS.members.{}.{group}",
            self.stream.cached_info().config.name
        );
        let joined = partition::Members::join(&self.client, subject).await?;
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        // Two subscriptions may have joined at once: keep one.
        match members.get(group).and_then(std::sync::Weak::upgrade) {
            Some(existing) => Ok(existing),
            None => {
                members.insert(group.to_owned(), Arc::downgrade(&joined));
                Ok(joined)
            }
        }
    }

    /// The durable consumer `name` for the subscription's filters: created,
    /// or updated with this subscription's settings if it exists for the
    /// same filters.
    ///
    /// A name never re-targets a consumer: one that exists with other
    /// filters (another event type subscribed under the same durable or
    /// queue-group name) is refused. Updating it would silently move every
    /// instance reading it to these filters, and the first subscription's
    /// events would go unread.
    async fn named_consumer(
        &self,
        name: &str,
        filters: &[&str],
        options: &SubscribeOptions,
    ) -> Result<PullConsumer> {
        use jetstream::stream::ConsumerErrorKind as K;
        let filter = filters.join(", ");
        let mut config = self.consumer_config(Some(name), filters, options);
        let existing = match self.stream.consumer_info(name).await {
            Ok(info) => Some(info.config),
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("could not look up consumer {name}"),
                )
                .with_source(e))
            }
        };
        if let Some(existing) = &existing {
            if let Err(e) = check_filter(name, existing, filters) {
                if !options.get_redefine() {
                    return Err(e);
                }
                tracing::info!(consumer = name, filters = %filter, "consumer redefined with new filters");
            }
        }
        if let Some(start) = self.take_over(name, options.get_replaces()).await {
            if existing.is_none() {
                config.deliver_policy = jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                };
            }
        }
        // Two instances may create the consumer at once: where the server
        // supports it (2.10+), creation is strict, so a consumer created
        // meanwhile with other filters is refused rather than updated.
        let strict = existing.is_none() && self.server_version >= (2, 10, 0);
        if strict {
            match self.stream.create_consumer_strict(config.clone()).await {
                Ok(consumer) => return Ok(consumer),
                Err(e) => {
                    // Created meanwhile: check it as above, then update.
                    let info = self
                        .stream
                        .consumer_info(name)
                        .await
                        .map_err(|_| self.consumer_error(&filter, e))?;
                    if !options.get_redefine() {
                        check_filter(name, &info.config, filters)?;
                    }
                    config.deliver_policy = info.config.deliver_policy;
                }
            }
        }
        self.stream
            .create_consumer(config)
            .await
            .map_err(|e| match e.kind() {
                K::TimedOut => Error::new(
                    ErrorKind::Unavailable,
                    format!("creating consumer {name} timed out"),
                )
                .with_source(e),
                _ => self.consumer_error(&filter, e),
            })
    }

    /// Durable consumers `name` replaces that still exist: logged (one
    /// line), and the stream sequence after the lowest position any of them
    /// had acknowledged, where a new `name` starts instead of at the start
    /// of the stream (events acknowledged by some of them but not all are
    /// handled again: keep handlers idempotent across the move).
    async fn take_over(&self, name: &str, replaces: &[String]) -> Option<u64> {
        let mut found = Vec::new();
        let mut floor = u64::MAX;
        for old in replaces {
            if let Ok(info) = self.stream.consumer_info(old).await {
                floor = floor.min(info.ack_floor.stream_sequence);
                found.push(old.as_str());
            }
        }
        if found.is_empty() {
            return None;
        }
        let start = floor.saturating_add(1);
        tracing::warn!(
            consumer = name,
            earlier = ?found,
            start_sequence = start,
            "durable consumers of an earlier build of this consumer remain on stream {}: \
             they keep their own positions and pending events; once every instance runs \
             this build, delete them (JetStreamTransport::delete_consumer)",
            self.stream.cached_info().config.name
        );
        Some(start)
    }

    /// Acks are fire-and-forget: a flush proves they left the client, a
    /// JetStream API round trip after it that the server has read them
    /// (a connection processes what it receives in order). Only if acks
    /// were sent since the last confirmation.
    async fn confirm_acks(&self, limit: Duration) -> Result<()> {
        let sent = self.acks_sent.load(Ordering::Acquire);
        if sent == self.acks_confirmed.load(Ordering::Acquire) {
            return Ok(());
        }
        // Any answer will do (nats-server 2.9's account info is one async-nats
        // cannot parse): only its arrival matters.
        match tokio::time::timeout(limit, self.admin.query_account()).await {
            Ok(_) => {
                self.acks_confirmed.fetch_max(sent, Ordering::AcqRel);
                Ok(())
            }
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                format!("the server did not confirm the last acks within {limit:?}"),
            )),
        }
    }

    /// One dropped subscription has released what it left.
    fn settled(&self) {
        self.settling.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_waiters();
    }

    /// Waits (bounded) until every dropped subscription has released what
    /// it left unread.
    async fn wait_settled(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.settled.notified();
                if self.settling.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::warn!("dropped subscriptions did not release what they held in time; it comes back after the ack wait");
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed("the jetstream transport is closed"))
        } else {
            Ok(())
        }
    }
}

/// Refuses consumer `name` unless it reads exactly `filter`: its
/// `filter_subject`, or its whole `filter_subjects` set (2.10+), compared
/// as a set; a consumer without any filter reads the whole stream and
/// matches no single subscription.
fn check_filter(name: &str, config: &jetstream::consumer::Config, wanted: &[&str]) -> Result<()> {
    let mut filters: Vec<&str> = config.filter_subjects.iter().map(String::as_str).collect();
    if !config.filter_subject.is_empty() {
        filters.push(&config.filter_subject);
    }
    filters.sort_unstable();
    filters.dedup();
    let mut wanted = wanted.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    if filters == wanted {
        return Ok(());
    }
    let list = |filters: &[&str]| {
        filters
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let reads = if filters.is_empty() {
        "the whole stream".to_owned()
    } else {
        list(&filters)
    };
    Err(Error::invalid(format!(
        "consumer {name} already exists and reads {reads}, not {}: a name stands for one \
         consumer with one set of filters; give this subscription its own name (or delete the \
         consumer if it is stale)",
        list(&wanted)
    )))
}

impl Transport for JetStreamTransport {
    fn name(&self) -> &'static str {
        "jetstream"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    fn publish(&self, message: Message) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.inner.check_open()?;
            let p = self.inner.prepare(&message)?;
            self.inner.publish_one(&message, p).await
        })
    }

    /// Windows of up to 256 messages: each window is sent whole, then its
    /// acks are awaited together, with a deadline of `publish_timeout` from
    /// its first send. A window with a message that could not be stored for
    /// want of the server ends the call: later windows are not sent (their
    /// messages fail without being published), so an outage costs one
    /// `publish_timeout`, and nothing is published far behind a failed
    /// message.
    fn publish_batch(&self, messages: Vec<Message>) -> BoxFuture<'_, Vec<Result<()>>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let mut results = Vec::with_capacity(messages.len());
            // A window never needs more ack permits than the context has:
            // its sends would wait for permits only its own unawaited acks
            // hold.
            let window = PIPELINE_WINDOW.min(inner.config.max_ack_inflight).max(1);
            let mut stop = None;
            for window in messages.chunks(window) {
                if let Some(kind) = stop {
                    results.extend(window.iter().map(|m| Err(core::not_sent(kind, &m.subject))));
                    continue;
                }
                let deadline = Deadline::after(inner.config.connection.get_publish_timeout());
                let outcome = inner.publish_window(window, &deadline).await;
                stop = outcome.iter().find_map(|r| match r {
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::Unavailable | ErrorKind::Unauthorized | ErrorKind::Closed
                        ) =>
                    {
                        Some(e.kind())
                    }
                    _ => None,
                });
                results.extend(outcome);
            }
            results
        })
    }

    fn publish_atomic(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.inner.publish_atomic(messages))
    }

    fn subscribe(&self, options: SubscribeOptions) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.check_open()?;
            let defaults = &inner.config.consumers;
            let name = options.get_durable_name().or(options.get_queue_group());
            if options.is_multi_pattern() && !inner.capabilities.multi_pattern {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "a consumer with several filters needs nats-server 2.10 or later (the server runs {}.{}.{}, which would ignore them)",
                        inner.server_version.0, inner.server_version.1, inner.server_version.2
                    ),
                ));
            }
            let partition = options.get_partition();
            if partition.is_some() && inner.partitioning.is_none() {
                return Err(Error::invalid(format!(
                    "stream {} is not partitioned by key: subscribe without a partition",
                    inner.stream.cached_info().config.name
                )));
            }
            // Filters name what the stream stores: with partitions, the
            // partition token follows the prefix.
            let filters: Vec<String> = options
                .get_patterns()
                .map(|p| match &inner.partitioning {
                    Some(partitioning) => {
                        partitioning.stored_pattern(p.as_str(), partition.map(|(p, _)| p))
                    }
                    None => p.as_str().to_owned(),
                })
                .collect();
            let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
            let filter = filters.join(", ");
            let filter = filter.as_str();
            let consumer = match name {
                Some(name) if defaults.bind_existing => inner.bind_consumer(name, &filters).await?,
                Some(name) => inner.named_consumer(name, &filters, &options).await?,
                None => inner
                    .stream
                    .create_consumer(inner.consumer_config(None, &filters, &options))
                    .await
                    .map_err(|e| inner.consumer_error(filter, e))?,
            };
            let pinned = match partition {
                Some((index, group)) if inner.pinned(&options) => Some(Pinned {
                    index,
                    count: inner
                        .partitioning
                        .as_ref()
                        .map_or(0, partition::Partitioning::count),
                    pin: Arc::default(),
                    members: inner.members(group).await?,
                    catching_up: None,
                    ready: std::collections::VecDeque::new(),
                    subject: partition::next_subject(
                        &inner.stream.cached_info().config.name,
                        &consumer.cached_info().name,
                    ),
                    next_check: Instant::now(),
                }),
                _ => None,
            };
            let mut batch = options
                .get_capacity()
                .map_or(defaults.batch, |c| c.min(defaults.batch));
            let mut expires = defaults.expires;
            if let Some(pinned) = &pinned {
                // A pull must come back well within the pin timeout: a
                // standby's pulls are how it takes a pin that moves.
                expires = expires.min(defaults.pin_timeout / 4);
                tokio::spawn(partition::keep_pin(
                    Arc::downgrade(&pinned.pin),
                    inner.client.clone(),
                    pinned.subject.clone(),
                    defaults.pin_timeout,
                ));
            }
            if options.get_queue_group().is_some() {
                // A shared consumer fills one member's pull before the next
                // member's: small pulls spread the load across the group.
                batch = batch.min(defaults.shared_batch);
            }
            tracing::debug!(consumer = %consumer.cached_info().name, filter, batch, "jetstream subscription opened");
            inner.open_subscriptions.fetch_add(1, Ordering::AcqRel);
            let stop = Arc::new(Stop::default());
            // An ephemeral consumer is this subscription's alone: deleted
            // when the subscription ends, instead of lingering on the server
            // until its inactivity threshold (a loop of subscribe and drop
            // would reach the server's consumer limit).
            let ephemeral = name.is_none();
            // Pull in the background, ahead of the reader, as a core
            // subscription buffers: every member of a group has a pull
            // waiting on the server, so the group shares the load.
            //
            // What waits in the buffer has been delivered by the server, so
            // its ack wait runs: a keep-alive task reports progress for
            // whatever waits there longer than half the ack wait (a slow
            // reader would otherwise see its buffered events redelivered
            // elsewhere). Not covered: the rest of a batch the client holds
            // while the buffer is full (pulls that only ask for the room
            // there is cost 10-20% of the throughput, measured).
            let buffer = Arc::new(Buffer::new(batch));
            let ack_wait = consumer.cached_info().config.ack_wait;
            tokio::spawn(keep_alive(
                Arc::downgrade(&buffer),
                inner.client.clone(),
                ack_wait,
            ));
            let puller = Puller {
                buffer: buffer.clone(),
                consumer,
                inner: inner.clone(),
                closing: inner.closing.subscribe(),
                stop: stop.clone(),
                ephemeral,
                batch_size: batch,
                expires,
                current: None,
                pinned,
                in_current: 0,
                draining: false,
                failures: 0,
                state: {
                    let mut state = inner.tracker.watch();
                    state.mark_unchanged();
                    state
                },
                deferred: None,
            };
            tokio::spawn(puller.run());
            let reader = Reader {
                buffer,
                stop: stop.clone(),
                inner: inner.clone(),
            };
            Ok(Subscription::with_stop(reader, move || stop.request()))
        })
    }

    fn check_subject(&self, subject: &Subject) -> BoxFuture<'_, Result<()>> {
        let subject = subject.as_str().to_owned();
        Box::pin(async move {
            use jetstream::context::GetStreamByNameErrorKind as K;
            self.inner.check_open()?;
            match self.inner.admin.stream_by_subject(subject.clone()).await {
                Ok(_) => Ok(()),
                Err(e) if matches!(e.kind(), K::NotFound) => Err(Error::invalid(format!(
                    "no JetStream stream captures `{subject}`: messages published there \
                     would be refused; add the subject to a stream"
                ))),
                Err(e) => Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("could not look up the stream that captures `{subject}`"),
                )
                .with_source(e)),
            }
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.inner.closed.load(Ordering::Acquire) {
                return Ok(());
            }
            // A publish returns after its ack, so everything published is
            // stored; what may still be in the client are acks of
            // deliveries.
            let inner = &*self.inner;
            let limit = inner.config.connection.get_publish_timeout();
            core::flush(&inner.client, limit).await?;
            inner.confirm_acks(limit).await
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let inner = &*self.inner;
            if inner.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            let limit = inner.config.connection.get_publish_timeout();
            // A dropped subscription's pull ends within its expiry.
            inner
                .wait_settled(
                    limit.max(
                        inner
                            .config
                            .consumers
                            .expires
                            .saturating_add(PULL_END_MARGIN),
                    ),
                )
                .await;
            inner.closing.send_replace(true);
            let flushed = core::flush(&inner.client, limit).await;
            if let Err(e) = inner.confirm_acks(limit).await {
                tracing::warn!(error = %e, "could not confirm the last acks before closing");
            }
            if inner.open_subscriptions.load(Ordering::Acquire) == 0 {
                core::close_client(&inner.client, &inner.tracker, limit).await?;
            }
            // Otherwise the open subscriptions deliver what is pending for
            // them, flush their acks, and the connection closes with the
            // last handle.
            flushed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_of_both_forms_are_read() {
        let info = |delivered, stream_sequence, consumer_sequence| AckInfo {
            delivered,
            stream_sequence,
            consumer_sequence,
        };
        let now = "1700000000000000000";
        assert_eq!(
            ack_info(&format!("$JS.ACK.S.C.2.10.7.{now}.3")),
            Some(info(2, 10, 7))
        );
        assert_eq!(
            ack_info(&format!("$JS.ACK.dom.hash.S.C.1.5.4.{now}.0")),
            Some(info(1, 5, 4))
        );
        assert_eq!(
            ack_info(&format!("$JS.ACK.dom.hash.S.C.1.5.4.{now}.0.tok.more")),
            Some(info(1, 5, 4))
        );
        // Names of every length, so that the dots fall at every place of
        // the eight-byte words the subject is scanned in.
        for len in 1..20 {
            let name = "n".repeat(len);
            for subject in [
                format!("$JS.ACK.{name}.C.2.10.7.{now}.3"),
                format!("$JS.ACK.S.{name}.2.10.7.{now}.3"),
                format!("$JS.ACK.{name}.h.S.{name}.2.10.7.{now}.3"),
                format!("$JS.ACK.d.h.S.C.2.10.7.{now}.3.{name}.{name}"),
            ] {
                assert_eq!(ack_info(&subject), Some(info(2, 10, 7)), "{subject}");
            }
            for subject in [
                format!("$JS.ACK.{name}.x.C.2.10.7.{now}.3"),
                format!("$JS.ACK.S.C.2.10.7.{now}.3{name}.x"),
                format!("$JS.ACK.S.C.2.10.7.{now}"),
            ] {
                assert_eq!(ack_info(&subject), None, "{subject}");
            }
        }
        for bad in [
            "",
            "$JS.ACK.",
            "_INBOX.x.y",
            "$JS.ACK.S.C.2.10.7",
            "$JS.ACK.S.C.x.10.7.1.3",
            "$JS.ACK.S.C.2.10.7.1.-3",
            "$JS.ACK.S.C.2.10.7.99999999999999999999.3",
            "$JS.ACK.d.h.S.C.2.10.7.1",
            "$JS.ACK.S.C.2.10.7.9223372036854775808.3",
            "$JS.ACK.S.C.2.10.7..3",
        ] {
            assert_eq!(ack_info(bad), None, "{bad}");
        }
        // Numbers as `from_str` reads them, up to the type's bounds.
        for token in [
            "0",
            "7",
            "+7",
            "18446744073709551615",
            "18446744073709551616",
            "",
            "-1",
            "1a",
            "0009",
        ] {
            assert_eq!(ack_number(token), token.parse::<u64>().ok(), "{token}");
        }
        assert_eq!(
            ack_info("$JS.ACK.S.C.1.2.3.-9223372036854775808.0"),
            Some(info(1, 2, 3))
        );
        // The timestamp's bounds, as `i64::from_str` reads them.
        for (timestamp, valid) in [
            ("9223372036854775807", true),
            ("0000000000000000001", true),
            ("9223372036854775808", false),
            ("99999999999999999999", false),
            ("+1", true),
            ("1e5", false),
        ] {
            assert_eq!(
                ack_info(&format!("$JS.ACK.S.C.1.2.3.{timestamp}.0")).is_some(),
                valid,
                "{timestamp}"
            );
        }
    }

    #[test]
    fn server_versions_parse_with_suffixes() {
        assert_eq!(parse_version("2.9.10"), (2, 9, 10));
        assert_eq!(parse_version("2.10.0-beta.1"), (2, 10, 0));
        assert_eq!(parse_version(""), (0, 0, 0));
    }

    #[test]
    fn consumers_filter_with_the_singular_field() {
        let pattern = crate::transport::SubjectPattern::parse("events.orders.>").unwrap();
        let options = SubscribeOptions::new(pattern)
            .max_deliver(4)
            .ack_wait(Duration::from_secs(3));
        let config = ConsumerDefaults::new()
            .backoff([Duration::from_secs(1)])
            .pull_config(Some("d"), "events.orders.>", &options);
        assert_eq!(config.filter_subject, "events.orders.>");
        assert!(config.filter_subjects.is_empty());
        assert_eq!(config.durable_name.as_deref(), Some("d"));
        assert_eq!(
            (config.max_deliver, config.ack_wait),
            (4, Duration::from_secs(3))
        );
        assert_eq!(config.backoff, [Duration::from_secs(1)]);
        assert_eq!(
            config.inactive_threshold,
            Duration::ZERO,
            "durable consumers are never reaped"
        );
        let ephemeral = ConsumerDefaults::new().pull_config(
            None,
            "a",
            &SubscribeOptions::new(crate::transport::SubjectPattern::parse("a").unwrap()),
        );
        assert!(ephemeral.durable_name.is_none());
        assert_eq!(ephemeral.max_deliver, -1);
        assert!(ephemeral.inactive_threshold > Duration::ZERO);
    }

    #[test]
    fn invalid_stream_configs_are_rejected_before_connecting() {
        for bad in [
            StreamConfig::new("", ["a"]),
            StreamConfig::new("a.b", ["a"]),
            StreamConfig::new("S", Vec::<String>::new()),
            StreamConfig::new("S", ["a..b"]),
        ] {
            assert_eq!(
                bad.validate().unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        assert!(StreamConfig::new("S", ["events.>"]).validate().is_ok());
    }
}
