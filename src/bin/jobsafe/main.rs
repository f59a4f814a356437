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
// Lines go out through `out!` and `err!` (output.rs), which escape stored text
// for the terminal (safe_text.rs), never through `println!` or `eprintln!`.
#![warn(clippy::print_stdout, clippy::print_stderr)]

// First: its `out!` and `err!` macros are used by the modules after it.
#[macro_use]
mod output;

mod cli;
mod confirm;
mod exit;
mod jobs;
mod ledger;
mod locks;
mod safe_text;
mod schedules;
mod store_url;
mod sweep;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code.into(),
        Err(failure) => {
            err!("jobsafe: {failure}");
            failure.code().into()
        }
    }
}
