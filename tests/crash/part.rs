//! What every part provides, and how a child runs the workloads it is given.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::common::child;

use super::backend::Backend;
use super::{batches, events, ledger, locks, pipelines};

/// The role of a child that runs part workloads.
pub const ROLE: &str = "crash-worker";

/// Where the parts' manual clocks start.
pub const START_MS: u64 = 1_700_000_000_000;

/// When the clock of the child of `iteration` starts: `step_ms` after the
/// previous child's, which a part picks long enough for whatever that child
/// left timed (leases, TTLs) to have ended.
pub fn child_start(iteration: u64, step_ms: u64) -> u64 {
    START_MS + iteration * step_ms
}
const PARTS_VAR: &str = "JOBSAFE_CRASH_PARTS";
const ROOT_VAR: &str = "JOBSAFE_CRASH_ROOT";
const ITERATION_VAR: &str = "JOBSAFE_CRASH_ITERATION";
const SEED_VAR: &str = "JOBSAFE_CRASH_CHILD_SEED";

/// The kinds of workload that run under [`Model`]s (the pipeline part has a
/// loop of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Store,
    Lock,
    Ledger,
    Events,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Store, Kind::Lock, Kind::Ledger, Kind::Events];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Store => "store",
            Kind::Lock => "lock",
            Kind::Ledger => "ledger",
            Kind::Events => "events",
        }
    }
}

/// One workload on one backend, named `<kind>/<backend>` in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartId {
    pub kind: Kind,
    pub backend: Backend,
}

impl PartId {
    /// Every kind on every backend.
    pub fn all() -> Vec<PartId> {
        Kind::ALL
            .into_iter()
            .flat_map(|kind| Backend::ALL.map(|backend| PartId { kind, backend }))
            .collect()
    }

    fn parse(name: &str) -> Option<PartId> {
        let (kind, backend) = name.split_once('/')?;
        Some(PartId {
            kind: Kind::ALL.into_iter().find(|k| k.name() == kind)?,
            backend: Backend::parse(backend)?,
        })
    }

    /// The store directory of this part under a child's root.
    pub fn dir(self, root: &Path) -> PathBuf {
        root.join(format!("{}-{}", self.kind.name(), self.backend.name()))
    }

    /// A seed of its own for this part, from the run's seed.
    pub fn seed(self, seed: u64) -> u64 {
        let index = PartId::all().iter().position(|p| *p == self).unwrap_or(0) as u64;
        seed ^ (index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

impl fmt::Display for PartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.name(), self.backend.name())
    }
}

/// What the parent counts for one part.
#[derive(Debug, Default)]
pub struct Tally {
    /// Acknowledged writes checked against the stores.
    pub acknowledged: u64,
    pub violations: Vec<String>,
}

impl Tally {
    pub fn violate(&mut self, iteration: u64, what: impl fmt::Display) {
        self.violations
            .push(format!("after stop {iteration}: {what}"));
    }

    /// The value of `result`, or `None` with the error counted as a violation.
    pub fn ok<T, E: fmt::Display>(
        &mut self,
        iteration: u64,
        what: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        result
            .map_err(|e| self.violate(iteration, format!("{what}: {e}")))
            .ok()
    }
}

/// The parent's side of a part: a model of what the child acknowledged, and the
/// checks of the store against it after each stop.
pub trait Model {
    /// Takes one line the child reported: an intent (`begin ...`) or an
    /// acknowledgement.
    fn absorb(&mut self, report: &str, tally: &mut Tally);
    /// After the child is gone (and, on ext4, the filesystem remounted): reopens
    /// the store and checks it against everything acknowledged so far.
    fn check(&mut self, iteration: u64, tally: &mut Tally);
    /// Figures of the part's own for the summary line, if any.
    fn extra(&self) -> String {
        String::new()
    }
}

/// The model of `part`, with its store prepared under `root`.
pub fn model(part: PartId, root: &Path) -> Box<dyn Model> {
    let dir = part.dir(root);
    match part.kind {
        Kind::Store => Box::new(batches::Batches::new(part.backend, dir)),
        Kind::Lock => Box::new(locks::Locks::new(part.backend, dir)),
        Kind::Ledger => Box::new(ledger::Ledger::new(part.backend, dir)),
        Kind::Events => Box::new(events::Events::new(part.backend, dir)),
    }
}

/// A line a child reported, split into its part and the rest; `None` for a line
/// of no part.
pub fn route(line: &str) -> Option<(PartId, &str)> {
    let (part, rest) = line.split_once(' ')?;
    Some((PartId::parse(part)?, rest))
}

/// Whether a report (without its part) announces a write about to start.
pub fn is_intent(report: &str) -> bool {
    report.starts_with("begin ")
}

/// Whether a report (without its part) says the child's workload failed.
pub fn failure(report: &str) -> Option<&str> {
    report.strip_prefix("failed ")
}

/// The variables of a child that runs `parts` under `root`.
pub fn child_vars(
    parts: &[PartId],
    root: &Path,
    iteration: u64,
    seed: u64,
) -> HashMap<&'static str, String> {
    let names: Vec<String> = parts.iter().map(PartId::to_string).collect();
    HashMap::from([
        (PARTS_VAR, names.join(",")),
        (ROOT_VAR, root.display().to_string()),
        (ITERATION_VAR, iteration.to_string()),
        (SEED_VAR, seed.to_string()),
    ])
}

/// What a child's workload knows and how it reports.
pub struct ChildContext {
    pub iteration: u64,
    pub seed: u64,
    part: PartId,
}

impl ChildContext {
    /// Sends one line to the parent, marked with this part.
    pub fn report(&self, line: &str) {
        child::report(&format!("{} {line}", self.part));
    }
}

/// How a workload ends: only by an error (it runs until stopped otherwise).
pub type Outcome = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Runs this process as a child if it was started as one; returns whether it was.
pub fn serve_child() -> bool {
    match child::role().as_deref() {
        None => false,
        Some(pipelines::ROLE) => {
            pipelines::run_in_child();
            true
        }
        Some(ROLE) => {
            work_in_child();
            true
        }
        Some(other) => panic!("no child role {other:?}"),
    }
}

/// Child: runs each part's workload on a thread of its own until stopped. A
/// workload that fails reports `failed <error>`; the others go on.
fn work_in_child() {
    let root = PathBuf::from(child::var(ROOT_VAR));
    let iteration: u64 = child::var(ITERATION_VAR).parse().unwrap();
    let seed: u64 = child::var(SEED_VAR).parse().unwrap();
    let parts: Vec<PartId> = child::var(PARTS_VAR)
        .split(',')
        .map(|name| PartId::parse(name).unwrap_or_else(|| panic!("no part {name:?}")))
        .collect();
    let threads: Vec<_> = parts
        .into_iter()
        .map(|part| {
            let dir = part.dir(&root);
            let ctx = ChildContext {
                iteration,
                seed: part.seed(seed),
                part,
            };
            std::thread::spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    work(part, &dir, &ctx)
                }));
                match outcome {
                    Ok(Ok(())) => {}
                    // One line: the parent reads reports line by line.
                    Ok(Err(e)) => ctx.report(&format!("failed {}", one_line(&e.to_string()))),
                    Err(panic) => {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_default();
                        ctx.report(&format!("failed panic: {}", one_line(&message)));
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

fn one_line(text: &str) -> String {
    text.replace('\n', " | ")
}

fn work(part: PartId, dir: &Path, ctx: &ChildContext) -> Outcome {
    match part.kind {
        Kind::Store => batches::work(part.backend, dir, ctx),
        Kind::Lock => locks::work(part.backend, dir, ctx),
        Kind::Ledger => ledger::work(part.backend, dir, ctx),
        Kind::Events => events::work(part.backend, dir, ctx),
    }
}
