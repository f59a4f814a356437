//! Helpers shared by the integration tests. Each test binary compiles this module
//! and uses a part of it, hence the `dead_code` allowance; `pub` marks what the
//! tests use, which the crate-level `unreachable_pub` lint cannot see. A helper
//! that cannot do its job fails the test that called it, by panicking.
#![allow(dead_code, unreachable_pub, clippy::panic)]

pub mod backends;
pub mod child;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod power_loss;
pub mod relay;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jobsafe::AtomicWriter;
use jobsafe::vfs::{FileInfo, StdVfs, Vfs, VfsFile};

/// What a test returns: `?` works on any error, and a failure prints it.
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The temp files (names ending in [`AtomicWriter::TEMP_SUFFIX`]) in `dir`.
pub(crate) fn temp_files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut temps = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(AtomicWriter::TEMP_SUFFIX)
        {
            temps.push(entry.path());
        }
    }
    Ok(temps)
}

/// The temp files and directories (names ending in [`AtomicWriter::TEMP_SUFFIX`]) anywhere
/// under `dir`.
pub(crate) fn temp_files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut temps = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(AtomicWriter::TEMP_SUFFIX)
        {
            temps.push(entry.path());
        }
        if entry.file_type()?.is_dir() {
            temps.extend(temp_files_under(&entry.path())?);
        }
    }
    Ok(temps)
}

/// An error and its causes, each once, as a reporter that walks the chain
/// prints them.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The permission bits of `path` itself (a symlink is not followed).
pub(crate) fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

/// Sets the permission bits of `path`.
pub(crate) fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// A filesystem operation that [`FailingVfs`] can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    CreateNew,
    SyncFile,
    Rename,
    HardLink,
    RemoveFile,
    SyncDir,
}

/// A [`Vfs`] on the real filesystem ([`StdVfs`]) in which every call of one chosen
/// operation fails. It counts the failures it injected, so that a test can check
/// that the fault it is about actually happened.
#[derive(Clone, Debug)]
pub(crate) struct FailingVfs {
    failing: Op,
    injected: Arc<AtomicUsize>,
}

impl FailingVfs {
    pub(crate) fn failing(op: Op) -> Self {
        FailingVfs {
            failing: op,
            injected: Arc::default(),
        }
    }

    /// How many failures were injected so far.
    pub(crate) fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    fn check(&self, op: Op) -> io::Result<()> {
        if op != self.failing {
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        Err(io::Error::other(format!("injected {op:?} failure")))
    }

    fn wrap(&self, file: File) -> FailingFile {
        FailingFile {
            inner: file,
            vfs: self.clone(),
        }
    }
}

impl Vfs for FailingVfs {
    type File = FailingFile;

    fn create_new(&self, path: &Path, mode: u32) -> io::Result<FailingFile> {
        self.check(Op::CreateNew)?;
        StdVfs.create_new(path, mode).map(|f| self.wrap(f))
    }

    fn open_read(&self, path: &Path) -> io::Result<FailingFile> {
        StdVfs.open_read(path).map(|f| self.wrap(f))
    }

    fn open_or_create(&self, path: &Path, mode: u32) -> io::Result<FailingFile> {
        StdVfs.open_or_create(path, mode).map(|f| self.wrap(f))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename)?;
        StdVfs.rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::HardLink)?;
        StdVfs.hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::RemoveFile)?;
        StdVfs.remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        StdVfs.create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        StdVfs.remove_dir(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        StdVfs.read_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncDir)?;
        StdVfs.sync_dir(path)
    }

    fn metadata(&self, path: &Path) -> io::Result<FileInfo> {
        StdVfs.metadata(path)
    }
}

/// A file opened through [`FailingVfs`]; its fsyncs fail when [`Op::SyncFile`] does.
#[derive(Debug)]
pub(crate) struct FailingFile {
    inner: File,
    vfs: FailingVfs,
}

impl VfsFile for FailingFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        VfsFile::write_all(&mut self.inner, buf)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        VfsFile::read_to_end(&mut self.inner, buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        VfsFile::read_at(&self.inner, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        VfsFile::write_all_at(&self.inner, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        VfsFile::size(&self.inner)
    }

    fn try_lock(&self) -> io::Result<bool> {
        VfsFile::try_lock(&self.inner)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.vfs.check(Op::SyncFile)?;
        VfsFile::sync_all(&self.inner)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.vfs.check(Op::SyncFile)?;
        VfsFile::sync_data(&self.inner)
    }

    fn lock(&self) -> io::Result<()> {
        VfsFile::lock(&self.inner)
    }

    fn lock_shared(&self) -> io::Result<()> {
        VfsFile::lock_shared(&self.inner)
    }

    fn unlock(&self) -> io::Result<()> {
        VfsFile::unlock(&self.inner)
    }
}
