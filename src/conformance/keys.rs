//! Clauses about keys and listing: any valid segment is its own key, and `list`
//! is ordered, whole-segment and paged.

use std::collections::BTreeSet;

use super::support::{
    During, ensure, expect_absent, expect_entry, expect_invalid_argument, expect_value, key,
};
use super::{Harness, Outcome, Verdict};
use crate::key::{Key, Prefix};

const MAX_SEGMENT_LEN: usize = Key::MAX_SEGMENT_LEN;
const MAX_SEGMENTS: usize = Key::MAX_SEGMENTS;
use crate::store::{Expect, Store};

/// Segments that break naive encodings: path syntax, reserved and hidden names,
/// case and Unicode-normalisation twins, escape lookalikes, very long names.
pub(super) fn hostile_segments() -> Vec<String> {
    let mut segments: Vec<String> = [
        "..",
        ".",
        "/",
        "\\",
        "a/b",
        "a\\b",
        "../../etc/passwd",
        ".hidden",
        "lic:abc123",
        "CON",
        "nul",
        "Job",
        "job",
        "JOB",
        "caf\u{e9}",
        "cafe\u{301}",
        "%41",
        "A",
        "a",
        "^a",
        "%5Ea",
        "~x",
        "x~",
        "a.r",
        "a.d",
        "x.segment",
        ".segment",
        "*?<>|\"",
        " ",
        " padded ",
        "tab\there",
        "line\nbreak",
        "\u{1F980}",
        "\u{202E}rtl",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    // Long names: around any length where a backend may switch to hashing, and
    // two that only differ after a long common start.
    for len in [140, 150, 151, 200, 255, 256, MAX_SEGMENT_LEN] {
        segments.push("s".repeat(len));
    }
    segments.push(format!("{}1", "t".repeat(MAX_SEGMENT_LEN - 1)));
    segments.push(format!("{}2", "t".repeat(MAX_SEGMENT_LEN - 1)));
    segments.push("\u{e9}".repeat(MAX_SEGMENT_LEN / 2));
    segments
}

/// Every valid segment, however hostile, names its own key: each one stores and
/// reads back its own value, alone and between other segments, and `list` shows
/// exactly the keys written, in key order.
pub fn hostile_segments_are_distinct_keys<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let mut written = Vec::new();
    for (i, segment) in hostile_segments().iter().enumerate() {
        let alone = Key::new([segment.as_str()]).during(&format!("key from {segment:?}"))?;
        let nested = Key::new(["nested", segment.as_str(), "leaf"])
            .during(&format!("nested key with {segment:?}"))?;
        for k in [alone, nested] {
            let value = format!("value {i} of {k}");
            let v = store
                .put(&k, value.as_bytes(), Expect::Absent)
                .during(&format!("put(absent) {k}"))?;
            written.push((k, value, v));
        }
    }
    for (k, value, v) in &written {
        expect_entry(
            &store,
            k,
            value.as_bytes(),
            *v,
            "after every hostile key was written",
        )?;
    }
    let expected: Vec<Key> = written
        .iter()
        .map(|(k, ..)| k.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let listed = store.list_all(&Prefix::all()).during("list every key")?;
    ensure!(
        listed == expected,
        "list of all keys returned {} keys, expected the {} written, in key order; first difference: {:?}",
        listed.len(),
        expected.len(),
        listed.iter().zip(&expected).find(|(a, b)| a != b)
    );
    for (k, _, v) in &written {
        store
            .delete(k, Expect::Version(*v))
            .during(&format!("delete {k}"))?;
    }
    let left = store
        .list_all(&Prefix::all())
        .during("list after deleting all")?;
    ensure!(
        left.is_empty(),
        "after deleting every key, list still returns {left:?}"
    );
    Ok(Outcome::Passed)
}

/// A key that is a prefix of another (`a` and `a/b`) is a separate record: both
/// exist at once, and deleting one leaves the other.
pub fn key_that_prefixes_another_is_independent<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let parent = key(["a"])?;
    let child = key(["a", "b"])?;
    let grandchild = key(["a", "b", "c"])?;
    let vc = store
        .put(&child, b"child", Expect::Absent)
        .during("put a/b")?;
    let vp = store
        .put(&parent, b"parent", Expect::Absent)
        .during("put a")?;
    let vg = store
        .put(&grandchild, b"grandchild", Expect::Absent)
        .during("put a/b/c")?;
    expect_entry(&store, &parent, b"parent", vp, "beside a/b")?;
    expect_entry(&store, &child, b"child", vc, "beside a and a/b/c")?;
    let listed = store
        .list_all(&parent.as_prefix())
        .during("list prefix a")?;
    ensure!(
        listed == [parent.clone(), child.clone(), grandchild.clone()],
        "list of prefix a returned {listed:?}"
    );
    store
        .delete(&child, Expect::Version(vc))
        .during("delete a/b")?;
    expect_entry(&store, &parent, b"parent", vp, "after a/b was deleted")?;
    expect_entry(
        &store,
        &grandchild,
        b"grandchild",
        vg,
        "after a/b was deleted",
    )?;
    store
        .delete(&parent, Expect::Version(vp))
        .during("delete a")?;
    expect_entry(
        &store,
        &grandchild,
        b"grandchild",
        vg,
        "after a was deleted",
    )?;
    expect_absent(&store, &child, "after it was deleted")?;
    Ok(Outcome::Passed)
}

/// The largest key the type allows ([`Key::MAX_SEGMENTS`] segments of
/// [`Key::MAX_SEGMENT_LEN`] bytes) is stored, read, listed and deleted like any other.
pub fn largest_key_is_stored<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let segments: Vec<String> = (0..MAX_SEGMENTS)
        .map(|i| format!("{i:x}").repeat(MAX_SEGMENT_LEN))
        .collect();
    let big = Key::new(segments).during("build the largest key")?;
    let v = store
        .put(&big, b"big", Expect::Absent)
        .during("put the largest key")?;
    expect_entry(&store, &big, b"big", v, "after put")?;
    let listed = store.list_all(&Prefix::all()).during("list")?;
    ensure!(
        listed == [big.clone()],
        "list returned {listed:?}, expected the largest key"
    );
    store
        .delete(&big, Expect::Version(v))
        .during("delete the largest key")?;
    expect_absent(&store, &big, "after delete")?;
    Ok(Outcome::Passed)
}

/// `list(prefix)` returns the keys under the prefix in key order, matching whole
/// segments only (`a` selects `a` and `a/..`, never `ab`).
pub fn list_is_ordered_and_matches_whole_segments<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let keys = [
        key(["b"])?,
        key(["a", "2"])?,
        key(["ab", "1"])?,
        key(["a", "10"])?,
        key(["a"])?,
        key(["a", "1", "x"])?,
        key(["a-", "1"])?,
        key(["A", "1"])?,
        key(["a", "1"])?,
    ];
    for k in &keys {
        store
            .put(k, b"v", Expect::Absent)
            .during(&format!("put {k}"))?;
    }
    let prefix = Prefix::new(["a"]).during("build prefix a")?;
    let listed = store.list_all(&prefix).during("list prefix a")?;
    let expected: Vec<Key> = keys
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ensure!(
        listed == expected,
        "list of prefix a returned {listed:?}, expected {expected:?}"
    );

    let all = store.list_all(&Prefix::all()).during("list everything")?;
    let sorted: Vec<Key> = keys
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ensure!(
        all == sorted,
        "list of all keys returned {all:?}, expected {sorted:?}"
    );

    let none = Prefix::new(["zzz"]).during("build prefix zzz")?;
    let empty = store.list(&none, None, 10).during("list an empty prefix")?;
    ensure!(
        empty.keys.is_empty() && empty.next.is_none(),
        "list of a prefix with no keys returned {empty:?}"
    );
    Ok(Outcome::Passed)
}

/// Paging with `after` and `limit` yields every key exactly once, no page holds
/// more than `limit`, the last page says there is no more, and a limit of zero is
/// an invalid argument.
pub fn list_pages_cover_every_key_once<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let mut expected = BTreeSet::new();
    for i in 0..25 {
        let k = key(["jobs", &format!("{i:03}")])?;
        store
            .put(&k, b"v", Expect::Absent)
            .during(&format!("put {k}"))?;
        expected.insert(k);
    }
    store
        .put(&key(["other"])?, b"v", Expect::Absent)
        .during("put other")?;
    let expected: Vec<Key> = expected.into_iter().collect();
    let prefix = Prefix::new(["jobs"]).during("build prefix jobs")?;

    for limit in [1, 7, 25, 100] {
        let mut seen = Vec::new();
        let mut after: Option<Key> = None;
        loop {
            let page = store
                .list(&prefix, after.as_ref(), limit)
                .during(&format!("list page with limit {limit}"))?;
            ensure!(
                page.keys.len() <= limit,
                "a page with limit {limit} held {} keys",
                page.keys.len()
            );
            ensure!(
                seen.len() + page.keys.len() <= expected.len(),
                "paging with limit {limit} returned more keys than exist"
            );
            seen.extend(page.keys);
            match page.next {
                Some(next) => {
                    ensure!(
                        after.as_ref().is_none_or(|before| next > *before),
                        "paging with limit {limit} returned a cursor {next:?} that does not advance past {after:?}"
                    );
                    after = Some(next);
                }
                None => break,
            }
        }
        ensure!(
            seen == expected,
            "paging with limit {limit} returned {seen:?}, expected each key once in order"
        );
    }

    let cursor = key(["jobs", "010", "not-a-key"])?;
    let page = store
        .list(&prefix, Some(&cursor), 2)
        .during("list after a missing key")?;
    let want = [key(["jobs", "011"])?, key(["jobs", "012"])?];
    ensure!(
        page.keys == want,
        "list after a cursor that is not a key returned {:?}",
        page.keys
    );

    expect_invalid_argument(store.list(&prefix, None, 0), "list with limit 0")?;
    Ok(Outcome::Passed)
}

/// Each page reflects the store when it is read: a key written after the cursor
/// between two pages appears, a key deleted after the cursor does not.
pub fn list_sees_writes_between_pages<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    for name in ["b", "d", "f", "h"] {
        store
            .put(&key(["q", name])?, b"v", Expect::Absent)
            .during(&format!("put q/{name}"))?;
    }
    let prefix = Prefix::new(["q"]).during("build prefix q")?;
    let first = store.list(&prefix, None, 2).during("first page")?;
    ensure!(
        first.keys == [key(["q", "b"])?, key(["q", "d"])?],
        "first page of two returned {:?}",
        first.keys
    );
    let Some(cursor) = first.next else {
        return Err(super::Violation::new(
            "first page of two out of four keys said there was no more",
        ));
    };
    store
        .put(&key(["q", "a"])?, b"v", Expect::Absent)
        .during("put q/a")?;
    store
        .put(&key(["q", "e"])?, b"v", Expect::Absent)
        .during("put q/e")?;
    store
        .delete(&key(["q", "f"])?, Expect::Any)
        .during("delete q/f")?;
    let rest = store
        .list(&prefix, Some(&cursor), 10)
        .during("second page")?;
    let want = [key(["q", "e"])?, key(["q", "h"])?];
    ensure!(
        rest.keys == want && rest.next.is_none(),
        "after writes between pages the second page returned {rest:?}, expected {want:?}"
    );
    expect_value(&store, &key(["q", "a"])?, b"v", "written between pages")?;
    Ok(Outcome::Passed)
}
