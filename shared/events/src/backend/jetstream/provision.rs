//! Stream provisioning: create the stream, or update only what the crate
//! manages on an existing one.
//!
//! The stream's configuration is handled as the server's own JSON, not as
//! async-nats's typed config: a field this crate (or its async-nats) does
//! not know, set by an operator or by a newer server, goes back to the
//! server exactly as it came, instead of being dropped and so reset.

use async_nats::jetstream::{self, response::Response, ErrorCode};
use serde_json::{Map, Value};

use super::config::StreamConfig;
use crate::error::{Error, ErrorKind, Result};

/// Metadata keys the server owns (ADR-44 versioning: `_nats.ver`,
/// `_nats.level`, `_nats.req.level`): never sent back.
const SERVER_METADATA: &str = "_nats.";
/// The answering server's version, in those (2.11+).
const SERVER_VERSION: &str = "_nats.ver";

/// A stream flag the crate turns on for a feature it uses, and never off:
/// turning one off is refused by the server for some (`allow_msg_ttl`,
/// `allow_msg_schedules`) and takes a feature away from every other
/// service on the stream for the rest.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flag {
    /// The server's JSON name.
    pub(super) key: &'static str,
    /// What it enables, for errors.
    pub(super) what: &'static str,
    /// The first server version that keeps it.
    pub(super) needs: (u64, u64, u64),
}

/// Per-message TTLs (`Nats-TTL`).
pub(super) const MSG_TTL: Flag = Flag {
    key: "allow_msg_ttl",
    what: "per-message TTLs (allow_msg_ttl)",
    needs: (2, 11, 0),
};

/// Atomic batches (`Nats-Batch-Id`); 2.12.0 has them but refuses a
/// `Nats-Msg-Id` in a batch, and every message this crate sends has one.
pub(super) const ATOMIC: Flag = Flag {
    key: "allow_atomic",
    what: "atomic batch publish (allow_atomic)",
    needs: (2, 12, 1),
};

/// What the stream's configuration became.
#[derive(Debug, Clone)]
pub(super) struct Provisioned {
    /// The configuration as the server answered it.
    pub(super) config: Value,
    /// Whether an update or create was sent (false: it already matched).
    pub(super) changed: bool,
}

/// Creates the stream, or brings an existing one to `stream` for the
/// fields it manages ([`StreamConfig::managed_fields`]), merges the
/// crate's metadata into the stream's, and turns `flags` on; everything
/// else stays as the stream has it. No
/// request changes anything when the stream already matches. Then checks
/// that the server kept every flag and metadata entry asked for: a server
/// (or a stream leader, in a cluster being upgraded) too old for one
/// drops it silently, and that is refused as [`ErrorKind::Unsupported`].
pub(super) async fn provision(
    admin: &jetstream::Context,
    stream: &StreamConfig,
    flags: &[Flag],
    connected: (u64, u64, u64),
) -> Result<Provisioned> {
    let name = stream.get_name();
    let want = wanted(stream, flags)?;
    // Two instances may create the stream at once: the loser updates.
    let mut created_meanwhile = false;
    let provisioned = loop {
        match api(
            admin,
            &format!("STREAM.INFO.{name}"),
            &Value::Object(Map::new()),
        )
        .await?
        {
            Ok(info) => {
                let existing = info.get("config").cloned().unwrap_or(Value::Null);
                let leader = leader_version(&existing);
                check_leader(name, leader, flags)?;
                let merged = merge(&existing, &want, stream, flags);
                if strip_server_metadata(existing.clone()) == merged {
                    break Provisioned {
                        config: existing,
                        changed: false,
                    };
                }
                if older(leader, connected) {
                    // Its answer lacks what it does not know, and an update
                    // built on it would turn that off (or be refused, for
                    // `allow_msg_ttl`) where the newer nodes keep it.
                    tracing::warn!(
                        stream = name,
                        leader = ?leader,
                        connected = ?connected,
                        "the stream's leader runs an older nats-server than the node connected to: \
                         the stream is not updated until that node is upgraded"
                    );
                    break Provisioned {
                        config: existing,
                        changed: false,
                    };
                }
                let updated = api(admin, &format!("STREAM.UPDATE.{name}"), &merged)
                    .await?
                    .map_err(|e| refused(name, "updating", e))?;
                break Provisioned {
                    config: updated.get("config").cloned().unwrap_or(Value::Null),
                    changed: true,
                };
            }
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND && !created_meanwhile => {
                match api(admin, &format!("STREAM.CREATE.{name}"), &want).await? {
                    Ok(created) => {
                        break Provisioned {
                            config: created.get("config").cloned().unwrap_or(Value::Null),
                            changed: true,
                        }
                    }
                    Err(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST => {
                        created_meanwhile = true;
                    }
                    Err(e) => return Err(refused(name, "creating", e)),
                }
            }
            Err(e) => return Err(refused(name, "looking up", e)),
        }
    };
    check_kept(name, &provisioned.config, stream, flags)?;
    Ok(provisioned)
}

/// The version of the server that answered `config` for its stream (its
/// leader, in a cluster), from the metadata 2.11 and later add to every
/// answer; `None`: older than 2.11.
fn leader_version(config: &Value) -> Option<(u64, u64, u64)> {
    config
        .get("metadata")
        .and_then(|m| m.get(SERVER_VERSION))
        .and_then(Value::as_str)
        .map(super::parse_version)
}

/// Whether the leader (see [`leader_version`]) runs an older minor
/// release than the node connected to; unknown below 2.11.
fn older(leader: Option<(u64, u64, u64)>, connected: (u64, u64, u64)) -> bool {
    match leader {
        Some(leader) => (leader.0, leader.1) < (connected.0, connected.1),
        None => (connected.0, connected.1) >= (2, 11),
    }
}

/// Refuses, before anything is sent, a flag the stream's leader would
/// ignore: an update asking for it would be kept by newer nodes and
/// dropped by the leader.
fn check_leader(name: &str, leader: Option<(u64, u64, u64)>, flags: &[Flag]) -> Result<()> {
    for flag in flags {
        let kept = leader.map_or(flag.needs < (2, 11, 0), |v| v >= flag.needs);
        if !kept {
            let runs = leader.map_or_else(
                || "a nats-server older than 2.11".to_owned(),
                |v| format!("nats-server {}.{}.{}", v.0, v.1, v.2),
            );
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "stream {name} is led by {runs}, which would silently ignore {} (needs \
                     {}.{}.{}): upgrade the node leading it",
                    flag.what, flag.needs.0, flag.needs.1, flag.needs.2
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a bound stream that lacks a flag a configured feature needs:
/// publishing would fail message by message, or (before 2.11, for
/// `Nats-TTL`) keep messages forever.
pub(super) fn check_flags(name: &str, config: &Value, flags: &[Flag]) -> Result<()> {
    for flag in flags {
        if !flag_on(config, flag.key) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "stream {name} does not allow {}: enable it on the stream, or provision \
                     the stream with this transport",
                    flag.what
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `config` has the boolean `key` set.
pub(super) fn flag_on(config: &Value, key: &str) -> bool {
    config.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// What the crate asks for: `stream` as the server's JSON, with `flags` on.
fn wanted(stream: &StreamConfig, flags: &[Flag]) -> Result<Value> {
    let mut want = serde_json::to_value(stream.to_nats()).map_err(|e| {
        Error::new(
            ErrorKind::Backend,
            format!("stream {} cannot be encoded", stream.get_name()),
        )
        .with_source(e)
    })?;
    if let Value::Object(fields) = &mut want {
        for flag in flags {
            fields.insert(flag.key.to_owned(), Value::Bool(true));
        }
    }
    Ok(want)
}

/// `existing` with the fields `stream` manages from `want`, `want`'s
/// metadata entries added (or changed), and `flags` on; the server's own
/// metadata left out.
fn merge(existing: &Value, want: &Value, stream: &StreamConfig, flags: &[Flag]) -> Value {
    let mut merged = match strip_server_metadata(existing.clone()) {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    for key in stream.managed_fields() {
        match want.get(key) {
            Some(value) => merged.insert(key.to_owned(), value.clone()),
            // Not sent when default (a zero duplicate window): the server
            // applies its default, as it does at creation.
            None => merged.remove(key),
        };
    }
    if let Some(Value::Object(ours)) = want.get("metadata") {
        if !ours.is_empty() {
            let metadata = merged
                .entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()));
            if !metadata.is_object() {
                *metadata = Value::Object(Map::new());
            }
            if let Value::Object(theirs) = metadata {
                for (key, value) in ours {
                    theirs.insert(key.clone(), value.clone());
                }
            }
        }
    }
    for flag in flags {
        merged.insert(flag.key.to_owned(), Value::Bool(true));
    }
    Value::Object(merged)
}

/// `config` without the server's versioning metadata (an empty metadata
/// map left out), so an unchanged stream compares equal to its merge.
fn strip_server_metadata(mut config: Value) -> Value {
    if let Value::Object(fields) = &mut config {
        let empty = match fields.get_mut("metadata") {
            Some(Value::Object(metadata)) => {
                metadata.retain(|key, _| !key.starts_with(SERVER_METADATA));
                metadata.is_empty()
            }
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            fields.remove("metadata");
        }
    }
    config
}

/// Refuses a stream whose answered configuration lacks a flag or metadata
/// entry asked for: the server that applied it did not know the field.
fn check_kept(name: &str, config: &Value, stream: &StreamConfig, flags: &[Flag]) -> Result<()> {
    for flag in flags {
        if !flag_on(config, flag.key) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "stream {name} did not keep {}: the server leading it is older than \
                     {}.{}.{} and would silently ignore it",
                    flag.what, flag.needs.0, flag.needs.1, flag.needs.2
                ),
            ));
        }
    }
    let metadata = config.get("metadata");
    for (key, value) in stream.get_metadata() {
        if metadata.and_then(|m| m.get(key)).and_then(Value::as_str) != Some(value.as_str()) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "stream {name} does not have its metadata entry {key:?}: the server leading \
                     it ignores stream metadata (older than 2.10), or is older than the node \
                     connected to and the stream is not updated until it is upgraded"
                ),
            ));
        }
    }
    Ok(())
}

/// One JetStream API request, waiting at least the admin context's
/// timeout; `Err` for the request failing, `Ok(Err)` for the server's
/// refusal.
async fn api(
    admin: &jetstream::Context,
    subject: &str,
    body: &Value,
) -> Result<std::result::Result<Value, jetstream::Error>> {
    let response: Response<Value> = admin.request(subject.to_owned(), body).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("the JetStream API did not answer {subject}"),
        )
        .with_source(e)
    })?;
    Ok(match response {
        Response::Ok(value) => Ok(value),
        Response::Err { error } => Err(error),
    })
}

fn refused(name: &str, doing: &str, e: jetstream::Error) -> Error {
    Error::new(ErrorKind::Backend, format!("{doing} stream {name} failed")).with_source(e)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The duration fields of the server's JSON are nanoseconds.
    fn nanos(duration: Duration) -> Value {
        Value::from(u64::try_from(duration.as_nanos()).unwrap())
    }

    fn existing() -> Value {
        serde_json::json!({
            "name": "EVENTS",
            "subjects": ["old.>"],
            "storage": "memory",
            "retention": "limits",
            "max_age": 0,
            "max_bytes": -1,
            "max_msgs": -1,
            "duplicate_window": nanos(Duration::from_secs(120)),
            "num_replicas": 3,
            "compression": "s2",
            "allow_msg_ttl": true,
            "allow_atomic": true,
            "some_future_field": {"kept": true},
            "metadata": {"owner": "ops", "_nats.ver": "2.12.8", "_nats.req.level": "2"}
        })
    }

    #[test]
    fn a_merge_changes_managed_fields_only_and_never_turns_a_flag_off() {
        let stream = StreamConfig::new("EVENTS", ["events.>"])
            .max_age(Duration::from_secs(60))
            .metadata("service", "orders");
        let want = wanted(&stream, &[]).unwrap();
        let merged = merge(&existing(), &want, &stream, &[]);
        assert_eq!(merged["subjects"], serde_json::json!(["events.>"]));
        assert_eq!(merged["max_age"], nanos(Duration::from_secs(60)));
        assert_eq!(merged["storage"], "memory", "not set, so not managed");
        assert_eq!(merged["num_replicas"], 3);
        let set = stream
            .clone()
            .storage(crate::backend::jetstream::Storage::File)
            .replicas(1);
        let merged = merge(&existing(), &wanted(&set, &[]).unwrap(), &set, &[]);
        assert_eq!(
            (&merged["storage"], &merged["num_replicas"]),
            (&Value::from("file"), &Value::from(1))
        );
        let merged = merge(&existing(), &want, &stream, &[]);
        assert_eq!(merged["compression"], "s2");
        assert_eq!(merged["allow_msg_ttl"], true);
        assert_eq!(merged["allow_atomic"], true);
        assert_eq!(merged["some_future_field"]["kept"], true);
        assert_eq!(
            merged["metadata"],
            serde_json::json!({"owner": "ops", "service": "orders"}),
            "the server's own entries are not sent back"
        );
    }

    #[test]
    fn a_stream_that_matches_is_left_alone() {
        let stream = StreamConfig::new("EVENTS", ["old.>"]);
        let merged = merge(&existing(), &wanted(&stream, &[]).unwrap(), &stream, &[]);
        assert_eq!(strip_server_metadata(existing()), merged);
        let with_ttl = merge(
            &existing(),
            &wanted(&stream, &[MSG_TTL]).unwrap(),
            &stream,
            &[MSG_TTL],
        );
        assert_eq!(strip_server_metadata(existing()), with_ttl);
    }

    #[test]
    fn the_leader_s_version_decides_per_stream() {
        assert_eq!(leader_version(&existing()), Some((2, 12, 8)));
        let mut old = existing();
        old["metadata"] = serde_json::json!({"owner": "ops"});
        assert_eq!(leader_version(&old), None);
        assert!(check_leader("S", Some((2, 12, 8)), &[MSG_TTL, ATOMIC]).is_ok());
        let err = check_leader("S", Some((2, 12, 0)), &[ATOMIC]).unwrap_err();
        assert!(err.to_string().contains("nats-server 2.12.0"), "{err}");
        let err = check_leader("S", None, &[MSG_TTL]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("older than 2.11"), "{err}");
        assert!(check_leader("S", None, &[]).is_ok());
        assert!(older(None, (2, 12, 8)) && !older(None, (2, 10, 26)));
        assert!(older(Some((2, 11, 11)), (2, 12, 0)));
        assert!(!older(Some((2, 12, 1)), (2, 12, 8)));
    }

    #[test]
    fn flags_asked_for_are_turned_on_and_checked() {
        let stream = StreamConfig::new("EVENTS", ["old.>"]);
        let mut plain = existing();
        plain["allow_msg_ttl"] = Value::Bool(false);
        let merged = merge(
            &plain,
            &wanted(&stream, &[MSG_TTL]).unwrap(),
            &stream,
            &[MSG_TTL],
        );
        assert_eq!(merged["allow_msg_ttl"], true);
        let err = check_kept("EVENTS", &plain, &stream, &[MSG_TTL]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("2.11.0"), "{err}");
        let err = check_kept(
            "EVENTS",
            &existing(),
            &stream.clone().metadata("team", "a"),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"team\""), "{err}");
        assert!(check_flags("EVENTS", &existing(), &[MSG_TTL, ATOMIC]).is_ok());
        assert!(check_flags("EVENTS", &plain, &[MSG_TTL]).is_err());
    }
}
