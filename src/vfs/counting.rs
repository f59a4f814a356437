//! A [`Vfs`] wrapper that counts operations, for benchmarks and tests.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{FileInfo, Vfs, VfsFile};

/// Wraps a [`Vfs`] and counts the operations that cost a disk round trip or a
/// metadata update, and the reads, looks at metadata and locks that a cheap
/// path should not make. Clones share their counters.
///
/// ```
/// use jobsafe::testing::Counting;
/// use jobsafe::vfs::StdVfs;
/// use jobsafe::AtomicWriter;
///
/// let dir = tempfile::tempdir()?;
/// let vfs = Counting::new(StdVfs);
/// AtomicWriter::with_vfs(vfs.clone()).write(dir.path().join("a"), b"hello")?;
/// let counts = vfs.counts();
/// assert_eq!(counts.file_syncs, 1);
/// assert_eq!(counts.dir_syncs, 1);
/// assert_eq!(counts.renames, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Counting<V> {
    inner: V,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    file_syncs: AtomicU64,
    dir_syncs: AtomicU64,
    renames: AtomicU64,
    creates: AtomicU64,
    removes: AtomicU64,
    writes: AtomicU64,
    reads: AtomicU64,
    stats: AtomicU64,
    locks: AtomicU64,
}

/// A snapshot of [`Counting`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpCounts {
    /// `fsync`/`fdatasync` calls on files.
    pub file_syncs: u64,
    /// `fsync` calls on directories.
    pub dir_syncs: u64,
    /// Renames and hard links.
    pub renames: u64,
    /// Files and directories created.
    pub creates: u64,
    /// Files and directories removed.
    pub removes: u64,
    /// `write_all` calls.
    pub writes: u64,
    /// Reads of files: `read_at` and `read_to_end` calls.
    pub reads: u64,
    /// Looks at a path's or a file's metadata: `metadata`, `inode`, a file's
    /// `size`.
    pub stats: u64,
    /// Advisory locks taken or tried, exclusive or shared (unlocks are not
    /// counted).
    pub locks: u64,
}

impl OpCounts {
    /// File and directory syncs together: the number of disk flushes.
    pub fn syncs(&self) -> u64 {
        self.file_syncs + self.dir_syncs
    }
}

impl<V: Vfs> Counting<V> {
    /// Counts the operations made through `inner`.
    pub fn new(inner: V) -> Self {
        Counting {
            inner,
            counters: Arc::default(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> OpCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OpCounts {
            file_syncs: get(&c.file_syncs),
            dir_syncs: get(&c.dir_syncs),
            renames: get(&c.renames),
            creates: get(&c.creates),
            removes: get(&c.removes),
            writes: get(&c.writes),
            reads: get(&c.reads),
            stats: get(&c.stats),
            locks: get(&c.locks),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl<V: Vfs> Vfs for Counting<V> {
    type File = CountingFile<V::File>;

    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Self::File> {
        Self::bump(&self.counters.creates);
        let file = self.inner.create_new(path, mode)?;
        Ok(CountingFile {
            inner: file,
            counters: self.counters.clone(),
        })
    }

    fn open_read(&self, path: &Path) -> io::Result<Self::File> {
        let file = self.inner.open_read(path)?;
        Ok(CountingFile {
            inner: file,
            counters: self.counters.clone(),
        })
    }

    fn open_regular_file(&self, path: &Path) -> io::Result<Self::File> {
        let file = self.inner.open_regular_file(path)?;
        Ok(CountingFile {
            inner: file,
            counters: self.counters.clone(),
        })
    }

    fn open_or_create(&self, path: &Path, mode: u32) -> io::Result<Self::File> {
        let file = self.inner.open_or_create(path, mode)?;
        Ok(CountingFile {
            inner: file,
            counters: self.counters.clone(),
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Self::bump(&self.counters.renames);
        self.inner.rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        Self::bump(&self.counters.renames);
        self.inner.hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        Self::bump(&self.counters.removes);
        self.inner.remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        Self::bump(&self.counters.creates);
        self.inner.create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        Self::bump(&self.counters.removes);
        self.inner.remove_dir(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.inner.read_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        Self::bump(&self.counters.dir_syncs);
        self.inner.sync_dir(path)
    }

    fn metadata(&self, path: &Path) -> io::Result<FileInfo> {
        Self::bump(&self.counters.stats);
        self.inner.metadata(path)
    }

    fn inode(&self, path: &Path) -> io::Result<u64> {
        Self::bump(&self.counters.stats);
        self.inner.inode(path)
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        self.inner.canonicalize(path)
    }
}

/// A file opened through [`Counting`].
#[derive(Debug)]
pub struct CountingFile<F> {
    inner: F,
    counters: Arc<Counters>,
}

impl<F: VfsFile> VfsFile for CountingFile<F> {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write_all(buf)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_to_end(buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write_all_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        self.counters.stats.fetch_add(1, Ordering::Relaxed);
        self.inner.size()
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.counters.stats.fetch_add(1, Ordering::Relaxed);
        self.inner.next_data(offset)
    }

    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        self.counters.stats.fetch_add(1, Ordering::Relaxed);
        self.inner.next_hole(offset)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.counters.file_syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_all()
    }

    fn sync_data(&self) -> io::Result<()> {
        self.counters.file_syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }

    fn lock(&self) -> io::Result<()> {
        self.counters.locks.fetch_add(1, Ordering::Relaxed);
        self.inner.lock()
    }

    fn lock_shared(&self) -> io::Result<()> {
        self.counters.locks.fetch_add(1, Ordering::Relaxed);
        self.inner.lock_shared()
    }

    fn try_lock(&self) -> io::Result<bool> {
        self.counters.locks.fetch_add(1, Ordering::Relaxed);
        self.inner.try_lock()
    }

    fn try_lock_shared(&self) -> io::Result<bool> {
        self.counters.locks.fetch_add(1, Ordering::Relaxed);
        self.inner.try_lock_shared()
    }

    fn unlock(&self) -> io::Result<()> {
        self.inner.unlock()
    }
}
