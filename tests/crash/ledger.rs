//! Ledger charges and refunds: a child charges and refunds jobs with
//! `JobLedger::reserve_with` and `refund_with`, the balance and a per-job charge
//! count changing in the same batch as the reservation, and is stopped
//! mid-charge or mid-refund.
//!
//! One child works alone, so its acknowledgements say exactly which jobs are
//! charged; only the one operation in flight at the stop may have gone either
//! way. After each stop the parent checks that every job's reservation is there
//! exactly when the acknowledgements say it is charged (no acknowledged charge
//! lost, no acknowledged refund undone), that each charge counts once (charge
//! count 1 with a reservation, 0 without), that the balance is the initial one
//! less the charges, that nothing is left pending, and that no record is
//! unreadable. The child's answers are checked on the way: a reserve of a
//! charged job must be free (`Existing`), a refund of a charged job must find it.
//!
//! Half of the child's operations follow the other pattern, for a side effect
//! outside the store, on a second account: `reserve_pending` then
//! `confirm_charge`, `begin_refund` then `complete_refund`, each step
//! acknowledged. After a stop every reservation of that account must be in the
//! state its acknowledgements left it in (or one step further, for the step in
//! flight), and `pending` must list exactly the reservations whose side effect
//! was started and not confirmed; the parent then finishes each of them, as a
//! restarted service retrying its external calls would, so that no charge stays
//! unconfirmed and no refund is lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jobsafe::ledger::{ChargeRequest, Reservation, ReservationState, Reserve};
use jobsafe::{Expect, JobLedger, ManualClock, Store};

use super::backend::Backend;
use super::part::{ChildContext, Model, Outcome, START_MS, Tally};
use crate::common::credits::{balance_key, book, charges_key, job, read_number};

const ACCOUNT: &str = "lic:crash";
/// The account whose side effects are external.
const EXTERNAL: &str = "lic:external";
const JOBS: u64 = 12;
const INITIAL: i64 = 1_000_000;

/// The state an external-side-effect step leaves a reservation in, from the
/// state before it.
fn step(op: &str, before: Option<ReservationState>) -> Option<Option<ReservationState>> {
    use ReservationState::{ChargePending, Charged, RefundPending};
    match (op, before) {
        ("pending", None) => Some(Some(ChargePending)),
        ("confirm", Some(ChargePending)) => Some(Some(Charged)),
        ("begin-refund", Some(Charged)) => Some(Some(RefundPending)),
        ("complete-refund", Some(RefundPending)) => Some(None),
        _ => None,
    }
}

/// The parent's model: which jobs the acknowledgements say are charged.
pub struct Ledger {
    backend: Backend,
    root: PathBuf,
    charged: BTreeMap<String, bool>,
    /// The reservations of the external account, as acknowledged.
    external: BTreeMap<String, Option<ReservationState>>,
    /// Side effects left pending by a stop and finished by the parent.
    finished_pending: u64,
    /// The operation announced last and not acknowledged: `(charge|refund, job)`.
    in_flight: Option<(String, String)>,
    /// Stops mid-operation, and how many of those operations had applied.
    mid: BTreeMap<String, u64>,
    mid_applied: u64,
}

impl Ledger {
    pub fn new(backend: Backend, root: PathBuf) -> Self {
        let store = backend.open(&root).unwrap();
        store
            .put(
                &balance_key(ACCOUNT),
                INITIAL.to_string().as_bytes(),
                Expect::Absent,
            )
            .unwrap();
        Ledger {
            backend,
            root,
            charged: (0..JOBS).map(|n| (job(n), false)).collect(),
            external: (0..JOBS).map(|n| (job(n), None)).collect(),
            finished_pending: 0,
            in_flight: None,
            mid: BTreeMap::new(),
            mid_applied: 0,
        }
    }
}

impl Ledger {
    /// Checks the external account against its acknowledgements and `pending`,
    /// then finishes what is pending.
    fn check_external(
        &mut self,
        ledger: &JobLedger<Arc<dyn Store>>,
        in_flight: Option<&(String, String)>,
        iteration: u64,
        tally: &mut Tally,
    ) {
        let mut expected_pending = Vec::new();
        for (job_id, acked) in &mut self.external {
            let Some(stored) = tally.ok(
                iteration,
                &format!("look {EXTERNAL}/{job_id} up"),
                ledger.lookup(EXTERNAL, job_id),
            ) else {
                continue;
            };
            let stored_state = stored.as_ref().map(|r| r.state);
            let stepped = in_flight
                .filter(|(_, j)| j == job_id)
                .and_then(|(op, _)| step(op, *acked));
            if stored_state == *acked {
            } else if stepped == Some(stored_state) {
                self.mid_applied += 1;
            } else {
                tally.violate(
                    iteration,
                    format!("{EXTERNAL}/{job_id}: {acked:?} acknowledged, {stored_state:?} stored"),
                );
            }
            *acked = stored_state;
            if let Some(reservation) = stored.filter(|r| r.state.is_pending()) {
                expected_pending.push(reservation);
            }
        }
        let Some(pending) = tally.ok(iteration, "list what is pending", ledger.pending()) else {
            return;
        };
        let listed: Vec<(&str, &str)> = pending
            .reservations
            .iter()
            .map(|r| (r.account.as_str(), r.job_id.as_str()))
            .collect();
        let expected: Vec<(&str, &str)> = expected_pending
            .iter()
            .map(|r| (r.account.as_str(), r.job_id.as_str()))
            .collect();
        if listed != expected {
            tally.violate(
                iteration,
                format!("pending lists {listed:?}, the store holds {expected:?} pending"),
            );
        }
        // A restarted service retries each pending side effect, then confirms it.
        for reservation in &expected_pending {
            self.finish(ledger, reservation, iteration, tally);
        }
    }

    fn finish(
        &mut self,
        ledger: &JobLedger<Arc<dyn Store>>,
        reservation: &Reservation,
        iteration: u64,
        tally: &mut Tally,
    ) {
        let job_id = &reservation.job_id;
        let finished = match reservation.state {
            ReservationState::ChargePending => tally
                .ok(iteration, "confirm", ledger.confirm_charge(reservation))
                .map(|now| now.map(|r| r.state) == Some(ReservationState::Charged)),
            ReservationState::RefundPending => tally.ok(
                iteration,
                "complete a refund",
                ledger.complete_refund(reservation),
            ),
            _ => Some(false),
        };
        match finished {
            Some(true) => {
                self.finished_pending += 1;
                self.external.insert(
                    job_id.clone(),
                    step(
                        if reservation.state == ReservationState::ChargePending {
                            "confirm"
                        } else {
                            "complete-refund"
                        },
                        Some(reservation.state),
                    )
                    .flatten(),
                );
            }
            Some(false) => tally.violate(
                iteration,
                format!(
                    "{EXTERNAL}/{job_id}: {:?} could not be finished",
                    reservation.state
                ),
            ),
            None => {}
        }
    }
}

impl Model for Ledger {
    fn absorb(&mut self, report: &str, tally: &mut Tally) {
        let fields: Vec<&str> = report.split(' ').collect();
        let (what, job_id) = match fields.as_slice() {
            ["begin", op, job_id] => {
                self.in_flight = Some(((*op).to_owned(), (*job_id).to_owned()));
                return;
            }
            [what, job_id] => (*what, *job_id),
            _ => {
                tally
                    .violations
                    .push(format!("unexpected report {report:?}"));
                return;
            }
        };
        self.in_flight = None;
        if let Some(op) = match what {
            "pending" => Some("pending"),
            "confirmed" => Some("confirm"),
            "refund-pending" => Some("begin-refund"),
            "refund-completed" => Some("complete-refund"),
            _ => None,
        } {
            let Some(state) = self.external.get_mut(job_id) else {
                tally.violations.push(format!("no job {job_id}"));
                return;
            };
            match step(op, *state) {
                Some(after) => *state = after,
                None => tally.violations.push(format!(
                    "{EXTERNAL}/{job_id}: `{what}` after {state:?} was acknowledged"
                )),
            }
            tally.acknowledged += 1;
            return;
        }
        if let Some(expected) = match what {
            "existing-external" => Some(Some(ReservationState::Charged)),
            "nothing-external" => Some(None),
            _ => None,
        } {
            let state = self.external.get(job_id).copied().flatten();
            if state != expected {
                tally.violations.push(format!(
                    "{EXTERNAL}/{job_id}: `{what}` while {state:?} was acknowledged"
                ));
            }
            return;
        }
        let Some(charged) = self.charged.get_mut(job_id) else {
            tally.violations.push(format!("no job {job_id}"));
            return;
        };
        let wrong = match what {
            "charged" => std::mem::replace(charged, true),
            "existing" => !*charged,
            "refunded" => !std::mem::replace(charged, false),
            "nothing" => *charged,
            _ => true,
        };
        if matches!(what, "charged" | "refunded") {
            tally.acknowledged += 1;
        }
        if wrong {
            tally.violations.push(format!(
                "{job_id}: `{what}` contradicts the acknowledgements"
            ));
        }
    }

    fn check(&mut self, iteration: u64, tally: &mut Tally) {
        let in_flight = self.in_flight.take();
        if let Some((op, _)) = &in_flight {
            *self.mid.entry(op.clone()).or_default() += 1;
        }
        let Some(store) = tally.ok(iteration, "reopen", self.backend.open(&self.root)) else {
            return;
        };
        let ledger = JobLedger::new(Arc::clone(&store), Arc::new(ManualClock::new(START_MS)));
        if let Some(list) = tally.ok(iteration, "list the ledger", ledger.list(None)) {
            for (key, e) in &list.unreadable {
                tally.violate(iteration, format!("unreadable reservation {key}: {e}"));
            }
        }
        self.check_external(&ledger, in_flight.as_ref(), iteration, tally);
        let mut charges_total = 0;
        for (job_id, charged) in &mut self.charged {
            let Some(reservation) = tally.ok(
                iteration,
                &format!("look {job_id} up"),
                ledger.lookup(ACCOUNT, job_id),
            ) else {
                continue;
            };
            let Some((charges, _)) = tally.ok(
                iteration,
                &format!("read the charges of {job_id}"),
                read_number(&*store, &charges_key(job_id)),
            ) else {
                continue;
            };
            let reserved = reservation.is_some();
            charges_total += charges;
            if charges != i64::from(reserved) {
                tally.violate(
                    iteration,
                    format!("{job_id}: charged {charges} times net, reserved: {reserved}"),
                );
            }
            let op_here = in_flight
                .as_ref()
                .filter(|(op, j)| j == job_id && (op == "charge" || op == "refund"))
                .map(|(op, _)| op.as_str());
            if let Some(op) = op_here {
                // The one operation in flight may have gone either way.
                let applied = match op {
                    "charge" => reserved && !*charged,
                    _ => !reserved && *charged,
                };
                self.mid_applied += u64::from(applied);
            } else if reserved != *charged {
                let what = if *charged {
                    "acknowledged charge is missing"
                } else {
                    "acknowledged refund was undone"
                };
                tally.violate(iteration, format!("{job_id}: {what}"));
            }
            *charged = reserved;
        }
        if let Some((balance, _)) = tally.ok(
            iteration,
            "read the balance",
            read_number(&*store, &balance_key(ACCOUNT)),
        ) && balance != INITIAL - charges_total
        {
            tally.violate(
                iteration,
                format!(
                    "balance {balance}, but {charges_total} charges of {INITIAL} leave {}",
                    INITIAL - charges_total
                ),
            );
        }
    }

    fn extra(&self) -> String {
        let mid = |op: &str| self.mid.get(op).copied().unwrap_or(0);
        format!(
            "mid_charge={} mid_refund={} mid_external={} mid_applied={} finished_pending={}",
            mid("charge"),
            mid("refund"),
            ["pending", "confirm", "begin-refund", "complete-refund"]
                .map(mid)
                .iter()
                .sum::<u64>(),
            self.mid_applied,
            self.finished_pending
        )
    }
}

/// Child: charges (two times in three) or refunds a random job, with the
/// balance in the store or (half of the time) externally, reporting
/// `begin <op> <job>` before each step and its outcome after.
pub fn work(backend: Backend, root: &Path, ctx: &ChildContext) -> Outcome {
    let store = backend.open(root)?;
    let ledger = JobLedger::new(Arc::clone(&store), Arc::new(ManualClock::new(START_MS)));
    let mut rng = fastrand::Rng::with_seed(ctx.seed);
    loop {
        let job_id = job(rng.u64(0..JOBS));
        if rng.bool() {
            external(&ledger, &job_id, rng.u8(0..3) == 0, ctx)?;
        } else if rng.u8(0..3) == 0 {
            ctx.report(&format!("begin refund {job_id}"));
            let refunded =
                ledger.refund_with(ACCOUNT, &job_id, |_| book(&*store, ACCOUNT, &job_id, -1))?;
            let what = if refunded.is_some() {
                "refunded"
            } else {
                "nothing"
            };
            ctx.report(&format!("{what} {job_id}"));
        } else {
            ctx.report(&format!("begin charge {job_id}"));
            let what = match ledger.reserve_with(ACCOUNT, &job_id, &ChargeRequest::new(), |_| {
                book(&*store, ACCOUNT, &job_id, 1)
            })? {
                Reserve::New(_) => "charged",
                Reserve::Existing(_) => "existing",
                Reserve::InFlight(r) => {
                    return Err(format!("{job_id} is in flight: {:?}", r.state).into());
                }
            };
            ctx.report(&format!("{what} {job_id}"));
        }
    }
}

/// One external charge (`reserve_pending`, `confirm_charge`) or refund
/// (`begin_refund`, `complete_refund`) of `job_id`, each step announced and
/// acknowledged.
fn external(
    ledger: &JobLedger<Arc<dyn Store>>,
    job_id: &str,
    refund: bool,
    ctx: &ChildContext,
) -> Outcome {
    if refund {
        ctx.report(&format!("begin begin-refund {job_id}"));
        let Some(reservation) = ledger.begin_refund(EXTERNAL, job_id)? else {
            ctx.report(&format!("nothing-external {job_id}"));
            return Ok(());
        };
        ctx.report(&format!("refund-pending {job_id}"));
        // The external refund, keyed by `reservation.id`, would go here.
        ctx.report(&format!("begin complete-refund {job_id}"));
        if !ledger.complete_refund(&reservation)? {
            return Err(format!("{job_id}: the refund begun was not there to complete").into());
        }
        ctx.report(&format!("refund-completed {job_id}"));
        return Ok(());
    }
    ctx.report(&format!("begin pending {job_id}"));
    let reservation = match ledger.reserve_pending(EXTERNAL, job_id, &ChargeRequest::new())? {
        Reserve::New(reservation) => reservation,
        Reserve::Existing(_) => {
            ctx.report(&format!("existing-external {job_id}"));
            return Ok(());
        }
        Reserve::InFlight(r) => {
            return Err(format!("{job_id} is in flight: {:?}", r.state).into());
        }
    };
    ctx.report(&format!("pending {job_id}"));
    // The external charge, keyed by `reservation.id`, would go here.
    ctx.report(&format!("begin confirm {job_id}"));
    if ledger.confirm_charge(&reservation)?.is_none() {
        return Err(format!("{job_id}: the charge reserved was not there to confirm").into());
    }
    ctx.report(&format!("confirmed {job_id}"));
    Ok(())
}
