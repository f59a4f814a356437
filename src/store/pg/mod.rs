//! The shared store: records in a PostgreSQL table, for services that run on
//! several machines.
//!
//! The work is asynchronous underneath ([`ops`] on one connection); [`Shared`]'s
//! methods make a whole call of it, checking a connection out of the pool and
//! driving it on the calling thread until the answer arrives (see
//! [`conn::Driver`]).

#[cfg(feature = "async")]
mod async_face;
mod clock;
mod conn;
mod failure;
mod fence;
#[cfg(test)]
mod late_writes;
mod listen;
mod ops;
mod pool;
mod runtime;
mod schema;
mod session;
mod sql;
mod ssl_options;
#[cfg(feature = "postgres-tls")]
mod tls;
mod transport;
mod within;

use std::fmt;
#[cfg(feature = "async")]
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

pub use self::clock::PgClock;
use self::conn::{CallBound, Conn, Connector, Link, Linked, Session, later, server_name};
pub(crate) use self::failure::may_land_later;
use self::failure::{deadline_passed, unfenced};
use self::listen::Listener;
#[cfg(feature = "async")]
pub(crate) use self::ops::Async as AsyncClient;
use self::ops::Ctx;
use self::pool::{Pool, Pooled};
use self::session::Limits;
use self::sql::{Names, Sql};
pub(crate) use self::within::BlockingClient;
use crate::durability::Durability;
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::store::{
    Applied, Batch, Changes, Entry, Expect, ListPage, Quarantined, Store, Version, check_limit,
};
use crate::trace;

/// A [`Store`] in a PostgreSQL table: one ledger, one set of locks and one set of
/// jobs shared by many processes on many machines.
///
/// Use it when the embedded stores no longer serve: when more than one machine
/// must see the same records. Every jobsafe component runs on it unchanged; give
/// them a [`PgClock`] too, so that every lease, TTL and retention decision reads
/// the server's clock and the machines' clock skew cannot matter.
///
/// Available with the cargo feature `postgres`; over TLS with
/// `postgres-tls` (see "TLS" below).
///
/// # Design
///
/// ```text
/// schema.jobsafe_schema        migrations applied, per store table
/// schema.table                 id bytea primary key  (SHA-256 of the key)
///                              key bytea             (segments joined by NUL)
///                              version bigint        (from the sequence below)
///                              value bytea
///                              sum bytea             (SHA-256 of version, key, value)
///                              index on the key's first 1024 bytes, for listing
/// schema.table_versions        sequence: every version of every key
/// schema.table_quarantine      rows moved aside by `quarantine`
/// ```
///
/// - **Compare-and-set in one statement.** Each write states its precondition in
///   its `WHERE` or `ON CONFLICT` clause and takes its version from one sequence
///   in the same statement, under `READ COMMITTED` (set on every connection):
///   the row lock serializes writers of one key across every machine. A write
///   that changed nothing reads the row to report the [`Error::Conflict`] with
///   the current version.
/// - **Versions are never reused.** They come from one sequence for the whole
///   table, which never hands out a number twice, so a key deleted (or
///   quarantined) and created again always gets a newer version.
/// - **Batches** run in one transaction, their rows locked in key order so that
///   two batches never deadlock.
/// - **Listing** walks an index on the keys in byte order, which is key order
///   (segments joined by NUL, which sorts below every other byte).
/// - **Damage.** Every row carries a checksum, checked on every read, and no write
///   touches a row whose checksum does not match: a row edited outside jobsafe
///   or damaged is [`Error::Corrupt`], never overwritten, until
///   [`quarantine`](Store::quarantine) moves it to the quarantine table.
/// - **Connections** come from a pool of the store's own; checking one out costs
///   no round trip. A connection the server closed while it sat unused (an
///   idle session ended, a restart) is noticed at check-out, from what already
///   arrived on its socket, and replaced. A call whose connection dies under
///   it fails with a transient [`Error::Database`], and the pool checks the
///   connections made before it on the calls after it.
/// - **Threads.** The client is asynchronous ([`tokio-postgres`]). Each pooled
///   connection has a single-threaded runtime of its own, which the thread that
///   holds the connection drives for the length of its call: the calling thread
///   writes the request, waits on the socket and reads the answer itself, with no
///   hand-off to another thread (as the blocking `postgres` client does). So a
///   call blocks the calling thread until its answer arrives, as a file read
///   does. It may be called from any thread, a thread of your own tokio runtime
///   included, where it never panics: on a thread where a tokio runtime is
///   current (a worker, `block_on`, and `spawn_blocking` too, which tokio does
///   not let a library tell apart), driving another runtime is forbidden:
///   there the call is made by the async face (below) on the background
///   thread's runtime while that thread waits, or, in a build without the
///   feature `async`, on a short-lived thread of its own, which costs a
///   thread start per call (`get`, `put`, `delete`, `list` and `apply`; a
///   quarantine and a reading of the server's clock always do). In async
///   code, use the async face, which blocks nothing. One background thread,
///   started on first use for the process, sends the cancel requests of
///   abandoned calls and ends the sessions of unanswered writes.
/// - **The async face** (feature `async`: [`get_async`](Store::get_async),
///   [`put_async`](Store::put_async), ...) is native: each call is a task of
///   the multi-threaded runtime it is awaited on, on connections whose bytes
///   that runtime's tasks move, so a call holds no thread while it waits for
///   a connection or an answer (the provided `*_async` of other stores hold a
///   thread of the crate's [pool](crate::pool) for the call). The runtime
///   must have I/O and time enabled, as `#[tokio::main]` does. Awaited on a
///   current-thread runtime (which runs tasks only inside its `block_on`, so
///   that a connection of its own could stall between calls) or outside any
///   tokio runtime, a call runs on the background thread's runtime. Its
///   bounds, its fence and its errors are the blocking face's; a write whose
///   task ended unanswered (its runtime shut down under it) says that it may
///   still land. Both faces share the pool's
///   [`pool_size`](PgStoreBuilder::pool_size), but not connections: when
///   every slot is taken, a call of one face closes an idle connection of the
///   other's for its slot only if none of its own face's is busy (one that
///   is will soon be free). A connection belongs to the runtime that made it
///   and is replaced at its next check-out once that runtime has shut down.
///   Once begun, an async call runs to its end, within its deadline, even if
///   its future is dropped: a write that lost its answer is still fenced.
///   The managers' async handles ([`AsyncJobState`](crate::jobs::AsyncJobState),
///   ...) call the blocking face on the crate's pool: their logic is written
///   once, for both faces.
/// - **Migrations** are versioned in `jobsafe_schema` and run on open, only
///   when one is due: `open` first reads the recorded version and checks that
///   the tables exist, taking no lock. A due migration runs in one transaction
///   under an advisory lock of its schema and table (stores of other tables
///   never wait for it), waited for at most
///   [`migration_lock_timeout`](PgStoreBuilder::migration_lock_timeout):
///   idempotent, and safe when many processes start at once.
///
/// [`tokio-postgres`]: https://docs.rs/tokio-postgres
///
/// # Change notifications
///
/// Every row of a job's record (a key with a segment `job`:
/// `<namespace>/job/<id>`; a job's every change, an event appended included,
/// rewrites its record) written, changed or deleted notifies the table's channel (`NOTIFY`, from
/// triggers of schema version 2) as its transaction commits, whoever writes
/// it: this store's sessions, other machines', or an application's own
/// transaction; a rollback notifies nothing. The payload names the writing
/// handle (each handle's sessions log in with a `jobsafe.writer` setting of
/// their own) and the key, so that each handle is told only of others'
/// writes, and only watchers of a prefix above the key are told (a key
/// longer than 3000 bytes is named by its start, and every watcher is
/// told). The channel is `jobsafe:<schema>.<table>`, or `jobsafe:` and a
/// digest of the two when that is longer than 63 bytes.
///
/// Other rows (locks, reservations, schedules, your own records) notify
/// nobody, and [`changes_by_others`](Store::changes_by_others) does not tell
/// of them: the server serializes the commits of transactions that notify
/// (each holds a database-wide lock through its commit's flush), which would
/// cost every write its group commit. A key of another kind that happens to
/// have a `job` segment notifies too, needlessly.
///
/// [`changes_by_others`](Store::changes_by_others) listens on a connection
/// of its own, outside the pool and not counted in
/// [`pool_size`](PgStoreBuilder::pool_size), opened by a task of the
/// process's background thread once a handle is first watched, and closed
/// within a second of the last watch's drop (or once a check under way is
/// answered). Each time it starts listening,
/// after a lost connection too, it tells every watcher, since what changed
/// while nobody listened is unknown. A connection that cannot be made is
/// tried again after 1 s, doubling to 30 s (as is one lost again before a
/// check period passed), and the first failure of a streak is reported as a
/// `tracing` warning: meanwhile other writers' changes are
/// found only by polling (a [`Runner`](crate::pipeline::Runner)'s
/// `poll_every`, a follower's period). A silent connection is found by its
/// TCP keepalives, and by a query every
/// [`listen_check`](PgStoreBuilder::listen_check). Behind a proxy that
/// pools connections by transaction, which cannot keep a `LISTEN`, turn it
/// off with [`listen(false)`](PgStoreBuilder::listen).
///
/// Notifications cost the writers of jobs: a trigger runs for each such row,
/// and their commits are serialized with each other. And they depend on the
/// server's notification queue: if it fills (8 GB by default, when a
/// session somewhere in the cluster listens and stops reading), every
/// transaction that writes a job fails at its commit until it drains.
/// Writers in `session_replication_role = replica` (logical replication's
/// apply workers, some bulk loaders) fire no triggers, and notify nobody.
///
/// # Transactions of your own
///
/// A job created, a charge reserved or a lock taken in the same commit as
/// your own rows, so that neither exists without the other:
/// [`JobState::create_in`](crate::JobState::create_in),
/// [`Pipeline::enqueue_in`](crate::Pipeline::enqueue_in),
/// [`JobLedger::reserve_in`](crate::JobLedger::reserve_in) (and
/// `reserve_pending_in`) and [`JobLock::acquire_in`](crate::JobLock::acquire_in),
/// on managers over a `PgStore` or an `Arc` of one.
///
/// They run the managers' own bodies (the same decisions, checks and records
/// as [`JobState::create`](crate::JobState::create),
/// [`JobLedger::reserve`](crate::JobLedger::reserve) and
/// [`JobLock::acquire`](crate::JobLock::acquire)), with each store call
/// made on the application's transaction instead of a connection of the
/// store's pool. What that changes:
///
/// - **Nothing is visible before the application commits**, and nothing is
///   kept if it rolls back. Other processes hear of the new records at the
///   commit, through the table's notifications (see "Change notifications"
///   above): a [`Runner`](crate::pipeline::Runner) on any machine, this
///   process's included, wakes for a job created this way once it is
///   committed (with [`listen(false)`](PgStoreBuilder::listen), at its next
///   poll).
/// - **The application's transaction holds jobsafe's row locks until it
///   ends**: the records written, and the advisory lock each writer of a key
///   takes. Another writer of the same job or reservation (a second request
///   with the same id, a worker) waits for the commit or the rollback, up to
///   its own `lock_timeout`. Keep such transactions short.
/// - **Bounds are the application's session's**: the store's call
///   deadline and timeouts do not apply to the application's connection.
/// - **Run the transaction at `READ COMMITTED`**, PostgreSQL's default, as
///   the store's own sessions do: jobsafe's statements rely on it. At
///   `REPEATABLE READ` or `SERIALIZABLE`, a concurrent writer of the same
///   record makes a statement fail with a serialization error (SQLSTATE
///   40001), an error from the server as below.
/// - **An error from the server** (a lock or statement timeout, a lost
///   connection, a serialization failure) aborts the application's
///   transaction, as any failed statement does. It is returned as an
///   [`Error::Database`] that is not transient, whatever its cause: the
///   call cannot be repeated in that transaction. Roll it back, and repeat
///   the whole transaction. A
///   refused write that is jobsafe's decision (an id taken by another job, a
///   reservation with another fingerprint) is an error that leaves the
///   transaction usable (a lock found held is an answer, not an error, and
///   leaves it usable too): jobsafe checks its preconditions in its statements
///   and in a savepoint, never by a failing statement.
/// - **Whether the commit landed** is the application's to learn, as for its
///   own rows. A create, reserve or acquire repeated with the same
///   [`attempt`](crate::jobs::NewJob::attempt) id after a lost commit finds
///   its own record (and answers as it did), or writes it then.
/// - **A lock is the caller's only from the commit on**: `acquire_in` gives
///   a [`LockInTransaction`](crate::lock::LockInTransaction), not a guard;
///   after the commit, its `committed` gives the guard, whose renewals and
///   release run on the store's own connections.
/// - **An async call dropped before it completes** (a timeout around it, a
///   cancelled request) leaves no half of a batch: a job's record and its
///   entry in the index of open jobs are written in a savepoint, which is
///   rolled back, after the statement in flight, if the call's future is
///   dropped between them. A single statement in flight when the future is
///   dropped still runs, so the call's write may or may not be in the
///   transaction: roll it back, or repeat the call in it with the same
///   attempt id, which finds its own record. Run nothing else on the
///   transaction while a jobsafe call on it is under way (a `select!` of
///   two futures on one transaction, say): the rollback of a dropped
///   call's savepoint undoes whatever ran inside it, your statements
///   included.
///
/// The blocking methods take any [`postgres::GenericClient`] (a
/// `postgres::Transaction`, on a thread where no tokio runtime is current,
/// as that client requires); the async ones, on
/// [`AsyncJobState`](crate::jobs::AsyncJobState),
/// [`AsyncPipeline`](crate::pipeline::AsyncPipeline),
/// [`AsyncJobLedger`](crate::ledger::AsyncJobLedger) and
/// [`AsyncJobLock`](crate::lock::AsyncJobLock), any
/// [`tokio_postgres::GenericClient`] (a `tokio_postgres::Transaction`), and
/// hold no thread while they wait. Given a client outside a transaction, each
/// statement commits on its own, as the store's own calls would: the job or
/// reservation is written at once, with none of the above. sqlx is not
/// supported.
///
/// # Guarantees
///
/// The whole [`Store`] contract, across processes and machines. With
/// [`Durability::Full`] (the default) every connection sets
/// `synchronous_commit = on`: a write that returned `Ok` was flushed to the
/// server's disk (and to its synchronous standbys, if it has any), whatever the
/// server's default.
///
/// No call waits without a bound: a silent network, a lock held by another
/// session and a transaction left open by a client that went silent each end
/// within a bound set on the builder (see [`PgStoreBuilder`], "Bounded waits"),
/// with a transient [`Error::Database`] that names it.
///
/// # Limitations
///
/// - A write that fails with a transient error (the connection dropped after the
///   request was sent, or the call deadline passed) may or may not have been
///   committed: the error says the answer was lost, not the change. Re-read
///   before repeating it, or repeat it as a compare-and-set, which reports a
///   conflict if the first one landed.
/// - Without the feature `postgres-tls` connections are not encrypted: use it
///   on a trusted network or through a local tunnel (see "TLS" below).
/// - Keys longer than 1024 bytes that share their first 1024 bytes are ordered
///   by a sort after the index scan: correct, but slower to list.
///
/// # TLS
///
/// With the cargo feature `postgres-tls`, connections use TLS (rustls) as the
/// URL's `sslmode` and `sslrootcert` ask, with libpq's meanings. Use
/// `sslmode=verify-full` with `sslrootcert` naming the PEM file of the CA
/// that issued the server's certificate: only that mode checks that the
/// server is the one named in the URL.
///
/// | `sslmode` | encrypted | the server's certificate |
/// |---|---|---|
/// | `disable` | no | - |
/// | `prefer` (the default) | if the server offers TLS; after a refused handshake the connection is made again in clear, as libpq does | as `require` |
/// | `require` | yes, or no connection | not checked; with `sslrootcert`, its chain is (libpq's rule), as `verify-ca` |
/// | `verify-ca` | yes | its chain leads to a root of `sslrootcert`; any host name |
/// | `verify-full` | yes | as `verify-ca`, and it names the host of the URL (a DNS name, or an IP address for a host given as one) |
///
/// - `sslrootcert` is a PEM file of trusted roots, or `system` for the
///   system's trusted roots (libpq 16: it makes `verify-full` the default and
///   refuses a weaker mode). `verify-ca` and `verify-full` need it: PgStore
///   reads no root file it was not named (libpq also looks for
///   `~/.postgresql/root.crt`), and an unreadable or malformed one fails
///   [`open`](PgStoreBuilder::open) with an error naming it.
/// - `sslsni=0` sends no host name in the handshake. `sslmode=allow` and
///   client certificates (`sslcert`, `sslkey`) are not supported, nor are
///   revocation lists; `open` refuses them by name. Environment variables
///   (`PGSSLMODE`, ...) are not read.
/// - A login by password is bound to the server's certificate
///   (`SCRAM-SHA-256-PLUS`) when the server offers it; `channel_binding=require`
///   in the URL refuses a login that is not.
/// - On Unix sockets TLS is never used, whatever the mode, as in libpq.
/// - A handshake refused on its merits (an unknown issuer, a host name the
///   certificate does not hold, no TLS on the server with `require` or
///   above) is an [`Error::Database`] that is not transient, whose message
///   says why; cancel requests use the same TLS settings as the connection.
///
/// Without the feature, `disable` and `prefer` connect in clear, and any
/// option that needs TLS (`require`, `verify-ca`, `verify-full`,
/// `sslrootcert`) is refused at [`open`](PgStoreBuilder::open) with an
/// [`Error::InvalidArgument`] naming the feature, rather than connecting
/// less safely than the URL asks.
///
/// ```no_run
/// # #[cfg(feature = "postgres-tls")]
/// # fn main() -> jobsafe::Result<()> {
/// use jobsafe::PgStore;
///
/// let store = PgStore::open(
///     "postgres://jobsafe:secret@db.internal:5432/jobsafe\
///      ?sslmode=verify-full&sslrootcert=/etc/jobsafe/db-ca.pem",
/// )?;
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "postgres-tls"))]
/// # fn main() {}
/// ```
///
/// ```no_run
/// use jobsafe::{Expect, JobLock, Key, PgStore, Store};
/// use jobsafe::lock::LockRequest;
/// use jobsafe::store::PgClock;
/// use std::{sync::Arc, time::Duration};
///
/// let store = PgStore::builder("postgres://jobsafe:secret@db.internal/jobsafe")
///     .table("relay_state")
///     .open()?;
/// let key = Key::new(["ledger", "lic:abc123", "job-42"])?;
/// store.put(&key, br#"{"charged":true}"#, Expect::Absent)?;
///
/// // Leases decided by the server's clock, whatever the machines' clocks say.
/// let clock = PgClock::new(&store)?;
/// let locks = JobLock::new(store.clone(), Arc::new(clock));
/// let _ = locks.acquire(&Key::new(["reindex", "vault-1"])?, Duration::from_secs(30), &LockRequest::new())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

/// What every handle of one store shares; its methods make each call, on the
/// calling thread: check a connection out, drive the operation on it, put the
/// connection back (or fence an unanswered write).
struct Shared {
    pool: Pool,
    sql: Arc<Sql>,
    server: String,
    names: Names,
    /// The process's runtime, for fences.
    background: Handle,
    /// The bound on each call, from its start to its answer.
    deadline: Duration,
    /// Hears other writers (`changes_by_others`); `None` if turned off.
    listener: Option<Arc<Listener>>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("server", &self.shared.server)
            .field("table", &self.shared.names.shown())
            .finish_non_exhaustive()
    }
}

/// Options for opening a [`PgStore`]. Available with the cargo feature
/// `postgres`.
///
/// # Bounded waits
///
/// No call waits without a bound, whatever the network or the other sessions
/// do. Each bound below is a setting with a safe default; none can be turned
/// off (a zero is taken as the smallest bound, 1 ms or 1 s).
///
/// | bound | ends | default |
/// |---|---|---|
/// | [`call_timeout`](Self::call_timeout) | a whole call, whatever it waits for: the query is cancelled, the connection closed | 30 s |
/// | [`connect_timeout`](Self::connect_timeout) | making a connection, or waiting for a pooled one to be free | 10 s |
/// | [`statement_timeout`](Self::statement_timeout) | a statement, on the server | 20 s |
/// | [`lock_timeout`](Self::lock_timeout) | a wait for a row another session is writing, on the server | 10 s |
/// | [`idle_in_transaction_timeout`](Self::idle_in_transaction_timeout) | a batch whose client went silent midway, holding its row locks: the server rolls it back | 10 s |
/// | [`migration_lock_timeout`](Self::migration_lock_timeout) | `open`'s wait for another process migrating the same table; the error names it | 30 s |
/// | [`keepalives`](Self::keepalives), [`tcp_user_timeout`](Self::tcp_user_timeout) | a connection to a machine that vanished without a reset, seen from either end | 10 s + 3 × 5 s; 30 s |
///
/// Each ends the call with a transient [`Error::Database`] that says which
/// bound it was. The server-side settings are sent at login (in the startup
/// `options`, after any the URL gives, so these win) and checked once at
/// [`open`](Self::open): a connection pooler between the store and the server
/// must pass them through.
///
/// # A write that fails
///
/// A write whose connection broke or went silent before the server answered
/// may still be alive on the server (waiting for a row, or its request not yet
/// read). Before such a failure is returned, the store ends that session on
/// the server from another connection (`pg_terminate_backend`, PostgreSQL 14
/// or later): once the caller sees the error, the write has either landed or
/// never will, so a re-read tells which. A write's call stays within
/// `call_timeout`: the write gets half of it to be answered, the rest is kept
/// for ending its session. If the session cannot be ended (the
/// server unreachable), the error says that the write may still land, and a
/// manager's call that made it (a reserve, an acquire, a job write) ends in
/// [`Error::Ambiguous`](crate::Error::Ambiguous), whatever fails or is found
/// after it, unless a read shows a state the write can no longer land on: a
/// write made on a version cannot once the record moved past it, but one
/// made on absence can whenever the key is absent again. A failure the
/// server reported needs none of this: its transaction is over.
///
/// ```no_run
/// use std::time::Duration;
/// use jobsafe::{Durability, PgStore};
///
/// let store = PgStore::builder("postgres://jobsafe:secret@127.0.0.1:5432/jobsafe")
///     .schema("jobsafe")
///     .table("records")
///     .pool_size(16)
///     .connect_timeout(Duration::from_secs(5))
///     // Every wait is bounded; these are the defaults.
///     .call_timeout(Duration::from_secs(30))
///     .statement_timeout(Duration::from_secs(20))
///     .lock_timeout(Duration::from_secs(10))
///     .idle_in_transaction_timeout(Duration::from_secs(10))
///     .keepalives(Duration::from_secs(10), Duration::from_secs(5), 3)
///     .tcp_user_timeout(Duration::from_secs(30))
///     .durability(Durability::Full)
///     .open()?;
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Clone)]
pub struct PgStoreBuilder {
    url: String,
    schema: String,
    table: String,
    pool_size: u32,
    limits: Limits,
    durability: Durability,
    listen: bool,
    listen_check: Duration,
}

impl fmt::Debug for PgStoreBuilder {
    /// Names the server as errors do, never the URL: it may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parsed = ssl_options::split(&self.url).ok().and_then(|conn| {
            let config = conn.rest.parse::<tokio_postgres::Config>().ok()?;
            Some((conn::server_name(&config), conn.ssl.mode.name()))
        });
        let (server, sslmode) = parsed.unwrap_or(("(a URL that does not parse)".to_owned(), "?"));
        f.debug_struct("PgStoreBuilder")
            .field("server", &server)
            .field("sslmode", &sslmode)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("pool_size", &self.pool_size)
            .field("limits", &self.limits)
            .field("durability", &self.durability)
            .field("listen", &self.listen)
            .field("listen_check", &self.listen_check)
            .finish()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`
    /// or `host=... user=...`), creates or migrates the store's tables, and
    /// returns the store, with the defaults of [`PgStore::builder`].
    ///
    /// The URL's `sslmode` and `sslrootcert` say how the connections are
    /// secured (see [`PgStore`], "TLS"): in production, with the feature
    /// `postgres-tls`, `?sslmode=verify-full&sslrootcert=/path/to/ca.pem`.
    ///
    /// # Errors
    /// As [`PgStoreBuilder::open`].
    pub fn open(url: &str) -> Result<Self> {
        PgStore::builder(url).open()
    }

    /// Options for the store in the database at `url`.
    pub fn builder(url: &str) -> PgStoreBuilder {
        PgStoreBuilder {
            url: url.to_owned(),
            schema: "public".to_owned(),
            table: "jobsafe_records".to_owned(),
            pool_size: 8,
            limits: Limits::DEFAULT,
            durability: Durability::Full,
            listen: true,
            listen_check: Duration::from_secs(30),
        }
    }

    /// The server, as errors name it: `host:port/database`.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// The records table, as `schema.table`.
    pub fn table(&self) -> String {
        self.shared.names.shown()
    }
}

impl PgStoreBuilder {
    /// The schema holding the store's tables, created if missing. Default:
    /// `public`. Lowercase ASCII letters, digits and `_`, not starting with a
    /// digit, at most 40 bytes.
    pub fn schema(mut self, schema: &str) -> Self {
        schema.clone_into(&mut self.schema);
        self
    }

    /// The records table; the store also creates `<table>_versions` and
    /// `<table>_quarantine`. Default: `jobsafe_records`. Same rules as
    /// [`schema`](PgStoreBuilder::schema). Stores with different tables are
    /// independent, in one schema or several.
    pub fn table(mut self, table: &str) -> Self {
        table.clone_into(&mut self.table);
        self
    }

    /// The most connections this store holds open at once; calls beyond it wait
    /// for one to be free. Default: 8. Connections are opened when first needed
    /// and closed after 10 minutes unused.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long making a connection may take (the TCP connection, the login,
    /// preparing the store's statements), and how long a call waits for a
    /// pooled connection to be free; either ends the call with a transient
    /// [`Error::Database`]. Default: 10 s. A `connect_timeout` in the URL
    /// bounds each TCP connection attempt within it.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.limits.connect = timeout.max(Duration::from_millis(1));
        self
    }

    /// The deadline of each call (`get`, `put`, `apply`, ...), from its start
    /// to its answer, whatever it waits for: a free connection, a new one, a
    /// reply, a lock. When it passes, the call's statement is cancelled, its
    /// connection closed, and the call fails with a transient
    /// [`Error::Database`] that names the deadline; a write may or may not
    /// have landed. Default: 30 s.
    ///
    /// This is the bound that turns a silent network (a partition, a server
    /// that stopped answering) into an error for a call that waits for a
    /// reply: the TCP timeouts below notice it too, but later, and only while
    /// data is unanswered.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.limits.call = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long one statement may run on the server (`statement_timeout`)
    /// before the server cancels it; the call then fails with a transient
    /// error (SQLSTATE 57014). Default: 20 s, under the call deadline, so that
    /// a slow call usually fails with the server's reason.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.limits.statement = timeout;
        self
    }

    /// How long a statement waits for a lock another session holds
    /// (`lock_timeout`), such as a row a batch on another machine is writing;
    /// the call then fails with a transient error (SQLSTATE 55P03). Default:
    /// 10 s.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.limits.lock = timeout;
        self
    }

    /// How long the server keeps a transaction open while its client sends
    /// nothing (`idle_in_transaction_session_timeout`): a batch whose client
    /// died or went silent midway holds its row locks no longer than this,
    /// then the server ends its session and rolls it back. A store's batches
    /// never pause between their statements, so this bound can be short.
    /// Default: 10 s.
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.limits.idle_in_transaction = timeout;
        self
    }

    /// How long `open` waits for another process that is migrating the
    /// store's table (only when a migration is due: opening an up-to-date
    /// store takes no lock). When the wait ends, `open` fails with a
    /// transient [`Error::Database`] that names the process holding the
    /// migration lock (its server process id, `application_name`, user and
    /// address). Default: 30 s.
    pub fn migration_lock_timeout(mut self, timeout: Duration) -> Self {
        self.limits.migration_lock = timeout;
        self
    }

    /// TCP keepalives on every connection, at the store's end and (through the
    /// session's settings) at the server's: after `idle` without traffic, a
    /// probe every `interval`, and the connection is given up after `retries`
    /// probes without an answer. A connection to a machine that vanished
    /// without a reset is then found dead within about
    /// `idle + interval × retries` instead of the systems' default of over two
    /// hours, so that the server frees the session and its connection slot.
    /// Default: 10 s, 5 s, 3. Ignored on Unix sockets.
    pub fn keepalives(mut self, idle: Duration, interval: Duration, retries: u32) -> Self {
        self.limits.keepalive_idle = idle;
        self.limits.keepalive_interval = interval;
        self.limits.keepalive_retries = retries.max(1);
        self
    }

    /// How long data sent on a connection may stay unacknowledged before the
    /// connection is given up (`TCP_USER_TIMEOUT`, on Linux; at both ends, as
    /// [`keepalives`](Self::keepalives)). Default: 30 s. Ignored on Unix
    /// sockets and where the system lacks it.
    pub fn tcp_user_timeout(mut self, timeout: Duration) -> Self {
        self.limits.tcp_user_timeout = timeout;
        self
    }

    /// What a write survives once it returns. Default: [`Durability::Full`]
    /// (`synchronous_commit = on`). **[`Durability::AtomicOnly`] sets
    /// `synchronous_commit = off`: a server crash loses the writes acknowledged
    /// in the last moments before it** (never a part of a batch): for tests and
    /// benchmark set-up only.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Whether the store listens for other writers' changes
    /// ([`Store::changes_by_others`], through `LISTEN`/`NOTIFY` on a
    /// connection of its own, outside the pool). Default: `true`. Turn it
    /// off behind a proxy that pools connections by transaction (PgBouncer
    /// in `transaction` mode), which cannot keep a `LISTEN`: then
    /// `changes_by_others` answers `None`, and runners and subscriptions
    /// poll. Writes notify either way (see [`PgStore`], "Change
    /// notifications").
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// How often the listening connection is asked a query, to find a
    /// connection that went silent where the TCP keepalives cannot (a proxy
    /// that keeps the socket open but forwards nothing). Default: 30 s; at
    /// least 1 s.
    pub fn listen_check(mut self, every: Duration) -> Self {
        self.listen_check = every.max(Duration::from_secs(1));
        self
    }

    /// Connects, creates or migrates the tables if a migration is due, checks
    /// that they are there and usable, and returns the store.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a URL that does not parse, `ssl*`
    /// options that contradict each other, need TLS in a build without
    /// `postgres-tls` or name roots that hold no certificate (see
    /// [`PgStore`], "TLS"), or a bad schema or table name. [`Error::Io`]
    /// naming the `sslrootcert` file if it cannot be read. [`Error::Database`] naming the server, transient if it
    /// cannot be reached, another process held the migration lock for the
    /// whole [`migration_lock_timeout`](Self::migration_lock_timeout) (the
    /// error names it) or a bound passed; not transient if it refuses the
    /// login, the TLS handshake is refused (the server's certificate does not
    /// verify, or the server offers no TLS where the mode requires it), the session does not run with the bounds asked for, the tables
    /// were migrated by a newer jobsafe, `jobsafe_schema` records a version
    /// for tables that do not exist, or this login lacks a privilege the store
    /// needs on them.
    pub fn open(self) -> Result<PgStore> {
        check_name("schema", &self.schema)?;
        check_name("table", &self.table)?;
        let conn = ssl_options::split(&self.url)?;
        let mut config: tokio_postgres::Config =
            conn.rest.parse().map_err(|e: tokio_postgres::Error| {
                // The URL is never repeated, nor the parser's message (which
                // quotes the part it could not read) if the text may hold a
                // password.
                let why = if conn.may_hold_password {
                    String::new()
                } else {
                    format!(" ({e})")
                };
                Error::InvalidArgument(format!(
                    "the database URL does not parse as a PostgreSQL connection string{why}"
                ))
            })?;
        let limits = self.limits;
        limits.apply(&mut config, self.durability);
        // Names this handle's sessions to the trigger that notifies of
        // writes, so that its listener can tell its own writes from others'.
        let writer = uuid::Uuid::new_v4().simple().to_string();
        let options = config.get_options().unwrap_or_default().to_owned();
        config.options(format!("{options} -c jobsafe.writer={writer}"));
        let transport = transport::choose(&conn.ssl, &mut config)?;
        if config.get_application_name().is_none() {
            config.application_name("jobsafe");
        }
        let server = server_name(&config);
        let names = Names {
            schema: self.schema,
            table: self.table,
        };
        let background = runtime::handle(&server)?;
        let sql = Arc::new(Sql::new(&names));
        let connector = Connector {
            config,
            transport,
            sql: sql.clone(),
            server: server.clone(),
            background: background.clone(),
            within: limits.connect,
        };

        // The first connection checks its session and migrates the tables,
        // then joins the pool.
        let first = runtime::off_runtime(&server, || {
            let mut linked = connector.linked(None)?;
            let Linked { client, driver } = &mut linked;
            let ready = async {
                limits.check(client, &server).await?;
                schema::migrate(client, &names, &server, limits.migration_lock).await
            };
            // The migration lock's wait, then the migration itself.
            let bound = limits.call.saturating_add(limits.migration_lock);
            driver
                .run_for(bound, ready)
                .unwrap_or_else(|| Err(deadline_passed("migrate schema", &server, bound)))?;
            connector.prepare(linked, 0, None)
        })?;
        let pool = Pool::new(
            connector,
            usize::try_from(self.pool_size).unwrap_or(usize::MAX),
            limits.connect,
            Some(first),
        );
        let listener = self.listen.then(|| {
            Arc::new(Listener::new(
                pool.clone(),
                background.clone(),
                &names,
                writer,
                self.listen_check,
            ))
        });
        Ok(PgStore {
            shared: Arc::new(Shared {
                pool,
                sql,
                server,
                names,
                background,
                deadline: limits.call,
                listener,
            }),
        })
    }
}

/// Schema and table names go into SQL text: only plain lowercase identifiers.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{what} name {name:?}: use 1 to 40 lowercase ASCII letters, digits and '_', \
         not starting with a digit"
    )))
}

impl Shared {
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            server: &self.server,
            names: &self.names,
        }
    }

    /// A connection for a call that must be answered by `until`.
    fn check_out(&self, step: &'static str, until: Instant) -> Result<Pooled> {
        self.pool.get(&CallBound {
            step,
            deadline: self.deadline,
            until,
        })
    }

    /// A call that changes nothing: checks a connection out and runs `work`
    /// on it, on this thread, all within the call deadline. When the deadline
    /// passes, the work is dropped where it stands: its connection is busy,
    /// so it is closed and its statement cancelled, never put back in the
    /// pool.
    fn read<T>(&self, step: &'static str, work: impl AsyncFnOnce(&Link) -> Result<T>) -> Result<T> {
        let until = later(Instant::now(), self.deadline);
        let conn = self.check_out(step, until)?;
        let left = until.saturating_duration_since(Instant::now());
        match conn.engine.run_for(left, work(&conn.link)) {
            Some(result) => {
                conn.release();
                result
            }
            None => Err(deadline_passed(step, &self.server, self.deadline)),
        }
    }

    /// A write: as [`read`](Shared::read), within half the call deadline,
    /// and returned once its outcome is settled. If the server never answered
    /// (the connection ended under it, or the deadline passed), the write's
    /// session is ended first (see [`fence`]), within what is left of the
    /// call deadline, so that the write cannot land after the caller is told
    /// it failed.
    fn write<T>(
        &self,
        step: &'static str,
        work: impl AsyncFnOnce(&mut Link) -> Result<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let answer_by = later(started, self.deadline / 2);
        // A connection that cannot be had sent nothing: no fence needed.
        let mut conn = self.check_out(step, answer_by)?;
        let session = conn.session.clone();
        let left = answer_by.saturating_duration_since(Instant::now());
        let Conn { link, engine, .. } = &mut *conn;
        let answer = engine.run_for(left, work(link));
        let error = match answer {
            Some(result) => {
                // An error the server sent ended the write's transaction; one
                // from a connection that ended under the write did not.
                let answered = !conn.link.client.is_closed();
                conn.release();
                match result {
                    Err(error) if !answered => error,
                    answered => return answered,
                }
            }
            None => {
                // Dropped busy: its statement is cancelled, its socket closed.
                drop(conn);
                deadline_passed(step, &self.server, self.deadline)
            }
        };
        let left = later(started, self.deadline).saturating_duration_since(Instant::now());
        if self.fence(session, left) {
            Err(error)
        } else {
            Err(unfenced(error))
        }
    }

    /// Ends `session` on the server within `within`: `true` once it is known
    /// to be over. Runs on the process's runtime, off the write's connection,
    /// which is gone.
    fn fence(&self, session: Session, within: Duration) -> bool {
        let pool = self.pool.clone();
        let ended = runtime::block_on(&self.background, &self.server, async move {
            Ok(fence::end_session(pool.connector(), &session, within).await)
        });
        ended.unwrap_or(false)
    }

    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.read("get", async |link| ops::get(link, &self.ctx(), key).await)
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        self.write("put", async |link| {
            ops::put(link, &self.ctx(), key, value, expect).await
        })
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        self.write("delete", async |link| {
            ops::delete(link, &self.ctx(), key, expect).await
        })
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        self.read("list", async |link| {
            ops::list(link, &self.sql, &self.ctx(), prefix, after, limit).await
        })
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        self.write("apply batch", async |link| {
            ops::apply(link, &self.ctx(), batch).await
        })
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        self.write("quarantine", async |link| {
            ops::quarantine(link, &self.ctx(), key).await
        })
    }

    /// The server's clock, and the moment of this machine's monotonic clock it
    /// is taken as of: the middle of the round trip.
    fn server_time(&self) -> Result<(u64, Instant)> {
        self.read("read the server clock", async |link| {
            let before = Instant::now();
            let now_ms = ops::now_ms(link, &self.ctx()).await?;
            let after = Instant::now();
            Ok((now_ms, before + (after - before) / 2))
        })
    }
}

impl PgStore {
    /// Runs a call on this thread (on another if this one is a runtime's:
    /// see [`runtime::off_runtime`]).
    fn call<T: Send>(&self, work: impl FnOnce(&Shared) -> Result<T> + Send) -> Result<T> {
        let shared = &*self.shared;
        runtime::off_runtime(&shared.server, || work(shared))
    }

    /// A call of the blocking face made on a thread where a tokio runtime is
    /// current: made by the async face (`native`) on the store's background
    /// runtime while this thread waits, so that it costs no thread of its own
    /// (see [`runtime::off_runtime`] for what it would cost). `None` on other
    /// threads, which drive their connection themselves, and on the
    /// background runtime's own thread, which must not wait for itself.
    #[cfg(feature = "async")]
    fn on_runtime<T, F>(&self, native: impl FnOnce() -> F) -> Option<Result<T>>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        Handle::try_current().ok()?;
        if runtime::is_current_thread() {
            return None;
        }
        let shared = &*self.shared;
        Some(runtime::block_on(
            &shared.background,
            &shared.server,
            native(),
        ))
    }
}

impl Store for PgStore {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        #[cfg(feature = "async")]
        if let Some(routed) = self.on_runtime(|| self.native_get(key)) {
            return routed;
        }
        trace::store_call(trace::Backend::POSTGRES, "get", key, || {
            self.call(|s| s.get(key))
        })
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        #[cfg(feature = "async")]
        if let Some(routed) = self.on_runtime(|| self.native_put(key, value.to_vec(), expect)) {
            return routed;
        }
        trace::store_call(trace::Backend::POSTGRES, "put", key, || {
            // Checked here, not left to the server: a value it cannot take (over
            // 1 GB) makes it drop the connection, which looks transient.
            Entry::check_value(key, value)?;
            self.call(|s| s.put(key, value, expect))
        })
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        #[cfg(feature = "async")]
        if let Some(routed) = self.on_runtime(|| self.native_delete(key, expect)) {
            return routed;
        }
        trace::store_call(trace::Backend::POSTGRES, "delete", key, || {
            self.call(|s| s.delete(key, expect))
        })
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        #[cfg(feature = "async")]
        if let Some(routed) = self.on_runtime(|| self.native_list(prefix, after, limit)) {
            return routed;
        }
        trace::store_call(trace::Backend::POSTGRES, "list", prefix, || {
            check_limit(limit)?;
            self.call(|s| s.list(prefix, after, limit))
        })
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        #[cfg(feature = "async")]
        if let Some(routed) = self.on_runtime(|| self.native_apply(batch.clone())) {
            return routed;
        }
        trace::store_call(trace::Backend::POSTGRES, "apply", batch, || {
            batch.validate()?;
            self.call(|s| s.apply(batch))
        })
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        trace::store_call(trace::Backend::POSTGRES, "quarantine", key, || {
            self.call(|s| s.quarantine(key))
        })
    }

    /// Tells of every write of a job's record that another writer
    /// committed under `prefix`: another process or machine, another handle
    /// opened on the same table, or an application's own session; other
    /// records are not told (see [`PgStore`], "Change notifications"). Heard
    /// on a connection of the store's own
    /// through `LISTEN`/`NOTIFY` (see [`PgStore`], "Change notifications"),
    /// as soon as the server delivers it. `None` if
    /// [`listen`](PgStoreBuilder::listen) is off.
    fn changes_by_others(&self, prefix: &Prefix) -> Option<Changes> {
        let listener = self.shared.listener.as_ref()?;
        Some(listener.watch(prefix))
    }

    // The async face, native: each call a task of the caller's runtime, on
    // connections that runtime drives (see `async_face`).

    #[cfg(feature = "async")]
    fn native_async(&self) -> Option<&dyn crate::store::native::NativeAsync> {
        Some(self)
    }

    #[cfg(feature = "async")]
    fn get_async(&self, key: &Key) -> impl Future<Output = Result<Option<Entry>>> + Send + 'static
    where
        Self: Clone + 'static,
    {
        self.native_get(key)
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
        self.native_put(key, value, expect)
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
        self.native_delete(key, expect)
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
        self.native_list(prefix, after, limit)
    }

    #[cfg(feature = "async")]
    fn apply_async(
        &self,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Applied>>> + Send + 'static
    where
        Self: Clone + 'static,
    {
        self.native_apply(batch)
    }
}

#[cfg(test)]
mod password_tests {
    use super::*;

    #[test]
    fn neither_a_builder_nor_a_server_name_shows_a_password() {
        for url in [
            "postgres://app:Zq1secret@db.internal:5432/jobs",
            "postgres://app:Zq1@Zq2secret@db.internal/jobs",
            "postgresql://app@db.internal/jobs?password=Zq1secret",
            "host=db.internal user=app password=Zq1secret dbname=jobs",
        ] {
            let shown = format!("{:?}", PgStore::builder(url));
            assert!(
                !shown.contains("Zq1") && !shown.contains("Zq2"),
                "{url}: {shown}"
            );
            assert!(shown.contains("db.internal"), "{url}: {shown}");
            if let Ok(config) = url.parse::<tokio_postgres::Config>() {
                let name = server_name(&config);
                assert!(!name.contains("Zq"), "{url}: {name}");
            }
        }
    }

    #[test]
    fn a_url_that_does_not_parse_is_not_quoted() {
        let err = PgStore::builder("postgres://app:Zq1secret@db/jobs?bogus=Zq2secret")
            .open()
            .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("Zq"), "{text}");
    }
}
