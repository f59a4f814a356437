//! A write whose session could not be ended may land later: the managers keep
//! their calls' outcome open until a read rules it out, whatever fails after
//! it. These tests need no server: a store in memory fails writes as a
//! `PgStore` does, holding a "late" one back to land when the test says.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::failure::unfenced;
use crate::attempt::AttemptId;
use crate::clock::{ManualClock, SharedClock};
use crate::error::{Error, Result};
use crate::jobs::{JobState, NewJob};
use crate::key::{Key, Prefix};
use crate::ledger::{ChargeRequest, JobLedger, Reserve};
use crate::lock::{Acquire, JobLock, LockRequest};
use crate::resolve::LateWrite;
use crate::store::mem::MemStore;
use crate::store::{Applied, Batch, Entry, Expect, ListPage, Quarantined, Store, Version};

/// What the store does with one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// Not applied now, and failed as a write whose session could not be
    /// ended: it lands when the test calls [`Script::land_late`].
    Late,
    /// Not applied; failed transiently.
    Lost,
    /// Applied, then failed transiently: the reply lost.
    LostReply,
}

/// Another actor's step, run during the next scripted write, once that write
/// is held back or applied and before its failure is returned.
type Meanwhile = Box<dyn FnOnce() + Send>;

/// A store in memory whose next writes fail as scripted; reads pass.
#[derive(Default)]
struct Script {
    /// Shared, so that other actors can use the store directly.
    inner: Arc<MemStore>,
    plan: Mutex<Vec<Act>>,
    late: Mutex<Vec<Batch>>,
    meanwhile: Mutex<Option<Meanwhile>>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script").finish_non_exhaustive()
    }
}

fn lost() -> Error {
    Error::Database {
        step: "commit",
        server: "db:5432/app".into(),
        transient: true,
        source: "connection reset".into(),
    }
}

impl Script {
    fn fail_next(&self, acts: &[Act]) {
        *self.plan.lock() = acts.iter().rev().copied().collect();
    }

    /// Runs `step` during the next scripted write (see [`Meanwhile`]).
    fn meanwhile(&self, step: impl FnOnce() + Send + 'static) {
        *self.meanwhile.lock() = Some(Box::new(step));
    }

    /// Lands the writes held back, each by its own precondition, as the
    /// server would run them now.
    fn land_late(&self) {
        for batch in self.late.lock().drain(..) {
            let _ = self.inner.apply(&batch);
        }
    }

    fn write<T>(
        &self,
        batch: impl FnOnce() -> Batch,
        write: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Some(act) = self.plan.lock().pop() else {
            return write();
        };
        let failed = match act {
            Act::Lost => lost(),
            Act::Late => {
                self.late.lock().push(batch());
                unfenced(lost())
            }
            Act::LostReply => {
                write()?;
                lost()
            }
        };
        let step = self.meanwhile.lock().take();
        if let Some(step) = step {
            step();
        }
        Err(failed)
    }
}

impl Store for Script {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.inner.get(key)
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        let batch = || Batch::new().put(key, value.to_vec(), expect);
        self.write(batch, || self.inner.put(key, value, expect))
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        let batch = || Batch::new().delete(key, expect);
        self.write(batch, || self.inner.delete(key, expect))
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        self.inner.list(prefix, after, limit)
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        self.write(|| batch.clone(), || self.inner.apply(batch))
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        self.inner.quarantine(key)
    }
}

/// A clock whose re-read pauses pass at once.
fn clock() -> SharedClock {
    let clock = ManualClock::new(1_000);
    clock.set_auto_advance(true);
    Arc::new(clock)
}

/// A late write, then plain failures until the call gives up writing.
const LATE_THEN_LOST: [Act; 3] = [Act::Late, Act::Lost, Act::Lost];

fn attempt(name: &str) -> AttemptId {
    name.parse().unwrap()
}

#[test]
fn a_reserve_whose_first_write_may_land_later_is_ambiguous_and_is_found_when_repeated() {
    let store = Arc::new(Script::default());
    let ledger = JobLedger::builder(Arc::clone(&store), clock())
        .resolve_within(Duration::from_secs(5))
        .build()
        .unwrap();
    let request = ChargeRequest::new().attempt(attempt("reserve-1"));
    store.fail_next(&LATE_THEN_LOST);
    let e = ledger.reserve("acct", "job-1", &request).unwrap_err();
    assert!(e.is_ambiguous(), "{e}");
    assert_eq!(e.attempt_id(), Some(&attempt("reserve-1")));
    // It lands, and the same call, repeated, finds it its own.
    store.land_late();
    match ledger.reserve("acct", "job-1", &request).unwrap() {
        Reserve::New(reservation) => assert_eq!(reservation.job_id, "job-1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refund_whose_first_delete_may_land_later_is_ambiguous() {
    let store = Arc::new(Script::default());
    let ledger = JobLedger::builder(Arc::clone(&store), clock())
        .resolve_within(Duration::from_secs(5))
        .build()
        .unwrap();
    ledger
        .reserve("acct", "job-1", &ChargeRequest::new())
        .unwrap();
    store.fail_next(&LATE_THEN_LOST);
    let e = ledger.refund("acct", "job-1").unwrap_err();
    assert!(e.is_ambiguous(), "{e}");
    store.land_late();
    assert!(ledger.lookup("acct", "job-1").unwrap().is_none());
}

#[test]
fn an_acquire_whose_first_write_may_land_later_is_ambiguous_and_is_found_when_repeated() {
    let store = Arc::new(Script::default());
    let locks = JobLock::builder(Arc::clone(&store), clock())
        .resolve_within(Duration::from_secs(5))
        .build()
        .unwrap();
    let key = Key::new(["index"]).unwrap();
    let request = LockRequest::new().attempt(attempt("acquire-1"));
    store.fail_next(&LATE_THEN_LOST);
    let ttl = Duration::from_secs(60);
    let e = locks.acquire(&key, ttl, &request).map(drop).unwrap_err();
    assert!(e.is_ambiguous(), "{e}");
    assert_eq!(e.attempt_id(), Some(&attempt("acquire-1")));
    store.land_late();
    assert!(matches!(
        locks.acquire(&key, ttl, &request).unwrap(),
        Acquire::Acquired(_)
    ));
}

#[test]
fn a_renewal_and_a_release_whose_first_write_may_land_later_are_ambiguous() {
    let store = Arc::new(Script::default());
    let locks = JobLock::builder(Arc::clone(&store), clock())
        .resolve_within(Duration::from_secs(5))
        .build()
        .unwrap();
    let key = Key::new(["index"]).unwrap();
    let ttl = Duration::from_secs(60);
    let Acquire::Acquired(guard) = locks.acquire(&key, ttl, &LockRequest::new()).unwrap() else {
        panic!("not acquired");
    };
    let handle = guard.handle();
    store.fail_next(&LATE_THEN_LOST);
    let e = locks.renew(&handle, ttl).map(drop).unwrap_err();
    assert!(e.is_ambiguous(), "renew: {e}");
    // The renewal does not land after all: the release's delete is made on
    // the version the lock still has.
    store.late.lock().clear();
    store.fail_next(&LATE_THEN_LOST);
    let e = locks.release(&handle).map(drop).unwrap_err();
    assert!(e.is_ambiguous(), "release: {e}");
    store.land_late();
    assert!(store.inner.get(&locks_key(&locks, &key)).unwrap().is_none());
}

/// Where the lock at `key` is stored.
fn locks_key(locks: &JobLock<Arc<Script>>, key: &Key) -> Key {
    locks.stored_key(key).unwrap()
}

#[test]
fn a_create_and_a_job_write_whose_first_write_may_land_later_are_ambiguous() {
    let store = Arc::new(Script::default());
    let jobs = JobState::builder(Arc::clone(&store), clock())
        .resolve_within(Duration::from_secs(5))
        .build()
        .unwrap();
    let new = NewJob::new("export").attempt(attempt("create-1"));
    store.fail_next(&LATE_THEN_LOST);
    let e = jobs.create(new.clone()).unwrap_err();
    assert!(e.is_ambiguous(), "create: {e}");
    store.land_late();
    let job = jobs.create(new).unwrap();

    let claim = jobs.start(&job.id, None).unwrap();
    store.fail_next(&LATE_THEN_LOST);
    let e = jobs.progress(&claim, "half").unwrap_err();
    assert!(e.is_ambiguous(), "progress: {e}");
    store.land_late();
    let kinds: Vec<String> = jobs
        .events_since(&job.id, 0)
        .unwrap()
        .events
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert_eq!(kinds, ["started", "progress"]);
}

#[test]
fn a_late_write_stays_open_until_a_read_shows_another_state() {
    let key = Key::new(["k"]).unwrap();
    let id = attempt("a");
    let mut late = LateWrite::default();
    late.failed(&lost(), Expect::Version(Version::new(1)));
    assert!(
        !late.end("put", &key, &id, lost()).is_ambiguous(),
        "a plain failure"
    );

    late.failed(&unfenced(lost()), Expect::Version(Version::new(1)));
    late.stored(Expect::Version(Version::new(1)));
    assert!(
        late.end("put", &key, &id, lost()).is_ambiguous(),
        "still on its version"
    );

    late.stored(Expect::Version(Version::new(2)));
    assert!(
        !late.end("put", &key, &id, lost()).is_ambiguous(),
        "moved on"
    );
    assert!(late.nothing_to_write("put", &key, &id).is_none());

    // A write made on absence lands whenever the key is absent again.
    late.failed(&unfenced(lost()), Expect::Absent);
    late.stored(Expect::Version(Version::new(3)));
    assert!(
        late.end("put", &key, &id, lost()).is_ambiguous(),
        "absent again later"
    );
}

#[test]
fn an_acquire_whose_write_on_absence_may_land_later_is_ambiguous_though_another_holds_the_lock() {
    use crate::lock::Release;

    let store = Arc::new(Script::default());
    let locks_a = JobLock::builder(Arc::clone(&store), clock())
        .resolve_within(Duration::from_secs(5))
        .build()
        .unwrap();
    let locks_b = JobLock::builder(Arc::clone(&store.inner), clock())
        .build()
        .unwrap();
    let key = Key::new(["index"]).unwrap();
    let ttl = Duration::from_secs(60);
    // B acquires while A's write is held back.
    let b_handle: Arc<Mutex<Option<crate::lock::LockHandle>>> = Arc::default();
    let (slot, locks, lock_key) = (Arc::clone(&b_handle), locks_b.clone(), key.clone());
    store.meanwhile(move || {
        let Acquire::Acquired(guard) = locks.acquire(&lock_key, ttl, &LockRequest::new()).unwrap()
        else {
            panic!("B: the lock was free");
        };
        *slot.lock() = Some(guard.into_handle());
    });
    store.fail_next(&[Act::Late]);
    let request = LockRequest::new().attempt(attempt("a-1"));
    // B holds the lock now, but A's write lands as soon as B releases it:
    // A is not told "held", but that its outcome is open.
    let e = locks_a.acquire(&key, ttl, &request).map(drop).unwrap_err();
    assert!(e.is_ambiguous(), "{e}");
    assert_eq!(e.attempt_id(), Some(&attempt("a-1")));
    let b = b_handle.lock().take().unwrap();
    assert_eq!(locks_b.release(&b).unwrap(), Release::Released);
    store.land_late();
    // It landed, and A's repeat with its attempt id finds it its own.
    assert!(matches!(
        locks_a.acquire(&key, ttl, &request).unwrap(),
        Acquire::Acquired(_)
    ));
}

/// A reserve whose caller's effect fails after a write of the call (with the
/// effect's operations) may still land is ambiguous, not the effect's error.
#[test]
fn a_reserve_whose_effect_fails_after_a_write_that_may_land_later_is_ambiguous() {
    let store = Arc::new(Script::default());
    let ledger = JobLedger::builder(Arc::clone(&store), clock())
        .resolve_within(Duration::from_secs(5))
        .build()
        .unwrap();
    store.fail_next(&[Act::Late]);
    let mut calls = 0;
    let e = ledger
        .reserve_with("acct", "job-1", &ChargeRequest::new(), |_| {
            calls += 1;
            if calls == 1 {
                Ok(Vec::new())
            } else {
                Err(lost())
            }
        })
        .unwrap_err();
    assert!(e.is_ambiguous(), "{e}");
    store.land_late();
    assert!(
        ledger.lookup("acct", "job-1").unwrap().is_some(),
        "it landed"
    );
}

/// A force release whose delete landed, its reply lost, while a waiter took
/// the freed lock: the record it removed is returned, and the waiter's lock
/// is left alone.
#[test]
fn a_force_release_whose_reply_was_lost_leaves_the_next_holder_alone() {
    let store = Arc::new(Script::default());
    let admin = JobLock::builder(Arc::clone(&store), clock())
        .build()
        .unwrap();
    let waiter = JobLock::builder(Arc::clone(&store.inner), clock())
        .build()
        .unwrap();
    let key = Key::new(["index"]).unwrap();
    let ttl = Duration::from_secs(60);
    let Acquire::Acquired(stuck) = admin.acquire(&key, ttl, &LockRequest::new()).unwrap() else {
        panic!("the lock was free");
    };
    let stuck = stuck.into_handle();
    // The waiter takes the lock the lost-reply delete freed.
    let waiter_job: Arc<Mutex<Option<String>>> = Arc::default();
    let (slot, locks, lock_key) = (Arc::clone(&waiter_job), waiter.clone(), key.clone());
    store.meanwhile(move || {
        let Acquire::Acquired(guard) = locks.acquire(&lock_key, ttl, &LockRequest::new()).unwrap()
        else {
            panic!("the waiter: the lock was free");
        };
        *slot.lock() = Some(guard.into_handle().job_id);
    });
    store.fail_next(&[Act::LostReply]);
    let removed = admin.force_release(&key).unwrap().unwrap();
    assert_eq!(removed.job_id, stuck.job_id);
    let held = waiter.peek(&key).unwrap().expect("the waiter's lock stays");
    assert_eq!(Some(held.job_id), waiter_job.lock().take());
}
