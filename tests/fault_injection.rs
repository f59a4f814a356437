//! Fault injection on the I/O layer: a fixed workload runs on a store whose
//! [`Faulty`] layer fails the Nth operation, for every N up to the workload's
//! operation count, with EIO, ENOSPC and EACCES, once or from N on.
//!
//! Each case checks that a failing call returns an error (not a panic, not `Ok`
//! with lost data) that names the failed path and carries the OS error; that the
//! store's answers stay those of one sequence of all-or-nothing operations, where
//! a failed operation may or may not have happened; that a failed flush poisons
//! the handle (every later write is refused); and that the store reopened on a
//! healthy [`StdVfs`] holds every acknowledged write, each key its old or its new
//! value, no temp file listed as a record.
//!
//! The checks keep the set of states the store may be in (usually one, two after
//! a failed operation), and narrow it with every answer the store gives: an
//! answer no state explains is a violation.
//!
//! The workloads: `AtomicWriter` writes (replace, create-only, streamed,
//! discarded); `DirStore` and `LogStore` puts, deletes, a batch, nested keys,
//! reads, a listing and a compaction; `JobLock`, `JobLedger` and `JobState` on
//! each store (acquire, reserve and confirm, create, start and complete,
//! release); and opening a store that has work left for the open (a pending
//! batch, a torn journal tail).
//!
//! A second pass fails two operations in one run: every write (cut short, as
//! by a full disk), then every flush after it, so that the repair of what the
//! first fault left is checked like a first write. `JOBSAFE_FAULTS_DOUBLE=1`
//! runs every pair of operations instead (minutes).
//!
//! One summary line per store and pass: `faults store=... cases=...
//! errors_reported=... poisoned=... acknowledged_checked=... violations=0`.
//! `JOBSAFE_FAULTS_TORN=0` turns off the torn writes ENOSPC cases use.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::error::Error as _;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::key;
use jobsafe::jobs::{JobStatus, NewJob};
use jobsafe::ledger::{ChargeRequest, ReservationState, Reserve};
use jobsafe::lock::LockRequest;
use jobsafe::testing::{Fault, Faulty, Injected, InjectedError, OpKind};
use jobsafe::vfs::StdVfs;
use jobsafe::{
    AtomicWriter, Batch, DirStore, Error, Expect, JobLedger, JobLock, JobState, Key, LogStore,
    ManualClock, Prefix, Store,
};

/// What a store holds: key to value.
type Model = BTreeMap<Key, Vec<u8>>;

/// The states a store may be in, given its answers so far.
#[derive(Clone, Debug)]
struct States(Vec<Model>);

impl States {
    fn one(model: Model) -> Self {
        States(vec![model])
    }

    /// Keeps the states `keep` accepts, mapped through it; `false` if none is left
    /// (the answer is explained by no state).
    fn narrow(&mut self, mut keep: impl FnMut(&Model) -> Option<Model>) -> bool {
        let mut next: Vec<Model> = self.0.iter().filter_map(&mut keep).collect();
        next.dedup();
        if next.is_empty() {
            return false;
        }
        self.0 = next;
        true
    }

    /// A failed operation may or may not have happened.
    fn maybe(&mut self, op: impl Fn(&Model) -> Option<Model>) {
        let mut more: Vec<Model> = self.0.iter().filter_map(op).collect();
        self.0.append(&mut more);
        self.0.sort();
        self.0.dedup();
    }

    /// Keys whose value every state agrees on (present or absent).
    fn certain_keys(&self, universe: &[Key]) -> usize {
        universe
            .iter()
            .filter(|k| self.0.iter().all(|m| m.get(*k) == self.0[0].get(*k)))
            .count()
    }
}

/// One step of the store workload.
#[derive(Clone, Debug)]
enum Step {
    Put(Key, &'static [u8], Expect),
    Delete(Key),
    Batch(Vec<(Key, Option<&'static [u8]>, Expect)>),
    Get(Key),
    List,
    Compact,
}

impl Step {
    /// The state after this step, or `None` if a precondition fails.
    fn apply(&self, model: &Model) -> Option<Model> {
        let mut next = model.clone();
        match self {
            Step::Put(key, value, expect) => {
                if *expect == Expect::Absent && model.contains_key(key) {
                    return None;
                }
                next.insert(key.clone(), value.to_vec());
            }
            Step::Delete(key) => {
                next.remove(key);
            }
            Step::Batch(ops) => {
                for (key, value, expect) in ops {
                    if *expect == Expect::Absent && model.contains_key(key) {
                        return None;
                    }
                    match value {
                        Some(v) => next.insert(key.clone(), v.to_vec()),
                        None => next.remove(key),
                    };
                }
            }
            Step::Get(_) | Step::List | Step::Compact => {}
        }
        Some(next)
    }

    fn mutates(&self) -> bool {
        matches!(self, Step::Put(..) | Step::Delete(_) | Step::Batch(_))
    }
}

fn universe() -> Vec<Key> {
    vec![
        key("jobs/k0"),
        key("jobs/k1"),
        key("jobs/k2"),
        key("jobs/k3"),
        key("jobs/k4"),
        key("deep/x/y"),
        // A segment too long for a file name: DirStore hashes it and builds its
        // directory under a temp name.
        key(&format!("deep/{}/leaf", "long-".repeat(40))),
    ]
}

fn initial() -> Model {
    let u = universe();
    Model::from([
        (u[0].clone(), b"old0".to_vec()),
        (u[1].clone(), b"old1".to_vec()),
    ])
}

/// Overwrites, creates, deletes, a batch, nested directories made and pruned,
/// a re-created key, reads and (for `LogStore`) a compaction.
fn workload() -> Vec<Step> {
    let u = universe();
    vec![
        Step::Put(u[0].clone(), b"new0", Expect::Any),
        Step::Put(u[2].clone(), b"new2", Expect::Absent),
        Step::Get(u[0].clone()),
        Step::Delete(u[1].clone()),
        Step::Batch(vec![
            (u[3].clone(), Some(b"b3"), Expect::Absent),
            (u[0].clone(), Some(b"b0"), Expect::Any),
            (u[2].clone(), None, Expect::Any),
        ]),
        Step::Get(u[3].clone()),
        Step::Put(u[5].clone(), b"deep", Expect::Absent),
        Step::Delete(u[5].clone()),
        Step::Put(u[6].clone(), b"long", Expect::Absent),
        Step::Put(u[1].clone(), b"again1", Expect::Absent),
        Step::List,
        Step::Compact,
        Step::Put(u[4].clone(), b"last", Expect::Any),
        Step::Get(u[4].clone()),
    ]
}

/// The backends under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Dir,
    Log,
}

/// A store opened on a [`Faulty`] layer, with what the trait does not offer.
struct Handle {
    store: Arc<dyn Store>,
    poisoned: Box<dyn Fn() -> bool>,
    compact: Box<dyn Fn() -> jobsafe::Result<()>>,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Dir => "dir",
            Backend::Log => "log",
        }
    }

    fn open_faulty(self, root: &Path, vfs: &Faulty) -> jobsafe::Result<Handle> {
        Ok(match self {
            Backend::Dir => {
                let store = DirStore::builder(root).vfs(vfs.clone()).open()?;
                let probe = store.clone();
                Handle {
                    store: Arc::new(store),
                    poisoned: Box::new(move || probe.is_poisoned()),
                    compact: Box::new(|| Ok(())),
                }
            }
            Backend::Log => {
                let store = LogStore::builder(root)
                    .vfs(vfs.clone())
                    .no_background_compaction()
                    .open()?;
                let probe = store.clone();
                let compactor = store.clone();
                Handle {
                    store: Arc::new(store),
                    poisoned: Box::new(move || probe.is_poisoned()),
                    compact: Box::new(move || compactor.compact().map(|_| ())),
                }
            }
        })
    }

    fn open_std(self, root: &Path) -> jobsafe::Result<Arc<dyn Store>> {
        Ok(match self {
            Backend::Dir => Arc::new(DirStore::open(root)?),
            Backend::Log => Arc::new(
                LogStore::builder(root)
                    .vfs(StdVfs)
                    .no_background_compaction()
                    .open()?,
            ),
        })
    }
}

/// A temp directory for one case, in memory where the system has a tmpfs at
/// `/dev/shm`: the faults are injected above the filesystem, so its real
/// flushes only cost time.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// How a case arms its fault.
#[derive(Clone, Copy, Debug)]
struct Plan {
    n: u64,
    from_n_on: bool,
    error: InjectedError,
    /// Only operations of these kinds count and fail (default: all).
    only: Option<&'static [OpKind]>,
    /// A second fault, armed once the first has fired: the `m`th operation of
    /// the kinds given after it fails once.
    then: Option<(u64, &'static [OpKind], InjectedError)>,
}

impl Plan {
    fn new(n: u64, from_n_on: bool, error: InjectedError) -> Self {
        Plan {
            n,
            from_n_on,
            error,
            only: None,
            then: None,
        }
    }

    fn fault(self) -> Fault {
        let fault = if self.from_n_on {
            Fault::from_nth(self.n)
        } else {
            Fault::nth(self.n)
        };
        let fault = match self.only {
            Some(kinds) => fault.only(kinds.iter().copied()),
            None => fault,
        };
        fault.error(self.error).torn_writes(torn(self.error))
    }

    /// Arms the plan on `vfs`.
    fn arm(self, vfs: &Faulty) {
        vfs.arm(self.fault());
        if let Some((m, kinds, error)) = self.then {
            let next = Fault::nth(m)
                .only(kinds.iter().copied())
                .error(error)
                .torn_writes(torn(error));
            vfs.queue(next);
        }
    }

    fn label(self) -> String {
        let mode = if self.from_n_on { "from" } else { "once" };
        let mut label = format!("{:?} {mode} n={}", self.error, self.n);
        if let Some(kinds) = self.only {
            label.push_str(&format!(" of {kinds:?}"));
        }
        if let Some((m, kinds, error)) = self.then {
            label.push_str(&format!(", then {error:?} m={m} of {kinds:?}"));
        }
        label
    }
}

/// Whether failed writes of `error` are torn: a full disk cuts a write short.
fn torn(error: InjectedError) -> bool {
    error == InjectedError::Enospc && std::env::var("JOBSAFE_FAULTS_TORN").as_deref() != Ok("0")
}

/// What the cases of one store found.
#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    errors_reported: u64,
    poisoned: u64,
    acknowledged_checked: u64,
    absorbed: u64,
    temps_left: u64,
    violations: Vec<String>,
}

impl Tally {
    fn add(&mut self, case: Tally) {
        self.cases += case.cases;
        self.errors_reported += case.errors_reported;
        self.poisoned += case.poisoned;
        self.acknowledged_checked += case.acknowledged_checked;
        self.absorbed += case.absorbed;
        self.temps_left += case.temps_left;
        self.violations.extend(case.violations);
    }

    fn report(&self, store: &str) {
        println!(
            "faults store={store} cases={} errors_reported={} poisoned={} acknowledged_checked={} \
             absorbed={} temps_left={} violations={}",
            self.cases,
            self.errors_reported,
            self.poisoned,
            self.acknowledged_checked,
            self.absorbed,
            self.temps_left,
            self.violations.len()
        );
        for v in self.violations.iter().take(30) {
            println!("  violation: {v}");
        }
        assert!(
            self.violations.is_empty(),
            "{} violations in store={store}",
            self.violations.len()
        );
        assert!(self.errors_reported > 0, "no fault ever reached a caller");
    }
}

/// The name a file [`Faulty`] reports under the name it was opened with has
/// now: a `LogStore` compaction writes `journal.new-*` and renames it to
/// `journal`, and the open file keeps being used under the new name.
fn current_name(path: &Path) -> PathBuf {
    match path.file_name().map(|n| n.to_string_lossy()) {
        Some(name) if name.starts_with("journal.new-") => path.with_file_name("journal"),
        _ => path.to_path_buf(),
    }
}

/// Whether `err` names one of the paths of `injected` (or, when the store
/// refuses a write, its root), and carries the injected OS error in its chain.
fn check_error(err: &Error, injected: &[Injected], root: &Path) -> Result<(), String> {
    let shown = common::error_chain(err);
    if let Error::Poisoned { path } = err {
        return if path == root {
            Ok(())
        } else {
            Err(format!("poisoned error names {path:?}, not the root"))
        };
    }
    if injected.is_empty() {
        return Err(format!("error without an injected fault: {shown}"));
    }
    let named = injected.iter().any(|i| {
        shown.contains(&*current_name(&i.path).to_string_lossy())
            || i.path
                .parent()
                .is_some_and(|p| shown.contains(&format!("{} ", p.display())))
    });
    if !named {
        return Err(format!(
            "error {shown:?} names none of the failed paths {:?}",
            injected.iter().map(|i| &i.path).collect::<Vec<_>>()
        ));
    }
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            // Any of the faults of this call: the first may be the one reported.
            // A group commit's followers get a copy of the kind, not the errno.
            let same = injected.iter().any(|i| {
                io.kind() == i.error.to_io_error().kind()
                    && (io.raw_os_error().is_none() || io.raw_os_error() == i.error.raw_os_error())
            });
            if same {
                return Ok(());
            }
        }
        source = cause.source();
    }
    Err(format!(
        "error {shown:?} does not carry an injected {:?}",
        injected.iter().map(|i| i.error).collect::<Vec<_>>()
    ))
}

/// Runs the workload once with `plan` armed (or unarmed), checks it, and returns
/// the tally and the number of operations the workload made.
/// How many operations a workload made: all, writes, flushes.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    ops: u64,
    writes: u64,
    syncs: u64,
}

impl Counts {
    fn of(vfs: &Faulty) -> Self {
        Counts {
            ops: vfs.ops(),
            writes: vfs.ops_of(OpKind::Write),
            syncs: vfs.ops_of(OpKind::FileSync) + vfs.ops_of(OpKind::DirSync),
        }
    }

    fn since(self, start: Counts) -> Self {
        Counts {
            ops: self.ops - start.ops,
            writes: self.writes - start.writes,
            syncs: self.syncs - start.syncs,
        }
    }
}

fn run_case(backend: Backend, template: &Path, plan: Option<Plan>) -> (Tally, Counts) {
    let dir = scratch_dir();
    let root = dir.path().join("store");
    common::copy_tree(template, &root);
    let label = plan.map_or("unarmed".to_owned(), Plan::label);
    let mut tally = Tally {
        cases: 1,
        ..Tally::default()
    };
    let violation = |what: String| format!("{} {label}: {what}", backend.name());
    let mut violations = Vec::new();

    let vfs = Faulty::new(StdVfs);
    let handle = backend.open_faulty(&root, &vfs).unwrap();
    let start = Counts::of(&vfs);
    if let Some(plan) = plan {
        plan.arm(&vfs);
    }
    let mut states = States::one(initial());
    let mut any_error = false;
    let mut seen_injected = 0;
    for (i, step) in workload().into_iter().enumerate() {
        if backend == Backend::Dir && matches!(step, Step::Compact) {
            continue;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| run_step(&handle, &step)));
        let injected = vfs.injected();
        let new_faults = &injected[seen_injected..];
        seen_injected = injected.len();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(_) => {
                violations.push(violation(format!("step {i} {step:?} panicked")));
                break;
            }
        };
        let sync_failed = new_faults.iter().any(|f| OpKind::SYNCS.contains(&f.kind));
        match outcome {
            Answer::Done(observed) => {
                if sync_failed {
                    violations.push(violation(format!(
                        "step {i} {step:?}: a failed flush was swallowed ({new_faults:?})"
                    )));
                }
                if !new_faults.is_empty() {
                    tally.absorbed += 1;
                }
                let explained = states.narrow(|m| {
                    let next = step.apply(m)?;
                    observed.fits(&step, m).then_some(next)
                });
                if !explained {
                    violations.push(violation(format!(
                        "step {i} {step:?} answered {observed:?}, which no state explains: {:?}",
                        states.0
                    )));
                }
            }
            Answer::Conflict => {
                if !states.narrow(|m| step.apply(m).is_none().then(|| m.clone())) {
                    violations.push(violation(format!(
                        "step {i} {step:?} conflicted in no state: {:?}",
                        states.0
                    )));
                }
            }
            Answer::Failed(err) => {
                any_error = true;
                if let Err(what) = check_error(&err, new_faults, &root) {
                    violations.push(violation(format!("step {i} {step:?}: {what}")));
                }
                let refused = matches!(err, Error::Poisoned { .. });
                if !refused && step.mutates() {
                    states.maybe(|m| step.apply(m));
                }
                // A compaction whose flush of its new journal fails abandons that
                // file: the journal in use is untouched, so nothing is poisoned.
                let exempt = matches!(step, Step::Compact)
                    && new_faults.iter().all(|f| f.kind != OpKind::DirSync);
                if sync_failed && !exempt && !(handle.poisoned)() {
                    violations.push(violation(format!(
                        "step {i} {step:?}: a failed flush did not poison the store ({err})"
                    )));
                }
            }
        }
    }
    let ops = Counts::of(&vfs).since(start);
    vfs.disarm();
    if any_error {
        tally.errors_reported += 1;
    }

    // The view of the handle that saw the faults.
    let poisoned = (handle.poisoned)();
    for k in universe() {
        match handle.store.get(&k) {
            Ok(value) => {
                if !states
                    .narrow(|m| (m.get(&k) == value.as_ref().map(|e| &e.value)).then(|| m.clone()))
                {
                    violations.push(violation(format!("after the faults {k} reads {value:?}")));
                }
            }
            Err(e) if poisoned && e.is_poisoned() => {}
            Err(e) => violations.push(violation(format!("after the faults {k} fails: {e}"))),
        }
    }
    if poisoned {
        tally.poisoned += 1;
        let refused = handle.store.put(&key("jobs/after"), b"x", Expect::Any);
        if !refused.as_ref().is_err_and(Error::is_poisoned) {
            violations.push(violation(format!(
                "a poisoned store took a write: {refused:?}"
            )));
        }
    }
    drop(handle);

    // Reopened on a healthy layer: every acknowledged write, nothing torn.
    let certain = states.certain_keys(&universe());
    match backend.open_std(&root) {
        Ok(store) => {
            let mut found = Model::new();
            for k in universe() {
                match store.get(&k) {
                    Ok(Some(entry)) => {
                        found.insert(k, entry.value);
                    }
                    Ok(None) => {}
                    Err(e) => violations.push(violation(format!("reopened, {k} fails: {e}"))),
                }
            }
            let listed: Vec<Key> = ["jobs", "deep"]
                .iter()
                .flat_map(|p| store.list_all(&Prefix::new([*p]).unwrap()).unwrap())
                .collect();
            let keys: Vec<Key> = found.keys().cloned().collect();
            let mut sorted = listed.clone();
            sorted.sort();
            if sorted != keys {
                violations.push(violation(format!(
                    "reopened, list shows {listed:?}, reads {keys:?}"
                )));
            }
            if states.0.contains(&found) {
                tally.acknowledged_checked += certain as u64;
            } else {
                violations.push(violation(format!(
                    "reopened, the store holds {found:?}, none of {:?}",
                    states.0
                )));
            }
        }
        Err(e) => violations.push(violation(format!("reopening failed: {e}"))),
    }
    // A temp file or directory stays only where removing it (or, for a
    // directory, what is in it) failed too.
    let injected = vfs.injected();
    for temp in common::temp_files_under(&root).unwrap() {
        let removal_failed = injected
            .iter()
            .any(|i| matches!(i.kind, OpKind::Remove | OpKind::Rmdir) && i.path.starts_with(&temp));
        if !removal_failed {
            violations.push(violation(format!("temp file {temp:?} left behind")));
        }
        tally.temps_left += 1;
    }
    tally.violations = violations;
    (tally, ops)
}

/// What a step answered, beyond success.
#[derive(Debug)]
enum Observed {
    Nothing,
    Value(Option<Vec<u8>>),
    Existed(bool),
    Keys(Vec<Key>),
}

impl Observed {
    /// Whether the answer is what the step gives in state `m`.
    fn fits(&self, step: &Step, m: &Model) -> bool {
        match (self, step) {
            (Observed::Value(v), Step::Get(k)) => m.get(k) == v.as_ref(),
            (Observed::Existed(e), Step::Delete(k)) => m.contains_key(k) == *e,
            (Observed::Keys(keys), Step::List) => keys
                .iter()
                .eq(m.keys().filter(|k| k.segments()[0] == "jobs")),
            _ => true,
        }
    }
}

enum Answer {
    Done(Observed),
    Conflict,
    Failed(Error),
}

fn run_step(handle: &Handle, step: &Step) -> Answer {
    let store = &handle.store;
    let result = match step {
        Step::Put(k, v, expect) => store.put(k, v, *expect).map(|_| Observed::Nothing),
        Step::Delete(k) => store.delete(k, Expect::Any).map(Observed::Existed),
        Step::Batch(ops) => {
            let batch = ops.iter().fold(Batch::new(), |b, (k, v, e)| match v {
                Some(v) => b.put(k, *v, *e),
                None => b.delete(k, *e),
            });
            store.apply(&batch).map(|_| Observed::Nothing)
        }
        Step::Get(k) => store.get(k).map(|e| Observed::Value(e.map(|e| e.value))),
        Step::List => store
            .list_all(&Prefix::new(["jobs"]).unwrap())
            .map(Observed::Keys),
        Step::Compact => (handle.compact)().map(|()| Observed::Nothing),
    };
    match result {
        Ok(observed) => Answer::Done(observed),
        Err(e) if e.is_conflict() => Answer::Conflict,
        Err(e) => Answer::Failed(e),
    }
}

/// A store holding [`initial`], made once and copied for each case.
fn template(backend: Backend) -> tempfile::TempDir {
    let dir = scratch_dir();
    let store = backend.open_std(&dir.path().join("store")).unwrap();
    for (k, v) in initial() {
        store.put(&k, &v, Expect::Absent).unwrap();
    }
    dir
}

fn every_case(backend: Backend) {
    let template = template(backend);
    let root = template.path().join("store");
    let (clean, counts) = run_case(backend, &root, None);
    assert!(
        clean.violations.is_empty() && clean.errors_reported == 0,
        "the workload fails without faults: {:?}",
        clean.violations
    );
    let mut tally = Tally::default();
    for error in InjectedError::ERRNOS {
        for from_n_on in [false, true] {
            for n in 1..=counts.ops {
                tally.add(run_case(backend, &root, Some(Plan::new(n, from_n_on, error))).0);
            }
        }
    }
    println!(
        "faults store={} workload_ops={} writes={} syncs={}",
        backend.name(),
        counts.ops,
        counts.writes,
        counts.syncs
    );
    tally.report(backend.name());
}

/// Two faults in one run: a write cut short by a full disk, then a failed
/// flush, for every write and every flush after it: the repair of what the
/// first fault left must be as safe as a first write.
fn write_then_flush(backend: Backend) {
    let template = template(backend);
    let root = template.path().join("store");
    let (_, counts) = run_case(backend, &root, None);
    let mut tally = Tally::default();
    for n in 1..=counts.writes {
        for m in 1..=counts.syncs {
            let plan = Plan {
                only: Some(&[OpKind::Write]),
                then: Some((m, &OpKind::SYNCS, InjectedError::Eio)),
                ..Plan::new(n, false, InjectedError::Enospc)
            };
            tally.add(run_case(backend, &root, Some(plan)).0);
        }
    }
    tally.report(&format!("{}-write-then-flush", backend.name()));
}

/// `JOBSAFE_FAULTS_DOUBLE=1`: two faults in one run, any operation then any
/// operation after it, ENOSPC (torn) then EIO. Quadratic in the workload: minutes.
fn any_two_faults(backend: Backend) {
    if std::env::var("JOBSAFE_FAULTS_DOUBLE").as_deref() != Ok("1") {
        println!(
            "faults store={}-double: not run (set JOBSAFE_FAULTS_DOUBLE=1)",
            backend.name()
        );
        return;
    }
    let template = template(backend);
    let root = template.path().join("store");
    let (_, counts) = run_case(backend, &root, None);
    let mut tally = Tally::default();
    for n in 1..=counts.ops {
        for m in 1..=counts.ops - n {
            let plan = Plan {
                then: Some((m, &OpKind::ALL, InjectedError::Eio)),
                ..Plan::new(n, false, InjectedError::Enospc)
            };
            tally.add(run_case(backend, &root, Some(plan)).0);
        }
    }
    tally.report(&format!("{}-double", backend.name()));
}

#[test]
fn dir_store_write_then_flush() {
    write_then_flush(Backend::Dir);
}

#[test]
fn log_store_write_then_flush() {
    write_then_flush(Backend::Log);
}

#[test]
fn dir_store_any_two_faults() {
    any_two_faults(Backend::Dir);
}

#[test]
fn log_store_any_two_faults() {
    any_two_faults(Backend::Log);
}

#[test]
fn dir_store_under_every_fault() {
    every_case(Backend::Dir);
}

#[test]
fn log_store_under_every_fault() {
    every_case(Backend::Log);
}

/// Regression: the flush that makes the zeroing of a torn frame durable is a
/// flush like any other. It used to fail without poisoning the store, which then
/// went on appending over a tail whose state on disk was unknown.
#[test]
fn log_store_a_failed_flush_of_a_cleared_torn_tail_poisons() {
    let dir = scratch_dir();
    let vfs = Faulty::new(StdVfs);
    let store = LogStore::builder(dir.path())
        .vfs(vfs.clone())
        .no_background_compaction()
        .open()
        .unwrap();
    let k = key("jobs/k");
    store.put(&k, b"kept", Expect::Absent).unwrap();

    // Half a frame reaches the file, then the disk is full.
    vfs.arm(
        Fault::nth(1)
            .only([OpKind::Write])
            .error(InjectedError::Enospc)
            .torn_writes(true),
    );
    let full = store.put(&k, b"lost", Expect::Any).unwrap_err();
    assert!(full.to_string().contains("journal"), "{full}");
    assert!(
        !store.is_poisoned(),
        "a failed write alone loses nothing acknowledged"
    );

    // The next writer zeros the torn frame; the flush of the zeros fails.
    vfs.arm(Fault::nth(1).only(OpKind::SYNCS));
    let err = store.put(&k, b"next", Expect::Any).unwrap_err();
    assert_eq!(
        vfs.injected().last().map(|i| i.kind),
        Some(OpKind::FileSync)
    );
    assert!(store.is_poisoned(), "a failed flush must poison: {err}");
    vfs.disarm();
    assert!(
        store
            .put(&k, b"after", Expect::Any)
            .unwrap_err()
            .is_poisoned()
    );
    drop(store);

    let reopened = LogStore::open(dir.path()).unwrap();
    assert_eq!(reopened.get(&k).unwrap().unwrap().value, b"kept");
}

/// One step of the `AtomicWriter` workload, on files named by one-segment keys.
#[derive(Clone, Copy, Debug)]
enum FileStep {
    Write(&'static str, &'static [u8]),
    Create(&'static str, &'static [u8]),
    Streamed(&'static str, [&'static [u8]; 2]),
    Discarded(&'static str, &'static [u8]),
}

impl FileStep {
    fn apply(&self, model: &Model) -> Option<Model> {
        let mut next = model.clone();
        match *self {
            FileStep::Write(name, bytes) => {
                next.insert(key(name), bytes.to_vec());
            }
            FileStep::Create(name, bytes) => {
                if model.contains_key(&key(name)) {
                    return None;
                }
                next.insert(key(name), bytes.to_vec());
            }
            FileStep::Streamed(name, [a, b]) => {
                next.insert(key(name), [a, b].concat());
            }
            FileStep::Discarded(..) => {}
        }
        Some(next)
    }

    fn run(&self, writer: &AtomicWriter<Faulty>, dir: &Path) -> jobsafe::Result<()> {
        match *self {
            FileStep::Write(name, bytes) => writer.write(dir.join(name), bytes),
            FileStep::Create(name, bytes) => writer
                .to_builder()
                .no_clobber(true)
                .build()?
                .write(dir.join(name), bytes),
            FileStep::Streamed(name, parts) => {
                let mut pending = writer.begin(dir.join(name))?;
                for part in parts {
                    pending.write_bytes(part)?;
                }
                pending.commit()
            }
            FileStep::Discarded(name, bytes) => {
                let mut pending = writer.begin(dir.join(name))?;
                pending.write_bytes(bytes)?;
                pending.discard()
            }
        }
    }
}

/// The files (not temp files) in `dir`, as a model.
fn files_in(dir: &Path) -> Model {
    let mut files = Model::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(AtomicWriter::TEMP_SUFFIX) {
            files.insert(key(&name), fs::read(entry.path()).unwrap());
        }
    }
    files
}

/// Runs the `AtomicWriter` workload once with `plan` armed.
fn writer_case(plan: Option<Plan>) -> (Tally, u64) {
    let dir = scratch_dir();
    let root = dir.path();
    fs::write(root.join("a"), b"a0").unwrap();
    let label = plan.map_or("unarmed".to_owned(), Plan::label);
    let violation = |what: String| format!("atomic {label}: {what}");
    let mut violations = Vec::new();
    let mut tally = Tally {
        cases: 1,
        ..Tally::default()
    };
    let vfs = Faulty::new(StdVfs);
    let writer = AtomicWriter::with_vfs(vfs.clone());
    let steps = [
        FileStep::Write("a", b"a1"),
        FileStep::Create("b", b"b1"),
        FileStep::Create("b", b"b-again"),
        FileStep::Streamed("c", [b"c-first,", b"c-second"]),
        FileStep::Discarded("d", b"never"),
        FileStep::Write("a", b"a2-longer"),
    ];
    let mut states = States::one(files_in(root));
    if let Some(plan) = plan {
        plan.arm(&vfs);
    }
    let mut seen_injected = 0;
    let mut any_error = false;
    for (i, step) in steps.iter().enumerate() {
        let outcome = catch_unwind(AssertUnwindSafe(|| step.run(&writer, root)));
        let injected = vfs.injected();
        let new_faults = &injected[seen_injected..];
        seen_injected = injected.len();
        let sync_failed = new_faults.iter().any(|f| OpKind::SYNCS.contains(&f.kind));
        let Ok(outcome) = outcome else {
            violations.push(violation(format!("step {i} {step:?} panicked")));
            break;
        };
        let explained = match outcome {
            Ok(()) => {
                if sync_failed {
                    violations.push(violation(format!(
                        "step {i} {step:?}: a failed flush was swallowed"
                    )));
                }
                tally.absorbed += u64::from(!new_faults.is_empty());
                states.narrow(|m| step.apply(m))
            }
            // Whatever failed on the way (say, removing the temp file after the
            // refused link), the answer must be the target's true state.
            Err(Error::AlreadyExists { .. }) => {
                states.narrow(|m| step.apply(m).is_none().then(|| m.clone()))
            }
            // The rename happened: readers see the new content, not yet durable.
            Err(e @ Error::NotDurable { .. }) => {
                any_error = true;
                if let Err(what) = check_error(&e, new_faults, root) {
                    violations.push(violation(format!("step {i} {step:?}: {what}")));
                }
                states.narrow(|m| step.apply(m))
            }
            Err(e) => {
                any_error = true;
                if let Err(what) = check_error(&e, new_faults, root) {
                    violations.push(violation(format!("step {i} {step:?}: {what}")));
                }
                states.maybe(|m| step.apply(m));
                true
            }
        };
        if !explained {
            violations.push(violation(format!(
                "step {i} {step:?}: its answer fits no state of {:?}",
                states.0
            )));
        }
    }
    let ops = vfs.ops();
    vfs.disarm();
    tally.errors_reported += u64::from(any_error);

    let found = files_in(root);
    if states.0.contains(&found) {
        let names: Vec<Key> = ["a", "b", "c", "d"].iter().map(|n| key(n)).collect();
        tally.acknowledged_checked += states.certain_keys(&names) as u64;
    } else {
        violations.push(violation(format!(
            "the directory holds {found:?}, none of {:?}",
            states.0
        )));
    }
    let injected = vfs.injected();
    for temp in common::temp_files_under(root).unwrap() {
        if !injected
            .iter()
            .any(|i| i.kind == OpKind::Remove && i.path == temp)
        {
            violations.push(violation(format!("temp file {temp:?} left behind")));
        }
        tally.temps_left += 1;
    }
    tally.violations = violations;
    (tally, ops)
}

#[test]
fn atomic_writer_under_every_fault() {
    let (clean, ops) = writer_case(None);
    assert!(
        clean.violations.is_empty() && clean.errors_reported == 0,
        "the workload fails without faults: {:?}",
        clean.violations
    );
    let mut tally = Tally::default();
    for error in InjectedError::ERRNOS {
        for from_n_on in [false, true] {
            for n in 1..=ops {
                tally.add(writer_case(Some(Plan::new(n, from_n_on, error))).0);
            }
        }
    }
    println!("faults store=atomic workload_ops={ops} (stateless: nothing to poison)");
    tally.report("atomic");
}

/// What the workload above the store got acknowledged.
#[derive(Debug, Default)]
struct Acked {
    acquired: Option<jobsafe::FencingToken>,
    released: bool,
    reserved: bool,
    confirmed: bool,
    created: bool,
    started: bool,
    completed: bool,
}

const ACCOUNT: &str = "lic:abc";
const JOB: &str = "job-1";

/// Runs a lock, ledger and job-record workload on `backend` with `plan` armed.
fn layers_case(backend: Backend, template: &Path, plan: Option<Plan>) -> (Tally, u64) {
    let dir = scratch_dir();
    let root = dir.path().join("store");
    common::copy_tree(template, &root);
    let label = plan.map_or("unarmed".to_owned(), Plan::label);
    let violation = |what: String| format!("{}+layers {label}: {what}", backend.name());
    let mut violations = Vec::new();
    let mut tally = Tally {
        cases: 1,
        ..Tally::default()
    };
    let clock = ManualClock::new(1_700_000_000_000);
    let vfs = Faulty::new(StdVfs);
    let handle = backend.open_faulty(&root, &vfs).unwrap();
    // A write that fails transiently is read back once, at once: the clock
    // never moves here, so a longer wait would never end.
    let once = Duration::ZERO;
    let lock = JobLock::builder(handle.store.clone(), Arc::new(clock.clone()))
        .resolve_within(once)
        .build()
        .unwrap();
    let ledger = JobLedger::builder(handle.store.clone(), Arc::new(clock.clone()))
        .resolve_within(once)
        .build()
        .unwrap();
    let jobs = JobState::builder(handle.store.clone(), Arc::new(clock.clone()))
        .resolve_within(once)
        .build()
        .unwrap();
    let lock_key = key("index/vault-1");
    let start = vfs.ops();
    if let Some(plan) = plan {
        plan.arm(&vfs);
    }

    let mut acked = Acked::default();
    let mut errors: Vec<(&str, Error, Vec<Injected>)> = Vec::new();
    let mut seen = 0;
    let mut step = |name: &'static str, result: jobsafe::Result<()>, errors: &mut Vec<_>| {
        let injected = vfs.injected();
        let new_faults = injected[seen..].to_vec();
        seen = injected.len();
        match result {
            Ok(()) => true,
            Err(e) => {
                errors.push((name, e, new_faults));
                false
            }
        }
    };
    let ran = catch_unwind(AssertUnwindSafe(|| {
        let request = LockRequest::new().actor("worker");
        let guard = match lock.acquire(&lock_key, Duration::from_secs(60), &request) {
            Ok(jobsafe::lock::Acquire::Acquired(guard)) => {
                acked.acquired = Some(guard.token());
                step("acquire", Ok(()), &mut errors);
                Some(guard.into_handle())
            }
            Ok(held) => {
                step("acquire", Err(unexpected(format!("{held:?}"))), &mut errors);
                None
            }
            Err(e) => {
                step("acquire", Err(e), &mut errors);
                None
            }
        };
        let reservation = match ledger.reserve_pending(ACCOUNT, JOB, &ChargeRequest::new()) {
            Ok(Reserve::New(r)) => {
                acked.reserved = step("reserve", Ok(()), &mut errors);
                Some(r)
            }
            Ok(other) => {
                step(
                    "reserve",
                    Err(unexpected(format!("{other:?}"))),
                    &mut errors,
                );
                None
            }
            Err(e) => {
                step("reserve", Err(e), &mut errors);
                None
            }
        };
        if let Some(r) = &reservation {
            let confirmed = ledger.confirm_charge(r).map(|_| ());
            acked.confirmed = step("confirm", confirmed, &mut errors);
        }
        let created = jobs.create(NewJob::new("index").id(JOB)).map(|_| ());
        acked.created = step("create", created, &mut errors);
        if acked.created {
            match jobs.start(JOB, acked.acquired) {
                Ok(worker) => {
                    acked.started = step("start", Ok(()), &mut errors);
                    let done = jobs
                        .complete(&worker, serde_json::json!({"ok": true}))
                        .map(|_| ());
                    acked.completed = step("complete", done, &mut errors);
                }
                Err(e) => {
                    step("start", Err(e), &mut errors);
                }
            }
        }
        if let Some(holder) = guard {
            let released = lock.release(&holder).map(|_| ());
            acked.released = step("release", released, &mut errors);
        }
    }));
    let ops = vfs.ops() - start;
    vfs.disarm();
    if ran.is_err() {
        violations.push(violation("the workload panicked".to_owned()));
    }
    tally.errors_reported += u64::from(!errors.is_empty());
    for (name, err, faults) in &errors {
        if let Err(what) = check_error(err, faults, &root) {
            violations.push(violation(format!("{name}: {what}")));
        }
        let sync_failed = faults.iter().any(|f| OpKind::SYNCS.contains(&f.kind));
        if sync_failed && !(handle.poisoned)() {
            violations.push(violation(format!(
                "{name}: a failed flush did not poison the store"
            )));
        }
    }
    tally.poisoned += u64::from((handle.poisoned)());
    drop((lock, ledger, jobs, handle));

    // Reopened on a healthy layer: what was acknowledged is there and decodes.
    let store = backend.open_std(&root).unwrap();
    let clock: jobsafe::SharedClock = Arc::new(clock);
    let lock = JobLock::new(store.clone(), clock.clone());
    let ledger = JobLedger::new(store.clone(), clock.clone());
    let jobs = JobState::new(store, clock);
    let mut checked = 0;
    match lock.peek(&lock_key) {
        Ok(record) => {
            let token = record.as_ref().map(|r| r.token);
            let fits = match (acked.acquired, acked.released) {
                (Some(_), true) => token.is_none(),
                (Some(t), false) => token.is_none_or(|found| found == t),
                (None, _) => true,
            };
            if acked.acquired.is_some() && !acked.released && token.is_none() {
                // A release that failed may still have happened.
                let release_failed = errors.iter().any(|(n, ..)| *n == "release");
                if !release_failed {
                    violations.push(violation("an acquired lock is gone".to_owned()));
                }
            }
            if !fits {
                violations.push(violation(format!("lock reads {record:?} after {acked:?}")));
            }
            checked += 1;
        }
        Err(e) => violations.push(violation(format!("lock record fails: {e}"))),
    }
    match ledger.lookup(ACCOUNT, JOB) {
        Ok(found) => {
            let state = found.as_ref().map(|r| r.state);
            let fits = if acked.confirmed {
                state == Some(ReservationState::Charged)
            } else if acked.reserved {
                matches!(
                    state,
                    Some(ReservationState::ChargePending | ReservationState::Charged)
                )
            } else {
                true
            };
            if !fits {
                violations.push(violation(format!(
                    "reservation reads {state:?} after {acked:?}"
                )));
            }
            checked += 1;
        }
        Err(e) => violations.push(violation(format!("reservation fails: {e}"))),
    }
    match jobs.get(JOB) {
        Ok(found) => {
            let status = found.as_ref().map(|j| j.status);
            let fits = if acked.completed {
                status == Some(JobStatus::Complete)
            } else if acked.started {
                matches!(status, Some(JobStatus::Running | JobStatus::Complete))
            } else if acked.created {
                status.is_some()
            } else {
                true
            };
            if !fits {
                violations.push(violation(format!("job reads {status:?} after {acked:?}")));
            }
            checked += 1;
        }
        Err(e) => violations.push(violation(format!("job record fails: {e}"))),
    }
    tally.acknowledged_checked += checked;
    tally.violations = violations;
    (tally, ops)
}

fn unexpected(what: String) -> Error {
    Error::InvalidArgument(format!("unexpected answer without faults: {what}"))
}

fn layers_every_case(backend: Backend) {
    let template = scratch_dir();
    let root = template.path().join("store");
    drop(backend.open_std(&root).unwrap());
    let (clean, ops) = layers_case(backend, &root, None);
    assert!(
        clean.violations.is_empty() && clean.errors_reported == 0,
        "the workload fails without faults: {:?}",
        clean.violations
    );
    let mut tally = Tally::default();
    for error in InjectedError::ERRNOS {
        for from_n_on in [false, true] {
            for n in 1..=ops {
                tally.add(layers_case(backend, &root, Some(Plan::new(n, from_n_on, error))).0);
            }
        }
    }
    let store = format!("{}+lock+ledger+jobs", backend.name());
    println!("faults store={store} workload_ops={ops}");
    tally.report(&store);
}

#[test]
fn lock_ledger_and_jobs_on_a_faulty_dir_store() {
    layers_every_case(Backend::Dir);
}

#[test]
fn lock_ledger_and_jobs_on_a_faulty_log_store() {
    layers_every_case(Backend::Log);
}

/// Regression: a poisoned `LogStore` refused the delete of a quarantine only
/// after writing the record's copy, which stayed in `quarantine/` beside the
/// live record. A poisoned store now refuses before writing anything.
#[test]
fn a_poisoned_log_store_quarantines_nothing() {
    let dir = scratch_dir();
    let vfs = Faulty::new(StdVfs);
    let store = LogStore::builder(dir.path())
        .vfs(vfs.clone())
        .no_background_compaction()
        .open()
        .unwrap();
    let k = key("jobs/k");
    store.put(&k, b"kept", Expect::Absent).unwrap();
    vfs.arm(Fault::nth(1).only(OpKind::SYNCS));
    assert!(store.put(&k, b"maybe", Expect::Any).is_err());
    vfs.disarm();
    assert!(store.is_poisoned());

    let err = store.quarantine(&k).unwrap_err();
    assert!(err.is_poisoned(), "{err}");
    let quarantine = dir.path().join("quarantine");
    let copies = fs::read_dir(&quarantine).map_or(0, |d| d.count());
    assert_eq!(
        copies, 0,
        "a refused quarantine left copies in {quarantine:?}"
    );
}

/// A store left with work for the next open: for `DirStore` a committed batch
/// whose records were not written (its journal stays), for `LogStore` a frame
/// torn by a full disk at the end of the journal. Returns the template and the
/// state a healthy open must show.
fn template_with_leftovers(backend: Backend) -> (tempfile::TempDir, Model) {
    let dir = template(backend);
    let root = dir.path().join("store");
    let vfs = Faulty::new(StdVfs);
    let handle = backend.open_faulty(&root, &vfs).unwrap();
    let u = universe();
    let mut expected = initial();
    match backend {
        Backend::Dir => {
            // The journal is the first file created; the first record's is the
            // second.
            vfs.arm(Fault::nth(2).only([OpKind::Create]));
            let batch = Batch::new().put(&u[2], b"batch2", Expect::Absent).put(
                &u[3],
                b"batch3",
                Expect::Absent,
            );
            let err = handle.store.apply(&batch).unwrap_err();
            assert!(matches!(err, Error::BatchPending { .. }), "{err}");
            expected.insert(u[2].clone(), b"batch2".to_vec());
            expected.insert(u[3].clone(), b"batch3".to_vec());
        }
        Backend::Log => {
            vfs.arm(
                Fault::nth(1)
                    .only([OpKind::Write])
                    .error(InjectedError::Enospc)
                    .torn_writes(true),
            );
            handle
                .store
                .put(&u[2], b"torn", Expect::Absent)
                .unwrap_err();
        }
    }
    assert!(!(handle.poisoned)());
    (dir, expected)
}

/// Opening a store that has a batch to complete or a torn tail to clear, with
/// every operation of the open failed in turn: the open fails naming the path
/// or succeeds with the right state, and a healthy open afterwards shows the
/// state the leftovers stand for.
fn open_under_every_fault(backend: Backend) {
    let (template, expected) = template_with_leftovers(backend);
    let template_root = template.path().join("store");
    let open_ops = {
        let dir = scratch_dir();
        let root = dir.path().join("store");
        common::copy_tree(&template_root, &root);
        let vfs = Faulty::new(StdVfs);
        drop(backend.open_faulty(&root, &vfs).unwrap());
        vfs.ops()
    };
    // Every open path branches on the error's kind the same way for EIO and
    // EACCES (the main passes try all three); a LogStore open scans and zeros a
    // 4 MiB journal tail per case, so it runs the two that differ.
    let modes: &[(InjectedError, bool)] = match backend {
        Backend::Dir => &[
            (InjectedError::Eio, false),
            (InjectedError::Eio, true),
            (InjectedError::Enospc, false),
            (InjectedError::Enospc, true),
            (InjectedError::Eacces, false),
            (InjectedError::Eacces, true),
        ],
        Backend::Log => &[
            (InjectedError::Eio, false),
            (InjectedError::Eio, true),
            (InjectedError::Enospc, false),
        ],
    };
    let mut tally = Tally::default();
    for &(error, from_n_on) in modes {
        for n in 1..=open_ops {
            let plan = Plan::new(n, from_n_on, error);
            let label = format!("{} open {}", backend.name(), plan.label());
            let dir = scratch_dir();
            let root = dir.path().join("store");
            common::copy_tree(&template_root, &root);
            let vfs = Faulty::new(StdVfs);
            plan.arm(&vfs);
            let mut case = Tally {
                cases: 1,
                ..Tally::default()
            };
            let opened = catch_unwind(AssertUnwindSafe(|| backend.open_faulty(&root, &vfs)));
            vfs.disarm();
            match opened {
                Err(_) => case.violations.push(format!("{label}: the open panicked")),
                Ok(Err(e)) => {
                    case.errors_reported += 1;
                    if let Err(what) = check_error(&e, &vfs.injected(), &root) {
                        case.violations.push(format!("{label}: {what}"));
                    }
                }
                Ok(Ok(handle)) => {
                    let poisoned = (handle.poisoned)();
                    case.poisoned += u64::from(poisoned);
                    for k in universe() {
                        match handle.store.get(&k) {
                            Ok(v) if v.as_ref().map(|e| &e.value) == expected.get(&k) => {}
                            Err(e) if poisoned && e.is_poisoned() => {}
                            other => case
                                .violations
                                .push(format!("{label}: opened, {k} reads {other:?}")),
                        }
                    }
                }
            }
            match backend.open_std(&root) {
                Ok(store) => {
                    for k in universe() {
                        let found = store.get(&k).map(|e| e.map(|e| e.value));
                        if found.as_ref().ok() != Some(&expected.get(&k).cloned()) {
                            case.violations
                                .push(format!("{label}: reopened, {k} reads {found:?}"));
                        } else {
                            case.acknowledged_checked += 1;
                        }
                    }
                }
                Err(e) => case
                    .violations
                    .push(format!("{label}: the healthy open fails: {e}")),
            }
            tally.add(case);
        }
    }
    println!("faults store={}-open open_ops={open_ops}", backend.name());
    tally.report(&format!("{}-open", backend.name()));
}

#[test]
fn dir_store_opened_under_every_fault() {
    open_under_every_fault(Backend::Dir);
}

#[test]
fn log_store_opened_under_every_fault() {
    open_under_every_fault(Backend::Log);
}

/// Writers on several threads when a flush fails: with `LogStore` the whole
/// group that shared the flush fails. Every write acknowledged before or beside
/// the failure is there after a reopen; every failed one is absent or whole;
/// every error names the store and is the injected EIO or `Poisoned`.
fn concurrent_writers_and_a_failed_flush(backend: Backend) {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 10;
    // Flushes that happen whatever the threads' timing: a DirStore put makes
    // at least two, a LogStore group of at most THREADS requests one.
    let flushes: &[u64] = match backend {
        Backend::Dir => &[1, 5, 20, 60],
        Backend::Log => &[1, 2, 5, 9],
    };
    let mut tally = Tally::default();
    for &nth_flush in flushes {
        let dir = scratch_dir();
        let root = dir.path().join("store");
        let vfs = Faulty::new(StdVfs);
        let handle = backend.open_faulty(&root, &vfs).unwrap();
        vfs.arm(Fault::nth(nth_flush).only(OpKind::SYNCS));
        let store = handle.store.clone();
        let outcomes: Vec<(Key, Vec<u8>, Result<(), String>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let store = store.clone();
                    let root = root.clone();
                    scope.spawn(move || {
                        (0..PER_THREAD)
                            .map(|i| {
                                let k = key(&format!("jobs/t{t}/{i}"));
                                let v = format!("value {t}/{i}").into_bytes();
                                let result = store.put(&k, &v, Expect::Absent);
                                let result = result.map(|_| ()).map_err(|e| {
                                    let chain = common::error_chain(&e);
                                    let expected =
                                        e.is_poisoned() || chain.contains("Input/output error");
                                    if chain.contains(&*root.to_string_lossy()) && expected {
                                        String::new()
                                    } else {
                                        format!("unexpected error {chain}")
                                    }
                                });
                                (k, v, result)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let label = format!("{} threads, flush {nth_flush} fails", backend.name());
        let mut case = Tally {
            cases: 1,
            ..Tally::default()
        };
        let injected = vfs.injected().len();
        if injected != 1 {
            case.violations
                .push(format!("{label}: {injected} faults injected, expected 1"));
        }
        if !(handle.poisoned)() {
            case.violations
                .push(format!("{label}: a failed flush did not poison"));
        }
        case.poisoned += 1;
        drop(handle);
        drop(store);
        let reopened = backend.open_std(&root).unwrap();
        for (k, v, result) in &outcomes {
            let found = reopened.get(k).unwrap().map(|e| e.value);
            match result {
                Ok(()) => {
                    case.acknowledged_checked += 1;
                    if found.as_ref() != Some(v) {
                        case.violations
                            .push(format!("{label}: acknowledged {k} reads {found:?}"));
                    }
                }
                Err(what) => {
                    case.errors_reported += 1;
                    if !what.is_empty() {
                        case.violations.push(format!("{label}: {k}: {what}"));
                    }
                    if found.as_ref().is_some_and(|f| f != v) {
                        case.violations
                            .push(format!("{label}: failed {k} reads {found:?}"));
                    }
                }
            }
        }
        tally.add(case);
    }
    tally.report(&format!("{}-threads", backend.name()));
}

#[test]
fn dir_store_threads_and_a_failed_flush() {
    concurrent_writers_and_a_failed_flush(Backend::Dir);
}

#[test]
fn log_store_threads_and_a_failed_flush() {
    concurrent_writers_and_a_failed_flush(Backend::Log);
}

/// Regression: a key segment too long for a file name gets a hashed directory,
/// built under a temp name. When writing its `.segment` file failed, the temp
/// directory stayed for good (sweeps remove temp files, not directories).
#[test]
fn a_failed_hashed_directory_leaves_no_temp_directory() {
    let dir = scratch_dir();
    let vfs = Faulty::new(StdVfs);
    let store = DirStore::builder(dir.path())
        .vfs(vfs.clone())
        .open()
        .unwrap();
    let long = key(&format!("deep/{}/leaf", "long-".repeat(40)));
    // The first file created is the temp file of the `.segment` file.
    vfs.arm(
        Fault::nth(1)
            .only([OpKind::Create])
            .error(InjectedError::Enospc),
    );
    let err = store.put(&long, b"v", Expect::Absent).unwrap_err();
    assert!(common::error_chain(&err).contains("No space left"), "{err}");
    assert_eq!(
        common::temp_files_under(dir.path()).unwrap(),
        Vec::<PathBuf>::new()
    );
    vfs.disarm();
    assert!(!store.is_poisoned());
    store.put(&long, b"v", Expect::Absent).unwrap();
    assert_eq!(store.get(&long).unwrap().unwrap().value, b"v");
}
