//! The NATS backend's received-header conversion (`from_nats_headers`,
//! reached through the `#[doc(hidden)]` hook `__fuzz_from_nats_headers`).
//!
//! The input is what a subscriber's client reads after `HMSG`: two bytes
//! (big-endian) giving the header block's length, the header block, then the
//! body. The block is parsed the way async-nats 0.51 parses it
//! (`NATS/1.0` line, `name: value` lines, continuation lines), so the header
//! maps built here are the ones a real connection can hand us; blocks
//! async-nats itself refuses are skipped.
//!
//! Invariant: every header map async-nats produces converts without panic or
//! error and keeps every header in order (a value our `Headers` refuse, such
//! as one with a NUL byte, percent-encoded; a header with an empty name
//! dropped), and the message then decodes like any other (no panic, typed
//! error or a round-tripping event).
#![no_main]

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use events::backend::nats::__fuzz_from_nats_headers;
use events::transport::Message;
use libfuzzer_sys::fuzz_target;

/// The header map async-nats builds from `block`, or `None` where it would
/// fail the read (and drop the connection) instead.
fn parse_like_async_nats(block: &[u8]) -> Option<HeaderMap> {
    let mut lines = std::str::from_utf8(block).ok()?.lines().peekable();
    lines.next()?.strip_prefix("NATS/1.0")?;
    let mut map = HeaderMap::new();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_str(name).ok()?;
        let mut value = value.trim_start().to_owned();
        while let Some(more) = lines.next_if(|s| s.starts_with(char::is_whitespace)) {
            value.push_str(more);
        }
        value.truncate(value.trim_end().len());
        // async-nats makes the value with `HeaderValue::from(String)`, which
        // panics on a CR left inside a line (`lines()` splits on LF only):
        // that panic is in the client's connection task, not in our code.
        // Such blocks are skipped here.
        let value = HeaderValue::from_str(&value).ok()?;
        map.append(name, value);
    }
    Some(map)
}

fuzz_target!(|input: &[u8]| {
    let Some((len, rest)) = input.split_first_chunk::<2>() else {
        return;
    };
    let header_len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (block, body) = rest.split_at(header_len);
    let Some(map) = parse_like_async_nats(block) else {
        return;
    };
    let originals: Vec<(String, String)> = map
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect();
    let headers = __fuzz_from_nats_headers(Some(&map)).unwrap_or_else(|e| {
        panic!("a header map async-nats accepts was refused: {e}; headers {originals:?}")
    });
    // The one name async-nats accepts and `Headers` refuse, the empty one
    // (a `: value` line), is dropped; everything else is kept.
    let originals: Vec<_> = originals
        .into_iter()
        .filter(|(name, _)| !name.is_empty())
        .collect();
    let converted: Vec<(&str, &str)> = headers.iter().collect();
    assert_eq!(converted.len(), originals.len(), "headers lost or added");
    for ((name, value), (got_name, got_value)) in originals.iter().zip(&converted) {
        assert_eq!(name, got_name);
        assert!(
            value == got_value || events_fuzz::percent_encode(value) == *got_value,
            "header {name:?}: {value:?} became {got_value:?}"
        );
    }
    let mut message = Message::new(events_fuzz::subject(), Bytes::copy_from_slice(body));
    message.headers = headers;
    events_fuzz::decode_and_check(&message);
});
