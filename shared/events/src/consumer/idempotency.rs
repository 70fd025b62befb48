//! Idempotent consumption: handle each event id once per consumer.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::task::AbortHandle;
// Tokio's clock, so that tests can pause and advance it.
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
pub use crate::transport::idempotency::{Claim, ClaimToken, IdempotencyStore};

/// An in-process idempotency store with a TTL. Enough for one instance; use
/// a shared store when several instances form a consumer group.
///
/// Memory is bounded in time and in size:
/// - handled ids expire in the order they were completed (the TTL is fixed,
///   so that is the order they expire in): every call frees the ids that
///   have expired since the last one, and a background task (started by
///   the first claim, on the tokio runtime it runs on) does the same at
///   least once a second, so an idle store gives its memory back;
/// - at most [`max_entries`](Self::max_entries) ids are held. A claim of a
///   new id at the cap evicts the oldest handled id (counted in
///   [`evicted`](Self::evicted) and logged at `warn`): the TTL is cut short
///   for that id, and a duplicate of it arriving later is handled again.
///   Claims in progress are never evicted; when they alone fill the store a
///   claim fails with [`ErrorKind::Unavailable`] (the runtime nacks the
///   event and tries again after its backoff).
///
/// With the `metrics` feature the store keeps the gauge
/// `events_idempotency_entries` (the ids held by every memory store of the
/// process) and the counter `events_idempotency_evicted_total`.
pub struct MemoryIdempotencyStore {
    ttl: Duration,
    /// How long a claim may stay in progress before it is considered
    /// abandoned (its holder crashed or was cancelled).
    claim_timeout: Duration,
    max_entries: usize,
    state: Arc<Mutex<State>>,
    /// The background sweep, aborted when the store is dropped.
    sweeper: OnceLock<Option<AbortHandle>>,
}

/// The default [`MemoryIdempotencyStore::max_entries`].
const DEFAULT_MAX_ENTRIES: usize = 1_000_000;
/// The background sweep runs at least this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Evictions are logged at most this often (with a running count).
const EVICTION_WARN_EVERY: Duration = Duration::from_secs(10);

struct State {
    /// Ids being handled: few (one per handling in flight), so abandoned
    /// ones are found by a scan.
    claims: HashMap<Arc<str>, InProgress>,
    /// Handled ids and when each expires, in nanoseconds from `epoch` (half
    /// the size of an `Instant`, in the two places every id is stored).
    done: HashMap<Arc<str>, u64>,
    /// `done`'s keys in expiry order. An id completed again (after a
    /// takeover) leaves a stale element behind, recognised by its expiry
    /// no longer matching `done`'s.
    expiries: VecDeque<(u64, Arc<str>)>,
    epoch: Instant,
    /// The token of the next claim.
    generation: u64,
    /// `claims` is scanned for abandoned claims when it grows past this:
    /// doubling keeps the scans amortised O(1) per claim.
    scan_claims_at: usize,
    evicted: u64,
    last_eviction_warning: Option<Instant>,
}

#[derive(Clone, Copy)]
struct InProgress {
    since: Instant,
    token: ClaimToken,
}

impl MemoryIdempotencyStore {
    /// A store that remembers handled ids for `ttl`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use events::consumer::MemoryIdempotencyStore;
    ///
    /// let store = MemoryIdempotencyStore::new(Duration::from_secs(300));
    /// assert!(store.is_empty());
    /// ```
    pub fn new(ttl: Duration) -> Self {
        MemoryIdempotencyStore {
            ttl,
            claim_timeout: Duration::from_secs(5 * 60),
            max_entries: DEFAULT_MAX_ENTRIES,
            state: Arc::new(Mutex::new(State {
                claims: HashMap::new(),
                done: HashMap::new(),
                expiries: VecDeque::new(),
                epoch: Instant::now(),
                generation: 1,
                scan_claims_at: 1024,
                evicted: 0,
                last_eviction_warning: None,
            })),
            sweeper: OnceLock::new(),
        }
    }

    /// How long a claim may stay in progress before another delivery may
    /// take it over, its holder presumed crashed (default 5 minutes).
    ///
    /// ```
    /// use std::time::Duration;
    /// use events::consumer::MemoryIdempotencyStore;
    ///
    /// let store = MemoryIdempotencyStore::new(Duration::from_secs(300))
    ///     .claim_timeout(Duration::from_secs(60));
    /// # drop(store);
    /// ```
    pub fn claim_timeout(mut self, timeout: Duration) -> Self {
        self.claim_timeout = timeout;
        self
    }

    /// The most ids held at once, handled or in progress (default
    /// 1,000,000; at least 1). Each id costs about 110 bytes plus its key
    /// (measured: 1,000,000 keys of 44 bytes took 150 MiB). Size it to the
    /// rate of events times the TTL: past the cap, the oldest handled ids
    /// are forgotten before their TTL (see the type's docs).
    ///
    /// ```
    /// use std::time::Duration;
    /// use events::consumer::MemoryIdempotencyStore;
    ///
    /// // 1,000 events a second, remembered for 2 minutes.
    /// let store = MemoryIdempotencyStore::new(Duration::from_secs(120))
    ///     .max_entries(120_000);
    /// assert_eq!(store.get_max_entries(), 120_000);
    /// ```
    pub fn max_entries(mut self, entries: usize) -> Self {
        self.max_entries = entries.max(1);
        self
    }

    /// The most ids held at once.
    pub fn get_max_entries(&self) -> usize {
        self.max_entries
    }

    /// How many ids are held: handled ones not yet expired (or expired
    /// since the last call or sweep, at most a second ago), and claims.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.claims.len() + state.done.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many handled ids were forgotten before their TTL to stay under
    /// [`max_entries`](Self::max_entries).
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Starts the background sweep on the current runtime, once. Without a
    /// runtime, expired ids are still freed by every call.
    fn start_sweeper(&self) {
        self.sweeper.get_or_init(|| {
            let handle = tokio::runtime::Handle::try_current().ok()?;
            let state = Arc::downgrade(&self.state);
            let claim_timeout = self.claim_timeout;
            let every = (self.ttl / 4).clamp(Duration::from_millis(10), SWEEP_EVERY);
            let task = handle.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(state) = state.upgrade() else { return };
                    lock(&state).sweep(Instant::now(), claim_timeout);
                }
            });
            Some(task.abort_handle())
        });
    }

    fn claim_now(&self, key: &str) -> Result<Claim> {
        self.start_sweeper();
        let mut state = self.lock();
        // Read under the lock, so that expiries enter `expiries` in order.
        let now = Instant::now();
        state.expire(now);
        if state.done.contains_key(key) {
            return Ok(Claim::Done);
        }
        if let Some(since) = state.claims.get(key).map(|claim| claim.since) {
            if now.duration_since(since) < self.claim_timeout {
                return Ok(Claim::InProgress);
            }
            // Abandoned: its holder crashed or was cancelled.
            let token = state.next_token();
            if let Some(claim) = state.claims.get_mut(key) {
                *claim = InProgress { since: now, token };
            }
            return Ok(Claim::Acquired(token));
        }
        if state.claims.len() >= state.scan_claims_at {
            state.expire_claims(now, self.claim_timeout);
            state.scan_claims_at = (state.claims.len() * 2).max(1024);
        }
        if state.claims.len() + state.done.len() >= self.max_entries {
            state.make_room(now, self.max_entries - 1, self.claim_timeout)?;
        }
        let token = state.next_token();
        state
            .claims
            .insert(Arc::from(key), InProgress { since: now, token });
        State::added(1);
        Ok(Claim::Acquired(token))
    }

    fn complete_now(&self, key: &str, token: ClaimToken) {
        let mut state = self.lock();
        let now = Instant::now();
        state.expire(now);
        let claimed = match state.claims.get(key) {
            // Taken over by a later claim.
            Some(claim) if claim.token != token => return,
            Some(_) => state.claims.remove_entry(key).map(|(key, _)| key),
            None => None,
        };
        let key = match claimed {
            Some(key) => key,
            // Completed already.
            None if state.done.contains_key(key) => return,
            // The claim expired and was swept while its holder finished:
            // the id is handled all the same.
            None => {
                if state.claims.len() + state.done.len() >= self.max_entries {
                    // Claims in progress alone at the cap: remember this id
                    // anyway (one over, for as long as they last) rather
                    // than forget that it was handled.
                    let _ = state.make_room(now, self.max_entries - 1, self.claim_timeout);
                }
                State::added(1);
                Arc::from(key)
            }
        };
        let ttl = u64::try_from(self.ttl.as_nanos()).unwrap_or(u64::MAX);
        let expires = state.tick(now).saturating_add(ttl);
        state.done.insert(key.clone(), expires);
        state.expiries.push_back((expires, key));
    }

    fn release_now(&self, key: &str, token: ClaimToken) {
        let mut state = self.lock();
        if matches!(state.claims.get(key), Some(claim) if claim.token == token) {
            state.claims.remove(key);
            State::removed(1);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves the maps whole (every change
    // is one insert or remove): keep serving.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn next_token(&mut self) -> ClaimToken {
        let token = ClaimToken::new(self.generation);
        self.generation += 1;
        token
    }

    fn tick(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Frees the handled ids that have expired by `now`, oldest first.
    fn expire(&mut self, now: Instant) {
        let now = self.tick(now);
        let mut removed = 0;
        while let Some((expires, _)) = self.expiries.front() {
            if *expires > now {
                break;
            }
            if let Some((expires, key)) = self.expiries.pop_front() {
                if self.done.get(&key) == Some(&expires) {
                    self.done.remove(&key);
                    removed += 1;
                }
            }
        }
        Self::removed(removed);
    }

    /// Frees the claims whose holder has held them past the claim timeout.
    fn expire_claims(&mut self, now: Instant, claim_timeout: Duration) {
        let before = self.claims.len();
        self.claims
            .retain(|_, claim| now.duration_since(claim.since) < claim_timeout);
        Self::removed(before - self.claims.len());
    }

    /// Evicts the oldest handled ids until at most `keep` ids are held;
    /// fails if the claims in progress alone are more.
    fn make_room(&mut self, now: Instant, keep: usize, claim_timeout: Duration) -> Result<()> {
        let mut evicted = 0;
        while self.claims.len() + self.done.len() > keep {
            let Some((expires, key)) = self.expiries.pop_front() else {
                break;
            };
            if self.done.get(&key) == Some(&expires) {
                self.done.remove(&key);
                evicted += 1;
            }
        }
        if evicted > 0 {
            Self::removed(evicted);
            self.evicted += evicted as u64;
            #[cfg(feature = "metrics")]
            metrics::counter!("events_idempotency_evicted_total").increment(evicted as u64);
            let quiet = self
                .last_eviction_warning
                .is_some_and(|at| now.duration_since(at) < EVICTION_WARN_EVERY);
            if !quiet {
                self.last_eviction_warning = Some(now);
                tracing::warn!(
                    evicted = self.evicted,
                    max_entries = keep + 1,
                    "idempotency store full: the oldest handled event ids are forgotten before their TTL (a duplicate of one would be handled again); raise max_entries or lower the TTL"
                );
            }
        }
        if self.claims.len() + self.done.len() > keep {
            self.expire_claims(now, claim_timeout);
        }
        if self.claims.len() + self.done.len() > keep {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "idempotency store full: {} claims in progress reach max_entries {}",
                    self.claims.len(),
                    keep + 1
                ),
            ));
        }
        Ok(())
    }

    /// The background sweep: frees what has expired, then gives back the
    /// memory of a table that has shrunk to a quarter of its capacity.
    fn sweep(&mut self, now: Instant, claim_timeout: Duration) {
        self.expire(now);
        self.expire_claims(now, claim_timeout);
        if self.done.capacity() > 4 * self.done.len().max(256) {
            self.done.shrink_to(2 * self.done.len());
        }
        if self.expiries.capacity() > 4 * self.expiries.len().max(256) {
            self.expiries.shrink_to(2 * self.expiries.len());
        }
        if self.claims.capacity() > 4 * self.claims.len().max(256) {
            self.claims.shrink_to(2 * self.claims.len());
        }
    }

    fn added(_n: usize) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("events_idempotency_entries").increment(_n as f64);
    }

    fn removed(_n: usize) {
        #[cfg(feature = "metrics")]
        if _n > 0 {
            metrics::gauge!("events_idempotency_entries").decrement(_n as f64);
        }
    }
}

impl Drop for MemoryIdempotencyStore {
    fn drop(&mut self) {
        if let Some(Some(sweeper)) = self.sweeper.get() {
            sweeper.abort();
        }
        let state = self.lock();
        State::removed(state.claims.len() + state.done.len());
    }
}

impl fmt::Debug for MemoryIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryIdempotencyStore")
            .field("ttl", &self.ttl)
            .field("claim_timeout", &self.claim_timeout)
            .field("max_entries", &self.max_entries)
            .field("entries", &self.len())
            .finish()
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn claim(&self, key: &str) -> BoxFuture<'_, Result<Claim>> {
        let claim = self.claim_now(key);
        Box::pin(async move { claim })
    }

    fn complete(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, Result<()>> {
        self.complete_now(key, token);
        Box::pin(async { Ok(()) })
    }

    fn release(&self, key: &str, token: ClaimToken) -> BoxFuture<'_, Result<()>> {
        self.release_now(key, token);
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

    #[tokio::test(start_paused = true)]
    async fn an_id_is_acquired_once_then_done_until_the_ttl_expires() {
        let store = MemoryIdempotencyStore::new(Duration::from_millis(50));
        let token = acquire(&store, "c/1").await;
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::InProgress);
        store.complete("c/1", token).await.unwrap();
        assert_eq!(store.claim("c/1").await.unwrap(), Claim::Done);
        acquire(&store, "other/1").await; // keys are per consumer
        tokio::time::advance(Duration::from_millis(60)).await;
        acquire(&store, "c/1").await; // expired
    }

    #[tokio::test(start_paused = true)]
    async fn handled_ids_are_freed_after_the_ttl_without_further_activity() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60));
        for i in 0..2_000 {
            let key = format!("c/{i}");
            let token = acquire(&store, &key).await;
            store.complete(&key, token).await.unwrap();
        }
        assert_eq!(store.len(), 2_000);
        // No claim, no completion: only time passes.
        tokio::time::sleep(Duration::from_secs(61)).await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while !store.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} ids still held after the TTL", store.len()));
    }

    #[tokio::test(start_paused = true)]
    async fn under_steady_traffic_the_store_holds_about_one_ttl_of_ids() {
        let ttl = Duration::from_secs(60);
        let store = MemoryIdempotencyStore::new(ttl);
        let mut most = 0;
        // Ten ids a second for ten TTLs.
        for i in 0..6_000 {
            let key = format!("c/{i}");
            let token = acquire(&store, &key).await;
            store.complete(&key, token).await.unwrap();
            most = most.max(store.len());
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert!(most <= 601, "held {most} ids; one TTL is 600");
    }

    #[tokio::test]
    async fn a_released_claim_can_be_acquired_again() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60));
        let token = acquire(&store, "c/1").await;
        store.release("c/1", token).await.unwrap();
        acquire(&store, "c/1").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_holder_cannot_release_or_complete_a_claim_taken_over() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(60))
            .claim_timeout(Duration::from_millis(20));
        let late = acquire(&store, "c/1").await;
        tokio::time::advance(Duration::from_millis(30)).await;
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

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_oldest_handled_ids_are_evicted_and_counted() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(600)).max_entries(100);
        for i in 0..1_000 {
            let key = format!("c/{i}");
            let token = acquire(&store, &key).await;
            store.complete(&key, token).await.unwrap();
            assert!(store.len() <= 100, "{} ids held", store.len());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(store.evicted(), 900);
        assert_eq!(
            store.claim("c/999").await.unwrap(),
            Claim::Done,
            "the newest stay"
        );
        assert_eq!(store.claim("c/900").await.unwrap(), Claim::Done);
        acquire(&store, "c/0").await; // the oldest was forgotten
    }

    #[tokio::test(start_paused = true)]
    async fn claims_in_progress_are_never_evicted_and_a_full_store_refuses_new_ones() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(600))
            .claim_timeout(Duration::from_secs(60))
            .max_entries(3);
        let handled = acquire(&store, "c/handled").await;
        store.complete("c/handled", handled).await.unwrap();
        let mut held = Vec::new();
        for i in 0..3 {
            held.push(acquire(&store, &format!("c/{i}")).await);
        }
        assert_eq!(store.evicted(), 1, "the handled id made room");
        let err = store.claim("c/3").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        for i in 0..3 {
            assert_eq!(
                store.claim(&format!("c/{i}")).await.unwrap(),
                Claim::InProgress,
                "c/{i} still held"
            );
        }
        store.release("c/0", held[0]).await.unwrap();
        acquire(&store, "c/3").await;
        // Claims abandoned past the claim timeout make room too.
        tokio::time::advance(Duration::from_secs(61)).await;
        acquire(&store, "c/4").await;
        assert!(store.len() <= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_claims_are_freed_after_the_claim_timeout_without_further_activity() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(600))
            .claim_timeout(Duration::from_secs(30));
        for i in 0..100 {
            acquire(&store, &format!("c/{i}")).await;
        }
        tokio::time::sleep(Duration::from_secs(31)).await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while !store.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} claims still held", store.len()));
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn the_entries_gauge_follows_the_ids_held() {
        use std::sync::atomic::{AtomicU64, Ordering};

        use metrics::{
            Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder,
            SharedString, Unit,
        };

        #[derive(Default)]
        struct Values {
            entries: AtomicU64,
            evicted: AtomicU64,
        }
        struct Entries(Arc<Values>);
        impl GaugeFn for Entries {
            fn increment(&self, value: f64) {
                self.0.entries.fetch_add(value as u64, Ordering::Relaxed);
            }
            fn decrement(&self, value: f64) {
                self.0.entries.fetch_sub(value as u64, Ordering::Relaxed);
            }
            fn set(&self, value: f64) {
                self.0.entries.store(value as u64, Ordering::Relaxed);
            }
        }
        struct Evicted(Arc<Values>);
        impl CounterFn for Evicted {
            fn increment(&self, value: u64) {
                self.0.evicted.fetch_add(value, Ordering::Relaxed);
            }
            fn absolute(&self, value: u64) {
                self.0.evicted.store(value, Ordering::Relaxed);
            }
        }
        struct Recording(Arc<Values>);
        impl Recorder for Recording {
            fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
                match key.name() {
                    "events_idempotency_evicted_total" => {
                        Counter::from_arc(Arc::new(Evicted(self.0.clone())))
                    }
                    _ => Counter::noop(),
                }
            }
            fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
                match key.name() {
                    "events_idempotency_entries" => {
                        Gauge::from_arc(Arc::new(Entries(self.0.clone())))
                    }
                    _ => Gauge::noop(),
                }
            }
            fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
                Histogram::noop()
            }
        }

        let values = Arc::new(Values::default());
        let recorder = Recording(values.clone());
        let entries = || values.entries.load(Ordering::Relaxed);
        // The store's calls do their work before returning the future, so
        // the thread-local recorder sees all of it; no runtime is needed.
        let poll = |f: BoxFuture<'_, Result<()>>| {
            futures_util::FutureExt::now_or_never(f).unwrap().unwrap()
        };
        metrics::with_local_recorder(&recorder, || {
            let store = MemoryIdempotencyStore::new(Duration::from_secs(600)).max_entries(5);
            let mut tokens = Vec::new();
            for i in 0..4 {
                let claim = futures_util::FutureExt::now_or_never(store.claim(&format!("c/{i}")));
                match claim.unwrap().unwrap() {
                    Claim::Acquired(token) => tokens.push(token),
                    other => panic!("expected to acquire, got {other:?}"),
                }
            }
            assert_eq!(entries(), 4);
            poll(store.complete("c/0", tokens[0]));
            poll(store.complete("c/1", tokens[1]));
            assert_eq!(entries(), 4, "completing keeps the id");
            poll(store.release("c/2", tokens[2]));
            assert_eq!(entries(), 3);
            for i in 10..13 {
                let _ = futures_util::FutureExt::now_or_never(store.claim(&format!("c/{i}")));
            }
            assert_eq!(entries(), 5, "at the cap");
            assert_eq!(values.evicted.load(Ordering::Relaxed), 1);
            drop(store);
            assert_eq!(entries(), 0, "a dropped store holds nothing");
        });
    }
}
