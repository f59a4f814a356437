//! What the feature `tracing` reports, seen through a subscriber of the test's
//! own that keeps every span and event: a span for each store call (backend,
//! operation, namespace) ending with its outcome and flushes, a lock acquired,
//! renewed, lost and released, a reservation made and refunded, a job
//! written, a span for each stage run ending with its outcome; and that no
//! field holds an identifier or key the application supplied unless it opted
//! in.
//!
//! One subscriber serves every test of this file (a global one, since the
//! keep-alive reports from its own thread); each test finds its own records
//! by the names it chose. The tests take turns (see `serial`): whether
//! identifiers are shown is a setting of the whole process.
#![cfg(feature = "tracing")]
#![allow(clippy::unwrap_used, clippy::panic)]

#[cfg(feature = "postgres")]
mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use jobsafe::jobs::{JobState, NewJob};
use jobsafe::ledger::ChargeRequest;
use jobsafe::lock::{Acquire, KeepAliveEvent, LockRequest};
use jobsafe::pipeline::{RunOutcome, StageError};
use jobsafe::trace::{fingerprint, show_identifiers};
use jobsafe::{
    DirStore, Expect, JobLedger, JobLock, Key, LogStore, ManualClock, MemStore, Pipeline, Store,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const START_MS: u64 = 1_700_000_000_000;

/// A span or an event: its name (a span's) or message (an event's), its
/// level, its fields as text, and the span it happened in (a span's parent).
#[derive(Clone, Debug)]
struct Seen {
    what: String,
    level: tracing::Level,
    fields: BTreeMap<String, String>,
    span: Option<u64>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Keeps every span (with the fields recorded later) and every event.
#[derive(Default)]
struct Capture {
    next_id: AtomicU64,
    spans: Mutex<BTreeMap<u64, Seen>>,
    /// Each span's metadata, for `current_span` (what `Span::current` asks).
    metadata: Mutex<BTreeMap<u64, &'static Metadata<'static>>>,
    events: Mutex<Vec<Seen>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        let parent = match span.parent() {
            Some(parent) => Some(parent.into_u64()),
            None if span.is_contextual() => {
                ENTERED.with(|entered| entered.borrow().last().copied())
            }
            None => None,
        };
        let seen = Seen {
            what: span.metadata().name().to_owned(),
            level: *span.metadata().level(),
            fields,
            span: parent,
        };
        self.spans.lock().unwrap().insert(id, seen);
        self.metadata.lock().unwrap().insert(id, span.metadata());
        Id::from_u64(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        let entered = ENTERED.with(|entered| entered.borrow().last().copied());
        let metadata = entered.and_then(|id| Some((id, *self.metadata.lock().unwrap().get(&id)?)));
        match metadata {
            Some((id, metadata)) => tracing_core::span::Current::new(Id::from_u64(id), metadata),
            None => tracing_core::span::Current::none(),
        }
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(seen) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let what = fields.remove("message").unwrap_or_default();
        let level = *event.metadata().level();
        let span = ENTERED.with(|entered| entered.borrow().last().copied());
        self.events.lock().unwrap().push(Seen {
            what,
            level,
            fields,
            span,
        });
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|entered| entered.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            if let Some(at) = entered.iter().rposition(|id| *id == span.into_u64()) {
                entered.remove(at);
            }
        });
    }
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::default());
        tracing::subscriber::set_global_default(Forward(capture)).unwrap();
        capture
    })
}

/// The global subscriber: forwards to the test's capture.
struct Forward(&'static Capture);

impl Subscriber for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.0.new_span(span)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.0.record(span, values)
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.0.record_follows_from(span, follows)
    }
    fn event(&self, event: &Event<'_>) {
        self.0.event(event)
    }
    fn enter(&self, span: &Id) {
        self.0.enter(span)
    }
    fn exit(&self, span: &Id) {
        self.0.exit(span)
    }
    fn current_span(&self) -> tracing_core::span::Current {
        self.0.current_span()
    }
}

/// Makes the tests of this file take turns, and starts each with
/// identifiers hidden, as by default.
fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    show_identifiers(false);
    turn
}

/// The events whose field `name` is `value`.
fn events_with(name: &str, value: &str) -> Vec<Seen> {
    let events = capture().events.lock().unwrap();
    events
        .iter()
        .filter(|seen| seen.field(name) == Some(value))
        .cloned()
        .collect()
}

/// Where the capture stood: what came after it is a test's own (and the
/// odd late event of an earlier test's keep-alive).
#[derive(Clone, Copy)]
struct Mark {
    spans: u64,
    events: usize,
}

fn mark() -> Mark {
    let capture = capture();
    Mark {
        spans: capture.next_id.load(Ordering::Relaxed),
        events: capture.events.lock().unwrap().len(),
    }
}

/// The spans and events captured since `mark`.
fn since(mark: Mark) -> (BTreeMap<u64, Seen>, Vec<Seen>) {
    let capture = capture();
    let spans = capture
        .spans
        .lock()
        .unwrap()
        .range(mark.spans + 1..)
        .map(|(id, seen)| (*id, seen.clone()))
        .collect();
    let events = capture.events.lock().unwrap()[mark.events..].to_vec();
    (spans, events)
}

/// The store calls' end events since `mark` whose span is a `backend` call of
/// `operation`.
fn store_call_ends(mark: Mark, backend: &str, operation: &str) -> Vec<Seen> {
    let (spans, events) = since(mark);
    events
        .into_iter()
        .filter(|event| event.what == "store call")
        .filter(|event| {
            let span = event.span.and_then(|id| spans.get(&id));
            span.is_some_and(|span| {
                span.field("backend") == Some(backend) && span.field("operation") == Some(operation)
            })
        })
        .collect()
}

#[test]
fn each_store_call_is_a_span_that_ends_with_its_outcome() {
    let _turn = serial();
    let capture = capture();
    let store = MemStore::new();
    let key = Key::new(["traced-namespace", "k"]).unwrap();
    store.put(&key, b"one", Expect::Absent).unwrap();
    let refused = store.put(&key, b"two", Expect::Absent).unwrap_err();
    assert!(refused.is_conflict());

    let spans: Vec<Seen> = capture
        .spans
        .lock()
        .unwrap()
        .values()
        .filter(|seen| seen.field("namespace") == Some("traced-namespace"))
        .cloned()
        .collect();
    assert_eq!(spans.len(), 2, "{spans:?}");
    for span in &spans {
        assert_eq!(span.what, "store");
        assert_eq!(span.level, tracing::Level::DEBUG);
        assert_eq!(span.field("backend"), Some("mem"));
        assert_eq!(span.field("operation"), Some("put"));
    }
    // Each call ends with an event giving its outcome and duration. The
    // conflict names the key by its fingerprint.
    let conflict = format!("conflict on {}", fingerprint("traced-namespace/k"));
    let ours = events_with("error", &conflict);
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].what, "store call");
    assert_eq!(ours[0].field("outcome"), Some("conflict"));
    assert!(ours[0].field("micros").is_some());
    // A memory store flushes nothing, and says so.
    assert_eq!(ours[0].field("flushes"), Some("0"));
    assert!(!events_with("outcome", "ok").is_empty());
}

/// A `LogStore`'s async write is a `store` span like a blocking one's, whose
/// end reports no `flushes`: the pool thread that led its group made them.
/// The same through an `Arc` or a `Box`: they reach the store's own async
/// writes, not the pool (whose blocking write would report its flushes).
#[test]
fn a_logstore_async_write_is_a_store_span_without_flushes() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path().join("store")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(store.clone());
    let boxed = Box::new(store.clone());
    type Write<'a> = &'a dyn Fn(Key) -> jobsafe::Result<jobsafe::Version>;
    let writes: [(&str, Write<'_>); 3] = [
        ("store", &|key| {
            runtime.block_on(store.put_async(&key, b"one".to_vec(), Expect::Absent))
        }),
        ("arc", &|key| {
            runtime.block_on(shared.put_async(&key, b"one".to_vec(), Expect::Absent))
        }),
        ("box", &|key| {
            runtime.block_on(boxed.put_async(&key, b"one".to_vec(), Expect::Absent))
        }),
    ];
    for (through, write) in writes {
        let mark = mark();
        let namespace = format!("traced-log-async-{through}");
        let key = Key::new([namespace.as_str(), "k"]).unwrap();
        write(key).unwrap();

        let ends = store_call_ends(mark, "log", "put");
        let ours: Vec<&Seen> = ends
            .iter()
            .filter(|end| end.field("outcome") == Some("ok"))
            .collect();
        assert_eq!(ours.len(), 1, "through {through}: {ends:?}");
        assert_eq!(ours[0].field("flushes"), None, "through {through}");
        let (spans, _) = since(mark);
        let span = ours[0].span.and_then(|id| spans.get(&id)).unwrap();
        assert_eq!(span.field("namespace"), Some(namespace.as_str()));
    }
}

/// A call of `PgStore`'s async face runs as a task of its own, and its span
/// sits under the span of the code that awaited it.
#[cfg(feature = "postgres")]
#[test]
fn a_pgstore_async_call_is_a_store_span_under_the_callers_span() {
    use tracing::Instrument;

    let _turn = serial();
    let mark = mark();
    let mut schemas = common::pg::Schemas::default();
    let store = schemas.fast_store();
    let key = Key::new(["traced-pg", "k"]).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(
            store
                .put_async(&key, b"one".to_vec(), Expect::Absent)
                .instrument(tracing::info_span!("handler")),
        )
        .unwrap();
    runtime.shutdown_background();

    let ends = store_call_ends(mark, "postgres", "put");
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].field("outcome"), Some("ok"));
    // The flushes are the server's: not reported.
    assert_eq!(ends[0].field("flushes"), None);
    let (spans, _) = since(mark);
    let store_span = ends[0].span.and_then(|id| spans.get(&id)).unwrap();
    assert_eq!(store_span.field("namespace"), Some("traced-pg"));
    let parent = store_span.span.and_then(|id| spans.get(&id));
    assert_eq!(
        parent.map(|p| p.what.as_str()),
        Some("handler"),
        "{store_span:?}"
    );
}

#[test]
fn store_calls_say_how_many_flushes_they_made_or_waited_for() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(["flushed", "k"]).unwrap();

    // A lone writer of a log store leads its own group commit and flushes
    // the journal once; a read flushes nothing and joins no group.
    let log = LogStore::open(dir.path().join("log")).unwrap();
    let from = mark();
    log.put(&key, b"v", Expect::Absent).unwrap();
    log.get(&key).unwrap();
    let put = store_call_ends(from, "log", "put");
    assert_eq!(put.len(), 1, "{put:?}");
    assert_eq!(put[0].field("flushes"), Some("1"));
    assert_eq!(put[0].field("group"), Some("led"));
    let get = store_call_ends(from, "log", "get");
    assert_eq!(get[0].field("flushes"), Some("0"));
    assert_eq!(get[0].field("group"), Some("none"));

    // Writers that queue behind a flush join the next group: each call
    // counts the flush it waited for, made by the leader.
    let log = Arc::new(log);
    let from = mark();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for j in 0..20 {
                    let key = Key::new(["flushed", &format!("w{i}-{j}")]).unwrap();
                    log.put(&key, b"v", Expect::Absent).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let puts = store_call_ends(from, "log", "put");
    assert_eq!(puts.len(), 160);
    for put in &puts {
        let flushes: u32 = put.field("flushes").unwrap().parse().unwrap();
        assert!(flushes >= 1, "{put:?}");
        assert!(
            matches!(put.field("group"), Some("led" | "joined")),
            "{put:?}"
        );
    }

    // A directory store counts its fsyncs (file, then directories) and
    // has no group commit.
    let store = DirStore::open(dir.path().join("dir")).unwrap();
    let from = mark();
    store.put(&key, b"v", Expect::Absent).unwrap();
    let put = store_call_ends(from, "dir", "put");
    assert_eq!(put.len(), 1, "{put:?}");
    let flushes: u32 = put[0].field("flushes").unwrap().parse().unwrap();
    assert!(flushes >= 2, "{put:?}");
    assert_eq!(put[0].field("group"), None);
}

#[test]
fn a_lock_acquired_and_a_lease_lost_are_reported() {
    let _turn = serial();
    let _ = capture();
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::new(MemStore::new(), Arc::new(clock.clone()));
    let key = Key::new(["vault", "traced-lock"]).unwrap();
    let key_seen = fingerprint("vault/traced-lock");
    let ttl = Duration::from_secs(60);
    let Acquire::Acquired(guard) = locks.acquire(&key, ttl, &LockRequest::new()).unwrap() else {
        panic!("the lock is free");
    };
    let holder_seen = fingerprint(&guard.record().job_id);
    let acquired = events_with("key", &key_seen);
    assert!(
        acquired
            .iter()
            .any(|seen| seen.what == "lock acquired" && seen.field("job_id") == Some(&holder_seen)),
        "{acquired:?}"
    );

    // A renewal, then someone frees the lock and takes it; the keep-alive's
    // next renewal finds it gone.
    let keep_alive = guard.keep_alive(ttl, Duration::from_secs(20)).unwrap();
    clock.advance(Duration::from_secs(20));
    assert!(matches!(
        keep_alive.next_event(),
        Some(KeepAliveEvent::Renewed(_))
    ));
    assert!(
        events_with("key", &key_seen)
            .iter()
            .any(|seen| seen.what == "lease renewed"),
        "no renewal reported"
    );
    locks.force_release(&key).unwrap();
    let Acquire::Acquired(thief) = locks.acquire(&key, ttl, &LockRequest::new()).unwrap() else {
        panic!("the lock was freed");
    };
    clock.advance(Duration::from_secs(20));
    assert!(matches!(
        keep_alive.next_event(),
        Some(KeepAliveEvent::Lost(_))
    ));
    let lost: Vec<Seen> = events_with("key", &key_seen)
        .into_iter()
        .filter(|seen| seen.what.starts_with("lease lost"))
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].level, tracing::Level::WARN);
    assert_eq!(lost[0].field("job_id"), Some(holder_seen.as_str()));
    let _ = guard.into_handle();

    // The new holder releases it.
    let thief_seen = fingerprint(&thief.record().job_id);
    thief.release().unwrap();
    assert!(
        events_with("job_id", &thief_seen)
            .iter()
            .any(|seen| seen.what == "lock released"),
        "no release reported"
    );
}

#[test]
fn reservations_made_and_refunded_are_reported() {
    let _turn = serial();
    let from = mark();
    let ledger = JobLedger::new(MemStore::new(), Arc::new(ManualClock::new(START_MS)));
    ledger
        .reserve("lic:traced", "job-1", &ChargeRequest::new())
        .unwrap();
    ledger.refund("lic:traced", "job-1").unwrap().unwrap();
    let account = fingerprint("lic:traced");
    let job = fingerprint("job-1");
    let seen: Vec<String> = since(from)
        .1
        .into_iter()
        .filter(|seen| seen.field("account") == Some(&account))
        .inspect(|seen| assert_eq!(seen.field("job_id"), Some(job.as_str())))
        .map(|seen| seen.what)
        .collect();
    assert_eq!(
        seen,
        ["reservation made", "reservation removed"],
        "{seen:?}"
    );
}

#[test]
fn job_writes_are_reported() {
    let _turn = serial();
    let _ = capture();
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(START_MS)));
    let job = jobs.create(NewJob::new("traced").id("traced-job")).unwrap();
    jobs.start(&job.id, None).unwrap();
    let written: Vec<String> = events_with("job_id", &fingerprint("traced-job"))
        .into_iter()
        .filter(|seen| seen.what == "job written")
        .filter_map(|seen| seen.field("operation").map(str::to_owned))
        .collect();
    assert!(written.iter().any(|op| op.contains("start")), "{written:?}");
}

/// The `stage` spans since `mark`, in order, each with its end events.
fn stage_runs(mark: Mark) -> Vec<(Seen, Vec<Seen>)> {
    let (spans, events) = since(mark);
    spans
        .into_iter()
        .filter(|(_, span)| span.what == "stage")
        .map(|(id, span)| {
            let ends = events
                .iter()
                .filter(|event| event.span == Some(id) && event.what == "stage ended")
                .cloned()
                .collect();
            (span, ends)
        })
        .collect()
}

#[test]
fn each_stage_run_is_a_span_that_ends_with_its_outcome() {
    let _turn = serial();
    let clock = ManualClock::new(START_MS);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(MemStore::new(), Arc::new(clock.clone()), dir.path())
        .stage("fetch", |ctx| {
            ctx.write("page.html", b"<html>")?;
            Ok(())
        })
        .stage("parse", |ctx| {
            if ctx.attempt() == 1 {
                return Err(StageError::transient("upstream busy").code("busy"));
            }
            ctx.write("parsed.json", b"{}")?;
            Ok(())
        })
        .build()
        .unwrap();
    let job = pipeline
        .enqueue("session", NewJob::new("episode").id("traced-stage"))
        .unwrap();
    let from = mark();
    let first = pipeline.run_job(&job.id).unwrap();
    let RunOutcome::RetryScheduled { retry_at_ms, .. } = first.outcome else {
        panic!("{first:?}");
    };
    clock.advance(Duration::from_secs(3600));
    let second = pipeline.run_job(&job.id).unwrap();
    assert!(
        matches!(second.outcome, RunOutcome::Completed),
        "{second:?}"
    );

    // fetch and parse by attempt 1; parse again by attempt 2 (fetch's
    // checkpoint verified: skipped, not run).
    let runs = stage_runs(from);
    let described: Vec<(&str, &str)> = runs
        .iter()
        .map(|(span, _)| (span.field("stage").unwrap(), span.field("attempt").unwrap()))
        .collect();
    assert_eq!(described, [("fetch", "1"), ("parse", "1"), ("parse", "2")]);
    for (span, ends) in &runs {
        assert_eq!(span.level, tracing::Level::INFO);
        assert_eq!(
            span.field("job"),
            Some(fingerprint("traced-stage").as_str())
        );
        assert_eq!(ends.len(), 1, "{span:?}: {ends:?}");
        assert!(ends[0].field("micros").is_some());
    }
    let (_, done) = &runs[0];
    assert_eq!(done[0].field("outcome"), Some("done"));
    assert_eq!(done[0].field("artifacts"), Some("1"));

    // The failure: the error's class, code and (fingerprinted) message, and
    // what happens next.
    let (_, failed) = &runs[1];
    assert_eq!(failed[0].level, tracing::Level::WARN);
    assert_eq!(failed[0].field("outcome"), Some("failed"));
    assert_eq!(failed[0].field("then"), Some("retry"));
    assert_eq!(
        failed[0].field("retry_at_ms"),
        Some(retry_at_ms.to_string().as_str())
    );
    assert_eq!(failed[0].field("failures"), Some("1"));
    assert_eq!(failed[0].field("code"), Some("busy"));
    assert_eq!(failed[0].field("class"), Some("transient"));
    assert_eq!(
        failed[0].field("error"),
        Some(fingerprint("upstream busy").as_str())
    );
    assert_eq!(runs[2].1[0].field("outcome"), Some("done"));

    // A permanent failure: failed for good.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(MemStore::new(), Arc::new(clock), dir.path())
        .stage("fetch", |_| Err(StageError::permanent("gone")))
        .build()
        .unwrap();
    let job = pipeline
        .enqueue("session", NewJob::new("episode").id("traced-failed"))
        .unwrap();
    let from = mark();
    pipeline.run_job(&job.id).unwrap();
    let runs = stage_runs(from);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let (_, ends) = &runs[0];
    assert_eq!(ends[0].field("class"), Some("permanent"));
    assert_eq!(ends[0].field("then"), Some("failed for good"));
}

/// What the application supplies in `every_part_runs`: ids, accounts, key
/// segments and a stage's error message.
const SUPPLIED: [&str; 9] = [
    "vault-7f3a",
    "lock-9c1e",
    "acct-51d2",
    "charge-0b8e",
    "job-e4a9",
    "subject-26fd",
    "stage-job-8d07",
    "attempt-3c6b",
    "message-a17f",
];

/// Locks (a keep-alive's renewal among them), the ledger, job transitions
/// and a pipeline whose stage fails, then succeeds, each given the values in
/// `SUPPLIED`.
fn every_part_runs() {
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(MemStore::new());
    let locks = JobLock::new(Arc::clone(&store), Arc::new(clock.clone()));
    let key = Key::new(["vault-7f3a", "lock-9c1e"]).unwrap();
    let ttl = Duration::from_secs(60);
    let Acquire::Acquired(guard) = locks.acquire(&key, ttl, &LockRequest::new()).unwrap() else {
        panic!("the lock is free");
    };
    let keep_alive = guard.keep_alive(ttl, Duration::from_secs(20)).unwrap();
    clock.advance(Duration::from_secs(20));
    assert!(matches!(
        keep_alive.next_event(),
        Some(KeepAliveEvent::Renewed(_))
    ));
    keep_alive.stop();
    guard.release().unwrap();

    let ledger = JobLedger::new(Arc::clone(&store), Arc::new(clock.clone()));
    let request = ChargeRequest::new().attempt("attempt-3c6b".parse().unwrap());
    ledger
        .reserve("acct-51d2", "charge-0b8e", &request)
        .unwrap();
    // A second reserve with the same id finds the first: refused, a conflict.
    ledger
        .reserve("acct-51d2", "charge-0b8e", &ChargeRequest::new())
        .unwrap();
    ledger.refund("acct-51d2", "charge-0b8e").unwrap().unwrap();

    let jobs = JobState::new(Arc::clone(&store), Arc::new(clock.clone()));
    let job = jobs.create(NewJob::new("kind").id("job-e4a9")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    jobs.complete(&worker, serde_json::json!({})).unwrap();
    // A job that is not there: an error naming it.
    assert!(jobs.start("job-e4a9-missing", None).is_err());

    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(store, Arc::new(clock.clone()), dir.path())
        .stage("fetch", |ctx| {
            if ctx.attempt() == 1 {
                return Err(StageError::transient("message-a17f"));
            }
            ctx.write("page.html", b"<html>")?;
            Ok(())
        })
        .build()
        .unwrap();
    let job = pipeline
        .enqueue("subject-26fd", NewJob::new("episode").id("stage-job-8d07"))
        .unwrap();
    pipeline.run_job(&job.id).unwrap();
    clock.advance(Duration::from_secs(3600));
    let report = pipeline.run_job(&job.id).unwrap();
    assert!(
        matches!(report.outcome, RunOutcome::Completed),
        "{report:?}"
    );
}

/// Every field of every span and event since `mark` that holds one of the
/// values in `SUPPLIED`, as `(what, field, value)`.
fn supplied_values_seen(mark: Mark) -> Vec<(String, String, String)> {
    let (spans, events) = since(mark);
    spans
        .into_values()
        .chain(events)
        .flat_map(|seen| {
            seen.fields
                .into_iter()
                .filter(|(_, value)| SUPPLIED.iter().any(|supplied| value.contains(supplied)))
                .map(move |(field, value)| (seen.what.clone(), field, value))
        })
        .collect()
}

#[test]
fn no_field_holds_an_identifier_the_application_supplied_by_default() {
    let _turn = serial();
    let from = mark();
    every_part_runs();
    let (spans, events) = since(from);
    // The run was seen: every kind of record, under its fingerprints.
    let whats: Vec<&str> = spans
        .values()
        .chain(&events)
        .map(|seen| seen.what.as_str())
        .collect();
    for what in [
        "store",
        "store call",
        "lock acquired",
        "lease renewed",
        "lock released",
        "reservation made",
        "reservation removed",
        "job written",
        "stage",
        "stage ended",
    ] {
        assert!(whats.contains(&what), "no {what:?} among {whats:?}");
    }
    assert!(
        events
            .iter()
            .any(|seen| seen.field("job_id") == Some(fingerprint("job-e4a9").as_str())),
        "{events:?}"
    );
    let seen = supplied_values_seen(from);
    assert!(seen.is_empty(), "identifiers in fields: {seen:#?}");
}

#[test]
fn identifiers_are_shown_once_the_application_opts_in() {
    let _turn = serial();
    show_identifiers(true);
    let from = mark();
    every_part_runs();
    show_identifiers(false);
    let seen = supplied_values_seen(from);
    for supplied in SUPPLIED {
        assert!(
            seen.iter().any(|(_, _, value)| value.contains(supplied)),
            "{supplied} not shown: {seen:#?}"
        );
    }
}
