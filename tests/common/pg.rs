//! The PostgreSQL server the `PgStore` tests run against, named by
//! `JOBSAFE_PG_URL`. Each test works in schemas of its own, so tests run in
//! parallel, and drops them when it ends.

use jobsafe::{Durability, PgStore};

/// The variable naming the server.
pub const URL_VAR: &str = "JOBSAFE_PG_URL";
/// The variable holding a command that restarts the server.
pub const RESTART_VAR: &str = "JOBSAFE_PG_RESTART";

/// The server's URL; fails the test, saying how to name one, if none is set.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "the feature `postgres` is on but no server is named: set {URL_VAR} to \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE (a user that may create \
             schemas there), or run `bash .ci/postgres.sh`, which installs and starts \
             a server on loopback and runs these tests against it"
        )
    })
}

/// A direct connection, for what a test does behind the store's back.
pub fn client() -> postgres::Client {
    postgres::Client::connect(&url(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to {URL_VAR}: {e}"))
}

/// Schemas made for one test, dropped with it.
#[derive(Default)]
pub struct Schemas {
    names: Vec<String>,
}

impl Schemas {
    /// A new schema name, not yet created (the store creates it).
    pub fn fresh(&mut self) -> String {
        let name = format!(
            "jobsafe_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        self.names.push(name.clone());
        name
    }

    /// A store in a new schema.
    pub fn store(&mut self) -> PgStore {
        open(&self.fresh())
    }

    /// A store in a new schema that skips the flush on commit (for logic tests).
    pub fn fast_store(&mut self) -> PgStore {
        let schema = self.fresh();
        PgStore::builder(&url())
            .schema(&schema)
            .durability(Durability::AtomicOnly)
            .open()
            .unwrap_or_else(|e| panic!("open a PgStore in {schema}: {e}"))
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        // Best effort: a test that failed to connect has nothing to drop.
        let Ok(mut client) = postgres::Client::connect(&url(), postgres::NoTls) else {
            return;
        };
        for name in &self.names {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"));
        }
    }
}

/// The store in `schema` (created if missing).
pub fn open(schema: &str) -> PgStore {
    PgStore::builder(&url())
        .schema(schema)
        .open()
        .unwrap_or_else(|e| panic!("open a PgStore in {schema}: {e}"))
}

/// The schema of a store's table.
pub fn schema_of(store: &PgStore) -> String {
    let table = store.table();
    table.split('.').next().unwrap_or_default().to_owned()
}

/// A key as the store's `key` column holds it: segments joined by NUL.
pub fn packed(key: &jobsafe::Key) -> Vec<u8> {
    key.segments().join("\0").into_bytes()
}
