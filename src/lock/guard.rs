//! What acquiring, renewing and releasing a lock can come to.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keep_alive::KeepAlive;
use super::{JobLock, LockRecord};
use crate::error::Result;
use crate::fencing::FencingToken;
use crate::key::Key;
use crate::store::Store;

/// The outcome of [`JobLock::acquire`].
#[derive(Debug)]
#[must_use = "an acquired lock is released as soon as its guard is dropped"]
pub enum Acquire<S: Store> {
    /// The caller holds the lock.
    Acquired(LockGuard<S>),
    /// Someone else holds it: their record (for a 409 answer, say).
    Held(LockRecord),
}

/// The outcome of a renewal.
#[derive(Clone, Debug, PartialEq)]
pub enum Renewal {
    /// The lease was extended; the record as it now stands.
    Renewed(LockRecord),
    /// The caller no longer holds the lock: stop working and do not write.
    Lost(LostLease),
}

/// How a holder lost its lock.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LostLease {
    /// Another job holds it now (it took over after the lease ended, or an
    /// operator forced it free and someone acquired it).
    TakenOver(LockRecord),
    /// There is no lock any more (released or force-released, or purged).
    Gone,
}

/// The outcome of a release.
#[derive(Clone, Debug, PartialEq)]
pub enum Release {
    /// The caller's lock was removed.
    Released,
    /// Another job holds the lock; it was left alone.
    OwnedByAnother(LockRecord),
    /// There was no lock.
    AlreadyGone,
}

/// What identifies a holder: the lock, its job id and its fencing token.
/// Serializable, so a request handler can hand a lock to a background worker
/// that renews and releases it ([`LockGuard::into_handle`]).
///
/// A worker in another process must [renew](JobLock::renew) the lock before the
/// process that acquired it exits: on a machine-local store the lock belongs to
/// the process that last acquired or renewed it, and can be taken over as soon as
/// that process has exited (see "Dead holders" in [`JobLock`]). A worker that
/// renews too late is told so ([`Renewal::Lost`]) and must not start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LockHandle {
    /// The lock's key.
    pub key: Key,
    /// The holder's job id.
    pub job_id: String,
    /// The holder's fencing token.
    pub token: FencingToken,
}

impl LockRecord {
    /// The handle of this record's holder: what renews or releases its lock.
    pub fn handle(&self) -> LockHandle {
        LockHandle {
            key: self.key.clone(),
            job_id: self.job_id.clone(),
            token: self.token,
        }
    }
}

/// A held lock. Dropping it releases the lock, best effort (the lease is the
/// backstop); [`release`](LockGuard::release) reports the outcome instead.
#[derive(Debug)]
pub struct LockGuard<S: Store> {
    lock: JobLock<S>,
    record: LockRecord,
    armed: bool,
}

impl<S: Store> LockGuard<S> {
    pub(super) fn new(lock: JobLock<S>, record: LockRecord) -> Self {
        LockGuard {
            lock,
            record,
            armed: true,
        }
    }

    /// Its record, with no duty to release the lock any more.
    #[cfg(feature = "postgres")]
    pub(super) fn into_record(mut self) -> LockRecord {
        self.armed = false;
        self.record.clone()
    }

    /// The lock this guard holds, for the async face's calls on its behalf
    /// and a guard made again after a transaction's commit.
    #[cfg(any(feature = "async", feature = "postgres"))]
    pub(super) fn lock(&self) -> &JobLock<S> {
        &self.lock
    }

    /// Hands the duty to release the lock to a new guard, which is returned;
    /// this one is disarmed. `None` if this one had no such duty any more.
    /// For the async face, which moves the duty onto the pool.
    #[cfg(feature = "async")]
    pub(super) fn take_armed(&mut self) -> Option<LockGuard<S>> {
        if !std::mem::replace(&mut self.armed, false) {
            return None;
        }
        Some(LockGuard::new(self.lock.clone(), self.record.clone()))
    }

    /// Keeps `record` as the renewal that landed for this guard, as
    /// [`renew`](LockGuard::renew) does.
    #[cfg(feature = "async")]
    pub(super) fn renewed(&mut self, record: LockRecord) {
        self.record = record;
    }

    /// The lock record as of the acquire or the last renewal through this guard.
    pub fn record(&self) -> &LockRecord {
        &self.record
    }

    /// The fencing token to pass with every protected write.
    pub fn token(&self) -> FencingToken {
        self.record.token
    }

    /// This holder's job id.
    pub fn job_id(&self) -> &str {
        &self.record.job_id
    }

    /// Who this holder is, to renew or release from elsewhere.
    pub fn handle(&self) -> LockHandle {
        self.record.handle()
    }

    /// How long the lease has left by the lock's clock, minus the skew margin:
    /// stop protected work when this reaches zero and the lease was not renewed.
    ///
    /// Read from the clock alone, not the store: after the clock jumped
    /// forward (and another took the lock over) and back, it shows time left
    /// though the lock is another's. A renewal tells for sure, and writes
    /// fenced by [`token`](LockGuard::token) are refused all the same.
    pub fn remaining(&self) -> Duration {
        let now = self.lock.clock.now_ms();
        let end = self.record.expires_ms.saturating_sub(self.lock.skew_ms);
        Duration::from_millis(end.saturating_sub(now))
    }

    /// Extends the lease to `ttl` from now, if this guard still holds the lock.
    ///
    /// # Errors
    /// As [`JobLock::renew`].
    pub fn renew(&mut self, ttl: Duration) -> Result<Renewal> {
        let renewal = self.lock.renew(&self.handle(), ttl)?;
        if let Renewal::Renewed(record) = &renewal {
            self.record = record.clone();
        }
        Ok(renewal)
    }

    /// Renews the lease in the background every `every` (by the lock's
    /// clock) to `ttl` from then, until stopped or the lease is lost. See
    /// [`KeepAlive`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) unless two
    /// periods and the lock's skew margin are shorter than `ttl`.
    pub fn keep_alive(&self, ttl: Duration, every: Duration) -> Result<KeepAlive>
    where
        S: 'static,
    {
        KeepAlive::start(self.lock.clone(), self.record.clone(), ttl, every)
    }

    /// Releases the lock and reports what happened.
    ///
    /// # Errors
    /// As [`JobLock::release`]; the guard is disarmed either way.
    pub fn release(mut self) -> Result<Release> {
        self.armed = false;
        self.lock.release_record(&self.record)
    }

    /// Gives up the guard without releasing the lock, for a holder that hands its
    /// lock on (to a background job, say) or means to keep it until the lease ends.
    ///
    /// The lock stays this process's until another process renews it: hand the
    /// handle to a process of its own, and let this one exit only after the
    /// receiver's first renewal (see [`LockHandle`]). Kept by a process that
    /// crashes, it ends with the process on a machine-local store, not with the
    /// lease.
    pub fn into_handle(mut self) -> LockHandle {
        self.armed = false;
        self.handle()
    }
}

impl<S: Store> Drop for LockGuard<S> {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: if the store cannot be reached the lease ends anyway.
            let _ = self.lock.release_record(&self.record);
        }
    }
}
