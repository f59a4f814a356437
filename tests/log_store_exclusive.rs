//! `LogStore`'s exclusive mode: one handle has the store to itself. Other
//! opens, in this process or another, fail at once with `Error::StoreInUse`
//! while it lives and succeed once it is gone (dropped, or its process
//! killed); its reads of cached values make no system call, its commits take
//! no lock, and its async reads of cached values complete without the pool. The `Store` contract is checked by
//! `tests/conformance.rs` (`log_exclusive`) and crashes by
//! `tests/power_loss.rs` (`log_store_exclusive`).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;

use common::child::{self, Child};
use common::key;
use jobsafe::testing::{Counting, OpCounts};
use jobsafe::vfs::StdVfs;
use jobsafe::{Error, Expect, LogStore, Prefix, Store};

fn exclusive(root: &Path) -> jobsafe::Result<LogStore> {
    LogStore::builder(root).exclusive(true).open()
}

/// `err` is the refusal of an open of the store at `root`: it names the store
/// and says why.
fn assert_in_use(err: &Error, root: &Path, exclusive: bool) {
    assert!(err.is_store_in_use(), "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(
        matches!(err, Error::StoreInUse { path, exclusive: e } if *e == exclusive && path == &root.canonicalize().unwrap()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&root.canonicalize().unwrap().display().to_string()),
        "{message}"
    );
    let words = if exclusive {
        "is open in another handle"
    } else {
        "is held exclusively by another handle"
    };
    assert!(message.contains(words), "{message}");
}

#[test]
fn other_opens_fail_at_once_until_every_clone_of_the_exclusive_handle_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = exclusive(&root).unwrap();
    store.put(&key("k/1"), b"one", Expect::Absent).unwrap();
    let clone = store.clone();

    assert_in_use(&LogStore::open(&root).unwrap_err(), &root, false);
    assert_in_use(&exclusive(&root).unwrap_err(), &root, true);
    drop(store);
    // A clone keeps the store.
    assert_in_use(&LogStore::open(&root).unwrap_err(), &root, false);
    clone.put(&key("k/2"), b"two", Expect::Absent).unwrap();
    drop(clone);

    let store = LogStore::open(&root).unwrap();
    assert_eq!(store.get(&key("k/1")).unwrap().unwrap().value, b"one");
    assert_eq!(store.get(&key("k/2")).unwrap().unwrap().value, b"two");
    drop(store);
    let store = exclusive(&root).unwrap();
    assert_eq!(
        store.list_all(&Prefix::new(["k"]).unwrap()).unwrap().len(),
        2
    );
}

#[test]
fn an_exclusive_open_fails_while_a_shared_handle_is_open_and_shared_ones_share() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let first = LogStore::open(&root).unwrap();
    assert_in_use(&exclusive(&root).unwrap_err(), &root, true);
    // Shared handles do not keep each other out.
    let second = LogStore::open(&root).unwrap();
    second.put(&key("k/1"), b"one", Expect::Absent).unwrap();
    assert_eq!(first.get(&key("k/1")).unwrap().unwrap().value, b"one");
    drop(first);
    assert_in_use(&exclusive(&root).unwrap_err(), &root, true);
    drop(second);
    let store = exclusive(&root).unwrap();
    assert_eq!(store.get(&key("k/1")).unwrap().unwrap().value, b"one");
}

/// A shared open that meets another shared handle's commit (the `lock` file
/// flocked) waits for it, as before exclusive mode existed: it does not take
/// that commit for an exclusive handle.
#[test]
fn a_shared_open_waits_for_a_commit_rather_than_failing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    drop(LogStore::open(&root).unwrap());
    let lock = std::fs::File::open(root.join("lock")).unwrap();
    lock.lock().unwrap();
    let opening = std::thread::spawn({
        let root = root.clone();
        move || LogStore::open(&root).map(drop)
    });
    // However far the open got, it waits (or has yet to start); it opens once
    // the flock is released.
    lock.unlock().unwrap();
    opening.join().unwrap().unwrap();
}

#[test]
fn a_child_process_cannot_open_the_store_while_an_exclusive_handle_lives() {
    let test = "a_child_process_cannot_open_the_store_while_an_exclusive_handle_lives";
    if child::role().as_deref() == Some("opener") {
        let root = child::store_root();
        for exclusive in [false, true] {
            let opened = LogStore::builder(&root).exclusive(exclusive).open();
            match opened {
                Err(Error::StoreInUse { exclusive: e, .. }) if e == exclusive => {
                    child::report("in use");
                }
                Err(e) => child::report(&format!("error {e}")),
                Ok(_) => child::report("opened"),
            }
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = exclusive(&root).unwrap();
    let reports = Child::spawn(test, "opener", &child::store_vars(&root)).finish();
    assert_eq!(reports, ["in use", "in use"]);
    drop(store);
    let reports = Child::spawn(test, "opener", &child::store_vars(&root)).finish();
    assert_eq!(reports, ["opened", "opened"]);
}

/// The kernel releases a killed process's flocks: the store opens after the
/// process holding it exclusively died, with what it acknowledged.
#[test]
fn the_store_opens_after_the_process_holding_it_exclusively_is_killed() {
    let test = "the_store_opens_after_the_process_holding_it_exclusively_is_killed";
    if child::role().as_deref() == Some("holder") {
        let store = exclusive(&child::store_root()).unwrap();
        store
            .put(&key("k/1"), b"acknowledged", Expect::Absent)
            .unwrap();
        child::report("held");
        // Until killed.
        while child::receive().is_some() {}
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut holder = Child::spawn(test, "holder", &child::store_vars(&root));
    assert_eq!(holder.expect_report(), "held");
    assert_in_use(&LogStore::open(&root).unwrap_err(), &root, false);
    holder.kill();
    let store = exclusive(&root).unwrap();
    assert_eq!(
        store.get(&key("k/1")).unwrap().unwrap().value,
        b"acknowledged"
    );
}

/// What `work` cost in operations through `vfs`.
fn cost(vfs: &Counting<StdVfs>, work: impl FnOnce()) -> OpCounts {
    let before = vfs.counts();
    work();
    let after = vfs.counts();
    let mut cost = OpCounts::default();
    cost.reads = after.reads - before.reads;
    cost.stats = after.stats - before.stats;
    cost.locks = after.locks - before.locks;
    cost.writes = after.writes - before.writes;
    cost.file_syncs = after.file_syncs - before.file_syncs;
    cost
}

const READS: usize = 100;

fn counted(root: &Path, exclusive: bool) -> (LogStore<Counting<StdVfs>>, Counting<StdVfs>) {
    let vfs = Counting::new(StdVfs);
    let store = LogStore::builder(root)
        .vfs(vfs.clone())
        .exclusive(exclusive)
        .no_background_compaction()
        .open()
        .unwrap();
    for i in 0..10 {
        let k = key(&format!("k/{i}"));
        store.put(&k, b"value", Expect::Absent).unwrap();
    }
    (store, vfs)
}

fn read_a_lot(store: &LogStore<Counting<StdVfs>>) {
    let prefix = Prefix::new(["k"]).unwrap();
    for i in 0..READS {
        let k = key(&format!("k/{}", i % 10));
        assert_eq!(store.get(&k).unwrap().unwrap().value, b"value");
        assert_eq!(store.list(&prefix, None, 5).unwrap().keys.len(), 5);
        assert_eq!(store.stats().unwrap().records, 10);
    }
}

/// The values were just written, so they are in the cache.
#[test]
fn exclusive_reads_make_no_system_call_where_shared_ones_check_for_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vfs) = counted(&dir.path().join("exclusive"), true);
    let reads = cost(&vfs, || read_a_lot(&store));
    assert_eq!(reads, OpCounts::default(), "exclusive reads: {reads:?}");

    // The same reads of a shared handle check the journal each time, with
    // one positioned read where the next frame would start and no `statx`:
    // the counters see what exclusive mode saves.
    let (store, vfs) = counted(&dir.path().join("shared"), false);
    let reads = cost(&vfs, || read_a_lot(&store));
    let checks = 3 * READS as u64;
    assert_eq!(
        (reads.reads, reads.stats, reads.locks),
        (checks, 0, 0),
        "shared reads: {reads:?}"
    );
}

#[test]
fn exclusive_commits_take_no_lock_and_read_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    for exclusive in [true, false] {
        let (store, vfs) = counted(&dir.path().join(exclusive.to_string()), exclusive);
        let writes = cost(&vfs, || {
            for i in 0..READS {
                store
                    .put(&key(&format!("w/{i}")), b"v", Expect::Absent)
                    .unwrap();
            }
        });
        assert_eq!(writes.writes, READS as u64, "{writes:?}");
        assert_eq!(writes.file_syncs, READS as u64, "{writes:?}");
        if exclusive {
            assert_eq!(
                (writes.locks, writes.stats, writes.reads),
                (0, 0, 0),
                "{writes:?}"
            );
        } else {
            assert_eq!(writes.locks, READS as u64, "{writes:?}");
            assert!(writes.stats >= READS as u64, "{writes:?}");
        }
        // A compaction takes only the compaction lock.
        let compaction = cost(&vfs, || {
            store.compact().unwrap();
        });
        assert_eq!(
            compaction.locks,
            if exclusive { 1 } else { 3 },
            "{compaction:?}"
        );
        store.put(&key("w/after"), b"v", Expect::Absent).unwrap();
        drop(store);
        let store = LogStore::open(dir.path().join(exclusive.to_string())).unwrap();
        assert_eq!(store.stats().unwrap().records, 10 + READS + 1);
    }
}

/// Polls `future` once, with a waker that does nothing: `Some` if it was
/// ready at once.
#[cfg(feature = "async")]
fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// An async read of an exclusive handle, of a value in the cache or of an
/// absent key, is answered from memory by the first poll: it never waits for
/// a thread of the pool (whose answer would come to a later poll, through the
/// waker), and needs no runtime.
#[cfg(feature = "async")]
#[test]
fn exclusive_async_reads_are_ready_at_the_first_poll() {
    let dir = tempfile::tempdir().unwrap();
    let store = exclusive(&dir.path().join("store")).unwrap();
    store.put(&key("k/1"), b"one", Expect::Absent).unwrap();
    let prefix = Prefix::new(["k"]).unwrap();
    for _ in 0..READS {
        let got = poll_once(store.get_async(&key("k/1"))).expect("ready at once");
        assert_eq!(got.unwrap().unwrap().value, b"one");
        assert!(
            poll_once(store.get_async(&key("k/2")))
                .expect("ready at once")
                .unwrap()
                .is_none()
        );
        let page = poll_once(store.list_async(&prefix, None, 10)).expect("ready at once");
        assert_eq!(page.unwrap().keys, [key("k/1")]);
    }
    // Errors come inline too.
    let err = poll_once(store.list_async(&prefix, None, 0))
        .expect("ready at once")
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

/// Without the cache, a read costs one positioned read of the journal, and
/// a shared handle's one more to check for other writers; an absent key none
/// beyond that check.
#[test]
fn a_value_not_in_the_cache_costs_one_positioned_read() {
    let dir = tempfile::tempdir().unwrap();
    for exclusive in [true, false] {
        let vfs = Counting::new(StdVfs);
        let store = LogStore::builder(dir.path().join(exclusive.to_string()))
            .vfs(vfs.clone())
            .exclusive(exclusive)
            .value_cache(0)
            .open()
            .unwrap();
        for i in 0..10 {
            let k = key(&format!("k/{i}"));
            store.put(&k, b"value", Expect::Absent).unwrap();
        }
        let reads = cost(&vfs, || {
            for i in 0..READS {
                let k = key(&format!("k/{}", i % 10));
                assert_eq!(store.get(&k).unwrap().unwrap().value, b"value");
                assert!(store.get(&key("absent/1")).unwrap().is_none());
            }
        });
        let checks = if exclusive { 0 } else { 2 * READS as u64 };
        assert_eq!(
            (reads.reads, reads.stats, reads.locks),
            (READS as u64 + checks, 0, 0),
            "exclusive {exclusive}: {reads:?}"
        );
    }
}

/// An async read of a value the cache does not hold goes to the pool, even
/// in exclusive mode: it is file I/O.
#[cfg(feature = "async")]
#[test]
fn an_exclusive_async_read_of_a_value_not_cached_goes_to_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path().join("store"))
        .exclusive(true)
        .value_cache(0)
        .open()
        .unwrap();
    store.put(&key("k/1"), b"one", Expect::Absent).unwrap();
    assert!(poll_once(store.get_async(&key("k/1"))).is_none());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let got = runtime.block_on(store.get_async(&key("k/1")));
    assert_eq!(got.unwrap().unwrap().value, b"one");
    assert!(
        poll_once(store.get_async(&key("k/2")))
            .expect("an absent key is answered at once")
            .unwrap()
            .is_none()
    );
}

/// The flocks an exclusive handle holds for its lifetime outlive its
/// commits, reads and compactions: none of them takes or releases a flock on
/// the `lock` file, which would release the lifetime lock with it.
#[test]
fn the_lifetime_locks_outlive_commits_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = exclusive(&root).unwrap();
    let held_elsewhere = |name: &str| {
        let file = std::fs::File::open(root.join(name)).unwrap();
        matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    };
    for i in 0..3 {
        store
            .put(&key(&format!("k/{i}")), b"v", Expect::Any)
            .unwrap();
        store.delete(&key("k/0"), Expect::Any).unwrap();
        store.get(&key("k/1")).unwrap();
        store.stats().unwrap();
        store.compact().unwrap();
        assert!(held_elsewhere("lock"), "after round {i}");
        assert!(held_elsewhere("handle.lock"), "after round {i}");
    }
    drop(store);
    assert!(!held_elsewhere("lock"));
    assert!(!held_elsewhere("handle.lock"));
}

/// Dropping the last clone waits for what the handle runs on other threads
/// (the pool thread leading its async writes' group commit, a background
/// compaction): once it returns, the store opens again, every time.
#[cfg(feature = "async")]
#[test]
fn the_store_is_free_once_the_last_clone_is_dropped_after_async_writes_and_compactions() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut compactions = 0;
    for round in 0..30u8 {
        let store = LogStore::builder(&root)
            .exclusive(true)
            // Small enough that the rounds' overwrites start compactions.
            .compact_when(8 << 10, 0.1)
            .open()
            .unwrap();
        compactions += store.stats().unwrap().generation;
        let keys: Vec<_> = (0..16).map(|i| key(&format!("k/{i}"))).collect();
        let writes: Vec<_> = keys
            .iter()
            .map(|k| store.put_async(k, vec![round; 512], Expect::Any))
            .collect();
        rt.block_on(async {
            let tasks: Vec<_> = writes.into_iter().map(tokio::spawn).collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
        });
        drop(store);
        let reopened = exclusive(&root).unwrap();
        assert_eq!(
            reopened.get(&key("k/15")).unwrap().unwrap().value,
            vec![round; 512]
        );
    }
    assert!(compactions > 0, "no round started a compaction");
}
