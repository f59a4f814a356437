//! Where a pipeline keeps artifacts on disk: one directory per job and one per
//! subject under the artifact root, named so that any job id or subject is safe.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::vfs::{FileKind, KnownDurable, Vfs};

/// Directory under the artifact root holding one directory per job.
pub(crate) const JOBS_DIR: &str = "jobs";
/// Directory under the artifact root holding one directory per subject.
pub(crate) const SUBJECTS_DIR: &str = "subjects";
/// Longest artifact name, in bytes.
pub(crate) const MAX_ARTIFACT_NAME: usize = super::Artifact::MAX_NAME_LEN;

/// A directory name for a job id or subject: kept as it is when it is short and
/// made only of `a-z`, `0-9`, `-` and `_` (UUIDs, say); otherwise `~` and 32 hex
/// digits of its SHA-256. `~` never appears in a plain name, so the two kinds
/// cannot collide, and no name can traverse, hide or differ from another by case
/// alone.
pub(crate) fn dir_name(id: &str) -> String {
    let plain = !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'));
    if plain {
        return id.to_owned();
    }
    let digest = Sha256::digest(id.as_bytes());
    let mut name = String::with_capacity(33);
    name.push('~');
    for byte in &digest[..16] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// The directory of job `id` under `root`.
pub(crate) fn job_dir(root: &Path, id: &str) -> PathBuf {
    root.join(JOBS_DIR).join(dir_name(id))
}

/// The directory of `subject` under `root`.
pub(crate) fn subject_dir(root: &Path, subject: &str) -> PathBuf {
    root.join(SUBJECTS_DIR).join(dir_name(subject))
}

/// Whether `dir` (below `root`) is a directory, checking every directory from
/// `root` down with `lstat`: `false` if one is absent. A symlink or a file where
/// a directory belongs is [`Error::CorruptFile`] naming it, so that no write or
/// removal follows a link planted below the artifact root out of it. The root
/// itself is the caller's choice and may be a symlink.
pub(crate) fn real_dir<V: Vfs>(vfs: &V, root: &Path, dir: &Path) -> Result<bool> {
    let mut at = root.to_path_buf();
    for part in below(root, dir)?.components() {
        at.push(part);
        match vfs.metadata(&at) {
            Ok(info) if info.kind == FileKind::Dir => {}
            Ok(_) => return Err(not_a_directory(&at)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(steps::INSPECT_ARTIFACT_DIRECTORY, &at, e)),
        }
    }
    Ok(true)
}

/// Creates `dir` (below `root`) and the directories on its way, with the
/// checks of [`real_dir`]; creates `root` too if it is missing. Each directory
/// it creates is flushed into its parent and remembered in `known`; the ones it
/// finds are left to [`make_way_durable`].
pub(crate) fn ensure_dir<V: Vfs>(
    vfs: &V,
    root: &Path,
    known: &KnownDurable,
    dir: &Path,
) -> Result<()> {
    if vfs
        .metadata(root)
        .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
    {
        vfs.create_dir_all_durable(root)
            .at(steps::CREATE_ARTIFACT_DIRECTORY, root)?;
    }
    let mut at = root.to_path_buf();
    for part in below(root, dir)?.components() {
        let parent = at.clone();
        at.push(part);
        match vfs.metadata(&at) {
            Ok(info) if info.kind == FileKind::Dir => continue,
            Ok(_) => return Err(not_a_directory(&at)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(steps::INSPECT_ARTIFACT_DIRECTORY, &at, e)),
        }
        match vfs.create_dir(&at) {
            Ok(()) => {
                // Read before the flush, which then covers the entry read.
                let inode = vfs.metadata(&at).ok().map(|info| info.inode);
                vfs.sync_dir(&parent).at(steps::FSYNC_DIRECTORY, &parent)?;
                if let Some(inode) = inode {
                    known.insert(&at, inode);
                }
            }
            // Made by another writer meanwhile: check what it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !real_dir(vfs, root, &at)? {
                    return Err(Error::io(steps::CREATE_ARTIFACT_DIRECTORY, &at, e));
                }
            }
            Err(e) => return Err(Error::io(steps::CREATE_ARTIFACT_DIRECTORY, &at, e)),
        }
    }
    Ok(())
}

/// Makes `root`, and every directory from it down to `dir`, durable in its
/// parent: flushes the parent of each one that `known` does not hold, which is
/// one another writer (another runner, before or after a takeover) created and
/// may not have flushed yet, or died before it did. The rule, and why it is
/// needed, is [`KnownDurable`]'s. A `root` that is a symlink is the caller's
/// choice, and left alone.
///
/// Call it once the write's temp file is in `dir`: then no directory on the way
/// is empty, none can be removed by a purge that checks first, and the ones
/// made durable are the ones the artifact lands in.
pub(crate) fn make_way_durable<V: Vfs>(
    vfs: &V,
    root: &Path,
    known: &KnownDurable,
    dir: &Path,
) -> Result<()> {
    let mut chain = vec![root.to_path_buf()];
    let mut at = root.to_path_buf();
    for part in below(root, dir)?.components() {
        at.push(part);
        chain.push(at.clone());
    }
    for dir in &chain {
        let info = vfs
            .metadata(dir)
            .map_err(|e| Error::io(steps::INSPECT_ARTIFACT_DIRECTORY, dir, e))?;
        if info.kind != FileKind::Dir {
            if dir == root {
                continue;
            }
            return Err(not_a_directory(dir));
        }
        if known.contains(dir, info.inode) {
            continue;
        }
        let parent = match dir.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => continue,
        };
        vfs.sync_dir(parent).at(steps::FSYNC_DIRECTORY, parent)?;
        known.insert(dir, info.inode);
    }
    Ok(())
}

/// The directory holding `path` (empty if none).
pub(crate) fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

fn below<'a>(root: &Path, dir: &'a Path) -> Result<&'a Path> {
    dir.strip_prefix(root).map_err(|_| {
        Error::InvalidArgument(format!(
            "{} is not below the artifact root {}",
            dir.display(),
            root.display()
        ))
    })
}

fn not_a_directory(path: &Path) -> Error {
    crate::store::not_followed(path, "an artifact directory")
}

/// Checks that an artifact name is one plain file name: not empty, no `/` or NUL,
/// not starting with a dot (the names of temp files and `.`/`..`), at most
/// [`Artifact::MAX_NAME_LEN`](super::Artifact::MAX_NAME_LEN) bytes.
pub(crate) fn check_artifact_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_ARTIFACT_NAME {
        "is longer than 200 bytes"
    } else if name.starts_with('.') {
        "starts with a dot"
    } else if name.contains(['/', '\\', '\0']) {
        "contains a path separator or NUL"
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument(format!(
        "artifact name {name:?} {reason}: it must be one plain file name"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_or_hashed() {
        assert_eq!(dir_name("0192-abc_d"), "0192-abc_d");
        for hostile in ["..", ".", "a/b", "A", "", "x y", &"a".repeat(101)] {
            let name = dir_name(hostile);
            assert!(
                name.starts_with('~') && name.len() == 33,
                "{hostile:?} -> {name}"
            );
        }
        assert_ne!(dir_name("A"), dir_name("a"));
    }

    #[test]
    fn artifact_names_are_one_plain_file_name() {
        assert!(check_artifact_name("draft.md").is_ok());
        for bad in ["", ".x", "..", "a/b", "a\0", &"a".repeat(201)] {
            assert!(check_artifact_name(bad).is_err(), "{bad:?}");
        }
    }
}
