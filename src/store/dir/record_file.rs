//! The bytes of one record file.
//!
//! ```text
//! jobsafe-record 1 <version> <value length> <crc32 hex> <key as JSON>\n
//! <value bytes>
//! ```
//!
//! The header is one line of text so that `head -1` shows what a file holds; the
//! key is stored so that a shortened (hashed) name can be listed and so that a file
//! copied or renamed by hand is caught. The CRC covers the version, the key and the
//! value, so any edit to the file is reported as corruption rather than read.

use crate::key::Key;
use crate::store::{Entry, Version};

const MAGIC: &str = "jobsafe-record";
const FORMAT: u32 = 1;

/// The longest key as JSON: every byte of every segment escaped as `\u00XX`,
/// each segment quoted, commas between them, brackets around.
const MAX_KEY_JSON_LEN: usize =
    2 + Key::MAX_SEGMENTS * (2 + 6 * Key::MAX_SEGMENT_LEN) + (Key::MAX_SEGMENTS - 1);

/// The longest header line, newline included: magic and format, the version
/// and the length at the 20 digits of a `u64`, the checksum, the longest key.
const MAX_HEADER_LEN: usize = MAGIC.len() + 3 + 20 + 1 + 20 + 1 + 8 + 1 + MAX_KEY_JSON_LEN + 1;

/// The longest record file the format allows (about 16.1 MiB): the longest
/// header and a value of [`Entry::MAX_VALUE_LEN`]. Reads go no further.
pub(super) const MAX_LEN: usize = MAX_HEADER_LEN + Entry::MAX_VALUE_LEN;

/// How long the record file of a value of `value_len` bytes at `key` is at
/// most, whatever its version.
pub(super) fn max_encoded_len(key: &Key, value_len: usize) -> usize {
    let key_json = serde_json::to_string(key).map_or(MAX_KEY_JSON_LEN, |json| json.len());
    MAX_HEADER_LEN - MAX_KEY_JSON_LEN + key_json + value_len
}

/// A record as stored in a file.
pub(super) struct RecordFile {
    pub(super) key: Key,
    pub(super) version: Version,
    pub(super) value: Vec<u8>,
}

pub(super) fn encode(key: &Key, version: Version, value: &[u8]) -> Vec<u8> {
    // A key always serializes: it is a list of strings.
    let key_json = serde_json::to_string(key).unwrap_or_default();
    let crc = checksum(version, &key_json, value);
    let mut out = format!(
        "{MAGIC} {FORMAT} {} {} {crc:08x} {key_json}\n",
        version.get(),
        value.len()
    )
    .into_bytes();
    out.extend_from_slice(value);
    out
}

/// Decodes a record file; the error says what is wrong.
pub(super) fn decode(bytes: &[u8]) -> Result<RecordFile, String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line (file empty or truncated)")?;
    let header =
        std::str::from_utf8(&bytes[..newline]).map_err(|_| "header is not UTF-8".to_owned())?;
    let value = &bytes[newline + 1..];
    let mut fields = header.splitn(6, ' ');
    let mut next = |what: &str| {
        fields
            .next()
            .ok_or_else(|| format!("header has no {what} field"))
    };
    if next("magic")? != MAGIC {
        return Err("not a jobsafe record file".to_owned());
    }
    let format = next("format")?;
    if format != FORMAT.to_string() {
        return Err(format!("unknown record format {format:?}"));
    }
    let version: u64 = next("version")?
        .parse()
        .map_err(|_| "bad version field".to_owned())?;
    let len: usize = next("length")?
        .parse()
        .map_err(|_| "bad length field".to_owned())?;
    let crc = u32::from_str_radix(next("checksum")?, 16).map_err(|_| "bad checksum field")?;
    let key_json = next("key")?;
    if value.len() != len {
        return Err(format!(
            "value is {} bytes, header says {len} (truncated or appended to)",
            value.len()
        ));
    }
    // The checksum covers the numbers, not how they are written: only the one
    // spelling `encode` writes is accepted ("+7", "07" or upper-case hex read as
    // the same numbers, but are damage all the same).
    if header != format!("{MAGIC} {FORMAT} {version} {len} {crc:08x} {key_json}") {
        return Err("header fields are not in their canonical form".to_owned());
    }
    let version = Version::new(version);
    if checksum(version, key_json, value) != crc {
        return Err("checksum mismatch".to_owned());
    }
    let key: Key = serde_json::from_str(key_json).map_err(|e| format!("bad key field: {e}"))?;
    Ok(RecordFile {
        key,
        version,
        value: value.to_vec(),
    })
}

fn checksum(version: Version, key_json: &str, value: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&version.get().to_le_bytes());
    hasher.update(key_json.as_bytes());
    hasher.update(value);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_record_fits_the_read_bound() {
        // Control characters take the longest escapes.
        let segment = "\u{1}".repeat(Key::MAX_SEGMENT_LEN);
        let key = Key::new(vec![segment.as_str(); Key::MAX_SEGMENTS]).unwrap();
        assert_eq!(serde_json::to_string(&key).unwrap().len(), MAX_KEY_JSON_LEN);
        let value = vec![b'x'; Entry::MAX_VALUE_LEN];
        let bytes = encode(&key, Version::new(u64::MAX), &value);
        assert!(bytes.len() <= MAX_LEN, "{} > {MAX_LEN}", bytes.len());
        assert!(bytes.len() <= max_encoded_len(&key, value.len()));
        assert!(MAX_LEN - bytes.len() < 64, "the bound is tight");
    }

    #[test]
    fn round_trip_and_every_single_byte_flip_is_caught() {
        let key = Key::new(["a", "b c"]).unwrap();
        let bytes = encode(&key, Version::new(7), b"{\"x\":1}");
        let rec = decode(&bytes).unwrap();
        assert_eq!(
            (rec.key, rec.version.get(), rec.value),
            (key, 7, b"{\"x\":1}".to_vec())
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "truncation at {cut} went unnoticed"
            );
        }
    }
}
