//! Making sure a write whose call failed cannot land after the failure is
//! reported.
//!
//! A write whose connection broke or went silent may still be alive on the
//! server: its request waiting for a row lock, its bytes in the server's
//! receive buffer, its commit under way. Closing the connection does not stop
//! it (the server notices only when it next reads or writes the socket), and a
//! cancel reaches only a statement already running. So before such a failure
//! is reported, the store ends the write's session on the server from another
//! connection (`pg_terminate_backend`, waiting for the backend to exit). From
//! then on the write has either landed or never will, and a re-read tells
//! which: what the managers rely on when they learn their own write's outcome.
//!
//! A failure the server reported (a lock or statement timeout, a conflict the
//! server broke) needs no fence: the server answered, and the transaction is
//! over. A fence that cannot run (the server unreachable) leaves the outcome
//! open; the managers' re-reads then fail too, and they say so.

use std::time::Duration;

use super::conn::{Connector, Session};
use crate::clock::millis;

/// Ends the session's backend on the server, all within `within` (half of it
/// at most for the backend to exit), on a connection of its own: a bare one,
/// without the store's statements, so that it costs only the login, and
/// outside the pool's count, whose slots may all be taken by calls waiting on
/// the same silent network. `true` once the session is known to be over
/// (ended now, or gone before); `false` if that could not be learned.
pub(crate) async fn end_session(
    connector: &Connector,
    session: &Session,
    within: Duration,
) -> bool {
    let wait_ms = i64::try_from(millis(within / 2)).unwrap_or(i64::MAX);
    let ended = async {
        let bare = connector.bare().await.ok()?;
        // A session whose pid now names another backend (or none) is over.
        let row = bare
            .client
            .query_one(
                "SELECT COALESCE((SELECT pg_terminate_backend(pid, $3) FROM pg_stat_activity \
                 WHERE pid = $1 AND backend_start::text = $2), true)",
                &[&session.pid, &session.started, &wait_ms],
            )
            .await;
        row.ok()?.try_get::<_, bool>(0).ok()
    };
    tokio::time::timeout(within, ended)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
