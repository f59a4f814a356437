//! Clauses about the largest value: stored whole at the limit, refused past it
//! before anything is written.

use super::support::{During, ensure, expect_absent, expect_entry, expect_value, key};
use super::{Harness, Outcome, Verdict, Violation};
use crate::error::Error;
use crate::key::Key;
use crate::store::{Applied, Batch, BatchOp, Entry, Expect, Store};

/// A value of exactly [`Entry::MAX_VALUE_LEN`] bytes is stored and read back
/// whole, by a put and inside a batch, and, where the harness can reopen the
/// store, after a reopen: a backend reads back every value it accepts.
pub fn largest_value_is_stored<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let (big, other) = (key(["big"])?, key(["other"])?);
    let first = patterned(Entry::MAX_VALUE_LEN, 0);
    let v1 = store
        .put(&big, &first, Expect::Absent)
        .during("put a value of exactly the limit")?;
    expect_entry(
        &store,
        &big,
        &first,
        v1,
        "after putting a value at the limit",
    )?;

    let second = patterned(Entry::MAX_VALUE_LEN, 1);
    let batch = Batch::new()
        .put(&big, second.clone(), Expect::Version(v1))
        .put(&other, b"small".to_vec(), Expect::Absent);
    let applied = store
        .apply(&batch)
        .during("apply a batch with a value of exactly the limit")?;
    let [Applied::Put(v2), Applied::Put(_)] = applied[..] else {
        return Err(Violation::new(format!(
            "apply of two puts returned {applied:?}"
        )));
    };
    ensure!(v2 > v1, "the batch put {big} at {v2}, not newer than {v1}");
    expect_entry(
        &store,
        &big,
        &second,
        v2,
        "after a batch put a value at the limit",
    )?;

    let Some(store) = h.reopen(store).during("reopen the store")? else {
        return Ok(Outcome::Passed);
    };
    expect_entry(&store, &big, &second, v2, "after a reopen")?;
    expect_value(&store, &other, b"small", "after a reopen")?;
    Ok(Outcome::Passed)
}

/// A value one byte over [`Entry::MAX_VALUE_LEN`] is refused with
/// [`Error::TooLarge`] naming its key, its length and the limit, and not as a
/// transient error: by a put, whether the key exists or not, and by a batch,
/// wherever the put stands in it, which then writes nothing at all. The store
/// is unchanged and takes the next write as if nothing had happened.
pub fn value_over_the_limit_is_refused_and_changes_nothing<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let (a, b, fresh) = (key(["a"])?, key(["b"])?, key(["new"])?);
    let va = store.put(&a, b"a0", Expect::Absent).during("put a")?;
    let vb = store.put(&b, b"b0", Expect::Absent).during("put b")?;
    let over = patterned(Entry::MAX_VALUE_LEN + 1, 2);

    for expect in [Expect::Any, Expect::Version(va)] {
        let result = store.put(&a, &over, expect);
        expect_too_large(
            result,
            &a,
            &format!("put a value over the limit on {a} ({expect:?})"),
        )?;
    }
    for expect in [Expect::Any, Expect::Absent] {
        let result = store.put(&fresh, &over, expect);
        expect_too_large(
            result,
            &fresh,
            &format!("put a value over the limit on a new key ({expect:?})"),
        )?;
    }
    expect_entry(&store, &a, b"a0", va, "after a refused put")?;
    expect_absent(&store, &fresh, "after a refused put")?;

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
    ];
    for position in 0..=good.len() {
        let mut batch = Batch::new();
        for (i, op) in good.iter().enumerate() {
            if i == position {
                batch = batch.put(&fresh, over.clone(), Expect::Absent);
            }
            batch.push(op.clone());
        }
        if position == good.len() {
            batch = batch.put(&fresh, over.clone(), Expect::Absent);
        }
        let what = format!("apply a batch with a value over the limit at position {position}");
        expect_too_large(store.apply(&batch), &fresh, &what)?;
        expect_entry(&store, &a, b"a0", va, "after a refused batch")?;
        expect_entry(&store, &b, b"b0", vb, "after a refused batch")?;
        expect_absent(&store, &fresh, "after a refused batch")?;
    }

    // Nothing was half-applied or left locked: the preconditions still hold.
    let mut rest = Batch::new();
    for op in good {
        rest.push(op);
    }
    store
        .apply(&rest)
        .during("apply the batch without the value over the limit")?;
    expect_value(&store, &a, b"a1", "after the batch")?;
    expect_absent(&store, &b, "after the batch deleted it")?;
    Ok(Outcome::Passed)
}

/// `len` bytes that are not all alike, so that a value cut short, shifted or
/// zeroed does not compare equal; `seed` makes values of one length differ.
fn patterned(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(0x5b))
        .collect()
}

/// `result` must be [`Error::TooLarge`] for a value one byte over the limit at
/// `at`, and not transient.
fn expect_too_large<T: std::fmt::Debug>(
    result: crate::Result<T>,
    at: &Key,
    what: &str,
) -> Result<(), Violation> {
    let limit = Entry::MAX_VALUE_LEN;
    match result {
        Err(
            ref e @ Error::TooLarge {
                ref key,
                size,
                limit: reported,
                ..
            },
        ) => {
            ensure!(
                key.as_ref() == Some(at) && size == limit + 1 && reported == limit,
                "{what}: the error must name key {at}, size {} and limit {limit}: {e}",
                limit + 1
            );
            ensure!(!e.is_transient(), "{what}: the error is transient: {e}");
            Ok(())
        }
        Err(e) => Err(Violation::new(format!(
            "{what}: expected a too-large error, got the error: {e}"
        ))),
        Ok(v) => Err(Violation::new(format!(
            "{what}: expected a too-large error, but it succeeded with {v:?}"
        ))),
    }
}
