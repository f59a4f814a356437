//! What a run reports: each stage's action, the observer's notices, and how
//! the run ended.

use crate::jobs::{JobError, JobStatus};
use crate::lock::LockRecord;

use super::Checkpoint;

/// What happened to one stage in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StageAction {
    /// About to run (in a [`StageNotice`] only).
    Started,
    /// Its checkpoint verified: not run, its files untouched.
    Skipped,
    /// It ran and its checkpoint was recorded.
    Ran,
    /// It returned an error or panicked.
    Failed,
    /// It was interrupted (cancel, delete, lost lease) before its checkpoint.
    Interrupted,
}

/// What a [`Pipeline`](crate::Pipeline) observer is told about a stage.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct StageNotice<'a> {
    /// The job.
    pub job_id: &'a str,
    /// Its subject.
    pub subject: &'a str,
    /// The stage.
    pub stage: &'a str,
    /// What happened.
    pub action: StageAction,
    /// Why, when there is more to say: why a checkpoint did not verify, or the
    /// internal message of a failure.
    pub detail: Option<&'a str>,
    /// The stage's checkpoint, with every artifact it wrote and their digests:
    /// as recorded, for [`StageAction::Ran`]; as verified, for
    /// [`StageAction::Skipped`]. `None` for the other actions.
    pub checkpoint: Option<&'a Checkpoint>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// Every stage ran or was skipped; the job is complete.
    Completed,
    /// A stage failed transiently; the job is queued again until `retry_at_ms`.
    RetryScheduled {
        /// The stage that failed.
        stage: String,
        /// When the job is due again.
        retry_at_ms: u64,
        /// Consecutive transient failures so far.
        failures: u32,
        /// The error, as stored on the job.
        error: JobError,
    },
    /// A stage failed permanently (or panicked, or failed transiently too
    /// often); the job is failed until [`Pipeline::retry`](crate::Pipeline::retry).
    Failed {
        /// The stage that failed.
        stage: String,
        /// The error, as stored on the job.
        error: JobError,
    },
    /// The job was cancelled; the run stopped at a stage boundary.
    Cancelled {
        /// The stage that was interrupted, if one was under way.
        stage: Option<String>,
    },
    /// The job was deleted: its directory, checkpoints and record are gone.
    Deleted,
    /// Another runner took the job over (a newer attempt, with a newer fencing
    /// token: after this runner paused past its lease, say). This one stopped
    /// without writing anything more and left every file to its successor.
    Superseded {
        /// The stage that was under way, if any.
        stage: Option<String>,
        /// What was found.
        reason: String,
    },
    /// The runner's lease on the subject ended or was taken before anyone took
    /// the job over. It stopped without writing anything more and left the job
    /// running, for the next holder of the subject to take over.
    LostLease {
        /// The stage that was under way, if any.
        stage: Option<String>,
        /// What was found.
        reason: String,
    },
    /// The job left the running state by another hand than this runner's (a
    /// [`JobState::recover`](crate::JobState::recover) that requeued or failed
    /// it, say). The run stopped without writing anything more.
    NotRunning {
        /// The stage that was under way, if any.
        stage: Option<String>,
        /// The job's status as found.
        status: JobStatus,
    },
    /// Another runner holds the subject: nothing was done.
    Busy {
        /// Its lock record.
        holder: Box<LockRecord>,
    },
    /// The job is not due: finished, or waiting for its retry time.
    NotDue {
        /// Its status.
        status: JobStatus,
        /// When it is due again, if queued for a retry.
        retry_at_ms: Option<u64>,
    },
    /// There is no such job.
    NotFound,
    /// Whoever awaited the run went away (an [`AsyncPipeline`](super::AsyncPipeline)
    /// run's future was dropped, by a service shutting down, say): the run
    /// stopped at its next stage boundary, or inside an async stage's wait,
    /// whose future was dropped. The stage's artifacts were removed, nothing
    /// was recorded, the subject's lock was released, and the job is left
    /// running, for the next run to take over at once, as it takes over from
    /// a runner that crashed. Nobody sees this report but a
    /// [`StageNotice`](super::StageNotice) observer.
    Abandoned {
        /// The stage that was under way, if any.
        stage: Option<String>,
    },
}

/// The report of one [`Pipeline::run_job`](crate::Pipeline::run_job).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RunReport {
    /// The job.
    pub job_id: String,
    /// Its subject, if the job was found.
    pub subject: Option<String>,
    /// Each stage reached, with what happened to it, in order.
    pub stages: Vec<(String, StageAction)>,
    /// How the run ended.
    pub outcome: RunOutcome,
}

impl RunReport {
    /// The stages that ran (not skipped) in this run.
    pub fn ran(&self) -> Vec<&str> {
        self.with(StageAction::Ran)
    }

    /// The stages skipped in this run.
    pub fn skipped(&self) -> Vec<&str> {
        self.with(StageAction::Skipped)
    }

    fn with(&self, action: StageAction) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|(_, a)| *a == action)
            .map(|(s, _)| s.as_str())
            .collect()
    }
}

/// Why a run stops before its end.
pub(crate) enum Stop {
    /// A newer attempt owns the job.
    Superseded(String),
    /// The lease on the subject is gone.
    LeaseLost(String),
    /// The job is no longer running, and not because of a cancel or a delete.
    NotRunning(JobStatus),
    Cancelled,
    Deleted,
    /// Whoever awaited the run went away.
    Abandoned,
}
