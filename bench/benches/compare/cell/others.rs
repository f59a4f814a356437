//! The implementations jobsafe is measured against: SQLite (one connection
//! per thread), the naive JSON file (one writer behind a mutex), and the raw
//! limits of a durable write (plain puts only).

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use super::workers::{self, Locked};
use super::{Bench, Cell, Impl, Setup, Worker, preload_keys};
use crate::common::kv::{self, KvEngine, VALUE_LEN};
use crate::common::ledger::{NaiveLedger, SqliteLedger};
use crate::common::naive::NaiveJson;
use crate::common::raw::{AppendWriter, GroupLog, ReplaceWriter, SlotWriter};
use crate::common::sqlite::{SqliteEngine, SqliteLease, Synchronous};
use crate::common::{BenchResult, Syncs, Tally};

/// Slots of each raw overwrite file: 1 MiB of 256-byte records, reused in turn.
const SLOTS: usize = 4096;

pub(super) fn prepare(imp: Impl, setup: Setup, dir: &Path) -> BenchResult<Cell> {
    match imp {
        Impl::SqliteFull => sqlite(Synchronous::Full, setup, dir),
        Impl::SqliteNormal => sqlite(Synchronous::Normal, setup, dir),
        Impl::NaiveJson => naive(setup, dir),
        _ => raw(imp, setup.threads, dir),
    }
}

fn sqlite(synchronous: Synchronous, setup: Setup, dir: &Path) -> BenchResult<Cell> {
    let more = setup.threads - 1;
    match setup.bench {
        Bench::ReserveNew | Bench::ReserveDup => {
            workers::reserve(SqliteLedger::open(dir, synchronous)?, setup)
        }
        Bench::LockCycle => {
            let mut engines = vec![SqliteLease::open(dir, synchronous)?];
            for _ in 0..more {
                engines.push(SqliteLease::connect(dir, synchronous)?);
            }
            workers::lock(engines, Syncs::Uncounted)
        }
        _ => {
            let mut first = SqliteEngine::open(dir, synchronous)?;
            let keys = preload_keys(setup.preload);
            let value = kv::value('p');
            first.load(keys.iter().map(|k| (k.as_str(), value.as_slice())))?;
            let mut engines: Vec<Box<dyn KvEngine + Send>> = vec![Box::new(first)];
            for _ in 0..more {
                engines.push(Box::new(SqliteEngine::connect(dir, synchronous)?));
            }
            workers::kv(engines, Syncs::Uncounted, setup, keys)
        }
    }
}

fn naive(setup: Setup, dir: &Path) -> BenchResult<Cell> {
    match setup.bench {
        Bench::ReserveNew | Bench::ReserveDup => workers::reserve(NaiveLedger::open(dir)?, setup),
        _ => {
            let mut json = NaiveJson::open(dir)?;
            let keys = preload_keys(setup.preload);
            let value = String::from_utf8(kv::value('p'))?;
            json.load(keys.iter().map(|k| (k.clone(), value.clone())))?;
            let syncs = json.syncs();
            let shared = Arc::new(Mutex::new(json));
            let engines = (0..setup.threads)
                .map(|_| Box::new(Locked(Arc::clone(&shared))) as Box<dyn KvEngine + Send>)
                .collect();
            workers::kv(engines, syncs, setup, keys)
        }
    }
}

/// A raw limit writing [`VALUE_LEN`]-byte records from `threads` threads.
fn raw(imp: Impl, threads: usize, dir: &Path) -> BenchResult<Cell> {
    let tally = Tally::default();
    let mut workers: Vec<Worker> = Vec::with_capacity(threads);
    if imp == Impl::RawGroup {
        let log = Arc::new(GroupLog::create(
            &dir.join("group"),
            VALUE_LEN,
            tally.clone(),
        )?);
        for _ in 0..threads {
            let log = Arc::clone(&log);
            workers.push(Box::new(move |_| Ok(log.append()?)));
        }
    } else {
        for t in 0..threads {
            workers.push(own_file(imp, dir, t, &tally)?);
        }
    }
    Ok(Cell {
        workers,
        syncs: Syncs::Tally(tally),
    })
}

/// Thread `t`'s writer of a raw limit that gives each thread a file of its own.
fn own_file(imp: Impl, dir: &Path, t: usize, tally: &Tally) -> BenchResult<Worker> {
    let tally = tally.clone();
    Ok(match imp {
        Impl::RawAppend => {
            let path = dir.join(format!("append-{t:02}"));
            let mut writer = AppendWriter::create(&path, VALUE_LEN, tally)?;
            Box::new(move |_| Ok(writer.write()?))
        }
        Impl::RawOverwrite => {
            let path = dir.join(format!("slots-{t:02}"));
            let mut writer = SlotWriter::create(&path, VALUE_LEN, SLOTS, tally)?;
            Box::new(move |_| Ok(writer.write()?))
        }
        Impl::RawReplace => {
            let name = format!("state-{t:02}");
            let writer = ReplaceWriter::create(dir, &name, VALUE_LEN, tally)?;
            Box::new(move |_| Ok(writer.write()?))
        }
        _ => return Err(format!("{imp} is not a raw limit with a file per thread").into()),
    })
}
