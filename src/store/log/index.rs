//! The in-memory index: every live record with its version, rebuilt from the
//! journal on open and kept current by every frame written or read.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::Packed;
use super::frame::LogOp;
use crate::error::Result;
use crate::key::Prefix;
use crate::store::packed::{is_under, pack, unpack};
use crate::store::{Entry, ListPage, Version};

/// Bytes a record takes in a compacted journal beyond its key and value: the
/// op's tag, version and two lengths.
const RECORD_OVERHEAD: u64 = 17;

#[derive(Debug, Default)]
pub(crate) struct Index {
    records: BTreeMap<Packed, Entry>,
    /// The highest version ever handed out: the next one is higher.
    pub last_version: u64,
    /// What the live records would take in a freshly compacted journal.
    pub live_bytes: u64,
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.records.get(key)
    }

    pub(crate) fn current(&self, key: &[u8]) -> Option<Version> {
        self.records.get(key).map(|entry| entry.version)
    }

    /// Applies one journal op.
    pub(crate) fn apply(&mut self, op: LogOp) {
        match op {
            LogOp::Put {
                key,
                version,
                value,
            } => {
                self.last_version = self.last_version.max(version.get());
                let cost = record_cost(&key, &value);
                let key_len = key.len();
                if let Some(old) = self.records.insert(key, Entry { value, version }) {
                    self.live_bytes -= record_cost_of(key_len, old.value.len());
                }
                self.live_bytes += cost;
            }
            LogOp::Delete { key } => {
                if let Some(old) = self.records.remove(&key) {
                    self.live_bytes -= record_cost(&key, &old.value);
                }
            }
            LogOp::Floor(version) => self.last_version = self.last_version.max(version.get()),
        }
    }

    /// Every record, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Packed, &Entry)> {
        self.records.iter()
    }

    /// A page of [`Store::list`](crate::Store::list).
    pub(crate) fn list(
        &self,
        prefix: &Prefix,
        after: Option<&crate::Key>,
        limit: usize,
    ) -> Result<ListPage> {
        let prefix: Packed = pack(prefix.segments()).into();
        let start = match after.map(|after| Packed::from(pack(after.segments()))) {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix.clone()),
        };
        let mut keys = Vec::new();
        for (packed, _) in self.records.range((start, Bound::Unbounded)) {
            if !is_under(packed, &prefix) || keys.len() > limit {
                break;
            }
            keys.push(unpack(packed)?);
        }
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().cloned()
        } else {
            None
        };
        Ok(ListPage { keys, next })
    }
}

fn record_cost(key: &[u8], value: &[u8]) -> u64 {
    record_cost_of(key.len(), value.len())
}

fn record_cost_of(key_len: usize, value_len: usize) -> u64 {
    (key_len + value_len) as u64 + RECORD_OVERHEAD
}
