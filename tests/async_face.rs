//! The async face (feature `async`): every part's async methods complete on a
//! runtime whose one thread the store never gets, event streams hold no
//! thread while they wait, and they deliver what their blocking twins do.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jobsafe::atomic::AsyncAtomicWriter;
use jobsafe::jobs::{AsyncJobState, JobError, JobFilter, JobState, NewJob, RecoveryAction};
use jobsafe::ledger::{AsyncJobLedger, ChargeRequest, Reserve};
use jobsafe::lock::{
    AsyncAcquire, AsyncJobLock, KeepAliveEvent, LockRequest, LostLease, Release, Renewal,
};
use jobsafe::store::{Applied, Batch, Changes, ListPage, Quarantined};
use jobsafe::{
    AtomicWriter, Entry, Error, Expect, JobLedger, JobLock, Key, ManualClock, MemStore, Prefix,
    Result, Store, Version,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const START_MS: u64 = 1_700_000_000_000;
const TTL: Duration = Duration::from_secs(60);
/// Only a stuck test waits this long: every wait below ends in milliseconds.
const STUCK: Duration = Duration::from_secs(60);

/// A store whose every call waits until a task of the test's runtime lets it
/// through. On a current-thread runtime, a call made on the runtime's thread
/// could never be let through: the test would hang (and fail at `STUCK`).
#[derive(Clone, Debug)]
struct Gated {
    inner: Arc<MemStore>,
    gate: UnboundedSender<std::sync::mpsc::SyncSender<()>>,
}

impl Gated {
    /// The store, and the task that lets its calls through, to spawn on the
    /// runtime under test.
    fn new() -> (Gated, impl Future<Output = ()>) {
        let (gate, mut requests): (_, UnboundedReceiver<std::sync::mpsc::SyncSender<()>>) =
            unbounded_channel();
        let keeper = async move {
            while let Some(pass) = requests.recv().await {
                let _ = pass.send(());
            }
        };
        let store = Gated {
            inner: Arc::new(MemStore::new()),
            gate,
        };
        (store, keeper)
    }

    /// Returns once the keeper let the call through. Made on the runtime's
    /// own thread, it never could: it panics after `STUCK` instead of
    /// hanging the test.
    fn wait_for_the_runtime(&self) {
        let (pass, passed) = std::sync::mpsc::sync_channel(1);
        self.gate.send(pass).expect("the keeper runs");
        passed
            .recv_timeout(STUCK)
            .expect("a store call was made on the runtime's only thread");
    }
}

impl Store for Gated {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.wait_for_the_runtime();
        self.inner.get(key)
    }
    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        self.wait_for_the_runtime();
        self.inner.put(key, value, expect)
    }
    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        self.wait_for_the_runtime();
        self.inner.delete(key, expect)
    }
    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        self.wait_for_the_runtime();
        self.inner.list(prefix, after, limit)
    }
    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        self.wait_for_the_runtime();
        self.inner.apply(batch)
    }
    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        self.wait_for_the_runtime();
        self.inner.quarantine(key)
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `test` on a current-thread runtime beside the keeper of `Gated`'s
/// gate, failing if it is stuck.
fn on_one_thread<F: Future<Output = ()>>(keeper: impl Future<Output = ()> + 'static, test: F) {
    let runtime = current_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        tokio::task::spawn_local(keeper);
        tokio::time::timeout(STUCK, test)
            .await
            .expect("an async call blocked the runtime's only thread");
    });
}

fn key(text: &str) -> Key {
    Key::new(text.split('/')).unwrap()
}

#[test]
fn store_calls_complete_while_the_store_waits_for_the_runtime() {
    let (store, keeper) = Gated::new();
    on_one_thread(keeper, async move {
        let k = key("a/b");
        let version = store
            .put_async(&k, b"1".to_vec(), Expect::Absent)
            .await
            .unwrap();
        assert_eq!(store.get_async(&k).await.unwrap().unwrap().version, version);
        let page = store
            .list_async(&Prefix::new(["a"]).unwrap(), None, 10)
            .await
            .unwrap();
        assert_eq!(page.keys, vec![k.clone()]);
        let batch = Batch::new().put(&key("a/c"), b"2".to_vec(), Expect::Absent);
        assert_eq!(store.apply_async(batch).await.unwrap().len(), 1);
        assert!(store.delete_async(&k, Expect::Any).await.unwrap());
    });
}

#[test]
fn job_state_calls_and_streams_complete_while_the_store_waits_for_the_runtime() {
    let (store, keeper) = Gated::new();
    let clock = ManualClock::new(START_MS);
    on_one_thread(keeper, async move {
        let jobs = AsyncJobState::new(JobState::new(store, Arc::new(clock.clone())));
        let job = jobs
            .create(NewJob::new("export").owner("acct-1"))
            .await
            .unwrap();
        let mut stream = jobs.subscribe(&job.id, 0).await.unwrap();
        let mut follower = jobs
            .follow(&job.id, 0, Duration::from_secs(1))
            .await
            .unwrap();
        let worker = jobs.start(&job.id, None).await.unwrap();
        jobs.set_stage(&worker, "render").await.unwrap();
        jobs.progress(&worker, "half way").await.unwrap();
        jobs.heartbeat(&worker).await.unwrap();
        jobs.append_event(&worker, "page", serde_json::json!({"n": 1}))
            .await
            .unwrap();
        jobs.complete(&worker, serde_json::json!({"pages": 1}))
            .await
            .unwrap();
        let kinds: Vec<String> = stream
            .by_ref()
            .map(|event| event.unwrap().kind)
            .collect()
            .await;
        assert_eq!(kinds, ["started", "stage", "progress", "page", "done"]);
        assert!(stream.is_finished());
        // The follower read the store before these events: it sees them at
        // its next read, a poll interval of the clock later.
        clock.set_auto_advance(true);
        let mut followed = Vec::new();
        while let Some(event) = follower.next_event().await.unwrap() {
            followed.push(event.kind);
        }
        assert_eq!(followed, kinds);
        clock.set_auto_advance(false);

        assert_eq!(jobs.get(&job.id).await.unwrap().unwrap().id, job.id);
        assert!(jobs.client_view(&job.id).await.unwrap().is_some());
        assert_eq!(jobs.list(&JobFilter::new()).await.unwrap().jobs.len(), 1);
        assert_eq!(jobs.events_since(&job.id, 0).await.unwrap().events.len(), 5);
        let failing = jobs.create(NewJob::new("export")).await.unwrap();
        let worker = jobs.start(&failing.id, None).await.unwrap();
        jobs.fail(
            &worker,
            JobError::new("no luck"),
            jobsafe::jobs::FailureKind::Permanent,
        )
        .await
        .unwrap();
        jobs.retry(&failing.id).await.unwrap();
        jobs.cancel(&failing.id).await.unwrap();
        let stale = jobs.create(NewJob::new("export")).await.unwrap();
        jobs.start(&stale.id, None).await.unwrap();
        clock.advance(Duration::from_secs(3600));
        let recovered = jobs
            .recover(Duration::from_secs(60), RecoveryAction::Requeue)
            .await
            .unwrap();
        assert_eq!(recovered.len(), 1);
        assert!(jobs.delete(&job.id).await.unwrap());
        jobs.purge(Duration::ZERO, Duration::ZERO).await.unwrap();
    });
}

#[test]
fn ledger_calls_complete_while_the_store_waits_for_the_runtime() {
    let (store, keeper) = Gated::new();
    let clock = ManualClock::new(START_MS);
    on_one_thread(keeper, async move {
        let ledger = AsyncJobLedger::new(JobLedger::new(store, Arc::new(clock.clone())));
        let request = ChargeRequest::new().fingerprint("f1");
        assert!(matches!(
            ledger.reserve("acct", "job-1", &request).await.unwrap(),
            Reserve::New(_)
        ));
        assert!(matches!(
            ledger.reserve("acct", "job-1", &request).await.unwrap(),
            Reserve::Existing(_)
        ));
        let Reserve::New(pending) = ledger
            .reserve_pending("acct", "job-2", &request)
            .await
            .unwrap()
        else {
            panic!("a new job id")
        };
        assert!(ledger.confirm_charge(&pending).await.unwrap().is_some());
        let Reserve::New(cancelled) = ledger
            .reserve_pending("acct", "job-3", &request)
            .await
            .unwrap()
        else {
            panic!("a new job id")
        };
        assert!(ledger.cancel_charge(&cancelled).await.unwrap());
        ledger
            .reserve_with("acct", "job-4", &request, |_| Ok::<_, Error>(Vec::new()))
            .await
            .unwrap();
        assert!(ledger.refund("acct", "job-1").await.unwrap().is_some());
        assert!(
            ledger
                .refund_with("acct", "job-4", |_| Ok::<_, Error>(Vec::new()))
                .await
                .unwrap()
                .is_some()
        );
        let begun = ledger.begin_refund("acct", "job-2").await.unwrap().unwrap();
        assert!(ledger.abandon_refund(&begun).await.unwrap().is_some());
        let begun = ledger.begin_refund("acct", "job-2").await.unwrap().unwrap();
        assert!(ledger.complete_refund(&begun).await.unwrap());
        ledger.reserve("acct", "job-5", &request).await.unwrap();
        let shown = ledger.lookup("acct", "job-5").await.unwrap().unwrap();
        assert!(ledger.begin_refund_of(&shown).await.unwrap().is_some());
        assert_eq!(ledger.pending().await.unwrap().reservations.len(), 1);
        assert_eq!(
            ledger.list(Some("acct")).await.unwrap().reservations.len(),
            1
        );
        ledger.reserve("acct", "job-6", &request).await.unwrap();
        let shown = ledger.lookup("acct", "job-6").await.unwrap().unwrap();
        assert!(ledger.refund_reservation(&shown).await.unwrap());
        ledger.reserve("acct", "job-7", &request).await.unwrap();
        let shown = ledger.lookup("acct", "job-7").await.unwrap().unwrap();
        assert!(
            ledger
                .refund_reservation_with(&shown, |_| Ok::<_, Error>(Vec::new()))
                .await
                .unwrap()
                .is_some()
        );
        clock.advance(Duration::from_secs(365 * 24 * 3600));
        ledger.purge_expired(Duration::ZERO).await.unwrap();
    });
}

#[test]
fn lock_calls_waits_and_keep_alives_complete_while_the_store_waits_for_the_runtime() {
    let (store, keeper) = Gated::new();
    let clock = ManualClock::new(START_MS);
    on_one_thread(keeper, async move {
        let locks = AsyncJobLock::new(JobLock::new(store, Arc::new(clock.clone())));
        let k = key("reindex/shop-1");
        let AsyncAcquire::Acquired(mut first) =
            locks.acquire(&k, TTL, &LockRequest::new()).await.unwrap()
        else {
            panic!("free")
        };
        assert!(matches!(
            first.renew(TTL).await.unwrap(),
            Renewal::Renewed(_)
        ));
        assert!(locks.peek(&k).await.unwrap().is_some());
        assert_eq!(
            locks
                .list(&Prefix::new(["reindex"]).unwrap())
                .await
                .unwrap()
                .locks
                .len(),
            1
        );

        // A waiter sleeps on the clock, holding no thread, until the lease ends.
        let waiter = {
            let (locks, k) = (locks.clone(), k.clone());
            tokio::task::spawn_local(async move {
                locks
                    .acquire_within(&k, TTL, &LockRequest::new(), Duration::from_secs(600))
                    .await
            })
        };
        tokio::task::yield_now().await;
        // Whether the waiter sleeps already or is still at its first attempt,
        // the lease is over when it looks next.
        clock.advance(TTL * 2);
        let second = waiter.await.unwrap().unwrap();
        assert_ne!(second.token(), first.token());

        // The keep-alive of the new holder renews on the clock and reports
        // the lease lost once an operator frees the lock.
        let mut keep_alive = second.keep_alive(TTL, Duration::from_secs(20)).unwrap();
        clock.advance(Duration::from_secs(20));
        let event = keep_alive.next_event().await;
        assert!(
            matches!(event, Some(KeepAliveEvent::Renewed(_))),
            "{event:?}"
        );
        locks.force_release(&k).await.unwrap();
        clock.advance(Duration::from_secs(20));
        assert!(matches!(
            keep_alive.next_event().await,
            Some(KeepAliveEvent::Lost(LostLease::Gone))
        ));
        assert!(keep_alive.next_event().await.is_none());
        assert_eq!(second.release().await.unwrap(), Release::AlreadyGone);
        drop(first.into_handle());

        // A handle released from elsewhere; an expired lock purged.
        let AsyncAcquire::Acquired(third) =
            locks.acquire(&k, TTL, &LockRequest::new()).await.unwrap()
        else {
            panic!("free")
        };
        assert_eq!(
            locks.release(&third.into_handle()).await.unwrap(),
            Release::Released
        );
        let AsyncAcquire::Acquired(fourth) =
            locks.acquire(&k, TTL, &LockRequest::new()).await.unwrap()
        else {
            panic!("free")
        };
        drop(fourth.into_handle());
        clock.advance(TTL * 2);
        let purged = locks
            .purge(&Prefix::new(["reindex"]).unwrap(), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(purged.locks.len(), 1);
    });
}

#[test]
fn a_dropped_async_guard_releases_its_lock_off_the_runtime_thread() {
    let (store, keeper) = Gated::new();
    let clock = ManualClock::new(START_MS);
    on_one_thread(keeper, async move {
        let locks = AsyncJobLock::new(JobLock::new(store, Arc::new(clock)));
        let k = key("reindex/shop-2");
        let AsyncAcquire::Acquired(guard) =
            locks.acquire(&k, TTL, &LockRequest::new()).await.unwrap()
        else {
            panic!("free")
        };
        // Its release is a store call: made here, it would wait for the
        // runtime forever.
        drop(guard);
        while locks.peek(&k).await.unwrap().is_some() {
            tokio::task::yield_now().await;
        }
    });
}

#[test]
fn an_atomic_write_completes_on_a_runtime_of_one_thread() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("state.json");
    current_thread().block_on(async {
        let writer = AsyncAtomicWriter::new(AtomicWriter::new());
        writer.write(&target, b"{\"v\":1}".to_vec()).await.unwrap();
    });
    assert_eq!(std::fs::read(&target).unwrap(), b"{\"v\":1}");
}

/// The number of threads of this process.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("Threads:"))
        .unwrap();
    line["Threads:".len()..].trim().parse().unwrap()
}

#[test]
fn waiting_streams_hold_no_thread_and_each_gets_every_event() {
    const STREAMS: usize = 2_000;
    let runtime = current_thread();
    runtime.block_on(async {
        let jobs = AsyncJobState::new(JobState::new(
            MemStore::new(),
            Arc::new(ManualClock::new(START_MS)),
        ));
        let job = jobs.create(NewJob::new("export")).await.unwrap();
        let worker = jobs.start(&job.id, None).await.unwrap();
        // Warm the pool up to what a burst of calls starts.
        let before = threads();
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            streams.push(jobs.subscribe(&job.id, 0).await.unwrap());
        }
        let readers: Vec<_> = streams
            .into_iter()
            .map(|stream| tokio::spawn(stream.map(|event| event.unwrap().kind).collect::<Vec<_>>()))
            .collect();
        tokio::task::yield_now().await;
        // Every stream waits now: none may have cost a thread.
        let waiting = threads();
        assert!(
            waiting < before + 16,
            "{STREAMS} waiting streams took {} threads",
            waiting - before
        );
        jobs.append_event(&worker, "page", serde_json::json!(1))
            .await
            .unwrap();
        jobs.complete(&worker, serde_json::json!("ok"))
            .await
            .unwrap();
        for reader in readers {
            assert_eq!(reader.await.unwrap(), ["started", "page", "done"]);
        }
    });
}

#[test]
fn a_stream_that_fell_behind_its_buffer_catches_up_from_the_store() {
    current_thread().block_on(async {
        let jobs = AsyncJobState::new(
            JobState::builder(MemStore::new(), Arc::new(ManualClock::new(START_MS)))
                .subscriber_buffer(2)
                .build()
                .unwrap(),
        );
        let job = jobs.create(NewJob::new("export")).await.unwrap();
        let worker = jobs.start(&job.id, None).await.unwrap();
        let stream = jobs.subscribe(&job.id, 0).await.unwrap();
        // Ten events while nobody reads: the buffer of two overflows.
        for n in 0..10 {
            jobs.append_event(&worker, "page", serde_json::json!(n))
                .await
                .unwrap();
        }
        jobs.complete(&worker, serde_json::json!("ok"))
            .await
            .unwrap();
        let seqs: Vec<u64> = stream.map(|event| event.unwrap().seq).collect().await;
        let first = seqs[0];
        assert_eq!(
            seqs,
            (first..first + 12).collect::<Vec<_>>(),
            "every event once, in order"
        );
    });
}

#[test]
fn a_stream_that_fell_behind_the_bound_still_ends_after_the_terminal_event() {
    current_thread().block_on(async {
        let jobs = AsyncJobState::new(
            JobState::builder(MemStore::new(), Arc::new(ManualClock::new(START_MS)))
                .max_events(2)
                .subscriber_buffer(1)
                .build()
                .unwrap(),
        );
        let job = jobs.create(NewJob::new("export")).await.unwrap();
        let worker = jobs.start(&job.id, None).await.unwrap();
        let mut stream = jobs.subscribe(&job.id, 1).await.unwrap();
        // The buffer of one holds event 2 and overflows; the store keeps
        // only the last two events, 11 and 12, so 2 is passed over.
        for n in 0..10 {
            jobs.append_event(&worker, "page", serde_json::json!(n))
                .await
                .unwrap();
        }
        jobs.complete(&worker, serde_json::json!("ok"))
            .await
            .unwrap();
        let mut seqs = Vec::new();
        for _ in 0..2 {
            seqs.push(stream.next_event().await.unwrap().unwrap().seq);
        }
        assert_eq!(seqs, [11, 12]);
        assert!(stream.is_finished(), "the stream did not end after `done`");
        assert!(stream.next_event().await.unwrap().is_none());
    });
}

#[test]
fn events_appended_through_the_blocking_face_reach_async_streams() {
    current_thread().block_on(async {
        let blocking = JobState::new(MemStore::new(), Arc::new(ManualClock::new(START_MS)));
        let jobs = AsyncJobState::new(blocking.clone());
        let job = blocking.create(NewJob::new("export")).unwrap();
        let mut stream = jobs.subscribe(&job.id, 0).await.unwrap();
        let writer = std::thread::spawn(move || {
            let worker = blocking.start(&job.id, None).unwrap();
            blocking.complete(&worker, serde_json::json!("ok")).unwrap();
        });
        let mut kinds = Vec::new();
        while let Some(event) = stream.next_event().await.unwrap() {
            kinds.push(event.kind);
        }
        writer.join().unwrap();
        assert_eq!(kinds, ["started", "done"]);
    });
}

#[test]
fn deleting_a_job_ends_its_streams() {
    current_thread().block_on(async {
        let jobs = AsyncJobState::new(JobState::new(
            MemStore::new(),
            Arc::new(ManualClock::new(START_MS)),
        ));
        // A queued job: it has no event yet, and may be deleted.
        let job = jobs.create(NewJob::new("export")).await.unwrap();
        let mut stream = jobs.subscribe(&job.id, 0).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut items = Vec::new();
            while let Some(item) = stream.next().await {
                items.push(item.map(|event| event.kind));
            }
            items
        });
        tokio::task::yield_now().await;
        assert!(jobs.delete(&job.id).await.unwrap());
        // The store says the job is gone, once; then the stream ends.
        let items = reader.await.unwrap();
        assert!(
            matches!(items.as_slice(), [Err(Error::JobNotFound { .. })]),
            "{items:?}"
        );
    });
}

#[test]
fn a_follower_stream_sees_what_another_instance_wrote_a_poll_later() {
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(MemStore::new());
    // Two job states over one store, as two processes would have: their
    // hubs do not know each other, only the store connects them.
    let here = AsyncJobState::new(JobState::new(Arc::clone(&store), Arc::new(clock.clone())));
    let there = JobState::new(store, Arc::new(clock.clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let job = there.create(NewJob::new("export")).unwrap();
        let poll = Duration::from_secs(5);
        let mut follower = here.follow(&job.id, 0, poll).await.unwrap();
        let worker = there.start(&job.id, None).unwrap();
        let reader = tokio::spawn(async move {
            let mut kinds = Vec::new();
            while let Some(event) = follower.next_event().await.unwrap() {
                kinds.push(event.kind);
            }
            kinds
        });
        there.complete(&worker, serde_json::json!("ok")).unwrap();
        // Only the clock moves the follower: each advance is one poll interval.
        while !reader.is_finished() {
            clock.advance(poll);
            tokio::task::yield_now().await;
        }
        assert_eq!(reader.await.unwrap(), ["started", "done"]);
    });
}

#[test]
fn pipeline_calls_complete_while_the_store_waits_for_the_runtime() {
    use jobsafe::Pipeline;
    use jobsafe::pipeline::{AsyncPipeline, RunOutcome};

    let (store, keeper) = Gated::new();
    let clock = ManualClock::new(START_MS);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    on_one_thread(keeper, async move {
        let pipeline = AsyncPipeline::new(
            Pipeline::builder(store, Arc::new(clock.clone()), &root)
                .stage("transcribe", |ctx| {
                    ctx.write("transcript.txt", b"hello")?;
                    Ok(())
                })
                .stage("draft", |ctx| {
                    let text = ctx.read("transcript.txt")?;
                    ctx.write("draft.md", &text.to_ascii_uppercase())?;
                    Ok(())
                })
                .build()
                .unwrap(),
        );
        let job = pipeline
            .enqueue("session-1", NewJob::new("episode"))
            .await
            .unwrap();
        let events = pipeline.jobs().subscribe(&job.id, 0).await.unwrap();
        let report = pipeline.run_job(&job.id).await.unwrap();
        assert!(
            matches!(report.outcome, RunOutcome::Completed),
            "{report:?}"
        );
        let kinds: Vec<String> = events.map(|event| event.unwrap().kind).collect().await;
        assert_eq!(kinds.first().map(String::as_str), Some("started"));
        assert_eq!(kinds.last().map(String::as_str), Some("done"));
        assert!(
            pipeline
                .checkpoint(&job.id, "draft")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            std::fs::read(pipeline.blocking().job_dir(&job.id).join("draft.md")).unwrap(),
            b"HELLO"
        );

        let second = pipeline
            .enqueue("session-2", NewJob::new("episode"))
            .await
            .unwrap();
        let pass = pipeline.run_pass().await.unwrap();
        assert_eq!(
            pass.count(|outcome| matches!(outcome, RunOutcome::Completed)),
            1
        );
        // The run released its subject's lock.
        assert!(
            pipeline
                .locks()
                .peek(&key("session-2"))
                .await
                .unwrap()
                .is_none()
        );

        let third = pipeline
            .enqueue("session-3", NewJob::new("episode"))
            .await
            .unwrap();
        pipeline.cancel(&third.id).await.unwrap();
        assert!(
            pipeline.retry(&third.id).await.is_err(),
            "a cancelled job is not retried"
        );
        pipeline.delete(&second.id).await.unwrap();
        pipeline.purge().await.unwrap();
    });
}

#[test]
fn an_async_stage_runs_inside_the_callers_runtime() {
    use jobsafe::Pipeline;
    use jobsafe::pipeline::{AsyncPipeline, RunOutcome};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    // One thread: the stage's timer and channel are driven only while this
    // thread waits for the run, as a server's main thread does.
    current_thread().block_on(async move {
        let (tell, told) = tokio::sync::oneshot::channel::<&'static str>();
        let told = Arc::new(parking_lot::Mutex::new(Some(told)));
        let pipeline = AsyncPipeline::new(
            Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(START_MS)), &root)
                .async_stage("fetch", async move |ctx| {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let told = told.lock().take().expect("one run");
                    let page = told.await.expect("the test answers");
                    ctx.write("page.html", page.as_bytes())?;
                    Ok(())
                })
                .stage("parse", |ctx| {
                    let page = ctx.read("page.html")?;
                    ctx.write("title.txt", &page[..5])?;
                    Ok(())
                })
                .build()
                .unwrap(),
        );
        let job = pipeline
            .enqueue("site-1", NewJob::new("crawl"))
            .await
            .unwrap();
        tokio::spawn(async move { tell.send("hello world") });
        let report = pipeline.run_job(&job.id).await.unwrap();
        assert!(
            matches!(report.outcome, RunOutcome::Completed),
            "{report:?}"
        );
        let dir = pipeline.blocking().job_dir(&job.id);
        assert_eq!(std::fs::read(dir.join("title.txt")).unwrap(), b"hello");
    });
}

/// A store that counts its calls, and those made where a tokio runtime is
/// current, and notes the thread that set up each watch of other writers'
/// changes (a `DirStore`'s lists and watches directories).
#[derive(Debug, Default)]
struct RuntimeSeen {
    inner: MemStore,
    calls: std::sync::atomic::AtomicUsize,
    in_runtime: std::sync::atomic::AtomicUsize,
    watches_set_up_on: std::sync::Mutex<Vec<Option<String>>>,
}

impl RuntimeSeen {
    fn seen(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.calls.fetch_add(1, SeqCst);
        if tokio::runtime::Handle::try_current().is_ok() {
            self.in_runtime.fetch_add(1, SeqCst);
        }
    }
}

impl Store for RuntimeSeen {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.seen();
        self.inner.get(key)
    }
    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        self.seen();
        self.inner.put(key, value, expect)
    }
    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        self.seen();
        self.inner.delete(key, expect)
    }
    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        self.seen();
        self.inner.list(prefix, after, limit)
    }
    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        self.seen();
        self.inner.apply(batch)
    }
    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        self.seen();
        self.inner.quarantine(key)
    }
    fn changes_by_others(&self, prefix: &Prefix) -> Option<Changes> {
        let thread = std::thread::current().name().map(str::to_owned);
        self.watches_set_up_on.lock().unwrap().push(thread);
        self.inner.changes_by_others(prefix)
    }
}

/// An async stage is polled inside the caller's runtime, but the run's own
/// store calls (lease, job record, checkpoints, a blocking stage's context)
/// are made outside it: inside, each blocking `PgStore` call would need a
/// thread of its own.
#[test]
fn a_runs_own_store_calls_are_made_outside_the_callers_runtime() {
    use jobsafe::Pipeline;
    use jobsafe::pipeline::{AsyncPipeline, RunOutcome};
    use std::sync::atomic::Ordering::SeqCst;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let store = Arc::new(RuntimeSeen::default());
    let stage_saw_runtime = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saw = Arc::clone(&stage_saw_runtime);
    let pipeline = AsyncPipeline::new(
        Pipeline::builder(
            Arc::clone(&store),
            Arc::new(ManualClock::new(START_MS)),
            &root,
        )
        // The context's calls inside an async stage (a write's fence reads
        // the job) are made inside the runtime: this stage makes none, the
        // next one does.
        .async_stage("wait", async move |_ctx| {
            saw.store(tokio::runtime::Handle::try_current().is_ok(), SeqCst);
            tokio::task::yield_now().await;
            Ok(())
        })
        .stage("write", |ctx| {
            ctx.write("page.html", b"hello")?;
            Ok(())
        })
        .build()
        .unwrap(),
    );
    current_thread().block_on(async move {
        let job = pipeline
            .enqueue("site-1", NewJob::new("crawl"))
            .await
            .unwrap();
        let report = pipeline.run_job(&job.id).await.unwrap();
        assert!(
            matches!(report.outcome, RunOutcome::Completed),
            "{report:?}"
        );
    });
    assert!(
        stage_saw_runtime.load(SeqCst),
        "the stage ran outside the runtime"
    );
    assert!(store.calls.load(SeqCst) > 0, "the run made no store call");
    assert_eq!(
        store.in_runtime.load(SeqCst),
        0,
        "store calls made inside the caller's runtime"
    );
}

#[test]
fn a_dropped_run_abandons_its_async_stage_and_the_next_run_takes_over() {
    use jobsafe::Pipeline;
    use jobsafe::jobs::JobStatus;
    use jobsafe::pipeline::{AsyncPipeline, RunOutcome, StageAction};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let test = async move {
        // The first run's stage writes half its output, then waits for an
        // answer that never comes; the second run's gets it at once.
        let (reached, mut waiting) = tokio::sync::mpsc::unbounded_channel::<()>();
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (noticed, mut notices) = tokio::sync::mpsc::unbounded_channel::<StageAction>();
        let pipeline = AsyncPipeline::new(
            Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(START_MS)), &root)
                .async_stage("fetch", {
                    let runs = Arc::clone(&runs);
                    async move |ctx| {
                        ctx.write("partial.html", b"<html>")?;
                        if runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                            let _ = reached.send(());
                            std::future::pending::<()>().await;
                        }
                        ctx.write("page.html", b"<html></html>")?;
                        Ok(())
                    }
                })
                .on_stage(move |notice| {
                    let _ = noticed.send(notice.action);
                })
                .build()
                .unwrap(),
        );
        let job = pipeline
            .enqueue("site-1", NewJob::new("crawl"))
            .await
            .unwrap();
        {
            let run = pipeline.run_job(&job.id);
            tokio::pin!(run);
            tokio::select! {
                report = &mut run => panic!("the run ended: {report:?}"),
                _ = waiting.recv() => {}
            }
            // The service shuts down: the run's future is dropped.
        }
        while notices.recv().await != Some(StageAction::Interrupted) {}
        // The lock is released after the run's last step, on the pool.
        let subject = key("site-1");
        while pipeline.locks().peek(&subject).await.unwrap().is_some() {
            tokio::task::yield_now().await;
        }
        let left = pipeline.jobs().get(&job.id).await.unwrap().unwrap();
        assert_eq!(left.status, JobStatus::Running, "left for the next run");
        let job_dir = pipeline.blocking().job_dir(&job.id);
        assert!(!job_dir.join("partial.html").exists(), "what it wrote went");
        assert!(
            pipeline
                .checkpoint(&job.id, "fetch")
                .await
                .unwrap()
                .is_none()
        );

        // The next run takes it over at once, with no lease to wait out.
        let report = pipeline.run_job(&job.id).await.unwrap();
        assert!(
            matches!(report.outcome, RunOutcome::Completed),
            "{report:?}"
        );
        assert_eq!(
            std::fs::read(job_dir.join("page.html")).unwrap(),
            b"<html></html>"
        );
    };
    current_thread().block_on(async {
        tokio::time::timeout(STUCK, test)
            .await
            .expect("the dropped run was never abandoned");
    });
}

#[test]
fn the_blocking_face_runs_an_async_stage_that_needs_no_runtime() {
    use jobsafe::Pipeline;
    use jobsafe::pipeline::RunOutcome;

    let dir = tempfile::tempdir().unwrap();
    // A channel needs no runtime: the stage waits for another thread's answer.
    let (tell, told) = tokio::sync::oneshot::channel::<&'static str>();
    let told = Arc::new(parking_lot::Mutex::new(Some(told)));
    let pipeline = Pipeline::builder(
        MemStore::new(),
        Arc::new(ManualClock::new(START_MS)),
        dir.path(),
    )
    .async_stage("wait", async move |ctx| {
        let told = told.lock().take().expect("one run");
        let answer = told.await.expect("the thread answers");
        ctx.write("answer.txt", answer.as_bytes())?;
        Ok(())
    })
    .build()
    .unwrap();
    let job = pipeline.enqueue("s", NewJob::new("k")).unwrap();
    let answering = std::thread::spawn(move || tell.send("42"));
    let report = pipeline.run_job(&job.id).unwrap();
    answering.join().unwrap().unwrap();
    assert!(
        matches!(report.outcome, RunOutcome::Completed),
        "{report:?}"
    );
    let answer = std::fs::read(pipeline.job_dir(&job.id).join("answer.txt")).unwrap();
    assert_eq!(answer, b"42");
}

/// A store that counts its reads.
#[derive(Debug, Default)]
struct CountingReads {
    inner: MemStore,
    gets: std::sync::atomic::AtomicUsize,
}

impl Store for CountingReads {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get(key)
    }
    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        self.inner.put(key, value, expect)
    }
    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        self.inner.delete(key, expect)
    }
    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        self.inner.list(prefix, after, limit)
    }
    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        self.inner.apply(batch)
    }
    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        self.inner.quarantine(key)
    }
}

#[test]
fn followers_of_a_job_share_one_read_per_poll_interval() {
    const FOLLOWERS: usize = 50;
    const PERIODS: usize = 10;
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(CountingReads::default());
    let here = AsyncJobState::new(JobState::new(Arc::clone(&store), Arc::new(clock.clone())));
    let there = JobState::new(Arc::clone(&store), Arc::new(clock.clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let test = async {
        let job = there.create(NewJob::new("export")).unwrap();
        let worker = there.start(&job.id, None).unwrap();
        let poll = Duration::from_secs(5);
        let (ready, mut all_ready) = tokio::sync::mpsc::unbounded_channel();
        let mut readers = Vec::new();
        for _ in 0..FOLLOWERS {
            let mut follower = here.follow(&job.id, 0, poll).await.unwrap();
            let ready = ready.clone();
            readers.push(tokio::spawn(async move {
                // The stored event first, then wait for the next.
                let mut kinds = vec![follower.next_event().await.unwrap().unwrap().kind];
                let _ = ready.send(());
                while let Some(event) = follower.next_event().await.unwrap() {
                    kinds.push(event.kind);
                }
                kinds
            }));
        }
        for _ in 0..FOLLOWERS {
            all_ready.recv().await.unwrap();
        }
        // Nothing moves: each period, one read of the job, not one per
        // follower. Each advance of the clock ends at most one wait of the
        // loop (it may have started its wait before or after the advance).
        let gets = || store.gets.load(std::sync::atomic::Ordering::SeqCst);
        let before = gets();
        let mut advances = 0;
        while gets() - before < PERIODS {
            clock.advance(poll);
            advances += 1;
            // Time for the loop's read (on other threads) to land, so that
            // advances stay close to reads; correctness does not hang on it.
            let seen = gets();
            for _ in 0..1_000 {
                if gets() > seen {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        let reads = gets() - before;
        assert!(
            reads <= advances + 1,
            "{FOLLOWERS} followers made {reads} reads in {advances} poll intervals"
        );
        there.complete(&worker, serde_json::json!("ok")).unwrap();
        let mut finished = 0;
        while finished < FOLLOWERS {
            clock.advance(poll);
            tokio::task::yield_now().await;
            finished = readers.iter().filter(|reader| reader.is_finished()).count();
        }
        for reader in readers {
            assert_eq!(reader.await.unwrap(), ["started", "done"]);
        }
    };
    runtime.block_on(async {
        tokio::time::timeout(STUCK, test)
            .await
            .expect("the followers' loop stopped reading");
    });
}

#[test]
fn an_abandoned_run_that_was_superseded_leaves_the_successors_files_alone() {
    use jobsafe::Pipeline;
    use jobsafe::lock::LockRequest;
    use jobsafe::pipeline::{AsyncPipeline, StageAction};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let test = async move {
        let (reached, mut waiting) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (noticed, mut notices) = tokio::sync::mpsc::unbounded_channel::<StageAction>();
        let pipeline = AsyncPipeline::new(
            Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(START_MS)), &root)
                .async_stage("fetch", async move |ctx| {
                    ctx.write("page.html", b"first runner")?;
                    let _ = reached.send(());
                    std::future::pending::<()>().await;
                    Ok(())
                })
                .on_stage(move |notice| {
                    let _ = noticed.send(notice.action);
                })
                .build()
                .unwrap(),
        );
        let job = pipeline
            .enqueue("site-1", NewJob::new("crawl"))
            .await
            .unwrap();
        let page = pipeline.blocking().job_dir(&job.id).join("page.html");
        {
            let run = pipeline.run_job(&job.id);
            tokio::pin!(run);
            tokio::select! {
                report = &mut run => panic!("the run ended: {report:?}"),
                _ = waiting.recv() => {}
            }
            // Meanwhile the first runner stalled: an operator freed its lock,
            // and a second runner took the job over and rewrote the page.
            let locks = pipeline.locks();
            let subject = key("site-1");
            locks.force_release(&subject).await.unwrap();
            let AsyncAcquire::Acquired(lease) = locks
                .acquire(&subject, TTL, &LockRequest::new())
                .await
                .unwrap()
            else {
                panic!("freed")
            };
            pipeline
                .jobs()
                .start(&job.id, Some(lease.token()))
                .await
                .unwrap();
            std::fs::write(&page, b"second runner").unwrap();
            drop(lease.into_handle());
            // Then the first runner's service shuts down.
        }
        while notices.recv().await != Some(StageAction::Interrupted) {}
        // The first run found the job no longer its own: it removed nothing.
        for _ in 0..1_000 {
            tokio::task::yield_now().await;
        }
        assert_eq!(std::fs::read(&page).unwrap(), b"second runner");
    };
    current_thread().block_on(async {
        tokio::time::timeout(STUCK, test)
            .await
            .expect("the dropped run was never abandoned");
    });
}

#[test]
fn an_async_wait_for_a_held_lock_ends_with_the_holder_named() {
    let clock = ManualClock::new(START_MS);
    // Every sleep on the clock ends at once, the clock moved to its end.
    clock.set_auto_advance(true);
    current_thread().block_on(async move {
        let locks = AsyncJobLock::new(JobLock::new(MemStore::new(), Arc::new(clock)));
        let k = key("reindex/shop-3");
        let request = LockRequest::new().actor("first");
        let AsyncAcquire::Acquired(_held) = locks.acquire(&k, TTL * 10, &request).await.unwrap()
        else {
            panic!("free")
        };
        let err = locks
            .acquire_within(&k, TTL, &LockRequest::new(), Duration::from_secs(30))
            .await
            .expect_err("held for longer than the wait");
        assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
        assert!(err.to_string().contains("first"), "{err}");
    });
}

#[test]
fn a_release_whose_future_is_dropped_unpolled_still_releases() {
    current_thread().block_on(async {
        let locks = AsyncJobLock::new(JobLock::new(
            MemStore::new(),
            Arc::new(ManualClock::new(START_MS)),
        ));
        let k = key("reindex/shop-4");
        let AsyncAcquire::Acquired(guard) =
            locks.acquire(&k, TTL, &LockRequest::new()).await.unwrap()
        else {
            panic!("free")
        };
        // A select! that took another branch drops the release unpolled: the
        // guard it holds releases on the pool as a dropped guard does.
        drop(guard.release());
        let released = async {
            while locks.peek(&k).await.unwrap().is_some() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(STUCK, released)
            .await
            .expect("the lock was never released");
    });
}

#[test]
fn a_dropped_pass_starts_no_further_job() {
    use jobsafe::Pipeline;
    use jobsafe::jobs::JobStatus;
    use jobsafe::pipeline::{AsyncPipeline, StageAction};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let test = async move {
        let (reached, mut waiting) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (noticed, mut notices) = tokio::sync::mpsc::unbounded_channel::<StageAction>();
        let pipeline = AsyncPipeline::new(
            Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(START_MS)), &root)
                .async_stage("fetch", async move |_ctx| {
                    let _ = reached.send(());
                    std::future::pending::<()>().await;
                    Ok(())
                })
                .on_stage(move |notice| {
                    let _ = noticed.send(notice.action);
                })
                .build()
                .unwrap(),
        );
        let first = pipeline.enqueue("a", NewJob::new("crawl")).await.unwrap();
        let second = pipeline.enqueue("b", NewJob::new("crawl")).await.unwrap();
        {
            let pass = pipeline.run_pass();
            tokio::pin!(pass);
            tokio::select! {
                report = &mut pass => panic!("the pass ended: {report:?}"),
                _ = waiting.recv() => {}
            }
        }
        while notices.recv().await != Some(StageAction::Interrupted) {}
        // The pass stops with the run under way: of the two jobs, one was
        // started and left running for the next pass; the other never was.
        let subjects = [key("a"), key("b")];
        for subject in &subjects {
            while pipeline.locks().peek(subject).await.unwrap().is_some() {
                tokio::task::yield_now().await;
            }
        }
        let mut statuses = Vec::new();
        for job in [&first, &second] {
            statuses.push(pipeline.jobs().get(&job.id).await.unwrap().unwrap().status);
        }
        statuses.sort_by_key(|status| status.as_str());
        assert_eq!(statuses, [JobStatus::Queued, JobStatus::Running]);
    };
    current_thread().block_on(async {
        tokio::time::timeout(STUCK, test)
            .await
            .expect("the dropped pass was never abandoned");
    });
}

/// A `LogStore`'s async writes join its group commit as futures and are
/// flushed by a thread of the pool, never by the runtime's: on a runtime of
/// one thread, sixteen tasks' writes share flushes, which could not happen if
/// that thread flushed each write as it came (all sixteen are queued before
/// any result can come back).
#[test]
fn log_store_async_writes_share_flushes_made_off_the_runtime_thread() {
    use jobsafe::testing::Counting;
    use jobsafe::vfs::StdVfs;

    const TASKS: usize = 16;
    const ROUNDS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let vfs = Counting::new(StdVfs);
    let store = jobsafe::LogStore::builder(dir.path().join("store"))
        .vfs(vfs.clone())
        .open()
        .unwrap();
    let before = vfs.counts().syncs();
    current_thread().block_on(async {
        for round in 0..ROUNDS {
            let writes: Vec<_> = (0..TASKS)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let key = key(&format!("r{round}-t{t}"));
                        let version = store
                            .put_async(&key, vec![1; 64], Expect::Absent)
                            .await
                            .unwrap();
                        // A delete and a batch through the same path.
                        let batch = Batch::new().put(&key, vec![2; 64], Expect::Version(version));
                        store.apply_async(batch).await.unwrap();
                        assert!(store.delete_async(&key, Expect::Any).await.unwrap());
                    })
                })
                .collect();
            for write in writes {
                write.await.unwrap();
            }
        }
    });
    let writes = (TASKS * ROUNDS * 3) as u64;
    let flushes = vfs.counts().syncs() - before;
    assert!(flushes > 0, "no write was flushed");
    assert!(
        flushes < writes,
        "{flushes} flushes for {writes} writes: none were shared"
    );
    for round in 0..ROUNDS {
        for t in 0..TASKS {
            assert!(
                store
                    .get(&key(&format!("r{round}-t{t}")))
                    .unwrap()
                    .is_none()
            );
        }
    }
}

/// A store whose puts wait, once started, until the test releases them.
#[derive(Clone, Debug, Default)]
struct HeldPuts {
    inner: Arc<MemStore>,
    started: Arc<tokio::sync::Notify>,
    /// Whether puts may go on, and how many finished.
    state: Arc<(parking_lot::Mutex<(bool, usize)>, parking_lot::Condvar)>,
}

impl HeldPuts {
    fn release(&self) {
        let (state, changed) = &*self.state;
        state.lock().0 = true;
        changed.notify_all();
    }

    fn wait_for_puts(&self, done: usize) {
        let (state, changed) = &*self.state;
        let mut state = state.lock();
        while state.1 < done {
            assert!(
                !changed.wait_for(&mut state, STUCK).timed_out(),
                "a released put never finished"
            );
        }
    }
}

impl Store for HeldPuts {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.inner.get(key)
    }
    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        self.started.notify_one();
        let (state, changed) = &*self.state;
        let mut held = state.lock();
        while !held.0 {
            assert!(
                !changed.wait_for(&mut held, STUCK).timed_out(),
                "a held put was never released"
            );
        }
        drop(held);
        let written = self.inner.put(key, value, expect);
        state.lock().1 += 1;
        changed.notify_all();
        written
    }
    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        self.inner.delete(key, expect)
    }
    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        self.inner.list(prefix, after, limit)
    }
    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        self.inner.apply(batch)
    }
    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        self.inner.quarantine(key)
    }
}

/// A reserve whose future is dropped while its write is under way leaves
/// that write to land, as a caller that crashed there would; the repeat
/// with the request's attempt id gets the reservation it made as new, and
/// another request finds it charged.
#[test]
fn a_reserve_dropped_during_its_write_is_found_again_by_its_attempt() {
    let store = HeldPuts::default();
    let clock = ManualClock::new(START_MS);
    let ledger = AsyncJobLedger::new(JobLedger::new(store.clone(), Arc::new(clock)));
    let attempt = jobsafe::AttemptId::new();
    let request = ChargeRequest::new().attempt(attempt.clone());
    let runtime = current_thread();
    runtime.block_on(async {
        tokio::select! {
            _ = ledger.reserve("acct", "job-1", &request) => panic!("its write is held"),
            () = store.started.notified() => {}
        }
    });
    // The call is dropped; its write, begun on the pool, goes on.
    store.release();
    store.wait_for_puts(1);
    runtime.block_on(async {
        match ledger.reserve("acct", "job-1", &request).await.unwrap() {
            Reserve::New(made) => assert_eq!(made.attempt, Some(attempt)),
            other => panic!("the repeat got {other:?}"),
        }
        let other = ledger
            .reserve("acct", "job-1", &ChargeRequest::new())
            .await
            .unwrap();
        assert!(matches!(other, Reserve::Existing(_)), "{other:?}");
    });
    let (state, _) = &*store.state;
    assert_eq!(state.lock().1, 1, "one write in all");
}

/// Neither a subscription nor a follower sets up the store's watch on the
/// thread that polls it: the runtime's, or the one that polls the crate's
/// own loops.
#[test]
fn the_store_watch_is_set_up_on_the_pool() {
    let store = Arc::new(RuntimeSeen::default());
    let jobs = AsyncJobState::new(JobState::new(
        Arc::clone(&store),
        Arc::new(ManualClock::new(START_MS)),
    ));
    current_thread().block_on(async {
        let job = jobs.create(NewJob::new("export")).await.unwrap();
        let worker = jobs.start(&job.id, None).await.unwrap();
        let mut stream = jobs.subscribe(&job.id, 0).await.unwrap();
        let mut follower = jobs
            .follow(&job.id, 0, Duration::from_secs(5))
            .await
            .unwrap();
        jobs.complete(&worker, serde_json::json!("ok"))
            .await
            .unwrap();
        while stream.next_event().await.unwrap().is_some() {}
        while follower.next_event().await.unwrap().is_some() {}
    });
    // And a runner's, for the jobs other processes queue.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = jobsafe::Pipeline::builder(
        Arc::clone(&store),
        Arc::new(ManualClock::new(START_MS)),
        dir.path(),
    )
    .stage("s", |_| Ok(()))
    .build()
    .unwrap();
    let runner = jobsafe::pipeline::Runner::new(pipeline);
    let stop = runner.stopper();
    current_thread().block_on(async {
        let run = runner.run_async();
        tokio::pin!(run);
        let waker = std::task::Waker::noop();
        let _ = run
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        stop.stop(Duration::ZERO);
        run.await;
    });
    let threads = store.watches_set_up_on.lock().unwrap().clone();
    assert!(threads.len() >= 3, "{threads:?}");
    for thread in threads {
        assert_eq!(thread.as_deref(), Some("jobsafe-pool"));
    }
}

/// A job deleted by another process ends its subscribers' streams after one
/// error, as a deletion in this process does: the stream used to fail at
/// every poll, reading the store each time, without end.
#[test]
fn a_stream_of_a_job_another_process_deletes_ends_after_one_error() {
    async fn items_after_delete(elsewhere: bool) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let here = JobState::new(jobsafe::LogStore::open(dir.path()).unwrap(), clock.clone());
        // Another process's handle on the same files.
        let there = JobState::new(jobsafe::LogStore::open(dir.path()).unwrap(), clock);
        let job = here.create(NewJob::new("k")).unwrap();
        let mut events = AsyncJobState::new(here.clone())
            .subscribe(&job.id, job.events.next_seq - 1)
            .await
            .unwrap();
        let deleter = if elsewhere { &there } else { &here };
        assert!(deleter.delete(&job.id).unwrap());
        let mut seen = Vec::new();
        for _ in 0..5 {
            match events.next_event().await {
                Ok(None) => {
                    seen.push("ended".to_owned());
                    break;
                }
                Ok(Some(event)) => seen.push(format!("event {}", event.kind)),
                Err(e) if e.to_string().contains("no job") => seen.push("no job".to_owned()),
                Err(e) => seen.push(format!("error: {e}")),
            }
        }
        seen
    }
    current_thread().block_on(async {
        assert_eq!(items_after_delete(false).await, ["no job", "ended"]);
        assert_eq!(items_after_delete(true).await, ["no job", "ended"]);
    });
}

/// The last follower of a job state dropped ends its poll loop at once, and
/// with it the loop's hold on the store: an exclusive store can be opened
/// again. The loop used to wait for its next period first (an hour here, for
/// ever on a clock that stands still).
#[test]
fn the_last_follower_dropped_ends_the_poll_loop_and_its_hold_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = jobsafe::LogStore::builder(&path)
            .exclusive(true)
            .open()
            .unwrap();
        let jobs = AsyncJobState::new(JobState::new(store, Arc::new(ManualClock::new(START_MS))));
        current_thread().block_on(async {
            let job = jobs.create(NewJob::new("export")).await.unwrap();
            let mut follower = jobs
                .follow(&job.id, 0, Duration::from_secs(3600))
                .await
                .unwrap();
            // Waiting on the poll loop, with nothing to read.
            let waiting = tokio::time::timeout(Duration::from_millis(50), follower.next_event());
            assert!(waiting.await.is_err(), "nothing to read");
            drop(follower);
        });
    }
    // Only a loop that never ends misses this bound.
    let started = std::time::Instant::now();
    loop {
        match jobsafe::LogStore::builder(&path).exclusive(true).open() {
            Ok(_) => break,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                assert!(e.is_store_in_use(), "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("still held 30 s after the last follower went: {e}"),
        }
    }
}
