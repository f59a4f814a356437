//! How the client library's errors become jobsafe's: an [`Error::Database`]
//! naming the step and the server, classified transient or not.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::error::Error;

/// A client error as an [`Error::Database`], classified.
pub(crate) fn db_error(step: &'static str, server: &str, e: tokio_postgres::Error) -> Error {
    Error::Database {
        step,
        server: server.to_owned(),
        transient: is_transient(&e),
        source: Box::new(e),
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

/// A call whose deadline passed: it was abandoned, its statement cancelled and
/// its connection closed. Transient: a write may or may not have landed.
pub(crate) fn deadline_passed(step: &'static str, server: &str, deadline: Duration) -> Error {
    Error::Database {
        step,
        server: server.to_owned(),
        transient: true,
        source: format!(
            "no answer within the call deadline of {deadline:?} (call_timeout); the request \
             was cancelled and its connection closed, and a write may or may not have landed"
        )
        .into(),
    }
}

/// Whether the same request may succeed later: the connection failed or dropped,
/// or the server was shutting down, starting, out of resources, or broke a
/// deadlock by cancelling this request.
fn is_transient(e: &tokio_postgres::Error) -> bool {
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
