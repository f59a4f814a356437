//! The crate's own threads: for the blocking work of its async face, and for
//! its background loops.
//!
//! Every `async fn` of the async face (feature `async`: `AsyncJobState`,
//! `AsyncJobLedger`, `AsyncJobLock`, `AsyncAtomicWriter`, the stores'
//! `*_async` methods) does its blocking file and network I/O on a thread of
//! this pool, and waits for the result without holding a thread of the
//! caller's runtime. It works on any async runtime: nothing here needs one.
//! Two stores' own calls go further: `PgStore`'s are tasks of the caller's
//! runtime on connections it drives, and a `LogStore`'s async writes join
//! its group commit as futures, one thread of this pool flushing for a whole
//! group of them.
//!
//! **Why a pool of its own**, not the runtime's blocking pool
//! (`tokio::task::spawn_blocking`): that pool is shared with everything else
//! the service does, and it grows to hundreds of threads under load. Here the
//! number of threads is bounded by [`set_max_threads`], jobsafe's work queues
//! behind jobsafe's work only, and a burst of store calls can neither starve
//! the service's other blocking work nor be starved by it.
//!
//! **What costs a thread.** Only work: a store call, an fsync, a renewal.
//! Waiting never does: a lock's backoff, a keep-alive's period, a
//! subscription's wait for the next event and a follower's poll interval are
//! timers and wakers, and a call queued behind a busy pool waits as a future.
//! Threads start when work queues and no thread is free, up to the bound, and
//! end after [`IDLE_TIMEOUT`] without work. The background loops of every
//! [`KeepAlive`](crate::lock::KeepAlive) in the process are polled by one
//! more thread, which never does their blocking work itself: a renewal that
//! hangs on the store holds a thread of the pool, never the watch that
//! reports the lease expiring. A renewal never queues behind other work
//! either: with no idle thread, it gets a thread of its own beyond the bound,
//! so that pipeline stages holding every thread cannot starve the leases
//! they run under.
//!
//! If the system cannot start a single thread, work runs on the calling
//! thread rather than never.
//!
//! **Cancellation.** Dropping the future of an async call before its work
//! began withdraws the work: nothing is read or written. Once a piece of
//! work has begun it runs to its end (a thread cannot be stopped halfway
//! through a write), and its outcome is the store's as after any interrupted
//! call: the write landed or not, and the parts' ambiguity handling applies.
//! A call made of several pieces (an `AsyncJobLedger` call: a read, then a
//! write) stops between them.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// The fewest threads the pool may be bounded to: with one, a piece of work
/// that waits for another (a test's store that waits for a signal, say)
/// could never see it run.
pub const MIN_THREADS: usize = 2;

/// The bound on the pool's threads unless [`set_max_threads`] sets another:
/// enough for as many concurrent store calls as a `PgStore`'s default pool has
/// connections, several times over.
pub const DEFAULT_MAX_THREADS: usize = 64;

/// How long a thread of the pool waits for work before it ends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds the pool's threads to `max` from now on: work beyond it queues
/// until a thread is free. Threads already running above a lowered bound end
/// as they become idle.
///
/// ```
/// jobsafe::pool::set_max_threads(8)?;
/// assert_eq!(jobsafe::pool::max_threads(), 8);
/// # jobsafe::pool::set_max_threads(jobsafe::pool::DEFAULT_MAX_THREADS)?;
/// # Ok::<(), jobsafe::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] for a bound below [`MIN_THREADS`].
pub fn set_max_threads(max: usize) -> Result<()> {
    if max < MIN_THREADS {
        return Err(Error::InvalidArgument(format!(
            "jobsafe's pool needs at least {MIN_THREADS} threads, not {max}"
        )));
    }
    let pool = Pool::get();
    let mut state = pool.state.lock();
    state.max = max;
    // Work already queued behind the old bound starts now.
    while state.queue.len() > state.free() && state.threads < state.max {
        let spawned = thread::Builder::new()
            .name("jobsafe-pool".to_owned())
            .spawn(|| Pool::get().work());
        if spawned.is_err() {
            break;
        }
        state.threads += 1;
    }
    Ok(())
}

/// The bound on the pool's threads.
pub fn max_threads() -> usize {
    Pool::get().state.lock().max
}

/// Runs `work` on a thread of the pool; the future completes with its result.
/// A panic in `work` is resumed where the future is awaited, as if the work
/// had run there.
// Only the async face runs work that may queue; without it, only renewals run.
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) fn run<T, F>(work: F) -> Blocking<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_as(work, Urgency::Queued)
}

/// As [`run`], for work that must not wait behind the pool's other work: a
/// keep-alive's renewal, which loses its lease if it waits out a long stage.
/// With no idle thread to take it at once, it gets a thread of its own,
/// beyond the bound.
pub(crate) fn run_urgent<T, F>(work: F) -> Blocking<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_as(work, Urgency::Urgent)
}

/// Whether work may wait for a thread of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "async"), allow(dead_code))]
enum Urgency {
    Queued,
    Urgent,
}

fn run_as<T, F>(work: F, urgency: Urgency) -> Blocking<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot::Waiting(None)));
    let filled = Arc::clone(&slot);
    let work: Work = Box::new(move || {
        if matches!(*filled.lock(), Slot::Abandoned) {
            return None;
        }
        let outcome = catch_unwind(AssertUnwindSafe(work));
        let mut slot = filled.lock();
        if matches!(*slot, Slot::Abandoned) {
            // The future was dropped while the work ran. Its result is
            // dropped here, on the pool: stored, it could be dropped on the
            // caller's thread, whose handle of the slot may outlive this
            // one, and its drop may do I/O (a lock guard releases its lock).
            drop(slot);
            let _ = catch_unwind(AssertUnwindSafe(move || drop(outcome)));
            return None;
        }
        let previous = std::mem::replace(&mut *slot, Slot::Done(outcome));
        // Woken by the thread once it counts as free again: a caller that
        // submits its next call at once finds it free, and no thread starts
        // for nothing.
        match previous {
            Slot::Waiting(waker) => waker,
            _ => None,
        }
    });
    match urgency {
        Urgency::Queued => Pool::get().submit(work),
        Urgency::Urgent => Pool::get().submit_urgent(work),
    }
    Blocking { slot }
}

/// Runs `work` on a thread of the pool, with nobody waiting for it: for work
/// that must happen even though its caller went away (releasing a lock whose
/// async guard was dropped).
pub(crate) fn detach(work: impl FnOnce() + Send + 'static) {
    Pool::get().submit(Box::new(move || {
        // A panic ends only this work, as it would end a thread of its own.
        let _ = catch_unwind(AssertUnwindSafe(work));
        None
    }));
}

/// [`detach`] for work that must not wait behind the pool's queue: it goes
/// ahead of it, or gets a thread of its own beyond the bound (as
/// [`run_urgent`]). For a group commit's leader, which threads of the pool
/// may be waiting for.
#[cfg(feature = "async")]
pub(crate) fn detach_urgent(work: impl FnOnce() + Send + 'static) {
    Pool::get().submit_urgent(Box::new(move || {
        let _ = catch_unwind(AssertUnwindSafe(work));
        None
    }));
}

/// Polls `future` to its end on the crate's task thread, holding no thread
/// while it waits: each wake-up queues one more poll. For the crate's own
/// background loops (a keep-alive's renewals and its watch). Their polls
/// must be short and never block, since one thread polls them all: blocking
/// work inside them goes through [`run`], so that a hung store call holds a
/// thread of the pool, never the loop that watches for it.
pub(crate) fn spawn(future: impl Future<Output = ()> + Send + 'static) {
    let task = Arc::new(Task {
        state: Mutex::new(TaskState {
            future: Some(Box::pin(future)),
            queued: false,
            polling: false,
            woken_while_polling: false,
        }),
    });
    task.wake();
}

/// A future polled by [`spawn`].
struct Task {
    state: Mutex<TaskState>,
}

struct TaskState {
    /// `None` once it completed, and while it is polled.
    future: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// A poll is queued.
    queued: bool,
    /// It is being polled now.
    polling: bool,
    /// It was woken while being polled: poll once more.
    woken_while_polling: bool,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        let mut state = self.state.lock();
        if state.polling {
            state.woken_while_polling = true;
            return;
        }
        if state.queued || state.future.is_none() {
            return;
        }
        state.queued = true;
        drop(state);
        Tasks::get().queue(self);
    }
}

impl Task {
    fn poll_once(self: Arc<Self>) {
        let mut future = {
            let mut state = self.state.lock();
            state.queued = false;
            let Some(future) = state.future.take() else {
                return;
            };
            state.polling = true;
            future
        };
        let waker = Waker::from(Arc::clone(&self));
        let mut cx = Context::from_waker(&waker);
        // A panic ends the task: there is nobody to resume it for, and the
        // crate's loops report their failures as events, not panics.
        let pending = matches!(
            catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))),
            Ok(Poll::Pending)
        );
        let mut state = self.state.lock();
        state.polling = false;
        if !pending {
            return;
        }
        state.future = Some(future);
        if std::mem::take(&mut state.woken_while_polling) {
            state.queued = true;
            drop(state);
            Tasks::get().queue(self);
        }
    }
}

/// The task thread: polls the tasks that were woken, one at a time.
struct Tasks {
    ready: Mutex<TasksState>,
    woken: Condvar,
}

struct TasksState {
    queue: VecDeque<Arc<Task>>,
    /// Whether the thread runs (the first task starts it).
    started: bool,
}

impl Tasks {
    fn get() -> &'static Tasks {
        static TASKS: OnceLock<Tasks> = OnceLock::new();
        TASKS.get_or_init(|| Tasks {
            ready: Mutex::new(TasksState {
                queue: VecDeque::new(),
                started: false,
            }),
            woken: Condvar::new(),
        })
    }

    fn queue(&'static self, task: Arc<Task>) {
        let mut ready = self.ready.lock();
        ready.queue.push_back(task);
        if !ready.started {
            let spawned = thread::Builder::new()
                .name("jobsafe-tasks".to_owned())
                .spawn(|| Tasks::get().run());
            match spawned {
                Ok(_) => ready.started = true,
                // No thread: poll here, now, rather than never. The next
                // task tries to start the thread again.
                Err(_) => {
                    let tasks: Vec<_> = ready.queue.drain(..).collect();
                    drop(ready);
                    for task in tasks {
                        task.poll_once();
                    }
                    return;
                }
            }
        }
        self.woken.notify_one();
    }

    fn run(&self) {
        loop {
            let task = {
                let mut ready = self.ready.lock();
                loop {
                    if let Some(task) = ready.queue.pop_front() {
                        break task;
                    }
                    self.woken.wait(&mut ready);
                }
            };
            // A panic in dropping a finished task must not end the one
            // thread that polls every keep-alive of the process.
            let _ = catch_unwind(AssertUnwindSafe(|| task.poll_once()));
        }
    }
}

/// Polls `future` to its end on this thread, parking it while the future
/// waits: for an async stage, which runs on a thread of the pool.
///
/// On a thread of the pool, the thread leaves the pool's bound while it
/// waits: a stage that waits (on an HTTP call, say) is no work, and must not
/// hold a place that the calls it awaits (the store calls of the async face)
/// need. The pool may start another thread in its place; the thread counts
/// again once the stage ends, and the pool shrinks back as threads idle.
#[cfg(feature = "async")]
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let _outside = OutsideBound::enter();
    park_until_ready(future)
}

/// Polls `future` on this thread, parked between polls until woken.
pub(crate) fn park_until_ready<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        // A wake-up between the poll and the park leaves a token that ends
        // this park at once; a spurious return only polls once more.
        thread::park();
    }
}

thread_local! {
    /// Whether this thread is one of the pool's.
    static IS_POOL_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A pool thread outside the bound while it lives (see [`block_on`]); on
/// other threads, nothing.
#[cfg(feature = "async")]
struct OutsideBound {
    left: bool,
}

#[cfg(feature = "async")]
impl OutsideBound {
    fn enter() -> Self {
        if !IS_POOL_THREAD.with(std::cell::Cell::get) {
            return OutsideBound { left: false };
        }
        Pool::get().leave_bound();
        OutsideBound { left: true }
    }
}

#[cfg(feature = "async")]
impl Drop for OutsideBound {
    fn drop(&mut self) {
        if self.left {
            let mut state = Pool::get().state.lock();
            state.threads += 1;
            state.busy += 1;
        }
    }
}

/// The future of [`run`].
#[must_use = "work on the pool is withdrawn if its future is dropped before it begins"]
pub(crate) struct Blocking<T: Send + 'static> {
    slot: Arc<Mutex<Slot<T>>>,
}

enum Slot<T> {
    /// Not done yet; the waker of the last poll.
    Waiting(Option<Waker>),
    Done(thread::Result<T>),
    /// The future was dropped: work not begun is not run.
    Abandoned,
    Taken,
}

impl<T: Send + 'static> Future for Blocking<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.slot.lock();
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Done(Ok(value)) => Poll::Ready(value),
            Slot::Done(Err(panic)) => {
                drop(slot);
                resume_unwind(panic)
            }
            Slot::Waiting(waker) => {
                let waker = match waker {
                    Some(mut known) => {
                        known.clone_from(cx.waker());
                        known
                    }
                    None => cx.waker().clone(),
                };
                *slot = Slot::Waiting(Some(waker));
                Poll::Pending
            }
            // Polled after completion: as a fused future would, it stays pending.
            Slot::Abandoned | Slot::Taken => Poll::Pending,
        }
    }
}

impl<T: Send + 'static> Drop for Blocking<T> {
    fn drop(&mut self) {
        let mut slot = self.slot.lock();
        match std::mem::replace(&mut *slot, Slot::Abandoned) {
            // Done, but nobody took it: its drop may do I/O (a lock guard
            // releases its lock), which belongs on the pool, not on the
            // thread that dropped the future.
            Slot::Done(Ok(value)) => {
                drop(slot);
                detach(move || drop(value));
            }
            Slot::Done(Err(_)) | Slot::Waiting(_) | Slot::Abandoned | Slot::Taken => {}
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Blocking<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blocking").finish_non_exhaustive()
    }
}

/// Work for a thread of the pool; it returns the waker of whoever awaits
/// its result, for the thread to wake once it counts as free.
type Work = Box<dyn FnOnce() -> Option<Waker> + Send>;

struct Pool {
    state: Mutex<State>,
    work_queued: Condvar,
}

struct State {
    queue: VecDeque<Work>,
    threads: usize,
    /// Threads doing work now; the others wait for work or are about to
    /// take the next.
    busy: usize,
    max: usize,
}

impl State {
    /// Threads that take the next queued work without being started: those
    /// waiting for work, and those about to look for it.
    fn free(&self) -> usize {
        self.threads.saturating_sub(self.busy)
    }
}

impl Pool {
    fn get() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                threads: 0,
                busy: 0,
                max: DEFAULT_MAX_THREADS,
            }),
            work_queued: Condvar::new(),
        })
    }

    fn submit(&'static self, work: Work) {
        let mut state = self.state.lock();
        state.queue.push_back(work);
        // Each free thread takes one piece of work; start one more only for
        // work no free thread will take.
        if state.queue.len() > state.free() && state.threads < state.max {
            match thread::Builder::new()
                .name("jobsafe-pool".to_owned())
                .spawn(|| Pool::get().work())
            {
                Ok(_) => state.threads += 1,
                // No thread could start. If none runs either, nothing would
                // ever take the work: do it here rather than never.
                Err(_) if state.threads == 0 => {
                    let work = state.queue.pop_back();
                    drop(state);
                    if let Some(waker) = work.and_then(|work| work()) {
                        waker.wake();
                    }
                    return;
                }
                Err(_) => {}
            }
        }
        self.work_queued.notify_one();
    }

    /// Counts this thread out of the bound while it waits in an async stage,
    /// and starts a thread in its place if work is queued.
    #[cfg(feature = "async")]
    fn leave_bound(&'static self) {
        let mut state = self.state.lock();
        // Out of the count, and not busy as far as the pool knows.
        state.threads -= 1;
        state.busy -= 1;
        if state.queue.len() > state.free() && state.threads < state.max {
            let spawned = thread::Builder::new()
                .name("jobsafe-pool".to_owned())
                .spawn(|| Pool::get().work());
            if spawned.is_ok() {
                state.threads += 1;
            }
        }
    }

    /// Hands `work` to a free thread ahead of the queue; with none free, to a
    /// new thread of the pool while it is under its bound, or to a thread of
    /// its own beyond the bound.
    fn submit_urgent(&'static self, work: Work) {
        let mut state = self.state.lock();
        if state.free() > state.queue.len() {
            state.queue.push_front(work);
            drop(state);
            self.work_queued.notify_one();
            return;
        }
        if state.threads < state.max {
            let spawned = thread::Builder::new()
                .name("jobsafe-pool".to_owned())
                .spawn(|| Pool::get().work());
            if spawned.is_ok() {
                // The new thread takes the front of the queue, this.
                state.threads += 1;
                state.queue.push_front(work);
                drop(state);
                self.work_queued.notify_one();
                return;
            }
        }
        drop(state);
        // Handed back if the thread cannot start: then it waits its turn.
        let (handed, returned) = std::sync::mpsc::sync_channel::<Work>(1);
        let spawned = thread::Builder::new()
            .name("jobsafe-urgent".to_owned())
            .spawn(move || {
                if let Some(waker) = returned.recv().ok().and_then(|work| work()) {
                    waker.wake();
                }
            });
        match spawned {
            Ok(_) => {
                let _ = handed.send(work);
            }
            Err(_) => {
                let mut state = self.state.lock();
                // No thread could start. If none runs either, nothing would
                // ever take the work: do it here rather than never.
                if state.threads == 0 {
                    drop(state);
                    if let Some(waker) = work() {
                        waker.wake();
                    }
                    return;
                }
                state.queue.push_front(work);
                drop(state);
                self.work_queued.notify_one();
            }
        }
    }

    /// A thread's life: take work until none comes for [`IDLE_TIMEOUT`], or
    /// the pool has more threads than its bound.
    fn work(&self) {
        IS_POOL_THREAD.with(|is| is.set(true));
        let mut state = self.state.lock();
        loop {
            if let Some(work) = state.queue.pop_front() {
                state.busy += 1;
                drop(state);
                // Work catches its own panics; this catches one in dropping
                // what it captured, which must not take the thread's place
                // in the count with it.
                let waker = catch_unwind(AssertUnwindSafe(work)).ok().flatten();
                state = self.state.lock();
                state.busy -= 1;
                if let Some(waker) = waker {
                    // Free first, then the caller hears: see `run_as`.
                    drop(state);
                    waker.wake();
                    state = self.state.lock();
                }
                continue;
            }
            if state.threads > state.max {
                break;
            }
            let timed_out = self
                .work_queued
                .wait_for(&mut state, IDLE_TIMEOUT)
                .timed_out();
            if timed_out && state.queue.is_empty() {
                break;
            }
        }
        state.threads -= 1;
    }
}

/// The number of threads the pool has now, for tests of its bound.
#[cfg(test)]
fn threads() -> usize {
    Pool::get().state.lock().threads
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::park_until_ready as block_on;

    #[test]
    fn work_runs_on_another_thread_and_its_result_comes_back() {
        let _whole_pool = WHOLE_POOL.lock();
        let caller = thread::current().id();
        let ran_on = block_on(run(|| thread::current().id()));
        assert_ne!(ran_on, caller);
        assert!(threads() >= 1);
    }

    #[test]
    fn a_panic_in_the_work_is_resumed_where_it_is_awaited() {
        let _whole_pool = WHOLE_POOL.lock();
        let caught = catch_unwind(|| block_on(run(|| -> u8 { panic!("in the work") })));
        assert!(caught.is_err());
        // The pool survives it.
        assert_eq!(block_on(run(|| 7)), 7);
    }

    /// The result of work whose future was dropped while it ran is dropped on
    /// the pool, even when the future's side of the slot is let go last.
    #[test]
    fn the_result_of_work_abandoned_while_it_ran_is_dropped_on_the_pool() {
        let _whole_pool = WHOLE_POOL.lock();
        /// Tells on which thread it was dropped.
        struct Told(mpsc::Sender<thread::ThreadId>);
        impl Drop for Told {
            fn drop(&mut self) {
                let _ = self.0.send(thread::current().id());
            }
        }
        let (told, dropped_on) = mpsc::channel();
        let (started, work_started) = mpsc::channel();
        let (finish, may_finish) = mpsc::channel::<()>();
        let (finishing, work_finishing) = mpsc::channel();
        let future = run(move || {
            let _ = started.send(());
            let _ = may_finish.recv();
            let _ = finishing.send(());
            Told(told)
        });
        // The caller's side of the slot, held past the future's drop: the
        // window in which a dropped future's `Arc` outlives the work's.
        let callers_side = Arc::clone(&future.slot);
        work_started.recv().expect("the work started");
        drop(future);
        finish.send(()).expect("the work waits");
        work_finishing.recv().expect("the work finishes");
        // Until the work stored its result or dropped it.
        let on = loop {
            if let Ok(on) = dropped_on.try_recv() {
                break Some(on);
            }
            if matches!(*callers_side.lock(), Slot::Done(_)) {
                break None;
            }
            thread::yield_now();
        };
        drop(callers_side);
        let on = on.or_else(|| dropped_on.try_recv().ok());
        assert_ne!(
            on,
            Some(thread::current().id()),
            "dropped on the caller's thread"
        );
        assert!(on.is_some(), "never dropped");
    }

    /// Held by the tests of the pool's threads: two that occupy every thread
    /// of the bound at once would each wait for threads the other holds,
    /// and one that counts threads must not see another's.
    static WHOLE_POOL: Mutex<()> = Mutex::new(());

    #[test]
    fn work_whose_future_is_dropped_before_it_began_never_runs() {
        let _whole_pool = WHOLE_POOL.lock();
        // Occupy every thread the bound allows, so that the next work queues.
        let bound = max_threads();
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let (started, all_started) = mpsc::channel();
        let blockers: Vec<_> = (0..bound)
            .map(|_| {
                let held = Arc::clone(&held);
                let started = started.clone();
                run(move || {
                    let _ = started.send(());
                    let _ = held.lock().recv();
                })
            })
            .collect();
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&ran);
        let queued = run(move || counted.fetch_add(1, Ordering::SeqCst));
        // Every blocker holds a thread: the last one is queued behind them.
        let mut waiting = Vec::new();
        for blocker in blockers {
            waiting.push(thread::spawn(move || block_on(blocker)));
        }
        for _ in 0..bound {
            all_started.recv().expect("a blocker started");
        }
        drop(queued);
        for _ in 0..bound {
            release.send(()).expect("a blocker waits");
        }
        for waiter in waiting {
            waiter.join().expect("blocker done");
        }
        // Work queued after the dropped one runs, so the dropped one was
        // passed over, not merely late.
        block_on(run(|| ()));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert!(threads() <= bound);
    }

    #[test]
    fn urgent_work_runs_while_every_thread_of_the_bound_is_busy() {
        let _whole_pool = WHOLE_POOL.lock();
        let bound = max_threads();
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let (started, all_started) = mpsc::channel();
        let blockers: Vec<_> = (0..bound)
            .map(|_| {
                let (held, started) = (Arc::clone(&held), started.clone());
                run(move || {
                    let _ = started.send(());
                    let _ = held.lock().recv();
                })
            })
            .collect();
        let waiting: Vec<_> = blockers
            .into_iter()
            .map(|blocker| thread::spawn(move || block_on(blocker)))
            .collect();
        for _ in 0..bound {
            all_started.recv().expect("a blocker started");
        }
        // Every thread the bound allows is held: queued work would wait.
        assert_eq!(block_on(run_urgent(|| 7)), 7);
        for _ in 0..bound {
            release.send(()).expect("a blocker waits");
        }
        for waiter in waiting {
            waiter.join().expect("blocker done");
        }
    }

    #[test]
    fn calls_made_one_after_another_start_no_more_threads() {
        let _whole_pool = WHOLE_POOL.lock();
        block_on(run(|| ()));
        let before = threads();
        for _ in 0..200 {
            block_on(run(|| ()));
        }
        // The thread that answered a call is free before its caller hears:
        // the next call finds it so.
        assert_eq!(threads(), before);
    }

    #[test]
    fn a_bound_below_the_minimum_is_refused() {
        let err = set_max_threads(1).expect_err("one thread is too few");
        assert!(err.to_string().contains("at least 2"), "{err}");
    }

    #[test]
    fn a_spawned_future_is_polled_on_the_task_thread_until_it_ends() {
        let (tx, rx) = mpsc::channel();
        let clock = crate::ManualClock::new(0);
        let sleeper = clock.clone();
        spawn(async move {
            use crate::Clock;
            sleeper.sleep_until_async(50).await;
            let _ = tx.send(thread::current().name().map(str::to_owned));
        });
        assert!(rx.try_recv().is_err(), "ended before its time");
        clock.advance(Duration::from_millis(50));
        let name = rx.recv().expect("the task ends once woken");
        assert_eq!(name.as_deref(), Some("jobsafe-tasks"));
    }
}
