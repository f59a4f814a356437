//! Attempt ids: what lets a call, and a caller's retry of it, recognise its own
//! write after a store failed to say whether the write landed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The id of one call that writes: one acquire of a lock, one start of a job,
/// one reservation. The record the call writes carries it, so that the call
/// can tell its own write from another's when it reads the record back.
///
/// A write whose store call failed transiently may still have landed (on
/// [`PgStore`](crate::PgStore) the commit may have happened and only its reply
/// been lost). The managers ([`JobLock`](crate::JobLock),
/// [`JobState`](crate::JobState), [`JobLedger`](crate::JobLedger)) then re-read
/// the record until their `resolve_within` deadline and return the outcome of
/// their own write. If the store stays unreachable until the deadline, the
/// error [`is_ambiguous`](crate::Error::is_ambiguous) and carries this id
/// ([`Error::attempt_id`](crate::Error::attempt_id)): repeat the call with the
/// same id (on a lock request, a charge request or a job start) and it is
/// recognised as the same call, whichever way the first one went.
///
/// A call given no id makes a fresh one (a UUID v7). An id is at most
/// [`AttemptId::MAX_LEN`] bytes of printable ASCII without spaces, however it
/// is made: parsed, or deserialized (serde), which checks it the same way.
///
/// ```
/// use jobsafe::AttemptId;
///
/// let fresh = AttemptId::new();
/// let chosen: AttemptId = "checkout-7f3a:lock".parse()?;
/// assert_ne!(fresh, chosen);
/// assert_eq!(chosen.as_str(), "checkout-7f3a:lock");
/// assert!("two words".parse::<AttemptId>().is_err());
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AttemptId(String);

impl AttemptId {
    /// Longest attempt id, in bytes: 128, room for a UUID with a prefix of the
    /// caller's.
    pub const MAX_LEN: usize = 128;

    /// A fresh id, unique to this call: a UUID v7.
    pub fn new() -> Self {
        AttemptId(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for AttemptId {
    fn default() -> Self {
        AttemptId::new()
    }
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AttemptId {
    type Err = Error;

    /// An id chosen by the caller.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty id, one over
    /// [`AttemptId::MAX_LEN`] bytes, or one with a character that is not
    /// printable ASCII or is a space.
    fn from_str(text: &str) -> Result<Self> {
        check(text)?;
        Ok(AttemptId(text.to_owned()))
    }
}

/// Whether `text` is an attempt id: what parsing and deserializing check.
fn check(text: &str) -> Result<()> {
    if text.is_empty() || text.len() > AttemptId::MAX_LEN {
        return Err(Error::InvalidArgument(format!(
            "an attempt id must be 1 to {} bytes, got {}",
            AttemptId::MAX_LEN,
            text.len()
        )));
    }
    if text.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    let bad = text.chars().find(|c| !c.is_ascii_graphic());
    Err(Error::InvalidArgument(format!(
        "an attempt id must be printable ASCII without spaces, got {:?} in {:?}",
        bad.unwrap_or_default(),
        text.escape_debug().to_string()
    )))
}

impl From<AttemptId> for String {
    fn from(id: AttemptId) -> String {
        id.0
    }
}

impl TryFrom<String> for AttemptId {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        // Kept, not copied: every record read back decodes one or two.
        check(&text)?;
        Ok(AttemptId(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_id_must_be_short_printable_ascii() {
        assert!("a".parse::<AttemptId>().is_ok());
        assert!("".parse::<AttemptId>().is_err());
        assert!("x".repeat(129).parse::<AttemptId>().is_err());
        assert!("x".repeat(128).parse::<AttemptId>().is_ok());
        assert!("tab\there".parse::<AttemptId>().is_err());
        assert!("é".parse::<AttemptId>().is_err());
    }

    #[test]
    fn a_deserialized_id_is_checked_as_a_parsed_one() {
        let id: AttemptId = serde_json::from_str(r#""order-17:charge""#).unwrap();
        assert_eq!(id.as_str(), "order-17:charge");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""order-17:charge""#);
        for bad in [r#""""#, r#""two words""#, r#""line\nbreak""#] {
            let err = serde_json::from_str::<AttemptId>(bad).unwrap_err();
            assert!(err.to_string().contains("attempt id"), "{bad}: {err}");
        }
        let long = format!("\"{}\"", "x".repeat(AttemptId::MAX_LEN + 1));
        assert!(serde_json::from_str::<AttemptId>(&long).is_err());
    }

    #[test]
    fn fresh_ids_differ() {
        assert_ne!(AttemptId::new(), AttemptId::new());
    }
}
