//! The index of open jobs: a small record per queued or running job, so that
//! finding the work to do costs what the open jobs cost, not what every job
//! ever kept costs.
//!
//! ```text
//! <namespace>/open/<id>     one per queued or running job: `{"schema":1}`
//! <namespace>/index/open    written once the index holds every open job
//! ```
//!
//! # Invariant
//! Every write that moves a job between open (queued, running) and settled
//! (complete, failed, cancelled), or creates or deletes an open one, puts or
//! deletes its entry in the same atomic batch as the record. So once the
//! index is built, every open job has an entry. An entry may outlive its job
//! (the index was built beside a job that settled, or the store was changed
//! outside jobsafe): [`JobState::list_open`] reads each job it lists and
//! removes such an entry by compare-and-set on the entry's version, which a
//! job reopened meanwhile has changed.
//!
//! # Building it
//! A store written by a version without the index (or an index whose build
//! was cut off) has no mark: `list_open` then reads every job, writes the
//! entries the open ones lack, then the mark, and answers from what it read.
//! If a write fails, the listing stands, and the next one builds again. Processes
//! of a version without the index must not write the store once it is built:
//! a job they create or reopen has no entry until the next purge
//! ([`JobState::purge`], or the pipeline's), which puts the entries that the
//! open jobs it passes over lack, or until
//! [`JobState::rebuild_open_index`]. Other stale entries: those of jobs that
//! such processes settle or delete, and one that a purge puts for a job that
//! settles as it passes.

use std::sync::atomic::Ordering;

use super::{Job, JobList, JobState};
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::store::{BatchOp, Expect, SCAN_PAGE, Store};
use crate::trace::report;

/// The value of an entry, and of the mark: an object, so that fields can
/// be added.
const ENTRY: &[u8] = br#"{"schema":1}"#;

impl<S: Store> JobState<S> {
    /// The queued and running jobs, in id order, found through the index of
    /// open jobs: a call reads the open jobs' records, not every job's. For
    /// the pick of due work; [`list`](JobState::list) reads every record.
    ///
    /// The first call on a store whose index was never built (written by a
    /// version without it) builds it: it reads every job once.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::jobs::NewJob;
    /// use jobsafe::{JobState, ManualClock, MemStore};
    ///
    /// let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    /// let done = jobs.create(NewJob::new("render"))?;
    /// let worker = jobs.start(&done.id, None)?;
    /// jobs.complete(&worker, serde_json::json!({}))?;
    /// let waiting = jobs.create(NewJob::new("render"))?;
    ///
    /// let open = jobs.list_open()?;
    /// assert_eq!(open.jobs.len(), 1);
    /// assert_eq!(open.jobs[0].id, waiting.id);
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    ///
    /// # Errors
    /// Store errors; records that cannot be read are listed apart, in
    /// [`JobList::unreadable`], and keep their entries.
    pub fn list_open(&self) -> Result<JobList> {
        if !self.open_index_built.load(Ordering::Acquire) {
            let mark = self.built_mark_key()?;
            if self.store.get(&mark)?.is_none() {
                return self.build_open_index(&mark);
            }
            self.open_index_built.store(true, Ordering::Release);
        }
        let mut list = JobList::default();
        for page in self.store.scan(&self.open_prefix()?, SCAN_PAGE) {
            for key in page? {
                // `<namespace>/open/<id>` only: not the keys of a manager
                // whose namespace is below `open`.
                if key.segments().len() != self.namespace.segments().len() + 2 {
                    continue;
                }
                let Some(id) = key.segments().last() else {
                    continue;
                };
                match self.read(id) {
                    Ok(Some((job, _))) if !job.status.is_finished() => list.jobs.push(job),
                    // The listing does not depend on the cleanup: the next
                    // one tries again.
                    Ok(_) => {
                        if let Err(_e) = self.drop_stale_entry(id) {
                            report!(
                                warn,
                                error = %crate::trace::error(&_e),
                                "stale entry of the index of open jobs not removed"
                            );
                        }
                    }
                    Err(e) => list.unreadable.push((self.record_key(id)?, e)),
                }
            }
        }
        Ok(list)
    }

    /// The operation that keeps job `id`'s entry in step with a write that
    /// makes it open (`is_open`) or not (settled, or deleted), if it was open
    /// before (`was_open`); `None` if the entry stays as it is.
    pub(super) fn open_entry_op(
        &self,
        id: &str,
        was_open: bool,
        is_open: bool,
    ) -> Result<Option<BatchOp>> {
        // Most writes (progress, heartbeats, events) leave the job as open
        // as it was: they build no key.
        Ok(match (was_open, is_open) {
            (false, true) => Some(BatchOp::Put {
                key: self.open_key(id)?,
                value: ENTRY.to_vec(),
                expect: Expect::Any,
            }),
            (true, false) => Some(BatchOp::Delete {
                key: self.open_key(id)?,
                expect: Expect::Any,
            }),
            _ => None,
        })
    }

    pub(super) fn open_key(&self, id: &str) -> Result<Key> {
        let segments = self.namespace.segments().iter().map(String::as_str);
        Key::new(segments.chain(["open", id]))
    }

    fn open_prefix(&self) -> Result<Prefix> {
        let mut segments = self.namespace.segments().to_vec();
        segments.push("open".to_owned());
        Prefix::new(segments)
    }

    fn built_mark_key(&self) -> Result<Key> {
        let segments = self.namespace.segments().iter().map(String::as_str);
        Key::new(segments.chain(["index", "open"]))
    }

    /// Builds the index: reads every job, writes the missing entries of the
    /// open ones, then the mark `mark`; returns the open jobs it read. A
    /// failed write leaves the mark unwritten, and the next call builds
    /// again: the listing does not depend on the build. Entries written for
    /// jobs that settle meanwhile are stale, and go at their next listing; a
    /// job that opens meanwhile writes its own.
    fn build_open_index(&self, mark: &Key) -> Result<JobList> {
        let mut list = JobList::default();
        self.for_each_job(|read| {
            match read {
                Ok(job) if !job.status.is_finished() => list.jobs.push(job),
                Ok(_) => {}
                Err(unreadable) => list.unreadable.push(unreadable),
            }
            Ok(())
        })?;
        // A record that could not be read gets an entry too: it may be open,
        // and the listings report it until it reads as settled. One that
        // failed transiently may read next time: no mark, so that the next
        // listing builds again.
        let unreadable_ids = list
            .unreadable
            .iter()
            .filter_map(|(key, _)| key.segments().last().map(String::as_str));
        let written = list
            .jobs
            .iter()
            .map(|job| job.id.as_str())
            .chain(unreadable_ids)
            .try_for_each(|id| {
                let key = self.open_key(id)?;
                if self.store.get(&key)?.is_none() {
                    self.store.put(&key, ENTRY, Expect::Any)?;
                }
                Ok(())
            })
            .and_then(
                |()| match list.unreadable.iter().find(|(_, e)| e.is_transient()) {
                    Some((key, _)) => Err(Error::InvalidArgument(format!(
                        "job record {key} could not be read for now"
                    ))),
                    None => self.store.put(mark, ENTRY, Expect::Any).map(drop),
                },
            );
        match written {
            Ok(()) => self.open_index_built.store(true, Ordering::Release),
            Err(_e) => report!(
                warn,
                error = %crate::trace::error(&_e),
                "index of open jobs not built; the next listing reads every job again"
            ),
        }
        Ok(list)
    }

    /// Builds the index of open jobs again, whatever its mark says: reads
    /// every job, puts the entries the open ones lack (and those of records
    /// that cannot be read), then the mark; returns the open jobs read.
    ///
    /// For a store that processes of a version without the index wrote after
    /// it was built (a rollback and a new upgrade): the jobs they opened have
    /// no entry, and are not picked until this, or a purge, puts it.
    ///
    /// # Errors
    /// Store errors of the reads; a failed write leaves the mark unwritten
    /// (the next [`list_open`](JobState::list_open) builds again).
    pub fn rebuild_open_index(&self) -> Result<JobList> {
        self.open_index_built.store(false, Ordering::Release);
        self.build_open_index(&self.built_mark_key()?)
    }

    /// Puts the entry of `job`, read open, if it has none: the purges' pass
    /// over every job, the safety net for a job that a process without the
    /// index opened after the index was built. Not for a job that is not
    /// open.
    pub(crate) fn ensure_open_entry(&self, job: &Job) -> Result<()> {
        if job.status.is_finished() {
            return Ok(());
        }
        let key = self.open_key(&job.id)?;
        if self.store.get(&key)?.is_none() {
            // Settled since it was read: the entry is stale at once, and goes
            // at the next listing.
            self.store.put(&key, ENTRY, Expect::Any)?;
        }
        Ok(())
    }

    /// Removes job `id`'s entry if the job is gone or settled, by
    /// compare-and-set on the entry: a job reopened since has put it anew.
    fn drop_stale_entry(&self, id: &str) -> Result<()> {
        let key = self.open_key(id)?;
        let Some(entry) = self.store.get(&key)? else {
            return Ok(());
        };
        // Read after the entry: a job reopened before this read is seen open
        // here; one reopened after it has moved the entry's version.
        if let Some((job, _)) = self.read(id)?
            && !job.status.is_finished()
        {
            return Ok(());
        }
        match self.store.delete(&key, Expect::Version(entry.version)) {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
