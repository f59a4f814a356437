//! A wrapper around any store that fails writes the way an unreachable store
//! does: after committing them (the reply lost), before committing them (the
//! request lost), or after committing them while reads fail too (the store
//! gone for longer than the caller waits). For the tests of how the managers
//! learn their own write's outcome.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use jobsafe::store::{Applied, ListPage, Quarantined};
use jobsafe::vfs::{IoAction, IoStep};
use jobsafe::{
    Batch, DirStore, Entry, Error, Expect, Key, LogStore, ManualClock, MemStore, Prefix,
    SharedClock, Store, Version,
};

/// How the next writes fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The write is applied, then the call fails transiently.
    CommitThenFail,
    /// The call fails transiently and nothing is applied.
    FailWithoutCommit,
    /// The write is applied, the call fails transiently, and every read from
    /// then on fails transiently too, until [`AmbiguousStore::heal`].
    CommitThenFailAndReadsFail,
}

impl Fault {
    pub const ALL: [Fault; 3] = [
        Fault::CommitThenFail,
        Fault::FailWithoutCommit,
        Fault::CommitThenFailAndReadsFail,
    ];
}

#[derive(Debug, Default)]
struct Plan {
    /// The fault, and how many writes it still applies to.
    fault: Option<(Fault, usize)>,
    /// Writes to let through before the fault applies.
    skip: usize,
    reads_fail: bool,
    /// Writes failed so far.
    injected: usize,
}

/// The wrapper. Cloning shares the plan and the store.
#[derive(Clone, Debug)]
pub struct AmbiguousStore {
    inner: Arc<dyn Store>,
    plan: Arc<Mutex<Plan>>,
}

/// The error the wrapper fails with: a reset connection, which is transient.
pub fn unreachable(what: &str) -> Error {
    Error::Io {
        step: IoStep::new(IoAction::Write, "send to the store"),
        path: what.into(),
        source: io::Error::from(io::ErrorKind::ConnectionReset),
    }
}

impl AmbiguousStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        AmbiguousStore {
            inner,
            plan: Arc::new(Mutex::new(Plan::default())),
        }
    }

    /// The store underneath, to look at what really is there.
    pub fn inner(&self) -> &dyn Store {
        &*self.inner
    }

    /// Fails the next `count` writes with `fault`, after letting `skip`
    /// writes through. A `FailWithoutCommit` with a large count fails every
    /// write until [`heal`](AmbiguousStore::heal).
    pub fn fail_writes(&self, fault: Fault, skip: usize, count: usize) {
        let mut plan = self.plan.lock();
        plan.fault = Some((fault, count));
        plan.skip = skip;
    }

    /// No more faults: writes and reads go through.
    pub fn heal(&self) {
        let mut plan = self.plan.lock();
        plan.fault = None;
        plan.reads_fail = false;
    }

    /// How many writes were failed so far.
    pub fn injected(&self) -> usize {
        self.plan.lock().injected
    }

    /// The fault for the write about to be made, if it gets one.
    fn fault_for_write(&self) -> Option<Fault> {
        let mut plan = self.plan.lock();
        let (fault, left) = plan.fault?;
        if plan.skip > 0 {
            plan.skip -= 1;
            return None;
        }
        plan.fault = (left > 1).then_some((fault, left - 1));
        plan.injected += 1;
        if fault == Fault::CommitThenFailAndReadsFail {
            plan.reads_fail = true;
        }
        Some(fault)
    }

    fn read_gate(&self, what: &str) -> jobsafe::Result<()> {
        if self.plan.lock().reads_fail {
            return Err(unreachable(what));
        }
        Ok(())
    }

    /// Runs `write` as the plan says.
    fn write<T>(
        &self,
        what: &str,
        write: impl FnOnce() -> jobsafe::Result<T>,
    ) -> jobsafe::Result<T> {
        match self.fault_for_write() {
            None => write(),
            Some(Fault::FailWithoutCommit) => Err(unreachable(what)),
            Some(_) => {
                // Applied; only the answer is lost (a refused precondition
                // included: the caller cannot tell either).
                let _ = write();
                Err(unreachable(what))
            }
        }
    }
}

impl Store for AmbiguousStore {
    fn get(&self, key: &Key) -> jobsafe::Result<Option<Entry>> {
        self.read_gate(&key.to_string())?;
        self.inner.get(key)
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> jobsafe::Result<Version> {
        self.write(&key.to_string(), || self.inner.put(key, value, expect))
    }

    fn delete(&self, key: &Key, expect: Expect) -> jobsafe::Result<bool> {
        self.write(&key.to_string(), || self.inner.delete(key, expect))
    }

    fn list(
        &self,
        prefix: &Prefix,
        after: Option<&Key>,
        limit: usize,
    ) -> jobsafe::Result<ListPage> {
        self.read_gate(&prefix.to_string())?;
        self.inner.list(prefix, after, limit)
    }

    fn apply(&self, batch: &Batch) -> jobsafe::Result<Vec<Applied>> {
        let what = batch
            .ops()
            .first()
            .map_or_else(String::new, |op| op.key().to_string());
        self.write(&what, || self.inner.apply(batch))
    }

    fn quarantine(&self, key: &Key) -> jobsafe::Result<Option<Quarantined>> {
        self.inner.quarantine(key)
    }

    fn is_machine_local(&self) -> bool {
        self.inner.is_machine_local()
    }
}

pub const START_MS: u64 = 1_700_000_000_000;
/// The managers' `resolve_within` in these tests.
pub const RESOLVE_WITHIN: Duration = Duration::from_secs(5);
/// Writes failed "for ever": more than any manager tries.
pub const EVERY_WRITE: usize = 1_000;

/// A store of one backend behind the fault wrapper, with the clock of the
/// managers over it and whatever keeps the store alive.
pub struct Bench {
    pub name: &'static str,
    pub store: AmbiguousStore,
    pub clock: ManualClock,
    _keep: Box<dyn std::any::Any>,
}

impl Bench {
    pub fn new(name: &'static str, store: Arc<dyn Store>, keep: Box<dyn std::any::Any>) -> Bench {
        let clock = ManualClock::new(START_MS);
        // Re-reads sleep between tries: let those sleeps pass at once.
        clock.set_auto_advance(true);
        Bench {
            name,
            store: AmbiguousStore::new(store),
            clock,
            _keep: keep,
        }
    }

    pub fn shared_clock(&self) -> SharedClock {
        Arc::new(self.clock.clone())
    }
}

pub fn on_mem() -> Bench {
    Bench::new("mem", Arc::new(MemStore::new()), Box::new(()))
}

pub fn on_dir() -> Bench {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let store =
        DirStore::open(dir.path().join("store")).unwrap_or_else(|e| panic!("open a DirStore: {e}"));
    Bench::new("dir", Arc::new(store), Box::new(dir))
}

pub fn on_log() -> Bench {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let store =
        LogStore::open(dir.path().join("store")).unwrap_or_else(|e| panic!("open a LogStore: {e}"));
    Bench::new("log", Arc::new(store), Box::new(dir))
}

#[cfg(feature = "postgres")]
pub fn on_pg() -> Bench {
    let mut schemas = super::pg::Schemas::default();
    let store = schemas.store();
    Bench::new("pg", Arc::new(store), Box::new(schemas))
}
