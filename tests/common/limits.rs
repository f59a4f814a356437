//! Values of an exact encoded size, and the checks that a value over its
//! bound was refused naming it and that nothing was written.

use std::collections::BTreeMap;

use jobsafe::record::Metadata;
use jobsafe::{Entry, Error, Key, Prefix, Store};
use serde_json::Value;

/// A string of `len` bytes.
pub fn text_of_len(len: usize) -> String {
    "x".repeat(len)
}

/// A JSON value whose compact encoding is `len` bytes (at least 2): a string.
pub fn json_of_len(len: usize) -> Value {
    let value = Value::String(text_of_len(len - 2));
    assert_eq!(serde_json::to_vec(&value).map(|v| v.len()).ok(), Some(len));
    value
}

/// Metadata whose JSON encoding is `len` bytes (at least 10): one field.
pub fn metadata_of_len(len: usize) -> Metadata {
    let mut metadata = Metadata::new();
    metadata.insert("pad".to_owned(), Value::String(text_of_len(len - 10)));
    let encoded = serde_json::to_vec(&metadata).map(|v| v.len()).ok();
    assert_eq!(encoded, Some(len));
    metadata
}

/// Every record of `store`, with its version: equal snapshots before and
/// after a call mean it wrote nothing (a rewrite of the same bytes changes the
/// version).
pub fn snapshot(store: &dyn Store) -> BTreeMap<Key, Entry> {
    let keys = store
        .list_all(&Prefix::all())
        .unwrap_or_else(|e| panic!("list the store: {e}"));
    keys.into_iter()
        .filter_map(|key| {
            let entry = store.get(&key).unwrap_or_else(|e| panic!("get {key}: {e}"));
            entry.map(|entry| (key, entry))
        })
        .collect()
}

/// `result` must be [`Error::TooLarge`] for `what` of `size` bytes over
/// `limit`, not transient, with a message that says all three.
pub fn assert_too_large<T: std::fmt::Debug>(
    result: jobsafe::Result<T>,
    what: &str,
    size: usize,
    limit: usize,
) {
    let err = match result {
        Err(err) => err,
        Ok(v) => panic!("{what} of {size} bytes over {limit} was accepted: {v:?}"),
    };
    assert!(
        matches!(
            &err,
            Error::TooLarge { what: w, size: s, limit: l, .. }
                if *w == what && *s == size && *l == limit
        ),
        "expected {what} of {size} bytes over {limit} to be too large, got: {err}"
    );
    assert!(err.is_too_large() && !err.is_transient(), "{err}");
    let message = err.to_string();
    for part in [what.to_owned(), size.to_string(), limit.to_string()] {
        assert!(message.contains(&part), "{message:?} does not say {part}");
    }
}
