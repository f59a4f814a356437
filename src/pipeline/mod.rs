//! Resumable staged jobs: use a [`Pipeline`] when a job is several steps that
//! write files (transcribe, draft, export) and a crash, a retry or a second
//! scheduler must neither redo finished steps nor leave half-written output.
//!
//! Each stage writes its artifacts through the pipeline's atomic writer; its
//! checkpoint records every artifact's digest in the same batch as the job's
//! record, so a re-run skips a stage whose outputs verify, and a later stage
//! reads them back only if they still verify: one that does not makes the
//! stage that wrote it run again. A stage returns a
//! [`StageError`], transient (retried with stored exponential backoff) or
//! permanent (the job fails with a client message and an internal one). One
//! runner at a time works on a subject, under a [`JobLock`]
//! lease with keep-alive. The pipeline is the one part that knows the others:
//! it drives a [`JobState`], a `JobLock` and, if given, a
//! [`JobLedger`].

#[cfg(feature = "async")]
mod async_face;
mod body;
mod checkpoint;
mod cleanup;
mod commit;
mod error;
mod failure;
mod inputs;
mod lease;
#[cfg(feature = "object-store")]
mod objects;
mod outcome;
mod pass;
mod paths;
mod records;
mod retry;
mod run;
mod runner;
mod shared;
mod stage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use async_face::AsyncPipeline;
pub use checkpoint::{Artifact, Checkpoint};
pub use cleanup::{Deletion, PurgePolicy, PurgeReport};
pub use error::{ErrorClass, StageError, classify_io};
#[cfg(feature = "object-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "object-store")))]
pub use objects::ObjectStoreArtifacts;
pub use outcome::{RunOutcome, RunReport, StageAction, StageNotice};
pub use pass::PassReport;
pub use records::PipelineRecords;
pub use retry::RetryPolicy;
pub use runner::{Runner, RunnerReport, RunnerStop};
pub use shared::{ArtifactStorage, StoreArtifacts};
pub use stage::StageContext;

use crate::atomic::AtomicWriter;
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::jobs::{Job, JobState, NewJob};
use crate::key::{Key, Prefix};
use crate::ledger::JobLedger;
use crate::lock::JobLock;
use crate::record as codec;
use crate::store::Store;
use crate::vfs::{StdVfs, Vfs};

const SUBJECT_FIELD: &str = Pipeline::SUBJECT_FIELD;

impl Pipeline<()> {
    /// The metadata field of a job that names its subject.
    pub const SUBJECT_FIELD: &'static str = "subject";

    /// How long a runner's lease on a subject lasts unless
    /// [`PipelineBuilder::lease`] says otherwise.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

    /// The metadata field of a ledger reservation that names the pipeline job
    /// it paid for, when the reservation's own job id is another (a client's
    /// idempotency key, say): see [`PipelineBuilder::ledger`].
    pub const RESERVATION_JOB_FIELD: &'static str = "job";
}

type ResultFn = dyn Fn(&StageContext<'_>) -> Result<serde_json::Value, StageError> + Send + Sync;
type Observer = dyn Fn(&StageNotice<'_>) + Send + Sync;
/// What the pipeline does with the ledger it was given: purge its expired
/// reservations, and learn which jobs its live reservations paid for.
trait LedgerLink: Send + Sync {
    fn purge_expired(&self, retain: Duration) -> Result<usize>;

    /// The ids of the jobs named by a reservation that is not expired: its job
    /// id, and the [`Pipeline::RESERVATION_JOB_FIELD`] of its metadata.
    fn live_jobs(&self) -> Result<std::collections::BTreeSet<String>>;
}

impl<L: Store> LedgerLink for JobLedger<L> {
    fn purge_expired(&self, retain: Duration) -> Result<usize> {
        JobLedger::purge_expired(self, retain)
    }

    fn live_jobs(&self) -> Result<std::collections::BTreeSet<String>> {
        let now = self.clock().now_ms();
        let mut named = std::collections::BTreeSet::new();
        self.for_each_reservation(None, |read| {
            // An unreadable reservation's job is unknown: it keeps none.
            let Ok(reservation) = read else { return Ok(()) };
            if reservation.is_expired_at(now) {
                return Ok(());
            }
            let field = reservation.metadata.get(Pipeline::RESERVATION_JOB_FIELD);
            if let Some(job) = field.and_then(|v| v.as_str()) {
                named.insert(job.to_owned());
            }
            named.insert(reservation.job_id);
            Ok(())
        })?;
        Ok(named)
    }
}

struct Stage {
    name: String,
    run: body::StageBody,
}

/// Resumable staged jobs: named stages run in order against a job of
/// [`JobState`], each finished stage recorded in a [`Checkpoint`] of every
/// artifact it wrote.
///
/// - **Stage boundaries.** The job record is written at every boundary
///   ([`JobState::set_stage`]), also for a stage that is skipped, so it shows
///   what the run traversed.
/// - **Idempotent re-runs.** A stage whose checkpoint is recorded and whose
///   artifacts all verify (present, regular files not reached through a
///   symlink, same length and SHA-256, after the same earlier artifacts) is
///   skipped, and its files are not touched: their mtimes stay. A missing,
///   altered or replaced artifact makes the stage run again, and so does
///   a checkpoint record that cannot be decoded: the store moves it aside
///   ([`Store::quarantine`], which keeps its bytes) and the observer's
///   [`StageNotice`] says why and where it went. An undecodable count of
///   transient failures is moved aside the same way and counting starts again
///   (the job's internal error message says so).
/// - **Artifacts.** Stages write through [`StageContext::write`] (the job's own
///   directory) and [`StageContext::write_shared`] (the subject's directory,
///   shared by its jobs), which go through an [`AtomicWriter`]: a crash leaves
///   the old file or the new, never a mix. Each write is fenced: it commits only
///   if the runner still owns the job (attempt and fencing token) and its lease,
///   checked before the write creates a directory or a temp file and again
///   just before its rename.
///   The checkpoint is stored in one atomic batch with a compare-and-set of the
///   job record that checks the same, so a runner that lost the job cannot
///   record anything.
/// - **Verified inputs.** A stage reads with [`StageContext::read`] and
///   [`StageContext::read_shared`], and a job's [`result`](PipelineBuilder::result)
///   reads the same way. A file that a stage of the run wrote (an earlier one,
///   skipped or run, or the reading stage itself) is checked as it is read
///   against what was written: opened without following a symlink and without
///   blocking on a FIFO or a device, a regular file, read no further than its
///   recorded length and one byte, with the recorded SHA-256. A file that does
///   not match (replaced, truncated, rewritten, a link, a FIFO) is never handed
///   to the stage: the read is an error naming the file and what differs, and
///   the stage ends, whatever it returns, as a transient failure with code
///   [`StageError::ARTIFACT_MISMATCH`]. The run stops there rather than go back:
///   a file that changes again and again would make it loop. On the next run
///   the stage that wrote the file no longer verifies, so it runs again, and
///   the stages after it follow. Each mismatch counts as a transient failure,
///   so a disk that keeps damaging files fails the job after
///   [`RetryPolicy::max_failures`], with the mismatch in its internal message.
///   A file no stage of the run wrote (a shared file of another job of the
///   subject, say) is read with the same care for links, FIFOs and devices,
///   as long as it was when opened, but has no digest to be checked against.
/// - **Retries.** A stage returns a [`StageError`], transient or permanent.
///   Transient errors put the job back in the queue with a backoff from the
///   [`RetryPolicy`], stored in the job record ([`Job::retry_at_ms`]) so that it
///   survives restarts; permanent errors (and panics) fail the job with a
///   client-safe and an internal message. [`retry`](Pipeline::retry) resumes a
///   failed job at the stage that failed: the finished ones verify and skip.
/// - **One runner per subject.** A run holds a [`JobLock`] lease on the job's
///   subject (a session, say), renewed by a keep-alive; a second runner finds it
///   held and reports [`RunOutcome::Busy`] without touching anything. A run that
///   loses its lease stops before its next write and leaves every file alone;
///   its report says what it found: [`RunOutcome::Superseded`] (another runner
///   took the job over), [`RunOutcome::LostLease`] (the lease ended, nobody
///   took over yet) or [`RunOutcome::NotRunning`] (the job was requeued or
///   failed by another hand, such as [`JobState::recover`]).
/// - **Cancellation and deletion** are checked between stages; the stage that
///   did not finish has its artifacts removed. Cancel keeps finished artifacts;
///   [`delete`](Pipeline::delete) removes the job's directory, checkpoints and
///   record.
/// - **Nothing left behind.** Every exit (success, failure, cancel, delete,
///   panic in a stage, lost lease) removes its temp files and releases the
///   lock. After a crash, the next run of a job sweeps the temp files of its
///   directories, and takes the job over once the dead runner's lease ends.
/// - **Scheduling.** [`run_pass`](Pipeline::run_pass) runs the due jobs (queued,
///   or failed transiently and due again, or abandoned by a dead runner), as a
///   cron-driven invocation would; passes of overlapping processes are safe. It
///   also [`purge`](Pipeline::purge)s on a schedule.
///
/// # Layout
///
/// Records live in the store under the namespace (default `pipeline`): jobs
/// under `pipeline/jobs`, subject locks under `pipeline/locks`, checkpoints
/// under `pipeline/checkpoint/<job>/<stage>`. Files live under the artifact
/// root: `jobs/<job>/` and `subjects/<subject>/`, with ids that are not plain
/// lower-case names replaced by a hash.
/// Directories are created with mode `0o700`. A symlink (or a file) found
/// below the artifact root where a directory belongs is
/// [`Error::CorruptFile`] naming it: writes, sweeps
/// and removals never follow it out (the root itself may be a symlink). A
/// run that meets one in the job's or subject's directory, or cannot read
/// or clean up its artifacts there (the disk failing), fails its attempt as
/// a stage's transient error would, with the error in the job's internal
/// message: it counts against the [`RetryPolicy`], so a damage that stays
/// ends in a failed job, not in a job every pass starts again.
///
/// # Limitations
///
/// An artifact write checks ownership just before its atomic rename; a runner
/// that stalls exactly between that check and the rename can still replace that
/// one file after losing the job. It cannot record a checkpoint, and the file
/// no longer matches the successor's checkpoint, so the next run redoes that
/// stage: the damage is detected, not prevented. Filesystems offer no
/// compare-and-set that would close the gap. The same holds for the partial
/// files of a failed stage: they are removed only after the failure is
/// recorded (fenced) and while the lease is live, so a runner that lost the job
/// leaves them alone, but one that stalls between that check and the removal
/// could remove a successor's file of the same name, which its checkpoint then
/// reports as missing.
///
/// ```
/// use std::sync::Arc;
/// use jobsafe::{ManualClock, MemStore, Pipeline};
/// use jobsafe::jobs::NewJob;
/// use jobsafe::pipeline::{RunOutcome, StageError};
///
/// let dir = tempfile::tempdir()?;
/// let pipeline = Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(0)), dir.path())
///     .stage("transcribe", |ctx| {
///         ctx.write("transcript.txt", b"hello world")?;
///         Ok(())
///     })
///     .stage("draft", |ctx| {
///         let transcript = ctx.read("transcript.txt")?;
///         if transcript.is_empty() {
///             return Err(StageError::permanent("the recording is silent"));
///         }
///         ctx.write("draft.md", &transcript.to_ascii_uppercase())?;
///         Ok(())
///     })
///     .build()?;
///
/// let job = pipeline.enqueue("session-1", NewJob::new("episode"))?;
/// let report = pipeline.run_job(&job.id)?;
/// assert!(matches!(report.outcome, RunOutcome::Completed));
/// assert_eq!(std::fs::read(pipeline.job_dir(&job.id).join("draft.md"))?, b"HELLO WORLD");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pipeline<S, V: Vfs = StdVfs> {
    inner: Arc<Inner<S, V>>,
}

struct Inner<S, V: Vfs> {
    jobs: JobState<Arc<S>>,
    locks: JobLock<Arc<S>>,
    store: Arc<S>,
    clock: SharedClock,
    namespace: Prefix,
    root: PathBuf,
    writer: AtomicWriter<V>,
    stages: Vec<Stage>,
    result: Option<Box<ResultFn>>,
    lease: Duration,
    renew_every: Option<Duration>,
    retry: RetryPolicy,
    purge: PurgePolicy,
    purge_every: Option<Duration>,
    ledger: Option<Box<dyn LedgerLink>>,
    observer: Option<Box<Observer>>,
    actor: String,
    /// Where every artifact is copied for the other instances, if anywhere.
    shared: Option<Arc<dyn ArtifactStorage>>,
    /// Artifact directories this handle knows to be durable.
    known: crate::vfs::KnownDurable,
}

impl<S, V: Vfs> Clone for Pipeline<S, V> {
    fn clone(&self) -> Self {
        Pipeline {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S, V: Vfs> std::fmt::Debug for Pipeline<S, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages: Vec<&str> = self.inner.stages.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Pipeline")
            .field("namespace", &self.inner.namespace)
            .field("root", &self.inner.root)
            .field("stages", &stages)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Pipeline`]; from [`Pipeline::builder`].
///
/// Defaults: namespace `pipeline`; a job's result `{"stages": [names]}` (see
/// [`result`](PipelineBuilder::result)); a lease of 60 s ([`Pipeline::DEFAULT_LEASE`])
/// renewed every third of it; [`RetryPolicy::default`]; [`PurgePolicy::default`], with
/// no scheduled purge; no ledger; an [`AtomicWriter`] with
/// [`Durability::Full`](crate::Durability::Full) and mode `0o600`; actor name
/// `pipeline-runner`.
pub struct PipelineBuilder<S, V: Vfs = StdVfs> {
    store: S,
    clock: SharedClock,
    root: PathBuf,
    namespace: Prefix,
    writer: AtomicWriter<V>,
    stages: Vec<Stage>,
    result: Option<Box<ResultFn>>,
    lease: Duration,
    skew_margin: Duration,
    renew_every: Option<Option<Duration>>,
    retry: RetryPolicy,
    purge: PurgePolicy,
    purge_every: Option<Duration>,
    ledger: Option<Box<dyn LedgerLink>>,
    observer: Option<Box<Observer>>,
    actor: String,
    shared: Option<Arc<dyn ArtifactStorage>>,
}

// By hand: the store, the stage bodies and the callbacks are not `Debug`.
impl<S, V: Vfs> std::fmt::Debug for PipelineBuilder<S, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("PipelineBuilder")
            .field("namespace", &self.namespace)
            .field("root", &self.root)
            .field("stages", &stages)
            .field("writer", &self.writer)
            .field("lease", &self.lease)
            .field("skew_margin", &self.skew_margin)
            .field("renew_every", &self.renew_every)
            .field("retry", &self.retry)
            .field("purge", &self.purge)
            .field("purge_every", &self.purge_every)
            .field("custom_result", &self.result.is_some())
            .field("ledger", &self.ledger.is_some())
            .field("observer", &self.observer.is_some())
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl<S: Store + 'static> Pipeline<S> {
    /// Starts building a pipeline keeping records in `store`, timed by `clock`,
    /// with artifacts under the directory `artifact_root` (created when needed).
    pub fn builder(
        store: S,
        clock: SharedClock,
        artifact_root: impl AsRef<Path>,
    ) -> PipelineBuilder<S> {
        PipelineBuilder {
            store,
            clock,
            root: artifact_root.as_ref().to_path_buf(),
            namespace: Prefix::new(["pipeline"]).unwrap_or_default(),
            writer: AtomicWriter::new(),
            stages: Vec::new(),
            result: None,
            lease: Pipeline::DEFAULT_LEASE,
            skew_margin: Duration::ZERO,
            renew_every: None,
            retry: RetryPolicy::default(),
            purge: PurgePolicy::default(),
            purge_every: None,
            ledger: None,
            observer: None,
            actor: "pipeline-runner".to_owned(),
            shared: None,
        }
    }
}

impl<S: Store + 'static, V: Vfs> PipelineBuilder<S, V> {
    /// Adds a stage named `name`, run after the stages added before it.
    pub fn stage(
        mut self,
        name: impl Into<String>,
        run: impl Fn(&mut StageContext<'_>) -> Result<(), StageError> + Send + Sync + 'static,
    ) -> Self {
        self.stages.push(Stage {
            name: name.into(),
            run: body::StageBody::Blocking(Box::new(run)),
        });
        self
    }

    /// Adds a stage named `name` whose body is an `async fn` (a stage that
    /// calls HTTP services, say), run after the stages added before it. It
    /// gets the same context and the same guarantees as a blocking stage.
    ///
    /// Its future is polled on the thread that runs the stage, a thread of
    /// the crate's [pool](crate::pool) in an [`AsyncPipeline`] run, inside the
    /// caller's tokio runtime while it is polled: the stage may use the
    /// runtime's I/O and timers (a current-thread runtime drives them only
    /// while its own thread waits in `block_on`, as a server's does). A run
    /// of the blocking face polls it on the caller's thread, with whatever
    /// runtime that thread has entered. The context's writes and reads block
    /// that thread briefly, as they do in a blocking stage, and are made
    /// inside the runtime (on a `PgStore`, each blocking call made inside a
    /// runtime runs on a thread of its own); the run's other store calls are
    /// made outside it. The future need not be `Send`.
    ///
    /// If the run's caller goes away (its `AsyncPipeline` future is dropped)
    /// while the stage waits, the stage's future is dropped: the artifacts it
    /// wrote are removed, nothing is recorded, the subject's lock is released
    /// and the job is left running, for the next run to take over at once
    /// ([`RunOutcome::Abandoned`]), as it would take over from a runner that
    /// crashed there.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::jobs::NewJob;
    /// use jobsafe::pipeline::{AsyncPipeline, RunOutcome, StageContext, StageError};
    /// use jobsafe::{ManualClock, MemStore, Pipeline};
    ///
    /// async fn fetch(ctx: &mut StageContext<'_>) -> Result<(), StageError> {
    ///     // An HTTP call, say; here a timer of the runtime.
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    ///     ctx.write("page.html", b"<html></html>")?;
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let pipeline = AsyncPipeline::new(
    ///     Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(0)), dir.path())
    ///         .async_stage("fetch", fetch)
    ///         .build()?,
    /// );
    /// let job = pipeline.enqueue("site-1", NewJob::new("crawl")).await?;
    /// let report = pipeline.run_job(&job.id).await?;
    /// assert!(matches!(report.outcome, RunOutcome::Completed));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn async_stage<F>(mut self, name: impl Into<String>, run: F) -> Self
    where
        F: for<'c, 'a> AsyncFn(&'c mut StageContext<'a>) -> Result<(), StageError>
            + Send
            + Sync
            + 'static,
    {
        let run = Arc::new(run);
        let body: Box<body::AsyncStageFn> = Box::new(move |ctx| {
            let run = Arc::clone(&run);
            Box::pin(async move { run(ctx).await })
        });
        self.stages.push(Stage {
            name: name.into(),
            run: body::StageBody::Async(body),
        });
        self
    }

    /// Computes a job's result from its artifacts once every stage ran or was
    /// skipped: the value is stored as the job's result and sent as the data of
    /// its `done` event, exactly as returned. Default: `{"stages": [names]}`.
    ///
    /// It gets the context of the last stage, read-only: it reads artifacts,
    /// each checked against what its stage wrote as a stage's reads are (see
    /// [`StageContext::read`]), and cannot write. An error or a panic fails the
    /// last stage as a stage error would: a transient one is retried, and the
    /// retry skips every verified stage and computes the result again. A read
    /// that does not match fails it transiently whatever it returns, and the
    /// retry runs the stage that wrote the file again.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::{ManualClock, MemStore, Pipeline};
    /// use jobsafe::jobs::NewJob;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let pipeline = Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(0)), dir.path())
    ///     .stage("transcribe", |ctx| {
    ///         ctx.write("transcript.txt", b"hello world")?;
    ///         Ok(())
    ///     })
    ///     .result(|ctx| {
    ///         let transcript = String::from_utf8_lossy(&ctx.read("transcript.txt")?).into_owned();
    ///         Ok(serde_json::json!({ "words": transcript.split_whitespace().count() }))
    ///     })
    ///     .build()?;
    /// let job = pipeline.enqueue("session-1", NewJob::new("episode"))?;
    /// pipeline.run_job(&job.id)?;
    /// let done = pipeline.jobs().get(&job.id)?.expect("still there");
    /// assert_eq!(done.result, Some(serde_json::json!({ "words": 2 })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn result(
        mut self,
        make: impl Fn(&StageContext<'_>) -> Result<serde_json::Value, StageError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.result = Some(Box::new(make));
        self
    }

    /// Keeps the pipeline's records under `namespace` instead of `pipeline`.
    pub fn namespace(mut self, namespace: Prefix) -> Self {
        self.namespace = namespace;
        self
    }

    /// How long a runner's lease on a subject lasts. Default: 60 s
    /// ([`Pipeline::DEFAULT_LEASE`]).
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = ttl;
        self
    }

    /// The clock skew tolerated between the machines sharing the store: a lease
    /// is taken over only `margin` after it ended, and a runner counts its own
    /// lease as ending `margin` early (see
    /// [`JobLockBuilder::skew_margin`](crate::lock::JobLockBuilder::skew_margin)).
    /// Default: zero, for stores on one machine.
    pub fn skew_margin(mut self, margin: Duration) -> Self {
        self.skew_margin = margin;
        self
    }

    /// Renews the lease every `every` from a background thread while a job
    /// runs, or never with `None` (then every stage must finish well within the
    /// lease). Default: a third of the lease less the skew margin. A period
    /// of half of that or more is refused by `build`: the keep-alive reports
    /// the lease expired a period plus the skew margin before its end (see
    /// [`KeepAlive`](crate::lock::KeepAlive)), so a renewal must come first.
    pub fn renew_every(mut self, every: Option<Duration>) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// How transient failures are retried. Default: [`RetryPolicy::default`].
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// What [`Pipeline::purge`] removes. Default: [`PurgePolicy::default`].
    pub fn purge_policy(mut self, policy: PurgePolicy) -> Self {
        self.purge = policy;
        self
    }

    /// Purges at most once per `every` from [`Pipeline::run_pass`], across all
    /// processes sharing the store. Default: never (call
    /// [`Pipeline::purge`] yourself).
    pub fn purge_every(mut self, every: Duration) -> Self {
        self.purge_every = Some(every);
        self
    }

    /// The ledger that charges for this pipeline's jobs. The pipeline's purge
    /// then removes its expired reservations, and keeps every job that a live
    /// reservation names (by its job id, or by its metadata field
    /// [`Pipeline::RESERVATION_JOB_FIELD`]): a client retrying with that
    /// reservation's key finds the job it paid for, instead of a purged one
    /// created again and run for free.
    pub fn ledger<L: Store + 'static>(mut self, ledger: JobLedger<L>) -> Self {
        self.ledger = Some(Box::new(ledger));
        self
    }

    /// Calls `observer` as each stage starts, is skipped, finishes or fails (for
    /// logs and progress displays; it must not block).
    pub fn on_stage(mut self, observer: impl Fn(&StageNotice<'_>) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// The actor named in the lock records of this pipeline's runners (a host
    /// and process id, say), at most
    /// [`LockRequest::MAX_ACTOR_LEN`](crate::lock::LockRequest::MAX_ACTOR_LEN)
    /// bytes. Default: `pipeline-runner`.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// Copies every artifact a stage writes to `storage` too, where the
    /// pipeline's instances on other machines find it: a job taken over on
    /// another machine then skips the stages that finished on the first,
    /// their artifacts fetched from `storage` (checked against the
    /// checkpoint's length and SHA-256) into the local directory, instead of
    /// running them again. Without it (the default) artifacts are in the
    /// local directory only: enough when every instance shares it (one
    /// machine, or a shared filesystem).
    ///
    /// A copy is made as the artifact is written, before the local file is
    /// replaced, and the write fails if the copy does, with the local file as
    /// it was (the stage then fails, transiently if the storage's error is);
    /// [`purge`](Pipeline::purge) and [`delete`](Pipeline::delete)
    /// remove the copies with the directories (see [`ArtifactStorage`],
    /// [`StoreArtifacts`] for a [`Store`], and `ObjectStoreArtifacts` for
    /// object storage with the feature `object-store`).
    pub fn shared_artifacts(mut self, storage: impl ArtifactStorage + 'static) -> Self {
        self.shared = Some(Arc::new(storage));
        self
    }

    /// Writes artifacts with `writer` (its durability, mode and I/O layer) instead
    /// of a default [`AtomicWriter`]. Its no-clobber setting is ignored: a stage
    /// that runs again replaces its artifacts.
    pub fn writer<W: Vfs>(self, writer: AtomicWriter<W>) -> PipelineBuilder<S, W> {
        PipelineBuilder {
            store: self.store,
            clock: self.clock,
            root: self.root,
            namespace: self.namespace,
            writer: writer.with_no_clobber(false),
            stages: self.stages,
            result: self.result,
            lease: self.lease,
            skew_margin: self.skew_margin,
            renew_every: self.renew_every,
            retry: self.retry,
            purge: self.purge,
            purge_every: self.purge_every,
            ledger: self.ledger,
            observer: self.observer,
            actor: self.actor,
            shared: self.shared,
        }
    }

    /// Builds the pipeline.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] without stages, for an empty or repeated stage
    /// name, stage names longer in all than a job records
    /// ([`Job::MAX_STAGES_DONE_LEN`](crate::jobs::Job::MAX_STAGES_DONE_LEN)),
    /// a lease under 3 ms or not longer than the skew margin, or a renewal
    /// period not shorter than the lease less the skew margin; [`Error::InvalidKey`]
    /// if the namespace is too long; [`Error::TooLarge`] for an
    /// [`actor`](PipelineBuilder::actor) longer than its bound.
    pub fn build(self) -> Result<Pipeline<S, V>> {
        if self.stages.is_empty() {
            return Err(Error::InvalidArgument(
                "a pipeline needs at least one stage".to_owned(),
            ));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.name.is_empty() || self.stages[..i].iter().any(|s| s.name == stage.name) {
                return Err(Error::InvalidArgument(format!(
                    "stage name {:?} is empty or used twice",
                    stage.name
                )));
            }
            Key::new([stage.name.as_str()])?;
        }
        // Every stage but the last is recorded as done on the job in turn.
        let names: usize = self.stages.iter().map(|stage| stage.name.len()).sum();
        if names > crate::jobs::Job::MAX_STAGES_DONE_LEN {
            return Err(Error::InvalidArgument(format!(
                "the stage names are {names} bytes in all, more than a job records as done \
                 ({} bytes): every run would fail at the same stage",
                crate::jobs::Job::MAX_STAGES_DONE_LEN
            )));
        }
        if self.lease < Duration::from_millis(3) {
            return Err(Error::InvalidArgument(format!(
                "the lease must be at least 3 ms, got {:?}",
                self.lease
            )));
        }
        if self.lease <= self.skew_margin {
            return Err(Error::InvalidArgument(format!(
                "the lease {:?} must be longer than the skew margin {:?}: a runner \
                 counts its lease as ending that much early, so it would never hold it",
                self.lease, self.skew_margin
            )));
        }
        // A runner holds its lease until `lease - skew_margin` by its own count.
        let held = self.lease - self.skew_margin;
        let renew_every = self.renew_every.unwrap_or(Some(held / 3));
        // Its keep-alive reports the lease expired a period plus the skew
        // margin before it ends, so a renewal must come before that.
        if renew_every.is_some_and(|every| every.is_zero() || every.saturating_mul(2) >= held) {
            return Err(Error::InvalidArgument(format!(
                "the renewal period {renew_every:?} must be shorter than half of the lease \
                 {:?} less the skew margin {:?}: the keep-alive reports a lease expired a \
                 period plus the skew margin before its end",
                self.lease, self.skew_margin
            )));
        }
        // Checked here rather than refused by every run's lock.
        let actor_limit = crate::lock::LockRequest::MAX_ACTOR_LEN;
        if self.actor.len() > actor_limit {
            let size = self.actor.len();
            return Err(Error::too_large("pipeline actor", None, size, actor_limit));
        }
        let store = Arc::new(self.store);
        let sub = |kind: &str| records::sub_namespace(&self.namespace, kind);
        let jobs = JobState::builder(Arc::clone(&store), Arc::clone(&self.clock))
            .namespace(sub("jobs")?)
            .build()?;
        let locks = JobLock::builder(Arc::clone(&store), Arc::clone(&self.clock))
            .namespace(sub("locks")?)
            .skew_margin(self.skew_margin)
            .build()?;
        Ok(Pipeline {
            inner: Arc::new(Inner {
                jobs,
                locks,
                store,
                clock: self.clock,
                namespace: self.namespace,
                root: self.root,
                writer: self.writer,
                stages: self.stages,
                result: self.result,
                lease: self.lease,
                renew_every,
                retry: self.retry,
                purge: self.purge,
                purge_every: self.purge_every,
                ledger: self.ledger,
                observer: self.observer,
                actor: self.actor,
                shared: self.shared,
                known: crate::vfs::KnownDurable::default(),
            }),
        })
    }
}

impl<S: Store + 'static, V: Vfs> Pipeline<S, V> {
    /// The job records. Create jobs with [`enqueue`](Pipeline::enqueue), which
    /// records the subject; read them, subscribe to their events or cancel them
    /// here.
    pub fn jobs(&self) -> &JobState<Arc<S>> {
        &self.inner.jobs
    }

    /// The subject locks.
    pub fn locks(&self) -> &JobLock<Arc<S>> {
        &self.inner.locks
    }

    /// The stage names, in order.
    pub fn stage_names(&self) -> Vec<&str> {
        self.inner.stages.iter().map(|s| s.name.as_str()).collect()
    }

    /// The artifact root.
    pub fn artifact_root(&self) -> &Path {
        &self.inner.root
    }

    /// The directory of job `id`'s own artifacts.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        paths::job_dir(&self.inner.root, id)
    }

    /// The directory of the artifacts shared by `subject`'s jobs.
    pub fn subject_dir(&self, subject: &str) -> PathBuf {
        paths::subject_dir(&self.inner.root, subject)
    }

    /// Creates a queued job for `subject`: jobs of one subject never run at the
    /// same time. The subject is kept in the job's metadata as
    /// [`Pipeline::SUBJECT_FIELD`].
    ///
    /// # Errors
    /// As [`JobState::create`]; [`Error::InvalidKey`] for a subject that is not
    /// a valid key segment.
    pub fn enqueue(&self, subject: &str, new: NewJob) -> Result<Job> {
        Key::new([subject])?;
        self.inner.jobs.create(new.meta(SUBJECT_FIELD, subject))
    }

    /// The subject of `job`: its [`Pipeline::SUBJECT_FIELD`] metadata, or its id for a job
    /// created without one.
    pub fn subject_of(job: &Job) -> &str {
        match job.metadata.get(SUBJECT_FIELD).and_then(|s| s.as_str()) {
            Some(subject) if !subject.is_empty() => subject,
            _ => &job.id,
        }
    }

    /// The checkpoint of `stage` of job `id`, if recorded.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the key if it cannot be read; store errors.
    pub fn checkpoint(&self, id: &str, stage: &str) -> Result<Option<Checkpoint>> {
        let key = self.checkpoint_key(id, stage)?;
        match self.inner.store.get(&key)? {
            None => Ok(None),
            Some(entry) => codec::decode(&key, &entry.value).map(Some),
        }
    }

    /// Puts a failed job back in the queue; its next run resumes at the stage
    /// that failed (finished stages verify and are skipped), with a fresh count
    /// of transient failures. The requeue and the reset of the count are one
    /// atomic write, so a runner that picks the job up at once keeps the count
    /// of its own failures.
    ///
    /// # Errors
    /// As [`JobState::retry`].
    pub fn retry(&self, id: &str) -> Result<Job> {
        records::retry(&self.inner.jobs, &self.inner.namespace, id)
    }

    /// Cancels job `id` ([`JobState::cancel`]). A running job stops at its next
    /// stage boundary and removes the artifacts of the stage it was in; finished
    /// stages keep theirs.
    ///
    /// # Errors
    /// As [`JobState::cancel`].
    pub fn cancel(&self, id: &str) -> Result<Job> {
        self.inner.jobs.cancel(id)
    }

    fn key(&self, parts: &[&str]) -> Result<Key> {
        let segments = self.inner.namespace.segments().iter().map(String::as_str);
        Key::new(segments.chain(parts.iter().copied()))
    }

    fn prefix(&self, parts: &[&str]) -> Result<Prefix> {
        let mut segments = self.inner.namespace.segments().to_vec();
        segments.extend(parts.iter().map(|p| (*p).to_owned()));
        Prefix::new(segments)
    }

    fn checkpoint_key(&self, id: &str, stage: &str) -> Result<Key> {
        self.key(&["checkpoint", id, stage])
    }

    fn run_state_key(&self, id: &str) -> Result<Key> {
        records::run_state_key(&self.inner.namespace, id)
    }

    fn deleting_key(&self, id: &str) -> Result<Key> {
        self.key(&["deleting", id])
    }

    fn subject_lock_key(subject: &str) -> Result<Key> {
        Key::new([subject])
    }

    /// The record at `key`, `Ok(None)` if absent, or, if it cannot be decoded,
    /// `Err` saying why and where the store moved its bytes: an unreadable
    /// checkpoint or failure count must not stop every run of its job, and
    /// its bytes are kept for a look. A record of a newer schema is an error,
    /// left in place for the deploy that wrote it.
    fn read_or_quarantine<R: codec::Record>(
        &self,
        key: &Key,
    ) -> Result<std::result::Result<Option<R>, String>> {
        let read = match self.inner.store.get(key) {
            Ok(None) => return Ok(Ok(None)),
            Ok(Some(entry)) => codec::decode(key, &entry.value),
            Err(e) => Err(e),
        };
        match read {
            Ok(record) => Ok(Ok(Some(record))),
            Err(e @ Error::Corrupt { .. }) => {
                let moved = match self.inner.store.quarantine(key)? {
                    Some(moved) => format!("moved to {}", moved.location),
                    None => "it was gone already".to_owned(),
                };
                Ok(Err(format!("{e}; {moved}")))
            }
            Err(e) => Err(e),
        }
    }

    fn notify(&self, notice: &StageNotice<'_>) {
        if let Some(observer) = &self.inner.observer {
            observer(notice);
        }
    }
}
