//! `PgStore`'s change notifications (`Store::changes_by_others`, through
//! `LISTEN`/`NOTIFY`): another handle's writes are told, with their keys, and
//! the handle's own are not; an application's own session is told too; the
//! listener listens again after its session is ended; a table migrated
//! before notifications gets its trigger, and a lost trigger is refused at
//! open. Then what is built on them: a runner woken by a job another
//! handle queued, and a subscription that hears another handle's events.
//!
//! Each handle stands for a process of its own: it has its own pool, its own
//! listener and its own writer name. The waits are for notifications, each
//! bounded only so that a lost one fails the test.
#![cfg(all(feature = "postgres", feature = "async"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::error_chain;
use common::pg::{self, Schemas};
use common::proxy::Proxy;
use jobsafe::jobs::{JobState, NewJob, NextEvent};
use jobsafe::pipeline::{RunOutcome, Runner};
use jobsafe::store::Changes;
use jobsafe::{Expect, Key, ManualClock, PgStore, Pipeline, Prefix, Store};
use serde_json::json;

/// How long a test waits for a notification before it calls it lost.
const LOST: Duration = Duration::from_secs(60);

fn key(segments: &[&str]) -> Key {
    Key::new(segments.iter().copied()).unwrap()
}

fn prefix(segments: &[&str]) -> Prefix {
    Prefix::new(segments.iter().copied()).unwrap()
}

/// Two handles on one new schema: two processes, as far as the store knows.
fn two_handles(schemas: &mut Schemas) -> (PgStore, PgStore) {
    let schema = schemas.fresh();
    (pg::open(&schema), pg::open(&schema))
}

/// Waits for a notification past `seen`; the new count.
fn told(changes: &Changes, seen: u64) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime
        .block_on(async { tokio::time::timeout(LOST, changes.changed(seen)).await })
        .unwrap_or_else(|_| panic!("no notification came past {seen}"))
}

/// Watches the prefix of `segments` on `store`, whose listener listens
/// already: told from its registration on.
fn watch(store: &PgStore, segments: &[&str]) -> Changes {
    store.changes_by_others(&prefix(segments)).unwrap()
}

/// Writes a marker through `writer` and waits until `marker` (a watch of
/// `marker` on the other handle) is told of it. Notifications arrive in
/// commit order on one connection, so then every write committed before it
/// has been told, or never will be: the counts are final.
fn settle(writer: &PgStore, marker: &Changes) {
    let seen = marker.seen();
    writer
        .put(&key(&["marker", "job", "m"]), b"{}", Expect::Any)
        .unwrap();
    told(marker, seen);
}

/// Watches `prefix` on `store` and waits until its listener listens (its
/// start tells every watcher); the count then.
fn listening(store: &PgStore, prefix: &Prefix) -> (Changes, u64) {
    let changes = store
        .changes_by_others(prefix)
        .expect("a PgStore listens by default");
    let seen = told(&changes, 0);
    (changes, seen)
}

#[test]
fn another_handles_writes_are_told_and_its_own_are_not() {
    let mut schemas = Schemas::default();
    let (mine, theirs) = two_handles(&mut schemas);
    let (jobs, seen) = listening(&mine, &prefix(&["jobs"]));
    let marker = watch(&mine, &["marker"]);
    let one_job = watch(&mine, &["jobs", "job", "7"]);
    let one_seen = one_job.seen();

    theirs
        .put(&key(&["jobs", "job", "1"]), b"{}", Expect::Any)
        .unwrap();
    settle(&theirs, &marker);
    assert_eq!(jobs.seen(), seen + 1);

    mine.put(&key(&["jobs", "job", "2"]), b"{}", Expect::Any)
        .unwrap();
    theirs
        .put(&key(&["locks", "x"]), b"{}", Expect::Any)
        .unwrap();
    theirs
        .put(&key(&["jobs7", "job", "1"]), b"{}", Expect::Any)
        .unwrap();
    theirs
        .delete(&key(&["jobs", "job", "1"]), Expect::Any)
        .unwrap();
    settle(&theirs, &marker);
    // Exactly the delete: not this handle's own put, not `locks`, and not
    // `jobs7/job/1`, which is no key under `jobs`.
    assert_eq!(jobs.seen(), seen + 2);
    assert_eq!(
        one_job.seen(),
        one_seen,
        "a write outside jobs/job/7 was told"
    );

    theirs
        .put(&key(&["jobs", "job", "7"]), b"{}", Expect::Any)
        .unwrap();
    settle(&theirs, &marker);
    assert_eq!(one_job.seen(), one_seen + 1);
    assert_eq!(jobs.seen(), seen + 3, "jobs/job/7 is under jobs too");

    // A clone of a handle is the same handle: its writes are its own.
    let again = mine.clone();
    again
        .put(&key(&["jobs", "job", "3"]), b"{}", Expect::Any)
        .unwrap();
    theirs
        .put(&key(&["jobs", "job", "4"]), b"{}", Expect::Any)
        .unwrap();
    settle(&theirs, &marker);
    assert_eq!(jobs.seen(), seen + 4);
}

#[test]
fn batches_quarantines_and_other_sessions_are_told_and_rollbacks_are_not() {
    let mut schemas = Schemas::default();
    let (mine, theirs) = two_handles(&mut schemas);
    let (jobs, seen) = listening(&mine, &prefix(&["jobs"]));
    let marker = watch(&mine, &["marker"]);

    // One notification per row.
    let batch = jobsafe::Batch::new()
        .put(&key(&["jobs", "job", "a"]), b"{}".to_vec(), Expect::Absent)
        .put(&key(&["jobs", "job", "b"]), b"{}".to_vec(), Expect::Absent);
    theirs.apply(&batch).unwrap();
    // A batch that fails rolls back, and notifies nothing: its first row
    // (in key order) is written before the second's precondition fails.
    let failing = jobsafe::Batch::new()
        .put(&key(&["jobs", "job", "0"]), b"{}".to_vec(), Expect::Absent)
        .put(&key(&["jobs", "job", "a"]), b"{}".to_vec(), Expect::Absent);
    assert!(theirs.apply(&failing).is_err());
    assert!(theirs.get(&key(&["jobs", "job", "0"])).unwrap().is_none());
    theirs
        .quarantine(&key(&["jobs", "job", "b"]))
        .unwrap()
        .expect("the row was there");
    settle(&theirs, &marker);
    assert_eq!(jobs.seen(), seen + 3);

    // An application's own session, with no writer name: told.
    let table = mine.table();
    let (schema, records) = table.split_once('.').unwrap();
    let mut client = pg::client();
    let deleted = client
        .execute(
            &format!("DELETE FROM \"{schema}\".\"{records}\" WHERE key = $1"),
            &[&pg::packed(&key(&["jobs", "job", "a"]))],
        )
        .unwrap();
    assert_eq!(deleted, 1);
    settle(&theirs, &marker);
    assert_eq!(jobs.seen(), seen + 4);
}

#[test]
fn only_the_records_of_jobs_notify() {
    let mut schemas = Schemas::default();
    let (mine, theirs) = two_handles(&mut schemas);
    let (locks, seen) = listening(&mine, &prefix(&["locks"]));
    let marker = watch(&mine, &["marker"]);
    // A lock's or a reservation's write notifies nobody, so that it keeps
    // its group commit (see `PgStore`, "Change notifications").
    theirs
        .put(&key(&["locks", "x"]), b"{}", Expect::Any)
        .unwrap();
    theirs
        .put(&key(&["locks", "jobs", "x"]), b"{}", Expect::Any)
        .unwrap();
    // Nor an event's row: its job's record, rewritten in the same commit,
    // does.
    theirs
        .put(&key(&["locks", "event", "x"]), b"{}", Expect::Any)
        .unwrap();
    // A key with a `job` segment does, wherever it is.
    theirs
        .put(&key(&["locks", "y", "job"]), b"{}", Expect::Any)
        .unwrap();
    theirs
        .put(&key(&["locks", "job", "x"]), b"{}", Expect::Any)
        .unwrap();
    settle(&theirs, &marker);
    assert_eq!(locks.seen(), seen + 2);
}

#[test]
fn a_key_too_long_to_name_tells_every_watcher() {
    let mut schemas = Schemas::default();
    let (mine, theirs) = two_handles(&mut schemas);
    let (locks, seen) = listening(&mine, &prefix(&["locks"]));
    let marker = watch(&mine, &["marker"]);
    let long = "x".repeat(Key::MAX_SEGMENT_LEN);
    let segments = ["jobs", "job", long.as_str(), long.as_str(), long.as_str()];
    theirs.put(&key(&segments), b"{}", Expect::Any).unwrap();
    // The notification names the key's start only: watchers of any prefix
    // are told, as the key may be under theirs.
    settle(&theirs, &marker);
    assert_eq!(locks.seen(), seen + 1);
}

#[test]
fn the_listener_listens_again_after_its_session_is_ended() {
    let mut schemas = Schemas::default();
    let (mine, theirs) = two_handles(&mut schemas);
    let (jobs, seen) = listening(&mine, &prefix(&["jobs"]));
    let schema = pg::schema_of(&mine);
    let mut client = pg::client();
    let ended = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE query LIKE 'LISTEN %' AND query LIKE '%' || $1 || '%'",
            &[&schema],
        )
        .unwrap();
    assert_eq!(ended.get::<_, i64>(0), 1, "one session listens");
    // Listening again tells every watcher: what changed meanwhile is unknown.
    let again = told(&jobs, seen);
    let marker = watch(&mine, &["marker"]);
    theirs
        .put(&key(&["jobs", "job", "1"]), b"{}", Expect::Any)
        .unwrap();
    settle(&theirs, &marker);
    assert_eq!(jobs.seen(), again + 1);
}

#[test]
fn a_listening_connection_gone_silent_is_given_up_at_its_check() {
    let mut schemas = Schemas::default();
    let proxy = Proxy::start(pg::server_addr());
    let store = PgStore::builder(&pg::url_through(proxy.addr().port()))
        .schema(&schemas.fresh())
        .connect_timeout(Duration::from_secs(1))
        .listen_check(Duration::from_secs(1))
        .open()
        .unwrap();
    let (_jobs, _) = listening(&store, &prefix(&["jobs"]));
    let before: Vec<u16> = proxy.connections().iter().map(|(port, _)| *port).collect();
    // A partition: the socket stays open, nothing arrives, and nothing the
    // listener sends is answered, so only its check can tell.
    proxy.silence();
    let tried_again = (0..600).any(|_| {
        let now = proxy.connections();
        let new = now.iter().any(|(port, _)| !before.contains(port));
        if !new {
            std::thread::sleep(Duration::from_millis(100));
        }
        new
    });
    assert!(
        tried_again,
        "the listener never gave its silent connection up"
    );
}

#[test]
fn the_listening_session_ends_when_nobody_watches_any_more() {
    let mut schemas = Schemas::default();
    let (mine, _theirs) = two_handles(&mut schemas);
    let schema = pg::schema_of(&mine);
    let mut client = pg::client();
    let mut listening_sessions = || -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE query LIKE 'LISTEN %' AND query LIKE '%' || $1 || '%'",
                &[&schema],
            )
            .unwrap()
            .get(0)
    };
    let (jobs, _) = listening(&mine, &prefix(&["jobs"]));
    let other = watch(&mine, &["locks"]);
    // One connection for every watch of the handle.
    assert_eq!(listening_sessions(), 1);
    drop(jobs);
    drop(other);
    // Gone within a second of the last drop; waited for up to a minute.
    let ended = (0..600).any(|_| {
        let gone = listening_sessions() == 0;
        if !gone {
            std::thread::sleep(Duration::from_millis(100));
        }
        gone
    });
    assert!(ended, "the listening session outlived its watches");
    // A new watch listens again.
    let (_again, _) = listening(&mine, &prefix(&["jobs"]));
    assert_eq!(listening_sessions(), 1);
}

#[test]
fn a_store_that_does_not_listen_cannot_tell() {
    let mut schemas = Schemas::default();
    let store = PgStore::builder(&pg::url())
        .schema(&schemas.fresh())
        .listen(false)
        .open()
        .unwrap();
    assert!(store.changes_by_others(&Prefix::all()).is_none());
}

#[test]
fn a_table_from_before_notifications_gets_its_trigger_and_a_lost_one_is_refused() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    drop(pg::open(&schema));
    let mut client = pg::client();
    // As a store of the first schema version left it.
    client
        .batch_execute(&format!(
            "DROP TRIGGER jobsafe_records_notify ON \"{schema}\".jobsafe_records;
             DROP TRIGGER jobsafe_records_notify_delete ON \"{schema}\".jobsafe_records;
             DROP FUNCTION \"{schema}\".jobsafe_records_notify();
             DELETE FROM \"{schema}\".jobsafe_schema WHERE version = 2;"
        ))
        .unwrap();
    let (mine, theirs) = (pg::open(&schema), pg::open(&schema));
    let (jobs, seen) = listening(&mine, &prefix(&["jobs"]));
    theirs
        .put(&key(&["jobs", "job", "1"]), b"{}", Expect::Any)
        .unwrap();
    assert_eq!(told(&jobs, seen), seen + 1);

    // A trigger lost while the version says it exists: refused, by name,
    // rather than leaving every listener deaf.
    client
        .batch_execute(&format!(
            "DROP TRIGGER jobsafe_records_notify_delete ON \"{schema}\".jobsafe_records"
        ))
        .unwrap();
    let err = PgStore::builder(&pg::url())
        .schema(&schema)
        .open()
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let chain = error_chain(&err);
    assert!(chain.contains("jobsafe_records_notify"), "{chain}");
    assert!(chain.contains("version 2"), "{chain}");
}

#[test]
fn a_job_queued_through_another_handle_wakes_the_runner() {
    let mut schemas = Schemas::default();
    let (mine, theirs) = two_handles(&mut schemas);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let pipeline = |store: PgStore| {
        Pipeline::builder(store, Arc::new(clock.clone()), dir.path())
            .stage("work", |ctx| {
                ctx.write("out.txt", b"done")?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    // The runner's handle listens before the runner starts, so that the
    // listener's first word (which tells every watcher) cannot be what wakes
    // it for the jobs below.
    let (_listening, _) = listening(&mine, &prefix(&["pipeline"]));
    let (here, there) = (pipeline(mine), pipeline(theirs));
    let (done_tx, done) = mpsc::channel();
    let done_tx = Mutex::new(done_tx);
    // No poll within the test: only a notification can wake it.
    let runner = Runner::new(here)
        .poll_every(Duration::from_secs(3600))
        .on_run(move |id, run| {
            if matches!(run, Ok(run) if matches!(run.outcome, RunOutcome::Completed)) {
                let _ = done_tx.lock().unwrap().send(id.to_owned());
            }
        });
    let stop = runner.stopper();
    let running = std::thread::spawn(move || runner.run());
    for subject in ["a", "b"] {
        // Let the runner finish its look and go to sleep first. (A runner
        // slower than this only makes the test pass without the wake-up,
        // never fail.)
        std::thread::sleep(Duration::from_millis(200));
        let job = there.enqueue(subject, NewJob::new("k")).unwrap();
        assert_eq!(
            done.recv_timeout(LOST).expect("the runner never woke"),
            job.id
        );
    }
    stop.stop(Duration::ZERO);
    assert_eq!(running.join().unwrap().completed, 2);
}

#[test]
fn a_subscription_hears_the_events_another_handle_appends() {
    let mut schemas = Schemas::default();
    let (mine, theirs) = two_handles(&mut schemas);
    let clock = ManualClock::new(1_700_000_000_000);
    let here = JobState::new(mine, Arc::new(clock.clone()));
    let there = JobState::new(theirs, Arc::new(clock.clone()));
    let job = there.create(NewJob::new("export")).unwrap();
    let mut subscription = here.subscribe(&job.id, 0).unwrap();
    let (heard_tx, heard) = mpsc::channel();
    let listening = std::thread::spawn(move || {
        loop {
            match subscription.next_event_timeout(LOST).unwrap() {
                NextEvent::Event(event) => heard_tx.send(event.kind).unwrap(),
                NextEvent::Finished => return,
                _ => panic!("the other handle's next event never came"),
            }
        }
    });
    let next = || heard.recv_timeout(LOST).expect("the subscriber stopped");
    // Each event is appended only once the subscriber heard the one before,
    // and waits: only a notification can bring it (the first, maybe the
    // replay).
    let worker = there.start(&job.id, None).unwrap();
    let mut kinds = vec![next()];
    there.progress(&worker, "half way").unwrap();
    kinds.push(next());
    there.complete(&worker, json!({"pages": 3})).unwrap();
    kinds.push(next());
    listening.join().unwrap();
    let expected: Vec<String> = there
        .events_since(&job.id, 0)
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, expected);
    assert_eq!(kinds.last().map(String::as_str), Some("done"));
}
