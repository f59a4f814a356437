//! Every write of `JobLock` whose store call fails in a way that may hide its
//! success, on every backend, in three cases: the write committed and the
//! call failed (the reply lost: the call must return its own write's
//! outcome); the call failed and nothing committed (it must not be reported
//! as done); the write committed and the store stayed unreachable for reads
//! too (the call must say the outcome is unknown, with the attempt id, and a
//! repeat with that id must be recognised as the same call).
//!
//! Time is a `ManualClock` whose sleeps pass at once, so the re-reads reach
//! their deadline without waiting. The PgStore cases need the feature
//! `postgres` and a server (`bash .ci/postgres.sh` runs them).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::ambiguous_store::{Bench, EVERY_WRITE, Fault, RESOLVE_WITHIN, on_dir, on_log, on_mem};
use jobsafe::lock::{Acquire, LockRequest, Release, Renewal};
use jobsafe::{JobLock, Key};

const TTL: Duration = Duration::from_secs(60);

fn key(name: &str) -> Key {
    Key::new(["ambiguity", name]).unwrap()
}

/// The lock at `key` as the store underneath holds it: its job id and version.
fn lock_in_store(bench: &Bench, name: &str) -> Option<(String, u64)> {
    let stored_key = Key::new(["locks", "ambiguity", name]).unwrap();
    let entry = bench.store.inner().get(&stored_key).unwrap()?;
    let record: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    let job_id = record["job_id"].as_str().unwrap().to_owned();
    Some((job_id, entry.version.get()))
}

fn lock_cases(bench: &Bench) {
    let locks = JobLock::builder(bench.store.clone(), bench.shared_clock())
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap();
    let name = bench.name;
    let request = LockRequest::new();

    // Acquire, the reply lost: the caller gets its guard, not a ghost holder.
    bench.store.fail_writes(Fault::CommitThenFail, 0, 1);
    let Acquire::Acquired(guard) = locks.acquire(&key("a1"), TTL, &request).unwrap() else {
        panic!("{name}: a landed acquire must return its guard")
    };
    let (holder, version) = lock_in_store(bench, "a1").unwrap();
    assert_eq!(holder, guard.job_id(), "{name}");
    assert_eq!(guard.token().get(), version, "{name}");
    guard.release().unwrap();

    // Acquire, the request lost once: written again, and then held for real.
    bench.store.fail_writes(Fault::FailWithoutCommit, 0, 1);
    let Acquire::Acquired(guard) = locks.acquire(&key("a2"), TTL, &request).unwrap() else {
        panic!("{name}: an acquire whose first write was lost writes again")
    };
    assert_eq!(
        lock_in_store(bench, "a2").unwrap().0,
        guard.job_id(),
        "{name}"
    );
    guard.release().unwrap();

    // Acquire, every request lost: an error that is not ambiguous, nothing held.
    bench
        .store
        .fail_writes(Fault::FailWithoutCommit, 0, EVERY_WRITE);
    let Err(e) = locks.acquire(&key("a3"), TTL, &request) else {
        panic!("{name}: an acquire that never landed must not be reported as done")
    };
    bench.store.heal();
    assert!(e.is_transient() && !e.is_ambiguous(), "{name}: {e}");
    assert_eq!(lock_in_store(bench, "a3"), None, "{name}");

    // Acquire, the store gone for reads too: ambiguous, with the attempt id;
    // the repeat with that id gets the lock it had taken, another caller not.
    bench
        .store
        .fail_writes(Fault::CommitThenFailAndReadsFail, 0, 1);
    let Err(e) = locks.acquire(&key("a4"), TTL, &request) else {
        panic!("{name}: the outcome cannot be known while reads fail")
    };
    bench.store.heal();
    assert!(e.is_ambiguous() && e.is_transient(), "{name}: {e}");
    let attempt = e.attempt_id().unwrap().clone();
    assert!(e.to_string().contains(attempt.as_str()), "{name}: {e}");
    let Acquire::Held(holder) = locks.acquire(&key("a4"), TTL, &request).unwrap() else {
        panic!("{name}: the ambiguous acquire had landed")
    };
    assert_eq!(holder.job_id, attempt.as_str(), "{name}");
    let repeat = request.clone().attempt(attempt.clone());
    let Acquire::Acquired(guard) = locks.acquire(&key("a4"), TTL, &repeat).unwrap() else {
        panic!("{name}: the repeated attempt is the holder")
    };
    assert_eq!(guard.job_id(), attempt.as_str(), "{name}");
    assert_eq!(guard.token(), holder.token, "{name}");

    // Renew, the reply lost: renewed, with the version the store holds.
    let mut guard = guard;
    bench.store.fail_writes(Fault::CommitThenFail, 0, 1);
    let Renewal::Renewed(renewed) = guard.renew(TTL * 2).unwrap() else {
        panic!("{name}: a landed renewal is a renewal")
    };
    assert_eq!(lock_in_store(bench, "a4").unwrap().1, renewed.version.get());

    // Renew, every request lost: an error, the record unchanged.
    let before = lock_in_store(bench, "a4");
    bench
        .store
        .fail_writes(Fault::FailWithoutCommit, 0, EVERY_WRITE);
    let e = guard.renew(TTL).unwrap_err();
    bench.store.heal();
    assert!(e.is_transient() && !e.is_ambiguous(), "{name}: {e}");
    assert_eq!(lock_in_store(bench, "a4"), before, "{name}");

    // Renew, reads failing too: ambiguous; a renewal after it still renews.
    bench
        .store
        .fail_writes(Fault::CommitThenFailAndReadsFail, 0, 1);
    let e = guard.renew(TTL).unwrap_err();
    bench.store.heal();
    assert!(e.is_ambiguous(), "{name}: {e}");
    assert!(
        matches!(guard.renew(TTL).unwrap(), Renewal::Renewed(_)),
        "{name}"
    );

    // Release, every request lost: an error, still held.
    let handle = guard.handle();
    bench
        .store
        .fail_writes(Fault::FailWithoutCommit, 0, EVERY_WRITE);
    let e = locks.release(&handle).unwrap_err();
    bench.store.heal();
    assert!(e.is_transient() && !e.is_ambiguous(), "{name}: {e}");
    assert!(lock_in_store(bench, "a4").is_some(), "{name}");

    // Release, reads failing too: ambiguous; repeated, it finds it done.
    bench
        .store
        .fail_writes(Fault::CommitThenFailAndReadsFail, 0, 1);
    let e = locks.release(&handle).unwrap_err();
    bench.store.heal();
    assert!(e.is_ambiguous(), "{name}: {e}");
    assert_eq!(
        locks.release(&handle).unwrap(),
        Release::AlreadyGone,
        "{name}"
    );

    // Release, the reply lost: released.
    let Acquire::Acquired(guard) = locks.acquire(&key("a5"), TTL, &request).unwrap() else {
        panic!("{name}: free")
    };
    bench.store.fail_writes(Fault::CommitThenFail, 0, 1);
    assert_eq!(guard.release().unwrap(), Release::Released, "{name}");
    assert_eq!(lock_in_store(bench, "a5"), None, "{name}");

    // Force release, the reply lost: the record it removed.
    let Acquire::Acquired(guard) = locks.acquire(&key("a6"), TTL, &request).unwrap() else {
        panic!("{name}: free")
    };
    let holder = guard.into_handle();
    bench.store.fail_writes(Fault::CommitThenFail, 0, 1);
    let removed = locks.force_release(&key("a6")).unwrap();
    assert_eq!(removed.map(|r| r.job_id), Some(holder.job_id), "{name}");
    assert_eq!(lock_in_store(bench, "a6"), None, "{name}");

    // Force release, the request lost once: deleted again.
    let Acquire::Acquired(guard) = locks.acquire(&key("a7"), TTL, &request).unwrap() else {
        panic!("{name}: free")
    };
    let _holder = guard.into_handle();
    bench.store.fail_writes(Fault::FailWithoutCommit, 0, 1);
    assert!(locks.force_release(&key("a7")).unwrap().is_some(), "{name}");
    assert_eq!(lock_in_store(bench, "a7"), None, "{name}");

    // Force release, the store gone after the delete: unknown.
    let Acquire::Acquired(guard) = locks.acquire(&key("a8"), TTL, &request).unwrap() else {
        panic!("{name}: free")
    };
    let _holder = guard.into_handle();
    bench
        .store
        .fail_writes(Fault::CommitThenFailAndReadsFail, 0, 1);
    let e = locks.force_release(&key("a8")).unwrap_err();
    bench.store.heal();
    assert!(e.is_ambiguous(), "{name}: {e}");
    assert_eq!(lock_in_store(bench, "a8"), None, "{name}");

    assert!(bench.store.injected() >= 12, "{name}: faults were injected");
}

#[test]
fn lock_writes_learn_their_outcome_on_mem() {
    lock_cases(&on_mem());
}

#[test]
fn lock_writes_learn_their_outcome_on_dir() {
    lock_cases(&on_dir());
}

#[test]
fn lock_writes_learn_their_outcome_on_log() {
    lock_cases(&on_log());
}

#[cfg(feature = "postgres")]
#[test]
fn lock_writes_learn_their_outcome_on_pg() {
    lock_cases(&common::ambiguous_store::on_pg());
}

/// An acquire whose write landed, its reply lost, read back as its own: the
/// call returns its guard at once. It read the record again before, and a
/// failure of that read came out as a plain transient error, though the
/// lock was held in the caller's name.
#[test]
fn an_acquire_read_back_as_its_own_returns_its_guard_without_another_read() {
    use std::sync::Arc;

    use common::scripted_store::{Act, ScriptedStore};
    use jobsafe::ManualClock;

    let clock = ManualClock::new(1_000_000);
    clock.set_auto_advance(true);
    // 0: the first read, 1: the put (reply lost), 2: the read back (ours),
    // 3: any read after it fails.
    let store = Arc::new(ScriptedStore::new(vec![
        (1, Act::CommitThenFail),
        (3, Act::Fail),
    ]));
    let locks = JobLock::builder(Arc::clone(&store), Arc::new(clock))
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap();
    let acquired = locks.acquire(&key("vault"), TTL, &LockRequest::new());
    let log = store.log.lock().clone();
    let Ok(Acquire::Acquired(guard)) = acquired else {
        panic!("{acquired:?}, after {log:?}");
    };
    // The first read, the put and the read back: nothing after.
    assert_eq!(log.len(), 3, "{log:?}");
    drop(guard);
}
