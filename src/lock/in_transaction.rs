//! A lock taken inside an application's own PostgreSQL transaction
//! ([`JobLock::acquire_in`](super::JobLock::acquire_in)).

use super::{JobLock, LockGuard, LockHandle, LockRecord};
use crate::store::Store;

/// What [`JobLock::acquire_in`](super::JobLock::acquire_in) found.
#[derive(Debug)]
#[must_use]
pub enum AcquireIn<S: Store> {
    /// The lock is written in the application's transaction: the caller's
    /// once it commits, nobody's if it rolls back.
    Acquired(LockInTransaction<S>),
    /// Someone else holds it: their record.
    Held(LockRecord),
}

/// A lock written inside an application's transaction that has not ended
/// yet: the caller's once the transaction commits, nobody's if it rolls
/// back. It makes no store call of its own, and dropping it does nothing.
///
/// After the commit, [`committed`](LockInTransaction::committed) gives the
/// [`LockGuard`] that renews, keeps alive and releases the lock, on the
/// store's own connections. It is not a guard before: on another connection
/// the lock is not visible until the commit, so a guard's release (or the
/// release of a guard dropped early) would find nothing to release, and the
/// lock would stay held until its lease ends. After a rollback there is no
/// lock: drop it. Dropped after the commit instead, it leaves the lock held
/// until its lease ends, or until a release through its
/// [`handle`](LockInTransaction::handle).
///
/// The lease counts from the acquire, not from the commit: a transaction
/// that outlasts the lease commits a lock that another may take over at
/// once. Keep such transactions short, and look at the guard's
/// [`remaining`](LockGuard::remaining) (or renew it) before relying on it.
#[derive(Debug)]
#[must_use = "after the commit, `committed` gives the guard that releases the lock"]
pub struct LockInTransaction<S: Store> {
    lock: JobLock<S>,
    record: LockRecord,
}

impl<S: Store> LockInTransaction<S> {
    /// The lock `guard` holds, its duty to release it dropped.
    pub(crate) fn new(guard: LockGuard<S>) -> Self {
        let lock = guard.lock().clone();
        LockInTransaction {
            lock,
            record: guard.into_record(),
        }
    }

    /// The lock record as written in the transaction.
    pub fn record(&self) -> &LockRecord {
        &self.record
    }

    /// The holder's handle: what renews or releases the lock once the
    /// transaction has committed, from any process.
    pub fn handle(&self) -> LockHandle {
        self.record.handle()
    }

    /// The guard of the lock, once the application's transaction has
    /// committed. Calling it after a rollback gives a guard of a lock that
    /// does not exist: its renewal is [`Renewal::Lost`](super::Renewal::Lost)
    /// and its release finds nothing.
    pub fn committed(self) -> LockGuard<S> {
        LockGuard::new(self.lock, self.record)
    }

    /// [`committed`](LockInTransaction::committed), as a guard of the async
    /// face.
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn committed_async(self) -> super::AsyncLockGuard<S>
    where
        S: 'static,
    {
        super::AsyncLockGuard::new(self.committed())
    }
}
