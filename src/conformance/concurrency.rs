//! Clauses about threads racing on one key: linearizable preconditions.

use std::collections::BTreeSet;
use std::sync::Barrier;

use super::support::{During, ensure, expect_entry, key};
use super::{Harness, Outcome, Verdict, Violation};
use crate::key::Key;
use crate::store::{Expect, Store, Version};

const THREADS: usize = 8;

/// Of many threads calling `put(Absent)` on the same key at once, exactly one
/// succeeds; every other gets a conflict, and the stored value is the winner's.
pub fn concurrent_put_absent_has_exactly_one_winner<H: Harness>(h: &mut H) -> Verdict {
    const KEYS: usize = 12;
    let store = h.fresh().during("open a fresh store")?;
    let keys = (0..KEYS)
        .map(|i| key(["race", &i.to_string()]))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Barrier::new(THREADS);
    // Per thread, per key: the version it won with, if it won.
    let wins: Vec<Vec<Option<Version>>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (store, keys, start) = (&store, &keys, &start);
                scope.spawn(move || {
                    start.wait();
                    keys.iter()
                        .map(|k| try_insert(store, k, thread))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|racer| {
                racer
                    .join()
                    .unwrap_or_else(|_| Err(Violation::new("a racing thread panicked")))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    for (i, k) in keys.iter().enumerate() {
        let winners: Vec<(usize, Version)> = wins
            .iter()
            .enumerate()
            .filter_map(|(thread, won)| won[i].map(|v| (thread, v)))
            .collect();
        let [(thread, version)] = winners[..] else {
            return Err(Violation::new(format!(
                "{THREADS} threads raced put(absent) on {k}: {} succeeded, exactly one must",
                winners.len()
            )));
        };
        let value = format!("thread {thread}");
        expect_entry(&store, k, value.as_bytes(), version, "after the race")?;
    }
    Ok(Outcome::Passed)
}

fn try_insert(store: &impl Store, k: &Key, thread: usize) -> Result<Option<Version>, Violation> {
    let value = format!("thread {thread}");
    match store.put(k, value.as_bytes(), Expect::Absent) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_conflict() => Ok(None),
        Err(e) => Err(Violation::new(format!(
            "racing put(absent) on {k}: expected success or a conflict, got: {e}"
        ))),
    }
}

/// Threads incrementing one counter by read, compare-and-set and retry lose no
/// update: the final count is the number of successful writes, and no two
/// successful writes got the same version.
pub fn concurrent_cas_increments_lose_no_update<H: Harness>(h: &mut H) -> Verdict {
    const THREADS: usize = 4;
    const INCREMENTS: u64 = 25;
    let store = h.fresh().during("open a fresh store")?;
    let counter = key(["counter"])?;
    store
        .put(&counter, b"0", Expect::Absent)
        .during("create the counter")?;
    let start = Barrier::new(THREADS);
    let versions: Vec<Vec<Version>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (store, counter, start) = (&store, &counter, &start);
                scope.spawn(move || {
                    start.wait();
                    (0..INCREMENTS)
                        .map(|_| increment(store, counter))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(Violation::new("an incrementing thread panicked")))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let successes = versions.iter().map(Vec::len).sum::<usize>();
    let distinct: BTreeSet<Version> = versions.into_iter().flatten().collect();
    ensure!(
        distinct.len() == successes,
        "{successes} successful compare-and-sets returned only {} distinct versions",
        distinct.len()
    );
    let total = THREADS as u64 * INCREMENTS;
    let Some(last) = distinct.last().copied() else {
        return Err(Violation::new("no increment succeeded"));
    };
    expect_entry(
        &store,
        &counter,
        total.to_string().as_bytes(),
        last,
        "after every increment succeeded",
    )?;
    Ok(Outcome::Passed)
}

/// Adds one to the counter, retrying on conflict; returns the version written.
fn increment(store: &impl Store, counter: &Key) -> Result<Version, Violation> {
    loop {
        let Some(entry) = store.get(counter).during("read the counter")? else {
            return Err(Violation::new("the counter disappeared"));
        };
        let n: u64 = std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Violation::new(format!("the counter holds {:?}", entry.value)))?;
        let next = (n + 1).to_string();
        match store.put(counter, next.as_bytes(), Expect::Version(entry.version)) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_conflict() => continue,
            Err(e) => {
                return Err(Violation::new(format!(
                    "compare-and-set of the counter: expected success or a conflict, got: {e}"
                )));
            }
        }
    }
}
