//! What only `PgStore` has: errors that name the server, migrations run by many
//! processes at once, the server's clock, and rows damaged behind the store's
//! back. The contract itself is checked by the conformance suite, the model test
//! and the multi-process tests, which run against PostgreSQL too; a server
//! restart by `tests/pg_restart.rs`, alone in its binary so that it disturbs no
//! other test.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::error_chain;
use common::pg::{self, Schemas};
use jobsafe::store::PgClock;
use jobsafe::{Clock, Error, Expect, Key, PgStore, Prefix, Store};

#[test]
fn an_unreachable_server_is_a_transient_error_that_names_it() {
    // Nothing listens on port 1 of loopback.
    let err = PgStore::builder("postgres://jobsafe:hunter2@127.0.0.1:1/jobsafe")
        .connect_timeout(Duration::from_secs(2))
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert!(err.is_transient(), "{err}");
    let chain = error_chain(&err);
    assert!(chain.contains("127.0.0.1:1/jobsafe"), "{chain}");
    assert!(!chain.contains("hunter2"), "{chain}");
}

#[test]
fn a_refused_login_is_not_transient_and_hides_the_password() {
    let url = pg::url();
    // The same server, with a password that cannot be right.
    let config: tokio_postgres::Config = url.parse().unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    let wrong =
        format!("host={host} port={port} user={user} dbname={db} password=not-the-password-0451");
    let err = PgStore::open(&wrong).unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert!(!err.is_transient(), "{err}");
    let chain = error_chain(&err);
    assert!(chain.contains(&format!("{host}:{port}")), "{chain}");
    // The server's reason, with its SQLSTATE (28P01: invalid password).
    assert!(chain.contains("28P01"), "{chain}");
    assert!(chain.contains("password authentication failed"), "{chain}");
    assert!(!chain.contains("0451"), "{chain}");
    assert!(!format!("{err:?}").contains("0451"), "{err:?}");
}

#[test]
fn a_dropped_table_is_a_permanent_error_with_the_servers_reason() {
    let mut schemas = Schemas::default();
    let store = schemas.store();
    let key = Key::new(["jobs", "1"]).unwrap();
    store.put(&key, b"one", Expect::Absent).unwrap();
    pg::client()
        .batch_execute(&format!("DROP TABLE {}", store.table()))
        .unwrap();
    // Retrying would fail the same way for ever: not transient.
    for err in [
        store.put(&key, b"two", Expect::Any).unwrap_err(),
        store.get(&key).unwrap_err(),
    ] {
        assert!(!err.is_transient(), "{err}");
        let chain = error_chain(&err);
        assert!(chain.contains("42P01"), "{chain}");
        assert!(chain.contains("does not exist"), "{chain}");
    }
}

#[test]
fn stores_opened_at_once_migrate_the_tables_once() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let barrier = Arc::new(Barrier::new(8));
    let opened: Vec<_> = (0..8)
        .map(|_| {
            let (schema, barrier) = (schema.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::builder(&pg::url()).schema(&schema).open()
            })
        })
        .collect();
    let stores: Vec<PgStore> = opened
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    let key = Key::new(["k"]).unwrap();
    stores[0].put(&key, b"one table", Expect::Absent).unwrap();
    for store in &stores {
        assert_eq!(store.get(&key).unwrap().unwrap().value, b"one table");
    }
    let row = pg::client()
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT version), max(version)
                 FROM \"{schema}\".jobsafe_schema WHERE store_table = 'jobsafe_records'"
            ),
            &[],
        )
        .unwrap();
    let (applied, versions, latest): (i64, i64, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(latest, 2, "the current schema version");
    assert_eq!(
        (applied, versions),
        (2, 2),
        "each migration is recorded once"
    );
}

#[test]
fn tables_migrated_by_a_newer_jobsafe_are_refused() {
    let mut schemas = Schemas::default();
    let store = schemas.store();
    let schema = pg::schema_of(&store);
    pg::client()
        .execute(
            &format!("INSERT INTO \"{schema}\".jobsafe_schema (store_table, version) VALUES ('jobsafe_records', 99)"),
            &[],
        )
        .unwrap();
    let err = PgStore::builder(&pg::url())
        .schema(&schema)
        .open()
        .unwrap_err();
    assert!(!err.is_transient());
    assert!(
        error_chain(&err).contains("newer than this build"),
        "{}",
        error_chain(&err)
    );
}

#[test]
fn tables_are_named_by_the_builder_and_independent() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let a = PgStore::builder(&pg::url())
        .schema(&schema)
        .table("relay_a")
        .open()
        .unwrap();
    let b = PgStore::builder(&pg::url())
        .schema(&schema)
        .table("relay_b")
        .open()
        .unwrap();
    let key = Key::new(["same", "key"]).unwrap();
    a.put(&key, b"a", Expect::Absent).unwrap();
    assert!(b.get(&key).unwrap().is_none());
    assert_eq!(a.table(), format!("{schema}.relay_a"));
    let bad = PgStore::builder(&pg::url())
        .table("Robert'); DROP TABLE x;--")
        .open();
    assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");
}

#[test]
fn the_server_clock_is_read_without_a_round_trip_per_reading() {
    let mut schemas = Schemas::default();
    let store = schemas.store();
    let clock = PgClock::new(&store)
        .unwrap()
        .resync_every(Duration::from_millis(20));
    let server_ms = |client: &mut pg::Client| -> u64 {
        let ms: i64 = client
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .unwrap()
            .get(0);
        ms as u64
    };
    let mut client = pg::client();
    let mut last = 0;
    for _ in 0..50 {
        let before = server_ms(&mut client);
        let reading = clock.now_ms();
        let after = server_ms(&mut client);
        // Within the round trips around it, with room for a loaded machine.
        assert!(
            reading + 50 >= before && reading <= after + 50,
            "{before} <= {reading} <= {after}"
        );
        assert!(reading >= last, "went back from {last} to {reading}");
        last = reading;
        std::thread::sleep(Duration::from_millis(2));
    }
    // A clock whose server went away goes on from its last sample.
    drop(client);
    clock.sleep_until(last + 5);
    assert!(clock.now_ms() >= last + 5);
}

#[test]
fn a_damaged_key_column_is_a_corrupt_row_never_skipped() {
    let mut schemas = Schemas::default();
    let store = schemas.store();
    let good = Key::new(["jobs", "1"]).unwrap();
    store.put(&good, b"fine", Expect::Absent).unwrap();
    // A row with a key that is not UTF-8, as a hand edit could leave.
    pg::client()
        .execute(
            &format!(
                "INSERT INTO {} (id, key, version, value, sum)
                 VALUES ('\\x01'::bytea, 'jobs'::bytea || '\\x00ff'::bytea, 1, ''::bytea, ''::bytea)",
                store.table()
            ),
            &[],
        )
        .unwrap();
    let err = store.list_all(&Prefix::new(["jobs"]).unwrap()).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(matches!(err, Error::CorruptRow { .. }), "{err:?}");
    assert!(err.to_string().contains(&store.table()), "{err}");
    // The healthy record is still served on its own.
    assert_eq!(store.get(&good).unwrap().unwrap().value, b"fine");
}

#[test]
fn quarantine_moves_the_row_to_a_table_it_names() {
    let mut schemas = Schemas::default();
    let store = schemas.store();
    let key = Key::new(["jobs", "7"]).unwrap();
    let v = store.put(&key, b"evidence", Expect::Absent).unwrap();
    let moved = store.quarantine(&key).unwrap().unwrap();
    assert!(
        moved
            .location
            .contains(&format!("{}_quarantine", store.table())),
        "{}",
        moved.location
    );
    let row = pg::client()
        .query_one(
            &format!("SELECT version, value FROM {}_quarantine", store.table()),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0) as u64, v.get());
    assert_eq!(row.get::<_, Vec<u8>>(1), b"evidence");
}

/// Everything a service does with a store, from inside its tokio runtime:
/// open, write, read, a batch, a listing, the server's clock, and the last
/// handle dropped there.
async fn used_inside_a_runtime() {
    let mut schemas = Schemas::default();
    let store = schemas.store();
    let key = Key::new(["jobs", "in-runtime"]).unwrap();
    let v = store.put(&key, b"one", Expect::Absent).unwrap();
    assert_eq!(store.get(&key).unwrap().unwrap().version, v);
    let batch = jobsafe::Batch::new()
        .put(&key, b"two".to_vec(), Expect::Version(v))
        .put(
            &Key::new(["jobs", "other"]).unwrap(),
            b"x".to_vec(),
            Expect::Absent,
        );
    store.apply(&batch).unwrap();
    assert_eq!(
        store
            .list_all(&Prefix::new(["jobs"]).unwrap())
            .unwrap()
            .len(),
        2
    );
    assert!(PgClock::new(&store).unwrap().now_ms() > 0);
    // From a task too: on a worker thread of a multi-thread runtime, on the
    // runtime's only thread otherwise.
    let task_store = store.clone();
    let found = tokio::spawn(async move { task_store.get(&key).unwrap().unwrap().value })
        .await
        .unwrap();
    assert_eq!(found, b"two");
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_works_inside_a_multi_thread_runtime() {
    used_inside_a_runtime().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_store_works_inside_a_current_thread_runtime() {
    used_inside_a_runtime().await;
}

/// The advisory lock a store's migration of `schema.table` takes: the first
/// eight bytes, big-endian, of the SHA-256 of its name.
fn migration_lock(schema: &str, table: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("jobsafe migrate {schema}.{table}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap())
}

/// A session of the test's own holding advisory lock `lock` in an open
/// transaction, under a name errors can be checked for; and its process id.
fn hold_lock(lock: i64) -> (pg::Client, i32) {
    let mut client = pg::client();
    client
        .batch_execute("SET application_name = 'jobsafe-test-holder'; BEGIN")
        .unwrap();
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    (client, pid)
}

/// Room for a loaded machine in the coarse checks of how long an open took.
const MARGIN: Duration = Duration::from_secs(10);

#[test]
fn an_up_to_date_store_opens_at_once_while_its_migration_lock_is_held() {
    let mut schemas = Schemas::default();
    let store = schemas.store();
    let schema = pg::schema_of(&store);
    let key = Key::new(["k"]).unwrap();
    store.put(&key, b"kept", Expect::Absent).unwrap();
    let (holder, _) = hold_lock(migration_lock(&schema, "jobsafe_records"));
    let started = std::time::Instant::now();
    let again = PgStore::builder(&pg::url())
        .schema(&schema)
        .migration_lock_timeout(Duration::from_secs(60))
        .open()
        .unwrap();
    assert!(started.elapsed() < MARGIN, "took {:?}", started.elapsed());
    assert_eq!(again.get(&key).unwrap().unwrap().value, b"kept");
    drop(holder);
}

#[test]
fn a_due_migration_waits_for_its_lock_at_most_the_bound_and_names_the_holder() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let (holder, pid) = hold_lock(migration_lock(&schema, "jobsafe_records"));
    let bound = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let err = PgStore::builder(&pg::url())
        .schema(&schema)
        .migration_lock_timeout(bound)
        .open()
        .unwrap_err();
    assert!(
        started.elapsed() < bound + MARGIN,
        "took {:?}",
        started.elapsed()
    );
    assert!(err.is_transient(), "{err}");
    let chain = error_chain(&err);
    assert!(
        chain.contains(&format!("migrations of table {schema}.jobsafe_records")),
        "{chain}"
    );
    assert!(chain.contains(&format!("server process {pid} ")), "{chain}");
    assert!(chain.contains("\"jobsafe-test-holder\""), "{chain}");

    // The lock is the table's: another table of the schema migrates meanwhile.
    PgStore::builder(&pg::url())
        .schema(&schema)
        .table("other")
        .migration_lock_timeout(bound)
        .open()
        .unwrap();
    drop(holder);
    PgStore::builder(&pg::url()).schema(&schema).open().unwrap();
}

#[test]
fn a_store_whose_tables_are_gone_does_not_open() {
    let mut schemas = Schemas::default();
    let store = schemas.store();
    let schema = pg::schema_of(&store);
    pg::client()
        .batch_execute(&format!("DROP TABLE {}_quarantine", store.table()))
        .unwrap();
    let err = PgStore::builder(&pg::url())
        .schema(&schema)
        .open()
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let chain = error_chain(&err);
    assert!(
        chain.contains(&format!("{}_quarantine does not exist", store.table())),
        "{chain}"
    );
}

#[test]
fn a_connection_the_server_closed_while_idle_is_never_used() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let app = format!("jobsafe-idle-{schema}");
    let store = PgStore::builder(&pg::named(&pg::url(), &app))
        .schema(&schema)
        .open()
        .unwrap();
    let key = Key::new(["idle"]).unwrap();
    store.put(&key, b"before", Expect::Absent).unwrap();

    // The server ends every session of the store while they sit in its pool,
    // as an `idle_session_timeout` or an administrator would.
    let ended: i64 = pg::client()
        .query_one(
            // Only the store's sessions: filtered before any is ended.
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
             FROM (SELECT pid FROM pg_stat_activity WHERE application_name = $1 OFFSET 0) s",
            &[&app],
        )
        .unwrap()
        .get(0);
    assert!(ended >= 1, "no session of the store was found to end");

    // Every call after it works: each closed connection is noticed at
    // check-out and replaced, and none is sent a request.
    assert_eq!(store.get(&key).unwrap().unwrap().value, b"before");
    let v = store.put(&key, b"after", Expect::Any).unwrap();
    assert_eq!(store.get(&key).unwrap().unwrap().version, v);
}

#[test]
fn a_batch_that_fails_leaves_no_transaction_open() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let app = format!("jobsafe-batch-{schema}");
    let store = PgStore::builder(&pg::named(&pg::url(), &app))
        .schema(&schema)
        .open()
        .unwrap();
    let fresh = Key::new(["batch", "fresh"]).unwrap();
    let held = Key::new(["batch", "held"]).unwrap();
    store.put(&held, b"v1", Expect::Absent).unwrap();

    // The batch writes `fresh` first (key order), then fails on `held`'s
    // precondition: the transaction had row and key locks when it failed.
    let batch = jobsafe::Batch::new()
        .put(&fresh, b"new".to_vec(), Expect::Absent)
        .put(&held, b"v2".to_vec(), Expect::Absent);
    assert!(store.apply(&batch).unwrap_err().is_conflict());

    // Its connection went back to the pool with the transaction rolled back,
    // not open and idle holding those locks until the server's idle timeout.
    let open: i64 = pg::client()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
            &[&app],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        open, 0,
        "a session of the store sits in an open transaction"
    );
    // Another process writes the key the batch touched without waiting.
    let other = PgStore::builder(&pg::url())
        .schema(&schema)
        .lock_timeout(Duration::from_millis(500))
        .open()
        .unwrap();
    other.put(&fresh, b"other", Expect::Absent).unwrap();
}

#[test]
fn the_longest_bounds_are_taken_as_no_bound_and_never_panic() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let store = PgStore::builder(&pg::url())
        .schema(&schema)
        .call_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .pool_size(1)
        .open()
        .unwrap();
    let key = Key::new(["bounds", "k"]).unwrap();
    let v = store.put(&key, b"v", Expect::Absent).unwrap();
    assert_eq!(store.get(&key).unwrap().unwrap().version, v);
    // From two threads on a pool of one: the second waits for the first's
    // connection (a check-out bounded by Duration::MAX).
    std::thread::scope(|s| {
        for i in 0..2 {
            let store = &store;
            s.spawn(move || {
                let key = Key::new(["bounds", &format!("t{i}")]).unwrap();
                store.put(&key, b"v", Expect::Absent).unwrap();
            });
        }
    });
    assert_eq!(
        store
            .list_all(&Prefix::new(["bounds"]).unwrap())
            .unwrap()
            .len(),
        3
    );
}
