//! How fast a [`Runner`] starts work it is told of, and how fast another
//! runner takes over the job of one stopped by SIGTERM.
//!
//! **Wake-up overhead.** One job at a time is enqueued
//! ([`Pipeline::enqueue`]) into a store whose runner is idle, and the bench
//! measures the wall time from the enqueue's return to the first line of the
//! job's one stage (`SystemTime::now()` as nanoseconds since the epoch, taken
//! by the stage and compared with the enqueuer's: every process runs on one
//! machine and shares its clock). The next job is enqueued only once the
//! previous one's run has ended and the runner has had time to go idle, so
//! that each figure is a wake from idle. The runner's safety-net poll
//! ([`Runner::poll_every`]) is set to a minute, and a stage that has not
//! started 20 s after its enqueue fails the run: every figure is a wake by
//! a notification, never by the poll. Three settings:
//!
//! - one process: the runner and the enqueuer in one process, on one
//!   `LogStore` handle (the runner woken by the job state's own signal);
//!   target: the difference at p99 (below) at most 2 ms;
//! - across processes on one machine: the runner in a child process (this
//!   bench run again), on a `LogStore` that both open, woken through
//!   [`Store::changes_by_others`] (inotify); target at most 20 ms; and the
//!   same on a `DirStore` (inotify on its record directory);
//! - across machines: the runner in a child process with a `PgStore` handle
//!   of its own, woken through `LISTEN`/`NOTIFY` (with the feature
//!   `postgres` and a server); target at most 20 ms.
//!
//! The baseline beside each: the store writes that a runner's claim and
//! stage start make, done by hand, without waiting for anything, between the
//! wake-ups of the same run and on the same store (through a pipeline of
//! another namespace, whose jobs the runner does not run): the subject's
//! lease ([`JobLock::acquire`](jobsafe::JobLock::acquire)), the job's start
//! with the lease's fencing token ([`JobState::start`](jobsafe::JobState::start))
//! and its first stage ([`JobState::set_stage`](jobsafe::JobState::set_stage)).
//! Those three writes are what the runner writes before it calls the stage;
//! it also reads the job's record four times, the deletion marker and the
//! stage's checkpoint, starts the lease's keep-alive and the run's thread,
//! and looks for the due jobs. Those are not in the baseline: they are part
//! of the overhead that the difference (wake-up p99 minus baseline p99)
//! measures, with the wait for the wake itself.
//!
//! **Failover after SIGTERM.** Two runners in child processes share the
//! store. A runs a job whose stage lasts [`STAGE_LENGTH`]; once it has
//! started, B starts and finds the job's subject busy (its lease lasts
//! [`LEASE`], so that only A's release can explain B's claim, and B's poll a
//! minute). Then A gets SIGTERM, on which it stops its runner
//! ([`RunnerStop::stop`](jobsafe::pipeline::RunnerStop::stop)) with a grace
//! of [`GRACE`]: when the grace ends the run is abandoned, its lease
//! released and the job handed over. A stage learns of no cancellation
//! through its context: a blocking stage under way runs to its end, and an
//! async stage ([`PipelineBuilder::async_stage`](jobsafe::pipeline::PipelineBuilder::async_stage))
//! is dropped at its next wait. A's stage is an async one that sleeps, so it
//! stops when the grace ends, as a stage waiting on a service would. The
//! bench measures the wall time from the signal's sending to the first line
//! of B's stage for the job, and reports it beside the grace and A's stage
//! length, with its two parts: from the signal to A's run ending abandoned,
//! and from there to B's stage start. On `LogStore` and, with a server,
//! `PgStore`.
//!
//! Every run checks that each job's stage started exactly once in the
//! runner measured (in A then once in B for the failover), that each figure
//! is finite, and that A abandoned the job and B completed it.
//!
//! `cargo bench -p jobsafe-bench --bench wake_up`
//! (`bash .ci/postgres.sh cargo bench -p jobsafe-bench --features postgres --bench wake_up`
//! for the `PgStore` rows). `JOBSAFE_BENCH_SMOKE=1` runs 15 jobs per setting
//! and one failover per store, for CI; `JOBSAFE_BENCH_OPS=N` enqueues `N`
//! jobs per setting.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobsafe::jobs::NewJob;
use jobsafe::lock::{Acquire, LockRequest};
use jobsafe::pipeline::{RunOutcome, RunReport, Runner, StageContext, StageError};
use jobsafe::{Error, Key, LogStore, Pipeline, Prefix, Store, SystemClock};

use self::common::{BenchResult, Config, RunDir};

/// Set in a child's environment to its role: [`ROLE_WAKE`] or
/// [`ROLE_FAILOVER`].
const ROLE_VAR: &str = "JOBSAFE_WAKE_UP_ROLE";
/// The child's store: `log:<directory>`, `dir:<directory>` or `pg:<schema>`.
const STORE_VAR: &str = "JOBSAFE_WAKE_UP_STORE";
/// The child's artifact directory.
const ARTIFACTS_VAR: &str = "JOBSAFE_WAKE_UP_ARTIFACTS";
/// How long the child's stage lasts, in ms (a failover child).
const STAGE_MS_VAR: &str = "JOBSAFE_WAKE_UP_STAGE_MS";
/// The grace the child's runner gets on SIGTERM, in ms (a failover child).
const GRACE_MS_VAR: &str = "JOBSAFE_WAKE_UP_GRACE_MS";
const ROLE_WAKE: &str = "wake";
const ROLE_FAILOVER: &str = "failover";

/// The runner's safety-net poll: long, so that a wake is a notification.
const POLL_EVERY: Duration = Duration::from_secs(60);
/// The subject's lease: long, so that only a release hands a job over.
const LEASE: Duration = Duration::from_secs(600);
/// How long a job's stage may take to start before the run fails: well
/// under [`POLL_EVERY`], so that a start the poll caused is an error.
const START_WITHIN: Duration = Duration::from_secs(20);
/// The wait after a run ended, for the runner's next look to end and the
/// runner to be idle again.
const SETTLE: Duration = Duration::from_millis(50);
/// Jobs run before the measured ones, unmeasured.
const WARM_UP: usize = 3;
/// Jobs per wake-up setting in a full run.
const FULL_JOBS: usize = 200;
/// Jobs per wake-up setting in a smoke run.
const SMOKE_JOBS: usize = 15;
/// A's stage length in the failover.
const STAGE_LENGTH: Duration = Duration::from_secs(2);
/// The grace A's runner gets on SIGTERM.
const GRACE: Duration = Duration::from_millis(200);
/// Failovers per store in a full run (one in a smoke run).
const FULL_FAILOVERS: usize = 5;
/// The stage's name.
const STAGE: &str = "wake";
/// The namespace of the baseline's jobs and locks.
const BASELINE_NAMESPACE: &str = "baseline";

fn main() -> BenchResult {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        return child(&role);
    }
    let config = Config::from_env()?;
    let jobs = config.ops_or_smoke(FULL_JOBS, SMOKE_JOBS);
    let failovers = if config.smoke() { 1 } else { FULL_FAILOVERS };
    let mut run = RunDir::create("wake_up")?;
    let mode = if config.smoke() {
        "Smoke run: times mean nothing"
    } else {
        "Full run"
    };
    println!(
        "# jobsafe runner wake-up and failover bench\n\n{mode}; {jobs} jobs per setting \
         (after {WARM_UP} unmeasured), one at a time; the runner's poll_every set to {} s; \
         leases of {} s; run directory {}\n",
        POLL_EVERY.as_secs(),
        LEASE.as_secs(),
        run.path().display()
    );
    let mut wakes = Vec::new();
    let mut failover_rows = Vec::new();

    let dir = run.fresh("one-process")?;
    wakes.push(wake_in_process(&dir, jobs)?);

    let dir = run.fresh("log-processes")?;
    let store = Arc::new(LogStore::open(dir.join("store"))?);
    let spec = StoreSpec::Log(dir.join("store"));
    wakes.push(wake_across(
        "across processes, LogStore",
        store,
        &spec,
        &dir,
        jobs,
        20.0,
    )?);

    let dir = run.fresh("dir-processes")?;
    let store = Arc::new(jobsafe::DirStore::open(dir.join("store"))?);
    let spec = StoreSpec::Dir(dir.join("store"));
    wakes.push(wake_across(
        "across processes, DirStore",
        store,
        &spec,
        &dir,
        jobs,
        20.0,
    )?);

    let dir = run.fresh("log-failover")?;
    let store = Arc::new(LogStore::open(dir.join("store"))?);
    let spec = StoreSpec::Log(dir.join("store"));
    failover_rows.push(failover("LogStore", store, &spec, &dir, failovers)?);

    #[cfg(feature = "postgres")]
    if common::pg::url().is_some() {
        let dir = run.fresh("pg-processes")?;
        let store = common::pg::store(jobsafe::Durability::Full)?;
        let spec = StoreSpec::Pg(schema_of(&store));
        wakes.push(wake_across(
            "across machines, PgStore",
            Arc::new(store),
            &spec,
            &dir,
            jobs,
            20.0,
        )?);
        let dir = run.fresh("pg-failover")?;
        let store = common::pg::store(jobsafe::Durability::Full)?;
        let spec = StoreSpec::Pg(schema_of(&store));
        failover_rows.push(failover(
            "PgStore",
            Arc::new(store),
            &spec,
            &dir,
            failovers,
        )?);
        common::pg::drop_schemas()?;
    }

    println!("\n## Wake-up: enqueue's return to the stage's first line\n");
    println!(
        "| setting | jobs | wake-up p50 (ms) | wake-up p99 (ms) | claim and stage-start \
         writes alone p50 (ms) | writes alone p99 (ms) | difference at p99 (ms) | target | |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for wake in &wakes {
        wake.print()?;
    }
    println!("\n## Failover after SIGTERM: the signal to B's stage start\n");
    println!(
        "A's stage length {} ms (an async stage, dropped when the grace ends); the grace \
         {} ms; leases of {} s; B's poll_every {} s\n",
        STAGE_LENGTH.as_millis(),
        GRACE.as_millis(),
        LEASE.as_secs(),
        POLL_EVERY.as_secs()
    );
    println!(
        "| store | failovers | failover median (ms) | failover max (ms) | signal to A's run \
         abandoned, median (ms) | A abandoned to B's stage start, median (ms) | grace (ms) | \
         A's stage length (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in &failover_rows {
        row.print()?;
    }
    run.remove()
}

/// Where a child finds the store.
#[derive(Clone, Debug)]
enum StoreSpec {
    Log(PathBuf),
    Dir(PathBuf),
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Pg(String),
}

impl StoreSpec {
    fn to_env(&self) -> String {
        match self {
            StoreSpec::Log(dir) => format!("log:{}", dir.display()),
            StoreSpec::Dir(dir) => format!("dir:{}", dir.display()),
            StoreSpec::Pg(schema) => format!("pg:{schema}"),
        }
    }
}

#[cfg(feature = "postgres")]
fn schema_of(store: &jobsafe::PgStore) -> String {
    let table = store.table();
    table.split('.').next().unwrap_or_default().to_owned()
}

/// The wall clock, in ns since the epoch: the one clock that the processes
/// of one machine share.
fn wall_ns() -> Result<u128, std::time::SystemTimeError> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos())
}

/// `later - earlier`, in ms (negative if `later` is earlier).
fn ms_between(earlier: u128, later: u128) -> f64 {
    if later >= earlier {
        (later - earlier) as f64 / 1e6
    } else {
        -((earlier - later) as f64 / 1e6)
    }
}

/// What runners tell the bench, one line each:
/// `started <job> <wall ns>` (a stage's first line),
/// `ended <job> <outcome> <wall ns>` (a run's end), and
/// `stopped abandoned=<n> completed=<n> errors=<n>` (a child's runner
/// returned).
struct Lines {
    from: Receiver<String>,
    /// Every line so far, for the checks at the end.
    seen: Vec<String>,
    who: String,
}

impl Lines {
    fn new(who: impl Into<String>, from: Receiver<String>) -> Self {
        Lines {
            from,
            seen: Vec::new(),
            who: who.into(),
        }
    }

    /// The first line from now on that starts with `prefix`, within `within`.
    fn wait_for(&mut self, prefix: &str, within: Duration) -> BenchResult<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: no line {prefix:?} within {} s (lines so far: {:?})",
                        self.who,
                        within.as_secs_f64(),
                        self.seen
                    )
                    .into());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{}: ended before it said {prefix:?} (lines so far: {:?})",
                        self.who, self.seen
                    )
                    .into());
                }
            }
        }
    }

    /// The wall time of the `started` line of `job`, waited for.
    fn started(&mut self, job: &str, within: Duration) -> BenchResult<u128> {
        let line = self.wait_for(&format!("started {job} "), within)?;
        last_number(&line)
    }

    /// The wall time of the `ended` line of `job`, waited for, after
    /// checking its outcome is `outcome`.
    fn ended(&mut self, job: &str, outcome: &str, within: Duration) -> BenchResult<u128> {
        let line = self.wait_for(&format!("ended {job} "), within)?;
        let said = line.split(' ').nth(2).unwrap_or_default();
        if said != outcome {
            return Err(format!("{}: {job} ended {said}, not {outcome}: {line}", self.who).into());
        }
        last_number(&line)
    }

    /// Takes whatever lines are left, until the sender is gone.
    fn drain(&mut self) {
        while let Ok(line) = self.from.recv() {
            self.seen.push(line);
        }
    }

    /// Takes the lines already sent, without waiting.
    fn drain_ready(&mut self) {
        while let Ok(line) = self.from.try_recv() {
            self.seen.push(line);
        }
    }

    /// How many `started` lines name `job`.
    fn starts_of(&self, job: &str) -> usize {
        let prefix = format!("started {job} ");
        self.seen.iter().filter(|l| l.starts_with(&prefix)).count()
    }
}

fn last_number(line: &str) -> BenchResult<u128> {
    let word = line.rsplit(' ').next().unwrap_or_default();
    word.parse()
        .map_err(|e| format!("no time at the end of {line:?}: {e}").into())
}

/// A one-word name for a run's end.
fn outcome_word(ended: Result<&RunReport, &Error>) -> &'static str {
    match ended {
        Ok(report) => match report.outcome {
            RunOutcome::Completed => "completed",
            RunOutcome::Busy { .. } => "busy",
            RunOutcome::Abandoned { .. } => "abandoned",
            RunOutcome::NotDue { .. } => "not-due",
            RunOutcome::NotFound => "not-found",
            _ => "other",
        },
        Err(_) => "error",
    }
}

/// The pipeline every runner of the bench runs: one stage, which says when
/// it started on `tell` and returns.
fn wake_pipeline<S: Store + 'static>(
    store: S,
    artifacts: PathBuf,
    tell: Sender<String>,
) -> BenchResult<Pipeline<S>> {
    let tell = std::sync::Mutex::new(tell);
    Ok(Pipeline::builder(store, Arc::new(SystemClock), artifacts)
        .lease(LEASE)
        .stage(STAGE, move |ctx| {
            let at = wall_ns().map_err(|e| StageError::permanent(e.to_string()))?;
            let line = format!("started {} {at}", ctx.job_id());
            let tell = tell.lock().map_err(|_| StageError::permanent("poisoned"))?;
            tell.send(line)
                .map_err(|_| StageError::permanent("nobody listens"))?;
            Ok(())
        })
        .build()?)
}

/// A pipeline in [`BASELINE_NAMESPACE`] for the baseline's writes by hand.
fn baseline_pipeline<S: Store + 'static>(store: S, artifacts: PathBuf) -> BenchResult<Pipeline<S>> {
    Ok(Pipeline::builder(store, Arc::new(SystemClock), artifacts)
        .namespace(Prefix::new([BASELINE_NAMESPACE])?)
        .lease(LEASE)
        .stage(STAGE, |_| Ok(()))
        .build()?)
}

/// One claim and stage start by hand: enqueues job `n` of the baseline
/// (untimed), then times the lease, the start and the stage, then completes
/// the job and releases the lease (untimed). The time, in ms.
fn baseline_once<S: Store + 'static>(baseline: &Pipeline<S>, n: usize) -> BenchResult<f64> {
    let id = format!("base-{n:05}");
    let subject = format!("b-{n:05}");
    baseline.enqueue(&subject, NewJob::new("wake").id(id.as_str()))?;
    let key = Key::new([subject.as_str()])?;
    let request = LockRequest::new()
        .actor("pipeline-runner")
        .meta("job", id.as_str());
    let started = Instant::now();
    let guard = match baseline.locks().acquire(&key, LEASE, &request)? {
        Acquire::Acquired(guard) => guard,
        Acquire::Held(holder) => {
            return Err(format!("the baseline's subject {subject} is held: {holder:?}").into());
        }
    };
    let claim = baseline.jobs().start(&id, Some(guard.token()))?;
    baseline.jobs().set_stage(&claim, STAGE)?;
    let took = started.elapsed().as_secs_f64() * 1e3;
    baseline
        .jobs()
        .complete(&claim, serde_json::json!({ "stages": [STAGE] }))?;
    guard.release()?;
    Ok(took)
}

/// The figures of one wake-up setting.
struct Wake {
    setting: &'static str,
    wakes: Vec<f64>,
    baseline: Vec<f64>,
    target_ms: f64,
}

impl Wake {
    fn print(&self) -> BenchResult {
        let mut wakes = self.wakes.clone();
        let mut baseline = self.baseline.clone();
        let p50 = percentile(&mut wakes, 0.50);
        let p99 = percentile(&mut wakes, 0.99);
        let base50 = percentile(&mut baseline, 0.50);
        let base99 = percentile(&mut baseline, 0.99);
        let difference = p99 - base99;
        let verdict = if difference <= self.target_ms {
            "met"
        } else {
            "missed"
        };
        println!(
            "| {} | {} | {p50:.2} | {p99:.2} | {base50:.2} | {base99:.2} | {difference:.2} \
             | ≤ {} ms | {verdict} |",
            self.setting,
            wakes.len(),
            self.target_ms
        );
        println!(
            "{{\"bench\":\"wake_up\",\"setting\":\"{}\",\"wake_p50_ms\":{p50:.4},\
             \"wake_p99_ms\":{p99:.4},\"baseline_p50_ms\":{base50:.4},\
             \"baseline_p99_ms\":{base99:.4},\
             \"difference_p99_ms\":{difference:.4},\"target_ms\":{}}}",
            self.setting, self.target_ms
        );
        for (name, value) in [
            ("wake-up p50", p50),
            ("wake-up p99", p99),
            ("baseline p50", base50),
            ("baseline p99", base99),
        ] {
            if !value.is_finite() {
                return Err(format!("{}: the {name} is not a number", self.setting).into());
            }
        }
        Ok(())
    }
}

/// The `p` quantile of `samples` (nearest rank); NaN if there are none.
fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    if samples.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

fn median(samples: &[f64]) -> f64 {
    let mut samples = samples.to_vec();
    percentile(&mut samples, 0.5)
}

/// Enqueues [`WARM_UP`] then `jobs` jobs through `enqueuer` one at a time,
/// each once the runner (telling on `lines`) has ended the one before and
/// gone idle, with one baseline claim between them; the wake-ups and the
/// baseline's times, in ms. Checks that each job's stage started once.
fn measure_wakes<S: Store + 'static, T: Store + 'static>(
    enqueuer: &Pipeline<S>,
    baseline: &Pipeline<T>,
    lines: &mut Lines,
    jobs: usize,
) -> BenchResult<(Vec<f64>, Vec<f64>)> {
    let mut wakes = Vec::with_capacity(jobs);
    let mut base = Vec::with_capacity(jobs);
    let mut ids = Vec::new();
    for n in 0..WARM_UP + jobs {
        let id = format!("wake-{n:05}");
        enqueuer.enqueue(&format!("s-{n:05}"), NewJob::new("wake").id(id.as_str()))?;
        let returned = wall_ns()?;
        let started = lines.started(&id, START_WITHIN).map_err(|e| {
            format!(
                "{e}; the runner's poll is {} s, so no wake-up came for job {id}",
                POLL_EVERY.as_secs()
            )
        })?;
        lines.ended(&id, "completed", START_WITHIN)?;
        std::thread::sleep(SETTLE);
        let took = baseline_once(baseline, n)?;
        std::thread::sleep(SETTLE);
        if n >= WARM_UP {
            wakes.push(ms_between(returned, started));
            base.push(took);
        }
        ids.push(id);
    }
    lines.drain_ready();
    for id in &ids {
        let starts = lines.starts_of(id);
        if starts != 1 {
            return Err(format!("{}: job {id}'s stage started {starts} times", lines.who).into());
        }
    }
    Ok((wakes, base))
}

/// The runner and the enqueuer in this process, on one `LogStore` handle.
fn wake_in_process(dir: &std::path::Path, jobs: usize) -> BenchResult<Wake> {
    let store = Arc::new(LogStore::open(dir.join("store"))?);
    let (tell, heard) = channel();
    let pipeline = wake_pipeline(Arc::clone(&store), dir.join("artifacts"), tell.clone())?;
    let baseline = baseline_pipeline(Arc::clone(&store), dir.join("baseline-artifacts"))?;
    let on_run = std::sync::Mutex::new(tell);
    let runner = Runner::new(pipeline.clone())
        .poll_every(POLL_EVERY)
        .on_run(move |id, ended| {
            let at = wall_ns().unwrap_or_default();
            if let Ok(tell) = on_run.lock() {
                let _ = tell.send(format!("ended {id} {} {at}", outcome_word(ended)));
            }
        });
    let stop = runner.stopper();
    let service = std::thread::spawn(move || runner.run());
    let mut lines = Lines::new("the runner of this process", heard);
    let measured = measure_wakes(&pipeline, &baseline, &mut lines, jobs);
    stop.stop(Duration::ZERO);
    let report = service
        .join()
        .map_err(|_| "the runner of this process panicked")?;
    let (wakes, baseline) = measured?;
    if report.error_count > 0 {
        return Err(format!("the runner of this process had errors: {report:?}").into());
    }
    Ok(Wake {
        setting: "one process, LogStore",
        wakes,
        baseline,
        target_ms: 2.0,
    })
}

/// A child process: this bench run again with [`ROLE_VAR`] set.
struct ChildRunner {
    process: Child,
    stdin: Option<ChildStdin>,
    lines: Lines,
}

impl ChildRunner {
    fn spawn(
        who: &str,
        role: &str,
        spec: &StoreSpec,
        artifacts: &std::path::Path,
        env: &[(&str, String)],
    ) -> BenchResult<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .env(ROLE_VAR, role)
            .env(STORE_VAR, spec.to_env())
            .env(ARTIFACTS_VAR, artifacts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut process = command
            .spawn()
            .map_err(|e| format!("cannot start {who}: {e}"))?;
        let stdout = process.stdout.take().ok_or("no stdout of the child")?;
        let stdin = process.stdin.take();
        let (tell, heard) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tell.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildRunner {
            process,
            stdin,
            lines: Lines::new(who, heard),
        })
    }

    /// Sends SIGTERM; the wall time just before it was sent.
    fn terminate(&self) -> BenchResult<u128> {
        let raw = i32::try_from(self.process.id())?;
        let pid = rustix::process::Pid::from_raw(raw).ok_or("a child with no process id")?;
        let sent = wall_ns()?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .map_err(|e| format!("cannot send SIGTERM to {}: {e}", self.lines.who))?;
        Ok(sent)
    }

    /// Closes its stdin (which stops its runner), waits for it to exit, and
    /// checks that it said how its runner stopped and exited with success;
    /// its `stopped` line.
    fn finish(mut self) -> BenchResult<(Lines, String)> {
        drop(self.stdin.take());
        let status = self.process.wait()?;
        self.lines.drain();
        if !status.success() {
            return Err(format!("{} failed: {status}", self.lines.who).into());
        }
        let stopped = (self.lines.seen.iter())
            .find(|l| l.starts_with("stopped "))
            .cloned()
            .ok_or_else(|| format!("{} did not say how it stopped", self.lines.who))?;
        // The lines leave the child, which is dropped (its `Drop` finds it
        // exited); a closed channel takes their place.
        let (_, closed) = channel();
        let who = self.lines.who.clone();
        Ok((
            std::mem::replace(&mut self.lines, Lines::new(who, closed)),
            stopped,
        ))
    }
}

impl Drop for ChildRunner {
    fn drop(&mut self) {
        // A child left by an error: stopped rather than left running.
        if self.process.try_wait().ok().flatten().is_none() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// A figure of a `stopped` line.
fn stopped_count(line: &str, name: &str) -> BenchResult<u64> {
    let prefix = format!("{name}=");
    let word = (line.split(' '))
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .ok_or_else(|| format!("no {name} in {line:?}"))?;
    Ok(word.parse()?)
}

/// The runner in a child process on the store `spec` names; this process
/// enqueues through `store`, its own handle on it.
fn wake_across<S: Store + 'static>(
    setting: &'static str,
    store: Arc<S>,
    spec: &StoreSpec,
    dir: &std::path::Path,
    jobs: usize,
    target_ms: f64,
) -> BenchResult<Wake> {
    let (unused, _) = channel();
    let enqueuer = wake_pipeline(Arc::clone(&store), dir.join("artifacts"), unused)?;
    let baseline = baseline_pipeline(Arc::clone(&store), dir.join("baseline-artifacts"))?;
    let mut child = ChildRunner::spawn(
        &format!("the runner's process ({setting})"),
        ROLE_WAKE,
        spec,
        &dir.join("artifacts"),
        &[],
    )?;
    child.lines.wait_for("ready", START_WITHIN)?;
    let measured = measure_wakes(&enqueuer, &baseline, &mut child.lines, jobs);
    let (lines, stopped) = child.finish()?;
    let (wakes, baseline) = measured?;
    if stopped_count(&stopped, "errors")? > 0 {
        return Err(format!("{}: the runner had errors: {stopped}", lines.who).into());
    }
    Ok(Wake {
        setting,
        wakes,
        baseline,
        target_ms,
    })
}

/// The figures of one store's failovers, in ms.
struct Failover {
    store: &'static str,
    /// The signal to B's stage start.
    total: Vec<f64>,
    /// The signal to A's run ending abandoned.
    to_abandoned: Vec<f64>,
    /// A's run ending to B's stage start.
    to_claim: Vec<f64>,
}

impl Failover {
    fn print(&self) -> BenchResult {
        let median_total = median(&self.total);
        let max_total = self.total.iter().copied().fold(f64::NAN, f64::max);
        let abandoned = median(&self.to_abandoned);
        let claim = median(&self.to_claim);
        println!(
            "| {} | {} | {median_total:.1} | {max_total:.1} | {abandoned:.1} | {claim:.1} | {} | {} |",
            self.store,
            self.total.len(),
            GRACE.as_millis(),
            STAGE_LENGTH.as_millis()
        );
        println!(
            "{{\"bench\":\"wake_up\",\"failover_store\":\"{}\",\"failover_median_ms\":\
             {median_total:.4},\"failover_max_ms\":{max_total:.4},\"to_abandoned_median_ms\":\
             {abandoned:.4},\"to_claim_median_ms\":{claim:.4},\"grace_ms\":{},\
             \"stage_length_ms\":{}}}",
            self.store,
            GRACE.as_millis(),
            STAGE_LENGTH.as_millis()
        );
        for (name, value) in [
            ("failover median", median_total),
            ("failover max", max_total),
            ("signal to A's run abandoned", abandoned),
            ("A abandoned to B's stage start", claim),
        ] {
            if !value.is_finite() {
                return Err(format!("{}: the {name} is not a number", self.store).into());
            }
        }
        Ok(())
    }
}

/// `rounds` failovers from A to B on the store `spec` names; this process
/// enqueues through `store`.
fn failover<S: Store + 'static>(
    name: &'static str,
    store: Arc<S>,
    spec: &StoreSpec,
    dir: &std::path::Path,
    rounds: usize,
) -> BenchResult<Failover> {
    let (unused, _) = channel();
    let enqueuer = wake_pipeline(Arc::clone(&store), dir.join("artifacts"), unused)?;
    let mut figures = Failover {
        store: name,
        total: Vec::new(),
        to_abandoned: Vec::new(),
        to_claim: Vec::new(),
    };
    let artifacts = dir.join("artifacts");
    for round in 0..rounds {
        let id = format!("failover-{round:03}");
        let env = |stage: Duration| {
            [
                (STAGE_MS_VAR, stage.as_millis().to_string()),
                (GRACE_MS_VAR, GRACE.as_millis().to_string()),
            ]
        };
        let mut a = ChildRunner::spawn(
            &format!("runner A ({name})"),
            ROLE_FAILOVER,
            spec,
            &artifacts,
            &env(STAGE_LENGTH),
        )?;
        a.lines.wait_for("ready", START_WITHIN)?;
        enqueuer.enqueue(
            &format!("f-{round:03}"),
            NewJob::new("wake").id(id.as_str()),
        )?;
        a.lines.started(&id, START_WITHIN)?;
        // B starts once A runs the job: its first look finds it busy.
        let mut b = ChildRunner::spawn(
            &format!("runner B ({name})"),
            ROLE_FAILOVER,
            spec,
            &artifacts,
            &env(Duration::ZERO),
        )?;
        b.lines.ended(&id, "busy", START_WITHIN)?;
        let sent = a.terminate()?;
        let b_started = b.lines.started(&id, START_WITHIN).map_err(|e| {
            format!(
                "{e}; B's poll is {} s and the lease {} s, so A's handover did not wake B",
                POLL_EVERY.as_secs(),
                LEASE.as_secs()
            )
        })?;
        let a_ended = a.lines.ended(&id, "abandoned", START_WITHIN)?;
        b.lines.ended(&id, "completed", START_WITHIN)?;
        let (a_lines, a_stopped) = a.finish()?;
        let (b_lines, b_stopped) = b.finish()?;
        for (lines, starts) in [
            (&a_lines, a_lines.starts_of(&id)),
            (&b_lines, b_lines.starts_of(&id)),
        ] {
            if starts != 1 {
                return Err(
                    format!("{}: job {id}'s stage started {starts} times", lines.who).into(),
                );
            }
        }
        if stopped_count(&a_stopped, "abandoned")? != 1 {
            return Err(format!("runner A did not abandon the job: {a_stopped}").into());
        }
        if stopped_count(&b_stopped, "completed")? != 1 {
            return Err(format!("runner B did not complete the job: {b_stopped}").into());
        }
        for stopped in [&a_stopped, &b_stopped] {
            if stopped_count(stopped, "errors")? > 0 {
                return Err(format!("a runner had errors: {stopped}").into());
            }
        }
        figures.total.push(ms_between(sent, b_started));
        figures.to_abandoned.push(ms_between(sent, a_ended));
        figures.to_claim.push(ms_between(a_ended, b_started));
    }
    Ok(figures)
}

/// A child's part: a runner on the store [`STORE_VAR`] names, which tells
/// the bench on stdout when each stage started and each run ended, until
/// its stdin closes (or, for a failover runner, SIGTERM).
fn child(role: &str) -> BenchResult {
    let spec = std::env::var(STORE_VAR)?;
    if let Some(dir) = spec.strip_prefix("log:") {
        return child_on(role, LogStore::open(dir)?);
    }
    if let Some(dir) = spec.strip_prefix("dir:") {
        return child_on(role, jobsafe::DirStore::open(dir)?);
    }
    #[cfg(feature = "postgres")]
    if let Some(schema) = spec.strip_prefix("pg:") {
        let url = std::env::var("JOBSAFE_PG_URL")?;
        let store = jobsafe::PgStore::builder(&url).schema(schema).open()?;
        return child_on(role, store);
    }
    Err(format!("{STORE_VAR}: no store this build can open in {spec:?}").into())
}

fn child_on<S: Store + 'static>(role: &str, store: S) -> BenchResult {
    let artifacts = PathBuf::from(std::env::var(ARTIFACTS_VAR)?);
    match role {
        ROLE_WAKE => wake_child(store, artifacts),
        ROLE_FAILOVER => failover_child(store, artifacts),
        other => Err(format!("{ROLE_VAR}: unknown role {other:?}").into()),
    }
}

/// Writes one line to stdout; a line the bench does not get makes it wait
/// in vain and fail, naming what it waited for.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn ms_from_env(name: &str) -> BenchResult<Duration> {
    let text = std::env::var(name)?;
    Ok(Duration::from_millis(text.parse().map_err(|e| {
        format!("{name} must be a number of ms, not {text:?}: {e}")
    })?))
}

/// Stops `stop` with no grace once stdin closes.
fn stop_on_stdin_end(stop: jobsafe::pipeline::RunnerStop) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        stop.stop(Duration::ZERO);
    });
}

fn report_line(report: &jobsafe::pipeline::RunnerReport) -> String {
    format!(
        "stopped abandoned={} completed={} errors={}",
        report.abandoned.len(),
        report.completed,
        report.error_count
    )
}

/// The wake-up child: the blocking runner, its stage that of
/// [`wake_pipeline`].
fn wake_child<S: Store + 'static>(store: S, artifacts: PathBuf) -> BenchResult {
    // One thread prints what the stage and the observer tell, in order,
    // and ends with the runner's `stopped` line.
    let (tell, heard) = channel::<String>();
    let printer = std::thread::spawn(move || {
        for line in heard {
            say(&line);
            if line.starts_with("stopped ") {
                break;
            }
        }
    });
    let pipeline = wake_pipeline(store, artifacts, tell.clone())?;
    let on_run = std::sync::Mutex::new(tell.clone());
    let runner = Runner::new(pipeline)
        .poll_every(POLL_EVERY)
        .on_run(move |id, ended| {
            let at = wall_ns().unwrap_or_default();
            if let Ok(tell) = on_run.lock() {
                let _ = tell.send(format!("ended {id} {} {at}", outcome_word(ended)));
            }
        });
    stop_on_stdin_end(runner.stopper());
    say("ready");
    let report = runner.run();
    tell.send(report_line(&report))
        .map_err(|_| "the printing thread is gone")?;
    printer.join().map_err(|_| "the printing thread panicked")?;
    Ok(())
}

/// A failover child: the async runner in a tokio runtime, whose one stage
/// (async) says it started and sleeps for [`STAGE_MS_VAR`]; SIGTERM stops
/// the runner with a grace of [`GRACE_MS_VAR`].
fn failover_child<S: Store + 'static>(store: S, artifacts: PathBuf) -> BenchResult {
    let stage_length = ms_from_env(STAGE_MS_VAR)?;
    let grace = ms_from_env(GRACE_MS_VAR)?;
    let pipeline = Pipeline::builder(store, Arc::new(SystemClock), artifacts)
        .lease(LEASE)
        .async_stage(
            STAGE,
            async move |ctx: &mut StageContext<'_>| -> Result<(), StageError> {
                let at = wall_ns().map_err(|e| StageError::permanent(e.to_string()))?;
                say(&format!("started {} {at}", ctx.job_id()));
                if !stage_length.is_zero() {
                    tokio::time::sleep(stage_length).await;
                }
                Ok(())
            },
        )
        .build()?;
    let runner = Runner::new(pipeline)
        .poll_every(POLL_EVERY)
        .on_run(|id, ended| {
            let at = wall_ns().unwrap_or_default();
            say(&format!("ended {id} {} {at}", outcome_word(ended)));
        });
    let stop = runner.stopper();
    stop_on_stdin_end(stop.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            if terminate.recv().await.is_some() {
                stop.stop(grace);
            }
        });
        say("ready");
        Ok::<_, std::io::Error>(runner.run_async().await)
    })?;
    say(&report_line(&report));
    Ok(())
}
