//! Crash-safe building blocks for background jobs: safe to retry, safe to crash,
//! safe under concurrency, safe under partial artifacts.
//!
//! Use jobsafe when a service runs work in the background and must not charge twice,
//! run one job twice at once, lose a job on restart, or leave a half-written file
//! behind. It is a library, not a server: your process links it and composes its
//! parts.
//!
//! # Which part to pick
//!
//! - **A store** keeps small records with versioned compare-and-set; every other
//!   part keeps its records in one. Pick it by where your processes run
//!   ([`store`] compares them):
//!   - [`LogStore`], **the default**: one machine, any number of processes. One
//!     journal; a write costs one `fdatasync`, shared by concurrent writers. Every
//!     live key is held in memory; values are read from the journal.
//!   - [`DirStore`]: one machine, when you want to read and repair records with a
//!     shell, or hold more records than fit in memory. One file per key; two
//!     flushes per write.
//!   - `PgStore` (feature `postgres`): several machines sharing jobs, locks and
//!     charges through PostgreSQL.
//!   - [`MemStore`]: tests, and services that need no durability.
//!   - Your own: implement [`Store`] and check it with the [`conformance`] suite.
//! - [`JobState`] ([`jobs`]): job records that survive restarts, validated
//!   transitions, errors with a client face, and event streams clients can replay.
//! - [`Pipeline`] ([`pipeline`]): staged jobs whose finished stages are never
//!   redone and whose artifacts are never half written, with retries, one runner
//!   per subject, cancellation and purge. It drives the parts below for you.
//! - [`schedule::Scheduler`] ([`schedule`]): recurring jobs, each run created
//!   once across every instance that ticks, with a policy for runs missed
//!   during downtime.
//! - [`JobLock`] ([`lock`]): one job at a time per resource, as a lease that a
//!   crashed holder cannot keep, with a [`FencingToken`] per holder.
//! - [`JobLedger`] ([`ledger`]): charge a job id once however often it is retried,
//!   and refund it exactly once.
//! - [`AtomicWriter`] and [`write_atomic`] ([`atomic`]): files that a crash or a
//!   concurrent reader never sees half written.
//! - A [`Clock`] everywhere time matters: [`SystemClock`] in services,
//!   [`ManualClock`] in tests.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use jobsafe::jobs::{JobStatus, NewJob};
//! use jobsafe::ledger::{ChargeRequest, Reserve};
//! use jobsafe::{JobLedger, JobState, LogStore, SystemClock};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(LogStore::open(dir.path().join("state"))?);
//! let clock = Arc::new(SystemClock);
//! let ledger = JobLedger::new(Arc::clone(&store), clock.clone());
//! let jobs = JobState::new(store, clock);
//!
//! // A request: charge once per job id, however often the client retries.
//! let Reserve::New(_) = ledger.reserve("lic:abc123", "job-42", &ChargeRequest::new())? else {
//!     unreachable!("the first reserve of a job id is new");
//! };
//! let job = jobs.create(NewJob::new("transcribe").id("job-42"))?;
//! assert!(matches!(
//!     ledger.reserve("lic:abc123", "job-42", &ChargeRequest::new())?,
//!     Reserve::Existing(_)
//! ));
//!
//! // A worker: claim the job, work, complete it; clients see every step.
//! let claim = jobs.start(&job.id, None)?;
//! jobs.progress(&claim, "halfway")?;
//! jobs.complete(&claim, serde_json::json!({"words": 1200}))?;
//! assert_eq!(jobs.get(&job.id)?.map(|j| j.status), Some(JobStatus::Complete));
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
//! Each part lives in its own module ([`store`], [`jobs`], [`pipeline`],
//! [`lock`], [`ledger`], [`atomic`]) with everything it returns and takes; the
//! crate root holds what almost every user touches.
//!
//! # Guarantees
//!
//! - A write that returned `Ok` from a durable store survives a process crash and a
//!   power loss.
//! - Writes are linearizable per key across threads and processes.
//! - A record that cannot be decoded is an [`Error::Corrupt`] naming the key and
//!   file: never treated as absent, never overwritten, never dropped. One
//!   exception, which no log can avoid: damage to the very last frame of a
//!   [`LogStore`]'s journal looks exactly like a write torn by a crash, and
//!   is repaired as one (that write is lost); see [`LogStore`], "Crashes".
//! - After a failed flush, a store refuses further writes ([`Error::Poisoned`]).
//! - Sizes are bounded: a store value by [`Entry::MAX_VALUE_LEN`] (16 MiB), and
//!   each field a client fills by a constant on its type
//!   ([`Job::MAX_KIND_LEN`](jobs::Job::MAX_KIND_LEN),
//!   [`Event::MAX_DATA_LEN`](jobs::Event::MAX_DATA_LEN), ...). Anything larger
//!   is refused with [`Error::TooLarge`] before anything is written.
//! - Library code does not panic on input or disk content.
//!
//! # Limitations
//!
//! - Unix only: file modes, `flock` and directory fsync are used as POSIX defines
//!   them.
//! - [`Durability::AtomicOnly`] gives up power-loss safety for speed; it exists for
//!   caches, tests and benchmarks.
//! - The blocking face blocks the calling thread on I/O and waits, as
//!   `std::fs` does, also on an async runtime's thread (it never panics
//!   there). Async services use the async face instead (feature `async`; see
//!   [Async](#async)).
//! - A pipeline stage, blocking or `async`, holds a thread of the crate's
//!   pool while it runs (an async one parks it while it waits): the stage
//!   borrows its context from the run, which lives on that thread.
//!
//! # Async
//!
//! With the feature `async`, each part has an async face beside its blocking
//! one, for services on any async runtime (tokio, async-std, smol: nothing
//! here needs one in particular):
//!
//! - Each part has an async handle type named with the prefix `Async` in the
//!   part's own module: `jobs::AsyncJobState`, `lock::AsyncJobLock`,
//!   `ledger::AsyncJobLedger`, `pipeline::AsyncPipeline`,
//!   `atomic::AsyncAtomicWriter`. It is made from the blocking one (`new`
//!   or `From`) and shares its state; its methods keep the blocking names
//!   and are `async fn`s; `blocking()` gives the blocking face back.
//! - Traits carry both faces. An awaitable method is named after its blocking
//!   twin with the suffix `_async`: [`Clock::sleep_until_async`] (which
//!   [`ManualClock::advance`] wakes), [`Clock::sleep_async`], and
//!   `Store::get_async` and its siblings for stores that are `Clone` (each
//!   of the crate's stores is, and so is an `Arc` of any store).
//! - **One logic, two faces.** A call's decisions and waits are written
//!   once. `AsyncJobLedger`'s calls run the very body of their blocking
//!   twins (but for the listings), an `async fn` generic over how it reaches
//!   the store and the clock: the blocking face makes each store call at
//!   once and sleeps the thread, the async face awaits the store's own async
//!   calls and the clock's timers, so it holds no thread while it waits
//!   (a store whose calls run on the pool holds one for each call, and the
//!   `effect` closures run there). The other parts' async
//!   methods run their blocking twin on a thread of the crate's own bounded
//!   pool ([`pool`], which says why not the runtime's blocking pool), so
//!   every decision (fencing, take-overs, reading back a write whose outcome
//!   was unknown) is written once there too. Where the logic waits, the wait
//!   is written once and each face only sleeps its own way: a lock's backoff
//!   is one step that says until when to wait, which the blocking face
//!   sleeps and the async face awaits. Two stores' own calls are native:
//!   `PgStore`'s `*_async` methods are tasks of the caller's runtime on
//!   connections it drives, and a `LogStore`'s async writes join its group
//!   commit as futures, one pool thread flushing for a whole group of them;
//!   an `Arc` of either reaches them too.
//! - **Waiting holds no thread.** An event subscription is a
//!   `futures_core::Stream` ([`jobs::AsyncSubscription`]) woken by the job
//!   state's hub, the one watcher that fans each event out to every
//!   subscriber; followers of other processes' events share one poll loop
//!   per job state, which reads each followed job once per interval; a lock
//!   waits on the clock between attempts; a keep-alive's loops, for both
//!   faces, are polled by one task thread of the crate and renew on the pool.
//! - **Cancellation.** Dropping an async call's future before its work began
//!   withdraws it. Once begun, a store call runs to its end (a write cannot
//!   be stopped halfway), on the pool or, for `PgStore`, as a task of its
//!   own; a ledger call stops at its next store call or wait. Either way the
//!   outcome is the one a crash of the caller would leave, which the parts'
//!   ambiguity handling covers. A dropped async lock guard releases its lock
//!   on the pool, never on the caller's thread.
//!
//! # Cargo features
//!
//! - `postgres` (off by default): `PgStore`, a [`Store`] in a PostgreSQL table for
//!   services on several machines, and `PgClock`, which reads the server's clock
//!   so that leases and TTLs do not depend on the machines' clocks (both in
//!   [`store`]). Brings in the `tokio-postgres` client and `tokio`: each
//!   `PgStore` call drives its connection on the calling thread (on a runtime
//!   of the connection's own), whatever runtime (if any) the caller is on.
//! - `async` (off by default): the async face of every part (see
//!   [Async](#async)) and the `Stream`s of events. Brings in `futures-core`.
//! - `object-store` (off by default): `pipeline::ObjectStoreArtifacts`, a
//!   pipeline's shared artifacts in S3, Google Cloud Storage or Azure through
//!   the `object_store` crate (whose `aws`, `gcp` or `azure` feature the
//!   application turns on). Brings in `object_store` and `tokio`.
//! - `testing` (off by default): [`testing`], test support for multi-process and
//!   fault-injection tests (a clock in a file, I/O layers that count or fail
//!   operations). [`ManualClock`] needs no feature.
//! - `tracing` (on by default; `default-features = false` leaves it out):
//!   spans and events through the [`tracing` crate](https://docs.rs/tracing),
//!   for operators. Without a subscriber that listens, each costs a check of
//!   the global level filter: a `LogStore` call runs at most 2% more
//!   instructions than in a build without the feature (`get` 1.018x, a
//!   durable `put` 1.011x, counted by `bench/benches/trace_cost.rs`). Fields that would
//!   carry a value the application supplied (marked *id* below: job ids,
//!   accounts, lock and record keys, attempt ids, a stage's error message)
//!   carry its fingerprint, `h:` and 16 hex digits, unless
//!   `trace::show_identifiers(true)` turns the values on (see the `trace`
//!   module for why, and `trace::fingerprint` to find a known id's events).
//!   Errors in fields (`error`) name what failed, a key by its fingerprint,
//!   without paths or free text, unless identifiers are shown.
//!   - Store calls (target `jobsafe::store`): a `debug` span `store` with
//!     `backend` (`log`, `dir`, `mem`, `postgres`), `operation` (`get`,
//!     `put`, `delete`, `list`, `apply`, `quarantine`) and `namespace` (the
//!     key's first segment, shown as is: `jobs`, `locks`, or the name an
//!     application chose), ending with a `debug` event `store call`:
//!     `outcome` (`ok`, `conflict`, `transient`, `ambiguous`, `failed`),
//!     `error`, `micros`, and `flushes`: the fsyncs and fdatasyncs the call
//!     made, counted where the standard vfs makes them (`dir`, `log`; `mem`
//!     says 0; `postgres` omits it: its flushes are the server's). `log`
//!     adds `group`: `led` (its thread flushed for a group commit), `joined`
//!     (it waited for another writer's flush, counted in `flushes`) or
//!     `none` (a read).
//!   - Stage runs (target `jobsafe::pipeline`): an `info` span `stage` with
//!     `stage`, `attempt` (a retry is a new span with a higher one) and
//!     `job` (*id*), ending with an event `stage ended`: `outcome` (`done`,
//!     `failed`, `cancelled`, `deleted`, `lease lost`, `superseded`, `not
//!     running`, `abandoned` (an async run's caller went away), or `error`
//!     when the store or the disk failed), `micros`; for `done`,
//!     `artifacts` (how many it recorded); for `failed`, `then` (`retry` at
//!     `retry_at_ms`, after `failures` consecutive transient failures, or
//!     `failed for good`), `class` (`transient`, `permanent`, `transient,
//!     retries exhausted`), `code` (the error's code, as is) and `error`
//!     (*id*); for `not running`, `status`. `info` for `done`, `cancelled`,
//!     `deleted`, `not running`, `abandoned`; `warn` otherwise. The making
//!     of a job's result, where there is one, is a span `result` ending the
//!     same way.
//!   - Locks (targets under `jobsafe::lock`): `debug` events `lock acquired`
//!     (`key` *id*, `job_id` *id*, `token`), `lock released` and `lease
//!     renewed` (`key`, `job_id`, `expires_ms`); `warn` events from the
//!     keep-alive: `lease lost` (`key`, `job_id`, `token`), `lease renewal
//!     failed` (`key`, `job_id`, `error`), `lease expiring` (`expires_ms`).
//!   - Ledger (target `jobsafe::ledger`): `debug` events `reservation made`
//!     (`account` *id*, `job_id` *id*, `attempt` *id*), `reservation moved`
//!     (`account`, `job_id`, `operation`, `state`) and `reservation removed`
//!     (a refund: `account`, `job_id`, `operation`); `info` when a write was
//!     read back as landed after it failed (with `error`).
//!   - Jobs (targets under `jobsafe::jobs`): a `debug` event `job written`
//!     (`job_id` *id*, `operation`, `status`); `info` when a write was read
//!     back as landed after it failed (`job_id`, `operation`, `write` *id*,
//!     `error`).
//! - `cli` (off by default): the `jobsafe` operator tool, which lists and
//!   repairs the locks, jobs and ledger reservations of a `log:`, `dir:` or
//!   (with `postgres`) `postgres://` store through the API above; see
//!   `jobsafe --help`. Brings in `clap`. The library itself does not change.

#![cfg_attr(docsrs, feature(doc_cfg))]
// Every filesystem operation of the library goes through the `vfs` layer, so
// that the fault-injection and power-loss suites see each one: clippy.toml
// lists the `std` calls that would bypass it. Off in unit tests, which set up
// and inspect files with `std::fs`; Cargo.toml says why it is off elsewhere.
#![cfg_attr(not(test), warn(clippy::disallowed_methods))]
// A dependency the library does not use is an error in CI (clippy runs with
// `-D warnings`). Not in unit tests, whose build also sees the dev-dependencies.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod atomic;
mod attempt;
#[cfg(any(feature = "postgres", feature = "object-store"))]
mod background;
mod clock;
pub mod conformance;
mod drive;
mod durability;
mod error;
mod fencing;
pub mod jobs;
mod key;
pub mod ledger;
mod limits;
pub mod lock;
pub mod pipeline;
pub mod pool;
mod process;
pub mod record;
mod resolve;
pub mod schedule;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod trace;
#[cfg(not(feature = "tracing"))]
mod trace;
pub mod vfs;
mod wake;
#[cfg(feature = "postgres")]
mod within;

pub use atomic::{AtomicWriter, write_atomic};
pub use attempt::AttemptId;
pub use clock::{Clock, ClockSleep, ManualClock, SharedClock, SystemClock};
pub use durability::Durability;
pub use error::{Error, Result};
pub use fencing::FencingToken;
pub use jobs::JobState;
pub use key::{Key, Prefix};
pub use ledger::JobLedger;
pub use lock::JobLock;
pub use pipeline::Pipeline;
#[cfg(feature = "postgres")]
pub use store::PgStore;
pub use store::{Batch, DirStore, Entry, Expect, LogStore, MemStore, Store, Version};

// The CLI's argument parser: an optional dependency of the package, since Cargo
// has no dependencies for one binary alone, and so one the library never uses.
#[cfg(feature = "cli")]
use clap as _;

/// The README's examples, compiled and run as doctests so that it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
