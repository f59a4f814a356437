//! How a stage says what went wrong: transient (retry later) or permanent (fail).

use std::any::Any;
use std::fmt;
use std::io;
use std::time::Duration;

use crate::error::transient::{self, Transience};
use crate::jobs::JobError;

/// Whether a stage error is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Worth retrying later without changing anything (a timeout, an upstream
    /// 5xx, a full disk): the job goes back to the queue with a backoff.
    Transient,
    /// Retrying will not help (invalid input, an upstream 4xx, a bug): the job
    /// fails until a manual retry.
    Permanent,
}

/// An error returned by a stage: its class and its two faces (a client-safe
/// message and an internal one), as a [`JobError`].
///
/// Stage code says the class explicitly with [`transient`](StageError::transient)
/// or [`permanent`](StageError::permanent); `?` on an [`io::Error`] or a
/// [`crate::Error`] classifies it by [`classify_io`] (an I/O error, bare or in
/// [`crate::Error::Io`]) or [`Error::is_transient`](crate::Error::is_transient)
/// (any other error), with the error's text as the internal message and
/// [`JobError::DEFAULT_CLIENT_MESSAGE`] for clients (an I/O error names paths,
/// which clients must not see).
///
/// ```
/// use jobsafe::pipeline::{ErrorClass, StageError};
///
/// let busy = StageError::transient("the transcription service is busy")
///     .internal("asr upstream answered 503")
///     .code("upstream_busy");
/// assert_eq!(busy.class(), ErrorClass::Transient);
///
/// let unreadable: StageError = std::io::Error::from(std::io::ErrorKind::InvalidData).into();
/// assert_eq!(unreadable.class(), ErrorClass::Permanent);
/// assert_eq!(unreadable.job_error().client_message(), jobsafe::jobs::JobError::DEFAULT_CLIENT_MESSAGE);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageError {
    class: ErrorClass,
    error: JobError,
    retry_after: Option<Duration>,
}

impl StageError {
    /// The code of the failure a stage ends with when an artifact it read
    /// did not match what its stage wrote (see
    /// [`StageContext::read`](super::StageContext::read)).
    pub const ARTIFACT_MISMATCH: &'static str = "artifact_mismatch";

    /// A transient error whose message is safe to show clients.
    pub fn transient(client_message: impl Into<String>) -> Self {
        StageError::new(ErrorClass::Transient, JobError::new(client_message))
    }

    /// A permanent error whose message is safe to show clients.
    pub fn permanent(client_message: impl Into<String>) -> Self {
        StageError::new(ErrorClass::Permanent, JobError::new(client_message))
    }

    /// An error of `class` with both faces given as a [`JobError`].
    pub fn new(class: ErrorClass, error: JobError) -> Self {
        StageError {
            class,
            error,
            retry_after: None,
        }
    }

    /// Adds the message for operators (never shown to clients).
    pub fn internal(mut self, internal_message: impl Into<String>) -> Self {
        self.error = self.error.internal(internal_message);
        self
    }

    /// Adds a machine-readable code, shown to clients.
    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.error = self.error.code(code);
        self
    }

    /// For a transient error: retry no sooner than `delay` from now (an
    /// upstream's `Retry-After`), instead of the policy's backoff if that is
    /// shorter. Still capped by [`RetryPolicy::max_delay`](super::RetryPolicy::max_delay).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Its class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// Whether it is transient.
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// Its two faces.
    pub fn job_error(&self) -> &JobError {
        &self.error
    }

    /// The delay asked for with [`retry_after`](StageError::retry_after).
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    pub(crate) fn into_job_error(self) -> JobError {
        self.error
    }

    /// The failure of a stage that read an artifact that did not match its
    /// record: transient, since the stage that wrote it runs again on the next
    /// run; `internal` names the file and what differs.
    pub(crate) fn artifact_mismatch(internal: String) -> Self {
        StageError::new(
            ErrorClass::Transient,
            JobError::internal_only(internal).code(Self::ARTIFACT_MISMATCH),
        )
    }

    /// The error a stage's panic becomes: permanent (a bug is not fixed by
    /// waiting), code `panic`, with the panic's message for operators only.
    pub(crate) fn from_panic(payload: &(dyn Any + Send)) -> Self {
        StageError::new(
            ErrorClass::Permanent,
            JobError::internal_only(format!("panicked: {}", panic_message(payload))).code("panic"),
        )
    }
}

/// The text a panic was raised with: `panic!` gives a `&str` or a `String`;
/// `panic_any` can give anything else.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "a non-text payload"
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        };
        write!(f, "{class} stage error: {}", self.error.internal_message())
    }
}

impl std::error::Error for StageError {}

/// The default class of an I/O error, by its kind.
///
/// Transient: the kinds that describe a moment rather than the request —
/// interrupted, would block, timed out, busy, out of space or quota, out of
/// memory, and the network kinds (connection refused, reset or aborted, not
/// connected, broken pipe, host or network unreachable, network down).
/// Permanent: what retrying cannot change — not found, permission denied,
/// invalid input or data, unexpected end of file, unsupported, already
/// exists, and the rest of the known kinds. Kinds the standard library does
/// not categorize (`Other`, and those it adds later or leaves uncategorized,
/// such as `EIO`'s) count as transient: a blip misread as permanent loses the
/// job, while a permanent error misread as transient only costs the bounded
/// retries of the [`RetryPolicy`](super::RetryPolicy).
///
/// The stores decide by the same table:
/// [`Error::is_transient`](crate::Error::is_transient) is true for exactly the
/// transient kinds above, so a stage's `?` gives an [`io::Error`] and a
/// [`crate::Error::Io`] holding it the same class. It differs only on the
/// kinds that do not say: not transient there, where retries may be unbounded.
///
/// ```
/// use std::io::ErrorKind;
/// use jobsafe::pipeline::{ErrorClass, classify_io};
///
/// assert_eq!(classify_io(ErrorKind::QuotaExceeded), ErrorClass::Transient);
/// assert_eq!(classify_io(ErrorKind::ConnectionReset), ErrorClass::Transient);
/// assert_eq!(classify_io(ErrorKind::PermissionDenied), ErrorClass::Permanent);
/// assert_eq!(classify_io(ErrorKind::Other), ErrorClass::Transient);
/// ```
pub fn classify_io(kind: io::ErrorKind) -> ErrorClass {
    stage_class(transient::of_kind(kind))
}

/// A stage's class for an I/O error of `transience`: one that does not say
/// is retried, within the retry policy's bound.
fn stage_class(transience: Transience) -> ErrorClass {
    match transience {
        Transience::Permanent => ErrorClass::Permanent,
        Transience::Transient | Transience::Unknown => ErrorClass::Transient,
    }
}

impl From<io::Error> for StageError {
    fn from(e: io::Error) -> Self {
        StageError::new(
            stage_class(transient::of_error(&e)),
            JobError::internal_only(format!("I/O error: {e}")).code("io"),
        )
    }
}

impl From<crate::Error> for StageError {
    fn from(e: crate::Error) -> Self {
        let class = match &e {
            // As a bare `io::Error` would be: an error that does not say is
            // retried here, within the retry policy's bound.
            crate::Error::Io { source, .. } => stage_class(transient::of_error(source)),
            e if e.is_transient() => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        };
        StageError::new(class, JobError::internal_only(error_chain(&e)))
    }
}

/// An error and its sources, one after the other.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
