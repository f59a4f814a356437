//! The targets, as ratios of figures from this run, each reported
//! met, MISSED, or not measured (when the options left out what it needs).

pub(crate) use crate::common::targets::{Bound, Target, markdown};
use crate::compare::cell::{Bench, Impl};
use crate::compare::run::Row;

fn ops(rows: &[Row], bench: Bench, imp: Impl, threads: usize) -> Option<f64> {
    rows.iter()
        .find(|r| r.bench == bench && r.imp == imp && r.threads == threads)
        .map(Row::ops_per_s)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a / b)
}

/// The throughput targets of the main table.
pub(crate) fn of_table(rows: &[Row]) -> Vec<Target> {
    let log = |bench, threads| ops(rows, bench, Impl::LogStore, threads);
    let sqlite_best = rows
        .iter()
        .filter(|r| r.bench == Bench::ReserveNew && r.imp == Impl::SqliteFull)
        .max_by(|a, b| a.ops_per_s().total_cmp(&b.ops_per_s()));
    let mut targets = vec![
        Target::new(
            "reserve_new: logstore t1 / sqlite_full t1",
            ratio(
                log(Bench::ReserveNew, 1),
                ops(rows, Bench::ReserveNew, Impl::SqliteFull, 1),
            ),
            Bound::AtLeast(1.0),
        ),
        Target::new(
            format!(
                "reserve_new: logstore t16 / sqlite_full best (t{})",
                sqlite_best.map_or(0, |r| r.threads)
            ),
            ratio(log(Bench::ReserveNew, 16), sqlite_best.map(Row::ops_per_s)),
            Bound::AtLeast(4.0),
        ),
        Target::new(
            "put: logstore t1 / raw_overwrite t1",
            ratio(
                log(Bench::Put, 1),
                ops(rows, Bench::Put, Impl::RawOverwrite, 1),
            ),
            Bound::AtLeast(0.8),
        ),
        Target::new(
            "put: logstore t16 / raw_group t16",
            ratio(
                log(Bench::Put, 16),
                ops(rows, Bench::Put, Impl::RawGroup, 16),
            ),
            Bound::AtLeast(0.85),
        ),
    ];
    // Gets of random keys of a store far larger than the value cache: the
    // exclusive handle, which checks for no other writer, is the target;
    // the shared one is in the table beside it.
    targets.push(Target::new(
        "get: logstore_excl t16 / sqlite_full t16",
        ratio(
            ops(rows, Bench::Get, Impl::LogStoreExclusive, 16),
            ops(rows, Bench::Get, Impl::SqliteFull, 16),
        ),
        Bound::AtLeast(1.0),
    ));
    let mut threads: Vec<usize> = rows.iter().map(|r| r.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    for t in threads {
        targets.push(Target::new(
            format!("reserve_dup: logstore t{t} / sqlite_full t{t}"),
            ratio(
                log(Bench::ReserveDup, t),
                ops(rows, Bench::ReserveDup, Impl::SqliteFull, t),
            ),
            Bound::AtLeast(5.0),
        ));
    }
    targets
}
