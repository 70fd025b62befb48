//! Percent-encoding of header values in binary content mode.
//!
//! The NATS binding (main branch, like the HTTP and Kafka bindings) encodes
//! space, `"`, `%` and every byte outside U+0021..U+007E of the value's UTF-8
//! form as `%XX`; a decoded value must be valid UTF-8.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::error::{Error, Result};

/// Controls (which include DEL), space, `"` and `%`; the crate encodes every
/// non-ASCII byte on its own.
const ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Encodes a header value.
pub(crate) fn encode(value: &str) -> String {
    utf8_percent_encode(value, ENCODE).to_string()
}

/// Decodes a header value; invalid UTF-8 after decoding is an error.
pub(crate) fn decode(name: &str, value: &str) -> Result<String> {
    if !value.contains('%') {
        return Ok(value.to_owned());
    }
    percent_decode_str(value)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|e| {
            Error::decode(format!(
                "header {name:?}: percent-decoded value is not valid UTF-8"
            ))
            .with_source(e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_spec_test_vector() {
        assert_eq!(encode("Euro € 😀"), "Euro%20%E2%82%AC%20%F0%9F%98%80");
        assert_eq!(
            decode("ce-x", "Euro%20%E2%82%AC%20%F0%9F%98%80").unwrap(),
            "Euro € 😀"
        );
    }

    #[test]
    fn encodes_quote_percent_and_controls_and_keeps_visible_ascii() {
        assert_eq!(encode("a\"b%c\r\n\t\u{7f}"), "a%22b%25c%0D%0A%09%7F");
        let visible: String = (0x21u8..=0x7e)
            .filter(|b| !matches!(b, b'"' | b'%'))
            .map(char::from)
            .collect();
        assert_eq!(encode(&visible), visible);
    }

    #[test]
    fn rejects_invalid_utf8_such_as_an_overlong_space() {
        let err = decode("ce-subject", "%C0%A0").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Decode);
        assert!(decode("ce-subject", "%FF").is_err());
    }

    #[test]
    fn round_trips_arbitrary_text() {
        for s in [
            "",
            "plain",
            "100%",
            "\"quoted\"",
            "line\nbreak",
            "日本語",
            "tab\there",
        ] {
            let e = encode(s);
            assert!(e.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{e}");
            assert_eq!(decode("h", &e).unwrap(), s);
        }
    }
}
