//! Keys packed into one byte string: the form the in-memory indexes of
//! `MemStore` and `LogStore`, and `LogStore`'s journal, hold them in.

use crate::error::Result;
use crate::key::Key;

/// Joins the segments with NUL, which no segment contains and which sorts below
/// every other byte: byte order of packed keys is key order, and a packed prefix
/// followed by NUL (or nothing) starts exactly the keys under that prefix.
pub(crate) fn pack<S: AsRef<str>>(segments: &[S]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(segments.iter().map(|s| s.as_ref().len() + 1).sum());
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(segment.as_ref().as_bytes());
    }
    bytes
}

/// The key [`pack`] made `bytes` from.
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn packed_order_is_key_order() {
        let keys = [
            vec!["a"],
            vec!["a", "b"],
            vec!["a", "b", "c"],
            vec!["a", "c"],
            vec!["a!"],
            vec!["ab"],
        ];
        for pair in keys.windows(2) {
            let (k0, k1) = (
                Key::new(pair[0].clone()).unwrap(),
                Key::new(pair[1].clone()).unwrap(),
            );
            assert!(k0 < k1);
            assert!(pack(k0.segments()) < pack(k1.segments()), "{k0} {k1}");
            assert_eq!(unpack(&pack(k1.segments())).unwrap(), k1);
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let key = pack(&["jobs", "42"]);
        assert!(is_under(&key, &pack(&["jobs"])));
        assert!(is_under(&key, &pack(&["jobs", "42"])));
        assert!(is_under(&key, &[]));
        assert!(!is_under(&key, &pack(&["job"])));
        assert!(!is_under(&key, &pack(&["jobs", "4"])));
    }
}
