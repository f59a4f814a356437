//! Durable job records: use [`JobState`] when a request starts work that must
//! survive a restart, report its progress, and end exactly once.
//!
//! A request handler [`create`](JobState::create)s a job and returns its id at
//! once; a worker [`start`](JobState::start)s it, which gives the worker a
//! [`Claim`] on that attempt, and passes the claim to every change it makes.
//! Clients read the [`ClientJob`] view (never the internal error message) or
//! stream the job's [`Event`]s with [`subscribe`](JobState::subscribe) (in this
//! process) or [`follow`](JobState::follow) (from another), resuming from a
//! sequence number. [`recover`](JobState::recover) requeues or fails jobs whose
//! worker died; [`purge`](JobState::purge) removes old ones.
//!
//! For staged work with artifacts and retries, [`Pipeline`](crate::Pipeline)
//! drives a `JobState` for you.

#[cfg(feature = "async")]
mod async_face;
mod events;
mod inbox;
mod live;
mod maintenance;
mod open;
mod record;
#[cfg(feature = "async")]
mod stream;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;
mod transitions;
#[cfg(feature = "async")]
mod watch;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use async_face::AsyncJobState;
pub use events::EventPage;
pub use live::{Follower, NextEvent, Subscription};
pub use maintenance::{PurgeCounts, RecoveryAction};
pub use record::{ClientError, ClientJob, Event, EventWindow, Job, JobError, JobStatus};
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use stream::{AsyncFollower, AsyncSubscription};
pub use transitions::FailureKind;

/// The old name of [`Claim`].
#[deprecated(
    since = "0.2.0",
    note = "renamed to `Claim`: a claim on one attempt of a job"
)]
pub type Worker = Claim;

/// The old name of [`FailureKind`].
#[deprecated(since = "0.2.0", note = "renamed to `FailureKind`")]
pub type Failure = FailureKind;

/// The old name of [`RecoveryAction`].
#[deprecated(since = "0.2.0", note = "renamed to `RecoveryAction`")]
pub type Recovery = RecoveryAction;

use self::live::Hub;
use crate::attempt::AttemptId;
use crate::clock::SharedClock;
use crate::drive::{self, Blocking, Drive};
use crate::error::{Error, Result};
use crate::fencing::FencingToken;
use crate::key::{Key, Prefix};
use crate::limits;
use crate::record::{self as codec, Extra, Metadata};
use crate::resolve::{self, Deadline, LateWrite, may_have_landed};
use crate::store::{Applied, Batch, BatchOp, Expect, SCAN_PAGE, Store, Version};

/// Durable job records: what a request handler creates and returns the id of at
/// once, what a worker moves through its stages, and what clients poll or stream.
///
/// Every change is one compare-and-set transition, checked against the job's
/// status: complete and cancelled are final; a transient failure puts the job
/// back in the queue with a retry time; a permanent failure is final until
/// [`retry`](JobState::retry). A worker acts through the [`Claim`] that
/// [`start`](JobState::start) gave it, and a worker whose attempt was superseded,
/// or whose fencing token is older than the job has seen, is refused
/// ([`Error::StaleWorker`]) instead of overwriting newer state.
///
/// Each job has a durable, bounded log of [`Event`]s with sequence numbers. The
/// terminal events (`done` with the result exactly as given, `error` with the
/// client message, `cancelled`) are written by the transitions themselves, in
/// the same atomic batch as the status: no crash leaves one without the other.
/// [`subscribe`](JobState::subscribe) replays from a sequence number and then
/// follows live in this process; [`follow`](JobState::follow) does the same from
/// another process by watching the store.
///
/// # When the store fails to say
///
/// A store call that fails transiently may still have made its change (on
/// [`PgStore`](crate::PgStore) the commit may have happened and only its
/// reply been lost). Every write of a job carries a write id, in the record
/// and in each event it appends, and a write whose store call failed so is
/// read back until the [`resolve_within`](JobStateBuilder::resolve_within)
/// deadline:
///
/// - landed: the call returns what it wrote. Its events are appended once,
///   and published once to this process's subscribers. The job it returns is
///   the job read back: if another writer changed it in between, it is newer
///   than the write, and its [`last_event_seq`](Job::last_event_seq) is past
///   the write's event (which [`append_event`](JobState::append_event) and
///   [`start`](JobState::start) still return).
/// - not landed: the change is decided again on the job as it is and written
///   again, three writes in all at most; the new compare-and-set fences the
///   failed write off, should it still arrive. Then the failure is returned,
///   transient, and nothing was written; or, if the store could not rule out
///   that the failed write lands later (a [`PgStore`](crate::PgStore) that
///   could not end its session), [`Error::Ambiguous`].
/// - unknown: the store stayed unreachable until the deadline (or the job
///   moved on so far that its log no longer holds the write's event): the
///   call fails with [`Error::Ambiguous`], and hands nothing over itself: it
///   tells this process's subscribers of the job to read the store, so that
///   each gets the write's events (if it landed) as soon as the store can be
///   read, rather than at the job's next event. A write that lands only after
///   that (one a [`PgStore`](crate::PgStore) could not fence) reaches them
///   at their next catch-up.
///
/// [`create`](JobState::create) and [`start`](JobState::start) can be
/// repeated after an ambiguous error: give them an attempt id
/// ([`NewJob::attempt`], [`start_attempt`](JobState::start_attempt)), and a
/// repeat with the same id returns what the first call did if it landed.
/// After an ambiguous error from a worker's change, read the job or its
/// events before trying the change again. A heartbeat, which appends no
/// event, is taken as not landed if the job changed since: written again,
/// it does the same. [`delete`](JobState::delete),
/// [`purge`](JobState::purge) and the [`Pipeline`](crate::Pipeline)'s
/// removals do not read back: their failure is returned as it came, and the
/// job may be gone.
///
/// ```
/// use std::sync::Arc;
/// use jobsafe::{JobState, ManualClock, MemStore};
/// use jobsafe::jobs::{JobStatus, NewJob};
///
/// let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
/// let job = jobs.create(NewJob::new("transcribe").owner("inst-7"))?;
/// // The request returns job.id at once; a worker picks it up.
/// let worker = jobs.start(&job.id, None)?;
/// jobs.set_stage(&worker, "download")?;
/// jobs.progress(&worker, "42%")?;
/// jobs.complete(&worker, serde_json::json!({"title": "Episode 12"}))?;
///
/// let done = jobs.get(&job.id)?.expect("still there");
/// assert_eq!(done.status, JobStatus::Complete);
/// let events = jobs.events_since(&job.id, 0)?.events;
/// assert_eq!(events.last().map(|e| e.kind.as_str()), Some("done"));
/// // The done event carries the result exactly as given.
/// assert_eq!(events.last().unwrap().data["title"], "Episode 12");
/// # Ok::<(), jobsafe::Error>(())
/// ```
pub struct JobState<S> {
    store: Arc<S>,
    clock: SharedClock,
    namespace: Arc<Prefix>,
    max_events: u64,
    subscriber_buffer: usize,
    resolve_within: Duration,
    hub: Arc<Hub>,
    /// Whether this handle has seen the index of open jobs built (see
    /// `open`): shared by its clones.
    open_index_built: Arc<AtomicBool>,
}

impl<S> Clone for JobState<S> {
    fn clone(&self) -> Self {
        JobState {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            namespace: Arc::clone(&self.namespace),
            max_events: self.max_events,
            subscriber_buffer: self.subscriber_buffer,
            resolve_within: self.resolve_within,
            hub: Arc::clone(&self.hub),
            open_index_built: Arc::clone(&self.open_index_built),
        }
    }
}

impl<S> std::fmt::Debug for JobState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState")
            .field("namespace", &self.namespace)
            .field("max_events", &self.max_events)
            .field("resolve_within", &self.resolve_within)
            .finish_non_exhaustive()
    }
}

/// What [`JobState::create`] needs to know.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewJob {
    id: Option<String>,
    kind: String,
    owner: Option<String>,
    metadata: Metadata,
    attempt: Option<AttemptId>,
}

impl NewJob {
    /// A job of `kind`, with a fresh id.
    pub fn new(kind: impl Into<String>) -> Self {
        NewJob {
            kind: kind.into(),
            ..NewJob::default()
        }
    }

    /// Uses `id` instead of a fresh one (a client-chosen id, say); creating a job
    /// whose id exists is a conflict, unless this create is the one that
    /// created it (see [`attempt`](NewJob::attempt)).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Names this create, so that repeating it is recognised as the same
    /// call: a create that finds the job it would create already made by the
    /// same attempt id returns that job (as it is now, started or finished
    /// since, maybe) instead of a conflict. Repeat a create that failed with
    /// an [ambiguous](crate::Error::is_ambiguous) error with the id it
    /// carries ([`Error::attempt_id`](crate::Error::attempt_id)).
    ///
    /// Without an [`id`](NewJob::id), the job's id is the attempt id, so the
    /// repeat names the same job. Never reuse an attempt id for another
    /// create. Default: a fresh id per call (which is then the job's id too,
    /// unless one was chosen).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::{AttemptId, JobState, ManualClock, MemStore};
    /// use jobsafe::jobs::NewJob;
    ///
    /// let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::default()));
    /// let attempt = AttemptId::new();
    /// let first = jobs.create(NewJob::new("export").attempt(attempt.clone()))?;
    /// assert_eq!(first.id, attempt.as_str());
    /// // Its reply was lost, say, and the caller asks again with the same id.
    /// let again = jobs.create(NewJob::new("export").attempt(attempt))?;
    /// assert_eq!(again, first);
    /// // Another create of that id is a conflict.
    /// assert!(jobs.create(NewJob::new("export").id(&first.id)).unwrap_err().is_conflict());
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    pub fn attempt(mut self, attempt: AttemptId) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// Whose job it is.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Adds a metadata field (for operators; not in the client view).
    pub fn meta(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    /// Whether a metadata field `name` was added.
    pub(crate) fn has_meta(&self, name: &str) -> bool {
        self.metadata.contains_key(name)
    }
}

/// A worker's claim on one attempt of a job, from [`JobState::start`]. Pass it
/// to every change the worker makes: a claim whose attempt was superseded, or
/// whose fencing token is older than the job has seen, is refused with
/// [`Error::StaleWorker`]. Serializable, to hand to another thread or process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Claim {
    /// The job.
    pub job_id: String,
    /// The attempt this claim is for.
    pub attempt: u32,
    /// The fencing token it started with, if any.
    pub token: Option<FencingToken>,
    /// The sequence number of the `started` event that began this attempt: the
    /// attempt's events are those from it on. `None` if unknown (a claim made
    /// with [`Claim::new`], or serialized by jobsafe 0.1).
    #[serde(default)]
    pub started_seq: Option<u64>,
}

impl Claim {
    /// A claim on `attempt` of job `job_id`, for a worker that kept these
    /// numbers itself (a serialized claim can also be deserialized).
    pub fn new(job_id: impl Into<String>, attempt: u32, token: Option<FencingToken>) -> Self {
        Claim {
            job_id: job_id.into(),
            attempt,
            token,
            started_seq: None,
        }
    }
}

fn default_namespace() -> Prefix {
    Prefix::new(["jobs"]).unwrap_or_default()
}

/// Most events a record may claim to hold: a window wider than this is damage, not
/// history, and is reported rather than walked.
const MAX_EVENT_SPAN: u64 = 1 << 24;

fn check_window(key: &Key, window: EventWindow) -> Result<()> {
    let span = window.next_seq.checked_sub(window.first_seq);
    if window.first_seq == 0 || span.is_none_or(|span| span > MAX_EVENT_SPAN) {
        return Err(Error::Corrupt {
            key: key.clone(),
            path: None,
            reason: format!(
                "event window {}..{} is not a valid range of sequence numbers",
                window.first_seq, window.next_seq
            ),
        });
    }
    Ok(())
}

/// Which jobs [`JobState::list`] returns: every job by default.
///
/// ```
/// use jobsafe::jobs::{JobFilter, JobStatus};
///
/// let failed_exports = JobFilter::new().status(JobStatus::Failed).kind("export");
/// assert_eq!(failed_exports.owner, None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobFilter {
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs of this owner.
    pub owner: Option<String>,
}

impl JobFilter {
    /// Every job.
    pub fn new() -> Self {
        JobFilter::default()
    }

    /// Only jobs with `status`.
    pub fn status(mut self, status: JobStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only jobs of `kind`.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Only jobs of `owner`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    fn matches(&self, job: &Job) -> bool {
        self.status.is_none_or(|s| s == job.status)
            && self.kind.as_ref().is_none_or(|k| *k == job.kind)
            && self
                .owner
                .as_ref()
                .is_none_or(|o| job.owner.as_ref() == Some(o))
    }
}

/// Jobs found by [`JobState::list`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct JobList {
    /// The jobs, in id order.
    pub jobs: Vec<Job>,
    /// Records that could not be read, with the error for each.
    pub unreadable: Vec<(Key, Error)>,
}

impl JobState<()> {
    /// Events kept per job unless [`JobStateBuilder::max_events`] says otherwise;
    /// older ones are dropped.
    pub const DEFAULT_MAX_EVENTS: u64 = 1000;

    /// The most events a job can keep ([`JobStateBuilder::max_events`]):
    /// 2^24. A record whose window of events is wider is taken as damaged
    /// when read, so that a damaged count cannot make a read walk billions
    /// of event keys.
    pub const MAX_EVENTS_KEPT: u64 = MAX_EVENT_SPAN;

    /// Live events buffered per subscriber unless
    /// [`JobStateBuilder::subscriber_buffer`] says otherwise; past it the
    /// subscriber catches up from the store.
    pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 256;

    /// How long a call keeps re-reading a job whose write failed in a way
    /// that may hide its success, by default: 10 s. See
    /// [`JobStateBuilder::resolve_within`].
    pub const DEFAULT_RESOLVE_WITHIN: Duration = resolve::DEFAULT_RESOLVE_WITHIN;
}

/// Options for a [`JobState`], from [`JobState::builder`].
///
/// ```
/// use std::sync::Arc;
/// use jobsafe::{JobState, Key, ManualClock, MemStore, Prefix};
///
/// let jobs = JobState::builder(MemStore::new(), Arc::new(ManualClock::default()))
///     .namespace(Prefix::new(["relay", "jobs"])?)
///     .max_events(100)
///     .build()?;
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct JobStateBuilder<S> {
    store: S,
    clock: SharedClock,
    namespace: Prefix,
    max_events: u64,
    subscriber_buffer: usize,
    resolve_within: Duration,
}

impl<S: Store> JobStateBuilder<S> {
    /// Keeps jobs under `namespace`. Default: `jobs`. The manager owns the
    /// segments `job`, `event`, `open` and `index` below it: give another
    /// manager a namespace beside it, not below one of those.
    pub fn namespace(mut self, namespace: Prefix) -> Self {
        self.namespace = namespace;
        self
    }

    /// Keeps at most `max_events` events per job; older ones are dropped as new
    /// ones come, and counted in [`EventWindow::dropped`]. Default:
    /// [`JobState::DEFAULT_MAX_EVENTS`]; at most [`JobState::MAX_EVENTS_KEPT`].
    pub fn max_events(mut self, max_events: u64) -> Self {
        self.max_events = max_events;
        self
    }

    /// Buffers at most `events` live events per subscriber; a subscriber that
    /// falls further behind catches up from the store. Default:
    /// [`JobState::DEFAULT_SUBSCRIBER_BUFFER`].
    pub fn subscriber_buffer(mut self, events: usize) -> Self {
        self.subscriber_buffer = events;
        self
    }

    /// Bounds how long a write whose store call failed in a way that may hide
    /// its success (see [`Error::is_ambiguous`]) keeps re-reading the job to
    /// learn its own write's outcome, counted by the job state's clock from
    /// the start of the call. A store that stays unreachable that long makes
    /// the call fail with an [ambiguous](Error::is_ambiguous) error. Zero
    /// reads back once. Default: [`JobState::DEFAULT_RESOLVE_WITHIN`].
    ///
    /// The pauses between re-reads are sleeps on the clock: with a
    /// [`ManualClock`](crate::ManualClock) that nothing advances, a store that
    /// keeps failing holds the call until the clock moves. In such a test,
    /// set zero (one re-read, at once) or
    /// [`ManualClock::set_auto_advance`](crate::ManualClock::set_auto_advance).
    pub fn resolve_within(mut self, within: Duration) -> Self {
        self.resolve_within = within;
        self
    }

    /// The job records' manager.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `max_events` or `subscriber_buffer` is
    /// 0, or `max_events` is over [`JobState::MAX_EVENTS_KEPT`];
    /// [`Error::InvalidKey`] if the namespace leaves no room for a job's keys.
    pub fn build(self) -> Result<JobState<S>> {
        if self.max_events == 0 {
            return Err(Error::InvalidArgument(
                "max_events must be at least 1: a job keeps at least its last event".to_owned(),
            ));
        }
        if self.max_events > JobState::MAX_EVENTS_KEPT {
            return Err(Error::InvalidArgument(format!(
                "max_events is {}, over the most a job can keep, {}: a record counting a \
                 wider window of events is taken as damaged when read",
                self.max_events,
                JobState::MAX_EVENTS_KEPT
            )));
        }
        if self.subscriber_buffer == 0 {
            return Err(Error::InvalidArgument(
                "subscriber_buffer must be at least 1".to_owned(),
            ));
        }
        // The deepest key of a job: namespace/event/<id>/<seq>.
        self.namespace.check_room(3, "JobState")?;
        Ok(JobState {
            store: Arc::new(self.store),
            clock: self.clock,
            namespace: Arc::new(self.namespace),
            max_events: self.max_events,
            subscriber_buffer: self.subscriber_buffer,
            resolve_within: self.resolve_within,
            // Subscribers are per namespace: job ids may repeat across namespaces.
            hub: Arc::new(Hub::default()),
            open_index_built: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl<S: Store> JobState<S> {
    /// Jobs kept in `store` under the key prefix `jobs`, timed by `clock`, with
    /// the defaults of [`JobState::builder`].
    pub fn new(store: S, clock: SharedClock) -> Self {
        JobState {
            store: Arc::new(store),
            clock,
            namespace: Arc::new(default_namespace()),
            max_events: JobState::DEFAULT_MAX_EVENTS,
            subscriber_buffer: JobState::DEFAULT_SUBSCRIBER_BUFFER,
            resolve_within: JobState::DEFAULT_RESOLVE_WITHIN,
            hub: Arc::new(Hub::default()),
            open_index_built: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Options for jobs kept in `store`, timed by `clock`.
    pub fn builder(store: S, clock: SharedClock) -> JobStateBuilder<S> {
        JobStateBuilder {
            store,
            clock,
            namespace: default_namespace(),
            max_events: JobState::DEFAULT_MAX_EVENTS,
            subscriber_buffer: JobState::DEFAULT_SUBSCRIBER_BUFFER,
            resolve_within: JobState::DEFAULT_RESOLVE_WITHIN,
        }
    }

    /// The store the jobs live in.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Creates a queued job.
    ///
    /// A write that fails in a way that may hide its success (the store was
    /// unreachable, and may have committed it) is read back until the
    /// [`resolve_within`](JobStateBuilder::resolve_within) deadline: if it
    /// landed, the call returns the job it created; if it did not, it is
    /// written again (at most three writes in all). A job found already
    /// created by this call's [attempt](NewJob::attempt) id (a repeated call)
    /// is returned as it is now.
    ///
    /// # Errors
    /// [`Error::Conflict`] if a job with the chosen id exists, created by
    /// another attempt; [`Error::InvalidArgument`] for an empty kind;
    /// [`Error::InvalidKey`] for an invalid id (empty, NUL, too long);
    /// [`Error::TooLarge`] naming the field for a kind, owner or metadata over
    /// [`Job::MAX_KIND_LEN`], [`Job::MAX_OWNER_LEN`] or
    /// [`Job::MAX_METADATA_LEN`], with nothing written; [`Error::Ambiguous`]
    /// with the attempt id if the store failed the write and stayed
    /// unreachable until the deadline; store errors: a transient one only
    /// when the write is known not to have landed.
    pub fn create(&self, new: NewJob) -> Result<Job> {
        drive::blocking(self.create_driven(Blocking, new))
    }

    /// The body of [`create`](JobState::create), for every way of running it
    /// (see [`drive`]).
    pub(crate) async fn create_driven(&self, drive: impl Drive<S>, new: NewJob) -> Result<Job> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        if new.kind.is_empty() {
            return Err(Error::InvalidArgument("a job needs a kind".to_owned()));
        }
        let attempt = new.attempt.unwrap_or_default();
        let id = new.id.unwrap_or_else(|| attempt.to_string());
        let key = self.record_key(&id)?;
        limits::check_text("job kind", &key, Some(&new.kind), Job::MAX_KIND_LEN)?;
        limits::check_text("job owner", &key, new.owner.as_deref(), Job::MAX_OWNER_LEN)?;
        limits::check_json("job metadata", &key, &new.metadata, Job::MAX_METADATA_LEN)?;
        let now = self.clock.now_ms();
        let mut job = Job {
            id,
            kind: new.kind,
            owner: new.owner,
            status: JobStatus::Queued,
            stage: None,
            stages_done: Vec::new(),
            attempt: 0,
            progress: None,
            result: None,
            error: None,
            metadata: new.metadata,
            created_ms: now,
            started_ms: None,
            updated_ms: now,
            completed_ms: None,
            retry_at_ms: None,
            heartbeat_ms: None,
            fencing: None,
            events: EventWindow {
                first_seq: 1,
                next_seq: 1,
                dropped: 0,
            },
            write: Some(attempt.clone()),
            created_by: Some(attempt.clone()),
            started_by: None,
            started_seq: None,
            extra: Extra::new(),
            version: Version::new(0),
        };
        let bytes = codec::encode(&key, &job)?;
        // The record, and its entry in the index of open jobs.
        let mut create = Batch::new().put(&key, bytes, Expect::Absent);
        if let Some(entry) = self.open_entry_op(&job.id, false, true)? {
            create.push(entry);
        }
        // The last failure that may hide a landed write.
        let mut unsettled: Option<Error> = None;
        let mut late = LateWrite::default();
        let end = |late: &LateWrite, error: Error| late.end("create job", &key, &attempt, error);
        loop {
            let put = drive.apply(&self.store, create.clone());
            let conflict = match put.await {
                Ok(applied) => {
                    if let Some(Applied::Put(version)) = applied.first() {
                        job.version = *version;
                    }
                    self.hub.queued.raise();
                    return Ok(job);
                }
                Err(e) if e.is_conflict() => Some(e),
                Err(e) if may_have_landed(&e) => {
                    late.failed(&e, Expect::Absent);
                    unsettled = Some(e);
                    None
                }
                Err(e) => return Err(end(&late, e)),
            };
            // Taken, or maybe written: by whom? After a failure, a conflict
            // may be this call's own earlier write, landed late.
            let read = match unsettled {
                None => self.read_driven(drive, &job.id).await,
                Some(_) => {
                    deadline
                        .reread_driven(drive, || self.read_driven(drive, &job.id))
                        .await
                }
            };
            let current = match read {
                Ok(current) => current,
                Err(reread) => {
                    return Err(match unsettled {
                        Some(error) => {
                            resolve::ambiguous("create job", &key, &attempt, error, reread)
                        }
                        None => end(&late, reread),
                    });
                }
            };
            match current {
                Some((current, _)) if current.created_by.as_ref() == Some(&attempt) => {
                    self.hub.queued.raise();
                    return Ok(current);
                }
                // Another create's: ours did not land, and lands only if
                // this job is deleted and a failed write of ours may still
                // land (then the outcome is open).
                Some((_, version)) => {
                    return Err(end(
                        &late,
                        conflict.unwrap_or_else(|| Error::Conflict {
                            key: key.clone(),
                            expected: Expect::Absent.to_string(),
                            current: Some(version),
                        }),
                    ));
                }
                // Created and deleted since the conflict: create it again.
                None if conflict.is_some() => {}
                // Ours did not land. Writing again fences the failed write
                // off, should it still arrive.
                None => {
                    if let Some(error) = unsettled.take_if(|_| !deadline.may_write_again()) {
                        return Err(end(&late, error));
                    }
                }
            }
        }
    }

    /// The job `id`, or `None` if there is none.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the key if its record cannot be read; store errors.
    pub fn get(&self, id: &str) -> Result<Option<Job>> {
        Ok(self.read(id)?.map(|(job, _)| job))
    }

    /// What a client may see of job `id` ([`Job::client_view`]).
    ///
    /// # Errors
    /// As [`get`](JobState::get).
    pub fn client_view(&self, id: &str) -> Result<Option<ClientJob>> {
        Ok(self.get(id)?.map(|job| job.client_view()))
    }

    /// The jobs that pass `filter`, in id order (for administration: this reads
    /// every record).
    ///
    /// # Errors
    /// Store errors; unreadable records are listed apart.
    pub fn list(&self, filter: &JobFilter) -> Result<JobList> {
        let mut list = JobList::default();
        self.for_each_job(|read| {
            match read {
                Ok(job) if filter.matches(&job) => list.jobs.push(job),
                Ok(_) => {}
                Err(unreadable) => list.unreadable.push(unreadable),
            }
            Ok(())
        })?;
        Ok(list)
    }

    /// Calls `f` with each job in id order, read as one [`scan`](Store::scan)
    /// of the records reaches it, or with the key and error of a record that
    /// cannot be read; a record deleted since the scan saw its key is skipped.
    /// Holds one page of keys, not the jobs: `f` may change or delete the job
    /// it is given. Stops at the first error of `f` or of the scan.
    pub(crate) fn for_each_job(
        &self,
        mut f: impl FnMut(std::result::Result<Job, (Key, Error)>) -> Result<()>,
    ) -> Result<()> {
        for page in self.store.scan(&self.records_prefix()?, SCAN_PAGE) {
            for key in page? {
                let Some(id) = key.segments().last() else {
                    continue;
                };
                match self.read(id) {
                    Ok(Some((job, _))) => f(Ok(job))?,
                    Ok(None) => {}
                    Err(e) => f(Err((key, e)))?,
                }
            }
        }
        Ok(())
    }

    /// Deletes a job that is not running, with its events. Returns whether there
    /// was one.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] for a running job (cancel it first); store
    /// errors. A store error that may hide the delete's success (a transient
    /// one) is returned as it came, not read back: the job may be gone, and
    /// a repeated delete then returns `false`.
    pub fn delete(&self, id: &str) -> Result<bool> {
        loop {
            let Some((job, version)) = self.read(id)? else {
                return Ok(false);
            };
            if job.status == JobStatus::Running {
                return Err(Error::InvalidTransition {
                    id: id.to_owned(),
                    status: job.status,
                    action: "delete a running job (cancel it first)",
                });
            }
            match self.remove_with_events(&job, version, &[]) {
                Ok(()) => {
                    self.hub.close(id);
                    return Ok(true);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes job `id` with its events, and `extra` store operations (on keys
    /// outside the job's) in the same atomic batch, only if its record is still
    /// at `version` and not running. Returns whether it did.
    pub(crate) fn delete_at_with(
        &self,
        id: &str,
        version: Version,
        extra: &[BatchOp],
    ) -> Result<bool> {
        let Some((job, current)) = self.read(id)? else {
            return Ok(false);
        };
        if current != version || job.status == JobStatus::Running {
            return Ok(false);
        }
        match self.remove_with_events(&job, version, extra) {
            Ok(()) => {
                self.hub.close(id);
                Ok(true)
            }
            // The record changed since it was read.
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn records_prefix(&self) -> Result<Prefix> {
        let mut segments = self.namespace.segments().to_vec();
        segments.push("job".to_owned());
        Prefix::new(segments)
    }

    fn record_key(&self, id: &str) -> Result<Key> {
        let segments = self.namespace.segments().iter().map(String::as_str);
        Key::new(segments.chain(["job", id]))
    }

    fn read(&self, id: &str) -> Result<Option<(Job, Version)>> {
        drive::blocking(self.read_driven(Blocking, id))
    }

    /// [`read`](JobState::read), through `drive`.
    async fn read_driven(&self, drive: impl Drive<S>, id: &str) -> Result<Option<(Job, Version)>> {
        let key = self.record_key(id)?;
        match drive.get(&self.store, &key).await? {
            None => Ok(None),
            Some(entry) => {
                let mut job: Job = codec::decode(&key, &entry.value)?;
                job.version = entry.version;
                check_window(&key, job.events)?;
                Ok(Some((job, entry.version)))
            }
        }
    }

    fn read_required(&self, id: &str) -> Result<(Job, Version)> {
        self.read(id)?
            .ok_or_else(|| Error::JobNotFound { id: id.to_owned() })
    }
}
