//! `jobsafe`: the operator's command-line tool for a jobsafe store.
//!
//! Lists and shows locks, jobs, job events and ledger reservations; releases a
//! stuck lock, retries, cancels and purges jobs, refunds a reservation, sweeps
//! temp files left by crashed writers, and follows a job live. Built with
//! `cargo install jobsafe --features cli` (add `postgres` for `postgres://`
//! stores). `jobsafe --help` and `jobsafe COMMAND --help` say what each command
//! reads and what it changes.

// The tool reads and changes stores only through the library (and its vfs
// layer), never behind its back: see `disallowed-methods` in clippy.toml.
#![warn(clippy::disallowed_methods)]

// First: its `out!` macro is used by the modules after it.
#[macro_use]
mod output;

mod cli;
mod confirm;
mod exit;
mod jobs;
mod ledger;
mod locks;
mod store_url;
mod sweep;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code.into(),
        Err(failure) => {
            eprintln!("jobsafe: {failure}");
            failure.code().into()
        }
    }
}
