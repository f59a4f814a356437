//! When a transient failure is retried: capped exponential backoff with jitter.

use std::time::Duration;

/// How transient stage failures are retried.
///
/// The `n`th consecutive transient failure of a job waits a random time between
/// half and all of `first_delay × 2^(n-1)`, capped at `max_delay` (jitter
/// spreads the retries of jobs that failed together, say on one upstream
/// outage). After `max_failures` consecutive transient failures the job fails
/// permanently. The count survives restarts (it is stored with the job's
/// pipeline state) and starts again after a success or a manual retry.
///
/// Defaults: first delay 30 s, max delay 1 h, 8 failures.
///
/// ```
/// use std::time::Duration;
/// use jobsafe::pipeline::RetryPolicy;
///
/// let policy = RetryPolicy::default().first_delay(Duration::from_secs(10));
/// let third = policy.delay_for(3);
/// assert!(third >= Duration::from_secs(20) && third <= Duration::from_secs(40));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    first_delay: Duration,
    max_delay: Duration,
    max_failures: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            max_failures: 8,
        }
    }
}

impl RetryPolicy {
    /// The backoff before the first retry (before jitter). Default: 30 s.
    pub fn first_delay(mut self, delay: Duration) -> Self {
        self.first_delay = delay;
        self
    }

    /// The longest backoff (before jitter). Default: 1 h.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Consecutive transient failures after which the job fails permanently
    /// (at least 1). Default: 8.
    pub fn max_failures(mut self, failures: u32) -> Self {
        self.max_failures = failures.max(1);
        self
    }

    /// The configured most consecutive transient failures.
    pub fn failures_allowed(&self) -> u32 {
        self.max_failures
    }

    /// The capped delay after `failures` consecutive transient failures, before
    /// jitter.
    pub fn ceiling_for(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(63);
        let factor = 1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX);
        self.first_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }

    /// A jittered delay after `failures` consecutive transient failures: uniform
    /// between half and all of [`ceiling_for`](RetryPolicy::ceiling_for).
    pub fn delay_for(&self, failures: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling_for(failures).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(ceiling / 2..=ceiling))
    }

    /// The delay actually used: the jittered backoff, or `requested` (a stage's
    /// `retry_after`) if longer, never above the max delay.
    pub(crate) fn delay_with(&self, failures: u32, requested: Option<Duration>) -> Duration {
        let backoff = self.delay_for(failures);
        requested
            .map_or(backoff, |r| r.max(backoff))
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default()
            .first_delay(Duration::from_secs(1))
            .max_delay(Duration::from_secs(10));
        let ceilings: Vec<u64> = (1..=6).map(|n| policy.ceiling_for(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 10, 10]);
        assert_eq!(policy.ceiling_for(u32::MAX), Duration::from_secs(10));
        for n in 1..=6 {
            let d = policy.delay_for(n);
            assert!(d * 2 >= policy.ceiling_for(n) && d <= policy.ceiling_for(n));
        }
    }
}
