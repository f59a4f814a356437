//! What the feature `tracing` costs a store call when no subscriber listens:
//! a fixed number of `LogStore` calls, `get` of one of 1,000 stored keys or a
//! durable `put` under a new key, timed in one process.
//!
//! Wall time on a shared machine cannot tell 1.02x from noise, so the
//! figure this bench is made for is the count of instructions, exact under
//! `valgrind --tool=callgrind`, in a build with the feature and one without,
//! each at two counts of calls so that the set-up cancels out:
//!
//! ```sh
//! cargo bench -p jobsafe-bench --bench trace_cost --no-run
//! cargo bench -p jobsafe-bench --bench trace_cost --features jobsafe/tracing --no-run
//! # for each binary, OP in get put, N in (20000, 60000) for get, (1000, 3000) for put:
//! JOBSAFE_TRACE_COST=OP:N valgrind --tool=callgrind --callgrind-out-file=/dev/null BINARY
//! # instructions per call = (Ir at the larger N - Ir at the smaller) / difference of N
//! ```
//!
//! `JOBSAFE_TRACE_COST=OP:N` (default `get:200000`); `JOBSAFE_BENCH_SMOKE=1`
//! makes a few calls of each.

mod common;

use std::time::Instant;

use jobsafe::{Expect, Key, LogStore, Store};

use self::common::{BenchResult, Config, RunDir};

/// Keys stored before timing, read in turn by `get`.
const STORED: usize = 1_000;

fn main() -> BenchResult {
    let config = Config::from_env()?;
    let runs: Vec<(String, usize)> = if config.smoke() {
        vec![("get".to_owned(), 100), ("put".to_owned(), 10)]
    } else {
        let spec = std::env::var("JOBSAFE_TRACE_COST").unwrap_or_else(|_| "get:200000".to_owned());
        let (op, n) = spec
            .split_once(':')
            .ok_or("JOBSAFE_TRACE_COST is OP:N, with OP get or put")?;
        vec![(op.to_owned(), n.parse()?)]
    };
    let mut run = RunDir::create("trace_cost")?;
    for (op, n) in runs {
        let store = LogStore::builder(run.fresh(&op)?).open()?;
        let keys = (0..STORED)
            .map(|i| Key::new(["bench", &format!("k{i:06}")]))
            .collect::<jobsafe::Result<Vec<_>>>()?;
        let value = vec![b'x'; 256];
        for key in &keys {
            store.put(key, &value, Expect::Any)?;
        }
        let started = Instant::now();
        match op.as_str() {
            "get" => {
                for i in 0..n {
                    if store.get(&keys[i % STORED])?.is_none() {
                        return Err("a stored key reads as absent".into());
                    }
                }
            }
            "put" => {
                for i in 0..n {
                    let key = Key::new(["bench", &format!("new{i:09}")])?;
                    store.put(&key, &value, Expect::Absent)?;
                }
            }
            other => return Err(format!("unknown operation {other:?}: get or put").into()),
        }
        let per_call = started.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
        println!("{op} x{n}: {per_call:.2} µs a call");
    }
    run.remove()
}
