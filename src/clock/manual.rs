//! [`ManualClock`]: time that moves only when a test says so.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{Clock, ClockSleep, millis};

/// A clock that moves only when told to, for tests.
///
/// [`advance`](ManualClock::advance) and [`set`](ManualClock::set) wake every
/// thread sleeping on the clock and every future awaiting
/// [`sleep_until_async`](Clock::sleep_until_async) whose deadline has come, so a
/// test that advances time never has to sleep itself. Clones share one time.
///
/// ```
/// use std::time::Duration;
/// use jobsafe::{Clock, ManualClock};
///
/// let clock = ManualClock::new(1_000);
/// let sleeper = {
///     let clock = clock.clone();
///     // An absolute deadline: the sleep ends at 61 s whenever the thread starts.
///     std::thread::spawn(move || clock.sleep_until(61_000))
/// };
/// clock.advance(Duration::from_secs(60)); // wakes the sleeper
/// sleeper.join().unwrap();
/// assert_eq!(clock.now_ms(), 61_000);
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    moved: Condvar,
}

#[derive(Debug)]
struct State {
    now: u64,
    /// Futures waiting for a deadline, by id: the deadline and the waker.
    sleepers: HashMap<u64, (u64, Waker)>,
    next_id: u64,
    /// Whether a sleep moves time to its deadline instead of waiting.
    auto_advance: bool,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    now: start_ms,
                    sleepers: HashMap::new(),
                    next_id: 0,
                    auto_advance: false,
                }),
                moved: Condvar::new(),
            }),
        }
    }

    /// Moves time forward and wakes the sleepers whose deadline has come.
    pub fn advance(&self, by: Duration) {
        let mut state = self.inner.state.lock();
        state.now = state.now.saturating_add(millis(by));
        self.inner.wake_due(state);
    }

    /// Sets the time, backwards too (to test a clock that jumps), and wakes the
    /// sleepers whose deadline has come.
    pub fn set(&self, now_ms: u64) {
        let mut state = self.inner.state.lock();
        state.now = now_ms;
        self.inner.wake_due(state);
    }

    /// From now on, a sleep on this clock (blocking or async) moves time
    /// forward to its deadline at once and returns, instead of waiting for a
    /// test to advance it: as tokio's paused clock does when every task waits.
    /// For a test where the code under test sleeps (a backoff, a retry pause)
    /// and nothing else moves time. Every clone shares the setting.
    ///
    /// ```
    /// use jobsafe::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new(0);
    /// clock.set_auto_advance(true);
    /// clock.sleep_until(5_000); // returns at once
    /// assert_eq!(clock.now_ms(), 5_000);
    /// ```
    pub fn set_auto_advance(&self, on: bool) {
        self.inner.state.lock().auto_advance = on;
    }
}

impl Inner {
    fn wake_due(&self, mut state: parking_lot::MutexGuard<'_, State>) {
        let now = state.now;
        let mut due = Vec::new();
        state.sleepers.retain(|_, (deadline, waker)| {
            let waiting = *deadline > now;
            if !waiting {
                due.push(waker.clone());
            }
            waiting
        });
        self.moved.notify_all();
        drop(state);
        for waker in due {
            waker.wake();
        }
    }
}

impl Default for ManualClock {
    /// A clock reading 2026-01-01T00:00:00Z, so that records show plausible dates.
    fn default() -> Self {
        ManualClock::new(1_767_225_600_000)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.inner.state.lock().now
    }

    fn sleep_until(&self, deadline_ms: u64) {
        let mut state = self.inner.state.lock();
        if state.auto_advance && state.now < deadline_ms {
            state.now = deadline_ms;
            self.inner.wake_due(state);
            return;
        }
        while state.now < deadline_ms {
            self.inner.moved.wait(&mut state);
        }
    }

    fn sleep_until_async(&self, deadline_ms: u64) -> ClockSleep<'_> {
        let registration = Registration {
            inner: &self.inner,
            id: None,
        };
        ClockSleep::new(async move {
            let mut registration = registration;
            poll_fn(|cx| {
                let mut state = registration.inner.state.lock();
                if state.auto_advance && state.now < deadline_ms {
                    state.now = deadline_ms;
                    if let Some(id) = registration.id.take() {
                        state.sleepers.remove(&id);
                    }
                    registration.inner.wake_due(state);
                    return Poll::Ready(());
                }
                if state.now >= deadline_ms {
                    if let Some(id) = registration.id.take() {
                        state.sleepers.remove(&id);
                    }
                    return Poll::Ready(());
                }
                let id = *registration.id.get_or_insert_with(|| {
                    state.next_id += 1;
                    state.next_id
                });
                state.sleepers.insert(id, (deadline_ms, cx.waker().clone()));
                Poll::Pending
            })
            .await;
        })
    }
}

/// A future's place among the sleepers, removed when the future is dropped.
struct Registration<'a> {
    inner: &'a Inner,
    id: Option<u64>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.inner.state.lock().sleepers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_wakes_only_due_sleepers() {
        let clock = ManualClock::new(0);
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = {
            let clock = clock.clone();
            std::thread::spawn(move || {
                clock.sleep_until(100);
                tx.send(clock.now_ms()).unwrap();
            })
        };
        clock.advance(Duration::from_millis(99));
        // Not due yet: the sleeper must still be waiting.
        assert!(rx.try_recv().is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(rx.recv().unwrap(), 100);
        sleeper.join().unwrap();
    }

    #[test]
    fn manual_clock_can_jump_back() {
        let clock = ManualClock::new(500);
        clock.set(100);
        assert_eq!(clock.now_ms(), 100);
    }

    struct Woken(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn woken(count: &Woken) -> usize {
        count.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn advance_wakes_an_async_sleeper_once_its_deadline_has_come() {
        use std::future::Future;
        let clock = ManualClock::new(0);
        let count = Arc::new(Woken(Default::default()));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut sleep = clock.sleep_until_async(100);
        assert!(std::pin::Pin::new(&mut sleep).poll(&mut cx).is_pending());
        clock.advance(Duration::from_millis(99));
        assert_eq!(woken(&count), 0, "woken before its deadline");
        assert!(std::pin::Pin::new(&mut sleep).poll(&mut cx).is_pending());
        clock.advance(Duration::from_millis(1));
        assert_eq!(woken(&count), 1);
        assert!(std::pin::Pin::new(&mut sleep).poll(&mut cx).is_ready());
        assert!(clock.inner.state.lock().sleepers.is_empty());
    }

    #[test]
    fn a_dropped_async_sleep_is_forgotten() {
        use std::future::Future;
        let clock = ManualClock::new(0);
        let mut sleep = clock.sleep_until_async(100);
        let mut cx = std::task::Context::from_waker(Waker::noop());
        assert!(std::pin::Pin::new(&mut sleep).poll(&mut cx).is_pending());
        assert_eq!(clock.inner.state.lock().sleepers.len(), 1);
        drop(sleep);
        assert!(clock.inner.state.lock().sleepers.is_empty());
    }

    #[test]
    fn setting_the_clock_back_wakes_no_async_sleeper() {
        use std::future::Future;
        let clock = ManualClock::new(50);
        let count = Arc::new(Woken(Default::default()));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut sleep = clock.sleep_until_async(100);
        assert!(std::pin::Pin::new(&mut sleep).poll(&mut cx).is_pending());
        clock.set(10);
        assert_eq!(woken(&count), 0);
        clock.set(100);
        assert_eq!(woken(&count), 1);
    }
}
