//! Clauses that need the harness to reopen a store or damage a record:
//! durability, and what happens to a record that cannot be read.

use super::support::{
    During, ensure, expect_absent, expect_corrupt, expect_entry, expect_value, key,
};
use super::{Harness, Outcome, Verdict, Violation};
use crate::key::Prefix;
use crate::store::{Batch, Expect, Store};

/// Everything a store acknowledged is there after a reopen, deletes included;
/// versions from before the reopen still work for compare-and-set, and a key
/// deleted before it gets a newer version when created after it.
pub fn writes_survive_reopen<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let (a, b, c, d) = (key(["a"])?, key(["b", "1"])?, key(["c"])?, key(["d"])?);
    let va = store.put(&a, b"a", Expect::Absent).during("put a")?;
    let vb = store.put(&b, b"b0", Expect::Absent).during("put b")?;
    let vb = store
        .put(&b, b"b1", Expect::Version(vb))
        .during("update b")?;
    let vc = store.put(&c, b"c", Expect::Absent).during("put c")?;
    let applied = store
        .apply(
            &Batch::new()
                .delete(&c, Expect::Version(vc))
                .put(&d, b"d".to_vec(), Expect::Absent),
        )
        .during("apply a batch")?;
    let Some(crate::store::Applied::Put(vd)) = applied.get(1).copied() else {
        return Err(Violation::new(format!("the batch returned {applied:?}")));
    };

    let Some(store) = h.reopen(store).during("reopen the store")? else {
        return Ok(Outcome::Skipped("the harness cannot reopen a store"));
    };
    expect_entry(&store, &a, b"a", va, "after reopen")?;
    expect_entry(&store, &b, b"b1", vb, "after reopen")?;
    expect_absent(&store, &c, "after reopen (it was deleted before)")?;
    expect_entry(&store, &d, b"d", vd, "after reopen")?;
    let listed = store.list_all(&Prefix::all()).during("list after reopen")?;
    ensure!(
        listed == [a.clone(), b.clone(), d.clone()],
        "list after reopen returned {listed:?}"
    );
    let vb2 = store
        .put(&b, b"b2", Expect::Version(vb))
        .during("compare-and-set with a version from before the reopen")?;
    ensure!(
        vb2 > vb,
        "the first write after reopen got {vb2}, not newer than {vb}"
    );
    let vc2 = store
        .put(&c, b"c again", Expect::Absent)
        .during("re-create a key deleted before the reopen")?;
    ensure!(
        vc2 > vc,
        "re-created after reopen with {vc2}, not newer than its old {vc}"
    );
    Ok(Outcome::Passed)
}

/// A record that cannot be decoded is reported as corrupt by every operation on
/// its key (never treated as absent, never overwritten, not even by a batch),
/// stays listed, and [`Store::quarantine`] moves it aside; the key's next
/// version is still newer than the damaged one.
pub fn corrupt_record_is_reported_never_absent<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let (k, other) = (key(["jobs", "7"])?, key(["jobs", "8"])?);
    let v = store.put(&k, b"healthy", Expect::Absent).during("put")?;
    let v = store
        .put(&k, b"healthier", Expect::Version(v))
        .during("update")?;
    let vo = store
        .put(&other, b"other", Expect::Absent)
        .during("put other")?;
    if !h.corrupt(&store, &k).during("damage the record")? {
        return Ok(Outcome::Skipped("the harness cannot damage a record"));
    }

    expect_corrupt(store.get(&k), "get of a damaged record")?;
    for expect in [Expect::Any, Expect::Absent, Expect::Version(v)] {
        let what = format!("put({expect}) over a damaged record");
        expect_corrupt(store.put(&k, b"overwrite", expect), &what)?;
        let what = format!("delete({expect}) of a damaged record");
        expect_corrupt(store.delete(&k, expect), &what)?;
    }
    let batch = Batch::new()
        .put(&other, b"changed".to_vec(), Expect::Version(vo))
        .put(&k, b"overwrite".to_vec(), Expect::Any);
    expect_corrupt(store.apply(&batch), "a batch writing a damaged record")?;
    expect_entry(
        &store,
        &other,
        b"other",
        vo,
        "after a batch refused for corruption",
    )?;
    let listed = store.list_all(&Prefix::all()).during("list")?;
    ensure!(
        listed.contains(&k),
        "list dropped the damaged record's key: {listed:?}"
    );

    let moved = store
        .quarantine(&k)
        .during("quarantine the damaged record")?;
    let Some(moved) = moved else {
        return Err(Violation::new(
            "quarantine of a damaged record found no record",
        ));
    };
    ensure!(
        moved.key == k,
        "quarantine reported key {}, not {k}",
        moved.key
    );
    expect_absent(&store, &k, "after quarantine")?;
    let v2 = store
        .put(&k, b"fresh start", Expect::Absent)
        .during("put(absent) after quarantine")?;
    ensure!(
        v2 > v,
        "after quarantine the key got {v2}, not newer than the damaged {v}"
    );
    expect_value(&store, &other, b"other", "at the end")?;
    Ok(Outcome::Passed)
}

/// Quarantine of a missing key does nothing and says so; of a healthy record it
/// makes the key absent (and unlisted), and the key's next version is newer.
pub fn quarantine_moves_records_aside<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let k = key(["q", "1"])?;
    let nothing = store.quarantine(&k).during("quarantine a missing key")?;
    ensure!(
        nothing.is_none(),
        "quarantine of a missing key returned {nothing:?}"
    );

    let v = store.put(&k, b"evidence", Expect::Absent).during("put")?;
    let moved = store.quarantine(&k).during("quarantine a healthy record")?;
    let Some(moved) = moved else {
        return Err(Violation::new(
            "quarantine of a present record found no record",
        ));
    };
    ensure!(
        moved.key == k,
        "quarantine reported key {}, not {k}",
        moved.key
    );
    expect_absent(&store, &k, "after quarantine")?;
    let listed = store.list_all(&Prefix::all()).during("list")?;
    ensure!(
        listed.is_empty(),
        "list after quarantine returned {listed:?}"
    );
    let v2 = store.put(&k, b"new", Expect::Absent).during("re-create")?;
    ensure!(
        v2 > v,
        "re-created after quarantine with {v2}, not newer than {v}"
    );
    Ok(Outcome::Passed)
}
