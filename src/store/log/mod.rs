//! The fast embedded store: an append-only journal with an in-memory index of
//! keys, values read from the journal, and group commit.

mod cache;
mod commit;
mod compact;
mod frame;
mod group;
mod index;
mod journal;
mod notify;
mod replay;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

pub use self::compact::Compaction;
use self::frame::{FileHeader, FrameBuilder};
use self::group::GroupCommit;
use self::index::Index;
use self::journal::{Journal, PREALLOCATE, Stop};
use self::replay::{Access, load, read_into, settle_tail};
use crate::atomic::AtomicWriter;
use crate::durability::Durability;
use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::key::{Key, Prefix};
use crate::store::packed::pack;
use crate::trace;

/// A key as the index and the journal hold it: [packed](crate::store::packed).
type Packed = Box<[u8]>;
use crate::store::{
    Applied, Batch, BatchOp, Changes, Entry, Expect, ListPage, Quarantined, Store, Version,
    check_limit, is_torn, read_own_file,
};
use crate::vfs::{StdVfs, Vfs, VfsFile};

const MARKER: &str = "jobsafe-logstore";
const MARKER_CONTENT: &[u8] = b"jobsafe LogStore, journal format 1\n";
/// The most a marker is read of: any marker of another format that long is
/// refused all the same.
const MAX_MARKER_LEN: usize = 256;
const JOURNAL: &str = "journal";
const LOCK: &str = "lock";
const COMPACT_LOCK: &str = "compact.lock";
const HANDLE_LOCK: &str = "handle.lock";
/// Journal files being written (new stores, compactions) start with this.
const NEW_JOURNAL_PREFIX: &str = "journal.new-";
const QUARANTINE: &str = "quarantine";
/// Sequence number of a journal's first frame.
const FIRST_SEQ: u64 = 1;

/// A [`Store`] backed by an append-only journal with an in-memory index: the
/// default embedded store, for one machine and any number of processes.
///
/// Pick [`DirStore`](crate::DirStore) instead to read and repair records with a
/// shell, or to hold more keys than fit in memory: a `LogStore` keeps every
/// live record's key and version in memory, with where its value lies in the
/// journal, and reads its whole journal when it opens.
///
/// Every write appends one checksummed frame to the journal and returns once an
/// `fdatasync` made it durable: about one flush per write, into space the file
/// already has, so no flush waits for a file's length or a directory.
/// Concurrent writers share flushes (**group commit**): while one flush runs,
/// the writers that arrive queue, and the next flush carries all of them; a
/// lone writer never waits for company.
///
/// A read finds the key in memory and reads its value from the journal with
/// one positioned read (from the page cache, usually), checked against the
/// checksum its frame had, unless the value is in the handle's cache of the
/// values it read or wrote lately ([`LogStoreBuilder::value_cache`]): bytes
/// damaged on disk since they were read are reported, never served.
///
/// With the feature `async`, [`put_async`](Store::put_async),
/// [`delete_async`](Store::delete_async) and [`apply_async`](Store::apply_async)
/// join the same group commit as futures: they never flush on the thread
/// that polls them; a thread of the crate's [pool](crate::pool) leads their
/// group and wakes each caller's task with its result. A future dropped
/// before its group was taken withdraws its write; dropped after, the write
/// happens. Their `tracing` span reports no `flushes` (the pool thread made
/// them). Unlike [`put`](Store::put), a precondition that already fails is
/// found by the commit rather than by a read first, which would be file I/O
/// on the caller's thread.
///
/// # Design
///
/// ```text
/// root/
///   jobsafe-logstore   format marker
///   journal            file header, frames, then zeros (preallocated space)
///   lock               flock: writers exclusive, readers catching up shared
///   compact.lock       flock: one compaction at a time
///   handle.lock        flock for each handle's lifetime: shared, or
///                      exclusive for an exclusive handle
///   quarantine/        records moved aside by `quarantine`: each value in
///                      `v<version>-<id>.record`, and its key beside it in
///                      `v<version>-<id>.key` (its segments as a JSON array,
///                      on one line)
/// ```
///
/// - **Crashes.** A frame is written only after the one before it is durable,
///   and its checksum covers its length, journal id and sequence number. Opening
///   reads frames until the zeros; a frame that does not check (a write torn by
///   a crash, never acknowledged) ends the journal, and the next writer zeros
///   it. A damaged frame *followed by an intact one*, or by the header of a
///   frame written after it, cannot be a torn write: it is reported as
///   [`Error::CorruptFile`] naming the offset, and nothing after it is dropped
///   or overwritten. Damage to the *last* frame (a bit flipped on the disk
///   after it was acknowledged) cannot be told from a torn write, and is
///   repaired as one: that one write is lost, without an error. A disk that
///   damages what it stored needs a checksumming filesystem or replication
///   below the store.
/// - **Processes.** Writers take the `lock` file exclusively, read what other
///   processes appended since they last looked, decide every precondition, then
///   append: compare-and-set holds across processes. Readers check (without
///   locking) whether anything was appended or the journal was replaced, and
///   catch up under a shared lock if so.
/// - **Compaction** writes the live records to a new journal beside the old one
///   while writers go on, then, under the lock, copies the frames appended
///   meanwhile and renames it into place. Just before the rename it appends an
///   empty frame (a notice) to the old journal, where the other processes'
///   readers look for the next frame: they catch up, find the journal's inode
///   changed and reload it; none reads a replaced journal. It runs in the
///   background when the journal holds mostly dead records
///   ([`LogStoreBuilder::compact_when`]), or on [`compact`](LogStore::compact).
///
/// The on-disk format is described in `docs/format.md` in the repository.
///
/// # Exclusive mode
///
/// A store is shared by default: any number of handles, in any number of
/// processes, and each read first checks that nobody wrote since (one 28-byte
/// positioned read where the next frame would start, and a `statx` of the
/// journal only after a compaction's notice), each commit takes the `lock`
/// file's flock and reads what others appended.
/// [`LogStoreBuilder::exclusive`] trades that for a store that one handle has
/// to itself, the usual case of a service that owns its store: reads check
/// nothing, so a list, or a get of an absent key or of a cached value, is
/// answered from memory without a system call (and the async face's
/// [`get_async`](Store::get_async) and [`list_async`](Store::list_async)
/// without a thread of the pool), commits take no flock, and compactions only
/// `compact.lock`'s.
/// Nothing else can open the store meanwhile, the `jobsafe` operator tool
/// included: stop the service to use the tool on its store, or give the
/// service the operations it needs.
///
/// - **Who has the store.** Every handle holds a flock on `handle.lock` for
///   its whole life: a shared one, or an exclusive one for an exclusive
///   handle. Opens only *try* it, so they never wait: an exclusive open
///   fails at once with [`Error::StoreInUse`] while any other handle is open,
///   and a shared open while an exclusive one is. A separate file keeps this
///   apart from the `lock` file, which shared writers flock for the moment of
///   a commit: a shared open still waits for a commit in progress, as it
///   always did, instead of mistaking it for an exclusive handle. Flocks of
///   two opens of one file conflict inside one process as across processes,
///   so a second [`LogStore::open`] in the same process is refused too
///   (share the first handle by cloning it).
/// - **Nobody else writes.** An exclusive handle also holds the `lock` file's
///   flock for its life, so a process of an older release of this crate,
///   which knows nothing of `handle.lock`, cannot commit beside it either.
///   That flock is never taken or released per operation: the file lives
///   inside the handle's locking mode, which the commit, compaction and read
///   paths match on, and no `Flock` guard (whose drop would unlock it) can be
///   made of it. The handle keeps the store until its last clone is dropped,
///   a drop that first waits for what the handle still runs on other threads
///   (a background compaction, an async write committing on a thread of the
///   pool), or until its process ends.
/// - **Crashes.** Exclusive mode writes the journal exactly as the shared
///   mode does, frame after durable frame; it only skips looking for other
///   writers. The kernel releases a process's flocks when it dies, however
///   it dies, so a crashed exclusive handle leaves no lock behind, and the
///   next open recovers the journal's tail as after any crash (zeroing a torn
///   frame under the `lock` flock). An append of its own that failed part way
///   (a full disk) is read back and zeroed before its next commit, as a
///   shared writer's catch-up would. `tests/power_loss.rs` runs its crash
///   states with an exclusive handle too.
///
/// # Guarantees
///
/// The whole [`Store`] contract with [`Durability::Full`] (the default): a write
/// that returned `Ok` survives a power loss. After a failed flush the store is
/// poisoned: writes return [`Error::Poisoned`] until it is reopened. The write
/// whose flush failed may or may not have reached the disk: reads, and a
/// restart, may or may not find it.
/// Files are created with mode `0o600` and directories with `0o700`, whatever
/// the umask; a symlink, a FIFO, a socket or a device planted at the journal,
/// the marker, a lock file or the quarantine directory is
/// [`Error::CorruptFile`] naming it, never followed, waited on or read, and
/// no more than 256 bytes of the marker are read. Files are
/// checked with `lstat` and, on Linux, opened with
/// `O_NOFOLLOW | O_NONBLOCK` and checked again once open, so a link or a FIFO
/// swapped in between fails the open too; the quarantine directory is only
/// checked before it is written into, so keep the store's directory owned by
/// the service's user.
///
/// The store's directory itself may be given as a symlink: it is resolved
/// once, when the store is opened, and the store works in the directory it
/// named then ([`root`](LogStore::root)); re-pointing the link later moves
/// nothing. A link whose target does not exist, or names something other than
/// a directory, fails the open with an [`Error::Io`] that says so. Nothing
/// below the root is ever followed.
///
/// A full disk fails the write that needs more journal space with an
/// [`Error::Io`] (`ENOSPC`) naming the journal, after the journal has used every
/// byte of space it could reserve; it does not poison, and writes go on once
/// space is freed. A compaction needs room for a second journal: on a full disk
/// it fails and removes what it wrote. A compaction whose flush of that second
/// journal fails removes it too and does not poison: the journal in use was not
/// touched. Once the new journal is renamed into place, a failed flush of the
/// directory poisons.
///
/// # Limitations
///
/// - Every live record's key is held in memory, with about 70 bytes more for
///   its version, the place of its value and the index's tree; reopening
///   reads the whole journal and checks every frame's checksum.
/// - Corruption is found per frame, not per record. A damaged frame followed by
///   later ones makes [`open`](LogStore::open) (and, in a process that has the
///   store open, every write) fail with [`Error::CorruptFile`] naming the byte
///   offset, and nothing is truncated: the operator keeps a copy of the journal
///   and restores it, or cuts it at that offset to keep the frames before it.
/// - Compaction rebuilds the index of the live records from the journal
///   beside the one in use: it needs as much memory again as the index while
///   it runs.
///
/// ```
/// use jobsafe::{Expect, Key, LogStore, Prefix, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = LogStore::open(dir.path())?;
/// let key = Key::new(["jobs", "lic:abc", "1"])?;
/// let v = store.put(&key, br#"{"status":"queued"}"#, Expect::Absent)?;
/// drop(store);
///
/// let store = LogStore::open(dir.path())?;
/// assert_eq!(store.get(&key)?.unwrap().version, v);
/// assert_eq!(store.list_all(&Prefix::new(["jobs"])?)?, vec![key]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LogStore<V: Vfs = StdVfs> {
    shared: Arc<Shared<V>>,
    /// Shared by this handle's clones and nothing else: dropped with the last.
    _last: Arc<LastClone<V>>,
}

impl<V: Vfs> Clone for LogStore<V> {
    fn clone(&self) -> Self {
        LogStore {
            shared: self.shared.clone(),
            _last: self._last.clone(),
        }
    }
}

/// Dropped with the last clone of a handle. In exclusive mode, it waits for
/// the work the handle still runs on other threads (a background compaction,
/// a group commit led on a thread of the pool), so that the store is released
/// by the time the last clone's drop returns, and a new open right after it
/// succeeds (unless the caller still holds a future of the async face, which
/// holds the store).
#[derive(Debug)]
struct LastClone<V: Vfs> {
    shared: Arc<Shared<V>>,
}

impl<V: Vfs> Drop for LastClone<V> {
    fn drop(&mut self) {
        if self.shared.is_exclusive() {
            self.shared.background.wait_idle();
        }
    }
}

/// How many pieces of work hold the store on other threads.
#[derive(Debug, Default)]
struct Background {
    running: Mutex<usize>,
    idle: parking_lot::Condvar,
}

impl Background {
    /// Waits until no work holds the store. Never called from such work.
    fn wait_idle(&self) {
        let mut running = self.running.lock();
        while *running > 0 {
            self.idle.wait(&mut running);
        }
    }
}

/// The store as a piece of work on another thread holds it: dropped, it lets
/// go of the store first, then counts the work as done.
struct InBackground<V: Vfs> {
    shared: Option<Arc<Shared<V>>>,
    count: Arc<Background>,
}

impl<V: Vfs> InBackground<V> {
    fn new(shared: &Arc<Shared<V>>) -> Self {
        let count = Arc::clone(&shared.background);
        *count.running.lock() += 1;
        InBackground {
            shared: Some(Arc::clone(shared)),
            count,
        }
    }

    fn shared(&self) -> &Arc<Shared<V>> {
        self.shared
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only by drop"))
    }
}

impl<V: Vfs> Drop for InBackground<V> {
    fn drop(&mut self) {
        drop(self.shared.take());
        let mut running = self.count.running.lock();
        *running -= 1;
        if *running == 0 {
            self.count.idle.notify_all();
        }
    }
}

#[derive(Debug)]
struct Shared<V: Vfs> {
    root: PathBuf,
    journal_path: PathBuf,
    writer: AtomicWriter<V>,
    sync: bool,
    // Lock order. A thread takes these locks only in this order, and never
    // waits for one while it holds one that comes later:
    //
    // 1. The lead of a group of `group` (group.rs). It is not a mutex, but the
    //    other writers of the group wait for the leader, and the leader takes
    //    3, 4 and 5 in `commit_group`. So a thread that holds 3, 4 or 5 must
    //    never commit: it would wait for a leader that waits for it. The
    //    queue mutex inside `group` is held only to queue a request, hand out
    //    results and pass the lead, never together with any other lock.
    // 2. The flock on `compact.lock`, held for a whole compaction
    //    (`compact::run`), which takes 3 and 4 twice under it. It is taken
    //    through a fresh open every time, so it excludes the threads of this
    //    process from each other too. 1 and 2 are never held together.
    // 3. `journal`.
    // 4. The flock on `lock_file` (`Flock`), shared or exclusive. It is taken
    //    only while `journal` is held, and released before `journal` is. The
    //    flock belongs to the one open file description that every thread of
    //    this process shares, so it does not exclude them from each other: a
    //    second `flock` through it would convert the lock held (turn a
    //    writer's exclusive lock into a shared one, say), and an unlock would
    //    release it for everyone. Holding `journal` makes one thread at a time
    //    the holder of the flock. (`LogStoreBuilder::open` takes the flock
    //    before `Shared` exists, when no other thread can use it.)
    // 5. Leaves, never two of them at once: `index`, `probe`,
    //    `last_compaction_error`.
    //    - `index` is read without any other lock (`get`, `list`, `fail_fast`,
    //      `compact::maybe_start`), so that reads do not wait for a writer's
    //      flush (`commit_group` takes it only after the flush); hence a
    //      thread that holds `index` must never wait for `journal` or the
    //      flock. `catch_up` and `commit_group` take it under 3 and 4.
    //    - `probe` is taken alone (`is_current`, `compact::maybe_start`) or
    //      last under 3 and 4 (`catch_up`, `commit_group`, `compact::run`).
    //    - `last_compaction_error` is taken alone (the background compaction
    //      thread) or under 3 (`stats`).
    // 6. The mutex of a shard of an index's value cache (`cache`): taken
    //    alone (a get that read its value from the file) or under `index`
    //    (`lookup`, `commit_group`), and never holds another lock itself.
    //
    // Before all of them, `open` tries (never waits for) the flock on
    // `handle.lock`, held by every handle for its lifetime; an exclusive
    // handle then tries the flock on `lock_file` and keeps it for its
    // lifetime too, and so never takes 4 afterwards (see `Locking`).
    //
    // One place takes two of them the other way round: while `open` holds the
    // flock on `lock_file` exclusively, `compact::sweep_abandoned` takes the
    // flock on `compact.lock`. It only tries (`try_lock`) and never waits, so
    // it cannot deadlock with a compaction in another process that holds
    // `compact.lock` and waits for `lock`.
    //
    // `poisoned`, `compacting`, `compact_retry_at` and `compactions` are
    // atomics, not locks: they are read and written under any of the above.
    /// `handle.lock`, flocked for as long as this handle lives: shared, or
    /// exclusive in exclusive mode. Only its close releases it.
    handle_lock: V::File,
    /// Whether other handles may write, and with it the `lock` file.
    locking: Locking<V::File>,
    journal: Mutex<Journal<V::File>>,
    index: RwLock<Index<V::File>>,
    probe: Mutex<Probe<V::File>>,
    group: GroupCommit<Vec<BatchOp>, Result<Vec<Applied>>>,
    poisoned: AtomicBool,
    /// With `sync`: the inode of the journal whose name this handle knows to
    /// be durable (it created or flushed it), 0 if none. The loaded journal is
    /// held open, so its inode number cannot name another file meanwhile.
    named: AtomicU64,
    /// With `sync`: whether this handle made the entry of `quarantine/`
    /// durable (it is never removed).
    quarantine_named: AtomicBool,
    policy: CompactPolicy,
    /// Bytes of values each index caches.
    value_cache: usize,
    compacting: AtomicBool,
    /// Journal bytes below which no background compaction is tried again, after
    /// one that did not run (another process was compacting) or failed.
    compact_retry_at: AtomicU64,
    compactions: AtomicU64,
    last_compaction_error: Mutex<Option<String>>,
    /// In exclusive mode: an append failed without poisoning, and part of
    /// its frame may lie at the journal's end. In shared mode the next
    /// commit's catch-up finds and clears it; in exclusive mode, which does
    /// not catch up, the next commit clears it because of this flag.
    tail_unsettled: AtomicBool,
    /// Work holding the store on other threads (see `InBackground`). Its
    /// mutex is a leaf, taken with no other lock held.
    background: Arc<Background>,
    /// Who watches which keys (`Store::changes_by_others`). Its mutexes are
    /// leaves; what a catch-up under 3 and 4 finds is noted there, and told
    /// (which wakes tasks) only once no lock of this list is held.
    changes: crate::store::changes::ChangeFeed,
    /// Whether a thread watches the journal for other processes' writes.
    watching: AtomicBool,
}

impl<V: Vfs> Drop for Shared<V> {
    /// Unlocks the lifetime flocks rather than leave them to the close: a
    /// flock belongs to the open file description, which a process forked
    /// meanwhile (to run another program: the copy is closed only at its
    /// exec) shares, and an unlock releases it for every copy. The `lock`
    /// file first: an open that finds `handle.lock` free must find it free.
    fn drop(&mut self) {
        if let Locking::Exclusive { lock_file } = &self.locking {
            let _ = lock_file.unlock();
        }
        let _ = self.handle_lock.unlock();
    }
}

/// What a reader checks to know whether its index is current: the offset
/// where the next frame would start in the journal it read, and, after a
/// compaction's notice, the journal's inode.
#[derive(Debug)]
struct Probe<F> {
    inode: u64,
    at: u64,
    file: Arc<F>,
    /// The last frame read is a compaction's notice ([`Journal::noticed`]).
    noticed: bool,
}

/// How a handle shares the store, and so which locks it takes and which
/// checks it makes.
///
/// The `lock` file lives inside it so that no path can flock it in exclusive
/// mode: a flock belongs to the open file description, and the unlock that
/// ends a commit's `Flock` would release the lock held for the handle's
/// lifetime along with it.
#[derive(Debug)]
enum Locking<F> {
    /// Other handles may write. `lock_file` is flocked by writers
    /// (exclusive) and by readers catching up (shared); reads check first
    /// whether anything was written.
    Shared { lock_file: F },
    /// This handle holds `handle.lock` and the `lock` file exclusively until
    /// it is dropped: nobody else writes, so reads check nothing, commits take
    /// no flock, and neither commits nor compactions read anything back.
    Exclusive {
        /// The `lock` file, flocked exclusively at open, unlocked only when
        /// the handle is dropped (`Shared`'s drop).
        lock_file: F,
    },
}

/// When to compact in the background.
#[derive(Clone, Copy, Debug)]
struct CompactPolicy {
    enabled: bool,
    min_bytes: u64,
    dead_ratio: f64,
}

/// Options for opening a [`LogStore`].
///
/// ```
/// use jobsafe::{Durability, LogStore};
///
/// let dir = tempfile::tempdir()?;
/// let store = LogStore::builder(dir.path())
///     .durability(Durability::Full)
///     .compact_when(64 << 20, 0.5)
///     .open()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LogStoreBuilder<V: Vfs = StdVfs> {
    root: PathBuf,
    vfs: V,
    durability: Durability,
    create: bool,
    policy: CompactPolicy,
    exclusive: bool,
    value_cache: usize,
}

impl LogStore<StdVfs> {
    /// The most a transaction (a put, a delete or a whole batch) may take in the
    /// journal: 256 MiB, 16 times [`Entry::MAX_VALUE_LEN`], so that a batch of
    /// up to 15 values of the largest size, with their keys, always fits.
    /// Far below what a frame may declare, so that every acknowledged
    /// transaction is read back. A larger batch is refused with
    /// [`Error::TooLarge`] (with no key: it is the batch's size) before
    /// anything is written. This bound is `LogStore`'s own: the [`Store`]
    /// contract bounds each value, not a batch.
    pub const MAX_TRANSACTION_BYTES: usize = 16 * Entry::MAX_VALUE_LEN;

    /// Opens the store at `root`, creating the directory and the store if missing.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path that could not be created or read;
    /// [`Error::CorruptFile`] if `root` is a non-empty directory that is not a
    /// `LogStore`, or if its journal is damaged before its last frame.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        LogStore::builder(root).open()
    }

    /// Options for opening the store at `root`.
    pub fn builder(root: impl AsRef<Path>) -> LogStoreBuilder<StdVfs> {
        LogStoreBuilder {
            root: root.as_ref().to_path_buf(),
            vfs: StdVfs,
            durability: Durability::Full,
            create: true,
            policy: CompactPolicy {
                enabled: true,
                min_bytes: 64 << 20,
                dead_ratio: 0.5,
            },
            exclusive: false,
            value_cache: LogStoreBuilder::<StdVfs>::DEFAULT_VALUE_CACHE,
        }
    }
}

impl<V: Vfs> LogStoreBuilder<V> {
    /// Does all I/O through `vfs`. Default: [`StdVfs`].
    pub fn vfs<W: Vfs>(self, vfs: W) -> LogStoreBuilder<W> {
        LogStoreBuilder {
            root: self.root,
            vfs,
            durability: self.durability,
            create: self.create,
            policy: self.policy,
            exclusive: self.exclusive,
            value_cache: self.value_cache,
        }
    }

    /// The size of the value cache unless [`value_cache`](Self::value_cache)
    /// sets another: 8 MiB.
    pub const DEFAULT_VALUE_CACHE: usize = 8 << 20;

    /// How many bytes of values a handle keeps in memory: the values it read
    /// or wrote lately. Default: [`DEFAULT_VALUE_CACHE`](Self::DEFAULT_VALUE_CACHE).
    ///
    /// The index holds every record's key and version, and where its value
    /// lies in the journal; a [`get`](Store::get) of a value not in the cache
    /// reads it from the journal file (usually from the operating system's
    /// page cache) and checks it against the checksum its frame had. So
    /// memory grows with the number of records and their keys, not with the
    /// bytes of their values. 0 caches nothing; a value that, with 64 bytes
    /// of bookkeeping, would take more than a hundred and twenty-eighth of
    /// the cache is never cached (64 KiB less 64 bytes, at the default).
    ///
    /// ```
    /// use jobsafe::{Expect, Key, LogStore, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = LogStore::builder(dir.path()).value_cache(64 << 20).open()?;
    /// let key = Key::new(["jobs", "1"])?;
    /// store.put(&key, b"queued", Expect::Absent)?;
    /// assert_eq!(store.get(&key)?.unwrap().value, b"queued");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn value_cache(mut self, bytes: usize) -> Self {
        self.value_cache = bytes;
        self
    }

    /// What a write survives once it returns. Default: [`Durability::Full`].
    /// **[`Durability::AtomicOnly`] skips every flush and loses acknowledged
    /// writes on power loss**: for tests and benchmark set-up only.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Whether to create the directory and the store if missing. Default: `true`.
    /// With `false`, a missing store is an [`Error::Io`] of kind `NotFound`.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Compacts in the background once the journal is at least `min_bytes` long
    /// and more than `dead_ratio` of it is dead (overwritten or deleted records).
    /// Default: 64 MiB and 0.5, so the journal stays within about twice the live
    /// data, plus `min_bytes`.
    pub fn compact_when(mut self, min_bytes: u64, dead_ratio: f64) -> Self {
        self.policy = CompactPolicy {
            enabled: true,
            min_bytes,
            dead_ratio: dead_ratio.clamp(0.0, 1.0),
        };
        self
    }

    /// Never compacts in the background; [`LogStore::compact`] still does.
    pub fn no_background_compaction(mut self) -> Self {
        self.policy.enabled = false;
        self
    }

    /// Whether this handle has the store to itself, for as long as it (or a
    /// clone of it) lives. Default: `false`, the store is shared with other
    /// handles and processes.
    ///
    /// With `true`, no other handle can open the store meanwhile, in this
    /// process or another (the `jobsafe` operator tool included), and in
    /// exchange this one never checks for their writes: a
    /// [`list`](Store::list), a [`LogStore::stats`], and a
    /// [`get`](Store::get) of an absent key or of a value in the cache
    /// ([`value_cache`](Self::value_cache)) are answered from memory
    /// without a system call, and [`get_async`](Store::get_async) and
    /// [`list_async`](Store::list_async) then without a thread of the pool; a
    /// commit takes no file lock (a compaction only `compact.lock`'s). Choose it when one process
    /// owns the store: the usual service. It is as crash-safe as the shared
    /// mode (see [`LogStore`], *Exclusive mode*).
    ///
    /// Opening fails at once with [`Error::StoreInUse`] (exclusive: `true`)
    /// if another handle has the store open, and every later open of the
    /// store, shared or exclusive, fails at once with [`Error::StoreInUse`]
    /// until the last clone of this handle is dropped, or its process ends.
    /// Dropping the last clone waits for what the handle still runs on other
    /// threads (a background compaction, a group commit of async writes led
    /// on a thread of the pool), so that the store is free once the drop
    /// returns; a future of its async face that the caller still holds keeps
    /// the store until it is dropped too.
    ///
    /// ```
    /// use jobsafe::{Expect, Key, LogStore, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = LogStore::builder(dir.path()).exclusive(true).open()?;
    /// let key = Key::new(["jobs", "1"])?;
    /// store.put(&key, b"queued", Expect::Absent)?;
    ///
    /// // Nobody else may open it meanwhile, not even this process.
    /// let err = LogStore::open(dir.path()).unwrap_err();
    /// assert!(err.is_store_in_use(), "{err}");
    ///
    /// drop(store);
    /// let store = LogStore::open(dir.path())?;
    /// assert_eq!(store.get(&key)?.unwrap().value, b"queued");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Opens the store, reading the whole journal into its index.
    ///
    /// # Errors
    /// As [`LogStore::open`], and [`Error::StoreInUse`] if another handle
    /// holds the store exclusively, or if this one asks for it
    /// ([`exclusive`](LogStoreBuilder::exclusive)) while another has it open.
    pub fn open(self) -> Result<LogStore<V>> {
        let writer = AtomicWriter::with_vfs(self.vfs).with_durability(self.durability);
        let root = crate::store::resolve_root(writer.vfs(), &self.root)?;
        prepare_root(&writer, &root, self.create)?;
        let vfs = writer.vfs();
        // First, and only tried: an open never waits behind a handle that
        // keeps the store for its lifetime (see "Exclusive mode").
        let handle_path = root.join(HANDLE_LOCK);
        let handle_lock =
            crate::store::open_own_file(vfs, &handle_path, 0o600, steps::OPEN_HANDLE_LOCK)?;
        let took = if self.exclusive {
            handle_lock.try_lock()
        } else {
            handle_lock.try_lock_shared()
        };
        let in_use = || Error::StoreInUse {
            path: root.clone(),
            exclusive: self.exclusive,
        };
        if !took.at(steps::LOCK_STORE_HANDLE, &handle_path)? {
            return Err(in_use());
        }
        let lock_path = root.join(LOCK);
        let lock_file = crate::store::open_own_file(vfs, &lock_path, 0o600, steps::OPEN_LOCK_FILE)?;
        let journal_path = root.join(JOURNAL);
        let sync = self.durability == Durability::Full;

        // Exclusive mode keeps the `lock` file's flock until `lock_file` is
        // closed: never through a `Flock`, whose drop would unlock it. Any
        // handle of this release that could hold it holds `handle.lock` too,
        // so only a process of an older release, mid-commit, is refused here.
        let flock = if self.exclusive {
            if !lock_file.try_lock().at(steps::LOCK_STORE, &lock_path)? {
                return Err(in_use());
            }
            None
        } else {
            Some(Flock::exclusive(&lock_file, &lock_path)?)
        };
        if vfs
            .metadata(&journal_path)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            // A creation cut short between the marker and the journal.
            check_creation_only(vfs, &root, &journal_path)?;
            create_journal(&writer, &root)?;
        } else if sync {
            // The journal, and the marker, may be another process's that died
            // between its rename and its flush of the directory (a live one
            // flushes before it lets go of the lock): this handle's writes
            // must not go into a journal whose name a power loss can undo.
            vfs.sync_dir(&root)
                .at(steps::FSYNC_STORE_DIRECTORY, &root)?;
        }
        compact::sweep_abandoned(&writer, &root)?;
        let (mut journal, index, stop) = load(vfs, &journal_path, self.value_cache)?;
        // A failed flush here fails the open: no handle is left to poison.
        let unused = AtomicBool::new(false);
        settle_tail(
            &mut journal,
            stop,
            &journal_path,
            sync,
            Access::Exclusive,
            &unused,
        )?;
        let probe = Probe {
            inode: journal.inode,
            at: journal.end,
            file: journal.file.clone(),
            noticed: journal.noticed,
        };
        // Created or flushed above, under the lock no compaction renames without.
        let named = if sync { journal.inode } else { 0 };
        drop(flock);
        let locking = if self.exclusive {
            Locking::Exclusive { lock_file }
        } else {
            Locking::Shared { lock_file }
        };

        let shared = Arc::new(Shared {
            root,
            journal_path,
            writer,
            sync,
            handle_lock,
            locking,
            journal: Mutex::new(journal),
            index: RwLock::new(index),
            probe: Mutex::new(probe),
            group: GroupCommit::default(),
            poisoned: AtomicBool::new(false),
            named: AtomicU64::new(named),
            quarantine_named: AtomicBool::new(false),
            policy: self.policy,
            value_cache: self.value_cache,
            compacting: AtomicBool::new(false),
            compact_retry_at: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            last_compaction_error: Mutex::new(None),
            tail_unsettled: AtomicBool::new(false),
            background: Arc::default(),
            changes: Default::default(),
            watching: AtomicBool::new(false),
        });
        Ok(LogStore {
            _last: Arc::new(LastClone {
                shared: Arc::clone(&shared),
            }),
            shared,
        })
    }
}

/// Sizes and counters of a [`LogStore`], as this process sees them.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LogStats {
    /// Live records.
    pub records: usize,
    /// Bytes the live records take in a freshly compacted journal (estimated).
    pub live_bytes: u64,
    /// Bytes of journal written (frames), dead ones included.
    pub journal_bytes: u64,
    /// Bytes the journal file takes, preallocated space included.
    pub allocated_bytes: u64,
    /// Compactions the journal went through, by any process.
    pub generation: u64,
    /// Compactions this handle ran.
    pub compactions: u64,
    /// Why the last background compaction failed, if it did.
    pub last_compaction_error: Option<String>,
}

impl<V: Vfs> LogStore<V> {
    /// The store's directory: the one it was opened at, or, if that was a
    /// symlink, the directory the link named when the store was opened.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Whether an earlier failed flush poisoned this handle (and its clones):
    /// writes then return [`Error::Poisoned`] until the store is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::SeqCst)
    }

    /// Sizes and counters, after reading what other processes appended.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn stats(&self) -> Result<LogStats> {
        // Lock order: journal, lock file, index. Read the index first and let
        // go of it before taking the journal.
        let (records, live_bytes) = {
            let index = self.shared.fresh_index()?;
            (index.len(), index.live_bytes)
        };
        let journal = self.shared.journal.lock();
        Ok(LogStats {
            records,
            live_bytes,
            journal_bytes: journal.end,
            allocated_bytes: journal.allocated,
            generation: journal.header.generation,
            compactions: self.shared.compactions.load(Ordering::Relaxed),
            last_compaction_error: self.shared.last_compaction_error.lock().clone(),
        })
    }

    /// Rewrites the journal with only the live records, now, and returns what it
    /// did; writers go on while the new journal is written.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file; [`Error::Poisoned`]; [`Error::CorruptFile`]
    /// if the journal is damaged.
    pub fn compact(&self) -> Result<Compaction> {
        let compacted = compact::run(&self.shared, compact::Wait::Yes);
        self.shared.changes.tell();
        compacted
    }
}

/// Checks that `root` is a `LogStore`, or makes it one (the format marker)
/// if `create` allows.
///
/// Creating is idempotent and safe to race with other processes creating the
/// same store: each writes the same marker, and a creation cut short (a
/// crash, or an older release in the relaxed mode that left a marker with
/// only part of its bytes after a power loss) is completed, provided that the
/// root holds nothing but what a creation or the store makes. The marker is
/// flushed whatever the durability: a relaxed store may lose writes, never the
/// ability to open.
fn prepare_root<V: Vfs>(writer: &AtomicWriter<V>, root: &Path, create: bool) -> Result<()> {
    let vfs = writer.vfs();
    let marker = root.join(MARKER);
    // A link, a FIFO or a device at the marker is refused, never followed or
    // waited on.
    match read_own_file(vfs, &marker, MAX_MARKER_LEN, steps::READ_FORMAT_MARKER)? {
        Some(content) if content == MARKER_CONTENT => return Ok(()),
        Some(content) if is_torn(&content, MARKER_CONTENT) && !create => {
            return Err(Error::CorruptFile {
                path: marker,
                reason: format!(
                    "holds {} of the {} bytes of a LogStore marker: a creation cut short; \
                     open with creation allowed to complete it",
                    content.len(),
                    MARKER_CONTENT.len()
                ),
            });
        }
        Some(content) if is_torn(&content, MARKER_CONTENT) => {}
        Some(_) => {
            return Err(Error::CorruptFile {
                path: marker,
                reason: "unknown LogStore format (written by a newer jobsafe?)".to_owned(),
            });
        }
        None if !create => {
            return Err(Error::io(
                steps::OPEN_STORE_NOT_CREATED,
                &marker,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        None => {}
    }
    vfs.create_dir_all_durable(root)
        .at(steps::CREATE_STORE_DIRECTORY, root)?;
    // Listed after the marker was read: another process may have created the
    // store meanwhile, and its files are the store's.
    check_only_ours(vfs, root)?;
    // Two processes creating the store at once write the same bytes.
    writer.write_durably(&marker, MARKER_CONTENT)
}

/// Refuses to make a store of a directory that holds anything but what a
/// creation of this store, running now in another process or cut short by a
/// crash, or the store itself can have put there.
fn check_only_ours<V: Vfs>(vfs: &V, root: &Path) -> Result<()> {
    let names = vfs.read_dir(root).at(steps::LIST_STORE_DIRECTORY, root)?;
    let foreign: Vec<String> = names
        .iter()
        .map(|name| name.to_string_lossy())
        .filter(|name| {
            ![MARKER, LOCK, COMPACT_LOCK, HANDLE_LOCK, JOURNAL, QUARANTINE].contains(&name.as_ref())
                && !name.starts_with(NEW_JOURNAL_PREFIX)
                && !crate::atomic::is_temp_name(name)
        })
        .map(|name| format!("{name:?}"))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(Error::CorruptFile {
        path: root.to_path_buf(),
        reason: format!(
            "not a LogStore (no complete {MARKER} file) and not empty: holds {}",
            crate::store::name_some(&foreign)
        ),
    })
}

/// Refuses to make a new journal for a store whose journal is missing unless
/// the directory holds only what a creation leaves (the marker, the lock
/// files, temp files and new journals not renamed into place yet): anything
/// else there means that the store was used, and a new empty journal would
/// hide the loss of its records.
fn check_creation_only<V: Vfs>(vfs: &V, root: &Path, journal: &Path) -> Result<()> {
    let names = vfs.read_dir(root).at(steps::LIST_STORE_DIRECTORY, root)?;
    let other: Vec<String> = names
        .iter()
        .map(|name| name.to_string_lossy())
        .filter(|name| {
            ![MARKER, LOCK, COMPACT_LOCK, HANDLE_LOCK].contains(&name.as_ref())
                && !name.starts_with(NEW_JOURNAL_PREFIX)
                && !crate::atomic::is_temp_name(name)
        })
        .map(|name| format!("{name:?}"))
        .collect();
    if other.is_empty() {
        return Ok(());
    }
    Err(Error::CorruptFile {
        path: journal.to_path_buf(),
        reason: format!(
            "missing, in a store directory that holds more than a creation leaves ({}): \
             not made again, which would hide the loss of the store's records",
            crate::store::name_some(&other)
        ),
    })
}

/// Writes an empty journal and renames it into place, flushed whatever the
/// durability: creation is rare, and a journal renamed into place before its
/// bytes reach the disk leaves a store that cannot open after a power loss.
fn create_journal<V: Vfs>(writer: &AtomicWriter<V>, root: &Path) -> Result<()> {
    let header = FileHeader {
        journal_id: fastrand::u64(..),
        generation: 0,
    };
    let mut frame = FrameBuilder::new();
    frame.floor(Version::new(0));
    let first = frame.finish(header.journal_id, FIRST_SEQ);
    let (path, file) = compact::new_journal_file(writer.vfs(), root)?;
    let write = || -> std::io::Result<()> {
        file.write_all_at(&header.encode(), 0)?;
        file.write_all_at(&first, frame::FILE_HEADER_LEN)?;
        let end = frame::FILE_HEADER_LEN + first.len() as u64;
        file.write_all_at(&vec![0; PREALLOCATE as usize], end)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        // Cut short (a full disk, say): give its space back now rather than at
        // the next open's sweep.
        drop(file);
        let _ = writer.vfs().remove_file(&path);
        return Err(Error::io(steps::WRITE_NEW_JOURNAL, &path, e));
    }
    compact::install(writer.vfs(), &path, &root.join(JOURNAL), true)
}

/// Whether anything was written where a frame header would be at `at`:
/// unwritten journal space is zeros, and a frame's header never is, so this
/// also catches the remains of a torn write whose first bytes did not land.
fn frame_starts_at<F: VfsFile + ?Sized>(file: &F, at: u64, path: &Path) -> Result<bool> {
    let mut header = [0u8; frame::FRAME_HEADER_LEN];
    let n = file
        .read_at(&mut header, at)
        .at(steps::READ_JOURNAL, path)?;
    Ok(header[..n].iter().any(|&b| b != 0))
}

/// An flock held until dropped.
struct Flock<'a, F: VfsFile> {
    file: &'a F,
}

impl<'a, F: VfsFile> Flock<'a, F> {
    fn exclusive(file: &'a F, path: &Path) -> Result<Self> {
        file.lock().at(steps::LOCK_STORE, path)?;
        Ok(Flock { file })
    }

    fn shared(file: &'a F, path: &Path) -> Result<Self> {
        file.lock_shared().at(steps::LOCK_STORE_SHARED, path)?;
        Ok(Flock { file })
    }
}

impl<F: VfsFile> Drop for Flock<'_, F> {
    fn drop(&mut self) {
        // Closing the file would release it too; an unlock that fails leaves the
        // lock to the next unlock or to the close.
        let _ = self.file.unlock();
    }
}

impl<V: Vfs> Shared<V> {
    fn lock_path(&self) -> PathBuf {
        self.root.join(LOCK)
    }

    /// Makes `dir` (`quarantine/`) exist, and with `sync` makes its entry
    /// durable once per handle: whoever created it (this handle, or another
    /// process that may not have flushed the root yet, or died before it did),
    /// a record moved into it must not vanish with it. Anything but a
    /// directory there (a planted symlink) is reported, never written through.
    fn ensure_quarantine_dir(&self, dir: &Path) -> Result<()> {
        let vfs = self.writer.vfs();
        if !crate::store::is_own_dir(vfs, dir)? {
            match vfs.create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    crate::store::is_own_dir(vfs, dir)?;
                }
                Err(e) => return Err(Error::io(steps::CREATE_QUARANTINE_DIRECTORY, dir, e)),
            }
        }
        if self.sync && !self.quarantine_named.load(Ordering::SeqCst) {
            vfs.sync_dir(&self.root)
                .at(steps::FSYNC_STORE_DIRECTORY, &self.root)?;
            self.quarantine_named.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The index, after catching up with other processes if they wrote.
    fn fresh_index(&self) -> Result<RwLockReadGuard<'_, Index<V::File>>> {
        match &self.locking {
            Locking::Shared { lock_file } => {
                if !self.is_current()? {
                    {
                        let mut journal = self.journal.lock();
                        let _flock = Flock::shared(lock_file, &self.lock_path())?;
                        self.catch_up(&mut journal, Access::Shared)?;
                    }
                    self.changes.tell();
                }
            }
            // Nobody else writes: the index is current, and nothing is read.
            Locking::Exclusive { .. } => {}
        }
        Ok(self.index.read())
    }

    /// The `lock` file to flock for a commit or a compaction; `None` in
    /// exclusive mode, where this handle holds it for its lifetime.
    fn lock_file(&self) -> Option<&V::File> {
        match &self.locking {
            Locking::Shared { lock_file } => Some(lock_file),
            Locking::Exclusive { .. } => None,
        }
    }

    /// Whether this handle has the store to itself.
    fn is_exclusive(&self) -> bool {
        matches!(self.locking, Locking::Exclusive { .. })
    }

    /// Whether no other process appended a frame or replaced the journal since
    /// this one last looked: the place of the next frame in the journal it
    /// read holds no frame start. One positioned read, and no `statx`: a
    /// compaction appends a notice (an empty frame) to the old journal before
    /// it renames the new one over it, so a reader of the old journal finds
    /// that frame first, and catching up finds the journal replaced. Only a
    /// reader whose last frame read is that notice checks the journal's
    /// inode, since the rename may come after it read the notice.
    fn is_current(&self) -> Result<bool> {
        let (inode, at, file, noticed) = {
            let probe = self.probe.lock();
            (probe.inode, probe.at, probe.file.clone(), probe.noticed)
        };
        if noticed {
            let now = self
                .writer
                .vfs()
                .inode(&self.journal_path)
                .at(steps::STAT_JOURNAL, &self.journal_path)?;
            if now != inode {
                return Ok(false);
            }
        }
        Ok(!frame_starts_at(&*file, at, &self.journal_path)?)
    }

    /// Reads what other processes appended, reloading the journal if another
    /// process replaced it. Callers hold the journal mutex and the lock file.
    fn catch_up(&self, journal: &mut Journal<V::File>, access: Access) -> Result<()> {
        let vfs = self.writer.vfs();
        let path = &self.journal_path;
        let inode = vfs.inode(path).at(steps::STAT_JOURNAL, path)?;
        let stop = if inode != journal.inode {
            let (fresh, index, stop) = load(vfs, path, self.value_cache)?;
            *journal = fresh;
            let old = std::mem::replace(&mut *self.index.write(), index);
            free_elsewhere(old);
            // Replaced: what changed in between is not known. Told once
            // the caller has let go of the store's locks.
            self.changes.note_all();
            stop
        } else if frame_starts_at(&*journal.file, journal.end, path)? {
            let mut touched = self.changes.is_watched().then(Vec::new);
            let stop = {
                let mut index = self.index.write();
                read_into(journal, &mut *index, path, touched.as_mut())?
            };
            if let Some(touched) = touched {
                self.changes.note_packed(touched);
            }
            stop
        } else {
            // Nothing was appended: readers keep the index meanwhile.
            Stop::End
        };
        if access == Access::Exclusive
            && self.sync
            && self.named.load(Ordering::SeqCst) != journal.inode
        {
            // Another process's compaction renamed this journal into place,
            // and may have died before it flushed the directory: make the name
            // durable before this writer's frames go into the file it names.
            if let Err(e) = vfs.sync_dir(&self.root) {
                self.poisoned.store(true, Ordering::SeqCst);
                return Err(Error::io(steps::FSYNC_STORE_DIRECTORY, &self.root, e));
            }
            self.named.store(journal.inode, Ordering::SeqCst);
        }
        settle_tail(journal, stop, path, self.sync, access, &self.poisoned)?;
        *self.probe.lock() = Probe {
            inode: journal.inode,
            at: journal.end,
            file: journal.file.clone(),
            noticed: journal.noticed,
        };
        Ok(())
    }
}

impl<V: Vfs> LogStore<V> {
    /// Commits `ops` as one transaction, then starts a background compaction if
    /// the journal has grown mostly dead.
    fn commit(&self, ops: Vec<BatchOp>) -> Result<Vec<Applied>> {
        check_size(&ops)?;
        self.fail_fast(&ops)?;
        let applied = self.shared.commit(ops)?;
        compact::maybe_start(&self.shared);
        Ok(applied)
    }
}

impl<V: Vfs> LogStore<V> {
    /// Returns the conflict of a precondition that already fails, without
    /// queueing for a commit and its lock: an insert of a key that exists (a
    /// duplicate request) costs a read. A conflict is returned only as found in
    /// a fresh index, so it is as true as one found under the lock. Preconditions
    /// that hold in the index as it is go to the commit without a look at the
    /// journal (which would cost a `stat` and a read per request): the commit
    /// checks them again under the lock anyway.
    fn fail_fast(&self, ops: &[BatchOp]) -> Result<()> {
        if ops.iter().all(|op| op.expect() == Expect::Any) {
            return Ok(());
        }
        let check = |index: &Index<V::File>| {
            ops.iter().try_for_each(|op| {
                op.expect()
                    .check(op.key(), index.current(&pack(op.key().segments())))
            })
        };
        if check(&self.shared.index.read()).is_ok() {
            return Ok(());
        }
        check(&*self.shared.fresh_index()?)
    }
}

/// Frees `index` on a thread of the crate's pool, so that the caller, who
/// holds the store's locks, does not make every reader and writer wait while
/// a large tree is freed. The index holds its journal file open until then,
/// which nothing else needs any more.
fn free_elsewhere<F: VfsFile + 'static>(index: Index<F>) {
    if index.len() >= FREE_ELSEWHERE_FROM {
        crate::pool::detach(move || drop(index));
    }
}

/// Records below which an index is freed where it is replaced: handing it to
/// the pool costs more than freeing a small tree.
const FREE_ELSEWHERE_FROM: usize = 1 << 16;

/// What a quarantined record's `.key` file holds: the key's segments as a JSON
/// array on one line (a segment's line breaks and other control characters
/// escaped by JSON), so that the file reads back to the exact key.
fn key_file(key: &Key) -> Vec<u8> {
    let mut line = serde_json::to_vec(key.segments()).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Where a key's value is, as the index says.
enum Lookup<F> {
    Absent,
    Cached(Entry),
    /// To be read from the journal file; read into `cache` too.
    OnDisk {
        file: Arc<F>,
        cache: Arc<cache::ValueCache>,
        slot: index::Slot,
    },
}

fn lookup<F: VfsFile>(index: &Index<F>, key: &Key) -> Lookup<F> {
    let Some(slot) = index.get(&pack(key.segments())) else {
        return Lookup::Absent;
    };
    match index.cache().get(slot.at) {
        Some(value) => Lookup::Cached(Entry::new(value, slot.version)),
        None => Lookup::OnDisk {
            file: index.file().clone(),
            cache: index.cache().clone(),
            slot,
        },
    }
}

impl<F: VfsFile> Lookup<F> {
    /// The entry, read from the journal (at `path`) if it must be. Called
    /// without the index's lock: writers do not wait for the disk, and the
    /// file stays open however the index changes meanwhile.
    fn read(self, path: &Path) -> Result<Option<Entry>> {
        match self {
            Lookup::Absent => Ok(None),
            Lookup::Cached(entry) => Ok(Some(entry)),
            Lookup::OnDisk { file, cache, slot } => {
                let value = index::read_value(&*file, slot, path)?;
                cache.insert(slot.at, value.as_slice());
                Ok(Some(Entry::new(value, slot.version)))
            }
        }
    }
}

impl<V: Vfs> Store for LogStore<V> {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        trace::store_call(trace::Backend::LOG, "get", key, || {
            let found = lookup(&*self.shared.fresh_index()?, key);
            found.read(&self.shared.journal_path)
        })
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        trace::store_call(trace::Backend::LOG, "put", key, || {
            // Before the copy below.
            Entry::check_value(key, value)?;
            let op = BatchOp::Put {
                key: key.clone(),
                value: value.to_vec(),
                expect,
            };
            match self.commit(vec![op])?.first() {
                Some(Applied::Put(version)) => Ok(*version),
                _ => Err(unexpected(&self.shared.journal_path)),
            }
        })
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        trace::store_call(trace::Backend::LOG, "delete", key, || {
            let op = BatchOp::Delete {
                key: key.clone(),
                expect,
            };
            match self.commit(vec![op])?.first() {
                Some(Applied::Deleted(existed)) => Ok(*existed),
                _ => Err(unexpected(&self.shared.journal_path)),
            }
        })
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        trace::store_call(trace::Backend::LOG, "list", prefix, || {
            check_limit(limit)?;
            self.shared.fresh_index()?.list(prefix, after, limit)
        })
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        trace::store_call(trace::Backend::LOG, "apply", batch, || {
            batch.validate()?;
            // Checked before the copy a commit takes.
            check_size(batch.ops())?;
            self.commit(batch.ops().to_vec())
        })
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        trace::store_call(trace::Backend::LOG, "quarantine", key, || {
            // The delete below would be refused: write no copy beside a live record.
            if self.is_poisoned() {
                return Err(self.shared.poisoned_error());
            }
            let dir = self.shared.root.join(QUARANTINE);
            loop {
                let Some(entry) = self.get(key)? else {
                    return Ok(None);
                };
                let vfs = self.shared.writer.vfs();
                self.shared.ensure_quarantine_dir(&dir)?;
                let stem = format!("v{}-{}", entry.version.get(), uuid::Uuid::new_v4().simple());
                // The key first, so that a value found there always says
                // whose it was (a key file alone is what a crash between
                // the two can leave).
                let key_path = dir.join(format!("{stem}.key"));
                self.shared.writer.write(&key_path, &key_file(key))?;
                let path = dir.join(format!("{stem}.record"));
                self.shared.writer.write(&path, &entry.value)?;
                match self.delete(key, Expect::Version(entry.version)) {
                    Ok(_) => {
                        return Ok(Some(Quarantined {
                            key: key.clone(),
                            location: path.display().to_string(),
                        }));
                    }
                    Err(e) if e.is_conflict() => {
                        // Changed meanwhile: move aside what is there now instead.
                        let _ = vfs.remove_file(&path);
                        let _ = vfs.remove_file(&key_path);
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }

    /// `true`: the journal is taken to be on a filesystem of this machine. A
    /// directory on a network filesystem that several machines mount breaks this
    /// promise.
    fn is_machine_local(&self) -> bool {
        true
    }

    /// In shared mode on Linux: tells of other writers' frames once a thread
    /// of this process, woken by the kernel (inotify) when the store's
    /// directory changes, has read them into this handle's index (or of
    /// every change, when another process replaced the journal). `None` in
    /// exclusive mode, where nobody else writes, elsewhere than on Linux, and
    /// when the kernel refuses a watch (its inotify limits reached).
    fn changes_by_others(&self, prefix: &Prefix) -> Option<Changes> {
        if self.shared.is_exclusive() {
            return None;
        }
        // Registered first: a write after the watch is set up is told.
        let changes = self.shared.changes.watch(prefix);
        // Without a watching thread (no inotify here, or none to be had) the
        // store cannot tell.
        notify::watch_journal(&self.shared).then_some(changes)
    }

    // The async face's writes join the group commit as futures: one thread
    // of the crate's pool flushes for a whole group of them, and wakes each
    // caller's task (see `group`). A get goes through the pool as the
    // provided methods do, since its value is read from the journal file. A
    // list reads only the index: in exclusive mode it is answered inline.

    #[cfg(feature = "async")]
    fn get_async(&self, key: &Key) -> impl Future<Output = Result<Option<Entry>>> + Send + 'static
    where
        Self: Clone + 'static,
    {
        let (store, key) = (self.clone(), key.clone());
        async move {
            if store.shared.is_exclusive() {
                // Invariant relied on: in exclusive mode, a key absent from
                // the index or a value in the cache is answered without a
                // system call (`fresh_index` checks nothing), so it cannot
                // block the polling thread. Only a value read from the
                // journal goes to the pool.
                match lookup(&store.shared.index.read(), &key) {
                    Lookup::Absent => return Ok(None),
                    Lookup::Cached(entry) => return Ok(Some(entry)),
                    Lookup::OnDisk { .. } => {}
                }
            }
            crate::pool::run(move || store.get(&key)).await
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
        let (store, prefix, after) = (self.clone(), prefix.clone(), after.cloned());
        async move {
            if store.shared.is_exclusive() {
                // Invariant relied on: in exclusive mode a list makes no
                // system call (`fresh_index` checks nothing, and keys are held
                // in the index, in memory), so it cannot block the polling
                // thread.
                store.list(&prefix, after.as_ref(), limit)
            } else {
                crate::pool::run(move || store.list(&prefix, after.as_ref(), limit)).await
            }
        }
    }

    #[cfg(feature = "async")]
    fn native_async(&self) -> Option<&dyn crate::store::native::NativeAsync> {
        Some(self)
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
        let valid = Entry::check_value(key, &value);
        let op = BatchOp::Put {
            key: key.clone(),
            value,
            expect,
        };
        let committing = self.commit_async(vec![op]);
        let path = self.shared.journal_path.clone();
        trace::store_call_async(trace::Backend::LOG_ASYNC, "put", key.clone(), async move {
            valid?;
            match committing?.await?.first() {
                Some(Applied::Put(version)) => Ok(*version),
                _ => Err(unexpected(&path)),
            }
        })
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
        let op = BatchOp::Delete {
            key: key.clone(),
            expect,
        };
        let committing = self.commit_async(vec![op]);
        let path = self.shared.journal_path.clone();
        trace::store_call_async(
            trace::Backend::LOG_ASYNC,
            "delete",
            key.clone(),
            async move {
                match committing?.await?.first() {
                    Some(Applied::Deleted(existed)) => Ok(*existed),
                    _ => Err(unexpected(&path)),
                }
            },
        )
    }

    #[cfg(feature = "async")]
    fn apply_async(
        &self,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Applied>>> + Send + 'static
    where
        Self: Clone + 'static,
    {
        let valid = batch.validate();
        let subject = batch.ops().first().map(|op| op.key().clone());
        let committing = self.commit_async(batch.ops().to_vec());
        trace::store_call_async(trace::Backend::LOG_ASYNC, "apply", subject, async move {
            valid?;
            committing?.await
        })
    }
}

#[cfg(feature = "async")]
impl<V: Vfs> LogStore<V> {
    /// `ops` as a commit of the async face, checked for size first. Unlike
    /// the blocking face's, a precondition that already fails is found by
    /// the commit itself, not by a read before it: a read is file I/O, and
    /// the async face does none on the caller's thread.
    fn commit_async(&self, ops: Vec<BatchOp>) -> Result<commit::Committing<V>> {
        check_size(&ops)?;
        Ok(commit::Committing::new(Arc::clone(&self.shared), ops))
    }
}

const MAX_TRANSACTION_BYTES: usize = LogStore::MAX_TRANSACTION_BYTES;

/// Refuses a transaction too large for one frame, before anything is written.
fn check_size(ops: &[BatchOp]) -> Result<()> {
    let bytes: usize = ops
        .iter()
        .map(|op| {
            let key: usize = op.key().segments().iter().map(|s| s.len() + 1).sum();
            let value = match op {
                BatchOp::Put { value, .. } => value.len(),
                BatchOp::Delete { .. } => 0,
            };
            // Tag, version and two lengths.
            17 + key + value
        })
        .sum();
    if bytes > MAX_TRANSACTION_BYTES {
        return Err(Error::too_large(
            "LogStore transaction",
            None,
            bytes,
            MAX_TRANSACTION_BYTES,
        ));
    }
    Ok(())
}

fn unexpected(path: &Path) -> Error {
    Error::Io {
        step: steps::COMMIT,
        path: path.to_path_buf(),
        source: std::io::Error::other("a single-op commit returned no result for its op"),
    }
}
