//! What a stage sees: its job, its directories, and fenced artifact writes.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use super::checkpoint::Artifact;
use super::inputs::{Mismatch, Recorded};
use super::paths::check_artifact_name;
use crate::error::{Error, Result};
use crate::fencing::FencingToken;
use crate::jobs::Job;

/// The runner's side of a stage's I/O.
pub(crate) trait StageIo {
    /// Writes `bytes` to `root/rel` atomically, if the runner still owns the
    /// job; returns the artifact written.
    fn write(&self, rel: PathBuf, bytes: &[u8]) -> Result<Artifact>;
    /// Reads the artifact `recorded` names if it is still what was recorded
    /// (see [`read_recorded`](super::inputs::read_recorded)).
    fn read_recorded(&self, recorded: &Artifact) -> Result<std::result::Result<Vec<u8>, Mismatch>>;
    /// Reads `root/rel`, which no stage of the run recorded (see
    /// [`read_unrecorded`](super::inputs::read_unrecorded)).
    fn read_unrecorded(&self, rel: &Path) -> Result<Vec<u8>>;
    /// Records a progress message on the job.
    fn progress(&self, message: &str) -> Result<()>;
    /// The artifact root.
    fn root(&self) -> &Path;
}

/// What a running stage works with: its job, its directories, and writes that
/// go through the pipeline's [`AtomicWriter`](crate::AtomicWriter) and commit
/// only while the runner still owns the job.
///
/// Every artifact written is recorded in the stage's [`Checkpoint`](super::Checkpoint)
/// when the stage returns `Ok`. If the stage does not finish (error, panic,
/// cancellation), the artifacts it wrote are removed.
///
/// A write refused because the runner lost the job ([`Error::StaleToken`](crate::Error::StaleToken)
/// or [`Error::StaleWorker`](crate::Error::StaleWorker)) stops the run whatever
/// the stage returns afterwards: return the error with `?`.
pub struct StageContext<'a> {
    pub(crate) io: &'a dyn StageIo,
    pub(crate) job: &'a Job,
    pub(crate) subject: &'a str,
    pub(crate) stage: &'a str,
    pub(crate) job_rel: PathBuf,
    pub(crate) subject_rel: PathBuf,
    pub(crate) token: FencingToken,
    pub(crate) written: Vec<Artifact>,
    /// What the earlier stages of the run recorded: reads are checked against it.
    pub(crate) recorded: &'a Recorded,
    pub(crate) stop: Option<String>,
    /// The first read of a recorded artifact that did not verify, as the
    /// internal message of the stage's failure. Set through `&self`: reads
    /// take `&self`, and so does a job's result.
    pub(crate) mismatch: OnceCell<String>,
}

impl std::fmt::Debug for StageContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext")
            .field("job", &self.job.id)
            .field("subject", &self.subject)
            .field("stage", &self.stage)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl StageContext<'_> {
    /// The job, as of the start of this stage.
    pub fn job(&self) -> &Job {
        self.job
    }

    /// The job's id.
    pub fn job_id(&self) -> &str {
        &self.job.id
    }

    /// The job's subject.
    pub fn subject(&self) -> &str {
        self.subject
    }

    /// This stage's name.
    pub fn stage(&self) -> &str {
        self.stage
    }

    /// The attempt running it (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.job.attempt
    }

    /// The runner's fencing token, for writes the stage makes elsewhere (pass it
    /// to a service that checks tokens).
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The directory of this job's own artifacts (it may not exist until the
    /// first write).
    pub fn job_dir(&self) -> PathBuf {
        self.io.root().join(&self.job_rel)
    }

    /// The directory of artifacts shared by the subject's jobs.
    pub fn subject_dir(&self) -> PathBuf {
        self.io.root().join(&self.subject_rel)
    }

    /// Writes the artifact `name` in the job's directory atomically, and returns
    /// its path.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) unless `name` is
    /// one plain file name (not empty, no `/`, not starting with a dot, at most
    /// [`Artifact::MAX_NAME_LEN`](super::Artifact::MAX_NAME_LEN) bytes);
    /// [`Error::StaleToken`](crate::Error::StaleToken) or
    /// [`Error::StaleWorker`](crate::Error::StaleWorker) if the runner lost the
    /// job (nothing is written, no directory created); I/O errors naming the
    /// path.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let rel = self.job_rel.clone();
        self.write_at(rel, name, bytes)
    }

    /// Writes the artifact `name` in the subject's shared directory atomically
    /// (a session's transcript, say), and returns its path.
    ///
    /// # Errors
    /// As [`write`](StageContext::write).
    pub fn write_shared(&mut self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let rel = self.subject_rel.clone();
        self.write_at(rel, name, bytes)
    }

    /// Reads the artifact `name` of the job's directory (one an earlier stage
    /// wrote, say).
    ///
    /// An artifact that this stage or an earlier stage of the run wrote is read
    /// only if it is still exactly what was written: a regular file, not
    /// reached through a symlink, of the recorded length and SHA-256, read
    /// without blocking and no further than that length (and one byte to see
    /// that it ends there). If it is not, its bytes are not returned and the
    /// stage cannot finish: whatever it returns, it ends as a transient failure
    /// (code [`StageError::ARTIFACT_MISMATCH`](super::StageError::ARTIFACT_MISMATCH))
    /// whose internal message names the file and what differs, and on the next
    /// run the stage that wrote the file no longer verifies and runs again.
    ///
    /// A file no stage of the run wrote (another job's, say) is read with the
    /// same care for links, FIFOs and devices, as long as it was when opened,
    /// but there is no digest to check it against.
    ///
    /// # Errors
    /// As [`write`](StageContext::write), for the name;
    /// [`Error::CorruptFile`](crate::Error::CorruptFile) naming the file for
    /// one that does not match what was written, for a symlink or another kind
    /// of file where a file no stage wrote was expected, and for a symlink or
    /// a file where a directory on its way belongs; I/O errors naming the path
    /// (`NotFound` for a missing file no stage of the run wrote).
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        check_artifact_name(name)?;
        self.read_at(self.job_rel.join(name))
    }

    /// Reads the artifact `name` of the subject's directory, as
    /// [`read`](StageContext::read) reads the job's: a shared file that a stage
    /// of this job's run wrote is checked against its record.
    ///
    /// # Errors
    /// As [`read`](StageContext::read).
    pub fn read_shared(&self, name: &str) -> Result<Vec<u8>> {
        check_artifact_name(name)?;
        self.read_at(self.subject_rel.join(name))
    }

    /// Records a progress message on the job (and a `progress` event).
    ///
    /// # Errors
    /// As [`JobState::progress`](crate::JobState::progress); a refusal because
    /// the runner lost the job stops the run.
    pub fn progress(&mut self, message: &str) -> Result<()> {
        let result = self.io.progress(message);
        self.note_refusal(result)
    }

    /// The artifacts written so far by this run of the stage.
    pub fn artifacts(&self) -> &[Artifact] {
        &self.written
    }

    fn read_at(&self, rel: PathBuf) -> Result<Vec<u8>> {
        // This stage's own write of the path is the latest.
        let recorded = match self.written.iter().find(|a| a.path == rel) {
            Some(own) => Some((self.stage, own)),
            None => self.recorded.get(&rel),
        };
        let Some((maker, artifact)) = recorded else {
            return self.io.read_unrecorded(&rel);
        };
        match self.io.read_recorded(artifact)? {
            Ok(bytes) => Ok(bytes),
            Err(mismatch) => {
                let _ = self.mismatch.set(format!(
                    "artifact {} does not match what stage {maker:?} wrote: {mismatch}; \
                     that stage runs again",
                    rel.display()
                ));
                Err(Error::CorruptFile {
                    path: self.io.root().join(rel),
                    reason: format!(
                        "the artifact does not match what stage {maker:?} wrote: {mismatch}; \
                         it was not read, and that stage runs again on the job's next run"
                    ),
                })
            }
        }
    }

    fn write_at(&mut self, dir: PathBuf, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        check_artifact_name(name)?;
        let rel = dir.join(name);
        let written = self.io.write(rel.clone(), bytes);
        let artifact = self.note_refusal(written)?;
        // A file written twice counts once, with its last content.
        self.written.retain(|a| a.path != artifact.path);
        self.written.push(artifact);
        Ok(self.io.root().join(rel))
    }

    fn note_refusal<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && (e.is_stale_token() || e.is_stale_worker())
            && self.stop.is_none()
        {
            self.stop = Some(e.to_string());
        }
        result
    }
}
