//! The job-state workload: event appends and whole job lifecycles through
//! [`JobState`], on any jobsafe [`Store`].
//!
//! - `append_event`: one running job, `ops` events appended to it (each a
//!   compare-and-set of the job record and a put of the event, in one batch).
//! - `lifecycle`: `ops` jobs each taken through create → start → three stages →
//!   complete (six durable writes, the last with the `done` event in the same
//!   batch as the status).

use std::path::Path;
use std::sync::Arc;

use jobsafe::jobs::NewJob;
use jobsafe::{JobState, Store, SystemClock};
use serde_json::json;

use super::{BenchResult, Sample, Syncs, Workload, time_ops};

/// One contender: a store opened fresh in each round's directory.
pub(crate) struct JobsWorkload<S> {
    name: &'static str,
    open: fn(&Path) -> BenchResult<(S, Syncs)>,
}

impl<S: Store> JobsWorkload<S> {
    pub(crate) fn new(name: &'static str, open: fn(&Path) -> BenchResult<(S, Syncs)>) -> Self {
        JobsWorkload { name, open }
    }
}

impl<S: Store> Workload for JobsWorkload<S> {
    fn name(&self) -> &str {
        self.name
    }

    fn round(&mut self, dir: &Path, ops: usize) -> BenchResult<Vec<Sample>> {
        let (store, syncs) = (self.open)(dir)?;
        let jobs = JobState::new(store, Arc::new(SystemClock));

        // Creates the namespace's directories untimed.
        let warm = jobs.create(NewJob::new("warm-up"))?;
        let worker = jobs.start(&warm.id, None)?;
        let append = time_ops(format!("{}/append_event", self.name), ops, &syncs, |i| {
            let event = jobs.append_event(&worker, "window_complete", json!({ "window": i }))?;
            if event.seq != i as u64 + 2 {
                return Err(format!("event {i} got sequence number {}", event.seq).into());
            }
            Ok(())
        })?;

        let lifecycle = time_ops(format!("{}/lifecycle", self.name), ops, &syncs, |i| {
            lifecycle(&jobs, i as u64)
        })?;
        Ok(vec![append, lifecycle])
    }
}

/// Takes a new job through create → start → three stages → complete (six
/// durable writes), checking that it finished with its three stages; `n` goes
/// into its result.
pub(crate) fn lifecycle<S: Store>(jobs: &JobState<S>, n: u64) -> BenchResult {
    let job = jobs.create(NewJob::new("summarize"))?;
    let worker = jobs.start(&job.id, None)?;
    for stage in ["download", "transcribe", "analyze"] {
        jobs.set_stage(&worker, stage)?;
    }
    let done = jobs.complete(&worker, json!({ "n": n }))?;
    if done.stages_done.len() != 3 {
        return Err(format!("job {n} finished with stages {:?}", done.stages_done).into());
    }
    Ok(())
}
