//! The in-process store.

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use parking_lot::{Mutex, RwLock};

use crate::error::Result;
use crate::key::{Key, Prefix};
use crate::store::{
    Applied, Batch, Entry, Expect, ListPage, Op, Quarantined, Store, Version, check_limit,
};

/// A [`Store`] in process memory: for tests, and for services that need no
/// durability. Everything is lost when the process exits.
///
/// All operations take one lock, so each is atomic and linearizable within the
/// process. Versions come from one counter for the whole store, so they are never
/// reused, even for a key deleted and created again.
///
/// ```
/// use jobsafe::{Expect, Key, MemStore, Store};
///
/// let store = MemStore::new();
/// let key = Key::new(["jobs", "1"])?;
/// let v1 = store.put(&key, b"queued", Expect::Absent)?;
/// // A second insert-if-absent loses, and is told the current version.
/// let err = store.put(&key, b"queued", Expect::Absent).unwrap_err();
/// assert_eq!(err.conflict_current(), Some(Some(v1)));
/// let v2 = store.put(&key, b"running", Expect::Version(v1))?;
/// assert!(v2 > v1);
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct MemStore {
    state: RwLock<State>,
    quarantine: Mutex<Vec<(Key, Vec<u8>)>>,
}

/// The records, indexed twice: a hash map for point operations, whose cost does
/// not grow with the number of records, and an ordered set of keys for `list`,
/// touched only when a key appears or disappears. Both hold keys [`pack`]ed into
/// one byte string, so that a comparison reads one allocation, not one per
/// segment.
#[derive(Debug, Default)]
struct State {
    records: HashMap<Packed, Entry>,
    order: BTreeSet<Packed>,
    last_version: u64,
}

/// A key as one byte string: see [`pack`].
type Packed = Box<[u8]>;

/// Joins the segments with NUL, which no segment contains and which sorts below
/// every other byte: byte order of packed keys is key order, and a packed prefix
/// followed by NUL (or nothing) starts exactly the keys under that prefix.
fn pack<S: AsRef<str>>(segments: &[S]) -> Packed {
    let mut bytes = Vec::with_capacity(segments.iter().map(|s| s.as_ref().len() + 1).sum());
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(segment.as_ref().as_bytes());
    }
    bytes.into_boxed_slice()
}

fn unpack(bytes: &[u8]) -> Result<Key> {
    let segments = bytes
        .split(|&b| b == 0)
        .map(|segment| String::from_utf8_lossy(segment).into_owned());
    Key::new(segments)
}

/// Whether the packed `key` is under the packed `prefix` (whole segments).
fn is_under(key: &[u8], prefix: &[u8]) -> bool {
    prefix.is_empty()
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.first().is_none_or(|&b| b == 0))
}

impl State {
    fn current(&self, key: &Key) -> Option<Version> {
        self.records.get(&pack(key.segments())).map(|e| e.version)
    }

    fn get(&self, key: &Key) -> Option<&Entry> {
        self.records.get(&pack(key.segments()))
    }

    /// Stores `value` at `key` if `expect` holds: one hash probe, and one ordered
    /// insert if the key is new.
    fn put(&mut self, key: &Key, value: Vec<u8>, expect: Expect) -> Result<Version> {
        match self.records.entry(pack(key.segments())) {
            Slot::Occupied(mut slot) => {
                expect.check(key, Some(slot.get().version))?;
                self.last_version += 1;
                let version = Version::new(self.last_version);
                slot.insert(Entry { value, version });
                Ok(version)
            }
            Slot::Vacant(slot) => {
                expect.check(key, None)?;
                self.last_version += 1;
                let version = Version::new(self.last_version);
                self.order.insert(slot.key().clone());
                slot.insert(Entry { value, version });
                Ok(version)
            }
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let packed = pack(key.segments());
        let removed = self.records.remove(&packed);
        if removed.is_some() {
            self.order.remove(&packed);
        }
        removed
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        MemStore::default()
    }

    /// The records moved aside by [`Store::quarantine`], oldest first.
    pub fn quarantined(&self) -> Vec<(Key, Vec<u8>)> {
        self.quarantine.lock().clone()
    }
}

impl Store for MemStore {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        Ok(self.state.read().get(key).cloned())
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        self.state.write().put(key, value.to_vec(), expect)
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        let mut state = self.state.write();
        expect.check(key, state.current(key))?;
        Ok(state.remove(key).is_some())
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        check_limit(limit)?;
        let state = self.state.read();
        let prefix = pack(prefix.segments());
        let start = match after.map(|after| pack(after.segments())) {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix.clone()),
        };
        let mut keys = Vec::new();
        for packed in state.order.range((start, Bound::Unbounded)) {
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

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        batch.validate()?;
        let mut state = self.state.write();
        for op in batch.ops() {
            op.expect().check(op.key(), state.current(op.key()))?;
        }
        // Every precondition held under this lock: the writes cannot fail.
        batch
            .ops()
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => {
                    state.put(key, value.clone(), Expect::Any).map(Applied::Put)
                }
                Op::Delete { key, .. } => Ok(Applied::Deleted(state.remove(key).is_some())),
            })
            .collect()
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        let mut state = self.state.write();
        let Some(entry) = state.remove(key) else {
            return Ok(None);
        };
        let mut moved = self.quarantine.lock();
        moved.push((key.clone(), entry.value));
        Ok(Some(Quarantined {
            key: key.clone(),
            location: format!("memory quarantine #{}", moved.len() - 1),
        }))
    }
}
