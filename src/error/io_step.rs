//! [`IoStep`]: what a failed I/O operation was doing, as a value rather than a
//! sentence, so that decisions (poisoning a store, retrying a write) do not
//! depend on the wording of a message.

use std::fmt;

/// The kind of operation an [`IoStep`] performs.
///
/// Decide on this, not on the step's words: the words may be reworded in any
/// release, the action of a step does not change.
///
/// ```
/// use jobsafe::vfs::{IoAction, IoStep};
///
/// let step = IoStep::new(IoAction::Flush, "fsync export");
/// assert!(step.is_flush());
/// assert!(matches!(step.action(), IoAction::Flush | IoAction::Write));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoAction {
    /// Opening a file or a store that should already exist.
    Open,
    /// Creating a file or a directory.
    Create,
    /// Reading a file's content.
    Read,
    /// Writing a file's content (preallocating and zero-filling included).
    Write,
    /// Flushing a file or a directory to stable storage (`fsync`,
    /// `fdatasync`). After a failed flush what reached the disk is unknown,
    /// which is why a [`DirStore`](crate::DirStore) or a
    /// [`LogStore`](crate::LogStore) poisons itself when a flush of its data
    /// fails.
    Flush,
    /// Renaming or hard-linking a file or a directory into place, or aside.
    Rename,
    /// Removing a file or a directory.
    Remove,
    /// Reading a directory's entries.
    List,
    /// Looking at a file without reading it: its type, size, age or inode, or
    /// where a symlink leads.
    Inspect,
    /// Taking a file lock.
    Lock,
    /// Anything else: starting a thread, a commit or a compaction that failed
    /// for a reason no single call reported, a path refused before any call.
    Other,
}

/// The step of an I/O operation, as [`Error::Io`](crate::Error::Io) reports
/// it: what was being done ([`action`](IoStep::action)) and the words that say
/// it ([`text`](IoStep::text), which is also its `Display`).
///
/// Match on the action (or [`is_flush`](IoStep::is_flush)) to decide
/// something; show the text to people. The text is for messages and may be
/// reworded between releases.
///
/// ```
/// use jobsafe::vfs::{IoAction, IoStep};
/// use jobsafe::{AtomicWriter, Error};
///
/// let dir = tempfile::tempdir()?;
/// let err = AtomicWriter::new()
///     .write(dir.path().join("missing").join("report.json"), b"{}")
///     .unwrap_err();
/// let Error::Io { step, .. } = &err else {
///     unreachable!("a missing directory is an I/O error");
/// };
/// assert_eq!(step.action(), IoAction::Create);
/// assert!(!step.is_flush());
/// assert!(err.to_string().starts_with(&format!("{step} ")));
///
/// // Your own store or test harness names its own steps.
/// let mine = IoStep::new(IoAction::Create, "create scratch directory");
/// assert_eq!(mine.to_string(), "create scratch directory");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoStep {
    action: IoAction,
    text: &'static str,
}

impl IoStep {
    /// A step doing `action`, described by `text` (lower case, without a final
    /// period: it is followed by the path in messages, as in
    /// `"fsync temp file /data/.a.tmp"`).
    pub const fn new(action: IoAction, text: &'static str) -> Self {
        IoStep { action, text }
    }

    /// What the step does.
    pub const fn action(self) -> IoAction {
        self.action
    }

    /// The words that describe the step in messages.
    pub const fn text(self) -> &'static str {
        self.text
    }

    /// Whether the step flushes a file or a directory to stable storage
    /// (its action is [`IoAction::Flush`]).
    pub const fn is_flush(self) -> bool {
        matches!(self.action, IoAction::Flush)
    }
}

impl fmt::Display for IoStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_shows_its_text_and_decides_by_its_action() {
        let step = IoStep::new(IoAction::Flush, "fsync temp file");
        assert_eq!(step.to_string(), "fsync temp file");
        assert_eq!(format!("{step:>16}|"), " fsync temp file|");
        assert!(step.is_flush() && step.action() == IoAction::Flush);
        // The same words doing something else are another step.
        let reworded = IoStep::new(IoAction::Write, "fsync temp file");
        assert_ne!(step, reworded);
        assert!(!reworded.is_flush());
    }
}
