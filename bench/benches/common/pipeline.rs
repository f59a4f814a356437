//! The pipeline workload: what a [`Pipeline`] adds per stage, next to one
//! [`AtomicWriter`] write in the same round.
//!
//! - `stage_empty`: jobs of `STAGES` stages with empty bodies run through
//!   [`Pipeline::run_job`]; one op is one stage (lease, start and complete
//!   shared out per stage).
//! - `atomic_write`: one [`AtomicWriter::write`] of a small artifact through
//!   the same writer and I/O layer.

use std::path::Path;
use std::sync::Arc;

use jobsafe::jobs::NewJob;
use jobsafe::pipeline::RunOutcome;
use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;
use jobsafe::{AtomicWriter, Pipeline, Store, SystemClock};

use super::{BenchResult, Sample, Syncs, Workload, time_ops};

/// Stages per job.
pub(crate) const STAGES: usize = 5;

/// Opens a contender's store in a directory, its files going through the
/// given counting layer.
pub(crate) type Opener<S> = fn(&Path, Counting<StdVfs>) -> BenchResult<(S, Syncs)>;

/// One contender: a store opened fresh in each round's directory.
pub(crate) struct PipelineWorkload<S> {
    name: &'static str,
    open: Opener<S>,
}

impl<S: Store + 'static> PipelineWorkload<S> {
    pub(crate) fn new(name: &'static str, open: Opener<S>) -> Self {
        PipelineWorkload { name, open }
    }
}

impl<S: Store + 'static> Workload for PipelineWorkload<S> {
    fn name(&self) -> &str {
        self.name
    }

    fn round(&mut self, dir: &Path, ops: usize) -> BenchResult<Vec<Sample>> {
        // Artifacts and the store's files both go through one counting layer.
        let vfs = Counting::new(StdVfs);
        let (store, store_syncs) = (self.open)(&dir.join("store"), vfs.clone())?;
        let syncs = match store_syncs {
            Syncs::Uncounted => Syncs::Vfs(vfs.clone()),
            other => other,
        };
        let writer = AtomicWriter::with_vfs(vfs.clone());
        let mut builder = Pipeline::builder(store, Arc::new(SystemClock), dir.join("artifacts"))
            .writer(writer.clone())
            .renew_every(None);
        for i in 0..STAGES {
            builder = builder.stage(format!("stage-{i}"), |_| Ok(()));
        }
        let pipeline = builder.build()?;
        let jobs = ops.div_ceil(STAGES);
        // Creates the namespace's directories untimed.
        let warm = pipeline.enqueue("warm", NewJob::new("bench"))?;
        pipeline.run_job(&warm.id)?;
        let ids = (0..jobs)
            .map(|i| Ok(pipeline.enqueue(&format!("s{i}"), NewJob::new("bench"))?.id))
            .collect::<BenchResult<Vec<_>>>()?;
        let ran = time_ops(
            format!("{}/stage_empty", self.name),
            jobs * STAGES,
            &syncs,
            |i| {
                if i % STAGES != 0 {
                    return Ok(());
                }
                let report = pipeline.run_job(&ids[i / STAGES])?;
                if report.outcome != RunOutcome::Completed || report.ran().len() != STAGES {
                    return Err(format!("run {i}: {:?}", report.outcome).into());
                }
                Ok(())
            },
        )?;
        let target = pipeline.job_dir(&warm.id).join("one.txt");
        std::fs::create_dir_all(pipeline.job_dir(&warm.id))?;
        let atomic = time_ops(format!("{}/atomic_write", self.name), ops, &syncs, |_| {
            Ok(writer.write(&target, b"artifact")?)
        })?;
        Ok(vec![ran, atomic])
    }
}
