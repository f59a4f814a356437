//! The relay's state directory: where it is by default, the checks that keep
//! other users out of it, and the lock that keeps a second relay out.
//!
//! Everything the relay keeps (store, artifacts) is under this directory, so
//! whoever can write to it can rewrite jobs and balances, or plant a symbolic
//! link for the relay to write through. It must be a real directory, owned by
//! the user the relay runs as, and writable by nobody else.

use std::fs::{DirBuilder, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The name of the state directory under the user's state home.
const DEFAULT_NAME: &str = "jobsafe-relay";

/// The lock file's name in the state directory.
const LOCK_FILE: &str = "relay.lock";

/// The default state directory: `$XDG_STATE_HOME/jobsafe-relay`, else
/// `$HOME/.local/state/jobsafe-relay`; `None` if neither variable is set
/// (then `--store` is required). Never a shared directory such as `/tmp`,
/// where another user could create it first.
pub(crate) fn default_dir() -> Option<PathBuf> {
    // The XDG specification says to ignore a relative path.
    let absolute = |name| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    if let Some(state_home) = absolute("XDG_STATE_HOME") {
        return Some(state_home.join(DEFAULT_NAME));
    }
    absolute("HOME").map(|home| home.join(".local/state").join(DEFAULT_NAME))
}

/// Creates `dir` if needed (mode 0o700), and checks that it is safe to keep
/// the relay's state in.
pub(crate) fn prepare(dir: &Path) -> Result<(), String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating the state directory {}: {e}", dir.display()))?;
    check_private(dir)
}

/// Refuses a state directory that is a symbolic link, not a directory, owned
/// by another user, or writable by group or others.
fn check_private(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    let metadata = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("reading the state directory {shown}: {e}"))?;
    if metadata.file_type().is_symlink() {
        return Err(format!(
            "the state directory {shown} is a symbolic link: give the directory itself"
        ));
    }
    if !metadata.is_dir() {
        return Err(format!("the state directory {shown} is not a directory"));
    }
    let user = rustix::process::getuid().as_raw();
    if metadata.uid() != user {
        return Err(format!(
            "the state directory {shown} belongs to user {}, not to this user ({user})",
            metadata.uid()
        ));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "the state directory {shown} is writable by other users (mode {mode:o}): \
             `chmod go-w` it, or give another one"
        ));
    }
    Ok(())
}

/// Takes the state directory's lock: one relay process per directory.
/// Startup recovery frees the locks of runners that died, which is right only
/// if none of them is alive. The lock is the kernel's, so it goes with the
/// process however it ends; keep the returned file open while the relay runs.
///
/// The lock file is opened without following a symbolic link: a link planted
/// there would otherwise have the relay create or open a file of the link's
/// choosing.
pub(crate) fn lock(dir: &Path) -> Result<File, String> {
    let path = dir.join(LOCK_FILE);
    let shown = path.display();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(|e| {
            if is_symlink(&path) {
                format!("{shown} is a symbolic link: refusing to follow it (remove it if this relay did not make it)")
            } else {
                format!("opening {shown}: {e}")
            }
        })?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!("{shown} is not a regular file"));
    }
    file.try_lock()
        .map_err(|e| format!("{shown} is in use by another relay: {e}"))?;
    Ok(file)
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}
