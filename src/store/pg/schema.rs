//! Creating and migrating a store's tables.
//!
//! Each schema holds a `jobsafe_schema` table with one row per migration applied
//! to each store table. Opening a store runs the missing migrations in one
//! transaction that first takes a transaction-scoped advisory lock, so that
//! processes starting at once apply each migration exactly once, and a process
//! that dies midway leaves nothing half done.

use tokio_postgres::Client;

use super::failure::db_error;
use super::sql::Names;
use crate::error::{Error, Result};

/// The advisory lock every jobsafe migration takes ("jobsafe" in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x6a6f_6273_6166_6501;

/// Brings the store's tables to the current schema version; returns that version.
pub(crate) async fn migrate(client: &mut Client, names: &Names, server: &str) -> Result<i32> {
    let step = "migrate schema";
    let db = |e| db_error(step, server, e);
    let migrations = names.migrations_sql();
    let latest = i32::try_from(migrations.len()).unwrap_or(i32::MAX);

    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    // CREATE SCHEMA IF NOT EXISTS needs the right to create schemas even when the
    // schema exists: ask first, so that a role without it can use a prepared one.
    let exists = tx
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&names.schema],
        )
        .await
        .map_err(db)?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA \"{}\"", names.schema))
            .await
            .map_err(db)?;
    }
    let table = names.migrations();
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
             store_table text NOT NULL,
             version integer NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (store_table, version)
         )"
    ))
    .await
    .map_err(db)?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {table} WHERE store_table = $1"),
            &[&names.table],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db)?;
    if current > latest {
        return Err(Error::Database {
            step,
            server: server.to_owned(),
            transient: false,
            source: format!(
                "table {} is at schema version {current}, newer than this build of jobsafe \
                 knows ({latest}); upgrade jobsafe",
                names.shown()
            )
            .into(),
        });
    }
    for (version, sql) in (1..)
        .zip(&migrations)
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
    Ok(latest)
}
