//! The tables, as versioned migrations, and the SQL that uses them.

use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr, SqlStr};

use super::db_error;
use crate::error::{Error, Result};

/// One step of the schema, applied once, in version order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migration {
    /// Its number: migrations apply in this order, each once.
    pub version: i32,
    /// What it does, in a few words.
    pub name: &'static str,
    /// The SQL, with the schema's name already in place.
    pub sql: String,
}

/// The migration texts, with `{schema}` where the schema's name goes.
const STEPS: &[(i32, &str, &str)] = &[(
    1,
    "outbox, failed and published rows, inbox marks",
    r#"
CREATE TABLE {schema}.events_outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lock_key   integer,
    key        text,
    subject    text NOT NULL,
    headers    text[] NOT NULL,
    body       bytea NOT NULL,
    event_id   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {schema}.events_outbox IS
    'Events staged in business transactions, waiting for the relay (events crate).';
CREATE TABLE {schema}.events_outbox_failed (
    id         bigint PRIMARY KEY,
    lock_key   integer,
    key        text,
    subject    text NOT NULL,
    headers    text[] NOT NULL,
    body       bytea NOT NULL,
    event_id   text NOT NULL,
    created_at timestamptz NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    reason     text NOT NULL
);
CREATE TABLE {schema}.events_outbox_published (
    id           bigint PRIMARY KEY,
    key          text,
    subject      text NOT NULL,
    headers      text[] NOT NULL,
    body         bytea NOT NULL,
    event_id     text NOT NULL,
    created_at   timestamptz NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_outbox_published_at ON {schema}.events_outbox_published (published_at);
CREATE TABLE {schema}.events_inbox (
    consumer   text NOT NULL,
    event_id   text NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX events_inbox_handled_at ON {schema}.events_inbox (handled_at);
"#,
)];

/// The migrations for tables in `schema`, for a team that runs its
/// migrations with its own tool: apply them in order, each once. Their
/// versions are recorded by [`Outbox::migrate`](super::Outbox::migrate) in
/// `<schema>.events_migrations`; a tool of your own keeps its own record.
///
/// ```
/// let steps = events::outbox::migrations("app")?;
/// assert_eq!(steps[0].version, 1);
/// assert!(steps[0].sql.contains("CREATE TABLE app.events_outbox"));
/// assert!(events::outbox::migrations("app; DROP TABLE x").is_err());
/// # Ok::<(), events::Error>(())
/// ```
///
/// # Errors
///
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) if `schema`
/// is not a plain identifier (see [`Outbox::schema`](super::Outbox::schema)).
pub fn migrations(schema: &str) -> Result<Vec<Migration>> {
    validate_identifier(schema)?;
    Ok(STEPS
        .iter()
        .map(|&(version, name, sql)| Migration {
            version,
            name,
            sql: sql.replace("{schema}", schema),
        })
        .collect())
}

/// Checks that `name` can be put into SQL as it is: lowercase ASCII
/// letters, digits and `_`, starting with a letter or `_`, at most 63 bytes
/// (PostgreSQL's identifier length). Nothing else is ever spliced into a
/// statement; values go as bind parameters.
pub(crate) fn validate_identifier(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b'a'..=b'z' | b'_'));
    if first_ok && name.len() <= 63 && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
    {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "schema name {name:?} must be lowercase letters, digits and `_` (not first), at most 63 bytes"
        )))
    }
}

/// Applies the migrations `pool`'s database lacks in `schema` (creating it
/// if needed), one transaction each, under an advisory lock so instances
/// starting together apply each once.
pub(crate) async fn migrate(pool: &PgPool, schema: &str, lock: i64) -> Result<Vec<i32>> {
    let mut applied = Vec::new();
    for step in migrations(schema)? {
        let mut tx = pool.begin().await.map_err(|e| db_error("migrate", e))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("migrate", e))?;
        let setup = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.events_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        );
        sqlx::raw_sql(AssertSqlSafe(setup))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("migrate", e))?;
        let done: Option<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT version FROM {schema}.events_migrations WHERE version = $1"
        )))
        .bind(step.version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("migrate", e))?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(step.sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("migrate", e))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {schema}.events_migrations (version, name) VALUES ($1, $2)"
        )))
        .bind(step.version)
        .bind(step.name)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("migrate", e))?;
        tx.commit().await.map_err(|e| db_error("migrate", e))?;
        applied.push(step.version);
    }
    Ok(applied)
}

/// Every statement the outbox, relay and inbox run, with the schema in
/// place, built once per [`Outbox`](super::Outbox).
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) stage: SqlStr,
    pub(crate) claim_delete: SqlStr,
    pub(crate) claim_keep: SqlStr,
    pub(crate) purge_published: SqlStr,
    pub(crate) status: SqlStr,
    pub(crate) failed: SqlStr,
    pub(crate) requeue: SqlStr,
    pub(crate) inbox_mark: SqlStr,
    pub(crate) inbox_purge: SqlStr,
}

fn sql(text: String) -> SqlStr {
    AssertSqlSafe(text).into_sql_str()
}

/// The relay's settle-and-claim statement; `keep` continues the `done`
/// part (its `RETURNING` and what is done with it) when published rows are
/// kept.
fn claim(s: &str, keep: &str) -> String {
    format!(
        "WITH done AS (
             DELETE FROM {s}.events_outbox WHERE id = ANY($3)
             {keep}
         ), failed AS (
             DELETE FROM {s}.events_outbox o
             USING unnest($4::bigint[], $5::text[]) AS r(id, reason)
             WHERE o.id = r.id
             RETURNING o.id, o.lock_key, o.key, o.subject, o.headers, o.body,
                       o.event_id, o.created_at, r.reason
         ), moved AS (
             INSERT INTO {s}.events_outbox_failed
                 (id, lock_key, key, subject, headers, body, event_id, created_at, reason)
             SELECT * FROM failed
         )
         SELECT id, lock_key, subject, headers, body, event_id
         FROM {s}.events_outbox
         WHERE id NOT IN (SELECT unnest($2::bigint[] || $3::bigint[] || $4::bigint[]))
         ORDER BY id LIMIT $1"
    )
}

impl Statements {
    pub(crate) fn new(schema: &str, notify: bool) -> Self {
        let s = schema;
        Statements {
            // The key's transaction lock comes from the FROM subquery, which
            // runs before the row's identity is drawn: a key's rows get ids
            // in the order their transactions commit (see `Outbox::stage`).
            // `pg_advisory_xact_lock` is strict: no key (NULL), no lock.
            // `pg_notify` is sent at commit only, once per transaction.
            stage: sql(format!(
                "INSERT INTO {s}.events_outbox (lock_key, key, subject, headers, body, event_id)
                 SELECT $1, $2, $3, $4, $5, $6
                 FROM (SELECT pg_advisory_xact_lock($7, $1){notify}) AS l",
                notify = if notify { ", pg_notify($8, '')" } else { "" }
            )),
            // A relay's turn, one statement per batch: settle the previous
            // batch (delete, or move to the published table, the confirmed
            // rows $3; move the refused ones $4 with their reasons $5 to the
            // failed table) and claim the next: the oldest rows but those
            // still being published ($2). The claim reads the statement's
            // snapshot, from before the settle's deletes, so it leaves out
            // what they settle too. No row locks: the relay lock keeps every
            // other relay out for the turn (see `relay`). `NOT IN` a
            // subquery is hashed: one probe per row scanned. Data-modifying
            // `WITH` parts run to completion whatever the claim reads, so
            // `LIMIT 0` only settles.
            claim_delete: sql(claim(s, "")),
            claim_keep: sql(claim(
                s,
                &format!(
                    "RETURNING id, key, subject, headers, body, event_id, created_at
                 ), kept AS (
                     INSERT INTO {s}.events_outbox_published
                         (id, key, subject, headers, body, event_id, created_at)
                     SELECT * FROM done"
                ),
            )),
            // In slices, skipping rows another relay's purge holds.
            purge_published: sql(format!(
                "DELETE FROM {s}.events_outbox_published WHERE id IN (
                     SELECT id FROM {s}.events_outbox_published
                     WHERE published_at < now() - $1::interval
                     LIMIT $2 FOR UPDATE SKIP LOCKED
                 )"
            )),
            // One scan of each table.
            status: sql(format!(
                "SELECT p.n, p.age, f.n, f.age, (SELECT count(*) FROM {s}.events_outbox_published)
                 FROM (SELECT count(*) AS n,
                              extract(epoch FROM now() - min(created_at))::float8 AS age
                       FROM {s}.events_outbox) p,
                      (SELECT count(*) AS n,
                              extract(epoch FROM now() - min(failed_at))::float8 AS age
                       FROM {s}.events_outbox_failed) f"
            )),
            failed: sql(format!(
                "SELECT id, key, subject, event_id, created_at, failed_at, reason
                 FROM {s}.events_outbox_failed ORDER BY id LIMIT $1"
            )),
            // Back to the end of the queue, with a new id: its key's later
            // events went on without it, so its old place means nothing.
            requeue: sql(format!(
                "WITH moved AS (
                     DELETE FROM {s}.events_outbox_failed WHERE id = $1
                     RETURNING lock_key, key, subject, headers, body, event_id, created_at
                 ), inserted AS (
                     INSERT INTO {s}.events_outbox
                         (lock_key, key, subject, headers, body, event_id, created_at)
                     SELECT * FROM moved RETURNING id
                 )
                 SELECT id, pg_notify($2, '') FROM inserted"
            )),
            inbox_mark: sql(format!(
                "INSERT INTO {s}.events_inbox (consumer, event_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING"
            )),
            inbox_purge: sql(format!(
                "DELETE FROM {s}.events_inbox WHERE handled_at < now() - $1::interval"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_schema_names() {
        for good in ["public", "app", "_x", "events_outbox_2", &"a".repeat(63)] {
            assert!(validate_identifier(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "App",
            "1x",
            "a-b",
            "a.b",
            "a b",
            "a\"b",
            "a;drop",
            "é",
            &"a".repeat(64),
        ] {
            let err = validate_identifier(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn migrations_name_the_schema_everywhere() {
        let steps = migrations("shop").unwrap();
        assert!(!steps.is_empty());
        for step in steps {
            assert!(!step.sql.contains("{schema}"));
            assert!(step.sql.contains("shop.events_outbox"));
        }
        let statements = Statements::new("shop", true);
        assert!(statements.stage.as_str().contains("shop.events_outbox"));
    }
}
