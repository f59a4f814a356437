//! Per-operation latencies, kept as a histogram so that a run of millions of
//! operations costs a few kilobytes and merging threads' records is an addition.
//!
//! Buckets are log-linear, as in HdrHistogram: each power of two of nanoseconds
//! is cut into [`SUB_BUCKETS`] equal parts, so a percentile is exact to within
//! 1/[`SUB_BUCKETS`] (about 3%) of its value, from nanoseconds to hours.

use std::time::Duration;

/// Parts each power of two is cut into.
const SUB_BUCKETS: u64 = 32;
/// `log2(SUB_BUCKETS)`.
const SUB_BITS: u32 = 5;
/// Powers of two covered: up to 2^40 ns, about 18 minutes.
const POWERS: usize = 40;

/// Counts of operations by latency.
#[derive(Clone, Debug)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; POWERS * SUB_BUCKETS as usize],
            total: 0,
        }
    }
}

impl Histogram {
    /// Records one operation that took `latency`.
    pub(crate) fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let i = bucket(ns).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
    }

    /// Adds every operation of `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// Operations recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The latency at quantile `q` (0.5 for the median, 0.99 for p99) in
    /// microseconds: the middle of the bucket it falls in; 0 if nothing was
    /// recorded.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        // The rank of the operation at q, 1-based: p99 of 100 is the 99th.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, high) = bounds(i);
                return (low + high) as f64 / 2.0 / 1_000.0;
            }
        }
        let (low, high) = bounds(self.counts.len() - 1);
        (low + high) as f64 / 2.0 / 1_000.0
    }
}

/// The bucket of `ns`: values below `SUB_BUCKETS` have one each, then each
/// power of two has `SUB_BUCKETS`.
fn bucket(ns: u64) -> usize {
    if ns < SUB_BUCKETS {
        return ns as usize;
    }
    let power = 63 - ns.leading_zeros(); // >= SUB_BITS
    let shift = power - SUB_BITS;
    let sub = (ns >> shift) - SUB_BUCKETS; // 0..SUB_BUCKETS
    ((shift + 1) as u64 * SUB_BUCKETS + sub) as usize
}

/// The nanoseconds bucket `i` holds, `[low, high)`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB_BUCKETS {
        return (i, i + 1);
    }
    let shift = i / SUB_BUCKETS - 1;
    let sub = i % SUB_BUCKETS;
    let low = (SUB_BUCKETS + sub) << shift;
    (low, low + (1 << shift))
}
