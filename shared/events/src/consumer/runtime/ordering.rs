//! The ordering layer: per-key order. An event waits for the previous event
//! of its key (in delivery order) before anything else is done with it,
//! and signals the next one once settled.

use std::future::Future;

use tokio::sync::watch;

use super::keep_alive::holding;
use super::Held;

/// Whether a key's last event is still in flight.
pub(super) fn busy(done: &watch::Receiver<bool>) -> bool {
    !*done.borrow() && done.has_changed().is_ok()
}

/// The receiver of the previous event of a key, and the sender this event
/// signals when done.
pub(super) type KeyOrder = (Option<watch::Receiver<bool>>, watch::Sender<bool>);

/// Runs `then` (the layers inside) on `delivery` after the previous event
/// of its key, if `order` says it has one, then signals the next one.
pub(super) async fn in_order<F: Future<Output = ()>>(
    delivery: Held,
    order: Option<KeyOrder>,
    then: impl FnOnce(Held) -> F,
) {
    let (previous, done) = match order {
        Some((previous, done)) => (previous, Some(done)),
        None => (None, None),
    };
    if let Some(mut previous) = previous {
        // Either the predecessor signals, or it is gone. The wait can be
        // long (the predecessor retrying): the delivery is held meanwhile.
        Box::pin(holding(&delivery, async move {
            let _ = previous.wait_for(|done| *done).await;
        }))
        .await;
    }
    then(delivery).await;
    if let Some(done) = done {
        let _ = done.send(true);
    }
}
