//! `events`: look at and act on an events deployment on NATS from a shell.
//!
//! Tail live events, publish one, inspect, replay and purge dead letters,
//! and see the streams, consumers and server at a glance. Configured like
//! the library: the `NATS_*` variables of `NatsConfig::from_env`, or flags.
//!
//! Install with `cargo install --path tools/events-cli`; see `events --help`.

mod conn;
mod dead_letters;
mod failure;
mod publish;
mod schema;
mod show;
mod status;
mod subjects;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use failure::{Failure, Outcome};

/// Tail, publish, dead letters and status of an events deployment on NATS.
///
/// The connection comes from the NATS_* variables the library reads
/// (NATS_URL, NATS_TOKEN, NATS_USER/NATS_PASSWORD, NATS_NKEY_SEED,
/// NATS_CREDS, NATS_CA, NATS_CLIENT_CERT/NATS_CLIENT_KEY); the flags below
/// override them. Secrets are taken from the environment only, never from
/// flags (a flag shows in the process list).
#[derive(Debug, Parser)]
#[command(name = "events", version)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

/// Where and how to connect.
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// NATS server URLs, comma-separated [default: NATS_URL, else
    /// nats://127.0.0.1:4222]
    #[arg(long, short = 's', global = true, value_name = "URLS")]
    server: Option<String>,
    /// A .creds file (JWT auth), instead of NATS_CREDS
    #[arg(long, global = true, value_name = "FILE")]
    creds: Option<PathBuf>,
    /// A root certificate PEM file for TLS, instead of NATS_CA
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The subject prefix of the events (the bus's prefix)
    #[arg(
        long,
        global = true,
        env = "EVENTS_PREFIX",
        default_value = events::wire::DEFAULT_PREFIX
    )]
    prefix: String,
    /// How long to wait for the server when connecting
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print events as they arrive, decoded (both content modes)
    Tail(tail::TailArgs),
    /// Publish one event, encoded as the library encodes it
    Publish(publish::PublishArgs),
    /// List, show, replay or purge dead letters, without consuming them
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Streams, consumers, pending and redelivered counts, dead-letter
    /// backlog, server version and capabilities
    Status(status::StatusArgs),
    /// Check schema snapshots for breaking changes, or export them as an
    /// AsyncAPI document or one JSON Schema (no server needed)
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return failure::usage(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return Failure::new(format!("cannot start the runtime: {e}")).report(),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

async fn run(cli: Cli) -> Outcome<()> {
    let connection = &cli.connection;
    match cli.command {
        Command::Tail(args) => tail::run(connection, args).await,
        Command::Publish(args) => publish::run(connection, args).await,
        Command::DeadLetters(command) => dead_letters::run(connection, command).await,
        Command::Status(args) => status::run(connection, args).await,
        Command::Schema(command) => schema::run(connection, command),
    }
}

/// `250ms`, `5s`, `2m`, `1h` (whole numbers; a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let expected = || format!("{text:?} is not a duration such as 250ms, 5s, 2m or 1h");
    let n: u64 = number.parse().map_err(|_| expected())?;
    let seconds = |factor: u64| Duration::from_secs(n.saturating_mul(factor));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        _ => Err(expected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Ok(Duration::from_secs(u64::MAX))
        );
        for bad in [
            "",
            "s",
            "-1s",
            "1.5s",
            "3 weeks",
            "99999999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
