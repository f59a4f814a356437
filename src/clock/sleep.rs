//! [`ClockSleep`]: the future of [`Clock::sleep_until_async`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{Clock, timer};

/// A wait until a clock reaches a deadline, from
/// [`Clock::sleep_until_async`]: completes once the clock's
/// [`now_ms`](Clock::now_ms) has reached it. Dropping it cancels the wait.
#[must_use = "a sleep does nothing unless awaited"]
pub struct ClockSleep<'a> {
    future: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
}

impl<'a> ClockSleep<'a> {
    /// A sleep that completes when `future` does, for clocks that implement
    /// [`Clock::sleep_until_async`] themselves.
    pub fn new(future: impl Future<Output = ()> + Send + 'a) -> Self {
        ClockSleep {
            future: Box::pin(future),
        }
    }

    /// The provided [`Clock::sleep_until_async`]: waits on the crate's real-time
    /// timer for the time `clock` says is left, then reads `clock` again, until
    /// its deadline has come.
    pub fn real_time<C: Clock + ?Sized>(clock: &'a C, deadline_ms: u64) -> Self {
        ClockSleep::new(async move {
            loop {
                let now = clock.now_ms();
                if now >= deadline_ms {
                    return;
                }
                timer::sleep(Duration::from_millis(deadline_ms - now)).await;
            }
        })
    }
}

impl Future for ClockSleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

impl fmt::Debug for ClockSleep<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClockSleep").finish_non_exhaustive()
    }
}
