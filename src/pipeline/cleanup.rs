//! Deleting jobs with their artifacts, and purging what is old.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::{Pipeline, paths};
use crate::error::steps;
use crate::error::{Error, Result};
use crate::jobs::{JobStatus, PurgeCounts};
use crate::key::{Key, Prefix};
use crate::store::{Batch, Expect, SCAN_PAGE, Store};
use crate::vfs::{FileKind, Vfs};

/// The outcome of [`Pipeline::delete`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deletion {
    /// The job's directory, checkpoints and record are gone.
    Removed,
    /// The job was cancelled and marked for deletion, but a runner holds its
    /// subject: the runner removes it at its next stage boundary, or the next
    /// [`Pipeline::run_pass`] does.
    Pending,
    /// There was no such job (leftovers of an interrupted deletion, if any,
    /// were removed).
    NotFound,
}

/// What [`Pipeline::purge`] removes, by age on the pipeline's clock.
///
/// Defaults: finished jobs (complete, failed, cancelled) 7 days after they
/// finished; queued jobs never started after 30 days; locks 1 hour after their
/// lease ended; ledger reservations 1 day after they expired; temp files 1 hour
/// old (by file time, compared with the clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgePolicy {
    /// Age after finishing at which a job, its artifacts and checkpoints go.
    pub finished_for: Duration,
    /// Age after creation at which a never-started queued job goes.
    pub queued_for: Duration,
    /// Time after a lease ended at which its lock record goes.
    pub locks_expired_for: Duration,
    /// Time after expiry at which a ledger reservation goes.
    pub reservations_expired_for: Duration,
    /// Age at which a temp file left by a crashed writer goes.
    pub temp_files_older_than: Duration,
}

impl PurgePolicy {
    /// Age after finishing at which a job, its artifacts and checkpoints go.
    pub fn finished_for(mut self, age: Duration) -> Self {
        self.finished_for = age;
        self
    }

    /// Age after creation at which a never-started queued job goes.
    pub fn queued_for(mut self, age: Duration) -> Self {
        self.queued_for = age;
        self
    }

    /// Time after a lease ended at which its lock record goes.
    pub fn locks_expired_for(mut self, age: Duration) -> Self {
        self.locks_expired_for = age;
        self
    }

    /// Time after expiry at which a ledger reservation goes.
    pub fn reservations_expired_for(mut self, age: Duration) -> Self {
        self.reservations_expired_for = age;
        self
    }

    /// Age at which a temp file left by a crashed writer goes.
    pub fn temp_files_older_than(mut self, age: Duration) -> Self {
        self.temp_files_older_than = age;
        self
    }
}

impl Default for PurgePolicy {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        PurgePolicy {
            finished_for: 7 * DAY,
            queued_for: 30 * DAY,
            locks_expired_for: Duration::from_secs(3600),
            reservations_expired_for: DAY,
            temp_files_older_than: Duration::from_secs(3600),
        }
    }
}

/// What [`Pipeline::purge`] removed, and the job records it could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Job records removed, with their events, checkpoints and directories.
    pub jobs: PurgeCounts,
    /// Job directories removed (of purged jobs, and orphans of interrupted
    /// deletions).
    pub artifact_dirs: usize,
    /// Checkpoint records removed.
    pub checkpoints: usize,
    /// Subject directories (shared artifacts) removed once no job of their
    /// subject remained.
    pub subject_dirs: usize,
    /// Expired ledger reservations removed.
    pub reservations: usize,
    /// Lock records whose lease had ended, removed.
    pub locks: usize,
    /// Temp files of crashed writers removed, in the artifact directories and
    /// in the store (see [`Store::sweep_temp_files`]).
    pub temp_files: usize,
    /// Copies of artifacts removed from the
    /// [shared storage](super::PipelineBuilder::shared_artifacts), with the
    /// directories of their jobs and subjects (and orphans: copies of jobs
    /// that no longer exist, parts of interrupted uploads).
    pub shared_artifacts: usize,
    /// Jobs due for purge but kept because a live reservation of the
    /// pipeline's ledger names them (see
    /// [`PipelineBuilder::ledger`](super::PipelineBuilder::ledger)). Not
    /// counted in [`total`](PurgeReport::total).
    pub kept_for_reservations: usize,
    /// Job records that could not be read: their jobs, directories and
    /// checkpoints were kept (move a record aside with
    /// [`Store::quarantine`] after a look). Not counted in
    /// [`total`](PurgeReport::total).
    pub unreadable_jobs: Vec<Key>,
}

impl PurgeReport {
    /// Everything removed, summed.
    pub fn total(&self) -> usize {
        self.jobs.total()
            + self.artifact_dirs
            + self.checkpoints
            + self.subject_dirs
            + self.reservations
            + self.locks
            + self.temp_files
            + self.shared_artifacts
    }
}

impl<S: Store + 'static, V: Vfs> Pipeline<S, V> {
    /// Deletes job `id` with its directory, checkpoints and record; artifacts
    /// in the subject's shared directory stay (other jobs may use them).
    ///
    /// The job is first marked for deletion and cancelled, so that a runner
    /// stops at its next stage boundary. If no runner holds the subject, the
    /// job is removed at once; otherwise the runner (or the next pass) removes
    /// it.
    ///
    /// # Errors
    /// Store and I/O errors.
    pub fn delete(&self, id: &str) -> Result<Deletion> {
        let inner = &self.inner;
        let Some(job) = inner.jobs.get(id)? else {
            self.remove_job(id)?;
            return Ok(Deletion::NotFound);
        };
        inner
            .store
            .put(&self.deleting_key(id)?, b"{\"schema\":1}", Expect::Any)?;
        if !matches!(job.status, JobStatus::Complete | JobStatus::Cancelled) {
            match inner.jobs.cancel(id) {
                Ok(_) => {}
                Err(e) if e.is_invalid_transition() => {} // completed meanwhile
                Err(e) => return Err(e),
            }
        }
        match self.acquire(Self::subject_of(&job), id)? {
            Ok(lease) => {
                let removed = self.remove_job(id);
                lease.release();
                removed?;
                Ok(Deletion::Removed)
            }
            Err(_) => Ok(Deletion::Pending),
        }
    }

    /// Removes everything of job `id`: directory first, then checkpoints and
    /// pipeline records, then the job record, and the deletion mark last, so
    /// that an interrupted removal is finished by the next one. The job must not
    /// be running; the caller holds its subject.
    pub(crate) fn remove_job(&self, id: &str) -> Result<usize> {
        let inner = &self.inner;
        let dirs = remove_dir_all(inner.writer.vfs(), &inner.root, &self.job_dir(id))?;
        let copies = self.remove_shared(&job_rel(id))?;
        let mut batch = Batch::new();
        let checkpoints = inner.store.list_all(&self.prefix(&["checkpoint", id])?)?;
        for key in &checkpoints {
            batch = batch.delete(key, Expect::Any);
        }
        batch = batch.delete(&self.run_state_key(id)?, Expect::Any);
        inner.store.apply(&batch)?;
        inner.jobs.delete(id)?;
        inner.store.delete(&self.deleting_key(id)?, Expect::Any)?;
        Ok(dirs + copies + checkpoints.len())
    }

    /// Removes the shared copies under `dir` (relative to the artifact root),
    /// if there is a shared storage; how many.
    fn remove_shared(&self, dir: &Path) -> Result<usize> {
        match &self.inner.shared {
            Some(shared) => shared.remove_dir(dir),
            None => Ok(0),
        }
    }

    /// Completes the deletions marked by [`delete`](Pipeline::delete) whose
    /// subject was busy, returning how many; the error of one deletion goes to
    /// `errors` (by job id) and the others go on.
    pub(crate) fn finish_deletions(&self, errors: &mut Vec<(String, Error)>) -> Result<usize> {
        let mut done = 0;
        for page in self
            .inner
            .store
            .scan(&self.prefix(&["deleting"])?, SCAN_PAGE)
        {
            for key in page? {
                let Some(id) = key.segments().last() else {
                    continue;
                };
                match self.finish_deletion(id) {
                    Ok(true) => done += 1,
                    Ok(false) => {}
                    Err(e) => errors.push((id.clone(), e)),
                }
            }
        }
        Ok(done)
    }

    /// Completes the deletion of job `id` if its subject is free.
    fn finish_deletion(&self, id: &str) -> Result<bool> {
        let subject = match self.inner.jobs.get(id)? {
            Some(job) => Self::subject_of(&job).to_owned(),
            None => id.to_owned(),
        };
        let Ok(lease) = self.acquire(&subject, id)? else {
            return Ok(false);
        };
        let outcome = match self.inner.jobs.get(id) {
            Ok(Some(job)) if job.status == JobStatus::Running => {
                self.inner.jobs.cancel(id).and_then(|_| self.remove_job(id))
            }
            Ok(_) => self.remove_job(id),
            Err(e) => Err(e),
        };
        lease.release();
        outcome.map(|_| true)
    }

    /// Purges, by the configured [`PurgePolicy`]: finished and abandoned queued
    /// jobs with their checkpoints and directories (except jobs a live
    /// reservation of the pipeline's [ledger](super::PipelineBuilder::ledger)
    /// names), orphaned directories and
    /// checkpoints, the shared directories of subjects no job refers to any
    /// more (under the subject's lock), expired ledger reservations (if a
    /// ledger was given), ended lock leases, and old temp files. Returns the
    /// counts. Directories are removed through the pipeline's
    /// [`Vfs`], their parent fsynced.
    ///
    /// Subject directories are found by name: a subject whose name is not a
    /// plain lower-case name (its directory name is a hash) has its directory
    /// removed by the purge that removes its last job, or by none if that purge
    /// could not (its subject was busy, say). Each removal reads every job
    /// record again under the subject's lock.
    ///
    /// A job record that cannot be read fails nothing: the job's directory and
    /// checkpoints are kept, and its key is in
    /// [`PurgeReport::unreadable_jobs`].
    ///
    /// Safe while runners work: running jobs are never purged, and a job is
    /// removed only under its subject's lock and only if its record has not
    /// changed since the purge read it (a manual retry meanwhile wins): its
    /// record, events and checkpoints go in one batch that checks that, and its
    /// directory after.
    ///
    /// # Errors
    /// Store and I/O errors.
    pub fn purge(&self) -> Result<PurgeReport> {
        let inner = &self.inner;
        let policy = inner.purge;
        let now = inner.clock.now_ms();
        let mut report = PurgeReport::default();
        let mut kept = BTreeSet::new();
        let mut purged_subjects = BTreeSet::new();
        let paid_for = match &inner.ledger {
            Some(ledger) => ledger.live_jobs()?,
            None => BTreeSet::new(),
        };
        // Removing as the scan goes: no list of every job is held.
        inner.jobs.for_each_job(|read| {
            let job = match read {
                Ok(job) => job,
                Err((key, _)) => {
                    // Its status and age are unknown: keep everything it may own.
                    if let Some(id) = key.segments().last() {
                        kept.insert(paths::dir_name(id));
                    }
                    report.unreadable_jobs.push(key);
                    return Ok(());
                }
            };
            // The safety net of the index of open jobs, for every job kept.
            inner.jobs.ensure_open_entry(&job)?;
            if !job.is_due_for_purge(now, policy.finished_for, policy.queued_for) {
                kept.insert(paths::dir_name(&job.id));
                return Ok(());
            }
            if paid_for.contains(&job.id) {
                report.kept_for_reservations += 1;
                kept.insert(paths::dir_name(&job.id));
                return Ok(());
            }
            let Ok(lease) = self.acquire(Self::subject_of(&job), &job.id)? else {
                kept.insert(paths::dir_name(&job.id));
                return Ok(()); // its subject is busy: next time
            };
            let removed = self.purge_job(&job.id, job.version, &mut report);
            lease.release();
            let removed = match removed {
                // Damaged since it was read: kept, and reported.
                Err(Error::Corrupt { key, .. }) if key.segments().last() == Some(&job.id) => {
                    report.unreadable_jobs.push(key);
                    false
                }
                other => other?,
            };
            if removed {
                purged_subjects.insert(Self::subject_of(&job).to_owned());
                report.jobs.add(job.status);
            } else {
                kept.insert(paths::dir_name(&job.id));
            }
            Ok(())
        })?;
        self.purge_orphans(&kept, &mut report)?;
        self.purge_subject_dirs(&purged_subjects, &mut report)?;
        if let Some(ledger) = &inner.ledger {
            report.reservations = ledger.purge_expired(policy.reservations_expired_for)?;
        }
        report.locks = inner
            .locks
            .purge(&Prefix::all(), policy.locks_expired_for)?
            .locks
            .len();
        for top in [paths::JOBS_DIR, paths::SUBJECTS_DIR] {
            let top = inner.root.join(top);
            for name in list_dir(inner.writer.vfs(), &top)? {
                let dir = top.join(name);
                // A file or a link someone left among the directories is not
                // the pipeline's: left alone, and no reason to stop every
                // purge from then on. (What is wrong inside a directory is
                // still reported.)
                match inner.writer.vfs().metadata(&dir) {
                    Ok(info) if info.kind != FileKind::Dir => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    _ => {}
                }
                report.temp_files += self.sweep(&dir, policy.temp_files_older_than)?;
            }
        }
        report.temp_files += inner
            .store
            .sweep_temp_files(policy.temp_files_older_than, &*inner.clock)?;
        Ok(report)
    }

    /// Removes one finished job if its record is still at `version`: the record,
    /// its events, checkpoints and failure count in one batch that checks the
    /// version (a manual retry since the listing wins), then its directory.
    /// A crash between the two leaves an orphan directory for a later purge.
    fn purge_job(
        &self,
        id: &str,
        version: crate::store::Version,
        report: &mut PurgeReport,
    ) -> Result<bool> {
        let inner = &self.inner;
        let Some(checkpoints) =
            super::records::delete_job_records(&inner.jobs, &inner.namespace, id, version)?
        else {
            return Ok(false); // changed since the listing (a manual retry, say)
        };
        report.checkpoints += checkpoints;
        report.artifact_dirs += remove_dir_all(inner.writer.vfs(), &inner.root, &self.job_dir(id))?;
        report.shared_artifacts += self.remove_shared(&job_rel(id))?;
        Ok(true)
    }

    /// Directories and checkpoints of jobs that no longer exist (a deletion
    /// interrupted by a crash). A directory younger than the temp-file age is
    /// left: its job may have been created since the listing.
    fn purge_orphans(&self, kept: &BTreeSet<String>, report: &mut PurgeReport) -> Result<()> {
        let inner = &self.inner;
        let jobs_dir = inner.root.join(paths::JOBS_DIR);
        let vfs = inner.writer.vfs();
        let now = UNIX_EPOCH + Duration::from_millis(inner.clock.now_ms());
        for name in list_dir(vfs, &jobs_dir)? {
            if kept.contains(&name) {
                continue;
            }
            let dir = jobs_dir.join(&name);
            let info = match vfs.metadata(&dir) {
                Ok(info) => info,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(steps::STAT_JOB_DIRECTORY, dir, e)),
            };
            let age = now.duration_since(info.modified).unwrap_or(Duration::ZERO);
            if info.kind == FileKind::Dir && age >= inner.purge.temp_files_older_than {
                report.artifact_dirs += remove_dir_all(vfs, &inner.root, &dir)?;
            }
        }
        // Copies of jobs that no longer exist, whose removal was interrupted
        // (here or elsewhere). Only a plain directory name says which job it
        // was, and that job is looked up again: one created since the
        // listing keeps its copies. (The copies of a job with a hashed
        // directory name stay if its removal was interrupted.)
        if let Some(shared) = &inner.shared {
            let top = Path::new(paths::JOBS_DIR);
            for name in shared.dirs(top)? {
                // Only a name the pipeline makes of an id is one: whatever
                // else the storage lists (`..`, a name with a separator, put
                // there by hand or by an attacker) is never joined to a path.
                if kept.contains(&name) || paths::dir_name(&name) != name {
                    continue;
                }
                match inner.jobs.get(&name) {
                    Ok(None) => report.shared_artifacts += shared.remove_dir(&top.join(&name))?,
                    Ok(Some(_)) => {}
                    Err(e) if e.is_corrupt() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // A job's checkpoints are next to each other in key order: the last
        // job id seen is all that needs remembering.
        let mut last: Option<String> = None;
        for page in inner.store.scan(&self.prefix(&["checkpoint"])?, SCAN_PAGE) {
            for key in page? {
                let Some(id) = key.segments().get(inner.namespace.segments().len() + 1) else {
                    continue;
                };
                if last.as_ref() == Some(id) {
                    continue;
                }
                last = Some(id.clone());
                match inner.jobs.get(id) {
                    Ok(None) => {}
                    // Its job exists, or may: an unreadable record keeps them.
                    Ok(Some(_)) => continue,
                    Err(e) if e.is_corrupt() => continue,
                    Err(e) => return Err(e),
                }
                let checkpoints = inner.store.list_all(&self.prefix(&["checkpoint", id])?)?;
                let mut batch = Batch::new();
                for key in &checkpoints {
                    batch = batch.delete(key, Expect::Any);
                }
                if !batch.is_empty() {
                    inner.store.apply(&batch)?;
                    report.checkpoints += checkpoints.len();
                }
            }
        }
        Ok(())
    }
}

impl<S: Store + 'static, V: Vfs> Pipeline<S, V> {
    /// Removes the shared directories of subjects that no job refers to any
    /// more, each under its subject's lock after checking again under it (a job
    /// may have been created and run since the first look). Candidates are the
    /// directories with plain names (a plain name is its subject) and those of
    /// the subjects whose jobs were just purged; a hashed directory of an
    /// unknown subject stays. Skipped while a job record is unreadable: its
    /// subject is unknown.
    fn purge_subject_dirs(
        &self,
        purged_subjects: &BTreeSet<String>,
        report: &mut PurgeReport,
    ) -> Result<()> {
        if !report.unreadable_jobs.is_empty() {
            return Ok(());
        }
        let vfs = self.inner.writer.vfs();
        let top = self.inner.root.join(paths::SUBJECTS_DIR);
        let mut names: BTreeSet<String> = list_dir(vfs, &top)?.into_iter().collect();
        // Those with copies only, from machines that purge no more.
        if let Some(shared) = &self.inner.shared {
            // Plain names only, as made of a subject: what else the storage
            // lists is never joined to a path (see the jobs' copies above).
            let listed = shared.dirs(Path::new(paths::SUBJECTS_DIR))?;
            names.extend(listed.into_iter().filter(|n| paths::dir_name(n) == *n));
        }
        let mut candidates = BTreeMap::new();
        for name in names.iter().filter(|n| !n.starts_with('~')) {
            candidates.insert(name.clone(), name.clone());
        }
        for subject in purged_subjects {
            let name = paths::dir_name(subject);
            if names.contains(&name) {
                candidates.insert(name, subject.clone());
            }
        }
        if candidates.is_empty() {
            return Ok(());
        }
        let Some(in_use) = self.subjects_in_use()? else {
            return Ok(());
        };
        for (name, subject) in candidates {
            if in_use.contains(&subject) {
                continue;
            }
            let Ok(lease) = self.acquire(&subject, "(purge)")? else {
                continue; // a runner holds it: next time
            };
            let removed = match self.subjects_in_use() {
                Ok(Some(in_use)) if !in_use.contains(&subject) => {
                    remove_dir_all(vfs, &self.inner.root, &top.join(&name)).and_then(|dirs| {
                        let rel = Path::new(paths::SUBJECTS_DIR).join(&name);
                        Ok((dirs, self.remove_shared(&rel)?))
                    })
                }
                Ok(_) => Ok((0, 0)),
                Err(e) => Err(e),
            };
            lease.release();
            let (dirs, copies) = removed?;
            report.subject_dirs += dirs;
            report.shared_artifacts += copies;
        }
        Ok(())
    }

    /// The subjects of every job, or `None` if a job record cannot be read.
    fn subjects_in_use(&self) -> Result<Option<BTreeSet<String>>> {
        let mut subjects = BTreeSet::new();
        let mut all_read = true;
        self.inner.jobs.for_each_job(|read| {
            match read {
                Ok(job) => {
                    subjects.insert(Self::subject_of(&job).to_owned());
                }
                Err(_) => all_read = false,
            }
            Ok(())
        })?;
        Ok(all_read.then_some(subjects))
    }
}

/// The names in `dir` (none if it does not exist).
fn list_dir<V: Vfs>(vfs: &V, dir: &Path) -> Result<Vec<String>> {
    match vfs.read_dir(dir) {
        Ok(names) => Ok(names
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(steps::READ_DIRECTORY, dir, e)),
    }
}

/// Removes `dir` (below `root`) and everything in it through `vfs`, then fsyncs
/// its parent so that the removal survives a power loss; returns 1 if it existed.
///
/// No symlink is followed: one inside is removed, and one at `dir` itself is
/// removed as the entry it is, while what it names is left alone. A symlink on
/// the way from `root` to `dir` is an error naming it.
fn remove_dir_all<V: Vfs>(vfs: &V, root: &Path, dir: &Path) -> Result<usize> {
    if !paths::real_dir(vfs, root, paths::parent(dir))? {
        return Ok(0);
    }
    match vfs.metadata(dir) {
        Ok(info) if info.kind == FileKind::Dir => {
            if !remove_tree(vfs, dir)? {
                return Ok(0);
            }
        }
        Ok(_) => match vfs.remove_file(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(steps::REMOVE_FILE, dir, e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(steps::STAT, dir, e)),
    }
    if let Some(parent) = dir.parent() {
        vfs.sync_dir(parent)
            .map_err(|e| Error::io(steps::FSYNC_DIRECTORY, parent, e))?;
    }
    Ok(1)
}

/// Removes the tree at `dir`, depth first, never following a link in it
/// (see [`Vfs::remove_tree`]); `false` if it was not there.
fn remove_tree<V: Vfs>(vfs: &V, dir: &Path) -> Result<bool> {
    vfs.remove_tree(dir)
        .map_err(|e| Error::io(steps::REMOVE_DIRECTORY, dir, e))
}

/// The directory of job `id`, relative to the artifact root.
fn job_rel(id: &str) -> PathBuf {
    Path::new(paths::JOBS_DIR).join(paths::dir_name(id))
}
