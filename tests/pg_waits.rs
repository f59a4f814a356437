//! `PgStore`'s waits are bounded: a network that goes silent, a lock held by
//! another session and a transaction left open by a client that went silent
//! each end within a bound set on the builder. The silence comes from a proxy
//! of the test's own ([`common::proxy`]) that stops forwarding without closing
//! anything.
//!
//! Times are measured only as coarse upper bounds with generous margins: what
//! each test checks is the outcome (an error, and which one; a lock released).
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::error_chain;
use common::pg::{self, Schemas};
use common::proxy::Proxy;
use jobsafe::store::PgStoreBuilder;
use jobsafe::{Batch, Expect, Key, PgStore, Store};

/// Room for a loaded machine on top of a bound, in the coarse checks of how
/// long a call took.
const MARGIN: Duration = Duration::from_secs(10);

/// A URL that reaches the server through `proxy` instead.
fn through(proxy: &Proxy) -> String {
    pg::url_through(proxy.addr().port())
}

/// A builder for `schema` through `url`, with one connection, so that the
/// connection a test warms up is the one its next call uses.
fn builder(url: &str, schema: &str) -> PgStoreBuilder {
    PgStore::builder(url).schema(schema).pool_size(1)
}

#[test]
fn a_put_through_a_silent_network_fails_transiently_within_the_deadline() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let proxy = Proxy::start(pg::server_addr());
    let deadline = Duration::from_secs(2);
    let store = builder(&through(&proxy), &schema)
        .call_timeout(deadline)
        .open()
        .unwrap();
    let key = Key::new(["jobs", "1"]).unwrap();
    store.put(&key, b"before", Expect::Absent).unwrap();

    proxy.silence();
    let started = Instant::now();
    let err = store.put(&key, b"during", Expect::Any).unwrap_err();
    let took = started.elapsed();
    assert!(err.is_transient(), "{err}");
    let chain = error_chain(&err);
    assert!(chain.contains("call deadline of 2s"), "{chain}");
    assert!(took < deadline + MARGIN, "took {took:?}");

    // The next call finds no connection to reuse (the silent one was closed)
    // and cannot make one: it fails within the deadline too.
    let started = Instant::now();
    let err = store.get(&key).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() < deadline + MARGIN,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_batch_cut_off_after_its_first_statement_has_its_locks_released_by_the_server() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let direct = builder(&pg::url(), &schema).open().unwrap();
    let (first, second) = (Key::new(["a"]).unwrap(), Key::new(["b"]).unwrap());
    direct.put(&first, b"before", Expect::Absent).unwrap();

    let proxy = Proxy::start(pg::server_addr());
    let idle = Duration::from_secs(1);
    let cut = builder(&through(&proxy), &schema)
        .call_timeout(Duration::from_secs(2))
        .idle_in_transaction_timeout(idle)
        .open()
        .unwrap();
    assert!(cut.get(&first).unwrap().is_some());

    // BEGIN, then the first put (rows are written in key order): then silence,
    // with the transaction open and the first row locked on the server.
    proxy.silence_after_requests(2);
    let batch = Batch::new()
        .put(&first, b"batch".to_vec(), Expect::Any)
        .put(&second, b"batch".to_vec(), Expect::Absent);
    let err = cut.apply(&batch).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        error_chain(&err).contains("call deadline"),
        "{}",
        error_chain(&err)
    );

    // Another session's write of the locked row waits only until the server
    // ends the silent transaction (its lock timeout, 10 s by default, is far
    // longer than the idle timeout), then lands; the batch left nothing.
    let started = Instant::now();
    direct.put(&first, b"after", Expect::Any).unwrap();
    assert!(
        started.elapsed() < idle + MARGIN,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(direct.get(&first).unwrap().unwrap().value, b"after");
    assert!(direct.get(&second).unwrap().is_none());
    drop(proxy);
}

/// A transaction of the test's own holding every row of the store's table.
fn hold_rows(store: &PgStore) -> pg::Client {
    let mut client = pg::client();
    client
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {} FOR UPDATE",
            store.table()
        ))
        .unwrap();
    client
}

#[test]
fn a_lock_held_elsewhere_ends_the_wait_at_the_lock_timeout() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let store = builder(&pg::url(), &schema)
        .lock_timeout(Duration::from_millis(200))
        .open()
        .unwrap();
    let key = Key::new(["held"]).unwrap();
    store.put(&key, b"one", Expect::Absent).unwrap();
    let holder = hold_rows(&store);
    let err = store.put(&key, b"two", Expect::Any).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        error_chain(&err).contains("lock timeout"),
        "{}",
        error_chain(&err)
    );
    drop(holder);
    store.put(&key, b"two", Expect::Any).unwrap();
}

#[test]
fn a_statement_that_runs_too_long_ends_at_the_statement_timeout() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let store = builder(&pg::url(), &schema)
        .lock_timeout(Duration::from_secs(60))
        .statement_timeout(Duration::from_millis(200))
        .open()
        .unwrap();
    let key = Key::new(["held"]).unwrap();
    store.put(&key, b"one", Expect::Absent).unwrap();
    let holder = hold_rows(&store);
    let err = store.put(&key, b"two", Expect::Any).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        error_chain(&err).contains("statement timeout"),
        "{}",
        error_chain(&err)
    );
    drop(holder);
}

#[test]
fn a_call_past_its_deadline_leaves_no_statement_waiting_on_the_server() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let store = builder(&pg::url(), &schema)
        .call_timeout(Duration::from_millis(500))
        .lock_timeout(Duration::from_secs(60))
        .statement_timeout(Duration::from_secs(60))
        .open()
        .unwrap();
    let key = Key::new(["held"]).unwrap();
    store.put(&key, b"one", Expect::Absent).unwrap();
    let mut holder = hold_rows(&store);
    let err = store.put(&key, b"two", Expect::Any).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        error_chain(&err).contains("call deadline"),
        "{}",
        error_chain(&err)
    );

    // The abandoned statement is cancelled: no session is left waiting for
    // the rows (holding the key's advisory lock against every other writer)
    // for as long as they stay locked. The cancel travels on its own
    // connection, so it is looked for a while, with a generous bound.
    let waiting = |client: &mut pg::Client| -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0",
                &[&schema],
            )
            .unwrap()
            .get(0)
    };
    let mut observer = pg::client();
    let started = Instant::now();
    while waiting(&mut observer) > 0 {
        assert!(started.elapsed() < MARGIN, "the statement still waits");
        std::thread::sleep(Duration::from_millis(20));
    }
    holder.batch_execute("COMMIT").unwrap();
    store.put(&key, b"two", Expect::Any).unwrap();
}

#[test]
fn a_write_cut_off_unanswered_cannot_land_after_its_error() {
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let proxy = Proxy::start(pg::server_addr());
    let store = builder(&through(&proxy), &schema)
        .call_timeout(Duration::from_secs(2))
        .open()
        .unwrap();
    let key = Key::new(["fenced"]).unwrap();
    store.put(&key, b"before", Expect::Absent).unwrap();

    // The put's request is held back on its way, as a congested or
    // partitioned network delays it, while new connections pass: the call
    // gives up, its cancel finds nothing running, and the request is still
    // due to arrive.
    proxy.hold_open_connections();
    let err = store.put(&key, b"late", Expect::Any).unwrap_err();
    assert!(err.is_transient(), "{err}");
    let chain = error_chain(&err);
    assert!(chain.contains("call deadline"), "{chain}");
    // The store ended the session the request was sent on, through a new
    // connection, before it answered.
    assert!(!chain.contains("may still land"), "{chain}");

    // The request arrives now, and the server has answered or closed its
    // connection: nothing landed.
    proxy.release_held();
    let direct = builder(&pg::url(), &schema).open().unwrap();
    assert_eq!(direct.get(&key).unwrap().unwrap().value, b"before");
}
