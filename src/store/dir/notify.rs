//! Other writers' changes, told to this handle's watchers
//! (`Store::changes_by_others`).
//!
//! Every change of a record is one step in its directory that the kernel
//! reports by the record file's name (inotify): a put renames a temp file
//! over the record, a delete unlinks it, a quarantine moves it out, and a
//! batch (or the completion of one a crash left) does the same for each of
//! its records. The key follows from the directory and the name, so one
//! thread per watched store handle turns each report into a key and tells
//! the watchers of the prefixes above it. Nothing is read from the records:
//! a watcher that is told reads the store itself.
//!
//! What is watched, for each watched prefix: every directory from `data/`
//! down to the prefix's own (to see the next one on the way created: it may
//! not exist yet, and an emptied directory is removed), and the whole tree
//! below the prefix's directory. A directory that appears on the way or in
//! the tree is watched as soon as its report is read, and every watcher is
//! told then: a record may have landed in it before its watch was set.
//! When the kernel's queue overflows, every watcher is told as well. A
//! directory that cannot be watched when it appears (the kernel's limit of
//! watches reached, say) makes the thread tell every watcher at each
//! wake-up, at least every second, until it can be: a missed change would
//! strand a runner until its poll, a needless look costs a read.
//!
//! The writes made through this handle's calls are not told (whoever makes
//! them knows): while anyone watches, such a write notes the name of its
//! temp file (random) before renaming it, and the thread recognizes the
//! rename's report by it. The completion of a batch found pending (another
//! process's, most likely) is not this handle's call: it is told. This
//! handle's deletes and quarantines are told too: they are rare, and a
//! notification may come without a change.
//!
//! The thread holds the store's notices weakly. It wakes at least every
//! second to see whether the store or its watchers are gone, and ends then,
//! within a second of the last watch's drop; however it ends, the next
//! watch starts another. Elsewhere than on Linux there is no such thread,
//! and the store cannot tell.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::key::Prefix;
use crate::store::Changes;
use crate::store::changes::ChangeFeed;

/// Temp names of this handle's writes kept at most, waiting for their
/// renames' reports: past it they are forgotten, and this handle's next
/// writes may be told too (harmless: a notification is a hint).
const MAX_OWN_WRITES: usize = 4096;

/// The subdirectories of a directory of the store, through its `Vfs`: the
/// names of those that are real directories (never a symlink), whatever
/// their names.
pub(super) type ListSubdirs = Arc<dyn Fn(&Path) -> std::io::Result<Vec<OsString>> + Send + Sync>;

/// Who watches this handle's keys, and what it wrote itself.
#[derive(Debug, Default)]
pub(super) struct Notices {
    pub(super) feed: ChangeFeed,
    /// File names of this handle's temp files, noted while anyone watches:
    /// their renames into place are this handle's own writes.
    own_writes: Mutex<HashSet<OsString>>,
    /// The watching thread's side, while one runs.
    #[cfg(target_os = "linux")]
    watcher: Mutex<Option<Arc<linux::Watcher>>>,
}

impl Notices {
    /// Notes that this handle is about to rename `temp` into place.
    pub(super) fn note_own_write(&self, temp: &Path) {
        if !self.feed.is_watched() {
            return;
        }
        if let Some(name) = temp.file_name() {
            let mut own = self.own_writes.lock();
            if own.len() >= MAX_OWN_WRITES {
                own.clear();
            }
            own.insert(name.to_owned());
        }
    }
}

/// Watches `prefix` under `data` for other writers' changes; `None` if the
/// kernel cannot report them (not Linux, or its inotify limits reached).
#[cfg(target_os = "linux")]
pub(super) fn watch(
    notices: &Arc<Notices>,
    data: &Path,
    subdirs: impl FnOnce() -> ListSubdirs,
    prefix: &Prefix,
) -> Option<Changes> {
    // Registered first: a change reported after the directories are watched
    // is told.
    let changes = notices.feed.watch(prefix);
    let mut slot = notices.watcher.lock();
    let watcher = match &*slot {
        Some(watcher) => Arc::clone(watcher),
        None => {
            let watcher = linux::Watcher::start(notices, data.to_path_buf(), subdirs())
                .map_err(|e| cannot_watch(data, &e))
                .ok()?;
            *slot = Some(Arc::clone(&watcher));
            watcher
        }
    };
    watcher
        .add_prefix(prefix.segments())
        .map_err(|e| cannot_watch(data, &e))
        .ok()?;
    Some(changes)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn watch(
    _notices: &Arc<Notices>,
    _data: &Path,
    _subdirs: impl FnOnce() -> ListSubdirs,
    _prefix: &Prefix,
) -> Option<Changes> {
    None
}

#[cfg(target_os = "linux")]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
fn cannot_watch(data: &Path, error: &std::io::Error) {
    crate::trace::report!(
        warn,
        path = %data.display(),
        error = %error,
        "cannot watch the store's directories: other writers' changes are \
         found only by polling"
    );
}

/// What one report of the kernel asks of the watching thread.
#[derive(Debug, Default, PartialEq, Eq)]
struct Told {
    /// Packed keys that changed.
    keys: Vec<Vec<u8>>,
    /// Anything may have changed.
    all: bool,
    /// A directory appeared on a watched way, or reports were lost: watch
    /// the prefixes' directories again.
    rearm: bool,
}

/// The directory a watch stands for: the key segments of the records in
/// it, `None` when a name on its way was shortened with a hash (and cannot
/// be read back).
type DirSegments = Option<Vec<String>>;

/// One report of the kernel, as the thread reads it.
#[derive(Debug, Clone)]
struct Report {
    wd: i32,
    kind: ReportKind,
    cookie: u32,
    name: Option<OsString>,
    is_dir: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportKind {
    /// Created in the directory (`IN_CREATE`): a directory, or a record
    /// linked into place.
    Created,
    /// Renamed into the directory (`IN_MOVED_TO`): a put.
    MovedTo,
    /// Renamed out of the directory (`IN_MOVED_FROM`): a temp file about
    /// to land, or a record quarantined.
    MovedFrom,
    /// Unlinked (`IN_DELETE`).
    Deleted,
    /// The watch is gone, with its directory (`IN_IGNORED`).
    Ignored,
    /// The kernel's queue overflowed: reports were lost.
    Overflow,
}

/// The pairing of this handle's temp files with their renames' reports.
#[derive(Debug, Default)]
struct OwnRenames {
    /// Cookies of renames whose first half moved one of this handle's temp
    /// files: the second half is its own write.
    cookies: HashSet<u32>,
}

/// What `report` tells. `dirs` maps watches to the directories they stand
/// for, `prefixes` are the watched ones, `own_writes` the temp names of
/// this handle's writes.
fn interpret(
    report: &Report,
    dirs: &std::collections::HashMap<i32, DirSegments>,
    prefixes: &[Vec<String>],
    own_writes: &mut HashSet<OsString>,
    own: &mut OwnRenames,
    told: &mut Told,
) {
    use super::naming::{DIR_SUFFIX, RECORD_SUFFIX, decode, is_hashed};

    if report.kind == ReportKind::Overflow {
        told.all = true;
        told.rearm = true;
        return;
    }
    let (Some(name), Some(segments)) = (&report.name, dirs.get(&report.wd)) else {
        // The directory's own reports (its removal is `Ignored`, handled by
        // the caller), or a watch already forgotten.
        return;
    };
    let Some(name) = name.to_str() else {
        // Never a name of the store's: every name it makes is ASCII.
        return;
    };
    if name.starts_with('.') {
        // A temp file (or a hashed directory being built): noted if it is
        // this handle's write about to land.
        match report.kind {
            ReportKind::MovedFrom if own_writes.remove(std::ffi::OsStr::new(name)) => {
                if own.cookies.len() >= MAX_OWN_WRITES {
                    own.cookies.clear();
                }
                own.cookies.insert(report.cookie);
            }
            ReportKind::Deleted => {
                // A write that failed before its rename.
                own_writes.remove(std::ffi::OsStr::new(name));
            }
            _ => {}
        }
        return;
    }
    let child = |stem: &str| -> DirSegments {
        let mut path = segments.clone()?;
        if is_hashed(stem) {
            return None;
        }
        path.push(decode(stem)?);
        Some(path)
    };
    if report.is_dir {
        let appeared = matches!(report.kind, ReportKind::Created | ReportKind::MovedTo);
        if let (true, Some(stem)) = (appeared, name.strip_suffix(DIR_SUFFIX)) {
            let concerns_a_prefix = child(stem).is_none_or(|dir| {
                prefixes
                    .iter()
                    .any(|prefix| dir.starts_with(prefix) || prefix.starts_with(&dir))
            });
            if concerns_a_prefix {
                told.rearm = true;
                told.all = true;
            }
        }
        return;
    }
    let Some(stem) = name.strip_suffix(RECORD_SUFFIX) else {
        return; // A directory's `.segment` file, or a stranger.
    };
    if report.kind == ReportKind::MovedTo && own.cookies.remove(&report.cookie) {
        return; // This handle's own put.
    }
    match child(stem) {
        Some(key) => told.keys.push(crate::store::packed::pack(&key)),
        None => told.all = true,
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::ffi::{OsStr, OsString};
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Weak};

    use parking_lot::Mutex;
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::io::Errno;

    use super::{
        DirSegments, ListSubdirs, Notices, OwnRenames, Report, ReportKind, Told, interpret,
    };
    use crate::store::dir::naming::{self, DIR_SUFFIX};

    /// Deepest tree watched below a prefix's directory (a key has at most
    /// 16 segments).
    const MAX_DEPTH: usize = 16;

    /// The watching thread's inotify instance and what its watches stand for.
    pub(in crate::store::dir) struct Watcher {
        fd: OwnedFd,
        data: PathBuf,
        subdirs: ListSubdirs,
        table: Mutex<Table>,
    }

    impl std::fmt::Debug for Watcher {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Watcher")
                .field("data", &self.data)
                .field("table", &self.table)
                .finish_non_exhaustive()
        }
    }

    #[derive(Debug, Default)]
    struct Table {
        dirs: HashMap<i32, DirSegments>,
        prefixes: Vec<Vec<String>>,
    }

    impl Watcher {
        /// Starts watching, and the thread that reads the reports.
        pub(super) fn start(
            notices: &Arc<Notices>,
            data: PathBuf,
            subdirs: ListSubdirs,
        ) -> std::io::Result<Arc<Self>> {
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            let watcher = Arc::new(Watcher {
                fd,
                data,
                subdirs,
                table: Mutex::new(Table::default()),
            });
            let weak = Arc::downgrade(notices);
            let thread_side = Arc::clone(&watcher);
            std::thread::Builder::new()
                .name("jobsafe-watch".to_owned())
                .spawn(move || thread_side.run(&weak))?;
            Ok(watcher)
        }

        /// Watches the directories of `prefix`, from now on.
        pub(super) fn add_prefix(&self, prefix: &[String]) -> std::io::Result<()> {
            let mut table = self.table.lock();
            // Armed once: the reports keep the watches of a prefix up to
            // date, and a second watch of it (a subscription per job, say)
            // lists no directory again.
            if table.prefixes.iter().any(|p| p == prefix) {
                return Ok(());
            }
            self.arm(&mut table, prefix)?;
            table.prefixes.push(prefix.to_vec());
            Ok(())
        }

        /// Watches every directory from `data/` down to `prefix`'s, and the
        /// tree below it; those that do not exist yet are watched when
        /// their parent reports them. A directory that cannot be watched
        /// or listed does not stop the others: the first such error is
        /// returned once all were tried.
        fn arm(&self, table: &mut Table, prefix: &[String]) -> std::io::Result<()> {
            let mut failed = None;
            let mut path = self.data.clone();
            for (depth, segment) in prefix.iter().enumerate() {
                match self.add(table, &path, Some(prefix[..depth].to_vec())) {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    // The next one on the way is not watched if it comes.
                    Err(e) => return Err(e),
                }
                path.push(format!("{}{DIR_SUFFIX}", naming::encode(segment)));
            }
            self.add_tree(table, &path, Some(prefix.to_vec()), 0, &mut failed);
            failed.map_or(Ok(()), Err)
        }

        fn add_tree(
            &self,
            table: &mut Table,
            dir: &Path,
            segments: DirSegments,
            depth: usize,
            failed: &mut Option<std::io::Error>,
        ) {
            match self.add(table, dir, segments.clone()) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    failed.get_or_insert(e);
                    return;
                }
            }
            if depth >= MAX_DEPTH || has_no_subdirectories(dir) {
                return;
            }
            let names = match (self.subdirs)(dir) {
                Ok(names) => names,
                Err(e) if is_gone(&e) => return,
                Err(e) => {
                    failed.get_or_insert(e);
                    return;
                }
            };
            for name in names {
                let Some(stem) = name
                    .to_str()
                    .filter(|n| !n.starts_with('.'))
                    .and_then(|n| n.strip_suffix(DIR_SUFFIX))
                else {
                    continue;
                };
                let child = segments.clone().and_then(|mut s| {
                    if naming::is_hashed(stem) {
                        return None;
                    }
                    s.push(naming::decode(stem)?);
                    Some(s)
                });
                self.add_tree(table, &dir.join(&name), child, depth + 1, failed);
            }
        }

        /// Watches `dir`; `false` if it is not there (its parent's watch
        /// reports it when it comes).
        fn add(
            &self,
            table: &mut Table,
            dir: &Path,
            segments: DirSegments,
        ) -> std::io::Result<bool> {
            let mask = WatchFlags::CREATE
                | WatchFlags::MOVED_TO
                | WatchFlags::MOVED_FROM
                | WatchFlags::DELETE
                | WatchFlags::ONLYDIR
                | WatchFlags::DONT_FOLLOW;
            match inotify::add_watch(&self.fd, dir, mask) {
                Ok(wd) => {
                    table.dirs.insert(wd, segments);
                    Ok(true)
                }
                Err(Errno::NOENT | Errno::NOTDIR) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }

        fn run(self: Arc<Self>, notices: &Weak<Notices>) {
            // However the thread ends (a panic of a `Vfs` included), the
            // next watch starts a new one rather than count on this one.
            let _vacate = Vacate {
                notices: notices.clone(),
                watcher: Arc::downgrade(&self),
            };
            let mut own = OwnRenames::default();
            let mut buf = vec![MaybeUninit::<u8>::uninit(); 16 * 1024];
            // Some directory could not be watched: every watcher is told at
            // each wake-up (at least every second), until all are watched.
            let mut degraded = false;
            loop {
                let reports = self.wait(&mut buf);
                let Some(notices) = notices.upgrade() else {
                    return;
                };
                if !notices.feed.prune() {
                    let mut slot = notices.watcher.lock();
                    // A watch that came just now registered before it took
                    // the slot: it is seen here, or it starts a new thread.
                    if !notices.feed.prune() {
                        *slot = None;
                        return;
                    }
                }
                if reports.is_empty() && !degraded {
                    continue;
                }
                let mut told = Told {
                    rearm: degraded,
                    all: degraded,
                    ..Told::default()
                };
                {
                    let mut table = self.table.lock();
                    let mut own_writes = notices.own_writes.lock();
                    for report in &reports {
                        if report.kind == ReportKind::Ignored {
                            table.dirs.remove(&report.wd);
                            continue;
                        }
                        interpret(
                            report,
                            &table.dirs,
                            &table.prefixes,
                            &mut own_writes,
                            &mut own,
                            &mut told,
                        );
                    }
                    drop(own_writes);
                    if told.rearm {
                        let was_degraded = std::mem::replace(&mut degraded, false);
                        for prefix in table.prefixes.clone() {
                            if let Err(e) = self.arm(&mut table, &prefix) {
                                if !was_degraded {
                                    super::cannot_watch(&self.data, &e);
                                }
                                degraded = true;
                                told.all = true;
                            }
                        }
                    }
                }
                // Told outside the locks: a wake-up may run a task that watches.
                if told.all {
                    notices.feed.changed_all();
                } else if !told.keys.is_empty() {
                    notices
                        .feed
                        .changed_packed(told.keys.iter().map(Vec::as_slice));
                }
            }
        }

        /// Waits up to a second for reports; every report queued.
        fn wait(&self, buf: &mut [MaybeUninit<u8>]) -> Vec<Report> {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            let second = Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            match poll(&mut fds, Some(&second)) {
                Ok(0) => return Vec::new(),
                Ok(_) => {}
                // Interrupted: look again at once.
                Err(_) => return Vec::new(),
            }
            let mut reports = Vec::new();
            let mut reader = inotify::Reader::new(&self.fd, buf);
            loop {
                match reader.next() {
                    Ok(event) => reports.push(report_of(&event)),
                    Err(Errno::INTR) => {}
                    // `AGAIN`: all read. Anything else: lost, as an overflow.
                    Err(Errno::AGAIN) => break,
                    Err(_) => {
                        reports.push(overflow());
                        break;
                    }
                }
            }
            reports
        }
    }

    /// Empties the slot of the watcher whose thread ends, unless another
    /// took its place.
    struct Vacate {
        notices: Weak<Notices>,
        watcher: Weak<Watcher>,
    }

    impl Drop for Vacate {
        fn drop(&mut self) {
            if let Some(notices) = self.notices.upgrade() {
                let mut slot = notices.watcher.lock();
                if slot
                    .as_ref()
                    .is_some_and(|w| std::ptr::eq(Arc::as_ptr(w), self.watcher.as_ptr()))
                {
                    *slot = None;
                }
            }
        }
    }

    /// Whether `dir` certainly has no subdirectory: its link count is 2 on
    /// a filesystem that counts a directory's subdirectories in it (ext2/3/4,
    /// XFS, tmpfs, F2FS), so that a directory of a million records is not
    /// listed. Elsewhere (btrfs reports 1, some network and FUSE filesystems
    /// a constant) it is listed. A hint read without the `Vfs`, as the
    /// watches themselves are set.
    fn has_no_subdirectories(dir: &Path) -> bool {
        const COUNTING: [i128; 4] = [0xEF53, 0x5846_5342, 0x0102_1994, 0xF2F5_2010];
        let counts = rustix::fs::statfs(dir)
            .is_ok_and(|fs| COUNTING.contains(&(i128::from(fs.f_type) & 0xFFFF_FFFF)));
        counts && rustix::fs::lstat(dir).is_ok_and(|stat| stat.st_nlink == 2)
    }

    fn report_of(event: &inotify::Event<'_>) -> Report {
        let flags = event.events();
        let kind = if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            ReportKind::Overflow
        } else if flags.contains(ReadFlags::IGNORED) {
            ReportKind::Ignored
        } else if flags.contains(ReadFlags::MOVED_TO) {
            ReportKind::MovedTo
        } else if flags.contains(ReadFlags::MOVED_FROM) {
            ReportKind::MovedFrom
        } else if flags.contains(ReadFlags::CREATE) {
            ReportKind::Created
        } else {
            ReportKind::Deleted
        };
        Report {
            wd: event.wd(),
            kind,
            cookie: event.cookie(),
            name: event
                .file_name()
                .map(|n| OsStr::from_bytes(n.to_bytes()).to_owned()),
            is_dir: flags.contains(ReadFlags::ISDIR),
        }
    }

    fn overflow() -> Report {
        Report {
            wd: -1,
            kind: ReportKind::Overflow,
            cookie: 0,
            name: None::<OsString>,
            is_dir: false,
        }
    }

    fn is_gone(e: &std::io::Error) -> bool {
        matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::store::packed;

    const JOBS_DIR: i32 = 1;
    const DATA_DIR: i32 = 2;
    const HASHED_DIR: i32 = 3;

    struct Bench {
        dirs: HashMap<i32, DirSegments>,
        prefixes: Vec<Vec<String>>,
        own_writes: HashSet<OsString>,
        own: OwnRenames,
    }

    fn bench() -> Bench {
        let dirs = HashMap::from([
            (DATA_DIR, Some(vec![])),
            (JOBS_DIR, Some(vec!["ns".to_owned(), "job".to_owned()])),
            (HASHED_DIR, None),
        ]);
        Bench {
            dirs,
            prefixes: vec![vec!["ns".to_owned(), "job".to_owned()]],
            own_writes: HashSet::new(),
            own: OwnRenames::default(),
        }
    }

    fn report(wd: i32, kind: ReportKind, cookie: u32, name: &str, is_dir: bool) -> Report {
        Report {
            wd,
            kind,
            cookie,
            name: Some(name.into()),
            is_dir,
        }
    }

    impl Bench {
        fn told(&mut self, reports: &[Report]) -> Told {
            let mut told = Told::default();
            for r in reports {
                interpret(
                    r,
                    &self.dirs,
                    &self.prefixes,
                    &mut self.own_writes,
                    &mut self.own,
                    &mut told,
                );
            }
            told
        }
    }

    fn key(segments: &[&str]) -> Vec<u8> {
        let segments: Vec<String> = segments.iter().map(|s| (*s).to_owned()).collect();
        packed::pack(&segments)
    }

    fn rename(wd: i32, cookie: u32, temp: &str, name: &str) -> [Report; 2] {
        [
            report(wd, ReportKind::MovedFrom, cookie, temp, false),
            report(wd, ReportKind::MovedTo, cookie, name, false),
        ]
    }

    #[test]
    fn another_writers_put_and_delete_are_told_by_key() {
        let mut bench = bench();
        let mut reports = rename(JOBS_DIR, 7, ".42.r.00ff.jobsafe-tmp", "42.r").to_vec();
        reports.push(report(JOBS_DIR, ReportKind::Deleted, 0, "^a%2F.r", false));
        let told = bench.told(&reports);
        assert_eq!(
            told,
            Told {
                keys: vec![key(&["ns", "job", "42"]), key(&["ns", "job", "A/"])],
                all: false,
                rearm: false,
            }
        );
    }

    #[test]
    fn this_handles_own_put_is_not_told_and_its_failed_write_is_forgotten() {
        let mut bench = bench();
        bench.own_writes.insert(".42.r.0001.jobsafe-tmp".into());
        bench.own_writes.insert(".43.r.0002.jobsafe-tmp".into());
        let mut reports = rename(JOBS_DIR, 9, ".42.r.0001.jobsafe-tmp", "42.r").to_vec();
        // The other write failed: its temp file was removed, not renamed.
        reports.push(report(
            JOBS_DIR,
            ReportKind::Deleted,
            0,
            ".43.r.0002.jobsafe-tmp",
            false,
        ));
        // Another writer's put of the same record, after.
        reports.extend(rename(JOBS_DIR, 10, ".42.r.0003.jobsafe-tmp", "42.r"));
        let told = bench.told(&reports);
        assert_eq!(told.keys, vec![key(&["ns", "job", "42"])]);
        assert!(bench.own_writes.is_empty() && bench.own.cookies.is_empty());
    }

    #[test]
    fn a_new_directory_on_a_watched_way_rearms_and_tells_everyone() {
        let mut bench = bench();
        // `data/ns.d` on the way to `ns/job`.
        let told = bench.told(&[report(DATA_DIR, ReportKind::Created, 0, "ns.d", true)]);
        assert!(told.rearm && told.all);
        // `data/locks.d` concerns no watched prefix.
        let told = bench.told(&[report(DATA_DIR, ReportKind::Created, 0, "locks.d", true)]);
        assert_eq!(told, Told::default());
        // A hashed directory below the prefix, renamed into place.
        let hashed = format!("{}.d", "x".repeat(100) + "~0123");
        let told = bench.told(&[report(JOBS_DIR, ReportKind::MovedTo, 5, &hashed, true)]);
        assert!(told.rearm && told.all);
    }

    #[test]
    fn names_that_cannot_be_read_back_tell_everyone_and_strangers_nobody() {
        let mut bench = bench();
        let told = bench.told(&[report(HASHED_DIR, ReportKind::MovedTo, 1, "a.r", false)]);
        assert!(told.all && !told.rearm);
        let hashed = format!("{}~00ff.r", "y".repeat(100));
        let told = bench.told(&[report(JOBS_DIR, ReportKind::Deleted, 0, &hashed, false)]);
        assert!(told.all);
        let told = bench.told(&[
            report(JOBS_DIR, ReportKind::Created, 0, "notes.txt", false),
            report(JOBS_DIR, ReportKind::Created, 0, ".segment", false),
            report(99, ReportKind::MovedTo, 0, "1.r", false),
        ]);
        assert_eq!(told, Told::default());
    }

    #[test]
    fn an_overflow_tells_everyone() {
        let mut bench = bench();
        let overflow = Report {
            wd: -1,
            kind: ReportKind::Overflow,
            cookie: 0,
            name: None,
            is_dir: false,
        };
        let told = bench.told(&[overflow]);
        assert!(told.all && told.rearm);
    }
}
