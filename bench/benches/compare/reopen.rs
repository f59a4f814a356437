//! Reopening a LogStore: opening reads the whole journal into its index, so it
//! must cost little more than reading the files. A store of `records` live
//! records is written untimed (through a handle at `Durability::AtomicOnly`,
//! then a system-wide `sync`); then a child process (this bench run again with
//! [`CHILD_VAR`] set) measures:
//!
//! 1. memory: the growth of its resident memory over an open and a get of
//!    every key, with the value cache at its default size, per record. First,
//!    in a process that allocated nothing before, so that the figure is not
//!    blurred by memory freed earlier and reused;
//! 2. the store's files read with `read(2)` into one buffer that holds them
//!    all (a copy of the files, the baseline), and into one 1 MiB buffer
//!    reused (reported beside it), and the store opened: cold (the files
//!    dropped from the page cache first, with GNU `dd`'s `iflag=nocache`, as
//!    after a reboot) and warm (as after a process restart).
//!
//! The store runs without memory maps, so resident memory is all it takes.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use jobsafe::{Batch, Durability, Expect, Key, LogStore};
use serde::{Deserialize, Serialize};

use crate::common::kv::value;
use crate::common::targets::Unit;
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
    /// Reading every file of the store, start to end, from the disk, into
    /// one buffer that holds them all.
    pub(crate) cold_read_secs: f64,
    pub(crate) cold_open_secs: f64,
    /// The same from the page cache.
    pub(crate) read_secs: f64,
    /// The same into one 1 MiB buffer, reused.
    pub(crate) read_reused_secs: f64,
    pub(crate) open_secs: f64,
    /// Growth of resident memory over the first open and a get of every key,
    /// per live record.
    pub(crate) rss_bytes_per_record: f64,
    /// Length of a record's key, packed, as the store holds it.
    pub(crate) key_len: usize,
}

impl Reopen {
    /// Open against read, from the disk and from the page cache, and memory.
    pub(crate) fn targets(&self) -> [Target; 3] {
        [
            Target::new(
                format!(
                    "memory per record: resident bytes, values of {} bytes, keys of {}",
                    crate::common::kv::VALUE_LEN,
                    self.key_len
                ),
                Some(self.rss_bytes_per_record),
                Bound::AtMost(120.0 + self.key_len as f64),
            )
            .in_unit(Unit::Bytes),
            Target::new(
                format!(
                    "reopen cold: open / read into one buffer, {} records",
                    self.records
                ),
                Some(self.cold_open_secs / self.cold_read_secs),
                Bound::AtMost(3.0),
            ),
            Target::new(
                format!(
                    "reopen warm: open / read into one buffer, {} records",
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
            batch = batch.put(&record_key(i)?, value.clone(), Expect::Absent);
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
    let (records, rss_bytes_per_record) = memory(dir)?;
    let file_bytes = file_bytes(dir)?;
    drop_cache(dir)?;
    let start = Instant::now();
    read_files(dir, Buffer::Whole(file_bytes))?;
    let cold_read_secs = start.elapsed().as_secs_f64();
    drop_cache(dir)?;
    let start = Instant::now();
    drop(LogStore::builder(dir).no_background_compaction().open()?);
    let cold_open_secs = start.elapsed().as_secs_f64();
    let fastest = |buffer: Buffer| -> BenchResult<f64> {
        let mut secs = f64::INFINITY;
        for _ in 0..TRIES {
            let start = Instant::now();
            read_files(dir, buffer)?;
            secs = secs.min(start.elapsed().as_secs_f64());
        }
        Ok(secs)
    };
    let read_secs = fastest(Buffer::Whole(file_bytes))?;
    let read_reused_secs = fastest(Buffer::Reused)?;
    let mut open_secs = f64::INFINITY;
    for _ in 0..TRIES {
        let start = Instant::now();
        let store = LogStore::builder(dir).no_background_compaction().open()?;
        open_secs = open_secs.min(start.elapsed().as_secs_f64());
        drop(store);
    }
    let reopen = Reopen {
        records,
        file_bytes,
        cold_read_secs,
        cold_open_secs,
        read_secs,
        read_reused_secs,
        open_secs,
        rss_bytes_per_record,
        key_len: packed_len(&record_key(0)?),
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

/// Opens the store and gets every key once; returns the records and the growth
/// of resident memory per record.
fn memory(dir: &Path) -> BenchResult<(usize, f64)> {
    let rss_before = rss_bytes()?;
    let store = LogStore::builder(dir).no_background_compaction().open()?;
    let records = store.stats()?.records;
    for i in 0..records {
        if jobsafe::Store::get(&store, &record_key(i)?)?.is_none() {
            return Err(format!("record {i} is missing").into());
        }
    }
    let grown = rss_bytes()?.saturating_sub(rss_before);
    drop(store);
    Ok((records, grown as f64 / records.max(1) as f64))
}

/// The key of record `i`.
fn record_key(i: usize) -> BenchResult<Key> {
    Ok(Key::new(["bench", &format!("rec-{i:09}")])?)
}

/// The length of `key` as the store holds it: its segments joined by a zero
/// byte.
fn packed_len(key: &Key) -> usize {
    let segments = key.segments();
    segments.iter().map(String::len).sum::<usize>() + segments.len() - 1
}

/// What the files are read into.
#[derive(Clone, Copy)]
enum Buffer {
    /// One buffer of this many bytes, that holds every file: a copy of them.
    Whole(u64),
    /// One 1 MiB buffer, read into again and again.
    Reused,
}

/// The bytes of every regular file of `dir`.
fn file_bytes(dir: &Path) -> BenchResult<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// Reads every regular file of `dir` start to end with `read(2)`.
fn read_files(dir: &Path, buffer: Buffer) -> BenchResult {
    let mut buf = match buffer {
        Buffer::Whole(bytes) => vec![0; usize::try_from(bytes)?],
        Buffer::Reused => vec![0; 1 << 20],
    };
    let mut at = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let mut file = File::open(entry.path())?;
        loop {
            let into = match buffer {
                Buffer::Whole(_) => &mut buf[at..],
                Buffer::Reused => &mut buf[..],
            };
            let n = file.read(into)?;
            if n == 0 {
                break;
            }
            if let Buffer::Whole(_) = buffer {
                at += n;
            }
        }
    }
    std::hint::black_box(&buf);
    Ok(())
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
