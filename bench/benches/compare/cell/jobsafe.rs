//! jobsafe's components (`JobLedger`, `JobLock`, `JobState`, the `Store` itself)
//! over each store, durable ones at `Durability::Full` with their flushes
//! counted through jobsafe's I/O layer. Threads share one store through clones
//! of its handle, as the threads of a service would.

use std::path::Path;
use std::sync::Arc;

use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;
use jobsafe::{
    DirStore, Durability, Expect, JobState, Key, LogStore, MemStore, Store, SystemClock,
};

use super::workers;
use super::{Bench, Cell, Impl, Setup, Worker, preload_keys};
use crate::common::jobs;
use crate::common::kv::{self, KvEngine, StoreEngine};
use crate::common::lease::JobLockEngine;
use crate::common::ledger::StoreLedger;
use crate::common::{BenchResult, Syncs, Tally, sync_all};

/// A store opened for a cell: the handle that is timed, and a second one on the
/// same files with relaxed durability for loading records before timing.
struct Opened<S> {
    store: S,
    bulk: Option<S>,
    syncs: Syncs,
    /// Whether the preloaded records are in the store already.
    loaded: bool,
}

pub(super) fn prepare(imp: Impl, setup: Setup, dir: &Path) -> BenchResult<Cell> {
    match (setup.bench, imp) {
        (Bench::ReserveNew | Bench::ReserveDup, Impl::MemStore) => {
            workers::reserve(StoreLedger::mem(dir)?, setup)
        }
        (Bench::ReserveNew | Bench::ReserveDup, Impl::DirStore) => {
            workers::reserve(StoreLedger::dir(dir)?, setup)
        }
        (Bench::ReserveNew | Bench::ReserveDup, _) => {
            workers::reserve(StoreLedger::log(dir)?, setup)
        }
        (_, Impl::MemStore) => with_store(
            Opened {
                store: MemStore::new(),
                bulk: None,
                // Nothing in memory flushes: an empty tally reports so.
                syncs: Syncs::Tally(Tally::default()),
                loaded: false,
            },
            setup,
        ),
        (_, Impl::DirStore) => {
            let vfs = Counting::new(StdVfs);
            let store = DirStore::builder(dir).vfs(vfs.clone()).open()?;
            let bulk = DirStore::builder(dir)
                .vfs(Counting::new(StdVfs))
                .durability(Durability::AtomicOnly)
                .open()?;
            with_store(opened(store, bulk, vfs), setup)
        }
        (_, Impl::LogStoreExclusive) => {
            // Nothing else may open an exclusive store: the records are
            // loaded through a handle of their own, closed first.
            let bulk = LogStore::builder(dir)
                .vfs(Counting::new(StdVfs))
                .durability(Durability::AtomicOnly)
                .exclusive(true)
                .open()?;
            let value = kv::value('p');
            for key in preload_keys(setup.preload) {
                bulk.put(&Key::new(["bench", &key])?, &value, Expect::Absent)?;
            }
            drop(bulk);
            sync_all()?;
            let vfs = Counting::new(StdVfs);
            let store = LogStore::builder(dir)
                .vfs(vfs.clone())
                .exclusive(true)
                .open()?;
            with_store(
                Opened {
                    store,
                    bulk: None,
                    syncs: Syncs::Vfs(vfs),
                    loaded: true,
                },
                setup,
            )
        }
        _ => {
            let vfs = Counting::new(StdVfs);
            let store = LogStore::builder(dir).vfs(vfs.clone()).open()?;
            let bulk = LogStore::builder(dir)
                .vfs(Counting::new(StdVfs))
                .durability(Durability::AtomicOnly)
                .open()?;
            with_store(opened(store, bulk, vfs), setup)
        }
    }
}

/// `store`, whose flushes `vfs` counts, and `bulk` on the same files at
/// `Durability::AtomicOnly`.
fn opened<S>(store: S, bulk: S, vfs: Counting<StdVfs>) -> Opened<S> {
    Opened {
        store,
        bulk: Some(bulk),
        syncs: Syncs::Vfs(vfs),
        loaded: false,
    }
}

/// The lock, lifecycle, put and get cells over one store.
fn with_store<S: Store + Send + Sync + 'static>(
    opened: Opened<S>,
    setup: Setup,
) -> BenchResult<Cell> {
    let Opened {
        store,
        bulk,
        syncs,
        loaded,
    } = opened;
    let store = Arc::new(store);
    let keys = match setup.bench {
        Bench::LockCycle => Vec::new(),
        _ => preload_keys(setup.preload),
    };
    let value = kv::value('p');
    let loader = bulk
        .as_ref()
        .map_or(&*store as &dyn Store, |b| b as &dyn Store);
    for key in keys.iter().filter(|_| !loaded) {
        loader.put(&Key::new(["bench", key])?, &value, Expect::Absent)?;
    }
    if bulk.is_some() {
        drop(bulk);
        sync_all()?;
    }
    let threads = setup.threads;
    match setup.bench {
        Bench::LockCycle => {
            let engines = (0..threads)
                .map(|_| JobLockEngine::new(Arc::clone(&store), syncs.clone()))
                .collect();
            workers::lock(engines, syncs)
        }
        Bench::Lifecycle => {
            let state = JobState::new(Arc::clone(&store), Arc::new(SystemClock));
            // Untimed: creates what the first job creates (DirStore's directories).
            jobs::lifecycle(&state, 0)?;
            let workers = (0..threads)
                .map(|_| {
                    let state = state.clone();
                    Box::new(move |i: u64| jobs::lifecycle(&state, i)) as Worker
                })
                .collect();
            Ok(Cell { workers, syncs })
        }
        _ => {
            let engines = (0..threads)
                .map(|_| {
                    Box::new(StoreEngine::new(Arc::clone(&store), syncs.clone()))
                        as Box<dyn KvEngine + Send>
                })
                .collect();
            workers::kv(engines, syncs, setup, keys)
        }
    }
}
