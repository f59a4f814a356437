//! The crate's one timer thread: wakes the futures waiting for real time to pass,
//! so that an async wait holds no thread of its own and needs no particular
//! runtime.
//!
//! Sleepers register a deadline and a waker; the thread sleeps until the earliest
//! deadline (or until an earlier one is registered), then wakes every sleeper whose
//! deadline has passed. A sleeper dropped before its deadline removes itself.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Completes once `duration` of real (monotonic) time has passed.
pub(crate) fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now().checked_add(duration),
        id: None,
    }
}

/// The future of [`sleep`]. A deadline too far to represent never comes.
#[derive(Debug)]
pub(crate) struct Sleep {
    deadline: Option<Instant>,
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let timer = Timer::get();
        if let Some(deadline) = self.deadline
            && Instant::now() >= deadline
        {
            if let Some(id) = self.id.take() {
                timer.remove(id, deadline);
            }
            return Poll::Ready(());
        }
        let Some(deadline) = self.deadline else {
            return Poll::Pending; // never: nothing will wake it
        };
        let id = timer.register(self.id, deadline, cx.waker());
        self.id = Some(id);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let (Some(id), Some(deadline)) = (self.id, self.deadline) {
            Timer::get().remove(id, deadline);
        }
    }
}

#[derive(Debug)]
struct Timer {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Deadlines in order, each with its sleeper's id.
    queue: BTreeSet<(Instant, u64)>,
    wakers: HashMap<u64, Waker>,
    next_id: u64,
    /// Whether the thread runs (it is started by the first sleeper).
    started: bool,
}

impl Timer {
    fn get() -> &'static Timer {
        static TIMER: OnceLock<Timer> = OnceLock::new();
        TIMER.get_or_init(|| Timer {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    /// Registers (or updates) a sleeper's waker; returns its id.
    fn register(&'static self, id: Option<u64>, deadline: Instant, waker: &Waker) -> u64 {
        let mut state = self.state.lock();
        let id = id.unwrap_or_else(|| {
            state.next_id += 1;
            state.next_id
        });
        let earliest = state.queue.first().map(|&(at, _)| at);
        state.queue.insert((deadline, id));
        match state.wakers.get_mut(&id) {
            Some(known) if known.will_wake(waker) => {}
            Some(known) => known.clone_from(waker),
            None => {
                state.wakers.insert(id, waker.clone());
            }
        }
        if !state.started {
            state.started = true;
            // If the thread cannot start, sleepers are woken by the next one
            // that polls after its deadline: no sleeper is lost, only late.
            let spawned = std::thread::Builder::new()
                .name("jobsafe-timer".to_owned())
                .spawn(|| Timer::get().run());
            if spawned.is_err() {
                state.started = false;
            }
        }
        if earliest.is_none_or(|at| deadline < at) {
            self.changed.notify_one();
        }
        id
    }

    fn remove(&self, id: u64, deadline: Instant) {
        let mut state = self.state.lock();
        state.queue.remove(&(deadline, id));
        state.wakers.remove(&id);
    }

    fn run(&self) {
        let mut due = Vec::new();
        loop {
            {
                let mut state = self.state.lock();
                let now = Instant::now();
                while let Some(&(at, id)) = state.queue.first() {
                    if at > now {
                        break;
                    }
                    state.queue.pop_first();
                    if let Some(waker) = state.wakers.remove(&id) {
                        due.push(waker);
                    }
                }
                if due.is_empty() {
                    match state.queue.first() {
                        Some(&(at, _)) => {
                            self.changed.wait_until(&mut state, at);
                        }
                        None => self.changed.wait(&mut state),
                    }
                    continue;
                }
            }
            // Outside the lock: a waker may run code that registers again.
            for waker in due.drain(..) {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize, std::thread::Thread);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.unpark();
        }
    }

    #[test]
    fn a_sleep_is_woken_after_its_deadline_and_not_before() {
        let count = Arc::new(Count(AtomicUsize::new(0), std::thread::current()));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let start = Instant::now();
        let mut sleep = Box::pin(sleep(Duration::from_millis(20)));
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        while count.0.load(Ordering::SeqCst) == 0 {
            std::thread::park();
        }
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_dropped_sleep_leaves_nothing_registered() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut far = Box::pin(sleep(Duration::from_secs(3600)));
        assert!(far.as_mut().poll(&mut cx).is_pending());
        let id = far.id.expect("registered");
        drop(far);
        assert!(!Timer::get().state.lock().wakers.contains_key(&id));
    }
}
