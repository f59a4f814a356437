//! The process's runtime for what outlives a call, and the rule that keeps
//! the blocking API off runtime threads.
//!
//! A call of the blocking API drives its connection on the calling thread (see
//! [`Driver`](super::conn::Driver)), with no runtime of the process involved.
//! What must run when no call is there to drive it runs here instead: the
//! cancel request of an abandoned connection, the fence of a write that went
//! unanswered, the pool's reaper.
//!
//! One runtime for the process, made on first use and never dropped (a runtime
//! cannot be dropped from inside another one, and the last handle of a store may
//! well be dropped there). Its one thread moves bytes, and makes the logins of
//! the fences' connections.

use std::future::Future;

use tokio::runtime::Handle;

use crate::background::{self, Background};
use crate::error::{Error, Result};

static RUNTIME: Background = Background::new("jobsafe-pg", 1);

/// Whether this is the runtime's own thread, which must not wait for it.
#[cfg(feature = "async")]
pub(crate) fn is_current_thread() -> bool {
    RUNTIME.is_current_thread()
}

/// The process's runtime, started on first use.
///
/// # Errors
/// [`Error::Database`] (transient) if its thread cannot be started.
pub(crate) fn handle(server: &str) -> Result<Handle> {
    RUNTIME.handle().map_err(|e| Error::Database {
        step: "start the client's runtime",
        server: server.to_owned(),
        transient: true,
        source: Box::new(e),
    })
}

/// Runs `work` on the runtime and blocks this thread until it is done, on any
/// thread but the runtime's own (whose only worker would then wait for
/// itself): a caller's thread, a thread of another runtime included.
///
/// The work cannot borrow from the caller (it is `'static`). If it ends
/// without an answer (it panicked, or the runtime is shutting down with the
/// process), the call fails with a transient error rather than panicking in
/// the caller.
pub(crate) fn block_on<T: Send + 'static>(
    handle: &Handle,
    server: &str,
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    background::block_on(handle, work).unwrap_or_else(|| {
        Err(Error::Database {
            step: "wait for the client's runtime",
            server: server.to_owned(),
            transient: true,
            source: "the request ended without an answer".into(),
        })
    })
}

/// Runs `call` on this thread, or, on a thread where a tokio runtime is
/// current (where driving another runtime may be forbidden: tokio panics on a
/// worker thread, or inside `block_on`), on a thread of its own while this one
/// waits. So the blocking API works on every thread, and blocks a runtime's
/// thread as `std::fs` would.
///
/// A thread of tokio's blocking pool (`spawn_blocking`) has its runtime
/// current too, and is sent the same way, though it could drive the
/// connection itself: tokio offers no way to tell it from a worker.
///
/// # Errors
/// `call`'s, or a transient [`Error::Database`] if the thread cannot be
/// started.
pub(crate) fn off_runtime<T: Send>(
    server: &str,
    call: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if Handle::try_current().is_err() {
        return call();
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("jobsafe-pg-call".to_owned())
            .spawn_scoped(scope, call)
            .map_err(|e| Error::Database {
                step: "start a thread for a call made on a runtime's thread",
                server: server.to_owned(),
                transient: true,
                source: Box::new(e),
            })?;
        // A panic in the call is a bug of jobsafe's: passed on as it is.
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
