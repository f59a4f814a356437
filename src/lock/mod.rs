//! Lease locks: use a [`JobLock`] so that one job runs at a time per resource
//! (one re-index per vault, one runner per session), even across processes and
//! crashes.
//!
//! [`acquire`](JobLock::acquire) is one compare-and-set: the caller gets a
//! [`LockGuard`] or the current holder's [`LockRecord`] (the HTTP 409 case). A
//! holder that crashes blocks nobody past its lease; every acquire carries a
//! [`FencingToken`](crate::FencingToken) that strictly increases, which the
//! resources the lock protects use to refuse a holder whose lease has passed
//! on. [`KeepAlive`] renews a lease in the background.

#[cfg(feature = "async")]
mod async_face;
mod guard;
#[cfg(feature = "postgres")]
mod in_transaction;
mod keep_alive;
mod record;

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use async_face::{AsyncAcquire, AsyncJobLock, AsyncKeepAlive, AsyncLockGuard};
pub use guard::{Acquire, LockGuard, LockHandle, LostLease, Release, Renewal};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use in_transaction::{AcquireIn, LockInTransaction};
pub use keep_alive::{KeepAlive, KeepAliveEvent, KeepAliveWait};
pub use record::{LockRecord, LockRequest};

pub use crate::process::{ProcessIdentity, ProcessLiveness};

use self::record::{StoredLock, StoredProcess};
use crate::attempt::AttemptId;
use crate::clock::{SharedClock, millis};
use crate::drive::{self, Blocking, Drive};
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::record as codec;
use crate::resolve::{self, Deadline, LateWrite, may_have_landed};
use crate::store::{Expect, Quarantined, SCAN_PAGE, Store, Version};
use crate::trace::report;

/// Longest wait between two attempts of [`JobLock::acquire_within`].
const MAX_BACKOFF_MS: u64 = 1_000;
/// First wait between two attempts of [`JobLock::acquire_within`].
const FIRST_BACKOFF_MS: u64 = 20;

/// Lease locks with fencing tokens, over any [`Store`].
///
/// A lock is one record per key. [`acquire`](JobLock::acquire) is a single
/// compare-and-set: the caller either becomes the holder or gets the current
/// holder's record back, in the same call; two callers can never both win. A lease
/// that has expired is taken over by the next acquire, so a holder that crashed
/// blocks nobody for longer than its lease. A guard releases the lock when dropped;
/// the lease is the backstop when even that cannot run.
///
/// Every successful acquire returns a [`FencingToken`](crate::FencingToken) that is
/// greater than every token issued before for that key, across takeovers, releases,
/// re-acquires and [`purge`](JobLock::purge), for the life of the store: the token
/// is the store version of the acquiring write, and store versions are never
/// reused. Pass it with every write the lock protects, and have the protected
/// resource refuse tokens older than the newest it has seen
/// ([`FencingToken::check_not_older_than`](crate::FencingToken::check_not_older_than)):
/// a holder that stalled past its lease then cannot overwrite its successor's work.
///
/// # When the store fails
///
/// A store call that fails transiently may still have made its change: on
/// [`PgStore`](crate::PgStore) a commit whose reply was lost. Every write of a
/// lock names itself in the record (an acquire by its
/// [attempt id](LockRequest::attempt), which becomes the job id), and after
/// such a failure the call reads the lock back until its
/// [`resolve_within`](JobLockBuilder::resolve_within) deadline: an acquire
/// that landed returns its guard (no lock is ever held by a job nobody
/// knows), a renewal that landed is renewed, a release that landed released.
/// A write that did not land is made again (at most three writes in all),
/// which also fences it off should it still arrive: every write is a
/// compare-and-set. A store unreachable until the deadline makes the call
/// fail with [`Error::Ambiguous`], carrying the attempt id; repeat the
/// acquire with that id. So does a write read back as not landed whose store
/// could not rule out that it lands later (a [`PgStore`](crate::PgStore)
/// that could not end the failed write's session).
///
/// Time comes from the injected [`Clock`](crate::Clock). A lease ends exactly at
/// its expiry time, plus the [`skew_margin`](JobLockBuilder::skew_margin) when holders on
/// other machines read other clocks. A clock that jumps forward ends leases early
/// (fencing keeps that safe); one that jumps back makes them last longer. A
/// holder's [`LockGuard::remaining`] is read from the clock alone: after a jump
/// forward that let another take the lock over, and one back, the old guard
/// shows time left too. What keeps two holders apart is the store: the old
/// guard's renewals and releases are refused, and so is every write fenced by
/// its token.
///
/// # Dead holders
///
/// On a store local to one machine ([`Store::is_machine_local`]: `DirStore`,
/// `LogStore`, `MemStore`), every acquire and renewal records the process that
/// made it in [`LockRecord::process`] (its id, start time, boot id, and PID and
/// time namespaces, from Linux's `/proc`). An acquire that finds a lease still
/// running takes it over at once, as if it had expired, when that process has
/// provably exited ([`ProcessLiveness::Dead`]): it
/// ran under the current boot of this kernel, in the acquirer's PID and time
/// namespaces, and no process with its id and its start time exists any more
/// (the id is free, or was given to a later process). So a runner restarted
/// after a crash does not wait out the lease of the one that died. The fencing
/// token grows as at any takeover. [`acquire_within`](JobLock::acquire_within)
/// notices a holder's death at its next attempt.
///
/// In every other case the lease rules, and the lock is taken over at its expiry:
/// - the holder runs, or has exited but was not yet reaped by its parent (a
///   zombie, which cannot be told from a leader whose threads still run);
/// - the record comes from another boot. Its holder is most likely gone with
///   that boot, but a boot id cannot tell an earlier boot of this machine from
///   another machine that reaches the same directory (a network filesystem a
///   store was wrongly opened on): taking that as proof would give the lock to
///   two machines at once. After a reboot, what is left of the lease is waited
///   out;
/// - the holder ran in another PID namespace (another container), where its id
///   names another process, or in another time namespace, where start times
///   are shifted;
/// - `/proc` is missing or unreadable, belongs to another PID namespace than
///   the acquirer's, or hides other users' processes (`hidepid`, systemd's
///   `ProtectProc=`), which makes a live process look absent;
/// - the system is not Linux;
/// - the record names no process: written before this rule existed, by a
///   process that could not name itself, or renewed since by a version that
///   does not record processes (and kept the old one's name unchanged);
/// - the store is not machine-local (`PgStore`, and any store that keeps the
///   default): nothing is recorded there, and no record is looked at.
///
/// Only the process that last acquired or renewed counts: a lock handed to
/// another process ([`LockGuard::into_handle`]) must be renewed by the receiver
/// before the acquirer exits. If the acquirer exits first, the lock may be taken
/// over at once, and the receiver's renewal reports it as
/// [`Renewal::Lost`]: it never works on under a lock that another holds.
/// [`peek`](JobLock::peek) and [`list`](JobLock::list) report records as they
/// are; [`LockRecord::holder_liveness`] tells whether the holder still runs.
/// [`purge`](JobLock::purge) goes by expiry alone.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use jobsafe::{JobLock, Key, ManualClock, MemStore};
/// use jobsafe::lock::{Acquire, LockRequest};
///
/// let clock = ManualClock::new(0);
/// let locks = JobLock::new(MemStore::new(), Arc::new(clock.clone()));
/// let vault = Key::new(["index", "lic:abc", "vault-1"])?;
/// let ttl = Duration::from_secs(16 * 60);
///
/// let Acquire::Acquired(guard) = locks.acquire(&vault, ttl, &LockRequest::new().actor("alice"))? else {
///     unreachable!("nobody else holds it");
/// };
/// // A double click: the second request learns who holds the lock (HTTP 409).
/// let Acquire::Held(holder) = locks.acquire(&vault, ttl, &LockRequest::new())? else {
///     unreachable!("the lock is held");
/// };
/// assert_eq!(holder.job_id, guard.job_id());
///
/// // The holder crashes without releasing; at expiry the next acquire takes over,
/// // with a greater fencing token.
/// let stale_token = guard.token();
/// let _ = guard.into_handle();
/// clock.advance(ttl);
/// let Acquire::Acquired(next) = locks.acquire(&vault, ttl, &LockRequest::new())? else {
///     unreachable!("the lease has expired");
/// };
/// assert!(next.token() > stale_token);
/// # Ok::<(), jobsafe::Error>(())
/// ```
pub struct JobLock<S> {
    store: Arc<S>,
    clock: SharedClock,
    namespace: Arc<Prefix>,
    skew_ms: u64,
    resolve_within: Duration,
}

/// The waiting of [`JobLock::acquire_within`], written once for both of its
/// faces: after each attempt that found the lock held, it says until when to
/// wait before the next one, or that the wait is over.
#[derive(Debug)]
pub(super) struct WaitForLock {
    started_ms: u64,
    deadline_ms: u64,
    backoff_ms: u64,
}

impl WaitForLock {
    pub(super) fn new(now_ms: u64, wait: Duration) -> Self {
        WaitForLock {
            started_ms: now_ms,
            deadline_ms: now_ms.saturating_add(millis(wait)),
            backoff_ms: FIRST_BACKOFF_MS,
        }
    }

    /// After an attempt that found `holder` at `key`: the time to sleep until
    /// before the next attempt (`None`: try again at once), jittered and
    /// growing, never past the holder's expiry or the deadline.
    ///
    /// # Errors
    /// [`Error::LockTimeout`] naming the holder once the deadline has passed.
    pub(super) fn after_held<S: Store>(
        &mut self,
        lock: &JobLock<S>,
        key: &Key,
        holder: &LockRecord,
    ) -> Result<Option<u64>> {
        let now = lock.clock.now_ms();
        if now >= self.deadline_ms {
            if lock.is_taken_over_at(holder, now) {
                // The lease ended while we looked: one more attempt decides.
                return Ok(None);
            }
            return Err(Error::LockTimeout {
                key: key.clone(),
                holder: holder.holder(),
                expires_ms: holder.expires_ms,
                waited_ms: now - self.started_ms,
            });
        }
        let pause = fastrand::u64(self.backoff_ms / 2..=self.backoff_ms);
        let takeover = holder.expires_ms.saturating_add(lock.skew_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
        Ok(Some(
            now.saturating_add(pause)
                .min(takeover)
                .min(self.deadline_ms),
        ))
    }
}

impl<S> Clone for JobLock<S> {
    fn clone(&self) -> Self {
        JobLock {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            namespace: Arc::clone(&self.namespace),
            skew_ms: self.skew_ms,
            resolve_within: self.resolve_within,
        }
    }
}

impl<S> std::fmt::Debug for JobLock<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock")
            .field("namespace", &self.namespace)
            .field("skew_ms", &self.skew_ms)
            .field("resolve_within", &self.resolve_within)
            .finish_non_exhaustive()
    }
}

/// Options for a [`JobLock`], from [`JobLock::builder`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use jobsafe::{JobLock, ManualClock, MemStore, Prefix};
///
/// let locks = JobLock::builder(MemStore::new(), Arc::new(ManualClock::default()))
///     .namespace(Prefix::new(["relay", "locks"])?)
///     .skew_margin(Duration::from_secs(2))
///     .build()?;
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct JobLockBuilder<S> {
    store: S,
    clock: SharedClock,
    namespace: Prefix,
    skew_margin: Duration,
    resolve_within: Duration,
}

impl JobLock<()> {
    /// How long a call keeps re-reading a lock whose write failed in a way
    /// that may hide its success, by default: 10 s. See
    /// [`JobLockBuilder::resolve_within`].
    pub const DEFAULT_RESOLVE_WITHIN: Duration = resolve::DEFAULT_RESOLVE_WITHIN;
}

impl<S: Store> JobLockBuilder<S> {
    /// Keeps the lock records under `namespace`, so that several lock families
    /// (or other components) share one store without colliding. The namespace
    /// plus a lock key must fit in [`Key::MAX_SEGMENTS`]; it has at least one
    /// segment. Default: `locks`.
    pub fn namespace(mut self, namespace: Prefix) -> Self {
        self.namespace = namespace;
        self
    }

    /// Takes a lease over only `margin` after its expiry, for stores shared by
    /// machines whose clocks may disagree by up to `margin`; a holder counts its
    /// lease as ending `margin` early. Every lease must then be longer than the
    /// margin. Default: zero.
    pub fn skew_margin(mut self, margin: Duration) -> Self {
        self.skew_margin = margin;
        self
    }

    /// Bounds how long an acquire, renewal or release whose write failed in a
    /// way that may hide its success (see [`Error::is_ambiguous`]) keeps
    /// re-reading the lock to learn its own write's outcome, counted by the
    /// lock's clock from the start of the call. A store that stays
    /// unreachable that long makes the call fail with an
    /// [ambiguous](Error::is_ambiguous) error. Zero reads back once. Default:
    /// [`JobLock::DEFAULT_RESOLVE_WITHIN`].
    ///
    /// The pauses between re-reads are sleeps on the clock: with a
    /// [`ManualClock`](crate::ManualClock) that nothing advances, a store that
    /// keeps failing holds the call until the clock moves. In such a test,
    /// set zero (one re-read, at once) or
    /// [`ManualClock::set_auto_advance`](crate::ManualClock::set_auto_advance).
    pub fn resolve_within(mut self, within: Duration) -> Self {
        self.resolve_within = within;
        self
    }

    /// The lock manager.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if the namespace leaves no room for a lock key;
    /// [`Error::InvalidArgument`] if it is empty.
    pub fn build(self) -> Result<JobLock<S>> {
        crate::key::check_named_namespace(&self.namespace, "JobLock")?;
        self.namespace.check_room(1, "JobLock")?;
        Ok(JobLock {
            store: Arc::new(self.store),
            clock: self.clock,
            namespace: Arc::new(self.namespace),
            skew_ms: millis(self.skew_margin),
            resolve_within: self.resolve_within,
        })
    }
}

impl<S: Store> JobLock<S> {
    /// Locks kept in `store` under the key prefix `locks`, timed by `clock`: the
    /// defaults of [`JobLock::builder`].
    pub fn new(store: S, clock: SharedClock) -> Self {
        JobLock {
            store: Arc::new(store),
            clock,
            namespace: Arc::new(default_namespace()),
            skew_ms: 0,
            resolve_within: JobLock::DEFAULT_RESOLVE_WITHIN,
        }
    }

    /// Options for locks kept in `store`, timed by `clock`.
    pub fn builder(store: S, clock: SharedClock) -> JobLockBuilder<S> {
        JobLockBuilder {
            store,
            clock,
            namespace: default_namespace(),
            skew_margin: Duration::ZERO,
            resolve_within: JobLock::DEFAULT_RESOLVE_WITHIN,
        }
    }

    /// The store the records live in.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The clock that decides expiry.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Tries once to acquire the lock at `key` for `ttl`.
    ///
    /// Returns [`Acquire::Acquired`] with a guard if the lock was free, its lease
    /// had ended, or its holder's process has provably exited (see "Dead holders"
    /// above), and [`Acquire::Held`] with the holder's record if someone holds
    /// it. A lost race is decided anew: the result is always the state after one
    /// successful compare-and-set.
    ///
    /// A write that fails in a way that may hide its success (the store was
    /// unreachable, and may have committed it) is read back until the
    /// [`resolve_within`](JobLockBuilder::resolve_within) deadline: if it
    /// landed, the call returns its guard, so no lock is ever held by a job
    /// nobody knows. If the lock is held by the request's own
    /// [attempt](LockRequest::attempt) (a repeated call), that holder's guard
    /// is returned.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming both values if `ttl` is not longer than
    /// the [skew margin](JobLockBuilder::skew_margin) (zero by default, so a zero
    /// `ttl`); [`Error::InvalidKey`] if the
    /// namespaced key has too many segments; [`Error::TooLarge`] naming the
    /// field for an actor or metadata over [`LockRequest::MAX_ACTOR_LEN`] or
    /// [`LockRequest::MAX_METADATA_LEN`], with nothing written or read;
    /// [`Error::Corrupt`] naming the key if
    /// the lock record cannot be read (it is never counted as "no lock": see
    /// [`quarantine`](JobLock::quarantine)); [`Error::UnsupportedSchema`];
    /// [`Error::Ambiguous`] with the attempt id if the store failed the write
    /// and stayed unreachable until the deadline; store errors: a transient
    /// one only when the write is known not to have landed.
    pub fn acquire(&self, key: &Key, ttl: Duration, request: &LockRequest) -> Result<Acquire<S>> {
        drive::blocking(self.acquire_driven(Blocking, key, ttl, request))
    }

    /// [`acquire`](JobLock::acquire)'s body, each store call and each pause
    /// made through `drive`.
    pub(crate) async fn acquire_driven(
        &self,
        drive: impl Drive<S>,
        key: &Key,
        ttl: Duration,
        request: &LockRequest,
    ) -> Result<Acquire<S>> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        let ttl_ms = self.lease_ms(ttl)?;
        let stored_key = self.stored_key(key)?;
        request.check(&stored_key)?;
        let attempt = request.attempt_id().cloned().unwrap_or_default();
        let mut late = LateWrite::default();
        let end =
            |late: &LateWrite, error: Error| late.end("acquire lock", &stored_key, &attempt, error);
        loop {
            let now = self.clock.now_ms();
            let found = self.read_driven(drive, &stored_key).await;
            let expect = match found.map_err(|e| end(&late, e))? {
                None => Expect::Absent,
                Some((stored, version)) => {
                    late.stored(Expect::Version(version));
                    let holder = stored.into_record(key.clone(), version);
                    if !self.is_taken_over_at(&holder, now) {
                        if holder.job_id == attempt.as_str() {
                            // This call, repeated: its acquire had landed.
                            return Ok(Acquire::Acquired(LockGuard::new(self.clone(), holder)));
                        }
                        // Held, but a failed write of this call may still
                        // land: one made on absence, once the holder
                        // releases, or one made on this very record (the
                        // clock went back).
                        return match late.nothing_to_write("acquire lock", &stored_key, &attempt) {
                            Some(open) => Err(open),
                            None => Ok(Acquire::Held(holder)),
                        };
                    }
                    Expect::Version(version)
                }
            };
            late.stored(expect);
            let stored = StoredLock {
                job_id: attempt.to_string(),
                token: None,
                actor: request.actor_name().map(str::to_owned),
                metadata: request.metadata().clone(),
                started_ms: now,
                renewed_ms: now,
                expires_ms: now.saturating_add(ttl_ms),
                process: StoredProcess::of(self.this_process(), now),
                write: Some(attempt.clone()),
                extra: codec::Extra::new(),
            };
            let bytes = codec::encode(&stored_key, &stored)?;
            match drive.put(&self.store, &stored_key, bytes, expect).await {
                Ok(version) => {
                    let record = stored.into_record(key.clone(), version);
                    report!(
                        debug,
                        key = %crate::trace::private(&record.key),
                        job_id = %crate::trace::private(&record.job_id),
                        token = record.token.get(),
                        "lock acquired"
                    );
                    return Ok(Acquire::Acquired(LockGuard::new(self.clone(), record)));
                }
                // Someone else wrote the record between our read and our write:
                // decide again on what is there now.
                Err(e) if e.is_conflict() => continue,
                Err(e) if may_have_landed(&e) => {
                    late.failed(&e, expect);
                    let reread = deadline
                        .reread_driven(drive, || self.read_driven(drive, &stored_key))
                        .await;
                    match reread {
                        // Ours, whatever happened to the reply: held, unless
                        // its lease is over already, when the caller decides
                        // again. Not read once more: a failure of that read
                        // would hide that the caller holds the lock.
                        Ok(Some((stored, version))) if stored.job_id == attempt.as_str() => {
                            let ours = stored.into_record(key.clone(), version);
                            if !self.is_taken_over_at(&ours, self.clock.now_ms()) {
                                return Ok(Acquire::Acquired(LockGuard::new(self.clone(), ours)));
                            }
                            continue;
                        }
                        // Not there, or another's: ours did not land, or was
                        // taken over already, and the caller holds nothing.
                        // Deciding and writing again fences the failed write
                        // off, should it still arrive.
                        Ok(_) if deadline.may_write_again() => continue,
                        Ok(_) => return Err(end(&late, e)),
                        Err(reread) => {
                            return Err(resolve::ambiguous(
                                "acquire lock",
                                &stored_key,
                                &attempt,
                                e,
                                reread,
                            ));
                        }
                    }
                }
                Err(e) => return Err(end(&late, e)),
            }
        }
    }

    /// Acquires the lock at `key`, waiting up to `wait` (by the lock's clock) for
    /// the holder to release it or for its lease to end. Between attempts it
    /// sleeps on the clock with jittered, growing backoff, never past the holder's
    /// expiry or the deadline.
    ///
    /// # Errors
    /// [`Error::LockTimeout`] naming the holder if the lock is still held at the
    /// deadline; otherwise as [`acquire`](JobLock::acquire).
    pub fn acquire_within(
        &self,
        key: &Key,
        ttl: Duration,
        request: &LockRequest,
        wait: Duration,
    ) -> Result<LockGuard<S>> {
        let mut waiting = WaitForLock::new(self.clock.now_ms(), wait);
        loop {
            let holder = match self.acquire(key, ttl, request)? {
                Acquire::Acquired(guard) => return Ok(guard),
                Acquire::Held(holder) => holder,
            };
            if let Some(until_ms) = waiting.after_held(self, key, &holder)? {
                self.clock.sleep_until(until_ms);
            }
        }
    }

    /// Extends the lease of `holder` to `ttl` from now, if it still holds the lock
    /// (same job id and fencing token). A lease that has ended but was not taken
    /// over is still the holder's and is renewed.
    ///
    /// The calling process becomes the lock's [`process`](LockRecord::process):
    /// from then on the lock outlives the process that acquired it, and ends
    /// early only if this one dies (see "Dead holders" above).
    ///
    /// A write that fails in a way that may hide its success is read back, as
    /// by [`acquire`](JobLock::acquire): a renewal that landed is
    /// [`Renewal::Renewed`].
    ///
    /// # Errors
    /// As [`acquire`](JobLock::acquire). Losing the lock is not an error but
    /// [`Renewal::Lost`].
    pub fn renew(&self, holder: &LockHandle, ttl: Duration) -> Result<Renewal> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        let ttl_ms = self.lease_ms(ttl)?;
        let stored_key = self.stored_key(&holder.key)?;
        let write = AttemptId::new();
        let mut late = LateWrite::default();
        let end =
            |late: &LateWrite, error: Error| late.end("renew lock", &stored_key, &write, error);
        loop {
            let found = self.read(&stored_key).map_err(|e| end(&late, e))?;
            let Some((mut stored, version)) = found else {
                return Ok(Renewal::Lost(LostLease::Gone));
            };
            late.stored(Expect::Version(version));
            if !stored.is_held_by(holder, version) {
                let current = stored.into_record(holder.key.clone(), version);
                return Ok(Renewal::Lost(LostLease::TakenOver(current)));
            }
            let now = self.clock.now_ms();
            stored.token = Some(stored.token_at(version));
            stored.renewed_ms = now;
            stored.expires_ms = now.saturating_add(ttl_ms);
            stored.process = StoredProcess::of(self.this_process(), now);
            stored.write = Some(write.clone());
            let bytes = codec::encode(&stored_key, &stored)?;
            match self
                .store
                .put(&stored_key, &bytes, Expect::Version(version))
            {
                Ok(version) => {
                    let record = stored.into_record(holder.key.clone(), version);
                    return Ok(Renewal::Renewed(record));
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) if may_have_landed(&e) => {
                    late.failed(&e, Expect::Version(version));
                    match deadline.reread(|| self.read(&stored_key)) {
                        Ok(Some((stored, version))) if stored.was_written_by(&write) => {
                            let record = stored.into_record(holder.key.clone(), version);
                            return Ok(Renewal::Renewed(record));
                        }
                        // Unchanged: the renewal did not land.
                        Ok(Some((_, now_at)))
                            if now_at == version && !deadline.may_write_again() =>
                        {
                            return Err(end(&late, e));
                        }
                        // Not landed, or changed by another: decide again.
                        Ok(_) => continue,
                        Err(reread) => {
                            return Err(resolve::ambiguous(
                                "renew lock",
                                &stored_key,
                                &write,
                                e,
                                reread,
                            ));
                        }
                    }
                }
                Err(e) => return Err(end(&late, e)),
            }
        }
    }

    /// Releases the lock if `holder` still holds it; never removes another job's
    /// lock.
    ///
    /// # Errors
    /// As [`acquire`](JobLock::acquire).
    pub fn release(&self, holder: &LockHandle) -> Result<Release> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        let mut late = LateWrite::default();
        self.release_stored(&self.stored_key(&holder.key)?, holder, &deadline, &mut late)
    }

    /// Releases the lock whose holder last wrote `record` (by acquiring or
    /// renewing it), as [`release`](JobLock::release) does, but first tries a
    /// delete at `record`'s version without reading the lock. A store never
    /// reuses a version for a key, so that delete succeeds exactly when the lock
    /// is still the record the holder wrote, and then there is nothing to decide.
    /// If the lock changed since (renewed through a handle, taken over, forced
    /// free) it fails as a conflict, and the lock is read and decided on as by
    /// `release`.
    pub(super) fn release_record(&self, record: &LockRecord) -> Result<Release> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        let stored_key = self.stored_key(&record.key)?;
        let handle = record.handle();
        match self
            .store
            .delete(&stored_key, Expect::Version(record.version))
        {
            Ok(_) => {
                report!(
                    debug,
                    key = %crate::trace::private(&record.key),
                    job_id = %crate::trace::private(&record.job_id),
                    "lock released"
                );
                Ok(Release::Released)
            }
            Err(e) if e.is_conflict() => {
                self.release_stored(&stored_key, &handle, &deadline, &mut LateWrite::default())
            }
            Err(e) if may_have_landed(&e) => {
                let mut late = LateWrite::default();
                self.resolve_release(
                    &stored_key,
                    &handle,
                    record.version,
                    e,
                    &deadline,
                    &mut late,
                )
            }
            Err(e) => Err(e),
        }
    }

    /// Releases the lock at `stored_key` if `holder` still holds it. `late`
    /// is a delete of this call that may still land, if one failed so.
    fn release_stored(
        &self,
        stored_key: &Key,
        holder: &LockHandle,
        deadline: &Deadline,
        late: &mut LateWrite,
    ) -> Result<Release> {
        let end = |late: &LateWrite, error: Error| {
            late.end("release lock", stored_key, &AttemptId::new(), error)
        };
        loop {
            let found = self.read(stored_key).map_err(|e| end(late, e))?;
            let Some((stored, version)) = found else {
                // Gone: by this call's own delete, landed late, if one may
                // have (counted as this call's, as after a re-read).
                return Ok(if late.is_open() {
                    Release::Released
                } else {
                    Release::AlreadyGone
                });
            };
            late.stored(Expect::Version(version));
            if !stored.is_held_by(holder, version) {
                let current = stored.into_record(holder.key.clone(), version);
                return Ok(Release::OwnedByAnother(current));
            }
            match self.store.delete(stored_key, Expect::Version(version)) {
                Ok(_) => return Ok(Release::Released),
                Err(e) if e.is_conflict() => continue,
                Err(e) if may_have_landed(&e) => {
                    return self.resolve_release(stored_key, holder, version, e, deadline, late);
                }
                Err(e) => return Err(end(late, e)),
            }
        }
    }

    /// The outcome of a release whose delete at `version` failed with `error`,
    /// which may hide its success: read back until the deadline. A lock gone
    /// is released; one unchanged was not, and is released again (at most
    /// twice more); one changed since is decided on as by a new release.
    fn resolve_release(
        &self,
        stored_key: &Key,
        holder: &LockHandle,
        version: Version,
        error: Error,
        deadline: &Deadline,
        late: &mut LateWrite,
    ) -> Result<Release> {
        late.failed(&error, Expect::Version(version));
        match deadline.reread(|| self.read(stored_key)) {
            Ok(None) => Ok(Release::Released),
            Ok(Some((_, now_at))) if now_at == version && !deadline.may_write_again() => {
                Err(late.end("release lock", stored_key, &AttemptId::new(), error))
            }
            Ok(Some(_)) => self.release_stored(stored_key, holder, deadline, late),
            Err(reread) => Err(resolve::ambiguous(
                "release lock",
                stored_key,
                &AttemptId::new(),
                error,
                reread,
            )),
        }
    }

    /// Removes the lock at `key` whoever holds it, for operators, and returns the
    /// record removed (`None` if there was none). Fencing tokens stay monotonic:
    /// the next acquire still gets a greater one.
    ///
    /// A delete that fails in a way that may hide its success is read back,
    /// as by [`release`](JobLock::release): the lock gone counts as removed
    /// by this call, and the record it removed is returned.
    ///
    /// # Errors
    /// As [`acquire`](JobLock::acquire); a malformed record is an error here too,
    /// use [`quarantine`](JobLock::quarantine) for it.
    pub fn force_release(&self, key: &Key) -> Result<Option<LockRecord>> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        let stored_key = self.stored_key(key)?;
        let write = AttemptId::new();
        let mut late = LateWrite::default();
        // The lock this call set out to remove, once a delete of it failed
        // in a way that may hide its success and it was found there after.
        let mut targeted: Option<LockRecord> = None;
        let end = |late: &LateWrite, error: Error| {
            late.end("force release lock", &stored_key, &write, error)
        };
        loop {
            let found = self.read(&stored_key).map_err(|e| end(&late, e))?;
            let Some((stored, version)) = found else {
                // Gone: by a delete of this call, or by another in that
                // moment, counted as this call's.
                return Ok(targeted);
            };
            if let Some(target) = &targeted
                && !stored.is_held_by(&target.handle(), version)
            {
                // Another holder since: the lock this call set out to
                // remove is gone (counted as this call's, as above), and
                // the newcomer's is left alone.
                return Ok(targeted);
            }
            late.stored(Expect::Version(version));
            let record = stored.into_record(key.clone(), version);
            let e = match self.store.delete(&stored_key, Expect::Version(version)) {
                Ok(_) => return Ok(Some(record)),
                Err(e) if e.is_conflict() => continue,
                Err(e) if may_have_landed(&e) => e,
                Err(e) => return Err(end(&late, e)),
            };
            late.failed(&e, Expect::Version(version));
            match deadline.reread(|| self.read(&stored_key)) {
                Ok(None) => return Ok(Some(record)),
                Ok(Some((_, now_at))) if now_at == version && !deadline.may_write_again() => {
                    return Err(end(&late, e));
                }
                // Not landed, or changed since: decide again.
                Ok(_) => targeted = Some(record),
                Err(reread) => {
                    let error =
                        resolve::ambiguous("force release lock", &stored_key, &write, e, reread);
                    return Err(error);
                }
            }
        }
    }

    /// Moves the record at `key` aside, whatever it holds, keeping its bytes for
    /// inspection, so that the lock can be acquired again. This is the way past a
    /// malformed lock record, which [`acquire`](JobLock::acquire) reports instead
    /// of treating as "no lock". Returns where the bytes went.
    ///
    /// # Errors
    /// Store errors.
    pub fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        self.store.quarantine(&self.stored_key(key)?)
    }

    /// The lock at `key`, without changing anything (an expired lease is reported
    /// as it is; check [`LockRecord::is_expired_at`]).
    ///
    /// # Errors
    /// As [`acquire`](JobLock::acquire).
    pub fn peek(&self, key: &Key) -> Result<Option<LockRecord>> {
        let stored_key = self.stored_key(key)?;
        Ok(self
            .read(&stored_key)?
            .map(|(stored, version)| stored.into_record(key.clone(), version)))
    }

    /// Every lock under `prefix` (of lock keys, without the namespace), in key
    /// order, without changing anything. Records that cannot be read are listed
    /// apart with their errors rather than failing the listing or being skipped.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if the namespaced prefix is too long; store errors.
    pub fn list(&self, prefix: &Prefix) -> Result<LockList> {
        let mut list = LockList::default();
        self.for_each_lock(prefix, |read| {
            match read {
                Ok(lock) => list.locks.push(lock),
                Err(unreadable) => list.unreadable.push(unreadable),
            }
            Ok(())
        })?;
        Ok(list)
    }

    /// Removes the locks under `prefix` whose lease ended at least `expired_for`
    /// ago, returning them. Fencing tokens stay monotonic. Unreadable records are
    /// left in place and reported.
    ///
    /// # Errors
    /// As [`list`](JobLock::list). A purge stopped by an error may have removed
    /// some locks, the one it was deleting among them (its reply may be what
    /// was lost): run it again, it removes only what is left.
    pub fn purge(&self, prefix: &Prefix, expired_for: Duration) -> Result<LockList> {
        let now = self.clock.now_ms();
        let mut purged = LockList::default();
        // Deleting as the scan goes: no list of every lock is held.
        self.for_each_lock(prefix, |read| {
            let lock = match read {
                Ok(lock) => lock,
                Err(unreadable) => {
                    purged.unreadable.push(unreadable);
                    return Ok(());
                }
            };
            let ended = lock.expires_ms.saturating_add(self.skew_ms);
            if now < ended.saturating_add(millis(expired_for)) {
                return Ok(());
            }
            let stored_key = self.stored_key(&lock.key)?;
            match self
                .store
                .delete(&stored_key, Expect::Version(lock.version))
            {
                Ok(_) => purged.locks.push(lock),
                // Renewed or taken over since it was read: not ours to purge.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e),
            }
            Ok(())
        })?;
        Ok(purged)
    }

    /// Calls `f` with each lock under `prefix` in key order, read as one
    /// [`scan`](Store::scan) reaches it, or with the key and error of a record
    /// that cannot be read; one released since the scan saw its key is skipped.
    /// Holds one page of keys: `f` may change or delete the lock it is given.
    /// Stops at the first error of `f` or of the scan.
    fn for_each_lock(
        &self,
        prefix: &Prefix,
        mut f: impl FnMut(std::result::Result<LockRecord, (Key, Error)>) -> Result<()>,
    ) -> Result<()> {
        let mut segments = self.namespace.segments().to_vec();
        segments.extend(prefix.segments().iter().cloned());
        let stored_prefix = Prefix::new(segments)?;
        for page in self.store.scan(&stored_prefix, SCAN_PAGE) {
            for stored_key in page? {
                // A record at the namespace itself is not a lock: listed apart.
                let key = match self.lock_key_of(&stored_key) {
                    Ok(key) => key,
                    Err(e) => {
                        f(Err((stored_key, e)))?;
                        continue;
                    }
                };
                match self.read(&stored_key) {
                    Ok(Some((stored, version))) => f(Ok(stored.into_record(key, version)))?,
                    Ok(None) => {} // released since the scan saw it
                    Err(e) => f(Err((key, e)))?,
                }
            }
        }
        Ok(())
    }

    /// When `holder`'s lock may be taken over by time: its lease's end plus
    /// the skew margin.
    pub(crate) fn takeover_ms(&self, holder: &LockRecord) -> u64 {
        holder.expires_ms.saturating_add(self.skew_ms)
    }

    /// Whether an acquire at `now` takes the lock from `holder`: its lease has
    /// ended, or its process has provably exited on a store where process ids
    /// mean something.
    fn is_taken_over_at(&self, holder: &LockRecord, now: u64) -> bool {
        now >= self.takeover_ms(holder)
            || (self.store.is_machine_local() && holder.holder_liveness() == ProcessLiveness::Dead)
    }

    /// The process to record as the holder: this one, on a machine-local store.
    fn this_process(&self) -> Option<ProcessIdentity> {
        if self.store.is_machine_local() {
            ProcessIdentity::current()
        } else {
            None
        }
    }

    pub(crate) fn stored_key(&self, key: &Key) -> Result<Key> {
        let segments = self.namespace.segments().iter().chain(key.segments());
        Key::new(segments.cloned())
    }

    fn lock_key_of(&self, stored_key: &Key) -> Result<Key> {
        let below = stored_key.segments().get(self.namespace.segments().len()..);
        Key::new(below.unwrap_or_default().iter().cloned())
    }

    /// A lease's length in milliseconds. It must be longer than the skew margin:
    /// a holder counts its lease as ending that much early, so a shorter one would
    /// be over before it began.
    fn lease_ms(&self, ttl: Duration) -> Result<u64> {
        let ttl_ms = millis(ttl);
        if self.skew_ms == 0 {
            return positive_ms(ttl, "lock ttl");
        }
        if ttl_ms <= self.skew_ms {
            return Err(Error::InvalidArgument(format!(
                "lock ttl {ttl:?} must be longer than the skew margin {:?}: a holder \
                 counts its lease as ending that much early, so it would never hold it",
                Duration::from_millis(self.skew_ms)
            )));
        }
        Ok(ttl_ms)
    }

    fn read(&self, stored_key: &Key) -> Result<Option<(StoredLock, Version)>> {
        drive::blocking(self.read_driven(Blocking, stored_key))
    }

    async fn read_driven(
        &self,
        drive: impl Drive<S>,
        stored_key: &Key,
    ) -> Result<Option<(StoredLock, Version)>> {
        match drive.get(&self.store, stored_key).await? {
            None => Ok(None),
            Some(entry) => {
                let stored: StoredLock = codec::decode(stored_key, &entry.value)?;
                Ok(Some((stored, entry.version)))
            }
        }
    }
}

/// Locks found by [`JobLock::list`] or removed by [`JobLock::purge`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct LockList {
    /// The locks, in key order.
    pub locks: Vec<LockRecord>,
    /// Keys whose records could not be read, with the error for each.
    pub unreadable: Vec<(Key, Error)>,
}

fn default_namespace() -> Prefix {
    Prefix::new(["locks"]).unwrap_or_default()
}

fn positive_ms(d: Duration, what: &str) -> Result<u64> {
    match millis(d) {
        0 => Err(Error::InvalidArgument(format!(
            "{what} must be at least 1 ms, got {d:?}"
        ))),
        ms => Ok(ms),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;
