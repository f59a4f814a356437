//! Clauses about [`Store::scan`]: every key under a prefix once, in key order,
//! in pages, whatever is written meanwhile.

use std::collections::BTreeSet;

use super::keys::hostile_segments;
use super::support::{During, ensure, expect_invalid_argument, key};
use super::{Harness, Outcome, Verdict, Violation};
use crate::key::{Key, Prefix};
use crate::store::{Expect, Store};

/// Reads a whole scan, checking each page against `page_size`, and stops as
/// soon as it has more keys than `bound` (a scan that never ends is a
/// violation, not a hang).
fn read_scan(
    store: &impl Store,
    prefix: &Prefix,
    page_size: usize,
    bound: usize,
) -> Result<Vec<Key>, Violation> {
    let mut seen = Vec::new();
    for page in store.scan(prefix, page_size) {
        let page = page.during(&format!("scan {prefix} in pages of {page_size}"))?;
        ensure!(
            !page.is_empty() && page.len() <= page_size,
            "scan {prefix} in pages of {page_size} returned a page of {} keys",
            page.len()
        );
        seen.extend(page);
        ensure!(
            seen.len() <= bound,
            "scan {prefix} in pages of {page_size} returned more than the {bound} keys there are"
        );
    }
    Ok(seen)
}

/// `scan(prefix, page_size)` returns every key under the prefix exactly once, in
/// key order, in non-empty pages of at most `page_size` keys, matching whole
/// segments only (`s` selects `s` and `s/..`, never `s-` or `sa`), whatever the
/// segments; a page size of 0 is an invalid argument.
pub fn scan_returns_every_key_once_in_order<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let mut keys = vec![
        key(["s"])?,
        key(["s-", "x"])?,
        key(["sa"])?,
        key(["S", "x"])?,
        key(["r", "x"])?,
        key(["t"])?,
        key(["s", "n", "1", "2", "3"])?,
        key(["s", "n", "1"])?,
    ];
    // Enough keys in one place for pages to end inside it.
    for i in 0..25 {
        keys.push(key(["s", "many", &format!("{i:03}")])?);
    }
    for segment in hostile_segments() {
        let alone = Key::new(["s", segment.as_str()]).during(&format!("key s/{segment:?}"))?;
        let nested =
            Key::new(["s", segment.as_str(), "leaf"]).during(&format!("key s/{segment:?}/leaf"))?;
        keys.extend([alone, nested]);
    }
    let keys: BTreeSet<Key> = keys.into_iter().collect();
    for k in &keys {
        store
            .put(k, b"v", Expect::Absent)
            .during(&format!("put {k}"))?;
    }
    let prefix = Prefix::new(["s"]).during("build prefix s")?;
    let expected: Vec<Key> = keys
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect();
    for page_size in [1, 2, 7, 1000] {
        let seen = read_scan(&store, &prefix, page_size, expected.len())?;
        ensure!(
            seen == expected,
            "scan of prefix s in pages of {page_size} returned {} keys, expected the {} under it \
             once each in key order; first difference: {:?}",
            seen.len(),
            expected.len(),
            seen.iter().zip(&expected).find(|(a, b)| a != b)
        );
    }
    let all: Vec<Key> = keys.iter().cloned().collect();
    let seen = read_scan(&store, &Prefix::all(), 7, all.len())?;
    ensure!(
        seen == all,
        "scan of every key returned {} keys, expected the {} written, in key order",
        seen.len(),
        all.len()
    );
    let t = Prefix::new(["t"]).during("build prefix t")?;
    let seen = read_scan(&store, &t, 2, 1)?;
    ensure!(
        seen == [key(["t"])?],
        "scan of prefix t, a key with none under it, returned {seen:?}"
    );
    let none = Prefix::new(["zzz"]).during("build prefix zzz")?;
    let seen = read_scan(&store, &none, 2, 0)?;
    ensure!(
        seen.is_empty(),
        "scan of a prefix with no keys returned {seen:?}"
    );

    let mut zero = store.scan(&prefix, 0);
    let first = zero
        .next()
        .ok_or_else(|| Violation::new("scan with page size 0 returned nothing, not an error"))?;
    expect_invalid_argument(first, "scan with page size 0")?;
    ensure!(
        zero.next().is_none(),
        "scan with page size 0 went on after its error"
    );
    Ok(Outcome::Passed)
}

/// Keys written or deleted during a scan may be returned or not, but the scan
/// stays in key order and returns no key twice, and a key present for the whole
/// scan (updated meanwhile, say) is returned exactly once.
pub fn scan_returns_a_key_written_during_it_at_most_once<H: Harness>(h: &mut H) -> Verdict {
    let store = h.fresh().during("open a fresh store")?;
    let name = |i: usize| format!("{i:02}");
    // Even numbers, every fourth with a key under it too.
    let mut ever: BTreeSet<Key> = BTreeSet::new();
    for i in (0..40).step_by(2) {
        ever.insert(key(["q", &name(i)])?);
        if i % 4 == 0 {
            ever.insert(key(["q", &name(i), "sub"])?);
        }
    }
    for k in &ever {
        store
            .put(k, b"v", Expect::Absent)
            .during(&format!("put {k}"))?;
    }
    let mut throughout = ever.clone();
    let prefix = Prefix::new(["q"]).during("build prefix q")?;
    let mut seen: Vec<Key> = Vec::new();
    let bound = 4 * ever.len();
    for page in store.scan(&prefix, 3) {
        let page = page.during("scan prefix q in pages of 3")?;
        seen.extend(page);
        ensure!(
            seen.len() <= bound,
            "scan of prefix q returned more than {bound} keys, of the {} ever written",
            ever.len()
        );
        let Some(last) = seen.last() else { continue };
        let Some(at) = last.segments().get(1).and_then(|s| s.parse::<usize>().ok()) else {
            continue;
        };
        // After the cursor: a new key and a new key in a new place, an update
        // of a key that stays, a delete. Before it: a new key and an update.
        let created = [
            key(["q", &name(at + 1)])?,
            key(["q", &name(at + 1), "sub"])?,
            key(["q", &name(at.saturating_sub(1)), "new"])?,
        ];
        for k in created {
            store
                .put(&k, b"new", Expect::Any)
                .during(&format!("put {k} during the scan"))?;
            ever.insert(k);
        }
        for updated in [key(["q", &name(at + 2)])?, key(["q", &name(at)])?] {
            if throughout.contains(&updated) {
                store
                    .put(&updated, b"updated", Expect::Any)
                    .during(&format!("update {updated} during the scan"))?;
            }
        }
        let deleted = key(["q", &name(at + 4)])?;
        if throughout.remove(&deleted) {
            store
                .delete(&deleted, Expect::Any)
                .during(&format!("delete {deleted} during the scan"))?;
        }
    }
    let twice = seen.windows(2).find(|w| w[0] >= w[1]);
    ensure!(
        twice.is_none(),
        "with writes during it, scan returned {:?} after {:?}: out of order or twice",
        twice.map(|w| &w[1]),
        twice.map(|w| &w[0])
    );
    let stranger = seen.iter().find(|k| !ever.contains(*k));
    ensure!(
        stranger.is_none(),
        "scan returned {stranger:?}, which was never written"
    );
    let returned: BTreeSet<&Key> = seen.iter().collect();
    let missed: Vec<&Key> = throughout
        .iter()
        .filter(|k| !returned.contains(k))
        .collect();
    ensure!(
        missed.is_empty(),
        "scan missed {missed:?}, present for the whole scan (some updated during it)"
    );
    Ok(Outcome::Passed)
}
