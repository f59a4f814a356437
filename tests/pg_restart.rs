//! A PostgreSQL server restarted (as by a crash: `-m immediate` in CI) in the
//! middle of a workload: every write acknowledged before, during and after it is
//! there afterwards, the calls that met the restart failed with transient
//! errors, and the workload completes on new connections. Alone in its binary:
//! the restart would disturb any test running beside it.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::pg::{self, Schemas};
use jobsafe::{Batch, Expect, Key, PgStore, Store, Version};

const WORKERS: usize = 4;
/// Writes each worker makes before the restart is even asked for, and after
/// it is done.
const BEFORE: usize = 40;
const AFTER: usize = 40;

/// What a worker knows was written: keys with their values, and counter
/// increments acknowledged.
#[derive(Default)]
struct Acked {
    records: Vec<(Key, Vec<u8>, Version)>,
    increments: u64,
    transient: usize,
}

#[test]
fn a_server_restart_mid_workload_loses_no_acknowledged_write() {
    let restart = std::env::var(pg::RESTART_VAR).unwrap_or_else(|_| {
        panic!(
            "this test restarts the server: set {} to a command that does it \
             (`bash .ci/postgres.sh` sets it)",
            pg::RESTART_VAR
        )
    });
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let store = PgStore::builder(&pg::url())
        .schema(&schema)
        .connect_timeout(Duration::from_secs(30))
        .open()
        .unwrap();
    let restarted = Arc::new(AtomicBool::new(false));
    let done_before = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (store, restarted, done_before) =
                (store.clone(), restarted.clone(), done_before.clone());
            std::thread::spawn(move || work(w, &store, &restarted, &done_before))
        })
        .collect();
    while done_before.load(Ordering::SeqCst) < WORKERS {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = std::process::Command::new("sh")
        .args(["-c", &restart])
        .status()
        .unwrap();
    assert!(status.success(), "{restart} failed: {status}");
    restarted.store(true, Ordering::SeqCst);
    let acked: Vec<Acked> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    // A fresh store: nothing is answered from what the old one remembers.
    let reopened = pg::open(&schema);
    let mut records = 0;
    let mut transient = 0;
    for (w, acked) in acked.iter().enumerate() {
        for (key, value, version) in &acked.records {
            let entry = reopened.get(key).unwrap();
            let entry = entry.unwrap_or_else(|| panic!("acknowledged {key} is gone"));
            assert_eq!(&entry.value, value, "{key}");
            assert_eq!(entry.version, *version, "{key}");
            records += 1;
        }
        let counter = reopened.get(&counter(w)).unwrap().unwrap();
        let count: u64 = String::from_utf8(counter.value).unwrap().parse().unwrap();
        // An increment whose answer was lost may have landed: at least, never less.
        assert!(
            count >= acked.increments,
            "worker {w}: counter {count}, {} increments acknowledged",
            acked.increments
        );
        transient += acked.transient;
    }
    println!("pg_restart: workers={WORKERS} records={records} transient_errors={transient}");
    assert!(
        transient > 0,
        "no call noticed the restart: the test did not test it"
    );
}

fn counter(worker: usize) -> Key {
    Key::new(["counters", &worker.to_string()]).unwrap()
}

/// Writes records (one by one and in pairs) and increments a counter, retrying
/// each step after a transient error until it is known to have landed.
fn work(w: usize, store: &PgStore, restarted: &AtomicBool, done_before: &AtomicUsize) -> Acked {
    let mut acked = Acked::default();
    let mut after = 0;
    let mut i = 0;
    while i < BEFORE || after < AFTER {
        if i == BEFORE {
            done_before.fetch_add(1, Ordering::SeqCst);
        }
        let key = Key::new(["records", &w.to_string(), &i.to_string()]).unwrap();
        let twin = key.child("twin").unwrap();
        let value = format!("worker {w} record {i}").into_bytes();
        let outcome = if i % 3 == 0 {
            let batch = Batch::new().put(&key, value.clone(), Expect::Absent).put(
                &twin,
                value.clone(),
                Expect::Absent,
            );
            store.apply(&batch).map(|_| ())
        } else {
            store.put(&key, &value, Expect::Absent).map(|_| ())
        };
        match outcome {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                acked.transient += 1;
                continue; // again; a conflict below tells whether it had landed
            }
            Err(e) if e.is_conflict() => {
                // A retry of a write whose answer was lost: it did land.
            }
            Err(e) => panic!("worker {w} record {i}: {e}"),
        }
        let keys = if i % 3 == 0 {
            vec![key, twin]
        } else {
            vec![key]
        };
        for key in keys {
            match store.get(&key) {
                Ok(Some(entry)) => {
                    assert_eq!(entry.value, value, "{key}");
                    acked.records.push((key, value.clone(), entry.version));
                }
                Ok(None) => panic!("{key} was acknowledged but is not there"),
                // The read is lost, not the write: it is checked at the end anyway.
                Err(e) if e.is_transient() => acked.transient += 1,
                Err(e) => panic!("{key}: {e}"),
            }
        }
        match increment(store, &counter(w)) {
            Ok(()) => acked.increments += 1,
            Err(e) if e.is_transient() => acked.transient += 1,
            Err(e) => panic!("worker {w} counter: {e}"),
        }
        i += 1;
        if restarted.load(Ordering::SeqCst) {
            after += 1;
        }
    }
    acked
}

fn increment(store: &PgStore, key: &Key) -> jobsafe::Result<()> {
    loop {
        let current = store.get(key)?;
        let (n, expect) = match &current {
            Some(e) => (
                String::from_utf8_lossy(&e.value).parse::<u64>().unwrap(),
                Expect::Version(e.version),
            ),
            None => (0, Expect::Absent),
        };
        match store.put(key, (n + 1).to_string().as_bytes(), expect) {
            Err(e) if e.is_conflict() => continue,
            other => return other.map(|_| ()),
        }
    }
}
