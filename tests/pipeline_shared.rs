//! Artifacts every machine can read (`PipelineBuilder::shared_artifacts`,
//! `StoreArtifacts`): a job taken over on another machine skips the stages
//! that finished on the first, their artifacts fetched into its own
//! directory; a copy that is torn, damaged or half uploaded is never used,
//! and the stage runs again; purge and delete remove the copies. Each
//! "machine" is a pipeline with an artifact directory of its own on one
//! store. The PgStore variant (`pg` in its name) runs with the PostgreSQL
//! tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::hooked_store::{HookedStore, StoreOp};
use jobsafe::jobs::NewJob;
use jobsafe::pipeline::{
    Artifact, ArtifactStorage, PurgePolicy, RunOutcome, StageError, StoreArtifacts,
};
use jobsafe::{Error, Expect, Key, ManualClock, MemStore, Pipeline, Prefix, Store};
use tempfile::TempDir;

const START_MS: u64 = 1_700_000_000_000;

/// Larger than a chunk: a copy in several parts.
fn page() -> Vec<u8> {
    (0..(StoreArtifacts::<MemStore>::CHUNK_LEN * 5 / 2))
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect()
}

/// What the stages do, counted.
#[derive(Default)]
struct Script {
    fetches: AtomicUsize,
    /// `render` fails once, transiently: the machine "went away" there.
    fail_render: AtomicBool,
    /// `fetch` fails once, transiently, before it writes anything.
    fail_fetch: AtomicBool,
}

/// One machine: a pipeline with its own artifact directory.
struct Machine {
    _dir: TempDir,
    pipeline: Pipeline<Arc<dyn Store>>,
}

fn machine(
    store: &Arc<dyn Store>,
    clock: &ManualClock,
    script: &Arc<Script>,
    shared: bool,
    storage: Option<FaultyStorage>,
) -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let (fetch, render) = (Arc::clone(script), Arc::clone(script));
    let mut builder = Pipeline::builder(Arc::clone(store), Arc::new(clock.clone()), dir.path())
        .purge_policy(PurgePolicy::default().finished_for(Duration::ZERO))
        .stage("fetch", move |ctx| {
            fetch.fetches.fetch_add(1, Ordering::SeqCst);
            if fetch.fail_fetch.swap(false, Ordering::SeqCst) {
                return Err(StageError::transient("the origin went away"));
            }
            ctx.write("page.bin", &page())?;
            ctx.write_shared("transcript.txt", b"said and done")?;
            Ok(())
        })
        .stage("render", move |ctx| {
            let page = ctx.read("page.bin")?;
            let transcript = ctx.read_shared("transcript.txt")?;
            if render.fail_render.swap(false, Ordering::SeqCst) {
                return Err(StageError::transient("the machine went away"));
            }
            ctx.write(
                "out.txt",
                format!("{} {}", page.len(), transcript.len()).as_bytes(),
            )?;
            Ok(())
        });
    if shared {
        builder = builder.shared_artifacts(StoreArtifacts::new(Arc::clone(store)));
    }
    if let Some(storage) = storage {
        builder = builder.shared_artifacts(storage);
    }
    Machine {
        pipeline: builder.build().unwrap(),
        _dir: dir,
    }
}

/// A job whose `fetch` finished on machine `a` and whose `render` failed
/// there; the clock then at its retry time.
fn started_on(a: &Machine, clock: &ManualClock, script: &Script) -> String {
    script.fail_render.store(true, Ordering::SeqCst);
    let job = a
        .pipeline
        .enqueue("vault-1", NewJob::new("export"))
        .unwrap();
    let pass = a.pipeline.run_pass().unwrap();
    let RunOutcome::RetryScheduled { retry_at_ms, .. } = pass.runs[0].outcome else {
        panic!("{:?}", pass.runs[0].outcome);
    };
    clock.set(retry_at_ms);
    job.id
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn takes_over(store: Arc<dyn Store>) {
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let (a, b) = (
        machine(&store, &clock, &script, true, None),
        machine(&store, &clock, &script, true, None),
    );
    let id = started_on(&a, &clock, &script);
    let pass = b.pipeline.run_pass().unwrap();
    assert_eq!(pass.runs[0].outcome, RunOutcome::Completed);
    assert_eq!(pass.runs[0].skipped(), ["fetch"]);
    assert_eq!(script.fetches.load(Ordering::SeqCst), 1, "fetch ran again");
    // Fetched into b's own directory, byte for byte.
    let job_dir = b.pipeline.job_dir(&id);
    assert_eq!(read(&job_dir.join("page.bin")), Some(page()));
    let subject = b.pipeline.subject_dir("vault-1");
    assert_eq!(
        read(&subject.join("transcript.txt")).as_deref(),
        Some(&b"said and done"[..])
    );
    let events = b.pipeline.jobs().events_since(&id, 0).unwrap().events;
    let skipped = events
        .iter()
        .find(|e| e.kind == "stage_skipped")
        .expect("a skip event");
    assert_eq!(skipped.data["fetched"], 2, "{skipped:?}");
}

#[test]
fn a_job_taken_over_on_another_machine_skips_the_stages_that_finished() {
    takes_over(Arc::new(MemStore::new()));
}

#[test]
fn without_shared_artifacts_the_other_machine_runs_the_stage_again() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let (a, b) = (
        machine(&store, &clock, &script, false, None),
        machine(&store, &clock, &script, false, None),
    );
    started_on(&a, &clock, &script);
    let pass = b.pipeline.run_pass().unwrap();
    assert_eq!(pass.runs[0].outcome, RunOutcome::Completed);
    assert_eq!(script.fetches.load(Ordering::SeqCst), 2);
}

/// The keys under the copies' namespace, of one kind (`file` or `chunk`).
fn copies(store: &Arc<dyn Store>, kind: &str) -> Vec<Key> {
    store
        .list_all(&Prefix::new(["artifacts", kind]).unwrap())
        .unwrap()
}

#[test]
fn a_damaged_or_torn_copy_is_never_used_and_the_stage_runs_again() {
    type Damage = fn(&Arc<dyn Store>);
    let damages: [(&str, Damage); 3] = [
        ("a chunk's bytes changed", |store| {
            let chunk = copies(store, "chunk")
                .into_iter()
                .find(|k| k.segments().iter().any(|s| s == "page.bin"))
                .unwrap();
            let mut bytes = store.get(&chunk).unwrap().unwrap().value;
            bytes[7] ^= 1;
            store.put(&chunk, &bytes, Expect::Any).unwrap();
        }),
        ("a chunk missing", |store| {
            let chunk = copies(store, "chunk")
                .into_iter()
                .rfind(|k| k.segments().iter().any(|s| s == "page.bin"))
                .unwrap();
            store.delete(&chunk, Expect::Any).unwrap();
        }),
        ("the manifest never written", |store| {
            for manifest in copies(store, "file") {
                store.delete(&manifest, Expect::Any).unwrap();
            }
        }),
    ];
    for (damage, apply) in damages {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let clock = ManualClock::new(START_MS);
        let script = Arc::new(Script::default());
        let (a, b) = (
            machine(&store, &clock, &script, true, None),
            machine(&store, &clock, &script, true, None),
        );
        let id = started_on(&a, &clock, &script);
        apply(&store);
        let pass = b.pipeline.run_pass().unwrap();
        assert_eq!(pass.runs[0].outcome, RunOutcome::Completed, "{damage}");
        assert_eq!(script.fetches.load(Ordering::SeqCst), 2, "{damage}");
        // What b has is what its own run wrote.
        let job_dir = b.pipeline.job_dir(&id);
        assert_eq!(read(&job_dir.join("page.bin")), Some(page()), "{damage}");
    }
}

#[test]
fn an_upload_cut_off_before_its_manifest_fails_the_write_and_leaves_nothing_used() {
    let hooked = Arc::new(HookedStore::default());
    let store: Arc<dyn Store> = hooked.clone();
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let (a, b) = (
        machine(&store, &clock, &script, true, None),
        machine(&store, &clock, &script, true, None),
    );
    // The store goes away as the first copy's manifest is written, after
    // its chunks.
    let cut = Arc::new(AtomicBool::new(true));
    let cutting = Arc::clone(&cut);
    hooked.on_op(move |op| match op {
        StoreOp::Write(key)
            if key.segments().get(1).map(String::as_str) == Some("file")
                && cutting.swap(false, Ordering::SeqCst) =>
        {
            Err(Error::Database {
                step: "put",
                server: "test".to_owned(),
                transient: true,
                source: "the store went away".into(),
            })
        }
        _ => Ok(()),
    });
    let job = a
        .pipeline
        .enqueue("vault-1", NewJob::new("export"))
        .unwrap();
    let pass = a.pipeline.run_pass().unwrap();
    assert!(
        matches!(pass.runs[0].outcome, RunOutcome::RetryScheduled { .. }),
        "{:?}",
        pass.runs[0].outcome
    );
    assert!(!cut.load(Ordering::SeqCst));
    assert!(a.pipeline.checkpoint(&job.id, "fetch").unwrap().is_none());
    let RunOutcome::RetryScheduled { retry_at_ms, .. } = pass.runs[0].outcome else {
        unreachable!()
    };
    clock.set(retry_at_ms);
    let pass = b.pipeline.run_pass().unwrap();
    assert_eq!(pass.runs[0].outcome, RunOutcome::Completed);
    assert_eq!(script.fetches.load(Ordering::SeqCst), 2);
    // The cut upload's chunks went with the next upload of the path.
    let uploads: std::collections::BTreeSet<String> = copies(&store, "chunk")
        .iter()
        .filter(|k| k.segments().iter().any(|s| s == "page.bin"))
        .map(|k| k.segments()[k.segments().len() - 2].clone())
        .collect();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
}

#[test]
fn purge_and_delete_remove_the_copies() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let (a, b) = (
        machine(&store, &clock, &script, true, None),
        machine(&store, &clock, &script, true, None),
    );
    let id = started_on(&a, &clock, &script);
    assert_eq!(
        b.pipeline.run_pass().unwrap().runs[0].outcome,
        RunOutcome::Completed
    );
    // Copies of a job whose removal was cut off on a machine that is gone.
    let ghost = StoreArtifacts::new(Arc::clone(&store));
    let orphan_page = page();
    let orphan = Artifact::of_bytes("jobs/ghost/page.bin", &orphan_page);
    ghost.store(&orphan, &orphan_page).unwrap();

    let report = b.pipeline.purge().unwrap();
    assert_eq!(report.jobs.total(), 1, "{report:?}");
    // page.bin and out.txt of the job, transcript.txt of its subject, and
    // the ghost's page.bin.
    assert_eq!(report.shared_artifacts, 4, "{report:?}");
    assert!(copies(&store, "file").is_empty());
    assert!(copies(&store, "chunk").is_empty());
    assert!(!b.pipeline.job_dir(&id).exists());

    // A deleted job's copies go with it.
    let job = a
        .pipeline
        .enqueue("vault-2", NewJob::new("export"))
        .unwrap();
    a.pipeline.run_pass().unwrap();
    assert!(!copies(&store, "file").is_empty());
    a.pipeline.delete(&job.id).unwrap();
    let left: Vec<Key> = copies(&store, "file")
        .into_iter()
        .filter(|k| k.segments().get(2).map(String::as_str) == Some("jobs"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn names_planted_in_the_store_never_lead_a_purge_out_of_its_directories() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let a = machine(&store, &clock, &script, true, None);
    let id = started_on(&a, &clock, &script);
    let local = a.pipeline.job_dir(&id).join("page.bin");
    let subject = a.pipeline.subject_dir("vault-1").join("transcript.txt");
    assert!(local.exists() && subject.exists());
    // Copies no pipeline wrote, under directory names that are not names.
    for dir in ["..", ".", "~"] {
        for top in ["jobs", "subjects"] {
            let key = Key::new(["artifacts", "file", top, dir, "x"]).unwrap();
            store.put(&key, b"{}", Expect::Any).unwrap();
        }
    }
    let report = a.pipeline.purge().unwrap();
    assert_eq!(report.shared_artifacts, 0, "{report:?}");
    assert!(local.exists(), "the job's own file was removed");
    assert!(subject.exists(), "the subject's own file was removed");
}

#[cfg(feature = "postgres")]
#[test]
fn pg_a_job_taken_over_on_another_machine_skips_the_stages_that_finished() {
    let mut schemas = common::pg::Schemas::default();
    takes_over(Arc::new(schemas.store()));
}

/// What [`FaultyStorage::fetch`] hands out.
#[derive(Clone, Copy, Debug)]
enum Fetch {
    /// The copy as stored.
    AsStored,
    /// An error: the storage is unreachable.
    Fails,
    /// The copy with a bit flipped, of the recorded length, as if it were
    /// the recorded one: what the trait allows a storage to do.
    Damaged,
}

/// Copies kept in the store, fetched as `fetch` says, and stored only
/// while `store_fails` is not set (an unreachable storage otherwise).
#[derive(Debug)]
struct FaultyStorage {
    inner: StoreArtifacts<Arc<dyn Store>>,
    fetch: Fetch,
    store_fails: Arc<AtomicBool>,
}

impl FaultyStorage {
    fn new(store: &Arc<dyn Store>, fetch: Fetch) -> Self {
        FaultyStorage {
            inner: StoreArtifacts::new(Arc::clone(store)),
            fetch,
            store_fails: Arc::default(),
        }
    }
}

fn unreachable_storage(step: &'static str) -> Error {
    Error::Database {
        step,
        server: "test".to_owned(),
        transient: true,
        source: "the storage is unreachable".into(),
    }
}

impl ArtifactStorage for FaultyStorage {
    fn store(&self, artifact: &Artifact, bytes: &[u8]) -> jobsafe::Result<()> {
        if self.store_fails.load(Ordering::SeqCst) {
            return Err(unreachable_storage("put"));
        }
        self.inner.store(artifact, bytes)
    }

    fn fetch(&self, artifact: &Artifact) -> jobsafe::Result<Option<Vec<u8>>> {
        match self.fetch {
            Fetch::AsStored => self.inner.fetch(artifact),
            Fetch::Fails => Err(unreachable_storage("get")),
            Fetch::Damaged => Ok(self.inner.fetch(artifact)?.map(|mut bytes| {
                if let Some(byte) = bytes.last_mut() {
                    *byte ^= 1;
                }
                bytes
            })),
        }
    }

    fn remove_dir(&self, dir: &Path) -> jobsafe::Result<usize> {
        self.inner.remove_dir(dir)
    }

    fn dirs(&self, top: &Path) -> jobsafe::Result<Vec<String>> {
        self.inner.dirs(top)
    }
}

#[test]
fn a_copy_that_cannot_be_fetched_makes_the_stage_run_again() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let a = machine(&store, &clock, &script, true, None);
    let failing = FaultyStorage::new(&store, Fetch::Fails);
    let b = machine(&store, &clock, &script, false, Some(failing));
    started_on(&a, &clock, &script);
    // Not stuck on the fetch: the stage runs again, as without a copy.
    let pass = b.pipeline.run_pass().unwrap();
    assert_eq!(pass.runs[0].outcome, RunOutcome::Completed);
    assert_eq!(script.fetches.load(Ordering::SeqCst), 2);
}

#[test]
fn a_damaged_copy_a_storage_hands_out_is_never_used() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let a = machine(&store, &clock, &script, true, None);
    let damaging = FaultyStorage::new(&store, Fetch::Damaged);
    let b = machine(&store, &clock, &script, false, Some(damaging));
    let id = started_on(&a, &clock, &script);
    let local = b.pipeline.job_dir(&id).join("page.bin");
    // The pipeline checks what the storage hands it before it writes it
    // into the job's directory: the stage runs again, and when that run
    // fails before it writes, the damaged bytes are nowhere.
    script.fail_fetch.store(true, Ordering::SeqCst);
    let pass = b.pipeline.run_pass().unwrap();
    let RunOutcome::RetryScheduled { retry_at_ms, .. } = pass.runs[0].outcome else {
        panic!("{:?}", pass.runs[0].outcome);
    };
    assert_eq!(script.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(read(&local), None, "damaged bytes were written");
    clock.set(retry_at_ms);
    let pass = b.pipeline.run_pass().unwrap();
    assert_eq!(pass.runs[0].outcome, RunOutcome::Completed);
    assert_eq!(pass.runs[0].skipped(), Vec::<String>::new());
    assert_eq!(script.fetches.load(Ordering::SeqCst), 3);
    assert_eq!(read(&local), Some(page()));
}

/// A write whose copy to the shared storage fails leaves the local file as
/// it was: in a subject's directory, another job's verified artifact.
#[test]
fn a_write_whose_copy_fails_leaves_the_local_file_as_it_was() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let clock = ManualClock::new(START_MS);
    let storage = FaultyStorage::new(&store, Fetch::AsStored);
    let failing = Arc::clone(&storage.store_fails);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(Arc::clone(&store), Arc::new(clock), dir.path())
        .shared_artifacts(storage)
        .stage("transcribe", |ctx| {
            let text = ctx.job().kind.clone();
            ctx.write_shared("transcript.txt", text.as_bytes())?;
            Ok(())
        })
        .build()
        .unwrap();
    let first = pipeline.enqueue("vault-1", NewJob::new("first")).unwrap();
    let report = pipeline.run_job(&first.id).unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    let transcript = pipeline.subject_dir("vault-1").join("transcript.txt");
    assert_eq!(read(&transcript), Some(b"first".to_vec()));

    failing.store(true, Ordering::SeqCst);
    let second = pipeline.enqueue("vault-1", NewJob::new("second")).unwrap();
    let report = pipeline.run_job(&second.id).unwrap();
    assert!(
        matches!(report.outcome, RunOutcome::RetryScheduled { .. }),
        "{:?}",
        report.outcome
    );
    assert_eq!(read(&transcript), Some(b"first".to_vec()));
}
