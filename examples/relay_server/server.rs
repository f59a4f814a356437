//! Accepting connections and serving HTTP/1 on them, with the bounds that
//! `axum::serve` does not offer: a cap on open connections and a timeout on
//! each request's head.
//!
//! Without them, a client that opens connections and sends half a request on
//! each holds them open forever, until the process runs out of file
//! descriptors and every new client is locked out.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long to wait after a failed `accept` (out of file descriptors, say)
/// before the next one, instead of spinning on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The bounds on each connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionLimits {
    /// How long a client has to send a request's head (request line and
    /// headers), from the moment the connection waits for one: a new
    /// connection, or a kept-alive one after its last response. It is so
    /// also the idle timeout of kept-alive connections.
    pub(crate) header_timeout: Duration,
    /// How many connections may be open at once.
    pub(crate) max_connections: usize,
}

/// Serves `router` on the connections `listener` accepts, forever.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ConnectionLimits,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        // A free slot first, then the connection: beyond the cap, clients wait
        // in the kernel's backlog instead of costing memory and descriptors.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return Ok(()); // the semaphore is never closed
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("relay: accepting a connection failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            // A connection that timed out or that its client closed ends in
            // an error: the client's doing, and nothing for the log.
            let _ = connection.await;
            drop(slot);
        });
    }
}
