//! The end of a stage that returned an error or panicked: back to the queue
//! with a backoff, or failed, with the count of consecutive transient failures
//! kept beside the job.

use serde::Serialize;

use super::checkpoint::Artifact;
use super::error::StageError;
use super::outcome::RunOutcome;
use super::run::RunCtx;
use crate::error::Result;
use crate::jobs::{FailureKind, JobError};
use crate::record::{self as codec, Extra, Record, record_deserialize};
use crate::store::{BatchOp, Expect, Store};
use crate::trace;
use crate::vfs::Vfs;

/// A job's pipeline state besides its record: consecutive transient failures.
/// Read by `record_deserialize!`, as derive with `#[serde(flatten)] extra`.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct RunState {
    pub(super) transient_failures: u32,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

record_deserialize! {
    RunState, "struct RunState",
    required [transient_failures = "transient_failures"],
    defaulted [],
    unknown keep(extra),
    build RunState {
        transient_failures,
        extra,
    },
}

impl Record for RunState {
    const SCHEMA: u32 = 1;
}

impl<S: Store + 'static, V: Vfs> RunCtx<'_, S, V> {
    /// Ends the attempt for a stage error: back to the queue with a backoff, or
    /// failed. The stage's `partial` artifacts are removed only once the
    /// failure is recorded (a compare-and-set that checks this runner still
    /// owns the job) and while the lease is live: a runner that lost the job
    /// leaves the files alone, since a successor may have written the same
    /// names.
    pub(super) fn fail(
        &self,
        stage: &str,
        partial: &[Artifact],
        error: StageError,
    ) -> Result<RunOutcome> {
        let inner = &self.pipeline.inner;
        let key = self.pipeline.run_state_key(self.id())?;
        let (state, unreadable) = match self.pipeline.read_or_quarantine::<RunState>(&key)? {
            Ok(state) => (state.unwrap_or_default(), None),
            Err(unreadable) => (RunState::default(), Some(unreadable)),
        };
        let failures = state.transient_failures.saturating_add(1);
        let transient = error.is_transient() && failures < inner.retry.failures_allowed();
        let requested = error.requested_delay();
        let exhausted = error.is_transient() && !transient;
        let class = match (error.is_transient(), exhausted) {
            (false, _) => "permanent",
            (true, false) => "transient",
            (true, true) => "transient, retries exhausted",
        };
        let original = error.into_job_error();
        trace::stage_failed(class, original.internal_message());
        let mut internal = format!("stage {stage}: {}", original.internal_message());
        if exhausted {
            internal.push_str(&format!(" (gave up after {failures} transient failures)"));
        }
        if let Some(unreadable) = unreadable {
            internal.push_str(&format!(
                " (the count of earlier transient failures was unreadable and starts again: {unreadable})"
            ));
        }
        let mut job_error = JobError::new(original.client_message()).internal(internal);
        if let Some(code) = original.error_code() {
            job_error = job_error.code(code);
        }
        let (failure, next) = if transient {
            let delay = inner.retry.delay_with(failures, requested);
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            let retry_at_ms = inner.clock.now_ms().saturating_add(delay_ms);
            (FailureKind::Transient { retry_at_ms }, failures)
        } else {
            (FailureKind::Permanent, 0)
        };
        let state = RunState {
            transient_failures: next,
            extra: state.extra,
        };
        let record = BatchOp::Put {
            value: codec::encode(&key, &state)?,
            key,
            expect: Expect::Any,
        };
        if let Err(e) = inner
            .jobs
            .fail_with(self.worker, job_error.clone(), failure, &[record])
        {
            // Cancelled or deleted meanwhile: `refused` removes the partial
            // files; taken over or lease lost: it leaves them.
            return self.refused(e, Some(stage), partial);
        }
        if self.lease.lost().is_none() {
            self.remove_artifacts(partial)?;
        }
        Ok(match failure {
            FailureKind::Transient { retry_at_ms } => RunOutcome::RetryScheduled {
                stage: stage.to_owned(),
                retry_at_ms,
                failures,
                error: job_error,
            },
            FailureKind::Permanent => RunOutcome::Failed {
                stage: stage.to_owned(),
                error: job_error,
            },
        })
    }
}
