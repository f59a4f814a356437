//! Live event delivery: in this process through a hub of bounded channels, in
//! another process by watching the store.
//!
//! Both deliver a job's events once each, in sequence order, from a chosen
//! sequence number on, with no gap and no duplicate between the replay and the
//! live part. The store is the truth: live delivery is only a shortcut, and
//! whenever it cannot be trusted (a subscriber's buffer overflowed, or an event
//! arrived ahead of one not yet seen) the subscriber reads the missing events
//! from the store. That works because an event is published only after its batch
//! is durable, and an event can only be committed after every event before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(feature = "async")]
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::inbox::{self, Inbox, Nothing, Outbox, Refused};
use super::{Event, JobState};
use crate::clock::millis;
use crate::error::{Error, Result};
use crate::store::Store;

/// The live subscribers of every job of one [`JobState`] (and its clones).
#[derive(Debug, Default)]
pub(super) struct Hub {
    subscribers: Mutex<HashMap<String, Vec<Subscriber>>>,
    next_id: AtomicU64,
    /// The one poll loop of the async followers.
    #[cfg(feature = "async")]
    pub(super) watch: super::watch::Watch,
    /// Raised whenever a job is created or queued again through this
    /// `JobState` or a clone: a runner's wake-up.
    pub(super) queued: crate::wake::Signal,
    /// Whether a task tells the subscribers of other writers' changes.
    others_watched: AtomicBool,
    /// Raised when a subscriber goes: that task ends with the last one.
    left: crate::wake::Signal,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    outbox: Outbox,
    /// Set when the subscriber must read the store before it trusts its live
    /// feed again: its buffer was full, or a write's outcome is unknown.
    overflowed: Arc<AtomicBool>,
}

/// What a subscriber's live feed carries.
#[derive(Debug)]
pub(super) enum Feed {
    Event(Event),
    /// Read the store: it may hold events that were never handed over (a
    /// write whose outcome the writer could not learn).
    CatchUp,
}

impl Hub {
    /// Hands `events` of `job_id` to its subscribers without ever blocking: a
    /// full buffer marks the subscriber to catch up from the store, a dropped
    /// subscriber is forgotten.
    pub(super) fn publish(&self, job_id: &str, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut all = self.subscribers.lock();
        let Some(subscribers) = all.get_mut(job_id) else {
            return;
        };
        subscribers.retain(|subscriber| {
            for event in events {
                match subscriber.outbox.try_send(Feed::Event(event.clone())) {
                    Ok(()) => {}
                    Err(Refused::Full) => {
                        subscriber.overflowed.store(true, Ordering::Release);
                        // If the subscriber emptied its feed between the full
                        // send and the flag, it may be waiting on an empty
                        // feed with the flag unseen: this wakes it. Still
                        // full, it is not waiting, and sees the flag once it
                        // has taken what is there.
                        let _ = subscriber.outbox.try_send(Feed::CatchUp);
                        return true;
                    }
                    Err(Refused::Gone) => return false,
                }
            }
            true
        });
        if subscribers.is_empty() {
            all.remove(job_id);
        }
    }

    /// Tells `job_id`'s subscribers to read the store: a write of the job
    /// may have landed with events nobody handed them (its writer could not
    /// learn its outcome). Without this, a subscriber would wait for a later
    /// event to notice the gap, and forever if the missing one ended the job.
    /// A write that lands only later (one a `PgStore` could not fence) is not
    /// covered: subscribers see it at their next catch-up.
    pub(super) fn nudge(&self, job_id: &str) {
        let mut all = self.subscribers.lock();
        let Some(subscribers) = all.get_mut(job_id) else {
            return;
        };
        subscribers.retain(|subscriber| {
            subscriber.overflowed.store(true, Ordering::Release);
            // A full feed wakes its subscriber anyway, which then sees the flag.
            subscriber.outbox.try_send(Feed::CatchUp) != Err(Refused::Gone)
        });
        if subscribers.is_empty() {
            all.remove(job_id);
        }
    }

    /// Registers a subscriber of `job_id`; the feed it gets holds at most
    /// `buffer` entries.
    pub(super) fn add(&self, job_id: &str, buffer: usize) -> LiveFeed {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (outbox, inbox) = inbox::inbox(buffer);
        let overflowed = Arc::new(AtomicBool::new(false));
        self.subscribers
            .lock()
            .entry(job_id.to_owned())
            .or_default()
            .push(Subscriber {
                id,
                outbox,
                overflowed: Arc::clone(&overflowed),
            });
        LiveFeed {
            id,
            inbox,
            overflowed,
            buffer,
        }
    }

    /// Forgets every subscriber of a deleted job: their channels disconnect, and
    /// each finds out from the store that the job is gone.
    pub(super) fn close(&self, job_id: &str) {
        // Dropped outside the lock: each drop wakes its subscriber.
        let removed = self.subscribers.lock().remove(job_id);
        drop(removed);
        self.left.raise();
    }

    /// How many subscribers are registered, over every job.
    #[cfg(test)]
    pub(super) fn subscriber_count(&self) -> usize {
        self.subscribers.lock().values().map(Vec::len).sum()
    }

    pub(super) fn remove(&self, job_id: &str, id: u64) {
        {
            let mut all = self.subscribers.lock();
            if let Some(subscribers) = all.get_mut(job_id) {
                subscribers.retain(|s| s.id != id);
                if subscribers.is_empty() {
                    all.remove(job_id);
                }
            }
        }
        self.left.raise();
    }

    /// Whether the task that tells of other writers' changes runs (or is
    /// being started).
    #[cfg(feature = "async")]
    pub(super) fn others_are_watched(&self) -> bool {
        self.others_watched.load(Ordering::Acquire)
    }

    /// The jobs that have subscribers now.
    fn subscribed_jobs(&self) -> Vec<String> {
        self.subscribers.lock().keys().cloned().collect()
    }
}

impl<S: Store> JobState<S> {
    /// Starts, unless one runs, the task that tells this job state's
    /// subscribers of other writers' changes (another process's appends to
    /// a job's events), where the store can tell: each subscriber of a job
    /// then reads its events from the store, as after an overflow. It ends
    /// when the last subscriber goes.
    pub(super) fn watch_others(&self) {
        let hub = &self.hub;
        if hub.others_watched.swap(true, Ordering::AcqRel) {
            return;
        }
        let changes = self
            .records_prefix()
            .ok()
            .and_then(|prefix| self.store.changes_by_others(&prefix));
        let Some(changes) = changes else {
            hub.others_watched.store(false, Ordering::Release);
            return;
        };
        // Counted now, before the caller reads the store: a change between
        // that read and the task's first poll is waited for, not missed.
        let mut seen = changes.seen();
        let mut left = hub.left.generation();
        let hub = Arc::clone(hub);
        crate::pool::spawn(async move {
            loop {
                if hub.subscribed_jobs().is_empty() {
                    hub.others_watched.store(false, Ordering::Release);
                    // One that came just now found the flag set: go on for it.
                    if hub.subscribed_jobs().is_empty()
                        || hub.others_watched.swap(true, Ordering::AcqRel)
                    {
                        return;
                    }
                }
                let woke = std::future::poll_fn(|cx| {
                    if let std::task::Poll::Ready(now) = changes.signal().poll_changed(seen, cx) {
                        return std::task::Poll::Ready((Some(now), None));
                    }
                    if let std::task::Poll::Ready(now) = hub.left.poll_changed(left, cx) {
                        return std::task::Poll::Ready((None, Some(now)));
                    }
                    std::task::Poll::Pending
                })
                .await;
                match woke {
                    (Some(now), _) => {
                        seen = now;
                        for job_id in hub.subscribed_jobs() {
                            hub.nudge(&job_id);
                        }
                    }
                    (_, Some(now)) => left = now,
                    _ => {}
                }
            }
        });
    }
}

/// One subscriber's end of the hub: what both faces of a subscription
/// ([`Subscription`] and the async event stream) read their live events from.
#[derive(Debug)]
pub(super) struct LiveFeed {
    pub(super) id: u64,
    pub(super) inbox: Inbox,
    overflowed: Arc<AtomicBool>,
    /// The bound of the inbox, and of what a drain moves into the cursor.
    buffer: usize,
}

/// What [`LiveFeed::drain`] found besides events.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Drained {
    /// The feed is open; it may be empty.
    Open,
    /// The hub closed the feed: the job was deleted or purged, and only the
    /// store can tell what is left of it.
    Closed,
}

impl LiveFeed {
    /// Hands every entry the feed holds to `cursor`, without waiting.
    ///
    /// It stops once the cursor holds as many events ahead as the buffer
    /// does: a subscriber that reads slower than events come then leaves them
    /// in its inbox, which fills, and catches up from the store instead of
    /// holding every event in memory.
    pub(super) fn drain(&self, cursor: &mut Cursor) -> Drained {
        self.hand_over(cursor, || self.inbox.try_recv())
    }

    /// As [`drain`](LiveFeed::drain), and leaves `waker` to be woken when
    /// the feed gets more (or closes), if it found it open and empty.
    #[cfg(feature = "async")]
    pub(super) fn drain_or_wake(&self, cursor: &mut Cursor, waker: &Waker) -> Drained {
        self.hand_over(cursor, || self.inbox.recv_or_wake(waker))
    }

    fn hand_over(
        &self,
        cursor: &mut Cursor,
        mut next: impl FnMut() -> Result<Feed, Nothing>,
    ) -> Drained {
        loop {
            if cursor.ahead.len() >= self.buffer {
                return Drained::Open;
            }
            match next() {
                Ok(Feed::Event(event)) => cursor.offer(event),
                // The flag it came with makes the next step read the store.
                Ok(Feed::CatchUp) => {}
                Err(Nothing::Closed) => return Drained::Closed,
                Err(Nothing::Empty | Nothing::TimedOut) => return Drained::Open,
            }
        }
    }

    /// Whether the subscriber owes itself a read of the store (its buffer
    /// overflowed, or a write's outcome is unknown); clears the debt, which
    /// [`owe_read`](LiveFeed::owe_read) restores if the read fails.
    pub(super) fn take_owed_read(&self) -> bool {
        self.overflowed.swap(false, Ordering::AcqRel)
    }

    /// Whether a read of the store is owed, without clearing it.
    #[cfg(feature = "async")]
    pub(super) fn owes_read(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    pub(super) fn owe_read(&self) {
        self.overflowed.store(true, Ordering::Release);
    }
}

/// Events in order from a sequence number on, without gaps or duplicates: the
/// part both [`Subscription`] and [`Follower`] share.
#[derive(Debug)]
pub(super) struct Cursor {
    pub(super) job_id: String,
    /// The sequence number of the next event to deliver.
    next_seq: u64,
    /// Events read or received ahead of `next_seq`.
    pub(super) ahead: BTreeMap<u64, Event>,
    /// The sequence number of the last event delivered, if it was terminal: the
    /// stream ends there unless the job moved on (a manual retry after `error`).
    terminal: Option<u64>,
    /// The job's next sequence number as of the last read of the store.
    known_next_seq: u64,
    pub(super) finished: bool,
}

impl Cursor {
    pub(super) fn new(job_id: &str, after: u64) -> Self {
        Cursor {
            job_id: job_id.to_owned(),
            next_seq: after.saturating_add(1),
            ahead: BTreeMap::new(),
            terminal: None,
            known_next_seq: 0,
            finished: false,
        }
    }

    /// Keeps `event` if it is not delivered yet.
    pub(super) fn offer(&mut self, event: Event) {
        if event.seq >= self.next_seq {
            self.ahead.insert(event.seq, event);
        }
    }

    /// The next event in order, if it is at hand.
    pub(super) fn take(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let event = self.ahead.remove(&self.next_seq)?;
        self.next_seq += 1;
        self.terminal = event.is_terminal().then_some(event.seq);
        self.settle(self.known_next_seq);
        Some(event)
    }

    /// Whether the last delivered event was terminal and nothing is known to
    /// follow it: only the store can say whether the stream ended.
    pub(super) fn needs_settling(&self) -> bool {
        !self.finished && self.terminal.is_some() && self.ahead.is_empty()
    }

    /// Ends the stream if the terminal event delivered last is the job's last
    /// event. A job moved on after `error` (a manual retry writes `requeued` in
    /// the same batch as its status) has later events, and the stream goes on.
    fn settle(&mut self, next_seq: u64) {
        if self.terminal.is_some_and(|seq| seq + 1 >= next_seq) && self.ahead.is_empty() {
            self.finished = true;
        }
    }

    /// The job's next sequence number as of the last read of the store.
    #[cfg(feature = "async")]
    pub(super) fn known_next_seq(&self) -> u64 {
        self.known_next_seq
    }

    /// Whether the live feed alone cannot carry the stream on: an event is
    /// missing before one at hand, or only the store can say whether the
    /// terminal event delivered last ends it.
    pub(super) fn is_stale(&self) -> bool {
        self.has_gap() || self.needs_settling()
    }

    /// Whether an event ahead of the next one is waiting: the next one is
    /// committed, and the store has it.
    pub(super) fn has_gap(&self) -> bool {
        !self.finished && !self.ahead.is_empty() && !self.ahead.contains_key(&self.next_seq)
    }

    /// Reads what the store has from `next_seq` on. Events the bound dropped are
    /// skipped: the sequence numbers jump, visibly.
    pub(super) fn catch_up<S: Store>(&mut self, jobs: &JobState<S>) -> Result<()> {
        let page = jobs.events_since(&self.job_id, self.next_seq - 1)?;
        if page.dropped > 0 {
            self.next_seq += page.dropped;
            // Events held ahead that the jump passed are dropped too: kept,
            // they would stand for a gap forever, and the stream would
            // never settle after its terminal event.
            self.ahead = self.ahead.split_off(&self.next_seq);
        }
        for event in page.events {
            self.offer(event);
        }
        self.known_next_seq = page.next_seq;
        self.settle(page.next_seq);
        Ok(())
    }

    /// Learns whether the event a stream resumes after (the client's last seen
    /// one) was terminal, when nothing follows it: a client that reconnects
    /// after `done` must be told the stream ended, not wait for an event that
    /// will never come. A job moved on after `error` has later events and goes
    /// on.
    ///
    /// A resume point past the job's last event (an id the client made up, or
    /// kept from an earlier job of the same id) is taken as the last event if
    /// that event ends the stream, which then ends at once. Past the last
    /// event of a job that goes on, it is refused: the client cannot have
    /// seen those events, and going on from the last one would hide the
    /// events it missed. Called right after a [`catch_up`](Cursor::catch_up),
    /// which learned the job's next sequence number.
    pub(super) fn resume<S: Store>(&mut self, jobs: &JobState<S>) -> Result<()> {
        let asked = self.next_seq - 1;
        let past_the_end = self.ahead.is_empty() && self.next_seq > self.known_next_seq;
        if past_the_end {
            self.next_seq = self.known_next_seq.max(1);
        }
        let after = self.next_seq - 1;
        let job_id = self.job_id.clone();
        let refuse = move || {
            Error::InvalidArgument(format!(
                "resume point {asked} is past the last event ({after}) of job {job_id}, \
                 which goes on: resume from an event the job has"
            ))
        };
        if after == 0 || !self.ahead.is_empty() || self.terminal.is_some() {
            return if past_the_end { Err(refuse()) } else { Ok(()) };
        }
        let page = jobs.events_since(&self.job_id, after - 1)?;
        // An event the bound dropped is not known to be terminal: the stream
        // stays open, as for any other.
        if page
            .events
            .first()
            .is_some_and(|event| event.seq == after && event.is_terminal())
        {
            self.terminal = Some(after);
            self.known_next_seq = page.next_seq;
            self.settle(page.next_seq);
        }
        if past_the_end && !self.finished {
            return Err(refuse());
        }
        Ok(())
    }
}

/// What a bounded wait for a job's next event found: from
/// [`Subscription::next_event_timeout`] and [`Follower::next_event_timeout`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum NextEvent {
    /// The next event of the stream.
    Event(Event),
    /// The stream is over: its terminal event was delivered before (or the
    /// job's live feed was closed and the store holds nothing more of it).
    Finished,
    /// No event came within the wait; the stream goes on.
    TimedOut,
}

/// A live stream of one job's events in this process, from
/// [`JobState::subscribe`]: first the stored events after the chosen sequence
/// number, then live ones, each once and in order, ending after the job's
/// terminal event. Dropping it unsubscribes.
///
/// Writers never wait for subscribers: each has a bounded buffer, and one that
/// falls behind catches up from the store. A subscriber that panics only drops
/// its own subscription.
#[derive(Debug)]
pub struct Subscription<S: Store> {
    jobs: JobState<S>,
    feed: LiveFeed,
    cursor: Cursor,
    replayed: bool,
}

impl<S: Store> Subscription<S> {
    /// The next event, waiting for it if need be; `None` after the terminal event.
    ///
    /// # Errors
    /// Store errors while catching up: after its buffer overflowed, or when a
    /// write of the job ended with its outcome unknown, the subscription reads
    /// the store, which may be down. It stays usable, and still owes itself
    /// that read: call again to retry.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        match self.wait(None)? {
            NextEvent::Event(event) => Ok(Some(event)),
            // A wait without a deadline does not time out.
            NextEvent::Finished | NextEvent::TimedOut => Ok(None),
        }
    }

    /// The next event, waiting at most `timeout` for it: so that a thread
    /// serving a client (an SSE response, say) can look up between events,
    /// to send a keep-alive or notice that the client went away. The wait is
    /// in real time, as the live feed is, not on the job state's clock. It
    /// bounds the wait for an event; a read of the store it makes to catch up
    /// is bounded by the store (a `PgStore`'s call deadline, say).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use jobsafe::jobs::{JobState, NewJob, NextEvent};
    /// use jobsafe::{ManualClock, MemStore};
    ///
    /// let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    /// let job = jobs.create(NewJob::new("report"))?;
    /// let mut events = jobs.subscribe(&job.id, job.events.next_seq - 1)?;
    /// // Nothing happened yet: the wait ends, the stream goes on.
    /// assert_eq!(events.next_event_timeout(Duration::ZERO)?, NextEvent::TimedOut);
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`next_event`](Subscription::next_event).
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<NextEvent> {
        // A timeout too long to add is no deadline.
        self.wait(Instant::now().checked_add(timeout))
    }

    /// The next event, waiting for it until `deadline` (`None`: for as long
    /// as it takes).
    fn wait(&mut self, deadline: Option<Instant>) -> Result<NextEvent> {
        loop {
            if let Some(event) = self.step()? {
                return Ok(NextEvent::Event(event));
            }
            if self.cursor.finished {
                return Ok(NextEvent::Finished);
            }
            match self.feed.inbox.recv_until(deadline) {
                Ok(Feed::Event(event)) => self.cursor.offer(event),
                // The flag it came with makes the next step read the store.
                Ok(Feed::CatchUp) => {}
                Err(Nothing::TimedOut | Nothing::Empty) => return Ok(NextEvent::TimedOut),
                // The job was deleted or purged: the store says so.
                Err(Nothing::Closed) => {
                    self.cursor.catch_up(&self.jobs)?;
                    if self.cursor.ahead.is_empty() {
                        return Ok(NextEvent::Finished);
                    }
                }
            }
        }
    }

    /// The next event if one is at hand, without waiting.
    ///
    /// # Errors
    /// As [`next_event`](Subscription::next_event).
    pub fn try_next_event(&mut self) -> Result<Option<Event>> {
        loop {
            if let Some(event) = self.step()? {
                return Ok(Some(event));
            }
            match self.feed.inbox.try_recv() {
                Ok(Feed::Event(event)) => self.cursor.offer(event),
                // The flag it came with makes the next step read the store.
                Ok(Feed::CatchUp) => {}
                Err(Nothing::Empty | Nothing::Closed | Nothing::TimedOut) => return Ok(None),
            }
        }
    }

    /// Whether the terminal event was delivered.
    pub fn is_finished(&self) -> bool {
        self.cursor.finished
    }

    /// Delivers what is at hand, catching up from the store first when the live
    /// feed cannot be trusted.
    ///
    /// Everything the live feed holds is taken first: whether a terminal
    /// event ends the stream depends on what follows it, and an event that
    /// follows (`requeued` after `error`) may already be waiting there.
    fn step(&mut self) -> Result<Option<Event>> {
        // A closed feed is seen by the wait, which reads the store then.
        self.feed.drain(&mut self.cursor);
        let owed = self.feed.take_owed_read();
        if !self.replayed || owed || self.cursor.is_stale() {
            if let Err(e) = self.cursor.catch_up(&self.jobs) {
                // Still owed a read of the store: the next call tries again.
                if owed {
                    self.feed.owe_read();
                }
                return Err(e);
            }
            self.replayed = true;
        }
        Ok(self.cursor.take())
    }
}

impl<S: Store> Drop for Subscription<S> {
    fn drop(&mut self) {
        self.jobs.hub.remove(&self.cursor.job_id, self.feed.id);
    }
}

/// A job's event stream read by watching the store, for another process (an
/// operator tool, say): the same events, once each and in order, as a
/// [`Subscription`] gets. From [`JobState::follow`].
#[derive(Debug)]
pub struct Follower<S: Store> {
    jobs: JobState<S>,
    cursor: Cursor,
    poll_every: Duration,
}

impl<S: Store> Follower<S> {
    /// The events stored since the last call, without waiting.
    ///
    /// # Errors
    /// [`Error::JobNotFound`](crate::Error::JobNotFound); store errors.
    pub fn poll(&mut self) -> Result<Vec<Event>> {
        self.cursor.catch_up(&self.jobs)?;
        let mut events = Vec::new();
        while let Some(event) = self.cursor.take() {
            events.push(event);
        }
        Ok(events)
    }

    /// The next event, reading the store every `poll_every` of the job state's
    /// clock until there is one; `None` after the terminal event.
    ///
    /// # Errors
    /// As [`poll`](Follower::poll).
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        match self.wait(None)? {
            NextEvent::Event(event) => Ok(Some(event)),
            // A wait without a deadline does not time out.
            NextEvent::Finished | NextEvent::TimedOut => Ok(None),
        }
    }

    /// The next event, reading the store every `poll_every` for at most
    /// `timeout` of the job state's clock (the last read at the end of it).
    ///
    /// # Errors
    /// As [`poll`](Follower::poll).
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<NextEvent> {
        let deadline = self.jobs.clock.now_ms().saturating_add(millis(timeout));
        self.wait(Some(deadline))
    }

    /// The next event, reading the store until the clock reads `deadline`
    /// (`None`: for as long as it takes).
    fn wait(&mut self, deadline: Option<u64>) -> Result<NextEvent> {
        loop {
            if let Some(event) = self.cursor.take() {
                return Ok(NextEvent::Event(event));
            }
            if self.cursor.finished {
                return Ok(NextEvent::Finished);
            }
            self.cursor.catch_up(&self.jobs)?;
            if !self.cursor.ahead.is_empty() || self.cursor.finished {
                continue;
            }
            let pause = match deadline {
                None => self.poll_every,
                Some(deadline) => {
                    let left = deadline.saturating_sub(self.jobs.clock.now_ms());
                    if left == 0 {
                        return Ok(NextEvent::TimedOut);
                    }
                    self.poll_every.min(Duration::from_millis(left))
                }
            };
            self.jobs.clock.sleep(pause);
        }
    }

    /// Whether the terminal event was delivered.
    pub fn is_finished(&self) -> bool {
        self.cursor.finished
    }
}

impl<S: Store> JobState<S> {
    /// Subscribes to job `id`'s events after sequence number `after` (0: from the
    /// start): the stored ones first, then live ones as they are appended in this
    /// process. Resuming after the job's terminal event (a client that saw
    /// `done` and reconnects) gives a stream that is already finished. An
    /// `after` past the job's last event gives a finished stream if that
    /// event ends the job's stream, and is refused otherwise.
    ///
    /// Live events come from appends made through this `JobState` or its clones
    /// (give every part of a process the same one), and from other writers'
    /// appends where the store tells of them
    /// ([`Store::changes_by_others`]: a
    /// shared `LogStore` and a `DirStore` on Linux, `PgStore` everywhere), which the subscription then reads from
    /// the store, in order, with no gap or duplicate. Where the store cannot
    /// tell, another process's appends reach it only at its next own
    /// catch-up: use [`follow`](JobState::follow) for those.
    ///
    /// # Errors
    /// [`Error::JobNotFound`];
    /// [`Error::InvalidArgument`] for an
    /// `after` past the last event of a job whose stream goes on (an SSE
    /// server answers 400: the client starts again from 0); store errors.
    pub fn subscribe(&self, id: &str, after: u64) -> Result<Subscription<S>> {
        // Register before reading the store, so that nothing appended in between
        // is missed; duplicates are dropped by sequence number.
        let mut subscription = Subscription {
            jobs: self.clone(),
            feed: self.hub.add(id, self.subscriber_buffer),
            cursor: Cursor::new(id, after),
            replayed: false,
        };
        self.watch_others();
        subscription.cursor.catch_up(self)?;
        subscription.cursor.resume(self)?;
        subscription.replayed = true;
        Ok(subscription)
    }

    /// Follows job `id`'s events after sequence number `after` by reading the
    /// store every `poll_every`: the same stream as
    /// [`subscribe`](JobState::subscribe), for another process, `after` past
    /// the last event included.
    ///
    /// # Errors
    /// As [`subscribe`](JobState::subscribe), and
    /// [`Error::InvalidArgument`] for a `poll_every` under 1 ms, the clocks'
    /// resolution, which would read the store without pause.
    pub fn follow(&self, id: &str, after: u64, poll_every: Duration) -> Result<Follower<S>> {
        check_poll_interval(poll_every)?;
        let mut follower = Follower {
            jobs: self.clone(),
            cursor: Cursor::new(id, after),
            poll_every,
        };
        follower.cursor.catch_up(self)?;
        follower.cursor.resume(self)?;
        Ok(follower)
    }
}

/// Refuses a follower's poll interval under the clocks' resolution of 1 ms:
/// it would read the store without pause.
pub(super) fn check_poll_interval(poll_every: Duration) -> Result<()> {
    // Clocks count whole milliseconds: a shorter pause is none at all.
    if poll_every < Duration::from_millis(1) {
        return Err(Error::InvalidArgument(format!(
            "a follower's poll interval must be at least 1 ms, the clock's resolution \
             (a shorter one would read the store without pause): {poll_every:?}"
        )));
    }
    Ok(())
}
