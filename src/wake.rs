//! A signal that says "look again": raised by whatever may have made work
//! due in this process (a job created or queued again, a stop), awaited by a
//! runner.
//!
//! It carries no data. Each raise bumps a generation, so a waiter that
//! looked at generation `g` and then waits for a change after `g` cannot miss
//! a raise that came in between, and raises that come while nobody waits
//! are kept as one.

use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Signal {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    wakers: Vec<Waker>,
}

impl Signal {
    /// The generation now: wait for a change after it.
    pub(crate) fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    /// Raises the signal: every waiter wakes.
    pub(crate) fn raise(&self) {
        let wakers = {
            let mut state = self.state.lock();
            state.generation += 1;
            std::mem::take(&mut state.wakers)
        };
        // Woken outside the lock: a waker may run code that raises again.
        for waker in wakers {
            waker.wake();
        }
    }

    /// Ready with the new generation once it differs from `seen`; until
    /// then, `cx`'s waker is woken by the next raise.
    pub(crate) fn poll_changed(&self, seen: u64, cx: &mut Context<'_>) -> Poll<u64> {
        let mut state = self.state.lock();
        if state.generation != seen {
            return Poll::Ready(state.generation);
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Completes once the generation differs from `seen`.
    #[cfg(test)]
    pub(crate) fn changed(&self, seen: u64) -> impl std::future::Future<Output = u64> + '_ {
        std::future::poll_fn(move |cx| self.poll_changed(seen, cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raise_between_the_look_and_the_wait_is_not_missed() {
        let signal = Signal::default();
        let seen = signal.generation();
        signal.raise();
        let changed = crate::pool::block_on(signal.changed(seen));
        assert_eq!(changed, seen + 1);
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_waiter_is_woken_by_a_raise_from_another_thread() {
        let signal = std::sync::Arc::new(Signal::default());
        let seen = signal.generation();
        let raiser = {
            let signal = std::sync::Arc::clone(&signal);
            std::thread::spawn(move || signal.raise())
        };
        assert_eq!(crate::pool::block_on(signal.changed(seen)), seen + 1);
        raiser.join().unwrap();
    }
}
