//! Removal of temp files left behind by crashed writers.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::{AtomicWriter, is_temp_name};
use crate::clock::Clock;
use crate::error::steps;
use crate::error::{IoContext, Result};
use crate::vfs::{FileKind, Vfs};

impl<V: Vfs> AtomicWriter<V> {
    /// Removes the temp files in `dir` (not recursively) whose modification time is
    /// at least `min_age` before `clock`'s now, and returns their paths.
    ///
    /// Only names this writer creates (`.*.jobsafe-tmp`) are touched. A write in
    /// progress keeps its temp file younger than any sensible `min_age` (minutes),
    /// so sweeping while other processes write is safe; a temp file that vanishes
    /// during the sweep is skipped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobsafe::{AtomicWriter, SystemClock};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let writer = AtomicWriter::new();
    /// std::mem::forget(writer.begin(dir.path().join("a"))?); // a "crashed" writer
    /// let removed = writer.sweep(dir.path(), Duration::ZERO, &SystemClock)?;
    /// assert_eq!(removed.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) naming the directory or file that could not be
    /// read or removed.
    pub fn sweep(&self, dir: &Path, min_age: Duration, clock: &dyn Clock) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for path in self.stale_temp_files(dir, min_age, clock)? {
            match self.vfs().remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(crate::Error::io(steps::REMOVE_TEMP_FILE, path, e)),
            }
        }
        Ok(removed)
    }

    /// The temp files that [`sweep`](AtomicWriter::sweep) would remove from `dir`
    /// now, in name order, without removing anything: for a dry run, or to ask
    /// an operator first.
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobsafe::{AtomicWriter, SystemClock};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let writer = AtomicWriter::new();
    /// std::mem::forget(writer.begin(dir.path().join("a"))?); // a "crashed" writer
    /// let stale = writer.stale_temp_files(dir.path(), Duration::ZERO, &SystemClock)?;
    /// assert_eq!(stale.len(), 1);
    /// assert!(stale[0].exists(), "listing removes nothing");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) naming the directory or file that could not be
    /// read.
    pub fn stale_temp_files(
        &self,
        dir: &Path,
        min_age: Duration,
        clock: &dyn Clock,
    ) -> Result<Vec<PathBuf>> {
        let vfs = self.vfs();
        let now = UNIX_EPOCH + Duration::from_millis(clock.now_ms());
        let mut stale = Vec::new();
        for name in vfs.read_dir(dir).at(steps::READ_DIRECTORY, dir)? {
            let Some(name) = name.to_str().filter(|n| is_temp_name(n)) else {
                continue;
            };
            let path = dir.join(name);
            let info = match vfs.metadata(&path) {
                Ok(info) => info,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(crate::Error::io(steps::STAT_TEMP_FILE, path, e)),
            };
            let age = now.duration_since(info.modified).unwrap_or(Duration::ZERO);
            if info.kind != FileKind::File || age < min_age {
                continue;
            }
            stale.push(path);
        }
        stale.sort();
        Ok(stale)
    }
}
