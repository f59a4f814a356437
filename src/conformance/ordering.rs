//! The clause about real-time order across handles: when one write to a key
//! ended before another began, the later one carries the higher version,
//! whichever handles (processes, machines) made them.
//!
//! The check is a history checker in the manner of linearizability checkers:
//! every operation is recorded with the instants it started and ended and what
//! it saw (the version it wrote, the version it read, or the version a
//! conflict reported). For two operations A and B on one key where A ended
//! before B started, the version A wrote or saw is a lower bound for B: B
//! writes a higher version, and B reads or is told of a version at least as
//! high. An operation whose outcome is unknown (a transient error: it may or
//! may not have taken effect) sets no bound.

use std::sync::{Barrier, Mutex};
use std::time::Instant;

use super::support::{During, key};
use super::{Harness, Outcome, Verdict, Violation};
use crate::error::Error;
use crate::key::Key;
use crate::store::{Batch, Expect, Store, Version};

/// Handles opened on the same data: the one `fresh` gave and two more.
const HANDLES: usize = 3;
/// Threads per handle in the mixed phase.
const THREADS: usize = 2;
/// Operations per thread in the mixed phase.
const OPS: usize = 40;
/// Keys the operations share: few, so that they collide.
const KEYS: usize = 3;
/// A large value: long enough that a statement carrying it takes time on a
/// networked store, while small ones overtake it.
const LARGE: usize = 1 << 20;
/// Most small writes racing one large write in the overlap phase.
const MAX_RACING: usize = 2_000;

/// What one operation saw of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// It wrote this version.
    Wrote(Version),
    /// It read this version, or no record.
    Read(Option<Version>),
    /// Its precondition failed; the key was at this version, or absent.
    Conflict(Option<Version>),
    /// It deleted (or found nothing to delete).
    Deleted,
    /// A transient error: it may or may not have taken effect.
    Unknown,
}

impl Seen {
    /// The version it wrote or saw: a lower bound for what comes after it.
    fn bound(self) -> Option<Version> {
        match self {
            Seen::Wrote(v) | Seen::Read(Some(v)) | Seen::Conflict(Some(v)) => Some(v),
            _ => None,
        }
    }
}

/// One recorded operation on one key.
#[derive(Clone, Debug)]
struct Recorded {
    key: usize,
    handle: usize,
    what: &'static str,
    start: Instant,
    end: Instant,
    seen: Seen,
}

/// The history of a run, shared by the threads that make it.
#[derive(Default)]
struct History(Mutex<Vec<Recorded>>);

impl History {
    fn push(&self, op: Recorded) {
        // A thread that panicked while holding the lock poisoned it; the
        // history it left is still whole, so go on recording.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    fn into_ops(self) -> Vec<Recorded> {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs one operation on `store` and records what it saw of each key it
/// touched (one for a put, get or delete; several for a batch).
struct Caller<'a, S> {
    store: &'a S,
    handle: usize,
    keys: &'a [Key],
    history: &'a History,
}

impl<S: Store> Caller<'_, S> {
    fn put(
        &self,
        k: usize,
        value: &[u8],
        expect: Expect,
        what: &'static str,
    ) -> Result<Seen, Violation> {
        self.record(&[k], what, || {
            match self.store.put(&self.keys[k], value, expect) {
                Ok(v) => Ok(vec![Seen::Wrote(v)]),
                Err(e) => failed(e, what).map(|seen| vec![seen]),
            }
        })
        .map(|seen| seen[0])
    }

    fn get(&self, k: usize) -> Result<Seen, Violation> {
        self.record(&[k], "get", || match self.store.get(&self.keys[k]) {
            Ok(entry) => Ok(vec![Seen::Read(entry.map(|e| e.version))]),
            Err(e) => failed(e, "get").map(|seen| vec![seen]),
        })
        .map(|seen| seen[0])
    }

    fn delete(&self, k: usize) -> Result<Seen, Violation> {
        self.record(&[k], "delete", || {
            match self.store.delete(&self.keys[k], Expect::Any) {
                Ok(_) => Ok(vec![Seen::Deleted]),
                Err(e) => failed(e, "delete").map(|seen| vec![seen]),
            }
        })
        .map(|seen| seen[0])
    }

    /// A batch putting every key of `ks` with `Expect::Any`.
    fn batch(&self, ks: &[usize], value: &[u8]) -> Result<(), Violation> {
        let mut batch = Batch::new();
        for &k in ks {
            batch = batch.put(&self.keys[k], value, Expect::Any);
        }
        self.record(ks, "batch", || match self.store.apply(&batch) {
            Ok(applied) => Ok(applied
                .iter()
                .map(|a| match a {
                    crate::store::Applied::Put(v) => Seen::Wrote(*v),
                    crate::store::Applied::Deleted(_) => Seen::Deleted,
                })
                .collect()),
            Err(e) => failed(e, "batch").map(|seen| vec![seen; ks.len()]),
        })
        .map(|_| ())
    }

    fn record(
        &self,
        ks: &[usize],
        what: &'static str,
        call: impl FnOnce() -> Result<Vec<Seen>, Violation>,
    ) -> Result<Vec<Seen>, Violation> {
        let start = Instant::now();
        let seen = call()?;
        let end = Instant::now();
        for (&k, &s) in ks.iter().zip(&seen) {
            self.history.push(Recorded {
                key: k,
                handle: self.handle,
                what,
                start,
                end,
                seen: s,
            });
        }
        Ok(seen)
    }
}

/// What an error of an operation means for the history.
fn failed(e: Error, what: &str) -> Result<Seen, Violation> {
    if e.is_conflict() {
        return Ok(Seen::Conflict(e.conflict_current().flatten()));
    }
    if e.is_transient() {
        return Ok(Seen::Unknown);
    }
    Err(Violation::new(format!(
        "{what}: expected success, a conflict or a transient error, got: {e}"
    )))
}

/// Versions follow real time across independently opened handles: of two
/// operations on one key, if the first ended before the second started, the
/// second writes a higher version than the first wrote or saw, and reads (or is
/// told by a conflict of) a version at least as high. Re-creation after a
/// delete included.
///
/// Three handles on the same data (from [`Harness::open_another`]) first race
/// each large write against a stream of small writes from another handle, then
/// run a fixed mix of puts with every precondition, gets, deletes and batches
/// from two threads each. Skipped if the harness opens no second handle.
pub fn versions_follow_real_time_across_handles<H: Harness>(h: &mut H) -> Verdict {
    let first = h.fresh().during("open a fresh store")?;
    let mut handles = vec![first];
    while handles.len() < HANDLES {
        match h.open_another(&handles[0]).during("open another handle")? {
            Some(another) => handles.push(another),
            None => return Ok(Outcome::Skipped("the harness opens no second handle")),
        }
    }
    let keys = (0..KEYS)
        .map(|i| key(["order", &i.to_string()]))
        .collect::<Result<Vec<_>, _>>()?;
    let history = History::default();
    let caller = |handle: usize| Caller {
        store: &handles[handle],
        handle,
        keys: &keys,
        history: &history,
    };

    // Overlap: one handle's large write races small writes to the same key
    // from another, which go on until the large one returns; then each handle
    // reads. A store that draws a version before it serializes on the key lets
    // a small write overtake with a higher version and be overwritten.
    let large = vec![b'L'; LARGE];
    for a in 0..HANDLES {
        let b = (a + 1) % HANDLES;
        let done = std::sync::atomic::AtomicBool::new(false);
        let results: Vec<Result<(), Violation>> = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let result = caller(a)
                    .put(0, &large, Expect::Any, "large put")
                    .map(|_| ());
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                result
            });
            let racer = scope.spawn(|| {
                for i in 0..MAX_RACING {
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    caller(b).put(0, format!("small {i}").as_bytes(), Expect::Any, "small put")?;
                }
                Ok(())
            });
            [writer, racer]
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(Violation::new("a thread panicked")))
                })
                .collect()
        });
        results.into_iter().collect::<Result<(), _>>()?;
        for handle in 0..HANDLES {
            caller(handle).get(0)?;
        }
    }

    // A fixed mix from every handle at once.
    let start = Barrier::new(HANDLES * THREADS);
    let results: Vec<Result<(), Violation>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..HANDLES * THREADS)
            .map(|t| {
                let (caller, start, large) = (caller(t / THREADS), &start, &large);
                scope.spawn(move || {
                    start.wait();
                    mixed(&caller, t as u64, large)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(Violation::new("a thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect::<Result<(), _>>()?;

    check(&keys, &history.into_ops())?;
    Ok(Outcome::Passed)
}

/// One thread's share of the mixed phase: the same operations every run.
fn mixed<S: Store>(caller: &Caller<'_, S>, seed: u64, large: &[u8]) -> Result<(), Violation> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut last: [Option<Version>; KEYS] = [None; KEYS];
    for i in 0..OPS {
        let k = rng.usize(..KEYS);
        let small = format!("t{seed} op{i}");
        let seen = match rng.u8(..20) {
            0..=5 => caller.put(k, small.as_bytes(), Expect::Any, "put(any)")?,
            6..=7 => caller.put(k, small.as_bytes(), Expect::Absent, "put(absent)")?,
            8..=10 => match last[k] {
                Some(v) => caller.put(k, small.as_bytes(), Expect::Version(v), "put(version)")?,
                None => caller.get(k)?,
            },
            11..=14 => caller.get(k)?,
            15..=16 => caller.delete(k)?,
            17..=18 => {
                let other = (k + 1 + rng.usize(..KEYS - 1)) % KEYS;
                caller.batch(&[k, other], small.as_bytes())?;
                Seen::Unknown
            }
            _ => caller.put(k, large, Expect::Any, "large put")?,
        };
        if let Some(v) = seen.bound() {
            last[k] = Some(v);
        }
    }
    Ok(())
}

/// Every pair of operations on one key in real-time order keeps the version
/// order.
fn check(keys: &[Key], ops: &[Recorded]) -> Result<(), Violation> {
    for (k, key) in keys.iter().enumerate() {
        let on_key: Vec<&Recorded> = ops.iter().filter(|op| op.key == k).collect();
        for a in &on_key {
            let Some(bound) = a.seen.bound() else {
                continue;
            };
            for b in on_key.iter().filter(|b| a.end < b.start) {
                let broken = match b.seen {
                    Seen::Wrote(v) => v <= bound,
                    Seen::Read(Some(v)) | Seen::Conflict(Some(v)) => v < bound,
                    _ => false,
                };
                if broken {
                    return Err(Violation::new(format!(
                        "on {key}: a {} through handle {} saw {:?} and ended before a {} through \
                         handle {} started, which saw {:?}: a write after another must get a \
                         higher version, and a read after it must see at least its version",
                        a.what, a.handle, a.seen, b.what, b.handle, b.seen
                    )));
                }
            }
        }
    }
    Ok(())
}
