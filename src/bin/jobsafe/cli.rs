//! The command line: global options and the command groups.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use jobsafe::{Prefix, SharedClock, SystemClock};

use crate::exit::{EXIT_CODES_HELP, Failure, Outcome};
use crate::store_url::{Opened, PgNames, StoreUrl};
use crate::{jobs, ledger, locks, schedules, sweep};

const ABOUT: &str = "Inspect and repair the locks, jobs and ledger reservations in a jobsafe store";

const LONG_ABOUT: &str = "\
Inspect and repair the locks, jobs and ledger reservations that a service keeps in a
jobsafe store: release a stuck lock, retry or cancel a job, refund a reservation,
settle a charge left in flight, purge old jobs, sweep temp files left by crashed
writers, follow a job live, list recurring schedules.

The store is named by --store or the JOBSAFE_STORE variable:
  log:PATH        a LogStore directory, jobsafe's default store (log://PATH is the same)
  dir:PATH        a DirStore directory (dir://PATH is the same)
  postgres://...  a PgStore (needs the tool built with --features cli,postgres)
The tool never creates a DirStore or LogStore. A PgStore's tables are created or
migrated on open, as the service does (--pg-schema and --pg-table name them). The
tool reads and changes records through the jobsafe library, so it is safe to run
beside the service: every change is a compare-and-set against the record as just
read, so no concurrent change is overwritten unseen. A LogStore that a service
opened in exclusive mode cannot be opened by anyone else: stop the service first.

Each record family lives under a key namespace the service chose; the tool uses the
library's defaults (locks, jobs, ledger, schedules) unless --namespace says otherwise.
--pipeline selects a Pipeline's jobs or subject locks instead (under pipeline/jobs
and pipeline/locks, or --pipeline=PREFIX for another namespace). Keys are written
as the tool prints them: segments joined by '/', with %2F for a '/' inside a
segment and %25 for a '%'.

Destructive commands (locks release, jobs cancel, jobs purge, ledger refund,
ledger settle, sweep) show what they would change and ask first; --yes skips the
question, and without --yes they refuse when standard input is not a terminal.

--json prints one JSON document for a single record, and JSON lines (one object per
line) for lists and for the events of jobs events and jobs watch.

Text from the store is written by services and their clients: the tool shows it
with control characters (C0, DEL, C1) and bidirectional controls escaped, as \\u{1b}
for ESC, so that no record can drive the terminal or reorder a line. --json keeps
the exact text, with those characters as JSON \\u escapes. A PostgreSQL password is
never printed.";

/// The whole command line.
#[derive(Parser, Debug)]
#[command(name = "jobsafe", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXIT_CODES_HELP)]
pub(crate) struct Cli {
    /// The store: log:PATH, dir:PATH or postgres://... [default: $JOBSAFE_STORE]
    #[arg(
        long,
        global = true,
        env = "JOBSAFE_STORE",
        hide_env = true,
        value_name = "URL"
    )]
    store: Option<String>,

    /// Print JSON instead of tables: one document, or JSON lines for lists.
    #[arg(long, global = true)]
    json: bool,

    /// Do destructive changes without asking.
    #[arg(long, short = 'y', global = true)]
    yes: bool,

    /// For a postgres:// store: the schema of its tables (PgStoreBuilder::schema).
    #[arg(long, global = true, default_value = "public", value_name = "NAME")]
    pg_schema: String,

    /// For a postgres:// store: its records table (PgStoreBuilder::table).
    #[arg(
        long,
        global = true,
        default_value = "jobsafe_records",
        value_name = "NAME"
    )]
    pg_table: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Lease locks (JobLock): list, show, force-release.
    Locks(locks::Args),
    /// Job records (JobState): list, show, events, retry, cancel, purge, watch.
    Jobs(jobs::Args),
    /// Idempotency ledger reservations (JobLedger): list, show, refund.
    Ledger(ledger::Args),
    /// Recurring schedules (schedule::Scheduler): list.
    Schedules(schedules::Args),
    /// Remove temp files left in a directory by crashed atomic writers.
    ///
    /// Lists the temp files (`.NAME.RANDOM.jobsafe-tmp`) that atomic writes left
    /// in DIR when their process died, at least --older-than old by modification
    /// time, then removes them after asking (unless --yes). A write in progress
    /// keeps its temp file young, so sweeping beside running writers is safe
    /// with an age of minutes. Other files are never touched. Needs no store.
    #[command(after_help = EXIT_CODES_HELP)]
    Sweep(sweep::Args),
}

/// What every command gets: the global options, and the store on demand.
pub(crate) struct Ctx {
    store: Option<String>,
    pg: PgNames,
    pub(crate) json: bool,
    pub(crate) yes: bool,
    pub(crate) clock: SharedClock,
}

impl Ctx {
    /// Opens the store named by `--store` or `JOBSAFE_STORE`.
    pub(crate) fn open(&self) -> Result<Opened, Failure> {
        let Some(url) = &self.store else {
            return Err(Failure::usage(
                "no store given: pass --store URL or set JOBSAFE_STORE (log:PATH, dir:PATH or postgres://...)",
            ));
        };
        StoreUrl::parse(url)?.open(&self.pg)
    }

    /// The time now, by the tool's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// Parses a `--namespace` or `--pipeline` value.
pub(crate) fn namespace(text: &str) -> Result<Prefix, Failure> {
    prefix("namespace", text)
}

/// Parses key segments as the tool prints them; `what` names them in errors.
pub(crate) fn prefix(what: &str, text: &str) -> Result<Prefix, Failure> {
    text.parse::<Prefix>()
        .map_err(|e| Failure::usage(format!("invalid {what} {text:?}: {e}")))
}

pub(crate) fn run(cli: Cli) -> Outcome {
    let ctx = Ctx {
        store: cli.store,
        pg: PgNames {
            schema: cli.pg_schema,
            table: cli.pg_table,
        },
        json: cli.json,
        yes: cli.yes,
        clock: Arc::new(SystemClock),
    };
    match cli.command {
        Command::Locks(args) => locks::run(&ctx, args),
        Command::Jobs(args) => jobs::run(&ctx, args),
        Command::Ledger(args) => ledger::run(&ctx, args),
        Command::Schedules(args) => schedules::run(&ctx, args),
        Command::Sweep(args) => sweep::run(&ctx, args),
    }
}
