//! The store's operations on one connection, asynchronous: what each call
//! sends and how it reads the answer. Checking a connection out, bounding the
//! call and the blocking API are the caller's (see the module above).

use std::future::Future;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row as DbRow, ToStatement};

use super::conn::{Link, Statements};
use super::failure::db_error;
use super::sql::{Names, Sql, checksum, key_lock, row_id};
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::store::packed::pack;
use crate::store::{Applied, Batch, BatchOp, Entry, Expect, ListPage, Quarantined, Version};

/// How often a write retries when the record changed between its attempt and the
/// read that explains why the attempt wrote nothing.
const RETRIES: usize = 16;

/// What an operation needs to name the server and table in its errors.
pub(crate) struct Ctx<'a> {
    pub(crate) server: &'a str,
    pub(crate) names: &'a Names,
}

impl Ctx<'_> {
    pub(crate) fn db(&self, step: &'static str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
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

/// Where an operation sends its statements: a connection of the pool's, or an
/// application's open transaction on either client (see `within`).
pub(crate) trait Exec: Sync {
    /// Runs `statement` with `params`; its rows.
    fn query<'a>(
        &'a self,
        statement: &'a (dyn ToStatement + Sync + Send),
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = std::result::Result<Vec<DbRow>, tokio_postgres::Error>> + Send + 'a;

    /// Runs `sql`, one or more statements without parameters.
    fn batch_execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = std::result::Result<(), tokio_postgres::Error>> + Send + 'a;
}

/// A client of the asynchronous client, or one of its transactions.
pub(crate) struct Async<'c, C>(pub(crate) &'c C);

impl<C: GenericClient + Sync> Exec for Async<'_, C> {
    fn query<'a>(
        &'a self,
        statement: &'a (dyn ToStatement + Sync + Send),
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = std::result::Result<Vec<DbRow>, tokio_postgres::Error>> + Send + 'a
    {
        self.0.query(statement, params)
    }

    fn batch_execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = std::result::Result<(), tokio_postgres::Error>> + Send + 'a {
        self.0.batch_execute(sql)
    }
}

/// The statements of the single-key operations: prepared on a pooled
/// connection, or as text on an application's transaction.
pub(crate) struct Stmts<'a> {
    get: &'a (dyn ToStatement + Sync + Send),
    insert: &'a (dyn ToStatement + Sync + Send),
    upsert: &'a (dyn ToStatement + Sync + Send),
    update: &'a (dyn ToStatement + Sync + Send),
    delete_any: &'a (dyn ToStatement + Sync + Send),
    delete_version: &'a (dyn ToStatement + Sync + Send),
}

impl Statements {
    /// The prepared statements, to run on their connection.
    pub(crate) fn stmts(&self) -> Stmts<'_> {
        Stmts {
            get: &self.get,
            insert: &self.insert,
            upsert: &self.upsert,
            update: &self.update,
            delete_any: &self.delete_any,
            delete_version: &self.delete_version,
        }
    }
}

impl Sql {
    /// The statements as text, to run on any connection of the database.
    pub(crate) fn stmts(&self) -> Stmts<'_> {
        Stmts {
            get: &self.get,
            insert: &self.insert,
            upsert: &self.upsert,
            update: &self.update,
            delete_any: &self.delete_any,
            delete_version: &self.delete_version,
        }
    }
}

/// A version as the database holds it; one that no row can have maps to -1, which
/// matches nothing.
fn db_version(v: Version) -> i64 {
    i64::try_from(v.get()).unwrap_or(-1)
}

/// The key's record, its checksum checked.
pub(crate) async fn get(conn: &Link, ctx: &Ctx<'_>, key: &Key) -> Result<Option<Entry>> {
    get_on(&Async(&conn.client), &conn.statements.stmts(), ctx, key).await
}

/// [`get`], on any [`Exec`].
pub(crate) async fn get_on(
    c: &impl Exec,
    st: &Stmts<'_>,
    ctx: &Ctx<'_>,
    key: &Key,
) -> Result<Option<Entry>> {
    read(c, st, ctx, key, &Row::of(key)).await
}

/// Writes the key's record if `expect` holds; returns its new version.
pub(crate) async fn put(
    conn: &Link,
    ctx: &Ctx<'_>,
    key: &Key,
    value: &[u8],
    expect: Expect,
) -> Result<Version> {
    put_op(
        &Async(&conn.client),
        &conn.statements.stmts(),
        ctx,
        key,
        value,
        expect,
    )
    .await
}

/// Deletes the key's record if `expect` holds; returns whether there was one.
pub(crate) async fn delete(conn: &Link, ctx: &Ctx<'_>, key: &Key, expect: Expect) -> Result<bool> {
    delete_op(
        &Async(&conn.client),
        &conn.statements.stmts(),
        ctx,
        key,
        expect,
    )
    .await
}

/// Up to `limit` keys under `prefix` after `after`, in key order.
pub(crate) async fn list(
    conn: &Link,
    sql: &Sql,
    ctx: &Ctx<'_>,
    prefix: &Prefix,
    after: Option<&Key>,
    limit: usize,
) -> Result<ListPage> {
    let lowest = pack(prefix.segments());
    let after = after.map(|k| pack(k.segments())).unwrap_or_default();
    // One more than asked, to know whether another page follows.
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
    let rows = if lowest.is_empty() {
        conn.client
            .query_typed(
                &sql.list_all,
                &[(&after, Type::BYTEA), (&fetch, Type::INT8)],
            )
            .await
    } else {
        // Keys under the prefix are the prefix itself and the prefix
        // followed by NUL: everything below the prefix followed by 0x01.
        let mut bound = lowest.clone();
        bound.push(1);
        conn.client
            .query_typed(
                &sql.list_range,
                &[
                    (&lowest, Type::BYTEA),
                    (&after, Type::BYTEA),
                    (&bound, Type::BYTEA),
                    (&fetch, Type::INT8),
                ],
            )
            .await
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
}

/// Applies the batch in one transaction, all or nothing.
pub(crate) async fn apply(conn: &mut Link, ctx: &Ctx<'_>, batch: &Batch) -> Result<Vec<Applied>> {
    let Link {
        client, statements, ..
    } = conn;
    let tx = client.transaction().await.map_err(ctx.db("begin batch"))?;
    let written = apply_ops(&Async(&tx), &statements.stmts(), ctx, batch).await;
    match written {
        Ok(applied) => {
            tx.commit().await.map_err(ctx.db("commit batch"))?;
            Ok(applied)
        }
        Err(e) => {
            // Rolled back here, answered, before the connection goes back to
            // the pool: a transaction dropped unfinished only queues its
            // rollback, and nothing sends it while the connection sits idle,
            // holding the batch's row and key locks. A rollback that fails
            // leaves the connection closed, and so out of the pool.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Writes the batch's operations on `c`, inside a transaction (or savepoint)
/// that the caller opened and ends: all of them, or the first error.
pub(crate) async fn apply_ops(
    c: &impl Exec,
    st: &Stmts<'_>,
    ctx: &Ctx<'_>,
    batch: &Batch,
) -> Result<Vec<Applied>> {
    let ops = batch.ops();
    // Rows are locked in key order, so that two batches never wait for each
    // other in a cycle.
    let mut order: Vec<(Vec<u8>, usize)> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| (pack(op.key().segments()), i))
        .collect();
    order.sort();
    let mut applied = vec![Applied::Deleted(false); ops.len()];
    for (_, i) in &order {
        applied[*i] = match &ops[*i] {
            BatchOp::Put { key, value, expect } => {
                Applied::Put(put_op(c, st, ctx, key, value, *expect).await?)
            }
            BatchOp::Delete { key, expect } => {
                Applied::Deleted(delete_op(c, st, ctx, key, *expect).await?)
            }
        };
    }
    Ok(applied)
}

/// Moves the key's row, whatever it holds, to the quarantine table.
pub(crate) async fn quarantine(
    conn: &Link,
    ctx: &Ctx<'_>,
    key: &Key,
) -> Result<Option<Quarantined>> {
    let row = Row::of(key);
    let rows = conn
        .client
        .query(&conn.statements.quarantine, &[&row.id])
        .await
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
}

/// The server's clock in milliseconds since the Unix epoch.
pub(crate) async fn now_ms(conn: &Link, ctx: &Ctx<'_>) -> Result<u64> {
    let step = "read the server clock";
    let row = conn
        .client
        .query_one(&conn.statements.now_ms, &[])
        .await
        .map_err(ctx.db(step))?;
    let server_ms: i64 = row.try_get(0).map_err(ctx.db(step))?;
    u64::try_from(server_ms).map_err(|_| Error::Database {
        step,
        server: ctx.server.to_owned(),
        transient: false,
        source: format!("the server's clock reads {server_ms} ms, before 1970").into(),
    })
}

/// The key's record, its checksum checked.
async fn read(
    c: &impl Exec,
    st: &Stmts<'_>,
    ctx: &Ctx<'_>,
    key: &Key,
    row: &Row,
) -> Result<Option<Entry>> {
    let rows = c.query(st.get, &[&row.id]).await.map_err(ctx.db("get"))?;
    let Some(found) = rows.first() else {
        return Ok(None);
    };
    let columns = (|| {
        Ok::<_, tokio_postgres::Error>((
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
fn written(rows: &[tokio_postgres::Row], ctx: &Ctx<'_>, key: &Key) -> Result<Option<Version>> {
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let version: i64 = row.try_get(0).map_err(ctx.db("put"))?;
    u64::try_from(version)
        .map(|v| Some(Version::new(v)))
        .map_err(|_| ctx.corrupt(key, &format!("version {version} is not positive")))
}

pub(crate) async fn put_op(
    c: &impl Exec,
    st: &Stmts<'_>,
    ctx: &Ctx<'_>,
    key: &Key,
    value: &[u8],
    expect: Expect,
) -> Result<Version> {
    let row = Row::of(key);
    for _ in 0..RETRIES {
        let rows = match expect {
            Expect::Any => {
                c.query(st.upsert, &[&row.id, &row.packed, &value, &row.lock])
                    .await
            }
            Expect::Absent => {
                c.query(st.insert, &[&row.id, &row.packed, &value, &row.lock])
                    .await
            }
            Expect::Version(v) => {
                c.query(st.update, &[&row.id, &value, &db_version(v), &row.lock])
                    .await
            }
        }
        .map_err(ctx.db("put"))?;
        if let Some(version) = written(&rows, ctx, key)? {
            return Ok(version);
        }
        // Nothing written: the row is damaged (the read says so), or the
        // precondition failed, or the row changed since; then try again.
        let current = read(c, st, ctx, key, &row).await?.map(|e| e.version);
        expect.check(key, current)?;
    }
    Err(contended("put", ctx, key))
}

pub(crate) async fn delete_op(
    c: &impl Exec,
    st: &Stmts<'_>,
    ctx: &Ctx<'_>,
    key: &Key,
    expect: Expect,
) -> Result<bool> {
    let row = Row::of(key);
    for _ in 0..RETRIES {
        let rows = match expect {
            Expect::Absent => {
                let current = read(c, st, ctx, key, &row).await?.map(|e| e.version);
                expect.check(key, current)?;
                return Ok(false);
            }
            Expect::Any => c.query(st.delete_any, &[&row.id]).await,
            Expect::Version(v) => c.query(st.delete_version, &[&row.id, &db_version(v)]).await,
        }
        .map_err(ctx.db("delete"))?;
        if !rows.is_empty() {
            return Ok(true);
        }
        match read(c, st, ctx, key, &row).await?.map(|e| e.version) {
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
