//! Renewing a lease in the background, for both faces of a lock guard.
//!
//! The renewals and the watch are two async loops, written once: they wait on
//! the lock's clock without holding a thread, run on the crate's task thread,
//! and make each renewal on a thread of the crate's [pool](crate::pool). The
//! holder reads their events blocking ([`KeepAlive::next_event`]) or awaiting
//! (`AsyncKeepAlive::next_event`, feature `async`).

use std::collections::VecDeque;
use std::sync::Arc;
#[cfg(feature = "async")]
use std::task::Context;
use std::task::{Poll, Waker};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::guard::{LockHandle, LostLease, Renewal};
use super::{JobLock, LockRecord, positive_ms};
use crate::error::{Error, Result};
use crate::pool;
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

/// What a bounded wait for a keep-alive's next event found: from
/// [`KeepAlive::next_event_timeout`].
#[derive(Debug)]
#[non_exhaustive]
// Returned by value once per wait and matched at once: a box would cost an
// allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
pub enum KeepAliveWait {
    /// The next event.
    Event(KeepAliveEvent),
    /// The keep-alive has stopped and every event was taken.
    Stopped,
    /// No event came within the wait; the keep-alive runs on.
    TimedOut,
}

/// Renews a lease every period in the background, and tells the holder when
/// the lease is lost.
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
/// had started is not reported. Its loops end at their next wake-up.
///
/// It holds no thread of its own: its loops wait on the lock's clock and run
/// on the crate's task thread, and each renewal runs on a thread of the
/// crate's [pool](crate::pool) (see there). So a renewal that hangs on the
/// store holds a thread of the pool, never the watch.
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
    shared: Arc<Shared>,
}

/// What the renewer, the watch and the holder share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when an event is queued or the keep-alive ends.
    changed: Condvar,
}

/// Events are queued with the state locked, so that nothing follows `Lost`
/// or `Expired`.
#[derive(Debug)]
struct State {
    /// Set by [`KeepAlive::stop`]: no renewal starts, no event is queued.
    stopped: bool,
    /// `Lost` or `Expired` was queued.
    done: bool,
    /// When the last confirmed renewal (or the acquire) ends the lease.
    expires_ms: u64,
    /// Events not yet taken by the holder.
    events: VecDeque<KeepAliveEvent>,
    /// The waker of a holder awaiting the next event.
    waker: Option<Waker>,
    /// The waker of the renewer while it sleeps until its next renewal:
    /// woken when the keep-alive ends, so that the renewer returns at once
    /// and lets go of the lock (and the store) it holds, rather than at its
    /// next period, which a clock that stands still never brings.
    renewer: Option<Waker>,
}

impl State {
    /// No renewal starts and no event is queued any more.
    fn over(&self) -> bool {
        self.stopped || self.done
    }
}

impl Shared {
    fn new(expires_ms: u64) -> Self {
        Shared {
            state: Mutex::new(State {
                stopped: false,
                done: false,
                expires_ms,
                events: VecDeque::new(),
                waker: None,
                renewer: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// Queues `event` (the state locked by the caller); after `Lost` or
    /// `Expired`, ends the keep-alive.
    fn send(&self, mut state: parking_lot::MutexGuard<'_, State>, event: KeepAliveEvent) {
        if matches!(event, KeepAliveEvent::Lost(_) | KeepAliveEvent::Expired) {
            state.done = true;
        }
        state.events.push_back(event);
        self.notify(state);
    }

    /// Wakes the holder, blocking or awaiting, after a change of the state.
    fn notify(&self, mut state: parking_lot::MutexGuard<'_, State>) {
        let waker = state.waker.take();
        let renewer = if state.over() {
            state.renewer.take()
        } else {
            None
        };
        drop(state);
        self.changed.notify_all();
        for waker in [waker, renewer].into_iter().flatten() {
            waker.wake();
        }
    }

    fn stop(&self) {
        let mut state = self.state.lock();
        state.stopped = true;
        self.notify(state);
    }

    /// The next event if there is one, `None` if none will come, or a wait.
    #[cfg(feature = "async")]
    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<KeepAliveEvent>> {
        let mut state = self.state.lock();
        if let Some(event) = state.events.pop_front() {
            return Poll::Ready(Some(event));
        }
        if state.over() {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
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
        let shared = Arc::new(Shared::new(record.expires_ms));
        let watch = Watch {
            clock: Arc::clone(&lock.clock),
            margin_ms,
            every_ms,
            shared: Arc::clone(&shared),
        };
        let renewer = Renewer {
            lock,
            handle: record.handle(),
            ttl,
            every_ms,
            next_ms: record.renewed_ms.saturating_add(every_ms),
            shared: Arc::clone(&shared),
        };
        pool::spawn(renewer.run());
        pool::spawn(watch.run());
        Ok(KeepAlive { shared })
    }

    /// Waits for the next event; `None` once the keep-alive has stopped and every
    /// event was taken.
    pub fn next_event(&self) -> Option<KeepAliveEvent> {
        match self.wait(None) {
            KeepAliveWait::Event(event) => Some(event),
            // A wait without a deadline does not time out.
            KeepAliveWait::Stopped | KeepAliveWait::TimedOut => None,
        }
    }

    /// Waits at most `timeout` (in real time) for the next event, for a
    /// worker that does its work between looks.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use jobsafe::{JobLock, Key, ManualClock, MemStore};
    /// use jobsafe::lock::{Acquire, KeepAliveWait, LockRequest};
    ///
    /// let locks = JobLock::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    /// let key = Key::new(["reindex"])?;
    /// let Acquire::Acquired(guard) = locks.acquire(&key, Duration::from_secs(30), &LockRequest::new())? else {
    ///     unreachable!()
    /// };
    /// let keep_alive = guard.keep_alive(Duration::from_secs(30), Duration::from_secs(10))?;
    /// // The clock has not moved: no renewal yet.
    /// assert!(matches!(keep_alive.next_event_timeout(Duration::ZERO), KeepAliveWait::TimedOut));
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    pub fn next_event_timeout(&self, timeout: Duration) -> KeepAliveWait {
        // A timeout too long to add is no deadline.
        self.wait(std::time::Instant::now().checked_add(timeout))
    }

    fn wait(&self, deadline: Option<std::time::Instant>) -> KeepAliveWait {
        let mut state = self.shared.state.lock();
        loop {
            if let Some(event) = state.events.pop_front() {
                return KeepAliveWait::Event(event);
            }
            if state.over() {
                return KeepAliveWait::Stopped;
            }
            match deadline {
                None => self.shared.changed.wait(&mut state),
                Some(deadline) => {
                    if self
                        .shared
                        .changed
                        .wait_until(&mut state, deadline)
                        .timed_out()
                        && state.events.is_empty()
                        && !state.over()
                    {
                        return KeepAliveWait::TimedOut;
                    }
                }
            }
        }
    }

    /// The next event without blocking the caller's thread; `None` once the
    /// keep-alive has stopped and every event was taken.
    #[cfg(feature = "async")]
    pub(super) fn poll_next_event(&self, cx: &mut Context<'_>) -> Poll<Option<KeepAliveEvent>> {
        self.shared.poll_next(cx)
    }

    /// The events that happened so far, without waiting.
    pub fn events(&self) -> Vec<KeepAliveEvent> {
        self.shared.state.lock().events.drain(..).collect()
    }

    /// Stops renewing (dropping the keep-alive does too), without waiting for a
    /// renewal in progress. No renewal starts after this returns and no event
    /// is queued: [`next_event`](KeepAlive::next_event) returns the events
    /// queued before, then `None`. The renewing loop ends at once, with its
    /// hold on the lock's store, unless a renewal is in flight (it ends
    /// with it); the watch ends at its next wake-up.
    ///
    /// Releasing the lock right after is safe: a renewal still in flight
    /// writes only over the holder's own record (a compare-and-set on its
    /// version), so it cannot bring a released lock back.
    pub fn stop(&self) {
        self.shared.stop();
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
    shared: Arc<Shared>,
}

impl<S: Store + 'static> Renewer<S> {
    async fn run(mut self) {
        loop {
            if !self.sleep_unless_over().await {
                return;
            }
            // On the pool, with nothing locked: `stop` and the watch never
            // wait for a renewal that hangs.
            let (lock, handle, ttl) = (self.lock.clone(), self.handle.clone(), self.ttl);
            let shared = Arc::clone(&self.shared);
            // Urgent: a renewal that waited behind long work (the stages of
            // pipeline runs, say) would lose the lease it keeps. Looked at
            // again where it starts, so that none starts after `stop`.
            let renewal = pool::run_urgent(move || {
                // Unlocked before the store is called.
                let stopped = shared.state.lock().over();
                (!stopped).then(|| lock.renew(&handle, ttl))
            })
            .await;
            let Some(renewal) = renewal else {
                return;
            };
            let now = self.lock.clock.now_ms();
            let mut state = self.shared.state.lock();
            if state.over() {
                return;
            }
            let event = match renewal {
                Ok(Renewal::Renewed(record)) => {
                    state.expires_ms = record.expires_ms;
                    self.next_ms = record.renewed_ms.saturating_add(self.every_ms);
                    report!(
                        debug,
                        key = %crate::trace::private(&record.key),
                        job_id = %crate::trace::private(&record.job_id),
                        expires_ms = record.expires_ms,
                        "lease renewed"
                    );
                    KeepAliveEvent::Renewed(record)
                }
                Ok(Renewal::Lost(lost)) => {
                    report!(
                        warn,
                        key = %crate::trace::private(&self.handle.key),
                        job_id = %crate::trace::private(&self.handle.job_id),
                        token = self.handle.token.get(),
                        "lease lost: the lock is no longer this holder's"
                    );
                    KeepAliveEvent::Lost(lost)
                }
                Err(e) => {
                    report!(
                        warn,
                        key = %crate::trace::private(&self.handle.key),
                        job_id = %crate::trace::private(&self.handle.job_id),
                        error = %crate::trace::error(&e),
                        "lease renewal failed; the keep-alive tries again"
                    );
                    self.next_ms = now.saturating_add(self.every_ms);
                    KeepAliveEvent::Failed(e)
                }
            };
            let last = !matches!(
                event,
                KeepAliveEvent::Renewed(_) | KeepAliveEvent::Failed(_)
            );
            self.shared.send(state, event);
            if last {
                return;
            }
        }
    }
}

impl<S> Renewer<S> {
    /// Sleeps until the next renewal is due; `false` as soon as the
    /// keep-alive is over instead.
    async fn sleep_unless_over(&self) -> bool {
        let mut due = std::pin::pin!(self.lock.clock.sleep_until_async(self.next_ms));
        std::future::poll_fn(|cx| {
            {
                let mut state = self.shared.state.lock();
                if state.over() {
                    return Poll::Ready(false);
                }
                state.renewer = Some(cx.waker().clone());
            }
            due.as_mut().poll(cx).map(|()| true)
        })
        .await
    }
}

/// Reports [`KeepAliveEvent::Expired`] when the lease comes within the safety
/// margin of its end with no confirmed renewal.
struct Watch {
    clock: crate::clock::SharedClock,
    margin_ms: u64,
    /// The watch wakes at least this often, so that once stopped its loop
    /// ends within a period, as the renewer's does, not a lease later.
    every_ms: u64,
    shared: Arc<Shared>,
}

impl Watch {
    async fn run(self) {
        loop {
            let due_ms = {
                let state = self.shared.state.lock();
                if state.over() {
                    return;
                }
                state.expires_ms.saturating_sub(self.margin_ms)
            };
            let wake_ms = self.clock.now_ms().saturating_add(self.every_ms);
            self.clock.sleep_until_async(due_ms.min(wake_ms)).await;
            let state = self.shared.state.lock();
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
                self.shared.send(state, KeepAliveEvent::Expired);
                return;
            }
        }
    }
}
