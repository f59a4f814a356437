//! Byte-level fuzzing of every decoder, on stable Rust with proptest: arbitrary
//! bytes, and mutations (bit flips, byte changes, truncations, splices) of valid
//! encodings.
//!
//! No input may panic. A mutated encoding is rejected with an error, or decodes
//! to something that round-trips; for a checksummed format (DirStore record files
//! and batch journals, LogStore journals) any change is rejected, except that a
//! LogStore journal may lose its last frames, as after a torn write.
//!
//! The decoders are reached through the public API: bytes are put where a store
//! or a component reads them (a record file, a journal, a store value).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jobsafe::jobs::{Job, NewJob};
use jobsafe::ledger::ChargeRequest;
use jobsafe::lock::LockRequest;
use jobsafe::pipeline::Checkpoint;
use jobsafe::record::{self, Extra, Record};
use jobsafe::{
    DirStore, Durability, Error, Expect, JobLedger, JobLock, JobState, Key, LogStore, ManualClock,
    MemStore, Prefix, Store,
};
use proptest::prelude::*;
use serde_json::json;

const START_MS: u64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------

/// One change to a valid encoding. Positions are taken modulo the length.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        byte: u8,
    },
    Truncate {
        at: usize,
    },
    /// Replaces `len` bytes at `at` with `with` (inserting when `len` is 0).
    Splice {
        at: usize,
        len: usize,
        with: Vec<u8>,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<usize>(), 0usize..8, proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(at, len, with)| Mutation::Splice { at, len, with }),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

fn mutate(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        let len = out.len().max(1);
        match m {
            Mutation::FlipBit { at, bit } => {
                if let Some(b) = out.get_mut(at % len) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::SetByte { at, byte } => {
                if let Some(b) = out.get_mut(at % len) {
                    *b = *byte;
                }
            }
            Mutation::Truncate { at } => out.truncate(at % len),
            Mutation::Splice { at, len: n, with } => {
                let at = (at % (out.len() + 1)).min(out.len());
                let end = (at + n).min(out.len());
                out.splice(at..end, with.iter().copied());
            }
        }
    }
    out
}

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..512)
}

fn fs_config() -> ProptestConfig {
    // Each case creates a store on disk: fewer cases than the in-memory decoders
    // get, unless PROPTEST_CASES asks for a longer run.
    let config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        return config;
    }
    ProptestConfig {
        cases: 64,
        ..config
    }
}

// ---------------------------------------------------------------------------------
// The record codec and keys
// ---------------------------------------------------------------------------------

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Sample {
    name: String,
    count: u64,
    tags: Vec<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

impl Record for Sample {
    const SCHEMA: u32 = 2;
}

fn sample_key() -> Key {
    Key::new(["samples", "lic:abc"]).unwrap()
}

fn sample_bytes() -> Vec<u8> {
    let sample = Sample {
        name: "é\"x".into(),
        count: 7,
        tags: vec!["a".into(), "b".into()],
        note: None,
        extra: Extra::new(),
    };
    record::encode(&sample_key(), &sample).unwrap()
}

/// Decodes `bytes`; if they decode, re-encoding and decoding again gives the same.
fn codec_round_trips(bytes: &[u8]) -> Result<(), TestCaseError> {
    let key = sample_key();
    match record::decode::<Sample>(&key, bytes) {
        Ok(sample) => {
            let again = record::encode(&key, &sample).unwrap();
            let back: Sample = record::decode(&key, &again).unwrap();
            prop_assert_eq!(back, sample);
        }
        Err(e) => prop_assert!(
            matches!(&e, Error::Corrupt { key: k, .. } | Error::UnsupportedSchema { key: k, .. } if *k == key),
            "{}",
            e
        ),
    }
    Ok(())
}

/// Valid JSON keys, to mutate.
fn key_json() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec("[a-z.:/%\\\\~ \u{e9}]{1,12}", 1..5)
        .prop_map(|segments| serde_json::to_vec(&Key::new(segments).unwrap()).unwrap())
}

proptest! {
    #[test]
    fn the_record_codec_survives_arbitrary_bytes(bytes in arbitrary_bytes()) {
        codec_round_trips(&bytes)?;
    }

    #[test]
    fn the_record_codec_rejects_or_round_trips_mutated_records(m in mutations()) {
        codec_round_trips(&mutate(&sample_bytes(), &m))?;
    }

    #[test]
    fn keys_from_mutated_json_are_rejected_or_valid_and_round_trip(
        json in key_json(),
        m in mutations(),
    ) {
        let bytes = mutate(&json, &m);
        if let Ok(key) = serde_json::from_slice::<Key>(&bytes) {
            // Every accepted key satisfies Key::new's rules.
            let rebuilt = Key::new(key.segments().iter().cloned()).unwrap();
            prop_assert_eq!(&rebuilt, &key);
            let again: Key = serde_json::from_slice(&serde_json::to_vec(&key).unwrap()).unwrap();
            prop_assert_eq!(again, key);
        }
    }

    #[test]
    fn keys_from_arbitrary_strings_never_panic(segments in proptest::collection::vec(".{0,40}", 0..20)) {
        if let Ok(key) = Key::new(segments.clone()) {
            prop_assert_eq!(key.segments(), &segments[..]);
            prop_assert!(!key.to_string().is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------
// DirStore record files, names, batch journals and floors
// ---------------------------------------------------------------------------------

/// A DirStore (no fsyncs: the files are the point, not their durability) holding
/// one record; returns the store, the key and the record file's bytes.
fn dir_store_with_a_record(root: &Path) -> (DirStore, Key, Vec<u8>) {
    let store = DirStore::builder(root)
        .durability(Durability::AtomicOnly)
        .open()
        .unwrap();
    let key = Key::new(["jobs", "lic:abc", "1"]).unwrap();
    store
        .put(&key, br#"{"schema":1,"status":"queued"}"#, Expect::Absent)
        .unwrap();
    let bytes = fs::read(store.path_of(&key)).unwrap();
    (store, key, bytes)
}

#[test]
fn every_bit_flip_of_a_dirstore_record_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key, good) = dir_store_with_a_record(dir.path());
    let path = store.path_of(&key);
    for at in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            fs::write(&path, &bad).unwrap();
            match store.get(&key) {
                Err(e) => assert!(e.is_corrupt(), "{e}"),
                Ok(entry) => panic!(
                    "flip of bit {bit} of byte {at} ({:?}) read as {entry:?}",
                    char::from(good[at])
                ),
            }
        }
    }
}

proptest! {
    #![proptest_config(fs_config())]

    #[test]
    fn mutated_dirstore_record_files_are_rejected(m in mutations()) {
        let dir = tempfile::tempdir().unwrap();
        let (store, key, good) = dir_store_with_a_record(dir.path());
        let bad = mutate(&good, &m);
        fs::write(store.path_of(&key), &bad).unwrap();
        match store.get(&key) {
            Ok(entry) => prop_assert_eq!(&bad, &good, "changed file read as {:?}", entry),
            Err(e) => prop_assert!(e.is_corrupt(), "{}", e),
        }
        // Listing reads names, not contents: it still lists the key.
        prop_assert_eq!(store.list_all(&Prefix::all()).unwrap(), vec![key]);
    }

    #[test]
    fn arbitrary_dirstore_record_files_never_panic(bytes in arbitrary_bytes()) {
        let dir = tempfile::tempdir().unwrap();
        let (store, key, _) = dir_store_with_a_record(dir.path());
        fs::write(store.path_of(&key), &bytes).unwrap();
        if let Err(e) = store.get(&key) {
            prop_assert!(e.is_corrupt(), "{}", e);
        }
        if let Err(e) = store.put(&key, b"x", Expect::Any) {
            prop_assert!(e.is_corrupt(), "{}", e);
        }
    }

    #[test]
    fn arbitrary_file_names_in_a_dirstore_never_panic(
        names in proptest::collection::vec("[a-zA-Z0-9%^~._ -]{1,24}", 1..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (store, key, good) = dir_store_with_a_record(dir.path());
        let jobs_dir = store.path_of(&key).parent().unwrap().to_path_buf();
        for name in &names {
            let _ = fs::write(jobs_dir.join(name), &good);
        }
        // Each listed key is ours, or one a planted name decodes to; reading it
        // gives a value or a Corrupt error (the planted file holds another key).
        if let Ok(keys) = store.list_all(&Prefix::all()) {
            prop_assert!(keys.contains(&key));
            for listed in keys {
                if let Err(e) = store.get(&listed) {
                    prop_assert!(e.is_corrupt(), "{}", e);
                }
            }
        }
    }
}

/// A valid DirStore batch journal deleting `key`, as `apply` writes one.
fn journal_deleting(key: &Key) -> Vec<u8> {
    let mut body = b"jobsafe-journal 1\n".to_vec();
    body.extend_from_slice(format!("D {}\n", serde_json::to_string(key).unwrap()).as_bytes());
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(format!("end {crc:08x}\n").as_bytes());
    body
}

/// Plants `bytes` as a batch journal covering every stripe and reopens the store.
fn reopen_with_journal(root: &Path, bytes: &[u8]) -> jobsafe::Result<DirStore> {
    let path = root
        .join("journal")
        .join("ffffffffffffffff-00000000000000000000000000000000.batch");
    fs::write(&path, bytes).unwrap();
    DirStore::builder(root)
        .durability(Durability::AtomicOnly)
        .open()
}

#[test]
fn a_planted_valid_journal_is_replayed_and_every_bit_flip_of_one_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key, _) = dir_store_with_a_record(dir.path());
    drop(store);
    let good = journal_deleting(&key);
    for at in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            match reopen_with_journal(dir.path(), &bad) {
                Err(e) => assert!(e.is_corrupt(), "{e}"),
                Ok(_) => panic!("flip of bit {bit} of byte {at} was replayed"),
            }
        }
    }
    // The intact journal is replayed: the delete happens.
    let store = reopen_with_journal(dir.path(), &good).unwrap();
    assert_eq!(store.get(&key).unwrap(), None);
}

proptest! {
    #![proptest_config(fs_config())]

    #[test]
    fn mutated_or_arbitrary_dirstore_journals_are_rejected(
        m in mutations(),
        arbitrary in arbitrary_bytes(),
        use_arbitrary in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (store, key, _) = dir_store_with_a_record(dir.path());
        drop(store);
        let good = journal_deleting(&key);
        let bad = if use_arbitrary { arbitrary } else { mutate(&good, &m) };
        match reopen_with_journal(dir.path(), &bad) {
            Ok(store) => {
                prop_assert_eq!(&bad, &good);
                prop_assert_eq!(store.get(&key).unwrap(), None);
            }
            Err(e) => prop_assert!(e.is_corrupt(), "{}", e),
        }
    }

    #[test]
    fn arbitrary_version_floors_never_panic(bytes in arbitrary_bytes()) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _) = dir_store_with_a_record(dir.path());
        for stripe in 0..64 {
            fs::write(dir.path().join("stripes").join(format!("{stripe:02}.floor")), &bytes)
                .unwrap();
        }
        let fresh = Key::new(["fresh"]).unwrap();
        match store.put(&fresh, b"1", Expect::Absent) {
            // A floor that reads as a number gives a version above it.
            Ok(version) => prop_assert!(version.get() >= 1),
            Err(e) => prop_assert!(e.is_corrupt(), "{}", e),
        }
    }
}

// ---------------------------------------------------------------------------------
// LogStore journals
// ---------------------------------------------------------------------------------

/// The writes of the LogStore journal under test, in order.
fn log_writes() -> Vec<(Key, Option<Vec<u8>>)> {
    let k = |s: &str| Key::new(["k", s]).unwrap();
    vec![
        (k("a"), Some(b"1".to_vec())),
        (k("b"), Some(b"two".to_vec())),
        (k("a"), Some(b"three".to_vec())),
        (k("b"), None),
        (k("c"), Some(vec![0; 40])),
    ]
}

/// The contents after each prefix of [`log_writes`] (the empty prefix first).
fn log_states() -> Vec<BTreeMap<Key, Vec<u8>>> {
    let mut states = vec![BTreeMap::new()];
    let mut state = BTreeMap::new();
    for (key, value) in log_writes() {
        match value {
            Some(v) => state.insert(key, v),
            None => state.remove(&key),
        };
        states.push(state.clone());
    }
    states
}

/// A LogStore directory holding [`log_writes`]; returns the journal's bytes up to
/// the end of its frames (the zeros of preallocated space cut off).
fn log_store_template(root: &Path) -> Vec<u8> {
    let store = LogStore::builder(root)
        .durability(Durability::AtomicOnly)
        .no_background_compaction()
        .open()
        .unwrap();
    for (key, value) in log_writes() {
        match value {
            Some(v) => store.put(&key, &v, Expect::Any).map(|_| ()),
            None => store.delete(&key, Expect::Any).map(|_| ()),
        }
        .unwrap();
    }
    let end = store.stats().unwrap().journal_bytes as usize;
    drop(store);
    let mut journal = fs::read(root.join("journal")).unwrap();
    journal.truncate(end);
    journal
}

fn open_log(root: &Path) -> jobsafe::Result<LogStore> {
    LogStore::builder(root)
        .durability(Durability::AtomicOnly)
        .no_background_compaction()
        .open()
}

#[test]
fn every_bit_flip_of_a_logstore_file_header_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let good = log_store_template(&root);
    for at in 0..32 {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            fs::write(root.join("journal"), &bad).unwrap();
            match open_log(&root) {
                Err(e) => assert!(e.is_corrupt(), "{e}"),
                Ok(_) => panic!("flip of bit {bit} of header byte {at} went unnoticed"),
            }
        }
    }
}

proptest! {
    #![proptest_config(fs_config())]

    #[test]
    fn mutated_logstore_journals_are_rejected_or_lose_only_their_last_frames(m in mutations()) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let good = log_store_template(&root);
        let bad = mutate(&good, &m);
        fs::write(root.join("journal"), &bad).unwrap();
        match open_log(&root) {
            Ok(store) => {
                let found = common::contents(&store, &Prefix::all());
                prop_assert!(
                    log_states().contains(&found),
                    "the journal opened with contents no prefix of its writes had: {:?}",
                    found
                );
                // What opened can be written to, and reads back after a reopen.
                let key = Key::new(["k", "after"]).unwrap();
                store.put(&key, b"after", Expect::Any).unwrap();
                drop(store);
                let again = open_log(&root).unwrap();
                let mut expected = found;
                expected.insert(key, b"after".to_vec());
                prop_assert_eq!(common::contents(&again, &Prefix::all()), expected);
            }
            Err(e) => prop_assert!(e.is_corrupt(), "{}", e),
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_logstore_file_header_never_panic(tail in arbitrary_bytes()) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let good = log_store_template(&root);
        let mut bad = good[..32].to_vec();
        bad.extend_from_slice(&tail);
        fs::write(root.join("journal"), &bad).unwrap();
        match open_log(&root) {
            // Garbage is not a frame of this journal: at most an empty store.
            Ok(store) => prop_assert!(common::contents(&store, &Prefix::all()).is_empty()),
            Err(e) => prop_assert!(e.is_corrupt(), "{}", e),
        }
    }
}

// ---------------------------------------------------------------------------------
// The components' records: jobs, events, locks, reservations, checkpoints
// ---------------------------------------------------------------------------------

/// A job with a stage, progress and an event or two, in a MemStore; returns its
/// record's key and bytes, and one of its events' key and bytes.
struct Fixture {
    store: Arc<MemStore>,
    clock: Arc<ManualClock>,
    job_id: String,
    job_key: Key,
    event_key: Key,
}

fn fixture() -> Fixture {
    let store = Arc::new(MemStore::new());
    let clock = Arc::new(ManualClock::new(START_MS));
    let jobs = JobState::new(store.clone(), clock.clone());
    let job = jobs
        .create(
            NewJob::new("transcribe")
                .owner("inst-7")
                .meta("m", json!([1, {"x": null}])),
        )
        .unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    jobs.set_stage(&worker, "draft").unwrap();
    jobs.progress(&worker, "half way").unwrap();
    let job_key = Key::new(["jobs", "job", job.id.as_str()]).unwrap();
    let event_key = store
        .list_all(&Prefix::new(["jobs", "event", job.id.as_str()]).unwrap())
        .unwrap()
        .pop()
        .unwrap();
    Fixture {
        store,
        clock,
        job_id: job.id,
        job_key,
        event_key,
    }
}

/// An error from reading a component's record must be about that record.
fn is_record_error(e: &Error) -> bool {
    e.is_corrupt() || matches!(e, Error::UnsupportedSchema { .. })
}

fn check_job_bytes(f: &Fixture, bytes: &[u8]) -> Result<(), TestCaseError> {
    f.store.put(&f.job_key, bytes, Expect::Any).unwrap();
    let jobs = JobState::new(f.store.clone(), f.clock.clone());
    match jobs.get(&f.job_id) {
        Ok(Some(job)) => {
            // The public type round-trips through its own serde form.
            let json = serde_json::to_value(&job).unwrap();
            let back: Job = serde_json::from_value(json).unwrap();
            prop_assert_eq!(&back.id, &job.id);
            prop_assert_eq!(back.status, job.status);
            prop_assert_eq!(back.events, job.events);
            prop_assert_eq!(&back.client_view(), &job.client_view());
        }
        Ok(None) => prop_assert!(false, "a present record read as absent"),
        Err(e) => prop_assert!(is_record_error(&e), "{}", e),
    }
    // Transitions on whatever was read: a value or an error, never a panic.
    let _ = jobs.events_since(&f.job_id, 0);
    let _ = jobs.cancel(&f.job_id);
    Ok(())
}

fn check_event_bytes(f: &Fixture, bytes: &[u8]) -> Result<(), TestCaseError> {
    f.store.put(&f.event_key, bytes, Expect::Any).unwrap();
    let jobs = JobState::new(f.store.clone(), f.clock.clone());
    match jobs.events_since(&f.job_id, 0) {
        Ok(page) => {
            for event in page.events {
                let json = serde_json::to_value(&event).unwrap();
                prop_assert_eq!(
                    serde_json::from_value::<jobsafe::jobs::Event>(json).unwrap(),
                    event
                );
            }
        }
        Err(e) => prop_assert!(is_record_error(&e), "{}", e),
    }
    Ok(())
}

/// A lock record as `JobLock` writes it, after a renewal (token recorded).
fn lock_bytes(store: &Arc<MemStore>, clock: &Arc<ManualClock>) -> Vec<u8> {
    let locks = JobLock::new(store.clone(), clock.clone());
    let request = LockRequest::new().actor("user:alice").meta("chunks", 12);
    let key = Key::new(["vault", "lic:abc"]).unwrap();
    let jobsafe::lock::Acquire::Acquired(mut guard) = locks
        .acquire(&key, Duration::from_secs(60), &request)
        .unwrap()
    else {
        panic!("free lock held");
    };
    guard.renew(Duration::from_secs(60)).unwrap();
    guard.into_handle();
    store
        .get(&Key::new(["locks", "vault", "lic:abc"]).unwrap())
        .unwrap()
        .unwrap()
        .value
}

fn check_lock_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let store = Arc::new(MemStore::new());
    let clock = Arc::new(ManualClock::new(START_MS));
    let locks = JobLock::new(store.clone(), clock.clone());
    let key = Key::new(["vault", "lic:abc"]).unwrap();
    store
        .put(
            &Key::new(["locks", "vault", "lic:abc"]).unwrap(),
            bytes,
            Expect::Any,
        )
        .unwrap();
    match locks.peek(&key) {
        Ok(Some(record)) => {
            // Whatever it says, an acquire decides by it: held until it expires,
            // unless the process it names (the damage may have changed it) has
            // provably exited.
            let dead = record.holder_liveness() == jobsafe::lock::ProcessLiveness::Dead;
            let acquired = locks.acquire(&key, Duration::from_secs(1), &LockRequest::new());
            match acquired {
                Ok(jobsafe::lock::Acquire::Held(holder)) => {
                    prop_assert!(!record.is_expired_at(START_MS) && !dead);
                    prop_assert_eq!(holder, record);
                }
                Ok(jobsafe::lock::Acquire::Acquired(guard)) => {
                    prop_assert!(record.is_expired_at(START_MS) || dead);
                    guard.into_handle();
                }
                Err(e) => prop_assert!(false, "a readable lock failed to decide: {}", e),
            }
        }
        Ok(None) => prop_assert!(false, "a present record read as absent"),
        Err(e) => {
            prop_assert!(is_record_error(&e), "{}", e);
            // Never counted as free.
            prop_assert!(
                locks
                    .acquire(&key, Duration::from_secs(1), &LockRequest::new())
                    .is_err()
            );
        }
    }
    Ok(())
}

fn reservation_bytes(store: &Arc<MemStore>, clock: &Arc<ManualClock>) -> Vec<u8> {
    let ledger = JobLedger::new(store.clone(), clock.clone());
    let request = ChargeRequest::new()
        .meta("backend", "deepgram")
        .meta("tier", "pro")
        .fingerprint("sha256:9f")
        .meta("minutes", 42);
    ledger.reserve("lic:abc", "job-1", &request).unwrap();
    store
        .get(&ledger.key("lic:abc", "job-1").unwrap())
        .unwrap()
        .unwrap()
        .value
}

fn check_reservation_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let store = Arc::new(MemStore::new());
    let clock = Arc::new(ManualClock::new(START_MS));
    let ledger = JobLedger::new(store.clone(), clock.clone());
    store
        .put(&ledger.key("lic:abc", "job-1").unwrap(), bytes, Expect::Any)
        .unwrap();
    match ledger.lookup("lic:abc", "job-1") {
        Ok(Some(found)) => {
            prop_assert_eq!(
                ledger.lookup("lic:abc", "job-1").unwrap(),
                Some(found.clone())
            );
            // A reserve on a readable reservation is never New while it is live.
            if let Ok(jobsafe::ledger::Reserve::New(_)) = ledger.reserve(
                "lic:abc",
                "job-1",
                &ChargeRequest::new().fingerprint("sha256:9f"),
            ) {
                prop_assert!(found.is_expired_at(START_MS));
            }
        }
        Ok(None) => {}
        Err(e) => {
            prop_assert!(is_record_error(&e), "{}", e);
            prop_assert!(
                ledger
                    .reserve("lic:abc", "job-1", &ChargeRequest::new())
                    .is_err()
            );
        }
    }
    Ok(())
}

/// A checkpoint as a pipeline records it (made once: it runs a pipeline).
fn checkpoint_bytes() -> (Key, Vec<u8>) {
    static MADE: std::sync::OnceLock<(Key, Vec<u8>)> = std::sync::OnceLock::new();
    MADE.get_or_init(make_checkpoint).clone()
}

fn make_checkpoint() -> (Key, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    let clock = Arc::new(ManualClock::new(START_MS));
    let pipeline = jobsafe::Pipeline::builder(store.clone(), clock, dir.path())
        .stage("transcribe", |ctx| {
            ctx.write("transcript.txt", b"hello")?;
            ctx.write_shared("audio.wav", b"RIFF")?;
            Ok(())
        })
        .build()
        .unwrap();
    let job = pipeline.enqueue("s", NewJob::new("k")).unwrap();
    pipeline.run_job(&job.id).unwrap();
    let key = Key::new(["pipeline", "checkpoint", job.id.as_str(), "transcribe"]).unwrap();
    let bytes = store.get(&key).unwrap().unwrap().value;
    (key, bytes)
}

fn check_checkpoint_bytes(key: &Key, bytes: &[u8]) -> Result<(), TestCaseError> {
    match record::decode::<Checkpoint>(key, bytes) {
        Ok(checkpoint) => {
            let again = record::encode(key, &checkpoint).unwrap();
            prop_assert_eq!(
                record::decode::<Checkpoint>(key, &again).unwrap(),
                checkpoint
            );
        }
        Err(e) => prop_assert!(is_record_error(&e), "{}", e),
    }
    Ok(())
}

proptest! {
    #[test]
    fn job_records_mutated_or_arbitrary_never_panic(
        m in mutations(),
        arbitrary in arbitrary_bytes(),
        use_arbitrary in any::<bool>(),
    ) {
        let f = fixture();
        let good = f.store.get(&f.job_key).unwrap().unwrap().value;
        let bytes = if use_arbitrary { arbitrary } else { mutate(&good, &m) };
        check_job_bytes(&f, &bytes)?;
    }

    #[test]
    fn events_mutated_or_arbitrary_never_panic(
        m in mutations(),
        arbitrary in arbitrary_bytes(),
        use_arbitrary in any::<bool>(),
    ) {
        let f = fixture();
        let good = f.store.get(&f.event_key).unwrap().unwrap().value;
        let bytes = if use_arbitrary { arbitrary } else { mutate(&good, &m) };
        check_event_bytes(&f, &bytes)?;
    }

    #[test]
    fn lock_records_mutated_or_arbitrary_never_panic(
        m in mutations(),
        arbitrary in arbitrary_bytes(),
        use_arbitrary in any::<bool>(),
    ) {
        let good = lock_bytes(&Arc::new(MemStore::new()), &Arc::new(ManualClock::new(START_MS)));
        let bytes = if use_arbitrary { arbitrary } else { mutate(&good, &m) };
        check_lock_bytes(&bytes)?;
    }

    #[test]
    fn reservations_mutated_or_arbitrary_never_panic(
        m in mutations(),
        arbitrary in arbitrary_bytes(),
        use_arbitrary in any::<bool>(),
    ) {
        let good =
            reservation_bytes(&Arc::new(MemStore::new()), &Arc::new(ManualClock::new(START_MS)));
        let bytes = if use_arbitrary { arbitrary } else { mutate(&good, &m) };
        check_reservation_bytes(&bytes)?;
    }
}

proptest! {
    #![proptest_config(fs_config())]

    #[test]
    fn checkpoints_mutated_or_arbitrary_never_panic(
        m in mutations(),
        arbitrary in arbitrary_bytes(),
        use_arbitrary in any::<bool>(),
    ) {
        let (key, good) = checkpoint_bytes();
        let bytes = if use_arbitrary { arbitrary } else { mutate(&good, &m) };
        check_checkpoint_bytes(&key, &bytes)?;
    }
}

// ---------------------------------------------------------------------------------
// The record decoder against the one it replaced
// ---------------------------------------------------------------------------------
//
// `record::decode` reads the bytes straight into the record type. It replaced a
// decoding that read the whole object into a `serde_json::Value`, took the
// schema out, then read the rest into the type as `#[derive(Deserialize)]` with
// `#[serde(flatten)] extra` reads it. That decoding is kept here, with the public
// record types as they derived `Deserialize` then, and both must agree on every
// input: the same record (compared as its JSON), or the same error.

/// What a decoding gave: the record as JSON, or its error.
#[derive(Debug, PartialEq)]
enum Outcome {
    Read(serde_json::Value),
    Corrupt(String),
    Unsupported(u32),
}

/// The decoding `record::decode` replaced, into `Old`.
fn decoded_before<Old>(schema: u32, bytes: &[u8]) -> Outcome
where
    Old: serde::de::DeserializeOwned + serde::Serialize,
{
    let mut value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => return Outcome::Corrupt(format!("not JSON: {e}")),
    };
    let Some(object) = value.as_object_mut() else {
        return Outcome::Corrupt("not a JSON object".to_owned());
    };
    let Some(found) = object
        .remove(record::SCHEMA_FIELD)
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
    else {
        return Outcome::Corrupt("missing or invalid \"schema\" field".to_owned());
    };
    if found > schema {
        return Outcome::Unsupported(found);
    }
    match serde_json::from_value::<Old>(value) {
        Ok(old) => Outcome::Read(serde_json::to_value(old).unwrap()),
        Err(e) => Outcome::Corrupt(format!("bad fields: {e}")),
    }
}

/// What `record::decode` gives; its errors must name `key`.
fn decoded_now<R: Record>(key: &Key, bytes: &[u8]) -> Result<Outcome, TestCaseError> {
    Ok(match record::decode::<R>(key, bytes) {
        Ok(record) => Outcome::Read(serde_json::to_value(record).unwrap()),
        Err(Error::Corrupt {
            key: k,
            path: None,
            reason,
        }) if k == *key => Outcome::Corrupt(reason),
        Err(Error::UnsupportedSchema { key: k, found, .. }) if k == *key => {
            Outcome::Unsupported(found)
        }
        Err(e) => return Err(TestCaseError::fail(format!("not about the record: {e}"))),
    })
}

/// `Job` as it derived `Deserialize`.
#[derive(serde::Serialize, serde::Deserialize)]
struct JobBefore {
    id: String,
    kind: String,
    #[serde(default)]
    owner: Option<String>,
    status: jobsafe::jobs::JobStatus,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    stages_done: Vec<String>,
    attempt: u32,
    #[serde(default)]
    progress: Option<String>,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<jobsafe::jobs::JobError>,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    created_ms: u64,
    #[serde(default)]
    started_ms: Option<u64>,
    updated_ms: u64,
    #[serde(default)]
    completed_ms: Option<u64>,
    #[serde(default)]
    retry_at_ms: Option<u64>,
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    fencing: Option<jobsafe::FencingToken>,
    #[serde(default)]
    events: jobsafe::jobs::EventWindow,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write: Option<jobsafe::AttemptId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_by: Option<jobsafe::AttemptId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_by: Option<jobsafe::AttemptId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_seq: Option<u64>,
    #[serde(flatten)]
    extra: Extra,
}

const JOB_FIELDS: &[&str] = &[
    "id",
    "kind",
    "owner",
    "status",
    "stage",
    "stages_done",
    "attempt",
    "progress",
    "result",
    "error",
    "metadata",
    "created_ms",
    "started_ms",
    "updated_ms",
    "completed_ms",
    "retry_at_ms",
    "heartbeat_ms",
    "fencing",
    "events",
    "write",
    "created_by",
    "started_by",
    "started_seq",
    "version",
];

/// `Checkpoint` as it derived `Deserialize`.
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointBefore {
    job_id: String,
    stage: String,
    attempt: u32,
    token: Option<jobsafe::FencingToken>,
    recorded_ms: u64,
    artifacts: Vec<jobsafe::pipeline::Artifact>,
    chain: String,
    #[serde(flatten)]
    extra: Extra,
}

const CHECKPOINT_FIELDS: &[&str] = &[
    "job_id",
    "stage",
    "attempt",
    "token",
    "recorded_ms",
    "artifacts",
    "chain",
];

/// A JSON value of any shape, small.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        // Quarters: written and read back exactly (serde_json does not round-trip
        // every float without its `float_roundtrip` feature, and need not here).
        (-4_000_000i32..4_000_000).prop_map(|n| serde_json::Value::from(f64::from(n) / 4.0)),
        "[a-z\"\\\\é ]{0,6}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid record's members changed: members added under any name (unknown
/// ones, the record's own, the schema), one repeated, and all written in
/// another order (the schema anywhere among them).
#[derive(Clone, Debug)]
struct Rearrangement {
    added: Vec<(String, serde_json::Value)>,
    repeated: Option<(usize, Option<serde_json::Value>)>,
    order: Vec<u32>,
}

fn rearrangement(names: &'static [&'static str]) -> impl Strategy<Value = Rearrangement> {
    let name = prop_oneof![
        4 => "[a-z_]{1,10}",
        2 => proptest::sample::select(names).prop_map(str::to_owned),
        1 => Just(record::SCHEMA_FIELD.to_owned()),
    ];
    (
        proptest::collection::vec((name, json_value()), 0..5),
        proptest::option::weighted(0.2, (any::<usize>(), proptest::option::of(json_value()))),
        proptest::collection::vec(any::<u32>(), 48),
    )
        .prop_map(|(added, repeated, order)| Rearrangement {
            added,
            repeated,
            order,
        })
}

fn arrange(valid: &[u8], change: &Rearrangement) -> Vec<u8> {
    let record: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(valid).unwrap();
    let mut members: Vec<(String, serde_json::Value)> = record.into_iter().collect();
    for (name, value) in &change.added {
        match members.iter_mut().find(|(k, _)| k == name) {
            Some(member) => member.1 = value.clone(),
            None => members.push((name.clone(), value.clone())),
        }
    }
    if let Some((at, value)) = &change.repeated {
        let (name, old) = members[at % members.len()].clone();
        members.push((name, value.clone().unwrap_or(old)));
    }
    let mut ranked: Vec<(u32, usize, String)> = members
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let rank = change.order.get(i).copied().unwrap_or(0);
            (
                rank,
                i,
                format!("{}:{v}", serde_json::to_string(&k).unwrap()),
            )
        })
        .collect();
    ranked.sort();
    let members: Vec<String> = ranked.into_iter().map(|(_, _, m)| m).collect();
    format!("{{{}}}", members.join(",")).into_bytes()
}

/// The job record of [`fixture`], with its error and fencing set too.
fn job_record_bytes() -> (Key, Vec<u8>) {
    static MADE: std::sync::OnceLock<(Key, Vec<u8>)> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let f = fixture();
        let mut record: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&f.store.get(&f.job_key).unwrap().unwrap().value).unwrap();
        record.insert(
            "error".into(),
            json!({"client": "try again", "internal": "disk full", "code": "E1"}),
        );
        record.insert("result".into(), json!({"words": 12, "ratio": 0.5}));
        (f.job_key, serde_json::to_vec(&record).unwrap())
    })
    .clone()
}

fn check_job_as_before(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (key, _) = job_record_bytes();
    prop_assert_eq!(
        decoded_now::<Job>(&key, bytes)?,
        decoded_before::<JobBefore>(Job::SCHEMA, bytes)
    );
    Ok(())
}

fn check_checkpoint_as_before(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (key, _) = checkpoint_bytes();
    prop_assert_eq!(
        decoded_now::<Checkpoint>(&key, bytes)?,
        decoded_before::<CheckpointBefore>(Checkpoint::SCHEMA, bytes)
    );
    Ok(())
}

proptest! {
    #[test]
    fn job_records_with_members_added_or_rearranged_decode_as_before(
        change in rearrangement(JOB_FIELDS),
    ) {
        let (_, valid) = job_record_bytes();
        check_job_as_before(&arrange(&valid, &change))?;
    }

    #[test]
    fn job_records_mutated_or_arbitrary_decode_as_before(
        change in rearrangement(JOB_FIELDS),
        m in mutations(),
        arbitrary in arbitrary_bytes(),
        use_arbitrary in any::<bool>(),
    ) {
        let (_, valid) = job_record_bytes();
        let bytes = if use_arbitrary { arbitrary } else { mutate(&arrange(&valid, &change), &m) };
        check_job_as_before(&bytes)?;
    }

    #[test]
    fn unknown_job_members_survive_a_rewrite(
        added in proptest::collection::btree_map("x_[a-z]{1,6}", json_value(), 1..4),
        order in proptest::collection::vec(any::<u32>(), 48),
    ) {
        let (key, valid) = job_record_bytes();
        let change = Rearrangement {
            added: added.clone().into_iter().collect(),
            repeated: None,
            order,
        };
        let job: Job = record::decode(&key, &arrange(&valid, &change)).unwrap();
        let rewritten: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&record::encode(&key, &job).unwrap()).unwrap();
        for (name, value) in &added {
            prop_assert_eq!(rewritten.get(name), Some(value));
        }
    }
}

proptest! {
    #![proptest_config(fs_config())]

    #[test]
    fn checkpoints_rearranged_mutated_or_arbitrary_decode_as_before(
        change in rearrangement(CHECKPOINT_FIELDS),
        m in proptest::option::of(mutations()),
        arbitrary in arbitrary_bytes(),
        use_arbitrary in any::<bool>(),
    ) {
        let (_, valid) = checkpoint_bytes();
        let arranged = arrange(&valid, &change);
        let bytes = match (use_arbitrary, m) {
            (true, _) => arbitrary,
            (false, Some(m)) => mutate(&arranged, &m),
            (false, None) => arranged,
        };
        check_checkpoint_as_before(&bytes)?;
    }
}
