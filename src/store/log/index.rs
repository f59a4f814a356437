//! The in-memory index: every live record's key and version, and where its
//! value lies in the journal. Rebuilt from the journal on open and kept
//! current by every frame written or read.
//!
//! Values stay on disk: a read takes its value from the journal file (from
//! the page cache, usually) with one positioned read. So memory grows with
//! the number of records and the length of their keys, not with the bytes
//! they hold.
//!
//! Invariants:
//! - Every [`Slot`] points into the file the index holds (`file`), at bytes of
//!   a frame that passed its checksum when it was read or written. The file is
//!   the journal the index was read from, held open: a compaction that
//!   replaces the journal leaves this file as it was until the index is
//!   replaced too, and frames are never rewritten in place, only appended.
//! - The slot's checksum is of the value as that frame held it. A read checks
//!   it, so bytes damaged since (a sector zeroed under the running process)
//!   are reported, never served.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use super::Packed;
use super::cache::ValueCache;
use super::frame::OpRef;
use crate::error::{Error, IoContext, Result, steps};
use crate::key::Prefix;
use crate::store::packed::{is_under, pack, unpack};
use crate::store::{ListPage, Version};
use crate::vfs::VfsFile;

/// Bytes a record takes in a compacted journal beyond its key and value: the
/// op's tag, version and two lengths.
const RECORD_OVERHEAD: u64 = 17;

/// Where a live record's value lies, and what it must read back as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub version: Version,
    /// The value's first byte in the journal file.
    pub at: u64,
    pub len: u32,
    /// CRC-32 of the value.
    pub crc: u32,
}

impl Slot {
    /// The slot of `value`, found at byte `at` of the journal.
    pub(crate) fn of(version: Version, at: u64, value: &[u8]) -> Slot {
        Slot {
            version,
            at,
            // Values are at most `Entry::MAX_VALUE_LEN` long, checked before
            // they are written, and frames at most `MAX_PAYLOAD`.
            len: u32::try_from(value.len()).unwrap_or(u32::MAX),
            crc: crc32fast::hash(value),
        }
    }

    /// The same value, `by` bytes further into the file.
    pub(crate) fn moved(self, by: u64) -> Slot {
        Slot {
            at: self.at + by,
            ..self
        }
    }
}

/// What reading a journal does with each op: the live index applies it at
/// once, a [`Loader`] gathers ops to build the index in bulk.
pub(crate) trait ApplyOp {
    fn apply_put(&mut self, key: Packed, slot: Slot);
    fn apply_delete(&mut self, key: &[u8]);
    fn apply_floor(&mut self, version: Version);

    /// Applies `op`, read from a frame whose payload starts at byte
    /// `payload_at` of the journal.
    fn apply_op(&mut self, op: OpRef<'_>, payload_at: u64) {
        match op {
            OpRef::Put {
                key,
                version,
                value,
                value_at,
            } => {
                let slot = Slot::of(version, payload_at + value_at as u64, value);
                self.apply_put(key.into(), slot);
            }
            OpRef::Delete { key } => self.apply_delete(key),
            OpRef::Floor(version) => self.apply_floor(version),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Index<F> {
    records: BTreeMap<Packed, Slot>,
    /// The journal file the slots point into.
    file: Arc<F>,
    /// Values of that file read or written lately.
    cache: Arc<ValueCache>,
    /// The highest version ever handed out: the next one is higher.
    pub last_version: u64,
    /// What the live records would take in a freshly compacted journal.
    pub live_bytes: u64,
}

impl<F: VfsFile> Index<F> {
    /// An empty index of the journal `file`, with a cache of values of
    /// about `cache_bytes`.
    pub(crate) fn new(file: Arc<F>, cache_bytes: usize) -> Self {
        Index {
            records: BTreeMap::new(),
            file,
            cache: Arc::new(ValueCache::new(cache_bytes)),
            last_version: 0,
            live_bytes: 0,
        }
    }

    /// The journal file the slots point into.
    pub(crate) fn file(&self) -> &Arc<F> {
        &self.file
    }

    /// The cache of values of that file.
    pub(crate) fn cache(&self) -> &Arc<ValueCache> {
        &self.cache
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Slot> {
        self.records.get(key).copied()
    }

    pub(crate) fn current(&self, key: &[u8]) -> Option<Version> {
        self.records.get(key).map(|slot| slot.version)
    }

    pub(crate) fn put(&mut self, key: Packed, slot: Slot) {
        self.last_version = self.last_version.max(slot.version.get());
        let key_len = key.len();
        if let Some(old) = self.records.insert(key, slot) {
            self.live_bytes -= record_cost(key_len, old.len);
        }
        self.live_bytes += record_cost(key_len, slot.len);
    }

    pub(crate) fn delete(&mut self, key: &[u8]) {
        if let Some(old) = self.records.remove(key) {
            self.live_bytes -= record_cost(key.len(), old.len);
        }
    }

    pub(crate) fn floor(&mut self, version: Version) {
        self.last_version = self.last_version.max(version.get());
    }

    /// Every record, in key order, taken out of the index.
    pub(crate) fn into_records(self) -> impl Iterator<Item = (Packed, Slot)> {
        self.records.into_iter()
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

impl<F: VfsFile> ApplyOp for Index<F> {
    fn apply_put(&mut self, key: Packed, slot: Slot) {
        self.put(key, slot);
    }

    fn apply_delete(&mut self, key: &[u8]) {
        self.delete(key);
    }

    fn apply_floor(&mut self, version: Version) {
        self.floor(version);
    }
}

/// Reads the value at `slot` from `file` (the journal at `path`), and checks
/// it against the slot's checksum.
pub(crate) fn read_value<F: VfsFile + ?Sized>(
    file: &F,
    slot: Slot,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut value = vec![0; slot.len as usize];
    let n = file
        .read_at(&mut value, slot.at)
        .at(steps::READ_JOURNAL_VALUE, path)?;
    check_value(slot, &value[..n], path)?;
    Ok(value)
}

/// Whether `value`, read from `slot`, is whole and matches the slot's
/// checksum.
pub(crate) fn check_value(slot: Slot, value: &[u8], path: &Path) -> Result<()> {
    let n = value.len();
    if n < slot.len as usize {
        return Err(Error::CorruptFile {
            path: path.to_path_buf(),
            reason: format!(
                "the journal ends at byte {} inside the value of {} bytes at byte {}, which \
                 was there when it was read",
                slot.at + n as u64,
                slot.len,
                slot.at
            ),
        });
    }
    if crc32fast::hash(value) != slot.crc {
        return Err(Error::CorruptFile {
            path: path.to_path_buf(),
            reason: format!(
                "the value of {} bytes at byte {} no longer matches the checksum it had when \
                 its frame was read: the file was damaged since",
                slot.len, slot.at
            ),
        });
    }
    Ok(())
}

/// Builds an index from a whole journal without one tree insert per record:
/// ops are gathered in journal order, then sorted by key (a stable sort, so
/// the last op of a key stays last; a compacted journal is in key order
/// already, which the sort finds in one pass) and folded into a tree built
/// in bulk from sorted records.
///
/// A fold merges the gathered ops with the tree built so far. It runs when the
/// ops outnumber the tree's records (and at the end), so that every op is
/// moved a bounded number of times however many times its key was rewritten,
/// and what is gathered never takes more than about the index itself.
#[derive(Debug)]
pub(crate) struct Loader<F> {
    index: Index<F>,
    /// Puts (`Some`) and deletes (`None`) not yet folded, in journal order.
    gathered: Vec<(Packed, Option<Slot>)>,
}

/// Ops gathered before the first fold, at least.
const FOLD_AT_LEAST: usize = 1 << 16;

impl<F: VfsFile> Loader<F> {
    pub(crate) fn new(file: Arc<F>, cache_bytes: usize) -> Self {
        Loader {
            index: Index::new(file, cache_bytes),
            gathered: Vec::new(),
        }
    }

    pub(crate) fn finish(mut self) -> Index<F> {
        self.fold();
        self.index.live_bytes = self
            .index
            .records
            .iter()
            .map(|(key, slot)| record_cost(key.len(), slot.len))
            .sum();
        self.index
    }

    /// Gathers a put: of a frame read, or of a record a compaction wrote.
    pub(crate) fn put(&mut self, key: Packed, slot: Slot) {
        self.index.floor(slot.version);
        self.gather(key, Some(slot));
    }

    pub(crate) fn floor(&mut self, version: Version) {
        self.index.floor(version);
    }

    fn gather(&mut self, key: Packed, slot: Option<Slot>) {
        self.gathered.push((key, slot));
        if self.gathered.len() >= FOLD_AT_LEAST.max(self.index.records.len()) {
            self.fold();
        }
    }

    fn fold(&mut self) {
        if self.gathered.is_empty() {
            return;
        }
        let mut gathered = std::mem::take(&mut self.gathered);
        // Keys written in order, each once (a compacted journal), need
        // neither the sort nor the dedup.
        if !gathered.is_sorted_by(|a, b| a.0 < b.0) {
            gathered.sort_by(|a, b| a.0.cmp(&b.0));
            // Of the ops of one key, the last one written decides.
            gathered.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
        let before = std::mem::take(&mut self.index.records);
        if before.is_empty() {
            self.index.records = gathered
                .into_iter()
                .filter_map(|(key, slot)| Some((key, slot?)))
                .collect();
            return;
        }
        let mut merged = Vec::with_capacity(before.len() + gathered.len());
        let mut before = before.into_iter().peekable();
        for (key, slot) in gathered {
            while let Some(older) = before.next_if(|(k, _)| *k < key) {
                merged.push(older);
            }
            before.next_if(|(k, _)| *k == key);
            if let Some(slot) = slot {
                merged.push((key, slot));
            }
        }
        merged.extend(before);
        // Sorted and free of duplicates: `FromIter` builds the tree bottom up.
        self.index.records = merged.into_iter().collect();
    }
}

impl<F: VfsFile> ApplyOp for Loader<F> {
    fn apply_put(&mut self, key: Packed, slot: Slot) {
        self.put(key, slot);
    }

    fn apply_delete(&mut self, key: &[u8]) {
        self.gather(key.into(), None);
    }

    fn apply_floor(&mut self, version: Version) {
        self.floor(version);
    }
}

fn record_cost(key_len: usize, value_len: u32) -> u64 {
    (key_len as u64) + u64::from(value_len) + RECORD_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{StdVfs, Vfs};

    fn file() -> (tempfile::TempDir, Arc<<StdVfs as Vfs>::File>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = StdVfs.create_new(&path, 0o600).unwrap();
        (dir, Arc::new(file))
    }

    fn slot(version: u64) -> Slot {
        Slot {
            version: Version::new(version),
            at: version * 10,
            len: version as u32,
            crc: 0,
        }
    }

    /// The loader ends where applying every op in order to a tree ends, for
    /// any mix of puts and deletes, across folds.
    #[test]
    fn a_bulk_load_ends_as_applying_in_order_does() {
        let (_dir, file) = file();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut loader = Loader::new(file.clone(), 0);
        let mut expected: BTreeMap<Packed, Slot> = BTreeMap::new();
        for version in 1..=(3 * FOLD_AT_LEAST as u64) {
            let key: Packed = format!("k{}", rng.u32(..5_000)).into_bytes().into();
            if rng.u8(..4) == 0 {
                expected.remove(&key);
                loader.gather(key.clone(), None);
            } else {
                expected.insert(key.clone(), slot(version));
                loader.gather(key.clone(), Some(slot(version)));
            }
        }
        let index = loader.finish();
        assert_eq!(index.records, expected);
        let live: u64 = expected
            .iter()
            .map(|(k, s)| record_cost(k.len(), s.len))
            .sum();
        assert_eq!(index.live_bytes, live);
    }
}
