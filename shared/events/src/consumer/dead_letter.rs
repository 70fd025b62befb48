//! Dead letters: copies of events a consumer gave up on, with the reason,
//! and the means to replay them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::transport::percent;
use crate::transport::{Message, Subject, Subscription, Transport};
use crate::wire::{format_time, parse_time};

/// Header names a dead-letter copy adds to the original headers.
pub mod headers {
    /// Why: `decode`, `unsupported_version`, `missing_upcaster`,
    /// `rejected`, `attempts_exhausted`, `no_handler`.
    pub const REASON: &str = "dead-letter-reason";
    /// The error text (percent-encoded).
    pub const ERROR: &str = "dead-letter-error";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "dead-letter-attempts";
    /// The consumer that gave up.
    pub const CONSUMER: &str = "dead-letter-consumer";
    /// The subject the event was published on.
    pub const SUBJECT: &str = "dead-letter-subject";
    /// When it was dead-lettered (RFC 3339).
    pub const TIME: &str = "dead-letter-time";
    /// Present when the copy carries no body because the original body with
    /// the dead-letter headers exceeded the transport's message size: the
    /// original body's length in bytes.
    pub const BODY_OMITTED: &str = "dead-letter-body-omitted";
    /// The original's stream sequence, where the transport has one (where
    /// to find an omitted body while the stream keeps it).
    pub const STREAM_SEQUENCE: &str = "dead-letter-stream-sequence";

    pub(crate) const ALL: [&str; 8] = [
        REASON,
        ERROR,
        ATTEMPTS,
        CONSUMER,
        SUBJECT,
        TIME,
        BODY_OMITTED,
        STREAM_SEQUENCE,
    ];
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The message is not a valid event, or its payload does not match.
    Decode,
    /// Its version is newer than the consumer knows.
    UnsupportedVersion,
    /// An older version could not be upcast.
    MissingUpcaster,
    /// The handler rejected it.
    Rejected,
    /// The handler failed on every attempt.
    AttemptsExhausted,
    /// No handler is registered for its type.
    NoHandler,
}

impl Reason {
    /// The text written to the reason header.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Decode => "decode",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::MissingUpcaster => "missing_upcaster",
            Reason::Rejected => "rejected",
            Reason::AttemptsExhausted => "attempts_exhausted",
            Reason::NoHandler => "no_handler",
        }
    }

    /// Every reason, in declaration order.
    pub(crate) const ALL: [Reason; 6] = [
        Reason::Decode,
        Reason::UnsupportedVersion,
        Reason::MissingUpcaster,
        Reason::Rejected,
        Reason::AttemptsExhausted,
        Reason::NoHandler,
    ];

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// A dead-letter copy: the original message plus why it was given up.
///
/// Made with [`new`](Self::new) or read with
/// [`from_message`](Self::from_message); the fields are public to read and
/// change, and new ones may be added (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The original message as received (subject, headers, body).
    pub original: Message,
    /// Why.
    pub reason: Reason,
    /// The error text.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// The consumer that gave up.
    pub consumer: String,
    /// When.
    pub time: DateTime<Utc>,
    /// The original's stream sequence, where the transport has one.
    pub stream_sequence: Option<u64>,
    /// `Some(length)` when the copy carries no body (the original body did
    /// not fit in one message with the dead-letter headers); `original.payload`
    /// is then empty. Such a letter cannot be replayed.
    pub body_omitted: Option<usize>,
}

/// The longest error text a copy carries, in bytes: a handler's error can be
/// arbitrarily long, and the copy must fit in one message.
pub(crate) const MAX_ERROR_LEN: usize = 1024;

/// `error`, cut at a character boundary to at most [`MAX_ERROR_LEN`] bytes
/// (with a marker when cut).
pub(crate) fn bounded_error(error: &str) -> String {
    if error.len() <= MAX_ERROR_LEN {
        return error.to_owned();
    }
    const MARK: &str = "... (cut)";
    let mut end = MAX_ERROR_LEN - MARK.len();
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &error[..end])
}

impl DeadLetter {
    /// A dead letter for `original`, given up by `consumer` for `reason`
    /// with `error`, now, after one attempt. Set the other fields
    /// (`attempts`, `stream_sequence`) on the value as needed.
    ///
    /// ```
    /// use events::consumer::{DeadLetter, Reason};
    /// use events::transport::{Message, Subject};
    ///
    /// let original = Message::new(Subject::parse("events.orders.placed")?, &b"{}"[..]);
    /// let mut letter = DeadLetter::new(original, Reason::Rejected, "unknown SKU", "inventory");
    /// letter.attempts = 3;
    /// let copy = letter.to_message(Subject::parse("deadletter.events.inventory")?);
    /// assert_eq!(DeadLetter::from_message(&copy)?.attempts, 3);
    /// # Ok::<(), events::Error>(())
    /// ```
    pub fn new(
        original: Message,
        reason: Reason,
        error: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        DeadLetter {
            original,
            reason,
            error: error.into(),
            attempts: 1,
            consumer: consumer.into(),
            time: Utc::now(),
            stream_sequence: None,
            body_omitted: None,
        }
    }

    /// The message to publish on `subject`: the original headers and body,
    /// plus the `dead-letter-*` headers. It carries no dedup id: a copy must
    /// never be dropped as a duplicate of the original event.
    pub fn to_message(&self, subject: Subject) -> Message {
        let mut headers = self.original.headers.clone();
        for name in headers::ALL {
            headers.remove(name);
        }
        // NATS control headers received with the original (a `Nats-Msg-Id`
        // a core subscriber sees, `Nats-Expected-*` a publisher set) would
        // make a stream drop the copy as a duplicate or refuse it: they
        // describe the original's publish, not the event.
        let control: Vec<String> = headers
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                name.as_bytes()
                    .get(..5)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"nats-"))
            })
            .map(str::to_owned)
            .collect();
        for name in control {
            headers.remove(&name);
        }
        headers.push_trusted(headers::REASON, self.reason.as_str());
        headers.push_trusted(headers::ERROR, percent::encode(&self.error));
        headers.push_trusted(headers::ATTEMPTS, self.attempts.to_string());
        headers.push_trusted(headers::CONSUMER, percent::encode(&self.consumer));
        headers.push_trusted(
            headers::SUBJECT,
            percent::encode(self.original.subject.as_str()),
        );
        headers.push_trusted(headers::TIME, format_time(self.time));
        if let Some(sequence) = self.stream_sequence {
            headers.push_trusted(headers::STREAM_SEQUENCE, sequence.to_string());
        }
        let payload = match self.body_omitted {
            Some(length) => {
                headers.push_trusted(headers::BODY_OMITTED, length.to_string());
                bytes::Bytes::new()
            }
            None => self.original.payload.clone(),
        };
        Message {
            subject,
            headers,
            payload,
            dedup_id: None,
        }
    }

    /// This letter without the original body (for a copy that would not fit
    /// in one message otherwise).
    pub fn without_body(mut self) -> Self {
        self.body_omitted = Some(self.original.payload.len());
        self.original.payload = bytes::Bytes::new();
        self
    }

    /// Reads a dead-letter copy back.
    pub fn from_message(message: &Message) -> Result<Self> {
        let h = &message.headers;
        let get = |name: &str| {
            h.get(name)
                .ok_or_else(|| Error::decode(format!("dead letter without header {name}")))
        };
        let reason = Reason::parse(get(headers::REASON)?)
            .ok_or_else(|| Error::decode("dead letter with an unknown reason"))?;
        let error = percent::decode(headers::ERROR, get(headers::ERROR)?)?;
        let attempts = get(headers::ATTEMPTS)?
            .parse()
            .map_err(|_| Error::decode("dead letter with a non-numeric attempt count"))?;
        let consumer = percent::decode(headers::CONSUMER, get(headers::CONSUMER)?)?;
        let subject = percent::decode(headers::SUBJECT, get(headers::SUBJECT)?)?;
        let time = parse_time(get(headers::TIME)?)?;
        let number = |name: &str| {
            h.get(name)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        Error::decode(format!("dead letter with a non-numeric {name}"))
                    })
                })
                .transpose()
        };
        let stream_sequence = number(headers::STREAM_SEQUENCE)?;
        let body_omitted =
            number(headers::BODY_OMITTED)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let mut original_headers = h.clone();
        for name in headers::ALL {
            original_headers.remove(name);
        }
        Ok(DeadLetter {
            original: Message {
                subject: Subject::parse(&subject)?,
                headers: original_headers,
                payload: message.payload.clone(),
                dedup_id: None,
            },
            reason,
            error,
            attempts,
            consumer,
            time,
            stream_sequence,
            body_omitted,
        })
    }
}

/// What a replay did. New counts may be added (the struct is
/// `#[non_exhaustive]`); start from `ReplayReport::default()` to make one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Dead letters republished to their original subject (and acked).
    pub replayed: usize,
    /// Dead letters the filter left alone (not settled: they come back after
    /// the transport's ack wait).
    pub skipped: usize,
    /// Messages on the dead-letter subject that are not dead letters
    /// (terminated).
    pub invalid: usize,
    /// Dead letters whose copy carries no body ([`DeadLetter::body_omitted`]):
    /// they cannot be replayed, and are left unsettled, like skipped ones.
    pub without_body: usize,
}

/// Republishes dead letters read from `dead_letters` to their original
/// subjects, for those `filter` accepts, until `max` were replayed or no
/// new dead letter arrives for `idle` (`Duration::MAX`: until `max` were
/// replayed or the subscription ends).
///
/// A dead letter is acked only after its republish succeeded; if the
/// republish fails, it is nacked and the error returned, so nothing is lost.
/// Letters left alone (skipped by the filter, or without a body) stay
/// unsettled and come back after the transport's ack wait: each is counted
/// once, and their coming back does not count as activity, so a replay
/// over letters it leaves alone still ends after `idle`.
pub async fn replay(
    transport: &dyn Transport,
    dead_letters: &mut Subscription,
    max: usize,
    idle: Duration,
    mut filter: impl FnMut(&DeadLetter) -> bool,
) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut left_alone = std::collections::HashSet::new();
    let mut deadline = idle_deadline(idle);
    while report.replayed < max {
        let next = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, dead_letters.next()).await,
            None => Ok(dead_letters.next().await),
        };
        let delivery = match next {
            Ok(Some(delivery)) => delivery?,
            Ok(None) | Err(_) => break,
        };
        let letter = match DeadLetter::from_message(delivery.message()) {
            Ok(letter) => letter,
            Err(e) => {
                tracing::warn!(error = %e, subject = %delivery.message().subject, "not a dead letter; terminated");
                delivery.term().await?;
                report.invalid += 1;
                deadline = idle_deadline(idle);
                continue;
            }
        };
        let key = letter_key(&delivery, &letter);
        if left_alone.contains(&key) {
            drop(delivery);
            continue;
        }
        deadline = idle_deadline(idle);
        if !filter(&letter) {
            report.skipped += 1;
            left_alone.insert(key);
            drop(delivery);
            continue;
        }
        if letter.body_omitted.is_some() {
            tracing::warn!(subject = %letter.original.subject, stream_sequence = ?letter.stream_sequence, "dead letter without its body; not replayed");
            report.without_body += 1;
            left_alone.insert(key);
            drop(delivery);
            continue;
        }
        match transport.publish(letter.original).await {
            Ok(()) => {
                delivery.ack().await?;
                report.replayed += 1;
            }
            Err(e) => {
                delivery.nack(None).await.ok();
                return Err(e);
            }
        }
    }
    Ok(report)
}

/// When a replay idle for `idle` from now ends; `None` if that is too far
/// away for an `Instant` (never, in practice).
fn idle_deadline(idle: Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(idle)
}

/// What tells one dead letter from another when it comes back: its position
/// in the stream where the backend has one, else a hash of what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LetterKey {
    Sequence(u64),
    Content(u64),
}

fn letter_key(delivery: &crate::transport::Delivery, letter: &DeadLetter) -> LetterKey {
    use std::hash::{Hash, Hasher};
    if let Some(sequence) = delivery.info().stream_sequence {
        return LetterKey::Sequence(sequence);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    letter.consumer.hash(&mut hasher);
    letter.time.hash(&mut hasher);
    letter.original.subject.as_str().hash(&mut hasher);
    letter.original.payload.hash(&mut hasher);
    letter.error.hash(&mut hasher);
    LetterKey::Content(hasher.finish())
}

/// Outside the crate, dead letters and replay reports are not written as
/// literals (new fields may come); a literal must not compile:
///
/// ```compile_fail,E0639
/// # use events::consumer::{DeadLetter, Reason};
/// # use events::transport::{Message, Subject};
/// let letter = DeadLetter {
///     original: Message::new(Subject::parse("a").unwrap(), &b""[..]),
///     reason: Reason::Rejected,
///     error: String::new(),
///     attempts: 1,
///     consumer: "c".into(),
///     time: chrono::Utc::now(),
///     stream_sequence: None,
///     body_omitted: None,
/// };
/// ```
///
/// ```compile_fail,E0639
/// let report = events::consumer::ReplayReport { replayed: 0, skipped: 0, invalid: 0, without_body: 0 };
/// ```
#[allow(dead_code)]
const NON_EXHAUSTIVE: () = ();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_round_trips_through_its_message() {
        let mut original = Message::new(
            Subject::parse("events.orders.placed").unwrap(),
            &b"{\"x\":1}"[..],
        );
        original.headers.append("ce-id", "abc").unwrap();
        original.dedup_id = Some("abc".into());
        let letter = DeadLetter {
            original: original.clone(),
            reason: Reason::AttemptsExhausted,
            error: "database down\r\nretry later: 100%".into(),
            attempts: 5,
            consumer: "billing".into(),
            time: parse_time("2024-01-01T00:00:00Z").unwrap(),
            stream_sequence: Some(42),
            body_omitted: None,
        };
        let m = letter.to_message(Subject::parse("deadletter.events.billing").unwrap());
        assert_eq!(m.dedup_id, None, "never deduplicated against the original");
        assert_eq!(m.headers.get("ce-id"), Some("abc"), "original headers kept");
        assert_eq!(m.headers.get(headers::REASON), Some("attempts_exhausted"));
        assert_eq!(m.headers.get(headers::ATTEMPTS), Some("5"));
        assert!(!m.headers.get(headers::ERROR).unwrap().contains('\n'));
        let back = DeadLetter::from_message(&m).unwrap();
        let mut expected = letter.clone();
        expected.original.dedup_id = None;
        assert_eq!(back, expected);

        let bodiless = letter.without_body();
        let m = bodiless.to_message(Subject::parse("deadletter.events.billing").unwrap());
        assert!(m.payload.is_empty());
        assert_eq!(m.headers.get(headers::BODY_OMITTED), Some("7"));
        let back = DeadLetter::from_message(&m).unwrap();
        assert_eq!(
            (back.body_omitted, back.stream_sequence),
            (Some(7), Some(42))
        );
    }

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = bounded_error(&long);
        assert!(cut.len() <= MAX_ERROR_LEN, "{}", cut.len());
        assert!(cut.ends_with("... (cut)"));
        assert_eq!(bounded_error("short"), "short");
    }

    #[test]
    fn a_dead_letter_copy_drops_the_originals_nats_control_headers() {
        let mut original = Message::new(Subject::parse("events.a").unwrap(), &b"{}"[..]);
        original.headers.append("Nats-Msg-Id", "abc").unwrap();
        original
            .headers
            .append("nats-expected-stream", "S")
            .unwrap();
        original.headers.append("ce-id", "abc").unwrap();
        original.headers.append("natsish", "kept").unwrap();
        let letter = DeadLetter {
            original,
            reason: Reason::Decode,
            error: "bad".into(),
            attempts: 1,
            consumer: "c".into(),
            time: parse_time("2024-01-01T00:00:00Z").unwrap(),
            stream_sequence: None,
            body_omitted: None,
        };
        let m = letter.to_message(Subject::parse("deadletter.events.c").unwrap());
        assert_eq!(m.headers.get("Nats-Msg-Id"), None);
        assert_eq!(m.headers.get("Nats-Expected-Stream"), None);
        assert_eq!(m.headers.get("ce-id"), Some("abc"));
        assert_eq!(m.headers.get("natsish"), Some("kept"));
    }

    #[test]
    fn a_message_without_dead_letter_headers_is_a_decode_error() {
        let m = Message::new(Subject::parse("a").unwrap(), &b"x"[..]);
        assert_eq!(
            DeadLetter::from_message(&m).unwrap_err().kind(),
            crate::ErrorKind::Decode
        );
    }
}
