//! The jobs' work, simulated, and the threads that run it.
//!
//! A job goes through three stages: fetch its input, transcribe it, summarize
//! it. Each waits as the pace says, then writes an artifact through the
//! pipeline (fenced, atomic) and reports progress; the pipeline records a
//! checkpoint per stage, so a job resumed after a crash skips the stages it
//! finished. The job's result is the summary. A job can be asked to fail at a stage, to show
//! what a client sees of a failure: the client message, never the internal one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobsafe::pipeline::{RunOutcome, StageContext, StageError};
use jobsafe::{Clock, Pipeline, SystemClock};
use serde_json::json;

use crate::relay::{Relay, Shared, meta};

/// The stages every job goes through, in order.
pub(crate) const STAGES: [&str; 3] = ["fetch", "process", "store"];

/// How often a stage waiting for its gate looks again.
const GATE_POLL: Duration = Duration::from_millis(5);

/// How long a stage takes.
#[derive(Clone, Debug)]
pub(crate) enum Pace {
    /// Each stage works this long.
    Sleep(Duration),
    /// Stage `S` of job `J` waits until the file `S` or `J.S` exists in this
    /// directory: whoever drives the relay (a test) decides when each stage
    /// may finish, without depending on time.
    Gate(PathBuf),
}

impl Pace {
    fn wait(&self, job: &str, stage: &str) {
        match self {
            Pace::Sleep(pause) if !pause.is_zero() => std::thread::sleep(*pause),
            Pace::Sleep(_) => {}
            Pace::Gate(dir) => {
                while !dir.join(stage).exists() && !dir.join(format!("{job}.{stage}")).exists() {
                    std::thread::sleep(GATE_POLL);
                }
            }
        }
    }
}

/// The pipeline of the simulated work, over `store`, with artifacts under
/// `artifacts`.
pub(crate) fn pipeline(
    store: Shared,
    artifacts: PathBuf,
    pace: Pace,
    lease: Duration,
) -> jobsafe::Result<Pipeline<Shared>> {
    let actor = format!("relay pid {}", std::process::id());
    let mut builder = Pipeline::builder(store, Arc::new(SystemClock), artifacts)
        .lease(lease)
        .actor(actor);
    for stage in STAGES {
        let pace = pace.clone();
        builder = builder.stage(stage, move |ctx| {
            pace.wait(ctx.job_id(), stage);
            let fail_at = ctx.job().metadata.get(meta::FAIL_AT);
            if fail_at.and_then(|v| v.as_str()) == Some(stage) {
                return Err(
                    StageError::permanent("the upstream service could not do this job")
                        .internal(format!("upstream 503 from asr-3.internal:8443 in {stage}"))
                        .code("upstream_failed"),
                );
            }
            work(stage, ctx)?;
            ctx.progress(&format!("{stage} done"))?;
            Ok(())
        });
    }
    // The result clients get (and the `done` event carries): the summary the
    // last stage wrote, also when a resumed run skipped every stage.
    builder
        .result(|ctx| {
            let summary = ctx.read(SUMMARY)?;
            serde_json::from_slice(&summary).map_err(|e| {
                StageError::permanent(jobsafe::jobs::JobError::DEFAULT_CLIENT_MESSAGE).internal(
                    format!("{SUMMARY} of job {} is not JSON: {e}", ctx.job_id()),
                )
            })
        })
        .build()
}

/// The artifact the last stage writes and the result is read from.
const SUMMARY: &str = "summary.json";

/// What stage `stage` does: fetch the input, transcribe it, summarize it, each
/// from the artifact of the stage before.
fn work(stage: &str, ctx: &mut StageContext<'_>) -> Result<(), StageError> {
    match stage {
        "fetch" => {
            let input = ctx.job().metadata.get(meta::INPUT).and_then(|v| v.as_str());
            let input = input
                .unwrap_or("an episode about durable background jobs")
                .to_owned();
            ctx.write("source.txt", input.as_bytes())?;
        }
        "process" => {
            let source = ctx.read("source.txt")?;
            let transcript = String::from_utf8_lossy(&source).to_uppercase();
            ctx.write("transcript.txt", transcript.as_bytes())?;
        }
        _ => {
            let transcript = String::from_utf8_lossy(&ctx.read("transcript.txt")?).into_owned();
            let words: Vec<&str> = transcript.split_whitespace().collect();
            let title = words.iter().take(4).copied().collect::<Vec<_>>().join(" ");
            let summary = json!({ "title": title, "words": words.len() });
            ctx.write(SUMMARY, summary.to_string().as_bytes())?;
        }
    }
    Ok(())
}

/// The worker threads: they run the jobs whose ids are sent on their queue.
#[derive(Debug)]
pub(crate) struct Workers {
    queue: Sender<String>,
    stopping: Arc<AtomicBool>,
}

impl Workers {
    /// Where to send the id of a job to run.
    pub(crate) fn queue(&self) -> Sender<String> {
        self.queue.clone()
    }

    /// Stops taking jobs off the queue: what is left there, and a job a
    /// worker is running, resume at the next start, as after a crash.
    pub(crate) fn stop_claiming(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Starts `count` worker threads. Long-running work stays on threads of its
/// own, running the blocking pipeline, off the HTTP runtime.
pub(crate) fn start(relay: Relay, count: usize) -> std::io::Result<Workers> {
    let (queue, ids) = mpsc::channel::<String>();
    let ids = Arc::new(Mutex::new(ids));
    let stopping = Arc::new(AtomicBool::new(false));
    for n in 0..count.max(1) {
        let relay = relay.clone();
        let queue = queue.clone();
        let ids = Arc::clone(&ids);
        let stopping = Arc::clone(&stopping);
        std::thread::Builder::new()
            .name(format!("relay-worker-{n}"))
            .spawn(move || {
                loop {
                    // The lock is held only while waiting for the next id.
                    let next = ids.lock().map(|ids| ids.recv());
                    match next {
                        Ok(Ok(_)) if stopping.load(Ordering::SeqCst) => return,
                        Ok(Ok(id)) => run(&relay, &queue, &id),
                        _ => return,
                    }
                }
            })?;
    }
    Ok(Workers { queue, stopping })
}

/// Runs job `id`, settles it if it ended (refund, lock release), and sends it
/// again when it is due again.
fn run(relay: &Relay, queue: &Sender<String>, id: &str) {
    let pipeline = relay.pipeline();
    match pipeline.run_job(id) {
        Ok(report) => match report.outcome {
            RunOutcome::RetryScheduled { retry_at_ms, .. } => later(queue, id, retry_at_ms),
            RunOutcome::Busy { holder } => later(queue, id, holder.expires_ms),
            _ => {}
        },
        Err(e) => {
            // Left running; its lease ends, then it is taken over.
            eprintln!("relay: job {id} stopped on an error and will be resumed: {e}");
            later(queue, id, SystemClock.now_ms().saturating_add(1_000));
        }
    }
    let settled = match pipeline.jobs().get(id) {
        Ok(Some(job)) => relay.settle(&job),
        Ok(None) => Ok(()),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = settled {
        eprintln!(
            "relay: job {id} ended but could not be settled (retried at the next start): {e:?}"
        );
    }
}

/// Sends `id` on `queue` at `at_ms`.
fn later(queue: &Sender<String>, id: &str, at_ms: u64) {
    let queue = queue.clone();
    let id = id.to_owned();
    std::thread::spawn(move || {
        SystemClock.sleep_until(at_ms);
        let _ = queue.send(id);
    });
}
