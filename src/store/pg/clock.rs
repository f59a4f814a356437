//! The database server's clock, read cheaply.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{PgStore, Shared};
use crate::clock::Clock;
use crate::error::{Error, Result};

/// A [`Clock`] that reads the database server's clock, so that every machine
/// sharing a [`PgStore`] decides lease expiry, TTLs and retention by one clock:
/// skew between the machines' own clocks cannot hand a lock to two holders or
/// expire a reservation early.
///
/// Reading the server on every call would cost a round trip per decision, so the
/// clock samples the server's time (at creation, then every
/// [`resync_every`](PgClock::resync_every), 10 s by default, on a background
/// thread) and runs from the sample on this machine's monotonic clock: a reading
/// never waits for the network. A reading is within half a round trip of the
/// server's clock at the last sample, plus what the local monotonic clock
/// drifted since (parts per million). If a resync fails (the server is
/// unreachable) the clock goes on from the last sample and tries again at the
/// next interval. Readings never go backwards, even when a resync finds the
/// estimate was ahead.
///
/// Available with the cargo feature `postgres`.
///
/// ```no_run
/// use std::sync::Arc;
/// use jobsafe::{Clock, JobLedger, PgStore};
/// use jobsafe::store::PgClock;
///
/// let store = PgStore::open("postgres://jobsafe:secret@db.internal/jobsafe")?;
/// let clock = Arc::new(PgClock::new(&store)?);
/// let ledger = JobLedger::new(store.clone(), clock.clone());
/// println!("the server says it is {} ms since 1970", clock.now_ms());
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Debug)]
pub struct PgClock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: PgStore,
    /// Milliseconds between samples.
    resync_ms: AtomicU64,
    sample: Mutex<Sample>,
    /// The latest reading handed out, so that readings never go back.
    last: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    server_ms: u64,
    at: Instant,
}

impl PgClock {
    /// A clock reading `store`'s server, sampled now and then in the background
    /// by a thread that ends when the clock is dropped.
    ///
    /// # Errors
    /// [`Error::Database`] if the server cannot be read.
    pub fn new(store: &PgStore) -> Result<Self> {
        let sample = sample(store)?;
        let inner = Arc::new(Inner {
            store: store.clone(),
            resync_ms: AtomicU64::new(10_000),
            last: AtomicU64::new(sample.server_ms),
            sample: Mutex::new(sample),
        });
        let weak = Arc::downgrade(&inner);
        // Readings never wait for the server: a resync that hangs on an
        // unreachable server holds up only this thread.
        std::thread::Builder::new()
            .name("jobsafe-pg-clock".to_owned())
            .spawn(move || resync_loop(&weak))
            .map_err(|e| Error::Database {
                step: "start the clock's resync thread",
                server: store.server().to_owned(),
                transient: true,
                source: Box::new(e),
            })?;
        Ok(PgClock { inner })
    }

    /// How long a sample of the server's clock is used before the next one is
    /// taken, in the background. Default: 10 s.
    pub fn resync_every(self, every: Duration) -> Self {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.inner.resync_ms.store(ms, Ordering::Relaxed);
        self
    }

    /// Samples the server's clock now.
    ///
    /// # Errors
    /// [`Error::Database`] if the server cannot be read; the clock keeps its last
    /// sample.
    pub fn resync(&self) -> Result<()> {
        let fresh = sample(&self.inner.store)?;
        *self.inner.sample.lock() = fresh;
        Ok(())
    }
}

/// Resamples the server's clock every `resync_ms` until the clock is dropped. A
/// failed sample (the server unreachable) is tried again at the next interval;
/// meanwhile readings go on from the last sample.
fn resync_loop(clock: &Weak<Inner>) {
    // Short naps, so that a dropped clock's thread ends soon.
    const NAP: Duration = Duration::from_millis(50);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(NAP);
        let Some(inner) = clock.upgrade() else {
            return;
        };
        let every = Duration::from_millis(inner.resync_ms.load(Ordering::Relaxed));
        if since.elapsed() >= every {
            if let Ok(fresh) = sample(&inner.store) {
                *inner.sample.lock() = fresh;
            }
            since = Instant::now();
        }
    }
}

/// The server's time, taken as of the middle of the round trip.
fn sample(store: &PgStore) -> Result<Sample> {
    let (server_ms, at) = store.call(Shared::server_time)?;
    Ok(Sample { server_ms, at })
}

impl Clock for PgClock {
    fn now_ms(&self) -> u64 {
        let current = *self.inner.sample.lock();
        let elapsed = u64::try_from(current.at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let estimate = current.server_ms.saturating_add(elapsed);
        self.inner
            .last
            .fetch_max(estimate, Ordering::SeqCst)
            .max(estimate)
    }

    fn sleep_until(&self, deadline_ms: u64) {
        loop {
            let now = self.now_ms();
            if now >= deadline_ms {
                return;
            }
            std::thread::sleep(Duration::from_millis(deadline_ms - now));
        }
    }
}
