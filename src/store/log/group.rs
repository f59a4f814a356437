//! Group commit: writers that arrive while a flush is under way share the next
//! one, and a writer that arrives alone goes ahead at once.
//!
//! Every writer queues its request. If no writer is leading, it leads: it takes
//! every queued request (its own among them), commits them together, hands each
//! its result, and passes the lead to the oldest request queued meanwhile. Nobody
//! waits for company: a lone writer's group is just its own request, and the
//! group grows only with the writers that queued while the previous flush ran.

use std::collections::HashMap;
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
}

/// A queued request and the thread to wake when it is done or leads.
#[derive(Debug)]
struct Waiting<Req> {
    ticket: u64,
    request: Req,
    thread: Thread,
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
    pub(crate) fn submit(
        &self,
        request: Req,
        commit: impl Fn(Vec<Req>) -> Vec<Res>,
        abandoned: impl Fn() -> Res,
    ) -> Res {
        let mut queue = self.queue.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push(Waiting {
            ticket,
            request,
            thread: thread::current(),
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
        let group = std::mem::take(&mut queue.pending);
        drop(queue);

        let mut requests = Vec::with_capacity(group.len());
        let mut waiters = Vec::with_capacity(group.len());
        for waiting in group {
            requests.push(waiting.request);
            waiters.push((waiting.ticket, waiting.thread));
        }
        let mut lead = Lead {
            commit: self,
            waiters,
            leader: ticket,
            abandoned: &abandoned,
            results: None,
            flushes: 0,
        };
        crate::trace::led_group();
        let flushed_before = crate::trace::flushes_so_far();
        let results = commit(requests);
        lead.flushes = crate::trace::flushes_so_far().saturating_sub(flushed_before);
        lead.results = Some(results);
        drop(lead);

        let mut queue = self.queue.lock();
        queue
            .done
            .remove(&ticket)
            .map_or_else(&abandoned, |(result, _)| result)
    }
}

/// Hands out a group's results and passes the lead on, also when `commit`
/// panicked: no follower waits forever.
struct Lead<'a, Req, Res, A: Fn() -> Res> {
    commit: &'a GroupCommit<Req, Res>,
    /// The group's tickets and threads, the leader's own among them.
    waiters: Vec<(u64, Thread)>,
    leader: u64,
    abandoned: &'a A,
    results: Option<Vec<Res>>,
    /// The flushes the commit made, for the tracing of the group's calls.
    flushes: u32,
}

impl<Req, Res, A: Fn() -> Res> Drop for Lead<'_, Req, Res, A> {
    fn drop(&mut self) {
        let mut wake = Vec::with_capacity(self.waiters.len());
        {
            let mut queue = self.commit.queue.lock();
            let mut results = self.results.take().unwrap_or_default().into_iter();
            for (ticket, thread) in self.waiters.drain(..) {
                let result = results.next().unwrap_or_else(self.abandoned);
                queue.done.insert(ticket, (result, self.flushes));
                if ticket != self.leader {
                    wake.push(thread);
                }
            }
            match queue.pending.first().map(|w| (w.ticket, w.thread.clone())) {
                Some((next, thread)) => {
                    queue.handoff = Some(next);
                    wake.push(thread);
                }
                None => queue.leading = false,
            }
        }
        // Woken after the lock is released, so that they do not wake into it.
        for thread in wake {
            thread.unpark();
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
            group.submit(3, |reqs| reqs.iter().map(|r| r * 2).collect(), || 0),
            6
        );
        assert_eq!(
            group.submit(4, |reqs| reqs.iter().map(|r| r * 2).collect(), || 0),
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

    #[test]
    fn a_panicking_commit_abandons_its_group_and_passes_the_lead() {
        let group = GroupCommit::<u32, Option<u32>>::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            group.submit(1, |_| panic!("commit failed"), || None)
        }));
        assert!(panicked.is_err());
        assert_eq!(
            group.submit(2, |reqs| reqs.into_iter().map(Some).collect(), || None),
            Some(2)
        );
    }
}
