//! Every write of `JobState` whose store call fails in a way that may hide its
//! success, on every backend, in four cases: the write committed and the call
//! failed (the reply lost: the call must return what it wrote, its event
//! appended and handed to subscribers once); the call failed once and nothing
//! committed (written again, once); every call failed and nothing committed
//! (not reported as done, nothing handed over); the write committed and the
//! store stayed unreachable for reads too (the call must say the outcome is
//! unknown, with the attempt id, and a repeated create or start with that id
//! must be recognised as the same call; the job's subscribers must read the
//! store, and get the event once it answers).
//!
//! Then the cases where another writer changes the job between the lost reply
//! and the read-back, where the failed write arrives late, and what delete,
//! purge and recovery report.
//!
//! Time is a `ManualClock` whose sleeps pass at once, so the re-reads reach
//! their deadline without waiting. The PgStore cases need the feature
//! `postgres` and a server (`bash .ci/postgres.sh` runs them).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use common::ambiguous_store::{
    AmbiguousStore, Bench, EVERY_WRITE, Fault, RESOLVE_WITHIN, on_dir, on_log, on_mem, unreachable,
};
use jobsafe::jobs::{Claim, FailureKind, JobError, JobStatus, NewJob, RecoveryAction};
use jobsafe::store::{Applied, ListPage, Quarantined};
use jobsafe::{
    AttemptId, Batch, Entry, Error, Expect, FencingToken, JobState, Key, Prefix, SharedClock,
    Store, Version,
};
use parking_lot::Mutex;
use serde_json::json;

type Jobs<S> = JobState<S>;

fn jobs_on<S: Store>(store: S, clock: SharedClock) -> Jobs<S> {
    JobState::builder(store, clock)
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap()
}

/// The jobs as the store underneath holds them, to look behind the faults.
fn behind(bench: &Bench) -> Jobs<&dyn Store> {
    JobState::new(bench.store.inner(), bench.shared_clock())
}

/// The version of job `id` in the store underneath, and the kinds of its
/// events after sequence number `after`.
fn stored(bench: &Bench, id: &str, after: u64) -> (Option<u64>, Vec<String>) {
    let jobs = behind(bench);
    let Some(job) = jobs.get(id).unwrap() else {
        return (None, Vec::new());
    };
    let events = jobs.events_since(id, after).unwrap().events;
    let kinds = events.into_iter().map(|e| e.kind).collect();
    (Some(job.version.get()), kinds)
}

/// A job's state before a write.
#[derive(Clone, Copy, Debug)]
enum Before {
    Queued,
    Running,
    Failed,
}

/// What a write says it did: the sequence number of the event it appended.
type Write = fn(&Jobs<AmbiguousStore>, &str, &Claim) -> jobsafe::Result<Option<u64>>;

/// Each write of a job: the state it starts from, the event it appends.
fn writes() -> Vec<(&'static str, Before, Option<&'static str>, Write)> {
    vec![
        ("start", Before::Queued, Some("started"), |jobs, id, _| {
            jobs.start(id, None).map(|claim| claim.started_seq)
        }),
        (
            "set_stage",
            Before::Running,
            Some("stage"),
            |jobs, _, claim| Ok(jobs.set_stage(claim, "encode")?.last_event_seq()),
        ),
        (
            "progress",
            Before::Running,
            Some("progress"),
            |jobs, _, c| Ok(jobs.progress(c, "half way")?.last_event_seq()),
        ),
        ("heartbeat", Before::Running, None, |jobs, _, claim| {
            jobs.heartbeat(claim).map(|_| None)
        }),
        (
            "append_event",
            Before::Running,
            Some("note"),
            |jobs, _, c| Ok(Some(jobs.append_event(c, "note", json!({ "n": 1 }))?.seq)),
        ),
        (
            "complete",
            Before::Running,
            Some("done"),
            |jobs, _, claim| {
                Ok(jobs
                    .complete(claim, json!({ "ok": true }))?
                    .last_event_seq())
            },
        ),
        (
            "fail transient",
            Before::Running,
            Some("retry"),
            |jobs, _, c| {
                let failure = FailureKind::Transient { retry_at_ms: 0 };
                Ok(jobs
                    .fail(c, JobError::new("busy"), failure)?
                    .last_event_seq())
            },
        ),
        (
            "fail permanent",
            Before::Running,
            Some("error"),
            |jobs, _, c| {
                let failure = FailureKind::Permanent;
                Ok(jobs.fail(c, JobError::new("no"), failure)?.last_event_seq())
            },
        ),
        (
            "cancel",
            Before::Running,
            Some("cancelled"),
            |jobs, id, _| Ok(jobs.cancel(id)?.last_event_seq()),
        ),
        ("retry", Before::Failed, Some("requeued"), |jobs, id, _| {
            Ok(jobs.retry(id)?.last_event_seq())
        }),
        (
            "recover",
            Before::Running,
            Some("requeued"),
            |jobs, id, _| {
                let recovered = jobs.recover_where(RecoveryAction::Requeue, |job| job.id == id)?;
                assert_eq!(recovered.len(), 1, "one job to recover");
                Ok(recovered[0].last_event_seq())
            },
        ),
    ]
}

/// A job in state `before`, made while the store answers, and the claim of
/// its running attempt (a claim on nothing for a queued job).
fn prepare(jobs: &Jobs<AmbiguousStore>, before: Before) -> (String, Claim) {
    let job = jobs.create(NewJob::new("encode")).unwrap();
    if let Before::Queued = before {
        return (job.id.clone(), Claim::new(job.id, 0, None));
    }
    let claim = jobs.start(&job.id, None).unwrap();
    if let Before::Failed = before {
        jobs.fail(&claim, JobError::new("no"), FailureKind::Permanent)
            .unwrap();
    }
    (job.id, claim)
}

fn write_cases(bench: &Bench) {
    let jobs = jobs_on(bench.store.clone(), bench.shared_clock());
    let bench_name = bench.name;
    for (write_name, before, kind, write) in writes() {
        let expected: Vec<String> = kind.iter().map(|k| (*k).to_owned()).collect();
        let cases = [
            (Fault::CommitThenFail, 1),
            (Fault::FailWithoutCommit, 1),
            (Fault::FailWithoutCommit, EVERY_WRITE),
            (Fault::CommitThenFailAndReadsFail, 1),
        ];
        for (fault, count) in cases {
            let name = format!("{bench_name}, {write_name}, {fault:?} x{count}");
            let (id, claim) = prepare(&jobs, before);
            let (version, _) = stored(bench, &id, 0);
            let after = jobs.events_since(&id, 0).unwrap().next_seq - 1;
            let mut live = jobs.subscribe(&id, after).unwrap();

            bench.store.fail_writes(fault, 0, count);
            let result = write(&jobs, &id, &claim);
            if fault == Fault::CommitThenFailAndReadsFail {
                // Told to read the store while it cannot be read: it says so,
                // and is still owed the read once the store answers.
                assert!(live.try_next_event().is_err(), "{name}");
            }
            bench.store.heal();

            let (now_at, appended) = stored(bench, &id, after);
            let mut handed = Vec::new();
            while let Some(event) = live.try_next_event().unwrap() {
                handed.push(event.seq);
            }
            let seq = kind.map(|_| after + 1);
            // A subscriber that joins after `error` is told the stream ended
            // (the job had not moved on): what the retry hands over is seen
            // by the unit tests of the hub instead.
            let will_see = seq.filter(|_| !matches!(before, Before::Failed));
            let lands = !(fault == Fault::FailWithoutCommit && count == EVERY_WRITE);
            if lands {
                // Written once, whatever happened to the replies.
                assert_ne!(now_at, version, "{name}: the write landed");
                assert_eq!(appended, expected, "{name}: its event, once");
            } else {
                assert_eq!(now_at, version, "{name}: nothing written");
                assert_eq!(appended, [] as [String; 0], "{name}");
            }
            match fault {
                Fault::CommitThenFail | Fault::FailWithoutCommit if lands => {
                    let said = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                    // The call returns the event it appended, handed over once.
                    assert_eq!(said, seq, "{name}");
                    assert_eq!(handed, will_see.into_iter().collect::<Vec<_>>(), "{name}");
                }
                Fault::FailWithoutCommit => {
                    let e = result.unwrap_err();
                    assert!(e.is_transient() && !e.is_ambiguous(), "{name}: {e}");
                    assert_eq!(handed, [] as [u64; 0], "{name}");
                }
                Fault::CommitThenFailAndReadsFail | Fault::CommitThenFail => {
                    let e = result.unwrap_err();
                    assert!(e.is_ambiguous() && e.is_transient(), "{name}: {e}");
                    let attempt = e.attempt_id().unwrap();
                    assert!(e.to_string().contains(attempt.as_str()), "{name}: {e}");
                    // The call does not say it was done, but the write landed,
                    // and a subscriber is told to read the store: once the
                    // store answers, it has the event, without waiting for a
                    // later one (which may never come).
                    assert_eq!(handed, will_see.into_iter().collect::<Vec<_>>(), "{name}");
                    if write_name == "start" {
                        repeated_start(&jobs, &id, attempt, after + 1, &name);
                    }
                }
            }
        }
    }
    assert!(
        bench.store.injected() >= 40,
        "{bench_name}: faults were injected"
    );
}

/// The start whose outcome was unknown, repeated with its attempt id, gets
/// the claim it had taken; any other start finds the job running.
fn repeated_start(
    jobs: &Jobs<AmbiguousStore>,
    id: &str,
    attempt: &AttemptId,
    started_seq: u64,
    name: &str,
) {
    let claim = jobs.start_attempt(id, None, attempt).unwrap();
    assert_eq!(
        (claim.attempt, claim.started_seq),
        (1, Some(started_seq)),
        "{name}"
    );
    assert_eq!(
        jobs.start_attempt(id, None, attempt).unwrap(),
        claim,
        "{name}"
    );
    let other = jobs.start(id, None).unwrap_err();
    assert!(other.is_invalid_transition(), "{name}: {other}");
    // The claim is the running attempt's: its changes are accepted.
    jobs.progress(&claim, "resumed").unwrap();
}

fn create_cases(bench: &Bench) {
    let jobs = jobs_on(bench.store.clone(), bench.shared_clock());
    let name = bench.name;

    // The reply lost: the job it created.
    bench.store.fail_writes(Fault::CommitThenFail, 0, 1);
    let job = jobs.create(NewJob::new("encode").owner("a")).unwrap();
    assert_eq!(behind(bench).get(&job.id).unwrap(), Some(job), "{name}");

    // The request lost once: created on the second write.
    bench.store.fail_writes(Fault::FailWithoutCommit, 0, 1);
    let job = jobs.create(NewJob::new("encode").id("c2")).unwrap();
    assert_eq!(behind(bench).get("c2").unwrap(), Some(job), "{name}");

    // Every request lost: an error that is not ambiguous, nothing created.
    let attempt = AttemptId::new();
    bench
        .store
        .fail_writes(Fault::FailWithoutCommit, 0, EVERY_WRITE);
    let e = jobs
        .create(NewJob::new("encode").attempt(attempt.clone()))
        .unwrap_err();
    bench.store.heal();
    assert!(e.is_transient() && !e.is_ambiguous(), "{name}: {e}");
    assert_eq!(behind(bench).get(attempt.as_str()).unwrap(), None, "{name}");

    // Reads failing too: ambiguous, with the attempt id; the repeat with that
    // id gets the job the first call created, as it is now.
    for chosen in [None, Some("c4")] {
        let new = || {
            let new = NewJob::new("encode");
            chosen.map_or(new.clone(), |id| new.id(id))
        };
        bench
            .store
            .fail_writes(Fault::CommitThenFailAndReadsFail, 0, 1);
        let e = jobs.create(new()).unwrap_err();
        bench.store.heal();
        assert!(e.is_ambiguous(), "{name}: {e}");
        let attempt = e.attempt_id().unwrap().clone();
        let id = chosen.unwrap_or(attempt.as_str()).to_owned();
        let created = behind(bench).get(&id).unwrap().unwrap();
        let claim = jobs.start(&id, None).unwrap();
        let again = jobs.create(new().attempt(attempt.clone())).unwrap();
        assert_eq!(again.id, id, "{name}");
        assert_eq!(again.created_ms, created.created_ms, "{name}");
        assert_eq!(again.status, JobStatus::Running, "{name}: as it is now");
        assert_eq!(again.attempt, claim.attempt, "{name}");
        // Another create of that id is a conflict.
        let other = jobs.create(new().id(id.as_str())).unwrap_err();
        assert!(other.is_conflict(), "{name}: {other}");
    }
}

#[test]
fn job_writes_learn_their_outcome_on_mem() {
    let bench = on_mem();
    create_cases(&bench);
    write_cases(&bench);
}

#[test]
fn job_writes_learn_their_outcome_on_dir() {
    let bench = on_dir();
    create_cases(&bench);
    write_cases(&bench);
}

#[test]
fn job_writes_learn_their_outcome_on_log() {
    let bench = on_log();
    create_cases(&bench);
    write_cases(&bench);
}

#[cfg(feature = "postgres")]
#[test]
fn job_writes_learn_their_outcome_on_pg() {
    let bench = common::ambiguous_store::on_pg();
    create_cases(&bench);
    write_cases(&bench);
}

/// What the next write does instead of answering.
enum Meddle {
    /// Applied, then `then` runs on the store underneath (another writer
    /// changing the job), then the call fails.
    Commit(Hook),
    /// Not applied, `then` runs, and the call fails.
    Drop(Hook),
    /// Not applied yet, and the call fails; it is applied just before the
    /// next write (it arrived late).
    Delay,
}

type Hook = Box<dyn FnOnce(&dyn Store) + Send>;

/// A store over a bench's store whose next write meddles as planned.
#[derive(Clone)]
struct Meddler {
    store: AmbiguousStore,
    next: Arc<Mutex<Option<Meddle>>>,
    late: Arc<Mutex<Option<Hook>>>,
}

impl fmt::Debug for Meddler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meddler").finish_non_exhaustive()
    }
}

impl Meddler {
    fn new(bench: &Bench) -> Meddler {
        Meddler {
            store: bench.store.clone(),
            next: Arc::new(Mutex::new(None)),
            late: Arc::new(Mutex::new(None)),
        }
    }

    fn next_write(&self, meddle: Meddle) {
        *self.next.lock() = Some(meddle);
    }

    fn write<T>(
        &self,
        what: &str,
        write: impl FnOnce(&dyn Store) -> jobsafe::Result<T> + Send + 'static,
    ) -> jobsafe::Result<T> {
        let inner = self.store.inner();
        if let Some(late) = self.late.lock().take() {
            late(inner);
        }
        match self.next.lock().take() {
            None => write(inner),
            Some(Meddle::Commit(then)) => {
                write(inner).unwrap();
                then(inner);
                Err(unreachable(what))
            }
            Some(Meddle::Drop(then)) => {
                then(inner);
                Err(unreachable(what))
            }
            Some(Meddle::Delay) => {
                *self.late.lock() = Some(Box::new(move |inner| {
                    write(inner).unwrap();
                }));
                Err(unreachable(what))
            }
        }
    }
}

impl Store for Meddler {
    fn get(&self, key: &Key) -> jobsafe::Result<Option<Entry>> {
        self.store.get(key)
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> jobsafe::Result<Version> {
        let (key, value) = (key.clone(), value.to_vec());
        self.write(&key.to_string(), move |s| s.put(&key, &value, expect))
    }

    fn delete(&self, key: &Key, expect: Expect) -> jobsafe::Result<bool> {
        let key = key.clone();
        self.write(&key.to_string(), move |s| s.delete(&key, expect))
    }

    fn list(
        &self,
        prefix: &Prefix,
        after: Option<&Key>,
        limit: usize,
    ) -> jobsafe::Result<ListPage> {
        self.store.list(prefix, after, limit)
    }

    fn apply(&self, batch: &Batch) -> jobsafe::Result<Vec<Applied>> {
        let batch = batch.clone();
        self.write("batch", move |s| s.apply(&batch))
    }

    fn quarantine(&self, key: &Key) -> jobsafe::Result<Option<Quarantined>> {
        self.store.quarantine(key)
    }

    fn is_machine_local(&self) -> bool {
        self.store.is_machine_local()
    }
}

/// Another writer, on the store underneath: cancels job `id`, keeping at
/// most `max_events` events.
fn cancel_by_another(clock: &SharedClock, id: &str, max_events: u64) -> Hook {
    let (clock, id) = (clock.clone(), id.to_owned());
    Box::new(move |inner| {
        let jobs = JobState::builder(inner, clock)
            .max_events(max_events)
            .build()
            .unwrap();
        jobs.cancel(&id).unwrap();
    })
}

fn moved_on_cases(bench: &Bench) {
    let meddler = Meddler::new(bench);
    let clock = bench.shared_clock();
    let jobs = jobs_on(meddler.clone(), clock.clone());
    let name = bench.name;
    let running = || {
        let job = jobs.create(NewJob::new("encode")).unwrap();
        jobs.start(&job.id, None).unwrap()
    };
    let kinds = |id: &str| stored(bench, id, 0).1;

    // Landed, then another writer moved the job on before the read-back: the
    // call still returns its own event, appended and handed over once.
    let claim = running();
    let mut live = jobs.subscribe(&claim.job_id, 1).unwrap();
    meddler.next_write(Meddle::Commit(cancel_by_another(
        &clock,
        &claim.job_id,
        1000,
    )));
    let event = jobs
        .append_event(&claim, "note", json!({ "n": 1 }))
        .unwrap();
    assert_eq!((event.seq, event.kind.as_str()), (2, "note"), "{name}");
    assert_eq!(
        kinds(&claim.job_id),
        ["started", "note", "cancelled"],
        "{name}"
    );
    assert_eq!(
        live.try_next_event().unwrap().map(|e| e.seq),
        Some(2),
        "{name}"
    );

    // The same for a write that returns the job: the job as read back.
    let claim = running();
    meddler.next_write(Meddle::Commit(cancel_by_another(
        &clock,
        &claim.job_id,
        1000,
    )));
    let job = jobs.progress(&claim, "half way").unwrap();
    assert_eq!(job.status, JobStatus::Cancelled, "{name}");
    assert_eq!(job.progress.as_deref(), Some("half way"), "{name}");
    assert_eq!(kinds(&claim.job_id), ["started", "progress", "cancelled"]);

    // Not landed, and another writer took the sequence number: decided
    // again, on a cancelled job, so refused; nothing of it stored.
    let claim = running();
    let mut live = jobs.subscribe(&claim.job_id, 1).unwrap();
    meddler.next_write(Meddle::Drop(cancel_by_another(&clock, &claim.job_id, 1000)));
    let e = jobs.append_event(&claim, "note", json!({})).unwrap_err();
    assert!(e.is_invalid_transition(), "{name}: {e}");
    assert_eq!(kinds(&claim.job_id), ["started", "cancelled"], "{name}");
    let handed = live.try_next_event().unwrap();
    assert_eq!(handed.map(|e| e.kind), None, "{name}: nothing handed over");

    // A start that landed, then another start took the job over: the claim
    // of the attempt it started, stale now.
    let job = jobs.create(NewJob::new("encode")).unwrap();
    let id = job.id.clone();
    let takeover = {
        let (clock, id) = (clock.clone(), id.clone());
        Box::new(move |inner: &dyn Store| {
            let token = Some(FencingToken::new(10));
            JobState::new(inner, clock).start(&id, token).unwrap();
        })
    };
    meddler.next_write(Meddle::Commit(takeover));
    let claim = jobs.start(&job.id, None).unwrap();
    assert_eq!((claim.attempt, claim.started_seq), (1, Some(1)), "{name}");
    let stale = jobs.progress(&claim, "late").unwrap_err();
    assert!(
        matches!(stale, Error::StaleWorker { .. }),
        "{name}: {stale}"
    );

    // The failed write arrives late, after the read-back found it missing and
    // while it is written again: it counts, once.
    let claim = running();
    meddler.next_write(Meddle::Delay);
    let event = jobs.append_event(&claim, "note", json!({})).unwrap();
    assert_eq!(event.seq, 2, "{name}");
    assert_eq!(kinds(&claim.job_id), ["started", "note"], "{name}");
    meddler.next_write(Meddle::Delay);
    let job = jobs.complete(&claim, json!({})).unwrap();
    assert_eq!(job.status, JobStatus::Complete, "{name}");
    assert_eq!(kinds(&claim.job_id), ["started", "note", "done"], "{name}");
    meddler.next_write(Meddle::Delay);
    let job = jobs.create(NewJob::new("encode").id("late")).unwrap();
    assert_eq!(behind(bench).get("late").unwrap(), Some(job), "{name}");

    // A heartbeat appends no event to tell by: if the job moved on, it is
    // decided again, here on a cancelled job.
    let claim = running();
    meddler.next_write(Meddle::Commit(cancel_by_another(
        &clock,
        &claim.job_id,
        1000,
    )));
    let e = jobs.heartbeat(&claim).unwrap_err();
    assert!(e.is_invalid_transition(), "{name}: {e}");

    // Landed, but the job moved on so far that its log dropped the event that
    // would tell: unknown.
    let short = JobState::builder(meddler.clone(), clock.clone())
        .max_events(1)
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap();
    let job = short.create(NewJob::new("encode")).unwrap();
    let claim = short.start(&job.id, None).unwrap();
    let mut live = short.subscribe(&job.id, 1).unwrap();
    meddler.next_write(Meddle::Commit(cancel_by_another(&clock, &job.id, 1)));
    let e = short.append_event(&claim, "note", json!({})).unwrap_err();
    assert!(e.is_ambiguous(), "{name}: {e}");
    assert!(e.to_string().contains("dropped"), "{name}: {e}");
    assert_eq!(kinds(&job.id), ["cancelled"], "{name}");
    // The subscriber is told to read the store, and gets what it holds: the
    // other writer's `cancelled` (the note, had it landed, was dropped).
    let handed = live.try_next_event().unwrap();
    assert_eq!(
        handed.map(|e| e.kind).as_deref(),
        Some("cancelled"),
        "{name}"
    );
}

#[test]
fn another_writer_between_the_write_and_its_read_back_on_mem() {
    moved_on_cases(&on_mem());
}

#[test]
fn another_writer_between_the_write_and_its_read_back_on_dir() {
    moved_on_cases(&on_dir());
}

#[test]
fn another_writer_between_the_write_and_its_read_back_on_log() {
    moved_on_cases(&on_log());
}

#[cfg(feature = "postgres")]
#[test]
fn another_writer_between_the_write_and_its_read_back_on_pg() {
    moved_on_cases(&common::ambiguous_store::on_pg());
}

/// Delete, purge and recovery never report done what did not land.
fn maintenance_cases(bench: &Bench) {
    let jobs = jobs_on(bench.store.clone(), bench.shared_clock());
    // The index of open jobs built while the store answers: its first
    // listing writes the mark, and would meet the faults meant for the
    // recovery's own write.
    jobs.list_open().unwrap();
    let name = bench.name;
    let finished = || {
        let job = jobs.create(NewJob::new("encode")).unwrap();
        jobs.cancel(&job.id).unwrap();
        job.id
    };
    let exists = |id: &str| behind(bench).get(id).unwrap().is_some();

    // Delete, every request lost: an error, the job still there.
    let id = finished();
    bench
        .store
        .fail_writes(Fault::FailWithoutCommit, 0, EVERY_WRITE);
    let e = jobs.delete(&id).unwrap_err();
    bench.store.heal();
    assert!(e.is_transient(), "{name}: {e}");
    assert!(exists(&id), "{name}");

    // Delete, the reply lost: an error, as it came; deleted, and a repeated
    // delete finds nothing.
    bench.store.fail_writes(Fault::CommitThenFail, 0, 1);
    assert!(jobs.delete(&id).is_err(), "{name}");
    assert!(!exists(&id), "{name}");
    assert!(!jobs.delete(&id).unwrap(), "{name}");

    // Purge, every request lost: an error, nothing removed.
    let id = finished();
    bench
        .store
        .fail_writes(Fault::FailWithoutCommit, 0, EVERY_WRITE);
    let e = jobs.purge(Duration::ZERO, Duration::ZERO).unwrap_err();
    bench.store.heal();
    assert!(e.is_transient(), "{name}: {e}");
    assert!(exists(&id), "{name}");
    let counts = jobs.purge(Duration::ZERO, Duration::ZERO).unwrap();
    assert!(counts.total() >= 1 && !exists(&id), "{name}");

    // Recovery, every request lost: an error, the job still running.
    let job = jobs.create(NewJob::new("encode")).unwrap();
    jobs.start(&job.id, None).unwrap();
    let ours = |j: &jobsafe::jobs::Job| j.id == job.id;
    bench
        .store
        .fail_writes(Fault::FailWithoutCommit, 0, EVERY_WRITE);
    let e = jobs
        .recover_where(RecoveryAction::Requeue, ours)
        .unwrap_err();
    bench.store.heal();
    assert!(e.is_transient() && !e.is_ambiguous(), "{name}: {e}");
    let status = behind(bench).get(&job.id).unwrap().unwrap().status;
    assert_eq!(status, JobStatus::Running, "{name}");

    // Recovery, reads failing too: ambiguous; it had landed.
    bench
        .store
        .fail_writes(Fault::CommitThenFailAndReadsFail, 0, 1);
    let e = jobs.recover_where(RecoveryAction::Fail, ours).unwrap_err();
    bench.store.heal();
    assert!(e.is_ambiguous(), "{name}: {e}");
    let status = behind(bench).get(&job.id).unwrap().unwrap().status;
    assert_eq!(status, JobStatus::Failed, "{name}");
    assert!(
        jobs.recover_where(RecoveryAction::Fail, ours)
            .unwrap()
            .is_empty(),
        "{name}: nothing left to recover"
    );
}

#[test]
fn maintenance_reports_only_what_landed_on_mem() {
    maintenance_cases(&on_mem());
}

#[test]
fn maintenance_reports_only_what_landed_on_dir() {
    maintenance_cases(&on_dir());
}

#[test]
fn maintenance_reports_only_what_landed_on_log() {
    maintenance_cases(&on_log());
}

#[cfg(feature = "postgres")]
#[test]
fn maintenance_reports_only_what_landed_on_pg() {
    maintenance_cases(&common::ambiguous_store::on_pg());
}
