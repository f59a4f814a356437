//! Timing a [`Cell`]: its threads start together, each runs operations until
//! the cell's time is up, and every operation's latency is recorded.

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::common::BenchResult;
use crate::common::latency::Histogram;
use crate::compare::cell::{Bench, Cell, Impl};

/// What one cell measured.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) bench: Bench,
    pub(crate) imp: Impl,
    pub(crate) threads: usize,
    pub(crate) ops: u64,
    /// From the moment the threads were released until the last was done.
    pub(crate) secs: f64,
    pub(crate) latency: Histogram,
    /// Disk flushes during the timed operations, where counted.
    pub(crate) syncs: Option<u64>,
}

impl Row {
    pub(crate) fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    pub(crate) fn p50_us(&self) -> f64 {
        self.latency.quantile_us(0.5)
    }

    pub(crate) fn p99_us(&self) -> f64 {
        self.latency.quantile_us(0.99)
    }

    /// Adds another round of the same cell.
    pub(crate) fn add(&mut self, round: &Row) {
        self.ops += round.ops;
        self.secs += round.secs;
        self.latency.merge(&round.latency);
        self.syncs = self.syncs.zip(round.syncs).map(|(a, b)| a + b);
    }

    pub(crate) fn fsyncs_per_op(&self) -> Option<f64> {
        self.syncs.map(|s| s as f64 / self.ops as f64)
    }

    /// The row as the issue specifies it, one JSON object, flushes after.
    pub(crate) fn json(&self) -> String {
        self.json_as(self.bench.name())
    }

    /// [`json`](Self::json) under another bench name, for the rows of a
    /// section (`reserve_new_1m`).
    pub(crate) fn json_as(&self, bench: &str) -> String {
        let line = JsonRow {
            bench,
            imp: self.imp.name(),
            threads: self.threads,
            ops_per_s: self.ops_per_s(),
            p50_us: self.p50_us(),
            p99_us: self.p99_us(),
            fsyncs_per_op: self.fsyncs_per_op(),
            ops: self.ops,
        };
        // Serializing numbers and strings cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// Fails if a durable implementation wrote without flushing: a bench that
    /// lost its durability, not a win.
    pub(crate) fn check_durable(&self) -> BenchResult {
        if self.imp.durable() && self.bench.writes() && self.syncs == Some(0) {
            return Err(format!(
                "{} {} at {} threads: {} durable writes made no flush",
                self.imp, self.bench, self.threads, self.ops
            )
            .into());
        }
        Ok(())
    }
}

/// A row of `compare.jsonl`, its fields in the order the issue gives them.
#[derive(Serialize)]
struct JsonRow<'a> {
    bench: &'a str,
    #[serde(rename = "impl")]
    imp: &'a str,
    threads: usize,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    fsyncs_per_op: Option<f64>,
    ops: u64,
}

/// How long each thread of a cell runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Length {
    pub(crate) time: Duration,
    /// Operations each thread runs at least, however long they take.
    pub(crate) min_ops: u64,
}

/// Runs `cell`, its threads released together, each for `length`.
pub(crate) fn run(bench: Bench, imp: Impl, cell: Cell, length: Length) -> BenchResult<Row> {
    let Cell { workers, syncs } = cell;
    let threads = workers.len();
    let barrier = Barrier::new(threads + 1);
    let before = syncs.get();
    let (secs, results) = thread::scope(|s| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|mut worker| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut latency = Histogram::default();
                    barrier.wait();
                    let start = Instant::now();
                    let deadline = start + length.time;
                    let mut i = 0;
                    let mut last = start;
                    while i < length.min_ops || last < deadline {
                        worker(i).map_err(|e| format!("{imp} {bench} op {i}: {e}"))?;
                        let now = Instant::now();
                        latency.record(now - last);
                        last = now;
                        i += 1;
                    }
                    Ok::<_, String>(latency)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a bench thread panicked".to_owned()))
            })
            .collect();
        (start.elapsed().as_secs_f64(), results)
    });
    let mut latency = Histogram::default();
    for result in results {
        latency.merge(&result?);
    }
    let syncs = before.zip(syncs.get()).map(|(b, a)| a - b);
    Ok(Row {
        bench,
        imp,
        threads,
        ops: latency.count(),
        secs,
        latency,
        syncs,
    })
}
