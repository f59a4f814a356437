//! Model-based property test: random sequences of operations run against a
//! backend and against a `BTreeMap` model, and every result must agree.
//!
//! Versions are opaque, so the model keeps the versions the backend returned and
//! checks their order: newer than any the key had before, deletes included.
//! `PROPTEST_CASES` raises the number of sequences (the defaults keep CI quick).

#[cfg(feature = "postgres")]
mod common;

use std::collections::BTreeMap;

use jobsafe::store::{Applied, BatchOp};
use jobsafe::{
    Batch, DirStore, Durability, Entry, Expect, Key, LogStore, MemStore, Prefix, Store, Version,
};
use proptest::prelude::*;

/// Segments chosen to collide: shared prefixes, case twins, path syntax.
const SEGMENTS: [&str; 6] = ["a", "b", "A", "..", "a/b", "lic:x"];

#[derive(Clone, Debug)]
enum Precondition {
    Any,
    Absent,
    /// The key's current version in the model (a stale one if it is absent).
    Current,
    /// A version the key had before its current one, if any.
    Stale,
}

#[derive(Clone, Debug)]
enum Action {
    Get(Key),
    Put(Key, Vec<u8>, Precondition),
    Delete(Key, Precondition),
    Apply(Vec<(Key, Option<Vec<u8>>, Precondition)>),
    List(Prefix, Option<Key>, usize),
    Quarantine(Key),
    Reopen,
}

fn arb_key() -> impl Strategy<Value = Key> {
    prop::collection::vec(prop::sample::select(SEGMENTS.to_vec()), 1..=3)
        .prop_map(|segments| Key::new(segments).unwrap_or_else(|e| unreachable!("{e}")))
}

fn arb_prefix() -> impl Strategy<Value = Prefix> {
    prop::collection::vec(prop::sample::select(SEGMENTS.to_vec()), 0..=2)
        .prop_map(|segments| Prefix::new(segments).unwrap_or_else(|e| unreachable!("{e}")))
}

fn arb_precondition() -> impl Strategy<Value = Precondition> {
    prop_oneof![
        1 => Just(Precondition::Any),
        1 => Just(Precondition::Absent),
        3 => Just(Precondition::Current),
        1 => Just(Precondition::Stale),
    ]
}

fn arb_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..48)
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => arb_key().prop_map(Action::Get),
        5 => (arb_key(), arb_value(), arb_precondition()).prop_map(|(k, v, p)| Action::Put(k, v, p)),
        2 => (arb_key(), arb_precondition()).prop_map(|(k, p)| Action::Delete(k, p)),
        2 => prop::collection::vec((arb_key(), prop::option::of(arb_value()), arb_precondition()), 1..5)
            .prop_map(Action::Apply),
        2 => (arb_prefix(), prop::option::of(arb_key()), 1usize..5)
            .prop_map(|(p, after, limit)| Action::List(p, after, limit)),
        1 => arb_key().prop_map(Action::Quarantine),
        1 => Just(Action::Reopen),
    ]
}

/// What the store should hold, and every version each key has had.
#[derive(Default)]
struct Model {
    records: BTreeMap<Key, Entry>,
    history: BTreeMap<Key, Vec<Version>>,
}

impl Model {
    fn expect(&self, key: &Key, precondition: &Precondition) -> Expect {
        let current = self.records.get(key).map(|e| e.version);
        match precondition {
            Precondition::Any => Expect::Any,
            Precondition::Absent => Expect::Absent,
            Precondition::Current => {
                current.map_or(Expect::Version(Version::new(1)), Expect::Version)
            }
            Precondition::Stale => {
                let old = self.history.get(key).map(Vec::as_slice).unwrap_or_default();
                let stale = old.iter().copied().rfind(|v| Some(*v) != current);
                Expect::Version(stale.unwrap_or(Version::new(u64::MAX)))
            }
        }
    }

    fn holds(&self, key: &Key, expect: Expect) -> bool {
        let current = self.records.get(key).map(|e| e.version);
        match expect {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Version(v) => current == Some(v),
        }
    }

    /// Records a write the backend acknowledged at `version`, checking that it is
    /// newer than every version the key had.
    fn stored(&mut self, key: &Key, value: Vec<u8>, version: Version) -> Result<(), TestCaseError> {
        let history = self.history.entry(key.clone()).or_default();
        if let Some(last) = history.last() {
            prop_assert!(version > *last, "{key} written at {version} after {last}");
        }
        history.push(version);
        self.records.insert(key.clone(), Entry::new(value, version));
        Ok(())
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> (Vec<Key>, bool) {
        let mut keys: Vec<Key> = self
            .records
            .keys()
            .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| *k > a))
            .cloned()
            .collect();
        let more = keys.len() > limit;
        keys.truncate(limit);
        (keys, more)
    }
}

/// Opens backends of one kind, and reopens them where the kind keeps data.
trait Backend {
    type Store: Store;
    fn open(&mut self) -> Result<Self::Store, TestCaseError>;
    fn reopen(&mut self, store: Self::Store) -> Result<Self::Store, TestCaseError>;
}

struct Mem;

impl Backend for Mem {
    type Store = MemStore;
    fn open(&mut self) -> Result<MemStore, TestCaseError> {
        Ok(MemStore::new())
    }
    fn reopen(&mut self, store: MemStore) -> Result<MemStore, TestCaseError> {
        Ok(store)
    }
}

/// DirStores without fsyncs: the model checks logic, the crash tests durability.
struct Dir(Option<tempfile::TempDir>);

impl Backend for Dir {
    type Store = DirStore;
    fn open(&mut self) -> Result<DirStore, TestCaseError> {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(format!("temp dir: {e}")))?;
        let root = dir.path().join("store");
        self.0 = Some(dir);
        open_dir(&root)
    }
    fn reopen(&mut self, store: DirStore) -> Result<DirStore, TestCaseError> {
        let root = store.root().to_path_buf();
        drop(store);
        open_dir(&root)
    }
}

fn open_dir(root: &std::path::Path) -> Result<DirStore, TestCaseError> {
    DirStore::builder(root)
        .durability(Durability::AtomicOnly)
        .open()
        .map_err(fail)
}

/// LogStores without fsyncs, compacting after every few frames so that the
/// model also checks reads and writes across compactions.
struct Log(Option<tempfile::TempDir>);

impl Backend for Log {
    type Store = LogStore;
    fn open(&mut self) -> Result<LogStore, TestCaseError> {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(format!("temp dir: {e}")))?;
        let root = dir.path().join("store");
        self.0 = Some(dir);
        open_log(&root)
    }
    fn reopen(&mut self, store: LogStore) -> Result<LogStore, TestCaseError> {
        let root = store.root().to_path_buf();
        drop(store);
        open_log(&root)
    }
}

fn open_log(root: &std::path::Path) -> Result<LogStore, TestCaseError> {
    LogStore::builder(root)
        .durability(Durability::AtomicOnly)
        .compact_when(2048, 0.0)
        .open()
        .map_err(fail)
}

/// PgStores without the flush on commit, each in a schema of its own; a reopen
/// connects again to the same tables.
#[cfg(feature = "postgres")]
#[derive(Default)]
struct Pg(common::pg::Schemas);

#[cfg(feature = "postgres")]
impl Backend for Pg {
    type Store = jobsafe::PgStore;
    fn open(&mut self) -> Result<jobsafe::PgStore, TestCaseError> {
        Ok(self.0.fast_store())
    }
    fn reopen(&mut self, store: jobsafe::PgStore) -> Result<jobsafe::PgStore, TestCaseError> {
        let schema = common::pg::schema_of(&store);
        drop(store);
        jobsafe::PgStore::builder(&common::pg::url())
            .schema(&schema)
            .durability(Durability::AtomicOnly)
            .open()
            .map_err(fail)
    }
}

fn run<B: Backend>(backend: &mut B, actions: Vec<Action>) -> Result<(), TestCaseError> {
    let mut store = backend.open()?;
    let mut model = Model::default();
    for action in actions {
        match action {
            Action::Get(key) => {
                let got = store.get(&key).map_err(fail)?;
                prop_assert_eq!(got.as_ref(), model.records.get(&key), "get {}", key);
            }
            Action::Put(key, value, precondition) => {
                let expect = model.expect(&key, &precondition);
                let result = store.put(&key, &value, expect);
                if model.holds(&key, expect) {
                    let version = result.map_err(fail)?;
                    model.stored(&key, value, version)?;
                } else {
                    check_conflict(&model, &key, result.map(|_| ()))?;
                }
            }
            Action::Delete(key, precondition) => {
                let expect = model.expect(&key, &precondition);
                let result = store.delete(&key, expect);
                if model.holds(&key, expect) {
                    let deleted = result.map_err(fail)?;
                    prop_assert_eq!(deleted, model.records.remove(&key).is_some());
                } else {
                    check_conflict(&model, &key, result.map(|_| ()))?;
                }
            }
            Action::Apply(ops) => apply(&store, &mut model, ops)?,
            Action::List(prefix, after, limit) => {
                let page = store.list(&prefix, after.as_ref(), limit).map_err(fail)?;
                let (keys, more) = model.list(&prefix, after.as_ref(), limit);
                prop_assert_eq!(&page.keys, &keys, "list {:?} after {:?}", prefix, after);
                prop_assert_eq!(page.next.is_some(), more, "list {:?}: next", prefix);
            }
            Action::Quarantine(key) => {
                let moved = store.quarantine(&key).map_err(fail)?;
                prop_assert_eq!(moved.is_some(), model.records.remove(&key).is_some());
            }
            Action::Reopen => store = backend.reopen(store)?,
        }
    }
    let listed = store.list_all(&Prefix::all()).map_err(fail)?;
    let expected: Vec<Key> = model.records.keys().cloned().collect();
    prop_assert_eq!(listed, expected);
    Ok(())
}

fn apply(
    store: &impl Store,
    model: &mut Model,
    ops: Vec<(Key, Option<Vec<u8>>, Precondition)>,
) -> Result<(), TestCaseError> {
    let mut batch = Batch::new();
    let mut seen = std::collections::BTreeSet::new();
    for (key, value, precondition) in ops {
        if !seen.insert(key.clone()) {
            continue; // a key named twice is an invalid batch; the suite tests that
        }
        let expect = model.expect(&key, &precondition);
        batch.push(match value {
            Some(value) => BatchOp::Put { key, value, expect },
            None => BatchOp::Delete { key, expect },
        });
    }
    let result = store.apply(&batch);
    let first_failing = batch
        .ops()
        .iter()
        .find(|op| !model.holds(op.key(), op.expect()));
    if let Some(op) = first_failing {
        let Err(e) = result else {
            return Err(TestCaseError::fail(format!(
                "batch applied despite a failing precondition on {}",
                op.key()
            )));
        };
        prop_assert!(e.is_conflict(), "batch: expected a conflict, got {e}");
        return Ok(());
    }
    let applied = result.map_err(fail)?;
    prop_assert_eq!(applied.len(), batch.len());
    for (op, applied) in batch.ops().iter().zip(applied) {
        match (op, applied) {
            (BatchOp::Put { key, value, .. }, Applied::Put(version)) => {
                model.stored(key, value.clone(), version)?;
            }
            (BatchOp::Delete { key, .. }, Applied::Deleted(deleted)) => {
                prop_assert_eq!(
                    deleted,
                    model.records.remove(key).is_some(),
                    "batch delete {}",
                    key
                );
            }
            (op, applied) => {
                return Err(TestCaseError::fail(format!("{op:?} returned {applied:?}")));
            }
        }
    }
    Ok(())
}

fn check_conflict(
    model: &Model,
    key: &Key,
    result: jobsafe::Result<()>,
) -> Result<(), TestCaseError> {
    let Err(e) = result else {
        return Err(TestCaseError::fail(format!(
            "write to {key} succeeded against a failing precondition"
        )));
    };
    let current = model.records.get(key).map(|e| e.version);
    prop_assert_eq!(
        e.conflict_current(),
        Some(current),
        "conflict on {}: {}",
        key,
        e
    );
    Ok(())
}

fn fail(e: jobsafe::Error) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(cases(256))]
    #[test]
    fn mem_store_agrees_with_the_model(actions in prop::collection::vec(arb_action(), 1..60)) {
        run(&mut Mem, actions)?;
    }
}

proptest! {
    #![proptest_config(cases(64))]
    #[test]
    fn dir_store_agrees_with_the_model(actions in prop::collection::vec(arb_action(), 1..60)) {
        run(&mut Dir(None), actions)?;
    }
}

proptest! {
    #![proptest_config(cases(64))]
    #[test]
    fn log_store_agrees_with_the_model(actions in prop::collection::vec(arb_action(), 1..60)) {
        run(&mut Log(None), actions)?;
    }
}

#[cfg(feature = "postgres")]
proptest! {
    #![proptest_config(cases(64))]
    #[test]
    fn pg_store_agrees_with_the_model(actions in prop::collection::vec(arb_action(), 1..60)) {
        run(&mut Pg::default(), actions)?;
    }
}
