//! Workers for each operation, over the harness's engine traits, so that every
//! implementation of an operation runs the same loop: [`reserve`] over a
//! [`LedgerEngine`], [`lock`] over a [`LeaseEngine`], [`kv`] over a
//! [`KvEngine`].

use std::sync::Arc;

use parking_lot::Mutex;

use super::{Bench, Cell, Setup, Worker, fresh_key};
use crate::common::kv::{self, KvEngine};
use crate::common::lease::{LOCK_KEYS, LeaseEngine, RESIDENT_KEY};
use crate::common::ledger::{self, ACCOUNTS, Job, LedgerEngine, Outcome, Reserver};
use crate::common::{BenchResult, Syncs};

/// A single-writer engine shared by threads behind a mutex, as a service would
/// share it (the naive JSON file).
pub(super) struct Locked<E>(pub(super) Arc<Mutex<E>>);

impl<E: Reserver> Reserver for Locked<E> {
    fn reserve(&mut self, job: &Job) -> BenchResult<Outcome> {
        self.0.lock().reserve(job)
    }
}

impl<E: KvEngine> KvEngine for Locked<E> {
    fn insert(&mut self, key: &str, value: &[u8]) -> BenchResult<u64> {
        self.0.lock().insert(key, value)
    }

    fn update(&mut self, key: &str, value: &[u8], expected: u64) -> BenchResult<u64> {
        self.0.lock().update(key, value, expected)
    }

    fn get(&mut self, key: &str) -> BenchResult<Option<Vec<u8>>> {
        self.0.lock().get(key)
    }

    fn syncs(&self) -> Syncs {
        self.0.lock().syncs()
    }
}

/// Ledger reserves: loads `preload` reservations, then each thread reserves
/// new job ids ([`Bench::ReserveNew`]) or the loaded ones again
/// ([`Bench::ReserveDup`]), each outcome checked.
pub(super) fn reserve<E: LedgerEngine + Send + 'static>(
    mut engine: E,
    setup: Setup,
) -> BenchResult<Cell> {
    let loaded = Arc::new(ledger::jobs(setup.preload.max(1)));
    engine.load(&loaded)?;
    let syncs = engine.syncs();
    let handles = match engine.handles(setup.threads)? {
        Some(handles) => handles,
        None => {
            let shared = Arc::new(Mutex::new(engine));
            (0..setup.threads)
                .map(|_| Box::new(Locked(Arc::clone(&shared))) as Box<dyn Reserver + Send>)
                .collect()
        }
    };
    let dup = setup.bench == Bench::ReserveDup;
    let threads = setup.threads as u64;
    let mut workers = Vec::with_capacity(handles.len());
    for (t, mut handle) in handles.into_iter().enumerate() {
        // Untimed: a handle that reads another's writes lazily catches up now.
        let outcome = handle.reserve(&loaded[0])?;
        ledger::check("warm-up", &loaded[0], outcome, Outcome::Existing)?;
        let loaded = Arc::clone(&loaded);
        workers.push(Box::new(move |i: u64| {
            let (job, expected) = if dup {
                let k = (t as u64 + i * threads) % loaded.len() as u64;
                (loaded[k as usize].clone(), Outcome::Existing)
            } else {
                let job = Job {
                    account: format!("lic:{:04}", (t as u64 + i * threads) % ACCOUNTS as u64),
                    job_id: uuid::Uuid::now_v7().to_string(),
                };
                (job, Outcome::New)
            };
            let outcome = handle.reserve(&job)?;
            Ok(ledger::check("reserve", &job, outcome, expected)?)
        }) as Worker);
    }
    Ok(Cell { workers, syncs })
}

/// Lease cycles: each thread acquires and releases its own [`LOCK_KEYS`] keys
/// round robin (so that no cycle meets another thread's lock), while the first
/// holds one more lock, [`RESIDENT_KEY`], throughout (see `common::lease` for
/// why). Every key is cycled once untimed first.
pub(super) fn lock<E>(engines: Vec<E>, syncs: Syncs) -> BenchResult<Cell>
where
    E: LeaseEngine + Send + 'static,
    E::Key: Send,
    E::Held: Send,
{
    let mut workers = Vec::with_capacity(engines.len());
    for (t, mut engine) in engines.into_iter().enumerate() {
        let keys = (0..LOCK_KEYS)
            .map(|k| engine.key(&format!("t{t:02}-job-{k:02}")))
            .collect::<BenchResult<Vec<_>>>()?;
        for key in &keys {
            cycle(&mut engine, key)?;
        }
        let resident = if t == 0 {
            let key = engine.key(RESIDENT_KEY)?;
            let held = engine
                .acquire(&key)?
                .ok_or("the resident lock was refused")?;
            Some(held)
        } else {
            None
        };
        workers.push(Box::new(move |i: u64| {
            // Held until the worker is dropped, after timing.
            let _resident = &resident;
            cycle(&mut engine, &keys[i as usize % LOCK_KEYS])
        }) as Worker);
    }
    Ok(Cell { workers, syncs })
}

/// Acquires the free lock at `key` and releases it, checking both.
fn cycle<E: LeaseEngine>(engine: &mut E, key: &E::Key) -> BenchResult {
    let held = engine.acquire(key)?.ok_or("a free lock was refused")?;
    if engine.release(key, held)? {
        Ok(())
    } else {
        Err("a held lock was not released".into())
    }
}

/// Puts of new keys, gets of the `preloaded` keys, or job lifecycles written as
/// six compare-and-sets, one engine per thread. The engines hold `preloaded`
/// already; each checks it can read one, untimed.
pub(super) fn kv(
    engines: Vec<Box<dyn KvEngine + Send>>,
    syncs: Syncs,
    setup: Setup,
    preloaded: Vec<String>,
) -> BenchResult<Cell> {
    let preloaded = Arc::new(preloaded);
    let value = Arc::new(kv::value('p'));
    let mut workers = Vec::with_capacity(engines.len());
    for (t, mut engine) in engines.into_iter().enumerate() {
        if let Some(first) = preloaded.first()
            && engine.get(first)?.is_none()
        {
            return Err(format!("preloaded key {first} is missing").into());
        }
        let preloaded = Arc::clone(&preloaded);
        let value = Arc::clone(&value);
        let worker: Worker = match setup.bench {
            Bench::Get => {
                // Uniformly random keys, a stream of its own per thread.
                let mut random = fastrand::Rng::with_seed(t as u64);
                Box::new(move |_: u64| {
                    let key = &preloaded[random.usize(..preloaded.len())];
                    match engine.get(key)? {
                        Some(read) if read == *value => Ok(()),
                        _ => Err(format!("{key} does not read back as written").into()),
                    }
                })
            }
            Bench::Lifecycle => {
                kv::lifecycle(&mut *engine, &format!("job-warm-{t:02}"))?;
                Box::new(move |i: u64| {
                    kv::lifecycle(&mut *engine, &format!("job-{}", fresh_key(t, i)))
                })
            }
            _ => Box::new(move |i: u64| {
                engine.insert(&fresh_key(t, i), &value)?;
                Ok(())
            }),
        };
        workers.push(worker);
    }
    Ok(Cell { workers, syncs })
}
