//! Bad input, one test per case: malformed keys, awkward but valid keys, foreign
//! file names in a store directory, truncated and garbage records, records written
//! by a newer version, a store the process may not write, a clock that jumps, and
//! FIFOs, devices and huge files where a store reads its own files.
//!
//! Through the public API only. Nothing here may panic inside jobsafe: every
//! case ends in a value or an error that says what and where.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jobsafe::jobs::{FailureKind, JobError, JobStatus, NewJob, RecoveryAction};
use jobsafe::ledger::{ChargeRequest, Reserve};
use jobsafe::lock::{Acquire, LockRequest, Release, Renewal};
use jobsafe::testing::Faulty;
use jobsafe::vfs::StdVfs;
use jobsafe::{
    Batch, DirStore, Entry, Error, Expect, JobLedger, JobLock, JobState, Key, LogStore,
    ManualClock, MemStore, Prefix, Store,
};
use serde_json::{Value, json};
use tempfile::tempdir;

use common::TestResult;
use common::hostile::{self, NOT_LINKS};

const START_MS: u64 = 1_700_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn invalid_key_reason(result: jobsafe::Result<Key>) -> String {
    match result {
        Err(Error::InvalidKey { reason, .. }) => reason,
        other => panic!("expected InvalidKey, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Malformed keys are rejected, with the reason
// ---------------------------------------------------------------------------------

#[test]
fn a_key_without_segments_is_rejected() {
    let reason = invalid_key_reason(Key::new(Vec::<String>::new()));
    assert!(reason.contains("at least one segment"), "{reason}");
}

#[test]
fn an_empty_segment_is_rejected_wherever_it_stands() {
    for (segments, at) in [
        (vec![""], 0),
        (vec!["", "a"], 0),
        (vec!["a", ""], 1),
        (vec!["a", "", "b"], 1),
    ] {
        let reason = invalid_key_reason(Key::new(segments.clone()));
        assert!(
            reason.contains(&format!("segment {at} is empty")),
            "{segments:?}: {reason}"
        );
    }
    assert!(Prefix::new(["jobs", ""]).is_err());
    let parent = Key::new(["jobs"]).unwrap();
    assert!(parent.child("").is_err());
}

#[test]
fn a_nul_anywhere_in_a_segment_is_rejected() {
    for segment in ["\0", "\0a", "a\0", "a\0b", "lic:abc\0../x"] {
        let reason = invalid_key_reason(Key::new(["jobs", segment]));
        assert!(reason.contains("contains NUL"), "{segment:?}: {reason}");
    }
    assert!(Prefix::new(["a\0"]).is_err());
}

#[test]
fn a_segment_one_byte_over_the_limit_is_rejected_in_bytes_not_characters() {
    assert!(Key::new(["a".repeat(Key::MAX_SEGMENT_LEN)]).is_ok());
    let reason = invalid_key_reason(Key::new(["a".repeat(Key::MAX_SEGMENT_LEN + 1)]));
    assert!(reason.contains("at most 1024"), "{reason}");
    // 342 three-byte characters: 342 characters, 1026 bytes.
    let wide = "日".repeat(342);
    assert!(wide.chars().count() < Key::MAX_SEGMENT_LEN);
    assert!(Key::new([wide]).is_err());
    // The error shows a shortened key, not 1 KiB of it.
    let err = Key::new(["x".repeat(Key::MAX_SEGMENT_LEN + 1)]).unwrap_err();
    assert!(err.to_string().len() < 400, "{err}");
}

#[test]
fn too_many_segments_are_rejected_by_new_child_and_prefix() {
    let most = vec!["s"; Key::MAX_SEGMENTS];
    let key = Key::new(most.clone()).unwrap();
    assert!(key.child("one-more").is_err());
    let reason = invalid_key_reason(Key::new(vec!["s"; Key::MAX_SEGMENTS + 1]));
    assert!(
        reason.contains(&format!("at most {}", Key::MAX_SEGMENTS)),
        "{reason}"
    );
    assert!(Prefix::new(vec!["s"; Key::MAX_SEGMENTS + 1]).is_err());
}

#[test]
fn malformed_keys_in_json_are_rejected_when_deserialized() {
    for json in [
        "[]",
        r#"[""]"#,
        r#"["a\u0000b"]"#,
        r#""jobs/a""#,
        "[1,2]",
        "null",
        "{}",
    ] {
        assert!(
            serde_json::from_str::<Key>(json).is_err(),
            "{json} was accepted"
        );
    }
    let long = format!(r#"["{}"]"#, "x".repeat(Key::MAX_SEGMENT_LEN + 1));
    assert!(serde_json::from_str::<Key>(&long).is_err());
}

#[test]
fn components_build_keys_from_user_input_and_reject_what_keys_reject() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(store.clone(), clock.clone());
    let ledger = JobLedger::new(store.clone(), clock.clone());
    for bad in ["", "a\0b"] {
        assert!(matches!(
            jobs.create(NewJob::new("k").id(bad)),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(jobs.get(bad), Err(Error::InvalidKey { .. })));
        assert!(matches!(
            ledger.reserve(bad, "job", &ChargeRequest::new()),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            ledger.reserve("lic:abc", bad, &ChargeRequest::new()),
            Err(Error::InvalidKey { .. })
        ));
    }
    // Nothing was written by the refused calls.
    assert!(store.list_all(&Prefix::all())?.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------
// Awkward but valid keys are encoded and stay inside the store
// ---------------------------------------------------------------------------------

/// Valid segments that look like paths, escapes or our own file names.
const AWKWARD: [&str; 14] = [
    "..",
    ".",
    "/",
    "/etc/passwd",
    "C:\\Windows",
    "a/../b",
    "lic:abc123",
    "lic:",
    "%2F",
    "x.r",
    "x.d",
    ".segment",
    "~",
    " ",
];

fn awkward_keys() -> Vec<Key> {
    let mut keys = Vec::new();
    for s in AWKWARD {
        keys.push(Key::new([s]).unwrap());
        keys.push(Key::new(["jobs", s, "1"]).unwrap());
        keys.push(Key::new([s, s]).unwrap());
    }
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn awkward_keys_round_trip_through_every_store_and_a_reopen() -> TestResult {
    let dir = tempdir()?;
    let keys = awkward_keys();
    let value = |k: &Key| k.to_string().into_bytes();
    {
        let mem = MemStore::new();
        let dirs = DirStore::open(dir.path().join("dir"))?;
        let log = LogStore::open(dir.path().join("log"))?;
        let stores: [&dyn Store; 3] = [&mem, &dirs, &log];
        for store in stores {
            for key in &keys {
                store.put(key, &value(key), Expect::Absent)?;
            }
            assert_eq!(store.list_all(&Prefix::all())?, keys);
        }
    }
    let dirs = DirStore::open(dir.path().join("dir"))?;
    let log = LogStore::open(dir.path().join("log"))?;
    let stores: [&dyn Store; 2] = [&dirs, &log];
    for store in stores {
        assert_eq!(store.list_all(&Prefix::all())?, keys);
        for key in &keys {
            assert_eq!(store.get(key)?.unwrap().value, value(key), "{key:?}");
        }
    }
    // Only the two stores' directories exist beside each other.
    assert_eq!(fs::read_dir(dir.path())?.count(), 2);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Values over the store's limit
// ---------------------------------------------------------------------------------

#[test]
fn a_value_over_the_limit_is_refused_before_any_io_by_the_file_stores() -> TestResult {
    let dir = tempdir()?;
    let vfs = Faulty::new(StdVfs);
    let dirs = DirStore::builder(dir.path().join("dir"))
        .vfs(vfs.clone())
        .open()?;
    let log = LogStore::builder(dir.path().join("log"))
        .vfs(vfs.clone())
        .open()?;
    let stores: [(&str, &dyn Store); 2] = [("dir", &dirs), ("log", &log)];
    let (small, big) = (common::key("k/small"), common::key("k/big"));
    // Zeroed by the allocator and never read: it costs no memory.
    let over = vec![0u8; Entry::MAX_VALUE_LEN + 1];
    for (name, store) in stores {
        store.put(&small, b"v", Expect::Absent)?;
        let before = common::limits::snapshot(store);
        let ops = vfs.ops();
        let put = store.put(&big, &over, Expect::Any);
        let batch = Batch::new().put(&small, b"w".to_vec(), Expect::Any).put(
            &big,
            over.clone(),
            Expect::Absent,
        );
        let applied = store.apply(&batch);
        assert_eq!(vfs.ops(), ops, "{name}: a refused value cost I/O");
        let limit = Entry::MAX_VALUE_LEN;
        common::limits::assert_too_large(put, "value", limit + 1, limit);
        common::limits::assert_too_large(applied, "value", limit + 1, limit);
        assert_eq!(common::limits::snapshot(store), before, "{name}");
    }
    Ok(())
}

#[test]
fn a_dirstore_batch_over_its_bound_is_refused_before_any_io() -> TestResult {
    let dir = tempdir()?;
    let vfs = Faulty::new(StdVfs);
    let store = DirStore::builder(dir.path()).vfs(vfs.clone()).open()?;
    // Each value is within the store's limit; together they are over the
    // batch's. Zeroed by the allocator and never touched: they cost no memory.
    let values = DirStore::MAX_BATCH_BYTES / Entry::MAX_VALUE_LEN;
    let mut batch = Batch::new();
    for i in 0..values {
        let value = vec![0u8; Entry::MAX_VALUE_LEN];
        batch = batch.put(&common::key(&format!("k/big-{i}")), value, Expect::Any);
    }
    let ops = vfs.ops();

    let err = store.apply(&batch).unwrap_err();

    assert!(
        matches!(
            &err,
            Error::TooLarge { what: "DirStore batch", key: None, size, limit }
                if *size > DirStore::MAX_BATCH_BYTES && *limit == DirStore::MAX_BATCH_BYTES
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(vfs.ops(), ops, "a refused batch cost I/O");
    assert_eq!(store.get(&common::key("k/big-0"))?, None);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Files in a store directory whose names do not decode
// ---------------------------------------------------------------------------------

#[test]
fn foreign_file_names_in_a_dirstore_are_not_keys_and_break_nothing() -> TestResult {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let dir = tempdir()?;
    let store = DirStore::open(dir.path().join("store"))?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    let jobs_dir = store.path_of(&key).parent().unwrap().to_path_buf();
    let data = jobs_dir.parent().unwrap().to_path_buf();
    // Names the encoder never produces: upper case, bad or non-canonical escapes,
    // an escaped NUL, a plain name too long to be left unhashed, dots, no
    // suffix, another suffix, and bytes that are not UTF-8.
    let long = format!("{}.r", "b".repeat(200));
    let foreign = [
        "README",
        "b%00.r",
        &long,
        "A.r",
        "%41.r",
        "%2e.r",
        "%zz.r",
        "%4.r",
        "^A.r",
        "a.b.r",
        ".r",
        "x.tmp",
        "notes.txt",
    ];
    for dir in [&data, &jobs_dir] {
        for name in foreign {
            fs::write(dir.join(name), b"not a record")?;
        }
        fs::write(dir.join(OsStr::from_bytes(b"\xff\xfe.r")), b"x")?;
        fs::create_dir(dir.join("UPPER.d"))?;
        fs::create_dir(dir.join("%zz.d"))?;
    }
    // A tree deeper than any key, under a name the encoder does produce.
    let mut deep = jobs_dir.clone();
    for _ in 0..Key::MAX_SEGMENTS {
        deep.push("x.d");
    }
    fs::create_dir_all(&deep)?;
    fs::write(deep.join("y.r"), b"not a record")?;

    assert_eq!(store.list_all(&Prefix::all())?, vec![key.clone()]);
    assert_eq!(store.list_all(&Prefix::new(["jobs"])?)?, vec![key.clone()]);
    let pages: Vec<Vec<Key>> = store.scan(&Prefix::all(), 10).collect::<Result<_, _>>()?;
    assert_eq!(pages.concat(), vec![key.clone()]);
    assert_eq!(store.get(&key)?.unwrap().value, b"1");
    store.put(&Key::new(["jobs", "b"])?, b"2", Expect::Absent)?;
    store.delete(&key, Expect::Any)?;
    assert_eq!(
        store.list_all(&Prefix::all())?,
        vec![Key::new(["jobs", "b"])?]
    );
    // The foreign files are left alone.
    assert_eq!(fs::read(jobs_dir.join("README"))?, b"not a record");
    drop(store);
    DirStore::open(dir.path().join("store"))?;
    Ok(())
}

/// A journal made sparse and huge (its length set far past its frames, by
/// hand or by a hostile user) opens by skipping its holes, which read as
/// zeros: it used to read every byte of them, some 20 s for 8 GiB.
#[test]
fn a_sparse_journal_of_a_huge_length_opens_without_reading_its_holes() -> TestResult {
    use jobsafe::testing::Counting;

    let dir = tempdir()?;
    let key = Key::new(["jobs", "a"])?;
    LogStore::open(dir.path())?.put(&key, b"1", Expect::Absent)?;
    let journal = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("journal"))?;
    journal.set_len(64 << 30)?;
    drop(journal);

    let vfs = Counting::new(StdVfs);
    let store = LogStore::builder(dir.path()).vfs(vfs.clone()).open()?;
    assert_eq!(store.get(&key)?.unwrap().value, b"1");
    // A read of 256 KiB at most each: the whole length would take 262,144.
    let reads = vfs.counts().reads;
    assert!(reads < 1_000, "{reads} reads");
    Ok(())
}

/// What a compaction leaves is removed at open; a directory of that name is
/// no compaction's and is left, and the store opens.
#[test]
fn a_directory_named_like_a_compactions_journal_does_not_stop_an_open() -> TestResult {
    let dir = tempdir()?;
    let key = Key::new(["jobs", "a"])?;
    LogStore::open(dir.path())?.put(&key, b"1", Expect::Absent)?;
    fs::create_dir(dir.path().join("journal.new-x"))?;
    let store = LogStore::open(dir.path())?;
    assert_eq!(store.get(&key)?.unwrap().value, b"1");
    assert!(dir.path().join("journal.new-x").is_dir());
    Ok(())
}

/// A leftover temp directory is claimed and removed with whatever is in it,
/// so that one holding something unexpected does not fail every sweep.
#[test]
fn a_dirstore_sweep_removes_a_leftover_temp_directory_whatever_it_holds() -> TestResult {
    let dir = tempdir()?;
    let store = DirStore::open(dir.path().join("store"))?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    let jobs_dir = store.path_of(&key).parent().unwrap().to_path_buf();
    let temp = jobs_dir.join(".dir-0123456789abcdef.jobsafe-tmp");
    fs::create_dir_all(temp.join("sub"))?;
    fs::write(temp.join("sub").join("file"), b"x")?;
    let clock = jobsafe::SystemClock;
    assert_eq!(store.sweep_temp_files(Duration::ZERO, &clock)?, 1);
    assert_eq!(store.sweep_temp_files(Duration::ZERO, &clock)?, 0);
    let left: Vec<_> = fs::read_dir(&jobs_dir)?
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(store.get(&key)?.unwrap().value, b"1");
    Ok(())
}

#[test]
fn a_foreign_file_with_a_shortened_name_is_reported_by_list_naming_it() -> TestResult {
    let dir = tempdir()?;
    let store = DirStore::open(dir.path().join("store"))?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    let jobs_dir = store.path_of(&key).parent().unwrap().to_path_buf();
    // `~` marks a name shortened with a hash: the key is read from the file, which
    // here holds none. Listing cannot say which key it is, and says so.
    let planted = jobs_dir.join("x~0123.r");
    fs::write(&planted, b"garbage")?;

    let err = store.list_all(&Prefix::all()).unwrap_err();

    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains("x~0123.r"), "{err}");
    assert_eq!(store.get(&key)?.unwrap().value, b"1", "reads go on");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Truncated and garbage records
// ---------------------------------------------------------------------------------

#[test]
fn a_truncated_or_garbage_dirstore_record_is_corrupt_and_never_overwritten() -> TestResult {
    let dir = tempdir()?;
    let store = DirStore::open(dir.path().join("store"))?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, br#"{"status":"queued"}"#, Expect::Absent)?;
    let path = store.path_of(&key);
    let good = fs::read(&path)?;
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        b"\n".to_vec(),
        vec![0; 64],
        vec![0xff; 64],
        b"jobsafe-record 2 1 0 00000000 [\"jobs\",\"a\"]\n".to_vec(),
        b"jobsafe-record 1 99999999999999999999999 1 0 []\n{".to_vec(),
        b"jobsafe-record 1 1 18446744073709551615 00000000 [\"jobs\",\"a\"]\nx".to_vec(),
    ];
    for cut in [1, good.len() / 2, good.len() - 1] {
        garbage.push(good[..cut].to_vec());
    }
    for bytes in garbage {
        fs::write(&path, &bytes)?;
        let err = store.get(&key).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { key: k, path: Some(p), .. } if *k == key && *p == path),
            "{bytes:?}: {err}"
        );
        let put = store.put(&key, b"new", Expect::Any).unwrap_err();
        assert!(put.is_corrupt(), "{put}");
        assert!(store.delete(&key, Expect::Any).unwrap_err().is_corrupt());
        assert_eq!(fs::read(&path)?, bytes, "the damaged file was changed");
    }
    // Moved aside, its bytes kept; the key is free again.
    let moved = store.quarantine(&key)?.unwrap();
    assert_eq!(fs::read(&moved.location)?, good[..good.len() - 1]);
    assert!(store.get(&key)?.is_none());
    Ok(())
}

#[test]
fn a_logstore_journal_that_is_garbage_or_shorter_than_its_header_is_refused() -> TestResult {
    let dir = tempdir()?;
    let root = dir.path().join("store");
    drop(LogStore::open(&root)?);
    let journal = root.join("journal");
    for bytes in [
        vec![],
        vec![0; 10],
        vec![0; 64],
        vec![0xA5; 4096],
        b"JSLOG\0\0\x02".repeat(8),
    ] {
        fs::write(&journal, &bytes)?;
        let err = LogStore::open(&root).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("journal"), "{err}");
    }
    Ok(())
}

#[test]
fn a_store_marker_of_another_format_is_refused_not_reinitialized() -> TestResult {
    let dir = tempdir()?;
    let (dir_root, log_root) = (dir.path().join("dir"), dir.path().join("log"));
    drop(DirStore::open(&dir_root)?);
    drop(LogStore::open(&log_root)?);
    fs::write(dir_root.join("jobsafe-dirstore"), b"jobsafe-dirstore 9\n")?;
    fs::write(log_root.join("jobsafe-logstore"), b"garbage")?;
    assert!(DirStore::open(&dir_root).unwrap_err().is_corrupt());
    assert!(LogStore::open(&log_root).unwrap_err().is_corrupt());
    assert_eq!(fs::read(log_root.join("jobsafe-logstore"))?, b"garbage");
    Ok(())
}

#[test]
fn logstore_files_replaced_by_directories_are_errors_naming_them() -> TestResult {
    for name in ["journal", "lock", "compact.lock"] {
        let dir = tempdir()?;
        let root = dir.path().join("store");
        drop(LogStore::open(&root)?);
        let file = root.join(name);
        fs::remove_file(&file)?;
        fs::create_dir(&file)?;
        let err = LogStore::open(&root).unwrap_err();
        assert!(err.is_corrupt(), "{name}: {err}");
        assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    }
    Ok(())
}

/// Garbage values that are not records: not JSON, not an object, no schema, wrong
/// field types.
fn garbage_values() -> Vec<Vec<u8>> {
    vec![
        vec![],
        b"\xff\xfe".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        br#"{"schema":"1"}"#.to_vec(),
        br#"{"schema":1}"#.to_vec(),
        br#"{"schema":1,"job_id":7,"started_ms":-1}"#.to_vec(),
        br#"{"schema":18446744073709551616}"#.to_vec(),
    ]
}

#[test]
fn a_garbage_lock_record_is_corrupt_and_never_counted_as_free() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let locks = JobLock::new(store.clone(), clock.clone());
    let key = Key::new(["vault", "lic:abc"])?;
    let stored = Key::new(["locks", "vault", "lic:abc"])?;
    for bytes in garbage_values() {
        store.put(&stored, &bytes, Expect::Any)?;
        let err = match locks.acquire(&key, HOUR, &LockRequest::new()) {
            Err(err) => err,
            Ok(_) => panic!("{bytes:?}: a garbage lock record was taken over"),
        };
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("locks/vault/lic:abc"), "{err}");
        assert!(locks.peek(&key).unwrap_err().is_corrupt());
        assert_eq!(store.get(&stored)?.unwrap().value, bytes);
    }
    Ok(())
}

#[test]
fn a_garbage_reservation_is_corrupt_and_never_charged_as_new() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let ledger = JobLedger::new(store.clone(), clock.clone());
    let key = ledger.key("lic:abc", "job-1")?;
    for bytes in garbage_values() {
        store.put(&key, &bytes, Expect::Any)?;
        match ledger.reserve("lic:abc", "job-1", &ChargeRequest::new()) {
            Err(err) => assert!(err.is_corrupt(), "{err}"),
            Ok(outcome) => panic!("{bytes:?}: reserved over garbage: {outcome:?}"),
        }
        assert!(ledger.refund("lic:abc", "job-1").unwrap_err().is_corrupt());
        assert_eq!(store.get(&key)?.unwrap().value, bytes);
    }
    Ok(())
}

#[test]
fn a_garbage_job_record_is_corrupt_for_reads_and_transitions() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(store.clone(), clock.clone());
    let job = jobs.create(NewJob::new("k"))?;
    let key = Key::new(["jobs", "job", job.id.as_str()])?;
    let mut bad = garbage_values();
    // Well-formed JSON whose event window is impossible.
    let mut window: Value = serde_json::from_slice(&store.get(&key)?.unwrap().value)?;
    window["events"] = json!({"first_seq": 9, "next_seq": 2, "dropped": 0});
    bad.push(serde_json::to_vec(&window)?);
    for bytes in bad {
        store.put(&key, &bytes, Expect::Any)?;
        assert!(jobs.get(&job.id).unwrap_err().is_corrupt(), "{bytes:?}");
        assert!(jobs.client_view(&job.id).unwrap_err().is_corrupt());
        assert!(jobs.start(&job.id, None).unwrap_err().is_corrupt());
        assert!(jobs.cancel(&job.id).unwrap_err().is_corrupt());
        assert_eq!(store.get(&key)?.unwrap().value, bytes);
    }
    Ok(())
}

#[test]
fn a_garbage_event_is_corrupt_when_replayed_naming_its_key() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(store.clone(), clock.clone());
    let job = jobs.create(NewJob::new("k"))?;
    let worker = jobs.start(&job.id, None)?;
    jobs.progress(&worker, "half")?;
    let events = store.list_all(&Prefix::new(["jobs", "event", job.id.as_str()])?)?;
    assert!(!events.is_empty());
    store.put(&events[0], b"{\"schema\":1,\"seq\":\"one\"}", Expect::Any)?;
    let err = jobs.events_since(&job.id, 0).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains(&events[0].to_string()), "{err}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Records of a newer version
// ---------------------------------------------------------------------------------

/// Reads the raw JSON of `key`.
fn raw(store: &dyn Store, key: &Key) -> Value {
    serde_json::from_slice(&store.get(key).unwrap().unwrap().value).unwrap()
}

/// Adds fields a newer version might write: one at the top and one nested in an
/// object the crate defines, and writes the record back.
fn add_future_fields(store: &dyn Store, key: &Key, nested_in: Option<&str>) {
    let mut record = raw(store, key);
    record["added_later"] = json!({"by": "v2", "list": [1, 2]});
    if let Some(field) = nested_in {
        record[field]["nested_later"] = json!(true);
    }
    store
        .put(key, &serde_json::to_vec(&record).unwrap(), Expect::Any)
        .unwrap();
}

#[test]
fn a_job_record_keeps_unknown_fields_through_every_transition() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(store.clone(), clock.clone());
    let job = jobs.create(NewJob::new("k").meta("mine", json!({"x": 1})))?;
    let key = Key::new(["jobs", "job", job.id.as_str()])?;
    add_future_fields(&*store, &key, None);

    // Read by this version: the fields are ignored...
    assert_eq!(jobs.get(&job.id)?.unwrap().status, JobStatus::Queued);
    // ...and every read-modify-write keeps them.
    let worker = jobs.start(&job.id, None)?;
    jobs.set_stage(&worker, "one")?;
    jobs.progress(&worker, "half")?;
    jobs.heartbeat(&worker)?;
    jobs.fail(
        &worker,
        JobError::new("busy"),
        FailureKind::Transient {
            retry_at_ms: START_MS,
        },
    )?;
    let worker = jobs.start(&job.id, None)?;
    jobs.complete(&worker, json!({"user": {"future": "kept"}}))?;

    let record = raw(&*store, &key);
    assert_eq!(record["added_later"], json!({"by": "v2", "list": [1, 2]}));
    assert_eq!(record["status"], json!("complete"));
    // User values are stored exactly as given.
    assert_eq!(record["metadata"]["mine"], json!({"x": 1}));
    assert_eq!(record["result"], json!({"user": {"future": "kept"}}));
    Ok(())
}

#[test]
fn unknown_fields_nested_in_a_job_records_own_objects_are_dropped_on_rewrite() -> TestResult {
    // What the crate guarantees, pinned: unknown fields are kept at the top level
    // of every record it rewrites; inside its own nested objects (the error, the
    // event window, a checkpoint's artifacts) they are ignored on read and not
    // written back. A newer version must add such fields at the top level.
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(store.clone(), clock.clone());
    let job = jobs.create(NewJob::new("k"))?;
    let key = Key::new(["jobs", "job", job.id.as_str()])?;
    add_future_fields(&*store, &key, Some("events"));
    assert_eq!(raw(&*store, &key)["events"]["nested_later"], json!(true));

    let worker = jobs.start(&job.id, None)?;
    jobs.progress(&worker, "half")?;

    let record = raw(&*store, &key);
    assert!(record.get("added_later").is_some(), "{record}");
    assert!(record["events"].get("nested_later").is_none(), "{record}");
    Ok(())
}

#[test]
fn a_lock_record_keeps_unknown_fields_on_renewal_and_drops_them_on_takeover() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let locks = JobLock::new(store.clone(), clock.clone());
    let key = Key::new(["vault"])?;
    let stored = Key::new(["locks", "vault"])?;
    let Acquire::Acquired(mut guard) = locks.acquire(&key, HOUR, &LockRequest::new())? else {
        panic!("a free lock was held");
    };
    // Renewed once, the record carries its fencing token itself (before that it
    // is the store version of the acquiring write, which the edit below changes).
    assert!(matches!(guard.renew(HOUR)?, Renewal::Renewed(_)));
    add_future_fields(&*store, &stored, None);
    assert!(matches!(guard.renew(HOUR)?, Renewal::Renewed(_)));
    assert!(raw(&*store, &stored).get("added_later").is_some());

    // A new holder writes a record of its own: the old holder's fields go with it.
    clock.advance(HOUR * 2);
    let Acquire::Acquired(next) = locks.acquire(&key, HOUR, &LockRequest::new())? else {
        panic!("an expired lock was not taken over");
    };
    assert!(raw(&*store, &stored).get("added_later").is_none());
    next.into_handle();
    Ok(())
}

#[test]
fn a_reservation_keeps_unknown_fields_when_its_charge_is_confirmed() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let ledger = JobLedger::new(store.clone(), clock.clone());
    let Reserve::New(reservation) =
        ledger.reserve_pending("lic:abc", "job-1", &ChargeRequest::new())?
    else {
        panic!("a new job id was not new");
    };
    let key = ledger.key("lic:abc", "job-1")?;
    add_future_fields(&*store, &key, None);
    let reservation = ledger.lookup("lic:abc", "job-1")?.unwrap_or(reservation);
    ledger.confirm_charge(&reservation)?;
    let record = raw(&*store, &key);
    assert_eq!(record["state"], json!("charged"));
    assert!(record.get("added_later").is_some(), "{record}");
    Ok(())
}

#[test]
fn a_record_of_a_newer_schema_is_refused_and_left_untouched() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(store.clone(), clock.clone());
    let locks = JobLock::new(store.clone(), clock.clone());
    let job = jobs.create(NewJob::new("k"))?;
    let job_key = Key::new(["jobs", "job", job.id.as_str()])?;
    let lock_key = Key::new(["locks", "vault"])?;
    let mut newer = raw(&*store, &job_key);
    newer["schema"] = json!(2);
    let newer = serde_json::to_vec(&newer)?;
    store.put(&job_key, &newer, Expect::Any)?;
    let lock = br#"{"schema":7,"job_id":"j","started_ms":0,"renewed_ms":0,"expires_ms":0}"#;
    store.put(&lock_key, lock, Expect::Any)?;

    let newer_schema = |e: &Error| {
        matches!(
            e,
            Error::UnsupportedSchema {
                found: _,
                supported: 1,
                ..
            }
        )
    };
    assert!(newer_schema(&jobs.get(&job.id).unwrap_err()));
    assert!(newer_schema(&jobs.start(&job.id, None).unwrap_err()));
    let acquired = locks.acquire(&Key::new(["vault"])?, HOUR, &LockRequest::new());
    let Err(err) = acquired else {
        panic!("a lock record of a newer schema was taken over");
    };
    assert!(newer_schema(&err));

    assert_eq!(store.get(&job_key)?.unwrap().value, newer);
    assert_eq!(store.get(&lock_key)?.unwrap().value, lock);
    Ok(())
}

// ---------------------------------------------------------------------------------
// A clock that jumps backwards or forwards
// ---------------------------------------------------------------------------------

#[test]
fn a_clock_jumping_back_never_hands_a_lock_to_two_holders() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let locks = JobLock::new(Arc::new(MemStore::new()), clock.clone());
    let key = Key::new(["vault"])?;
    let lease = Duration::from_secs(60);
    let Acquire::Acquired(mut first) = locks.acquire(&key, lease, &LockRequest::new())? else {
        panic!("free lock held");
    };

    // Back by hours: the lease has not ended, and the remaining time saturates
    // instead of underflowing.
    clock.set(START_MS - 3 * 3_600_000);
    assert!(matches!(
        locks.acquire(&key, lease, &LockRequest::new())?,
        Acquire::Held(_)
    ));
    assert!(first.remaining() >= lease);
    assert!(matches!(first.renew(lease)?, Renewal::Renewed(_)));

    // Forward by hours: the lease has ended, a second job takes over, and the
    // first finds it lost.
    clock.set(START_MS + 3 * 3_600_000);
    assert_eq!(first.remaining(), Duration::ZERO);
    let Acquire::Acquired(second) = locks.acquire(&key, lease, &LockRequest::new())? else {
        panic!("expired lock not taken over");
    };
    assert!(second.token() > first.token());
    assert!(matches!(first.renew(lease)?, Renewal::Lost(_)));

    // Back again, to before the takeover: still the second's lock, and the
    // first can neither renew nor release it.
    clock.set(START_MS);
    assert!(matches!(first.renew(lease)?, Renewal::Lost(_)));
    assert!(matches!(first.release()?, Release::OwnedByAnother(_)));
    let held = locks.peek(&key)?.unwrap();
    assert_eq!(held.token, second.token());
    assert!(matches!(
        locks.acquire(&key, lease, &LockRequest::new())?,
        Acquire::Held(_)
    ));
    second.release()?;
    Ok(())
}

#[test]
fn a_clock_jumping_back_never_expires_a_reservation_early() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let ledger = JobLedger::builder(Arc::new(MemStore::new()), clock.clone())
        .ttl(HOUR)
        .build()?;
    assert!(matches!(
        ledger.reserve("lic:abc", "job-1", &ChargeRequest::new())?,
        Reserve::New(_)
    ));

    // Back by hours: the reservation is as live as ever, and nothing is purged.
    clock.set(START_MS - 5 * 3_600_000);
    assert!(matches!(
        ledger.reserve("lic:abc", "job-1", &ChargeRequest::new())?,
        Reserve::Existing(_)
    ));
    assert_eq!(ledger.purge_expired(Duration::ZERO)?, 0);

    // Forward past the TTL: the job id is new again.
    clock.set(START_MS + 5 * 3_600_000);
    assert!(matches!(
        ledger.reserve("lic:abc", "job-1", &ChargeRequest::new())?,
        Reserve::New(_)
    ));
    // A retention too long to add to any time saturates instead of overflowing.
    clock.set(START_MS + 7 * 3_600_000);
    assert_eq!(ledger.purge_expired(Duration::MAX)?, 0);
    assert_eq!(ledger.purge_expired(Duration::ZERO)?, 1);
    Ok(())
}

#[test]
fn a_clock_jumping_back_neither_recovers_nor_purges_jobs_early() -> TestResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let jobs = JobState::new(Arc::new(MemStore::new()), clock.clone());
    let running = jobs.create(NewJob::new("k"))?;
    let worker = jobs.start(&running.id, None)?;
    let done = jobs.create(NewJob::new("k"))?;
    let w = jobs.start(&done.id, None)?;
    jobs.complete(&w, json!(null))?;

    // Back by hours: heartbeats and completions lie in the future.
    clock.set(START_MS - 6 * 3_600_000);
    assert!(
        jobs.recover(
            Duration::ZERO + Duration::from_millis(1),
            RecoveryAction::Requeue
        )?
        .is_empty()
    );
    assert_eq!(jobs.purge(Duration::from_millis(1), HOUR)?.total(), 0);
    jobs.heartbeat(&worker)?;

    // Forward by hours: the running job is stale, the finished one old.
    clock.set(START_MS + 6 * 3_600_000);
    assert_eq!(jobs.recover(HOUR, RecoveryAction::Requeue)?.len(), 1);
    assert_eq!(jobs.purge(HOUR, Duration::MAX)?.complete, 1);
    // Durations too long to add to any time saturate.
    assert_eq!(jobs.purge(Duration::MAX, Duration::MAX)?.total(), 0);
    Ok(())
}

#[test]
fn a_clock_jumping_back_does_not_start_a_retry_early_in_a_pipeline() -> TestResult {
    let dir = tempdir()?;
    let clock = Arc::new(ManualClock::new(START_MS));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let should_fail = fail.clone();
    let pipeline = jobsafe::Pipeline::builder(MemStore::new(), clock.clone(), dir.path())
        .retry_policy(
            jobsafe::pipeline::RetryPolicy::default()
                .first_delay(HOUR)
                .max_delay(HOUR),
        )
        .stage("work", move |_| {
            if should_fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(jobsafe::pipeline::StageError::transient("busy"));
            }
            Ok(())
        })
        .build()?;
    let job = pipeline.enqueue("s", NewJob::new("k"))?;
    let report = pipeline.run_job(&job.id)?;
    let jobsafe::pipeline::RunOutcome::RetryScheduled { retry_at_ms, .. } = report.outcome else {
        panic!("{:?}", report.outcome);
    };
    assert!(retry_at_ms > START_MS);
    fail.store(false, std::sync::atomic::Ordering::SeqCst);

    // Back by hours: not due.
    clock.set(START_MS - 4 * 3_600_000);
    pipeline.run_pass()?;
    assert_eq!(
        pipeline.jobs().get(&job.id)?.unwrap().status,
        JobStatus::Queued
    );

    // Forward past the backoff: due, and it completes.
    clock.set(retry_at_ms + 4 * 3_600_000);
    pipeline.run_pass()?;
    assert_eq!(
        pipeline.jobs().get(&job.id)?.unwrap().status,
        JobStatus::Complete
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// A store directory this process may not write
// ---------------------------------------------------------------------------------

/// Set in the unprivileged child of [`a_store_the_process_may_not_write_fails_cleanly`].
const UNPRIVILEGED_CHILD: &str = "JOBSAFE_TEST_UNPRIVILEGED_DIR";

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The checks, run by a user that file permissions apply to.
fn unwritable_store_checks(dir: &Path) -> TestResult {
    let store = DirStore::open(dir.join("dir"))?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    let jobs_dir = store.path_of(&key).parent().unwrap().to_path_buf();

    // The directory holding the record turns read-only under the open store.
    set_mode(&jobs_dir, 0o500);
    let err = store.put(&key, b"2", Expect::Any).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&*jobs_dir.to_string_lossy()),
        "{err}"
    );
    assert_eq!(store.get(&key)?.unwrap().value, b"1", "reads go on");
    assert!(!store.is_poisoned(), "nothing unknown reached the disk");
    set_mode(&jobs_dir, 0o700);
    store.put(&key, b"3", Expect::Any)?;
    drop(store);

    // A store whose files may not be opened for writing cannot be opened, and
    // says where.
    let log_root = dir.join("log");
    drop(LogStore::open(&log_root)?);
    set_mode(&log_root.join("journal"), 0o400);
    let err = LogStore::open(&log_root).unwrap_err();
    assert!(err.to_string().contains("journal"), "{err}");
    set_mode(&dir.join("dir").join("stripes"), 0o500);
    set_mode(&dir.join("dir").join("stripes").join("00.lock"), 0o400);
    let err = DirStore::open(dir.join("dir")).unwrap_err();
    assert!(err.to_string().contains("stripes"), "{err}");

    // A parent directory that may not be written: the store cannot be created.
    let locked = dir.join("locked");
    fs::create_dir(&locked)?;
    set_mode(&locked, 0o500);
    for err in [
        DirStore::open(locked.join("s")).unwrap_err(),
        LogStore::open(locked.join("s")).unwrap_err(),
    ] {
        assert!(
            err.to_string().contains(&*locked.to_string_lossy()),
            "{err}"
        );
    }

    // Writable again, so that the temp dir can be removed.
    set_mode(&locked, 0o700);
    set_mode(&dir.join("dir").join("stripes"), 0o700);
    Ok(())
}

#[test]
fn a_store_the_process_may_not_write_fails_cleanly() -> TestResult {
    if let Some(dir) = std::env::var_os(UNPRIVILEGED_CHILD) {
        return unwritable_store_checks(Path::new(&dir));
    }
    let dir = tempdir()?;
    // Permissions do not bind root: run the checks as an unprivileged user then.
    if !common::is_root() {
        return unwritable_store_checks(dir.path());
    }
    set_mode(dir.path(), 0o777);
    let work = dir.path().join("work");
    fs::create_dir(&work)?;
    set_mode(&work, 0o777);
    // A copy of this test binary that the unprivileged user may run.
    let exe = dir.path().join("bad_input-test");
    fs::copy(std::env::current_exe()?, &exe)?;
    set_mode(&exe, 0o755);
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--exact", "a_store_the_process_may_not_write_fails_cleanly"])
        .env(UNPRIVILEGED_CHILD, &work)
        .output()
        .expect("running as root, this test needs setpriv (util-linux) to drop privileges");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "unprivileged child failed:\n{text}"
    );
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    Ok(())
}

/// What the stage of [`pipeline_with_clock_jumps`] does on its next run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Jump {
    None,
    /// Writes one artifact, moves the clock forward by hours, writes another.
    ForwardMidStage,
    /// Moves the clock back by hours, then has a second runner try the same
    /// subject.
    BackMidStage,
}

struct JumpingPipeline {
    _dir: tempfile::TempDir,
    pipeline: jobsafe::Pipeline<MemStore>,
    clock: Arc<ManualClock>,
    next: Arc<std::sync::Mutex<Jump>>,
    /// What the second runner got, in `BackMidStage`.
    rival: Arc<std::sync::Mutex<Option<String>>>,
}

fn pipeline_with_clock_jumps() -> JumpingPipeline {
    let dir = tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let next = Arc::new(std::sync::Mutex::new(Jump::None));
    let rival = Arc::new(std::sync::Mutex::new(None));
    let me: Arc<std::sync::OnceLock<jobsafe::Pipeline<MemStore>>> = Arc::default();
    let (stage_clock, stage_next, stage_rival, stage_me) =
        (clock.clone(), next.clone(), rival.clone(), me.clone());
    let pipeline = jobsafe::Pipeline::builder(MemStore::new(), clock.clone(), dir.path())
        .lease(Duration::from_secs(60))
        // No keep-alive thread: the test alone moves time and renews nothing.
        .renew_every(None)
        .stage("work", move |ctx| {
            let jump = std::mem::replace(&mut *stage_next.lock().unwrap(), Jump::None);
            ctx.write("first.txt", b"1")?;
            match jump {
                Jump::None => {}
                Jump::ForwardMidStage => stage_clock.advance(3 * HOUR),
                Jump::BackMidStage => {
                    stage_clock.set(START_MS - 3 * 3_600_000);
                    let other = stage_me.get().unwrap();
                    let job = other.enqueue("s", NewJob::new("rival"))?;
                    let outcome = other.run_job(&job.id).map(|r| format!("{:?}", r.outcome));
                    *stage_rival.lock().unwrap() = Some(format!("{outcome:?}"));
                }
            }
            ctx.write("second.txt", b"2")?;
            Ok(())
        })
        .build()
        .unwrap();
    me.set(pipeline.clone()).ok();
    JumpingPipeline {
        _dir: dir,
        pipeline,
        clock,
        next,
        rival,
    }
}

#[test]
fn a_clock_jumping_forward_mid_stage_stops_the_runner_before_its_next_write() -> TestResult {
    let t = pipeline_with_clock_jumps();
    let job = t.pipeline.enqueue("s", NewJob::new("k"))?;
    *t.next.lock().unwrap() = Jump::ForwardMidStage;

    let report = t.pipeline.run_job(&job.id)?;

    assert!(
        matches!(
            report.outcome,
            jobsafe::pipeline::RunOutcome::LostLease { .. }
        ),
        "{:?}",
        report.outcome
    );
    let job_dir = t.pipeline.job_dir(&job.id);
    assert!(job_dir.join("first.txt").exists());
    assert!(
        !job_dir.join("second.txt").exists(),
        "written after the lease ended"
    );
    assert_ne!(
        t.pipeline.jobs().get(&job.id)?.unwrap().status,
        JobStatus::Complete
    );

    // Back by hours, to before the lost lease ended: nothing un-loses it, and
    // the job is finished by a fresh run later.
    t.clock.set(START_MS);
    t.clock.advance(3 * HOUR);
    let report = t.pipeline.run_job(&job.id)?;
    assert!(
        matches!(report.outcome, jobsafe::pipeline::RunOutcome::Completed),
        "{:?}",
        report.outcome
    );
    assert!(job_dir.join("second.txt").exists());
    Ok(())
}

#[test]
fn a_clock_jumping_back_mid_stage_hands_the_subject_to_no_second_runner() -> TestResult {
    let t = pipeline_with_clock_jumps();
    let job = t.pipeline.enqueue("s", NewJob::new("k"))?;
    *t.next.lock().unwrap() = Jump::BackMidStage;

    let report = t.pipeline.run_job(&job.id)?;

    // The runner's lease did not end when time went back: it finished its work,
    // and the rival found the subject busy.
    assert!(
        matches!(report.outcome, jobsafe::pipeline::RunOutcome::Completed),
        "{:?}",
        report.outcome
    );
    let rival = t.rival.lock().unwrap().clone().unwrap();
    assert!(rival.contains("Busy"), "the second runner got {rival}");
    Ok(())
}

#[test]
fn extreme_times_and_durations_saturate_instead_of_overflowing() -> TestResult {
    let late = u64::MAX - 5;
    let clock = Arc::new(ManualClock::new(late));
    let store = Arc::new(MemStore::new());

    let locks = JobLock::new(store.clone(), clock.clone());
    let Acquire::Acquired(guard) =
        locks.acquire(&Key::new(["l"])?, Duration::MAX, &LockRequest::new())?
    else {
        panic!("free lock held");
    };
    assert_eq!(guard.record().expires_ms, u64::MAX);
    assert_eq!(guard.remaining(), Duration::from_millis(5));

    let ledger = JobLedger::builder(store.clone(), clock.clone())
        .ttl(Duration::MAX)
        .build()?;
    let Reserve::New(reservation) = ledger.reserve("a", "j", &ChargeRequest::new())? else {
        panic!("new job id not new");
    };
    assert_eq!(reservation.expires_ms, u64::MAX);
    assert_eq!(ledger.purge_expired(Duration::MAX)?, 0);

    let jobs = JobState::new(store.clone(), clock.clone());
    let job = jobs.create(NewJob::new("k"))?;
    let worker = jobs.start(&job.id, None)?;
    jobs.fail(
        &worker,
        JobError::new("busy"),
        FailureKind::Transient {
            retry_at_ms: u64::MAX,
        },
    )?;
    assert!(
        jobs.recover(Duration::MAX, RecoveryAction::Requeue)?
            .is_empty()
    );
    assert_eq!(jobs.purge(Duration::MAX, Duration::MAX)?.total(), 0);

    let unbounded = jobsafe::pipeline::RetryPolicy::default()
        .first_delay(Duration::MAX)
        .max_delay(Duration::MAX);
    for policy in [jobsafe::pipeline::RetryPolicy::default(), unbounded] {
        for failures in [0, 1, 63, 64, 65, u32::MAX] {
            assert!(policy.delay_for(failures) <= policy.ceiling_for(failures));
        }
    }

    // A sweep whose clock is before every file time, or at the end of time.
    let dir = tempdir()?;
    jobsafe::AtomicWriter::new().write(dir.path().join("f"), b"x")?;
    for now in [0, u64::MAX] {
        jobsafe::AtomicWriter::new().sweep(dir.path(), Duration::MAX, &ManualClock::new(now))?;
    }
    guard.release()?;
    Ok(())
}

#[test]
fn a_checkpoint_with_unknown_fields_still_lets_its_stage_be_skipped() -> TestResult {
    let dir = tempdir()?;
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fail_second = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (r1, r2, f2) = (runs.clone(), runs.clone(), fail_second.clone());
    let pipeline = jobsafe::Pipeline::builder(store.clone(), clock, dir.path())
        .stage("first", move |ctx| {
            r1.lock().unwrap().push("first");
            ctx.write("first.txt", b"1")?;
            Ok(())
        })
        .stage("second", move |_| {
            r2.lock().unwrap().push("second");
            if f2.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(jobsafe::pipeline::StageError::permanent("no"));
            }
            Ok(())
        })
        .build()?;
    let job = pipeline.enqueue("s", NewJob::new("k"))?;
    pipeline.run_job(&job.id)?;
    let checkpoint = Key::new(["pipeline", "checkpoint", job.id.as_str(), "first"])?;
    add_future_fields(&*store, &checkpoint, None);
    // And one inside its first artifact.
    let mut record = raw(&*store, &checkpoint);
    record["artifacts"][0]["nested_later"] = json!(1);
    store.put(&checkpoint, &serde_json::to_vec(&record)?, Expect::Any)?;

    fail_second.store(false, std::sync::atomic::Ordering::SeqCst);
    pipeline.retry(&job.id)?;
    let report = pipeline.run_job(&job.id)?;

    assert!(
        matches!(report.outcome, jobsafe::pipeline::RunOutcome::Completed),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.skipped(), ["first"]);
    assert_eq!(*runs.lock().unwrap(), ["first", "second", "second"]);
    // Skipped, so not rewritten: the newer version's fields are all still there.
    let after = raw(&*store, &checkpoint);
    assert_eq!(after["added_later"], json!({"by": "v2", "list": [1, 2]}));
    assert_eq!(after["artifacts"][0]["nested_later"], json!(1));
    Ok(())
}

#[test]
fn a_shortened_directory_whose_segment_file_is_damaged_is_reported_by_list() -> TestResult {
    let dir = tempdir()?;
    let store = DirStore::open(dir.path().join("store"))?;
    let long = "L".repeat(400);
    let key = Key::new([long.as_str(), "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    let segment_file = store.path_of(&key).parent().unwrap().join(".segment");
    assert_eq!(fs::read(&segment_file)?, long.as_bytes());

    for bytes in [
        &b""[..],
        b"\0",
        b"\xff",
        b"another segment",
        &long.as_bytes()[1..],
    ] {
        fs::write(&segment_file, bytes)?;
        let err = store.list_all(&Prefix::all()).unwrap_err();
        assert!(err.is_corrupt(), "{bytes:?}: {err}");
        assert!(err.to_string().contains(".segment"), "{err}");
        // The record itself is found by its key, which does not need the file.
        assert_eq!(store.get(&key)?.unwrap().value, b"1");
    }
    Ok(())
}

#[test]
fn a_checkpoint_of_a_newer_schema_is_never_moved_aside_or_rewritten() -> TestResult {
    let dir = tempdir()?;
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Arc::new(MemStore::new());
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let should_fail = fail.clone();
    let pipeline = jobsafe::Pipeline::builder(store.clone(), clock, dir.path())
        .stage("first", |ctx| {
            ctx.write("first.txt", b"1")?;
            Ok(())
        })
        .stage("second", move |_| {
            if should_fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(jobsafe::pipeline::StageError::permanent("no"));
            }
            Ok(())
        })
        .build()?;
    let job = pipeline.enqueue("s", NewJob::new("k"))?;
    pipeline.run_job(&job.id)?;
    let checkpoint = Key::new(["pipeline", "checkpoint", job.id.as_str(), "first"])?;
    let mut newer = raw(&*store, &checkpoint);
    newer["schema"] = json!(2);
    let newer = serde_json::to_vec(&newer)?;
    store.put(&checkpoint, &newer, Expect::Any)?;

    // A rolling deploy: this (older) version meets the newer record.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    pipeline.retry(&job.id)?;
    let ran = pipeline.run_job(&job.id);

    assert!(
        matches!(&ran, Err(Error::UnsupportedSchema { found: 2, .. })),
        "{:?}",
        ran.map(|r| r.outcome)
    );
    assert_eq!(store.get(&checkpoint)?.unwrap().value, newer);
    assert!(store.list_all(&Prefix::all())?.contains(&checkpoint));
    // The run let go of its subject on the way out.
    let locks = store.list_all(&Prefix::new(["pipeline", "locks"])?)?;
    assert!(locks.is_empty(), "{locks:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Damaged sectors in a LogStore journal
// ---------------------------------------------------------------------------------

/// Where each frame of a journal starts and ends, read from their headers
/// (magic, payload length, journal id, sequence, checksum: 28 bytes).
fn frame_spans(journal: &[u8]) -> Vec<(usize, usize)> {
    const HEADER: usize = 28;
    let mut spans = Vec::new();
    let mut at = 32; // after the file header
    while journal.len() >= at + HEADER && &journal[at..at + 4] == b"JSFR" {
        let len = u32::from_le_bytes(journal[at + 4..at + 8].try_into().unwrap()) as usize;
        spans.push((at, at + HEADER + len));
        at += HEADER + len;
    }
    spans
}

/// What opening a damaged copy of a store found.
#[derive(Default)]
struct SweepCounts {
    tried: usize,
    reported: usize,
    tail: usize,
    intact: usize,
    silent: Vec<String>,
}

#[test]
fn a_damaged_sector_anywhere_in_a_journal_is_reported_or_is_a_torn_tail() {
    const FRAMES: usize = 50;
    const SECTOR: usize = 512;
    let dir = tempdir().unwrap();
    let original = dir.path().join("original");
    let written: Vec<(Key, Vec<u8>)> = {
        let store = LogStore::open(&original).unwrap();
        (0..FRAMES)
            .map(|i| {
                let key = common::key(&format!("k/{i:02}"));
                let value = format!("value {i} {}", "x".repeat(i % 7)).into_bytes();
                store.put(&key, &value, Expect::Absent).unwrap(); // one frame each
                (key, value)
            })
            .collect()
    };
    let journal_path = original.join("journal");
    let full = fs::read(&journal_path).unwrap();
    let spans = frame_spans(&full);
    assert!(spans.len() >= FRAMES, "{} frames", spans.len());
    let end = spans.last().unwrap().1;
    // The preallocated zeros past the frames are cut to a sector, so that each
    // trial copies kilobytes, not megabytes: a journal may end anywhere.
    let journal = &full[..end + SECTOR];

    let mut counts = SweepCounts::default();
    let mut rng = fastrand::Rng::with_seed(0x5EC7_0125);
    let trial = dir.path().join("trial");
    common::copy_tree(&original, &trial);
    let (stride, offsets) = sweep_offsets(end, SECTOR);
    for (i, &at) in offsets.iter().enumerate() {
        for filler in ["zeros", "random"] {
            let random = (filler == "random").then_some(&mut rng);
            let Some(damaged) = damaged(journal, at, SECTOR, random) else {
                continue; // nothing changed
            };
            counts.tried += 1;
            // The marker and lock file stay; each trial brings its own journal.
            fs::write(trial.join("journal"), &damaged).unwrap();
            let what = format!("{SECTOR} bytes of {filler} at byte {at} (trial {i})");
            // No flush: the trial copies are thrown away, and repairs of a torn
            // tail would otherwise cost an fsync each.
            let opened = LogStore::builder(&trial)
                .durability(jobsafe::Durability::AtomicOnly)
                .create(false)
                .open();
            let store = match opened {
                Err(e) if e.is_corrupt() => {
                    counts.reported += 1;
                    continue;
                }
                Err(e) => panic!("{what}: open failed with an error that is not damage: {e}"),
                Ok(store) => store,
            };
            // What the store serves must be what was written; what it lost must
            // be a tail: no intact frame after the damage.
            let mut lost = 0;
            for (key, value) in &written {
                match store.get(key) {
                    Ok(Some(entry)) if entry.value == *value => {}
                    Ok(None) => lost += 1,
                    Ok(Some(entry)) => counts.silent.push(format!(
                        "{what}: {key} served {:?}, never written",
                        String::from_utf8_lossy(&entry.value)
                    )),
                    Err(e) if e.is_corrupt() => {}
                    Err(e) => panic!("{what}: get {key}: {e}"),
                }
            }
            let intact_after = spans.iter().any(|&(start, _)| start >= at + SECTOR);
            match (lost, intact_after) {
                (0, _) => counts.intact += 1,
                (_, false) => counts.tail += 1,
                (_, true) => counts.silent.push(format!(
                    "{what}: {lost} acknowledged records lost without an error, though \
                     intact frames follow the damage"
                )),
            }
        }
    }
    println!(
        "damage_sweep: store=log frames={} journal_bytes={end} stride={stride} tried={} tail={} reported={} \
         intact={} silent={}",
        spans.len(),
        counts.tried,
        counts.tail,
        counts.reported,
        counts.intact,
        counts.silent.len()
    );
    assert!(
        counts.silent.is_empty(),
        "{} silent losses, first: {}",
        counts.silent.len(),
        counts.silent[0]
    );
    assert!(
        counts.reported > 0 && counts.tail > 0,
        "the sweep exercised nothing"
    );
}

/// The byte offsets a damage sweep tries in a file of `len` bytes: every
/// `JOBSAFE_DAMAGE_SWEEP_STRIDE`-th one (7 by default, 1 in `.ci/run`) and
/// every sector boundary.
fn sweep_offsets(len: usize, sector: usize) -> (usize, Vec<usize>) {
    let stride: usize = std::env::var("JOBSAFE_DAMAGE_SWEEP_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
        .max(1);
    let offsets = (0..len)
        .step_by(stride)
        .chain((0..len).step_by(sector))
        .collect();
    (stride, offsets)
}

/// `original` with `sector` bytes of zeros or random bytes at `at` (growing it
/// if they reach past its end); `None` if that changes nothing.
fn damaged(
    original: &[u8],
    at: usize,
    sector: usize,
    random: Option<&mut fastrand::Rng>,
) -> Option<Vec<u8>> {
    let mut bytes = original.to_vec();
    bytes.resize(bytes.len().max(at + sector), 0);
    match random {
        Some(rng) => bytes[at..at + sector]
            .iter_mut()
            .for_each(|b| *b = rng.u8(..)),
        None => bytes[at..at + sector].iter_mut().for_each(|b| *b = 0),
    }
    (bytes != original).then_some(bytes)
}

#[test]
fn a_damaged_sector_anywhere_in_a_dir_store_record_is_reported_never_served() {
    const SECTOR: usize = 512;
    let dir = tempdir().unwrap();
    let store = DirStore::open(dir.path()).unwrap();
    let key = common::key("jobs/job-1");
    let value = br#"{"status":"running","stage":"draft"}"#.to_vec();
    store.put(&key, b"first", Expect::Absent).unwrap();
    let version = store.put(&key, &value, Expect::Any).unwrap();
    let path = store.path_of(&key);
    let original = fs::read(&path).unwrap();

    let (stride, offsets) = sweep_offsets(original.len(), SECTOR);
    let mut rng = fastrand::Rng::with_seed(0xD15C_0125);
    let (mut tried, mut reported, mut intact) = (0, 0, 0);
    let mut silent = Vec::new();
    for &at in &offsets {
        for random in [false, true] {
            let Some(bytes) = damaged(&original, at, SECTOR, random.then_some(&mut rng)) else {
                continue;
            };
            tried += 1;
            fs::write(&path, &bytes).unwrap();
            let what = format!(
                "{SECTOR} {} bytes at byte {at}",
                if random { "random" } else { "zero" }
            );
            match store.get(&key) {
                Err(e) if e.is_corrupt() => reported += 1,
                Err(e) => panic!("{what}: an error that is not damage: {e}"),
                Ok(Some(entry)) if entry.value == value && entry.version == version => intact += 1,
                Ok(found) => silent.push(format!("{what}: served {found:?}")),
            }
            // Never silently absent from a listing either.
            let listed = store.list_all(&Prefix::new(["jobs"]).unwrap());
            if listed.as_ref().is_ok_and(|keys| !keys.contains(&key)) {
                silent.push(format!("{what}: missing from the listing"));
            }
        }
    }
    fs::write(&path, &original).unwrap();
    assert_eq!(store.get(&key).unwrap().unwrap().value, value);
    println!(
        "damage_sweep: store=dir file=record bytes={} stride={stride} tried={tried} \
         reported={reported} intact={intact} silent={}",
        original.len(),
        silent.len()
    );
    assert!(
        silent.is_empty(),
        "{} silent, first: {}",
        silent.len(),
        silent[0]
    );
    assert!(reported > 0);
}

#[test]
fn a_damaged_sector_anywhere_in_a_pending_dir_store_batch_is_reported_never_half_applied() {
    use jobsafe::testing::{Fault, Faulty, OpKind};
    const SECTOR: usize = 512;
    let dir = tempdir().unwrap();
    let original = dir.path().join("original");
    let (a, b) = (
        common::key("credits/lic:1"),
        common::key("ledger/lic:1/job-1"),
    );
    {
        // The journal's flush passes and the first record's fails: the batch
        // is pending, its journal left for the next open to complete.
        let vfs = Faulty::new(jobsafe::vfs::StdVfs);
        let store = DirStore::builder(&original)
            .vfs(vfs.clone())
            .open()
            .unwrap();
        vfs.arm(Fault::from_nth(2).only([OpKind::FileSync]));
        let batch = jobsafe::Batch::new().put(&a, b"9", Expect::Absent).put(
            &b,
            br#"{"charged":1}"#,
            Expect::Absent,
        );
        let err = store.apply(&batch).unwrap_err();
        assert!(matches!(err, Error::BatchPending { .. }), "{err}");
    }
    let journals: Vec<_> = fs::read_dir(original.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "batch"))
        .collect();
    let [journal] = journals.as_slice() else {
        panic!("expected one pending journal, found {journals:?}")
    };
    let name = journal.file_name().unwrap().to_owned();
    let journal_bytes = fs::read(journal).unwrap();

    let (stride, offsets) = sweep_offsets(journal_bytes.len(), SECTOR);
    let mut rng = fastrand::Rng::with_seed(0xBA7C_0125);
    let (mut tried, mut reported, mut completed) = (0, 0, 0);
    let mut silent = Vec::new();
    for &at in &offsets {
        for random in [false, true] {
            let Some(bytes) = damaged(&journal_bytes, at, SECTOR, random.then_some(&mut rng))
            else {
                continue;
            };
            tried += 1;
            let trial = dir.path().join(format!("trial-{tried}"));
            common::copy_tree(&original, &trial);
            fs::write(trial.join("journal").join(&name), &bytes).unwrap();
            let what = format!(
                "{SECTOR} {} bytes at byte {at}",
                if random { "random" } else { "zero" }
            );
            match DirStore::open(&trial) {
                Err(e) if e.is_corrupt() => reported += 1,
                Err(e) => panic!("{what}: open failed with an error that is not damage: {e}"),
                Ok(store) => {
                    let (got_a, got_b) = (store.get(&a), store.get(&b));
                    match (got_a, got_b) {
                        (Ok(Some(x)), Ok(Some(y)))
                            if x.value == b"9" && y.value == br#"{"charged":1}"# =>
                        {
                            completed += 1;
                        }
                        other => silent.push(format!("{what}: the batch became {other:?}")),
                    }
                }
            }
            fs::remove_dir_all(&trial).unwrap();
        }
    }
    println!(
        "damage_sweep: store=dir file=batch_journal bytes={} stride={stride} tried={tried} \
         reported={reported} completed={completed} silent={}",
        journal_bytes.len(),
        silent.len()
    );
    assert!(
        silent.is_empty(),
        "{} silent, first: {}",
        silent.len(),
        silent[0]
    );
    assert!(reported > 0);
}

// ---------------------------------------------------------------------------------
// FIFOs, devices and huge files where a store reads its own files
// ---------------------------------------------------------------------------------

#[test]
fn a_fifo_device_or_huge_file_as_a_dirstore_record_is_corrupt_at_once_and_quarantined() {
    for kind in NOT_LINKS {
        hostile::dir_store_record(kind);
    }
}

#[test]
fn a_fifo_device_or_huge_file_in_a_dirstore_listing_fails_the_listing_at_once() {
    for kind in NOT_LINKS {
        hostile::dir_store_listing(kind);
    }
}

#[test]
fn a_fifo_device_or_huge_file_as_a_dirstore_batch_journal_is_reported_never_replayed() {
    for kind in NOT_LINKS {
        hostile::dir_store_journal(kind);
    }
}

#[test]
fn a_fifo_device_or_huge_file_as_a_dirstore_floor_marker_or_lock_is_reported_at_once() {
    for kind in NOT_LINKS {
        hostile::dir_store_small_files(kind);
    }
}

#[test]
fn a_fifo_device_or_huge_file_among_a_logstores_files_fails_its_open_at_once() {
    for kind in NOT_LINKS {
        hostile::log_store_files(kind);
    }
}
