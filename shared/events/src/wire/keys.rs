//! The entity key in the NATS subject: what lets a broker route every event
//! of one key to one partition.
//!
//! With keys in subjects (see [`Codec::with_keys_in_subjects`]) an event is
//! published on `<prefix>.<key token>.<type>`. The key token is the event's
//! CloudEvents `subject` (its entity key) when that is a safe subject
//! token, and a hash of it otherwise, so no key can change which subjects a
//! message reaches:
//!
//! | key | token |
//! |---|---|
//! | none | `_` |
//! | 1 to 64 characters of `[A-Za-z0-9-]`, then `[A-Za-z0-9_-]` | the key itself |
//! | anything else (dots, spaces, `*`, `>`, non-ASCII, longer, or a leading `_`) | `_` and 16 hex digits of its 64-bit FNV-1a hash |
//!
//! A leading `_` is kept for the other two forms, so a key never reads as
//! a hash or as "no key". Two keys whose hashes collide share a token (and
//! a partition): order still holds per key, as the consumer orders by the
//! CloudEvents subject itself.
//!
//! [`Codec::with_keys_in_subjects`]: super::Codec::with_keys_in_subjects

use std::borrow::Cow;

/// The key token of an event without a key.
pub const NO_KEY: &str = "_";

/// The longest key written into a subject as it is.
pub const MAX_LITERAL_KEY: usize = 64;

/// The subject token of an entity key (see the module docs).
///
/// ```
/// use events::wire::key_token;
/// assert_eq!(key_token(Some("order-17")), "order-17");
/// assert_eq!(key_token(None), "_");
/// let hashed = key_token(Some("orders.17"));
/// assert!(hashed.starts_with('_') && hashed.len() == 17);
/// assert!(key_token(Some("a b")).starts_with('_'));
/// ```
pub fn key_token(key: Option<&str>) -> Cow<'_, str> {
    match key {
        None => Cow::Borrowed(NO_KEY),
        Some(key) if is_literal(key) => Cow::Borrowed(key),
        Some(key) => Cow::Owned(format!("_{:016x}", fnv1a64(key.as_bytes()))),
    }
}

fn is_literal(key: &str) -> bool {
    let bytes = key.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LITERAL_KEY
        && bytes[0] != b'_'
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The partition (of `partitions`) nats-server's `{{partition(n, …)}}`
/// subject transform maps `token` to: FNV-1a (32 bits) of the token,
/// modulo `partitions` (`0` for zero partitions, as the server does).
///
/// ```
/// use events::wire::{key_token, partition_of};
/// let token = key_token(Some("order-17"));
/// assert!(partition_of(&token, 8) < 8);
/// assert_eq!(partition_of(&token, 8), partition_of("order-17", 8));
/// ```
pub fn partition_of(token: &str, partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    fnv1a32(token.as_bytes()) % partitions
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::validate_subject_token;

    #[test]
    fn hashes_are_pinned() {
        // Changing them would move every key to another partition.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn every_token_is_a_safe_subject_token_and_never_mistaken_for_another_form() {
        let keys = [
            "o-1",
            "A_b-9",
            "_o-1",
            "_",
            "",
            "a.b",
            "a b",
            "*",
            ">",
            "$SYS",
            "ключ",
            "x\r\ny",
            &"k".repeat(MAX_LITERAL_KEY),
            &"k".repeat(MAX_LITERAL_KEY + 1),
        ];
        for key in keys {
            let token = key_token(Some(key));
            validate_subject_token(&token).unwrap();
            if token == key {
                assert!(!key.starts_with('_'), "{key:?}");
            } else {
                assert_eq!(token.len(), 17, "{key:?} -> {token}");
                assert!(token.starts_with('_'));
            }
        }
        assert_eq!(key_token(Some("o-1")), "o-1");
        assert_ne!(key_token(Some("_")), NO_KEY);
        assert_ne!(key_token(Some("")), NO_KEY);
        assert_eq!(
            key_token(Some(&"k".repeat(MAX_LITERAL_KEY))),
            "k".repeat(MAX_LITERAL_KEY)
        );
    }

    #[test]
    fn partitions_spread_keys_and_never_exceed_the_count() {
        let mut seen = [0u32; 8];
        for k in 0..800 {
            let p = partition_of(&format!("order-{k}"), 8);
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(partition_of("x", 0), 0);
        assert_eq!(partition_of("x", 1), 0);
        assert!(partition_of("x", u32::MAX) < u32::MAX);
    }
}
