//! A transcribe → draft → export pipeline over a few recordings, on the
//! embedded default store ([`LogStore`]).
//!
//! Each stage prints as it runs or is skipped. Interrupt it (Ctrl-C, or
//! SIGKILL) and run it again: it resumes where it stopped, skipping every stage
//! whose checkpoint still verifies, after the interrupted runner's short lease
//! ends. One recording hits a busy drafting service once (a transient failure,
//! retried after a backoff); one is empty (a permanent failure: the job fails
//! with a client-safe message and an internal one, and the others go on).
//!
//! ```text
//! cargo run --example pipeline [WORK_DIR]
//! ```
//!
//! Without `WORK_DIR`, each run works in a new directory under the system temp
//! directory and prints it; pass that directory to resume (a directory that
//! holds an earlier run's state is resumed, and the run says so).
//! `JOBSAFE_DEMO_STAGE_MS` sets how long each stage works (default 200), to
//! leave time for an interruption.
//!
//! With the feature `tracing`, `JOBSAFE_TRACE` prints jobsafe's spans and
//! events to stderr, filtered by a list of `target=level` and `level`
//! directives: `info` shows a `stage` span for each stage run, ending with
//! its outcome; `info,jobsafe::store=debug` adds every store call in it.
//! Job ids show as fingerprints (see `jobsafe::trace`).
//!
//! ```text
//! JOBSAFE_TRACE=info cargo run --features tracing --example pipeline
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jobsafe::jobs::{JobStatus, NewJob};
use jobsafe::pipeline::{RetryPolicy, RunOutcome, StageAction, StageContext, StageError};
use jobsafe::{Clock, LogStore, Pipeline, SystemClock};

/// The recordings: (job id, session, content). The empty one fails for good.
const INPUTS: [(&str, &str, &str); 3] = [
    (
        "episode-1",
        "session-a",
        "welcome to the show today we talk about durable jobs",
    ),
    (
        "episode-2",
        "session-a",
        "second episode on retries and backoff",
    ),
    ("episode-3", "session-b", ""),
];

/// The job whose drafting service is busy on its first attempt.
const BUSY_ONCE: &str = "episode-2";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    trace_if_asked()?;
    let (work, chosen) = match std::env::args().nth(1) {
        Some(dir) => (PathBuf::from(dir), true),
        None => (fresh_work_dir()?, false),
    };
    let stage_ms: u64 = match std::env::var("JOBSAFE_DEMO_STAGE_MS") {
        Ok(ms) => ms.parse()?,
        Err(_) => 200,
    };
    let store_dir = work.join("store");
    if store_dir.exists() {
        println!(
            "resuming the work in {}: jobs already settled stay settled",
            work.display()
        );
    } else {
        println!("work directory: {}", work.display());
    }
    let inputs = work.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    for (id, _, content) in INPUTS {
        let path = inputs.join(format!("{id}.txt"));
        if !path.exists() {
            jobsafe::write_atomic(&path, content.as_bytes())?;
        }
    }
    let clock = Arc::new(SystemClock);
    let pause = Duration::from_millis(stage_ms);
    let transcribe_inputs = inputs.clone();
    let pipeline = Pipeline::builder(
        LogStore::open(&store_dir)?,
        clock.clone(),
        work.join("artifacts"),
    )
    // A short lease, so that a run after a SIGKILL waits seconds, not minutes.
    .lease(Duration::from_secs(3))
    .retry_policy(
        RetryPolicy::default()
            .first_delay(Duration::from_secs(1))
            .max_delay(Duration::from_secs(2)),
    )
    .on_stage(|notice| {
        let what = match notice.action {
            StageAction::Started => "running",
            StageAction::Skipped => "skipped (checkpoint verified, files untouched)",
            StageAction::Ran => "done",
            StageAction::Failed => "failed",
            _ => "interrupted",
        };
        match notice.detail {
            Some(why) => println!("  {} {:<10} {what}: {why}", notice.job_id, notice.stage),
            None => println!("  {} {:<10} {what}", notice.job_id, notice.stage),
        }
    })
    .stage("transcribe", move |ctx: &mut StageContext<'_>| {
        std::thread::sleep(pause);
        let audio =
            std::fs::read_to_string(transcribe_inputs.join(format!("{}.txt", ctx.job_id())))?;
        if audio.trim().is_empty() {
            return Err(StageError::permanent("the recording is empty")
                .internal(format!("input {}.txt has no content", ctx.job_id()))
                .code("empty_input"));
        }
        let transcript = format!("[transcript] {audio}\n");
        // The transcript lives with the job and with its session.
        ctx.write("transcript.txt", transcript.as_bytes())?;
        ctx.write_shared(
            &format!("{}-transcript.txt", ctx.job_id()),
            transcript.as_bytes(),
        )?;
        Ok(())
    })
    .stage("draft", move |ctx| {
        std::thread::sleep(pause);
        if ctx.job_id() == BUSY_ONCE && ctx.attempt() == 1 {
            return Err(StageError::transient("the drafting service is busy")
                .internal("drafting upstream answered 503"));
        }
        let transcript = String::from_utf8_lossy(&ctx.read("transcript.txt")?).into_owned();
        let words = transcript.split_whitespace().count();
        ctx.write(
            "draft.md",
            format!("# Draft\n\n{transcript}\n({words} words)\n").as_bytes(),
        )?;
        Ok(())
    })
    .stage("export", move |ctx| {
        std::thread::sleep(pause);
        let draft = ctx.read("draft.md")?;
        ctx.write(
            "export.html",
            format!("<pre>{}</pre>\n", String::from_utf8_lossy(&draft)).as_bytes(),
        )?;
        Ok(())
    })
    .build()?;

    for (id, session, _) in INPUTS {
        match pipeline.enqueue(session, NewJob::new("episode").id(id)) {
            Ok(_) => println!("queued {id} for {session}"),
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
    }

    // What a scheduler would do every few minutes, compressed: run passes
    // until no job is due, waiting for retry times and for the lease of an
    // interrupted runner.
    let mut told_busy = std::collections::HashSet::new();
    loop {
        let pass = pipeline.run_pass()?;
        let mut wait_until = None::<u64>;
        for run in &pass.runs {
            match &run.outcome {
                RunOutcome::Completed => println!("{}: complete", run.job_id),
                RunOutcome::RetryScheduled {
                    retry_at_ms,
                    error,
                    failures,
                    ..
                } => {
                    println!(
                        "{}: transient failure #{failures} ({}), retry in {} ms",
                        run.job_id,
                        error.client_message(),
                        retry_at_ms.saturating_sub(clock.now_ms())
                    );
                    wait_until = Some(wait_until.map_or(*retry_at_ms, |w| w.min(*retry_at_ms)));
                }
                RunOutcome::Failed { stage, error } => println!(
                    "{}: failed at {stage}: client sees {:?}; operators see {:?}",
                    run.job_id,
                    error.client_message(),
                    error.internal_message()
                ),
                RunOutcome::Busy { holder } => {
                    if told_busy.insert(holder.job_id.clone()) {
                        println!(
                            "{}: its session is held by {} (an interrupted run?); waiting for its lease to end",
                            run.job_id,
                            holder.holder()
                        );
                    }
                    let at = holder.expires_ms;
                    wait_until = Some(wait_until.map_or(at, |w| w.min(at)));
                }
                other => println!("{}: {other:?}", run.job_id),
            }
        }
        let unsettled: Vec<Option<u64>> = pipeline
            .jobs()
            .list(&Default::default())?
            .jobs
            .iter()
            .filter(|job| matches!(job.status, JobStatus::Queued | JobStatus::Running))
            .map(|job| job.retry_at_ms)
            .collect();
        if unsettled.is_empty() {
            break;
        }
        let next_retry = unsettled.iter().flatten().min().copied();
        let now = clock.now_ms();
        let at = match (wait_until, next_retry) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => now + 100,
        };
        clock.sleep_until(at.max(now));
    }

    let mut complete = 0;
    let mut failed = 0;
    for (id, _, _) in INPUTS {
        let Some(job) = pipeline.jobs().get(id)? else {
            continue;
        };
        match job.status {
            JobStatus::Complete => complete += 1,
            JobStatus::Failed => failed += 1,
            _ => {}
        }
        let note = job
            .error
            .as_ref()
            .filter(|_| job.status == JobStatus::Failed)
            .map(|e| format!(" ({})", e.client_message()))
            .unwrap_or_default();
        println!(
            "{id}: {} after {} attempt(s){note}",
            job.status, job.attempt
        );
    }
    println!(
        "all jobs settled: {complete} complete, {failed} failed; exports in {}",
        pipeline.artifact_root().join("jobs").display()
    );
    if !chosen {
        println!(
            "run `cargo run --example pipeline -- {}` to run it again over this state",
            work.display()
        );
    }
    Ok(())
}

/// Prints jobsafe's spans and events to stderr if `JOBSAFE_TRACE` holds a
/// filter, as the module documentation says.
fn trace_if_asked() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(filter) = std::env::var("JOBSAFE_TRACE") else {
        return Ok(());
    };
    #[cfg(feature = "tracing")]
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let filter: tracing_subscriber::filter::Targets = filter.parse()?;
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter)
            .try_init()?;
    }
    #[cfg(not(feature = "tracing"))]
    eprintln!("JOBSAFE_TRACE={filter} is ignored: run with `--features tracing`");
    Ok(())
}

/// A new directory under the system temp directory, named by time and process
/// so that runs (and users) never share one by accident.
fn fresh_work_dir() -> std::io::Result<PathBuf> {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let dir =
        std::env::temp_dir().join(format!("jobsafe-pipeline-{started}-{}", std::process::id()));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
