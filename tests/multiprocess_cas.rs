//! Several processes racing on one `DirStore`: compare-and-set and insert-if-absent
//! stay linearizable across processes, not only across threads.
// Test code, children included: a step that fails fails the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::child::{self, Child};
use jobsafe::{DirStore, Expect, Key, Store};

const CHILDREN: usize = 4;
const INCREMENTS: u64 = 25;
const RACE_KEYS: usize = 10;

fn counter() -> Key {
    Key::new(["counter"]).unwrap()
}

fn race_key(i: usize) -> Key {
    Key::new(["race", &i.to_string()]).unwrap()
}

/// Starts the children, lets them go at once, and collects their reports.
fn run_children(test: &str, role: &str, root: &std::path::Path) -> Vec<Vec<String>> {
    let vars = child::store_vars(root);
    let mut children: Vec<Child> = (0..CHILDREN)
        .map(|_| Child::spawn(test, role, &vars))
        .collect();
    child::start_together(&mut children);
    children.into_iter().map(Child::finish).collect()
}

#[test]
fn children_race_cas_increments_without_losing_one() {
    if child::role().as_deref() == Some("incrementer") {
        return increment_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    DirStore::open(&root)
        .unwrap()
        .put(&counter(), b"0", Expect::Absent)
        .unwrap();

    let reports = run_children(
        "children_race_cas_increments_without_losing_one",
        "incrementer",
        &root,
    );

    let versions: Vec<u64> = reports
        .iter()
        .flatten()
        .map(|line| {
            line.strip_prefix("incremented at ")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let successes = versions.len() as u64;
    assert_eq!(successes, CHILDREN as u64 * INCREMENTS);
    let distinct: BTreeSet<u64> = versions.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        versions.len(),
        "two increments got one version"
    );

    let entry = DirStore::open(&root)
        .unwrap()
        .get(&counter())
        .unwrap()
        .unwrap();
    assert_eq!(
        entry.value,
        successes.to_string().as_bytes(),
        "an update was lost"
    );
    assert_eq!(Some(&entry.version.get()), distinct.last());
}

/// Child: `INCREMENTS` successful read-CAS-retry increments of the counter.
fn increment_in_child() {
    let store = DirStore::open(child::store_root()).unwrap();
    child::ready_then_wait();
    for _ in 0..INCREMENTS {
        loop {
            let entry = store.get(&counter()).unwrap().unwrap();
            let n: u64 = std::str::from_utf8(&entry.value).unwrap().parse().unwrap();
            let next = (n + 1).to_string();
            match store.put(&counter(), next.as_bytes(), Expect::Version(entry.version)) {
                Ok(v) => {
                    child::report(&format!("incremented at {}", v.get()));
                    break;
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => panic!("increment: {e}"),
            }
        }
    }
}

#[test]
fn children_race_put_absent_with_one_winner_per_key() {
    if child::role().as_deref() == Some("inserter") {
        return insert_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    DirStore::open(&root).unwrap();

    let reports = run_children(
        "children_race_put_absent_with_one_winner_per_key",
        "inserter",
        &root,
    );

    // key -> the children that won it
    let mut winners: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for line in reports.iter().flatten() {
        let (key, pid) = line
            .strip_prefix("won ")
            .unwrap()
            .split_once(" as ")
            .unwrap();
        winners
            .entry(key.parse().unwrap())
            .or_default()
            .push(pid.to_owned());
    }
    let store = DirStore::open(&root).unwrap();
    for i in 0..RACE_KEYS {
        let won = winners.get(&i).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            won.len(),
            1,
            "key {i} was won by {won:?}; exactly one must win"
        );
        let entry = store.get(&race_key(i)).unwrap().unwrap();
        assert_eq!(
            entry.value,
            won[0].as_bytes(),
            "key {i} holds another child's value"
        );
    }
}

/// Child: tries to insert every race key; reports the ones it won.
fn insert_in_child() {
    let store = DirStore::open(child::store_root()).unwrap();
    let me = std::process::id().to_string();
    child::ready_then_wait();
    for i in 0..RACE_KEYS {
        match store.put(&race_key(i), me.as_bytes(), Expect::Absent) {
            Ok(_) => child::report(&format!("won {i} as {me}")),
            Err(e) if e.is_conflict() => {}
            Err(e) => panic!("insert {i}: {e}"),
        }
    }
}
