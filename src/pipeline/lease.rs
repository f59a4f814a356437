//! A runner's lease on a subject: the lock guard, its keep-alive, and the one
//! question every write asks first: is the lease still ours?

use parking_lot::Mutex;

use crate::clock::SharedClock;
use crate::fencing::FencingToken;
use crate::lock::{KeepAlive, KeepAliveEvent, LockGuard, LostLease};
use crate::store::Store;

pub(crate) struct Lease<S: Store> {
    guard: Option<LockGuard<S>>,
    keep_alive: Option<KeepAlive>,
    clock: SharedClock,
    token: FencingToken,
    /// The lease's end as last renewed, or why it was lost.
    state: Mutex<Result<u64, String>>,
}

impl<S: Store> Lease<S> {
    pub(crate) fn new(
        guard: LockGuard<S>,
        keep_alive: Option<KeepAlive>,
        clock: SharedClock,
    ) -> Self {
        let token = guard.token();
        let expires_ms = guard.record().expires_ms;
        Lease {
            guard: Some(guard),
            keep_alive,
            clock,
            token,
            state: Mutex::new(Ok(expires_ms)),
        }
    }

    pub(crate) fn token(&self) -> FencingToken {
        self.token
    }

    /// Why the lease is no longer ours, or `None` while it is.
    pub(crate) fn lost(&self) -> Option<String> {
        let mut state = self.state.lock();
        if let Some(keep_alive) = &self.keep_alive {
            for event in keep_alive.events() {
                match (&mut *state, event) {
                    (Ok(expires), KeepAliveEvent::Renewed(record)) => *expires = record.expires_ms,
                    (Ok(_), KeepAliveEvent::Lost(LostLease::TakenOver(holder))) => {
                        *state = Err(format!(
                            "the subject lock was taken over by {}",
                            holder.holder()
                        ));
                    }
                    (Ok(_), KeepAliveEvent::Lost(LostLease::Gone)) => {
                        *state = Err("the subject lock was removed".to_owned());
                    }
                    (Ok(_), KeepAliveEvent::Expired) => {
                        *state = Err("no renewal of the subject lock was confirmed before \
                                      its safety margin: it may end at any time"
                            .to_owned());
                    }
                    _ => {}
                }
            }
        }
        if let Ok(expires) = *state
            && self.clock.now_ms() >= expires
        {
            *state = Err(format!(
                "the lease on the subject lock ended at {expires} ms"
            ));
        }
        state.as_ref().err().cloned()
    }

    /// Stops renewing and releases the lock if it is still ours.
    pub(crate) fn release(mut self) {
        if let Some(keep_alive) = self.keep_alive.take() {
            keep_alive.stop();
        }
        if let Some(guard) = self.guard.take() {
            // Best effort: a lock we lost is left to its holder, and an
            // unreachable store lets the lease end by itself.
            let _ = guard.release();
        }
    }
}
