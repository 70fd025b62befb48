//! Publishing: one message or a pipelined window, with dedup ids, size
//! checks, resends after a connection loss and out-of-order detection.

use super::*;

/// A message's headers as sent: with its dedup id, size checked.
pub(super) struct Prepared {
    pub(super) headers: Option<async_nats::HeaderMap>,
    pub(super) dedup: bool,
}

/// Where one message of a batch window stands.
pub(super) enum Slot {
    /// Not stored yet: to send (again).
    Waiting {
        dedup: bool,
        /// Sent in this round, ack not in yet.
        in_flight: bool,
        sends: u32,
        /// Why the last send did not store it.
        last: Option<Error>,
    },
    /// Acknowledged.
    Stored {
        stream: String,
        sequence: u64,
        /// By a resend, not the first send.
        resent: bool,
    },
    Failed(Error),
}

/// How a wait for acks ended early.
#[derive(Clone, Copy)]
pub(super) enum Interrupted {
    /// `ack_timeout` (or the deadline) passed.
    Late,
    /// The connection was lost and is back: acks of what was written on
    /// the lost one never come.
    Lost,
}

impl Inner {
    /// Checks the message's dedup id and that the message fits the server's
    /// payload limit with the headers it is sent with; whether it carries a
    /// dedup id.
    pub(super) fn check(&self, message: &Message) -> Result<bool> {
        let limit = self.client.max_payload();
        let size = sent_headers_len(message, self.ttl_secs())? + message.payload.len();
        if size > limit {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message on `{}` is {size} bytes with headers; the server accepts at most {limit}",
                    message.subject
                ),
            ));
        }
        Ok(message.dedup_id.is_some())
    }

    /// The `Nats-TTL` every message carries, in whole seconds, if one is
    /// configured.
    pub(super) fn ttl_secs(&self) -> Option<u64> {
        self.config.message_ttl.map(|ttl| ttl.as_secs().max(1))
    }

    /// The headers a message is sent with (see [`sent_headers`]).
    pub(super) fn headers(&self, message: &Message) -> Result<Option<async_nats::HeaderMap>> {
        sent_headers(message, self.ttl_secs())
    }

    /// The message checked and its headers built, ready for its first send.
    pub(super) fn prepare(&self, message: &Message) -> Result<Prepared> {
        let dedup = self.check(message)?;
        Ok(Prepared {
            headers: self.headers(message)?,
            dedup,
        })
    }

    /// Waits (until `deadline`) for the connection when it is down.
    pub(super) async fn connected(&self, subject: &Subject, deadline: &Deadline) -> Result<()> {
        if self.tracker.state() == ConnectionState::Connected {
            return Ok(());
        }
        match core::wait_connected(&self.tracker, subject, deadline).await {
            Err(e) if e.kind() != ErrorKind::Closed => {
                let (kind, why) = core::unreachable(&self.tracker);
                Err(Error::new(kind, why))
            }
            done => done,
        }
    }

    /// Sends once: waits for the connection, hands the message to the
    /// client and returns the future of its ack, all before `deadline`. A
    /// send that cannot complete at once (a full client queue, no free ack
    /// permit) also gives up when the connection watchdog declares the
    /// server unreachable; one that completes at once arms no timer.
    pub(super) async fn send(
        &self,
        message: &Message,
        headers: Option<async_nats::HeaderMap>,
        deadline: &Deadline,
    ) -> Result<jetstream::context::PublishAckFuture> {
        self.connected(&message.subject, deadline).await?;
        let mut publish =
            jetstream::message::PublishMessage::build().payload(message.payload.clone());
        if let Some(headers) = headers {
            publish = publish.headers(headers);
        }
        let send = self
            .context
            .send_publish(core::nats_subject(&message.subject), publish);
        match self.tracker.send_until(send, deadline).await {
            Some(Ok(ack)) => Ok(ack),
            Some(Err(e)) => {
                if !self.closed.load(Ordering::Acquire)
                    && core::connection_task_gone(&self.client).await
                {
                    self.tracker.set_lost();
                    return Err(Error::closed(core::LOST).with_source(e));
                }
                Err(publish_error(&message.subject, e))
            }
            None => {
                let (kind, why) = core::unreachable(&self.tracker);
                Err(Error::new(kind, why))
            }
        }
    }

    /// Publishes one message: sends it, waits for its ack and sends it again
    /// when none comes, all within one deadline (`publish_timeout` from the
    /// call).
    pub(super) async fn publish_one(&self, message: &Message, prepared: Prepared) -> Result<()> {
        let deadline = Deadline::after(self.config.connection.get_publish_timeout());
        let Prepared { headers, dedup } = prepared;
        let mut headers = Some(headers);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let headers = match headers.take() {
                Some(headers) => headers,
                None => self.headers(message)?,
            };
            let outcome = async {
                self.connected(&message.subject, &deadline).await?;
                // From here on, a reconnect means the send may have gone out
                // on the lost connection.
                let mut state = self.tracker.watch();
                let ack = self.send(message, headers, &deadline).await?;
                let mut ack = std::pin::pin!(ack.into_future());
                let mut lost = std::pin::pin!(super::subscription::reconnected(&mut state));
                let mut late =
                    std::pin::pin!(core::sleep_until(deadline.within(self.config.ack_timeout)));
                let waited = Instant::now();
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(acked) = ack.as_mut().poll(cx) {
                        return Poll::Ready(acked.map_err(|e| publish_error(&message.subject, e)));
                    }
                    if lost.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(no_ack(
                            &message.subject,
                            Interrupted::Lost,
                            waited,
                        )));
                    }
                    if late.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(no_ack(
                            &message.subject,
                            Interrupted::Late,
                            waited,
                        )));
                    }
                    Poll::Pending
                })
                .await
            }
            .await;
            match outcome {
                Ok(_) => return Ok(()),
                Err(e) => {
                    if !self.may_resend(&e, dedup, attempt, &deadline).await {
                        return Err(gave_up(&message.subject, e, attempt, &deadline));
                    }
                    tracing::warn!(subject = %message.subject, attempt, error = %e, "jetstream publish not acknowledged; sending again with the same Nats-Msg-Id");
                }
            }
        }
    }

    /// Whether to send again after a failed attempt, after a short pause:
    /// only when it failed for want of the server (`Unavailable`: not
    /// stored, or the ack lost), with a dedup id (without one a resend
    /// could store it twice), and with attempts and time left.
    pub(super) async fn may_resend(
        &self,
        e: &Error,
        dedup: bool,
        attempt: u32,
        deadline: &Deadline,
    ) -> bool {
        if e.kind() != ErrorKind::Unavailable || !dedup || attempt >= self.config.publish_attempts {
            return false;
        }
        let pause = (Duration::from_millis(50) * attempt).min(Duration::from_secs(1));
        if deadline.left() <= pause {
            return false;
        }
        tokio::time::sleep(pause).await;
        true
    }

    /// Publishes one window of a batch, all within `deadline`. Every message
    /// is sent, then their acks are awaited together: the acks lost with a
    /// connection (or not in within `ack_timeout`) are found together, and
    /// their messages are sent again together, in order, with their
    /// `Nats-Msg-Id` (the server answers those it stored as duplicates).
    pub(super) async fn publish_window(
        &self,
        window: &[Message],
        deadline: &Deadline,
    ) -> Vec<Result<()>> {
        let mut slots: Vec<Slot> = window
            .iter()
            .map(
                |message| match self.check_open().and_then(|()| self.check(message)) {
                    Ok(dedup) => Slot::Waiting {
                        dedup,
                        in_flight: false,
                        sends: 0,
                        last: None,
                    },
                    Err(e) => Slot::Failed(e),
                },
            )
            .collect();
        let mut round = 0u32;
        loop {
            round += 1;
            let (acks, mut state) = self.send_round(window, &mut slots, round, deadline).await;
            let waited = Instant::now();
            let interrupted = self
                .await_acks(window, &mut slots, acks, &mut state, round, deadline)
                .await;
            let mut waiting = 0;
            for (slot, message) in slots.iter_mut().zip(window) {
                if let Slot::Waiting {
                    in_flight,
                    last,
                    dedup,
                    ..
                } = slot
                {
                    if std::mem::take(in_flight) {
                        let e = no_ack(
                            &message.subject,
                            interrupted.unwrap_or(Interrupted::Late),
                            waited,
                        );
                        if !*dedup {
                            // A resend without a dedup id could store it twice.
                            *slot = Slot::Failed(e);
                            continue;
                        }
                        *last = Some(e);
                    }
                    waiting += 1;
                }
            }
            if waiting == 0 {
                break;
            }
            let pause = (Duration::from_millis(50) * round).min(Duration::from_secs(1));
            if round >= self.config.publish_attempts || deadline.left() <= pause {
                for (slot, message) in slots.iter_mut().zip(window) {
                    if let Slot::Waiting { last, sends, .. } = slot {
                        let last = last.take().unwrap_or_else(|| {
                            let (kind, why) = core::unreachable(&self.tracker);
                            Error::new(kind, why)
                        });
                        *slot = Slot::Failed(gave_up(
                            &message.subject,
                            last,
                            (*sends).max(1),
                            deadline,
                        ));
                    }
                }
                break;
            }
            tracing::warn!(waiting, round, "jetstream publish_all: messages not acknowledged; sending them again together with the same Nats-Msg-Id");
            tokio::time::sleep(pause).await;
        }
        out_of_order(window, &mut slots);
        slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Stored { .. } => Ok(()),
                Slot::Failed(e) => Err(e),
                Slot::Waiting { .. } => Err(Error::new(
                    ErrorKind::Backend,
                    "publish left unfinished (a bug in the jetstream transport)",
                )),
            })
            .collect()
    }

    /// Sends every waiting message of `window`, in order, and returns the
    /// futures of their acks (with their index), and the connection state
    /// as it was before the first send. A send that finds the server
    /// unreachable ends the round: the rest would only wait too.
    pub(super) async fn send_round(
        &self,
        window: &[Message],
        slots: &mut [Slot],
        round: u32,
        deadline: &Deadline,
    ) -> (
        Vec<(usize, jetstream::context::PublishAckFuture)>,
        watch::Receiver<ConnectionState>,
    ) {
        let mut acks = Vec::with_capacity(if round == 1 { window.len() } else { 0 });
        // Taken once the connection is up: a reconnect after this, even one
        // a later send of the round waits for, may have taken earlier sends
        // of the round with the lost connection.
        if let Some(message) = window
            .iter()
            .zip(slots.iter())
            .find_map(|(m, s)| matches!(s, Slot::Waiting { .. }).then_some(m))
        {
            // A failure here shows again at the first send.
            let _ = self.connected(&message.subject, deadline).await;
        }
        let state = self.tracker.watch();
        for (i, (slot, message)) in slots.iter_mut().zip(window).enumerate() {
            if !matches!(slot, Slot::Waiting { .. }) {
                continue;
            }
            // Built just before the send, which takes them: a window does
            // not hold every message's headers at once.
            let sent = match self.headers(message) {
                Ok(headers) => self.send(message, headers, deadline).await,
                Err(e) => Err(e),
            };
            let Slot::Waiting {
                in_flight,
                sends,
                last,
                ..
            } = slot
            else {
                continue;
            };
            match sent {
                Ok(ack) => {
                    *in_flight = true;
                    *sends += 1;
                    acks.push((i, ack));
                }
                Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Unauthorized) => {
                    *last = Some(e);
                    break;
                }
                Err(e) => *slot = Slot::Failed(e),
            }
        }
        (acks, state)
    }

    /// Awaits the acks of one round, until every one is in, `ack_timeout`
    /// after the last send (or the deadline) passes, or the connection is
    /// replaced since `state` was taken (every ack in flight then counts as
    /// lost: those that were not come back as duplicates of the resend):
    /// one wait for the whole round, so the acks that do not come are found
    /// together. The acks that came in are recorded in `slots`; the rest
    /// stay in flight.
    pub(super) async fn await_acks(
        &self,
        window: &[Message],
        slots: &mut [Slot],
        acks: Vec<(usize, jetstream::context::PublishAckFuture)>,
        state: &mut watch::Receiver<ConnectionState>,
        round: u32,
        deadline: &Deadline,
    ) -> Option<Interrupted> {
        if acks.is_empty() {
            return None;
        }
        let mut acks: Vec<_> = acks
            .into_iter()
            .map(|(i, ack)| (i, ack.into_future()))
            .collect();
        let mut lost = std::pin::pin!(super::subscription::reconnected(state));
        let mut late = std::pin::pin!(core::sleep_until(deadline.within(self.config.ack_timeout)));
        // In publish order: by the time one is in, most after it are too, and
        // an ack future that is ready when first polled never arms its own
        // timer (polling them all at once armed one per message, measurably).
        let mut next = 0;
        let interrupted = std::future::poll_fn(|cx| {
            while let Some((i, ack)) = acks.get_mut(next) {
                match ack.as_mut().poll(cx) {
                    Poll::Ready(acked) => {
                        record(&mut slots[*i], &window[*i].subject, acked, round);
                        next += 1;
                    }
                    Poll::Pending => break,
                }
            }
            if next == acks.len() {
                return Poll::Ready(None);
            }
            if lost.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Interrupted::Lost));
            }
            if late.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Interrupted::Late));
            }
            Poll::Pending
        })
        .await;
        // Acks behind the one that did not come may be in already.
        for (i, ack) in acks.iter_mut().skip(next) {
            if let Some(acked) = ack.as_mut().now_or_never() {
                record(&mut slots[*i], &window[*i].subject, acked, round);
            }
        }
        interrupted
    }
}

/// The bytes the headers a message is sent with take on the wire (see
/// [`sent_headers`]), counted without building them; fails on a dedup id
/// that cannot be a header value.
pub(super) fn sent_headers_len(message: &Message, ttl_secs: Option<u64>) -> Result<usize> {
    // The header lines, `name: value\r\n` each.
    let mut lines: usize = message
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case(MSG_ID))
        .map(|(name, value)| name.len() + value.len() + 4)
        .sum();
    if let Some(id) = &message.dedup_id {
        if id.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(Error::invalid(format!(
                "header {MSG_ID:?}: value must not contain CR, LF or NUL"
            )));
        }
        lines += MSG_ID.len() + id.len() + 4;
    }
    if let Some(secs) = ttl_secs {
        // `<secs>s`
        let value = secs.checked_ilog10().unwrap_or(0) as usize + 2;
        lines += TTL.len() + value + 4;
    }
    // `NATS/1.0\r\n` before the lines, `\r\n` after them; nothing at all
    // without a line.
    Ok(if lines == 0 { 0 } else { lines + 12 })
}

/// The headers a message is sent with: its own, its dedup id as
/// `Nats-Msg-Id` (only the message's own dedup id may reach the server: a
/// header copied from a received message would make the server drop this
/// one as a duplicate), and `Nats-TTL` when `ttl_secs` is set. `None`
/// without any.
pub(super) fn sent_headers(
    message: &Message,
    ttl_secs: Option<u64>,
) -> Result<Option<async_nats::HeaderMap>> {
    let mut map = async_nats::HeaderMap::new();
    core::add_nats_headers(&mut map, &message.headers, |name| {
        name.eq_ignore_ascii_case(MSG_ID)
    })?;
    if let Some(id) = &message.dedup_id {
        let id = async_nats::HeaderValue::try_from(id.as_str()).map_err(|e| {
            Error::invalid(format!("header {MSG_ID:?}: value not valid for nats")).with_source(e)
        })?;
        map.insert(async_nats::header::NATS_MESSAGE_ID, id);
    }
    if let Some(secs) = ttl_secs {
        let ttl = async_nats::HeaderValue::try_from(format!("{secs}s"))
            .map_err(|e| Error::invalid("invalid Nats-TTL value").with_source(e))?;
        map.append(async_nats::header::NATS_MESSAGE_TTL, ttl);
    }
    Ok((!map.is_empty()).then_some(map))
}

/// Records the ack (or the failure) of a message sent in `round`.
pub(super) fn record(
    slot: &mut Slot,
    subject: &Subject,
    acked: std::result::Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    round: u32,
) {
    let Slot::Waiting {
        in_flight,
        dedup,
        last,
        ..
    } = slot
    else {
        return;
    };
    *in_flight = false;
    match acked {
        Ok(ack) => {
            *slot = Slot::Stored {
                stream: ack.stream,
                sequence: ack.sequence,
                resent: round > 1,
            }
        }
        Err(e) => {
            let e = publish_error(subject, e);
            if e.kind() == ErrorKind::Unavailable && *dedup {
                *last = Some(e);
            } else {
                *slot = Slot::Failed(e);
            }
        }
    }
}

/// Marks the messages a resend stored behind later messages of their
/// window (in the same stream): stored, but not in publish order. What a
/// batch reports `Ok` is stored in publish order, stream by stream.
pub(super) fn out_of_order(window: &[Message], slots: &mut [Slot]) {
    if !slots
        .iter()
        .any(|s| matches!(s, Slot::Stored { resent: true, .. }))
    {
        return;
    }
    // The lowest sequence stored after the current position, per stream.
    let mut lowest: Vec<(String, u64)> = Vec::new();
    for (slot, message) in slots.iter_mut().zip(window).rev() {
        let Slot::Stored {
            stream,
            sequence,
            resent,
        } = slot
        else {
            continue;
        };
        let sequence = *sequence;
        let ahead = match lowest.iter_mut().find(|(s, _)| s == stream) {
            Some((_, low)) => {
                let ahead = *low < sequence;
                *low = (*low).min(sequence);
                ahead
            }
            None => {
                lowest.push((stream.clone(), sequence));
                false
            }
        };
        if *resent && ahead {
            let detail = format!(
                "the message on `{}` is stored (stream {stream}, sequence {sequence}), but behind \
                 later messages of the same batch: an earlier send of it was lost or not \
                 acknowledged in time, and the resend landed after them; publish order is not \
                 kept for it",
                message.subject,
            );
            *slot = Slot::Failed(Error::new(ErrorKind::Backend, detail));
        }
    }
}

/// A send whose ack did not come.
pub(super) fn no_ack(subject: &Subject, why: Interrupted, since: Instant) -> Error {
    let detail = match why {
        Interrupted::Late => format!(
            "no ack for the publish to `{subject}` within {:.2?}: it may or may not be stored",
            since.elapsed()
        ),
        Interrupted::Lost => format!(
            "the connection was lost before the ack for the publish to `{subject}` came: \
             it may or may not be stored"
        ),
    };
    Error::new(ErrorKind::Unavailable, detail)
}

/// The error of a publish that gave up for want of the server, with the
/// time it really took and the attempts it made; any other error as it is.
pub(super) fn gave_up(subject: &Subject, last: Error, attempts: u32, deadline: &Deadline) -> Error {
    if !matches!(
        last.kind(),
        ErrorKind::Unavailable | ErrorKind::Unauthorized
    ) {
        return last;
    }
    Error::new(
        last.kind(),
        format!(
            "publish to `{subject}` gave up after {:.2?} and {attempts} {} (publish_timeout {:?})",
            deadline.elapsed(),
            if attempts == 1 { "attempt" } else { "attempts" },
            deadline.limit(),
        ),
    )
    .with_source(last)
}

pub(super) fn publish_error(subject: &Subject, e: jetstream::context::PublishError) -> Error {
    use jetstream::context::PublishErrorKind as K;
    let (kind, detail) = match e.kind() {
        K::TimedOut | K::BrokenPipe => (
            ErrorKind::Unavailable,
            format!("no ack for the publish to `{subject}`: it may or may not be stored"),
        ),
        K::StreamNotFound => (
            ErrorKind::Unavailable,
            format!("no stream answered for `{subject}`: JetStream is not ready or no stream captures the subject"),
        ),
        K::MaxAckPending => (ErrorKind::Unavailable, format!("too many publishes awaiting their ack; `{subject}` not sent")),
        K::MaxPayloadExceeded => (ErrorKind::PayloadTooLarge, format!("message on `{subject}` exceeds the server's max_payload")),
        K::WrongLastMessageId | K::WrongLastSequence => (ErrorKind::Backend, format!("publish to `{subject}` failed an expectation")),
        K::Other => (ErrorKind::Backend, format!("publish to `{subject}` failed")),
    };
    Error::new(kind, detail).with_source(e)
}

#[cfg(test)]
mod publish_tests {
    use super::*;

    /// The headers as the map and size are defined: the message's own
    /// without any `Nats-Msg-Id`, then its dedup id, then the TTL.
    fn expected(message: &Message, ttl_secs: Option<u64>) -> crate::transport::Headers {
        let mut headers = message.headers.clone();
        headers.remove(MSG_ID);
        if let Some(id) = &message.dedup_id {
            headers.append(MSG_ID, id.clone()).unwrap();
        }
        if let Some(secs) = ttl_secs {
            headers.append(TTL, format!("{secs}s")).unwrap();
        }
        headers
    }

    #[test]
    fn sent_headers_drop_copied_dedup_ids_and_keep_repeated_names() {
        let subject = Subject::parse("events.a").unwrap();
        let mut messages = vec![Message::new(subject.clone(), &b"{}"[..])];
        let mut m = Message::new(subject.clone(), &b"{}"[..]);
        m.headers
            .append("Content-Type", "application/json")
            .unwrap();
        messages.push(m.clone());
        m.dedup_id = Some("id-1".into());
        messages.push(m.clone());
        m.headers.append("nats-msg-id", "copied").unwrap();
        m.headers.append("x-list", "one").unwrap();
        m.headers.append(String::from("x-list"), "two").unwrap();
        m.headers.append(String::from("Nats-TTL"), "5s").unwrap();
        messages.push(m.clone());
        m.headers = crate::transport::Headers::new();
        m.headers.append("Nats-Msg-Id", "copied").unwrap();
        messages.push(m.clone());
        m.dedup_id = None;
        messages.push(m);
        for message in &messages {
            for ttl in [None, Some(1), Some(9), Some(10), Some(86_400)] {
                let want = expected(message, ttl);
                assert_eq!(
                    sent_headers_len(message, ttl).unwrap(),
                    want.wire_len(),
                    "{message:?} {ttl:?}"
                );
                // Each header appended in order, names parsed.
                let mut map = async_nats::HeaderMap::new();
                for (name, value) in want.iter() {
                    map.append(
                        async_nats::HeaderName::try_from(name).unwrap(),
                        async_nats::HeaderValue::try_from(value).unwrap(),
                    );
                }
                let map = (!map.is_empty()).then_some(map);
                assert_eq!(
                    sent_headers(message, ttl).unwrap(),
                    map,
                    "{message:?} {ttl:?}"
                );
            }
        }
        let mut bad = Message::new(subject, &b"{}"[..]);
        bad.dedup_id = Some("a\0b".into());
        assert!(sent_headers_len(&bad, None).is_err());
    }

    fn stored(stream: &str, sequence: u64, resent: bool) -> Slot {
        Slot::Stored {
            stream: stream.to_owned(),
            sequence,
            resent,
        }
    }

    fn verdicts(slots: Vec<Slot>) -> Vec<bool> {
        let window: Vec<Message> = (0..slots.len())
            .map(|_| Message::new(Subject::received("s".to_owned()), bytes::Bytes::new()))
            .collect();
        let mut slots = slots;
        out_of_order(&window, &mut slots);
        slots
            .iter()
            .map(|s| matches!(s, Slot::Stored { .. }))
            .collect()
    }

    #[test]
    fn only_a_resend_stored_behind_a_later_message_of_its_stream_is_out_of_order() {
        // 0 was resent and stored behind 1 and 2; 3, resent too, is last.
        assert_eq!(
            verdicts(vec![
                stored("A", 10, true),
                stored("A", 8, false),
                stored("A", 9, false),
                stored("A", 11, true),
            ]),
            [false, true, true, true]
        );
        // Another stream's sequences say nothing about this one's order.
        assert_eq!(
            verdicts(vec![stored("A", 10, true), stored("B", 3, false)]),
            [true, true]
        );
        // Stored before this call (a batch published again): its old place
        // is not this call's reordering, even behind a fresh message.
        assert_eq!(
            verdicts(vec![stored("A", 20, false), stored("A", 5, false)]),
            [true, true]
        );
        // Resent in order after everything: nothing overtook them.
        assert_eq!(
            verdicts(vec![
                stored("A", 1, false),
                stored("A", 7, true),
                stored("A", 8, true),
            ]),
            [true, true, true]
        );
        // A failure in between does not hide a later message.
        assert_eq!(
            verdicts(vec![
                stored("A", 9, true),
                Slot::Failed(Error::new(ErrorKind::Unavailable, "lost")),
                stored("A", 4, false),
            ]),
            [false, false, true]
        );
    }
}
