//! Security properties of the stores, the atomic writer and the job records: the
//! modes of everything they create, keys that cannot name a path outside the
//! store, symlinks planted inside a store that writes do not follow, and internal
//! error messages that never reach a client.
//!
//! The symlink tests matter most when run as root, where permission checks do not
//! stop a write through a planted link: they check where bytes landed, not whether
//! a write was refused by the operating system.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use jobsafe::vfs::DIR_MODE;
use jobsafe::{
    AtomicWriter, Batch, DEFAULT_MODE, DirStore, Expect, Key, LogStore, Store, write_atomic,
};
use tempfile::tempdir;

use common::{TestResult, mode_of};

// ---------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------

/// Set in the child process of
/// [`everything_the_stores_create_is_owner_only_under_a_permissive_umask`]: where to
/// create the stores.
const UMASK_CHILD_DIR: &str = "JOBSAFE_TEST_SECURITY_UMASK_DIR";

/// Every file and directory under `root` (not `root` itself), symlinks not followed.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}

/// What the child does under the permissive umask: everything that creates files
/// or directories in each store and the writer.
fn create_everything(dir: &Path) -> TestResult {
    let long = "L".repeat(400); // encodes to a hashed directory with a `.segment` file
    let keys = [
        Key::new(["jobs", "lic:abc123", "1"])?,
        Key::new(["jobs", long.as_str(), "2"])?,
        Key::new(["deep", "a", "b", "c", "d"])?,
    ];

    let dir_store = DirStore::open(dir.join("dirstore"))?;
    let log_store = LogStore::open(dir.join("logstore"))?;
    let stores: [&dyn Store; 2] = [&dir_store, &log_store];
    for store in stores {
        for key in &keys {
            store.put(key, b"{}", Expect::Absent)?;
        }
        let batch = Batch::new()
            .put(&Key::new(["batch", "x"])?, b"1", Expect::Absent)
            .delete(&keys[2], Expect::Any);
        store.apply(&batch)?;
        store.quarantine(&keys[0])?;
    }
    log_store.compact()?;

    fs::create_dir(dir.join("writer"))?;
    write_atomic(dir.join("writer").join("file"), b"w")?;
    AtomicWriter::new()
        .no_clobber(true)
        .write(dir.join("writer").join("new"), b"n")?;
    // A plain create under the same umask, to prove the umask was in force.
    fs::write(dir.join("control"), b"c")?;
    Ok(())
}

#[test]
fn everything_the_stores_create_is_owner_only_under_a_permissive_umask() -> TestResult {
    if let Some(dir) = env::var_os(UMASK_CHILD_DIR) {
        return create_everything(Path::new(&dir));
    }
    // The umask belongs to the whole process: change it only in a child that runs
    // this one test.
    let dir = tempdir()?;
    let child = Command::new("sh")
        .args(["-c", r#"umask 000 && exec "$@""#, "sh"])
        .arg(env::current_exe()?)
        .args([
            "--exact",
            "everything_the_stores_create_is_owner_only_under_a_permissive_umask",
        ])
        .env(UMASK_CHILD_DIR, dir.path())
        .output()?;
    assert!(
        child.status.success(),
        "child failed:\n{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(
        mode_of(&dir.path().join("control"))? & 0o077,
        0o066,
        "the child did not run under umask 000"
    );

    let mut checked = 0;
    for root in ["dirstore", "logstore", "writer"] {
        let root = dir.path().join(root);
        let mut paths = walk(&root);
        if root.ends_with("writer") {
            // Created by the test, not by jobsafe: only its files count.
            paths.retain(|p| p.is_file());
        } else {
            paths.push(root.clone());
        }
        for path in paths {
            let meta = fs::symlink_metadata(&path)?;
            let (kind, want) = if meta.is_dir() {
                ("directory", DIR_MODE)
            } else {
                ("file", DEFAULT_MODE)
            };
            assert!(!meta.file_type().is_symlink(), "{}", path.display());
            assert_eq!(
                mode_of(&path)?,
                want,
                "{kind} {} has mode {:o}",
                path.display(),
                mode_of(&path)?
            );
            checked += 1;
        }
    }
    // Stripes alone are 64 locks; the point is that the walk saw the store.
    assert!(checked > 64, "only {checked} paths checked");
    Ok(())
}
