//! The physical limits of a durable change on this disk, written straight with
//! `std::fs` (no jobsafe): what no store built on files can beat.
//!
//! - [`RawReplace`]: replace a whole file (temp file, fsync, rename, directory
//!   fsync). The limit of [`AtomicWriter`](jobsafe::AtomicWriter) and of any
//!   file-per-record store.
//! - [`RawAppend`]: append a record and `fdatasync`. The limit of a log; the size
//!   grows, so the flush commits metadata too.
//! - [`RawOverwrite`]: overwrite a record in preallocated space and `fdatasync`. The
//!   limit of an update in place: only data is flushed.
//! - [`RawFiles`]: a file per key, each write a [`replace`]. The limit of a
//!   file-per-record store such as [`DirStore`](jobsafe::DirStore), run beside the
//!   stores.
//!
//! The same limits for threads writing at once, each call one durable record:
//! [`AppendWriter`], [`SlotWriter`] and [`ReplaceWriter`] (one file per thread,
//! no sharing: each write pays its own flush), and [`GroupLog`] (every thread
//! appends to one file, and one leader flushes each batch: the limit of group
//! commit).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use parking_lot::{Condvar, Mutex};

use super::kv::KvEngine;
use super::{BenchResult, Sample, Syncs, Tally, Workload, time_ops};

/// Replaces `target` with `bytes` the textbook way: create `temp` exclusively,
/// write, fsync, rename over `target`, fsync the directory `dir`. The same sequence
/// as [`AtomicWriter`](jobsafe::AtomicWriter) with `Durability::Full`, less its
/// random temp name and `fchmod`. Two flushes, added to `tally`.
pub(crate) fn replace(
    dir: &Path,
    temp: &Path,
    target: &Path,
    bytes: &[u8],
    tally: &Tally,
) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, target)?;
    File::open(dir)?.sync_all()?;
    tally.add(2);
    Ok(())
}

/// Replaces one file of `size` bytes again and again with [`replace`].
#[derive(Debug)]
pub(crate) struct RawReplace {
    size: usize,
}

impl RawReplace {
    pub(crate) fn new(size: usize) -> Self {
        RawReplace { size }
    }
}

impl Workload for RawReplace {
    fn name(&self) -> &str {
        "raw_replace"
    }

    fn round(&mut self, dir: &Path, ops: usize) -> BenchResult<Vec<Sample>> {
        let target = dir.join("state.bin");
        let temp = dir.join(".state.bin.tmp");
        let bytes = vec![b'r'; self.size];
        let tally = Tally::default();
        // Every timed write replaces an existing file, as in steady state.
        replace(dir, &temp, &target, &bytes, &tally)?;
        let bench = format!("raw/replace_{}k", self.size / 1024);
        let sample = time_ops(bench, ops, &Syncs::Tally(tally.clone()), |_| {
            Ok(replace(dir, &temp, &target, &bytes, &tally)?)
        })?;
        Ok(vec![sample])
    }
}

/// Appends records of `size` bytes to one file, each followed by `fdatasync`.
#[derive(Debug)]
pub(crate) struct RawAppend {
    size: usize,
}

impl RawAppend {
    pub(crate) fn new(size: usize) -> Self {
        RawAppend { size }
    }
}

impl Workload for RawAppend {
    fn name(&self) -> &str {
        "raw_append"
    }

    fn round(&mut self, dir: &Path, ops: usize) -> BenchResult<Vec<Sample>> {
        let record = vec![b'a'; self.size];
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(dir.join("log"))?;
        // The file and its directory entry exist durably before timing starts.
        file.write_all(&record)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        let tally = Tally::default();
        let bench = format!("raw/append_{}", self.size);
        let sample = time_ops(bench, ops, &Syncs::Tally(tally.clone()), |_| {
            file.write_all(&record)?;
            file.sync_data()?;
            tally.add(1);
            Ok(())
        })?;
        Ok(vec![sample])
    }
}

/// Overwrites records of `size` bytes in place, each in its own slot of a file
/// written in full beforehand, each followed by `fdatasync`.
#[derive(Debug)]
pub(crate) struct RawOverwrite {
    size: usize,
}

impl RawOverwrite {
    pub(crate) fn new(size: usize) -> Self {
        RawOverwrite { size }
    }
}

impl Workload for RawOverwrite {
    fn name(&self) -> &str {
        "raw_overwrite"
    }

    fn round(&mut self, dir: &Path, ops: usize) -> BenchResult<Vec<Sample>> {
        let record = vec![b'o'; self.size];
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join("table"))?;
        // Zeros written for real, not `fallocate`d: the blocks of an unwritten
        // extent would be converted, a metadata change, on their first write.
        file.write_all(&vec![0; self.size * ops])?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        let tally = Tally::default();
        let bench = format!("raw/overwrite_{}", self.size);
        let sample = time_ops(bench, ops, &Syncs::Tally(tally.clone()), |i| {
            let offset = u64::try_from(i * self.size)?;
            file.write_all_at(&record, offset)?;
            file.sync_data()?;
            tally.add(1);
            Ok(())
        })?;
        Ok(vec![sample])
    }
}

/// The limit of a file-per-record store, as a [`KvEngine`]: one file per key,
/// each write a [`replace`] (an insert renames to a new name, an update over the
/// old file), each read one `fs::read`. No locks, no record header, no checks on
/// disk: versions are kept in memory, which costs nothing next to a flush.
///
/// It runs in the same rounds as the stores, so that their ratio to it is measured
/// under the same disk conditions (ratios between benches of different rounds are
/// not: another process's writes can slow one and not the other).
#[derive(Debug)]
pub(crate) struct RawFiles {
    dir: PathBuf,
    versions: HashMap<String, u64>,
    tally: Tally,
}

impl RawFiles {
    /// An empty set of files in `dir`.
    pub(crate) fn open(dir: &Path) -> BenchResult<Self> {
        Ok(RawFiles {
            dir: dir.to_path_buf(),
            versions: HashMap::new(),
            tally: Tally::default(),
        })
    }

    fn write(&self, key: &str, value: &[u8]) -> io::Result<()> {
        let target = self.dir.join(key);
        let temp = self.dir.join(format!(".{key}.tmp"));
        replace(&self.dir, &temp, &target, value, &self.tally)
    }
}

impl KvEngine for RawFiles {
    fn insert(&mut self, key: &str, value: &[u8]) -> BenchResult<u64> {
        if self.versions.contains_key(key) {
            return Err(format!("raw_files: insert of existing key {key}").into());
        }
        self.write(key, value)?;
        self.versions.insert(key.to_owned(), 1);
        Ok(1)
    }

    fn update(&mut self, key: &str, value: &[u8], expected: u64) -> BenchResult<u64> {
        match self.versions.get(key) {
            Some(&v) if v == expected => {}
            _ => return Err(format!("raw_files: {key} is not at version {expected}").into()),
        }
        self.write(key, value)?;
        self.versions.insert(key.to_owned(), expected + 1);
        Ok(expected + 1)
    }

    fn get(&mut self, key: &str) -> BenchResult<Option<Vec<u8>>> {
        match fs::read(self.dir.join(key)) {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn syncs(&self) -> Syncs {
        Syncs::Tally(self.tally.clone())
    }
}

/// Appends `size`-byte records to a file of its own, each followed by
/// `fdatasync`: [`RawAppend`] for one of several threads.
#[derive(Debug)]
pub(crate) struct AppendWriter {
    file: File,
    record: Vec<u8>,
    tally: Tally,
}

impl AppendWriter {
    /// Creates `path` with one record, durably (file and directory entry).
    pub(crate) fn create(path: &Path, size: usize, tally: Tally) -> io::Result<Self> {
        let record = vec![b'a'; size];
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)?;
        file.write_all(&record)?;
        file.sync_all()?;
        sync_parent(path)?;
        Ok(AppendWriter {
            file,
            record,
            tally,
        })
    }

    /// Appends one record durably.
    pub(crate) fn write(&mut self) -> io::Result<()> {
        self.file.write_all(&self.record)?;
        self.file.sync_data()?;
        self.tally.add(1);
        Ok(())
    }
}

/// Overwrites `size`-byte records in place, in a ring of slots of a file of its
/// own written in full beforehand, each followed by `fdatasync`:
/// [`RawOverwrite`] for one of several threads, and for runs whose length is
/// set in time rather than in operations.
#[derive(Debug)]
pub(crate) struct SlotWriter {
    file: File,
    record: Vec<u8>,
    slots: u64,
    next: u64,
    tally: Tally,
}

impl SlotWriter {
    /// Creates `path` with `slots` zeroed slots, durably.
    pub(crate) fn create(path: &Path, size: usize, slots: usize, tally: Tally) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        // Written for real, not `fallocate`d: see `RawOverwrite`.
        file.write_all(&vec![0; size * slots])?;
        file.sync_all()?;
        sync_parent(path)?;
        Ok(SlotWriter {
            file,
            record: vec![b'o'; size],
            slots: slots.max(1) as u64,
            next: 0,
            tally,
        })
    }

    /// Overwrites the next slot durably.
    pub(crate) fn write(&mut self) -> io::Result<()> {
        let offset = (self.next % self.slots) * self.record.len() as u64;
        self.next += 1;
        self.file.write_all_at(&self.record, offset)?;
        self.file.sync_data()?;
        self.tally.add(1);
        Ok(())
    }
}

/// Replaces a file of its own with [`replace`] again and again: [`RawReplace`]
/// for one of several threads.
#[derive(Debug)]
pub(crate) struct ReplaceWriter {
    dir: PathBuf,
    temp: PathBuf,
    target: PathBuf,
    bytes: Vec<u8>,
    tally: Tally,
}

impl ReplaceWriter {
    /// Writes `dir/name` once, so that every timed write replaces it.
    pub(crate) fn create(dir: &Path, name: &str, size: usize, tally: Tally) -> io::Result<Self> {
        let writer = ReplaceWriter {
            dir: dir.to_path_buf(),
            temp: dir.join(format!(".{name}.tmp")),
            target: dir.join(name),
            bytes: vec![b'r'; size],
            tally,
        };
        writer.write()?;
        Ok(writer)
    }

    /// Replaces the file durably.
    pub(crate) fn write(&self) -> io::Result<()> {
        replace(
            &self.dir,
            &self.temp,
            &self.target,
            &self.bytes,
            &self.tally,
        )
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Zero-filled space is added to a [`GroupLog`] in steps of this size, as
/// `LogStore` does, so that appends flush data only.
const GROUP_PREALLOCATE: u64 = 4 << 20;

/// The limit of group commit: threads append `size`-byte records to one file,
/// and each call returns once its record is durable. A caller that finds no
/// flush under way leads: it writes every record queued so far with one write
/// at the end of the file and flushes them with one `fdatasync`, while callers
/// that arrive meanwhile queue for the next batch. A lone caller never waits for
/// company. Records go into zero-filled space, so flushes commit data only.
#[derive(Debug)]
pub(crate) struct GroupLog {
    file: File,
    record: Vec<u8>,
    state: Mutex<GroupState>,
    flushed: Condvar,
    tally: Tally,
}

#[derive(Debug)]
struct GroupState {
    /// Records queued for the next batch.
    batch: Vec<u8>,
    /// Records queued so far; a caller's ticket is the count after its own.
    queued: u64,
    /// Records durable so far, in ticket order.
    durable: u64,
    leading: bool,
    /// Where the next batch goes.
    end: u64,
    /// Bytes of the file, zero-filled beyond `end`.
    allocated: u64,
    /// Why a flush failed: nothing is durable after it.
    failed: Option<String>,
}

impl GroupLog {
    /// Creates `path` with its first step of zero-filled space, durably.
    pub(crate) fn create(path: &Path, size: usize, tally: Tally) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        zero_fill(&file, 0, GROUP_PREALLOCATE)?;
        file.sync_all()?;
        sync_parent(path)?;
        Ok(GroupLog {
            file,
            record: vec![b'g'; size],
            state: Mutex::new(GroupState {
                batch: Vec::new(),
                queued: 0,
                durable: 0,
                leading: false,
                end: 0,
                allocated: GROUP_PREALLOCATE,
                failed: None,
            }),
            flushed: Condvar::new(),
            tally,
        })
    }

    /// Appends one record and returns once it is durable.
    pub(crate) fn append(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        state.batch.extend_from_slice(&self.record);
        state.queued += 1;
        let ticket = state.queued;
        loop {
            if let Some(reason) = &state.failed {
                return Err(io::Error::other(format!(
                    "an earlier flush failed: {reason}"
                )));
            }
            if state.durable >= ticket {
                return Ok(());
            }
            if !state.leading {
                break;
            }
            self.flushed.wait(&mut state);
        }
        state.leading = true;
        let batch = std::mem::take(&mut state.batch);
        let upto = state.queued;
        let (at, allocated) = (state.end, state.allocated);
        drop(state);

        let written = self.write_batch(&batch, at, allocated);
        let mut state = self.state.lock();
        state.leading = false;
        let result = match written {
            Ok(allocated) => {
                state.durable = upto;
                state.end = at + batch.len() as u64;
                state.allocated = allocated;
                Ok(())
            }
            Err(e) => {
                state.failed = Some(e.to_string());
                Err(e)
            }
        };
        self.flushed.notify_all();
        result
    }

    /// Writes `batch` at `at`, first adding zero-filled space if it would not fit
    /// in `allocated` bytes; returns the bytes allocated after.
    fn write_batch(&self, batch: &[u8], at: u64, allocated: u64) -> io::Result<u64> {
        let end = at + batch.len() as u64;
        let mut allocated = allocated;
        if end > allocated {
            let target = end.div_ceil(GROUP_PREALLOCATE) * GROUP_PREALLOCATE + GROUP_PREALLOCATE;
            zero_fill(&self.file, allocated, target)?;
            self.file.sync_all()?;
            self.tally.add(1);
            allocated = target;
        }
        self.file.write_all_at(batch, at)?;
        self.file.sync_data()?;
        self.tally.add(1);
        Ok(allocated)
    }
}

/// Writes zeros over `[from, to)` of `file`.
fn zero_fill(file: &File, from: u64, to: u64) -> io::Result<()> {
    const STEP: u64 = 1 << 20;
    let zeros = vec![0; STEP as usize];
    let mut at = from;
    while at < to {
        let n = STEP.min(to - at);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}
