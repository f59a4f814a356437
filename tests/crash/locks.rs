//! Lock holders: a child takes, renews and releases `JobLock`s in a loop and is
//! stopped mid-acquire, mid-renewal or mid-release.
//!
//! Child `i` reads a `ManualClock` that starts at `START_MS + i * STEP` and moves
//! one millisecond per operation, never more than one `TTL` in all, so every
//! lease it writes ends by `start + 2 * TTL`. After the stop the parent checks,
//! per lock key:
//!
//! - the stored lock is what the acknowledgements say: the lock last
//!   acknowledged as held is still there with its token and at least its
//!   acknowledged expiry (unless its release was in flight), a lock
//!   acknowledged as released is not back, and an unacknowledged holder exists
//!   only if an acquire was in flight;
//! - no lock stays held forever: no lease ends after `start + 2 * TTL`, and at
//!   that time (a `ManualClock` advanced past every expiry) another holder gets
//!   the lock;
//! - fencing tokens only go up: every token the child was acknowledged, and the
//!   parent's own, is greater than every token issued before it for that key.
//!
//! The parent keeps its own lock now and then, so that the next child takes an
//! expired lease over instead of finding the key free.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jobsafe::lock::{Acquire, LockRequest, Release, Renewal};
use jobsafe::{Clock, JobLock, Key, ManualClock};

use super::backend::Backend;
use super::part::{ChildContext, Model, Outcome, Tally, child_start};

const KEYS: u64 = 3;
const TTL: Duration = Duration::from_secs(30);
/// Between two children's clocks: past every lease of the earlier one and of the
/// parent's check.
const STEP_MS: u64 = 4 * ttl_ms();

const fn ttl_ms() -> u64 {
    TTL.as_secs() * 1000
}

/// When the parent checks after child `iteration`: every lease the child wrote
/// has ended.
fn check_time(iteration: u64) -> u64 {
    child_start(iteration, STEP_MS) + 2 * ttl_ms()
}

fn lock_key(n: u64) -> Key {
    Key::new(["crash", &format!("lock-{n}")]).unwrap()
}

/// What the acknowledgements say about one lock key.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Acked {
    /// Nothing acknowledged by the current child.
    Unknown,
    Held {
        token: u64,
        expires_ms: u64,
    },
    Released {
        token: u64,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct KeyState {
    /// The greatest token issued for the key so far (acknowledged to a child,
    /// found in the store, or taken by the parent).
    max_token: u64,
    acked: Option<Acked>,
}

/// The parent's model of the locks.
pub struct Locks {
    backend: Backend,
    root: PathBuf,
    keys: BTreeMap<String, KeyState>,
    /// The last intent of the current child: `(operation, key name)`.
    in_flight: Option<(String, String)>,
    /// Stops that landed in an acquire, a renewal or a release.
    mid: BTreeMap<String, u64>,
    takeovers: u64,
}

impl Locks {
    pub fn new(backend: Backend, root: PathBuf) -> Self {
        backend.open(&root).unwrap();
        Locks {
            backend,
            root,
            keys: (0..KEYS)
                .map(|n| (format!("lock-{n}"), KeyState::default()))
                .collect(),
            in_flight: None,
            mid: BTreeMap::new(),
            takeovers: 0,
        }
    }

    fn state(&mut self, key: &str) -> &mut KeyState {
        self.keys.entry(key.to_owned()).or_default()
    }
}

fn numbers(fields: &[&str]) -> Vec<u64> {
    fields.iter().map(|f| f.parse().unwrap()).collect()
}

impl Model for Locks {
    fn absorb(&mut self, report: &str, tally: &mut Tally) {
        let fields: Vec<&str> = report.split(' ').collect();
        match fields.as_slice() {
            ["begin", op, key, ..] => {
                self.in_flight = Some(((*op).to_owned(), (*key).to_owned()));
            }
            ["acquired", key, rest @ ..] => {
                self.in_flight = None;
                let [token, expires_ms] = numbers(rest)[..] else {
                    panic!("bad report {report:?}")
                };
                let state = self.state(key);
                if token <= state.max_token {
                    tally.violations.push(format!(
                        "{key}: token {token} acquired after token {} was issued",
                        state.max_token
                    ));
                }
                state.max_token = state.max_token.max(token);
                state.acked = Some(Acked::Held { token, expires_ms });
                tally.acknowledged += 1;
            }
            ["renewed", key, rest @ ..] => {
                self.in_flight = None;
                let [token, expires_ms] = numbers(rest)[..] else {
                    panic!("bad report {report:?}")
                };
                let state = self.state(key);
                if !matches!(state.acked, Some(Acked::Held { token: held, .. }) if held == token) {
                    tally.violations.push(format!(
                        "{key}: renewed token {token} while the model says {:?}",
                        state.acked
                    ));
                }
                state.acked = Some(Acked::Held { token, expires_ms });
                tally.acknowledged += 1;
            }
            ["released", key, token] => {
                self.in_flight = None;
                let token = token.parse().unwrap();
                self.state(key).acked = Some(Acked::Released { token });
                tally.acknowledged += 1;
            }
            _ => tally
                .violations
                .push(format!("unexpected report {report:?}")),
        }
    }

    fn check(&mut self, iteration: u64, tally: &mut Tally) {
        if let Some((op, _)) = &self.in_flight {
            *self.mid.entry(op.clone()).or_default() += 1;
        }
        let in_flight = self.in_flight.take();
        let Some(store) = tally.ok(iteration, "reopen", self.backend.open(&self.root)) else {
            return;
        };
        let clock = ManualClock::new(check_time(iteration));
        let locks = JobLock::new(store, Arc::new(clock));
        // The key whose lock the parent keeps this time (none, one in four).
        let keep_one = iteration % (KEYS + 1);
        for n in 0..KEYS {
            let name = format!("lock-{n}");
            let key = lock_key(n);
            let in_flight_here = in_flight
                .as_ref()
                .filter(|(_, k)| *k == name)
                .map(|(op, _)| op.as_str());
            let mut state = *self.state(&name);
            let Some(stored) = tally.ok(iteration, &format!("peek {name}"), locks.peek(&key))
            else {
                continue;
            };
            let acked = state.acked.take().unwrap_or(Acked::Unknown);
            match (&stored, acked) {
                (Some(lock), _) if lock.expires_ms > check_time(iteration) => tally.violate(
                    iteration,
                    format!(
                        "{name}: token {} is held until {}, past every lease the child could write",
                        lock.token, lock.expires_ms
                    ),
                ),
                (Some(lock), Acked::Held { token, expires_ms }) if lock.token.get() == token => {
                    if lock.expires_ms < expires_ms {
                        tally.violate(
                            iteration,
                            format!(
                                "{name}: acknowledged renewal to {expires_ms} lost, lease ends at {}",
                                lock.expires_ms
                            ),
                        );
                    }
                }
                (Some(lock), Acked::Released { token }) if lock.token.get() == token => tally
                    .violate(
                        iteration,
                        format!("{name}: acknowledged release of token {token} undone"),
                    ),
                (Some(lock), _) if lock.token.get() > state.max_token => {
                    // A holder nobody acknowledged: only an acquire in flight
                    // may have written it.
                    if in_flight_here != Some("acquire") {
                        tally.violate(
                            iteration,
                            format!("{name}: unacknowledged holder with token {}", lock.token),
                        );
                    }
                    state.max_token = lock.token.get();
                }
                (Some(lock), _) => {
                    // A holder from before the child's acknowledgements: only
                    // the parent's kept lock, if the child never touched the key.
                    if !matches!(acked, Acked::Unknown) || lock.token.get() != state.max_token {
                        tally.violate(
                            iteration,
                            format!(
                                "{name}: found token {} but {acked:?} was acknowledged",
                                lock.token
                            ),
                        );
                    }
                }
                (None, Acked::Held { token, .. }) => {
                    if in_flight_here != Some("release") {
                        tally.violate(
                            iteration,
                            format!("{name}: acknowledged holder with token {token} is gone"),
                        );
                    }
                }
                (None, _) => {}
            }

            // Every lease has ended: the lock is free or taken over, with a
            // greater token.
            let request = LockRequest::new().actor("crash check");
            match tally.ok(
                iteration,
                &format!("acquire {name}"),
                locks.acquire(&key, TTL, &request),
            ) {
                Some(Acquire::Acquired(guard)) => {
                    let token = guard.token().get();
                    if token <= state.max_token {
                        tally.violate(
                            iteration,
                            format!(
                                "{name}: after the stop got token {token}, not above {}",
                                state.max_token
                            ),
                        );
                    }
                    state.max_token = state.max_token.max(token);
                    if stored.is_some() {
                        self.takeovers += 1;
                    }
                    if n == keep_one {
                        // Left to expire: the next child takes it over.
                        let _ = guard.into_handle();
                    } else if let Some(released) =
                        tally.ok(iteration, &format!("release {name}"), guard.release())
                        && released != Release::Released
                    {
                        tally.violate(iteration, format!("{name}: release said {released:?}"));
                    }
                }
                Some(Acquire::Held(holder)) => tally.violate(
                    iteration,
                    format!(
                        "{name}: still held by token {} until {} after every lease ended",
                        holder.token, holder.expires_ms
                    ),
                ),
                None => {}
            }
            *self.state(&name) = state;
        }
    }

    fn extra(&self) -> String {
        let mid = |op: &str| self.mid.get(op).copied().unwrap_or(0);
        format!(
            "mid_acquire={} mid_renew={} mid_release={} takeovers={}",
            mid("acquire"),
            mid("renew"),
            mid("release"),
            self.takeovers
        )
    }
}

/// Child: acquires each lock in turn, renews it up to twice and releases it,
/// reporting every step before and after.
pub fn work(backend: Backend, root: &Path, ctx: &ChildContext) -> Outcome {
    let start = child_start(ctx.iteration, STEP_MS);
    let clock = ManualClock::new(start);
    let locks = JobLock::new(backend.open(root)?, Arc::new(clock.clone()));
    let request = LockRequest::new().actor(format!("child {}", ctx.iteration));
    let mut rng = fastrand::Rng::with_seed(ctx.seed);
    // Time moves with the work but never past one TTL, so that the parent knows
    // when every lease of this child has ended.
    let tick = || {
        if clock.now_ms() < start + ttl_ms() {
            clock.advance(Duration::from_millis(1));
        }
    };
    for n in 0.. {
        let name = format!("lock-{}", n % KEYS);
        let key = lock_key(n % KEYS);
        tick();
        ctx.report(&format!("begin acquire {name}"));
        let mut guard = match locks.acquire(&key, TTL, &request)? {
            Acquire::Acquired(guard) => guard,
            Acquire::Held(holder) => {
                return Err(format!(
                    "{name} is held by token {} until {}, at {}",
                    holder.token,
                    holder.expires_ms,
                    clock.now_ms()
                )
                .into());
            }
        };
        let token = guard.token().get();
        ctx.report(&format!(
            "acquired {name} {token} {}",
            guard.record().expires_ms
        ));
        for _ in 0..rng.u32(0..=2) {
            tick();
            ctx.report(&format!("begin renew {name} {token}"));
            match guard.renew(TTL)? {
                Renewal::Renewed(record) => {
                    ctx.report(&format!("renewed {name} {token} {}", record.expires_ms));
                }
                Renewal::Lost(lost) => return Err(format!("{name}: lost {lost:?}").into()),
            }
        }
        tick();
        ctx.report(&format!("begin release {name} {token}"));
        match guard.release()? {
            Release::Released => ctx.report(&format!("released {name} {token}")),
            other => return Err(format!("{name}: release said {other:?}").into()),
        }
    }
    Ok(())
}
