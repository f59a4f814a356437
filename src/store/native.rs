//! How a store shared through an `Arc` (or a `Box`, or a `&'static`) reaches
//! the native async calls of the store it holds.
//!
//! A store's `*_async` methods need `Self: Clone`, so that the future can own
//! a handle: `Arc<S>`'s impl cannot forward to `S::put_async`, because `S`
//! need not be `Clone`, and Rust has no way to forward only when it is. A
//! store whose async calls are its own (`LogStore`, `PgStore`) therefore
//! answers [`Store::native_async`](super::Store::native_async) with itself,
//! seen through [`NativeAsync`], and the forwarding impls ask before falling
//! back to the crate's pool. Without this, `Arc<LogStore>` (the natural way
//! to share a store, and what the managers hold) would run every async write
//! on a pool thread instead of joining the group commit.

use std::future::Future;
use std::pin::Pin;

use super::{Applied, Batch, Entry, Expect, ListPage, Store, Version};
use crate::error::Result;
use crate::key::{Key, Prefix};

/// A boxed future of a native call: the price of reaching it through a
/// trait object, one allocation per call.
pub type Call<T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'static>>;

/// The native async calls of a store, reachable through a trait object.
///
/// Implemented for every store that is `Clone + 'static`, by calling its
/// `*_async` methods; not meant to be implemented or called by hand.
pub trait NativeAsync: Send + Sync {
    /// [`Store::get_async`].
    fn get(&self, key: &Key) -> Call<Option<Entry>>;
    /// [`Store::put_async`].
    fn put(&self, key: &Key, value: Vec<u8>, expect: Expect) -> Call<Version>;
    /// [`Store::delete_async`].
    fn delete(&self, key: &Key, expect: Expect) -> Call<bool>;
    /// [`Store::list_async`].
    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Call<ListPage>;
    /// [`Store::apply_async`].
    fn apply(&self, batch: Batch) -> Call<Vec<Applied>>;
}

impl<S: Store + Clone + 'static> NativeAsync for S {
    fn get(&self, key: &Key) -> Call<Option<Entry>> {
        Box::pin(self.get_async(key))
    }
    fn put(&self, key: &Key, value: Vec<u8>, expect: Expect) -> Call<Version> {
        Box::pin(self.put_async(key, value, expect))
    }
    fn delete(&self, key: &Key, expect: Expect) -> Call<bool> {
        Box::pin(self.delete_async(key, expect))
    }
    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Call<ListPage> {
        Box::pin(self.list_async(prefix, after, limit))
    }
    fn apply(&self, batch: Batch) -> Call<Vec<Applied>> {
        Box::pin(self.apply_async(batch))
    }
}
