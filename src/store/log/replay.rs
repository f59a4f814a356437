//! Reading the journal into the index, on open and when catching up with other
//! processes, and deciding what a frame that does not check means.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::FIRST_SEQ;
use super::frame::{self, FileHeader, decode_ops};
use super::index::{ApplyOp, Index, Loader};
use super::journal::{Journal, Later, Stop};
use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::vfs::{Vfs, VfsFile};

/// A journal opened, its index, and why reading it stopped.
pub(super) type Loaded<F> = (Journal<F>, Index<F>, Stop);

/// Opens the journal at `path` and reads it whole into a fresh index; returns
/// why reading stopped too.
/// The index caches values up to about `cache_bytes`.
pub(super) fn load<V: Vfs>(vfs: &V, path: &Path, cache_bytes: usize) -> Result<Loaded<V::File>> {
    // Callers hold the `lock` flock, without which no compaction renames a
    // journal into place: the inode read after the open is the opened file's.
    let file = crate::store::open_own_file(vfs, path, 0o600, steps::OPEN_JOURNAL)?;
    let inode = vfs.inode(path).at(steps::STAT_JOURNAL, path)?;
    let mut head = [0u8; frame::FILE_HEADER_LEN as usize];
    let n = file
        .read_at(&mut head, 0)
        .at(steps::READ_JOURNAL_HEADER, path)?;
    let header = FileHeader::decode(&head[..n]).map_err(|reason| Error::CorruptFile {
        path: path.to_path_buf(),
        reason,
    })?;
    let allocated = file.size().at(steps::STAT_JOURNAL, path)?;
    let mut journal = Journal {
        file: Arc::new(file),
        header,
        inode,
        end: frame::FILE_HEADER_LEN,
        next_seq: FIRST_SEQ,
        allocated,
        noticed: false,
    };
    let mut loader = Loader::new(journal.file.clone(), cache_bytes);
    let stop = read_into(&mut journal, &mut loader, path, None)?;
    if stop == Stop::End {
        check_no_frame_after_zeros(&journal, path)?;
    }
    Ok((journal, loader.finish(), stop))
}

/// Reading stopped at zeros, where the journal's preallocated space begins, or
/// where damage zeroed a frame's header (a bad sector, say). Only the second
/// leaves an intact frame of this journal after it: that is damage in the
/// middle, reported, never the silent loss of every frame after it.
///
/// Reads the rest of the file once, so it runs when a journal is loaded (open,
/// or a reload after a compaction), not on every catch-up.
fn check_no_frame_after_zeros<F: VfsFile>(journal: &Journal<F>, path: &Path) -> Result<()> {
    match journal.later_frame().at(steps::SCAN_JOURNAL, path)? {
        None => Ok(()),
        Some((later, found)) => Err(Error::CorruptFile {
            path: path.to_path_buf(),
            reason: format!(
                "the frame at byte {} is zeros, but {}: the journal is damaged in the middle",
                journal.end,
                written_after(later, found)
            ),
        }),
    }
}

/// What was found written after a bad frame, for the report.
fn written_after(at: u64, found: Later) -> String {
    match found {
        Later::Intact => format!("the frame at byte {at}, written after it, is intact"),
        Later::Header => {
            format!("the header at byte {at} names a frame written after it (itself damaged too)")
        }
    }
}

/// Reads the frames appended after `journal.end` into `index`; returns why it
/// stopped.
pub(super) fn read_into<F: VfsFile>(
    journal: &mut Journal<F>,
    index: &mut impl ApplyOp,
    path: &Path,
    mut touched: Option<&mut Vec<Vec<u8>>>,
) -> Result<Stop> {
    let mut last_noticed = None;
    let read = journal
        .read_new(|payload_at, payload| {
            last_noticed = Some(frame::is_notice(payload));
            for op in decode_ops(payload)? {
                if let Some(touched) = touched.as_deref_mut() {
                    touched.extend(op.key().map(<[u8]>::to_vec));
                }
                index.apply_op(op, payload_at);
            }
            Ok(())
        })
        .at(steps::READ_JOURNAL, path)?;
    if let Some(noticed) = last_noticed {
        journal.noticed = noticed;
    }
    read.map_err(|(offset, reason)| Error::CorruptFile {
        path: path.to_path_buf(),
        reason: format!("frame at byte {offset} passed its checksum but does not decode: {reason}"),
    })
}

/// Whether a caller may repair the journal's tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// Under the shared lock: a bad frame is left for a writer.
    Shared,
    /// Under the exclusive lock: a torn tail is zeroed, damage is an error.
    Exclusive,
}

/// What to do when reading stopped (`stop`, at `journal.end`) at a frame that
/// does not check. A failed flush of the repair sets `poisoned`.
pub(super) fn settle_tail<F: VfsFile>(
    journal: &mut Journal<F>,
    stop: Stop,
    path: &Path,
    sync: bool,
    access: Access,
    poisoned: &AtomicBool,
) -> Result<()> {
    let Stop::Bad { offset, reason } = stop else {
        return Ok(());
    };
    if access == Access::Shared {
        return Ok(());
    }
    if let Some((later, found)) = journal.later_frame().at(steps::SCAN_JOURNAL, path)? {
        return Err(Error::CorruptFile {
            path: path.to_path_buf(),
            reason: format!(
                "frame at byte {offset} is damaged ({reason}) but {}: the journal is damaged \
                 in the middle",
                written_after(later, found)
            ),
        });
    }
    // A write torn by a crash, or failed: it was never acknowledged.
    journal.clear_tail(sync).map_err(|failure| {
        if failure.poisons() {
            poisoned.store(true, Ordering::SeqCst);
        }
        Error::io(failure.step, path, failure.source)
    })
}
