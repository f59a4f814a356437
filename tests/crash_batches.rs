//! Batches survive SIGKILL whole or not at all.
//!
//! A child process applies multi-key batches to a `DirStore` or a `LogStore` (one
//! test each) and reports each one it got `Ok` for; the parent kills it with SIGKILL at a varying point after a
//! few acknowledgements, so the kill lands while a batch is in flight, then
//! reopens the store (which completes or discards an interrupted batch) and
//! checks every batch ever written.
//!
//! Each batch `id` creates four records `b/<id>/0..3`, moves the single token
//! record from `tok/<previous>` to `tok/<id>`, and compare-and-sets the counter
//! `sum` to the number of batches applied. A batch applied in part shows as a
//! group of fewer than four records, a missing or doubled token, or a counter
//! that disagrees with the groups.
//!
//! The `LogStore` children compact in the background after every few dozen
//! batches, so kills also land in compactions.
//!
//! `JOBSAFE_CRASH_ITERATIONS` sets the number of kills per backend (200 by
//! default);
//! `JOBSAFE_CRASH_SEED` replays a run's kill points.
// Test code, children included: a step that fails fails the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::child::{self, Child};
use jobsafe::{Applied, Batch, DirStore, Entry, Expect, Key, LogStore, Prefix, Store, Version};

const KEYS_PER_BATCH: usize = 4;
/// Batch ids of one child start at its iteration times this.
const IDS_PER_CHILD: u64 = 1_000_000;

fn sum_key() -> Key {
    Key::new(["sum"]).unwrap()
}

fn token_key(id: u64) -> Key {
    Key::new(["tok", &id.to_string()]).unwrap()
}

fn record_key(id: u64, i: usize) -> Key {
    Key::new(["b", &id.to_string(), &i.to_string()]).unwrap()
}

/// The store under test, by name.
fn open(backend: &str, root: &Path) -> jobsafe::Result<Box<dyn Store>> {
    Ok(match backend {
        "dir" => Box::new(DirStore::open(root)?),
        "log" => Box::new(
            LogStore::builder(root)
                .compact_when(32 << 10, 0.05)
                .open()?,
        ),
        other => panic!("no backend {other}"),
    })
}

#[test]
fn killed_batch_writers_leave_whole_batches() {
    crash_loop("killed_batch_writers_leave_whole_batches", "dir");
}

#[test]
fn killed_log_store_writers_leave_whole_batches() {
    crash_loop("killed_log_store_writers_leave_whole_batches", "log");
}

fn crash_loop(test: &str, backend: &str) {
    if child::role().as_deref() == Some("batch-writer") {
        return write_batches_in_child(backend);
    }
    let iterations: u64 = env_or("JOBSAFE_CRASH_ITERATIONS", 200);
    let seed: u64 = env_or("JOBSAFE_CRASH_SEED", fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    open(backend, &root).unwrap();

    let mut acknowledged = BTreeSet::new();
    let mut checks = Checks::default();
    for iteration in 1..=iterations {
        let mut vars = child::store_vars(&root);
        vars.insert(
            "JOBSAFE_TEST_FIRST_BATCH",
            (iteration * IDS_PER_CHILD).to_string(),
        );
        let mut writer = Child::spawn(test, "batch-writer", &vars);

        let wait_for = rng.usize(1..=3);
        let mut reports: Vec<String> = (0..wait_for).map(|_| writer.expect_report()).collect();
        // Vary where in the next batch the kill lands; now and then late enough
        // for a background compaction to finish.
        let late = if rng.u8(0..4) == 0 { 30_000 } else { 3_000 };
        std::thread::sleep(Duration::from_micros(rng.u64(0..late)));
        reports.extend(writer.kill());
        for report in reports {
            let id = report.strip_prefix("ack ").unwrap().parse::<u64>().unwrap();
            acknowledged.insert(id);
        }

        let store = open(backend, &root)
            .unwrap_or_else(|e| panic!("reopen after kill {iteration} (seed {seed}): {e}"));
        checks.run(&*store, &acknowledged, iteration);
    }

    // How many compactions the kills met (printed, not asserted: whether a
    // child's background compaction finished before its kill varies).
    let compactions = match backend {
        "log" => format!(
            " compactions={}",
            LogStore::open(&root).unwrap().stats().unwrap().generation
        ),
        _ => String::new(),
    };
    println!(
        "crash_batches: store={backend} kills={iterations} acknowledged_batches_checked={} \
         violations={}{compactions} seed={seed}",
        checks.acknowledged_checked,
        checks.violations.len()
    );
    assert!(
        checks.violations.is_empty(),
        "violations (seed {seed}):\n{}",
        checks.violations.join("\n")
    );
    assert!(checks.acknowledged_checked > 0, "no batch was acknowledged");
}

#[derive(Default)]
struct Checks {
    /// Acknowledged batches, each checked after its kill and every later one.
    acknowledged_checked: usize,
    violations: Vec<String>,
}

impl Checks {
    /// Checks the whole store after kill number `iteration`.
    fn run(&mut self, store: &dyn Store, acknowledged: &BTreeSet<u64>, iteration: u64) {
        let mut groups: BTreeMap<u64, usize> = BTreeMap::new();
        for key in store.list_all(&Prefix::new(["b"]).unwrap()).unwrap() {
            *groups
                .entry(key.segments()[1].parse().unwrap())
                .or_default() += 1;
        }
        for (id, records) in &groups {
            if *records != KEYS_PER_BATCH {
                self.violate(
                    iteration,
                    format!("batch {id} has {records} of its {KEYS_PER_BATCH} records"),
                );
            }
        }
        let sum = read_sum(store).map_or(0, |(n, _)| n);
        if sum != groups.len() as u64 {
            self.violate(
                iteration,
                format!("sum is {sum} but {} batches are present", groups.len()),
            );
        }
        let tokens = store.list_all(&Prefix::new(["tok"]).unwrap()).unwrap();
        let expected_tokens: Vec<Key> = groups
            .keys()
            .last()
            .map(|id| token_key(*id))
            .into_iter()
            .collect();
        if tokens != expected_tokens {
            self.violate(
                iteration,
                format!("tokens {tokens:?}, expected {expected_tokens:?}"),
            );
        }
        self.acknowledged_checked = acknowledged.len();
        for id in acknowledged {
            if !groups.contains_key(id) {
                self.violate(iteration, format!("acknowledged batch {id} is missing"));
            }
        }
    }

    fn violate(&mut self, iteration: u64, what: String) {
        self.violations
            .push(format!("after kill {iteration}: {what}"));
    }
}

fn read_sum(store: &dyn Store) -> Option<(u64, Version)> {
    store
        .get(&sum_key())
        .unwrap()
        .map(|Entry { value, version }| {
            (
                std::str::from_utf8(&value).unwrap().parse().unwrap(),
                version,
            )
        })
}

/// Child: applies batches until killed, reporting `ack <id>` after each `Ok`.
fn write_batches_in_child(backend: &str) {
    let store = open(backend, &child::store_root()).unwrap();
    let first: u64 = child::var("JOBSAFE_TEST_FIRST_BATCH").parse().unwrap();
    let (mut sum, mut sum_version) = read_sum(&store).map_or((0, None), |(n, v)| (n, Some(v)));
    let tokens = store.list_all(&Prefix::new(["tok"]).unwrap()).unwrap();
    assert!(tokens.len() <= 1, "found tokens {tokens:?}");
    let mut token = tokens
        .first()
        .map(|key| (key.clone(), store.get(key).unwrap().unwrap().version));

    for id in first..first + IDS_PER_CHILD {
        let mut batch = Batch::new().put(
            &sum_key(),
            (sum + 1).to_string(),
            sum_version.map_or(Expect::Absent, Expect::Version),
        );
        if let Some((key, version)) = &token {
            batch = batch.delete(key, Expect::Version(*version));
        }
        batch = batch.put(&token_key(id), id.to_string(), Expect::Absent);
        for i in 0..KEYS_PER_BATCH {
            batch = batch.put(&record_key(id, i), id.to_string(), Expect::Absent);
        }
        let applied = store
            .apply(&batch)
            .unwrap_or_else(|e| panic!("batch {id}: {e}"));

        let versions: Vec<Version> = applied
            .iter()
            .filter_map(|a| match a {
                Applied::Put(v) => Some(*v),
                Applied::Deleted(_) => None,
            })
            .collect();
        sum += 1;
        sum_version = Some(versions[0]);
        token = Some((token_key(id), versions[1]));
        child::report(&format!("ack {id}"));
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid number")),
        Err(_) => default,
    }
}
