//! `events schema check|export`: schema snapshot folders, compared for
//! breaking changes or written as one document, with the library's
//! contract module (no Rust types needed).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Args, Subcommand, ValueEnum};
use events::contract::{bundle, AsyncApi, SnapshotStatus, Snapshots, StoredSnapshot};

use crate::failure::{Failure, Outcome};
use crate::Connection;

#[derive(Debug, Subcommand)]
pub(crate) enum SchemaCommand {
    /// Compare two folders of schema snapshots (<TYPE>/v<N>.schema.json):
    /// every change of each type and version in both, and whether it needs
    /// a new VERSION. Exits 1 if one changed incompatibly or went back
    Check(CheckArgs),
    /// An AsyncAPI 3.0 document (one channel per type and version) or the
    /// JSON Schemas bundled, from a folder of snapshots, on stdout
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The snapshots published so far: a folder, or REV:DIR for a folder
    /// at a git revision (`main:services/shop/contracts`)
    #[arg(long, value_name = "DIR|REV:DIR")]
    old: String,
    /// The snapshots of the types as they are now, likewise
    #[arg(long, value_name = "DIR|REV:DIR")]
    new: String,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The folder of snapshots, or REV:DIR at a git revision
    #[arg(long, value_name = "DIR|REV:DIR")]
    snapshots: String,
    /// What to write
    #[arg(long, value_enum, default_value_t = Format::Asyncapi)]
    format: Format,
    /// The AsyncAPI document's title
    #[arg(long, default_value = "events")]
    title: String,
    /// The AsyncAPI document's version (of the contracts, not of AsyncAPI)
    #[arg(long, value_name = "VERSION", default_value = "1.0.0")]
    doc_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// An AsyncAPI 3.0 document: each type and version a channel on its
    /// subject (--prefix), both content modes, the servers of --server
    Asyncapi,
    /// One JSON Schema (draft-07), each type and version under
    /// `definitions` as <TYPE>.v<N>
    JsonSchema,
}

pub(crate) fn run(connection: &Connection, command: SchemaCommand) -> Outcome<()> {
    match command {
        SchemaCommand::Check(args) => check(args),
        SchemaCommand::Export(args) => export(connection, args),
    }
}

fn check(args: CheckArgs) -> Outcome<()> {
    let old = load("--old", &args.old)?;
    let new = load("--new", &args.new)?;
    let old = by_type(&old);
    let new = by_type(&new);

    let mut out = String::new();
    let mut failures: Vec<String> = Vec::new();
    let (mut checked, mut removed) = (0, 0);
    let types: std::collections::BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    for event_type in types {
        let none = BTreeMap::new();
        let old_versions = old.get(event_type).unwrap_or(&none);
        let new_versions = new.get(event_type).unwrap_or(&none);
        let versions: std::collections::BTreeSet<u32> = old_versions
            .keys()
            .chain(new_versions.keys())
            .copied()
            .collect();
        for version in versions {
            let line = match (old_versions.get(&version), new_versions.get(&version)) {
                (Some(before), Some(after)) => {
                    checked += 1;
                    let (status, changes) =
                        SnapshotStatus::between(before.schema(), after.schema());
                    let mut line = format!("{event_type} v{version}: {status}");
                    for change in &changes {
                        line.push_str(&format!("\n  {change}"));
                    }
                    if !status.is_ok() {
                        let fields: Vec<&str> = changes
                            .iter()
                            .filter(|c| c.is_breaking())
                            .map(|c| c.path())
                            .collect();
                        failures.push(format!(
                            "{event_type} v{version} changed incompatibly without a new VERSION ({})",
                            fields.join(", ")
                        ));
                    }
                    line
                }
                (Some(_), None) => {
                    removed += 1;
                    format!(
                        "{event_type} v{version}: version removed (no snapshot in --new): events of this version still stored need its type or an upcaster to be read"
                    )
                }
                (None, Some(_)) => format!("{event_type} v{version}: new (no snapshot in --old)"),
                (None, None) => continue,
            };
            out.push_str(&line);
            out.push('\n');
        }
        // A type whose newest version went back: what the library's own
        // check calls VERSION behind.
        let newest = |versions: &BTreeMap<u32, &StoredSnapshot>| versions.keys().max().copied();
        if let (Some(was), Some(is)) = (newest(old_versions), newest(new_versions)) {
            if is < was {
                let status = SnapshotStatus::VersionBehind { newest: was };
                out.push_str(&format!("{event_type} v{is}: {status}\n"));
                failures.push(format!("{event_type} went back to v{is} after v{was}"));
            }
        }
    }
    out.push_str(&format!(
        "{checked} checked, {} failed, {removed} removed\n",
        failures.len()
    ));
    print(&out)?;
    if failures.is_empty() {
        return Ok(());
    }
    Err(Failure::new(format!(
        "schema check failed: {}",
        failures.join("; ")
    )))
}

fn export(connection: &Connection, args: ExportArgs) -> Outcome<()> {
    let stored = load("--snapshots", &args.snapshots)?;
    let text = match args.format {
        Format::JsonSchema => pretty(&bundle(&stored)),
        Format::Asyncapi => {
            let mut document = AsyncApi::new(args.title, args.doc_version)
                .description(
                    "The event types of these schema snapshots, one channel per type and version.",
                )
                .prefix(&connection.prefix);
            let urls: Vec<&str> = connection
                .server
                .as_deref()
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            for (i, url) in urls.iter().enumerate() {
                let name = if urls.len() == 1 {
                    "default".to_owned()
                } else {
                    format!("server-{}", i + 1)
                };
                document = document.server(name, *url);
            }
            let document = stored.iter().fold(document, AsyncApi::snapshot).build()?;
            document.to_json_pretty()
        }
    };
    print(&text)
}

fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn print(text: &str) -> Outcome<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::quiet()),
        Err(e) => Err(Failure::new(format!("cannot write to stdout: {e}"))),
    }
}

/// Snapshots by TYPE, then VERSION.
fn by_type(stored: &[StoredSnapshot]) -> BTreeMap<&str, BTreeMap<u32, &StoredSnapshot>> {
    let mut types: BTreeMap<&str, BTreeMap<u32, &StoredSnapshot>> = BTreeMap::new();
    for snapshot in stored {
        types
            .entry(snapshot.event_type())
            .or_default()
            .insert(snapshot.version(), snapshot);
    }
    types
}

/// The snapshots of a folder, or of `REV:DIR` in git (when no folder has
/// that name).
fn load(flag: &str, place: &str) -> Outcome<Vec<StoredSnapshot>> {
    let path = Path::new(place);
    if path.is_dir() {
        return read(flag, path);
    }
    let Some((rev, dir)) = place.split_once(':').filter(|(rev, _)| !rev.is_empty()) else {
        return Err(Failure::input(format!("{flag} {place}: no such folder")));
    };
    let tree = GitTree::extract(rev, dir).map_err(|e| {
        Failure::input(format!(
            "{flag} {place}: no such folder, and not a git REV:DIR ({e})"
        ))
    })?;
    read(flag, &tree.0)
}

fn read(flag: &str, dir: &Path) -> Outcome<Vec<StoredSnapshot>> {
    Snapshots::new(dir).load().map_err(|e| {
        let message = format!("{flag}: {}", crate::failure::chain(&e));
        match e.kind() {
            events::ErrorKind::Decode => Failure::input(message),
            _ => Failure::new(message),
        }
    })
}

/// The snapshot files of a folder at a git revision, written to a private
/// folder removed on drop.
struct GitTree(PathBuf);

impl GitTree {
    fn extract(rev: &str, dir: &str) -> Result<Self, String> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        if rev.starts_with('-') {
            return Err(format!("{rev:?} is not a revision"));
        }
        let treeish = format!("{rev}:{dir}");
        let listing = git(&["ls-tree", "-r", "-z", &treeish])?;
        let root = std::env::temp_dir().join(format!(
            "events-schema-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let tree = GitTree(root);
        for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            // `<mode> blob <object>\t<path>`
            let Some((meta, file)) = entry.split_once('\t') else {
                continue;
            };
            let mut fields = meta.split(' ');
            let (Some(_), Some("blob"), Some(object)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            // Only what Snapshots::load reads: <TYPE>/v<N>.schema.json.
            let Some((event_type, name)) = file.split_once('/') else {
                continue;
            };
            if name.contains('/') || !name.ends_with(".schema.json") {
                continue;
            }
            let target = tree.0.join(event_type).join(name);
            std::fs::create_dir_all(tree.0.join(event_type)).map_err(|e| e.to_string())?;
            std::fs::write(&target, git(&["cat-file", "blob", object])?)
                .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        }
        Ok(tree)
    }
}

impl Drop for GitTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn git(args: &[&str]) -> Result<Vec<u8>, String> {
    let output = Command::new("git")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr
            .lines()
            .next()
            .unwrap_or("git failed")
            .trim()
            .to_owned());
    }
    Ok(output.stdout)
}
