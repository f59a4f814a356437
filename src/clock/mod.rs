//! Injected time: every TTL, lease, backoff and retention decision reads a [`Clock`].

#[cfg(any(test, feature = "testing"))]
pub(crate) mod file;
mod manual;
mod sleep;
mod timer;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use manual::ManualClock;
pub use sleep::ClockSleep;

/// A source of wall-clock time in milliseconds since the Unix epoch, and a way to
/// wait on it, blocking or awaiting.
///
/// Components never call `SystemTime::now()`, `thread::sleep` or a runtime's
/// timer themselves; they ask their clock, so tests drive time with
/// [`ManualClock`] instead of sleeping.
///
/// An implementation must keep one promise: [`sleep_until`](Clock::sleep_until)
/// and [`sleep_until_async`](Clock::sleep_until_async) return only once
/// [`now_ms`](Clock::now_ms) has reached the deadline. The provided
/// `sleep_until_async` waits on a real-time timer and checks `now_ms` again at
/// each wake-up, which suits any clock that moves at the speed of real time; a
/// clock that moves otherwise (such as [`ManualClock`]) overrides it.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Blocks the calling thread until [`now_ms`](Clock::now_ms) reaches `deadline_ms`.
    /// Returns at once if it already has.
    fn sleep_until(&self, deadline_ms: u64);

    /// Blocks for `duration` of this clock's time.
    fn sleep(&self, duration: Duration) {
        self.sleep_until(self.now_ms().saturating_add(millis(duration)));
    }

    /// Waits until [`now_ms`](Clock::now_ms) reaches `deadline_ms`, without
    /// holding a thread: the async face of [`sleep_until`](Clock::sleep_until).
    /// Completes at once if the deadline has come.
    ///
    /// It needs no particular async runtime: the crate's one timer thread wakes
    /// every sleeping future of every real-time clock in the process.
    ///
    /// ```
    /// use jobsafe::{Clock, SystemClock};
    ///
    /// let clock = SystemClock;
    /// let now = clock.now_ms();
    /// # let block_on = |f| futures_util::FutureExt::now_or_never(f).expect("already due");
    /// // In an async fn: `clock.sleep_until_async(now).await;`
    /// block_on(clock.sleep_until_async(now)); // already due: completes at once
    /// ```
    fn sleep_until_async(&self, deadline_ms: u64) -> ClockSleep<'_> {
        ClockSleep::real_time(self, deadline_ms)
    }

    /// Waits for `duration` of this clock's time without holding a thread: the
    /// async face of [`sleep`](Clock::sleep).
    fn sleep_async(&self, duration: Duration) -> ClockSleep<'_> {
        self.sleep_until_async(self.now_ms().saturating_add(millis(duration)))
    }
}

/// A clock shared by the components of one service.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
///
/// A clock set before 1970 reads as 0. The wall clock may jump; components that
/// compare its readings say in their docs what a jump does to them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn sleep_until(&self, deadline_ms: u64) {
        // Re-read after each sleep: the wall clock may have been stepped.
        loop {
            let now = self.now_ms();
            if now >= deadline_ms {
                return;
            }
            std::thread::sleep(Duration::from_millis(deadline_ms - now));
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
