//! What picking the due work costs as settled jobs pile up: the pick a
//! pipeline pass makes ([`JobState::list_open`](jobsafe::JobState::list_open),
//! through the index of open jobs) with 100 queued jobs beside 10,000
//! settled ones and beside 1,000,000, on `LogStore` and (with the feature
//! `postgres` and a server) `PgStore`. The target: the pick at 1M within
//! 1.25x of the pick at 10k. For scale, the listing of every job that the
//! pick replaced ([`JobState::list`](jobsafe::JobState::list)), at 10k.
//!
//! The settled jobs are copies of one completed job's record under new ids,
//! written untimed in batches of 1,000 at `Durability::AtomicOnly` (relaxed:
//! the fill flushes nothing, which changes nothing of what is timed, reads
//! only). Their events are not copied: neither the pick nor the listing
//! reads events.
//!
//! `cargo bench -p jobsafe-bench --bench due_pick`
//! (`bash .ci/postgres.sh cargo bench -p jobsafe-bench --features postgres --bench due_pick`
//! for the `PgStore` rows). `JOBSAFE_BENCH_SMOKE=1` runs one round with 100
//! and 2,000 settled jobs, for CI; `JOBSAFE_BENCH_ROUNDS=N` runs `N` rounds.

mod common;

use std::sync::Arc;
use std::time::Instant;

use jobsafe::jobs::{JobFilter, NewJob};
use jobsafe::{Batch, Durability, Expect, JobState, Key, LogStore, ManualClock, Store};

use self::common::{BenchResult, Config, RunDir};

/// Queued jobs beside the settled ones.
const DUE: usize = 100;
/// Keys per batch of the fill.
const FILL_BATCH: usize = 1000;

fn main() -> BenchResult {
    let config = Config::from_env()?;
    let (small, large) = if config.smoke() {
        (100, 2_000)
    } else {
        (10_000, 1_000_000)
    };
    let rounds = config.rounds();
    let mut run = RunDir::create("due_pick")?;
    println!(
        "# jobsafe due-job pick bench\n\n{config}; {DUE} due jobs beside {small} and {large} \
         settled ones; run directory {}\n",
        run.path().display()
    );
    println!("| store | settled | pick (median ms) | list every job (median ms) |");
    println!("|---|---|---|---|");
    let mut ratios = Vec::new();
    {
        let mut picks = Vec::new();
        for settled in [small, large] {
            let dir = run.fresh(&format!("log-{settled}"))?;
            let store = Arc::new(
                LogStore::builder(&dir)
                    .durability(Durability::AtomicOnly)
                    .open()?,
            );
            picks.push(measure("logstore", store, settled, rounds)?);
        }
        ratios.push(("logstore", picks[1] / picks[0]));
    }
    #[cfg(feature = "postgres")]
    if common::pg::url().is_some() {
        let mut picks = Vec::new();
        for settled in [small, large] {
            let store = Arc::new(common::pg::store(Durability::AtomicOnly)?);
            picks.push(measure("pgstore", store, settled, rounds)?);
        }
        ratios.push(("pgstore", picks[1] / picks[0]));
        common::pg::drop_schemas()?;
    }
    println!("\n## Targets\n");
    println!("| store | pick at {large} / pick at {small} | target | |");
    println!("|---|---|---|---|");
    for (store, ratio) in &ratios {
        let verdict = if *ratio <= 1.25 { "met" } else { "missed" };
        println!("| {store} | {ratio:.2}x | ≤ 1.25x | {verdict} |");
        println!(
            "{{\"bench\":\"due_pick\",\"store\":\"{store}\",\"ratio\":{ratio:.4},\"target\":1.25}}"
        );
        if !ratio.is_finite() {
            return Err(format!("{store}: the ratio is not a number").into());
        }
    }
    run.remove()
}

/// Fills `store` with `settled` settled jobs and [`DUE`] queued ones, then
/// times the pick and the full listing in `rounds` rounds; the pick's
/// median, in ms.
fn measure<S: Store + 'static>(
    name: &str,
    store: Arc<S>,
    settled: usize,
    rounds: usize,
) -> BenchResult<f64> {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let jobs = JobState::new(Arc::clone(&store), clock);
    fill_settled(&jobs, &*store, settled)?;
    for n in 0..DUE {
        jobs.create(NewJob::new("render").id(format!("due-{n:04}")))?;
    }
    // The first listing builds the index's mark; untimed.
    check(&jobs.list_open()?.jobs, DUE, "pick")?;
    let (mut picks, mut lists) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Rounds alternate which goes first.
        for first in [round % 2 == 0, round % 2 != 0] {
            if first {
                let started = Instant::now();
                let open = jobs.list_open()?;
                picks.push(started.elapsed().as_secs_f64() * 1e3);
                check(&open.jobs, DUE, "pick")?;
            } else if settled <= 10_000 {
                let started = Instant::now();
                let all = jobs.list(&JobFilter::default())?;
                lists.push(started.elapsed().as_secs_f64() * 1e3);
                check(&all.jobs, DUE + settled, "list")?;
            }
        }
    }
    let pick = median(&mut picks);
    let list = if lists.is_empty() {
        "(not timed)".to_owned()
    } else {
        format!("{:.2}", median(&mut lists))
    };
    println!("| {name} | {settled} | {pick:.2} | {list} |");
    Ok(pick)
}

/// Writes `count` copies of a completed job's record under new ids.
fn fill_settled<S: Store + 'static>(
    jobs: &JobState<Arc<S>>,
    store: &S,
    count: usize,
) -> BenchResult {
    let model = jobs.create(NewJob::new("render").id("settled-model"))?;
    let worker = jobs.start(&model.id, None)?;
    jobs.complete(&worker, serde_json::json!({"pages": 12}))?;
    let model_key = Key::new(["jobs", "job", "settled-model"])?;
    let record: serde_json::Value = match store.get(&model_key)? {
        Some(entry) => serde_json::from_slice(&entry.value)?,
        None => return Err("the model job's record is missing".into()),
    };
    let mut written = 0;
    while written < count {
        let mut batch = Batch::new();
        for n in written..count.min(written + FILL_BATCH) {
            let id = format!("settled-{n:07}");
            let mut copy = record.clone();
            copy["id"] = serde_json::Value::String(id.clone());
            let key = Key::new(["jobs", "job", id.as_str()])?;
            batch = batch.put(&key, serde_json::to_vec(&copy)?, Expect::Any);
        }
        written += batch.len();
        store.apply(&batch)?;
    }
    // The model itself is the last settled job.
    jobs.delete(&model.id)?;
    Ok(())
}

fn check(jobs: &[jobsafe::jobs::Job], expected: usize, what: &str) -> BenchResult {
    if jobs.len() == expected {
        Ok(())
    } else {
        Err(format!("the {what} found {} jobs, not {expected}", jobs.len()).into())
    }
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}
