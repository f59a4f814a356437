//! A `MemStore` that runs a test's function before each operation: to fail
//! writes as an unreachable store would, or to put another actor exactly
//! between two steps of the code under test.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use jobsafe::store::{Applied, ListPage, Quarantined};
use jobsafe::{Batch, Entry, Expect, Key, MemStore, Prefix, Store, Version};

/// An operation of a [`HookedStore`], as its hook sees it before it runs.
#[derive(Debug)]
pub enum StoreOp<'a> {
    Get(&'a Key),
    /// A put, a delete, or one operation of a batch (the hook sees each before
    /// any is applied).
    Write(&'a Key),
    List(&'a Prefix),
    Quarantine(&'a Key),
}

type Hook = Arc<dyn Fn(&StoreOp<'_>) -> jobsafe::Result<()> + Send + Sync>;

#[derive(Default)]
pub struct HookedStore {
    inner: MemStore,
    hook: Mutex<Option<Hook>>,
}

impl fmt::Debug for HookedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedStore").finish_non_exhaustive()
    }
}

impl HookedStore {
    /// Runs `hook` before every operation from now on (replacing any hook set
    /// before); an error it returns fails the operation, which then does
    /// nothing. The hook runs with no lock held: it may use the store.
    pub fn on_op(
        &self,
        hook: impl Fn(&StoreOp<'_>) -> jobsafe::Result<()> + Send + Sync + 'static,
    ) {
        *self.hook.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
    }

    /// Runs `hook` once, just before the first operation that `picks` accepts.
    pub fn once(
        &self,
        picks: impl Fn(&StoreOp<'_>) -> bool + Send + Sync + 'static,
        hook: impl FnOnce() + Send + 'static,
    ) {
        let pending = Mutex::new(Some(hook));
        self.on_op(move |op| {
            if picks(op) {
                let hook = pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                if let Some(hook) = hook {
                    hook();
                }
            }
            Ok(())
        });
    }

    fn before(&self, op: StoreOp<'_>) -> jobsafe::Result<()> {
        let hook = self
            .hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        hook.map_or(Ok(()), |hook| hook(&op))
    }
}

impl Store for HookedStore {
    fn get(&self, key: &Key) -> jobsafe::Result<Option<Entry>> {
        self.before(StoreOp::Get(key))?;
        self.inner.get(key)
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> jobsafe::Result<Version> {
        self.before(StoreOp::Write(key))?;
        self.inner.put(key, value, expect)
    }

    fn delete(&self, key: &Key, expect: Expect) -> jobsafe::Result<bool> {
        self.before(StoreOp::Write(key))?;
        self.inner.delete(key, expect)
    }

    fn list(
        &self,
        prefix: &Prefix,
        after: Option<&Key>,
        limit: usize,
    ) -> jobsafe::Result<ListPage> {
        self.before(StoreOp::List(prefix))?;
        self.inner.list(prefix, after, limit)
    }

    fn apply(&self, batch: &Batch) -> jobsafe::Result<Vec<Applied>> {
        for op in batch.ops() {
            self.before(StoreOp::Write(op.key()))?;
        }
        self.inner.apply(batch)
    }

    fn quarantine(&self, key: &Key) -> jobsafe::Result<Option<Quarantined>> {
        self.before(StoreOp::Quarantine(key))?;
        self.inner.quarantine(key)
    }
}
