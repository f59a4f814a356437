//! `PgStore`'s async face (`get_async`, `put_async`, ...): each call a task of
//! the caller's runtime, on connections that runtime drives, holding no thread
//! while it waits. The conformance suite runs the whole `Store` contract
//! through it too (`pg_async` in `tests/conformance.rs`); these tests check
//! what is its own: where it runs, that it waits without blocking, its share
//! of the pool, its bounds and the fence of a write whose answer was lost.
//!
//! Times are measured only as coarse upper bounds with generous margins: what
//! each test checks is the outcome.
#![cfg(all(feature = "postgres", feature = "async"))]
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::error_chain;
use common::pg::{self, Schemas};
use common::proxy::Proxy;
use jobsafe::{Batch, Expect, Key, PgStore, Prefix, Store};

/// Room for a loaded machine on top of a bound, in the coarse checks of how
/// long a call took, and the longest a test waits for the server to show
/// what it expects.
const MARGIN: Duration = Duration::from_secs(10);

/// A store in a new schema of `schemas`, its sessions named `app`.
fn store_named(schemas: &mut Schemas, app: &str, pool_size: u32) -> PgStore {
    PgStore::builder(&pg::named(&pg::url(), app))
        .schema(&schemas.fresh())
        .pool_size(pool_size)
        .open()
        .unwrap()
}

/// A direct connection on the runtime this runs on, for a test's own SQL
/// beside the store's calls on the same thread.
async fn direct() -> tokio_postgres::Client {
    let (client, connection) = pg::url()
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Waits until one of the store's sessions (named `app`) waits for a lock on
/// the server.
async fn until_waiting_for_a_lock(observer: &tokio_postgres::Client, app: &str) {
    until_sessions_wait(observer, app, 1).await;
}

/// Waits until at least `count` of the store's sessions (named `app`) wait
/// for a lock on the server at once.
async fn until_sessions_wait(observer: &tokio_postgres::Client, app: &str, count: i64) {
    let started = Instant::now();
    loop {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= count {
            return;
        }
        assert!(
            started.elapsed() < MARGIN,
            "{waiting} of the store's sessions waited for a lock at once, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A transaction of the test's own, on the runtime this runs on, holding
/// every row of `store`'s table until it commits.
async fn hold_rows(store: &PgStore) -> tokio_postgres::Client {
    let holder = direct().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {} FOR UPDATE",
            store.table()
        ))
        .await
        .unwrap();
    holder
}

/// Waits until the server has at most `most` sessions open for `app` (a
/// closed connection's backend exits a moment after its socket closes).
async fn sessions_at_most(observer: &tokio_postgres::Client, app: &str, most: i64) {
    let started = Instant::now();
    loop {
        let open: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if open <= most {
            return;
        }
        assert!(
            started.elapsed() < MARGIN,
            "{open} sessions open for a pool of {most}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_call_works_and_says_what_the_blocking_face_says() {
    let mut schemas = Schemas::default();
    let store = schemas.fast_store();
    let key = Key::new(["jobs", "1"]).unwrap();

    let v1 = store
        .put_async(&key, b"one".to_vec(), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(store.get_async(&key).await.unwrap().unwrap().value, b"one");
    // Seen by the blocking face: one table, one contract.
    assert_eq!(store.get(&key).unwrap().unwrap().version, v1);

    let err = store
        .put_async(&key, b"again".to_vec(), Expect::Absent)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let v2 = store
        .put_async(&key, b"two".to_vec(), Expect::Version(v1))
        .await
        .unwrap();
    assert!(v2 > v1);

    let other = Key::new(["jobs", "2"]).unwrap();
    let batch = Batch::new()
        .put(&other, b"b", Expect::Absent)
        .delete(&key, Expect::Version(v2));
    let applied = store.apply_async(batch).await.unwrap();
    assert_eq!(applied.len(), 2);
    let page = store
        .list_async(&Prefix::new(["jobs"]).unwrap(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.keys, vec![other.clone()]);
    assert!(store.delete_async(&other, Expect::Any).await.unwrap());
    assert!(store.get_async(&other).await.unwrap().is_none());

    // Bad input is refused before anything is sent, as by the blocking face.
    let err = store
        .list_async(&Prefix::new(["jobs"]).unwrap(), None, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, jobsafe::Error::InvalidArgument(_)), "{err}");
}

/// A write that waits on the server for a row another session holds leaves
/// the runtime's only thread free: the session that holds the row commits
/// from a task on that same thread, which could never run if the write
/// blocked it.
#[tokio::test(flavor = "current_thread")]
async fn a_call_waiting_on_the_server_holds_no_thread_of_a_current_thread_runtime() {
    let mut schemas = Schemas::default();
    let app = format!(
        "jobsafe-nb-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let store = store_named(&mut schemas, &app, 2);
    let key = Key::new(["held"]).unwrap();
    store
        .put_async(&key, b"one".to_vec(), Expect::Absent)
        .await
        .unwrap();

    let holder = hold_rows(&store).await;
    let write = tokio::spawn(store.put_async(&key, b"two".to_vec(), Expect::Any));
    let observer = direct().await;
    until_waiting_for_a_lock(&observer, &app).await;
    holder.batch_execute("COMMIT").await.unwrap();

    let written = write.await.unwrap().unwrap();
    assert_eq!(
        store.get_async(&key).await.unwrap().unwrap().version,
        written
    );
}

/// Calls of many tasks run at once, one per connection up to the pool's
/// size: with every row held by another session, every connection's session
/// waits on the server at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_many_tasks_use_every_connection_at_once() {
    let mut schemas = Schemas::default();
    let app = format!(
        "jobsafe-par-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // The calls beyond the pool's size wait for a slot until the rows are
    // let go: a wait no loaded machine comes near.
    let store = PgStore::builder(&pg::named(&pg::url(), &app))
        .schema(&schemas.fresh())
        .pool_size(4)
        .connect_timeout(Duration::from_secs(120))
        .call_timeout(Duration::from_secs(240))
        .open()
        .unwrap();
    let keys: Vec<Key> = (0..8)
        .map(|i| Key::new(["many", &i.to_string()]).unwrap())
        .collect();
    for key in &keys {
        store
            .put_async(key, b"one".to_vec(), Expect::Absent)
            .await
            .unwrap();
    }

    let holder = hold_rows(&store).await;
    let writes: Vec<_> = keys
        .iter()
        .map(|key| tokio::spawn(store.put_async(key, b"two".to_vec(), Expect::Any)))
        .collect();
    let observer = direct().await;
    // Every one of the pool's 4 connections (the store has no more).
    until_sessions_wait(&observer, &app, 4).await;
    holder.batch_execute("COMMIT").await.unwrap();
    for write in writes {
        write.await.unwrap().unwrap();
    }
}

/// A write whose future is dropped while the server works on it runs to its
/// end: it lands once the row is free, as a blocking call would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_future_is_dropped_midway_runs_to_its_end() {
    let mut schemas = Schemas::default();
    let app = format!(
        "jobsafe-drop-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let store = store_named(&mut schemas, &app, 2);
    let key = Key::new(["dropped"]).unwrap();
    let v1 = store
        .put_async(&key, b"one".to_vec(), Expect::Absent)
        .await
        .unwrap();

    let holder = hold_rows(&store).await;
    let observer = direct().await;
    tokio::select! {
        written = store.put_async(&key, b"two".to_vec(), Expect::Version(v1)) => {
            panic!("the write finished while its row was held: {written:?}")
        }
        () = until_waiting_for_a_lock(&observer, &app) => {}
    }
    // The write's future is gone; the write itself waits on the server.
    holder.batch_execute("COMMIT").await.unwrap();

    let started = Instant::now();
    loop {
        let entry = store.get_async(&key).await.unwrap().unwrap();
        if entry.value == b"two" {
            assert!(entry.version > v1);
            break;
        }
        assert!(started.elapsed() < MARGIN, "the dropped write never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The two faces share the pool's size: a face that finds every slot taken
/// by the other's idle connections closes one and makes its own.
#[test]
fn the_blocking_and_async_faces_share_the_pool_size() {
    let mut schemas = Schemas::default();
    let app = format!(
        "jobsafe-share-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let store = store_named(&mut schemas, &app, 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let observer = runtime.block_on(direct());

    // Both faces at once, each with more callers than the pool has slots.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let store = &store;
            scope.spawn(move || {
                for i in 0..20 {
                    let key = Key::new(["sync", &format!("{t}-{i}")]).unwrap();
                    store.put(&key, b"s", Expect::Absent).unwrap();
                    assert!(store.get(&key).unwrap().is_some());
                }
            });
        }
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..4 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..20 {
                        let key = Key::new(["async", &format!("{t}-{i}")]).unwrap();
                        store
                            .put_async(&key, b"a".to_vec(), Expect::Absent)
                            .await
                            .unwrap();
                        assert!(store.get_async(&key).await.unwrap().is_some());
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        });
    });
    runtime.block_on(sessions_at_most(&observer, &app, 2));

    // Turn by turn, each face takes the other's idle connections' slots.
    for i in 0..3 {
        let key = Key::new(["turns", &i.to_string()]).unwrap();
        store.put(&key, b"s", Expect::Absent).unwrap();
        runtime
            .block_on(store.put_async(&key, b"a".to_vec(), Expect::Any))
            .unwrap();
    }
    runtime.block_on(sessions_at_most(&observer, &app, 2));
    drop(observer);
    runtime.shutdown_background();
}

/// Connections belong to the runtime that made them; once it is gone they
/// read as closed, and the next call, on another runtime, makes new ones.
#[test]
fn a_runtime_that_shut_down_leaves_no_dead_connection_in_use() {
    let mut schemas = Schemas::default();
    let store = schemas.fast_store();
    let key = Key::new(["runtimes"]).unwrap();
    for round in 0..3u8 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(store.put_async(&key, vec![round], Expect::Any))
            .unwrap();
        let read = runtime.block_on(store.get_async(&key)).unwrap().unwrap();
        assert_eq!(read.value, [round]);
        drop(runtime);
    }
    // The blocking face is not disturbed by the async face's dead ones.
    assert_eq!(store.get(&key).unwrap().unwrap().value, [2]);
}

/// A current-thread runtime runs its tasks only inside its `block_on`: a
/// connection made by a call awaited there would stall while the runtime
/// sits unused, and so would a call of another runtime that took it. Calls
/// awaited on one run on the process's runtime instead.
#[test]
fn a_current_thread_runtime_left_idle_stalls_no_call_of_another() {
    let mut schemas = Schemas::default();
    let store = PgStore::builder(&pg::url())
        .schema(&schemas.fresh())
        .pool_size(1)
        .call_timeout(Duration::from_secs(20))
        .open()
        .unwrap();
    let key = Key::new(["idle-runtime"]).unwrap();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v = current
        .block_on(store.put_async(&key, b"x".to_vec(), Expect::Absent))
        .unwrap();

    // `current` lives on, unused, while another runtime calls.
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let read = other.block_on(store.get_async(&key)).unwrap().unwrap();
    assert_eq!(read.version, v);
    let v2 = other
        .block_on(store.put_async(&key, b"y".to_vec(), Expect::Version(v)))
        .unwrap();
    // And the blocking face, from a thread of its own.
    assert_eq!(store.get(&key).unwrap().unwrap().version, v2);
    drop(current);
    other.shutdown_background();
}

/// Awaited outside any tokio runtime (here a bare executor parking this
/// thread), a call runs on the process's own runtime.
#[test]
fn outside_any_runtime_a_call_still_works() {
    let mut schemas = Schemas::default();
    let store = schemas.fast_store();
    let key = Key::new(["bare"]).unwrap();
    let v = park_on(store.put_async(&key, b"x".to_vec(), Expect::Absent)).unwrap();
    assert_eq!(park_on(store.get_async(&key)).unwrap().unwrap().version, v);
}

#[tokio::test(flavor = "current_thread")]
async fn a_put_through_a_silent_network_fails_transiently_within_the_deadline() {
    let mut schemas = Schemas::default();
    let proxy = Proxy::start(pg::server_addr());
    let deadline = Duration::from_secs(2);
    let store = PgStore::builder(&pg::url_through(proxy.addr().port()))
        .schema(&schemas.fresh())
        .pool_size(1)
        .call_timeout(deadline)
        .open()
        .unwrap();
    let key = Key::new(["jobs", "1"]).unwrap();
    store
        .put_async(&key, b"before".to_vec(), Expect::Absent)
        .await
        .unwrap();

    proxy.silence();
    let started = Instant::now();
    let err = store
        .put_async(&key, b"during".to_vec(), Expect::Any)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let chain = error_chain(&err);
    assert!(chain.contains("call deadline of 2s"), "{chain}");
    assert!(
        started.elapsed() < deadline + MARGIN,
        "took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let err = store.get_async(&key).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() < deadline + MARGIN,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_unanswered_cannot_land_after_its_error() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let proxy = Proxy::start(pg::server_addr());
    let store = PgStore::builder(&pg::url_through(proxy.addr().port()))
        .schema(&schema)
        .pool_size(1)
        .call_timeout(Duration::from_secs(2))
        .open()
        .unwrap();
    let key = Key::new(["fenced"]).unwrap();
    store
        .put_async(&key, b"before".to_vec(), Expect::Absent)
        .await
        .unwrap();

    // The put's request is held back on its way while new connections pass
    // (see `pg_waits`): the call gives up, and the store ends the session
    // the request was sent on before it answers.
    proxy.hold_open_connections();
    let err = store
        .put_async(&key, b"late".to_vec(), Expect::Any)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let chain = error_chain(&err);
    assert!(chain.contains("call deadline"), "{chain}");
    assert!(!chain.contains("may still land"), "{chain}");

    proxy.release_held();
    let direct = PgStore::builder(&pg::url()).schema(&schema).open().unwrap();
    let entry = direct.get_async(&key).await.unwrap().unwrap();
    assert_eq!(entry.value, b"before");
}

/// Polls `future` on this thread, parked between polls: an executor with no
/// runtime of any kind.
fn park_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::park();
    }
}
