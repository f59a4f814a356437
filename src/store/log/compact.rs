//! Compaction: a new journal holding only the live records replaces the old one,
//! without stopping writers for longer than it takes to copy the frames they
//! appended while it was written.
//!
//! 1. Under the journal's locks, note where the journal ends (`mark`).
//! 2. Without them, replay the journal up to `mark` into a fresh index and write
//!    its records to a new file, `journal.new-*`, and flush it. Writers go on
//!    appending to the old journal meanwhile.
//! 3. Under the exclusive lock, append to the new file the frames written after
//!    `mark`, flush it, rename it over `journal`, flush the directory. Other
//!    processes see the journal's inode change and reload.
//!
//! A crash before the rename leaves the old journal as it was and a
//! `journal.new-*` file, which the next open removes; a crash after it leaves the
//! new journal, which holds everything the old one did.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Packed;
use super::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN, FileHeader, FrameBuilder, decode_ops};
use super::index::{self, ApplyOp, Index, Loader, Slot};
use super::journal::{self, Journal, PREALLOCATE};
use super::{Access, COMPACT_LOCK, FIRST_SEQ, Flock, NEW_JOURNAL_PREFIX, Probe, Shared};
use crate::atomic::AtomicWriter;
use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::store::open_own_file;
use crate::vfs::{Vfs, VfsFile};

/// Snapshot frames are cut at about this many payload bytes.
const SNAPSHOT_FRAME: usize = 1 << 20;

/// What a compaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compaction {
    /// Live records written to the new journal.
    pub records: usize,
    /// Bytes of frames in the journal before.
    pub bytes_before: u64,
    /// Bytes of frames in the new journal.
    pub bytes_after: u64,
    /// The new journal's generation.
    pub generation: u64,
}

/// Whether to wait for a compaction another thread or process is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// Wait, then compact.
    Yes,
    /// Give up at once.
    No,
}

/// Creates a new journal file, named so that an abandoned one is recognized.
pub(super) fn new_journal_file<V: Vfs>(vfs: &V, root: &Path) -> Result<(PathBuf, V::File)> {
    let path = root.join(format!(
        "{NEW_JOURNAL_PREFIX}{}",
        uuid::Uuid::new_v4().simple()
    ));
    let file = vfs
        .create_new(&path, 0o600)
        .at(steps::CREATE_NEW_JOURNAL, &path)?;
    Ok((path, file))
}

/// Renames a complete journal file into place, durably.
pub(super) fn install<V: Vfs>(vfs: &V, from: &Path, to: &Path, sync: bool) -> Result<()> {
    vfs.rename(from, to)
        .at(steps::RENAME_NEW_JOURNAL_INTO_PLACE, to)?;
    if sync {
        let dir = to.parent().unwrap_or(Path::new("."));
        vfs.sync_dir(dir).at(steps::FSYNC_STORE_DIRECTORY, dir)?;
    }
    Ok(())
}

/// Removes the `journal.new-*` files of compactions that crashed, unless a
/// compaction is running now.
pub(super) fn sweep_abandoned<V: Vfs>(writer: &AtomicWriter<V>, root: &Path) -> Result<()> {
    let vfs = writer.vfs();
    let lock_path = root.join(COMPACT_LOCK);
    let lock = open_own_file(vfs, &lock_path, 0o600, steps::OPEN_COMPACTION_LOCK)?;
    if !lock.try_lock().at(steps::LOCK_COMPACTION, &lock_path)? {
        return Ok(());
    }
    let _held = Flock { file: &lock };
    for name in vfs.read_dir(root).at(steps::LIST_STORE_DIRECTORY, root)? {
        if name.to_string_lossy().starts_with(NEW_JOURNAL_PREFIX) {
            let path = root.join(&name);
            match vfs.remove_file(&path) {
                Ok(()) => {}
                // Not a compaction's file (a directory someone made): not
                // ours to remove, and no reason to refuse the open.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory
                    ) => {}
                Err(e) => return Err(Error::io(steps::REMOVE_ABANDONED_JOURNAL, path, e)),
            }
        }
    }
    Ok(())
}

/// Starts a background compaction if the policy asks for one and none runs.
pub(super) fn maybe_start<V: Vfs>(shared: &Arc<Shared<V>>) {
    let policy = shared.policy;
    if !policy.enabled || shared.compacting.load(Ordering::Relaxed) {
        return;
    }
    let written = shared.probe.lock().at;
    if written < policy.min_bytes || written < shared.compact_retry_at.load(Ordering::Relaxed) {
        return;
    }
    let live = shared.index.read().live_bytes;
    let dead = 1.0 - (live as f64 / written as f64);
    if dead <= policy.dead_ratio || shared.compacting.swap(true, Ordering::SeqCst) {
        return;
    }
    let held = super::InBackground::new(shared);
    let spawned = std::thread::Builder::new()
        .name("jobsafe-compact".to_owned())
        .spawn(move || {
            let background = held.shared();
            let outcome = run(background, Wait::No);
            background.changes.tell();
            let busy = matches!(&outcome, Err(Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock);
            if outcome.is_err() {
                // Not again before the journal grew some more: no thread per
                // commit while another process compacts or the disk is full.
                let step = (policy.min_bytes / 4).max(1 << 20);
                background
                    .compact_retry_at
                    .store(written.saturating_add(step), Ordering::Relaxed);
            }
            if !busy {
                *background.last_compaction_error.lock() = outcome.err().map(|e| e.to_string());
            }
            background.compacting.store(false, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        *shared.last_compaction_error.lock() = Some(format!("cannot start compaction: {e}"));
        shared.compacting.store(false, Ordering::SeqCst);
    }
}

/// Compacts the journal (see the module docs).
pub(super) fn run<V: Vfs>(shared: &Shared<V>, wait: Wait) -> Result<Compaction> {
    if shared.poisoned.load(Ordering::SeqCst) {
        return Err(shared.poisoned_error());
    }
    let vfs = shared.writer.vfs();
    let root = &shared.root;
    let lock_path = root.join(COMPACT_LOCK);
    let lock = open_own_file(vfs, &lock_path, 0o600, steps::OPEN_COMPACTION_LOCK)?;
    match wait {
        Wait::Yes => lock.lock().at(steps::LOCK_COMPACTION, &lock_path)?,
        Wait::No => {
            if !lock.try_lock().at(steps::LOCK_COMPACTION, &lock_path)? {
                return Err(Error::Io {
                    step: steps::LOCK_COMPACTION,
                    path: lock_path,
                    source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
                });
            }
        }
    }
    let _held = Flock { file: &lock };

    // 1. Where the journal ends now.
    let (old, mark) = {
        let mut journal = shared.journal.lock();
        // No flock in exclusive mode: this handle holds it exclusively.
        let _flock = shared
            .lock_file()
            .map(|file| Flock::shared(file, &shared.lock_path()))
            .transpose()?;
        shared.catch_up(&mut journal, Access::Shared)?;
        (Mark::of(&journal), journal.end)
    };

    // 2. The live records up to `mark`, in a new file, and the index of it.
    let snapshot = replay(&old, mark, &shared.journal_path)?;
    let records = snapshot.len();
    let (new_path, new_file) = new_journal_file(vfs, root)?;
    let mut new = NewJournal {
        file: Arc::new(new_file),
        path: new_path,
        header: FileHeader {
            journal_id: fastrand::u64(..),
            generation: old.header.generation + 1,
        },
        end: FILE_HEADER_LEN,
        next_seq: FIRST_SEQ,
        allocated: 0,
    };
    let written = new
        .write_snapshot(snapshot, &shared.journal_path, shared.value_cache)
        .and_then(|index| new.preallocate(shared.sync).map(|()| index));
    let mut new_index = match written {
        Ok(index) => index,
        Err(e) => {
            new.abandon(vfs);
            return Err(e);
        }
    };

    // 3. The frames appended meanwhile, then the switch. The index it
    // replaces is freed once the locks below are released (declared before
    // them, it is dropped after them): freeing a large tree takes a while.
    let _retired: Index<V::File>;
    let mut journal = shared.journal.lock();
    let _flock = shared
        .lock_file()
        .map(|file| Flock::exclusive(file, &shared.lock_path()))
        .transpose()?;
    let switched = (|| {
        shared.catch_up(&mut journal, Access::Exclusive)?;
        if journal.inode != old.inode {
            return Err(Error::Io {
                step: steps::COMPACT_JOURNAL,
                path: shared.journal_path.clone(),
                source: std::io::Error::other("another process compacted the journal first"),
            });
        }
        if shared.poisoned.load(Ordering::SeqCst) {
            return Err(shared.poisoned_error());
        }
        new.copy_tail(&journal, mark, &old, &mut new_index)?;
        new.flush_tail(shared.sync)?;
        // Read before the rename, which keeps it, so that nothing can fail
        // between the rename and the switch of this handle to the new file
        // but the directory's flush, which poisons.
        let inode = vfs.inode(&new.path).at(steps::STAT_JOURNAL, &new.path)?;
        if !shared.is_exclusive() {
            notify_readers(shared, &mut journal)?;
        }
        install(vfs, &new.path, &shared.journal_path, false)?;
        if shared.sync {
            let synced = vfs.sync_dir(&shared.root);
            if let Err(e) = synced {
                // The new journal may or may not be the one a restart finds.
                shared.poisoned.store(true, Ordering::SeqCst);
                return Err(Error::io(steps::FSYNC_STORE_DIRECTORY, &shared.root, e));
            }
        }
        Ok(inode)
    })();
    let inode = match switched {
        Ok(inode) => inode,
        Err(e) => {
            new.abandon(vfs);
            return Err(e);
        }
    };
    let bytes_before = journal.end;
    let NewJournal {
        file,
        header,
        end,
        next_seq,
        allocated,
        ..
    } = new;
    // The index of the new journal: the same records, read from the new file.
    _retired = std::mem::replace(&mut *shared.index.write(), new_index);
    *journal = Journal {
        file,
        header,
        inode,
        end,
        next_seq,
        allocated,
        noticed: false,
    };
    *shared.probe.lock() = Probe {
        inode,
        at: end,
        file: journal.file.clone(),
        noticed: false,
    };
    if shared.sync {
        shared.named.store(inode, Ordering::SeqCst);
    }
    shared.compactions.fetch_add(1, Ordering::Relaxed);
    Ok(Compaction {
        records,
        bytes_before,
        bytes_after: end,
        generation: header.generation,
    })
}

/// Appends a compaction's notice to the old journal (the caller holds the
/// journal mutex and the `lock` flock, and renames the new journal next):
/// other processes' readers look only at the place of the next frame, and
/// this frame there sends them to catch up, and so to find the journal
/// replaced.
///
/// Flushed as every frame is: if the rename fails, writers go on appending
/// to this journal, and a frame is written only after the one before it is
/// durable (a lost notice before an intact frame would read as damage in
/// the middle). This handle's own probe marks the notice read, so that its
/// reads compare the journal's inode if the compaction fails after its
/// rename.
fn notify_readers<V: Vfs>(shared: &Shared<V>, journal: &mut Journal<V::File>) -> Result<()> {
    let notice = FrameBuilder::notice(journal.header.journal_id, journal.next_seq);
    // This handle's own readers know: the frame is not another process's.
    shared.probe.lock().at = journal.end + notice.len() as u64;
    let appended = journal.append(&notice, shared.sync);
    let mut probe = shared.probe.lock();
    probe.at = journal.end;
    if let Err(failure) = appended {
        if failure.poisons() {
            shared.poisoned.store(true, Ordering::SeqCst);
        }
        return Err(Error::io(
            failure.step,
            &shared.journal_path,
            failure.source,
        ));
    }
    probe.noticed = true;
    journal.noticed = true;
    Ok(())
}

/// The journal a compaction started from.
struct Mark<F> {
    file: Arc<F>,
    header: FileHeader,
    inode: u64,
    next_seq: u64,
}

impl<F> Mark<F> {
    fn of(journal: &Journal<F>) -> Self {
        Mark {
            file: journal.file.clone(),
            header: journal.header,
            inode: journal.inode,
            next_seq: journal.next_seq,
        }
    }
}

/// The state of the journal up to `mark`, read afresh from the file.
fn replay<F: VfsFile>(old: &Mark<F>, mark: u64, path: &Path) -> Result<Index<F>> {
    // Read once, in key order, to be copied: no cache.
    let mut loader = Loader::new(old.file.clone(), 0);
    let scanned = journal::scan(
        &*old.file,
        &old.header,
        FILE_HEADER_LEN,
        mark,
        FIRST_SEQ,
        |payload_at, payload| {
            for op in decode_ops(payload)? {
                loader.apply_op(op, payload_at);
            }
            Ok(())
        },
    )
    .at(steps::READ_JOURNAL, path)?;
    match scanned {
        Ok(end) if end.end == mark => Ok(loader.finish()),
        Ok(end) => Err(Error::CorruptFile {
            path: path.to_path_buf(),
            reason: format!(
                "journal read back for compaction ends at byte {} instead of {mark}",
                end.end
            ),
        }),
        Err((_, offset, reason)) => Err(Error::CorruptFile {
            path: path.to_path_buf(),
            reason: format!("frame at byte {offset} does not decode: {reason}"),
        }),
    }
}

/// The new journal being written.
struct NewJournal<F> {
    file: Arc<F>,
    path: PathBuf,
    header: FileHeader,
    end: u64,
    next_seq: u64,
    allocated: u64,
}

impl<F: VfsFile> NewJournal<F> {
    fn write_frame(&mut self, frame: &[u8]) -> Result<()> {
        self.file
            .write_all_at(frame, self.end)
            .at(steps::WRITE_NEW_JOURNAL, &self.path)?;
        self.end += frame.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// The header, the version floor and every live record, with values read
    /// from the old journal (at `old_path`) and checked; returns the index of
    /// what it wrote.
    fn write_snapshot<G: VfsFile>(
        &mut self,
        snapshot: Index<G>,
        old_path: &Path,
        cache_bytes: usize,
    ) -> Result<Index<F>> {
        self.file
            .write_all_at(&self.header.encode(), 0)
            .at(steps::WRITE_NEW_JOURNAL, &self.path)?;
        let mut loader = Loader::new(self.file.clone(), cache_bytes);
        let floor = crate::Version::new(snapshot.last_version);
        loader.floor(floor);
        let mut frame = FrameBuilder::new();
        frame.floor(floor);
        // The records of the frame being built, their slots counted from
        // its start.
        let mut in_frame: Vec<(Packed, Slot)> = Vec::new();
        let old_file = snapshot.file().clone();
        let mut values = ValueReader::new(&*old_file, old_path);
        for (key, slot) in snapshot.into_records() {
            if frame.payload_len() >= SNAPSHOT_FRAME {
                let full = std::mem::replace(&mut frame, FrameBuilder::new());
                self.write_records(full, &mut in_frame, &mut loader)?;
            }
            let at = frame.put(&key, slot.version, values.read(slot)?);
            in_frame.push((
                key,
                Slot {
                    at: at as u64,
                    ..slot
                },
            ));
        }
        self.write_records(frame, &mut in_frame, &mut loader)?;
        Ok(loader.finish())
    }

    /// Writes a frame of the snapshot and hands its records to the index.
    fn write_records(
        &mut self,
        frame: FrameBuilder,
        records: &mut Vec<(Packed, Slot)>,
        loader: &mut Loader<F>,
    ) -> Result<()> {
        let frame_at = self.end;
        let bytes = frame.finish(self.header.journal_id, self.next_seq);
        self.write_frame(&bytes)?;
        for (key, slot) in records.drain(..) {
            loader.put(key, slot.moved(frame_at));
        }
        Ok(())
    }

    /// Copies the frames the old journal got after `mark`, renumbered, and
    /// applies them to the new journal's `index`.
    fn copy_tail<G: VfsFile>(
        &mut self,
        journal: &Journal<G>,
        mark: u64,
        old: &Mark<G>,
        index: &mut Index<F>,
    ) -> Result<()> {
        let mut payloads = Vec::new();
        let scanned = journal::scan(
            &*journal.file,
            &journal.header,
            mark,
            journal.end,
            old.next_seq,
            |_, payload| {
                payloads.push(payload.to_vec());
                Ok(())
            },
        )
        .at(steps::READ_JOURNAL, &self.path)?;
        if !matches!(scanned, Ok(ref end) if end.end == journal.end) {
            return Err(Error::CorruptFile {
                path: self.path.clone(),
                reason: format!("journal frames after byte {mark} did not read back whole"),
            });
        }
        for payload in payloads {
            let ops = decode_ops(&payload).map_err(|reason| Error::CorruptFile {
                path: self.path.clone(),
                reason: format!("a frame written after byte {mark} does not decode: {reason}"),
            })?;
            let payload_at = self.end + FRAME_HEADER_LEN as u64;
            let frame = FrameBuilder::reframe(&payload, self.header.journal_id, self.next_seq);
            self.write_frame(&frame)?;
            for op in ops {
                index.apply_op(op, payload_at);
            }
        }
        Ok(())
    }

    /// Zero-fills space for appends after the snapshot and flushes it all,
    /// before the switch, so that the writers it stalls wait for neither.
    fn preallocate(&mut self, sync: bool) -> Result<()> {
        let zeros = vec![0u8; PREALLOCATE as usize];
        self.file
            .write_all_at(&zeros, self.end)
            .at(steps::PREALLOCATE_NEW_JOURNAL, &self.path)?;
        self.allocated = self.end + PREALLOCATE;
        if sync {
            self.file
                .sync_all()
                .at(steps::FSYNC_NEW_JOURNAL, &self.path)?;
        }
        Ok(())
    }

    /// Flushes the frames copied after the snapshot (and the file's length, if
    /// they outgrew the preallocated space).
    fn flush_tail(&mut self, sync: bool) -> Result<()> {
        self.allocated = self.allocated.max(self.end);
        if sync {
            self.file
                .sync_all()
                .at(steps::FSYNC_NEW_JOURNAL, &self.path)?;
        }
        Ok(())
    }

    /// Removes the file of a compaction that gave up.
    fn abandon<V: Vfs>(&self, vfs: &V) {
        // Left behind, the next open removes it.
        let _ = vfs.remove_file(&self.path);
    }
}

/// Reads the values of a snapshot from the old journal: a window of it at a
/// time while they come in file order (a journal written in key order, as a
/// compacted one is), one value at a time otherwise.
struct ValueReader<'a, G> {
    file: &'a G,
    path: &'a Path,
    window: Vec<u8>,
    /// Where the window starts in the file.
    start: u64,
}

/// Bytes read at a time while values come in file order.
const VALUE_WINDOW: usize = 1 << 20;

impl<'a, G: VfsFile> ValueReader<'a, G> {
    fn new(file: &'a G, path: &'a Path) -> Self {
        ValueReader {
            file,
            path,
            window: Vec::new(),
            start: 0,
        }
    }

    /// The value at `slot`, checked against its checksum.
    fn read(&mut self, slot: Slot) -> Result<&[u8]> {
        let window_end = self.start + self.window.len() as u64;
        let end = slot.at + u64::from(slot.len);
        if slot.at < self.start || end > window_end {
            let in_order = slot.at >= self.start && slot.at < window_end + VALUE_WINDOW as u64;
            let len = if in_order {
                (slot.len as usize).max(VALUE_WINDOW)
            } else {
                slot.len as usize
            };
            self.window.resize(len, 0);
            let n = self
                .file
                .read_at(&mut self.window, slot.at)
                .at(steps::READ_JOURNAL_VALUE, self.path)?;
            self.window.truncate(n);
            self.start = slot.at;
        }
        let from = (slot.at - self.start) as usize;
        let to = (from + slot.len as usize).min(self.window.len());
        let value = &self.window[from..to];
        index::check_value(slot, value, self.path)?;
        Ok(value)
    }
}
