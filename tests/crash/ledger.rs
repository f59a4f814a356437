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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jobsafe::{ChargeRequest, Expect, JobLedger, Key, ManualClock, Op, Reserve, Store, Version};

use super::backend::Backend;
use super::part::{ChildContext, Model, Outcome, Tally};

const ACCOUNT: &str = "lic:crash";
const JOBS: u64 = 12;
const INITIAL: i64 = 1_000_000;
const START_MS: u64 = 1_700_000_000_000;

fn job(n: u64) -> String {
    format!("job-{n:02}")
}

fn balance_key() -> Key {
    Key::new(["credits", ACCOUNT]).unwrap()
}

fn charges_key(job_id: &str) -> Key {
    Key::new(["charges", job_id]).unwrap()
}

fn read_number(store: &dyn Store, key: &Key) -> jobsafe::Result<(i64, Option<Version>)> {
    Ok(match store.get(key)? {
        Some(entry) => (
            std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(i64::MIN),
            Some(entry.version),
        ),
        None => (0, None),
    })
}

/// Operations adding `delta` to the job's charge count and taking it from the
/// balance, each guarded by the version read.
fn book(store: &dyn Store, job_id: &str, delta: i64) -> jobsafe::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (key, sign) in [(balance_key(), -1), (charges_key(job_id), 1)] {
        let (value, version) = read_number(store, &key)?;
        ops.push(Op::Put {
            key,
            value: (value + sign * delta).to_string().into_bytes(),
            expect: version.map_or(Expect::Absent, Expect::Version),
        });
    }
    Ok(ops)
}

/// The parent's model: which jobs the acknowledgements say are charged.
pub struct Ledger {
    backend: Backend,
    root: PathBuf,
    charged: BTreeMap<String, bool>,
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
                &balance_key(),
                INITIAL.to_string().as_bytes(),
                Expect::Absent,
            )
            .unwrap();
        Ledger {
            backend,
            root,
            charged: (0..JOBS).map(|n| (job(n), false)).collect(),
            in_flight: None,
            mid: BTreeMap::new(),
            mid_applied: 0,
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
            for reservation in list.reservations.iter().filter(|r| r.state.is_pending()) {
                tally.violate(
                    iteration,
                    format!("{} left {:?}", reservation.job_id, reservation.state),
                );
            }
        }
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
            if in_flight.as_ref().is_some_and(|(_, j)| j == job_id) {
                // The one operation in flight may have gone either way.
                let applied = match in_flight.as_ref().map(|(op, _)| op.as_str()) {
                    Some("charge") => reserved && !*charged,
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
            read_number(&*store, &balance_key()),
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
            "mid_charge={} mid_refund={} mid_applied={}",
            mid("charge"),
            mid("refund"),
            self.mid_applied
        )
    }
}

/// Child: charges (two times in three) or refunds a random job, reporting
/// `begin <op> <job>` before and the outcome after.
pub fn work(backend: Backend, root: &Path, ctx: &ChildContext) -> Outcome {
    let store = backend.open(root)?;
    let ledger = JobLedger::new(Arc::clone(&store), Arc::new(ManualClock::new(START_MS)));
    let mut rng = fastrand::Rng::with_seed(ctx.seed);
    loop {
        let job_id = job(rng.u64(0..JOBS));
        if rng.u8(0..3) == 0 {
            ctx.report(&format!("begin refund {job_id}"));
            let refunded = ledger.refund_with(ACCOUNT, &job_id, |_| book(&*store, &job_id, -1))?;
            let what = if refunded.is_some() {
                "refunded"
            } else {
                "nothing"
            };
            ctx.report(&format!("{what} {job_id}"));
        } else {
            ctx.report(&format!("begin charge {job_id}"));
            let what = match ledger.reserve_with(ACCOUNT, &job_id, &ChargeRequest::new(), |_| {
                book(&*store, &job_id, 1)
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
