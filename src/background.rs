//! Runtimes of the process's own for async clients behind the blocking API
//! (PostgreSQL's, object storage's): each made on first use, on threads of
//! its own, and never dropped (a runtime cannot be dropped from inside
//! another one, and the last handle of its user may well be dropped there).

use std::future::Future;
use std::io;
use std::sync::mpsc;

use parking_lot::Mutex;
use tokio::runtime::{Builder, Handle, Runtime};

/// A runtime started on first use, with worker threads of a given name.
pub(crate) struct Background {
    thread_name: &'static str,
    workers: usize,
    runtime: Mutex<Option<Runtime>>,
}

impl Background {
    /// A runtime of `workers` threads named `thread_name`, not started yet.
    pub(crate) const fn new(thread_name: &'static str, workers: usize) -> Self {
        Self {
            thread_name,
            workers,
            runtime: Mutex::new(None),
        }
    }

    /// Whether this is one of the runtime's own threads, which must never
    /// wait for the runtime: with its only worker, it would wait for itself.
    #[cfg_attr(
        not(any(feature = "async", feature = "object-store")),
        allow(dead_code, reason = "PgStore asks only with the async face")
    )]
    pub(crate) fn is_current_thread(&self) -> bool {
        std::thread::current().name() == Some(self.thread_name)
    }

    /// The runtime, started now if it is not running yet.
    ///
    /// # Errors
    /// If its thread cannot be started.
    pub(crate) fn handle(&self) -> io::Result<Handle> {
        let mut runtime = self.runtime.lock();
        if let Some(runtime) = runtime.as_ref() {
            return Ok(runtime.handle().clone());
        }
        let started = Builder::new_multi_thread()
            .worker_threads(self.workers)
            .thread_name(self.thread_name)
            .enable_io()
            .enable_time()
            .build()?;
        let handle = started.handle().clone();
        *runtime = Some(started);
        Ok(handle)
    }
}

/// Runs `work` on the runtime of `handle` and blocks this thread until it is
/// done, on any thread but the runtime's own: a caller's thread, a thread of
/// another runtime included. `None` if it ended without an answer (it
/// panicked, or the runtime is shutting down with the process).
///
/// The work cannot borrow from the caller (it is `'static`).
pub(crate) fn block_on<T: Send + 'static>(
    handle: &Handle,
    work: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        // The caller is blocked on the other end until this arrives; it cannot
        // have gone away, and if it had, nobody would want the answer.
        let _ = tx.send(work.await);
    });
    rx.recv().ok()
}
