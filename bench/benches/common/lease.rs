//! The lock comparison: one lease cycle (acquire a free lock, then release it),
//! run against every contender through one small trait.
//!
//! A cycle is what a job runner pays per job for mutual exclusion: the acquire
//! that makes it the holder and the release when the job is done, each durable on
//! its own when it returns (for the durable contenders). To add a contender,
//! implement [`LeaseEngine`] (or wrap a jobsafe [`Store`] in [`JobLockEngine`])
//! and give [`LeaseWorkload::new`] a function that opens it.
//!
//! Each round cycles over [`LOCK_KEYS`] keys round robin rather than one key: a
//! service locks one subject per job (a vault, a session), so consecutive cycles
//! touch different keys, and a store that does per-key work (DirStore's stripes
//! and files) is measured across keys, not on one hot path. 64 keys are few enough
//! that nothing grows during a round: the cost per cycle is measured, not the cost
//! of a growing table.
//!
//! One more lock, [`RESIDENT_KEY`], is held through every round, as another job's
//! lock is in a service busy enough for lock throughput to matter. Without it the
//! lock family would be empty after every release, and
//! [`DirStore`](jobsafe::DirStore) would remove its emptied directory at every
//! release and create it again, with one more flush, at every acquire.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobsafe::lock::{Acquire, LockGuard, LockRequest, Release};
use jobsafe::{JobLock, Key, Store, SystemClock};

use super::{BenchResult, Sample, Syncs, Tally, Workload, time_ops};

/// Keys cycled over, round robin.
pub(crate) const LOCK_KEYS: usize = 64;
/// The lock held by "another job" through every timed cycle.
pub(crate) const RESIDENT_KEY: &str = "resident";
/// The lease of every acquire: far longer than a round, so no lease ever ends.
pub(crate) const TTL: Duration = Duration::from_secs(60);

/// Milliseconds since the Unix epoch, the time lease expiries are stated in.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A lease lock as the comparison drives it.
pub(crate) trait LeaseEngine {
    /// A lock's key in the engine's own form, made once, untimed, as a caller
    /// holds the key of the subject it locks.
    type Key;
    /// What the holder keeps to release the lock.
    type Held;

    /// The key named `name`.
    fn key(&mut self, name: &str) -> BenchResult<Self::Key>;

    /// Takes the lock at `key` for [`TTL`] if nobody holds it (or the holder's
    /// lease has ended); `None` if someone holds it.
    fn acquire(&mut self, key: &Self::Key) -> BenchResult<Option<Self::Held>>;

    /// Releases a lock this engine acquired; `false` if it was not held by
    /// `held` any more.
    fn release(&mut self, key: &Self::Key, held: Self::Held) -> BenchResult<bool>;

    /// Where the engine's flushes are counted.
    fn syncs(&self) -> Syncs;
}

/// [`JobLock`] over any jobsafe [`Store`] as a [`LeaseEngine`], timed by the
/// system clock. Keys are one segment, under the lock's default namespace.
#[derive(Debug)]
pub(crate) struct JobLockEngine<S> {
    locks: JobLock<S>,
    request: LockRequest,
    syncs: Syncs,
}

impl<S: Store> JobLockEngine<S> {
    pub(crate) fn new(store: S, syncs: Syncs) -> Self {
        JobLockEngine {
            locks: JobLock::new(store, Arc::new(SystemClock)),
            request: LockRequest::new(),
            syncs,
        }
    }
}

impl<S: Store> LeaseEngine for JobLockEngine<S> {
    type Key = Key;
    type Held = LockGuard<S>;

    fn key(&mut self, name: &str) -> BenchResult<Key> {
        Ok(Key::new([name])?)
    }

    fn acquire(&mut self, key: &Key) -> BenchResult<Option<LockGuard<S>>> {
        match self.locks.acquire(key, TTL, &self.request)? {
            Acquire::Acquired(guard) => Ok(Some(guard)),
            Acquire::Held(_) => Ok(None),
        }
    }

    fn release(&mut self, _key: &Key, guard: LockGuard<S>) -> BenchResult<bool> {
        Ok(guard.release()? == Release::Released)
    }

    fn syncs(&self) -> Syncs {
        self.syncs.clone()
    }
}

/// The in-memory limit of a lease lock: a `Mutex<HashMap>` from key to holder and
/// expiry, with the least a lease needs (the clock read for the expiry, an
/// expiry check, a holder check on release) and nothing else: no serialization,
/// no versions, numbers for holder ids.
#[derive(Debug, Default)]
pub(crate) struct RawMapLease {
    map: Mutex<HashMap<String, RawLease>>,
    last_holder: u64,
    /// Always zero: nothing here flushes.
    tally: Tally,
}

#[derive(Debug)]
struct RawLease {
    holder: u64,
    expires_ms: u64,
}

impl RawMapLease {
    /// An empty map; `dir` is unused.
    pub(crate) fn open(_dir: &Path) -> BenchResult<Self> {
        Ok(RawMapLease::default())
    }
}

fn poisoned<T>(_: T) -> Box<dyn std::error::Error> {
    "raw_map: mutex poisoned".into()
}

impl LeaseEngine for RawMapLease {
    type Key = String;
    type Held = u64;

    fn key(&mut self, name: &str) -> BenchResult<String> {
        Ok(name.to_owned())
    }

    fn acquire(&mut self, key: &String) -> BenchResult<Option<u64>> {
        let now = now_ms();
        self.last_holder += 1;
        let lease = RawLease {
            holder: self.last_holder,
            expires_ms: now.saturating_add(TTL.as_millis().try_into()?),
        };
        let mut map = self.map.lock().map_err(poisoned)?;
        match map.entry(key.clone()) {
            Entry::Occupied(held) if held.get().expires_ms > now => return Ok(None),
            Entry::Occupied(mut expired) => {
                expired.insert(lease);
            }
            Entry::Vacant(free) => {
                free.insert(lease);
            }
        }
        Ok(Some(self.last_holder))
    }

    fn release(&mut self, key: &String, holder: u64) -> BenchResult<bool> {
        let mut map = self.map.lock().map_err(poisoned)?;
        match map.get(key) {
            Some(lease) if lease.holder == holder => Ok(map.remove(key).is_some()),
            _ => Ok(false),
        }
    }

    fn syncs(&self) -> Syncs {
        Syncs::Tally(self.tally.clone())
    }
}

/// One contender of the lock comparison: each round opens a fresh engine, checks
/// that it excludes (untimed), takes the [`RESIDENT_KEY`] lock, then times `ops`
/// acquire + release cycles over [`LOCK_KEYS`] keys. One sample:
/// `<name>/cycle`.
#[derive(Debug)]
pub(crate) struct LeaseWorkload<E> {
    name: &'static str,
    open: fn(&Path) -> BenchResult<E>,
}

impl<E: LeaseEngine> LeaseWorkload<E> {
    /// A contender named `name`, opened in a fresh empty directory by `open`.
    pub(crate) fn new(name: &'static str, open: fn(&Path) -> BenchResult<E>) -> Self {
        LeaseWorkload { name, open }
    }

    /// Fails unless a held lock is refused to a second acquire and released once:
    /// a contender that does not exclude has no throughput worth reporting.
    fn check_exclusion(&self, engine: &mut E, key: &E::Key) -> BenchResult {
        let name = self.name;
        let held = engine
            .acquire(key)?
            .ok_or_else(|| format!("{name}: a free lock was refused"))?;
        if engine.acquire(key)?.is_some() {
            return Err(format!("{name}: a held lock was acquired again").into());
        }
        if !engine.release(key, held)? {
            return Err(format!("{name}: the holder could not release its lock").into());
        }
        Ok(())
    }
}

impl<E: LeaseEngine> Workload for LeaseWorkload<E> {
    fn name(&self) -> &str {
        self.name
    }

    fn round(&mut self, dir: &Path, ops: usize) -> BenchResult<Vec<Sample>> {
        let name = self.name;
        let mut engine = (self.open)(dir)?;
        let keys = (0..LOCK_KEYS)
            .map(|i| engine.key(&format!("job-{i:02}")))
            .collect::<BenchResult<Vec<_>>>()?;
        // Creates what the first lock creates (a table, a directory) untimed, and
        // checks that every key's lock excludes.
        for key in &keys {
            self.check_exclusion(&mut engine, key)?;
        }
        let resident_key = engine.key(RESIDENT_KEY)?;
        let resident = engine
            .acquire(&resident_key)?
            .ok_or_else(|| format!("{name}: the resident lock was refused"))?;
        let syncs = engine.syncs();
        let cycle = time_ops(format!("{name}/cycle"), ops, &syncs, |i| {
            let key = &keys[i % LOCK_KEYS];
            let held = engine
                .acquire(key)?
                .ok_or_else(|| format!("{name}: lock {i} was refused"))?;
            if engine.release(key, held)? {
                Ok(())
            } else {
                Err(format!("{name}: lock {i} was not released").into())
            }
        })?;
        if !engine.release(&resident_key, resident)? {
            return Err(format!("{name}: the resident lock was not released").into());
        }
        Ok(vec![cycle])
    }
}
