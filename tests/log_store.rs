//! `LogStore`'s journal: torn and damaged frames, compaction (crashing at each of
//! its steps), failed flushes, and processes appending and compacting at once.
//! The Store contract itself is checked by `tests/conformance.rs` and
//! `tests/model.rs`.
// Test code, children included: a step that fails fails the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use common::child::{self, Child};
use common::key;
use jobsafe::testing::{Fault, Faulty, OpKind};
use jobsafe::vfs::StdVfs;
use jobsafe::{Batch, Entry, Error, Expect, Key, LogStore, Prefix, Store};

/// Every record under `k/`, by key name.
fn contents(store: &impl Store) -> BTreeMap<String, Vec<u8>> {
    contents_under(store, "k")
}

/// Every record under `top/`, by the key's second segment.
fn contents_under(store: &impl Store, top: &str) -> BTreeMap<String, Vec<u8>> {
    common::contents(store, &Prefix::new([top]).unwrap())
        .into_iter()
        .map(|(key, value)| (key.segments()[1].clone(), value))
        .collect()
}

/// A handle at `root` whose system calls `vfs` can fail, compacting only
/// when asked.
fn faulty_compactor(root: &Path) -> (LogStore<Faulty<StdVfs>>, Faulty<StdVfs>) {
    let vfs = Faulty::new(StdVfs);
    let store = LogStore::builder(root)
        .vfs(vfs.clone())
        .no_background_compaction()
        .open()
        .unwrap();
    (store, vfs)
}

fn journal_of(root: &Path) -> PathBuf {
    root.join("journal")
}

/// A store with `k/0`..`k/4`, one frame each, and where the last frame starts
/// and ends.
fn five_frames(root: &Path) -> (u64, u64) {
    let store = LogStore::open(root).unwrap();
    for i in 0..4 {
        store
            .put(
                &key(&format!("k/{i}")),
                format!("value {i}").as_bytes(),
                Expect::Absent,
            )
            .unwrap();
    }
    let start = store.stats().unwrap().journal_bytes;
    store.put(&key("k/4"), b"value 4", Expect::Absent).unwrap();
    let end = store.stats().unwrap().journal_bytes;
    (start, end)
}

#[test]
fn a_torn_last_frame_is_dropped_at_every_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    let (start, end) = five_frames(&original);
    let journal = fs::read(journal_of(&original)).unwrap();

    // What a crash mid-write leaves: the frame's first bytes, then either the
    // zeros that were there or garbage.
    for filler in [0u8, 0xA5] {
        for written in 0..(end - start) {
            let root = dir.path().join(format!("torn-{filler}-{written}"));
            common::copy_tree(&original, &root);
            let mut torn = journal.clone();
            for byte in &mut torn[(start + written) as usize..end as usize] {
                *byte = filler;
            }
            fs::write(journal_of(&root), &torn).unwrap();

            let store = LogStore::open(&root)
                .unwrap_or_else(|e| panic!("open with {written} bytes of the last frame: {e}"));
            let seen = contents(&store);
            assert_eq!(seen.len(), 4, "with {written} bytes of the last frame");
            assert!(!seen.contains_key("4"));
            // The tail was cleared: a new frame goes where the torn one was, and
            // nothing of the torn one is read after it.
            store.put(&key("k/5"), b"after", Expect::Absent).unwrap();
            drop(store);
            let store = LogStore::open(&root).unwrap();
            let seen = contents(&store);
            assert_eq!(seen.keys().collect::<Vec<_>>(), ["0", "1", "2", "3", "5"]);
            fs::remove_dir_all(&root).unwrap();
        }
    }
}

/// Two damaged frames: the later one is not intact, but its header names
/// this journal and a later sequence number, which no torn write leaves.
#[test]
fn a_damaged_frame_before_a_damaged_later_one_is_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let (last_start, last_end) = five_frames(&root);
    let path = journal_of(&root);
    let mut bytes = fs::read(&path).unwrap();
    // A byte in the payload of the frame before the last one, and one in the
    // last one's.
    bytes[last_start as usize - 3] ^= 0x40;
    bytes[last_end as usize - 3] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let err = LogStore::open(&root).unwrap_err();
    let Error::CorruptFile { reason, .. } = &err else {
        panic!("expected CorruptFile, got {err:?}");
    };
    assert!(reason.contains("damaged in the middle"), "{reason}");
    assert!(reason.contains(&format!("byte {last_start}")), "{reason}");
    // Nothing was cut off or rewritten.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_damaged_frame_before_an_intact_one_is_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let (last_start, _) = five_frames(&root);
    let path = journal_of(&root);
    let mut bytes = fs::read(&path).unwrap();
    // A byte in the payload of the frame before the last one.
    let damaged_at = last_start as usize - 3;
    bytes[damaged_at] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let err = LogStore::open(&root).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    let message = err.to_string();
    assert!(message.contains("journal"), "{message}");
    let Error::CorruptFile {
        path: reported,
        reason,
    } = &err
    else {
        panic!("expected CorruptFile, got {err:?}");
    };
    assert_eq!(reported, &path);
    assert!(reason.contains("damaged in the middle"), "{reason}");
    assert!(reason.contains(&format!("byte {last_start}")), "{reason}");
    // Nothing was cut off or rewritten.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

/// Values are read from the journal, checked against the checksum their
/// frame had: bytes damaged under a running handle (a sector lost after the
/// open) are reported with the journal's path and the value's place, never
/// served, and the other records are still served.
#[test]
fn a_value_damaged_on_disk_after_the_open_is_reported_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = LogStore::builder(&root).value_cache(0).open().unwrap();
    let damaged = b"a value the disk will lose".as_slice();
    store.put(&key("k/lost"), damaged, Expect::Absent).unwrap();
    store.put(&key("k/kept"), b"kept", Expect::Absent).unwrap();
    assert_eq!(store.get(&key("k/lost")).unwrap().unwrap().value, damaged);

    let path = journal_of(&root);
    let bytes = fs::read(&path).unwrap();
    let at = bytes
        .windows(damaged.len())
        .position(|w| w == damaged)
        .unwrap();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0; 4], at as u64 + 2).unwrap();

    let err = store.get(&key("k/lost")).unwrap_err();
    let Error::CorruptFile {
        path: reported,
        reason,
    } = &err
    else {
        panic!("expected CorruptFile, got {err:?}");
    };
    assert_eq!(reported, &path.canonicalize().unwrap());
    assert!(reason.contains("checksum"), "{reason}");
    assert!(reason.contains(&format!("byte {at}")), "{reason}");
    assert!(!err.is_transient(), "{err}");
    assert_eq!(store.get(&key("k/kept")).unwrap().unwrap().value, b"kept");
}

/// `tests/fixtures/logstore-0.1` is a store written by jobsafe 0.1.0: puts
/// of `fixture/k1`..`k5`, an overwrite of `k2`, a delete of `k3`, then a
/// batch putting `b1` and `b2` and deleting `k4`. The journal is cut at the
/// end of its last frame (0.1 wrote 4 MiB of zeros after it, which read as
/// its end as the end of the file does). It opens as it was, takes new
/// writes, and a compaction rewrites it into a journal that opens again.
#[test]
fn a_store_written_by_0_1_is_read_written_and_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir(&root).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/logstore-0.1");
    for name in ["jobsafe-logstore", "journal"] {
        fs::copy(fixture.join(name), root.join(name)).unwrap();
        let mut permissions = fs::metadata(root.join(name)).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
        fs::set_permissions(root.join(name), permissions).unwrap();
    }
    let fixture_key = |name: &str| Key::new(["fixture", name]).unwrap();
    let mut expected: BTreeMap<String, Vec<u8>> = [
        ("b1", "batch one"),
        ("b2", "batch two"),
        ("k1", "value 1, written by 0.1"),
        ("k2", "value 2, overwritten by 0.1"),
        ("k5", "value 5, written by 0.1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
    .collect();
    let read = |store: &LogStore| contents_under(store, "fixture");

    let store = LogStore::open(&root).unwrap();
    assert_eq!(read(&store), expected);
    let version = store.get(&fixture_key("k2")).unwrap().unwrap().version;
    store
        .put(
            &fixture_key("k2"),
            b"written by this release",
            Expect::Version(version),
        )
        .unwrap();
    expected.insert("k2".to_owned(), b"written by this release".to_vec());
    let compaction = store.compact().unwrap();
    assert_eq!((compaction.records, compaction.generation), (5, 1));
    assert_eq!(read(&store), expected);
    drop(store);

    let store = LogStore::open(&root).unwrap();
    assert_eq!(read(&store), expected);
    assert_eq!(store.stats().unwrap().generation, 1);
    // Versions go on from the highest 0.1 handed out.
    let newer = store
        .put(&fixture_key("k6"), b"six", Expect::Absent)
        .unwrap();
    assert!(newer > version, "{newer:?} after {version:?}");
}

/// A handle whose journal another handle compacted reloads it, by the path
/// that frees an index this large on a thread of the pool (the thread itself
/// is not observed here): the handle serves the new journal's records, and
/// its writes land in it.
#[test]
fn a_handle_reloads_a_large_journal_another_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let reader = LogStore::builder(&root)
        .durability(jobsafe::Durability::AtomicOnly)
        .no_background_compaction()
        .open()
        .unwrap();
    let records = 70_000;
    for first in (0..records).step_by(1_000) {
        let mut batch = Batch::new();
        for i in first..first + 1_000 {
            batch = batch.put(
                &key(&format!("k/{i:06}")),
                b"first".to_vec(),
                Expect::Absent,
            );
        }
        reader.apply(&batch).unwrap();
    }
    let compactor = LogStore::builder(&root)
        .durability(jobsafe::Durability::AtomicOnly)
        .no_background_compaction()
        .open()
        .unwrap();
    compactor
        .put(&key("k/000007"), b"second", Expect::Any)
        .unwrap();
    compactor.delete(&key("k/000008"), Expect::Any).unwrap();
    assert_eq!(compactor.compact().unwrap().records, records - 1);

    assert_eq!(
        reader.get(&key("k/000007")).unwrap().unwrap().value,
        b"second"
    );
    assert!(reader.get(&key("k/000008")).unwrap().is_none());
    assert_eq!(reader.stats().unwrap().generation, 1);
    reader.put(&key("k/000009"), b"third", Expect::Any).unwrap();
    assert_eq!(
        compactor.get(&key("k/000009")).unwrap().unwrap().value,
        b"third"
    );
    assert_eq!(contents(&compactor).len(), records - 1);
}

#[test]
fn compaction_keeps_every_record_and_never_reuses_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = LogStore::builder(&root)
        .no_background_compaction()
        .open()
        .unwrap();
    let mut highest = 0;
    for round in 0..20 {
        for i in 0..50 {
            let v = store
                .put(
                    &key(&format!("k/{i}")),
                    format!("{round}").as_bytes(),
                    Expect::Any,
                )
                .unwrap();
            highest = highest.max(v.get());
        }
    }
    for i in 40..50 {
        store.delete(&key(&format!("k/{i}")), Expect::Any).unwrap();
    }
    let before = contents(&store);
    let stats = store.stats().unwrap();

    let compaction = store.compact().unwrap();
    assert_eq!(compaction.records, 40);
    assert_eq!(compaction.generation, stats.generation + 1);
    assert!(
        compaction.bytes_after * 5 < compaction.bytes_before,
        "{compaction:?}"
    );
    assert_eq!(contents(&store), before);

    drop(store);
    let store = LogStore::open(&root).unwrap();
    assert_eq!(contents(&store), before);
    // The deleted keys' versions are gone from the journal, not forgotten.
    let v = store.put(&key("k/49"), b"again", Expect::Absent).unwrap();
    assert!(v.get() > highest);
}

#[test]
fn another_handle_sees_writes_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let a = LogStore::open(&root).unwrap();
    let b = LogStore::open(&root).unwrap();

    let v1 = a.put(&key("k/x"), b"1", Expect::Absent).unwrap();
    assert_eq!(b.get(&key("k/x")).unwrap().unwrap().version, v1);
    // B's compare-and-set is decided against A's write.
    let err = b.put(&key("k/x"), b"2", Expect::Absent).unwrap_err();
    assert_eq!(err.conflict_current(), Some(Some(v1)));

    a.compact().unwrap();
    // A reader that only reads finds the journal replaced, and what was
    // written into the new one.
    a.put(&key("k/z"), b"4", Expect::Absent).unwrap();
    assert_eq!(b.get(&key("k/z")).unwrap().unwrap().value, b"4");
    a.delete(&key("k/z"), Expect::Any).unwrap();
    let v2 = b.put(&key("k/x"), b"2", Expect::Version(v1)).unwrap();
    assert_eq!(a.get(&key("k/x")).unwrap().unwrap().value, b"2");
    b.compact().unwrap();
    a.put(&key("k/y"), b"3", Expect::Absent).unwrap();
    assert_eq!(
        contents(&b),
        BTreeMap::from([
            ("x".to_owned(), b"2".to_vec()),
            ("y".to_owned(), b"3".to_vec())
        ])
    );
    assert_eq!(a.stats().unwrap().generation, 2);
    assert!(a.get(&key("k/x")).unwrap().unwrap().version == v2);
}

/// A reader checks only the place of the next frame; a compaction appends
/// a notice there before it renames the new journal into place. A reader
/// that read the notice before the rename came checks the journal's name
/// from then on, and finds the new journal. (The rename is made by hand
/// here, after a compaction whose own rename failed: the notice is read
/// first, the journal replaced after, with nothing written in between.)
#[test]
fn a_reader_that_read_a_compactions_notice_finds_the_journal_replaced_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let (compactor, vfs) = faulty_compactor(&root);
    let reader = LogStore::open(&root).unwrap();
    compactor.put(&key("k/x"), b"1", Expect::Absent).unwrap();
    assert_eq!(reader.get(&key("k/x")).unwrap().unwrap().value, b"1");
    vfs.arm(Fault::nth(1).only([OpKind::Rename]));
    compactor.compact().unwrap_err();
    vfs.disarm();
    // The notice is read: nothing changed.
    assert_eq!(reader.get(&key("k/x")).unwrap().unwrap().value, b"1");

    // Another journal, where `k/x` is 2, renamed over the store's.
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    for name in ["jobsafe-logstore", "journal"] {
        fs::copy(root.join(name), elsewhere.join(name)).unwrap();
    }
    {
        let other = LogStore::builder(&elsewhere)
            .no_background_compaction()
            .open()
            .unwrap();
        other.put(&key("k/x"), b"2", Expect::Any).unwrap();
        other.compact().unwrap();
    }
    fs::rename(elsewhere.join("journal"), journal_of(&root)).unwrap();
    assert_eq!(reader.get(&key("k/x")).unwrap().unwrap().value, b"2");
}

/// A compaction that fails after its rename (the directory's flush fails,
/// which poisons the handle) leaves the compacting handle reading the
/// journal that is now in place, not the one it wrote its notice into.
#[test]
fn a_compaction_that_fails_after_its_rename_leaves_its_handle_reading_the_new_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let (compactor, vfs) = faulty_compactor(&root);
    let writer = LogStore::open(&root).unwrap();
    compactor.put(&key("k/x"), b"1", Expect::Absent).unwrap();
    let before = fs::metadata(journal_of(&root)).unwrap().ino();
    vfs.arm(Fault::from_nth(1).only([OpKind::DirSync]));
    compactor.compact().unwrap_err();
    vfs.disarm();
    let after = fs::metadata(journal_of(&root)).unwrap().ino();
    assert_ne!(
        before, after,
        "the rename did not happen: the case is not tested"
    );
    writer.put(&key("k/x"), b"2", Expect::Any).unwrap();
    assert_eq!(compactor.get(&key("k/x")).unwrap().unwrap().value, b"2");
}

#[test]
fn a_directory_that_is_not_a_log_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let err = LogStore::open(dir.path()).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read(dir.path().join("notes.txt")).unwrap(), b"mine");

    let missing = dir.path().join("missing");
    let err = LogStore::builder(&missing)
        .create(false)
        .open()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{err}"
    );
}

const MARKER: &str = "jobsafe-logstore";

#[test]
fn a_torn_marker_is_a_creation_cut_short_completed_when_creation_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    LogStore::open(root)
        .unwrap()
        .put(&key("k/1"), b"kept", Expect::Absent)
        .unwrap();
    let full = fs::read(root.join(MARKER)).unwrap();
    let torn: [Vec<u8>; 4] = [
        Vec::new(),
        vec![0; full.len()],
        full[..9].to_vec(),
        [&full[..4], &[0; 8][..], &full[12..]].concat(),
    ];
    for content in torn {
        fs::write(root.join(MARKER), &content).unwrap();
        let err = LogStore::builder(root).create(false).open().unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("creation cut short"), "{err}");
        assert!(err.to_string().contains(MARKER), "{err}");

        let store = LogStore::open(root).unwrap();
        assert_eq!(fs::read(root.join(MARKER)).unwrap(), full);
        assert_eq!(store.get(&key("k/1")).unwrap().unwrap().value, b"kept");
    }
    // Anything else there is another format, never overwritten.
    fs::write(root.join(MARKER), b"jobsafe LogStore, journal format 2\n").unwrap();
    let err = LogStore::open(root).unwrap_err();
    assert!(err.to_string().contains("unknown LogStore format"), "{err}");
}

#[test]
fn a_creation_cut_short_before_its_journal_is_completed() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = || {
        let root = tempfile::tempdir_in(dir.path()).unwrap().keep();
        LogStore::open(&root).unwrap();
        fs::remove_file(journal_of(&root)).unwrap();
        root
    };
    // Killed between the marker and the journal; and the marker empty as
    // well, as an older release in the relaxed mode could leave it after a
    // power loss.
    let missing = fresh();
    let empty_marker = fresh();
    fs::write(empty_marker.join(MARKER), b"").unwrap();
    for root in [missing, empty_marker] {
        let store = LogStore::open(&root).unwrap();
        store.put(&key("k/1"), b"1", Expect::Absent).unwrap();
        drop(store);
        let store = LogStore::builder(&root).create(false).open().unwrap();
        assert_eq!(store.get(&key("k/1")).unwrap().unwrap().value, b"1");
    }
}

#[test]
fn a_lost_journal_in_a_store_that_was_used_is_reported_not_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    LogStore::open(root).unwrap();
    fs::create_dir(root.join("quarantine")).unwrap();
    fs::write(root.join("notes.txt"), b"mine").unwrap();
    fs::remove_file(journal_of(root)).unwrap();
    let err = LogStore::open(root).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&journal_of(root).display().to_string()),
        "{text}"
    );
    assert!(
        text.contains("quarantine") && text.contains("notes.txt"),
        "{text}"
    );
    assert!(!journal_of(root).exists());
    // A torn marker beside files that are not a store's is reported too.
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join(MARKER), b"").unwrap();
    fs::write(other.path().join("notes.txt"), b"mine").unwrap();
    let err = LogStore::open(other.path()).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert_eq!(fs::read(other.path().join(MARKER)).unwrap(), b"");
}

/// Processes, and threads in each, that open the same new store at once.
const CREATORS: usize = 4;
const CREATOR_THREADS: usize = 3;
/// Fresh stores, each opened by all of them at once.
const FRESH_STORES: usize = 40;

/// In a creator child: for each `go <n>` from the parent, opens the store
/// `<n>` under the parent's directory from every thread at once, and reports
/// `done <n>` with each failure.
fn create_in_child() {
    let base = child::store_root();
    child::report("ready");
    while let Some(line) = child::receive() {
        let n = line.strip_prefix("go ").unwrap();
        let root = base.join(n);
        let start = std::sync::Barrier::new(CREATOR_THREADS);
        let failures: Vec<String> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..CREATOR_THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        LogStore::open(&root).err().map(|e| e.to_string())
                    })
                })
                .collect();
            threads
                .into_iter()
                .filter_map(|t| t.join().unwrap())
                .collect()
        });
        child::report(&format!("done {n} {failures:?}"));
    }
}

#[test]
fn processes_and_threads_creating_one_store_at_once_all_open_it() {
    if child::role().as_deref() == Some("creator") {
        return create_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let test = "processes_and_threads_creating_one_store_at_once_all_open_it";
    let mut children: Vec<Child> = (0..CREATORS)
        .map(|_| Child::spawn(test, "creator", &child::store_vars(dir.path())))
        .collect();
    for child in &mut children {
        assert_eq!(child.expect_report(), "ready");
    }
    let mut failures = Vec::new();
    for n in 0..FRESH_STORES {
        // Each round waits for the last: every store is new to all of them.
        for child in &mut children {
            child.send(&format!("go {n}"));
        }
        for child in &mut children {
            let report = child.expect_report();
            if report != format!("done {n} []") {
                failures.push(report);
            }
        }
    }
    for child in children {
        child.finish();
    }
    assert!(
        failures.is_empty(),
        "opens of a new store failed: {failures:#?}"
    );
    // Each is one store, made once: it opens without being created again,
    // and holds nothing but its own files.
    for n in 0..FRESH_STORES {
        let root = dir.path().join(n.to_string());
        let store = LogStore::builder(&root).create(false).open().unwrap();
        store.put(&key("k/1"), b"after", Expect::Absent).unwrap();
        let mut names: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "compact.lock")
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["handle.lock", "jobsafe-logstore", "journal", "lock"],
            "{n}"
        );
    }
}

/// From now on, aborts the process at the `step`th step through `vfs` (0: the
/// next), a step being a change to the filesystem or a flush: a crash at
/// exactly that step.
fn crash_at_step(vfs: &Faulty, step: u64) {
    let taken = AtomicU64::new(0);
    vfs.on_op(move |op| {
        let is_step = OpKind::MUTATIONS.contains(&op.kind) || OpKind::SYNCS.contains(&op.kind);
        if is_step && taken.fetch_add(1, Ordering::SeqCst) == step {
            std::process::abort();
        }
        None
    });
}

/// Records overwritten and deleted, so that compaction has dead frames to drop.
fn churned_store(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let store = LogStore::builder(root)
        .no_background_compaction()
        .open()
        .unwrap();
    for round in 0..5 {
        for i in 0..30 {
            store
                .put(
                    &key(&format!("k/{i}")),
                    format!("{i} in round {round}").as_bytes(),
                    Expect::Any,
                )
                .unwrap();
        }
    }
    for i in 0..10 {
        store.delete(&key(&format!("k/{i}")), Expect::Any).unwrap();
    }
    contents(&store)
}

#[test]
fn a_crash_at_any_step_of_compaction_loses_nothing() {
    if child::role().as_deref() == Some("compactor") {
        let steps: u64 = child::var("JOBSAFE_TEST_STEPS").parse().unwrap();
        let vfs = Faulty::new(StdVfs);
        let store = LogStore::builder(child::store_root())
            .vfs(vfs.clone())
            .no_background_compaction()
            .open()
            .unwrap();
        // Armed only now: the countdown runs through the compaction alone.
        crash_at_step(&vfs, steps);
        store.compact().unwrap();
        child::report("compacted");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let prepared = dir.path().join("prepared");
    let expected = churned_store(&prepared);
    let mut crashes = 0;
    for steps in 0.. {
        assert!(steps < 200, "compaction never completed");
        let root = dir.path().join(format!("crash-{steps}"));
        common::copy_tree(&prepared, &root);
        let mut vars = child::store_vars(&root);
        vars.insert("JOBSAFE_TEST_STEPS", steps.to_string());
        let child = Child::spawn(
            "a_crash_at_any_step_of_compaction_loses_nothing",
            "compactor",
            &vars,
        );
        let (status, reports) = child.wait();
        let compacted = reports.iter().any(|r| r == "compacted");
        assert!(
            compacted || status.code().is_none(),
            "child failed with {status}"
        );

        let store = LogStore::open(&root)
            .unwrap_or_else(|e| panic!("reopen after a crash at step {steps}: {e}"));
        assert_eq!(contents(&store), expected, "after a crash at step {steps}");
        store.put(&key("k/new"), b"works", Expect::Absent).unwrap();
        let leftovers: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("journal."))
            .collect();
        assert!(leftovers.is_empty(), "after step {steps}: {leftovers:?}");
        fs::remove_dir_all(&root).unwrap();
        if compacted {
            break;
        }
        crashes += 1;
    }
    assert!(
        crashes >= 4,
        "only {crashes} steps: the countdown did not reach compaction"
    );
}

/// A compaction whose system calls fail one at a time, each in its own run,
/// in shared and in exclusive mode: whatever it reports, the handle goes on
/// serving every record, and every write acknowledged after it (the handle
/// not poisoned) is found by the next open. A handle left writing to a
/// journal that a rename had already replaced would lose them.
#[test]
fn a_compaction_failing_at_any_one_step_loses_no_later_write() {
    let dir = tempfile::tempdir().unwrap();
    for exclusive in [false, true] {
        let mut step = 1;
        loop {
            let root = dir.path().join(format!("{exclusive}-{step}"));
            let vfs = Faulty::new(StdVfs);
            let store = LogStore::builder(&root)
                .vfs(vfs.clone())
                .exclusive(exclusive)
                .value_cache(0)
                .no_background_compaction()
                .open()
                .unwrap();
            let mut expected = BTreeMap::new();
            for round in 0..3 {
                for i in 0..10 {
                    let value = format!("value {i} of round {round}").into_bytes();
                    let k = key(&format!("k/{i}"));
                    store.put(&k, &value, Expect::Any).unwrap();
                    expected.insert(i.to_string(), value);
                }
            }
            vfs.arm(Fault::nth(step));
            let compacted = store.compact();
            vfs.disarm();
            let failed = !vfs.injected().is_empty();
            assert!(failed || compacted.is_ok(), "step {step}: {compacted:?}");
            if !store.is_poisoned() {
                assert_eq!(contents(&store), expected, "step {step}");
                for i in 0..3 {
                    let value = format!("after step {step}").into_bytes();
                    store
                        .put(&key(&format!("k/{i}")), &value, Expect::Any)
                        .unwrap();
                    expected.insert(i.to_string(), value);
                }
            }
            drop(store);
            let reopened = LogStore::open(&root).unwrap();
            assert_eq!(
                contents(&reopened),
                expected,
                "exclusive {exclusive}, step {step} ({compacted:?})"
            );
            drop(reopened);
            fs::remove_dir_all(&root).unwrap();
            if !failed {
                break;
            }
            step += 1;
        }
        assert!(
            step > 10,
            "only {step} steps: the fault never reached compaction"
        );
    }
}

#[test]
fn a_failed_flush_poisons_until_reopened_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let vfs = Faulty::new(StdVfs);
    let store = LogStore::builder(&root).vfs(vfs.clone()).open().unwrap();
    let acknowledged = store.put(&key("k/kept"), b"1", Expect::Absent).unwrap();

    vfs.arm(Fault::from_nth(1).only(OpKind::SYNCS));
    let err = store
        .put(&key("k/unsure"), b"2", Expect::Absent)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io { step, .. } if step.is_flush()),
        "{err}"
    );
    assert!(!vfs.injected().is_empty());
    vfs.disarm();
    let err = store
        .put(&key("k/later"), b"3", Expect::Absent)
        .unwrap_err();
    assert!(err.is_poisoned(), "{err}");
    // Reads go on. Whether the write whose flush failed is there is unknown,
    // to the store as to its caller: reads may see it, as a restart may.
    assert_eq!(
        store.get(&key("k/kept")).unwrap().unwrap().version,
        acknowledged
    );
    let unsure = store.get(&key("k/unsure")).unwrap().map(|e| e.value);
    assert!(unsure.is_none() || unsure.as_deref() == Some(b"2".as_slice()));

    drop(store);
    let store = LogStore::open(&root).unwrap();
    assert_eq!(
        store.get(&key("k/kept")).unwrap().unwrap().version,
        acknowledged
    );
    store.put(&key("k/later"), b"3", Expect::Absent).unwrap();
}

const APPENDERS: usize = 3;
const INCREMENTS: u64 = 60;

#[test]
fn processes_appending_and_compacting_at_once_lose_no_update() {
    match child::role().as_deref() {
        Some("appender") => {
            let who = child::var("JOBSAFE_TEST_WHO");
            let store = LogStore::open(child::store_root()).unwrap();
            child::ready_then_wait();
            let counter = key("k/counter");
            let mut done = 0;
            while done < INCREMENTS {
                let entry = store.get(&counter).unwrap().unwrap();
                let n: u64 = String::from_utf8(entry.value).unwrap().parse().unwrap();
                match store.put(
                    &counter,
                    (n + 1).to_string().as_bytes(),
                    Expect::Version(entry.version),
                ) {
                    Ok(_) => {
                        store
                            .put(&key(&format!("k/{who}-{done}")), b"mine", Expect::Absent)
                            .unwrap();
                        done += 1;
                    }
                    Err(e) if e.is_conflict() => {}
                    Err(e) => panic!("{e}"),
                }
            }
            return;
        }
        Some("compactor") => {
            let store = LogStore::open(child::store_root()).unwrap();
            child::ready_then_wait();
            for _ in 0..15 {
                store.compact().unwrap();
            }
            return;
        }
        _ => {}
    }

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    LogStore::open(&root)
        .unwrap()
        .put(&key("k/counter"), b"0", Expect::Absent)
        .unwrap();
    let test = "processes_appending_and_compacting_at_once_lose_no_update";
    let mut children: Vec<Child> = (0..APPENDERS)
        .map(|who| {
            let mut vars = child::store_vars(&root);
            vars.insert("JOBSAFE_TEST_WHO", who.to_string());
            Child::spawn(test, "appender", &vars)
        })
        .collect();
    children.push(Child::spawn(test, "compactor", &child::store_vars(&root)));
    child::start_together(&mut children);
    for child in children {
        child.finish();
    }

    let store = LogStore::open(&root).unwrap();
    let seen = contents(&store);
    assert_eq!(
        seen["counter"],
        (APPENDERS as u64 * INCREMENTS).to_string().as_bytes()
    );
    assert_eq!(seen.len(), 1 + APPENDERS * INCREMENTS as usize);
    assert!(store.stats().unwrap().generation >= 15);
}

#[test]
fn a_transaction_too_large_for_a_frame_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let before = store.stats().unwrap().journal_bytes;
    // Each value is within the store's limit; together they are over the
    // transaction's. Zeroed by the allocator and never touched: they cost no
    // memory.
    let values = LogStore::MAX_TRANSACTION_BYTES / Entry::MAX_VALUE_LEN;
    let mut batch = Batch::new();
    for i in 0..values {
        let value = vec![0u8; Entry::MAX_VALUE_LEN];
        batch = batch.put(&key(&format!("k/big-{i}")), value, Expect::Any);
    }
    let err = store.apply(&batch).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TooLarge { key: None, size, limit, .. }
                if *size > LogStore::MAX_TRANSACTION_BYTES
                    && *limit == LogStore::MAX_TRANSACTION_BYTES
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(store.stats().unwrap().journal_bytes, before);
    assert_eq!(store.get(&key("k/big-0")).unwrap(), None);
}

#[test]
fn stats_while_writers_commit_does_not_deadlock() {
    // Stats read the index and the journal, as writers do in the other order;
    // this ran into a deadlock within a few dozen writes before the fix.
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path())
        .durability(jobsafe::Durability::AtomicOnly)
        .open()
        .unwrap();
    std::thread::scope(|scope| {
        for writer in 0..2 {
            let store = &store;
            scope.spawn(move || {
                for i in 0..2_000 {
                    store
                        .put(&key(&format!("k/{writer}-{i}")), b"x", Expect::Any)
                        .unwrap();
                }
            });
        }
        let store = &store;
        scope.spawn(move || {
            for _ in 0..2_000 {
                store.stats().unwrap();
            }
        });
    });
    assert_eq!(store.stats().unwrap().records, 4_000);
}

#[test]
fn a_handle_growing_the_journal_keeps_what_another_handle_wrote_there() {
    // A grows the journal past its first preallocated space and writes there;
    // B, whose idea of the file's length is older, must not zero it.
    let dir = tempfile::tempdir().unwrap();
    let a = LogStore::open(dir.path()).unwrap();
    let b = LogStore::open(dir.path()).unwrap();
    let value = vec![7u8; 1 << 20];
    for i in 0..6 {
        a.put(&key(&format!("k/a{i}")), &value, Expect::Absent)
            .unwrap();
    }
    for i in 0..6 {
        b.put(&key(&format!("k/b{i}")), &value, Expect::Absent)
            .unwrap();
    }
    drop((a, b));
    let store = LogStore::open(dir.path()).unwrap();
    let seen = contents(&store);
    assert_eq!(seen.len(), 12);
    assert!(seen.values().all(|v| v == &value));
}

#[test]
fn a_quarantined_record_keeps_its_key_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let key = Key::new(["jobs", "line\nbreak", "a/b"]).unwrap();
    store.put(&key, b"evidence", Expect::Absent).unwrap();

    let moved = store.quarantine(&key).unwrap().unwrap();
    assert_eq!(moved.key, key);
    let record = PathBuf::from(&moved.location);
    assert_eq!(fs::read(&record).unwrap(), b"evidence");
    // The key beside it: its segments as JSON, on one line.
    let key_file = fs::read_to_string(record.with_extension("key")).unwrap();
    assert_eq!(key_file, "[\"jobs\",\"line\\nbreak\",\"a/b\"]\n");
    let segments: Vec<String> = serde_json::from_str(&key_file).unwrap();
    assert_eq!(Key::new(segments).unwrap(), key);
    assert!(store.get(&key).unwrap().is_none());
}

/// Another handle's writes (another process's, in a service) are told to a
/// watcher of a prefix above them, once the kernel reports the journal
/// changed; so is a journal another handle replaced by compacting it.
#[cfg(target_os = "linux")]
#[test]
fn writes_of_another_handle_are_told_to_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let service = LogStore::open(&root).unwrap();
    let other = LogStore::open(&root).unwrap();
    let changes = service
        .changes_by_others(&Prefix::new(["jobs"]).unwrap())
        .expect("a shared LogStore tells on Linux");
    let seen = changes.seen();
    other
        .put(&key("jobs/1"), b"queued", Expect::Absent)
        .unwrap();
    let seen = common::told_after(&changes, seen);
    // Told after the frames were read: the watcher finds the write at once.
    assert_eq!(
        service.get(&key("jobs/1")).unwrap().unwrap().value,
        b"queued"
    );
    for n in 0..50 {
        other
            .put(&key(&format!("locks/{n}")), b"x", Expect::Any)
            .unwrap();
    }
    // A compaction replaces the journal: every watcher is told, though only
    // keys it does not watch were written.
    other.compact().unwrap();
    let seen = common::told_after(&changes, seen);
    other
        .put(&key("jobs/2"), b"queued", Expect::Absent)
        .unwrap();
    common::told_after(&changes, seen);
    assert!(service.get(&key("jobs/2")).unwrap().is_some());
}

/// In exclusive mode nobody else writes: nothing to tell.
#[test]
fn an_exclusive_log_store_has_no_other_writers_to_tell_of() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path().join("store"))
        .exclusive(true)
        .open()
        .unwrap();
    assert!(store.changes_by_others(&Prefix::all()).is_none());
}
