//! The store's connections: at most `size` open at once, reused while they work.
//!
//! Checking a connection out costs no round trip. A connection the server
//! closed while it sat in the pool (an idle session ended, a restart) is
//! noticed then, from what already arrived on its socket, and replaced. When a
//! request finds its connection dead without a word (a server restart closes
//! every connection at once, and a request may be sent before the news), the
//! pool's generation goes up, and each connection made before is pinged once on
//! its next check-out, and replaced if dead: so the call after the one that
//! failed gets a working connection instead of another dead one.
//!
//! A connection goes back to the pool only through [`Pooled::release`], once its
//! request has finished. One dropped midway is closed (see [`Conn`]), so that no
//! later request inherits a session in an unknown state.
//!
//! The blocking and the async face share the `size` slots, but not
//! connections: a blocking call's connection is driven by its own thread, an
//! async call's by a task of a runtime (see [`Conn`]). A call that finds every
//! slot taken and an idle connection of the other face's closes that one and
//! makes its own, so that neither face can starve the other.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::conn::{CallBound, Conn, Connector, Driver, IoTask, later};
use crate::error::{Error, Result};

/// A connection unused this long is closed.
const IDLE_FOR: Duration = Duration::from_secs(600);
/// How often unused connections are looked for.
const REAP_EVERY: Duration = Duration::from_secs(60);

/// The pool; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    /// The most connections open at once.
    size: usize,
    /// How many are open or being made: each connection checked out holds one
    /// of the `size` slots, each idle one too.
    slots: Mutex<Slots>,
    /// Signalled when a slot frees or a connection goes back idle, for the
    /// blocking face's calls waiting for one.
    freed: Condvar,
    /// The same, for the async face's.
    #[cfg(feature = "async")]
    freed_async: tokio::sync::Notify,
    /// How long a check-out waits for a free slot (making a connection is
    /// bounded by the connector).
    wait: Duration,
    generation: AtomicU64,
}

pub(crate) struct Slots {
    /// Connections checked out, or being made.
    busy: usize,
    /// How many of those are the async face's.
    busy_spawned: usize,
    /// Calls of each face waiting for a slot: the blocking face's, the async
    /// face's.
    waiting: [usize; 2],
    /// The blocking face's connections not in use, the most recently used
    /// last.
    idle: Vec<Conn<Driver>>,
    /// The async face's.
    idle_spawned: Vec<Conn<IoTask>>,
}

impl Slots {
    fn open(&self) -> usize {
        self.busy + self.idle.len() + self.idle_spawned.len()
    }

    /// The busy connections of `E`'s face.
    fn busy_of<E: Engine>(&self) -> usize {
        if E::SPAWNED {
            self.busy_spawned
        } else {
            self.busy - self.busy_spawned
        }
    }

    /// The calls of `E`'s face waiting for a slot.
    fn waiting_of<E: Engine>(&mut self) -> &mut usize {
        &mut self.waiting[usize::from(E::SPAWNED)]
    }

    fn take<E: Engine>(&mut self) {
        self.busy += 1;
        if E::SPAWNED {
            self.busy_spawned += 1;
        }
    }

    fn free(&mut self, spawned: bool) {
        self.busy -= 1;
        if spawned {
            self.busy_spawned -= 1;
        }
    }
}

/// What moves a pooled connection's bytes: which face's connection it is, and
/// so which idle list it waits in.
pub(crate) trait Engine: Sized {
    /// Whether it is the async face's.
    const SPAWNED: bool;
    /// The other face's.
    type Other: Engine;

    fn idle(slots: &mut Slots) -> &mut Vec<Conn<Self>>;

    /// Takes the other face's least recently used idle connection, to close
    /// for its slot.
    fn evict_other(slots: &mut Slots) -> Option<Evicted>;
}

impl Engine for Driver {
    const SPAWNED: bool = false;
    type Other = IoTask;

    fn idle(slots: &mut Slots) -> &mut Vec<Conn<Self>> {
        &mut slots.idle
    }

    fn evict_other(slots: &mut Slots) -> Option<Evicted> {
        (!slots.idle_spawned.is_empty()).then(|| Evicted::Spawned(slots.idle_spawned.remove(0)))
    }
}

impl Engine for IoTask {
    const SPAWNED: bool = true;
    type Other = Driver;

    fn idle(slots: &mut Slots) -> &mut Vec<Conn<Self>> {
        &mut slots.idle_spawned
    }

    fn evict_other(slots: &mut Slots) -> Option<Evicted> {
        (!slots.idle.is_empty()).then(|| Evicted::Driven(slots.idle.remove(0)))
    }
}

/// An idle connection taken out to be closed, outside the pool's lock.
#[allow(dead_code, reason = "held only to be dropped")]
pub(crate) enum Evicted {
    Driven(Conn<Driver>),
    Spawned(Conn<IoTask>),
}

/// What a wait for a slot found: an idle connection, or a free slot (taken,
/// with perhaps the other face's connection that held it, to close).
enum Taken<E> {
    Idle(Conn<E>),
    Free(Option<Evicted>),
}

/// A connection checked out of the pool, with its slot.
pub(crate) struct Pooled<E: Engine = Driver> {
    conn: Conn<E>,
    // Dropped after `conn`: the slot frees once the connection is closed.
    slot: Slot,
}

/// One of the pool's `size` slots, counted busy until dropped or given back
/// with an idle connection.
struct Slot {
    pool: Arc<Inner>,
    held: bool,
    /// Whether the async face holds it.
    spawned: bool,
}

impl Slot {
    /// The slot [`Inner::try_take`] took for `E`'s face.
    fn taken<E: Engine>(pool: &Arc<Inner>) -> Slot {
        Slot {
            pool: pool.clone(),
            held: true,
            spawned: E::SPAWNED,
        }
    }
}

impl Pool {
    /// A pool of at most `size` connections made by `connector` when first
    /// needed; `first`, if given, is its first idle connection.
    pub(crate) fn new(
        connector: Connector,
        size: usize,
        wait: Duration,
        first: Option<Conn<Driver>>,
    ) -> Pool {
        let background = connector.background.clone();
        let inner = Arc::new(Inner {
            connector,
            size: size.max(1),
            slots: Mutex::new(Slots {
                busy: 0,
                busy_spawned: 0,
                waiting: [0, 0],
                idle: first.into_iter().collect(),
                idle_spawned: Vec::new(),
            }),
            freed: Condvar::new(),
            #[cfg(feature = "async")]
            freed_async: tokio::sync::Notify::new(),
            wait,
            generation: AtomicU64::new(0),
        });
        background.spawn(reap(Arc::downgrade(&inner)));
        Pool { inner }
    }

    /// A working connection: an idle one, or a new one if none is idle and a
    /// slot is free. Blocks this thread (which must not be a runtime's).
    ///
    /// # Errors
    /// A transient [`Error::Database`] if no slot frees within the wait or
    /// the call's deadline; the error of making a connection, classified, if
    /// one must be made and cannot.
    pub(crate) fn get(&self, call: &CallBound) -> Result<Pooled> {
        let inner = &self.inner;
        let now = inner.generation.load(Ordering::SeqCst);
        let slot = loop {
            let idle = match self.take_slot(call)? {
                Taken::Idle(idle) => idle,
                Taken::Free(evicted) => {
                    // Guarded before anything else can fail.
                    let slot = Slot::taken::<Driver>(inner);
                    drop(evicted);
                    break slot;
                }
            };
            // `take_slot` counted it busy: from here it is ours, and the slot
            // frees when the `Pooled` is dropped (a dead one is closed as it
            // is, idle, without a cancel).
            let mut pooled = Pooled {
                conn: idle,
                slot: Slot::taken::<Driver>(inner),
            };
            pooled.engine.catch_up();
            if pooled.link.client.is_closed() {
                continue;
            }
            if pooled.generation != now {
                let conn = &pooled.conn;
                let alive = conn
                    .engine
                    .run_for(call.left(), conn.link.client.check_connection());
                if !matches!(alive, Some(Ok(()))) {
                    continue;
                }
                pooled.generation = now;
            }
            pooled.busy = true;
            return Ok(pooled);
        };
        // A free slot is ours, counted busy; it frees if making the
        // connection fails.
        let mut conn = inner.connector.connect(now, call)?;
        conn.busy = true;
        Ok(Pooled { conn, slot })
    }

    /// Waits for an idle connection or a free slot, and takes it, counting
    /// it busy.
    fn take_slot(&self, call: &CallBound) -> Result<Taken<Driver>> {
        let inner = &self.inner;
        let wait_ends = later(Instant::now(), inner.wait);
        let until = call.until.min(wait_ends);
        let mut slots = inner.slots.lock();
        loop {
            if let Some(taken) = inner.try_take(&mut slots) {
                return Ok(taken);
            }
            *slots.waiting_of::<Driver>() += 1;
            let timed_out = inner.freed.wait_until(&mut slots, until).timed_out();
            *slots.waiting_of::<Driver>() -= 1;
            if timed_out {
                break;
            }
        }
        drop(slots);
        Err(inner.no_slot(call, wait_ends))
    }
}

impl Inner {
    /// An idle connection of `E`'s face, or a free slot, taken and counted
    /// busy: `None` if there is none to take now.
    ///
    /// With every slot open, a connection of the other face's that sits idle
    /// is closed for its slot when it is surplus: no call of the other face
    /// waits for it, and that face has none busy, or more than one idle (a
    /// spare for its next call is kept). So a store used mostly from one face
    /// ends up with its connections of that face. It is closed too when
    /// `E`'s face has none busy: nothing of its own would come back, and
    /// waiting could starve it. Otherwise the call waits for one of its own
    /// face's to come back, which is cheaper than making a connection (a
    /// login, the statements prepared), and faces busy side by side do not
    /// close each other's connections call after call.
    fn try_take<E: Engine>(&self, slots: &mut Slots) -> Option<Taken<E>> {
        if let Some(conn) = E::idle(slots).pop() {
            slots.take::<E>();
            return Some(Taken::Idle(conn));
        }
        if slots.open() < self.size {
            slots.take::<E>();
            return Some(Taken::Free(None));
        }
        let surplus = *slots.waiting_of::<E::Other>() == 0
            && (slots.busy_of::<E::Other>() == 0 || E::Other::idle(slots).len() > 1);
        if slots.busy_of::<E>() > 0 && !surplus {
            return None;
        }
        let evicted = E::evict_other(slots)?;
        slots.take::<E>();
        Some(Taken::Free(Some(evicted)))
    }

    /// The error of a call that found no slot free by `until` (its deadline)
    /// or by `wait_ends` (the pool's wait).
    fn no_slot(&self, call: &CallBound, wait_ends: Instant) -> Error {
        if call.until <= wait_ends {
            return call.passed(&self.connector.server);
        }
        Error::Database {
            step: "connect",
            server: self.connector.server.clone(),
            transient: true,
            source: format!(
                "every connection of the pool stayed in use for {:?}",
                self.wait
            )
            .into(),
        }
    }

    /// Tells a call of each face waiting for a slot that one may be free.
    fn notify_freed(&self) {
        self.freed.notify_one();
        #[cfg(feature = "async")]
        self.freed_async.notify_one();
    }
}

#[cfg(feature = "async")]
impl Pool {
    /// [`get`](Pool::get) for the async face: a working connection whose bytes
    /// a task moves, made on the runtime this runs on if none is idle. Waits
    /// for a slot without holding a thread.
    ///
    /// # Errors
    /// As [`get`](Pool::get).
    pub(crate) async fn get_spawned(&self, call: &CallBound) -> Result<Pooled<IoTask>> {
        let inner = &self.inner;
        let now = inner.generation.load(Ordering::SeqCst);
        let slot = loop {
            let idle = match self.take_slot_spawned(call).await? {
                Taken::Idle(idle) => idle,
                Taken::Free(evicted) => {
                    let slot = Slot::taken::<IoTask>(inner);
                    drop(evicted);
                    break slot;
                }
            };
            let mut pooled = Pooled {
                conn: idle,
                slot: Slot::taken::<IoTask>(inner),
            };
            // Its task has taken in whatever arrived while it sat unused: a
            // connection the server closed reads as closed already.
            if pooled.link.client.is_closed() {
                continue;
            }
            if pooled.generation != now {
                let alive =
                    tokio::time::timeout(call.left(), pooled.link.client.check_connection());
                if !matches!(alive.await, Ok(Ok(()))) {
                    continue;
                }
                pooled.generation = now;
            }
            pooled.busy = true;
            return Ok(pooled);
        };
        let mut conn = inner.connector.connect_spawned(now, call).await?;
        conn.busy = true;
        Ok(Pooled { conn, slot })
    }

    /// [`take_slot`](Pool::take_slot), waiting as a future.
    async fn take_slot_spawned(&self, call: &CallBound) -> Result<Taken<IoTask>> {
        let inner = &self.inner;
        let wait_ends = later(Instant::now(), inner.wait);
        let until = call.until.min(wait_ends);
        loop {
            let freed = inner.freed_async.notified();
            let mut freed = std::pin::pin!(freed);
            {
                let mut slots = inner.slots.lock();
                if let Some(taken) = inner.try_take(&mut slots) {
                    return Ok(taken);
                }
                // Registered before the lock is let go: a slot freed from
                // here on wakes this call.
                freed.as_mut().enable();
                *slots.waiting_of::<IoTask>() += 1;
            }
            // Counted out however the wait ends, this future dropped included.
            let _counted = WaitingGuard::<IoTask>::new(inner);
            let deadline = tokio::time::Instant::from_std(until);
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(inner.no_slot(call, wait_ends));
            }
        }
    }
}

impl Pool {
    /// What makes the pool's connections, for a connection outside it.
    pub(crate) fn connector(&self) -> &Connector {
        &self.inner.connector
    }
}

impl<E: Engine> Pooled<E> {
    /// Puts the connection back in the pool once its request has finished,
    /// unless it turned out dead: then it is dropped, and every connection made
    /// before it is checked on its next use.
    pub(crate) fn release(self) {
        let Pooled { mut conn, mut slot } = self;
        conn.busy = false;
        if conn.link.client.is_closed() {
            slot.pool.generation.fetch_add(1, Ordering::SeqCst);
            // Closed before its slot frees.
            drop(conn);
            return;
        }
        conn.idle_since = Instant::now();
        let mut slots = slot.pool.slots.lock();
        slots.free(slot.spawned);
        E::idle(&mut slots).push(conn);
        slot.held = false;
        drop(slots);
        slot.pool.notify_freed();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.pool.slots.lock().free(self.spawned);
            self.pool.notify_freed();
        }
    }
}

impl<E: Engine> Deref for Pooled<E> {
    type Target = Conn<E>;

    fn deref(&self) -> &Conn<E> {
        &self.conn
    }
}

impl<E: Engine> DerefMut for Pooled<E> {
    fn deref_mut(&mut self) -> &mut Conn<E> {
        &mut self.conn
    }
}

/// Counts a call of `E`'s face out of the waiters when dropped.
#[cfg(feature = "async")]
struct WaitingGuard<'a, E: Engine> {
    pool: &'a Inner,
    face: std::marker::PhantomData<E>,
}

#[cfg(feature = "async")]
impl<'a, E: Engine> WaitingGuard<'a, E> {
    /// For a call already counted in.
    fn new(pool: &'a Inner) -> Self {
        WaitingGuard {
            pool,
            face: std::marker::PhantomData,
        }
    }
}

#[cfg(feature = "async")]
impl<E: Engine> Drop for WaitingGuard<'_, E> {
    fn drop(&mut self) {
        *self.pool.slots.lock().waiting_of::<E>() -= 1;
    }
}

/// Closes connections unused for [`IDLE_FOR`], until the pool is dropped.
async fn reap(pool: Weak<Inner>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let (stale, stale_spawned) = {
            let mut slots = pool.slots.lock();
            (stale_of(&mut slots.idle), stale_of(&mut slots.idle_spawned))
        };
        // Closed outside the lock; their slots are free now.
        let closed = stale.len() + stale_spawned.len();
        drop((stale, stale_spawned));
        for _ in 0..closed {
            pool.notify_freed();
        }
    }
}

/// Takes the connections unused for [`IDLE_FOR`] out of `idle`.
fn stale_of<E>(idle: &mut Vec<Conn<E>>) -> Vec<Conn<E>> {
    let (stale, fresh) = std::mem::take(idle)
        .into_iter()
        .partition(|c| c.idle_since.elapsed() >= IDLE_FOR);
    *idle = fresh;
    stale
}
