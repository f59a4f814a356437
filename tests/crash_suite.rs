//! The crash suite: every part of the crate, killed with SIGKILL while it
//! writes, again and again, with its invariants checked after every kill.
//!
//! Parts (each on a `DirStore`, a `LogStore` and a `LogStore` in exclusive mode;
//! see the modules of `tests/crash/` for what each checks):
//! - `store`: multi-key batches stay whole, and every acknowledged one stays;
//! - `lock`: `JobLock` holders killed mid-acquire, mid-renewal or mid-release;
//!   their locks are taken over at expiry with greater fencing tokens;
//! - `ledger`: `JobLedger` charges and refunds, with the balance in the same
//!   batch or external (pending, then confirmed); every acknowledged charge
//!   there exactly once, no refund lost, every pending side effect listed;
//! - `events`: job events appended by a killed worker; every acknowledged one
//!   present once, in order, with no gap;
//! - `pipeline`: pipeline runners killed mid-stage; no finished stage runs
//!   again and every job completes.
//!
//! Each part prints a line `crash_suite/<part>: iterations=... kills=...
//! kills_mid_write=... acknowledged_checked=... violations=...` and, once all
//! five have run, a total line `crash_suite: parts=5 ...`.
//!
//! `JOBSAFE_CRASH_KILLS` sets the kills per part and backend (10 by default,
//! CI runs 200); `JOBSAFE_CRASH_SEED` replays a run's kill points.
// Test code, children included: a step that fails fails the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;
mod crash;

use crash::part::{self, Kind};
use crash::summary::{self, budget};
use crash::{kill_loop, pipelines};

fn model_part(test: &str, kind: Kind) {
    if part::serve_child() {
        return;
    }
    summary::report(kind.name(), kill_loop::run(test, kind, budget()));
}

#[test]
fn killed_store_writers_leave_whole_batches_and_every_acknowledged_one() {
    model_part(
        "killed_store_writers_leave_whole_batches_and_every_acknowledged_one",
        Kind::Store,
    );
}

#[test]
fn killed_lock_holders_are_taken_over_at_expiry_with_greater_tokens() {
    model_part(
        "killed_lock_holders_are_taken_over_at_expiry_with_greater_tokens",
        Kind::Lock,
    );
}

#[test]
fn killed_ledger_writers_charge_each_job_once_and_lose_no_refund() {
    model_part(
        "killed_ledger_writers_charge_each_job_once_and_lose_no_refund",
        Kind::Ledger,
    );
}

#[test]
fn killed_event_writers_leave_every_acknowledged_event_once_in_order() {
    model_part(
        "killed_event_writers_leave_every_acknowledged_event_once_in_order",
        Kind::Events,
    );
}

#[test]
fn killed_pipeline_runners_resume_without_rerunning_finished_stages() {
    if part::serve_child() {
        return;
    }
    summary::report(
        "pipeline",
        pipelines::run(
            "killed_pipeline_runners_resume_without_rerunning_finished_stages",
            budget(),
        ),
    );
}

/// Each part's checks, fed acknowledgements of writes that never happened,
/// find them missing: the suite can see a lost write.
#[test]
fn the_checks_catch_acknowledged_writes_that_are_missing() {
    use crash::backend::Backend;
    use crash::part::{PartId, Tally};

    let lies = [
        (Kind::Store, "ack 5", "acknowledged batch 5 is missing"),
        (
            Kind::Lock,
            "acquired lock-1 7 1700000030000",
            "acknowledged holder with token 7 is gone",
        ),
        (
            Kind::Ledger,
            "charged job-03",
            "job-03: acknowledged charge is missing",
        ),
        (
            Kind::Ledger,
            "pending job-04",
            "lic:external/job-04: Some(ChargePending) acknowledged, None stored",
        ),
        (
            Kind::Events,
            "event 2 c1-0",
            "acknowledged event c1-0 at 2 is None",
        ),
    ];
    for backend in Backend::ALL {
        for (kind, lie, caught) in lies {
            let dir = tempfile::tempdir().unwrap();
            let part = PartId { kind, backend };
            let mut model = part::model(part, dir.path());
            let mut tally = Tally::default();
            model.absorb(lie, &mut tally);
            model.check(1, &mut tally);
            assert!(
                tally.violations.iter().any(|v| v.contains(caught)),
                "{part}: {lie:?} was not caught: {:?}",
                tally.violations
            );
        }
    }
}

/// The lock part's fencing check: a token that does not go up is caught as
/// soon as it is acknowledged.
#[test]
fn the_lock_check_catches_a_token_that_does_not_go_up() {
    use crash::backend::Backend;
    use crash::part::{PartId, Tally};

    let dir = tempfile::tempdir().unwrap();
    let part = PartId {
        kind: Kind::Lock,
        backend: Backend::Dir,
    };
    let mut model = part::model(part, dir.path());
    let mut tally = Tally::default();
    model.absorb("acquired lock-0 9 1700000030000", &mut tally);
    model.absorb("released lock-0 9", &mut tally);
    model.absorb("acquired lock-0 9 1700000030001", &mut tally);
    assert_eq!(
        tally.violations,
        ["lock-0: token 9 acquired after token 9 was issued"]
    );
}
