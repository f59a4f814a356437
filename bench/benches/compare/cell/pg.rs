//! jobsafe's ledger and locks over `PgStore`, one schema per cell, on the
//! server `JOBSAFE_PG_URL` names. The server flushes its WAL in another
//! process: the bench cannot count those flushes, and the column says so
//! (`n/a`) rather than claim zero.

use std::path::Path;
use std::sync::Arc;

use jobsafe::Durability;

use super::workers;
use super::{Bench, Cell, Setup};
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
        other => Err(format!("pgstore does not run {other}").into()),
    }
}
