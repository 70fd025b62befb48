//! Event ids.

use uuid::Uuid;

/// A new event id: a UUIDv7 (time-ordered, so ids sort by creation time and
/// index well) in its lowercase hyphenated form.
///
/// Ids received from other producers may be any non-empty string, which is
/// why ids are kept as strings rather than as [`Uuid`].
pub fn new_event_id() -> String {
    let mut buf = Uuid::encode_buffer();
    Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v7_and_increase() {
        let a = new_event_id();
        let b = new_event_id();
        let parsed = Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(a.len(), 36);
        assert!(b > a, "{b} should sort after {a}");
    }
}
