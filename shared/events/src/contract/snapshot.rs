//! Schema snapshots per `(TYPE, VERSION)`, kept in the repository, and the
//! check that a type did not change incompatibly without a new `VERSION`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::compat::{compare, Change};
use super::schema::{Catalog, PayloadSchema};
use crate::error::{Error, ErrorKind, Result};

/// The environment variable that makes [`Snapshots::new`] (re)write
/// snapshots instead of only checking them: set it to `1` to record new
/// types and versions, or deliberately to accept a change.
pub const UPDATE_ENV: &str = "EVENTS_UPDATE_SNAPSHOTS";

/// A folder of schema snapshots, `<dir>/<TYPE>/v<VERSION>.schema.json`,
/// beside the golden wire fixtures, and the check of a [`Catalog`] against
/// it.
///
/// A snapshot is written once per version and then only checked: a change
/// that breaks old events or old consumers fails the check until the type
/// gets a new `VERSION` (and its own snapshot); a compatible change (a new
/// optional field) passes, and rewriting the snapshot records it, so the
/// next change is compared with what was published last.
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct OrderPlaced { order_id: String }
/// # impl events::EventPayload for OrderPlaced { const TYPE: &'static str = "orders.order_placed"; }
/// use events::contract::{Catalog, Snapshots, SnapshotStatus};
///
/// let dir = std::env::temp_dir().join(format!("snapshots-doc-{}", std::process::id()));
/// let catalog = Catalog::new().with::<OrderPlaced>();
///
/// let report = Snapshots::new(&dir).update(false).check(&catalog)?;
/// assert_eq!(report.types()[0].status(), SnapshotStatus::Missing);
/// assert!(!report.is_ok());
///
/// Snapshots::new(&dir).update(true).check(&catalog)?;
/// let report = Snapshots::new(&dir).update(false).check(&catalog)?;
/// assert_eq!(report.types()[0].status(), SnapshotStatus::Unchanged);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), events::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
    update: bool,
}

impl Snapshots {
    /// The snapshots under `dir`. They are only checked, unless
    /// [`UPDATE_ENV`] is set to anything but empty or `0`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let update = std::env::var(UPDATE_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        Snapshots {
            dir: dir.into(),
            update,
        }
    }

    /// Whether [`check`](Self::check) writes the snapshots it finds missing
    /// or different (default: whether [`UPDATE_ENV`] is set). Writing
    /// records a breaking change too: that is for a version not yet
    /// published, never for one consumers already read.
    pub fn update(mut self, update: bool) -> Self {
        self.update = update;
        self
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot file of `event_type` at `version`.
    pub fn path_of(&self, event_type: &str, version: u32) -> PathBuf {
        self.dir
            .join(event_type)
            .join(format!("v{version}.schema.json"))
    }

    /// Checks (or, updating, writes) the snapshot of every type in
    /// `catalog`.
    ///
    /// The report says, per type, whether it passed and which fields
    /// changed how. Errors are for what stops the check itself: a catalog
    /// with two Rust types for one `(TYPE, VERSION)`
    /// ([`InvalidInput`](ErrorKind::InvalidInput)), a snapshot that is not
    /// JSON ([`Decode`](ErrorKind::Decode)), a folder that cannot be read or
    /// written ([`Backend`](ErrorKind::Backend)).
    pub fn check(&self, catalog: &Catalog) -> Result<SnapshotReport> {
        catalog.validate()?;
        let types = catalog
            .schemas()
            .map(|schema| self.check_schema(&schema))
            .collect::<Result<_>>()?;
        Ok(SnapshotReport { types })
    }

    /// Checks (or writes) the snapshot of one schema.
    pub fn check_schema(&self, schema: &PayloadSchema) -> Result<TypeReport> {
        let path = self.path_of(schema.event_type(), schema.version());
        let report = |status, changes| TypeReport {
            event_type: schema.event_type(),
            version: schema.version(),
            rust_type: schema.rust_type(),
            path: path.clone(),
            status,
            changes,
        };
        let Some(snapshot) = read_json(&path)? else {
            let newest = self.newest_version(schema.event_type())?;
            if let Some(newest) = newest.filter(|v| *v > schema.version()) {
                return Ok(report(SnapshotStatus::VersionBehind { newest }, Vec::new()));
            }
            if self.update {
                write_json(&path, schema.schema())?;
                return Ok(report(SnapshotStatus::Written, Vec::new()));
            }
            return Ok(report(SnapshotStatus::Missing, Vec::new()));
        };
        let (status, changes) = SnapshotStatus::between(&snapshot, schema.schema());
        let status = match (status, self.update) {
            (SnapshotStatus::Unchanged, _) => return Ok(report(status, changes)),
            (_, false) => status,
            (SnapshotStatus::Breaking, true) => SnapshotStatus::Overwritten,
            (_, true) => SnapshotStatus::Written,
        };
        if self.update {
            write_json(&path, schema.schema())?;
        }
        Ok(report(status, changes))
    }

    /// The highest version with a snapshot for `event_type`.
    fn newest_version(&self, event_type: &str) -> Result<Option<u32>> {
        let dir = self.dir.join(event_type);
        match versions_in(&dir) {
            Ok(versions) => Ok(versions.into_iter().map(|(version, _)| version).max()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &dir, e)),
        }
    }

    /// Reads every snapshot in the folder, in `(TYPE, VERSION)` order:
    /// each `<TYPE>/v<VERSION>.schema.json`, other files (the wire fixtures
    /// beside them, a README) left alone.
    ///
    /// For tools that have the snapshots but not the Rust types: compare
    /// two folders with [`SnapshotStatus::between`], or write a document of
    /// them with [`AsyncApi::snapshot`](super::AsyncApi::snapshot) or
    /// [`bundle`](super::bundle).
    ///
    /// Fails with [`Backend`](ErrorKind::Backend) if the folder cannot be
    /// read (it does not exist, say) and with [`Decode`](ErrorKind::Decode)
    /// naming the file if a snapshot is not JSON.
    ///
    /// ```
    /// use events::contract::Snapshots;
    ///
    /// let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    /// let stored = Snapshots::new(fixtures).load()?;
    /// let types: Vec<String> = stored.iter().map(|s| s.cloudevents_type()).collect();
    /// assert_eq!(types, ["orders.order_placed.v1", "orders.order_placed.v2"]);
    /// assert_eq!(stored[1].schema()["title"], "OrderPlaced");
    /// # Ok::<(), events::Error>(())
    /// ```
    pub fn load(&self) -> Result<Vec<StoredSnapshot>> {
        let read_error = |e| io_error("read", &self.dir, e);
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            // A type is a folder named by its TYPE; anything else is not a
            // snapshot (a README, a file of fixtures).
            let Ok(event_type) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let versions = versions_in(&path).map_err(|e| io_error("read", &path, e))?;
            for (version, file) in versions {
                if let Some(schema) = read_json(&file)? {
                    stored.push(StoredSnapshot {
                        event_type: event_type.clone(),
                        version,
                        path: file,
                        schema,
                    });
                }
            }
        }
        stored.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
        Ok(stored)
    }
}

/// The versions with a snapshot file in one type's folder, with the file.
fn versions_in(dir: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let version = name
            .to_str()
            .and_then(|n| n.strip_prefix('v'))
            .and_then(|n| n.strip_suffix(".schema.json"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(version) = version {
            versions.push((version, entry.path()));
        }
    }
    Ok(versions)
}

/// One schema snapshot as read from a folder by [`Snapshots::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSnapshot {
    event_type: String,
    version: u32,
    path: PathBuf,
    schema: Value,
}

impl StoredSnapshot {
    /// The type's `TYPE` (its folder's name).
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The `VERSION` (from the file's name).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The CloudEvents `type` attribute of this version
    /// (`orders.order_placed.v2`).
    pub fn cloudevents_type(&self) -> String {
        format!("{}.v{}", self.event_type, self.version)
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema, as written by [`schema_of`](super::schema_of).
    pub fn schema(&self) -> &Value {
        &self.schema
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("cannot {what} schema snapshot {}", path.display()),
    )
    .with_source(e)
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path, e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::decode(format!("schema snapshot {} is not JSON", path.display())).with_source(e)
    })
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create the folder of", path, e))?;
    }
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::new(ErrorKind::Encode, "schema does not serialize").with_source(e))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| io_error("write", path, e))
}

/// How one type's schema stands against its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotStatus {
    /// The schema is the snapshot.
    Unchanged,
    /// It changed compatibly (a new optional field, a new description):
    /// passes. Rewriting the snapshot records the change.
    Compatible,
    /// It changed in a way that breaks old events or old consumers,
    /// without a new `VERSION`: fails.
    Breaking,
    /// This version has no snapshot: fails until one is recorded.
    Missing,
    /// A snapshot of a newer version exists: the type's `VERSION` went
    /// back. Fails.
    VersionBehind {
        /// The newest version with a snapshot.
        newest: u32,
    },
    /// The snapshot was written (new, or with compatible changes).
    Written,
    /// The snapshot was rewritten over breaking changes, as asked.
    Overwritten,
}

impl SnapshotStatus {
    /// How schema `new` of a type stands against its snapshot `old`:
    /// [`Unchanged`](Self::Unchanged), [`Compatible`](Self::Compatible)
    /// or [`Breaking`](Self::Breaking), with every change [`compare`]
    /// finds (none when unchanged; none either when only annotations such
    /// as descriptions changed).
    ///
    /// ```
    /// use events::contract::SnapshotStatus;
    /// use serde_json::json;
    ///
    /// let old = json!({"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]});
    /// let new = json!({"type": "object", "properties": {}, "required": []});
    /// let (status, changes) = SnapshotStatus::between(&old, &new);
    /// assert_eq!(status, SnapshotStatus::Breaking);
    /// assert_eq!(changes[0].path(), "$.sku");
    /// assert_eq!(SnapshotStatus::between(&old, &old).0, SnapshotStatus::Unchanged);
    /// ```
    pub fn between(old: &Value, new: &Value) -> (SnapshotStatus, Vec<Change>) {
        if old == new {
            return (SnapshotStatus::Unchanged, Vec::new());
        }
        let changes = compare(old, new);
        let status = if changes.iter().any(Change::is_breaking) {
            SnapshotStatus::Breaking
        } else {
            SnapshotStatus::Compatible
        };
        (status, changes)
    }

    /// Whether the check passes.
    pub fn is_ok(self) -> bool {
        !matches!(
            self,
            SnapshotStatus::Breaking
                | SnapshotStatus::Missing
                | SnapshotStatus::VersionBehind { .. }
        )
    }
}

impl fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotStatus::Unchanged => f.write_str("unchanged"),
            SnapshotStatus::Compatible => f.write_str("changed compatibly"),
            SnapshotStatus::Breaking => f.write_str("changed incompatibly without a VERSION bump"),
            SnapshotStatus::Missing => write!(
                f,
                "no snapshot of this version (record it with {UPDATE_ENV}=1)"
            ),
            SnapshotStatus::VersionBehind { newest } => {
                write!(f, "VERSION is behind the newest snapshot, v{newest}")
            }
            SnapshotStatus::Written => f.write_str("snapshot written"),
            SnapshotStatus::Overwritten => {
                f.write_str("snapshot overwritten over incompatible changes")
            }
        }
    }
}

/// One type's result in a [`SnapshotReport`].
#[derive(Debug, Clone)]
pub struct TypeReport {
    event_type: &'static str,
    version: u32,
    rust_type: &'static str,
    path: PathBuf,
    status: SnapshotStatus,
    changes: Vec<Change>,
}

impl TypeReport {
    /// The type's `TYPE`.
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// The type's `VERSION`.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The Rust type.
    pub fn rust_type(&self) -> &'static str {
        self.rust_type
    }

    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How it stands.
    pub fn status(&self) -> SnapshotStatus {
        self.status
    }

    /// Every difference from the snapshot, breaking or not.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Whether this type passes.
    pub fn is_ok(&self) -> bool {
        self.status.is_ok()
    }
}

impl fmt::Display for TypeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{} ({}): {} [{}]",
            self.event_type,
            self.version,
            self.rust_type,
            self.status,
            self.path.display()
        )?;
        for change in &self.changes {
            write!(f, "\n  {change}")?;
        }
        Ok(())
    }
}

/// The result of [`Snapshots::check`]: one [`TypeReport`] per type.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    types: Vec<TypeReport>,
}

impl SnapshotReport {
    /// Whether every type passes.
    pub fn is_ok(&self) -> bool {
        self.types.iter().all(TypeReport::is_ok)
    }

    /// Every type's result, in `(TYPE, VERSION)` order.
    pub fn types(&self) -> &[TypeReport] {
        &self.types
    }

    /// The types that fail.
    pub fn failures(&self) -> impl Iterator<Item = &TypeReport> {
        self.types.iter().filter(|t| !t.is_ok())
    }

    /// `Ok(self)` if every type passes, else an
    /// [`InvalidInput`](ErrorKind::InvalidInput) error whose detail is the
    /// failing types' reports: for a test, `check(&catalog)?.into_result()?`.
    pub fn into_result(self) -> Result<Self> {
        if self.is_ok() {
            return Ok(self);
        }
        let failures: Vec<String> = self.failures().map(ToString::to_string).collect();
        Err(Error::invalid(format!(
            "schema check failed:\n{}",
            failures.join("\n")
        )))
    }
}

impl fmt::Display for SnapshotReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, report) in self.types.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{report}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(dead_code)] // the types exist for their schemas

    use schemars::JsonSchema;

    use super::*;
    use crate::contract::schema_of;
    use crate::EventPayload;

    /// A private folder, removed on drop.
    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("events-snapshots-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Folder(dir)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    macro_rules! payload {
        ($name:ident, $version:literal, { $($field:ident: $ty:ty),* }) => {
            #[derive(serde::Serialize, serde::Deserialize, JsonSchema)]
            struct $name { $($field: $ty),* }
            impl EventPayload for $name {
                const TYPE: &'static str = "orders.order_placed";
                const VERSION: u32 = $version;
            }
        };
    }

    payload!(Published, 1, { order_id: String, sku: String });
    payload!(Additive, 1, { order_id: String, sku: String, note: Option<String> });
    payload!(Renamed, 1, { order_id: String, product: String });
    payload!(Bumped, 2, { order_id: String, product: String });

    fn check<T: EventPayload + JsonSchema>(dir: &Path, update: bool) -> TypeReport {
        let snapshots = Snapshots::new(dir).update(update);
        snapshots
            .check(&Catalog::new().with::<T>())
            .unwrap()
            .types()[0]
            .clone()
    }

    #[test]
    fn a_missing_snapshot_fails_until_written_then_an_unchanged_schema_passes() {
        let dir = Folder::new("missing");
        let report = check::<Published>(&dir.0, false);
        assert_eq!(report.status(), SnapshotStatus::Missing);
        assert!(!report.is_ok());
        assert!(!report.path().exists());

        let report = check::<Published>(&dir.0, true);
        assert_eq!(report.status(), SnapshotStatus::Written);
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(report.path()).unwrap()).unwrap();
        assert_eq!(&written, schema_of::<Published>().schema());
        assert!(report
            .path()
            .ends_with("orders.order_placed/v1.schema.json"));

        assert_eq!(
            check::<Published>(&dir.0, false).status(),
            SnapshotStatus::Unchanged
        );
    }

    #[test]
    fn an_additive_change_passes_and_updating_records_it() {
        let dir = Folder::new("additive");
        check::<Published>(&dir.0, true);
        let report = check::<Additive>(&dir.0, false);
        assert_eq!(report.status(), SnapshotStatus::Compatible);
        assert!(report.is_ok());
        assert_eq!(report.changes().len(), 1);
        assert_eq!(report.changes()[0].path(), "$.note");

        assert_eq!(
            check::<Additive>(&dir.0, true).status(),
            SnapshotStatus::Written
        );
        assert_eq!(
            check::<Additive>(&dir.0, false).status(),
            SnapshotStatus::Unchanged
        );
    }

    #[test]
    fn a_breaking_change_without_a_version_bump_fails_and_says_which_field_and_why() {
        let dir = Folder::new("breaking");
        check::<Published>(&dir.0, true);
        let snapshots = Snapshots::new(&dir.0).update(false);
        let report = snapshots.check(&Catalog::new().with::<Renamed>()).unwrap();
        assert!(!report.is_ok());
        let failed = report.failures().next().unwrap();
        assert_eq!(failed.status(), SnapshotStatus::Breaking);
        let text = report.into_result().unwrap_err().to_string();
        assert!(
            text.contains("orders.order_placed v1")
                && text.contains("changed incompatibly without a VERSION bump")
                && text.contains("$.sku: required field removed (renamed to `product`?)")
                && text.contains("$.product: required field added"),
            "{text}"
        );
        // The snapshot is left as it was.
        assert_eq!(
            check::<Published>(&dir.0, false).status(),
            SnapshotStatus::Unchanged
        );
    }

    #[test]
    fn a_version_bump_needs_its_own_snapshot_and_keeps_the_old_one() {
        let dir = Folder::new("bumped");
        check::<Published>(&dir.0, true);
        assert_eq!(
            check::<Bumped>(&dir.0, false).status(),
            SnapshotStatus::Missing
        );
        assert_eq!(
            check::<Bumped>(&dir.0, true).status(),
            SnapshotStatus::Written
        );
        let snapshots = Snapshots::new(&dir.0);
        assert!(snapshots.path_of("orders.order_placed", 1).exists());
        assert!(snapshots.path_of("orders.order_placed", 2).exists());
        // Going back to v1 after v2 was recorded: the version went backwards.
        assert_eq!(
            check::<Renamed>(&dir.0, false).status(),
            SnapshotStatus::Breaking
        );
        std::fs::remove_file(snapshots.path_of("orders.order_placed", 1)).unwrap();
        assert_eq!(
            check::<Published>(&dir.0, true).status(),
            SnapshotStatus::VersionBehind { newest: 2 },
            "not written over, even when updating"
        );
    }

    #[test]
    fn updating_over_a_breaking_change_says_so() {
        let dir = Folder::new("overwrite");
        check::<Published>(&dir.0, true);
        let report = check::<Renamed>(&dir.0, true);
        assert_eq!(report.status(), SnapshotStatus::Overwritten);
        assert!(report.changes().iter().any(Change::is_breaking));
        assert_eq!(
            check::<Renamed>(&dir.0, false).status(),
            SnapshotStatus::Unchanged
        );
    }

    #[test]
    fn a_snapshot_that_is_not_json_is_a_decode_error() {
        let dir = Folder::new("garbage");
        let snapshots = Snapshots::new(&dir.0).update(false);
        let path = snapshots.path_of("orders.order_placed", 1);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{ not json").unwrap();
        let err = snapshots
            .check(&Catalog::new().with::<Published>())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.to_string().contains("is not JSON"), "{err}");
    }

    #[test]
    fn load_reads_every_type_and_version_in_order_and_nothing_else() {
        let dir = Folder::new("load");
        check::<Published>(&dir.0, true);
        check::<Bumped>(&dir.0, true);
        std::fs::write(dir.0.join("README.md"), "not a type").unwrap();
        std::fs::write(dir.0.join("orders.order_placed/v1.binary.json"), "{}").unwrap();
        let stored = Snapshots::new(&dir.0).load().unwrap();
        let keys: Vec<_> = stored
            .iter()
            .map(|s| (s.event_type(), s.version()))
            .collect();
        assert_eq!(
            keys,
            [("orders.order_placed", 1), ("orders.order_placed", 2)]
        );
        assert_eq!(stored[0].schema(), schema_of::<Published>().schema());
        assert_eq!(stored[1].schema(), schema_of::<Bumped>().schema());

        std::fs::write(dir.0.join("orders.order_placed/v3.schema.json"), "[").unwrap();
        let err = Snapshots::new(&dir.0).load().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.to_string().contains("v3.schema.json"), "{err}");
        let err = Snapshots::new(dir.0.join("absent")).load().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend);
    }

    #[test]
    fn between_tells_unchanged_compatible_and_breaking_apart() {
        let published = schema_of::<Published>().into_schema();
        let additive = schema_of::<Additive>().into_schema();
        let renamed = schema_of::<Renamed>().into_schema();
        let (status, changes) = SnapshotStatus::between(&published, &published);
        assert_eq!((status, changes.len()), (SnapshotStatus::Unchanged, 0));
        let (status, changes) = SnapshotStatus::between(&published, &additive);
        assert_eq!((status, changes.len()), (SnapshotStatus::Compatible, 1));
        let (status, changes) = SnapshotStatus::between(&published, &renamed);
        assert_eq!(status, SnapshotStatus::Breaking);
        assert!(changes.iter().any(|c| c.path() == "$.sku"));
    }

    #[test]
    fn two_rust_types_for_one_type_and_version_are_refused() {
        let catalog = Catalog::new().with::<Published>().with::<Renamed>();
        let err = Snapshots::new("unused").check(&catalog).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("two Rust types"), "{err}");
    }

    #[test]
    fn display_of_every_status_is_lowercase_apart_from_names_and_has_no_period() {
        let statuses = [
            SnapshotStatus::Unchanged,
            SnapshotStatus::Compatible,
            SnapshotStatus::Breaking,
            SnapshotStatus::Missing,
            SnapshotStatus::VersionBehind { newest: 3 },
            SnapshotStatus::Written,
            SnapshotStatus::Overwritten,
        ];
        for status in statuses {
            let text = status.to_string();
            let first = text.chars().next().unwrap();
            assert!(
                first.is_lowercase() || text.starts_with("VERSION"),
                "{text}"
            );
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}
