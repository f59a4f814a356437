//! Artifacts in object storage (`ObjectStoreArtifacts`, feature
//! `object-store`): copies round-trip whole and only the recorded one is
//! fetched; a copy longer than a part goes up in parts and a cut-off upload
//! leaves the old copy; a job taken over on another machine skips its
//! finished stage; purge removes copies and orphans; a silent server fails
//! the call within the request timeout.
//!
//! Each test runs on an in-memory store, on a local directory, and on S3
//! when `JOBSAFE_S3_ENDPOINT` names an S3-compatible server (`.ci/run`
//! starts one; `JOBSAFE_REQUIRE_S3=1` makes its absence a failure).
#![cfg(feature = "object-store")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt;
use std::future::Future;
use std::net::TcpListener;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use jobsafe::jobs::NewJob;
use jobsafe::pipeline::{
    Artifact, ArtifactStorage, ObjectStoreArtifacts, PurgePolicy, RunOutcome, StageError,
};
use jobsafe::{Error, ManualClock, MemStore, Pipeline, Store};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RetryConfig,
    UploadPart,
};
use tempfile::TempDir;

const START_MS: u64 = 1_700_000_000_000;
const ENDPOINT_VAR: &str = "JOBSAFE_S3_ENDPOINT";
const REQUIRE_VAR: &str = "JOBSAFE_REQUIRE_S3";
const BUCKET: &str = "jobsafe-tests";

/// A bucket to test on: the store the library is given, and a second client
/// of the same bucket for what a test does behind its back (on S3 another
/// client, so that no connection is shared between runtimes).
struct Bucket {
    name: &'static str,
    store: Arc<dyn ObjectStore>,
    raw: Arc<dyn ObjectStore>,
    /// A prefix of this test's own, in a bucket that tests share.
    prefix: String,
    /// The S3 server's URL, if this is S3.
    endpoint: Option<String>,
    _dir: Option<TempDir>,
}

impl Bucket {
    /// The multipart uploads begun under the test's prefix and neither
    /// completed nor aborted, on S3; `None` elsewhere.
    fn pending_uploads(&self) -> Option<usize> {
        let endpoint = self.endpoint.as_ref()?;
        let url = format!(
            "{}/{BUCKET}?uploads&prefix={}/",
            endpoint.trim_end_matches('/'),
            self.prefix
        );
        let listing = ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        Some(listing.matches("<UploadId>").count())
    }

    fn artifacts(&self) -> ObjectStoreArtifacts {
        ObjectStoreArtifacts::new(Arc::clone(&self.store))
            .prefix(&self.prefix)
            .unwrap()
    }

    /// The object of an artifact path.
    fn object(&self, path: &str) -> ObjectPath {
        ObjectPath::parse(format!("{}/{path}", self.prefix)).unwrap()
    }

    fn put_raw(&self, path: &str, bytes: Vec<u8>) {
        let (raw, object) = (Arc::clone(&self.raw), self.object(path));
        block(async move { raw.put(&object, bytes.into()).await.unwrap() });
    }

    fn len_raw(&self, path: &str) -> Option<u64> {
        let (raw, object) = (Arc::clone(&self.raw), self.object(path));
        block(async move { raw.head(&object).await.ok().map(|meta| meta.size) })
    }

    /// Every object under the test's prefix.
    fn objects(&self) -> Vec<String> {
        let (raw, prefix) = (
            Arc::clone(&self.raw),
            ObjectPath::from(self.prefix.as_str()),
        );
        block(async move {
            let listed: Vec<_> = raw.list(Some(&prefix)).collect().await;
            listed
                .into_iter()
                .map(|meta| meta.unwrap().location.to_string())
                .collect()
        })
    }
}

/// Runs `work` on the tests' own runtime, as an application's code would:
/// one for the whole run, so that the raw clients' connections outlive no
/// runtime of theirs.
fn block<T>(work: impl Future<Output = T>) -> T {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        })
        .block_on(work)
}

fn s3(endpoint: &str) -> AmazonS3Builder {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_access_key_id("jobsafe")
        .with_secret_access_key("jobsafe")
}

/// The buckets every test runs on.
fn buckets() -> Vec<Bucket> {
    let prefix = || format!("t-{}", uuid::Uuid::new_v4().simple());
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let mut buckets = vec![
        Bucket {
            name: "memory",
            store: Arc::clone(&memory),
            raw: memory,
            prefix: prefix(),
            endpoint: None,
            _dir: None,
        },
        Bucket {
            name: "local",
            store: Arc::clone(&local),
            raw: local,
            prefix: prefix(),
            endpoint: None,
            _dir: Some(dir),
        },
    ];
    match std::env::var(ENDPOINT_VAR) {
        Ok(endpoint) => {
            create_bucket(&endpoint);
            buckets.push(Bucket {
                name: "s3",
                store: Arc::new(s3(&endpoint).build().unwrap()),
                raw: Arc::new(s3(&endpoint).build().unwrap()),
                prefix: prefix(),
                endpoint: Some(endpoint.clone()),
                _dir: None,
            });
        }
        Err(_) if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => panic!(
            "{REQUIRE_VAR}=1 but no S3-compatible server is named: set {ENDPOINT_VAR} \
             to its URL (http://127.0.0.1:PORT), or run `bash .ci/run`, which starts one"
        ),
        Err(_) => {}
    }
    buckets
}

/// Creates the tests' bucket if it is not there (the server accepts
/// unsigned requests, as test servers do).
fn create_bucket(endpoint: &str) {
    match ureq::put(&format!("{}/{BUCKET}", endpoint.trim_end_matches('/'))).send_empty() {
        Ok(_) | Err(ureq::Error::StatusCode(409)) => {}
        Err(e) => panic!("create bucket {BUCKET} at {endpoint}: {e}"),
    }
}

fn bytes_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap() ^ seed)
        .collect()
}

#[test]
fn a_copy_round_trips_and_only_the_recorded_one_is_fetched() {
    for bucket in buckets() {
        let name = bucket.name;
        let artifacts = bucket.artifacts();
        let first = bytes_of(1000, 0);
        let recorded = Artifact::of_bytes("jobs/j-1/out.bin", &first);
        artifacts.store(&recorded, &first).unwrap();
        assert_eq!(
            artifacts.fetch(&recorded).unwrap(),
            Some(first.clone()),
            "{name}"
        );

        // Same length, other bytes; another length; another path.
        let other = Artifact::of_bytes("jobs/j-1/out.bin", &bytes_of(1000, 1));
        assert_eq!(artifacts.fetch(&other).unwrap(), None, "{name}");
        let longer = Artifact::of_bytes("jobs/j-1/out.bin", &bytes_of(1001, 0));
        assert_eq!(artifacts.fetch(&longer).unwrap(), None, "{name}");
        let elsewhere = Artifact::of_bytes("jobs/j-2/out.bin", &first);
        assert_eq!(artifacts.fetch(&elsewhere).unwrap(), None, "{name}");

        // A store replaces: the new copy is fetched, the old one is gone.
        let second = bytes_of(1000, 1);
        artifacts.store(&other, &second).unwrap();
        assert_eq!(artifacts.fetch(&other).unwrap(), Some(second), "{name}");
        assert_eq!(artifacts.fetch(&recorded).unwrap(), None, "{name}");
        assert_eq!(bucket.objects().len(), 1, "{name}");
    }
}

#[test]
fn a_copy_longer_than_a_part_goes_up_in_parts_and_is_read_whole() {
    for bucket in buckets() {
        let name = bucket.name;
        let counted = Arc::new(Faulty::new(Arc::clone(&bucket.store)));
        let artifacts = ObjectStoreArtifacts::new(counted.clone())
            .prefix(&bucket.prefix)
            .unwrap()
            .part_len(ObjectStoreArtifacts::MIN_PART_LEN)
            .unwrap();
        let len = 2 * ObjectStoreArtifacts::MIN_PART_LEN + 4321;
        let big = bytes_of(len, 3);
        let recorded = Artifact::of_bytes("jobs/j-1/big.bin", &big);
        artifacts.store(&recorded, &big).unwrap();
        assert_eq!(counted.parts.load(Ordering::SeqCst), 3, "{name}");
        assert_eq!(counted.puts.load(Ordering::SeqCst), 0, "{name}");
        assert_eq!(
            bucket.len_raw("jobs/j-1/big.bin"),
            Some(len as u64),
            "{name}"
        );
        assert_eq!(artifacts.fetch(&recorded).unwrap(), Some(big), "{name}");

        // A copy of exactly one part is one PUT.
        let one = bytes_of(ObjectStoreArtifacts::MIN_PART_LEN, 4);
        artifacts
            .store(&Artifact::of_bytes("jobs/j-1/one.bin", &one), &one)
            .unwrap();
        assert_eq!(counted.puts.load(Ordering::SeqCst), 1, "{name}");
        assert_eq!(counted.parts.load(Ordering::SeqCst), 3, "{name}");
    }
}

#[test]
fn an_upload_cut_off_midway_leaves_the_old_copy_whole() {
    for bucket in buckets() {
        let name = bucket.name;
        let faulty = Arc::new(Faulty::new(Arc::clone(&bucket.store)));
        let artifacts = ObjectStoreArtifacts::new(faulty.clone())
            .prefix(&bucket.prefix)
            .unwrap()
            .part_len(ObjectStoreArtifacts::MIN_PART_LEN)
            .unwrap()
            // The silent part waits for it.
            .request_timeout(Duration::from_secs(5))
            .unwrap();
        let len = 2 * ObjectStoreArtifacts::MIN_PART_LEN + 7;
        let old = bytes_of(len, 5);
        let recorded = Artifact::of_bytes("jobs/j-1/big.bin", &old);
        artifacts.store(&recorded, &old).unwrap();

        for cut in [Cut::SecondPart, Cut::Completion, Cut::SecondPartSilent] {
            faulty.cut(cut);
            let new = bytes_of(len, 6);
            let error = artifacts
                .store(&Artifact::of_bytes("jobs/j-1/big.bin", &new), &new)
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::ObjectStore {
                        transient: true,
                        ..
                    }
                ),
                "{name} {cut:?}: {error:?}"
            );
            assert!(error.to_string().contains("jobs/j-1/big.bin"), "{error}");
            assert!(
                faulty.aborted.swap(false, Ordering::SeqCst),
                "{name} {cut:?}"
            );
            // Readers see the old copy, whole, and nothing else.
            assert_eq!(
                artifacts.fetch(&recorded).unwrap(),
                Some(old.clone()),
                "{name}"
            );
            assert_eq!(bucket.objects().len(), 1, "{name} {cut:?}");
            // Aborted: no upload is left pending (S3 lists them).
            if let Some(pending) = bucket.pending_uploads() {
                assert_eq!(pending, 0, "{name} {cut:?}");
            }
        }
    }
}

#[test]
fn a_body_that_stops_midway_fails_the_fetch_within_the_request_timeout() {
    for bucket in buckets() {
        let name = bucket.name;
        let faulty = Arc::new(Faulty::new(Arc::clone(&bucket.store)));
        let artifacts = ObjectStoreArtifacts::new(faulty.clone())
            .prefix(&bucket.prefix)
            .unwrap()
            .request_timeout(Duration::from_millis(300))
            .unwrap();
        let bytes = bytes_of(100_000, 9);
        let recorded = Artifact::of_bytes("jobs/j-1/out.bin", &bytes);
        artifacts.store(&recorded, &bytes).unwrap();
        faulty.cut(Cut::BodySilent);
        let error = artifacts.fetch(&recorded).unwrap_err();
        assert!(
            matches!(
                error,
                Error::ObjectStore {
                    step: "fetch artifact body",
                    transient: true,
                    ..
                }
            ),
            "{name}: {error:?}"
        );
        assert_eq!(artifacts.fetch(&recorded).unwrap(), Some(bytes), "{name}");
    }
}

#[test]
fn a_refusal_the_store_names_is_not_transient() {
    for bucket in buckets() {
        let name = bucket.name;
        let faulty = Arc::new(Faulty::new(Arc::clone(&bucket.store)));
        let artifacts = ObjectStoreArtifacts::new(faulty.clone())
            .prefix(&bucket.prefix)
            .unwrap();
        faulty.cut(Cut::Denied);
        let error = artifacts
            .store(&Artifact::of_bytes("jobs/j-1/out.bin", b"x"), b"x")
            .unwrap_err();
        assert!(
            matches!(error, Error::ObjectStore { .. }),
            "{name}: {error:?}"
        );
        assert!(!error.is_transient(), "{name}: {error:?}");
        assert!(error.to_string().contains("jobs/j-1/out.bin"), "{error}");
    }
}

#[test]
fn a_directory_of_more_copies_than_a_listing_page_is_removed_whole() {
    for bucket in buckets() {
        let name = bucket.name;
        let artifacts = bucket.artifacts();
        // S3 lists 1000 keys a page.
        for n in 0..1005 {
            let path = format!("jobs/big/{n:04}.txt");
            artifacts
                .store(&Artifact::of_bytes(&path, path.as_bytes()), path.as_bytes())
                .unwrap();
        }
        assert_eq!(
            artifacts.dirs(Path::new("jobs")).unwrap(),
            ["big"],
            "{name}"
        );
        assert_eq!(
            artifacts.remove_dir(Path::new("jobs/big")).unwrap(),
            1005,
            "{name}"
        );
        assert!(bucket.objects().is_empty(), "{name}");
    }
}

#[test]
fn directories_are_listed_by_their_names_and_removed_with_a_count() {
    for bucket in buckets() {
        let name = bucket.name;
        let artifacts = bucket.artifacts();
        // `~` starts the hashed names of long or unusual ids, and object
        // paths encode it.
        for path in [
            "jobs/plain-1/a.txt",
            "jobs/plain-1/b.txt",
            "jobs/~00ff/c.txt",
            "subjects/s-1/d.txt",
        ] {
            artifacts
                .store(&Artifact::of_bytes(path, path.as_bytes()), path.as_bytes())
                .unwrap();
        }
        assert_eq!(
            artifacts.dirs(Path::new("jobs")).unwrap(),
            ["plain-1", "~00ff"],
            "{name}"
        );
        assert_eq!(
            artifacts.dirs(Path::new("subjects")).unwrap(),
            ["s-1"],
            "{name}"
        );
        assert_eq!(
            artifacts.remove_dir(Path::new("jobs/~00ff")).unwrap(),
            1,
            "{name}"
        );
        assert_eq!(
            artifacts.remove_dir(Path::new("jobs/plain-1")).unwrap(),
            2,
            "{name}"
        );
        assert_eq!(
            artifacts.remove_dir(Path::new("jobs/plain-1")).unwrap(),
            0,
            "{name}"
        );
        assert!(
            artifacts.dirs(Path::new("jobs")).unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(bucket.objects().len(), 1, "{name}");
    }
}

#[test]
fn the_calls_block_a_runtime_thread_as_std_fs_would_without_panicking() {
    for bucket in buckets() {
        let name = bucket.name;
        let artifacts = bucket.artifacts();
        let bytes = bytes_of(100, 8);
        let artifact = Artifact::of_bytes("jobs/j-1/out.bin", &bytes);
        for flavor in ["current thread", "multi thread"] {
            let runtime = match flavor {
                "current thread" => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            }
            .enable_all()
            .build()
            .unwrap();
            let fetched = runtime.block_on(async {
                artifacts.store(&artifact, &bytes).unwrap();
                artifacts.fetch(&artifact).unwrap()
            });
            assert_eq!(fetched.as_deref(), Some(&bytes[..]), "{name} {flavor}");
        }
    }
}

#[test]
fn settings_and_paths_that_cannot_work_are_refused() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let new = || ObjectStoreArtifacts::new(Arc::clone(&store));
    for prefix in ["", "a//b", "a/../b", "/a", "a/", "a~b", "a%2Fb"] {
        let error = new().prefix(prefix).unwrap_err();
        assert!(
            matches!(error, Error::InvalidArgument(_)),
            "{prefix:?}: {error:?}"
        );
    }
    let error = new()
        .part_len(ObjectStoreArtifacts::MIN_PART_LEN - 1)
        .unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    let error = new().request_timeout(Duration::ZERO).unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    for path in ["jobs/../x", "/jobs/j/x"] {
        let error = new()
            .store(&Artifact::of_bytes(path, b"x"), b"x")
            .unwrap_err();
        assert!(
            matches!(error, Error::InvalidArgument(_)),
            "{path}: {error:?}"
        );
    }
}

/// What the stages do, counted.
#[derive(Default)]
struct Script {
    fetches: AtomicUsize,
    fail_render: AtomicBool,
}

struct Machine {
    _dir: TempDir,
    pipeline: Pipeline<Arc<dyn Store>>,
}

fn page() -> Vec<u8> {
    bytes_of(300_000, 7)
}

fn machine(
    store: &Arc<dyn Store>,
    clock: &ManualClock,
    script: &Arc<Script>,
    artifacts: ObjectStoreArtifacts,
) -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let (fetch, render) = (Arc::clone(script), Arc::clone(script));
    let pipeline = Pipeline::builder(Arc::clone(store), Arc::new(clock.clone()), dir.path())
        .purge_policy(PurgePolicy::default().finished_for(Duration::ZERO))
        .shared_artifacts(artifacts)
        .stage("fetch", move |ctx| {
            fetch.fetches.fetch_add(1, Ordering::SeqCst);
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
        })
        .build()
        .unwrap();
    Machine {
        pipeline,
        _dir: dir,
    }
}

/// A job whose `fetch` finished on `a` and whose `render` failed there; the
/// clock then at its retry time.
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

/// Two machines on one store, sharing `bucket`'s copies, and a job
/// [`started_on`] the first: the second is to take it over.
struct TakeOver {
    a: Machine,
    b: Machine,
    script: Arc<Script>,
    id: String,
}

fn take_over(bucket: &Bucket) -> TakeOver {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let clock = ManualClock::new(START_MS);
    let script = Arc::new(Script::default());
    let a = machine(&store, &clock, &script, bucket.artifacts());
    let b = machine(&store, &clock, &script, bucket.artifacts());
    let id = started_on(&a, &clock, &script);
    TakeOver { a, b, script, id }
}

#[test]
fn a_job_taken_over_on_another_machine_skips_the_stage_that_finished() {
    for bucket in buckets() {
        let name = bucket.name;
        let TakeOver { b, script, id, .. } = take_over(&bucket);
        let pass = b.pipeline.run_pass().unwrap();
        assert_eq!(pass.runs[0].outcome, RunOutcome::Completed, "{name}");
        assert_eq!(pass.runs[0].skipped(), ["fetch"], "{name}");
        assert_eq!(
            script.fetches.load(Ordering::SeqCst),
            1,
            "{name}: fetch ran again"
        );
        let fetched = std::fs::read(b.pipeline.job_dir(&id).join("page.bin")).unwrap();
        assert_eq!(fetched, page(), "{name}");
        let transcript = std::fs::read(b.pipeline.subject_dir("vault-1").join("transcript.txt"));
        assert_eq!(transcript.unwrap(), b"said and done", "{name}");
    }
}

#[test]
fn a_damaged_copy_is_never_used_and_the_stage_runs_again() {
    for bucket in buckets() {
        let name = bucket.name;
        let TakeOver { a, b, script, id } = take_over(&bucket);
        // The page's copy replaced by other bytes of its length.
        let dir = a.pipeline.job_dir(&id);
        let job_dir = dir.file_name().unwrap().to_str().unwrap();
        let mut damaged = page();
        damaged[12_345] ^= 1;
        bucket.put_raw(&format!("jobs/{job_dir}/page.bin"), damaged);

        let pass = b.pipeline.run_pass().unwrap();
        assert_eq!(pass.runs[0].outcome, RunOutcome::Completed, "{name}");
        assert_eq!(script.fetches.load(Ordering::SeqCst), 2, "{name}");
        let written = std::fs::read(b.pipeline.job_dir(&id).join("page.bin")).unwrap();
        assert_eq!(written, page(), "{name}");
    }
}

#[test]
fn purge_removes_the_copies_of_a_job_and_orphans() {
    for bucket in buckets() {
        let name = bucket.name;
        let TakeOver { b, .. } = take_over(&bucket);
        assert_eq!(
            b.pipeline.run_pass().unwrap().runs[0].outcome,
            RunOutcome::Completed,
            "{name}"
        );
        // Copies of a job whose removal was cut off on a machine that is gone.
        let orphan = page();
        bucket
            .artifacts()
            .store(&Artifact::of_bytes("jobs/ghost/page.bin", &orphan), &orphan)
            .unwrap();
        assert_eq!(bucket.objects().len(), 4, "{name}");

        let report = b.pipeline.purge().unwrap();
        assert_eq!(report.jobs.total(), 1, "{name}: {report:?}");
        // page.bin and out.txt of the job, transcript.txt of its subject, and
        // the ghost's page.bin.
        assert_eq!(report.shared_artifacts, 4, "{name}: {report:?}");
        assert_eq!(bucket.objects(), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn names_planted_in_the_bucket_never_lead_a_purge_out_of_its_directories() {
    for bucket in buckets() {
        let name = bucket.name;
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let clock = ManualClock::new(START_MS);
        let script = Arc::new(Script::default());
        let a = machine(&store, &clock, &script, bucket.artifacts());
        // A job that stays: its local files and its copies must survive.
        script.fail_render.store(true, Ordering::SeqCst);
        let job = a
            .pipeline
            .enqueue("vault-1", NewJob::new("export"))
            .unwrap();
        a.pipeline.run_pass().unwrap();
        let local = a.pipeline.job_dir(&job.id).join("page.bin");
        assert!(local.exists(), "{name}");
        let before = bucket.objects();
        // Objects no pipeline wrote, whose directory parts decode to `..`,
        // `.`, a name with a separator, and bytes that are not UTF-8.
        let planted = |parts: &[&str]| {
            let mut path = ObjectPath::from(bucket.prefix.as_str());
            for part in parts {
                path = path.child(*part);
            }
            let raw = Arc::clone(&bucket.raw);
            block(async move { raw.put(&path, b"x".to_vec().into()).await.unwrap() });
        };
        planted(&["subjects", "..", "x"]);
        planted(&["jobs", "..", "x"]);
        planted(&["jobs", ".", "x"]);
        planted(&["subjects", "a/b", "x"]);
        let not_utf8 = ObjectPath::parse(format!("{}/jobs/%FF/x", bucket.prefix)).unwrap();
        let raw = Arc::clone(&bucket.raw);
        block(async move { raw.put(&not_utf8, b"x".to_vec().into()).await.unwrap() });

        let report = a.pipeline.purge().unwrap();
        assert_eq!(report.shared_artifacts, 0, "{name}: {report:?}");
        assert!(local.exists(), "{name}: the job's own file was removed");
        let after = bucket.objects();
        for copy in &before {
            assert!(after.contains(copy), "{name}: {copy} was removed");
        }
        assert_eq!(after.len(), before.len() + 5, "{name}");
    }
}

/// A server that accepts connections and never answers, as one behind a
/// network that went silent.
struct SilentServer {
    listener: TcpListener,
    held: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl SilentServer {
    fn start() -> (Self, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = Arc::new(Mutex::new(Vec::new()));
        let accepting = listener.try_clone().unwrap();
        let holding = Arc::clone(&held);
        std::thread::spawn(move || {
            for stream in accepting.incoming().flatten() {
                holding.lock().unwrap().push(stream);
            }
        });
        (Self { listener, held }, url)
    }

    fn connections(&self) -> usize {
        let _ = &self.listener;
        self.held.lock().unwrap().len()
    }
}

#[test]
fn a_silent_server_fails_each_call_as_transient_within_the_request_timeout() {
    let (server, url) = SilentServer::start();
    // The client's own timeouts and retries far beyond the test's run: only
    // the request timeout can end the calls.
    let client = s3(&url)
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_timeout(Duration::from_secs(3600)),
        )
        .with_retry(RetryConfig {
            max_retries: 10,
            retry_timeout: Duration::from_secs(3600),
            ..RetryConfig::default()
        })
        .build()
        .unwrap();
    let artifacts = || {
        ObjectStoreArtifacts::new(Arc::new(client.clone()))
            .request_timeout(Duration::from_millis(300))
            .unwrap()
    };
    let bytes = b"bytes".to_vec();
    let artifact = Artifact::of_bytes("jobs/j-1/out.bin", &bytes);
    type Call<'a> = Box<dyn Fn() -> jobsafe::Result<()> + 'a>;
    let calls: [(&str, Call<'_>); 4] = [
        (
            "store artifact",
            Box::new(|| artifacts().store(&artifact, &bytes)),
        ),
        (
            "fetch artifact",
            Box::new(|| artifacts().fetch(&artifact).map(drop)),
        ),
        (
            "list artifacts",
            Box::new(|| artifacts().remove_dir(Path::new("jobs/j-1")).map(drop)),
        ),
        (
            "list artifacts",
            Box::new(|| artifacts().dirs(Path::new("jobs")).map(drop)),
        ),
    ];
    for (step, call) in calls {
        let error = call().unwrap_err();
        assert!(error.is_transient(), "{step}: {error:?}");
        let Error::ObjectStore { step: failed, .. } = &error else {
            panic!("{step}: {error:?}");
        };
        assert_eq!(*failed, step);
        assert!(
            std::error::Error::source(&error)
                .unwrap()
                .to_string()
                .contains("no answer within 300 ms"),
            "{error:?}"
        );
    }
    assert!(
        server.connections() >= 1,
        "the client never reached the server"
    );

    // In a pipeline: the write fails, the stage is retried, and the file
    // the copy was made of is gone.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let pipeline = Pipeline::builder(MemStore::new(), Arc::new(clock), dir.path())
        .shared_artifacts(artifacts())
        .stage("render", |ctx| {
            ctx.write("page.html", b"<h1>hi</h1>")?;
            Ok(())
        })
        .build()
        .unwrap();
    let job = pipeline.enqueue("site-1", NewJob::new("render")).unwrap();
    let pass = pipeline.run_pass().unwrap();
    assert!(
        matches!(pass.runs[0].outcome, RunOutcome::RetryScheduled { .. }),
        "{:?}",
        pass.runs[0].outcome
    );
    assert!(!pipeline.job_dir(&job.id).join("page.html").exists());
}

/// Where [`Faulty`] cuts the next multipart upload off.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    SecondPart,
    Completion,
    /// The second part is sent and never answered.
    SecondPartSilent,
    /// The next `GET`'s body stops after its first bytes.
    BodySilent,
    /// The next `PUT` is refused: permission denied.
    Denied,
}

/// An object store that counts uploads, and cuts one off where told.
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    puts: AtomicUsize,
    parts: Arc<AtomicUsize>,
    aborted: Arc<AtomicBool>,
    cut: Mutex<Option<Cut>>,
}

impl Faulty {
    fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            puts: AtomicUsize::new(0),
            parts: Arc::new(AtomicUsize::new(0)),
            aborted: Arc::new(AtomicBool::new(false)),
            cut: Mutex::new(None),
        }
    }

    fn cut(&self, cut: Cut) {
        *self.cut.lock().unwrap() = Some(cut);
    }

    /// Whether the cut set is `cut`; then it is used up.
    fn take(&self, cut: Cut) -> bool {
        self.cut
            .lock()
            .unwrap()
            .take_if(|set| *set == cut)
            .is_some()
    }
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

fn cut_off() -> object_store::Error {
    object_store::Error::Generic {
        store: "Faulty",
        source: "the connection was reset".into(),
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        if self.take(Cut::Denied) {
            return Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "the test denied it".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            sent: 0,
            parts: Arc::clone(&self.parts),
            aborted: Arc::clone(&self.aborted),
            cut: self.cut.lock().unwrap().take_if(|cut| {
                matches!(
                    cut,
                    Cut::SecondPart | Cut::Completion | Cut::SecondPartSilent
                )
            }),
        }))
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let found = self.inner.get_opts(location, options).await?;
        if !self.take(Cut::BodySilent) {
            return Ok(found);
        }
        let (meta, range, attributes) = (
            found.meta.clone(),
            found.range.clone(),
            found.attributes.clone(),
        );
        let mut bytes = found.bytes().await?;
        let first = bytes.split_to(bytes.len() / 2);
        let body = futures_util::stream::once(async move { Ok(first) })
            .chain(futures_util::stream::pending())
            .boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(body),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    sent: usize,
    parts: Arc<AtomicUsize>,
    aborted: Arc<AtomicBool>,
    cut: Option<Cut>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.sent += 1;
        if self.sent == 2 && self.cut == Some(Cut::SecondPart) {
            return Box::pin(async { Err(cut_off()) });
        }
        if self.sent == 2 && self.cut == Some(Cut::SecondPartSilent) {
            return Box::pin(std::future::pending());
        }
        self.parts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if self.cut == Some(Cut::Completion) {
            return Err(cut_off());
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborted.store(true, Ordering::SeqCst);
        self.inner.abort().await
    }
}
