//! SQLite as a [`KvEngine`] and as a [`LeaseEngine`]: the embedded database a
//! service would otherwise reach for, set up as it is usually recommended (WAL) and
//! given its best schema.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::kv::KvEngine;
use super::lease::{self, LeaseEngine};
use super::{BenchResult, Syncs};

/// SQLite's `synchronous` setting in WAL mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Synchronous {
    /// Every commit fsyncs the WAL: survives a power loss, like jobsafe's
    /// `Durability::Full`.
    Full,
    /// Commits are not flushed, only checkpoints are: survives a process crash, but
    /// a power loss may undo the last commits.
    Normal,
}

/// One connection, each operation its own autocommit transaction.
#[derive(Debug)]
pub(crate) struct SqliteEngine {
    conn: Connection,
}

const SCHEMA: &str = "CREATE TABLE kv (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID";
const INSERT: &str =
    "INSERT INTO kv (key, value, version) VALUES (?1, ?2, 1) ON CONFLICT (key) DO NOTHING";
const UPDATE: &str =
    "UPDATE kv SET value = ?1, version = version + 1 WHERE key = ?2 AND version = ?3";
const GET: &str = "SELECT value FROM kv WHERE key = ?1";

/// How long a connection waits for another's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens (creating) the database `path` in WAL mode with `synchronous`. A
/// connection waits up to 30 s for another connection's write lock.
pub(crate) fn connect(path: &Path, synchronous: Synchronous) -> BenchResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("SQLite refused WAL mode (journal_mode = {mode})").into());
    }
    let level = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    Ok(conn)
}

/// Creates the database `path` as [`connect`] does, with the tables of `schema`.
fn open(path: &Path, synchronous: Synchronous, schema: &str) -> BenchResult<Connection> {
    let conn = connect(path, synchronous)?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

impl SqliteEngine {
    /// Creates the database `kv.sqlite3` in `dir` in WAL mode with `synchronous`.
    pub(crate) fn open(dir: &Path, synchronous: Synchronous) -> BenchResult<Self> {
        let conn = open(&dir.join("kv.sqlite3"), synchronous, SCHEMA)?;
        Ok(SqliteEngine { conn })
    }

    /// Another connection to the database [`open`](Self::open) created in `dir`,
    /// for another thread.
    pub(crate) fn connect(dir: &Path, synchronous: Synchronous) -> BenchResult<Self> {
        let conn = connect(&dir.join("kv.sqlite3"), synchronous)?;
        Ok(SqliteEngine { conn })
    }

    /// Inserts `records` (key, value) in one transaction: how a bench fills the
    /// table before timing.
    pub(crate) fn load<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> BenchResult {
        let tx = self.conn.transaction()?;
        for (key, value) in records {
            tx.prepare_cached(INSERT)?.execute(params![key, value])?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl KvEngine for SqliteEngine {
    fn insert(&mut self, key: &str, value: &[u8]) -> BenchResult<u64> {
        let inserted = self
            .conn
            .prepare_cached(INSERT)?
            .execute(params![key, value])?;
        if inserted != 1 {
            return Err(format!("sqlite: insert of existing key {key}").into());
        }
        Ok(1)
    }

    fn update(&mut self, key: &str, value: &[u8], expected: u64) -> BenchResult<u64> {
        let version = i64::try_from(expected)?;
        let updated = self
            .conn
            .prepare_cached(UPDATE)?
            .execute(params![value, key, version])?;
        if updated != 1 {
            return Err(format!("sqlite: {key} is not at version {expected}").into());
        }
        Ok(expected + 1)
    }

    fn get(&mut self, key: &str) -> BenchResult<Option<Vec<u8>>> {
        let value = self
            .conn
            .prepare_cached(GET)?
            .query_row(params![key], |row| row.get(0))
            .optional()?;
        Ok(value)
    }

    fn syncs(&self) -> Syncs {
        // SQLite flushes through its own VFS, which jobsafe's layer cannot see.
        Syncs::Uncounted
    }
}

/// A lease table as a service would keep one: a row per held lock, taken by one
/// upsert that succeeds only where no row is or the row's lease has ended, and
/// released by a delete that matches the holder. Each statement is its own
/// autocommit transaction, durable when it returns at `synchronous = FULL`.
///
/// The upsert takes a lease over once `expires_at < now`, a millisecond after
/// [`JobLock`](jobsafe::JobLock) would (at `expires_at`); the bench's leases never
/// end, so this does not matter here.
#[derive(Debug)]
pub(crate) struct SqliteLease {
    conn: Connection,
}

const LOCK_SCHEMA: &str = "CREATE TABLE locks (
    key TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID";
const LOCK_ACQUIRE: &str = "INSERT INTO locks (key, holder, expires_at) VALUES (?1, ?2, ?3) \
    ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
    WHERE locks.expires_at < ?4";
const LOCK_RELEASE: &str = "DELETE FROM locks WHERE key = ?1 AND holder = ?2";

impl SqliteLease {
    /// Creates the database `locks.sqlite3` in `dir` in WAL mode with `synchronous`.
    pub(crate) fn open(dir: &Path, synchronous: Synchronous) -> BenchResult<Self> {
        let conn = open(&dir.join("locks.sqlite3"), synchronous, LOCK_SCHEMA)?;
        Ok(SqliteLease { conn })
    }

    /// Another connection to the database [`open`](Self::open) created in `dir`,
    /// for another thread.
    pub(crate) fn connect(dir: &Path, synchronous: Synchronous) -> BenchResult<Self> {
        let conn = connect(&dir.join("locks.sqlite3"), synchronous)?;
        Ok(SqliteLease { conn })
    }
}

impl LeaseEngine for SqliteLease {
    type Key = String;
    /// The holder id, unique per acquire as [`JobLock`](jobsafe::JobLock)'s job ids
    /// are.
    type Held = String;

    fn key(&mut self, name: &str) -> BenchResult<String> {
        Ok(name.to_owned())
    }

    fn acquire(&mut self, key: &String) -> BenchResult<Option<String>> {
        let holder = uuid::Uuid::now_v7().to_string();
        let now = i64::try_from(lease::now_ms())?;
        let expires = now.saturating_add(i64::try_from(lease::TTL.as_millis())?);
        let changed = self
            .conn
            .prepare_cached(LOCK_ACQUIRE)?
            .execute(params![key, holder, expires, now])?;
        Ok((changed == 1).then_some(holder))
    }

    fn release(&mut self, key: &String, holder: String) -> BenchResult<bool> {
        let deleted = self
            .conn
            .prepare_cached(LOCK_RELEASE)?
            .execute(params![key, holder])?;
        Ok(deleted == 1)
    }

    fn syncs(&self) -> Syncs {
        Syncs::Uncounted
    }
}
