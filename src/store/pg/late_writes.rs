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
}

/// A store in memory whose next writes fail as scripted; reads pass.
#[derive(Debug, Default)]
struct Script {
    inner: MemStore,
    plan: Mutex<Vec<Act>>,
    late: Mutex<Vec<Batch>>,
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
        match self.plan.lock().pop() {
            None => write(),
            Some(Act::Lost) => Err(lost()),
            Some(Act::Late) => {
                self.late.lock().push(batch());
                Err(unfenced(lost()))
            }
        }
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
    // B acquires while A's write is held back as late.
    struct Racy {
        inner: Arc<MemStore>,
        late: Mutex<Vec<Batch>>,
        hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }
    impl std::fmt::Debug for Racy {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Racy")
        }
    }
    impl Store for Racy {
        fn get(&self, key: &Key) -> Result<Option<Entry>> {
            self.inner.get(key)
        }
        fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
            let hook = self.hook.lock().take();
            match hook {
                Some(hook) => {
                    self.late
                        .lock()
                        .push(Batch::new().put(key, value.to_vec(), expect));
                    hook();
                    Err(unfenced(lost()))
                }
                None => self.inner.put(key, value, expect),
            }
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
    let inner = Arc::new(MemStore::default());
    let locks_b = JobLock::builder(Arc::clone(&inner), clock())
        .build()
        .unwrap();
    let store = Arc::new(Racy {
        inner: Arc::clone(&inner),
        late: Mutex::new(Vec::new()),
        hook: Mutex::new(None),
    });
    let locks_a = JobLock::builder(Arc::clone(&store), clock())
        .resolve_within(Duration::from_secs(5))
        .build()
        .unwrap();
    let key = Key::new(["index"]).unwrap();
    let ttl = Duration::from_secs(60);
    let b_guard: Arc<Mutex<Option<_>>> = Arc::default();
    let b_slot = Arc::clone(&b_guard);
    let (lb, kb) = (locks_b.clone(), key.clone());
    *store.hook.lock() = Some(Box::new(move || {
        let Acquire::Acquired(g) = lb.acquire(&kb, ttl, &LockRequest::new()).unwrap() else {
            panic!("B: free");
        };
        *b_slot.lock() = Some(g.into_handle());
    }));
    let request = LockRequest::new().attempt(attempt("a-1"));
    // B holds the lock now, but A's write lands as soon as B releases it:
    // A is not told "held", but that its outcome is open.
    let e = locks_a.acquire(&key, ttl, &request).map(drop).unwrap_err();
    assert!(e.is_ambiguous(), "{e}");
    assert_eq!(e.attempt_id(), Some(&attempt("a-1")));
    let b = b_guard.lock().take().unwrap();
    assert_eq!(locks_b.release(&b).unwrap(), Release::Released);
    let late: Vec<Batch> = store.late.lock().drain(..).collect();
    for batch in late {
        inner.apply(&batch).unwrap();
    }
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
    struct LostReply {
        inner: Arc<MemStore>,
        hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }
    impl std::fmt::Debug for LostReply {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("LostReply")
        }
    }
    impl Store for LostReply {
        fn get(&self, key: &Key) -> Result<Option<Entry>> {
            self.inner.get(key)
        }
        fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
            self.inner.put(key, value, expect)
        }
        fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
            let hook = self.hook.lock().take();
            let done = self.inner.delete(key, expect);
            match hook {
                Some(hook) => {
                    done?;
                    hook();
                    Err(lost())
                }
                None => done,
            }
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
    let inner = Arc::new(MemStore::default());
    let waiter = JobLock::builder(Arc::clone(&inner), clock())
        .build()
        .unwrap();
    let store = Arc::new(LostReply {
        inner: Arc::clone(&inner),
        hook: Mutex::new(None),
    });
    let admin = JobLock::builder(Arc::clone(&store), clock())
        .build()
        .unwrap();
    let key = Key::new(["index"]).unwrap();
    let ttl = Duration::from_secs(60);
    let Acquire::Acquired(stuck) = admin.acquire(&key, ttl, &LockRequest::new()).unwrap() else {
        panic!()
    };
    let stuck = stuck.into_handle();
    let got: Arc<Mutex<Option<String>>> = Arc::default();
    let (w, k, g) = (waiter.clone(), key.clone(), Arc::clone(&got));
    *store.hook.lock() = Some(Box::new(move || {
        let Acquire::Acquired(guard) = w.acquire(&k, ttl, &LockRequest::new()).unwrap() else {
            panic!("free");
        };
        *g.lock() = Some(guard.into_handle().job_id.clone());
        // (guard handle kept as the waiter's: it believes it holds the lock)
    }));
    let removed = admin.force_release(&key).unwrap().unwrap();
    let waiter_job = got.lock().clone().unwrap();
    assert_eq!(removed.job_id, stuck.job_id);
    let held = waiter.peek(&key).unwrap().expect("the waiter's lock stays");
    assert_eq!(held.job_id, waiter_job);
}
