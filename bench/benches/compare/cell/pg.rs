//! jobsafe's ledger, locks and jobs over `PgStore`, one schema per cell, on the
//! server `JOBSAFE_PG_URL` names. The server flushes its WAL in another
//! process: the bench cannot count those flushes, and the column says so
//! (`n/a`) rather than claim zero.

use std::path::Path;
use std::sync::Arc;

use jobsafe::{Durability, JobState, SystemClock};

use super::workers;
use super::{Bench, Cell, Setup, Worker};
use crate::common::jobs;
use crate::common::lease::JobLockEngine;
use crate::common::ledger::StoreLedger;
use crate::common::{BenchResult, Syncs, pg};

pub(super) fn prepare(setup: Setup, dir: &Path) -> BenchResult<Cell> {
    match setup.bench {
        Bench::ReserveNew | Bench::ReserveDup => workers::reserve(StoreLedger::pg(dir)?, setup),
        Bench::LockCycle => {
            // One pool shared by the threads, as a service's threads share it.
            let store = Arc::new(pg::store(Durability::Full)?);
            let engines = (0..setup.threads)
                .map(|_| JobLockEngine::new(Arc::clone(&store), Syncs::Uncounted))
                .collect();
            workers::lock(engines, Syncs::Uncounted)
        }
        Bench::Lifecycle => {
            // The jobs' records and events notify (see `PgStore`, "Change
            // notifications"): this is what they cost.
            let store = Arc::new(pg::store(Durability::Full)?);
            let state = JobState::new(store, Arc::new(SystemClock));
            jobs::lifecycle(&state, 0)?;
            let workers = (0..setup.threads)
                .map(|_| {
                    let state = state.clone();
                    Box::new(move |i: u64| jobs::lifecycle(&state, i)) as Worker
                })
                .collect();
            Ok(Cell {
                workers,
                syncs: Syncs::Uncounted,
            })
        }
        other => Err(format!("pgstore does not run {other}").into()),
    }
}
