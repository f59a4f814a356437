//! A small cache of values, so that the records read or written most often
//! are served from memory rather than read from the journal again.
//!
//! Entries are keyed by the value's offset in one journal file, and each
//! [`Index`](super::index::Index) has a cache of its own: bytes at an offset
//! of a journal never change once a frame holding them was written or read
//! (frames are appended, never rewritten), so an entry is never stale, and a
//! new journal (a compaction, a reload) starts with an empty cache.
//!
//! The cache is split into shards, each behind its own mutex, so that
//! concurrent readers rarely meet; each shard evicts by the CLOCK rule (an
//! entry read since the hand last passed gets a second chance).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use parking_lot::Mutex;

const SHARDS: usize = 16;
/// What an entry costs beyond its bytes: the map's slot, the clock's and the
/// allocation's own overhead, roughly.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Debug)]
pub(crate) struct ValueCache {
    shards: Box<[Mutex<Shard>]>,
    /// Bytes each shard may hold, entries' overhead included.
    shard_budget: usize,
}

#[derive(Debug, Default)]
struct Shard {
    values: HashMap<u64, Cached, BuildHasherDefault<OffsetHasher>>,
    /// Offsets in the order the clock's hand visits them.
    clock: VecDeque<u64>,
    bytes: usize,
}

#[derive(Debug)]
struct Cached {
    value: Box<[u8]>,
    /// Read since the clock's hand last passed.
    referenced: bool,
}

impl ValueCache {
    /// A cache of about `budget` bytes; 0 caches nothing.
    pub(crate) fn new(budget: usize) -> Self {
        let shard_budget = budget / SHARDS;
        let shards = if shard_budget == 0 { 0 } else { SHARDS };
        ValueCache {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            shard_budget,
        }
    }

    /// A copy of the value at offset `at`, if it is cached.
    pub(crate) fn get(&self, at: u64) -> Option<Vec<u8>> {
        let mut shard = self.shard(at)?.lock();
        let cached = shard.values.get_mut(&at)?;
        cached.referenced = true;
        Some(cached.value.to_vec())
    }

    /// Caches `value`, found at offset `at`, unless it is too large for the
    /// cache to be worth it: with [`ENTRY_OVERHEAD`] it would take more than
    /// an eighth of a shard (a hundred and twenty-eighth of the cache).
    pub(crate) fn insert(&self, at: u64, value: impl Into<Box<[u8]>> + AsRef<[u8]>) {
        let Some(shard) = self.shard(at) else {
            return;
        };
        let cost = value.as_ref().len() + ENTRY_OVERHEAD;
        if cost > self.shard_budget / 8 {
            return;
        }
        let mut shard = shard.lock();
        if shard.values.contains_key(&at) {
            return;
        }
        while shard.bytes + cost > self.shard_budget && shard.evict_one() {}
        shard.values.insert(
            at,
            Cached {
                value: value.into(),
                referenced: false,
            },
        );
        shard.clock.push_back(at);
        shard.bytes += cost;
    }

    fn shard(&self, at: u64) -> Option<&Mutex<Shard>> {
        if self.shards.is_empty() {
            return None;
        }
        // The high bits of a multiplicative hash: neighbouring offsets spread.
        let spread = at.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        self.shards.get(spread as usize % self.shards.len())
    }
}

impl Shard {
    /// Evicts one entry; `false` if the shard is empty.
    fn evict_one(&mut self) -> bool {
        while let Some(at) = self.clock.pop_front() {
            let Some(cached) = self.values.get_mut(&at) else {
                continue;
            };
            if cached.referenced {
                cached.referenced = false;
                self.clock.push_back(at);
                continue;
            }
            if let Some(cached) = self.values.remove(&at) {
                self.bytes -= cached.value.len() + ENTRY_OVERHEAD;
            }
            return true;
        }
        false
    }
}

/// Hashes a `u64` offset by one multiplication: offsets are not chosen by an
/// adversary (they are where this process found or put values), and the
/// default hasher would cost more than the rest of a cached read.
#[derive(Debug, Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        let product = (n ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // The low bits of a product depend on the low bits of `n` alone;
        // the table picks buckets by them, so fold the high bits in.
        self.0 = product ^ (product >> 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_holds_what_it_was_given_within_its_budget() {
        let cache = ValueCache::new(SHARDS * 4096);
        for at in 0..10_000u64 {
            cache.insert(at * 100, vec![at as u8; 100]);
            // A hot entry survives the churn: it is read before every lap.
            assert_eq!(cache.get(0), Some(vec![0; 100]), "after {at}");
        }
        for shard in cache.shards.iter() {
            let shard = shard.lock();
            assert!(shard.bytes <= cache.shard_budget, "{}", shard.bytes);
            assert_eq!(shard.values.len(), shard.clock.len());
            let counted: usize = shard
                .values
                .values()
                .map(|c| c.value.len() + ENTRY_OVERHEAD)
                .sum();
            assert_eq!(counted, shard.bytes);
        }
        assert_eq!(cache.get(9_999 * 100), Some(vec![9_999u64 as u8; 100]));
        assert_eq!(cache.get(1), None);
    }

    /// The bound on a value is exact: an eighth of a shard, overhead
    /// included.
    #[test]
    fn a_value_is_cached_up_to_an_eighth_of_a_shard() {
        let cache = ValueCache::new(SHARDS * 8 * 1024);
        let largest = 1024 - ENTRY_OVERHEAD;
        cache.insert(1, vec![1; largest]);
        cache.insert(2, vec![2; largest + 1]);
        assert_eq!(cache.get(1), Some(vec![1; largest]));
        assert_eq!(cache.get(2), None);
    }

    #[test]
    fn a_cache_of_no_bytes_and_a_value_too_large_are_not_cached() {
        let none = ValueCache::new(0);
        none.insert(1, vec![1]);
        assert_eq!(none.get(1), None);
        let small = ValueCache::new(SHARDS * 1024);
        small.insert(1, vec![1; 1024]);
        assert_eq!(small.get(1), None);
    }
}
