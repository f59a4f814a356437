//! Clauses about one key at a time: preconditions, versions, values.

use super::support::{During, ensure, expect_absent, expect_conflict, expect_entry, key};
use super::{Harness, Outcome, Verdict};
use crate::store::{Batch, Expect, Store};

/// `get` of a key never written returns `None`.
pub fn get_of_absent_key_is_none<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    expect_absent(&store, &key(["never", "written"])?, "in a fresh store")?;
    Ok(Outcome::Passed)
}

/// `put(Absent)` creates a key once; a second one is a conflict that carries the
/// current version and changes nothing.
pub fn put_absent_inserts_only_once<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let k = key(["jobs", "1"])?;
    let v1 = store
        .put(&k, b"first", Expect::Absent)
        .during("put(absent) on a new key")?;
    expect_entry(&store, &k, b"first", v1, "after put(absent)")?;
    let again = store.put(&k, b"second", Expect::Absent);
    expect_conflict(again, "second put(absent) on the same key", Some(v1))?;
    expect_entry(&store, &k, b"first", v1, "after a refused put(absent)")?;
    Ok(Outcome::Passed)
}

/// `put(Any)` creates an absent key and overwrites a present one with a newer
/// version.
pub fn put_any_creates_and_overwrites<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let k = key(["cache", "a"])?;
    let v1 = store
        .put(&k, b"one", Expect::Any)
        .during("put(any) creating")?;
    let v2 = store
        .put(&k, b"two", Expect::Any)
        .during("put(any) overwriting")?;
    ensure!(
        v2 > v1,
        "put(any) over {v1} returned {v2}, not a newer version"
    );
    expect_entry(&store, &k, b"two", v2, "after put(any) overwrote it")?;
    Ok(Outcome::Passed)
}

/// `put(Version(v))` succeeds only while the key is at exactly `v`; a stale or
/// absent version is a conflict that changes nothing.
pub fn put_version_is_compare_and_set<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let k = key(["credits", "lic:abc"])?;
    let v1 = store.put(&k, b"10", Expect::Absent).during("put(absent)")?;
    let v2 = store
        .put(&k, b"9", Expect::Version(v1))
        .during("put with the current version")?;
    ensure!(
        v2 > v1,
        "compare-and-set over {v1} returned {v2}, not newer"
    );

    let stale = store.put(&k, b"8", Expect::Version(v1));
    expect_conflict(stale, "put with a stale version", Some(v2))?;
    expect_entry(&store, &k, b"9", v2, "after a stale compare-and-set")?;

    let missing = key(["credits", "nobody"])?;
    let on_absent = store.put(&missing, b"1", Expect::Version(v2));
    expect_conflict(on_absent, "put(version) on an absent key", None)?;
    expect_absent(&store, &missing, "after a refused put(version)")?;
    Ok(Outcome::Passed)
}

/// `delete` honours its precondition: `Any` and `Absent` accept a missing key
/// (returning `false`), `Version` must match, and a refused delete keeps the record.
pub fn delete_follows_its_precondition<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let k = key(["locks", "a"])?;

    let gone = store
        .delete(&k, Expect::Any)
        .during("delete(any) of nothing")?;
    ensure!(
        !gone,
        "delete(any) of a missing key reported that it deleted a record"
    );
    let gone = store
        .delete(&k, Expect::Absent)
        .during("delete(absent) of nothing")?;
    ensure!(!gone, "delete(absent) of a missing key reported a deletion");
    let refused = store.delete(&k, Expect::Version(crate::Version::new(1)));
    expect_conflict(refused, "delete(version) of a missing key", None)?;

    let v1 = store
        .put(&k, b"held", Expect::Absent)
        .during("put(absent)")?;
    let v2 = store
        .put(&k, b"renewed", Expect::Version(v1))
        .during("put(version)")?;
    let refused = store.delete(&k, Expect::Absent);
    expect_conflict(refused, "delete(absent) of a present key", Some(v2))?;
    let refused = store.delete(&k, Expect::Version(v1));
    expect_conflict(refused, "delete with a stale version", Some(v2))?;
    expect_entry(&store, &k, b"renewed", v2, "after refused deletes")?;

    let gone = store
        .delete(&k, Expect::Version(v2))
        .during("delete with the current version")?;
    ensure!(
        gone,
        "delete of a present key reported that nothing was deleted"
    );
    expect_absent(&store, &k, "after delete")?;
    Ok(Outcome::Passed)
}

/// Each write returns a version greater than the one before, and `get` reports
/// the version the write returned.
pub fn versions_strictly_increase<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let k = key(["counter"])?;
    let mut last = store.put(&k, b"0", Expect::Absent).during("put(absent)")?;
    for i in 1..20u32 {
        let value = i.to_string();
        let expect = if i % 2 == 0 {
            Expect::Any
        } else {
            Expect::Version(last)
        };
        let next = store
            .put(&k, value.as_bytes(), expect)
            .during(&format!("write number {i}"))?;
        ensure!(next > last, "write number {i} returned {next} after {last}");
        expect_entry(&store, &k, value.as_bytes(), next, "right after the write")?;
        last = next;
    }
    Ok(Outcome::Passed)
}

/// A key deleted (alone, in a batch, or by quarantine) and created again gets a
/// version greater than any it had, so an old compare-and-set cannot succeed
/// against the new incarnation.
pub fn versions_are_never_reused<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let k = key(["ledger", "job-1"])?;

    let v1 = store.put(&k, b"a", Expect::Absent).during("first put")?;
    store
        .delete(&k, Expect::Version(v1))
        .during("delete the first incarnation")?;
    let v2 = store.put(&k, b"b", Expect::Absent).during("re-create")?;
    ensure!(
        v2 > v1,
        "re-created key got {v2}, not newer than its old {v1}"
    );
    let aba = store.put(&k, b"x", Expect::Version(v1));
    expect_conflict(aba, "put with the previous incarnation's version", Some(v2))?;

    store
        .apply(&Batch::new().delete(&k, Expect::Version(v2)))
        .during("delete in a batch")?;
    let v3 = store
        .put(&k, b"c", Expect::Absent)
        .during("re-create after a batch delete")?;
    ensure!(
        v3 > v2,
        "re-created after a batch delete got {v3}, not newer than {v2}"
    );

    store.quarantine(&k).during("quarantine the record")?;
    let v4 = store
        .put(&k, b"d", Expect::Absent)
        .during("re-create after quarantine")?;
    ensure!(
        v4 > v3,
        "re-created after quarantine got {v4}, not newer than {v3}"
    );
    Ok(Outcome::Passed)
}

/// Values come back byte for byte: empty, every byte value, not UTF-8, 1 MiB, and
/// a short value written over a long one.
pub fn values_round_trip_exactly<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let mut large = Vec::with_capacity(1 << 20);
    let mut state = 0x9E37_79B9_u32;
    while large.len() < 1 << 20 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        large.extend_from_slice(&state.to_le_bytes());
    }
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let cases: [(&str, &[u8]); 5] = [
        ("empty", b""),
        ("every-byte", &all_bytes),
        ("not-utf8", b"\xff\xfe\x00\xc3"),
        ("json", br#"{"state":"done","n":1}"#),
        ("one-mib", &large),
    ];
    for (name, value) in cases {
        let k = key(["values", name])?;
        let v = store
            .put(&k, value, Expect::Absent)
            .during(&format!("put the {name} value"))?;
        expect_entry(&store, &k, value, v, "right after the put")?;
    }
    let k = key(["values", "one-mib"])?;
    let v = store
        .put(&k, b"short", Expect::Any)
        .during("overwrite 1 MiB with 5 bytes")?;
    expect_entry(
        &store,
        &k,
        b"short",
        v,
        "after a short value replaced a long one",
    )?;
    Ok(Outcome::Passed)
}
