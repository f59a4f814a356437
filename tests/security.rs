//! Security properties of the stores, the atomic writer and the job records: the
//! modes of everything they create, keys that cannot name a path outside the
//! store, symlinks planted inside a store that neither reads nor writes follow,
//! a store's directory given as a symlink, and internal error messages that
//! never reach a client.
//!
//! The symlink tests matter most when run as root, where permission checks do not
//! stop a write through a planted link: they check where bytes landed, not whether
//! a write was refused by the operating system.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobsafe::testing::{Faulty, OpKind};
use jobsafe::vfs::{DIR_MODE, StdVfs};
use jobsafe::{
    AtomicWriter, Batch, DirStore, Expect, Key, LogStore, MemStore, Store, write_atomic,
};
use tempfile::tempdir;

use common::hostile::{self, LINKS};
use common::{TestResult, mode_of};

// ---------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------

/// Every file and directory under `root` (not `root` itself), symlinks not followed.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}

/// What the child does under the permissive umask: everything that creates files
/// or directories in each store and the writer.
fn create_everything(dir: &Path) -> TestResult {
    let long = "L".repeat(400); // encodes to a hashed directory with a `.segment` file
    let keys = [
        Key::new(["jobs", "lic:abc123", "1"])?,
        Key::new(["jobs", long.as_str(), "2"])?,
        Key::new(["deep", "a", "b", "c", "d"])?,
    ];

    let dir_store = DirStore::open(dir.join("dirstore"))?;
    let log_store = LogStore::open(dir.join("logstore"))?;
    let stores: [&dyn Store; 2] = [&dir_store, &log_store];
    for store in stores {
        for key in &keys {
            store.put(key, b"{}", Expect::Absent)?;
        }
        let batch = Batch::new()
            .put(&Key::new(["batch", "x"])?, b"1", Expect::Absent)
            .delete(&keys[2], Expect::Any);
        store.apply(&batch)?;
        store.quarantine(&keys[0])?;
    }
    log_store.compact()?;

    fs::create_dir(dir.join("writer"))?;
    write_atomic(dir.join("writer").join("file"), b"w")?;
    AtomicWriter::builder()
        .no_clobber(true)
        .build()?
        .write(dir.join("writer").join("new"), b"n")?;
    // A pipeline's artifact directories and files, from a root it creates.
    let pipeline = pipeline_at(&dir.join("artifacts"));
    let job = pipeline.enqueue("session-1", jobsafe::jobs::NewJob::new("k"))?;
    pipeline.run_job(&job.id)?;

    // A plain create under the same umask, to prove the umask was in force.
    fs::write(dir.join("control"), b"c")?;
    Ok(())
}

#[test]
fn everything_the_stores_create_is_owner_only_under_a_permissive_umask() -> TestResult {
    if let Some(dir) = common::umask_child_dir() {
        return create_everything(&dir);
    }
    let dir = tempdir()?;
    common::run_under_umask(
        "000",
        "everything_the_stores_create_is_owner_only_under_a_permissive_umask",
        dir.path(),
    )?;
    assert_eq!(
        mode_of(&dir.path().join("control"))? & 0o077,
        0o066,
        "the child did not run under umask 000"
    );

    let mut checked = 0;
    for root in ["dirstore", "logstore", "writer", "artifacts"] {
        let root = dir.path().join(root);
        let mut paths = walk(&root);
        if root.ends_with("writer") {
            // Created by the test, not by jobsafe: only its files count.
            paths.retain(|p| p.is_file());
        } else {
            paths.push(root.clone());
        }
        let files = paths.iter().filter(|p| p.is_file()).count();
        assert!(files >= 2, "{} holds {files} files", root.display());
        for path in paths {
            let meta = fs::symlink_metadata(&path)?;
            let (kind, want) = if meta.is_dir() {
                ("directory", DIR_MODE)
            } else {
                ("file", AtomicWriter::DEFAULT_MODE)
            };
            assert!(!meta.file_type().is_symlink(), "{}", path.display());
            assert_eq!(
                mode_of(&path)?,
                want,
                "{kind} {} has mode {:o}",
                path.display(),
                mode_of(&path)?
            );
            checked += 1;
        }
    }
    // Stripes alone are 64 locks; the point is that the walk saw the store.
    assert!(checked > 64, "only {checked} paths checked");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Keys cannot name a path outside the store
// ---------------------------------------------------------------------------------

/// Segments that would climb out of a naive store or name an absolute path.
const ESCAPING_SEGMENTS: [&str; 8] = [
    "..",
    "../../outside",
    "/",
    "/etc/passwd",
    "a/../../b",
    "..\\..\\outside",
    "lic:abc123",
    ".",
];

#[test]
fn no_key_names_a_path_outside_a_dirstore() -> TestResult {
    let dir = tempdir()?;
    let root = dir.path().join("store");
    let store = DirStore::open(&root)?;
    for (i, segment) in ESCAPING_SEGMENTS.iter().enumerate() {
        for key in [
            Key::new([*segment])?,
            Key::new([*segment, *segment])?,
            Key::new(["jobs", segment, "x"])?,
        ] {
            let path = store.path_of(&key);
            // Lexically inside, with no component that climbs or restarts.
            assert!(
                path.starts_with(&root),
                "{key:?} maps to {}",
                path.display()
            );
            let below = path.strip_prefix(&root)?;
            assert!(
                below
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "{key:?} maps to {}",
                path.display()
            );
            store.put(&key, format!("{i}").as_bytes(), Expect::Any)?;
            assert_eq!(store.get(&key)?.unwrap().value, format!("{i}").as_bytes());
        }
    }
    // Nothing appeared beside the store.
    let beside: Vec<_> = fs::read_dir(dir.path())?.collect();
    assert_eq!(beside.len(), 1, "{beside:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Symlinks planted inside a store are not followed for writes
// ---------------------------------------------------------------------------------

/// A store directory, and a directory outside it that planted symlinks point to.
struct Planted {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Planted {
    fn new() -> Self {
        let dir = tempdir().unwrap();
        let root = dir.path().join("store");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        Planted {
            _dir: dir,
            root,
            outside,
        }
    }

    /// The names in the outside directory, recursively, with their contents.
    fn outside_contents(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut found: Vec<_> = walk(&self.outside)
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes = fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        found.sort();
        found
    }
}

#[test]
fn a_symlink_planted_at_a_dirstore_subdirectory_is_not_followed_by_a_put() -> TestResult {
    let p = Planted::new();
    let store = DirStore::open(&p.root)?;
    let first = Key::new(["jobs", "a"])?;
    store.put(&first, b"1", Expect::Absent)?;
    let jobs_dir = store.path_of(&first).parent().unwrap().to_path_buf();
    store.delete(&first, Expect::Any)?;
    assert!(!jobs_dir.exists(), "an emptied directory is pruned");
    symlink(&p.outside, &jobs_dir)?;

    let err = store
        .put(&Key::new(["jobs", "b"])?, b"2", Expect::Absent)
        .unwrap_err();

    assert!(err.is_corrupt(), "{err}");
    assert!(
        err.to_string().contains(&*jobs_dir.to_string_lossy()),
        "{err}"
    );
    assert_eq!(p.outside_contents(), vec![]);
    // The symlink itself is left for an operator to look at.
    assert!(fs::symlink_metadata(&jobs_dir)?.file_type().is_symlink());
    Ok(())
}

#[test]
fn a_symlink_planted_at_an_outer_dirstore_subdirectory_is_not_followed_into_a_real_one()
-> TestResult {
    let p = Planted::new();
    let store = DirStore::open(&p.root)?;
    let deep = Key::new(["jobs", "lic:abc", "1"])?;
    store.put(&deep, b"1", Expect::Absent)?;
    let inner_dir = store.path_of(&deep).parent().unwrap().to_path_buf();
    let outer_dir = inner_dir.parent().unwrap().to_path_buf();
    // Outside holds a directory of the same name as the store's inner one, so
    // that a check of the record's own directory alone would pass.
    let moved = p.outside.join(inner_dir.file_name().unwrap());
    fs::rename(&inner_dir, &moved)?;
    fs::remove_dir(&outer_dir)?;
    symlink(&p.outside, &outer_dir)?;
    let before = p.outside_contents();

    let put = store.put(&Key::new(["jobs", "lic:abc", "2"])?, b"2", Expect::Any);
    let delete = store.delete(&deep, Expect::Any);
    let quarantine = store.quarantine(&deep);

    for (what, failed) in [
        ("put", put.err()),
        ("delete", delete.err()),
        ("quarantine", quarantine.err()),
    ] {
        let err = failed.unwrap_or_else(|| panic!("{what} went through the symlink"));
        assert!(err.is_corrupt(), "{what}: {err}");
    }
    assert_eq!(p.outside_contents(), before, "files outside changed");
    Ok(())
}

#[test]
fn a_symlink_planted_at_a_record_path_is_moved_aside_never_written_through() -> TestResult {
    let p = Planted::new();
    let store = DirStore::open(&p.root)?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    let record = store.path_of(&key);

    // Pointing at a file outside: the record reads as corrupt and nothing is written.
    let victim = p.outside.join("victim");
    fs::write(&victim, b"precious")?;
    fs::remove_file(&record)?;
    symlink(&victim, &record)?;
    let err = store.put(&key, b"2", Expect::Any).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert_eq!(fs::read(&victim)?, b"precious");

    // Dangling: a link all the same, and as corrupt; quarantine moves the link
    // itself aside, and a put then writes a regular file and creates nothing
    // where it pointed.
    let nowhere = p.outside.join("nowhere");
    fs::remove_file(&record)?;
    symlink(&nowhere, &record)?;
    assert!(store.get(&key).unwrap_err().is_corrupt());
    assert!(store.put(&key, b"3", Expect::Any).unwrap_err().is_corrupt());
    let moved = store.quarantine(&key)?.unwrap();
    assert_eq!(fs::read_link(&moved.location)?, nowhere);
    assert_eq!(store.get(&key)?, None);
    store.put(&key, b"3", Expect::Absent)?;
    assert!(fs::symlink_metadata(&record)?.file_type().is_file());
    assert!(!nowhere.exists());
    assert_eq!(store.get(&key)?.unwrap().value, b"3");
    assert_eq!(fs::read(&victim)?, b"precious");
    Ok(())
}

#[test]
fn a_record_path_replaced_by_a_directory_is_an_error_naming_it() -> TestResult {
    let p = Planted::new();
    let store = DirStore::open(&p.root)?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    let record = store.path_of(&key);
    fs::remove_file(&record)?;
    fs::create_dir(&record)?;
    fs::write(record.join("inside"), b"x")?;

    for err in [
        store.get(&key).unwrap_err(),
        store.put(&key, b"2", Expect::Any).unwrap_err(),
        store.delete(&key, Expect::Any).unwrap_err(),
    ] {
        assert!(
            err.to_string().contains(&*record.to_string_lossy()),
            "{err}"
        );
    }
    assert_eq!(fs::read(record.join("inside"))?, b"x");
    Ok(())
}

#[test]
fn sweeping_a_dirstore_does_not_follow_a_planted_directory_symlink() -> TestResult {
    let p = Planted::new();
    let store = DirStore::open(&p.root)?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    // A name the sweep would take for an old temp file, in the outside directory.
    let bait = p.outside.join(format!(
        ".x.0000000000000000{}",
        jobsafe::AtomicWriter::TEMP_SUFFIX
    ));
    fs::write(&bait, b"not yours")?;
    let data = store
        .path_of(&key)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    symlink(&p.outside, data.join("planted.d"))?;

    let far_future = jobsafe::ManualClock::new(u64::MAX / 4);
    store.sweep_temp_files(std::time::Duration::ZERO, &far_future)?;

    assert_eq!(fs::read(&bait)?, b"not yours");
    Ok(())
}

/// A LogStore at `root` with one record, closed again.
fn log_store_with_a_record(root: &Path) -> TestResult {
    let store = LogStore::open(root)?;
    store.put(&Key::new(["jobs", "a"])?, b"1", Expect::Absent)?;
    Ok(())
}

#[test]
fn a_symlink_planted_at_the_logstore_journal_is_not_written_through() -> TestResult {
    let p = Planted::new();
    log_store_with_a_record(&p.root)?;
    // A valid journal outside (a copy of the store's own), the journal a symlink to it.
    let journal = p.root.join("journal");
    let outside_journal = p.outside.join("journal");
    fs::copy(&journal, &outside_journal)?;
    fs::remove_file(&journal)?;
    symlink(&outside_journal, &journal)?;
    let before = p.outside_contents();

    let err = LogStore::open(&p.root).unwrap_err();

    assert!(err.is_corrupt(), "{err}");
    assert!(
        err.to_string().contains(&*journal.to_string_lossy()),
        "{err}"
    );
    assert_eq!(p.outside_contents(), before);
    Ok(())
}

#[test]
fn dangling_symlinks_planted_at_logstore_lock_files_create_nothing_outside() -> TestResult {
    for name in ["lock", "compact.lock"] {
        let p = Planted::new();
        log_store_with_a_record(&p.root)?;
        let lock = p.root.join(name);
        fs::remove_file(&lock)?;
        let target = p.outside.join("created-through-the-link");
        symlink(&target, &lock)?;

        let err = LogStore::open(&p.root).unwrap_err();

        assert!(err.is_corrupt(), "{name}: {err}");
        assert!(!target.exists(), "{name}: a file was created outside");
    }
    Ok(())
}

#[test]
fn a_symlink_planted_at_the_logstore_quarantine_directory_is_not_followed() -> TestResult {
    let p = Planted::new();
    let store = LogStore::open(&p.root)?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    symlink(&p.outside, p.root.join("quarantine"))?;

    let err = store.quarantine(&key).unwrap_err();
    assert!(err.is_corrupt(), "{err}");

    assert_eq!(p.outside_contents(), vec![]);
    assert_eq!(store.get(&key)?.unwrap().value, b"1", "the record stays");
    Ok(())
}

#[test]
fn a_symlink_planted_at_a_dirstore_stripe_lock_creates_nothing_outside() -> TestResult {
    let p = Planted::new();
    drop(DirStore::open(&p.root)?);
    let lock = p.root.join("stripes").join("00.lock");
    fs::remove_file(&lock)?;
    let target = p.outside.join("created-through-the-link");
    symlink(&target, &lock)?;

    let err = DirStore::open(&p.root).unwrap_err();

    assert!(err.is_corrupt(), "{err}");
    assert!(!target.exists());
    Ok(())
}

/// A [`Faulty`] layer on the real filesystem that, the first time it is asked to create a
/// temp file, plants a symlink to `victim` at exactly that path first: the
/// attacker who guessed the random name. Returns where it planted.
fn planting(victim: PathBuf) -> (Faulty, Arc<Mutex<Vec<PathBuf>>>) {
    let vfs = Faulty::new(StdVfs);
    let planted = Arc::new(Mutex::new(Vec::new()));
    vfs.on_op({
        let planted = planted.clone();
        move |op| {
            let is_temp = op
                .path
                .to_string_lossy()
                .ends_with(AtomicWriter::TEMP_SUFFIX);
            let mut planted = planted.lock().unwrap();
            if op.kind == OpKind::Create && is_temp && planted.is_empty() {
                symlink(&victim, op.path).unwrap();
                planted.push(op.path.to_path_buf());
            }
            None
        }
    });
    (vfs, planted)
}

#[test]
fn a_symlink_planted_at_a_temp_file_path_is_never_written_through() -> TestResult {
    let p = Planted::new();
    let victim = p.outside.join("victim");
    fs::write(&victim, b"precious")?;
    let victim_mode = mode_of(&victim)?;
    fs::create_dir(&p.root)?;

    // The writer alone, and a DirStore writing its records through it.
    let (vfs, planted) = planting(victim.clone());
    let target = p.root.join("file");
    AtomicWriter::with_vfs(vfs).write(&target, b"new")?;
    assert_eq!(fs::read(&target)?, b"new");
    assert_eq!(planted.lock().unwrap().len(), 1, "no temp file was created");

    let (vfs, planted) = planting(victim.clone());
    let store = DirStore::builder(p.root.join("dirstore")).vfs(vfs).open()?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"record", Expect::Absent)?;
    assert_eq!(store.get(&key)?.unwrap().value, b"record");
    assert_eq!(planted.lock().unwrap().len(), 1, "no temp file was created");

    // O_EXCL refused the planted names; the writer took fresh ones.
    assert_eq!(fs::read(&victim)?, b"precious");
    assert_eq!(
        mode_of(&victim)?,
        victim_mode,
        "the writer's fchmod reached it"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Internal error messages never reach a client
// ---------------------------------------------------------------------------------

/// Text every internal failure below carries, and that no client may see.
const SECRET: &str = "/srv/secret/asr-3.internal";

/// Everything a client of job `id` can be shown: its client view and its events
/// (what an SSE stream replays), as JSON.
fn client_facing<S: Store>(jobs: &jobsafe::JobState<S>, id: &str) -> String {
    let view = jobs.client_view(id).unwrap().unwrap();
    let events = jobs.events_since(id, 0).unwrap().events;
    format!(
        "{}\n{}",
        serde_json::to_string(&view).unwrap(),
        serde_json::to_string(&events).unwrap()
    )
}

#[test]
fn internal_failures_of_pipeline_stages_never_reach_the_client_face() -> TestResult {
    let dir = tempdir()?;
    let clock = Arc::new(jobsafe::ManualClock::new(1_700_000_000_000));
    let pipeline = jobsafe::Pipeline::builder(MemStore::new(), clock, dir.path())
        .stage("work", |ctx| {
            let mode = ctx.job().metadata["mode"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match mode.as_str() {
                // `?` on an I/O error whose text names a path.
                "io" => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{SECRET}: permission denied"),
                ))?,
                // The same, transient: the job is requeued with a retry time.
                "io-transient" => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{SECRET}: timed out"),
                ))?,
                // `?` on a jobsafe error naming the job's own directory.
                "crate" => {
                    ctx.read("never-written.txt")?;
                }
                // A bug.
                "panic" => panic!("index out of bounds in {SECRET}"),
                other => panic!("unknown mode {other}"),
            }
            Ok(())
        })
        .build()?;

    for mode in ["io", "io-transient", "crate", "panic"] {
        let job = pipeline.enqueue("s", jobsafe::jobs::NewJob::new("k").meta("mode", mode))?;
        let report = pipeline.run_job(&job.id)?;
        let error = match &report.outcome {
            jobsafe::pipeline::RunOutcome::Failed { error, .. }
            | jobsafe::pipeline::RunOutcome::RetryScheduled { error, .. } => error.clone(),
            other => panic!("{mode}: {other:?}"),
        };
        // The operator's face has the details (so the check below means something)...
        let internal = error.internal_message().to_owned();
        let detail = if mode == "crate" {
            dir.path().to_string_lossy().into_owned()
        } else {
            SECRET.to_owned()
        };
        assert!(internal.contains(&detail), "{mode}: {internal}");
        // ...the client's face has none of them.
        assert_eq!(
            error.client_message(),
            jobsafe::jobs::JobError::DEFAULT_CLIENT_MESSAGE,
            "{mode}"
        );
        let shown = client_facing(pipeline.jobs(), &job.id);
        assert!(
            shown.contains(jobsafe::jobs::JobError::DEFAULT_CLIENT_MESSAGE),
            "{mode}: {shown}"
        );
        for hidden in [
            SECRET,
            &*dir.path().to_string_lossy(),
            "permission",
            "panicked",
        ] {
            assert!(
                !shown.contains(hidden),
                "{mode}: {hidden:?} shown in {shown}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_worker_lost_by_recovery_shows_clients_no_internal_detail() -> TestResult {
    let clock = Arc::new(jobsafe::ManualClock::new(1_700_000_000_000));
    let jobs = jobsafe::JobState::new(MemStore::new(), clock.clone());
    let job = jobs.create(jobsafe::jobs::NewJob::new("k"))?;
    let worker = jobs.start(&job.id, None)?;
    jobs.progress(&worker, "step 1")?;
    clock.advance(Duration::from_secs(3600));

    jobs.recover(Duration::from_secs(60), jobsafe::jobs::RecoveryAction::Fail)?;

    let record = jobs.get(&job.id)?.unwrap();
    assert_eq!(record.status, jobsafe::jobs::JobStatus::Failed);
    let internal = record.error.unwrap().internal_message().to_owned();
    let shown = client_facing(&jobs, &job.id);
    assert!(!shown.contains(&internal), "{internal:?} shown in {shown}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Symlinks planted in a pipeline's artifact directories
// ---------------------------------------------------------------------------------

type Pipe = jobsafe::Pipeline<MemStore>;

/// A one-stage pipeline writing `out.txt` into the job's directory and
/// `shared.txt` into the subject's, with artifacts under `root`.
fn pipeline_at(root: &Path) -> Pipe {
    let clock = Arc::new(jobsafe::ManualClock::new(1_700_000_000_000));
    jobsafe::Pipeline::builder(MemStore::new(), clock, root)
        .stage("work", |ctx| {
            ctx.write("out.txt", b"artifact")?;
            ctx.write_shared("shared.txt", b"shared")?;
            Ok(())
        })
        .build()
        .unwrap()
}

/// The run did not complete: it failed the job, or returned an error naming
/// `link` or the directory it is in.
fn assert_refused_naming(ran: jobsafe::Result<jobsafe::pipeline::RunReport>, link: &Path) {
    match ran {
        Ok(report) => assert!(
            !matches!(report.outcome, jobsafe::pipeline::RunOutcome::Completed),
            "{:?}",
            report.outcome
        ),
        Err(e) => {
            assert!(e.is_corrupt(), "{e}");
            // The link itself, or the `jobs/` directory it is in.
            let named = link
                .ancestors()
                .take(2)
                .any(|dir| e.to_string().contains(&*dir.to_string_lossy()));
            assert!(named, "{e}");
        }
    }
}

#[test]
fn a_symlink_planted_at_a_job_directory_is_never_written_through() -> TestResult {
    let p = Planted::new();
    let pipeline = pipeline_at(&p.root);
    let job = pipeline.enqueue("s", jobsafe::jobs::NewJob::new("k"))?;
    fs::create_dir_all(pipeline.job_dir(&job.id).parent().unwrap())?;
    symlink(&p.outside, pipeline.job_dir(&job.id))?;

    let ran = pipeline.run_job(&job.id);

    assert_refused_naming(ran, &pipeline.job_dir(&job.id));
    assert_eq!(p.outside_contents(), vec![]);
    Ok(())
}

/// A link in a job directory's place fails the job's attempts like a stage's
/// transient error, so that the retry policy ends the job: it used to stay
/// running, started again by every pass, with no failure counted.
#[test]
fn a_symlink_planted_at_a_job_directory_fails_the_job_in_the_end() -> TestResult {
    let p = Planted::new();
    let clock = Arc::new(jobsafe::ManualClock::new(1_700_000_000_000));
    let pipeline = jobsafe::Pipeline::builder(MemStore::new(), clock.clone(), &p.root)
        .stage("work", |ctx| {
            ctx.write("out.txt", b"artifact")?;
            Ok(())
        })
        .build()?;
    let job = pipeline.enqueue("s", jobsafe::jobs::NewJob::new("k"))?;
    let job_dir = pipeline.job_dir(&job.id);
    fs::create_dir_all(job_dir.parent().unwrap())?;
    symlink(&p.outside, &job_dir)?;

    let mut passes = 0;
    let record = loop {
        passes += 1;
        pipeline.run_pass()?;
        let record = pipeline.jobs().get(&job.id)?.unwrap();
        if record.status.is_finished() || passes == 50 {
            break record;
        }
        // Past any backoff.
        clock.advance(Duration::from_secs(24 * 3600));
    };
    assert_eq!(
        record.status,
        jobsafe::jobs::JobStatus::Failed,
        "after {passes} passes"
    );
    let internal = record.error.unwrap().internal_message().to_owned();
    assert!(internal.contains(&*job_dir.to_string_lossy()), "{internal}");
    assert_eq!(p.outside_contents(), vec![]);
    Ok(())
}

#[test]
fn a_symlink_planted_above_a_job_directory_is_never_written_through() -> TestResult {
    let p = Planted::new();
    let pipeline = pipeline_at(&p.root);
    let job = pipeline.enqueue("s", jobsafe::jobs::NewJob::new("k"))?;
    let job_dir = pipeline.job_dir(&job.id);
    // `jobs/` is a symlink to a directory that has one of the job's name.
    fs::create_dir(&p.root)?;
    symlink(&p.outside, job_dir.parent().unwrap())?;
    fs::create_dir(p.outside.join(job_dir.file_name().unwrap()))?;

    let ran = pipeline.run_job(&job.id);

    assert_refused_naming(ran, &pipeline.job_dir(&job.id));
    assert_eq!(p.outside_contents(), vec![]);
    Ok(())
}

#[test]
fn deleting_a_job_whose_directory_is_a_planted_symlink_removes_nothing_outside() -> TestResult {
    let p = Planted::new();
    let pipeline = pipeline_at(&p.root);
    let job = pipeline.enqueue("s", jobsafe::jobs::NewJob::new("k"))?;
    pipeline.run_job(&job.id)?;
    let job_dir = pipeline.job_dir(&job.id);
    // Files outside, under the names the job wrote, and a symlink to them.
    fs::write(p.outside.join("out.txt"), b"precious")?;
    fs::write(p.outside.join("other"), b"precious")?;
    fs::remove_file(job_dir.join("out.txt"))?;
    fs::remove_dir(&job_dir)?;
    symlink(&p.outside, &job_dir)?;
    let before = p.outside_contents();

    let deleted = pipeline.delete(&job.id);

    assert_eq!(p.outside_contents(), before);
    // The job is gone, its directory entry with it (the link, not what it named),
    // or the deletion was refused with an error naming the link.
    match deleted {
        Ok(deletion) => {
            assert_eq!(deletion, jobsafe::pipeline::Deletion::Removed);
            assert!(fs::symlink_metadata(&job_dir).is_err());
        }
        Err(e) => assert!(e.to_string().contains(&*job_dir.to_string_lossy()), "{e}"),
    }
    Ok(())
}

#[test]
fn symlinks_planted_at_a_dirstores_own_directories_are_refused_at_open() -> TestResult {
    for name in ["data", "stripes", "journal", "quarantine"] {
        let p = Planted::new();
        drop(DirStore::open(&p.root)?);
        let planted = p.root.join(name);
        fs::rename(&planted, p.outside.join(name))?;
        symlink(p.outside.join(name), &planted)?;
        let before = p.outside_contents();

        let err = DirStore::open(&p.root).unwrap_err();

        assert!(
            err.to_string().contains(&*planted.to_string_lossy()),
            "{name}: {err}"
        );
        assert_eq!(p.outside_contents(), before, "{name}");
    }
    Ok(())
}

#[test]
fn a_symlink_planted_in_a_dirstore_is_reported_by_list_never_walked() -> TestResult {
    let p = Planted::new();
    let store = DirStore::open(&p.root)?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"1", Expect::Absent)?;
    let jobs_dir = store.path_of(&key).parent().unwrap().to_path_buf();
    symlink(&jobs_dir, jobs_dir.join("loop.d"))?;

    // A loop, which a walk that followed it would take for keys ever deeper.
    for prefix in [
        jobsafe::Prefix::all(),
        jobsafe::Prefix::new(["jobs", "loop"])?,
    ] {
        let err = store.list_all(&prefix).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("loop.d"), "{err}");
    }
    let swept = store.sweep_temp_files(Duration::ZERO, &jobsafe::ManualClock::new(0));
    assert!(swept.is_ok(), "{swept:?}");
    Ok(())
}

#[test]
fn a_directory_swapped_for_a_symlink_during_a_scan_is_reported_never_walked() -> TestResult {
    let p = Planted::new();
    let store = DirStore::open(&p.root)?;
    let (first, later) = (Key::new(["a", "1"])?, Key::new(["b", "1"])?);
    store.put(&first, b"1", Expect::Absent)?;
    store.put(&later, b"1", Expect::Absent)?;
    // Outside: a directory that decodes as keys of the store.
    fs::write(p.outside.join("stolen.r"), b"not the store's")?;
    let mut scan = store.scan(&jobsafe::Prefix::all(), 1);
    assert_eq!(scan.next().transpose()?, Some(vec![first]));

    // `data/` was read with `b.d` a directory; it is a symlink when the scan
    // goes in.
    let b_dir = store.path_of(&later).parent().unwrap().to_path_buf();
    fs::remove_file(store.path_of(&later))?;
    fs::remove_dir(&b_dir)?;
    symlink(&p.outside, &b_dir)?;

    let err = scan.next().unwrap().unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains(&*b_dir.to_string_lossy()), "{err}");
    assert!(scan.next().is_none());
    Ok(())
}

#[test]
fn symlinks_planted_at_a_dirstores_own_directories_while_it_is_open_are_not_followed() -> TestResult
{
    // Each directory, and the operation that writes into it.
    type Write = fn(&DirStore, &Key) -> jobsafe::Result<()>;
    let cases: [(&str, Write); 4] = [
        ("data", |s, k| s.put(k, b"2", Expect::Any).map(|_| ())),
        ("quarantine", |s, k| s.quarantine(k).map(|_| ())),
        ("journal", |s, k| {
            s.apply(&Batch::new().put(k, b"2", Expect::Any)).map(|_| ())
        }),
        ("stripes", |s, k| s.delete(k, Expect::Any).map(|_| ())),
    ];
    for (name, write) in cases {
        let p = Planted::new();
        let store = DirStore::open(&p.root)?;
        let key = Key::new(["jobs", "a"])?;
        store.put(&key, b"1", Expect::Absent)?;
        let planted = p.root.join(name);
        // The stripe locks must stay reachable for the operation to get as far
        // as its write: the outside copy keeps them.
        fs::rename(&planted, p.outside.join(name))?;
        symlink(p.outside.join(name), &planted)?;
        let before = p.outside_contents();

        let err = write(&store, &key).unwrap_err();

        assert!(err.is_corrupt(), "{name}: {err}");
        assert!(
            err.to_string().contains(&*planted.to_string_lossy()),
            "{name}: {err}"
        );
        assert_eq!(p.outside_contents(), before, "{name}");
        if name == "data" {
            // Reads do not follow it either.
            let err = store.get(&key).unwrap_err();
            assert!(
                err.to_string().contains(&*planted.to_string_lossy()),
                "{err}"
            );
        } else {
            assert_eq!(store.get(&key)?.unwrap().value, b"1", "{name}");
        }
    }
    Ok(())
}

#[test]
fn no_job_id_or_subject_names_a_path_outside_the_artifact_root() -> TestResult {
    let p = Planted::new();
    let pipeline = pipeline_at(&p.root);
    for (i, hostile) in ESCAPING_SEGMENTS.iter().enumerate() {
        let id = format!("{hostile}{i}");
        let job = pipeline.enqueue(hostile, jobsafe::jobs::NewJob::new("k").id(id.as_str()))?;
        assert_eq!(job.id, id);
        let report = pipeline.run_job(&job.id)?;
        assert!(
            matches!(report.outcome, jobsafe::pipeline::RunOutcome::Completed),
            "{hostile:?}: {:?}",
            report.outcome
        );
        for dir in [pipeline.job_dir(&job.id), pipeline.subject_dir(hostile)] {
            let below = dir.strip_prefix(&p.root)?;
            assert!(
                below
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "{hostile:?} maps to {}",
                dir.display()
            );
            assert!(dir.is_dir(), "{}", dir.display());
        }
    }
    // Everything written is below the root: nothing beside it, nothing outside.
    assert_eq!(p.outside_contents(), vec![]);
    let beside: Vec<_> = fs::read_dir(p.root.parent().unwrap())?
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside.len(), 2, "{beside:?}");
    Ok(())
}

/// What each read of a stage returned: the bytes, or whether the error was
/// [`jobsafe::Error::is_corrupt`] and its text.
type Reads = Arc<Mutex<Vec<(&'static str, Result<Vec<u8>, (bool, String)>)>>>;

#[test]
fn a_link_or_fifo_planted_where_no_stage_wrote_is_never_read_through() -> TestResult {
    let p = Planted::new();
    fs::write(p.outside.join("secret"), b"outside secret")?;
    let reads: Reads = Arc::default();
    let clock = Arc::new(jobsafe::ManualClock::new(1_700_000_000_000));
    let pipeline = jobsafe::Pipeline::builder(MemStore::new(), clock, &p.root)
        .stage("work", {
            let reads = Arc::clone(&reads);
            move |ctx| {
                let names = ["link", "fifo", "absent"];
                for (name, shared) in names.iter().flat_map(|n| [(*n, false), (*n, true)]) {
                    let read = if shared {
                        ctx.read_shared(name)
                    } else {
                        ctx.read(name)
                    };
                    let read = read.map_err(|e| (e.is_corrupt(), e.to_string()));
                    reads.lock().unwrap().push((name, read));
                }
                ctx.write("out.txt", b"done")?;
                Ok(())
            }
        })
        .build()?;
    let job = pipeline.enqueue("s", jobsafe::jobs::NewJob::new("k"))?;
    for dir in [pipeline.job_dir(&job.id), pipeline.subject_dir("s")] {
        fs::create_dir_all(&dir)?;
        symlink(p.outside.join("secret"), dir.join("link"))?;
        common::make_fifo(&dir.join("fifo"))?;
    }
    let before = p.outside_contents();

    let run = pipeline.clone();
    let id = job.id.clone();
    let report = common::unblocked("a run reading a FIFO", move || run.run_job(&id))?;

    assert!(
        matches!(report.outcome, jobsafe::pipeline::RunOutcome::Completed),
        "{:?}",
        report.outcome
    );
    let reads = reads.lock().unwrap();
    assert_eq!(reads.len(), 6);
    for (name, read) in reads.iter() {
        match (*name, read) {
            ("link" | "fifo", Err((true, text))) => {
                assert!(
                    text.contains(name) && text.contains("not followed"),
                    "{text}"
                );
            }
            ("absent", Err((false, text))) => assert!(text.contains("absent"), "{text}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(p.outside_contents(), before);
    Ok(())
}

// ---------------------------------------------------------------------------------
// A store's directory given as a symlink
// ---------------------------------------------------------------------------------

/// A `DirStore` or a `LogStore` opened at `path`, and the directory it works in.
fn open_store(backend: &str, path: &Path) -> jobsafe::Result<(Box<dyn Store>, PathBuf)> {
    Ok(match backend {
        "dir" => {
            let store = DirStore::open(path)?;
            let root = store.root().to_path_buf();
            (Box::new(store), root)
        }
        _ => {
            let store = LogStore::open(path)?;
            let root = store.root().to_path_buf();
            (Box::new(store), root)
        }
    })
}

#[test]
fn a_store_directory_given_as_a_symlink_is_resolved_once_at_open() -> TestResult {
    for backend in ["dir", "log"] {
        let p = Planted::new();
        let real = p.root.with_file_name("real");
        fs::create_dir(&real)?;
        symlink(&real, &p.root)?;
        let key = Key::new(["jobs", "a"])?;

        let (store, root) = open_store(backend, &p.root)?;
        assert_eq!(root, real.canonicalize()?, "{backend}");
        store.put(&key, b"1", Expect::Absent)?;
        // Pointed elsewhere while the store is open: the store stays where it
        // was opened, and nothing reaches the link's new target.
        fs::remove_file(&p.root)?;
        symlink(&p.outside, &p.root)?;
        store.put(&key, b"2", Expect::Any)?;
        assert_eq!(store.get(&key)?.unwrap().value, b"2", "{backend}");
        assert_eq!(fs::read_dir(&p.outside)?.count(), 0, "{backend}");
        drop(store);

        // Through the link again, once it names the store again.
        fs::remove_file(&p.root)?;
        symlink(&real, &p.root)?;
        let (store, _) = open_store(backend, &p.root)?;
        assert_eq!(store.get(&key)?.unwrap().value, b"2", "{backend}");
        // Only the root may be a link: below it nothing is followed.
        let below = if backend == "dir" {
            "data"
        } else {
            "quarantine"
        };
        if backend == "dir" {
            fs::rename(real.join(below), p.outside.join(below))?;
        }
        symlink(p.outside.join(below), real.join(below))?;
        let err = match backend {
            "dir" => store.put(&key, b"3", Expect::Any).unwrap_err(),
            _ => store.quarantine(&key).unwrap_err(),
        };
        assert!(err.is_corrupt(), "{backend}: {err}");
        assert!(err.to_string().contains(below), "{backend}: {err}");
    }
    Ok(())
}

#[test]
fn a_store_directory_given_as_a_dangling_symlink_or_a_link_to_a_file_is_refused_saying_so()
-> TestResult {
    for backend in ["dir", "log"] {
        let p = Planted::new();
        let nowhere = p.outside.join("nowhere");
        symlink(&nowhere, &p.root)?;

        let err = open_store(backend, &p.root).err().unwrap();

        assert!(
            matches!(&err, jobsafe::Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound),
            "{backend}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("symlink") && text.contains("does not exist"),
            "{text}"
        );
        assert!(text.contains(&*p.root.to_string_lossy()), "{text}");
        assert!(!nowhere.exists(), "{backend}: created through the link");

        let file = p.outside.join("file");
        fs::write(&file, b"not a store")?;
        fs::remove_file(&p.root)?;
        symlink(&file, &p.root)?;

        let err = open_store(backend, &p.root).err().unwrap();

        assert!(
            matches!(&err, jobsafe::Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::NotADirectory),
            "{backend}: {err:?}"
        );
        let text = common::error_chain(&err);
        assert!(
            text.contains("neither a directory nor a symlink to one"),
            "{text}"
        );
        assert!(text.contains(&*p.root.to_string_lossy()), "{text}");
        assert_eq!(fs::read(&file)?, b"not a store");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Symlinks planted where a store reads its own files
// ---------------------------------------------------------------------------------

#[test]
fn a_symlink_planted_at_a_dirstore_record_is_never_read_and_is_quarantined() {
    for kind in LINKS {
        hostile::dir_store_record(kind);
    }
}

#[test]
fn a_symlink_planted_in_a_dirstore_listing_is_never_read() {
    for kind in LINKS {
        hostile::dir_store_listing(kind);
    }
}

#[test]
fn a_symlink_planted_as_a_dirstore_batch_journal_is_never_replayed() {
    for kind in LINKS {
        hostile::dir_store_journal(kind);
    }
}

#[test]
fn a_symlink_planted_at_a_dirstore_floor_marker_or_lock_is_never_followed() {
    for kind in LINKS {
        hostile::dir_store_small_files(kind);
    }
}

#[test]
fn a_symlink_planted_among_a_logstores_files_is_never_followed() {
    for kind in LINKS {
        hostile::log_store_files(kind);
    }
}

#[test]
fn a_record_reached_through_a_planted_directory_symlink_is_never_read() -> TestResult {
    let p = Planted::new();
    let store = DirStore::open(&p.root)?;
    let key = Key::new(["jobs", "a"])?;
    store.put(&key, b"mine", Expect::Absent)?;
    // The record's directory moved outside, a link in its place: the record
    // there is valid, for this very key.
    let jobs_dir = store.path_of(&key).parent().unwrap().to_path_buf();
    fs::rename(&jobs_dir, p.outside.join("jobs.d"))?;
    symlink(p.outside.join("jobs.d"), &jobs_dir)?;

    let outside_record = p.outside.join("jobs.d").join("a.r");
    let before = fs::read(&outside_record)?;

    for (what, err) in [
        ("get", store.get(&key).err()),
        ("put", store.put(&key, b"new", Expect::Any).err()),
        ("delete", store.delete(&key, Expect::Any).err()),
        ("quarantine", store.quarantine(&key).err()),
    ] {
        let err = err.unwrap_or_else(|| panic!("{what} went through the link"));
        assert!(err.is_corrupt(), "{what}: {err}");
        assert!(
            err.to_string().contains(&*jobs_dir.to_string_lossy()),
            "{what}: {err}"
        );
    }
    assert_eq!(fs::read(&outside_record)?, before);
    Ok(())
}

/// A `DirStore` or a `LogStore` created below a symlinked directory (the
/// user's path, above the root: `/var/run`, say) is created in the directory
/// the link names; only links inside the root are refused.
#[test]
fn stores_are_created_below_a_symlinked_directory() -> TestResult {
    use jobsafe::vfs::Vfs;

    let dir = tempdir()?;
    let real = dir.path().join("real");
    fs::create_dir(&real)?;
    let link = dir.path().join("link");
    symlink(&real, &link)?;

    StdVfs.create_dir_all_durable(&link.join("a/b"))?;
    assert!(real.join("a/b").is_dir());
    let key = Key::new(["jobs", "a"])?;
    let store = DirStore::builder(link.join("dir-store"))
        .create(true)
        .open()?;
    store.put(&key, b"1", Expect::Absent)?;
    let log = LogStore::builder(link.join("log-store"))
        .create(true)
        .open()?;
    log.put(&key, b"1", Expect::Absent)?;
    assert!(real.join("dir-store").is_dir() && real.join("log-store").is_dir());
    // A link to nothing is still no directory.
    let dangling = dir.path().join("dangling");
    symlink(dir.path().join("missing"), &dangling)?;
    let err = StdVfs
        .create_dir_all_durable(&dangling.join("a"))
        .unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    Ok(())
}
