//! What a lease lock costs through jobsafe's [`JobLock`](jobsafe::JobLock), next
//! to what the same lease costs in SQLite and in a bare map, all measured in one
//! run on one disk.
//!
//! `cargo bench -p jobsafe-bench --bench lock` measures acquire + release cycles
//! per second (see [`common::lease`] for the cycle, the keys and why), in a
//! directory under `target/`:
//!
//! 1. Durable: `JobLock` on [`DirStore`] at `Durability::Full`, its flushes counted
//!    through jobsafe's I/O layer, in rounds alternating with SQLite's lease cycle
//!    (WAL, `synchronous = FULL`: an upsert that takes a free or expired lease,
//!    then a delete by holder, each its own transaction). `DirStore`'s cycle
//!    should take at most 1.5 times SQLite's: a throughput ratio of 0.67x or more.
//! 2. In memory: `JobLock` on [`MemStore`], in rounds alternating with a
//!    `Mutex<HashMap>` insert + remove, the in-memory limit of a lease. `MemStore`
//!    should reach half of its throughput or more.
//!
//! Comparisons run in interleaved rounds and report medians, and every ratio is
//! between benches of the same rounds: see [`common`]. The bench prints the
//! measurements with the disk flushes per cycle where they can be counted, the
//! contenders side by side, the ratios, and then one JSON object per line for each
//! measurement and each ratio.
//!
//! `JOBSAFE_BENCH_SMOKE=1` runs every workload once with a few cycles, for CI;
//! `JOBSAFE_BENCH_OPS=N` and `JOBSAFE_BENCH_ROUNDS=N` override the counts.

mod common;

use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;
use jobsafe::{DirStore, LogStore, MemStore};

use self::common::lease::{JobLockEngine, LOCK_KEYS, LeaseWorkload, RawMapLease};
use self::common::report::{self, Measurement, Ratio};
use self::common::sqlite::{SqliteLease, Synchronous};
use self::common::{BenchResult, Config, RunDir, Syncs, Tally, Workload, interleave};

/// Cycles per round of a full run. A durable cycle makes about five flushes
/// through `DirStore` and two through SQLite, so with 11 rounds a run makes about
/// 25,000 flushes: 1 to 2 minutes on a disk whose fsync takes 3 to 5 ms, seconds
/// on a fast one. An in-memory cycle takes microseconds: many more of them make
/// a round long enough to time.
const DURABLE_OPS: usize = 320;
const MEMORY_OPS: usize = 200_000;

fn main() -> BenchResult {
    let config = Config::from_env()?;
    let mut run = RunDir::create("lock")?;
    println!(
        "# jobsafe lock bench\n\n{config}; run directory {}\n",
        run.path().display()
    );

    let mut all = Vec::new();
    all.extend(durable(&config, &mut run)?);
    all.extend(in_memory(&config, &mut run)?);

    println!(
        "## Measurements\n\nAn op is one acquire + release cycle, over {LOCK_KEYS} keys \
         round robin.\n\n{}",
        report::measurements(&all)
    );
    println!("## Lease cycles\n\n{}", report::comparison(&all));
    let ratios = ratios();
    println!("## Ratios\n\n{}", report::ratios(&ratios, &all)?);
    for m in &all {
        println!("{}", m.json());
    }
    for ratio in &ratios {
        println!("{}", ratio.json(ratio.value(&all)?));
    }
    run.remove()
}

/// `JobLock` on `DirStore` and SQLite's lease table, in alternating rounds.
fn durable(config: &Config, run: &mut RunDir) -> BenchResult<Vec<Measurement>> {
    let mut dir = LeaseWorkload::new("dirstore", |dir| {
        let vfs = Counting::new(StdVfs);
        let store = DirStore::builder(dir).vfs(vfs.clone()).open()?;
        Ok(JobLockEngine::new(store, Syncs::Vfs(vfs)))
    });
    let mut log = LeaseWorkload::new("logstore", |dir| {
        let vfs = Counting::new(StdVfs);
        let store = LogStore::builder(dir).vfs(vfs.clone()).open()?;
        Ok(JobLockEngine::new(store, Syncs::Vfs(vfs)))
    });
    let mut sqlite = LeaseWorkload::new("sqlite_full", |dir| {
        SqliteLease::open(dir, Synchronous::Full)
    });
    let mut workloads: Vec<&mut dyn Workload> = vec![&mut dir, &mut log, &mut sqlite];
    // The server's flushes happen in another process: not counted.
    #[cfg(feature = "postgres")]
    let mut pg = LeaseWorkload::new("pgstore", |_| {
        let store = common::pg::store(jobsafe::Durability::Full)?;
        Ok(JobLockEngine::new(store, Syncs::Uncounted))
    });
    #[cfg(feature = "postgres")]
    let pg_server = common::pg::url().is_some();
    #[cfg(feature = "postgres")]
    if pg_server {
        workloads.push(&mut pg);
    }
    #[cfg(not(feature = "postgres"))]
    println!("PgStore rows skipped: built without the feature `postgres`\n");
    let measured = interleave(config, run, config.ops(DURABLE_OPS), &mut workloads);
    #[cfg(feature = "postgres")]
    if pg_server {
        common::pg::drop_schemas()?;
    }
    measured
}

/// `JobLock` on `MemStore` and the bare map, in alternating rounds.
fn in_memory(config: &Config, run: &mut RunDir) -> BenchResult<Vec<Measurement>> {
    interleave(
        config,
        run,
        config.ops(MEMORY_OPS),
        &mut [
            // Nothing in memory flushes: an empty tally reports so.
            &mut LeaseWorkload::new("memstore", |_| {
                Ok(JobLockEngine::new(
                    MemStore::new(),
                    Syncs::Tally(Tally::default()),
                ))
            }),
            &mut LeaseWorkload::new("raw_map", RawMapLease::open),
        ],
    )
}

/// The ratios the targets are stated in, each between benches of the same rounds.
fn ratios() -> Vec<Ratio> {
    vec![
        // A cycle at most 1.5 times as long as SQLite's.
        Ratio::new("dirstore/cycle", "sqlite_full/cycle").at_least(1.0 / 1.5),
        Ratio::new("logstore/cycle", "sqlite_full/cycle").at_least(1.0 / 1.5),
        Ratio::new("memstore/cycle", "raw_map/cycle").at_least(0.5),
    ]
}
