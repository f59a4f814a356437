//! Lease locks across processes, with holders killed by SIGKILL mid-hold.
//!
//! Worker processes loop acquire -> write their fencing token to a protected
//! resource -> release. The resource is a log behind `flock` that refuses tokens
//! lower than the newest it accepted. Every worker reads the same file-backed test
//! clock, which only the parent moves: a lease ends when the test says so, never
//! because a machine was slow. The parent tells one worker at a time to keep its
//! next lock and kills it, and replaces the worker. On a store local to the
//! machine it checks that the dead holder's lock is taken over at once (its
//! process is gone), and logs the death in the resource before any successor can
//! enter it; on a shared store, that the lock stays held until the dead holder's
//! expiry and is taken over from then on. At the end the resource's log must show
//! no two live holders overlapping (a holder is live until it leaves, dies or its
//! lease ends) and no accepted token going down.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::backends::SharedStore;
use common::child::{self, Child};
use jobsafe::lock::{Acquire, LockRequest};
use jobsafe::testing::FileClock;
use jobsafe::{Clock, FencingToken, JobLock, Key};

const TEST: &str = "killed_holders_are_taken_over_at_once_on_a_local_store_and_never_overlap";
#[cfg(feature = "postgres")]
const TEST_PG: &str = "killed_holders_are_taken_over_at_expiry_on_pg_and_never_overlap";
const WORKERS: usize = 3;
const KILLS: usize = 6;
/// Cycles a worker completes (competing with the others) before it is killed.
const CYCLES_BEFORE_KILL: usize = 10;
const TTL: Duration = Duration::from_secs(30);
const START_MS: u64 = 1_700_000_000_000;

fn lock_key() -> Key {
    Key::new(["vault", "lic:abc", "v1"]).unwrap()
}

/// Where the shared pieces of one run live.
struct Paths {
    test: &'static str,
    store: SharedStore,
    clock: PathBuf,
    resource: PathBuf,
}

impl Paths {
    fn in_dir(test: &'static str, store: SharedStore, dir: &Path) -> Self {
        Paths {
            test,
            store,
            clock: dir.join("clock"),
            resource: dir.join("resource.log"),
        }
    }

    fn from_env() -> Self {
        Paths {
            test: "",
            store: SharedStore::from_env(),
            clock: child::var("JOBSAFE_TEST_CLOCK").into(),
            resource: child::var("JOBSAFE_TEST_RESOURCE").into(),
        }
    }

    fn spawn_worker(&self, id: usize) -> Child {
        let mut vars = self.store.vars();
        vars.insert("JOBSAFE_TEST_CLOCK", self.clock.display().to_string());
        vars.insert("JOBSAFE_TEST_RESOURCE", self.resource.display().to_string());
        vars.insert("JOBSAFE_TEST_WORKER", id.to_string());
        let mut worker = Child::spawn(self.test, "lock-worker", &vars);
        assert_eq!(worker.expect_report(), "ready");
        worker
    }
}

#[test]
fn killed_holders_are_taken_over_at_once_on_a_local_store_and_never_overlap() {
    if child::role().as_deref() == Some("lock-worker") {
        return work_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    run(Paths::in_dir(
        TEST,
        SharedStore::Dir(dir.path().join("store")),
        dir.path(),
    ));
}

/// The same, with the lock in PostgreSQL: a store shared by machines, where a
/// dead holder's lease stands until its expiry.
#[cfg(feature = "postgres")]
#[test]
fn killed_holders_are_taken_over_at_expiry_on_pg_and_never_overlap() {
    if child::role().as_deref() == Some("lock-worker") {
        return work_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut schemas = common::pg::Schemas::default();
    run(Paths::in_dir(
        TEST_PG,
        SharedStore::Pg(schemas.fresh()),
        dir.path(),
    ));
}

fn run(paths: Paths) {
    let clock = FileClock::create(&paths.clock, START_MS).unwrap();
    let locks = JobLock::new(paths.store.open(), Arc::new(clock.clone()));
    File::create(&paths.resource).unwrap();

    let mut workers: Vec<Child> = (0..WORKERS).map(|id| paths.spawn_worker(id)).collect();
    let mut cycles = 0;
    for kill in 0..KILLS {
        let victim = kill % WORKERS;
        // Let it cycle among its rivals for a while, then keep its next lock.
        for _ in 0..CYCLES_BEFORE_KILL {
            let report = workers[victim].expect_report();
            assert!(report.starts_with("cycle "), "{report}");
            cycles += 1;
        }
        workers[victim].send("hold-next");
        let token = loop {
            let report = workers[victim].expect_report();
            if let Some(token) = report.strip_prefix("holding ") {
                break FencingToken::new(token.parse().unwrap());
            }
            assert!(report.starts_with("cycle "), "{report}");
            cycles += 1;
        };
        let replacement = paths.spawn_worker(WORKERS + kill);
        let dead = std::mem::replace(&mut workers[victim], replacement);
        if locks.store().is_machine_local() {
            // The death is logged before any successor enters: they wait for the
            // resource while the parent holds it.
            cycles += with_resource(&paths.resource, |log, _| {
                let reports = dead.kill();
                writeln!(log, "died {}", token.get()).unwrap();
                reports
            })
            .iter()
            .filter(|r| r.starts_with("cycle "))
            .count();
            // The dead holder's lock is taken over at once, by us or a worker.
            let successor = match locks
                .acquire(&lock_key(), TTL, &LockRequest::new())
                .unwrap()
            {
                Acquire::Acquired(guard) => {
                    let token = guard.token();
                    guard.release().unwrap();
                    token
                }
                Acquire::Held(current) => current.token,
            };
            assert!(
                successor > token,
                "kill {kill}: the dead holder's lock (token {token}) was not taken over at once"
            );
            continue;
        }
        cycles += dead
            .kill()
            .iter()
            .filter(|r| r.starts_with("cycle "))
            .count();

        // The dead holder's lease still stands until its expiry...
        let Acquire::Held(holder) = locks
            .acquire(&lock_key(), TTL, &LockRequest::new())
            .unwrap()
        else {
            panic!("kill {kill}: the lock of a dead holder was free before its expiry");
        };
        assert_eq!(holder.token, token, "kill {kill}");
        // ...and from its expiry on, the next acquire takes it over.
        clock.set(holder.expires_ms).unwrap();
        let successor = match locks
            .acquire(&lock_key(), TTL, &LockRequest::new())
            .unwrap()
        {
            Acquire::Acquired(guard) => {
                let token = guard.token();
                guard.release().unwrap();
                token
            }
            // A live worker took it over first.
            Acquire::Held(current) => current.token,
        };
        assert!(
            successor > token,
            "kill {kill}: at its expiry the dead holder's lock (token {token}) was not taken over"
        );
    }
    for worker in &mut workers {
        worker.send("stop");
    }
    for worker in workers {
        cycles += worker
            .finish()
            .iter()
            .filter(|r| r.starts_with("cycle "))
            .count();
    }

    let log = std::fs::read_to_string(&paths.resource).unwrap();
    let audit = audit(&log);
    println!(
        "lock_multiprocess: store={} workers={WORKERS} kills={KILLS} cycles={cycles} accepted={} overlaps={} lower_tokens={} rejected={}",
        paths.store.kind(),
        audit.accepted,
        audit.overlaps.len(),
        audit.lower_tokens.len(),
        audit.rejected
    );
    assert!(
        audit.overlaps.is_empty(),
        "overlapping leases: {:?}",
        audit.overlaps
    );
    assert!(
        audit.lower_tokens.is_empty(),
        "tokens went down: {:?}",
        audit.lower_tokens
    );
    assert_eq!(audit.rejected, 0, "no holder here outlives its lease");
    assert!(cycles > 0 && audit.accepted >= KILLS);
}

/// Child: acquire -> enter the resource -> release, until told to stop; keeps
/// (and reports) its next lock when told `hold-next`.
fn work_in_child() {
    let paths = Paths::from_env();
    let worker = child::var("JOBSAFE_TEST_WORKER");
    let clock = FileClock::open(&paths.clock);
    let locks = JobLock::new(paths.store.open(), Arc::new(clock.clone()));
    let request = LockRequest::new().actor(format!("worker {worker}"));
    let hold_next = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (hold_next, stop) = (Arc::clone(&hold_next), Arc::clone(&stop));
        std::thread::spawn(move || {
            while let Some(command) = child::receive() {
                match command.as_str() {
                    "hold-next" => hold_next.store(true, Ordering::SeqCst),
                    _ => break,
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    child::report("ready");
    while !stop.load(Ordering::SeqCst) {
        let guard = match locks.acquire(&lock_key(), TTL, &request).unwrap() {
            Acquire::Acquired(guard) => guard,
            Acquire::Held(_) => {
                // Not timing the test: only to leave the CPU to the holder.
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        };
        let token = guard.token();
        if !enter(
            &paths.resource,
            token,
            clock.now_ms(),
            guard.record().expires_ms,
        ) {
            child::report(&format!("rejected {}", token.get()));
        }
        if hold_next.swap(false, Ordering::SeqCst) {
            child::report(&format!("holding {}", token.get()));
            loop {
                std::thread::park(); // until SIGKILL
            }
        }
        leave(&paths.resource, token);
        guard.release().unwrap();
        child::report(&format!("cycle {}", token.get()));
    }
}

/// The protected resource: under an exclusive `flock`, refuses a token lower than
/// the newest accepted (logging the refusal), else logs the holder's entry.
fn enter(resource: &Path, token: FencingToken, now_ms: u64, expires_ms: u64) -> bool {
    with_resource(resource, |log, text| {
        let newest = text
            .lines()
            .filter_map(|line| line.strip_prefix("enter "))
            .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        if token
            .check_not_older_than(FencingToken::new(newest), "resource")
            .is_err()
        {
            writeln!(log, "reject {}", token.get()).unwrap();
            return false;
        }
        writeln!(log, "enter {} {now_ms} {expires_ms}", token.get()).unwrap();
        true
    })
}

fn leave(resource: &Path, token: FencingToken) {
    with_resource(resource, |log, _| {
        writeln!(log, "exit {}", token.get()).unwrap()
    });
}

fn with_resource<T>(resource: &Path, f: impl FnOnce(&mut File, &str) -> T) -> T {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(resource)
        .unwrap();
    file.lock().unwrap();
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut text).unwrap();
    let result = f(&mut file, &text);
    file.sync_data().unwrap();
    file.unlock().unwrap();
    result
}

#[derive(Debug, Default)]
struct Audit {
    accepted: usize,
    rejected: usize,
    overlaps: Vec<String>,
    lower_tokens: Vec<String>,
}

/// Replays the resource's log: an entry while another holder's lease is live (it
/// has not left or died) is an overlap; an accepted token not above the one
/// before went down.
fn audit(log: &str) -> Audit {
    let mut audit = Audit::default();
    let mut open: Option<(u64, u64)> = None; // (token, expires_ms) of the current holder
    let mut last = 0;
    for line in log.lines() {
        let fields: Vec<u64> = line
            .split(' ')
            .skip(1)
            .map(|f| f.parse().unwrap())
            .collect();
        match (line.split(' ').next(), fields.as_slice()) {
            (Some("enter"), &[token, now, expires]) => {
                audit.accepted += 1;
                if let Some((holder, holder_expires)) = open
                    && now < holder_expires
                {
                    audit.overlaps.push(format!(
                        "{token} entered at {now} while {holder} held until {holder_expires}"
                    ));
                }
                if token <= last {
                    audit.lower_tokens.push(format!("{token} after {last}"));
                }
                last = token;
                open = Some((token, expires));
            }
            (Some("exit" | "died"), &[token]) => {
                if open.is_some_and(|(holder, _)| holder == token) {
                    open = None;
                }
            }
            (Some("reject"), [_]) => audit.rejected += 1,
            _ => panic!("unexpected resource log line {line:?}"),
        }
    }
    audit
}

#[test]
fn the_audit_catches_overlaps_and_lower_tokens() {
    let clean = audit("enter 3 100 130\nexit 3\nenter 5 110 140\nenter 9 140 170\n");
    assert!(
        clean.overlaps.is_empty() && clean.lower_tokens.is_empty(),
        "{clean:?}"
    );
    let died = audit("enter 3 100 130\ndied 3\nenter 5 110 140\n");
    assert!(died.overlaps.is_empty(), "{died:?}");
    let bad = audit("enter 3 100 130\nenter 5 110 140\nexit 5\nenter 4 200 230\nreject 2\n");
    assert_eq!(bad.overlaps.len(), 1, "{bad:?}");
    assert_eq!(bad.lower_tokens.len(), 1, "{bad:?}");
    assert_eq!(bad.rejected, 1);
}
