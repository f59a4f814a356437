//! What a run measures, from the environment and from arguments after `--`
//! (an argument wins over its variable). See the bench's docs for the list.

use std::env;
use std::time::Duration;

use crate::common::{BenchResult, Config};
use crate::compare::cell::{Bench, Impl};
use crate::compare::run::Length;

/// A part of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    /// The main table: every bench by every implementation at every thread count.
    Table,
    /// LogStore reserves at a small and a large number of records.
    Flat,
    /// Reopening a large LogStore, against reading its files.
    Reopen,
    /// Write latency while a compaction runs, against without.
    Compaction,
}

impl Section {
    const ALL: [Section; 4] = [
        Section::Table,
        Section::Flat,
        Section::Reopen,
        Section::Compaction,
    ];

    fn name(self) -> &'static str {
        match self {
            Section::Table => "table",
            Section::Flat => "flat",
            Section::Reopen => "reopen",
            Section::Compaction => "compaction",
        }
    }
}

/// The options of a run.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) smoke: bool,
    pub(crate) sections: Vec<Section>,
    pub(crate) benches: Vec<Bench>,
    pub(crate) impls: Vec<Impl>,
    pub(crate) threads: Vec<usize>,
    /// How long each thread of each timed cell runs.
    pub(crate) length: Length,
    /// Records in each main-table cell before timing.
    pub(crate) preload: usize,
    /// Records in each `get` cell before timing: more than a LogStore
    /// handle's value cache holds, so that gets read the disk's files.
    pub(crate) get_records: usize,
    /// Times each main-table cell runs, the implementations of a bench taking
    /// turns in alternating order, so that a disk that slows down or speeds up
    /// during the run weighs on all of them alike.
    pub(crate) rounds: usize,
    /// The small size of the flatness section.
    pub(crate) small: usize,
    /// The large size of the flatness, reopen and compaction sections.
    pub(crate) records: usize,
}

impl Options {
    /// The defaults (a smoke run's if `JOBSAFE_BENCH_SMOKE` is set), then the
    /// `JOBSAFE_COMPARE_*` variables, then the arguments.
    pub(crate) fn from_env_and_args() -> BenchResult<Self> {
        let smoke = Config::from_env()?.smoke();
        let mut options = Options {
            smoke,
            sections: Section::ALL.to_vec(),
            benches: Bench::ALL.to_vec(),
            impls: Impl::ALL
                .into_iter()
                .filter(|imp| match imp.unavailable() {
                    None => true,
                    Some(why) => {
                        println!("{imp} left out: {why}");
                        false
                    }
                })
                .collect(),
            threads: vec![1, 4, 16],
            length: Length {
                time: Duration::from_secs_f64(if smoke { 0.005 } else { 1.0 }),
                min_ops: if smoke { 2 } else { 1 },
            },
            preload: if smoke { 20 } else { 1_000 },
            get_records: if smoke { 20 } else { 1_000_000 },
            rounds: 1,
            small: if smoke { 100 } else { 1_000 },
            records: if smoke { 2_000 } else { 1_000_000 },
        };
        for name in NAMES {
            if let Ok(value) = env::var(format!("JOBSAFE_COMPARE_{}", name.to_uppercase())) {
                options.set(name, &value)?;
            }
        }
        let mut args = env::args().skip(1);
        while let Some(arg) = args.next() {
            // Cargo passes `--bench` to every bench binary.
            if arg == "--bench" {
                continue;
            }
            let Some(option) = arg.strip_prefix("--") else {
                return Err(
                    format!("unexpected argument {arg:?} (options are --name value)").into(),
                );
            };
            let (name, value) = match option.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| format!("--{option} needs a value"))?;
                    (option.to_owned(), value)
                }
            };
            options.set(&name, &value)?;
        }
        Ok(options)
    }

    fn set(&mut self, name: &str, value: &str) -> BenchResult {
        match name {
            "sections" => self.sections = list(name, value, &Section::ALL, |s| s.name())?,
            "benches" => self.benches = list(name, value, &Bench::ALL, |b| b.name())?,
            "impls" => {
                self.impls = list(name, value, &Impl::ALL, |i| i.name())?;
                if let Some(why) = self.impls.iter().find_map(|i| i.unavailable()) {
                    return Err(why.into());
                }
            }
            "threads" => {
                self.threads = value
                    .split(',')
                    .map(|t| positive(name, t.trim()))
                    .collect::<BenchResult<_>>()?;
            }
            "secs" => match value.parse::<f64>() {
                Ok(secs) if secs > 0.0 && secs.is_finite() => {
                    self.length.time = Duration::from_secs_f64(secs);
                }
                _ => return Err(format!("secs must be a positive number, not {value:?}").into()),
            },
            "preload" => self.preload = positive(name, value)?,
            "get_records" => self.get_records = positive(name, value)?,
            "rounds" => self.rounds = positive(name, value)?,
            "small" => self.small = positive(name, value)?,
            "records" => self.records = positive(name, value)?,
            _ => {
                return Err(
                    format!("unknown option {name:?}; options are {}", NAMES.join(", ")).into(),
                );
            }
        }
        Ok(())
    }

    pub(crate) fn runs(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }
}

/// Option names, as arguments (`--threads 1,4`) and in variables
/// (`JOBSAFE_COMPARE_THREADS=1,4`).
const NAMES: [&str; 10] = [
    "sections",
    "benches",
    "impls",
    "threads",
    "secs",
    "preload",
    "get_records",
    "rounds",
    "small",
    "records",
];

fn positive(name: &str, value: &str) -> BenchResult<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name} must be a positive integer, not {value:?}").into()),
    }
}

/// The items of a comma-separated list, each one of `all` by its name.
fn list<T: Copy>(
    option: &str,
    value: &str,
    all: &[T],
    name: impl Fn(&T) -> &'static str,
) -> BenchResult<Vec<T>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            all.iter()
                .copied()
                .find(|t| name(t) == item)
                .ok_or_else(|| {
                    let known: Vec<_> = all.iter().map(&name).collect();
                    format!("{option}: unknown {item:?}; known: {}", known.join(",")).into()
                })
        })
        .collect()
}
