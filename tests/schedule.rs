//! Recurring schedules: each due run is made once, whoever ticks and however
//! the store fails; the catch-up policies after downtime; a clock that jumps;
//! a changed definition; a damaged record. The races run as threads over one
//! store and as processes over one LogStore (and one PostgreSQL schema, with
//! the feature `postgres` and a server: `bash .ci/postgres.sh`).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::ambiguous_store::{EVERY_WRITE, Fault, on_dir, on_log, on_mem};
use common::backends::SharedStore;
use common::child::{self, Child};
use common::hooked_store::{HookedStore, StoreOp};
use jobsafe::jobs::{JobFilter, NewJob};
use jobsafe::schedule::{self, CatchUp, Every, Schedule, Scheduler, Tick};
use jobsafe::{Clock, Expect, JobState, Key, ManualClock, MemStore, Prefix, SharedClock, Store};

const MINUTE: u64 = 60_000;
/// A due time of every schedule here: a multiple of an hour.
const START_MS: u64 = 1_796_601_600_000;

fn minutes(n: u64) -> Duration {
    Duration::from_millis(n * MINUTE)
}

/// Three schedules, one per catch-up policy, due every minute.
fn schedules() -> Vec<Schedule> {
    let every = || Every::interval(minutes(1)).unwrap();
    vec![
        Schedule::new("all", every(), NewJob::new("rollup"))
            .unwrap()
            .catch_up(CatchUp::All),
        Schedule::new("one", every(), NewJob::new("report")).unwrap(),
        Schedule::new("skip", every(), NewJob::new("reminder"))
            .unwrap()
            .catch_up(CatchUp::Skip {
                tolerance: Duration::from_secs(20),
            }),
    ]
}

fn scheduler_on<S: Store>(store: S, clock: SharedClock) -> Scheduler<S> {
    let jobs = JobState::new(store, clock.clone());
    let mut scheduler = Scheduler::new(jobs, clock).max_runs_per_tick(3);
    for schedule in schedules() {
        scheduler = scheduler.schedule(schedule).unwrap();
    }
    scheduler
}

/// The times the races tick at: irregular steps, some under a period, some
/// many periods long (downtime), one back in time.
fn tick_times() -> Vec<u64> {
    let steps: [i64; 14] = [0, 10, 50, 61, 5, 130, 200, 601, 1, 1, -300, 400, 59, 1_000];
    let mut t = START_MS as i64 + 7;
    steps
        .iter()
        .map(|step| {
            t += step * 1_000;
            t as u64
        })
        .collect()
}

/// The jobs of every schedule as `scheduler`'s store holds them, by id.
fn jobs_by_id<S: Store>(scheduler_jobs: &JobState<S>) -> BTreeSet<String> {
    scheduler_jobs
        .list(&JobFilter::new())
        .unwrap()
        .jobs
        .into_iter()
        .map(|job| job.id)
        .collect()
}

/// What one scheduler alone makes at `times`: the reference the races are
/// held to (with a fixed time per step, the runs made do not depend on who
/// ticks).
fn reference(times: &[u64]) -> (BTreeSet<String>, Vec<Counted>) {
    let clock = ManualClock::new(times[0]);
    let store = Arc::new(MemStore::new());
    let scheduler = scheduler_on(store.clone(), Arc::new(clock.clone()));
    for &t in times {
        clock.set(t);
        let mut tick = scheduler.tick();
        // Runs left for later ticks are made at the same time.
        while tick.next_due_ms.is_some_and(|due| due <= t) {
            assert!(tick.failed.is_empty(), "{:?}", tick.failed);
            tick = scheduler.tick();
        }
    }
    let counted = counted(&scheduler);
    let made = jobs_by_id(&JobState::new(store, Arc::new(clock)));
    assert!(made.len() > 20, "the reference made only {made:?}");
    (made, counted)
}

/// What a schedule's stored state counts: runs made, runs skipped, and
/// where its cursor is, by name.
type Counted = (String, u64, u64, u64);

/// The counts each schedule's state holds: only compare-and-set keeps them
/// exact under racing ticks.
fn counted<S: Store>(scheduler: &Scheduler<S>) -> Vec<Counted> {
    let mut states: Vec<Counted> = scheduler
        .list()
        .unwrap()
        .schedules
        .into_iter()
        .map(|s| (s.name, s.runs, s.skipped, s.next_due_ms))
        .collect();
    states.sort();
    states
}

/// Adds a tick's created runs to `created`, failing on one made twice.
fn tally(created: &mut BTreeMap<String, usize>, tick: &Tick) {
    assert!(tick.failed.is_empty(), "{:?}", tick.failed);
    for run in &tick.created {
        *created.entry(run.job_id.clone()).or_default() += 1;
    }
}

fn made_once(created: &BTreeMap<String, usize>) -> BTreeSet<String> {
    for (id, times) in created {
        assert_eq!(*times, 1, "run {id} was created {times} times");
    }
    created.keys().cloned().collect()
}

#[test]
fn racing_schedulers_make_each_run_once_on_mem() {
    race(Arc::new(MemStore::new()));
}

#[test]
fn racing_schedulers_make_each_run_once_on_log() {
    let dir = tempfile::tempdir().unwrap();
    race(Arc::new(
        jobsafe::LogStore::open(dir.path().join("store")).unwrap(),
    ));
}

#[cfg(feature = "postgres")]
#[test]
fn racing_schedulers_make_each_run_once_on_pg() {
    let mut schemas = common::pg::Schemas::default();
    race(Arc::new(schemas.fast_store()));
}

/// Four schedulers tick one store at the same times, as threads; every run
/// of the reference is created exactly once among them.
fn race(store: Arc<dyn Store>) {
    const RACERS: usize = 4;
    let times = tick_times();
    let clock = ManualClock::new(times[0]);
    // Each step: the clock is set, every racer ticks until nothing more is
    // due now, then the next step.
    let barrier = Arc::new(Barrier::new(RACERS + 1));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let scheduler = scheduler_on(store.clone(), Arc::new(clock.clone()));
            let (barrier, clock, steps) = (Arc::clone(&barrier), clock.clone(), times.len());
            std::thread::spawn(move || {
                let mut created = BTreeMap::new();
                for _ in 0..steps {
                    barrier.wait();
                    let now = clock.now_ms();
                    loop {
                        let tick = scheduler.tick();
                        tally(&mut created, &tick);
                        if tick.next_due_ms.is_none_or(|due| due > now) {
                            break;
                        }
                    }
                    barrier.wait();
                }
                created
            })
        })
        .collect();
    for &t in &times {
        clock.set(t);
        barrier.wait();
        barrier.wait();
    }
    let mut created = BTreeMap::new();
    for racer in racers {
        for (id, n) in racer.join().unwrap() {
            *created.entry(id).or_default() += n;
        }
    }
    let made = made_once(&created);
    let (expected, expected_counts) = reference(&times);
    assert_eq!(made, expected);
    let scheduler = scheduler_on(store.clone(), Arc::new(clock.clone()));
    assert_eq!(counted(&scheduler), expected_counts);
    let stored = jobs_by_id(&JobState::new(store, Arc::new(clock)));
    assert_eq!(stored, expected);
}

/// One scheduler with one schedule on a fresh store, started (its cursor
/// stored) at `START_MS`.
fn started(
    schedule: Schedule,
) -> (
    Scheduler<Arc<MemStore>>,
    ManualClock,
    JobState<Arc<MemStore>>,
) {
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(store, Arc::new(clock.clone()));
    let scheduler = Scheduler::new(jobs.clone(), Arc::new(clock.clone()))
        .max_runs_per_tick(4)
        .schedule(schedule)
        .unwrap();
    let tick = scheduler.tick();
    assert!(tick.created.is_empty() && tick.failed.is_empty());
    assert_eq!(
        tick.next_due_ms,
        Some(START_MS + MINUTE),
        "the first due time after now"
    );
    (scheduler, clock, jobs)
}

fn every_minute(catch_up: CatchUp) -> Schedule {
    Schedule::new(
        "s",
        Every::interval(minutes(1)).unwrap(),
        NewJob::new("work"),
    )
    .unwrap()
    .catch_up(catch_up)
}

fn due_times(tick: &Tick) -> Vec<u64> {
    tick.created.iter().map(|run| run.due_ms).collect()
}

#[test]
fn all_makes_every_missed_run_oldest_first_a_bounded_number_per_tick() {
    let (scheduler, clock, jobs) = started(every_minute(CatchUp::All));
    // Down for ten and a half minutes.
    let now = START_MS + 10 * MINUTE + 30_000;
    clock.set(now);
    let at = |k: u64| START_MS + k * MINUTE;
    let first = scheduler.tick();
    assert_eq!(due_times(&first), [at(1), at(2), at(3), at(4)]);
    assert_eq!(
        first.next_due_ms,
        Some(at(5)),
        "more are due now: tick again"
    );
    assert_eq!(due_times(&scheduler.tick()), [at(5), at(6), at(7), at(8)]);
    let last = scheduler.tick();
    assert_eq!(due_times(&last), [at(9), at(10)]);
    assert_eq!(last.next_due_ms, Some(at(11)));
    assert_eq!(last.skipped, 0);
    assert!(scheduler.tick().created.is_empty());
    let job = jobs.get(&format!("s@{}", at(3))).unwrap().unwrap();
    assert_eq!(job.kind, "work");
    assert_eq!(job.metadata["schedule"], "s");
    assert_eq!(job.metadata["due_ms"], at(3));
    assert_eq!(jobs.list(&JobFilter::new()).unwrap().jobs.len(), 10);
}

#[test]
fn one_makes_only_the_latest_missed_run_and_tells_it_how_many_it_left_out() {
    let (scheduler, clock, jobs) = started(every_minute(CatchUp::One));
    clock.set(START_MS + 10 * MINUTE + 30_000);
    let tick = scheduler.tick();
    let latest = START_MS + 10 * MINUTE;
    assert_eq!(due_times(&tick), [latest]);
    assert_eq!(tick.skipped, 9);
    let job = jobs.get(&format!("s@{latest}")).unwrap().unwrap();
    assert_eq!(job.metadata["missed"], 9);
    assert_eq!(jobs.list(&JobFilter::new()).unwrap().jobs.len(), 1);
    let state = &scheduler.list().unwrap().schedules[0];
    assert_eq!((state.runs, state.skipped), (1, 9));
    assert_eq!(state.last_due_ms, Some(latest));
    assert_eq!(state.next_due_ms, latest + MINUTE);
    assert_eq!(state.every, "every 60000 ms");
    assert_eq!(state.catch_up, "one");
}

#[test]
fn skip_makes_a_run_only_within_its_tolerance() {
    let tolerance = Duration::from_secs(20);
    let (scheduler, clock, _jobs) = started(every_minute(CatchUp::Skip { tolerance }));
    // Late by 30 s, and 9 older runs missed: nothing is made.
    clock.set(START_MS + 10 * MINUTE + 30_000);
    let tick = scheduler.tick();
    assert!(tick.created.is_empty());
    assert_eq!(tick.skipped, 10);
    // On time (5 s late): made.
    clock.set(START_MS + 11 * MINUTE + 5_000);
    assert_eq!(due_times(&scheduler.tick()), [START_MS + 11 * MINUTE]);
    // Exactly at the tolerance: still made.
    clock.set(START_MS + 12 * MINUTE + 20_000);
    assert_eq!(due_times(&scheduler.tick()), [START_MS + 12 * MINUTE]);
}

#[test]
fn a_clock_that_jumps_back_makes_no_run_twice() {
    let (scheduler, clock, jobs) = started(every_minute(CatchUp::All));
    clock.set(START_MS + 3 * MINUTE);
    assert_eq!(scheduler.tick().created.len(), 3);
    clock.set(START_MS + MINUTE);
    let back = scheduler.tick();
    assert!(back.created.is_empty() && back.existing.is_empty());
    assert_eq!(back.next_due_ms, Some(START_MS + 4 * MINUTE));
    clock.set(START_MS + 4 * MINUTE);
    assert_eq!(due_times(&scheduler.tick()), [START_MS + 4 * MINUTE]);
    assert_eq!(jobs.list(&JobFilter::new()).unwrap().jobs.len(), 4);
}

#[test]
fn a_changed_definition_starts_after_now_and_its_last_run() {
    let (scheduler, clock, jobs) = started(every_minute(CatchUp::All));
    clock.set(START_MS + 2 * MINUTE);
    assert_eq!(scheduler.tick().created.len(), 2);
    // The next deploy runs it every 5 minutes, 90 s after the last run.
    clock.set(START_MS + 2 * MINUTE + 30_000);
    let every_five = Schedule::new(
        "s",
        Every::interval(minutes(5)).unwrap(),
        NewJob::new("work"),
    )
    .unwrap()
    .catch_up(CatchUp::All);
    let redeployed = Scheduler::new(jobs.clone(), Arc::new(clock.clone()))
        .schedule(every_five)
        .unwrap();
    let tick = redeployed.tick();
    assert!(tick.created.is_empty(), "{:?}", tick.created);
    assert_eq!(tick.next_due_ms, Some(START_MS + 5 * MINUTE));
    clock.set(START_MS + 5 * MINUTE);
    assert_eq!(due_times(&redeployed.tick()), [START_MS + 5 * MINUTE]);
    assert_eq!(
        redeployed.list().unwrap().schedules[0].every,
        "every 300000 ms"
    );
}

/// An instance whose clock is behind ticks between another's read of the
/// cursor and its write: the cursor never moves back, and no run is made
/// or counted twice.
#[test]
fn a_stale_tick_never_moves_the_cursor_back() {
    let store = Arc::new(HookedStore::default());
    let behind = ManualClock::new(START_MS);
    let ahead = ManualClock::new(START_MS);
    let on = |clock: &ManualClock| {
        let clock: SharedClock = Arc::new(clock.clone());
        Scheduler::new(JobState::new(store.clone(), clock.clone()), clock)
            .max_runs_per_tick(2)
            .schedule(every_minute(CatchUp::All))
            .unwrap()
    };
    let (slow, fast) = (on(&behind), on(&ahead));
    slow.tick();
    behind.set(START_MS + 2 * MINUTE);
    ahead.set(START_MS + 5 * MINUTE);
    // Just before the slow instance writes its cursor, the fast one makes
    // every run due by its clock.
    let cursor = Key::new(["schedules", "schedule", "s"]).unwrap();
    let fast_tick = {
        let fast = fast.clone();
        let made = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = Arc::clone(&made);
        store.once(
            move |op| matches!(op, StoreOp::Write(key) if *key == &cursor),
            move || {
                for _ in 0..3 {
                    out.lock().unwrap().extend(fast.tick().created);
                }
            },
        );
        made
    };
    let slow_tick = slow.tick();
    assert!(slow_tick.failed.is_empty(), "{:?}", slow_tick.failed);
    let fast_made: Vec<u64> = fast_tick.lock().unwrap().iter().map(|r| r.due_ms).collect();
    let at = |k: u64| START_MS + k * MINUTE;
    // The slow tick made its two runs before the fast one came in.
    assert_eq!(due_times(&slow_tick), [at(1), at(2)]);
    assert_eq!(fast_made, [at(3), at(4), at(5)]);
    let state = &fast.list().unwrap().schedules[0];
    assert_eq!((state.runs, state.next_due_ms), (5, at(6)));
    // Later ticks of the slow instance make nothing again.
    behind.set(at(4));
    let again = slow.tick();
    assert!(again.created.is_empty() && again.existing.is_empty());
}

#[test]
fn a_damaged_record_is_reported_by_key_and_the_other_schedules_still_run() {
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(MemStore::new());
    let scheduler = scheduler_on(store.clone(), Arc::new(clock.clone()));
    scheduler.tick();
    let key = Key::new(["schedules", "schedule", "one"]).unwrap();
    let current = store.get(&key).unwrap().unwrap();
    let damaged = b"{\"schema\":1,\"every\":";
    store
        .put(&key, damaged, Expect::Version(current.version))
        .unwrap();
    clock.set(START_MS + MINUTE);
    let tick = scheduler.tick();
    assert_eq!(tick.failed.len(), 1);
    let (name, error) = &tick.failed[0];
    assert_eq!(name, "one");
    assert!(
        error.to_string().contains("schedules/schedule/one"),
        "{error}"
    );
    let made: BTreeSet<_> = tick.created.iter().map(|r| r.schedule.as_str()).collect();
    assert_eq!(made, BTreeSet::from(["all", "skip"]));
    // Nothing was overwritten: the damage stays for an operator to see.
    assert_eq!(store.get(&key).unwrap().unwrap().value, damaged);
    let listed = schedule::list(&*store, &schedule::default_namespace()).unwrap();
    assert_eq!(listed.schedules.len(), 2);
    assert_eq!(listed.unreadable.len(), 1);
    assert_eq!(listed.unreadable[0].0, key);
}

#[test]
fn names_and_settings_are_checked() {
    let every = || Every::interval(minutes(1)).unwrap();
    for bad in ["", "two words", "a/b", "naïve", &"x".repeat(65)] {
        let err = Schedule::new(bad, every(), NewJob::new("k")).unwrap_err();
        assert!(
            err.to_string().contains("schedule's name"),
            "{bad:?}: {err}"
        );
    }
    assert!(Schedule::new("x".repeat(64), every(), NewJob::new("k")).is_ok());
    let clock: SharedClock = Arc::new(ManualClock::new(START_MS));
    let scheduler = Scheduler::new(JobState::new(MemStore::new(), clock.clone()), clock)
        .schedule(Schedule::new("a", every(), NewJob::new("k")).unwrap())
        .unwrap();
    let err = scheduler
        .schedule(Schedule::new("a", every(), NewJob::new("k")).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("\"a\" was given already"), "{err}");
}

#[test]
fn another_namespace_keeps_its_own_schedules() {
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(store.clone(), Arc::new(clock.clone()));
    let ns = Prefix::new(["tenant-a", "schedules"]).unwrap();
    let scheduler = Scheduler::new(jobs, Arc::new(clock.clone()))
        .namespace(ns.clone())
        .unwrap()
        .schedule(every_minute(CatchUp::One))
        .unwrap();
    scheduler.tick();
    assert_eq!(schedule::list(&*store, &ns).unwrap().schedules.len(), 1);
    let default = schedule::list(&*store, &schedule::default_namespace()).unwrap();
    assert!(default.schedules.is_empty());
}

/// Every write position of a tick, failing in every way a store fails:
/// the run is made once, by that tick or the next, and never lost.
#[test]
fn store_faults_neither_lose_nor_double_a_run() {
    for make in [on_mem, on_dir, on_log] {
        faults_on(make);
    }
}

#[cfg(feature = "postgres")]
#[test]
fn store_faults_neither_lose_nor_double_a_run_on_pg() {
    faults_on(common::ambiguous_store::on_pg);
}

fn faults_on(make: fn() -> common::ambiguous_store::Bench) {
    for fault in Fault::ALL {
        // A tick with a due run writes the run's job, then the cursor.
        for skip in 0..2 {
            for count in [1, EVERY_WRITE] {
                let bench = make();
                let case = format!("{} {fault:?} skip {skip} count {count}", bench.name);
                let store: Arc<dyn Store> = Arc::new(bench.store.clone());
                let clock: SharedClock = bench.shared_clock();
                let jobs = JobState::new(store.clone(), clock.clone());
                let scheduler = Scheduler::new(jobs.clone(), clock.clone())
                    .schedule(every_minute(CatchUp::All))
                    .unwrap();
                assert!(scheduler.tick().failed.is_empty(), "{case}");
                let due = scheduler.list().unwrap().schedules[0].next_due_ms;
                bench.clock.set(due);
                bench.store.fail_writes(fault, skip, count);
                let faulted = scheduler.tick();
                bench.store.heal();
                // Created: at most once each. Seen: created, or found made
                // (by the faulted tick's write, whose outcome it may not know).
                let mut created = BTreeMap::new();
                let mut seen = BTreeSet::new();
                let mut count = |tick: &Tick| {
                    for run in &tick.created {
                        *created.entry(run.job_id.clone()).or_insert(0) += 1;
                    }
                    seen.extend(
                        tick.created
                            .iter()
                            .chain(&tick.existing)
                            .map(|r| r.job_id.clone()),
                    );
                };
                count(&faulted);
                // Time moved on with the re-reads; the next ticks make what
                // is due by then, the faulted run first.
                for _ in 0..3 {
                    let tick = scheduler.tick();
                    assert!(tick.failed.is_empty(), "{case}: {:?}", tick.failed);
                    count(&tick);
                }
                assert!(seen.contains(&format!("s@{due}")), "{case}: {seen:?}");
                for (id, n) in &created {
                    assert_eq!(*n, 1, "{case}: run {id} created {n} times");
                }
                assert_eq!(jobs_by_id(&jobs), seen, "{case}");
                assert!(
                    scheduler.list().unwrap().schedules[0].next_due_ms > due,
                    "{case}"
                );
            }
        }
    }
}

#[cfg(feature = "async")]
#[test]
fn an_async_tick_makes_the_same_runs() {
    let (scheduler, clock, jobs) = started(every_minute(CatchUp::All));
    clock.set(START_MS + 2 * MINUTE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let tick = runtime.block_on(scheduler.tick_async());
    assert_eq!(due_times(&tick), [START_MS + MINUTE, START_MS + 2 * MINUTE]);
    assert_eq!(jobs.list(&JobFilter::new()).unwrap().jobs.len(), 2);
}

// Processes: three instances tick one store at the times the parent sends.

const PROCESS_TEST: &str = "processes_ticking_one_log_store_make_each_run_once";
#[cfg(feature = "postgres")]
const PROCESS_TEST_PG: &str = "processes_ticking_one_pg_schema_make_each_run_once";

#[test]
fn processes_ticking_one_log_store_make_each_run_once() {
    if child::role().as_deref() == Some("ticker") {
        return tick_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    race_processes(PROCESS_TEST, SharedStore::Log(dir.path().join("store")));
}

#[cfg(feature = "postgres")]
#[test]
fn processes_ticking_one_pg_schema_make_each_run_once() {
    if child::role().as_deref() == Some("ticker") {
        return tick_in_child();
    }
    let mut schemas = common::pg::Schemas::default();
    race_processes(PROCESS_TEST_PG, SharedStore::Pg(schemas.fresh()));
}

fn race_processes(test: &str, store: SharedStore) {
    const PROCESSES: usize = 3;
    // Opened first, so that the children find it made.
    let opened = store.open();
    let times = tick_times();
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|_| Child::spawn(test, "ticker", &store.vars()))
        .collect();
    let mut created = BTreeMap::new();
    for &t in &times {
        for child in &mut children {
            child.send(&format!("tick {t}"));
        }
        for child in &mut children {
            loop {
                let report = child.expect_report();
                if report == "done" {
                    break;
                }
                let id = report
                    .strip_prefix("created ")
                    .unwrap_or_else(|| panic!("{report}"));
                *created.entry(id.to_owned()).or_insert(0) += 1;
            }
        }
    }
    for child in children {
        child.finish();
    }
    let made = made_once(&created);
    let (expected, expected_counts) = reference(&times);
    assert_eq!(made, expected);
    let clock: SharedClock = Arc::new(ManualClock::new(START_MS));
    assert_eq!(
        counted(&scheduler_on(opened.clone(), clock.clone())),
        expected_counts
    );
    assert_eq!(jobs_by_id(&JobState::new(opened, clock)), expected);
}

fn tick_in_child() {
    let store = SharedStore::from_env().open();
    let clock = ManualClock::new(START_MS);
    let scheduler = scheduler_on(store, Arc::new(clock.clone()));
    while let Some(line) = child::receive() {
        let now: u64 = line.strip_prefix("tick ").unwrap().parse().unwrap();
        clock.set(now);
        loop {
            let tick = scheduler.tick();
            assert!(tick.failed.is_empty(), "{:?}", tick.failed);
            for run in &tick.created {
                child::report(&format!("created {}", run.job_id));
            }
            if tick.next_due_ms.is_none_or(|due| due > now) {
                break;
            }
        }
        child::report("done");
    }
}
