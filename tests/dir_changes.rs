//! `DirStore` tells of other writers' changes (`Store::changes_by_others`):
//! another process's puts, deletes and batches under a watched prefix wake
//! the watcher, including the first write that creates the prefix's
//! directory, the writes after an emptied directory was removed, the writes
//! in directories that existed before the watch, and a batch another
//! handle left pending that this handle completes; the handle's own writes
//! and writes outside the prefix do not.
//!
//! Counts are read at fences: a handle writes `fence/x`, which a watch of
//! `fence` of the watching handle hears of. Its thread reads the kernel's
//! reports in order and tells each batch of them at once, the other watches
//! before the fence's (watched first), so once the fence's watch is told,
//! every watch's count includes every change made before the fence.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::child::{self, Child};
use common::{key, told_after};
use jobsafe::store::Changes;
use jobsafe::testing::{Fault, Faulty, OpKind};
use jobsafe::vfs::StdVfs;
use jobsafe::{Batch, DirStore, Error, Expect, Prefix, Store};

const TEST: &str = "writes_of_another_process_are_told_to_watchers";

fn watch(store: &DirStore, prefix: &[&str]) -> Changes {
    store
        .changes_by_others(&Prefix::new(prefix.iter().copied()).unwrap())
        .expect("a DirStore tells on Linux")
}

/// The fence of a watching handle (see the module docs).
struct Fence {
    heard: Changes,
    writer: DirStore,
}

impl Fence {
    /// Watches `fence` on `watching` (after its other watches), and makes
    /// its directory, so that a fence tells nobody else.
    fn of(watching: &DirStore) -> Fence {
        let fence = Fence {
            heard: watch(watching, &["fence"]),
            writer: DirStore::open(watching.root()).unwrap(),
        };
        fence.pass();
        fence
    }

    /// Returns once every change made before it was told.
    fn pass(&self) {
        let seen = self.heard.seen();
        self.writer
            .put(&key("fence/x"), b"{}", Expect::Any)
            .unwrap();
        told_after(&self.heard, seen);
    }
}

/// A child writes what the parent asks, one line at a time.
fn write_in_child() {
    let store = DirStore::open(child::store_root()).unwrap();
    while let Some(line) = child::receive() {
        let (op, name) = line.split_once(' ').unwrap();
        match op {
            "put" => {
                store.put(&key(name), b"{}", Expect::Any).unwrap();
            }
            "delete" => {
                store.delete(&key(name), Expect::Any).unwrap();
            }
            "batch" => {
                let (a, b) = name.split_once(' ').unwrap();
                let batch = Batch::new().put(&key(a), b"{}".to_vec(), Expect::Any).put(
                    &key(b),
                    b"{}".to_vec(),
                    Expect::Any,
                );
                store.apply(&batch).unwrap();
            }
            _ => panic!("unknown request {line}"),
        }
        child::report("done");
    }
}

#[test]
fn writes_of_another_process_are_told_to_watchers() {
    if child::role().as_deref() == Some("writer") {
        return write_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let service = DirStore::open(&root).unwrap();
    // Watched before the prefix's directory exists.
    let changes = watch(&service, &["ns", "job"]);
    let fence = Fence::of(&service);
    let mut writer = Child::spawn(TEST, "writer", &child::store_vars(&root));
    let mut ask = |line: &str| {
        writer.send(line);
        assert_eq!(writer.expect_report(), "done");
    };
    for request in [
        // Creates `ns.d` and `job.d` on the way.
        "put ns/job/1",
        "put ns/job/2",
        "put ns/job/1",
        "delete ns/job/2",
        // A batch whose only record under the prefix is its second.
        "batch ns/open/3 ns/job/3",
        // A deeper key makes a directory below the prefix's.
        "put ns/job/4/event",
        "put ns/job/4/event",
        // Emptied: `job.d` is removed, then made again.
        "delete ns/job/1",
        "delete ns/job/3",
        "delete ns/job/4/event",
        "put ns/job/5",
    ] {
        let seen = changes.seen();
        ask(request);
        fence.pass();
        assert!(changes.seen() > seen, "`{request}` was not told");
    }

    // Writes outside the prefix, and the handle's own writes under it.
    let seen = changes.seen();
    for n in 0..10 {
        ask(&format!("put ns/open/{n}"));
        ask(&format!("put ns/lock/{n}"));
        service
            .put(&key(&format!("ns/job/own-{n}")), b"{}", Expect::Any)
            .unwrap();
    }
    fence.pass();
    assert_eq!(
        changes.seen(),
        seen,
        "nothing concerning the watch was told"
    );
    ask("put ns/job/6");
    fence.pass();
    assert_eq!(changes.seen(), seen + 1);
    drop(writer);
}

/// A watch of one key (a job's) is told of that key only; a watch of the
/// records' directory of all of them; a watch of everything of anything.
#[test]
fn each_watch_is_told_of_the_keys_under_its_own_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let service = DirStore::open(&root).unwrap();
    let other = DirStore::open(&root).unwrap();
    other.put(&key("ns/job/1"), b"{}", Expect::Any).unwrap();
    let jobs = watch(&service, &["ns", "job"]);
    let seven = watch(&service, &["ns", "job", "7"]);
    let everything = service.changes_by_others(&Prefix::all()).unwrap();
    let fence = Fence::of(&service);
    let counts = || (jobs.seen(), seven.seen());

    let (j, s) = counts();
    other.put(&key("ns/job/8"), b"{}", Expect::Any).unwrap();
    fence.pass();
    assert_eq!(counts(), (j + 1, s));
    other.put(&key("ns/job/7"), b"{}", Expect::Any).unwrap();
    fence.pass();
    assert_eq!(counts(), (j + 2, s + 1));
    // The fences are under everything too: told once each, in the batch
    // that tells the fence's own watch, so nothing of theirs is left.
    let seen = everything.seen();
    other.put(&key("elsewhere"), b"{}", Expect::Any).unwrap();
    told_after(&everything, seen);
    fence.pass();
    assert_eq!(counts(), (j + 2, s + 1));
}

/// Directories that existed before the watch are watched too.
#[test]
fn records_in_directories_made_before_the_watch_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let service = DirStore::open(&root).unwrap();
    let other = DirStore::open(&root).unwrap();
    for name in ["ns/job/4/event", "ns/job/4/steps/1", "ns/job/5"] {
        other.put(&key(name), b"{}", Expect::Any).unwrap();
    }
    let changes = watch(&service, &["ns", "job"]);
    let fence = Fence::of(&service);
    for name in ["ns/job/4/event", "ns/job/4/steps/1", "ns/job/5"] {
        let seen = changes.seen();
        other.put(&key(name), b"{}", Expect::Any).unwrap();
        fence.pass();
        assert_eq!(changes.seen(), seen + 1, "{name}");
    }
}

/// A batch that another handle left pending (its process died after the
/// journal) and that this handle completes, on a read of its own, is
/// another writer's change: it is told.
#[test]
fn a_batch_another_handle_left_pending_is_told_when_this_handle_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let service = DirStore::open(&root).unwrap();
    let vfs = Faulty::new(StdVfs);
    let other = DirStore::builder(&root).vfs(vfs.clone()).open().unwrap();
    other.put(&key("ns/job/1"), b"{}", Expect::Any).unwrap();
    let changes = watch(&service, &["ns", "job"]);
    let fence = Fence::of(&service);
    // The journal is the first file created, the first record's temp file
    // the second: the batch stays pending.
    vfs.arm(Fault::nth(2).only([OpKind::Create]));
    let batch = Batch::new()
        .put(&key("ns/job/1"), b"{\"n\":2}".to_vec(), Expect::Any)
        .put(&key("ns/job/2"), b"{}".to_vec(), Expect::Any);
    let err = other.apply(&batch).unwrap_err();
    assert!(matches!(err, Error::BatchPending { .. }), "{err}");
    drop(other);
    fence.pass();
    let seen = changes.seen();
    // This handle's read completes the batch: records renamed into place
    // by this handle, for another.
    let got = service.get(&key("ns/job/2")).unwrap();
    assert!(got.is_some(), "the pending batch was not completed");
    fence.pass();
    assert!(changes.seen() > seen, "the completed batch was not told");
}

/// The watching thread ends within a second or two of the last watch's
/// drop; a watch made at any time after, before or after it ended, is
/// told all the same.
#[test]
fn a_watch_after_the_last_one_was_dropped_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let service = DirStore::open(&root).unwrap();
    let other = DirStore::open(&root).unwrap();
    other.put(&key("ns/job/1"), b"{}", Expect::Any).unwrap();
    for pause_ms in [0, 1100, 2500, 0] {
        let changes = watch(&service, &["ns", "job"]);
        let seen = changes.seen();
        other.put(&key("ns/job/1"), b"{}", Expect::Any).unwrap();
        told_after(&changes, seen);
        drop(changes);
        std::thread::sleep(Duration::from_millis(pause_ms));
    }
}
