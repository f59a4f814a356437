//! Size checks for what a caller asks to store, made before any I/O.
//!
//! The limits themselves are constants on the types they bound
//! ([`Entry::MAX_VALUE_LEN`](crate::Entry::MAX_VALUE_LEN),
//! [`Job::MAX_KIND_LEN`](crate::jobs::Job::MAX_KIND_LEN), ...), where their
//! docs say why each value was chosen.

use crate::error::{Error, Result};
use crate::key::Key;

/// Refuses `what`, `size` bytes to be stored at `key`, if it is over `limit`.
pub(crate) fn check_len(what: &'static str, key: &Key, size: usize, limit: usize) -> Result<()> {
    if size > limit {
        return Err(Error::too_large(what, Some(key), size, limit));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_at_its_limit_passes_and_one_byte_more_names_key_size_and_limit() {
        let key = Key::new(["jobs", "job", "1"]).unwrap();
        assert!(check_len("job kind", &key, 4, 4).is_ok());
        let err = check_len("job kind", &key, 5, 4).unwrap_err();
        assert!(err.is_too_large() && !err.is_transient());
        assert_eq!(
            err.to_string(),
            "job kind for jobs/job/1 is 5 bytes, over the limit of 4 bytes"
        );
    }
}
