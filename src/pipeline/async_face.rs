//! [`AsyncPipeline`]: the async face of [`Pipeline`].

use std::sync::Arc;

use super::body::Abandon;
use super::{Checkpoint, Deletion, PassReport, Pipeline, PurgeReport, RunReport};
use crate::error::Result;
use crate::jobs::{AsyncJobState, Job, NewJob};
use crate::lock::AsyncJobLock;
use crate::pool;
use crate::store::Store;
use crate::vfs::{StdVfs, Vfs};

/// The async face of [`Pipeline`]: the same runs, the same guarantees, and
/// methods of the same names that are `async fn`s and never block the
/// caller's thread.
///
/// A run ([`run_job`](AsyncPipeline::run_job), [`run_pass`](AsyncPipeline::run_pass))
/// is the blocking pipeline's run, on a thread of the crate's
/// [pool](crate::pool): the stages are the ones given to the builder, run
/// as they are by the blocking face, so a service awaits its runs instead of
/// giving them threads of its own. The lease's keep-alive renews from the
/// crate's background loops meanwhile, and the job's events reach
/// [`jobs`](AsyncPipeline::jobs)' streams as they are appended.
///
/// Stages may be `async fn`s ([`PipelineBuilder::async_stage`](super::PipelineBuilder::async_stage)):
/// their futures are polled on the run's pool thread inside the caller's tokio
/// runtime, so they use the runtime's I/O and timers. The run's own store
/// calls are made outside it.
///
/// Dropping a run's future (a service shutting down, say) stops the run at
/// its next stage boundary, or at once inside an async stage's wait, whose
/// future is dropped: the job is left for the next run to take over at once
/// ([`RunOutcome::Abandoned`](super::RunOutcome::Abandoned)). A blocking
/// stage under way runs to its end first. To stop a job for good,
/// [`cancel`](AsyncPipeline::cancel) it.
///
/// ```
/// use std::sync::Arc;
/// use jobsafe::jobs::NewJob;
/// use jobsafe::pipeline::{AsyncPipeline, RunOutcome};
/// use jobsafe::{ManualClock, MemStore, Pipeline};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let pipeline = AsyncPipeline::new(
///     Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(0)), dir.path())
///         .stage("transcribe", |ctx| Ok(ctx.write("transcript.txt", b"hello").map(drop)?))
///         .build()?,
/// );
/// let job = pipeline.enqueue("session-1", NewJob::new("episode")).await?;
/// let report = pipeline.run_job(&job.id).await?;
/// assert!(matches!(report.outcome, RunOutcome::Completed));
/// # Ok(())
/// # }
/// ```
pub struct AsyncPipeline<S, V: Vfs = StdVfs> {
    pipeline: Pipeline<S, V>,
}

impl<S, V: Vfs> Clone for AsyncPipeline<S, V> {
    fn clone(&self) -> Self {
        AsyncPipeline {
            pipeline: self.pipeline.clone(),
        }
    }
}

impl<S, V: Vfs> std::fmt::Debug for AsyncPipeline<S, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AsyncPipeline")
            .field(&self.pipeline)
            .finish()
    }
}

impl<S: Store + 'static, V: Vfs> AsyncPipeline<S, V> {
    /// The async face of `pipeline`, sharing its state.
    pub fn new(pipeline: Pipeline<S, V>) -> Self {
        AsyncPipeline { pipeline }
    }

    /// The blocking face, sharing this one's state.
    pub fn blocking(&self) -> &Pipeline<S, V> {
        &self.pipeline
    }

    /// The job records, async: read them, stream their events, cancel them.
    /// Shares the pipeline's job state, so streams see the events of its runs.
    pub fn jobs(&self) -> AsyncJobState<Arc<S>> {
        AsyncJobState::new(self.pipeline.jobs().clone())
    }

    /// The subject locks, async.
    pub fn locks(&self) -> AsyncJobLock<Arc<S>> {
        AsyncJobLock::new(self.pipeline.locks().clone())
    }

    /// Runs `run` on the pool, its async stages polled inside the caller's
    /// tokio runtime if it has one, with a signal set when this future is
    /// dropped (see [`RunOutcome::Abandoned`](super::RunOutcome::Abandoned)).
    async fn run_stages<T: Send + 'static>(
        &self,
        run: impl FnOnce(&Pipeline<S, V>, &Abandon) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pipeline = self.pipeline.clone();
        let signal = Abandon::in_runtime(tokio::runtime::Handle::try_current().ok());
        let mut abandon = AbandonOnDrop(Some(Arc::clone(&signal)));
        let outcome = pool::run(move || run(&pipeline, &signal)).await;
        // Done: there is nobody left to abandon.
        abandon.0 = None;
        outcome
    }

    /// Runs `call` on the pool with a handle of the pipeline.
    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Pipeline<S, V>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pipeline = self.pipeline.clone();
        pool::run(move || call(&pipeline)).await
    }

    /// [`Pipeline::enqueue`].
    ///
    /// # Errors
    /// As [`Pipeline::enqueue`].
    pub async fn enqueue(&self, subject: &str, new: NewJob) -> Result<Job> {
        let subject = subject.to_owned();
        self.run(move |pipeline| pipeline.enqueue(&subject, new))
            .await
    }

    /// [`Pipeline::run_job`], on the pool. Dropping this future stops the
    /// run at its next stage boundary, or at once if an async stage waits
    /// (see [`RunOutcome::Abandoned`](super::RunOutcome::Abandoned)).
    ///
    /// # Errors
    /// As [`Pipeline::run_job`].
    pub async fn run_job(&self, id: &str) -> Result<RunReport> {
        let id = id.to_owned();
        self.run_stages(move |pipeline, abandon| pipeline.run_job_unless(&id, abandon))
            .await
    }

    /// [`Pipeline::run_pass`], on the pool. Dropping this future stops the
    /// pass: the run under way stops as a dropped
    /// [`run_job`](AsyncPipeline::run_job) does, and no other job starts.
    ///
    /// # Errors
    /// As [`Pipeline::run_pass`].
    pub async fn run_pass(&self) -> Result<PassReport> {
        self.run_stages(|pipeline, abandon| pipeline.run_pass_unless(abandon))
            .await
    }

    /// [`Pipeline::checkpoint`].
    ///
    /// # Errors
    /// As [`Pipeline::checkpoint`].
    pub async fn checkpoint(&self, id: &str, stage: &str) -> Result<Option<Checkpoint>> {
        let (id, stage) = (id.to_owned(), stage.to_owned());
        self.run(move |pipeline| pipeline.checkpoint(&id, &stage))
            .await
    }

    /// [`Pipeline::retry`].
    ///
    /// # Errors
    /// As [`Pipeline::retry`].
    pub async fn retry(&self, id: &str) -> Result<Job> {
        let id = id.to_owned();
        self.run(move |pipeline| pipeline.retry(&id)).await
    }

    /// [`Pipeline::cancel`].
    ///
    /// # Errors
    /// As [`Pipeline::cancel`].
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        let id = id.to_owned();
        self.run(move |pipeline| pipeline.cancel(&id)).await
    }

    /// [`Pipeline::delete`].
    ///
    /// # Errors
    /// As [`Pipeline::delete`].
    pub async fn delete(&self, id: &str) -> Result<Deletion> {
        let id = id.to_owned();
        self.run(move |pipeline| pipeline.delete(&id)).await
    }

    /// [`Pipeline::purge`].
    ///
    /// # Errors
    /// As [`Pipeline::purge`].
    pub async fn purge(&self) -> Result<PurgeReport> {
        self.run(|pipeline| pipeline.purge()).await
    }
}

/// Sets its signal when dropped: the run's future went away before the run
/// ended.
/// `None` once the run ended.
struct AbandonOnDrop(Option<Arc<Abandon>>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(signal) = self.0.take() {
            signal.set();
        }
    }
}

impl<S: Store + 'static, V: Vfs> From<Pipeline<S, V>> for AsyncPipeline<S, V> {
    fn from(pipeline: Pipeline<S, V>) -> Self {
        AsyncPipeline::new(pipeline)
    }
}
