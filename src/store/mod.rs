//! The [`Store`] contract every part stands on, and its backends: use a store
//! to keep small records with versioned compare-and-set, and pick the backend by
//! where your processes run.
//!
//! | backend | pick it when | cost of a durable write | memory |
//! |---|---|---|---|
//! | [`LogStore`] | one machine, any number of processes: **the default** | one `fdatasync`, shared by concurrent writers (group commit) | every live key, and a cache of values (values are read from the journal) |
//! | [`DirStore`] | one machine, and you want to inspect or repair records with a shell, or hold more records than fit in memory | two flushes (file, directory) per write | none per record |
//! | `PgStore` (feature `postgres`) | several machines share jobs, locks and charges | one round trip and PostgreSQL's commit | the server's |
//! | [`MemStore`] | tests, or a service that needs no durability | none: nothing survives the process | every record |
//!
//! Every backend passes the same [`conformance`](crate::conformance) suite; a
//! backend of your own implements [`Store`] and runs it too.

mod batch;
mod changes;
pub(crate) mod dir;
pub(crate) mod log;
pub(crate) mod mem;
#[cfg(feature = "async")]
#[doc(hidden)]
pub mod native;
pub(crate) mod packed;
#[cfg(feature = "postgres")]
pub(crate) mod pg;
mod scan;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use batch::{Applied, Batch, BatchOp};
pub use changes::Changes;
pub use dir::{DirStore, DirStoreBuilder};
pub use log::{Compaction, LogStats, LogStore, LogStoreBuilder};
pub use mem::MemStore;
#[cfg(feature = "postgres")]
pub use pg::{PgClock, PgStore, PgStoreBuilder};
pub use scan::Scan;

/// The old name of [`BatchOp`].
#[deprecated(since = "0.2.0", note = "renamed to `BatchOp`")]
pub type Op = BatchOp;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::error::{IoStep, steps};
use crate::key::{Key, Prefix};

/// A record's version: strictly increasing per key while the key exists, and never
/// reused for a key that was deleted and created again.
///
/// Versions are opaque beyond that order: they are not counts of writes, and two
/// keys' versions are not comparable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    /// A version from its raw value (for backends and for tests).
    pub const fn new(raw: u64) -> Self {
        Version(raw)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A stored value and its version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The bytes stored.
    pub value: Vec<u8>,
    /// The version they were stored at.
    pub version: Version,
}

impl Entry {
    /// The longest value a store accepts, in bytes: 16 MiB. Part of the
    /// [`Store`] contract: every backend stores and reads back a value of this
    /// length, and refuses a longer one with [`Error::TooLarge`] before any I/O.
    ///
    /// Why 16 MiB: a store keeps *small records* (job records, leases,
    /// reservations, checkpoints; kilobytes), and the bounds on what the parts
    /// store keep theirs far below it (a job's result is at most 1 MiB). Large
    /// values cost every backend more than their size: `LogStore` reads each
    /// whole from its journal and delays the writers that share a group commit
    /// with one, `DirStore` and `PgStore` read and send each whole. 16 MiB is
    /// large enough that no record of jobsafe's, nor any reasonable record of
    /// yours, comes near it, and small enough that writing one, flush
    /// included, takes about a tenth of a second (`DirStore` 75 ms, `LogStore`
    /// 120 ms on a cloud VM's disk; 4 MiB: 15 ms and 4 ms). Keep larger data
    /// in files ([`AtomicWriter`](crate::AtomicWriter)) and store their path.
    pub const MAX_VALUE_LEN: usize = 16 << 20;

    /// `value` stored at `version` (for backends).
    pub fn new(value: Vec<u8>, version: Version) -> Self {
        Entry { value, version }
    }

    /// Checks that `value`, to be stored at `key`, is within
    /// [`Entry::MAX_VALUE_LEN`]. Backends call this before any I/O of a put;
    /// [`Batch::validate`] makes the same check for every put of a batch.
    ///
    /// # Errors
    /// [`Error::TooLarge`] naming the key, the value's length and the limit.
    pub fn check_value(key: &Key, value: &[u8]) -> Result<()> {
        crate::limits::check_len("value", key, value.len(), Entry::MAX_VALUE_LEN)
    }
}

/// The precondition of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (or nothing).
    Any,
    /// The key must not exist: insert-if-absent.
    Absent,
    /// The key must exist at exactly this version: compare-and-set.
    Version(Version),
}

impl Expect {
    /// Checks the precondition against the key's current version (`None`: absent).
    ///
    /// Backends call this under their per-key serialization, so that the check and
    /// the write it guards are one atomic step.
    ///
    /// # Errors
    /// [`Error::Conflict`] with `current` if the precondition fails.
    pub fn check(self, key: &Key, current: Option<Version>) -> Result<()> {
        let holds = match self {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Version(v) => current == Some(v),
        };
        if holds {
            return Ok(());
        }
        Err(Error::Conflict {
            key: key.clone(),
            expected: self.to_string(),
            current,
        })
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("anything"),
            Expect::Absent => f.write_str("no record"),
            Expect::Version(v) => write!(f, "version {}", v.get()),
        }
    }
}

/// One page of [`Store::list`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListPage {
    /// Keys in key order.
    pub keys: Vec<Key>,
    /// Pass this as `after` to get the next page; `None` when the listing is done.
    pub next: Option<Key>,
}

impl ListPage {
    /// A page of `keys`, continued after `next` if the listing goes on (for
    /// backends).
    pub fn new(keys: Vec<Key>, next: Option<Key>) -> Self {
        ListPage { keys, next }
    }
}

/// Where [`Store::quarantine`] moved a record.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quarantined {
    /// The key the record was stored under.
    pub key: Key,
    /// Where its bytes are now, in the backend's terms (a path for file backends).
    pub location: String,
}

impl Quarantined {
    /// The record of `key`, moved to `location` (for backends).
    pub fn new(key: Key, location: impl Into<String>) -> Self {
        Quarantined {
            key,
            location: location.into(),
        }
    }
}

/// A key-value store of small records with versioned compare-and-set.
///
/// Every jobsafe component gets its correctness from this contract, and every
/// backend must pass the [`conformance`](crate::conformance) suite. An
/// implementation must guarantee, for every method:
///
/// - **Preconditions.** A write whose [`Expect`] does not hold changes nothing and
///   returns [`Error::Conflict`] carrying the current version; it is never a silent
///   overwrite.
/// - **Versions.** While a key exists its versions strictly increase, and a version
///   is never reused for a key that was deleted and created again, so a
///   compare-and-set can never succeed against a different incarnation (no ABA).
/// - **Linearizability per key**, across threads and processes (and machines, for
///   shared backends): of two concurrent `put(.., Expect::Absent)` on one key exactly
///   one succeeds.
/// - **Durability.** When a write returns `Ok` it survives a process crash and, for
///   durable backends, a power loss. Backends with a relaxed mode say so loudly.
/// - **Corruption.** A record that cannot be decoded is [`Error::Corrupt`] from
///   every operation on its key; it is never treated as absent, overwritten or
///   dropped, until [`quarantine`](Store::quarantine) moves it aside.
/// - **Poisoning.** After an fsync failure a durable backend refuses further writes
///   with [`Error::Poisoned`] instead of guessing what reached the disk.
/// - **Limits.** A value of up to [`Entry::MAX_VALUE_LEN`] bytes is stored and
///   read back as given; a longer one is refused with [`Error::TooLarge`]
///   (naming the key, the value's length and the limit; not transient) before
///   any I/O, by `put` and by `apply`, where it refuses the whole batch.
///   [`Entry::check_value`] and [`Batch::validate`] make these checks. A
///   backend may also bound a whole batch, and documents it
///   ([`LogStore::MAX_TRANSACTION_BYTES`], [`DirStore::MAX_BATCH_BYTES`]).
pub trait Store: Send + Sync + fmt::Debug {
    /// The record at `key`, or `None` if there is none.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the stored record cannot be decoded; I/O errors.
    fn get(&self, key: &Key) -> Result<Option<Entry>>;

    /// Stores `value` at `key` if `expect` holds, returning the new version.
    ///
    /// # Errors
    /// [`Error::TooLarge`] if `value` is longer than [`Entry::MAX_VALUE_LEN`];
    /// [`Error::Conflict`] if `expect` does not hold; [`Error::Corrupt`] if the
    /// current record is undecodable; [`Error::Poisoned`]; I/O errors.
    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version>;

    /// Deletes the record at `key` if `expect` holds. Returns whether a record was
    /// deleted (`false`: there was none, which `Expect::Any` and `Expect::Absent`
    /// accept).
    ///
    /// # Errors
    /// As [`Store::put`].
    fn delete(&self, key: &Key, expect: Expect) -> Result<bool>;

    /// Up to `limit` keys that start with `prefix` (whole segments; the prefix itself
    /// included if it is a key), in key order, strictly after `after` if given.
    ///
    /// Pages reflect the store at the time each page is read: a key written between
    /// two pages appears if it sorts after the cursor.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `limit` is 0; I/O errors.
    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage>;

    /// Applies several puts and deletes, each with its own precondition, all or
    /// nothing: if any precondition fails nothing changes and the error names that
    /// key. Atomic for concurrent readers (no reader sees part of a batch) and
    /// across crashes (after a crash either the whole batch is there or none of it).
    ///
    /// Returns one [`Applied`] per operation, in order.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty batch or a key named twice;
    /// [`Error::TooLarge`] naming the first put whose value is over the limit;
    /// otherwise as [`Store::put`].
    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>>;

    /// Moves the record at `key` aside, whatever its content, so that the key becomes
    /// absent while its bytes stay available for inspection. For an undecodable
    /// record this is the one way to make progress; a component that finds a record
    /// it cannot parse uses it to take over without destroying evidence.
    ///
    /// Returns where the bytes went, or `None` if there was no record. The key's
    /// future versions still never reuse the old ones.
    ///
    /// # Errors
    /// [`Error::Poisoned`]; I/O errors.
    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>>;

    /// Removes what writers that died left behind (temp files, for backends that
    /// write them) at least `min_age` old by `clock`, and returns how many it
    /// removed. A maintenance call, for a purge on a schedule; the default
    /// implementation has nothing to sweep.
    ///
    /// # Errors
    /// I/O errors naming the file or directory.
    fn sweep_temp_files(&self, min_age: Duration, clock: &dyn Clock) -> Result<usize> {
        let _ = (min_age, clock);
        Ok(0)
    }

    /// Every key under `prefix` in key order, in pages of up to `page_size`
    /// keys, read as one pass: for purges, exports and listings of many keys.
    ///
    /// Unlike a loop of [`list`](Store::list) calls, which each find their place
    /// again, a backend may read its index or directories once for the whole
    /// scan. What a scan guarantees is what a loop of `list` calls guarantees: a
    /// key present for the whole scan is returned exactly once; a key written or
    /// deleted during the scan may be returned or not. The default
    /// implementation is that loop.
    ///
    /// ```
    /// use jobsafe::{Expect, Key, MemStore, Prefix, Store};
    ///
    /// let store = MemStore::new();
    /// for i in 0..5 {
    ///     store.put(&Key::new(["jobs", &format!("{i}")])?, b"{}", Expect::Absent)?;
    /// }
    /// let pages: Vec<Vec<Key>> = store.scan(&Prefix::new(["jobs"])?, 2).collect::<Result<_, _>>()?;
    /// assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    ///
    /// # Errors
    /// Each page is a `Result`: as [`Store::list`]. A `page_size` of 0 yields one
    /// [`Error::InvalidArgument`].
    fn scan(&self, prefix: &Prefix, page_size: usize) -> Scan<'_> {
        Scan::by_pages(self, prefix.clone(), page_size)
    }

    /// Whether this store is local to one machine: every process that can reach
    /// it while this one runs, runs on this machine under the same kernel (the
    /// same boot), so that a process id recorded in it by a live process names a
    /// process this one can see. Records left from before a reboot may still be
    /// there.
    ///
    /// Returning `true` lets [`JobLock`](crate::JobLock) take a lock over before
    /// its lease ends when the process that holds it has provably exited (see its
    /// "Dead holders"). A store that cannot promise this, because other machines
    /// or other kernels (virtual machines, a network filesystem) may write to it,
    /// must keep the default, `false`: leases then end only by time.
    fn is_machine_local(&self) -> bool {
        false
    }

    /// Tells when records under `prefix` may have been changed by another
    /// writer than this handle (another process, another machine, another
    /// handle opened on the same store), so that a reader looks again
    /// instead of polling; `None` (the default) if this store cannot tell,
    /// and readers poll. The writes made through this handle are not told:
    /// whoever makes them knows (jobsafe's parts tell each other in-process).
    /// The notifications are hints (see [`Changes`]): they may come without
    /// a change, and several changes may come as one.
    ///
    /// [`LogStore`] in shared mode on Linux tells as soon as the kernel
    /// reports the journal changed (inotify) and this process has read the
    /// new frames; in exclusive mode nobody else writes. [`MemStore`] has no
    /// other writer. `PgStore` tells, through `LISTEN`/`NOTIFY` on every
    /// machine, of other writers' commits to the records of jobs
    /// only (what runners and subscriptions wait for). [`DirStore`] on Linux
    /// tells as soon as the kernel reports the record file renamed into
    /// place or removed (inotify on the directories of the prefix).
    fn changes_by_others(&self, prefix: &Prefix) -> Option<Changes> {
        let _ = prefix;
        None
    }

    /// Every key under `prefix`, in key order, read with one
    /// [`scan`](Store::scan) in pages of 1024 keys. To go through many keys
    /// without holding them all, iterate a scan instead.
    ///
    /// # Errors
    /// As [`Store::list`].
    fn list_all(&self, prefix: &Prefix) -> Result<Vec<Key>> {
        let mut keys = Vec::new();
        for page in self.scan(prefix, SCAN_PAGE) {
            keys.extend(page?);
        }
        Ok(keys)
    }

    /// The store's native async calls, for `Arc<Self>` and the other
    /// forwarding impls to reach (see [`get_async`](Store::get_async)):
    /// `Some(self)` in a store that overrides the `*_async` methods.
    #[cfg(feature = "async")]
    #[doc(hidden)]
    fn native_async(&self) -> Option<&dyn native::NativeAsync> {
        None
    }

    /// [`get`](Store::get) without blocking the caller's thread: the call
    /// runs on the crate's [pool](crate::pool), and the future holds no
    /// thread while it waits for it. Like an `async fn`, the future does
    /// nothing until first polled; dropping it before the call began
    /// withdraws the call.
    ///
    /// The `*_async` methods are provided for every store that is `Clone`
    /// (each of the crate's stores is, cheaply, and so is an `Arc` of any
    /// store): the future owns a clone, so it may outlive the borrow.
    /// A store whose client is asynchronous overrides them to make its calls
    /// natively, holding no thread at all: `PgStore` does.
    /// `LogStore`'s `put_async`, `delete_async` and `apply_async` join its
    /// group commit as futures: the flush runs on one pool thread for the
    /// whole group, and each caller's task is woken with its result; in
    /// exclusive mode its lists, and its gets of an absent key or of a value
    /// in its cache, are answered on the polling thread (they touch no disk
    /// there), every other read on the pool. `Arc<S>`, `Box<S>` and
    /// `&'static S` make the native calls of the crate's stores they hold
    /// too, so sharing a store through an `Arc` costs one boxed future per
    /// call, not a thread. A store of your own that overrides these methods
    /// is reached through them the same way if it returns `Some(self)` from
    /// the hidden method `native_async` (never another store: the forwarding
    /// impls would then skip its own methods), as the crate's stores do.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::{Expect, Key, MemStore, Store};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> jobsafe::Result<()> {
    /// let store = Arc::new(MemStore::new());
    /// let key = Key::new(["greeting"])?;
    /// store.put_async(&key, b"hello".to_vec(), Expect::Absent).await?;
    /// let entry = store.get_async(&key).await?.expect("just written");
    /// assert_eq!(entry.value, b"hello");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`get`](Store::get).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    fn get_async(&self, key: &Key) -> impl Future<Output = Result<Option<Entry>>> + Send + 'static
    where
        Self: Clone + 'static,
    {
        let (store, key) = (self.clone(), key.clone());
        async move { crate::pool::run(move || store.get(&key)).await }
    }

    /// [`put`](Store::put) without blocking the caller's thread, as
    /// [`get_async`](Store::get_async) runs [`get`](Store::get).
    ///
    /// # Errors
    /// As [`put`](Store::put).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    fn put_async(
        &self,
        key: &Key,
        value: Vec<u8>,
        expect: Expect,
    ) -> impl Future<Output = Result<Version>> + Send + 'static
    where
        Self: Clone + 'static,
    {
        let (store, key) = (self.clone(), key.clone());
        async move { crate::pool::run(move || store.put(&key, &value, expect)).await }
    }

    /// [`delete`](Store::delete) without blocking the caller's thread, as
    /// [`get_async`](Store::get_async) runs [`get`](Store::get).
    ///
    /// # Errors
    /// As [`delete`](Store::delete).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    fn delete_async(
        &self,
        key: &Key,
        expect: Expect,
    ) -> impl Future<Output = Result<bool>> + Send + 'static
    where
        Self: Clone + 'static,
    {
        let (store, key) = (self.clone(), key.clone());
        async move { crate::pool::run(move || store.delete(&key, expect)).await }
    }

    /// [`list`](Store::list) without blocking the caller's thread, as
    /// [`get_async`](Store::get_async) runs [`get`](Store::get).
    ///
    /// # Errors
    /// As [`list`](Store::list).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    fn list_async(
        &self,
        prefix: &Prefix,
        after: Option<&Key>,
        limit: usize,
    ) -> impl Future<Output = Result<ListPage>> + Send + 'static
    where
        Self: Clone + 'static,
    {
        let (store, prefix, after) = (self.clone(), prefix.clone(), after.cloned());
        async move { crate::pool::run(move || store.list(&prefix, after.as_ref(), limit)).await }
    }

    /// [`apply`](Store::apply) without blocking the caller's thread, as
    /// [`get_async`](Store::get_async) runs [`get`](Store::get).
    ///
    /// # Errors
    /// As [`apply`](Store::apply).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    fn apply_async(
        &self,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Applied>>> + Send + 'static
    where
        Self: Clone + 'static,
    {
        let store = self.clone();
        async move { crate::pool::run(move || store.apply(&batch)).await }
    }
}

/// The page size of jobsafe's own scans ([`Store::list_all`], the managers'
/// listings and purges): a page costs little more than its keys, and is small
/// to hold.
pub(crate) const SCAN_PAGE: usize = 1024;

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: Store + ?Sized> Store for $ty {
            fn get(&self, key: &Key) -> Result<Option<Entry>> {
                (**self).get(key)
            }
            fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
                (**self).put(key, value, expect)
            }
            fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
                (**self).delete(key, expect)
            }
            fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
                (**self).list(prefix, after, limit)
            }
            fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
                (**self).apply(batch)
            }
            fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
                (**self).quarantine(key)
            }
            fn scan(&self, prefix: &Prefix, page_size: usize) -> Scan<'_> {
                (**self).scan(prefix, page_size)
            }
            fn sweep_temp_files(&self, min_age: Duration, clock: &dyn Clock) -> Result<usize> {
                (**self).sweep_temp_files(min_age, clock)
            }
            fn is_machine_local(&self) -> bool {
                (**self).is_machine_local()
            }
            fn changes_by_others(&self, prefix: &Prefix) -> Option<Changes> {
                (**self).changes_by_others(prefix)
            }

            // The held store's native calls where it has them, else the
            // pool, as the provided methods would (see `native`).

            #[cfg(feature = "async")]
            fn native_async(&self) -> Option<&dyn native::NativeAsync> {
                (**self).native_async()
            }
            #[cfg(feature = "async")]
            fn get_async(&self, key: &Key) -> impl Future<Output = Result<Option<Entry>>> + Send + 'static
            where
                Self: Clone + 'static,
            {
                let route = match self.native_async() {
                    Some(native) => Ok(native.get(key)),
                    None => Err((self.clone(), key.clone())),
                };
                async move {
                    match route {
                        Ok(call) => call.await,
                        Err((store, key)) => crate::pool::run(move || store.get(&key)).await,
                    }
                }
            }
            #[cfg(feature = "async")]
            fn put_async(
                &self,
                key: &Key,
                value: Vec<u8>,
                expect: Expect,
            ) -> impl Future<Output = Result<Version>> + Send + 'static
            where
                Self: Clone + 'static,
            {
                let route = match self.native_async() {
                    Some(native) => Ok(native.put(key, value, expect)),
                    None => Err((self.clone(), key.clone(), value)),
                };
                async move {
                    match route {
                        Ok(call) => call.await,
                        Err((store, key, value)) => {
                            crate::pool::run(move || store.put(&key, &value, expect)).await
                        }
                    }
                }
            }
            #[cfg(feature = "async")]
            fn delete_async(
                &self,
                key: &Key,
                expect: Expect,
            ) -> impl Future<Output = Result<bool>> + Send + 'static
            where
                Self: Clone + 'static,
            {
                let route = match self.native_async() {
                    Some(native) => Ok(native.delete(key, expect)),
                    None => Err((self.clone(), key.clone())),
                };
                async move {
                    match route {
                        Ok(call) => call.await,
                        Err((store, key)) => crate::pool::run(move || store.delete(&key, expect)).await,
                    }
                }
            }
            #[cfg(feature = "async")]
            fn list_async(
                &self,
                prefix: &Prefix,
                after: Option<&Key>,
                limit: usize,
            ) -> impl Future<Output = Result<ListPage>> + Send + 'static
            where
                Self: Clone + 'static,
            {
                let route = match self.native_async() {
                    Some(native) => Ok(native.list(prefix, after, limit)),
                    None => Err((self.clone(), prefix.clone(), after.cloned())),
                };
                async move {
                    match route {
                        Ok(call) => call.await,
                        Err((store, prefix, after)) => {
                            crate::pool::run(move || store.list(&prefix, after.as_ref(), limit)).await
                        }
                    }
                }
            }
            #[cfg(feature = "async")]
            fn apply_async(
                &self,
                batch: Batch,
            ) -> impl Future<Output = Result<Vec<Applied>>> + Send + 'static
            where
                Self: Clone + 'static,
            {
                let route = match self.native_async() {
                    Some(native) => Ok(native.apply(batch)),
                    None => Err((self.clone(), batch)),
                };
                async move {
                    match route {
                        Ok(call) => call.await,
                        Err((store, batch)) => crate::pool::run(move || store.apply(&batch)).await,
                    }
                }
            }
        }
    )*};
}

forward_store!(Arc<S>, &S, Box<S>);

pub(crate) fn check_limit(limit: usize) -> Result<()> {
    if limit == 0 {
        return Err(Error::InvalidArgument(
            "list limit must be at least 1".to_owned(),
        ));
    }
    Ok(())
}

/// The error of a [`Store::scan`] asked for pages of no key.
pub(crate) fn check_page_size(page_size: usize) -> Result<()> {
    if page_size == 0 {
        return Err(Error::InvalidArgument(
            "scan page size must be at least 1".to_owned(),
        ));
    }
    Ok(())
}

/// The error for something other than what a store expects at `path`, such as a
/// symlink planted there: reported, naming it, and never followed.
pub(crate) fn not_followed(path: &std::path::Path, expected: &str) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        reason: format!(
            "expected {expected}, found a symlink or another kind of file; it is not followed"
        ),
    }
}

/// Whether `content`, found where a format marker `expected` belongs, is what a
/// write of the marker cut short by a crash can leave: no longer than it, and
/// each byte either the marker's or zero (a part that did not land). Empty
/// included; the whole marker is not torn.
pub(crate) fn is_torn(content: &[u8], expected: &[u8]) -> bool {
    content.len() <= expected.len()
        && content != expected
        && content
            .iter()
            .zip(expected)
            .all(|(&found, &written)| found == written || found == 0)
}

/// `names` for a message: the first few, and how many more.
pub(crate) fn name_some(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// Whether `dir` is a directory (`false` if absent). Anything else there (a
/// symlink, a file) is [`not_followed`]: a store never writes through it.
pub(crate) fn is_own_dir<V: crate::vfs::Vfs>(vfs: &V, dir: &std::path::Path) -> Result<bool> {
    match vfs.metadata(dir) {
        Ok(info) if info.kind == crate::vfs::FileKind::Dir => Ok(true),
        Ok(_) => Err(not_followed(dir, "a directory of the store")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(steps::INSPECT_DIRECTORY, dir, e)),
    }
}

/// Opens (creating it with `mode` if absent) a file the store owns, such as a lock
/// file, refusing to follow a symlink planted at its path: opening with `O_CREAT`
/// would create, and writing would change, whatever the link names. A FIFO or a
/// device there is refused too, without waiting on it.
pub(crate) fn open_own_file<V: crate::vfs::Vfs>(
    vfs: &V,
    path: &std::path::Path,
    mode: u32,
    step: IoStep,
) -> Result<V::File> {
    let is_other = |vfs: &V| {
        vfs.metadata(path)
            .is_ok_and(|info| info.kind != crate::vfs::FileKind::File)
    };
    match vfs.metadata(path) {
        Ok(info) if info.kind != crate::vfs::FileKind::File => {
            return Err(not_followed(path, "a file of the store"));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(step, path, e)),
    }
    vfs.open_or_create(path, mode).map_err(|e| {
        // A symlink, FIFO or device planted since the check above fails the
        // open (see `Vfs::open_or_create`): report it as the check would have.
        if e.kind() == std::io::ErrorKind::InvalidData || is_other(vfs) {
            not_followed(path, "a file of the store")
        } else {
            Error::io(step, path, e)
        }
    })
}

/// Reads a file the store wrote itself: at most `max_len` bytes, the most its
/// format allows. `None` if there is no file at `path`.
///
/// The file is opened with [`open_own_regular_file`] and read with
/// [`read_own_bytes`]: a symlink is never followed, a FIFO or a device never
/// waited on or read, and memory is bounded before it is allocated.
///
/// # Errors
/// [`Error::CorruptFile`] naming `path` for a symlink, a FIFO, a socket, a
/// device or a directory there, or a file longer than `max_len`; I/O errors
/// naming `step` and `path`.
pub(crate) fn read_own_file<V: crate::vfs::Vfs>(
    vfs: &V,
    path: &std::path::Path,
    max_len: usize,
    step: IoStep,
) -> Result<Option<Vec<u8>>> {
    match open_own_regular_file(vfs, path, step)? {
        Some(file) => read_own_bytes(&file, path, max_len, step).map(Some),
        None => Ok(None),
    }
}

/// Opens a file the store wrote itself, to read it, with
/// [`Vfs::open_regular_file`](crate::vfs::Vfs::open_regular_file). `None` if
/// there is no file at `path`.
///
/// # Errors
/// [`Error::CorruptFile`] naming `path` for a symlink, a FIFO, a socket, a
/// device or a directory there; I/O errors naming `step` and `path`.
pub(crate) fn open_own_regular_file<V: crate::vfs::Vfs>(
    vfs: &V,
    path: &std::path::Path,
    step: IoStep,
) -> Result<Option<V::File>> {
    match vfs.open_regular_file(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Error::CorruptFile {
            path: path.to_path_buf(),
            reason: "expected a regular file of the store, found a symlink, a FIFO, a socket, \
                     a device or a directory: not followed, not read"
                .to_owned(),
        }),
        Err(e) => Err(Error::io(step, path, e)),
    }
}

/// Reads `file` (opened from `path`) whole, if it is at most `max_len` bytes
/// long. Memory is bounded before it is allocated: a file longer than its
/// first read is measured first, and one longer than `max_len` is refused
/// without reading it on.
///
/// # Errors
/// [`Error::CorruptFile`] naming `path` if the file is longer than `max_len`;
/// I/O errors naming `step` and `path`.
pub(crate) fn read_own_bytes<F: crate::vfs::VfsFile>(
    file: &F,
    path: &std::path::Path,
    max_len: usize,
    step: IoStep,
) -> Result<Vec<u8>> {
    use crate::error::IoContext;
    /// Enough for every file but records and batch journals in one read.
    const FIRST_READ: usize = 8 << 10;

    let too_long = || Error::CorruptFile {
        path: path.to_path_buf(),
        reason: format!("longer than the {max_len} bytes its format allows: not read further"),
    };
    // One byte more than allowed, to tell a file of the largest length from a
    // longer one.
    let cap = max_len.saturating_add(1);
    let mut buf = vec![0u8; FIRST_READ.min(cap)];
    let mut filled = 0;
    loop {
        let n = file
            .read_at(&mut buf[filled..], filled as u64)
            .at(step, path)?;
        filled += n;
        if filled < buf.len() {
            // `read_at` reads less only at the end of the file.
            buf.truncate(filled);
            return Ok(buf);
        }
        if buf.len() >= cap {
            return Err(too_long());
        }
        // Larger than read so far: its length decides how much room to make
        // (a file that grows meanwhile is read on, up to `cap`).
        let size = file.size().at(step, path)?;
        if size > max_len as u64 {
            return Err(too_long());
        }
        let want = usize::try_from(size).unwrap_or(cap).saturating_add(1);
        buf.resize(want.max(buf.len().saturating_mul(2)).min(cap), 0);
    }
}

/// The directory a store opened at `root` works in: `root` itself, or, if
/// `root` is a symlink, what it names, resolved now and used from then on
/// (re-pointing the link later moves nothing). Nothing below the root is ever
/// followed; only the root may be a link, as the caller's choice.
///
/// # Errors
/// [`Error::Io`] naming `root` if it is a symlink whose target does not
/// exist (kind `NotFound`), or if it is, or names, something that is not a
/// directory (kind `NotADirectory`).
pub(crate) fn resolve_root<V: crate::vfs::Vfs>(
    vfs: &V,
    root: &std::path::Path,
) -> Result<std::path::PathBuf> {
    use crate::vfs::FileKind;
    use std::io::{Error as IoError, ErrorKind};
    // `link/` would name the directory, not the link: without the slash.
    let root: std::path::PathBuf = root.components().collect();
    let root = root.as_path();
    let not_a_dir = |step: IoStep| Error::io(step, root, IoError::from(ErrorKind::NotADirectory));
    match vfs.metadata(root) {
        Ok(info) if info.kind == FileKind::Dir => return Ok(root.to_path_buf()),
        Ok(info) if info.kind == FileKind::File => {
            return Err(not_a_dir(steps::STORE_PATH_NOT_A_DIRECTORY));
        }
        Ok(_) => {}
        // Created by the open, or reported by it.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(root.to_path_buf()),
        Err(e) => return Err(Error::io(steps::INSPECT_STORE_DIRECTORY, root, e)),
    }
    // A symlink (or a FIFO, a socket, a device: resolved to itself).
    let resolved = match vfs.canonicalize(root) {
        Ok(resolved) => resolved,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::io(steps::STORE_LINK_TARGET_MISSING, root, e));
        }
        Err(e) => return Err(Error::io(steps::RESOLVE_STORE_PATH, root, e)),
    };
    match vfs.metadata(&resolved) {
        Ok(info) if info.kind == FileKind::Dir => Ok(resolved),
        Ok(_) => Err(not_a_dir(steps::STORE_PATH_NEITHER_DIRECTORY_NOR_LINK)),
        Err(e) => Err(Error::io(steps::INSPECT_STORE_DIRECTORY, &resolved, e)),
    }
}
