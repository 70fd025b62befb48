//! What a transport can and cannot do, declared up front.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};

/// One capability a caller may require of a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Deliveries are settled explicitly; `nack` makes the broker deliver
    /// the message again.
    Redelivery,
    /// `nack` with a delay is honoured by the transport itself (the broker's
    /// timer, or the in-memory backend's), not by sleeping in the consumer.
    DelayedRedelivery,
    /// A subscription with a durable name resumes where it left off after it
    /// was closed and reopened.
    Durable,
    /// A new subscriber can receive events published before it subscribed.
    Persistent,
    /// Publishing the same dedup id twice within a window stores it once.
    PublishDedup,
    /// Messages of one publisher on one subject arrive in publish order:
    /// those published one after the other (each publish awaited before
    /// the next) and those of one batch (`publish_all`) that it reports
    /// `Ok`. A batch message the transport could not keep in order is
    /// reported as an error; concurrent publishes have no order.
    OrderedPerPublisher,
    /// Queue groups: each message goes to one member of a group.
    QueueGroups,
    /// Subscriptions with `*` and `>` wildcards.
    Wildcards,
    /// One subscription for several subject patterns
    /// ([`SubscribeOptions::also`](crate::transport::SubscribeOptions::also)),
    /// delivered as one stream in the order the broker received the
    /// messages: what keeps one key's events of several types in order.
    MultiPattern,
    /// All-or-nothing batches
    /// ([`Transport::publish_atomic`](crate::transport::Transport::publish_atomic)):
    /// every message of a batch is stored, or none is.
    AtomicPublish,
    /// One key's events reach one subscriber of a group at a time, and move
    /// to another with their order intact when it leaves: per-key order
    /// holds across the instances of a consumer (a stream partitioned by
    /// key, each partition pinned to one instance).
    OrderedAcrossInstances,
}

impl Capability {
    /// Every capability, for tests that check each declaration.
    pub const ALL: [Capability; 11] = [
        Capability::Redelivery,
        Capability::DelayedRedelivery,
        Capability::Durable,
        Capability::Persistent,
        Capability::PublishDedup,
        Capability::OrderedPerPublisher,
        Capability::QueueGroups,
        Capability::Wildcards,
        Capability::MultiPattern,
        Capability::AtomicPublish,
        Capability::OrderedAcrossInstances,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Capability::Redelivery => "redelivery on nack",
            Capability::DelayedRedelivery => "delayed redelivery",
            Capability::Durable => "durable subscriptions",
            Capability::Persistent => "persistent history",
            Capability::PublishDedup => "publish deduplication",
            Capability::OrderedPerPublisher => "ordering per publisher",
            Capability::QueueGroups => "queue groups",
            Capability::Wildcards => "wildcard subscriptions",
            Capability::MultiPattern => "subscriptions to several patterns",
            Capability::AtomicPublish => "atomic batch publish",
            Capability::OrderedAcrossInstances => "per-key order across instances",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The capabilities of one transport.
///
/// Construct with [`Capabilities::none`] and set the fields that apply: the
/// struct is `#[non_exhaustive]` so new capabilities can be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// See [`Capability::Redelivery`].
    pub redelivery: bool,
    /// See [`Capability::DelayedRedelivery`].
    pub delayed_redelivery: bool,
    /// See [`Capability::Durable`].
    pub durable: bool,
    /// See [`Capability::Persistent`].
    pub persistent: bool,
    /// See [`Capability::PublishDedup`].
    pub publish_dedup: bool,
    /// See [`Capability::OrderedPerPublisher`].
    pub ordered_per_publisher: bool,
    /// See [`Capability::QueueGroups`].
    pub queue_groups: bool,
    /// See [`Capability::Wildcards`].
    pub wildcards: bool,
    /// See [`Capability::MultiPattern`].
    pub multi_pattern: bool,
    /// See [`Capability::AtomicPublish`].
    pub atomic_publish: bool,
    /// See [`Capability::OrderedAcrossInstances`].
    pub ordered_across_instances: bool,
    /// The number of partitions the broker splits events into by key (0:
    /// not partitioned). Non-zero means subjects carry the key
    /// ([`Codec::with_keys_in_subjects`](crate::wire::Codec::with_keys_in_subjects)),
    /// and a consumer ordered by key subscribes to each partition.
    pub key_partitions: u32,
    /// The largest message (headers and body on the wire) accepted.
    pub max_message_size: usize,
}

impl Capabilities {
    /// Nothing at all, and a 1 MiB message limit.
    pub const fn none() -> Self {
        Capabilities {
            redelivery: false,
            delayed_redelivery: false,
            durable: false,
            persistent: false,
            publish_dedup: false,
            ordered_per_publisher: false,
            queue_groups: false,
            wildcards: false,
            multi_pattern: false,
            atomic_publish: false,
            ordered_across_instances: false,
            key_partitions: 0,
            max_message_size: 1024 * 1024,
        }
    }

    /// Whether `capability` is declared.
    pub fn supports(&self, capability: Capability) -> bool {
        match capability {
            Capability::Redelivery => self.redelivery,
            Capability::DelayedRedelivery => self.delayed_redelivery,
            Capability::Durable => self.durable,
            Capability::Persistent => self.persistent,
            Capability::PublishDedup => self.publish_dedup,
            Capability::OrderedPerPublisher => self.ordered_per_publisher,
            Capability::QueueGroups => self.queue_groups,
            Capability::Wildcards => self.wildcards,
            Capability::MultiPattern => self.multi_pattern,
            Capability::AtomicPublish => self.atomic_publish,
            Capability::OrderedAcrossInstances => self.ordered_across_instances,
        }
    }

    /// `Ok` if every capability in `required` is declared; otherwise an
    /// [`ErrorKind::Unsupported`] error naming the first one missing.
    pub fn require(&self, transport: &str, required: &[Capability]) -> Result<()> {
        match required.iter().find(|c| !self.supports(**c)) {
            None => Ok(()),
            Some(missing) => Err(Error::new(
                ErrorKind::Unsupported,
                format!("the {transport} transport does not offer {missing}"),
            )),
        }
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_names_the_missing_capability() {
        let mut caps = Capabilities::none();
        caps.redelivery = true;
        assert!(caps.require("x", &[Capability::Redelivery]).is_ok());
        let err = caps
            .require("memory", &[Capability::Redelivery, Capability::Durable])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert_eq!(
            err.to_string(),
            "unsupported by this backend: the memory transport does not offer durable subscriptions"
        );
    }

    #[test]
    fn supports_reads_the_matching_field() {
        for cap in Capability::ALL {
            assert!(!Capabilities::none().supports(cap));
        }
    }
}
