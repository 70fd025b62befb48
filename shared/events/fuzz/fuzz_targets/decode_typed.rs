//! Decoding into a versioned Rust type: arbitrary messages (a structured
//! body, or a NATS header block and body in binary mode) decoded into
//! `OrderPlaced` v2, through the v1 -> v2 upcaster, under either version
//! policy.
//!
//! Invariant: no panic; a typed error (`Decode`, `UnsupportedVersion`,
//! `MissingUpcaster`); or an event of today's version that, re-encoded,
//! decodes to the same event. And `wire::decode_event` (one pass over a
//! structured body where it can, as typed subscriptions and the consumer
//! runtime decode) gives what the general path gives: the same event, or
//! an error of the same kind.
#![no_main]

use arbitrary::Arbitrary;
use events::versioning::VersionPolicy;
use events::wire::{self, Codec, ContentMode};
use events::{ErrorKind, EventPayload};
use events_fuzz::{assert_same_metadata, upcasters, OrderPlaced};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// `VersionPolicy::Tolerant` instead of `Reject`.
    tolerant: bool,
    /// `bytes` is a header block and body (binary mode) rather than a
    /// structured body.
    header_block: bool,
    /// Re-encode in binary mode rather than structured.
    reencode_binary: bool,
    bytes: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let message = if input.header_block {
        events_fuzz::message_from_block(input.bytes)
    } else {
        events_fuzz::structured_message(input.bytes)
    };
    let policy = if input.tolerant {
        VersionPolicy::Tolerant
    } else {
        VersionPolicy::Reject
    };
    let one_pass = wire::decode_event::<OrderPlaced>(&message, upcasters(), policy);
    let Some(raw) = events_fuzz::decode_and_check(&message) else {
        assert!(
            one_pass.is_err(),
            "the one-pass decode read a message the general decode refuses"
        );
        return;
    };
    let sent_version = raw.metadata.version();
    let decoded = match raw.into_event::<OrderPlaced>(upcasters(), policy) {
        Ok(decoded) => decoded,
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Decode | ErrorKind::UnsupportedVersion | ErrorKind::MissingUpcaster
                ),
                "untyped error from into_event: {e}"
            );
            assert_eq!(
                one_pass.err().map(|e| e.kind()),
                Some(e.kind()),
                "the one-pass decode disagrees with the general one"
            );
            return;
        }
    };
    assert_eq!(
        one_pass.ok(),
        Some(decoded.clone()),
        "the one-pass decode disagrees with the general one"
    );
    assert_eq!(decoded.wire_version, sent_version);
    assert_eq!(decoded.event.metadata.version(), OrderPlaced::VERSION);
    assert_eq!(decoded.event.metadata.event_type(), OrderPlaced::TYPE);
    assert!(
        sent_version <= OrderPlaced::VERSION || input.tolerant,
        "a newer version passed the Reject policy"
    );

    let mode = if input.reencode_binary {
        ContentMode::Binary
    } else {
        ContentMode::Structured
    };
    let message = match Codec::default().encode(&decoded.event, mode) {
        Ok(message) => message,
        Err(e) => {
            assert!(
                matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Encode),
                "untyped encode error: {e}"
            );
            return;
        }
    };
    let again = wire::decode(&message)
        .and_then(|raw| raw.into_event::<OrderPlaced>(upcasters(), VersionPolicy::Reject))
        .unwrap_or_else(|e| {
            panic!(
                "a decoded event re-encoded in {mode:?} mode does not decode: {e}\n\
                 event: {:?}",
                decoded.event
            )
        });
    assert_eq!(again.wire_version, OrderPlaced::VERSION);
    assert_eq!(
        again.event.payload, decoded.event.payload,
        "payload changed"
    );
    assert_same_metadata(&decoded.event.metadata, &again.event.metadata, mode);
});
