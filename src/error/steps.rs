//! Every I/O step jobsafe reports, by name: the error sites and the decisions
//! that depend on a step (a store's poisoning, a retried write) use these
//! constants, so rewording a message cannot change what a store does.

use super::io_step::{IoAction, IoStep};

const fn step(action: IoAction, text: &'static str) -> IoStep {
    IoStep::new(action, text)
}

// Opening what should exist.
pub(crate) const OPEN_ARTIFACT: IoStep = step(IoAction::Open, "open artifact");
pub(crate) const OPEN_COMPACTION_LOCK: IoStep = step(IoAction::Open, "open compaction lock");
pub(crate) const OPEN_JOURNAL: IoStep = step(IoAction::Open, "open journal");
pub(crate) const OPEN_LOCK_FILE: IoStep = step(IoAction::Open, "open lock file");
pub(crate) const OPEN_HANDLE_LOCK: IoStep = step(IoAction::Open, "open handle lock file");
pub(crate) const OPEN_STRIPE_LOCK: IoStep = step(IoAction::Open, "open stripe lock");
pub(crate) const OPEN_STORE_NOT_CREATED: IoStep =
    step(IoAction::Open, "open store (creating it was not asked for)");
pub(crate) const OPEN_STORE_WITHOUT_MARKER: IoStep =
    step(IoAction::Open, "open store (no marker file)");

// Creating files and directories.
pub(crate) const CREATE_ARTIFACT_DIRECTORY: IoStep =
    step(IoAction::Create, "create artifact directory");
pub(crate) const CREATE_DIRECTORY: IoStep = step(IoAction::Create, "create directory");
pub(crate) const CREATE_NEW_JOURNAL: IoStep = step(IoAction::Create, "create new journal");
pub(crate) const CREATE_QUARANTINE_DIRECTORY: IoStep =
    step(IoAction::Create, "create quarantine directory");
pub(crate) const CREATE_STORE_DIRECTORY: IoStep = step(IoAction::Create, "create store directory");
pub(crate) const CREATE_STRIPE_LOCK: IoStep = step(IoAction::Create, "create stripe lock");
pub(crate) const CREATE_TEMP_FILE: IoStep = step(IoAction::Create, "create temp file");

// Reading files.
pub(crate) const READ_ARTIFACT: IoStep = step(IoAction::Read, "read artifact");
// Only `FileClock` reads one, behind the feature `testing`.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) const READ_CLOCK_FILE: IoStep = step(IoAction::Read, "read clock file");
pub(crate) const READ_FORMAT_MARKER: IoStep = step(IoAction::Read, "read format marker");
pub(crate) const READ_JOURNAL: IoStep = step(IoAction::Read, "read journal");
pub(crate) const READ_JOURNAL_HEADER: IoStep = step(IoAction::Read, "read journal header");
pub(crate) const READ_JOURNAL_VALUE: IoStep = step(IoAction::Read, "read value from journal");
pub(crate) const READ_RECORD: IoStep = step(IoAction::Read, "read record");
// Only PgStore's TLS reads one, behind the feature `postgres-tls`.
#[cfg_attr(not(feature = "postgres-tls"), allow(dead_code))]
pub(crate) const READ_SSL_ROOT_CERT: IoStep = step(IoAction::Read, "read sslrootcert");
pub(crate) const READ_SEGMENT_FILE: IoStep = step(IoAction::Read, "read segment file");
pub(crate) const READ_STORE_MARKER: IoStep = step(IoAction::Read, "read store marker");
pub(crate) const READ_VERSION_FLOOR: IoStep = step(IoAction::Read, "read version floor");
pub(crate) const SCAN_JOURNAL: IoStep = step(IoAction::Read, "scan journal");

// Writing files.
pub(crate) const WRITE_JOURNAL_FRAME: IoStep = step(IoAction::Write, "write journal frame");
pub(crate) const WRITE_NEW_JOURNAL: IoStep = step(IoAction::Write, "write new journal");
pub(crate) const WRITE_TEMP_FILE: IoStep = step(IoAction::Write, "write temp file");
pub(crate) const PREALLOCATE_JOURNAL_SPACE: IoStep =
    step(IoAction::Write, "preallocate journal space");
pub(crate) const PREALLOCATE_NEW_JOURNAL: IoStep = step(IoAction::Write, "preallocate new journal");
pub(crate) const CLEAR_TORN_JOURNAL_TAIL: IoStep = step(IoAction::Write, "clear torn journal tail");

// Flushes: a failure poisons the store whose data it flushed.
pub(crate) const FDATASYNC_CLEARED_JOURNAL_TAIL: IoStep =
    step(IoAction::Flush, "fdatasync cleared journal tail");
pub(crate) const FDATASYNC_JOURNAL: IoStep = step(IoAction::Flush, "fdatasync journal");
pub(crate) const FSYNC_DIRECTORY: IoStep = step(IoAction::Flush, "fsync directory");
pub(crate) const FSYNC_NEW_JOURNAL: IoStep = step(IoAction::Flush, "fsync new journal");
pub(crate) const FSYNC_PREALLOCATED_JOURNAL_SPACE: IoStep =
    step(IoAction::Flush, "fsync preallocated journal space");
pub(crate) const FSYNC_STORE_DIRECTORY: IoStep = step(IoAction::Flush, "fsync store directory");
pub(crate) const FSYNC_TEMP_FILE: IoStep = step(IoAction::Flush, "fsync temp file");

// Renames and links.
pub(crate) const CLAIM_TEMP_DIRECTORY: IoStep = step(IoAction::Rename, "claim temp directory");
pub(crate) const LINK_TEMP_FILE: IoStep = step(IoAction::Rename, "link temp file to");
pub(crate) const MOVE_RECORD_TO_QUARANTINE: IoStep =
    step(IoAction::Rename, "move record to quarantine");
pub(crate) const RENAME_DIRECTORY_INTO_PLACE: IoStep =
    step(IoAction::Rename, "rename directory into place");
pub(crate) const RENAME_NEW_JOURNAL_INTO_PLACE: IoStep =
    step(IoAction::Rename, "rename new journal into place");
pub(crate) const RENAME_TEMP_FILE: IoStep = step(IoAction::Rename, "rename temp file over");

// Removals.
pub(crate) const REMOVE_ABANDONED_JOURNAL: IoStep =
    step(IoAction::Remove, "remove abandoned journal");
pub(crate) const REMOVE_DIRECTORY: IoStep = step(IoAction::Remove, "remove directory");
pub(crate) const REMOVE_FILE: IoStep = step(IoAction::Remove, "remove file");
pub(crate) const REMOVE_JOURNAL: IoStep = step(IoAction::Remove, "remove journal");
pub(crate) const REMOVE_PARTIAL_ARTIFACT: IoStep =
    step(IoAction::Remove, "remove partial artifact");
pub(crate) const REMOVE_RECORD: IoStep = step(IoAction::Remove, "remove record");
pub(crate) const REMOVE_TEMP_DIRECTORY: IoStep = step(IoAction::Remove, "remove temp directory");
pub(crate) const REMOVE_TEMP_FILE: IoStep = step(IoAction::Remove, "remove temp file");

// Listing directories.
pub(crate) const LIST_STORE_DIRECTORY: IoStep = step(IoAction::List, "list store directory");
pub(crate) const READ_DIRECTORY: IoStep = step(IoAction::List, "read directory");
pub(crate) const READ_JOURNAL_DIRECTORY: IoStep = step(IoAction::List, "read journal directory");
pub(crate) const READ_STORE_DIRECTORY: IoStep = step(IoAction::List, "read store directory");

// Looking at paths without reading them.
pub(crate) const INSPECT_ARTIFACT: IoStep = step(IoAction::Inspect, "inspect artifact");
pub(crate) const INSPECT_ARTIFACT_DIRECTORY: IoStep =
    step(IoAction::Inspect, "inspect artifact directory");
pub(crate) const INSPECT_DIRECTORY: IoStep = step(IoAction::Inspect, "inspect directory");
pub(crate) const INSPECT_STORE_DIRECTORY: IoStep =
    step(IoAction::Inspect, "inspect store directory");
pub(crate) const STORE_PATH_NOT_A_DIRECTORY: IoStep = step(
    IoAction::Inspect,
    "open store at a path that is not a directory:",
);
pub(crate) const STORE_PATH_NEITHER_DIRECTORY_NOR_LINK: IoStep = step(
    IoAction::Inspect,
    "open store at a path that is neither a directory nor a symlink to one:",
);
pub(crate) const STORE_LINK_TARGET_MISSING: IoStep = step(
    IoAction::Inspect,
    "open store at a symlink whose target does not exist:",
);
pub(crate) const RESOLVE_STORE_PATH: IoStep = step(IoAction::Inspect, "resolve the store path");
pub(crate) const STAT: IoStep = step(IoAction::Inspect, "stat");
pub(crate) const STAT_JOB_DIRECTORY: IoStep = step(IoAction::Inspect, "stat job directory");
pub(crate) const STAT_JOURNAL: IoStep = step(IoAction::Inspect, "stat journal");
pub(crate) const STAT_TEMP_DIRECTORY: IoStep = step(IoAction::Inspect, "stat temp directory");
pub(crate) const STAT_TEMP_FILE: IoStep = step(IoAction::Inspect, "stat temp file");

// File locks.
pub(crate) const LOCK_COMPACTION: IoStep = step(IoAction::Lock, "lock compaction");
pub(crate) const LOCK_STORE: IoStep = step(IoAction::Lock, "lock store");
pub(crate) const LOCK_STORE_SHARED: IoStep = step(IoAction::Lock, "lock store (shared)");
pub(crate) const LOCK_STORE_HANDLE: IoStep = step(IoAction::Lock, "lock store handle");
pub(crate) const LOCK_STRIPE: IoStep = step(IoAction::Lock, "lock stripe");
pub(crate) const LOCK_STRIPE_SHARED: IoStep = step(IoAction::Lock, "lock stripe (shared)");

// Steps that are no single call.
pub(crate) const TARGET_WITHOUT_FILE_NAME: IoStep =
    step(IoAction::Other, "atomic write needs a file name, not");
pub(crate) const COMMIT: IoStep = step(IoAction::Other, "commit");
pub(crate) const COMMIT_GROUP: IoStep = step(IoAction::Other, "commit group");
pub(crate) const COMPACT_JOURNAL: IoStep = step(IoAction::Other, "compact journal");

/// Every step above.
#[cfg(test)]
const ALL: [IoStep; 81] = [
    OPEN_ARTIFACT,
    OPEN_COMPACTION_LOCK,
    OPEN_JOURNAL,
    OPEN_LOCK_FILE,
    OPEN_HANDLE_LOCK,
    OPEN_STRIPE_LOCK,
    OPEN_STORE_NOT_CREATED,
    OPEN_STORE_WITHOUT_MARKER,
    CREATE_ARTIFACT_DIRECTORY,
    CREATE_DIRECTORY,
    CREATE_NEW_JOURNAL,
    CREATE_QUARANTINE_DIRECTORY,
    CREATE_STORE_DIRECTORY,
    CREATE_STRIPE_LOCK,
    CREATE_TEMP_FILE,
    READ_ARTIFACT,
    READ_CLOCK_FILE,
    READ_FORMAT_MARKER,
    READ_JOURNAL,
    READ_JOURNAL_HEADER,
    READ_JOURNAL_VALUE,
    READ_RECORD,
    READ_SSL_ROOT_CERT,
    READ_SEGMENT_FILE,
    READ_STORE_MARKER,
    READ_VERSION_FLOOR,
    SCAN_JOURNAL,
    WRITE_JOURNAL_FRAME,
    WRITE_NEW_JOURNAL,
    WRITE_TEMP_FILE,
    PREALLOCATE_JOURNAL_SPACE,
    PREALLOCATE_NEW_JOURNAL,
    CLEAR_TORN_JOURNAL_TAIL,
    FDATASYNC_CLEARED_JOURNAL_TAIL,
    FDATASYNC_JOURNAL,
    FSYNC_DIRECTORY,
    FSYNC_NEW_JOURNAL,
    FSYNC_PREALLOCATED_JOURNAL_SPACE,
    FSYNC_STORE_DIRECTORY,
    FSYNC_TEMP_FILE,
    CLAIM_TEMP_DIRECTORY,
    LINK_TEMP_FILE,
    MOVE_RECORD_TO_QUARANTINE,
    RENAME_DIRECTORY_INTO_PLACE,
    RENAME_NEW_JOURNAL_INTO_PLACE,
    RENAME_TEMP_FILE,
    REMOVE_ABANDONED_JOURNAL,
    REMOVE_DIRECTORY,
    REMOVE_FILE,
    REMOVE_JOURNAL,
    REMOVE_PARTIAL_ARTIFACT,
    REMOVE_RECORD,
    REMOVE_TEMP_DIRECTORY,
    REMOVE_TEMP_FILE,
    LIST_STORE_DIRECTORY,
    READ_DIRECTORY,
    READ_JOURNAL_DIRECTORY,
    READ_STORE_DIRECTORY,
    INSPECT_ARTIFACT,
    INSPECT_ARTIFACT_DIRECTORY,
    INSPECT_DIRECTORY,
    INSPECT_STORE_DIRECTORY,
    STORE_PATH_NOT_A_DIRECTORY,
    STORE_PATH_NEITHER_DIRECTORY_NOR_LINK,
    STORE_LINK_TARGET_MISSING,
    RESOLVE_STORE_PATH,
    STAT,
    STAT_JOB_DIRECTORY,
    STAT_JOURNAL,
    STAT_TEMP_DIRECTORY,
    STAT_TEMP_FILE,
    LOCK_COMPACTION,
    LOCK_STORE,
    LOCK_STORE_SHARED,
    LOCK_STORE_HANDLE,
    LOCK_STRIPE,
    LOCK_STRIPE_SHARED,
    TARGET_WITHOUT_FILE_NAME,
    COMMIT,
    COMMIT_GROUP,
    COMPACT_JOURNAL,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_has_its_own_words() {
        let mut texts: Vec<&str> = ALL.iter().map(|s| s.text()).collect();
        texts.sort_unstable();
        let before = texts.len();
        texts.dedup();
        assert_eq!(texts.len(), before, "two steps share their words");
    }

    /// The words of a flush say so, and only a flush's do: a reader of a
    /// message must not take a write for a flush, or the other way round.
    #[test]
    fn the_words_of_a_step_agree_with_its_action() {
        for step in ALL {
            let says_flush =
                step.text().starts_with("fsync") || step.text().starts_with("fdatasync");
            assert_eq!(step.is_flush(), says_flush, "{step}");
        }
    }
}
