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
#[derive(Clone)]
pub struct Subject(SubjectText);

/// Where a subject's text lives. Equality, order and hashing go by the text
/// alone, whichever the kind.
#[derive(Clone)]
enum SubjectText {
    Shared(Arc<str>),
    /// The subject as the NATS client received it, kept as it is: its text
    /// is already shared bytes, so copying it into an `Arc<str>` would only
    /// cost an allocation, a copy and a free per message.
    #[cfg(feature = "nats")]
    Nats(async_nats::Subject),
}

impl PartialEq for Subject {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Subject {}
impl std::hash::Hash for Subject {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}
impl PartialOrd for Subject {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Subject {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

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
        Ok(Subject::from_valid(out))
    }

    /// Parses a dotted subject, validating every token.
    pub fn parse(subject: &str) -> Result<Self> {
        Self::from_tokens(subject.split('.'))
    }

    /// A subject built from tokens the caller has already validated.
    pub(crate) fn from_valid(subject: String) -> Self {
        Subject(SubjectText::Shared(subject.into()))
    }

    /// A subject as a broker delivered it. Not validated: it only labels a
    /// received message and is never used to publish.
    pub fn received(subject: impl Into<Cow<'static, str>>) -> Self {
        Subject(SubjectText::Shared(match subject.into() {
            Cow::Borrowed(s) => Arc::from(s),
            Cow::Owned(s) => Arc::from(s),
        }))
    }

    /// [`received`](Self::received) from the NATS client, not copied.
    #[cfg(feature = "nats")]
    pub(crate) fn received_nats(subject: async_nats::Subject) -> Self {
        Subject(SubjectText::Nats(subject))
    }

    /// The subject as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            SubjectText::Shared(text) => text,
            #[cfg(feature = "nats")]
            SubjectText::Nats(subject) => subject.as_str(),
        }
    }

    /// The subject's tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.as_str().split('.')
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
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
#[derive(Clone)]
pub struct Headers(HeaderList);

/// Where the headers live: a list of our own, or the map the NATS client
/// parsed a received message's headers into, read in place (every name
/// and value in it checked, one name possibly left out). The map becomes a
/// list when it is changed.
#[derive(Clone)]
enum HeaderList {
    Owned(Vec<(Cow<'static, str>, Cow<'static, str>)>),
    #[cfg(feature = "nats")]
    /// Boxed: a message moves often, and the map is twice a list's size.
    Received(Box<Received>),
}

#[cfg(feature = "nats")]
#[derive(Clone)]
struct Received {
    map: async_nats::HeaderMap,
    /// A header name (compared case-insensitively) not among these headers.
    hidden: Option<&'static str>,
    /// How many values there are, less the hidden ones.
    len: usize,
}

#[cfg(feature = "nats")]
impl Received {
    fn iter(&self) -> ReceivedIter<'_> {
        ReceivedIter {
            entries: self.map.iter(),
            values: None,
            hidden: self.hidden,
        }
    }

    /// As `iter().find(..)`, in one plain loop (every typed receive asks).
    fn get(&self, wanted: &str) -> Option<&str> {
        for (name, values) in self.map.iter() {
            let name: &str = name.as_ref();
            if !same_name(name, wanted) || self.hidden.is_some_and(|h| same_name(name, h)) {
                continue;
            }
            if let Some(value) = values.first() {
                return Some(value.as_str());
            }
        }
        None
    }
}

/// The headers of a received map, in its order, without the hidden ones.
#[cfg(feature = "nats")]
struct ReceivedIter<'a> {
    entries:
        std::collections::hash_map::Iter<'a, async_nats::HeaderName, Vec<async_nats::HeaderValue>>,
    /// The entry being read: its name and the values left.
    values: Option<(&'a str, std::slice::Iter<'a, async_nats::HeaderValue>)>,
    hidden: Option<&'static str>,
}

#[cfg(feature = "nats")]
impl<'a> Iterator for ReceivedIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((name, values)) = &mut self.values {
                if let Some(value) = values.next() {
                    return Some((name, value.as_str()));
                }
            }
            let (name, values) = self.entries.next()?;
            let name: &str = name.as_ref();
            if !self.hidden.is_some_and(|h| same_name(name, h)) {
                self.values = Some((name, values.iter()));
            }
        }
    }
}

/// The iterator of [`Headers::iter`].
enum HeadersIter<'a> {
    Owned(std::slice::Iter<'a, (Cow<'static, str>, Cow<'static, str>)>),
    #[cfg(feature = "nats")]
    Received(ReceivedIter<'a>),
}

impl<'a> Iterator for HeadersIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            HeadersIter::Owned(list) => list.next().map(|(n, v)| (n.as_ref(), v.as_ref())),
            #[cfg(feature = "nats")]
            HeadersIter::Received(received) => received.next(),
        }
    }
}

impl Default for Headers {
    fn default() -> Self {
        Headers::new()
    }
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(HeaderList::Owned(Vec::new()))
    }

    /// Room for `n` headers, reserved up front for at most
    /// [`MAX_RESERVED`](Self::MAX_RESERVED) (more still fit: the list
    /// grows). A larger reservation would only risk an allocation failure
    /// (`usize::MAX` panics), for headers no message carries.
    pub fn with_capacity(n: usize) -> Self {
        Headers(HeaderList::Owned(Vec::with_capacity(
            n.min(Self::MAX_RESERVED),
        )))
    }

    /// The most headers [`with_capacity`](Self::with_capacity) reserves
    /// room for.
    pub const MAX_RESERVED: usize = 1024;

    /// Headers the NATS client received, read in place, without the ones
    /// called `hidden`, and the first value of those; the map back when
    /// some name or value is not one [`Headers`] accepts as it is.
    #[cfg(feature = "nats")]
    pub(crate) fn received(
        map: async_nats::HeaderMap,
        hidden: Option<&'static str>,
    ) -> std::result::Result<(Self, Option<String>), async_nats::HeaderMap> {
        let mut len = 0;
        let mut hidden_value = None;
        for (name, values) in map.iter() {
            let name: &str = name.as_ref();
            if !is_header_name_fast(name)
                || values.iter().any(|v| !is_header_value_fast(v.as_str()))
            {
                return Err(map);
            }
            if hidden.is_some_and(|h| same_name(name, h)) {
                if hidden_value.is_none() {
                    hidden_value = values.first().map(|v| v.as_str().to_owned());
                }
            } else {
                len += values.len();
            }
        }
        Ok((
            Headers(HeaderList::Received(Box::new(Received {
                map,
                hidden,
                len,
            }))),
            hidden_value,
        ))
    }

    /// The list, made from the received map first if need be.
    fn owned(&mut self) -> &mut Vec<(Cow<'static, str>, Cow<'static, str>)> {
        #[cfg(feature = "nats")]
        if let HeaderList::Received(received) = &self.0 {
            let list = received
                .iter()
                .map(|(n, v)| (Cow::Owned(n.to_owned()), Cow::Owned(v.to_owned())))
                .collect();
            self.0 = HeaderList::Owned(list);
        }
        match &mut self.0 {
            HeaderList::Owned(list) => list,
            #[cfg(feature = "nats")]
            HeaderList::Received(_) => unreachable!("made a list just above"),
        }
    }

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
        self.owned().push((name, value));
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
        self.owned().push((name, value));
    }

    /// The first value of `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        match &self.0 {
            HeaderList::Owned(list) => list
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_ref()),
            #[cfg(feature = "nats")]
            HeaderList::Received(received) => received.get(name),
        }
    }

    /// Removes every header called `name`.
    pub fn remove(&mut self, name: &str) {
        self.owned().retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// All headers in order, names and values as stored (the names the
    /// crate writes are borrowed `'static` text); `None` for headers read
    /// in place from a received message.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn entries(&self) -> Option<&[(Cow<'static, str>, Cow<'static, str>)]> {
        match &self.0 {
            HeaderList::Owned(list) => Some(list),
            #[cfg(feature = "nats")]
            HeaderList::Received(_) => None,
        }
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        match &self.0 {
            HeaderList::Owned(list) => HeadersIter::Owned(list.iter()),
            #[cfg(feature = "nats")]
            HeaderList::Received(received) => HeadersIter::Received(received.iter()),
        }
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        match &self.0 {
            HeaderList::Owned(list) => list.len(),
            #[cfg(feature = "nats")]
            HeaderList::Received(received) => received.len,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes these headers take on the NATS wire (`NATS/1.0\r\n`, one
    /// `name: value\r\n` line each, the closing `\r\n`), which count against
    /// the server's payload limit.
    // Without `nats` the list is the only kind of headers.
    #[cfg_attr(not(feature = "nats"), allow(irrefutable_let_patterns))]
    pub fn wire_len(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        if let HeaderList::Owned(list) = &self.0 {
            return 10
                + list
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 4)
                    .sum::<usize>()
                + 2;
        }
        10 + self
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + 2
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl Eq for Headers {}

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

/// `a.eq_ignore_ascii_case(b)` eight bytes at a time (every received
/// message's headers are looked up by name).
#[cfg(feature = "nats")]
fn same_name(a: &str, b: &str) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    // `x` with its ASCII capitals made small, as `u8::to_ascii_lowercase`
    // does each byte: the sums never carry out of a byte, and a byte with
    // its high bit set (not ASCII) is left as it is.
    let lower = |x: u64| {
        let low7 = x & !HIGHS;
        let from_a = low7 + ONES * u64::from(0x80 - b'A');
        let past_z = low7 + ONES * u64::from(0x7f - b'Z');
        let capital = from_a & !past_z & !x & HIGHS;
        x | (capital >> 2)
    };
    if a.len() != b.len() {
        return false;
    }
    let (mut xs, mut ys) = (a.as_bytes().chunks_exact(8), b.as_bytes().chunks_exact(8));
    for (x, y) in (&mut xs).zip(&mut ys) {
        let mut words = ([0; 8], [0; 8]);
        words.0.copy_from_slice(x);
        words.1.copy_from_slice(y);
        if lower(u64::from_le_bytes(words.0)) != lower(u64::from_le_bytes(words.1)) {
            return false;
        }
    }
    xs.remainder().eq_ignore_ascii_case(ys.remainder())
}

/// [`is_header_name`] eight bytes at a time (the names of every received
/// message are checked). Each test below tells exactly whether some byte of
/// the word is out of range; which byte it flags may be off, but only the
/// yes/no answer is used.
#[cfg(feature = "nats")]
fn is_header_name_fast(name: &str) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    // Whether some byte of `x` is below `n` (`n` at most 128).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS != 0;
    // Whether some byte of `x` is above 0x7e (a DEL or a non-ASCII byte).
    let above = |x: u64| (x.wrapping_add(ONES) | x) & HIGHS != 0;
    let mut chunks = name.as_bytes().chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        if below(x, 0x21) | above(x) | below(x ^ (ONES * u64::from(b':')), 1) {
            return false;
        }
    }
    !name.is_empty()
        && chunks
            .remainder()
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b':')
}

/// [`is_header_value`] eight bytes at a time (the values of every received
/// message are checked).
#[cfg(feature = "nats")]
fn is_header_value_fast(value: &str) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    // Whether some byte of `x` is zero.
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    let mut chunks = value.as_bytes().chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        if zero_byte(x)
            | zero_byte(x ^ (ONES * u64::from(b'\r')))
            | zero_byte(x ^ (ONES * u64::from(b'\n')))
        {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|b| !matches!(b, b'\r' | b'\n' | 0))
}

/// Whether `value` is a header value [`Headers`] accepts.
fn is_header_value(value: &str) -> bool {
    !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

fn check_header_value(name: &str, value: &str) -> Result<()> {
    if !is_header_value(value) {
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

    #[cfg(feature = "nats")]
    #[test]
    fn the_word_wise_value_check_agrees_with_the_plain_one() {
        for b in 0..0x80u8 {
            for len in 1..20 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let text = String::from_utf8(bytes).unwrap();
                    assert_eq!(
                        is_header_value_fast(&text),
                        is_header_value(&text),
                        "{b} at {at} of {len}"
                    );
                }
            }
        }
        assert!(is_header_value_fast(""));
        assert!(is_header_value_fast("\u{e9}\u{80}\u{ff}\u{100}\u{2028}x"));
    }

    #[cfg(feature = "nats")]
    #[test]
    fn the_word_wise_name_comparison_agrees_with_the_plain_one() {
        // Every byte against every byte (as text: each single-byte character,
        // and a multi-byte one cut into the same length) at every place of
        // names up to 19 bytes.
        let texts = |len: usize, at: usize| {
            let mut out: Vec<String> = (0..0x80u8)
                .map(|c| {
                    let mut bytes = vec![b'k'; len];
                    bytes[at] = c;
                    String::from_utf8(bytes).unwrap()
                })
                .collect();
            if at + 2 <= len {
                for wide in ["\u{e9}", "\u{c9}", "\u{17f}", "\u{80}"] {
                    let mut text = "k".repeat(at);
                    text.push_str(wide);
                    text.push_str(&"k".repeat(len - at - 2));
                    out.push(text);
                }
            }
            out
        };
        for len in 1..20 {
            for at in 0..len {
                let all = texts(len, at);
                for a in &all {
                    for b in &all {
                        assert_eq!(same_name(a, b), a.eq_ignore_ascii_case(b), "{a:?} {b:?}");
                    }
                }
            }
        }
        assert!(same_name("Content-Type", "content-type"));
        assert!(same_name("NATS-MSG-ID", "Nats-Msg-Id"));
        assert!(!same_name("Nats-Msg-Id", "Nats-Msg-Ie"));
        assert!(!same_name("ab", "abc"));
        assert!(same_name("", ""));
    }

    #[cfg(feature = "nats")]
    #[test]
    fn the_word_wise_name_check_agrees_with_the_plain_one() {
        // Every single-byte character (and a few wider ones) at every place
        // of names up to 19 bytes, on a background of each edge of the
        // accepted range.
        let odd = ["\u{e9}", "\u{7f}", "\u{ff}", "\u{100}", "\u{2028}"];
        for background in [b'a', b'!', b'~', b'9'] {
            for len in 1..20 {
                for at in 0..len {
                    let mut names: Vec<String> = (0..0x80u8)
                        .map(|b| {
                            let mut bytes = vec![background; len];
                            bytes[at] = b;
                            String::from_utf8(bytes).unwrap()
                        })
                        .collect();
                    for wide in odd {
                        let before = String::from_utf8(vec![background; at]).unwrap();
                        let after = String::from_utf8(vec![background; len - at]).unwrap();
                        names.push(format!("{before}{wide}{after}"));
                    }
                    for name in names {
                        assert_eq!(
                            is_header_name_fast(&name),
                            is_header_name(&name),
                            "{name:?}"
                        );
                    }
                }
            }
        }
        assert!(!is_header_name_fast(""));
    }

    #[test]
    fn received_subjects_compare_by_text() {
        let ours = s("a.b");
        let received = Subject::received("a.b");
        assert_eq!(ours, received);
        #[cfg(feature = "nats")]
        {
            let nats = Subject::received_nats(async_nats::Subject::from_static("a.b"));
            assert_eq!(nats, ours);
            assert_eq!(nats.as_str(), "a.b");
            assert_eq!(format!("{nats:?}"), format!("{ours:?}"));
            use std::hash::BuildHasher;
            let state = std::collections::hash_map::RandomState::new();
            assert_eq!(state.hash_one(&nats), state.hash_one(&ours));
            assert!(nats < s("a.c"));
        }
    }

    #[test]
    fn headers_take_no_more_room_in_a_message_than_a_list() {
        assert_eq!(
            std::mem::size_of::<Headers>(),
            std::mem::size_of::<Vec<(Cow<'static, str>, Cow<'static, str>)>>()
        );
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
