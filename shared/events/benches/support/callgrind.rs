//! Instructions counted by callgrind, shared by the benches that report
//! them: the bench runs itself again under `valgrind --tool=callgrind`
//! with `args` (its `--one` mode: one measured window), counting only
//! inside functions named `measured_window`.

use std::process::{Command, Stdio};

/// Instructions per event of one run of this binary with `args` that
/// handles `events` events; `None` without valgrind or if the run failed.
pub(crate) fn instructions_per_event(args: &[&str], events: u64) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("events-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let out = dir.join(format!("{}.callgrind", args.join("-")));
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=*measured_window*",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe().ok()?)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        eprintln!("callgrind run of {args:?} failed: {status}");
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    let total: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(total / events as f64)
}
