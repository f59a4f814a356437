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

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::conn::{CallBound, Conn, Connector, later};
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
    /// Signalled when a slot frees or a connection goes back idle.
    freed: Condvar,
    /// How long a check-out waits for a free slot (making a connection is
    /// bounded by the connector).
    wait: Duration,
    generation: AtomicU64,
}

struct Slots {
    /// Connections checked out, or being made.
    busy: usize,
    /// Connections not in use, the most recently used last.
    idle: Vec<Conn>,
}

/// A connection checked out of the pool, with its slot.
pub(crate) struct Pooled {
    conn: Conn,
    // Dropped after `conn`: the slot frees once the connection is closed.
    slot: Slot,
}

/// One of the pool's `size` slots, counted busy until dropped or given back
/// with an idle connection.
struct Slot {
    pool: Arc<Inner>,
    held: bool,
}

impl Pool {
    /// A pool of at most `size` connections made by `connector` when first
    /// needed; `first`, if given, is its first idle connection.
    pub(crate) fn new(
        connector: Connector,
        size: usize,
        wait: Duration,
        first: Option<Conn>,
    ) -> Pool {
        let background = connector.background.clone();
        let inner = Arc::new(Inner {
            connector,
            size: size.max(1),
            slots: Mutex::new(Slots {
                busy: 0,
                idle: first.into_iter().collect(),
            }),
            freed: Condvar::new(),
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
        loop {
            let Some(idle) = self.take_slot(call)? else {
                break;
            };
            // `take_slot` counted it busy: from here it is ours, and the slot
            // frees when the `Pooled` is dropped (a dead one is closed as it
            // is, idle, without a cancel).
            let mut pooled = Pooled {
                conn: idle,
                slot: Slot {
                    pool: inner.clone(),
                    held: true,
                },
            };
            pooled.driver.catch_up();
            if pooled.link.client.is_closed() {
                continue;
            }
            if pooled.generation != now {
                let conn = &pooled.conn;
                let alive = conn
                    .driver
                    .run_for(call.left(), conn.link.client.check_connection());
                if !matches!(alive, Some(Ok(()))) {
                    continue;
                }
                pooled.generation = now;
            }
            pooled.busy = true;
            return Ok(pooled);
        }
        // A free slot is ours, counted busy; it frees if making the
        // connection fails.
        let slot = Slot {
            pool: inner.clone(),
            held: true,
        };
        let mut conn = inner.connector.connect(now, call)?;
        conn.busy = true;
        Ok(Pooled { conn, slot })
    }

    /// Waits for an idle connection (`Some`, taken) or a free slot (`None`,
    /// taken), counting either as busy.
    fn take_slot(&self, call: &CallBound) -> Result<Option<Conn>> {
        let inner = &self.inner;
        let wait_ends = later(Instant::now(), inner.wait);
        let until = call.until.min(wait_ends);
        let mut slots = inner.slots.lock();
        loop {
            if let Some(conn) = slots.idle.pop() {
                slots.busy += 1;
                return Ok(Some(conn));
            }
            if slots.busy + slots.idle.len() < inner.size {
                slots.busy += 1;
                return Ok(None);
            }
            if inner.freed.wait_until(&mut slots, until).timed_out() {
                break;
            }
        }
        drop(slots);
        if call.until <= wait_ends {
            return Err(call.passed(&inner.connector.server));
        }
        Err(Error::Database {
            step: "connect",
            server: inner.connector.server.clone(),
            transient: true,
            source: format!(
                "every connection of the pool stayed in use for {:?}",
                inner.wait
            )
            .into(),
        })
    }
}

impl Pool {
    /// What makes the pool's connections, for a connection outside it.
    pub(crate) fn connector(&self) -> &Connector {
        &self.inner.connector
    }
}

impl Pooled {
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
        slots.busy -= 1;
        slots.idle.push(conn);
        slot.held = false;
        drop(slots);
        slot.pool.freed.notify_one();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.pool.slots.lock().busy -= 1;
            self.pool.freed.notify_one();
        }
    }
}

impl Deref for Pooled {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
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
        let stale: Vec<Conn> = {
            let mut slots = pool.slots.lock();
            let (stale, fresh) = std::mem::take(&mut slots.idle)
                .into_iter()
                .partition(|c| c.idle_since.elapsed() >= IDLE_FOR);
            slots.idle = fresh;
            stale
        };
        // Closed outside the lock; their slots are free now.
        let closed = stale.len();
        drop(stale);
        for _ in 0..closed {
            pool.freed.notify_one();
        }
    }
}
