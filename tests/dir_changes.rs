//! `DirStore` tells of other writers' changes (`Store::changes_by_others`):
//! another process's puts, deletes and batches under a watched prefix wake
//! the watcher, including the first write that creates the prefix's
//! directory and the writes after an emptied directory was removed; the
//! handle's own writes and writes outside the prefix do not.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::child::{self, Child};
use common::key;
use jobsafe::store::Changes;
use jobsafe::{Batch, DirStore, Expect, Prefix, Store};

const TEST: &str = "writes_of_another_process_are_told_to_watchers";

/// Waits for a notification after `seen`; the new count.
fn told_after(changes: &Changes, seen: u64) -> u64 {
    let (tx, rx) = mpsc::channel();
    let changes = changes.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _ = tx.send(runtime.block_on(changes.changed(seen)));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the other writer's change was never told"))
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
    let changes = service
        .changes_by_others(&Prefix::new(["ns", "job"]).unwrap())
        .expect("a DirStore tells on Linux");
    let mut writer = Child::spawn(TEST, "writer", &child::store_vars(&root));
    let mut seen = changes.seen();
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
        ask(request);
        seen = told_after(&changes, seen);
        let name = request.rsplit(' ').next().unwrap();
        let found = service.get(&key(name)).unwrap();
        assert_eq!(
            found.is_some(),
            !request.starts_with("delete"),
            "after `{request}`"
        );
    }

    // Writes outside the prefix, then the handle's own writes under it, then
    // one of the other process's: one notification, for the last. A fence
    // orders the counts: the thread reads the reports in order and tells
    // each batch of them at once, the prefix's watch before the fence's
    // (watched first), so once the fence's watch is told of a write of
    // `ns/job/fence`, the count of the prefix's watch includes every report
    // before it. (Were the others told, the thread would most likely have
    // read their reports before the fence's, and told them apart.)
    let fence = service
        .changes_by_others(&Prefix::new(["ns", "job", "fence"]).unwrap())
        .unwrap();
    let fenced = |ask: &mut dyn FnMut(&str)| {
        let before = fence.seen();
        ask("put ns/job/fence");
        told_after(&fence, before);
        changes.seen()
    };
    let seen = fenced(&mut ask);
    for n in 0..10 {
        ask(&format!("put ns/open/{n}"));
        ask(&format!("put ns/lock/{n}"));
        service
            .put(&key(&format!("ns/job/own-{n}")), b"{}", Expect::Any)
            .unwrap();
    }
    assert_eq!(fenced(&mut ask), seen + 1, "only the fence was told");
    drop(writer);
}

/// A watch of a prefix deeper than the records' directory (one job) is told
/// of that key only, and a second watch of the same handle is armed too.
#[test]
fn watches_of_one_handle_are_told_each_of_their_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let service = DirStore::open(&root).unwrap();
    let other = DirStore::open(&root).unwrap();
    let jobs = service
        .changes_by_others(&Prefix::new(["ns", "job"]).unwrap())
        .unwrap();
    let seven = service
        .changes_by_others(&Prefix::new(["ns", "job", "7"]).unwrap())
        .unwrap();
    let (jobs_seen, seven_seen) = (jobs.seen(), seven.seen());
    other.put(&key("ns/job/8"), b"{}", Expect::Any).unwrap();
    let jobs_seen = told_after(&jobs, jobs_seen);
    other.put(&key("ns/job/7"), b"{}", Expect::Any).unwrap();
    told_after(&seven, seven_seen);
    told_after(&jobs, jobs_seen);
}
