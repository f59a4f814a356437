//! The in-process store.

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
/// touched only when a key appears or disappears.
#[derive(Debug, Default)]
struct State {
    records: HashMap<Key, Entry>,
    order: BTreeSet<Key>,
    last_version: u64,
}

impl State {
    fn next_version(&mut self) -> Version {
        self.last_version += 1;
        Version::new(self.last_version)
    }

    fn current(&self, key: &Key) -> Option<Version> {
        self.records.get(key).map(|e| e.version)
    }

    fn insert(&mut self, key: &Key, value: Vec<u8>) -> Version {
        let version = self.next_version();
        let entry = Entry { value, version };
        if let Some(existing) = self.records.get_mut(key) {
            *existing = entry;
        } else {
            self.records.insert(key.clone(), entry);
            self.order.insert(key.clone());
        }
        version
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let removed = self.records.remove(key);
        if removed.is_some() {
            self.order.remove(key);
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
        Ok(self.state.read().records.get(key).cloned())
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        let mut state = self.state.write();
        expect.check(key, state.current(key))?;
        Ok(state.insert(key, value.to_vec()))
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        let mut state = self.state.write();
        expect.check(key, state.current(key))?;
        Ok(state.remove(key).is_some())
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        check_limit(limit)?;
        let state = self.state.read();
        let start = match after {
            Some(after) if *after >= Key::bound_of(prefix) => Bound::Excluded(after.clone()),
            _ => Bound::Included(Key::bound_of(prefix)),
        };
        let mut keys: Vec<Key> = state
            .order
            .range((start, Bound::Unbounded))
            .take_while(|k| k.starts_with(prefix))
            .take(limit + 1)
            .cloned()
            .collect();
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
        let applied = batch
            .ops()
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => Applied::Put(state.insert(key, value.clone())),
                Op::Delete { key, .. } => Applied::Deleted(state.remove(key).is_some()),
            })
            .collect();
        Ok(applied)
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
