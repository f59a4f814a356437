//! Simulated power loss: every state a crash may leave, reopened and checked.
//!
//! Each workload runs once on the recording in-memory filesystem
//! (`common::power_loss`, whose docs state the persistence model). Then, for
//! every crash point (after each recorded operation) and every combination of
//! unflushed writes and directory changes lost, kept or torn (all of them
//! when few, a seeded sample otherwise), the state is booted as a fresh
//! filesystem, the store reopened, and checked:
//!
//! - recovery succeeds (no error at all: a legal crash state is never damage);
//! - every write acknowledged before the crash point is there, with its value
//!   and version; a delete acknowledged is absent; a record moved aside is in
//!   its new place;
//! - every key holds a value that was actually written to it, either the
//!   acknowledged one or that of the operation in flight (no torn record);
//!   a batch in flight shows whole or not at all;
//! - the store is usable: a new write to every key succeeds, with a version
//!   above every version acknowledged or found (none reused), so no lock is
//!   held forever; after closing, no lock and no file remain open.
//!
//! Some workloads run several handles at once, as several processes would,
//! each writing where another has just created something and not flushed it
//! yet, or died before it did (a test hook acts at that moment): what each
//! acknowledged must survive, whoever made the directories on its way. A
//! store whose creation returned must open without being created again, with
//! relaxed durability too.
//!
//! `recovery_survives_a_second_power_loss` does the same to what runs after the
//! reboot: it takes crash states whose recovery changes anything (completing a
//! batch, clearing a torn journal tail, sweeping temp files), records that
//! recovery, and checks the states of a power loss in the middle of it against
//! what the first crash point allows.
//!
//! `every_flush_site_has_teeth` then disables the flushes of one source line at
//! a time and requires a violation, so that the simulation cannot pass with a
//! flush missing.
//!
//! `JOBSAFE_POWER_LOSS_STATES` sets the states per crash point (all of them
//! when there are at most this many; default 24), `JOBSAFE_POWER_LOSS_SEED`
//! replays a run's samples (each run prints its seed).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::key;
use common::power_loss::crash::{self, Budget, Totals};
use common::power_loss::fs::{Event, Image, SimVfs, Site};
use common::power_loss::sites;
use jobsafe::vfs::{Vfs, VfsFile};
use jobsafe::{
    AtomicWriter, Batch, DirStore, Durability, Expect, Key, LogStore, ManualClock, Prefix, Store,
};
use parking_lot::Mutex;

// ---------------------------------------------------------------------------
// What the workloads were told, and what a crash state may therefore show.

/// What an operation did to one key (or file).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Effect {
    Value {
        bytes: Vec<u8>,
        version: Option<u64>,
    },
    Absent,
    /// Moved aside: the key is absent and the file at `location` ends with
    /// `bytes`.
    Quarantined {
        location: PathBuf,
        bytes: Vec<u8>,
    },
}

impl Effect {
    fn value(bytes: &[u8], version: jobsafe::Version) -> Self {
        Effect::Value {
            bytes: bytes.to_vec(),
            version: Some(version.get()),
        }
    }

    fn version(&self) -> u64 {
        match self {
            Effect::Value { version, .. } => version.unwrap_or(0),
            _ => 0,
        }
    }
}

/// One operation: the trace position when it started and when it returned.
#[derive(Clone, Debug)]
struct Step {
    start: usize,
    ack: usize,
    effects: Vec<(String, Effect)>,
}

/// The operations a workload had acknowledged, in order.
#[derive(Clone, Debug, Default)]
struct History {
    steps: Vec<Step>,
}

/// Records acknowledgements against the recording filesystem's trace.
#[derive(Clone)]
struct Recorder {
    vfs: SimVfs,
    history: Arc<Mutex<History>>,
}

impl Recorder {
    fn new(vfs: &SimVfs) -> Self {
        Recorder {
            vfs: vfs.clone(),
            history: Arc::default(),
        }
    }

    fn start(&self) -> usize {
        self.vfs.position()
    }

    fn ack(&self, start: usize, effects: Vec<(&str, Effect)>) {
        let effects = effects
            .into_iter()
            .map(|(k, e)| (k.to_owned(), e))
            .collect();
        self.history.lock().steps.push(Step {
            start,
            ack: self.vfs.position(),
            effects,
        });
    }
}

/// What a key may show after a crash at some point.
#[derive(Clone, Debug)]
struct Allowed {
    /// The last acknowledged effect (absent if none).
    acked: Effect,
    /// Whether any write to the key was acknowledged.
    ever_acked: bool,
    /// Effects of the operation running at the crash.
    in_flight: Vec<Effect>,
    /// The highest version ever acknowledged for the key.
    max_version: u64,
}

/// What a crash state must show.
#[derive(Debug)]
struct Expected {
    keys: BTreeMap<String, Allowed>,
    /// Multi-key operations running at the crash: whole or not at all.
    batches: Vec<Vec<(String, Effect)>>,
    /// Whether an operation was acknowledged: the store had been created and
    /// opened, so it must open without being created again.
    created: bool,
}

impl History {
    /// Whether any operation was acknowledged before crash point `point`.
    fn any_acked(&self, point: usize) -> bool {
        self.steps.first().is_some_and(|s| s.ack <= point)
    }

    fn at(&self, point: usize) -> Expected {
        let mut keys: BTreeMap<String, Allowed> = BTreeMap::new();
        let mut batches = Vec::new();
        for step in &self.steps {
            let acked = step.ack <= point;
            let running = !acked && step.start < point;
            if running && step.effects.len() > 1 {
                batches.push(step.effects.clone());
            }
            for (key, effect) in &step.effects {
                let allowed = keys.entry(key.clone()).or_insert_with(|| Allowed {
                    acked: Effect::Absent,
                    ever_acked: false,
                    in_flight: Vec::new(),
                    max_version: 0,
                });
                if acked {
                    allowed.acked = effect.clone();
                    allowed.ever_acked = true;
                    allowed.max_version = allowed.max_version.max(effect.version());
                } else if running {
                    allowed.in_flight.push(effect.clone());
                }
            }
        }
        Expected {
            keys,
            batches,
            created: self.any_acked(point),
        }
    }
}

/// Whether `found` (read from the store, or a file) is what `effect` left.
fn shows(vfs: &SimVfs, found: &Effect, effect: &Effect) -> bool {
    match (found, effect) {
        (Effect::Absent, Effect::Quarantined { location, bytes }) => {
            vfs.contents(location).is_some_and(|c| c.ends_with(bytes))
        }
        (
            Effect::Value { bytes, version },
            Effect::Value {
                bytes: b,
                version: v,
            },
        ) => bytes == b && (v.is_none() || version == v),
        (a, b) => a == b,
    }
}

/// Checks what one key shows; returns whether an acknowledged write was
/// checked.
fn check_key(vfs: &SimVfs, name: &str, found: &Effect, allowed: &Allowed) -> Result<bool, String> {
    let ok =
        shows(vfs, found, &allowed.acked) || allowed.in_flight.iter().any(|e| shows(vfs, found, e));
    if !ok {
        return Err(format!(
            "{name}: found {found:?}; acknowledged {:?}; in flight {:?}",
            allowed.acked, allowed.in_flight
        ));
    }
    Ok(allowed.ever_acked)
}

/// A batch in flight must show all its effects or none.
fn check_batches(
    vfs: &SimVfs,
    expected: &Expected,
    found: &BTreeMap<String, Effect>,
) -> Result<(), String> {
    for batch in &expected.batches {
        let mut new = Vec::new();
        let mut old = Vec::new();
        for (key, effect) in batch {
            let (Some(f), Some(allowed)) = (found.get(key), expected.keys.get(key)) else {
                continue;
            };
            if shows(vfs, f, &allowed.acked) == shows(vfs, f, effect) {
                continue; // the batch changed nothing visible here
            }
            if shows(vfs, f, effect) {
                new.push(key.as_str());
            } else {
                old.push(key.as_str());
            }
        }
        if !new.is_empty() && !old.is_empty() {
            return Err(format!(
                "batch in flight applied in part: done {new:?}, not done {old:?}"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Workloads and their checks.

struct Workload {
    name: &'static str,
    run: fn(&SimVfs, &Recorder),
    /// Opens whatever the workload used on a booted crash state and checks it;
    /// returns how many acknowledged writes it checked.
    check: fn(&SimVfs, &Expected) -> Result<usize, String>,
    /// What runs first after a reboot: the recovery a second power loss may
    /// interrupt. `None` where it adds nothing to the other workloads': no
    /// batch, no compaction, a recovery that only completes a creation (whose
    /// every crash state the first power loss covers) or sweeps temp files.
    recover: Option<Recover>,
}

/// A workload's recovery after a reboot (see [`Workload::recover`]).
type Recover = fn(&SimVfs) -> Result<(), String>;

/// The multi-writer workloads come before the single-writer ones: the
/// teeth check tries the workloads that reach a flush site in this order, and
/// the flushes made for other writers show their need only there.
const WORKLOADS: &[Workload] = &[
    Workload {
        name: "atomic_writer",
        run: atomic_writer_run,
        check: atomic_writer_check,
        recover: Some(atomic_writer_recover),
    },
    Workload {
        name: "dir_store_two_writers",
        run: dir_store_two_writers_run,
        check: dir_store_two_writers_check,
        recover: None,
    },
    Workload {
        name: "log_store_two_writers",
        run: log_store_two_writers_run,
        check: log_store_two_writers_check,
        recover: Some(log_store_two_writers_recover),
    },
    Workload {
        name: "dir_store",
        run: dir_store_run,
        check: dir_store_check,
        recover: Some(dir_store_recover),
    },
    Workload {
        name: "log_store",
        run: log_store_run,
        check: log_store_check,
        recover: Some(log_store_recover),
    },
    Workload {
        name: "log_store_exclusive",
        run: log_store_exclusive_run,
        check: log_store_exclusive_check,
        recover: Some(log_store_exclusive_recover),
    },
    Workload {
        name: "log_store_growth",
        run: log_store_growth_run,
        check: log_store_check,
        recover: Some(log_store_recover),
    },
    Workload {
        name: "relaxed_creation",
        run: relaxed_creation_run,
        check: relaxed_creation_check,
        recover: None,
    },
];

const FILES: &str = "/files";
const FILES_SUB: &str = "/files/sub";

fn file_path(name: &str) -> PathBuf {
    Path::new(FILES).join(name)
}

/// Replaces a file again and again, creates one without clobbering, abandons a
/// write.
fn atomic_writer_run(vfs: &SimVfs, rec: &Recorder) {
    let start = rec.start();
    vfs.create_dir_all_durable(Path::new(FILES_SUB)).unwrap();
    rec.ack(start, vec![]);
    let writer = AtomicWriter::with_vfs(vfs.clone());
    for i in 0..5 {
        let bytes = format!("{{\"state\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 300));
        let start = rec.start();
        writer
            .write(file_path("sub/state.json"), bytes.as_bytes())
            .unwrap();
        rec.ack(
            start,
            vec![(
                "sub/state.json",
                Effect::Value {
                    bytes: bytes.into_bytes(),
                    version: None,
                },
            )],
        );
    }
    let once = writer.to_builder().no_clobber(true).build().unwrap();
    let start = rec.start();
    once.write(file_path("sub/once"), b"created once").unwrap();
    rec.ack(
        start,
        vec![(
            "sub/once",
            Effect::Value {
                bytes: b"created once".to_vec(),
                version: None,
            },
        )],
    );
    let again = once.write(file_path("sub/once"), b"never");
    assert!(again.is_err_and(|e| e.is_already_exists()));
    let mut pending = writer.begin(file_path("top.json")).unwrap();
    pending.write_bytes(b"abandoned").unwrap();
    pending.discard().unwrap();
    let start = rec.start();
    writer.write(file_path("top.json"), b"top").unwrap();
    rec.ack(
        start,
        vec![(
            "top.json",
            Effect::Value {
                bytes: b"top".to_vec(),
                version: None,
            },
        )],
    );
}

fn atomic_writer_recover(vfs: &SimVfs) -> Result<(), String> {
    let writer = AtomicWriter::with_vfs(vfs.clone());
    for dir in [FILES, FILES_SUB] {
        if vfs.read_dir(Path::new(dir)).is_ok() {
            writer
                .sweep(Path::new(dir), Duration::ZERO, &ManualClock::new(0))
                .map_err(|e| format!("sweep {dir}: {e}"))?;
        }
    }
    Ok(())
}

fn atomic_writer_check(vfs: &SimVfs, expected: &Expected) -> Result<usize, String> {
    let mut checked = 0;
    for (name, allowed) in &expected.keys {
        let found = match vfs.contents(&file_path(name)) {
            Some(bytes) => Effect::Value {
                bytes,
                version: None,
            },
            None => Effect::Absent,
        };
        checked += usize::from(check_key(vfs, name, &found, allowed)?);
    }
    // Recovery: the sweep removes every temp file a crash left.
    let writer = AtomicWriter::with_vfs(vfs.clone());
    let clock = ManualClock::new(0);
    for dir in [FILES, FILES_SUB] {
        let Ok(names) = vfs.read_dir(Path::new(dir)) else {
            continue;
        };
        writer
            .sweep(Path::new(dir), Duration::ZERO, &clock)
            .map_err(|e| format!("sweep {dir}: {e}"))?;
        let left: Vec<_> = vfs
            .read_dir(Path::new(dir))
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|n| n.to_string_lossy().ends_with(AtomicWriter::TEMP_SUFFIX))
            .collect();
        if !left.is_empty() {
            return Err(format!(
                "temp files left in {dir} after a sweep ({} before): {left:?}",
                names.len()
            ));
        }
    }
    // Usable: the file can be replaced again.
    if vfs.read_dir(Path::new(FILES_SUB)).is_ok() {
        let path = file_path("sub/state.json");
        writer
            .write(&path, b"after the crash")
            .map_err(|e| format!("write after the crash: {e}"))?;
        if vfs.contents(&path).as_deref() != Some(b"after the crash".as_slice()) {
            return Err("a write after the crash does not read back".to_owned());
        }
    }
    Ok(checked)
}

/// Puts, compare-and-set, a stale CAS, deletes, a re-creation, batches, a key
/// with a hashed (long) segment, and a quarantine: the same on both stores.
fn store_ops<S: Store>(store: &S, rec: &Recorder) {
    let put = |name: &str, value: &[u8], expect: Expect| {
        let start = rec.start();
        let v = store.put(&key(name), value, expect).unwrap();
        rec.ack(start, vec![(name, Effect::value(value, v))]);
        v
    };
    let delete = |name: &str, expect: Expect| {
        let start = rec.start();
        assert!(store.delete(&key(name), expect).unwrap());
        rec.ack(start, vec![(name, Effect::Absent)]);
    };
    let v1 = put("a/1", b"a1 first", Expect::Absent);
    let a2 = put("a/2", b"a2 first", Expect::Absent);
    put("b", b"b first", Expect::Absent);
    let v2 = put("a/1", b"a1 second", Expect::Version(v1));
    let stale = store.put(&key("a/1"), b"never", Expect::Version(v1));
    assert!(stale.is_err_and(|e| e.is_conflict()));
    delete("a/2", Expect::Version(a2));
    put("a/2", b"a2 again", Expect::Absent);

    let batch = Batch::new()
        .put(&key("c/1"), b"c1 batch".to_vec(), Expect::Absent)
        .put(&key("a/1"), b"a1 batch".to_vec(), Expect::Version(v2))
        .delete(&key("b"), Expect::Any);
    let start = rec.start();
    let applied = store.apply(&batch).unwrap();
    let version = |i: usize| match applied[i] {
        jobsafe::store::Applied::Put(v) => v,
        ref other => panic!("batch op {i}: {other:?}"),
    };
    rec.ack(
        start,
        vec![
            ("c/1", Effect::value(b"c1 batch", version(0))),
            ("a/1", Effect::value(b"a1 batch", version(1))),
            ("b", Effect::Absent),
        ],
    );
    // Written right after the batch: replaying the batch's journal again
    // would undo it.
    put("c/1", b"c1 after batch", Expect::Any);

    let long = format!("long/{}/k", "s".repeat(200));
    put(&long, b"under a hashed directory", Expect::Absent);
    delete("c/1", Expect::Any);
    // Into the directory the delete just emptied (DirStore removes it).
    put("c/2", b"c2 after c1 went", Expect::Absent);

    let start = rec.start();
    let moved = store.quarantine(&key("a/2")).unwrap().unwrap();
    rec.ack(
        start,
        vec![(
            "a/2",
            Effect::Quarantined {
                location: PathBuf::from(moved.location),
                bytes: b"a2 again".to_vec(),
            },
        )],
    );

    let batch = Batch::new()
        .put(&key("d/1"), b"d1 batch".to_vec(), Expect::Absent)
        .delete(&key("a/1"), Expect::Any);
    let start = rec.start();
    let applied = store.apply(&batch).unwrap();
    let jobsafe::store::Applied::Put(d1) = applied[0] else {
        panic!("batch op 0: {:?}", applied[0]);
    };
    rec.ack(
        start,
        vec![
            ("d/1", Effect::value(b"d1 batch", d1)),
            ("a/1", Effect::Absent),
        ],
    );
    put("a/1", b"a1 reborn", Expect::Absent);
}

/// Reads every key, checks it and the batches in flight, lists, then writes
/// every key again.
fn check_store<S: Store>(store: &S, vfs: &SimVfs, expected: &Expected) -> Result<usize, String> {
    let mut checked = 0;
    let mut found = BTreeMap::new();
    let mut present = BTreeSet::new();
    for (name, allowed) in &expected.keys {
        let entry = store
            .get(&key(name))
            .map_err(|e| format!("get {name}: {e}"))?;
        let effect = match entry {
            Some(entry) => {
                present.insert(key(name));
                Effect::Value {
                    bytes: entry.value,
                    version: Some(entry.version.get()),
                }
            }
            None => Effect::Absent,
        };
        checked += usize::from(check_key(vfs, name, &effect, allowed)?);
        found.insert(name.clone(), effect);
    }
    check_batches(vfs, expected, &found)?;
    let listed: BTreeSet<Key> = store
        .list_all(&Prefix::all())
        .map_err(|e| format!("list: {e}"))?
        .into_iter()
        .collect();
    if listed != present {
        return Err(format!("list shows {listed:?}, reads found {present:?}"));
    }
    for (name, allowed) in &expected.keys {
        let floor = allowed.max_version.max(found[name].version());
        let value = format!("{name} after the crash");
        let v = store
            .put(&key(name), value.as_bytes(), Expect::Any)
            .map_err(|e| format!("put {name} after the crash: {e}"))?;
        if v.get() <= floor {
            return Err(format!(
                "put {name} after the crash got version {v}, not above {floor} (acknowledged or found before)"
            ));
        }
    }
    Ok(checked)
}

/// After the store is closed: nothing held.
fn check_closed(vfs: &SimVfs) -> Result<(), String> {
    let (locks, files) = (vfs.held_locks(), vfs.open_files());
    if locks != 0 || files != 0 {
        return Err(format!(
            "after closing the store: {locks} locks held, {files} files open"
        ));
    }
    Ok(())
}

const DIR_ROOT: &str = "/data/dir_store";

fn dir_store_run(vfs: &SimVfs, rec: &Recorder) {
    let store = DirStore::builder(DIR_ROOT).vfs(vfs.clone()).open().unwrap();
    store_ops(&store, rec);
}

fn dir_store_recover(vfs: &SimVfs) -> Result<(), String> {
    let store = DirStore::builder(DIR_ROOT).vfs(vfs.clone()).open();
    store.map(drop).map_err(|e| format!("reopen: {e}"))
}

fn dir_store_check(vfs: &SimVfs, expected: &Expected) -> Result<usize, String> {
    check_dir_store_at(vfs, DIR_ROOT, expected)
}

/// Reopens the `DirStore` at `root` (without creating it once its creation
/// had returned), checks it against `expected` and closes it.
fn check_dir_store_at(vfs: &SimVfs, root: &str, expected: &Expected) -> Result<usize, String> {
    let store = DirStore::builder(root)
        .vfs(vfs.clone())
        .create(!expected.created)
        .open()
        .map_err(|e| format!("reopen: {e}"))?;
    let journals: Vec<_> = vfs
        .read_dir(&Path::new(root).join("journal"))
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|n| n.to_string_lossy().ends_with(".batch"))
        .collect();
    if !journals.is_empty() {
        return Err(format!("batch journals left after reopening: {journals:?}"));
    }
    let checked = check_store(&store, vfs, expected)?;
    drop(store);
    check_closed(vfs)?;
    Ok(checked)
}

const LOG_ROOT: &str = "/data/log_store";

fn open_log(vfs: &SimVfs) -> jobsafe::Result<LogStore<SimVfs>> {
    open_log_at(vfs, LOG_ROOT, true)
}

fn open_log_at(vfs: &SimVfs, root: &str, create: bool) -> jobsafe::Result<LogStore<SimVfs>> {
    LogStore::builder(root)
        .vfs(vfs.clone())
        .create(create)
        .no_background_compaction()
        .open()
}

/// The common operations, then a compaction during which another handle (as
/// another process would) writes, so that the compaction copies frames
/// appended while it ran; then writes through both handles.
fn log_store_run(vfs: &SimVfs, rec: &Recorder) {
    let store = open_log(vfs).unwrap();
    store_ops(&store, rec);
    // A writer that died in the middle of an append left the start of a frame
    // after the last one; the next commit clears it.
    let end = store.stats().unwrap().journal_bytes;
    let journal = vfs
        .open_or_create(&Path::new(LOG_ROOT).join("journal"), 0o600)
        .unwrap();
    journal.write_all_at(b"JSFR torn frame", end).unwrap();
    drop(journal);
    let start = rec.start();
    let v = store
        .put(&key("t/1"), b"after a torn frame", Expect::Absent)
        .unwrap();
    rec.ack(
        start,
        vec![("t/1", Effect::value(b"after a torn frame", v))],
    );
    let other = open_log(vfs).unwrap();
    let during = other.clone();
    let hook_rec = rec.clone();
    vfs.on_create(
        |name| name.starts_with("journal.new-"),
        move || {
            let start = hook_rec.start();
            let v = during
                .put(&key("m/1"), b"written during compaction", Expect::Absent)
                .unwrap();
            hook_rec.ack(
                start,
                vec![("m/1", Effect::value(b"written during compaction", v))],
            );
            Ok(())
        },
    );
    let start = rec.start();
    let done = store.compact().unwrap();
    rec.ack(start, vec![]);
    assert!(done.records > 0, "{done:?}");
    for (handle, name) in [(&store, "m/2"), (&other, "m/3")] {
        let start = rec.start();
        let v = handle
            .put(&key(name), name.as_bytes(), Expect::Absent)
            .unwrap();
        rec.ack(start, vec![(name, Effect::value(name.as_bytes(), v))]);
    }
    let start = rec.start();
    assert!(store.delete(&key("m/1"), Expect::Any).unwrap());
    rec.ack(start, vec![("m/1", Effect::Absent)]);
}

/// Writes past the journal's preallocated space, so that the store extends
/// it: crashes land in a torn preallocation and in frames beyond the old end.
fn log_store_growth_run(vfs: &SimVfs, rec: &Recorder) {
    let store = open_log(vfs).unwrap();
    let put = |name: &str, value: &[u8]| {
        let start = rec.start();
        let v = store.put(&key(name), value, Expect::Any).unwrap();
        rec.ack(start, vec![(name, Effect::value(value, v))]);
    };
    put("g/0", b"small before");
    for i in 0..6u8 {
        let big: Vec<u8> = (0..800 << 10)
            .map(|j: u32| (j as u8).wrapping_mul(31) ^ i | 1)
            .collect();
        put("big", &big);
    }
    put("g/1", b"small after");
}

const EXCLUSIVE_LOG_ROOT: &str = "/data/log_store_exclusive";

fn open_exclusive_log(vfs: &SimVfs, create: bool) -> jobsafe::Result<LogStore<SimVfs>> {
    LogStore::builder(EXCLUSIVE_LOG_ROOT)
        .vfs(vfs.clone())
        .create(create)
        .exclusive(true)
        .no_background_compaction()
        .open()
}

/// The common operations and a compaction through one handle in exclusive
/// mode, which checks for no other writer and takes no flock per commit: its
/// crash states must be those of the shared mode, and its recovery the same.
/// The store is reopened in exclusive mode after the crash: a dead process's
/// flocks are gone with it.
fn log_store_exclusive_run(vfs: &SimVfs, rec: &Recorder) {
    let store = open_exclusive_log(vfs, true).unwrap();
    assert!(open_log_at(vfs, EXCLUSIVE_LOG_ROOT, false).is_err());
    store_ops(&store, rec);
    let start = rec.start();
    let done = store.compact().unwrap();
    rec.ack(start, vec![]);
    assert!(done.records > 0, "{done:?}");
    put_acked(&store, rec, "x/1", b"after the compaction");
    let start = rec.start();
    assert!(store.delete(&key("x/1"), Expect::Any).unwrap());
    rec.ack(start, vec![("x/1", Effect::Absent)]);
    put_acked(&store, rec, "x/2", b"last");
}

fn log_store_exclusive_recover(vfs: &SimVfs) -> Result<(), String> {
    open_exclusive_log(vfs, true)
        .map(drop)
        .map_err(|e| format!("reopen: {e}"))
}

fn log_store_exclusive_check(vfs: &SimVfs, expected: &Expected) -> Result<usize, String> {
    let store = open_exclusive_log(vfs, !expected.created).map_err(|e| format!("reopen: {e}"))?;
    let checked = check_store(&store, vfs, expected)?;
    drop(store);
    check_closed(vfs)?;
    Ok(checked)
}

fn log_store_recover(vfs: &SimVfs) -> Result<(), String> {
    open_log(vfs).map(drop).map_err(|e| format!("reopen: {e}"))
}

fn log_store_check(vfs: &SimVfs, expected: &Expected) -> Result<usize, String> {
    check_log_store_at(vfs, LOG_ROOT, expected)
}

/// Reopens the `LogStore` at `root` (without creating it once its creation
/// had returned), checks it against `expected` and closes it.
fn check_log_store_at(vfs: &SimVfs, root: &str, expected: &Expected) -> Result<usize, String> {
    let store = open_log_at(vfs, root, !expected.created).map_err(|e| format!("reopen: {e}"))?;
    let abandoned: Vec<_> = vfs
        .read_dir(Path::new(root))
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|n| n.to_string_lossy().starts_with("journal.new-"))
        .collect();
    if !abandoned.is_empty() {
        return Err(format!(
            "abandoned compactions left after reopening: {abandoned:?}"
        ));
    }
    let checked = check_store(&store, vfs, expected)?;
    drop(store);
    check_closed(vfs)?;
    Ok(checked)
}

// ---------------------------------------------------------------------------
// Several writers: each makes durable the way to what it writes, whoever made
// the directories on it.

/// A put whose acknowledgement the crash states must keep.
fn put_acked<S: Store>(store: &S, rec: &Recorder, name: &str, value: &[u8]) {
    let start = rec.start();
    let v = store.put(&key(name), value, Expect::Any).unwrap();
    rec.ack(start, vec![(name, Effect::value(value, v))]);
}

/// A handle opened inside a hook, for the workload to use afterwards.
type Slot<T> = Arc<Mutex<Option<T>>>;

const TWO_DIR_NAME: &str = "two_writers_dir";
const TWO_DIR_ROOT: &str = "/data/two_writers_dir";

fn open_two_dir(vfs: &SimVfs) -> DirStore<SimVfs> {
    DirStore::builder(TWO_DIR_ROOT)
        .vfs(vfs.clone())
        .open()
        .unwrap()
}

/// Three handles, as three processes would, each writing into directories
/// another made and had not flushed yet: B opens the store the moment A's
/// `mkdir` made its root; C opens it the moment B's marker appears, before B
/// flushed it, and writes at once; then B writes into a directory of keys
/// that A has just made. Whatever A and B had flushed, what B and C
/// acknowledged must survive, and the store must open without being created
/// again.
fn dir_store_two_writers_run(vfs: &SimVfs, rec: &Recorder) {
    let b_slot: Slot<DirStore<SimVfs>> = Arc::default();
    let (vfs_b, rec_b, slot) = (vfs.clone(), rec.clone(), b_slot.clone());
    vfs.on_create(
        |name| name == TWO_DIR_NAME,
        move || {
            let (vfs_c, rec_c) = (vfs_b.clone(), rec_b.clone());
            vfs_b.on_create(
                |name| name == "jobsafe-dirstore",
                move || {
                    let c = open_two_dir(&vfs_c);
                    put_acked(&c, &rec_c, "c/1", b"c1: the marker was not flushed yet");
                    Ok(())
                },
            );
            let b = open_two_dir(&vfs_b);
            put_acked(&b, &rec_b, "b/1", b"b1: the root was not flushed yet");
            *slot.lock() = Some(b);
            Ok(())
        },
    );
    let a = open_two_dir(vfs);
    let b = b_slot.lock().take().unwrap();
    let (b_in_hook, rec_b) = (b.clone(), rec.clone());
    vfs.on_create(
        |name| name == "shared.d",
        move || {
            put_acked(&b_in_hook, &rec_b, "shared/b", b"b: a made the directory");
            Ok(())
        },
    );
    put_acked(&a, rec, "shared/a", b"a made the directory");
    put_acked(&b, rec, "shared/b", b"b again");
    put_acked(&a, rec, "b/2", b"a: b made the directory");
}

fn dir_store_two_writers_check(vfs: &SimVfs, expected: &Expected) -> Result<usize, String> {
    check_dir_store_at(vfs, TWO_DIR_ROOT, expected)
}

const TWO_LOG_ROOT: &str = "/data/two_writers_log";

/// The next rename to `journal` takes effect, then its caller stops: a
/// process killed between renaming a new journal into place and flushing the
/// directory.
fn kill_after_journal_rename(vfs: &SimVfs) {
    vfs.on_create(
        |name| name == "journal",
        || Err(std::io::Error::other("killed right after the rename")),
    );
}

/// A creator that dies after renaming its first journal into place, and a
/// compaction that dies after renaming its new journal into place: neither
/// flushed the directory, and the handles that go on write into the journal
/// they left. Their acknowledged writes must survive.
fn log_store_two_writers_run(vfs: &SimVfs, rec: &Recorder) {
    kill_after_journal_rename(vfs);
    assert!(open_log_at(vfs, TWO_LOG_ROOT, true).is_err());
    let b = open_log_at(vfs, TWO_LOG_ROOT, true).unwrap();
    put_acked(&b, rec, "b/1", b"b1 into a dead creator's journal");
    let a = open_log_at(vfs, TWO_LOG_ROOT, true).unwrap();
    put_acked(&a, rec, "a/1", b"a1");
    kill_after_journal_rename(vfs);
    assert!(a.compact().is_err());
    put_acked(&b, rec, "b/2", b"b2 into a dead compaction's journal");
    put_acked(&a, rec, "a/2", b"a2 after its own compaction died");
}

fn log_store_two_writers_check(vfs: &SimVfs, expected: &Expected) -> Result<usize, String> {
    check_log_store_at(vfs, TWO_LOG_ROOT, expected)
}

fn log_store_two_writers_recover(vfs: &SimVfs) -> Result<(), String> {
    open_log_at(vfs, TWO_LOG_ROOT, true)
        .map(drop)
        .map_err(|e| format!("reopen: {e}"))
}

// ---------------------------------------------------------------------------
// Creation: a store whose creation returned always opens, whatever its
// durability.

const RELAXED_LOG_ROOT: &str = "/data/relaxed_log";
const RELAXED_DIR_ROOT: &str = "/data/relaxed_dir";
/// Pseudo-keys whose acknowledgement records that a store's creation returned.
const LOG_CREATED: &str = "(log store created)";
const DIR_CREATED: &str = "(dir store created)";

fn open_relaxed_log(vfs: &SimVfs, create: bool) -> jobsafe::Result<LogStore<SimVfs>> {
    LogStore::builder(RELAXED_LOG_ROOT)
        .vfs(vfs.clone())
        .durability(Durability::AtomicOnly)
        .create(create)
        .no_background_compaction()
        .open()
}

fn open_relaxed_dir(vfs: &SimVfs, create: bool) -> jobsafe::Result<DirStore<SimVfs>> {
    DirStore::builder(RELAXED_DIR_ROOT)
        .vfs(vfs.clone())
        .durability(Durability::AtomicOnly)
        .create(create)
        .open()
}

/// Both stores created with `Durability::AtomicOnly`, then written once: a
/// power loss may lose those writes, never the stores.
fn relaxed_creation_run(vfs: &SimVfs, rec: &Recorder) {
    let start = rec.start();
    let log = open_relaxed_log(vfs, true).unwrap();
    rec.ack(start, vec![(LOG_CREATED, Effect::Absent)]);
    let start = rec.start();
    let dir = open_relaxed_dir(vfs, true).unwrap();
    rec.ack(start, vec![(DIR_CREATED, Effect::Absent)]);
    log.put(&key("r/1"), b"relaxed", Expect::Absent).unwrap();
    dir.put(&key("r/1"), b"relaxed", Expect::Absent).unwrap();
}

/// Each store opens (without being created again once its creation returned)
/// and takes a write; the relaxed write is there whole or not at all
/// (`LogStore`; a `DirStore` record written relaxed may come back empty,
/// which reads as damage of that key alone). Counts the stores whose
/// creation had returned as what was checked.
fn relaxed_creation_check(vfs: &SimVfs, expected: &Expected) -> Result<usize, String> {
    let created = |name: &str| expected.keys.get(name).is_some_and(|a| a.ever_acked);
    let after = key("after/1");
    let log = open_relaxed_log(vfs, !created(LOG_CREATED))
        .map_err(|e| format!("reopen log store: {e}"))?;
    match log.get(&key("r/1")) {
        Ok(None) => {}
        Ok(Some(entry)) if entry.value == b"relaxed" => {}
        other => return Err(format!("log store r/1 after the crash: {other:?}")),
    }
    let dir = open_relaxed_dir(vfs, !created(DIR_CREATED))
        .map_err(|e| format!("reopen dir store: {e}"))?;
    for (name, store) in [("log", &log as &dyn Store), ("dir", &dir)] {
        store
            .put(&after, b"after the crash", Expect::Any)
            .map_err(|e| format!("{name} store: put after the crash: {e}"))?;
        let back = store
            .get(&after)
            .map_err(|e| format!("{name} store: {e}"))?;
        if back.map(|e| e.value).as_deref() != Some(b"after the crash".as_slice()) {
            return Err(format!(
                "{name} store: a write after the crash does not read back"
            ));
        }
    }
    drop((log, dir));
    check_closed(vfs)?;
    Ok(usize::from(created(LOG_CREATED)) + usize::from(created(DIR_CREATED)))
}

// ---------------------------------------------------------------------------
// Running the simulation.

struct Outcome {
    totals: Totals,
    acked_checked: usize,
    violations: Vec<String>,
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| env_number("JOBSAFE_POWER_LOSS_SEED").unwrap_or_else(|| fastrand::u64(..)))
}

fn budget() -> Budget {
    Budget {
        per_point: env_number("JOBSAFE_POWER_LOSS_STATES").map_or(24, |n| n.max(2) as usize),
    }
}

/// Runs `workload` with the flushes of `disabled` skipped, then checks its
/// crash states; with `first_only`, stops at the first violation.
fn simulate(
    workload: &Workload,
    budget: Budget,
    disabled: Option<Site>,
    first_only: bool,
) -> Outcome {
    let vfs = SimVfs::recording();
    if let Some(site) = disabled {
        vfs.disable_site(site);
    }
    let rec = Recorder::new(&vfs);
    (workload.run)(&vfs, &rec);
    let trace = vfs.trace();
    let history = rec.history.lock().clone();
    // With a flush skipped, a crash at or before the point of the first skip
    // leaves a state of the run with every flush, which the workload's own
    // test checks: only the later ones can show what the flush was for.
    let unaffected = match disabled {
        Some(_) => vfs.first_skipped_at().unwrap_or(trace.len()),
        None => 0,
    };
    let name_hash = workload
        .name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut rng = fastrand::Rng::with_seed(seed() ^ name_hash);
    let mut acked_checked = 0;
    let mut violations = Vec::new();
    let totals = crash::for_each_state(&Image::empty(), &trace, budget, &mut rng, |state| {
        if disabled.is_some() && state.point <= unaffected {
            return ControlFlow::Continue(());
        }
        let expected = history.at(state.point);
        let booted = SimVfs::boot(state.image);
        match (workload.check)(&booted, &expected) {
            Ok(n) => acked_checked += n,
            Err(why) => {
                violations.push(format!(
                    "crash after event {} of {}: {why}\n    unflushed: {}",
                    state.point,
                    trace.len(),
                    state.choices
                ));
                if first_only {
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    Outcome {
        totals,
        acked_checked,
        violations,
    }
}

fn run_workload(name: &str) {
    let workload = WORKLOADS.iter().find(|w| w.name == name).unwrap();
    let outcome = simulate(workload, budget(), None, false);
    let t = outcome.totals;
    println!(
        "power_loss workload={name} crash_points={} states={} exhaustive_points={} \
         acknowledged_checked={} violations={} seed={}",
        t.crash_points,
        t.states,
        t.exhaustive_points,
        outcome.acked_checked,
        outcome.violations.len(),
        seed()
    );
    assert!(
        outcome.acked_checked > 0,
        "{name}: nothing acknowledged was checked"
    );
    assert!(
        outcome.violations.is_empty(),
        "{name}: {} violations (JOBSAFE_POWER_LOSS_SEED={} replays), first ones:\n{}",
        outcome.violations.len(),
        seed(),
        outcome
            .violations
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Whether `workload`'s recovery, run on a filesystem booted from `image`,
/// changes anything; returns its trace if so.
fn recovery_trace(workload: &Workload, image: &Image) -> Option<Vec<Event>> {
    let rebooted = SimVfs::boot_recording(image.clone());
    // A recovery that fails is the first-level simulation's to report.
    (workload.recover?)(&rebooted).ok()?;
    let trace = rebooted.trace();
    trace
        .iter()
        .any(|e| matches!(e, Event::Write { .. } | Event::Dir(_)))
        .then_some(trace)
}

/// Like [`simulate`], but crashes again during the recovery of crash states
/// whose recovery changes anything (at most `recoveries` of them, spread over
/// the run; only after the first acknowledgement, since a recovery before it
/// creates the store again, which the first crash covers), and checks the states of that second crash against what the
/// first crash point allows.
fn simulate_second_crash(
    workload: &Workload,
    first_budget: Budget,
    second_budget: Budget,
    recoveries: usize,
) -> (Outcome, usize) {
    let vfs = SimVfs::recording();
    let rec = Recorder::new(&vfs);
    (workload.run)(&vfs, &rec);
    let trace = vfs.trace();
    let history = rec.history.lock().clone();
    let name_hash = workload
        .name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let first_seed = seed() ^ name_hash;
    // First pass: how many states have a recovery to interrupt.
    let mut candidates = 0usize;
    let mut rng = fastrand::Rng::with_seed(first_seed);
    crash::for_each_state(&Image::empty(), &trace, first_budget, &mut rng, |first| {
        let candidate =
            history.any_acked(first.point) && recovery_trace(workload, &first.image).is_some();
        candidates += usize::from(candidate);
        ControlFlow::Continue(())
    });
    let stride = candidates.div_ceil(recoveries.max(1)).max(1);
    let mut second_rng = fastrand::Rng::with_seed(first_seed.rotate_left(17));
    let offset = second_rng.usize(0..stride);
    // Second pass, on the same states (same seed): every `stride`-th one.
    let mut rng = fastrand::Rng::with_seed(first_seed);
    let mut index = 0;
    let mut done = 0;
    let mut totals = Totals::default();
    let mut acked_checked = 0;
    let mut violations = Vec::new();
    crash::for_each_state(&Image::empty(), &trace, first_budget, &mut rng, |first| {
        if !history.any_acked(first.point) {
            return ControlFlow::Continue(());
        }
        let Some(recovery) = recovery_trace(workload, &first.image) else {
            return ControlFlow::Continue(());
        };
        index += 1;
        if (index - 1) % stride != offset {
            return ControlFlow::Continue(());
        }
        done += 1;
        let expected = history.at(first.point);
        let counted = crash::for_each_state(
            &first.image,
            &recovery,
            second_budget,
            &mut second_rng,
            |second| {
                match (workload.check)(&SimVfs::boot(second.image), &expected) {
                    Ok(n) => acked_checked += n,
                    Err(why) => violations.push(format!(
                        "crash after event {} of {}, then after event {} of {} of its \
                         recovery: {why}\n    first unflushed: {}\n    then unflushed: {}",
                        first.point,
                        trace.len(),
                        second.point,
                        recovery.len(),
                        first.choices,
                        second.choices
                    )),
                }
                ControlFlow::Continue(())
            },
        );
        totals.crash_points += counted.crash_points;
        totals.states += counted.states;
        totals.exhaustive_points += counted.exhaustive_points;
        ControlFlow::Continue(())
    });
    let outcome = Outcome {
        totals,
        acked_checked,
        violations,
    };
    (outcome, done)
}

#[test]
fn recovery_survives_a_second_power_loss() {
    let per_point = budget().per_point;
    let first = Budget {
        per_point: (per_point / 8).max(2),
    };
    let second = Budget {
        per_point: (per_point / 4).max(2),
    };
    for workload in WORKLOADS.iter().filter(|w| w.recover.is_some()) {
        let (outcome, recoveries) = simulate_second_crash(workload, first, second, per_point);
        let t = outcome.totals;
        println!(
            "power_loss workload={}_recovery recoveries={recoveries} crash_points={} states={} \
             exhaustive_points={} acknowledged_checked={} violations={} seed={}",
            workload.name,
            t.crash_points,
            t.states,
            t.exhaustive_points,
            outcome.acked_checked,
            outcome.violations.len(),
            seed()
        );
        assert!(
            recoveries > 0,
            "{}: no recovery was interrupted",
            workload.name
        );
        assert!(
            outcome.violations.is_empty(),
            "{}: {} violations (JOBSAFE_POWER_LOSS_SEED={} replays), first ones:\n{}",
            workload.name,
            outcome.violations.len(),
            seed(),
            outcome
                .violations
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn atomic_writer_survives_every_crash_state() {
    run_workload("atomic_writer");
}

#[test]
fn dir_store_survives_every_crash_state() {
    run_workload("dir_store");
}

#[test]
fn log_store_survives_every_crash_state() {
    run_workload("log_store");
}

#[test]
fn exclusive_log_store_survives_every_crash_state() {
    run_workload("log_store_exclusive");
}

#[test]
fn log_store_survives_crashes_while_growing_its_journal() {
    run_workload("log_store_growth");
}

#[test]
fn dir_store_keeps_writes_into_directories_another_writer_made_and_had_not_flushed() {
    run_workload("dir_store_two_writers");
}

#[test]
fn log_store_keeps_writes_into_a_journal_a_killed_process_renamed_into_place() {
    run_workload("log_store_two_writers");
}

#[test]
fn stores_created_with_relaxed_durability_open_after_every_crash_state() {
    run_workload("relaxed_creation");
}

// ---------------------------------------------------------------------------
// Teeth: without any one flush, the simulation must find a violation.

/// Flushes that no crash state of the model needs, each named by its file, a
/// line it follows (its function) and the call, with the reason. Disabling
/// them is checked to find nothing, so that this list stays true.
const REDUNDANT: &[(&str, &str, &str, &str)] = &[
    (
        "src/store/log/journal.rs",
        "pub(crate) fn preallocate(",
        ".sync_all()",
        "the append that follows flushes the journal with fdatasync, which persists \
         the new length too: this flush spares that fdatasync a metadata write",
    ),
    (
        "src/store/log/journal.rs",
        "pub(crate) fn clear_tail(",
        ".sync_data()",
        "the next append's fdatasync flushes the zeros with its frame; until then a \
         torn tail that comes back is a torn tail again, cleared by the next open",
    ),
    (
        "src/store/log/compact.rs",
        "fn preallocate(&mut self",
        ".sync_all()",
        "flush_tail flushes the same file again before the rename: this flush only \
         moves most of that work out of the time writers are stalled",
    ),
];

/// The flush sites `workload` calls, without checking any crash state.
fn reached_sites(workload: &Workload) -> BTreeSet<Site> {
    let vfs = SimVfs::recording();
    let rec = Recorder::new(&vfs);
    (workload.run)(&vfs, &rec);
    vfs.sites().into_keys().collect()
}

/// The first line of `file` (under the crate root) at or after the line
/// holding `anchor` that holds `call`.
fn line_of(file: &str, anchor: &str, call: &str) -> u32 {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let lines: Vec<&str> = source.lines().collect();
    let from = lines
        .iter()
        .position(|l| l.contains(anchor))
        .unwrap_or_else(|| panic!("{file}: no line holds {anchor:?}"));
    let at = lines[from..]
        .iter()
        .position(|l| l.contains(call))
        .unwrap_or_else(|| panic!("{file}: no {call:?} after {anchor:?}"));
    (from + at) as u32 + 1
}

#[test]
fn every_flush_site_has_teeth() {
    let in_source = sites::in_source(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut reached: BTreeMap<Site, Vec<&Workload>> = BTreeMap::new();
    for workload in WORKLOADS {
        for site in reached_sites(workload) {
            reached.entry(site).or_default().push(workload);
        }
    }
    let reached_set: BTreeSet<Site> = reached.keys().copied().collect();
    assert_eq!(
        reached_set, in_source,
        "the workloads must reach exactly the flush calls of the source \
         (left: reached, right: found in the source)"
    );
    let redundant: BTreeMap<Site, &str> = REDUNDANT
        .iter()
        .map(|(file, anchor, call, why)| {
            let line = line_of(file, anchor, call);
            let site = *in_source
                .iter()
                .find(|s| s.file == *file && s.line == line)
                .unwrap_or_else(|| panic!("{file}:{line} is not a flush site"));
            (site, *why)
        })
        .collect();
    let budget = Budget { per_point: 8 };
    let mut failing = 0;
    let mut wrong = Vec::new();
    for (site, workloads) in &reached {
        let found = workloads.iter().find_map(|w| {
            let outcome = simulate(w, budget, Some(*site), true);
            outcome.violations.into_iter().next().map(|v| (w.name, v))
        });
        match (&found, redundant.get(site)) {
            (Some((name, violation)), None) => {
                failing += 1;
                println!(
                    "teeth site={site} disabled: {name}: {}",
                    violation.lines().next().unwrap_or_default()
                );
            }
            (None, Some(why)) => {
                println!("teeth site={site} disabled: no violation, as expected ({why})")
            }
            (Some((name, violation)), Some(_)) => wrong.push(format!(
                "{site} is listed as redundant, but without it {name} fails: {violation}"
            )),
            (None, None) => wrong.push(format!(
                "{site}: without this flush no workload finds a violation"
            )),
        }
    }
    println!(
        "teeth sites={} each_disabled_fails={failing} redundant={}",
        reached.len(),
        redundant.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// The model itself.

/// What `/d/a` holds in each state at crash point `point`.
fn states_of_a(vfs: &SimVfs, point: usize) -> BTreeSet<Option<Vec<u8>>> {
    let mut seen = BTreeSet::new();
    let mut rng = fastrand::Rng::with_seed(0);
    let budget = Budget { per_point: 10_000 };
    crash::for_each_state(&Image::empty(), &vfs.trace(), budget, &mut rng, |state| {
        if state.point == point {
            seen.insert(SimVfs::boot(state.image).contents(Path::new("/d/a")));
        }
        ControlFlow::Continue(())
    });
    seen
}

#[test]
fn the_model_keeps_what_was_flushed_and_renames_atomically() {
    let vfs = SimVfs::recording();
    vfs.create_dir(Path::new("/d")).unwrap();
    vfs.sync_dir(Path::new("/")).unwrap();
    let mut a = vfs.create_new(Path::new("/d/a"), 0o600).unwrap();
    a.write_all(b"old").unwrap();
    let unflushed = vfs.position();
    a.sync_all().unwrap();
    vfs.sync_dir(Path::new("/d")).unwrap();
    let flushed = vfs.position();
    let mut b = vfs.create_new(Path::new("/d/b"), 0o600).unwrap();
    b.write_all(b"new").unwrap();
    b.sync_all().unwrap();
    vfs.rename(Path::new("/d/b"), Path::new("/d/a")).unwrap();
    let renamed = vfs.position();

    let some = |b: &[u8]| Some(b.to_vec());
    // Neither the name nor the bytes were flushed: any of them may be lost.
    assert_eq!(
        states_of_a(&vfs, unflushed),
        BTreeSet::from([None, some(b""), some(b"o"), some(b"old")])
    );
    assert_eq!(states_of_a(&vfs, flushed), BTreeSet::from([some(b"old")]));
    // The rename is not flushed: old or new, never neither.
    assert_eq!(
        states_of_a(&vfs, renamed),
        BTreeSet::from([some(b"old"), some(b"new")])
    );
}

#[test]
fn the_model_tears_unflushed_writes_at_sectors() {
    let vfs = SimVfs::recording();
    vfs.create_dir(Path::new("/d")).unwrap();
    vfs.sync_dir(Path::new("/")).unwrap();
    let a = vfs.create_new(Path::new("/d/a"), 0o600).unwrap();
    vfs.sync_dir(Path::new("/d")).unwrap();
    a.write_all_at(&[7; 1200], 100).unwrap();
    let lengths: BTreeSet<usize> = states_of_a(&vfs, vfs.position())
        .into_iter()
        .map(|c| c.unwrap().len())
        .collect();
    // Lost, kept, cut at the first or last sector boundary inside the write.
    assert_eq!(lengths, BTreeSet::from([0, 512, 1024, 1300]));
    let states = states_of_a(&vfs, vfs.position());
    // Only the later sectors landed: zeros before them.
    let mut later = vec![0; 1024];
    later.extend_from_slice(&[7; 276]);
    assert!(states.contains(&Some(later)), "{states:?}");
}
