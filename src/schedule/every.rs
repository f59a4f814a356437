//! When a schedule's runs are due: fixed intervals counted from the Unix
//! epoch, or a cron expression evaluated in UTC.
//!
//! Every instance of a service computes the same due times from the same
//! definition, with no coordination: a run is named by its due time, so two
//! instances that find the same run due make the same job.

use std::fmt;
use std::time::Duration;

use crate::clock::millis;
use crate::error::{Error, Result};

/// When a [`Schedule`](super::Schedule)'s runs are due.
///
/// ```
/// use std::time::Duration;
/// use jobsafe::schedule::Every;
///
/// // At :00, :15, :30 and :45 of every hour (UTC, like every interval).
/// let quarter = Every::interval(Duration::from_secs(15 * 60))?;
/// // Every day at 03:00 UTC.
/// let nightly = Every::interval(Duration::from_secs(24 * 3600))?
///     .offset(Duration::from_secs(3 * 3600))?;
/// assert_eq!(nightly.to_string(), "every 86400000 ms + 10800000 ms");
/// # let _ = quarter;
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Every(Rule);

#[derive(Clone, Debug)]
enum Rule {
    /// Due at `offset_ms + k * period_ms` since the epoch, for every k >= 0.
    Interval { period_ms: u64, offset_ms: u64 },
    #[cfg(feature = "cron")]
    Cron {
        expression: String,
        schedule: Box<cron::Schedule>,
    },
}

impl Every {
    /// Longest interval: about 100 years, so that due times stay far from the
    /// end of the millisecond space.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

    /// Due every `period`, at the multiples of `period` since the Unix epoch
    /// (shifted by [`offset`](Every::offset)): a 15-minute interval is due at
    /// :00, :15, :30 and :45 of every hour, whenever the schedule was added.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a period under one millisecond or over
    /// [`Every::MAX_INTERVAL`].
    pub fn interval(period: Duration) -> Result<Every> {
        if period < Duration::from_millis(1) || period > Every::MAX_INTERVAL {
            return Err(Error::InvalidArgument(format!(
                "a schedule's interval must be 1 ms to {} s, got {period:?}",
                Every::MAX_INTERVAL.as_secs()
            )));
        }
        Ok(Every(Rule::Interval {
            period_ms: millis(period),
            offset_ms: 0,
        }))
    }

    /// Shifts an interval's due times by `offset` (less than the period): a
    /// daily interval with an offset of 3 hours is due at 03:00 UTC.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an offset not under the period, or on a
    /// cron schedule.
    pub fn offset(self, offset: Duration) -> Result<Every> {
        match self.0 {
            Rule::Interval { period_ms, .. } if millis(offset) < period_ms => {
                Ok(Every(Rule::Interval {
                    period_ms,
                    offset_ms: millis(offset),
                }))
            }
            Rule::Interval { period_ms, .. } => Err(Error::InvalidArgument(format!(
                "a schedule's offset must be under its interval of {period_ms} ms, got {offset:?}"
            ))),
            #[cfg(feature = "cron")]
            Rule::Cron { .. } => Err(Error::InvalidArgument(
                "an offset applies to an interval, not to a cron expression".to_owned(),
            )),
        }
    }

    /// Due at the times a cron expression names, evaluated in UTC, with the
    /// `cron` crate's syntax: seconds first, then minutes, hours, day of
    /// month, month, day of week and an optional year
    /// (`"0 30 3 * * *"` is 03:30:00 every day).
    ///
    /// ```
    /// use jobsafe::schedule::Every;
    ///
    /// let nightly = Every::cron("0 30 3 * * *")?;
    /// assert_eq!(nightly.to_string(), "cron 0 30 3 * * *");
    /// assert!(Every::cron("every day").is_err());
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] with the parser's reason for an expression
    /// it does not accept.
    #[cfg(feature = "cron")]
    pub fn cron(expression: &str) -> Result<Every> {
        use std::str::FromStr;
        let expression = expression.trim();
        let schedule = cron::Schedule::from_str(expression)
            .map_err(|e| Error::InvalidArgument(format!("cron expression {expression:?}: {e}")))?;
        Ok(Every(Rule::Cron {
            expression: expression.to_owned(),
            schedule: Box::new(schedule),
        }))
    }

    /// The first due time strictly after `t_ms`, if there is one.
    pub(crate) fn next_after(&self, t_ms: u64) -> Option<u64> {
        match &self.0 {
            Rule::Interval {
                period_ms,
                offset_ms,
            } => {
                if t_ms < *offset_ms {
                    return Some(*offset_ms);
                }
                let periods = (t_ms - offset_ms) / period_ms + 1;
                periods.checked_mul(*period_ms)?.checked_add(*offset_ms)
            }
            #[cfg(feature = "cron")]
            Rule::Cron { schedule, .. } => {
                let next = schedule.after(&utc(t_ms)?).next()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }

    /// The last due time at or before `t_ms`, if there is one.
    pub(crate) fn last_at_or_before(&self, t_ms: u64) -> Option<u64> {
        match &self.0 {
            Rule::Interval {
                period_ms,
                offset_ms,
            } => {
                let since = t_ms.checked_sub(*offset_ms)?;
                Some(offset_ms + since / period_ms * period_ms)
            }
            #[cfg(feature = "cron")]
            Rule::Cron { schedule, .. } => {
                let at = utc(t_ms)?;
                // The iterator goes back from strictly before `at`.
                if t_ms.is_multiple_of(1000) && schedule.includes(at) {
                    return Some(t_ms);
                }
                let last = schedule.after(&at).next_back()?;
                u64::try_from(last.timestamp_millis())
                    .ok()
                    .filter(|&last| last <= t_ms)
            }
        }
    }

    /// How many due times lie from `from` to `to`, both included, counting
    /// at most `cap` (a cron expression is walked time by time).
    pub(crate) fn count(&self, from: u64, to: u64, cap: u64) -> u64 {
        if from > to {
            return 0;
        }
        match &self.0 {
            Rule::Interval { period_ms, .. } => {
                let first = self
                    .last_at_or_before(from)
                    .filter(|&t| t == from)
                    .or_else(|| self.next_after(from));
                match (first, self.last_at_or_before(to)) {
                    (Some(first), Some(last)) if first <= last => {
                        ((last - first) / period_ms + 1).min(cap)
                    }
                    _ => 0,
                }
            }
            #[cfg(feature = "cron")]
            Rule::Cron { .. } => {
                let mut n = 0;
                let mut t = match self.last_at_or_before(from) {
                    Some(t) if t == from => Some(t),
                    _ => self.next_after(from),
                };
                while let Some(due) = t.filter(|&due| due <= to && n < cap) {
                    n += 1;
                    t = self.next_after(due);
                }
                n
            }
        }
    }
}

#[cfg(feature = "cron")]
fn utc(t_ms: u64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(t_ms).ok()?)
}

/// How the definition is stored beside a schedule's state, so that a changed
/// definition is noticed (and the CLI can show it).
impl fmt::Display for Every {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Rule::Interval {
                period_ms,
                offset_ms: 0,
            } => write!(f, "every {period_ms} ms"),
            Rule::Interval {
                period_ms,
                offset_ms,
            } => write!(f, "every {period_ms} ms + {offset_ms} ms"),
            #[cfg(feature = "cron")]
            Rule::Cron { expression, .. } => write!(f, "cron {expression}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every due time from `from` to `to`, one by one.
    fn walk(every: &Every, from: u64, to: u64) -> Vec<u64> {
        let mut due = Vec::new();
        let mut t = every.last_at_or_before(from).unwrap_or(0);
        if t < from {
            t = every.next_after(t).unwrap();
        }
        while t <= to {
            due.push(t);
            t = every.next_after(t).unwrap();
        }
        due
    }

    #[test]
    fn an_interval_is_due_at_its_multiples_since_the_epoch() {
        let every = Every::interval(Duration::from_millis(100)).unwrap();
        assert_eq!(every.next_after(0), Some(100));
        assert_eq!(every.next_after(99), Some(100));
        assert_eq!(every.next_after(100), Some(200));
        assert_eq!(every.last_at_or_before(100), Some(100));
        assert_eq!(every.last_at_or_before(199), Some(100));
        assert_eq!(every.last_at_or_before(0), Some(0));
        assert_eq!(walk(&every, 150, 420), [200, 300, 400]);

        let shifted = every.offset(Duration::from_millis(30)).unwrap();
        assert_eq!(shifted.last_at_or_before(29), None);
        assert_eq!(shifted.next_after(0), Some(30));
        assert_eq!(shifted.next_after(130), Some(230));
        assert_eq!(shifted.last_at_or_before(229), Some(130));
    }

    #[test]
    fn due_times_are_counted_with_both_ends_included() {
        let every = Every::interval(Duration::from_millis(100)).unwrap();
        assert_eq!(every.count(100, 400, u64::MAX), 4);
        assert_eq!(every.count(101, 400, u64::MAX), 3);
        assert_eq!(every.count(100, 399, u64::MAX), 3);
        assert_eq!(every.count(150, 160, u64::MAX), 0);
        assert_eq!(every.count(400, 100, u64::MAX), 0);
        assert_eq!(every.count(0, 1_000_000, 7), 7);
        #[cfg(feature = "cron")]
        {
            let cron = Every::cron("*/15 * * * * *").unwrap();
            let from = 1_796_601_600_000_u64;
            assert_eq!(cron.count(from, from + 60_000, u64::MAX), 5);
            assert_eq!(cron.count(from + 1, from + 60_000, u64::MAX), 4);
            assert_eq!(cron.count(from, from + 3_600_000, 10), 10);
        }
    }

    #[test]
    fn intervals_and_offsets_out_of_range_are_refused() {
        assert!(Every::interval(Duration::ZERO).is_err());
        assert!(Every::interval(Duration::from_micros(999)).is_err());
        assert!(Every::interval(Every::MAX_INTERVAL + Duration::from_secs(1)).is_err());
        let every = Every::interval(Duration::from_secs(60)).unwrap();
        assert!(every.clone().offset(Duration::from_secs(60)).is_err());
        assert!(every.offset(Duration::from_secs(59)).is_ok());
    }

    #[test]
    fn due_times_near_the_end_of_time_do_not_overflow() {
        let every = Every::interval(Every::MAX_INTERVAL).unwrap();
        assert_eq!(every.next_after(u64::MAX - 1), None);
        assert!(every.last_at_or_before(u64::MAX).is_some());
    }

    #[cfg(feature = "cron")]
    #[test]
    fn a_cron_expression_agrees_with_the_interval_it_spells() {
        let cron = Every::cron("*/15 * * * * *").unwrap();
        let interval = Every::interval(Duration::from_secs(15)).unwrap();
        let start = 1_796_000_000_000_u64; // 2026-11-30
        for t in (start..start + 100_000).step_by(250) {
            assert_eq!(cron.next_after(t), interval.next_after(t), "next after {t}");
            assert_eq!(
                cron.last_at_or_before(t),
                interval.last_at_or_before(t),
                "last at or before {t}"
            );
        }
    }

    #[cfg(feature = "cron")]
    #[test]
    fn a_cron_expression_is_evaluated_in_utc() {
        let nightly = Every::cron("0 30 3 * * *").unwrap();
        // 2026-12-07T00:00:00Z.
        let midnight = 1_796_601_600_000_u64;
        let due = nightly.next_after(midnight).unwrap();
        assert_eq!(due - midnight, (3 * 3600 + 30 * 60) * 1000);
        assert_eq!(nightly.last_at_or_before(due), Some(due));
        assert_eq!(
            nightly.last_at_or_before(due - 1),
            Some(due - 24 * 3600 * 1000)
        );
        let err = Every::cron("61 * * * * *").unwrap_err();
        assert!(err.to_string().contains("61 * * * * *"), "{err}");
    }
}
