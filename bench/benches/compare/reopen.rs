//! Reopening a LogStore: opening reads the whole journal into memory, so it
//! must cost little more than reading the files. A store of `records` live
//! records is written untimed (through a handle at `Durability::AtomicOnly`,
//! then a system-wide `sync`); then a child process (this bench run again with
//! [`CHILD_VAR`] set) reads the store's files sequentially and opens the store,
//! both cold (the files dropped from the page cache first, with GNU `dd`'s
//! `iflag=nocache`, as after a reboot) and warm (as after a process restart),
//! and reports the times and the growth of its resident memory over the open.
//! A child of its own, so that its memory figure is not blurred by what the
//! rest of the run allocated and freed.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use jobsafe::{Batch, Durability, Expect, Key, LogStore};
use serde::{Deserialize, Serialize};

use crate::common::kv::value;
use crate::common::{BenchResult, RunDir, sync_all};
use crate::compare::targets::{Bound, Target};

/// Set in the child's environment to the store's directory.
pub(crate) const CHILD_VAR: &str = "JOBSAFE_COMPARE_REOPEN_CHILD";
/// Records per batch of the untimed fill.
const FILL_BATCH: usize = 1_000;
/// Timed repetitions of each of the child's measurements; the fastest counts.
const TRIES: usize = 3;

/// What the child measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Reopen {
    pub(crate) records: usize,
    pub(crate) file_bytes: u64,
    /// Reading every file of the store, start to end, from the disk.
    pub(crate) cold_read_secs: f64,
    pub(crate) cold_open_secs: f64,
    /// The same from the page cache.
    pub(crate) read_secs: f64,
    pub(crate) open_secs: f64,
    /// Growth of resident memory over the first open, per live record.
    pub(crate) rss_bytes_per_record: f64,
}

impl Reopen {
    /// Open against read, from the disk and from the page cache.
    pub(crate) fn targets(&self) -> [Target; 2] {
        [
            Target::new(
                format!(
                    "reopen cold: open / sequential read, {} records",
                    self.records
                ),
                Some(self.cold_open_secs / self.cold_read_secs),
                Bound::AtMost(3.0),
            ),
            Target::new(
                format!(
                    "reopen warm: open / sequential read, {} records",
                    self.records
                ),
                Some(self.open_secs / self.read_secs),
                Bound::AtMost(3.0),
            ),
        ]
    }
}

/// Writes the store, then measures it in a child process.
pub(crate) fn measure(records: usize, run_dir: &mut RunDir) -> BenchResult<Reopen> {
    let dir = run_dir.fresh("reopen")?;
    eprintln!("reopen: writing {records} records");
    fill(&dir, records)?;
    let exe = std::env::current_exe()?;
    let output = Command::new(exe)
        .env(CHILD_VAR, &dir)
        .output()
        .map_err(|e| format!("cannot start the reopen child: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the reopen child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let stdout = String::from_utf8(output.stdout)?;
    let line = stdout
        .lines()
        .last()
        .ok_or("the reopen child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// `records` keys with values of [`VALUE_LEN`](crate::common::kv::VALUE_LEN) bytes each, in batches, at relaxed
/// durability, then made durable by `sync`.
fn fill(dir: &Path, records: usize) -> BenchResult {
    let store = LogStore::builder(dir)
        .durability(Durability::AtomicOnly)
        .no_background_compaction()
        .open()?;
    let value = value('r');
    let mut k = 0;
    while k < records {
        let mut batch = Batch::new();
        for i in k..(k + FILL_BATCH).min(records) {
            batch = batch.put(
                &Key::new(["bench", &format!("rec-{i:09}")])?,
                value.clone(),
                Expect::Absent,
            );
        }
        k += batch.len();
        jobsafe::Store::apply(&store, &batch)?;
    }
    drop(store);
    sync_all()?;
    Ok(())
}

/// The child's part: measures the store in `dir` and prints one JSON line.
pub(crate) fn child(dir: &Path) -> BenchResult {
    drop_cache(dir)?;
    let start = Instant::now();
    let file_bytes = read_files(dir)?;
    let cold_read_secs = start.elapsed().as_secs_f64();
    drop_cache(dir)?;
    let start = Instant::now();
    drop(LogStore::builder(dir).no_background_compaction().open()?);
    let cold_open_secs = start.elapsed().as_secs_f64();
    read_files(dir)?; // warms the page cache
    let mut read_secs = f64::INFINITY;
    for _ in 0..TRIES {
        let start = Instant::now();
        read_files(dir)?;
        read_secs = read_secs.min(start.elapsed().as_secs_f64());
    }
    let mut open_secs = f64::INFINITY;
    let mut rss_bytes_per_record = 0.0;
    let mut records = 0;
    for attempt in 0..TRIES {
        let rss_before = rss_bytes()?;
        let start = Instant::now();
        let store = LogStore::builder(dir).no_background_compaction().open()?;
        open_secs = open_secs.min(start.elapsed().as_secs_f64());
        if attempt == 0 {
            records = store.stats()?.records;
            let grown = rss_bytes()?.saturating_sub(rss_before);
            rss_bytes_per_record = grown as f64 / records.max(1) as f64;
        }
    }
    let reopen = Reopen {
        records,
        file_bytes,
        cold_read_secs,
        cold_open_secs,
        read_secs,
        open_secs,
        rss_bytes_per_record,
    };
    println!("{}", serde_json::to_string(&reopen)?);
    Ok(())
}

/// Drops every regular file of `dir` from the page cache (they are clean:
/// written, then synced).
fn drop_cache(dir: &Path) -> BenchResult {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let status = Command::new("dd")
            .arg(format!("if={}", entry.path().display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .map_err(|e| format!("cannot run dd: {e}"))?;
        if !status.success() {
            return Err(format!(
                "dd could not drop {} from the cache",
                entry.path().display()
            )
            .into());
        }
    }
    Ok(())
}

/// Reads every regular file of `dir` start to end; returns the bytes read.
fn read_files(dir: &Path) -> BenchResult<u64> {
    let mut buf = vec![0; 1 << 20];
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let mut file = File::open(entry.path())?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

/// The process's resident memory, from `/proc/self/status` (`VmRSS`).
fn rss_bytes() -> BenchResult<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or("VmRSS has no value")?
        .parse()?;
    Ok(kib * 1024)
}
