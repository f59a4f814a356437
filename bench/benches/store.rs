//! What a durable change costs through jobsafe, next to what it cannot cost less
//! than, and next to the alternatives, all measured in one run on one disk.
//!
//! `cargo bench -p jobsafe-bench --bench store` measures, in a directory under
//! `target/`:
//!
//! 1. The raw limits, with `std::fs` alone: replacing a 4 KiB file (temp file, fsync,
//!    rename, directory fsync), appending 256 bytes + `fdatasync`, overwriting 256
//!    bytes in place + `fdatasync`.
//! 2. [`AtomicWriter`](jobsafe::AtomicWriter) replacing the same 4 KiB file, in
//!    rounds alternating with the raw replace. It should reach 0.9x of it or more:
//!    it makes the same system calls, and its I/O layer compiles away.
//! 3. [`DirStore`] inserting 256-byte values under new keys, updating them by
//!    compare-and-set, and reading them back; in the same rounds, doing the same:
//!    its limit (a raw replace of one file per key), SQLite (WAL, `synchronous`
//!    `FULL` and `NORMAL`), and the naive design of rewriting one JSON file of all
//!    records per change.
//!
//! Comparisons run in interleaved rounds and report medians, and every ratio is
//! between benches of the same rounds: see [`common`]. The bench prints the
//! measurements with the disk flushes per operation where they can be counted, the
//! stores side by side, the ratios, and then one JSON object per line for each
//! measurement and each ratio.
//!
//! `JOBSAFE_BENCH_SMOKE=1` runs every workload once with a few operations, for CI;
//! `JOBSAFE_BENCH_OPS=N` and `JOBSAFE_BENCH_ROUNDS=N` override the counts.

mod common;

use jobsafe::DirStore;
use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;

use self::common::atomic::AtomicReplace;
use self::common::kv::{KvWorkload, StoreEngine, VALUE_LEN};
use self::common::naive::NaiveJson;
use self::common::raw::{RawAppend, RawFiles, RawOverwrite, RawReplace};
use self::common::report::{self, Measurement, Ratio};
use self::common::sqlite::{SqliteEngine, Synchronous};
use self::common::{BenchResult, Config, RunDir, Syncs, interleave};

/// Size of the replaced file in the replace benches.
const REPLACE_LEN: usize = 4096;
/// Operations per round of a full run. With 11 rounds a run makes about 32,000
/// flushes: 2 per replace, 1 per append or overwrite, 2 per durable store write
/// (none per SQLite `NORMAL` commit). That is 1.5 to 3 minutes on a disk whose
/// fsync takes 3 to 5 ms, seconds on a fast one.
const REPLACE_OPS: usize = 200;
const FLUSH_OPS: usize = 200;
const KV_OPS: usize = 120;

fn main() -> BenchResult {
    let config = Config::from_env()?;
    let mut run = RunDir::create("store")?;
    println!(
        "# jobsafe store bench\n\n{config}; run directory {}\n",
        run.path().display()
    );

    let mut all = Vec::new();
    all.extend(replace(&config, &mut run)?);
    all.extend(flush_limits(&config, &mut run)?);
    let stores = stores(&config, &mut run)?;
    all.extend(stores.iter().cloned());

    println!("## Measurements\n\n{}", report::measurements(&all));
    println!(
        "## Stores, {VALUE_LEN}-byte values ({} keys)\n\n{}",
        config.ops(KV_OPS),
        report::comparison(&stores)
    );
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

/// Raw replace and [`AtomicWriter`](jobsafe::AtomicWriter) in alternating rounds.
fn replace(config: &Config, run: &mut RunDir) -> BenchResult<Vec<Measurement>> {
    interleave(
        config,
        run,
        config.ops(REPLACE_OPS),
        &mut [
            &mut RawReplace::new(REPLACE_LEN),
            &mut AtomicReplace::new(REPLACE_LEN),
        ],
    )
}

/// The one-flush limits: append and overwrite in place.
fn flush_limits(config: &Config, run: &mut RunDir) -> BenchResult<Vec<Measurement>> {
    interleave(
        config,
        run,
        config.ops(FLUSH_OPS),
        &mut [
            &mut RawAppend::new(VALUE_LEN),
            &mut RawOverwrite::new(VALUE_LEN),
        ],
    )
}

/// `DirStore`, its limit, SQLite and the naive JSON file, each round on fresh
/// state.
fn stores(config: &Config, run: &mut RunDir) -> BenchResult<Vec<Measurement>> {
    interleave(
        config,
        run,
        config.ops(KV_OPS),
        &mut [
            &mut KvWorkload::new("raw_files", RawFiles::open),
            &mut KvWorkload::new("dirstore", |dir| {
                let vfs = Counting::new(StdVfs);
                let store = DirStore::builder(dir).vfs(vfs.clone()).open()?;
                Ok(StoreEngine::new(store, Syncs::Vfs(vfs)))
            }),
            &mut KvWorkload::new("sqlite_full", |dir| {
                SqliteEngine::open(dir, Synchronous::Full)
            }),
            &mut KvWorkload::new("sqlite_normal", |dir| {
                SqliteEngine::open(dir, Synchronous::Normal)
            }),
            &mut KvWorkload::new("naive_json", NaiveJson::open),
        ],
    )
}

/// The ratios the design's targets are stated in, each between benches of the
/// same rounds.
fn ratios() -> Vec<Ratio> {
    let mut ratios = vec![Ratio::new("atomic_writer/replace_4k", "raw/replace_4k").at_least(0.9)];
    for other in ["raw_files", "sqlite_full", "sqlite_normal", "naive_json"] {
        for op in ["insert", "cas", "get"] {
            ratios.push(Ratio::new(
                format!("dirstore/{op}"),
                format!("{other}/{op}"),
            ));
        }
    }
    ratios
}
