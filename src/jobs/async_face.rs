//! [`AsyncJobState`]: the async face of [`JobState`].

use std::time::Duration;

use serde_json::Value;

use super::stream::{AsyncFollower, AsyncSubscription};
use super::{
    Claim, ClientJob, Event, EventPage, FailureKind, Job, JobError, JobFilter, JobList, JobState,
    NewJob, PurgeCounts, RecoveryAction,
};
use crate::attempt::AttemptId;
use crate::error::Result;
use crate::fencing::FencingToken;
use crate::pool;
use crate::store::Store;

/// The async face of [`JobState`]: the same jobs, the same guarantees, and
/// methods of the same names that are `async fn`s and never block the
/// caller's thread.
///
/// Each method runs its blocking twin on the crate's [pool](crate::pool), so
/// the logic (transitions, fencing, reading back a write whose outcome was
/// unknown) is written once, and the future holds no thread while it waits.
/// Event streams ([`subscribe`](AsyncJobState::subscribe),
/// [`follow`](AsyncJobState::follow)) are `Stream`s that hold no thread
/// either. Made from a `JobState` and sharing its state: events appended
/// through either face reach subscribers of both.
///
/// ```
/// use std::sync::Arc;
/// use jobsafe::jobs::{AsyncJobState, JobState, NewJob};
/// use jobsafe::{ManualClock, MemStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> jobsafe::Result<()> {
/// let jobs = AsyncJobState::new(JobState::new(MemStore::new(), Arc::new(ManualClock::new(0))));
/// let job = jobs.create(NewJob::new("report")).await?;
/// let worker = jobs.start(&job.id, None).await?;
/// jobs.complete(&worker, serde_json::json!({"pages": 3})).await?;
///
/// let mut events = jobs.subscribe(&job.id, 0).await?;
/// let mut kinds = Vec::new();
/// while let Some(event) = events.next_event().await? {
///     kinds.push(event.kind);
/// }
/// assert_eq!(kinds, ["started", "done"]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncJobState<S> {
    jobs: JobState<S>,
}

impl<S> Clone for AsyncJobState<S> {
    fn clone(&self) -> Self {
        AsyncJobState {
            jobs: self.jobs.clone(),
        }
    }
}

impl<S: Store + 'static> AsyncJobState<S> {
    /// The async face of `jobs`, sharing its state.
    pub fn new(jobs: JobState<S>) -> Self {
        AsyncJobState { jobs }
    }

    /// The blocking face, sharing this one's state: for code that runs on a
    /// thread of its own (a script, a test, a worker thread).
    pub fn blocking(&self) -> &JobState<S> {
        &self.jobs
    }

    /// Runs `call` on the pool with a handle of the job state.
    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&JobState<S>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let jobs = self.jobs.clone();
        pool::run(move || call(&jobs)).await
    }

    /// [`JobState::create`].
    ///
    /// # Errors
    /// As [`JobState::create`].
    pub async fn create(&self, new: NewJob) -> Result<Job> {
        self.run(move |jobs| jobs.create(new)).await
    }

    /// [`JobState::get`].
    ///
    /// # Errors
    /// As [`JobState::get`].
    pub async fn get(&self, id: &str) -> Result<Option<Job>> {
        let id = id.to_owned();
        self.run(move |jobs| jobs.get(&id)).await
    }

    /// [`JobState::client_view`].
    ///
    /// # Errors
    /// As [`JobState::client_view`].
    pub async fn client_view(&self, id: &str) -> Result<Option<ClientJob>> {
        let id = id.to_owned();
        self.run(move |jobs| jobs.client_view(&id)).await
    }

    /// [`JobState::list`].
    ///
    /// # Errors
    /// As [`JobState::list`].
    pub async fn list(&self, filter: &JobFilter) -> Result<JobList> {
        let filter = filter.clone();
        self.run(move |jobs| jobs.list(&filter)).await
    }

    /// [`JobState::list_open`].
    ///
    /// # Errors
    /// As [`JobState::list_open`].
    pub async fn list_open(&self) -> Result<JobList> {
        self.run(move |jobs| jobs.list_open()).await
    }

    /// [`JobState::delete`].
    ///
    /// # Errors
    /// As [`JobState::delete`].
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.run(move |jobs| jobs.delete(&id)).await
    }

    /// [`JobState::events_since`].
    ///
    /// # Errors
    /// As [`JobState::events_since`].
    pub async fn events_since(&self, id: &str, after: u64) -> Result<EventPage> {
        let id = id.to_owned();
        self.run(move |jobs| jobs.events_since(&id, after)).await
    }

    /// [`JobState::start`].
    ///
    /// # Errors
    /// As [`JobState::start`].
    pub async fn start(&self, id: &str, token: Option<FencingToken>) -> Result<Claim> {
        let id = id.to_owned();
        self.run(move |jobs| jobs.start(&id, token)).await
    }

    /// [`JobState::start_attempt`].
    ///
    /// # Errors
    /// As [`JobState::start_attempt`].
    pub async fn start_attempt(
        &self,
        id: &str,
        token: Option<FencingToken>,
        attempt: &AttemptId,
    ) -> Result<Claim> {
        let (id, attempt) = (id.to_owned(), attempt.clone());
        self.run(move |jobs| jobs.start_attempt(&id, token, &attempt))
            .await
    }

    /// [`JobState::set_stage`].
    ///
    /// # Errors
    /// As [`JobState::set_stage`].
    pub async fn set_stage(&self, worker: &Claim, stage: &str) -> Result<Job> {
        let (worker, stage) = (worker.clone(), stage.to_owned());
        self.run(move |jobs| jobs.set_stage(&worker, &stage)).await
    }

    /// [`JobState::progress`].
    ///
    /// # Errors
    /// As [`JobState::progress`].
    pub async fn progress(&self, worker: &Claim, message: &str) -> Result<Job> {
        let (worker, message) = (worker.clone(), message.to_owned());
        self.run(move |jobs| jobs.progress(&worker, &message)).await
    }

    /// [`JobState::heartbeat`].
    ///
    /// # Errors
    /// As [`JobState::heartbeat`].
    pub async fn heartbeat(&self, worker: &Claim) -> Result<Job> {
        let worker = worker.clone();
        self.run(move |jobs| jobs.heartbeat(&worker)).await
    }

    /// [`JobState::append_event`].
    ///
    /// # Errors
    /// As [`JobState::append_event`].
    pub async fn append_event(&self, worker: &Claim, kind: &str, data: Value) -> Result<Event> {
        let (worker, kind) = (worker.clone(), kind.to_owned());
        self.run(move |jobs| jobs.append_event(&worker, &kind, data))
            .await
    }

    /// [`JobState::complete`].
    ///
    /// # Errors
    /// As [`JobState::complete`].
    pub async fn complete(&self, worker: &Claim, result: Value) -> Result<Job> {
        let worker = worker.clone();
        self.run(move |jobs| jobs.complete(&worker, result)).await
    }

    /// [`JobState::fail`].
    ///
    /// # Errors
    /// As [`JobState::fail`].
    pub async fn fail(&self, worker: &Claim, error: JobError, failure: FailureKind) -> Result<Job> {
        let worker = worker.clone();
        self.run(move |jobs| jobs.fail(&worker, error, failure))
            .await
    }

    /// [`JobState::cancel`].
    ///
    /// # Errors
    /// As [`JobState::cancel`].
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        let id = id.to_owned();
        self.run(move |jobs| jobs.cancel(&id)).await
    }

    /// [`JobState::retry`].
    ///
    /// # Errors
    /// As [`JobState::retry`].
    pub async fn retry(&self, id: &str) -> Result<Job> {
        let id = id.to_owned();
        self.run(move |jobs| jobs.retry(&id)).await
    }

    /// [`JobState::recover`].
    ///
    /// # Errors
    /// As [`JobState::recover`].
    pub async fn recover(&self, stale_after: Duration, action: RecoveryAction) -> Result<Vec<Job>> {
        self.run(move |jobs| jobs.recover(stale_after, action))
            .await
    }

    /// [`JobState::recover_where`]; `abandoned` is called on the pool.
    ///
    /// # Errors
    /// As [`JobState::recover_where`].
    pub async fn recover_where(
        &self,
        action: RecoveryAction,
        abandoned: impl Fn(&Job) -> bool + Send + 'static,
    ) -> Result<Vec<Job>> {
        self.run(move |jobs| jobs.recover_where(action, abandoned))
            .await
    }

    /// [`JobState::purge`].
    ///
    /// # Errors
    /// As [`JobState::purge`].
    pub async fn purge(&self, finished_for: Duration, queued_for: Duration) -> Result<PurgeCounts> {
        self.run(move |jobs| jobs.purge(finished_for, queued_for))
            .await
    }

    /// Subscribes to job `id`'s events after sequence number `after`, as
    /// [`JobState::subscribe`] does, as a `Stream` that holds no thread while
    /// it waits (see [`AsyncSubscription`]).
    ///
    /// # Errors
    /// As [`JobState::subscribe`].
    pub async fn subscribe(&self, id: &str, after: u64) -> Result<AsyncSubscription<S>> {
        AsyncSubscription::start(self.jobs.clone(), id, after).await
    }

    /// Follows job `id`'s events after sequence number `after` by reading the
    /// store every `poll_every`, as [`JobState::follow`] does, as a `Stream`
    /// that holds no thread while it waits (see [`AsyncFollower`]).
    ///
    /// # Errors
    /// As [`JobState::follow`].
    pub async fn follow(
        &self,
        id: &str,
        after: u64,
        poll_every: Duration,
    ) -> Result<AsyncFollower<S>> {
        AsyncFollower::start(self.jobs.clone(), id, after, poll_every).await
    }
}

impl<S: Store + 'static> From<JobState<S>> for AsyncJobState<S> {
    fn from(jobs: JobState<S>) -> Self {
        AsyncJobState::new(jobs)
    }
}
