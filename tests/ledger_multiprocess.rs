//! Processes reserve overlapping job ids against one balance, some are killed
//! with SIGKILL mid-flight, and afterwards every job id is charged exactly once
//! net of refunds, with the balance consistent.
//!
//! Each worker walks every job id in its own order: `reserve_with` debits the
//! balance and counts a charge for the job in the same batch; every fifth job
//! "fails" and is refunded with `refund_with` (credit back, count down), after
//! which it is new again and may be charged again by anyone. A batch applied in
//! part, a double charge or a lost refund shows as a job whose charge count is
//! not 0 or 1, a count that disagrees with the reservation, or a balance that
//! disagrees with the counts.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::backends::SharedStore;
use common::child::{self, Child};
use common::credits::{balance_key, book, charges_key, job, read_number};
use jobsafe::ledger::{ChargeRequest, Reserve};
use jobsafe::{Error, Expect, JobLedger, ManualClock, Store};

const TEST: &str = "killed_workers_leave_every_job_charged_once_net";
#[cfg(feature = "postgres")]
const TEST_PG: &str = "killed_workers_leave_every_job_charged_once_net_on_pg";
const ACCOUNT: &str = "lic:abc123";
const JOBS: usize = 40;
const WORKERS: usize = 4;
const KILLS: usize = 3;
const INITIAL: i64 = 1_000_000;

fn fails(i: usize) -> bool {
    i.is_multiple_of(5)
}

#[test]
fn killed_workers_leave_every_job_charged_once_net() {
    if child::role().as_deref() == Some("ledger-worker") {
        return work_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    run(TEST, SharedStore::Dir(dir.path().join("store")));
}

/// The same, with the ledger and the balance in PostgreSQL.
#[cfg(feature = "postgres")]
#[test]
fn killed_workers_leave_every_job_charged_once_net_on_pg() {
    if child::role().as_deref() == Some("ledger-worker") {
        return work_in_child();
    }
    let mut schemas = common::pg::Schemas::default();
    run(TEST_PG, SharedStore::Pg(schemas.fresh()));
}

fn run(test: &str, shared: SharedStore) {
    shared
        .open()
        .put(
            &balance_key(ACCOUNT),
            INITIAL.to_string().as_bytes(),
            Expect::Absent,
        )
        .unwrap();
    let spawn = |seed: usize| {
        let mut vars = shared.vars();
        vars.insert("JOBSAFE_TEST_SEED", seed.to_string());
        Child::spawn(test, "ledger-worker", &vars)
    };

    let mut reports = Vec::new();
    let mut workers: Vec<Child> = (0..WORKERS).map(spawn).collect();
    for kill in 0..KILLS {
        // Kill a worker mid-flight, after it did a few things.
        let mut victim = workers.remove(0);
        for _ in 0..3 + kill {
            if let Some(report) = victim.next_report() {
                reports.push(report);
            }
        }
        reports.extend(victim.kill());
        workers.push(spawn(WORKERS + kill));
    }
    for worker in workers {
        reports.extend(worker.finish());
    }

    // Acknowledged charges and refunds per job. Reports of different workers are
    // not in time order, so only counts are compared: a job that never fails is
    // acknowledged as charged at most once, and no job is acknowledged as charged
    // more often than refunded plus one.
    let mut acked: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for report in &reports {
        let (what, job_id) = report.split_once(' ').unwrap();
        let (charged, refunded) = acked.entry(job_id.to_owned()).or_default();
        match what {
            "charged" => *charged += 1,
            "refunded" => *refunded += 1,
            _ => panic!("unexpected report {report:?}"),
        }
    }
    for (i, (charged, refunded)) in
        (0..JOBS).map(|i| (i, acked.get(&job(i)).copied().unwrap_or_default()))
    {
        let net = charged - refunded;
        assert!(
            (0..=1).contains(&net),
            "{}: charged {charged}, refunded {refunded}",
            job(i)
        );
        if !fails(i) {
            assert!(charged <= 1, "{} was charged {charged} times", job(i));
        }
    }

    let store = shared.open();
    let clock = ManualClock::new(0);
    let ledger = JobLedger::new(&store, Arc::new(clock));
    let mut total = 0;
    for i in 0..JOBS {
        let job_id = job(i);
        let (charges, _) = read_number(&*store, &charges_key(&job_id)).unwrap();
        let reserved = ledger.lookup(ACCOUNT, &job_id).unwrap().is_some();
        assert_eq!(
            charges,
            i64::from(reserved),
            "{job_id}: {charges} charges net, reserved: {reserved}"
        );
        if !fails(i) {
            assert!(reserved, "{job_id} never fails, yet it is not charged");
        }
        total += charges;
    }
    let (balance, _) = read_number(&*store, &balance_key(ACCOUNT)).unwrap();
    assert_eq!(
        balance,
        INITIAL - total,
        "the balance disagrees with the charges"
    );
    println!(
        "ledger_multiprocess: store={} workers={} kills={KILLS} reports={} jobs_charged={total} balance={balance}",
        shared.kind(),
        WORKERS + KILLS,
        reports.len()
    );
}

/// Child: tries every job in its own order, refunding the ones that "fail".
fn work_in_child() {
    let seed: u64 = child::var("JOBSAFE_TEST_SEED").parse().unwrap();
    let store = SharedStore::from_env().open();
    let ledger = JobLedger::new(&store, Arc::new(ManualClock::new(0)));
    let mut order: Vec<usize> = (0..JOBS).collect();
    fastrand::Rng::with_seed(seed).shuffle(&mut order);
    for i in order {
        let job_id = job(i);
        let outcome = ledger
            .reserve_with(ACCOUNT, &job_id, &ChargeRequest::new(), |_| {
                book(&*store, ACCOUNT, &job_id, 1)
            })
            .unwrap();
        if let Reserve::New(_) = outcome {
            child::report(&format!("charged {job_id}"));
            if fails(i) {
                let refunded = ledger
                    .refund_with(ACCOUNT, &job_id, |_| book(&*store, ACCOUNT, &job_id, -1))
                    .unwrap_or_else(|e: Error| panic!("refund {job_id}: {e}"));
                if refunded.is_some() {
                    child::report(&format!("refunded {job_id}"));
                }
            }
        }
    }
}
