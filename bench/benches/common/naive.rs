//! The naive design the seeds started from, as a [`KvEngine`]: every record in one
//! JSON file, held in memory, and the whole file rewritten on every change.
//!
//! The seeds wrote the file without any fsync. Here it is rewritten with the same
//! temp file, fsync, rename and directory fsync as [`raw::replace`], so that it
//! promises what the other contenders promise and the comparison measures the
//! design, not a weaker guarantee. Its cost per change grows with the number of
//! records; reads are served from memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::kv::KvEngine;
use super::raw;
use super::{BenchResult, Syncs, Tally};

/// All records in memory, mirrored to `records.json` after every change.
#[derive(Debug)]
pub(crate) struct NaiveJson {
    dir: PathBuf,
    path: PathBuf,
    temp: PathBuf,
    records: BTreeMap<String, Record>,
    tally: Tally,
}

#[derive(Debug, Serialize)]
struct Record {
    version: u64,
    value: String,
}

impl NaiveJson {
    /// An empty map whose file lives in `dir`.
    pub(crate) fn open(dir: &Path) -> BenchResult<Self> {
        Ok(NaiveJson {
            dir: dir.to_path_buf(),
            path: dir.join("records.json"),
            temp: dir.join(".records.json.tmp"),
            records: BTreeMap::new(),
            tally: Tally::default(),
        })
    }

    /// Adds `records` (key, value) at version 1 and writes the file once: how a
    /// bench fills the map before timing, without rewriting it per record.
    pub(crate) fn load(
        &mut self,
        records: impl IntoIterator<Item = (String, String)>,
    ) -> BenchResult {
        for (key, value) in records {
            self.records.insert(key, Record { version: 1, value });
        }
        self.persist()
    }

    fn persist(&self) -> BenchResult {
        let bytes = serde_json::to_vec(&self.records)?;
        raw::replace(&self.dir, &self.temp, &self.path, &bytes, &self.tally)?;
        Ok(())
    }
}

impl KvEngine for NaiveJson {
    fn insert(&mut self, key: &str, value: &[u8]) -> BenchResult<u64> {
        if self.records.contains_key(key) {
            return Err(format!("naive: insert of existing key {key}").into());
        }
        let value = std::str::from_utf8(value)?.to_owned();
        self.records
            .insert(key.to_owned(), Record { version: 1, value });
        self.persist()?;
        Ok(1)
    }

    fn update(&mut self, key: &str, value: &[u8], expected: u64) -> BenchResult<u64> {
        let value = std::str::from_utf8(value)?.to_owned();
        let record = match self.records.get_mut(key) {
            Some(record) if record.version == expected => record,
            _ => return Err(format!("naive: {key} is not at version {expected}").into()),
        };
        record.version += 1;
        record.value = value;
        let version = record.version;
        self.persist()?;
        Ok(version)
    }

    fn get(&mut self, key: &str) -> BenchResult<Option<Vec<u8>>> {
        Ok(self.records.get(key).map(|r| r.value.clone().into_bytes()))
    }

    fn syncs(&self) -> Syncs {
        Syncs::Tally(self.tally.clone())
    }
}
