//! What this process's subscribers are handed when a write's store call fails
//! in a way that may hide its success, and the extra operations the pipeline
//! writes in the same batch as a job.

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::json;

use super::live::Feed;
use super::*;
use crate::clock::ManualClock;
use crate::store::mem::MemStore;
use crate::store::{Applied, Batch, Entry, ListPage, Quarantined};

/// How the next write fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Applied, then the call fails.
    LostReply,
    /// Not applied; the call fails.
    LostRequest,
    /// Applied, then the call fails, and every read fails from then on.
    Gone,
}

/// A store whose next writes fail as planned.
#[derive(Debug, Default)]
struct Faulty {
    inner: MemStore,
    plan: Mutex<Vec<Fault>>,
    reads_fail: Mutex<bool>,
}

fn unreachable() -> Error {
    Error::Database {
        step: "commit",
        server: "db:5432/app".into(),
        transient: true,
        source: "connection reset".into(),
    }
}

impl Faulty {
    fn fail_next(&self, faults: &[Fault]) {
        *self.plan.lock() = faults.iter().rev().copied().collect();
    }

    fn heal(&self) {
        self.plan.lock().clear();
        *self.reads_fail.lock() = false;
    }

    fn write<T>(&self, write: impl FnOnce() -> Result<T>) -> Result<T> {
        match self.plan.lock().pop() {
            None => write(),
            Some(Fault::LostRequest) => Err(unreachable()),
            Some(fault) => {
                let _ = write();
                if fault == Fault::Gone {
                    *self.reads_fail.lock() = true;
                }
                Err(unreachable())
            }
        }
    }

    fn read<T>(&self, read: impl FnOnce() -> Result<T>) -> Result<T> {
        if *self.reads_fail.lock() {
            return Err(unreachable());
        }
        read()
    }
}

impl Store for Faulty {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.read(|| self.inner.get(key))
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        self.write(|| self.inner.put(key, value, expect))
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        self.write(|| self.inner.delete(key, expect))
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        self.read(|| self.inner.list(prefix, after, limit))
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        self.write(|| self.inner.apply(batch))
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        self.inner.quarantine(key)
    }
}

fn jobs() -> Jobs {
    let clock = ManualClock::new(1_000);
    // Re-reads sleep between tries: let those sleeps pass at once.
    clock.set_auto_advance(true);
    JobState::builder(Arc::new(Faulty::default()), Arc::new(clock))
        .resolve_within(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A running job, and a receiver of what the hub hands its subscribers.
fn running(jobs: &Jobs) -> (Claim, super::live::LiveFeed) {
    let job = jobs.create(NewJob::new("export")).unwrap();
    let claim = jobs.start(&job.id, None).unwrap();
    let live = jobs.hub.add(&job.id, 64);
    (claim, live)
}

/// The events handed over (not the requests to read the store).
fn handed(live: &super::live::LiveFeed) -> Vec<u64> {
    live.inbox
        .try_iter()
        .filter_map(|feed| match feed {
            Feed::Event(event) => Some(event.seq),
            Feed::CatchUp => None,
        })
        .collect()
}

fn kinds_stored(jobs: &Jobs, id: &str) -> Vec<String> {
    let page = jobs.events_since(id, 0).unwrap();
    page.events.into_iter().map(|e| e.kind).collect()
}

#[test]
fn a_write_that_landed_hands_its_events_over_once() {
    for faults in [&[Fault::LostReply][..], &[Fault::LostRequest]] {
        let jobs = jobs();
        let (claim, live) = running(&jobs);
        jobs.store().fail_next(faults);
        let job = jobs.progress(&claim, "half").unwrap();
        assert_eq!(handed(&live), [job.last_event_seq().unwrap()], "{faults:?}");
        assert_eq!(
            kinds_stored(&jobs, &claim.job_id),
            ["started", "progress"],
            "{faults:?}"
        );
    }
}

#[test]
fn a_write_that_did_not_land_or_whose_outcome_is_unknown_hands_nothing_over() {
    let jobs = jobs();
    let (claim, live) = running(&jobs);
    jobs.store().fail_next(&[Fault::LostRequest; 10]);
    let e = jobs.progress(&claim, "half").unwrap_err();
    jobs.store().heal();
    assert!(e.is_transient() && !e.is_ambiguous(), "{e}");
    assert_eq!(handed(&live), [] as [u64; 0]);
    assert_eq!(kinds_stored(&jobs, &claim.job_id), ["started"]);

    jobs.store().fail_next(&[Fault::Gone]);
    let e = jobs.progress(&claim, "half").unwrap_err();
    jobs.store().heal();
    assert!(e.is_ambiguous(), "{e}");
    assert_eq!(handed(&live), [] as [u64; 0]);
    // It had landed, once.
    assert_eq!(kinds_stored(&jobs, &claim.job_id), ["started", "progress"]);
}

type Jobs = JobState<Arc<Faulty>>;
type Write = fn(&Jobs, &Claim, &[BatchOp]) -> Result<()>;

#[test]
fn the_extra_operations_of_a_write_land_exactly_when_it_does() {
    let side = Key::new(["side", "x"]).unwrap();
    let extra = [BatchOp::Put {
        key: side.clone(),
        value: b"{}".to_vec(),
        expect: Expect::Any,
    }];
    let writes: [(&str, Write); 5] = [
        ("stage", |jobs, claim, extra| {
            jobs.set_stage_with(claim, "encode", false, extra).map(drop)
        }),
        ("note", |jobs, claim, extra| {
            jobs.append_event_with(claim, "note", json!({}), extra)
                .map(drop)
        }),
        ("done", |jobs, claim, extra| {
            jobs.complete_with(claim, json!({}), extra).map(drop)
        }),
        ("error", |jobs, claim, extra| {
            let error = JobError::new("no");
            jobs.fail_with(claim, error, FailureKind::Permanent, extra)
                .map(drop)
        }),
        ("requeued", |jobs, claim, extra| {
            jobs.retry_with(&claim.job_id, extra).map(drop)
        }),
    ];
    for (kind, write) in writes {
        for fault in [Fault::LostReply, Fault::LostRequest, Fault::Gone] {
            let jobs = jobs();
            let (claim, live) = running(&jobs);
            if kind == "requeued" {
                jobs.fail(&claim, JobError::new("no"), FailureKind::Permanent)
                    .unwrap();
                handed(&live);
            }
            // A lost request, every time it is sent.
            let times = if fault == Fault::LostRequest { 10 } else { 1 };
            jobs.store().fail_next(&vec![fault; times]);
            let result = write(&jobs, &claim, &extra);
            jobs.store().heal();
            let stored = kinds_stored(&jobs, &claim.job_id);
            let appended = stored.iter().filter(|k| *k == kind).count();
            let landed = jobs.store().inner.get(&side).unwrap().is_some();
            let handed = handed(&live).len();
            let case = format!("{kind}, {fault:?}: {stored:?}");
            match fault {
                Fault::LostReply => {
                    result.unwrap();
                    assert!(landed && appended == 1 && handed == 1, "{case}");
                }
                Fault::LostRequest => {
                    let e = result.unwrap_err();
                    assert!(e.is_transient() && !e.is_ambiguous(), "{case}: {e}");
                    assert!(!landed && appended == 0 && handed == 0, "{case}");
                }
                Fault::Gone => {
                    let e = result.unwrap_err();
                    assert!(e.is_ambiguous(), "{case}: {e}");
                    assert!(landed && appended == 1 && handed == 0, "{case}");
                }
            }
        }
    }
}

/// A subscribe whose future is dropped while it waits (here for the pool,
/// setting up the store's watch) leaves no subscriber behind: the hub would
/// otherwise keep its feed until the job's next event, for ever if none
/// comes.
#[cfg(feature = "async")]
#[test]
fn an_async_subscribe_dropped_while_it_waits_leaves_no_subscriber() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let jobs = jobs();
    let job = jobs.create(NewJob::new("export")).unwrap();
    let mut subscribe = Box::pin(super::stream::AsyncSubscription::start(
        jobs.clone(),
        &job.id,
        0,
    ));
    let polled = subscribe
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    assert!(matches!(polled, Poll::Pending), "it waits for the pool");
    assert_eq!(jobs.hub.subscriber_count(), 1, "subscribed first");
    drop(subscribe);
    assert_eq!(jobs.hub.subscriber_count(), 0);
}
