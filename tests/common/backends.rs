//! One store of each backend, for tests that run the same checks on both.

use std::sync::Arc;

use jobsafe::{DirStore, LogStore, ManualClock, MemStore, SharedClock, Store};
use tempfile::TempDir;

/// A `MemStore` and a fresh `DirStore`, each with its name; the temp dir keeps the
/// `DirStore`'s directory alive.
pub fn both() -> Vec<(&'static str, Arc<dyn Store>, Option<TempDir>)> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let dir_store =
        DirStore::open(dir.path().join("store")).unwrap_or_else(|e| panic!("open a DirStore: {e}"));
    vec![
        ("mem", Arc::new(MemStore::new()), None),
        ("dir", Arc::new(dir_store), Some(dir)),
    ]
}

/// What `make` builds over each store of [`both`] with a `ManualClock` of its
/// own starting at `start_ms` (a lock, a ledger, job records), with the store's
/// name, the clock, and the temp dir that keeps a `DirStore` alive.
pub fn each_with_clock<T>(
    start_ms: u64,
    make: impl Fn(Arc<dyn Store>, SharedClock) -> T,
) -> Vec<(&'static str, T, ManualClock, Option<TempDir>)> {
    both()
        .into_iter()
        .map(|(name, store, dir)| {
            let clock = ManualClock::new(start_ms);
            (name, make(store, Arc::new(clock.clone())), clock, dir)
        })
        .collect()
}

/// Where the processes of a multi-process test find the store they share: a
/// `DirStore`'s or a `LogStore`'s directory, or a schema on the Postgres server
/// of `JOBSAFE_PG_URL` (which children inherit).
#[derive(Clone, Debug)]
pub enum SharedStore {
    Dir(std::path::PathBuf),
    Log(std::path::PathBuf),
    #[cfg(feature = "postgres")]
    Pg(String),
}

impl SharedStore {
    /// Opens the store, in this process.
    pub fn open(&self) -> Arc<dyn Store> {
        match self {
            SharedStore::Dir(root) => {
                Arc::new(DirStore::open(root).unwrap_or_else(|e| panic!("open a DirStore: {e}")))
            }
            SharedStore::Log(root) => {
                Arc::new(LogStore::open(root).unwrap_or_else(|e| panic!("open a LogStore: {e}")))
            }
            #[cfg(feature = "postgres")]
            SharedStore::Pg(schema) => Arc::new(super::pg::open(schema)),
        }
    }

    /// The backend's name, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            SharedStore::Dir(_) => "dir",
            SharedStore::Log(_) => "log",
            #[cfg(feature = "postgres")]
            SharedStore::Pg(_) => "pg",
        }
    }

    /// The variables that tell a child where the store is.
    pub fn vars(&self) -> std::collections::HashMap<&'static str, String> {
        let place = match self {
            SharedStore::Dir(root) | SharedStore::Log(root) => root.display().to_string(),
            #[cfg(feature = "postgres")]
            SharedStore::Pg(schema) => schema.clone(),
        };
        std::collections::HashMap::from([
            ("JOBSAFE_TEST_BACKEND", self.kind().to_owned()),
            ("JOBSAFE_TEST_STORE", place),
        ])
    }

    /// In a child: the store the parent passed with [`SharedStore::vars`].
    pub fn from_env() -> Self {
        let place = super::child::var("JOBSAFE_TEST_STORE");
        match super::child::var("JOBSAFE_TEST_BACKEND").as_str() {
            "dir" => SharedStore::Dir(place.into()),
            "log" => SharedStore::Log(place.into()),
            #[cfg(feature = "postgres")]
            "pg" => SharedStore::Pg(place),
            other => panic!("unknown backend {other:?}"),
        }
    }
}
