//! Keys packed into one byte string, for in-memory indexes and on-disk logs.
//!
//! Segments are joined with NUL, which no segment contains and which sorts below
//! every other byte: byte order of packed keys is key order, and a packed prefix
//! followed by NUL (or nothing) starts exactly the keys under that prefix.

use crate::error::Result;
use crate::key::Key;

/// A key as one byte string.
pub(crate) type Packed = Box<[u8]>;

/// Joins the segments with NUL.
pub(crate) fn pack<S: AsRef<str>>(segments: &[S]) -> Packed {
    let mut bytes = Vec::with_capacity(segments.iter().map(|s| s.as_ref().len() + 1).sum());
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(segment.as_ref().as_bytes());
    }
    bytes.into_boxed_slice()
}

/// The key packed into `bytes`.
///
/// # Errors
/// [`Error::InvalidKey`](crate::Error::InvalidKey) if the bytes are not a valid
/// key (bytes read back from disk can be).
pub(crate) fn unpack(bytes: &[u8]) -> Result<Key> {
    let segments = bytes
        .split(|&b| b == 0)
        .map(|segment| String::from_utf8_lossy(segment).into_owned());
    Key::new(segments)
}

/// Whether the packed `key` is under the packed `prefix` (whole segments).
pub(crate) fn is_under(key: &[u8], prefix: &[u8]) -> bool {
    prefix.is_empty()
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.first().is_none_or(|&b| b == 0))
}
