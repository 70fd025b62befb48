//! Idempotent consumption: handle each event id once per consumer.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::error::Result;

/// The answer to a claim on an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First time: handle it, then [`complete`](IdempotencyStore::complete).
    Acquired,
    /// Already handled within the TTL: acknowledge without handling.
    Done,
    /// Another delivery of the same id is being handled right now: come back
    /// later (the runtime nacks with a short delay).
    InProgress,
}

/// Where a consumer remembers which event ids it has handled.
///
/// Keys are `<consumer>/<event id>`, so consumers sharing a store do not see
/// each other's work. Entries expire after the store's TTL, which should be
/// at least the producers' dedup window (JetStream's default is 2 minutes).
pub trait IdempotencyStore: Send + Sync + fmt::Debug + 'static {
    /// Claims `key` for handling.
    fn claim(&self, key: &str) -> BoxFuture<'_, Result<Claim>>;
    /// Marks `key` handled.
    fn complete(&self, key: &str) -> BoxFuture<'_, Result<()>>;
    /// Gives up a claim (handling failed and will be retried).
    fn release(&self, key: &str) -> BoxFuture<'_, Result<()>>;
}

/// An in-process idempotency store with a TTL. Enough for one instance; use
/// a shared store when several instances form a consumer group.
pub struct MemoryIdempotencyStore {
    ttl: Duration,
    /// How long a claim may stay in progress before it is considered
    /// abandoned (its holder crashed or was cancelled).
    claim_timeout: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Clone, Copy)]
enum Entry {
    InProgress(Instant),
    Done(Instant),
}

impl MemoryIdempotencyStore {
    /// A store that remembers handled ids for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        MemoryIdempotencyStore {
            ttl,
            claim_timeout: Duration::from_secs(5 * 60),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How many ids are remembered (expired ones included until the next
    /// sweep).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claim_now(&self, key: &str) -> Claim {
        let now = Instant::now();
        let mut entries = self.lock();
        // Sweep expired entries once the map has grown, amortised.
        if entries.len() > 1024 && entries.len().is_power_of_two() {
            let (ttl, timeout) = (self.ttl, self.claim_timeout);
            entries.retain(|_, e| match *e {
                Entry::Done(at) => now.duration_since(at) < ttl,
                Entry::InProgress(at) => now.duration_since(at) < timeout,
            });
        }
        match entries.get(key).copied() {
            Some(Entry::Done(at)) if now.duration_since(at) < self.ttl => Claim::Done,
            Some(Entry::InProgress(at)) if now.duration_since(at) < self.claim_timeout => {
                Claim::InProgress
            }
            _ => {
                entries.insert(key.to_owned(), Entry::InProgress(now));
                Claim::Acquired
            }
        }
    }
}

impl fmt::Debug for MemoryIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryIdempotencyStore")
            .field("ttl", &self.ttl)
            .field("entries", &self.len())
            .finish()
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn claim(&self, key: &str) -> BoxFuture<'_, Result<Claim>> {
        let claim = self.claim_now(key);
        Box::pin(async move { Ok(claim) })
    }

    fn complete(&self, key: &str) -> BoxFuture<'_, Result<()>> {
        self.lock()
            .insert(key.to_owned(), Entry::Done(Instant::now()));
        Box::pin(async { Ok(()) })
    }

    fn release(&self, key: &str) -> BoxFuture<'_, Result<()>> {
        self.lock().remove(key);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_id_is_acquired_once_then_done_until_the_ttl_expires() {
        let store = MemoryIdempotencyStore::new(Duration::from_millis(50));
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::Acquired);
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::InProgress);
        store.complete("c/1").await.unwrap();
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::Done);
        assert_eq!(
            store.claim("other/1").await.unwrap(),
            Claim::Acquired,
            "keys are per consumer"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            store.claim("c/1").await.unwrap(),
            Claim::Acquired,
            "expired"
        );
    }

    #[tokio::test]
    async fn a_released_claim_can_be_acquired_again() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60));
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::Acquired);
        store.release("c/1").await.unwrap();
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::Acquired);
    }
}
