//! What a `Pipeline` costs per stage: jobs of five stages with empty bodies
//! (so only the pipeline's own work is measured: lease, start, a record write
//! at each stage boundary, a checkpoint per stage, complete, release), next to
//! one `AtomicWriter` write of a small artifact in the same round, on
//! `DirStore` and `LogStore` (full durability) and `MemStore` (artifacts on disk
//! either way).
//! Flushes are counted through jobsafe's I/O layer, per stage.
//!
//! `cargo bench -p jobsafe-bench --bench pipeline`; `JOBSAFE_BENCH_SMOKE=1` for a
//! seconds-long check.

mod common;

use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;
use jobsafe::{DirStore, LogStore, MemStore};

use self::common::pipeline::PipelineWorkload;
use self::common::report::{self, Ratio};
use self::common::{BenchResult, Config, RunDir, Syncs, interleave};

/// Stages per round of a full run.
const OPS: usize = 100;

fn main() -> BenchResult {
    let config = Config::from_env()?;
    let mut run = RunDir::create("pipeline")?;
    println!(
        "# jobsafe pipeline bench\n\n{config}; run directory {}\n",
        run.path().display()
    );
    let all = interleave(
        &config,
        &mut run,
        config.ops(OPS),
        &mut [
            &mut PipelineWorkload::new("dirstore", |dir, vfs: Counting<StdVfs>| {
                let store = DirStore::builder(dir).vfs(vfs.clone()).open()?;
                Ok((store, Syncs::Vfs(vfs)))
            }),
            &mut PipelineWorkload::new("logstore", |dir, vfs: Counting<StdVfs>| {
                let store = LogStore::builder(dir).vfs(vfs.clone()).open()?;
                Ok((store, Syncs::Vfs(vfs)))
            }),
            &mut PipelineWorkload::new("memstore", |_, _| Ok((MemStore::new(), Syncs::Uncounted))),
        ],
    )?;
    println!("## Measurements\n\n{}", report::measurements(&all));
    let ratios = vec![
        Ratio::new("dirstore/stage_empty", "dirstore/atomic_write"),
        Ratio::new("logstore/stage_empty", "logstore/atomic_write"),
        Ratio::new("memstore/stage_empty", "memstore/atomic_write"),
    ];
    println!("## Ratios\n\n{}", report::ratios(&ratios, &all)?);
    for m in &all {
        println!("{}", m.json());
    }
    for ratio in &ratios {
        println!("{}", ratio.json(ratio.value(&all)?));
    }
    run.remove()
}
