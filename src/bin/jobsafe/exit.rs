//! Exit codes, and the error every command returns.

use std::fmt;
use std::process::ExitCode;

/// How the process ends. The numbers are part of the interface (scripts test
/// them) and are listed in `jobsafe --help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// Done.
    Ok = 0,
    /// The command failed: the store could not be opened or read, a change was
    /// refused by the library (a job that cannot be retried), or a record could
    /// not be read.
    Error = 1,
    /// The command line was wrong (clap uses 2 for its own usage errors too).
    Usage = 2,
    /// The lock, job or reservation named does not exist.
    NotFound = 3,
    /// A destructive command was not confirmed: nothing was changed.
    NotConfirmed = 4,
    /// `jobs watch`: the job ended failed.
    JobFailed = 5,
    /// `jobs watch`: the job ended cancelled.
    JobCancelled = 6,
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> Self {
        ExitCode::from(code as u8)
    }
}

/// The text `--help` shows about exit codes.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done
  1  error (store unreachable or unreadable, change refused, unreadable records listed)
  2  usage error (bad arguments, missing --store)
  3  not found (no such lock, job or reservation)
  4  not confirmed: a destructive command was declined, or given neither --yes nor a terminal
  5  jobs watch: the job failed
  6  jobs watch: the job was cancelled";

/// Why a command failed, and with which exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: Code,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A failure of the library, with what was being done and where: the
    /// error's own message and its sources follow.
    ///
    /// A database error is shown without the library's name of the server:
    /// `context` names the store already, by its URL without a password, and
    /// the library's name is parsed from the same URL by the client's rules,
    /// which take the end of a password holding an unencoded `@` for a host.
    pub(crate) fn library(context: impl fmt::Display, error: &jobsafe::Error) -> Self {
        let code = match error {
            jobsafe::Error::JobNotFound { .. } => Code::NotFound,
            _ => Code::Error,
        };
        let mut message = match error {
            jobsafe::Error::Database { step, .. } => format!("{context}: {step}"),
            _ => format!("{context}: {error}"),
        };
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Failure { code, message }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure::new(Code::Usage, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Failure::new(Code::NotFound, message)
    }

    pub(crate) fn code(&self) -> Code {
        self.code
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a command returns.
pub(crate) type Outcome = Result<Code, Failure>;
