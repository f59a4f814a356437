//! Renewing a lease from a background thread.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use parking_lot::Mutex;

use super::guard::{LockHandle, LostLease, Renewal};
use super::{JobLock, LockRecord, positive_ms};
use crate::error::steps;
use crate::error::{Error, Result};
use crate::store::Store;

/// What a [`KeepAlive`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeepAliveEvent {
    /// The lease was renewed.
    Renewed(LockRecord),
    /// A renewal failed (the store was unreachable, say); it is tried again at the
    /// next period while the lease may still be ours.
    Failed(Error),
    /// The lease is lost; the keep-alive has stopped. Stop the protected work.
    Lost(LostLease),
    /// Renewals kept failing until the lease ended: treat it as lost. The
    /// keep-alive has stopped.
    Expired,
}

/// Renews a lease every period from a background thread, and tells the holder
/// when the lease is lost.
///
/// Renewals are scheduled from the last renewal's time on the lock's clock, so a
/// test that advances a [`ManualClock`](crate::ManualClock) drives them without
/// sleeping. [`stop`](KeepAlive::stop) (or dropping it) guarantees that no renewal
/// starts afterwards; the thread ends at its next wake-up.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use jobsafe::{JobLock, Key, ManualClock, MemStore};
/// use jobsafe::lock::{Acquire, KeepAliveEvent, LockRequest};
///
/// let clock = ManualClock::new(0);
/// let locks = JobLock::new(MemStore::new(), Arc::new(clock.clone()));
/// let key = Key::new(["reindex"])?;
/// let Acquire::Acquired(guard) = locks.acquire(&key, Duration::from_secs(30), &LockRequest::new())? else {
///     unreachable!()
/// };
/// let keep_alive = guard.keep_alive(Duration::from_secs(30), Duration::from_secs(10))?;
/// clock.advance(Duration::from_secs(10));
/// let Some(KeepAliveEvent::Renewed(record)) = keep_alive.next_event() else { unreachable!() };
/// assert_eq!(record.expires_ms, 40_000);
/// keep_alive.stop();
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Debug)]
pub struct KeepAlive {
    stopped: Arc<Mutex<bool>>,
    events: Receiver<KeepAliveEvent>,
}

impl KeepAlive {
    pub(super) fn start<S: Store + 'static>(
        lock: JobLock<S>,
        record: LockRecord,
        ttl: Duration,
        every: Duration,
    ) -> Result<Self> {
        let ttl_ms = positive_ms(ttl, "keep-alive ttl")?;
        let every_ms = positive_ms(every, "keep-alive period")?;
        if every_ms >= ttl_ms {
            return Err(Error::InvalidArgument(format!(
                "keep-alive period {every:?} must be shorter than the ttl {ttl:?}"
            )));
        }
        let stopped = Arc::new(Mutex::new(false));
        let (sender, events) = mpsc::channel();
        let renewer = Renewer {
            lock,
            handle: record.handle(),
            ttl,
            every_ms,
            expires_ms: record.expires_ms,
            next_ms: record.renewed_ms.saturating_add(every_ms),
            stopped: Arc::clone(&stopped),
            events: sender,
        };
        std::thread::Builder::new()
            .name("jobsafe-keep-alive".to_owned())
            .spawn(move || renewer.run())
            .map_err(|e| Error::io(steps::START_KEEP_ALIVE_THREAD, "", e))?;
        Ok(KeepAlive { stopped, events })
    }

    /// Waits for the next event; `None` once the keep-alive has stopped and every
    /// event was taken.
    pub fn next_event(&self) -> Option<KeepAliveEvent> {
        self.events.recv().ok()
    }

    /// The events that happened so far, without waiting.
    pub fn events(&self) -> Vec<KeepAliveEvent> {
        self.events.try_iter().collect()
    }

    /// Stops renewing (dropping the keep-alive does too). No renewal starts after
    /// this returns; the thread ends at its next wake-up, after which
    /// [`next_event`](KeepAlive::next_event) returns `None`.
    pub fn stop(&self) {
        // Taken while a renewal is in progress: waits for it to finish.
        *self.stopped.lock() = true;
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Renewer<S> {
    lock: JobLock<S>,
    handle: LockHandle,
    ttl: Duration,
    every_ms: u64,
    expires_ms: u64,
    next_ms: u64,
    stopped: Arc<Mutex<bool>>,
    events: Sender<KeepAliveEvent>,
}

impl<S: Store> Renewer<S> {
    fn run(mut self) {
        loop {
            self.lock.clock.sleep_until(self.next_ms);
            // Renew while holding the flag, so that `stop` waits for a renewal in
            // progress and none starts after it.
            let stopped = self.stopped.lock();
            if *stopped {
                return;
            }
            let now = self.lock.clock.now_ms();
            let event = match self.lock.renew(&self.handle, self.ttl) {
                Ok(Renewal::Renewed(record)) => {
                    self.expires_ms = record.expires_ms;
                    self.next_ms = record.renewed_ms.saturating_add(self.every_ms);
                    KeepAliveEvent::Renewed(record)
                }
                Ok(Renewal::Lost(lost)) => KeepAliveEvent::Lost(lost),
                Err(_) if now >= self.expires_ms => KeepAliveEvent::Expired,
                Err(e) => {
                    self.next_ms = now.saturating_add(self.every_ms);
                    KeepAliveEvent::Failed(e)
                }
            };
            let done = matches!(event, KeepAliveEvent::Lost(_) | KeepAliveEvent::Expired);
            if self.events.send(event).is_err() || done {
                return;
            }
            drop(stopped);
        }
    }
}
