//! The records of a `MemStore` and their key order, kept up to date lazily.

use std::collections::{BTreeSet, HashMap};
use std::mem;
use std::ops::Bound;

use crate::error::Result;
use crate::key::Key;
use crate::store::packed::pack;
use crate::store::{Entry, Expect, Version};

/// A stored key as one byte string (see [`pack`]), shared by the hash map and
/// the ordered index: indexing a key twice costs a reference count, not a copy.
pub(super) type Packed = std::sync::Arc<[u8]>;

/// Most keys waiting to be ordered (created, or deleted after they were ordered)
/// before a write orders them itself. Bounds the work one write or one `list`
/// can meet, and how long deleted keys are kept.
const MAX_BACKLOG: usize = 1 << 16;

/// Of the keys settled at once, the share of the ordered set above which the
/// set is rebuilt in one pass rather than inserted into key by key.
const REBUILD_FRACTION: usize = 8;

/// The records, indexed twice: a hash map, the one structure a point operation
/// touches (its cost does not grow with the number of records), and an ordered
/// set of keys for `list`, brought up to date only when it is needed.
///
/// Between two [`settle`](State::settle)s (an epoch), keys created wait in
/// `appeared`, and keys deleted after they were ordered wait in `vanished`.
/// Invariants:
/// - a record created in the current epoch has its key in `appeared`, at its
///   `slot`, and `appeared` holds no other keys;
/// - every other record has its key in `sorted`;
/// - every other key in `sorted` is in `vanished`.
///
/// So after a settle, which moves `appeared` into `sorted` and removes the
/// keys of `vanished` that have no record, `sorted` holds exactly the keys of
/// the records.
#[derive(Debug, Default)]
pub(super) struct State {
    records: HashMap<Packed, Record>,
    sorted: BTreeSet<Packed>,
    appeared: Vec<Packed>,
    /// Some of these keys may have been created again since, and be in
    /// `appeared` too.
    vanished: Vec<Packed>,
    epoch: u64,
    last_version: u64,
}

#[derive(Debug)]
struct Record {
    entry: Entry,
    /// The epoch the record was created in.
    created: u64,
    /// Where its key is in `appeared`, while `created` is the current epoch.
    slot: usize,
}

impl State {
    /// The record at `key`.
    pub(super) fn get(&self, key: &Key) -> Option<&Entry> {
        self.records
            .get(pack(key.segments()).as_slice())
            .map(|record| &record.entry)
    }

    /// The version of the record at `key`.
    pub(super) fn current(&self, key: &Key) -> Option<Version> {
        self.get(key).map(|entry| entry.version)
    }

    /// Stores `value` at `key` if `expect` holds: one hash probe for a key that
    /// exists, two for a new one, whose key also joins `appeared`.
    pub(super) fn put(&mut self, key: &Key, value: Vec<u8>, expect: Expect) -> Result<Version> {
        let packed = pack(key.segments());
        if let Some(record) = self.records.get_mut(packed.as_slice()) {
            expect.check(key, Some(record.entry.version))?;
            self.last_version += 1;
            let version = Version::new(self.last_version);
            record.entry = Entry { value, version };
            return Ok(version);
        }
        expect.check(key, None)?;
        self.last_version += 1;
        let version = Version::new(self.last_version);
        let packed = Packed::from(packed);
        let record = Record {
            entry: Entry { value, version },
            created: self.epoch,
            slot: self.appeared.len(),
        };
        self.appeared.push(Packed::clone(&packed));
        self.records.insert(packed, record);
        self.bound_backlog();
        Ok(version)
    }

    /// Removes the record at `key`: one hash probe, and one more if the key was
    /// created in this epoch and another key takes its place in `appeared`; a
    /// key ordered before joins `vanished`.
    pub(super) fn remove(&mut self, key: &Key) -> Option<Entry> {
        let (packed, record) = self.records.remove_entry(pack(key.segments()).as_slice())?;
        if record.created == self.epoch {
            self.appeared.swap_remove(record.slot);
            if let Some(moved) = self.appeared.get(record.slot)
                && let Some(moved) = self.records.get_mut(moved)
            {
                moved.slot = record.slot;
            }
        } else {
            self.vanished.push(packed);
            self.bound_backlog();
        }
        Some(record.entry)
    }

    /// Whether `sorted` holds exactly the keys of the records.
    pub(super) fn is_settled(&self) -> bool {
        self.appeared.is_empty() && self.vanished.is_empty()
    }

    /// Brings `sorted` up to date with the records, and starts a new epoch.
    ///
    /// Costs one hash probe and one ordered removal per key in `vanished`, and
    /// one ordered insert per key in `appeared`, sorted first so that
    /// consecutive inserts walk neighbouring paths of the tree (or one pass
    /// over the tree to rebuild it, when they are many next to it).
    pub(super) fn settle(&mut self) {
        for packed in mem::take(&mut self.vanished) {
            // A key created again since is still in `sorted`.
            if !self.records.contains_key(&packed) {
                self.sorted.remove(&packed);
            }
        }
        let mut appeared = mem::take(&mut self.appeared);
        appeared.sort_unstable();
        if appeared.len() >= self.sorted.len() / REBUILD_FRACTION {
            let mut new: BTreeSet<Packed> = appeared.into_iter().collect();
            self.sorted.append(&mut new);
        } else {
            self.sorted.extend(appeared);
        }
        // Every record's `created` is now a past epoch.
        self.epoch += 1;
    }

    /// The ordered keys from `start` on. Complete only when
    /// [`is_settled`](State::is_settled).
    pub(super) fn ordered_from(&self, start: Bound<&[u8]>) -> impl Iterator<Item = &[u8]> {
        self.sorted
            .range::<[u8], _>((start, Bound::Unbounded))
            .map(|packed| &**packed)
    }

    /// Settles once the backlog reaches [`MAX_BACKLOG`], so that a store that is
    /// written to but never listed keeps its backlog short.
    fn bound_backlog(&mut self) {
        if self.appeared.len() + self.vanished.len() >= MAX_BACKLOG {
            self.settle();
        }
    }

    /// Checks the invariants of [`State`], and returns whether it is settled
    /// with `sorted` holding exactly the keys of the records.
    #[cfg(test)]
    fn check(&self) -> bool {
        let mut fresh = 0;
        for (packed, record) in &self.records {
            if record.created == self.epoch {
                fresh += 1;
                assert_eq!(self.appeared.get(record.slot), Some(packed));
            } else {
                assert!(self.sorted.contains(packed));
            }
        }
        assert_eq!(fresh, self.appeared.len());
        for packed in &self.sorted {
            assert!(self.records.contains_key(packed) || self.vanished.contains(packed));
        }
        self.is_settled() && self.sorted.len() == self.records.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key::new(["k", name]).unwrap()
    }

    fn listed(state: &State) -> Vec<String> {
        state
            .ordered_from(Bound::Unbounded)
            .map(|k| crate::store::packed::unpack(k).unwrap().name().to_owned())
            .collect()
    }

    fn create(state: &mut State, name: &str) {
        state.put(&key(name), vec![], Expect::Absent).unwrap();
        state.check();
    }

    fn delete(state: &mut State, name: &str) {
        assert!(state.remove(&key(name)).is_some());
        state.check();
    }

    fn settle(state: &mut State) {
        state.settle();
        assert!(state.check());
    }

    #[test]
    fn deleting_a_new_key_gives_its_slot_to_another() {
        let mut state = State::default();
        for name in ["c", "a", "b", "d"] {
            create(&mut state, name);
        }
        // The last key moves into the place of the first deleted, and is then
        // deleted from there.
        delete(&mut state, "c");
        delete(&mut state, "d");
        delete(&mut state, "b");
        create(&mut state, "e");
        create(&mut state, "b");
        settle(&mut state);
        assert_eq!(listed(&state), ["a", "b", "e"]);
        assert!(state.vanished.is_empty());
    }

    #[test]
    fn ordered_keys_deleted_and_created_again_stay_ordered_once() {
        let mut state = State::default();
        for name in ["a", "b"] {
            create(&mut state, name);
        }
        settle(&mut state);
        for _ in 0..2 {
            delete(&mut state, "a");
            create(&mut state, "a");
        }
        delete(&mut state, "b");
        settle(&mut state);
        assert_eq!(listed(&state), ["a"]);
        delete(&mut state, "a");
        create(&mut state, "a");
        delete(&mut state, "a");
        settle(&mut state);
        assert!(listed(&state).is_empty());
    }

    #[test]
    fn settles_both_ways_into_a_large_set() {
        let mut state = State::default();
        for i in 0..100 {
            create(&mut state, &format!("{i:03}"));
        }
        settle(&mut state);
        // Fewer than an eighth of the set: inserted one by one.
        for i in [150, 120, 101] {
            create(&mut state, &format!("{i:03}"));
        }
        delete(&mut state, "050");
        settle(&mut state);
        let names = listed(&state);
        assert_eq!(names.len(), 102);
        assert!(names.is_sorted());
    }

    #[test]
    fn a_full_backlog_is_settled_by_the_write_that_fills_it() {
        let mut state = State::default();
        for i in 0..MAX_BACKLOG {
            state
                .put(&key(&i.to_string()), vec![], Expect::Absent)
                .unwrap();
        }
        assert!(state.check());
        // Deleting ordered keys fills it again.
        for i in 0..MAX_BACKLOG - 1 {
            state.remove(&key(&i.to_string()));
        }
        assert_eq!(state.vanished.len(), MAX_BACKLOG - 1);
        state.remove(&key(&(MAX_BACKLOG - 1).to_string()));
        assert!(state.check());
        assert!(listed(&state).is_empty());
    }
}
