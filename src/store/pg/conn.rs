//! One connection: made, its statements prepared once, and closed so that the
//! server stops working for it.

use std::time::Instant;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::sql::Sql;

/// The server as errors name it: `host:port/database`, never a password.
pub(crate) fn server_name(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match host {
                // No host name holds an `@`: the client split a password with
                // an unencoded `@` at its first one, so what comes before the
                // last is the end of the password.
                tokio_postgres::config::Host::Tcp(name) => {
                    let name = name
                        .rsplit_once('@')
                        .map_or(name.as_str(), |(_, host)| host);
                    format!("{name}:{port}")
                }
                tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        format!("localhost:{}", ports.first().copied().unwrap_or(5432))
    } else {
        hosts.join(",")
    };
    let database = config
        .get_dbname()
        .or_else(|| config.get_user())
        .unwrap_or("postgres");
    format!("{hosts}/{database}")
}

/// A bare connection: the client and the task that moves its bytes, spawned on
/// `runtime` (whatever runtime the caller is on).
pub(crate) async fn connect(
    config: &Config,
    runtime: &Handle,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    // The task ends when the client is dropped (after telling the server) or the
    // connection fails; the client sees the failure on its next request.
    let io = runtime.spawn(async move {
        let _ = connection.await;
    });
    Ok((client, io))
}

/// A store's connection with its prepared statements.
///
/// While it serves a request it is `busy`; a busy connection that is dropped was
/// abandoned midway (its caller gave up, or its future was dropped), so its
/// session may still be running a statement or sit in an open transaction
/// holding row locks. Dropping it then asks the server to cancel the statement
/// and closes the socket at once, instead of leaving the session to finish
/// work nobody waits for; a connection dropped while idle is closed politely.
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
    io: JoinHandle<()>,
    runtime: Handle,
    pub(crate) busy: bool,
    /// The pool's generation when this connection was last known to work.
    pub(crate) generation: u64,
    /// When it was last put back in the pool.
    pub(crate) idle_since: Instant,
}

impl Conn {
    /// Prepares the store's statements on a connection made by [`connect`].
    pub(crate) async fn prepare(
        client: Client,
        io: JoinHandle<()>,
        sql: &Sql,
        runtime: &Handle,
        generation: u64,
    ) -> Result<Conn, tokio_postgres::Error> {
        let statements = match Statements::prepare(&client, sql).await {
            Ok(statements) => statements,
            Err(e) => {
                io.abort();
                return Err(e);
            }
        };
        Ok(Conn {
            client,
            statements,
            io,
            runtime: runtime.clone(),
            busy: false,
            generation,
            idle_since: Instant::now(),
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.busy {
            return;
        }
        // Abandoned midway: cancel whatever the session is running (on a
        // connection of its own, which the server answers at once) and close
        // ours without waiting for it. Best effort: what the cancel cannot
        // reach, the server's own timeouts end.
        let cancel = self.client.cancel_token();
        self.runtime.spawn(async move {
            let _ = cancel.cancel_query(NoTls).await;
        });
        self.io.abort();
    }
}

/// The statements a store runs on single keys, prepared once per connection so
/// that each operation costs one round trip. (Listings are planned for their
/// bounds each time instead; see [`Sql::list_range`].)
pub(crate) struct Statements {
    pub(crate) get: Statement,
    pub(crate) insert: Statement,
    pub(crate) upsert: Statement,
    pub(crate) update: Statement,
    pub(crate) delete_any: Statement,
    pub(crate) delete_version: Statement,
    pub(crate) quarantine: Statement,
    pub(crate) now_ms: Statement,
}

impl Statements {
    async fn prepare(client: &Client, sql: &Sql) -> Result<Self, tokio_postgres::Error> {
        Ok(Statements {
            get: client.prepare(&sql.get).await?,
            insert: client.prepare(&sql.insert).await?,
            upsert: client.prepare(&sql.upsert).await?,
            update: client.prepare(&sql.update).await?,
            delete_any: client.prepare(&sql.delete_any).await?,
            delete_version: client.prepare(&sql.delete_version).await?,
            quarantine: client.prepare(&sql.quarantine).await?,
            now_ms: client.prepare(super::sql::NOW_MS).await?,
        })
    }
}
