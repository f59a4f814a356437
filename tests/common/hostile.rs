//! What a user with write access to a store's directory, or a disk that goes
//! bad, can leave where a store expects a file of its own, and the checks that
//! each store reads none of it: every call that meets it returns an error
//! naming the place, at once, nothing outside the store is read or served, and
//! `quarantine` moves a record's stand-in aside.
//!
//! Every check runs under [`unblocked`](super::unblocked): a read that waits
//! on a FIFO fails the test instead of hanging it. Whether a read allocates
//! what a file claims is a property of the code (reads are bounded before they
//! allocate), not something a test can time.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use jobsafe::{Batch, DirStore, Error, Expect, Key, LogStore, Prefix, Store};

use super::unblocked;

/// What is planted in the place of a store's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// A FIFO nobody writes to: opening it to read blocks.
    Fifo,
    /// A symlink to a file outside the store that holds a copy of what was
    /// there (valid-looking content).
    LinkOutside,
    /// A symlink to `/dev/zero`, which never ends.
    LinkToDevZero,
    /// A character device node like `/dev/zero`, made with `mknod` (root with
    /// `CAP_MKNOD` only; skipped elsewhere).
    DeviceNode,
    /// A sparse file of 1 GiB, starting with what was there: it costs no disk.
    Huge,
}

/// What does not follow a link: FIFOs, devices and huge files.
pub const NOT_LINKS: [Hostile; 3] = [Hostile::Fifo, Hostile::DeviceNode, Hostile::Huge];
/// Symlinks.
pub const LINKS: [Hostile; 2] = [Hostile::LinkOutside, Hostile::LinkToDevZero];

/// The length of [`Hostile::Huge`].
pub const HUGE_LEN: u64 = 1 << 30;

impl Hostile {
    /// Replaces whatever is at `path` (a file, or nothing) with `self`, keeping
    /// a copy of what was there in `outside` for [`Hostile::LinkOutside`] to
    /// name. `false` if it cannot be made here (a device node without the
    /// privilege to make one).
    pub fn plant(self, path: &Path, outside: &Path) -> bool {
        let was = fs::read(path).unwrap_or_default();
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {}: {e}", path.display()),
        }
        let made = match self {
            Hostile::Fifo => super::make_fifo(path),
            Hostile::LinkOutside => {
                fs::create_dir_all(outside)
                    .unwrap_or_else(|e| panic!("create {}: {e}", outside.display()));
                let name = path.file_name().unwrap_or_else(|| panic!("{path:?}"));
                let copy = outside.join(name);
                fs::write(&copy, &was).unwrap_or_else(|e| panic!("write {}: {e}", copy.display()));
                symlink(&copy, path)
            }
            Hostile::LinkToDevZero => symlink("/dev/zero", path),
            Hostile::DeviceNode => {
                // Major 1, minor 5: what /dev/zero is on Linux.
                let made = Command::new("mknod")
                    .arg(path)
                    .args(["c", "1", "5"])
                    .output();
                match made {
                    Ok(out) if out.status.success() => Ok(()),
                    _ => {
                        eprintln!("no device node at {}: mknod is not allowed", path.display());
                        return false;
                    }
                }
            }
            Hostile::Huge => fs::write(path, &was).and_then(|()| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(HUGE_LEN)
            }),
        };
        made.unwrap_or_else(|e| panic!("plant {self:?} at {}: {e}", path.display()));
        true
    }

    /// Whether what is at `path` is what [`plant`](Hostile::plant) made.
    pub fn is_at(self, path: &Path) -> bool {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return false;
        };
        let kind = meta.file_type();
        match self {
            Hostile::Fifo => kind.is_fifo(),
            Hostile::LinkOutside | Hostile::LinkToDevZero => kind.is_symlink(),
            Hostile::DeviceNode => kind.is_char_device(),
            Hostile::Huge => kind.is_file() && meta.len() == HUGE_LEN,
        }
    }
}

/// A store's directory beside a directory outside it.
pub struct Site {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
}

impl Site {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let root = dir.path().join("store");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap_or_else(|e| panic!("create outside: {e}"));
        Site {
            _dir: dir,
            root,
            outside,
        }
    }
}

/// `result` failed as corrupt, naming `path`; returns the message.
#[track_caller]
pub fn assert_corrupt_naming<T: std::fmt::Debug>(
    result: jobsafe::Result<T>,
    path: &Path,
    what: &str,
) -> String {
    let err = match result {
        Err(err) => err,
        Ok(v) => panic!("{what}: went on as if nothing were wrong: {v:?}"),
    };
    assert!(err.is_corrupt(), "{what}: {err}");
    let text = err.to_string();
    assert!(
        text.contains(&*path.to_string_lossy()),
        "{what}: {text} does not name {}",
        path.display()
    );
    text
}

/// `result` refused `kind` at `path` as [`assert_corrupt_naming`] checks, and
/// for the reason it should: a link, a FIFO or a device was not followed, a
/// huge file was longer than its format allows (so it was not read whole).
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    kind: Hostile,
    result: jobsafe::Result<T>,
    path: &Path,
    what: &str,
) {
    let text = assert_corrupt_naming(result, path, what);
    let reason = match kind {
        Hostile::Huge => "longer than",
        _ => "not followed",
    };
    assert!(
        text.contains(reason),
        "{what}: {text} does not say {reason:?}"
    );
}

/// A record of a `DirStore` replaced by `kind`: every operation on its key
/// is `Error::Corrupt` naming the file, other keys and listings go on, and
/// `quarantine` moves it aside as it is and frees the key.
pub fn dir_store_record(kind: Hostile) {
    let site = Site::new();
    let store = DirStore::open(&site.root).unwrap_or_else(|e| panic!("open: {e}"));
    let (key, other) = (super::key("jobs/a"), super::key("jobs/b"));
    for k in [&key, &other] {
        store
            .put(k, b"mine", Expect::Absent)
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
    let path = store.path_of(&key);
    if !kind.plant(&path, &site.outside) {
        return;
    }
    let quarantine = site.root.join("quarantine");

    unblocked("operations on a planted record", move || {
        let what = |op: &str| format!("{kind:?} at the record: {op}");
        let get = store.get(&key);
        assert!(
            matches!(&get, Err(Error::Corrupt { key: k, path: Some(p), .. }) if *k == key && *p == path),
            "{}: {get:?}",
            what("get")
        );
        assert_refused(kind, get, &path, &what("get"));
        assert_refused(
            kind,
            store.put(&key, b"new", Expect::Any),
            &path,
            &what("put"),
        );
        assert_refused(
            kind,
            store.delete(&key, Expect::Any),
            &path,
            &what("delete"),
        );
        let batch = Batch::new().put(&key, b"new".to_vec(), Expect::Any);
        assert_refused(kind, store.apply(&batch), &path, &what("apply"));
        // Listing reads no record of a plain name: the key is there, damaged.
        let listed = store.list_all(&Prefix::all());
        assert_eq!(
            listed.ok(),
            Some(vec![key.clone(), other.clone()]),
            "{}",
            what("list")
        );
        assert_eq!(
            store.get(&other).ok().flatten().map(|e| e.value),
            Some(b"mine".to_vec())
        );
        assert!(
            kind.is_at(&path),
            "{}: a read moved or changed it",
            what("reads")
        );

        let moved = store
            .quarantine(&key)
            .unwrap_or_else(|e| panic!("{}: {e}", what("quarantine")))
            .unwrap_or_else(|| panic!("{}: found nothing", what("quarantine")));
        let moved = PathBuf::from(moved.location);
        assert!(moved.starts_with(&quarantine), "{}", moved.display());
        assert!(
            kind.is_at(&moved),
            "{}: not moved as it was",
            what("quarantine")
        );
        assert!(
            fs::symlink_metadata(&path).is_err(),
            "{}",
            what("quarantine")
        );
        assert_eq!(
            store.get(&key).ok(),
            Some(None),
            "{}",
            what("get after quarantine")
        );
        store
            .put(&key, b"again", Expect::Absent)
            .unwrap_or_else(|e| panic!("{}: {e}", what("put after quarantine")));
        assert_eq!(
            store.get(&key).ok().flatten().map(|e| e.value),
            Some(b"again".to_vec())
        );
    });
}

/// The two files a `DirStore` listing reads, replaced by `kind`: the record of
/// a key whose last segment is too long for a file name, and the `.segment`
/// file of a directory whose name was shortened. `list` is
/// `Error::CorruptFile` naming it; the record is quarantined like any other.
pub fn dir_store_listing(kind: Hostile) {
    let site = Site::new();
    let store = DirStore::open(&site.root).unwrap_or_else(|e| panic!("open: {e}"));
    let long = "x".repeat(200);
    let (hashed, under_hashed) = (
        Key::new(["jobs", long.as_str()]).unwrap_or_else(|e| panic!("{e}")),
        Key::new([long.as_str(), "a"]).unwrap_or_else(|e| panic!("{e}")),
    );
    for k in [&hashed, &under_hashed] {
        store
            .put(k, b"mine", Expect::Absent)
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
    let record = store.path_of(&hashed);
    let segment = store.path_of(&under_hashed).with_file_name(".segment");
    if !kind.plant(&record, &site.outside) {
        return;
    }
    kind.plant(&segment, &site.outside);

    unblocked("listing planted files", move || {
        let what = |op: &str| format!("{kind:?} in a listing: {op}");
        let jobs = Prefix::new(["jobs"]).unwrap_or_else(|e| panic!("{e}"));
        assert_refused(
            kind,
            store.list_all(&jobs),
            &record,
            &what("list the record"),
        );
        // The segment of a shortened directory is read when its parent is
        // listed (under its own prefix, the prefix says what it is).
        let all = Prefix::all();
        assert_refused(kind, store.list_all(&all), &segment, &what("list .segment"));
        assert_refused(kind, store.get(&hashed), &record, &what("get"));
        assert!(
            kind.is_at(&record) && kind.is_at(&segment),
            "{}",
            what("reads moved it")
        );

        let moved = store.quarantine(&hashed);
        assert!(
            matches!(moved, Ok(Some(_))),
            "{}: {moved:?}",
            what("quarantine")
        );
        assert_eq!(
            store.list_all(&jobs).ok(),
            Some(vec![]),
            "{}",
            what("list after")
        );
    });
}

/// A batch journal of a `DirStore` replaced by `kind` (a link to a valid
/// journal outside, that would write `jobs/a`): opening the store, and every
/// operation on the journal's stripes, is `Error::CorruptFile` naming it; it
/// is never replayed, and stays for an operator.
pub fn dir_store_journal(kind: Hostile) {
    let site = Site::new();
    let key = super::key("jobs/a");
    let store = DirStore::open(&site.root).unwrap_or_else(|e| panic!("open: {e}"));
    store
        .put(&key, b"mine", Expect::Absent)
        .unwrap_or_else(|e| panic!("put: {e}"));
    // A valid journal of every stripe, that would write `jobs/a` as "evil".
    let evil = fs::read(store.path_of(&key))
        .map(|record| String::from_utf8_lossy(&record).replace("mine", "evil"))
        .unwrap_or_else(|e| panic!("read the record: {e}"));
    let mut body = format!("jobsafe-journal 1\nP {}\n{evil}\n", evil.len()).into_bytes();
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(format!("end {crc:08x}\n").as_bytes());
    let journal = site
        .root
        .join("journal")
        .join(format!("{:016x}-{:032x}.batch", u64::MAX, 0));
    fs::write(&journal, &body).unwrap_or_else(|e| panic!("write the journal: {e}"));
    if !kind.plant(&journal, &site.outside) {
        return;
    }
    let root = site.root.clone();

    unblocked("a store with a planted journal", move || {
        let what = |op: &str| format!("{kind:?} as a journal: {op}");
        assert_refused(kind, store.get(&key), &journal, &what("get"));
        assert_refused(
            kind,
            store.list_all(&Prefix::all()),
            &journal,
            &what("list"),
        );
        assert_refused(
            kind,
            store.put(&key, b"new", Expect::Any),
            &journal,
            &what("put"),
        );
        assert_refused(kind, DirStore::open(&root), &journal, &what("open"));
        assert!(kind.is_at(&journal), "{}: a read moved it", what("reads"));

        fs::remove_file(&journal).unwrap_or_else(|e| panic!("remove the journal: {e}"));
        let got = store.get(&key).ok().flatten().map(|e| e.value);
        assert_eq!(got, Some(b"mine".to_vec()), "{}", what("replayed"));
    });
}

/// The small files of a `DirStore` replaced by `kind`: a stripe's version
/// floor (read to create a key), the marker (read to open) and a stripe's
/// lock file (opened by every operation). Each is `Error::CorruptFile` naming
/// it. A huge lock file is no damage: only its flock is used, it is never
/// read.
pub fn dir_store_small_files(kind: Hostile) {
    let site = Site::new();
    let key = super::key("jobs/a");
    let store = DirStore::open(&site.root).unwrap_or_else(|e| panic!("open: {e}"));
    store
        .put(&key, b"mine", Expect::Absent)
        .unwrap_or_else(|e| panic!("put: {e}"));
    store
        .delete(&key, Expect::Any)
        .unwrap_or_else(|e| panic!("delete: {e}"));
    let stripes = site.root.join("stripes");
    let floor = fs::read_dir(&stripes)
        .unwrap_or_else(|e| panic!("read stripes: {e}"))
        .map(|entry| entry.unwrap_or_else(|e| panic!("{e}")).path())
        .find(|p| p.extension().is_some_and(|x| x == "floor"))
        .unwrap_or_else(|| panic!("a delete writes a floor"));
    let marker = site.root.join("jobsafe-dirstore");
    let lock = stripes.join("00.lock");
    if !kind.plant(&floor, &site.outside) {
        return;
    }
    kind.plant(&marker, &site.outside);
    kind.plant(&lock, &site.outside);
    let root = site.root.clone();

    unblocked("a store with planted small files", move || {
        let what = |op: &str| format!("{kind:?} at a small file: {op}");
        assert_refused(
            kind,
            store.put(&key, b"new", Expect::Absent),
            &floor,
            &what("floor"),
        );
        assert_refused(kind, DirStore::open(&root), &marker, &what("marker"));
        // `list` locks every stripe, 00 first.
        let listed = store.list_all(&Prefix::all());
        if kind == Hostile::Huge {
            assert_eq!(listed.ok(), Some(vec![]), "{}", what("huge lock"));
        } else {
            assert_refused(kind, listed, &lock, &what("lock"));
        }
        assert!(kind.is_at(&floor) && kind.is_at(&marker) && kind.is_at(&lock));
    });
}

/// The files of a `LogStore` replaced by `kind`, one at a time: the journal,
/// `lock`, `compact.lock` and the marker. Opening the store is
/// `Error::CorruptFile` naming it, except where a huge file is no damage: a
/// lock file is never read. (A journal may be long, so a huge one here is
/// zeros from its first byte: its header is bad, and nothing past it is read.)
pub fn log_store_files(kind: Hostile) {
    for name in ["journal", "lock", "compact.lock", "jobsafe-logstore"] {
        let site = Site::new();
        let key = super::key("jobs/a");
        {
            let store = LogStore::open(&site.root).unwrap_or_else(|e| panic!("open: {e}"));
            store
                .put(&key, b"mine", Expect::Absent)
                .unwrap_or_else(|e| panic!("put: {e}"));
        }
        let path = site.root.join(name);
        if !kind.plant(&path, &site.outside) {
            return;
        }
        if kind == Hostile::Huge && name == "journal" {
            let zeros = fs::OpenOptions::new().write(true).open(&path);
            zeros
                .and_then(|file| file.set_len(0).and_then(|()| file.set_len(HUGE_LEN)))
                .unwrap_or_else(|e| panic!("zero the journal: {e}"));
        }
        let root = site.root.clone();

        unblocked("opening a LogStore with a planted file", move || {
            let what = format!("{kind:?} at {name}");
            let opened = LogStore::open(&root);
            if kind == Hostile::Huge && name.ends_with("lock") {
                let store = opened.unwrap_or_else(|e| panic!("{what}: {e}"));
                let got = store.get(&key).ok().flatten().map(|e| e.value);
                assert_eq!(got, Some(b"mine".to_vec()), "{what}");
            } else if kind == Hostile::Huge && name == "journal" {
                assert_corrupt_naming(opened, &path, &what);
            } else {
                assert_refused(kind, opened, &path, &what);
                assert!(kind.is_at(&path), "{what}: the open moved or changed it");
            }
        });
    }
}
