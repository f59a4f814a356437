//! The harness shared by the benches: configuration from the environment, a run
//! directory on the disk under test, timed rounds interleaved across contenders and
//! reduced to medians, and the report.
//!
//! Benches report ratios measured in one run on one disk, never absolute times (see
//! DESIGN.md, "Performance and how it is measured"): fsync latency differs by orders
//! of magnitude between disks, and on one disk from one minute to the next. So every
//! contender of a comparison runs in each round, one after the other, in an order
//! that rotates from round to round. Each reports its median round, and the ratio
//! of two contenders is the median of their rounds' ratios, which cancels what
//! drifts from one round to the next (another process writing, say). Ratios of
//! benches that ran in different rounds mean little.
//!
//! A contender is a [`Workload`]: it sets up fresh state in a directory of its own,
//! then times one or more operations with [`time_ops`]. [`kv`] adapts any key-value
//! store (a jobsafe [`Store`](jobsafe::Store), SQLite, a JSON file) to one workload.

// Each bench compiles this harness and uses a part of it.
#![allow(dead_code)]

pub(crate) mod atomic;
pub(crate) mod jobs;
pub(crate) mod kv;
pub(crate) mod latency;
pub(crate) mod lease;
pub(crate) mod ledger;
pub(crate) mod naive;
#[cfg(feature = "postgres")]
pub(crate) mod pg;
pub(crate) mod pipeline;
pub(crate) mod raw;
pub(crate) mod report;
pub(crate) mod sqlite;
pub(crate) mod targets;

use std::env;
use std::error::Error;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;

use self::report::Measurement;

/// What bench code returns: any error ends the run with its message.
pub(crate) type BenchResult<T = ()> = Result<T, Box<dyn Error>>;

/// Rounds of a full run; the median is reported. Many short rounds rather than
/// a few long ones: the benches of a round then run closer together in time, and
/// see the same disk.
const FULL_ROUNDS: usize = 11;
/// Operations per workload in smoke mode: enough to run every code path once more
/// than its warm-up, few enough for CI.
const SMOKE_OPS: usize = 5;

/// How much to run, from the environment:
///
/// - `JOBSAFE_BENCH_SMOKE=1`: one round of [`SMOKE_OPS`] operations per workload,
///   to check in seconds that every code path runs (CI does this).
/// - `JOBSAFE_BENCH_OPS=N`: `N` operations per workload instead of each one's count.
/// - `JOBSAFE_BENCH_ROUNDS=N`: `N` rounds instead of [`FULL_ROUNDS`] (or 1 in smoke
///   mode).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    smoke: bool,
    ops: Option<usize>,
    rounds: usize,
}

impl Config {
    pub(crate) fn from_env() -> BenchResult<Self> {
        let smoke = env::var("JOBSAFE_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0");
        let default_rounds = if smoke { 1 } else { FULL_ROUNDS };
        Ok(Config {
            smoke,
            ops: positive_from_env("JOBSAFE_BENCH_OPS")?,
            rounds: positive_from_env("JOBSAFE_BENCH_ROUNDS")?.unwrap_or(default_rounds),
        })
    }

    /// Operations per round for a workload that runs `full` of them in a full run.
    pub(crate) fn ops(&self, full: usize) -> usize {
        match (self.ops, self.smoke) {
            (Some(ops), _) => ops,
            (None, true) => SMOKE_OPS,
            (None, false) => full,
        }
    }

    /// Like [`ops`](Config::ops), for a workload whose smoke run needs more
    /// than [`SMOKE_OPS`]: `smoke` of them in smoke mode.
    pub(crate) fn ops_or_smoke(&self, full: usize, smoke: usize) -> usize {
        match (self.ops, self.smoke) {
            (Some(ops), _) => ops,
            (None, true) => smoke,
            (None, false) => full,
        }
    }

    pub(crate) fn rounds(&self) -> usize {
        self.rounds
    }

    /// Whether this is a smoke run, which only checks that every path runs.
    pub(crate) fn smoke(&self) -> bool {
        self.smoke
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.smoke {
            write!(f, "Smoke run: {} round(s), times mean nothing", self.rounds)
        } else {
            write!(f, "{} rounds, medians reported", self.rounds)
        }
    }
}

fn positive_from_env(name: &str) -> BenchResult<Option<usize>> {
    let Ok(text) = env::var(name) else {
        return Ok(None);
    };
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(format!("{name} must be a positive integer, not {text:?}").into()),
    }
}

/// A directory for one run under Cargo's target directory, removed when dropped.
///
/// Under `target/` rather than the system temp directory: `/tmp` is often a tmpfs,
/// where fsync costs nothing and every ratio would be meaningless.
#[derive(Debug)]
pub(crate) struct RunDir {
    root: PathBuf,
    made: usize,
}

impl RunDir {
    /// Creates `target/tmp/jobsafe-bench-<name>-<pid>`, empty.
    pub(crate) fn create(name: &str) -> BenchResult<Self> {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("jobsafe-bench-{name}-{}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        fs::create_dir_all(&root)?;
        Ok(RunDir { root, made: 0 })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.root
    }

    /// A new empty directory for one round of one workload. Directories are kept
    /// until the end of the run: removing them between rounds would put their
    /// unlinks in the journal commit of the next timed fsync.
    pub(crate) fn fresh(&mut self, label: &str) -> BenchResult<PathBuf> {
        self.made += 1;
        let dir = self.root.join(format!("{:03}-{label}", self.made));
        fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Removes the directory, reporting failure (dropping removes it silently).
    pub(crate) fn remove(self) -> BenchResult {
        fs::remove_dir_all(&self.root)?;
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A count of flushes kept by code that flushes by hand; clones share it, also
/// across threads.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tally(Arc<AtomicU64>);

impl Tally {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where a contender's disk flushes (fsync, fdatasync) are counted, held apart from
/// the contender so that it can be read around the timed operations.
#[derive(Clone, Debug)]
pub(crate) enum Syncs {
    /// The contender flushes inside code we cannot see into (SQLite).
    Uncounted,
    /// Counted by jobsafe's I/O layer, as jobsafe itself sees them.
    Vfs(Counting<StdVfs>),
    /// Counted by the bench's own code.
    Tally(Tally),
}

impl Syncs {
    /// Flushes so far, if counted.
    pub(crate) fn get(&self) -> Option<u64> {
        match self {
            Syncs::Uncounted => None,
            Syncs::Vfs(vfs) => Some(vfs.counts().syncs()),
            Syncs::Tally(tally) => Some(tally.get()),
        }
    }
}

/// Flushes every dirty page of the system with `sync`, returning the seconds it
/// took, so that what a relaxed load left unwritten does not land in the timed
/// flushes: a journaling filesystem (ext4 by default) commits every pending
/// change with the next fsync, and writeback would compete with them.
pub(crate) fn sync_all() -> BenchResult<f64> {
    let start = Instant::now();
    let status = Command::new("sync")
        .status()
        .map_err(|e| format!("cannot run sync: {e}"))?;
    if !status.success() {
        return Err(format!("sync failed: {status}").into());
    }
    Ok(start.elapsed().as_secs_f64())
}

/// One timed run of `ops` operations of one kind.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// `subject/operation`, such as `dirstore/insert`.
    pub(crate) bench: String,
    pub(crate) ops: usize,
    pub(crate) secs: f64,
    /// Flushes during the timed operations, if the subject counts them.
    pub(crate) syncs: Option<u64>,
}

/// Times `ops` calls of `op(0)`, `op(1)`, ..., and counts the flushes they made.
///
/// Only the calls are timed: set-up belongs before, checks of the results inside
/// `op` (they cost nothing next to a flush, and a bench that measures a failing
/// operation measures nothing).
pub(crate) fn time_ops(
    bench: impl Into<String>,
    ops: usize,
    syncs: &Syncs,
    mut op: impl FnMut(usize) -> BenchResult,
) -> BenchResult<Sample> {
    let before = syncs.get();
    let start = Instant::now();
    for i in 0..ops {
        op(i)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Sample {
        bench: bench.into(),
        ops,
        secs,
        syncs: before.zip(syncs.get()).map(|(b, a)| a - b),
    })
}

/// A contender of a comparison, run once per round.
pub(crate) trait Workload {
    /// A short name, used for its directories and in progress messages.
    fn name(&self) -> &str;

    /// Sets up fresh state in the empty directory `dir` (untimed), then times `ops`
    /// operations of each kind it measures, one [`Sample`] per kind.
    fn round(&mut self, dir: &Path, ops: usize) -> BenchResult<Vec<Sample>>;
}

/// Runs the configured number of rounds of `workloads`, `ops` operations each,
/// and returns the median of each bench in the order first seen.
///
/// Every round runs every workload, so all of them meet the same disk conditions,
/// and round `r` starts with workload `r mod n`, so none of them always runs first
/// (with two workloads: A B, B A, A B, ...).
pub(crate) fn interleave(
    config: &Config,
    run: &mut RunDir,
    ops: usize,
    workloads: &mut [&mut dyn Workload],
) -> BenchResult<Vec<Measurement>> {
    let mut samples: Vec<(String, Vec<Sample>)> = Vec::new();
    let n = workloads.len();
    for round in 0..config.rounds() {
        for k in 0..n {
            let workload = &mut *workloads[(round + k) % n];
            eprintln!(
                "round {}/{}: {} ({ops} ops)",
                round + 1,
                config.rounds(),
                workload.name()
            );
            let dir = run.fresh(workload.name())?;
            for sample in workload.round(&dir, ops)? {
                match samples.iter_mut().find(|(bench, _)| *bench == sample.bench) {
                    Some((_, rounds)) => rounds.push(sample),
                    None => samples.push((sample.bench.clone(), vec![sample])),
                }
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|(_, rounds)| Measurement::from_rounds(&rounds))
        .collect())
}
