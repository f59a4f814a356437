//! `DirStore`'s scan: each directory read once however many pages, no lock
//! held between pages, directories that change under it, errors that name the
//! directory. The contract of `scan` itself is in the conformance suite.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::TestResult;
use jobsafe::testing::{Faulty, InjectedError, OpKind};
use jobsafe::vfs::StdVfs;
use jobsafe::{DirStore, Expect, Key, Prefix, Store};
use parking_lot::Mutex;

/// A store on a [`Faulty`] layer whose hook records every directory read.
struct Traced {
    _dir: tempfile::TempDir,
    store: DirStore<Faulty>,
    vfs: Faulty,
    reads: Arc<Mutex<Vec<PathBuf>>>,
}

impl Traced {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Faulty::new(StdVfs);
        let store = DirStore::builder(dir.path().join("store"))
            .vfs(vfs.clone())
            .open()
            .unwrap();
        let reads = Arc::new(Mutex::new(Vec::new()));
        let seen = reads.clone();
        vfs.on_op(move |op| {
            if op.kind == OpKind::ReadDir {
                seen.lock().push(op.path.to_path_buf());
            }
            None
        });
        Traced {
            _dir: dir,
            store,
            vfs,
            reads,
        }
    }

    fn data(&self) -> PathBuf {
        self.store.root().join("data")
    }

    /// The directories read under `data/` since the last call.
    fn take_data_reads(&self) -> Vec<PathBuf> {
        let data = self.data();
        let mut reads = self.reads.lock();
        let taken = reads.iter().filter(|p| p.starts_with(&data)).cloned();
        let taken = taken.collect();
        reads.clear();
        taken
    }
}

/// `dir` and every directory under it.
fn dirs_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::from([dir.to_path_buf()]);
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            dirs.extend(dirs_under(&entry.path()));
        }
    }
    dirs
}

/// A few hundred keys in nested prefixes: one wide directory, many small
/// ones, deep ones, and a segment long enough for a hashed directory name.
fn nested_keys() -> Vec<Key> {
    let long = "L".repeat(300);
    let mut keys = Vec::new();
    for i in 0..150 {
        keys.push(Key::new(["jobs", "job", &format!("job-{i:03}")]).unwrap());
    }
    for i in 0..30 {
        for seq in 0..4 {
            keys.push(
                Key::new(["jobs", "event", &format!("job-{i:03}"), &format!("{seq}")]).unwrap(),
            );
        }
    }
    for owner in ["a", "B", "c:d"] {
        for i in 0..20 {
            keys.push(Key::new(["locks", owner, &format!("{i}")]).unwrap());
        }
    }
    for i in 0..10 {
        keys.push(Key::new(["deep", "1", "2", "3", "4", &format!("{i}")]).unwrap());
        keys.push(Key::new(["long", long.as_str(), &format!("{i}")]).unwrap());
    }
    keys.push(Key::new(["jobs"]).unwrap());
    keys.push(Key::new(["jobs", "event"]).unwrap());
    keys.sort();
    keys
}

fn scan_all<S: Store>(store: &S, prefix: &Prefix, page_size: usize) -> Vec<Key> {
    let mut keys = Vec::new();
    for page in store.scan(prefix, page_size) {
        let page = page.unwrap();
        assert!(
            !page.is_empty() && page.len() <= page_size,
            "{}",
            page.len()
        );
        keys.extend(page);
    }
    keys
}

#[test]
fn a_scan_reads_each_directory_once_however_many_pages() -> TestResult {
    let t = Traced::new();
    let keys = nested_keys();
    for key in &keys {
        t.store.put(key, b"v", Expect::Absent)?;
    }
    let dirs = dirs_under(&t.data());
    assert!(dirs.len() > 40, "{}", dirs.len());

    for page_size in [1, 7, 1000] {
        t.take_data_reads();
        assert_eq!(scan_all(&t.store, &Prefix::all(), page_size), keys);
        let reads = t.take_data_reads();
        let distinct: BTreeSet<PathBuf> = reads.iter().cloned().collect();
        assert_eq!(reads.len(), dirs.len(), "pages of {page_size}");
        assert_eq!(distinct, dirs, "pages of {page_size}");
    }

    // Under a prefix: its directory and those below it, nothing else.
    let prefix = Prefix::new(["jobs", "event"])?;
    let under: Vec<Key> = keys
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect();
    let prefix_dir = t.store.path_of(&Key::new(["jobs", "event", "x"])?);
    let prefix_dir = prefix_dir.parent().unwrap();
    assert_eq!(scan_all(&t.store, &prefix, 3), under);
    let reads = t.take_data_reads();
    assert_eq!(reads.len(), dirs_under(prefix_dir).len());
    assert_eq!(
        reads.into_iter().collect::<BTreeSet<_>>(),
        dirs_under(prefix_dir)
    );
    Ok(())
}

#[test]
fn a_scan_reads_no_directory_before_its_page_needs_it() -> TestResult {
    let t = Traced::new();
    for key in nested_keys() {
        t.store.put(&key, b"v", Expect::Absent)?;
    }
    t.take_data_reads();
    let mut scan = t.store.scan(&Prefix::all(), 5);
    assert_eq!(t.take_data_reads().len(), 0, "read before the first page");
    let first = scan.next().unwrap()?;
    // `data/`, `deep.d/`, and down to the first keys: 6 directories.
    assert_eq!(first[0], Key::new(["deep", "1", "2", "3", "4", "0"])?);
    assert_eq!(t.take_data_reads().len(), 6);
    Ok(())
}

#[test]
fn a_scan_holds_no_lock_between_pages_so_its_caller_can_delete() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = DirStore::open(dir.path())?;
    let keys = nested_keys();
    for key in &keys {
        store.put(key, b"v", Expect::Absent)?;
    }
    // A delete takes its stripe exclusively: with a shared lock of the scan's
    // still held, it would wait for ever. Run where a hang is a failure.
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let mut deleted = Vec::new();
        for page in store.scan(&Prefix::all(), 10) {
            for key in page.unwrap() {
                assert!(store.delete(&key, Expect::Any).unwrap(), "{key}");
                deleted.push(key);
            }
        }
        let left = store.list(&Prefix::all(), None, 10).unwrap();
        done.send((deleted, left.keys)).unwrap();
    });
    let (deleted, left) = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("a scan that deletes what it is given did not finish");
    assert_eq!(deleted, keys);
    assert_eq!(left, Vec::<Key>::new());
    Ok(())
}

#[test]
fn a_directory_pruned_before_the_scan_reaches_it_is_empty_not_an_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = DirStore::open(dir.path())?;
    let keys: Vec<Key> = ["a", "b", "c", "d"]
        .iter()
        .map(|d| Key::new([*d, "1"]).unwrap())
        .collect();
    for key in &keys {
        store.put(key, b"v", Expect::Absent)?;
    }
    let mut scan = store.scan(&Prefix::all(), 1);
    assert_eq!(scan.next().unwrap()?, [keys[0].clone()]);
    // `data/` was read with `b.d` and `c.d` in it; deleting their last keys
    // removes them before the scan goes in.
    store.delete(&keys[1], Expect::Any)?;
    store.delete(&keys[2], Expect::Any)?;
    assert!(!store.path_of(&keys[1]).parent().unwrap().exists());
    let rest: Vec<Key> = scan.flat_map(|page| page.unwrap()).collect();
    assert_eq!(rest, [keys[3].clone()]);
    Ok(())
}

#[test]
fn a_failed_directory_read_ends_the_scan_with_an_error_naming_the_directory() -> TestResult {
    let t = Traced::new();
    for key in nested_keys() {
        t.store.put(&key, b"v", Expect::Absent)?;
    }
    let locks_dir = t
        .store
        .path_of(&Key::new(["locks", "x"])?)
        .parent()
        .unwrap()
        .to_path_buf();
    let failing = locks_dir.clone();
    t.vfs.on_op(move |op| {
        (op.kind == OpKind::ReadDir && op.path == failing).then_some(InjectedError::Eio)
    });
    let mut pages = 0;
    let mut scan = t.store.scan(&Prefix::all(), 50);
    let err = loop {
        match scan.next() {
            Some(Ok(page)) => {
                pages += 1;
                assert!(page.iter().all(|k| k.segments()[0] != "locks"), "{page:?}");
            }
            Some(Err(e)) => break e,
            None => panic!("the scan ended without the error"),
        }
    };
    assert!(pages > 0);
    assert!(
        err.to_string().contains(&*locks_dir.to_string_lossy()),
        "{err}"
    );
    assert!(scan.next().is_none(), "the scan went on after its error");
    Ok(())
}
