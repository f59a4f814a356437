//! Size checks for what a caller asks to store, made before any I/O.
//!
//! The limits themselves are constants on the types they bound
//! ([`Entry::MAX_VALUE_LEN`](crate::Entry::MAX_VALUE_LEN),
//! [`Job::MAX_KIND_LEN`](crate::jobs::Job::MAX_KIND_LEN), ...), where their
//! docs say why each value was chosen.

use std::io;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::key::Key;

/// Refuses `what`, `size` bytes to be stored at `key`, if it is over `limit`.
pub(crate) fn check_len(what: &'static str, key: &Key, size: usize, limit: usize) -> Result<()> {
    if size > limit {
        return Err(Error::too_large(what, Some(key), size, limit));
    }
    Ok(())
}

/// Refuses a text field longer than `limit` bytes (of UTF-8, as stored).
pub(crate) fn check_text(
    what: &'static str,
    key: &Key,
    text: Option<&str>,
    limit: usize,
) -> Result<()> {
    check_len(what, key, text.map_or(0, str::len), limit)
}

/// Refuses a structured field whose JSON encoding is longer than `limit` bytes.
pub(crate) fn check_json(
    what: &'static str,
    key: &Key,
    value: &impl Serialize,
    limit: usize,
) -> Result<()> {
    check_len(what, key, json_len(value), limit)
}

/// The length of `value` encoded as compact JSON, counted without building the
/// encoding: a field far over its limit costs no allocation to refuse.
pub(crate) fn json_len(value: &impl Serialize) -> usize {
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and JSON values and maps with string
    // keys always serialize; were one not to, the count so far stands.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_len_is_the_length_of_the_encoding() {
        for value in [
            json!(null),
            json!("é\"\n"),
            json!({"a": [1, 2.5, "x"], "b": {"c": null}}),
        ] {
            assert_eq!(json_len(&value), serde_json::to_vec(&value).unwrap().len());
        }
    }

    #[test]
    fn a_field_at_its_limit_passes_and_one_byte_more_names_key_size_and_limit() {
        let key = Key::new(["jobs", "job", "1"]).unwrap();
        assert!(check_text("job kind", &key, Some(&"k".repeat(4)), 4).is_ok());
        let err = check_text("job kind", &key, Some(&"k".repeat(5)), 4).unwrap_err();
        assert!(err.is_too_large() && !err.is_transient());
        assert_eq!(
            err.to_string(),
            "job kind for jobs/job/1 is 5 bytes, over the limit of 4 bytes"
        );
    }
}
