//! Percent-encoding of header values: CloudEvents attributes in binary
//! content mode (used by [`crate::wire`]), the crate's own dead-letter
//! headers, and received header values the [`Headers`](super::Headers)
//! type refuses (used by the NATS backends). It lives here, at the bottom,
//! so that both layers use it without a backend depending on `wire`.
//!
//! The NATS binding (main branch, like the HTTP and Kafka bindings) encodes
//! space, `"`, `%` and every byte outside U+0021..U+007E of the value's UTF-8
//! form as `%XX`; a decoded value must be valid UTF-8. A receiver first
//! unescapes double-quoted strings (RFC 7230, section 3.2.6), which encoders
//! following older versions of the binding wrote instead of percent-encoding
//! space and `"`; what this crate writes never contains a `"` to unescape.

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

/// Decodes the header value of a CloudEvents attribute: double-quoted
/// strings unescaped, then one round of percent-decoding ([`decode`]).
pub(crate) fn decode_attribute(name: &str, value: &str) -> Result<String> {
    if !has_quote_or_percent(value.as_bytes()) {
        return Ok(value.to_owned());
    }
    if value.contains('"') {
        decode(name, &unquote(name, value)?)
    } else {
        decode(name, value)
    }
}

/// Whether `value` has a `"` or a `%`, eight bytes at a time: it runs for
/// every header of every binary-mode event, nearly all of which have
/// neither. A search per character (`contains('"')`, then
/// `contains('%')`) added 6% to decoding such an event, a byte loop as much.
fn has_quote_or_percent(value: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const PERCENTS: u64 = u64::from_ne_bytes([b'%'; 8]);
    // Whether any byte of `x` is zero (exact, whatever the other bytes).
    let has_zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH_BITS != 0;
    let mut chunks = value.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word);
        if has_zero_byte(x ^ QUOTES) || has_zero_byte(x ^ PERCENTS) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| matches!(b, b'"' | b'%'))
}

/// Replaces each double-quoted string in `value` by its content, a
/// backslash taking the character after it literally. Outside quotes every
/// character is kept, a backslash too. An unterminated string is an error:
/// where it ends, and so what the value is, cannot be known.
fn unquote(name: &str, value: &str) -> Result<String> {
    let mut out = String::with_capacity(value.len());
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => match chars.next() {
                Some(escaped) => out.push(escaped),
                // Still inside the string: refused below.
                None => break,
            },
            c => out.push(c),
        }
    }
    if quoted {
        return Err(Error::decode(format!(
            "header {name:?}: unterminated double-quoted string"
        )));
    }
    Ok(out)
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
    fn unquotes_double_quoted_strings_before_percent_decoding() {
        for (value, decoded) in [
            ("\"hello world\"", "hello world"),
            ("\"a\\\"b\\\\c\"", "a\"b\\c"),
            ("a\\b", "a\\b"),
            ("k=\"v w\";x", "k=v w;x"),
            ("\"%41%20\"%42", "A B"),
            ("\"\"", ""),
        ] {
            assert_eq!(decode_attribute("ce-x", value).unwrap(), decoded, "{value}");
        }
        for bad in [
            "\"open",
            "\"escape at the end\\",
            "one \" quote",
            "\"%C0%A0\"",
        ] {
            let err = decode_attribute("ce-x", bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Decode, "{bad}");
        }
        // Dead-letter headers are the crate's own: percent-decoding only.
        assert_eq!(decode("dead-letter-error", "\"x\"").unwrap(), "\"x\"");
    }

    #[test]
    fn finds_a_quote_or_a_percent_at_any_position() {
        for len in 0..40 {
            let plain = vec![b'a'; len];
            assert!(!has_quote_or_percent(&plain), "{len}");
            for at in 0..len {
                for needle in [b'"', b'%'] {
                    let mut v = plain.clone();
                    v[at] = needle;
                    assert!(has_quote_or_percent(&v), "{len} {at} {needle}");
                }
                // Neighbours of the needles, and bytes that borrow in the
                // zero-byte test, are not needles.
                for other in [b'!', b'#', b'$', b'&', 0x00, 0x80, 0xff, 0x01] {
                    let mut v = plain.clone();
                    v[at] = other;
                    assert!(!has_quote_or_percent(&v), "{len} {at} {other}");
                }
            }
        }
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
