//! The journal file: reading frames in order, appending into preallocated space,
//! and telling a torn tail from damage in the middle.

use std::io;
use std::sync::Arc;

use super::frame::{
    self, FILE_HEADER_LEN, FRAME_HEADER_LEN, FileHeader, HeaderRead, check_payload, claimed_seq,
};
use crate::error::{IoStep, steps};
use crate::vfs::VfsFile;

/// Journal space is zero-filled ahead of the writes in steps of this size, so an
/// append overwrites space the file already has and its `fdatasync` flushes data
/// only, not a new file size.
pub(crate) const PREALLOCATE: u64 = 4 << 20;

/// How reads of the journal are buffered: the first read of a scan is small,
/// since catching up usually finds one frame or none, and each further read is
/// twice as large, up to the maximum, for a scan of the whole journal.
const FIRST_READ: usize = 4 << 10;
const READ_WINDOW: usize = 256 << 10;

/// The open journal as the process that writes it sees it.
#[derive(Debug)]
pub(crate) struct Journal<F> {
    /// Read-write; shared with readers, which probe it for frames of other
    /// processes.
    pub file: Arc<F>,
    pub header: FileHeader,
    /// Inode of the file when it was opened: if the path names another inode,
    /// a compaction replaced it.
    pub inode: u64,
    /// Where the next frame goes: just after the last valid frame.
    pub end: u64,
    /// The sequence number of the next frame.
    pub next_seq: u64,
    /// Bytes of the file that exist (zero-filled beyond `end`).
    pub allocated: u64,
    /// Whether the last frame read or written is a compaction's notice (an
    /// empty frame, see [`frame::is_notice`]): a new journal may be renamed
    /// over this one at any moment, so readers check the journal's name too
    /// until a later frame comes or they find it replaced.
    pub noticed: bool,
}

/// An append that failed, and at which step.
#[derive(Debug)]
pub(crate) struct AppendError {
    pub step: IoStep,
    pub source: io::Error,
}

impl AppendError {
    /// Whether it leaves the store unsure of what reached the disk (a failed
    /// flush), so that it must stop writing.
    pub(crate) fn poisons(&self) -> bool {
        self.step.is_flush()
    }
}

/// Why reading frames stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Zeros: nothing more was written.
    End,
    /// Something that is not the expected frame: a torn write, or damage.
    Bad { offset: u64, reason: String },
}

/// Where reading frames stopped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    pub end: u64,
    pub next_seq: u64,
    pub stop: Stop,
}

impl<F: VfsFile> Journal<F> {
    /// Reads the frames after `self.end` in order, calling `each` with every
    /// valid payload and the offset where it starts, and moves `end` and
    /// `next_seq` past them.
    ///
    /// An `Err` from `each` (a payload that passed its checksum but does not
    /// decode) stops reading and is returned with the frame's offset.
    pub(crate) fn read_new(
        &mut self,
        each: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> io::Result<Result<Stop, (u64, String)>> {
        let scanned = scan(
            &*self.file,
            &self.header,
            self.end,
            u64::MAX,
            self.next_seq,
            each,
        )?;
        match scanned {
            Ok(end) => {
                self.end = end.end;
                self.next_seq = end.next_seq;
                Ok(Ok(end.stop))
            }
            Err((scan_end, offset, reason)) => {
                self.end = scan_end.end;
                self.next_seq = scan_end.next_seq;
                Ok(Err((offset, reason)))
            }
        }
    }

    /// Writes `frame` at the end, in preallocated space, and flushes it if `sync`.
    ///
    /// On error `end` does not move: the next append overwrites whatever part of
    /// the frame reached the file.
    pub(crate) fn append(&mut self, frame: &[u8], sync: bool) -> Result<(), AppendError> {
        let new_end = self.end + frame.len() as u64;
        if new_end > self.allocated {
            self.preallocate(new_end, sync)?;
        }
        let failed = |step| move |source| AppendError { step, source };
        self.file
            .write_all_at(frame, self.end)
            .map_err(failed(steps::WRITE_JOURNAL_FRAME))?;
        if sync {
            self.file
                .sync_data()
                .map_err(failed(steps::FDATASYNC_JOURNAL))?;
        }
        self.end = new_end;
        self.next_seq += 1;
        self.noticed = false;
        Ok(())
    }

    /// Zero-fills the file up to a whole step past `needed` and flushes the new
    /// length, so that the appends into it flush data only.
    pub(crate) fn preallocate(&mut self, needed: u64, sync: bool) -> Result<(), AppendError> {
        let target = needed.div_ceil(PREALLOCATE) * PREALLOCATE + PREALLOCATE;
        let failed = |source| AppendError {
            step: steps::PREALLOCATE_JOURNAL_SPACE,
            source,
        };
        // Zeros go only past the file's real end: another process may have
        // grown it and written frames there since this one last preallocated.
        let from = self.file.size().map_err(failed)?.max(self.end);
        let mut reached = target;
        if let Err(source) = write_zeros(&*self.file, from, target) {
            // A full disk cuts the zeros short. What did land is zero-filled
            // space like any other (the exclusive lock keeps other writers out):
            // if the frame fits in it, use it rather than refuse writes while
            // the file has room, and the disk may have none for a whole step.
            let grown = self.file.size().unwrap_or(0);
            if source.kind() != io::ErrorKind::StorageFull || grown < needed {
                return Err(failed(source));
            }
            reached = grown;
        }
        if sync {
            // A failed flush poisons, as every failed flush does: after one,
            // what the kernel kept of the file is unknown.
            self.file.sync_all().map_err(|source| AppendError {
                step: steps::FSYNC_PREALLOCATED_JOURNAL_SPACE,
                source,
            })?;
        }
        self.allocated = reached;
        Ok(())
    }

    /// Zeros everything from `end` to the end of the file: what a writer that
    /// died (or failed) mid-write left there, so that no leftover byte can be read
    /// after the frames written next.
    ///
    /// A failed flush of the zeros poisons: what the disk then holds past `end`
    /// is unknown, as after any failed flush.
    pub(crate) fn clear_tail(&mut self, sync: bool) -> Result<(), AppendError> {
        let failed = |step| move |source| AppendError { step, source };
        let len = self
            .file
            .size()
            .map_err(failed(steps::CLEAR_TORN_JOURNAL_TAIL))?
            .max(self.allocated);
        zero_data(&*self.file, self.end, len).map_err(failed(steps::CLEAR_TORN_JOURNAL_TAIL))?;
        if sync {
            self.file
                .sync_data()
                .map_err(failed(steps::FDATASYNC_CLEARED_JOURNAL_TAIL))?;
        }
        self.allocated = len;
        Ok(())
    }

    /// Looks past a bad frame at `self.end` for a frame that was written after
    /// it. There is none after a torn write, since a frame is written only
    /// once the one before it is durable; there is one if the bad frame was
    /// damaged after it was written. Returns the later frame's offset, and
    /// whether it is intact: a header naming this journal and a later
    /// sequence number is evidence enough, even if its own frame is damaged
    /// too.
    pub(crate) fn later_frame(&self) -> io::Result<Option<(u64, Later)>> {
        later_frame(&*self.file, &self.header, self.end + 1, self.next_seq)
    }
}

/// Writes zeros over `[from, to)`, leaving the holes of a sparse file, which
/// read as zeros already: a file of a huge length (made so on purpose, say)
/// costs a few seeks, not writes over its whole length. Past the file's end,
/// the zeros extend it.
fn zero_data<F: VfsFile + ?Sized>(file: &F, from: u64, to: u64) -> io::Result<()> {
    let size = file.size()?;
    let mut at = from;
    while at < to.min(size) {
        let Some(data) = file.next_data(at)? else {
            break;
        };
        let data = data.max(at);
        if data >= to.min(size) {
            break;
        }
        // A layer that knows of no holes calls the whole rest data.
        let hole = file.next_hole(data)?;
        let until = if hole > data {
            hole.min(to)
        } else {
            to.min(size)
        };
        write_zeros(file, data, until)?;
        at = until;
    }
    if to > size {
        write_zeros(file, from.max(size), to)?;
    }
    Ok(())
}

/// Writes zeros over `[from, to)`.
fn write_zeros<F: VfsFile + ?Sized>(file: &F, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = CHUNK.min(to - at) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Reads a file through a window, so that many small frames cost few reads.
struct Window<'f, F: ?Sized> {
    file: &'f F,
    start: u64,
    bytes: Vec<u8>,
    next_read: usize,
}

impl<'f, F: VfsFile + ?Sized> Window<'f, F> {
    fn new(file: &'f F) -> Self {
        Window {
            file,
            start: 0,
            bytes: Vec::new(),
            next_read: FIRST_READ,
        }
    }

    /// Up to `len` bytes at `offset`: fewer only at the end of the file.
    fn read(&mut self, offset: u64, len: usize) -> io::Result<&[u8]> {
        let have =
            offset >= self.start && offset + len as u64 <= self.start + self.bytes.len() as u64;
        if !have {
            self.bytes.resize(len.max(self.next_read), 0);
            self.next_read = (self.next_read * 2).min(READ_WINDOW);
            let n = self.file.read_at(&mut self.bytes, offset)?;
            self.bytes.truncate(n);
            self.start = offset;
        }
        let from = (offset - self.start) as usize;
        let to = (from + len).min(self.bytes.len());
        Ok(&self.bytes[from.min(to)..to])
    }
}

/// Reads frames from `from` on, expecting sequence numbers from `first_seq`, and
/// stops at `until` (or at the end of the frames).
///
/// `Ok(Ok(end))` says where and why reading stopped. `Ok(Err((end, offset,
/// reason)))`: the valid frame at `offset` did not decode (`each` failed).
#[allow(clippy::type_complexity)]
pub(crate) fn scan<F: VfsFile + ?Sized>(
    file: &F,
    header: &FileHeader,
    from: u64,
    until: u64,
    first_seq: u64,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> io::Result<Result<ScanEnd, (ScanEnd, u64, String)>> {
    let mut window = Window::new(file);
    let mut at = from.max(FILE_HEADER_LEN);
    let mut seq = first_seq;
    // Writers append under an exclusive lock and readers scan under a shared
    // one, so the length stays put while this runs. A frame may not claim more
    // than the file holds: checked before anything is allocated for it.
    let file_len = file.size()?;
    let stop = |at, seq, stop| ScanEnd {
        end: at,
        next_seq: seq,
        stop,
    };
    loop {
        if at >= until {
            return Ok(Ok(stop(at, seq, Stop::End)));
        }
        let bytes = window.read(at, FRAME_HEADER_LEN)?;
        if bytes.is_empty() {
            return Ok(Ok(stop(at, seq, Stop::End)));
        }
        let Ok(header_bytes) = <[u8; FRAME_HEADER_LEN]>::try_from(bytes) else {
            return Ok(Ok(stop(
                at,
                seq,
                bad(at, "file ends inside a frame header"),
            )));
        };
        let payload_len = match frame::read_header(&header_bytes, header.journal_id, seq) {
            HeaderRead::End => return Ok(Ok(stop(at, seq, Stop::End))),
            HeaderRead::Bad(reason) => return Ok(Ok(stop(at, seq, bad(at, reason)))),
            HeaderRead::Frame { payload_len, .. } => payload_len,
        };
        let payload_at = at + FRAME_HEADER_LEN as u64;
        if payload_at.saturating_add(payload_len as u64) > file_len {
            return Ok(Ok(stop(
                at,
                seq,
                bad(at, "frame ends beyond the end of the file"),
            )));
        }
        let payload = window.read(payload_at, payload_len)?;
        if payload.len() < payload_len {
            return Ok(Ok(stop(at, seq, bad(at, "file ends inside a frame"))));
        }
        if !check_payload(&header_bytes, payload) {
            return Ok(Ok(stop(at, seq, bad(at, "frame checksum mismatch"))));
        }
        if let Err(reason) = each(payload_at, payload) {
            return Ok(Err((stop(at, seq, Stop::End), at, reason)));
        }
        at = payload_at + payload_len as u64;
        seq += 1;
    }
}

fn bad(offset: u64, reason: &str) -> Stop {
    Stop::Bad {
        offset,
        reason: reason.to_owned(),
    }
}

/// Whether `bytes` (at most a read window long) are all zeros.
fn is_zeros(bytes: &[u8]) -> bool {
    static ZEROS: [u8; READ_WINDOW] = [0; READ_WINDOW];
    ZEROS.get(..bytes.len()) == Some(bytes)
}

/// What [`Journal::later_frame`] found after a bad frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Later {
    /// A whole frame that passes its checksum.
    Intact,
    /// Only a header naming this journal and a later sequence number; the
    /// frame itself does not check.
    Header,
}

/// The first frame of this journal after `from`, searching every byte offset:
/// the first intact one with a sequence number of at least `min_seq` if there
/// is any, else the first header naming this journal and a sequence number
/// above `min_seq` (the bad frame's own, which its bytes may repeat).
///
/// Each window of the file is read once, and each place its bytes spell a
/// frame's magic is checked through a second window: a value full of the
/// magic costs one check per occurrence, never a read of a window each. A
/// candidate may not claim more than the file holds: checked before anything
/// is read for it.
fn later_frame<F: VfsFile + ?Sized>(
    file: &F,
    header: &FileHeader,
    from: u64,
    min_seq: u64,
) -> io::Result<Option<(u64, Later)>> {
    const MAGIC: &[u8; 4] = b"JSFR";
    let len = file.size()?;
    let mut window = Window::new(file);
    let mut checker = Window::new(file);
    let mut first_header = None;
    let mut at = from;
    while at + FRAME_HEADER_LEN as u64 <= len {
        let chunk = window.read(at, READ_WINDOW)?;
        // Most of what follows the last frame is preallocated zeros: skip them
        // at the speed of a memory compare.
        if chunk.is_empty() {
            break;
        }
        if is_zeros(chunk) {
            at += chunk.len() as u64;
            // A sparse file's holes read as zeros too: past them unread.
            match file.next_data(at)? {
                Some(data) => at = at.max(data),
                None => break,
            }
            continue;
        }
        let hits = chunk
            .windows(MAGIC.len())
            .enumerate()
            .filter(|(_, w)| *w == MAGIC)
            .map(|(hit, _)| at + hit as u64);
        for candidate in hits {
            match frame_at(&mut checker, len, header, candidate, min_seq)? {
                Some(Later::Intact) => return Ok(Some((candidate, Later::Intact))),
                Some(Later::Header) => {
                    first_header.get_or_insert(candidate);
                }
                None => {}
            }
        }
        // The last bytes are read again: a magic may straddle two windows.
        at += (chunk.len().saturating_sub(MAGIC.len() - 1)).max(1) as u64;
    }
    Ok(first_header.map(|at| (at, Later::Header)))
}

/// What starts at `candidate`, in a file of `len` bytes: a frame of this
/// journal with a sequence number of at least `min_seq`, intact or only its
/// header, or neither.
fn frame_at<F: VfsFile + ?Sized>(
    window: &mut Window<'_, F>,
    len: u64,
    header: &FileHeader,
    candidate: u64,
    min_seq: u64,
) -> io::Result<Option<Later>> {
    let Ok(header_bytes) =
        <[u8; FRAME_HEADER_LEN]>::try_from(window.read(candidate, FRAME_HEADER_LEN)?)
    else {
        return Ok(None);
    };
    let seq = claimed_seq(&header_bytes);
    if seq < min_seq || header_bytes[8..16] != header.journal_id.to_le_bytes() {
        return Ok(None);
    }
    // The magic and the journal match: a header of this journal, whatever its
    // length and payload say. Evidence of a frame written after the bad one
    // only with a later sequence number than the bad frame's own (`min_seq`,
    // which a torn frame's bytes may repeat).
    let header_only = (seq > min_seq).then_some(Later::Header);
    let HeaderRead::Frame { payload_len, .. } =
        frame::read_header(&header_bytes, header.journal_id, seq)
    else {
        return Ok(header_only);
    };
    let payload_at = candidate + FRAME_HEADER_LEN as u64;
    if payload_at.saturating_add(payload_len as u64) > len {
        return Ok(header_only);
    }
    let payload = window.read(payload_at, payload_len)?;
    let intact = payload.len() == payload_len && check_payload(&header_bytes, payload);
    Ok(if intact {
        Some(Later::Intact)
    } else {
        header_only
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::log::FIRST_SEQ;
    use crate::store::log::frame::FrameBuilder;

    /// A journal in memory that remembers the largest read asked of it.
    #[derive(Debug, Default)]
    struct Recorded {
        bytes: Vec<u8>,
        largest_read: AtomicUsize,
        bytes_read: AtomicUsize,
    }

    impl Recorded {
        fn of(bytes: Vec<u8>) -> Self {
            Recorded {
                bytes,
                ..Recorded::default()
            }
        }
    }

    impl VfsFile for Recorded {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.bytes.extend_from_slice(buf);
            Ok(())
        }
        fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
            buf.extend_from_slice(&self.bytes);
            Ok(self.bytes.len())
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.largest_read.fetch_max(buf.len(), Ordering::Relaxed);
            let from = (offset as usize).min(self.bytes.len());
            let n = buf.len().min(self.bytes.len() - from);
            self.bytes_read.fetch_add(n, Ordering::Relaxed);
            buf[..n].copy_from_slice(&self.bytes[from..from + n]);
            Ok(n)
        }
        fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Err(io::Error::other("read only"))
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.bytes.len() as u64)
        }
        fn sync_all(&self) -> io::Result<()> {
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn lock(&self) -> io::Result<()> {
            Ok(())
        }
        fn lock_shared(&self) -> io::Result<()> {
            Ok(())
        }
        fn try_lock(&self) -> io::Result<bool> {
            Ok(true)
        }
        fn unlock(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Regression: a damaged header claiming a payload of a gigabyte made the
    /// reader allocate a gigabyte before it looked at the file's length.
    #[test]
    fn a_frame_claiming_more_than_the_file_holds_is_bad_before_anything_is_allocated() {
        let header = FileHeader {
            journal_id: 7,
            generation: 0,
        };
        let mut bytes = header.encode().to_vec();
        let mut frame = [0u8; FRAME_HEADER_LEN];
        frame[..4].copy_from_slice(b"JSFR");
        frame[4..8].copy_from_slice(&((1u32 << 30) - 1).to_le_bytes());
        frame[8..16].copy_from_slice(&7u64.to_le_bytes());
        frame[16..24].copy_from_slice(&FIRST_SEQ.to_le_bytes());
        bytes.extend_from_slice(&frame);
        bytes.resize(4 << 20, 0);
        let file = Recorded::of(bytes);
        let end = scan(&file, &header, 0, u64::MAX, FIRST_SEQ, |_, _| Ok(()))
            .unwrap()
            .unwrap();
        assert!(
            matches!(&end.stop, Stop::Bad { offset, reason } if *offset == FILE_HEADER_LEN
                && reason.contains("beyond the end of the file")),
            "{:?}",
            end.stop
        );
        assert!(file.largest_read.load(Ordering::Relaxed) <= 4 << 20);
    }

    const HEADER: FileHeader = FileHeader {
        journal_id: 7,
        generation: 0,
    };

    /// A journal holding one frame, a put of `value`, with its last `torn`
    /// bytes zeroed, then zeros.
    fn torn_journal(value: &[u8], torn: usize) -> Vec<u8> {
        let mut frame = FrameBuilder::new();
        frame.begin();
        frame.put(b"k", crate::store::Version::new(1), value);
        let frame = frame.finish(HEADER.journal_id, FIRST_SEQ);
        let mut bytes = HEADER.encode().to_vec();
        bytes.extend_from_slice(&frame[..frame.len() - torn]);
        bytes.resize(bytes.len() + torn + (1 << 20), 0);
        bytes
    }

    /// Regression: each place a torn frame's bytes spelled the frame magic
    /// cost a read of a whole window, so a value full of it took minutes.
    #[test]
    fn a_torn_value_full_of_frame_magic_is_searched_in_one_pass() {
        let value = b"JSFR".repeat(16 << 10);
        let file = Recorded::of(torn_journal(&value, 100));
        let later = later_frame(&file, &HEADER, FILE_HEADER_LEN + 1, FIRST_SEQ);
        assert_eq!(later.unwrap(), None);
        let read = file.bytes_read.load(Ordering::Relaxed);
        assert!(read <= 3 * file.bytes.len(), "{read} bytes read");
    }

    /// Regression: a header after a torn frame claiming a payload of a
    /// gigabyte made the search allocate a gigabyte.
    #[test]
    fn a_later_header_claiming_more_than_the_file_holds_counts_but_is_not_read() {
        let mut bytes = torn_journal(b"value", 4);
        let mut later = [0u8; FRAME_HEADER_LEN];
        later[..4].copy_from_slice(b"JSFR");
        later[4..8].copy_from_slice(&((1u32 << 30) - 1).to_le_bytes());
        later[8..16].copy_from_slice(&HEADER.journal_id.to_le_bytes());
        later[16..24].copy_from_slice(&(FIRST_SEQ + 1).to_le_bytes());
        let at = 4096;
        bytes[at..at + FRAME_HEADER_LEN].copy_from_slice(&later);
        let file = Recorded::of(bytes);
        let found = later_frame(&file, &HEADER, FILE_HEADER_LEN + 1, FIRST_SEQ);
        assert_eq!(found.unwrap(), Some((at as u64, Later::Header)));
        let largest = file.largest_read.load(Ordering::Relaxed);
        assert!(largest <= file.bytes.len(), "a read of {largest} bytes");
    }

    /// The search still finds an intact frame after a torn one, past a run
    /// of magics in between.
    #[test]
    fn an_intact_frame_after_a_torn_one_is_found_past_magics() {
        let mut bytes = torn_journal(&b"JSFR".repeat(1000), 10);
        let mut frame = FrameBuilder::new();
        frame.begin();
        frame.put(b"k", crate::store::Version::new(2), b"JSFRJSFR");
        let frame = frame.finish(HEADER.journal_id, FIRST_SEQ + 1);
        let at = 300_001;
        bytes[at..at + frame.len()].copy_from_slice(&frame);
        let file = Recorded::of(bytes);
        let found = later_frame(&file, &HEADER, FILE_HEADER_LEN + 1, FIRST_SEQ);
        assert_eq!(found.unwrap(), Some((at as u64, Later::Intact)));
    }

    /// Clearing a tail writes zeros over what holds data only: a sparse file
    /// a tebibyte long costs a few writes, and the bytes found in it are
    /// zero afterwards.
    #[cfg(target_os = "linux")]
    #[test]
    fn zeroing_a_sparse_tail_writes_over_its_data_only() {
        use std::io::{Read, Seek, SeekFrom};

        let mut file = tempfile::tempfile().unwrap();
        let far = 1u64 << 39;
        VfsFile::write_all_at(&file, b"torn", 100).unwrap();
        VfsFile::write_all_at(&file, b"left", far).unwrap();
        file.set_len(1 << 40).unwrap();
        zero_data(&file, 0, 1 << 40).unwrap();
        for at in [100, far] {
            let mut bytes = [1u8; 4];
            VfsFile::read_at(&file, &mut bytes, at).unwrap();
            assert_eq!(bytes, [0; 4], "at {at}");
        }
        assert_eq!(VfsFile::size(&file).unwrap(), 1 << 40);
        // The position is where it was.
        assert_eq!(file.stream_position().unwrap(), 0);
        let mut first = [1u8; 4];
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_exact(&mut first).unwrap();
        assert_eq!(first, [0; 4]);
    }
}
