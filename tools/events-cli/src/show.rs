//! How events are printed: pretty (for people), JSON lines (for scripts),
//! with the raw subject, headers and body on request.
//!
//! Everything printed from a message is untrusted: control characters are
//! escaped, so an event cannot move the cursor or rewrite a terminal.

use std::io::Write as _;

use events::transport::Message;
use events::wire::RawEvent;
use serde_json::{json, Map, Value};

use crate::failure::{Failure, Outcome};

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    /// One JSON object per line instead of the pretty form.
    pub(crate) json: bool,
    /// Add the NATS subject, headers and body as received.
    pub(crate) raw: bool,
}

/// One line of output; a closed pipe (`| head`) ends the command quietly.
pub(crate) fn out(text: &str) -> Outcome<()> {
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::quiet()),
        Err(e) => Err(Failure::new(format!("writing the output failed: {e}"))),
    }
}

/// RFC 3339 in UTC, to the millisecond.
pub(crate) fn format_time(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `text` with control characters escaped (newlines and tabs too: one
/// value stays on one line).
pub(crate) fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The body as text: UTF-8 cleaned, else escaped bytes.
fn body_text(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => clean(text),
        Err(_) => payload.escape_ascii().to_string(),
    }
}

/// How the message carries its event (the library's detection: a
/// CloudEvents content type is structured, else `ce-specversion` means
/// binary).
fn mode(message: &Message) -> &'static str {
    let structured = message.headers.get("content-type").is_some_and(|ct| {
        ct.to_ascii_lowercase()
            .starts_with("application/cloudevents")
    });
    if !structured && message.headers.get("ce-specversion").is_some() {
        "binary"
    } else {
        "structured"
    }
}

/// `message` as an event in `format`, with `facts` (label, value) added:
/// where it was read from, or why it was dead-lettered.
pub(crate) fn render(message: &Message, facts: &[(&str, String)], format: Format) -> String {
    let decoded = events::wire::decode(message);
    if format.json {
        render_json(message, decoded, facts, format.raw)
    } else {
        render_pretty(message, decoded, facts, format.raw)
    }
}

fn data_text(event: &RawEvent) -> String {
    match &event.data {
        None => "(none)".to_owned(),
        Some(data) if event.data_is_json() => body_text(data),
        Some(data) => format!(
            "({} bytes of {})",
            data.len(),
            clean(event.metadata.data_content_type().unwrap_or("?"))
        ),
    }
}

fn render_pretty(
    message: &Message,
    decoded: events::Result<RawEvent>,
    facts: &[(&str, String)],
    raw: bool,
) -> String {
    let mut lines = Vec::new();
    let row = |lines: &mut Vec<String>, label: &str, value: &str| {
        lines.push(format!("  {label:<12} {value}"));
    };
    let decoded_ok = decoded.is_ok();
    match decoded {
        Ok(event) => {
            let m = &event.metadata;
            lines.push(format!(
                "{} ({}) on {}",
                clean(&m.cloudevents_type()),
                mode(message),
                clean(message.subject.as_str())
            ));
            row(&mut lines, "id", &clean(m.id()));
            if let Some(subject) = m.subject() {
                row(&mut lines, "subject", &clean(subject));
            }
            if let Some(time) = m.time() {
                row(&mut lines, "time", &format_time(time));
            }
            row(&mut lines, "source", &clean(m.source()));
            if let Some(id) = m.correlation_id() {
                row(&mut lines, "correlation", &clean(id));
            }
            if let Some(id) = m.causation_id() {
                row(&mut lines, "causation", &clean(id));
            }
            for (label, value) in facts {
                row(&mut lines, label, &clean(value));
            }
            row(&mut lines, "data", &data_text(&event));
        }
        Err(e) => {
            lines.push(format!(
                "(not a CloudEvent: {}) on {}",
                clean(&crate::failure::chain(&e)),
                clean(message.subject.as_str())
            ));
            for (label, value) in facts {
                row(&mut lines, label, &clean(value));
            }
        }
    }
    if raw || !decoded_ok {
        for (name, value) in message.headers.iter() {
            row(
                &mut lines,
                "header",
                &format!("{}: {}", clean(name), clean(value)),
            );
        }
        row(
            &mut lines,
            "body",
            &format!(
                "{} ({} bytes)",
                body_text(&message.payload),
                message.payload.len()
            ),
        );
    }
    lines.join("\n")
}

fn render_json(
    message: &Message,
    decoded: events::Result<RawEvent>,
    facts: &[(&str, String)],
    raw: bool,
) -> String {
    let mut object = Map::new();
    object.insert("nats_subject".into(), json!(message.subject.as_str()));
    let decoded_ok = decoded.is_ok();
    match decoded {
        Ok(event) => {
            let m = &event.metadata;
            object.insert("mode".into(), json!(mode(message)));
            object.insert("type".into(), json!(m.event_type()));
            object.insert("version".into(), json!(m.version()));
            object.insert("id".into(), json!(m.id()));
            object.insert("source".into(), json!(m.source()));
            let optional = [
                ("subject", m.subject().map(str::to_owned)),
                ("time", m.time().map(format_time)),
                ("correlationid", m.correlation_id().map(str::to_owned)),
                ("causationid", m.causation_id().map(str::to_owned)),
                ("datacontenttype", m.data_content_type().map(str::to_owned)),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    object.insert(name.into(), json!(value));
                }
            }
            let data = match &event.data {
                None => Value::Null,
                Some(data) if event.data_is_json() => serde_json::from_slice(data)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(data))),
                Some(data) => json!(String::from_utf8_lossy(data)),
            };
            object.insert("data".into(), data);
        }
        Err(e) => {
            object.insert("error".into(), json!(crate::failure::chain(&e)));
        }
    }
    for (label, value) in facts {
        object.insert(label.replace(' ', "_"), json!(value));
    }
    if raw || !decoded_ok {
        let headers: Vec<Value> = message
            .headers
            .iter()
            .map(|(name, value)| json!([name, value]))
            .collect();
        object.insert(
            "raw".into(),
            json!({
                "headers": headers,
                "body": String::from_utf8_lossy(&message.payload),
            }),
        );
    }
    Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::transport::Subject;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(clean("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
        let message = Message::new(Subject::received("events.x"), &b"\x1b[31mnot an event"[..]);
        let shown = render(
            &message,
            &[],
            Format {
                json: false,
                raw: false,
            },
        );
        assert!(!shown.contains('\u{1b}'), "{shown}");
        assert!(shown.starts_with("(not a CloudEvent"), "{shown}");
    }
}
