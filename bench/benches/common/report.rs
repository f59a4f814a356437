//! What a bench prints: markdown tables for people, and one JSON object per line for
//! scripts that track results across runs.

use std::fmt;

use super::{BenchResult, Sample};

/// The median of one bench's rounds.
#[derive(Clone, Debug)]
pub(crate) struct Measurement {
    /// `subject/operation`, such as `dirstore/insert`.
    pub(crate) bench: String,
    /// Operations per round.
    pub(crate) ops: usize,
    /// Median seconds of a round.
    pub(crate) secs: f64,
    /// Operations per second of each round, in the order they ran.
    pub(crate) per_round: Vec<f64>,
    /// Median absolute deviation of the rounds' times over their median: how far
    /// a typical round strays, to judge the median by.
    pub(crate) deviation: f64,
    /// Flushes per operation over all rounds, if the subject counts them.
    pub(crate) fsyncs_per_op: Option<f64>,
}

impl Measurement {
    /// Reduces the rounds of one bench, in the order they ran (at least one round,
    /// all of the same size).
    pub(crate) fn from_rounds(rounds: &[Sample]) -> Self {
        let secs: Vec<f64> = rounds.iter().map(|s| s.secs).collect();
        let median_secs = median(&secs);
        let deviations: Vec<f64> = secs.iter().map(|s| (s - median_secs).abs()).collect();
        let total_ops: usize = rounds.iter().map(|s| s.ops).sum();
        let total_syncs: Option<u64> = rounds.iter().map(|s| s.syncs).sum();
        Measurement {
            bench: rounds[0].bench.clone(),
            ops: rounds[0].ops,
            secs: median_secs,
            per_round: rounds.iter().map(|s| s.ops as f64 / s.secs).collect(),
            deviation: median(&deviations) / median_secs,
            fsyncs_per_op: total_syncs.map(|s| s as f64 / total_ops as f64),
        }
    }

    pub(crate) fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn subject(&self) -> &str {
        self.bench.split_once('/').map_or(&self.bench, |(s, _)| s)
    }

    fn operation(&self) -> &str {
        self.bench.split_once('/').map_or("", |(_, op)| op)
    }

    /// `{"bench":..,"ops":..,"secs":..,"ops_per_sec":..,"fsyncs_per_op":..}`, with
    /// `fsyncs_per_op` null where the subject's flushes are not counted.
    pub(crate) fn json(&self) -> String {
        serde_json::json!({
            "bench": self.bench,
            "ops": self.ops,
            "secs": self.secs,
            "ops_per_sec": self.ops_per_sec(),
            "fsyncs_per_op": self.fsyncs_per_op,
        })
        .to_string()
    }
}

/// Every measurement, one per row.
pub(crate) fn measurements(all: &[Measurement]) -> Table {
    let mut table = Table::new([
        "bench",
        "ops",
        "secs",
        "ops/s",
        "µs/op",
        "fsyncs/op",
        "±MAD",
    ]);
    for m in all {
        table.row([
            m.bench.clone(),
            format!("{}x{}", m.per_round.len(), m.ops),
            format!("{:.3}", m.secs),
            format!("{:.0}", m.ops_per_sec()),
            format!("{:.1}", 1e6 / m.ops_per_sec()),
            m.fsyncs_per_op
                .map_or_else(|| "-".to_owned(), |f| format!("{f:.2}")),
            format!("{:.0}%", m.deviation * 100.0),
        ]);
    }
    table
}

/// Operations per second with one row per operation and one column per subject,
/// the fastest of each row in bold.
pub(crate) fn comparison(all: &[Measurement]) -> Table {
    let mut subjects: Vec<&str> = Vec::new();
    let mut operations: Vec<&str> = Vec::new();
    for m in all {
        if !subjects.contains(&m.subject()) {
            subjects.push(m.subject());
        }
        if !operations.contains(&m.operation()) {
            operations.push(m.operation());
        }
    }
    let mut table = Table::new(std::iter::once("ops/s").chain(subjects.iter().copied()));
    for op in operations {
        let cells: Vec<Option<f64>> = subjects
            .iter()
            .map(|s| {
                all.iter()
                    .find(|m| m.subject() == *s && m.operation() == op)
                    .map(Measurement::ops_per_sec)
            })
            .collect();
        let best = cells.iter().flatten().copied().fold(f64::NAN, f64::max);
        let row = cells.iter().map(|cell| match cell {
            Some(v) if *v == best => format!("**{v:.0}**"),
            Some(v) => format!("{v:.0}"),
            None => "-".to_owned(),
        });
        table.row(std::iter::once(op.to_owned()).chain(row));
    }
    table
}

/// A throughput ratio of two benches measured in the same rounds: `of` / `to`,
/// with the target it must meet, if any.
#[derive(Clone, Debug)]
pub(crate) struct Ratio {
    of: String,
    to: String,
    target: Option<f64>,
}

/// A [`Ratio`]'s value, two ways.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RatioValue {
    /// The median of the rounds' ratios. Each round's two benches ran one right
    /// after the other, so this cancels what drifts from round to round: the
    /// figure to judge by.
    pub(crate) paired: f64,
    /// The ratio of the two medians.
    pub(crate) of_medians: f64,
}

impl Ratio {
    pub(crate) fn new(of: impl Into<String>, to: impl Into<String>) -> Self {
        Ratio {
            of: of.into(),
            to: to.into(),
            target: None,
        }
    }

    pub(crate) fn at_least(mut self, target: f64) -> Self {
        self.target = Some(target);
        self
    }

    /// The ratio of the two benches' throughputs among `all`.
    ///
    /// # Errors
    /// If either bench was not measured, or they ran in different numbers of
    /// rounds: a mistake in the bench, not a result.
    pub(crate) fn value(&self, all: &[Measurement]) -> BenchResult<RatioValue> {
        let find = |bench: &str| {
            all.iter()
                .find(|m| m.bench == bench)
                .ok_or_else(|| format!("ratio of unmeasured bench {bench}"))
        };
        let (of, to) = (find(&self.of)?, find(&self.to)?);
        if of.per_round.len() != to.per_round.len() {
            return Err(format!("{} and {} ran different rounds", self.of, self.to).into());
        }
        let per_round: Vec<f64> = of
            .per_round
            .iter()
            .zip(&to.per_round)
            .map(|(a, b)| a / b)
            .collect();
        Ok(RatioValue {
            paired: median(&per_round),
            of_medians: of.ops_per_sec() / to.ops_per_sec(),
        })
    }

    pub(crate) fn json(&self, value: RatioValue) -> String {
        serde_json::json!({
            "ratio": format!("{} / {}", self.of, self.to),
            "value": value.paired,
            "of_medians": value.of_medians,
            "target": self.target,
        })
        .to_string()
    }
}

/// The ratios as a table, each with its target and whether it was met.
pub(crate) fn ratios(ratios: &[Ratio], all: &[Measurement]) -> BenchResult<Table> {
    let mut table = Table::new(["ratio (throughput)", "paired", "of medians", "target"]);
    for ratio in ratios {
        let value = ratio.value(all)?;
        let target = match ratio.target {
            Some(t) if value.paired >= t => format!(">= {t:.2}x met"),
            Some(t) => format!(">= {t:.2}x MISSED"),
            None => String::new(),
        };
        table.row([
            format!("{} / {}", ratio.of, ratio.to),
            format!("{:.2}x", value.paired),
            format!("{:.2}x", value.of_medians),
            target,
        ]);
    }
    Ok(table)
}

/// The median of a non-empty list.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// A markdown table whose columns are padded to line up in a terminal.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| {
            for (cell, width) in cells.iter().zip(&widths) {
                write!(f, "| {cell:<width$} ")?;
            }
            writeln!(f, "|")
        };
        line(f, &self.header)?;
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(f, &rule)?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}
