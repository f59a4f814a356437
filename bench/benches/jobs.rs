//! What durable job tracking costs: event appends and whole job lifecycles
//! through [`JobState`](jobsafe::JobState) on `DirStore` (full durability) and
//! `MemStore`, with the disk flushes per operation counted through jobsafe's I/O
//! layer. A lifecycle is six durable writes (create, start, three stages,
//! complete), so its flushes per operation are per whole job.
//!
//! `cargo bench -p jobsafe-bench --bench jobs`; `JOBSAFE_BENCH_SMOKE=1` for a
//! seconds-long check.

mod common;

use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;
use jobsafe::{DirStore, MemStore};

use self::common::jobs::JobsWorkload;
use self::common::report::{self, Ratio};
use self::common::{BenchResult, Config, RunDir, Syncs, interleave};

/// Operations per round of a full run.
const OPS: usize = 100;

fn main() -> BenchResult {
    let config = Config::from_env()?;
    let mut run = RunDir::create("jobs")?;
    println!(
        "# jobsafe jobs bench\n\n{config}; run directory {}\n",
        run.path().display()
    );
    let all = interleave(
        &config,
        &mut run,
        config.ops(OPS),
        &mut [
            &mut JobsWorkload::new("dirstore", |dir| {
                let vfs = Counting::new(StdVfs);
                let store = DirStore::builder(dir).vfs(vfs.clone()).open()?;
                Ok((store, Syncs::Vfs(vfs)))
            }),
            &mut JobsWorkload::new("memstore", |_| Ok((MemStore::new(), Syncs::Uncounted))),
        ],
    )?;
    println!("## Measurements\n\n{}", report::measurements(&all));
    let ratios = vec![
        Ratio::new("dirstore/append_event", "memstore/append_event"),
        Ratio::new("dirstore/lifecycle", "memstore/lifecycle"),
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
