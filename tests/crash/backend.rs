//! The embedded stores every part runs on: `DirStore`, and `LogStore` shared
//! and in exclusive mode (each child the store's only handle; the parent
//! opens it only once the child is dead, its flocks gone with it).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use jobsafe::{DirStore, Durability, LogStore, Store};

/// Set to `1` in a child's environment, makes its stores skip every fsync
/// ([`Durability::AtomicOnly`]): the control that shows the power-loss test
/// catches a store that acknowledges writes before they are on disk.
pub const UNSYNCED_VAR: &str = "JOBSAFE_CRASH_UNSYNCED";

/// A durable embedded store, by the name the summary lines print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Dir,
    Log,
    LogExclusive,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Dir, Backend::Log, Backend::LogExclusive];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Dir => "dir",
            Backend::Log => "log",
            Backend::LogExclusive => "log_exclusive",
        }
    }

    pub fn parse(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Opens (creating if needed) the store at `root`. A `LogStore` compacts in
    /// the background after a few dozen KiB, so that kills also land in
    /// compactions.
    pub fn open(self, root: &Path) -> jobsafe::Result<Arc<dyn Store>> {
        Ok(match self {
            Backend::Dir => Arc::new(DirStore::builder(root).durability(durability()).open()?),
            Backend::Log => Arc::new(open_log(root, false)?),
            Backend::LogExclusive => Arc::new(open_log(root, true)?),
        })
    }

    /// Whether it is a `LogStore` (shared or exclusive), and which.
    pub fn log_mode(self) -> Option<bool> {
        match self {
            Backend::Dir => None,
            Backend::Log => Some(false),
            Backend::LogExclusive => Some(true),
        }
    }
}

/// Opens the `LogStore` at `root` as [`Backend::open`] does, for a caller that
/// compacts it.
pub fn open_log(root: &Path, exclusive: bool) -> jobsafe::Result<LogStore> {
    LogStore::builder(root)
        .durability(durability())
        .compact_when(32 << 10, 0.05)
        .exclusive(exclusive)
        .open()
}

fn durability() -> Durability {
    match std::env::var(UNSYNCED_VAR).as_deref() {
        Ok("1") => Durability::AtomicOnly,
        _ => Durability::Full,
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
