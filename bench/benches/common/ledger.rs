//! The ledger comparison: reserving a job id, the write a job runner makes once
//! per job (and again on every retry), through jobsafe's [`JobLedger`] and the
//! alternatives.
//!
//! - `reserve_new`: reserve a job id never seen before; the caller would charge.
//!   One durable insert-if-absent.
//! - `reserve_dup`: reserve it again, as a client's retry does; free, and a read
//!   only (nothing is written).
//!
//! Both run from one thread and, where the contender allows concurrent writers,
//! from several threads at once (each with its own handle: a ledger clone, an
//! SQLite connection). Reservations are spread round-robin over [`ACCOUNTS`]
//! accounts, as a relay serving that many licenses would see them, and job ids are
//! UUID v7 strings, as jobsafe recommends.
//!
//! A contender is a [`LedgerEngine`]. [`ReserveWorkload`] runs one on fresh state
//! per round, holding a fixed number of reservations before the timed ones;
//! [`FlatWorkload`] keeps one jobsafe ledger of a given size across rounds, to
//! show that a reserve costs the same however many reservations there are.
//!
//! Nothing here removes files while timing: on ext4 without a journal, creating
//! a file costs more for every inode freed nearby in the last minutes (see
//! [`Timed::Kept`]). For the same reason a run that follows another within a
//! few minutes measures slower file creation: the first run's directory, with
//! its 100,000-file ledger, is removed when it ends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobsafe::ledger::{ChargeRequest, Reserve};
use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;
use jobsafe::{DirStore, Durability, Expect, JobLedger, LogStore, MemStore, Store, SystemClock};
use rusqlite::{Connection, params};

use super::kv::KvEngine;
use super::naive::NaiveJson;
use super::sqlite::{self, Synchronous};
use super::{BenchResult, Config, Sample, Syncs, Tally, Workload, sync_all, time_ops};

/// Accounts the reservations are spread over.
pub(crate) const ACCOUNTS: usize = 100;
/// What every reservation records besides its ids, in every contender.
const BACKEND: &str = "batch";
const TIER: &str = "pro";
/// The reservations' time to live, as [`JobLedger`]'s default: none expires
/// during a run.
const TTL: Duration = jobsafe::JobLedger::DEFAULT_TTL;

/// The ledger sizes of a run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    /// Reservations every contender of the throughput comparison holds before
    /// the timed ones, and the small size of the flatness comparisons.
    pub(crate) base: usize,
    /// The large naive JSON file.
    pub(crate) naive_large: usize,
    /// The large `DirStore` ledger of the flatness comparison.
    pub(crate) dir_large: usize,
    /// The large `MemStore` ledger of the flatness comparison.
    pub(crate) mem_large: usize,
}

impl Sizes {
    /// 1,000 against 100,000 (1,000,000 for `MemStore`) in a full run; 100 against
    /// 1,000 in a smoke run, which only checks that every path runs.
    pub(crate) fn for_config(config: &Config) -> Self {
        if config.smoke {
            Sizes {
                base: 100,
                naive_large: 1_000,
                dir_large: 1_000,
                mem_large: 1_000,
            }
        } else {
            Sizes {
                base: 1_000,
                naive_large: 100_000,
                dir_large: 100_000,
                mem_large: 1_000_000,
            }
        }
    }
}

/// `1k`, `100k`, `1m` or the number itself: sizes in bench names.
pub(crate) fn size_label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// One (account, job id) pair.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub(crate) account: String,
    pub(crate) job_id: String,
}

/// `n` new jobs, the `i`-th of account `i mod ACCOUNTS`, each with a new UUID v7.
pub(crate) fn jobs(n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| Job {
            account: format!("lic:{:04}", i % ACCOUNTS),
            job_id: uuid::Uuid::now_v7().to_string(),
        })
        .collect()
}

/// What a reserve found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The job id was new: reserved now.
    New,
    /// The job id was reserved already: a retry.
    Existing,
}

/// Fails unless a reserve had the outcome the bench set up: a contender that
/// reserves twice or forgets reservations has no throughput worth reporting.
pub(crate) fn check(name: &str, job: &Job, got: Outcome, expected: Outcome) -> Result<(), String> {
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "{name}: reserving {}/{} gave {got:?}, expected {expected:?}",
            job.account, job.job_id
        ))
    }
}

/// A handle that reserves from one thread.
pub(crate) trait Reserver {
    fn reserve(&mut self, job: &Job) -> BenchResult<Outcome>;
}

/// A ledger as the comparison drives it.
pub(crate) trait LedgerEngine: Reserver {
    /// Reserves every job in `jobs`, untimed, as fast as the contender allows
    /// (relaxed durability, one transaction, one file write), and makes them
    /// durable before returning.
    fn load(&mut self, jobs: &[Job]) -> BenchResult<Loaded>;

    /// `n` handles for `n` threads reserving at once, or `None` if the contender
    /// has a single writer.
    fn handles(&mut self, n: usize) -> BenchResult<Option<Vec<Box<dyn Reserver + Send>>>>;

    /// Where the contender's flushes are counted.
    fn syncs(&self) -> Syncs;
}

/// How long a [`LedgerEngine::load`] took.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loaded {
    /// Reserving the jobs.
    pub(crate) secs: f64,
    /// Making them durable afterwards (a system-wide `sync`), if that was
    /// separate.
    pub(crate) flush_secs: Option<f64>,
}

// --- jobsafe --------------------------------------------------------------------

/// A [`JobLedger`] over any jobsafe [`Store`], with its default TTL and a
/// [`SystemClock`].
#[derive(Debug)]
pub(crate) struct StoreLedger<S> {
    ledger: JobLedger<S>,
    /// Where [`load`](LedgerEngine::load) writes when not through `ledger`: a
    /// handle on the same store with relaxed durability, whose writes a
    /// system-wide `sync` then makes durable.
    bulk: Option<JobLedger<S>>,
    syncs: Syncs,
}

/// The request every jobsafe reserve passes.
pub(crate) fn request() -> ChargeRequest {
    ChargeRequest::new()
        .meta("backend", BACKEND)
        .meta("tier", TIER)
}

fn ledger<S: Store>(store: S) -> JobLedger<S> {
    JobLedger::new(store, Arc::new(SystemClock))
}

impl StoreLedger<LogStore<Counting<StdVfs>>> {
    /// A `LogStore` ledger in `dir` with [`Durability::Full`] (the default), its
    /// flushes counted; loads go through a second handle with
    /// [`Durability::AtomicOnly`], which the first reads like another process's
    /// appends.
    pub(crate) fn log(dir: &Path) -> BenchResult<Self> {
        let vfs = Counting::new(StdVfs);
        let store = LogStore::builder(dir).vfs(vfs.clone()).open()?;
        let bulk = LogStore::builder(dir)
            .vfs(Counting::new(StdVfs))
            .durability(Durability::AtomicOnly)
            .open()?;
        Ok(StoreLedger {
            ledger: ledger(store),
            bulk: Some(ledger(bulk)),
            syncs: Syncs::Vfs(vfs),
        })
    }
}

impl StoreLedger<DirStore<Counting<StdVfs>>> {
    /// A `DirStore` ledger in `dir` with [`Durability::Full`] (the default), its
    /// flushes counted; loads go through a second handle with
    /// [`Durability::AtomicOnly`].
    pub(crate) fn dir(dir: &Path) -> BenchResult<Self> {
        let vfs = Counting::new(StdVfs);
        let store = DirStore::builder(dir).vfs(vfs.clone()).open()?;
        let bulk = DirStore::builder(dir)
            .vfs(Counting::new(StdVfs))
            .durability(Durability::AtomicOnly)
            .open()?;
        Ok(StoreLedger {
            ledger: ledger(store),
            bulk: Some(ledger(bulk)),
            syncs: Syncs::Vfs(vfs),
        })
    }
}

#[cfg(feature = "postgres")]
impl StoreLedger<jobsafe::PgStore> {
    /// A `PgStore` ledger in a new schema with [`Durability::Full`] (a flush of
    /// the server's WAL per commit, which the bench cannot count); loads go
    /// through a second handle with [`Durability::AtomicOnly`].
    pub(crate) fn pg(_dir: &Path) -> BenchResult<Self> {
        let store = super::pg::store(Durability::Full)?;
        let bulk = super::pg::again(&store, Durability::AtomicOnly)?;
        Ok(StoreLedger {
            ledger: ledger(store),
            bulk: Some(ledger(bulk)),
            syncs: Syncs::Uncounted,
        })
    }
}

impl StoreLedger<MemStore> {
    /// A `MemStore` ledger. It never flushes: its count is zero.
    pub(crate) fn mem(_dir: &Path) -> BenchResult<Self> {
        Ok(StoreLedger {
            ledger: ledger(MemStore::new()),
            bulk: None,
            syncs: Syncs::Tally(Tally::default()),
        })
    }
}

impl<S: Store> StoreLedger<S> {
    /// Removes the reservation of `job` (untimed clean-up), durably where the
    /// store is.
    fn forget(&self, job: &Job) -> BenchResult {
        let key = self.ledger.key(&job.account, &job.job_id)?;
        if !self.ledger.store().delete(&key, Expect::Any)? {
            return Err(format!("{key} was not reserved").into());
        }
        Ok(())
    }
}

fn reserve_in<S: Store>(ledger: &JobLedger<S>, job: &Job) -> BenchResult<Outcome> {
    outcome(ledger.reserve(&job.account, &job.job_id, &request())?)
}

/// What a jobsafe reserve found; a pending side effect is an error, since no
/// bench reserves with one.
pub(crate) fn outcome(reserve: Reserve) -> BenchResult<Outcome> {
    match reserve {
        Reserve::New(_) => Ok(Outcome::New),
        Reserve::Existing(_) => Ok(Outcome::Existing),
        Reserve::InFlight(r) => Err(format!("{}: a side effect is pending", r.job_id).into()),
    }
}

impl<S: Store> Reserver for StoreLedger<S> {
    fn reserve(&mut self, job: &Job) -> BenchResult<Outcome> {
        reserve_in(&self.ledger, job)
    }
}

/// A ledger clone for one thread.
struct LedgerHandle<S>(JobLedger<S>);

impl<S: Store> Reserver for LedgerHandle<S> {
    fn reserve(&mut self, job: &Job) -> BenchResult<Outcome> {
        reserve_in(&self.0, job)
    }
}

impl<S: Store + Send + Sync + 'static> LedgerEngine for StoreLedger<S> {
    fn load(&mut self, jobs: &[Job]) -> BenchResult<Loaded> {
        let bulk = self.bulk.take();
        let target = bulk.as_ref().unwrap_or(&self.ledger);
        let start = Instant::now();
        // As many threads as cores: a DirStore load is system calls, which run
        // in parallel; a MemStore load takes one lock and gains nothing.
        let threads = thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let chunk = jobs.len().div_ceil(threads).max(1);
        thread::scope(|s| {
            let workers: Vec<_> = jobs
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        for job in part {
                            let outcome = reserve_in(target, job).map_err(|e| e.to_string())?;
                            check("load", job, outcome, Outcome::New)?;
                        }
                        Ok::<_, String>(())
                    })
                })
                .collect();
            join_all(workers)
        })?;
        let secs = start.elapsed().as_secs_f64();
        let flush_secs = match bulk {
            Some(_) => Some(sync_all()?),
            None => None,
        };
        Ok(Loaded { secs, flush_secs })
    }

    fn handles(&mut self, n: usize) -> BenchResult<Option<Vec<Box<dyn Reserver + Send>>>> {
        Ok(Some(
            (0..n)
                .map(|_| Box::new(LedgerHandle(self.ledger.clone())) as Box<dyn Reserver + Send>)
                .collect(),
        ))
    }

    fn syncs(&self) -> Syncs {
        self.syncs.clone()
    }
}

// --- SQLite ---------------------------------------------------------------------

const SCHEMA: &str = "CREATE TABLE ledger (
    account TEXT NOT NULL,
    job_id TEXT NOT NULL,
    id TEXT NOT NULL,
    backend TEXT,
    tier TEXT,
    charged_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (account, job_id)
) WITHOUT ROWID";
const INSERT: &str =
    "INSERT INTO ledger (account, job_id, id, backend, tier, charged_ms, expires_ms, state)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'charged') ON CONFLICT DO NOTHING";
const SELECT: &str = "SELECT id FROM ledger WHERE account = ?1 AND job_id = ?2";

/// How long a connection waits for another's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLite (WAL) as a ledger: a reserve is one autocommit
/// `INSERT ... ON CONFLICT DO NOTHING`; a row changed means new, none means a
/// retry, whose reservation is then read back as [`JobLedger`] returns it.
#[derive(Debug)]
pub(crate) struct SqliteLedger {
    path: PathBuf,
    synchronous: Synchronous,
    conn: Connection,
}

impl SqliteLedger {
    /// Creates `ledger.sqlite3` in `dir`.
    pub(crate) fn open(dir: &Path, synchronous: Synchronous) -> BenchResult<Self> {
        let path = dir.join("ledger.sqlite3");
        let conn = connect(&path, synchronous)?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteLedger {
            path,
            synchronous,
            conn,
        })
    }
}

fn connect(path: &Path, synchronous: Synchronous) -> BenchResult<Connection> {
    let conn = sqlite::connect(path, synchronous)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

fn now_ms() -> BenchResult<i64> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis(),
    )?)
}

fn sqlite_reserve(conn: &Connection, job: &Job) -> BenchResult<Outcome> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_ms()?;
    let expires = now + i64::try_from(TTL.as_millis())?;
    let inserted = conn.prepare_cached(INSERT)?.execute(params![
        job.account,
        job.job_id,
        id,
        BACKEND,
        TIER,
        now,
        expires
    ])?;
    if inserted == 1 {
        return Ok(Outcome::New);
    }
    let _stored: String = conn
        .prepare_cached(SELECT)?
        .query_row(params![job.account, job.job_id], |row| row.get(0))?;
    Ok(Outcome::Existing)
}

impl Reserver for SqliteLedger {
    fn reserve(&mut self, job: &Job) -> BenchResult<Outcome> {
        sqlite_reserve(&self.conn, job)
    }
}

/// A connection of its own for one thread.
struct SqliteHandle(Connection);

impl Reserver for SqliteHandle {
    fn reserve(&mut self, job: &Job) -> BenchResult<Outcome> {
        sqlite_reserve(&self.0, job)
    }
}

impl LedgerEngine for SqliteLedger {
    fn load(&mut self, jobs: &[Job]) -> BenchResult<Loaded> {
        let start = Instant::now();
        let tx = self.conn.transaction()?;
        for job in jobs {
            let outcome = sqlite_reserve(&tx, job)?;
            check("sqlite load", job, outcome, Outcome::New)?;
        }
        tx.commit()?;
        Ok(Loaded {
            secs: start.elapsed().as_secs_f64(),
            flush_secs: None,
        })
    }

    fn handles(&mut self, n: usize) -> BenchResult<Option<Vec<Box<dyn Reserver + Send>>>> {
        let mut handles: Vec<Box<dyn Reserver + Send>> = Vec::with_capacity(n);
        for _ in 0..n {
            handles.push(Box::new(SqliteHandle(connect(
                &self.path,
                self.synchronous,
            )?)));
        }
        Ok(Some(handles))
    }

    fn syncs(&self) -> Syncs {
        Syncs::Uncounted
    }
}

// --- the naive JSON file ----------------------------------------------------------

/// The seeds' design: every reservation in one map, the whole JSON file
/// rewritten (durably, see [`NaiveJson`]) when one is added; a retry is a lookup
/// in memory. One writer.
#[derive(Debug)]
pub(crate) struct NaiveLedger {
    json: NaiveJson,
}

impl NaiveLedger {
    pub(crate) fn open(dir: &Path) -> BenchResult<Self> {
        Ok(NaiveLedger {
            json: NaiveJson::open(dir)?,
        })
    }
}

/// The seed's key and record.
fn naive_entry(job: &Job) -> BenchResult<(String, String)> {
    let key = format!("{}|{}", job.account, job.job_id);
    let record = serde_json::json!({
        "backend": BACKEND,
        "tier": TIER,
        "install_id": null,
        "license_fingerprint": job.account.strip_prefix("lic:"),
        "charged_at": now_ms()?,
        "refunded": false,
    });
    Ok((key, record.to_string()))
}

impl Reserver for NaiveLedger {
    fn reserve(&mut self, job: &Job) -> BenchResult<Outcome> {
        let (key, record) = naive_entry(job)?;
        if self.json.get(&key)?.is_some() {
            return Ok(Outcome::Existing);
        }
        self.json.insert(&key, record.as_bytes())?;
        Ok(Outcome::New)
    }
}

impl LedgerEngine for NaiveLedger {
    fn load(&mut self, jobs: &[Job]) -> BenchResult<Loaded> {
        let start = Instant::now();
        let entries = jobs
            .iter()
            .map(naive_entry)
            .collect::<BenchResult<Vec<_>>>()?;
        self.json.load(entries)?;
        Ok(Loaded {
            secs: start.elapsed().as_secs_f64(),
            flush_secs: None,
        })
    }

    fn handles(&mut self, _n: usize) -> BenchResult<Option<Vec<Box<dyn Reserver + Send>>>> {
        Ok(None)
    }

    fn syncs(&self) -> Syncs {
        self.json.syncs()
    }
}

// --- workloads ------------------------------------------------------------------

/// Joins scoped workers, returning the first failure.
fn join_all(workers: Vec<thread::ScopedJoinHandle<'_, Result<(), String>>>) -> BenchResult {
    let mut failure = None;
    for worker in workers {
        let result = worker
            .join()
            .unwrap_or_else(|_| Err("a bench thread panicked".to_owned()));
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Times `handles.len()` threads reserving `jobs` at once, each its share, and
/// checks every outcome. The clock runs from the moment all threads are released
/// until the last is done; spawning them is not timed.
fn time_threads(
    bench: String,
    handles: &mut [Box<dyn Reserver + Send>],
    jobs: &[Job],
    expected: Outcome,
    syncs: &Syncs,
) -> BenchResult<Sample> {
    let per_thread = jobs.len().div_ceil(handles.len()).max(1);
    let parts: Vec<&[Job]> = jobs.chunks(per_thread).collect();
    let barrier = Barrier::new(parts.len().min(handles.len()) + 1);
    let before = syncs.get();
    let name = bench.as_str();
    let secs = thread::scope(|s| {
        let workers: Vec<_> = handles
            .iter_mut()
            .zip(parts)
            .map(|(handle, part)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for job in part {
                        let outcome = handle.reserve(job).map_err(|e| format!("{name}: {e}"))?;
                        check(name, job, outcome, expected)?;
                    }
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        join_all(workers)?;
        Ok::<_, Box<dyn std::error::Error>>(start.elapsed().as_secs_f64())
    })?;
    Ok(Sample {
        ops: jobs.len(),
        secs,
        syncs: before.zip(syncs.get()).map(|(b, a)| a - b),
        bench,
    })
}

/// One contender of the throughput comparison. Each round opens it fresh, loads
/// `existing` reservations untimed, then times `ops` new reserves and their
/// retries from one thread (`<name>/reserve_new_t1`, `<name>/reserve_dup_t1`),
/// then, if the contender allows concurrent writers, as many again from
/// `threads` threads (`_t<threads>`).
pub(crate) struct ReserveWorkload<E> {
    name: String,
    open: fn(&Path) -> BenchResult<E>,
    existing: usize,
    ops: usize,
    threads: usize,
}

impl<E: LedgerEngine> ReserveWorkload<E> {
    pub(crate) fn new(
        name: impl Into<String>,
        open: fn(&Path) -> BenchResult<E>,
        existing: usize,
        ops: usize,
        threads: usize,
    ) -> Self {
        ReserveWorkload {
            name: name.into(),
            open,
            existing,
            ops,
            threads,
        }
    }
}

impl<E: LedgerEngine> Workload for ReserveWorkload<E> {
    fn name(&self) -> &str {
        &self.name
    }

    /// Ignores `_ops`: each contender runs its own count (memory-speed ones more,
    /// the naive file fewer).
    fn round(&mut self, dir: &Path, _ops: usize) -> BenchResult<Vec<Sample>> {
        let name = &self.name;
        let mut engine = (self.open)(dir)?;
        engine.load(&jobs(self.existing))?;
        let syncs = engine.syncs();
        let fresh = jobs(self.ops);
        let mut reserve_all = |bench: String, expected: Outcome| {
            time_ops(bench.clone(), fresh.len(), &syncs, |i| {
                let outcome = engine.reserve(&fresh[i])?;
                Ok(check(&bench, &fresh[i], outcome, expected)?)
            })
        };
        let mut samples = vec![
            reserve_all(format!("{name}/reserve_new_t1"), Outcome::New)?,
            reserve_all(format!("{name}/reserve_dup_t1"), Outcome::Existing)?,
        ];
        if let Some(mut handles) = engine.handles(self.threads)? {
            let n = self.threads;
            let fresh = jobs(self.ops.div_ceil(n) * n);
            for (op, expected) in [("new", Outcome::New), ("dup", Outcome::Existing)] {
                let bench = format!("{name}/reserve_{op}_t{n}");
                samples.push(time_threads(bench, &mut handles, &fresh, expected, &syncs)?);
            }
        }
        Ok(samples)
    }
}

/// What a [`FlatWorkload`] does with the reservations it timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timed {
    /// Removes each again right after it, untimed: every timed reserve meets the
    /// ledger at exactly the size it was loaded with.
    Removed,
    /// Keeps them: the ledger grows by the reserves of each round. For stores
    /// on files: removing a file frees its inode, and ext4 without a journal
    /// then skips every inode freed in the last one to six minutes, one by one,
    /// each time it creates a file in that block group, so removals would make
    /// the timed creates slower the longer a round ran.
    Kept,
}

/// One jobsafe ledger, loaded once and kept across rounds: each round times
/// `ops` reserves of new job ids from one thread (`<name>/reserve_new_t1`), one
/// at a time, each checked to be new.
pub(crate) struct FlatWorkload<S> {
    name: String,
    engine: StoreLedger<S>,
    ops: usize,
    timed: Timed,
}

impl<S: Store + Send + Sync + 'static> FlatWorkload<S> {
    /// `engine`, loaded with `size` reservations; returns the workload and how long
    /// the load took.
    pub(crate) fn load(
        name: impl Into<String>,
        mut engine: StoreLedger<S>,
        size: usize,
        ops: usize,
        timed: Timed,
    ) -> BenchResult<(Self, Loaded)> {
        let name = name.into();
        eprintln!("{name}: loading {size} reservations");
        let loaded = engine.load(&jobs(size))?;
        let workload = FlatWorkload {
            name,
            engine,
            ops,
            timed,
        };
        Ok((workload, loaded))
    }
}

impl<S: Store + Send + Sync + 'static> Workload for FlatWorkload<S> {
    fn name(&self) -> &str {
        &self.name
    }

    /// Ignores `_dir` (the ledger lives across rounds) and `_ops`.
    fn round(&mut self, _dir: &Path, _ops: usize) -> BenchResult<Vec<Sample>> {
        let bench = format!("{}/reserve_new_t1", self.name);
        let syncs = self.engine.syncs();
        let mut secs = 0.0;
        let mut flushes = Some(0);
        for job in jobs(self.ops) {
            let before = syncs.get();
            let start = Instant::now();
            let outcome = self.engine.reserve(&job)?;
            secs += start.elapsed().as_secs_f64();
            flushes = flushes
                .zip(before.zip(syncs.get()))
                .map(|(n, (b, a))| n + a - b);
            check(&bench, &job, outcome, Outcome::New)?;
            if self.timed == Timed::Removed {
                self.engine.forget(&job)?;
            }
        }
        Ok(vec![Sample {
            bench,
            ops: self.ops,
            secs,
            syncs: flushes,
        }])
    }
}
