//! `jobsafe schedules`: recurring schedules kept by a `Scheduler`.

use clap::Subcommand;
use jobsafe::schedule::{self, ScheduleState};
use serde_json::{Value, json};

use crate::cli::{Ctx, namespace};
use crate::exit::{EXIT_CODES_HELP, Failure, Outcome};
use crate::locks::report_unreadable;
use crate::output::{self, Table, print_json_line};

/// Options of `jobsafe schedules`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct Args {
    /// The key prefix the schedules live under (Scheduler::namespace).
    #[arg(
        long,
        global = true,
        default_value = "schedules",
        value_name = "PREFIX"
    )]
    namespace: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the schedules with their definition, next due time and last run.
    /// Changes nothing.
    ///
    /// Lists what the services' schedulers stored when they last ticked; a
    /// schedule shows up after its first tick. A next due time in the past
    /// means no instance has ticked since. Records that cannot be read are
    /// reported on stderr, and the exit code is then 1.
    List,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Outcome {
    let opened = ctx.open()?;
    let namespace = namespace(&args.namespace)?;
    match args.command {
        Command::List => {
            let listed = schedule::list(&*opened.store, &namespace).map_err(|e| {
                Failure::library(format!("list schedules in store {}", opened.name), &e)
            })?;
            let now = ctx.now_ms();
            if ctx.json {
                for state in &listed.schedules {
                    print_json_line(&state_json(state));
                }
            } else {
                let mut table = Table::new(&[
                    "SCHEDULE", "EVERY", "CATCH-UP", "NEXT DUE", "LAST JOB", "RUNS", "SKIPPED",
                ]);
                for state in &listed.schedules {
                    table.row(vec![
                        state.name.clone(),
                        state.every.clone(),
                        state.catch_up.clone(),
                        // No due time left (a cron expression's last year passed).
                        if state.next_due_ms == u64::MAX {
                            "never".to_owned()
                        } else {
                            format!(
                                "{} ({})",
                                output::time(state.next_due_ms),
                                output::relative(state.next_due_ms, now)
                            )
                        },
                        output::or_dash(state.last_job.as_deref()),
                        state.runs.to_string(),
                        state.skipped.to_string(),
                    ]);
                }
                table.print("no schedules");
            }
            report_unreadable(&listed.unreadable)
        }
    }
}

fn state_json(state: &ScheduleState) -> Value {
    json!({
        "name": state.name,
        "every": state.every,
        "catch_up": state.catch_up,
        "next_due_ms": state.next_due_ms,
        "last_due_ms": state.last_due_ms,
        "last_job": state.last_job,
        "runs": state.runs,
        "skipped": state.skipped,
        "updated_ms": state.updated_ms,
        "version": state.version.get(),
    })
}
