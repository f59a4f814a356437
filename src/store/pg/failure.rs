//! How the client library's errors become jobsafe's: an [`Error::Database`]
//! naming the step and the server, with the server's SQLSTATE and message, and
//! classified transient or not.
//!
//! Transient means that the same request, unchanged, may succeed later: the
//! connection could not be made or was lost, the server was shutting down,
//! starting or out of resources, or it ended this request to break a deadlock,
//! a serialization conflict or a wait past a bound. Everything else is
//! permanent, so that a caller that retries transient errors stops: a missing
//! table or privilege, a refused login, a value or statement over the
//! server's limits fail the same way every time.

use std::fmt;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::transport::handshake_refused;
use crate::error::Error;

/// A client error as an [`Error::Database`], classified.
pub(crate) fn db_error(step: &'static str, server: &str, e: tokio_postgres::Error) -> Error {
    Error::Database {
        step,
        server: server.to_owned(),
        transient: is_transient(&e),
        source: Box::new(ClientError(e)),
    }
}

/// A connection that could not be made, classified as [`db_error`] does. A
/// TLS handshake refused on its merits (a certificate that does not verify,
/// a host name it does not hold, no protocol in common) is permanent, and
/// says why and under which settings (`tls`, such as `sslmode=verify-full,
/// sslrootcert /etc/ca.pem`).
pub(crate) fn connect_failed(server: &str, e: tokio_postgres::Error, tls: &str) -> Error {
    #[cfg(feature = "postgres-tls")]
    if let Some(why) = super::tls::refusal(&e) {
        return Error::Database {
            step: "connect",
            server: server.to_owned(),
            transient: false,
            source: Box::new(TlsRefused {
                why,
                settings: tls.to_owned(),
                source: ClientError(e),
            }),
        };
    }
    let _ = tls;
    db_error("connect", server, e)
}

/// Why a TLS handshake was refused, in words, followed by the client's error
/// (whose own chain ends with the TLS library's reason).
#[cfg(feature = "postgres-tls")]
#[derive(Debug)]
struct TlsRefused {
    why: &'static str,
    settings: String,
    source: ClientError,
}

#[cfg(feature = "postgres-tls")]
impl fmt::Display for TlsRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.why, self.settings)
    }
}

#[cfg(feature = "postgres-tls")]
impl std::error::Error for TlsRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The client library's error, shown with what the server said.
///
/// The library shows an error the server sent as "db error" and leaves its
/// SQLSTATE out; this shows `ERROR 42P01: relation "x" does not exist` (with
/// the server's detail and hint), which is the whole of it, so it ends the
/// chain. Any other error shows as the library shows it, followed by its
/// cause. The server's messages never hold the password: it is sent only as
/// a hash or a SCRAM proof.
#[derive(Debug)]
pub(crate) struct ClientError(tokio_postgres::Error);

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(db) = self.0.as_db_error() else {
            return fmt::Display::fmt(&self.0, f);
        };
        write!(
            f,
            "{} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        )?;
        if let Some(detail) = db.detail() {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = db.hint() {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if self.0.as_db_error().is_some() {
            None
        } else {
            std::error::Error::source(&self.0)
        }
    }
}

/// A wait for `what` that did not end within `bound` (transient: the server or
/// the network may answer again).
pub(crate) fn timed_out(step: &'static str, server: &str, bound: Duration, what: &str) -> Error {
    Error::Database {
        step,
        server: server.to_owned(),
        transient: true,
        source: format!("no {what} within {bound:?}").into(),
    }
}

/// `error`, of a write whose session could not be ended after it failed
/// unanswered (see [`fence`](super::fence)): the write may still land, and the
/// error says so, keeping what it said as its cause.
pub(crate) fn unfenced(error: Error) -> Error {
    match error {
        Error::Database {
            step,
            server,
            transient,
            source,
        } => Error::Database {
            step,
            server,
            transient,
            source: Box::new(Unfenced(source)),
        },
        other => other,
    }
}

/// Whether `error` is that of a write the store could not make sure is over
/// (see [`unfenced`]): it may still land.
pub(crate) fn may_land_later(error: &Error) -> bool {
    match error {
        Error::Database { source, .. } => source.downcast_ref::<Unfenced>().is_some(),
        _ => false,
    }
}

/// The cause of a write that failed unanswered and whose session could not be
/// ended.
#[derive(Debug)]
struct Unfenced(Box<dyn std::error::Error + Send + Sync + 'static>);

impl fmt::Display for Unfenced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; its session on the server could not be ended, so the write may still land",
            self.0
        )
    }
}

impl std::error::Error for Unfenced {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A call whose deadline passed: it was abandoned, its statement cancelled and
/// its connection closed. Transient: a write may or may not have landed.
pub(crate) fn deadline_passed(step: &'static str, server: &str, deadline: Duration) -> Error {
    Error::Database {
        step,
        server: server.to_owned(),
        transient: true,
        source: format!(
            "no answer within the call deadline of {deadline:?} (call_timeout; a write is \
             given half of it); the request was cancelled and its connection \
             closed, and a write may or may not have landed"
        )
        .into(),
    }
}

/// Whether the same request may succeed later (see the module's docs).
fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => is_transient_code(code),
        // No answer from the server: the connection could not be made or was
        // lost. (A login the client itself refuses, such as a password the
        // server asks for and the URL lacks, is neither; nor is a TLS
        // handshake refused on its merits, which the TLS library reports
        // through an I/O error.)
        None => !handshake_refused(e) && (e.is_closed() || source_is_io(e)),
    }
}

/// Whether an error the server answered with may go away by itself.
fn is_transient_code(code: &SqlState) -> bool {
    // A request the server cannot read as sent fails the same way again: a
    // protocol violation (08P01, such as a message longer than it accepts)
    // is the request's fault, whatever its class says about the connection.
    if *code == SqlState::PROTOCOL_VIOLATION {
        return false;
    }
    let class = code.code().get(..2).unwrap_or_default();
    // 08: connection exception; 53: insufficient resources (too many
    // connections, out of memory or disk); 57P: operator intervention
    // (shutdown, crash, not yet accepting connections, idle session ended).
    matches!(class, "08" | "53")
        || code.code().starts_with("57P")
        || [
            // 40001, 40P01: the server rolled this transaction back to break
            // a conflict with another; running it again is the cure.
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            // 55P03, 57014: a lock wait or a statement passed its bound
            // (lock_timeout, statement_timeout), or our own deadline cancelled
            // it; 25P03: the session sat idle in a transaction past its bound
            // and was ended.
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
        ]
        .contains(code)
}

fn source_is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_causes_are_not_transient() {
        for code in [
            SqlState::UNDEFINED_TABLE,                     // 42P01
            SqlState::UNDEFINED_COLUMN,                    // 42703
            SqlState::INSUFFICIENT_PRIVILEGE,              // 42501
            SqlState::PROGRAM_LIMIT_EXCEEDED,              // 54000: value too large
            SqlState::STATEMENT_TOO_COMPLEX,               // 54001
            SqlState::INVALID_PASSWORD,                    // 28P01
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION, // 28000
            SqlState::INVALID_CATALOG_NAME,                // 3D000: no such database
            SqlState::PROTOCOL_VIOLATION,                  // 08P01
            SqlState::STRING_DATA_RIGHT_TRUNCATION,        // 22001
            SqlState::CHECK_VIOLATION,                     // 23514
            SqlState::READ_ONLY_SQL_TRANSACTION,           // 25006
            SqlState::INTERNAL_ERROR,                      // XX000
        ] {
            assert!(!is_transient_code(&code), "{code:?}");
        }
    }

    #[test]
    fn passing_causes_are_transient() {
        for code in [
            SqlState::CONNECTION_FAILURE,                          // 08006
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION, // 08001
            SqlState::TOO_MANY_CONNECTIONS,                        // 53300
            SqlState::DISK_FULL,                                   // 53100
            SqlState::T_R_SERIALIZATION_FAILURE,                   // 40001
            SqlState::T_R_DEADLOCK_DETECTED,                       // 40P01
            SqlState::ADMIN_SHUTDOWN,                              // 57P01
            SqlState::CRASH_SHUTDOWN,                              // 57P02
            SqlState::CANNOT_CONNECT_NOW,                          // 57P03
            SqlState::QUERY_CANCELED,                              // 57014
            SqlState::LOCK_NOT_AVAILABLE,                          // 55P03
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,         // 25P03
        ] {
            assert!(is_transient_code(&code), "{code:?}");
        }
    }
}
