//! Recovery of jobs whose worker died, and retention.

use std::time::Duration;

use serde_json::json;

use super::{Job, JobError, JobState, JobStatus};
use crate::error::Result;
use crate::store::Store;

/// What [`JobState::recover`] does with a job whose worker is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryAction {
    /// Put it back in the queue (event `requeued`); the next start is a new
    /// attempt, and the dead worker's attempt is stale.
    Requeue,
    /// Fail it for good (event `error`), for work that must not run twice.
    Fail,
}

/// How many jobs [`JobState::purge`] removed, per status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeCounts {
    /// Complete jobs removed.
    pub complete: usize,
    /// Failed jobs removed.
    pub failed: usize,
    /// Cancelled jobs removed.
    pub cancelled: usize,
    /// Queued jobs never picked up, removed.
    pub queued: usize,
}

impl PurgeCounts {
    /// All jobs removed.
    pub fn total(&self) -> usize {
        self.complete + self.failed + self.cancelled + self.queued
    }
}

impl Job {
    /// Whether a purge at `now_ms` removes this job: complete, failed and
    /// cancelled jobs that finished at least `finished_for` earlier, and queued
    /// jobs never started that were created at least `queued_for` earlier.
    /// Running jobs never are. The rule of [`JobState::purge`], for tools that
    /// show what a purge would remove before asking.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use jobsafe::{JobState, ManualClock, MemStore};
    /// use jobsafe::jobs::NewJob;
    ///
    /// let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    /// let job = jobs.create(NewJob::new("export"))?;
    /// let day = Duration::from_secs(86_400);
    /// assert!(!job.is_due_for_purge(0, day, day));
    /// assert!(job.is_due_for_purge(86_400_000, day * 7, day));
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    pub fn is_due_for_purge(
        &self,
        now_ms: u64,
        finished_for: Duration,
        queued_for: Duration,
    ) -> bool {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match self.status {
            JobStatus::Running => false,
            JobStatus::Queued => {
                self.attempt == 0 && now_ms >= self.created_ms.saturating_add(ms(queued_for))
            }
            JobStatus::Complete | JobStatus::Failed | JobStatus::Cancelled => {
                let finished = self.completed_ms.unwrap_or(self.updated_ms);
                now_ms >= finished.saturating_add(ms(finished_for))
            }
        }
    }
}

impl PurgeCounts {
    /// Counts one more removed job of `status`.
    pub(crate) fn add(&mut self, status: JobStatus) {
        let count = match status {
            JobStatus::Complete => &mut self.complete,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Cancelled => &mut self.cancelled,
            JobStatus::Queued | JobStatus::Running => &mut self.queued,
        };
        *count += 1;
    }
}

impl<S: Store> JobState<S> {
    /// Finds running jobs whose worker showed no sign of life (start, progress,
    /// event or heartbeat) for `stale_after`, and requeues or fails them as
    /// `action` says. Returns the jobs as recovered. It finds them through
    /// the index of open jobs ([`list_open`](JobState::list_open), which
    /// builds the index on a store that has none).
    ///
    /// Nothing else moves the job of a worker that died: call this
    /// periodically (every `stale_after` or so), not only when a process
    /// starts, since a worker that died just before the restart is not yet
    /// stale then, and its job would stay running, its clients waiting for
    /// ever. And have workers show a sign of life
    /// ([`heartbeat`](JobState::heartbeat), [`progress`](JobState::progress))
    /// more often than `stale_after`: a live worker silent for longer is
    /// recovered too, and its work then runs twice (its own later writes are
    /// refused: its claim is stale). A [`Pipeline`](crate::Pipeline)'s
    /// [`Runner`](crate::pipeline::Runner) does all this with its subject
    /// leases.
    ///
    /// # Errors
    /// As [`recover_where`](JobState::recover_where).
    pub fn recover(&self, stale_after: Duration, action: RecoveryAction) -> Result<Vec<Job>> {
        let now = self.clock.now_ms();
        let stale_ms = u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX);
        self.recover_where(action, |job| {
            let alive = job
                .heartbeat_ms
                .or(job.started_ms)
                .unwrap_or(job.updated_ms);
            now >= alive.saturating_add(stale_ms)
        })
    }

    /// Recovers the running jobs for which `abandoned` says their worker is gone
    /// (its [`JobLock`](crate::JobLock) lease expired, say), as `action` says.
    ///
    /// Each job is recovered by one write, read back as every write of a job
    /// is when the store fails to say whether it landed (see
    /// [`JobState`](JobState#when-the-store-fails-to-say)): a job is returned
    /// only if its write landed.
    ///
    /// # Errors
    /// Store errors, [`Error::Ambiguous`](crate::Error::Ambiguous) included:
    /// they end the recovery, and the jobs recovered before stay recovered.
    pub fn recover_where(
        &self,
        action: RecoveryAction,
        abandoned: impl Fn(&Job) -> bool,
    ) -> Result<Vec<Job>> {
        let mut recovered = Vec::new();
        // Through the index of open jobs: the running ones are among them.
        for job in self.list_open()?.jobs {
            if job.status != JobStatus::Running || !abandoned(&job) {
                continue;
            }
            let attempt = job.attempt;
            let outcome = self.update(&job.id, "recover job", |job, now| {
                // Changed since the listing (finished, or taken over): leave it.
                if job.status != JobStatus::Running || job.attempt != attempt {
                    return Err(crate::Error::InvalidTransition {
                        id: job.id.clone(),
                        status: job.status,
                        action: "recover",
                    });
                }
                let lost = JobError::new("the job was interrupted")
                    .internal(format!("worker of attempt {attempt} stopped responding"))
                    .code("interrupted");
                job.error = Some(lost.clone());
                Ok(match action {
                    RecoveryAction::Requeue => {
                        job.status = JobStatus::Queued;
                        vec![("requeued".to_owned(), json!({ "reason": "worker lost" }))]
                    }
                    RecoveryAction::Fail => {
                        job.status = JobStatus::Failed;
                        job.completed_ms = Some(now);
                        let client =
                            json!({ "error": lost.client_message(), "code": lost.error_code() });
                        vec![("error".to_owned(), client)]
                    }
                })
            });
            match outcome {
                Ok(written) => recovered.push(written.job),
                Err(e) if e.is_invalid_transition() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(recovered)
    }

    /// Removes, with their events, complete, failed and cancelled jobs finished
    /// at least `finished_for` ago, and queued jobs created at least
    /// `queued_for` ago that were never started. Running jobs are never purged.
    ///
    /// This purge knows nothing of ledger reservations: if a client may retry a
    /// paid request whose reservation names a job (and your service creates the
    /// job again when it finds none), keep `finished_for` longer than the
    /// ledger's TTL, or use [`Pipeline::purge`](crate::Pipeline::purge) with
    /// [`PipelineBuilder::ledger`](crate::pipeline::PipelineBuilder::ledger),
    /// which keeps every job a live reservation names.
    ///
    /// # Errors
    /// Store errors. One ends the purge: the jobs removed before stay
    /// removed. A delete that failed in a way that may hide its success is not
    /// read back: that job may be gone too, and is not counted.
    pub fn purge(&self, finished_for: Duration, queued_for: Duration) -> Result<PurgeCounts> {
        let now = self.clock.now_ms();
        let mut counts = PurgeCounts::default();
        // Deleting as the scan goes: no list of every job is held.
        self.for_each_job(|read| {
            // An unreadable record is left, with its events.
            let Ok(job) = read else { return Ok(()) };
            if !job.is_due_for_purge(now, finished_for, queued_for) {
                return self.ensure_open_entry(&job);
            }
            match self.remove_with_events(&job, job.version, &[]) {
                Ok(()) => self.hub.close(&job.id),
                Err(e) if e.is_conflict() => return Ok(()), // changed since it was read
                Err(e) => return Err(e),
            }
            counts.add(job.status);
            Ok(())
        })?;
        Ok(counts)
    }
}
