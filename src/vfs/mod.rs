//! The I/O layer: every filesystem operation of [`AtomicWriter`](crate::AtomicWriter)
//! and [`DirStore`](crate::DirStore) goes through a [`Vfs`].
//!
//! Production code uses [`StdVfs`], which calls the operating system directly; the
//! store and writer types are generic over the layer with `StdVfs` as the default,
//! so the indirection compiles away. Tests put another implementation in its place
//! to count operations (`testing::Counting`), fail the Nth one
//! (`testing::Faulty`; both with the feature `testing`), or record the trace of a
//! workload and build the states a power loss could leave.
//!
//! The layer speaks `std::io::Error`; callers add the step ([`IoStep`]) and the
//! path.

#[cfg(any(test, feature = "testing"))]
pub(crate) mod counting;
#[cfg(any(test, feature = "testing"))]
pub(crate) mod faulty;
mod known_durable;
mod std_vfs;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use crate::error::io_step::{IoAction, IoStep};
pub(crate) use known_durable::KnownDurable;
pub use std_vfs::StdVfs;

/// Permission bits of every directory jobsafe creates: owner read, write and
/// search only.
pub const DIR_MODE: u32 = 0o700;

/// The filesystem operations jobsafe performs.
///
/// Implementations must behave like the POSIX calls named on each method, including
/// their atomicity: `rename` replaces its target atomically, `create_new` and
/// `hard_link` fail with [`io::ErrorKind::AlreadyExists`] rather than replace.
pub trait Vfs: Send + Sync + fmt::Debug + 'static {
    /// An open file.
    type File: VfsFile;

    /// Creates a file that must not exist yet (`O_CREAT | O_EXCL`, which also
    /// refuses to follow a symlink), opened for reading and writing, with exactly
    /// the permission bits `mode` whatever the umask. On error no file is left at
    /// `path`: callers have no handle to clean it up with.
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Self::File>;

    /// Opens an existing file for reading.
    fn open_read(&self, path: &Path) -> io::Result<Self::File>;

    /// Opens an existing regular file for reading without following a final
    /// symlink and without blocking: how jobsafe reads a file it wrote itself,
    /// so that a link, a FIFO or a device found in its place is refused, never
    /// followed, waited on or read without end.
    ///
    /// A missing file fails with [`io::ErrorKind::NotFound`]; anything but a
    /// regular file (a symlink, a FIFO, a socket, a device, a directory) with
    /// [`io::ErrorKind::InvalidData`]. Callers bound what they then read by what
    /// they expect, not by what the file claims.
    ///
    /// [`StdVfs`] on Linux opens with `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY` and
    /// checks the type of the file it opened, so nothing can be swapped in
    /// between the check and the open: a FIFO or a device is opened, without
    /// blocking, only to be refused. The status flag `O_NONBLOCK` stays on the
    /// handle; it changes nothing for a regular file. On other systems it
    /// checks `path` before the open as well as the opened file after it: a
    /// FIFO swapped in between the two can block the open. The default checks `path` with
    /// [`metadata`](Vfs::metadata), then calls [`open_read`](Vfs::open_read):
    /// a file swapped between the two is not caught, which suits layers that
    /// simulate a filesystem. A layer that wraps another should forward this
    /// method.
    ///
    /// ```
    /// use jobsafe::vfs::{StdVfs, Vfs};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let file = dir.path().join("artifact");
    /// std::fs::write(&file, b"mine")?;
    /// std::fs::write(dir.path().join("outside"), b"not mine")?;
    /// let link = dir.path().join("link");
    /// std::os::unix::fs::symlink(dir.path().join("outside"), &link)?;
    ///
    /// assert!(StdVfs.open_regular_file(&file).is_ok());
    /// let refused = StdVfs.open_regular_file(&link).unwrap_err();
    /// assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn open_regular_file(&self, path: &Path) -> io::Result<Self::File> {
        match self.metadata(path)?.kind {
            FileKind::File => self.open_read(path),
            FileKind::Dir | FileKind::Other => Err(not_a_regular_file()),
        }
    }

    /// Opens a file for reading and writing, creating it with `mode` if absent.
    /// Anything at `path` but a regular file should fail the open rather than
    /// be followed or waited on, with [`io::ErrorKind::InvalidData`] as
    /// [`open_regular_file`](Vfs::open_regular_file) does: [`StdVfs`] on Linux
    /// opens with `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY` and checks the type of
    /// the file it opened.
    fn open_or_create(&self, path: &Path, mode: u32) -> io::Result<Self::File>;

    /// Atomically renames `from` to `to`, replacing `to` if it exists (`rename(2)`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Creates `to` as another name of `from`, failing if `to` exists (`link(2)`).
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes a file (`unlink(2)`).
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Creates one directory (`mkdir(2)`) with exactly the permission bits
    /// [`DIR_MODE`] (owner only), whatever the umask: the records and artifacts
    /// inside are nobody else's business, not even their names.
    fn create_dir(&self, path: &Path) -> io::Result<()>;

    /// Removes an empty directory (`rmdir(2)`).
    fn remove_dir(&self, path: &Path) -> io::Result<()>;

    /// The names in a directory, without `.` and `..`, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;

    /// Flushes a directory's entries to stable storage (`fsync` on the directory).
    ///
    /// Like the file flushes, marked `#[track_caller]`: an implementation can tell
    /// the flush sites of the crate apart by
    /// [`Location::caller`](std::panic::Location::caller), which is how the
    /// power-loss tests check that every flush is needed.
    #[track_caller]
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// The kind, length and modification time of a path, without following a
    /// final symlink (`lstat(2)`).
    fn metadata(&self, path: &Path) -> io::Result<FileInfo>;

    /// The inode number of `path`, without following a final symlink: what
    /// [`metadata`](Vfs::metadata) reports as [`FileInfo::inode`], asking for
    /// nothing else.
    ///
    /// Made for polling a file that is being written (has it been replaced?).
    /// On Linux, a `stat` that asks for a file's timestamps makes the next
    /// write to the file take a fine-grained timestamp and dirty its inode
    /// (multigrain timestamps), so a poll by `stat` between appends makes each
    /// `fdatasync` after them flush the inode too. [`StdVfs`] asks Linux for the
    /// inode number alone.
    ///
    /// ```
    /// use jobsafe::vfs::{StdVfs, Vfs};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("journal");
    /// std::fs::write(&path, b"first")?;
    /// let first = StdVfs.inode(&path)?;
    /// assert_eq!(first, StdVfs.metadata(&path)?.inode);
    ///
    /// // Replaced by a rename: another inode.
    /// std::fs::write(dir.path().join("journal.new"), b"second")?;
    /// std::fs::rename(dir.path().join("journal.new"), &path)?;
    /// assert_ne!(StdVfs.inode(&path)?, first);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn inode(&self, path: &Path) -> io::Result<u64> {
        self.metadata(path).map(|info| info.inode)
    }

    /// `path` with every symlink in it resolved, and made absolute
    /// (`realpath(3)`); fails if it, or what a link in it names, does not exist.
    ///
    /// The default checks that `path` exists ([`metadata`](Vfs::metadata)) and
    /// returns it unchanged: right for layers that simulate a filesystem
    /// without symlinks. A layer that wraps another should forward this method.
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        self.metadata(path)?;
        Ok(path.to_path_buf())
    }

    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut file = self.open_read(path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Removes the directory `path` and everything in it, depth first, never
    /// following a symlink: one inside is removed itself, as a file is.
    /// `false` if nothing was there. Entries that vanish meanwhile (another
    /// remover) are not errors.
    ///
    /// The default walks by path, through this trait's other methods, so
    /// that a wrapper's faults and counts apply to each step. [`StdVfs`]
    /// walks by directory descriptor on Linux (`openat` with `O_NOFOLLOW`,
    /// `unlinkat`): a directory swapped for a symlink while it runs is never
    /// followed out of the tree, and one found in `path`'s place is removed
    /// itself.
    fn remove_tree(&self, path: &Path) -> io::Result<bool> {
        remove_tree_by_path(self, path)
    }

    /// Creates a directory and its missing parents, and makes it durable: once
    /// this returns, `path` and every directory the call created survive a power
    /// loss.
    ///
    /// A directory exists for everyone the moment its `mkdir` returns, but its
    /// entry survives a power loss only once its parent is flushed, and strict
    /// POSIX promises nothing before (ext4 happens to keep directory changes in
    /// order; other filesystems need not). So a directory that exists is not
    /// known to be durable: its creator may not have flushed its parent yet, or
    /// may have died before it did. This is why:
    ///
    /// - each directory created is flushed into its parent before anything is
    ///   created in it, and so is one that a concurrent caller created first
    ///   (the `mkdir` that lost the race);
    /// - the parent of the first directory found existing on the way (`path`
    ///   itself, if it exists) is flushed too, once.
    ///
    /// Nothing above that is flushed: whoever created that directory through
    /// this method had flushed every directory it created on the way before
    /// creating the next, so only the last one's entry can still be pending.
    /// Directories that existed before any such call are the caller's.
    ///
    /// The first directory found existing may be a symlink to a directory
    /// (`/var/run`, a data disk mounted elsewhere): it is followed, as
    /// `std::fs::create_dir_all` does. The directories the call creates are
    /// real ones.
    ///
    /// Cost: one directory flush per directory created, plus one. A call on a
    /// directory that exists costs one flush of its parent.
    fn create_dir_all_durable(&self, path: &Path) -> io::Result<()> {
        // The missing directories, deepest first, up to the first that exists.
        let mut missing = Vec::new();
        let mut at = path;
        let found = loop {
            match self.metadata(at) {
                Ok(info) if info.kind == FileKind::Dir => break Some(at),
                Ok(_) if resolves_to_dir(self, at)? => break Some(at),
                Ok(_) => return Err(not_a_directory(at)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            missing.push(at);
            match parent_dir(at) {
                Some(parent) if parent != at => at = parent,
                // Nothing exists up to the top: the first `mkdir` says why.
                _ => break None,
            }
        };
        // Found existing: its creator may not have flushed it yet.
        if let Some(parent) = found.and_then(parent_dir) {
            self.sync_dir(parent)?;
        }
        for dir in missing.into_iter().rev() {
            match self.create_dir(dir) {
                Ok(()) => {}
                // Made by another caller between our look and our `mkdir`: not
                // known to be durable either.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if self.metadata(dir)?.kind != FileKind::Dir {
                        return Err(not_a_directory(dir));
                    }
                }
                Err(e) => return Err(e),
            }
            if let Some(parent) = parent_dir(dir) {
                self.sync_dir(parent)?;
            }
        }
        Ok(())
    }
}

/// [`Vfs::remove_tree`] by path: `path` is taken to be a directory, and each
/// entry is looked at without following links before it is removed.
fn remove_tree_by_path<V: Vfs + ?Sized>(vfs: &V, path: &Path) -> io::Result<bool> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let naming =
        |at: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", at.display()));
    let names = match vfs.read_dir(path) {
        Ok(names) => names,
        Err(e) if gone(&e) => return Ok(false),
        Err(e) => return Err(naming(path, e)),
    };
    for name in names {
        let entry = path.join(name);
        let kind = match vfs.metadata(&entry) {
            Ok(info) => info.kind,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(naming(&entry, e)),
        };
        if kind == FileKind::Dir {
            remove_tree_by_path(vfs, &entry)?;
        } else {
            match vfs.remove_file(&entry) {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(naming(&entry, e)),
            }
        }
    }
    match vfs.remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if gone(&e) => Ok(true),
        Err(e) => Err(naming(path, e)),
    }
}

/// Whether `path`, found to be no directory itself, is a symlink to one.
fn resolves_to_dir<V: Vfs + ?Sized>(vfs: &V, path: &Path) -> io::Result<bool> {
    match vfs.canonicalize(path) {
        Ok(real) => Ok(vfs.metadata(&real)?.kind == FileKind::Dir),
        // A link to nothing.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn not_a_directory(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{} exists and is not a directory", path.display()),
    )
}

/// The directory holding `path`, `.` for a relative path of one component;
/// `None` for a root.
fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    })
}

/// The error of [`Vfs::open_regular_file`] for anything but a regular file.
pub(crate) fn not_a_regular_file() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "not a regular file (a symlink, a FIFO, a socket, a device or a directory): \
         not followed, not read",
    )
}

/// An open file of a [`Vfs`].
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Writes the whole buffer at the current position.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Reads from the current position to the end.
    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize>;

    /// Reads up to `buf.len()` bytes at `offset` without moving the position
    /// (`pread`); fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes the whole buffer at `offset` without moving the position
    /// (`pwrite`), extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// The file's length in bytes (`fstat`). Like [`Vfs::inode`], it asks for
    /// no timestamp where the system allows.
    fn size(&self) -> io::Result<u64>;

    /// Where data begins at or after `offset`, past any hole of a sparse
    /// file (`lseek(SEEK_DATA)`); `None` if nothing but holes follows. Holes
    /// read as zeros: a reader that looks for what is not zero skips them
    /// without reading them. The file's position is kept.
    ///
    /// The default knows of no holes and returns `Some(offset)`, as should a
    /// layer whose filesystem cannot tell (an error stops the reader, it
    /// never means "unsupported"). A layer that wraps another should forward
    /// it (with [`next_hole`](VfsFile::next_hole)), or a reader reads the
    /// holes.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(Some(offset))
    }

    /// Where the next hole begins at or after `offset`
    /// (`lseek(SEEK_HOLE)`); the end of the file counts as one. The file's
    /// position is kept. The default knows of no holes: the file's size.
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        let _ = offset;
        self.size()
    }

    /// Flushes data and metadata to stable storage (`fsync`). `#[track_caller]`,
    /// as [`Vfs::sync_dir`].
    #[track_caller]
    fn sync_all(&self) -> io::Result<()>;

    /// Flushes data, and metadata only as needed to read it back (`fdatasync`).
    /// `#[track_caller]`, as [`Vfs::sync_dir`].
    #[track_caller]
    fn sync_data(&self) -> io::Result<()>;

    /// Takes an exclusive advisory lock, waiting for it (`flock(LOCK_EX)`). Locks
    /// taken through different opens of one file exclude each other, within one
    /// process as across processes.
    fn lock(&self) -> io::Result<()>;

    /// Takes a shared advisory lock, waiting for it (`flock(LOCK_SH)`).
    fn lock_shared(&self) -> io::Result<()>;

    /// Takes an exclusive advisory lock if nobody holds one, without waiting;
    /// `false` if it is held elsewhere.
    fn try_lock(&self) -> io::Result<bool>;

    /// Takes a shared advisory lock if nobody holds an exclusive one, without
    /// waiting (`flock(LOCK_SH | LOCK_NB)`); `false` if one is held elsewhere.
    ///
    /// The default waits for the lock ([`lock_shared`](VfsFile::lock_shared))
    /// and returns `true`: a layer that can try without waiting should
    /// override it, and a layer that wraps another should forward it, or a
    /// shared [`LogStore`](crate::LogStore) open waits for as long as another
    /// handle holds the store exclusively instead of failing at once.
    fn try_lock_shared(&self) -> io::Result<bool> {
        self.lock_shared().map(|()| true)
    }

    /// Releases the lock. Closing the file releases it too.
    fn unlock(&self) -> io::Result<()>;
}

/// What [`Vfs::metadata`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileInfo {
    /// File, directory or other.
    pub kind: FileKind,
    /// Length in bytes.
    pub len: u64,
    /// Last modification time.
    pub modified: SystemTime,
    /// The inode number: a path whose inode changed was replaced.
    pub inode: u64,
}

impl FileInfo {
    /// What a [`Vfs::metadata`] found (for implementations of [`Vfs`]).
    pub fn new(kind: FileKind, len: u64, modified: SystemTime, inode: u64) -> Self {
        FileInfo {
            kind,
            len,
            modified,
            inode,
        }
    }
}

/// The kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink (not followed) or anything else.
    Other,
}
