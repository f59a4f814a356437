//! [`AtomicWriter`] replacing a file, the jobsafe side of
//! [`RawReplace`](super::raw::RawReplace).

use std::path::Path;

use jobsafe::testing::Counting;
use jobsafe::vfs::StdVfs;
use jobsafe::{AtomicWriter, Durability};

use super::{BenchResult, Sample, Syncs, Workload, time_ops};

/// Replaces one file of `size` bytes again and again with
/// [`AtomicWriter::write`] at [`Durability::Full`].
///
/// The writer's I/O goes through [`Counting`] to report its flushes; counting costs
/// a relaxed atomic add per call, nanoseconds next to a flush.
#[derive(Debug)]
pub(crate) struct AtomicReplace {
    size: usize,
}

impl AtomicReplace {
    pub(crate) fn new(size: usize) -> Self {
        AtomicReplace { size }
    }
}

impl Workload for AtomicReplace {
    fn name(&self) -> &str {
        "atomic_writer"
    }

    fn round(&mut self, dir: &Path, ops: usize) -> BenchResult<Vec<Sample>> {
        let vfs = Counting::new(StdVfs);
        let writer = AtomicWriter::builder()
            .vfs(vfs.clone())
            .durability(Durability::Full)
            .build()?;
        let target = dir.join("state.bin");
        let bytes = vec![b'w'; self.size];
        // Every timed write replaces an existing file, as in steady state.
        writer.write(&target, &bytes)?;
        let bench = format!("atomic_writer/replace_{}k", self.size / 1024);
        let sample = time_ops(bench, ops, &Syncs::Vfs(vfs), |_| {
            Ok(writer.write(&target, &bytes)?)
        })?;
        Ok(vec![sample])
    }
}
