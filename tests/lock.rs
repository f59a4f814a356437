//! Every outcome of `JobLock`, driven by a `ManualClock`: nothing here sleeps to
//! wait for a lease. Holders that die are child processes (this binary run
//! again), killed and reaped before the test decides.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::backends::SharedStore;
use common::child::{self, Child};
use common::hooked_store::{HookedStore, StoreOp};
use jobsafe::lock::{
    Acquire, KeepAliveEvent, LockGuard, LockHandle, LockRecord, LockRequest, LostLease,
    ProcessIdentity, ProcessLiveness, Release, Renewal,
};
use jobsafe::vfs::{IoAction, IoStep};
use jobsafe::{DirStore, Error, FencingToken, JobLock, Key, ManualClock, MemStore, Prefix, Store};
use tempfile::TempDir;

use common::limits::{assert_too_large, metadata_of_len, snapshot, text_of_len};

const TTL: Duration = Duration::from_secs(60);
const START_MS: u64 = 1_700_000_000_000;

type Locks = JobLock<Arc<dyn Store>>;

/// A lock over each backend, with the clock that drives it. The temp dir keeps the
/// `DirStore` alive.
fn backends() -> Vec<(&'static str, Locks, ManualClock, Option<TempDir>)> {
    common::backends::each_with_clock(START_MS, JobLock::new)
}

/// The key of the lock on the vault item `name`.
fn vault(name: &str) -> Key {
    common::key(&format!("vault/{name}"))
}

fn acquired<S: Store>(outcome: Acquire<S>) -> LockGuard<S> {
    match outcome {
        Acquire::Acquired(guard) => guard,
        Acquire::Held(holder) => panic!("expected to acquire, but {} holds it", holder.holder()),
    }
}

fn held<S: Store>(outcome: Acquire<S>) -> LockRecord {
    match outcome {
        Acquire::Held(holder) => holder,
        Acquire::Acquired(guard) => panic!("expected a holder, but acquired {:?}", guard.record()),
    }
}

#[test]
fn acquire_of_a_free_lock_records_the_holder() {
    for (name, locks, _clock, _dir) in backends() {
        let request = LockRequest::new()
            .actor("user:alice")
            .meta("chunks_to_embed", 1200)
            .meta("reason", "re-index");
        let guard = acquired(locks.acquire(&vault("a"), TTL, &request).unwrap());
        let record = guard.record();
        assert_eq!(record.key, vault("a"), "{name}");
        assert_eq!(record.actor.as_deref(), Some("user:alice"));
        assert_eq!(record.metadata["chunks_to_embed"], 1200);
        assert_eq!((record.started_ms, record.renewed_ms), (START_MS, START_MS));
        assert_eq!(record.expires_ms, START_MS + 60_000);
        assert!(guard.token() > FencingToken::new(0));
        assert_eq!(
            locks.peek(&vault("a")).unwrap().as_ref(),
            Some(record),
            "{name}"
        );
    }
}

#[test]
fn a_second_acquire_gets_the_holder_back_in_the_same_call() {
    for (name, locks, _clock, _dir) in backends() {
        let request = LockRequest::new()
            .actor("user:alice")
            .meta("estimated_seconds", 600);
        let guard = acquired(locks.acquire(&vault("a"), TTL, &request).unwrap());
        let holder = held(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert_eq!(&holder, guard.record(), "{name}");
        assert_eq!(holder.metadata["estimated_seconds"], 600);
        // Another key is another lock.
        acquired(
            locks
                .acquire(&vault("b"), TTL, &LockRequest::new())
                .unwrap(),
        );
    }
}

#[test]
fn an_ended_lease_is_taken_over_exactly_at_expiry_with_a_greater_token() {
    for (name, locks, clock, _dir) in backends() {
        let first = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        let first = (first.token(), first.into_handle()); // crashed: never released
        clock.advance(TTL - Duration::from_millis(1));
        held(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        clock.advance(Duration::from_millis(1));
        let next = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert!(
            next.token() > first.0,
            "{name}: {} after {}",
            next.token(),
            first.0
        );
        assert_ne!(next.job_id(), first.1.job_id);
    }
}

#[test]
fn a_skew_margin_delays_takeover_by_the_margin() {
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::builder(MemStore::new(), Arc::new(clock.clone()))
        .skew_margin(Duration::from_secs(5))
        .build()
        .unwrap();
    let guard = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    assert_eq!(guard.remaining(), TTL - Duration::from_secs(5));
    let _ = guard.into_handle();
    clock.advance(TTL + Duration::from_millis(4_999));
    held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    clock.advance(Duration::from_millis(1));
    acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
}

#[test]
fn fencing_tokens_grow_across_release_takeover_force_release_and_purge() {
    for (name, locks, clock, _dir) in backends() {
        let mut tokens = Vec::new();
        let take = |locks: &Locks| {
            acquired(
                locks
                    .acquire(&vault("a"), TTL, &LockRequest::new())
                    .unwrap(),
            )
        };

        let guard = take(&locks);
        tokens.push(guard.token());
        assert_eq!(guard.release().unwrap(), Release::Released);

        let guard = take(&locks);
        tokens.push(guard.token());
        let _ = guard.into_handle();
        clock.advance(TTL);
        let guard = take(&locks); // takeover
        tokens.push(guard.token());
        let _ = guard.into_handle();
        locks.force_release(&vault("a")).unwrap().unwrap();

        let mut guard = take(&locks);
        tokens.push(guard.token());
        // Renewals keep the token.
        clock.advance(Duration::from_secs(1));
        assert!(matches!(guard.renew(TTL).unwrap(), Renewal::Renewed(_)));
        assert_eq!(guard.token(), tokens[3]);
        let _ = guard.into_handle();
        clock.advance(TTL * 3);
        let purged = locks.purge(&Prefix::all(), TTL).unwrap();
        assert_eq!(purged.locks.len(), 1, "{name}");

        tokens.push(take(&locks).token());
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{name}: {tokens:?}");
    }
}

#[test]
fn renew_extends_only_while_the_caller_holds_the_lock() {
    for (name, locks, clock, _dir) in backends() {
        let mut guard = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        clock.advance(Duration::from_secs(30));
        let Renewal::Renewed(record) = guard.renew(TTL).unwrap() else {
            panic!("{name}: the holder could not renew");
        };
        assert_eq!(record.renewed_ms, START_MS + 30_000);
        assert_eq!(record.expires_ms, START_MS + 90_000);
        assert_eq!(guard.record(), &record);

        // Ended but not taken over: still ours.
        clock.advance(TTL);
        assert!(
            matches!(guard.renew(TTL).unwrap(), Renewal::Renewed(_)),
            "{name}"
        );

        // Taken over: lost, with the new holder.
        let stale = guard.handle();
        let _ = guard.into_handle();
        clock.advance(TTL);
        let next = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        match locks.renew(&stale, TTL).unwrap() {
            Renewal::Lost(LostLease::TakenOver(current)) => assert_eq!(&current, next.record()),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(next.release().unwrap(), Release::Released);
        assert_eq!(
            locks.renew(&stale, TTL).unwrap(),
            Renewal::Lost(LostLease::Gone)
        );
    }
}

#[test]
fn release_removes_only_the_callers_lock() {
    for (name, locks, clock, _dir) in backends() {
        let guard = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        let stale = guard.into_handle();
        clock.advance(TTL);
        let next = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        match locks.release(&stale).unwrap() {
            Release::OwnedByAnother(current) => assert_eq!(&current, next.record(), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(
            locks.peek(&vault("a")).unwrap().as_ref(),
            Some(next.record())
        );
        let handle = next.handle();
        assert_eq!(next.release().unwrap(), Release::Released);
        assert_eq!(locks.release(&handle).unwrap(), Release::AlreadyGone);
        assert_eq!(locks.peek(&vault("a")).unwrap(), None);
    }
}

#[test]
fn force_release_returns_what_it_removed() {
    for (name, locks, _clock, _dir) in backends() {
        assert_eq!(locks.force_release(&vault("a")).unwrap(), None, "{name}");
        let guard = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new().actor("bob"))
                .unwrap(),
        );
        let removed = locks.force_release(&vault("a")).unwrap().unwrap();
        assert_eq!(&removed, guard.record());
        // The old holder learns it is gone, and its drop does not disturb anyone.
        assert_eq!(guard.release().unwrap(), Release::AlreadyGone);
    }
}

#[test]
fn dropping_a_guard_releases_and_into_handle_keeps_the_lock() {
    for (name, locks, _clock, _dir) in backends() {
        drop(acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        ));
        assert_eq!(locks.peek(&vault("a")).unwrap(), None, "{name}");

        let handle = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        )
        .into_handle();
        held(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        // The handle travels (to a background job, say) and releases from there.
        let json = serde_json::to_string(&handle).unwrap();
        let handle = serde_json::from_str(&json).unwrap();
        assert_eq!(locks.release(&handle).unwrap(), Release::Released);
    }
}

#[test]
fn a_handle_releases_from_another_process_view_of_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let root = dir.path().join("store");
    let here = JobLock::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));
    let there = JobLock::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));
    let handle =
        acquired(here.acquire(&vault("a"), TTL, &LockRequest::new()).unwrap()).into_handle();
    held(
        there
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    assert_eq!(there.release(&handle).unwrap(), Release::Released);
    acquired(here.acquire(&vault("a"), TTL, &LockRequest::new()).unwrap());
}

#[test]
fn acquire_within_waits_for_the_lease_to_end() {
    for (name, locks, clock, _dir) in backends() {
        let holder = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        )
        .into_handle();
        let waiter = {
            let locks = locks.clone();
            std::thread::spawn(move || {
                locks
                    .acquire_within(&vault("a"), TTL, &LockRequest::new(), TTL * 2)
                    .map(|guard| guard.token())
            })
        };
        // Move time until the waiter has its lock, whenever it started waiting:
        // its deadline is two leases after it started, the lease ends after one.
        while !waiter.is_finished() {
            clock.advance(Duration::from_millis(500));
            std::thread::yield_now();
        }
        let token = waiter.join().unwrap().unwrap();
        assert!(token > holder.token, "{name}");
    }
}

#[test]
fn acquire_within_times_out_naming_the_holder() {
    for (name, locks, clock, _dir) in backends() {
        let long = Duration::from_secs(24 * 3600);
        let holder = acquired(
            locks
                .acquire(&vault("a"), long, &LockRequest::new().actor("carol"))
                .unwrap(),
        );
        let waiter = {
            let locks = locks.clone();
            std::thread::spawn(move || {
                locks.acquire_within(
                    &vault("a"),
                    TTL,
                    &LockRequest::new(),
                    Duration::from_secs(10),
                )
            })
        };
        while !waiter.is_finished() {
            clock.advance(Duration::from_millis(500));
            std::thread::yield_now();
        }
        let err = waiter.join().unwrap().unwrap_err();
        assert!(err.is_lock_timeout(), "{name}: {err}");
        let message = err.to_string();
        assert!(
            message.contains(holder.job_id()) && message.contains("carol"),
            "{message}"
        );
        assert!(message.contains("vault/a"), "{message}");
    }
}

#[test]
fn peek_and_list_change_nothing() {
    for (name, locks, clock, _dir) in backends() {
        let a = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        )
        .into_handle();
        acquired(
            locks
                .acquire(&vault("b"), TTL, &LockRequest::new())
                .unwrap(),
        )
        .into_handle();
        clock.advance(TTL * 2);
        let before = locks.list(&Prefix::all()).unwrap();
        // Expired locks are reported as they are, not removed or taken over.
        let peeked = locks.peek(&vault("a")).unwrap().unwrap();
        assert!(peeked.is_expired_at(clock_now(&clock)));
        assert_eq!(peeked.job_id, a.job_id);
        let after = locks.list(&Prefix::all()).unwrap();
        assert_eq!(before.locks, after.locks, "{name}");
        assert_eq!(after.locks.len(), 2);
        assert_eq!(after.locks[0].key, vault("a"));
        let only_vault_a = locks.list(&Prefix::new(["vault", "a"]).unwrap()).unwrap();
        assert_eq!(only_vault_a.locks.len(), 1);
    }
}

fn clock_now(clock: &ManualClock) -> u64 {
    use jobsafe::Clock;
    clock.now_ms()
}

#[test]
fn purge_removes_only_long_expired_locks() {
    for (name, locks, clock, _dir) in backends() {
        acquired(
            locks
                .acquire(&vault("old"), TTL, &LockRequest::new())
                .unwrap(),
        )
        .into_handle();
        clock.advance(TTL * 10);
        acquired(
            locks
                .acquire(&vault("recent"), TTL, &LockRequest::new())
                .unwrap(),
        )
        .into_handle();
        clock.advance(TTL * 2); // "recent" ended one TTL ago
        acquired(
            locks
                .acquire(&vault("live"), TTL, &LockRequest::new())
                .unwrap(),
        )
        .into_handle();
        let purged = locks.purge(&Prefix::all(), TTL * 5).unwrap();
        let purged: Vec<Key> = purged.locks.into_iter().map(|l| l.key).collect();
        assert_eq!(purged, [vault("old")], "{name}");
        let left: Vec<Key> = locks
            .list(&Prefix::all())
            .unwrap()
            .locks
            .into_iter()
            .map(|l| l.key)
            .collect();
        assert_eq!(left, [vault("live"), vault("recent")]);
    }
}

#[test]
fn a_malformed_lock_is_reported_and_taken_over_only_by_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path().join("store")).unwrap();
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::new(store, Arc::new(clock.clone()));
    let before = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    )
    .into_handle();
    let stored_key = Key::new(["locks", "vault", "a"]).unwrap();
    locks
        .store()
        .put(&stored_key, b"{not json", jobsafe::Expect::Any)
        .unwrap();
    clock.advance(TTL * 10);

    for err in [
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .map(|_| ())
            .unwrap_err(),
        locks.peek(&vault("a")).map(|_| ()).unwrap_err(),
        locks.force_release(&vault("a")).map(|_| ()).unwrap_err(),
    ] {
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("locks/vault/a"), "{err}");
    }
    let listed = locks.list(&Prefix::all()).unwrap();
    assert!(listed.locks.is_empty());
    assert_eq!(listed.unreadable.len(), 1);
    assert_eq!(listed.unreadable[0].0, vault("a"));
    let purged = locks.purge(&Prefix::all(), Duration::ZERO).unwrap();
    assert_eq!(
        purged.unreadable.len(),
        1,
        "purge leaves unreadable records alone"
    );

    let moved = locks.quarantine(&vault("a")).unwrap().unwrap();
    // The record file (the store's header, then the bad bytes) is kept as it was.
    let kept = std::fs::read(&moved.location).unwrap();
    assert!(kept.ends_with(b"{not json"), "bad bytes kept: {kept:?}");
    let next = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    assert!(next.token() > before.token);
}

#[test]
fn a_record_from_a_newer_schema_is_not_guessed_at() {
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::new(MemStore::new(), Arc::new(clock));
    let stored_key = Key::new(["locks", "vault", "a"]).unwrap();
    let newer = br#"{"schema":99,"job_id":"x","started_ms":0,"renewed_ms":0,"expires_ms":0}"#;
    locks
        .store()
        .put(&stored_key, newer, jobsafe::Expect::Absent)
        .unwrap();
    let err = locks
        .acquire(&vault("a"), TTL, &LockRequest::new())
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedSchema { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let locks = JobLock::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let err = locks
        .acquire(&vault("a"), Duration::ZERO, &LockRequest::new())
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let deepest = Key::new((0..jobsafe::Key::MAX_SEGMENTS).map(|i| i.to_string())).unwrap();
    let err = locks
        .acquire(&deepest, TTL, &LockRequest::new())
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    let guard = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    let err = guard.keep_alive(TTL, TTL).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn a_clock_that_jumps_back_makes_leases_last_longer_never_shorter() {
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::new(MemStore::new(), Arc::new(clock.clone()));
    let guard = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    )
    .into_handle();
    clock.set(START_MS - 3_600_000);
    held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    clock.set(START_MS + TTL.as_millis() as u64);
    let next = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    assert!(next.token() > guard.token);
}

#[test]
fn keep_alive_renews_on_schedule_and_reports_a_lost_lease() {
    for (name, locks, clock, _dir) in backends() {
        let guard = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        let keep_alive = guard.keep_alive(TTL, Duration::from_secs(20)).unwrap();
        for round in 1..=3u64 {
            clock.advance(Duration::from_secs(20));
            match keep_alive.next_event() {
                Some(KeepAliveEvent::Renewed(record)) => {
                    assert_eq!(record.renewed_ms, START_MS + round * 20_000, "{name}");
                    assert_eq!(record.token, guard.token());
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // An operator frees the lock and someone else takes it.
        locks.force_release(&vault("a")).unwrap();
        let thief = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        clock.advance(Duration::from_secs(20));
        match keep_alive.next_event() {
            Some(KeepAliveEvent::Lost(LostLease::TakenOver(current))) => {
                assert_eq!(&current, thief.record(), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(keep_alive.next_event().is_none(), "a lost keep-alive stops");
        let _ = guard.into_handle();
    }
}

#[test]
fn a_stopped_keep_alive_renews_no_more() {
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::new(MemStore::new(), Arc::new(clock.clone()));
    let guard = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    let keep_alive = guard.keep_alive(TTL, Duration::from_secs(20)).unwrap();
    clock.advance(Duration::from_secs(20));
    assert!(matches!(
        keep_alive.next_event(),
        Some(KeepAliveEvent::Renewed(_))
    ));
    keep_alive.stop();
    clock.advance(Duration::from_secs(20));
    // The thread wakes for its next renewal, finds it stopped and ends: its
    // channel closes without another event.
    assert!(keep_alive.next_event().is_none(), "renewed after stop");
    let record = locks.peek(&vault("a")).unwrap().unwrap();
    assert_eq!(record.renewed_ms, START_MS + 20_000);
}

#[test]
fn of_many_threads_acquiring_at_once_exactly_one_wins() {
    for (name, locks, _clock, _dir) in backends() {
        let barrier = std::sync::Barrier::new(8);
        let winners: usize = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        match locks
                            .acquire(&vault("race"), TTL, &LockRequest::new())
                            .unwrap()
                        {
                            Acquire::Acquired(guard) => {
                                let _ = guard.into_handle();
                                1
                            }
                            Acquire::Held(_) => 0,
                        }
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).sum()
        });
        assert_eq!(winners, 1, "{name}");
    }
}

#[test]
fn a_protected_resource_rejects_a_stale_holders_token() {
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::new(MemStore::new(), Arc::new(clock.clone()));
    let stalled = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    )
    .into_handle();
    clock.advance(TTL);
    let successor = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    // The resource remembers the newest token it accepted.
    let mut newest = FencingToken::new(0);
    let mut write = |token: FencingToken| -> jobsafe::Result<()> {
        token.check_not_older_than(newest, "index/vault-a")?;
        newest = token;
        Ok(())
    };
    write(successor.token()).unwrap();
    let err = write(stalled.token).unwrap_err();
    assert!(err.is_stale_token(), "{err}");
}

#[test]
fn a_record_at_the_namespace_itself_is_listed_apart() {
    let locks = JobLock::new(MemStore::new(), Arc::new(ManualClock::new(START_MS)));
    acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    )
    .into_handle();
    let namespace = Key::new(["locks"]).unwrap();
    locks
        .store()
        .put(&namespace, b"stray", jobsafe::Expect::Absent)
        .unwrap();
    let listed = locks.list(&Prefix::all()).unwrap();
    assert_eq!(listed.locks.len(), 1);
    assert_eq!(listed.unreadable.len(), 1);
    assert_eq!(listed.unreadable[0].0, namespace);
    assert_eq!(
        locks
            .purge(&Prefix::all(), Duration::ZERO)
            .unwrap()
            .unreadable
            .len(),
        1
    );
}

#[test]
fn keep_alive_reports_failed_renewals_then_expiry() {
    let clock = ManualClock::new(START_MS);
    // Writes fail while `down` is set, as an unreachable store's would.
    let store = Arc::new(HookedStore::default());
    let down = Arc::new(AtomicBool::new(false));
    store.on_op({
        let down = Arc::clone(&down);
        move |op| match op {
            StoreOp::Write(_) if down.load(Ordering::SeqCst) => Err(Error::Io {
                step: IoStep::new(IoAction::Write, "write record"),
                path: "flaky".into(),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            }),
            _ => Ok(()),
        }
    });
    let locks = JobLock::new(Arc::clone(&store), Arc::new(clock.clone()));
    let guard = acquired(
        locks
            .acquire(&vault("a"), Duration::from_secs(30), &LockRequest::new())
            .unwrap(),
    );
    let keep_alive = guard
        .keep_alive(Duration::from_secs(30), Duration::from_secs(10))
        .unwrap();
    down.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(10));
    match keep_alive.next_event() {
        Some(KeepAliveEvent::Failed(err)) => assert!(err.is_transient(), "{err}"),
        other => panic!("expected a failed renewal, got {other:?}"),
    }
    // 20 s left of the lease, no renewal confirmed: within the safety margin
    // (no skew margin, plus one 10 s period) the holder hears it must stop,
    // after at most the renewal that failed at that moment too.
    clock.advance(Duration::from_secs(9));
    assert!(keep_alive.events().is_empty(), "expired early");
    clock.advance(Duration::from_secs(1));
    loop {
        match keep_alive.next_event() {
            Some(KeepAliveEvent::Failed(_)) => {}
            Some(KeepAliveEvent::Expired) => break,
            other => panic!("expected expiry, got {other:?}"),
        }
    }
    // The renewer ends at its next wake-up, without another event.
    clock.advance(Duration::from_secs(10));
    assert!(
        keep_alive.next_event().is_none(),
        "an expired keep-alive stops"
    );
    let _ = guard.into_handle();
}

#[test]
fn keep_alive_reports_expiry_while_a_renewal_hangs_and_stops_without_waiting_for_it() {
    let clock = ManualClock::new(START_MS);
    // Once `hang` is set, a write waits until the test lets it go, as a put
    // through a connection that went silent would.
    let store = Arc::new(HookedStore::default());
    let hang = Arc::new(AtomicBool::new(false));
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    store.on_op({
        let hang = Arc::clone(&hang);
        move |op| {
            if matches!(op, StoreOp::Write(_)) && hang.load(Ordering::SeqCst) {
                let _ = gate.lock().unwrap().recv();
            }
            Ok(())
        }
    });
    let locks = JobLock::builder(Arc::clone(&store), Arc::new(clock.clone()))
        .skew_margin(Duration::from_secs(5))
        .build()
        .unwrap();
    let guard = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    let keep_alive = guard.keep_alive(TTL, Duration::from_secs(20)).unwrap();
    hang.store(true, Ordering::SeqCst);
    // The renewal at 20 s hangs. The lease ends at 60 s; the safety margin is
    // the skew margin (5 s) plus one period (20 s): expired at 35 s.
    clock.advance(Duration::from_secs(34));
    assert!(keep_alive.events().is_empty(), "an event before 35 s");
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        keep_alive.next_event(),
        Some(KeepAliveEvent::Expired)
    ));
    // `stop` returns with the renewal still hanging (it used to wait for it).
    keep_alive.stop();
    // Once the store answers, the late renewal is not reported.
    hang.store(false, Ordering::SeqCst);
    release.send(()).unwrap();
    clock.advance(Duration::from_secs(20));
    assert!(
        keep_alive.next_event().is_none(),
        "an event after expiry: the keep-alive must have stopped"
    );
    let _ = guard.into_handle();
}

#[test]
fn keep_alive_refuses_a_period_that_cannot_renew_before_its_safety_margin() {
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::builder(MemStore::new(), Arc::new(clock.clone()))
        .skew_margin(Duration::from_secs(10))
        .build()
        .unwrap();
    let guard = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    // Two periods and the skew margin must be shorter than the ttl (60 s).
    let err = guard.keep_alive(TTL, Duration::from_secs(25)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("safety margin"), "{err}");
    assert!(guard.keep_alive(TTL, Duration::from_secs(24)).is_ok());
}

// Dead holders: on a machine-local store, a lock whose holder process has
// provably exited is taken over at once; in every other case, at expiry.

/// Child: acquires the lock `JOBSAFE_TEST_KEY` in the store the parent names
/// (its clock at `START_MS`, like the parent's), reports `holding <handle>`,
/// and keeps it until the parent closes its input or kills it.
fn hold_in_child() {
    let store = SharedStore::from_env();
    let locks = JobLock::new(store.open(), Arc::new(ManualClock::new(START_MS)));
    let guard = acquired(
        locks
            .acquire(
                &vault(&child::var("JOBSAFE_TEST_KEY")),
                TTL,
                &LockRequest::new(),
            )
            .unwrap(),
    );
    child::report(&format!(
        "holding {}",
        serde_json::to_string(&guard.handle()).unwrap()
    ));
    while child::receive().is_some() {}
    // Exits without releasing, as a holder that crashed would.
    let _ = guard.into_handle();
}

/// Starts a child of `test` (which must begin by running [`hold_in_child`] in
/// the child) that holds the lock `name` in `store`, and returns it with its
/// handle. `wrapper` runs it under another program, such as `unshare`.
fn spawn_holder(
    wrapper: &[&str],
    test: &str,
    store: &SharedStore,
    name: &str,
) -> (Child, LockHandle) {
    let mut vars = store.vars();
    vars.insert("JOBSAFE_TEST_KEY", name.to_owned());
    let mut holder = Child::spawn_under(wrapper, test, "holder", &vars);
    let report = holder.expect_report();
    let Some(handle) = report.strip_prefix("holding ") else {
        panic!("unexpected report {report:?}");
    };
    let handle = serde_json::from_str(handle).unwrap();
    (holder, handle)
}

/// A lock over the store in `store`'s directory, timed by a fresh `ManualClock`
/// at `START_MS`.
fn locks_on(store: &SharedStore) -> (JobLock<Arc<dyn Store>>, ManualClock) {
    let clock = ManualClock::new(START_MS);
    (JobLock::new(store.open(), Arc::new(clock.clone())), clock)
}

#[test]
fn a_dead_holders_lock_is_taken_over_at_once_with_a_greater_token() {
    const TEST: &str = "a_dead_holders_lock_is_taken_over_at_once_with_a_greater_token";
    if child::role().is_some() {
        return hold_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    for store in [
        SharedStore::Dir(dir.path().join("dir")),
        SharedStore::Log(dir.path().join("log")),
    ] {
        let name = store.kind();
        let (locks, clock) = locks_on(&store);
        let (holder, handle) = spawn_holder(&[], TEST, &store, "a");
        holder.kill();

        // Looking changes nothing: the record is reported as it is.
        let record = locks.peek(&vault("a")).unwrap().unwrap();
        assert_eq!(record.handle(), handle, "{name}");
        assert!(!record.is_expired_at(clock_now(&clock)), "{name}");
        assert_eq!(record.holder_liveness(), ProcessLiveness::Dead, "{name}");
        assert_eq!(locks.peek(&vault("a")).unwrap().as_ref(), Some(&record));

        // Long before its lease ends, the next acquire takes it over.
        let next = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert!(next.token() > handle.token, "{name}");
        assert_eq!(clock_now(&clock), START_MS, "{name}: no time passed");
        assert_eq!(next.record().process, ProcessIdentity::current(), "{name}");
        assert!(matches!(
            locks.renew(&handle, TTL).unwrap(),
            Renewal::Lost(LostLease::TakenOver(_))
        ));
    }
}

#[test]
fn acquire_within_takes_a_dead_holders_lock_without_waiting() {
    const TEST: &str = "acquire_within_takes_a_dead_holders_lock_without_waiting";
    if child::role().is_some() {
        return hold_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SharedStore::Dir(dir.path().join("store"));
    let (locks, clock) = locks_on(&store);
    let (holder, handle) = spawn_holder(&[], TEST, &store, "a");
    held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    holder.kill();
    // No wait at all: a lease would time it out at once.
    let next = locks
        .acquire_within(&vault("a"), TTL, &LockRequest::new(), Duration::ZERO)
        .unwrap();
    assert!(next.token() > handle.token);
    assert_eq!(clock_now(&clock), START_MS);
}

#[test]
fn a_live_holders_lock_is_not_taken_over_before_expiry() {
    const TEST: &str = "a_live_holders_lock_is_not_taken_over_before_expiry";
    if child::role().is_some() {
        return hold_in_child();
    }
    // Held by this very process.
    for (name, locks, clock, _dir) in backends() {
        let guard = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert_eq!(guard.record().process, ProcessIdentity::current(), "{name}");
        assert_eq!(guard.record().holder_liveness(), ProcessLiveness::Alive);
        let handle = guard.into_handle();
        clock.advance(TTL - Duration::from_millis(1));
        held(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        clock.advance(Duration::from_millis(1));
        let next = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert!(next.token() > handle.token, "{name}");
    }

    // Held by another process that runs.
    let dir = tempfile::tempdir().unwrap();
    let store = SharedStore::Dir(dir.path().join("store"));
    let (locks, clock) = locks_on(&store);
    let (holder, handle) = spawn_holder(&[], TEST, &store, "a");
    let record = held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    assert_eq!(record.handle(), handle);
    assert_eq!(record.holder_liveness(), ProcessLiveness::Alive);
    clock.advance(TTL - Duration::from_millis(1));
    held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    clock.advance(Duration::from_millis(1));
    let next = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    assert!(next.token() > handle.token);
    holder.finish();
}

#[test]
fn a_holder_in_another_pid_namespace_keeps_its_lease_until_expiry() {
    const TEST: &str = "a_holder_in_another_pid_namespace_keeps_its_lease_until_expiry";
    if child::role().is_some() {
        return hold_in_child();
    }
    // A PID namespace of its own, with its own /proc: the child names itself
    // there (as pid 1), and its id means nothing here.
    let unshare = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
    let works = std::process::Command::new(unshare[0])
        .args(&unshare[1..])
        .arg("true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !works {
        println!(
            "SKIPPED: {TEST}: `unshare --pid --fork --mount-proc` is not available here \
             (a_holder_recorded_in_another_pid_namespace_keeps_its_lease_until_expiry \
             checks the rule on a written record)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SharedStore::Dir(dir.path().join("store"));
    let (locks, clock) = locks_on(&store);
    let (holder, handle) = spawn_holder(&unshare, TEST, &store, "a");
    let record = locks.peek(&vault("a")).unwrap().unwrap();
    let Some(process) = &record.process else {
        panic!("the child in its own PID namespace did not record its process");
    };
    let ours = ProcessIdentity::current().unwrap();
    assert_ne!(process.pid_ns, ours.pid_ns);
    assert_eq!(process.boot_id, ours.boot_id);
    // Whether it runs or has exited, its lease stands until its expiry.
    held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    holder.finish();
    assert_eq!(record.holder_liveness(), ProcessLiveness::Unknown);
    clock.advance(TTL - Duration::from_millis(1));
    held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    clock.advance(Duration::from_millis(1));
    let next = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    assert!(next.token() > handle.token);
}

/// Writes a lock at `vault("a")` straight into the store, as a holder with
/// `process` (or, for `None`, as a version that recorded no process) would
/// have: job `planted`, leased from `START_MS` for `TTL`. Returns its token.
fn plant_lock(locks: &Locks, process: Option<serde_json::Value>) -> FencingToken {
    let mut record = serde_json::json!({
        "schema": 1,
        "job_id": "planted",
        "actor": null,
        "metadata": {},
        "started_ms": START_MS,
        "renewed_ms": START_MS,
        "expires_ms": START_MS + TTL.as_millis() as u64,
    });
    if let Some(process) = process {
        record["process"] = process;
    }
    let stored_key = Key::new(["locks", "vault", "a"]).unwrap();
    let bytes = serde_json::to_vec(&record).unwrap();
    let version = locks
        .store()
        .put(&stored_key, &bytes, jobsafe::Expect::Absent)
        .unwrap();
    FencingToken::new(version.get())
}

/// This process as a lock acquired at `START_MS` records it, with the fields in
/// `changes` replaced.
fn this_process_with(changes: serde_json::Value) -> serde_json::Value {
    let mut process = serde_json::to_value(ProcessIdentity::current().unwrap()).unwrap();
    process["renewed_ms"] = START_MS.into();
    for (field, value) in changes.as_object().unwrap() {
        process[field] = value.clone();
    }
    process
}

/// An earlier start than this process's: a process that had our id before us.
fn earlier_start() -> u64 {
    ProcessIdentity::current().unwrap().start_ticks - 1
}

/// Checks on each backend that the lock planted with `process` is held until
/// exactly its expiry, then taken over with a greater token.
fn check_held_until_expiry(process: &serde_json::Value, why: &str) {
    for (name, locks, clock, _dir) in backends() {
        let planted = plant_lock(&locks, Some(process.clone()));
        let record = held(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert_eq!(record.job_id, "planted", "{name}: {why}");
        assert_eq!(
            record.holder_liveness(),
            ProcessLiveness::Unknown,
            "{name}: {why}"
        );
        clock.advance(TTL - Duration::from_millis(1));
        held(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        clock.advance(Duration::from_millis(1));
        let next = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert!(next.token() > planted, "{name}: {why}");
    }
}

#[test]
fn a_holder_recorded_in_another_pid_namespace_keeps_its_lease_until_expiry() {
    // Our id with an earlier start would be a dead holder here; in another PID
    // namespace it names another process.
    let ours = ProcessIdentity::current().unwrap();
    check_held_until_expiry(
        &this_process_with(serde_json::json!({
            "pid_ns": ours.pid_ns + 1,
            "start_ticks": earlier_start(),
        })),
        "another PID namespace",
    );
}

#[test]
fn a_holder_from_another_boot_keeps_its_lease_until_expiry() {
    // Most likely dead with its boot, but another machine that reaches the same
    // directory looks the same: not a proof.
    check_held_until_expiry(
        &this_process_with(serde_json::json!({
            "boot_id": "00000000-0000-4000-8000-000000000000",
            "start_ticks": earlier_start(),
        })),
        "another boot",
    );
}

#[test]
fn a_reused_pid_is_a_dead_holder() {
    for (name, locks, clock, _dir) in backends() {
        // Our own id, with a start before ours: the process that had it exited.
        let planted = plant_lock(
            &locks,
            Some(this_process_with(
                serde_json::json!({ "start_ticks": earlier_start() }),
            )),
        );
        let record = locks.peek(&vault("a")).unwrap().unwrap();
        assert_eq!(record.holder_liveness(), ProcessLiveness::Dead, "{name}");
        let next = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert!(next.token() > planted, "{name}");
        assert_eq!(clock_now(&clock), START_MS);
    }
}

#[test]
fn a_holder_process_older_than_the_last_renewal_keeps_its_lease_until_expiry() {
    // A dead process acquired the lock, and a version that does not record
    // processes renewed it since (keeping the field as it was): whoever renewed
    // is not known.
    check_held_until_expiry(
        &this_process_with(serde_json::json!({
            "start_ticks": earlier_start(),
            "renewed_ms": START_MS - 1_000,
        })),
        "renewed since by an unknown process",
    );
}

#[test]
fn a_record_without_a_holder_process_keeps_its_lease_until_expiry() {
    // As written before locks recorded their process.
    for (name, locks, clock, _dir) in backends() {
        let planted = plant_lock(&locks, None);
        let record = held(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert_eq!(record.process, None, "{name}");
        assert_eq!(record.token, planted);
        clock.advance(TTL - Duration::from_millis(1));
        held(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        clock.advance(Duration::from_millis(1));
        let next = acquired(
            locks
                .acquire(&vault("a"), TTL, &LockRequest::new())
                .unwrap(),
        );
        assert!(next.token() > planted, "{name}");
    }
}

/// A store that forwards everything to `S` but keeps the default
/// `is_machine_local` (`false`), as a store shared by machines does.
#[derive(Debug)]
struct NotMachineLocal<S>(S);

impl<S: Store> Store for NotMachineLocal<S> {
    fn get(&self, key: &Key) -> jobsafe::Result<Option<jobsafe::Entry>> {
        self.0.get(key)
    }
    fn put(
        &self,
        key: &Key,
        value: &[u8],
        expect: jobsafe::Expect,
    ) -> jobsafe::Result<jobsafe::Version> {
        self.0.put(key, value, expect)
    }
    fn delete(&self, key: &Key, expect: jobsafe::Expect) -> jobsafe::Result<bool> {
        self.0.delete(key, expect)
    }
    fn list(
        &self,
        prefix: &Prefix,
        after: Option<&Key>,
        limit: usize,
    ) -> jobsafe::Result<jobsafe::store::ListPage> {
        self.0.list(prefix, after, limit)
    }
    fn apply(&self, batch: &jobsafe::Batch) -> jobsafe::Result<Vec<jobsafe::store::Applied>> {
        self.0.apply(batch)
    }
    fn quarantine(&self, key: &Key) -> jobsafe::Result<Option<jobsafe::store::Quarantined>> {
        self.0.quarantine(key)
    }
}

#[test]
fn a_store_not_declared_machine_local_keeps_the_lease_of_a_dead_holder() {
    const TEST: &str = "a_store_not_declared_machine_local_keeps_the_lease_of_a_dead_holder";
    if child::role().is_some() {
        return hold_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SharedStore::Dir(dir.path().join("store"));
    let (holder, handle) = spawn_holder(&[], TEST, &store, "a");
    holder.kill();
    let clock = ManualClock::new(START_MS);
    let locks = JobLock::new(NotMachineLocal(store.open()), Arc::new(clock.clone()));
    let record = held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    // Dead as far as this machine can tell, and still its lease stands.
    assert_eq!(record.holder_liveness(), ProcessLiveness::Dead);
    clock.advance(TTL - Duration::from_millis(1));
    held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    clock.advance(Duration::from_millis(1));
    let mut next = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    assert!(next.token() > handle.token);
    // Nor does such a store record processes.
    assert_eq!(next.record().process, None);
    let Renewal::Renewed(renewed) = next.renew(TTL).unwrap() else {
        panic!("the holder could not renew");
    };
    assert_eq!(renewed.process, None);
}

#[test]
fn a_handed_off_lock_belongs_to_the_process_that_renewed_it() {
    const TEST: &str = "a_handed_off_lock_belongs_to_the_process_that_renewed_it";
    if child::role().is_some() {
        return hold_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SharedStore::Dir(dir.path().join("store"));
    let (locks, clock) = locks_on(&store);

    // Renewed here before the acquirer died: ours, whatever became of it.
    let (acquirer, handle) = spawn_holder(&[], TEST, &store, "a");
    clock.advance(Duration::from_secs(1));
    let Renewal::Renewed(renewed) = locks.renew(&handle, TTL).unwrap() else {
        panic!("the receiver could not renew");
    };
    assert_eq!(renewed.process, ProcessIdentity::current());
    acquirer.kill();
    held(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    assert_eq!(locks.release(&handle).unwrap(), Release::Released);

    // The acquirer died before the receiver renewed: the lock went with it, and
    // the receiver learns so instead of working on.
    let (acquirer, handle) = spawn_holder(&[], TEST, &store, "b");
    acquirer.kill();
    let next = acquired(
        locks
            .acquire(&vault("b"), TTL, &LockRequest::new())
            .unwrap(),
    );
    match locks.renew(&handle, TTL).unwrap() {
        Renewal::Lost(LostLease::TakenOver(current)) => assert_eq!(&current, next.record()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_lease_not_longer_than_the_skew_margin_is_refused_naming_both() {
    let clock = ManualClock::new(START_MS);
    let margin = Duration::from_secs(5);
    let locks = JobLock::builder(MemStore::new(), Arc::new(clock.clone()))
        .skew_margin(margin)
        .build()
        .unwrap();
    for ttl in [Duration::ZERO, Duration::from_secs(1), margin] {
        let err = match locks.acquire(&vault("a"), ttl, &LockRequest::new()) {
            Err(e) => e,
            Ok(_) => panic!("a lease of {ttl:?} under a margin of {margin:?} was accepted"),
        };
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{ttl:?}")) && text.contains("5s"),
            "{text}"
        );
    }
    // Just above the margin: held, with the time above it left.
    let guard = acquired(
        locks
            .acquire(
                &vault("a"),
                margin + Duration::from_millis(1),
                &LockRequest::new(),
            )
            .unwrap(),
    );
    assert_eq!(guard.remaining(), Duration::from_millis(1));
    let handle = guard.into_handle();
    let err = locks.renew(&handle, margin).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("skew margin"), "{err}");
}

#[test]
fn a_lock_namespace_too_deep_for_any_key_is_refused_at_build() {
    let deepest = Prefix::new((0..Key::MAX_SEGMENTS).map(|i| i.to_string())).unwrap();
    let err = JobLock::builder(MemStore::new(), Arc::new(ManualClock::new(START_MS)))
        .namespace(deepest)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    assert!(err.to_string().contains("JobLock"), "{err}");
}

#[test]
fn a_lock_actor_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, locks, _clock, _dir) in backends() {
        let actor = text_of_len(LockRequest::MAX_ACTOR_LEN);
        let request = LockRequest::new().actor(actor.clone());
        let guard = acquired(locks.acquire(&vault("a"), TTL, &request).unwrap());
        let stored = locks.peek(&vault("a")).unwrap().unwrap();
        assert_eq!(stored.actor.as_deref(), Some(actor.as_str()), "{name}");
        let before = snapshot(locks.store());
        let over = LockRequest::MAX_ACTOR_LEN + 1;
        let request = LockRequest::new().actor(text_of_len(over));
        for key in [vault("a"), vault("b")] {
            let refused = locks.acquire(&key, TTL, &request);
            assert_too_large(refused, "lock actor", over, LockRequest::MAX_ACTOR_LEN);
        }
        assert_eq!(snapshot(locks.store()), before, "{name}");
        drop(guard);
    }
}

#[test]
fn lock_metadata_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, locks, _clock, _dir) in backends() {
        let metadata = metadata_of_len(LockRequest::MAX_METADATA_LEN);
        let request = LockRequest::new().metadata_map(metadata.clone());
        let guard = acquired(locks.acquire(&vault("a"), TTL, &request).unwrap());
        assert_eq!(guard.record().metadata, metadata, "{name}");
        let before = snapshot(locks.store());
        let over = LockRequest::MAX_METADATA_LEN + 1;
        let request = LockRequest::new().metadata_map(metadata_of_len(over));
        for key in [vault("a"), vault("b")] {
            let refused = locks.acquire(&key, TTL, &request);
            let limit = LockRequest::MAX_METADATA_LEN;
            assert_too_large(refused, "lock metadata", over, limit);
        }
        assert_eq!(snapshot(locks.store()), before, "{name}");
        drop(guard);
    }
}

#[test]
fn a_bounded_wait_for_a_keep_alive_event_ends_with_what_it_found() {
    use jobsafe::lock::KeepAliveWait;

    let clock = ManualClock::new(START_MS);
    let locks = JobLock::new(MemStore::new(), Arc::new(clock.clone()));
    let guard = acquired(
        locks
            .acquire(&vault("a"), TTL, &LockRequest::new())
            .unwrap(),
    );
    let keep_alive = guard.keep_alive(TTL, Duration::from_secs(20)).unwrap();
    // The clock has not moved: the wait ends empty, and the keep-alive runs on.
    assert!(matches!(
        keep_alive.next_event_timeout(Duration::from_millis(5)),
        KeepAliveWait::TimedOut
    ));
    clock.advance(Duration::from_secs(20));
    assert!(matches!(
        keep_alive.next_event_timeout(Duration::from_secs(60)),
        KeepAliveWait::Event(KeepAliveEvent::Renewed(_))
    ));
    keep_alive.stop();
    assert!(matches!(
        keep_alive.next_event_timeout(Duration::from_secs(60)),
        KeepAliveWait::Stopped
    ));
}

/// A stopped keep-alive lets go of the lock's store at once, not at its next
/// renewal (which a clock that stands still never brings): the store is
/// dropped once its last user is, so an exclusive `LogStore` can be opened
/// again right after.
#[test]
fn a_stopped_keep_alive_lets_go_of_the_store() {
    let store = Arc::new(MemStore::new());
    let clock = ManualClock::new(0);
    let locks = JobLock::new(Arc::clone(&store), Arc::new(clock));
    let guard = acquired(
        locks
            .acquire(&vault("kept"), Duration::from_secs(60), &LockRequest::new())
            .unwrap(),
    );
    let keep_alive = guard
        .keep_alive(Duration::from_secs(60), Duration::from_secs(10))
        .unwrap();
    drop(keep_alive);
    guard.release().unwrap();
    drop(locks);
    // Only a renewer that waits for its next period holds the store past
    // this bound: the clock never moves.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&store) > 1 {
        assert!(
            std::time::Instant::now() < until,
            "the stopped keep-alive still holds the store"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
