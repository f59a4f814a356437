//! Injected time: every TTL, lease, backoff and retention decision reads a [`Clock`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use crate::atomic::{AtomicWriter, Durability};
use crate::error::{Error, IoContext, Result};

/// A source of wall-clock time in milliseconds since the Unix epoch, and a way to
/// wait on it.
///
/// Components never call `SystemTime::now()` or `thread::sleep` themselves; they ask
/// their clock, so tests drive time with [`ManualClock`] instead of sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Blocks the calling thread until [`now_ms`](Clock::now_ms) reaches `deadline_ms`.
    /// Returns at once if it already has.
    fn sleep_until(&self, deadline_ms: u64);

    /// Blocks for `duration` of this clock's time.
    fn sleep(&self, duration: Duration) {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.sleep_until(self.now_ms().saturating_add(ms));
    }
}

/// A clock shared by the components of one service.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
///
/// A clock set before 1970 reads as 0. The wall clock may jump; components that
/// compare its readings say in their docs what a jump does to them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn sleep_until(&self, deadline_ms: u64) {
        // Re-read after each sleep: the wall clock may have been stepped.
        loop {
            let now = self.now_ms();
            if now >= deadline_ms {
                return;
            }
            std::thread::sleep(Duration::from_millis(deadline_ms - now));
        }
    }
}

/// A clock that moves only when told to, for tests.
///
/// [`advance`](ManualClock::advance) and [`set`](ManualClock::set) wake every thread
/// sleeping on the clock whose deadline has come, so a test that advances time never
/// has to sleep itself. Clones share one time.
///
/// ```
/// use std::time::Duration;
/// use jobsafe::{Clock, ManualClock};
///
/// let clock = ManualClock::new(1_000);
/// let sleeper = {
///     let clock = clock.clone();
///     // An absolute deadline: the sleep ends at 61 s whenever the thread starts.
///     std::thread::spawn(move || clock.sleep_until(61_000))
/// };
/// clock.advance(Duration::from_secs(60)); // wakes the sleeper
/// sleeper.join().unwrap();
/// assert_eq!(clock.now_ms(), 61_000);
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now: Mutex<u64>,
    moved: Condvar,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            inner: Arc::new(ManualInner {
                now: Mutex::new(start_ms),
                moved: Condvar::new(),
            }),
        }
    }

    /// Moves time forward and wakes the sleepers whose deadline has come.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let mut now = self.inner.now.lock();
        *now = now.saturating_add(ms);
        self.inner.moved.notify_all();
    }

    /// Sets the time, backwards too (to test a clock that jumps), and wakes sleepers.
    pub fn set(&self, now_ms: u64) {
        *self.inner.now.lock() = now_ms;
        self.inner.moved.notify_all();
    }
}

impl Default for ManualClock {
    /// A clock reading 2026-01-01T00:00:00Z, so that records show plausible dates.
    fn default() -> Self {
        ManualClock::new(1_767_225_600_000)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        *self.inner.now.lock()
    }

    fn sleep_until(&self, deadline_ms: u64) {
        let mut now = self.inner.now.lock();
        while *now < deadline_ms {
            self.inner.moved.wait(&mut now);
        }
    }
}

/// A manual clock kept in a file, so that the processes of one multi-process test
/// share a single time.
///
/// Each reading reads the file; [`advance`](FileClock::advance) rewrites it
/// atomically. Sleepers poll the file every millisecond of real time: this clock is
/// for tests, where the time is moved by the test and never waited out.
///
/// ```
/// use std::time::Duration;
/// use jobsafe::{Clock, FileClock};
///
/// let dir = tempfile::tempdir()?;
/// let a = FileClock::create(dir.path().join("clock"), 5_000)?;
/// let b = FileClock::open(dir.path().join("clock"));   // e.g. in a child process
/// a.advance(Duration::from_millis(250))?;
/// assert_eq!(b.now_ms(), 5_250);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct FileClock {
    path: PathBuf,
}

impl FileClock {
    /// Creates (or resets) the clock file at `path`, reading `start_ms`.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be written.
    pub fn create(path: impl Into<PathBuf>, start_ms: u64) -> Result<Self> {
        let clock = FileClock { path: path.into() };
        clock.write(start_ms)?;
        Ok(clock)
    }

    /// Uses an existing clock file. A file that cannot be read reads as time 0 in
    /// [`Clock::now_ms`]; use [`FileClock::try_now_ms`] to see the error.
    pub fn open(path: impl Into<PathBuf>) -> Self {
        FileClock { path: path.into() }
    }

    /// The file behind this clock.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the time, reporting a missing or malformed file.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::CorruptFile`] if it does
    /// not hold a number.
    pub fn try_now_ms(&self) -> Result<u64> {
        let text = std::fs::read_to_string(&self.path).at("read clock file", &self.path)?;
        text.trim().parse().map_err(|_| Error::CorruptFile {
            path: self.path.clone(),
            reason: format!("expected milliseconds, found {:?}", text.trim()),
        })
    }

    /// Moves the shared time forward.
    ///
    /// # Errors
    /// As [`FileClock::try_now_ms`], or [`Error::Io`] if the file cannot be written.
    pub fn advance(&self, by: Duration) -> Result<()> {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.write(self.try_now_ms()?.saturating_add(ms))
    }

    /// Sets the shared time.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be written.
    pub fn set(&self, now_ms: u64) -> Result<()> {
        self.write(now_ms)
    }

    fn write(&self, now_ms: u64) -> Result<()> {
        // Atomic replacement so a reader in another process never sees a partial
        // number; no fsync needed for a test clock.
        AtomicWriter::new()
            .durability(Durability::AtomicOnly)
            .write(&self.path, now_ms.to_string().as_bytes())
    }
}

impl Clock for FileClock {
    fn now_ms(&self) -> u64 {
        self.try_now_ms().unwrap_or(0)
    }

    fn sleep_until(&self, deadline_ms: u64) {
        while self.now_ms() < deadline_ms {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_wakes_only_due_sleepers() {
        let clock = ManualClock::new(0);
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = {
            let clock = clock.clone();
            std::thread::spawn(move || {
                clock.sleep_until(100);
                tx.send(clock.now_ms()).unwrap();
            })
        };
        clock.advance(Duration::from_millis(99));
        // Not due yet: the sleeper must still be waiting.
        assert!(rx.try_recv().is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(rx.recv().unwrap(), 100);
        sleeper.join().unwrap();
    }

    #[test]
    fn manual_clock_can_jump_back() {
        let clock = ManualClock::new(500);
        clock.set(100);
        assert_eq!(clock.now_ms(), 100);
    }

    #[test]
    fn file_clock_reports_malformed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock");
        std::fs::write(&path, "soon").unwrap();
        let err = FileClock::open(&path).try_now_ms().unwrap_err();
        assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
        assert!(err.to_string().contains("clock"));
    }
}
