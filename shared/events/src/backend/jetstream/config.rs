//! Typed settings for streams and consumers, mapped onto async-nats's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::nats::NatsConfig;
use crate::error::{Error, Result};
use crate::transport::MAX_CAPACITY;

/// The most partitions a stream may be split into by key.
pub const MAX_PARTITIONS: u32 = 1024;

/// The longest duration nats-server takes, about 292 years: it counts in
/// `i64` nanoseconds, and the client sends a longer one wrapped
/// (`Duration::MAX` as -1 ns, which the server refuses or reads as "none").
pub(crate) const MAX_SERVER_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// `duration`, capped at what the server can count.
pub(crate) fn server_duration(duration: Duration) -> Duration {
    duration.min(MAX_SERVER_DURATION)
}

/// Where stream data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// On disk: survives a server restart (the default).
    #[default]
    File,
    /// In memory: lost when the server stops.
    Memory,
}

/// When the stream drops messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Retention {
    /// Keep messages until a limit (age, bytes, count) is reached (the
    /// default; what an event log wants).
    #[default]
    Limits,
    /// Keep a message while some consumer has not acknowledged it.
    Interest,
    /// Remove a message once one consumer acknowledged it.
    WorkQueue,
}

/// A stream the transport creates or updates at connect.
///
/// A new stream is created with everything this says, defaults included.
/// On an existing stream the transport manages only what this sets
/// explicitly: the subjects, and each field whose setter was called
/// (storage, retention, max age, max bytes, max messages, duplicate
/// window, replicas) is updated to its value, so a changed setting is
/// applied rather than silently ignored; a field left at its default keeps
/// what the stream has (an operator's R3 is not scaled down to the default
/// single replica; to go back to a default, set it). Metadata entries are
/// merged: this config's keys are set, others kept. Everything else (an
/// operator's compression, description, limits per subject, and flags such
/// as `allow_msg_ttl`, `allow_atomic`, `allow_batched`, counters,
/// schedules, subject delete markers) is left as it is, and a flag is only
/// ever turned on, never off. A stream that already matches gets no update.
///
/// ```
/// use std::time::Duration;
/// use events::backend::jetstream::{StreamConfig, Storage};
///
/// let stream = StreamConfig::new("EVENTS", ["events.>"])
///     .storage(Storage::File)
///     .max_age(Duration::from_secs(7 * 24 * 3600))
///     .duplicate_window(Duration::from_secs(120));
/// assert_eq!(stream.get_name(), "EVENTS");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    name: String,
    subjects: Vec<String>,
    storage: Storage,
    retention: Retention,
    max_age: Duration,
    max_bytes: Option<i64>,
    max_messages: Option<i64>,
    duplicate_window: Duration,
    replicas: usize,
    metadata: BTreeMap<String, String>,
    atomic_publish: bool,
    partitions: u32,
    /// The server's names of the fields a setter was called for: those an
    /// existing stream is updated to (see the type's docs).
    managed: BTreeSet<&'static str>,
}

impl StreamConfig {
    /// A stream called `name` capturing `subjects` (patterns such as
    /// `events.>`), file storage, limits retention, no age or size limit, a
    /// 2-minute duplicate window and one replica.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = S>,
    ) -> Self {
        StreamConfig {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            storage: Storage::File,
            retention: Retention::Limits,
            max_age: Duration::ZERO,
            max_bytes: None,
            max_messages: None,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            metadata: BTreeMap::new(),
            atomic_publish: false,
            partitions: 0,
            managed: BTreeSet::new(),
        }
    }

    /// Partition the stream by key into `partitions` (0: not partitioned,
    /// the default). The stream must capture one subject, `<prefix>.>`;
    /// events are published as `<prefix>.<key token>.<type>` and the
    /// server stores each as `<prefix>.<partition>.<key token>.<type>`
    /// (a subject transform with `{{partition(n,1)}}`), so every event of
    /// one key, whatever its type, is in one partition. A consumer ordered
    /// by key then reads each partition through its own durable consumer,
    /// held by one instance at a time (nats-server 2.11+), and per-key
    /// order holds across its instances. Needs nats-server 2.10 or later:
    /// connecting to an older one fails instead. Changing the count on a
    /// stream moves keys between partitions: per-key order is not kept
    /// across that change for events still unhandled. At most
    /// [`MAX_PARTITIONS`].
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self.managed.insert("subject_transform");
        self
    }

    /// File or memory storage.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self.managed.insert("storage");
        self
    }
    /// The retention policy.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self.managed.insert("retention");
        self
    }
    /// Drop messages older than this (zero: keep forever). Capped at about
    /// 292 years, the longest the server counts.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = server_duration(age);
        self.managed.insert("max_age");
        self
    }
    /// Drop the oldest messages beyond this many bytes (capped at
    /// `i64::MAX`). The server reserves this much storage for the stream
    /// and refuses, at connect, a stream larger than it has room for.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.managed.insert("max_bytes");
        self
    }
    /// Drop the oldest messages beyond this many (capped at `i64::MAX`).
    pub fn max_messages(mut self, messages: u64) -> Self {
        self.max_messages = Some(i64::try_from(messages).unwrap_or(i64::MAX));
        self.managed.insert("max_msgs");
        self
    }
    /// How long a `Nats-Msg-Id` is remembered for publish deduplication.
    /// Keep it longer than any publish retry loop, and no longer than a
    /// `max_age` (the server refuses that). Capped at about 292 years.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = server_duration(window);
        self.managed.insert("duplicate_window");
        self
    }
    /// Copies kept in a cluster (1, 3 or 5; the server refuses others, and
    /// more than it has nodes).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self.managed.insert("num_replicas");
        self
    }
    /// A metadata entry. Needs nats-server 2.10 or later: an older server
    /// would silently drop it, so connecting to one fails instead.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Allow all-or-nothing batches
    /// ([`publish_atomic`](crate::transport::Transport::publish_atomic);
    /// the stream's `allow_atomic`). Needs nats-server 2.12.1 or later
    /// (2.12.0 refuses dedup ids in a batch): connecting to an older one
    /// fails instead. Provisioning only ever turns it on: `false` leaves
    /// the stream as it is.
    pub fn atomic_publish(mut self, allow: bool) -> Self {
        self.atomic_publish = allow;
        self
    }

    /// The stream's name.
    pub fn get_name(&self) -> &str {
        &self.name
    }
    /// The subjects it captures.
    pub fn get_subjects(&self) -> &[String] {
        &self.subjects
    }
    /// Storage (default file).
    pub fn get_storage(&self) -> Storage {
        self.storage
    }
    /// Retention (default limits).
    pub fn get_retention(&self) -> Retention {
        self.retention
    }
    /// Maximum age (default zero: unlimited).
    pub fn get_max_age(&self) -> Duration {
        self.max_age
    }
    /// Duplicate window (default 2 min).
    pub fn get_duplicate_window(&self) -> Duration {
        self.duplicate_window
    }
    /// Replicas (default 1).
    pub fn get_replicas(&self) -> usize {
        self.replicas
    }
    /// Whether the stream is made to allow atomic batches (default no).
    pub fn get_atomic_publish(&self) -> bool {
        self.atomic_publish
    }
    /// Partitions by key (default 0: none).
    pub fn get_partitions(&self) -> u32 {
        self.partitions
    }
    /// The metadata entries the crate sets.
    pub fn get_metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The server's names of the fields an existing stream is updated to:
    /// `subjects`, and each field whose setter was called.
    pub(crate) fn managed_fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once("subjects").chain(self.managed.iter().copied())
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || self
                .name
                .contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace())
        {
            return Err(Error::invalid(format!(
                "stream name {:?} must be non-empty without '.', '*', '>' or whitespace",
                self.name
            )));
        }
        if self.subjects.is_empty() {
            return Err(Error::invalid(format!(
                "stream {} captures no subjects",
                self.name
            )));
        }
        for subject in &self.subjects {
            crate::transport::SubjectPattern::parse(subject)?;
        }
        if self.partitions > 0 {
            if self.partitions > MAX_PARTITIONS {
                return Err(Error::invalid(format!(
                    "stream {} asks for {} partitions; at most {MAX_PARTITIONS}",
                    self.name, self.partitions
                )));
            }
            self.partition_prefix()?;
        }
        Ok(())
    }

    /// The prefix of a partitioned stream's one subject, `<prefix>.>`.
    fn partition_prefix(&self) -> Result<&str> {
        match self.subjects.as_slice() {
            [one] if one.ends_with(".>") && !one[..one.len() - 2].contains(['*', '>']) => {
                Ok(&one[..one.len() - 2])
            }
            _ => Err(Error::invalid(format!(
                "stream {} is partitioned by key, so it must capture exactly one subject \
                 `<prefix>.>` (it captures {:?})",
                self.name, self.subjects
            ))),
        }
    }

    pub(crate) fn to_nats(&self) -> async_nats::jetstream::stream::Config {
        use async_nats::jetstream::stream;
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            retention: match self.retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::Interest => stream::RetentionPolicy::Interest,
                Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
            },
            max_age: self.max_age,
            max_bytes: self.max_bytes.unwrap_or(-1),
            max_messages: self.max_messages.unwrap_or(-1),
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            metadata: self.metadata.clone().into_iter().collect(),
            allow_atomic_publish: self.atomic_publish,
            subject_transform: match self.partition_prefix() {
                Ok(prefix) if self.partitions > 0 => {
                    Some(super::partition::transform(prefix, self.partitions))
                }
                _ => None,
            },
            ..Default::default()
        }
    }
}

/// Which stream the transport publishes to and consumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamSetup {
    /// Create the stream, or update it to this configuration.
    Provision(StreamConfig),
    /// Use an existing stream as it is (managed elsewhere, e.g. by
    /// infrastructure code); connecting fails if it does not exist.
    Bind(String),
}

/// Where a new consumer starts in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliverPolicy {
    /// From the first message still stored.
    All,
    /// Only messages stored after the consumer was created.
    New,
    /// From the first message stored at or after this time.
    ByStartTime(DateTime<Utc>),
    /// From this stream sequence on.
    ByStartSequence(u64),
}

impl DeliverPolicy {
    fn to_nats(self) -> async_nats::jetstream::consumer::DeliverPolicy {
        use async_nats::jetstream::consumer::DeliverPolicy as D;
        match self {
            DeliverPolicy::All => D::All,
            DeliverPolicy::New => D::New,
            DeliverPolicy::ByStartTime(start_time) => D::ByStartTime { start_time },
            DeliverPolicy::ByStartSequence(seq) => D::ByStartSequence {
                start_sequence: seq,
            },
        }
    }
}

/// Defaults for the consumers the transport creates; a subscription's own
/// options ([`SubscribeOptions`](crate::transport::SubscribeOptions)) win.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerDefaults {
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: Option<u32>,
    pub(crate) backoff: Vec<Duration>,
    pub(crate) durable_deliver: DeliverPolicy,
    pub(crate) ephemeral_deliver: DeliverPolicy,
    pub(crate) max_ack_pending: Option<i64>,
    pub(crate) batch: usize,
    pub(crate) shared_batch: usize,
    pub(crate) expires: Duration,
    pub(crate) inactive_threshold: Duration,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) bind_existing: bool,
    pub(crate) pin_timeout: Duration,
}

impl ConsumerDefaults {
    /// Ack wait 30 s, unlimited deliveries, no backoff; durable consumers
    /// start at the first stored message, ephemeral ones at new messages;
    /// pulls of up to 256 messages (16 in a queue group) that wait up to 5 s; ephemeral consumers
    /// removed 30 s after their subscriber is gone.
    pub fn new() -> Self {
        ConsumerDefaults {
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            backoff: Vec::new(),
            durable_deliver: DeliverPolicy::All,
            ephemeral_deliver: DeliverPolicy::New,
            max_ack_pending: None,
            batch: 256,
            shared_batch: 16,
            expires: Duration::from_secs(5),
            inactive_threshold: Duration::from_secs(30),
            metadata: BTreeMap::new(),
            bind_existing: false,
            pin_timeout: Duration::from_secs(10),
        }
    }

    /// For a stream partitioned by key: how long a partition stays with an
    /// instance that stopped pulling before another takes it (default 10 s;
    /// 1 s to 1 h). It bounds the pause a key sees when the instance
    /// holding its partition dies (a graceful shutdown hands partitions
    /// over at once). A partition's ack wait is kept to half of it: the
    /// next holder waits for what the dead one had in flight to be
    /// redelivered, and handles it first.
    pub fn pin_timeout(mut self, timeout: Duration) -> Self {
        self.pin_timeout = timeout.clamp(Duration::from_secs(1), Duration::from_secs(3600));
        self
    }

    /// How long a delivery may stay unsettled before it is redelivered.
    /// Capped at about 292 years, the longest the server counts (as is a
    /// subscription's own ack wait).
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = server_duration(wait);
        self
    }
    /// Stop after this many delivery attempts.
    pub fn max_deliver(mut self, attempts: u32) -> Self {
        self.max_deliver = Some(attempts.max(1));
        self
    }
    /// Redelivery delays by attempt for unacknowledged messages (the last
    /// one repeats); overrides the ack wait, as the server does. Each is
    /// capped at about 292 years.
    pub fn backoff(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.backoff = delays.into_iter().map(server_duration).collect();
        self
    }
    /// Where new durable (and queue-group) consumers start (default all).
    pub fn durable_deliver_policy(mut self, policy: DeliverPolicy) -> Self {
        self.durable_deliver = policy;
        self
    }
    /// Where new ephemeral consumers start (default new).
    pub fn ephemeral_deliver_policy(mut self, policy: DeliverPolicy) -> Self {
        self.ephemeral_deliver = policy;
        self
    }
    /// Unacknowledged messages the server allows in flight per consumer, all
    /// its instances together (default: the server's, 1,000 on 2.9).
    pub fn max_ack_pending(mut self, pending: u32) -> Self {
        self.max_ack_pending = Some(i64::from(pending.max(1)));
        self
    }
    /// Messages asked for per pull (default 256, at most the subscription's
    /// capacity; at least 1, at most [`MAX_CAPACITY`]).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.clamp(1, MAX_CAPACITY);
        self
    }
    /// Messages asked for per pull by a member of a queue group (default
    /// 16). The server fills one member's pull before the next member's, so
    /// smaller pulls share the load more evenly, larger ones cost fewer
    /// round trips. At least 1, at most [`MAX_CAPACITY`].
    pub fn shared_batch(mut self, batch: usize) -> Self {
        self.shared_batch = batch.clamp(1, MAX_CAPACITY);
        self
    }
    /// How long one pull waits on the server for messages (default 5 s).
    /// It also bounds how long a pull lost with a server restart stays
    /// unanswered. At least 100 ms, at most about 292 years.
    pub fn expires(mut self, expires: Duration) -> Self {
        self.expires = server_duration(expires.max(Duration::from_millis(100)));
        self
    }
    /// A metadata entry on every consumer created. Needs nats-server 2.10.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Bind durable and queue-group subscriptions to consumers that already
    /// exist (managed elsewhere) instead of creating or updating them; a
    /// missing consumer is an error.
    pub fn bind_existing(mut self, bind: bool) -> Self {
        self.bind_existing = bind;
        self
    }

    pub(crate) fn pull_config(
        &self,
        name: Option<&str>,
        filter: &str,
        options: &crate::transport::SubscribeOptions,
    ) -> async_nats::jetstream::consumer::pull::Config {
        use async_nats::jetstream::consumer::{pull, AckPolicy};
        let durable = name.is_some();
        pull::Config {
            durable_name: name.map(str::to_owned),
            // Singular on purpose: nats-server 2.9 ignores `filter_subjects`
            // and the consumer would receive the whole stream.
            filter_subject: filter.to_owned(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: server_duration(options.get_ack_wait().unwrap_or(self.ack_wait)),
            max_deliver: options
                .get_max_deliver()
                .or(self.max_deliver)
                .map_or(-1, i64::from),
            backoff: self.backoff.clone(),
            deliver_policy: if durable {
                self.durable_deliver
            } else {
                self.ephemeral_deliver
            }
            .to_nats(),
            // Consumer-wide (all instances together), so not derived from
            // one subscription's capacity: a cap that low stalled delivery
            // until acks made the round trip (0.55x a hand-written loop at
            // 32). Each subscription's pulls bound what it holds.
            max_ack_pending: self.max_ack_pending.unwrap_or(0),
            inactive_threshold: if durable {
                Duration::ZERO
            } else {
                self.inactive_threshold
            },
            metadata: self.metadata.clone().into_iter().collect(),
            ..Default::default()
        }
    }
}

impl Default for ConsumerDefaults {
    fn default() -> Self {
        Self::new()
    }
}

/// Settings of a [`JetStreamTransport`](super::JetStreamTransport): the
/// connection, the stream, consumer defaults and publish behaviour.
///
/// ```
/// use events::backend::jetstream::{JetStreamConfig, StreamConfig};
/// use events::backend::nats::NatsConfig;
///
/// let config = JetStreamConfig::new(NatsConfig::new("nats://127.0.0.1:4222"), StreamConfig::new("EVENTS", ["events.>"]))
///     .publish_attempts(5);
/// assert_eq!(config.get_publish_attempts(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    pub(crate) connection: NatsConfig,
    pub(crate) stream: StreamSetup,
    pub(crate) consumers: ConsumerDefaults,
    pub(crate) publish_attempts: u32,
    pub(crate) ack_timeout: Duration,
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) max_ack_inflight: usize,
}

impl JetStreamConfig {
    /// Connect with `connection`, provision `stream`.
    pub fn new(connection: NatsConfig, stream: StreamConfig) -> Self {
        Self::with_setup(connection, StreamSetup::Provision(stream))
    }

    /// Connect with `connection` and use the existing stream `name`.
    pub fn bind(connection: NatsConfig, name: impl Into<String>) -> Self {
        Self::with_setup(connection, StreamSetup::Bind(name.into()))
    }

    fn with_setup(connection: NatsConfig, stream: StreamSetup) -> Self {
        JetStreamConfig {
            connection,
            stream,
            consumers: ConsumerDefaults::new(),
            publish_attempts: 3,
            ack_timeout: Duration::from_secs(5),
            message_ttl: None,
            max_ack_inflight: 5_000,
        }
    }

    /// Consumer defaults.
    pub fn consumers(mut self, defaults: ConsumerDefaults) -> Self {
        self.consumers = defaults;
        self
    }

    /// How many times one message is sent at most when its ack does not
    /// come (default 3): no ack within [`ack_timeout`](Self::ack_timeout),
    /// the ack lost with the connection, or no stream answering yet.
    /// Resends carry the same `Nats-Msg-Id`, so a message that was stored
    /// after all is answered as a duplicate, not stored twice. Messages
    /// without a dedup id are never resent. All attempts share one
    /// deadline, the connection's
    /// [`publish_timeout`](crate::backend::nats::NatsConfig::publish_timeout)
    /// (per window of 256 for a batch): a resend is made only while time is
    /// left.
    pub fn publish_attempts(mut self, attempts: u32) -> Self {
        self.publish_attempts = attempts.max(1);
        self
    }

    /// How long one send waits for its PubAck before the message is sent
    /// again (default 5 s). The wait ends sooner at the publish's deadline
    /// (the connection's
    /// [`publish_timeout`](crate::backend::nats::NatsConfig::publish_timeout),
    /// also 5 s by default), so a resend after a lost ack fits only when
    /// this is shorter than that; an ack lost with a connection is noticed
    /// at the reconnect and resent at once. Stream and consumer management
    /// requests wait at least 10 s whatever this says: a replicated stream
    /// on a busy cluster can take longer to create a consumer than a
    /// publish should wait.
    ///
    /// ```
    /// use std::time::Duration;
    /// use events::backend::jetstream::{JetStreamConfig, StreamConfig};
    /// use events::backend::nats::NatsConfig;
    ///
    /// // Up to three sends within the 5 s a publish may take.
    /// let connection = NatsConfig::new("nats://127.0.0.1:4222").publish_timeout(Duration::from_secs(5));
    /// let config = JetStreamConfig::new(connection, StreamConfig::new("EVENTS", ["events.>"]))
    ///     .ack_timeout(Duration::from_millis(1500))
    ///     .publish_attempts(3);
    /// assert_eq!(config.get_ack_timeout(), Duration::from_millis(1500));
    /// ```
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// A time to live for every message published (`Nats-TTL`). Needs
    /// nats-server 2.11 and a stream that allows it; older servers would
    /// keep the messages forever, so connecting to one fails instead.
    /// Capped at about 292 years, the longest the server counts.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(server_duration(ttl));
        self
    }

    /// Publishes awaiting their ack at once, across the transport (default
    /// 5,000; at least 1, at most [`MAX_CAPACITY`]); more wait for room.
    pub fn max_ack_inflight(mut self, inflight: usize) -> Self {
        self.max_ack_inflight = inflight.clamp(1, MAX_CAPACITY);
        self
    }

    /// The connection settings.
    pub fn get_connection(&self) -> &NatsConfig {
        &self.connection
    }
    /// The stream setup.
    pub fn get_stream(&self) -> &StreamSetup {
        &self.stream
    }
    /// The consumer defaults.
    pub fn get_consumers(&self) -> &ConsumerDefaults {
        &self.consumers
    }
    /// Publish attempts (default 3).
    pub fn get_publish_attempts(&self) -> u32 {
        self.publish_attempts
    }
    /// Ack timeout per attempt (default 5 s).
    pub fn get_ack_timeout(&self) -> Duration {
        self.ack_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{SubjectPattern, SubscribeOptions};

    #[test]
    fn durations_sent_to_the_server_are_capped_at_its_i64_nanoseconds() {
        assert_eq!(MAX_SERVER_DURATION.as_nanos(), i64::MAX as u128);
        let stream = StreamConfig::new("S", ["a"])
            .max_age(Duration::MAX)
            .duplicate_window(Duration::MAX)
            .to_nats();
        assert_eq!(
            (stream.max_age, stream.duplicate_window),
            (MAX_SERVER_DURATION, MAX_SERVER_DURATION)
        );
        let defaults = ConsumerDefaults::new()
            .ack_wait(Duration::MAX)
            .backoff([Duration::MAX, Duration::from_secs(1)])
            .expires(Duration::MAX);
        assert_eq!(defaults.expires, MAX_SERVER_DURATION);
        let options = SubscribeOptions::new(SubjectPattern::parse("a").unwrap());
        let config = defaults.pull_config(Some("d"), "a", &options);
        assert_eq!(config.ack_wait, MAX_SERVER_DURATION);
        assert_eq!(
            config.backoff,
            [MAX_SERVER_DURATION, Duration::from_secs(1)]
        );
        let own = defaults.pull_config(Some("d"), "a", &options.ack_wait(Duration::MAX));
        assert_eq!(own.ack_wait, MAX_SERVER_DURATION);
    }

    #[test]
    fn capacities_are_capped_at_the_semaphore_limit() {
        let defaults = ConsumerDefaults::new().batch(usize::MAX).shared_batch(0);
        assert_eq!((defaults.batch, defaults.shared_batch), (MAX_CAPACITY, 1));
        let config = JetStreamConfig::new(NatsConfig::default(), StreamConfig::new("S", ["a"]))
            .max_ack_inflight(usize::MAX)
            .message_ttl(Duration::MAX);
        assert_eq!(config.max_ack_inflight, MAX_CAPACITY);
        assert_eq!(config.message_ttl, Some(MAX_SERVER_DURATION));
    }
}
