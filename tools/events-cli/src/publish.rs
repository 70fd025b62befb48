//! `events publish`: one event, encoded by the library's codec.

use std::io::Read as _;

use clap::Args;

use events::wire::{Codec, ContentMode, RawEvent};
use events::EventMetadata;

use crate::conn::Conn;
use crate::failure::{Failure, Outcome};
use crate::show;
use crate::Connection;

/// Arguments of `events publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The event type, without its version (orders.order_placed)
    #[arg(value_name = "TYPE")]
    event_type: String,
    /// The payload: JSON text, @FILE to read it from a file, or @- from
    /// standard input
    #[arg(long, short = 'd', value_name = "JSON|@FILE")]
    data: String,
    /// The payload's major version
    #[arg(long, short = 'v', default_value_t = 1, value_name = "N")]
    version: u32,
    /// The CloudEvents subject: the entity the event is about, which keys
    /// its order (an order id)
    #[arg(long, value_name = "KEY")]
    subject: Option<String>,
    /// The CloudEvents source (the producing service)
    #[arg(long, default_value = "events-cli")]
    source: String,
    /// The event id [default: a new UUIDv7]
    #[arg(long)]
    id: Option<String>,
    /// The correlation id (the business transaction)
    #[arg(long, value_name = "ID")]
    correlation_id: Option<String>,
    /// Binary content mode (attributes in ce- headers) instead of
    /// structured
    #[arg(long)]
    binary: bool,
}

/// Runs `events publish`.
pub(crate) async fn run(connection: &Connection, args: PublishArgs) -> Outcome<()> {
    // Everything is checked and encoded before connecting: bad input sends
    // nothing.
    let data = read_data(&args.data)?;
    if args.version == 0 {
        return Err(Failure::input("--version must be at least 1"));
    }
    let mut metadata = EventMetadata::new(args.event_type.clone(), args.version, args.source);
    if let Some(id) = args.id {
        metadata.set_id(id);
    }
    if let Some(subject) = args.subject {
        metadata.set_subject(Some(subject));
    }
    if let Some(correlation) = args.correlation_id {
        metadata.set_correlation_id(Some(correlation));
    }
    let event = RawEvent {
        metadata,
        data: Some(data.into()),
    };
    let mode = if args.binary {
        ContentMode::Binary
    } else {
        ContentMode::Structured
    };
    let codec = Codec::new(&connection.prefix)?;
    let mut message = codec.encode_raw(&event, mode)?;

    let mut conn = Conn::open(connection).await?;
    // A stream partitioned by key stores events published with the key in
    // the subject, as the library's bus on it writes them.
    if conn.partitioned(&message.subject).await? {
        message = codec.with_keys_in_subjects(true).encode_raw(&event, mode)?;
    }
    let subject = message.subject.clone();
    let stored = conn.publish(message).await;
    conn.close().await?;
    let where_to = match stored? {
        Some(stream) => format!("stored in stream {stream}"),
        None => "core NATS, no stream stores it".to_owned(),
    };
    show::out(&format!(
        "published {} id={} on {subject} ({where_to})",
        show::clean(&event.metadata.cloudevents_type()),
        show::clean(event.metadata.id())
    ))
}

/// The payload bytes: checked to be JSON, then written without the
/// whitespace between tokens (as serde writes a payload), keys in the
/// order given.
fn read_data(arg: &str) -> Outcome<Vec<u8>> {
    let text = match arg.strip_prefix('@') {
        Some("-") => {
            let mut text = Vec::new();
            std::io::stdin()
                .read_to_end(&mut text)
                .map_err(|e| Failure::new(format!("reading the data from stdin failed: {e}")))?;
            text
        }
        Some(path) => std::fs::read(path)
            .map_err(|e| Failure::input(format!("cannot read the data file {path:?}: {e}")))?,
        None => arg.as_bytes().to_vec(),
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&text)
        .map_err(|e| Failure::input(format!("--data is not valid JSON: {e}")))?;
    Ok(compact(&text))
}

/// JSON text without the whitespace outside strings. `text` is valid JSON.
fn compact(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_keeps_strings_and_key_order() {
        let text = br#" { "z" : 1 , "a" : [ "x y", "q\" r" ] , "n" : null } "#;
        assert_eq!(
            String::from_utf8(compact(text)).unwrap(),
            r#"{"z":1,"a":["x y","q\" r"],"n":null}"#
        );
    }

    #[test]
    fn data_must_be_json() {
        assert!(read_data("{\"a\":").is_err());
        assert!(read_data("@/nonexistent/file.json").is_err());
        assert_eq!(read_data(" [1, 2] ").unwrap(), b"[1,2]");
    }
}
