//! The jobs' work, simulated, and the runner that runs it.
//!
//! A job goes through three stages: fetch its input, transcribe it, summarize
//! it. Each waits as the pace says, then writes an artifact through the
//! pipeline (fenced, atomic) and reports progress; the pipeline records a
//! checkpoint per stage, so a job resumed after a crash skips the stages it
//! finished. The job's result is the summary. A job can be asked to fail at a stage, to show
//! what a client sees of a failure: the client message, never the internal one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jobsafe::pipeline::{Runner, StageContext, StageError, StoreArtifacts};
use jobsafe::{Pipeline, SharedClock};
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
    clock: SharedClock,
    shared_by_relays: bool,
) -> jobsafe::Result<Pipeline<Shared>> {
    let actor = format!("relay pid {}", std::process::id());
    let mut builder = Pipeline::builder(Arc::clone(&store), clock, artifacts)
        .lease(lease)
        .actor(actor);
    if shared_by_relays {
        // The relay that takes a job over finds the artifacts of its
        // finished stages there, not on the disk of the relay that ran them.
        builder = builder.shared_artifacts(StoreArtifacts::new(store));
    }
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

/// The runner of the relay's jobs, `concurrency` at once: woken by every job
/// the requests create, it settles each job whose run ended it (a failed
/// job's refund, an index job's lock) on the runner's own thread (it runs
/// blocking, off the HTTP runtime), and logs the runs that stopped on an
/// error (the job is taken over later).
pub(crate) fn runner(relay: Relay, concurrency: usize) -> Runner<Shared> {
    Runner::new(relay.pipeline().clone())
        .concurrency(concurrency)
        .on_run(move |id, run| {
            if let Err(e) = run {
                eprintln!("relay: job {id} stopped on an error and will be resumed: {e}");
            }
            settle(&relay, id);
        })
}

/// Settles job `id` if its run ended it. A failure is reported and left for
/// the next start, which settles every finished job again.
fn settle(relay: &Relay, id: &str) {
    let settled = match relay.pipeline().jobs().get(id) {
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
