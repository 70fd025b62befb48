//! Per-key order: an event waits for the previous event of its key.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::Instrument as _;

use super::keep_alive::holding;
use super::{Held, Shared};
use crate::wire::RawEvent;

/// Whether a key's last event is still in flight.
pub(super) fn busy(done: &watch::Receiver<bool>) -> bool {
    !*done.borrow() && done.has_changed().is_ok()
}

/// The receiver of the previous event of a key, and the sender this event
/// signals when done.
pub(super) type KeyOrder = (Option<watch::Receiver<bool>>, watch::Sender<bool>);

impl<S: Send + Sync + 'static> Shared<S> {
    /// The full path: handles one delivery, after the previous event of its
    /// key (if ordered), then signals the next one.
    ///
    /// The event and the delivery come boxed: this future is itself boxed
    /// and moved once per event, and every state it can be in is as large
    /// as its largest; the paths off the success path are boxed for the
    /// same reason.
    pub(super) async fn process(
        self: Arc<Self>,
        from: usize,
        raw: Box<RawEvent>,
        delivery: Held,
        order: Option<KeyOrder>,
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
        let span = self.span(&raw.metadata, &delivery);
        let ordered = done.is_some();
        self.handle(from, raw, delivery, ordered)
            .instrument(span)
            .await;
        if let Some(done) = done {
            let _ = done.send(true);
        }
    }
}
