//! One poll loop per job state for every [`AsyncFollower`](super::AsyncFollower)
//! of the process: each period it reads the record of each followed job once,
//! whatever the number of its followers, and wakes the followers of the jobs
//! that moved. A follower then reads its events itself.
//!
//! The loop runs on the crate's task thread, waits on the job state's clock,
//! and reads on the crate's pool; it ends when nobody follows, and starts
//! again with the next follower. Where the store tells of other processes'
//! writes ([`Store::changes_by_others`]), the loop reads as soon as it is
//! told, and the period is only the safety net.

use std::collections::HashMap;
use std::task::Waker;
use std::time::Duration;

use parking_lot::Mutex;

use super::JobState;
use crate::clock::millis;
use crate::pool;
use crate::store::Store;

/// The followers waiting on one job state's store.
#[derive(Debug, Default)]
pub(super) struct Watch {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The followed jobs, by id.
    jobs: HashMap<String, Followed>,
    /// Whether a loop runs.
    looping: bool,
    /// A job or a shorter period was added since the loop last looked.
    changed: bool,
    /// The loop's waker while it sleeps.
    loop_waker: Option<Waker>,
    next_id: u64,
}

#[derive(Debug)]
struct Followed {
    /// The waiting followers: each wants to hear of a next sequence number
    /// past the one it knows.
    waiting: Vec<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    known_next_seq: u64,
    poll_every: Duration,
    waker: Waker,
}

/// A follower's place in the watch: forgotten when dropped.
#[derive(Debug)]
pub(super) struct Ticket {
    id: u64,
    job_id: String,
}

impl Watch {
    /// A ticket for a follower of `job_id`.
    pub(super) fn ticket(&self, job_id: &str) -> Ticket {
        let mut state = self.state.lock();
        state.next_id += 1;
        Ticket {
            id: state.next_id,
            job_id: job_id.to_owned(),
        }
    }

    /// Waits, woken through `waker`, until the job of `ticket` has a next
    /// sequence number past `known_next_seq` (or its record cannot be read:
    /// the follower finds out why). Starts the loop if none runs.
    pub(super) fn wait<S: Store + 'static>(
        &self,
        jobs: &JobState<S>,
        ticket: &Ticket,
        known_next_seq: u64,
        poll_every: Duration,
        waker: &Waker,
    ) {
        let mut state = self.state.lock();
        let shortest = state
            .jobs
            .values()
            .flat_map(|followed| followed.waiting.iter().map(|w| w.poll_every))
            .min();
        let new_job = !state.jobs.contains_key(&ticket.job_id);
        if new_job || shortest.is_some_and(|shortest| poll_every < shortest) {
            // The loop's sleep was worked out without this: it looks again.
            state.changed = true;
            if let Some(waker) = state.loop_waker.take() {
                waker.wake();
            }
        }
        let followed = state
            .jobs
            .entry(ticket.job_id.clone())
            .or_insert_with(|| Followed {
                waiting: Vec::new(),
            });
        followed.waiting.retain(|waiting| waiting.id != ticket.id);
        followed.waiting.push(Waiting {
            id: ticket.id,
            known_next_seq,
            poll_every,
            waker: waker.clone(),
        });
        let start = !std::mem::replace(&mut state.looping, true);
        // The loop takes this lock: started with it released.
        drop(state);
        if start {
            pool::spawn(watch(jobs.clone()));
        }
    }

    /// Whether the follower of `ticket` still waits (not woken since it
    /// last called [`wait`](Watch::wait)); if so, it is woken through
    /// `waker` from now on. One look under the lock, so that a wake-up
    /// between a look and a new registration cannot be lost.
    pub(super) fn still_waiting(&self, ticket: &Ticket, waker: &Waker) -> bool {
        let mut state = self.state.lock();
        let Some(followed) = state.jobs.get_mut(&ticket.job_id) else {
            return false;
        };
        match followed.waiting.iter_mut().find(|w| w.id == ticket.id) {
            Some(waiting) => {
                waiting.waker.clone_from(waker);
                true
            }
            None => false,
        }
    }

    /// Whether a job or a shorter period came since the last call; if not,
    /// the loop's `waker` is woken when one does.
    fn take_change(&self, waker: &Waker) -> bool {
        let mut state = self.state.lock();
        if std::mem::take(&mut state.changed) {
            return true;
        }
        state.loop_waker = Some(waker.clone());
        false
    }

    /// Forgets a follower that went away.
    pub(super) fn forget(&self, ticket: &Ticket) {
        let mut state = self.state.lock();
        if let Some(followed) = state.jobs.get_mut(&ticket.job_id) {
            followed.waiting.retain(|waiting| waiting.id != ticket.id);
            if followed.waiting.is_empty() {
                state.jobs.remove(&ticket.job_id);
            }
        }
        // The last follower gone: the loop ends now, not at its next period
        // (with it go its hold on the store and its watch of other writers).
        let waker = if state.jobs.is_empty() {
            state.changed = true;
            state.loop_waker.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The jobs to read this period, and the period: the shortest any
    /// follower asked for. `None` when nobody follows: the loop ends.
    fn due(&self) -> Option<(Vec<String>, Duration)> {
        let mut state = self.state.lock();
        let every = state
            .jobs
            .values()
            .flat_map(|followed| followed.waiting.iter().map(|w| w.poll_every))
            .min();
        let Some(every) = every else {
            state.looping = false;
            return None;
        };
        Some((state.jobs.keys().cloned().collect(), every))
    }

    /// Wakes the followers of `job_id` that do not know `next_seq` yet; all
    /// of them if the job's record could not be read (`None`).
    fn moved(&self, job_id: &str, next_seq: Option<u64>) {
        let mut woken = Vec::new();
        {
            let mut state = self.state.lock();
            let Some(followed) = state.jobs.get_mut(job_id) else {
                return;
            };
            followed.waiting.retain(|waiting| {
                let behind = next_seq.is_none_or(|next| next > waiting.known_next_seq);
                if behind {
                    woken.push(waiting.waker.clone());
                }
                !behind
            });
            if followed.waiting.is_empty() {
                state.jobs.remove(job_id);
            }
        }
        for waker in woken {
            waker.wake();
        }
    }
}

/// The loop: every period, one read of each followed job.
async fn watch<S: Store + 'static>(jobs: JobState<S>) {
    let mut running = Running {
        watch: &jobs.hub.watch,
        ended: false,
    };
    let mut last_read_ms = jobs.clock.now_ms();
    // Other processes' writes, where the store tells of them: read at once
    // rather than at the end of the period.
    // Set up on the pool: it may list and watch directories (a
    // `DirStore`'s), and this thread polls every loop of the crate.
    let watching = jobs.clone();
    let others = crate::pool::run(move || {
        (watching.records_prefix().ok()).and_then(|p| watching.store.changes_by_others(&p))
    })
    .await;
    let mut others_seen = others.as_ref().map_or(0, crate::store::Changes::seen);
    // Set when a follower came: its jobs are read at once.
    let mut read_now = false;
    loop {
        let Some((followed, every)) = jobs.hub.watch.due() else {
            running.ended = true;
            return;
        };
        if !std::mem::take(&mut read_now) {
            let due = last_read_ms.saturating_add(millis(every));
            let mut sleep = jobs.clock.sleep_until_async(due);
            let woke = std::future::poll_fn(|cx| {
                if std::pin::Pin::new(&mut sleep).poll(cx).is_ready() {
                    return std::task::Poll::Ready(Woke::Period);
                }
                if let Some(others) = &others
                    && let std::task::Poll::Ready(seen) =
                        others.signal().poll_changed(others_seen, cx)
                {
                    return std::task::Poll::Ready(Woke::Others(seen));
                }
                if jobs.hub.watch.take_change(cx.waker()) {
                    return std::task::Poll::Ready(Woke::Followers);
                }
                std::task::Poll::Pending
            })
            .await;
            match woke {
                Woke::Period => {}
                Woke::Others(seen) => others_seen = seen,
                // A new follower (or a shorter period): the jobs are listed
                // again and read at once, since another process may have
                // written between the follower's own read and its
                // registration. The read wakes only the followers behind.
                Woke::Followers => {
                    read_now = true;
                    continue;
                }
            }
        }
        last_read_ms = jobs.clock.now_ms();
        for job_id in followed {
            let reader = jobs.clone();
            let id = job_id.clone();
            // A store that panics is taken as one that cannot be read.
            let read = pool::run(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.get(&id)))
            })
            .await;
            // Unreadable or gone: its followers read it and report why.
            let next_seq = match read {
                Ok(Ok(Some(job))) => Some(job.events.next_seq),
                _ => None,
            };
            jobs.hub.watch.moved(&job_id, next_seq);
        }
    }
}

/// What ended the loop's wait.
enum Woke {
    /// The period: time to read the followed jobs.
    Period,
    /// Other processes wrote job records: read them now.
    Others(u64),
    /// A follower came, or asked for a shorter period.
    Followers,
}

/// Marks the loop ended if it ends otherwise than by finding nobody to
/// follow (a panic), and wakes every follower: each registers again, which
/// starts a new loop.
struct Running<'w> {
    watch: &'w Watch,
    ended: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let waiting = {
            let mut state = self.watch.state.lock();
            state.looping = false;
            std::mem::take(&mut state.jobs)
        };
        for waiting in waiting.into_values().flat_map(|followed| followed.waiting) {
            waiting.waker.wake();
        }
    }
}
