//! A store's operations inside an application's own open transaction, on
//! either client: what lets a manager's body (see [`drive`](crate::drive))
//! write its records in the same commit as the application's rows.
//!
//! Each store call becomes the same statements as on a pooled connection
//! (sent as text: they are not prepared on the application's connection), on
//! the application's transaction. A batch runs inside a savepoint, so that
//! one whose precondition fails leaves nothing behind and the transaction
//! usable. Nothing here bounds a wait: the application's session settings
//! (`statement_timeout`, `lock_timeout`) do, and its commit, not jobsafe,
//! decides whether any of it lands.

use std::future::{Future, ready};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row as DbRow, ToStatement};

use super::PgStore;
use super::ops::{self, Exec};
use crate::clock::SharedClock;
use crate::drive::{Drive, Wait};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::store::{Applied, Batch, Entry, Expect, Store, Version};

/// A transaction of the blocking client (or its client), as an [`Exec`]:
/// each statement runs on the calling thread, and its future is complete
/// when made.
pub(crate) struct BlockingClient<'c, C>(Mutex<&'c mut C>);

impl<'c, C> BlockingClient<'c, C> {
    pub(crate) fn new(client: &'c mut C) -> Self {
        BlockingClient(Mutex::new(client))
    }
}

impl<C: postgres::GenericClient + Send> Exec for BlockingClient<'_, C> {
    fn query<'a>(
        &'a self,
        statement: &'a (dyn ToStatement + Sync + Send),
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = std::result::Result<Vec<DbRow>, tokio_postgres::Error>> + Send + 'a
    {
        ready(self.0.lock().query(statement, params))
    }

    fn batch_execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = std::result::Result<(), tokio_postgres::Error>> + Send + 'a {
        ready(self.0.lock().batch_execute(sql))
    }
}

/// Drives a manager's body on an application's transaction `exec`, for the
/// store's table: each store call is statements on it, each wait is `wait`'s.
pub(crate) struct InTransaction<'t, E, W> {
    exec: &'t E,
    store: &'t PgStore,
    wait: W,
}

impl<E, W: Copy> Clone for InTransaction<'_, E, W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E, W: Copy> Copy for InTransaction<'_, E, W> {}

impl PgStore {
    /// A driver that makes this store's calls on `exec`, waiting as `wait`.
    pub(crate) fn in_transaction<'t, E: Exec, W: Wait>(
        &'t self,
        exec: &'t E,
        wait: W,
    ) -> InTransaction<'t, E, W> {
        InTransaction {
            exec,
            store: self,
            wait,
        }
    }
}

/// An error of a statement on the application's transaction. The server
/// aborted the transaction (or its connection is gone), so no call can be
/// repeated or read back in it: never transient, so that the managers'
/// bodies neither retry nor re-read, and the application rolls back and
/// repeats the whole transaction. jobsafe's own refusals (a conflict, say)
/// pass as they are.
fn aborted(error: Error) -> Error {
    match error {
        Error::Database {
            step,
            server,
            transient: true,
            source,
        } => Error::Database {
            step,
            server,
            transient: false,
            source: format!(
                "{source} (on the application's transaction, which the server aborted: \
                 roll it back, and repeat the whole transaction)"
            )
            .into(),
        },
        other => other,
    }
}

/// Opens the savepoint a batch runs in.
const BEGIN_BATCH: &str = "SAVEPOINT jobsafe_batch";
/// Ends a batch whose statements all succeeded.
const END_BATCH: &str = "RELEASE SAVEPOINT jobsafe_batch";
/// Undoes what a batch wrote before it failed or was abandoned; the
/// application's own writes stay.
const UNDO_BATCH: &str = "ROLLBACK TO SAVEPOINT jobsafe_batch; RELEASE SAVEPOINT jobsafe_batch";

/// A batch under way in its savepoint: dropped before it is
/// [`finish`](Unfinished::finish)ed, it undoes the batch.
///
/// An async call's future can be dropped between two of the batch's
/// statements (a caller's timeout, a request cancelled). The statement in
/// flight still runs on the server, and without this the ones before it
/// would stay in the application's transaction, which its commit would
/// keep: half a batch, say a job record without its entry in the index of
/// open jobs.
struct Unfinished<'t, E: Exec> {
    exec: &'t E,
    armed: bool,
}

impl<E: Exec> Unfinished<'_, E> {
    /// The batch ends by its own last statement, sent next.
    fn finish(mut self) {
        self.armed = false;
    }
}

impl<E: Exec> Drop for Unfinished<'_, E> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The client queues a request when its future is first polled, and
        // its connection runs the requests in order, after the one in flight,
        // whether or not anyone waits for the answer. The blocking client
        // runs it when it is called.
        let undo = self.exec.batch_execute(UNDO_BATCH);
        let mut undo = std::pin::pin!(undo);
        let _ = undo
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    }
}

impl<'t, E: Exec, W: Wait> InTransaction<'t, E, W> {
    async fn apply(self, batch: Batch) -> Result<Vec<Applied>> {
        self.apply_in_savepoint(batch).await.map_err(aborted)
    }

    async fn apply_in_savepoint(self, batch: Batch) -> Result<Vec<Applied>> {
        batch.validate()?;
        let shared = &self.store.shared;
        let ctx = shared.ctx();
        let db = |step| ctx.db(step);
        self.exec
            .batch_execute(BEGIN_BATCH)
            .await
            .map_err(db("begin batch"))?;
        let unfinished = Unfinished {
            exec: self.exec,
            armed: true,
        };
        let written = ops::apply_ops(self.exec, &shared.sql.stmts(), &ctx, &batch).await;
        let end = if written.is_ok() {
            END_BATCH
        } else {
            UNDO_BATCH
        };
        unfinished.finish();
        self.exec
            .batch_execute(end)
            .await
            .map_err(db("end batch"))?;
        written
    }
}

// Written as `impl Future` to match the trait's signatures, which the
// blocking driver needs (its futures are made complete, not `async`).
#[allow(clippy::manual_async_fn)]
impl<'t, S: Store + ?Sized, E: Exec, W: Wait> Drive<S> for InTransaction<'t, E, W> {
    fn get(self, _: &Arc<S>, key: &Key) -> impl Future<Output = Result<Option<Entry>>> + Send {
        async move {
            let shared = &self.store.shared;
            ops::get_on(self.exec, &shared.sql.stmts(), &shared.ctx(), key)
                .await
                .map_err(aborted)
        }
    }

    fn put(
        self,
        _: &Arc<S>,
        key: &Key,
        value: Vec<u8>,
        expect: Expect,
    ) -> impl Future<Output = Result<Version>> + Send {
        async move {
            Entry::check_value(key, &value)?;
            let shared = &self.store.shared;
            ops::put_op(
                self.exec,
                &shared.sql.stmts(),
                &shared.ctx(),
                key,
                &value,
                expect,
            )
            .await
            .map_err(aborted)
        }
    }

    fn delete(
        self,
        _: &Arc<S>,
        key: &Key,
        expect: Expect,
    ) -> impl Future<Output = Result<bool>> + Send {
        async move {
            let shared = &self.store.shared;
            ops::delete_op(self.exec, &shared.sql.stmts(), &shared.ctx(), key, expect)
                .await
                .map_err(aborted)
        }
    }

    fn apply(self, _: &Arc<S>, batch: Batch) -> impl Future<Output = Result<Vec<Applied>>> + Send {
        InTransaction::apply(self, batch)
    }
}

impl<'t, E: Sync, W: Wait> Wait for InTransaction<'t, E, W> {
    fn sleep_until(
        self,
        clock: &SharedClock,
        deadline_ms: u64,
    ) -> impl Future<Output = ()> + Send + use<'t, E, W> {
        self.wait.sleep_until(clock, deadline_ms)
    }
}
