//! `events tail`: print events as they arrive.

use std::collections::VecDeque;

use async_nats::jetstream::consumer::DeliverPolicy;
use clap::Args;
use futures_util::StreamExt as _;

use events::transport::{Subject, SubjectPattern, SubscribeOptions, Transport};

use crate::conn::{self, Conn};
use crate::failure::{Failure, Outcome};
use crate::show::{self, Format};
use crate::{subjects, Connection};

/// Arguments of `events tail`.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// An event type (orders.order_placed) or a pattern of types
    /// (orders.*, orders.>, or > for every event); on a stream partitioned
    /// by key, of any key
    #[arg(value_name = "TYPE|PATTERN")]
    what: String,
    /// Read from JetStream through an ephemeral ordered consumer (no acks:
    /// other consumers are not disturbed), from the stream that stores
    /// these events or from stream NAME; without it, a core NATS
    /// subscription
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    stream: Option<String>,
    /// With --stream: start with what was stored since then, a duration
    /// ago (10m) or a time (RFC 3339), instead of new events only
    #[arg(
        long,
        value_name = "WHEN",
        requires = "stream",
        conflicts_with = "last"
    )]
    since: Option<String>,
    /// With --stream: start with the last N matching events stored (reads
    /// the stream from its start to find them)
    #[arg(long, value_name = "N", requires = "stream")]
    last: Option<usize>,
    /// Stop after N events
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Also print the NATS subject, headers and body as received
    #[arg(long)]
    raw: bool,
    /// One JSON object per event and line
    #[arg(long)]
    json: bool,
}

/// Runs `events tail`.
pub(crate) async fn run(connection: &Connection, args: TailArgs) -> Outcome<()> {
    let pattern = subjects::events_pattern(&connection.prefix, &args.what)?;
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let mut conn = Conn::open(connection).await?;
    // On a stream partitioned by key, events are published with their key
    // after the prefix and stored with the partition before it.
    let keyed = conn.keyed(pattern.as_str()).await?;
    let pattern = if keyed {
        subjects::keyed_pattern(&connection.prefix, &args.what)?
    } else {
        pattern
    };
    let format = Format {
        json: args.json,
        raw: args.raw,
    };
    let mut printer = Printer {
        format,
        left: args.count,
    };
    let result = match &args.stream {
        None => tail_core(&conn, &pattern, &mut printer).await,
        Some(name) => {
            let deliver = match since {
                Some(time) => DeliverPolicy::ByStartTime { start_time: time },
                None if args.last.is_some() => DeliverPolicy::All,
                None => DeliverPolicy::New,
            };
            let view = StreamView {
                pattern: &pattern,
                name,
                keyed: keyed.then_some(connection.prefix.as_str()),
            };
            tail_stream(&conn, &view, deliver, args.last, &mut printer).await
        }
    };
    conn.close().await?;
    result
}

/// Prints events and counts down to `--count`.
struct Printer {
    format: Format,
    left: Option<u64>,
}

impl Printer {
    /// Prints one event; false once `--count` events were printed.
    fn print(&mut self, stored: &conn::Stored) -> Outcome<bool> {
        if self.left == Some(0) {
            return Ok(false);
        }
        let mut facts = Vec::new();
        if stored.sequence > 0 {
            facts.push(("stream", format!("{} #{}", stored.stream, stored.sequence)));
        }
        if let Some(time) = stored.stored {
            facts.push(("stored", show::format_time(time)));
        }
        show::out(&show::render(&stored.message, &facts, self.format))?;
        if !self.format.json {
            show::out("")?;
        }
        if let Some(left) = &mut self.left {
            *left -= 1;
            return Ok(*left > 0);
        }
        Ok(true)
    }
}

async fn tail_core(conn: &Conn, pattern: &SubjectPattern, printer: &mut Printer) -> Outcome<()> {
    let mut subscription = conn
        .core()
        .subscribe(SubscribeOptions::new(pattern.clone()))
        .await?;
    // The server has the subscription once the flush returns: what is
    // published after the line below is seen.
    conn.core().flush().await?;
    eprintln!("listening on {pattern} (core NATS); Ctrl-C to stop");
    if printer.left == Some(0) {
        return Ok(());
    }
    loop {
        let delivery = tokio::select! {
            next = subscription.next() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(delivery) = delivery else {
            return Err(Failure::new("the subscription ended (connection closed)"));
        };
        let delivery = delivery?;
        let stored = conn::Stored {
            stream: String::new(),
            sequence: 0,
            stored: None,
            message: delivery.message().clone(),
        };
        if !printer.print(&stored)? {
            return Ok(());
        }
    }
}

/// What `tail --stream` reads.
struct StreamView<'a> {
    /// The events, by published subject.
    pattern: &'a SubjectPattern,
    /// The stream's name; empty for the one that stores `pattern`.
    name: &'a str,
    /// The prefix, when the events are in a stream partitioned by key.
    keyed: Option<&'a str>,
}

async fn tail_stream(
    conn: &Conn,
    view: &StreamView<'_>,
    deliver: DeliverPolicy,
    last: Option<usize>,
    printer: &mut Printer,
) -> Outcome<()> {
    let (pattern, name) = (view.pattern, view.name);
    let streams = conn.streams().await?;
    let holding: Vec<_> = streams
        .iter()
        .filter(|info| name.is_empty() || info.config.name == name)
        .filter(|info| {
            info.config
                .subjects
                .iter()
                .any(|s| subjects::overlap(pattern.as_str(), s))
        })
        .collect();
    let info = match holding.as_slice() {
        [one] => *one,
        [] if name.is_empty() => {
            conn.js()?;
            return Err(Failure::new(format!("no stream stores {pattern}")));
        }
        [] => {
            return Err(Failure::new(format!(
                "there is no stream {name} storing {pattern}"
            )))
        }
        several => {
            let names: Vec<_> = several.iter().map(|i| i.config.name.as_str()).collect();
            return Err(Failure::input(format!(
                "several streams store {pattern} ({}): pick one with --stream NAME",
                names.join(", ")
            )));
        }
    };
    let stream_name = info.config.name.clone();
    // One filter where the stream allows it; else the whole stream, each
    // message checked against the pattern here.
    // A partitioned stream stores `<prefix>.<partition>.<key>.<type>`.
    let stored_pattern = match view.keyed {
        Some(prefix) if pattern.as_str() != format!("{prefix}.>") => {
            format!("{prefix}.*.{}", &pattern.as_str()[prefix.len() + 1..])
        }
        _ => pattern.as_str().to_owned(),
    };
    let filter = match subjects::filters(&stored_pattern, &info.config.subjects).as_slice() {
        [one] => one.clone(),
        _ => String::new(),
    };
    let stream = conn.stream(&stream_name).await?;
    let reader = conn.ordered(&stream, &filter, deliver).await?;
    let reader_name = reader.cached_info().name.clone();
    let result = follow(reader, view, &stream_name, last, printer).await;
    conn::forget(&stream, &reader_name).await;
    result
}

/// Prints what `reader` delivers and `pattern` matches; with `last`, first
/// the last `last` of what was stored.
async fn follow(
    reader: async_nats::jetstream::consumer::Consumer<
        async_nats::jetstream::consumer::pull::OrderedConfig,
    >,
    view: &StreamView<'_>,
    stream_name: &str,
    last: Option<usize>,
    printer: &mut Printer,
) -> Outcome<()> {
    let pattern = view.pattern;
    let mut backlog = last.map(|n| (n, VecDeque::with_capacity(n.min(1024))));
    let mut caught_up = reader.cached_info().num_pending == 0;
    let mut messages = reader
        .messages()
        .await
        .map_err(|e| Failure::with(format!("reading stream {stream_name} failed"), &e))?;
    eprintln!("reading {pattern} from stream {stream_name}; Ctrl-C to stop");
    loop {
        if caught_up {
            if let Some((_, held)) = backlog.take() {
                for stored in held {
                    if !printer.print(&stored)? {
                        return Ok(());
                    }
                }
            }
        }
        if printer.left == Some(0) {
            return Ok(());
        }
        let next = tokio::select! {
            next = messages.next() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(next) = next else {
            return Err(Failure::new(format!("reading stream {stream_name} ended")));
        };
        let message =
            next.map_err(|e| Failure::with(format!("reading stream {stream_name} failed"), &e))?;
        caught_up = message.info().map(|i| i.pending == 0).unwrap_or(true);
        let mut stored = conn::stored(&message, stream_name)?;
        if let Some(prefix) = view.keyed {
            if let Some(published) =
                subjects::without_partition(prefix, stored.message.subject.as_str())
                    .and_then(|s| Subject::parse(&s).ok())
            {
                stored.message.subject = published;
            }
        }
        if !pattern.matches(&stored.message.subject) {
            continue;
        }
        match &mut backlog {
            Some((n, held)) => {
                if *n > 0 {
                    if held.len() == *n {
                        held.pop_front();
                    }
                    held.push_back(stored);
                }
            }
            None => {
                if !printer.print(&stored)? {
                    return Ok(());
                }
            }
        }
    }
}

/// `10m` (that long ago) or an RFC 3339 time.
fn parse_since(text: &str) -> Outcome<chrono::DateTime<chrono::Utc>> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    let ago = crate::parse_duration(text).map_err(|_| {
        Failure::input(format!(
            "--since {text:?}: expected a duration (10m) or an RFC 3339 time"
        ))
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|ago| chrono::Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| Failure::input(format!("--since {text:?} is too long ago")))
}
