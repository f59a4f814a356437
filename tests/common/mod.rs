//! Helpers shared by the integration tests. Each test binary compiles this module
//! and uses a part of it, hence the `dead_code` allowance; `pub` marks what the
//! tests use, which the crate-level `unreachable_pub` lint cannot see. A helper
//! that cannot do its job fails the test that called it, by panicking.
#![allow(dead_code, unreachable_pub, clippy::panic)]

pub mod backends;
pub mod child;
pub mod hooked_store;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod power_loss;
pub mod relay;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use jobsafe::AtomicWriter;

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
/// under `dir`.
pub(crate) fn temp_files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
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
