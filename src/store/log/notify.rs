//! Other processes' writes, told to this process's watchers
//! (`Store::changes_by_others`).
//!
//! One thread per store handle that is watched waits for the kernel to
//! report that the store's directory changed (inotify: an append to the
//! journal, or a compaction renaming a new one into place), then catches
//! the index up as a read would, which tells the watchers of the keys the
//! new frames wrote (or every watcher after a replaced journal). Its own
//! process's appends wake it too; their catch-up finds nothing to read.
//!
//! The thread holds the store weakly, and strongly only while it reads. It
//! wakes at least every second to see whether the store or its watchers are
//! gone, and ends then, within a second of the last watch's drop. Elsewhere
//! than on Linux there is no such thread, and the store cannot tell.

use std::sync::Arc;
#[cfg(target_os = "linux")]
use std::sync::atomic::Ordering;

use super::Shared;
use crate::vfs::Vfs;

/// Starts the thread that watches `shared`'s journal, unless one runs;
/// whether one runs now. (The flag's handshake with the thread's end is
/// sequentially consistent: each side stores, then loads the other's.)
#[cfg(target_os = "linux")]
pub(super) fn watch_journal<V: Vfs>(shared: &Arc<Shared<V>>) -> bool {
    if shared.watching.swap(true, Ordering::SeqCst) {
        return true;
    }
    // Set up before the caller returns: a write right after is reported.
    let inotify = match linux::Inotify::on(&shared.root) {
        Ok(inotify) => inotify,
        #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
        Err(e) => {
            crate::trace::report!(
                warn,
                path = %shared.root.display(),
                error = %e,
                "cannot watch the store's directory: other processes' writes \
                 are found only by polling"
            );
            shared.watching.store(false, Ordering::SeqCst);
            return false;
        }
    };
    let weak = Arc::downgrade(shared);
    let started = std::thread::Builder::new()
        .name("jobsafe-watch".to_owned())
        .spawn(move || {
            loop {
                let woken = inotify.wait();
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                if !shared.changes.prune() {
                    shared.watching.store(false, Ordering::SeqCst);
                    // A watch that came just now found the flag set and
                    // started no thread: this one goes on for it.
                    if !shared.changes.prune() || shared.watching.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
                if woken && shared.fresh_index().is_err() {
                    // The watchers' own reads will meet the error, and say it.
                    shared.changes.changed_all();
                }
            }
        });
    if started.is_err() {
        shared.watching.store(false, Ordering::SeqCst);
        return false;
    }
    true
}

#[cfg(not(target_os = "linux"))]
pub(super) fn watch_journal<V: Vfs>(_shared: &Arc<Shared<V>>) -> bool {
    false
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::OwnedFd;
    use std::path::Path;

    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    use rustix::io::Errno;

    /// An inotify instance watching one directory.
    pub(super) struct Inotify {
        fd: OwnedFd,
    }

    impl Inotify {
        pub(super) fn on(dir: &Path) -> rustix::io::Result<Self> {
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            inotify::add_watch(
                &fd,
                dir,
                WatchFlags::MODIFY
                    | WatchFlags::CLOSE_WRITE
                    | WatchFlags::MOVED_TO
                    | WatchFlags::CREATE,
            )?;
            Ok(Inotify { fd })
        }

        /// Waits up to a second for the directory to change; whether it did.
        /// Reads every event queued, so that the next wait waits.
        pub(super) fn wait(&self) -> bool {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            let second = Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            match poll(&mut fds, Some(&second)) {
                Ok(0) => return false,
                Ok(_) => {}
                // Interrupted, or out of resources: look anyway.
                Err(_) => return true,
            }
            let mut buf = [0u8; 4096];
            loop {
                match rustix::io::read(&self.fd, &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(Errno::INTR) => {}
                    Err(_) => break,
                }
            }
            true
        }
    }
}
