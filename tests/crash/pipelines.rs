//! Pipelines survive SIGKILL at any point: a child process runs passes over
//! queued jobs on a `DirStore`, and then on a `LogStore`, while the
//! parent kills it at varying moments, mostly while a stage is writing; each
//! kill is followed by a new child.
//!
//! Each stage reports `run <job> <stage>` before it writes anything, and the
//! observer reports `done <job> <stage>` once its checkpoint is recorded. After
//! every kill the parent also reads the checkpoints in the store. A stage that
//! is known complete (by a report or by its stored checkpoint) and later reports
//! `run` again is a violation: a completed stage must never run again. At the
//! end every job must be complete with the expected outputs, no temp file left
//! under the artifact root, and no live lock.
//!
//! A kill counts as mid-stage when the child's last `run` report has no `done`
//! after it and that stage's checkpoint is not in the store: the kill landed
//! between the stage's start and its checkpoint, while it wrote. The `done`
//! reports are the acknowledged writes the summary counts.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::child::{self, Child};
use jobsafe::jobs::{JobFilter, JobStatus, NewJob};
use jobsafe::pipeline::{PurgePolicy, StageAction, StageContext, StageError};
use jobsafe::{ManualClock, Pipeline, Prefix, Store};

use super::backend::Backend;
use super::part::{START_MS, child_start};
use super::summary::{Budget, Figures};

/// The child's role, and the variable that names its store's backend.
pub const ROLE: &str = "pipeline-runner";
const BACKEND_VAR: &str = "JOBSAFE_TEST_BACKEND";
const LEASE: Duration = Duration::from_secs(60);
const SUBJECTS: usize = 4;
const FIRST_JOBS: usize = 8;
const MORE_JOBS: usize = 4;

type Pipe = Pipeline<Arc<dyn Store>>;

fn pipeline(backend: Backend, dir: &Path, now_ms: u64, in_child: bool) -> Pipe {
    let store = backend.open(&dir.join("store")).unwrap();
    let mut builder = Pipeline::builder(
        store,
        Arc::new(ManualClock::new(now_ms)),
        dir.join("artifacts"),
    )
    .lease(LEASE)
    .purge_policy(PurgePolicy::default().locks_expired_for(Duration::ZERO));
    if in_child {
        builder = builder.on_stage(|notice| {
            if notice.action == StageAction::Ran {
                child::report(&format!("done {} {}", notice.job_id, notice.stage));
            }
        });
    }
    builder
        .stage("transcribe", |ctx| {
            started(ctx);
            let text = expected(ctx.job_id(), "transcribe");
            ctx.write("transcript.txt", text.as_bytes())?;
            ctx.write_shared(&format!("{}.txt", ctx.job_id()), text.as_bytes())?;
            Ok(())
        })
        .stage("draft", |ctx| {
            started(ctx);
            let transcript = ctx.read("transcript.txt")?;
            let text = expected(ctx.job_id(), "draft");
            if !text.contains(std::str::from_utf8(&transcript).unwrap()) {
                return Err(StageError::permanent(
                    "the transcript is not what was written",
                ));
            }
            ctx.write("notes.txt", b"notes")?;
            ctx.write("draft.txt", text.as_bytes())?;
            Ok(())
        })
        .stage("export", |ctx| {
            started(ctx);
            let draft = ctx.read("draft.txt")?;
            let text = expected(ctx.job_id(), "export");
            if !text.contains(std::str::from_utf8(&draft).unwrap()) {
                return Err(StageError::permanent("the draft is not what was written"));
            }
            ctx.write("export.txt", text.as_bytes())?;
            Ok(())
        })
        .build()
        .unwrap()
}

fn started(ctx: &StageContext<'_>) {
    if child::role().is_some() {
        child::report(&format!("run {} {}", ctx.job_id(), ctx.stage()));
    }
}

/// What each stage's main output holds: a function of the job and of the
/// previous stage's output, padded so that writes take a moment.
fn expected(job: &str, stage: &str) -> String {
    let base = format!("{job}:{}\n", "x".repeat(2048));
    match stage {
        "transcribe" => format!("T[{base}]"),
        "draft" => format!("D[{}]", expected(job, "transcribe")),
        _ => format!("E[{}]", expected(job, "draft")),
    }
}

fn enqueue(pipeline: &Pipe, first: usize, count: usize) -> Vec<String> {
    (first..first + count)
        .map(|n| {
            let id = format!("job-{n:04}");
            pipeline
                .enqueue(
                    &format!("session-{}", n % SUBJECTS),
                    NewJob::new("episode").id(&id),
                )
                .unwrap();
            id
        })
        .collect()
}

/// Each child's clock starts past every lease an earlier child held.
fn child_now(iteration: u64) -> u64 {
    child_start(iteration, 2 * LEASE.as_millis() as u64)
}

/// Runs the pipeline part on every backend, from the test `test` (whose
/// function must serve children first, see
/// [`serve_child`](super::part::serve_child)).
pub fn run(test: &str, budget: Budget) -> Figures {
    let mut figures = Figures::default();
    for backend in Backend::ALL {
        kill_runners(test, backend, budget, &mut figures);
    }
    figures
}

fn kill_runners(test: &str, backend: Backend, budget: Budget, figures: &mut Figures) {
    let kills = budget.kills;
    let mut rng = fastrand::Rng::with_seed(budget.seed ^ backend as u64);
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = enqueue(
        &pipeline(backend, dir.path(), START_MS, false),
        0,
        FIRST_JOBS,
    );
    let mut next_job = FIRST_JOBS;
    let mut verified = 0usize;

    let mut completed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut violations = Vec::new();
    let mut stage_runs = 0usize;
    let mut interrupted = 0usize;
    let mut mid_stage = 0usize;
    let mut iteration = 0;
    let mut killed = 0;
    let mut acknowledged = 0;
    while killed < kills {
        iteration += 1;
        let mut vars = child::store_vars(dir.path());
        vars.insert("JOBSAFE_TEST_NOW", child_now(iteration).to_string());
        vars.insert(BACKEND_VAR, backend.name().to_owned());
        let mut runner = Child::spawn(test, ROLE, &vars);
        let wait_for = rng.usize(1..=4);
        let mut reports = Vec::new();
        let mut idle = false;
        for _ in 0..wait_for {
            match runner.next_report() {
                Some(line) if line == "idle" => {
                    idle = true;
                    break;
                }
                Some(line) => reports.push(line),
                None => break,
            }
        }
        if idle {
            reports.extend(runner.finish());
        } else {
            // Vary where in the stage's writes the kill lands.
            std::thread::sleep(Duration::from_micros(rng.u64(0..1_500)));
            let tail = runner.kill();
            // A child that ran out of work just before the kill reached it
            // was not killed at work: it does not count.
            idle = tail.iter().any(|line| line == "idle");
            reports.extend(tail);
            if !idle {
                killed += 1;
            }
        }
        acknowledged += check_reports(
            &reports,
            &mut completed,
            &mut violations,
            iteration,
            &mut stage_runs,
        );
        // Past the lease of the child just killed, before the next child starts.
        let pipeline = pipeline(
            backend,
            dir.path(),
            child_now(iteration) + LEASE.as_millis() as u64,
            false,
        );
        if !idle
            && let Some((job, stage)) = unfinished_stage(&reports)
            && pipeline.checkpoint(&job, &stage).unwrap().is_none()
        {
            mid_stage += 1;
        }
        check_open_index(&pipeline, iteration, &mut violations);
        for job in &jobs {
            for stage in pipeline.stage_names() {
                let key = (job.clone(), stage.to_owned());
                if !completed.contains(&key) && pipeline.checkpoint(job, stage).unwrap().is_some() {
                    completed.insert((job.clone(), stage.to_owned()));
                }
            }
        }
        if !idle {
            interrupted += 1;
        }
        let done = |job: &String| {
            pipeline
                .stage_names()
                .iter()
                .all(|s| completed.contains(&(job.clone(), (*s).to_owned())))
                && status(&pipeline, job) == JobStatus::Complete
        };
        if idle || jobs.iter().all(done) {
            // Every job is complete: check them, remove them (so that passes
            // stay short) and give the next children more work.
            for job in jobs.drain(..) {
                verify_job(&pipeline, &job, &mut violations);
                verified += 1;
                assert_eq!(
                    pipeline.delete(&job).unwrap(),
                    jobsafe::pipeline::Deletion::Removed
                );
            }
            jobs = enqueue(&pipeline, next_job, MORE_JOBS);
            next_job += MORE_JOBS;
        }
    }

    // A last runner that is not killed finishes everything.
    iteration += 1;
    let mut vars = child::store_vars(dir.path());
    vars.insert("JOBSAFE_TEST_NOW", child_now(iteration).to_string());
    vars.insert(BACKEND_VAR, backend.name().to_owned());
    let mut last = Child::spawn(test, ROLE, &vars);
    let mut reports = Vec::new();
    while let Some(line) = last.next_report() {
        if line == "idle" {
            break;
        }
        reports.push(line);
    }
    reports.extend(last.finish());
    acknowledged += check_reports(
        &reports,
        &mut completed,
        &mut violations,
        iteration,
        &mut stage_runs,
    );

    let now = child_now(iteration);
    let pipeline = pipeline(backend, dir.path(), now, false);
    for job in &jobs {
        verify_job(&pipeline, job, &mut violations);
        verified += 1;
    }
    let temps = crate::common::temp_files_under(&dir.path().join("artifacts")).unwrap();
    if !temps.is_empty() {
        violations.push(format!("temp files left: {temps:?}"));
    }
    let live: Vec<_> = pipeline
        .locks()
        .list(&Prefix::all())
        .unwrap()
        .locks
        .into_iter()
        .filter(|lock| !lock.is_expired_at(now))
        .collect();
    if !live.is_empty() {
        violations.push(format!("locks still held: {live:?}"));
    }
    // Leases of killed runners that completed their job just before dying are
    // past their end: purge clears them.
    pipeline.purge().unwrap();
    let left = pipeline.locks().list(&Prefix::all()).unwrap();
    if !left.locks.is_empty() {
        violations.push(format!("locks left after purge: {:?}", left.locks));
    }

    figures.iterations += iteration;
    figures.kills += killed;
    figures.kills_mid_write += mid_stage as u64;
    figures.acknowledged_checked += acknowledged;
    figures.extra.push(format!(
        "{backend}:acknowledged={acknowledged},jobs={verified},stage_runs={stage_runs},interrupted_runs={interrupted}"
    ));
    figures.violations.extend(
        violations
            .into_iter()
            .map(|v| format!("pipeline/{backend}: {v}")),
    );
}

/// A finished job: complete, with the expected outputs, and no temp file.
fn verify_job(pipeline: &Pipe, job: &str, violations: &mut Vec<String>) {
    let record = pipeline.jobs().get(job).unwrap().unwrap();
    if record.status != JobStatus::Complete {
        violations.push(format!(
            "{job} ended {} ({:?})",
            record.status, record.error
        ));
        return;
    }
    let export = std::fs::read_to_string(pipeline.job_dir(job).join("export.txt")).unwrap();
    if export != expected(job, "export") {
        violations.push(format!("{job}: wrong export"));
    }
    let n: usize = job[4..].parse().unwrap();
    let shared = pipeline.subject_dir(&format!("session-{}", n % SUBJECTS));
    if std::fs::read_to_string(shared.join(format!("{job}.txt"))).unwrap()
        != expected(job, "transcribe")
    {
        violations.push(format!("{job}: wrong shared transcript"));
    }
    let temps = crate::common::temp_files_under(&pipeline.job_dir(job)).unwrap();
    if !temps.is_empty() {
        violations.push(format!("{job}: temp files left: {temps:?}"));
    }
}

/// The index of open jobs holds an entry for each queued or running job
/// and for no other, wherever the kill cut a write: each entry is written
/// in the same batch as its record.
fn check_open_index(pipeline: &Pipe, iteration: u64, violations: &mut Vec<String>) {
    let jobs = pipeline.jobs();
    let open: BTreeSet<String> = jobs
        .list(&JobFilter::default())
        .unwrap()
        .jobs
        .into_iter()
        .filter(|job| !job.status.is_finished())
        .map(|job| job.id)
        .collect();
    // The pipeline's jobs are under `pipeline/jobs`.
    let entries: BTreeSet<String> = jobs
        .store()
        .list_all(&Prefix::new(["pipeline", "jobs", "open"]).unwrap())
        .unwrap()
        .into_iter()
        .filter_map(|key| key.segments().last().cloned())
        .collect();
    if open != entries {
        violations.push(format!(
            "iteration {iteration}: open jobs {open:?}, entries of the index {entries:?}"
        ));
    }
}

fn status(pipeline: &Pipe, job: &str) -> JobStatus {
    pipeline.jobs().get(job).unwrap().unwrap().status
}

/// The stage a child reported `run` for last, if no `done` followed it.
fn unfinished_stage(reports: &[String]) -> Option<(String, String)> {
    let last_run = reports.iter().rposition(|r| r.starts_with("run "))?;
    let mut parts = reports[last_run].split(' ').skip(1);
    let (job, stage) = (parts.next()?, parts.next()?);
    let done = format!("done {job} {stage}");
    if reports[last_run..].contains(&done) {
        return None;
    }
    Some((job.to_owned(), stage.to_owned()))
}

/// Checks one child's reports in order against what was known complete;
/// returns how many checkpoints they acknowledged.
fn check_reports(
    reports: &[String],
    completed: &mut BTreeSet<(String, String)>,
    violations: &mut Vec<String>,
    iteration: u64,
    stage_runs: &mut usize,
) -> u64 {
    let mut acknowledged = 0;
    for report in reports {
        if report == "idle" {
            continue; // reported just before a kill
        }
        let mut parts = report.split(' ');
        let (Some(what), Some(job), Some(stage)) = (parts.next(), parts.next(), parts.next())
        else {
            violations.push(format!("child {iteration}: unexpected report {report:?}"));
            continue;
        };
        let key = (job.to_owned(), stage.to_owned());
        match what {
            "run" => {
                *stage_runs += 1;
                if completed.contains(&key) {
                    violations.push(format!(
                        "child {iteration}: completed stage {job}/{stage} ran again"
                    ));
                }
            }
            "done" => {
                acknowledged += 1;
                completed.insert(key);
            }
            _ => violations.push(format!("child {iteration}: unexpected report {report:?}")),
        }
    }
    acknowledged
}

/// Child: runs passes until no job is due, then reports `idle`.
pub fn run_in_child() {
    let backend = Backend::parse(&child::var(BACKEND_VAR)).unwrap();
    let now: u64 = child::var("JOBSAFE_TEST_NOW").parse().unwrap();
    let pipeline = pipeline(backend, &child::store_root(), now, true);
    loop {
        let pass = pipeline.run_pass().unwrap();
        assert!(pass.errors.is_empty(), "{:?}", pass.errors);
        for run in &pass.runs {
            assert!(
                matches!(run.outcome, jobsafe::pipeline::RunOutcome::Completed),
                "{}: {:?}",
                run.job_id,
                run.outcome
            );
        }
        if pass.runs.is_empty() {
            child::report("idle");
            return;
        }
    }
}
