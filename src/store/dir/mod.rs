//! The inspectable embedded store: one file per key under a directory.

mod journal;
mod layout;
mod list;
mod naming;
mod notify;
mod record_file;
mod scan;
mod stripes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use self::journal::Change;
use self::layout::Layout;
use self::record_file::RecordFile;
use self::stripes::StripeGuard;
use crate::atomic::AtomicWriter;
use crate::clock::{Clock, SystemClock};
use crate::durability::Durability;
use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::key::{Key, Prefix};
use crate::store::{
    Applied, Batch, BatchOp, Changes, Entry, Expect, ListPage, Quarantined, Scan, Store, Version,
    check_limit, open_own_regular_file, read_own_bytes, read_own_file,
};
use crate::trace;
use crate::vfs::{FileKind, KnownDurable, StdVfs, Vfs};

/// A [`Store`] keeping one file per key under a directory: simple, inspectable, and
/// safe across threads, processes and crashes.
///
/// Pick it over [`LogStore`](crate::LogStore), the default embedded store, when
/// you want to read and repair records with a shell (records are files you can
/// `cat`, back up and diff), or hold more records than fit in memory: it keeps no
/// record in memory and its open does not read them all. The price is speed: a
/// put costs two disk flushes (the new file, then its directory after the
/// rename) where `LogStore` costs one shared by concurrent writers, a delete up
/// to three (the stripe's version floor, then the directory), a batch three for
/// its journal plus two per record. In one comparison run a job's life (create,
/// start, complete, with its events) cost 38 flushes here against 6 on
/// `LogStore`.
///
/// # Design
///
/// ```text
/// root/
///   jobsafe-dirstore        format marker
///   data/<seg>.d/<seg>.r    one record file per key; segments encoded to safe names
///   stripes/NN.lock|.floor  64 lock stripes and their version floors
///   journal/*.batch         redo journals of batches in flight
///   quarantine/             records moved aside by `quarantine`
/// ```
///
/// - Every write replaces its record file through the [`AtomicWriter`] (temp file,
///   fsync, rename, directory fsync), so a record is always the old one or the new.
/// - Each key hashes to one of 64 lock stripes; reads take the stripe shared and
///   writes exclusive, with `flock` through a fresh open each time, so threads and
///   processes serialize alike and a crashed process holds nothing.
/// - [`apply`](Store::apply) locks all its stripes, writes a redo journal durably,
///   applies, then removes the journal. Whoever next locks a stripe of a journal
///   left by a crash completes it, and [`open`](DirStore::open) completes them all.
/// - Key segments are encoded to file names that are never `.`/`..`, never hidden,
///   free of `/`, `\` and NUL, distinct on case-insensitive filesystems, and
///   shortened with a SHA-256 when long.
/// - On Linux, [`changes_by_others`](Store::changes_by_others) tells of other
///   processes' (and other handles') changes under a prefix from the kernel's
///   reports of record files renamed into place or removed there (inotify,
///   one thread per watched handle), so that a runner or a subscription on a
///   `DirStore` wakes at once rather than at its next poll.
///
/// The on-disk format is described in `docs/format.md` in the repository.
///
/// # Guarantees
///
/// The whole [`Store`] contract, with [`Durability::Full`] (the default): a write
/// that returned `Ok` survives a power loss. A record file that does not decode
/// (bad checksum, truncated, edited by hand) is [`Error::Corrupt`] naming the file.
/// After a failed fsync the store is poisoned: writes return [`Error::Poisoned`]
/// until it is reopened. Reads go on, except those of keys whose batch is still
/// pending (completing it would be a write): they return `Poisoned` too.
/// Directories are created with mode `0o700` and files with `0o600`, whatever
/// the umask. A symlink (or a file) found where a directory of the store belongs
/// is never followed out of the store: puts, quarantines and listings report
/// it as [`Error::CorruptFile`] naming it, and so do a get or a delete that
/// find a record through it; a get or a delete of a key below a file or a
/// link to nothing finds no record there (absent, or `false`); a sweep skips
/// it.
///
/// Reads are as careful as writes. The store reads only regular files of its
/// own, opened without following a symlink and without waiting
/// (`O_NOFOLLOW | O_NONBLOCK` on Linux), and never more of one than its format
/// allows: a record file at most its header and [`Entry::MAX_VALUE_LEN`]
/// (about 16.1 MiB), a batch journal [`DirStore::MAX_BATCH_BYTES`], a version
/// floor or the marker 256 bytes, a long segment's `.segment` file 1 KiB. A
/// symlink, a FIFO, a socket, a device, a directory or a longer file in the
/// place of one is an error naming it, at once: [`Error::Corrupt`] for a
/// record (from every operation on its key; [`quarantine`](Store::quarantine)
/// moves whatever is there aside unread, as it moves other damage, and the key
/// is free again), [`Error::CorruptFile`] for the others. Reads never move
/// anything aside themselves.
///
/// The store's directory itself may be given as a symlink: it is resolved
/// once, when the store is opened, and the store works in the directory it
/// named then ([`root`](DirStore::root)); re-pointing the link later moves
/// nothing. A link whose target does not exist, or names something other than
/// a directory, fails the open with an [`Error::Io`] that says so. Nothing
/// below the root is ever followed.
///
/// [`scan`](Store::scan) walks the tree under its prefix once, in key order,
/// reading each directory when a page first needs it and keeping its entries,
/// sorted, until the walk leaves it: it holds one page and, for each directory
/// on its path (at most 16 deep), the entries it has not reached yet. A page
/// that reads a directory holds every stripe shared while it does, as `list`
/// does, so writers wait for that read, never for the whole scan, and the
/// caller may write between pages. A key created in a directory after the
/// scan read it is missed, one deleted after is still returned.
///
/// A full disk (`ENOSPC`) or a read-only filesystem fails the write with
/// [`Error::Io`] naming the file, leaves the old record whole and does not
/// poison: the store takes writes again once space is freed.
///
/// # Limitations
///
/// - The symlink check inspects each directory on a record's way (`lstat`) before
///   writing into it or reading from it; someone who can write to the store's
///   directories and swaps a directory for a symlink between that check and the
///   write or read is not stopped. Keep the store's root owned by the service's
///   user.
/// - A delete first rewrites its stripe's version floor, a small file: on a disk
///   with no space left at all it fails with `ENOSPC` like a put. Free space
///   outside the store to delete records.
/// - Opening needs write access (stripe lock files are created and opened for
///   writing): on a read-only filesystem [`open`](DirStore::open) fails naming
///   the first lock file; a store already open goes on reading.
/// - A directory whose name was shortened with a hash (its segment encodes to more
///   than 150 bytes) stays when its last key is deleted; other emptied directories
///   are removed.
/// - A record whose version cannot be read when it is moved aside is assumed to
///   have been updated fewer than 2³² times; beyond that its key could, once
///   re-created, repeat a version it had before.
/// - [`changes_by_others`](Store::changes_by_others) watches each directory
///   from `data/` down to the prefix's and every directory below it, one
///   inotify watch each: where the kernel's limit of watches
///   (`fs.inotify.max_user_watches`) is reached it answers `None`, with a
///   warning, and runners and subscriptions poll; reached later, by a
///   directory made since, every watcher is told every second until the
///   directory can be watched (a poll of a second, in effect). Watches are
///   kept until the last watcher of the handle is gone, even of prefixes
///   nobody watches any more.
/// - A [`list`](Store::list) page walks again the directories between the
///   prefix and its cursor, reading and sorting each whole: paging through the
///   n keys of one directory costs n / page reads of n names. Read many keys
///   with [`scan`](Store::scan), which reads each directory once.
///
/// ```
/// use jobsafe::{DirStore, Expect, Key, Prefix, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = DirStore::open(dir.path())?;
/// let key = Key::new(["jobs", "lic:abc", "../escape"])?;
/// let v = store.put(&key, br#"{"status":"queued"}"#, Expect::Absent)?;
/// assert_eq!(store.get(&key)?.unwrap().version, v);
/// assert!(store.path_of(&key).starts_with(dir.path()));
/// assert_eq!(store.list_all(&Prefix::new(["jobs"])?)?, vec![key]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct DirStore<V: Vfs = StdVfs> {
    inner: Arc<Inner<V>>,
}

impl<V: Vfs> Clone for DirStore<V> {
    fn clone(&self) -> Self {
        DirStore {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<V: Vfs> {
    layout: Layout,
    writer: AtomicWriter<V>,
    poisoned: AtomicBool,
    /// Directories under `data/` this handle knows to be durable.
    known: KnownDurable,
    /// Who watches for other writers' changes (`Store::changes_by_others`).
    notices: Arc<notify::Notices>,
}

/// Options for opening a [`DirStore`].
///
/// ```
/// use jobsafe::{DirStore, Durability};
///
/// let dir = tempfile::tempdir()?;
/// let store = DirStore::builder(dir.path())
///     .durability(Durability::Full)
///     .create(true)
///     .open()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct DirStoreBuilder<V: Vfs = StdVfs> {
    root: PathBuf,
    vfs: V,
    durability: Durability,
    create: bool,
    sweep_at_open: Option<Duration>,
}

impl DirStore<StdVfs> {
    /// Opens the store at `root`, creating the directory and the store if missing.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path that could not be created or read;
    /// [`Error::CorruptFile`] if `root` is a non-empty directory that is not a
    /// store, or holds a damaged store file.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        DirStore::builder(root).open()
    }

    /// Options for opening the store at `root`.
    pub fn builder(root: impl AsRef<Path>) -> DirStoreBuilder<StdVfs> {
        DirStoreBuilder {
            root: root.as_ref().to_path_buf(),
            vfs: StdVfs,
            durability: Durability::Full,
            create: true,
            sweep_at_open: Some(DirStore::SWEEP_AT_OPEN),
        }
    }

    /// How old a temp file must be for [`DirStore::open`] to take it for a dead
    /// writer's and remove it: one hour. A write holds its temp file for the
    /// time of one write; a writer paused for longer than this finds its temp
    /// file gone and its write fails, nothing else.
    pub const SWEEP_AT_OPEN: Duration = Duration::from_secs(3600);

    /// The longest batch journal a batch may take (the record files of its
    /// puts, at the longest version, and the keys of its deletes): 256 MiB, 16
    /// times [`Entry::MAX_VALUE_LEN`], so that a batch of up to 15 values of
    /// the largest size, with their keys, always fits. A larger batch is
    /// refused with [`Error::TooLarge`] (with no key: it is the batch's size)
    /// before anything is written. Reading a journal back goes no further, so
    /// no file in the journal's place makes a read allocate more. This bound
    /// is `DirStore`'s own: the [`Store`] contract bounds each value, not a
    /// batch.
    pub const MAX_BATCH_BYTES: usize = 16 * Entry::MAX_VALUE_LEN;
}

const MAX_BATCH_BYTES: usize = DirStore::MAX_BATCH_BYTES;

impl<V: Vfs> DirStoreBuilder<V> {
    /// Does all I/O through `vfs` (to count, fail or trace operations in tests).
    /// Default: [`StdVfs`].
    pub fn vfs<W: Vfs>(self, vfs: W) -> DirStoreBuilder<W> {
        DirStoreBuilder {
            root: self.root,
            vfs,
            durability: self.durability,
            create: self.create,
            sweep_at_open: self.sweep_at_open,
        }
    }

    /// What a write survives once it returns. Default: [`Durability::Full`].
    /// **[`Durability::AtomicOnly`] loses acknowledged writes on power loss**: for
    /// tests and benchmarks only.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Whether to create the directory and the store if missing. Default: `true`.
    /// With `false`, a missing store is an [`Error::Io`] of kind `NotFound`.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Which temp files opening the store removes: those at least `min_age` old
    /// (by their modification time and the system clock), or none with `None`.
    /// Sweeping reads every directory of the store once, which takes about as
    /// long as listing every key; turn it off for a store so large that this
    /// matters, and sweep with [`DirStore::sweep_temp_files`] (or
    /// [`Pipeline::purge`](crate::Pipeline::purge)) on a schedule instead.
    /// Default: `Some(`[`DirStore::SWEEP_AT_OPEN`]`)`.
    pub fn sweep_at_open(mut self, min_age: Option<Duration>) -> Self {
        self.sweep_at_open = min_age;
        self
    }

    /// Opens the store, completing any batch a crashed process left half done
    /// and removing the temp files of writers that died (see
    /// [`sweep_at_open`](DirStoreBuilder::sweep_at_open)).
    ///
    /// # Errors
    /// As [`DirStore::open`].
    pub fn open(self) -> Result<DirStore<V>> {
        let writer = AtomicWriter::with_vfs(self.vfs).with_durability(self.durability);
        let root = crate::store::resolve_root(writer.vfs(), &self.root)?;
        let layout = Layout::open(&writer, &root, self.create)?;
        let store = DirStore {
            inner: Arc::new(Inner {
                layout,
                writer,
                poisoned: AtomicBool::new(false),
                known: KnownDurable::default(),
                notices: Arc::default(),
            }),
        };
        store.recover_all()?;
        if let Some(min_age) = self.sweep_at_open {
            // Hygiene, not correctness: a temp file that cannot be removed now
            // (a read-only mount, say) is left for a later sweep, which reports it.
            let _ = store.sweep_temp_files(min_age, &SystemClock);
        }
        Ok(store)
    }
}

impl<V: Vfs> DirStore<V> {
    /// The store's directory: the one it was opened at, or, if that was a
    /// symlink, the directory the link named when the store was opened.
    pub fn root(&self) -> &Path {
        &self.inner.layout.root
    }

    /// The file that holds (or would hold) `key`'s record.
    pub fn path_of(&self, key: &Key) -> PathBuf {
        self.inner.layout.record_path(key)
    }

    /// Whether an earlier fsync failure poisoned this handle (and its clones).
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// Removes temp files at least `min_age` old left in the store by crashed
    /// writers, and the temp directories of long key segments whose creation a
    /// crash cut short, returning how many were removed. See
    /// [`AtomicWriter::sweep`].
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory or file.
    pub fn sweep_temp_files(&self, min_age: Duration, clock: &dyn Clock) -> Result<usize> {
        let mut removed = 0;
        let writer = &self.inner.writer;
        for dir in list::all_dirs(writer.vfs(), &self.inner.layout)? {
            let swept = writer.sweep(&dir, min_age, clock).and_then(|files| {
                layout::sweep_temp_dirs(writer, &dir, min_age, clock).map(|dirs| files.len() + dirs)
            });
            match swept {
                Ok(count) => removed += count,
                // Pruned by a concurrent delete since it was listed: nothing in it.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    fn writer(&self) -> &AtomicWriter<V> {
        &self.inner.writer
    }

    fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    fn check_writable(&self) -> Result<()> {
        if self.is_poisoned() {
            return Err(Error::Poisoned {
                path: self.root().to_path_buf(),
            });
        }
        Ok(())
    }

    /// Poisons the store if `result` failed in a flush, whose outcome on disk is
    /// unknown.
    fn watch<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            let failed_flush = match e {
                Error::NotDurable { .. } => true,
                // A flush that could not even open its target lost nothing.
                Error::Io { step, source, .. } => {
                    step.is_flush() && source.kind() != std::io::ErrorKind::NotFound
                }
                _ => false,
            };
            if failed_flush {
                self.inner.poisoned.store(true, Ordering::Release);
            }
        }
        result
    }

    /// Runs `f` holding `stripes`, after completing any journal a dead process left
    /// on them.
    fn with_stripes<T>(
        &self,
        stripes: &[usize],
        exclusive: bool,
        f: impl FnOnce(&StripeGuard<V::File>) -> Result<T>,
    ) -> Result<T> {
        f(&self.lock_stripes(stripes, exclusive)?)
    }

    /// Takes `stripes`, after completing any journal a dead process left on them.
    fn lock_stripes(&self, stripes: &[usize], exclusive: bool) -> Result<StripeGuard<V::File>> {
        loop {
            let guard = stripes::lock(
                self.writer().vfs(),
                &self.layout().stripes,
                stripes.iter().copied(),
                exclusive,
            )?;
            let orphans = self.journals_concerning(&guard.stripes)?;
            if orphans.is_empty() {
                return Ok(guard);
            }
            // Their owners are dead: a live owner would hold our stripes. Release
            // ours so that recovery takes the journal's stripes in order.
            drop(guard);
            for name in orphans {
                self.recover(&name)?;
            }
        }
    }

    /// Every stripe, shared: no write is in flight while the guard is held.
    fn lock_all_shared(&self) -> Result<StripeGuard<V::File>> {
        let all: Vec<usize> = (0..stripes::STRIPES).collect();
        self.lock_stripes(&all, false)
    }

    fn journals_concerning(&self, held: &[usize]) -> Result<Vec<String>> {
        let dir = &self.layout().journal;
        let names = self
            .writer()
            .vfs()
            .read_dir(dir)
            .at(steps::READ_JOURNAL_DIRECTORY, dir)?;
        Ok(names
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .filter(|n| journal::concerns(n, held))
            .collect())
    }

    fn recover_all(&self) -> Result<()> {
        for name in self.journals_concerning(&(0..stripes::STRIPES).collect::<Vec<_>>())? {
            self.recover(&name)?;
        }
        Ok(())
    }

    /// Completes the journal `name` if it still exists.
    fn recover(&self, name: &str) -> Result<()> {
        let Some(stripes) = journal::stripes_of(name) else {
            return Ok(());
        };
        let _guard = stripes::lock(self.writer().vfs(), &self.layout().stripes, stripes, true)?;
        let path = self.layout().journal.join(name);
        let vfs = self.writer().vfs();
        // A link, a FIFO or a device in a journal's place, or a file longer
        // than a batch can write, is not read: it stays, reported, as an
        // undecodable journal does.
        let Some(bytes) = read_own_file(vfs, &path, journal::MAX_LEN, steps::READ_JOURNAL)? else {
            // Completed by its owner or another recoverer meanwhile.
            return Ok(());
        };
        self.check_writable()?;
        let changes = journal::decode(&path, &bytes)?;
        // Another writer's batch (or this handle's, cut off): its changes
        // are told to this handle's watchers as another's would be.
        self.watch(self.apply_changes(&changes, Origin::Recovered))?;
        self.watch(self.remove_journal(&path))
    }

    fn apply_changes(&self, changes: &[Change], origin: Origin) -> Result<()> {
        for change in changes {
            match change {
                Change::Put { key, file } => self.write_record_file(key, file, origin)?,
                Change::Delete { key } => {
                    self.remove_record_file(key)?;
                }
            }
        }
        Ok(())
    }

    fn remove_journal(&self, path: &Path) -> Result<()> {
        let vfs = self.writer().vfs();
        vfs.remove_file(path).at(steps::REMOVE_JOURNAL, path)?;
        self.sync_dir(&self.layout().journal)
    }

    /// Makes `dir`'s entries durable. If a concurrent delete pruned `dir` (it was
    /// empty then), syncing the nearest ancestor that still exists makes that removal,
    /// and so the removal of everything that was in it, durable instead.
    /// `#[track_caller]`: the flush site a test layer sees is the caller's.
    #[track_caller]
    fn sync_dir(&self, dir: &Path) -> Result<()> {
        if self.writer().durability_level() != Durability::Full {
            return Ok(());
        }
        let mut dir = dir;
        loop {
            match self.writer().vfs().sync_dir(dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != self.root() => {
                    dir = layout::parent(dir);
                }
                result => return result.at(steps::FSYNC_DIRECTORY, dir),
            }
        }
    }

    /// The record of `key`, read only from a regular file reached through real
    /// directories: a symlink on the way or in its place, a FIFO, a device, or
    /// a file longer than a record can be, is [`Error::Corrupt`] naming the
    /// file (or [`Error::CorruptFile`] naming the directory), never followed
    /// or read.
    fn read_record(&self, key: &Key) -> Result<Option<RecordFile>> {
        let vfs = self.writer().vfs();
        let path = self.path_of(key);
        let corrupt = |reason: String| Error::Corrupt {
            key: key.clone(),
            path: Some(path.clone()),
            reason,
        };
        let file = match open_own_regular_file(vfs, &path, steps::READ_RECORD) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(None),
            Err(Error::CorruptFile { reason, .. }) => return Err(corrupt(reason)),
            Err(Error::Io { source, .. }) if is_absent(&source) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Opened, not read yet: checked only now, so that a key without a
        // record costs no more. A record reached through a symlink planted on
        // its way is never read.
        let segments = key.segments();
        if !self
            .layout()
            .check_dirs(vfs, &segments[..segments.len() - 1])?
        {
            return Ok(None);
        }
        let bytes = read_own_bytes(&file, &path, record_file::MAX_LEN, steps::READ_RECORD)
            .map_err(|e| match e {
                Error::CorruptFile { reason, .. } => corrupt(reason),
                e => e,
            })?;
        let record = record_file::decode(&bytes).map_err(corrupt)?;
        if record.key != *key {
            return Err(corrupt(format!("file holds the record of {}", record.key)));
        }
        Ok(Some(record))
    }

    fn write_record_file(&self, key: &Key, bytes: &[u8], origin: Origin) -> Result<()> {
        // A delete of another key may remove the (then empty) directory between our
        // creating it and our temp file landing in it, or before we flush its
        // parent, and a sweep may claim a hashed directory we were still
        // building; create it again and retry.
        let mut attempts = 0;
        loop {
            let known = &self.inner.known;
            let result = self
                .layout()
                .ensure_parent(self.writer(), known, key)
                .and_then(|path| {
                    let mut pending = self.writer().begin(path)?;
                    if origin == Origin::OwnCall {
                        self.inner.notices.note_own_write(pending.temp_path());
                    }
                    // From here the temp file keeps every directory on the
                    // way from being pruned: the ones made durable are the
                    // ones the record lands in.
                    self.layout().make_way_durable(self.writer(), known, key)?;
                    pending.write_bytes(bytes)?;
                    pending.commit()
                });
            match result {
                Err(Error::Io { step, source, .. })
                    if matches!(
                        step,
                        steps::CREATE_TEMP_FILE
                            | steps::CREATE_DIRECTORY
                            | steps::FSYNC_DIRECTORY
                            | steps::RENAME_DIRECTORY_INTO_PLACE
                    ) && source.kind() == std::io::ErrorKind::NotFound
                        && attempts < 8 =>
                {
                    attempts += 1;
                }
                result => return result,
            }
        }
    }

    /// Removes a record file; `false` if there was none.
    fn remove_record_file(&self, key: &Key) -> Result<bool> {
        self.layout().check_parents(self.writer().vfs(), key)?;
        let path = self.path_of(key);
        match self.writer().vfs().remove_file(&path) {
            Ok(()) => {}
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(Error::io(steps::REMOVE_RECORD, path, e)),
        }
        let parent = layout::parent(&path);
        self.sync_dir(parent)?;
        self.prune_empty_dirs(parent);
        Ok(true)
    }

    /// Removes `dir` and its ancestors below `data/` while they are empty, so that
    /// deleted keys leave no directories behind. Best-effort: `rmdir` refuses a
    /// directory that is not empty, which is the only check needed, and a directory
    /// that comes back after a crash is harmless.
    fn prune_empty_dirs(&self, mut dir: &Path) {
        let data = &self.layout().data;
        let vfs = self.writer().vfs();
        while dir != data && dir.starts_with(data) {
            if vfs.remove_dir(dir).is_err() {
                return;
            }
            self.inner.known.forget(dir);
            dir = layout::parent(dir);
        }
    }

    fn stripe(&self, key: &Key) -> usize {
        naming::stripe_of(key.segments(), stripes::STRIPES)
    }

    fn next_version(&self, key: &Key, current: Option<&RecordFile>) -> Result<Version> {
        match current {
            Some(record) => match record.version.get().checked_add(1) {
                Some(next) if next < u64::MAX / 2 => Ok(Version::new(next)),
                _ => Err(Error::CorruptFile {
                    path: self.path_of(key),
                    reason: format!("version {} leaves no room to grow", record.version),
                }),
            },
            None => stripes::first_version(
                self.writer().vfs(),
                &self.layout().stripes,
                self.stripe(key),
            ),
        }
    }
}

impl<V: Vfs> Store for DirStore<V> {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        trace::store_call(trace::Backend::DIR, "get", key, || {
            self.with_stripes(&[self.stripe(key)], false, |_| {
                Ok(self.read_record(key)?.map(|r| Entry {
                    value: r.value,
                    version: r.version,
                }))
            })
        })
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        trace::store_call(trace::Backend::DIR, "put", key, || {
            Entry::check_value(key, value)?;
            self.check_writable()?;
            self.with_stripes(&[self.stripe(key)], true, |_| {
                let current = self.read_record(key)?;
                expect.check(key, current.as_ref().map(|r| r.version))?;
                let version = self.next_version(key, current.as_ref())?;
                let bytes = record_file::encode(key, version, value);
                self.watch(self.write_record_file(key, &bytes, Origin::OwnCall))?;
                Ok(version)
            })
        })
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        trace::store_call(trace::Backend::DIR, "delete", key, || {
            self.check_writable()?;
            let stripe = self.stripe(key);
            self.with_stripes(&[stripe], true, |_| {
                let Some(current) = self.read_record(key)? else {
                    expect.check(key, None)?;
                    return Ok(false);
                };
                expect.check(key, Some(current.version))?;
                let stripes_dir = &self.layout().stripes;
                self.watch(stripes::raise_floor(
                    self.writer(),
                    stripes_dir,
                    stripe,
                    Some(current.version),
                ))?;
                self.watch(self.remove_record_file(key))
            })
        })
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        trace::store_call(trace::Backend::DIR, "list", prefix, || {
            check_limit(limit)?;
            // All stripes shared: no write is in flight while the tree is walked, so a
            // page never shows part of a batch, and no rename in a directory being
            // read can hide a record's name from the read.
            let _all = self.lock_all_shared()?;
            list::list(self.writer().vfs(), self.layout(), prefix, after, limit)
        })
    }

    /// Reads each directory under `prefix` once, when a page first needs it
    /// (see [`DirStore`]).
    fn scan(&self, prefix: &Prefix, page_size: usize) -> Scan<'_> {
        scan::scan(self, prefix, page_size)
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        trace::store_call(trace::Backend::DIR, "apply", batch, || {
            batch.validate()?;
            let journal_len = journal::max_len(batch);
            if journal_len > MAX_BATCH_BYTES {
                return Err(Error::too_large(
                    "DirStore batch",
                    None,
                    journal_len,
                    MAX_BATCH_BYTES,
                ));
            }
            self.check_writable()?;
            let stripes: Vec<usize> = batch.ops().iter().map(|op| self.stripe(op.key())).collect();
            self.with_stripes(&stripes, true, |guard| {
                let mut changes = Vec::with_capacity(batch.len());
                let mut applied = Vec::with_capacity(batch.len());
                let mut floors = Vec::new();
                for op in batch.ops() {
                    let current = self.read_record(op.key())?;
                    op.expect()
                        .check(op.key(), current.as_ref().map(|r| r.version))?;
                    match op {
                        BatchOp::Put { key, value, .. } => {
                            let version = self.next_version(key, current.as_ref())?;
                            let file = record_file::encode(key, version, value);
                            changes.push(Change::Put {
                                key: key.clone(),
                                file,
                            });
                            applied.push(Applied::Put(version));
                        }
                        BatchOp::Delete { key, .. } => {
                            if let Some(current) = &current {
                                floors.push((self.stripe(key), current.version));
                                changes.push(Change::Delete { key: key.clone() });
                            }
                            applied.push(Applied::Deleted(current.is_some()));
                        }
                    }
                }
                // Floors first: a delete must never be durable before the floor that
                // keeps its versions from coming back.
                for (stripe, version) in floors {
                    self.watch(stripes::raise_floor(
                        self.writer(),
                        &self.layout().stripes,
                        stripe,
                        Some(version),
                    ))?;
                }
                // Checked at every batch, not only at open: the journal must not land
                // in a symlink planted since.
                crate::store::is_own_dir(self.writer().vfs(), &self.layout().journal)?;
                let journal_path = self.layout().journal.join(journal::name(&guard.stripes));
                self.watch(
                    self.writer()
                        .write(&journal_path, &journal::encode(&changes)),
                )?;
                // From here the batch is committed: if applying fails, the journal stays
                // and whoever next takes these stripes completes it. The caller must
                // learn that, or a retry would apply the batch twice.
                let completed = self
                    .watch(self.apply_changes(&changes, Origin::OwnCall))
                    .and_then(|()| self.watch(self.remove_journal(&journal_path)));
                completed.map_err(|e| Error::BatchPending {
                    journal: journal_path.clone(),
                    source: Box::new(e),
                })?;
                Ok(applied)
            })
        })
    }

    fn sweep_temp_files(&self, min_age: Duration, clock: &dyn Clock) -> Result<usize> {
        DirStore::sweep_temp_files(self, min_age, clock)
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        trace::store_call(trace::Backend::DIR, "quarantine", key, || {
            self.check_writable()?;
            let stripe = self.stripe(key);
            self.with_stripes(&[stripe], true, |_| {
                let path = self.path_of(key);
                let vfs = self.writer().vfs();
                self.layout().check_parents(vfs, key)?;
                // The version of a record that fails its checksum cannot be trusted
                // (the damage may be in the version itself): count it as unknown, and
                // the floor jumps past any version the key can have reached. So is
                // the version of what is not a record file at all (a symlink, a
                // FIFO, a device, a directory, a file longer than a record can
                // be): it is moved aside as it is, never followed or read.
                let version =
                    match read_own_file(vfs, &path, record_file::MAX_LEN, steps::READ_RECORD) {
                        Ok(Some(bytes)) => record_file::decode(&bytes).ok().map(|r| r.version),
                        Ok(None) => return Ok(None),
                        Err(Error::CorruptFile { .. }) => None,
                        Err(Error::Io { source, .. }) if is_absent(&source) => return Ok(None),
                        Err(e) => return Err(e),
                    };
                self.watch(stripes::raise_floor(
                    self.writer(),
                    &self.layout().stripes,
                    stripe,
                    version,
                ))?;
                crate::store::is_own_dir(vfs, &self.layout().quarantine)?;
                let target = self.layout().quarantine_path(&path);
                vfs.rename(&path, &target)
                    .at(steps::MOVE_RECORD_TO_QUARANTINE, &target)?;
                self.watch(self.sync_dir(&self.layout().quarantine))?;
                self.watch(self.sync_dir(layout::parent(&path)))?;
                Ok(Some(Quarantined {
                    key: key.clone(),
                    location: target.display().to_string(),
                }))
            })
        })
    }

    /// `true`: the directory is taken to be on a filesystem of this machine. A
    /// directory on a network filesystem that several machines mount breaks this
    /// promise; use a store shared by design (PostgreSQL) across machines.
    fn is_machine_local(&self) -> bool {
        true
    }

    /// On Linux: tells of other writers' changes to records under `prefix`
    /// as soon as a thread of this process, woken by the kernel (inotify),
    /// has read the report of the record file's rename or removal; a
    /// directory created on the way or below tells every watcher. `None`
    /// elsewhere than on Linux, and when the kernel refuses a watch (its
    /// inotify limits reached).
    fn changes_by_others(&self, prefix: &Prefix) -> Option<Changes> {
        let subdirs = || -> notify::ListSubdirs {
            // Weak: the watching thread must not keep the store open.
            let inner = Arc::downgrade(&self.inner);
            Arc::new(move |dir: &Path| {
                let Some(inner) = inner.upgrade() else {
                    return Ok(Vec::new());
                };
                let vfs = inner.writer.vfs();
                let mut dirs = Vec::new();
                for name in vfs.read_dir(dir)? {
                    if !name
                        .to_str()
                        .is_some_and(|n| n.ends_with(naming::DIR_SUFFIX))
                    {
                        continue;
                    }
                    match vfs.metadata(&dir.join(&name)) {
                        Ok(info) if info.kind == FileKind::Dir => dirs.push(name),
                        Ok(_) => {}
                        // Removed since the listing: nothing to watch.
                        Err(e) if is_absent(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(dirs)
            })
        };
        notify::watch(&self.inner.notices, &self.layout().data, subdirs, prefix)
    }
}

/// Whose change a record write carries out, for the watchers of other
/// writers' changes (`Store::changes_by_others`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A call made through this handle: its caller knows.
    OwnCall,
    /// A batch found pending and completed: whoever began it may be another
    /// process, and nobody here knows.
    Recovered,
}

/// A missing file, or a missing or non-directory parent on the way to it.
fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
