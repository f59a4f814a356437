//! What reading every key under a large `DirStore` prefix costs: one
//! [`scan`](jobsafe::Store::scan) in pages, next to one `list` of every key in a
//! single page, which reads the directory once and is as cheap as a listing
//! gets.
//!
//! `cargo bench -p jobsafe-bench --bench scan` fills a `DirStore` with 200,000
//! keys in one directory (`jobs/job/<id>`, the layout of a job table) at
//! **`Durability::AtomicOnly`, relaxed**: the fill flushes nothing, which
//! changes nothing of what is timed (reads only) and saves minutes. Then, in
//! rounds that alternate which goes first, it times one
//! `list(prefix, None, usize::MAX)` and one `scan(prefix, 1000)` read to the
//! end, and reports their medians and their ratio against the target: the scan
//! costs at most 3x the list. For scale it also times the first pages of the
//! loop of `list` calls that a scan replaces, each page of which reads and
//! sorts the whole directory again.
//!
//! `JOBSAFE_BENCH_SMOKE=1` runs one round with 10,000 keys, for CI;
//! `JOBSAFE_BENCH_OPS=N` fills `N` keys instead, `JOBSAFE_BENCH_ROUNDS=N` runs
//! `N` rounds.

mod common;

use std::time::Instant;

use jobsafe::{DirStore, Durability, Expect, Key, Prefix, Store};

use self::common::report::{self, Measurement, Ratio};
use self::common::{BenchResult, Config, RunDir, Sample, sync_all};

/// Keys in a full run: the size at which paging with `list` was seen to take
/// minutes.
const FULL_KEYS: usize = 200_000;
/// Keys in a smoke run.
const SMOKE_KEYS: usize = 10_000;
/// The scan's page size.
const PAGE: usize = 1000;
/// The target: a scan takes at most this many times as long as one list.
const TARGET: f64 = 3.0;
/// Pages of the `list` loop timed for scale (each costs about one whole list).
const LIST_LOOP_PAGES: usize = 5;
/// A value the size of a small job record.
const VALUE: &[u8] = br#"{"attempt":0,"kind":"render","metadata":{},"owner":"bench","schema":1,"status":"complete"}"#;

fn main() -> BenchResult {
    let config = Config::from_env()?;
    let mut run = RunDir::create("scan")?;
    let keys = config.ops_or_smoke(FULL_KEYS, SMOKE_KEYS);
    println!(
        "# jobsafe scan bench\n\n{config}; run directory {}\n",
        run.path().display()
    );

    let store = DirStore::builder(run.fresh("dirstore")?)
        .durability(Durability::AtomicOnly)
        .open()?;
    let prefix = Prefix::new(["jobs", "job"])?;
    let start = Instant::now();
    for _ in 0..keys {
        let id = format!("job-{}", uuid::Uuid::new_v4().simple());
        store.put(&Key::new(["jobs", "job", &id])?, VALUE, Expect::Absent)?;
    }
    let fill = start.elapsed().as_secs_f64();
    let synced = sync_all()?;
    println!(
        "Filled {keys} keys under `{prefix}`, one directory, in {fill:.1} s at \
         `Durability::AtomicOnly` (relaxed: nothing flushed; only reads are timed), \
         then ran `sync` ({synced:.1} s).\n"
    );

    let (mut lists, mut scans) = (Vec::new(), Vec::new());
    for round in 0..config.rounds() {
        eprintln!("round {}/{}: list and scan", round + 1, config.rounds());
        // Alternate which goes first, so that neither always meets a cache the
        // other warmed.
        if round % 2 == 0 {
            lists.push(time_list(&store, &prefix, keys)?);
            scans.push(time_scan(&store, &prefix, keys)?);
        } else {
            scans.push(time_scan(&store, &prefix, keys)?);
            lists.push(time_list(&store, &prefix, keys)?);
        }
    }
    let list = Measurement::from_rounds(&lists);
    let scan = Measurement::from_rounds(&scans);
    let list_loop = Measurement::from_rounds(&[time_list_loop(&store, &prefix)?]);
    let all = vec![list.clone(), scan.clone(), list_loop.clone()];

    println!(
        "## Measurements (an operation is one key read)\n\n{}",
        report::measurements(&all)
    );
    let ratio = Ratio::new(&scan.bench, &list.bench).at_least(1.0 / TARGET);
    let value = ratio.value(&all)?;
    println!(
        "## Ratios\n\n{}",
        report::ratios(std::slice::from_ref(&ratio), &all)?
    );
    let times = 1.0 / value.paired;
    println!(
        "scan / list, time: {times:.2}x (median of the rounds' ratios; target at most \
         {TARGET:.0}x): {}",
        if times <= TARGET { "met" } else { "MISSED" }
    );
    let pages = keys.div_ceil(PAGE);
    println!(
        "A loop of `list` pages of {PAGE}, as before `scan`: {:.1} ms a page, each reading \
         the whole directory again; all {pages} pages about {:.1} s (from the first {} \
         pages), against {:.3} s for the scan.\n",
        1e3 * list_loop.secs / list_loop.ops as f64 * PAGE as f64,
        list_loop.secs / list_loop.ops as f64 * keys as f64,
        list_loop.ops.div_ceil(PAGE),
        scan.secs,
    );
    for m in &all {
        println!("{}", m.json());
    }
    println!("{}", ratio.json(value));
    drop(store);
    run.remove()
}

/// One `list` of every key under `prefix`, in one page.
fn time_list(store: &DirStore, prefix: &Prefix, keys: usize) -> BenchResult<Sample> {
    let start = Instant::now();
    let page = store.list(prefix, None, usize::MAX)?;
    let secs = start.elapsed().as_secs_f64();
    if page.keys.len() != keys || page.next.is_some() {
        return Err(format!("list returned {} of {keys} keys", page.keys.len()).into());
    }
    Ok(Sample {
        bench: "dirstore/list_one_page".to_owned(),
        ops: keys,
        secs,
        syncs: None,
    })
}

/// One scan of every key under `prefix` in pages of [`PAGE`], checking the
/// pages' sizes and order as it goes (a comparison a page).
fn time_scan(store: &DirStore, prefix: &Prefix, keys: usize) -> BenchResult<Sample> {
    let start = Instant::now();
    let mut seen = 0;
    let mut last: Option<Key> = None;
    for page in store.scan(prefix, PAGE) {
        let page = page?;
        let ordered = last.as_ref().is_none_or(|last| page.first() > Some(last));
        if page.len() > PAGE || !ordered {
            return Err(format!("scan returned a page of {} keys out of order", page.len()).into());
        }
        seen += page.len();
        last = page.last().cloned();
    }
    let secs = start.elapsed().as_secs_f64();
    if seen != keys {
        return Err(format!("scan returned {seen} of {keys} keys").into());
    }
    Ok(Sample {
        bench: format!("dirstore/scan_{PAGE}"),
        ops: keys,
        secs,
        syncs: None,
    })
}

/// The first [`LIST_LOOP_PAGES`] pages of a loop of `list` calls, each after
/// the last key of the page before.
fn time_list_loop(store: &DirStore, prefix: &Prefix) -> BenchResult<Sample> {
    let start = Instant::now();
    let mut read = 0;
    let mut after: Option<Key> = None;
    for _ in 0..LIST_LOOP_PAGES {
        let page = store.list(prefix, after.as_ref(), PAGE)?;
        read += page.keys.len();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(Sample {
        bench: format!("dirstore/list_loop_{PAGE}"),
        ops: read,
        secs: start.elapsed().as_secs_f64(),
        syncs: None,
    })
}
