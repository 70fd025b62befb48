//! `events status`: the server, its streams and consumers, the dead-letter
//! backlog, and what the library's transports can do here.

use clap::Args;
use futures_util::StreamExt as _;

use events::transport::{Capabilities, Capability, Transport};

use crate::conn::Conn;
use crate::dead_letters::table;
use crate::failure::{Failure, Outcome};
use crate::show::{self, clean};
use crate::Connection;

/// Arguments of `events status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The subjects dead letters are published on
    #[arg(long, value_name = "PATTERN", default_value = "deadletter.>")]
    dead_letters: String,
}

/// Runs `events status`.
pub(crate) async fn run(connection: &Connection, args: StatusArgs) -> Outcome<()> {
    let dead_pattern = events::transport::SubjectPattern::parse(&args.dead_letters)
        .map_err(|e| Failure::input(format!("--dead-letters: {}", e.detail())))?;
    let mut conn = Conn::open(connection).await?;
    let result = report(&mut conn, dead_pattern.as_str()).await;
    conn.close().await?;
    result
}

async fn report(conn: &mut Conn, dead_pattern: &str) -> Outcome<()> {
    let info = conn.core().client().server_info();
    show::out(&format!(
        "server        nats-server {} ({}), JetStream {}, max message {} bytes",
        clean(&info.version),
        clean(&info.server_name),
        if conn.has_jetstream() { "on" } else { "off" },
        info.max_payload
    ))?;
    show::out(&capabilities("core NATS", conn.core().capabilities()))?;
    if !conn.has_jetstream() {
        return show::out("streams       none (JetStream is off: nothing is stored)");
    }

    let streams = conn.streams().await?;
    if streams.is_empty() {
        show::out("streams       none")?;
    }
    let mut stream_rows = vec![[
        "STREAM",
        "SUBJECTS",
        "MESSAGES",
        "BYTES",
        "FIRST",
        "LAST",
        "CONSUMERS",
        "DEAD LETTERS",
    ]
    .map(str::to_owned)];
    let mut consumer_rows = vec![[
        "STREAM",
        "CONSUMER",
        "FILTER",
        "PENDING",
        "ACK PENDING",
        "REDELIVERED",
        "WAITING",
        "LAST DELIVERED",
    ]
    .map(str::to_owned)];
    let mut dead_rows = vec![["STREAM", "SUBJECT", "DEAD LETTERS"].map(str::to_owned)];
    let mut caps = Vec::new();
    for info in &streams {
        let name = &info.config.name;
        let stream = conn.stream(name).await?;
        // The dead-letter backlog: stored messages per dead-letter subject.
        let mut backlog = 0;
        let holds_dead = info
            .config
            .subjects
            .iter()
            .any(|s| crate::subjects::overlap(dead_pattern, s));
        if holds_dead && info.state.messages > 0 {
            let mut subjects = stream
                .info_with_subjects(dead_pattern)
                .await
                .map_err(|e| Failure::with(format!("reading stream {name} failed"), &e))?;
            let mut counts = Vec::new();
            while let Some(entry) = subjects.next().await {
                let (subject, count) = entry
                    .map_err(|e| Failure::with(format!("reading stream {name} failed"), &e))?;
                counts.push((subject, count));
            }
            counts.sort();
            for (subject, count) in counts {
                backlog += count;
                dead_rows.push([clean(name), clean(&subject), count.to_string()]);
            }
        }
        stream_rows.push([
            clean(name),
            clean(&info.config.subjects.join(", ")),
            info.state.messages.to_string(),
            info.state.bytes.to_string(),
            info.state.first_sequence.to_string(),
            info.state.last_sequence.to_string(),
            info.state.consumer_count.to_string(),
            if holds_dead {
                backlog.to_string()
            } else {
                "-".to_owned()
            },
        ]);
        let mut consumers = stream.consumers();
        let mut infos = Vec::new();
        while let Some(consumer) = consumers.next().await {
            infos.push(
                consumer.map_err(|e| {
                    Failure::with(format!("listing consumers of {name} failed"), &e)
                })?,
            );
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        for consumer in infos {
            let mut filters = consumer.config.filter_subjects.clone();
            if !consumer.config.filter_subject.is_empty() {
                filters.insert(0, consumer.config.filter_subject.clone());
            }
            consumer_rows.push([
                clean(name),
                clean(&consumer.name),
                if filters.is_empty() {
                    "(all)".to_owned()
                } else {
                    clean(&filters.join(", "))
                },
                consumer.num_pending.to_string(),
                consumer.num_ack_pending.to_string(),
                consumer.num_redelivered.to_string(),
                consumer.num_waiting.to_string(),
                consumer.delivered.stream_sequence.to_string(),
            ]);
        }
        let transport = conn.bound(name).await?;
        caps.push(capabilities(
            &format!("JetStream ({name})"),
            transport.capabilities(),
        ));
    }
    for line in caps {
        show::out(&line)?;
    }
    if streams.is_empty() {
        return Ok(());
    }
    show::out("")?;
    show::out(&table(&stream_rows))?;
    show::out("")?;
    if consumer_rows.len() > 1 {
        show::out(&table(&consumer_rows))?;
    } else {
        show::out("no consumers")?;
    }
    show::out("")?;
    if dead_rows.len() > 1 {
        show::out(&table(&dead_rows))
    } else {
        show::out(&format!("no dead letters on {dead_pattern}"))
    }
}

/// `label supports: a, b; not: c` in the library's words.
fn capabilities(label: &str, caps: &Capabilities) -> String {
    let (yes, no): (Vec<Capability>, Vec<Capability>) =
        Capability::ALL.into_iter().partition(|c| caps.supports(*c));
    let names = |list: Vec<Capability>| {
        if list.is_empty() {
            "-".to_owned()
        } else {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    format!("{label:<13} supports: {}; not: {}", names(yes), names(no))
}
