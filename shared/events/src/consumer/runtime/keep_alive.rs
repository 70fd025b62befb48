//! Holding a delivery: its ack wait kept from running out while it is
//! worked on.

use std::future::Future;
use std::time::Duration;

use crate::transport;

/// Runs `work` while telling the backend, every half of its ack wait, that
/// `delivery` is still being handled: a handler (or a wait) longer than the
/// ack wait is not handed to another instance meanwhile. Free on backends
/// that never redeliver a held delivery.
pub(in crate::consumer) async fn holding<F: Future>(
    delivery: &transport::Delivery,
    work: F,
) -> F::Output {
    let Some(ack_wait) = delivery.info().ack_wait else {
        return work.await;
    };
    let period = (ack_wait / 2).max(Duration::from_millis(10));
    let mut work = std::pin::pin!(work);
    // Work that finishes at once (most handlers of most events) needs no
    // timer.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(output) = first {
        return output;
    }
    // The first report is due half an ack wait after the wait last
    // restarted, which may be before the hand-over (an event kept alive
    // while it waited in a buffer). One too far away for an `Instant` never
    // comes: nothing to keep alive.
    let Some(mut due) = delivery
        .ack_wait_since()
        .unwrap_or_else(std::time::Instant::now)
        .checked_add(period)
    else {
        return work.await;
    };
    loop {
        tokio::select! {
            biased;
            output = &mut work => return output,
            // Boxed: a timer is large, and only backends with an ack wait
            // need one.
            _ = Box::pin(tokio::time::sleep_until(due.into())) => {
                if let Err(e) = delivery.in_progress().await {
                    tracing::debug!(error = %e, "could not extend the ack wait");
                }
                let Some(next) = std::time::Instant::now().checked_add(period) else {
                    return work.await;
                };
                due = next;
            }
        }
    }
}
