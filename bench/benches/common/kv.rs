//! The store comparison: the same three operations, run against every contender
//! through one small trait.
//!
//! - `insert`: insert-if-absent of a new key (jobsafe's `Expect::Absent`).
//! - `cas`: compare-and-set of an existing key at its current version
//!   (`Expect::Version`).
//! - `get`: read a key back.
//!
//! Each operation is durable on its own when it returns (one transaction each, no
//! batching), as a job runner's state changes are. To add a contender, implement
//! [`KvEngine`] (or open a jobsafe [`Store`] and wrap it in [`StoreEngine`]) and
//! give [`KvWorkload::new`] a function that opens it.

use std::path::Path;

use jobsafe::{Expect, Key, Store, Version};

use super::{BenchResult, Sample, Syncs, Workload, time_ops};

/// Bytes of every value written.
pub(crate) const VALUE_LEN: usize = 256;

/// A key-value store as the comparison drives it. Versions are whatever the store
/// uses to guard a compare-and-set, as a number.
pub(crate) trait KvEngine {
    /// Inserts `key`, which must be absent; returns its version.
    fn insert(&mut self, key: &str, value: &[u8]) -> BenchResult<u64>;

    /// Replaces the value of `key` if it is at version `expected`; returns the new
    /// version. A failed precondition is an error.
    fn update(&mut self, key: &str, value: &[u8], expected: u64) -> BenchResult<u64>;

    /// The value of `key`, if present.
    fn get(&mut self, key: &str) -> BenchResult<Option<Vec<u8>>>;

    /// Where the engine's flushes are counted.
    fn syncs(&self) -> Syncs;
}

/// Any jobsafe [`Store`] as a [`KvEngine`]; keys are `["bench", key]`.
#[derive(Debug)]
pub(crate) struct StoreEngine<S> {
    store: S,
    syncs: Syncs,
}

impl<S: Store> StoreEngine<S> {
    pub(crate) fn new(store: S, syncs: Syncs) -> Self {
        StoreEngine { store, syncs }
    }
}

fn store_key(key: &str) -> jobsafe::Result<Key> {
    Key::new(["bench", key])
}

impl<S: Store> KvEngine for StoreEngine<S> {
    fn insert(&mut self, key: &str, value: &[u8]) -> BenchResult<u64> {
        let version = self.store.put(&store_key(key)?, value, Expect::Absent)?;
        Ok(version.get())
    }

    fn update(&mut self, key: &str, value: &[u8], expected: u64) -> BenchResult<u64> {
        let expect = Expect::Version(Version::new(expected));
        Ok(self.store.put(&store_key(key)?, value, expect)?.get())
    }

    fn get(&mut self, key: &str) -> BenchResult<Option<Vec<u8>>> {
        Ok(self.store.get(&store_key(key)?)?.map(|entry| entry.value))
    }

    fn syncs(&self) -> Syncs {
        self.syncs.clone()
    }
}

/// One contender of the store comparison: each round opens a fresh engine, inserts
/// `ops` new keys, updates each of them once by compare-and-set, then reads each
/// back. Three samples: `<name>/insert`, `<name>/cas`, `<name>/get`.
#[derive(Debug)]
pub(crate) struct KvWorkload<E> {
    name: &'static str,
    open: fn(&Path) -> BenchResult<E>,
}

impl<E: KvEngine> KvWorkload<E> {
    /// A contender named `name`, opened in a fresh empty directory by `open`.
    pub(crate) fn new(name: &'static str, open: fn(&Path) -> BenchResult<E>) -> Self {
        KvWorkload { name, open }
    }
}

impl<E: KvEngine> Workload for KvWorkload<E> {
    fn name(&self) -> &str {
        self.name
    }

    fn round(&mut self, dir: &Path, ops: usize) -> BenchResult<Vec<Sample>> {
        let mut engine = (self.open)(dir)?;
        let keys: Vec<String> = (0..ops).map(|i| format!("job-{i:06}")).collect();
        let first = value('1');
        let second = value('2');
        // Creates what the first write creates (a table, a directory) untimed.
        engine.insert("warm-up", &first)?;
        let syncs = engine.syncs();
        let mut versions = Vec::with_capacity(ops);
        let insert = time_ops(format!("{}/insert", self.name), ops, &syncs, |i| {
            versions.push(engine.insert(&keys[i], &first)?);
            Ok(())
        })?;
        let cas = time_ops(format!("{}/cas", self.name), ops, &syncs, |i| {
            versions[i] = engine.update(&keys[i], &second, versions[i])?;
            Ok(())
        })?;
        let get = time_ops(format!("{}/get", self.name), ops, &syncs, |i| {
            let read = engine.get(&keys[i])?;
            expect_value(self.name, &keys[i], read.as_deref(), &second)
        })?;
        Ok(vec![insert, cas, get])
    }
}

/// Fails unless `key` read back as `expected`: a contender that loses writes has
/// no throughput worth reporting.
fn expect_value(name: &str, key: &str, read: Option<&[u8]>, expected: &[u8]) -> BenchResult {
    match read {
        Some(value) if value == expected => Ok(()),
        Some(value) => {
            let value = String::from_utf8_lossy(value);
            Err(format!("{name}: {key} reads back another value: {value}").into())
        }
        None => Err(format!("{name}: {key} is missing").into()),
    }
}

/// The stages of a job lifecycle after its creation, as [`JobState`] takes a job
/// through them in `common::jobs`: start, three stages, complete.
///
/// [`JobState`]: jobsafe::JobState
const LIFECYCLE: [char; 5] = ['s', 'd', 't', 'a', 'c'];

/// A job's lifecycle as a service without jobsafe would write it: its record
/// inserted under `key`, then replaced by compare-and-set at each of the five
/// transitions of [`LIFECYCLE`]. Six durable writes, as through `JobState`.
pub(crate) fn lifecycle<E: KvEngine + ?Sized>(engine: &mut E, key: &str) -> BenchResult {
    let mut version = engine.insert(key, &value('q'))?;
    for tag in LIFECYCLE {
        version = engine.update(key, &value(tag), version)?;
    }
    Ok(())
}

/// A [`VALUE_LEN`]-byte JSON document, as job records are, unique by `tag`.
pub(crate) fn value(tag: char) -> Vec<u8> {
    let head = format!(r#"{{"status":"running","tag":"{tag}","pad":""#);
    let tail = r#""}"#;
    let pad = VALUE_LEN - head.len() - tail.len();
    format!("{head}{}{tail}", ".".repeat(pad)).into_bytes()
}
