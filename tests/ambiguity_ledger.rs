//! Every write of `JobLedger` whose store call fails in a way that may hide
//! its success, on every backend, in three cases: the write committed and the
//! call failed (the reply lost: the call must return its own write's
//! outcome, never its own reservation as `Existing`); the call failed and
//! nothing committed (it must not be reported as done: once it is written
//! again and succeeds, and when every write fails it is a transient error
//! with the store unchanged); the write committed and the store stayed
//! unreachable for reads too (the call must say the outcome is unknown, with
//! the attempt id, and a repeat must find the first call's outcome).
//!
//! One account keeps a balance in the same store, charged by `reserve_with`
//! and credited back by `refund_with` in the reservation's batch: after every
//! case the balance in the store underneath is the start minus the number of
//! reservations there, so money is never charged twice nor lost.
//!
//! Every call runs through both faces: the blocking one and `AsyncJobLedger`,
//! which drives the same body with futures (this test store's provided
//! `*_async` calls, on the pool, and the clock's async sleeps).
//!
//! Time is a `ManualClock` whose sleeps pass at once, so the re-reads reach
//! their deadline without waiting. The PgStore cases need the feature
//! `postgres` and a server (`bash .ci/postgres.sh` runs them).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::ambiguous_store::{
    AmbiguousStore, Bench, EVERY_WRITE, Fault, RESOLVE_WITHIN, on_dir, on_log, on_mem,
};
use common::credits::{balance_key, read_number};
use jobsafe::ledger::{AsyncJobLedger, ChargeRequest, Reservation, ReservationState, Reserve};
use jobsafe::store::BatchOp;
use jobsafe::{AttemptId, Error, Expect, JobLedger, Key, Prefix, Store};

type Ledger = JobLedger<AmbiguousStore>;

/// The account whose balance the charge ops change.
const PAID: &str = "lic:paid";
/// Accounts without a balance: plain reserves, and external charges.
const PLAIN: &str = "lic:plain";
const EXTERNAL: &str = "lic:external";
const START_BALANCE: i64 = 1_000;

/// Every way a write fails here: the fault and how many writes it hits.
const FAULTS: [(Fault, usize); 4] = [
    (Fault::CommitThenFail, 1),
    (Fault::FailWithoutCommit, 1),
    (Fault::FailWithoutCommit, EVERY_WRITE),
    (Fault::CommitThenFailAndReadsFail, 1),
];

/// A reservation as the store underneath holds it: its state, its version
/// and the attempt id it names.
#[derive(Debug, PartialEq)]
struct Stored {
    state: String,
    version: u64,
    attempt: Option<String>,
}

fn in_store(bench: &Bench, account: &str, job_id: &str) -> Option<Stored> {
    let key = Key::new(["ledger", account, job_id]).unwrap();
    let entry = bench.store.inner().get(&key).unwrap()?;
    let record: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    Some(Stored {
        state: record["state"].as_str().unwrap().to_owned(),
        version: entry.version.get(),
        attempt: record["attempt"].as_str().map(str::to_owned),
    })
}

fn state_name(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Charged => "charged",
        ReservationState::ChargePending => "charge_pending",
        ReservationState::RefundPending => "refund_pending",
        other => panic!("a state this test does not know: {other:?}"),
    }
}

/// The balance of [`PAID`] in the store underneath.
fn balance(bench: &Bench) -> i64 {
    read_number(bench.store.inner(), &balance_key(PAID))
        .unwrap()
        .0
}

/// Money is conserved: the balance underneath is the start less one credit
/// per reservation of [`PAID`] there.
fn assert_conserved(bench: &Bench, case: &str) {
    let prefix = Prefix::new(["ledger", PAID]).unwrap();
    let reservations = bench.store.inner().list_all(&prefix).unwrap().len();
    assert_eq!(
        balance(bench),
        START_BALANCE - i64::try_from(reservations).unwrap(),
        "{}: {case}: the balance is the start less one per reservation",
        bench.name
    );
}

/// Operations adding `delta` to the balance of [`PAID`], guarded by the
/// version read (through the faulty store, as a caller would).
fn book(store: &dyn Store, delta: i64) -> jobsafe::Result<Vec<BatchOp>> {
    let (now, version) = read_number(store, &balance_key(PAID))?;
    Ok(vec![BatchOp::Put {
        key: balance_key(PAID),
        value: (now + delta).to_string().into_bytes(),
        expect: version.map_or(Expect::Absent, Expect::Version),
    }])
}

/// Runs `call` with the next `count` writes failing with `fault`, then heals.
fn under<T>(
    bench: &Bench,
    (fault, count): (Fault, usize),
    call: impl FnOnce() -> jobsafe::Result<T>,
) -> jobsafe::Result<T> {
    bench.store.fail_writes(fault, 0, count);
    let result = call();
    bench.store.heal();
    result
}

fn new(bench: &Bench, outcome: Reserve) -> Reservation {
    match outcome {
        Reserve::New(r) => r,
        other => panic!(
            "{}: expected a new reservation, found {other:?}",
            bench.name
        ),
    }
}

/// Asserts that `e` is the error of a write known not to have landed.
fn assert_not_landed(bench: &Bench, case: &str, e: &Error) {
    assert!(
        e.is_transient() && !e.is_ambiguous() && e.attempt_id().is_none(),
        "{}: {case}: {e}",
        bench.name
    );
}

/// Asserts that `e` says the outcome is unknown, naming its attempt.
fn assert_ambiguous(bench: &Bench, case: &str, e: &Error) -> AttemptId {
    assert!(
        e.is_ambiguous() && e.is_transient(),
        "{}: {case}: {e}",
        bench.name
    );
    let attempt = e.attempt_id().unwrap().clone();
    assert!(
        e.to_string().contains(attempt.as_str()),
        "{}: {case}: {e}",
        bench.name
    );
    attempt
}

/// One of the three reserves, charged to `account`.
#[derive(Clone, Copy, Debug)]
enum Reserving {
    Plain,
    WithCharge,
    Pending,
}

impl Reserving {
    fn account(self) -> &'static str {
        match self {
            Reserving::Plain => PLAIN,
            Reserving::WithCharge => PAID,
            Reserving::Pending => EXTERNAL,
        }
    }

    fn state(self) -> &'static str {
        match self {
            Reserving::Pending => "charge_pending",
            _ => "charged",
        }
    }

    /// Reserves `job_id` through `face`, counting the calls of the charge
    /// ops in `charges`.
    fn call(
        self,
        face: Face,
        ledger: &Ledger,
        job_id: &str,
        request: &ChargeRequest,
        charges: &Arc<AtomicU32>,
    ) -> jobsafe::Result<Reserve> {
        let charge = || {
            let (store, charges) = (ledger.store().clone(), Arc::clone(charges));
            move |_: &Reservation| {
                charges.fetch_add(1, Ordering::SeqCst);
                book(&store, -1)
            }
        };
        match self {
            Reserving::Plain => through(
                face,
                ledger,
                |ledger| ledger.reserve(PLAIN, job_id, request),
                async |ledger| ledger.reserve(PLAIN, job_id, request).await,
            ),
            Reserving::WithCharge => through(
                face,
                ledger,
                |ledger| ledger.reserve_with(PAID, job_id, request, charge()),
                async |ledger| ledger.reserve_with(PAID, job_id, request, charge()).await,
            ),
            Reserving::Pending => through(
                face,
                ledger,
                |ledger| ledger.reserve_pending(EXTERNAL, job_id, request),
                async |ledger| ledger.reserve_pending(EXTERNAL, job_id, request).await,
            ),
        }
    }
}

/// Which face of the ledger a call is made through.
#[derive(Clone, Copy, Debug)]
enum Face {
    Blocking,
    Async,
}

/// A call made through `face`: `blocking` on the ledger, or `in_async` on
/// its async face, awaited on a runtime of its own.
fn through<T>(
    face: Face,
    ledger: &Ledger,
    blocking: impl FnOnce(&Ledger) -> T,
    in_async: impl AsyncFnOnce(&AsyncJobLedger<AmbiguousStore>) -> T,
) -> T {
    match face {
        Face::Blocking => blocking(ledger),
        Face::Async => {
            let ledger = AsyncJobLedger::new(ledger.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(in_async(&ledger))
        }
    }
}

/// A reserve in each case: it returns its own reservation as new, writes
/// again when it knows it did not land, and after an ambiguous error a repeat
/// with the attempt id gets the reservation it made, uncharged again.
fn reserve_cases(bench: &Bench, ledger: &Ledger, how: Reserving, face: Face) {
    let name = bench.name;
    let account = how.account();
    for (n, fault) in FAULTS.into_iter().enumerate() {
        let job = format!("reserve-{how:?}-{face:?}-{n}");
        let case = format!("{how:?} through the {face:?} face under {fault:?}");
        let request = ChargeRequest::new().meta("case", case.clone());
        let charges = Arc::new(AtomicU32::new(0));
        let before = bench.store.injected();
        let result = under(bench, fault, || {
            how.call(face, ledger, &job, &request, &charges)
        });
        assert!(bench.store.injected() > before, "{name}: {case}: injected");
        match fault {
            (Fault::CommitThenFail | Fault::FailWithoutCommit, 1) => {
                let reservation = new(bench, result.unwrap());
                let stored = in_store(bench, account, &job).unwrap();
                assert_eq!(stored.state, how.state(), "{name}: {case}");
                assert_eq!(stored.version, reservation.version.get(), "{name}: {case}");
                assert_eq!(
                    stored.attempt.as_deref(),
                    reservation.attempt.as_ref().map(AttemptId::as_str),
                    "{name}: {case}"
                );
                // A retry by another request is free, or waits for the
                // external charge.
                let retry = how.call(face, ledger, &job, &ChargeRequest::new(), &charges);
                match (how, retry.unwrap()) {
                    (Reserving::Pending, Reserve::InFlight(r))
                    | (Reserving::Plain | Reserving::WithCharge, Reserve::Existing(r)) => {
                        assert_eq!(r.id, reservation.id, "{name}: {case}");
                    }
                    (_, other) => panic!("{name}: {case}: a retry got {other:?}"),
                }
            }
            (Fault::FailWithoutCommit, _) => {
                let e = result.unwrap_err();
                assert_not_landed(bench, &case, &e);
                assert_eq!(in_store(bench, account, &job), None, "{name}: {case}");
            }
            (Fault::CommitThenFailAndReadsFail, _) => {
                let e = result.unwrap_err();
                let attempt = assert_ambiguous(bench, &case, &e);
                let stored = in_store(bench, account, &job).unwrap();
                assert_eq!(
                    stored.attempt.as_deref(),
                    Some(attempt.as_str()),
                    "{name}: {case}"
                );
                assert_conserved(bench, &case);
                // The repeat with the attempt id is the first call: its own
                // reservation, new, and nothing charged again.
                let charged = charges.load(Ordering::SeqCst);
                let repeat = request.clone().attempt(attempt.clone());
                let again = new(
                    bench,
                    how.call(face, ledger, &job, &repeat, &charges).unwrap(),
                );
                assert_eq!(again.version.get(), stored.version, "{name}: {case}");
                assert_eq!(again.attempt.as_ref(), Some(&attempt), "{name}: {case}");
                assert_eq!(
                    charges.load(Ordering::SeqCst),
                    charged,
                    "{name}: {case}: charged again"
                );
            }
            (Fault::CommitThenFail, _) => unreachable!(),
        }
        if let Reserving::WithCharge = how {
            // The charge ops are made once per write: again for each write
            // known not to have landed (at most three writes), never for a
            // repeat or a retry.
            let expected = match fault {
                (Fault::FailWithoutCommit, 1) => 2,
                (Fault::FailWithoutCommit, _) => 3,
                _ => 1,
            };
            assert_eq!(charges.load(Ordering::SeqCst), expected, "{name}: {case}");
        }
        assert_conserved(bench, &case);
    }
}

/// What a change of a reservation does, as the tests below see it.
struct Change<'a> {
    what: &'static str,
    account: &'static str,
    /// Makes a reservation for the change to act on.
    prepare: &'a dyn Fn(&str) -> Reservation,
    /// The change: the reservation it left or removed, `None` if it did not
    /// act.
    call: &'a dyn Fn(Face, &Reservation) -> jobsafe::Result<Option<Reservation>>,
    /// The state it leaves: `None` if it removes the reservation.
    after: Option<ReservationState>,
    /// Whether a repeat after it landed still says it acted.
    repeat_acts: bool,
}

/// A change of a reservation in each case: its own write is its outcome; a
/// write known not to have landed leaves the reservation as it was; an
/// ambiguous one is found landed by a repeat.
fn change_cases(bench: &Bench, change: &Change<'_>, face: Face) {
    let name = bench.name;
    let account = change.account;
    for (n, fault) in FAULTS.into_iter().enumerate() {
        let job = format!("{}-{face:?}-{n}", change.what.replace(' ', "-"));
        let case = format!("{} through the {face:?} face under {fault:?}", change.what);
        let reservation = (change.prepare)(&job);
        let before = in_store(bench, account, &job);
        assert!(before.is_some(), "{name}: {case}: prepared");
        let injected = bench.store.injected();
        let result = under(bench, fault, || (change.call)(face, &reservation));
        assert!(
            bench.store.injected() > injected,
            "{name}: {case}: injected"
        );
        match fault {
            (Fault::CommitThenFail | Fault::FailWithoutCommit, 1) => {
                let acted = result.unwrap();
                let acted = acted.unwrap_or_else(|| panic!("{name}: {case}: it acted"));
                let stored = in_store(bench, account, &job);
                match change.after {
                    Some(state) => {
                        let stored = stored.unwrap();
                        assert_eq!(stored.state, state_name(state), "{name}: {case}");
                        assert_eq!(stored.version, acted.version.get(), "{name}: {case}");
                        assert_eq!(acted.state, state, "{name}: {case}");
                    }
                    None => {
                        assert_eq!(stored, None, "{name}: {case}: removed");
                        assert_eq!(acted.id, reservation.id, "{name}: {case}");
                    }
                }
            }
            (Fault::FailWithoutCommit, _) => {
                let e = result.unwrap_err();
                assert_not_landed(bench, &case, &e);
                assert_eq!(in_store(bench, account, &job), before, "{name}: {case}");
            }
            (Fault::CommitThenFailAndReadsFail, _) => {
                let e = result.unwrap_err();
                assert_ambiguous(bench, &case, &e);
                let stored = in_store(bench, account, &job);
                match change.after {
                    Some(state) => {
                        let state_now = stored.as_ref().map(|s| s.state.as_str());
                        assert_eq!(state_now, Some(state_name(state)), "{name}: {case}");
                    }
                    None => assert_eq!(stored, None, "{name}: {case}: removed"),
                }
                assert_conserved(bench, &case);
                // Repeated, the change finds itself done.
                let again = (change.call)(face, &reservation).unwrap();
                assert_eq!(again.is_some(), change.repeat_acts, "{name}: {case}");
                assert_eq!(in_store(bench, account, &job), stored, "{name}: {case}");
            }
            (Fault::CommitThenFail, _) => unreachable!(),
        }
        assert_conserved(bench, &case);
    }
}

fn ledger_cases(bench: &Bench) {
    let ledger = JobLedger::builder(bench.store.clone(), bench.shared_clock())
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap();
    let ledger = &ledger;
    bench
        .store
        .inner()
        .put(
            &balance_key(PAID),
            START_BALANCE.to_string().as_bytes(),
            Expect::Absent,
        )
        .unwrap();
    let store = ledger.store();

    for face in [Face::Blocking, Face::Async] {
        for how in [Reserving::Plain, Reserving::WithCharge, Reserving::Pending] {
            reserve_cases(bench, ledger, how, face);
        }
    }

    let charged = |job: &str| {
        new(
            bench,
            ledger.reserve(PLAIN, job, &ChargeRequest::new()).unwrap(),
        )
    };
    let paid = |job: &str| {
        let reserved = ledger.reserve_with(PAID, job, &ChargeRequest::new(), |_| book(store, -1));
        new(bench, reserved.unwrap())
    };
    let pending = |job: &str| {
        let reserved = ledger.reserve_pending(EXTERNAL, job, &ChargeRequest::new());
        new(bench, reserved.unwrap())
    };
    let refunding = |job: &str| ledger.begin_refund_of(&charged(job)).unwrap().unwrap();
    let removed = |r: &Reservation, done: bool| done.then(|| r.clone());

    let changes = [
        Change {
            what: "confirm charge",
            account: EXTERNAL,
            prepare: &pending,
            call: &|face, r| {
                through(
                    face,
                    ledger,
                    |l| l.confirm_charge(r),
                    async |a| a.confirm_charge(r).await,
                )
            },
            after: Some(ReservationState::Charged),
            repeat_acts: true,
        },
        Change {
            what: "cancel charge",
            account: EXTERNAL,
            prepare: &pending,
            call: &|face, r| {
                through(
                    face,
                    ledger,
                    |l| l.cancel_charge(r),
                    async |a| a.cancel_charge(r).await,
                )
                .map(|done| removed(r, done))
            },
            after: None,
            repeat_acts: false,
        },
        Change {
            what: "refund",
            account: PLAIN,
            prepare: &charged,
            call: &|face, r| {
                through(
                    face,
                    ledger,
                    |l| l.refund(&r.account, &r.job_id),
                    async |a| a.refund(&r.account, &r.job_id).await,
                )
            },
            after: None,
            repeat_acts: false,
        },
        Change {
            what: "refund with",
            account: PAID,
            prepare: &paid,
            call: &|face, r| {
                let credit = |_: &Reservation| book(store, 1);
                let owned = store.clone();
                through(
                    face,
                    ledger,
                    |l| l.refund_with(&r.account, &r.job_id, credit),
                    async |a| {
                        let credit = move |_: &Reservation| book(&owned, 1);
                        a.refund_with(&r.account, &r.job_id, credit).await
                    },
                )
            },
            after: None,
            repeat_acts: false,
        },
        Change {
            what: "refund reservation",
            account: PLAIN,
            prepare: &charged,
            call: &|face, r| {
                through(
                    face,
                    ledger,
                    |l| l.refund_reservation(r),
                    async |a| a.refund_reservation(r).await,
                )
                .map(|done| removed(r, done))
            },
            after: None,
            repeat_acts: false,
        },
        Change {
            what: "refund reservation with",
            account: PAID,
            prepare: &paid,
            call: &|face, r| {
                let credit = |_: &Reservation| book(store, 1);
                let owned = store.clone();
                through(
                    face,
                    ledger,
                    |l| l.refund_reservation_with(r, credit),
                    async |a| {
                        let credit = move |_: &Reservation| book(&owned, 1);
                        a.refund_reservation_with(r, credit).await
                    },
                )
            },
            after: None,
            repeat_acts: false,
        },
        Change {
            what: "begin refund",
            account: PLAIN,
            prepare: &charged,
            call: &|face, r| {
                through(
                    face,
                    ledger,
                    |l| l.begin_refund(&r.account, &r.job_id),
                    async |a| a.begin_refund(&r.account, &r.job_id).await,
                )
            },
            after: Some(ReservationState::RefundPending),
            repeat_acts: false,
        },
        Change {
            what: "begin refund of",
            account: PLAIN,
            prepare: &charged,
            call: &|face, r| {
                through(
                    face,
                    ledger,
                    |l| l.begin_refund_of(r),
                    async |a| a.begin_refund_of(r).await,
                )
            },
            after: Some(ReservationState::RefundPending),
            repeat_acts: false,
        },
        Change {
            what: "complete refund",
            account: PLAIN,
            prepare: &refunding,
            call: &|face, r| {
                through(
                    face,
                    ledger,
                    |l| l.complete_refund(r),
                    async |a| a.complete_refund(r).await,
                )
                .map(|done| removed(r, done))
            },
            after: None,
            repeat_acts: false,
        },
        Change {
            what: "abandon refund",
            account: PLAIN,
            prepare: &refunding,
            call: &|face, r| {
                through(
                    face,
                    ledger,
                    |l| l.abandon_refund(r),
                    async |a| a.abandon_refund(r).await,
                )
            },
            after: Some(ReservationState::Charged),
            repeat_acts: false,
        },
    ];
    for face in [Face::Blocking, Face::Async] {
        for change in &changes {
            change_cases(bench, change, face);
        }
    }

    assert_conserved(bench, "at the end");
    assert!(
        bench.store.injected() >= 4 * (3 + changes.len()),
        "{}: faults were injected",
        bench.name
    );
}

#[test]
fn ledger_writes_learn_their_outcome_on_mem() {
    ledger_cases(&on_mem());
}

#[test]
fn ledger_writes_learn_their_outcome_on_dir() {
    ledger_cases(&on_dir());
}

#[test]
fn ledger_writes_learn_their_outcome_on_log() {
    ledger_cases(&on_log());
}

#[cfg(feature = "postgres")]
#[test]
fn ledger_writes_learn_their_outcome_on_pg() {
    ledger_cases(&common::ambiguous_store::on_pg());
}
