//! Subject patterns: which event subjects a command means, and which
//! streams hold them.

use events::transport::SubjectPattern;

use crate::failure::{Failure, Outcome};

/// The subject pattern of `what` under `prefix`: an event type
/// (`orders.order_placed`) or a pattern of types (`orders.*`, `>`).
pub(crate) fn events_pattern(prefix: &str, what: &str) -> Outcome<SubjectPattern> {
    SubjectPattern::parse(&format!("{prefix}.{what}")).map_err(|e| {
        Failure::input(format!(
            "{what:?} is not an event type or pattern (such as orders.order_placed, orders.* or >): {}",
            e.detail()
        ))
    })
}

/// The pattern of `what` (as for [`events_pattern`]) on a stream
/// partitioned by key, whose events are published as
/// `<prefix>.<key>.<type>`: any key.
pub(crate) fn keyed_pattern(prefix: &str, what: &str) -> Outcome<SubjectPattern> {
    if what == ">" {
        return events_pattern(prefix, what);
    }
    events_pattern(prefix, &format!("*.{what}"))
}

/// A stored subject of a stream partitioned by key
/// (`<prefix>.<partition>.<key>.<type>`) as it was published
/// (`<prefix>.<key>.<type>`); other subjects unchanged.
pub(crate) fn without_partition(prefix: &str, stored: &str) -> Option<String> {
    let rest = stored.strip_prefix(prefix)?.strip_prefix('.')?;
    let (partition, rest) = rest.split_once('.')?;
    if partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{prefix}.{rest}"))
}

/// Whether some subject matches both patterns.
pub(crate) fn overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject `inner` matches, `outer` matches too.
pub(crate) fn within(inner: &str, outer: &str) -> bool {
    let mut inner = inner.split('.');
    let mut outer = outer.split('.');
    loop {
        match (inner.next(), outer.next()) {
            (Some(_), Some(">")) => return true,
            (Some(">"), Some(_)) => return false,
            (Some(_), Some("*")) => {}
            (Some("*"), Some(_)) => return false,
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The consumer filters that read what `pattern` matches from a stream
/// with `stream_subjects`: the pattern itself where one stream subject
/// holds all of it, else each stream subject that shares subjects with it
/// (the caller then checks each message against the pattern, since a
/// server refuses a filter wider than the stream).
pub(crate) fn filters(pattern: &str, stream_subjects: &[String]) -> Vec<String> {
    if stream_subjects.iter().any(|s| within(pattern, s)) {
        return vec![pattern.to_owned()];
    }
    stream_subjects
        .iter()
        .filter(|s| overlap(pattern, s))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::transport::Subject;

    #[test]
    fn keyed_patterns_take_any_key_and_stored_subjects_lose_their_partition() {
        let keyed = keyed_pattern("events", "orders.order_placed").unwrap();
        assert_eq!(keyed.as_str(), "events.*.orders.order_placed");
        assert!(keyed.matches(&Subject::parse("events.o-1.orders.order_placed").unwrap()));
        assert!(!keyed.matches(&Subject::parse("events.orders.order_placed").unwrap()));
        assert_eq!(keyed_pattern("events", ">").unwrap().as_str(), "events.>");
        assert_eq!(
            without_partition("events", "events.3.o-1.orders.order_placed").as_deref(),
            Some("events.o-1.orders.order_placed")
        );
        assert_eq!(without_partition("events", "events.o-1.orders.x"), None);
        assert_eq!(without_partition("events", "other.3.o-1.x"), None);
    }

    #[test]
    fn patterns_overlap_when_one_subject_matches_both() {
        assert!(overlap("events.>", "events.orders.placed"));
        assert!(overlap("deadletter.>", "deadletter.events.*"));
        assert!(overlap("a.*.c", "a.b.*"));
        assert!(!overlap("events.>", "deadletter.>"));
        assert!(!overlap("a.b", "a.b.c"));
        assert!(!overlap("a.*", "a.b.c"));
        assert!(!overlap("a.>", "a"));
    }

    #[test]
    fn within_means_every_subject_of_one_is_in_the_other() {
        assert!(within("deadletter.events.billing", "deadletter.>"));
        assert!(within("a.*.c", "a.>"));
        assert!(within("a.b", "a.*"));
        assert!(!within("deadletter.>", "deadletter.events.billing"));
        assert!(!within("a.*", "a.b"));
        assert!(!within("a.>", "a.*"));
        assert!(!within("a", "a.>"));
    }

    #[test]
    fn a_filter_never_reaches_past_the_stream() {
        let subjects = ["events.>".to_owned(), "deadletter.>".to_owned()];
        assert_eq!(filters("deadletter.>", &subjects), ["deadletter.>"]);
        assert_eq!(
            filters("deadletter.events.billing", &subjects),
            ["deadletter.events.billing"]
        );
        let narrow = ["deadletter.events.billing".to_owned(), "x".to_owned()];
        assert_eq!(
            filters("deadletter.>", &narrow),
            ["deadletter.events.billing"]
        );
        assert!(filters("other.>", &narrow).is_empty());
    }

    #[test]
    fn bad_types_are_input_errors() {
        assert_eq!(
            events_pattern("events", "orders.*").unwrap().as_str(),
            "events.orders.*"
        );
        for bad in ["orders..x", "a b", ">.x", ""] {
            assert!(events_pattern("events", bad).is_err(), "{bad}");
        }
    }
}
