//! The idempotency store interface: where a consumer remembers which event
//! ids it has handled. It sits beside [`Transport`](super::Transport) as a
//! second interface backends implement (the JetStream backend has a
//! key-value store), so that a backend never depends on the consumer
//! runtime that uses it; the runtime re-exports it as
//! `consumer::IdempotencyStore`.

use std::fmt;

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
