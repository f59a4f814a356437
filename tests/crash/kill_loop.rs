//! The SIGKILL loop that runs a [`Model`](super::part::Model) part: start a
//! child, let it acknowledge a few writes, kill it a random moment later (it
//! writes without pause, so the kill lands in a write or between two), check,
//! start the next one on the same stores.

use std::time::Duration;

use crate::common::child::Child;

use super::backend::Backend;
use super::part::{self, Kind, PartId, ROLE, Tally};
use super::summary::{Budget, Figures};

/// Runs `kind` on every backend, `budget.kills` kills each, from the test
/// `test` (whose function must serve children first, see
/// [`part::serve_child`]).
pub fn run(test: &str, kind: Kind, budget: Budget) -> Figures {
    let mut figures = Figures::default();
    for backend in Backend::ALL {
        let part = PartId { kind, backend };
        let mut rng = fastrand::Rng::with_seed(part.seed(budget.seed));
        let dir = tempfile::tempdir().unwrap();
        let mut model = part::model(part, dir.path());
        let mut tally = Tally::default();
        for iteration in 1..=budget.kills {
            let vars = part::child_vars(&[part], dir.path(), iteration, rng.u64(..));
            let mut worker = Child::spawn(test, ROLE, &vars);
            figures.iterations += 1;
            let mut last_was_intent = false;
            let mut absorb = |line: String, tally: &mut Tally| {
                let Some((from, report)) = part::route(&line).filter(|(p, _)| *p == part) else {
                    tally.violate(iteration, format!("unexpected report {line:?}"));
                    return;
                };
                last_was_intent = part::is_intent(report);
                match part::failure(report) {
                    Some(error) => tally.violate(iteration, format!("{from} failed: {error}")),
                    None => model.absorb(report, tally),
                }
            };
            // A few acknowledgements first, so that every child gets somewhere.
            let wait_for = rng.usize(1..=3);
            let mut acknowledged = 0;
            while acknowledged < wait_for {
                let Some(line) = worker.next_report() else {
                    break;
                };
                if !part::route(&line).is_some_and(|(_, report)| part::is_intent(report)) {
                    acknowledged += 1;
                }
                absorb(line, &mut tally);
            }
            // Vary where in the following writes the kill lands; now and then
            // late enough for a background compaction to finish.
            let late = if rng.u8(0..4) == 0 { 30_000 } else { 3_000 };
            std::thread::sleep(Duration::from_micros(rng.u64(0..late)));
            for line in worker.kill() {
                absorb(line, &mut tally);
            }
            figures.kills += 1;
            figures.kills_mid_write += u64::from(last_was_intent);
            model.check(iteration, &mut tally);
        }
        let extra = model.extra();
        figures.extra.push(if extra.is_empty() {
            format!("{backend}:acknowledged={}", tally.acknowledged)
        } else {
            format!(
                "{backend}:acknowledged={},{}",
                tally.acknowledged,
                extra.replace(' ', ",")
            )
        });
        figures.acknowledged_checked += tally.acknowledged;
        figures
            .violations
            .extend(tally.violations.into_iter().map(|v| format!("{part}: {v}")));
    }
    figures
}
