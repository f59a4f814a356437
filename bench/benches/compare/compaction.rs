//! Write latency during compaction: one thread updates records of a LogStore
//! of `records` live records at full durability, first with nothing else
//! running, then while another thread compacts the store again and again
//! ([`LogStore::compact`]), until the cell's time is up and at least one
//! compaction has finished. The p99 of the second run must stay within 3x of
//! the first's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;
use jobsafe::{Batch, Durability, Expect, Key, LogStore, Store};

use crate::common::kv::value;
use crate::common::latency::Histogram;
use crate::common::{BenchResult, RunDir, sync_all};
use crate::compare::run::Length;
use crate::compare::targets::{Bound, Target};

/// Records per batch of the untimed fill.
const FILL_BATCH: usize = 1_000;

/// What the section measured.
#[derive(Clone, Debug)]
pub(crate) struct Compacting {
    pub(crate) records: usize,
    pub(crate) quiet: Histogram,
    pub(crate) during: Histogram,
    /// Compactions that finished while the second run wrote.
    pub(crate) compactions: u64,
    /// Seconds of the first compaction.
    pub(crate) compaction_secs: f64,
    pub(crate) fsyncs_per_write: f64,
}

impl Compacting {
    pub(crate) fn target(&self) -> Target {
        Target::new(
            format!(
                "compaction: put p99 during / without, {} records",
                self.records
            ),
            Some(self.during.quantile_us(0.99) / self.quiet.quantile_us(0.99)),
            Bound::AtMost(3.0),
        )
    }
}

pub(crate) fn measure(
    records: usize,
    length: Length,
    run_dir: &mut RunDir,
) -> BenchResult<Compacting> {
    let dir = run_dir.fresh("compaction")?;
    eprintln!("compaction: writing {records} records");
    let keys: Vec<Key> = (0..records)
        .map(|i| Key::new(["bench", &format!("rec-{i:09}")]))
        .collect::<Result<_, _>>()?;
    let bulk = LogStore::builder(&dir)
        .durability(Durability::AtomicOnly)
        .no_background_compaction()
        .open()?;
    let first = value('1');
    for chunk in keys.chunks(FILL_BATCH) {
        let batch = chunk.iter().fold(Batch::new(), |b, key| {
            b.put(key, first.clone(), Expect::Absent)
        });
        bulk.apply(&batch)?;
    }
    drop(bulk);
    sync_all()?;

    let vfs = Counting::new(StdVfs);
    let store = LogStore::builder(&dir)
        .vfs(vfs.clone())
        .no_background_compaction()
        .open()?;
    let second = value('2');
    let syncs_before = vfs.counts().syncs();
    let write = |i: u64| -> BenchResult {
        let key = &keys[(i.wrapping_mul(7_919) % keys.len() as u64) as usize];
        store.put(key, &second, Expect::Any)?;
        Ok(())
    };

    eprintln!("compaction: writing without compaction");
    let done = AtomicBool::new(false);
    let mut quiet = Histogram::default();
    let mut i = 0;
    time_writes(&mut quiet, &mut i, length, || true, &write)?;

    eprintln!("compaction: writing while compacting");
    let compactions = AtomicU64::new(0);
    let first_secs = AtomicU64::new(0);
    let mut during = Histogram::default();
    let compactor = thread::scope(|s| {
        let compactor = s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let start = Instant::now();
                store.compact().map_err(|e| format!("compaction: {e}"))?;
                if compactions.fetch_add(1, Ordering::Relaxed) == 0 {
                    let micros = start.elapsed().as_micros();
                    first_secs.store(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
                }
            }
            Ok::<_, String>(())
        });
        let written = time_writes(
            &mut during,
            &mut i,
            length,
            || compactions.load(Ordering::Relaxed) > 0,
            &write,
        );
        done.store(true, Ordering::Relaxed);
        let compacted = compactor
            .join()
            .unwrap_or_else(|_| Err("the compaction thread panicked".to_owned()));
        written.map_err(|e| e.to_string()).and(compacted)
    });
    compactor?;
    let writes = quiet.count() + during.count();
    Ok(Compacting {
        records,
        quiet,
        during,
        compactions: compactions.load(Ordering::Relaxed),
        compaction_secs: first_secs.load(Ordering::Relaxed) as f64 / 1e6,
        fsyncs_per_write: (vfs.counts().syncs() - syncs_before) as f64 / writes as f64,
    })
}

/// Runs `write(i)`, `write(i + 1)`, ... recording each latency, until
/// `length` is up and `enough()` holds.
fn time_writes(
    latency: &mut Histogram,
    i: &mut u64,
    length: Length,
    enough: impl Fn() -> bool,
    write: &impl Fn(u64) -> BenchResult,
) -> BenchResult {
    let start = Instant::now();
    let deadline = start + length.time;
    let mut last = start;
    let mut ops = 0;
    while ops < length.min_ops || last < deadline || !enough() {
        write(*i)?;
        let now = Instant::now();
        latency.record(now - last);
        last = now;
        *i += 1;
        ops += 1;
    }
    Ok(())
}
