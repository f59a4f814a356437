//! jobsafe's writes inside an application's own transaction, on both
//! PostgreSQL clients (`JobState::create_in`, `JobLedger::reserve_in`,
//! `JobLock::acquire_in` and their async twins): they land with the
//! application's commit and never without it, hold their row locks until it, leave the transaction usable
//! after a refused write, and wake a runner on another handle once
//! committed.
#![cfg(all(feature = "postgres", feature = "async"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg::{self, Schemas};
use jobsafe::jobs::{AsyncJobState, JobStatus, NewJob};
use jobsafe::ledger::{AsyncJobLedger, ChargeRequest, Reserve};
use jobsafe::lock::{Acquire, AcquireIn, AsyncAcquire, LockRequest, Release, Renewal};
use jobsafe::pipeline::{RunOutcome, Runner};
use jobsafe::{Error, JobLedger, JobLock, JobState, Key, ManualClock, PgStore, Pipeline, Store};

/// How long a test waits for what it expects before it calls it lost.
const LOST: Duration = Duration::from_secs(60);

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

/// A store in a new schema, and a table of the application's in it.
fn store_and_table(schemas: &mut Schemas) -> (PgStore, String) {
    let schema = schemas.fresh();
    let store = pg::open(&schema);
    let table = format!("\"{schema}\".exports");
    pg::client()
        .batch_execute(&format!("CREATE TABLE {table} (id text PRIMARY KEY)"))
        .unwrap();
    (store, table)
}

/// Watches the jobs of `store` and waits until its listener listens.
fn listening(store: &PgStore) -> jobsafe::store::Changes {
    let changes = store
        .changes_by_others(&jobsafe::Prefix::all())
        .expect("a PgStore listens by default");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime
        .block_on(async { tokio::time::timeout(LOST, changes.changed(0)).await })
        .expect("the listener never listened");
    changes
}

/// Whether the session named `application_name` comes to wait for a lock
/// (a row the application's transaction holds) within a minute.
fn waits_for_a_lock(application_name: &str) -> bool {
    let mut watcher = pg::client();
    (0..600).any(|_| {
        let row = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&application_name],
            )
            .unwrap();
        let waiting = row.get::<_, i64>(0) == 1;
        if !waiting {
            std::thread::sleep(Duration::from_millis(100));
        }
        waiting
    })
}

/// The application's blocking connection.
fn blocking_client() -> postgres::Client {
    postgres::Client::connect(&pg::url(), postgres::NoTls).unwrap()
}

fn exports(table: &str) -> i64 {
    pg::client()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_job_created_in_a_transaction_exists_with_its_commit_and_never_without_it() {
    let mut schemas = Schemas::default();
    let (store, table) = store_and_table(&mut schemas);
    let jobs = JobState::new(store.clone(), clock());
    // Another process's view: its own handle.
    let elsewhere = JobState::new(pg::open(&pg::schema_of(&store)), clock());
    let mut db = blocking_client();

    let mut tx = db.transaction().unwrap();
    tx.execute(&format!("INSERT INTO {table} VALUES ('exp-1')"), &[])
        .unwrap();
    let job = jobs
        .create_in(&mut tx, NewJob::new("export").id("exp-1"))
        .unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert!(
        elsewhere.get("exp-1").unwrap().is_none(),
        "seen before commit"
    );
    tx.rollback().unwrap();
    assert!(
        elsewhere.get("exp-1").unwrap().is_none(),
        "kept after rollback"
    );
    assert_eq!(exports(&table), 0);

    let mut tx = db.transaction().unwrap();
    tx.execute(&format!("INSERT INTO {table} VALUES ('exp-1')"), &[])
        .unwrap();
    let job = jobs
        .create_in(&mut tx, NewJob::new("export").id("exp-1"))
        .unwrap();
    tx.commit().unwrap();
    let stored = elsewhere.get("exp-1").unwrap().expect("committed");
    assert_eq!(stored.version, job.version);
    assert_eq!(exports(&table), 1);
    // A create repeated with its attempt id after a commit whose answer was
    // lost finds its own job, in a transaction or not.
    let attempt = jobsafe::AttemptId::new();
    let new = || NewJob::new("export").id("exp-2").attempt(attempt.clone());
    let mut tx = db.transaction().unwrap();
    let first = jobs.create_in(&mut tx, new()).unwrap();
    tx.commit().unwrap();
    let mut tx = db.transaction().unwrap();
    let again = jobs.create_in(&mut tx, new()).unwrap();
    tx.commit().unwrap();
    assert_eq!(again.version, first.version);
    assert_eq!(jobs.create(new()).unwrap().version, first.version);
    // The job is an ordinary one from then on.
    let worker = elsewhere.start("exp-1", None).unwrap();
    elsewhere.complete(&worker, serde_json::json!({})).unwrap();
}

#[test]
fn a_refused_create_leaves_the_transaction_usable() {
    let mut schemas = Schemas::default();
    let (store, table) = store_and_table(&mut schemas);
    let jobs = JobState::new(store, clock());
    jobs.create(NewJob::new("export").id("taken")).unwrap();
    let mut db = blocking_client();
    let mut tx = db.transaction().unwrap();
    let err = jobs
        .create_in(&mut tx, NewJob::new("export").id("taken"))
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    // The application goes on in the same transaction.
    tx.execute(&format!("INSERT INTO {table} VALUES ('other')"), &[])
        .unwrap();
    jobs.create_in(&mut tx, NewJob::new("export").id("free"))
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(exports(&table), 1);
    assert!(jobs.get("free").unwrap().is_some());
}

#[test]
fn a_reservation_in_a_transaction_commits_or_rolls_back_with_it() {
    let mut schemas = Schemas::default();
    let (store, _) = store_and_table(&mut schemas);
    let ledger = JobLedger::new(store, clock());
    let request = ChargeRequest::new().fingerprint("export:vault-1");
    let mut db = blocking_client();

    let mut tx = db.transaction().unwrap();
    let reserved = ledger
        .reserve_in(&mut tx, "acct-9", "job-42", &request)
        .unwrap();
    assert!(matches!(reserved, Reserve::New(_)), "{reserved:?}");
    tx.rollback().unwrap();
    assert!(ledger.lookup("acct-9", "job-42").unwrap().is_none());

    let mut tx = db.transaction().unwrap();
    let reserved = ledger
        .reserve_in(&mut tx, "acct-9", "job-42", &request)
        .unwrap();
    assert!(matches!(reserved, Reserve::New(_)), "{reserved:?}");
    tx.commit().unwrap();
    assert!(ledger.lookup("acct-9", "job-42").unwrap().is_some());
    // A retry, in a transaction or not, is told it is one.
    let mut tx = db.transaction().unwrap();
    let again = ledger
        .reserve_in(&mut tx, "acct-9", "job-42", &request)
        .unwrap();
    assert!(matches!(again, Reserve::Existing(_)), "{again:?}");
    // Another request reusing the id is refused, and the transaction goes on.
    let other = ChargeRequest::new().fingerprint("export:vault-2");
    let err = ledger
        .reserve_in(&mut tx, "acct-9", "job-42", &other)
        .unwrap_err();
    assert!(matches!(err, Error::FingerprintMismatch { .. }), "{err}");
    let pending = ledger
        .reserve_pending_in(&mut tx, "acct-9", "job-43", &request)
        .unwrap();
    assert!(matches!(pending, Reserve::New(_)), "{pending:?}");
    tx.commit().unwrap();
    let stored = ledger.lookup("acct-9", "job-43").unwrap().unwrap();
    assert!(stored.state.is_pending(), "{stored:?}");

    // A reserve repeated with its attempt id after a commit whose answer was
    // lost finds its own reservation: `New` again, not `Existing`, so the
    // caller charges once and knows it.
    let attempt = jobsafe::AttemptId::new();
    let own = ChargeRequest::new()
        .fingerprint("export:vault-9")
        .attempt(attempt.clone());
    let mut tx = db.transaction().unwrap();
    let Reserve::New(first) = ledger
        .reserve_in(&mut tx, "acct-9", "job-44", &own)
        .unwrap()
    else {
        panic!("not new");
    };
    tx.commit().unwrap();
    let mut tx = db.transaction().unwrap();
    let again = ledger
        .reserve_in(&mut tx, "acct-9", "job-44", &own)
        .unwrap();
    tx.commit().unwrap();
    assert!(
        matches!(&again, Reserve::New(r) if r.id == first.id),
        "{again:?}"
    );
}

#[test]
fn the_transaction_holds_the_jobs_row_until_it_ends() {
    let mut schemas = Schemas::default();
    let (store, _) = store_and_table(&mut schemas);
    let jobs = JobState::new(store.clone(), clock());
    let schema = pg::schema_of(&store);
    let mut db = blocking_client();
    let mut tx = db.transaction().unwrap();
    jobs.create_in(&mut tx, NewJob::new("export").id("exp-1"))
        .unwrap();
    // Another process creates the same id meanwhile: it waits for the
    // application's transaction...
    let (done_tx, done) = mpsc::channel();
    let racer = {
        let url = pg::named(&pg::url(), "racer");
        std::thread::spawn(move || {
            let other = PgStore::builder(&url).schema(&schema).open().unwrap();
            let jobs = JobState::new(other, clock());
            done_tx
                .send(jobs.create(NewJob::new("export").id("exp-1")))
                .unwrap();
        })
    };
    let waiting = waits_for_a_lock("racer");
    assert!(waiting, "the other create never waited for the row");
    assert!(done.try_recv().is_err(), "the other create did not wait");
    // ...and, once it commits, finds the id taken.
    tx.commit().unwrap();
    let raced = done
        .recv_timeout(LOST)
        .expect("the other create never ended");
    let err = raced.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    racer.join().unwrap();
}

#[test]
fn a_lock_taken_in_a_transaction_is_held_from_its_commit_and_never_without_it() {
    let mut schemas = Schemas::default();
    let (store, table) = store_and_table(&mut schemas);
    let clock = clock();
    let locks = JobLock::new(store.clone(), clock.clone());
    // Another process's view: its own handle.
    let elsewhere = JobLock::new(pg::open(&pg::schema_of(&store)), clock.clone());
    let key = Key::new(["vault", "vault-1"]).unwrap();
    let lease = Duration::from_secs(300);
    let mut db = blocking_client();

    let mut tx = db.transaction().unwrap();
    let request = LockRequest::new().actor("export-1");
    let AcquireIn::Acquired(rolled_back) =
        locks.acquire_in(&mut tx, &key, lease, &request).unwrap()
    else {
        panic!("the lock was free");
    };
    assert!(
        elsewhere.peek(&key).unwrap().is_none(),
        "seen before the commit"
    );
    tx.rollback().unwrap();
    assert!(
        elsewhere.peek(&key).unwrap().is_none(),
        "kept after a rollback"
    );
    // Made a guard all the same, it holds nothing.
    let mut ghost = rolled_back.committed();
    assert!(matches!(ghost.renew(lease).unwrap(), Renewal::Lost(_)));
    assert_eq!(ghost.release().unwrap(), Release::AlreadyGone);

    let mut tx = db.transaction().unwrap();
    let AcquireIn::Acquired(pending) = locks.acquire_in(&mut tx, &key, lease, &request).unwrap()
    else {
        panic!("the lock was free");
    };
    tx.execute(&format!("INSERT INTO {table} VALUES ('exp-1')"), &[])
        .unwrap();
    tx.commit().unwrap();
    let held = elsewhere.peek(&key).unwrap().expect("the committed lock");
    assert_eq!(held.job_id, pending.record().job_id);
    assert_eq!(held.token, pending.handle().token);
    let other = LockRequest::new().actor("export-2");
    assert!(matches!(
        elsewhere.acquire(&key, lease, &other).unwrap(),
        Acquire::Held(_)
    ));

    // Found held inside a transaction: an answer, and the transaction goes on.
    let mut tx = db.transaction().unwrap();
    let found = elsewhere.acquire_in(&mut tx, &key, lease, &other).unwrap();
    assert!(
        matches!(&found, AcquireIn::Held(holder) if holder.job_id == held.job_id),
        "{found:?}"
    );
    tx.execute(&format!("INSERT INTO {table} VALUES ('exp-2')"), &[])
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(exports(&table), 2);

    // The guard made after the commit renews and releases it.
    let mut guard = pending.committed();
    assert!(matches!(guard.renew(lease).unwrap(), Renewal::Renewed(_)));
    assert_eq!(guard.release().unwrap(), Release::Released);
    assert!(elsewhere.peek(&key).unwrap().is_none());

    // An acquire repeated with its attempt id after a commit whose answer
    // was lost finds its own lock.
    let attempt = jobsafe::AttemptId::new();
    let own = LockRequest::new().attempt(attempt.clone());
    let mut tx = db.transaction().unwrap();
    let AcquireIn::Acquired(first) = locks.acquire_in(&mut tx, &key, lease, &own).unwrap() else {
        panic!("the lock was free");
    };
    tx.commit().unwrap();
    let mut tx = db.transaction().unwrap();
    let again = locks.acquire_in(&mut tx, &key, lease, &own).unwrap();
    tx.commit().unwrap();
    assert!(
        matches!(&again, AcquireIn::Acquired(p) if p.handle() == first.handle()),
        "{again:?}"
    );

    // A lease that has ended is taken over inside the transaction, with
    // the commit, and never without it.
    clock.advance(lease + Duration::from_secs(1));
    let late = LockRequest::new().actor("export-3");
    let mut tx = db.transaction().unwrap();
    let AcquireIn::Acquired(_) = locks.acquire_in(&mut tx, &key, lease, &late).unwrap() else {
        panic!("the lease had ended");
    };
    tx.rollback().unwrap();
    let kept = elsewhere.peek(&key).unwrap().unwrap();
    assert_eq!(
        kept.job_id,
        first.record().job_id,
        "taken over without a commit"
    );
    let mut tx = db.transaction().unwrap();
    let AcquireIn::Acquired(taken) = locks.acquire_in(&mut tx, &key, lease, &late).unwrap() else {
        panic!("the lease had ended");
    };
    tx.commit().unwrap();
    let now = elsewhere.peek(&key).unwrap().unwrap();
    assert_eq!(now.job_id, taken.record().job_id);
    assert!(now.token > first.record().token, "{now:?}");
}

#[test]
fn the_transaction_holds_the_locks_row_until_it_ends() {
    let mut schemas = Schemas::default();
    let (store, _) = store_and_table(&mut schemas);
    let locks = JobLock::new(store.clone(), clock());
    let schema = pg::schema_of(&store);
    let key = Key::new(["vault", "vault-1"]).unwrap();
    let lease = Duration::from_secs(300);
    let mut db = blocking_client();
    let mut tx = db.transaction().unwrap();
    let AcquireIn::Acquired(pending) = locks
        .acquire_in(&mut tx, &key, lease, &LockRequest::new())
        .unwrap()
    else {
        panic!("the lock was free");
    };
    // Another process acquires meanwhile: it waits for the application's
    // transaction...
    let (done_tx, done) = mpsc::channel();
    let racer = {
        let url = pg::named(&pg::url(), "lock-racer");
        let key = key.clone();
        std::thread::spawn(move || {
            let other = PgStore::builder(&url).schema(&schema).open().unwrap();
            let locks = JobLock::new(other, clock());
            let acquired = locks
                .acquire(&key, lease, &LockRequest::new())
                .map(|a| match a {
                    Acquire::Acquired(guard) => Err(guard.into_handle()),
                    Acquire::Held(holder) => Ok(holder),
                });
            done_tx.send(acquired).unwrap();
        })
    };
    let waiting = waits_for_a_lock("lock-racer");
    assert!(waiting, "the other acquire never waited for the row");
    assert!(done.try_recv().is_err(), "the other acquire did not wait");
    // ...and, once it commits, finds the lock held by the transaction's.
    tx.commit().unwrap();
    let raced = done
        .recv_timeout(LOST)
        .expect("the other acquire never ended");
    let holder = raced.unwrap().expect("the other acquire took a held lock");
    assert_eq!(holder.job_id, pending.record().job_id);
    racer.join().unwrap();
}

#[test]
fn a_server_error_in_the_transaction_is_final_not_transient_nor_ambiguous() {
    let mut schemas = Schemas::default();
    let (store, _) = store_and_table(&mut schemas);
    let jobs = JobState::new(store, clock());
    let (mut first, mut second) = (blocking_client(), blocking_client());
    let mut holding = first.transaction().unwrap();
    jobs.create_in(&mut holding, NewJob::new("export").id("exp-1"))
        .unwrap();
    // Another transaction wants the same row, and gives up waiting: the
    // server aborts it. Neither repeating the call nor reading back can
    // help there, so the error says so at once.
    let mut waiting = second.transaction().unwrap();
    waiting
        .batch_execute("SET LOCAL lock_timeout = '50ms'")
        .unwrap();
    let err = jobs
        .create_in(&mut waiting, NewJob::new("export").id("exp-1"))
        .unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert!(!err.is_transient(), "{err}");
    assert!(!err.is_ambiguous(), "{err}");
    let chain = common::error_chain(&err);
    assert!(chain.contains("roll it back"), "{chain}");
    // The server's reason: 55P03, lock not available.
    assert!(chain.contains("55P03"), "{chain}");
    waiting.rollback().unwrap();
    holding.commit().unwrap();
    assert!(jobs.get("exp-1").unwrap().is_some());
}

/// The same for a lock: an acquire that gives up waiting for the row another
/// transaction holds is a final error, never transient nor ambiguous.
#[test]
fn a_lock_acquire_that_times_out_in_the_transaction_is_final() {
    let mut schemas = Schemas::default();
    let (store, _) = store_and_table(&mut schemas);
    let locks = JobLock::new(store, clock());
    let key = Key::new(["vault", "vault-1"]).unwrap();
    let lease = Duration::from_secs(300);
    let (mut first, mut second) = (blocking_client(), blocking_client());
    let mut holding = first.transaction().unwrap();
    let AcquireIn::Acquired(held) = locks
        .acquire_in(&mut holding, &key, lease, &LockRequest::new())
        .unwrap()
    else {
        panic!("the lock was free");
    };
    let mut waiting = second.transaction().unwrap();
    waiting
        .batch_execute("SET LOCAL lock_timeout = '50ms'")
        .unwrap();
    let err = locks
        .acquire_in(&mut waiting, &key, lease, &LockRequest::new())
        .unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert!(!err.is_transient(), "{err}");
    assert!(!err.is_ambiguous(), "{err}");
    assert!(common::error_chain(&err).contains("55P03"), "{err}");
    waiting.rollback().unwrap();
    holding.commit().unwrap();
    let stored = locks.peek(&key).unwrap().unwrap();
    assert_eq!(stored.job_id, held.record().job_id);
}

#[test]
fn the_async_client_creates_reserves_and_locks_in_its_transaction() {
    let mut schemas = Schemas::default();
    let (store, table) = store_and_table(&mut schemas);
    let jobs = AsyncJobState::new(JobState::new(store.clone(), clock()));
    let ledger = AsyncJobLedger::new(JobLedger::new(store.clone(), clock()));
    let locks = jobsafe::lock::AsyncJobLock::new(JobLock::new(store.clone(), clock()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = pg::url();
    let (job, committed) = runtime.block_on(async {
        let (mut db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);

        let tx = db.transaction().await.unwrap();
        jobs.create_in(&tx, NewJob::new("export").id("exp-1"))
            .await
            .unwrap();
        tx.rollback().await.unwrap();

        let tx = db.transaction().await.unwrap();
        tx.execute(&format!("INSERT INTO {table} VALUES ('exp-2')"), &[])
            .await
            .unwrap();
        let request = ChargeRequest::new().fingerprint("export:2");
        let reserved = ledger
            .reserve_in(&tx, "acct-9", "exp-2", &request)
            .await
            .unwrap();
        assert!(matches!(reserved, Reserve::New(_)), "{reserved:?}");
        let job = jobs
            .create_in(&tx, NewJob::new("export").id("exp-2"))
            .await
            .unwrap();
        let taken = jobs
            .create_in(&tx, NewJob::new("export").id("exp-2"))
            .await
            .unwrap_err();
        assert!(taken.is_conflict(), "{taken}");
        let pending = ledger
            .reserve_pending_in(&tx, "acct-9", "exp-3", &request)
            .await
            .unwrap();
        assert!(matches!(pending, Reserve::New(_)), "{pending:?}");
        let key = Key::new(["vault", "vault-2"]).unwrap();
        let lease = Duration::from_secs(300);
        let AcquireIn::Acquired(taken) = locks
            .acquire_in(&tx, &key, lease, &LockRequest::new())
            .await
            .unwrap()
        else {
            panic!("the lock was free");
        };
        assert!(
            locks.peek(&key).await.unwrap().is_none(),
            "seen before the commit"
        );
        tx.commit().await.unwrap();
        let held = locks
            .acquire(&key, lease, &LockRequest::new())
            .await
            .unwrap();
        assert!(matches!(held, AsyncAcquire::Held(_)), "{held:?}");
        let guard = taken.committed_async();
        assert_eq!(guard.release().await.unwrap(), Release::Released);
        assert!(locks.peek(&key).await.unwrap().is_none());
        (job, jobs.get("exp-2").await.unwrap())
    });
    assert!(jobs.blocking().get("exp-1").unwrap().is_none());
    assert_eq!(committed.map(|j| j.version), Some(job.version));
    assert_eq!(exports(&table), 1);
    let ledger = ledger.blocking();
    assert!(ledger.lookup("acct-9", "exp-2").unwrap().is_some());
    assert!(ledger.lookup("acct-9", "exp-3").unwrap().is_some());
}

/// An async create dropped between its batch's statements (a caller's
/// timeout, a cancelled request) undoes what the batch wrote: the
/// application's commit keeps neither the job's record nor its entry in the
/// index of open jobs, never one without the other, and the transaction
/// stays usable.
#[test]
fn an_async_create_dropped_midway_leaves_none_of_its_batch_in_the_transaction() {
    let mut schemas = Schemas::default();
    let (store, table) = store_and_table(&mut schemas);
    let jobs = AsyncJobState::new(JobState::new(store.clone(), clock()));
    // The index of open jobs is built (on an empty store), so that
    // `list_open` answers from it from now on.
    assert!(jobs.blocking().list_open().unwrap().jobs.is_empty());

    // Another session holds the advisory lock that every writer of the
    // job's record takes first: the record's insert waits for it, in flight.
    let record = Key::new(["jobs", "job", "exp-1"]).unwrap();
    let lock_id = "('x' || left(encode(sha256($1::bytea), 'hex'), 16))::bit(64)::bigint";
    let mut blocker = pg::client();
    blocker
        .query(
            &format!("SELECT pg_advisory_lock({lock_id})"),
            &[&pg::packed(&record)],
        )
        .unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = "create-in-dropped";
    let url = pg::named(&pg::url(), app);
    runtime.block_on(async {
        let (mut db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let tx = db.transaction().await.unwrap();
        tx.execute(&format!("INSERT INTO {table} VALUES ('exp-1')"), &[])
            .await
            .unwrap();
        let waiting = tokio::task::spawn_blocking(move || waits_for_a_lock(app));
        tokio::select! {
            created = jobs.create_in(&tx, NewJob::new("export").id("exp-1")) => {
                panic!("the create was to wait for the record's lock: {created:?}");
            }
            waiting = waiting => assert!(waiting.unwrap(), "the create never waited"),
        }
        // The create's future is dropped: the application gives up on the
        // job, lets the record's insert through, and commits its own row.
        blocker
            .query(
                &format!("SELECT pg_advisory_unlock({lock_id})"),
                &[&pg::packed(&record)],
            )
            .unwrap();
        tx.commit().await.unwrap();
    });

    assert_eq!(exports(&table), 1, "the application's own row");
    assert!(jobs.blocking().get("exp-1").unwrap().is_none());
    let entry = Key::new(["jobs", "open", "exp-1"]).unwrap();
    assert!(store.get(&entry).unwrap().is_none());
    assert!(jobs.blocking().list_open().unwrap().jobs.is_empty());
}

#[test]
fn a_job_created_in_a_transaction_wakes_a_runner_on_another_handle_at_its_commit() {
    let mut schemas = Schemas::default();
    let (store, table) = store_and_table(&mut schemas);
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
    let runner_store = pg::open(&pg::schema_of(&store));
    // The runner's handle listens before the runner starts, so that the
    // listener's first word (which tells every watcher) cannot be what wakes
    // it for the job below.
    let _listening = listening(&runner_store);
    let runner_side = pipeline(runner_store);
    let service_side = pipeline(store);
    let (done_tx, done) = mpsc::channel();
    let done_tx = Mutex::new(done_tx);
    // No poll within the test: only the commit's notification can wake it.
    let runner = Runner::new(runner_side)
        .poll_every(Duration::from_secs(3600))
        .on_run(move |id, run| {
            if matches!(run, Ok(run) if matches!(run.outcome, RunOutcome::Completed)) {
                let _ = done_tx.lock().unwrap().send(id.to_owned());
            }
        });
    let stop = runner.stopper();
    let running = std::thread::spawn(move || runner.run());
    // Let the runner finish its first look. (A runner slower than this only
    // makes the test pass without the wake-up, never fail.)
    std::thread::sleep(Duration::from_millis(200));
    let mut db = blocking_client();
    let mut tx = db.transaction().unwrap();
    tx.execute(&format!("INSERT INTO {table} VALUES ('exp-1')"), &[])
        .unwrap();
    let job = service_side
        .enqueue_in(&mut tx, "vault-1", NewJob::new("export"))
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(
        done.recv_timeout(LOST).expect("the runner never woke"),
        job.id
    );
    stop.stop(Duration::ZERO);
    assert_eq!(running.join().unwrap().completed, 1);
}
