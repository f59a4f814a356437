//! DirStore's own tests: file naming, on-disk format, recovery. The contract itself
//! is checked by the conformance suite in `tests/`.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::testing::{Fault, Faulty, InjectedError, OpKind};

/// The marker a store writes at its root.
const MARKER_FOR_TESTS: &str = "jobsafe-dirstore 1\n";

fn open(dir: &Path) -> DirStore {
    DirStore::open(dir).unwrap()
}

fn key(segments: &[&str]) -> Key {
    Key::new(segments.iter().copied()).unwrap()
}

/// Every file and directory name under `dir`, recursively.
fn names_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        out.push(entry.file_name().to_string_lossy().into_owned());
        if entry.file_type().unwrap().is_dir() {
            out.extend(names_under(&entry.path()));
        }
    }
    out
}

fn put_get_list(store: &DirStore, k: &Key) {
    let v = store.put(k, k.name().as_bytes(), Expect::Absent).unwrap();
    let entry = store.get(k).unwrap().unwrap();
    assert_eq!(
        (entry.value.as_slice(), entry.version),
        (k.name().as_bytes(), v)
    );
    assert!(store.list_all(&Prefix::all()).unwrap().contains(k));
    assert!(store.path_of(k).starts_with(store.root().join("data")));
}

#[test]
fn dot_dot_stays_inside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s"));
    for k in [
        key(&[".."]),
        key(&["..", ".."]),
        key(&[".", "x"]),
        key(&["a", "..", "b"]),
    ] {
        put_get_list(&store, &k);
    }
    // Nothing was written beside the store.
    assert_eq!(
        names_under(dir.path()).iter().filter(|n| *n == "s").count(),
        1
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn slashes_and_backslashes_are_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let slash = key(&["a/b"]);
    let nested = key(&["a", "b"]);
    let backslash = key(&["a\\b"]);
    for k in [&slash, &nested, &backslash] {
        put_get_list(&store, k);
    }
    assert_eq!(
        store.list_all(&Prefix::new(["a"]).unwrap()).unwrap(),
        vec![nested]
    );
    for name in names_under(&store.root().join("data")) {
        assert!(!name.contains('\\'), "{name}");
    }
}

#[test]
fn nul_is_rejected_by_key() {
    assert!(Key::new(["a\0b"]).is_err());
}

#[test]
fn leading_dots_never_make_hidden_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for k in [key(&[".hidden"]), key(&[".git", "config"]), key(&["."])] {
        put_get_list(&store, &k);
    }
    for name in names_under(&store.root().join("data")) {
        assert!(!name.starts_with('.'), "{name}");
    }
}

#[test]
fn case_only_differences_are_distinct_files_even_ignoring_case() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let keys = [key(&["ab"]), key(&["Ab"]), key(&["aB"]), key(&["AB"])];
    for k in &keys {
        put_get_list(&store, k);
    }
    let lowered: BTreeSet<String> = names_under(&store.root().join("data"))
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    assert_eq!(lowered.len(), 4, "{lowered:?}");
    for k in &keys {
        assert_eq!(store.get(k).unwrap().unwrap().value, k.name().as_bytes());
    }
}

#[test]
fn very_long_segments_are_shortened_listed_and_distinct() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let long_a = "a".repeat(1024);
    let mut long_b = long_a.clone();
    long_b.replace_range(1023.., "b");
    let wide = "日".repeat(341);
    let keys = [
        key(&[&long_a]),
        key(&[&long_b]),
        key(&[&long_a, &wide]),
        key(&[&wide, &long_b, "x"]),
    ];
    for k in &keys {
        put_get_list(&store, k);
    }
    for name in names_under(&store.root().join("data")) {
        assert!(name.len() <= 255, "{}", name.len());
    }
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(store.list_all(&Prefix::all()).unwrap(), sorted);
    assert_eq!(
        store
            .list_all(&Prefix::new([long_a.as_str()]).unwrap())
            .unwrap(),
        vec![keys[0].clone(), keys[2].clone()]
    );
}

#[test]
fn record_files_are_readable_text_with_key_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key(&["jobs", "lic:abc"]);
    let v = store
        .put(&k, br#"{"status":"queued"}"#, Expect::Absent)
        .unwrap();
    let text = std::fs::read_to_string(store.path_of(&k)).unwrap();
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with(&format!("jobsafe-record 1 {} ", v.get())),
        "{header}"
    );
    assert!(header.ends_with(r#"["jobs","lic:abc"]"#), "{header}");
    assert!(text.ends_with(r#"{"status":"queued"}"#));
}

#[test]
fn edited_truncated_or_moved_files_are_corrupt_never_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (key(&["a"]), key(&["b"]));
    store.put(&a, b"alpha", Expect::Absent).unwrap();
    store.put(&b, b"beta", Expect::Absent).unwrap();
    let path = store.path_of(&a);
    let good = std::fs::read(&path).unwrap();

    let damaged: [Vec<u8>; 3] = [
        good[..good.len() - 1].to_vec(),
        [&good[..], b"x"].concat(),
        std::fs::read(store.path_of(&b)).unwrap(),
    ];
    for bytes in damaged {
        std::fs::write(&path, &bytes).unwrap();
        for err in [
            store.get(&a).unwrap_err(),
            store.put(&a, b"x", Expect::Absent).unwrap_err(),
            store.put(&a, b"x", Expect::Any).unwrap_err(),
            store.delete(&a, Expect::Any).unwrap_err(),
            store
                .apply(&Batch::new().put(&a, b"x", Expect::Any))
                .unwrap_err(),
        ] {
            assert!(
                matches!(&err, Error::Corrupt { key, .. } if *key == a),
                "{err}"
            );
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
        // The bad bytes are still there, untouched.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}

#[test]
fn quarantine_keeps_bytes_and_never_reuses_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key(&["locks", "vault"]);
    let mut v = store.put(&k, b"0", Expect::Absent).unwrap();
    for i in 1..5 {
        v = store
            .put(&k, i.to_string().as_bytes(), Expect::Version(v))
            .unwrap();
    }
    // Damage the header beyond repair: the version cannot be read back.
    std::fs::write(store.path_of(&k), b"garbage").unwrap();
    let moved = store.quarantine(&k).unwrap().unwrap();
    assert_eq!(std::fs::read(&moved.location).unwrap(), b"garbage");
    assert!(store.get(&k).unwrap().is_none());
    let fresh = store.put(&k, b"new", Expect::Absent).unwrap();
    assert!(fresh > v, "{fresh:?} must be above {v:?}");
    assert!(
        store
            .put(&k, b"stale", Expect::Version(v))
            .unwrap_err()
            .is_conflict()
    );
}

#[test]
fn recreated_key_outranks_every_old_version_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(&["ledger", "job"]);
    let old = {
        let store = open(dir.path());
        let v = store.put(&k, b"1", Expect::Absent).unwrap();
        let v = store.put(&k, b"2", Expect::Version(v)).unwrap();
        assert!(store.delete(&k, Expect::Version(v)).unwrap());
        v
    };
    let store = open(dir.path());
    let new = store.put(&k, b"again", Expect::Absent).unwrap();
    assert!(new > old);
}

#[test]
fn journal_left_by_a_crash_is_completed_on_open_and_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key(&["acct", "a"]), key(&["acct", "b"]));
    let store = open(dir.path());
    store.put(&a, b"10", Expect::Absent).unwrap();
    store.put(&b, b"0", Expect::Absent).unwrap();
    let va = store.get(&a).unwrap().unwrap().version;

    // What a process killed right after writing its journal leaves behind.
    let changes = vec![
        Change::Put {
            key: a.clone(),
            file: record_file::encode(&a, Version::new(va.get() + 1), b"9"),
        },
        Change::Delete { key: b.clone() },
    ];
    let stripes: Vec<usize> = [&a, &b].iter().map(|k| store.stripe(k)).collect();
    let mut sorted = stripes.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let journal = store.layout().journal.join(journal::name(&sorted));
    std::fs::write(&journal, journal::encode(&changes)).unwrap();

    // The next reader of either key completes it before answering.
    assert_eq!(store.get(&b).unwrap(), None);
    assert_eq!(store.get(&a).unwrap().unwrap().value, b"9");
    assert!(!journal.exists());

    // And so does the next open.
    std::fs::write(&journal, journal::encode(&changes)).unwrap();
    drop(store);
    let reopened = open(dir.path());
    assert!(!journal.exists());
    assert_eq!(reopened.get(&a).unwrap().unwrap().value, b"9");
}

#[test]
fn corrupt_journal_stops_writes_to_its_stripes_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key(&["x"]);
    store.put(&k, b"1", Expect::Absent).unwrap();
    let journal = store
        .layout()
        .journal
        .join(journal::name(&[store.stripe(&k)]));
    std::fs::write(&journal, b"jobsafe-journal 1\nP 9999\n").unwrap();
    let err = store.put(&k, b"2", Expect::Any).unwrap_err();
    assert!(
        matches!(&err, Error::CorruptFile { path, .. } if *path == journal),
        "{err}"
    );
    assert!(
        journal.exists(),
        "a corrupt journal must be kept for inspection"
    );
}

#[test]
fn refuses_a_foreign_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let err = DirStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
}

#[test]
fn open_without_create_names_the_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = DirStore::builder(&missing)
        .create(false)
        .open()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn failed_fsync_poisons_writes_but_not_reads_and_reopen_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = Faulty::new(StdVfs);
    let store = DirStore::builder(dir.path())
        .vfs(vfs.clone())
        .open()
        .unwrap();
    let k = key(&["k"]);
    let v = store.put(&k, b"kept", Expect::Absent).unwrap();

    vfs.arm(Fault::from_nth(1).only([OpKind::FileSync]));
    let err = store.put(&k, b"lost?", Expect::Any).unwrap_err();
    assert!(
        matches!(&err, Error::Io { step, .. } if step.is_flush()),
        "{err}"
    );
    assert!(store.is_poisoned());
    vfs.disarm();
    for err in [
        store.put(&k, b"x", Expect::Any).unwrap_err(),
        store.delete(&k, Expect::Any).unwrap_err(),
        store
            .apply(&Batch::new().put(&k, b"x", Expect::Any))
            .unwrap_err(),
        store.quarantine(&k).unwrap_err(),
    ] {
        assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    }
    assert_eq!(store.get(&k).unwrap().unwrap().version, v);

    let reopened = DirStore::open(dir.path()).unwrap();
    assert!(!reopened.is_poisoned());
    assert!(reopened.put(&k, b"after", Expect::Version(v)).is_ok());
}

/// Poisoning follows the failed step's action, not the words of its message:
/// a failed flush of a directory poisons as a failed flush of a file does,
/// and a failed write, which leaves nothing on disk in doubt, does not.
#[test]
fn a_failed_flush_of_a_file_or_a_directory_poisons_and_a_failed_write_does_not() {
    for (op, flush) in [
        (OpKind::DirSync, true),
        (OpKind::FileSync, true),
        (OpKind::Write, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Faulty::new(StdVfs);
        let store = DirStore::builder(dir.path())
            .vfs(vfs.clone())
            .open()
            .unwrap();
        vfs.arm(Fault::nth(1).only([op]));
        // A key in a new directory: the first directory flush is the one that
        // makes its entry durable, before the record is written.
        let err = store
            .put(&key(&["jobs", "new-dir", "1"]), b"x", Expect::Absent)
            .unwrap_err();
        assert_eq!(vfs.injected().len(), 1, "{op:?}: the fault was not reached");
        let Error::Io { step, .. } = &err else {
            panic!("{op:?}: expected an I/O error, got {err:?}");
        };
        let expected = if flush {
            crate::vfs::IoAction::Flush
        } else {
            crate::vfs::IoAction::Write
        };
        assert_eq!(step.action(), expected, "{op:?}: {err}");
        assert_eq!(store.is_poisoned(), flush, "{op:?}: {err}");
    }
}

#[test]
fn a_batch_that_fails_after_its_journal_is_durable_is_pending_and_completed_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = Faulty::new(StdVfs);
    let store = DirStore::builder(dir.path())
        .vfs(vfs.clone())
        .open()
        .unwrap();
    let (a, b) = (key(&["a"]), key(&["b"]));
    // The journal's fsync passes; the first record's fails, and every one after.
    vfs.arm(Fault::from_nth(2).only([OpKind::FileSync]));
    let batch = Batch::new()
        .put(&a, b"1", Expect::Absent)
        .put(&b, b"2", Expect::Absent);
    let err = store.apply(&batch).unwrap_err();
    assert!(matches!(err, Error::BatchPending { .. }), "{err}");
    assert!(err.to_string().contains("journal"), "{err}");
    assert!(store.is_poisoned());
    drop(store);

    // Not lost, and not to be applied again: the next open completes it.
    let reopened = DirStore::open(dir.path()).unwrap();
    assert_eq!(reopened.get(&a).unwrap().unwrap().value, b"1");
    assert_eq!(reopened.get(&b).unwrap().unwrap().value, b"2");
    assert!(reopened.apply(&batch).unwrap_err().is_conflict());
}

#[test]
fn a_put_costs_one_file_sync_and_one_directory_sync() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = crate::testing::Counting::new(StdVfs);
    let store = DirStore::builder(dir.path())
        .vfs(vfs.clone())
        .open()
        .unwrap();
    let k = key(&["jobs", "1"]);
    store.put(&k, b"x", Expect::Absent).unwrap();
    let before = vfs.counts();
    store.put(&k, b"y", Expect::Any).unwrap();
    let after = vfs.counts();
    assert_eq!(after.file_syncs - before.file_syncs, 1);
    assert_eq!(after.dir_syncs - before.dir_syncs, 1);
    assert_eq!(after.renames - before.renames, 1);
}

#[test]
fn a_second_write_into_a_directory_costs_no_flush_of_its_parents() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = crate::testing::Counting::new(StdVfs);
    let store = DirStore::builder(dir.path())
        .vfs(vfs.clone())
        .open()
        .unwrap();
    let deep = |name: &str| key(&["tenants", "t1", "jobs", name]);
    store.put(&deep("1"), b"x", Expect::Absent).unwrap();
    // Another key in the same directory, written by the same handle: the
    // record's own flushes only (the file and its directory), and an `lstat`
    // per directory on the way.
    let before = vfs.counts();
    store.put(&deep("2"), b"y", Expect::Absent).unwrap();
    let after = vfs.counts();
    assert_eq!(after.dir_syncs - before.dir_syncs, 1);
    assert_eq!(after.file_syncs - before.file_syncs, 1);
}

#[test]
fn a_directory_another_handle_made_is_flushed_into_its_parent_once() {
    let dir = tempfile::tempdir().unwrap();
    let maker = open(dir.path());
    maker
        .put(&key(&["tenants", "t1", "jobs", "1"]), b"x", Expect::Absent)
        .unwrap();
    // A second handle, as another process would be, finds the three
    // directories on the way there: it cannot know whether their maker
    // flushed them yet, so its first write flushes the parent of each.
    let vfs = crate::testing::Counting::new(StdVfs);
    let writer = DirStore::builder(dir.path())
        .vfs(vfs.clone())
        .open()
        .unwrap();
    let before = vfs.counts();
    writer
        .put(&key(&["tenants", "t1", "jobs", "2"]), b"y", Expect::Absent)
        .unwrap();
    let after = vfs.counts();
    assert_eq!(after.dir_syncs - before.dir_syncs, 3 + 1);
    // Known from then on: the next write flushes only its own directory.
    let before = vfs.counts();
    writer
        .put(&key(&["tenants", "t1", "jobs", "3"]), b"z", Expect::Absent)
        .unwrap();
    let after = vfs.counts();
    assert_eq!(after.dir_syncs - before.dir_syncs, 1);
}

#[test]
fn a_directory_pruned_and_made_again_by_another_handle_is_flushed_again() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = crate::testing::Counting::new(StdVfs);
    let writer = DirStore::builder(dir.path())
        .vfs(vfs.clone())
        .open()
        .unwrap();
    let other = open(dir.path());
    let (a, b) = (key(&["q", "a"]), key(&["q", "b"]));
    let q = dir.path().join("data").join("q.d");
    let inode =
        |path: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
    writer.put(&a, b"1", Expect::Absent).unwrap();
    let first = inode(&q);
    // The other handle deletes the directory's last key (pruning it) and
    // makes it again: another directory under the same name.
    other.delete(&a, Expect::Any).unwrap();
    assert!(!q.exists());
    other.put(&b, b"2", Expect::Absent).unwrap();
    let before = vfs.counts();
    writer.put(&a, b"3", Expect::Absent).unwrap();
    let after = vfs.counts();
    // Unless the filesystem gave the new directory the old one's inode
    // number, which is what the rule cannot see (see `KnownDurable`).
    let flushes = if inode(&q) == first { 1 } else { 1 + 1 };
    assert_eq!(after.dir_syncs - before.dir_syncs, flushes);
}

#[test]
fn a_torn_marker_is_a_creation_cut_short_completed_when_creation_is_allowed() {
    let full = MARKER_FOR_TESTS.as_bytes();
    let torn: [Vec<u8>; 4] = [
        Vec::new(),
        vec![0; full.len()],
        full[..7].to_vec(),
        [&full[..5], &[0; 6][..], &full[11..]].concat(),
    ];
    for content in torn {
        let dir = tempfile::tempdir().unwrap();
        let k = key(&["jobs", "1"]);
        open(dir.path()).put(&k, b"kept", Expect::Absent).unwrap();
        let marker = dir.path().join("jobsafe-dirstore");
        std::fs::write(&marker, &content).unwrap();

        let err = DirStore::builder(dir.path())
            .create(false)
            .open()
            .unwrap_err();
        assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
        assert!(err.to_string().contains("creation cut short"), "{err}");
        assert!(err.to_string().contains("jobsafe-dirstore"), "{err}");

        let store = open(dir.path());
        assert_eq!(std::fs::read(&marker).unwrap(), full);
        assert_eq!(store.get(&k).unwrap().unwrap().value, b"kept");
    }
}

#[test]
fn a_torn_marker_beside_files_not_of_a_store_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobsafe-dirstore"), b"").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let err = DirStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("jobsafe-dirstore")).unwrap(),
        b""
    );
    // Anything else at the marker is another format, never overwritten.
    std::fs::write(dir.path().join("jobsafe-dirstore"), b"jobsafe-dirstore 2\n").unwrap();
    std::fs::remove_file(dir.path().join("notes.txt")).unwrap();
    let err = DirStore::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("not a store of this format"),
        "{err}"
    );
}

#[test]
fn deletes_leave_no_empty_directories_and_racing_writers_recreate_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let data = store.root().join("data");
    // Writers and deleters of different keys in one directory, racing.
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..50 {
                    let k = key(&["jobs", "shared", &format!("{t}-{i}")]);
                    store.put(&k, b"x", Expect::Absent).unwrap();
                    assert!(store.delete(&k, Expect::Any).unwrap());
                }
            });
        }
    });
    assert!(store.list_all(&Prefix::all()).unwrap().is_empty());
    assert_eq!(names_under(&data), Vec::<String>::new());
}

#[test]
fn a_record_whose_damaged_header_shows_a_lower_version_cannot_bring_old_versions_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key(&["jobs", "1"]);
    let mut v = store.put(&k, b"0", Expect::Absent).unwrap();
    for i in 1..31 {
        v = store
            .put(&k, i.to_string().as_bytes(), Expect::Version(v))
            .unwrap();
    }
    // A flipped bit turns the version in the header into a smaller number.
    let path = store.path_of(&k);
    let text = std::fs::read(&path).unwrap();
    let damaged = String::from_utf8_lossy(&text).replacen(&format!(" {} ", v.get()), " 1 ", 1);
    assert_ne!(
        damaged.as_bytes(),
        text.as_slice(),
        "the version is in the header"
    );
    std::fs::write(&path, damaged).unwrap();
    store.quarantine(&k).unwrap().unwrap();
    let reborn = store.put(&k, b"new", Expect::Absent).unwrap();
    assert!(
        reborn > v,
        "re-created at {reborn}, not above the damaged record's {v}"
    );
}

#[test]
fn a_version_with_no_room_left_is_reported_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key(&["k"]);
    store.put(&k, b"x", Expect::Absent).unwrap();
    let crafted = record_file::encode(&k, Version::new(u64::MAX), b"x");
    std::fs::write(store.path_of(&k), crafted).unwrap();
    let err = store.put(&k, b"y", Expect::Any).unwrap_err();
    assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
}

#[test]
fn a_journal_with_an_absurd_length_is_corrupt_not_a_panic() {
    let path = Path::new("journal/00");
    for bytes in [&b"P 18446744073709551615\n"[..], b"P 5\nab\n"] {
        assert!(journal::decode(path, bytes).is_err());
    }
}

#[test]
fn openers_racing_to_create_a_store_all_succeed() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| DirStore::open(&root).unwrap());
            }
        });
    }
}

#[test]
fn a_sweep_removes_the_temp_directory_a_crash_left_for_a_long_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let long = key(&["deep", &"long-".repeat(40), "leaf"]);
    store.put(&long, b"kept", Expect::Absent).unwrap();
    // What a crash between building a hashed directory and renaming it leaves.
    let parent = store.root().join("data").join("deep.d");
    let leftover = parent.join(format!(".dir-0123abcd{}", crate::atomic::TEMP_SUFFIX));
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join(naming::SEGMENT_FILE), "long").unwrap();
    std::fs::write(
        leftover.join(format!("..segment.00ff{}", crate::atomic::TEMP_SUFFIX)),
        "lo",
    )
    .unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let now_ms = crate::Clock::now_ms(&crate::SystemClock);

    let young = crate::ManualClock::new(now_ms + hour.as_millis() as u64);
    assert_eq!(store.sweep_temp_files(2 * hour, &young).unwrap(), 0);
    assert!(
        leftover.is_dir(),
        "a directory younger than min_age is kept"
    );

    let old = crate::ManualClock::new(now_ms + 3 * hour.as_millis() as u64);
    assert_eq!(store.sweep_temp_files(2 * hour, &old).unwrap(), 1);
    assert!(!leftover.exists());
    assert_eq!(store.get(&long).unwrap().unwrap().value, b"kept");
}

#[test]
fn a_put_whose_new_directory_was_pruned_before_its_parent_flush_creates_it_again() {
    // A racing delete of the last key of a directory prunes it (and its empty
    // parents) between this put's `mkdir` and the flush of the parent: the flush
    // finds nothing. Injected here, it must not fail the put.
    let dir = tempfile::tempdir().unwrap();
    let vfs = Faulty::new(StdVfs);
    let store = DirStore::builder(dir.path())
        .vfs(vfs.clone())
        .open()
        .unwrap();
    vfs.arm(
        Fault::nth(1)
            .only([OpKind::DirSync])
            .error(InjectedError::Kind(std::io::ErrorKind::NotFound)),
    );
    let k = key(&["jobs", "new-dir", "1"]);
    let v = store.put(&k, b"x", Expect::Absent).unwrap();
    assert_eq!(vfs.injected().len(), 1, "the fault was not reached");
    assert!(!store.is_poisoned());
    assert_eq!(store.get(&k).unwrap().unwrap().version, v);
}

#[test]
fn opening_a_store_sweeps_the_temp_files_of_dead_writers_and_keeps_young_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key(&["jobs", "job-1"]);
    store.put(&k, b"kept", Expect::Absent).unwrap();
    let record_dir = store.path_of(&k).parent().unwrap().to_path_buf();
    drop(store);
    // Temp files of killed writers: one from two hours ago, one from now (a
    // writer of another process may still be on it).
    let plant = |name: &str, age: std::time::Duration| {
        let path = record_dir.join(format!(".{name}.0123{}", crate::atomic::TEMP_SUFFIX));
        let file = std::fs::File::create(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
        path
    };
    let dead = plant("dead", 2 * DirStore::SWEEP_AT_OPEN);
    let young = plant("young", std::time::Duration::ZERO);

    let store = open(dir.path());
    assert!(
        !dead.exists(),
        "a dead writer's temp file outlived the open"
    );
    assert!(
        young.exists(),
        "a young temp file was taken for a dead writer's"
    );
    assert_eq!(store.get(&k).unwrap().unwrap().value, b"kept");
    drop(store);

    // Turned off, an open leaves them.
    let dead = plant("dead-again", 2 * DirStore::SWEEP_AT_OPEN);
    DirStore::builder(dir.path())
        .sweep_at_open(None)
        .open()
        .unwrap();
    assert!(dead.exists());
}

#[test]
fn a_version_floor_at_the_end_of_the_version_space_is_reported_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key(&["jobs", "job-1"]);
    let stripe = naming::stripe_of(k.segments(), stripes::STRIPES);
    let floor = store
        .root()
        .join("stripes")
        .join(format!("{stripe:02}.floor"));
    for damaged in [u64::MAX, u64::MAX - 1, u64::MAX / 2] {
        std::fs::write(&floor, damaged.to_string()).unwrap();
        let err = store.put(&k, b"v", Expect::Absent).unwrap_err();
        assert!(
            matches!(&err, Error::CorruptFile { path, .. } if *path == floor),
            "{damaged}: {err}"
        );
        assert!(store.get(&k).unwrap().is_none());
    }
    std::fs::write(&floor, "7").unwrap();
    assert_eq!(store.put(&k, b"v", Expect::Absent).unwrap().get(), 8);
}
