//! Byte-level messages: subject, headers, body.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::envelope::validate_subject_token;
use crate::error::{Error, Result};

/// A concrete NATS-style subject: dot-separated tokens, no wildcards.
///
/// Subjects we build are made only of validated tokens
/// (`[A-Za-z0-9_-]+`); subjects received from a broker are taken as they are.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Arc<str>);

impl Subject {
    /// Joins validated tokens with dots.
    ///
    /// ```
    /// use events::transport::Subject;
    /// let s = Subject::from_tokens(["events", "orders", "placed"]).unwrap();
    /// assert_eq!(s.as_str(), "events.orders.placed");
    /// assert!(Subject::from_tokens(["events", "*"]).is_err());
    /// ```
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut out = String::new();
        for token in tokens {
            validate_subject_token(token)?;
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(token);
        }
        if out.is_empty() {
            return Err(Error::invalid("a subject needs at least one token"));
        }
        Ok(Subject(out.into()))
    }

    /// Parses a dotted subject, validating every token.
    pub fn parse(subject: &str) -> Result<Self> {
        Self::from_tokens(subject.split('.'))
    }

    /// A subject built from tokens the caller has already validated.
    pub(crate) fn from_valid(subject: String) -> Self {
        Subject(subject.into())
    }

    /// A subject as a broker delivered it. Not validated: it only labels a
    /// received message and is never used to publish.
    pub fn received(subject: impl Into<Cow<'static, str>>) -> Self {
        Subject(match subject.into() {
            Cow::Borrowed(s) => Arc::from(s),
            Cow::Owned(s) => Arc::from(s),
        })
    }

    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject's tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A subscription pattern: tokens, `*` (exactly one token) and a final `>`
/// (one or more tokens), with NATS semantics.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SubjectPattern(String);

impl SubjectPattern {
    /// Parses and validates a pattern such as `events.orders.*` or
    /// `events.>`.
    ///
    /// ```
    /// use events::transport::{Subject, SubjectPattern};
    /// let p = SubjectPattern::parse("events.orders.>").unwrap();
    /// assert!(p.matches(&Subject::parse("events.orders.placed").unwrap()));
    /// assert!(!p.matches(&Subject::parse("events.orders").unwrap()));
    /// assert!(SubjectPattern::parse("events.>.x").is_err());
    /// ```
    pub fn parse(pattern: &str) -> Result<Self> {
        let mut tokens = pattern.split('.').peekable();
        while let Some(token) = tokens.next() {
            match token {
                "*" => {}
                ">" if tokens.peek().is_none() => {}
                ">" => {
                    return Err(Error::invalid(format!(
                        "pattern {pattern:?}: `>` must be the last token"
                    )))
                }
                other => validate_subject_token(other)
                    .map_err(|e| Error::invalid(format!("pattern {pattern:?}: {}", e.detail())))?,
            }
        }
        Ok(SubjectPattern(pattern.to_owned()))
    }

    /// The pattern that matches exactly `subject`.
    pub fn exact(subject: &Subject) -> Self {
        SubjectPattern(subject.as_str().to_owned())
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern contains a wildcard.
    pub fn has_wildcards(&self) -> bool {
        self.0.split('.').any(|t| t == "*" || t == ">")
    }

    /// Whether `subject` matches this pattern.
    pub fn matches(&self, subject: &Subject) -> bool {
        let mut subject_tokens = subject.tokens();
        for pattern_token in self.0.split('.') {
            match (pattern_token, subject_tokens.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (p, Some(s)) if p == s => {}
                _ => return false,
            }
        }
        subject_tokens.next().is_none()
    }
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Message headers: an ordered list of name/value pairs, names compared
/// case-insensitively.
///
/// Every value that goes in has been checked: names are visible ASCII
/// without `:`, values contain no CR, LF or NUL. So a header can never split
/// a NATS protocol line, whatever the user data.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Cow<'static, str>, Cow<'static, str>)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// Room for `n` headers, reserved up front for at most
    /// [`MAX_RESERVED`](Self::MAX_RESERVED) (more still fit: the list
    /// grows). A larger reservation would only risk an allocation failure
    /// (`usize::MAX` panics), for headers no message carries.
    pub fn with_capacity(n: usize) -> Self {
        Headers(Vec::with_capacity(n.min(Self::MAX_RESERVED)))
    }

    /// The most headers [`with_capacity`](Self::with_capacity) reserves
    /// room for.
    pub const MAX_RESERVED: usize = 1024;

    /// Appends a header after checking name and value.
    pub fn append(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Result<()> {
        let name = name.into();
        let value = value.into();
        check_header_name(&name)?;
        check_header_value(&name, &value)?;
        self.0.push((name, value));
        Ok(())
    }

    /// Sets a header, replacing any value of the same name.
    pub fn insert(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Result<()> {
        let name = name.into();
        self.remove(&name);
        self.append(name, value)
    }

    /// Appends a header the crate built from already-safe text (percent
    /// encoded values, static names).
    pub(crate) fn push_trusted(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) {
        let name = name.into();
        let value = value.into();
        debug_assert!(
            check_header_name(&name).is_ok() && check_header_value(&name, &value).is_ok()
        );
        self.0.push((name, value));
    }

    /// The first value of `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// Removes every header called `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// All headers in order, names and values as stored (the names the
    /// crate writes are borrowed `'static` text).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn entries(&self) -> &[(Cow<'static, str>, Cow<'static, str>)] {
        &self.0
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes these headers take on the NATS wire (`NATS/1.0\r\n`, one
    /// `name: value\r\n` line each, the closing `\r\n`), which count against
    /// the server's payload limit.
    pub fn wire_len(&self) -> usize {
        if self.0.is_empty() {
            return 0;
        }
        10 + self
            .0
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + 2
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Whether `name` is a header name [`Headers`] accepts.
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

fn check_header_name(name: &str) -> Result<()> {
    if is_header_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "header name {name:?} must be visible ASCII without ':'"
        )))
    }
}

fn check_header_value(name: &str, value: &str) -> Result<()> {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Err(Error::invalid(format!(
            "header {name:?}: value must not contain CR, LF or NUL"
        )))
    } else {
        Ok(())
    }
}

/// A message as a transport carries it.
///
/// Made with [`new`](Self::new); the fields are public to read and set, and
/// new ones may be added (the struct is `#[non_exhaustive]`).
///
/// ```
/// use events::transport::{Message, Subject};
///
/// let mut message = Message::new(Subject::parse("events.orders.placed")?, &b"{}"[..]);
/// message.headers.append("content-type", "application/json")?;
/// message.dedup_id = Some("order-1".into());
/// # Ok::<(), events::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Where it is published.
    pub subject: Subject,
    /// Headers (CloudEvents attributes in binary mode, `Content-Type` in
    /// structured mode).
    pub headers: Headers,
    /// The body.
    pub payload: Bytes,
    /// A publish idempotency key: transports with publish deduplication
    /// (JetStream's `Nats-Msg-Id`) store a message only once per key within
    /// their window. The typed bus sets it to the event id.
    pub dedup_id: Option<String>,
}

impl Message {
    /// A message without headers.
    pub fn new(subject: Subject, payload: impl Into<Bytes>) -> Self {
        Message {
            subject,
            headers: Headers::new(),
            payload: payload.into(),
            dedup_id: None,
        }
    }

    /// The size the message takes against a broker's payload limit: headers
    /// on the wire plus the body.
    pub fn wire_len(&self) -> usize {
        self.headers.wire_len() + self.payload.len()
    }
}

impl fmt::Debug for Message {
    // The body is user data and may be large or sensitive: print its length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("subject", &self.subject)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .field("dedup_id", &self.dedup_id)
            .finish()
    }
}

/// Outside the crate, a message is not written as a literal (new fields
/// may come); one must not compile:
///
/// ```compile_fail,E0639
/// use events::transport::{Headers, Message, Subject};
/// let message = Message {
///     subject: Subject::parse("a").unwrap(),
///     headers: Headers::new(),
///     payload: bytes::Bytes::new(),
///     dedup_id: None,
/// };
/// ```
#[allow(dead_code)]
const NON_EXHAUSTIVE: () = ();

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Subject {
        Subject::parse(x).unwrap()
    }

    #[test]
    fn patterns_follow_nats_wildcard_semantics() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b.c", false),
            ("a.*.c", "a.x.c", true),
            ("a.*", "a.x.y", false),
            ("a.>", "a.x.y", true),
            ("a.>", "a", false),
            (">", "a", true),
            ("*", "a.b", false),
            ("*.b.>", "a.b.c.d", true),
        ];
        for (pattern, subject, expected) in cases {
            let p = SubjectPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(&s(subject)), expected, "{pattern} vs {subject}");
        }
    }

    #[test]
    fn invalid_patterns_and_subjects_are_rejected() {
        for bad in ["", "a..b", "a.>.b", "a b", "a.$x", "a.b\r\n"] {
            assert!(SubjectPattern::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "a..b", "a.*", "a.>", " a", "a.b."] {
            assert!(Subject::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_reject_line_breaks_and_bad_names() {
        let mut h = Headers::new();
        assert!(h.append("x-ok", "fine value").is_ok());
        assert!(h.append("x-bad", "a\r\nInjected: 1").is_err());
        assert!(h.append("x-bad", "a\nb").is_err());
        assert!(h.append("bad name", "v").is_err());
        assert!(h.append("bad:name", "v").is_err());
        assert!(h.append("", "v").is_err());
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_insert_replaces() {
        let mut h = Headers::new();
        h.append("Content-Type", "a").unwrap();
        assert_eq!(h.get("content-type"), Some("a"));
        h.insert("CONTENT-TYPE", "b").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("Content-Type"), Some("b"));
    }

    #[test]
    fn any_capacity_is_a_hint() {
        let mut h = Headers::with_capacity(usize::MAX);
        h.append("a", "b").unwrap();
        assert_eq!(h.len(), 1);
        assert!(Headers::with_capacity(0).is_empty());
    }

    #[test]
    fn wire_len_counts_the_nats_header_block() {
        let mut h = Headers::new();
        assert_eq!(h.wire_len(), 0);
        h.append("a", "b").unwrap();
        // "NATS/1.0\r\n" + "a: b\r\n" + "\r\n"
        assert_eq!(h.wire_len(), 10 + 6 + 2);
    }

    #[test]
    fn message_debug_hides_the_body() {
        let m = Message::new(s("a.b"), &b"secret-card-number"[..]);
        let text = format!("{m:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("payload_len: 18"), "{text}");
    }
}
