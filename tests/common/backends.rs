//! One store of each backend, for tests that run the same checks on both.

use std::sync::Arc;

use jobsafe::{DirStore, MemStore, Store};
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
