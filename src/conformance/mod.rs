//! The conformance suite: every clause of the [`Store`] contract as a check that
//! runs against any backend, this crate's and yours.
//!
//! Implement [`Harness`] to tell the suite how to make a fresh, empty store (and,
//! if the backend can, how to reopen one and how to damage a record), then call
//! [`run_all`], the clause functions one by one, or
//! [`conformance_suite!`](crate::conformance_suite), which makes one `#[test]`
//! per clause.
//! A clause never panics: it returns [`Outcome::Passed`], [`Outcome::Skipped`]
//! when the harness lacks a capability it needs, or a [`Violation`] that says what
//! the backend did and what the contract demands.
//!
//! ```
//! use jobsafe::conformance::{self, Harness};
//! use jobsafe::MemStore;
//!
//! struct Fresh;
//!
//! impl Harness for Fresh {
//!     type Store = MemStore;
//!     fn fresh(&mut self) -> jobsafe::Result<MemStore> {
//!         Ok(MemStore::new())
//!     }
//! }
//!
//! // One clause on its own...
//! conformance::put_absent_inserts_only_once(&mut Fresh)?;
//! // ...or all of them.
//! let report = conformance::run_all(&mut Fresh);
//! assert!(report.is_ok(), "{report}");
//! # Ok::<(), conformance::Violation>(())
//! ```
//!
//! The clauses that need a reopen (durability, versions that survive a restart)
//! or a damaged record (corruption) are skipped when the harness keeps the
//! default [`Harness::reopen`] or [`Harness::corrupt`]; a durable backend should
//! implement both.

mod batches;
mod concurrency;
mod keys;
mod limits;
mod ordering;
mod restart;
mod scan;
mod single_key;
mod suite;
mod support;

use std::fmt;

pub use batches::{
    batch_applies_every_operation_in_order, batch_conflict_changes_nothing,
    batch_is_atomic_for_concurrent_readers, batch_rejects_empty_and_duplicate_keys,
};
pub use concurrency::{
    concurrent_cas_increments_lose_no_update, concurrent_put_absent_has_exactly_one_winner,
};
pub use keys::{
    hostile_segments_are_distinct_keys, key_that_prefixes_another_is_independent,
    largest_key_is_stored, list_is_ordered_and_matches_whole_segments,
    list_pages_cover_every_key_once, list_sees_writes_between_pages,
};
pub use limits::{largest_value_is_stored, value_over_the_limit_is_refused_and_changes_nothing};
pub use ordering::versions_follow_real_time_across_handles;
pub use restart::{
    corrupt_record_is_reported_never_absent, quarantine_moves_records_aside, writes_survive_reopen,
};
pub use scan::{
    scan_returns_a_key_written_during_it_at_most_once, scan_returns_every_key_once_in_order,
};
pub use single_key::{
    delete_follows_its_precondition, get_of_absent_key_is_none, put_absent_inserts_only_once,
    put_any_creates_and_overwrites, put_version_is_compare_and_set, values_round_trip_exactly,
    versions_are_never_reused, versions_strictly_increase,
};

#[doc(hidden)]
pub use suite::__expect_kept;

use crate::key::Key;
use crate::store::Store;

/// How the suite gets stores of the backend under test.
pub trait Harness {
    /// The backend under test.
    type Store: Store;

    /// A new, empty store. Each clause calls this once (a few call it more often),
    /// so it must not hand out a store holding an earlier clause's records.
    ///
    /// # Errors
    /// Whatever stops the backend from opening; the clause reports it as a
    /// violation.
    fn fresh(&mut self) -> crate::Result<Self::Store>;

    /// Closes `store` and opens the same data again, as a restarted process would.
    /// Returns `None` if the backend keeps nothing across a reopen (the default);
    /// the clauses that need a reopen are then skipped.
    ///
    /// # Errors
    /// Whatever stops the backend from reopening.
    fn reopen(&mut self, store: Self::Store) -> crate::Result<Option<Self::Store>> {
        drop(store);
        Ok(None)
    }

    /// Damages the stored record of `key` so that it can no longer be decoded, as
    /// a torn write or a flipped bit would. Returns `false` if the backend cannot
    /// be damaged from outside (the default); the corruption clause is then
    /// skipped.
    ///
    /// # Errors
    /// Whatever stops the damage from being done.
    fn corrupt(&mut self, store: &Self::Store, key: &Key) -> crate::Result<bool> {
        let _ = (store, key);
        Ok(false)
    }

    /// Another handle on the same data as `store`, opened as another process
    /// (or machine) would open it: a second open of the same directory, a
    /// second connection pool to the same table. Returns `None` if the backend
    /// cannot be opened twice (the default); the clause about real-time order
    /// across handles is then skipped. A backend shared by processes should
    /// implement it.
    ///
    /// # Errors
    /// Whatever stops the second handle from opening.
    fn open_another(&mut self, store: &Self::Store) -> crate::Result<Option<Self::Store>> {
        let _ = store;
        Ok(None)
    }
}

/// What a clause found when the backend did not break it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The backend keeps the clause.
    Passed,
    /// The clause needs a capability the harness does not offer; the reason says
    /// which.
    Skipped(&'static str),
}

/// A clause the backend broke: what was done, what came back, what the contract
/// demands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
#[non_exhaustive]
pub struct Violation {
    detail: String,
}

impl Violation {
    pub(crate) fn new(detail: impl Into<String>) -> Self {
        Violation {
            detail: detail.into(),
        }
    }

    /// The description of what went wrong.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// The result of one clause.
pub type Verdict = Result<Outcome, Violation>;

/// One clause of the contract, by name.
pub struct Clause<H> {
    /// The clause's name, which is also the name of its function in this module.
    pub name: &'static str,
    /// Runs the clause against fresh stores from the harness.
    pub run: fn(&mut H) -> Verdict,
}

impl<H> fmt::Debug for Clause<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clause").field("name", &self.name).finish()
    }
}

macro_rules! clause_list {
    ([] $($name:ident),* $(,)?) => {
        /// Every clause of the suite, in the order [`run_all`] runs them.
        pub fn clauses<H: Harness>() -> Vec<Clause<H>> {
            vec![$(Clause { name: stringify!($name), run: $name::<H> }),*]
        }
    };
}

crate::__conformance_clauses!(clause_list, []);

/// Runs every clause and collects the verdicts.
pub fn run_all<H: Harness>(harness: &mut H) -> Report {
    let verdicts = clauses::<H>()
        .into_iter()
        .map(|clause| (clause.name, (clause.run)(harness)))
        .collect();
    Report { verdicts }
}

/// The verdicts of [`run_all`], one per clause.
#[derive(Debug)]
#[non_exhaustive]
pub struct Report {
    verdicts: Vec<(&'static str, Verdict)>,
}

impl Report {
    /// Each clause's name and verdict, in the order they ran.
    pub fn verdicts(&self) -> &[(&'static str, Verdict)] {
        &self.verdicts
    }

    /// The clauses the backend broke.
    pub fn violations(&self) -> impl Iterator<Item = (&'static str, &Violation)> {
        self.verdicts
            .iter()
            .filter_map(|(name, verdict)| verdict.as_ref().err().map(|v| (*name, v)))
    }

    /// The clauses skipped for lack of a harness capability, with the reason.
    pub fn skipped(&self) -> impl Iterator<Item = (&'static str, &'static str)> {
        self.verdicts
            .iter()
            .filter_map(|(name, verdict)| match verdict {
                Ok(Outcome::Skipped(why)) => Some((*name, *why)),
                _ => None,
            })
    }

    /// Whether no clause was broken (skipped clauses do not count against it).
    pub fn is_ok(&self) -> bool {
        self.violations().next().is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, verdict) in &self.verdicts {
            match verdict {
                Ok(Outcome::Passed) => writeln!(f, "pass     {name}")?,
                Ok(Outcome::Skipped(why)) => writeln!(f, "skipped  {name}: {why}")?,
                Err(violation) => writeln!(f, "VIOLATED {name}: {violation}")?,
            }
        }
        Ok(())
    }
}
