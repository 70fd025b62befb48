//! The crate's error type.
//!
//! There is one [`Error`] for every operation. What went wrong is told by its
//! [`ErrorKind`], which callers match on; [`Error::is_retryable`] answers the
//! question a retry loop asks. The human-readable detail never repeats the
//! underlying cause: walk [`std::error::Error::source`] for that.

use std::borrow::Cow;
use std::fmt;

/// A boxed error from a lower layer (a broker client, serde, I/O).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a caller would match on it.
///
/// New kinds may be added in minor releases, so matches need a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Input was rejected before any I/O: a type name, subject token,
    /// extension name, header value or configuration value is not valid.
    InvalidInput,
    /// The encoded message (headers and body) is larger than the transport
    /// accepts.
    PayloadTooLarge,
    /// A payload could not be serialized.
    Encode,
    /// Bytes received could not be decoded into an event: not CloudEvents,
    /// missing required attributes, malformed JSON or headers, or a payload
    /// that does not match the expected type.
    Decode,
    /// The event's major version is newer than the consumer knows, and its
    /// version policy rejects it.
    UnsupportedVersion,
    /// An older version could not be brought up to date: an upcaster in the
    /// chain is missing or failed.
    MissingUpcaster,
    /// A backend lacks a capability the caller asked for.
    Unsupported,
    /// The broker cannot take the request now (disconnected, buffers full,
    /// bounded wait elapsed). Retrying later may succeed.
    Unavailable,
    /// The bus or subscription was closed.
    Closed,
    /// The server refused the credentials (token, password, NKey, creds
    /// file) or the TLS identity (client certificate) the client presented.
    /// Not retryable: the configuration, or the server's, must change.
    Unauthorized,
    /// The broker reported an error not covered by another kind, or the
    /// connection to it failed for a reason waiting does not fix (such as
    /// a TLS handshake the client gave up on because it does not trust the
    /// server's certificate).
    Backend,
}

impl ErrorKind {
    /// A short, lowercase description of the kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::PayloadTooLarge => "payload too large",
            ErrorKind::Encode => "encode failed",
            ErrorKind::Decode => "decode failed",
            ErrorKind::UnsupportedVersion => "unsupported event version",
            ErrorKind::MissingUpcaster => "missing upcaster",
            ErrorKind::Unsupported => "unsupported by this backend",
            ErrorKind::Unavailable => "broker unavailable",
            ErrorKind::Closed => "closed",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Backend => "backend error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every fallible operation in this crate.
///
/// Display prints the kind and a detail (`invalid input: extension name
/// "Bad" must match [a-z0-9]{1,20}`); the cause, if any, is only reachable
/// through [`source`](std::error::Error::source), so an error report that
/// walks the chain prints each message once.
#[derive(Debug, thiserror::Error)]
#[error("{kind}{}{detail}", if detail.is_empty() { "" } else { ": " })]
pub struct Error {
    kind: ErrorKind,
    detail: Cow<'static, str>,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` with a detail message.
    pub fn new(kind: ErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            detail: detail.into(),
            source: None,
        }
    }

    /// Attaches the lower-level cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The detail message, without the kind and without the source.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Whether the same operation may succeed if tried again later, unchanged.
    ///
    /// Only [`ErrorKind::Unavailable`] is: every other kind either depends on
    /// the input (which a retry does not change) or on a state (closed) that
    /// does not heal by itself.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable)
    }

    pub(crate) fn invalid(detail: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::InvalidInput, detail)
    }

    pub(crate) fn decode(detail: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Decode, detail)
    }

    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn closed(detail: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Closed, detail)
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn display_of_every_kind_is_lowercase_and_has_no_period() {
        let kinds = [
            ErrorKind::InvalidInput,
            ErrorKind::PayloadTooLarge,
            ErrorKind::Encode,
            ErrorKind::Decode,
            ErrorKind::UnsupportedVersion,
            ErrorKind::MissingUpcaster,
            ErrorKind::Unsupported,
            ErrorKind::Unavailable,
            ErrorKind::Closed,
            ErrorKind::Unauthorized,
            ErrorKind::Backend,
        ];
        for kind in kinds {
            let text = Error::from(kind).to_string();
            assert_eq!(text, kind.as_str());
            assert_eq!(text, text.to_lowercase(), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }

    #[test]
    fn display_does_not_repeat_the_source() {
        let cause = std::io::Error::other("socket closed by peer");
        let err =
            Error::new(ErrorKind::Unavailable, "publish to `events.a` failed").with_source(cause);
        assert_eq!(
            err.to_string(),
            "broker unavailable: publish to `events.a` failed"
        );
        assert_eq!(err.source().unwrap().to_string(), "socket closed by peer");
    }

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(Error::from(ErrorKind::Unavailable).is_retryable());
        assert!(!Error::from(ErrorKind::Decode).is_retryable());
        assert!(!Error::from(ErrorKind::Closed).is_retryable());
        assert!(!Error::from(ErrorKind::InvalidInput).is_retryable());
        assert!(!Error::from(ErrorKind::Unauthorized).is_retryable());
    }
}
