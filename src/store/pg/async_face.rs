//! [`PgStore`]'s async face: each call made on the caller's runtime, on
//! connections whose bytes that runtime's tasks move, so that no thread waits
//! for the server's answers (the [`Store`] trait's provided `*_async` methods
//! would hold a thread of the crate's pool for each round trip instead).
//!
//! The operations are the blocking face's ([`ops`], written once over a
//! connection); only what drives them differs, and with it how a call waits:
//! for a free connection, for its answer and for the deadline, as futures.
//! The bounds, the pool's slots and the fence of an unanswered write are the
//! same as the blocking face's.
//!
//! **Where a call runs.** Each call is a task of the multi-threaded tokio
//! runtime it is awaited on, and the connections it makes belong to that
//! runtime: their bytes move while any of its workers is free, whoever the
//! caller. A connection whose runtime shut down reads as closed and is
//! replaced at its next check-out. A current-thread runtime runs its tasks
//! only while a thread is inside its `block_on`, which could leave a
//! connection, and the pool slot it holds, stalled between two calls: calls
//! awaited on one, or outside any tokio runtime, run on the process's own
//! runtime instead.
//!
//! **Cancellation.** A call's future dropped before it was first polled sends
//! nothing. Once begun, the call runs to its end, within its deadline, even if
//! its future is dropped: as in the blocking face, a write whose answer was
//! lost is fenced before its call ends, and a read's connection goes back to
//! the pool instead of being closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::{Handle, RuntimeFlavor};

use super::conn::{CallBound, Conn, IoTask, Link, later};
use super::failure::{deadline_passed, unfenced};
use super::ops;
use super::pool::Pooled;
use super::{PgStore, Shared, fence};
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::store::{Applied, Batch, Entry, Expect, ListPage, Version, check_limit};
use crate::trace;

impl Shared {
    /// A connection of the async face's for a call that must be answered by
    /// `until`.
    async fn check_out_spawned(
        &self,
        step: &'static str,
        until: Instant,
    ) -> Result<Pooled<IoTask>> {
        let call = CallBound {
            step,
            deadline: self.deadline,
            until,
        };
        self.pool.get_spawned(&call).await
    }

    /// [`read`](Shared::read) as a future. When the deadline passes, the
    /// work is dropped where it stands: its connection is busy, so it is
    /// closed and its statement cancelled, never put back in the pool.
    async fn read_spawned<T>(
        &self,
        step: &'static str,
        work: impl AsyncFnOnce(&Link) -> Result<T>,
    ) -> Result<T> {
        let until = later(Instant::now(), self.deadline);
        let conn = self.check_out_spawned(step, until).await?;
        let answer = tokio::time::timeout_at(until.into(), work(&conn.link)).await;
        match answer {
            Ok(result) => {
                conn.release();
                result
            }
            Err(_) => Err(deadline_passed(step, &self.server, self.deadline)),
        }
    }

    /// [`write`](Shared::write) as a future: within half the call deadline,
    /// and returned once its outcome is settled, an unanswered write's
    /// session ended first.
    async fn write_spawned<T>(
        &self,
        step: &'static str,
        work: impl AsyncFnOnce(&mut Link) -> Result<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let answer_by = later(started, self.deadline / 2);
        // A connection that cannot be had sent nothing: no fence needed.
        let mut conn = self.check_out_spawned(step, answer_by).await?;
        let session = conn.session.clone();
        let Conn { link, .. } = &mut *conn;
        let answer = tokio::time::timeout_at(answer_by.into(), work(link)).await;
        let error = match answer {
            Ok(result) => {
                // An error the server sent ended the write's transaction; one
                // from a connection that ended under the write did not.
                let answered = !conn.link.client.is_closed();
                conn.release();
                match result {
                    Err(error) if !answered => error,
                    answered => return answered,
                }
            }
            Err(_) => {
                // Dropped busy: its statement is cancelled, its socket closed.
                drop(conn);
                deadline_passed(step, &self.server, self.deadline)
            }
        };
        let left = later(started, self.deadline).saturating_duration_since(Instant::now());
        if fence::end_session(self.pool.connector(), &session, left).await {
            Err(error)
        } else {
            Err(unfenced(error))
        }
    }
}

impl PgStore {
    /// Runs `call` as a task of the runtime this future is polled on if it
    /// is multi-threaded (of the process's runtime otherwise: see the module
    /// docs), under the caller's current span, and waits for its answer. The
    /// task runs to its end even if this future is dropped. A `write` whose
    /// task ended without an answer (its runtime shut down) may have been
    /// sent: its error says it may still land.
    fn spawned<T, F>(
        &self,
        operation: &'static str,
        kind: Kind,
        subject: impl trace::Namespaced + Send + Sync + 'static,
        call: impl FnOnce(Arc<Shared>) -> F + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let shared = self.shared.clone();
        async move {
            let runtime = match Handle::try_current() {
                Ok(current) if current.runtime_flavor() == RuntimeFlavor::MultiThread => current,
                _ => shared.background.clone(),
            };
            let server = shared.server.clone();
            let traced =
                trace::store_call_async(trace::Backend::POSTGRES, operation, subject, call(shared));
            let task = runtime.spawn(trace::in_current_span(traced));
            task.await.unwrap_or_else(|ended| {
                let error = task_ended(&server, ended);
                Err(match kind {
                    Kind::Read => error,
                    Kind::Write => unfenced(error),
                })
            })
        }
    }

    /// [`Store::get_async`], natively: see the module docs.
    pub(super) fn native_get(
        &self,
        key: &Key,
    ) -> impl Future<Output = Result<Option<Entry>>> + Send + 'static {
        let key = key.clone();
        self.spawned("get", Kind::Read, key.clone(), move |s| async move {
            s.read_spawned("get", async |link| ops::get(link, &s.ctx(), &key).await)
                .await
        })
    }

    pub(super) fn native_put(
        &self,
        key: &Key,
        value: Vec<u8>,
        expect: Expect,
    ) -> impl Future<Output = Result<Version>> + Send + 'static {
        let key = key.clone();
        // Checked before anything is sent, as the blocking face does.
        let valid = Entry::check_value(&key, &value);
        let call = self.spawned("put", Kind::Write, key.clone(), move |s| async move {
            s.write_spawned("put", async |link| {
                ops::put(link, &s.ctx(), &key, &value, expect).await
            })
            .await
        });
        async move {
            valid?;
            call.await
        }
    }

    pub(super) fn native_delete(
        &self,
        key: &Key,
        expect: Expect,
    ) -> impl Future<Output = Result<bool>> + Send + 'static {
        let key = key.clone();
        self.spawned("delete", Kind::Write, key.clone(), move |s| async move {
            s.write_spawned("delete", async |link| {
                ops::delete(link, &s.ctx(), &key, expect).await
            })
            .await
        })
    }

    pub(super) fn native_list(
        &self,
        prefix: &Prefix,
        after: Option<&Key>,
        limit: usize,
    ) -> impl Future<Output = Result<ListPage>> + Send + 'static {
        let (prefix, after) = (prefix.clone(), after.cloned());
        let valid = check_limit(limit);
        let call = self.spawned("list", Kind::Read, prefix.clone(), move |s| async move {
            s.read_spawned("list", async |link| {
                ops::list(link, &s.sql, &s.ctx(), &prefix, after.as_ref(), limit).await
            })
            .await
        });
        async move {
            valid?;
            call.await
        }
    }

    pub(super) fn native_apply(
        &self,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Applied>>> + Send + 'static {
        let valid = batch.validate();
        // Named by its first key's namespace, as the blocking face names it.
        let subject = batch.ops().first().map(|op| op.key().clone());
        let call = self.spawned("apply", Kind::Write, subject, move |s| async move {
            s.write_spawned("apply batch", async |link| {
                ops::apply(link, &s.ctx(), &batch).await
            })
            .await
        });
        async move {
            valid?;
            call.await
        }
    }
}

/// Whether a call may change the store: a write that lost its answer may
/// still land.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Read,
    Write,
}

/// The error of a call whose task ended without an answer: its runtime shut
/// down under it, or it panicked (a runtime without I/O or timers enabled
/// makes the client panic: `#[tokio::main]` enables both).
fn task_ended(server: &str, ended: tokio::task::JoinError) -> Error {
    let why = if ended.is_panic() {
        "the call's task panicked (is the runtime built with I/O and time enabled?)"
    } else {
        "the call's task was cancelled: its runtime is shutting down"
    };
    Error::Database {
        step: "wait for the call's task",
        server: server.to_owned(),
        transient: true,
        source: why.into(),
    }
}
