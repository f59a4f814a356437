//! SQLite as a [`KvEngine`]: the embedded database a service would otherwise reach
//! for, set up as it is usually recommended (WAL) and given its best schema.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::kv::KvEngine;
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

impl SqliteEngine {
    /// Creates the database `kv.sqlite3` in `dir` in WAL mode with `synchronous`.
    pub(crate) fn open(dir: &Path, synchronous: Synchronous) -> BenchResult<Self> {
        let conn = connect(&dir.join("kv.sqlite3"), synchronous)?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteEngine { conn })
    }
}

/// Opens (creating if missing) the database at `path` in WAL mode with
/// `synchronous`: the set-up every SQLite contender shares.
pub(crate) fn connect(path: &Path, synchronous: Synchronous) -> BenchResult<Connection> {
    let conn = Connection::open(path)?;
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
