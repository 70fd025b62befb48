//! An idempotency store shared by every instance of a consumer group, on a
//! JetStream key-value bucket (works on nats-server 2.9).

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::kv;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::JetStreamTransport;
use crate::consumer::{Claim, ClaimToken, IdempotencyStore};
use crate::error::{Error, ErrorKind, Result};

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
/// - A `released` claim, or a `pending` one older than the claim timeout
///   (its holder crashed), is taken over with a compare-and-set on its
///   revision.
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
        })
    }

    /// How long a `pending` claim is honoured before another instance may
    /// take it over (default 5 minutes).
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

    async fn claim_now(&self, key: &str) -> Result<Claim> {
        let key = Self::key(key);
        match self.store.create(&key, Bytes::from_static(PENDING)).await {
            Ok(revision) => return Ok(Claim::Acquired(ClaimToken::new(revision))),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.backend("claim", e)),
        }
        let Some(entry) = self
            .store
            .entry(&key)
            .await
            .map_err(|e| self.backend("read", e))?
        else {
            // Expired between the two calls: try once more.
            return match self.store.create(&key, Bytes::from_static(PENDING)).await {
                Ok(revision) => Ok(Claim::Acquired(ClaimToken::new(revision))),
                Err(_) => Ok(Claim::InProgress),
            };
        };
        if entry.value.as_ref() == DONE {
            return Ok(Claim::Done);
        }
        let age = chrono::Utc::now().signed_duration_since(entry.created);
        if entry.value.as_ref() != RELEASED && age.to_std().unwrap_or_default() < self.claim_timeout
        {
            return Ok(Claim::InProgress);
        }
        // A released or abandoned claim: take it over unless someone else
        // just did.
        match self
            .store
            .update(&key, Bytes::from_static(PENDING), entry.revision)
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
