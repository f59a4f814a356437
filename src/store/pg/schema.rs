//! Creating and migrating a store's tables.
//!
//! Each schema holds a `jobsafe_schema` table with one row per migration applied
//! to each store table. Opening a store first reads, without any lock, the
//! version recorded for its table and whether the table's objects exist: an
//! up-to-date store (every open but the first of each version) takes no lock,
//! so it waits for nobody. Only when a migration is due does it run the missing
//! ones, in one transaction under transaction-scoped advisory locks, so that
//! processes starting at once apply each migration exactly once and a process
//! that dies midway leaves nothing half done:
//!
//! - the lock of the store's schema and table, for the whole migration: stores
//!   of other tables, in this schema or another, never wait for it;
//! - the lock of the schema, taken after it and only while the schema or its
//!   `jobsafe_schema` table is still to be created, which two tables' first
//!   migrations may otherwise race to do.
//!
//! Each lock id is the first eight bytes (big-endian) of the SHA-256 of
//! `jobsafe migrate <schema>.<table>` or `jobsafe schema <schema>`. The wait for
//! either is bounded; when it ends, the error names the process that holds the
//! lock, as `pg_stat_activity` shows it.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use super::failure::db_error;
use super::sql::Names;
use crate::error::{Error, Result};

const STEP: &str = "migrate schema";

/// Brings the store's tables to the current schema version, waiting at most
/// `lock_wait` for another process migrating them, and checks that they are
/// there and usable.
pub(crate) async fn migrate(
    client: &mut Client,
    names: &Names,
    server: &str,
    lock_wait: Duration,
) -> Result<()> {
    let latest = latest(names);
    let mut found = read(client, names, server).await?;
    if found.version < latest {
        match run(client, names, server, lock_wait, latest).await {
            Err(Failed::Busy { lock, what }) => {
                let holder = holder(client, lock).await;
                return Err(Error::Database {
                    step: STEP,
                    server: server.to_owned(),
                    transient: true,
                    source: format!(
                        "waited {lock_wait:?} for the lock of {what}, held by {holder}"
                    )
                    .into(),
                });
            }
            Err(Failed::Other(e)) => return Err(e),
            Ok(()) => {}
        }
        found = read(client, names, server).await?;
    }
    found.check(names, server, latest)?;
    usable(client, names, server).await
}

/// The schema version this build migrates to.
fn latest(names: &Names) -> i32 {
    i32::try_from(names.migrations_sql().len()).unwrap_or(i32::MAX)
}

/// What the database holds for the store's table.
struct Found {
    /// The version `jobsafe_schema` records; 0 if none.
    version: i32,
    /// The store's objects that do not exist, as `schema.name`.
    missing: Vec<String>,
    /// Whether the records table has the triggers that notify of writes,
    /// enabled.
    notifies: bool,
}

impl Found {
    /// Whether the store can run on what was found: the current version, every
    /// object there.
    fn check(&self, names: &Names, server: &str, latest: i32) -> Result<()> {
        let refuse = |message: String| Error::Database {
            step: STEP,
            server: server.to_owned(),
            transient: false,
            source: message.into(),
        };
        if self.version > latest {
            return Err(refuse(format!(
                "table {} is at schema version {}, newer than this build of jobsafe \
                 knows ({latest}); upgrade jobsafe",
                names.shown(),
                self.version
            )));
        }
        if !self.missing.is_empty() {
            return Err(refuse(format!(
                "{} records schema version {} for table {}, but {} does not exist \
                 (dropped, or a partial restore): restore it from a backup, or delete \
                 the table's rows from {0} to start this store empty",
                names.migrations_shown(),
                self.version,
                names.shown(),
                self.missing.join(", "),
            )));
        }
        if self.version >= NOTIFY_VERSION && !self.notifies {
            return Err(refuse(format!(
                "{} records schema version {} for table {}, but its triggers {} and {3}_delete \
                 are not both there and enabled (dropped, disabled, or a partial restore), so \
                 other processes would never hear of its writes: enable them, or delete the \
                 row of version {NOTIFY_VERSION} for this table from {0}, and the next open \
                 makes them again",
                names.migrations_shown(),
                self.version,
                names.shown(),
                names.notify_trigger(),
            )));
        }
        Ok(())
    }
}

/// The schema version that made the trigger notifying of writes.
const NOTIFY_VERSION: i32 = 2;

/// Reads the recorded version and which objects exist, taking no lock.
async fn read(client: &Client, names: &Names, server: &str) -> Result<Found> {
    let db = |e| db_error(STEP, server, e);
    let objects = names.objects();
    let exists = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL,
                    to_regclass($3) IS NOT NULL, to_regclass($4) IS NOT NULL,
                    (SELECT count(*) FROM pg_trigger
                     WHERE tgrelid = to_regclass($2) AND tgenabled <> 'D'
                       AND tgname::text IN ($5::text, $5::text || '_delete')) = 2",
            &[
                &names.migrations(),
                &objects[0].0,
                &objects[1].0,
                &objects[2].0,
                &names.notify_trigger(),
            ],
        )
        .await
        .map_err(db)?;
    let recorded: bool = exists.try_get(0).map_err(db)?;
    let version = if recorded {
        client
            .query_one(
                &format!(
                    "SELECT coalesce(max(version), 0) FROM {} WHERE store_table = $1",
                    names.migrations()
                ),
                &[&names.table],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db)?
    } else {
        0
    };
    let mut missing = Vec::new();
    for (i, (_, shown)) in objects.iter().enumerate() {
        if !exists.try_get::<_, bool>(i + 1).map_err(db)? {
            missing.push(shown.clone());
        }
    }
    let notifies = exists.try_get::<_, bool>(objects.len() + 1).map_err(db)?;
    Ok(Found {
        version,
        missing,
        notifies,
    })
}

/// Checks that this login may do what the store does with its tables, so that
/// a missing privilege fails `open` rather than the first call that needs it.
async fn usable(client: &Client, names: &Names, server: &str) -> Result<()> {
    let db = |e| db_error(STEP, server, e);
    let row = client
        .query_one(
            "SELECT has_table_privilege($1, 'SELECT, INSERT, UPDATE, DELETE'),
                    has_sequence_privilege($2, 'USAGE'),
                    has_table_privilege($3, 'INSERT')",
            &[&names.records(), &names.versions(), &names.quarantine()],
        )
        .await
        .map_err(db)?;
    let needs = [
        (names.records(), "SELECT, INSERT, UPDATE and DELETE"),
        (names.versions(), "USAGE"),
        (names.quarantine(), "INSERT"),
    ];
    for (i, (object, privileges)) in needs.iter().enumerate() {
        if !row.try_get::<_, bool>(i).map_err(db)? {
            return Err(Error::Database {
                step: STEP,
                server: server.to_owned(),
                transient: false,
                source: format!(
                    "this login lacks {privileges} on {object}, which the store needs \
                     (SQLSTATE 42501 would follow at the first call)"
                )
                .into(),
            });
        }
    }
    Ok(())
}

/// Why a migration did not run.
enum Failed {
    /// A lock it needs stayed held for the whole wait.
    Busy {
        lock: i64,
        what: String,
    },
    Other(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Other(e)
    }
}

/// Runs the missing migrations in one transaction, under the table's lock.
async fn run(
    client: &mut Client,
    names: &Names,
    server: &str,
    lock_wait: Duration,
    latest: i32,
) -> std::result::Result<(), Failed> {
    let db = |e| db_error(STEP, server, e);
    let tx = client.transaction().await.map_err(db)?;
    // The wait for a lock is bounded by `lock_wait`, and no statement of the
    // migration may end sooner than that wait (the session's own statement
    // timeout may be shorter).
    let ms = lock_wait.as_millis().clamp(1, i32::MAX as u128 / 2);
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = {}",
        ms * 2
    ))
    .await
    .map_err(db)?;
    let table_lock = lock_id(&format!("jobsafe migrate {}", names.shown()));
    take(
        &tx,
        table_lock,
        || format!("migrations of table {}", names.shown()),
        server,
    )
    .await?;

    let recorded: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&names.migrations()])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db)?;
    if !recorded {
        let schema_lock = lock_id(&format!("jobsafe schema {}", names.schema));
        take(
            &tx,
            schema_lock,
            || format!("schema {}", names.schema),
            server,
        )
        .await?;
        // CREATE SCHEMA IF NOT EXISTS needs the right to create schemas even
        // when the schema exists: ask first (under the lock, so that the answer
        // holds), so that a role without it can use a prepared schema.
        let schema_exists: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&names.schema],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db)?;
        if !schema_exists {
            tx.batch_execute(&format!("CREATE SCHEMA \"{}\"", names.schema))
                .await
                .map_err(db)?;
        }
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 store_table text NOT NULL,
                 version integer NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (store_table, version)
             )",
            names.migrations()
        ))
        .await
        .map_err(db)?;
    }

    // Read again under the lock: another process may have migrated meanwhile.
    let table = names.migrations();
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {table} WHERE store_table = $1"),
            &[&names.table],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db)?;
    if current >= latest {
        // Nothing left to do; whatever was found is checked after.
        return Ok(());
    }
    for (version, sql) in (1..)
        .zip(&names.migrations_sql())
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.batch_execute(sql).await.map_err(db)?;
        tx.execute(
            &format!("INSERT INTO {table} (store_table, version) VALUES ($1, $2)"),
            &[&names.table, &version],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}

/// Takes the transaction-scoped advisory lock `lock`, waiting at most the
/// transaction's `lock_timeout`.
async fn take(
    tx: &Transaction<'_>,
    lock: i64,
    what: impl FnOnce() -> String,
    server: &str,
) -> std::result::Result<(), Failed> {
    match tx
        .execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
            Err(Failed::Busy { lock, what: what() })
        }
        Err(e) => Err(Failed::Other(db_error(STEP, server, e))),
    }
}

/// The id of an advisory lock named `name`.
fn lock_id(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The session holding advisory lock `lock`, in words, as far as the server
/// shows it to this login.
async fn holder(client: &Client, lock: i64) -> String {
    // A bigint advisory lock shows in pg_locks as its high and low 32 bits.
    let bits = lock.cast_unsigned();
    let (high, low) = (
        (bits >> 32).cast_signed(),
        (bits & 0xffff_ffff).cast_signed(),
    );
    let found = client
        .query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
                    coalesce(host(a.client_addr), 'a local socket')
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::int8 = $1 AND l.objid::int8 = $2
             LIMIT 1",
            &[&high, &low],
        )
        .await;
    match found {
        Ok(Some(row)) => {
            let pid: i32 = row.try_get(0).unwrap_or_default();
            let app: String = row.try_get(1).unwrap_or_default();
            let user: String = row.try_get(2).unwrap_or_default();
            let from: String = row.try_get(3).unwrap_or_default();
            format!("server process {pid} (application_name {app:?}, user {user:?}, from {from})")
        }
        Ok(None) => "a session that has released it since; try again".to_owned(),
        Err(_) => "a session that could not be looked up".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_per_schema_and_table() {
        let a = lock_id("jobsafe migrate app.jobsafe_records");
        assert_ne!(a, lock_id("jobsafe migrate app.other"));
        assert_ne!(a, lock_id("jobsafe migrate other.jobsafe_records"));
        assert_ne!(a, lock_id("jobsafe schema app"));
        assert_eq!(a, lock_id("jobsafe migrate app.jobsafe_records"));
    }
}
