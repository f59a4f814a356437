//! A pipeline's records without its stages, for tools outside the service.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::error::Result;
use crate::jobs::{Job, JobState, PurgeCounts};
use crate::key::{Key, Prefix};
use crate::lock::JobLock;
use crate::store::{BatchOp, Expect, Store, Version};

/// The records of a [`Pipeline`](super::Pipeline) without its stages: its
/// jobs, its subject locks, and the changes that must keep the pipeline's own
/// state in step, for a tool that inspects and repairs a pipeline's jobs from
/// outside the service that runs them (an operator's command line), where the
/// stage code is not at hand. Cancel through [`jobs`](PipelineRecords::jobs):
/// [`Pipeline::cancel`](super::Pipeline::cancel) does no more; retry through
/// [`retry`](PipelineRecords::retry).
///
/// The layout is the pipeline's (see [`Pipeline`](super::Pipeline)'s
/// `# Layout`): jobs under `<namespace>/jobs`, subject locks under
/// `<namespace>/locks`. Use the namespace given to
/// [`PipelineBuilder::namespace`](super::PipelineBuilder::namespace),
/// `pipeline` by default.
///
/// ```
/// use std::sync::Arc;
/// use jobsafe::{ManualClock, MemStore, Pipeline, Prefix};
/// use jobsafe::jobs::NewJob;
/// use jobsafe::pipeline::{PipelineRecords, StageError};
///
/// let store = Arc::new(MemStore::new());
/// let clock = Arc::new(ManualClock::new(0));
/// let dir = tempfile::tempdir()?;
/// // The service, with its stages.
/// let pipeline = Pipeline::builder(Arc::clone(&store), clock.clone(), dir.path())
///     .stage("export", |_| Err(StageError::permanent("the volume is full")))
///     .build()?;
/// let job = pipeline.enqueue("session-1", NewJob::new("episode"))?;
/// pipeline.run_job(&job.id)?;
///
/// // An operator's tool, with the same store and no stage code.
/// let records = PipelineRecords::new(store, clock, Prefix::new(["pipeline"])?)?;
/// assert_eq!(records.jobs().get(&job.id)?.map(|j| j.status), Some(jobsafe::jobs::JobStatus::Failed));
/// let requeued = records.retry(&job.id)?;
/// assert_eq!(requeued.status, jobsafe::jobs::JobStatus::Queued);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PipelineRecords<S> {
    jobs: JobState<Arc<S>>,
    locks: JobLock<Arc<S>>,
    clock: SharedClock,
    namespace: Prefix,
}

impl<S> Clone for PipelineRecords<S> {
    fn clone(&self) -> Self {
        PipelineRecords {
            jobs: self.jobs.clone(),
            locks: self.locks.clone(),
            clock: Arc::clone(&self.clock),
            namespace: self.namespace.clone(),
        }
    }
}

impl<S> std::fmt::Debug for PipelineRecords<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineRecords")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl<S: Store> PipelineRecords<S> {
    /// The records of the pipeline kept in `store` under `namespace`, timed by
    /// `clock`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) if the namespace is too
    /// long.
    pub fn new(store: S, clock: SharedClock, namespace: Prefix) -> Result<Self> {
        let store = Arc::new(store);
        let jobs = JobState::builder(Arc::clone(&store), Arc::clone(&clock))
            .namespace(sub_namespace(&namespace, "jobs")?)
            .build()?;
        let locks = JobLock::builder(store, Arc::clone(&clock))
            .namespace(sub_namespace(&namespace, "locks")?)
            .build()?;
        Ok(PipelineRecords {
            jobs,
            locks,
            clock,
            namespace,
        })
    }

    /// The pipeline's jobs: read, list, follow, cancel or purge them here.
    pub fn jobs(&self) -> &JobState<Arc<S>> {
        &self.jobs
    }

    /// The pipeline's subject locks.
    pub fn locks(&self) -> &JobLock<Arc<S>> {
        &self.locks
    }

    /// Puts a failed job back in the queue, as
    /// [`Pipeline::retry`](super::Pipeline::retry) does: its next run resumes
    /// at the stage that failed, with a fresh count of transient failures, in
    /// one atomic write. A plain [`JobState::retry`] keeps the count: a job
    /// failed while its count stood high (by [`JobState::recover`] after its
    /// runner died between transient failures, say) would then fail for good
    /// at its next transient failure.
    ///
    /// # Errors
    /// As [`JobState::retry`].
    pub fn retry(&self, id: &str) -> Result<Job> {
        retry(&self.jobs, &self.namespace, id)
    }

    /// Removes the jobs that [`JobState::purge`] would remove
    /// ([`Job::is_due_for_purge`]), each with its events, checkpoints and
    /// count of transient failures in one atomic batch that checks the job is
    /// unchanged since it was listed (a retry meanwhile wins). Returns how many
    /// went, by status.
    ///
    /// Artifact directories stay: this type knows no artifact root. The
    /// service's [`Pipeline::purge`](super::Pipeline::purge) removes the
    /// directories of jobs that no longer exist. Unreadable job records are
    /// left, with everything they may own.
    ///
    /// # Errors
    /// Store errors.
    pub fn purge(&self, finished_for: Duration, queued_for: Duration) -> Result<PurgeCounts> {
        let now = self.clock.now_ms();
        let mut counts = PurgeCounts::default();
        self.jobs.for_each_job(|read| {
            let Ok(job) = read else { return Ok(()) };
            if !job.is_due_for_purge(now, finished_for, queued_for) {
                // The safety net of the index of open jobs.
                return self.jobs.ensure_open_entry(&job);
            }
            if delete_job_records(&self.jobs, &self.namespace, &job.id, job.version)?.is_some() {
                counts.add(job.status);
            }
            Ok(())
        })?;
        Ok(counts)
    }
}

/// The key prefix of one kind of a pipeline's records.
pub(super) fn sub_namespace(namespace: &Prefix, kind: &str) -> Result<Prefix> {
    let mut segments = namespace.segments().to_vec();
    segments.push(kind.to_owned());
    Prefix::new(segments)
}

/// The key of job `id`'s count of consecutive transient failures.
/// Deletes job `id` with its events, run state and checkpoints in one batch that
/// expects the job at `version` (a retry since it was read wins). The number of
/// checkpoints deleted, or `None` if the job changed or went meanwhile.
pub(super) fn delete_job_records<S: Store>(
    jobs: &JobState<S>,
    namespace: &Prefix,
    id: &str,
    version: Version,
) -> Result<Option<usize>> {
    let mut segments = namespace.segments().to_vec();
    segments.extend(["checkpoint".to_owned(), id.to_owned()]);
    let checkpoints = jobs.store().list_all(&Prefix::new(segments)?)?;
    let count = checkpoints.len();
    let mut extra = vec![BatchOp::Delete {
        key: run_state_key(namespace, id)?,
        expect: Expect::Any,
    }];
    extra.extend(checkpoints.into_iter().map(|key| BatchOp::Delete {
        key,
        expect: Expect::Any,
    }));
    Ok(jobs.delete_at_with(id, version, &extra)?.then_some(count))
}

pub(super) fn run_state_key(namespace: &Prefix, id: &str) -> Result<Key> {
    let segments = namespace.segments().iter().map(String::as_str);
    Key::new(segments.chain(["run", id]))
}

/// Requeues failed job `id` and resets its failure count in one write.
pub(super) fn retry<S: Store>(jobs: &JobState<S>, namespace: &Prefix, id: &str) -> Result<Job> {
    let reset = BatchOp::Delete {
        key: run_state_key(namespace, id)?,
        expect: Expect::Any,
    };
    jobs.retry_with(id, &[reset])
}
