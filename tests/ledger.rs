//! `JobLedger`: reservations, retries, TTL, refunds, fingerprints, restarts and
//! both side-effect patterns, on `MemStore` and `DirStore` with a `ManualClock`.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::credits::balance_key;
use jobsafe::ledger::{ChargeRequest, Reservation, ReservationState, Reserve};
use jobsafe::store::BatchOp;
use jobsafe::{AttemptId, DirStore, Error, Expect, JobLedger, ManualClock, MemStore, Store};
use tempfile::TempDir;

use common::limits::{assert_too_large, metadata_of_len, snapshot, text_of_len};

const START_MS: u64 = 1_700_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);
const ACCOUNT: &str = "lic:abc123";

type Ledger = JobLedger<Arc<dyn Store>>;

/// A ledger over each backend, with its clock and its store (for balances).
fn backends() -> Vec<(&'static str, Ledger, ManualClock, Option<TempDir>)> {
    common::backends::each_with_clock(START_MS, JobLedger::new)
}

fn new(outcome: Reserve) -> Reservation {
    match outcome {
        Reserve::New(r) => r,
        other => panic!("expected a new reservation, found {other:?}"),
    }
}

fn existing(outcome: Reserve) -> Reservation {
    match outcome {
        Reserve::Existing(r) => r,
        other => panic!("expected a free retry, found {other:?}"),
    }
}

fn in_flight(outcome: Reserve) -> Reservation {
    match outcome {
        Reserve::InFlight(r) => r,
        other => panic!("expected a reservation with a side effect in flight, found {other:?}"),
    }
}

fn request() -> ChargeRequest {
    ChargeRequest::new()
        .meta("backend", "deepgram")
        .meta("tier", "pro")
        .meta("install_id", "inst-7")
        .meta("license_fingerprint", "abc123")
        .meta("minutes", 42)
}

#[test]
fn a_first_reserve_is_new_and_retries_are_free() {
    for (name, ledger, _clock, _dir) in backends() {
        let first = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert_eq!(
            (first.account.as_str(), first.job_id.as_str()),
            (ACCOUNT, "job-1")
        );
        assert_eq!(first.state, ReservationState::Charged);
        assert_eq!(first.expires_ms, START_MS + 3_600_000, "{name}");
        let retry = existing(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert_eq!(retry, first, "{name}");
        // Another account or job id is another reservation.
        new(ledger.reserve("inst:x", "job-1", &request()).unwrap());
        new(ledger.reserve(ACCOUNT, "job-2", &request()).unwrap());
    }
}

#[test]
fn of_concurrent_first_calls_exactly_one_is_new() {
    for (name, ledger, _clock, _dir) in backends() {
        for job in 0..5 {
            let job_id = format!("job-{job}");
            let barrier = Barrier::new(8);
            let news: usize = std::thread::scope(|scope| {
                let calls: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            let outcome = ledger.reserve(ACCOUNT, &job_id, &request()).unwrap();
                            usize::from(matches!(outcome, Reserve::New(_)))
                        })
                    })
                    .collect();
                calls.into_iter().map(|c| c.join().unwrap()).sum()
            });
            assert_eq!(news, 1, "{name} {job_id}");
        }
    }
}

#[test]
fn after_the_ttl_the_same_job_id_is_new_again() {
    for (name, ledger, clock, _dir) in backends() {
        let first = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        clock.advance(HOUR - Duration::from_millis(1));
        existing(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        clock.advance(Duration::from_millis(1));
        let second = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert_ne!(second.id, first.id, "{name}");
        assert!(second.version > first.version);
    }
}

#[test]
fn a_reserve_repeated_with_its_attempt_id_is_its_own_new_reservation() {
    for (name, ledger, clock, _dir) in backends() {
        let attempt = AttemptId::new();
        let first_call = request().attempt(attempt.clone());
        let first = new(ledger.reserve(ACCOUNT, "job-1", &first_call).unwrap());
        assert_eq!(first.attempt.as_ref(), Some(&attempt), "{name}");
        // The same call again: its own reservation, as it first returned it.
        let again = new(ledger.reserve(ACCOUNT, "job-1", &first_call).unwrap());
        assert_eq!(again, first, "{name}");
        // Another request for the job id is a free retry.
        let retry = existing(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert_eq!(retry.attempt.as_ref(), Some(&attempt), "{name}");
        // Past the TTL the reservation is still the attempt's own: a repeat
        // never reserves (and charges) again.
        clock.advance(HOUR);
        let late = new(ledger.reserve(ACCOUNT, "job-1", &first_call).unwrap());
        assert_eq!(late.id, first.id, "{name}");
        // Refunded, there is nothing left of it: a repeat reserves anew.
        ledger.refund(ACCOUNT, "job-1").unwrap().unwrap();
        let anew = new(ledger.reserve(ACCOUNT, "job-1", &first_call).unwrap());
        assert_ne!(anew.id, first.id, "{name}");
        // An external charge's reservation, repeated, is new, not in flight.
        let pending = request().attempt(AttemptId::new());
        let first = new(ledger.reserve_pending(ACCOUNT, "job-2", &pending).unwrap());
        let again = new(ledger.reserve_pending(ACCOUNT, "job-2", &pending).unwrap());
        assert_eq!(again, first, "{name}");
        in_flight(
            ledger
                .reserve_pending(ACCOUNT, "job-2", &request())
                .unwrap(),
        );
    }
}

#[test]
fn a_custom_ttl_is_honoured() {
    let clock = ManualClock::new(START_MS);
    let ledger = JobLedger::builder(MemStore::new(), Arc::new(clock.clone()))
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
    clock.advance(Duration::from_secs(60));
    new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
}

#[test]
fn a_refund_goes_to_exactly_one_caller_and_the_job_id_is_new_again() {
    for (name, ledger, _clock, _dir) in backends() {
        let reserved = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        let refunded = ledger.refund(ACCOUNT, "job-1").unwrap();
        assert_eq!(refunded.as_ref(), Some(&reserved), "{name}");
        assert_eq!(
            ledger.refund(ACCOUNT, "job-1").unwrap(),
            None,
            "{name}: refunded twice"
        );
        assert_eq!(ledger.refund(ACCOUNT, "never").unwrap(), None);
        new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
    }
}

#[test]
fn of_concurrent_refunds_exactly_one_gets_the_reservation() {
    for (name, ledger, _clock, _dir) in backends() {
        for job in 0..5 {
            let job_id = format!("job-{job}");
            new(ledger.reserve(ACCOUNT, &job_id, &request()).unwrap());
            let barrier = Barrier::new(8);
            let refunds: usize = std::thread::scope(|scope| {
                let calls: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            usize::from(ledger.refund(ACCOUNT, &job_id).unwrap().is_some())
                        })
                    })
                    .collect();
                calls.into_iter().map(|c| c.join().unwrap()).sum()
            });
            assert_eq!(refunds, 1, "{name} {job_id}");
        }
    }
}

#[test]
fn a_refund_still_works_after_the_ttl() {
    for (name, ledger, clock, _dir) in backends() {
        let reserved = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        clock.advance(HOUR * 5);
        assert_eq!(
            ledger.refund(ACCOUNT, "job-1").unwrap(),
            Some(reserved),
            "{name}"
        );
    }
}

#[test]
fn a_refund_of_a_reservation_as_read_never_refunds_a_later_one() {
    for (name, ledger, clock, _dir) in backends() {
        let first = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert!(ledger.refund_reservation(&first).unwrap(), "{name}");
        assert_eq!(ledger.lookup(ACCOUNT, "job-1").unwrap(), None, "{name}");
        assert!(!ledger.refund_reservation(&first).unwrap(), "{name}: twice");

        // The job id is reserved again, and later expires and is reserved once
        // more: a refund decided on an older reading leaves the new one.
        let second = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        clock.advance(HOUR * 2);
        let third = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert_ne!(second.id, third.id);
        assert!(!ledger.refund_reservation(&second).unwrap(), "{name}");
        assert_eq!(
            ledger.lookup(ACCOUNT, "job-1").unwrap(),
            Some(third),
            "{name}"
        );

        // A side effect in flight is not refunded.
        let pending = new(ledger
            .reserve_pending(ACCOUNT, "job-2", &request())
            .unwrap());
        assert!(!ledger.refund_reservation(&pending).unwrap(), "{name}");
        let kept = ledger.lookup(ACCOUNT, "job-2").unwrap().unwrap();
        assert_eq!(kept.state, ReservationState::ChargePending, "{name}");
    }
}

#[test]
fn a_different_fingerprint_is_an_error_carrying_the_reservation() {
    for (name, ledger, clock, _dir) in backends() {
        let stored = new(ledger
            .reserve(ACCOUNT, "job-1", &request().fingerprint("sha:aaa"))
            .unwrap());
        // The same request again is a retry; one without a fingerprint too.
        existing(
            ledger
                .reserve(ACCOUNT, "job-1", &request().fingerprint("sha:aaa"))
                .unwrap(),
        );
        existing(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        let err = ledger
            .reserve(ACCOUNT, "job-1", &request().fingerprint("sha:bbb"))
            .unwrap_err();
        match &err {
            Error::FingerprintMismatch {
                stored: found,
                requested,
                ..
            } => {
                assert_eq!(**found, stored, "{name}");
                assert_eq!(requested, "sha:bbb");
            }
            other => panic!("{name}: {other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("sha:aaa") && message.contains("sha:bbb") && message.contains("job-1"),
            "{message}"
        );
        // Once expired, the job id is free for any request.
        clock.advance(HOUR);
        new(ledger
            .reserve(ACCOUNT, "job-1", &request().fingerprint("sha:bbb"))
            .unwrap());
    }
}

#[test]
fn a_restarted_ledger_sees_everything_and_refunds_without_the_callers_context() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let clock = ManualClock::new(START_MS);
    let reserved = {
        let ledger = JobLedger::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));
        new(ledger
            .reserve(ACCOUNT, "job-1", &request().fingerprint("sha:aaa"))
            .unwrap())
    }; // the process ends here
    let ledger = JobLedger::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));
    existing(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
    let refunded = ledger.refund(ACCOUNT, "job-1").unwrap().unwrap();
    assert_eq!(refunded, reserved);
    assert_eq!(refunded.metadata["backend"], "deepgram");
    assert_eq!(refunded.metadata["tier"], "pro");
    assert_eq!(refunded.metadata["install_id"], "inst-7");
    assert_eq!(refunded.metadata["license_fingerprint"], "abc123");
    assert_eq!(refunded.metadata["minutes"], 42);
}

#[test]
fn lookup_and_list_change_nothing() {
    for (name, ledger, clock, _dir) in backends() {
        let a = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        new(ledger.reserve(ACCOUNT, "job-2", &request()).unwrap());
        new(ledger.reserve("inst:other", "job-1", &request()).unwrap());
        clock.advance(HOUR * 2);
        assert_eq!(
            ledger.lookup(ACCOUNT, "job-1").unwrap(),
            Some(a.clone()),
            "{name}"
        );
        assert!(a.is_expired_at(START_MS + 2 * 3_600_000));
        assert_eq!(ledger.lookup(ACCOUNT, "nope").unwrap(), None);
        let all = ledger.list(None).unwrap();
        assert_eq!(all.reservations.len(), 3, "{name}");
        let mine = ledger.list(Some(ACCOUNT)).unwrap();
        let jobs: Vec<&str> = mine
            .reservations
            .iter()
            .map(|r| r.job_id.as_str())
            .collect();
        assert_eq!(jobs, ["job-1", "job-2"]);
        assert_eq!(ledger.list(None).unwrap().reservations, all.reservations);
    }
}

#[test]
fn purge_removes_only_long_expired_settled_reservations() {
    for (name, ledger, clock, _dir) in backends() {
        new(ledger.reserve(ACCOUNT, "old", &request()).unwrap());
        let pending = new(ledger
            .reserve_pending(ACCOUNT, "old-pending", &request())
            .unwrap());
        new(ledger
            .reserve(ACCOUNT, "old-refunding", &request())
            .unwrap());
        ledger
            .begin_refund(ACCOUNT, "old-refunding")
            .unwrap()
            .unwrap();
        clock.advance(HOUR * 30);
        new(ledger.reserve(ACCOUNT, "recent", &request()).unwrap());
        clock.advance(HOUR * 2);
        assert_eq!(ledger.purge_expired(HOUR * 24).unwrap(), 1, "{name}");
        let left: Vec<String> = ledger
            .list(None)
            .unwrap()
            .reservations
            .into_iter()
            .map(|r| r.job_id)
            .collect();
        assert_eq!(left, ["old-pending", "old-refunding", "recent"], "{name}");
        // A pending charge never expires: its job id is not new.
        in_flight(ledger.reserve(ACCOUNT, "old-pending", &request()).unwrap());
        assert_eq!(
            ledger.lookup(ACCOUNT, "old-pending").unwrap().unwrap().id,
            pending.id
        );
    }
}

fn balance(store: &dyn Store) -> i64 {
    let entry = store.get(&balance_key(ACCOUNT)).unwrap().unwrap();
    String::from_utf8(entry.value).unwrap().parse().unwrap()
}

/// An operation adding `delta` to the balance, guarded by its current version.
fn add_to_balance(store: &dyn Store, delta: i64) -> jobsafe::Result<Vec<BatchOp>> {
    let entry = store
        .get(&balance_key(ACCOUNT))?
        .ok_or_else(|| Error::InvalidArgument("no balance".into()))?;
    let now: i64 = String::from_utf8_lossy(&entry.value).parse().unwrap_or(0);
    if now + delta < 0 {
        return Err(Error::InvalidArgument(format!(
            "insufficient credits: {now}"
        )));
    }
    Ok(vec![BatchOp::Put {
        key: balance_key(ACCOUNT),
        value: (now + delta).to_string().into_bytes(),
        expect: Expect::Version(entry.version),
    }])
}

#[test]
fn a_balance_in_the_same_store_is_charged_and_refunded_exactly_once() {
    for (name, ledger, _clock, _dir) in backends() {
        let store = ledger.store().as_ref();
        store
            .put(&balance_key(ACCOUNT), b"3", Expect::Absent)
            .unwrap();
        let charge = |_: &Reservation| add_to_balance(store, -1);

        // Concurrent duplicates of one request: charged once.
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    ledger
                        .reserve_with(ACCOUNT, "job-1", &request(), charge)
                        .unwrap()
                });
            }
        });
        assert_eq!(balance(store), 2, "{name}");

        // Concurrent refunds: credited once.
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    ledger
                        .refund_with(ACCOUNT, "job-1", |_| add_to_balance(store, 1))
                        .unwrap()
                });
            }
        });
        assert_eq!(balance(store), 3, "{name}");

        // An effect that refuses (insufficient credits) writes nothing at all.
        store.put(&balance_key(ACCOUNT), b"0", Expect::Any).unwrap();
        let err = ledger
            .reserve_with(ACCOUNT, "job-2", &request(), charge)
            .unwrap_err();
        assert!(err.to_string().contains("insufficient"), "{err}");
        assert_eq!(ledger.lookup(ACCOUNT, "job-2").unwrap(), None, "{name}");
        assert_eq!(balance(store), 0);
    }
}

#[test]
fn an_external_charge_stays_pending_until_confirmed_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let clock = ManualClock::new(START_MS);
    let open = || JobLedger::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));

    let ledger = open();
    let charging = new(ledger
        .reserve_pending(ACCOUNT, "job-1", &request())
        .unwrap());
    assert_eq!(charging.state, ReservationState::ChargePending);
    // A retry while the charge is in flight is neither charged again nor free.
    in_flight(
        ledger
            .reserve_pending(ACCOUNT, "job-1", &request())
            .unwrap(),
    );
    // The external call fails (or the process dies): nothing is confirmed.
    drop(ledger);

    let ledger = open();
    let pending = ledger.pending().unwrap().reservations;
    assert_eq!(
        pending,
        std::slice::from_ref(&charging),
        "a failed side effect stays listed"
    );
    // A refund of an unconfirmed charge is refused rather than guessed.
    let err = ledger.refund(ACCOUNT, "job-1").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // Recovery retries the charge with the reservation id as idempotency key, then
    // confirms it.
    let confirmed = ledger.confirm_charge(&pending[0]).unwrap().unwrap();
    assert_eq!(confirmed.state, ReservationState::Charged);
    assert_eq!(
        ledger.confirm_charge(&pending[0]).unwrap().unwrap().state,
        ReservationState::Charged
    );
    assert!(ledger.pending().unwrap().reservations.is_empty());
}

#[test]
fn a_charge_that_failed_for_good_is_cancelled_and_the_job_id_is_new() {
    for (name, ledger, _clock, _dir) in backends() {
        let charging = new(ledger
            .reserve_pending(ACCOUNT, "job-1", &request())
            .unwrap());
        assert!(ledger.cancel_charge(&charging).unwrap(), "{name}");
        assert!(!ledger.cancel_charge(&charging).unwrap());
        let again = new(ledger
            .reserve_pending(ACCOUNT, "job-1", &request())
            .unwrap());
        // A cancel of the old reservation cannot touch the new one.
        assert!(!ledger.cancel_charge(&charging).unwrap());
        assert!(ledger.confirm_charge(&charging).unwrap().is_none());
        assert_eq!(
            ledger.lookup(ACCOUNT, "job-1").unwrap().unwrap().id,
            again.id
        );
    }
}

#[test]
fn an_external_refund_starts_once_and_is_listed_until_completed() {
    for (name, ledger, _clock, _dir) in backends() {
        new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        let barrier = Barrier::new(6);
        let started: Vec<Reservation> = std::thread::scope(|scope| {
            let calls: Vec<_> = (0..6)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        ledger.begin_refund(ACCOUNT, "job-1").unwrap()
                    })
                })
                .collect();
            calls
                .into_iter()
                .filter_map(|c| c.join().unwrap())
                .collect()
        });
        assert_eq!(
            started.len(),
            1,
            "{name}: the refund started more than once"
        );
        let refunding = &started[0];
        assert_eq!(refunding.state, ReservationState::RefundPending);
        // In flight: listed, not refundable again, neither new nor a free retry.
        assert_eq!(
            ledger.pending().unwrap().reservations,
            std::slice::from_ref(refunding)
        );
        assert_eq!(ledger.refund(ACCOUNT, "job-1").unwrap(), None);
        in_flight(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert!(ledger.complete_refund(refunding).unwrap(), "{name}");
        assert!(!ledger.complete_refund(refunding).unwrap());
        assert!(ledger.pending().unwrap().reservations.is_empty());
        new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
    }
}

#[test]
fn an_unreadable_reservation_is_reported_never_taken_for_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path().join("store")).unwrap();
    let ledger = JobLedger::new(store, Arc::new(ManualClock::new(START_MS)));
    let key = ledger.key(ACCOUNT, "job-1").unwrap();
    ledger
        .store()
        .put(&key, b"garbage", Expect::Absent)
        .unwrap();
    for err in [
        ledger
            .reserve(ACCOUNT, "job-1", &request())
            .map(|_| ())
            .unwrap_err(),
        ledger.refund(ACCOUNT, "job-1").map(|_| ()).unwrap_err(),
        ledger.lookup(ACCOUNT, "job-1").map(|_| ()).unwrap_err(),
    ] {
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("ledger/lic:abc123/job-1"), "{err}");
    }
    let list = ledger.list(None).unwrap();
    assert_eq!(list.unreadable.len(), 1);
    assert_eq!(ledger.purge_expired(Duration::ZERO).unwrap(), 0);
    assert_eq!(
        ledger.store().get(&key).unwrap().unwrap().value,
        b"garbage",
        "left as it was"
    );
}

#[test]
fn bad_account_or_job_ids_are_clear_errors() {
    let ledger = JobLedger::new(MemStore::new(), Arc::new(ManualClock::new(START_MS)));
    for (account, job) in [("", "job"), (ACCOUNT, ""), (ACCOUNT, "nul\0byte")] {
        let err = ledger
            .reserve(account, job, &request())
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    }
    // Hostile but valid ids are just ids.
    new(ledger.reserve("../../etc", "a/b", &request()).unwrap());
}

#[test]
fn a_refund_by_job_id_never_refunds_a_reservation_made_during_the_call() {
    for (name, ledger, _clock, _dir) in backends() {
        let store = ledger.store().as_ref();
        store
            .put(&balance_key(ACCOUNT), b"10", Expect::Absent)
            .unwrap();
        let first = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        let mut effects = 0;
        // While this refund decides, another caller refunds the reservation and
        // the client reserves the job id again: the new charge must stand.
        let refunded = ledger
            .refund_with(ACCOUNT, "job-1", |_| {
                effects += 1;
                if effects == 1 {
                    assert!(ledger.refund(ACCOUNT, "job-1").unwrap().is_some());
                    new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
                }
                add_to_balance(store, 1)
            })
            .unwrap();
        assert_eq!(refunded, None, "{name}: refunded a later reservation");
        let kept = ledger.lookup(ACCOUNT, "job-1").unwrap().unwrap();
        assert_ne!(kept.id, first.id, "{name}");
        assert_eq!(kept.state, ReservationState::Charged, "{name}");
        assert_eq!(balance(store), 10, "{name}: a credit without a refund");
    }
}

#[test]
fn a_refund_of_the_reservation_shown_credits_the_balance_once_and_never_a_later_one() {
    for (name, ledger, _clock, _dir) in backends() {
        let store = ledger.store().as_ref();
        store
            .put(&balance_key(ACCOUNT), b"5", Expect::Absent)
            .unwrap();
        let shown = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        let credit = |_: &Reservation| add_to_balance(store, 1);

        let refunded = ledger.refund_reservation_with(&shown, credit).unwrap();
        assert_eq!(refunded.map(|r| r.id), Some(shown.id.clone()), "{name}");
        assert_eq!(balance(store), 6, "{name}");
        assert_eq!(
            ledger.refund_reservation_with(&shown, credit).unwrap(),
            None
        );
        assert_eq!(balance(store), 6, "{name}: credited twice");

        // The job id is reserved again; the old reservation shown is not it.
        let later = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert_eq!(
            ledger.refund_reservation_with(&shown, credit).unwrap(),
            None
        );
        assert!(!ledger.refund_reservation(&shown).unwrap(), "{name}");
        assert_eq!(ledger.begin_refund_of(&shown).unwrap(), None, "{name}");
        let stored = ledger.lookup(ACCOUNT, "job-1").unwrap().unwrap();
        assert_eq!(
            (stored.id, stored.state),
            (later.id.clone(), ReservationState::Charged)
        );
        assert_eq!(balance(store), 6, "{name}");

        // The later one, shown, is the one refunded.
        let refunding = ledger.begin_refund_of(&later).unwrap().unwrap();
        assert_eq!(refunding.state, ReservationState::RefundPending, "{name}");
        assert_eq!(
            ledger.begin_refund_of(&later).unwrap(),
            None,
            "{name}: began twice"
        );
        assert!(ledger.complete_refund(&refunding).unwrap(), "{name}");
    }
}

#[test]
fn an_abandoned_refund_is_charged_again_and_no_longer_pending() {
    for (name, ledger, _clock, _dir) in backends() {
        let charged = new(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert_eq!(
            ledger.abandon_refund(&charged).unwrap(),
            None,
            "{name}: not refunding"
        );
        let refunding = ledger.begin_refund(ACCOUNT, "job-1").unwrap().unwrap();
        in_flight(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());

        let back = ledger.abandon_refund(&refunding).unwrap().unwrap();
        assert_eq!(back.state, ReservationState::Charged, "{name}");
        assert_eq!(back.id, charged.id, "{name}");
        assert!(ledger.pending().unwrap().reservations.is_empty(), "{name}");
        assert_eq!(
            ledger.abandon_refund(&refunding).unwrap(),
            None,
            "{name}: twice"
        );
        // A free retry again, and refundable later.
        existing(ledger.reserve(ACCOUNT, "job-1", &request()).unwrap());
        assert!(
            !ledger.complete_refund(&refunding).unwrap(),
            "{name}: abandoned"
        );
        assert_eq!(
            ledger.refund(ACCOUNT, "job-1").unwrap().map(|r| r.id),
            Some(charged.id),
            "{name}"
        );
    }
}

#[test]
fn a_reservation_written_by_0_1_shows_its_service_fields_in_the_metadata() {
    for (name, ledger, _clock, _dir) in backends() {
        let store = ledger.store().as_ref();
        let key = ledger.key(ACCOUNT, "job-1").unwrap();
        // Exactly what jobsafe 0.1 wrote for a reserve with every field set.
        let written_by_0_1 = serde_json::json!({
            "schema": 1,
            "id": "0190f2c1-7a4e-7cc3-9d1e-000000000001",
            "backend": "deepgram",
            "tier": "pro",
            "install_id": "inst-7",
            "license_fingerprint": "abc123",
            "fingerprint": "sha256:9f",
            "metadata": { "minutes": 42, "tier": "set by the caller" },
            "charged_ms": START_MS,
            "expires_ms": START_MS + 3_600_000,
            "state": "charged",
        });
        store
            .put(&key, written_by_0_1.to_string().as_bytes(), Expect::Absent)
            .unwrap();

        let read = ledger.lookup(ACCOUNT, "job-1").unwrap().unwrap();
        assert_eq!(read.metadata["backend"], "deepgram", "{name}");
        assert_eq!(read.metadata["install_id"], "inst-7", "{name}");
        assert_eq!(read.metadata["license_fingerprint"], "abc123", "{name}");
        assert_eq!(read.metadata["minutes"], 42, "{name}");
        // A metadata field of the same name wins over the old field.
        assert_eq!(read.metadata["tier"], "set by the caller", "{name}");
        assert_eq!(read.fingerprint.as_deref(), Some("sha256:9f"), "{name}");
        assert_eq!(read.state, ReservationState::Charged, "{name}");
        assert_eq!(read.attempt, None, "{name}");
        existing(
            ledger
                .reserve(ACCOUNT, "job-1", &ChargeRequest::new())
                .unwrap(),
        );

        // Rewritten (a refund begins), the fields live on in the metadata.
        ledger.begin_refund(ACCOUNT, "job-1").unwrap().unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&store.get(&key).unwrap().unwrap().value).unwrap();
        assert_eq!(raw["metadata"]["backend"], "deepgram", "{name}: {raw}");
        assert_eq!(raw.get("backend"), None, "{name}: {raw}");
        let again = ledger.lookup(ACCOUNT, "job-1").unwrap().unwrap();
        assert_eq!(again.metadata, read.metadata, "{name}");
    }
}

#[test]
fn a_fingerprint_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, ledger, _clock, _dir) in backends() {
        let fingerprint = text_of_len(ChargeRequest::MAX_FINGERPRINT_LEN);
        let request = ChargeRequest::new().fingerprint(fingerprint.clone());
        let first = new(ledger.reserve(ACCOUNT, "job-1", &request).unwrap());
        assert_eq!(
            first.fingerprint.as_deref(),
            Some(fingerprint.as_str()),
            "{name}"
        );
        let before = snapshot(ledger.store());
        let over = ChargeRequest::MAX_FINGERPRINT_LEN + 1;
        let request = ChargeRequest::new().fingerprint(text_of_len(over));
        let limit = ChargeRequest::MAX_FINGERPRINT_LEN;
        assert_too_large(
            ledger.reserve(ACCOUNT, "job-2", &request),
            "reservation fingerprint",
            over,
            limit,
        );
        assert_too_large(
            ledger.reserve_pending(ACCOUNT, "job-2", &request),
            "reservation fingerprint",
            over,
            limit,
        );
        assert_eq!(snapshot(ledger.store()), before, "{name}");
    }
}

#[test]
fn reservation_metadata_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, ledger, _clock, _dir) in backends() {
        let metadata = metadata_of_len(ChargeRequest::MAX_METADATA_LEN);
        let request = ChargeRequest::new().metadata_map(metadata.clone());
        new(ledger.reserve(ACCOUNT, "job-1", &request).unwrap());
        let stored = ledger.lookup(ACCOUNT, "job-1").unwrap().unwrap();
        assert_eq!(stored.metadata, metadata, "{name}");
        let before = snapshot(ledger.store());
        let over = ChargeRequest::MAX_METADATA_LEN + 1;
        let request = ChargeRequest::new().metadata_map(metadata_of_len(over));
        let limit = ChargeRequest::MAX_METADATA_LEN;
        assert_too_large(
            ledger.reserve(ACCOUNT, "job-2", &request),
            "reservation metadata",
            over,
            limit,
        );
        // With a balance change in the same batch: neither is written.
        let debit = |_: &Reservation| -> jobsafe::Result<Vec<BatchOp>> {
            Ok(vec![BatchOp::Put {
                key: balance_key(ACCOUNT),
                value: b"9".to_vec(),
                expect: Expect::Any,
            }])
        };
        assert_too_large(
            ledger.reserve_with(ACCOUNT, "job-2", &request, debit),
            "reservation metadata",
            over,
            limit,
        );
        assert_eq!(snapshot(ledger.store()), before, "{name}");
    }
}

/// A ledger's or a lock manager's keys without a namespace would begin with
/// what callers supply (an account, a lock's own key), which a store call's
/// trace names as the namespace, in clear: an empty namespace is refused.
#[test]
fn a_ledger_and_a_lock_manager_need_a_namespace() {
    let clock = || Arc::new(jobsafe::ManualClock::new(0));
    let ledger = JobLedger::builder(MemStore::new(), clock())
        .namespace(jobsafe::Prefix::all())
        .build();
    assert!(matches!(
        ledger.map(drop),
        Err(jobsafe::Error::InvalidArgument(_))
    ));
    let locks = jobsafe::JobLock::builder(MemStore::new(), clock())
        .namespace(jobsafe::Prefix::all())
        .build();
    assert!(matches!(
        locks.map(drop),
        Err(jobsafe::Error::InvalidArgument(_))
    ));
    let named = jobsafe::Prefix::new(["credits"]).unwrap();
    JobLedger::builder(MemStore::new(), clock())
        .namespace(named)
        .build()
        .unwrap();
}
