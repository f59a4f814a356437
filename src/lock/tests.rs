//! Release outcomes of a guard whose view of its lock is current or stale, on an
//! in-memory and an on-disk store.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::store::dir::DirStore;
use crate::store::mem::MemStore;

const TTL: Duration = Duration::from_secs(60);

fn key() -> Key {
    Key::new(["vault-1"]).unwrap()
}

fn acquired<S: Store>(outcome: Acquire<S>) -> LockGuard<S> {
    match outcome {
        Acquire::Acquired(guard) => guard,
        Acquire::Held(holder) => panic!("held by {}", holder.holder()),
    }
}

#[test]
fn a_guard_releases_exactly_its_own_lock_on_mem_store() {
    let clock = ManualClock::new(1_000);
    let locks = JobLock::new(MemStore::new(), Arc::new(clock.clone()));
    check_all(&locks, &clock);
}

#[test]
fn a_guard_releases_exactly_its_own_lock_on_dir_store() {
    let clock = ManualClock::new(1_000);
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let locks = JobLock::new(store, Arc::new(clock.clone()));
    check_all(&locks, &clock);
}

/// Every release outcome, one after the other on the same key.
fn check_all<S: Store>(locks: &JobLock<S>, clock: &ManualClock) {
    release_of_a_current_guard(locks);
    release_after_renewing_through_the_guard(locks);
    release_after_renewing_through_a_handle(locks);
    release_after_force_release(locks);
    release_after_force_release_and_reacquire(locks);
    release_after_takeover(locks, clock);
    release_of_an_ended_lease_not_taken_over(locks, clock);
    drop_releases_only_its_own_lock(locks, clock);
}

fn release_of_a_current_guard<S: Store>(locks: &JobLock<S>) {
    let guard = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    let token = guard.token();
    assert_eq!(guard.release().unwrap(), Release::Released);
    assert_eq!(locks.peek(&key()).unwrap(), None);
    let next = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    assert!(next.token() > token);
    assert_eq!(next.release().unwrap(), Release::Released);
}

fn release_after_renewing_through_the_guard<S: Store>(locks: &JobLock<S>) {
    let mut guard = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    assert!(matches!(guard.renew(TTL).unwrap(), Renewal::Renewed(_)));
    assert_eq!(guard.release().unwrap(), Release::Released);
    assert_eq!(locks.peek(&key()).unwrap(), None);
}

fn release_after_renewing_through_a_handle<S: Store>(locks: &JobLock<S>) {
    // A keep-alive renews through a handle: the guard's record is then stale,
    // but the lock is still the guard's.
    let guard = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    let renewed = locks.renew(&guard.handle(), TTL).unwrap();
    let Renewal::Renewed(record) = renewed else {
        panic!("not renewed: {renewed:?}");
    };
    assert!(record.version > guard.record().version);
    assert_eq!(guard.release().unwrap(), Release::Released);
    assert_eq!(locks.peek(&key()).unwrap(), None);
}

fn release_after_force_release<S: Store>(locks: &JobLock<S>) {
    let guard = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    locks.force_release(&key()).unwrap().unwrap();
    assert_eq!(guard.release().unwrap(), Release::AlreadyGone);
}

fn release_after_force_release_and_reacquire<S: Store>(locks: &JobLock<S>) {
    let guard = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    locks.force_release(&key()).unwrap().unwrap();
    let other = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    match guard.release().unwrap() {
        Release::OwnedByAnother(current) => assert_eq!(&current, other.record()),
        outcome => panic!("released another job's lock: {outcome:?}"),
    }
    assert_eq!(locks.peek(&key()).unwrap().as_ref(), Some(other.record()));
    assert_eq!(other.release().unwrap(), Release::Released);
}

fn release_after_takeover<S: Store>(locks: &JobLock<S>, clock: &ManualClock) {
    let guard = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    clock.advance(TTL);
    let other = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    match guard.release().unwrap() {
        Release::OwnedByAnother(current) => assert_eq!(&current, other.record()),
        outcome => panic!("released another job's lock: {outcome:?}"),
    }
    assert_eq!(locks.peek(&key()).unwrap().as_ref(), Some(other.record()));
    assert_eq!(other.release().unwrap(), Release::Released);
}

fn release_of_an_ended_lease_not_taken_over<S: Store>(locks: &JobLock<S>, clock: &ManualClock) {
    let guard = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    clock.advance(TTL * 2);
    assert_eq!(guard.release().unwrap(), Release::Released);
    assert_eq!(locks.peek(&key()).unwrap(), None);
}

fn drop_releases_only_its_own_lock<S: Store>(locks: &JobLock<S>, clock: &ManualClock) {
    let guard = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    drop(guard);
    assert_eq!(locks.peek(&key()).unwrap(), None);

    let stale = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    clock.advance(TTL);
    let other = acquired(locks.acquire(&key(), TTL, &LockRequest::new()).unwrap());
    drop(stale);
    assert_eq!(locks.peek(&key()).unwrap().as_ref(), Some(other.record()));
    drop(other);
    assert_eq!(locks.peek(&key()).unwrap(), None);
}
