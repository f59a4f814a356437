//! One run of one job: lease the subject, start an attempt, go through the
//! stages (skip, run, record, fail), and stop cleanly on every way out.

use std::cell::OnceCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::body::Abandon;
use super::checkpoint::{Artifact, Checkpoint, Verdict};
use super::error::StageError;
use super::inputs::{Mismatch, Recorded, read_recorded, read_unrecorded};
use super::lease::Lease;
use super::outcome::{RunOutcome, RunReport, StageAction, Stop};
use super::shared::ArtifactStorage;
use super::stage::{StageContext, StageIo};
use super::{Pipeline, Stage, paths};
use crate::error::steps;
use crate::error::{Error, Result};
use crate::jobs::{Claim, Job, JobStatus};
use crate::lock::{Acquire, LockRecord, LockRequest};
use crate::store::{BatchOp, Expect, Store};
use crate::trace::StageRun;
use crate::vfs::Vfs;

impl<S: Store + 'static, V: Vfs> Pipeline<S, V> {
    /// Runs job `id` if it is due: queued (and past its retry time), or running
    /// with a runner whose lease has ended. Holds the subject's lock for the
    /// whole run; if another runner holds it, returns [`RunOutcome::Busy`]
    /// having changed nothing.
    ///
    /// Stage outcomes are not errors: they are in the report. An `Err` means
    /// the store or the disk failed; the lock is released and the job, left
    /// running, is taken over by the next run once the lease ends.
    ///
    /// # Errors
    /// Store and I/O errors; [`Error::Corrupt`] for an unreadable job record;
    /// [`Error::UnsupportedSchema`] for a record written by a newer version.
    pub fn run_job(&self, id: &str) -> Result<RunReport> {
        self.run_job_unless(id, &Abandon::never())
    }

    /// [`run_job`](Pipeline::run_job), which stops as
    /// [`RunOutcome::Abandoned`] once `abandon` is set.
    pub(crate) fn run_job_unless(&self, id: &str, abandon: &Abandon) -> Result<RunReport> {
        let mut report = RunReport {
            job_id: id.to_owned(),
            subject: None,
            stages: Vec::new(),
            outcome: RunOutcome::NotFound,
        };
        let Some(job) = self.inner.jobs.get(id)? else {
            return Ok(report);
        };
        let subject = Self::subject_of(&job).to_owned();
        report.subject = Some(subject.clone());
        if let Some(outcome) = self.not_due(&job) {
            report.outcome = outcome;
            return Ok(report);
        }
        let lease = match self.acquire(&subject, id)? {
            Ok(lease) => lease,
            Err(holder) => {
                report.outcome = RunOutcome::Busy {
                    holder: Box::new(holder),
                };
                return Ok(report);
            }
        };
        let mut claim = None;
        let outcome = self.run_leased(id, &subject, &lease, abandon, &mut report, &mut claim);
        lease.release();
        if let (Ok(RunOutcome::Abandoned { stage }), Some(claim)) = (&outcome, &claim) {
            // Says so on the job, after the release: the event rewrites the
            // job's record, which wakes the runners of other processes and
            // machines (their stores tell of it). One that found the subject
            // busy would otherwise wait for the lease to end. Best effort: a
            // runner that took the job over meanwhile makes it stale.
            let _ = self.inner.jobs.append_event_with(
                claim,
                "handed_over",
                json!({ "stage": stage, "actor": self.inner.actor }),
                &[],
            );
        }
        report.outcome = outcome?;
        Ok(report)
    }

    /// Whether the job that holds a subject, by its lock's `holder` record,
    /// has ended its run: its record no longer says running (or is gone), so
    /// its runner is releasing the subject, unless it died in between. A
    /// read that fails says no.
    pub(crate) fn holder_has_ended(&self, holder: &LockRecord) -> bool {
        let Some(id) = holder.metadata.get(HOLDER_JOB).and_then(|id| id.as_str()) else {
            return false;
        };
        match self.inner.jobs.get(id) {
            Ok(Some(job)) => job.status != JobStatus::Running,
            Ok(None) => true,
            Err(_) => false,
        }
    }

    fn not_due(&self, job: &Job) -> Option<RunOutcome> {
        let now = self.inner.clock.now_ms();
        let due = match job.status {
            JobStatus::Queued => job.retry_at_ms.is_none_or(|at| now >= at),
            JobStatus::Running => true,
            _ => false,
        };
        (!due).then_some(RunOutcome::NotDue {
            status: job.status,
            retry_at_ms: job.retry_at_ms,
        })
    }

    /// The subject's lease, or its holder's record if someone holds it.
    pub(crate) fn acquire(
        &self,
        subject: &str,
        id: &str,
    ) -> Result<std::result::Result<Lease<std::sync::Arc<S>>, LockRecord>> {
        let request = LockRequest::new()
            .actor(self.inner.actor.clone())
            .meta(HOLDER_JOB, id);
        let key = Self::subject_lock_key(subject)?;
        let guard = match self.inner.locks.acquire(&key, self.inner.lease, &request)? {
            Acquire::Acquired(guard) => guard,
            Acquire::Held(holder) => return Ok(Err(holder)),
        };
        let keep_alive = match self.inner.renew_every {
            Some(every) => Some(guard.keep_alive(self.inner.lease, every)?),
            None => None,
        };
        Ok(Ok(Lease::new(
            guard,
            keep_alive,
            std::sync::Arc::clone(&self.inner.clock),
        )))
    }

    fn run_leased(
        &self,
        id: &str,
        subject: &str,
        lease: &Lease<std::sync::Arc<S>>,
        abandon: &Abandon,
        report: &mut RunReport,
        claim: &mut Option<Claim>,
    ) -> Result<RunOutcome> {
        // Decided again under the lock: another runner may have finished it.
        let Some(job) = self.inner.jobs.get(id)? else {
            return Ok(RunOutcome::NotFound);
        };
        if self.inner.store.get(&self.deleting_key(id)?)?.is_some() {
            if job.status == JobStatus::Running {
                // Its runner is gone (we hold the subject): cancel to delete.
                match self.inner.jobs.cancel(id) {
                    Ok(_) => {}
                    Err(e) if e.is_invalid_transition() => {}
                    Err(e) => return Err(e),
                }
            }
            self.remove_job(id)?;
            return Ok(RunOutcome::Deleted);
        }
        if let Some(outcome) = self.not_due(&job) {
            return Ok(outcome);
        }
        let worker = match self.inner.jobs.start(id, Some(lease.token())) {
            Ok(worker) => worker,
            Err(e) if e.is_invalid_transition() => {
                let job = self.inner.jobs.get(id)?;
                return Ok(job.map_or(RunOutcome::NotFound, |job| RunOutcome::NotDue {
                    status: job.status,
                    retry_at_ms: job.retry_at_ms,
                }));
            }
            Err(e) => return Err(e),
        };
        let job_rel = PathBuf::from(paths::JOBS_DIR).join(paths::dir_name(id));
        let subject_rel = PathBuf::from(paths::SUBJECTS_DIR).join(paths::dir_name(subject));
        // Temp files of a runner that crashed here; we hold the subject, so no
        // live runner writes in these directories.
        let swept = [&job_rel, &subject_rel].into_iter().try_for_each(|rel| {
            self.sweep(&self.inner.root.join(rel), Duration::ZERO)
                .map(|_| ())
        });
        let run = RunCtx {
            pipeline: self,
            worker: &worker,
            lease,
            abandon,
            subject,
            job_rel,
            subject_rel,
        };
        // Damage below the artifact root (a link planted in place of a
        // directory) or a disk that fails fails the attempt like a stage's
        // transient error: it counts, backs off, and ends in a failed job,
        // never a job left running for every pass to start again.
        let outcome = match swept {
            Err(e) => {
                let stage = job.stage.clone().unwrap_or_default();
                run.fail(&stage, &[], artifacts_unusable(&e))
            }
            Ok(()) => run.stages(report),
        };
        *claim = Some(worker);
        outcome
    }

    /// Removes temp files at least `min_age` old from `dir`; a missing directory
    /// has none, and a symlink planted on the way is an error, not followed.
    pub(crate) fn sweep(&self, dir: &Path, min_age: Duration) -> Result<usize> {
        if !paths::real_dir(self.inner.writer.vfs(), &self.inner.root, dir)? {
            return Ok(0);
        }
        match self.inner.writer.sweep(dir, min_age, &*self.inner.clock) {
            Ok(removed) => Ok(removed.len()),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// A run in progress: the pipeline, the worker's claim and the lease.
pub(super) struct RunCtx<'r, S: Store + 'static, V: Vfs> {
    pub(super) pipeline: &'r Pipeline<S, V>,
    pub(super) worker: &'r Claim,
    pub(super) lease: &'r Lease<std::sync::Arc<S>>,
    /// Set when whoever awaits the run went away.
    pub(super) abandon: &'r Abandon,
    pub(super) subject: &'r str,
    pub(super) job_rel: PathBuf,
    pub(super) subject_rel: PathBuf,
}

impl<S: Store + 'static, V: Vfs> RunCtx<'_, S, V> {
    pub(super) fn id(&self) -> &str {
        &self.worker.job_id
    }

    pub(super) fn notice(&self, stage: &str, action: StageAction, detail: Option<&str>) {
        self.notice_with(stage, action, detail, None);
    }

    fn notice_with(
        &self,
        stage: &str,
        action: StageAction,
        detail: Option<&str>,
        checkpoint: Option<&Checkpoint>,
    ) {
        self.pipeline.notify(&super::StageNotice {
            job_id: self.id(),
            subject: self.subject,
            stage,
            action,
            detail,
            checkpoint,
        });
    }

    fn stages(&self, report: &mut RunReport) -> Result<RunOutcome> {
        let inner = &self.pipeline.inner;
        let mut previous_chain = String::new();
        let mut recorded = Recorded::default();
        for (i, stage) in inner.stages.iter().enumerate() {
            if let Some(stop) = self.check_between()? {
                return self.stop(stop, None, &[]);
            }
            let entered = inner
                .jobs
                .set_stage_with(self.worker, &stage.name, i == 0, &[]);
            if let Err(e) = entered {
                return self.refused(e, None, &[]);
            }
            let key = self.pipeline.checkpoint_key(self.id(), &stage.name)?;
            let stale = match self.pipeline.read_or_quarantine::<Checkpoint>(&key)? {
                Ok(None) => None,
                Err(unreadable) => Some(format!("its checkpoint was unreadable: {unreadable}")),
                Ok(Some(checkpoint)) => {
                    let verified =
                        checkpoint.verify(inner.writer.vfs(), &inner.root, &previous_chain);
                    let mut verdict = match verified {
                        Ok(verdict) => verdict,
                        Err(e) => return self.fail(&stage.name, &[], artifacts_unusable(&e)),
                    };
                    let mut fetched = 0;
                    if let (Verdict::Stale(_), Some(shared)) = (&verdict, &inner.shared)
                        && checkpoint.chain_follows(&previous_chain)
                    {
                        fetched = match self.restore(shared.as_ref(), &checkpoint) {
                            Ok(fetched) => fetched,
                            Err(e) if e.is_stale_token() || e.is_stale_worker() => {
                                return self.refused(e, None, &[]);
                            }
                            // Not fetched (the storage unreachable, the path
                            // taken by something else): the stage runs again,
                            // and its own failures go by the retry policy.
                            Err(_) => 0,
                        };
                        if fetched > 0 {
                            let root = &inner.root;
                            verdict = match checkpoint.verify(
                                inner.writer.vfs(),
                                root,
                                &previous_chain,
                            ) {
                                Ok(verdict) => verdict,
                                Err(e) => {
                                    return self.fail(&stage.name, &[], artifacts_unusable(&e));
                                }
                            };
                        }
                    }
                    match verdict {
                        Verdict::Valid => {
                            let reason = if fetched > 0 {
                                "checkpoint verified, artifacts fetched from the shared storage"
                            } else {
                                "checkpoint verified"
                            };
                            let skipped = inner.jobs.append_event_with(
                                self.worker,
                                "stage_skipped",
                                json!({ "stage": stage.name, "reason": reason, "fetched": fetched }),
                                &[],
                            );
                            if let Err(e) = skipped {
                                return self.refused(e, None, &[]);
                            }
                            report
                                .stages
                                .push((stage.name.clone(), StageAction::Skipped));
                            self.notice_with(
                                &stage.name,
                                StageAction::Skipped,
                                None,
                                Some(&checkpoint),
                            );
                            recorded.add(&stage.name, &checkpoint.artifacts);
                            previous_chain = checkpoint.chain;
                            continue;
                        }
                        Verdict::Stale(reason) => Some(reason),
                    }
                }
            };
            self.notice(&stage.name, StageAction::Started, stale.as_deref());
            let run = StageRun::start(&stage.name, self.worker.attempt, self.id());
            let ran = self.run_stage(stage, &previous_chain, &recorded, report);
            run.end(&ran, |checkpoint| Some(checkpoint.artifacts.len()));
            match ran? {
                Ok(checkpoint) => {
                    recorded.add(&stage.name, &checkpoint.artifacts);
                    previous_chain = checkpoint.chain;
                }
                Err(outcome) => return Ok(outcome),
            }
        }
        if let Some(stop) = self.check_between()? {
            return self.stop(stop, None, &[]);
        }
        // A span of its own only where there is a result to make.
        let last = inner.stages.last().map_or("", |s| s.name.as_str());
        let run = (inner.result.as_ref())
            .map(|_| StageRun::start_result(last, self.worker.attempt, self.id()));
        let made = self.result(&recorded);
        if let Some(run) = run {
            run.end(&made, |_| None);
        }
        let result = match made? {
            Ok(result) => result,
            Err(outcome) => return Ok(outcome),
        };
        let clear = BatchOp::Delete {
            key: self.pipeline.run_state_key(self.id())?,
            expect: Expect::Any,
        };
        match inner.jobs.complete_with(self.worker, result, &[clear]) {
            Ok(_) => Ok(RunOutcome::Completed),
            Err(e) => self.refused(e, None, &[]),
        }
    }

    /// The job's result: `Ok(Ok(value))` to complete with, or `Ok(Err(outcome))`
    /// when computing it failed and the run ends here (as a failure of the last
    /// stage). It reads the artifacts every stage `recorded`, checked as a
    /// stage's reads are.
    fn result(
        &self,
        recorded: &Recorded,
    ) -> Result<std::result::Result<serde_json::Value, RunOutcome>> {
        let inner = &self.pipeline.inner;
        let Some(make) = &inner.result else {
            let names: Vec<&String> = inner.stages.iter().map(|s| &s.name).collect();
            return Ok(Ok(json!({ "stages": names })));
        };
        let Some(job) = inner.jobs.get(self.id())? else {
            return self.stop(Stop::Deleted, None, &[]).map(Err);
        };
        let last = inner.stages.last().map_or("", |s| s.name.as_str());
        let mut ctx = StageContext {
            io: self,
            job: &job,
            subject: self.subject,
            stage: last,
            job_rel: self.job_rel.clone(),
            subject_rel: self.subject_rel.clone(),
            token: self.lease.token(),
            written: Vec::new(),
            recorded,
            stop: None,
            mismatch: OnceCell::new(),
        };
        let made = catch_unwind(AssertUnwindSafe(|| make(&ctx)));
        let error = match (ctx.mismatch.take(), made) {
            // Whatever it made of the refused read, it did not have its input.
            (Some(mismatch), _) => StageError::artifact_mismatch(mismatch),
            // A result over the bound would be refused by every run again: it
            // fails the job for good, as an error of the result's making.
            (None, Ok(Ok(value))) => match inner.jobs.check_result(self.id(), &value) {
                Ok(()) => return Ok(Ok(value)),
                Err(too_large) => StageError::from(too_large),
            },
            (None, Ok(Err(e))) => e,
            (None, Err(panic)) => StageError::from_panic(&*panic),
        };
        self.notice(
            last,
            StageAction::Failed,
            Some(error.job_error().internal_message()),
        );
        self.fail(last, &[], error).map(Err)
    }

    /// Runs one stage, whose reads are checked against what the earlier
    /// stages `recorded`; `Ok(Ok(checkpoint))` when its checkpoint is
    /// recorded, `Ok(Err(outcome))` when the run ends here.
    fn run_stage(
        &self,
        stage: &Stage,
        previous_chain: &str,
        recorded: &Recorded,
        report: &mut RunReport,
    ) -> Result<std::result::Result<Checkpoint, RunOutcome>> {
        let inner = &self.pipeline.inner;
        let Some(job) = inner.jobs.get(self.id())? else {
            return self.stop(Stop::Deleted, Some(&stage.name), &[]).map(Err);
        };
        let mut ctx = StageContext {
            io: self,
            job: &job,
            subject: self.subject,
            stage: &stage.name,
            job_rel: self.job_rel.clone(),
            subject_rel: self.subject_rel.clone(),
            token: self.lease.token(),
            written: Vec::new(),
            recorded,
            stop: None,
            mismatch: OnceCell::new(),
        };
        let result = catch_unwind(AssertUnwindSafe(|| stage.run.run(&mut ctx, self.abandon)));
        let written = std::mem::take(&mut ctx.written);
        if let Some(reason) = ctx.stop.take() {
            // A write or progress report was refused as stale: whatever the
            // stage returned, find out what happened and stop.
            self.interrupted(&stage.name, &reason, report);
            let stop = self.check_between()?.unwrap_or(Stop::Superseded(reason));
            return self.stop(stop, Some(&stage.name), &written).map(Err);
        }
        let result = match result {
            // Whatever an async stage made of its caller going away (an error
            // or a panic from a runtime shutting down, or no result), the run
            // was abandoned: it is not the stage's failure.
            Ok(None | Some(Err(_))) | Err(_) if self.abandon.is_set() => {
                self.interrupted(&stage.name, "the run's caller went away", report);
                // Decided on what the store says: a run that is no longer
                // ours leaves every file to whoever has the job now.
                let stop = self.check_between()?.unwrap_or(Stop::Abandoned);
                return self.stop(stop, Some(&stage.name), &written).map(Err);
            }
            Ok(Some(returned)) => Ok(returned),
            // Only an abandoned async stage gives no result.
            Ok(None) => {
                self.interrupted(&stage.name, "the stage gave no result", report);
                let stop = self.check_between()?.unwrap_or(Stop::Abandoned);
                return self.stop(stop, Some(&stage.name), &written).map(Err);
            }
            Err(panic) => Err(panic),
        };
        let error = match (ctx.mismatch.take(), result) {
            // Whatever it made of the refused read, it did not have its input:
            // nothing it did is recorded.
            (Some(mismatch), _) => Some(StageError::artifact_mismatch(mismatch)),
            (None, Ok(Ok(()))) => None,
            (None, Ok(Err(e))) => Some(e),
            (None, Err(panic)) => Some(StageError::from_panic(&*panic)),
        };
        if let Some(error) = error {
            report
                .stages
                .push((stage.name.clone(), StageAction::Failed));
            self.notice(
                &stage.name,
                StageAction::Failed,
                Some(error.job_error().internal_message()),
            );
            return self.fail(&stage.name, &written, error).map(Err);
        }
        match self.record_checkpoint(&stage.name, previous_chain, &written) {
            Ok(checkpoint) => {
                report.stages.push((stage.name.clone(), StageAction::Ran));
                self.notice_with(&stage.name, StageAction::Ran, None, Some(&checkpoint));
                Ok(Ok(checkpoint))
            }
            Err(e) if e.is_stale_worker() || e.is_invalid_transition() => {
                self.interrupted(&stage.name, &e.to_string(), report);
                self.refused(e, Some(&stage.name), &written).map(Err)
            }
            Err(e) => Err(e),
        }
    }

    fn interrupted(&self, stage: &str, reason: &str, report: &mut RunReport) {
        report
            .stages
            .push((stage.to_owned(), StageAction::Interrupted));
        self.notice(stage, StageAction::Interrupted, Some(reason));
    }

    /// Whether the run must stop at this boundary: job taken over, lease lost,
    /// cancelled, deleted or otherwise no longer running. A runner that no
    /// longer owns the job or its lease is told so first: it must not touch
    /// any file.
    pub(super) fn check_between(&self) -> Result<Option<Stop>> {
        let job = self.pipeline.inner.jobs.get(self.id())?;
        if let Some(reason) = job.as_ref().and_then(|job| self.ownership(job)) {
            return Ok(Some(Stop::Superseded(reason)));
        }
        if let Some(reason) = self.lease.lost() {
            return Ok(Some(Stop::LeaseLost(reason)));
        }
        let Some(job) = job else {
            return Ok(Some(Stop::Deleted));
        };
        Ok(match job.status {
            // Still ours: stopped only if whoever awaits the run went away.
            // Checked last, so that a run that is no longer ours leaves
            // every file to whoever has the job now.
            JobStatus::Running if self.abandon.is_set() => Some(Stop::Abandoned),
            JobStatus::Running => None,
            JobStatus::Cancelled => {
                let deleting = self.pipeline.deleting_key(self.id())?;
                if self.pipeline.inner.store.get(&deleting)?.is_some() {
                    Some(Stop::Deleted)
                } else {
                    Some(Stop::Cancelled)
                }
            }
            other => Some(Stop::NotRunning(other)),
        })
    }

    /// Why this runner no longer owns `job`, if it does not.
    fn ownership(&self, job: &Job) -> Option<String> {
        if job.attempt != self.worker.attempt {
            return Some(format!(
                "attempt {} was superseded by attempt {}",
                self.worker.attempt, job.attempt
            ));
        }
        match (job.fencing, self.worker.token) {
            (Some(seen), Some(ours)) if ours < seen => Some(format!(
                "its fencing token {ours} is older than the job's {seen}"
            )),
            _ => None,
        }
    }

    /// A job transition was refused: find out why and stop accordingly.
    pub(super) fn refused(
        &self,
        error: Error,
        stage: Option<&str>,
        partial: &[Artifact],
    ) -> Result<RunOutcome> {
        if !(error.is_stale_worker() || error.is_invalid_transition()) {
            return Err(error);
        }
        let stop = self
            .check_between()?
            .unwrap_or_else(|| Stop::Superseded(error.to_string()));
        self.stop(stop, stage, partial)
    }

    fn stop(&self, stop: Stop, stage: Option<&str>, partial: &[Artifact]) -> Result<RunOutcome> {
        let stage = stage.map(str::to_owned);
        match stop {
            // Not ours any more: leave every file to whoever has the job now.
            Stop::Superseded(reason) => Ok(RunOutcome::Superseded { stage, reason }),
            Stop::LeaseLost(reason) => Ok(RunOutcome::LostLease { stage, reason }),
            Stop::NotRunning(status) => Ok(RunOutcome::NotRunning { stage, status }),
            Stop::Cancelled => {
                self.remove_artifacts(partial)?;
                Ok(RunOutcome::Cancelled { stage })
            }
            Stop::Deleted => {
                self.remove_artifacts(partial)?;
                self.pipeline.remove_job(self.id())?;
                Ok(RunOutcome::Deleted)
            }
            // Still ours: what the stage wrote is not recorded, and goes.
            Stop::Abandoned => {
                self.remove_artifacts(partial)?;
                Ok(RunOutcome::Abandoned { stage })
            }
        }
    }

    pub(super) fn remove_artifacts(&self, artifacts: &[Artifact]) -> Result<()> {
        let vfs = self.pipeline.inner.writer.vfs();
        let root = &self.pipeline.inner.root;
        for artifact in artifacts {
            let path = root.join(&artifact.path);
            // Never through a symlink planted on the way.
            if !super::paths::real_dir(vfs, root, super::paths::parent(&path))? {
                continue;
            }
            match vfs.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(steps::REMOVE_PARTIAL_ARTIFACT, path, e)),
            }
        }
        Ok(())
    }

    /// Checks that this runner still owns the job and its lease: before a write
    /// creates anything, and again just before it commits.
    fn fence(&self, path: &Path) -> Result<()> {
        let stale = |reason: String| Error::StaleWorker {
            id: self.id().to_owned(),
            reason,
        };
        // The store first: a successor's newer token is the authoritative
        // refusal. Then the lease: it may have ended with nobody taking over yet.
        let Some(job) = self.pipeline.inner.jobs.get(self.id())? else {
            return Err(stale("the job was removed".to_owned()));
        };
        if let (Some(seen), Some(ours)) = (job.fencing, self.worker.token) {
            ours.check_not_older_than(seen, &path.display().to_string())?;
        }
        if let Some(reason) = self.ownership(&job) {
            return Err(stale(reason));
        }
        if let Some(reason) = self.lease.lost() {
            return Err(stale(reason));
        }
        Ok(())
    }
}

impl<S: Store + 'static, V: Vfs> RunCtx<'_, S, V> {
    /// Writes `bytes` at `rel` in the local artifact directory, atomically,
    /// refused (with nothing written) once the runner lost the job.
    fn write_local(&self, rel: &Path, bytes: &[u8]) -> Result<()> {
        let inner = &self.pipeline.inner;
        let target = inner.root.join(rel);
        // Before anything touches the disk: a stale runner must not recreate
        // the directory of a job deleted after it lost the lease.
        self.fence(&target)?;
        let vfs = inner.writer.vfs();
        if let Some(dir) = target.parent() {
            super::paths::ensure_dir(vfs, &inner.root, &inner.known, dir)?;
        }
        let mut pending = inner.writer.begin(&target)?;
        if let Some(dir) = target.parent()
            && inner.writer.durability_level() == crate::Durability::Full
        {
            super::paths::make_way_durable(vfs, &inner.root, &inner.known, dir)?;
        }
        pending.write_bytes(bytes)?;
        // Again just before the rename: the job may have been taken over while
        // the bytes were written. On refusal the pending file is dropped, which
        // removes its temp file.
        self.fence(&target)?;
        pending.commit()?;
        Ok(())
    }

    /// Fetches from the shared storage, into the local directory, every
    /// artifact of `checkpoint` that is missing or different there and whose
    /// copy has the recorded length and SHA-256; how many. What does not
    /// verify is left, and the checkpoint then does not verify either.
    fn restore(&self, shared: &dyn ArtifactStorage, checkpoint: &Checkpoint) -> Result<usize> {
        let inner = &self.pipeline.inner;
        let mut restored = 0;
        for artifact in &checkpoint.artifacts {
            match read_recorded(inner.writer.vfs(), &inner.root, artifact, false)? {
                // A directory or a link in its place is never replaced: the
                // stage runs again, and meets it as a run would.
                Ok(_) | Err(Mismatch::BadPath | Mismatch::NotRegular) => continue,
                Err(_) => {}
            }
            let Some(bytes) = shared.fetch(artifact)? else {
                continue;
            };
            if Artifact::of(artifact.path.clone(), &bytes) != *artifact {
                continue;
            }
            self.write_local(&artifact.path, &bytes)?;
            restored += 1;
        }
        Ok(restored)
    }
}

impl<S: Store + 'static, V: Vfs> StageIo for RunCtx<'_, S, V> {
    fn write(&self, rel: PathBuf, bytes: &[u8]) -> Result<Artifact> {
        let artifact = Artifact::of(rel, bytes);
        if let Some(shared) = &self.pipeline.inner.shared {
            // The copy first: one that fails fails the write with the local
            // file as it was (another job's verified artifact, in a subject's
            // directory), and nothing is removed to undo it. Not for a runner
            // that lost the job meanwhile: the copy would replace the one of
            // the runner that holds it now.
            let target = self.pipeline.inner.root.join(&artifact.path);
            self.fence(&target)?;
            shared.store(&artifact, bytes)?;
        }
        self.write_local(&artifact.path, bytes)?;
        Ok(artifact)
    }

    fn read_recorded(&self, recorded: &Artifact) -> Result<std::result::Result<Vec<u8>, Mismatch>> {
        let inner = &self.pipeline.inner;
        read_recorded(inner.writer.vfs(), &inner.root, recorded, true)
    }

    fn read_unrecorded(&self, rel: &Path) -> Result<Vec<u8>> {
        let inner = &self.pipeline.inner;
        read_unrecorded(inner.writer.vfs(), &inner.root, rel)
    }

    fn progress(&self, message: &str) -> Result<()> {
        self.pipeline
            .inner
            .jobs
            .progress(self.worker, message)
            .map(|_| ())
    }

    fn root(&self) -> &Path {
        &self.pipeline.inner.root
    }
}

/// The metadata field of a subject's lock that names the job holding it.
const HOLDER_JOB: &str = "job";

/// The stage error of an attempt that cannot use the job's artifact
/// directories (damaged, or the disk failing): transient, so that it counts
/// against the retry policy and backs off like any stage's.
fn artifacts_unusable(error: &Error) -> StageError {
    StageError::transient("the job's artifacts could not be read or cleaned up")
        .internal(error.to_string())
}
