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
    /// First time: handle it, then [`complete`](IdempotencyStore::complete)
    /// or [`release`](IdempotencyStore::release) with this token.
    Acquired(ClaimToken),
    /// Already handled within the TTL: acknowledge without handling.
    Done,
    /// Another delivery of the same id is being handled right now: come back
    /// later (the runtime nacks with a short delay).
    InProgress,
}

/// Which claim a `complete` or `release` is about: a claim that timed out
/// and was taken over by another instance has a new token, so the first
/// holder, finishing late, cannot release or complete the new holder's
/// claim. Stores choose the value (a revision, a generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken(u64);

impl ClaimToken {
    /// A token with a store-chosen value.
    pub const fn new(value: u64) -> Self {
        ClaimToken(value)
    }
    /// The store-chosen value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Where a consumer remembers which event ids it has handled.
///
/// Keys are `<consumer>/<event id>`, so consumers sharing a store do not see
/// each other's work. Entries expire after the store's TTL, which should be
/// at least the producers' dedup window (JetStream's default is 2 minutes).
pub trait IdempotencyStore: Send + Sync + fmt::Debug + 'static {
    /// Claims `key` for handling.
    fn claim(&self, key: &str) -> BoxFuture<'_, Result<Claim>>;
    /// Marks `key` handled, if the claim `token` still holds it (a claim
    /// taken over meanwhile belongs to its new holder: then nothing changes).
    fn complete(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, Result<()>>;
    /// Gives up the claim `token` (handling failed and will be retried);
    /// nothing changes if it was taken over meanwhile.
    fn release(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, Result<()>>;
}

/// An in-process idempotency store with a TTL. Enough for one instance; use
/// a shared store when several instances form a consumer group.
pub struct MemoryIdempotencyStore {
    ttl: Duration,
    /// How long a claim may stay in progress before it is considered
    /// abandoned (its holder crashed or was cancelled).
    claim_timeout: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    /// The generation of the next claim (its token).
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Copy)]
enum Entry {
    InProgress(Instant, ClaimToken),
    Done(Instant),
}

impl MemoryIdempotencyStore {
    /// A store that remembers handled ids for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        MemoryIdempotencyStore {
            ttl,
            claim_timeout: Duration::from_secs(5 * 60),
            entries: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// How long a claim may stay in progress before another delivery may
    /// take it over, its holder presumed crashed (default 5 minutes).
    pub fn claim_timeout(mut self, timeout: Duration) -> Self {
        self.claim_timeout = timeout;
        self
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
                Entry::InProgress(at, _) => now.duration_since(at) < timeout,
            });
        }
        match entries.get(key).copied() {
            Some(Entry::Done(at)) if now.duration_since(at) < self.ttl => Claim::Done,
            Some(Entry::InProgress(at, _)) if now.duration_since(at) < self.claim_timeout => {
                Claim::InProgress
            }
            _ => {
                let token = ClaimToken(
                    self.generation
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                );
                entries.insert(key.to_owned(), Entry::InProgress(now, token));
                Claim::Acquired(token)
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

    fn complete(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, Result<()>> {
        let mut entries = self.lock();
        match entries.get(key) {
            // Taken over by a later claim, or completed already.
            Some(Entry::InProgress(_, holder)) if *holder != token => {}
            Some(Entry::Done(_)) => {}
            _ => {
                entries.insert(key.to_owned(), Entry::Done(Instant::now()));
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn release(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, Result<()>> {
        let mut entries = self.lock();
        if matches!(entries.get(key), Some(Entry::InProgress(_, holder)) if *holder == token) {
            entries.remove(key);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn acquire(store: &MemoryIdempotencyStore, key: &str) -> ClaimToken {
        match store.claim(key).await.unwrap() {
            Claim::Acquired(token) => token,
            other => panic!("{key}: expected to acquire, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_id_is_acquired_once_then_done_until_the_ttl_expires() {
        let store = MemoryIdempotencyStore::new(Duration::from_millis(50));
        let token = acquire(&store, "c/1").await;
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::InProgress);
        store.complete("c/1", token).await.unwrap();
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::Done);
        acquire(&store, "other/1").await; // keys are per consumer
        std::thread::sleep(Duration::from_millis(60));
        acquire(&store, "c/1").await; // expired
    }

    #[tokio::test]
    async fn a_released_claim_can_be_acquired_again() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60));
        let token = acquire(&store, "c/1").await;
        store.release("c/1", token).await.unwrap();
        acquire(&store, "c/1").await;
    }

    #[tokio::test]
    async fn a_late_holder_cannot_release_or_complete_a_claim_taken_over() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60))
            .claim_timeout(Duration::from_millis(20));
        let late = acquire(&store, "c/1").await;
        std::thread::sleep(Duration::from_millis(30));
        let current = acquire(&store, "c/1").await; // the first holder presumed dead
        assert_ne!(late, current);
        store.release("c/1", late).await.unwrap();
        assert_eq!(
            store.claim("c/1").await.unwrap(),
            Claim::InProgress,
            "still the new holder's"
        );
        store.complete("c/1", late).await.unwrap();
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::InProgress);
        store.complete("c/1", current).await.unwrap();
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::Done);
    }
}
