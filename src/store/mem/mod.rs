//! The in-process store.

mod state;

use std::ops::Bound;

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use self::state::State;
use crate::error::Result;
use crate::key::{Key, Prefix};
use crate::store::packed::{is_under, pack, unpack};
use crate::store::{
    Applied, Batch, BatchOp, Entry, Expect, ListPage, Quarantined, Store, Version, check_limit,
};
use crate::trace;

/// A [`Store`] in process memory: for tests, and for services that need no
/// durability. Everything is lost when the process exits.
///
/// All operations take one lock, so each is atomic and linearizable within the
/// process. Versions come from one counter for the whole store, so they are never
/// reused, even for a key deleted and created again.
///
/// # Costs
///
/// Records live in a hash map, and `get`, `put` and `delete` touch nothing else
/// but a short backlog: their cost does not grow with the number of records.
/// The key order `list` needs is kept in an ordered set brought up to date
/// lazily: keys created since it was last brought up to date wait in the
/// backlog in no order (a key deleted before then simply leaves it), and so do
/// ordered keys deleted since. The next `list`, or the write that fills the
/// backlog to 65,536 keys, orders them under the write lock: it sorts the new
/// keys and inserts them into the set (`O(log n)` each, in `n` records), and
/// removes the deleted ones. So a key that lasts until a listing costs one
/// ordered insert and one ordered removal, as in an eagerly ordered store, but
/// paid by the listing, in key order; a key created and deleted between two
/// listings costs none. The price comes in bursts: a `list` after many
/// creations (or the write that fills the backlog) waits for up to 65,536 keys
/// to be ordered, some milliseconds.
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
        trace::store_call(trace::Backend::MEM, "get", key, || {
            Ok(self.state.read().get(key).cloned())
        })
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        trace::store_call(trace::Backend::MEM, "put", key, || {
            Entry::check_value(key, value)?;
            self.state.write().put(key, value.to_vec(), expect)
        })
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        trace::store_call(trace::Backend::MEM, "delete", key, || {
            let mut state = self.state.write();
            expect.check(key, state.current(key))?;
            Ok(state.remove(key).is_some())
        })
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        trace::store_call(trace::Backend::MEM, "list", prefix, || {
            check_limit(limit)?;
            let mut state = self.state.read();
            if !state.is_settled() {
                drop(state);
                let mut settling = self.state.write();
                settling.settle();
                // Downgrading lets no writer in: the page is read from the settled state.
                state = RwLockWriteGuard::downgrade(settling);
            }
            let prefix = pack(prefix.segments());
            let after = after.map(|after| pack(after.segments()));
            let start = match &after {
                Some(after) if *after >= prefix => Bound::Excluded(after.as_slice()),
                _ => Bound::Included(prefix.as_slice()),
            };
            let mut keys = Vec::new();
            for packed in state.ordered_from(start) {
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
        })
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        trace::store_call(trace::Backend::MEM, "apply", batch, || {
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
                    BatchOp::Put { key, value, .. } => {
                        state.put(key, value.clone(), Expect::Any).map(Applied::Put)
                    }
                    BatchOp::Delete { key, .. } => {
                        Ok(Applied::Deleted(state.remove(key).is_some()))
                    }
                })
                .collect()
        })
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        trace::store_call(trace::Backend::MEM, "quarantine", key, || {
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
        })
    }

    /// `true`: only this process reaches it.
    fn is_machine_local(&self) -> bool {
        true
    }
}
