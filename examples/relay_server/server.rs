//! Accepting connections and serving HTTP/1 on them, with the bounds that
//! `axum::serve` does not offer: a cap on open connections, a timeout on
//! each request's head, a bound on its size, and a bound on how long an
//! answer may wait for its client to read it; and stopping cleanly
//! ([`Shutdown`]).
//!
//! Without the bounds, a client that opens connections and sends half a
//! request on each holds them open forever, until the process runs out of
//! file descriptors and every new client is locked out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::write_stall::WriteStall;

/// The most a connection buffers of a request's head (431 beyond): ample
/// for the headers the relay reads, each at most a few hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long to wait after a failed `accept` (out of file descriptors, say)
/// before the next one, instead of spinning on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long a stopping relay waits for its connections to finish what they
/// are doing: in-flight requests get this long to end, and the connections
/// left after it are dropped. Event streams end at once, so only a slow
/// request (a body still on its way, a store call) can take it all.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether the relay is stopping, for whatever must end when it does: the
/// accept loop, each connection, each event stream. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown {
    stopping: watch::Receiver<bool>,
}

/// Stops the relay: see [`Shutdown`].
#[derive(Debug)]
pub(crate) struct StopTrigger {
    stopping: watch::Sender<bool>,
}

impl Shutdown {
    /// A shutdown not yet asked for, and the trigger that asks for it.
    pub(crate) fn new() -> (Shutdown, StopTrigger) {
        let (sender, receiver) = watch::channel(false);
        (
            Shutdown { stopping: receiver },
            StopTrigger { stopping: sender },
        )
    }

    /// Completes once the relay is stopping (at once if it is already).
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            // An error means the trigger is gone, which happens only as the
            // process ends: stopping all the same.
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }
}

impl StopTrigger {
    /// Asks everything that watches the [`Shutdown`] to stop.
    pub(crate) fn stop(self) {
        self.stopping.send_replace(true);
    }
}

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
    /// The longest a write may wait for the client to read (see
    /// [`WriteStall`]).
    pub(crate) write_timeout: Duration,
}

/// Serves `router` on the connections `listener` accepts, until `shutdown`.
/// Then it stops accepting (the listener closes: new clients are refused by
/// the kernel), each connection finishes the request it is serving and
/// closes, and this returns once all are closed, or after [`STOP_GRACE`].
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ConnectionLimits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    // Clamped to what a semaphore holds and one acquire can take back: a
    // cap that large is no cap anyway.
    let max_connections = limits.max_connections.min(u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // A request's head is read into this buffer: hyper's default lets
        // one header of some 400 KB through.
        .max_buf_size(MAX_HEAD_BYTES);
    let stopped = shutdown.stopped();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            () = &mut stopped => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((stream, slot)) = accepted else {
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let stream = WriteStall::new(stream, limits.write_timeout);
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            // A connection that timed out or that its client closed ends in
            // an error: the client's doing, and nothing for the log.
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.stopped() => {
                    // Ends the connection after the response in flight, if
                    // any: an idle one closes at once.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    // Every slot back means every connection closed.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(STOP_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        eprintln!("relay: connections still open after {STOP_GRACE:?} are dropped");
    }
    Ok(())
}

/// The next connection, with the slot it takes among the open connections;
/// `None` after a failed `accept`. A free slot first, then the connection:
/// beyond the cap, clients wait in the kernel's backlog instead of costing
/// memory and descriptors.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    // The semaphore is never closed.
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => Some((stream, slot)),
        Err(e) => {
            eprintln!("relay: accepting a connection failed: {e}");
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            None
        }
    }
}
