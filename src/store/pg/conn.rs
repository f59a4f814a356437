//! Connections: the pool, the statements each connection prepares once, and how
//! the client library's errors become jobsafe's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use r2d2_postgres::PostgresConnectionManager;

use super::sql::Sql;
use crate::error::Error;

/// The server as errors name it: `host:port/database`, never a password.
pub(crate) fn server_name(config: &postgres::Config) -> String {
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
                postgres::config::Host::Tcp(name) => {
                    let name = name
                        .rsplit_once('@')
                        .map_or(name.as_str(), |(_, host)| host);
                    format!("{name}:{port}")
                }
                postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
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

/// A client error as an [`Error::Database`], classified.
pub(crate) fn db_error(step: &'static str, server: &str, e: postgres::Error) -> Error {
    Error::Database {
        step,
        server: server.to_owned(),
        transient: is_transient(&e),
        source: Box::new(e),
    }
}

/// Whether the same request may succeed later: the connection failed or dropped,
/// or the server was shutting down, starting, out of resources, or broke a
/// deadlock by cancelling this request.
fn is_transient(e: &postgres::Error) -> bool {
    match e.code() {
        Some(code) => is_transient_code(code),
        // No answer from the server: the connection could not be made or was lost.
        None => e.is_closed() || source_is_io(e),
    }
}

/// Whether an error the server answered with may go away by itself.
fn is_transient_code(code: &SqlState) -> bool {
    // A request the server cannot read as sent fails the same way again: a
    // protocol violation (08P01, such as a message longer than it accepts)
    // and a program limit (class 54: a value or a statement too large) are
    // the request's fault, whatever their class says about the connection.
    if *code == SqlState::PROTOCOL_VIOLATION {
        return false;
    }
    let class = code.code().get(..2).unwrap_or_default();
    // 08: connection exception; 53: insufficient resources (too many
    // connections, out of memory or disk); 57P: operator intervention
    // (shutdown, crash, not yet accepting connections).
    matches!(class, "08" | "53")
        || code.code().starts_with("57P")
        || [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
        ]
        .contains(code)
}

fn source_is_io(e: &postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A pooled connection with its prepared statements.
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
    /// The pool's generation when this connection was last known to work.
    generation: u64,
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
    fn prepare(client: &mut Client, sql: &Sql) -> Result<Self, postgres::Error> {
        Ok(Statements {
            get: client.prepare(&sql.get)?,
            insert: client.prepare(&sql.insert)?,
            upsert: client.prepare(&sql.upsert)?,
            update: client.prepare(&sql.update)?,
            delete_any: client.prepare(&sql.delete_any)?,
            delete_version: client.prepare(&sql.delete_version)?,
            quarantine: client.prepare(&sql.quarantine)?,
            now_ms: client.prepare(super::sql::NOW_MS)?,
        })
    }
}

/// Makes pooled connections: connects, sets the session up, prepares the
/// statements.
///
/// Checking a connection out costs no round trip. When a request finds its
/// connection dead (a server restart closes every connection at once), the
/// pool's generation goes up, and each connection made before is pinged once on
/// its next check-out, and replaced if dead: so the call after the one that
/// failed gets a working connection instead of another dead one.
pub(crate) struct Manager {
    inner: PostgresConnectionManager<NoTls>,
    sql: Arc<Sql>,
    setup: &'static str,
    generation: Arc<AtomicU64>,
}

impl Manager {
    pub(crate) fn new(
        config: postgres::Config,
        sql: Arc<Sql>,
        setup: &'static str,
        generation: Arc<AtomicU64>,
    ) -> Self {
        Manager {
            inner: PostgresConnectionManager::new(config, NoTls),
            sql,
            setup,
            generation,
        }
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut client = self.inner.connect()?;
        client.batch_execute(self.setup)?;
        let statements = Statements::prepare(&mut client, &self.sql)?;
        Ok(Conn {
            client,
            statements,
            generation,
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        let now = self.generation.load(Ordering::SeqCst);
        if conn.generation != now {
            conn.client.simple_query("")?;
            conn.generation = now;
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_too_large_for_the_server_are_not_transient() {
        for code in [
            SqlState::PROTOCOL_VIOLATION,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            SqlState::STATEMENT_TOO_COMPLEX,
            SqlState::STRING_DATA_RIGHT_TRUNCATION,
        ] {
            assert!(!is_transient_code(&code), "{code:?}");
        }
        for code in [
            SqlState::CONNECTION_FAILURE,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::T_R_DEADLOCK_DETECTED,
        ] {
            assert!(is_transient_code(&code), "{code:?}");
        }
    }
}
