//! `PgStore`'s async face against its blocking API: `get` of a preloaded key
//! and durable `put` (`Durability::Full`, a 256-byte value under a new key)
//! from N threads and from N tasks on the two-worker runtime, each cell on a
//! fresh store in a schema of its own with the same pool size, [`POOL`]. The
//! blocking face drives each connection on its calling thread; the async
//! face runs each call as a task of the runtime, on connections the runtime
//! drives. Target: at 16, the async face's throughput at least the blocking
//! API's.
//!
//! Runs when the bench is built with `--features postgres` and
//! `JOBSAFE_PG_URL` names a server (`bash .ci/postgres.sh cargo bench -p
//! jobsafe-bench --features postgres --bench async_face`).

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use jobsafe::{Durability, Expect, Key, PgStore, Store};
use tokio::runtime::Runtime;

use crate::async_face::options::Options;
use crate::common::report::{Table, median};
use crate::common::targets::{Bound, Target};
use crate::common::{BenchResult, kv, pg};

/// Connections per store, for both faces: `PgStoreBuilder`'s default.
pub(crate) const POOL: u32 = 8;
/// Threads of the blocking API, and tasks of the async face.
const CONCURRENCY: [usize; 2] = [1, 16];
/// Keys preloaded for the reads.
const PRELOAD: usize = 1_000;
const SMOKE_PRELOAD: usize = 20;
/// The least the async face's throughput may be, over the blocking API's, at
/// 16.
const AT_LEAST: f64 = 1.0;

/// An operation of the section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Get,
    Put,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
        }
    }
}

/// One operation at one concurrency through both faces: ops/s of each round.
#[derive(Debug)]
pub(crate) struct Row {
    op: Op,
    concurrency: usize,
    sync: Vec<f64>,
    async_face: Vec<f64>,
}

impl Row {
    /// The median of the rounds' ratios, async over sync.
    fn ratio(&self) -> f64 {
        let ratios: Vec<f64> = self
            .sync
            .iter()
            .zip(&self.async_face)
            .map(|(sync, async_face)| async_face / sync)
            .collect();
        median(&ratios)
    }
}

/// Every operation at every concurrency through both faces, the faces
/// taking turns from round to round.
pub(crate) fn measure(rt: &Runtime, options: &Options) -> BenchResult<Vec<Row>> {
    let preload = if options.smoke {
        SMOKE_PRELOAD
    } else {
        PRELOAD
    };
    let mut rows = Vec::new();
    for op in [Op::Get, Op::Put] {
        for concurrency in CONCURRENCY {
            rows.push(Row {
                op,
                concurrency,
                sync: Vec::new(),
                async_face: Vec::new(),
            });
        }
    }
    for round in 0..options.rounds {
        for row in &mut rows {
            let mut faces = [false, true];
            if round % 2 == 1 {
                faces.reverse();
            }
            for is_async in faces {
                let subject = Subject::open(preload)?;
                let cell = Cell {
                    op: row.op,
                    concurrency: row.concurrency,
                    length: options.cell,
                };
                let ops_per_s = cell.measure(rt, &subject, is_async)?;
                eprintln!(
                    "pg {:>3} x{:<2} {}: {ops_per_s:>8.0} ops/s",
                    row.op.name(),
                    row.concurrency,
                    if is_async { "async" } else { "sync" }
                );
                if is_async {
                    row.async_face.push(ops_per_s);
                } else {
                    row.sync.push(ops_per_s);
                }
            }
        }
    }
    pg::drop_schemas()?;
    Ok(rows)
}

/// A fresh store with its preloaded keys.
struct Subject {
    store: PgStore,
    keys: Vec<Key>,
    value: Vec<u8>,
}

impl Subject {
    fn open(preload: usize) -> BenchResult<Subject> {
        let store = pg::store_with_pool(Durability::Full, POOL)?;
        let value = kv::value('p');
        let keys = (0..preload)
            .map(|k| Key::new(["bench", &format!("pre-{k:07}")]))
            .collect::<jobsafe::Result<Vec<_>>>()?;
        thread::scope(|s| {
            let loaders: Vec<_> = (0..8)
                .map(|t| {
                    let (store, keys, value) = (&store, &keys, &value);
                    s.spawn(move || -> Result<(), String> {
                        for key in keys.iter().skip(t).step_by(8) {
                            store
                                .put(key, value, Expect::Absent)
                                .map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    })
                })
                .collect();
            loaders.into_iter().try_for_each(|loader| {
                loader
                    .join()
                    .map_err(|_| "a loader panicked".to_owned())?
                    .map_err(|e| format!("preloading: {e}"))
            })
        })?;
        Ok(Subject { store, keys, value })
    }

    fn key(&self, worker: usize, of: usize, i: u64) -> &Key {
        &self.keys[(worker + i as usize * of) % self.keys.len()]
    }
}

/// One operation at one concurrency.
#[derive(Clone, Copy, Debug)]
struct Cell {
    op: Op,
    concurrency: usize,
    length: Duration,
}

impl Cell {
    /// Runs untimed for a fifth of the length (connections made), then
    /// timed: ops/s.
    fn measure(self, rt: &Runtime, subject: &Subject, is_async: bool) -> BenchResult<f64> {
        let run = |length: Duration, pass: &str| {
            if is_async {
                self.tasks(rt, subject, length, pass)
            } else {
                self.threads(subject, length, pass)
            }
        };
        run(self.length / 5, "warm")?;
        let (ops, elapsed) = run(self.length, "timed")?;
        Ok(ops as f64 / elapsed.as_secs_f64())
    }

    fn threads(
        self,
        subject: &Subject,
        length: Duration,
        pass: &str,
    ) -> BenchResult<(u64, Duration)> {
        let barrier = Barrier::new(self.concurrency + 1);
        thread::scope(|s| {
            let workers: Vec<_> = (0..self.concurrency)
                .map(|w| {
                    let barrier = &barrier;
                    s.spawn(move || -> Result<u64, String> {
                        barrier.wait();
                        let end = Instant::now() + length;
                        let mut i = 0;
                        while Instant::now() < end {
                            match self.op {
                                Op::Get => {
                                    let read =
                                        subject.store.get(subject.key(w, self.concurrency, i));
                                    check_read(read.map_err(|e| e.to_string())?, &subject.value)?;
                                }
                                Op::Put => {
                                    let key = fresh_key(pass, w, i).map_err(|e| e.to_string())?;
                                    subject
                                        .store
                                        .put(&key, &subject.value, Expect::Absent)
                                        .map_err(|e| e.to_string())?;
                                }
                            }
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

    fn tasks(
        self,
        rt: &Runtime,
        subject: &Subject,
        length: Duration,
        pass: &str,
    ) -> BenchResult<(u64, Duration)> {
        // Each task's keys, in the order a thread reads them, made before
        // the clock starts.
        let inputs: Vec<(usize, Vec<Key>)> = (0..self.concurrency)
            .map(|w| {
                let keys = (0..subject.keys.len() as u64)
                    .map(|i| subject.key(w, self.concurrency, i).clone())
                    .collect();
                (w, keys)
            })
            .collect();
        rt.block_on(async {
            let start = Instant::now();
            let end = start + length;
            let tasks: Vec<_> = inputs
                .into_iter()
                .map(|(w, keys)| {
                    let store = subject.store.clone();
                    let value = subject.value.clone();
                    let pass = pass.to_owned();
                    let op = self.op;
                    tokio::spawn(async move {
                        let mut i = 0u64;
                        while Instant::now() < end {
                            match op {
                                Op::Get => {
                                    let key = &keys[i as usize % keys.len()];
                                    let read = store.get_async(key).await;
                                    check_read(read.map_err(|e| e.to_string())?, &value)?;
                                }
                                Op::Put => {
                                    let key = fresh_key(&pass, w, i).map_err(|e| e.to_string())?;
                                    store
                                        .put_async(&key, value.clone(), Expect::Absent)
                                        .await
                                        .map_err(|e| e.to_string())?;
                                }
                            }
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
}

fn fresh_key(pass: &str, worker: usize, i: u64) -> jobsafe::Result<Key> {
    Key::new(["bench", &format!("{pass}-w{worker:02}-{i:09}")])
}

/// Fails unless a read found the preloaded value.
fn check_read(read: Option<jobsafe::Entry>, value: &[u8]) -> Result<(), String> {
    match read {
        Some(entry) if entry.value == value => Ok(()),
        _ => Err("a preloaded value does not read back as written".to_owned()),
    }
}

/// The section's table.
pub(crate) fn markdown(rows: &[Row]) -> Table {
    let mut table = Table::new([
        "operation",
        "threads / tasks",
        "sync ops/s",
        "async ops/s",
        "async / sync",
    ]);
    for row in rows {
        table.row([
            row.op.name().to_owned(),
            row.concurrency.to_string(),
            format!("{:.0}", median(&row.sync)),
            format!("{:.0}", median(&row.async_face)),
            format!("{:.2}x", row.ratio()),
        ]);
    }
    table
}

/// At 16, the async face's throughput at least the blocking API's.
pub(crate) fn targets(rows: &[Row]) -> Vec<Target> {
    rows.iter()
        .filter(|row| row.concurrency == 16)
        .map(|row| {
            Target::new(
                format!("PgStore {} x16: async / sync throughput", row.op.name()),
                Some(row.ratio()),
                Bound::AtLeast(AT_LEAST),
            )
        })
        .collect()
}

/// Every figure, named, for the check that all are finite.
pub(crate) fn figures(rows: &[Row]) -> Vec<(String, f64)> {
    rows.iter()
        .flat_map(|row| {
            let name = format!("pg {} x{}", row.op.name(), row.concurrency);
            [
                (format!("{name} sync ops/s"), median(&row.sync)),
                (format!("{name} async ops/s"), median(&row.async_face)),
                (format!("{name} async/sync"), row.ratio()),
            ]
        })
        .collect()
}
