//! [`FileClock`]: a manual clock shared by the processes of one test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Clock, ClockSleep, timer};
use crate::atomic::AtomicWriter;
use crate::durability::Durability;
use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::vfs::{StdVfs, Vfs};

/// A manual clock kept in a file, so that the processes of one multi-process test
/// share a single time. Available with the feature `testing`.
///
/// Each reading reads the file; [`advance`](FileClock::advance) rewrites it
/// atomically. Sleepers poll the file every millisecond of real time: this clock is
/// for tests, where the time is moved by the test and never waited out.
///
/// ```
/// use std::time::Duration;
/// use jobsafe::Clock;
/// use jobsafe::testing::FileClock;
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
        let bytes = StdVfs
            .read(&self.path)
            .at(steps::READ_CLOCK_FILE, &self.path)?;
        let text = String::from_utf8_lossy(&bytes);
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
            .with_durability(Durability::AtomicOnly)
            .write(&self.path, now_ms.to_string().as_bytes())
    }
}

impl Clock for FileClock {
    fn now_ms(&self) -> u64 {
        self.try_now_ms().unwrap_or(0)
    }

    fn sleep_until(&self, deadline_ms: u64) {
        while self.now_ms() < deadline_ms {
            std::thread::sleep(POLL);
        }
    }

    fn sleep_until_async(&self, deadline_ms: u64) -> ClockSleep<'_> {
        // Another process moves this clock: poll the file, as the blocking sleep does.
        ClockSleep::new(async move {
            while self.now_ms() < deadline_ms {
                timer::sleep(POLL).await;
            }
        })
    }
}

/// How often a sleeper reads the file again.
const POLL: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;

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
