//! `PgStore` contenders: a server named by `JOBSAFE_PG_URL`, on loopback so that
//! its figures sit beside the embedded stores' (`bash .ci/postgres.sh cargo bench
//! -p jobsafe-bench --features postgres --bench ledger` starts one). Each round
//! gets a store in a schema of its own; [`drop_schemas`] removes them all.

use jobsafe::{Durability, PgStore};

use super::BenchResult;

const URL_VAR: &str = "JOBSAFE_PG_URL";
const SCHEMA_PREFIX: &str = "jobsafe_bench_";

/// The server's URL, or `None` with a printed note saying why the `PgStore`
/// rows are skipped.
pub(crate) fn url() -> Option<String> {
    let url = std::env::var(URL_VAR).ok();
    if url.is_none() {
        println!(
            "PgStore rows skipped: {URL_VAR} names no server (`bash .ci/postgres.sh cargo \
             bench -p jobsafe-bench --features postgres --bench NAME` starts one on \
             loopback)\n"
        );
    }
    url
}

/// A store in a new schema.
pub(crate) fn store(durability: Durability) -> BenchResult<PgStore> {
    store_with_pool(durability, DEFAULT_POOL)
}

/// `PgStoreBuilder`'s default pool size.
const DEFAULT_POOL: u32 = 8;

/// A store in a new schema, with at most `pool_size` connections.
pub(crate) fn store_with_pool(durability: Durability, pool_size: u32) -> BenchResult<PgStore> {
    let url = std::env::var(URL_VAR)?;
    let schema = format!(
        "{SCHEMA_PREFIX}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    Ok(PgStore::builder(&url)
        .schema(&schema)
        .durability(durability)
        .pool_size(pool_size)
        .open()?)
}

/// The same schema as `store`'s, through another handle.
pub(crate) fn again(store: &PgStore, durability: Durability) -> BenchResult<PgStore> {
    let url = std::env::var(URL_VAR)?;
    let table = store.table();
    let schema = table.split('.').next().unwrap_or_default();
    Ok(PgStore::builder(&url)
        .schema(schema)
        .durability(durability)
        .open()?)
}

/// Drops every schema a bench made.
pub(crate) fn drop_schemas() -> BenchResult {
    let url = std::env::var(URL_VAR)?;
    let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
    let rows = client.query(
        "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
        &[&SCHEMA_PREFIX],
    )?;
    for row in rows {
        let name: String = row.get(0);
        client.batch_execute(&format!("DROP SCHEMA \"{name}\" CASCADE"))?;
    }
    Ok(())
}
