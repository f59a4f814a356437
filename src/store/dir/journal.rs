//! The redo journal that makes [`Store::apply`](crate::Store::apply) all or nothing
//! in [`DirStore`](super::DirStore).
//!
//! A batch, once its preconditions hold under its stripes' exclusive locks, is
//! written as one journal file (atomically and durably, through the atomic writer)
//! holding the final bytes of every record it writes and the keys it deletes. Only
//! then are the record files changed, each durably; then the journal is removed and
//! its directory fsynced, and only then are the locks released.
//!
//! A crash before the journal is durable leaves no journal: nothing happened. A
//! crash after leaves it, and whoever next locks one of its stripes finds it (its
//! owner would hold those stripes if it were alive) and replays it: rewriting the
//! same bytes and deleting the same keys again is harmless. The journal's name
//! carries the set of stripes it covers, so finding the journals that concern a
//! stripe takes one directory read and no file reads.
//!
//! ```text
//! name:  <stripe bitmap, 16 hex>-<uuid>.batch
//! body:  jobsafe-journal 1\n
//!        P <len>\n<record file bytes>\n      a put: the record file to write
//!        D <key as JSON>\n                   a delete
//!        end <crc32 hex of everything above>\n
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::key::Key;
use crate::store::{Batch, BatchOp};

const MAGIC: &str = "jobsafe-journal 1\n";
const SUFFIX: &str = ".batch";
const END_LINE_LEN: usize = "end 00000000\n".len();

/// The longest journal the format allows, and so the most a read of one
/// takes: [`DirStore::MAX_BATCH_BYTES`](super::DirStore::MAX_BATCH_BYTES),
/// which `apply` checks with [`max_len`] before anything is written.
pub(super) const MAX_LEN: usize = super::MAX_BATCH_BYTES;

/// How long the journal of `batch` is at most, whatever the versions its puts
/// get and whichever of its deletes find a record.
pub(super) fn max_len(batch: &Batch) -> usize {
    let entries = batch.ops().iter().map(|op| match op {
        BatchOp::Put { key, value, .. } => {
            let file = super::record_file::max_encoded_len(key, value.len());
            "P \n\n".len() + file.to_string().len() + file
        }
        BatchOp::Delete { key, .. } => {
            "D \n".len() + serde_json::to_string(key).map_or(0, |json| json.len())
        }
    });
    entries.fold(MAGIC.len() + END_LINE_LEN, usize::saturating_add)
}

/// One change recorded in a journal.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Write this record file (its bytes carry key and version).
    Put { key: Key, file: Vec<u8> },
    /// Remove this key's record file.
    Delete { key: Key },
}

/// The file name of a new journal covering `stripes`.
pub(super) fn name(stripes: &[usize]) -> String {
    format!(
        "{:016x}-{}{SUFFIX}",
        bitmap(stripes),
        uuid::Uuid::new_v4().simple()
    )
}

fn bitmap(stripes: &[usize]) -> u64 {
    stripes.iter().fold(0u64, |m, &s| m | (1u64 << (s % 64)))
}

/// The stripes a journal file name covers, or `None` if the name is not a
/// journal's.
pub(super) fn stripes_of(name: &str) -> Option<Vec<usize>> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (hex, _) = stem.split_once('-')?;
    let map = u64::from_str_radix(hex, 16).ok()?;
    Some((0..64).filter(|s| map & (1 << s) != 0).collect())
}

/// Whether a journal named `name` concerns any of `held` stripes.
pub(super) fn concerns(name: &str, held: &[usize]) -> bool {
    stripes_of(name).is_some_and(|s| s.iter().any(|x| held.contains(x)))
}

pub(super) fn encode(changes: &[Change]) -> Vec<u8> {
    let mut out = MAGIC.as_bytes().to_vec();
    for change in changes {
        match change {
            Change::Put { file, .. } => {
                out.extend_from_slice(format!("P {}\n", file.len()).as_bytes());
                out.extend_from_slice(file);
                out.push(b'\n');
            }
            Change::Delete { key } => {
                let json = serde_json::to_string(key).unwrap_or_default();
                out.extend_from_slice(format!("D {json}\n").as_bytes());
            }
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(format!("end {crc:08x}\n").as_bytes());
    out
}

pub(super) fn decode(path: &Path, bytes: &[u8]) -> Result<Vec<Change>> {
    let corrupt = |reason: String| Error::CorruptFile {
        path: PathBuf::from(path),
        reason,
    };
    let body = bytes
        .strip_suffix(b"\n")
        .and_then(|b| {
            let at = b.iter().rposition(|&c| c == b'\n')? + 1;
            Some((&bytes[..at], &b[at..]))
        })
        .ok_or_else(|| corrupt("journal has no end line".to_owned()))?;
    let (content, end) = body;
    // Compared as text: upper-case hex would read as the same checksum.
    if end != format!("end {:08x}", crc32fast::hash(content)).as_bytes() {
        return Err(corrupt(
            "journal end line is malformed or its checksum does not match".to_owned(),
        ));
    }
    let mut rest = content
        .strip_prefix(MAGIC.as_bytes())
        .ok_or_else(|| corrupt("not a jobsafe journal".to_owned()))?;
    let mut changes = Vec::new();
    while !rest.is_empty() {
        let nl = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| corrupt("unterminated journal line".to_owned()))?;
        let line = std::str::from_utf8(&rest[..nl])
            .map_err(|_| corrupt("journal line is not UTF-8".to_owned()))?;
        rest = &rest[nl + 1..];
        if let Some(len) = line.strip_prefix("P ") {
            let len: usize = len
                .parse()
                .map_err(|_| corrupt(format!("bad length in {line:?}")))?;
            if len >= rest.len() || rest[len] != b'\n' {
                return Err(corrupt("journal put is truncated".to_owned()));
            }
            let file = rest[..len].to_vec();
            rest = &rest[len + 1..];
            let key = super::record_file::decode(&file)
                .map_err(|e| corrupt(format!("journal put: {e}")))?
                .key;
            changes.push(Change::Put { key, file });
        } else if let Some(json) = line.strip_prefix("D ") {
            let key: Key = serde_json::from_str(json)
                .map_err(|e| corrupt(format!("journal delete: bad key: {e}")))?;
            changes.push(Change::Delete { key });
        } else {
            return Err(corrupt(format!("unknown journal line {line:?}")));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Version;

    #[test]
    fn round_trip_and_damage_is_caught() {
        let k1 = Key::new(["a", "1"]).unwrap();
        let k2 = Key::new(["a", "2\nD [\"x\"]"]).unwrap();
        let changes = vec![
            Change::Put {
                key: k1.clone(),
                file: super::super::record_file::encode(&k1, Version::new(9), b"P 3\nxyz\n"),
            },
            Change::Delete { key: k2 },
        ];
        let bytes = encode(&changes);
        let path = Path::new("j");
        assert_eq!(decode(path, &bytes).unwrap(), changes);
        for cut in 0..bytes.len() {
            assert!(decode(path, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(matches!(decode(path, &bad), Err(Error::CorruptFile { .. })));
    }

    #[test]
    fn a_journal_is_never_longer_than_its_batch_allows() {
        let k1 = Key::new(["a", "1"]).unwrap();
        let k2 = Key::new(["a", "two \"quoted\""]).unwrap();
        let batch = Batch::new()
            .put(&k1, b"value".to_vec(), crate::Expect::Any)
            .delete(&k2, crate::Expect::Any);
        let changes = vec![
            Change::Put {
                key: k1.clone(),
                file: super::super::record_file::encode(
                    &k1,
                    Version::new(u64::MAX / 2 - 1),
                    b"value",
                ),
            },
            Change::Delete { key: k2 },
        ];
        let written = encode(&changes).len();
        assert!(
            written <= max_len(&batch),
            "{written} > {}",
            max_len(&batch)
        );
        assert!(max_len(&batch) - written < 64, "the bound is tight");
    }

    #[test]
    fn fifteen_values_of_the_largest_size_at_the_longest_keys_fit_a_batch() {
        let segment = "\u{1}".repeat(Key::MAX_SEGMENT_LEN);
        let mut batch = Batch::new();
        for i in 0..15 {
            let mut segments = vec![segment.clone(); Key::MAX_SEGMENTS];
            segments[0] = format!("{i}");
            // Zeroed by the allocator and never touched: they cost no memory.
            let value = vec![0u8; crate::Entry::MAX_VALUE_LEN];
            batch = batch.put(&Key::new(segments).unwrap(), value, crate::Expect::Any);
        }
        assert!(max_len(&batch) <= MAX_LEN);
    }

    #[test]
    fn names_carry_stripes() {
        let name = name(&[0, 5, 63]);
        assert_eq!(stripes_of(&name), Some(vec![0, 5, 63]));
        assert!(concerns(&name, &[5]));
        assert!(!concerns(&name, &[4, 6]));
        assert_eq!(stripes_of("notes.txt"), None);
    }
}
