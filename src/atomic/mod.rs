//! Crash-safe files: use an [`AtomicWriter`] (or [`write_atomic`]) to write a
//! file that readers and crashes see old or new, never half written.
//!
//! # How it works
//!
//! ```text
//! open(dir/.name.<random>.jobsafe-tmp, O_CREAT|O_EXCL, mode)   temp file beside the target
//! fchmod(mode)                                                  exact mode, whatever the umask
//! write(...)                                                    the new content
//! fsync(temp)                                                   content durable      [Full]
//! rename(temp, dir/name)        or link(temp, name) + unlink    atomic switch (no-clobber)
//! fsync(dir)                                                    switch durable       [Full]
//! ```
//!
//! Readers see the old content or the new, never a mix; a crash at any point leaves
//! the old content or the new (and possibly a temp file, which [`AtomicWriter::sweep`] removes).

#[cfg(feature = "async")]
mod async_face;
mod sweep;

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use async_face::AsyncAtomicWriter;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::durability::Durability;
use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::vfs::{StdVfs, Vfs, VfsFile};

/// Suffix of every temp file the writer creates: see [`AtomicWriter::TEMP_SUFFIX`].
pub(crate) const TEMP_SUFFIX: &str = ".jobsafe-tmp";

/// Writes files so that readers and crashes see the old content or the new, never
/// a mix.
///
/// Defaults: [`Durability::Full`], mode `0o600` ([`AtomicWriter::DEFAULT_MODE`]),
/// replace an existing target; [`AtomicWriter::builder`] changes them. The writer
/// is cheap to clone and holds no open files.
///
/// # A new directory
///
/// A committed write is durable only as far as its directory's own entry is:
/// writing into a directory that was just created (by you, by `mkdir -p`, by
/// `std::fs::create_dir_all`) survives a power loss only once that directory's
/// creation is flushed into its parent. Create such directories with
/// [`Vfs::create_dir_all_durable`]
/// (`StdVfs.create_dir_all_durable(path)`), which flushes every directory it
/// creates into its parent, before the first write into them.
///
/// ```
/// use jobsafe::{AtomicWriter, Durability};
/// use jobsafe::vfs::{StdVfs, Vfs};
/// use std::io::Write;
///
/// let dir = tempfile::tempdir()?;
/// let out = dir.path().join("exports");
/// StdVfs.create_dir_all_durable(&out)?; // the directory survives a power loss too
/// let path = out.join("transcript.json");
///
/// // One call for the common case...
/// jobsafe::write_atomic(&path, b"{\"v\":1}")?;
///
/// // ...or stream into a pending file and commit it explicitly.
/// let writer = AtomicWriter::builder().mode(0o644).build()?;
/// let mut pending = writer.begin(&path)?;
/// pending.write_all(b"{\"v\":2}")?;
/// pending.commit()?;
/// assert_eq!(std::fs::read(&path)?, b"{\"v\":2}");
///
/// // No-clobber: create only if absent.
/// let create_only = AtomicWriter::builder().no_clobber(true).build()?;
/// let err = create_only.write(&path, b"x").unwrap_err();
/// assert!(err.is_already_exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct AtomicWriter<V: Vfs = StdVfs> {
    vfs: V,
    mode: u32,
    durability: Durability,
    no_clobber: bool,
}

impl AtomicWriter<StdVfs> {
    /// Suffix of every temp file the writer creates; [`AtomicWriter::sweep`]
    /// removes only files with it.
    pub const TEMP_SUFFIX: &'static str = TEMP_SUFFIX;

    /// Default permission bits of written files: owner read and write only.
    pub const DEFAULT_MODE: u32 = 0o600;

    /// A writer on the operating system's filesystem with the defaults.
    pub fn new() -> Self {
        AtomicWriter::builder().defaults()
    }

    /// Options for a writer, starting from the defaults.
    pub fn builder() -> AtomicWriterBuilder<StdVfs> {
        AtomicWriterBuilder {
            vfs: StdVfs,
            mode: AtomicWriter::DEFAULT_MODE,
            durability: Durability::Full,
            no_clobber: false,
        }
    }
}

impl Default for AtomicWriter<StdVfs> {
    fn default() -> Self {
        AtomicWriter::new()
    }
}

/// Options for an [`AtomicWriter`], from [`AtomicWriter::builder`].
///
/// ```
/// use jobsafe::{AtomicWriter, Durability};
///
/// let writer = AtomicWriter::builder()
///     .mode(0o640)
///     .durability(Durability::Full)
///     .no_clobber(true)
///     .build()?;
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct AtomicWriterBuilder<V: Vfs = StdVfs> {
    vfs: V,
    mode: u32,
    durability: Durability,
    no_clobber: bool,
}

impl<V: Vfs> AtomicWriterBuilder<V> {
    /// Does all I/O through `vfs` (to count, fail or trace operations in tests).
    /// Default: [`StdVfs`].
    pub fn vfs<W: Vfs>(self, vfs: W) -> AtomicWriterBuilder<W> {
        AtomicWriterBuilder {
            vfs,
            mode: self.mode,
            durability: self.durability,
            no_clobber: self.no_clobber,
        }
    }

    /// Permission bits of written files, set exactly (the umask does not apply and
    /// nothing is inherited from an existing target or a symlink). Default:
    /// `0o600`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// What a committed write survives. Default: [`Durability::Full`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Create only: a commit fails with [`Error::AlreadyExists`] if the target
    /// exists, atomically (no check-then-write race). Default: `false` (replace).
    pub fn no_clobber(mut self, no_clobber: bool) -> Self {
        self.no_clobber = no_clobber;
        self
    }

    /// The writer.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a mode with bits beyond `0o7777`.
    pub fn build(self) -> Result<AtomicWriter<V>> {
        if self.mode & !0o7777 != 0 {
            return Err(Error::InvalidArgument(format!(
                "file mode {:#o} has bits beyond the permission bits 0o7777",
                self.mode
            )));
        }
        Ok(self.defaults())
    }

    /// The writer, for settings known to be valid.
    fn defaults(self) -> AtomicWriter<V> {
        AtomicWriter {
            vfs: self.vfs,
            mode: self.mode,
            durability: self.durability,
            no_clobber: self.no_clobber,
        }
    }
}

impl<V: Vfs> AtomicWriter<V> {
    /// A writer doing its I/O through `vfs`, with the defaults.
    pub fn with_vfs(vfs: V) -> Self {
        AtomicWriter::builder().vfs(vfs).defaults()
    }

    /// Options starting from this writer's, to make a variant of it (a
    /// no-clobber writer on the same I/O layer, say).
    ///
    /// ```
    /// use jobsafe::AtomicWriter;
    ///
    /// let writer = AtomicWriter::builder().mode(0o640).build()?;
    /// let create_only = writer.to_builder().no_clobber(true).build()?;
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    pub fn to_builder(&self) -> AtomicWriterBuilder<V>
    where
        V: Clone,
    {
        AtomicWriterBuilder {
            vfs: self.vfs.clone(),
            mode: self.mode,
            durability: self.durability,
            no_clobber: self.no_clobber,
        }
    }

    /// This writer with durability `durability` (for the stores, whose
    /// builders take it).
    pub(crate) fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// This writer replacing or creating only (for the pipeline, whose artifact
    /// writes replace).
    pub(crate) fn with_no_clobber(mut self, no_clobber: bool) -> Self {
        self.no_clobber = no_clobber;
        self
    }

    /// The I/O layer.
    pub fn vfs(&self) -> &V {
        &self.vfs
    }

    /// The configured durability.
    pub fn durability_level(&self) -> Durability {
        self.durability
    }

    /// Starts a write to `target`: creates the temp file beside it.
    ///
    /// # Errors
    /// [`Error::Io`] naming the temp file if it cannot be created (for instance the
    /// directory does not exist).
    pub fn begin(&self, target: impl AsRef<Path>) -> Result<PendingFile<'_, V>> {
        let target = target.as_ref().to_path_buf();
        let name = target
            .file_name()
            .ok_or_else(|| {
                Error::io(
                    steps::TARGET_WITHOUT_FILE_NAME,
                    &target,
                    io::Error::from(io::ErrorKind::InvalidInput),
                )
            })?
            .to_string_lossy()
            .into_owned();
        let dir = parent_dir(&target);
        // Random names let concurrent writers of one target proceed without
        // coordination; the last rename wins, as with any overwrite.
        loop {
            let temp = dir.join(temp_name(&name));
            match self.vfs.create_new(&temp, self.mode) {
                Ok(file) => {
                    return Ok(PendingFile {
                        writer: self,
                        durability: self.durability,
                        target,
                        temp,
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(steps::CREATE_TEMP_FILE, temp, e)),
            }
        }
    }

    /// Writes `bytes` to `target` atomically: [`begin`](Self::begin), write,
    /// [`commit`](PendingFile::commit).
    ///
    /// # Errors
    /// As [`begin`](Self::begin) and [`commit`](PendingFile::commit).
    pub fn write(&self, target: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
        let mut pending = self.begin(target)?;
        pending.write_bytes(bytes)?;
        pending.commit()
    }

    /// As [`write`](Self::write), with [`Durability::Full`] whatever this
    /// writer's durability: for the files without which a store cannot open
    /// (its format marker), written once, when it is created.
    pub(crate) fn write_durably(&self, target: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
        let mut pending = self.begin(target)?;
        pending.durability = Durability::Full;
        pending.write_bytes(bytes)?;
        pending.commit()
    }
}

/// Writes `bytes` to `path` with [`Durability::Full`] and mode `0o600`.
///
/// The write survives a power loss once this returns, provided the directory
/// holding `path` does: a directory created just before needs
/// [`Vfs::create_dir_all_durable`]
/// (see [`AtomicWriter`]'s "A new directory").
///
/// ```
/// let dir = tempfile::tempdir()?;
/// jobsafe::write_atomic(dir.path().join("state.json"), b"{}")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`AtomicWriter::write`].
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    AtomicWriter::new().write(path, bytes)
}

/// A write in progress: a temp file beside the target.
///
/// Finish it with [`commit`](Self::commit) or [`discard`](Self::discard). Dropping it
/// uncommitted removes the temp file, best-effort, ignoring errors (a leftover is
/// harmless and [`AtomicWriter::sweep`] removes it later); call `discard` to see them.
#[derive(Debug)]
pub struct PendingFile<'w, V: Vfs = StdVfs> {
    writer: &'w AtomicWriter<V>,
    /// The writer's, unless the write must be durable whatever it is.
    durability: Durability,
    target: PathBuf,
    temp: PathBuf,
    /// `None` once committed or discarded.
    file: Option<V::File>,
}

impl<V: Vfs> PendingFile<'_, V> {
    /// The file this write will replace or create.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The temp file being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Appends bytes to the new content.
    ///
    /// # Errors
    /// [`Error::Io`] naming the temp file.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let file = self.file_mut()?;
        file.write_all(bytes).at(steps::WRITE_TEMP_FILE, &self.temp)
    }

    /// Makes the new content the target's, durably for [`Durability::Full`].
    ///
    /// On any error the temp file is removed and the target is untouched, except for
    /// [`Error::NotDurable`]: the rename happened, readers see the new content, but
    /// the directory fsync failed so it may not survive a power loss.
    ///
    /// In no-clobber mode the commit has happened once the temp file is linked to
    /// the target; if the temp name cannot be removed after that, the commit still
    /// succeeds and leaves it for [`AtomicWriter::sweep`].
    ///
    /// # Errors
    /// [`Error::Io`] naming the step and path; [`Error::AlreadyExists`] in no-clobber
    /// mode; [`Error::NotDurable`].
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().ok_or_else(finished)?;
        let full = self.durability == Durability::Full;
        let vfs = &self.writer.vfs;
        let result = (|| {
            if full {
                file.sync_all().at(steps::FSYNC_TEMP_FILE, &self.temp)?;
            }
            drop(file);
            if self.writer.no_clobber {
                match vfs.hard_link(&self.temp, &self.target) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(Error::AlreadyExists {
                            path: self.target.clone(),
                        });
                    }
                    Err(e) => return Err(Error::io(steps::LINK_TEMP_FILE, &self.target, e)),
                }
                // The target is in place, so the commit has happened: a temp name
                // that cannot be removed is only a second name of the new file,
                // harmless, and `sweep` removes it.
                let _ = vfs.remove_file(&self.temp);
            } else {
                vfs.rename(&self.temp, &self.target)
                    .at(steps::RENAME_TEMP_FILE, &self.target)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = vfs.remove_file(&self.temp);
            return Err(e);
        }
        if full {
            let dir = parent_dir(&self.target);
            vfs.sync_dir(&dir).map_err(|source| Error::NotDurable {
                path: self.target.clone(),
                dir,
                source,
            })?;
        }
        Ok(())
    }

    /// Abandons the write and removes the temp file.
    ///
    /// # Errors
    /// [`Error::Io`] if the temp file cannot be removed.
    pub fn discard(mut self) -> Result<()> {
        drop(self.file.take());
        self.writer
            .vfs
            .remove_file(&self.temp)
            .at(steps::REMOVE_TEMP_FILE, &self.temp)
    }

    fn file_mut(&mut self) -> Result<&mut V::File> {
        self.file.as_mut().ok_or_else(finished)
    }
}

fn finished() -> Error {
    Error::InvalidArgument("pending file already committed or discarded".to_owned())
}

impl<V: Vfs> Write for PendingFile<'_, V> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("pending file already finished"))?;
        file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<V: Vfs> Drop for PendingFile<'_, V> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = self.writer.vfs.remove_file(&self.temp);
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.{name}.{16 hex}.jobsafe-tmp`, with `name` shortened so the whole stays within
/// the 255-byte name limit of common filesystems.
fn temp_name(name: &str) -> String {
    temp_name_of(name, fastrand::u64(..), std::process::id())
}

/// The temp name drawn as `random` by process `pid`. The process id is mixed
/// into the random bits: a process forked without exec inherits its parent's
/// random generator and would draw the same names, which `DirStore`'s
/// watcher, telling its handle's own renames by their temp names, would
/// take for its own.
fn temp_name_of(name: &str, random: u64, pid: u32) -> String {
    const MAX_NAME_PART: usize = 200;
    let mut cut = name.len().min(MAX_NAME_PART);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let token = random ^ (u64::from(pid) << 32);
    format!(".{}.{token:016x}{TEMP_SUFFIX}", &name[..cut])
}

pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parent and a child forked from it draw the same random bits; their
    /// temp names differ all the same, and stay temp names.
    #[test]
    fn processes_drawing_the_same_random_bits_get_different_temp_names() {
        let random = 0x0123_4567_89ab_cdef;
        let parent = temp_name_of("state.json", random, 4_000);
        let child = temp_name_of("state.json", random, 4_001);
        assert_ne!(parent, child);
        for name in [&parent, &child] {
            assert!(is_temp_name(name), "{name}");
            assert!(name.starts_with(".state.json."), "{name}");
        }
        let long = "é".repeat(200);
        let name = temp_name_of(&long, random, 1);
        assert!(name.len() <= 255, "{} bytes", name.len());
        assert!(is_temp_name(&name));
    }
}
