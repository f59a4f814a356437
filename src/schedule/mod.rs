//! Recurring work: named schedules that create a job once per due time,
//! across every instance of a service that shares the store.
//!
//! A [`Scheduler`] holds the service's [`Schedule`]s. Each [`tick`](Scheduler::tick)
//! creates, through [`JobState`], the jobs of the runs that came due since
//! the last tick, then moves the schedule's stored cursor past them with a
//! compare-and-set. Every instance may tick, as often as it likes: a run is
//! made once, whoever ticks.
//!
//! # Once per due time, by construction
//!
//! A run's job id is the schedule's name and the run's due time
//! (`nightly-report@1796614200000`), computed from the definition alone, so
//! every instance names the same run the same way and only one create of it
//! can succeed; the others find it [`existing`](Tick::existing). The cursor is
//! stored under `<namespace>/schedule/<name>` and only moves forward, by a
//! compare-and-set against the version just read. A crash between a run's
//! create and the cursor's move, or a store error that hides whether either
//! landed, costs nothing: the next tick makes the same create, which finds
//! the job, and moves the cursor. (A run's job deleted before the cursor
//! moved past it would be made again by that tick.)
//!
//! # Catch-up after downtime
//!
//! When ticks stopped for a while (every instance down, a clock that jumped
//! forward), several runs are due at once. [`CatchUp`] says which are made:
//! [`All`](CatchUp::All) of them, oldest first; [`One`](CatchUp::One), the
//! latest (the default); or [`Skip`](CatchUp::Skip) any run later than a
//! tolerance. A clock that jumps back makes nothing until it reaches the
//! cursor again: no run is made twice.
//!
//! # Running it
//!
//! Call [`tick`](Scheduler::tick) (or [`tick_async`](Scheduler::tick_async))
//! from a loop in every instance, sleeping until [`Tick::next_due_ms`] but no
//! longer than a minute or so, so that a schedule moved by another instance's
//! newer definition is seen. The jobs it creates are queued jobs like any
//! other: the service's workers or [`Pipeline`](crate::Pipeline) passes run
//! them.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use jobsafe::{JobState, ManualClock, MemStore};
//! use jobsafe::jobs::NewJob;
//! use jobsafe::schedule::{Every, Schedule, Scheduler};
//!
//! let clock = Arc::new(ManualClock::new(1_000));
//! let jobs = JobState::new(MemStore::new(), clock.clone());
//! let report = Schedule::new(
//!     "hourly-report",
//!     Every::interval(Duration::from_secs(3600))?,
//!     NewJob::new("report"),
//! )?;
//! let scheduler = Scheduler::new(jobs.clone(), clock.clone()).schedule(report)?;
//!
//! // The first tick stores where the schedule starts: nothing is due yet.
//! let tick = scheduler.tick();
//! assert!(tick.created.is_empty() && tick.failed.is_empty());
//! assert_eq!(tick.next_due_ms, Some(3_600_000));
//!
//! clock.set(3_600_000);
//! let tick = scheduler.tick();
//! assert_eq!(tick.created[0].job_id, "hourly-report@3600000");
//! assert!(jobs.get("hourly-report@3600000")?.is_some());
//! // Another instance ticking now makes nothing more.
//! assert!(scheduler.tick().created.is_empty());
//! # Ok::<(), jobsafe::Error>(())
//! ```

mod every;
mod record;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use every::Every;
pub use record::ScheduleState;
use record::StoredSchedule;

use crate::clock::{SharedClock, millis};
use crate::error::{Error, Result};
use crate::jobs::{JobState, NewJob};
use crate::record as codec;
use crate::store::{Expect, Store};
use crate::{Key, Prefix};

/// Longest schedule name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// How many times a tick reads a schedule again after another instance
/// moved its cursor under it, before it reports the schedule as failed.
const CAS_ROUNDS: usize = 8;

/// Most due runs counted for a report of those left out by
/// [`CatchUp::One`] or [`CatchUp::Skip`]: counting walks a cron expression
/// time by time.
const COUNT_CAP: u64 = 100_000;

/// Which of the runs that came due while nobody ticked are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatchUp {
    /// Only a run due at most `tolerance` ago is made; older ones are left
    /// out. For work that is pointless late (a reminder, a cache warm-up);
    /// the tolerance covers how late a tick may come.
    Skip {
        /// How late a run may still be made.
        tolerance: Duration,
    },
    /// The latest due run is made, however late; older ones are left out.
    /// For work that covers everything up to its run (a report, a sync).
    #[default]
    One,
    /// Every due run is made, oldest first, at most
    /// [`Scheduler::max_runs_per_tick`] per tick. For work done per period
    /// (an hourly rollup that must exist for every hour).
    All,
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatchUp::Skip { tolerance } => write!(f, "skip after {} ms", millis(*tolerance)),
            CatchUp::One => f.write_str("one"),
            CatchUp::All => f.write_str("all"),
        }
    }
}

/// A named recurring job: when it is due, the job each run creates, and
/// which missed runs are made up.
#[derive(Clone, Debug)]
pub struct Schedule {
    name: String,
    every: Every,
    job: NewJob,
    catch_up: CatchUp,
}

impl Schedule {
    /// A schedule named `name` whose runs each create a job from `job`.
    ///
    /// Each run's job gets the id `<name>@<due time in ms>` (any
    /// [`id`](NewJob::id) or [`attempt`](NewJob::attempt) set on `job` is
    /// replaced), and two metadata fields: `schedule` (the name) and
    /// `due_ms`; [`CatchUp::One`] adds `missed`, the runs it left out.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a name that is empty, longer than
    /// [`MAX_NAME_LEN`] bytes, or has a character other than ASCII letters,
    /// digits, `.`, `_` and `-`.
    pub fn new(name: impl Into<String>, every: Every, job: NewJob) -> Result<Schedule> {
        let name = name.into();
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(allowed) {
            return Err(Error::InvalidArgument(format!(
                "a schedule's name must be 1 to {MAX_NAME_LEN} ASCII letters, digits, \
                 '.', '_' or '-', got {:?}",
                name.escape_debug().to_string()
            )));
        }
        Ok(Schedule {
            name,
            every,
            job,
            catch_up: CatchUp::default(),
        })
    }

    /// Which runs missed while nobody ticked are made. Default: [`CatchUp::One`].
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This schedule with its runs' jobs in `subject` unless its job says
    /// otherwise: a pipeline runs one job of a subject at a time.
    pub(crate) fn in_subject(mut self, field: &str, subject: &str) -> Self {
        if !self.job.has_meta(field) {
            self.job = self.job.meta(field, subject);
        }
        self
    }

    /// The id of the job of the run due at `due_ms`.
    pub fn job_id(&self, due_ms: u64) -> String {
        format!("{}@{due_ms}", self.name)
    }
}

/// A run of a schedule: the job made for one due time.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Run {
    /// The schedule's name.
    pub schedule: String,
    /// When the run was due, in milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// Its job's id.
    pub job_id: String,
}

/// What a [`tick`](Scheduler::tick) did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Tick {
    /// Runs whose job this tick created.
    pub created: Vec<Run>,
    /// Due runs whose job existed already: made by another instance, or by
    /// an earlier tick that failed or crashed before moving the cursor.
    pub existing: Vec<Run>,
    /// Due runs the catch-up policies left out.
    pub skipped: u64,
    /// When the next run of any schedule is due, after this tick; `None` if
    /// no schedule has one. At or before now when [`CatchUp::All`] had more
    /// runs due than one tick makes: tick again at once.
    pub next_due_ms: Option<u64>,
    /// Schedules this tick could not move, with why. Their runs are made by a
    /// later tick; the other schedules are not held up.
    pub failed: Vec<(String, Error)>,
}

impl Tick {
    fn due_next(&mut self, due_ms: u64) {
        self.next_due_ms = Some(self.next_due_ms.map_or(due_ms, |t| t.min(due_ms)));
    }
}

/// Makes the runs of a service's [`Schedule`]s as they come due; see the
/// [module docs](self).
///
/// Cheap to clone: clones share the schedules.
#[derive(Debug)]
pub struct Scheduler<S> {
    jobs: JobState<S>,
    clock: SharedClock,
    namespace: Prefix,
    schedules: Arc<[Schedule]>,
    max_runs_per_tick: usize,
}

impl<S> Clone for Scheduler<S> {
    fn clone(&self) -> Self {
        Scheduler {
            jobs: self.jobs.clone(),
            clock: Arc::clone(&self.clock),
            namespace: self.namespace.clone(),
            schedules: Arc::clone(&self.schedules),
            max_runs_per_tick: self.max_runs_per_tick,
        }
    }
}

/// The namespace schedules are stored under unless
/// [`Scheduler::namespace`] says otherwise.
pub fn default_namespace() -> Prefix {
    Prefix::new(["schedules"]).unwrap_or_default()
}

impl<S: Store> Scheduler<S> {
    /// A scheduler with no schedules, creating jobs through `jobs`, keeping
    /// its schedules' state in the same store under `schedules`.
    pub fn new(jobs: JobState<S>, clock: SharedClock) -> Self {
        Scheduler {
            jobs,
            clock,
            namespace: default_namespace(),
            schedules: Arc::from(Vec::new()),
            max_runs_per_tick: 100,
        }
    }

    /// Keeps the schedules' state under `namespace` instead of `schedules`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if the namespace leaves no room for the records'
    /// keys.
    pub fn namespace(mut self, namespace: Prefix) -> Result<Self> {
        namespace.check_room(2, "schedule")?;
        self.namespace = namespace;
        Ok(self)
    }

    /// Most runs of one schedule a tick makes under [`CatchUp::All`]; the
    /// rest are made by the next ticks. Default 100; at least 1.
    pub fn max_runs_per_tick(mut self, runs: usize) -> Self {
        self.max_runs_per_tick = runs.max(1);
        self
    }

    /// Adds `schedule`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a schedule of that name was given already.
    pub fn schedule(mut self, schedule: Schedule) -> Result<Self> {
        if self.schedules.iter().any(|s| s.name == schedule.name) {
            return Err(Error::InvalidArgument(format!(
                "a schedule named {:?} was given already",
                schedule.name
            )));
        }
        let mut schedules = self.schedules.to_vec();
        schedules.push(schedule);
        self.schedules = Arc::from(schedules);
        Ok(self)
    }

    /// The schedules given, in the order they were.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Makes every run that is due now, for every schedule.
    ///
    /// A schedule seen for the first time starts at its first due time after
    /// now. A schedule whose [`Every`] changed since its state was stored
    /// starts again at the first due time after now (and after its last run);
    /// a changed [`CatchUp`] applies from this tick. While instances with
    /// different definitions of one schedule tick (a rolling deploy), each
    /// starts it again for its own, and no run is made until they agree:
    /// change a schedule's definition under a new name to keep it running
    /// through a deploy.
    ///
    /// Never fails as a whole: a schedule whose record cannot be read or
    /// written, or whose runs cannot be created, is reported in
    /// [`Tick::failed`] and left for the next tick, which repeats nothing
    /// that landed.
    pub fn tick(&self) -> Tick {
        let mut tick = Tick::default();
        for schedule in self.schedules.iter() {
            if let Err(error) = self.tick_schedule(schedule, &mut tick) {
                tick.failed.push((schedule.name.clone(), error));
            }
        }
        tick
    }

    /// As [`tick`](Self::tick), on the crate's blocking pool
    /// ([`jobsafe::pool`](crate::pool)), so that no runtime thread waits for
    /// the store. A dropped future's tick either does not start or runs to
    /// its end; either way the next tick makes whatever it did not.
    #[cfg(feature = "async")]
    pub async fn tick_async(&self) -> Tick
    where
        S: Send + Sync + 'static,
    {
        let this = self.clone();
        crate::pool::run(move || this.tick()).await
    }

    /// The stored state of every schedule under this scheduler's namespace,
    /// given to this scheduler or not; see [`list`].
    ///
    /// # Errors
    /// As [`list`].
    pub fn list(&self) -> Result<ScheduleList> {
        list(self.jobs.store(), &self.namespace)
    }

    fn tick_schedule(&self, schedule: &Schedule, tick: &mut Tick) -> Result<()> {
        let key = record_key(&self.namespace, &schedule.name)?;
        let every = schedule.every.to_string();
        let catch_up = schedule.catch_up.to_string();
        let mut last_conflict = None;
        for _ in 0..CAS_ROUNDS {
            let now = self.clock.now_ms();
            let Some((stored, version)) = read(self.jobs.store(), &key)? else {
                let Some(next) = schedule.every.next_after(now) else {
                    return Ok(());
                };
                let start = StoredSchedule {
                    every: every.clone(),
                    catch_up: catch_up.clone(),
                    next_due_ms: next,
                    last_due_ms: None,
                    last_job: None,
                    runs: 0,
                    skipped: 0,
                    updated_ms: now,
                    extra: codec::Extra::new(),
                };
                match self.write(&key, &start, Expect::Absent) {
                    Ok(()) => {
                        tick.due_next(next);
                        return Ok(());
                    }
                    Err(e) if e.is_conflict() => {
                        last_conflict = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            let plan = if stored.every == every {
                if stored.next_due_ms > now {
                    if stored.next_due_ms != u64::MAX {
                        tick.due_next(stored.next_due_ms);
                    }
                    return Ok(());
                }
                self.plan(schedule, stored.next_due_ms, now)
            } else {
                // A changed definition: its due times are not the stored
                // cursor's, so it starts afresh after now and the last run.
                let from = now.max(stored.last_due_ms.unwrap_or(0));
                Plan {
                    runs: Vec::new(),
                    skipped: 0,
                    missed: 0,
                    next: schedule.every.next_after(from).unwrap_or(u64::MAX),
                }
            };
            let mut made = Vec::with_capacity(plan.runs.len());
            for &due_ms in &plan.runs {
                let job_id = schedule.job_id(due_ms);
                let mut job = schedule
                    .job
                    .clone()
                    .id(&job_id)
                    .attempt(crate::AttemptId::new())
                    .meta("schedule", schedule.name.as_str())
                    .meta("due_ms", due_ms);
                if plan.missed > 0 {
                    job = job.meta("missed", plan.missed);
                }
                let run = Run {
                    schedule: schedule.name.clone(),
                    due_ms,
                    job_id,
                };
                match self.jobs.create(job) {
                    Ok(_) => {
                        tick.created.push(run.clone());
                        made.push(run);
                    }
                    Err(e) if e.is_conflict() => {
                        tick.existing.push(run.clone());
                        made.push(run);
                    }
                    Err(e) => return Err(e),
                }
            }
            let last = made.last();
            let moved = StoredSchedule {
                every: every.clone(),
                catch_up: catch_up.clone(),
                next_due_ms: plan.next,
                last_due_ms: last.map(|run| run.due_ms).or(stored.last_due_ms),
                last_job: last.map(|run| run.job_id.clone()).or(stored.last_job),
                runs: stored.runs.saturating_add(made.len() as u64),
                skipped: stored.skipped.saturating_add(plan.skipped),
                updated_ms: now,
                extra: stored.extra,
            };
            match self.write(&key, &moved, Expect::Version(version)) {
                Ok(()) => {
                    tick.skipped += plan.skipped;
                    if plan.next != u64::MAX {
                        tick.due_next(plan.next);
                    }
                    return Ok(());
                }
                // Another instance moved it: read it again. The runs made
                // here are the ones it made, by their ids.
                Err(e) if e.is_conflict() => last_conflict = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_conflict.unwrap_or_else(|| {
            Error::InvalidArgument(format!(
                "schedule {:?}: its record kept changing under this tick",
                schedule.name
            ))
        }))
    }

    /// The runs to make of those due from `cursor` (a due time) to `now`.
    fn plan(&self, schedule: &Schedule, cursor: u64, now: u64) -> Plan {
        let every = &schedule.every;
        if schedule.catch_up == CatchUp::All {
            let mut runs = Vec::new();
            let mut next = Some(cursor);
            while let Some(due) = next.filter(|&due| due <= now) {
                if runs.len() == self.max_runs_per_tick {
                    break;
                }
                runs.push(due);
                next = every.next_after(due);
            }
            return Plan {
                runs,
                skipped: 0,
                missed: 0,
                next: next.unwrap_or(u64::MAX),
            };
        }
        let next = every.next_after(now).unwrap_or(u64::MAX);
        let Some(latest) = every.last_at_or_before(now).filter(|&t| t >= cursor) else {
            return Plan {
                runs: Vec::new(),
                skipped: 0,
                missed: 0,
                next,
            };
        };
        let older = every.count(cursor, latest, COUNT_CAP).saturating_sub(1);
        let on_time = match schedule.catch_up {
            CatchUp::Skip { tolerance } => now - latest <= millis(tolerance),
            _ => true,
        };
        if on_time {
            Plan {
                runs: vec![latest],
                skipped: older,
                missed: if schedule.catch_up == CatchUp::One {
                    older
                } else {
                    0
                },
                next,
            }
        } else {
            Plan {
                runs: Vec::new(),
                skipped: older + 1,
                missed: 0,
                next,
            }
        }
    }

    fn write(&self, key: &Key, stored: &StoredSchedule, expect: Expect) -> Result<()> {
        let bytes = codec::encode(key, stored)?;
        self.jobs.store().put(key, &bytes, expect).map(drop)
    }
}

/// The runs a tick makes of one schedule, and where its cursor goes.
struct Plan {
    runs: Vec<u64>,
    /// Due runs left out.
    skipped: u64,
    /// Older runs left out by [`CatchUp::One`], told to its run's job.
    missed: u64,
    /// The cursor after this tick; `u64::MAX` if no run is ever due again.
    next: u64,
}

/// The stored state of every schedule under `namespace` (the default is
/// [`default_namespace`]), in name order, whatever service defined them: what
/// the `jobsafe schedules list` command shows. A record that cannot be read
/// is listed in [`ScheduleList::unreadable`] with its key, and the others
/// are still read.
///
/// # Errors
/// Store errors of the scan.
pub fn list<S: Store + ?Sized>(store: &S, namespace: &Prefix) -> Result<ScheduleList> {
    let prefix = Prefix::new(
        namespace
            .segments()
            .iter()
            .map(String::as_str)
            .chain(["schedule"]),
    )?;
    let mut listed = ScheduleList::default();
    for page in store.scan(&prefix, 256) {
        for key in page? {
            let Some(name) = key.segments().last().cloned() else {
                continue;
            };
            match read(store, &key) {
                Ok(Some((stored, version))) => listed
                    .schedules
                    .push(ScheduleState::new(name, stored, version)),
                Ok(None) => {}
                Err(error) => listed.unreadable.push((key, error)),
            }
        }
    }
    Ok(listed)
}

/// What [`list`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ScheduleList {
    /// The schedules, in name order.
    pub schedules: Vec<ScheduleState>,
    /// Keys whose records could not be read, with the error for each.
    pub unreadable: Vec<(Key, Error)>,
}

fn record_key(namespace: &Prefix, name: &str) -> Result<Key> {
    let segments = namespace.segments().iter().map(String::as_str);
    Key::new(segments.chain(["schedule", name]))
}

fn read<S: Store + ?Sized>(
    store: &S,
    key: &Key,
) -> Result<Option<(StoredSchedule, crate::Version)>> {
    match store.get(key)? {
        None => Ok(None),
        Some(entry) => Ok(Some((codec::decode(key, &entry.value)?, entry.version))),
    }
}
