//! The operating system's filesystem.

// This is the vfs layer: the one place of the library that calls `std::fs`.
#![allow(clippy::disallowed_methods)]

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{DIR_MODE, FileInfo, FileKind, Vfs, VfsFile};

/// [`Vfs`] that calls the operating system directly. Zero-sized: using it costs
/// nothing over calling `std::fs` by hand.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdVfs;

impl Vfs for StdVfs {
    type File = File;

    fn create_new(&self, path: &Path, mode: u32) -> io::Result<File> {
        // The umask may have cleared bits of `mode`: set them exactly.
        create_new_then(path, mode, |file| {
            file.set_permissions(fs::Permissions::from_mode(mode))
        })
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    fn open_regular_file(&self, path: &Path) -> io::Result<File> {
        // Elsewhere than Linux, without the open flags at hand, a check before
        // the open; a link or FIFO swapped in after it is caught after the
        // open (by then a FIFO has blocked it).
        #[cfg(not(target_os = "linux"))]
        if !fs::symlink_metadata(path)?.is_file() {
            return Err(super::not_a_regular_file());
        }
        open_own_regular(OpenOptions::new().read(true), path)
    }

    fn open_or_create(&self, path: &Path, mode: u32) -> io::Result<File> {
        open_own_regular(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(mode),
            path,
        )
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        fs::canonicalize(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
        // The umask may have cleared bits of the mode: set them exactly. A
        // directory whose mode cannot be set is removed again, as a file is.
        if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)) {
            let _ = fs::remove_dir(path);
            return Err(e);
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        // Only a directory: a FIFO swapped in for one would block the open.
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(directory_open_flags())
            .open(path)?;
        crate::trace::flushed();
        dir.sync_all()
    }

    fn metadata(&self, path: &Path) -> io::Result<FileInfo> {
        let meta = fs::symlink_metadata(path)?;
        let kind = if meta.is_file() {
            FileKind::File
        } else if meta.is_dir() {
            FileKind::Dir
        } else {
            FileKind::Other
        };
        Ok(FileInfo {
            kind,
            len: meta.len(),
            modified: meta.modified()?,
            inode: meta.ino(),
        })
    }

    fn inode(&self, path: &Path) -> io::Result<u64> {
        #[cfg(target_os = "linux")]
        if let Some(stat) = statx_only(rustix::fs::CWD, path, rustix::fs::StatxFlags::INO)? {
            return Ok(stat.stx_ino);
        }
        Ok(fs::symlink_metadata(path)?.ino())
    }

    #[cfg(target_os = "linux")]
    fn remove_tree(&self, path: &Path) -> io::Result<bool> {
        use rustix::fs::{Mode, OFlags};
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            // `/`, `..` or empty: nothing this removes by name.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no entry of a directory", path.display()),
            ));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let parent = match rustix::fs::open(parent, flags, Mode::empty()) {
            Ok(parent) => parent,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        remove_at(&parent, Path::new(name))
    }
}

/// Removes the entry `name` of the directory `parent`: a directory with
/// everything in it, reached only through descriptors opened without
/// following a link, or anything else by itself. `false` if it was not there.
#[cfg(target_os = "linux")]
fn remove_at<P: rustix::path::Arg + Copy>(
    parent: &std::os::fd::OwnedFd,
    name: P,
) -> io::Result<bool> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    use rustix::io::Errno;
    let flags =
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let dir = match rustix::fs::openat(parent, name, flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::NOENT) => return Ok(false),
        // A symlink, a file or anything but a directory: removed itself.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(true),
                Err(e) => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let entry_name = entry.file_name();
        if entry_name != c"." && entry_name != c".." {
            names.push(entry_name.to_owned());
        }
    }
    for entry_name in &names {
        match rustix::fs::unlinkat(&dir, entry_name.as_c_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            // A directory (Linux says `EISDIR`, POSIX allows `EPERM`).
            Err(Errno::ISDIR | Errno::PERM) => {
                remove_at(&dir, entry_name.as_c_str())?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// `statx` of `path` (relative to `dirfd`; empty for `dirfd` itself) asking for
/// `mask` alone; `None` where the kernel or filesystem cannot answer that way
/// (no `statx` before Linux 4.11 or under a filter that refuses it, or a field
/// it does not report), so that the caller falls back to a plain `stat`.
#[cfg(target_os = "linux")]
fn statx_only<Fd: std::os::fd::AsFd>(
    dirfd: Fd,
    path: &Path,
    mask: rustix::fs::StatxFlags,
) -> io::Result<Option<rustix::fs::Statx>> {
    use rustix::fs::AtFlags;
    let flags = if path.as_os_str().is_empty() {
        AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    match rustix::fs::statx(dirfd, path, flags, mask) {
        Ok(stat) if rustix::fs::StatxFlags::from_bits_retain(stat.stx_mask).contains(mask) => {
            Ok(Some(stat))
        }
        // Older container seccomp filters refuse `statx` with EPERM (std falls
        // back to `stat` then too); EINVAL, a kernel that rejects the request.
        Ok(_)
        | Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM | rustix::io::Errno::INVAL) => {
            Ok(None)
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Whether an open file is a regular file (`fstat`), asking for its type alone
/// where the system allows, as [`VfsFile::size`] does.
fn is_regular_file(file: &File) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    if let Some(stat) = statx_only(file, Path::new(""), rustix::fs::StatxFlags::TYPE)? {
        let mode = rustix::fs::RawMode::from(stat.stx_mode);
        return Ok(rustix::fs::FileType::from_raw_mode(mode) == rustix::fs::FileType::RegularFile);
    }
    Ok(file.metadata()?.file_type().is_file())
}

/// Creates `path` exclusively and runs `init` on the new file. If `init` fails the
/// file is removed again (best-effort): a failed create leaves nothing behind.
fn create_new_then(
    path: &Path,
    mode: u32,
    init: impl FnOnce(&File) -> io::Result<()>,
) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    if let Err(e) = init(&file) {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

impl VfsFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        Read::read_to_end(self, buf)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            let at = offset + filled as u64;
            match FileExt::read_at(self, &mut buf[filled..], at) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        #[cfg(target_os = "linux")]
        if let Some(stat) = statx_only(self, Path::new(""), rustix::fs::StatxFlags::SIZE)? {
            return Ok(stat.stx_size);
        }
        Ok(self.metadata()?.len())
    }

    #[cfg(target_os = "linux")]
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        match seek_keeping_position(self, rustix::fs::SeekFrom::Data(offset)) {
            Ok(at) => Ok(Some(at)),
            // Nothing but holes from `offset` to the end.
            Err(rustix::io::Errno::NXIO) => Ok(None),
            // A filesystem that cannot tell: no holes.
            Err(e) if cannot_seek_holes(e) => Ok(Some(offset)),
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(target_os = "linux")]
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        match seek_keeping_position(self, rustix::fs::SeekFrom::Hole(offset)) {
            Ok(at) => Ok(at),
            // At or past the end.
            Err(rustix::io::Errno::NXIO) => self.size(),
            Err(e) if cannot_seek_holes(e) => self.size(),
            Err(e) => Err(e.into()),
        }
    }

    fn sync_all(&self) -> io::Result<()> {
        crate::trace::flushed();
        File::sync_all(self)
    }

    fn sync_data(&self) -> io::Result<()> {
        crate::trace::flushed();
        File::sync_data(self)
    }

    fn lock(&self) -> io::Result<()> {
        File::lock(self)
    }

    fn lock_shared(&self) -> io::Result<()> {
        File::lock_shared(self)
    }

    fn try_lock(&self) -> io::Result<bool> {
        match File::try_lock(self) {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn try_lock_shared(&self) -> io::Result<bool> {
        match File::try_lock_shared(self) {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn unlock(&self) -> io::Result<()> {
        File::unlock(self)
    }
}

/// Opens `path` with `options`, refusing anything but a regular file: on
/// Linux a symlink at `path` fails the open (`O_NOFOLLOW`, reported as not a
/// regular file rather than as ELOOP, which has other causes too), and a FIFO
/// or a device is opened without waiting (`O_NONBLOCK`, `O_NOCTTY`), only to
/// be refused once open.
fn open_own_regular(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::OFlags;
        let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        options.custom_flags(flags.bits() as i32);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) => {
            let link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(if link { super::not_a_regular_file() } else { e });
        }
    };
    if !is_regular_file(&file)? {
        return Err(super::not_a_regular_file());
    }
    Ok(file)
}

/// The flags of an open of a directory to flush: on Linux, `O_DIRECTORY`,
/// which fails on anything else without opening it, and `O_NONBLOCK`
/// besides.
fn directory_open_flags() -> i32 {
    #[cfg(target_os = "linux")]
    {
        (rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NONBLOCK).bits() as i32
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Whether `lseek(SEEK_DATA/SEEK_HOLE)` failed because the filesystem (a
/// FUSE or network one, say) does not support it.
#[cfg(target_os = "linux")]
fn cannot_seek_holes(errno: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [Errno::INVAL, Errno::OPNOTSUPP, Errno::NOSYS, Errno::SPIPE].contains(&errno)
}

/// Seeks `file` as `to` says and puts its position back: where `to` leads.
/// A file of the crate's is read and written at offsets, but a caller's
/// file handed to a [`Vfs`] may rely on its position.
#[cfg(target_os = "linux")]
fn seek_keeping_position(file: &File, to: rustix::fs::SeekFrom) -> rustix::io::Result<u64> {
    let position = rustix::fs::seek(file, rustix::fs::SeekFrom::Current(0))?;
    let found = rustix::fs::seek(file, to);
    rustix::fs::seek(file, rustix::fs::SeekFrom::Start(position))?;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO where a directory to flush was is refused without waiting for
    /// a writer; a directory, and a link to one, are flushed.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_directory_flush_refuses_a_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = StdVfs.sync_dir(&fifo).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOTDIR.raw_os_error())
        );
        StdVfs.sync_dir(dir.path()).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        StdVfs.sync_dir(&link).unwrap();
    }

    #[test]
    fn a_create_whose_mode_cannot_be_set_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new");

        let err = create_new_then(&path, 0o600, |_| {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        })
        .unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(fs::symlink_metadata(&path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound));
    }

    #[test]
    fn inode_reports_what_metadata_does_and_not_found_for_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        fs::write(&path, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();

        assert_eq!(
            StdVfs.inode(&path).unwrap(),
            StdVfs.metadata(&path).unwrap().inode
        );
        // Like `metadata`, the link itself, not its target.
        assert_eq!(
            StdVfs.inode(&link).unwrap(),
            StdVfs.metadata(&link).unwrap().inode
        );
        assert_ne!(StdVfs.inode(&link).unwrap(), StdVfs.inode(&path).unwrap());
        let missing = StdVfs.inode(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn size_follows_writes_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let file = StdVfs.create_new(&dir.path().join("f"), 0o600).unwrap();
        assert_eq!(VfsFile::size(&file).unwrap(), 0);
        VfsFile::write_all_at(&file, b"abc", 4093).unwrap();
        assert_eq!(VfsFile::size(&file).unwrap(), 4096);
    }

    #[test]
    fn open_regular_file_refuses_links_fifos_devices_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"mine").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());

        let mut read = Vec::new();
        VfsFile::read_to_end(&mut StdVfs.open_regular_file(&file).unwrap(), &mut read).unwrap();
        assert_eq!(read, b"mine");
        let others = [&link, &dangling, &fifo, dir.path(), Path::new("/dev/null")];
        let others: Vec<_> = others.iter().map(|p| p.to_path_buf()).collect();
        let count = others.len();
        // Nobody writes to the FIFO: a blocking open would never return, so the
        // opens run in a thread that the test stops waiting for.
        let (done, opened) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for other in others {
                let kind = StdVfs
                    .open_regular_file(&other)
                    .map(|_| ())
                    .map_err(|e| e.kind());
                done.send((other, kind)).unwrap();
            }
        });
        for _ in 0..count {
            let (other, kind) = opened
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("an open blocked");
            assert_eq!(kind, Err(io::ErrorKind::InvalidData), "{}", other.display());
        }
        let missing = StdVfs.open_regular_file(&dir.path().join("missing"));
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn open_or_create_does_not_follow_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("outside");
        let link = dir.path().join("lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        assert!(StdVfs.open_or_create(&link, 0o600).is_err());
        assert!(!target.exists(), "the open created the link's target");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn open_or_create_refuses_a_fifo_or_a_device_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());

        // Opened for reading and writing a FIFO does not block on Linux; the
        // check of the opened file is what refuses it, as it refuses a device.
        for other in [fifo.as_path(), Path::new("/dev/null"), dir.path()] {
            let refused = StdVfs.open_or_create(other, 0o600).unwrap_err();
            assert!(
                matches!(
                    refused.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::IsADirectory
                ),
                "{}: {refused}",
                other.display()
            );
        }
        let created = dir.path().join("created");
        assert!(StdVfs.open_or_create(&created, 0o600).is_ok());
        assert!(StdVfs.open_or_create(&created, 0o600).is_ok());
    }

    /// A tree with files, empty directories and links inside, with a
    /// directory outside that the links name.
    fn tree_beside_outside() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("deep")).unwrap();
        fs::write(outside.join("deep/precious"), b"keep").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b/empty")).unwrap();
        fs::write(tree.join("a/b/file"), b"x").unwrap();
        fs::write(tree.join("top"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/to-outside")).unwrap();
        std::os::unix::fs::symlink(outside.join("deep/precious"), tree.join("to-file")).unwrap();
        (dir, tree, outside)
    }

    #[test]
    fn remove_tree_removes_everything_below_and_never_what_a_link_names() {
        let (_dir, tree, outside) = tree_beside_outside();
        assert!(StdVfs.remove_tree(&tree).unwrap());
        assert!(!tree.exists() && fs::symlink_metadata(&tree).is_err());
        assert_eq!(fs::read(outside.join("deep/precious")).unwrap(), b"keep");
        assert!(
            !StdVfs.remove_tree(&tree).unwrap(),
            "nothing left to remove"
        );
    }

    /// What a directory swapped for a link while a walk by path runs would
    /// make it follow: a link in the tree's own place. Removed itself, never
    /// walked through.
    #[test]
    fn remove_tree_of_a_link_removes_the_link_only() {
        let (dir, _tree, outside) = tree_beside_outside();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert!(StdVfs.remove_tree(&link).unwrap());
        assert!(fs::symlink_metadata(&link).is_err());
        assert_eq!(fs::read(outside.join("deep/precious")).unwrap(), b"keep");
    }

    /// The walk by path, which wrappers get, removes the same.
    #[test]
    fn remove_tree_by_path_removes_the_same_tree() {
        let (_dir, tree, outside) = tree_beside_outside();
        assert!(super::super::remove_tree_by_path(&StdVfs, &tree).unwrap());
        assert!(!tree.exists());
        assert_eq!(fs::read(outside.join("deep/precious")).unwrap(), b"keep");
    }
}
