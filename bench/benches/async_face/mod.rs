//! The parts of `cargo bench -p jobsafe-bench --bench async_face`: what to run
//! ([`options`]), the async face's overhead on store calls and reserves
//! ([`overhead`]), the latency of event streams ([`streams`]), the threads
//! and memory of waiting streams ([`idle`]), `PgStore`'s async face against
//! its blocking API ([`pg`], with the feature `postgres`), and the allocator
//! that counts that memory ([`alloc`]).

pub(crate) mod alloc;
pub(crate) mod idle;
pub(crate) mod options;
pub(crate) mod overhead;
#[cfg(feature = "postgres")]
pub(crate) mod pg;
pub(crate) mod streams;

use std::path::Path;
use std::sync::Arc;

use jobsafe::jobs::{Claim, JobState, NewJob};
use jobsafe::{Durability, LogStore, MemStore, Store, SystemClock};

use self::options::{Options, StreamStore};
use crate::common::BenchResult;

/// The store of the stream sections, behind one type whatever its kind.
pub(crate) type AnyStore = Arc<dyn Store>;

/// Jobs created and started, ready for events: the job state, and the claim
/// that appends to each job.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) jobs: JobState<AnyStore>,
    pub(crate) claims: Vec<Claim>,
}

impl Started {
    /// A fresh job state of the configured store in `dir`, keeping at least
    /// `max_events` events per job, with `options.jobs` jobs started (each
    /// has one event, `started`, sequence number 1).
    pub(crate) fn new(options: &Options, dir: &Path, max_events: u64) -> BenchResult<Self> {
        let store: AnyStore = match options.store {
            StreamStore::Log => Arc::new(
                LogStore::builder(dir)
                    .durability(Durability::AtomicOnly)
                    .open()?,
            ),
            StreamStore::LogFull => Arc::new(LogStore::builder(dir).open()?),
            StreamStore::Mem => Arc::new(MemStore::new()),
        };
        let mut builder = JobState::builder(store, Arc::new(SystemClock)).max_events(max_events);
        if let Some(buffer) = options.subscriber_buffer {
            builder = builder.subscriber_buffer(buffer);
        }
        let jobs = builder.build()?;
        let claims = (0..options.jobs)
            .map(|_| {
                let job = jobs.create(NewJob::new("stream"))?;
                jobs.start(&job.id, None)
            })
            .collect::<jobsafe::Result<Vec<_>>>()?;
        Ok(Started { jobs, claims })
    }
}
