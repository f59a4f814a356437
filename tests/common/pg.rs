//! The PostgreSQL server the `PgStore` tests run against, named by
//! `JOBSAFE_PG_URL`. Each test works in schemas of its own, so tests run in
//! parallel, and drops them when it ends.

use std::net::{SocketAddr, ToSocketAddrs};

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
pub fn client() -> Client {
    Client::connect(&url()).unwrap_or_else(|e| panic!("connect to {URL_VAR}: {e}"))
}

/// A blocking connection for the tests' own SQL, usable on any thread (a
/// `#[tokio::test]`'s included): each call runs on a runtime of its own, on a
/// thread of its own.
pub struct Client {
    runtime: Option<tokio::runtime::Runtime>,
    client: tokio_postgres::Client,
}

impl Client {
    /// Connects to `url`.
    pub fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("start a runtime: {e}"));
        let client = on_a_thread(|| {
            runtime.block_on(async {
                let (client, connection) = url
                    .parse::<tokio_postgres::Config>()?
                    .connect(tokio_postgres::NoTls)
                    .await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok::<_, tokio_postgres::Error>(client)
            })
        })?;
        Ok(Client {
            runtime: Some(runtime),
            client,
        })
    }

    fn run<T: Send>(
        &mut self,
        work: impl AsyncFnOnce(&mut tokio_postgres::Client) -> T + Send,
    ) -> T {
        let Some(runtime) = self.runtime.as_ref() else {
            panic!("the client is being dropped");
        };
        let client = &mut self.client;
        on_a_thread(|| runtime.block_on(work(client)))
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.run(async |c| c.batch_execute(sql).await)
    }

    pub fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.run(async |c| c.execute(sql, params).await)
    }

    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        self.run(async |c| c.query(sql, params).await)
    }

    pub fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        self.run(async |c| c.query_one(sql, params).await)
    }
}

/// Runs `f` on a thread of its own, outside any runtime the caller is in.
fn on_a_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for Client {
    fn drop(&mut self) {
        // A runtime cannot be dropped the ordinary way inside another one.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
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
        let Ok(mut client) = Client::connect(&url()) else {
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

/// The server's address, for a proxy in front of it.
pub fn server_addr() -> SocketAddr {
    let config: tokio_postgres::Config = url().parse().unwrap_or_else(|e| panic!("{URL_VAR}: {e}"));
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(_) => panic!("this test needs a server on TCP"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("{URL_VAR}: {host}:{port} does not resolve"))
}

/// A URL that reaches the server through a proxy on loopback `port`.
pub fn url_through(port: u16) -> String {
    let config: tokio_postgres::Config = url().parse().unwrap_or_else(|e| panic!("{URL_VAR}: {e}"));
    let password = String::from_utf8_lossy(config.get_password().unwrap_or_default()).into_owned();
    format!(
        "host=127.0.0.1 port={port} user={} password={} dbname={}",
        config.get_user().unwrap_or("postgres"),
        password,
        config.get_dbname().unwrap_or("postgres"),
    )
}

/// `url` with an `application_name` a test can find its sessions by.
pub fn named(url: &str, app: &str) -> String {
    if !url.contains("://") {
        format!("{url} application_name={app}")
    } else if url.contains('?') {
        format!("{url}&application_name={app}")
    } else {
        format!("{url}?application_name={app}")
    }
}
