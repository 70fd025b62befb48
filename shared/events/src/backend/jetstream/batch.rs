//! Atomic batch publish: every message of a batch stored, or none
//! (nats-server 2.12.1 or later, on a stream with `allow_atomic`).
//!
//! The protocol (ADR-50): each message carries `Nats-Batch-Id` and
//! `Nats-Batch-Sequence` (1, 2, …); the server stages them and stores them
//! all when the last one, also carrying `Nats-Batch-Commit: 1`, arrives.
//! The first message is a request the server answers with an empty message
//! (or an error), the commit one with a PubAck for the whole batch. A gap,
//! 10 s without a message, or any message failing its checks abandons the
//! whole batch. The server takes at most 1,000 messages per batch and 50
//! batches in flight per stream.

use std::time::Duration;

use serde_json::Value;

use super::{provision, Inner, MSG_ID};
use crate::backend::nats as core;
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{Message, SubjectPattern};

/// The most messages one atomic batch holds (the server's default limit).
pub const MAX_ATOMIC_BATCH: usize = 1_000;

const BATCH_ID: &str = "Nats-Batch-Id";
const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT: &str = "Nats-Batch-Commit";
const TTL: &str = "Nats-TTL";

/// The server's error codes for atomic batches.
const DISABLED: u64 = 10174;
const INCOMPLETE: u64 = 10176;
const TOO_LARGE: u64 = 10199;
const DUPLICATE: u64 = 10201;

/// Why one attempt at a batch failed.
enum Failure {
    /// A message's dedup id is stored already: the whole batch was refused.
    Duplicate(Error),
    /// Anything else; `maybe_stored` when the commit was sent and its
    /// answer did not come.
    Other { error: Error, maybe_stored: bool },
}

impl Failure {
    fn sure(error: Error) -> Self {
        Failure::Other {
            error,
            maybe_stored: false,
        }
    }
}

impl Inner {
    /// Why this transport refuses atomic batches.
    fn atomic_refusal(&self) -> Error {
        let needs = provision::ATOMIC.needs;
        let name = &self.stream.cached_info().config.name;
        let detail = if self.server_version < needs {
            format!(
                "atomic batch publish needs nats-server {}.{}.{} or later, but the server runs {}.{}.{}",
                needs.0,
                needs.1,
                needs.2,
                self.server_version.0,
                self.server_version.1,
                self.server_version.2
            )
        } else {
            format!(
                "stream {name} does not allow atomic batches (allow_atomic): provision it \
                 with StreamConfig::atomic_publish(true) or enable it on the stream, then connect again"
            )
        };
        Error::new(ErrorKind::Unsupported, detail)
    }

    /// Publishes `messages` all-or-nothing, retried as a publish is: a new
    /// batch with the same dedup ids, when every message has one. After a
    /// commit whose answer was lost, the server refusing the retry for a
    /// stored dedup id means the earlier attempt was stored: success.
    pub(super) async fn publish_atomic(&self, messages: Vec<Message>) -> Result<()> {
        self.check_open()?;
        if !self.capabilities.atomic_publish {
            return Err(self.atomic_refusal());
        }
        if messages.is_empty() {
            return Ok(());
        }
        if messages.len() > MAX_ATOMIC_BATCH {
            return Err(Error::invalid(format!(
                "an atomic batch holds at most {MAX_ATOMIC_BATCH} messages, not {}",
                messages.len()
            )));
        }
        self.check_captured(&messages)?;
        let dedup = messages.iter().all(|m| m.dedup_id.is_some());
        let attempts = self.config.publish_attempts;
        let mut maybe_stored = false;
        let mut attempt = 1;
        loop {
            match self.send_batch(&messages).await {
                Ok(()) => return Ok(()),
                Err(Failure::Duplicate(_)) if maybe_stored => {
                    tracing::debug!(
                        "an atomic batch retry found its dedup ids stored: the earlier attempt was committed"
                    );
                    return Ok(());
                }
                Err(Failure::Duplicate(error)) => return Err(error),
                Err(Failure::Other {
                    error,
                    maybe_stored: maybe,
                }) => {
                    maybe_stored |= maybe;
                    if error.kind() == ErrorKind::Unavailable && attempt < attempts && dedup {
                        tracing::warn!(attempt, error = %error, "atomic batch not acknowledged; sending it again with the same Nats-Msg-Ids");
                        tokio::time::sleep(Duration::from_millis(50) * attempt).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }

    /// A batch lives in one stream: a message another stream stores would
    /// leave both batches incomplete.
    fn check_captured(&self, messages: &[Message]) -> Result<()> {
        let config = &self.stream.cached_info().config;
        let patterns: Vec<SubjectPattern> = config
            .subjects
            .iter()
            .filter_map(|s| SubjectPattern::parse(s).ok())
            .collect();
        match messages
            .iter()
            .find(|m| !patterns.iter().any(|p| p.matches(&m.subject)))
        {
            None => Ok(()),
            Some(m) => Err(Error::invalid(format!(
                "`{}` is not captured by stream {}: an atomic batch goes to one stream",
                m.subject, config.name
            ))),
        }
    }

    /// The headers of batch member `sequence` (1-based), size checked.
    fn member_headers(
        &self,
        message: &Message,
        batch: &str,
        sequence: usize,
        commit: bool,
    ) -> Result<Option<async_nats::HeaderMap>> {
        let mut headers = message.headers.clone();
        // Only this batch's own control headers and the message's own
        // dedup id may reach the server (as for a single publish).
        for name in [MSG_ID, BATCH_ID, BATCH_SEQUENCE, BATCH_COMMIT] {
            headers.remove(name);
        }
        if let Some(id) = &message.dedup_id {
            headers.append(MSG_ID, id.clone())?;
        }
        if let Some(ttl) = self.config.message_ttl {
            headers.append(TTL, format!("{}s", ttl.as_secs().max(1)))?;
        }
        headers.append(BATCH_ID, batch.to_owned())?;
        headers.append(BATCH_SEQUENCE, sequence.to_string())?;
        if commit {
            headers.append(BATCH_COMMIT, "1")?;
        }
        let limit = self.client.max_payload();
        let size = headers.wire_len() + message.payload.len();
        if size > limit {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message on `{}` is {size} bytes with its batch headers; the server accepts at most {limit}",
                    message.subject
                ),
            ));
        }
        core::to_nats_headers(&headers)
    }

    /// One attempt: a new batch id, the first message as a request, the
    /// middle ones published, the last as the commit request.
    async fn send_batch(&self, messages: &[Message]) -> std::result::Result<(), Failure> {
        let batch = uuid::Uuid::now_v7().simple().to_string();
        let last = messages.len();
        // Every header is built before anything is sent: a message that
        // cannot go fails the batch before the server sees any of it.
        let mut headers = Vec::with_capacity(last);
        for (i, message) in messages.iter().enumerate() {
            headers.push(
                self.member_headers(message, &batch, i + 1, i + 1 == last)
                    .map_err(Failure::sure)?,
            );
        }
        let limit = self.config.connection.get_publish_timeout();
        let deadline = core::Deadline::after(limit);
        if self.tracker.state() != core::ConnectionState::Connected {
            core::wait_connected(&self.tracker, &messages[0].subject, &deadline)
                .await
                .map_err(Failure::sure)?;
        }
        let mut headers = headers.into_iter();
        for (i, message) in messages.iter().enumerate() {
            let member = headers.next().flatten();
            let sequence = i + 1;
            if sequence == last {
                return match self.request(message, member).await? {
                    Answer::Ack(ack) => {
                        let count = ack.get("count").and_then(Value::as_u64);
                        match count {
                            Some(count) if count != last as u64 => Err(Failure::sure(Error::new(
                                ErrorKind::Backend,
                                format!(
                                    "the server acknowledged {count} messages of an atomic batch of {last}"
                                ),
                            ))),
                            _ => Ok(()),
                        }
                    }
                    Answer::Staged => Err(Failure::sure(Error::new(
                        ErrorKind::Backend,
                        "the server answered an atomic batch's commit without an ack",
                    ))),
                    Answer::Refused(code, error) => Err(self.refused(code, error)),
                };
            }
            if sequence == 1 {
                // Nothing is committed before the last member: a first
                // member lost on the way stores nothing.
                let first = self.request(message, member).await.map_err(|f| match f {
                    Failure::Other { error, .. } => Failure::sure(error),
                    duplicate => duplicate,
                })?;
                match first {
                    Answer::Staged => {}
                    // Stored as a plain message: the stream's leader does not
                    // know batches. It cannot be taken back.
                    Answer::Ack(_) => {
                        return Err(Failure::sure(Error::new(
                            ErrorKind::Unsupported,
                            format!(
                            "the first message of an atomic batch on `{}` was stored on its own: \
                                 the stream's leader runs a server older than 2.12",
                            message.subject
                        ),
                        )))
                    }
                    Answer::Refused(code, error) => return Err(self.refused(code, error)),
                }
                continue;
            }
            let publish = self.client.publish_with_headers(
                core::nats_subject(&message.subject),
                member.unwrap_or_default(),
                message.payload.clone(),
            );
            match self.tracker.bounded_send(publish, limit).await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return Err(Failure::sure(
                        Error::new(
                            ErrorKind::Unavailable,
                            format!(
                                "sending an atomic batch member to `{}` failed",
                                message.subject
                            ),
                        )
                        .with_source(e),
                    ))
                }
                None => {
                    return Err(Failure::sure(core::unavailable(
                        &self.tracker,
                        &message.subject,
                        &deadline,
                    )))
                }
            }
        }
        Ok(())
    }

    /// Sends one batch member as a request and reads the server's answer.
    /// A timeout may hide a stored batch (for the commit); no responders,
    /// a refused send, never.
    async fn request(
        &self,
        message: &Message,
        headers: Option<async_nats::HeaderMap>,
    ) -> std::result::Result<Answer, Failure> {
        use async_nats::RequestErrorKind as K;
        let mut request = async_nats::Request::new()
            .payload(message.payload.clone())
            .timeout(Some(self.config.ack_timeout));
        if let Some(headers) = headers {
            request = request.headers(headers);
        }
        let subject = &message.subject;
        let reply = self
            .client
            .send_request(core::nats_subject(subject), request)
            .await
            .map_err(|e| {
                let maybe_stored = matches!(e.kind(), K::TimedOut | K::Other);
                let (kind, detail) = match e.kind() {
                    K::TimedOut => (
                        ErrorKind::Unavailable,
                        format!("no answer to an atomic batch message on `{subject}` in time"),
                    ),
                    K::NoResponders => (
                        ErrorKind::Unavailable,
                        format!("no stream answered for `{subject}`: JetStream is not ready"),
                    ),
                    K::MaxPayloadExceeded => (
                        ErrorKind::PayloadTooLarge,
                        format!("message on `{subject}` exceeds the server's max_payload"),
                    ),
                    K::InvalidSubject => (
                        ErrorKind::InvalidInput,
                        format!("subject `{subject}` rejected by the client"),
                    ),
                    _ => (
                        ErrorKind::Unavailable,
                        format!("an atomic batch message on `{subject}` could not be sent"),
                    ),
                };
                Failure::Other {
                    error: Error::new(kind, detail).with_source(e),
                    maybe_stored,
                }
            })?;
        Ok(answer(&reply.payload))
    }

    fn refused(&self, code: u64, error: Error) -> Failure {
        match code {
            DUPLICATE => Failure::Duplicate(error),
            DISABLED => Failure::sure(self.atomic_refusal().with_source(error)),
            // A member lost on the way or the batch timed out: nothing was
            // stored, and a new batch may go through.
            INCOMPLETE => Failure::sure(
                Error::new(
                    ErrorKind::Unavailable,
                    "the server abandoned an incomplete atomic batch: nothing of it is stored",
                )
                .with_source(error),
            ),
            TOO_LARGE => Failure::sure(
                Error::invalid("the server refuses atomic batches this large").with_source(error),
            ),
            _ => Failure::sure(error),
        }
    }
}

/// What the server answered a batch member.
enum Answer {
    /// The empty answer to a member that does not commit.
    Staged,
    /// A PubAck: the batch is stored (or, for a first member, the message
    /// was stored on its own).
    Ack(Value),
    /// An API error, with its code, as an error of kind `Backend`.
    Refused(u64, Error),
}

fn answer(payload: &[u8]) -> Answer {
    if payload.is_empty() {
        return Answer::Staged;
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(value) => value,
        Err(e) => {
            return Answer::Refused(
                0,
                Error::new(
                    ErrorKind::Backend,
                    "an unreadable answer to an atomic batch",
                )
                .with_source(e),
            )
        }
    };
    match value.get("error") {
        Some(error) => {
            let code = error.get("err_code").and_then(Value::as_u64).unwrap_or(0);
            let description = error
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("no description");
            Answer::Refused(
                code,
                Error::new(
                    ErrorKind::Backend,
                    format!(
                        "the server refused an atomic batch: {description} (error code {code})"
                    ),
                ),
            )
        }
        None => Answer::Ack(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_staged_acked_or_refused() {
        assert!(matches!(answer(b""), Answer::Staged));
        assert!(matches!(
            answer(br#"{"stream":"S","seq":3,"batch":"b","count":3}"#),
            Answer::Ack(_)
        ));
        match answer(
            br#"{"error":{"code":400,"err_code":10201,"description":"atomic publish batch contains duplicate message id"}}"#,
        ) {
            Answer::Refused(code, error) => {
                assert_eq!(code, DUPLICATE);
                assert_eq!(error.kind(), ErrorKind::Backend);
                assert!(error.to_string().contains("duplicate message id"), "{error}");
            }
            _ => panic!("an error answer is a refusal"),
        }
        assert!(matches!(answer(b"not json"), Answer::Refused(0, _)));
    }
}
