//! `MemStore` orders its keys lazily, when a listing needs them: listings must
//! not show it. Every page is checked against a model after churn that creates,
//! deletes and re-creates keys between listings, through more writes than its
//! backlog holds, and a concurrent lister must never see half a batch.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use jobsafe::{Batch, Expect, Key, MemStore, Prefix, Store};

use self::common::TestResult;

fn group_key(group: usize, n: usize) -> Key {
    Key::new([format!("g{group}"), format!("{n:04}")]).unwrap_or_else(|e| unreachable!("{e}"))
}

/// Lists `prefix` in pages of `limit` and checks every page against `model`.
fn check_pages(
    store: &MemStore,
    model: &BTreeSet<Key>,
    prefix: &Prefix,
    limit: usize,
) -> TestResult {
    let want: Vec<Key> = model
        .iter()
        .filter(|k| k.starts_with(prefix))
        .cloned()
        .collect();
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(prefix, after.as_ref(), limit)?;
        assert!(page.keys.len() <= limit);
        got.extend(page.keys);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(got, want, "listing {prefix:?} in pages of {limit}");
    Ok(())
}

#[test]
fn listings_match_a_model_through_churn() -> TestResult {
    let store = MemStore::new();
    let mut model = BTreeSet::new();
    let mut rng = fastrand::Rng::with_seed(7);
    // Over few enough keys that most are deleted and created again, some
    // between two listings. After the first listings, more creations and
    // deletions than the backlog holds (65,536) come before the next one.
    for step in 0..400_000_usize {
        let k = group_key(rng.usize(0..3), rng.usize(0..400));
        if rng.bool() {
            let created = store.put(&k, b"v", Expect::Absent).is_ok();
            assert_eq!(created, model.insert(k));
        } else {
            assert_eq!(store.delete(&k, Expect::Any)?, model.remove(&k));
        }
        if step.is_multiple_of(9_973) && !(50_000..=350_000).contains(&step) {
            let prefix = Prefix::new([format!("g{}", rng.usize(0..3))])?;
            check_pages(&store, &model, &prefix, 1 + rng.usize(0..100))?;
            check_pages(&store, &model, &Prefix::all(), 1_000)?;
        }
    }
    check_pages(&store, &model, &Prefix::all(), 7)?;
    Ok(())
}

#[test]
fn paging_sees_writes_made_between_pages() -> TestResult {
    let store = MemStore::new();
    for n in (0..100).step_by(2) {
        store.put(&group_key(0, n), b"v", Expect::Absent)?;
    }
    let prefix = Prefix::new(["g0"])?;
    let first = store.list(&prefix, None, 10)?;
    let cursor = first
        .next
        .ok_or("a first page of ten out of fifty keys is not the last")?;
    assert_eq!(cursor, group_key(0, 18));
    // Before the cursor: never listed. After it: listed, or gone.
    store.put(&group_key(0, 1), b"v", Expect::Absent)?;
    store.put(&group_key(0, 19), b"v", Expect::Absent)?;
    store.delete(&group_key(0, 20), Expect::Any)?;
    store.delete(&group_key(0, 22), Expect::Any)?;
    store.put(&group_key(0, 22), b"v", Expect::Absent)?;
    let second = store.list(&prefix, Some(&cursor), 3)?;
    assert_eq!(
        second.keys,
        [group_key(0, 19), group_key(0, 22), group_key(0, 24)]
    );
    let all = store.list_all(&prefix)?;
    assert!(all.contains(&group_key(0, 1)) && !all.contains(&group_key(0, 20)));
    Ok(())
}

#[test]
fn a_lister_never_sees_half_a_batch() -> TestResult {
    const BATCHES: usize = 2_000;
    let store = MemStore::new();
    let prefix = Prefix::new(["g0"])?;
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> Result<(), jobsafe::Error> {
            // Each batch creates a pair of keys and deletes the previous pair.
            for n in 0..BATCHES {
                let mut batch = Batch::new()
                    .put(&group_key(0, 2 * n), b"a".to_vec(), Expect::Absent)
                    .put(&group_key(0, 2 * n + 1), b"b".to_vec(), Expect::Absent);
                if n > 0 {
                    batch = batch
                        .delete(&group_key(0, 2 * n - 2), Expect::Any)
                        .delete(&group_key(0, 2 * n - 1), Expect::Any);
                }
                store.apply(&batch)?;
            }
            done.store(true, Ordering::Release);
            Ok(())
        });
        let mut listings = 0;
        while !done.load(Ordering::Acquire) {
            let keys = store.list(&prefix, None, 10)?.keys;
            listings += 1;
            assert!(keys.is_empty() || keys.len() == 2, "{keys:?}");
            if let [a, b] = keys.as_slice() {
                let n: usize = a.name().parse()?;
                assert!(n.is_multiple_of(2) && *b == group_key(0, n + 1), "{keys:?}");
            }
        }
        assert!(listings > 0);
        writer.join().map_err(|_| "the writer panicked")??;
        Ok(())
    })
}
