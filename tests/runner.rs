//! The pipeline `Runner`: woken at once by an enqueue or a retry in this
//! process, by the clock at a retry time and at the end of a busy subject's
//! lease; never more runs than its concurrency, never two of one subject;
//! a graceful stop that lets runs finish within the grace period and hands
//! the others over at once. Time is a `ManualClock`: the waits here are for
//! events, each bounded only so that a stuck runner fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hooked_store::{HookedStore, StoreOp};
use jobsafe::jobs::{Job, JobStatus, NewJob};
use jobsafe::lock::{Acquire, LockRequest};
use jobsafe::pipeline::{RetryPolicy, RunOutcome, Runner, RunnerReport, RunnerStop, StageError};
use jobsafe::{Key, ManualClock, Pipeline, Store};
use tempfile::TempDir;

const START_MS: u64 = 1_700_000_000_000;
/// Longer than any test moves the clock: only a release frees a subject.
const LEASE: Duration = Duration::from_secs(600);
/// Long enough that no poll happens in a test: every run comes from a wake.
const POLL: Duration = Duration::from_secs(3600);
/// How long a test waits for an event before it calls the runner stuck.
const STUCK: Duration = Duration::from_secs(60);

type Pipe = Pipeline<Arc<dyn Store>>;

/// A stage that reports each entry, then waits for its gate (if closed).
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    entered: Mutex<Option<Sender<String>>>,
    opened: (Mutex<bool>, std::sync::Condvar),
    inside: AtomicUsize,
    most_inside: AtomicUsize,
    /// What the next stage run fails with.
    fail_next: Mutex<Option<StageError>>,
}

impl Gate {
    fn close(&self) -> Receiver<String> {
        self.closed.store(true, Ordering::SeqCst);
        *self.opened.0.lock().unwrap() = false;
        let (tx, rx) = mpsc::channel();
        *self.entered.lock().unwrap() = Some(tx);
        rx
    }

    fn open(&self) {
        *self.opened.0.lock().unwrap() = true;
        self.opened.1.notify_all();
    }

    fn pass(&self, job: &str) -> Result<(), StageError> {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_inside.fetch_max(now, Ordering::SeqCst);
        if let Some(tx) = &*self.entered.lock().unwrap() {
            let _ = tx.send(job.to_owned());
        }
        if self.closed.load(Ordering::SeqCst) {
            let opened = self.opened.0.lock().unwrap();
            let (opened, waited) = self
                .opened
                .1
                .wait_timeout_while(opened, STUCK, |o| !*o)
                .unwrap();
            assert!(
                !waited.timed_out() || *opened,
                "the test never opened the gate"
            );
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
        match self.fail_next.lock().unwrap().take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

struct Bench {
    _dir: TempDir,
    hooked: Arc<HookedStore>,
    store: Arc<dyn Store>,
    clock: ManualClock,
    gate: Arc<Gate>,
    pipeline: Pipe,
}

fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let hooked = Arc::new(HookedStore::default());
    let store: Arc<dyn Store> = hooked.clone();
    let clock = ManualClock::new(START_MS);
    let gate = Arc::new(Gate::default());
    let pipeline = pipeline_on(&store, &clock, &gate, dir.path());
    Bench {
        _dir: dir,
        hooked,
        store,
        clock,
        gate,
        pipeline,
    }
}

fn pipeline_on(
    store: &Arc<dyn Store>,
    clock: &ManualClock,
    gate: &Arc<Gate>,
    root: &std::path::Path,
) -> Pipe {
    let gate = Arc::clone(gate);
    Pipeline::builder(Arc::clone(store), Arc::new(clock.clone()), root)
        .lease(LEASE)
        .retry_policy(RetryPolicy::default().max_failures(5))
        .stage("work", move |ctx| {
            gate.pass(ctx.job_id())?;
            ctx.write("out.txt", b"done")?;
            Ok(())
        })
        .build()
        .unwrap()
}

struct Started {
    stop: RunnerStop,
    report: Receiver<RunnerReport>,
}

fn start(runner: Runner<Arc<dyn Store>>) -> Started {
    let stop = runner.stopper();
    let (tx, report) = mpsc::channel();
    std::thread::spawn(move || tx.send(runner.run()).unwrap());
    Started { stop, report }
}

impl Started {
    fn stop(self, grace: Duration) -> RunnerReport {
        self.stop.stop(grace);
        self.join()
    }

    /// The runner's report, once it returns.
    fn join(self) -> RunnerReport {
        self.report
            .recv_timeout(STUCK)
            .expect("the runner did not return after its stop")
    }
}

/// Waits until job `id` reaches `status`, following its events.
fn wait_for(pipeline: &Pipe, id: &str, status: JobStatus) {
    let (tx, rx) = mpsc::channel();
    let (jobs, id_owned) = (pipeline.jobs().clone(), id.to_owned());
    std::thread::spawn(move || {
        let mut events = jobs.subscribe(&id_owned, 0).unwrap();
        loop {
            let job = jobs.get(&id_owned).unwrap().unwrap();
            if job.status == status {
                let _ = tx.send(());
                return;
            }
            if events.is_finished() {
                return;
            }
            events.next_event().unwrap();
        }
    });
    rx.recv_timeout(STUCK)
        .unwrap_or_else(|_| panic!("job {id} never became {status:?}"));
}

impl Bench {
    /// Tells when the runner lists the jobs for a look while job `id` (once
    /// set) is as `found` wants: after that, what becomes due reaches the
    /// runner only by a wake-up or its clock. With `fail`, that listing
    /// fails, so that the look finds nothing.
    fn look_while(
        &self,
        id: &Arc<Mutex<Option<String>>>,
        found: impl Fn(&Job) -> bool + Send + Sync + 'static,
        fail: bool,
    ) -> Receiver<()> {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(Some(tx));
        let jobs = self.pipeline.jobs().clone();
        let id = Arc::clone(id);
        self.hooked.on_op(move |op| {
            // A look lists the index of open jobs (or, building it, every job).
            let listing_jobs = matches!(op, StoreOp::List(prefix)
                if prefix.segments().iter().any(|s| s == "open" || s == "job"));
            let Some(id) = id.lock().unwrap().clone().filter(|_| listing_jobs) else {
                return Ok(());
            };
            if !jobs.get(&id).unwrap().is_some_and(|job| found(&job)) {
                return Ok(());
            }
            let Some(tx) = tx.lock().unwrap().take() else {
                return Ok(());
            };
            let _ = tx.send(());
            if fail {
                return Err(jobsafe::Error::InvalidArgument(
                    "the test failed this listing".into(),
                ));
            }
            Ok(())
        });
        rx
    }
}

#[test]
fn an_enqueue_wakes_the_runner_at_once() {
    let b = bench();
    let runner = start(Runner::new(b.pipeline.clone()).poll_every(POLL));
    for subject in ["s1", "s2", "s3"] {
        let job = b.pipeline.enqueue(subject, NewJob::new("k")).unwrap();
        wait_for(&b.pipeline, &job.id, JobStatus::Complete);
    }
    // A job made through the job records (as a service that creates its
    // jobs with their own ids does) wakes it too.
    let new = NewJob::new("k").meta(Pipeline::SUBJECT_FIELD, "s4");
    let job = b.pipeline.jobs().create(new).unwrap();
    wait_for(&b.pipeline, &job.id, JobStatus::Complete);
    let report = runner.stop(Duration::ZERO);
    assert_eq!(report.completed, 4);
    assert!(report.abandoned.is_empty() && report.errors.is_empty());
}

/// Waits for an event of `kind` of job `id`.
fn wait_for_event(pipeline: &Pipe, id: &str, kind: &'static str) {
    let (tx, rx) = mpsc::channel();
    let (jobs, id_owned) = (pipeline.jobs().clone(), id.to_owned());
    std::thread::spawn(move || {
        let mut events = jobs.subscribe(&id_owned, 0).unwrap();
        while let Some(event) = events.next_event().unwrap() {
            if event.kind == kind {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx.recv_timeout(STUCK)
        .unwrap_or_else(|_| panic!("job {id} never had a {kind:?} event"));
}

#[test]
fn a_retry_time_is_kept_by_the_clock() {
    let b = bench();
    *b.gate.fail_next.lock().unwrap() = Some(StageError::transient("the service was down"));
    let id = Arc::default();
    let looked = b.look_while(&id, |job| job.retry_at_ms.is_some(), false);
    let runner = start(Runner::new(b.pipeline.clone()).poll_every(POLL));
    let job = b.pipeline.enqueue("s", NewJob::new("k")).unwrap();
    *id.lock().unwrap() = Some(job.id.clone());
    wait_for_event(&b.pipeline, &job.id, "retry");
    // A look after the failed run finds the job waiting for its retry.
    looked
        .recv_timeout(STUCK)
        .expect("the runner never looked again");
    let queued = b.pipeline.jobs().get(&job.id).unwrap().unwrap();
    // The runner sleeps until the retry time, not until its next poll.
    b.clock.set(queued.retry_at_ms.expect("a retry time"));
    wait_for(&b.pipeline, &job.id, JobStatus::Complete);
    let report = runner.stop(Duration::ZERO);
    assert_eq!(report.completed, 1);
}

#[test]
fn a_retry_by_hand_wakes_the_runner() {
    let b = bench();
    *b.gate.fail_next.lock().unwrap() = Some(StageError::permanent("bad input"));
    // The look after the failed run fails: the runner then waits for its
    // next poll, an hour away, unless something wakes it.
    let id = Arc::default();
    let looked = b.look_while(&id, |job| job.status == JobStatus::Failed, true);
    let runner = start(Runner::new(b.pipeline.clone()).poll_every(POLL));
    let job = b.pipeline.enqueue("t", NewJob::new("k")).unwrap();
    *id.lock().unwrap() = Some(job.id.clone());
    looked
        .recv_timeout(STUCK)
        .expect("the runner never looked again");
    b.pipeline.retry(&job.id).unwrap();
    wait_for(&b.pipeline, &job.id, JobStatus::Complete);
    let report = runner.stop(Duration::ZERO);
    assert_eq!(report.completed, 1);
    assert_eq!(report.look_errors.len(), 1, "{:?}", report.look_errors);
}

#[test]
fn no_more_runs_than_the_concurrency_and_never_two_of_one_subject() {
    let b = bench();
    let entered = b.gate.close();
    // Queued before the runner starts: its first look finds them all due.
    let mut jobs = Vec::new();
    for subject in ["a", "a", "b", "c", "d"] {
        jobs.push(b.pipeline.enqueue(subject, NewJob::new("k")).unwrap().id);
    }
    let runner = start(
        Runner::new(b.pipeline.clone())
            .poll_every(POLL)
            .concurrency(2),
    );
    // The first two slots go to the first job of `a` and to `b`: the second
    // job of `a` waits for the first rather than find its subject busy.
    let mut first = vec![
        entered.recv_timeout(STUCK).unwrap(),
        entered.recv_timeout(STUCK).unwrap(),
    ];
    first.sort();
    let mut expected = vec![jobs[0].clone(), jobs[2].clone()];
    expected.sort();
    assert_eq!(first, expected);
    // No third run comes in while both slots are taken. (A wait that can
    // only miss a third run that comes late, never fail a good runner.)
    assert!(entered.recv_timeout(Duration::from_millis(200)).is_err());
    b.gate.open();
    for id in &jobs {
        wait_for(&b.pipeline, id, JobStatus::Complete);
    }
    assert_eq!(b.gate.most_inside.load(Ordering::SeqCst), 2);
    let report = runner.stop(Duration::ZERO);
    assert_eq!(report.completed, 5);
    assert_eq!(report.runs, 5, "a run found its subject busy: {report:?}");
}

#[test]
fn a_subject_busy_elsewhere_is_tried_again_when_its_lease_ends() {
    let b = bench();
    // A runner of another process holds the subject, and dies.
    let key = Key::new(["s"]).unwrap();
    let held = match b
        .pipeline
        .locks()
        .acquire(&key, Duration::from_secs(90), &LockRequest::new())
        .unwrap()
    {
        Acquire::Acquired(guard) => guard.into_handle(),
        Acquire::Held(_) => panic!("free"),
    };
    let (busy_tx, busy) = mpsc::channel();
    let busy_tx = Mutex::new(busy_tx);
    let runner = start(
        Runner::new(b.pipeline.clone())
            .poll_every(POLL)
            .on_run(move |id, run| {
                if matches!(run, Ok(run) if matches!(run.outcome, RunOutcome::Busy { .. })) {
                    let _ = busy_tx.lock().unwrap().send(id.to_owned());
                }
            }),
    );
    let job = b.pipeline.enqueue("s", NewJob::new("k")).unwrap();
    // Woken by the enqueue, the runner finds the subject busy; the next try
    // is at the lease's end, well before the next poll.
    assert_eq!(busy.recv_timeout(STUCK).unwrap(), job.id);
    let expires = b.pipeline.locks().peek(&key).unwrap().unwrap().expires_ms;
    drop(held);
    b.clock.set(expires + 1);
    wait_for(&b.pipeline, &job.id, JobStatus::Complete);
    let report = runner.stop(Duration::ZERO);
    assert_eq!(report.completed, 1);
}

#[test]
fn a_stop_lets_a_run_finish_within_the_grace_period_and_starts_nothing_more() {
    let b = bench();
    let entered = b.gate.close();
    let runner = start(Runner::new(b.pipeline.clone()).poll_every(POLL));
    let job = b.pipeline.enqueue("s", NewJob::new("k")).unwrap();
    assert_eq!(entered.recv_timeout(STUCK).unwrap(), job.id);
    runner.stop.stop(Duration::from_secs(30));
    // Enqueued after the stop: not started.
    let late = b.pipeline.enqueue("t", NewJob::new("k")).unwrap();
    b.clock.advance(Duration::from_secs(29));
    b.gate.open();
    let report = runner.join();
    assert_eq!(report.completed, 1);
    assert!(report.abandoned.is_empty());
    let jobs = b.pipeline.jobs();
    assert_eq!(
        jobs.get(&job.id).unwrap().unwrap().status,
        JobStatus::Complete
    );
    assert_eq!(
        jobs.get(&late.id).unwrap().unwrap().status,
        JobStatus::Queued
    );
}

#[test]
fn past_the_grace_period_a_run_is_handed_over_at_once() {
    let b = bench();
    // An async stage that waits for ever: only abandoning it ends the run.
    let waits = Arc::new(AtomicBool::new(true));
    let (entered_tx, entered) = mpsc::channel();
    let pipeline: Pipe = {
        let waits = Arc::clone(&waits);
        let entered_tx = Mutex::new(entered_tx);
        Pipeline::builder(
            Arc::clone(&b.store),
            Arc::new(b.clock.clone()),
            b._dir.path(),
        )
        .lease(LEASE)
        .async_stage("call", async move |ctx| {
            let _ = entered_tx.lock().unwrap().send(ctx.job_id().to_owned());
            if waits.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
        .build()
        .unwrap()
    };
    let runner = start(Runner::new(pipeline.clone()).poll_every(POLL));
    let job = pipeline.enqueue("s", NewJob::new("k")).unwrap();
    assert_eq!(entered.recv_timeout(STUCK).unwrap(), job.id);
    runner.stop.stop(Duration::from_secs(30));
    b.clock.advance(Duration::from_secs(31));
    let report = runner.join();
    assert_eq!(report.abandoned, std::slice::from_ref(&job.id));
    assert_eq!(report.completed, 0);
    // Left running, its subject free: another instance takes it over now,
    // ten minutes before the lease would have ended.
    assert_eq!(
        pipeline.jobs().get(&job.id).unwrap().unwrap().status,
        JobStatus::Running
    );
    waits.store(false, Ordering::SeqCst);
    let taken = pipeline.run_job(&job.id).unwrap();
    assert!(
        matches!(taken.outcome, RunOutcome::Completed),
        "{:?}",
        taken.outcome
    );
}

#[cfg(feature = "async")]
#[test]
fn the_async_face_runs_the_same_loop_without_a_thread_of_its_own() {
    let b = bench();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runner = Runner::new(b.pipeline.clone()).poll_every(POLL);
    let stop = runner.stopper();
    let pipeline = b.pipeline.clone();
    let report = runtime.block_on(async move {
        let running = tokio::spawn(async move { runner.run_async().await });
        let job = jobsafe::pipeline::AsyncPipeline::new(pipeline.clone())
            .enqueue("s", NewJob::new("k"))
            .await
            .unwrap();
        let jobs = jobsafe::jobs::AsyncJobState::new(pipeline.jobs().clone());
        let mut stream = jobs.subscribe(&job.id, 0).await.unwrap();
        while let Some(event) = futures_util::StreamExt::next(&mut stream).await {
            event.unwrap();
        }
        stop.stop(Duration::ZERO);
        running.await.unwrap()
    });
    assert_eq!(report.completed, 1);
}

#[test]
fn schedules_run_as_they_come_due_once_whichever_instance_looks() {
    use jobsafe::schedule::{CatchUp, Every, Schedule};
    let b = bench();
    let every_minute = || {
        Schedule::new(
            "rollup",
            Every::interval(Duration::from_secs(60)).unwrap(),
            NewJob::new("rollup"),
        )
        .unwrap()
        .catch_up(CatchUp::All)
    };
    // Two instances over one store, each with the schedule.
    let second = pipeline_on(&b.store, &b.clock, &b.gate, b._dir.path());
    let (ran_tx, ran) = mpsc::channel();
    let ran_tx = Arc::new(Mutex::new(ran_tx));
    let runner_of = |pipeline: &Pipe| {
        let ran_tx = Arc::clone(&ran_tx);
        Runner::new(pipeline.clone())
            .poll_every(POLL)
            .on_run(move |id, run| {
                if matches!(run, Ok(run) if matches!(run.outcome, RunOutcome::Completed)) {
                    let _ = ran_tx.lock().unwrap().send(id.to_owned());
                }
            })
            .schedule(every_minute())
            .unwrap()
    };
    let runners = [start(runner_of(&b.pipeline)), start(runner_of(&second))];
    // The first look stores the schedule's start: its first run is due at
    // the next whole minute, and the runners sleep until then.
    let namespace = jobsafe::Prefix::new(["pipeline", "schedules"]).unwrap();
    for _ in 0..STUCK.as_millis() {
        if !jobsafe::schedule::list(&*b.store, &namespace)
            .unwrap()
            .schedules
            .is_empty()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let first_due = (START_MS / 60_000 + 1) * 60_000;
    let state = &jobsafe::schedule::list(&*b.store, &namespace)
        .unwrap()
        .schedules[0];
    assert_eq!(state.next_due_ms, first_due);
    let mut done = Vec::new();
    for minute in 0..3 {
        b.clock.set(first_due + minute * 60_000);
        done.push(ran.recv_timeout(STUCK).expect("the run was not made"));
    }
    assert_eq!(
        done,
        (0..3)
            .map(|m| format!("rollup@{}", first_due + m * 60_000))
            .collect::<Vec<_>>()
    );
    let job = b.pipeline.jobs().get(&done[0]).unwrap().unwrap();
    assert_eq!(job.metadata["subject"], "rollup");
    let mut completed = 0;
    for runner in runners {
        completed += runner.stop(Duration::ZERO).completed;
    }
    assert_eq!(completed, 3, "a run was made twice");
    assert!(ran.try_recv().is_err());
}

/// Runs take threads of their own: with the crate's pool at its smallest,
/// more stages than it has threads work at once, and store calls of the
/// async face are still answered meanwhile.
#[test]
fn runs_hold_no_thread_of_the_crates_pool() {
    let b = bench();
    let entered = b.gate.close();
    jobsafe::pool::set_max_threads(jobsafe::pool::MIN_THREADS).unwrap();
    let subjects = ["a", "b", "c", "d"];
    let mut ids: Vec<String> = subjects
        .iter()
        .map(|s| b.pipeline.enqueue(s, NewJob::new("k")).unwrap().id)
        .collect();
    let runner = start(
        Runner::new(b.pipeline.clone())
            .poll_every(POLL)
            .concurrency(4),
    );
    let mut inside: Vec<String> = (0..4)
        .map(|_| entered.recv_timeout(STUCK).unwrap())
        .collect();
    inside.sort();
    ids.sort();
    assert_eq!(inside, ids);
    let jobs = jobsafe::jobs::AsyncJobState::new(b.pipeline.jobs().clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let job = runtime.block_on(jobs.get(&ids[0])).unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
    b.gate.open();
    for id in &ids {
        wait_for(&b.pipeline, id, JobStatus::Complete);
    }
    assert_eq!(runner.stop(Duration::ZERO).completed, 4);
}

/// A job another process queues in a shared `LogStore` wakes the runner as
/// soon as the kernel reports the journal changed: the poll is an hour away
/// and the clock never moves. (Another handle of the store stands for the
/// other process here.)
#[cfg(target_os = "linux")]
#[test]
fn a_job_queued_through_another_handle_of_a_log_store_wakes_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    another_handles_job_wakes_the_runner(&|| Arc::new(jobsafe::LogStore::open(&root).unwrap()));
}

/// The same on a `DirStore`: the kernel reports the record file renamed
/// into place.
#[cfg(target_os = "linux")]
#[test]
fn a_job_queued_through_another_handle_of_a_dir_store_wakes_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    another_handles_job_wakes_the_runner(&|| Arc::new(jobsafe::DirStore::open(&root).unwrap()));
}

#[cfg(target_os = "linux")]
fn another_handles_job_wakes_the_runner(open: &dyn Fn() -> Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let gate = Arc::new(Gate::default());
    let (mine, theirs) = (open(), open());
    let root = dir.path().join("artifacts");
    let pipeline = pipeline_on(&mine, &clock, &gate, &root);
    let other = pipeline_on(&theirs, &clock, &gate, &root);
    // Completions are told by the runner itself: a read of the test through
    // the runner's handle would catch up with the other's writes, and wake
    // the runner without the kernel's help.
    let (done_tx, done) = mpsc::channel();
    let done_tx = Mutex::new(done_tx);
    let runner = start(
        Runner::new(pipeline.clone())
            .poll_every(POLL)
            .on_run(move |id, run| {
                if matches!(run, Ok(run) if matches!(run.outcome, RunOutcome::Completed)) {
                    let _ = done_tx.lock().unwrap().send(id.to_owned());
                }
            }),
    );
    for subject in ["a", "b"] {
        // Let the runner finish its look and go to sleep first. (A runner
        // slower than this only makes the test pass without the wake-up,
        // never fail.)
        std::thread::sleep(Duration::from_millis(200));
        let job = other.enqueue(subject, NewJob::new("k")).unwrap();
        assert_eq!(
            done.recv_timeout(STUCK).expect("the runner never woke"),
            job.id
        );
    }
    assert_eq!(runner.stop(Duration::ZERO).completed, 2);
}

/// A second stop may shorten the grace period: here to nothing, which
/// abandons the run at once though the first stop gave it ten minutes.
#[test]
fn a_second_stop_shortens_the_grace_period() {
    let b = bench();
    let entered = b.gate.close();
    let runner = start(Runner::new(b.pipeline.clone()).poll_every(POLL));
    let job = b.pipeline.enqueue("s", NewJob::new("k")).unwrap();
    assert_eq!(entered.recv_timeout(STUCK).unwrap(), job.id);
    runner.stop.stop(Duration::from_secs(600));
    runner.stop.stop(Duration::ZERO);
    // A blocking stage runs to its end: the run stops at the boundary after.
    b.gate.open();
    let report = runner.join();
    assert_eq!(report.abandoned, std::slice::from_ref(&job.id));
    assert_eq!(
        b.pipeline.jobs().get(&job.id).unwrap().unwrap().status,
        JobStatus::Running
    );
}

/// Upkeep that keeps failing (here the scan of deletions waiting for a busy
/// subject) holds up no job: it is reported, and the jobs run.
#[test]
fn a_failing_upkeep_holds_up_no_job() {
    let b = bench();
    b.hooked.on_op(|op| match op {
        StoreOp::List(prefix) if prefix.segments().iter().any(|s| s == "deleting") => Err(
            jobsafe::Error::InvalidArgument("the test fails the deletions' scan".into()),
        ),
        _ => Ok(()),
    });
    let runner = start(Runner::new(b.pipeline.clone()).poll_every(POLL));
    let job = b.pipeline.enqueue("s", NewJob::new("k")).unwrap();
    wait_for(&b.pipeline, &job.id, JobStatus::Complete);
    let report = runner.stop(Duration::ZERO);
    assert_eq!(report.completed, 1);
    assert!(!report.look_errors.is_empty());
}

/// A subject freed by a runner in another process wakes a runner that found
/// it busy. No store tells other processes of a lock's release, only of a
/// job's records; the release lands a moment after the holder's last write
/// (which does wake the runner, to find the subject still held). A runner
/// that finds the holder's job ended tries again after a short pause, not
/// at its next poll, an hour away here.
#[test]
fn a_subject_freed_by_another_process_is_taken_up_after_a_short_pause() {
    use std::sync::Condvar;

    use jobsafe::store::{Applied, Changes, ListPage, Quarantined};
    use jobsafe::{Batch, Entry, Expect, LogStore, Prefix, Version};

    /// Another process's handle, whose writes of the subject lock wait
    /// while `hold` is set.
    #[derive(Debug)]
    struct HoldRelease {
        inner: LogStore,
        hold: Mutex<bool>,
        freed: Condvar,
    }

    impl HoldRelease {
        fn before_write(&self, key: &Key) {
            let segments = key.segments();
            if segments.iter().any(|s| s == "locks") && segments.last().is_some_and(|s| s == "s") {
                let mut hold = self.hold.lock().unwrap();
                while *hold {
                    hold = self.freed.wait(hold).unwrap();
                }
            }
        }

        fn set_hold(&self, on: bool) {
            *self.hold.lock().unwrap() = on;
            self.freed.notify_all();
        }
    }

    impl Store for HoldRelease {
        fn get(&self, key: &Key) -> jobsafe::Result<Option<Entry>> {
            self.inner.get(key)
        }
        fn put(&self, key: &Key, value: &[u8], expect: Expect) -> jobsafe::Result<Version> {
            self.before_write(key);
            self.inner.put(key, value, expect)
        }
        fn delete(&self, key: &Key, expect: Expect) -> jobsafe::Result<bool> {
            self.before_write(key);
            self.inner.delete(key, expect)
        }
        fn list(
            &self,
            prefix: &Prefix,
            after: Option<&Key>,
            limit: usize,
        ) -> jobsafe::Result<ListPage> {
            self.inner.list(prefix, after, limit)
        }
        fn apply(&self, batch: &Batch) -> jobsafe::Result<Vec<Applied>> {
            for op in batch.ops() {
                self.before_write(op.key());
            }
            self.inner.apply(batch)
        }
        fn quarantine(&self, key: &Key) -> jobsafe::Result<Option<Quarantined>> {
            self.inner.quarantine(key)
        }
        fn changes_by_others(&self, prefix: &Prefix) -> Option<Changes> {
            self.inner.changes_by_others(prefix)
        }
    }

    let dir = TempDir::new().unwrap();
    let root = dir.path().join("store");
    let artifacts = dir.path().join("artifacts");
    let clock = ManualClock::new(START_MS);
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let pipeline_on = |store: Arc<dyn Store>| {
        let gate = Arc::clone(&gate);
        Pipeline::builder(store, Arc::new(clock.clone()), &artifacts)
            .lease(LEASE)
            .stage("work", move |ctx| {
                let (open, opened) = &*gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = opened.wait(open).unwrap();
                }
                drop(open);
                ctx.write("out.txt", b"done")?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let mine: Arc<dyn Store> = Arc::new(LogStore::open(&root).unwrap());
    let theirs = Arc::new(HoldRelease {
        inner: LogStore::open(&root).unwrap(),
        hold: Mutex::new(false),
        freed: Condvar::new(),
    });
    let pipeline = pipeline_on(mine);
    let other = pipeline_on(Arc::clone(&theirs) as Arc<dyn Store>);

    // The other process runs job 1 of subject `s`, held inside its stage.
    let first = other.enqueue("s", NewJob::new("k")).unwrap();
    let running = {
        let (other, id) = (other.clone(), first.id.clone());
        std::thread::spawn(move || other.run_job(&id).unwrap())
    };
    let started = Instant::now();
    while other.jobs().get(&first.id).unwrap().unwrap().status != JobStatus::Running {
        assert!(started.elapsed() < STUCK, "job 1 never started");
        std::thread::sleep(Duration::from_millis(5));
    }

    // This process's runner, which polls once an hour.
    let (runs, ran) = mpsc::channel::<(String, String)>();
    let runs = Mutex::new(runs);
    let runner = Runner::new(pipeline.clone())
        .poll_every(POLL)
        .on_run(move |id, run| {
            let what = match run.map(|r| &r.outcome) {
                Ok(RunOutcome::Busy { .. }) => "busy".to_owned(),
                Ok(RunOutcome::Completed) => "completed".to_owned(),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("error {e}"),
            };
            let _ = runs.lock().unwrap().send((id.to_owned(), what));
        });
    let stop = runner.stopper();
    let service = std::thread::spawn(move || runner.run());
    let next_run_of = |id: &str| loop {
        let (ran_id, what) = ran.recv_timeout(STUCK).expect("no run");
        if ran_id == id {
            break what;
        }
    };

    // Job 2 of the same subject, queued elsewhere: found busy.
    let second = other.enqueue("s", NewJob::new("k")).unwrap();
    assert_eq!(next_run_of(&second.id), "busy");
    // Job 1 completes, and its release waits: the completion wakes the
    // runner, which finds the subject still held by a job that has ended.
    theirs.set_hold(true);
    {
        let (open, opened) = &*gate;
        *open.lock().unwrap() = true;
        opened.notify_all();
    }
    assert_eq!(next_run_of(&second.id), "busy");
    theirs.set_hold(false);
    running.join().unwrap();
    assert!(
        pipeline
            .locks()
            .peek(&Key::new(["s"]).unwrap())
            .unwrap()
            .is_none()
    );

    // A second on the clock later (far from the next poll and from the
    // lease's end), job 2 runs. A try that began before the release landed
    // may still find the subject held: a second more for it.
    let mut busy = 0;
    loop {
        clock.advance(Duration::from_secs(1));
        match next_run_of(&second.id).as_str() {
            "completed" => break,
            "busy" if busy < 5 => busy += 1,
            other => panic!("job 2: {other} after {busy} more busy runs"),
        }
    }
    stop.stop(Duration::ZERO);
    service.join().unwrap();
}
