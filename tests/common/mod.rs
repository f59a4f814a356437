//! Helpers shared by the integration tests. Each test binary compiles this module
//! and uses a part of it, hence the `dead_code` allowance; `pub` marks what the
//! tests use, which the crate-level `unreachable_pub` lint cannot see. A helper
//! that cannot do its job fails the test that called it, by panicking.
#![allow(dead_code, unreachable_pub, clippy::panic)]

pub mod ambiguous_store;
pub mod backends;
pub mod child;
pub mod credits;
pub mod hooked_store;
pub mod hostile;
pub mod limits;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod power_loss;
#[cfg(feature = "postgres")]
pub mod proxy;
pub mod relay;
pub mod scripted_store;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::process::Command;

use jobsafe::{AtomicWriter, Key, Prefix, Store};

/// What a test returns: `?` works on any error, and a failure prints it.
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The temp files (names ending in [`AtomicWriter::TEMP_SUFFIX`]) in `dir`.
pub(crate) fn temp_files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut temps = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(AtomicWriter::TEMP_SUFFIX)
        {
            temps.push(entry.path());
        }
    }
    Ok(temps)
}

/// The temp files and directories (names ending in [`AtomicWriter::TEMP_SUFFIX`]) anywhere
/// under `dir`; none if `dir` does not exist.
pub(crate) fn temp_files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut temps = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(temps),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(AtomicWriter::TEMP_SUFFIX)
        {
            temps.push(entry.path());
        }
        if entry.file_type()?.is_dir() {
            temps.extend(temp_files_under(&entry.path())?);
        }
    }
    Ok(temps)
}

/// An error and its causes, each once, as a reporter that walks the chain
/// prints them.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The permission bits of `path` itself (a symlink is not followed).
pub(crate) fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

/// Sets the permission bits of `path`.
pub(crate) fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// The key a string names, segments joined by `/` as [`Key`] displays them
/// (`"jobs/lic:abc/1"`).
pub(crate) fn key(text: &str) -> Key {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a key: {e}"))
}

/// Every record under `prefix`, by key.
pub(crate) fn contents(store: &impl Store, prefix: &Prefix) -> BTreeMap<Key, Vec<u8>> {
    let keys = store
        .list_all(prefix)
        .unwrap_or_else(|e| panic!("list {prefix}: {e}"));
    keys.into_iter()
        .map(|key| {
            let entry = store.get(&key).unwrap_or_else(|e| panic!("get {key}: {e}"));
            let entry = entry.unwrap_or_else(|| panic!("{key} was listed but is gone"));
            (key, entry.value)
        })
        .collect()
}

/// Copies a directory tree (files and directories; nothing else is in a store).
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries = fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        let target = to.join(entry.file_name());
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// Whether this process runs as root, for whom permission checks pass.
pub(crate) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // A file this process creates is owned by its effective user id.
    let probe = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("temp file: {e}"));
    let meta = probe
        .as_file()
        .metadata()
        .unwrap_or_else(|e| panic!("stat a temp file: {e}"));
    meta.uid() == 0
}

/// Makes a FIFO at `path` (`mkfifo`). Opening it to read blocks until a writer
/// opens it, and no test opens one: a read that does not refuse it never returns.
pub(crate) fn make_fifo(path: &Path) -> io::Result<()> {
    let status = Command::new("mkfifo").arg(path).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "mkfifo {}: {status}",
            path.display()
        )))
    }
}

/// Runs `f` on a thread of its own and returns what it returns, failing the
/// test if it has not finished within [`child::WAIT_BOUND`]: for code that
/// blocks forever when what it tests is broken (a read that waits on a FIFO,
/// say). A guard, not a measurement: the bound is far beyond what the call
/// takes, and a panic in `f` is the test's panic.
pub(crate) fn unblocked<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        // The test may have stopped waiting: nobody to tell then.
        let _ = done.send(f());
    });
    match result.recv_timeout(child::WAIT_BOUND) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: ended without a result"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still blocked after {:?}", child::WAIT_BOUND)
        }
    }
}

/// Set in a child started by [`run_under_umask`]: the directory it works in.
const UMASK_CHILD_DIR: &str = "JOBSAFE_TEST_UMASK_CHILD_DIR";

/// In a child started by [`run_under_umask`], the directory it was given;
/// `None` in the parent.
pub(crate) fn umask_child_dir() -> Option<PathBuf> {
    std::env::var_os(UMASK_CHILD_DIR).map(PathBuf::from)
}

/// Runs the test `test` of this binary again, alone, in a child process under
/// `umask` (octal digits), with [`umask_child_dir`] returning `dir` there; fails
/// unless the child passes. The umask belongs to the whole process: change it
/// only in a child that runs one test, never here, where other tests create
/// files in parallel.
pub(crate) fn run_under_umask(umask: &str, test: &str, dir: &Path) -> io::Result<()> {
    let child = Command::new("sh")
        .args(["-c", &format!(r#"umask {umask} && exec "$@""#), "sh"])
        .arg(std::env::current_exe()?)
        .args(["--exact", test])
        .env(UMASK_CHILD_DIR, dir)
        .output()?;
    assert!(
        child.status.success(),
        "child failed:\n{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    Ok(())
}

/// Waits, with a bound only a broken store misses, for `changes` to count
/// past `seen` (a notification of another writer's change); the new count.
pub fn told_after(changes: &jobsafe::store::Changes, seen: u64) -> u64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let changes = changes.clone();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
            return;
        };
        let _ = tx.send(runtime.block_on(changes.changed(seen)));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(count) => count,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("another writer's change was never told")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("no runtime could be made to wait for the notification")
        }
    }
}
