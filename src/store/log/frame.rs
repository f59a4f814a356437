//! The journal's on-disk format: a file header, then checksummed frames, then
//! zeros up to the end of the preallocated space.
//!
//! ```text
//! file header (32 bytes)
//!   magic "JSLOG\0\0\x01" · journal id u64 · generation u64 · crc32 u32 · 4 zero bytes
//! frame
//!   magic "JSFR" · payload length u32 · journal id u64 · sequence u64 · crc32 u32
//!   payload: transaction count u32, then each transaction:
//!     op count u32, then each op:
//!       0 put:    version u64 · key length u32 · key · value length u32 · value
//!       1 delete: key length u32 · key
//!       2 floor:  version u64            (the highest version ever handed out)
//! ```
//!
//! Integers are little-endian; keys are [packed](crate::store::packed). The
//! checksum of a frame covers its length, journal id, sequence number and
//! payload, so a frame is valid only whole, only in the journal it was written
//! for, and only at its place in the sequence: a torn write, bytes left over from
//! an earlier write, or a frame of another journal never reads as valid.
//!
//! One frame is one group commit: every transaction in it became durable with
//! one `fdatasync`, and the next frame was written only after that returned.

#[cfg(test)]
use super::Packed;
use crate::store::Version;

/// The journal file's magic and format version.
pub(crate) const FILE_MAGIC: [u8; 8] = *b"JSLOG\0\0\x01";
/// Length of the file header; the first frame starts here.
pub(crate) const FILE_HEADER_LEN: u64 = 32;
/// A frame's magic.
const FRAME_MAGIC: [u8; 4] = *b"JSFR";
/// Length of a frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 28;
/// The largest payload a frame may declare: bounds what a damaged length can
/// make a reader allocate.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

const OP_PUT: u8 = 0;
const OP_DELETE: u8 = 1;
const OP_FLOOR: u8 = 2;

/// What the file header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileHeader {
    /// Random, fresh for every journal file: frames name the journal they belong to.
    pub journal_id: u64,
    /// How many compactions came before this file.
    pub generation: u64,
}

impl FileHeader {
    pub(crate) fn encode(&self) -> [u8; FILE_HEADER_LEN as usize] {
        let mut bytes = [0u8; FILE_HEADER_LEN as usize];
        bytes[..8].copy_from_slice(&FILE_MAGIC);
        bytes[8..16].copy_from_slice(&self.journal_id.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..24]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The header in `bytes`, or what is wrong with it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < FILE_HEADER_LEN as usize {
            return Err(format!(
                "file is {} bytes long, shorter than its header",
                bytes.len()
            ));
        }
        if bytes[..8] != FILE_MAGIC {
            return Err("not a jobsafe journal (bad magic or format version)".to_owned());
        }
        if crc32fast::hash(&bytes[..24]) != u32_at(bytes, 24) {
            return Err("file header checksum mismatch".to_owned());
        }
        // Not covered by the checksum, so checked here: written as zeros.
        if bytes[28..FILE_HEADER_LEN as usize] != [0; 4] {
            return Err("file header's reserved bytes are not zero".to_owned());
        }
        Ok(FileHeader {
            journal_id: u64_at(bytes, 8),
            generation: u64_at(bytes, 16),
        })
    }
}

/// One change recorded in the journal, with its value copied: what the tests
/// compare decoded frames with.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LogOp {
    Put {
        key: Packed,
        version: Version,
        value: Vec<u8>,
    },
    Delete {
        key: Packed,
    },
    Floor(Version),
}

/// Builds a frame's payload transaction by transaction, leaving room for the
/// header, which [`finish`](FrameBuilder::finish) fills in.
#[derive(Debug)]
pub(crate) struct FrameBuilder {
    buf: Vec<u8>,
    txns: u32,
    /// Where the op count of the open transaction goes, and its ops so far.
    open: Option<(usize, u32)>,
}

impl FrameBuilder {
    pub(crate) fn new() -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.resize(FRAME_HEADER_LEN + 4, 0);
        FrameBuilder {
            buf,
            txns: 0,
            open: None,
        }
    }

    /// Bytes of payload so far.
    pub(crate) fn payload_len(&self) -> usize {
        self.buf.len() - FRAME_HEADER_LEN
    }

    /// Starts a transaction; ops go into it until the next `begin` or `finish`.
    pub(crate) fn begin(&mut self) {
        self.close();
        self.open = Some((self.buf.len(), 0));
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.txns += 1;
    }

    /// Appends a put; returns where its value starts, counted from the start
    /// of the frame (its header included), for the index to point at.
    pub(crate) fn put(&mut self, key: &[u8], version: Version, value: &[u8]) -> usize {
        self.op_header(OP_PUT);
        self.buf.extend_from_slice(&version.get().to_le_bytes());
        self.bytes(key);
        self.bytes(value);
        self.buf.len() - value.len()
    }

    pub(crate) fn delete(&mut self, key: &[u8]) {
        self.op_header(OP_DELETE);
        self.bytes(key);
    }

    pub(crate) fn floor(&mut self, version: Version) {
        self.op_header(OP_FLOOR);
        self.buf.extend_from_slice(&version.get().to_le_bytes());
    }

    /// The whole frame, ready to be written at its place.
    pub(crate) fn finish(mut self, journal_id: u64, seq: u64) -> Vec<u8> {
        self.close();
        let txns = self.txns;
        let payload_len = u32::try_from(self.payload_len()).unwrap_or(u32::MAX);
        self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 4].copy_from_slice(&txns.to_le_bytes());
        let header = frame_header(payload_len, journal_id, seq, &self.buf[FRAME_HEADER_LEN..]);
        self.buf[..FRAME_HEADER_LEN].copy_from_slice(&header);
        self.buf
    }

    /// A compaction's notice: a frame with no transaction, appended to the
    /// old journal just before a new one is renamed over it.
    pub(crate) fn notice(journal_id: u64, seq: u64) -> Vec<u8> {
        FrameBuilder::new().finish(journal_id, seq)
    }

    /// Re-frames a payload read from another journal (compaction copies the
    /// frames written while it ran).
    pub(crate) fn reframe(payload: &[u8], journal_id: u64, seq: u64) -> Vec<u8> {
        let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        frame.extend_from_slice(&frame_header(payload_len, journal_id, seq, payload));
        frame.extend_from_slice(payload);
        frame
    }

    fn op_header(&mut self, tag: u8) {
        if self.open.is_none() {
            self.begin();
        }
        if let Some((_, ops)) = &mut self.open {
            *ops += 1;
        }
        self.buf.push(tag);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(bytes);
    }

    fn close(&mut self) {
        if let Some((at, ops)) = self.open.take() {
            self.buf[at..at + 4].copy_from_slice(&ops.to_le_bytes());
        }
    }
}

fn frame_header(payload_len: u32, journal_id: u64, seq: u64, payload: &[u8]) -> [u8; 28] {
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&FRAME_MAGIC);
    header[4..8].copy_from_slice(&payload_len.to_le_bytes());
    header[8..16].copy_from_slice(&journal_id.to_le_bytes());
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = frame_crc(&header[4..24], payload);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

fn frame_crc(fields: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(fields);
    hasher.update(payload);
    hasher.finalize()
}

/// What a frame header says, before its payload is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderRead {
    /// All zeros: the end of the written journal.
    End,
    /// A plausible header for the expected frame: read `payload_len` more bytes
    /// and [`check_payload`].
    Frame { payload_len: usize, crc: u32 },
    /// Not the expected frame: torn, damaged, left over or foreign.
    Bad(&'static str),
}

/// Reads the header of the frame expected at this place: the given journal and
/// sequence number.
pub(crate) fn read_header(
    header: &[u8; FRAME_HEADER_LEN],
    journal_id: u64,
    seq: u64,
) -> HeaderRead {
    if header.iter().all(|&b| b == 0) {
        return HeaderRead::End;
    }
    if header[..4] != FRAME_MAGIC {
        return HeaderRead::Bad("no frame magic");
    }
    if u64_at(header, 8) != journal_id {
        return HeaderRead::Bad("frame of another journal");
    }
    if u64_at(header, 16) != seq {
        return HeaderRead::Bad("frame out of sequence");
    }
    let payload_len = u32_at(header, 4) as usize;
    if payload_len > MAX_PAYLOAD {
        return HeaderRead::Bad("frame length out of range");
    }
    HeaderRead::Frame {
        payload_len,
        crc: u32_at(header, 24),
    }
}

/// Whether `payload` is the one the header's checksum was computed over.
pub(crate) fn check_payload(header: &[u8; FRAME_HEADER_LEN], payload: &[u8]) -> bool {
    frame_crc(&header[4..24], payload) == u32_at(header, 24)
}

/// The sequence number a header claims, without validating it.
pub(crate) fn claimed_seq(header: &[u8; FRAME_HEADER_LEN]) -> u64 {
    u64_at(header, 16)
}

/// Whether a checksummed payload is a compaction's notice
/// ([`FrameBuilder::notice`]): no transaction at all. No other frame is
/// empty: a group that changes nothing writes no frame.
pub(crate) fn is_notice(payload: &[u8]) -> bool {
    payload == 0u32.to_le_bytes()
}

/// One op of a checksummed payload, borrowed from it: what reading a journal
/// into the index needs, without a copy of the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpRef<'a> {
    Put {
        key: &'a [u8],
        version: Version,
        value: &'a [u8],
        /// Where the value starts in the payload.
        value_at: usize,
    },
    Delete {
        key: &'a [u8],
    },
    /// Versions up to this one were handed out: the next is higher, even if no
    /// record carries it any more.
    Floor(Version),
}

impl OpRef<'_> {
    /// The packed key it writes, if it writes one.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        match self {
            OpRef::Put { key, .. } | OpRef::Delete { key } => Some(key),
            OpRef::Floor(_) => None,
        }
    }
}

/// Every op of a checksummed payload, in order, borrowed from it: all of them
/// or, if the payload does not decode, none, so that a frame is applied whole
/// or not at all.
///
/// A payload that passed its checksum but does not decode was written wrong or
/// damaged in a way the checksum missed: the caller reports it as corruption.
pub(crate) fn decode_ops(payload: &[u8]) -> Result<Vec<OpRef<'_>>, String> {
    let mut ops = Vec::new();
    read_payload(payload, |_, op| ops.push(op))?;
    Ok(ops)
}

/// Calls `each` with every op of `payload` and the number of its transaction.
fn read_payload<'a>(payload: &'a [u8], mut each: impl FnMut(u32, OpRef<'a>)) -> Result<(), String> {
    let mut reader = Reader {
        bytes: payload,
        at: 0,
    };
    let txn_count = reader.u32()?;
    for txn in 0..txn_count {
        let op_count = reader.u32()?;
        for _ in 0..op_count {
            let op = match reader.u8()? {
                OP_PUT => {
                    let version = Version::new(reader.u64()?);
                    let key = reader.key()?;
                    let value = reader.bytes()?;
                    OpRef::Put {
                        key,
                        version,
                        value,
                        value_at: reader.at - value.len(),
                    }
                }
                OP_DELETE => OpRef::Delete { key: reader.key()? },
                OP_FLOOR => OpRef::Floor(Version::new(reader.u64()?)),
                tag => {
                    return Err(format!(
                        "unknown op tag {tag} at payload byte {}",
                        reader.at - 1
                    ));
                }
            };
            each(txn, op);
        }
    }
    if reader.at != payload.len() {
        return Err(format!(
            "{} bytes after the last transaction",
            payload.len() - reader.at
        ));
    }
    Ok(())
}

/// Decodes a checksummed payload into its transactions, with copies of the
/// values (see [`decode_ops`]).
#[cfg(test)]
pub(crate) fn decode_payload(payload: &[u8]) -> Result<Vec<Vec<LogOp>>, String> {
    let mut txns: Vec<Vec<LogOp>> = Vec::new();
    read_payload(payload, |txn, op| {
        while txns.len() <= txn as usize {
            txns.push(Vec::new());
        }
        txns[txn as usize].push(match op {
            OpRef::Put {
                key,
                version,
                value,
                ..
            } => LogOp::Put {
                key: key.into(),
                version,
                value: value.to_vec(),
            },
            OpRef::Delete { key } => LogOp::Delete { key: key.into() },
            OpRef::Floor(version) => LogOp::Floor(version),
        });
    })?;
    Ok(txns)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("payload ends inside a field at byte {}", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32_at(self.take(4)?, 0))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64_at(self.take(8)?, 0))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn key(&mut self) -> Result<&'a [u8], String> {
        let at = self.at;
        let key = self.bytes()?;
        if key.is_empty() || std::str::from_utf8(key).is_err() {
            return Err(format!("invalid key at payload byte {at}"));
        }
        Ok(key)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buf)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut frame = FrameBuilder::new();
        frame.begin();
        frame.put(b"a\0b", Version::new(7), b"value");
        frame.delete(b"c");
        frame.begin();
        frame.floor(Version::new(9));
        frame.finish(42, 3)
    }

    fn header_of(frame: &[u8]) -> [u8; FRAME_HEADER_LEN] {
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&frame[..FRAME_HEADER_LEN]);
        header
    }

    #[test]
    fn a_frame_round_trips() {
        let frame = sample();
        let header = header_of(&frame);
        let HeaderRead::Frame { payload_len, .. } = read_header(&header, 42, 3) else {
            panic!("header did not read");
        };
        let payload = &frame[FRAME_HEADER_LEN..];
        assert_eq!(payload_len, payload.len());
        assert!(check_payload(&header, payload));
        assert_eq!(
            decode_payload(payload).unwrap(),
            vec![
                vec![
                    LogOp::Put {
                        key: b"a\0b".as_slice().into(),
                        version: Version::new(7),
                        value: b"value".to_vec()
                    },
                    LogOp::Delete {
                        key: b"c".as_slice().into()
                    },
                ],
                vec![LogOp::Floor(Version::new(9))],
            ]
        );
        assert_eq!(FrameBuilder::reframe(payload, 42, 3), frame);
    }

    #[test]
    fn a_frame_is_valid_only_in_its_journal_at_its_place() {
        let header = header_of(&sample());
        assert_eq!(
            read_header(&header, 41, 3),
            HeaderRead::Bad("frame of another journal")
        );
        assert_eq!(
            read_header(&header, 42, 4),
            HeaderRead::Bad("frame out of sequence")
        );
        assert_eq!(read_header(&[0; FRAME_HEADER_LEN], 42, 3), HeaderRead::End);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let frame = sample();
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[byte] ^= 1 << bit;
                let header = header_of(&damaged);
                let accepted = match read_header(&header, 42, 3) {
                    HeaderRead::Frame { payload_len, .. } => {
                        payload_len == damaged.len() - FRAME_HEADER_LEN
                            && check_payload(&header, &damaged[FRAME_HEADER_LEN..])
                    }
                    _ => false,
                };
                assert!(!accepted, "flip of bit {bit} in byte {byte} went unnoticed");
            }
        }
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let frame = sample();
        let payload = &frame[FRAME_HEADER_LEN..];
        for len in 0..payload.len() {
            assert!(
                decode_payload(&payload[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        let mut trailing = payload.to_vec();
        trailing.push(0);
        assert!(decode_payload(&trailing).is_err());
        assert!(decode_payload(&[1, 0, 0, 0, 1, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn the_file_header_checks_itself() {
        let header = FileHeader {
            journal_id: 5,
            generation: 2,
        };
        let bytes = header.encode();
        assert_eq!(FileHeader::decode(&bytes), Ok(header));
        let mut damaged = bytes;
        damaged[12] ^= 1;
        assert!(FileHeader::decode(&damaged).is_err());
        assert!(FileHeader::decode(&bytes[..10]).is_err());
    }
}
