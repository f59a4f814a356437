//! [`AsyncJobLock`]: the async face of [`JobLock`].

use std::time::Duration;

use super::guard::{Acquire, LockGuard, LockHandle, Release, Renewal};
use super::keep_alive::{KeepAlive, KeepAliveEvent};
use super::{JobLock, LockList, LockRecord, LockRequest, WaitForLock};
use crate::error::Result;
use crate::fencing::FencingToken;
use crate::key::{Key, Prefix};
use crate::pool;
use crate::store::{Quarantined, Store};

/// The async face of [`JobLock`]: the same locks, the same guarantees, and
/// methods of the same names that are `async fn`s and never block the
/// caller's thread.
///
/// Each store call runs on the crate's [pool](crate::pool) through the
/// blocking twin of the method, so the logic (fencing, take-overs, reading
/// back a write whose outcome was unknown) is written once. Waits hold no
/// thread: [`acquire_within`](AsyncJobLock::acquire_within) sleeps on the
/// lock's clock between attempts, and a [keep-alive](AsyncLockGuard::keep_alive)
/// renews from the crate's background loops.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use jobsafe::lock::{AsyncAcquire, AsyncJobLock, LockRequest};
/// use jobsafe::{JobLock, Key, ManualClock, MemStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> jobsafe::Result<()> {
/// let locks = AsyncJobLock::new(JobLock::new(MemStore::new(), Arc::new(ManualClock::new(0))));
/// let key = Key::new(["reindex", "shop-7"])?;
/// let ttl = Duration::from_secs(60);
/// let AsyncAcquire::Acquired(guard) = locks.acquire(&key, ttl, &LockRequest::new()).await? else {
///     unreachable!("nobody holds it")
/// };
/// // A second caller is told who holds it (a 409 answer, say).
/// assert!(matches!(locks.acquire(&key, ttl, &LockRequest::new()).await?, AsyncAcquire::Held(_)));
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncJobLock<S> {
    lock: JobLock<S>,
}

impl<S> Clone for AsyncJobLock<S> {
    fn clone(&self) -> Self {
        AsyncJobLock {
            lock: self.lock.clone(),
        }
    }
}

/// The outcome of [`AsyncJobLock::acquire`]: [`Acquire`] with an async guard.
#[derive(Debug)]
#[must_use = "an acquired lock is released as soon as its guard is dropped"]
pub enum AsyncAcquire<S: Store + 'static> {
    /// The caller holds the lock.
    Acquired(AsyncLockGuard<S>),
    /// Someone else holds it: their record.
    Held(LockRecord),
}

impl<S: Store + 'static> AsyncJobLock<S> {
    /// The async face of `lock`, sharing its state.
    pub fn new(lock: JobLock<S>) -> Self {
        AsyncJobLock { lock }
    }

    /// The blocking face, sharing this one's state.
    pub fn blocking(&self) -> &JobLock<S> {
        &self.lock
    }

    /// Runs `call` on the pool with a handle of the lock.
    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&JobLock<S>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let lock = self.lock.clone();
        pool::run(move || call(&lock)).await
    }

    /// [`JobLock::acquire`].
    ///
    /// # Errors
    /// As [`JobLock::acquire`].
    pub async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        request: &LockRequest,
    ) -> Result<AsyncAcquire<S>> {
        let (key, request) = (key.clone(), request.clone());
        let acquired = self
            .run(move |lock| lock.acquire(&key, ttl, &request))
            .await?;
        Ok(match acquired {
            Acquire::Acquired(guard) => AsyncAcquire::Acquired(AsyncLockGuard::new(guard)),
            Acquire::Held(holder) => AsyncAcquire::Held(holder),
        })
    }

    /// [`JobLock::acquire_within`]: between attempts it sleeps on the lock's
    /// clock without holding a thread, with the same backoff.
    ///
    /// # Errors
    /// As [`JobLock::acquire_within`].
    pub async fn acquire_within(
        &self,
        key: &Key,
        ttl: Duration,
        request: &LockRequest,
        wait: Duration,
    ) -> Result<AsyncLockGuard<S>> {
        let mut waiting = WaitForLock::new(self.lock.clock.now_ms(), wait);
        loop {
            let holder = match self.acquire(key, ttl, request).await? {
                AsyncAcquire::Acquired(guard) => return Ok(guard),
                AsyncAcquire::Held(holder) => holder,
            };
            if let Some(until_ms) = waiting.after_held(&self.lock, key, &holder)? {
                self.lock.clock.sleep_until_async(until_ms).await;
            }
        }
    }

    /// [`JobLock::renew`].
    ///
    /// # Errors
    /// As [`JobLock::renew`].
    pub async fn renew(&self, holder: &LockHandle, ttl: Duration) -> Result<Renewal> {
        let holder = holder.clone();
        self.run(move |lock| lock.renew(&holder, ttl)).await
    }

    /// [`JobLock::release`].
    ///
    /// # Errors
    /// As [`JobLock::release`].
    pub async fn release(&self, holder: &LockHandle) -> Result<Release> {
        let holder = holder.clone();
        self.run(move |lock| lock.release(&holder)).await
    }

    /// [`JobLock::force_release`].
    ///
    /// # Errors
    /// As [`JobLock::force_release`].
    pub async fn force_release(&self, key: &Key) -> Result<Option<LockRecord>> {
        let key = key.clone();
        self.run(move |lock| lock.force_release(&key)).await
    }

    /// [`JobLock::quarantine`].
    ///
    /// # Errors
    /// As [`JobLock::quarantine`].
    pub async fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        let key = key.clone();
        self.run(move |lock| lock.quarantine(&key)).await
    }

    /// [`JobLock::peek`].
    ///
    /// # Errors
    /// As [`JobLock::peek`].
    pub async fn peek(&self, key: &Key) -> Result<Option<LockRecord>> {
        let key = key.clone();
        self.run(move |lock| lock.peek(&key)).await
    }

    /// [`JobLock::list`].
    ///
    /// # Errors
    /// As [`JobLock::list`].
    pub async fn list(&self, prefix: &Prefix) -> Result<LockList> {
        let prefix = prefix.clone();
        self.run(move |lock| lock.list(&prefix)).await
    }

    /// [`JobLock::purge`].
    ///
    /// # Errors
    /// As [`JobLock::purge`].
    pub async fn purge(&self, prefix: &Prefix, expired_for: Duration) -> Result<LockList> {
        let prefix = prefix.clone();
        self.run(move |lock| lock.purge(&prefix, expired_for)).await
    }
}

impl<S: Store + 'static> From<JobLock<S>> for AsyncJobLock<S> {
    fn from(lock: JobLock<S>) -> Self {
        AsyncJobLock::new(lock)
    }
}

/// A held lock, from the async face: [`LockGuard`] whose store calls never
/// block the caller's thread. Dropping it releases the lock, best effort, on
/// the crate's pool (the lease is the backstop);
/// [`release`](AsyncLockGuard::release) reports the outcome instead.
#[derive(Debug)]
pub struct AsyncLockGuard<S: Store + 'static> {
    /// Armed while this guard must release the lock.
    guard: LockGuard<S>,
}

impl<S: Store + 'static> AsyncLockGuard<S> {
    pub(super) fn new(guard: LockGuard<S>) -> Self {
        AsyncLockGuard { guard }
    }

    /// The lock record as of the acquire or the last renewal through this guard.
    pub fn record(&self) -> &LockRecord {
        self.guard.record()
    }

    /// The fencing token to pass with every protected write.
    pub fn token(&self) -> FencingToken {
        self.guard.token()
    }

    /// This holder's job id.
    pub fn job_id(&self) -> &str {
        self.guard.job_id()
    }

    /// Who this holder is, to renew or release from elsewhere.
    pub fn handle(&self) -> LockHandle {
        self.guard.handle()
    }

    /// [`LockGuard::remaining`].
    pub fn remaining(&self) -> Duration {
        self.guard.remaining()
    }

    /// [`LockGuard::renew`].
    ///
    /// # Errors
    /// As [`JobLock::renew`].
    pub async fn renew(&mut self, ttl: Duration) -> Result<Renewal> {
        let (lock, holder) = (self.guard.lock().clone(), self.guard.handle());
        let renewal = pool::run(move || lock.renew(&holder, ttl)).await?;
        if let Renewal::Renewed(record) = &renewal {
            self.guard.renewed(record.clone());
        }
        Ok(renewal)
    }

    /// [`LockGuard::keep_alive`], whose events are awaited: see
    /// [`AsyncKeepAlive`].
    ///
    /// # Errors
    /// As [`LockGuard::keep_alive`].
    pub fn keep_alive(&self, ttl: Duration, every: Duration) -> Result<AsyncKeepAlive> {
        Ok(AsyncKeepAlive {
            inner: self.guard.keep_alive(ttl, every)?,
        })
    }

    /// [`LockGuard::release`]. If this future is dropped before the release
    /// began, the lock is released on the pool all the same, as a dropped
    /// guard's is.
    ///
    /// # Errors
    /// As [`JobLock::release`].
    pub async fn release(mut self) -> Result<Release> {
        match self.guard.take_armed() {
            Some(guard) => pool::run(move || guard.release()).await,
            None => Ok(Release::AlreadyGone),
        }
    }

    /// [`LockGuard::into_handle`]: gives up the guard without releasing.
    pub fn into_handle(mut self) -> LockHandle {
        match self.guard.take_armed() {
            Some(guard) => guard.into_handle(),
            None => self.guard.handle(),
        }
    }
}

impl<S: Store + 'static> Drop for AsyncLockGuard<S> {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take_armed() {
            // Its drop releases the lock with a store call: on the pool,
            // never on the caller's (perhaps a runtime's) thread.
            pool::detach(move || drop(guard));
        }
    }
}

/// A [`KeepAlive`] whose events are awaited: from
/// [`AsyncLockGuard::keep_alive`]. Its loops hold no thread (see
/// [`KeepAlive`]); awaiting [`next_event`](AsyncKeepAlive::next_event) holds
/// none either, so a task can `select!` on it beside its work and stop the
/// work when the lease is lost.
#[derive(Debug)]
pub struct AsyncKeepAlive {
    inner: KeepAlive,
}

impl AsyncKeepAlive {
    /// The next event; `None` once the keep-alive has stopped and every event
    /// was taken. One task at a time waits for it (`&mut self`): the events
    /// are the holder's, who hands them on if others need them.
    pub async fn next_event(&mut self) -> Option<KeepAliveEvent> {
        std::future::poll_fn(|cx| self.inner.poll_next_event(cx)).await
    }

    /// The events that happened so far, without waiting.
    pub fn events(&self) -> Vec<KeepAliveEvent> {
        self.inner.events()
    }

    /// [`KeepAlive::stop`].
    pub fn stop(&self) {
        self.inner.stop();
    }
}
