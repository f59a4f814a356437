//! One cell of the comparison: one operation ([`Bench`]) by one implementation
//! ([`Impl`]) from a number of threads, set up untimed in a fresh directory,
//! ready to time.
//!
//! Every implementation starts each cell with the same number of records
//! already in it (`preload`), written untimed and as fast as it allows (relaxed
//! durability, one transaction, one file write), then made durable by a
//! system-wide `sync` before timing, so that no write of the set-up lands in a
//! timed flush.

mod jobsafe;
mod others;
#[cfg(feature = "postgres")]
mod pg;
mod workers;

use std::fmt;
use std::path::Path;

use crate::common::{BenchResult, Syncs};

/// An operation of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bench {
    /// A ledger reserve of a job id never seen before: one durable insert.
    ReserveNew,
    /// A ledger reserve of a job id reserved already (a client's retry): a read.
    ReserveDup,
    /// A lease lock acquired and released, over 64 keys per thread, while one
    /// more lock is held throughout.
    LockCycle,
    /// A job taken through create → start → three stages → complete: six
    /// durable writes.
    Lifecycle,
    /// An insert of a 256-byte value under a new key.
    Put,
    /// A read of one of the preloaded keys.
    Get,
}

impl Bench {
    pub(crate) const ALL: [Bench; 6] = [
        Bench::ReserveNew,
        Bench::ReserveDup,
        Bench::LockCycle,
        Bench::Lifecycle,
        Bench::Put,
        Bench::Get,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Bench::ReserveNew => "reserve_new",
            Bench::ReserveDup => "reserve_dup",
            Bench::LockCycle => "lock_cycle",
            Bench::Lifecycle => "lifecycle",
            Bench::Put => "put",
            Bench::Get => "get",
        }
    }

    /// Whether the operation writes: a durable implementation must flush for it.
    pub(crate) fn writes(self) -> bool {
        !matches!(self, Bench::ReserveDup | Bench::Get)
    }
}

impl fmt::Display for Bench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An implementation: a column of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Impl {
    /// jobsafe's components over `MemStore`: nothing is durable.
    MemStore,
    /// jobsafe's components over `DirStore` at `Durability::Full`.
    DirStore,
    /// jobsafe's components over `LogStore` at `Durability::Full`.
    LogStore,
    /// The same, the store opened in exclusive mode (reads check for no other
    /// process's writes, commits take no file lock); `get` and `put` only,
    /// the operations the mode changes most.
    LogStoreExclusive,
    /// SQLite, WAL, `synchronous=FULL`, one connection per thread.
    SqliteFull,
    /// SQLite, WAL, `synchronous=NORMAL`: commits survive a process crash, not
    /// a power loss.
    SqliteNormal,
    /// The whole JSON file rewritten durably on every change, behind a mutex.
    NaiveJson,
    /// Append a record + `fdatasync`, a file per thread.
    RawAppend,
    /// Overwrite a record in preallocated space + `fdatasync`, a file per thread.
    RawOverwrite,
    /// Temp file + fsync + rename + directory fsync, a file per thread.
    RawReplace,
    /// Threads append to one file; one leader `fdatasync`s each batch.
    RawGroup,
    /// jobsafe's ledger and locks over `PgStore` at `Durability::Full`, on the
    /// server `JOBSAFE_PG_URL` names (built with the feature `postgres`).
    PgStore,
}

impl Impl {
    /// Whether its `get` cells read from [`get_records`] records: the
    /// embedded stores and SQLite. The others keep `preload`: a million
    /// files, a rewrite of a file that holds a million records, or a server
    /// loaded with them would cost more than the cell measures.
    ///
    /// [`get_records`]: crate::compare::options::Options::get_records
    pub(crate) fn reads_many(self) -> bool {
        matches!(
            self,
            Impl::MemStore
                | Impl::LogStore
                | Impl::LogStoreExclusive
                | Impl::SqliteFull
                | Impl::SqliteNormal
        )
    }

    pub(crate) const ALL: [Impl; 12] = [
        Impl::MemStore,
        Impl::DirStore,
        Impl::LogStore,
        Impl::LogStoreExclusive,
        Impl::SqliteFull,
        Impl::SqliteNormal,
        Impl::NaiveJson,
        Impl::RawAppend,
        Impl::RawOverwrite,
        Impl::RawReplace,
        Impl::RawGroup,
        Impl::PgStore,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Impl::MemStore => "memstore",
            Impl::DirStore => "dirstore",
            Impl::LogStore => "logstore",
            Impl::LogStoreExclusive => "logstore_excl",
            Impl::SqliteFull => "sqlite_full",
            Impl::SqliteNormal => "sqlite_normal",
            Impl::NaiveJson => "naive_json",
            Impl::RawAppend => "raw_append",
            Impl::RawOverwrite => "raw_overwrite",
            Impl::RawReplace => "raw_replace",
            Impl::RawGroup => "raw_group",
            Impl::PgStore => "pgstore",
        }
    }

    /// Whether a write that returned survives a power loss: its writes must
    /// flush, and a row of them without a flush is a broken bench, not a win.
    pub(crate) fn durable(self) -> bool {
        !matches!(self, Impl::MemStore | Impl::SqliteNormal)
    }

    /// Whether it is a raw limit, which only does plain puts.
    pub(crate) fn is_raw(self) -> bool {
        matches!(
            self,
            Impl::RawAppend | Impl::RawOverwrite | Impl::RawReplace | Impl::RawGroup
        )
    }

    /// Whether it does `bench` at all (the cell stays empty if not).
    pub(crate) fn does(self, bench: Bench) -> bool {
        match self {
            _ if self.is_raw() => bench == Bench::Put,
            // One JSON file holds records, not leases.
            Impl::NaiveJson => bench != Bench::LockCycle,
            Impl::LogStoreExclusive => matches!(bench, Bench::Get | Bench::Put),
            // The server's columns: the operations services share between machines.
            Impl::PgStore => matches!(
                bench,
                Bench::ReserveNew | Bench::ReserveDup | Bench::LockCycle | Bench::Lifecycle
            ),
            _ => true,
        }
    }
}

impl Impl {
    /// Why `self` cannot run in this build or environment, if it cannot: the
    /// default run leaves it out and names it; asking for it is an error.
    pub(crate) fn unavailable(self) -> Option<String> {
        if self != Impl::PgStore {
            return None;
        }
        if !cfg!(feature = "postgres") {
            return Some("pgstore needs the feature `postgres`".to_owned());
        }
        std::env::var_os("JOBSAFE_PG_URL").is_none().then(|| {
            "pgstore needs a server: JOBSAFE_PG_URL names none (`bash .ci/postgres.sh \
             cargo bench -p jobsafe-bench --features postgres --bench compare` starts \
             one on loopback)"
                .to_owned()
        })
    }
}

impl fmt::Display for Impl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one thread runs: its `i`-th operation, checked (a failed check is an
/// error: an implementation that loses writes has no throughput worth
/// reporting).
pub(crate) type Worker = Box<dyn FnMut(u64) -> BenchResult + Send>;

/// A cell ready to time: one worker per thread, and where flushes are counted.
pub(crate) struct Cell {
    pub(crate) workers: Vec<Worker>,
    pub(crate) syncs: Syncs,
}

/// What a cell is set up with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Setup {
    pub(crate) bench: Bench,
    pub(crate) threads: usize,
    /// Records every implementation holds before timing.
    pub(crate) preload: usize,
}

/// Sets up `imp` doing `setup.bench` in the empty directory `dir`; `None` if it
/// does not do that operation.
pub(crate) fn prepare(imp: Impl, setup: Setup, dir: &Path) -> BenchResult<Option<Cell>> {
    if !imp.does(setup.bench) {
        return Ok(None);
    }
    let cell = match imp {
        Impl::MemStore | Impl::DirStore | Impl::LogStore | Impl::LogStoreExclusive => {
            jobsafe::prepare(imp, setup, dir)?
        }
        #[cfg(feature = "postgres")]
        Impl::PgStore => pg::prepare(setup, dir)?,
        _ => others::prepare(imp, setup, dir)?,
    };
    Ok(Some(cell))
}

/// Keys of the `preload` records of the put and get cells.
pub(crate) fn preload_keys(preload: usize) -> Vec<String> {
    (0..preload).map(|k| format!("pre-{k:07}")).collect()
}

/// The key of thread `thread`'s `i`-th new record.
pub(crate) fn fresh_key(thread: usize, i: u64) -> String {
    format!("t{thread:02}-{i:09}")
}
