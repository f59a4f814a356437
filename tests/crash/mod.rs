//! The crash suite's parts, shared by the SIGKILL suite (`tests/crash_suite.rs`)
//! and the power-loss test on a real ext4 filesystem
//! (`tests/ext4_power_loss.rs`).
//!
//! A part is a workload and its checks. A child process runs the workload of one
//! or more parts (one thread each), reporting to the parent over its stdout
//! before each write (`begin ...`, the intent) and after each write it got `Ok`
//! for (the acknowledgement). The parent stops the child at a moment of its
//! choosing (SIGKILL, or an ext4 shutdown and then SIGKILL), reopens the stores
//! and checks that every acknowledged write is there, whole, exactly once, and
//! that nothing is stuck. An acknowledgement never goes to the filesystem under
//! test, so a lost write cannot take its own evidence with it.
//!
//! Each binary compiles this module and uses a part of it, hence the
//! `dead_code` allowance.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::panic)]

pub mod backend;
pub mod batches;
pub mod events;
pub mod kill_loop;
pub mod ledger;
pub mod locks;
pub mod part;
pub mod pipelines;
pub mod summary;
