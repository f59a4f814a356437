//! The shared store: records in a PostgreSQL table, for services that run on
//! several machines.

mod clock;
mod conn;
mod schema;
mod sql;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use postgres::GenericClient;

pub use self::clock::PgClock;
use self::conn::{Conn, Manager, Statements, db_error, server_name};
use self::sql::{Names, Sql, checksum, key_lock, row_id};
use crate::durability::Durability;
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::store::packed::pack;
use crate::store::{
    Applied, Batch, BatchOp, Entry, Expect, ListPage, Quarantined, Store, Version, check_limit,
};

/// How often a write retries when the record changed between its attempt and the
/// read that explains why the attempt wrote nothing.
const RETRIES: usize = 16;

/// A [`Store`] in a PostgreSQL table: one ledger, one set of locks and one set of
/// jobs shared by many processes on many machines.
///
/// Use it when the embedded stores no longer serve: when more than one machine
/// must see the same records. Every jobsafe component runs on it unchanged; give
/// them a [`PgClock`] too, so that every lease, TTL and retention decision reads
/// the server's clock and the machines' clock skew cannot matter.
///
/// Available with the cargo feature `postgres`.
///
/// # Design
///
/// ```text
/// schema.jobsafe_schema        migrations applied, per store table
/// schema.table                 id bytea primary key  (SHA-256 of the key)
///                              key bytea             (segments joined by NUL)
///                              version bigint        (from the sequence below)
///                              value bytea
///                              sum bytea             (SHA-256 of version, key, value)
///                              index on the key's first 1024 bytes, for listing
/// schema.table_versions        sequence: every version of every key
/// schema.table_quarantine      rows moved aside by `quarantine`
/// ```
///
/// - **Compare-and-set in one statement.** Each write states its precondition in
///   its `WHERE` or `ON CONFLICT` clause and takes its version from one sequence
///   in the same statement, under `READ COMMITTED` (set on every connection):
///   the row lock serializes writers of one key across every machine. A write
///   that changed nothing reads the row to report the [`Error::Conflict`] with
///   the current version.
/// - **Versions are never reused.** They come from one sequence for the whole
///   table, which never hands out a number twice, so a key deleted (or
///   quarantined) and created again always gets a newer version.
/// - **Batches** run in one transaction, their rows locked in key order so that
///   two batches never deadlock.
/// - **Listing** walks an index on the keys in byte order, which is key order
///   (segments joined by NUL, which sorts below every other byte).
/// - **Damage.** Every row carries a checksum, checked on every read, and no write
///   touches a row whose checksum does not match: a row edited outside jobsafe
///   or damaged is [`Error::Corrupt`], never overwritten, until
///   [`quarantine`](Store::quarantine) moves it to the quarantine table.
/// - **Connections** come from a pool ([`r2d2`](https://docs.rs/r2d2)); checking
///   one out costs no round trip. When the server restarts, the call that finds
///   its connection dead fails with a transient [`Error::Database`], and the
///   pool replaces dead connections on the calls after it.
/// - **Migrations** are versioned in `jobsafe_schema` and run on open, in one
///   transaction under an advisory lock: idempotent, and safe when many
///   processes start at once.
///
/// # Guarantees
///
/// The whole [`Store`] contract, across processes and machines. With
/// [`Durability::Full`] (the default) every connection sets
/// `synchronous_commit = on`: a write that returned `Ok` was flushed to the
/// server's disk (and to its synchronous standbys, if it has any), whatever the
/// server's default.
///
/// # Limitations
///
/// - A write that fails with a transient error (the connection dropped after the
///   request was sent) may or may not have been committed: the error says the
///   answer was lost, not the change. Re-read before repeating it.
/// - Connections are not encrypted (no TLS): use it on a trusted network or
///   through a local tunnel.
/// - Keys longer than 1024 bytes that share their first 1024 bytes are ordered
///   by a sort after the index scan: correct, but slower to list.
///
/// ```no_run
/// use jobsafe::{Expect, JobLock, Key, PgStore, Store};
/// use jobsafe::lock::LockRequest;
/// use jobsafe::store::PgClock;
/// use std::{sync::Arc, time::Duration};
///
/// let store = PgStore::builder("postgres://jobsafe:secret@db.internal/jobsafe")
///     .table("relay_state")
///     .open()?;
/// let key = Key::new(["ledger", "lic:abc123", "job-42"])?;
/// store.put(&key, br#"{"charged":true}"#, Expect::Absent)?;
///
/// // Leases decided by the server's clock, whatever the machines' clocks say.
/// let clock = PgClock::new(&store)?;
/// let locks = JobLock::new(store.clone(), Arc::new(clock));
/// let _ = locks.acquire(&Key::new(["reindex", "vault-1"])?, Duration::from_secs(30), &LockRequest::new())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: r2d2::Pool<Manager>,
    sql: Arc<Sql>,
    server: String,
    names: Names,
    /// Goes up whenever a request finds its connection dead; see [`Manager`].
    generation: Arc<AtomicU64>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("server", &self.shared.server)
            .field("table", &self.shared.names.shown())
            .finish_non_exhaustive()
    }
}

/// Options for opening a [`PgStore`]. Available with the cargo feature
/// `postgres`.
///
/// ```no_run
/// use std::time::Duration;
/// use jobsafe::{Durability, PgStore};
///
/// let store = PgStore::builder("postgres://jobsafe:secret@127.0.0.1:5432/jobsafe")
///     .schema("jobsafe")
///     .table("records")
///     .pool_size(16)
///     .connect_timeout(Duration::from_secs(5))
///     .durability(Durability::Full)
///     .open()?;
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Clone)]
pub struct PgStoreBuilder {
    url: String,
    schema: String,
    table: String,
    pool_size: u32,
    connect_timeout: Duration,
    durability: Durability,
}

impl fmt::Debug for PgStoreBuilder {
    /// Names the server as errors do, never the URL: it may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let server = self.url.parse::<postgres::Config>().map_or_else(
            |_| "(a URL that does not parse)".to_owned(),
            |c| conn::server_name(&c),
        );
        f.debug_struct("PgStoreBuilder")
            .field("server", &server)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("durability", &self.durability)
            .finish()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`
    /// or `host=... user=...`), creates or migrates the store's tables, and
    /// returns the store, with the defaults of [`PgStore::builder`].
    ///
    /// # Errors
    /// As [`PgStoreBuilder::open`].
    pub fn open(url: &str) -> Result<Self> {
        PgStore::builder(url).open()
    }

    /// Options for the store in the database at `url`.
    pub fn builder(url: &str) -> PgStoreBuilder {
        PgStoreBuilder {
            url: url.to_owned(),
            schema: "public".to_owned(),
            table: "jobsafe_records".to_owned(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            durability: Durability::Full,
        }
    }

    /// The server, as errors name it: `host:port/database`.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// The records table, as `schema.table`.
    pub fn table(&self) -> String {
        self.shared.names.shown()
    }
}

impl PgStoreBuilder {
    /// The schema holding the store's tables, created if missing. Default:
    /// `public`. Lowercase ASCII letters, digits and `_`, not starting with a
    /// digit, at most 40 bytes.
    pub fn schema(mut self, schema: &str) -> Self {
        schema.clone_into(&mut self.schema);
        self
    }

    /// The records table; the store also creates `<table>_versions` and
    /// `<table>_quarantine`. Default: `jobsafe_records`. Same rules as
    /// [`schema`](PgStoreBuilder::schema). Stores with different tables are
    /// independent, in one schema or several.
    pub fn table(mut self, table: &str) -> Self {
        table.clone_into(&mut self.table);
        self
    }

    /// The most connections this store holds open at once; calls beyond it wait
    /// for one to be free. Default: 8. Connections are opened when first needed
    /// and closed after 10 minutes unused.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long a call waits for a connection (to be made, or to be free) before
    /// it fails with a transient [`Error::Database`]. Default: 10 s. Also the
    /// connection timeout, unless the URL sets `connect_timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// What a write survives once it returns. Default: [`Durability::Full`]
    /// (`synchronous_commit = on`). **[`Durability::AtomicOnly`] sets
    /// `synchronous_commit = off`: a server crash loses the writes acknowledged
    /// in the last moments before it** (never a part of a batch): for tests and
    /// benchmark set-up only.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Connects, creates or migrates the tables, and returns the store.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a URL that does not parse or a bad schema
    /// or table name; [`Error::Database`] naming the server if it cannot be
    /// reached (transient), refuses the login, or the migration fails, or if the
    /// tables were migrated by a newer jobsafe.
    pub fn open(self) -> Result<PgStore> {
        check_name("schema", &self.schema)?;
        check_name("table", &self.table)?;
        let mut config: postgres::Config = self.url.parse().map_err(|_: postgres::Error| {
            // Neither the URL nor the parser's message (which quotes the part
            // it could not read) is repeated: either may hold a password.
            Error::InvalidArgument(
                "the database URL does not parse as a PostgreSQL connection string".to_owned(),
            )
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("jobsafe");
        }
        let server = server_name(&config);
        let names = Names {
            schema: self.schema,
            table: self.table,
        };

        let mut client = config
            .connect(postgres::NoTls)
            .map_err(|e| db_error("connect", &server, e))?;
        schema::migrate(&mut client, &names, &server)?;
        drop(client);

        let setup = match self.durability {
            Durability::Full => {
                "SET synchronous_commit = on; \
                 SET default_transaction_isolation = 'read committed'"
            }
            Durability::AtomicOnly => {
                "SET synchronous_commit = off; \
                 SET default_transaction_isolation = 'read committed'"
            }
        };
        let generation = Arc::new(AtomicU64::new(0));
        let sql = Arc::new(Sql::new(&names));
        let manager = Manager::new(config, sql.clone(), setup, generation.clone());
        let pool = r2d2::Pool::builder()
            .max_size(self.pool_size)
            .min_idle(Some(0))
            .test_on_check_out(true)
            .connection_timeout(self.connect_timeout)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        Ok(PgStore {
            shared: Arc::new(Shared {
                pool,
                sql,
                server,
                names,
                generation,
            }),
        })
    }
}

/// Schema and table names go into SQL text: only plain lowercase identifiers.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{what} name {name:?}: use 1 to 40 lowercase ASCII letters, digits and '_', \
         not starting with a digit"
    )))
}

/// What an operation needs to name the server and table in its errors.
struct Ctx<'a> {
    server: &'a str,
    names: &'a Names,
}

impl Ctx<'_> {
    fn db(&self, step: &'static str) -> impl Fn(postgres::Error) -> Error + '_ {
        move |e| db_error(step, self.server, e)
    }

    fn corrupt(&self, key: &Key, reason: &str) -> Error {
        Error::Corrupt {
            key: key.clone(),
            path: None,
            reason: format!(
                "{reason} (row in table {} on database server {})",
                self.names.shown(),
                self.server
            ),
        }
    }

    fn corrupt_row(&self, reason: String) -> Error {
        Error::CorruptRow {
            server: self.server.to_owned(),
            table: self.names.shown(),
            reason,
        }
    }
}

/// A key's row: its id, its packed key and the advisory lock its writers take
/// before they draw a version.
struct Row {
    id: Vec<u8>,
    packed: Vec<u8>,
    lock: i64,
}

impl Row {
    fn of(key: &Key) -> Self {
        let packed = pack(key.segments());
        let id = row_id(&packed);
        Row {
            lock: key_lock(&id),
            id,
            packed,
        }
    }
}

/// A version as the database holds it; one that no row can have maps to -1, which
/// matches nothing.
fn db_version(v: Version) -> i64 {
    i64::try_from(v.get()).unwrap_or(-1)
}

impl PgStore {
    /// Runs `f` on a pooled connection. If the connection turns out dead, every
    /// other pooled connection is checked before its next use.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn, &Ctx<'_>) -> Result<T>) -> Result<T> {
        let shared = &self.shared;
        let mut conn = shared.pool.get().map_err(|e| Error::Database {
            step: "connect",
            server: shared.server.clone(),
            transient: true,
            source: Box::new(e),
        })?;
        let ctx = Ctx {
            server: &shared.server,
            names: &shared.names,
        };
        let result = f(&mut conn, &ctx);
        if result.is_err() && conn.client.is_closed() {
            shared.generation.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

/// The key's record, its checksum checked.
fn read(
    c: &mut impl GenericClient,
    st: &Statements,
    ctx: &Ctx<'_>,
    key: &Key,
    row: &Row,
) -> Result<Option<Entry>> {
    let rows = c.query(&st.get, &[&row.id]).map_err(ctx.db("get"))?;
    let Some(found) = rows.first() else {
        return Ok(None);
    };
    let columns = (|| {
        Ok::<_, postgres::Error>((
            found.try_get::<_, Vec<u8>>(0)?,
            found.try_get::<_, i64>(1)?,
            found.try_get::<_, Vec<u8>>(2)?,
            found.try_get::<_, Vec<u8>>(3)?,
        ))
    })();
    let (stored_key, version, value, sum) =
        columns.map_err(|e| ctx.corrupt(key, &format!("columns do not decode: {e}")))?;
    if stored_key != row.packed {
        return Err(ctx.corrupt(key, "the row's key column holds another key"));
    }
    if sum != checksum(version, &stored_key, &value) {
        return Err(ctx.corrupt(
            key,
            "checksum does not match the row (edited outside jobsafe, or damaged)",
        ));
    }
    let version = u64::try_from(version)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| ctx.corrupt(key, &format!("version {version} is not positive")))?;
    Ok(Some(Entry {
        value,
        version: Version::new(version),
    }))
}

/// The version a write returned.
fn written(rows: &[postgres::Row], ctx: &Ctx<'_>, key: &Key) -> Result<Option<Version>> {
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let version: i64 = row.try_get(0).map_err(ctx.db("put"))?;
    u64::try_from(version)
        .map(|v| Some(Version::new(v)))
        .map_err(|_| ctx.corrupt(key, &format!("version {version} is not positive")))
}

fn put_op(
    c: &mut impl GenericClient,
    st: &Statements,
    ctx: &Ctx<'_>,
    key: &Key,
    value: &[u8],
    expect: Expect,
) -> Result<Version> {
    let row = Row::of(key);
    for _ in 0..RETRIES {
        let rows = match expect {
            Expect::Any => c.query(&st.upsert, &[&row.id, &row.packed, &value, &row.lock]),
            Expect::Absent => c.query(&st.insert, &[&row.id, &row.packed, &value, &row.lock]),
            Expect::Version(v) => {
                c.query(&st.update, &[&row.id, &value, &db_version(v), &row.lock])
            }
        }
        .map_err(ctx.db("put"))?;
        if let Some(version) = written(&rows, ctx, key)? {
            return Ok(version);
        }
        // Nothing written: the row is damaged (the read says so), or the
        // precondition failed, or the row changed since; then try again.
        let current = read(c, st, ctx, key, &row)?.map(|e| e.version);
        expect.check(key, current)?;
    }
    Err(contended("put", ctx, key))
}

fn delete_op(
    c: &mut impl GenericClient,
    st: &Statements,
    ctx: &Ctx<'_>,
    key: &Key,
    expect: Expect,
) -> Result<bool> {
    let row = Row::of(key);
    for _ in 0..RETRIES {
        let rows = match expect {
            Expect::Absent => {
                let current = read(c, st, ctx, key, &row)?.map(|e| e.version);
                expect.check(key, current)?;
                return Ok(false);
            }
            Expect::Any => c.query(&st.delete_any, &[&row.id]),
            Expect::Version(v) => c.query(&st.delete_version, &[&row.id, &db_version(v)]),
        }
        .map_err(ctx.db("delete"))?;
        if !rows.is_empty() {
            return Ok(true);
        }
        match read(c, st, ctx, key, &row)?.map(|e| e.version) {
            None if expect == Expect::Any => return Ok(false),
            current => expect.check(key, current)?,
        }
    }
    Err(contended("delete", ctx, key))
}

fn contended(step: &'static str, ctx: &Ctx<'_>, key: &Key) -> Error {
    Error::Database {
        step,
        server: ctx.server.to_owned(),
        transient: true,
        source: format!("{key} changed under each of {RETRIES} attempts").into(),
    }
}

/// A key read back from its packed form; anything that is not a valid key is a
/// damaged row (never a lossy guess that would name another key).
fn unpack_strict(bytes: &[u8]) -> std::result::Result<Key, String> {
    let segments = bytes
        .split(|&b| b == 0)
        .map(|s| String::from_utf8(s.to_vec()))
        .collect::<std::result::Result<Vec<String>, _>>()
        .map_err(|_| format!("key column {} is not UTF-8", show_bytes(bytes)))?;
    Key::new(segments).map_err(|e| format!("key column {} is not a key: {e}", show_bytes(bytes)))
}

fn show_bytes(bytes: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
        .escape_debug()
        .collect();
    if bytes.len() > 64 {
        format!("\"{shown}…\" ({} bytes)", bytes.len())
    } else {
        format!("\"{shown}\"")
    }
}

impl Store for PgStore {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.with_conn(|conn, ctx| {
            read(&mut conn.client, &conn.statements, ctx, key, &Row::of(key))
        })
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        // Checked here, not left to the server: a value it cannot take (over
        // 1 GB) makes it drop the connection, which looks transient.
        Entry::check_value(key, value)?;
        self.with_conn(|conn, ctx| {
            put_op(&mut conn.client, &conn.statements, ctx, key, value, expect)
        })
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        self.with_conn(|conn, ctx| delete_op(&mut conn.client, &conn.statements, ctx, key, expect))
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        check_limit(limit)?;
        let lowest = pack(prefix.segments());
        let after = after.map(|k| pack(k.segments())).unwrap_or_default();
        // One more than asked, to know whether another page follows.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let sql = &self.shared.sql;
        self.with_conn(|conn, ctx| {
            let (bytea, int8) = (postgres::types::Type::BYTEA, postgres::types::Type::INT8);
            let rows = if lowest.is_empty() {
                conn.client
                    .query_typed(&sql.list_all, &[(&after, bytea), (&fetch, int8)])
            } else {
                // Keys under the prefix are the prefix itself and the prefix
                // followed by NUL: everything below the prefix followed by 0x01.
                let mut bound = lowest.clone();
                bound.push(1);
                conn.client.query_typed(
                    &sql.list_range,
                    &[
                        (&lowest, bytea.clone()),
                        (&after, bytea.clone()),
                        (&bound, bytea),
                        (&fetch, int8),
                    ],
                )
            }
            .map_err(ctx.db("list"))?;
            let mut keys = Vec::with_capacity(rows.len().min(limit));
            for row in rows.iter().take(limit) {
                let bytes: Vec<u8> = row.try_get(0).map_err(ctx.db("list"))?;
                keys.push(unpack_strict(&bytes).map_err(|reason| ctx.corrupt_row(reason))?);
            }
            let next = if rows.len() > limit {
                keys.last().cloned()
            } else {
                None
            };
            Ok(ListPage { keys, next })
        })
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        batch.validate()?;
        let ops = batch.ops();
        // Rows are locked in key order, so that two batches never wait for each
        // other in a cycle.
        let mut order: Vec<(Vec<u8>, usize)> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| (pack(op.key().segments()), i))
            .collect();
        order.sort();
        self.with_conn(|conn, ctx| {
            let st = &conn.statements;
            let mut tx = conn.client.transaction().map_err(ctx.db("begin batch"))?;
            let mut applied = vec![Applied::Deleted(false); ops.len()];
            for (_, i) in &order {
                applied[*i] = match &ops[*i] {
                    BatchOp::Put { key, value, expect } => {
                        Applied::Put(put_op(&mut tx, st, ctx, key, value, *expect)?)
                    }
                    BatchOp::Delete { key, expect } => {
                        Applied::Deleted(delete_op(&mut tx, st, ctx, key, *expect)?)
                    }
                };
            }
            tx.commit().map_err(ctx.db("commit batch"))?;
            Ok(applied)
        })
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        let row = Row::of(key);
        self.with_conn(|conn, ctx| {
            let rows = conn
                .client
                .query(&conn.statements.quarantine, &[&row.id])
                .map_err(ctx.db("quarantine"))?;
            let Some(moved) = rows.first() else {
                return Ok(None);
            };
            let id: i64 = moved.try_get(0).map_err(ctx.db("quarantine"))?;
            Ok(Some(Quarantined {
                key: key.clone(),
                location: format!(
                    "row id {id} of table {}_quarantine on database server {}",
                    ctx.names.shown(),
                    ctx.server
                ),
            }))
        })
    }
}

#[cfg(test)]
mod password_tests {
    use super::*;

    #[test]
    fn neither_a_builder_nor_a_server_name_shows_a_password() {
        for url in [
            "postgres://app:Zq1secret@db.internal:5432/jobs",
            "postgres://app:Zq1@Zq2secret@db.internal/jobs",
            "postgresql://app@db.internal/jobs?password=Zq1secret",
            "host=db.internal user=app password=Zq1secret dbname=jobs",
        ] {
            let shown = format!("{:?}", PgStore::builder(url));
            assert!(
                !shown.contains("Zq1") && !shown.contains("Zq2"),
                "{url}: {shown}"
            );
            assert!(shown.contains("db.internal"), "{url}: {shown}");
            if let Ok(config) = url.parse::<postgres::Config>() {
                let name = server_name(&config);
                assert!(!name.contains("Zq"), "{url}: {name}");
            }
        }
    }

    #[test]
    fn a_url_that_does_not_parse_is_not_quoted() {
        let err = PgStore::builder("postgres://app:Zq1secret@db/jobs?bogus=Zq2secret")
            .open()
            .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("Zq"), "{text}");
    }
}
