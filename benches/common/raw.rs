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

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
