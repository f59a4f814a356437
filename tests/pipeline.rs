//! `Pipeline`: the acceptance checks of the transcribe → draft → export plan,
//! phase by phase, on both backends where the backend matters, with a
//! `ManualClock`: nothing here sleeps to wait for time to pass.
//!
//! Phase 1 (crash-safe artifacts, idempotent skip), phase 2 (retries and error
//! classes), phase 3 (one runner per subject, deletion mid-run), and the rule
//! that runs through all three: no temp file and no held lock after any exit.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::hooked_store::{HookedStore, StoreOp};
use common::limits::{json_of_len, text_of_len};
use jobsafe::jobs::{Job, JobError, JobStatus, NewJob, RecoveryAction};
use jobsafe::ledger::ChargeRequest;
use jobsafe::lock::{Acquire, LockRequest};
use jobsafe::pipeline::{
    Checkpoint, Deletion, ErrorClass, PipelineBuilder, PipelineRecords, PurgePolicy, RetryPolicy,
    RunOutcome, StageAction, StageContext, StageError, classify_io,
};
use jobsafe::{AtomicWriter, DirStore, JobLedger, Key, ManualClock, Pipeline, Prefix, Store};
use tempfile::TempDir;

const START_MS: u64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(60);
const STAGES: [&str; 3] = ["transcribe", "draft", "export"];

type Pipe = Pipeline<Arc<dyn Store>>;

/// What a stage does on its next run, beyond its normal work.
enum Act {
    Transient,
    Permanent,
    Panic,
    /// Writes a partial artifact, tells the test, waits for its go, then
    /// writes `STALE` over its output.
    Pause(Sender<()>, Receiver<()>),
    /// Does its normal writes, tells the test, waits for its go, then ends as
    /// the inner act says, without writing anything more.
    PauseThen(Sender<()>, Receiver<()>, Box<Act>),
}

/// The stages' script and the log of every stage run.
#[derive(Default)]
struct Script {
    runs: Mutex<Vec<(String, String)>>,
    plan: Mutex<HashMap<&'static str, VecDeque<Act>>>,
}

impl Script {
    fn then(&self, stage: &'static str, act: Act) {
        self.plan
            .lock()
            .unwrap()
            .entry(stage)
            .or_default()
            .push_back(act);
    }

    fn runs_of(&self, job: &str) -> Vec<String> {
        let runs = self.runs.lock().unwrap();
        runs.iter()
            .filter(|(j, _)| j == job)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Makes `stage` pause on its next run; returns (entered, go).
    fn pause(&self, stage: &'static str) -> (Receiver<()>, Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        self.then(stage, Act::Pause(entered_tx, go_rx));
        (entered_rx, go_tx)
    }
}

fn output_name(stage: &str) -> String {
    format!("{stage}.txt")
}

/// The three stages: each reads the previous one's output and writes its own;
/// transcribe also writes the session's shared transcript.
fn stage_body(
    script: Arc<Script>,
    stage: &'static str,
) -> impl Fn(&mut StageContext<'_>) -> Result<(), StageError> + Send + Sync + 'static {
    move |ctx| {
        script
            .runs
            .lock()
            .unwrap()
            .push((ctx.job_id().to_owned(), stage.to_owned()));
        let act = script
            .plan
            .lock()
            .unwrap()
            .get_mut(stage)
            .and_then(VecDeque::pop_front);
        let input = match STAGES.iter().position(|s| *s == stage) {
            Some(0) | None => format!("audio of {}", ctx.subject()),
            Some(i) => String::from_utf8(ctx.read(&output_name(STAGES[i - 1]))?).unwrap(),
        };
        let output = format!("{stage}({input})");
        let (act, pause) = match act {
            Some(Act::PauseThen(entered, go, then)) => (Some(*then), Some((entered, go))),
            other => (other, None),
        };
        if let Some(Act::Pause(entered, go)) = act {
            ctx.write(&format!("{stage}.part"), b"partial")?;
            entered.send(()).unwrap();
            go.recv().unwrap();
            ctx.write(&output_name(stage), b"STALE")?;
            return Ok(());
        }
        ctx.write(&output_name(stage), output.as_bytes())?;
        if stage == "transcribe" {
            ctx.write_shared("transcript.txt", output.as_bytes())?;
        }
        if let Some((entered, go)) = pause {
            entered.send(()).unwrap();
            go.recv().unwrap();
        }
        match act {
            Some(Act::Transient) => {
                Err(StageError::transient("the service is busy")
                    .internal("upstream 503 from asr-3"))
            }
            Some(Act::Permanent) => Err(StageError::permanent("the audio cannot be read")
                .internal("decoder: invalid header at byte 0")
                .code("bad_input")),
            Some(Act::Panic) => panic!("decoder crashed"),
            _ => Ok(()),
        }
    }
}

struct Harness {
    pipeline: Pipe,
    store: Arc<dyn Store>,
    clock: ManualClock,
    script: Arc<Script>,
    root: PathBuf,
    _dir: Option<TempDir>,
    _root_dir: TempDir,
}

fn builder(
    store: Arc<dyn Store>,
    clock: &ManualClock,
    root: &Path,
    script: &Arc<Script>,
) -> PipelineBuilder<Arc<dyn Store>> {
    let mut builder = Pipeline::builder(store, Arc::new(clock.clone()), root)
        .lease(LEASE)
        .retry_policy(
            RetryPolicy::default()
                .first_delay(Duration::from_secs(10))
                .max_failures(3),
        );
    for stage in STAGES {
        builder = builder.stage(stage, stage_body(Arc::clone(script), stage));
    }
    builder
}

fn harness_on(
    store: Arc<dyn Store>,
    dir: Option<TempDir>,
    start_ms: u64,
    configure: impl Fn(PipelineBuilder<Arc<dyn Store>>) -> PipelineBuilder<Arc<dyn Store>>,
) -> Harness {
    let clock = ManualClock::new(start_ms);
    let script = Arc::new(Script::default());
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().join("artifacts");
    let pipeline = configure(builder(Arc::clone(&store), &clock, &root, &script))
        .build()
        .unwrap();
    Harness {
        pipeline,
        store,
        clock,
        script,
        root,
        _dir: dir,
        _root_dir: root_dir,
    }
}

/// One harness per backend.
fn harnesses() -> Vec<(&'static str, Harness)> {
    common::backends::both()
        .into_iter()
        .map(|(name, store, dir)| (name, harness_on(store, dir, START_MS, |b| b)))
        .collect()
}

fn mem_harness() -> Harness {
    harness_on(Arc::new(jobsafe::MemStore::new()), None, START_MS, |b| b)
}

/// No temp file under the artifact root and no lock record at all.
fn assert_clean(h: &Harness, when: &str) {
    assert_eq!(
        common::temp_files_under(&h.root).unwrap(),
        Vec::<PathBuf>::new(),
        "temp files {when}"
    );
    let locks = h.pipeline.locks().list(&Prefix::all()).unwrap();
    assert!(
        locks.locks.is_empty() && locks.unreadable.is_empty(),
        "locks held {when}: {:?}",
        locks.locks
    );
}

/// A file's mtime and inode number: a file rewritten in place changes the
/// first, one replaced by a rename the second (whatever its mtime).
fn mtime(path: &Path) -> (SystemTime, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    (meta.modified().unwrap(), meta.ino())
}

fn enqueue(h: &Harness, subject: &str) -> String {
    h.pipeline
        .enqueue(subject, NewJob::new("episode"))
        .unwrap()
        .id
}

fn job_file(h: &Harness, id: &str, stage: &str) -> PathBuf {
    h.pipeline.job_dir(id).join(output_name(stage))
}

fn event_kinds(h: &Harness, id: &str) -> Vec<String> {
    let events = h.pipeline.jobs().events_since(id, 0).unwrap().events;
    events.into_iter().map(|e| e.kind).collect()
}

// ---------------------------------------------------------------- phase 1

#[test]
fn a_run_writes_every_stage_and_leaves_no_temp_file_or_lock() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        let report = h.pipeline.run_job(&id).unwrap();
        assert_eq!(report.outcome, RunOutcome::Completed, "{name}");
        assert_eq!(report.ran(), STAGES);
        let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Complete);
        assert_eq!(job.stages_done, STAGES);
        assert_eq!(
            std::fs::read_to_string(job_file(&h, &id, "export")).unwrap(),
            "export(draft(transcribe(audio of session-1)))"
        );
        let shared = h.pipeline.subject_dir("session-1").join("transcript.txt");
        assert_eq!(
            std::fs::read_to_string(shared).unwrap(),
            "transcribe(audio of session-1)"
        );
        for stage in STAGES {
            let checkpoint = h.pipeline.checkpoint(&id, stage).unwrap().unwrap();
            assert_eq!(checkpoint.attempt, 1);
            assert!(checkpoint.token.is_some());
        }
        let transcribe = h.pipeline.checkpoint(&id, "transcribe").unwrap().unwrap();
        assert_eq!(transcribe.artifacts.len(), 2, "job and session transcript");
        // The record passed through every stage boundary.
        let kinds = event_kinds(&h, &id);
        assert_eq!(kinds.iter().filter(|k| *k == "stage").count(), 3);
        assert_eq!(kinds.iter().filter(|k| *k == "stage_done").count(), 3);
        assert_eq!(kinds.last().map(String::as_str), Some("done"));
        assert_clean(&h, "after success");
    }
}

#[test]
fn a_rerun_after_success_changes_nothing_and_skipped_stages_keep_their_mtimes() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        // The last stage fails transiently once: the re-run goes through the
        // stages that finished, which verify and are skipped.
        h.script.then("export", Act::Transient);
        let first = h.pipeline.run_job(&id).unwrap();
        assert!(
            matches!(first.outcome, RunOutcome::RetryScheduled { .. }),
            "{name}"
        );
        let transcript = job_file(&h, &id, "transcribe");
        let shared = h.pipeline.subject_dir("session-1").join("transcript.txt");
        let draft = job_file(&h, &id, "draft");
        let before: Vec<_> = [&transcript, &shared, &draft].map(|p| mtime(p)).into();

        h.clock.advance(Duration::from_secs(3600));
        let second = h.pipeline.run_pass().unwrap();
        assert_eq!(second.runs.len(), 1);
        let rerun = &second.runs[0];
        assert_eq!(rerun.outcome, RunOutcome::Completed);
        assert_eq!(rerun.skipped(), ["transcribe", "draft"]);
        assert_eq!(rerun.ran(), ["export"]);
        let after: Vec<_> = [&transcript, &shared, &draft].map(|p| mtime(p)).into();
        assert_eq!(before, after, "skipped stages rewrote nothing");
        assert_eq!(
            h.script.runs_of(&id),
            ["transcribe", "draft", "export", "export"]
        );

        // The record shows the whole traversal of the last attempt, and the
        // skips are logged.
        let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
        assert_eq!(
            (job.status, job.stages_done.clone()),
            (JobStatus::Complete, STAGES.map(String::from).to_vec())
        );
        let kinds = event_kinds(&h, &id);
        assert_eq!(kinds.iter().filter(|k| *k == "stage_skipped").count(), 2);

        // A scheduler triggering again: the complete job is not due, nothing
        // is touched.
        let export_mtime = mtime(&job_file(&h, &id, "export"));
        let again = h.pipeline.run_job(&id).unwrap();
        assert!(matches!(
            again.outcome,
            RunOutcome::NotDue {
                status: JobStatus::Complete,
                ..
            }
        ));
        assert!(h.pipeline.run_pass().unwrap().runs.is_empty());
        assert_eq!(mtime(&job_file(&h, &id, "export")), export_mtime);
        assert_eq!(h.script.runs_of(&id).len(), 4);
        assert_clean(&h, "after the re-run");
    }
}

#[test]
fn a_missing_or_altered_artifact_makes_its_stage_run_again() {
    let h = mem_harness();
    let id = enqueue(&h, "session-1");
    h.script.then("export", Act::Permanent);
    assert!(matches!(
        h.pipeline.run_job(&id).unwrap().outcome,
        RunOutcome::Failed { .. }
    ));

    // The shared transcript disappears: transcribe runs again; its output is
    // the same, so draft still verifies (its inputs did not change).
    std::fs::remove_file(h.pipeline.subject_dir("session-1").join("transcript.txt")).unwrap();
    h.pipeline.retry(&id).unwrap();
    let report = h.pipeline.run_job(&id).unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(report.ran(), ["transcribe", "export"]);
    assert_eq!(report.skipped(), ["draft"]);

    // Altered content with the same length is caught by the digest.
    let job2 = enqueue(&h, "session-2");
    h.script.then("export", Act::Permanent);
    h.pipeline.run_job(&job2).unwrap();
    let draft = job_file(&h, &job2, "draft");
    let mut bytes = std::fs::read(&draft).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&draft, &bytes).unwrap();
    h.pipeline.retry(&job2).unwrap();
    let report = h.pipeline.run_job(&job2).unwrap();
    assert_eq!(report.skipped(), ["transcribe"]);
    assert_eq!(report.ran(), ["draft", "export"]);
    assert_eq!(
        std::fs::read_to_string(&draft).unwrap(),
        "draft(transcribe(audio of session-2))"
    );
}

#[test]
fn a_stage_whose_input_was_remade_differently_runs_again() {
    let h = mem_harness();
    let id = enqueue(&h, "session-1");
    h.script.then("export", Act::Permanent);
    h.pipeline.run_job(&id).unwrap();
    // The transcript is lost, and its stage will now produce something else.
    std::fs::remove_file(job_file(&h, &id, "transcribe")).unwrap();
    let (entered, _keep) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    go.send(()).unwrap();
    h.script.then("transcribe", Act::Pause(entered, wait));
    h.pipeline.retry(&id).unwrap();
    let report = h.pipeline.run_job(&id).unwrap();
    // transcribe wrote new content ("STALE"): draft's checkpoint no longer
    // chains to it, so draft runs again although its own file verifies.
    assert_eq!(report.ran(), ["transcribe", "draft", "export"]);
}

#[test]
fn a_failed_run_records_the_error_with_a_client_face_and_an_internal_one() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        h.script.then("draft", Act::Permanent);
        let report = h.pipeline.run_job(&id).unwrap();
        let RunOutcome::Failed { stage, error } = &report.outcome else {
            panic!("{name}: {:?}", report.outcome);
        };
        assert_eq!(stage, "draft");
        assert_eq!(error.client_message(), "the audio cannot be read");
        assert_eq!(error.error_code(), Some("bad_input"));
        let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.stage.as_deref(), Some("draft"));
        let stored = job.error.unwrap();
        assert_eq!(
            stored.internal_message(),
            "stage draft: decoder: invalid header at byte 0"
        );
        let client = serde_json::to_string(&h.pipeline.jobs().client_view(&id).unwrap()).unwrap();
        assert!(client.contains("the audio cannot be read") && !client.contains("decoder"));
        // The draft written before the error is removed with the failed stage.
        assert!(!job_file(&h, &id, "draft").exists());
        assert!(job_file(&h, &id, "transcribe").exists());
        assert_clean(&h, "after a permanent failure");
    }
}

// ---------------------------------------------------------------- phase 2

#[test]
fn a_transient_failure_is_retried_on_the_next_pass_after_its_backoff() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        h.script.then("draft", Act::Transient);
        let pass = h.pipeline.run_pass().unwrap();
        let RunOutcome::RetryScheduled {
            stage,
            retry_at_ms,
            failures,
            error,
        } = &pass.runs[0].outcome
        else {
            panic!("{name}: {:?}", pass.runs[0].outcome);
        };
        assert_eq!((stage.as_str(), *failures), ("draft", 1));
        // First delay 10 s, jittered between half and all of it.
        assert!(
            (START_MS + 5_000..=START_MS + 10_000).contains(retry_at_ms),
            "{retry_at_ms}"
        );
        assert_eq!(error.client_message(), "the service is busy");
        let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
        assert_eq!(
            (job.status, job.retry_at_ms),
            (JobStatus::Queued, Some(*retry_at_ms))
        );
        assert_clean(&h, "after a transient failure");

        // Not due yet: the next pass leaves it alone.
        h.clock.set(retry_at_ms - 1);
        assert!(h.pipeline.run_pass().unwrap().runs.is_empty());
        h.clock.set(*retry_at_ms);
        let pass = h.pipeline.run_pass().unwrap();
        assert_eq!(pass.runs[0].outcome, RunOutcome::Completed);
        assert_eq!(pass.runs[0].skipped(), ["transcribe"]);
        assert_eq!(
            h.script.runs_of(&id),
            ["transcribe", "draft", "draft", "export"]
        );
        assert!(event_kinds(&h, &id).contains(&"retry".to_owned()));
        assert_clean(&h, "after the retry");
    }
}

#[test]
fn the_retry_time_and_failure_count_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("artifacts");
    let open = |clock: &ManualClock, script: &Arc<Script>| {
        let store: Arc<dyn Store> = Arc::new(DirStore::open(dir.path().join("store")).unwrap());
        builder(store, clock, &root, script).build().unwrap()
    };
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let id = {
        let pipeline = open(&clock, &script);
        let id = pipeline.enqueue("s", NewJob::new("episode")).unwrap().id;
        script.then("draft", Act::Transient);
        pipeline.run_job(&id).unwrap();
        id
    };
    // A new process: same store, new pipeline.
    let pipeline = open(&clock, &script);
    let job = pipeline.jobs().get(&id).unwrap().unwrap();
    let retry_at = job.retry_at_ms.unwrap();
    assert!(matches!(
        pipeline.run_job(&id).unwrap().outcome,
        RunOutcome::NotDue { status: JobStatus::Queued, retry_at_ms: Some(at) } if at == retry_at
    ));
    clock.set(retry_at);
    script.then("draft", Act::Transient);
    let RunOutcome::RetryScheduled {
        failures,
        retry_at_ms,
        ..
    } = pipeline.run_job(&id).unwrap().outcome
    else {
        panic!("expected a second transient failure");
    };
    // The count went on from the first process: the backoff doubled.
    assert_eq!(failures, 2);
    assert!((retry_at + 10_000..=retry_at + 20_000).contains(&retry_at_ms));
}

#[test]
fn transient_failures_past_the_policy_fail_the_job() {
    let h = mem_harness();
    let id = enqueue(&h, "s");
    for _ in 0..3 {
        h.script.then("transcribe", Act::Transient);
    }
    for expected in 1..=2 {
        let RunOutcome::RetryScheduled {
            failures,
            retry_at_ms,
            ..
        } = h.pipeline.run_job(&id).unwrap().outcome
        else {
            panic!("expected a retry");
        };
        assert_eq!(failures, expected);
        h.clock.set(retry_at_ms);
    }
    let RunOutcome::Failed { error, .. } = h.pipeline.run_job(&id).unwrap().outcome else {
        panic!("expected the third failure to be final");
    };
    assert!(
        error
            .internal_message()
            .ends_with("(gave up after 3 transient failures)")
    );
    assert_eq!(
        h.pipeline.jobs().get(&id).unwrap().unwrap().status,
        JobStatus::Failed
    );
}

/// Gives `id` (of subject `session-1`) two transient failures (one short of the harness's limit of 3),
/// then a runner that starts it and dies, and a recovery that fails the job
/// for good: a failed job whose pipeline still counts two failures.
fn fail_with_two_transient_failures_counted(h: &Harness, id: &str) {
    for _ in 0..2 {
        h.script.then("draft", Act::Transient);
        let RunOutcome::RetryScheduled { retry_at_ms, .. } =
            h.pipeline.run_job(id).unwrap().outcome
        else {
            panic!("expected a retry");
        };
        h.clock.set(retry_at_ms);
    }
    // The runner takes the subject's lease and starts the job, then dies.
    let subject = Key::new(["session-1"]).unwrap();
    let Acquire::Acquired(runner) = h
        .pipeline
        .locks()
        .acquire(&subject, LEASE, &LockRequest::new())
        .unwrap()
    else {
        panic!("the subject is free");
    };
    h.pipeline.jobs().start(id, Some(runner.token())).unwrap();
    let _ = runner.into_handle();
    h.clock.advance(LEASE);
    let recovered = h
        .pipeline
        .jobs()
        .recover_where(RecoveryAction::Fail, |job| job.id == id)
        .unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].status, JobStatus::Failed);
}

#[test]
fn a_retry_through_pipeline_records_resumes_with_a_fresh_failure_count() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        fail_with_two_transient_failures_counted(&h, &id);

        // An operator's tool: the same store and namespace, no stage code.
        let records = PipelineRecords::new(
            Arc::clone(&h.store),
            Arc::new(h.clock.clone()),
            Prefix::new(["pipeline"]).unwrap(),
        )
        .unwrap();
        let listed = records.jobs().list(&Default::default()).unwrap().jobs;
        assert_eq!(listed.len(), 1, "{name}");
        assert_eq!(listed[0].status, JobStatus::Failed, "{name}");
        assert_eq!(records.retry(&id).unwrap().status, JobStatus::Queued);

        // The next transient failure is the first of a new count: retried, not
        // final.
        h.script.then("draft", Act::Transient);
        let outcome = h.pipeline.run_job(&id).unwrap().outcome;
        let RunOutcome::RetryScheduled {
            failures: 1,
            retry_at_ms,
            ..
        } = outcome
        else {
            panic!("{name}: expected the first failure of a new count, got {outcome:?}");
        };
        // ...and the job resumes at the stage that failed.
        h.clock.set(retry_at_ms);
        let report = h.pipeline.run_job(&id).unwrap();
        assert_eq!(report.outcome, RunOutcome::Completed, "{name}");
        assert_eq!(report.skipped(), ["transcribe"], "{name}");
    }
}

#[test]
fn a_purge_through_pipeline_records_takes_checkpoints_and_failure_counts_along() {
    for (name, h) in harnesses() {
        let done = enqueue(&h, "session-1");
        assert_eq!(
            h.pipeline.run_job(&done).unwrap().outcome,
            RunOutcome::Completed
        );
        let failed = enqueue(&h, "session-2");
        h.script.then("draft", Act::Permanent);
        h.pipeline.run_job(&failed).unwrap();
        let fresh = enqueue(&h, "session-3");
        let prefix =
            |parts: &[&str]| Prefix::new(["pipeline"].iter().chain(parts).copied()).unwrap();
        let run_state = |id: &str| Key::new(["pipeline", "run", id]).unwrap();
        assert_eq!(
            h.store
                .list_all(&prefix(&["checkpoint", &done]))
                .unwrap()
                .len(),
            3,
            "{name}"
        );
        assert!(
            h.store.get(&run_state(&failed)).unwrap().is_some(),
            "{name}"
        );

        h.clock.advance(Duration::from_secs(8 * 86_400));
        let records = PipelineRecords::new(
            Arc::clone(&h.store),
            Arc::new(h.clock.clone()),
            Prefix::new(["pipeline"]).unwrap(),
        )
        .unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let counts = records.purge(week, week * 5).unwrap();

        assert_eq!(
            (counts.complete, counts.failed, counts.total()),
            (1, 1, 2),
            "{name}"
        );
        for id in [&done, &failed] {
            assert_eq!(records.jobs().get(id).unwrap(), None, "{name}");
            for parts in [
                &["checkpoint", id.as_str()][..],
                &["jobs", "event", id.as_str()][..],
            ] {
                assert_eq!(
                    h.store.list_all(&prefix(parts)).unwrap(),
                    Vec::<Key>::new(),
                    "{name} {parts:?}"
                );
            }
            assert_eq!(h.store.get(&run_state(id)).unwrap(), None, "{name}");
        }
        assert!(records.jobs().get(&fresh).unwrap().is_some(), "{name}");
        // The tool knows no artifact root: the job directories stay for the
        // service's purge.
        assert!(h.pipeline.job_dir(&done).is_dir(), "{name}");
    }
}

#[test]
fn a_plain_job_state_retry_of_a_pipeline_job_keeps_the_old_failure_count() {
    // Why PipelineRecords::retry exists: the job records alone do not hold the
    // pipeline's count, and a retry that leaves it lets the next hiccup end
    // the job.
    let h = mem_harness();
    let id = enqueue(&h, "session-1");
    fail_with_two_transient_failures_counted(&h, &id);
    h.pipeline.jobs().retry(&id).unwrap();
    h.script.then("draft", Act::Transient);
    let outcome = h.pipeline.run_job(&id).unwrap().outcome;
    assert!(matches!(outcome, RunOutcome::Failed { .. }), "{outcome:?}");
}

#[test]
fn a_permanent_failure_fails_and_a_manual_retry_resumes_at_the_failed_stage() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        h.script.then("draft", Act::Permanent);
        assert!(
            matches!(
                h.pipeline.run_job(&id).unwrap().outcome,
                RunOutcome::Failed { .. }
            ),
            "{name}"
        );
        // Not retried by passes, however late.
        h.clock.advance(Duration::from_secs(86_400));
        assert!(h.pipeline.run_pass().unwrap().runs.is_empty());
        let transcript_mtime = mtime(&job_file(&h, &id, "transcribe"));

        let requeued = h.pipeline.retry(&id).unwrap();
        assert_eq!(requeued.status, JobStatus::Queued);
        let pass = h.pipeline.run_pass().unwrap();
        let report = &pass.runs[0];
        assert_eq!(report.outcome, RunOutcome::Completed);
        assert_eq!(report.skipped(), ["transcribe"]);
        assert_eq!(report.ran(), ["draft", "export"]);
        assert_eq!(mtime(&job_file(&h, &id, "transcribe")), transcript_mtime);
        assert_eq!(h.pipeline.jobs().get(&id).unwrap().unwrap().attempt, 2);
        assert_clean(&h, "after the manual retry");
    }
}

#[test]
fn a_manual_retry_never_wipes_the_failure_count_of_a_run_that_followed_it() {
    let store = Arc::new(HookedStore::default());
    let h = harness_on(Arc::clone(&store) as Arc<dyn Store>, None, START_MS, |b| b);
    let id = enqueue(&h, "session-1");
    h.script.then("draft", Act::Permanent);
    assert!(matches!(
        h.pipeline.run_job(&id).unwrap().outcome,
        RunOutcome::Failed { .. }
    ));
    h.script.then("draft", Act::Transient);
    h.script.then("draft", Act::Transient);

    // A runner (another process's pass) runs the job at the moment the retry
    // writes the failure count: after the job is requeued, if those are two
    // writes.
    let hooked = Arc::new(Mutex::new(None));
    {
        let pipeline = h.pipeline.clone();
        let hooked = Arc::clone(&hooked);
        let id = id.clone();
        let run_state = Key::new(["pipeline", "run", id.as_str()]).unwrap();
        let is_run_state =
            move |op: &StoreOp<'_>| matches!(op, StoreOp::Write(k) if **k == run_state);
        store.once(is_run_state, move || {
            *hooked.lock().unwrap() = Some(pipeline.run_job(&id).unwrap().outcome);
        });
    }
    h.pipeline.retry(&id).unwrap();
    let mut transient = 0;
    match hooked.lock().unwrap().take().unwrap() {
        RunOutcome::RetryScheduled {
            failures,
            retry_at_ms,
            ..
        } => {
            transient += 1;
            assert_eq!(failures, 1);
            h.clock.set(retry_at_ms);
        }
        other => assert!(
            matches!(
                other,
                RunOutcome::NotDue {
                    status: JobStatus::Failed,
                    ..
                }
            ),
            "{other:?}"
        ),
    }
    // Every transient failure since the retry is counted, whatever the
    // interleaving was.
    while transient < 2 {
        let RunOutcome::RetryScheduled {
            failures,
            retry_at_ms,
            ..
        } = h.pipeline.run_job(&id).unwrap().outcome
        else {
            panic!("expected a transient failure");
        };
        transient += 1;
        assert_eq!(failures, transient, "the count since the retry");
        h.clock.set(retry_at_ms);
    }
}

#[test]
fn a_panic_inside_a_stage_fails_the_job_and_leaves_nothing_behind() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        h.script.then("export", Act::Panic);
        let RunOutcome::Failed { stage, error } = h.pipeline.run_job(&id).unwrap().outcome else {
            panic!("{name}: expected a failure");
        };
        assert_eq!(stage, "export");
        assert_eq!(error.client_message(), JobError::DEFAULT_CLIENT_MESSAGE);
        assert_eq!(
            error.internal_message(),
            "stage export: panicked: decoder crashed"
        );
        assert_eq!(error.error_code(), Some("panic"));
        assert!(
            !job_file(&h, &id, "export").exists(),
            "partial export removed"
        );
        assert_clean(&h, "after a panic");
        // The subject is free for the next job.
        let next = enqueue(&h, "session-1");
        assert_eq!(
            h.pipeline.run_job(&next).unwrap().outcome,
            RunOutcome::Completed
        );
    }
}

#[test]
fn io_errors_are_classified_by_kind() {
    use std::io::ErrorKind::*;
    for kind in [TimedOut, Interrupted, ConnectionReset, StorageFull, Other] {
        assert_eq!(classify_io(kind), ErrorClass::Transient, "{kind:?}");
    }
    for kind in [
        NotFound,
        PermissionDenied,
        InvalidData,
        InvalidInput,
        Unsupported,
    ] {
        assert_eq!(classify_io(kind), ErrorClass::Permanent, "{kind:?}");
    }
    let timed_out: StageError = std::io::Error::from(TimedOut).into();
    assert!(timed_out.is_transient());
    assert_eq!(
        timed_out.job_error().client_message(),
        JobError::DEFAULT_CLIENT_MESSAGE
    );
    let corrupt: StageError = jobsafe::Error::InvalidArgument("x".into()).into();
    assert_eq!(corrupt.class(), ErrorClass::Permanent);
}

/// One classifier: a store's `Error::is_transient` and a stage's class agree on
/// every I/O error that says what it is, whether the stage meets it bare or
/// wrapped in `Error::Io`. An error that does not say is retried by a stage
/// (its retries are bounded) but is not transient for a caller's own loop.
#[test]
fn stores_and_stages_classify_io_errors_alike() {
    use jobsafe::vfs::{IoAction, IoStep};
    use std::io::{Error as IoError, ErrorKind::*};
    let step = IoStep::new(IoAction::Write, "write artifact");
    let wrapped = |source| jobsafe::Error::Io {
        step,
        path: "/data/artifact".into(),
        source,
    };
    for kind in [
        Interrupted,
        WouldBlock,
        TimedOut,
        ResourceBusy,
        StorageFull,
        QuotaExceeded,
        ConnectionRefused,
        ConnectionReset,
        ConnectionAborted,
        NotConnected,
        BrokenPipe,
        OutOfMemory,
    ] {
        assert!(wrapped(IoError::from(kind)).is_transient(), "{kind:?}");
        assert_eq!(classify_io(kind), ErrorClass::Transient, "{kind:?}");
        let bare: StageError = IoError::from(kind).into();
        let inside: StageError = wrapped(IoError::from(kind)).into();
        assert!(bare.is_transient() && inside.is_transient(), "{kind:?}");
    }
    for kind in [
        NotFound,
        PermissionDenied,
        InvalidData,
        AlreadyExists,
        ReadOnlyFilesystem,
    ] {
        assert!(!wrapped(IoError::from(kind)).is_transient(), "{kind:?}");
        assert_eq!(classify_io(kind), ErrorClass::Permanent, "{kind:?}");
        let bare: StageError = IoError::from(kind).into();
        let inside: StageError = wrapped(IoError::from(kind)).into();
        assert!(!bare.is_transient() && !inside.is_transient(), "{kind:?}");
    }
    // EIO says nothing about whether it lasts.
    let eio = || IoError::from_raw_os_error(5);
    assert!(!wrapped(eio()).is_transient());
    let bare: StageError = eio().into();
    let inside: StageError = wrapped(eio()).into();
    assert!(bare.is_transient() && inside.is_transient());
}

#[test]
fn an_unreadable_checkpoint_is_moved_aside_and_its_stage_runs_again() {
    let mem = Arc::new(jobsafe::MemStore::new());
    let dir = tempfile::tempdir().unwrap();
    let dir_store: Arc<dyn Store> = Arc::new(DirStore::open(dir.path().join("store")).unwrap());
    let garbage: &[u8] = b"{\"schema\":1,\"stage\":";
    for (name, store) in [
        ("mem", Arc::clone(&mem) as Arc<dyn Store>),
        ("dir", dir_store),
    ] {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let h = {
            let notices = Arc::clone(&notices);
            harness_on(store, None, START_MS, move |b| {
                let notices = Arc::clone(&notices);
                b.on_stage(move |n| {
                    let detail = n.detail.unwrap_or_default().to_owned();
                    notices
                        .lock()
                        .unwrap()
                        .push((n.stage.to_owned(), n.action, detail));
                })
            })
        };
        let id = enqueue(&h, "session-1");
        h.script.then("export", Act::Permanent);
        h.pipeline.run_job(&id).unwrap();
        let later = enqueue(&h, "session-2");
        let key = Key::new(["pipeline", "checkpoint", id.as_str(), "draft"]).unwrap();
        h.store.put(&key, garbage, jobsafe::Expect::Any).unwrap();
        assert!(
            h.pipeline
                .checkpoint(&id, "draft")
                .unwrap_err()
                .is_corrupt()
        );
        h.pipeline.retry(&id).unwrap();

        // One pass runs both jobs: the damaged checkpoint counts as stale.
        let pass = h.pipeline.run_pass().unwrap();
        assert!(pass.errors.is_empty(), "{name}: {:?}", pass.errors);
        assert_eq!(pass.runs.len(), 2, "{name}");
        let run = pass.runs.iter().find(|r| r.job_id == id).unwrap();
        assert_eq!(run.outcome, RunOutcome::Completed, "{name}");
        assert_eq!(run.skipped(), ["transcribe"]);
        assert_eq!(run.ran(), ["draft", "export"]);
        let other = pass.runs.iter().find(|r| r.job_id == later).unwrap();
        assert_eq!(other.outcome, RunOutcome::Completed, "{name}");
        let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
        assert_eq!((job.status, job.attempt), (JobStatus::Complete, 2));
        assert!(h.pipeline.checkpoint(&id, "draft").unwrap().is_some());

        // The notice says what was wrong and where the bytes went; they are
        // kept there.
        let notices = notices.lock().unwrap().clone();
        let (_, _, detail) = notices
            .iter()
            .find(|(stage, action, detail)| {
                stage == "draft" && *action == StageAction::Started && !detail.is_empty()
            })
            .unwrap();
        assert!(detail.contains("corrupt record"), "{name}: {detail}");
        let location = detail.split("moved to ").nth(1).unwrap();
        if name == "mem" {
            assert_eq!(mem.quarantined(), [(key.clone(), garbage.to_vec())]);
        } else {
            let kept = std::fs::read(location).unwrap();
            assert!(kept.ends_with(garbage), "{name}: {location}");
        }
        assert_clean(&h, "after the stage ran again");
    }
}

#[test]
fn an_unreadable_failure_count_is_moved_aside_and_counting_starts_again() {
    let mem = Arc::new(jobsafe::MemStore::new());
    let h = harness_on(Arc::clone(&mem) as Arc<dyn Store>, None, START_MS, |b| b);
    let id = enqueue(&h, "session-1");
    h.script.then("draft", Act::Transient);
    h.script.then("draft", Act::Transient);
    let RunOutcome::RetryScheduled { retry_at_ms, .. } = h.pipeline.run_job(&id).unwrap().outcome
    else {
        panic!("expected a retry");
    };
    let key = Key::new(["pipeline", "run", id.as_str()]).unwrap();
    h.store
        .put(&key, b"not json", jobsafe::Expect::Any)
        .unwrap();
    h.clock.set(retry_at_ms);
    let RunOutcome::RetryScheduled {
        failures, error, ..
    } = h.pipeline.run_job(&id).unwrap().outcome
    else {
        panic!("expected a retry");
    };
    assert_eq!(failures, 1, "the lost count starts again");
    assert!(
        error.internal_message().contains("unreadable"),
        "{}",
        error.internal_message()
    );
    assert_eq!(mem.quarantined(), [(key, b"not json".to_vec())]);
    assert_clean(&h, "after the failure");
}

#[test]
fn a_pass_fails_an_attempt_that_cannot_use_its_directory_and_runs_the_other_jobs() {
    let h = mem_harness();
    let broken = enqueue(&h, "session-1");
    h.script.then("export", Act::Permanent);
    h.pipeline.run_job(&broken).unwrap();
    // A disk problem the run cannot get past: the job's directory replaced by
    // a symlink, which is never followed. (An artifact replaced by something
    // else only makes its stage run again.)
    let job_dir = h.pipeline.job_dir(&broken);
    let elsewhere = h.root.join("elsewhere");
    std::fs::rename(&job_dir, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &job_dir).unwrap();
    h.pipeline.retry(&broken).unwrap();
    let fine = enqueue(&h, "session-2");

    let pass = h.pipeline.run_pass().unwrap();
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert_eq!(pass.runs.len(), 2, "{:?}", pass.runs);
    // Failed like a stage's transient error: counted, and retried later.
    let RunOutcome::RetryScheduled { error, .. } = &pass.runs[0].outcome else {
        panic!("{:?}", pass.runs[0]);
    };
    assert_eq!(pass.runs[0].job_id, broken);
    let internal = error.internal_message();
    assert!(internal.contains(&*job_dir.to_string_lossy()), "{internal}");
    assert_eq!(pass.runs[1].job_id, fine);
    assert_eq!(pass.runs[1].outcome, RunOutcome::Completed);
    assert_clean(&h, "after the pass");
}

// ---------------------------------------------------------------- phase 3

#[test]
fn two_runners_started_together_on_one_subject_only_one_processes_it() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        let other = enqueue(&h, "session-1");
        let (entered, go) = h.script.pause("draft");
        let first = {
            let pipeline = h.pipeline.clone();
            let id = id.clone();
            std::thread::spawn(move || pipeline.run_job(&id).unwrap())
        };
        entered.recv().unwrap();
        // A second runner (another process's pass, say) finds the subject held
        // and does nothing, for this job and for the subject's other job.
        let second = h.pipeline.run_pass().unwrap();
        assert_eq!(second.runs.len(), 2, "{name}");
        for report in &second.runs {
            let RunOutcome::Busy { holder } = &report.outcome else {
                panic!("{name}: expected busy, got {:?}", report.outcome);
            };
            assert_eq!(holder.metadata["job"], id.as_str());
            assert!(report.stages.is_empty());
        }
        go.send(()).unwrap();
        let report = first.join().unwrap();
        assert_eq!(report.outcome, RunOutcome::Completed);
        assert_eq!(h.script.runs_of(&id), STAGES);
        assert!(h.script.runs_of(&other).is_empty());
        assert_clean(&h, "after the overlap");
    }
}

#[test]
fn overlapping_passes_run_each_stage_of_each_job_once() {
    for (name, h) in harnesses() {
        let ids: Vec<String> = (0..6)
            .map(|i| enqueue(&h, &format!("session-{}", i % 3)))
            .collect();
        let barrier = Arc::new(Barrier::new(3));
        let passes: Vec<_> = (0..3)
            .map(|_| {
                let pipeline = h.pipeline.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    pipeline.run_pass().unwrap()
                })
            })
            .collect();
        let mut reports: Vec<_> = passes.into_iter().map(|p| p.join().unwrap()).collect();
        // Busy subjects are picked up by a later pass.
        loop {
            let pass = h.pipeline.run_pass().unwrap();
            if pass.runs.is_empty() {
                break;
            }
            reports.push(pass);
        }
        for id in &ids {
            assert_eq!(h.script.runs_of(id), STAGES, "{name}: job {id}");
            assert_eq!(
                h.pipeline.jobs().get(id).unwrap().unwrap().status,
                JobStatus::Complete
            );
        }
        // Each job was completed by exactly one run of one pass; every other
        // run found its subject busy or the job already done.
        let runs: Vec<_> = reports.iter().flat_map(|r| &r.runs).collect();
        for id in &ids {
            let completions = runs
                .iter()
                .filter(|r| r.job_id == *id && r.outcome == RunOutcome::Completed)
                .count();
            assert_eq!(completions, 1, "{name}: job {id}");
        }
        for run in &runs {
            assert!(
                matches!(
                    run.outcome,
                    RunOutcome::Completed
                        | RunOutcome::Busy { .. }
                        | RunOutcome::NotDue {
                            status: JobStatus::Complete,
                            ..
                        }
                ),
                "{name}: {:?}",
                run.outcome
            );
        }
        assert!(reports.iter().all(|r| r.errors.is_empty()));
        assert_clean(&h, "after overlapping passes");
    }
}

#[test]
fn delete_mid_pipeline_aborts_cleanly_with_no_orphan_artifacts() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        let (entered, go) = h.script.pause("draft");
        let runner = {
            let pipeline = h.pipeline.clone();
            let id = id.clone();
            std::thread::spawn(move || pipeline.run_job(&id).unwrap())
        };
        entered.recv().unwrap();
        // The runner holds the subject: the deletion is marked and the job
        // cancelled; the runner finishes it at its next boundary.
        assert_eq!(h.pipeline.delete(&id).unwrap(), Deletion::Pending, "{name}");
        go.send(()).unwrap();
        let report = runner.join().unwrap();
        assert_eq!(report.outcome, RunOutcome::Deleted);
        assert!(h.pipeline.jobs().get(&id).unwrap().is_none());
        assert!(!h.pipeline.job_dir(&id).exists(), "job directory removed");
        assert!(h.pipeline.checkpoint(&id, "transcribe").unwrap().is_none());
        let leftovers = h
            .store
            .list_all(&Prefix::new(["pipeline"]).unwrap())
            .unwrap();
        assert!(
            leftovers.iter().all(|k| !k.segments().contains(&id)),
            "{name}: records left: {leftovers:?}"
        );
        assert_eq!(h.script.runs_of(&id), ["transcribe", "draft"]);
        assert_clean(&h, "after a deletion mid-run");

        // Deleting an idle job removes it at once.
        let idle = enqueue(&h, "session-2");
        h.script.then("export", Act::Permanent);
        h.pipeline.run_job(&idle).unwrap();
        assert_eq!(h.pipeline.delete(&idle).unwrap(), Deletion::Removed);
        assert!(!h.pipeline.job_dir(&idle).exists());
        assert_eq!(h.pipeline.delete(&idle).unwrap(), Deletion::NotFound);
        assert_clean(&h, "after deleting an idle job");
    }
}

#[test]
fn a_deletion_that_waited_for_a_busy_subject_is_finished_by_the_next_pass() {
    let h = mem_harness();
    let id = enqueue(&h, "session-1");
    let Acquire::Acquired(guard) = h
        .pipeline
        .locks()
        .acquire(
            &Key::new(["session-1"]).unwrap(),
            LEASE,
            &LockRequest::new(),
        )
        .unwrap()
    else {
        panic!("free")
    };
    assert_eq!(h.pipeline.delete(&id).unwrap(), Deletion::Pending);
    assert_eq!(h.pipeline.run_pass().unwrap().deletions, 0, "still busy");
    guard.release().unwrap();
    let pass = h.pipeline.run_pass().unwrap();
    assert_eq!(pass.deletions, 1);
    assert!(pass.runs.is_empty());
    assert!(h.pipeline.jobs().get(&id).unwrap().is_none());
    assert!(h.script.runs_of(&id).is_empty());
}

#[test]
fn cancel_between_stages_keeps_finished_artifacts_and_removes_the_unfinished_stages() {
    for (name, h) in harnesses() {
        let id = enqueue(&h, "session-1");
        let (entered, go) = h.script.pause("draft");
        let runner = {
            let pipeline = h.pipeline.clone();
            let id = id.clone();
            std::thread::spawn(move || pipeline.run_job(&id).unwrap())
        };
        entered.recv().unwrap();
        h.pipeline.cancel(&id).unwrap();
        go.send(()).unwrap();
        let report = runner.join().unwrap();
        assert_eq!(
            report.outcome,
            RunOutcome::Cancelled {
                stage: Some("draft".to_owned())
            },
            "{name}"
        );
        assert!(
            job_file(&h, &id, "transcribe").exists(),
            "finished stage kept"
        );
        assert!(h.pipeline.checkpoint(&id, "transcribe").unwrap().is_some());
        assert!(
            !job_file(&h, &id, "draft").exists(),
            "unfinished stage removed"
        );
        assert!(!h.pipeline.job_dir(&id).join("draft.part").exists());
        assert!(h.pipeline.checkpoint(&id, "draft").unwrap().is_none());
        assert_eq!(
            h.pipeline.jobs().get(&id).unwrap().unwrap().status,
            JobStatus::Cancelled
        );
        assert_clean(&h, "after a cancel");
    }
}

#[test]
fn a_paused_runner_is_fenced_out_after_a_lock_takeover() {
    for (name, h) in harnesses() {
        // The paused runner renews nothing: its whole process is stopped.
        let paused = builder(Arc::clone(&h.store), &h.clock, &h.root, &h.script)
            .renew_every(None)
            .build()
            .unwrap();
        let id = enqueue(&h, "session-1");
        let (entered, go) = h.script.pause("transcribe");
        let stale = {
            let id = id.clone();
            std::thread::spawn(move || paused.run_job(&id).unwrap())
        };
        entered.recv().unwrap();
        let stale_token = h
            .pipeline
            .jobs()
            .get(&id)
            .unwrap()
            .unwrap()
            .fencing
            .unwrap();

        // Its lease ends; another runner takes the subject over and finishes.
        h.clock.advance(LEASE);
        let successor = h.pipeline.run_job(&id).unwrap();
        assert_eq!(successor.outcome, RunOutcome::Completed, "{name}");
        let checkpoint = h.pipeline.checkpoint(&id, "transcribe").unwrap().unwrap();
        assert!(checkpoint.token.unwrap() > stale_token);
        assert_eq!(checkpoint.attempt, 2);

        // The paused runner wakes and tries to overwrite the transcript.
        go.send(()).unwrap();
        let report = stale.join().unwrap();
        // Its write was refused, and the run says why: a newer attempt owns
        // the job.
        let RunOutcome::Superseded { stage, reason } = &report.outcome else {
            panic!("{name}: {:?}", report.outcome);
        };
        assert_eq!(stage.as_deref(), Some("transcribe"));
        assert!(reason.contains("superseded by attempt 2"), "{reason}");
        assert_eq!(
            report.stages,
            [("transcribe".to_owned(), StageAction::Interrupted)]
        );
        assert_eq!(
            std::fs::read_to_string(job_file(&h, &id, "transcribe")).unwrap(),
            "transcribe(audio of session-1)",
            "the stale write was refused"
        );
        assert_eq!(
            h.pipeline.checkpoint(&id, "transcribe").unwrap().unwrap(),
            checkpoint
        );
        let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
        assert_eq!((job.status, job.attempt), (JobStatus::Complete, 2));
        assert_clean(&h, "after the stale runner stopped");
    }
}

#[test]
fn a_runner_that_lost_the_job_leaves_its_successors_files_when_its_stage_fails() {
    for (name, h) in harnesses() {
        for (how, then) in [("transient", Act::Transient), ("panic", Act::Panic)] {
            // Paused in `draft` after writing draft.txt, renewing nothing.
            let paused = builder(Arc::clone(&h.store), &h.clock, &h.root, &h.script)
                .renew_every(None)
                .build()
                .unwrap();
            let id = enqueue(&h, "session-1");
            let (entered_tx, entered) = mpsc::channel();
            let (go, go_rx) = mpsc::channel();
            h.script
                .then("draft", Act::PauseThen(entered_tx, go_rx, Box::new(then)));
            let stale = {
                let id = id.clone();
                std::thread::spawn(move || paused.run_job(&id).unwrap())
            };
            entered.recv().unwrap();

            // Its lease ends; a successor takes over, writes draft.txt again
            // and completes the job.
            h.clock.advance(LEASE);
            let successor = h.pipeline.run_job(&id).unwrap();
            assert_eq!(successor.outcome, RunOutcome::Completed, "{name} {how}");

            // The paused runner wakes and its stage fails: it must not remove
            // the draft, which is now the successor's.
            go.send(()).unwrap();
            let report = stale.join().unwrap();
            assert!(
                matches!(
                    &report.outcome,
                    RunOutcome::Superseded { stage: Some(s), .. } if s == "draft"
                ),
                "{name} {how}: {:?}",
                report.outcome
            );
            assert_eq!(
                std::fs::read_to_string(job_file(&h, &id, "draft")).unwrap(),
                "draft(transcribe(audio of session-1))",
                "{name} {how}: the successor's draft is kept"
            );
            let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
            assert_eq!((job.status, job.attempt), (JobStatus::Complete, 2));
            assert!(job.error.is_none(), "{name} {how}: no failure recorded");
            assert_clean(&h, "after the stale runner's failure");
        }
    }
}

#[test]
fn a_stale_runner_does_not_recreate_the_directory_of_a_deleted_job() {
    for (name, h) in harnesses() {
        let paused = builder(Arc::clone(&h.store), &h.clock, &h.root, &h.script)
            .renew_every(None)
            .build()
            .unwrap();
        let id = enqueue(&h, "session-1");
        let (entered, go) = h.script.pause("draft");
        let stale = {
            let id = id.clone();
            std::thread::spawn(move || paused.run_job(&id).unwrap())
        };
        entered.recv().unwrap();
        // Its lease ends, and the job is deleted at once (the subject is free).
        h.clock.advance(LEASE);
        assert_eq!(h.pipeline.delete(&id).unwrap(), Deletion::Removed, "{name}");
        assert!(!h.pipeline.job_dir(&id).exists());

        // The paused runner wakes and tries its next write: refused before
        // anything, its directory included, is created.
        go.send(()).unwrap();
        let report = stale.join().unwrap();
        assert!(
            matches!(
                &report.outcome,
                RunOutcome::LostLease { stage: Some(s), .. } if s == "draft"
            ),
            "{name}: {:?}",
            report.outcome
        );
        assert!(
            !h.pipeline.job_dir(&id).exists(),
            "{name}: the deleted job's directory was recreated"
        );
        assert!(h.pipeline.jobs().get(&id).unwrap().is_none());
        assert_clean(&h, "after the stale runner stopped");
    }
}

#[test]
fn losing_the_lease_stops_the_run_before_its_next_write() {
    let h = mem_harness();
    let id = enqueue(&h, "session-1");
    let (entered, go) = h.script.pause("draft");
    let runner = {
        let pipeline = h.pipeline.clone();
        let id = id.clone();
        std::thread::spawn(move || pipeline.run_job(&id).unwrap())
    };
    entered.recv().unwrap();
    // An operator frees the subject and someone else takes it; the runner's
    // lease then ends without a renewal it could make.
    let subject = Key::new(["session-1"]).unwrap();
    h.pipeline.locks().force_release(&subject).unwrap().unwrap();
    let Acquire::Acquired(other) = h
        .pipeline
        .locks()
        .acquire(&subject, LEASE * 10, &LockRequest::new())
        .unwrap()
    else {
        panic!("free");
    };
    h.clock.advance(LEASE);
    go.send(()).unwrap();
    let report = runner.join().unwrap();
    assert!(
        matches!(&report.outcome, RunOutcome::LostLease { stage: Some(s), .. } if s == "draft")
    );
    assert!(
        !job_file(&h, &id, "draft").exists(),
        "the next write did not happen"
    );
    assert!(h.pipeline.checkpoint(&id, "draft").unwrap().is_none());
    // The job is left running for whoever holds the subject now.
    assert_eq!(
        h.pipeline.jobs().get(&id).unwrap().unwrap().status,
        JobStatus::Running
    );
    assert_eq!(
        common::temp_files_under(&h.root).unwrap(),
        Vec::<PathBuf>::new()
    );
    let holder = h.pipeline.locks().peek(&subject).unwrap().unwrap();
    assert_eq!(
        holder.job_id,
        other.job_id(),
        "the new holder's lock is untouched"
    );
    other.release().unwrap();
    // Once free, the next pass takes the job over and finishes it.
    let pass = h.pipeline.run_pass().unwrap();
    assert_eq!(pass.runs[0].outcome, RunOutcome::Completed);
    assert_eq!(pass.runs[0].skipped(), ["transcribe"]);
    assert_clean(&h, "after the takeover");
}

#[test]
fn a_job_left_running_by_a_dead_runner_is_taken_over_when_its_lease_ends() {
    let h = mem_harness();
    let id = enqueue(&h, "session-1");
    // A runner that died after starting: its lock and running job stay.
    let Acquire::Acquired(guard) = h
        .pipeline
        .locks()
        .acquire(
            &Key::new(["session-1"]).unwrap(),
            LEASE,
            &LockRequest::new(),
        )
        .unwrap()
    else {
        panic!("free")
    };
    h.pipeline.jobs().start(&id, Some(guard.token())).unwrap();
    let _ = guard.into_handle();
    assert!(matches!(
        h.pipeline.run_job(&id).unwrap().outcome,
        RunOutcome::Busy { .. }
    ));
    h.clock.advance(LEASE);
    let pass = h.pipeline.run_pass().unwrap();
    assert_eq!(pass.runs[0].outcome, RunOutcome::Completed);
    assert_eq!(h.pipeline.jobs().get(&id).unwrap().unwrap().attempt, 2);
    assert_clean(&h, "after the takeover");
}

// ---------------------------------------------------------------- purge

fn real_now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[test]
fn purge_removes_old_jobs_artifacts_reservations_and_stale_locks_with_counts() {
    // Temp files are aged by their file times: this clock starts at the real time.
    let store: Arc<dyn Store> = Arc::new(jobsafe::MemStore::new());
    let h = harness_on(Arc::clone(&store), None, real_now_ms(), |b| b);
    let ledger = JobLedger::builder(Arc::clone(&store), Arc::new(h.clock.clone()))
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let h = Harness {
        pipeline: builder(Arc::clone(&store), &h.clock, &h.root, &h.script)
            .ledger(ledger.clone())
            .purge_policy(PurgePolicy::default())
            .build()
            .unwrap(),
        ..h
    };
    let done = enqueue(&h, "s1");
    h.pipeline.run_job(&done).unwrap();
    let failed = enqueue(&h, "s2");
    h.script.then("draft", Act::Permanent);
    h.pipeline.run_job(&failed).unwrap();
    let fresh = enqueue(&h, "s3"); // queued, recent: kept
    ledger
        .reserve("lic:1", "job-1", &ChargeRequest::new())
        .unwrap();
    let Acquire::Acquired(stale) = h
        .pipeline
        .locks()
        .acquire(
            &Key::new(["crashed-session"]).unwrap(),
            LEASE,
            &LockRequest::new(),
        )
        .unwrap()
    else {
        panic!("free")
    };
    let _ = stale.into_handle();
    // A temp file left by a crashed writer in the directory of a subject that
    // still has a job.
    std::fs::create_dir_all(h.pipeline.subject_dir("s3")).unwrap();
    let crashed = h
        .pipeline
        .subject_dir("s3")
        .join(format!(".x.0{}", AtomicWriter::TEMP_SUFFIX));
    std::fs::write(&crashed, b"partial").unwrap();

    // Nothing is old yet.
    assert_eq!(h.pipeline.purge().unwrap().total(), 0);

    h.clock.advance(Duration::from_secs(8 * 86_400));
    let report = h.pipeline.purge().unwrap();
    assert_eq!(
        (report.jobs.complete, report.jobs.failed, report.jobs.queued),
        (1, 1, 0)
    );
    assert_eq!(report.artifact_dirs, 2);
    assert_eq!(report.subject_dirs, 2, "s1 and s2 have no job left");
    assert!(!h.pipeline.subject_dir("s1").exists());
    assert!(h.pipeline.subject_dir("s3").exists());
    assert_eq!(
        report.checkpoints,
        3 + 1,
        "three of the complete job, one of the failed"
    );
    assert_eq!(report.reservations, 1);
    assert_eq!(report.locks, 1);
    assert_eq!(report.temp_files, 1);
    assert!(!crashed.exists());
    assert!(h.pipeline.jobs().get(&done).unwrap().is_none());
    assert!(!h.pipeline.job_dir(&done).exists() && !h.pipeline.job_dir(&failed).exists());
    assert!(h.pipeline.jobs().get(&fresh).unwrap().is_some());
    assert_eq!(
        h.pipeline.purge().unwrap().total(),
        0,
        "a second purge finds nothing"
    );
}

#[test]
fn purge_leaves_a_job_retried_while_it_was_being_purged() {
    let store = Arc::new(HookedStore::default());
    let h = harness_on(Arc::clone(&store) as Arc<dyn Store>, None, START_MS, |b| b);
    let id = enqueue(&h, "session-1");
    h.script.then("draft", Act::Permanent);
    h.pipeline.run_job(&id).unwrap();
    h.clock.advance(Duration::from_secs(8 * 86_400));

    // An operator retries the job while the purge is removing it (a manual
    // retry needs no subject lock): after the purge read the job, before it
    // removed anything.
    let retried = Arc::new(Mutex::new(None));
    {
        let pipeline = h.pipeline.clone();
        let retried = Arc::clone(&retried);
        let id = id.clone();
        let checkpoints = Prefix::new(["pipeline", "checkpoint", id.as_str()]).unwrap();
        let lists_checkpoints =
            move |op: &StoreOp<'_>| matches!(op, StoreOp::List(p) if **p == checkpoints);
        store.once(lists_checkpoints, move || {
            *retried.lock().unwrap() = Some(pipeline.retry(&id).unwrap().status);
        });
    }
    let report = h.pipeline.purge().unwrap();
    assert_eq!(retried.lock().unwrap().take(), Some(JobStatus::Queued));
    assert_eq!(report.jobs.total(), 0, "{report:?}");
    assert_eq!((report.checkpoints, report.artifact_dirs), (0, 0));

    // The retry stands: the job, its checkpoint and its files are there, and
    // its next run resumes where it failed.
    let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert!(h.pipeline.checkpoint(&id, "transcribe").unwrap().is_some());
    assert!(job_file(&h, &id, "transcribe").exists());
    let run = h.pipeline.run_job(&id).unwrap();
    assert_eq!(run.outcome, RunOutcome::Completed);
    assert_eq!(run.skipped(), ["transcribe"]);
}

#[test]
fn purge_keeps_the_files_of_a_job_whose_record_cannot_be_read() {
    // Orphan directories are aged by their file times: a clock at the real time.
    let h = harness_on(
        Arc::new(jobsafe::MemStore::new()),
        None,
        real_now_ms(),
        |b| b,
    );
    let damaged = enqueue(&h, "session-1");
    h.pipeline.run_job(&damaged).unwrap();
    let old = enqueue(&h, "session-2");
    h.pipeline.run_job(&old).unwrap();
    let key = Key::new(["pipeline", "jobs", "job", damaged.as_str()]).unwrap();
    h.store
        .put(&key, b"not json", jobsafe::Expect::Any)
        .unwrap();
    h.clock.advance(Duration::from_secs(8 * 86_400));

    for round in ["first", "second"] {
        let report = h.pipeline.purge().unwrap();
        assert_eq!(
            report.unreadable_jobs,
            std::slice::from_ref(&key),
            "{round} purge"
        );
        assert!(
            h.pipeline.job_dir(&damaged).join("export.txt").exists(),
            "{round} purge: the unreadable job's files are kept"
        );
        for stage in STAGES {
            assert!(h.pipeline.checkpoint(&damaged, stage).unwrap().is_some());
        }
        if round == "first" {
            // The readable old job is purged as usual.
            assert_eq!(report.jobs.complete, 1);
            assert!(!h.pipeline.job_dir(&old).exists());
        }
    }
}

/// A file and a link someone left among the job and subject directories
/// never stop a purge: among the jobs' they are left alone, among the
/// subjects' they go as any orphan does, and nothing is followed.
#[test]
fn purge_runs_past_files_and_links_among_the_directories() {
    let h = harness_on(
        Arc::new(jobsafe::MemStore::new()),
        None,
        real_now_ms(),
        |b| b,
    );
    let old = enqueue(&h, "session-1");
    h.pipeline.run_job(&old).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"keep").unwrap();
    for top in ["jobs", "subjects"] {
        std::fs::write(h.root.join(top).join("README"), b"notes").unwrap();
        std::os::unix::fs::symlink(outside.path(), h.root.join(top).join("elsewhere")).unwrap();
    }
    h.clock.advance(Duration::from_secs(8 * 86_400));
    for round in ["first", "second"] {
        let report = h.pipeline.purge().unwrap();
        if round == "first" {
            assert_eq!(report.jobs.complete, 1, "{report:?}");
        }
        assert!(h.root.join("jobs/README").exists(), "{round} purge");
        assert!(h.root.join("jobs/elsewhere").exists(), "{round} purge");
    }
    assert!(outside.path().join("precious").exists());
}

#[test]
fn purge_removes_a_subjects_shared_files_once_no_job_of_it_remains() {
    let h = mem_harness();
    let first = enqueue(&h, "session-1");
    h.pipeline.run_job(&first).unwrap();
    let second = enqueue(&h, "session-1");
    // A subject that is not a plain name: its directory name is a hash.
    let hashed = enqueue(&h, "Session B");
    h.pipeline.run_job(&hashed).unwrap();
    let shared = |subject: &str| h.pipeline.subject_dir(subject).join("transcript.txt");
    assert!(shared("session-1").exists() && shared("Session B").exists());

    // The old jobs go; session-1 still has a queued job, Session B none.
    h.clock.advance(Duration::from_secs(8 * 86_400));
    let report = h.pipeline.purge().unwrap();
    assert_eq!(report.jobs.complete, 2);
    assert_eq!(report.subject_dirs, 1);
    assert!(!h.pipeline.subject_dir("Session B").exists());
    assert!(shared("session-1").exists(), "its queued job may use it");

    // session-1's last job runs, ages and goes: so does its directory.
    h.pipeline.run_job(&second).unwrap();
    h.clock.advance(Duration::from_secs(8 * 86_400));
    let report = h.pipeline.purge().unwrap();
    assert_eq!((report.jobs.complete, report.subject_dirs), (1, 1));
    assert!(!h.pipeline.subject_dir("session-1").exists());

    // A deleted job leaves its subject's files (other jobs may share them);
    // the next purge removes them, but not while a runner holds the subject.
    let deleted = enqueue(&h, "session-3");
    h.pipeline.run_job(&deleted).unwrap();
    assert_eq!(h.pipeline.delete(&deleted).unwrap(), Deletion::Removed);
    assert!(shared("session-3").exists());
    let Acquire::Acquired(guard) = h
        .pipeline
        .locks()
        .acquire(
            &Key::new(["session-3"]).unwrap(),
            LEASE,
            &LockRequest::new(),
        )
        .unwrap()
    else {
        panic!("free")
    };
    assert_eq!(h.pipeline.purge().unwrap().subject_dirs, 0);
    assert!(
        shared("session-3").exists(),
        "kept while the subject is held"
    );
    guard.release().unwrap();
    let report = h.pipeline.purge().unwrap();
    assert_eq!((report.subject_dirs, report.total()), (1, 1));
    assert!(!h.pipeline.subject_dir("session-3").exists());
    assert_clean(&h, "after the purges");
}

#[test]
fn artifact_directories_found_made_are_flushed_into_their_parents_once() {
    let vfs = jobsafe::testing::Counting::new(jobsafe::vfs::StdVfs);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("artifacts");
    // Made by another runner, which may not have flushed them yet.
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    let flushes = Arc::new(Mutex::new(Vec::new()));
    let (counted, seen) = (vfs.clone(), flushes.clone());
    let pipeline = Pipeline::builder(
        jobsafe::MemStore::new(),
        Arc::new(ManualClock::new(START_MS)),
        &root,
    )
    .writer(jobsafe::AtomicWriter::with_vfs(vfs.clone()))
    .stage("write", move |ctx| {
        for name in ["a.txt", "b.txt", "c.txt"] {
            let before = counted.counts().dir_syncs;
            ctx.write(name, b"a")?;
            seen.lock()
                .unwrap()
                .push(counted.counts().dir_syncs - before);
        }
        Ok(())
    })
    .build()
    .unwrap();
    let job = pipeline.enqueue("s", NewJob::new("x")).unwrap();
    pipeline.run_job(&job.id).unwrap();
    // The first write: the parents of the root and of `jobs/`, found made;
    // `jobs/`, for the job's directory it makes; the artifact's own. Then
    // only the artifact's own, with an `lstat` per directory on the way.
    assert_eq!(*flushes.lock().unwrap(), [1 + 1 + 1 + 1, 1, 1]);
}

#[test]
fn job_directories_are_removed_through_the_vfs_and_the_removal_is_flushed() {
    let vfs = jobsafe::testing::Counting::new(jobsafe::vfs::StdVfs);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(
        jobsafe::MemStore::new(),
        Arc::new(ManualClock::new(START_MS)),
        dir.path(),
    )
    .writer(jobsafe::AtomicWriter::with_vfs(vfs.clone()))
    .stage("write", |ctx| {
        ctx.write("a.txt", b"a")?;
        ctx.write("b.txt", b"b")?;
        Ok(())
    })
    .build()
    .unwrap();
    let job = pipeline.enqueue("s", NewJob::new("x")).unwrap();
    pipeline.run_job(&job.id).unwrap();
    let before = vfs.counts();
    assert_eq!(pipeline.delete(&job.id).unwrap(), Deletion::Removed);
    let after = vfs.counts();
    assert!(!pipeline.job_dir(&job.id).exists());
    assert_eq!(
        after.removes - before.removes,
        3,
        "two files and the directory"
    );
    assert!(after.dir_syncs > before.dir_syncs, "the parent was flushed");
}

#[test]
fn a_runner_pass_purges_on_its_schedule_and_reports_it() {
    let h = harness_on(Arc::new(jobsafe::MemStore::new()), None, START_MS, |b| {
        b.purge_every(Duration::from_secs(3600))
            .purge_policy(PurgePolicy::default().finished_for(Duration::from_secs(60)))
    });
    let id = enqueue(&h, "s");
    let first = h.pipeline.run_pass().unwrap();
    assert_eq!(
        first.purged.map(|p| p.total()),
        Some(0),
        "the first pass purges"
    );
    assert_eq!(first.runs[0].outcome, RunOutcome::Completed);
    h.clock.advance(Duration::from_secs(120));
    assert_eq!(h.pipeline.run_pass().unwrap().purged, None, "not yet due");
    h.clock.advance(Duration::from_secs(3600));
    let report = h.pipeline.run_pass().unwrap().purged.unwrap();
    assert_eq!(report.jobs.complete, 1);
    assert_eq!(report.artifact_dirs, 1);
    assert!(h.pipeline.jobs().get(&id).unwrap().is_none());
    // Overlapping passes: exactly one of them purges.
    h.clock.advance(Duration::from_secs(3600));
    let passes: Vec<_> = (0..4)
        .map(|_| {
            let pipeline = h.pipeline.clone();
            std::thread::spawn(move || pipeline.run_pass().unwrap().purged.is_some())
        })
        .collect();
    let purged = passes
        .into_iter()
        .map(|p| p.join().unwrap())
        .filter(|p| *p)
        .count();
    assert_eq!(purged, 1);
}

/// The purge schedule keeps fields a newer version of the crate wrote when a
/// pass moves it on, as every other record does.
#[test]
fn a_pass_that_purges_keeps_unknown_fields_of_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(jobsafe::MemStore::new());
    let pipeline = Pipeline::builder(
        Arc::clone(&store),
        Arc::new(ManualClock::new(START_MS)),
        dir.path(),
    )
    .stage("only", |_| Ok(()))
    .purge_every(Duration::from_secs(60))
    .build()
    .unwrap();
    let key = Key::new(["pipeline", "purge"]).unwrap();
    let written = br#"{"schema":1,"last_ms":0,"added_later":{"x":1}}"#;
    store.put(&key, written, jobsafe::Expect::Absent).unwrap();
    assert!(pipeline.run_pass().unwrap().purged.is_some());
    let after: serde_json::Value =
        serde_json::from_slice(&store.get(&key).unwrap().unwrap().value).unwrap();
    assert_eq!(after["last_ms"], START_MS);
    assert_eq!(after["added_later"], serde_json::json!({"x": 1}), "{after}");
}

#[test]
fn invalid_pipelines_and_artifact_names_are_refused() {
    let clock = Arc::new(ManualClock::new(0));
    let dir = tempfile::tempdir().unwrap();
    let none = Pipeline::builder(jobsafe::MemStore::new(), clock.clone(), dir.path()).build();
    assert!(matches!(none, Err(jobsafe::Error::InvalidArgument(_))));
    let twice = Pipeline::builder(jobsafe::MemStore::new(), clock.clone(), dir.path())
        .stage("a", |_| Ok(()))
        .stage("a", |_| Ok(()))
        .build();
    assert!(matches!(twice, Err(jobsafe::Error::InvalidArgument(_))));
    let pipeline = Pipeline::builder(jobsafe::MemStore::new(), clock, dir.path())
        .stage("escape", |ctx| {
            let refused = ctx.write("../outside", b"x").unwrap_err();
            assert!(matches!(refused, jobsafe::Error::InvalidArgument(_)));
            assert!(ctx.write(".hidden", b"x").is_err());
            Ok(())
        })
        .build()
        .unwrap();
    let job = pipeline.enqueue("../../etc", NewJob::new("x")).unwrap();
    assert_eq!(
        pipeline.run_job(&job.id).unwrap().outcome,
        RunOutcome::Completed
    );
    assert!(pipeline.subject_dir("../../etc").starts_with(dir.path()));
    assert!(
        !pipeline
            .subject_dir("../../etc")
            .to_string_lossy()
            .contains("..")
    );
}

#[test]
fn stage_actions_are_reported_to_the_observer() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let h = {
        let seen = Arc::clone(&seen);
        harness_on(
            Arc::new(jobsafe::MemStore::new()),
            None,
            START_MS,
            move |b| {
                let seen = Arc::clone(&seen);
                b.on_stage(move |notice| {
                    seen.lock()
                        .unwrap()
                        .push(format!("{}:{:?}", notice.stage, notice.action));
                })
            },
        )
    };
    let id = enqueue(&h, "s");
    h.script.then("draft", Act::Permanent);
    h.pipeline.run_job(&id).unwrap();
    h.pipeline.retry(&id).unwrap();
    h.pipeline.run_job(&id).unwrap();
    assert_eq!(
        seen.lock().unwrap().clone(),
        [
            "transcribe:Started",
            "transcribe:Ran",
            "draft:Started",
            "draft:Failed",
            "transcribe:Skipped",
            "draft:Started",
            "draft:Ran",
            "export:Started",
            "export:Ran",
        ]
    );

    // A stage under way when its job is cancelled is reported interrupted,
    // with the reason, in the notices as in the run's report.
    seen.lock().unwrap().clear();
    let cancelled = enqueue(&h, "s2");
    let (entered, go) = h.script.pause("draft");
    let runner = {
        let pipeline = h.pipeline.clone();
        let id = cancelled.clone();
        std::thread::spawn(move || pipeline.run_job(&id).unwrap())
    };
    entered.recv().unwrap();
    h.pipeline.cancel(&cancelled).unwrap();
    go.send(()).unwrap();
    let report = runner.join().unwrap();
    assert_eq!(
        report.stages.last(),
        Some(&("draft".to_owned(), StageAction::Interrupted))
    );
    assert_eq!(
        seen.lock().unwrap().clone(),
        [
            "transcribe:Started",
            "transcribe:Ran",
            "draft:Started",
            "draft:Interrupted",
        ]
    );
}

#[test]
fn a_runner_whose_job_was_recovered_meanwhile_stops_and_says_so() {
    let h = mem_harness();
    let id = enqueue(&h, "session-1");
    let (entered, go) = h.script.pause("draft");
    let runner = {
        let pipeline = h.pipeline.clone();
        let id = id.clone();
        std::thread::spawn(move || pipeline.run_job(&id).unwrap())
    };
    entered.recv().unwrap();
    // An operator's recovery fails the job under the live runner.
    let recovered = h
        .pipeline
        .jobs()
        .recover(Duration::ZERO, jobsafe::jobs::RecoveryAction::Fail)
        .unwrap();
    assert_eq!(recovered.len(), 1);
    go.send(()).unwrap();
    let report = runner.join().unwrap();
    assert_eq!(
        report.outcome,
        RunOutcome::NotRunning {
            stage: Some("draft".to_owned()),
            status: JobStatus::Failed
        }
    );
    assert!(h.pipeline.checkpoint(&id, "draft").unwrap().is_none());
    assert_eq!(
        h.pipeline.jobs().get(&id).unwrap().unwrap().status,
        JobStatus::Failed
    );
    assert_clean(&h, "after the run stopped");
}

#[test]
fn a_result_computed_from_the_artifacts_is_the_jobs_result_and_its_done_event() {
    for (name, store, dir) in common::backends::both() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let h = harness_on(store, dir, START_MS, move |builder| {
            let calls = Arc::clone(&counted);
            builder.result(move |ctx| {
                // The first computation hits a busy service.
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    return Err(StageError::transient("the summary service is busy")
                        .internal("summary upstream answered 503"));
                }
                let export =
                    String::from_utf8_lossy(&ctx.read(&output_name("export"))?).into_owned();
                Ok(serde_json::json!({ "export": export, "stage": ctx.stage() }))
            })
        });
        let id = enqueue(&h, "session-1");

        let first = h.pipeline.run_job(&id).unwrap();
        let RunOutcome::RetryScheduled {
            stage, retry_at_ms, ..
        } = &first.outcome
        else {
            panic!("{name}: {:?}", first.outcome);
        };
        assert_eq!(
            stage, "export",
            "{name}: a failed result fails the last stage"
        );
        let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
        assert_eq!((job.status, job.result), (JobStatus::Queued, None));

        // The retry skips every verified stage and computes the result again.
        h.clock.set(*retry_at_ms);
        let second = h.pipeline.run_job(&id).unwrap();
        assert_eq!(second.outcome, RunOutcome::Completed, "{name}");
        assert_eq!(second.skipped(), STAGES, "{name}");
        assert_eq!(h.script.runs_of(&id), STAGES, "{name}: each stage ran once");
        let expected = serde_json::json!({
            "export": "export(draft(transcribe(audio of session-1)))",
            "stage": "export",
        });
        let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
        assert_eq!(job.result.as_ref(), Some(&expected), "{name}");
        // The done event carries the result itself, not wrapped in anything.
        let events = h.pipeline.jobs().events_since(&id, 0).unwrap().events;
        let done = events.last().unwrap();
        assert_eq!(
            (done.kind.as_str(), &done.data),
            ("done", &expected),
            "{name}"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_clean(&h, "after a result computed on a retry");
    }
}

#[test]
fn a_purge_keeps_every_job_a_live_reservation_names() {
    let store: Arc<dyn Store> = Arc::new(jobsafe::MemStore::new());
    let h = harness_on(Arc::clone(&store), None, START_MS, |b| b);
    let ttl = Duration::from_secs(30 * 86_400);
    let ledger = JobLedger::builder(Arc::clone(&store), Arc::new(h.clock.clone()))
        .ttl(ttl)
        .build()
        .unwrap();
    let h = Harness {
        pipeline: builder(Arc::clone(&store), &h.clock, &h.root, &h.script)
            .ledger(ledger.clone())
            .build()
            .unwrap(),
        ..h
    };
    // Paid for under the client's idempotency key, naming the job in metadata;
    // paid for under the job's own id; and not paid for at all.
    let by_field = enqueue(&h, "s1");
    let request = ChargeRequest::new().meta(Pipeline::RESERVATION_JOB_FIELD, by_field.as_str());
    ledger
        .reserve("lic:1", "idempotency-key-7", &request)
        .unwrap();
    let by_id = enqueue(&h, "s2");
    ledger
        .reserve("lic:1", &by_id, &ChargeRequest::new())
        .unwrap();
    let unpaid = enqueue(&h, "s3");
    for id in [&by_field, &by_id, &unpaid] {
        h.pipeline.run_job(id).unwrap();
    }

    // Finished for longer than the purge policy's 7 days, reservations live.
    h.clock.advance(Duration::from_secs(8 * 86_400));
    let report = h.pipeline.purge().unwrap();
    assert_eq!(report.jobs.complete, 1, "{report:?}");
    assert_eq!(report.kept_for_reservations, 2, "{report:?}");
    assert!(h.pipeline.jobs().get(&unpaid).unwrap().is_none());
    for paid in [&by_field, &by_id] {
        let job = h.pipeline.jobs().get(paid).unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Complete);
        assert!(h.pipeline.job_dir(paid).exists(), "its artifacts stay too");
    }

    // Once the reservations expire, a retry would be charged anew: the jobs go.
    h.clock.advance(ttl);
    let report = h.pipeline.purge().unwrap();
    assert_eq!(report.jobs.complete, 2, "{report:?}");
    assert_eq!(report.kept_for_reservations, 0);
    assert!(h.pipeline.jobs().get(&by_field).unwrap().is_none());
}

#[test]
fn a_stage_notice_carries_the_checkpoint_of_a_stage_that_ran_or_was_skipped() {
    type Seen = Vec<(String, StageAction, Option<Checkpoint>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let h = {
        let seen = Arc::clone(&seen);
        harness_on(
            Arc::new(jobsafe::MemStore::new()),
            None,
            START_MS,
            move |b| {
                let seen = Arc::clone(&seen);
                b.on_stage(move |notice| {
                    seen.lock().unwrap().push((
                        notice.stage.to_owned(),
                        notice.action,
                        notice.checkpoint.cloned(),
                    ))
                })
            },
        )
    };
    let id = enqueue(&h, "s");
    h.script.then("draft", Act::Permanent);
    h.pipeline.run_job(&id).unwrap();
    h.pipeline.retry(&id).unwrap();
    h.pipeline.run_job(&id).unwrap();

    let seen = seen.lock().unwrap().clone();
    for (stage, action, checkpoint) in &seen {
        match action {
            StageAction::Ran | StageAction::Skipped => {
                let checkpoint = checkpoint.as_ref().unwrap();
                let stored = h.pipeline.checkpoint(&id, stage).unwrap().unwrap();
                assert_eq!(checkpoint, &stored, "{stage} {action:?}");
                assert!(!checkpoint.artifacts.is_empty(), "{stage}");
                let own = output_name(stage);
                let artifact = checkpoint.artifacts.iter().find(|a| a.path.ends_with(&own));
                assert!(
                    artifact.is_some_and(|a| a.sha256.len() == 64 && a.len > 0),
                    "{stage}: {checkpoint:?}"
                );
            }
            _ => assert_eq!(checkpoint, &None, "{stage} {action:?}"),
        }
    }
    let skipped: Vec<&str> = seen
        .iter()
        .filter(|(_, action, _)| *action == StageAction::Skipped)
        .map(|(stage, _, _)| stage.as_str())
        .collect();
    assert_eq!(skipped, ["transcribe"]);
}

#[test]
fn a_purge_sweeps_the_temp_files_dead_writers_left_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(DirStore::open(dir.path().join("store")).unwrap());
    // Temp files are aged by their file times: this clock starts at the real time.
    let h = harness_on(Arc::clone(&store), None, real_now_ms(), |b| b);
    let id = enqueue(&h, "s");
    h.pipeline.run_job(&id).unwrap();
    // A writer killed mid-put left its temp file beside the job's record.
    let crashed = dir
        .path()
        .join("store")
        .join(format!(".crashed.0{}", AtomicWriter::TEMP_SUFFIX));
    std::fs::write(&crashed, b"partial").unwrap();

    assert_eq!(h.pipeline.purge().unwrap().temp_files, 0, "too young");
    h.clock
        .advance(PurgePolicy::default().temp_files_older_than * 2);
    assert_eq!(h.pipeline.purge().unwrap().temp_files, 1);
    assert!(!crashed.exists());
}

#[test]
fn a_lease_not_longer_than_the_skew_margin_fails_the_build_naming_both() {
    let root = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let build_renewing = |lease: Duration, margin: Duration, every: Option<Duration>| {
        let builder = Pipeline::builder(
            jobsafe::MemStore::new(),
            Arc::new(clock.clone()),
            root.path(),
        )
        .stage("only", |_| Ok(()))
        .lease(lease)
        .skew_margin(margin);
        match every {
            Some(every) => builder.renew_every(Some(every)).build(),
            None => builder.build(),
        }
    };
    let build = |lease, margin| build_renewing(lease, margin, None);
    let margin = Duration::from_secs(10);
    for lease in [Duration::from_secs(5), margin] {
        let err = build(lease, margin).unwrap_err();
        assert!(matches!(err, jobsafe::Error::InvalidArgument(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{lease:?}")) && text.contains("10s"),
            "{text}"
        );
    }
    // The renewal period must fit in the part of the lease a runner counts on.
    let lease = Duration::from_secs(12);
    let err = build_renewing(lease, margin, Some(Duration::from_secs(3))).unwrap_err();
    assert!(err.to_string().contains("renewal period"), "{err}");
    // Half of what is held (2 s) or more is refused too: the keep-alive must
    // renew before it reports the lease expired.
    let err = build_renewing(lease, margin, Some(Duration::from_secs(1))).unwrap_err();
    assert!(err.to_string().contains("half of the lease"), "{err}");
    assert!(build_renewing(lease, margin, Some(Duration::from_millis(900))).is_ok());
    assert!(
        build(lease, margin).is_ok(),
        "the default renews within what is held"
    );
}

// ------------------------------------------- artifacts read back, verified

/// Text that only an outside hand puts on the disk: no artifact, result or
/// event may ever contain it.
const OUTSIDE: &str = "OUTSIDE-TEXT";

/// How an artifact is replaced between stages.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tamper {
    /// By a symlink to a file outside the artifact root holding [`OUTSIDE`].
    LinkOutside,
    /// By a file of the same length and other content.
    OtherContent,
    /// Cut to half its length, in place.
    Truncated,
    /// By a FIFO, which blocks a reader that opens it without care.
    Fifo,
}

impl Tamper {
    const ALL: [Tamper; 4] = [
        Tamper::LinkOutside,
        Tamper::OtherContent,
        Tamper::Truncated,
        Tamper::Fifo,
    ];

    /// Replaces the file at `path`; `outside` is a file outside the artifact
    /// root.
    fn apply(self, path: &Path, outside: &Path) {
        let len = std::fs::metadata(path).unwrap().len();
        match self {
            Tamper::LinkOutside => {
                std::fs::remove_file(path).unwrap();
                std::os::unix::fs::symlink(outside, path).unwrap();
            }
            Tamper::OtherContent => {
                let other = format!("{OUTSIDE} ").repeat(len as usize);
                std::fs::write(path, &other.as_bytes()[..len as usize]).unwrap();
            }
            Tamper::Truncated => {
                let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                file.set_len(len / 2).unwrap();
            }
            Tamper::Fifo => {
                std::fs::remove_file(path).unwrap();
                common::make_fifo(path).unwrap();
            }
        }
    }

    /// What the error of a read of the replaced file says about it.
    fn described(self) -> &'static str {
        match self {
            Tamper::LinkOutside | Tamper::Fifo => "not a regular file",
            Tamper::OtherContent => "SHA-256",
            Tamper::Truncated => "bytes long",
        }
    }
}

/// A harness whose job result reads the last stage's output and the shared
/// transcript, and whose observer replaces the file put in `victim` as `tamper`
/// says, each time (or only the first time) the stage `after` has run.
struct Tampering {
    h: Harness,
    victim: Arc<Mutex<Option<PathBuf>>>,
    _outside: TempDir,
}

fn tampering(tamper: Tamper, after: &'static str, every_time: bool) -> Tampering {
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = outside_dir.path().join("elsewhere.txt");
    std::fs::write(&outside, OUTSIDE).unwrap();
    let victim: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let h = harness_on(Arc::new(jobsafe::MemStore::new()), None, START_MS, |b| {
        let victim = Arc::clone(&victim);
        let outside = outside.clone();
        b.on_stage(move |notice| {
            if notice.stage == after && notice.action == StageAction::Ran {
                let mut victim = victim.lock().unwrap();
                let path = if every_time {
                    victim.clone()
                } else {
                    victim.take()
                };
                if let Some(path) = path {
                    tamper.apply(&path, &outside);
                }
            }
        })
        .result(|ctx| {
            let export = String::from_utf8(ctx.read("export.txt")?).unwrap();
            let transcript = String::from_utf8(ctx.read_shared("transcript.txt")?).unwrap();
            Ok(serde_json::json!({ "export": export, "transcript": transcript }))
        })
    });
    Tampering {
        h,
        victim,
        _outside: outside_dir,
    }
}

/// Runs job `id`, failing the test if the run blocks (on a FIFO, say).
fn run_unblocked(h: &Harness, id: &str, what: &str) -> jobsafe::pipeline::RunReport {
    let pipeline = h.pipeline.clone();
    let id = id.to_owned();
    common::unblocked(what, move || pipeline.run_job(&id).unwrap())
}

/// [`OUTSIDE`] is in no file under the artifact root but `planted` (the file
/// the outside hand wrote, if it is still there), in no event of job `id` and
/// not in its result.
fn assert_outside_text_never_got_in(h: &Harness, id: &str, planted: Option<&Path>, when: &str) {
    fn files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                files(&entry.path(), found);
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    let mut found = Vec::new();
    files(&h.root, &mut found);
    for file in found.into_iter().filter(|f| Some(f.as_path()) != planted) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(
            !text.contains(OUTSIDE),
            "{when}: {}: {text}",
            file.display()
        );
    }
    let job = h.pipeline.jobs().get(id).unwrap().unwrap();
    let result = serde_json::to_string(&job.result).unwrap();
    assert!(!result.contains(OUTSIDE), "{when}: result {result}");
    for event in h.pipeline.jobs().events_since(id, 0).unwrap().events {
        let data = event.data.to_string();
        assert!(
            !data.contains(OUTSIDE),
            "{when}: event {}: {data}",
            event.kind
        );
    }
}

#[test]
fn an_artifact_replaced_between_stages_is_never_read_and_the_stage_that_made_it_runs_again() {
    // (file replaced, where, after which stage, the stage whose read fails,
    // what the next run runs again): an input of the next stage; a shared file
    // the job's result reads, whose stage makes it again byte for byte so the
    // stages after it verify; the last output, which the result reads.
    let cases: [(&str, bool, &str, &str, &[&str]); 3] = [
        (
            "transcribe.txt",
            false,
            "transcribe",
            "draft",
            &["transcribe", "draft", "export"],
        ),
        (
            "transcript.txt",
            true,
            "transcribe",
            "export",
            &["transcribe"],
        ),
        ("export.txt", false, "export", "export", &["export"]),
    ];
    for tamper in Tamper::ALL {
        for (file, shared, after, reader, rerun) in cases {
            let case = format!("{tamper:?} {file}");
            let t = tampering(tamper, after, false);
            let h = &t.h;
            let id = enqueue(h, "session-1");
            let victim = if shared {
                h.pipeline.subject_dir("session-1").join(file)
            } else {
                h.pipeline.job_dir(&id).join(file)
            };
            *t.victim.lock().unwrap() = Some(victim.clone());

            let first = run_unblocked(h, &id, &format!("{case}: the run that reads it"));
            let RunOutcome::RetryScheduled { stage, error, .. } = &first.outcome else {
                panic!("{case}: {:?}", first.outcome);
            };
            assert_eq!(stage, reader, "{case}");
            assert_eq!(
                error.error_code(),
                Some(StageError::ARTIFACT_MISMATCH),
                "{case}"
            );
            let internal = error.internal_message();
            assert!(
                internal.contains(file) && internal.contains(tamper.described()),
                "{case}: {internal}"
            );
            assert!(!error.client_message().contains(file), "{case}");
            assert!(
                h.pipeline.checkpoint(&id, reader).unwrap().is_none() || reader == "export",
                "{case}: the reading stage recorded nothing"
            );
            assert_outside_text_never_got_in(h, &id, Some(&victim), &format!("{case}, first run"));

            h.clock.advance(Duration::from_secs(3600));
            let second = run_unblocked(h, &id, &format!("{case}: the run after it"));
            assert_eq!(second.outcome, RunOutcome::Completed, "{case}");
            assert_eq!(second.ran(), rerun, "{case}");
            assert_eq!(
                std::fs::read_to_string(job_file(h, &id, "export")).unwrap(),
                "export(draft(transcribe(audio of session-1)))",
                "{case}"
            );
            let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
            assert_eq!(
                job.result,
                Some(serde_json::json!({
                    "export": "export(draft(transcribe(audio of session-1)))",
                    "transcript": "transcribe(audio of session-1)",
                })),
                "{case}"
            );
            assert_outside_text_never_got_in(h, &id, None, &format!("{case}, after completion"));
            assert_clean(h, &case);
        }
    }
}

#[test]
fn a_stage_that_carries_on_after_a_refused_read_fails_transiently_and_records_nothing() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("elsewhere.txt");
    std::fs::write(&outside, OUTSIDE).unwrap();
    let clock = ManualClock::new(START_MS);
    let replaced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let artifacts = root.path().join("artifacts");
    let pipeline = Pipeline::builder(
        jobsafe::MemStore::new(),
        Arc::new(clock.clone()),
        &artifacts,
    )
    .stage("make", |ctx| {
        ctx.write("input.txt", b"made")?;
        Ok(())
    })
    .stage("use", |ctx| {
        // Swallows the error and goes on with something else.
        let input = ctx
            .read("input.txt")
            .unwrap_or_else(|_| b"fallback".to_vec());
        let mut output = b"used ".to_vec();
        output.extend(input);
        ctx.write("output.txt", &output)?;
        Ok(())
    })
    .on_stage({
        // The observer has no pipeline at hand: it finds the job's directory
        // by the documented layout (a plain id is kept as it is).
        let jobs = artifacts.join("jobs");
        let outside = outside.clone();
        move |notice| {
            let made = notice.stage == "make" && notice.action == StageAction::Ran;
            if made && !replaced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let path = jobs.join(notice.job_id).join("input.txt");
                Tamper::LinkOutside.apply(&path, &outside);
            }
        }
    })
    .build()
    .unwrap();
    let job = pipeline.enqueue("s", NewJob::new("k").id("job-1")).unwrap();
    assert_eq!(pipeline.job_dir(&job.id), artifacts.join("jobs/job-1"));

    let first = pipeline.run_job(&job.id).unwrap();

    let RunOutcome::RetryScheduled { stage, error, .. } = &first.outcome else {
        panic!("{:?}", first.outcome);
    };
    assert_eq!(stage, "use");
    assert_eq!(error.error_code(), Some(StageError::ARTIFACT_MISMATCH));
    assert!(
        error.internal_message().contains("input.txt"),
        "{}",
        error.internal_message()
    );
    // What it wrote without its input is gone, and nothing was recorded.
    assert!(!pipeline.job_dir(&job.id).join("output.txt").exists());
    assert!(pipeline.checkpoint(&job.id, "use").unwrap().is_none());
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), OUTSIDE);

    clock.advance(Duration::from_secs(3600));
    let second = pipeline.run_job(&job.id).unwrap();
    assert_eq!(second.outcome, RunOutcome::Completed);
    assert_eq!(second.ran(), ["make", "use"]);
    assert_eq!(
        std::fs::read_to_string(pipeline.job_dir(&job.id).join("output.txt")).unwrap(),
        "used made"
    );
}

#[test]
fn a_file_a_stage_wrote_is_checked_when_the_same_stage_reads_it_back() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("elsewhere.txt");
    std::fs::write(&outside, OUTSIDE).unwrap();
    let clock = ManualClock::new(START_MS);
    let replaced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pipeline = Pipeline::builder(
        jobsafe::MemStore::new(),
        Arc::new(clock.clone()),
        root.path().join("artifacts"),
    )
    .stage("work", move |ctx| {
        let scratch = ctx.write("scratch.txt", b"mine")?;
        // Another hand replaces it while the stage works, the first time.
        if !replaced.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::fs::remove_file(&scratch).unwrap();
            std::os::unix::fs::symlink(&outside, &scratch).unwrap();
        }
        let back = ctx.read("scratch.txt")?;
        ctx.write("out.txt", &back)?;
        Ok(())
    })
    .build()
    .unwrap();
    let job = pipeline.enqueue("s", NewJob::new("k")).unwrap();

    let first = pipeline.run_job(&job.id).unwrap();

    let RunOutcome::RetryScheduled { stage, error, .. } = &first.outcome else {
        panic!("{:?}", first.outcome);
    };
    assert_eq!(stage, "work");
    assert_eq!(error.error_code(), Some(StageError::ARTIFACT_MISMATCH));
    // Its partial files are removed: the link, not what it names.
    let dir = pipeline.job_dir(&job.id);
    assert!(std::fs::symlink_metadata(dir.join("scratch.txt")).is_err());
    assert!(!dir.join("out.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.path().join("elsewhere.txt")).unwrap(),
        OUTSIDE
    );

    clock.advance(Duration::from_secs(3600));
    let second = pipeline.run_job(&job.id).unwrap();
    assert_eq!(second.outcome, RunOutcome::Completed);
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), b"mine");
}

#[test]
fn a_disk_that_keeps_replacing_an_artifact_fails_the_job_after_the_retry_policy() {
    let t = tampering(Tamper::OtherContent, "transcribe", true);
    let h = &t.h;
    let id = enqueue(h, "session-1");
    *t.victim.lock().unwrap() = Some(job_file(h, &id, "transcribe"));

    // Each run ends (none goes back and loops); the policy allows 3 failures.
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let report = h.pipeline.run_job(&id).unwrap();
        assert_eq!(report.ran(), ["transcribe"]);
        outcomes.push(report.outcome);
        h.clock.advance(Duration::from_secs(3600));
    }

    assert!(
        outcomes[..2]
            .iter()
            .all(|o| matches!(o, RunOutcome::RetryScheduled { stage, .. } if stage == "draft")),
        "{outcomes:?}"
    );
    let RunOutcome::Failed { stage, error } = &outcomes[2] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(stage, "draft");
    assert_eq!(error.error_code(), Some(StageError::ARTIFACT_MISMATCH));
    assert!(
        error.internal_message().contains("transcribe.txt")
            && error.internal_message().contains("gave up after 3"),
        "{}",
        error.internal_message()
    );
    assert_eq!(h.script.runs_of(&id), ["transcribe", "draft"].repeat(3));
    let planted = job_file(h, &id, "transcribe");
    assert_outside_text_never_got_in(h, &id, Some(&planted), "after the job failed");
    assert_clean(h, "after the job failed");
}

#[test]
fn a_shared_file_another_job_of_the_subject_wrote_is_read_as_it_is() {
    let root = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(
        jobsafe::MemStore::new(),
        Arc::new(ManualClock::new(START_MS)),
        root.path(),
    )
    .stage("work", |ctx| {
        if ctx.job().metadata.contains_key("first") {
            ctx.write_shared("notes.txt", b"from the first job")?;
        } else {
            // No stage of this job wrote it: nothing to check it against.
            let notes = ctx.read_shared("notes.txt")?;
            ctx.write("copy.txt", &notes)?;
        }
        Ok(())
    })
    .build()
    .unwrap();
    let first = pipeline
        .enqueue("session-1", NewJob::new("k").meta("first", true))
        .unwrap();
    let second = pipeline.enqueue("session-1", NewJob::new("k")).unwrap();

    for id in [&first.id, &second.id] {
        let report = pipeline.run_job(id).unwrap();
        assert_eq!(report.outcome, RunOutcome::Completed);
    }
    assert_eq!(
        std::fs::read(pipeline.job_dir(&second.id).join("copy.txt")).unwrap(),
        b"from the first job"
    );
}

/// A file far larger than memory (sparse: it costs no disk) fails the read
/// with an error naming it; allocating its length would abort the process.
#[test]
fn a_shared_file_larger_than_memory_fails_the_read_not_the_process() {
    let root = tempfile::tempdir().unwrap();
    let (told, read) = mpsc::channel();
    let pipeline = Pipeline::builder(
        jobsafe::MemStore::new(),
        Arc::new(ManualClock::new(START_MS)),
        root.path(),
    )
    .stage("work", move |ctx| {
        let _ = told.send(ctx.read_shared("input.bin").map(|bytes| bytes.len()));
        Ok(())
    })
    .build()
    .unwrap();
    let dir = pipeline.subject_dir("session-1");
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::File::create(dir.join("input.bin")).unwrap();
    file.set_len(1 << 42).unwrap();
    drop(file);
    let job = pipeline.enqueue("session-1", NewJob::new("k")).unwrap();
    pipeline.run_job(&job.id).unwrap();
    let err = read.recv().unwrap().unwrap_err();
    assert!(err.to_string().contains("input.bin"), "{err}");
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        cause.is_some_and(|cause| cause.contains("more than this process can hold")),
        "{err:?}"
    );
}

#[test]
fn a_result_over_its_limit_fails_the_job_for_good_naming_the_limit() {
    let over = Job::MAX_RESULT_LEN + 1;
    let h = harness_on(
        Arc::new(jobsafe::MemStore::new()),
        None,
        START_MS,
        |builder| builder.result(move |_| Ok(json_of_len(over))),
    );
    let id = enqueue(&h, "session-1");
    let report = h.pipeline.run_job(&id).unwrap();
    let RunOutcome::Failed { stage, error } = &report.outcome else {
        panic!("{:?}", report.outcome);
    };
    assert_eq!(
        stage, "export",
        "a result that cannot be stored fails the last stage"
    );
    let internal = error.internal_message();
    for part in [
        "job result",
        &over.to_string(),
        &Job::MAX_RESULT_LEN.to_string(),
    ] {
        assert!(internal.contains(part), "{internal:?} does not say {part}");
    }
    let job = h.pipeline.jobs().get(&id).unwrap().unwrap();
    assert_eq!((job.status, job.result), (JobStatus::Failed, None));
    assert_clean(&h, "after a result over its limit");
}

#[test]
fn a_runner_actor_over_the_lock_actor_limit_is_refused_when_building() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let store: Arc<dyn Store> = Arc::new(jobsafe::MemStore::new());
    let over = LockRequest::MAX_ACTOR_LEN + 1;
    let built = builder(store, &clock, dir.path(), &script)
        .actor(text_of_len(over))
        .build();
    common::limits::assert_too_large(built, "pipeline actor", over, LockRequest::MAX_ACTOR_LEN);
    let at_limit = builder(
        Arc::new(jobsafe::MemStore::new()),
        &clock,
        dir.path(),
        &script,
    )
    .actor(text_of_len(LockRequest::MAX_ACTOR_LEN))
    .build();
    assert!(at_limit.is_ok());
}

/// Stage names longer in all than a job records as done are refused when
/// the pipeline is built: every run would fail at the same stage.
#[test]
fn stage_names_longer_in_all_than_a_job_records_are_refused() {
    let build = |stages: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = jobsafe::Pipeline::builder(
            jobsafe::MemStore::new(),
            Arc::new(ManualClock::new(0)),
            dir.path(),
        );
        for i in 0..stages {
            let name = format!(
                "{i:04}{}",
                "s".repeat(jobsafe::jobs::Job::MAX_STAGE_LEN - 4)
            );
            builder = builder.stage(&name, |_| Ok(()));
        }
        builder.build().map(drop)
    };
    let fit = jobsafe::jobs::Job::MAX_STAGES_DONE_LEN / jobsafe::jobs::Job::MAX_STAGE_LEN;
    build(fit).unwrap();
    let e = build(fit + 1).unwrap_err();
    assert!(matches!(e, jobsafe::Error::InvalidArgument(_)), "{e}");
}
