//! Simulated power loss, ALICE-style: run a workload on an in-memory filesystem
//! that records every operation, then build each state a power loss could have
//! left after each operation, boot a fresh filesystem from it, and check.
//!
//! # The persistence model
//!
//! - **File contents.** A write (`write_all`, `write_all_at`) changes what
//!   processes read at once, but reaches the disk only when the file is flushed
//!   (`sync_data` or `sync_all`: both flush every earlier write of the inode,
//!   and its length, as `fdatasync` must to let the data be read back). Until
//!   then, after a power loss, each write is independently **lost**, **kept**,
//!   or **torn**: a prefix of it kept (cut at a sector boundary, or inside a
//!   sector), or only its later sector-sized pieces. A write past the end that
//!   lands in part leaves zeros in the gap, like a hole.
//! - **Directory entries.** A create, link, unlink, mkdir, rmdir or rename
//!   changes the names processes see at once, but reaches the disk only when
//!   its directory is flushed (`sync_dir`). Until then each change is
//!   independently lost or kept. A file flush does not make its name durable.
//! - **Renames.** A rename is one change, atomic: after a power loss the file
//!   is under its old name or its new one, never neither nor both, and a
//!   replaced target names the old file or the new one. Between two
//!   directories it is durable only once both were flushed after it.
//! - **Locks** (`flock`) live in memory only: a rebooted filesystem has none.
//!
//! This is stricter than any one real filesystem (ext4 keeps directory changes
//! in order, for instance): a program correct under it is correct under each.
//!
//! # Why here, not in `jobsafe::vfs`
//!
//! It is a test instrument: published, its model, trace format and sampling
//! would become API to keep stable, for users who cannot point it at anything
//! but the crate's own types. The public `Vfs` trait is all it needs, and the
//! flush methods' `#[track_caller]` is all the crate pays for it.
//!
//! # Pieces
//!
//! - [`SimVfs`](fs::SimVfs): the filesystem, recording a trace of [`Event`](fs::Event)s, telling
//!   flush sites apart by the caller's location and able to turn one site's
//!   flushes into no-ops ([`SimVfs::disable_site`](fs::SimVfs::disable_site)).
//! - [`crash::for_each_state`]: from a trace, every crash point (after each
//!   event) and, at each, every combination of the unflushed changes the model
//!   allows when there are few, or a seeded random sample of them (always with
//!   "everything lost" and "everything kept"). A trace recorded on a booted
//!   crash state ([`SimVfs::boot_recording`](fs::SimVfs::boot_recording))
//!   gives the states of a second power loss, during recovery.
//! - [`sites`]: the flush calls in the crate's source, to check that the
//!   workloads reach every one.

pub mod crash;
pub mod fs;
pub mod sites;
