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
use crate::attempt::AttemptId;
use crate::error::{Error, Result};
use crate::fencing::FencingToken;
use crate::key::Key;
use crate::limits;
use crate::resolve::{Deadline, LateWrite, may_have_landed};
use crate::store::{BatchOp, Expect, Store, Version};
use crate::trace::report;

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
    /// Wakes the runners of this process if `job` is queued now: created, or
    /// put back to wait for a retry.
    fn queued_if(&self, job: &Job) {
        if job.status == JobStatus::Queued {
            self.hub.queued.raise();
        }
    }

    /// What [`queued_if`](Self::queued_if) raises, for a runner to wait on.
    pub(crate) fn queued_signal(&self) -> &crate::wake::Signal {
        &self.hub.queued
    }

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
    /// Each call is a new attempt id: to make a start that can be repeated,
    /// use [`start_attempt`](JobState::start_attempt).
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] if the job is not queued (or not due yet), or
    /// is running and `token` does not exceed its newest; [`Error::StaleWorker`]
    /// if `token` is older than one the job has seen; [`Error::JobNotFound`];
    /// as [`start_attempt`](JobState::start_attempt) for a store that fails.
    pub fn start(&self, id: &str, token: Option<FencingToken>) -> Result<Claim> {
        self.start_attempt(id, token, &AttemptId::new())
    }

    /// [`start`](JobState::start), named by `attempt`, so that repeating it is
    /// recognised as the same call: while the job runs the attempt that
    /// `attempt` started, with `token` still its newest, a start with the same
    /// id and token returns the same [`Claim`] instead of an
    /// [`Error::InvalidTransition`]. Repeat a start that failed with an
    /// [ambiguous](Error::is_ambiguous) error with the id it carries
    /// ([`Error::attempt_id`]). Never reuse an attempt id for another start.
    ///
    /// A write that fails in a way that may hide its success (the store was
    /// unreachable, and may have committed it) is read back until the
    /// [`resolve_within`](super::JobStateBuilder::resolve_within) deadline: if
    /// it landed, the call returns its claim, so that no job runs under an
    /// attempt nobody holds; if it did not, it is decided and written again
    /// (at most three writes in all), which fences the failed write off
    /// should it still arrive.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::{AttemptId, JobState, ManualClock, MemStore};
    /// use jobsafe::jobs::NewJob;
    ///
    /// let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::default()));
    /// let job = jobs.create(NewJob::new("export"))?;
    /// let attempt = AttemptId::new();
    /// let claim = jobs.start_attempt(&job.id, None, &attempt)?;
    /// // Its reply was lost, say, and the worker asks again with the same id.
    /// assert_eq!(jobs.start_attempt(&job.id, None, &attempt)?, claim);
    /// // Any other start finds the job running.
    /// assert!(jobs.start(&job.id, None).unwrap_err().is_invalid_transition());
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`start`](JobState::start); [`Error::Ambiguous`] with the attempt id
    /// if the store failed the write and stayed unreachable until the
    /// deadline; store errors: a transient one only when the write is known
    /// not to have landed.
    pub fn start_attempt(
        &self,
        id: &str,
        token: Option<FencingToken>,
        attempt: &AttemptId,
    ) -> Result<Claim> {
        let record_key = self.record_key(id)?;
        let written = self.write_job(id, "start job", attempt, &[], |job, now| {
            if job.status == JobStatus::Running
                && job.started_by.as_ref() == Some(attempt)
                && job.fencing == token
            {
                // This start, repeated: it had landed.
                return Ok(Step::Already);
            }
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
            // A count at its end can only be disk content made by hand.
            let Some(next) = job.attempt.checked_add(1) else {
                return Err(Error::Corrupt {
                    key: record_key.clone(),
                    path: None,
                    reason: format!(
                        "job {} counts {} attempts already, the most a job can have",
                        job.id, job.attempt
                    ),
                });
            };
            job.status = JobStatus::Running;
            job.attempt = next;
            job.started_ms = Some(now);
            job.heartbeat_ms = Some(now);
            job.retry_at_ms = None;
            if token.is_some() {
                job.fencing = token;
            }
            job.started_by = Some(attempt.clone());
            // The `started` event is the first this write appends.
            job.started_seq = Some(job.events.next_seq);
            Ok(Step::Write(vec![event(
                "started",
                json!({ "attempt": job.attempt }),
            )]))
        })?;
        Ok(Claim {
            job_id: written.job.id,
            attempt: written.start.attempt,
            token,
            started_seq: written.start.started_seq,
        })
    }

    /// Moves the job to `stage`, recording the stage it leaves as done, and
    /// appends a `stage` event. Returns the job as written: its
    /// [`last_event_seq`](Job::last_event_seq) is that event's number.
    ///
    /// # Errors
    /// [`Error::StaleWorker`]; [`Error::InvalidTransition`] unless running;
    /// [`Error::TooLarge`] for a stage name over [`Job::MAX_STAGE_LEN`], with
    /// nothing written; [`Error::Ambiguous`] if the store failed the write
    /// and its outcome could not be read back by the deadline (see
    /// [`JobState`](JobState#when-the-store-fails-to-say)); store errors: a
    /// transient one only when the write is known not to have landed.
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
        self.update_as(worker, "set job stage", "set a stage", extra, |job, now| {
            job.heartbeat_ms = Some(now);
            if restart {
                job.stage = None;
                job.stages_done.clear();
            }
            if let Some(done) = job.stage.take() {
                let size = job.stages_done.iter().map(String::len).sum::<usize>() + done.len();
                if size > Job::MAX_STAGES_DONE_LEN {
                    return Err(Error::TooLarge {
                        what: "job stages done",
                        key: Some(key.clone()),
                        size,
                        limit: Job::MAX_STAGES_DONE_LEN,
                    });
                }
                job.stages_done.push(done);
            }
            job.stage = Some(stage.to_owned());
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
        self.update_as(
            worker,
            "report job progress",
            "report progress",
            &[],
            |job, now| {
                job.progress = Some(message.clone());
                job.heartbeat_ms = Some(now);
                Ok(vec![event("progress", json!({ "message": message }))])
            },
        )
    }

    /// Records that the worker is alive, for [`recover`](JobState::recover).
    ///
    /// # Errors
    /// As [`set_stage`](JobState::set_stage).
    pub fn heartbeat(&self, worker: &Claim) -> Result<Job> {
        self.update_as(worker, "heartbeat job", "heartbeat", &[], |job, now| {
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
        let written = self.update_with(&worker.job_id, "append job event", extra, |job, now| {
            check_worker(job, worker, "append an event")?;
            job.heartbeat_ms = Some(now);
            Ok(vec![event(kind, data.clone())])
        })?;
        // The newest event is always kept, whatever the bound.
        written
            .events
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
        self.update_as(worker, "complete job", "complete", extra, |job, now| {
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
        self.update_as(worker, "fail job", "fail", extra, |job, now| {
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
    /// [`Error::JobNotFound`]; as [`set_stage`](JobState::set_stage) for a
    /// store that fails.
    pub fn cancel(&self, id: &str) -> Result<Job> {
        self.update(id, "cancel job", |job, now| {
            if matches!(job.status, JobStatus::Complete | JobStatus::Cancelled) {
                return Err(invalid(job, "cancel"));
            }
            job.status = JobStatus::Cancelled;
            job.completed_ms = Some(now);
            Ok(vec![event("cancelled", json!({}))])
        })
        .map(|written| written.job)
    }

    /// Puts a failed job back in the queue for a new attempt (event `requeued`).
    /// Its last error stays on the record until the next attempt fails (and is
    /// replaced) or completes (and is cleared).
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] unless failed; [`Error::JobNotFound`]; as
    /// [`set_stage`](JobState::set_stage) for a store that fails.
    pub fn retry(&self, id: &str) -> Result<Job> {
        self.retry_with(id, &[])
    }

    /// [`retry`](JobState::retry), with `extra` store operations in the same
    /// atomic batch: they happen only if the job was failed and is requeued.
    pub(crate) fn retry_with(&self, id: &str, extra: &[BatchOp]) -> Result<Job> {
        self.update_with(id, "retry job", extra, |job, _| {
            if job.status != JobStatus::Failed {
                return Err(invalid(job, "retry"));
            }
            job.status = JobStatus::Queued;
            job.completed_ms = None;
            job.retry_at_ms = None;
            Ok(vec![event("requeued", json!({ "reason": "manual retry" }))])
        })
        .map(|written| written.job)
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
        operation: &'static str,
        action: &'static str,
        extra: &[BatchOp],
        mut change: impl FnMut(&mut Job, u64) -> Result<Vec<NewEvent>>,
    ) -> Result<Job> {
        self.update_with(&worker.job_id, operation, extra, |job, now| {
            check_worker(job, worker, action)?;
            change(job, now)
        })
        .map(|written| written.job)
    }

    /// Reads the job, applies `change` (which validates and returns the events to
    /// append), and writes it back by compare-and-set, retrying lost races.
    /// `operation` names the call in an [ambiguous](Error::Ambiguous) error.
    pub(super) fn update(
        &self,
        id: &str,
        operation: &'static str,
        change: impl FnMut(&mut Job, u64) -> Result<Vec<NewEvent>>,
    ) -> Result<Written> {
        self.update_with(id, operation, &[], change)
    }

    /// As [`update`](JobState::update), with `extra` store operations (on keys
    /// outside the job's, with `Expect::Any`) in the same atomic batch.
    fn update_with(
        &self,
        id: &str,
        operation: &'static str,
        extra: &[BatchOp],
        mut change: impl FnMut(&mut Job, u64) -> Result<Vec<NewEvent>>,
    ) -> Result<Written> {
        self.write_job(id, operation, &AttemptId::new(), extra, |job, now| {
            change(job, now).map(Step::Write)
        })
    }

    /// Every write of a job record: reads the job, applies `change`, and
    /// writes the record and the new events (with `extra`) in one batch by
    /// compare-and-set, deciding again after a lost race. The record and the
    /// events carry `write`, the id of this call's write.
    ///
    /// A batch whose store call fails in a way that may hide its success is
    /// read back until the deadline (see [`outcome`](JobState::outcome)):
    /// landed, the call returns it; not landed, the change is decided and
    /// written again (three writes in all at most: the new compare-and-set
    /// fences the failed one off, should it still arrive); unknown, the call
    /// fails with [`Error::Ambiguous`]. The events of the write that landed
    /// are published to this process's subscribers once, when the call
    /// learns it landed; those of a write that did not land, never.
    pub(super) fn write_job(
        &self,
        id: &str,
        operation: &'static str,
        write: &AttemptId,
        extra: &[BatchOp],
        mut change: impl FnMut(&mut Job, u64) -> Result<Step>,
    ) -> Result<Written> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        let record_key = self.record_key(id)?;
        // The writes of this call that failed in a way that may hide their
        // success, and the last such failure.
        let mut sent: Vec<Sent> = Vec::new();
        let mut unsettled: Option<Error> = None;
        // A write just failed so: if it did not land, it counts as a try.
        let mut just_failed = false;
        // The record version at which an event key was found taken.
        let mut event_taken: Option<(Key, Version)> = None;
        let mut late = LateWrite::default();
        let end = |late: &LateWrite, error: Error| {
            let error = late.end(operation, &record_key, write, error);
            if error.is_ambiguous() {
                // It may land later; if it does, `nudge` cannot tell (see
                // there).
                self.hub.nudge(id);
            }
            error
        };
        loop {
            let (mut job, version) = match unsettled.take() {
                None => self.read_required(id).map_err(|e| end(&late, e))?,
                Some(error) => match deadline.reread(|| self.outcome(id, write, &sent)) {
                    Ok(Outcome::Landed(written)) => {
                        report!(
                            info,
                            job_id = %crate::trace::private(id),
                            operation,
                            write = %crate::trace::private(write),
                            error = %crate::trace::error(&error),
                            "job write failed and was read back as landed"
                        );
                        self.hub.publish(id, &written.events);
                        self.queued_if(&written.job);
                        return Ok(written);
                    }
                    Ok(Outcome::NotLanded(job, version)) => {
                        late.stored(Expect::Version(version));
                        if std::mem::take(&mut just_failed) && !deadline.may_write_again() {
                            return Err(end(&late, error));
                        }
                        unsettled = Some(error);
                        (job, version)
                    }
                    // Gone, with its events: whether the write landed before
                    // is beside the point.
                    Ok(Outcome::Gone) => return Err(Error::JobNotFound { id: id.to_owned() }),
                    // Subscribers are told to read the store: the write may
                    // have landed, with events nobody handed them.
                    Ok(Outcome::Unknown(reason)) => {
                        self.hub.nudge(id);
                        return Err(ambiguous(operation, &record_key, write, error, reason));
                    }
                    Err(reread) => {
                        self.hub.nudge(id);
                        let reason = reread.to_string();
                        return Err(ambiguous(operation, &record_key, write, error, reason));
                    }
                },
            };
            if let Some((key, at)) = event_taken.take()
                && at == version
            {
                // An event sits where the record says the next one goes, and
                // retrying would never succeed.
                return Err(Error::Corrupt {
                    key,
                    path: None,
                    reason: format!(
                        "an event of job {id} exists beyond the sequence numbers its record counts; \
                         the store was changed outside jobsafe"
                    ),
                });
            }
            late.stored(Expect::Version(version));
            let now = self.clock.now_ms();
            let was_open = !job.status.is_finished();
            let events = match change(&mut job, now).map_err(|e| end(&late, e))? {
                Step::Write(events) => events,
                Step::Already => {
                    return Ok(Written {
                        start: Start::of(&job),
                        job,
                        events: Vec::new(),
                    });
                }
            };
            job.updated_ms = now;
            let first_seq = job.events.next_seq;
            let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
            match self.commit(&mut job, version, events, extra, write, was_open) {
                Ok(events) => {
                    report!(
                        debug,
                        job_id = %crate::trace::private(id),
                        operation,
                        status = ?job.status,
                        "job written"
                    );
                    self.hub.publish(id, &events);
                    self.queued_if(&job);
                    return Ok(Written {
                        start: Start::of(&job),
                        job,
                        events,
                    });
                }
                // The record changed under us: decide again on what is there now.
                Err(Error::Conflict { key, .. }) if key == record_key => {}
                // An event key was taken. If the record moved on meanwhile,
                // another writer appended first: decide again. If it did not,
                // the store is damaged (checked once the record is read).
                Err(Error::Conflict { key, .. }) => event_taken = Some((key, version)),
                Err(e) if may_have_landed(&e) => {
                    late.failed(&e, Expect::Version(version));
                    sent.push(Sent {
                        version,
                        first_seq,
                        count,
                        start: Start::of(&job),
                    });
                    unsettled = Some(e);
                    just_failed = true;
                }
                Err(e) => return Err(end(&late, e)),
            }
        }
    }

    /// Where the writes `sent` of the call whose write id is `write` stand,
    /// read from the store: one of them landed, none did (yet), the job is
    /// gone, or it cannot be told.
    ///
    /// The record carries the id of the write that stored it: if it is
    /// `write`, that write is the newest. If the record is still at the
    /// version a write expected, that write has not landed. If it moved on,
    /// each write that appended events is looked up by its last event, which
    /// carries its write id too: the batch wrote it with `Expect::Absent`, so
    /// the event there is this call's exactly when the write landed. A write
    /// without events (a heartbeat) whose record moved on is taken as not
    /// landed: decided and written again, it does the same. An event the
    /// bound dropped since cannot tell: unknown.
    fn outcome(&self, id: &str, write: &AttemptId, sent: &[Sent]) -> Result<Outcome> {
        let Some((job, version)) = self.read(id)? else {
            return Ok(Outcome::Gone);
        };
        let count = sent.last().map_or(0, |s| s.count);
        if job.write.as_ref() == Some(write) {
            let last = job.events.next_seq.saturating_sub(1);
            let events = self.own_events(id, &job, write, last, count)?;
            // A write with events is the newest only if its events are too:
            // an older jobsafe that rewrites the record keeps the fields it
            // does not know, this id among them.
            if count == 0 || !events.is_empty() {
                return Ok(Outcome::Landed(Written {
                    start: Start::of(&job),
                    job,
                    events,
                }));
            }
        }
        if sent.iter().any(|s| s.version == version) {
            return Ok(Outcome::NotLanded(job, version));
        }
        let mut unknown = None;
        for s in sent.iter().rev().filter(|s| s.count > 0) {
            let last = s.first_seq.saturating_add(s.count - 1);
            if last >= job.events.next_seq {
                continue; // never counted: that write did not land
            }
            let ours = match self.read_event(id, last)? {
                Some(stored) => stored.write.as_ref() == Some(write),
                None => {
                    unknown = Some(last);
                    continue;
                }
            };
            if ours {
                let events = self.own_events(id, &job, write, last, s.count)?;
                return Ok(Outcome::Landed(Written {
                    job,
                    events,
                    start: s.start,
                }));
            }
        }
        Ok(match unknown {
            Some(seq) => Outcome::Unknown(format!(
                "job {id} moved on since, and its event {seq}, which would tell, \
                 was dropped by the bound of its log"
            )),
            None => Outcome::NotLanded(job, version),
        })
    }

    /// The events of write `write` among the `count` ending at `last`, as stored.
    fn own_events(
        &self,
        id: &str,
        job: &Job,
        write: &AttemptId,
        last: u64,
        count: u64,
    ) -> Result<Vec<Event>> {
        let first = last
            .saturating_add(1)
            .saturating_sub(count)
            .max(job.events.first_seq);
        let mut events = Vec::new();
        for seq in first..=last {
            if let Some(stored) = self.read_event(id, seq)?
                && stored.write.as_ref() == Some(write)
            {
                events.push(stored.event);
            }
        }
        Ok(events)
    }
}

/// The error of a call whose write failed with `error` and whose outcome
/// could not be told by the deadline, for `reason`.
fn ambiguous(
    operation: &'static str,
    key: &Key,
    write: &AttemptId,
    error: Error,
    reason: String,
) -> Error {
    Error::Ambiguous {
        operation,
        key: key.clone(),
        attempt: write.clone(),
        reread: reason,
        source: Box::new(error),
    }
}

/// What a change decides on the job as read.
pub(super) enum Step {
    /// Write the job as changed, with these events appended.
    Write(Vec<NewEvent>),
    /// Nothing to write: the change is there already (a repeated start). The
    /// job must be left as read.
    Already,
}

/// A write that landed.
#[derive(Debug)]
pub(super) struct Written {
    /// The job as stored: as the write stored it, unless the write's reply
    /// was lost and another writer changed the job before it was read back.
    pub(super) job: Job,
    /// The events the write appended (those the bound kept).
    pub(super) events: Vec<Event>,
    /// The attempt of the job as the write made it.
    pub(super) start: Start,
}

/// A job's current attempt, as a write made it: what a start's claim needs,
/// whatever another writer changed since.
#[derive(Clone, Copy, Debug)]
pub(super) struct Start {
    pub(super) attempt: u32,
    pub(super) started_seq: Option<u64>,
}

impl Start {
    fn of(job: &Job) -> Self {
        Start {
            attempt: job.attempt,
            started_seq: job.started_seq,
        }
    }
}

/// A write of this call that failed in a way that may hide its success.
struct Sent {
    /// The record version it expected.
    version: Version,
    /// The sequence number of its first event.
    first_seq: u64,
    /// How many events it appended.
    count: u64,
    /// The attempt as it wrote it.
    start: Start,
}

/// Where a call's writes stand, read back.
enum Outcome {
    Landed(Written),
    NotLanded(Job, Version),
    Gone,
    Unknown(String),
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
