//! [`AsyncAtomicWriter`]: the async face of [`AtomicWriter`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::AtomicWriter;
use crate::clock::SharedClock;
use crate::error::Result;
use crate::pool;
use crate::vfs::{StdVfs, Vfs};

/// The async face of [`AtomicWriter`]: the same atomic, durable writes, as
/// `async fn`s that never block the caller's thread. The temp file, the
/// fsyncs and the rename run on the crate's [pool](crate::pool).
///
/// Dropping a write's future before the write began withdraws it; once begun,
/// it runs to its end, and the target holds the old content or the new,
/// never a mix, whenever it is read.
///
/// ```
/// use jobsafe::atomic::AsyncAtomicWriter;
/// use jobsafe::AtomicWriter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let writer = AsyncAtomicWriter::new(AtomicWriter::new());
/// writer.write(dir.path().join("state.json"), b"{\"v\":1}".to_vec()).await?;
/// assert_eq!(std::fs::read(dir.path().join("state.json"))?, b"{\"v\":1}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AsyncAtomicWriter<V: Vfs + Clone = StdVfs> {
    writer: AtomicWriter<V>,
}

impl<V: Vfs + Clone> AsyncAtomicWriter<V> {
    /// The async face of `writer`.
    pub fn new(writer: AtomicWriter<V>) -> Self {
        AsyncAtomicWriter { writer }
    }

    /// The blocking face.
    pub fn blocking(&self) -> &AtomicWriter<V> {
        &self.writer
    }

    /// [`AtomicWriter::write`].
    ///
    /// # Errors
    /// As [`AtomicWriter::write`].
    pub async fn write(&self, target: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<()> {
        let (writer, target) = (self.writer.clone(), target.into());
        pool::run(move || writer.write(&target, &bytes)).await
    }

    /// [`AtomicWriter::sweep`], with the clock shared.
    ///
    /// # Errors
    /// As [`AtomicWriter::sweep`].
    pub async fn sweep(
        &self,
        dir: &Path,
        min_age: Duration,
        clock: &SharedClock,
    ) -> Result<Vec<PathBuf>> {
        let (writer, dir, clock) = (self.writer.clone(), dir.to_owned(), clock.clone());
        pool::run(move || writer.sweep(&dir, min_age, clock.as_ref())).await
    }
}

impl<V: Vfs + Clone> From<AtomicWriter<V>> for AsyncAtomicWriter<V> {
    fn from(writer: AtomicWriter<V>) -> Self {
        AsyncAtomicWriter::new(writer)
    }
}
