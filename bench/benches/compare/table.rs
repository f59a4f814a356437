//! The main table: every selected bench by every selected implementation at
//! every selected thread count, each cell set up fresh and timed on its own,
//! the implementations of a bench one right after the other (so that they meet
//! the same disk), then printed as one markdown table per thread count.

use crate::common::report::Table;
use crate::common::{BenchResult, RunDir};
use crate::compare::cell::{self, Bench, Impl, Setup};
use crate::compare::options::Options;
use crate::compare::run::{self, Row};

/// Measures every cell of the table: `options.rounds` times, the
/// implementations of a bench in turn, forwards then backwards, each round's
/// cell set up fresh; a row sums its rounds (operations, time, latencies and
/// flushes).
pub(crate) fn measure(options: &Options, run_dir: &mut RunDir) -> BenchResult<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    for &threads in &options.threads {
        for &bench in &options.benches {
            let first = rows.len();
            for round in 0..options.rounds {
                let mut order = options.impls.clone();
                if round % 2 == 1 {
                    order.reverse();
                }
                for imp in order {
                    let setup = Setup {
                        bench,
                        threads,
                        preload: if bench == Bench::Get && imp.reads_many() {
                            options.get_records
                        } else {
                            options.preload
                        },
                    };
                    let dir = run_dir.fresh(&format!("{imp}-{bench}-t{threads}-r{round}"))?;
                    let Some(cell) = cell::prepare(imp, setup, &dir).map_err(|e| {
                        format!("setting up {imp} {bench} at {threads} threads: {e}")
                    })?
                    else {
                        continue;
                    };
                    let row = run::run(bench, imp, cell, options.length)?;
                    eprintln!(
                        "{bench:>11} {imp:>13} t{threads:<2} {:>10.0} ops/s ({} ops)",
                        row.ops_per_s(),
                        row.ops
                    );
                    row.check_durable()?;
                    match rows[first..].iter_mut().find(|r| r.imp == imp) {
                        Some(sum) => sum.add(&row),
                        None => rows.push(row),
                    }
                }
            }
            // Columns in the order asked for, whichever round ran first.
            rows[first..].sort_by_key(|r| options.impls.iter().position(|i| *i == r.imp));
        }
    }
    Ok(rows)
}

/// The markdown table of `threads`: a row per bench, a column per
/// implementation measured, the highest throughput of each row in bold.
pub(crate) fn markdown(rows: &[Row], threads: usize) -> Table {
    let of_threads: Vec<&Row> = rows.iter().filter(|r| r.threads == threads).collect();
    let impls: Vec<Impl> = Impl::ALL
        .into_iter()
        .filter(|imp| of_threads.iter().any(|r| r.imp == *imp))
        .collect();
    let mut benches = Vec::new();
    for row in &of_threads {
        if !benches.contains(&row.bench) {
            benches.push(row.bench);
        }
    }
    let mut table = Table::new(std::iter::once("bench").chain(impls.iter().map(|i| i.name())));
    for bench in benches {
        let cells: Vec<Option<&Row>> = impls
            .iter()
            .map(|imp| {
                of_threads
                    .iter()
                    .find(|r| r.bench == bench && r.imp == *imp)
                    .copied()
            })
            .collect();
        let best = cells
            .iter()
            .flatten()
            .map(|r| r.ops_per_s())
            .fold(f64::NAN, f64::max);
        let texts = cells.iter().map(|cell| match cell {
            None => String::new(),
            Some(row) => {
                let ops = row.ops_per_s();
                let ops = if ops == best {
                    format!("**{ops:.0}**")
                } else {
                    format!("{ops:.0}")
                };
                let fsyncs = row
                    .fsyncs_per_op()
                    .map_or_else(|| "n/a".to_owned(), |f| format!("{f:.2}"));
                format!(
                    "{ops} ({:.0}/{:.0} µs, {fsyncs})",
                    row.p50_us(),
                    row.p99_us()
                )
            }
        });
        table.row(std::iter::once(bench.name().to_owned()).chain(texts));
    }
    table
}
