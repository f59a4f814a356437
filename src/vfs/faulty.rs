//! A [`Vfs`] wrapper that fails chosen operations, for fault-injection tests.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use super::{FileInfo, StdVfs, Vfs, VfsFile};

/// The kinds of operation [`Faulty`] counts and can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum OpKind {
    /// Opening an existing file ([`Vfs::open_read`], [`Vfs::open_regular_file`],
    /// [`Vfs::open_or_create`]).
    Open,
    /// Creating a new file exclusively ([`Vfs::create_new`]).
    Create,
    /// Reading file content ([`VfsFile::read_to_end`], [`VfsFile::read_at`]).
    Read,
    /// Writing file content ([`VfsFile::write_all`], [`VfsFile::write_all_at`]).
    Write,
    /// Flushing a file ([`VfsFile::sync_all`], [`VfsFile::sync_data`]).
    FileSync,
    /// Flushing a directory ([`Vfs::sync_dir`]).
    DirSync,
    /// [`Vfs::rename`].
    Rename,
    /// [`Vfs::hard_link`].
    Link,
    /// [`Vfs::remove_file`].
    Remove,
    /// [`Vfs::create_dir`].
    Mkdir,
    /// [`Vfs::remove_dir`].
    Rmdir,
    /// [`Vfs::read_dir`].
    ReadDir,
    /// [`Vfs::metadata`], [`Vfs::canonicalize`] and [`VfsFile::size`].
    Stat,
    /// Taking or releasing an advisory lock.
    Lock,
}

impl OpKind {
    /// Every kind, in declaration order.
    pub const ALL: [OpKind; 14] = [
        OpKind::Open,
        OpKind::Create,
        OpKind::Read,
        OpKind::Write,
        OpKind::FileSync,
        OpKind::DirSync,
        OpKind::Rename,
        OpKind::Link,
        OpKind::Remove,
        OpKind::Mkdir,
        OpKind::Rmdir,
        OpKind::ReadDir,
        OpKind::Stat,
        OpKind::Lock,
    ];

    /// File and directory flushes: the operations whose failure leaves what
    /// reached the disk unknown.
    pub const SYNCS: [OpKind; 2] = [OpKind::FileSync, OpKind::DirSync];

    /// The operations that change the filesystem (content, names or length).
    pub const MUTATIONS: [OpKind; 7] = [
        OpKind::Create,
        OpKind::Write,
        OpKind::Rename,
        OpKind::Link,
        OpKind::Remove,
        OpKind::Mkdir,
        OpKind::Rmdir,
    ];

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The error an injected fault returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InjectedError {
    /// `EIO`: the device failed.
    Eio,
    /// `ENOSPC`: no space left on the device.
    Enospc,
    /// `EACCES`: permission denied.
    Eacces,
    /// An error of this kind, with no OS error number.
    Kind(io::ErrorKind),
}

impl InjectedError {
    /// The three OS errors a disk most often returns, for tests that try each.
    pub const ERRNOS: [InjectedError; 3] = [
        InjectedError::Eio,
        InjectedError::Enospc,
        InjectedError::Eacces,
    ];

    /// The OS error number, if this is one (the values Linux and the BSDs share).
    pub fn raw_os_error(self) -> Option<i32> {
        match self {
            InjectedError::Eio => Some(5),
            InjectedError::Eacces => Some(13),
            InjectedError::Enospc => Some(28),
            InjectedError::Kind(_) => None,
        }
    }

    /// A fresh `io::Error` of this kind.
    pub fn to_io_error(self) -> io::Error {
        match (self, self.raw_os_error()) {
            (_, Some(errno)) => io::Error::from_raw_os_error(errno),
            (InjectedError::Kind(kind), None) => io::Error::new(kind, "injected fault"),
            (_, None) => io::Error::other("injected fault"),
        }
    }
}

/// Which operations a [`Faulty`] fails once armed, and how.
///
/// Operations are numbered from 1 in the order they are made after
/// [`Faulty::arm`], counting only those of the kinds given to
/// [`only`](Fault::only) (default: every kind).
///
/// Defaults: [`InjectedError::Eio`], every kind, no torn writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    nth: u64,
    persistent: bool,
    kinds: u32,
    error: InjectedError,
    torn_writes: bool,
}

impl Fault {
    /// Fails the `n`th matching operation (1-based), and only that one.
    pub fn nth(n: u64) -> Self {
        Fault {
            nth: n.max(1),
            persistent: false,
            kinds: u32::MAX,
            error: InjectedError::Eio,
            torn_writes: false,
        }
    }

    /// Fails the `n`th matching operation (1-based) and every matching one after
    /// it, as a dead disk or a full one would.
    pub fn from_nth(n: u64) -> Self {
        Fault {
            persistent: true,
            ..Fault::nth(n)
        }
    }

    /// Counts and fails only operations of these kinds.
    pub fn only(mut self, kinds: impl IntoIterator<Item = OpKind>) -> Self {
        self.kinds = kinds.into_iter().fold(0, |mask, kind| mask | kind.bit());
        self
    }

    /// The error failed operations return. Default: [`InjectedError::Eio`].
    pub fn error(mut self, error: InjectedError) -> Self {
        self.error = error;
        self
    }

    /// Whether a failed write first writes the first half of its buffer, as a
    /// write cut short by a full disk does. Default: `false` (nothing is
    /// written).
    pub fn torn_writes(mut self, torn: bool) -> Self {
        self.torn_writes = torn;
        self
    }

    fn matches(&self, kind: OpKind) -> bool {
        self.kinds & kind.bit() != 0
    }
}

/// One operation [`Faulty`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Injected {
    /// What kind of operation it was.
    pub kind: OpKind,
    /// The file or directory it was applied to (for a rename or link, the
    /// target).
    pub path: PathBuf,
    /// The error it returned.
    pub error: InjectedError,
}

/// One operation, as a [`Faulty::on_op`] hook sees it: before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpEvent<'a> {
    /// What kind of operation it is.
    pub kind: OpKind,
    /// The file or directory it applies to: for a rename or a link, the
    /// target; for an operation on an open file, the path the file was opened
    /// with.
    pub path: &'a Path,
    /// For a rename or a link, the source; otherwise `None`.
    pub from: Option<&'a Path>,
}

/// What [`Faulty::on_op`] runs before each operation.
type HookFn = dyn Fn(&OpEvent<'_>) -> Option<InjectedError> + Send + Sync;

#[derive(Clone)]
struct Hook(Arc<HookFn>);

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hook(..)")
    }
}

/// Wraps a [`Vfs`], counts every operation made through it and its files, and,
/// once [armed](Faulty::arm), fails the operations a [`Fault`] picks.
///
/// A failed operation does nothing and returns the chosen error (a torn write,
/// see [`Fault::torn_writes`], writes part of its buffer first). A failed flush
/// leaves what was written before it in the page cache, as a real failed
/// `fsync` does: readers may see it, a power loss may drop it.
///
/// Clones share their counters, their fault and their [hook](Faulty::on_op), so
/// a test can open a store on a clone, then arm the fault. An operation on an
/// open file is reported under the path the file was opened with, even if it
/// was renamed since.
///
/// A [`Fault`] picks operations by number and kind. For anything else (fail
/// the operations on one path, crash the process at a step, plant a file just
/// before the operation that would find it), [`on_op`](Faulty::on_op) runs a
/// function of your own before each operation.
///
/// ```
/// use jobsafe::testing::{Fault, Faulty, InjectedError, OpKind};
/// use jobsafe::vfs::StdVfs;
/// use jobsafe::{DirStore, Expect, Key, Store};
///
/// let dir = tempfile::tempdir()?;
/// let vfs = Faulty::new(StdVfs);
/// let store = DirStore::builder(dir.path()).vfs(vfs.clone()).open()?;
/// let key = Key::new(["jobs", "1"])?;
///
/// // The next flush fails: the put reports it, and the store refuses writes.
/// vfs.arm(Fault::nth(1).only(OpKind::SYNCS).error(InjectedError::Eio));
/// let err = store.put(&key, b"v1", Expect::Any).unwrap_err();
/// assert_eq!(vfs.injected().len(), 1);
/// assert!(err.to_string().contains(&*dir.path().to_string_lossy()));
/// assert!(store.is_poisoned());
/// vfs.disarm();
/// assert!(store.put(&key, b"v2", Expect::Any).unwrap_err().is_poisoned());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Faulty<V = StdVfs> {
    inner: V,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every operation since creation, armed or not.
    ops: AtomicU64,
    per_kind: [AtomicU64; OpKind::ALL.len()],
    armed: Mutex<Option<Armed>>,
    injected: Mutex<Vec<Injected>>,
    hook: RwLock<Option<Hook>>,
}

#[derive(Debug)]
struct Armed {
    fault: Fault,
    /// Matching operations seen since arming.
    seen: u64,
    /// Armed in place of `fault` once it has failed an operation.
    next: Option<Fault>,
}

impl<V: Vfs> Faulty<V> {
    /// Wraps `inner`, unarmed: every operation passes through, and is counted.
    pub fn new(inner: V) -> Self {
        Faulty {
            inner,
            state: Arc::default(),
        }
    }

    /// Arms `fault`, replacing any armed before; its count starts now.
    pub fn arm(&self, fault: Fault) {
        *self.state.armed.lock() = Some(Armed {
            fault,
            seen: 0,
            next: None,
        });
    }

    /// Arms `next` in place of the armed fault as soon as that one has failed
    /// an operation (ending it, even if it would fail more), so that a test can
    /// fail one operation and then another, say a write and then the flush of
    /// the repair that follows. `next` counts from the operation after. Does
    /// nothing if no fault is armed.
    ///
    /// ```
    /// use jobsafe::testing::{Fault, Faulty, OpKind};
    /// use jobsafe::vfs::{StdVfs, Vfs};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let vfs = Faulty::new(StdVfs);
    /// vfs.arm(Fault::nth(1).only([OpKind::Stat]));
    /// vfs.queue(Fault::nth(2).only([OpKind::Stat]));
    /// let failed: Vec<bool> = (0..4).map(|_| vfs.metadata(dir.path()).is_err()).collect();
    /// assert_eq!(failed, [true, false, true, false]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn queue(&self, next: Fault) {
        if let Some(armed) = self.state.armed.lock().as_mut() {
            armed.next = Some(next);
        }
    }

    /// Disarms: from now on every operation passes through. What was injected
    /// stays in [`injected`](Self::injected). The [hook](Self::on_op) stays.
    pub fn disarm(&self) {
        *self.state.armed.lock() = None;
    }

    /// Runs `hook` before every operation made through this layer, its clones
    /// and their files (replacing any hook set before). A hook that returns an
    /// error fails the operation with it, as an armed [`Fault`] would: nothing
    /// is done and the failure is listed in [`injected`](Self::injected).
    /// `None` lets the operation go on, to the armed fault and then to the
    /// inner [`Vfs`].
    ///
    /// The hook runs on the thread that makes the operation, after the
    /// operation is counted and before the armed fault sees it (an operation
    /// the hook fails is not counted towards the fault), and holds none of this
    /// layer's locks: it may do I/O of its own (through the inner `Vfs` or
    /// `std::fs`; through this layer it would see its own operations), call
    /// [`arm`](Self::arm), or end the process, which is how a test crashes at
    /// an exact step. A hook that cannot do its job should panic, which fails
    /// the test; operations of other threads run it concurrently.
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// use jobsafe::testing::{Faulty, InjectedError, OpKind};
    /// use jobsafe::vfs::{StdVfs, Vfs};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let vfs = Faulty::new(StdVfs);
    ///
    /// // Another process creates `taken` just before we do.
    /// let taken = dir.path().join("taken");
    /// vfs.on_op({
    ///     let taken = taken.clone();
    ///     move |op| {
    ///         if op.kind == OpKind::Create && op.path == taken {
    ///             std::fs::write(&taken, b"theirs").expect("plant a file");
    ///         }
    ///         None
    ///     }
    /// });
    /// assert_eq!(vfs.create_new(&taken, 0o600).unwrap_err().kind(), ErrorKind::AlreadyExists);
    /// assert_eq!(std::fs::read(&taken)?, b"theirs");
    ///
    /// // The second flush fails; so does every rename.
    /// let flushes = Arc::new(AtomicU64::new(0));
    /// vfs.on_op(move |op| match op.kind {
    ///     OpKind::FileSync | OpKind::DirSync if flushes.fetch_add(1, Ordering::SeqCst) == 1 => {
    ///         Some(InjectedError::Eio)
    ///     }
    ///     OpKind::Rename => Some(InjectedError::Enospc),
    ///     _ => None,
    /// });
    /// let failed: Vec<bool> = (0..3).map(|_| vfs.sync_dir(dir.path()).is_err()).collect();
    /// assert_eq!(failed, [false, true, false]);
    /// assert!(vfs.rename(&taken, &dir.path().join("moved")).is_err());
    /// assert_eq!(vfs.injected().len(), 2);
    ///
    /// vfs.remove_hook();
    /// vfs.rename(&taken, &dir.path().join("moved"))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn on_op<F>(&self, hook: F)
    where
        F: Fn(&OpEvent<'_>) -> Option<InjectedError> + Send + Sync + 'static,
    {
        *self.state.hook.write() = Some(Hook(Arc::new(hook)));
    }

    /// Removes the [hook](Self::on_op): operations no longer run it.
    pub fn remove_hook(&self) {
        *self.state.hook.write() = None;
    }

    /// The operations made so far, of every kind.
    pub fn ops(&self) -> u64 {
        self.state.ops.load(Ordering::SeqCst)
    }

    /// The operations of `kind` made so far.
    pub fn ops_of(&self, kind: OpKind) -> u64 {
        self.state.per_kind[kind as usize].load(Ordering::SeqCst)
    }

    /// The operations failed so far, in order.
    pub fn injected(&self) -> Vec<Injected> {
        self.state.injected.lock().clone()
    }

    /// Forgets the operations failed so far.
    pub fn clear_injected(&self) {
        self.state.injected.lock().clear();
    }

    fn wrap(&self, file: V::File, path: &Path) -> FaultyFile<V::File> {
        FaultyFile {
            inner: file,
            path: path.to_path_buf(),
            state: self.state.clone(),
        }
    }
}

/// How an operation fails.
#[derive(Clone, Copy)]
struct Failure {
    error: InjectedError,
    /// A failed write first writes half of its buffer.
    torn: bool,
}

impl State {
    /// Counts an operation, runs the hook, then consults the armed fault;
    /// returns how the operation fails, if it does.
    fn check(&self, kind: OpKind, path: &Path, from: Option<&Path>) -> Option<Failure> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.per_kind[kind as usize].fetch_add(1, Ordering::SeqCst);
        // Cloned out so that the hook runs with no lock held.
        let hook = self.hook.read().clone();
        if let Some(Hook(hook)) = hook
            && let Some(error) = hook(&OpEvent { kind, path, from })
        {
            self.record(kind, path, error);
            return Some(Failure { error, torn: false });
        }
        let mut armed = self.armed.lock();
        let armed = armed.as_mut()?;
        if !armed.fault.matches(kind) {
            return None;
        }
        armed.seen += 1;
        let fails = armed.seen == armed.fault.nth
            || (armed.fault.persistent && armed.seen > armed.fault.nth);
        if !fails {
            return None;
        }
        let fault = armed.fault;
        self.record(kind, path, fault.error);
        if let Some(next) = armed.next.take() {
            armed.fault = next;
            armed.seen = 0;
        }
        Some(Failure {
            error: fault.error,
            torn: fault.torn_writes,
        })
    }

    fn record(&self, kind: OpKind, path: &Path, error: InjectedError) {
        self.injected.lock().push(Injected {
            kind,
            path: path.to_path_buf(),
            error,
        });
    }

    fn pass(&self, kind: OpKind, path: &Path) -> io::Result<()> {
        self.pass_from(kind, path, None)
    }

    fn pass_from(&self, kind: OpKind, path: &Path, from: Option<&Path>) -> io::Result<()> {
        match self.check(kind, path, from) {
            Some(failure) => Err(failure.error.to_io_error()),
            None => Ok(()),
        }
    }
}

impl<V: Vfs> Vfs for Faulty<V> {
    type File = FaultyFile<V::File>;

    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Self::File> {
        self.state.pass(OpKind::Create, path)?;
        let file = self.inner.create_new(path, mode)?;
        Ok(self.wrap(file, path))
    }

    fn open_read(&self, path: &Path) -> io::Result<Self::File> {
        self.state.pass(OpKind::Open, path)?;
        let file = self.inner.open_read(path)?;
        Ok(self.wrap(file, path))
    }

    fn open_regular_file(&self, path: &Path) -> io::Result<Self::File> {
        self.state.pass(OpKind::Open, path)?;
        let file = self.inner.open_regular_file(path)?;
        Ok(self.wrap(file, path))
    }

    fn open_or_create(&self, path: &Path, mode: u32) -> io::Result<Self::File> {
        self.state.pass(OpKind::Open, path)?;
        let file = self.inner.open_or_create(path, mode)?;
        Ok(self.wrap(file, path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.state.pass_from(OpKind::Rename, to, Some(from))?;
        self.inner.rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.state.pass_from(OpKind::Link, to, Some(from))?;
        self.inner.hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.state.pass(OpKind::Remove, path)?;
        self.inner.remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.state.pass(OpKind::Mkdir, path)?;
        self.inner.create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.state.pass(OpKind::Rmdir, path)?;
        self.inner.remove_dir(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.state.pass(OpKind::ReadDir, path)?;
        self.inner.read_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.state.pass(OpKind::DirSync, path)?;
        self.inner.sync_dir(path)
    }

    fn metadata(&self, path: &Path) -> io::Result<FileInfo> {
        self.state.pass(OpKind::Stat, path)?;
        self.inner.metadata(path)
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        self.state.pass(OpKind::Stat, path)?;
        self.inner.canonicalize(path)
    }
}

/// A file opened through [`Faulty`].
#[derive(Debug)]
pub struct FaultyFile<F> {
    inner: F,
    path: PathBuf,
    state: Arc<State>,
}

impl<F: VfsFile> FaultyFile<F> {
    fn pass(&self, kind: OpKind) -> io::Result<()> {
        self.state.pass(kind, &self.path)
    }
}

impl<F: VfsFile> VfsFile for FaultyFile<F> {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.state.check(OpKind::Write, &self.path, None) {
            None => self.inner.write_all(buf),
            Some(failure) => {
                if failure.torn {
                    self.inner.write_all(&buf[..buf.len() / 2])?;
                }
                Err(failure.error.to_io_error())
            }
        }
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.pass(OpKind::Read)?;
        self.inner.read_to_end(buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.pass(OpKind::Read)?;
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.state.check(OpKind::Write, &self.path, None) {
            None => self.inner.write_all_at(buf, offset),
            Some(failure) => {
                if failure.torn {
                    self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
                }
                Err(failure.error.to_io_error())
            }
        }
    }

    fn size(&self) -> io::Result<u64> {
        self.pass(OpKind::Stat)?;
        self.inner.size()
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.pass(OpKind::Read)?;
        self.inner.next_data(offset)
    }

    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        self.pass(OpKind::Read)?;
        self.inner.next_hole(offset)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.pass(OpKind::FileSync)?;
        self.inner.sync_all()
    }

    fn sync_data(&self) -> io::Result<()> {
        self.pass(OpKind::FileSync)?;
        self.inner.sync_data()
    }

    fn lock(&self) -> io::Result<()> {
        self.pass(OpKind::Lock)?;
        self.inner.lock()
    }

    fn lock_shared(&self) -> io::Result<()> {
        self.pass(OpKind::Lock)?;
        self.inner.lock_shared()
    }

    fn try_lock(&self) -> io::Result<bool> {
        self.pass(OpKind::Lock)?;
        self.inner.try_lock()
    }

    fn try_lock_shared(&self) -> io::Result<bool> {
        self.pass(OpKind::Lock)?;
        self.inner.try_lock_shared()
    }

    fn unlock(&self) -> io::Result<()> {
        self.pass(OpKind::Lock)?;
        self.inner.unlock()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stat(vfs: &Faulty, dir: &Path) -> Option<i32> {
        vfs.metadata(dir).err().map(|e| e.raw_os_error().unwrap())
    }

    #[test]
    fn nth_fails_once_and_from_nth_fails_every_matching_one_after() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Faulty::new(StdVfs);
        vfs.arm(Fault::nth(2).error(InjectedError::Enospc));
        let once: Vec<_> = (0..4).map(|_| stat(&vfs, dir.path())).collect();
        assert_eq!(once, [None, Some(28), None, None]);

        vfs.arm(Fault::from_nth(3).error(InjectedError::Eacces));
        let after: Vec<_> = (0..4).map(|_| stat(&vfs, dir.path())).collect();
        assert_eq!(after, [None, None, Some(13), Some(13)]);
        assert_eq!(vfs.injected().len(), 3);
        assert_eq!(vfs.ops(), 8);
        assert_eq!(vfs.ops_of(OpKind::Stat), 8);
    }

    #[test]
    fn only_counts_and_fails_the_kinds_given() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Faulty::new(StdVfs);
        let path = dir.path().join("f");
        vfs.arm(Fault::nth(1).only([OpKind::FileSync]));
        let mut file = vfs.create_new(&path, 0o600).unwrap();
        file.write_all(b"abcd").unwrap();
        let err = file.sync_all().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5));
        file.sync_all().unwrap();
        assert_eq!(
            vfs.injected(),
            [Injected {
                kind: OpKind::FileSync,
                path: path.clone(),
                error: InjectedError::Eio
            }]
        );
        assert_eq!(vfs.ops_of(OpKind::FileSync), 2);
    }

    #[test]
    fn a_torn_write_writes_half_then_fails() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Faulty::new(StdVfs);
        let path = dir.path().join("f");
        let file = vfs.create_new(&path, 0o600).unwrap();
        vfs.arm(Fault::nth(1).only([OpKind::Write]).torn_writes(true));
        assert!(file.write_all_at(b"abcdef", 0).is_err());
        vfs.disarm();
        assert_eq!(vfs.read(&path).unwrap(), b"abc");
    }

    #[test]
    fn a_hook_sees_each_operation_and_fails_the_ones_it_picks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"x").unwrap();
        let vfs = Faulty::new(StdVfs);
        let seen = Arc::new(Mutex::new(Vec::new()));
        vfs.on_op({
            let seen = seen.clone();
            move |op: &OpEvent<'_>| {
                seen.lock().push((
                    op.kind,
                    op.path.to_path_buf(),
                    op.from.map(Path::to_path_buf),
                ));
                (op.kind == OpKind::Rename).then_some(InjectedError::Enospc)
            }
        });
        // Armed for the first rename: the hook fails it first, so the fault
        // counts only the rename after.
        vfs.arm(Fault::nth(1).only([OpKind::Rename, OpKind::Link]));
        let err = vfs.rename(&a, &b).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28));
        assert!(a.exists() && !b.exists(), "a failed rename does nothing");
        let err = vfs.hard_link(&a, &b).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "the armed fault");
        vfs.metadata(&a).unwrap();
        assert_eq!(
            *seen.lock(),
            [
                (OpKind::Rename, b.clone(), Some(a.clone())),
                (OpKind::Link, b.clone(), Some(a.clone())),
                (OpKind::Stat, a.clone(), None),
            ]
        );
        let injected: Vec<_> = vfs
            .injected()
            .into_iter()
            .map(|i| (i.kind, i.error))
            .collect();
        assert_eq!(
            injected,
            [
                (OpKind::Rename, InjectedError::Enospc),
                (OpKind::Link, InjectedError::Eio)
            ]
        );
        assert_eq!(vfs.ops(), 3);

        vfs.remove_hook();
        vfs.rename(&a, &b).unwrap();
        assert_eq!(seen.lock().len(), 3);
    }

    #[test]
    fn a_hook_holds_no_lock_and_may_do_io_and_arm_faults() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Faulty::new(StdVfs);
        let planted = dir.path().join("planted");
        vfs.on_op({
            let (vfs, planted) = (vfs.clone(), planted.clone());
            move |op: &OpEvent<'_>| {
                if op.kind == OpKind::Create && op.path == planted {
                    // I/O of its own, and the layer's own state.
                    StdVfs.create_dir(&planted).unwrap();
                    vfs.arm(Fault::nth(1).only([OpKind::FileSync]));
                    assert!(vfs.injected().is_empty());
                }
                None
            }
        });
        let err = vfs.create_new(&planted, 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(planted.is_dir());
        let file = vfs.create_new(&dir.path().join("f"), 0o600).unwrap();
        assert_eq!(file.sync_all().unwrap_err().raw_os_error(), Some(5));
        // The hook holds a clone of the layer: removing it ends the cycle.
        vfs.remove_hook();
    }

    #[test]
    fn faulty_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Faulty>();
        check::<FaultyFile<std::fs::File>>();
    }
}
