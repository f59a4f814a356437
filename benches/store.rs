//! What a durable change costs through jobsafe, next to what it cannot cost less
//! than, all measured in one run on one disk.
//!
//! `cargo bench --bench store` measures, in a directory under `target/`:
//!
//! 1. The raw limits, with `std::fs` alone: replacing a 4 KiB file (temp file, fsync,
//!    rename, directory fsync), appending 256 bytes + `fdatasync`, overwriting 256
//!    bytes in place + `fdatasync`.
//! 2. [`AtomicWriter`](jobsafe::AtomicWriter) replacing the same 4 KiB file, in
//!    rounds alternating with the raw replace. It should reach 0.9x of it or more:
//!    it makes the same system calls, and its I/O layer compiles away.
//!
//! Comparisons run in interleaved rounds and report medians, and every ratio is
//! between benches of the same rounds: see [`common`]. The bench prints the
//! measurements with the disk flushes per operation where they can be counted, the
//! ratios, and then one JSON object per line for each measurement and each ratio.
//!
//! `JOBSAFE_BENCH_SMOKE=1` runs every workload once with a few operations, for CI;
//! `JOBSAFE_BENCH_OPS=N` and `JOBSAFE_BENCH_ROUNDS=N` override the counts.

mod common;

use self::common::atomic::AtomicReplace;
use self::common::raw::{RawAppend, RawOverwrite, RawReplace};
use self::common::report::{self, Measurement, Ratio};
use self::common::{BenchResult, Config, RunDir, interleave};

/// Size of the replaced file in the replace benches.
const REPLACE_LEN: usize = 4096;
/// Size of an appended or overwritten record.
const RECORD_LEN: usize = 256;
/// Operations per round of a full run. With 11 rounds a run makes about 13,000
/// flushes: 2 per replace, 1 per append or overwrite.
const REPLACE_OPS: usize = 200;
const FLUSH_OPS: usize = 200;

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

    println!("## Measurements\n\n{}", report::measurements(&all));
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
            &mut RawAppend::new(RECORD_LEN),
            &mut RawOverwrite::new(RECORD_LEN),
        ],
    )
}

/// The ratios the design's targets are stated in, each between benches of the
/// same rounds.
fn ratios() -> Vec<Ratio> {
    vec![Ratio::new("atomic_writer/replace_4k", "raw/replace_4k").at_least(0.9)]
}
