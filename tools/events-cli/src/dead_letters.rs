//! `events dead-letters`: list, show, replay and purge dead letters.
//!
//! Dead letters are read without consuming them: by an ephemeral ordered
//! consumer over the dead-letter subjects (or a get by sequence), never
//! by a durable consumer, so reading changes nothing. Replay and purge
//! remove a letter by its sequence, and replay only after the republished
//! original was acknowledged.

use clap::{Args, Subcommand};

use events::consumer::DeadLetter;
use events::transport::SubjectPattern;
use events::wire::RawEvent;

use crate::conn::{self, Conn, Stored};
use crate::failure::{Failure, Outcome};
use crate::show::{self, Format};
use crate::Connection;

/// The reasons the consumer runtime writes.
const REASONS: [&str; 6] = [
    "decode",
    "unsupported_version",
    "missing_upcaster",
    "rejected",
    "attempts_exhausted",
    "no_handler",
];

/// The `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// One line per dead letter
    List {
        #[command(flatten)]
        filter: Filter,
        /// One JSON object per dead letter and line
        #[arg(long)]
        json: bool,
    },
    /// Everything about the matching dead letters: why, and the event
    Show {
        /// The dead letter's sequence in its stream (as `list` shows it)
        #[arg(value_name = "SEQ")]
        sequence: Option<u64>,
        #[command(flatten)]
        filter: Filter,
        /// Also print the original's headers and body as received
        #[arg(long)]
        raw: bool,
        /// One JSON object per dead letter and line
        #[arg(long)]
        json: bool,
    },
    /// Republish the matching originals to their subjects, each removed
    /// from the dead letters once its publish was acknowledged
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Replay every dead letter (needed when no filter is given)
        #[arg(long)]
        all: bool,
    },
    /// Remove the matching dead letters
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Purge every dead letter (needed when no filter is given)
        #[arg(long)]
        all: bool,
        /// Really remove them (without it, only says what would go)
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters a command means.
#[derive(Debug, Args)]
pub(crate) struct Filter {
    /// Only those of this consumer
    #[arg(long)]
    consumer: Option<String>,
    /// Only those with this reason: decode, unsupported_version,
    /// missing_upcaster, rejected, attempts_exhausted or no_handler
    #[arg(long)]
    reason: Option<String>,
    /// Only those of this event type (orders.order_placed, or with its
    /// version: orders.order_placed.v2)
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Only the one of this event id
    #[arg(long, value_name = "EVENT_ID")]
    id: Option<String>,
    /// Only this sequence in its stream (repeatable)
    #[arg(long = "seq", value_name = "SEQ")]
    sequences: Vec<u64>,
    /// The subjects dead letters are published on
    #[arg(long, value_name = "PATTERN", default_value = "deadletter.>")]
    subjects: String,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.consumer.is_none()
            && self.reason.is_none()
            && self.event_type.is_none()
            && self.id.is_none()
            && self.sequences.is_empty()
    }

    fn check(&self) -> Outcome<SubjectPattern> {
        if let Some(reason) = &self.reason {
            if !REASONS.contains(&reason.as_str()) {
                return Err(Failure::input(format!(
                    "--reason {reason:?}: expected one of {}",
                    REASONS.join(", ")
                )));
            }
        }
        SubjectPattern::parse(&self.subjects).map_err(|e| {
            Failure::input(format!(
                "--subjects {:?} is not a subject pattern: {}",
                self.subjects,
                e.detail()
            ))
        })
    }

    fn accepts(&self, letter: &Letter) -> bool {
        if !self.sequences.is_empty() && !self.sequences.contains(&letter.stored.sequence) {
            return false;
        }
        let Ok(dead) = &letter.dead else {
            // Not a dead letter: only a sequence picks it.
            return self.consumer.is_none()
                && self.reason.is_none()
                && self.event_type.is_none()
                && self.id.is_none();
        };
        let event = letter.event.as_ref();
        self.consumer.as_ref().is_none_or(|c| *c == dead.consumer)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| r == dead.reason.as_str())
            && self.event_type.as_ref().is_none_or(|t| {
                event.is_some_and(|e| {
                    *t == e.metadata.event_type() || *t == e.metadata.cloudevents_type()
                })
            })
            && self
                .id
                .as_ref()
                .is_none_or(|id| event.is_some_and(|e| e.metadata.id() == id))
    }
}

/// A message on a dead-letter subject, read back.
struct Letter {
    stored: Stored,
    dead: events::Result<DeadLetter>,
    /// The original event, where it decodes.
    event: Option<RawEvent>,
}

impl Letter {
    fn new(stored: Stored) -> Self {
        let dead = DeadLetter::from_message(&stored.message);
        let event = dead
            .as_ref()
            .ok()
            .and_then(|d| events::wire::decode(&d.original).ok());
        Letter {
            stored,
            dead,
            event,
        }
    }

    fn label(&self) -> String {
        format!("#{} ({})", self.stored.sequence, self.stored.stream)
    }

    fn event_type(&self) -> String {
        self.event
            .as_ref()
            .map(|e| show::clean(&e.metadata.cloudevents_type()))
            .unwrap_or_else(|| "?".to_owned())
    }

    fn event_id(&self) -> String {
        self.event
            .as_ref()
            .map(|e| show::clean(e.metadata.id()))
            .unwrap_or_else(|| "?".to_owned())
    }

    /// Why and where, for `show`.
    fn facts(&self, dead: &DeadLetter) -> Vec<(&'static str, String)> {
        let mut facts = vec![
            ("dead letter", self.label()),
            ("consumer", dead.consumer.clone()),
            ("reason", dead.reason.as_str().to_owned()),
            ("error", dead.error.clone()),
            ("attempts", dead.attempts.to_string()),
            ("given up at", show::format_time(dead.time)),
        ];
        if let Some(sequence) = dead.stream_sequence {
            facts.push(("original seq", sequence.to_string()));
        }
        if let Some(length) = dead.body_omitted {
            facts.push((
                "body omitted",
                format!("{length} bytes (too large for the copy)"),
            ));
        }
        facts
    }
}

/// Runs a `dead-letters` subcommand.
pub(crate) async fn run(connection: &Connection, command: DeadLettersCommand) -> Outcome<()> {
    match command {
        DeadLettersCommand::List { filter, json } => {
            let (conn, letters) = read(connection, &filter).await?;
            conn.close().await?;
            list(&letters, json)
        }
        DeadLettersCommand::Show {
            sequence,
            mut filter,
            raw,
            json,
        } => {
            filter.sequences.extend(sequence);
            let (conn, letters) = read(connection, &filter).await?;
            conn.close().await?;
            if letters.is_empty() {
                return Err(Failure::new("no dead letter matches"));
            }
            for letter in &letters {
                show_one(letter, Format { json, raw })?;
            }
            Ok(())
        }
        DeadLettersCommand::Replay { filter, all } => {
            needs_filter_or_all(&filter, all, "replay")?;
            let (mut conn, letters) = read(connection, &filter).await?;
            let result = replay(&mut conn, &letters).await;
            conn.close().await?;
            result
        }
        DeadLettersCommand::Purge { filter, all, yes } => {
            needs_filter_or_all(&filter, all, "purge")?;
            let (conn, letters) = read(connection, &filter).await?;
            let result = purge(&conn, &letters, yes).await;
            conn.close().await?;
            result
        }
    }
}

fn needs_filter_or_all(filter: &Filter, all: bool, what: &str) -> Outcome<()> {
    if filter.is_empty() && !all {
        return Err(Failure::input(format!(
            "{what} needs a filter (--consumer, --reason, --type, --id, --seq) or --all"
        )));
    }
    Ok(())
}

/// Connects and reads the dead letters `filter` picks.
async fn read(connection: &Connection, filter: &Filter) -> Outcome<(Conn, Vec<Letter>)> {
    let pattern = filter.check()?;
    let conn = Conn::open(connection).await?;
    conn.js().map_err(|e| {
        Failure::new(format!(
            "dead letters are kept in JetStream streams, and {}",
            e.message()
        ))
    })?;
    let streams = conn.streams().await?;
    let holding: Vec<_> = streams
        .iter()
        .filter(|info| {
            info.config
                .subjects
                .iter()
                .any(|s| crate::subjects::overlap(pattern.as_str(), s))
        })
        .collect();
    if holding.is_empty() {
        return Err(Failure::new(format!(
            "no stream stores {pattern}: dead letters on core NATS are not kept"
        )));
    }
    let by_sequence_only = !filter.sequences.is_empty()
        && filter.consumer.is_none()
        && filter.reason.is_none()
        && filter.event_type.is_none()
        && filter.id.is_none();
    let stored = if by_sequence_only {
        // A get per sequence: no need to read the stream through.
        let mut found = Vec::new();
        for info in &holding {
            let stream = conn.stream(&info.config.name).await?;
            for &sequence in &filter.sequences {
                if let Ok(message) = stream.get_raw_message(sequence).await {
                    let stored = conn::from_stream_message(&message, &info.config.name);
                    if pattern.matches(&stored.message.subject) {
                        found.push(stored);
                    }
                }
            }
        }
        found
    } else {
        conn.scan(pattern.as_str()).await?
    };
    let letters = stored
        .into_iter()
        .map(Letter::new)
        .filter(|letter| filter.accepts(letter))
        .collect();
    Ok((conn, letters))
}

fn list(letters: &[Letter], json: bool) -> Outcome<()> {
    if json {
        for letter in letters {
            show_one(letter, Format { json, raw: false })?;
        }
        return Ok(());
    }
    let mut rows = vec![[
        "SEQ",
        "STREAM",
        "DEAD-LETTERED",
        "CONSUMER",
        "REASON",
        "ATTEMPTS",
        "TYPE",
        "EVENT ID",
        "ERROR",
    ]
    .map(str::to_owned)];
    for letter in letters {
        let row = match &letter.dead {
            Ok(dead) => [
                letter.stored.sequence.to_string(),
                show::clean(&letter.stored.stream),
                show::format_time(dead.time),
                show::clean(&dead.consumer),
                dead.reason.as_str().to_owned(),
                dead.attempts.to_string(),
                letter.event_type(),
                letter.event_id(),
                show::clean(&dead.error),
            ],
            Err(e) => [
                letter.stored.sequence.to_string(),
                show::clean(&letter.stored.stream),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("not a dead letter: {}", show::clean(&e.to_string())),
            ],
        };
        rows.push(row);
    }
    show::out(&table(&rows))?;
    show::out(&format!(
        "{} dead letter{}",
        letters.len(),
        if letters.len() == 1 { "" } else { "s" }
    ))
}

/// Rows as columns padded to their widest cell (the last one unpadded).
pub(crate) fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == N {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                }
            }
            line.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn show_one(letter: &Letter, format: Format) -> Outcome<()> {
    let text = match &letter.dead {
        Ok(dead) => show::render(&dead.original, &letter.facts(dead), format),
        Err(e) => show::render(
            &letter.stored.message,
            &[
                ("dead letter", letter.label()),
                ("problem", format!("not a dead letter: {e}")),
            ],
            format,
        ),
    };
    show::out(&text)?;
    if !format.json {
        show::out("")?;
    }
    Ok(())
}

async fn replay(conn: &mut Conn, letters: &[Letter]) -> Outcome<()> {
    let (mut replayed, mut without_body, mut invalid) = (0, 0, 0);
    for letter in letters {
        let dead = match &letter.dead {
            Ok(dead) => dead,
            Err(_) => {
                invalid += 1;
                continue;
            }
        };
        if dead.body_omitted.is_some() {
            show::out(&format!(
                "kept {}: its copy has no body (the original was too large), nothing to replay",
                letter.label()
            ))?;
            without_body += 1;
            continue;
        }
        let stored_in = conn.publish(dead.original.clone()).await.map_err(|e| {
            Failure::new(format!(
                "replaying {} failed, it is kept ({replayed} replayed before it): {}",
                letter.label(),
                e.message()
            ))
        })?;
        remove(conn, letter).await.map_err(|e| {
            Failure::new(format!(
                "{} was replayed but could not be removed (replay it again and the event is published twice): {}",
                letter.label(),
                e.message()
            ))
        })?;
        replayed += 1;
        show::out(&format!(
            "replayed {} {} id={} to {} ({})",
            letter.label(),
            letter.event_type(),
            letter.event_id(),
            show::clean(dead.original.subject.as_str()),
            match stored_in {
                Some(stream) => format!("stored in stream {stream}"),
                None => "core NATS".to_owned(),
            }
        ))?;
    }
    let mut summary = format!("replayed {replayed}");
    if without_body > 0 {
        summary.push_str(&format!(", kept {without_body} without a body"));
    }
    if invalid > 0 {
        summary.push_str(&format!(", skipped {invalid} that are not dead letters"));
    }
    show::out(&summary)
}

async fn purge(conn: &Conn, letters: &[Letter], yes: bool) -> Outcome<()> {
    if letters.is_empty() {
        return show::out("no dead letter matches: nothing to purge");
    }
    if !yes {
        let sequences: Vec<_> = letters.iter().map(Letter::label).collect();
        return Err(Failure::input(format!(
            "would purge {} dead letter{} ({}): add --yes to purge",
            letters.len(),
            if letters.len() == 1 { "" } else { "s" },
            sequences.join(", ")
        )));
    }
    for (done, letter) in letters.iter().enumerate() {
        remove(conn, letter).await.map_err(|e| {
            Failure::new(format!(
                "purging {} failed ({done} purged before it): {}",
                letter.label(),
                e.message()
            ))
        })?;
    }
    show::out(&format!(
        "purged {} dead letter{}",
        letters.len(),
        if letters.len() == 1 { "" } else { "s" }
    ))
}

/// Deletes one letter from its stream by sequence.
async fn remove(conn: &Conn, letter: &Letter) -> Outcome<()> {
    let stream = conn.stream(&letter.stored.stream).await?;
    stream
        .delete_message(letter.stored.sequence)
        .await
        .map_err(|e| Failure::with("the server refused the delete", &e))?;
    Ok(())
}
