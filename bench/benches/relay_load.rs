//! A bounded load run of the `relay_server` example over loopback: the server
//! (release build) on each store backend, client threads with keep-alive
//! connections sending a fixed number of requests each, and the requests per
//! second and latency percentiles of job creation (`POST /jobs`, each a new
//! idempotency key: a durable reservation, balance change and job record),
//! of retried creations (the same keys again: a read, nothing charged) and of
//! status polls (`GET /jobs/{id}`).
//!
//! Jobs run as they are created (three stages of no work, `--stage-ms 0`), so
//! the requests share the store with the workers, as they would in service.
//! Figures are for one machine and one disk at one time: compare the columns of
//! one run, not runs.
//!
//! Then, on a server of its own whose jobs do not move (every stage waits for
//! a gate file), it opens 1,000 SSE event streams (`GET /jobs/{id}/events`) and
//! reports the server's threads, resident memory and descriptors with and
//! without them, the p50/p99 of status polls and job creation made while they
//! are open against the same with none, how fast an event reaches its stream,
//! and whether the server is back to where it was once they close (see `sse`).
//!
//! `cargo bench -p jobsafe-bench --bench relay_load` (it builds the example with
//! `cargo build -p jobsafe --example relay_server --release` first, a no-op when
//! it is up to date); `JOBSAFE_BENCH_SMOKE=1` for a seconds-long check;
//! `JOBSAFE_BENCH_OPS=N` requests per client thread and operation;
//! `JOBSAFE_BENCH_THREADS=N` client threads (default 8). The SSE section opens
//! 20 streams in a smoke run.

mod common;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/common/relay.rs"]
mod relay;
#[path = "relay_load/sse.rs"]
mod sse;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use self::common::latency::Histogram;
use self::common::report::Table;
use self::common::{BenchResult, Config, RunDir};
use self::relay::{Relay, Res};

/// Requests per client thread and operation in a full run.
const OPS: usize = 500;
/// Client threads unless `JOBSAFE_BENCH_THREADS` says otherwise.
const THREADS: usize = 8;
/// The store backends the server runs on, one column each.
const BACKENDS: [&str; 2] = ["log", "dir"];

/// What one operation measured: requests, wall time, latencies.
struct Load {
    requests: u64,
    elapsed: Duration,
    latency: Histogram,
}

impl Load {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

fn main() -> BenchResult {
    let config = Config::from_env()?;
    let threads = match std::env::var("JOBSAFE_BENCH_THREADS") {
        Ok(n) => n.parse()?,
        Err(_) if config.smoke() => 2,
        Err(_) => THREADS,
    };
    let ops = config.ops(OPS);
    let run = RunDir::create("relay-load")?;
    println!(
        "# relay_server load (loopback)\n\n{}; {threads} client threads, {ops} requests each per operation\n",
        if config.smoke() {
            "Smoke run: figures mean nothing"
        } else {
            "One run"
        }
    );

    // Thread t acts for account lic:t.
    let accounts: Vec<String> = (0..threads).map(|t| format!("lic:{t}")).collect();
    let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let mut results: Vec<(&str, Vec<(&str, Load)>)> = Vec::new();
    for backend in BACKENDS {
        let state = run.path().join(backend);
        let relay = Relay::start(
            &state,
            &accounts,
            &[
                "--backend",
                backend,
                "--stage-ms",
                "0",
                "--credits",
                "1000000000",
                // Jobs are created faster than they run: no cap on them.
                "--max-queued",
                "1000000000",
            ],
            true,
        )
        .map_err(|e| e.to_string())?;
        let clients: Vec<_> = accounts.iter().map(|a| relay.client(a)).collect();
        let mut loads = Vec::new();
        // Thread t creates jobs t-0 .. t-(ops-1) for its own account.
        let (created, ids) = load(threads, ops, |t, i| {
            let key = format!("{t}-{i}");
            let (status, answer) = clients[t].post(
                "/jobs",
                &[("Idempotency-Key", &key)],
                r#"{"kind":"transcribe"}"#,
            )?;
            check(status == 202 && answer["charged"] == true, || {
                format!("POST /jobs {key}: {status} {answer}")
            })?;
            Ok(answer["job_id"].as_str().unwrap_or_default().to_owned())
        })?;
        loads.push(("POST /jobs (new key)", created));
        let (retried, _) = load(threads, ops, |t, i| {
            let key = format!("{t}-{i}");
            let (status, answer) = clients[t].post(
                "/jobs",
                &[("Idempotency-Key", &key)],
                r#"{"kind":"transcribe"}"#,
            )?;
            check(status == 202 && answer["charged"] == false, || {
                format!("POST /jobs {key} again: {status} {answer}")
            })?;
            Ok(String::new())
        })?;
        loads.push(("POST /jobs (retry)", retried));
        let (polled, _) = load(threads, ops, |t, i| {
            let id = &ids[t][(i * 7 + t) % ids[t].len()];
            let (status, job) = clients[t].get(&format!("/jobs/{id}"))?;
            check(status == 200 && job["id"] == id.as_str(), || {
                format!("GET /jobs/{id}: {status} {job}")
            })?;
            Ok(String::new())
        })?;
        loads.push(("GET /jobs/{id}", polled));
        drop(clients);
        relay.kill();
        results.push((backend, loads));
    }

    let mut table = Table::new(
        ["operation".to_owned()].into_iter().chain(
            BACKENDS
                .iter()
                .map(|b| format!("{b}store: req/s, p50, p99 (ms)")),
        ),
    );
    let operations: Vec<&str> = results[0].1.iter().map(|(name, _)| *name).collect();
    for (row, operation) in operations.iter().enumerate() {
        let mut cells = vec![(*operation).to_owned()];
        for (_, loads) in &results {
            let load = &loads[row].1;
            cells.push(format!(
                "{:.0}, {:.2}, {:.2}",
                load.per_second(),
                load.latency.quantile_us(0.5) / 1000.0,
                load.latency.quantile_us(0.99) / 1000.0
            ));
        }
        table.row(cells);
    }
    println!("{table}");
    for (backend, loads) in &results {
        for (operation, load) in loads {
            println!(
                r#"{{"bench": "relay_load/{operation}", "impl": "{backend}store", "threads": {threads}, "requests": {}, "req_per_s": {:.1}, "p50_us": {:.1}, "p99_us": {:.1}}}"#,
                load.requests,
                load.per_second(),
                load.latency.quantile_us(0.5),
                load.latency.quantile_us(0.99)
            );
        }
    }
    sse::run(&config, &run, threads, ops)?;
    run.remove()
}

/// Runs `request(thread, i)` for `i` in `0..ops` on each of `threads` threads,
/// started together; returns the load and each thread's answers.
fn load(
    threads: usize,
    ops: usize,
    request: impl Fn(usize, usize) -> Res<String> + Sync,
) -> BenchResult<(Load, Vec<Vec<String>>)> {
    let start = Barrier::new(threads + 1);
    let (began, outcomes) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (start, request) = (&start, &request);
                scope.spawn(move || -> Res<(Histogram, Vec<String>)> {
                    let mut latency = Histogram::default();
                    let mut answers = Vec::with_capacity(ops);
                    start.wait();
                    for i in 0..ops {
                        let sent = Instant::now();
                        answers.push(request(t, i)?);
                        latency.record(sent.elapsed());
                    }
                    Ok((latency, answers))
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let outcomes: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        (began, outcomes)
    });
    let elapsed = began.elapsed();
    let mut latency = Histogram::default();
    let mut answers = Vec::new();
    for outcome in outcomes {
        let (thread_latency, thread_answers) = outcome
            .map_err(|_| "a client thread panicked")?
            .map_err(|e| e.to_string())?;
        latency.merge(&thread_latency);
        answers.push(thread_answers);
    }
    Ok((
        Load {
            requests: latency.count(),
            elapsed,
            latency,
        },
        answers,
    ))
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Res {
    if ok { Ok(()) } else { Err(what().into()) }
}
