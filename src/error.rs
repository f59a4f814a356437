//! The crate's one error type.

pub(crate) mod io_step;
pub(crate) mod steps;
pub(crate) mod transient;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub(crate) use io_step::IoStep;

use crate::key::Key;
use crate::store::Version;

/// Convenience alias used by every fallible function in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in jobsafe.
///
/// Each variant's `Display` says what failed and where (a key or a path). When a
/// variant wraps a lower-level error, that error is returned from
/// [`source()`](std::error::Error::source) and is *not* repeated in the message, so a
/// reporter that walks the chain prints every cause once.
///
/// Use the classifiers ([`is_conflict`](Error::is_conflict),
/// [`is_transient`](Error::is_transient), ...) rather than matching on variants when
/// all you need is a decision: the enum is `#[non_exhaustive]` and grows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key segment, or a whole key, was rejected.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending input, as given (lossily shortened if very long).
        key: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A precondition (`Expect::Absent` or `Expect::Version`) did not hold.
    ///
    /// Nothing was changed. `current` is the version the key has now (`None` if it
    /// is absent), so a caller can re-read and retry.
    #[error("conflict on {key}: expected {expected}, found {}", fmt_current(.current))]
    Conflict {
        /// The key whose precondition failed.
        key: Key,
        /// What the caller expected, in words.
        expected: String,
        /// The current version, `None` if the key is absent.
        current: Option<Version>,
    },

    /// Stored bytes could not be decoded. The bytes are left where they are (or were
    /// moved aside to `quarantined`): a corrupt record is never treated as absent.
    #[error("corrupt record at {key}{}: {reason}", fmt_location(.path))]
    Corrupt {
        /// The key whose record is unreadable.
        key: Key,
        /// The file holding it, where the backend has one.
        path: Option<PathBuf>,
        /// What is wrong with it.
        reason: String,
    },

    /// A file the store owns is damaged in a way that is not tied to one key
    /// (a batch journal, a counter file, a store marker).
    #[error("corrupt store file {}: {reason}", path.display())]
    CorruptFile {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An I/O operation failed. `step` says what it was doing: its
    /// [`action`](crate::vfs::IoStep::action), such as
    /// [`IoAction::Flush`](crate::vfs::IoAction::Flush), and its words, such
    /// as `"fsync temp file"`. `path` names the file or directory it was
    /// applied to.
    ///
    /// Decide on `step.action()` or `step.is_flush()`, never on the words of
    /// the message, which may change.
    #[error("{step} {}", path.display())]
    Io {
        /// What was being done.
        step: IoStep,
        /// Where.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The rename (or, in no-clobber mode, the link) of an atomic write succeeded but
    /// the fsync of the directory that makes it durable failed: the new content is
    /// visible to readers but is *not known to survive a power loss*.
    ///
    /// An [`AtomicWriter`](crate::AtomicWriter) keeps no state, so a later write
    /// tries the whole sequence again; a [`DirStore`](crate::DirStore) poisons
    /// itself, as after any failed fsync.
    #[error(
        "{} was written, but the fsync of its directory {} failed: the new content is visible but not known to be durable",
        path.display(),
        dir.display()
    )]
    NotDurable {
        /// The target file, which now holds the new content.
        path: PathBuf,
        /// The directory whose fsync failed.
        dir: PathBuf,
        /// The operating system's error from the directory fsync.
        #[source]
        source: io::Error,
    },

    /// A create-only write found its target already there. Nothing was changed.
    #[error("{} already exists", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// An earlier fsync failed, so the store refuses further writes: what reached the
    /// disk is unknown and guessing could lose data. Reopen the store to recover.
    #[error("store at {} is poisoned by an earlier failed fsync; reopen it to continue", path.display())]
    Poisoned {
        /// The store's root.
        path: PathBuf,
    },

    /// A store could not be opened because another handle has it: with
    /// `exclusive`, this open asked for the store alone
    /// ([`LogStoreBuilder::exclusive`](crate::store::LogStoreBuilder::exclusive))
    /// while another handle, in this process or another, had it open; without,
    /// another handle holds it exclusively. Nothing was waited for: the other
    /// handle keeps the store until it is dropped (or its process ends), so
    /// this is not [transient](Error::is_transient).
    #[error("{}", fmt_in_use(.path, *.exclusive))]
    StoreInUse {
        /// The store's root.
        path: PathBuf,
        /// Whether this open asked for exclusive access.
        exclusive: bool,
    },

    /// A value could not be encoded to or decoded from its record format.
    #[error("cannot {action} record for {key}")]
    Codec {
        /// `"encode"` or `"decode"`.
        action: &'static str,
        /// The key the record belongs to.
        key: Key,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// A record was written by a newer schema than this build understands.
    #[error("record at {key} has schema version {found}, newer than supported {supported}")]
    UnsupportedSchema {
        /// The key whose record it is.
        key: Key,
        /// The version in the record.
        found: u32,
        /// The newest version this build can read.
        supported: u32,
    },

    /// A write carried a fencing token older than one already seen for the same
    /// resource: its writer has lost the lease that token came with.
    #[error("stale fencing token for {resource}: presented {presented}, newest seen {newest}")]
    StaleToken {
        /// What was being written (a key or path, in words).
        resource: String,
        /// The writer's token.
        presented: crate::FencingToken,
        /// The newest token the resource has accepted.
        newest: crate::FencingToken,
    },

    /// A lock was still held by someone else when a bounded wait for it ended.
    #[error(
        "lock {key} is still held by {holder} until {expires_ms} ms; gave up after waiting {waited_ms} ms"
    )]
    LockTimeout {
        /// The lock's key.
        key: Key,
        /// The holder, in words: its job id and actor.
        holder: String,
        /// When the holder's lease expires, in the lock's clock's milliseconds.
        expires_ms: u64,
        /// How long the caller waited, by the lock's clock.
        waited_ms: u64,
    },

    /// A job id was reserved again with a different request fingerprint: not a
    /// retry but another request reusing the id. Nothing was changed.
    #[error("{key} is reserved for a request with fingerprint {:?}, not {requested:?}", stored.fingerprint.as_deref().unwrap_or_default())]
    FingerprintMismatch {
        /// The reservation's key.
        key: Key,
        /// The fingerprint of the refused request.
        requested: String,
        /// The reservation as stored.
        stored: Box<crate::ledger::Reservation>,
    },

    /// No job has this id.
    #[error("no job {id}")]
    JobNotFound {
        /// The job id asked for.
        id: String,
    },

    /// A job cannot make this transition from its current status (complete twice,
    /// start a cancelled job, ...). Nothing was changed.
    #[error("job {id} is {status}: cannot {action}")]
    InvalidTransition {
        /// The job.
        id: String,
        /// Its status now.
        status: crate::jobs::JobStatus,
        /// What was attempted.
        action: &'static str,
    },

    /// A worker tried to change a job it no longer owns: an older attempt, or an
    /// older fencing token than the job has seen. Nothing was changed; the worker
    /// should stop.
    #[error("stale worker for job {id}: {reason}")]
    StaleWorker {
        /// The job.
        id: String,
        /// Why the worker is stale, in words.
        reason: String,
    },

    /// A batch was committed (its journal is durable) but applying it failed
    /// midway. It is not lost: whoever next touches its keys, or the next open,
    /// completes it. Do not apply it again.
    #[error("batch committed in {} but not yet applied; the next operation on its keys completes it", journal.display())]
    BatchPending {
        /// The journal holding the committed batch.
        journal: PathBuf,
        /// Why applying it failed.
        #[source]
        source: Box<Error>,
    },

    /// An argument was out of range (an empty batch, a zero page size, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Something to be stored is larger than its limit: a store value over
    /// [`Entry::MAX_VALUE_LEN`](crate::Entry::MAX_VALUE_LEN), or a field of a
    /// record over its bound (such as
    /// [`Job::MAX_KIND_LEN`](crate::jobs::Job::MAX_KIND_LEN)). Nothing was
    /// written: limits are checked before any I/O. Not transient: the same
    /// request fails again.
    #[error("{what}{} is {size} bytes, over the limit of {limit} bytes", fmt_key(.key))]
    TooLarge {
        /// What is too large: `"value"` for a store value, otherwise the field
        /// (`"job kind"`, `"event data"`, `"lock metadata"`, ...).
        what: &'static str,
        /// The key it was to be stored at, where there is one.
        key: Option<Key>,
        /// Its size in bytes (for structured fields, of their JSON encoding).
        size: usize,
        /// The most bytes allowed.
        limit: usize,
    },

    /// A database server could not be reached, or refused or failed a request.
    ///
    /// `server` names it as `host:port/database`, never with a password.
    /// `transient` says whether the same request may succeed later as it is: the
    /// server was unreachable, restarting, out of connections, the connection
    /// dropped, or a wait passed its bound (a deadline, a lock or statement
    /// timeout, a deadlock or serialization conflict the server broke). A
    /// missing table or privilege, a refused login or a value over the server's
    /// limits is not: the same request fails the same way. `source` shows what
    /// the server said, with its SQLSTATE (`ERROR 42P01: relation ... does not
    /// exist`). A *write* that failed transiently may still have been committed
    /// (the answer was lost, not necessarily the change): re-read before
    /// repeating an [`Expect::Any`](crate::Expect::Any) write; a repeated
    /// compare-and-set reports a conflict if the first one landed.
    #[error("{step}: database server {server}")]
    Database {
        /// What was being done (`"connect"`, `"put"`, `"migrate schema"`, ...).
        step: &'static str,
        /// The server, as `host:port/database`.
        server: String,
        /// Whether retrying later, unchanged, may succeed.
        transient: bool,
        /// The client library's error, with the server's message if it sent one.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A request to object storage failed or went unanswered
    /// ([`ObjectStoreArtifacts`](crate::pipeline::ObjectStoreArtifacts),
    /// feature `object-store`). Transient when it may pass if repeated: the
    /// client's own retries gave up (a refused or reset connection, a server
    /// error), or no answer came within the request timeout. A denied
    /// permission, a missing credential or an operation the store does not
    /// support is not. A copy whose request failed transiently may still
    /// have landed whole.
    #[error("{step}: object {location}")]
    ObjectStore {
        /// What was being done (`"store artifact"`, `"fetch artifact"`, ...).
        step: &'static str,
        /// The store and the object, as `AmazonS3(bucket)/prefix/jobs/j-1/out.txt`.
        location: String,
        /// Whether retrying later, unchanged, may succeed.
        transient: bool,
        /// The client's error, or what went unanswered.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A manager's write failed in a way that may hide its success (the store
    /// was unreachable: the commit may have happened and only its reply been
    /// lost), and re-reading the record to learn which did not succeed before
    /// the manager's `resolve_within` deadline (or found what would tell gone:
    /// a job whose event log dropped the write's event). The write may or may
    /// not have taken effect.
    ///
    /// Repeat the call with the same [`attempt`](Error::attempt_id) (a
    /// [`LockRequest::attempt`](crate::lock::LockRequest::attempt), a
    /// [`ChargeRequest::attempt`](crate::ledger::ChargeRequest::attempt), a
    /// [`JobState::start_attempt`](crate::JobState::start_attempt), a
    /// [`NewJob::attempt`](crate::jobs::NewJob::attempt)): it is recognised as
    /// the same call, and returns what the first one did if it landed.
    /// A call that takes no attempt (a lock's renew or release, a ledger's
    /// confirm, cancel or refund) is safe to repeat as it was: it reads what
    /// is stored and does only what is left to do; the id it carries names
    /// the lost write, for logs, and is not for reuse.
    /// Transient: the store may answer later.
    #[error(
        "{operation} on {key} may or may not have taken effect (attempt {attempt}): \
         the write failed and re-reading did not tell by the deadline ({reread})"
    )]
    Ambiguous {
        /// What was being done (`"acquire lock"`, `"start job"`, `"reserve"`, ...).
        operation: &'static str,
        /// The record written.
        key: Key,
        /// The id the write carried: repeat the call with it.
        attempt: crate::AttemptId,
        /// Why the last re-read did not tell, in words.
        reread: String,
        /// The write's own error.
        #[source]
        source: Box<Error>,
    },

    /// A row of a database table cannot be decoded and no key names it (its key
    /// column itself is damaged). The row is left where it is.
    #[error("corrupt row in table {table} on database server {server}: {reason}")]
    CorruptRow {
        /// The server, as `host:port/database`.
        server: String,
        /// The table, as `schema.table`.
        table: String,
        /// What is wrong with the row.
        reason: String,
    },
}

fn fmt_in_use(path: &std::path::Path, exclusive: bool) -> String {
    if exclusive {
        format!(
            "store at {} is open in another handle (of this process or another): \
             it cannot be opened exclusively until every other handle is closed",
            path.display()
        )
    } else {
        format!(
            "store at {} is held exclusively by another handle (of this process or another): \
             it cannot be opened until that handle is closed",
            path.display()
        )
    }
}

fn fmt_current(current: &Option<Version>) -> String {
    match current {
        Some(v) => format!("version {}", v.get()),
        None => "no record".to_owned(),
    }
}

fn fmt_key(key: &Option<Key>) -> String {
    match key {
        Some(key) => format!(" for {key}"),
        None => String::new(),
    }
}

fn fmt_location(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" ({})", p.display()),
        None => String::new(),
    }
}

impl Error {
    /// A failed compare-and-set precondition: re-read and decide again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// Undecodable stored data (a record or a store file).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::CorruptFile { .. } | Error::CorruptRow { .. }
        )
    }

    /// A write was rejected because its fencing token is stale.
    pub fn is_stale_token(&self) -> bool {
        matches!(self, Error::StaleToken { .. })
    }

    /// A bounded wait for a lock ended with the lock still held by another job.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, Error::LockTimeout { .. })
    }

    /// A worker acted on a job it no longer owns (older attempt or fencing token).
    pub fn is_stale_worker(&self) -> bool {
        matches!(self, Error::StaleWorker { .. })
    }

    /// A job transition that its current status does not allow.
    pub fn is_invalid_transition(&self) -> bool {
        matches!(self, Error::InvalidTransition { .. })
    }

    /// A manager could not learn whether its write took effect: see
    /// [`Error::Ambiguous`]. Repeat the call with the same attempt id
    /// ([`attempt_id`](Error::attempt_id)).
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Error::Ambiguous { .. })
    }

    /// The attempt id of a call whose outcome is unknown
    /// ([`is_ambiguous`](Error::is_ambiguous)); `None` for every other error.
    pub fn attempt_id(&self) -> Option<&crate::AttemptId> {
        match self {
            Error::Ambiguous { attempt, .. } => Some(attempt),
            _ => None,
        }
    }

    /// A no-clobber write found its target already there.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists { .. })
    }

    /// Something to be stored was over its size limit; nothing was written.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Error::TooLarge { .. })
    }

    /// The store could not be opened because another handle has it
    /// ([`Error::StoreInUse`]): another handle holds it exclusively, or this
    /// open asked for it exclusively while another handle had it open.
    pub fn is_store_in_use(&self) -> bool {
        matches!(self, Error::StoreInUse { .. })
    }

    /// The store refuses writes after a failed fsync.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Error::Poisoned { .. } | Error::NotDurable { .. })
    }

    /// Worth retrying later without changing the request: I/O errors that
    /// describe a moment rather than the request, and a database server that
    /// could not be reached or dropped the connection ([`Error::Database`] with
    /// `transient`), object storage whose client gave up or went unanswered
    /// ([`Error::ObjectStore`] with `transient`), and a manager call whose outcome stayed unknown
    /// ([`Error::Ambiguous`]: repeat it with the same attempt id). A conflict is not: the same compare-and-set would fail
    /// again, so re-read and decide anew. Corruption, poisoning and invalid input
    /// (a value over its size limit included) are not.
    ///
    /// An [`Error::Io`] is transient by its OS error, as the pipeline's
    /// [`classify_io`](crate::pipeline::classify_io) decides it: interrupted,
    /// would block, timed out, busy, out of space (`ENOSPC`) or quota
    /// (`EDQUOT`: a quota fills and empties like a disk), out of memory or of
    /// file descriptors (`EMFILE`, `ENFILE`), and the network kinds (connection
    /// refused, reset or aborted, not connected, broken pipe, host or network
    /// unreachable, network down), which a store on a network filesystem can
    /// meet. An error that does not say what it is (`ErrorKind::Other`, or an
    /// OS error the standard library leaves uncategorized, such as `EIO`) is
    /// not transient here: a caller may retry it in a loop without bound,
    /// while the pipeline, whose retries are bounded, retries it.
    ///
    /// ```
    /// use std::io::{Error as IoError, ErrorKind};
    /// use jobsafe::Error;
    /// use jobsafe::vfs::{IoAction, IoStep};
    ///
    /// let step = IoStep::new(IoAction::Write, "write export");
    /// let io = |source| Error::Io { step, path: "/data/export".into(), source };
    /// assert!(io(IoError::from(ErrorKind::QuotaExceeded)).is_transient());
    /// assert!(io(IoError::from(ErrorKind::ConnectionReset)).is_transient());
    /// assert!(!io(IoError::from(ErrorKind::PermissionDenied)).is_transient());
    /// assert!(!io(IoError::other("unknown")).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io { source, .. } => {
                transient::of_error(source) == transient::Transience::Transient
            }
            Error::Database { transient, .. } => *transient,
            Error::ObjectStore { transient, .. } => *transient,
            Error::Ambiguous { .. } => true,
            _ => false,
        }
    }

    /// The version found by a failed precondition, if this is a conflict.
    pub fn conflict_current(&self) -> Option<Option<Version>> {
        match self {
            Error::Conflict { current, .. } => Some(*current),
            _ => None,
        }
    }

    pub(crate) fn io(step: IoStep, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            step,
            path: path.into(),
            source,
        }
    }

    /// `what` (at `key`, if any) is `size` bytes, over `limit`.
    pub(crate) fn too_large(
        what: &'static str,
        key: Option<&Key>,
        size: usize,
        limit: usize,
    ) -> Self {
        Error::TooLarge {
            what,
            key: key.cloned(),
            size,
            limit,
        }
    }

    pub(crate) fn invalid_key(key: impl fmt::Display, reason: impl Into<String>) -> Self {
        let mut key = key.to_string();
        if key.len() > 200 {
            let mut cut = 200;
            while !key.is_char_boundary(cut) {
                cut -= 1;
            }
            key.truncate(cut);
            key.push('…');
        }
        Error::InvalidKey {
            key,
            reason: reason.into(),
        }
    }
}

/// Adds the step and path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, step: IoStep, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, step: IoStep, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(step, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn io_errors_name_step_and_path_and_chain_the_cause_once() {
        let err = Error::io(
            steps::FSYNC_TEMP_FILE,
            "/data/.a.jobsafe-tmp",
            io::Error::from_raw_os_error(5),
        );
        let shown = err.to_string();
        assert_eq!(shown, "fsync temp file /data/.a.jobsafe-tmp");
        let cause = err.source().map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("Input/output error"), "{cause}");
        assert!(!shown.contains(&cause));
    }

    #[test]
    fn classifiers() {
        let key = Key::new(["k"]).unwrap();
        let conflict = Error::Conflict {
            key: key.clone(),
            expected: "no record".into(),
            current: Some(Version::new(3)),
        };
        assert!(conflict.is_conflict() && !conflict.is_transient());
        assert_eq!(conflict.conflict_current(), Some(Some(Version::new(3))));
        assert_eq!(
            conflict.to_string(),
            "conflict on k: expected no record, found version 3"
        );
        let write = |source| Error::io(steps::WRITE_TEMP_FILE, "/x", source);
        for kind in [
            io::ErrorKind::StorageFull,
            io::ErrorKind::QuotaExceeded,
            io::ErrorKind::ConnectionReset,
        ] {
            assert!(write(io::Error::from(kind)).is_transient(), "{kind:?}");
        }
        assert!(!write(io::Error::from(io::ErrorKind::PermissionDenied)).is_transient());
        // An error that does not say what it is: not for unbounded retries.
        assert!(!write(io::Error::other("?")).is_transient());
        assert!(!write(io::Error::from_raw_os_error(5)).is_transient());
        let corrupt = Error::Corrupt {
            key,
            path: None,
            reason: "bad".into(),
        };
        assert!(corrupt.is_corrupt() && !corrupt.is_transient());
        let batch = Error::too_large("LogStore transaction", None, 300, 256);
        assert!(batch.is_too_large() && !batch.is_transient());
        assert_eq!(
            batch.to_string(),
            "LogStore transaction is 300 bytes, over the limit of 256 bytes"
        );
    }

    #[test]
    fn long_invalid_keys_are_shortened_on_a_char_boundary() {
        let err = Error::invalid_key("é".repeat(300), "too long");
        assert!(matches!(&err, Error::InvalidKey { key, .. } if key.len() <= 204));
    }
}
