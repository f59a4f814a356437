//! The `jobsafe` operator tool, run as a built binary against DirStore and
//! LogStore stores that each test prepares with the library: what it prints (in
//! tables and JSON), its exit codes, that its changes reach the store (read back
//! with the library), that destructive commands need confirmation, and that
//! `jobs watch` ends when the job ends.
//!
//! Times in the prepared stores are set from the real time with margins of
//! hours and days, so no result depends on how fast a command runs.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use common::key;
use jobsafe::jobs::{FailureKind, JobError, JobStatus, NewJob};
use jobsafe::ledger::{ChargeRequest, ReservationState};
use jobsafe::lock::{Acquire, LockRequest};
use jobsafe::pipeline::{PipelineRecords, StageError};
use jobsafe::{
    AtomicWriter, Clock, DirStore, Expect, JobLedger, JobLock, JobState, Key, LogStore,
    ManualClock, Pipeline, Prefix, Store, SystemClock,
};
use serde_json::{Value, json};
use tempfile::TempDir;

use common::child::WAIT_BOUND;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// The exit codes `jobsafe --help` lists.
const OK: i32 = 0;
const ERROR: i32 = 1;
const USAGE: i32 = 2;
const NOT_FOUND: i32 = 3;
const NOT_CONFIRMED: i32 = 4;
const JOB_FAILED: i32 = 5;
const JOB_CANCELLED: i32 = 6;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Dir,
    Log,
}

const BACKENDS: [Backend; 2] = [Backend::Dir, Backend::Log];

/// A store in a temp directory, prepared by [`prepare`].
struct Fixture {
    _dir: TempDir,
    root: PathBuf,
    backend: Backend,
    /// The real time the records were written around.
    now: u64,
}

impl Fixture {
    /// An empty store of `backend`.
    fn empty(backend: Backend) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let fixture = Fixture {
            _dir: dir,
            root,
            backend,
            now: SystemClock.now_ms(),
        };
        match backend {
            Backend::Dir => drop(DirStore::open(&fixture.root).unwrap()),
            Backend::Log => drop(LogStore::open(&fixture.root).unwrap()),
        }
        fixture
    }

    fn url(&self) -> String {
        match self.backend {
            Backend::Dir => format!("dir:{}", self.root.display()),
            Backend::Log => format!("log:{}", self.root.display()),
        }
    }

    /// The store, opened afresh: it sees everything the tool wrote.
    fn store(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Dir => Arc::new(DirStore::open(&self.root).unwrap()),
            Backend::Log => Arc::new(LogStore::open(&self.root).unwrap()),
        }
    }

    fn clock(&self) -> Arc<ManualClock> {
        Arc::new(ManualClock::new(self.now))
    }

    fn jobs(&self) -> JobState<Arc<dyn Store>> {
        JobState::new(self.store(), self.clock())
    }

    fn locks(&self) -> JobLock<Arc<dyn Store>> {
        JobLock::new(self.store(), self.clock())
    }

    fn ledger(&self) -> JobLedger<Arc<dyn Store>> {
        JobLedger::new(self.store(), self.clock())
    }

    /// Runs the tool on this store, with no terminal on stdin.
    fn run(&self, args: &[&str]) -> Run {
        let url = self.url();
        let mut all = vec!["--store", url.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }
}

/// A store holding what an operator meets: a held lock and an expired one, jobs
/// in every state with events, and reservations charged and pending.
fn prepare(backend: Backend) -> Fixture {
    let fixture = Fixture::empty(backend);
    let now = fixture.now;
    let clock = Arc::new(ManualClock::new(now - 10 * DAY));
    let store = fixture.store();
    let jobs = JobState::new(Arc::clone(&store), clock.clone());

    let old = jobs
        .create(NewJob::new("transcribe").id("job-old-complete"))
        .unwrap();
    let worker = jobs.start(&old.id, None).unwrap();
    jobs.complete(&worker, json!({"minutes": 42})).unwrap();

    clock.set(now - HOUR);
    let failed = jobs
        .create(NewJob::new("export").id("job-failed").owner("inst-7"))
        .unwrap();
    let worker = jobs.start(&failed.id, None).unwrap();
    let error = JobError::new("the export failed")
        .internal("disk full on export volume")
        .code("disk_full");
    jobs.fail(&worker, error, FailureKind::Permanent).unwrap();

    let cancelled = jobs
        .create(NewJob::new("export").id("job-cancelled"))
        .unwrap();
    jobs.cancel(&cancelled.id).unwrap();
    jobs.create(NewJob::new("export").id("job-queued")).unwrap();
    let running = jobs.create(NewJob::new("draft").id("job-running")).unwrap();
    let worker = jobs.start(&running.id, None).unwrap();
    jobs.set_stage(&worker, "draft").unwrap();
    jobs.progress(&worker, "42%").unwrap();
    let recent = jobs
        .create(NewJob::new("transcribe").id("job-recent-complete"))
        .unwrap();
    let worker = jobs.start(&recent.id, None).unwrap();
    jobs.complete(&worker, json!({"minutes": 7})).unwrap();

    let locks = JobLock::new(Arc::clone(&store), clock.clone());
    clock.set(now - 2 * HOUR);
    let Acquire::Acquired(expired) = locks
        .acquire(
            &key("index/lic:abc/vault-2"),
            Duration::from_secs(60),
            &LockRequest::new().actor("bob"),
        )
        .unwrap()
    else {
        panic!("the lock is free");
    };
    // The holder "crashes": its guard must not release the lock.
    let _ = expired.into_handle();
    clock.set(now);
    let request = LockRequest::new()
        .actor("alice")
        .meta("reason", "vault re-index");
    let Acquire::Acquired(held) = locks
        .acquire(
            &key("index/lic:abc/vault-1"),
            Duration::from_secs(3600),
            &request,
        )
        .unwrap()
    else {
        panic!("the lock is free");
    };
    let _ = held.into_handle();

    let ledger = JobLedger::new(Arc::clone(&store), clock.clone());
    let charge = ChargeRequest::new()
        .meta("tier", "pro")
        .meta("backend", "deepgram");
    ledger.reserve("lic:abc", "job-1", &charge).unwrap();
    ledger
        .reserve_pending("lic:abc", "job-2", &ChargeRequest::new())
        .unwrap();
    ledger.reserve("lic:xyz", "job-9", &charge).unwrap();
    fixture
}

/// What one run of the tool printed, and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", self.stdout))
    }

    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
            })
            .collect()
    }

    #[track_caller]
    fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobsafe"));
    command
        .args(args)
        .env_remove("JOBSAFE_STORE")
        .stdin(Stdio::null());
    command
}

fn run(args: &[&str]) -> Run {
    let output = command(args).output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The rows of a table, split into cells (two or more spaces apart).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------

#[test]
fn locks_list_shows_each_holder_token_and_expiry() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let table = fx.run(&["locks", "list"]).expect(OK);
        let rows = rows(&table.stdout);
        assert_eq!(
            rows[0],
            ["LOCK", "STATE", "HOLDER", "ACTOR", "TOKEN", "EXPIRES"]
        );
        let held = fx
            .locks()
            .peek(&key("index/lic:abc/vault-1"))
            .unwrap()
            .unwrap();
        let row = rows
            .iter()
            .find(|r| r[0] == "index/lic:abc/vault-1")
            .unwrap();
        assert_eq!(
            row[1..5],
            ["held", &held.job_id, "alice", &held.token.get().to_string()]
        );
        // Expiry in UTC and relative to now: an hour ahead, give or take the run.
        assert!(
            row[5].ends_with("Z (in 1h)") || row[5].contains("Z (in 59m"),
            "{row:?}"
        );
        let expired = rows
            .iter()
            .find(|r| r[0] == "index/lic:abc/vault-2")
            .unwrap();
        assert_eq!(expired[1], "expired", "{backend:?}");
        assert_eq!(rows.len(), 3, "{}", table.stdout);

        let lines = fx.run(&["--json", "locks", "list"]).expect(OK).json_lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["key"], "index/lic:abc/vault-1");
        assert_eq!(lines[0]["job_id"], held.job_id.as_str());
        assert_eq!(lines[0]["token"], held.token.get());
        assert_eq!(lines[0]["expires_ms"], held.expires_ms);
        assert_eq!(lines[0]["metadata"]["reason"], "vault re-index");
        assert_eq!(lines[1]["state"], "expired");

        let only = fx
            .run(&[
                "--json",
                "locks",
                "list",
                "--prefix",
                "index/lic:abc/vault-2",
            ])
            .expect(OK)
            .json_lines();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0]["actor"], "bob");
    }
}

#[test]
fn locks_show_prints_one_lock_and_a_missing_one_is_not_found() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let shown = fx
            .run(&["locks", "show", "index/lic:abc/vault-1"])
            .expect(OK);
        assert!(shown.stdout.contains("actor:    alice"), "{}", shown.stdout);
        assert!(shown.stdout.contains("vault re-index"), "{}", shown.stdout);
        let doc = fx
            .run(&["--json", "locks", "show", "index/lic:abc/vault-1"])
            .expect(OK)
            .json();
        assert_eq!(doc["state"], "held");

        let missing = fx.run(&["locks", "show", "index/nope"]).expect(NOT_FOUND);
        assert!(
            missing.stderr.contains("no lock index/nope"),
            "{}",
            missing.stderr
        );
        assert!(missing.stderr.contains(&fx.url()), "{}", missing.stderr);
    }
}

#[test]
fn locks_release_needs_confirmation_then_removes_the_holder_it_reports() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let name = "index/lic:abc/vault-1";
        let holder = fx.locks().peek(&key(name)).unwrap().unwrap();

        let refused = fx.run(&["locks", "release", name]).expect(NOT_CONFIRMED);
        assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
        assert_eq!(fx.locks().peek(&key(name)).unwrap(), Some(holder.clone()));

        let released = fx.run(&["locks", "release", name, "--yes"]).expect(OK);
        assert!(
            released
                .stdout
                .contains(&format!("removed holder job {} (alice)", holder.job_id)),
            "{}",
            released.stdout
        );
        assert_eq!(fx.locks().peek(&key(name)).unwrap(), None);
        // The next holder gets a greater fencing token than the one removed.
        let Acquire::Acquired(next) = fx
            .locks()
            .acquire(&key(name), Duration::from_secs(60), &LockRequest::new())
            .unwrap()
        else {
            panic!("the lock was released");
        };
        assert!(next.token() > holder.token);

        fx.run(&["locks", "release", "index/nope", "--yes"])
            .expect(NOT_FOUND);
    }
}

/// Runs the tool with a terminal on its stdin, through util-linux `script`
/// (Debian's essential `bsdutils`), typing `answer` into it.
fn run_on_terminal(fx: &Fixture, args: &[&str], answer: &str) -> Run {
    let mut child = spawn_on_terminal(fx, args);
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), answer.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        // On a terminal, stdout and stderr are one stream.
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Starts the tool on a terminal, with its input and output piped.
fn spawn_on_terminal(fx: &Fixture, args: &[&str]) -> std::process::Child {
    let mut line = vec![
        env!("CARGO_BIN_EXE_jobsafe").to_owned(),
        "--store".to_owned(),
        fx.url(),
    ];
    line.extend(args.iter().map(|a| (*a).to_owned()));
    // Each word quoted for the shell `script` runs the command with.
    let quoted: Vec<String> = line
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    Command::new("script")
        .args([
            "--quiet",
            "--return",
            "--command",
            &quoted.join(" "),
            "/dev/null",
        ])
        .env_remove("JOBSAFE_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run util-linux script (package bsdutils): {e}"))
}

#[test]
fn on_a_terminal_the_tool_asks_and_only_yes_goes_ahead() {
    let fx = prepare(Backend::Dir);
    let name = "index/lic:abc/vault-1";
    let holder = fx.locks().peek(&key(name)).unwrap().unwrap();
    for answer in ["n\n", "\n", "maybe\n"] {
        let declined =
            run_on_terminal(&fx, &["locks", "release", name], answer).expect(NOT_CONFIRMED);
        assert!(
            declined.stdout.contains(&format!(
                "Force-release lock {name}, held by job {}",
                holder.job_id
            )),
            "{}",
            declined.stdout
        );
        assert!(declined.stdout.contains("[y/N]"), "{}", declined.stdout);
        assert_eq!(fx.locks().peek(&key(name)).unwrap(), Some(holder.clone()));
    }
    let accepted = run_on_terminal(&fx, &["locks", "release", name], "y\n").expect(OK);
    assert!(
        accepted.stdout.contains("released lock"),
        "{}",
        accepted.stdout
    );
    assert_eq!(fx.locks().peek(&key(name)).unwrap(), None);
}

/// Runs the tool on a terminal, waits for its question, runs `meanwhile`, then
/// answers yes. Returns the exit code and all the tool printed.
fn answer_yes_after(fx: &Fixture, args: &[&str], meanwhile: impl FnOnce()) -> (i32, String) {
    let mut child = spawn_on_terminal(fx, args);
    let mut stdout = child.stdout.take().unwrap();
    let (send, chunks) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 || send.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    // The question has no newline: wait for its end.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("[y/N]") {
        let chunk = chunks
            .recv_timeout(WAIT_BOUND)
            .unwrap_or_else(|e| panic!("no question ({e}): {}", String::from_utf8_lossy(&seen)));
        seen.extend(chunk);
    }
    meanwhile();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"y\n").unwrap();
    let status = child.wait().unwrap();
    // The reader ends when the terminal closes.
    while let Ok(chunk) = chunks.recv_timeout(WAIT_BOUND) {
        seen.extend(chunk);
    }
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&seen).into_owned(),
    )
}

#[test]
fn a_lock_taken_over_while_the_operator_decides_is_left_alone() {
    let fx = prepare(Backend::Dir);
    let name = "index/lic:abc/vault-1";
    let shown = fx.locks().peek(&key(name)).unwrap().unwrap();
    let mut carol = None;
    let (code, text) = answer_yes_after(&fx, &["locks", "release", name], || {
        // The holder's lock is released and carol takes it.
        fx.locks().force_release(&key(name)).unwrap();
        let request = LockRequest::new().actor("carol");
        let Acquire::Acquired(guard) = fx
            .locks()
            .acquire(&key(name), Duration::from_secs(3600), &request)
            .unwrap()
        else {
            panic!("the lock is free");
        };
        carol = Some(guard.into_handle());
    });
    let carol = carol.unwrap();

    assert_eq!(code, ERROR, "{text}");
    assert!(
        text.contains(&format!(
            "now held by job {} (carol), not by job {}",
            carol.job_id, shown.job_id
        )),
        "{text}"
    );
    let now = fx.locks().peek(&key(name)).unwrap().unwrap();
    assert_eq!(now.job_id, carol.job_id, "carol's lock was left alone");
}

#[test]
fn a_reservation_made_anew_while_the_operator_decides_is_not_refunded() {
    let fx = prepare(Backend::Log);
    let shown = fx.ledger().lookup("lic:abc", "job-1").unwrap().unwrap();
    let mut made = None;
    let (code, text) = answer_yes_after(&fx, &["ledger", "refund", "lic:abc/job-1"], || {
        // The service refunds it itself, and a retry of the job reserves anew.
        let ledger = fx.ledger();
        ledger.refund("lic:abc", "job-1").unwrap().unwrap();
        let again = ledger
            .reserve("lic:abc", "job-1", &ChargeRequest::new())
            .unwrap();
        let jobsafe::ledger::Reserve::New(again) = again else {
            panic!("the job id was refunded");
        };
        made = Some(again);
    });
    let made = made.unwrap();

    assert_eq!(code, ERROR, "{text}");
    assert!(text.contains(&format!("(id {})", shown.id)), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    let kept = fx.ledger().lookup("lic:abc", "job-1").unwrap().unwrap();
    assert_eq!(kept.id, made.id, "the new reservation stays");
}

#[test]
fn locks_of_another_namespace_are_found_with_namespace() {
    let fx = Fixture::empty(Backend::Dir);
    let pipeline_locks = JobLock::builder(fx.store(), fx.clock())
        .namespace(Prefix::new(["pipeline", "locks"]).unwrap())
        .build()
        .unwrap();
    let Acquire::Acquired(guard) = pipeline_locks
        .acquire(
            &key("session-1"),
            Duration::from_secs(3600),
            &LockRequest::new(),
        )
        .unwrap()
    else {
        panic!("the lock is free");
    };
    let _ = guard.into_handle();

    let default = fx.run(&["--json", "locks", "list"]).expect(OK);
    assert_eq!(default.stdout, "");
    let listed = fx
        .run(&["--json", "locks", "list", "--namespace", "pipeline/locks"])
        .expect(OK)
        .json_lines();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["key"], "session-1");
}

/// A job retried with the tool wakes the runner of a service that has the
/// store open, at once: the runner's poll is an hour away, and its clock
/// never moves. On both stores, which tell of other processes' writes.
#[cfg(target_os = "linux")]
#[test]
fn a_retry_with_the_tool_wakes_a_running_runner() {
    use jobsafe::pipeline::{RunOutcome, Runner};
    use std::sync::atomic::{AtomicBool, Ordering};
    for backend in BACKENDS {
        let fx = Fixture::empty(backend);
        let artifacts = tempfile::tempdir().unwrap();
        let failing = Arc::new(AtomicBool::new(true));
        let stage_fails = Arc::clone(&failing);
        let pipeline = Pipeline::builder(fx.store(), fx.clock(), artifacts.path())
            .stage("export", move |_| {
                if stage_fails.swap(false, Ordering::SeqCst) {
                    return Err(StageError::permanent("the volume is full"));
                }
                Ok(())
            })
            .build()
            .unwrap();
        let (ended_tx, ended) = mpsc::channel();
        let ended_tx = std::sync::Mutex::new(ended_tx);
        let runner = Runner::new(pipeline.clone())
            .poll_every(Duration::from_secs(3600))
            .on_run(move |id, run| {
                let outcome = match run {
                    Ok(report) => match report.outcome {
                        RunOutcome::Completed => "completed",
                        RunOutcome::Failed { .. } => "failed",
                        _ => "other",
                    },
                    Err(_) => "error",
                };
                let _ = ended_tx.lock().unwrap().send((id.to_owned(), outcome));
            });
        let stop = runner.stopper();
        let running = std::thread::spawn(move || runner.run());
        let job = pipeline
            .enqueue("session-1", NewJob::new("episode"))
            .unwrap();
        let first = ended
            .recv_timeout(WAIT_BOUND)
            .expect("the first run never ended");
        assert_eq!(first, (job.id.clone(), "failed"), "{backend:?}");

        fx.run(&["jobs", "retry", &job.id, "--pipeline"]).expect(OK);
        let second = ended
            .recv_timeout(WAIT_BOUND)
            .expect("the retry never woke the runner");
        assert_eq!(second, (job.id.clone(), "completed"), "{backend:?}");
        stop.stop(Duration::ZERO);
        let report = running.join().unwrap();
        assert_eq!(report.completed, 1, "{backend:?}");
        assert!(!failing.load(Ordering::SeqCst));
    }
}

#[test]
fn a_pipelines_jobs_and_locks_are_found_with_pipeline_and_changed_its_way() {
    let fx = Fixture::empty(Backend::Log);
    let artifacts = tempfile::tempdir().unwrap();
    let clock = fx.clock();
    let pipeline = Pipeline::builder(fx.store(), clock.clone(), artifacts.path())
        .stage("transcribe", |ctx| {
            ctx.write("transcript.txt", b"hello")?;
            Ok(())
        })
        .stage("export", |_| {
            Err(StageError::permanent("the volume is full"))
        })
        .build()
        .unwrap();
    let job = pipeline
        .enqueue("session-1", NewJob::new("episode"))
        .unwrap();
    pipeline.run_job(&job.id).unwrap();
    // The pipeline's own state beside the job: its count of transient failures.
    let run_state = Key::new(["pipeline", "run", job.id.as_str()]).unwrap();
    assert!(fx.store().get(&run_state).unwrap().is_some());
    let Acquire::Acquired(runner) = pipeline
        .locks()
        .acquire(
            &key("session-2"),
            Duration::from_secs(3600),
            &LockRequest::new(),
        )
        .unwrap()
    else {
        panic!("the subject is free");
    };
    let _ = runner.into_handle();
    drop(pipeline);

    assert_eq!(fx.run(&["--json", "jobs", "list"]).expect(OK).stdout, "");
    let listed = fx
        .run(&["--json", "jobs", "--pipeline", "list", "--state", "failed"])
        .expect(OK)
        .json_lines();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], job.id.as_str());
    assert_eq!(listed[0]["metadata"]["subject"], "session-1");
    let locks = fx
        .run(&["--json", "locks", "list", "--pipeline=pipeline"])
        .expect(OK)
        .json_lines();
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0]["key"], "session-2");

    fx.run(&["jobs", "retry", &job.id, "--pipeline"]).expect(OK);
    let records =
        PipelineRecords::new(fx.store(), clock, Prefix::new(["pipeline"]).unwrap()).unwrap();
    let job = records.jobs().get(&job.id).unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    // Retried as Pipeline::retry does: the count went in the same write.
    assert!(fx.store().get(&run_state).unwrap().is_none());

    // Cancelled and purged: its checkpoint goes with it.
    let checkpoints = Prefix::new(["pipeline", "checkpoint", job.id.as_str()]).unwrap();
    assert_eq!(fx.store().list_all(&checkpoints).unwrap().len(), 1);
    fx.run(&["jobs", "--pipeline", "cancel", &job.id, "--yes"])
        .expect(OK);
    let doc = fx
        .run(&[
            "--json",
            "jobs",
            "--pipeline",
            "purge",
            "--older-than",
            "0s",
            "--yes",
        ])
        .expect(OK)
        .json();
    assert_eq!(doc["purged"]["cancelled"], 1);
    assert_eq!(records.jobs().get(&job.id).unwrap(), None);
    assert_eq!(
        fx.store().list_all(&checkpoints).unwrap(),
        Vec::<Key>::new()
    );

    fx.run(&["jobs", "--pipeline", "--namespace", "jobs", "list"])
        .expect(USAGE);
}

// ---------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------

#[test]
fn jobs_list_shows_every_job_and_filters_by_state() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let table = fx.run(&["jobs", "list"]).expect(OK);
        let rows = rows(&table.stdout);
        assert_eq!(
            rows[0],
            [
                "ID",
                "KIND",
                "STATE",
                "STAGE",
                "ATTEMPT",
                "UPDATED",
                "PROGRESS/ERROR"
            ]
        );
        let states: Vec<(&str, &str)> = rows[1..]
            .iter()
            .map(|r| (r[0].as_str(), r[2].as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("job-cancelled", "cancelled"),
                ("job-failed", "failed"),
                ("job-old-complete", "complete"),
                ("job-queued", "queued"),
                ("job-recent-complete", "complete"),
                ("job-running", "running"),
            ]
        );
        let running = rows.iter().find(|r| r[0] == "job-running").unwrap();
        assert_eq!(running[3], "draft");
        assert_eq!(running.last().unwrap(), "42%");
        let failed = rows.iter().find(|r| r[0] == "job-failed").unwrap();
        assert_eq!(failed.last().unwrap(), "disk full on export volume");

        let complete = fx
            .run(&["--json", "jobs", "list", "--state", "complete"])
            .expect(OK)
            .json_lines();
        let ids: Vec<&str> = complete.iter().map(|j| j["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["job-old-complete", "job-recent-complete"]);
        assert_eq!(complete[0]["result"]["minutes"], 42);

        let bad = fx.run(&["jobs", "list", "--state", "stuck"]).expect(USAGE);
        assert!(bad.stderr.contains("stuck"), "{}", bad.stderr);
    }
}

#[test]
fn jobs_show_and_events_print_the_record_and_its_event_log() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let shown = fx.run(&["jobs", "show", "job-failed"]).expect(OK);
        assert!(
            shown.stdout.contains("state:        failed"),
            "{}",
            shown.stdout
        );
        // Operators see the internal message beside the client one.
        assert!(shown.stdout.contains("disk full on export volume"));
        assert!(shown.stdout.contains("the export failed"));

        let doc = fx
            .run(&["--json", "jobs", "show", "job-failed"])
            .expect(OK)
            .json();
        assert_eq!(doc["status"], "failed");
        assert_eq!(doc["owner"], "inst-7");
        assert_eq!(doc["error"]["code"], "disk_full");
        let stored = fx.jobs().get("job-failed").unwrap().unwrap();
        assert_eq!(doc["version"], stored.version.get());

        let events = fx
            .run(&["--json", "jobs", "events", "job-running"])
            .expect(OK)
            .json_lines();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["started", "stage", "progress"]);
        assert_eq!(events[2]["data"]["message"], "42%");
        let after = fx
            .run(&["--json", "jobs", "events", "job-running", "--after", "2"])
            .expect(OK)
            .json_lines();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0]["seq"], 3);
        let table = fx.run(&["jobs", "events", "job-running"]).expect(OK);
        assert_eq!(rows(&table.stdout)[0], ["SEQ", "TIME", "TYPE", "DATA"]);
        assert_eq!(rows(&table.stdout)[3][2], "progress");

        let missing = fx.run(&["jobs", "show", "job-nope"]).expect(NOT_FOUND);
        assert!(
            missing.stderr.contains("no job job-nope"),
            "{}",
            missing.stderr
        );
        fx.run(&["jobs", "events", "job-nope"]).expect(NOT_FOUND);
    }
}

#[test]
fn jobs_retry_requeues_a_failed_job_and_refuses_others() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let retried = fx.run(&["jobs", "retry", "job-failed"]).expect(OK);
        assert!(retried.stdout.contains("attempt 2"), "{}", retried.stdout);
        let job = fx.jobs().get("job-failed").unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Queued);
        let events = fx.jobs().events_since("job-failed", 0).unwrap().events;
        assert_eq!(events.last().unwrap().kind, "requeued");

        let refused = fx
            .run(&["jobs", "retry", "job-recent-complete"])
            .expect(ERROR);
        assert!(
            refused
                .stderr
                .contains("job job-recent-complete is complete: cannot retry"),
            "{}",
            refused.stderr
        );
        assert_eq!(
            fx.jobs()
                .get("job-recent-complete")
                .unwrap()
                .unwrap()
                .status,
            JobStatus::Complete
        );
        fx.run(&["jobs", "retry", "job-nope"]).expect(NOT_FOUND);
    }
}

#[test]
fn jobs_cancel_needs_confirmation_then_cancels() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        fx.run(&["jobs", "cancel", "job-running"])
            .expect(NOT_CONFIRMED);
        assert_eq!(
            fx.jobs().get("job-running").unwrap().unwrap().status,
            JobStatus::Running
        );

        let doc = fx
            .run(&["--json", "jobs", "cancel", "job-running", "-y"])
            .expect(OK)
            .json();
        assert_eq!(doc["status"], "cancelled");
        assert_eq!(
            fx.jobs().get("job-running").unwrap().unwrap().status,
            JobStatus::Cancelled
        );
        let refused = fx
            .run(&["jobs", "cancel", "job-recent-complete", "--yes"])
            .expect(ERROR);
        assert!(refused.stderr.contains("is complete"), "{}", refused.stderr);
    }
}

#[test]
fn jobs_purge_removes_only_jobs_finished_long_enough_ago() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let refused = fx
            .run(&["jobs", "purge", "--older-than", "7d"])
            .expect(NOT_CONFIRMED);
        // It shows what it would remove before asking.
        assert!(
            refused.stdout.contains("job-old-complete"),
            "{}",
            refused.stdout
        );
        assert!(!refused.stdout.contains("job-recent-complete"));
        assert!(fx.jobs().get("job-old-complete").unwrap().is_some());

        let doc = fx
            .run(&["--json", "jobs", "purge", "--older-than", "7d", "--yes"])
            .expect(OK)
            .json();
        assert_eq!(doc["purged"]["total"], 1);
        assert_eq!(doc["purged"]["complete"], 1);
        let jobs = fx.jobs();
        assert!(jobs.get("job-old-complete").unwrap().is_none());
        let events = fx
            .store()
            .list_all(&"jobs/event/job-old-complete".parse().unwrap());
        assert_eq!(
            events.unwrap(),
            Vec::<Key>::new(),
            "its events went with it"
        );
        for kept in [
            "job-recent-complete",
            "job-failed",
            "job-cancelled",
            "job-queued",
            "job-running",
        ] {
            assert!(jobs.get(kept).unwrap().is_some(), "{kept}");
        }

        // Queued jobs go only when asked for, and running ones never.
        let doc = fx
            .run(&[
                "--json",
                "jobs",
                "purge",
                "--older-than",
                "30m",
                "--queued-older-than",
                "30m",
                "-y",
            ])
            .expect(OK)
            .json();
        assert_eq!(
            doc["purged"],
            json!({"total": 4, "complete": 1, "failed": 1, "cancelled": 1, "queued": 1})
        );
        let left = fx.jobs().list(&Default::default()).unwrap().jobs;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, "job-running");

        let nothing = fx.run(&["jobs", "purge", "--older-than", "1d"]).expect(OK);
        assert!(
            nothing.stdout.contains("nothing to purge"),
            "{}",
            nothing.stdout
        );
    }
}

// ---------------------------------------------------------------------------------
// jobs watch
// ---------------------------------------------------------------------------------

/// Starts `jobs watch` on `id` and hands its stdout lines over a channel.
fn spawn_watch(
    fx: &Fixture,
    id: &str,
    extra: &[&str],
) -> (std::process::Child, mpsc::Receiver<String>) {
    let url = fx.url();
    let mut args = vec![
        "--store",
        url.as_str(),
        "jobs",
        "watch",
        id,
        "--interval",
        "20ms",
    ];
    args.extend_from_slice(extra);
    let mut child = command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if send.send(line).is_err() {
                return;
            }
        }
    });
    (child, lines)
}

/// Lines until one contains `needle`; a hung tool fails the test after
/// [`WAIT_BOUND`] instead of hanging it.
fn read_until(lines: &mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(WAIT_BOUND) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(e) => panic!("no line with {needle:?} ({e}); saw {seen:?}"),
        }
    }
}

/// Waits for the tool to exit, returning its code and stderr.
fn finish(mut child: std::process::Child) -> (i32, String) {
    let mut stderr = child.stderr.take().unwrap();
    let (send, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        let _ = send.send(text);
    });
    let stderr = match done.recv_timeout(WAIT_BOUND) {
        Ok(text) => text,
        Err(_) => {
            let _ = child.kill();
            panic!("jobs watch did not end");
        }
    };
    (child.wait().unwrap().code().unwrap_or(-1), stderr)
}

#[test]
fn jobs_watch_follows_a_job_live_and_exits_0_when_it_completes() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let jobs = fx.jobs();
        let job = jobs.create(NewJob::new("draft").id("job-live")).unwrap();
        let worker = jobs.start(&job.id, None).unwrap();
        let (child, lines) = spawn_watch(&fx, &job.id, &[]);

        // The tool has replayed the stored event: it is following, and the job
        // is still running.
        read_until(&lines, "started");
        jobs.set_stage(&worker, "write").unwrap();
        jobs.progress(&worker, "half way").unwrap();
        read_until(&lines, "half way");
        jobs.complete(&worker, json!({"words": 1200})).unwrap();

        let rest = read_until(&lines, "job job-live complete");
        assert!(
            rest.iter()
                .any(|l| l.contains("done") && l.contains("1200")),
            "{rest:?}"
        );
        let (code, stderr) = finish(child);
        assert_eq!(code, OK, "{backend:?}: {stderr}");
        // The progress line is rewritten in place.
        assert!(stderr.contains("\rjob job-live · running"), "{stderr:?}");
    }
}

#[test]
fn jobs_watch_exit_code_says_how_the_job_ended() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let (child, lines) = spawn_watch(&fx, "job-failed", &[]);
        let seen = read_until(&lines, "job job-failed failed");
        assert!(seen.last().unwrap().contains("disk full on export volume"));
        assert_eq!(finish(child).0, JOB_FAILED);

        let (child, lines) = spawn_watch(&fx, "job-cancelled", &["--json"]);
        let seen = read_until(&lines, "\"cancelled\"");
        assert_eq!(finish(child).0, JOB_CANCELLED);
        let last: Value = serde_json::from_str(seen.last().unwrap()).unwrap();
        assert_eq!(last["type"], "cancelled");

        let (child, _lines) = spawn_watch(&fx, "job-nope", &[]);
        let (code, stderr) = finish(child);
        assert_eq!(code, NOT_FOUND);
        assert!(stderr.contains("no job job-nope"), "{stderr}");
    }
}

#[test]
fn jobs_watch_goes_on_after_a_retry_and_ends_with_the_new_outcome() {
    let fx = prepare(Backend::Dir);
    let jobs = fx.jobs();
    jobs.retry("job-failed").unwrap();
    // The stream holds the old `error` event, then `requeued`: not the end.
    let (child, lines) = spawn_watch(&fx, "job-failed", &[]);
    read_until(&lines, "requeued");
    let worker = jobs.start("job-failed", None).unwrap();
    jobs.complete(&worker, json!({})).unwrap();
    read_until(&lines, "job job-failed complete");
    assert_eq!(finish(child).0, OK);
}

// ---------------------------------------------------------------------------------
// Ledger
// ---------------------------------------------------------------------------------

#[test]
fn ledger_list_and_show_print_reservations() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let table = fx.run(&["ledger", "list"]).expect(OK);
        let rows = rows(&table.stdout);
        assert_eq!(
            rows[0],
            ["ACCOUNT", "JOB", "STATE", "ID", "CHARGED", "EXPIRES"]
        );
        let listed: Vec<[&str; 3]> = rows[1..]
            .iter()
            .map(|r| [r[0].as_str(), r[1].as_str(), r[2].as_str()])
            .collect();
        assert_eq!(
            listed,
            [
                ["lic:abc", "job-1", "charged"],
                ["lic:abc", "job-2", "charge_pending"],
                ["lic:xyz", "job-9", "charged"],
            ]
        );

        let pending = fx
            .run(&["--json", "ledger", "list", "--pending"])
            .expect(OK)
            .json_lines();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0]["job_id"], "job-2");
        let xyz = fx
            .run(&["--json", "ledger", "list", "--account", "lic:xyz"])
            .expect(OK)
            .json_lines();
        assert_eq!(xyz.len(), 1);

        let stored = fx.ledger().lookup("lic:abc", "job-1").unwrap().unwrap();
        let doc = fx
            .run(&["--json", "ledger", "show", "lic:abc/job-1"])
            .expect(OK)
            .json();
        assert_eq!(doc["id"], stored.id.as_str());
        assert_eq!(doc["metadata"]["tier"], "pro");
        assert_eq!(doc["metadata"]["backend"], "deepgram");
        assert_eq!(doc["expires_ms"], stored.expires_ms);

        fx.run(&["ledger", "show", "lic:abc/job-404"])
            .expect(NOT_FOUND);
        fx.run(&["ledger", "show", "lic:abc"]).expect(USAGE);
    }
}

#[test]
fn ledger_refund_needs_confirmation_then_makes_the_job_id_new() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        fx.run(&["ledger", "refund", "lic:abc/job-1"])
            .expect(NOT_CONFIRMED);
        assert!(fx.ledger().lookup("lic:abc", "job-1").unwrap().is_some());

        let stored = fx.ledger().lookup("lic:abc", "job-1").unwrap().unwrap();
        let refunded = fx
            .run(&["ledger", "refund", "lic:abc/job-1", "--yes"])
            .expect(OK);
        assert!(refunded.stdout.contains(&stored.id), "{}", refunded.stdout);
        assert_eq!(fx.ledger().lookup("lic:abc", "job-1").unwrap(), None);
        // The next reserve of the job id is new: it will be charged.
        let again = fx
            .ledger()
            .reserve("lic:abc", "job-1", &ChargeRequest::new())
            .unwrap();
        assert!(matches!(again, jobsafe::ledger::Reserve::New(_)));

        // A charge still pending is the service's to finish.
        let pending = fx
            .run(&["ledger", "refund", "lic:abc/job-2", "--yes"])
            .expect(ERROR);
        assert!(
            pending.stderr.contains("charge_pending"),
            "{}",
            pending.stderr
        );
        let kept = fx.ledger().lookup("lic:abc", "job-2").unwrap().unwrap();
        assert_eq!(kept.state, ReservationState::ChargePending);

        fx.run(&["ledger", "refund", "lic:abc/job-404", "--yes"])
            .expect(NOT_FOUND);
    }
}

#[test]
fn ledger_settle_records_what_happened_to_a_side_effect_in_flight() {
    for backend in BACKENDS {
        let fx = prepare(backend);
        let ledger = fx.ledger();
        let state = |job: &str| ledger.lookup("lic:abc", job).unwrap().map(|r| r.state);

        // lic:abc/job-2 waits for its external charge.
        let wrong = fx
            .run(&["ledger", "settle", "lic:abc/job-2", "refunded", "--yes"])
            .expect(ERROR);
        assert!(
            wrong
                .stderr
                .contains("is charge_pending, not refund_pending"),
            "{}",
            wrong.stderr
        );
        fx.run(&["ledger", "settle", "lic:abc/job-2", "charged"])
            .expect(NOT_CONFIRMED);
        assert_eq!(state("job-2"), Some(ReservationState::ChargePending));
        fx.run(&["ledger", "settle", "lic:abc/job-2", "charged", "--yes"])
            .expect(OK);
        assert_eq!(state("job-2"), Some(ReservationState::Charged));
        fx.run(&["ledger", "settle", "lic:abc/job-2", "uncharged", "--yes"])
            .expect(ERROR);
        assert_eq!(state("job-2"), Some(ReservationState::Charged));

        ledger
            .reserve_pending("lic:abc", "job-3", &ChargeRequest::new())
            .unwrap();
        fx.run(&["ledger", "settle", "lic:abc/job-3", "uncharged", "--yes"])
            .expect(OK);
        assert_eq!(state("job-3"), None);

        ledger
            .reserve("lic:abc", "job-4", &ChargeRequest::new())
            .unwrap();
        let begun = ledger.begin_refund("lic:abc", "job-4").unwrap().unwrap();
        // A refund in flight is not refunded twice.
        fx.run(&["ledger", "refund", "lic:abc/job-4", "--yes"])
            .expect(ERROR);
        let doc = fx
            .run(&[
                "--json",
                "ledger",
                "settle",
                "lic:abc/job-4",
                "refunded",
                "--yes",
            ])
            .expect(OK)
            .json();
        assert_eq!(doc["settled"], "refunded");
        assert_eq!(doc["reservation"]["id"], begun.id.as_str());
        assert_eq!(state("job-4"), None);
    }
}

// ---------------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------------

#[test]
fn schedules_list_shows_each_schedule_with_its_next_due_time_and_last_run() {
    use jobsafe::schedule::{CatchUp, Every, Schedule, Scheduler};
    for backend in BACKENDS {
        let fx = Fixture::empty(backend);
        fx.run(&["schedules", "list"]).expect(OK);
        let clock = Arc::new(ManualClock::new(fx.now - 2 * HOUR));
        let scheduler = Scheduler::new(fx.jobs(), clock.clone())
            .schedule(
                Schedule::new(
                    "hourly",
                    Every::interval(Duration::from_secs(3600)).unwrap(),
                    NewJob::new("report"),
                )
                .unwrap()
                .catch_up(CatchUp::All),
            )
            .unwrap()
            .schedule(
                Schedule::new(
                    "nightly",
                    Every::cron("0 0 0 1 1 * 2099").unwrap(),
                    NewJob::new("rollup"),
                )
                .unwrap(),
            )
            .unwrap();
        assert!(scheduler.tick().failed.is_empty());
        clock.set(fx.now);
        let tick = scheduler.tick();
        assert_eq!(tick.created.len(), 2, "{:?}", tick.created);
        let last = &tick.created[1].job_id;

        let table = fx.run(&["schedules", "list"]).expect(OK);
        let rows = rows(&table.stdout);
        assert_eq!(
            rows[0],
            [
                "SCHEDULE", "EVERY", "CATCH-UP", "NEXT DUE", "LAST JOB", "RUNS", "SKIPPED"
            ]
        );
        assert_eq!(rows[1][..3], ["hourly", "every 3600000 ms", "all"]);
        assert_eq!(rows[1][4..], [last.as_str(), "2", "0"]);
        assert_eq!(rows[2][..3], ["nightly", "cron 0 0 0 1 1 * 2099", "one"]);

        let listed = fx
            .run(&["--json", "schedules", "list"])
            .expect(OK)
            .json_lines();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0]["name"], "hourly");
        assert_eq!(listed[0]["runs"], 2);
        assert_eq!(listed[0]["last_job"], last.as_str());
        assert_eq!(listed[0]["next_due_ms"], tick.created[1].due_ms + HOUR);

        // Another namespace holds none of them.
        let other = fx
            .run(&["schedules", "list", "--namespace", "tenant/schedules"])
            .expect(OK);
        assert_eq!(other.stdout.trim(), "no schedules");
    }
}

#[test]
fn schedules_list_reports_a_damaged_record_and_lists_the_rest() {
    for backend in BACKENDS {
        let fx = Fixture::empty(backend);
        let store = fx.store();
        let key = key("schedules/schedule/broken");
        store.put(&key, b"{\"schema\":1,", Expect::Absent).unwrap();
        let run = fx.run(&["schedules", "list"]).expect(ERROR);
        assert_eq!(run.stdout.trim(), "no schedules");
        assert!(
            run.stderr
                .contains("unreadable record schedules/schedule/broken"),
            "{}",
            run.stderr
        );
    }
}

// ---------------------------------------------------------------------------------
// Sweep
// ---------------------------------------------------------------------------------

/// The temp file of an atomic write whose process "crashed", `age_ms` old.
fn leftover(dir: &Path, target: &str, age_ms: u64) -> PathBuf {
    let writer = AtomicWriter::new();
    let pending = writer.begin(dir.join(target)).unwrap();
    let temp = pending.temp_path().to_path_buf();
    std::mem::forget(pending);
    let modified = SystemTime::now() - Duration::from_millis(age_ms);
    File::options()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    temp
}

/// A command that only reads removes nothing: a `DirStore`'s old temp files,
/// which an open would sweep, stay for `sweep` to ask about.
#[test]
fn a_reading_command_leaves_a_dir_stores_temp_files() {
    let fx = Fixture::empty(Backend::Dir);
    let store = DirStore::builder(&fx.root)
        .sweep_at_open(None)
        .open()
        .unwrap();
    // A record of the application's own, beside which a writer died.
    let key = Key::new(["app", "settings"]).unwrap();
    store.put(&key, b"{}", Expect::Absent).unwrap();
    let record_dir = store.path_of(&key).parent().unwrap().to_path_buf();
    drop(store);
    let stale = leftover(&record_dir, "settings.rec", 2 * DAY);
    fx.run(&["locks", "list"]).expect(OK);
    assert!(
        stale.exists(),
        "a reading command removed {}",
        stale.display()
    );
}

#[test]
fn sweep_lists_asks_and_removes_only_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("jobs").join("job-1");
    std::fs::create_dir_all(&nested).unwrap();
    let stale = leftover(dir.path(), "a.json", 2 * HOUR);
    let stale_nested = leftover(&nested, "draft.md", 3 * DAY);
    let young = leftover(dir.path(), "b.json", 0);
    let other = dir.path().join("c.json");
    std::fs::write(&other, b"{}").unwrap();
    let top = dir.path().to_str().unwrap();

    let dry = run(&["sweep", top, "--older-than", "1h", "--dry-run"]).expect(OK);
    assert!(
        dry.stdout.contains(stale.to_str().unwrap()),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains(young.to_str().unwrap()));
    let refused = run(&["sweep", top, "--older-than", "1h"]).expect(NOT_CONFIRMED);
    assert!(refused.stdout.contains(stale.to_str().unwrap()));
    assert!(stale.exists(), "nothing is removed unconfirmed");

    let doc = run(&["--json", "sweep", top, "--older-than", "1h", "--yes"])
        .expect(OK)
        .json();
    assert_eq!(doc["removed"], json!([stale.to_str().unwrap()]));
    assert!(!stale.exists());
    assert!(young.exists() && other.exists() && stale_nested.exists());

    run(&["sweep", top, "--older-than", "1d", "--recursive", "-y"]).expect(OK);
    assert!(!stale_nested.exists());
    assert!(young.exists() && other.exists());

    let missing = dir.path().join("missing");
    let failed = run(&["sweep", missing.to_str().unwrap(), "-y"]).expect(ERROR);
    assert!(
        failed.stderr.contains(missing.to_str().unwrap()),
        "{}",
        failed.stderr
    );
}

// ---------------------------------------------------------------------------------
// Store URLs and errors
// ---------------------------------------------------------------------------------

#[test]
fn a_missing_store_directory_is_an_error_naming_it_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    for scheme in ["dir", "log"] {
        let missing = dir.path().join(format!("{scheme}-missing"));
        let url = format!("{scheme}:{}", missing.display());
        let failed = run(&["--store", &url, "jobs", "list"]).expect(ERROR);
        assert!(failed.stderr.contains(&url), "{}", failed.stderr);
        assert!(
            failed.stderr.contains("does not exist"),
            "{}",
            failed.stderr
        );
        assert!(!missing.exists(), "the tool created {}", missing.display());
    }
}

/// Every path under `root`, sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    paths
}

#[test]
fn a_store_of_another_kind_or_none_is_an_error_and_nothing_is_written() {
    let dir_store = prepare(Backend::Dir);
    let log_store = prepare(Backend::Log);
    let empty = tempfile::tempdir().unwrap();
    for (scheme, root) in [
        ("log", dir_store.root.as_path()),
        ("dir", log_store.root.as_path()),
        ("dir", empty.path()),
        ("log", empty.path()),
    ] {
        let before = tree(root);
        let url = format!("{scheme}:{}", root.display());
        let failed = run(&[
            "--store",
            &url,
            "--yes",
            "jobs",
            "purge",
            "--older-than",
            "0s",
        ])
        .expect(ERROR);
        assert!(
            failed.stderr.contains(&format!("open store {url}")),
            "{}",
            failed.stderr
        );
        assert_eq!(tree(root), before, "{url}");
    }
}

#[test]
fn a_malformed_store_url_is_a_usage_error_naming_it() {
    for url in ["state", "s3://bucket/x", "dir:", "log://"] {
        let failed = run(&["--store", url, "locks", "list"]).expect(USAGE);
        assert!(
            failed
                .stderr
                .contains(&format!("malformed store URL {url:?}")),
            "{}",
            failed.stderr
        );
    }
    let none = run(&["locks", "list"]).expect(USAGE);
    assert!(none.stderr.contains("JOBSAFE_STORE"), "{}", none.stderr);
}

#[test]
fn the_store_can_come_from_jobsafe_store_and_in_the_slashed_form() {
    let fx = prepare(Backend::Log);
    let output = command(&["--json", "jobs", "list", "--state", "queued"])
        .env("JOBSAFE_STORE", fx.url())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(OK));
    let line: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["id"], "job-queued");

    let slashed = format!("log://{}", fx.root.display());
    let listed = run(&["--store", &slashed, "--json", "ledger", "list"])
        .expect(OK)
        .json_lines();
    assert_eq!(listed.len(), 3);
}

#[cfg(not(feature = "postgres"))]
#[test]
fn a_postgres_url_without_the_feature_says_how_to_build_and_hides_the_password() {
    let failed = run(&["--store", "postgres://app:s3cret@db/jobs", "jobs", "list"]).expect(USAGE);
    assert!(
        failed.stderr.contains("--features cli,postgres"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("postgres://app:***@db/jobs"),
        "{}",
        failed.stderr
    );
    assert!(!failed.stderr.contains("s3cret"));
}

/// A store URL with a password in each form it can take, and how the tool names
/// it. Every password is made of `Zq` pieces, so that a piece leaking shows.
/// Nothing listens on port 1 of loopback.
const PASSWORD_FORMS: &[(&str, &str)] = &[
    (
        "postgres://app:Zq1@127.0.0.1:1/jobs",
        "postgres://app:***@127.0.0.1:1/jobs",
    ),
    (
        "postgresql://app:Zq1@127.0.0.1:1/jobs",
        "postgresql://app:***@127.0.0.1:1/jobs",
    ),
    (
        "postgres://app@127.0.0.1:1/jobs?password=Zq1",
        "postgres://app@127.0.0.1:1/jobs?password=***",
    ),
    (
        "postgres://app@127.0.0.1:1/jobs?connect_timeout=2&password=Zq1",
        "postgres://app@127.0.0.1:1/jobs?connect_timeout=2&password=***",
    ),
    (
        "postgres://app@127.0.0.1:1/jobs?password=Zq1&Zq2&sslmode=disable",
        "postgres://app@127.0.0.1:1/jobs?password=***",
    ),
    (
        "postgres://app:Zq1/Zq2@127.0.0.1:1/jobs",
        "postgres://app:***@127.0.0.1:1/jobs",
    ),
    (
        "postgres://app:Zq1?Zq2@127.0.0.1:1/jobs",
        "postgres://app:***@127.0.0.1:1/jobs",
    ),
    (
        "postgres://app:Zq1@Zq2@127.0.0.1:1/jobs",
        "postgres://app:***@127.0.0.1:1/jobs",
    ),
    (
        "postgres://app:Zq1%2FZq2@127.0.0.1:1/jobs",
        "postgres://app:***@127.0.0.1:1/jobs",
    ),
    (
        "host=127.0.0.1 port=1 user=app password=Zq1",
        "host=127.0.0.1 port=1 user=app password=***",
    ),
];

/// Built without `postgres`, the tool refuses each URL naming it; built with
/// it, it fails to connect (or to read the URL) naming it. Either way, not a
/// piece of the password is printed.
#[test]
fn a_postgres_password_is_hidden_from_the_error_line_in_every_form() {
    for (url, shown) in PASSWORD_FORMS {
        let failed = run(&["--store", url, "jobs", "list"]);
        assert!(
            if cfg!(feature = "postgres") {
                failed.code == ERROR || failed.code == USAGE
            } else {
                failed.code == USAGE
            },
            "{url}: {}: {}",
            failed.code,
            failed.stderr
        );
        assert!(failed.stderr.contains(shown), "{url}: {}", failed.stderr);
        assert!(!failed.stderr.contains("Zq"), "{url}: {}", failed.stderr);
        assert!(failed.stdout.is_empty(), "{url}: {}", failed.stdout);
    }
}

#[test]
fn an_unreadable_record_is_reported_and_fails_the_listing() {
    let fx = prepare(Backend::Dir);
    let bad = key("locks/index/broken");
    fx.store()
        .put(&bad, b"not json", jobsafe::Expect::Absent)
        .unwrap();
    let listed = fx.run(&["--json", "locks", "list"]).expect(ERROR);
    assert_eq!(
        listed.json_lines().len(),
        2,
        "readable locks are still listed"
    );
    assert!(
        listed.stderr.contains("unreadable record index/broken"),
        "{}",
        listed.stderr
    );
}

#[test]
fn a_reader_that_goes_away_does_not_fail_the_command() {
    let fx = prepare(Backend::Dir);
    let url = fx.url();
    // `jobsafe jobs show ID | head -0`: the pipe's reader is gone before (or
    // while) the tool writes.
    let mut child = command(&["--store", &url, "jobs", "show", "job-failed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(OK), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn every_command_explains_itself_in_help() {
    let top = run(&["--help"]).expect(OK);
    for text in [
        "dir:PATH",
        "log:PATH",
        "postgres://",
        "JOBSAFE_STORE",
        "Exit codes",
        "--yes",
        r"escaped, as \u{1b}",
    ] {
        assert!(top.stdout.contains(text), "--help lacks {text:?}");
    }
    for (command, says) in [
        (vec!["locks", "list", "--help"], "Changes nothing"),
        (
            vec!["locks", "release", "--help"],
            "Asks first unless --yes",
        ),
        (
            vec!["jobs", "retry", "--help"],
            "Only a failed job can be retried",
        ),
        (vec!["jobs", "cancel", "--help"], "Asks first unless --yes"),
        (
            vec!["jobs", "purge", "--help"],
            "Running jobs are never purged",
        ),
        (
            vec!["jobs", "watch", "--help"],
            "exit code 0 if it completed",
        ),
        (vec!["ledger", "refund", "--help"], "counts as new"),
        (
            vec!["ledger", "settle", "--help"],
            "JobLedger::complete_refund",
        ),
        (vec!["sweep", "--help"], "Needs no store"),
    ] {
        let help = run(&command).expect(OK);
        assert!(
            help.stdout.contains(says),
            "{command:?} lacks {says:?}:\n{}",
            help.stdout
        );
    }
    run(&["jobs", "frobnicate"]).expect(USAGE);
}

// ---------------------------------------------------------------------------------
// Hostile stored text
// ---------------------------------------------------------------------------------

/// Text a service's client may have put in a record: a screen clear, a CSI in
/// its 8-bit form (U+009B), a right-to-left override, a carriage return and a
/// tab.
const HOSTILE: &str = "x\u{1b}[2J\u{9b}31m\u{202e}gpj.exe\r\ty";
/// How the tool shows it to people.
const HOSTILE_SHOWN: &str = r"x\u{1b}[2J\u{9b}31m\u{202e}gpj.exe\u{d}\u{9}y";
/// The id of a queued job, hostile too.
const HOSTILE_ID: &str = "job-\u{1b}]0;owned\u{7}\u{2066}q";
const HOSTILE_ID_SHOWN: &str = r"job-\u{1b}]0;owned\u{7}\u{2066}q";

/// Whether a terminal may obey `c` or reorder a line around it: C0 controls,
/// DEL, C1 controls (Rust's `is_control`) and the bidirectional controls.
fn obeyed_by_terminals(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Fails unless `text` holds no character a terminal obeys, but for the line
/// breaks in `allowed`.
#[track_caller]
fn assert_no_raw_controls(what: &str, text: &str, allowed: &[char]) {
    let raw: Vec<char> = text
        .chars()
        .filter(|c| obeyed_by_terminals(*c) && !allowed.contains(c))
        .collect();
    assert!(raw.is_empty(), "{what}: raw {raw:?} in {text:?}");
}

/// A store where the text of every field the tool shows is [`HOSTILE`]: a
/// failed job (kind, owner, stage, progress, metadata, an event's type and
/// data, its error message), a queued one, a held lock (key, actor,
/// metadata), a charged reservation and a pending one (account, fingerprint,
/// metadata).
fn prepare_hostile() -> Fixture {
    let fx = Fixture::empty(Backend::Log);
    let store = fx.store();
    let clock = fx.clock();
    let jobs = JobState::new(Arc::clone(&store), clock.clone());
    let job = NewJob::new(HOSTILE)
        .id("job-hostile")
        .owner(HOSTILE)
        .meta("note", HOSTILE);
    jobs.create(job).unwrap();
    let worker = jobs.start("job-hostile", None).unwrap();
    jobs.set_stage(&worker, HOSTILE).unwrap();
    jobs.progress(&worker, HOSTILE).unwrap();
    jobs.append_event(&worker, HOSTILE, json!({ "text": HOSTILE }))
        .unwrap();
    let error = JobError::new(HOSTILE).internal(HOSTILE);
    jobs.fail(&worker, error, FailureKind::Permanent).unwrap();
    jobs.create(NewJob::new(HOSTILE).id(HOSTILE_ID)).unwrap();

    let locks = JobLock::new(Arc::clone(&store), clock.clone());
    let request = LockRequest::new().actor(HOSTILE).meta("reason", HOSTILE);
    let Acquire::Acquired(held) = locks
        .acquire(&hostile_lock(), Duration::from_secs(3600), &request)
        .unwrap()
    else {
        panic!("the lock is free");
    };
    let _ = held.into_handle();

    let ledger = JobLedger::new(store, clock);
    let charge = ChargeRequest::new()
        .fingerprint(HOSTILE)
        .meta("tier", HOSTILE);
    ledger.reserve(HOSTILE, "job-h1", &charge).unwrap();
    ledger.reserve_pending(HOSTILE, "job-h2", &charge).unwrap();
    fx
}

fn hostile_lock() -> Key {
    Key::new(["index", HOSTILE]).unwrap()
}

/// Every string in `value`, keys included.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| std::iter::once(k.clone()).chain(strings(v)))
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn tables_fields_and_error_lines_show_stored_control_and_bidi_characters_escaped() {
    let fx = prepare_hostile();
    let lock = hostile_lock().to_string();
    let charged = format!("{HOSTILE}/job-h1");
    for args in [
        vec!["jobs", "list"],
        vec!["jobs", "show", "job-hostile"],
        vec!["jobs", "events", "job-hostile"],
        vec!["locks", "list"],
        vec!["locks", "show", &lock],
        vec!["ledger", "list"],
        vec!["ledger", "show", &charged],
    ] {
        let shown = fx.run(&args).expect(OK);
        assert_no_raw_controls(&format!("{args:?}"), &shown.stdout, &['\n']);
        assert_no_raw_controls(&format!("{args:?}"), &shown.stderr, &['\n']);
        assert!(
            shown.stdout.contains(HOSTILE_SHOWN),
            "{args:?}: {}",
            shown.stdout
        );
    }
    // JSON in a field or a cell (metadata, event data) reads as `--json` has it.
    let show = fx.run(&["jobs", "show", "job-hostile"]).expect(OK);
    assert!(
        show.stdout
            .contains(r#"{"note":"x\u001b[2J\u009b31m\u202egpj.exe\r\ty"}"#),
        "{}",
        show.stdout
    );
    // Each row still one line: the header and two jobs.
    let list = fx.run(&["jobs", "list"]).expect(OK);
    assert_eq!(list.stdout.lines().count(), 3, "{}", list.stdout);

    // An unreadable record is named by its key.
    fx.store()
        .put(
            &Key::new(["locks", "bad", HOSTILE]).unwrap(),
            b"not json",
            jobsafe::Expect::Absent,
        )
        .unwrap();
    let listed = fx.run(&["locks", "list"]).expect(ERROR);
    assert_no_raw_controls("unreadable", &listed.stderr, &['\n']);
    assert!(
        listed
            .stderr
            .contains(&format!("unreadable record bad/{HOSTILE_SHOWN}")),
        "{}",
        listed.stderr
    );
}

#[test]
fn questions_and_result_lines_show_stored_text_escaped() {
    let fx = prepare_hostile();
    let lock = hostile_lock().to_string();
    let charged = format!("{HOSTILE}/job-h1");
    let pending = format!("{HOSTILE}/job-h2");
    let changes = [
        vec!["jobs", "cancel", HOSTILE_ID],
        vec!["locks", "release", &lock],
        vec!["ledger", "refund", &charged],
        vec!["ledger", "settle", &pending, "charged"],
    ];
    // Without a terminal the question is part of the refusal.
    for args in &changes {
        let refused = fx.run(args).expect(NOT_CONFIRMED);
        assert_no_raw_controls(&format!("{args:?}"), &refused.stdout, &['\n']);
        assert_no_raw_controls(&format!("{args:?}"), &refused.stderr, &['\n']);
        assert!(
            refused.stderr.contains(HOSTILE_SHOWN) || refused.stderr.contains(HOSTILE_ID_SHOWN),
            "{args:?}: {}",
            refused.stderr
        );
    }
    // On a terminal, typed into through `script`: what it shows is the terminal
    // stream itself, whose line ends are `\r\n`.
    for args in &changes {
        let declined = run_on_terminal(&fx, args, "n\n").expect(NOT_CONFIRMED);
        assert_no_raw_controls(&format!("{args:?}"), &declined.stdout, &['\r', '\n']);
        let question = declined
            .stdout
            .lines()
            .find(|line| line.contains("[y/N]"))
            .unwrap_or_else(|| panic!("{args:?}: no question in {:?}", declined.stdout));
        assert!(
            question.contains(HOSTILE_SHOWN) || question.contains(HOSTILE_ID_SHOWN),
            "{args:?}: {question:?}"
        );
    }
    let cancelled = fx.run(&["jobs", "cancel", HOSTILE_ID, "--yes"]).expect(OK);
    assert_eq!(
        cancelled.stdout,
        format!("job {HOSTILE_ID_SHOWN} is cancelled\n")
    );
    let holder = fx.locks().peek(&hostile_lock()).unwrap().unwrap();
    let released = fx.run(&["locks", "release", &lock, "--yes"]).expect(OK);
    assert!(
        released.stdout.contains(&format!(
            "released lock index/{HOSTILE_SHOWN}: removed holder job {} ({HOSTILE_SHOWN})",
            holder.job_id
        )),
        "{}",
        released.stdout
    );
    let settled = fx
        .run(&["ledger", "settle", &pending, "charged", "--yes"])
        .expect(OK);
    let refunded = fx.run(&["ledger", "refund", &charged, "--yes"]).expect(OK);
    for (what, run) in [
        ("released", &released),
        ("settled", &settled),
        ("refunded", &refunded),
    ] {
        assert_no_raw_controls(what, &run.stdout, &['\n']);
        assert!(
            run.stdout
                .contains(&format!("reservation {HOSTILE_SHOWN}/job-h"))
                || what == "released",
            "{what}: {}",
            run.stdout
        );
    }
    // Cancelling again: the refusal quotes the id.
    let again = fx
        .run(&["jobs", "cancel", HOSTILE_ID, "--yes"])
        .expect(ERROR);
    assert_no_raw_controls("cancel again", &again.stderr, &['\n']);
    assert!(again.stderr.contains(HOSTILE_ID_SHOWN), "{}", again.stderr);
}

#[test]
fn json_escapes_c1_and_bidi_characters_and_reads_back_as_stored() {
    let fx = prepare_hostile();
    let lock = hostile_lock().to_string();
    let charged = format!("{HOSTILE}/job-h1");
    let documents = [
        vec!["--json", "jobs", "show", "job-hostile"],
        vec!["--json", "locks", "show", &lock],
        vec!["--json", "ledger", "show", &charged],
    ];
    let lines = [
        vec!["--json", "jobs", "list"],
        vec!["--json", "jobs", "events", "job-hostile"],
        vec!["--json", "locks", "list"],
        vec!["--json", "ledger", "list"],
    ];
    for (args, one_document) in documents
        .iter()
        .map(|a| (a, true))
        .chain(lines.iter().map(|a| (a, false)))
    {
        let printed = fx.run(args).expect(OK);
        // serde_json escapes C0 controls; the tool escapes the rest. Only the
        // layout's own line breaks are left.
        assert_no_raw_controls(&format!("{args:?}"), &printed.stdout, &['\n']);
        assert!(
            printed.stdout.contains(r"\u009b") && printed.stdout.contains(r"\u202e"),
            "{args:?}: {}",
            printed.stdout
        );
        let values = if one_document {
            vec![printed.json()]
        } else {
            printed.json_lines()
        };
        let found: Vec<String> = values.iter().flat_map(strings).collect();
        assert!(found.iter().any(|s| s == HOSTILE), "{args:?}: {found:?}");
    }
    let job = fx
        .run(&["--json", "jobs", "show", "job-hostile"])
        .expect(OK)
        .json();
    for field in ["kind", "owner", "stage", "progress"] {
        assert_eq!(job[field], HOSTILE, "{field}");
    }
    assert_eq!(job["metadata"]["note"], HOSTILE);
    let events = fx
        .run(&["--json", "jobs", "events", "job-hostile"])
        .expect(OK)
        .json_lines();
    let own = events.iter().find(|e| e["type"] == HOSTILE).unwrap();
    assert_eq!(own["data"]["text"], HOSTILE);
    let listed = fx.run(&["--json", "jobs", "list"]).expect(OK).json_lines();
    assert!(listed.iter().any(|j| j["id"] == HOSTILE_ID), "{listed:?}");
}

#[test]
fn jobs_watch_shows_stored_text_escaped_in_its_lines_and_status_line() {
    let fx = prepare_hostile();
    let jobs = fx.jobs();
    jobs.create(NewJob::new(HOSTILE).id("job-live")).unwrap();
    let worker = jobs.start("job-live", None).unwrap();
    jobs.progress(&worker, HOSTILE).unwrap();
    let (child, lines) = spawn_watch(&fx, "job-live", &[]);
    // Replayed while the job runs, so the status line is drawn after it.
    let mut seen = read_until(&lines, "progress");
    jobs.append_event(&worker, HOSTILE, json!({ "text": HOSTILE }))
        .unwrap();
    seen.extend(read_until(&lines, HOSTILE_SHOWN));
    let error = JobError::new(HOSTILE).internal(HOSTILE);
    jobs.fail(&worker, error, FailureKind::Permanent).unwrap();
    seen.extend(read_until(&lines, "job job-live failed"));
    let (code, stderr) = finish(child);
    assert_eq!(code, JOB_FAILED, "{stderr}");
    for line in &seen {
        assert_no_raw_controls("watch line", line, &[]);
    }
    assert!(
        seen.last()
            .unwrap()
            .ends_with(&format!("failed: {HOSTILE_SHOWN}")),
        "{seen:?}"
    );
    // The status line is rewritten with `\r`: the stored `\r` is not.
    assert_no_raw_controls("status line", &stderr, &['\r', '\n']);
    assert!(
        stderr.contains(&format!(
            "\rjob job-live · running · attempt 1 · {HOSTILE_SHOWN}"
        )),
        "{stderr:?}"
    );

    let (child, lines) = spawn_watch(&fx, "job-hostile", &["--json"]);
    let seen = read_until(&lines, "\"status\"");
    assert_eq!(finish(child).0, JOB_FAILED);
    for line in &seen {
        assert_no_raw_controls("watch --json line", line, &[]);
    }
    let record: Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    assert_eq!(record["kind"], HOSTILE);
    assert_eq!(record["progress"], HOSTILE);
}

#[test]
fn hints_and_swept_paths_show_stored_names_escaped() {
    // A pipeline namespace named by a key someone wrote.
    let fx = Fixture::empty(Backend::Log);
    fx.store()
        .put(
            &Key::new([HOSTILE, "jobs", "job", "j1"]).unwrap(),
            b"{}",
            jobsafe::Expect::Absent,
        )
        .unwrap();
    let listed = fx.run(&["jobs", "list"]).expect(OK);
    assert_no_raw_controls("hint", &listed.stderr, &['\n']);
    assert!(
        listed
            .stderr
            .contains(&format!("--pipeline={HOSTILE_SHOWN}")),
        "{}",
        listed.stderr
    );

    // A file name, from whoever may write in the swept directory.
    let dir = tempfile::tempdir().unwrap();
    let stale = leftover(dir.path(), &format!("{HOSTILE}.json"), 2 * HOUR);
    let top = dir.path().to_str().unwrap();
    let dry = run(&["sweep", top, "--dry-run"]).expect(OK);
    assert_no_raw_controls("sweep", &dry.stdout, &['\n']);
    assert!(dry.stdout.contains(HOSTILE_SHOWN), "{}", dry.stdout);
    let doc = run(&["--json", "sweep", top, "--dry-run"])
        .expect(OK)
        .json();
    assert_eq!(doc["stale"], json!([stale.to_str().unwrap()]));
}

// ---------------------------------------------------------------------------------
// PgStore (with the feature on, against the server of JOBSAFE_PG_URL)
// ---------------------------------------------------------------------------------

#[cfg(feature = "postgres")]
#[test]
fn postgres_stores_work_by_url_with_their_schema() {
    let mut schemas = common::pg::Schemas::default();
    let schema = schemas.fresh();
    let store: Arc<dyn Store> = Arc::new(common::pg::open(&schema));
    let now = SystemClock.now_ms();
    let clock = Arc::new(ManualClock::new(now));
    let locks = JobLock::new(Arc::clone(&store), clock.clone());
    let Acquire::Acquired(held) = locks
        .acquire(
            &key("index/vault-1"),
            Duration::from_secs(3600),
            &LockRequest::new().actor("alice"),
        )
        .unwrap()
    else {
        panic!("the lock is free");
    };
    let holder = held.into_handle();
    let ledger = JobLedger::new(Arc::clone(&store), clock.clone());
    ledger
        .reserve("lic:abc", "job-1", &ChargeRequest::new())
        .unwrap();
    let url = common::pg::url();
    let pg = |args: &[&str]| {
        let mut all = vec!["--store", url.as_str(), "--pg-schema", schema.as_str()];
        all.extend_from_slice(args);
        run(&all)
    };

    let listed = pg(&["--json", "locks", "list"]).expect(OK).json_lines();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["job_id"], holder.job_id.as_str());
    pg(&["locks", "release", "index/vault-1", "--yes"]).expect(OK);
    assert_eq!(locks.peek(&key("index/vault-1")).unwrap(), None);
    pg(&["ledger", "refund", "lic:abc/job-1", "--yes"]).expect(OK);
    assert_eq!(ledger.lookup("lic:abc", "job-1").unwrap(), None);
    // Another table of the same schema is another (empty) store.
    let other = pg(&["--pg-table", "other_records", "--json", "ledger", "list"]).expect(OK);
    assert_eq!(other.stdout, "");
}

#[cfg(feature = "postgres")]
#[test]
fn an_unreachable_postgres_server_is_named_without_its_password() {
    // Port 1 on loopback: nothing listens there.
    let failed = run(&[
        "--store",
        "postgres://app:s3cret@127.0.0.1:1/jobs?connect_timeout=2",
        "jobs",
        "list",
    ])
    .expect(ERROR);
    assert!(
        failed.stderr.contains("127.0.0.1:1/jobs"),
        "{}",
        failed.stderr
    );
    assert!(!failed.stderr.contains("s3cret"), "{}", failed.stderr);
}

#[test]
fn the_demo_examples_records_are_read_as_reservations_not_damage() {
    let demo = common::relay::example_binary("demo", false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(&demo).arg(dir.path()).output().unwrap();
    assert!(status.status.success(), "{status:?}");
    let store = format!("log:{}", dir.path().join("store").display());
    let listed = run(&["--store", &store, "--json", "ledger", "list"]).expect(OK);
    let reservations = listed.json_lines();
    let jobs: Vec<&str> = reservations
        .iter()
        .map(|r| r["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["job-1", "job-2"]);
    assert!(
        !listed.stderr.contains("unreadable") && !listed.stderr.contains("orrupt"),
        "{}",
        listed.stderr
    );
}

#[test]
fn jobs_list_without_pipeline_on_a_pipeline_store_says_where_the_jobs_are() {
    let fx = Fixture::empty(Backend::Log);
    let artifacts = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(fx.store(), fx.clock(), artifacts.path())
        .namespace(Prefix::new(["relay"]).unwrap())
        .stage("only", |_| Ok(()))
        .build()
        .unwrap();
    pipeline.enqueue("s", NewJob::new("episode")).unwrap();
    drop(pipeline);

    let plain = fx.run(&["jobs", "list"]).expect(OK);
    assert!(plain.stdout.contains("no jobs"), "{}", plain.stdout);
    assert!(
        plain.stderr.contains("jobsafe jobs list --pipeline=relay"),
        "{}",
        plain.stderr
    );
    let found = fx
        .run(&["--json", "jobs", "list", "--pipeline=relay"])
        .expect(OK);
    assert_eq!(found.json_lines().len(), 1);
    assert!(!found.stderr.contains("hint"), "{}", found.stderr);
}

/// A store that a service holds in exclusive mode cannot be opened by the
/// tool: it says so, naming the store, and changes nothing.
#[test]
fn a_store_held_exclusively_is_reported_not_waited_for() {
    let fx = Fixture::empty(Backend::Log);
    let service = LogStore::builder(&fx.root).exclusive(true).open().unwrap();
    let run = fx.run(&["locks", "list"]).expect(1);
    assert!(
        run.stderr.contains("is held exclusively by another handle"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("must be stopped first"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&fx.url()), "{}", run.stderr);
    drop(service);
    fx.run(&["locks", "list"]).expect(0);
}
