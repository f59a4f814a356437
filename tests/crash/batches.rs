//! Store writes: multi-key batches survive a crash whole or not at all.
//!
//! The child applies batches to a `DirStore` or a `LogStore` and acknowledges
//! each one it got `Ok` for. Each batch `id` creates four records
//! `b/<id>/0..3`, moves the single token record from `tok/<previous>` to
//! `tok/<id>`, and compare-and-sets the counter `sum` to the number of batches
//! applied. A batch applied in part shows as a group of fewer than four records,
//! a missing or doubled token, or a counter that disagrees with the groups; a
//! lost acknowledged batch shows as a missing group.
//!
//! The `LogStore` compacts in the background after every few dozen batches, and
//! its child also compacts it now and then itself (reporting `begin compact`
//! first), so stops also land in compactions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use jobsafe::store::Applied;
use jobsafe::{Batch, Entry, Expect, Key, LogStore, Prefix, Store, Version};

use super::backend::{self, Backend};
use super::part::{ChildContext, Model, Outcome, Tally};

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

/// The parent's model: every batch acknowledged so far.
pub struct Batches {
    backend: Backend,
    root: PathBuf,
    acknowledged: BTreeSet<u64>,
    /// Whether the last report announced a compaction, and how many stops
    /// landed in one.
    compacting: bool,
    mid_compaction: u64,
}

impl Batches {
    pub fn new(backend: Backend, root: PathBuf) -> Self {
        backend.open(&root).unwrap();
        Batches {
            backend,
            root,
            acknowledged: BTreeSet::new(),
            compacting: false,
            mid_compaction: 0,
        }
    }
}

impl Model for Batches {
    fn absorb(&mut self, report: &str, tally: &mut Tally) {
        self.compacting = report == "begin compact";
        if let Some(id) = report.strip_prefix("ack ") {
            self.acknowledged.insert(id.parse().unwrap());
            tally.acknowledged += 1;
        }
    }

    /// Checks the whole store: every group whole, one token, the counter right,
    /// every acknowledged batch present.
    fn check(&mut self, iteration: u64, tally: &mut Tally) {
        if std::mem::take(&mut self.compacting) {
            self.mid_compaction += 1;
        }
        let Some(store) = tally.ok(iteration, "reopen", self.backend.open(&self.root)) else {
            return;
        };
        let Some(keys) = tally.ok(
            iteration,
            "list the batches",
            store.list_all(&Prefix::new(["b"]).unwrap()),
        ) else {
            return;
        };
        let mut groups: BTreeMap<u64, usize> = BTreeMap::new();
        for key in keys {
            *groups
                .entry(key.segments()[1].parse().unwrap())
                .or_default() += 1;
        }
        for (id, records) in &groups {
            if *records != KEYS_PER_BATCH {
                tally.violate(
                    iteration,
                    format!("batch {id} has {records} of its {KEYS_PER_BATCH} records"),
                );
            }
        }
        let Some(sum) = tally.ok(iteration, "read the counter", read_sum(&*store)) else {
            return;
        };
        let sum = sum.map_or(0, |(n, _)| n);
        if sum != groups.len() as u64 {
            tally.violate(
                iteration,
                format!("sum is {sum} but {} batches are present", groups.len()),
            );
        }
        let tokens = tally.ok(
            iteration,
            "list the tokens",
            store.list_all(&Prefix::new(["tok"]).unwrap()),
        );
        let expected_tokens: Vec<Key> = groups
            .keys()
            .last()
            .map(|id| token_key(*id))
            .into_iter()
            .collect();
        if let Some(tokens) = tokens
            && tokens != expected_tokens
        {
            tally.violate(
                iteration,
                format!("tokens {tokens:?}, expected {expected_tokens:?}"),
            );
        }
        for id in &self.acknowledged {
            if !groups.contains_key(id) {
                tally.violate(iteration, format!("acknowledged batch {id} is missing"));
            }
        }
    }

    /// How many compactions the stops met (whether a child's background
    /// compaction finished before its stop varies, so this is not checked).
    fn extra(&self) -> String {
        match self.backend {
            Backend::Log | Backend::LogExclusive => LogStore::open(&self.root)
                .and_then(|store| store.stats())
                .map_or_else(
                    |e| format!("compactions=unknown ({e})"),
                    |stats| {
                        format!(
                            "compactions={} mid_compaction={}",
                            stats.generation, self.mid_compaction
                        )
                    },
                ),
            Backend::Dir => String::new(),
        }
    }
}

fn read_sum(store: &dyn Store) -> jobsafe::Result<Option<(u64, Version)>> {
    Ok(store.get(&sum_key())?.map(|Entry { value, version, .. }| {
        let n = std::str::from_utf8(&value)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(u64::MAX);
        (n, version)
    }))
}

/// Child: applies batches until stopped, reporting `begin <id>` before each and
/// `ack <id>` after each `Ok`.
pub fn work(backend: Backend, root: &std::path::Path, ctx: &ChildContext) -> Outcome {
    let log = match backend.log_mode() {
        Some(exclusive) => Some(Arc::new(backend::open_log(root, exclusive)?)),
        None => None,
    };
    let store: Arc<dyn Store> = match &log {
        Some(log) => log.clone(),
        None => backend.open(root)?,
    };
    let mut rng = fastrand::Rng::with_seed(ctx.seed);
    let first = ctx.iteration * IDS_PER_CHILD;
    let (mut sum, mut sum_version) = read_sum(&*store)?.map_or((0, None), |(n, v)| (n, Some(v)));
    let tokens = store.list_all(&Prefix::new(["tok"]).unwrap())?;
    if tokens.len() > 1 {
        return Err(format!("found tokens {tokens:?}").into());
    }
    let mut token = match tokens.first() {
        Some(key) => Some((
            key.clone(),
            store.get(key)?.ok_or("the token vanished")?.version,
        )),
        None => None,
    };

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
        ctx.report(&format!("begin {id}"));
        let applied = store.apply(&batch)?;

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
        ctx.report(&format!("ack {id}"));
        if let Some(log) = &log
            && rng.u8(0..8) == 0
        {
            ctx.report("begin compact");
            log.compact()?;
            ctx.report("compacted");
        }
    }
    Ok(())
}
