//! The store's connections: at most `size` open at once, reused while they work.
//!
//! Checking a connection out costs no round trip. When a request finds its
//! connection dead (a server restart closes every connection at once), the
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

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{Conn, Connector};
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
    /// One permit per connection that may be open: held by each connection
    /// checked out, so that at most `size` exist at once.
    slots: Arc<Semaphore>,
    /// Connections not in use, the most recently used last.
    idle: Mutex<Vec<Conn>>,
    /// How long a check-out waits for a free slot (making a connection is
    /// bounded by the connector).
    wait: Duration,
    generation: AtomicU64,
}

/// A connection checked out of the pool, with its slot.
pub(crate) struct Pooled {
    conn: Conn,
    // Dropped after `conn`: the slot frees once the connection is closed or
    // back in the pool.
    _slot: OwnedSemaphorePermit,
    pool: Arc<Inner>,
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
        let runtime = connector.runtime.clone();
        let inner = Arc::new(Inner {
            connector,
            slots: Arc::new(Semaphore::new(size)),
            idle: Mutex::new(first.into_iter().collect()),
            wait,
            generation: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        runtime.spawn(reap(weak));
        Pool { inner }
    }

    /// A working connection: an idle one, or a new one if none is idle and a
    /// slot is free.
    ///
    /// # Errors
    /// A transient [`Error::Database`] if no slot frees within the wait; the
    /// error of making a connection, classified, if one must be made and cannot.
    pub(crate) async fn get(&self) -> Result<Pooled> {
        let inner = &self.inner;
        let slot = tokio::time::timeout(inner.wait, inner.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(|slot| slot.ok())
            .ok_or_else(|| Error::Database {
                step: "connect",
                server: inner.connector.server.clone(),
                transient: true,
                source: format!(
                    "every connection of the pool stayed in use for {:?}",
                    inner.wait
                )
                .into(),
            })?;
        let now = inner.generation.load(Ordering::SeqCst);
        loop {
            let Some(mut conn) = inner.idle.lock().pop() else {
                break;
            };
            if conn.client.is_closed() {
                continue;
            }
            conn.busy = true;
            if conn.generation != now {
                if conn.client.check_connection().await.is_err() {
                    conn.busy = false;
                    continue;
                }
                conn.generation = now;
            }
            return Ok(Pooled {
                conn,
                _slot: slot,
                pool: inner.clone(),
            });
        }
        let mut conn = inner.connector.connect(now).await?;
        conn.busy = true;
        Ok(Pooled {
            conn,
            _slot: slot,
            pool: inner.clone(),
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
        let Pooled {
            mut conn,
            _slot,
            pool,
        } = self;
        conn.busy = false;
        if conn.client.is_closed() {
            pool.generation.fetch_add(1, Ordering::SeqCst);
            return;
        }
        conn.idle_since = Instant::now();
        pool.idle.lock().push(conn);
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
            let mut idle = pool.idle.lock();
            let (stale, fresh) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|c| c.idle_since.elapsed() >= IDLE_FOR);
            *idle = fresh;
            stale
        };
        // Closed outside the lock.
        drop(stale);
    }
}
