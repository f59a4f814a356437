//! The suite's budget and its summary lines: one per part, and a total once
//! every part has reported.
//!
//! `JOBSAFE_CRASH_KILLS` sets the kills per part and store backend (10 by
//! default, so that a plain `cargo test` stays quick; CI sets 200 or more);
//! `JOBSAFE_CRASH_SEED` replays a run's kill points.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// How many parts the suite has: the total line is printed after the last.
pub const PARTS: usize = 5;
const DEFAULT_KILLS: u64 = 10;

/// What one run of the suite may spend, and its seed.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Kills per part and store backend.
    pub kills: u64,
    pub seed: u64,
}

/// The budget of this run, from the environment. Every part of one run uses the
/// same seed.
pub fn budget() -> Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let _ = started();
        Budget {
            kills: env_or("JOBSAFE_CRASH_KILLS", DEFAULT_KILLS),
            seed: env_or("JOBSAFE_CRASH_SEED", fastrand::u64(..)),
        }
    })
}

fn started() -> Instant {
    static STARTED: OnceLock<Instant> = OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid number")),
        Err(_) => default,
    }
}

/// What one part did.
#[derive(Debug, Default)]
pub struct Figures {
    /// Children started.
    pub iterations: u64,
    /// Children killed while at work.
    pub kills: u64,
    /// Kills that landed between a write's start and its acknowledgement.
    pub kills_mid_write: u64,
    /// Acknowledged writes checked against the stores.
    pub acknowledged_checked: u64,
    pub violations: Vec<String>,
    /// The part's own figures, already formatted.
    pub extra: Vec<String>,
}

#[derive(Default)]
struct Total {
    parts: usize,
    figures: Figures,
}

/// Prints the line of `part` and, once every part has reported, the total;
/// then fails the test if the part found violations.
pub fn report(part: &str, figures: Figures) {
    let seed = budget().seed;
    let extra: String = figures.extra.iter().map(|e| format!(" {e}")).collect();
    println!(
        "crash_suite/{part}: iterations={} kills={} kills_mid_write={} acknowledged_checked={} violations={}{extra} seed={seed}",
        figures.iterations,
        figures.kills,
        figures.kills_mid_write,
        figures.acknowledged_checked,
        figures.violations.len(),
    );
    {
        static TOTAL: Mutex<Option<Total>> = Mutex::new(None);
        let mut total = TOTAL.lock().unwrap_or_else(|e| e.into_inner());
        let total = total.get_or_insert_with(Total::default);
        total.parts += 1;
        let sum = &mut total.figures;
        sum.iterations += figures.iterations;
        sum.kills += figures.kills;
        sum.kills_mid_write += figures.kills_mid_write;
        sum.acknowledged_checked += figures.acknowledged_checked;
        sum.violations
            .extend(figures.violations.iter().map(|v| format!("{part}: {v}")));
        if total.parts == PARTS {
            println!(
                "crash_suite: parts={PARTS} iterations={} kills={} acknowledged_checked={} violations={} kills_mid_write={} kills_per_backend={} seed={seed} secs={:.1}",
                sum.iterations,
                sum.kills,
                sum.acknowledged_checked,
                sum.violations.len(),
                sum.kills_mid_write,
                budget().kills,
                started().elapsed().as_secs_f64()
            );
        }
    }
    assert!(
        figures.violations.is_empty(),
        "{part}: violations (seed {seed}):\n{}",
        figures.violations.join("\n")
    );
    assert!(
        figures.acknowledged_checked > 0,
        "{part}: no write was acknowledged"
    );
}
