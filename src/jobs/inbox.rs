//! A subscriber's bounded queue of live feed, for both faces: a blocking
//! subscriber waits on its condition variable, an async one leaves a waker.
//!
//! Unlike a channel with a fixed buffer, it allocates only what it holds: a
//! subscriber that keeps up costs a few hundred bytes, whatever its bound,
//! which is what lets a process keep thousands of idle event streams open.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::live::Feed;

/// A new queue holding at most `capacity` entries: the hub's end and the
/// subscriber's.
pub(super) fn inbox(capacity: usize) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            capacity,
            sender_gone: false,
            receiver_gone: false,
            waker: None,
        }),
        arrived: Condvar::new(),
    });
    (Outbox(Arc::clone(&shared)), Inbox(shared))
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when an entry arrives or the hub lets go.
    arrived: Condvar,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Feed>,
    capacity: usize,
    sender_gone: bool,
    receiver_gone: bool,
    /// The waker of an async subscriber waiting for an entry.
    waker: Option<Waker>,
}

/// Why an entry was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The queue holds its capacity.
    Full,
    /// The subscriber is gone.
    Gone,
}

/// Why nothing was taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Nothing {
    /// Nothing yet.
    Empty,
    /// Nothing, and nothing will come: the hub let go of the subscriber.
    Closed,
    /// Nothing came before the deadline.
    TimedOut,
}

/// The hub's end. Dropping it closes the queue: the subscriber takes what is
/// left, then learns it is closed.
#[derive(Debug)]
pub(super) struct Outbox(Arc<Shared>);

impl Outbox {
    /// Queues `feed` without waiting, and wakes the subscriber.
    pub(super) fn try_send(&self, feed: Feed) -> Result<(), Refused> {
        let mut state = self.0.state.lock();
        if state.receiver_gone {
            return Err(Refused::Gone);
        }
        if state.queue.len() >= state.capacity {
            return Err(Refused::Full);
        }
        state.queue.push_back(feed);
        let waker = state.waker.take();
        drop(state);
        self.0.arrived.notify_one();
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.sender_gone = true;
        let waker = state.waker.take();
        drop(state);
        self.0.arrived.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The subscriber's end. Dropping it refuses what the hub sends after.
#[derive(Debug)]
pub(super) struct Inbox(Arc<Shared>);

impl Inbox {
    /// The oldest entry, without waiting.
    pub(super) fn try_recv(&self) -> Result<Feed, Nothing> {
        let mut state = self.0.state.lock();
        Self::take(&mut state)
    }

    /// The oldest entry, waiting for one until `deadline` (`None`: for as
    /// long as it takes).
    pub(super) fn recv_until(&self, deadline: Option<Instant>) -> Result<Feed, Nothing> {
        let mut state = self.0.state.lock();
        loop {
            match Self::take(&mut state) {
                Err(Nothing::Empty) => {}
                taken => return taken,
            }
            match deadline {
                None => self.0.arrived.wait(&mut state),
                Some(deadline) => {
                    if self.0.arrived.wait_until(&mut state, deadline).timed_out() {
                        return Self::take(&mut state).map_err(|nothing| match nothing {
                            Nothing::Empty => Nothing::TimedOut,
                            other => other,
                        });
                    }
                }
            }
        }
    }

    /// The oldest entry, or, with none yet, leaves `waker` to be woken when
    /// one arrives or the queue closes.
    #[cfg(feature = "async")]
    pub(super) fn recv_or_wake(&self, waker: &Waker) -> Result<Feed, Nothing> {
        let mut state = self.0.state.lock();
        let taken = Self::take(&mut state);
        if matches!(taken, Err(Nothing::Empty)) {
            match state.waker.as_mut() {
                Some(known) => known.clone_from(waker),
                None => state.waker = Some(waker.clone()),
            }
        }
        taken
    }

    fn take(state: &mut State) -> Result<Feed, Nothing> {
        match state.queue.pop_front() {
            Some(feed) => Ok(feed),
            None if state.sender_gone => Err(Nothing::Closed),
            None => Err(Nothing::Empty),
        }
    }

    /// Every entry at hand, without waiting.
    #[cfg(test)]
    pub(super) fn try_iter(&self) -> impl Iterator<Item = Feed> + '_ {
        std::iter::from_fn(|| self.try_recv().ok())
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.receiver_gone = true;
        state.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Feed {
        Feed::Event(super::super::Event {
            seq,
            kind: "e".to_owned(),
            data: serde_json::Value::Null,
            time_ms: 0,
        })
    }

    #[test]
    fn it_holds_its_capacity_and_refuses_more() {
        let (outbox, inbox) = inbox(2);
        assert_eq!(outbox.try_send(event(1)), Ok(()));
        assert_eq!(outbox.try_send(event(2)), Ok(()));
        assert_eq!(outbox.try_send(event(3)), Err(Refused::Full));
        assert!(matches!(inbox.try_recv(), Ok(Feed::Event(e)) if e.seq == 1));
        assert_eq!(outbox.try_send(event(3)), Ok(()));
        drop(inbox);
        assert_eq!(outbox.try_send(event(4)), Err(Refused::Gone));
    }

    #[test]
    fn a_closed_queue_hands_over_what_it_holds_then_says_so() {
        let (outbox, inbox) = inbox(4);
        outbox.try_send(event(1)).unwrap();
        drop(outbox);
        assert!(matches!(inbox.recv_until(None), Ok(Feed::Event(e)) if e.seq == 1));
        assert_eq!(inbox.recv_until(None).map(drop), Err(Nothing::Closed));
    }

    #[test]
    fn a_wait_ends_at_its_deadline_or_when_an_entry_arrives() {
        let (outbox, inbox) = inbox(4);
        assert_eq!(
            inbox.recv_until(Some(Instant::now())).map(drop),
            Err(Nothing::TimedOut)
        );
        let sender = std::thread::spawn(move || {
            outbox.try_send(event(7)).unwrap();
            outbox
        });
        assert!(matches!(inbox.recv_until(None), Ok(Feed::Event(e)) if e.seq == 7));
        drop(sender.join().unwrap());
    }
}
