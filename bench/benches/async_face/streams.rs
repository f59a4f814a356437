//! Event streams in one process: how long an event takes from the start of
//! its `append_event` call to each `AsyncSubscription` that waits for it, with
//! one subscriber per job and with many.
//!
//! The appenders are [`APPENDERS`] threads of their own calling the blocking
//! `JobState::append_event`, paced to a schedule of the configured rate: event
//! `k` is due `k / rate` seconds after the start, goes to job `k mod jobs`,
//! and is appended by thread `k mod APPENDERS` (which thereby owns its jobs,
//! so that each job's events are appended in order). Each event carries the
//! moment its call began; each subscriber is a task on the runtime that
//! records, for every event, the time from then to its receipt, and checks
//! that it received every event of its job once, in order.

use std::thread;
use std::time::{Duration, Instant};

use jobsafe::jobs::{AsyncJobState, AsyncSubscription, Claim, Event, JobState};
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::options::Options;
use super::{AnyStore, Started};
use crate::common::latency::Histogram;
use crate::common::{BenchResult, RunDir};

/// Threads appending events; the number of jobs must be a multiple of it.
pub(crate) const APPENDERS: usize = 4;
/// How long subscribers may take to receive the last events once the
/// appenders are done, before the run fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What one run measured.
#[derive(Clone, Debug)]
pub(crate) struct Latency {
    pub(crate) subscribers_per_job: usize,
    pub(crate) subscribers: usize,
    /// Events appended, in all jobs.
    pub(crate) appended: u64,
    /// From the first event's due time until the last append returned.
    pub(crate) append_secs: f64,
    /// How far behind its schedule an append started, at worst.
    pub(crate) max_lag: Duration,
    /// Every receipt by every subscriber.
    pub(crate) latency: Histogram,
}

impl Latency {
    pub(crate) fn p50_us(&self) -> f64 {
        self.latency.quantile_us(0.5)
    }

    pub(crate) fn p99_us(&self) -> f64 {
        self.latency.quantile_us(0.99)
    }

    /// Events appended per second, as achieved.
    pub(crate) fn rate(&self) -> f64 {
        self.appended as f64 / self.append_secs
    }
}

/// Appends at the configured rate for the configured time, to jobs with
/// `per_job` subscribers each.
pub(crate) fn measure(
    rt: &Runtime,
    options: &Options,
    run: &mut RunDir,
    per_job: usize,
) -> BenchResult<Latency> {
    let schedule = Schedule::new(options);
    // Every event of the run stays in the store, in case a subscriber must
    // catch up from it.
    let max_events = schedule.per_job + 16;
    let started = Started::new(
        options,
        &run.fresh(&format!("streams-{per_job}"))?,
        max_events,
    )?;
    let base = Instant::now();
    let receivers = subscribe_all(rt, &started, per_job, schedule.per_job, base)?;
    let appended = append_paced(&started, schedule, base)?;
    let latency = collect(rt, receivers)?;
    let expected = appended.events * per_job as u64;
    if latency.count() != expected {
        return Err(format!("{} receipts recorded, {expected} expected", latency.count()).into());
    }
    Ok(Latency {
        subscribers_per_job: per_job,
        subscribers: per_job * options.jobs,
        appended: appended.events,
        append_secs: appended.secs,
        max_lag: appended.max_lag,
        latency,
    })
}

/// When each event is due, and where it goes.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    rate: f64,
    jobs: usize,
    /// Events appended to each job.
    per_job: u64,
}

impl Schedule {
    /// The configured rate for the configured time, rounded to whole events
    /// per job (at least one).
    fn new(options: &Options) -> Self {
        let total = f64::from(options.rate) * options.stream.as_secs_f64();
        Schedule {
            rate: f64::from(options.rate),
            jobs: options.jobs,
            per_job: ((total / options.jobs as f64).round() as u64).max(1),
        }
    }

    fn total(self) -> u64 {
        self.per_job * self.jobs as u64
    }

    /// When event `k` is due, after the start.
    fn due(self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }
}

/// Opens `per_job` subscriptions to every job, one after another (as a
/// server accepts its clients), each then waiting in a task of its own for
/// its job's `events` events.
fn subscribe_all(
    rt: &Runtime,
    started: &Started,
    per_job: usize,
    events: u64,
    base: Instant,
) -> BenchResult<Vec<JoinHandle<Result<Histogram, String>>>> {
    let jobs = AsyncJobState::new(started.jobs.clone());
    rt.block_on(async {
        let mut receivers = Vec::with_capacity(started.claims.len() * per_job);
        for claim in &started.claims {
            for _ in 0..per_job {
                // After `started`: the stream holds the appended events only.
                let subscription = jobs.subscribe(&claim.job_id, 1).await?;
                let job_id = claim.job_id.clone();
                receivers.push(tokio::spawn(receive(subscription, job_id, events, base)));
            }
        }
        Ok(receivers)
    })
}

/// A subscriber: receives `events` events, checking each is the next of its
/// job, and records each one's latency.
async fn receive(
    mut subscription: AsyncSubscription<AnyStore>,
    job_id: String,
    events: u64,
    base: Instant,
) -> Result<Histogram, String> {
    let mut latency = Histogram::default();
    for n in 0..events {
        let event = subscription
            .next_event()
            .await
            .map_err(|e| format!("job {job_id}: {e}"))?
            .ok_or_else(|| format!("job {job_id}: the stream ended after {n} of {events}"))?;
        let received = base.elapsed();
        let sent = check_event(&event, n).map_err(|e| format!("job {job_id}: {e}"))?;
        latency.record(received.saturating_sub(sent));
    }
    Ok(latency)
}

/// The moment the `n`-th appended event's call began, after checking that it
/// is that event: the job's sequence numbers start with `started` at 1.
fn check_event(event: &Event, n: u64) -> Result<Duration, String> {
    let data_n = event.data["n"].as_u64();
    if event.seq != n + 2 || data_n != Some(n) {
        return Err(format!(
            "expected event {n} (sequence number {}), received sequence number {} \
             carrying {data_n:?}",
            n + 2,
            event.seq
        ));
    }
    let sent = event.data["sent_ns"]
        .as_u64()
        .ok_or("an event without its sending time")?;
    Ok(Duration::from_nanos(sent))
}

/// What the appenders did.
#[derive(Clone, Copy, Debug)]
struct Appended {
    events: u64,
    secs: f64,
    max_lag: Duration,
}

/// Runs the appender threads to the end of the schedule.
fn append_paced(started: &Started, schedule: Schedule, base: Instant) -> BenchResult<Appended> {
    let start = Instant::now();
    let lags = thread::scope(|s| {
        let appenders: Vec<_> = (0..APPENDERS)
            .map(|first| {
                s.spawn(move || {
                    append_share(&started.jobs, &started.claims, schedule, first, start, base)
                })
            })
            .collect();
        appenders
            .into_iter()
            .map(|appender| {
                appender
                    .join()
                    .unwrap_or_else(|_| Err("an appender panicked".to_owned()))
            })
            .collect::<Result<Vec<Duration>, String>>()
    })?;
    Ok(Appended {
        events: schedule.total(),
        secs: start.elapsed().as_secs_f64(),
        max_lag: lags.into_iter().max().unwrap_or_default(),
    })
}

/// One appender: events `first`, `first + APPENDERS`, ... of the schedule,
/// each when due (at once if late). Returns how late it was at worst.
fn append_share(
    jobs: &JobState<AnyStore>,
    claims: &[Claim],
    schedule: Schedule,
    first: usize,
    start: Instant,
    base: Instant,
) -> Result<Duration, String> {
    let mut max_lag = Duration::ZERO;
    for k in (first as u64..schedule.total()).step_by(APPENDERS) {
        let due = start + schedule.due(k);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        let claim = &claims[(k % schedule.jobs as u64) as usize];
        let n = k / schedule.jobs as u64;
        let sent_ns = u64::try_from(base.elapsed().as_nanos()).map_err(|e| e.to_string())?;
        let event = jobs
            .append_event(claim, "tick", json!({ "n": n, "sent_ns": sent_ns }))
            .map_err(|e| format!("appending to {}: {e}", claim.job_id))?;
        if event.seq != n + 2 {
            return Err(format!(
                "event {n} of {} got sequence number {}",
                claim.job_id, event.seq
            ));
        }
    }
    Ok(max_lag)
}

/// Waits for every subscriber's last event and merges their latencies.
fn collect(
    rt: &Runtime,
    receivers: Vec<JoinHandle<Result<Histogram, String>>>,
) -> BenchResult<Histogram> {
    rt.block_on(async {
        let all = async {
            let mut merged = Histogram::default();
            for receiver in receivers {
                let latency = receiver
                    .await
                    .map_err(|e| format!("a subscriber task failed: {e}"))??;
                merged.merge(&latency);
            }
            Ok::<_, String>(merged)
        };
        match tokio::time::timeout(DRAIN_TIMEOUT, all).await {
            Ok(merged) => Ok(merged?),
            Err(_) => Err(format!(
                "subscribers still waited for events {} s after the last append",
                DRAIN_TIMEOUT.as_secs()
            )
            .into()),
        }
    })
}
