//! Crash-safe building blocks for background jobs: safe to retry, safe to crash,
//! safe under concurrency, safe under partial artifacts.
//!
//! Use jobsafe when a service runs work in the background and must not charge twice,
//! run one job twice at once, lose a job on restart, or leave a half-written file
//! behind. It is a library, not a server: your process links it and composes its
//! parts.
//!
//! - Use a [`Store`] to keep small records with versioned compare-and-set. Pick
//!   [`DirStore`] (one inspectable file per key, the embedded default) or
//!   [`MemStore`] (tests, or services that need no durability), `PgStore` (feature
//!   `postgres`: one store shared by many machines through PostgreSQL), or
//!   implement the trait for your own backend and check it with the
//!   [`conformance`] suite.
//! - Use a [`JobLock`] so that one job runs once at a time: a lease that a crashed
//!   holder cannot keep past its expiry, with a fencing token per holder.
//! - Use a [`JobLedger`] so that a job id is charged once however often it is
//!   retried, with refunds that happen exactly once.
//! - Use [`JobState`] for job records that survive restarts: validated transitions,
//!   errors with a client face, and event streams clients can replay.
//! - Use [`AtomicWriter`] (or [`write_atomic`]) to write files that a crash or a
//!   concurrent reader never sees half written.
//! - Use a [`Clock`] everywhere time matters; tests drive [`ManualClock`].
//! - Check [`FencingToken`]s wherever a lease holder writes, so that a holder whose
//!   lease has passed on cannot overwrite newer work.
//!
//! # Example
//!
//! ```
//! use jobsafe::{Batch, DirStore, Expect, Key, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let store = DirStore::open(dir.path().join("state"))?;
//!
//! // Insert-if-absent: of two concurrent first calls, exactly one wins.
//! let job = Key::new(["ledger", "lic:abc123", "job-42"])?;
//! let v = store.put(&job, br#"{"charged":true}"#, Expect::Absent)?;
//! assert!(store.put(&job, b"{}", Expect::Absent).unwrap_err().is_conflict());
//!
//! // Several keys change together or not at all, even if the process dies midway.
//! let balance = Key::new(["credits", "lic:abc123"])?;
//! store.apply(
//!     &Batch::new()
//!         .put(&balance, b"99", Expect::Absent)
//!         .delete(&job, Expect::Version(v)),
//! )?;
//! assert!(store.get(&job)?.is_none());
//!
//! // Artifacts are replaced atomically and durably.
//! jobsafe::write_atomic(dir.path().join("transcript.json"), br#"{"text":"..."}"#)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design
//!
//! Everything stands on the [`Store`] contract: get, put and delete with *any*,
//! *absent* or *version* preconditions, ordered paged listing by whole-segment
//! prefix, and all-or-nothing batches. Versions only grow and are never reused for a
//! key deleted and created again. Every filesystem operation goes through the
//! [`vfs`] layer, which compiles away in production and lets tests count, fail or
//! trace operations. Records are versioned JSON ([`record`]).
//!
//! # Guarantees
//!
//! - A write that returned `Ok` from a durable store survives a process crash and a
//!   power loss.
//! - Writes are linearizable per key across threads and processes.
//! - A record that cannot be decoded is an [`Error::Corrupt`] naming the key and
//!   file: never treated as absent, never overwritten, never dropped.
//! - After a failed fsync, a store refuses further writes ([`Error::Poisoned`]).
//! - Library code does not panic on input or disk content.
//!
//! # Limitations
//!
//! - Unix only: file modes, `flock` and directory fsync are used as POSIX defines
//!   them.
//! - [`Durability::AtomicOnly`] gives up power-loss safety for speed; it exists for
//!   caches, tests and benchmarks.
//!
//! # Cargo features
//!
//! - `postgres` (off by default): `PgStore`, a [`Store`] in a PostgreSQL table for
//!   services on several machines, and `PgClock`, which reads the server's clock
//!   so that leases and TTLs do not depend on the machines' clocks. Brings in the
//!   `postgres` client and the `r2d2` connection pool.
//! - `cli` (off by default): the `jobsafe` operator tool, which lists and
//!   repairs the locks, jobs and ledger reservations of a `dir:`, `log:` or
//!   (with `postgres`) `postgres://` store through the API above; see
//!   `jobsafe --help`. Brings in `clap`. The library itself does not change.

mod atomic;
mod clock;
pub mod conformance;
mod error;
mod fencing;
mod jobs;
mod key;
mod ledger;
mod lock;
mod pipeline;
mod process;
pub mod record;
mod store;
pub mod vfs;

pub use atomic::{AtomicWriter, DEFAULT_MODE, Durability, PendingFile, TEMP_SUFFIX, write_atomic};
pub use clock::{Clock, FileClock, ManualClock, SharedClock, SystemClock};
pub use error::{Error, Result};
pub use fencing::FencingToken;
pub use jobs::{
    ClientError, ClientJob, DEFAULT_CLIENT_MESSAGE, DEFAULT_MAX_EVENTS, DEFAULT_SUBSCRIBER_BUFFER,
    Event, EventPage, EventWindow, Failure, Follower, Job, JobError, JobFilter, JobList, JobState,
    JobStatus, MAX_ERROR_LEN, MAX_PROGRESS_LEN, NewJob, PurgeCounts, Recovery, Subscription,
    Worker,
};
pub use key::{Key, MAX_SEGMENT_LEN, MAX_SEGMENTS, Prefix};
pub use ledger::{
    ChargeRequest, DEFAULT_TTL, JobLedger, LedgerList, Reservation, ReservationState, Reserve,
};
pub use lock::{
    Acquire, JobLock, KeepAlive, KeepAliveEvent, LockGuard, LockHandle, LockList, LockRecord,
    LockRequest, LostLease, Release, Renewal,
};
pub use pipeline::{
    Artifact, Checkpoint, DEFAULT_LEASE, Deletion, ErrorClass, MAX_ARTIFACT_NAME, PassReport,
    Pipeline, PipelineBuilder, PipelineRecords, PurgePolicy, PurgeReport, RetryPolicy, RunOutcome,
    RunReport, SUBJECT_FIELD, StageAction, StageContext, StageError, StageNotice, classify_io,
};
pub use process::{ProcessIdentity, ProcessLiveness};
pub use record::Metadata;
pub use store::dir::{DirStore, DirStoreBuilder};
pub use store::log::{Compaction, LogStats, LogStore, LogStoreBuilder, MAX_TRANSACTION_BYTES};
pub use store::mem::MemStore;
#[cfg(feature = "postgres")]
pub use store::pg::{PgClock, PgStore, PgStoreBuilder};
pub use store::{Applied, Batch, Entry, Expect, ListPage, Op, Quarantined, Store, Version};

/// The README's examples, compiled and run as doctests so that it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
