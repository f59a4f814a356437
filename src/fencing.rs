//! Fencing tokens: the number that lets a resource turn away a writer whose lease
//! has passed to someone else.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A number issued with every successful lease acquisition, strictly increasing per
/// lease key for the life of the store.
///
/// A holder passes its token with every write to a protected resource; the
/// resource remembers the newest token it has accepted and refuses older ones. A
/// worker that paused (GC, swap, a stopped VM) past its lease and then wakes up thus
/// cannot overwrite the work of the holder that took over.
///
/// This type lives in the core so that anything can check a token without depending
/// on the lock that issued it.
///
/// ```
/// use jobsafe::FencingToken;
///
/// let newest_seen = FencingToken::new(7);
/// assert!(FencingToken::new(8).check_not_older_than(newest_seen, "jobs/42").is_ok());
/// assert!(FencingToken::new(7).check_not_older_than(newest_seen, "jobs/42").is_ok());
/// let err = FencingToken::new(6).check_not_older_than(newest_seen, "jobs/42").unwrap_err();
/// assert!(err.is_stale_token());
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token with the given value. Token 0 is older than any issued token.
    pub const fn new(value: u64) -> Self {
        FencingToken(value)
    }

    /// The token's value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The next token.
    pub const fn next(self) -> Self {
        FencingToken(self.0.saturating_add(1))
    }

    /// Accepts this token if it is at least `newest` (the newest token the resource
    /// has accepted); the same holder may write repeatedly with its token.
    ///
    /// # Errors
    /// [`Error::StaleToken`] naming `resource` if this token is older.
    pub fn check_not_older_than(self, newest: FencingToken, resource: &str) -> Result<()> {
        if self < newest {
            return Err(Error::StaleToken {
                resource: resource.to_owned(),
                presented: self,
                newest,
            });
        }
        Ok(())
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}
