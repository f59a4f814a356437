//! The clause list, written once, and [`conformance_suite!`](crate::conformance_suite),
//! which makes one `#[test]` per clause from it.

use super::{Harness, Outcome, Verdict};

/// Hands the name of every clause, in the order [`run_all`](super::run_all)
/// runs them, to the macro `$callback`, after the tokens in brackets:
/// `$callback! { [$($args)*] clause, clause, ... }`.
///
/// The one list of clauses: [`clauses`](super::clauses) (and so `run_all`) and
/// [`conformance_suite!`](crate::conformance_suite) are both expanded from it,
/// so a clause added here is run and tested everywhere.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_clauses {
    ($callback:path, [$($args:tt)*]) => {
        $callback! {
            [$($args)*]
            get_of_absent_key_is_none,
            put_absent_inserts_only_once,
            put_any_creates_and_overwrites,
            put_version_is_compare_and_set,
            delete_follows_its_precondition,
            versions_strictly_increase,
            versions_are_never_reused,
            values_round_trip_exactly,
            hostile_segments_are_distinct_keys,
            key_that_prefixes_another_is_independent,
            largest_key_is_stored,
            largest_value_is_stored,
            value_over_the_limit_is_refused_and_changes_nothing,
            list_is_ordered_and_matches_whole_segments,
            list_pages_cover_every_key_once,
            list_sees_writes_between_pages,
            scan_returns_every_key_once_in_order,
            scan_returns_a_key_written_during_it_at_most_once,
            batch_applies_every_operation_in_order,
            batch_conflict_changes_nothing,
            batch_rejects_empty_and_duplicate_keys,
            batch_is_atomic_for_concurrent_readers,
            concurrent_put_absent_has_exactly_one_winner,
            concurrent_cas_increments_lose_no_update,
            versions_follow_real_time_across_handles,
            writes_survive_reopen,
            corrupt_record_is_reported_never_absent,
            quarantine_moves_records_aside,
        }
    };
}

/// One `#[test]` per clause of the [conformance suite](crate::conformance), in a
/// module of its own: `cargo test` then names the clause a backend broke, and
/// runs the clauses in parallel.
///
/// `conformance_suite!(name, harness)` makes `mod name`, in which each test
/// evaluates the expression `harness` (a fresh [`Harness`](crate::conformance::Harness)
/// per clause; the module sees the items of the one it is written in) and runs
/// its clause on it. A clause the backend breaks fails its test with the
/// [`Violation`](crate::conformance::Violation). A clause skipped for want of a
/// harness capability passes and prints why (`cargo test -- --nocapture`
/// shows it), unless the skips are listed:
/// `conformance_suite!(name, harness, may_skip: [clause, ...])` fails the test
/// of any other clause that is skipped, so that a durable backend cannot lose
/// its reopen or corruption clauses unnoticed (`may_skip: []`: none may be).
/// The clause names listed must exist: a misspelt one does not compile.
///
/// The tests are those of [`clauses`](crate::conformance::clauses) and
/// [`run_all`](crate::conformance::run_all): one list makes all three.
///
/// ```
/// use jobsafe::MemStore;
/// use jobsafe::conformance::Harness;
///
/// struct Fresh;
///
/// impl Harness for Fresh {
///     type Store = MemStore;
///     fn fresh(&mut self) -> jobsafe::Result<MemStore> {
///         Ok(MemStore::new())
///     }
/// }
///
/// // `mem::get_of_absent_key_is_none`, `mem::put_absent_inserts_only_once`, ...;
/// // the clauses that need a reopen or a damaged record pass, printing the skip.
/// jobsafe::conformance_suite!(mem, Fresh);
///
/// // The same, but the test of any other skipped clause fails.
/// jobsafe::conformance_suite!(
///     mem_strict,
///     Fresh,
///     may_skip: [writes_survive_reopen, corrupt_record_is_reported_never_absent]
/// );
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $harness:expr $(,)?) => {
        $crate::__conformance_clauses!(
            $crate::__conformance_tests,
            [$name, $harness, ::core::option::Option::None]
        );
    };
    ($name:ident, $harness:expr, may_skip: [$($skip:ident),* $(,)?] $(,)?) => {
        const _: () = {
            // A clause named here that does not exist fails to compile.
            $(#[allow(unused_imports)] use $crate::conformance::$skip as _;)*
        };
        $crate::__conformance_clauses!(
            $crate::__conformance_tests,
            [$name, $harness, ::core::option::Option::Some(&[$(stringify!($skip)),*])]
        );
    };
}

/// What [`conformance_suite!`](crate::conformance_suite) expands to, given the
/// clause list.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ([$name:ident, $harness:expr, $may_skip:expr] $($clause:ident),* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $clause() {
                    let mut harness = $harness;
                    let verdict = $crate::conformance::$clause(&mut harness);
                    $crate::conformance::__expect_kept(
                        &harness,
                        stringify!($clause),
                        verdict,
                        $may_skip,
                    );
                }
            )*
        }
    };
}

/// The end of one test of [`conformance_suite!`](crate::conformance_suite):
/// panics, failing the test, if the clause was broken, or skipped when
/// `may_skip` is given and does not name it; prints a skip it allows.
#[doc(hidden)]
#[allow(clippy::panic)] // Test support: a panic is how a test fails.
pub fn __expect_kept<H: Harness>(
    _harness: &H,
    clause: &str,
    verdict: Verdict,
    may_skip: Option<&[&str]>,
) {
    let store = std::any::type_name::<H::Store>();
    match verdict {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::Skipped(why)) => match may_skip {
            Some(allowed) if !allowed.contains(&clause) => {
                panic!("{store} must run {clause}, but it was skipped: {why}")
            }
            _ => println!("skipped {clause} on {store}: {why}"),
        },
        Err(violation) => panic!("{store} broke {clause}: {violation}"),
    }
}
