//! A runner pass: what a scheduled invocation does — finish pending deletions,
//! purge when it is time, and run every due job.

use serde::Serialize;

use super::Pipeline;
use super::cleanup::PurgeReport;
use super::outcome::{RunOutcome, RunReport};
use crate::error::{Error, Result};
use crate::jobs::JobStatus;
use crate::key::Key;
use crate::record::{self as codec, Extra, Record, record_deserialize};
use crate::store::{Expect, Store};
use crate::vfs::Vfs;

/// What one [`Pipeline::run_pass`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct PassReport {
    /// One report per job run, in job id order (creation order for generated
    /// ids). Jobs of a busy subject report [`RunOutcome::Busy`].
    pub runs: Vec<RunReport>,
    /// Jobs whose run or pending deletion ended with an error (a store or disk
    /// failure), by job id. The pass went on with the other jobs; a job left
    /// running is taken over by a later pass.
    pub errors: Vec<(String, Error)>,
    /// Job records that could not be read, so could not be run (move one aside
    /// with [`Store::quarantine`] after a look).
    pub unreadable: Vec<(Key, Error)>,
    /// Deletions completed that had waited for a busy subject.
    pub deletions: usize,
    /// What the scheduled purge removed, if it ran in this pass.
    pub purged: Option<PurgeReport>,
}

impl PassReport {
    /// How many runs ended with `outcome`'s variant.
    pub fn count(&self, matches: impl Fn(&RunOutcome) -> bool) -> usize {
        self.runs.iter().filter(|r| matches(&r.outcome)).count()
    }
}

/// The jobs due now, and when the next queued one comes due.
#[derive(Debug, Default)]
pub(super) struct Due {
    pub(super) jobs: Vec<crate::jobs::Job>,
    /// The earliest retry time of a queued job not due yet.
    pub(super) next_retry_ms: Option<u64>,
}

/// When the scheduled purge last ran, shared by every process. Read by
/// `record_deserialize!`, as derive with `#[serde(flatten)] extra`.
#[derive(Clone, Debug, Default, Serialize)]
struct PurgeSchedule {
    last_ms: u64,
    #[serde(flatten)]
    extra: Extra,
}

record_deserialize! {
    PurgeSchedule, "struct PurgeSchedule",
    required [last_ms = "last_ms"],
    defaulted [],
    unknown keep(extra),
    build PurgeSchedule {
        last_ms,
        extra,
    },
}

impl Record for PurgeSchedule {
    const SCHEMA: u32 = 1;
}

impl<S: Store + 'static, V: Vfs> Pipeline<S, V> {
    /// One pass of the runner: completes deletions that waited for a busy
    /// subject, purges if the [`purge_every`](super::PipelineBuilder::purge_every)
    /// period has passed since the last purge by any process, then runs every
    /// due job: queued ones past their retry time, and running ones whose
    /// runner's lease has ended (taken over). Passes in overlapping processes
    /// are safe: each job runs under its subject's lock, and the purge is
    /// claimed by one compare-and-set.
    ///
    /// An error in one job's run (or pending deletion) does not stop the pass:
    /// it is in [`PassReport::errors`] and the other jobs run. Unreadable job
    /// records are in [`PassReport::unreadable`].
    ///
    /// It finds the jobs through the index of open jobs
    /// ([`JobState::list_open`](crate::JobState::list_open)): a pass reads
    /// the queued and running jobs' records, however many settled jobs the
    /// store keeps.
    ///
    /// # Errors
    /// Store and I/O errors that concern no one job: listing the jobs, the
    /// purge schedule, the purge.
    pub fn run_pass(&self) -> Result<PassReport> {
        self.run_pass_unless(&super::body::Abandon::never())
    }

    /// [`run_pass`](Pipeline::run_pass), which runs no further job once
    /// `abandon` is set, and whose run under way stops as
    /// [`RunOutcome::Abandoned`].
    pub(crate) fn run_pass_unless(&self, abandon: &super::body::Abandon) -> Result<PassReport> {
        let mut report = PassReport::default();
        self.maintain(&mut report)?;
        let due = self.due_jobs(&mut report)?;
        for job in due.jobs {
            if abandon.is_set() {
                break;
            }
            match self.run_job_unless(&job.id, abandon) {
                Ok(run) => report.runs.push(run),
                Err(e) => report.errors.push((job.id, e)),
            }
        }
        Ok(report)
    }

    /// What a pass does besides running jobs: completes deletions that waited
    /// for a busy subject, and purges if it is time.
    pub(super) fn maintain(&self, report: &mut PassReport) -> Result<()> {
        report.deletions = self.finish_deletions(&mut report.errors)?;
        if self.claim_purge()? {
            report.purged = Some(self.purge()?);
        }
        Ok(())
    }

    /// The jobs due now, in id order: queued ones past their retry time, and
    /// running ones (to take over if their runner's lease ended). Unreadable
    /// records go to `report`.
    pub(super) fn due_jobs(&self, report: &mut PassReport) -> Result<Due> {
        let now = self.inner.clock.now_ms();
        let list = self.inner.jobs.list_open()?;
        report.unreadable = list.unreadable;
        let mut due = Due::default();
        for job in list.jobs {
            match job.status {
                JobStatus::Queued => match job.retry_at_ms {
                    Some(at) if now < at => {
                        due.next_retry_ms = Some(due.next_retry_ms.map_or(at, |t| t.min(at)));
                    }
                    _ => due.jobs.push(job),
                },
                JobStatus::Running => due.jobs.push(job),
                _ => {}
            }
        }
        Ok(due)
    }

    /// Whether this pass is the one to purge now: a compare-and-set on the
    /// schedule record, so that of overlapping passes one wins.
    fn claim_purge(&self) -> Result<bool> {
        let Some(every) = self.inner.purge_every else {
            return Ok(false);
        };
        let key = self.key(&["purge"])?;
        let now = self.inner.clock.now_ms();
        let (last, extra, expect) = match self.inner.store.get(&key)? {
            None => (None, Extra::new(), Expect::Absent),
            Some(entry) => {
                let schedule: PurgeSchedule = codec::decode(&key, &entry.value)?;
                let version = Expect::Version(entry.version);
                (Some(schedule.last_ms), schedule.extra, version)
            }
        };
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if last.is_some_and(|last| now < last.saturating_add(every_ms)) {
            return Ok(false);
        }
        // Fields a newer version of the crate added are kept.
        let schedule = PurgeSchedule {
            last_ms: now,
            extra,
        };
        match self
            .inner
            .store
            .put(&key, &codec::encode(&key, &schedule)?, expect)
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }
}
