//! How a command fails: one line on stderr and a non-zero exit code.

use std::fmt;
use std::process::ExitCode;

/// The result of a command.
pub(crate) type Outcome<T> = Result<T, Failure>;

/// Exit code of a bad command line or bad input (clap's own code).
const USAGE: u8 = 2;
/// Exit code of anything else that went wrong.
const ERROR: u8 = 1;

/// Why a command stopped: printed as one `error: ...` line.
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// A failure of the operation (exit code 1).
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: ERROR,
        }
    }

    /// Input the command cannot take (exit code 2).
    pub(crate) fn input(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: USAGE,
        }
    }

    /// The reader of our output went away (`events tail | head`): a normal
    /// end, nothing to say.
    pub(crate) fn quiet() -> Self {
        Failure {
            message: String::new(),
            code: 0,
        }
    }

    /// `what failed`, then the error and its sources on the same line.
    pub(crate) fn with(what: impl fmt::Display, error: &dyn std::error::Error) -> Self {
        Failure::new(format!("{what}: {}", chain(error)))
    }

    /// What went wrong.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// Prints the failure and gives the exit code.
    pub(crate) fn report(self) -> ExitCode {
        if !self.message.is_empty() {
            eprintln!("error: {}", one_line(&self.message));
        }
        ExitCode::from(self.code)
    }
}

impl From<events::Error> for Failure {
    fn from(e: events::Error) -> Self {
        let message = chain(&e);
        if e.kind() == events::ErrorKind::InvalidInput {
            Failure::input(message)
        } else {
            Failure::new(message)
        }
    }
}

/// An error and each of its sources, `: `-separated, each said once (a
/// source whose text its parent already shows is skipped).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A command line clap refused: its first line (`error: unexpected
/// argument ...`) and exit code 2; help and version print as clap prints
/// them.
pub(crate) fn usage(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(USAGE))
        }
        _ => {
            let rendered = e.to_string();
            let first = rendered
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("error: invalid command line");
            eprintln!("{} (see `events --help`)", one_line(first));
            ExitCode::from(USAGE)
        }
    }
}
