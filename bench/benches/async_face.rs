//! What the async face (feature `async`) costs, in one run on one disk (a
//! directory under `target/`), on a tokio runtime of two worker threads.
//!
//! `cargo bench -p jobsafe-bench --bench async_face` runs these sections:
//!
//! 1. `idle`: the threads of the process (`Threads:` in `/proc/self/status`,
//!    and how many of them are jobsafe's pool) and the heap bytes per
//!    subscription, counted by this bench's global allocator, with 100, 1,000
//!    and 10,000 `AsyncSubscription`s waiting, each in a task of its own.
//!    Targets: the same thread count at every number of subscriptions (no
//!    thread per subscriber), and at most 16 KiB per subscription. Runs
//!    first, while the pool has only the threads the subscriptions needed.
//! 2. `streams`: events appended at a paced rate (1,000 a second in all by
//!    default) to 100 jobs by threads of their own for 30 s, received by
//!    subscriptions that are `Stream`s waiting in tasks; the latency from the
//!    start of each `append_event` call to its receipt by each subscriber,
//!    p50 and p99, with one subscriber per job and with 10. Target: p99 with
//!    10 per job at most 5x p99 with one. The store is a `LogStore` at
//!    `Durability::AtomicOnly` by default: what is measured is delivery, not
//!    the disk's flush (`JOBSAFE_ASYNC_STORE=log_full` flushes each append).
//! 3. `overhead`: `get`, `get_exclusive` (the same read of a `LogStore`
//!    opened in exclusive mode), durable `put` (a 256-byte value under a new
//!    key), ledger reserves of new job ids (one durable insert) and of
//!    reserved ones (a read), each through the blocking API from 1 and 16
//!    threads and through the async face from 1 and 16 tasks, on a
//!    `LogStore` at `Durability::Full`; ops/s, flushes per operation, and the
//!    ratio async / sync. Target: durable writes through the async face
//!    within 1.1x of the blocking API's throughput. Reads have none: a read
//!    of a shared store's async face runs on jobsafe's pool (a hop to a pool
//!    thread and back), never inline on the runtime's threads, since it may
//!    read the journal, and a read that met a slow disk would stall every
//!    task of that worker; an exclusive store's touches no disk and is
//!    answered inline. `put` joins the store's group commit as a future, and
//!    so does a new reserve's write: the ledger's body runs on the caller's
//!    task, its read on the pool (inline on an exclusive store).
//!
//! 4. `pg` (with `--features postgres`, against the server `JOBSAFE_PG_URL`
//!    names): `PgStore`'s `get` and durable `put` through the blocking API
//!    from 1 and 16 threads and through its native async face from 1 and 16
//!    tasks, with the same pool size. Target: at 16, the async face's
//!    throughput at least the blocking API's. `bash .ci/postgres.sh cargo
//!    bench -p jobsafe-bench --features postgres --bench async_face` starts
//!    a server on loopback.
//!
//! It prints a table per section, the targets met or MISSED, and one JSON
//! object per target.
//!
//! # Options
//!
//! | variable | default |
//! |---|---|
//! | `JOBSAFE_ASYNC_SECTIONS` | `idle,streams,overhead,pg` |
//! | `JOBSAFE_ASYNC_CELL_SECS` | `1.0`: seconds per overhead cell and round |
//! | `JOBSAFE_ASYNC_ROUNDS` | `3`: overhead rounds, the faces taking turns |
//! | `JOBSAFE_ASYNC_OPS` | `get,get_exclusive,put,reserve_new,reserve_dup`: the overhead section's operations |
//! | `JOBSAFE_ASYNC_STREAM_SECS` | `30`: seconds of appending per streams run |
//! | `JOBSAFE_ASYNC_RATE` | `1000`: events per second, in all |
//! | `JOBSAFE_ASYNC_JOBS` | `100`: jobs the events are spread over |
//! | `JOBSAFE_ASYNC_FANOUT` | `10`: subscribers per job of the second streams run |
//! | `JOBSAFE_ASYNC_STORE` | `log` (`LogStore`, `AtomicOnly`), `log_full` or `mem` |
//! | `JOBSAFE_ASYNC_SUBSCRIBER_BUFFER` | the job state's default live buffer per subscriber |
//!
//! `JOBSAFE_BENCH_SMOKE=1` runs every section in a few seconds (CI does
//! this): its figures mean nothing, but it fails unless every subscriber
//! received every event of its job once and in order, every waiting
//! subscription received the event appended last, every durable write
//! flushed, and every figure printed is finite.

#[path = "async_face/mod.rs"]
mod async_face;
mod common;

use std::env;
use std::time::Instant;

use self::async_face::alloc::CountingAlloc;
use self::async_face::idle::{self, Idle};
use self::async_face::options::Options;
use self::async_face::overhead;
use self::async_face::streams::{self, Latency};
use self::common::report::Table;
use self::common::targets::{self, Bound, Target, Unit};
use self::common::{BenchResult, RunDir};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// The runtime's worker threads: a small service's.
const WORKERS: usize = 2;
/// Most heap bytes a waiting subscription may cost.
const BYTES_PER_SUBSCRIBER: f64 = 16.0 * 1024.0;
/// How much higher the p99 latency with many subscribers per job may be than
/// with one.
const FANOUT_P99: f64 = 5.0;

fn main() -> BenchResult {
    let started = Instant::now();
    let options = Options::from_env()?;
    let sections = sections()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()?;
    let mut run = RunDir::create("async_face")?;
    println!(
        "# jobsafe async face\n\n{}tokio runtime of {WORKERS} worker threads; jobsafe's pool \
         bounded to {}; run directory {}\n",
        if options.smoke {
            "Smoke run, figures mean nothing; "
        } else {
            ""
        },
        jobsafe::pool::max_threads(),
        run.path().display()
    );

    let mut goals = Vec::new();
    let mut figures: Vec<(String, f64)> = Vec::new();
    if sections.contains(&"idle") {
        let idle = idle::measure(&rt, &options, &mut run)?;
        print_idle(&idle, &options);
        goals.extend(idle_targets(&idle));
        figures.extend(idle.points.iter().map(|p| {
            (
                format!("bytes per subscriber at {}", p.subscribers),
                p.bytes_per_subscriber(),
            )
        }));
    }
    if sections.contains(&"streams") {
        let one = streams::measure(&rt, &options, &mut run, 1)?;
        let many = streams::measure(&rt, &options, &mut run, options.fanout)?;
        print_streams(&[&one, &many], &options);
        goals.push(Target::new(
            format!(
                "p99 latency: {} subscribers per job / 1",
                many.subscribers_per_job
            ),
            Some(many.p99_us() / one.p99_us()),
            Bound::AtMost(FANOUT_P99),
        ));
        for run in [&one, &many] {
            let name = format!("{} per job", run.subscribers_per_job);
            figures.push((format!("{name} p50"), run.p50_us()));
            figures.push((format!("{name} p99"), run.p99_us()));
            figures.push((format!("{name} rate"), run.rate()));
        }
    }
    if sections.contains(&"overhead") {
        let rows = overhead::measure(&rt, &options, &mut run)?;
        println!(
            "## Overhead: LogStore, Durability::Full, {} round(s) of {:.2} s per cell\n\n\
             Sync: the blocking API from N threads; async: the async face from N tasks. \
             async / sync is the median of the rounds' ratios of throughput.\n\n{}\n\
             Reads (get, get_exclusive, reserve_dup) have no target: a shared store's \
             run on jobsafe's pool, a hop to a pool thread and back, never inline on the \
             runtime's threads; an exclusive store's get touches no disk and is answered \
             inline.\n",
            options.rounds,
            options.cell.as_secs_f64(),
            overhead::markdown(&rows)
        );
        goals.extend(overhead::targets(&rows));
        figures.extend(overhead::figures(&rows));
    }
    #[cfg(feature = "postgres")]
    if sections.contains(&"pg") && crate::common::pg::url().is_some() {
        use self::async_face::pg;
        let rows = pg::measure(&rt, &options)?;
        println!(
            "## PgStore: Durability::Full, {} connections for either face, {} round(s) of \
             {:.2} s per cell\n\n\
             Sync: the blocking API from N threads, each driving its connection; async: \
             the async face from N tasks, each call a task of the runtime on connections \
             the runtime drives. async / sync is the median of the rounds' ratios of \
             throughput.\n\n{}",
            pg::POOL,
            options.rounds,
            options.cell.as_secs_f64(),
            pg::markdown(&rows)
        );
        goals.extend(pg::targets(&rows));
        figures.extend(pg::figures(&rows));
    }

    println!("## Targets\n\n{}", targets::markdown(&goals));
    for goal in &goals {
        println!("{}", goal.json());
    }
    check_finite(&figures, &goals)?;
    run.remove()?;
    eprintln!(
        "async_face: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every section; `pg` runs only in a build with the feature `postgres`,
/// with `JOBSAFE_PG_URL` set.
const SECTIONS: [&str; 4] = ["idle", "streams", "overhead", "pg"];

/// The sections `JOBSAFE_ASYNC_SECTIONS` names, or all.
fn sections() -> BenchResult<Vec<&'static str>> {
    let Ok(list) = env::var("JOBSAFE_ASYNC_SECTIONS") else {
        return Ok(SECTIONS.to_vec());
    };
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            SECTIONS
                .into_iter()
                .find(|known| *known == name)
                .ok_or_else(|| format!("unknown section {name:?}: {}", SECTIONS.join(",")).into())
        })
        .collect()
}

fn print_idle(idle: &Idle, options: &Options) {
    let show = |n: Option<usize>| n.map_or_else(|| "n/a".to_owned(), |n| n.to_string());
    let mut table = Table::new([
        "subscriptions waiting",
        "threads",
        "of which jobsafe's pool",
        "heap bytes gained",
        "bytes per subscription",
    ]);
    for point in std::iter::once(&idle.before).chain(&idle.points) {
        table.row([
            point.subscribers.to_string(),
            show(point.threads),
            show(point.pool_threads),
            point.bytes.to_string(),
            if point.subscribers == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", point.bytes_per_subscriber())
            },
        ]);
    }
    println!(
        "## Waiting subscriptions: threads and memory ({}, {} jobs)\n\n{table}\n\
         Once every subscription received its event and was dropped: {} heap bytes \
         still gained.\n",
        options.store.describe(),
        options.jobs,
        idle.bytes_after_close
    );
}

/// The same thread count at every number of subscriptions (their ratio,
/// most over fewest, at most 1), and the bytes per subscription at the most.
fn idle_targets(idle: &Idle) -> Vec<Target> {
    let counts: Option<Vec<usize>> = idle.points.iter().map(|p| p.threads).collect();
    let spread = counts.and_then(|counts| {
        let (least, most) = (counts.iter().min()?, counts.iter().max()?);
        Some(*most as f64 / *least as f64)
    });
    let mut goals = vec![Target::new(
        "threads: most / fewest over the subscription counts (equal)",
        spread,
        Bound::AtMost(1.0),
    )];
    if let Some(largest) = idle.points.iter().max_by_key(|p| p.subscribers) {
        goals.push(
            Target::new(
                format!("heap bytes per subscription at {}", largest.subscribers),
                Some(largest.bytes_per_subscriber()),
                Bound::AtMost(BYTES_PER_SUBSCRIBER),
            )
            .in_unit(Unit::Bytes),
        );
    }
    goals
}

fn print_streams(runs: &[&Latency], options: &Options) {
    let mut table = Table::new([
        "subscribers per job",
        "subscriptions",
        "events appended",
        "events/s",
        "latest append, ms behind schedule",
        "receipts",
        "p50 µs",
        "p99 µs",
    ]);
    for run in runs {
        table.row([
            run.subscribers_per_job.to_string(),
            run.subscribers.to_string(),
            run.appended.to_string(),
            format!("{:.0}", run.rate()),
            format!("{:.1}", run.max_lag.as_secs_f64() * 1e3),
            run.latency.count().to_string(),
            format!("{:.0}", run.p50_us()),
            format!("{:.0}", run.p99_us()),
        ]);
    }
    println!(
        "## Streams: latency from the start of append_event to receipt\n\n\
         {}, {} jobs, {} appender threads, {:.1} s per run; every subscriber received \
         every event of its job once, in order.\n\n{table}",
        options.store.describe(),
        options.jobs,
        streams::APPENDERS,
        options.stream.as_secs_f64(),
    );
}

/// Fails if a figure or a target's value is not a finite number: a bench
/// that divided by nothing measured nothing.
fn check_finite(figures: &[(String, f64)], goals: &[Target]) -> BenchResult {
    let values = figures
        .iter()
        .map(|(name, value)| (name.as_str(), Some(*value)))
        .chain(goals.iter().map(|goal| (goal.name.as_str(), goal.value)));
    for (name, value) in values {
        match value {
            Some(v) if v.is_finite() => {}
            _ => return Err(format!("{name}: {value:?} is not a finite figure").into()),
        }
    }
    Ok(())
}
