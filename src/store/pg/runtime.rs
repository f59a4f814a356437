//! The runtime every `PgStore` of the process runs its connections on, and the
//! bridge from the blocking API to it.
//!
//! The client library is asynchronous. A blocking call sends its work to this
//! runtime and waits for the answer on a plain channel, never with a runtime's
//! `block_on`: so it works on any thread, a caller's tokio worker thread
//! included (which it blocks for the call, as `std::fs` would), and never panics
//! with "Cannot start a runtime from within a runtime".
//!
//! One runtime for the process, made on first use and never dropped (a runtime
//! cannot be dropped from inside another one, and the last handle of a store may
//! well be dropped there). Its two threads only move bytes between sockets and
//! channels; the callers' threads wait.

use std::future::Future;
use std::sync::mpsc;

use parking_lot::Mutex;
use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::{Error, Result};

/// Threads of the runtime: the work is I/O, and a login's password hashing is
/// the only thing in it that takes CPU for long.
const THREADS: usize = 2;

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// The process's runtime, started on first use.
///
/// # Errors
/// [`Error::Database`] (transient) if its threads cannot be started.
pub(crate) fn handle(server: &str) -> Result<Handle> {
    let mut runtime = RUNTIME.lock();
    if let Some(runtime) = runtime.as_ref() {
        return Ok(runtime.handle().clone());
    }
    let started = Builder::new_multi_thread()
        .worker_threads(THREADS)
        .thread_name("jobsafe-pg")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Database {
            step: "start the client's runtime",
            server: server.to_owned(),
            transient: true,
            source: Box::new(e),
        })?;
    let handle = started.handle().clone();
    *runtime = Some(started);
    Ok(handle)
}

/// Runs `work` on the runtime and blocks this thread until it is done.
///
/// Safe on any thread, inside a caller's runtime included. The work cannot
/// borrow from the caller (it is `'static`): the caller's arguments are copied
/// in. If the work ends without an answer (it panicked, or the runtime is
/// shutting down with the process), the call fails with a transient error rather
/// than panicking in the caller.
pub(crate) fn block_on<T: Send + 'static>(
    handle: &Handle,
    server: &str,
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        // The caller is blocked on the other end until this arrives; it cannot
        // have gone away, and if it had, nobody would want the answer.
        let _ = tx.send(work.await);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(Error::Database {
            step: "wait for the client's runtime",
            server: server.to_owned(),
            transient: true,
            source: "the request ended without an answer".into(),
        })
    })
}
