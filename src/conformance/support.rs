//! Small helpers the clauses share: turning store results into violations.

use std::fmt::Debug;

use super::Violation;
use crate::error::Error;
use crate::key::Key;
use crate::store::{Entry, Store, Version};

/// Returns a [`Violation`] from the enclosing clause unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::conformance::Violation::new(format!($($fmt)+)));
        }
    };
}
pub(super) use ensure;

/// Turns an unexpected error into a violation that says what was being done.
pub(super) trait During<T> {
    fn during(self, what: &str) -> Result<T, Violation>;
}

impl<T> During<T> for crate::Result<T> {
    fn during(self, what: &str) -> Result<T, Violation> {
        self.map_err(|e| Violation::new(format!("{what}: unexpected error: {e}")))
    }
}

/// A key from literal segments.
pub(super) fn key<const N: usize>(segments: [&str; N]) -> Result<Key, Violation> {
    Key::new(segments).during("build a key")
}

/// `result` must be a conflict reporting `current` as the key's version.
pub(super) fn expect_conflict<T: Debug>(
    result: crate::Result<T>,
    what: &str,
    current: Option<Version>,
) -> Result<(), Violation> {
    match result {
        Err(e) if e.is_conflict() => {
            let reported = e.conflict_current().flatten();
            ensure!(
                reported == current,
                "{what}: conflict reported current version {reported:?}, but it is {current:?}"
            );
            Ok(())
        }
        Err(e) => Err(Violation::new(format!(
            "{what}: expected a conflict, got the error: {e}"
        ))),
        Ok(v) => Err(Violation::new(format!(
            "{what}: expected a conflict, but it succeeded with {v:?}"
        ))),
    }
}

/// `result` must be [`Error::InvalidArgument`].
pub(super) fn expect_invalid_argument<T: Debug>(
    result: crate::Result<T>,
    what: &str,
) -> Result<(), Violation> {
    match result {
        Err(Error::InvalidArgument(_)) => Ok(()),
        other => Err(Violation::new(format!(
            "{what}: expected an invalid-argument error, got {other:?}"
        ))),
    }
}

/// `result` must be [`Error::Corrupt`].
pub(super) fn expect_corrupt<T: Debug>(
    result: crate::Result<T>,
    what: &str,
) -> Result<(), Violation> {
    match result {
        Err(e) if e.is_corrupt() => Ok(()),
        other => Err(Violation::new(format!(
            "{what}: expected a corrupt-record error, got {other:?}"
        ))),
    }
}

/// The key must hold exactly `value` at `version`.
pub(super) fn expect_entry(
    store: &impl Store,
    key: &Key,
    value: &[u8],
    version: Version,
    when: &str,
) -> Result<(), Violation> {
    let found = store.get(key).during(&format!("get {key} {when}"))?;
    let expected = Entry {
        value: value.to_vec(),
        version,
    };
    ensure!(
        found.as_ref() == Some(&expected),
        "get {key} {when}: expected {} at {version}, found {}",
        show(value),
        show_entry(found.as_ref())
    );
    Ok(())
}

/// The key must hold exactly `value`, at whatever version; returns that version.
pub(super) fn expect_value(
    store: &impl Store,
    key: &Key,
    value: &[u8],
    when: &str,
) -> Result<Version, Violation> {
    let found = store.get(key).during(&format!("get {key} {when}"))?;
    match found {
        Some(entry) if entry.value == value => Ok(entry.version),
        other => Err(Violation::new(format!(
            "get {key} {when}: expected {}, found {}",
            show(value),
            show_entry(other.as_ref())
        ))),
    }
}

/// The key must have no record.
pub(super) fn expect_absent(store: &impl Store, key: &Key, when: &str) -> Result<(), Violation> {
    let found = store.get(key).during(&format!("get {key} {when}"))?;
    ensure!(
        found.is_none(),
        "get {key} {when}: expected no record, found {}",
        show_entry(found.as_ref())
    );
    Ok(())
}

/// A value for messages: short values as text, long ones by length.
pub(super) fn show(value: &[u8]) -> String {
    if value.len() <= 64 {
        format!("{:?}", String::from_utf8_lossy(value))
    } else {
        format!("{} bytes", value.len())
    }
}

fn show_entry(entry: Option<&Entry>) -> String {
    match entry {
        Some(e) => format!("{} at {}", show(&e.value), e.version),
        None => "no record".to_owned(),
    }
}
