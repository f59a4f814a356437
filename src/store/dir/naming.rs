//! Key segments to safe file names, and back.
//!
//! Any segment a [`Key`](crate::Key) accepts must map to a name that is:
//! - a single path component: no `/`, `\`, NUL, and never `.` or `..`;
//! - not hidden: never starts with a dot (temp files do, and are skipped);
//! - distinct from every other segment's name on a case-insensitive filesystem;
//! - short enough for the 255-byte name limit, with room for a suffix.
//!
//! Encoding: the bytes `a-z`, `0-9`, `_` and `-` are kept; an upper-case ASCII letter
//! becomes `^` and its lower-case form; any other byte becomes `%` and two
//! upper-case hex digits. Upper-case letters thus appear only as hex digits right
//! after `%`, so two different encodings never differ by case alone. An encoding
//! longer than [`MAX_PLAIN`] bytes is cut at an escape boundary and followed by `~`
//! and 32 hex digits of the segment's SHA-256; such a name cannot be decoded, so the
//! segment itself is kept beside it (a `.segment` file in a directory, the key in a
//! record's header).
//!
//! A name on disk is the encoding plus a suffix saying what it is: `.r` a record,
//! `.d` a directory of longer keys. Encodings never contain a dot, so the suffix is
//! unambiguous.

use sha2::{Digest, Sha256};

/// Longest encoding used as it is.
pub(super) const MAX_PLAIN: usize = 150;
/// Bytes of the encoding kept before the hash of a shortened name.
const HASHED_KEEP: usize = 100;

pub(super) const RECORD_SUFFIX: &str = ".r";
pub(super) const DIR_SUFFIX: &str = ".d";
/// In a directory whose name is hashed: the full segment it stands for.
pub(super) const SEGMENT_FILE: &str = ".segment";

/// The file-name stem for a segment.
pub(super) fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    let mut boundaries = Vec::new(); // where each source byte's encoding starts
    for &b in segment.as_bytes() {
        boundaries.push(out.len());
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => out.push(char::from(b)),
            b'A'..=b'Z' => {
                out.push('^');
                out.push(char::from(b.to_ascii_lowercase()));
            }
            _ => {
                out.push('%');
                out.push_str(&format!("{b:02X}"));
            }
        }
    }
    if out.len() <= MAX_PLAIN {
        return out;
    }
    let cut = boundaries
        .iter()
        .copied()
        .take_while(|&at| at <= HASHED_KEEP)
        .last()
        .unwrap_or(0);
    out.truncate(cut);
    let digest = Sha256::digest(segment.as_bytes());
    out.push('~');
    for byte in &digest[..16] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Whether a stem was shortened with a hash (and so cannot be decoded).
pub(super) fn is_hashed(stem: &str) -> bool {
    stem.contains('~')
}

/// The segment a plain (not hashed) stem encodes, or `None` if the stem is not
/// one this module produces.
pub(super) fn decode(stem: &str) -> Option<String> {
    let bytes = stem.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b @ (b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-') => {
                out.push(b);
                i += 1;
            }
            b'^' => {
                let c = *bytes.get(i + 1)?;
                if !c.is_ascii_lowercase() {
                    return None;
                }
                out.push(c.to_ascii_uppercase());
                i += 2;
            }
            b'%' => {
                let hex = stem.get(i + 1..i + 3)?;
                if hex.bytes().any(|h| h.is_ascii_lowercase()) {
                    return None;
                }
                let b = u8::from_str_radix(hex, 16).ok()?;
                // Canonical only: a byte that is kept or case-escaped is never %-escaped.
                // NUL is in no segment: no key's name holds `%00`.
                if b == 0 || b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            _ => return None,
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

/// The stable stripe (0..n) of a key: CRC-32 of its segments joined by NUL, which no
/// segment contains.
pub(super) fn stripe_of(segments: &[String], stripes: usize) -> usize {
    let mut hasher = crc32fast::Hasher::new();
    for s in segments {
        hasher.update(s.as_bytes());
        hasher.update(&[0]);
    }
    // u32 always fits in usize on the platforms this crate supports (unix, ≥ 32-bit).
    hasher.finalize() as usize % stripes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(segment: &str) -> String {
        let stem = encode(segment);
        assert!(!stem.is_empty());
        assert!(!stem.starts_with('.'), "{stem}");
        assert!(!stem.contains(['/', '\\', '\0', '.']), "{stem}");
        assert!(stem.len() <= MAX_PLAIN + 33, "{}", stem.len());
        if !is_hashed(&stem) {
            assert_eq!(decode(&stem).as_deref(), Some(segment));
        }
        stem
    }

    #[test]
    fn dots_slashes_and_nul_free() {
        for s in [
            "..",
            ".",
            ".hidden",
            "a/b",
            "a\\b",
            "../../etc/passwd",
            "lic:abc123",
        ] {
            round_trip(s);
        }
        assert_eq!(encode(".."), "%2E%2E");
        assert_eq!(encode("a/b"), "a%2Fb");
    }

    #[test]
    fn case_only_differences_stay_distinct_ignoring_case() {
        let names: Vec<String> = ["ab", "Ab", "aB", "AB", "%41", "^a", "A"]
            .iter()
            .map(|s| round_trip(s).to_ascii_lowercase())
            .collect();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn unicode_round_trips() {
        round_trip("Ünïcödé ✓ 日本");
    }

    #[test]
    fn long_segments_are_hashed_and_distinct() {
        let a = "x".repeat(1024);
        let mut b = a.clone();
        b.replace_range(1000..1001, "y");
        let (ea, eb) = (round_trip(&a), round_trip(&b));
        assert!(is_hashed(&ea));
        assert_ne!(ea, eb);
        // Multi-byte characters: the cut never splits an escape.
        let wide = "日".repeat(340);
        let e = round_trip(&wide);
        assert!(is_hashed(&e));
        let plain = e.split('~').next().unwrap_or_default();
        assert_eq!(plain.len() % 3, 0, "{plain}");
    }

    #[test]
    fn non_canonical_names_are_rejected() {
        for stem in ["", "A", "%41", "%2e", "^A", "a.b", "%2", "~", "x~y"] {
            assert_eq!(decode(stem), None, "{stem}");
        }
    }

    #[test]
    fn stripes_are_stable() {
        let key = vec!["locks".to_owned(), "a".to_owned()];
        assert_eq!(stripe_of(&key, 64), stripe_of(&key, 64));
        assert!(stripe_of(&key, 64) < 64);
    }
}
