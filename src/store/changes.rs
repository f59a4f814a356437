//! Change notifications: a store tells who watches a prefix that other
//! writers may have changed records under it, so that a runner or a
//! subscriber looks again instead of polling.
//!
//! A notification is a hint, never data: it may come when nothing changed
//! (a write elsewhere in the same journal, say), and several changes may
//! come as one. Whoever watches reads the store when told, and a slow poll
//! stays the safety net where a store cannot tell (see
//! [`Store::changes_by_others`](super::Store::changes_by_others)).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::packed;
#[cfg(test)]
use crate::key::Key;
use crate::key::Prefix;
use crate::wake::Signal;

/// Tells that other writers may have changed records under a prefix; from
/// [`Store::changes_by_others`](super::Store::changes_by_others). Each notification bumps a
/// count: read it with [`seen`](Changes::seen), look at the store, then
/// wait for a count past it with [`changed`](Changes::changed), so that a
/// change between the look and the wait is never missed. Watching lasts
/// while a clone lives.
///
/// ```
/// use jobsafe::{Expect, Key, LogStore, Prefix, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let service = LogStore::open(dir.path())?;
/// let Some(changes) = service.changes_by_others(&Prefix::new(["jobs"])?) else {
///     return Ok(()); // Not on Linux: poll instead.
/// };
/// let seen = changes.seen();
/// // Another process writes (another handle stands for it here)...
/// let other = LogStore::open(dir.path())?;
/// other.put(&Key::new(["jobs", "42"])?, b"{}", Expect::Any)?;
/// // ...and the service hears of it, and finds the record.
/// changes.changed(seen).await;
/// assert!(service.get(&Key::new(["jobs", "42"])?)?.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Changes {
    signal: Arc<Signal>,
}

impl Changes {
    /// How many notifications came so far.
    pub fn seen(&self) -> u64 {
        self.signal.generation()
    }

    /// Completes with the new count once a notification came after `seen`;
    /// holds no thread while it waits.
    pub fn changed(&self, seen: u64) -> impl Future<Output = u64> + Send + '_ {
        std::future::poll_fn(move |cx| self.signal.poll_changed(seen, cx))
    }

    /// The signal behind it, for the crate's own waits.
    pub(crate) fn signal(&self) -> &Signal {
        &self.signal
    }
}

/// A store's watchers, by prefix.
///
/// A store notes what changed while it holds its own locks
/// ([`note_packed`](ChangeFeed::note_packed), [`note_all`](ChangeFeed::note_all)),
/// and tells the watchers ([`tell`](ChangeFeed::tell)) once it has let go of
/// them: telling wakes tasks, whose code must never run under a store's lock.
#[derive(Debug, Default)]
pub(crate) struct ChangeFeed {
    watchers: Mutex<Vec<Watcher>>,
    /// How many watchers may be alive: writers skip collecting keys at 0.
    watched: AtomicUsize,
    /// What was noted and not told yet. A leaf mutex.
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    all: bool,
    keys: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Watcher {
    prefix: Vec<u8>,
    signal: Weak<Signal>,
}

impl ChangeFeed {
    /// Watches `prefix` from now on.
    pub(crate) fn watch(&self, prefix: &Prefix) -> Changes {
        let signal = Arc::new(Signal::default());
        let mut watchers = self.watchers.lock();
        watchers.retain(|w| w.signal.strong_count() > 0);
        watchers.push(Watcher {
            prefix: packed::pack(prefix.segments()),
            signal: Arc::downgrade(&signal),
        });
        self.watched.store(watchers.len(), Ordering::Release);
        Changes { signal }
    }

    /// Whether anyone may be watching: if not, a writer need not say what
    /// it changed. May say so for a while after the last watch was dropped;
    /// [`prune`](ChangeFeed::prune) knows.
    pub(crate) fn is_watched(&self) -> bool {
        self.watched.load(Ordering::Acquire) > 0
    }

    /// Forgets dropped watches; whether any is left.
    pub(crate) fn prune(&self) -> bool {
        let mut watchers = self.watchers.lock();
        watchers.retain(|w| w.signal.strong_count() > 0);
        self.watched.store(watchers.len(), Ordering::Release);
        !watchers.is_empty()
    }

    /// Notes that the packed `keys` changed, to [`tell`](ChangeFeed::tell)
    /// later: callable under a store's locks.
    pub(crate) fn note_packed(&self, keys: Vec<Vec<u8>>) {
        if !keys.is_empty() {
            self.pending.lock().keys.extend(keys);
        }
    }

    /// Notes that anything may have changed, to [`tell`](ChangeFeed::tell)
    /// later: callable under a store's locks.
    pub(crate) fn note_all(&self) {
        if self.is_watched() {
            self.pending.lock().all = true;
        }
    }

    /// Tells the watchers what was noted. Never called under a store's locks.
    pub(crate) fn tell(&self) {
        let pending = std::mem::take(&mut *self.pending.lock());
        if pending.all {
            self.changed_all();
        } else if !pending.keys.is_empty() {
            self.changed_packed(pending.keys.iter().map(Vec::as_slice));
        }
    }

    /// Tells the watchers of every prefix that one of the packed `keys` is
    /// under.
    pub(crate) fn changed_packed<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        let keys: Vec<&[u8]> = keys.into_iter().collect();
        self.raise(|prefix| keys.iter().any(|key| packed::is_under(key, prefix)));
    }

    /// Tells the watchers of every prefix that `key` is under.
    #[cfg(test)]
    pub(crate) fn changed_key(&self, key: &Key) {
        let key = packed::pack(key.segments());
        self.changed_packed([key.as_slice()]);
    }

    /// Tells every watcher: what changed is not known.
    pub(crate) fn changed_all(&self) {
        self.raise(|_| true);
    }

    fn raise(&self, concerns: impl Fn(&[u8]) -> bool) {
        if !self.is_watched() {
            return;
        }
        let signals: Vec<Arc<Signal>> = {
            let mut watchers = self.watchers.lock();
            watchers.retain(|w| w.signal.strong_count() > 0);
            self.watched.store(watchers.len(), Ordering::Release);
            watchers
                .iter()
                .filter(|w| concerns(&w.prefix))
                .filter_map(|w| w.signal.upgrade())
                .collect()
        };
        // Raised outside the lock: a wake-up may run a task that watches.
        for signal in signals {
            signal.raise();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_the_watchers_of_a_prefix_above_the_key_are_told() {
        let feed = ChangeFeed::default();
        let jobs = feed.watch(&Prefix::new(["jobs"]).unwrap());
        let job = feed.watch(&Prefix::new(["jobs", "7"]).unwrap());
        let locks = feed.watch(&Prefix::new(["locks"]).unwrap());
        feed.changed_key(&Key::new(["jobs", "7", "event"]).unwrap());
        assert_eq!((jobs.seen(), job.seen(), locks.seen()), (1, 1, 0));
        // Whole segments only: `jobs7` is not under `jobs`.
        feed.changed_key(&Key::new(["jobs7"]).unwrap());
        assert_eq!(jobs.seen(), 1);
        feed.changed_all();
        assert_eq!((jobs.seen(), job.seen(), locks.seen()), (2, 2, 1));
    }

    #[test]
    fn a_dropped_watch_is_forgotten() {
        let feed = ChangeFeed::default();
        let watch = feed.watch(&Prefix::all());
        assert!(feed.is_watched());
        drop(watch);
        feed.changed_all();
        assert!(!feed.is_watched());
    }
}
