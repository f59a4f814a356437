//! A `MemStore` whose operations, counted in order (reads and writes alike,
//! lists and quarantines aside), pass or fail as a test's script says: for the
//! sequences where one particular read fails after a write whose reply was
//! lost.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use jobsafe::store::{Applied, ListPage, Quarantined};
use jobsafe::{Batch, Entry, Expect, Key, MemStore, Prefix, Store, Version};

use super::ambiguous_store::unreachable;

/// What the store does with one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Pass,
    /// Applied, then failed transiently: the reply lost.
    CommitThenFail,
    /// Failed transiently, nothing applied.
    Fail,
}

#[derive(Debug)]
pub struct ScriptedStore {
    inner: MemStore,
    ops: AtomicUsize,
    script: Vec<(usize, Act)>,
    /// Each operation as it ran: its number, what it was, and what was done.
    pub log: Mutex<Vec<String>>,
}

impl ScriptedStore {
    /// A store doing `act` with the `n`-th operation (from 0) for each
    /// `(n, act)` of `script`, and passing the others.
    pub fn new(script: Vec<(usize, Act)>) -> Self {
        ScriptedStore {
            inner: MemStore::new(),
            ops: AtomicUsize::new(0),
            script,
            log: Mutex::new(Vec::new()),
        }
    }

    /// The store underneath, to look at what really is there.
    pub fn inner(&self) -> &MemStore {
        &self.inner
    }

    fn run<T>(&self, what: &str, op: impl FnOnce() -> jobsafe::Result<T>) -> jobsafe::Result<T> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        let act = self
            .script
            .iter()
            .find(|(at, _)| *at == n)
            .map_or(Act::Pass, |(_, act)| *act);
        self.log.lock().push(format!("#{n} {what}: {act:?}"));
        match act {
            Act::Pass => op(),
            Act::Fail => Err(unreachable(what)),
            Act::CommitThenFail => {
                let _ = op();
                Err(unreachable(what))
            }
        }
    }
}

impl Store for ScriptedStore {
    fn get(&self, key: &Key) -> jobsafe::Result<Option<Entry>> {
        self.run(&format!("get {key}"), || self.inner.get(key))
    }
    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> jobsafe::Result<Version> {
        self.run(&format!("put {key}"), || self.inner.put(key, value, expect))
    }
    fn delete(&self, key: &Key, expect: Expect) -> jobsafe::Result<bool> {
        self.run(&format!("delete {key}"), || self.inner.delete(key, expect))
    }
    fn list(
        &self,
        prefix: &Prefix,
        after: Option<&Key>,
        limit: usize,
    ) -> jobsafe::Result<ListPage> {
        self.inner.list(prefix, after, limit)
    }
    fn apply(&self, batch: &Batch) -> jobsafe::Result<Vec<Applied>> {
        self.run("apply", || self.inner.apply(batch))
    }
    fn quarantine(&self, key: &Key) -> jobsafe::Result<Option<Quarantined>> {
        self.inner.quarantine(key)
    }
}
