//! `jobsafe locks`: lease locks kept by [`JobLock`].

use std::sync::Arc;

use clap::Subcommand;
use jobsafe::lock::{LockRecord, Release};
use jobsafe::pipeline::PipelineRecords;
use jobsafe::{JobLock, Key, Store};
use serde_json::{Value, json};

use crate::cli::{Ctx, namespace};
use crate::confirm::confirm;
use crate::exit::{Code, EXIT_CODES_HELP, Failure, Outcome};
use crate::output::{self, Table, print_fields, print_json, print_json_line};

/// Options of `jobsafe locks`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct Args {
    /// The key prefix the locks live under (JobLock::namespace).
    #[arg(long, global = true, default_value = "locks", value_name = "PREFIX")]
    namespace: String,

    /// The subject locks of a Pipeline whose namespace is PREFIX (`pipeline`
    /// if no value is given), under PREFIX/locks.
    #[arg(
        long,
        global = true,
        value_name = "PREFIX",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "pipeline",
        conflicts_with = "namespace"
    )]
    pipeline: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the locks with holder, fencing token and expiry. Changes nothing.
    ///
    /// A lock whose lease has ended is listed as `expired`: the next acquire takes
    /// it over. Records that cannot be read are reported on stderr, and the exit
    /// code is then 1.
    List {
        /// Only locks whose key starts with these segments.
        #[arg(long, value_name = "KEY")]
        prefix: Option<String>,
    },
    /// Show one lock in full, with its metadata. Changes nothing.
    Show {
        /// The lock key, as `locks list` prints it (without the namespace).
        name: String,
    },
    /// Force-release a lock, whoever holds it.
    ///
    /// Shows the holder and asks (unless --yes), then deletes the lock record if
    /// that holder still has it (JobLock::release with the holder's handle: a
    /// lock taken over meanwhile is left alone, with exit code 1). The next
    /// acquire then succeeds at once. The holder
    /// is not told: it learns at its next renewal, and its fencing token is
    /// older than the next holder's, so fenced writes of a holder that is still
    /// alive are refused. Prints the holder it removed. Asks first unless --yes.
    Release {
        /// The lock key, as `locks list` prints it (without the namespace).
        name: String,
    },
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Outcome {
    let opened = ctx.open()?;
    let store = &opened.name;
    let locks = match &args.pipeline {
        Some(prefix) => PipelineRecords::new(opened.store, ctx.clock.clone(), namespace(prefix)?)
            .map_err(|e| Failure::library(format!("pipeline {prefix}"), &e))?
            .locks()
            .clone(),
        None => JobLock::builder(Arc::new(opened.store), ctx.clock.clone())
            .namespace(namespace(&args.namespace)?)
            .build()
            .map_err(|e| Failure::library("open the locks", &e))?,
    };
    match args.command {
        Command::List { prefix } => list(ctx, &locks, store, prefix.as_deref()),
        Command::Show { name } => show(ctx, &locks, store, &name),
        Command::Release { name } => release(ctx, &locks, store, &name),
    }
}

fn list<S: Store>(ctx: &Ctx, locks: &JobLock<S>, store: &str, prefix: Option<&str>) -> Outcome {
    let prefix = crate::cli::prefix("lock prefix", prefix.unwrap_or(""))?;
    let listed = locks
        .list(&prefix)
        .map_err(|e| Failure::library(format!("list locks in store {store}"), &e))?;
    let now = ctx.now_ms();
    if ctx.json {
        for lock in &listed.locks {
            print_json_line(&lock_json(lock, now));
        }
    } else {
        let mut table = Table::new(&["LOCK", "STATE", "HOLDER", "ACTOR", "TOKEN", "EXPIRES"]);
        for lock in &listed.locks {
            table.row(vec![
                lock.key.to_string(),
                state(lock, now).to_owned(),
                lock.job_id.clone(),
                output::or_dash(lock.actor.as_deref()),
                lock.token.get().to_string(),
                format!(
                    "{} ({})",
                    output::time(lock.expires_ms),
                    output::relative(lock.expires_ms, now)
                ),
            ]);
        }
        table.print("no locks");
    }
    report_unreadable(&listed.unreadable)
}

/// Prints unreadable records to stderr: exit code 1 if there are any.
pub(crate) fn report_unreadable(unreadable: &[(Key, jobsafe::Error)]) -> Outcome {
    for (key, error) in unreadable {
        err!("jobsafe: unreadable record {key}: {error}");
    }
    Ok(if unreadable.is_empty() {
        Code::Ok
    } else {
        Code::Error
    })
}

fn show<S: Store>(ctx: &Ctx, locks: &JobLock<S>, store: &str, name: &str) -> Outcome {
    let key = lock_key(name)?;
    let lock = peek(locks, store, &key)?;
    let now = ctx.now_ms();
    if ctx.json {
        print_json(&lock_json(&lock, now));
    } else {
        print_lock(&lock, now);
    }
    Ok(Code::Ok)
}

fn release<S: Store>(ctx: &Ctx, locks: &JobLock<S>, store: &str, name: &str) -> Outcome {
    let key = lock_key(name)?;
    let lock = peek(locks, store, &key)?;
    let now = ctx.now_ms();
    if !ctx.json {
        print_lock(&lock, now);
    }
    confirm(
        ctx.yes,
        &format!("Force-release lock {key}, held by {}?", lock.holder()),
    )?;
    // Only the holder shown and confirmed is removed: a lock taken over
    // meanwhile belongs to someone the operator has not seen.
    let released = locks
        .release(&lock.handle())
        .map_err(|e| Failure::library(format!("release lock {key} in store {store}"), &e))?;
    let removed = match released {
        Release::Released => lock,
        Release::OwnedByAnother(now_held) => {
            return Err(Failure::new(
                Code::Error,
                format!(
                    "lock {key} in store {store} is now held by {}, not by {}; nothing was \
                     changed (run the command again to release the new holder)",
                    now_held.holder(),
                    lock.holder()
                ),
            ));
        }
        Release::AlreadyGone => {
            return Err(Failure::not_found(format!(
                "lock {key} in store {store} was released by someone else meanwhile"
            )));
        }
    };
    if ctx.json {
        print_json(&json!({ "released": lock_json(&removed, now) }));
    } else {
        out!(
            "released lock {key}: removed holder {}, token {}",
            removed.holder(),
            removed.token.get()
        );
    }
    Ok(Code::Ok)
}

fn lock_key(name: &str) -> Result<Key, Failure> {
    name.parse::<Key>()
        .map_err(|e| Failure::usage(format!("invalid lock name {name:?}: {e}")))
}

fn peek<S: Store>(locks: &JobLock<S>, store: &str, key: &Key) -> Result<LockRecord, Failure> {
    locks
        .peek(key)
        .map_err(|e| Failure::library(format!("read lock {key} in store {store}"), &e))?
        .ok_or_else(|| Failure::not_found(format!("no lock {key} in store {store}")))
}

fn state(lock: &LockRecord, now: u64) -> &'static str {
    if lock.is_expired_at(now) {
        "expired"
    } else {
        "held"
    }
}

fn print_lock(lock: &LockRecord, now: u64) {
    print_fields(&[
        ("lock", lock.key.to_string()),
        ("state", state(lock, now).to_owned()),
        ("holder", lock.job_id.clone()),
        ("actor", output::or_dash(lock.actor.as_deref())),
        ("token", lock.token.get().to_string()),
        ("acquired", output::time(lock.started_ms)),
        ("renewed", output::time(lock.renewed_ms)),
        (
            "expires",
            format!(
                "{} ({})",
                output::time(lock.expires_ms),
                output::relative(lock.expires_ms, now)
            ),
        ),
        (
            "metadata",
            output::json_text(&Value::Object(lock.metadata.clone())),
        ),
    ]);
}

fn lock_json(lock: &LockRecord, now: u64) -> Value {
    json!({
        "key": lock.key.to_string(),
        "state": state(lock, now),
        "job_id": lock.job_id,
        "actor": lock.actor,
        "token": lock.token.get(),
        "metadata": lock.metadata,
        "started_ms": lock.started_ms,
        "renewed_ms": lock.renewed_ms,
        "expires_ms": lock.expires_ms,
        "version": lock.version.get(),
    })
}
