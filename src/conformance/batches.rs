//! Clauses about `apply`: all or nothing, for readers and for preconditions.

use std::sync::atomic::{AtomicBool, Ordering};

use super::support::{
    During, ensure, expect_absent, expect_conflict, expect_entry, expect_invalid_argument, key,
};
use super::{Harness, Outcome, Verdict, Violation};
use crate::key::Key;
use crate::store::{Applied, Batch, BatchOp, Expect, Store};

/// A batch applies every put and delete, each with its own precondition, and
/// returns one result per operation in order.
pub fn batch_applies_every_operation_in_order<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let (a, b, c, d) = (key(["a"])?, key(["b"])?, key(["c"])?, key(["d"])?);
    let va = store.put(&a, b"a0", Expect::Absent).during("put a")?;
    let vb = store.put(&b, b"b0", Expect::Absent).during("put b")?;

    let batch = Batch::new()
        .put(&a, b"a1".to_vec(), Expect::Version(va))
        .delete(&b, Expect::Version(vb))
        .put(&c, b"c1".to_vec(), Expect::Absent)
        .delete(&d, Expect::Any);
    let applied = store.apply(&batch).during("apply a mixed batch")?;
    let [
        Applied::Put(va1),
        Applied::Deleted(true),
        Applied::Put(vc),
        Applied::Deleted(false),
    ] = applied[..]
    else {
        return Err(Violation::new(format!(
            "apply of put, delete, put, delete-of-nothing returned {applied:?}"
        )));
    };
    ensure!(va1 > va, "the batch put a at {va1}, not newer than {va}");
    expect_entry(&store, &a, b"a1", va1, "after the batch")?;
    expect_absent(&store, &b, "after the batch deleted it")?;
    expect_entry(&store, &c, b"c1", vc, "after the batch")?;
    expect_absent(&store, &d, "after the batch")?;
    Ok(Outcome::Passed)
}

/// A batch with one failing precondition changes nothing at all, wherever that
/// operation sits in the batch, and the conflict names that key.
pub fn batch_conflict_changes_nothing<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let (a, b, c, fresh) = (key(["a"])?, key(["b"])?, key(["c"])?, key(["new"])?);
    let va = store.put(&a, b"a0", Expect::Absent).during("put a")?;
    let vb = store.put(&b, b"b0", Expect::Absent).during("put b")?;
    let vc = store.put(&c, b"c0", Expect::Absent).during("put c")?;
    let good = [
        BatchOp::Put {
            key: a.clone(),
            value: b"a1".to_vec(),
            expect: Expect::Version(va),
        },
        BatchOp::Delete {
            key: b.clone(),
            expect: Expect::Version(vb),
        },
        BatchOp::Put {
            key: fresh.clone(),
            value: b"n".to_vec(),
            expect: Expect::Absent,
        },
    ];
    let conflicting = BatchOp::Put {
        key: c.clone(),
        value: b"c1".to_vec(),
        expect: Expect::Absent,
    };

    for position in 0..=good.len() {
        let mut ops = good.to_vec();
        ops.insert(position, conflicting.clone());
        let result = store.apply(&batch_of(ops));
        if let Err(crate::Error::Conflict { key, .. }) = &result {
            ensure!(
                *key == c,
                "a batch's conflict named {key}, not the conflicting key {c}"
            );
        }
        let what = format!("batch with a stale precondition at position {position}");
        expect_conflict(result, &what, Some(vc))?;
        expect_entry(&store, &a, b"a0", va, "after a refused batch")?;
        expect_entry(&store, &b, b"b0", vb, "after a refused batch")?;
        expect_entry(&store, &c, b"c0", vc, "after a refused batch")?;
        expect_absent(&store, &fresh, "after a refused batch")?;
    }
    // Nothing was half-applied or left locked: the good operations still apply.
    store
        .apply(&batch_of(good.to_vec()))
        .during("apply the batch without its conflict")?;
    Ok(Outcome::Passed)
}

fn batch_of(ops: Vec<BatchOp>) -> Batch {
    let mut batch = Batch::new();
    for op in ops {
        batch.push(op);
    }
    batch
}

/// An empty batch and a batch naming one key twice are invalid arguments that
/// change nothing.
pub fn batch_rejects_empty_and_duplicate_keys<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let (a, b) = (key(["a"])?, key(["b"])?);
    expect_invalid_argument(store.apply(&Batch::new()), "apply an empty batch")?;
    let twice = Batch::new()
        .put(&a, b"1".to_vec(), Expect::Any)
        .put(&b, b"2".to_vec(), Expect::Any)
        .delete(&a, Expect::Any);
    expect_invalid_argument(store.apply(&twice), "apply a batch naming a key twice")?;
    expect_absent(&store, &a, "after a refused batch")?;
    expect_absent(&store, &b, "after a refused batch")?;
    Ok(Outcome::Passed)
}

/// A concurrent reader never sees part of a batch. A writer sets two keys to the
/// same increasing number in each batch; readers that read `a` then `b` must
/// never see `b` behind `a`, and readers that read `b` then `a` never `a`
/// behind `b`: either would mean they saw a batch half applied.
pub fn batch_is_atomic_for_concurrent_readers<H: Harness>(h: &mut H) -> Verdict {
    const BATCHES: u64 = 150;
    let store = h.fresh().during("open a fresh store")?;
    let (a, b) = (key(["pair", "a"])?, key(["pair", "b"])?);
    let store = &store;
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let result = write_pairs(store, &a, &b, BATCHES);
            done.store(true, Ordering::Release);
            result
        });
        let readers: Vec<_> = [(&a, &b), (&b, &a)]
            .into_iter()
            .map(|(first, second)| scope.spawn(|| read_pairs(store, first, second, &done)))
            .collect();
        let mut verdict = writer
            .join()
            .unwrap_or_else(|_| Err(Violation::new("the writer thread panicked")));
        for reader in readers {
            let read = reader
                .join()
                .unwrap_or_else(|_| Err(Violation::new("a reader thread panicked")));
            verdict = verdict.and(read);
        }
        verdict
    })?;
    Ok(Outcome::Passed)
}

fn write_pairs(store: &impl Store, a: &Key, b: &Key, batches: u64) -> Result<(), Violation> {
    for i in 1..=batches {
        let n = i.to_string();
        let batch = Batch::new()
            .put(a, n.clone().into_bytes(), Expect::Any)
            .put(b, n.into_bytes(), Expect::Any);
        store.apply(&batch).during(&format!("apply batch {i}"))?;
    }
    Ok(())
}

/// Reads `first` then `second` until the writer is done; `second` was written by
/// the same batch as `first` or a later one, so it can never be smaller.
fn read_pairs(
    store: &impl Store,
    first: &Key,
    second: &Key,
    done: &AtomicBool,
) -> Result<(), Violation> {
    loop {
        let finished = done.load(Ordering::Acquire);
        let x = read_number(store, first)?;
        let y = read_number(store, second)?;
        ensure!(
            y >= x,
            "a reader saw {first} = {x} and then {second} = {y}: a batch was half applied"
        );
        if finished {
            return Ok(());
        }
    }
}

fn read_number(store: &impl Store, k: &Key) -> Result<u64, Violation> {
    let Some(entry) = store.get(k).during(&format!("get {k}"))? else {
        return Ok(0);
    };
    std::str::from_utf8(&entry.value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Violation::new(format!("{k} holds {:?}, not a number", entry.value)))
}
