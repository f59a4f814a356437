//! One connection: made, its statements prepared once, and closed so that the
//! server stops working for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, Statement};

use super::failure::{connect_failed, db_error, timed_out};
use super::sql::Sql;
use super::transport::{Tls, Transport, handshake_refused};
use crate::error::Result;

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

/// What a store needs to make its connections.
pub(crate) struct Connector {
    pub(crate) config: Config,
    /// How connections are secured, cancel requests included.
    pub(crate) transport: Transport,
    pub(crate) sql: Arc<Sql>,
    pub(crate) server: String,
    pub(crate) runtime: Handle,
    /// How long making a connection may take, login and statements included;
    /// also the bound on a cancel request.
    pub(crate) within: Duration,
}

impl Connector {
    /// A connection without the store's statements, for what runs before the
    /// tables exist.
    ///
    /// # Errors
    /// The client's error, classified; a transient one if the connection is
    /// not made within [`within`](Connector::within) (the server or the
    /// network silent).
    pub(crate) async fn bare(&self) -> Result<Bare> {
        let attempts = async {
            match self.config.connect(self.transport.tls()).await {
                // `prefer`, as libpq: a handshake refused, then in clear.
                Err(e) if handshake_refused(&e) => match &self.transport.clear_retry {
                    Some(clear) => clear.connect(self.transport.tls()).await,
                    None => Err(e),
                },
                made => made,
            }
        };
        let made = tokio::time::timeout(self.within, attempts).await;
        let (client, connection) = match made {
            Ok(made) => made.map_err(|e| connect_failed(&self.server, e, &self.transport.shown))?,
            Err(_) => {
                return Err(timed_out(
                    "connect",
                    &self.server,
                    self.within,
                    "a connection",
                ));
            }
        };
        // The task ends when the client is dropped (after telling the server) or
        // the connection fails; the client sees the failure on its next request.
        let io = self.runtime.spawn(async move {
            let _ = connection.await;
        });
        Ok(Bare {
            client,
            io: IoTask(Some(io)),
        })
    }

    /// A connection with the store's statements, at the pool's `generation`.
    pub(crate) async fn connect(&self, generation: u64) -> Result<Conn> {
        let bare = self.bare().await?;
        self.prepare(bare, generation).await
    }

    /// Prepares the store's statements on `bare`, and learns which server
    /// session it is.
    pub(crate) async fn prepare(&self, bare: Bare, generation: u64) -> Result<Conn> {
        let ready = async {
            let statements = Statements::prepare(&bare.client, &self.sql).await?;
            let session = Session::of(&bare.client).await?;
            Ok::<_, tokio_postgres::Error>((statements, session))
        };
        let (prepared, session) = tokio::time::timeout(self.within, ready)
            .await
            .map_err(|_| {
                timed_out(
                    "prepare statements",
                    &self.server,
                    self.within,
                    "the answer",
                )
            })?
            .map_err(|e| db_error("prepare statements", &self.server, e))?;
        Ok(Conn {
            client: bare.client,
            statements: prepared,
            session,
            io: bare.io,
            tls: self.transport.tls(),
            runtime: self.runtime.clone(),
            cancel_within: self.within,
            busy: false,
            generation,
            idle_since: Instant::now(),
        })
    }
}

/// A connection before it has the store's statements. Dropped, it is closed
/// at once.
pub(crate) struct Bare {
    pub(crate) client: Client,
    io: IoTask,
}

/// The task that moves a connection's bytes. Dropped, it is aborted, which
/// closes the socket at once, whatever is in flight; detached, it is left to
/// end by itself, which it does once its client is dropped and the server has
/// been told goodbye.
struct IoTask(Option<JoinHandle<()>>);

impl IoTask {
    fn detach(&mut self) {
        self.0.take();
    }
}

impl Drop for IoTask {
    fn drop(&mut self) {
        if let Some(io) = self.0.take() {
            io.abort();
        }
    }
}

/// A store's connection with its prepared statements.
///
/// While it serves a request it is `busy`; a busy connection that is dropped was
/// abandoned midway (its caller's deadline passed, or its future was dropped),
/// so its session may still be running a statement or sit in an open
/// transaction holding row locks, and its socket may have gone silent. Dropping
/// it then asks the server to cancel the statement (on a connection of its
/// own) and closes the socket at once, without waiting for an answer that may
/// never come. A connection dropped while idle is closed politely.
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
    /// The server session behind the connection.
    pub(crate) session: Session,
    io: IoTask,
    /// The connector its cancel request is made with, as the connection was.
    tls: Tls,
    runtime: Handle,
    cancel_within: Duration,
    pub(crate) busy: bool,
    /// The pool's generation when this connection was last known to work.
    pub(crate) generation: u64,
    /// When it was last put back in the pool.
    pub(crate) idle_since: Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.busy {
            self.io.detach();
            return;
        }
        // Best effort, bounded: what the cancel cannot reach (the network is
        // down), the server's own timeouts end. It is made with the store's
        // TLS connector and the connection's own sslmode, which the token
        // carries: a connection made in clear after `prefer`'s refused
        // handshake cancels in clear too.
        let cancel = self.client.cancel_token();
        let within = self.cancel_within;
        let tls = Tls::clone(&self.tls);
        self.runtime.spawn(async move {
            let _ = tokio::time::timeout(within, cancel.cancel_query(tls)).await;
        });
        // `io` is aborted as it is dropped.
    }
}

/// A server session: its backend's process id and start time, which name it
/// on the server even after a process id is reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) pid: i32,
    /// `backend_start`, as text, to compare.
    pub(crate) started: String,
}

impl Session {
    async fn of(client: &Client) -> std::result::Result<Session, tokio_postgres::Error> {
        let row = client
            .query_one(
                "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(Session {
            pid: row.try_get(0)?,
            started: row.try_get(1)?,
        })
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
    async fn prepare(
        client: &Client,
        sql: &Sql,
    ) -> std::result::Result<Self, tokio_postgres::Error> {
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
