//! [`Runner`]: a pipeline's due jobs run as they come due, a bounded number
//! at once, until a graceful stop.
//!
//! The runner is one loop, written once as a future: the blocking face
//! ([`Runner::run`]) parks its thread between events, the async face
//! ([`Runner::run_async`]) awaits them. Its waits hold no thread: each run
//! has a thread of its own, its looks go to the crate's pool, and the loop
//! waits on whichever comes first of a run ending, a job queued in this
//! process, another process's change to the job records (where the store
//! tells), the clock reaching the next due time, and a stop.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use parking_lot::Mutex;

use super::body::Abandon;
use super::pass::{Due, PassReport};
use super::{Pipeline, RunOutcome, RunReport};
use crate::clock::{ClockSleep, SharedClock, millis};
use crate::error::{Error, Result};
use crate::pool;
use crate::schedule::{Schedule, Scheduler};
use crate::store::{Changes, Store};
use crate::vfs::{StdVfs, Vfs};
use crate::wake::Signal;

/// Most errors a [`RunnerReport`] keeps of each kind: the latest ones.
const KEPT_ERRORS: usize = 32;

/// The first pause before a job whose subject was busy is tried again, when
/// the job holding the subject had already ended (see [`Ran`]); each try
/// that finds it still held doubles it, up to the poll interval.
const HANDOVER_FIRST_PAUSE_MS: u64 = 10;

/// Runs a [`Pipeline`]'s due jobs as they come due, up to a number at once,
/// until [stopped](RunnerStop::stop) gracefully.
///
/// - **Due jobs** are those [`run_pass`](Pipeline::run_pass) runs: queued ones
///   past their retry time, and running ones whose runner's lease ended. The
///   runner also does a pass's upkeep (deletions that waited for a busy
///   subject, the scheduled purge) at each look.
/// - **At most [`concurrency`](Runner::concurrency) runs at once**, and never
///   two of one subject (the subject's lock guarantees that across processes
///   too; the runner does not even try).
/// - **Woken at once** when a job is created or queued again through the
///   pipeline's [`JobState`](crate::JobState) in this process (its
///   [`jobs`](Pipeline::jobs) and every clone of it: [`Pipeline::enqueue`],
///   [`Pipeline::retry`], a create through `jobs()`, a recovery that requeues,
///   an [`AsyncPipeline`](super::AsyncPipeline) over it), by a run ending, and
///   by the clock reaching the next retry time or the end of a busy subject's
///   lease. Work that another process queues wakes it as soon as the store
///   tells ([`Store::changes_by_others`]: a shared [`LogStore`](crate::LogStore)
///   and a [`DirStore`](crate::DirStore) on Linux, and `PgStore` on every
///   machine, through `LISTEN`/`NOTIFY`),
///   and is found anyway by a look every
///   [`poll_every`](Runner::poll_every) (default 10 s), the safety net. A
///   subject that a runner elsewhere frees is not told of (no store tells of
///   a lock's release), but the job holding it is: a job found busy while
///   its subject's holder has already ended its job is tried again after
///   10 ms by the clock, then 20, 40 and so on while the subject stays
///   held (its runner may have died before releasing it), up to the poll
///   interval.
/// - **A graceful stop** ([`RunnerStop::stop`]) starts no further run, lets
///   the runs under way finish for up to a grace period, then abandons the
///   others: each stops at its next stage boundary (at once inside an async
///   stage's wait; a blocking stage under way runs to its end first),
///   removes what the stage under way wrote, releases its subject's lock
///   and leaves its job running, so that another instance takes the job over
///   at once instead of waiting out the lease
///   ([`RunOutcome::Abandoned`]). A process that exits without stopping its
///   runner leaves its jobs to be taken over when their leases end.
///
/// Each look finds the due jobs as `run_pass` does, through the index of open
/// jobs ([`JobState::list_open`](crate::JobState::list_open)): it reads the
/// queued and running jobs' records, however many settled jobs the store
/// keeps.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use jobsafe::jobs::{JobStatus, NewJob};
/// use jobsafe::pipeline::Runner;
/// use jobsafe::{ManualClock, MemStore, Pipeline};
///
/// let dir = tempfile::tempdir()?;
/// let pipeline = Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(0)), dir.path())
///     .stage("transcribe", |ctx| Ok(ctx.write("transcript.txt", b"hello").map(drop)?))
///     .build()?;
/// let runner = Runner::new(pipeline.clone()).concurrency(4);
/// let stop = runner.stopper();
/// let service = std::thread::spawn(move || runner.run());
///
/// // Enqueued: the runner wakes and runs it.
/// let job = pipeline.enqueue("session-1", NewJob::new("episode"))?;
/// let mut events = pipeline.jobs().subscribe(&job.id, 0)?;
/// while !events.is_finished() {
///     events.next_event()?;
/// }
/// assert_eq!(pipeline.jobs().get(&job.id)?.unwrap().status, JobStatus::Complete);
///
/// // On SIGTERM, say: runs under way get up to 30 s to finish.
/// stop.stop(Duration::from_secs(30));
/// let report = service.join().unwrap();
/// assert_eq!(report.completed, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Runner<S, V: Vfs = StdVfs> {
    pipeline: Pipeline<S, V>,
    concurrency: usize,
    poll_every: Duration,
    stop: Arc<StopState>,
    on_run: Option<Box<RunObserver>>,
    /// Recurring jobs, made at each look.
    schedules: Option<Scheduler<Arc<S>>>,
}

type RunObserver = dyn Fn(&str, std::result::Result<&RunReport, &Error>) + Send + Sync;

impl<S, V: Vfs> std::fmt::Debug for Runner<S, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("pipeline", &self.pipeline)
            .field("concurrency", &self.concurrency)
            .field("poll_every", &self.poll_every)
            .field("on_run", &self.on_run.is_some())
            .field("schedules", &self.schedules.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct StopState {
    signal: Signal,
    /// When the runs under way must have ended, by the pipeline's clock,
    /// once a stop was asked for.
    deadline_ms: Mutex<Option<u64>>,
    clock: SharedClock,
}

impl StopState {
    fn deadline_ms(&self) -> Option<u64> {
        *self.deadline_ms.lock()
    }
}

/// Stops a [`Runner`] gracefully, from any thread or task; from
/// [`Runner::stopper`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RunnerStop {
    state: Arc<StopState>,
}

impl RunnerStop {
    /// Asks the runner to stop: it starts no further run, lets the runs under
    /// way finish for up to `grace` (by the pipeline's clock), then abandons
    /// the others (see [`Runner`]), and its `run` returns once every run has
    /// ended. A second call may shorten the grace period, never lengthen it;
    /// `Duration::ZERO` abandons every run at once.
    pub fn stop(&self, grace: Duration) {
        let deadline = self.state.clock.now_ms().saturating_add(millis(grace));
        {
            let mut asked = self.state.deadline_ms.lock();
            *asked = Some(asked.map_or(deadline, |before| before.min(deadline)));
        }
        self.state.signal.raise();
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.state.deadline_ms().is_some()
    }
}

/// What a [`Runner`] did, from its start to its stop.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RunnerReport {
    /// Runs that ended, whatever their outcome (a job found busy or not due
    /// counts too).
    pub runs: u64,
    /// Runs that completed their job.
    pub completed: u64,
    /// Jobs whose run the stop abandoned: left running, their subject's lock
    /// released, for another instance to take over at once.
    pub abandoned: Vec<String>,
    /// Runs that ended in an error (a store or disk failure), by job id: the
    /// latest 32. The job is tried again after [`Runner::poll_every`].
    pub errors: Vec<(String, Error)>,
    /// Failures of a look's parts (listing the jobs, the upkeep of deletions
    /// and purge, a schedule): the latest 32. A failed upkeep or schedule
    /// holds up no job; a failed listing is tried again at the next poll.
    pub look_errors: Vec<Error>,
    /// How many errors there were in all, runs' and looks'.
    pub error_count: u64,
}

impl RunnerReport {
    fn job_error(&mut self, id: String, error: Error) {
        self.error_count += 1;
        if self.errors.len() == KEPT_ERRORS {
            self.errors.remove(0);
        }
        self.errors.push((id, error));
    }

    fn look_error(&mut self, error: Error) {
        self.error_count += 1;
        if self.look_errors.len() == KEPT_ERRORS {
            self.look_errors.remove(0);
        }
        self.look_errors.push(error);
    }
}

/// A run under way.
struct InFlight {
    id: String,
    subject: String,
    abandon: Arc<Abandon>,
    run: OwnThread<Ran>,
}

/// A run's result, and whether, finding the subject busy, it found the job
/// that holds the subject ended already (its record no longer running):
/// that job's runner releases the subject right after its last write, but
/// no store tells other processes of a lock's release, only of a job's
/// records. So the job is tried again shortly, not at the next poll.
struct Ran {
    ended: Result<RunReport>,
    holder_ended: bool,
}

/// The result of work on a thread of its own, as a future.
///
/// Runs take threads of their own, not the crate's pool: a stage may work
/// for minutes, and the pool's threads are there for store calls, which
/// the requests of the same service need meanwhile.
struct OwnThread<T> {
    slot: Arc<Mutex<OwnSlot<T>>>,
}

/// The work's result once it ended (its panic, if it panicked), and whom to
/// wake then.
type OwnSlot<T> = (Option<std::thread::Result<T>>, Option<std::task::Waker>);

impl<T: Send + 'static> OwnThread<T> {
    /// Starts `work` on a new thread; if no thread can start, on the
    /// crate's pool rather than not at all.
    fn spawn(name: &str, work: impl FnOnce() -> T + Send + 'static) -> Self {
        let slot: Arc<Mutex<OwnSlot<T>>> = Arc::new(Mutex::new((None, None)));
        let done = Arc::clone(&slot);
        let run = move || {
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let waker = {
                let mut slot = done.lock();
                slot.0 = Some(ended);
                slot.1.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        };
        // Handed back by a thread that could not start, to run on the pool.
        let work = Arc::new(Mutex::new(Some(run)));
        let on_thread = Arc::clone(&work);
        let spawned = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if let Some(run) = on_thread.lock().take() {
                    run();
                }
            });
        if spawned.is_err() {
            pool::detach(move || {
                if let Some(run) = work.lock().take() {
                    run();
                }
            });
        }
        OwnThread { slot }
    }
}

impl<T> Future for OwnThread<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<T> {
        let mut slot = self.slot.lock();
        match slot.0.take() {
            Some(Ok(value)) => Poll::Ready(value),
            // As a run awaited through the pool: the panic goes on where it
            // is awaited. (A stage's panic is caught by the run itself.)
            Some(Err(panic)) => {
                drop(slot);
                std::panic::resume_unwind(panic)
            }
            None => {
                slot.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// What the loop waits for.
enum Event {
    Ended(usize, Ran),
    /// A job queued in this process.
    Woken(u64),
    /// Other processes changed job records.
    Others(u64),
    Stop(u64),
    Time,
}

/// The signals the loop waits on, each with the generation it has seen.
struct Wakes<'a> {
    queued: Option<(&'a Signal, u64)>,
    others: Option<(&'a Signal, u64)>,
    stop: (&'a Signal, u64),
}

impl<S: Store + 'static, V: Vfs> Runner<S, V> {
    /// How often a runner looks for work queued by other processes unless
    /// [`poll_every`](Runner::poll_every) says otherwise.
    pub const DEFAULT_POLL_EVERY: Duration = Duration::from_secs(10);

    /// A runner of `pipeline`'s jobs, one at a time, looking every 10 s.
    pub fn new(pipeline: Pipeline<S, V>) -> Self {
        let stop = Arc::new(StopState {
            signal: Signal::default(),
            deadline_ms: Mutex::new(None),
            clock: Arc::clone(&pipeline.inner.clock),
        });
        Runner {
            pipeline,
            concurrency: 1,
            poll_every: Self::DEFAULT_POLL_EVERY,
            stop,
            on_run: None,
            schedules: None,
        }
    }

    /// Makes the runs of `schedule` as they come due (see
    /// [`schedule`](crate::schedule)): at each look, the runner ticks its
    /// schedules before it lists the due jobs, and wakes at their next due
    /// time. Each run's job is a job of this pipeline; its subject is the
    /// schedule's name unless the schedule's job sets
    /// [`Pipeline::SUBJECT_FIELD`], so that a run never overlaps the one
    /// before it. The schedules' state is kept under the pipeline's namespace,
    /// in `schedules` (`jobsafe schedules list --namespace pipeline/schedules`
    /// for the default namespace). Every instance's runner may have the same
    /// schedules: each run is made once.
    ///
    /// # Errors
    /// As [`Scheduler::schedule`].
    pub fn schedule(mut self, schedule: Schedule) -> Result<Self> {
        let scheduler = match self.schedules.take() {
            Some(scheduler) => scheduler,
            None => {
                let namespace =
                    super::records::sub_namespace(&self.pipeline.inner.namespace, "schedules")?;
                Scheduler::new(
                    self.pipeline.inner.jobs.clone(),
                    Arc::clone(&self.pipeline.inner.clock),
                )
                .namespace(namespace)?
            }
        };
        let name = schedule.name().to_owned();
        let schedule = schedule.in_subject(super::SUBJECT_FIELD, &name);
        self.schedules = Some(scheduler.schedule(schedule)?);
        Ok(self)
    }

    /// Calls `observer` with the job's id and how each run ended, its report
    /// or the error that stopped it (a store or disk failure: the job is
    /// left for a later run), on the runner's thread (or task): to log
    /// outcomes, count them, or settle what a job's end requires. Keep it
    /// short, and on an async runner free of blocking calls: the runner
    /// starts nothing while it runs. The pipeline's
    /// [`on_stage`](super::PipelineBuilder::on_stage) observer sees each
    /// stage.
    #[must_use]
    pub fn on_run(
        mut self,
        observer: impl Fn(&str, std::result::Result<&RunReport, &Error>) + Send + Sync + 'static,
    ) -> Self {
        self.on_run = Some(Box::new(observer));
        self
    }

    /// Runs up to `runs` jobs at once (at least 1). Each run has a thread of
    /// its own, started for it: never one of the crate's
    /// [pool](crate::pool), whose threads the service's store calls need
    /// while stages work.
    #[must_use]
    pub fn concurrency(mut self, runs: usize) -> Self {
        self.concurrency = runs.max(1);
        self
    }

    /// Looks for work queued by other processes every `every` (at least
    /// 1 ms), by the pipeline's clock. Jobs queued through this process wake
    /// the runner at once whatever this is.
    #[must_use]
    pub fn poll_every(mut self, every: Duration) -> Self {
        self.poll_every = every.max(Duration::from_millis(1));
        self
    }

    /// A handle that stops this runner gracefully.
    pub fn stopper(&self) -> RunnerStop {
        RunnerStop {
            state: Arc::clone(&self.stop),
        }
    }

    /// Runs due jobs on this thread's behalf until stopped, parking the
    /// thread between events; each run has a thread of its own.
    /// Async stages are polled outside any runtime: a service with a tokio
    /// runtime uses [`run_async`](Runner::run_async).
    ///
    /// Errors of runs and looks do not stop it: they go to the report, and
    /// the job or the look is tried again later. A panic outside a stage
    /// (a stage's own is caught by the run) is resumed here, as an awaited
    /// run of [`AsyncPipeline`](super::AsyncPipeline) resumes it.
    pub fn run(&self) -> RunnerReport {
        pool::park_until_ready(self.drive(Arc::default))
    }

    /// [`run`](Runner::run) as a future, which holds no thread while it
    /// waits; async stages are polled inside the caller's tokio runtime.
    /// Dropping it abandons the runs under way at once, as a stop with no
    /// grace would, but without waiting for them to end.
    #[cfg(feature = "async")]
    pub async fn run_async(&self) -> RunnerReport {
        let runtime = tokio::runtime::Handle::try_current().ok();
        self.drive(move || Abandon::in_runtime(runtime.clone()))
            .await
    }

    /// The loop; `abandon` makes each run's abandon signal.
    async fn drive(&self, abandon: impl Fn() -> Arc<Abandon>) -> RunnerReport {
        let clock = Arc::clone(&self.pipeline.inner.clock);
        let wake = self.pipeline.inner.jobs.queued_signal();
        // Jobs that other processes queue, where the store can tell.
        // Set up on the pool: a DirStore's lists and watches directories.
        let watching = self.pipeline.inner.jobs.clone();
        let others = pool::run(move || {
            (watching.records_prefix().ok())
                .and_then(|prefix| watching.store().changes_by_others(&prefix))
        })
        .await;
        let mut others_seen = others.as_ref().map_or(0, Changes::seen);
        let mut report = RunnerReport::default();
        let mut running = Running(Vec::new());
        // Jobs not to try before a time: busy elsewhere, or whose run failed.
        let mut not_before = NotBefore::default();
        let mut woken = wake.generation();
        let mut stop_seen = self.stop.signal.generation();
        let mut look_now = true;
        let mut next_look_ms = 0;
        while self.stop.deadline_ms().is_none() {
            let now = clock.now_ms();
            if look_now || now >= next_look_ms {
                look_now = false;
                let looked = self.look(&mut report).await;
                // A stop that came during the look starts nothing.
                if self.stop.deadline_ms().is_some() {
                    break;
                }
                next_look_ms = match looked {
                    Some(due) => self.start_due(due, now, &mut running, &mut not_before, &abandon),
                    None => u64::MAX,
                }
                .min(now.saturating_add(millis(self.poll_every)));
            }
            let mut sleep = clock.sleep_until_async(next_look_ms);
            let wakes = Wakes {
                queued: Some((wake, woken)),
                others: others.as_ref().map(|o| (o.signal(), others_seen)),
                stop: (&self.stop.signal, stop_seen),
            };
            match running.next_event(wakes, &mut sleep).await {
                Event::Ended(at, ended) => {
                    let run = running.0.swap_remove(at);
                    self.record(run, ended, clock.now_ms(), &mut report, &mut not_before);
                    look_now = true;
                }
                Event::Woken(generation) => {
                    woken = generation;
                    not_before.forget_busy();
                    look_now = true;
                }
                Event::Others(generation) => {
                    others_seen = generation;
                    // Perhaps a runner elsewhere handed a busy job over:
                    // it is tried again at once, not when the lease ends.
                    not_before.forget_busy();
                    look_now = true;
                }
                Event::Stop(generation) => stop_seen = generation,
                Event::Time => {}
            }
        }
        self.drain(running, &mut report, &mut not_before).await;
        report
    }

    /// Upkeep, the schedules' due runs, then the due jobs, on the pool;
    /// `None` if the jobs could not be listed.
    async fn look(&self, report: &mut RunnerReport) -> Option<Due> {
        let pipeline = self.pipeline.clone();
        let schedules = self.schedules.clone();
        let looked = pool::run(move || {
            let mut pass = PassReport::default();
            // Upkeep that fails (a purge, say) holds up no job.
            let upkeep = pipeline.maintain(&mut pass).err();
            let tick = schedules.map(|scheduler| scheduler.tick());
            let due = pipeline.due_jobs(&mut pass);
            (pass, upkeep, tick, due)
        })
        .await;
        let (pass, upkeep, tick, due) = looked;
        for (id, error) in pass.errors {
            report.job_error(id, error);
        }
        if let Some(error) = upkeep {
            report.look_error(error);
        }
        let mut next_schedule = None;
        if let Some(tick) = tick {
            for (_, error) in tick.failed {
                report.look_error(error);
            }
            next_schedule = tick.next_due_ms;
        }
        match due {
            Ok(mut due) => {
                if let Some(next) = next_schedule {
                    due.next_retry_ms = Some(due.next_retry_ms.map_or(next, |t| t.min(next)));
                }
                Some(due)
            }
            Err(error) => {
                report.look_error(error);
                None
            }
        }
    }

    /// Starts the due jobs there is room for; returns when to look next,
    /// at the latest.
    fn start_due(
        &self,
        due: Due,
        now: u64,
        running: &mut Running,
        not_before: &mut NotBefore,
        abandon: &impl Fn() -> Arc<Abandon>,
    ) -> u64 {
        let mut next = due.next_retry_ms.unwrap_or(u64::MAX);
        let listed: HashSet<&str> = due.jobs.iter().map(|job| job.id.as_str()).collect();
        not_before.retain(now, &listed);
        for job in &due.jobs {
            if running.0.len() >= self.concurrency {
                break;
            }
            if let Some(at) = not_before.get(&job.id) {
                next = next.min(at);
                continue;
            }
            let subject = Pipeline::<S, V>::subject_of(job);
            if running
                .0
                .iter()
                .any(|run| run.id == job.id || run.subject == subject)
            {
                // Looked at again when that run ends.
                continue;
            }
            let signal = abandon();
            let (pipeline, id, run_signal) =
                (self.pipeline.clone(), job.id.clone(), Arc::clone(&signal));
            running.0.push(InFlight {
                id: job.id.clone(),
                subject: subject.to_owned(),
                abandon: signal,
                run: OwnThread::spawn("jobsafe-runner", move || {
                    let ended = pipeline.run_job_unless(&id, &run_signal);
                    let holder_ended = match &ended {
                        Ok(RunReport {
                            outcome: RunOutcome::Busy { holder },
                            ..
                        }) => pipeline.holder_has_ended(holder),
                        _ => false,
                    };
                    Ran {
                        ended,
                        holder_ended,
                    }
                }),
            });
        }
        next
    }

    /// Counts a run that ended, and decides when its job may be tried again.
    fn record(
        &self,
        run: InFlight,
        ran: Ran,
        now: u64,
        report: &mut RunnerReport,
        not_before: &mut NotBefore,
    ) {
        let Ran {
            ended,
            holder_ended,
        } = ran;
        let retry_in = now.saturating_add(millis(self.poll_every));
        if !holder_ended {
            not_before.handovers.remove(&run.id);
        }
        if let Some(observer) = &self.on_run {
            observer(&run.id, ended.as_ref());
        }
        match ended {
            Ok(ended) => {
                report.runs += 1;
                match ended.outcome {
                    RunOutcome::Completed => report.completed += 1,
                    // Held by a runner elsewhere: tried again when its lease
                    // ends, or at the next poll if that comes first.
                    // A lease that has ended by now (the clock moved while
                    // the run looked) is tried again at once: waiting for
                    // the clock to move once more could be waiting for ever
                    // on a clock that only moves when told.
                    //
                    // A holder whose job has ended releases the subject in
                    // a moment: tried again after a short pause, doubled
                    // at each try that finds it still held (its runner may
                    // have died between its last write and the release).
                    RunOutcome::Busy { holder } => {
                        let at = self.pipeline.inner.locks.takeover_ms(&holder);
                        let mut retry_at = at.min(retry_in);
                        if holder_ended {
                            let tries = not_before.handovers.entry(run.id.clone()).or_default();
                            let pause =
                                HANDOVER_FIRST_PAUSE_MS.saturating_mul(1u64 << (*tries).min(32));
                            *tries = tries.saturating_add(1);
                            retry_at = retry_at.min(now.saturating_add(pause));
                        }
                        if at > now {
                            not_before.busy.insert(run.id, retry_at);
                        }
                    }
                    RunOutcome::Abandoned { .. } => report.abandoned.push(run.id),
                    _ => {}
                }
            }
            Err(error) => {
                not_before.failed.insert(run.id.clone(), retry_in);
                report.job_error(run.id, error);
            }
        }
    }

    /// After a stop: waits for the runs under way until the grace period
    /// ends, then abandons those left and waits for them to stop.
    async fn drain(
        &self,
        mut running: Running,
        report: &mut RunnerReport,
        not_before: &mut NotBefore,
    ) {
        let clock = Arc::clone(&self.pipeline.inner.clock);
        let mut stop_seen = self.stop.signal.generation();
        let mut abandoned = false;
        while !running.0.is_empty() {
            let until = if abandoned {
                u64::MAX
            } else {
                self.stop.deadline_ms().unwrap_or(0)
            };
            if !abandoned && clock.now_ms() >= until {
                for run in &running.0 {
                    run.abandon.set();
                }
                abandoned = true;
                continue;
            }
            let mut sleep = clock.sleep_until_async(until);
            let wakes = Wakes {
                queued: None,
                others: None,
                stop: (&self.stop.signal, stop_seen),
            };
            match running.next_event(wakes, &mut sleep).await {
                Event::Ended(at, ended) => {
                    let run = running.0.swap_remove(at);
                    self.record(run, ended, clock.now_ms(), report, not_before);
                }
                Event::Stop(generation) => stop_seen = generation,
                Event::Woken(_) | Event::Others(_) | Event::Time => {}
            }
        }
    }
}

/// The runs under way.
struct Running(Vec<InFlight>);

impl Running {
    /// Whichever comes first: a run ending, a signal of `wakes` past the
    /// generation seen, or `sleep`'s end.
    fn next_event<'a>(
        &'a mut self,
        wakes: Wakes<'a>,
        sleep: &'a mut ClockSleep<'_>,
    ) -> impl Future<Output = Event> + 'a {
        std::future::poll_fn(move |cx| {
            for (at, run) in self.0.iter_mut().enumerate() {
                if let Poll::Ready(ended) = Pin::new(&mut run.run).poll(cx) {
                    return Poll::Ready(Event::Ended(at, ended));
                }
            }
            let (stop, seen) = wakes.stop;
            if let Poll::Ready(generation) = stop.poll_changed(seen, cx) {
                return Poll::Ready(Event::Stop(generation));
            }
            if let Some((queued, seen)) = wakes.queued
                && let Poll::Ready(generation) = queued.poll_changed(seen, cx)
            {
                return Poll::Ready(Event::Woken(generation));
            }
            if let Some((others, seen)) = wakes.others
                && let Poll::Ready(generation) = others.poll_changed(seen, cx)
            {
                return Poll::Ready(Event::Others(generation));
            }
            if Pin::new(&mut *sleep).poll(cx).is_ready() {
                return Poll::Ready(Event::Time);
            }
            Poll::Pending
        })
    }
}

/// Dropping the loop (a dropped `run_async`) abandons its runs at once.
impl Drop for Running {
    fn drop(&mut self) {
        for run in &self.0 {
            run.abandon.set();
        }
    }
}

/// The jobs a runner does not try before a time.
#[derive(Debug, Default)]
struct NotBefore {
    /// Held by a runner elsewhere: until its lease ends (or the next poll).
    /// Forgotten when another writer's change may be its handover.
    busy: HashMap<String, u64>,
    /// Whose run failed with an error: until the next poll.
    failed: HashMap<String, u64>,
    /// Jobs whose subject's holder had ended its job, and how many tries
    /// found it still holding the subject.
    handovers: HashMap<String, u32>,
}

impl NotBefore {
    fn get(&self, id: &str) -> Option<u64> {
        match (self.busy.get(id), self.failed.get(id)) {
            (Some(&a), Some(&b)) => Some(a.max(b)),
            (a, b) => a.or(b).copied(),
        }
    }

    /// Keeps what is still ahead of `now`, for jobs still `listed`.
    fn retain(&mut self, now: u64, listed: &HashSet<&str>) {
        for times in [&mut self.busy, &mut self.failed] {
            times.retain(|id, at| *at > now && listed.contains(id.as_str()));
        }
        self.handovers.retain(|id, _| listed.contains(id.as_str()));
    }

    fn forget_busy(&mut self) {
        self.busy.clear();
    }
}
