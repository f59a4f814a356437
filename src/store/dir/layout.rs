//! Where everything of a [`DirStore`](super::DirStore) lives under its root.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::naming::{self, DIR_SUFFIX, RECORD_SUFFIX, SEGMENT_FILE};
use super::stripes;
use crate::atomic::{AtomicWriter, is_temp_name};
use crate::clock::Clock;
use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::key::Key;
use crate::store::{is_own_dir, is_torn, read_own_file};
use crate::vfs::{FileKind, KnownDurable, Vfs};

const MARKER: &str = "jobsafe-dirstore";
const MARKER_CONTENT: &str = "jobsafe-dirstore 1\n";
/// The most a marker is read of: any marker of another format that long is
/// refused all the same.
const MAX_MARKER_LEN: usize = 256;
const DATA: &str = "data";
const STRIPES: &str = "stripes";
const JOURNAL: &str = "journal";
const QUARANTINE: &str = "quarantine";

#[derive(Debug)]
pub(super) struct Layout {
    pub(super) root: PathBuf,
    pub(super) data: PathBuf,
    pub(super) stripes: PathBuf,
    pub(super) journal: PathBuf,
    pub(super) quarantine: PathBuf,
}

impl Layout {
    /// Opens (and with `create`, creates) the layout at `root`.
    ///
    /// Creation is idempotent and safe to race: every step tolerates another
    /// process having done it, and the marker is written last. It is flushed
    /// whatever the durability (creation is rare): a relaxed store may lose
    /// writes, never the ability to open. A marker that holds only part of its
    /// bytes (an older release in the relaxed mode could leave one after a
    /// power loss) is a creation cut short, completed like a missing one.
    ///
    /// A creator flushes the root's entry and the four directories before it
    /// writes the marker, so a marker found means they were made durable,
    /// unless their creator is still running, or died before its flush, and
    /// the marker's own entry may still be pending. One flush of the root at
    /// every open, whatever the durability, covers all of them, whoever made
    /// them: a store that opened opens again after a power loss.
    pub(super) fn open<V: Vfs>(
        writer: &AtomicWriter<V>,
        root: &Path,
        create: bool,
    ) -> Result<Self> {
        let vfs = writer.vfs();
        let layout = Layout {
            root: root.to_path_buf(),
            data: root.join(DATA),
            stripes: root.join(STRIPES),
            journal: root.join(JOURNAL),
            quarantine: root.join(QUARANTINE),
        };
        let marker = root.join(MARKER);
        let found = read_own_file(vfs, &marker, MAX_MARKER_LEN, steps::READ_STORE_MARKER)?;
        let creating = match found {
            Some(bytes) if bytes == MARKER_CONTENT.as_bytes() => false,
            Some(bytes) if is_torn(&bytes, MARKER_CONTENT.as_bytes()) => {
                if !create {
                    return Err(Error::CorruptFile {
                        path: marker,
                        reason: format!(
                            "holds {} of the {} bytes of a store marker: a creation cut \
                             short; open with creation allowed to complete it",
                            bytes.len(),
                            MARKER_CONTENT.len()
                        ),
                    });
                }
                true
            }
            Some(_) => {
                return Err(Error::CorruptFile {
                    path: marker,
                    reason: format!("expected {MARKER_CONTENT:?}: not a store of this format"),
                });
            }
            None if create => true,
            None => {
                let missing = io::Error::from(io::ErrorKind::NotFound);
                return Err(Error::io(steps::OPEN_STORE_WITHOUT_MARKER, marker, missing));
            }
        };
        if creating {
            vfs.create_dir_all_durable(root)
                .at(steps::CREATE_STORE_DIRECTORY, root)?;
            layout.check_empty_or_ours(vfs)?;
        }
        // Always ensure the pieces: cheap, and repairs a creation cut short.
        for dir in [
            &layout.data,
            &layout.stripes,
            &layout.journal,
            &layout.quarantine,
        ] {
            if is_own_dir(vfs, dir)? {
                continue;
            }
            match vfs.create_dir(dir) {
                Ok(()) => {}
                // Another opener made it meanwhile, unless it is not a directory.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    is_own_dir(vfs, dir)?;
                }
                Err(e) => return Err(Error::io(steps::CREATE_DIRECTORY, dir, e)),
            }
        }
        // Not flushed: a lock file lost to a power loss is created again by the
        // next open, and the version floors beside them flush the directory
        // when written (the power-loss simulation finds no state that needs it).
        for stripe in 0..stripes::STRIPES {
            let path = stripes::lock_path(&layout.stripes, stripe);
            crate::store::open_own_file(vfs, &path, 0o600, steps::CREATE_STRIPE_LOCK)?;
        }
        vfs.sync_dir(root).at(steps::FSYNC_STORE_DIRECTORY, root)?;
        if creating {
            writer.write_durably(&marker, MARKER_CONTENT.as_bytes())?;
        }
        Ok(layout)
    }

    /// Refuses to turn a directory holding anything else into a store.
    fn check_empty_or_ours<V: Vfs>(&self, vfs: &V) -> Result<()> {
        let names = vfs
            .read_dir(&self.root)
            .at(steps::READ_STORE_DIRECTORY, &self.root)?;
        // The marker too: another opener racing this one may have just written it.
        let ours = [MARKER, DATA, STRIPES, JOURNAL, QUARANTINE];
        let foreign: Vec<String> = names
            .iter()
            .map(|name| name.to_string_lossy())
            .filter(|name| !ours.contains(&name.as_ref()) && !is_temp_name(name))
            .map(|name| format!("{name:?}"))
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        Err(Error::CorruptFile {
            path: self.root.clone(),
            reason: format!(
                "not a jobsafe store (no complete {MARKER} file) and not empty: holds {}",
                crate::store::name_some(&foreign)
            ),
        })
    }

    /// `data/<s0>.d/<s1>.d/.../<sn>.r`
    pub(super) fn record_path(&self, key: &Key) -> PathBuf {
        let segments = key.segments();
        let mut path = self.dir_path(&segments[..segments.len() - 1]);
        path.push(format!("{}{RECORD_SUFFIX}", naming::encode(key.name())));
        path
    }

    /// The directory holding the keys that extend `segments`.
    pub(super) fn dir_path(&self, segments: &[String]) -> PathBuf {
        let mut path = self.data.clone();
        for s in segments {
            path.push(format!("{}{DIR_SUFFIX}", naming::encode(s)));
        }
        path
    }

    /// Creates the directories on the way to `key`'s record and returns the
    /// record's path. Each directory it creates is flushed into its parent
    /// (with [`Durability::Full`](crate::Durability::Full)) and remembered in
    /// `known`; the ones it finds are left to
    /// [`make_way_durable`](Layout::make_way_durable).
    ///
    /// Every directory on the way is checked with `lstat`: a symlink (or a file)
    /// planted where a directory of the store belongs is refused, never followed,
    /// so that no write lands outside the store.
    pub(super) fn ensure_parent<V: Vfs>(
        &self,
        writer: &AtomicWriter<V>,
        known: &KnownDurable,
        key: &Key,
    ) -> Result<PathBuf> {
        let vfs = writer.vfs();
        let segments = key.segments();
        is_own_dir(vfs, &self.data)?;
        let mut dir = self.data.clone();
        for segment in &segments[..segments.len() - 1] {
            let parent = dir.clone();
            let stem = naming::encode(segment);
            dir.push(format!("{stem}{DIR_SUFFIX}"));
            if is_own_dir(vfs, &dir)? {
                continue;
            }
            if naming::is_hashed(&stem) {
                create_hashed_dir(writer, &parent, &dir, segment)?;
            } else {
                match vfs.create_dir(&dir) {
                    Ok(()) => {}
                    // Made by another writer meanwhile, unless it is not a directory.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        is_own_dir(vfs, &dir)?;
                        continue;
                    }
                    Err(e) => return Err(Error::io(steps::CREATE_DIRECTORY, dir, e)),
                }
            }
            if writer.durability_level() == crate::Durability::Full {
                // Read before the flush, which then covers the entry read. Gone
                // already (pruned by a delete): the write that follows fails and
                // is retried.
                let inode = dir_inode(vfs, &dir)?;
                vfs.sync_dir(&parent).at(steps::FSYNC_DIRECTORY, &parent)?;
                if let Some(inode) = inode {
                    known.insert(&dir, inode);
                }
            }
        }
        Ok(self.record_path(key))
    }

    /// Makes every directory on the way to `key`'s record durable in its
    /// parent: flushes the parent of each one this handle does not know to be
    /// durable, which is one that another writer created (see
    /// [`KnownDurable`] for the rule and why it is needed).
    ///
    /// Call it once the write's temp file is in the record's directory: then no
    /// directory on the way is empty, none can be pruned, and the ones checked
    /// are the ones the record lands in. `data/` and the root are made durable
    /// at open.
    pub(super) fn make_way_durable<V: Vfs>(
        &self,
        writer: &AtomicWriter<V>,
        known: &KnownDurable,
        key: &Key,
    ) -> Result<()> {
        if writer.durability_level() != crate::Durability::Full {
            return Ok(());
        }
        let vfs = writer.vfs();
        let segments = key.segments();
        let mut dir = self.data.clone();
        for segment in &segments[..segments.len() - 1] {
            let parent = dir.clone();
            dir.push(format!("{}{DIR_SUFFIX}", naming::encode(segment)));
            let inode = dir_inode(vfs, &dir)?.ok_or_else(|| {
                Error::io(
                    steps::CREATE_DIRECTORY,
                    &dir,
                    io::Error::from(io::ErrorKind::NotFound),
                )
            })?;
            if known.contains(&dir, inode) {
                continue;
            }
            // Found made by another writer, which may not have flushed it yet,
            // or died before it did.
            vfs.sync_dir(&parent).at(steps::FSYNC_DIRECTORY, &parent)?;
            known.insert(&dir, inode);
        }
        Ok(())
    }

    /// Checks that the directories on the way to `key`'s record are real
    /// directories (or absent), so that removing or moving the record cannot reach
    /// outside the store through a planted symlink.
    pub(super) fn check_parents<V: Vfs>(&self, vfs: &V, key: &Key) -> Result<()> {
        let segments = key.segments();
        self.check_dirs(vfs, &segments[..segments.len() - 1])
            .map(|_| ())
    }

    /// Whether the directory of the keys extending `segments` exists, checking
    /// every directory on the way as [`is_own_dir`] does.
    pub(super) fn check_dirs<V: Vfs>(&self, vfs: &V, segments: &[String]) -> Result<bool> {
        if !is_own_dir(vfs, &self.data)? {
            return Ok(false);
        }
        let mut dir = self.data.clone();
        for segment in segments {
            dir.push(format!("{}{DIR_SUFFIX}", naming::encode(segment)));
            if !is_own_dir(vfs, &dir)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Where a record file moved aside goes: unique, and named after the original.
    pub(super) fn quarantine_path(&self, record: &Path) -> PathBuf {
        let name = record
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.quarantine
            .join(format!("{}-{name}", uuid::Uuid::now_v7().simple()))
    }
}

/// How the temp name of a hashed directory being built starts.
const TEMP_DIR_PREFIX: &str = ".dir-";

/// A directory whose name is hashed carries its segment in a `.segment` file. It is
/// built under a temp name and renamed into place, so it never exists without it.
fn create_hashed_dir<V: Vfs>(
    writer: &AtomicWriter<V>,
    parent: &Path,
    dir: &Path,
    segment: &str,
) -> Result<()> {
    let vfs = writer.vfs();
    let temp = parent.join(format!(
        "{TEMP_DIR_PREFIX}{}{}",
        uuid::Uuid::new_v4().simple(),
        crate::atomic::TEMP_SUFFIX
    ));
    vfs.create_dir(&temp).at(steps::CREATE_DIRECTORY, &temp)?;
    // Best-effort: a leftover is harmless, and a later sweep removes it.
    let discard = || {
        let _ = vfs.remove_file(&temp.join(SEGMENT_FILE));
        let _ = vfs.remove_dir(&temp);
    };
    if let Err(e) = writer.write(temp.join(SEGMENT_FILE), segment.as_bytes()) {
        discard();
        return Err(e);
    }
    match vfs.rename(&temp, dir) {
        Ok(()) => Ok(()),
        // Another writer created it first (rename onto a non-empty directory fails).
        Err(_) if vfs.metadata(dir).is_ok_and(|m| m.kind == FileKind::Dir) => {
            discard();
            Ok(())
        }
        Err(e) => {
            discard();
            Err(Error::io(steps::RENAME_DIRECTORY_INTO_PLACE, dir, e))
        }
    }
}

/// Removes from `dir` the temp directories of [`create_hashed_dir`] at least
/// `min_age` old by `clock`, with what is in them, and returns how many: a crash
/// between their creation and their rename leaves them, and a writer still
/// building one is far younger than any sensible `min_age`.
pub(super) fn sweep_temp_dirs<V: Vfs>(
    writer: &AtomicWriter<V>,
    dir: &Path,
    min_age: Duration,
    clock: &dyn Clock,
) -> Result<usize> {
    let vfs = writer.vfs();
    let now = UNIX_EPOCH + Duration::from_millis(clock.now_ms());
    let mut removed = 0;
    for name in vfs.read_dir(dir).at(steps::READ_DIRECTORY, dir)? {
        let Some(name) = name
            .to_str()
            .filter(|n| n.starts_with(TEMP_DIR_PREFIX) && is_temp_name(n))
        else {
            continue;
        };
        let path = dir.join(name);
        let info = match vfs.metadata(&path) {
            Ok(info) => info,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(steps::STAT_TEMP_DIRECTORY, path, e)),
        };
        let age = now.duration_since(info.modified).unwrap_or(Duration::ZERO);
        if info.kind != FileKind::Dir || age < min_age {
            continue;
        }
        // Claimed first under a name no writer knows: a writer stalled past
        // `min_age` that renames it into place meanwhile must find it whole, or
        // not at all (then its rename fails and its put retries), never with
        // its `.segment` file removed.
        let path = {
            let claimed = dir.join(format!(
                "{TEMP_DIR_PREFIX}{}{}",
                uuid::Uuid::new_v4().simple(),
                crate::atomic::TEMP_SUFFIX
            ));
            match vfs.rename(&path, &claimed) {
                Ok(()) => claimed,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(steps::CLAIM_TEMP_DIRECTORY, path, e)),
            }
        };
        // Claimed under a name no writer knows: whatever is in it goes, and
        // no link in it is followed.
        match vfs.remove_tree(&path) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => return Err(Error::io(steps::REMOVE_TEMP_DIRECTORY, path, e)),
        }
    }
    Ok(removed)
}

/// The inode of the directory `dir`, `None` if it is absent; anything but a
/// directory there is refused as [`is_own_dir`] does.
fn dir_inode<V: Vfs>(vfs: &V, dir: &Path) -> Result<Option<u64>> {
    match vfs.metadata(dir) {
        Ok(info) if info.kind == FileKind::Dir => Ok(Some(info.inode)),
        Ok(_) => Err(crate::store::not_followed(dir, "a directory of the store")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(steps::INSPECT_DIRECTORY, dir, e)),
    }
}

/// The directory holding `path` (which always has one inside a store).
pub(super) fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}
