//! The async face's overhead: the same operations on the same kind of store,
//! through the blocking API from N threads and through the async face from N
//! tasks on a two-worker tokio runtime.
//!
//! Each cell (an operation, a concurrency, a face) gets a fresh `LogStore` at
//! `Durability::Full` in a directory of its own under `target/`, holding
//! [`PRELOAD`] values and as many reservations written durably before timing,
//! so that nothing of the set-up is left to land in a timed flush. It runs
//! untimed for a fifth of its time (the async face's pool then has its
//! threads), then timed. The faces take turns, the first of a round going
//! second in the next, and each round's ratio pairs two cells that ran one
//! right after the other.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use jobsafe::ledger::AsyncJobLedger;
use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;
use jobsafe::{Expect, JobLedger, Key, LogStore, Store, SystemClock};
use tokio::runtime::Runtime;

use crate::async_face::options::Options;
use crate::common::kv;
use crate::common::ledger::{self, ACCOUNTS, Job, Outcome};
use crate::common::report::{Table, median};
use crate::common::targets::{Bound, Target};
use crate::common::{BenchResult, RunDir};

/// Concurrent tasks of the async face, and threads of the blocking API.
pub(crate) const CONCURRENCY: [usize; 2] = [1, 16];
/// Values and reservations in each cell's store before timing (a full run).
const PRELOAD: usize = 1_000;
/// ... and in a smoke run.
const SMOKE_PRELOAD: usize = 20;
/// How much slower than the blocking API a durable write through the async
/// face may be.
const WRITE_SLOWDOWN: f64 = 1.1;

/// An operation of the section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A read of one of the preloaded values.
    Get,
    /// The same read, of a store opened in exclusive mode: no check for
    /// other processes' writes, and no pool behind the async face.
    GetExclusive,
    /// A durable insert of a 256-byte value under a new key.
    Put,
    /// A ledger reserve of a new job id: one durable insert.
    ReserveNew,
    /// A ledger reserve of a reserved job id (a client's retry): a read.
    ReserveDup,
}

impl Op {
    pub(crate) const ALL: [Op; 5] = [
        Op::Get,
        Op::GetExclusive,
        Op::Put,
        Op::ReserveNew,
        Op::ReserveDup,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetExclusive => "get_exclusive",
            Op::Put => "put",
            Op::ReserveNew => "reserve_new",
            Op::ReserveDup => "reserve_dup",
        }
    }

    /// Whether it writes durably: it must flush, through either face.
    fn writes(self) -> bool {
        matches!(self, Op::Put | Op::ReserveNew)
    }
}

/// How a cell calls jobsafe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Face {
    /// The blocking API, from threads of the bench's own.
    Sync,
    /// The async face, from tasks on the runtime.
    Async,
}

/// One face's figures for one operation and concurrency, summed over rounds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sum {
    ops: u64,
    secs: f64,
    syncs: u64,
}

impl Sum {
    fn add(&mut self, timed: &Sum) {
        self.ops += timed.ops;
        self.secs += timed.secs;
        self.syncs += timed.syncs;
    }

    pub(crate) fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn fsyncs_per_op(&self) -> f64 {
        self.syncs as f64 / self.ops as f64
    }
}

/// An operation at one concurrency, through both faces.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) op: Op,
    pub(crate) concurrency: usize,
    pub(crate) sync: Sum,
    pub(crate) async_face: Sum,
    /// Each round's async throughput over its sync throughput.
    per_round: Vec<f64>,
}

impl Row {
    /// The async face's throughput over the blocking API's: the median of
    /// the rounds' ratios.
    pub(crate) fn ratio(&self) -> f64 {
        median(&self.per_round)
    }
}

/// Runs every operation at every concurrency through both faces, for the
/// configured rounds.
pub(crate) fn measure(rt: &Runtime, options: &Options, run: &mut RunDir) -> BenchResult<Vec<Row>> {
    let preload = if options.smoke {
        SMOKE_PRELOAD
    } else {
        PRELOAD
    };
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..options.rounds {
        for &op in &options.ops {
            for concurrency in CONCURRENCY {
                let faces = if round % 2 == 0 {
                    [Face::Sync, Face::Async]
                } else {
                    [Face::Async, Face::Sync]
                };
                let mut timed = [Sum::default(), Sum::default()];
                for face in faces {
                    let label = format!("{}-{concurrency}-{face:?}-r{round}", op.name());
                    let exclusive = op == Op::GetExclusive;
                    let subject = Arc::new(Subject::open(&run.fresh(&label)?, preload, exclusive)?);
                    let cell = Cell {
                        op,
                        concurrency,
                        length: options.cell,
                        pass: Pass::Timed,
                    };
                    let sum = cell.run(rt, &subject, face)?;
                    eprintln!(
                        "{:>11} x{concurrency:<2} {face:?}: {:>8.0} ops/s ({} ops)",
                        op.name(),
                        sum.ops_per_s(),
                        sum.ops
                    );
                    timed[usize::from(face == Face::Async)] = sum;
                }
                let [sync, async_face] = timed;
                let row = match rows
                    .iter_mut()
                    .find(|r| r.op == op && r.concurrency == concurrency)
                {
                    Some(row) => row,
                    None => {
                        rows.push(Row {
                            op,
                            concurrency,
                            sync: Sum::default(),
                            async_face: Sum::default(),
                            per_round: Vec::new(),
                        });
                        rows.last_mut().ok_or("a row was just pushed")?
                    }
                };
                row.per_round
                    .push(async_face.ops_per_s() / sync.ops_per_s());
                row.sync.add(&sync);
                row.async_face.add(&async_face);
            }
        }
    }
    Ok(rows)
}

/// A fresh store, its ledger, and what was preloaded into them.
struct Subject {
    store: LogStore<Counting<StdVfs>>,
    ledger: JobLedger<LogStore<Counting<StdVfs>>>,
    async_ledger: AsyncJobLedger<LogStore<Counting<StdVfs>>>,
    vfs: Counting<StdVfs>,
    /// Keys of the preloaded values, each holding [`Subject::value`].
    keys: Vec<Key>,
    reserved: Vec<Job>,
    value: Vec<u8>,
}

impl Subject {
    /// A `LogStore` in `dir` at `Durability::Full` (the default), in
    /// exclusive mode if `exclusive`, its flushes counted, holding `preload`
    /// values and `preload` reservations.
    fn open(dir: &Path, preload: usize, exclusive: bool) -> BenchResult<Self> {
        let vfs = Counting::new(StdVfs);
        let store = LogStore::builder(dir)
            .vfs(vfs.clone())
            .exclusive(exclusive)
            .open()?;
        let ledger = JobLedger::new(store.clone(), Arc::new(SystemClock));
        let keys = (0..preload)
            .map(|k| Key::new(["bench", &format!("pre-{k:07}")]))
            .collect::<jobsafe::Result<Vec<_>>>()?;
        let subject = Subject {
            async_ledger: AsyncJobLedger::new(ledger.clone()),
            store,
            ledger,
            vfs,
            keys,
            reserved: ledger::jobs(preload),
            value: kv::value('p'),
        };
        subject.preload()?;
        Ok(subject)
    }

    /// Writes the preloaded values and reservations durably, from a few
    /// threads so that they share flushes.
    fn preload(&self) -> BenchResult {
        const LOADERS: usize = 8;
        let failures: Vec<String> = thread::scope(|s| {
            let loaders: Vec<_> = (0..LOADERS)
                .map(|t| {
                    s.spawn(move || -> Result<(), String> {
                        let mine = |i: &usize| i % LOADERS == t;
                        for key in (0..self.keys.len()).filter(mine).map(|i| &self.keys[i]) {
                            self.store
                                .put(key, &self.value, Expect::Absent)
                                .map_err(|e| e.to_string())?;
                        }
                        for i in (0..self.reserved.len()).filter(mine) {
                            self.reserve_sync(&self.reserved[i], Outcome::New)
                                .map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    })
                })
                .collect();
            loaders
                .into_iter()
                .filter_map(|loader| match loader.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("a loader panicked".to_owned()),
                })
                .collect()
        });
        match failures.into_iter().next() {
            Some(e) => Err(format!("preloading: {e}").into()),
            None => Ok(()),
        }
    }

    fn syncs(&self) -> u64 {
        self.vfs.counts().syncs()
    }

    /// The blocking API's call for `op`, by worker `w`, its `i`-th; checked.
    fn sync_op(&self, op: Op, w: Worker, i: u64) -> BenchResult {
        match op {
            Op::Get | Op::GetExclusive => {
                self.check_read(self.store.get(self.preloaded_key(w, i))?)
            }
            Op::Put => {
                self.store
                    .put(&w.fresh_key(i)?, &self.value, Expect::Absent)?;
                Ok(())
            }
            Op::ReserveNew => self.reserve_sync(&w.new_job(i), Outcome::New),
            Op::ReserveDup => self.reserve_sync(self.reserved_job(w, i), Outcome::Existing),
        }
    }

    /// The async face's call for `op`: the twin of [`sync_op`](Self::sync_op).
    async fn async_op(&self, op: Op, w: Worker, i: u64) -> BenchResult {
        match op {
            Op::Get | Op::GetExclusive => {
                self.check_read(self.store.get_async(self.preloaded_key(w, i)).await?)
            }
            Op::Put => {
                let key = w.fresh_key(i)?;
                self.store
                    .put_async(&key, self.value.clone(), Expect::Absent)
                    .await?;
                Ok(())
            }
            Op::ReserveNew => self.reserve_async(&w.new_job(i), Outcome::New).await,
            Op::ReserveDup => {
                self.reserve_async(self.reserved_job(w, i), Outcome::Existing)
                    .await
            }
        }
    }

    fn reserve_sync(&self, job: &Job, expected: Outcome) -> BenchResult {
        let reserve = self
            .ledger
            .reserve(&job.account, &job.job_id, &ledger::request())?;
        Ok(ledger::check(
            "reserve",
            job,
            ledger::outcome(reserve)?,
            expected,
        )?)
    }

    async fn reserve_async(&self, job: &Job, expected: Outcome) -> BenchResult {
        let reserve = self
            .async_ledger
            .reserve(&job.account, &job.job_id, &ledger::request())
            .await?;
        Ok(ledger::check(
            "reserve",
            job,
            ledger::outcome(reserve)?,
            expected,
        )?)
    }

    fn preloaded_key(&self, w: Worker, i: u64) -> &Key {
        &self.keys[w.spread(i, self.keys.len())]
    }

    fn reserved_job(&self, w: Worker, i: u64) -> &Job {
        &self.reserved[w.spread(i, self.reserved.len())]
    }

    /// Fails unless a read found the preloaded value.
    fn check_read(&self, read: Option<jobsafe::Entry>) -> BenchResult {
        match read {
            Some(entry) if entry.value == self.value => Ok(()),
            _ => Err("a preloaded value does not read back as written".into()),
        }
    }
}

/// One of a cell's threads or tasks: the `index`-th of `of`, in `pass`.
#[derive(Clone, Copy, Debug)]
struct Worker {
    index: usize,
    of: usize,
    pass: Pass,
}

/// Which run of a cell: the untimed one first, then the timed one. Each
/// writes keys of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Warm,
    Timed,
}

impl Worker {
    /// Its `i`-th pick among `len` preloaded items: the workers take turns,
    /// so each item is read as often as any other.
    fn spread(self, i: u64, len: usize) -> usize {
        ((self.index as u64 + i * self.of as u64) % len as u64) as usize
    }

    fn fresh_key(self, i: u64) -> jobsafe::Result<Key> {
        let pass = match self.pass {
            Pass::Warm => "warm",
            Pass::Timed => "timed",
        };
        Key::new(["bench", &format!("{pass}-w{:02}-{i:09}", self.index)])
    }

    fn new_job(self, i: u64) -> Job {
        Job {
            account: format!("lic:{:04}", self.spread(i, ACCOUNTS)),
            job_id: uuid::Uuid::now_v7().to_string(),
        }
    }
}

/// One operation at one concurrency, ready to run through either face.
#[derive(Clone, Copy, Debug)]
struct Cell {
    op: Op,
    concurrency: usize,
    length: Duration,
    pass: Pass,
}

impl Cell {
    /// Runs untimed for a fifth of the length, then timed, through `face`;
    /// checks that durable writes flushed.
    fn run(self, rt: &Runtime, subject: &Arc<Subject>, face: Face) -> BenchResult<Sum> {
        let warm = Cell {
            length: self.length / 5,
            pass: Pass::Warm,
            ..self
        };
        let time = |cell: Cell| match face {
            Face::Sync => cell.run_threads(subject),
            Face::Async => cell.run_tasks(rt, subject),
        };
        time(warm)?;
        let before = subject.syncs();
        let (ops, elapsed) = time(self)?;
        let sum = Sum {
            ops,
            secs: elapsed.as_secs_f64(),
            syncs: subject.syncs() - before,
        };
        if self.op.writes() && sum.syncs == 0 {
            return Err(format!(
                "{} x{} {face:?}: {} durable writes made no flush",
                self.op.name(),
                self.concurrency,
                sum.ops
            )
            .into());
        }
        Ok(sum)
    }

    /// Threads released together, each calling the blocking API until the
    /// cell's time is up: operations, and the time until the last was done.
    fn run_threads(self, subject: &Subject) -> BenchResult<(u64, Duration)> {
        let barrier = Barrier::new(self.concurrency + 1);
        thread::scope(|s| {
            let workers: Vec<_> = (0..self.concurrency)
                .map(|index| {
                    let (barrier, w) = (&barrier, self.worker(index));
                    s.spawn(move || -> Result<u64, String> {
                        barrier.wait();
                        let end = Instant::now() + self.length;
                        let mut i = 0;
                        while Instant::now() < end {
                            subject.sync_op(self.op, w, i).map_err(|e| e.to_string())?;
                            i += 1;
                        }
                        Ok(i)
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            let mut ops = 0;
            for worker in workers {
                ops += worker
                    .join()
                    .map_err(|_| "a bench thread panicked".to_owned())??;
            }
            Ok((ops, start.elapsed()))
        })
    }

    /// Tasks spawned together on the runtime, each calling the async face
    /// until the cell's time is up.
    fn run_tasks(self, rt: &Runtime, subject: &Arc<Subject>) -> BenchResult<(u64, Duration)> {
        rt.block_on(async {
            let start = Instant::now();
            let end = start + self.length;
            let tasks: Vec<_> = (0..self.concurrency)
                .map(|index| {
                    let (subject, w) = (Arc::clone(subject), self.worker(index));
                    tokio::spawn(async move {
                        let mut i = 0;
                        while Instant::now() < end {
                            subject
                                .async_op(self.op, w, i)
                                .await
                                .map_err(|e| e.to_string())?;
                            i += 1;
                        }
                        Ok::<u64, String>(i)
                    })
                })
                .collect();
            let mut ops = 0;
            for task in tasks {
                ops += task
                    .await
                    .map_err(|e| format!("a bench task failed: {e}"))??;
            }
            Ok((ops, start.elapsed()))
        })
    }

    fn worker(self, index: usize) -> Worker {
        Worker {
            index,
            of: self.concurrency,
            pass: self.pass,
        }
    }
}

/// The table: a row per operation and concurrency.
pub(crate) fn markdown(rows: &[Row]) -> Table {
    let mut table = Table::new([
        "operation",
        "threads / tasks",
        "sync ops/s",
        "async ops/s",
        "async / sync",
        "fsyncs/op sync, async",
    ]);
    for row in rows {
        table.row([
            row.op.name().to_owned(),
            row.concurrency.to_string(),
            format!("{:.0}", row.sync.ops_per_s()),
            format!("{:.0}", row.async_face.ops_per_s()),
            format!("{:.2}x", row.ratio()),
            format!(
                "{:.2}, {:.2}",
                row.sync.fsyncs_per_op(),
                row.async_face.fsyncs_per_op()
            ),
        ]);
    }
    table
}

/// Durable writes through the async face within [`WRITE_SLOWDOWN`] of the
/// blocking API, as a ratio of costs: sync throughput over async.
pub(crate) fn targets(rows: &[Row]) -> Vec<Target> {
    rows.iter()
        .filter(|row| row.op.writes())
        .map(|row| {
            Target::new(
                format!(
                    "{} x{}: sync / async throughput",
                    row.op.name(),
                    row.concurrency
                ),
                Some(1.0 / row.ratio()),
                Bound::AtMost(WRITE_SLOWDOWN),
            )
        })
        .collect()
}

/// Every figure of the rows, named, for the check that all are finite.
pub(crate) fn figures(rows: &[Row]) -> Vec<(String, f64)> {
    rows.iter()
        .flat_map(|row| {
            let name = format!("{} x{}", row.op.name(), row.concurrency);
            [
                (format!("{name} sync ops/s"), row.sync.ops_per_s()),
                (format!("{name} async ops/s"), row.async_face.ops_per_s()),
                (format!("{name} async/sync"), row.ratio()),
            ]
        })
        .collect()
}
