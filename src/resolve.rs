//! Learning whether a write landed after its store call failed.
//!
//! A store call that fails transiently may still have made its change: the
//! commit happened and only the reply was lost. The managers write every
//! record with the [`AttemptId`] of the call (or a write id of its own), so
//! reading the record back tells their own write from anyone else's. This
//! module is the waiting part: read until the store answers or the call's
//! deadline passes, sleeping on the injected clock between tries.
//!
//! Every manager write is a compare-and-set, so a write that lands late (after
//! the re-read) cannot overwrite what was decided since: its precondition no
//! longer holds.

use std::future::{Future, ready};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::attempt::AttemptId;
use crate::clock::{SharedClock, millis};
use crate::drive::{self, Blocking, Wait};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::store::Expect;

/// How long a manager call keeps re-reading, by default.
pub(crate) const DEFAULT_RESOLVE_WITHIN: Duration = Duration::from_secs(10);

/// How many times a call writes at most, when a write fails in a way that
/// may hide its success and reading back shows that it did not land. Trying
/// again is what fences off the failed write, should it still arrive: the new
/// write's compare-and-set either lands, and the old one's precondition no
/// longer holds, or meets the old one and decides on it.
const WRITE_TRIES: u32 = 3;

/// First pause between two re-reads.
const FIRST_PAUSE_MS: u64 = 10;
/// Longest pause between two re-reads.
const MAX_PAUSE_MS: u64 = 500;

/// The deadline of one manager call, by which it must know how its write went.
pub(crate) struct Deadline {
    clock: SharedClock,
    at_ms: u64,
    /// Atomic only so that an async call's future, which holds the deadline
    /// across its awaits, is `Send`: one call uses it at a time.
    writes: AtomicU32,
}

impl Deadline {
    /// A deadline `within` from now, for a call that starts now.
    pub(crate) fn starting_now(clock: &SharedClock, within: Duration) -> Self {
        let at_ms = clock.now_ms().saturating_add(millis(within));
        Deadline {
            clock: std::sync::Arc::clone(clock),
            at_ms,
            writes: AtomicU32::new(1),
        }
    }

    /// Whether a call whose write did not land (read back after a failure
    /// that may have hidden it) writes again: at most [`WRITE_TRIES`] writes,
    /// all before the deadline.
    pub(crate) fn may_write_again(&self) -> bool {
        let writes = self.writes.fetch_add(1, Ordering::Relaxed);
        writes < WRITE_TRIES && self.clock.now_ms() < self.at_ms
    }

    /// Calls `read` until it succeeds, fails with an error that is not
    /// transient, or the deadline passes; returns its last result. Between
    /// tries it sleeps on the clock with a growing pause, never past the
    /// deadline. Reads at least once, even past the deadline.
    pub(crate) fn reread<T>(&self, mut read: impl FnMut() -> Result<T>) -> Result<T> {
        drive::blocking(self.reread_driven(Blocking, || ready(read())))
    }

    /// [`reread`](Deadline::reread), each read and each pause made through
    /// `drive`.
    pub(crate) async fn reread_driven<T, F: Future<Output = Result<T>>>(
        &self,
        drive: impl Wait,
        mut read: impl FnMut() -> F,
    ) -> Result<T> {
        let mut pause = FIRST_PAUSE_MS;
        loop {
            match read().await {
                Err(e) if e.is_transient() => {
                    let now = self.clock.now_ms();
                    if now >= self.at_ms {
                        return Err(e);
                    }
                    let until = now.saturating_add(pause).min(self.at_ms);
                    drive.sleep_until(&self.clock, until).await;
                    pause = (pause * 2).min(MAX_PAUSE_MS);
                }
                done => return done,
            }
        }
    }
}

/// Whether a write that failed with `error` may have landed all the same, so
/// that its outcome must be read back before it is reported: a transient
/// failure (the reply may be what was lost), a batch committed but not yet
/// applied, or a write made visible whose flush failed.
pub(crate) fn may_have_landed(error: &Error) -> bool {
    error.is_transient() || matches!(error, Error::BatchPending { .. } | Error::NotDurable { .. })
}

/// The error of a call whose write failed with `write_error` and whose
/// re-reads failed until the deadline, the last with `reread_error`.
pub(crate) fn ambiguous(
    operation: &'static str,
    key: &Key,
    attempt: &AttemptId,
    write_error: Error,
    reread_error: Error,
) -> Error {
    Error::Ambiguous {
        operation,
        key: key.clone(),
        attempt: attempt.clone(),
        reread: reread_error.to_string(),
        source: Box::new(write_error),
    }
}

/// The writes of one call that failed in a way the store said may still land
/// later, each with the precondition it was made on: [`PgStore`](crate::PgStore)
/// says so of a write whose session it could not make sure is over.
///
/// While what is stored could still meet one of those preconditions, that
/// write can land, so the call's outcome is open whatever else ends it: a
/// later write that failed plainly, a read that failed, a write that was
/// refused, or an answer that needs no write (the lock found held, the
/// reservation found made by another). A write made on a version can never
/// land once a read shows another, since versions never repeat. A write made
/// on absence can land whenever the key is absent again (deleted after it was
/// seen taken): nothing a call reads rules it out, and the call ends
/// ambiguous, with the attempt id that write carried, so that a repeat finds
/// it if it lands.
#[derive(Default)]
pub(crate) struct LateWrite {
    /// The failed writes' preconditions, and copies of their errors.
    open: Vec<(Expect, Error)>,
}

impl LateWrite {
    /// Notes a write made on `expect` that failed with `error`, if the store
    /// said it may still land.
    pub(crate) fn failed(&mut self, error: &Error, expect: Expect) {
        // Only a database error says so; it is copied in words.
        if may_land_later(error) {
            self.open.push((expect, copy_of(error)));
        }
    }

    /// Notes what is stored now, as the precondition a write on it would
    /// take: a write made on another version can no longer land.
    pub(crate) fn stored(&mut self, now: Expect) {
        self.open
            .retain(|(expect, _)| *expect == now || *expect == Expect::Absent);
    }

    /// Whether a failed write may still land.
    pub(crate) fn is_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// The error to end the call with: `error` itself, or, while a failed
    /// write may still land, an ambiguous error with `attempt`, the id that
    /// write carried, and `error` as its cause.
    pub(crate) fn end(
        &self,
        operation: &'static str,
        key: &Key,
        attempt: &AttemptId,
        error: Error,
    ) -> Error {
        match self.open.first() {
            Some((_, late)) if !error.is_ambiguous() => Error::Ambiguous {
                operation,
                key: key.clone(),
                attempt: attempt.clone(),
                reread: format!(
                    "an earlier write of this call failed ({late}), and nothing read since \
                     rules out that it lands later"
                ),
                source: Box::new(error),
            },
            _ => error,
        }
    }

    /// For a call that, deciding again, has an answer that needs no write of
    /// its own: `None` if that answer is its outcome, or the ambiguous error
    /// to end it with while a failed write may still land.
    pub(crate) fn nothing_to_write(
        &self,
        operation: &'static str,
        key: &Key,
        attempt: &AttemptId,
    ) -> Option<Error> {
        self.open.first().map(|(_, late)| Error::Ambiguous {
            operation,
            key: key.clone(),
            attempt: attempt.clone(),
            reread: "the call needs no write now, but its earlier write may still land".to_owned(),
            source: Box::new(copy_of(late)),
        })
    }
}

/// A copy of a database error noted by [`LateWrite::failed`].
fn copy_of(error: &Error) -> Error {
    match error {
        Error::Database {
            step,
            server,
            transient,
            source,
        } => Error::Database {
            step,
            server: server.clone(),
            transient: *transient,
            source: source.to_string().into(),
        },
        other => Error::InvalidArgument(other.to_string()),
    }
}

/// Whether the store said that the failed write may still land later.
fn may_land_later(error: &Error) -> bool {
    #[cfg(feature = "postgres")]
    {
        crate::store::pg::may_land_later(error)
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = error;
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn unreachable() -> Error {
        Error::Database {
            step: "get",
            server: "db:5432/app".into(),
            transient: true,
            source: "connection reset".into(),
        }
    }

    /// A clock whose sleeps pass at once, so that a test of pauses waits for
    /// nothing.
    fn sleeping_clock() -> (ManualClock, SharedClock) {
        let clock = ManualClock::new(0);
        clock.set_auto_advance(true);
        (clock.clone(), Arc::new(clock))
    }

    #[test]
    fn a_reread_tries_again_with_growing_pauses_until_the_store_answers() {
        let (clock, shared) = sleeping_clock();
        let deadline = Deadline::starting_now(&shared, Duration::from_secs(5));
        let mut seen = Vec::new();
        let read = deadline.reread(|| {
            seen.push(clock.now_ms());
            if seen.len() < 4 {
                Err(unreachable())
            } else {
                Ok(7)
            }
        });
        assert_eq!(read.unwrap(), 7);
        assert_eq!(seen, [0, 10, 30, 70]);
    }

    #[test]
    fn a_reread_gives_up_at_the_deadline_with_the_last_error() {
        let (clock, shared) = sleeping_clock();
        let deadline = Deadline::starting_now(&shared, Duration::from_secs(2));
        let mut seen = Vec::new();
        let read: Result<()> = deadline.reread(|| {
            seen.push(clock.now_ms());
            Err(unreachable())
        });
        assert!(read.unwrap_err().is_transient());
        // The pauses grow to their bound and the last one ends at the
        // deadline, where one more read is made.
        assert_eq!(seen, [0, 10, 30, 70, 150, 310, 630, 1130, 1630, 2000]);
    }

    #[test]
    fn an_error_that_is_not_transient_ends_the_reread_at_once() {
        let clock: SharedClock = Arc::new(ManualClock::new(0));
        let deadline = Deadline::starting_now(&clock, Duration::from_secs(2));
        let tries = AtomicU32::new(0);
        let read: Result<()> = deadline.reread(|| {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(Error::InvalidArgument("no".into()))
        });
        assert!(read.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
