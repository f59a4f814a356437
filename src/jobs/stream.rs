//! The async face of live events: [`AsyncSubscription`] and [`AsyncFollower`],
//! `Stream`s that hold no thread while they wait.
//!
//! They deliver what their blocking twins deliver ([`Subscription`](super::Subscription),
//! [`Follower`](super::Follower)), from the same [`Cursor`]: the stored events
//! first, then live ones, each once and in order, ending after the terminal
//! event. Only the waiting differs. A subscription waits on its waker, which
//! the hub wakes after each send (the hub is the one watcher of its
//! `JobState`, and fans out to every subscriber); a follower waits for the
//! job state's one poll loop (`watch`) to see its job move. Reads of the
//! store run on the crate's [pool](crate::pool).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use super::live::{Cursor, Drained, LiveFeed};
use super::watch::Ticket;
use super::{Event, JobState};
use crate::error::Result;
use crate::pool::{self, Blocking};
use crate::store::Store;

/// A read of the store on the pool: the cursor travels with it and comes back.
type Reading = Blocking<(Cursor, Result<()>)>;

/// Reads what the store has for `cursor`'s job on the pool; with `resume`,
/// also learns where a resumed stream stands (see `Cursor::resume`).
fn read<S: Store + 'static>(jobs: &JobState<S>, mut cursor: Cursor, resume: bool) -> Reading {
    let jobs = jobs.clone();
    pool::run(move || {
        let mut outcome = cursor.catch_up(&jobs);
        if resume && outcome.is_ok() {
            outcome = cursor.resume(&jobs);
        }
        (cursor, outcome)
    })
}

/// A job's events as a `Stream`, live from this process: the async face of
/// [`Subscription`](super::Subscription), from
/// [`AsyncJobState::subscribe`](super::AsyncJobState::subscribe).
///
/// It yields the stored events after the chosen sequence number, then live
/// ones as they are appended through the same `JobState` (or a clone), each
/// once and in order, and ends after the job's terminal event. While it waits
/// it holds no thread: ten thousand streams waiting cost ten thousand small
/// buffers, not threads. Writers never wait for it; one that falls behind its
/// buffer catches up from the store.
///
/// An item is an error when a read of the store fails (after an overflow, or
/// when a write's outcome is unknown): the stream stays usable and still owes
/// itself that read, so polling again retries it. Dropping it unsubscribes.
pub struct AsyncSubscription<S: Store> {
    jobs: JobState<S>,
    job_id: String,
    feed: LiveFeed,
    /// `None` while a read of the store holds it.
    cursor: Option<Cursor>,
    reading: Option<Reading>,
    /// The read under way was owed after an overflow: owed again if it fails.
    reading_owed: bool,
    /// The hub closed the feed, and the store has been read since (or said
    /// the job is gone): what the cursor holds is all there is.
    closed: bool,
    /// The read under way is the one after the feed closed.
    reading_after_close: bool,
}

impl<S: Store + 'static> AsyncSubscription<S> {
    pub(super) async fn start(jobs: JobState<S>, id: &str, after: u64) -> Result<Self> {
        // Registered before the store is read, so that nothing appended in
        // between is missed; duplicates are dropped by sequence number.
        // The subscription owns the feed from here: this future dropped at
        // any await below unsubscribes it.
        let feed = jobs.hub.add(id, jobs.subscriber_buffer);
        let mut subscription = AsyncSubscription {
            jobs,
            job_id: id.to_owned(),
            feed,
            cursor: None,
            reading: None,
            reading_owed: false,
            closed: false,
            reading_after_close: false,
        };
        // Setting up the store's watch may list and watch directories (a
        // `DirStore`'s): on the pool, not on the thread that polls. Once it
        // runs, later subscribers find it and go to the pool for nothing.
        if !subscription.jobs.hub.others_are_watched() {
            let watching = subscription.jobs.clone();
            crate::pool::run(move || watching.watch_others()).await;
        }
        let (cursor, outcome) = read(&subscription.jobs, Cursor::new(id, after), true).await;
        subscription.cursor = Some(cursor);
        outcome?;
        Ok(subscription)
    }

    /// The next event; `None` after the terminal event. The `Stream`'s
    /// `poll_next`, as an `async fn`.
    ///
    /// # Errors
    /// As [`Subscription::next_event`](super::Subscription::next_event).
    pub async fn next_event(&mut self) -> Result<Option<Event>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }

    /// Whether the terminal event was delivered.
    pub fn is_finished(&self) -> bool {
        self.cursor.as_ref().is_some_and(|cursor| cursor.finished)
    }
}

impl<S: Store + 'static> Stream for AsyncSubscription<S> {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        let this = self.get_mut();
        loop {
            if let Some(reading) = this.reading.as_mut() {
                let Poll::Ready((cursor, outcome)) = Pin::new(reading).poll(cx) else {
                    return Poll::Pending;
                };
                this.reading = None;
                this.cursor = Some(cursor);
                let after_close = std::mem::take(&mut this.reading_after_close);
                // The store had its last word after the feed closed, unless
                // it could not answer: then the next poll asks again.
                if after_close && settles(&outcome) {
                    this.closed = true;
                }
                if let Err(e) = outcome {
                    let owed = std::mem::take(&mut this.reading_owed);
                    if matches!(e, crate::Error::JobNotFound { .. }) {
                        // Deleted, here or by another process: the store's
                        // last word, as after a closed feed. Owed again, the
                        // read would fail at every poll, without end.
                        this.closed = true;
                        if let Some(cursor) = this.cursor.as_mut() {
                            cursor.finished = true;
                        }
                    } else if owed {
                        this.feed.owe_read();
                    }
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(cursor) = this.cursor.as_mut() else {
                return Poll::Ready(None); // unreachable: a cursor is out only while read
            };
            let drained = this.feed.drain(cursor);
            let owed = this.feed.take_owed_read();
            if owed || cursor.is_stale() {
                this.start_reading(owed);
                continue;
            }
            if let Some(event) = cursor.take() {
                return Poll::Ready(Some(Ok(event)));
            }
            if cursor.finished {
                return Poll::Ready(None);
            }
            if drained == Drained::Closed {
                if this.closed {
                    // Read since the feed closed, and nothing came: the job
                    // was deleted or purged. The store had the last word.
                    cursor.finished = true;
                    return Poll::Ready(None);
                }
                this.start_reading(false);
                this.reading_after_close = true;
                continue;
            }
            // Looks once more, leaving the waker if there is nothing, under the
            // feed's lock: a send after it wakes us.
            let drained = this.feed.drain_or_wake(cursor, cx.waker());
            if drained == Drained::Closed || !cursor.ahead.is_empty() || this.feed.owes_read() {
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl<S: Store + 'static> AsyncSubscription<S> {
    fn start_reading(&mut self, owed: bool) {
        if let Some(cursor) = self.cursor.take() {
            self.reading_owed = owed;
            self.reading = Some(read(&self.jobs, cursor, false));
        }
    }
}

impl<S: Store> Drop for AsyncSubscription<S> {
    fn drop(&mut self) {
        self.jobs.hub.remove(&self.job_id, self.feed.id);
    }
}

impl<S: Store> fmt::Debug for AsyncSubscription<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSubscription")
            .field("cursor", &self.cursor)
            .field("reading", &self.reading.is_some())
            .finish_non_exhaustive()
    }
}

/// A job's events as a `Stream`, read by watching the store: the async face
/// of [`Follower`](super::Follower), for events written by another process,
/// from [`AsyncJobState::follow`](super::AsyncJobState::follow). The same
/// events, once each and in order, as a subscription gets.
///
/// It holds no thread while it waits, and costs the store nothing of its
/// own: one poll loop per job state reads the record of each followed job
/// once every `poll_every` (the shortest its followers ask for), however many
/// follow it, and wakes the followers of the jobs that moved, which then read
/// their new events.
pub struct AsyncFollower<S: Store> {
    jobs: JobState<S>,
    cursor: Option<Cursor>,
    poll_every: Duration,
    reading: Option<Reading>,
    ticket: Ticket,
    /// Registered with the watch, and not woken since.
    waiting: bool,
}

impl<S: Store + 'static> AsyncFollower<S> {
    pub(super) async fn start(
        jobs: JobState<S>,
        id: &str,
        after: u64,
        poll_every: Duration,
    ) -> Result<Self> {
        super::live::check_poll_interval(poll_every)?;
        let (cursor, outcome) = read(&jobs, Cursor::new(id, after), true).await;
        outcome?;
        let ticket = jobs.hub.watch.ticket(id);
        Ok(AsyncFollower {
            jobs,
            cursor: Some(cursor),
            poll_every,
            reading: None,
            ticket,
            waiting: false,
        })
    }

    /// The next event; `None` after the terminal event. The `Stream`'s
    /// `poll_next`, as an `async fn`.
    ///
    /// # Errors
    /// As [`Follower::poll`](super::Follower::poll).
    pub async fn next_event(&mut self) -> Result<Option<Event>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }

    /// Whether the terminal event was delivered.
    pub fn is_finished(&self) -> bool {
        self.cursor.as_ref().is_some_and(|cursor| cursor.finished)
    }
}

impl<S: Store + 'static> Stream for AsyncFollower<S> {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        let this = self.get_mut();
        loop {
            if this.waiting {
                if this.jobs.hub.watch.still_waiting(&this.ticket, cx.waker()) {
                    // Not woken by the watch: it wakes this waker.
                    return Poll::Pending;
                }
                this.waiting = false;
                if let Some(cursor) = this.cursor.take() {
                    this.reading = Some(read(&this.jobs, cursor, false));
                }
            }
            if let Some(reading) = this.reading.as_mut() {
                let Poll::Ready((cursor, outcome)) = Pin::new(reading).poll(cx) else {
                    return Poll::Pending;
                };
                this.reading = None;
                this.cursor = Some(cursor);
                if let Err(e) = outcome {
                    // The next poll waits for the watch again.
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(cursor) = this.cursor.as_mut() else {
                return Poll::Ready(None); // unreachable: a cursor is out only while read
            };
            if let Some(event) = cursor.take() {
                return Poll::Ready(Some(Ok(event)));
            }
            if cursor.finished {
                return Poll::Ready(None);
            }
            let known = cursor.known_next_seq();
            this.jobs
                .hub
                .watch
                .wait(&this.jobs, &this.ticket, known, this.poll_every, cx.waker());
            this.waiting = true;
        }
    }
}

impl<S: Store> Drop for AsyncFollower<S> {
    fn drop(&mut self) {
        self.jobs.hub.watch.forget(&self.ticket);
    }
}

impl<S: Store> fmt::Debug for AsyncFollower<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncFollower")
            .field("cursor", &self.cursor)
            .field("poll_every", &self.poll_every)
            .finish_non_exhaustive()
    }
}

/// Whether a read's outcome settles what a closed feed left open: it
/// succeeded, or the job is gone.
fn settles(outcome: &Result<()>) -> bool {
    match outcome {
        Ok(()) => true,
        Err(e) => matches!(e, crate::Error::JobNotFound { .. }),
    }
}
