//! The directories a handle knows to be durable in their parents.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// The directories a store or pipeline handle knows to be durable in their
/// parents, so that a writer flushes a parent only when it cannot know.
///
/// # The rule
///
/// A file survives a power loss only if every directory on its way does, and a
/// directory's entry survives only once its parent was flushed after its
/// `mkdir`. Its creator flushes the parent right after the `mkdir`, but a writer
/// that finds the directory there cannot know that this happened: the creator
/// (another thread, handle or process) may be between its `mkdir` and its
/// flush, or may have died there, and then the entry stays pending until
/// someone flushes that parent. ext4 hides this by committing directory changes
/// in order; strict POSIX does not promise it. So before it acknowledges a
/// write, a writer flushes the parent of every directory on the way that it does
/// not know to be durable, once, and remembers it here. It knows a directory:
///
/// - by its path and its inode number, read (`lstat`) *before* the flush of its
///   parent: that flush then covers the entry that was read. A directory
///   removed since (a store prunes the directories its deletes empty) and
///   created again by someone else is a new inode, not known, flushed again;
/// - as checked *after* the writer's temp file is in the file's directory:
///   from then on no directory on the way is empty, so none can be removed,
///   and the ones checked are the ones the write lands in.
///
/// In the steady state, writes into directories the handle already knows, this
/// costs no flush beyond the write's own, only an `lstat` per directory on the
/// way. A directory this handle created itself is flushed into its parent when
/// created, as before, and known from then on.
///
/// What it does not cover: an inode number names a directory only while that
/// directory exists, and a filesystem may give a removed directory's number to
/// a new one. If a directory this handle knows is removed, another one is
/// created under the same name and given the same number, this handle writes
/// into it before its creator flushed its parent, and the power fails right
/// then, the write can be lost. The handle forgets the directories it removes
/// itself; those other handles remove are what this caveat is about.
///
/// At most [`KnownDurable::CAPACITY`] directories are remembered; past that an
/// arbitrary one is forgotten, and costs one flush again when next written into.
#[derive(Debug, Default)]
pub(crate) struct KnownDurable {
    dirs: Mutex<HashMap<PathBuf, u64>>,
}

impl KnownDurable {
    /// How many directories a handle remembers: about 2 MiB at most, and far
    /// more than the directories a service writes into at once.
    pub(crate) const CAPACITY: usize = 16_384;

    /// Whether `dir`, found as inode `inode`, is known to be durable in its
    /// parent.
    pub(crate) fn contains(&self, dir: &Path, inode: u64) -> bool {
        self.dirs.lock().get(dir) == Some(&inode)
    }

    /// Records that `dir`, found as inode `inode` before its parent was
    /// flushed, is durable in it.
    pub(crate) fn insert(&self, dir: &Path, inode: u64) {
        let mut dirs = self.dirs.lock();
        if dirs.len() >= Self::CAPACITY && !dirs.contains_key(dir) {
            let victim = dirs.keys().next().cloned();
            if let Some(victim) = victim {
                dirs.remove(&victim);
            }
        }
        dirs.insert(dir.to_path_buf(), inode);
    }

    /// Forgets `dir`, which this handle removed.
    pub(crate) fn forget(&self, dir: &Path) {
        self.dirs.lock().remove(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_known_by_path_and_inode_and_the_set_stays_bounded() {
        let known = KnownDurable::default();
        let a = Path::new("/s/data/a.d");
        assert!(!known.contains(a, 7));
        known.insert(a, 7);
        assert!(known.contains(a, 7));
        // Made again: another inode.
        assert!(!known.contains(a, 8));
        known.forget(a);
        assert!(!known.contains(a, 7));
        for i in 0..KnownDurable::CAPACITY as u64 + 10 {
            known.insert(&PathBuf::from(format!("/s/data/{i}.d")), i);
        }
        assert_eq!(known.dirs.lock().len(), KnownDurable::CAPACITY);
    }
}
