//! What a run measures, from `JOBSAFE_BENCH_SMOKE` and `JOBSAFE_ASYNC_*`
//! variables (see the bench's docs for the list).

use std::env;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::overhead::Op;
use crate::common::{BenchResult, Config};

/// The store the stream sections run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamStore {
    /// `LogStore` at `Durability::AtomicOnly`: the store's code path without
    /// its flush, so that latencies are the delivery's, not the disk's.
    Log,
    /// `LogStore` at `Durability::Full`: each append flushes.
    LogFull,
    /// `MemStore`.
    Mem,
}

impl StreamStore {
    pub(crate) fn name(self) -> &'static str {
        match self {
            StreamStore::Log => "log",
            StreamStore::LogFull => "log_full",
            StreamStore::Mem => "mem",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            StreamStore::Log => "LogStore at Durability::AtomicOnly (no flush per append)",
            StreamStore::LogFull => "LogStore at Durability::Full (a flush per append)",
            StreamStore::Mem => "MemStore",
        }
    }
}

impl FromStr for StreamStore {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [StreamStore::Log, StreamStore::LogFull, StreamStore::Mem]
            .into_iter()
            .find(|store| store.name() == text)
            .ok_or_else(|| format!("unknown store {text:?}: log, log_full or mem"))
    }
}

impl fmt::Display for StreamStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The options of a run.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) smoke: bool,
    /// How long each face runs each operation per round, in the overhead
    /// section.
    pub(crate) cell: Duration,
    /// Rounds of the overhead section, the faces taking turns.
    pub(crate) rounds: usize,
    /// The operations of the overhead section.
    pub(crate) ops: Vec<Op>,
    /// How long the appenders run in the stream latency section.
    pub(crate) stream: Duration,
    /// Events appended per second in all, spread evenly over the jobs.
    pub(crate) rate: u32,
    /// Jobs the events go to.
    pub(crate) jobs: usize,
    /// Subscribers per job in the many-subscribers run.
    pub(crate) fanout: usize,
    /// Subscribers open at once when threads and memory are counted.
    pub(crate) idle_counts: Vec<usize>,
    pub(crate) store: StreamStore,
    /// The job state's live buffer per subscriber, if not its default.
    pub(crate) subscriber_buffer: Option<usize>,
}

impl Options {
    /// The defaults (a smoke run's under `JOBSAFE_BENCH_SMOKE`), then the
    /// variables.
    pub(crate) fn from_env() -> BenchResult<Self> {
        let smoke = Config::from_env()?.smoke();
        let secs = |name: &str, full: f64, smoke_secs: f64| -> BenchResult<Duration> {
            let value = parsed::<f64>(name)?.unwrap_or(if smoke { smoke_secs } else { full });
            if value > 0.0 && value.is_finite() {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(format!("{name} must be a positive number of seconds").into())
            }
        };
        let options = Options {
            smoke,
            cell: secs("JOBSAFE_ASYNC_CELL_SECS", 1.0, 0.02)?,
            rounds: positive("JOBSAFE_ASYNC_ROUNDS")?.unwrap_or(if smoke { 1 } else { 3 }),
            ops: ops("JOBSAFE_ASYNC_OPS")?.unwrap_or_else(|| Op::ALL.to_vec()),
            stream: secs("JOBSAFE_ASYNC_STREAM_SECS", 30.0, 1.0)?,
            rate: positive("JOBSAFE_ASYNC_RATE")?.map_or(Ok(1_000), u32::try_from)?,
            jobs: positive("JOBSAFE_ASYNC_JOBS")?.unwrap_or(100),
            fanout: positive("JOBSAFE_ASYNC_FANOUT")?.unwrap_or(10),
            idle_counts: vec![100, 1_000, 10_000],
            store: parsed("JOBSAFE_ASYNC_STORE")?.unwrap_or(StreamStore::Log),
            subscriber_buffer: positive("JOBSAFE_ASYNC_SUBSCRIBER_BUFFER")?,
        };
        if !options.jobs.is_multiple_of(super::streams::APPENDERS) {
            return Err(format!(
                "JOBSAFE_ASYNC_JOBS must be a multiple of {} (each appender owns its jobs)",
                super::streams::APPENDERS
            )
            .into());
        }
        Ok(options)
    }
}

fn parsed<T: FromStr>(name: &str) -> BenchResult<Option<T>>
where
    T::Err: fmt::Display,
{
    match env::var(name) {
        Err(_) => Ok(None),
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("{name}={text:?}: {e}").into()),
    }
}

/// A comma-separated list of operations, each by its name.
fn ops(name: &str) -> BenchResult<Option<Vec<Op>>> {
    let Ok(list) = env::var(name) else {
        return Ok(None);
    };
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            Op::ALL
                .into_iter()
                .find(|op| op.name() == item)
                .ok_or_else(|| {
                    let known: Vec<_> = Op::ALL.iter().map(|op| op.name()).collect();
                    format!("{name}: unknown {item:?}; known: {}", known.join(",")).into()
                })
        })
        .collect::<BenchResult<Vec<_>>>()
        .map(Some)
}

fn positive(name: &str) -> BenchResult<Option<usize>> {
    match parsed::<usize>(name)? {
        Some(0) => Err(format!("{name} must be a positive integer").into()),
        n => Ok(n),
    }
}
