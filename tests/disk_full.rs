//! A real full disk and a real read-only filesystem, on small tmpfs mounts.
//!
//! Each test mounts its own size-limited tmpfs in a temp dir, fills it with
//! `DirStore` or `LogStore` writes until the kernel answers ENOSPC, and checks
//! that the error is ENOSPC naming a path in the store, that everything
//! acknowledged before is still there (in the process and after a reopen), that
//! no partial record is visible, and that once space is freed the store takes
//! writes again. The read-only tests remount the filesystem read-only under a
//! store.
//!
//! Mounting needs root, so a plain `cargo test` lists these tests as ignored,
//! with that reason; run them with `cargo test --test disk_full -- --ignored`
//! (`.ci/run` does). Run so but without root, or when `mount` fails, each test
//! prints a `SKIPPED: ...` line and passes, unless `JOBSAFE_REQUIRE_MOUNTS=1`,
//! which makes it fail instead (CI sets it). Every mount is unmounted by a guard, on
//! success, failure and panic alike.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::error::Error as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use jobsafe::{AtomicWriter, DirStore, Error, Expect, Key, LogStore, Prefix, Store};

const ENOSPC: i32 = 28;
const EROFS: i32 = 30;

/// A tmpfs mounted on a temp dir, unmounted when dropped.
struct Mount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or says why it
    /// cannot.
    fn tmpfs(size: &str) -> Result<Mount, String> {
        if !common::is_root() {
            return Err("not running as root".to_owned());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let path = dir.path().join("mnt");
        fs::create_dir(&path).map_err(|e| format!("mount point: {e}"))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(&path))?;
        Ok(Mount { path, _dir: dir })
    }

    /// Remounts read-only (`ro`) or read-write.
    fn remount(&self, options: &str) -> Result<(), String> {
        run(Command::new("mount")
            .arg("-o")
            .arg(format!("remount,{options}"))
            .arg(&self.path))
    }

    /// Free bytes on the filesystem, as `df` reports them.
    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds it open: detach it now, freed when let go.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A mount, or `None` after a loud skip; fails the test instead of skipping
/// when `JOBSAFE_REQUIRE_MOUNTS=1`.
fn mount_or_skip(test: &str, size: &str) -> Option<Mount> {
    match Mount::tmpfs(size) {
        Ok(mount) => Some(mount),
        Err(why) => {
            assert!(
                std::env::var("JOBSAFE_REQUIRE_MOUNTS").as_deref() != Ok("1"),
                "{test}: cannot mount a tmpfs ({why}) and JOBSAFE_REQUIRE_MOUNTS=1"
            );
            println!("SKIPPED: {test}: cannot mount a tmpfs ({why})");
            None
        }
    }
}

/// The OS error number in `err`'s chain, if any.
fn errno(err: &Error) -> Option<i32> {
    let mut cause = err.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        cause = c.source();
    }
    None
}

/// Asserts that `err` is the OS error `expected` and names a path under `root`.
fn assert_os_error(err: &Error, expected: i32, root: &Path) {
    let text = common::error_chain(err);
    assert_eq!(errno(err), Some(expected), "{text}");
    assert!(
        text.contains(&*root.to_string_lossy()),
        "the error names no path in the store: {text}"
    );
}

fn record_key(i: usize) -> Key {
    Key::new(["jobs", &format!("{i:05}")]).unwrap()
}

fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("record {i} ").into_bytes();
    v.resize(len, b'a' + (i % 26) as u8);
    v
}

/// Writes new records until the disk is full; returns how many were
/// acknowledged and the error that stopped it.
fn fill(store: &dyn Store, len: usize, limit: usize) -> (usize, Error) {
    for i in 0..limit {
        if let Err(e) = store.put(&record_key(i), &value(i, len), Expect::Absent) {
            return (i, e);
        }
    }
    panic!("{limit} records of {len} bytes did not fill the disk");
}

/// Asserts that `store` holds exactly records `0..count`, whole.
fn assert_holds(store: &dyn Store, count: usize, len: usize, when: &str) {
    assert_holds_from(store, 0, count, len, when);
}

/// Asserts that `store` holds exactly records `first..count`, whole.
fn assert_holds_from(store: &dyn Store, first: usize, count: usize, len: usize, when: &str) {
    let listed = store.list_all(&Prefix::new(["jobs"]).unwrap()).unwrap();
    let expected: Vec<Key> = (first..count).map(record_key).collect();
    assert_eq!(
        listed, expected,
        "{when}: the listing is not the acknowledged records"
    );
    for i in first..count {
        let entry = store.get(&record_key(i)).unwrap();
        assert_eq!(
            entry.map(|e| e.value),
            Some(value(i, len)),
            "{when}: record {i}"
        );
    }
}

/// A file of `bytes` bytes that the test deletes to free space.
fn filler(mount: &Mount, bytes: usize) -> PathBuf {
    let path = mount.path.join("filler");
    fs::write(&path, vec![0xAB; bytes]).unwrap();
    path
}

#[test]
#[ignore = "needs root to mount a tmpfs: run with --ignored (.ci/run does)"]
fn dir_store_on_a_full_disk() {
    let Some(mount) = mount_or_skip("dir_store_on_a_full_disk", "2m") else {
        return;
    };
    let root = mount.path.join("store");
    let filler = filler(&mount, 256 << 10);
    let store = DirStore::open(&root).unwrap();
    const LEN: usize = 3000;
    let (acked, err) = fill(&store, LEN, 10_000);
    assert!(acked > 0, "the store took no record at all");
    assert_os_error(&err, ENOSPC, &root);
    assert!(err.is_transient(), "a full disk is worth retrying later");
    // Running out of space is not a failed flush: nothing acknowledged is in doubt.
    assert!(!store.is_poisoned());

    // Still full: an update fails, and leaves the old record whole.
    let update = store
        .put(&record_key(0), &value(999, LEN), Expect::Any)
        .unwrap_err();
    assert_os_error(&update, ENOSPC, &root);
    // A batch whose journal does not fit changes nothing.
    let batch = jobsafe::Batch::new()
        .put(&record_key(acked), value(acked, LEN), Expect::Absent)
        .put(
            &record_key(acked + 1),
            value(acked + 1, LEN),
            Expect::Absent,
        );
    let batch_err = store.apply(&batch).unwrap_err();
    assert_os_error(&batch_err, ENOSPC, &root);
    assert!(
        !matches!(batch_err, Error::BatchPending { .. }),
        "{batch_err}"
    );
    // A delete must first raise its stripe's version floor, a small file
    // written atomically: on a disk with no page left it fails too (a
    // documented limitation), and the record stays whole.
    let delete = store.delete(&record_key(0), Expect::Any).unwrap_err();
    assert_os_error(&delete, ENOSPC, &root);
    assert!(
        common::error_chain(&delete).contains(".floor"),
        "{}",
        common::error_chain(&delete)
    );
    assert_holds(&store, acked, LEN, "full, in the process");
    assert_eq!(
        common::temp_files_under(&root).unwrap(),
        Vec::<PathBuf>::new()
    );
    drop(store);

    let reopened = DirStore::open(&root).unwrap();
    assert_holds(&reopened, acked, LEN, "full, reopened");

    // Space freed: writes and deletes go on, and everything is there.
    fs::remove_file(&filler).unwrap();
    reopened.apply(&batch).unwrap();
    assert!(reopened.delete(&record_key(0), Expect::Any).unwrap());
    assert_holds_from(&reopened, 1, acked + 2, LEN, "after freeing space");
    println!(
        "disk_full store=dir acknowledged={acked} first_error={:?} free_after={}",
        common::error_chain(&err),
        mount.free_bytes()
    );
}

#[test]
#[ignore = "needs root to mount a tmpfs: run with --ignored (.ci/run does)"]
fn log_store_on_a_full_disk() {
    // The journal starts with 4 MiB of preallocated space and grows in 4 MiB
    // steps: the disk fills up in the middle of a step.
    let Some(mount) = mount_or_skip("log_store_on_a_full_disk", "10m") else {
        return;
    };
    let root = mount.path.join("store");
    let filler = filler(&mount, 1 << 20);
    let open = || {
        LogStore::builder(&root)
            .no_background_compaction()
            .open()
            .unwrap()
    };
    let store = open();
    const LEN: usize = 16 << 10;
    let (acked, err) = fill(&store, LEN, 10_000);
    assert_os_error(&err, ENOSPC, &root);
    assert!(!store.is_poisoned());
    assert_holds(&store, acked, LEN, "full, in the process");
    // Regression: the store stopped at the first 4 MiB step it could not
    // preallocate whole, with megabytes of zero-filled journal unused.
    let written = store.stats().unwrap().journal_bytes;
    let file = fs::metadata(root.join("journal")).unwrap().len();
    assert!(
        file - written < 2 * LEN as u64,
        "ENOSPC after {acked} records with {} bytes of the journal zero-filled and unused",
        file - written
    );

    // A compaction needs room for a second journal: it fails, and leaves no
    // file of its own behind.
    let compaction = store.compact().unwrap_err();
    assert_os_error(&compaction, ENOSPC, &root);
    let leftovers: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal.new-"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());
    assert!(!store.is_poisoned());

    // Another handle opened on the full disk reads everything back.
    assert_holds(&open(), acked, LEN, "full, opened again");

    // Space freed: the same handle writes again.
    fs::remove_file(&filler).unwrap();
    let mut more = 0;
    while more < 8 {
        let i = acked + more;
        match store.put(&record_key(i), &value(i, LEN), Expect::Absent) {
            Ok(_) => more += 1,
            Err(e) => panic!(
                "after freeing space, record {i}: {}",
                common::error_chain(&e)
            ),
        }
    }
    assert_holds(&store, acked + more, LEN, "after freeing space");
    drop(store);
    assert_holds(&open(), acked + more, LEN, "after freeing space, reopened");
    println!(
        "disk_full store=log acknowledged={acked} then={more} first_error={:?} unused_at_enospc={}",
        common::error_chain(&err),
        file - written
    );
}

#[test]
#[ignore = "needs root to mount a tmpfs: run with --ignored (.ci/run does)"]
fn a_store_on_a_filesystem_remounted_read_only() {
    let Some(mount) = mount_or_skip("a_store_on_a_filesystem_remounted_read_only", "8m") else {
        return;
    };
    let dir_root = mount.path.join("dir-store");
    let log_root = mount.path.join("log-store");
    let k = Key::new(["jobs", "1"]).unwrap();
    {
        let log = LogStore::open(&log_root).unwrap();
        log.put(&k, b"v1", Expect::Absent).unwrap();
    }
    let dir = DirStore::open(&dir_root).unwrap();
    dir.put(&k, b"v1", Expect::Absent).unwrap();
    fs::write(mount.path.join("artifact"), b"old").unwrap();

    // A DirStore keeps no file open between calls, so the filesystem can be
    // remounted read-only under it, as the kernel does after some disk errors.
    mount.remount("ro").unwrap();
    let err = dir.put(&k, b"v2", Expect::Any).unwrap_err();
    assert_os_error(&err, EROFS, &dir_root);
    assert!(
        !dir.is_poisoned(),
        "nothing was written, nothing is in doubt"
    );
    assert_eq!(dir.get(&k).unwrap().unwrap().value, b"v1", "reads go on");
    assert_eq!(
        dir.list_all(&Prefix::new(["jobs"]).unwrap()).unwrap(),
        vec![k.clone()]
    );

    // Opening for writing needs writable files: a clear error naming one.
    let open_dir = DirStore::open(&dir_root).unwrap_err();
    assert_os_error(&open_dir, EROFS, &dir_root);
    let open_log = LogStore::open(&log_root).unwrap_err();
    assert_os_error(&open_log, EROFS, &log_root);
    let write = AtomicWriter::new()
        .write(mount.path.join("artifact"), b"new")
        .unwrap_err();
    assert_os_error(&write, EROFS, &mount.path);
    assert_eq!(fs::read(mount.path.join("artifact")).unwrap(), b"old");

    // Writable again: the same handle writes.
    mount.remount("rw").unwrap();
    dir.put(&k, b"v2", Expect::Any).unwrap();
    assert_eq!(dir.get(&k).unwrap().unwrap().value, b"v2");
    assert_eq!(
        LogStore::open(&log_root)
            .unwrap()
            .get(&k)
            .unwrap()
            .unwrap()
            .value,
        b"v1"
    );
    println!(
        "disk_full read_only: put {:?}; open dir {:?}; open log {:?}",
        common::error_chain(&err),
        common::error_chain(&open_dir),
        common::error_chain(&open_log)
    );
}

/// Regression: creating a `LogStore` on a disk without room for its first
/// journal (4 MiB of preallocated space) failed with ENOSPC but left the
/// cut-short `journal.new-*` file taking the disk's last free bytes until the
/// next open swept it.
#[test]
#[ignore = "needs root to mount a tmpfs: run with --ignored (.ci/run does)"]
fn log_store_created_on_a_disk_too_small_for_its_journal() {
    let Some(mount) = mount_or_skip(
        "log_store_created_on_a_disk_too_small_for_its_journal",
        "2m",
    ) else {
        return;
    };
    let root = mount.path.join("store");
    let free_before = mount.free_bytes();
    let err = LogStore::open(&root).unwrap_err();
    assert_os_error(&err, ENOSPC, &root);
    let names: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal"))
        .collect();
    assert_eq!(
        names,
        Vec::<String>::new(),
        "a failed creation left a journal"
    );
    let free_after = mount.free_bytes();
    assert!(
        free_before - free_after < 64 << 10,
        "the failed creation keeps {} bytes",
        free_before - free_after
    );
}
