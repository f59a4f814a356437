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
use crate::trace::report;

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
    /// Less than the safety margin of the lease is left and no renewal was
    /// confirmed: treat the lease as lost and stop the protected work. The
    /// keep-alive has stopped. Reported on time even while a renewal call
    /// hangs (a store cut off by a silent network, say); see [`KeepAlive`].
    Expired,
}

/// Renews a lease every period from a background thread, and tells the holder
/// when the lease is lost.
///
/// Renewals are scheduled from the last renewal's time on the lock's clock, so a
/// test that advances a [`ManualClock`](crate::ManualClock) drives them without
/// sleeping.
///
/// A watch of its own reports [`KeepAliveEvent::Expired`] once less than the
/// *safety margin* of the lease is left with no confirmed renewal, whether the
/// renewals failed or one is still waiting for the store: the margin is the
/// lock's [skew margin](crate::lock::JobLockBuilder::skew_margin) plus one
/// renewal period, so the holder hears of it while the lease, as every other
/// machine counts it, still has a period to run. After `Expired` no other
/// event comes, even if the hung renewal later succeeds (the guard still
/// releases the lock when dropped).
///
/// [`stop`](KeepAlive::stop) (or dropping it) never waits for a renewal in
/// progress: no renewal starts after it returns, and the outcome of one that
/// had started is not reported. The threads end at their next wake-up.
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
    state: Arc<Mutex<State>>,
    events: Receiver<KeepAliveEvent>,
}

/// What the renewer, the watch and the holder share. Events are sent with it
/// locked, so that nothing follows `Lost` or `Expired`.
#[derive(Debug)]
struct State {
    /// Set by [`KeepAlive::stop`]: no renewal starts, no event is sent.
    stopped: bool,
    /// `Lost` or `Expired` was sent.
    done: bool,
    /// When the last confirmed renewal (or the acquire) ends the lease.
    expires_ms: u64,
    /// The only sender of the events: dropped when the keep-alive stops or
    /// ends, so that `next_event` returns `None` then, whichever thread is
    /// still asleep.
    events: Option<Sender<KeepAliveEvent>>,
}

impl State {
    fn over(&self) -> bool {
        self.stopped || self.done
    }

    /// Sends `event`; after `Lost` or `Expired`, ends the keep-alive.
    fn send(&mut self, event: KeepAliveEvent) {
        let last = matches!(event, KeepAliveEvent::Lost(_) | KeepAliveEvent::Expired);
        let delivered = self
            .events
            .as_ref()
            .is_some_and(|events| events.send(event).is_ok());
        if last || !delivered {
            // Nobody listens any more, or nothing follows.
            self.done = true;
            self.events = None;
        }
    }
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
        let margin_ms = lock.skew_ms.saturating_add(every_ms);
        // The watch fires `margin` before the lease ends; the first renewal must
        // come before that, or every lease would be reported expired.
        if every_ms.saturating_add(margin_ms) >= ttl_ms {
            return Err(Error::InvalidArgument(format!(
                "keep-alive period {every:?} leaves no renewal before the safety margin \
                 (the skew margin {skew:?} plus one period) of the ttl {ttl:?}: two periods \
                 and the skew margin must be shorter than the ttl",
                skew = Duration::from_millis(lock.skew_ms),
            )));
        }
        let (sender, events) = mpsc::channel();
        let state = Arc::new(Mutex::new(State {
            stopped: false,
            done: false,
            expires_ms: record.expires_ms,
            events: Some(sender),
        }));
        let watch = Watch {
            clock: Arc::clone(&lock.clock),
            margin_ms,
            every_ms,
            state: Arc::clone(&state),
        };
        let renewer = Renewer {
            lock,
            handle: record.handle(),
            ttl,
            every_ms,
            next_ms: record.renewed_ms.saturating_add(every_ms),
            state: Arc::clone(&state),
        };
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(run)
                .map(drop)
                .map_err(|e| Error::io(steps::START_KEEP_ALIVE_THREAD, "", e))
        };
        spawn("jobsafe-keep-alive", Box::new(move || renewer.run()))?;
        if let Err(e) = spawn("jobsafe-lease-watch", Box::new(move || watch.run())) {
            let mut state = state.lock();
            state.stopped = true;
            state.events = None;
            return Err(e);
        }
        Ok(KeepAlive { state, events })
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

    /// Stops renewing (dropping the keep-alive does too), without waiting for a
    /// renewal in progress. No renewal starts after this returns and no event
    /// is sent: [`next_event`](KeepAlive::next_event) returns the events sent
    /// before, then `None`. The threads end at their next wake-up.
    ///
    /// Releasing the lock right after is safe: a renewal still in flight
    /// writes only over the holder's own record (a compare-and-set on its
    /// version), so it cannot bring a released lock back.
    pub fn stop(&self) {
        let mut state = self.state.lock();
        state.stopped = true;
        state.events = None;
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
    next_ms: u64,
    state: Arc<Mutex<State>>,
}

impl<S: Store> Renewer<S> {
    fn run(mut self) {
        loop {
            self.lock.clock.sleep_until(self.next_ms);
            if self.state.lock().over() {
                return;
            }
            // Unlocked while the store works: `stop` and the watch never wait
            // for a renewal that hangs.
            let renewal = self.lock.renew(&self.handle, self.ttl);
            let now = self.lock.clock.now_ms();
            let mut state = self.state.lock();
            if state.over() {
                return;
            }
            let event = match renewal {
                Ok(Renewal::Renewed(record)) => {
                    state.expires_ms = record.expires_ms;
                    self.next_ms = record.renewed_ms.saturating_add(self.every_ms);
                    report!(
                        debug,
                        key = %record.key,
                        job_id = %record.job_id,
                        expires_ms = record.expires_ms,
                        "lease renewed"
                    );
                    KeepAliveEvent::Renewed(record)
                }
                Ok(Renewal::Lost(lost)) => {
                    report!(
                        warn,
                        key = %self.handle.key,
                        job_id = %self.handle.job_id,
                        token = self.handle.token.get(),
                        "lease lost: the lock is no longer this holder's"
                    );
                    KeepAliveEvent::Lost(lost)
                }
                Err(e) => {
                    report!(
                        warn,
                        key = %self.handle.key,
                        job_id = %self.handle.job_id,
                        error = %e,
                        "lease renewal failed; the keep-alive tries again"
                    );
                    self.next_ms = now.saturating_add(self.every_ms);
                    KeepAliveEvent::Failed(e)
                }
            };
            state.send(event);
            if state.over() {
                return;
            }
        }
    }
}

/// Reports [`KeepAliveEvent::Expired`] when the lease comes within the safety
/// margin of its end with no confirmed renewal.
struct Watch {
    clock: crate::clock::SharedClock,
    margin_ms: u64,
    /// The watch wakes at least this often, so that once stopped its thread
    /// ends within a period, as the renewer's does, not a lease later.
    every_ms: u64,
    state: Arc<Mutex<State>>,
}

impl Watch {
    fn run(self) {
        loop {
            let due_ms = {
                let state = self.state.lock();
                if state.over() {
                    return;
                }
                state.expires_ms.saturating_sub(self.margin_ms)
            };
            let wake_ms = self.clock.now_ms().saturating_add(self.every_ms);
            self.clock.sleep_until(due_ms.min(wake_ms));
            let mut state = self.state.lock();
            if state.over() {
                return;
            }
            // A renewal confirmed meanwhile moved the end: watch the new one.
            if self.clock.now_ms() >= state.expires_ms.saturating_sub(self.margin_ms) {
                report!(
                    warn,
                    expires_ms = state.expires_ms,
                    "lease expiring with no confirmed renewal: stop the work it guards"
                );
                state.send(KeepAliveEvent::Expired);
                return;
            }
        }
    }
}
