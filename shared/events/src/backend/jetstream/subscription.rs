//! A subscription's machinery: the puller task that pulls (pinned or
//! not, with catch-up and handover for partitions), the reader the
//! subscriber polls, the buffer keep-alive, and settling a delivery
//! through its reply subject.

use super::*;
/// The pull loop behind one subscription.
pub(super) struct Puller {
    /// Where deliveries go: what this subscription holds for its reader.
    pub(super) buffer: Arc<Buffer>,
    pub(super) consumer: PullConsumer,
    pub(super) inner: Arc<Inner>,
    pub(super) closing: watch::Receiver<bool>,
    /// Set when the reader stops the subscription.
    pub(super) stop: Arc<Stop>,
    /// Whether the consumer is this subscription's alone (deleted at the
    /// end).
    pub(super) ephemeral: bool,
    pub(super) batch_size: usize,
    pub(super) expires: Duration,
    pub(super) current: Option<Pull>,
    /// For a partition held by one instance at a time: its pin.
    pub(super) pinned: Option<Pinned>,
    pub(super) in_current: usize,
    pub(super) draining: bool,
    pub(super) failures: u32,
    /// The connection's state, to notice reconnects.
    pub(super) state: watch::Receiver<ConnectionState>,
    /// An error the current pull returned while what it had ready was
    /// taken (see `next_ready`), for `next` to handle.
    pub(super) deferred: Option<String>,
}

/// One pull request, read to its end.
pub(super) enum Pull {
    Plain(PlainPull),
    Pinned(partition::PinnedPull),
}

impl Pull {
    pub(super) async fn next(
        &mut self,
    ) -> Option<std::result::Result<async_nats::Message, String>> {
        match self {
            Pull::Plain(pull) => std::future::poll_fn(|cx| pull.poll_next(cx)).await,
            Pull::Pinned(pull) => pull.next().await,
        }
    }
}

/// One pull request of a consumer that is not pinned, read as async-nats
/// reads its own (`consumer::pull::Batch`, same request, same ends), but
/// yielding the client's messages as they are: a `jetstream::Message`
/// carries a copy of the JetStream context (reference counts and a
/// string), made and dropped for every message, which nothing here uses.
pub(super) struct PlainPull {
    subscriber: async_nats::Subscriber,
    remaining: usize,
    /// The expiry and a margin for the server's answer (none for a pull
    /// that does not wait).
    timeout: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

impl PlainPull {
    /// Asks for up to `batch` messages: waiting up to `expires` for them,
    /// or (`None`) only those already pending.
    pub(super) async fn start(
        client: &async_nats::Client,
        consumer: &PullConsumer,
        batch: usize,
        expires: Option<Duration>,
    ) -> std::result::Result<Self, String> {
        let inbox = async_nats::Subject::from(client.new_inbox());
        let subscriber = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| e.to_string())?;
        let request = jetstream::consumer::pull::BatchConfig {
            batch,
            expires,
            no_wait: expires.is_none(),
            ..Default::default()
        };
        consumer
            .request_batch(request, inbox)
            .await
            .map_err(|e| e.to_string())?;
        Ok(PlainPull {
            subscriber,
            remaining: batch,
            timeout: expires.map(|expires| {
                Box::pin(tokio::time::sleep(
                    expires.saturating_add(Duration::from_secs(5)),
                ))
            }),
            ended: false,
        })
    }

    /// The next message; `None` once the pull is complete, expired or
    /// answered that nothing is pending, and from then on.
    pub(super) fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<std::result::Result<async_nats::Message, String>>> {
        use async_nats::StatusCode;
        loop {
            if self.ended || self.remaining == 0 {
                self.ended = true;
                return Poll::Ready(None);
            }
            if let Some(timeout) = self.timeout.as_mut() {
                if timeout.as_mut().poll(cx).is_ready() {
                    // The server's answer to the expiry never came.
                    self.ended = true;
                    return Poll::Ready(None);
                }
            }
            let Some(message) = std::task::ready!(self.subscriber.poll_next_unpin(cx)) else {
                self.ended = true;
                return Poll::Ready(None);
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.remaining -= 1;
                    return Poll::Ready(Some(Ok(message)));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => {
                    self.ended = true;
                    return Poll::Ready(None);
                }
                Some(status) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(format!(
                        "error while processing messages from the stream: {status}, {:?}",
                        message.description
                    ))));
                }
            }
        }
    }
}

/// A subscription to one partition, held by one instance of its group at
/// a time (see the partition module).
pub(super) struct Pinned {
    /// This partition, of how many.
    pub(super) index: u32,
    pub(super) count: u32,
    pub(super) pin: Arc<partition::Pin>,
    pub(super) members: Arc<partition::Members>,
    /// Set while catching up after taking a pin (see `Puller::catch_up`).
    pub(super) catching_up: Option<CatchUp>,
    /// Caught up: handed out, in stream order, before anything newer.
    pub(super) ready: std::collections::VecDeque<async_nats::Message>,
    /// The consumer's `MSG.NEXT` subject.
    pub(super) subject: String,
    /// When to look at the group's instances again.
    pub(super) next_check: Instant,
}

/// How long a partition's holder waits for what it delivered to be
/// settled before handing the partition over (else it keeps it, and tries
/// again later).
pub(super) const HANDOVER_LIMIT: Duration = Duration::from_secs(30);
/// What a subscription that took a partition's pin holds back while the
/// previous holder's unsettled deliveries are still to be redelivered.
pub(super) struct CatchUp {
    /// By stream sequence.
    pub(super) held: std::collections::BTreeMap<u64, async_nats::Message>,
    /// When it stops waiting, whatever is left.
    pub(super) until: Instant,
    pub(super) next_progress: Instant,
    /// The consumer sequence of the first delivery after the pin was taken.
    pub(super) first: u64,
    /// The highest consumer sequence received.
    pub(super) seen: u64,
    /// Once asked: the previous holder's unsettled deliveries not yet
    /// redelivered, and the last consumer sequence delivered then.
    pub(super) theirs: Option<(u64, u64)>,
    /// Redeliveries received after that.
    pub(super) redelivered: u64,
}

/// How often an instance that does not own a partition looks again.
pub(super) const STANDBY_LOOK: Duration = Duration::from_millis(250);

/// Between a subscription's reader and its puller: the reader's request to
/// stop fetching, and who of the two releases what the reader leaves
/// unread.
#[derive(Default)]
pub(super) struct Stop {
    pub(super) requested: AtomicBool,
    pub(super) notify: tokio::sync::Notify,
    pub(super) handover: std::sync::Mutex<Handover>,
}

/// Which of the reader and the puller has ended: the one ending last
/// releases what the buffer still holds.
#[derive(Default)]
pub(super) struct Handover {
    pub(super) reader_gone: bool,
    pub(super) puller_done: bool,
}

impl Stop {
    pub(super) fn request(&self) {
        self.requested.store(true, Ordering::Release);
        // A permit, in case the puller is not waiting right now.
        self.notify.notify_one();
    }

    pub(super) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub(super) fn handover(&self) -> std::sync::MutexGuard<'_, Handover> {
        self.handover.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reader's side of a subscription: what the puller forwards, taken
/// from the buffer one at a time.
pub(super) struct Reader {
    pub(super) buffer: Arc<Buffer>,
    pub(super) stop: Arc<Stop>,
    pub(super) inner: Arc<Inner>,
}

impl futures_core::Stream for Reader {
    type Item = Result<Delivery>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        // Each item taken counts against the task's budget, as a receive
        // from a tokio channel does: a reader that settles what it takes
        // without waiting (acks go out through the client's channel) still
        // yields now and then, and the client's connection task writes its
        // acks in smaller runs (measured: fewer instructions per event).
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let buffer = &*self.buffer;
        let mut held = buffer.held();
        let Some(forwarded) = held.items.pop_front() else {
            if held.done {
                return Poll::Ready(None);
            }
            if !held
                .reader
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                held.reader = Some(cx.waker().clone());
            }
            return Poll::Pending;
        };
        held.last_taken = Some(Instant::now());
        // A puller waiting for room is woken at once: what its pull holds
        // meanwhile is not kept alive. Once: when it runs, it forwards as
        // much as there is room for by then.
        let wake = std::mem::take(&mut held.puller_waiting);
        drop(held);
        if wake {
            buffer.puller.notify_one();
        }
        coop.made_progress();
        let mut item = forwarded.item;
        if let Ok(delivery) = &mut item {
            // The reader's keep-alive counts from here.
            delivery.set_ack_wait_since(forwarded.since);
        }
        Poll::Ready(Some(item))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // What the puller forwarded and nobody will read is released (nacked
        // at once, in order) so another instance gets it now rather than
        // after the ack wait. By the puller, after it has dropped its pull:
        // a nack before that could be redelivered to that very pull. Until
        // then it stays in the buffer, kept alive.
        let mut handover = self.stop.handover();
        handover.reader_gone = true;
        self.buffer.held().reader_gone = true;
        // The puller stops waiting for room or for its pull.
        self.buffer.puller.notify_one();
        // Until it is done, `close` waits for it.
        self.inner.settling.fetch_add(1, Ordering::AcqRel);
        if handover.puller_done {
            let held = self.buffer.unread();
            drop(handover);
            let inner = self.inner.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        release(held).await;
                        inner.settled();
                    });
                }
                Err(_) => inner.settled(),
            }
        }
    }
}

/// Nacks `deliveries` without delay, in order.
pub(super) async fn release(deliveries: Vec<Delivery>) {
    for delivery in deliveries {
        if let Err(e) = delivery.release().await {
            tracing::debug!(error = %e, "releasing a buffered delivery failed; it comes back after the ack wait");
        }
    }
}

/// What a subscription's puller has forwarded and its reader not yet
/// taken, in order: the channel between the two, and what the keep-alive
/// looks at. The puller adds all its pull has ready at once (one lock, one
/// clock read, one wake for many messages); the reader takes one item at
/// a time.
pub(super) struct Buffer {
    pub(super) held: std::sync::Mutex<Held>,
    /// Wakes the puller: room in the buffer, or the reader gone.
    pub(super) puller: tokio::sync::Notify,
    /// The most items held at once: what the reader fetches ahead.
    pub(super) capacity: usize,
}

#[derive(Default)]
pub(super) struct Held {
    pub(super) items: std::collections::VecDeque<Forwarded>,
    /// When the reader last took an item (or was first given one).
    pub(super) last_taken: Option<Instant>,
    /// The reader, waiting for an item.
    pub(super) reader: Option<std::task::Waker>,
    /// The puller waits for room.
    pub(super) puller_waiting: bool,
    /// The puller forwards nothing more.
    pub(super) done: bool,
    /// The reader is dropped: it takes nothing more.
    pub(super) reader_gone: bool,
}

/// An item the puller forwarded: its reply subject (for keep-alives;
/// `None` for an error item) and when progress was last reported for it.
pub(super) struct Forwarded {
    pub(super) item: Result<Delivery>,
    pub(super) reply: Option<async_nats::Subject>,
    pub(super) since: Instant,
}

impl Buffer {
    /// Holds up to `capacity` items (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        Buffer {
            held: std::sync::Mutex::default(),
            puller: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
        }
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for room; how many items fit, or `None` once the reader is
    /// gone.
    pub(super) async fn room(&self) -> Option<usize> {
        loop {
            {
                let mut held = self.held();
                if held.reader_gone {
                    return None;
                }
                let room = self.capacity.saturating_sub(held.items.len());
                if room > 0 {
                    return Some(room);
                }
                held.puller_waiting = true;
            }
            // A wake after the flag was set is kept as a permit.
            self.puller.notified().await;
        }
    }

    /// Resolves once the reader is gone.
    pub(super) async fn reader_gone(&self) {
        while !self.held().reader_gone {
            self.puller.notified().await;
        }
    }

    /// The puller forwards `items` (emptied), in order, each with its
    /// reply subject. Held even when the reader is gone (so kept alive
    /// until released); false then.
    pub(super) fn put(
        &self,
        items: &mut Vec<(Result<Delivery>, Option<async_nats::Subject>)>,
    ) -> bool {
        let now = Instant::now();
        let mut held = self.held();
        held.items
            .extend(items.drain(..).map(|(item, reply)| Forwarded {
                reply: reply.filter(|_| item.is_ok()),
                item,
                since: now,
            }));
        // Until the reader takes something, its progress counts from the
        // first item it was given.
        held.last_taken.get_or_insert(now);
        let reader = held.reader.take();
        let gone = held.reader_gone;
        drop(held);
        if let Some(reader) = reader {
            reader.wake();
        }
        !gone
    }

    /// The puller forwards nothing more: the reader ends after what is
    /// held.
    pub(super) fn close(&self) {
        let reader = {
            let mut held = self.held();
            held.done = true;
            held.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// What the reader left unread, in order, taken out.
    pub(super) fn unread(&self) -> Vec<Delivery> {
        self.held()
            .items
            .drain(..)
            .filter_map(|forwarded| forwarded.item.ok())
            .collect()
    }
}

/// Reports progress (`+WPI`) for deliveries waiting in a subscription's
/// buffer longer than half the ack wait, until the subscription is gone.
pub(super) async fn keep_alive(
    weak: std::sync::Weak<Buffer>,
    client: async_nats::Client,
    ack_wait: Duration,
) {
    let period = (ack_wait / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let Some(buffer) = weak.upgrade() else {
            return;
        };
        let now = Instant::now();
        let due: Vec<async_nats::Subject> = {
            let mut held = buffer.held();
            // A reader that has taken nothing for this long is stuck, not
            // slow: let the server give its buffered events to other
            // instances.
            let stuck = held
                .last_taken
                .is_some_and(|taken| now.duration_since(taken) > ack_wait * 10);
            if stuck {
                Vec::new()
            } else {
                held.items
                    .iter_mut()
                    .filter(|held| now.duration_since(held.since) >= ack_wait / 2)
                    .filter_map(|held| {
                        held.since = now;
                        held.reply.clone()
                    })
                    .collect()
            }
        };
        drop(buffer);
        for reply in due {
            // Only for what still waits: a delivery the reader took since
            // (and perhaps nacked with a delay) must not get a progress
            // report, which would reset its redelivery to the ack wait. The
            // publishes before this one may have waited on a full client.
            let waiting = weak.upgrade().is_some_and(|buffer| {
                buffer
                    .held()
                    .items
                    .iter()
                    .any(|held| held.reply.as_ref() == Some(&reply))
            });
            if !waiting {
                continue;
            }
            if let Err(e) = client
                .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                .await
            {
                tracing::debug!(error = %e, "progress report for a buffered delivery failed");
            }
        }
    }
}

/// Resolves on the next change of the connection to connected (a
/// reconnect); never, once the connection is gone for good. For a publish:
/// what was written to the lost connection gets no ack, ever (the reply
/// would go to that connection).
pub(super) async fn reconnected(state: &mut watch::Receiver<ConnectionState>) {
    loop {
        if state.changed().await.is_err() {
            return std::future::pending().await;
        }
        if *state.borrow_and_update() == ConnectionState::Connected {
            return;
        }
    }
}

impl Drop for Puller {
    fn drop(&mut self) {
        // Also when the task is dropped before its end (a runtime shutting
        // down): the reader must not wait for more.
        self.buffer.close();
        self.inner.open_subscriptions.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Puller {
    /// Pulls and forwards until the subscription is dropped or stopped or,
    /// once the transport is closing, nothing is pending any more. Then
    /// releases what it still holds and, for an ephemeral consumer,
    /// deletes it.
    pub(super) async fn run(mut self) {
        let buffer = self.buffer.clone();
        let mut forwarded = Vec::new();
        loop {
            let Some(room) = buffer.room().await else {
                break;
            };
            let next = {
                let pulled = std::pin::pin!(self.next());
                let gone = std::pin::pin!(buffer.reader_gone());
                match futures_util::future::select(pulled, gone).await {
                    futures_util::future::Either::Left((next, _)) => next,
                    futures_util::future::Either::Right(_) => None,
                }
            };
            let Some(first) = next else {
                break;
            };
            forwarded.push(first);
            // What the pull has already received goes along, as far as
            // there is room: one lock and one wake of the reader for all.
            std::future::poll_fn(|cx| {
                while forwarded.len() < room {
                    match self.next_ready(cx) {
                        Some(next) => forwarded.push(next),
                        None => break,
                    }
                }
                Poll::Ready(())
            })
            .await;
            if !buffer.put(&mut forwarded) {
                // The reader is gone: these are released with what it
                // left.
                break;
            }
        }
        buffer.close();
        self.finish().await;
    }

    /// The end of a subscription: the pull is dropped (nothing more is
    /// delivered to it), then what the reader left unread and what the pull
    /// had already brought are nacked, in that order (stream order), and an
    /// ephemeral consumer is deleted.
    pub(super) async fn finish(mut self) {
        // The pull is read to its end first (see `next_held`): a nack sent
        // while it is open on the server could be redelivered to it.
        let mut late = Vec::new();
        self.caught_up();
        let ready: Vec<_> = self
            .pinned
            .as_mut()
            .map(|p| p.ready.drain(..).collect())
            .unwrap_or_default();
        for message in ready {
            if let (Ok(delivery), _) = self.delivery(message) {
                late.push(delivery);
            }
        }
        while let Some((item, _)) = self.next_held().await {
            if let Ok(delivery) = item {
                late.push(delivery);
            }
        }
        let (mut held, reader_gone) = {
            let mut handover = self.stop.handover();
            handover.puller_done = true;
            // A reader still there reads what is held, and releases what
            // it leaves when dropped.
            let held = if handover.reader_gone {
                self.buffer.unread()
            } else {
                Vec::new()
            };
            (held, handover.reader_gone)
        };
        held.append(&mut late);
        release(held).await;
        // A partition held here goes to the next instance as soon as what
        // this one delivered is settled, rather than after the pin timeout.
        if let Some(pin) = self.pinned.as_ref().map(|p| p.pin.clone()) {
            if pin.held() {
                let limit = self.inner.config.consumers.pin_timeout;
                self.settle_partition(&pin, limit).await;
            }
        }
        if reader_gone {
            self.inner.settled();
        }
        if self.ephemeral && !self.inner.closed.load(Ordering::Acquire) {
            let name = self.consumer.cached_info().name.clone();
            match tokio::time::timeout(API_TIMEOUT, self.inner.stream.delete_consumer(&name)).await
            {
                Ok(Ok(_)) => tracing::debug!(consumer = %name, "ephemeral consumer deleted"),
                Ok(Err(e)) => {
                    tracing::debug!(consumer = %name, error = %e, "could not delete an ephemeral consumer; the server removes it when inactive")
                }
                Err(_) => {
                    tracing::debug!(consumer = %name, "deleting an ephemeral consumer timed out; the server removes it when inactive")
                }
            }
        }
    }

    /// The next delivery, with its reply subject (for keep-alives); `None`
    /// when the subscription ends: stopped by its reader (after what the
    /// current pull already brought), or the transport closing and nothing
    /// pending any more.
    pub(super) async fn next(&mut self) -> Option<(Result<Delivery>, Option<async_nats::Subject>)> {
        loop {
            if let Some(message) = self.pinned.as_mut().and_then(|p| p.ready.pop_front()) {
                return Some(self.delivery(message));
            }
            if self.stop.is_requested() {
                if self
                    .pinned
                    .as_ref()
                    .is_some_and(|p| p.catching_up.is_some())
                {
                    self.caught_up();
                    continue;
                }
                return self.next_held().await;
            }
            if let Some(error) = self.deferred.take() {
                // As if the pull returned it now.
                if let Some(end) = self.pull_failed(error).await {
                    return end;
                }
                continue;
            }
            let batch = match self.current.as_mut() {
                Some(batch) => batch,
                None => {
                    let pull_size = self.batch_size;
                    if !self.draining && *self.closing.borrow() {
                        self.draining = true;
                    }
                    // While open, a pull waits on the server up to `expires`;
                    // once closing, pulls take only what is already pending.
                    if !self.draining && self.hand_over_if_owned_elsewhere().await {
                        continue;
                    }
                    if self.catching_up_full() {
                        // Held back enough: pull no more until caught up
                        // (what the server keeps has no ack wait running;
                        // what this one held would all be handed out at
                        // once).
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(50)) => {}
                            () = self.stop.notify.notified() => {}
                        }
                        self.catch_up(None).await;
                        continue;
                    }
                    if !self.draining && self.standing_by() {
                        // Another live instance owns this partition: no
                        // pull (one would compete for the pin whenever it
                        // moves), until the next look at the instances.
                        tokio::select! {
                            () = tokio::time::sleep(STANDBY_LOOK) => {}
                            () = self.stop.notify.notified() => {}
                        }
                        continue;
                    }
                    let pulled = if let Some(pinned) = &self.pinned {
                        // Draining or not, a pinned pull waits: async-nats
                        // has no non-waiting pull for it, and a short
                        // expiry bounds the wait.
                        let expires = if self.draining {
                            Duration::from_millis(200)
                        } else {
                            self.expires
                        };
                        partition::PinnedPull::start(
                            &self.inner.client,
                            pinned.subject.clone(),
                            pull_size,
                            expires,
                            pinned.pin.clone(),
                        )
                        .await
                        .map(Pull::Pinned)
                        .map_err(|e| e.to_string())
                    } else {
                        // Once closing, only what is already pending.
                        let expires = (!self.draining).then_some(self.expires);
                        PlainPull::start(&self.inner.client, &self.consumer, pull_size, expires)
                            .await
                            .map(Pull::Plain)
                    };
                    match pulled {
                        Ok(batch) => {
                            self.failures = 0;
                            self.in_current = 0;
                            self.current.insert(batch)
                        }
                        Err(e) => {
                            if let Some(end) = self.pull_failed(e).await {
                                return end;
                            }
                            continue;
                        }
                    }
                }
            };
            // What an unpinned pull has already received is taken at once,
            // without setting up the waits for a reconnect or a stop: a stop
            // is seen above, a reconnect once the pull has to wait.
            let ready = match batch {
                Pull::Plain(pull) if self.pinned.is_none() => {
                    std::future::poll_fn(|cx| Poll::Ready(pull.poll_next(cx))).await
                }
                _ => Poll::Pending,
            };
            let next = match ready {
                Poll::Ready(next) => next,
                Poll::Pending => tokio::select! {
                    next = batch.next() => next,
                    () = reconnected(&mut self.state) => {
                        // A pull request lives on the server that took it:
                        // after a reconnect (a restarted server forgot it)
                        // waiting for its expiry would stall the
                        // subscription. Pull again.
                        tracing::debug!(consumer = %self.consumer.cached_info().name, "reconnected; pulling again");
                        self.current = None;
                        continue;
                    }
                    () = self.stop.notify.notified() => continue,
                },
            };
            match next {
                Some(Ok(message)) if self.pinned.is_none() => {
                    self.in_current += 1;
                    return Some(self.delivery(message));
                }
                Some(Ok(message)) => {
                    self.in_current += 1;
                    if let Some(message) = self.catch_up(Some(message)).await {
                        return Some(self.delivery(message));
                    }
                }
                Some(Err(e)) => {
                    if let Some(end) = self.pull_failed(e).await {
                        return end;
                    }
                }
                None => {
                    self.current = None;
                    self.catch_up(None).await;
                    if self.draining && self.in_current == 0 {
                        // Nothing more pending: let the acks of what was
                        // delivered leave before the subscription ends.
                        let _ = core::flush(
                            &self.inner.client,
                            self.inner.config.connection.get_publish_timeout(),
                        )
                        .await;
                        return None;
                    }
                }
            }
        }
    }

    /// The next message an unpinned pull has already received, without
    /// waiting; `None` when there is none, or something else is next (the
    /// pull's end is seen by `next`, which polls again; an error is kept
    /// for it). Not while stopping (see `next`), nor for a pinned pull,
    /// whose messages may have to be held back for a catch-up.
    pub(super) fn next_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Option<(Result<Delivery>, Option<async_nats::Subject>)> {
        if self.pinned.is_some() || self.deferred.is_some() || self.stop.is_requested() {
            return None;
        }
        let Some(Pull::Plain(pull)) = self.current.as_mut() else {
            return None;
        };
        match pull.poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => {
                self.in_current += 1;
                Some(self.delivery(message))
            }
            Poll::Ready(Some(Err(e))) => {
                self.deferred = Some(e);
                None
            }
            // A pull that has ended stays ended: `next` sees it again.
            Poll::Ready(None) | Poll::Pending => None,
        }
    }

    /// Once stopped: the next message of the current pull, which is read
    /// to its end (filled, or expired on the server) rather than dropped: a
    /// pull dropped early stays open on the server until it expires, and
    /// takes messages meanwhile, including the ones released to other
    /// instances (seen on 2.10.26), which then wait out the ack wait.
    pub(super) async fn next_held(
        &mut self,
    ) -> Option<(Result<Delivery>, Option<async_nats::Subject>)> {
        let batch = self.current.as_mut()?;
        let limit = self.expires.saturating_add(PULL_END_MARGIN);
        match tokio::time::timeout(limit, batch.next()).await {
            Ok(Some(Ok(message))) => Some(self.delivery(message)),
            _ => {
                self.current = None;
                None
            }
        }
    }

    pub(super) fn delivery(
        &self,
        message: async_nats::Message,
    ) -> (Result<Delivery>, Option<async_nats::Subject>) {
        let ack_wait = self.consumer.cached_info().config.ack_wait;
        let reply = message.reply.clone();
        let outstanding = self.pinned.as_ref().map(|p| p.pin.track());
        (
            to_delivery(message, ack_wait, &self.inner, outstanding),
            reply,
        )
    }

    /// After taking a partition's pin: holds back what arrives while
    /// deliveries of the previous holder are unsettled (a holder that died
    /// with events in flight), until they have been redelivered here; then
    /// hands everything out in stream order, so a key's events keep their
    /// order whatever the server's timing. A handover leaves nothing
    /// unsettled, and costs one look. Returns the message if it need not
    /// wait.
    pub(super) async fn catch_up(
        &mut self,
        message: Option<async_nats::Message>,
    ) -> Option<async_nats::Message> {
        let Some(pinned) = self.pinned.as_mut() else {
            return message;
        };
        if pinned.catching_up.is_none() && message.is_some() && pinned.pin.take_acquired() {
            let first = message.as_ref().and_then(message_info);
            if let Some(first) = first {
                let now = Instant::now();
                let ack_wait = self.consumer.cached_info().config.ack_wait;
                pinned.catching_up = Some(CatchUp {
                    held: std::collections::BTreeMap::new(),
                    // The previous holder's deliveries come due within an
                    // ack wait; the server looks for them up to one more
                    // late.
                    until: now + ack_wait.saturating_mul(3),
                    next_progress: now + ack_wait / 3,
                    first: first.consumer_sequence,
                    seen: first.consumer_sequence,
                    theirs: None,
                    redelivered: 0,
                });
            }
        }
        let Some(catch_up) = pinned.catching_up.as_mut() else {
            return message;
        };
        if let Some(message) = message {
            match message_info(&message) {
                Some(info) => {
                    // A redelivery has a consumer sequence of its own: one
                    // past the count asked for is one of theirs.
                    let after = catch_up
                        .theirs
                        .is_some_and(|(_, last)| info.consumer_sequence > last);
                    if info.delivered > 1 && after {
                        catch_up.redelivered += 1;
                    }
                    catch_up.seen = catch_up.seen.max(info.consumer_sequence);
                    let sequence = info.stream_sequence;
                    catch_up.held.insert(sequence, message);
                }
                None => return Some(message),
            }
        }
        let now = Instant::now();
        if catch_up.theirs.is_none() {
            // Unsettled deliveries, less this holder's (every delivery
            // from the first one after the pin: consumer sequences count
            // deliveries, redeliveries included): the previous holder's not
            // yet redelivered, which come back as redeliveries.
            if let Ok(info) = self.consumer.info().await {
                let pending = u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
                let last = info.delivered.consumer_sequence;
                let mine = last.saturating_sub(catch_up.first).saturating_add(1);
                catch_up.theirs = Some((pending.saturating_sub(mine), last));
            }
        }
        if now >= catch_up.next_progress {
            // Held back, not forgotten: their ack wait starts again.
            catch_up.next_progress = now + self.consumer.cached_info().config.ack_wait / 3;
            for reply in catch_up.held.values().filter_map(|held| held.reply.clone()) {
                let _ = self
                    .inner
                    .client
                    .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                    .await;
            }
        }
        let expired = now >= catch_up.until;
        // Done once everything delivered before the count was asked for
        // has arrived here (a redelivery sent just after a newer event is
        // among it), and the previous holder's events not yet redelivered
        // then have arrived since.
        let done = catch_up
            .theirs
            .is_some_and(|(theirs, last)| catch_up.seen >= last && catch_up.redelivered >= theirs);
        if !done && !expired {
            return None;
        }
        if !done {
            tracing::warn!(
                consumer = %self.consumer.cached_info().name,
                "a previous holder's deliveries were not all redelivered in time; going on without them"
            );
        }
        self.caught_up();
        None
    }

    /// Whether a catch-up holds a pull's worth already.
    pub(super) fn catching_up_full(&self) -> bool {
        self.pinned.as_ref().is_some_and(|p| {
            p.catching_up
                .as_ref()
                .is_some_and(|c| c.held.len() >= self.batch_size)
        })
    }

    /// Ends a catch-up: what it held is handed out, in stream order.
    pub(super) fn caught_up(&mut self) {
        if let Some(pinned) = self.pinned.as_mut() {
            if let Some(catch_up) = pinned.catching_up.take() {
                pinned.ready.extend(catch_up.held.into_values());
            }
        }
    }

    /// Whether this subscription's partition is owned by another live
    /// instance and not held here.
    pub(super) fn standing_by(&self) -> bool {
        self.pinned.as_ref().is_some_and(|pinned| {
            !pinned.pin.held()
                && pinned
                    .members
                    .other_owner(pinned.index, pinned.count)
                    .is_some()
        })
    }

    /// For a partition held here that another live instance owns: hands
    /// it over (see the partition module) and returns true. Called between
    /// pulls, so the last pull was read to its end.
    pub(super) async fn hand_over_if_owned_elsewhere(&mut self) -> bool {
        let name = self.consumer.cached_info().name.clone();
        let Some(pinned) = self.pinned.as_mut() else {
            return false;
        };
        if !pinned.pin.held()
            || Instant::now() < pinned.next_check
            || pinned.catching_up.is_some()
            || !pinned.ready.is_empty()
        {
            return false;
        }
        pinned.next_check = Instant::now() + Duration::from_secs(1);
        let Some(owner) = pinned.members.other_owner(pinned.index, pinned.count) else {
            return false;
        };
        let pin = pinned.pin.clone();
        let settled = self.settle_partition(&pin, HANDOVER_LIMIT).await;
        let Some(pinned) = self.pinned.as_mut() else {
            return false;
        };
        if !settled {
            tracing::info!(consumer = %name, %owner, "partition not handed over: deliveries still unsettled; trying again later");
            pinned.next_check = Instant::now() + Duration::from_secs(5);
            return false;
        }
        tracing::info!(consumer = %name, %owner, "partition handed over to its owner");
        true
    }

    /// Waits (up to `limit`) until every delivery of this partition is
    /// settled and the settlements have reached the server, then gives the
    /// pin up. False if deliveries remained unsettled (the pin is kept).
    pub(super) async fn settle_partition(
        &mut self,
        pin: &Arc<partition::Pin>,
        limit: Duration,
    ) -> bool {
        let until = Instant::now() + limit;
        while pin.outstanding() > 0 {
            if Instant::now() >= until || self.inner.closed.load(Ordering::Acquire) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.inner.confirm_acks(API_TIMEOUT).await.is_err() {
            return false;
        }
        let name = self.consumer.cached_info().name.clone();
        match tokio::time::timeout(
            API_TIMEOUT,
            self.inner.stream.unpin_consumer(&name, partition::GROUP),
        )
        .await
        {
            Ok(Ok(())) => {
                pin.drop_pin();
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(consumer = %name, error = %e, "unpinning a partition failed; its pin times out instead");
                false
            }
            Err(_) => false,
        }
    }

    /// After a failed pull: the error ending the subscription if the
    /// client's connection task is gone (waiting cannot heal that).
    pub(super) async fn lost(&mut self) -> Option<Error> {
        if self.inner.closed.load(Ordering::Acquire)
            || !core::connection_task_gone(&self.inner.client).await
        {
            return None;
        }
        self.inner.tracker.set_lost();
        // The next pull fails at once and ends the subscription.
        self.draining = true;
        Some(Error::closed(core::LOST))
    }

    /// The current pull failed with `error`: `Some` with what `next`
    /// returns (the end, once draining; the consumer's loss, if it is
    /// gone), else `None` after a pause, to pull again.
    async fn pull_failed(
        &mut self,
        error: String,
    ) -> Option<Option<(Result<Delivery>, Option<async_nats::Subject>)>> {
        self.current = None;
        if self.draining {
            return Some(None);
        }
        if let Some(lost) = self.lost().await {
            return Some(Some((Err(lost), None)));
        }
        self.pause_after_failure(error).await;
        None
    }

    /// A failed pull (server restarting, consumer leader moving): log it and
    /// try again after a growing pause. The subscription keeps going, as a
    /// core subscription does across reconnects.
    pub(super) async fn pause_after_failure(&mut self, error: String) {
        self.failures = self.failures.saturating_add(1);
        let pause = (Duration::from_millis(100) * self.failures).min(Duration::from_secs(2));
        tracing::warn!(consumer = %self.consumer.cached_info().name, %error, ?pause, "jetstream pull failed; retrying");
        tokio::time::sleep(pause).await;
    }
}

pub(super) fn to_delivery(
    message: async_nats::Message,
    ack_wait: Duration,
    inner: &Arc<Inner>,
    outstanding: Option<partition::Outstanding>,
) -> Result<Delivery> {
    let Some((reply, info)) = message
        .reply
        .and_then(|reply| ack_info(reply.as_str()).map(|info| (reply, info)))
    else {
        return Err(Error::decode(
            "a jetstream message without a valid reply subject",
        ));
    };
    let delivery_info = DeliveryInfo {
        attempt: u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1),
        stream_sequence: Some(info.stream_sequence),
        consumer_sequence: Some(info.consumer_sequence),
        ack_wait: Some(ack_wait),
    };
    let (headers, dedup_id) = core::received_headers(message.headers, Some(MSG_ID))?;
    let subject = match inner
        .partitioning
        .as_ref()
        .and_then(|partitioning| partitioning.published_subject(message.subject.as_str()))
    {
        Some(published) => Subject::received(published),
        None => Subject::received_nats(message.subject),
    };
    let message = Message {
        subject,
        headers,
        payload: message.payload,
        dedup_id,
    };
    let backend: Arc<dyn ReplySettle> = inner.clone();
    let guard = outstanding.map(|o| Box::new(o) as Box<dyn std::any::Any + Send + Sync>);
    Ok(Delivery::settled_by_reply(
        message,
        delivery_info,
        ReplyAcker::new(reply, backend, guard),
    ))
}

/// What a pulled message's reply subject tells; `None` without one, or
/// with one that is not an ack subject.
pub(super) fn message_info(message: &async_nats::Message) -> Option<AckInfo> {
    ack_info(message.reply.as_ref()?.as_str())
}

/// What a JetStream delivery's reply subject tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AckInfo {
    pub(super) delivered: u64,
    pub(super) stream_sequence: u64,
    pub(super) consumer_sequence: u64,
}

/// Reads a JetStream ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.
/// <stream seq>.<consumer seq>.<timestamp>.<pending>`, or the form with a
/// domain and account hash before the stream and any tokens after the
/// pending count (ADR-15). `None` when it is neither, or a number does not
/// parse (the timestamp as `i64` nanoseconds).
pub(super) fn ack_info(reply: &str) -> Option<AckInfo> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    // The first nine tokens (more are ignored), found in one pass over the
    // bytes: `split` looks for each dot on its own, which costs some
    // hundreds of instructions per delivery. A dot is ASCII, so every
    // bound is a char boundary.
    let mut bounds = [(0, 0); 9];
    let mut count = 0;
    let mut start = 0;
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let bytes = rest.as_bytes();
    let mut i = 0;
    'scan: while i < bytes.len() {
        // Eight bytes without a dot are passed over at once: the stream and
        // consumer names and the timestamp are long tokens. (The test tells
        // exactly whether some byte of the word is a dot.)
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            let x = u64::from_le_bytes(word) ^ (ONES * u64::from(b'.'));
            if x.wrapping_sub(ONES) & !x & HIGHS == 0 {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            if bytes[i] == b'.' {
                bounds[count] = (start, i);
                count += 1;
                start = i + 1;
                if count == bounds.len() {
                    break 'scan;
                }
            }
            i += 1;
        }
    }
    if count < bounds.len() {
        bounds[count] = (start, rest.len());
        count += 1;
    }
    let numbers = match count {
        7 => &bounds[2..7],
        9 => &bounds[4..9],
        _ => return None,
    };
    let token = |(start, end): (usize, usize)| rest.get(start..end);
    let delivered = ack_number(token(numbers[0])?)?;
    let stream_sequence = ack_number(token(numbers[1])?)?;
    let consumer_sequence = ack_number(token(numbers[2])?)?;
    let timestamp = token(numbers[3])?;
    // Up to 18 digits always fit an i64; 19 do up to its maximum (strings
    // of one length compare as numbers).
    let plain = !timestamp.is_empty()
        && timestamp.bytes().all(|b| b.is_ascii_digit())
        && (timestamp.len() <= 18 || (timestamp.len() == 19 && timestamp <= "9223372036854775807"));
    if !plain {
        timestamp.parse::<i64>().ok()?;
    }
    ack_number(token(numbers[4])?)?;
    Some(AckInfo {
        delivered,
        stream_sequence,
        consumer_sequence,
    })
}

/// A count or sequence of an ack subject, as `u64::from_str` reads it; the
/// common form (up to 19 digits, which cannot overflow) without its
/// per-digit overflow checks.
pub(super) fn ack_number(token: &str) -> Option<u64> {
    let digits = token.as_bytes();
    if !digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit) {
        return Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')));
    }
    token.parse().ok()
}

/// JetStream settles a delivery by a publish to its reply subject.
impl ReplySettle for Inner {
    fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn limit(&self) -> Duration {
        self.config.connection.get_publish_timeout()
    }

    fn poll_send(
        &self,
        mut send: SendSettlement<'_>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<std::result::Result<(), async_nats::PublishError>>> {
        self.tracker.poll_send(std::pin::Pin::new(&mut send), cx)
    }

    fn sent(&self) {
        self.acks_sent.fetch_add(1, Ordering::Relaxed);
    }

    fn nak_delay(&self, delay: Duration) -> Duration {
        // A delay beyond the server's i64 nanoseconds would reach it as a
        // number it cannot read, and it would redeliver at once.
        config::server_duration(delay)
    }
}
