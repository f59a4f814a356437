//! What the feature `tracing` reports, seen through a subscriber of the test's
//! own that keeps every span and event: a span for each store call (backend,
//! operation, namespace) ending with its outcome, a lock acquired, renewed,
//! lost and released, a reservation made and refunded, a job written, a stage
//! done, a stage that failed and what happens next.
//!
//! One subscriber serves every test of this file (a global one, since the
//! keep-alive reports from its own thread); each test finds its own records
//! by the names it chose.
#![cfg(feature = "tracing")]
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jobsafe::jobs::{JobState, NewJob};
use jobsafe::ledger::ChargeRequest;
use jobsafe::lock::{Acquire, KeepAliveEvent, LockRequest};
use jobsafe::pipeline::{RunOutcome, StageError};
use jobsafe::{Expect, JobLedger, JobLock, Key, ManualClock, MemStore, Pipeline, Store};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const START_MS: u64 = 1_700_000_000_000;

/// A span or an event: its name (a span's) or message (an event's), its
/// level, and its fields as text.
#[derive(Clone, Debug)]
struct Seen {
    what: String,
    level: tracing::Level,
    fields: BTreeMap<String, String>,
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
        let seen = Seen {
            what: span.metadata().name().to_owned(),
            level: *span.metadata().level(),
            fields,
        };
        self.spans.lock().unwrap().insert(id, seen);
        Id::from_u64(id)
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
        self.events.lock().unwrap().push(Seen {
            what,
            level,
            fields,
        });
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
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

#[test]
fn each_store_call_is_a_span_that_ends_with_its_outcome() {
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
    // events of the two calls, among every test's: the conflict names the key.
    let conflicts = events_with("outcome", "conflict");
    let ours: Vec<&Seen> = conflicts
        .iter()
        .filter(|seen| {
            seen.field("error")
                .is_some_and(|e| e.contains("traced-namespace"))
        })
        .collect();
    assert_eq!(ours.len(), 1, "{conflicts:?}");
    assert_eq!(ours[0].what, "store call");
    assert!(ours[0].field("micros").is_some());
    assert!(!events_with("outcome", "ok").is_empty());
}

#[test]
fn a_lock_acquired_and_a_lease_lost_are_reported() {
    let _ = capture();
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::new(MemStore::new(), Arc::new(clock.clone()));
    let key = Key::new(["vault", "traced-lock"]).unwrap();
    let ttl = Duration::from_secs(60);
    let Acquire::Acquired(guard) = locks.acquire(&key, ttl, &LockRequest::new()).unwrap() else {
        panic!("the lock is free");
    };
    let acquired = events_with("key", "vault/traced-lock");
    assert!(
        acquired.iter().any(|seen| seen.what == "lock acquired"
            && seen.field("job_id") == Some(guard.record().job_id.as_str())),
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
        events_with("key", "vault/traced-lock")
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
    let lost: Vec<Seen> = events_with("key", "vault/traced-lock")
        .into_iter()
        .filter(|seen| seen.what.starts_with("lease lost"))
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].level, tracing::Level::WARN);
    assert_eq!(
        lost[0].field("job_id"),
        Some(guard.record().job_id.as_str())
    );
    let _ = guard.into_handle();

    // The new holder releases it.
    let thief_id = thief.record().job_id.clone();
    thief.release().unwrap();
    assert!(
        events_with("job_id", &thief_id)
            .iter()
            .any(|seen| seen.what == "lock released"),
        "no release reported"
    );
}

#[test]
fn reservations_made_and_refunded_are_reported() {
    let _ = capture();
    let ledger = JobLedger::new(MemStore::new(), Arc::new(ManualClock::new(START_MS)));
    ledger
        .reserve("lic:traced", "job-1", &ChargeRequest::new())
        .unwrap();
    ledger.refund("lic:traced", "job-1").unwrap().unwrap();
    let seen: Vec<String> = capture()
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|seen| seen.field("key").is_some_and(|k| k.contains("lic:traced")))
        .map(|seen| seen.what.clone())
        .collect();
    assert_eq!(
        seen,
        ["reservation made", "reservation removed"],
        "{seen:?}"
    );
}

#[test]
fn job_writes_and_failed_stages_are_reported() {
    let _ = capture();
    let clock = ManualClock::new(START_MS);
    let jobs = JobState::new(MemStore::new(), Arc::new(clock.clone()));
    let job = jobs.create(NewJob::new("traced").id("traced-job")).unwrap();
    jobs.start(&job.id, None).unwrap();
    let written: Vec<String> = events_with("job_id", "traced-job")
        .into_iter()
        .filter(|seen| seen.what == "job written")
        .filter_map(|seen| seen.field("operation").map(str::to_owned))
        .collect();
    assert!(written.iter().any(|op| op.contains("start")), "{written:?}");

    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(MemStore::new(), Arc::new(clock), dir.path())
        .stage("fetch", |_| Err(StageError::transient("upstream busy")))
        .build()
        .unwrap();
    let job = pipeline
        .enqueue("session", NewJob::new("episode").id("traced-stage"))
        .unwrap();
    let report = pipeline.run_job(&job.id).unwrap();
    assert!(matches!(report.outcome, RunOutcome::RetryScheduled { .. }));
    let failed: Vec<Seen> = events_with("job_id", "traced-stage")
        .into_iter()
        .filter(|seen| seen.what == "stage failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].level, tracing::Level::WARN);
    assert_eq!(failed[0].field("stage"), Some("fetch"));
    assert_eq!(failed[0].field("failures"), Some("1"));
    assert!(
        failed[0].field("then").unwrap().starts_with("Transient"),
        "{failed:?}"
    );
    assert!(
        failed[0].field("error").unwrap().contains("upstream busy"),
        "{failed:?}"
    );

    // A stage that succeeds is reported done.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(
        MemStore::new(),
        Arc::new(ManualClock::new(START_MS)),
        dir.path(),
    )
    .stage("fetch", |ctx| {
        ctx.write("page.html", b"<html>")?;
        Ok(())
    })
    .build()
    .unwrap();
    let job = pipeline
        .enqueue("session", NewJob::new("episode").id("traced-done"))
        .unwrap();
    let report = pipeline.run_job(&job.id).unwrap();
    assert!(matches!(report.outcome, RunOutcome::Completed));
    let done: Vec<Seen> = events_with("job_id", "traced-done")
        .into_iter()
        .filter(|seen| seen.what == "stage done")
        .collect();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].field("stage"), Some("fetch"));
    assert_eq!(done[0].field("artifacts"), Some("1"));
}
