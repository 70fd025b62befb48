//! Validation of the names that end up in subjects, types and headers.
//!
//! Every check here runs before any I/O, so a bad name is a typed
//! [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error and never
//! a malformed NATS subject or header.

use crate::error::{Error, Result};

/// Longest event type name accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 200;
/// Longest extension name accepted, in bytes (the CloudEvents recommendation).
pub const MAX_EXTENSION_NAME_LEN: usize = 20;
/// Longest subject token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;

/// Attribute names with a meaning of their own: they can never be used as an
/// extension name. The last four are carried by typed metadata fields.
pub(crate) const RESERVED_ATTRIBUTES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "correlationid",
    "causationid",
    "traceparent",
    "tracestate",
];

/// Checks an event type name: lowercase tokens of `[a-z0-9_-]` joined by
/// dots, at most [`MAX_TYPE_LEN`] bytes, whose last token is not a version
/// suffix such as `v2` (the wire format appends the version there).
///
/// ```
/// use events::envelope::validate_type_name;
/// assert!(validate_type_name("orders.order_placed").is_ok());
/// assert!(validate_type_name("orders.Order").is_err());
/// assert!(validate_type_name("orders.placed.v2").is_err());
/// ```
pub fn validate_type_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TYPE_LEN {
        return Err(Error::invalid(format!(
            "event type {name:?} must be 1 to {MAX_TYPE_LEN} bytes long"
        )));
    }
    for token in name.split('.') {
        let valid = !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(Error::invalid(format!(
                "event type {name:?} must be lowercase tokens of [a-z0-9_-] joined by dots"
            )));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if parse_version_token(last).is_some() {
        return Err(Error::invalid(format!(
            "event type {name:?} must not end in a version token: the version is declared separately"
        )));
    }
    Ok(())
}

/// `v7` -> `Some(7)`; anything else -> `None`. Version 0 and leading zeros are
/// not versions, so `v0` and `v01` stay part of a type name.
pub(crate) fn parse_version_token(token: &str) -> Option<u32> {
    let digits = token.strip_prefix('v')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checks an extension attribute name for an event we emit: `[a-z0-9]`, 1 to
/// 20 characters, and not a reserved attribute name.
pub fn validate_extension_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_EXTENSION_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        return Err(Error::invalid(format!(
            "extension name {name:?} must match [a-z0-9]{{1,{MAX_EXTENSION_NAME_LEN}}}"
        )));
    }
    if RESERVED_ATTRIBUTES.contains(&name) {
        return Err(Error::invalid(format!(
            "extension name {name:?} is reserved for a CloudEvents attribute"
        )));
    }
    Ok(())
}

/// Whether `name` is a CloudEvents attribute name we accept when reading:
/// `[a-z0-9]+` of any length (the 20-character limit is only a
/// recommendation, so other producers may exceed it).
pub(crate) fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Checks one NATS subject token taken from user data: `[A-Za-z0-9_-]+`, at
/// most [`MAX_TOKEN_LEN`] bytes. This excludes `.`, `*`, `>`, `$`,
/// whitespace and the empty token, so user data can never change which
/// subjects a message reaches.
pub fn validate_subject_token(token: &str) -> Result<()> {
    let valid = !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "subject token {token:?} must be 1 to {MAX_TOKEN_LEN} characters of [A-Za-z0-9_-]"
        )))
    }
}

/// Checks a free-form attribute value (source, id, subject, ...): non-empty
/// when present, as the CloudEvents spec requires.
pub(crate) fn validate_non_empty(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        Err(Error::invalid(format!("{what} must not be empty")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_accept_dotted_lowercase_tokens() {
        for ok in [
            "a",
            "orders.order_placed",
            "billing.invoice-paid.2024",
            "x.v0",
            "x.v01",
            "v2x",
        ] {
            assert!(validate_type_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn type_names_reject_case_wildcards_empty_tokens_and_version_suffixes() {
        let too_long = "a".repeat(MAX_TYPE_LEN + 1);
        for bad in [
            "",
            "Orders.placed",
            "orders..placed",
            ".orders",
            "orders.",
            "orders.*",
            "orders.>",
            "orders placed",
            "orders.placed.v2",
            "v1",
            "orders/placed",
            too_long.as_str(),
        ] {
            assert!(validate_type_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn version_tokens_are_v_and_a_positive_number_without_leading_zero() {
        assert_eq!(parse_version_token("v1"), Some(1));
        assert_eq!(parse_version_token("v42"), Some(42));
        for not in ["v", "v0", "v01", "1", "va", "v1a", "V1", "v99999999999"] {
            assert_eq!(parse_version_token(not), None, "{not}");
        }
    }

    #[test]
    fn extension_names_follow_the_cloudevents_rules() {
        assert!(validate_extension_name("tenant").is_ok());
        assert!(validate_extension_name("a1").is_ok());
        for bad in [
            "",
            "Tenant",
            "ten_ant",
            "ten-ant",
            "abcdefghijklmnopqrstu",
            "data",
            "id",
            "traceparent",
        ] {
            assert!(validate_extension_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subject_tokens_exclude_wildcards_separators_and_whitespace() {
        assert!(validate_subject_token("order-42_A").is_ok());
        for bad in ["", "a.b", "*", ">", "a b", "$SYS", "a\r\nb", "ä"] {
            assert!(validate_subject_token(bad).is_err(), "{bad:?}");
        }
    }
}
