//! Flatness: the cost of a LogStore ledger reserve must not grow with the
//! number of records. A small and a large ledger are loaded once (through a
//! second handle at `Durability::AtomicOnly`, then a system-wide `sync`), and
//! new reserves at full durability from one thread are timed in alternating
//! rounds; each size reports its median round.

use jobsafe::LogStore;
use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;

use crate::common::ledger::{self, ACCOUNTS, Job, LedgerEngine, Outcome, StoreLedger, size_label};
use crate::common::{BenchResult, RunDir};
use crate::compare::cell::{Bench, Cell, Impl, Worker};
use crate::compare::options::Options;
use crate::compare::run::{self, Row};
use crate::compare::targets::{Bound, Target};

/// Rounds per size, alternating small and large.
const ROUNDS: usize = 3;

/// What the section measured: the median round of each size.
pub(crate) struct Flatness {
    pub(crate) small: (usize, Row),
    pub(crate) large: (usize, Row),
    /// Seconds the large load took (reserving, then `sync`).
    pub(crate) load_secs: f64,
}

impl Flatness {
    /// Cost per reserve at the large size over the small: at most 1.25.
    pub(crate) fn target(&self) -> Target {
        Target::new(
            format!(
                "flat: logstore reserve cost at {} / at {} records",
                self.large.0, self.small.0
            ),
            Some(self.small.1.ops_per_s() / self.large.1.ops_per_s()),
            Bound::AtMost(1.25),
        )
    }

    /// The rows, named `reserve_new_<size>`.
    pub(crate) fn json(&self) -> Vec<String> {
        [&self.small, &self.large]
            .iter()
            .map(|(size, row)| row.json_as(&format!("reserve_new_{}", size_label(*size))))
            .collect()
    }
}

type Ledger = StoreLedger<LogStore<Counting<StdVfs>>>;

pub(crate) fn measure(options: &Options, run_dir: &mut RunDir) -> BenchResult<Flatness> {
    let mut load_secs = 0.0;
    let mut ledgers = Vec::new();
    for size in [options.small, options.records] {
        let mut ledger = StoreLedger::log(&run_dir.fresh(&format!("flat-{}", size_label(size)))?)?;
        eprintln!("flat: loading {size} reservations");
        let loaded = ledger.load(&ledger::jobs(size))?;
        load_secs = loaded.secs + loaded.flush_secs.unwrap_or(0.0);
        ledgers.push((size, ledger));
    }
    let mut rounds: Vec<Vec<Row>> = vec![Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (k, (size, ledger)) in ledgers.iter_mut().enumerate() {
            let row = run::run(
                Bench::ReserveNew,
                Impl::LogStore,
                cell(ledger)?,
                options.length,
            )?;
            eprintln!("flat: {size} records, {:.0} reserves/s", row.ops_per_s());
            row.check_durable()?;
            rounds[k].push(row);
        }
    }
    let [small, large] = [0, 1].map(|k| median(&mut rounds[k]));
    Ok(Flatness {
        small: (options.small, small?),
        large: (options.records, large?),
        load_secs,
    })
}

/// One thread reserving new job ids in `ledger`; one reserve untimed first, in
/// which the handle reads what the loading handle wrote.
fn cell(ledger: &mut Ledger) -> BenchResult<Cell> {
    let mut handle = ledger
        .handles(1)?
        .and_then(|mut h| h.pop())
        .ok_or("a LogStore ledger gave no handle")?;
    let new_job = |i: u64| Job {
        account: format!("lic:{:04}", i % ACCOUNTS as u64),
        job_id: uuid::Uuid::now_v7().to_string(),
    };
    let warm = new_job(0);
    ledger::check("warm-up", &warm, handle.reserve(&warm)?, Outcome::New)?;
    let worker: Worker = Box::new(move |i| {
        let job = new_job(i);
        let outcome = handle.reserve(&job)?;
        Ok(ledger::check("flat", &job, outcome, Outcome::New)?)
    });
    Ok(Cell {
        workers: vec![worker],
        syncs: ledger.syncs(),
    })
}

/// The round of median throughput.
fn median(rows: &mut [Row]) -> BenchResult<Row> {
    rows.sort_by(|a, b| a.ops_per_s().total_cmp(&b.ops_per_s()));
    rows.get(rows.len() / 2)
        .cloned()
        .ok_or_else(|| "no flatness round ran".into())
}
