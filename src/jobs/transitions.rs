//! The status machine: every change is one compare-and-set of the job record,
//! checked against its status and, for a worker, against its attempt and token.
//!
//! ```text
//!            start              complete
//!  queued ──────────► running ──────────► complete (final)
//!    ▲  ▲               │  │   fail(permanent)
//!    │  └───────────────┘  └────────────► failed ──retry──► queued
//!    │  fail(transient):                  │
//!    │  back with a retry time            │
//!    └────────────────────────────────────┘
//!  cancel: queued, running or failed ──► cancelled (final)
//! ```
//!
//! Every transition that appends an event returns the job as it wrote it, in
//! the same batch as the event: its [`Job::last_event_seq`] is the sequence
//! number of that event, whatever other writers append afterwards.

use serde_json::{Value, json};

use super::events::NewEvent;
use super::record::{MAX_PROGRESS_LEN, bounded};
use super::{Claim, Event, Job, JobError, JobState, JobStatus};
use crate::error::{Error, Result};
use crate::fencing::FencingToken;
use crate::limits;
use crate::store::{BatchOp, Store};

/// How an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Worth trying again: the job goes back to the queue, not to be started
    /// before `retry_at_ms` (by the job state's clock).
    Transient {
        /// When the job may start again.
        retry_at_ms: u64,
    },
    /// Not worth trying again: the job is failed until a manual
    /// [`retry`](JobState::retry).
    Permanent,
}

impl<S: Store> JobState<S> {
    /// Starts a new attempt of a queued job (whose retry time, if any, has come),
    /// and returns the worker's claim on it. The claim's
    /// [`started_seq`](Claim::started_seq) is the sequence number of the
    /// `started` event this call appended.
    ///
    /// With a fencing `token` (from a [`JobLock`](crate::JobLock) lease on the
    /// job, say) a running job can also be taken over, by a token greater than any
    /// the job has seen: the previous worker is then stale and every change it
    /// tries is refused. The job records the newest token it has seen.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] if the job is not queued (or not due yet), or
    /// is running and `token` does not exceed its newest; [`Error::StaleWorker`]
    /// if `token` is older than one the job has seen; [`Error::JobNotFound`].
    pub fn start(&self, id: &str, token: Option<FencingToken>) -> Result<Claim> {
        let (job, written) = self.update(id, |job, now| {
            if let Some(seen) = job.fencing
                && token.is_none_or(|presented| presented < seen)
            {
                let presented = token.map_or("no token".to_owned(), |t| format!("token {t}"));
                return Err(Error::StaleWorker {
                    id: job.id.clone(),
                    reason: format!("{presented} is older than the job's fencing token {seen}"),
                });
            }
            let takeover = job.status == JobStatus::Running
                && token.is_some_and(|t| job.fencing.is_none_or(|seen| t > seen));
            let due = job.retry_at_ms.is_none_or(|at| now >= at);
            let startable = job.status == JobStatus::Queued && due;
            if !(startable || takeover) {
                return Err(invalid(job, "start"));
            }
            job.status = JobStatus::Running;
            job.attempt += 1;
            job.started_ms = Some(now);
            job.heartbeat_ms = Some(now);
            job.retry_at_ms = None;
            if token.is_some() {
                job.fencing = token;
            }
            Ok(vec![event("started", json!({ "attempt": job.attempt }))])
        })?;
        Ok(Claim {
            job_id: job.id,
            attempt: job.attempt,
            token,
            started_seq: written.first().map(|e| e.seq),
        })
    }

    /// Moves the job to `stage`, recording the stage it leaves as done, and
    /// appends a `stage` event. Returns the job as written: its
    /// [`last_event_seq`](Job::last_event_seq) is that event's number.
    ///
    /// # Errors
    /// [`Error::StaleWorker`]; [`Error::InvalidTransition`] unless running;
    /// [`Error::TooLarge`] for a stage name over [`Job::MAX_STAGE_LEN`], with
    /// nothing written.
    pub fn set_stage(&self, worker: &Claim, stage: &str) -> Result<Job> {
        self.set_stage_with(worker, stage, false, &[])
    }

    /// [`set_stage`](JobState::set_stage), with `extra` store operations in the
    /// same atomic batch. With `restart`, the stages of earlier attempts are
    /// forgotten first: the record then shows what this attempt traversed.
    pub(crate) fn set_stage_with(
        &self,
        worker: &Claim,
        stage: &str,
        restart: bool,
        extra: &[BatchOp],
    ) -> Result<Job> {
        let key = self.record_key(&worker.job_id)?;
        limits::check_text("job stage", &key, Some(stage), Job::MAX_STAGE_LEN)?;
        self.update_as(worker, "set a stage", extra, |job, now| {
            job.heartbeat_ms = Some(now);
            if restart {
                job.stage = None;
                job.stages_done.clear();
            }
            if let Some(done) = job.stage.replace(stage.to_owned()) {
                job.stages_done.push(done);
            }
            Ok(vec![event("stage", json!({ "stage": stage }))])
        })
    }

    /// Records a progress message (cut to [`Job::MAX_PROGRESS_LEN`] bytes) and
    /// appends a `progress` event. Returns the job as written: its
    /// [`last_event_seq`](Job::last_event_seq) is that event's number.
    ///
    /// # Errors
    /// As [`set_stage`](JobState::set_stage).
    pub fn progress(&self, worker: &Claim, message: &str) -> Result<Job> {
        let message = bounded(message.to_owned(), MAX_PROGRESS_LEN);
        self.update_as(worker, "report progress", &[], |job, now| {
            job.progress = Some(message.clone());
            job.heartbeat_ms = Some(now);
            Ok(vec![event("progress", json!({ "message": message }))])
        })
    }

    /// Records that the worker is alive, for [`recover`](JobState::recover).
    ///
    /// # Errors
    /// As [`set_stage`](JobState::set_stage).
    pub fn heartbeat(&self, worker: &Claim) -> Result<Job> {
        self.update_as(worker, "heartbeat", &[], |job, now| {
            job.heartbeat_ms = Some(now);
            Ok(Vec::new())
        })
    }

    /// Appends an event of the worker's own type. The terminal types (`done`,
    /// `error`, `cancelled`) are reserved for the transitions that end a job.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a reserved or empty type;
    /// [`Error::TooLarge`] naming the field for a type over
    /// [`Event::MAX_KIND_LEN`] or data over [`Event::MAX_DATA_LEN`], with
    /// nothing written; as [`set_stage`](JobState::set_stage).
    pub fn append_event(&self, worker: &Claim, kind: &str, data: Value) -> Result<Event> {
        self.append_event_with(worker, kind, data, &[])
    }

    /// [`append_event`](JobState::append_event), with `extra` store operations in
    /// the same atomic batch: they happen only if the worker still owns the job.
    pub(crate) fn append_event_with(
        &self,
        worker: &Claim,
        kind: &str,
        data: Value,
        extra: &[BatchOp],
    ) -> Result<Event> {
        if kind.is_empty() || super::record::TERMINAL_EVENTS.contains(&kind) {
            return Err(Error::InvalidArgument(format!(
                "event type {kind:?} is empty or reserved for the end of a job"
            )));
        }
        let key = self.record_key(&worker.job_id)?;
        limits::check_text("event kind", &key, Some(kind), Event::MAX_KIND_LEN)?;
        limits::check_json("event data", &key, &data, Event::MAX_DATA_LEN)?;
        let (_, written) = self.update_with(&worker.job_id, extra, |job, now| {
            check_worker(job, worker, "append an event")?;
            job.heartbeat_ms = Some(now);
            Ok(vec![event(kind, data.clone())])
        })?;
        // The newest event is always kept, whatever the bound.
        written
            .into_iter()
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("event {kind:?} was not kept")))
    }

    /// Completes the job with `result`, stored and sent in the `done` event
    /// exactly as given, in one atomic batch. Final. The error of an earlier
    /// failed attempt is cleared from the record; the event log keeps it.
    ///
    /// # Errors
    /// As [`set_stage`](JobState::set_stage); completing twice is an
    /// [`Error::InvalidTransition`]; [`Error::TooLarge`] for a result over
    /// [`Job::MAX_RESULT_LEN`], with nothing written (the job stays running:
    /// complete it with a smaller result, or fail it).
    pub fn complete(&self, worker: &Claim, result: Value) -> Result<Job> {
        self.complete_with(worker, result, &[])
    }

    /// [`complete`](JobState::complete), with `extra` store operations in the
    /// same atomic batch.
    pub(crate) fn complete_with(
        &self,
        worker: &Claim,
        result: Value,
        extra: &[BatchOp],
    ) -> Result<Job> {
        self.check_result(&worker.job_id, &result)?;
        self.update_as(worker, "complete", extra, |job, now| {
            job.status = JobStatus::Complete;
            if let Some(done) = job.stage.take() {
                job.stages_done.push(done);
            }
            job.result = Some(result.clone());
            // An earlier attempt's error is history (its `retry` or `error` event
            // keeps it), not the state of a complete job.
            job.error = None;
            job.completed_ms = Some(now);
            Ok(vec![event("done", result.clone())])
        })
    }

    /// Fails the current attempt. A [`FailureKind::Transient`] failure puts the job
    /// back in the queue until its retry time (event `retry`); a
    /// [`FailureKind::Permanent`] one fails it (event `error` with the client message
    /// and code only), in one atomic batch with the status.
    ///
    /// # Errors
    /// As [`set_stage`](JobState::set_stage).
    pub fn fail(&self, worker: &Claim, error: JobError, failure: FailureKind) -> Result<Job> {
        self.fail_with(worker, error, failure, &[])
    }

    /// [`fail`](JobState::fail), with `extra` store operations in the same
    /// atomic batch.
    pub(crate) fn fail_with(
        &self,
        worker: &Claim,
        error: JobError,
        failure: FailureKind,
        extra: &[BatchOp],
    ) -> Result<Job> {
        self.update_as(worker, "fail", extra, |job, now| {
            let client = json!({ "error": error.client_message(), "code": error.error_code() });
            job.error = Some(error.clone());
            Ok(match failure {
                FailureKind::Transient { retry_at_ms } => {
                    job.status = JobStatus::Queued;
                    job.retry_at_ms = Some(retry_at_ms);
                    vec![event(
                        "retry",
                        json!({ "error": client, "retry_at_ms": retry_at_ms }),
                    )]
                }
                FailureKind::Permanent => {
                    job.status = JobStatus::Failed;
                    job.completed_ms = Some(now);
                    vec![event("error", client)]
                }
            })
        })
    }

    /// Cancels a queued, running or failed job (event `cancelled`). Final; a
    /// running worker's next change is refused. Returns the job as written: its
    /// [`last_event_seq`](Job::last_event_seq) is the `cancelled` event's number.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] for a complete or cancelled job;
    /// [`Error::JobNotFound`].
    pub fn cancel(&self, id: &str) -> Result<Job> {
        self.update(id, |job, now| {
            if matches!(job.status, JobStatus::Complete | JobStatus::Cancelled) {
                return Err(invalid(job, "cancel"));
            }
            job.status = JobStatus::Cancelled;
            job.completed_ms = Some(now);
            Ok(vec![event("cancelled", json!({}))])
        })
        .map(|(job, _)| job)
    }

    /// Puts a failed job back in the queue for a new attempt (event `requeued`).
    /// Its last error stays on the record until the next attempt fails (and is
    /// replaced) or completes (and is cleared).
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] unless failed; [`Error::JobNotFound`].
    pub fn retry(&self, id: &str) -> Result<Job> {
        self.retry_with(id, &[])
    }

    /// [`retry`](JobState::retry), with `extra` store operations in the same
    /// atomic batch: they happen only if the job was failed and is requeued.
    pub(crate) fn retry_with(&self, id: &str, extra: &[BatchOp]) -> Result<Job> {
        self.update_with(id, extra, |job, _| {
            if job.status != JobStatus::Failed {
                return Err(invalid(job, "retry"));
            }
            job.status = JobStatus::Queued;
            job.completed_ms = None;
            job.retry_at_ms = None;
            Ok(vec![event("requeued", json!({ "reason": "manual retry" }))])
        })
        .map(|(job, _)| job)
    }

    /// Refuses a result of job `id` over [`Job::MAX_RESULT_LEN`], before
    /// anything is written.
    pub(crate) fn check_result(&self, id: &str, result: &Value) -> Result<()> {
        let key = self.record_key(id)?;
        limits::check_json("job result", &key, result, Job::MAX_RESULT_LEN)
    }

    /// A change by `worker`: refused unless it still runs the job's current
    /// attempt with a token not older than the job's newest.
    fn update_as(
        &self,
        worker: &Claim,
        action: &'static str,
        extra: &[BatchOp],
        mut change: impl FnMut(&mut Job, u64) -> Result<Vec<NewEvent>>,
    ) -> Result<Job> {
        self.update_with(&worker.job_id, extra, |job, now| {
            check_worker(job, worker, action)?;
            change(job, now)
        })
        .map(|(job, _)| job)
    }

    /// Reads the job, applies `change` (which validates and returns the events to
    /// append), and writes it back by compare-and-set, retrying lost races.
    pub(super) fn update(
        &self,
        id: &str,
        change: impl FnMut(&mut Job, u64) -> Result<Vec<NewEvent>>,
    ) -> Result<(Job, Vec<Event>)> {
        self.update_with(id, &[], change)
    }

    /// As [`update`](JobState::update), with `extra` store operations (on keys
    /// outside the job's, with `Expect::Any`) in the same atomic batch.
    fn update_with(
        &self,
        id: &str,
        extra: &[BatchOp],
        mut change: impl FnMut(&mut Job, u64) -> Result<Vec<NewEvent>>,
    ) -> Result<(Job, Vec<Event>)> {
        let record_key = self.record_key(id)?;
        loop {
            let (mut job, version) = self.read_required(id)?;
            let now = self.clock.now_ms();
            let events = change(&mut job, now)?;
            job.updated_ms = now;
            match self.commit(job, version, events, extra) {
                // The record changed under us: decide again on what is there now.
                Err(Error::Conflict { key, .. }) if key == record_key => continue,
                // An event key was taken. If the record moved on meanwhile, another
                // writer appended first: decide again. If it did not, an event sits
                // where the record says the next one goes, and retrying would
                // never succeed.
                Err(Error::Conflict { key, .. }) => {
                    let (_, now_at) = self.read_required(id)?;
                    if now_at != version {
                        continue;
                    }
                    return Err(Error::Corrupt {
                        key,
                        path: None,
                        reason: format!(
                            "an event of job {id} exists beyond the sequence numbers its record counts; \
                             the store was changed outside jobsafe"
                        ),
                    });
                }
                result => return result,
            }
        }
    }
}

fn check_worker(job: &Job, worker: &Claim, action: &'static str) -> Result<()> {
    let stale = |reason: String| {
        Err(Error::StaleWorker {
            id: job.id.clone(),
            reason,
        })
    };
    if worker.attempt != job.attempt {
        return stale(format!(
            "attempt {} was superseded by attempt {}",
            worker.attempt, job.attempt
        ));
    }
    if let Some(seen) = job.fencing
        && worker.token.is_none_or(|t| t < seen)
    {
        return stale(format!(
            "its fencing token {:?} is older than {seen}",
            worker.token.map(|t| t.get())
        ));
    }
    if job.status != JobStatus::Running {
        return Err(invalid(job, action));
    }
    Ok(())
}

fn invalid(job: &Job, action: &'static str) -> Error {
    Error::InvalidTransition {
        id: job.id.clone(),
        status: job.status,
        action,
    }
}

fn event(kind: &str, data: Value) -> NewEvent {
    (kind.to_owned(), data)
}
