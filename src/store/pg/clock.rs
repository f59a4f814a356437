//! The database server's clock, read cheaply.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::PgStore;
use super::conn::db_error;
use crate::clock::Clock;
use crate::error::{Error, Result};

/// A [`Clock`] that reads the database server's clock, so that every machine
/// sharing a [`PgStore`] decides lease expiry, TTLs and retention by one clock:
/// skew between the machines' own clocks cannot hand a lock to two holders or
/// expire a reservation early.
///
/// Reading the server on every call would cost a round trip per decision, so the
/// clock samples the server's time (at creation and then every
/// [`resync_every`](PgClock::resync_every), 10 s by default) and runs from the
/// sample on this machine's monotonic clock. A reading is within half a round
/// trip of the server's clock at the last sample, plus what the local monotonic
/// clock drifted since (parts per million). If a resync fails (the server is
/// unreachable) the clock goes on from the last sample and tries again on a
/// later reading. Readings never go backwards, even when a resync finds the
/// estimate was ahead.
///
/// Available with the cargo feature `postgres`.
///
/// ```no_run
/// use std::sync::Arc;
/// use jobsafe::{Clock, JobLedger, PgClock, PgStore};
///
/// let store = PgStore::open("postgres://jobsafe:secret@db.internal/jobsafe")?;
/// let clock = Arc::new(PgClock::new(&store)?);
/// let ledger = JobLedger::new(store.clone(), clock.clone());
/// println!("the server says it is {} ms since 1970", clock.now_ms());
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Debug)]
pub struct PgClock {
    store: PgStore,
    resync: Duration,
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
    /// A clock reading `store`'s server, sampled now.
    ///
    /// # Errors
    /// [`Error::Database`] if the server cannot be read.
    pub fn new(store: &PgStore) -> Result<Self> {
        let sample = sample(store)?;
        Ok(PgClock {
            store: store.clone(),
            resync: Duration::from_secs(10),
            last: AtomicU64::new(sample.server_ms),
            sample: Mutex::new(sample),
        })
    }

    /// How long a sample of the server's clock is used before the next reading
    /// takes a new one. Default: 10 s.
    pub fn resync_every(mut self, every: Duration) -> Self {
        self.resync = every;
        self
    }

    /// Samples the server's clock now.
    ///
    /// # Errors
    /// [`Error::Database`] if the server cannot be read; the clock keeps its last
    /// sample.
    pub fn resync(&self) -> Result<()> {
        let fresh = sample(&self.store)?;
        *self.sample.lock() = fresh;
        Ok(())
    }

    fn estimate(&self) -> u64 {
        let current = *self.sample.lock();
        let age = current.at.elapsed();
        if age >= self.resync {
            // One reader resyncs; the others go on with the sample they have. A
            // failed resync is retried on a later reading.
            if let Some(mut sample) = self.sample.try_lock()
                && sample.at == current.at
                && let Ok(fresh) = self::sample(&self.store)
            {
                *sample = fresh;
                return fresh.server_ms;
            }
        }
        let elapsed = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        current.server_ms.saturating_add(elapsed)
    }
}

/// The server's time, taken as of the middle of the round trip.
fn sample(store: &PgStore) -> Result<Sample> {
    store.with_conn(|conn, ctx| {
        let before = Instant::now();
        let row = conn
            .client
            .query_one(&conn.statements.now_ms, &[])
            .map_err(|e| db_error("read the server clock", ctx.server, e))?;
        let after = Instant::now();
        let server_ms: i64 = row
            .try_get(0)
            .map_err(|e| db_error("read the server clock", ctx.server, e))?;
        let server_ms = u64::try_from(server_ms).map_err(|_| Error::Database {
            step: "read the server clock",
            server: ctx.server.to_owned(),
            transient: false,
            source: format!("the server's clock reads {server_ms} ms, before 1970").into(),
        })?;
        Ok(Sample {
            server_ms,
            at: before + (after - before) / 2,
        })
    })
}

impl Clock for PgClock {
    fn now_ms(&self) -> u64 {
        let estimate = self.estimate();
        self.last
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
