//! Group commit: writers that arrive while a flush is under way share the next
//! one, and a writer that arrives alone goes ahead at once.
//!
//! Every writer queues its request. If no writer is leading, it leads: it takes
//! every queued request (its own among them), commits them together, hands each
//! its result, and passes the lead to the oldest request queued meanwhile. Nobody
//! waits for company: a lone writer's group is just its own request, and the
//! group grows only with the writers that queued while the previous flush ran.
//!
//! A writer of the async face queues its request as a future and never leads:
//! a runtime's thread must not wait for a flush. The lead passes to the
//! oldest blocked writer queued, whatever async writers are queued before it;
//! when only async writers are queued, or one queues and nobody leads, a
//! thread of the crate's pool leads instead (the caller's `lead_on`), so that
//! one thread flushes for all the async writers of a group, and each is woken
//! as a task.

use std::collections::HashMap;
#[cfg(feature = "async")]
use std::collections::HashSet;
#[cfg(feature = "async")]
use std::task::Waker;
use std::thread::{self, Thread};

use parking_lot::{Mutex, MutexGuard};

#[derive(Debug)]
pub(crate) struct GroupCommit<Req, Res> {
    queue: Mutex<Queue<Req, Res>>,
}

#[derive(Debug)]
struct Queue<Req, Res> {
    pending: Vec<Waiting<Req>>,
    /// Each committed request's result, with the flushes its group made
    /// (counted only for tracing: see `trace::flushes_so_far`).
    done: HashMap<u64, (Res, u32)>,
    next_ticket: u64,
    /// Whether a writer is leading a group now.
    leading: bool,
    /// The queued request whose writer leads next.
    handoff: Option<u64>,
    /// The latest wakers of async requests a leader has taken (one still
    /// queued keeps its waker in `pending`).
    #[cfg(feature = "async")]
    wakers: HashMap<u64, Waker>,
    /// Async requests a leader took whose future was dropped since: their
    /// results are dropped, not kept.
    #[cfg(feature = "async")]
    dropped: HashSet<u64>,
}

/// A queued request and whom to wake when it is done or leads.
#[derive(Debug)]
struct Waiting<Req> {
    ticket: u64,
    request: Req,
    waiter: Waiter,
}

/// A blocked writer's thread, or an async writer's task.
#[derive(Debug)]
enum Waiter {
    Thread(Thread),
    #[cfg(feature = "async")]
    Task(Waker),
}

impl Waiter {
    fn wake(self) {
        match self {
            Waiter::Thread(thread) => thread.unpark(),
            #[cfg(feature = "async")]
            Waiter::Task(waker) => waker.wake(),
        }
    }
}

impl<Req, Res> Default for GroupCommit<Req, Res> {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                done: HashMap::new(),
                next_ticket: 0,
                leading: false,
                handoff: None,
                #[cfg(feature = "async")]
                wakers: HashMap::new(),
                #[cfg(feature = "async")]
                dropped: HashSet::new(),
            }),
        }
    }
}

impl<Req, Res> GroupCommit<Req, Res> {
    /// Queues `request` and returns its result, committing a group with
    /// `commit` if this writer leads one. `commit` gets the requests in queue
    /// order and must return one result per request, in the same order;
    /// `abandoned` is the result of a request whose group's `commit` panicked.
    ///
    /// Waiting writers park and are woken one by one: those of the group just
    /// committed and the next leader, never the writers queued for a later
    /// group (waking every waiter at each flush made them switch in and out of
    /// the CPU for nothing, which cost more than the flush under many threads).
    ///
    /// `lead_on` starts a leader on another thread, for when the lead passes
    /// to an async writer (see the module docs).
    pub(crate) fn submit(
        &self,
        request: Req,
        commit: impl Fn(Vec<Req>) -> Vec<Res>,
        abandoned: impl Fn() -> Res,
        lead_on: impl Fn(),
    ) -> Res {
        let mut queue = self.queue.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push(Waiting {
            ticket,
            request,
            waiter: Waiter::Thread(thread::current()),
        });
        if queue.leading {
            loop {
                if let Some((result, flushes)) = queue.done.remove(&ticket) {
                    crate::trace::joined_group(flushes);
                    return result;
                }
                if queue.handoff == Some(ticket) {
                    queue.handoff = None;
                    break;
                }
                // `unpark` before `park` makes `park` return at once: no
                // wake-up is lost between the check above and the park.
                MutexGuard::unlocked(&mut queue, thread::park);
            }
        }
        queue.leading = true;
        crate::trace::led_group();
        self.lead(queue, Some(ticket), &commit, &abandoned, &lead_on);

        let mut queue = self.queue.lock();
        queue
            .done
            .remove(&ticket)
            .map_or_else(&abandoned, |(result, _)| result)
    }

    /// Commits every queued request as one group, as the leader (`leader` is
    /// its own request's ticket, if it has one), then hands out the results
    /// and passes the lead on. Called with `queue.leading` set by the caller.
    fn lead(
        &self,
        mut queue: MutexGuard<'_, Queue<Req, Res>>,
        leader: Option<u64>,
        commit: &dyn Fn(Vec<Req>) -> Vec<Res>,
        abandoned: &dyn Fn() -> Res,
        lead_on: &dyn Fn(),
    ) {
        let group = std::mem::take(&mut queue.pending);
        drop(queue);

        let mut requests = Vec::with_capacity(group.len());
        let mut waiters = Vec::with_capacity(group.len());
        for waiting in group {
            requests.push(waiting.request);
            waiters.push((waiting.ticket, waiting.waiter));
        }
        let mut lead = Lead {
            commit: self,
            waiters,
            leader,
            abandoned,
            lead_on,
            results: None,
            flushes: 0,
        };
        let flushed_before = crate::trace::flushes_so_far();
        let results = commit(requests);
        lead.flushes = crate::trace::flushes_so_far().saturating_sub(flushed_before);
        lead.results = Some(results);
        drop(lead);
    }
}

#[cfg(feature = "async")]
impl<Req, Res> GroupCommit<Req, Res> {
    /// Queues an async writer's `request`, to be woken through `waker` when it
    /// is done: its ticket, and whether the caller must start a leader on
    /// another thread ([`lead_queued`](Self::lead_queued)) because nobody
    /// leads.
    pub(crate) fn enqueue(&self, request: Req, waker: Waker) -> (u64, bool) {
        let mut queue = self.queue.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push(Waiting {
            ticket,
            request,
            waiter: Waiter::Task(waker),
        });
        let start_leader = !queue.leading;
        queue.leading = true;
        (ticket, start_leader)
    }

    /// The result of an async writer's request once it is done; until then,
    /// `waker` is the one to wake.
    pub(crate) fn poll_done(&self, ticket: u64, waker: &Waker) -> Option<Res> {
        let mut queue = self.queue.lock();
        if let Some((result, _flushes)) = queue.done.remove(&ticket) {
            return Some(result);
        }
        let replaced = match queue.pending.iter_mut().find(|w| w.ticket == ticket) {
            Some(waiting) => Some(std::mem::replace(
                &mut waiting.waiter,
                Waiter::Task(waker.clone()),
            )),
            None => queue.wakers.insert(ticket, waker.clone()).map(Waiter::Task),
        };
        // A waker is dropped outside the lock: dropping it runs the
        // executor's code, which may drop a future that locks it again.
        drop(queue);
        drop(replaced);
        None
    }

    /// An async writer's future was dropped before its result: a request
    /// still queued is withdrawn (nothing is written), one a leader took is
    /// committed and its result dropped.
    pub(crate) fn forget(&self, ticket: u64) {
        let mut queue = self.queue.lock();
        // Dropped outside the lock, as in `poll_done`.
        let waker = queue.wakers.remove(&ticket);
        let queued = queue.pending.iter().position(|w| w.ticket == ticket);
        let withdrawn = queued.map(|at| queue.pending.remove(at));
        let done = if withdrawn.is_none() {
            let done = queue.done.remove(&ticket);
            if done.is_none() {
                queue.dropped.insert(ticket);
            }
            done
        } else {
            None
        };
        drop(queue);
        drop((waker, withdrawn, done));
    }

    /// Leads the queued requests, on a thread that was started to (see
    /// [`enqueue`](Self::enqueue)): nothing if every one was withdrawn.
    pub(crate) fn lead_queued(
        &self,
        commit: &dyn Fn(Vec<Req>) -> Vec<Res>,
        abandoned: &dyn Fn() -> Res,
        lead_on: &dyn Fn(),
    ) {
        let mut queue = self.queue.lock();
        if queue.pending.is_empty() {
            queue.leading = false;
            return;
        }
        // A blocked writer that was handed the lead meanwhile leads instead.
        if queue.handoff.is_some() {
            return;
        }
        self.lead(queue, None, commit, abandoned, lead_on);
    }
}

/// Hands out a group's results and passes the lead on, also when `commit`
/// panicked: no follower waits forever.
struct Lead<'a, Req, Res> {
    commit: &'a GroupCommit<Req, Res>,
    /// The group's tickets and waiters, the leader's own among them.
    waiters: Vec<(u64, Waiter)>,
    /// The leader's own request, unless a pool thread leads.
    leader: Option<u64>,
    abandoned: &'a dyn Fn() -> Res,
    lead_on: &'a dyn Fn(),
    results: Option<Vec<Res>>,
    /// The flushes the commit made, for the tracing of the group's calls.
    flushes: u32,
}

impl<Req, Res> Drop for Lead<'_, Req, Res> {
    fn drop(&mut self) {
        let mut wake = Vec::with_capacity(self.waiters.len());
        #[cfg_attr(not(feature = "async"), allow(unused_mut))]
        let mut start_leader = false;
        // Results nobody waits for any more, and wakers replaced by newer
        // ones, dropped outside the lock.
        let mut unwanted: Vec<Res> = Vec::new();
        #[cfg_attr(not(feature = "async"), allow(unused_mut))]
        let mut stale: Vec<Waiter> = Vec::new();
        {
            let mut queue = self.commit.queue.lock();
            // No results: `commit` panicked, and the leader is unwinding.
            let panicked = self.results.is_none();
            let mut results = self.results.take().unwrap_or_default().into_iter();
            for (ticket, waiter) in self.waiters.drain(..) {
                let result = results.next().unwrap_or_else(self.abandoned);
                // An unwinding leader never comes for its own result.
                if panicked && Some(ticket) == self.leader {
                    unwanted.push(result);
                    continue;
                }
                #[cfg(feature = "async")]
                if queue.dropped.remove(&ticket) {
                    unwanted.push(result);
                    stale.push(waiter);
                    continue;
                }
                queue.done.insert(ticket, (result, self.flushes));
                if Some(ticket) == self.leader {
                    continue;
                }
                #[cfg(feature = "async")]
                let waiter = match queue.wakers.remove(&ticket) {
                    Some(latest) => {
                        stale.push(waiter);
                        Waiter::Task(latest)
                    }
                    None => waiter,
                };
                wake.push(waiter);
            }
            // The lead passes to the oldest blocked writer queued, which
            // leads the async writers queued before it too; only when every
            // queued writer is async is a leader started on another thread
            // (so a leader never waits for a thread that a queued writer
            // holds).
            // (Without the async face every queued writer is blocked.)
            #[cfg_attr(not(feature = "async"), allow(clippy::unnecessary_find_map))]
            let blocked = queue
                .pending
                .iter()
                .find_map(|waiting| match &waiting.waiter {
                    Waiter::Thread(thread) => Some((waiting.ticket, thread.clone())),
                    #[cfg(feature = "async")]
                    Waiter::Task(_) => None,
                });
            match blocked {
                Some((next, thread)) => {
                    queue.handoff = Some(next);
                    wake.push(Waiter::Thread(thread));
                }
                // `leading` stays set for the leader started below.
                None if !queue.pending.is_empty() => start_leader = true,
                None => queue.leading = false,
            }
        }
        drop(unwanted);
        drop(stale);
        // Woken after the lock is released, so that they do not wake into it.
        for waiter in wake {
            waiter.wake();
        }
        if start_leader {
            (self.lead_on)();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_lone_writer_commits_its_own_group() {
        let group = GroupCommit::<u32, u32>::default();
        assert_eq!(
            group.submit(3, |reqs| reqs.iter().map(|r| r * 2).collect(), || 0, || {}),
            6
        );
        assert_eq!(
            group.submit(4, |reqs| reqs.iter().map(|r| r * 2).collect(), || 0, || {}),
            8
        );
    }

    #[test]
    fn concurrent_writers_each_get_their_own_result_committed_exactly_once() {
        let group = Arc::new(GroupCommit::<u64, u64>::default());
        // Requests handed to a commit, over all groups.
        let committed = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let group = group.clone();
                let committed = committed.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let request = t * 1000 + i;
                        let result = group.submit(
                            request,
                            |reqs| {
                                assert!(!reqs.is_empty(), "an empty group was committed");
                                committed.fetch_add(reqs.len(), Ordering::Relaxed);
                                reqs.iter().map(|r| r + 1).collect()
                            },
                            || u64::MAX,
                            || {},
                        );
                        assert_eq!(result, request + 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // Every request went into exactly one group: none lost, none twice.
        assert_eq!(committed.load(Ordering::Relaxed), 8 * 200);
    }

    /// An async writer's request as a future, as `Committing` makes it.
    #[cfg(feature = "async")]
    struct Queued<'a> {
        group: &'a Arc<GroupCommit<u64, u64>>,
        request: Option<u64>,
        ticket: Option<u64>,
        committed: &'a Arc<AtomicUsize>,
    }

    #[cfg(feature = "async")]
    impl Future for Queued<'_> {
        type Output = u64;

        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<u64> {
            if let Some(request) = self.request.take() {
                let (ticket, start) = self.group.enqueue(request, cx.waker().clone());
                self.ticket = Some(ticket);
                if start {
                    start_leader(self.group, self.committed);
                }
                return std::task::Poll::Pending;
            }
            let ticket = self.ticket.expect("queued");
            match self.group.poll_done(ticket, cx.waker()) {
                Some(result) => {
                    self.ticket = None;
                    std::task::Poll::Ready(result)
                }
                None => std::task::Poll::Pending,
            }
        }
    }

    #[cfg(feature = "async")]
    impl Drop for Queued<'_> {
        fn drop(&mut self) {
            if let Some(ticket) = self.ticket {
                self.group.forget(ticket);
            }
        }
    }

    /// A leader on a thread of its own, as the store starts one on the pool.
    #[cfg(feature = "async")]
    fn start_leader(group: &Arc<GroupCommit<u64, u64>>, committed: &Arc<AtomicUsize>) {
        let (group, committed) = (Arc::clone(group), Arc::clone(committed));
        std::thread::spawn(move || {
            let again = {
                let (group, committed) = (Arc::clone(&group), Arc::clone(&committed));
                move || start_leader(&group, &committed)
            };
            group.lead_queued(
                &|reqs: Vec<u64>| {
                    committed.fetch_add(reqs.len(), Ordering::Relaxed);
                    reqs.iter().map(|r| r + 1).collect()
                },
                &|| u64::MAX,
                &again,
            );
        });
    }

    #[cfg(feature = "async")]
    #[test]
    fn async_and_blocked_writers_each_get_their_own_result_committed_exactly_once() {
        let group = Arc::new(GroupCommit::<u64, u64>::default());
        let committed = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..8u64)
            .map(|t| {
                let (group, committed) = (Arc::clone(&group), Arc::clone(&committed));
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let request = t * 1000 + i;
                        let result = if t % 2 == 0 {
                            crate::pool::block_on(Queued {
                                group: &group,
                                request: Some(request),
                                ticket: None,
                                committed: &committed,
                            })
                        } else {
                            group.submit(
                                request,
                                |reqs| {
                                    committed.fetch_add(reqs.len(), Ordering::Relaxed);
                                    reqs.iter().map(|r| r + 1).collect()
                                },
                                || u64::MAX,
                                || start_leader(&group, &committed),
                            )
                        };
                        assert_eq!(result, request + 1);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(committed.load(Ordering::Relaxed), 8 * 200);
        let queue = group.queue.lock();
        assert!(!queue.leading, "the lead was not given back");
        assert!(queue.done.is_empty() && queue.wakers.is_empty() && queue.dropped.is_empty());
    }

    #[cfg(feature = "async")]
    #[test]
    fn a_dropped_async_request_is_withdrawn_or_its_result_dropped() {
        let group = Arc::new(GroupCommit::<u64, u64>::default());
        let waker = std::task::Waker::noop().clone();
        // Dropped while queued: withdrawn, never committed.
        let (ticket, start) = group.enqueue(1, waker.clone());
        assert!(start);
        group.forget(ticket);
        let commits = AtomicUsize::new(0);
        let commit = |reqs: Vec<u64>| {
            commits.fetch_add(reqs.len(), Ordering::Relaxed);
            reqs.iter().map(|r| r + 1).collect()
        };
        group.lead_queued(&commit, &|| 0, &|| {});
        assert_eq!(commits.load(Ordering::Relaxed), 0);
        assert!(!group.queue.lock().leading);

        // Dropped while its group commits: committed, its result dropped.
        let (ticket, start) = group.enqueue(2, waker.clone());
        assert!(start);
        group.lead_queued(
            &|reqs: Vec<u64>| {
                group.forget(ticket);
                commit(reqs)
            },
            &|| 0,
            &|| {},
        );
        assert_eq!(commits.load(Ordering::Relaxed), 1);
        let queue = group.queue.lock();
        assert!(
            queue.done.is_empty() && queue.dropped.is_empty(),
            "a result kept for nobody"
        );
        assert!(!queue.leading);
    }

    /// The lead passes to a blocked writer queued behind an async one: no
    /// leader is started on another thread, which a saturated pool (its
    /// threads the blocked writers) could never run.
    #[cfg(feature = "async")]
    #[test]
    fn a_blocked_writer_queued_behind_an_async_one_takes_the_lead() {
        let group = Arc::new(GroupCommit::<u64, u64>::default());
        let started_elsewhere = AtomicUsize::new(0);
        let async_ticket = std::sync::OnceLock::new();
        let first = std::sync::atomic::AtomicBool::new(true);
        let blocked = std::thread::scope(|scope| {
            let blocked = std::sync::OnceLock::new();
            let result = group.submit(
                1,
                |reqs| {
                    if first.swap(false, Ordering::SeqCst) {
                        // While this group commits, an async writer queues,
                        // then a blocked one.
                        let (ticket, start) = group.enqueue(2, std::task::Waker::noop().clone());
                        assert!(!start, "a leader is leading");
                        async_ticket.set(ticket).unwrap();
                        let other = Arc::clone(&group);
                        let spawned = scope.spawn(move || {
                            other.submit(
                                3,
                                |reqs| reqs.iter().map(|r| r * 10).collect(),
                                || 0,
                                || panic!("a leader started elsewhere"),
                            )
                        });
                        assert!(blocked.set(spawned).is_ok());
                        while group.queue.lock().pending.len() < 2 {
                            std::thread::yield_now();
                        }
                    }
                    reqs.iter().map(|r| r * 10).collect()
                },
                || 0,
                || {
                    // Counted, and run, so that a regression fails the test
                    // rather than hanging it.
                    started_elsewhere.fetch_add(1, Ordering::SeqCst);
                    let group = Arc::clone(&group);
                    std::thread::spawn(move || {
                        group.lead_queued(
                            &|reqs| reqs.iter().map(|r| r * 10).collect(),
                            &|| 0,
                            &|| {},
                        );
                    });
                },
            );
            assert_eq!(result, 10);
            blocked.into_inner().unwrap().join().unwrap()
        });
        assert_eq!(blocked, 30);
        assert_eq!(started_elsewhere.load(Ordering::SeqCst), 0);
        let waker = std::task::Waker::noop().clone();
        assert_eq!(
            group.poll_done(*async_ticket.get().unwrap(), &waker),
            Some(20)
        );
        assert!(!group.queue.lock().leading);
    }

    #[test]
    fn a_panicking_commit_abandons_its_group_and_passes_the_lead() {
        let group = GroupCommit::<u32, Option<u32>>::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            group.submit(1, |_| panic!("commit failed"), || None, || {})
        }));
        assert!(panicked.is_err());
        // Nobody is left waiting for a result, the leader's own included.
        assert!(group.queue.lock().done.is_empty());
        assert_eq!(
            group.submit(
                2,
                |reqs| reqs.into_iter().map(Some).collect(),
                || None,
                || {}
            ),
            Some(2)
        );
    }
}
