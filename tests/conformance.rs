//! The conformance suite against this crate's backends: one test per clause and
//! backend, so a failure names both.

mod common;

use std::fs;
use std::sync::Arc;

use jobsafe::conformance::{self, Harness};
use jobsafe::vfs::{IoAction, IoStep};
use jobsafe::{DirStore, Key, LogStore, MemStore};
use tempfile::TempDir;

/// Fresh in-memory stores; nothing survives a reopen and nothing can be damaged,
/// so those clauses are skipped.
struct Mem;

impl Harness for Mem {
    type Store = Arc<MemStore>;

    fn fresh(&mut self) -> jobsafe::Result<Arc<MemStore>> {
        Ok(Arc::new(MemStore::new()))
    }

    /// Another handle on an in-process store is another reference to it.
    fn open_another(&mut self, store: &Arc<MemStore>) -> jobsafe::Result<Option<Arc<MemStore>>> {
        Ok(Some(Arc::clone(store)))
    }
}

/// Fresh `DirStore`s, each in its own temporary directory, kept until the
/// harness is dropped.
#[derive(Default)]
struct Dir {
    dirs: Vec<TempDir>,
}

impl Harness for Dir {
    type Store = DirStore;

    fn fresh(&mut self) -> jobsafe::Result<DirStore> {
        let dir = tempfile::tempdir().map_err(|source| jobsafe::Error::Io {
            step: IoStep::new(IoAction::Create, "create temp dir"),
            path: std::env::temp_dir(),
            source,
        })?;
        let store = DirStore::open(dir.path().join("store"))?;
        self.dirs.push(dir);
        Ok(store)
    }

    fn reopen(&mut self, store: DirStore) -> jobsafe::Result<Option<DirStore>> {
        let root = store.root().to_path_buf();
        drop(store);
        DirStore::open(root).map(Some)
    }

    fn open_another(&mut self, store: &DirStore) -> jobsafe::Result<Option<DirStore>> {
        DirStore::open(store.root()).map(Some)
    }

    fn corrupt(&mut self, store: &DirStore, key: &Key) -> jobsafe::Result<bool> {
        let path = store.path_of(key);
        fs::write(&path, b"\x00\x01 not a record").map_err(|source| jobsafe::Error::Io {
            step: IoStep::new(IoAction::Write, "damage record"),
            path: path.clone(),
            source,
        })?;
        Ok(true)
    }
}

/// Fresh `LogStore`s, each in its own temporary directory. A `LogStore` keeps
/// values as opaque bytes in checksummed frames, so there is no single record to
/// damage: damage to a frame is covered by the journal tests
/// (`tests/log_store.rs`), and the per-record corruption clause is skipped.
///
/// With `exclusive`, each store is opened in exclusive mode: another handle is
/// a clone, as nothing else may open it.
#[derive(Default)]
struct Log {
    dirs: Vec<TempDir>,
    exclusive: bool,
}

impl Log {
    fn exclusive() -> Self {
        Log {
            exclusive: true,
            ..Log::default()
        }
    }

    fn open(&self, root: &std::path::Path) -> jobsafe::Result<LogStore> {
        LogStore::builder(root).exclusive(self.exclusive).open()
    }
}

impl Harness for Log {
    type Store = LogStore;

    fn fresh(&mut self) -> jobsafe::Result<LogStore> {
        let dir = tempfile::tempdir().map_err(|source| jobsafe::Error::Io {
            step: IoStep::new(IoAction::Create, "create temp dir"),
            path: std::env::temp_dir(),
            source,
        })?;
        let store = self.open(&dir.path().join("store"))?;
        self.dirs.push(dir);
        Ok(store)
    }

    fn reopen(&mut self, store: LogStore) -> jobsafe::Result<Option<LogStore>> {
        let root = store.root().to_path_buf();
        // An exclusive store is released when its last clone's drop returns.
        drop(store);
        self.open(&root).map(Some)
    }

    fn open_another(&mut self, store: &LogStore) -> jobsafe::Result<Option<LogStore>> {
        if self.exclusive {
            return Ok(Some(store.clone()));
        }
        LogStore::open(store.root()).map(Some)
    }
}

/// Fresh `PgStore`s, each in a schema of its own on the server named by
/// `JOBSAFE_PG_URL`, dropped with the harness. A record is damaged by changing
/// its value behind the store's back, leaving its checksum as it was.
#[cfg(feature = "postgres")]
#[derive(Default)]
struct Pg {
    schemas: common::pg::Schemas,
}

#[cfg(feature = "postgres")]
impl Harness for Pg {
    type Store = jobsafe::PgStore;

    fn fresh(&mut self) -> jobsafe::Result<jobsafe::PgStore> {
        Ok(self.schemas.store())
    }

    fn reopen(&mut self, store: jobsafe::PgStore) -> jobsafe::Result<Option<jobsafe::PgStore>> {
        let schema = common::pg::schema_of(&store);
        drop(store);
        jobsafe::PgStore::builder(&common::pg::url())
            .schema(&schema)
            .open()
            .map(Some)
    }

    fn open_another(
        &mut self,
        store: &jobsafe::PgStore,
    ) -> jobsafe::Result<Option<jobsafe::PgStore>> {
        // Another pool, as another process or machine would have.
        jobsafe::PgStore::builder(&common::pg::url())
            .schema(&common::pg::schema_of(store))
            .open()
            .map(Some)
    }

    fn corrupt(&mut self, store: &jobsafe::PgStore, key: &Key) -> jobsafe::Result<bool> {
        let damaged = common::pg::client().execute(
            &format!(
                "UPDATE {} SET value = 'damaged'::bytea WHERE key = $1",
                store.table()
            ),
            &[&common::pg::packed(key)],
        );
        // A failure here fails the clause, which reports it.
        Ok(damaged.is_ok_and(|rows| rows == 1))
    }
}

/// A store's async face, each call made through `get_async`, `put_async`,
/// ... on a runtime of the harness's and waited for by the calling thread (the
/// clauses call from several threads at once). Quarantine has no async form.
#[derive(Clone, Debug)]
struct ThroughAsync<S> {
    store: S,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl<S: jobsafe::Store + Clone + 'static> jobsafe::Store for ThroughAsync<S> {
    fn get(&self, key: &Key) -> jobsafe::Result<Option<jobsafe::Entry>> {
        self.runtime.block_on(self.store.get_async(key))
    }

    fn put(
        &self,
        key: &Key,
        value: &[u8],
        expect: jobsafe::Expect,
    ) -> jobsafe::Result<jobsafe::Version> {
        self.runtime
            .block_on(self.store.put_async(key, value.to_vec(), expect))
    }

    fn delete(&self, key: &Key, expect: jobsafe::Expect) -> jobsafe::Result<bool> {
        self.runtime.block_on(self.store.delete_async(key, expect))
    }

    fn list(
        &self,
        prefix: &jobsafe::Prefix,
        after: Option<&Key>,
        limit: usize,
    ) -> jobsafe::Result<jobsafe::store::ListPage> {
        self.runtime
            .block_on(self.store.list_async(prefix, after, limit))
    }

    fn apply(&self, batch: &jobsafe::Batch) -> jobsafe::Result<Vec<jobsafe::store::Applied>> {
        self.runtime.block_on(self.store.apply_async(batch.clone()))
    }

    fn quarantine(&self, key: &Key) -> jobsafe::Result<Option<jobsafe::store::Quarantined>> {
        self.store.quarantine(key)
    }
}

/// Another harness's stores, called through their async face.
struct AsyncFace<H> {
    inner: H,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl<H> AsyncFace<H> {
    #[allow(
        clippy::panic,
        reason = "a harness without its runtime cannot run a clause"
    )]
    fn new(inner: H) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("start a runtime: {e}"));
        AsyncFace {
            inner,
            runtime: Arc::new(runtime),
        }
    }

    fn through<S>(&self, store: S) -> ThroughAsync<S> {
        ThroughAsync {
            store,
            runtime: self.runtime.clone(),
        }
    }
}

impl<H> Harness for AsyncFace<H>
where
    H: Harness,
    H::Store: Clone + 'static,
{
    type Store = ThroughAsync<H::Store>;

    fn fresh(&mut self) -> jobsafe::Result<Self::Store> {
        let store = self.inner.fresh()?;
        Ok(self.through(store))
    }

    fn reopen(&mut self, store: Self::Store) -> jobsafe::Result<Option<Self::Store>> {
        let reopened = self.inner.reopen(store.store)?;
        Ok(reopened.map(|store| self.through(store)))
    }

    fn open_another(&mut self, store: &Self::Store) -> jobsafe::Result<Option<Self::Store>> {
        let another = self.inner.open_another(&store.store)?;
        Ok(another.map(|store| self.through(store)))
    }

    fn corrupt(&mut self, store: &Self::Store, key: &Key) -> jobsafe::Result<bool> {
        self.inner.corrupt(&store.store, key)
    }
}

// One test per clause and backend. MemStore keeps nothing across a reopen and
// cannot be damaged; a LogStore has no single record to damage (see `Log`); the
// durable backends must run every other clause.
jobsafe::conformance_suite!(
    mem,
    Mem,
    may_skip: [writes_survive_reopen, corrupt_record_is_reported_never_absent]
);
jobsafe::conformance_suite!(dir, Dir::default(), may_skip: []);
jobsafe::conformance_suite!(
    log,
    Log::default(),
    may_skip: [corrupt_record_is_reported_never_absent]
);
// LogStore's async face: its writes join the group commit as futures.
jobsafe::conformance_suite!(
    log_async,
    AsyncFace::new(Log::default()),
    may_skip: [corrupt_record_is_reported_never_absent]
);
// LogStore in exclusive mode: reads check nothing, and the async face's
// reads are answered inline.
jobsafe::conformance_suite!(
    log_exclusive,
    Log::exclusive(),
    may_skip: [corrupt_record_is_reported_never_absent]
);
jobsafe::conformance_suite!(
    log_exclusive_async,
    AsyncFace::new(Log::exclusive()),
    may_skip: [corrupt_record_is_reported_never_absent]
);
#[cfg(feature = "postgres")]
jobsafe::conformance_suite!(pg, Pg::default(), may_skip: []);
#[cfg(feature = "postgres")]
jobsafe::conformance_suite!(pg_async, AsyncFace::new(Pg::default()), may_skip: []);

#[test]
fn mem_store_skips_only_what_it_cannot_do() {
    let report = conformance::run_all(&mut Mem);
    assert!(report.is_ok(), "{report}");
    let skipped: Vec<&str> = report.skipped().map(|(name, _)| name).collect();
    assert_eq!(
        skipped,
        [
            "writes_survive_reopen",
            "corrupt_record_is_reported_never_absent"
        ]
    );
}
