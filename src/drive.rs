//! One body of decisions and waits, two ways of running it.
//!
//! A manager call that reads, decides, writes, and reads back a write whose
//! outcome was lost is written once, as an `async fn` generic over a
//! [`Drive`]: every store call and every wait on the clock is an `.await` on
//! the driver. [`Blocking`] makes each of them as a blocking call and hands
//! back a future that is already complete, so [`blocking`] runs the whole
//! body on the caller's thread in one poll; [`Async`] makes them as the
//! store's and the clock's futures, so the body is a future of the async face
//! that holds no thread while it waits, and whose writes join a `LogStore`'s
//! group commit or run as `PgStore` tasks.
//!
//! The two faces therefore cannot drift apart: the fingerprint checks, the
//! compare-and-set retries, the read-back after an ambiguous failure and its
//! deadline are the same code.

use std::future::{Future, ready};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;

use crate::clock::SharedClock;
use crate::error::Result;
use crate::key::Key;
use crate::store::{Applied, Batch, Entry, Expect, Store, Version};

/// How a body reaches its store, of type `S`, and its clock. See the
/// [module docs](self).
pub(crate) trait Drive<S: Store + ?Sized>: Wait {
    /// [`Store::get`].
    fn get(self, store: &Arc<S>, key: &Key) -> impl Future<Output = Result<Option<Entry>>> + Send;

    /// [`Store::put`].
    fn put(
        self,
        store: &Arc<S>,
        key: &Key,
        value: Vec<u8>,
        expect: Expect,
    ) -> impl Future<Output = Result<Version>> + Send;

    /// [`Store::delete`].
    fn delete(
        self,
        store: &Arc<S>,
        key: &Key,
        expect: Expect,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// [`Store::apply`].
    fn apply(
        self,
        store: &Arc<S>,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Applied>>> + Send;
}

/// How a body waits on its clock: the part of a [`Drive`] that needs no
/// store.
pub(crate) trait Wait: Copy + Send + Sync {
    /// Waits until `clock` reads `deadline_ms`.
    fn sleep_until(
        self,
        clock: &SharedClock,
        deadline_ms: u64,
    ) -> impl Future<Output = ()> + Send + use<Self>;
}

/// The blocking face: each call made at once, on the caller's thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocking;

impl<S: Store + ?Sized> Drive<S> for Blocking {
    fn get(self, store: &Arc<S>, key: &Key) -> impl Future<Output = Result<Option<Entry>>> + Send {
        ready(store.get(key))
    }

    fn put(
        self,
        store: &Arc<S>,
        key: &Key,
        value: Vec<u8>,
        expect: Expect,
    ) -> impl Future<Output = Result<Version>> + Send {
        ready(store.put(key, &value, expect))
    }

    fn delete(
        self,
        store: &Arc<S>,
        key: &Key,
        expect: Expect,
    ) -> impl Future<Output = Result<bool>> + Send {
        ready(store.delete(key, expect))
    }

    fn apply(
        self,
        store: &Arc<S>,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Applied>>> + Send {
        ready(store.apply(&batch))
    }
}

impl Wait for Blocking {
    fn sleep_until(
        self,
        clock: &SharedClock,
        deadline_ms: u64,
    ) -> impl Future<Output = ()> + Send + use<> {
        clock.sleep_until(deadline_ms);
        ready(())
    }
}

/// The async face: each call the store's own future (see
/// [`Store::get_async`]), each wait the clock's.
#[cfg(feature = "async")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Async;

#[cfg(feature = "async")]
impl<S: Store + ?Sized + 'static> Drive<S> for Async {
    fn get(self, store: &Arc<S>, key: &Key) -> impl Future<Output = Result<Option<Entry>>> + Send {
        store.get_async(key)
    }

    fn put(
        self,
        store: &Arc<S>,
        key: &Key,
        value: Vec<u8>,
        expect: Expect,
    ) -> impl Future<Output = Result<Version>> + Send {
        store.put_async(key, value, expect)
    }

    fn delete(
        self,
        store: &Arc<S>,
        key: &Key,
        expect: Expect,
    ) -> impl Future<Output = Result<bool>> + Send {
        store.delete_async(key, expect)
    }

    fn apply(
        self,
        store: &Arc<S>,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Applied>>> + Send {
        store.apply_async(batch)
    }
}

#[cfg(feature = "async")]
impl Wait for Async {
    fn sleep_until(
        self,
        clock: &SharedClock,
        deadline_ms: u64,
    ) -> impl Future<Output = ()> + Send + use<> {
        let clock = Arc::clone(clock);
        async move { clock.sleep_until_async(deadline_ms).await }
    }
}

/// Runs a body driven by [`Blocking`] on this thread. Every future such a
/// body awaits is complete when made, so this returns after one poll; it
/// parks between polls all the same, so that a body that did wait would be
/// slow, never wrong.
pub(crate) fn blocking<F: Future>(body: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut body = pin!(body);
    if let Poll::Ready(output) = body.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return output;
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = body.as_mut().poll(&mut cx) {
            return output;
        }
        // A wake-up between the poll and the park leaves a token that ends
        // this park at once; a spurious return only polls once more.
        thread::park();
    }
}
