//! The consumer runtime: register typed handlers and run them.
//!
//! A [`Consumer`] subscribes to the types it has handlers for and runs each
//! delivery through the same pipeline:
//!
//! ```text
//!  delivery ─► concurrency limit ─► per-key order (opt.) ─► idempotency claim (opt.)
//!           ─► decode + upcast ──(fails)──────────────────────────────► dead letter
//!           ─► user layers (opt., see [`Layer`]) ─► handler (per-attempt timeout opt.)
//!                 Ok            ─► ack
//!                 reject        ─► dead letter
//!                 retry         ─► attempts left? nack(delay) / in-process sleep : dead letter
//!  dead letter = publish copy to the dead-letter subject, then term; if the copy fails, nack
//! ```
//!
//! - **One retry budget.** Attempts are the broker's delivery count where the
//!   backend redelivers (memory, JetStream): a failed attempt is a
//!   `nack(delay)` and the broker's redelivery is the next attempt. Only on a
//!   backend without redelivery (core NATS) does the runtime sleep and retry
//!   in-process, counting attempts itself. Never both.
//! - **No ack before handled or safely dead-lettered.** A dead-letter copy is
//!   published (and confirmed, on JetStream) before the original is
//!   terminated; if it fails, the original is nacked.
//! - **Shutdown** stops pulling, lets in-flight handlers finish within the
//!   deadline, then cancels the rest and nacks them, and flushes the bus.

mod dead_letter;
mod handler;
mod idempotency;
mod layer;
mod retry;
mod runtime;
mod settings;

pub use dead_letter::{headers as dead_letter_headers, replay, DeadLetter, Reason, ReplayReport};
pub use handler::{Context, Handler, HandlerError};
pub use idempotency::{Claim, ClaimToken, IdempotencyStore, MemoryIdempotencyStore};
pub use layer::{HandlerFuture, Layer, Next};
pub use retry::RetryPolicy;
pub use runtime::{shutdown_signal, Consumer, NewerVersion, Running, Summary};
pub use settings::{ConsumerSettings, DEFAULT_ENV_PREFIX};

#[cfg(test)]
mod tests;
