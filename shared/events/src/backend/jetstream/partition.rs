//! Streams partitioned by key, and consumers that read one partition each,
//! held by one instance at a time.
//!
//! - **Layout.** Events are published on `<prefix>.<key token>.<type>`; the
//!   stream's subject transform stores them as
//!   `<prefix>.<partition>.<key token>.<type>`, the partition being the
//!   server's FNV-1a hash of the key token modulo the count. Subscriptions
//!   name published subjects: the transport inserts the partition token
//!   into their filters, and removes it from what it delivers.
//! - **Exclusive partitions** (nats-server 2.11+). Each partition of a
//!   consumer is a durable consumer with the `pinned_client` priority
//!   policy: the server delivers it to one pull client at a time (the
//!   pinned one) and moves the pin when that client stops pulling for the
//!   pin timeout. Every instance pulls every partition; the ones not
//!   pinned wait on standby.
//! - **Balance.** Instances of one consumer announce themselves on a core
//!   subject every second. Each partition has an owner among the live
//!   instances (rendezvous hashing: the highest hash of instance and
//!   partition), so a join or leave moves only the partitions it must. An
//!   instance holding a partition another live instance owns hands it over:
//!   it stops pulling it, waits until everything it delivered from it is
//!   settled and the settlements have reached the server, then unpins it;
//!   the owner's waiting pull takes the pin with the next message. A key's
//!   events are never handled by two instances at once, and the next holder
//!   starts after the last settlement of the previous one.
//! - **Failover.** An instance that dies keeps its pins until the pin
//!   timeout (renewed every quarter of it). The instance that takes a pin
//!   asks the server how many deliveries are unsettled: while some are
//!   not its own (a dead holder's), it holds back what it receives until
//!   they have been redelivered to it, then hands everything out in stream
//!   order. A partition's ack wait is at most half the pin timeout, which
//!   bounds that wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::StatusCode;
use futures_util::StreamExt as _;

use crate::error::{Error, ErrorKind, Result};

/// The priority group every partition consumer uses.
pub(super) const GROUP: &str = "events";
/// How often an instance announces itself.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// An instance not heard from for this long is gone.
const MEMBER_TIMEOUT: Duration = Duration::from_millis(3500);
/// A new instance is given partitions once heard from for this long (a
/// flapping one would make partitions move back and forth).
const MEMBER_SETTLED: Duration = Duration::from_millis(1500);

/// The stream's subject transform for `partitions` partitions by key.
pub(super) fn transform(prefix: &str, partitions: u32) -> jetstream::stream::SubjectTransform {
    jetstream::stream::SubjectTransform {
        source: format!("{prefix}.*.>"),
        destination: format!("{prefix}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}.>"),
    }
}

/// How a stream is partitioned by key, read from its subject transform
/// (made by this crate, or by an operator in the same form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Partitioning {
    prefix: String,
    count: u32,
}

impl Partitioning {
    /// The partitioning of a stream with this transform, if it is one.
    pub(super) fn of(transform: Option<&jetstream::stream::SubjectTransform>) -> Option<Self> {
        let transform = transform?;
        let prefix = transform.source.strip_suffix(".*.>")?;
        let rest = transform
            .destination
            .strip_prefix(prefix)?
            .strip_prefix(".{{")?;
        let rest = rest.replace(' ', "");
        let count = rest
            .strip_prefix("partition(")?
            .strip_suffix(",1)}}.{{wildcard(1)}}.>")?;
        let count: u32 = count.parse().ok().filter(|&n| n > 0)?;
        Some(Partitioning {
            prefix: prefix.to_owned(),
            count,
        })
    }

    pub(super) fn count(&self) -> u32 {
        self.count
    }

    /// The stored form of a subscription pattern over published subjects:
    /// the partition token (`partition`, or any) after the prefix.
    /// Patterns outside the prefix are left as they are.
    pub(super) fn stored_pattern(&self, pattern: &str, partition: Option<u32>) -> String {
        match pattern
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
        {
            Some(rest) => match partition {
                Some(p) => format!("{}.{p}.{rest}", self.prefix),
                None => format!("{}.*.{rest}", self.prefix),
            },
            None => pattern.to_owned(),
        }
    }

    /// The subject an event was published on, from the one it is stored
    /// under (the partition token removed); `None` for a subject outside
    /// the layout.
    pub(super) fn published_subject(&self, stored: &str) -> Option<String> {
        let rest = stored
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (partition, rest) = rest.split_once('.')?;
        partition
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then_some(())?;
        Some(format!("{}.{rest}", self.prefix))
    }
}

/// The pin a partition subscription holds, if any.
#[derive(Debug, Default)]
pub(super) struct Pin {
    id: Mutex<Option<String>>,
    /// Set when a pin is taken (none held before), until the puller looks.
    acquired: std::sync::atomic::AtomicBool,
    /// Deliveries handed out and not yet settled.
    outstanding: Arc<AtomicUsize>,
}

impl Pin {
    pub(super) fn id(&self) -> Option<String> {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, id: Option<String>) {
        let mut held = self.id.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none() && id.is_some() {
            self.acquired.store(true, Ordering::Release);
        }
        *held = id;
    }
    /// Whether a pin was taken since the last call.
    pub(super) fn take_acquired(&self) -> bool {
        self.acquired.swap(false, Ordering::AcqRel)
    }
    pub(super) fn held(&self) -> bool {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
    pub(super) fn drop_pin(&self) {
        self.set(None);
    }
    /// Counts a delivery until its settlement (or drop).
    pub(super) fn track(&self) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Outstanding(self.outstanding.clone())
    }
    pub(super) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }
}

/// One delivery of a partition not yet settled.
#[derive(Debug)]
pub(super) struct Outstanding(Arc<AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The `MSG.NEXT` subject of a consumer.
pub(super) fn next_subject(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
}

/// One pull request of a pinned partition consumer (async-nats pulls
/// such a consumer only through a stream that renews its own pulls; this
/// pull is read to its end as the transport's other pulls are).
pub(super) struct PinnedPull {
    subscriber: async_nats::Subscriber,
    remaining: usize,
    deadline: tokio::time::Instant,
    pin: Arc<Pin>,
}

impl PinnedPull {
    /// Asks for up to `batch` messages, waiting up to `expires`, with the
    /// pin if held (a standby's pull carries none).
    pub(super) async fn start(
        client: &async_nats::Client,
        subject: String,
        batch: usize,
        expires: Duration,
        pin: Arc<Pin>,
    ) -> Result<Self> {
        let inbox = client.new_inbox();
        let subscriber = client.subscribe(inbox.clone()).await.map_err(|e| {
            Error::new(ErrorKind::Unavailable, "subscribing a pull inbox failed").with_source(e)
        })?;
        let mut request = serde_json::json!({
            "batch": batch,
            "expires": u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX),
            "group": GROUP,
        });
        if let Some(id) = pin.id() {
            request["id"] = serde_json::Value::String(id);
        }
        client
            .publish_with_reply(subject, inbox, request.to_string().into())
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Unavailable, "sending a pull request failed").with_source(e)
            })?;
        Ok(PinnedPull {
            subscriber,
            remaining: batch,
            // As async-nats bounds its own pulls: the expiry, and a margin
            // for the server's answer.
            deadline: tokio::time::Instant::now() + expires + Duration::from_secs(5),
            pin,
        })
    }

    /// The next message of this pull; `None` once it is complete, expired
    /// or refused (a pin that moved: the next pull goes without one).
    pub(super) async fn next(
        &mut self,
    ) -> Option<std::result::Result<async_nats::Message, String>> {
        loop {
            if self.remaining == 0 {
                return None;
            }
            let message = tokio::time::timeout_at(self.deadline, self.subscriber.next())
                .await
                .ok()??;
            match message.status {
                None | Some(StatusCode::OK) => {
                    if let Some(id) = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get_last(async_nats::header::NATS_PIN_ID))
                    {
                        if self.pin.id().as_deref() != Some(id.as_str()) {
                            self.pin.set(Some(id.as_str().to_owned()));
                        }
                    }
                    self.remaining -= 1;
                    return Some(Ok(message));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::PIN_ID_MISMATCH) => {
                    self.pin.set(None);
                    return None;
                }
                Some(
                    StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED | StatusCode::NOT_FOUND,
                ) => return None,
                Some(status) => {
                    return Some(Err(format!(
                        "pull answered {status}: {}",
                        message.description.as_deref().unwrap_or("")
                    )))
                }
            }
        }
    }
}

/// Renews the pin of a partition subscription every quarter of the pin
/// timeout, whatever its puller is doing (a puller blocked on a full
/// buffer sends no pull, and the pin would move while its events are in
/// flight). The renewal is a pull that cannot be answered with a message:
/// one byte at most, to an inbox nobody reads.
pub(super) async fn keep_pin(
    pin: Weak<Pin>,
    client: async_nats::Client,
    subject: String,
    pin_timeout: Duration,
) {
    let mut every = tokio::time::interval(pin_timeout / 4);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pin) = pin.upgrade() else { return };
        let Some(id) = pin.id() else { continue };
        let request = serde_json::json!({
            "batch": 1,
            "max_bytes": 1,
            "no_wait": true,
            "group": GROUP,
            "id": id,
        });
        let _ = client
            .publish_with_reply(
                subject.clone(),
                client.new_inbox(),
                request.to_string().into(),
            )
            .await;
    }
}

/// The live instances of one consumer, as each announces itself.
#[derive(Debug)]
pub(super) struct Members {
    /// This instance.
    me: String,
    /// Instance -> (first heard, last heard).
    seen: Mutex<HashMap<String, (Instant, Instant)>>,
}

impl Members {
    /// Starts announcing this instance and listening to the others, on
    /// `subject`; stops when the returned value is dropped.
    pub(super) async fn join(client: &async_nats::Client, subject: String) -> Result<Arc<Self>> {
        let members = Arc::new(Members {
            me: uuid::Uuid::now_v7().simple().to_string(),
            seen: Mutex::default(),
        });
        let mut heard = client.subscribe(subject.clone()).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                "subscribing to the consumer's instances failed",
            )
            .with_source(e)
        })?;
        let weak = Arc::downgrade(&members);
        tokio::spawn(async move {
            while let Some(message) = heard.next().await {
                let Some(members) = weak.upgrade() else {
                    return;
                };
                let Ok(id) = std::str::from_utf8(&message.payload) else {
                    continue;
                };
                if id.is_empty() || id.len() > 64 {
                    continue;
                }
                let now = Instant::now();
                let mut seen = members.seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.entry(id.to_owned())
                    .and_modify(|(_, last)| *last = now)
                    .or_insert((now, now));
            }
        });
        let weak = Arc::downgrade(&members);
        let client = client.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(ANNOUNCE_EVERY);
            loop {
                every.tick().await;
                let Some(members) = weak.upgrade() else {
                    return;
                };
                let _ = client
                    .publish(subject.clone(), members.me.clone().into())
                    .await;
            }
        });
        Ok(members)
    }

    /// The instance that should hold partition `index` of `count` now,
    /// among the live instances settled in; `None` when that is this one.
    pub(super) fn other_owner(&self, index: u32, count: u32) -> Option<String> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, (_, last)| now.duration_since(*last) < MEMBER_TIMEOUT);
        let mut members: Vec<&str> = seen
            .iter()
            .filter(|(id, (first, _))| {
                *id != &self.me && now.duration_since(*first) >= MEMBER_SETTLED
            })
            .map(|(id, _)| id.as_str())
            .chain(std::iter::once(self.me.as_str()))
            .collect();
        members.sort_unstable();
        let owner = owner(&members, index, count)?;
        (owner != self.me).then(|| owner.to_owned())
    }
}

/// The owner of partition `index` of `count` among `members` (sorted, no
/// duplicates): partitions are taken in order, each by the member with the
/// highest rendezvous weight among those holding fewer than their share
/// (`count / members`, rounded up). Every member gets its share within
/// one, and a member joining or leaving moves few partitions besides its
/// own share.
fn owner<'a>(members: &[&'a str], index: u32, count: u32) -> Option<&'a str> {
    if members.is_empty() || index >= count {
        return None;
    }
    let share = count.div_ceil(u32::try_from(members.len()).unwrap_or(u32::MAX));
    let mut load = vec![0u32; members.len()];
    for p in 0..=index {
        let key = p.to_string();
        let (chosen, _) = members
            .iter()
            .enumerate()
            .filter(|(i, _)| load[*i] < share)
            .max_by_key(|(_, m)| rendezvous(m, &key))?;
        if p == index {
            return Some(members[chosen]);
        }
        load[chosen] += 1;
    }
    None
}

/// Rendezvous weight of an instance for a partition: stable across
/// processes (every instance must agree).
fn rendezvous(member: &str, partition: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for b in member.bytes().chain([b'/']).chain(partition.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for similar inputs: finish with a
    // multiply-xorshift.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transform_made_is_the_one_read() {
        let made = transform("events", 8);
        assert_eq!(made.source, "events.*.>");
        assert_eq!(
            made.destination,
            "events.{{partition(8,1)}}.{{wildcard(1)}}.>"
        );
        let read = Partitioning::of(Some(&made)).unwrap();
        assert_eq!(read.count(), 8);
        let spaced = jetstream::stream::SubjectTransform {
            source: "a.b.*.>".into(),
            destination: "a.b.{{ partition(3, 1) }}.{{ wildcard(1) }}.>".into(),
        };
        assert_eq!(Partitioning::of(Some(&spaced)).unwrap().count(), 3);
        for (source, destination) in [
            ("events.>", "events.{{partition(8,1)}}.{{wildcard(1)}}.>"),
            ("events.*.>", "events.{{partition(8,2)}}.{{wildcard(1)}}.>"),
            ("events.*.>", "events.{{partition(0,1)}}.{{wildcard(1)}}.>"),
            ("events.*.>", "other.{{partition(8,1)}}.{{wildcard(1)}}.>"),
            ("events.*.>", "events.{{wildcard(1)}}.>"),
        ] {
            let t = jetstream::stream::SubjectTransform {
                source: source.into(),
                destination: destination.into(),
            };
            assert_eq!(Partitioning::of(Some(&t)), None, "{destination}");
        }
        assert_eq!(Partitioning::of(None), None);
    }

    #[test]
    fn patterns_and_subjects_map_between_published_and_stored_forms() {
        let p = Partitioning::of(Some(&transform("events", 4))).unwrap();
        assert_eq!(
            p.stored_pattern("events.*.orders.placed", None),
            "events.*.*.orders.placed"
        );
        assert_eq!(
            p.stored_pattern("events.*.orders.placed", Some(3)),
            "events.3.*.orders.placed"
        );
        assert_eq!(p.stored_pattern("events.>", Some(0)), "events.0.>");
        assert_eq!(p.stored_pattern("other.x", Some(0)), "other.x");
        assert_eq!(p.stored_pattern("eventsx.y", None), "eventsx.y");
        assert_eq!(
            p.published_subject("events.3.o-1.orders.placed").as_deref(),
            Some("events.o-1.orders.placed")
        );
        assert_eq!(p.published_subject("events.x.o-1.orders.placed"), None);
        assert_eq!(p.published_subject("other.3.o-1"), None);
        assert_eq!(p.published_subject("events"), None);
    }

    #[test]
    fn owners_share_partitions_evenly_and_move_few_when_one_leaves() {
        let three = ["a", "b", "c"];
        for count in [1, 2, 3, 8, 16, 64] {
            let mut counts = HashMap::new();
            for p in 0..count {
                *counts.entry(owner(&three, p, count).unwrap()).or_insert(0) += 1;
            }
            let share = count.div_ceil(3);
            assert!(counts.values().all(|&n| n <= share), "{count}: {counts:?}");
            assert_eq!(counts.values().sum::<u32>(), count);
            if count >= 3 {
                assert_eq!(counts.len(), 3, "{count}: {counts:?}");
            }
        }
        // One leaves: its partitions move, and only a few of the others'.
        let moved = (0..64)
            .filter(|&p| {
                let before = owner(&three, p, 64).unwrap();
                before != "c" && before != owner(&["a", "b"], p, 64).unwrap()
            })
            .count();
        assert!(moved <= 8, "{moved} partitions of staying members moved");
        assert_eq!(owner(&[], 0, 8), None);
        assert_eq!(owner(&three, 8, 8), None);
    }

    #[test]
    fn outstanding_deliveries_are_counted_until_dropped() {
        let pin = Pin::default();
        let a = pin.track();
        let b = pin.track();
        assert_eq!(pin.outstanding(), 2);
        drop(a);
        assert_eq!(pin.outstanding(), 1);
        drop(b);
        assert_eq!(pin.outstanding(), 0);
        assert!(!pin.held());
        pin.set(Some("x".into()));
        assert!(pin.held());
        pin.drop_pin();
        assert_eq!(pin.id(), None);
    }
}
