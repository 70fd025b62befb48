//! An idempotency store shared by every instance of a consumer group, on a
//! JetStream key-value bucket (works on nats-server 2.9).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::JetStreamTransport;
use crate::error::{Error, ErrorKind, Result};
use crate::transport::idempotency::{Claim, ClaimToken, IdempotencyStore};

const PENDING: &[u8] = b"pending";
const DONE: &[u8] = b"done";
/// A claim given up: free for the next delivery. (A value, not a delete,
/// so that releasing is a compare-and-set on the holder's revision.)
const RELEASED: &[u8] = b"released";

/// Remembers handled event ids in a JetStream key-value bucket, so that a
/// redelivered or republished event is handled once per consumer group, not
/// once per instance.
///
/// - `claim` creates the key (`pending`) only if it does not exist: of two
///   instances racing for one event, exactly one wins. The claim's token is
///   the key's revision.
/// - `complete` writes `done` and `release` writes `released`, both as a
///   compare-and-set on the claim's revision: a holder whose claim was taken
///   over changes nothing. Entries expire after the bucket's TTL.
/// - A `released` claim is taken over with a compare-and-set on its
///   revision. So is a `pending` one this instance has seen at the same
///   revision for the claim timeout (its holder crashed), timed by this
///   instance's monotonic clock from its first look: the entry's server
///   timestamp is never compared with the local clock, so clocks that
///   disagree (between instances, or with the servers) cannot make a live
///   claim look abandoned, nor an abandoned one look fresh.
///
/// ```no_run
/// # async fn f(transport: &events::backend::jetstream::JetStreamTransport) -> events::Result<()> {
/// use std::time::Duration;
/// use events::backend::jetstream::KvIdempotencyStore;
///
/// let store = KvIdempotencyStore::open(transport, "events_dedup", Duration::from_secs(600)).await?;
/// # Ok(()) }
/// ```
pub struct KvIdempotencyStore {
    store: kv::Store,
    bucket: String,
    ttl: Duration,
    claim_timeout: Duration,
    watched: Mutex<Watched>,
}

/// At most this many pending claims of other holders are watched at once;
/// past it the oldest watch is dropped, which only delays a takeover.
const MAX_WATCHED: usize = 100_000;

/// Pending claims of other holders, with the revision seen and when this
/// instance first saw it.
#[derive(Default)]
struct Watched {
    claims: HashMap<String, (u64, Instant)>,
    /// `claims`' keys in the order they were first seen; a key watched again
    /// (a new revision) leaves a stale element, recognised by its time.
    order: VecDeque<(Instant, String)>,
}

impl Watched {
    /// How long `key` has been seen at `revision`; starts watching it if it
    /// was not (or was at another revision).
    fn unchanged_for(
        &mut self,
        key: &str,
        revision: u64,
        now: Instant,
        forget_after: Duration,
    ) -> Duration {
        self.forget_older(now, forget_after);
        if let Some((seen, since)) = self.claims.get(key) {
            if *seen == revision {
                return now.duration_since(*since);
            }
        }
        self.claims.insert(key.to_owned(), (revision, now));
        self.order.push_back((now, key.to_owned()));
        Duration::ZERO
    }

    fn forget(&mut self, key: &str) {
        self.claims.remove(key);
    }

    /// Drops the watches started more than `forget_after` ago, and the
    /// oldest past `MAX_WATCHED`.
    fn forget_older(&mut self, now: Instant, forget_after: Duration) {
        while let Some((since, _)) = self.order.front() {
            let expired = now.duration_since(*since) >= forget_after;
            if !expired && self.claims.len() < MAX_WATCHED && self.order.len() < 2 * MAX_WATCHED {
                break;
            }
            if let Some((since, key)) = self.order.pop_front() {
                if matches!(self.claims.get(&key), Some((_, at)) if *at == since) {
                    self.claims.remove(&key);
                }
            }
        }
    }
}

impl KvIdempotencyStore {
    /// Opens the bucket `bucket`, creating it with `ttl` as its entries'
    /// maximum age, and the transport's stream's replica count, if it does
    /// not exist. The TTL should be at least the producers' dedup window
    /// (2 minutes by default); it is capped at about 292 years, the longest
    /// the server counts.
    pub async fn open(transport: &JetStreamTransport, bucket: &str, ttl: Duration) -> Result<Self> {
        let context = transport.context();
        if context.get_key_value(bucket).await.is_err() {
            // The stream a key-value bucket is made of, created directly:
            // async-nats's `create_key_value` first reads the account info,
            // whose 2.9 answer it cannot parse.
            let config = async_nats::jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("events: handled event ids per consumer".to_owned()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: super::config::server_duration(ttl),
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: async_nats::jetstream::stream::DiscardPolicy::New,
                // As replicated as the events it deduplicates: a bucket on
                // one node would lose the handled ids with that node.
                num_replicas: transport.stream_replicas(),
                ..Default::default()
            };
            context.create_stream(config).await.map_err(|e| {
                Error::new(
                    ErrorKind::Backend,
                    format!("creating key-value bucket `{bucket}` failed"),
                )
                .with_source(e)
            })?;
        }
        let store = context.get_key_value(bucket).await.map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                format!("opening key-value bucket `{bucket}` failed"),
            )
            .with_source(e)
        })?;
        Ok(KvIdempotencyStore {
            store,
            bucket: bucket.to_owned(),
            ttl,
            claim_timeout: Duration::from_secs(5 * 60),
            watched: Mutex::new(Watched::default()),
        })
    }

    /// How long a `pending` claim is honoured before another instance may
    /// take it over (default 5 minutes), counted from when that instance
    /// first sees it: a claim first seen late is taken over a full timeout
    /// later, whatever its server timestamp says.
    pub fn claim_timeout(mut self, timeout: Duration) -> Self {
        self.claim_timeout = timeout;
        self
    }

    /// Key-value keys allow `[-/_=.A-Za-z0-9]`; event ids from other
    /// producers may hold anything, so keys are base64url.
    fn key(key: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    }

    fn backend(&self, what: &str, e: impl Into<crate::BoxError>) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!("{what} in key-value bucket `{}` failed", self.bucket),
        )
        .with_source(e)
    }

    fn watched(&self) -> MutexGuard<'_, Watched> {
        // A panic while holding the lock leaves the map whole; at worst a
        // watch restarts, which only delays a takeover.
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long this instance has seen `key` pending at `revision`.
    fn pending_for(&self, key: &str, revision: u64) -> Duration {
        // A revision is gone from the server once the bucket's max age has
        // passed since it was written (which was before the first look), so
        // a watch that old can never match again; the claim timeout on top
        // keeps a watch until it has had the chance to ripen.
        let forget_after = self.ttl.saturating_add(self.claim_timeout);
        self.watched()
            .unchanged_for(key, revision, Instant::now(), forget_after)
    }

    async fn claim_now(&self, key: &str) -> Result<Claim> {
        let key = Self::key(key);
        let claim = self.claim_key(&key).await;
        // Resolved: nothing left to watch. (An error keeps the watch: the
        // claim may still be pending.)
        if matches!(claim, Ok(Claim::Acquired(_) | Claim::Done)) {
            self.watched().forget(&key);
        }
        claim
    }

    async fn claim_key(&self, key: &str) -> Result<Claim> {
        match self.store.create(key, Bytes::from_static(PENDING)).await {
            Ok(revision) => return Ok(Claim::Acquired(ClaimToken::new(revision))),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.backend("claim", e)),
        }
        let Some(entry) = self
            .store
            .entry(key)
            .await
            .map_err(|e| self.backend("read", e))?
        else {
            // Expired between the two calls: try once more.
            return match self.store.create(key, Bytes::from_static(PENDING)).await {
                Ok(revision) => Ok(Claim::Acquired(ClaimToken::new(revision))),
                Err(_) => Ok(Claim::InProgress),
            };
        };
        if entry.value.as_ref() == DONE {
            return Ok(Claim::Done);
        }
        if entry.value.as_ref() != RELEASED
            && self.pending_for(key, entry.revision) < self.claim_timeout
        {
            return Ok(Claim::InProgress);
        }
        // A released or abandoned claim: take it over unless someone else
        // just did.
        match self
            .store
            .update(key, Bytes::from_static(PENDING), entry.revision)
            .await
        {
            Ok(revision) => Ok(Claim::Acquired(ClaimToken::new(revision))),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Claim::InProgress),
            Err(e) => Err(self.backend("claim takeover", e)),
        }
    }
}

impl KvIdempotencyStore {
    /// Writes `value` over the claim `token`, only if it still holds the key.
    async fn settle(
        &self,
        key: &str,
        value: &'static [u8],
        token: ClaimToken,
        what: &str,
    ) -> Result<()> {
        match self
            .store
            .update(key, Bytes::from_static(value), token.get())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Taken over (or expired) meanwhile: it is not ours to change.
                tracing::warn!(
                    bucket = %self.bucket,
                    "{what}: the idempotency claim was taken over by another delivery after the claim timeout; left to it"
                );
                Ok(())
            }
            Err(e) => Err(self.backend(what, e)),
        }
    }
}

impl fmt::Debug for KvIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvIdempotencyStore")
            .field("bucket", &self.bucket)
            .field("ttl", &self.ttl)
            .field("claim_timeout", &self.claim_timeout)
            .finish()
    }
}

impl IdempotencyStore for KvIdempotencyStore {
    fn claim(&self, key: &str) -> BoxFuture<'_, Result<Claim>> {
        let key = key.to_owned();
        Box::pin(async move { self.claim_now(&key).await })
    }

    fn complete(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, Result<()>> {
        let key = Self::key(key);
        Box::pin(async move { self.settle(&key, DONE, token, "complete").await })
    }

    fn release(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, Result<()>> {
        let key = Self::key(key);
        Box::pin(async move { self.settle(&key, RELEASED, token, "release").await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    #[test]
    fn a_watch_counts_from_the_first_look_and_restarts_on_a_new_revision() {
        let mut watched = Watched::default();
        let t0 = Instant::now();
        let later = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(watched.unchanged_for("k", 7, t0, TTL), Duration::ZERO);
        assert_eq!(
            watched.unchanged_for("k", 7, later(1500), TTL),
            Duration::from_millis(1500)
        );
        assert_eq!(
            watched.unchanged_for("k", 8, later(1600), TTL),
            Duration::ZERO,
            "another revision is another claim"
        );
        assert_eq!(
            watched.unchanged_for("k", 8, later(1700), TTL),
            Duration::from_millis(100)
        );
        watched.forget("k");
        assert_eq!(
            watched.unchanged_for("k", 8, later(1800), TTL),
            Duration::ZERO
        );
    }

    #[test]
    fn watches_are_forgotten_after_the_bucket_ttl_and_capped() {
        let mut watched = Watched::default();
        let t0 = Instant::now();
        watched.unchanged_for("old", 1, t0, TTL);
        watched.unchanged_for("new", 1, t0 + TTL, TTL);
        assert!(!watched.claims.contains_key("old"));
        assert!(watched.claims.contains_key("new"));
        for i in 0..MAX_WATCHED + 10 {
            watched.unchanged_for(&i.to_string(), 1, t0 + TTL, TTL);
        }
        assert_eq!(watched.claims.len(), MAX_WATCHED);
        assert!(watched.order.len() <= 2 * MAX_WATCHED);
        assert!(!watched.claims.contains_key("0"), "the oldest go first");
    }
}
