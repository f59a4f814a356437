//! `jobsafe ledger`: idempotency reservations kept by [`JobLedger`].

use clap::Subcommand;
use jobsafe::ledger::{Reservation, ReservationState};
use jobsafe::{JobLedger, Store};
use serde_json::{Value, json};

use crate::cli::{Ctx, namespace};
use crate::confirm::confirm;
use crate::exit::{Code, EXIT_CODES_HELP, Failure, Outcome};
use crate::locks::report_unreadable;
use crate::output::{self, Table, print_fields, print_json, print_json_line};

/// Options of `jobsafe ledger`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct Args {
    /// The key prefix the reservations live under (JobLedger::namespace).
    #[arg(long, global = true, default_value = "ledger", value_name = "PREFIX")]
    namespace: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List reservations, by account then job id. Changes nothing.
    ///
    /// A reservation is `charged`, or has a side effect in flight
    /// (`charge_pending`, `refund_pending`) that the service must finish.
    /// Records that cannot be read are reported on stderr, and the exit code is
    /// then 1.
    List {
        /// Only this account's reservations.
        #[arg(long)]
        account: Option<String>,
        /// Only reservations with a charge or refund in flight (JobLedger::pending).
        #[arg(long)]
        pending: bool,
    },
    /// Show one reservation in full. Changes nothing.
    Show {
        /// ACCOUNT/JOB_ID, as `ledger list` prints it (split at the first '/').
        key: String,
    },
    /// Refund a charged reservation (JobLedger::refund_reservation).
    ///
    /// Removes the reservation, so that the job id counts as new and the next
    /// request with it is charged again. It changes nothing else: if the service
    /// keeps a credit balance (JobLedger::refund_with) or charged an external
    /// system, credit that back through the service. A reservation whose charge
    /// is still pending cannot be refunded. Asks first unless --yes.
    Refund {
        /// ACCOUNT/JOB_ID, as `ledger list` prints it (split at the first '/').
        key: String,
    },
    /// Settle a side effect left in flight, after checking the external system.
    ///
    /// A service that charges or refunds through an external system records
    /// `charge_pending` or `refund_pending` first and settles it after the call
    /// (JobLedger::reserve_pending, begin_refund). If it died in between and
    /// cannot settle it itself, check the external system with the
    /// reservation's id, then record what happened (OUTCOME below).
    ///
    /// Changes only a reservation in the matching pending state. Asks first
    /// unless --yes.
    Settle {
        /// ACCOUNT/JOB_ID, as `ledger list` prints it (split at the first '/').
        key: String,
        /// What the external system says happened.
        #[arg(value_enum)]
        outcome: Settled,
    },
}

/// What happened to a side effect in flight, as `ledger settle` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Settled {
    /// The external charge happened: charge_pending becomes charged
    /// (JobLedger::confirm_charge).
    Charged,
    /// The external charge did not happen and will not: the charge_pending
    /// reservation goes, and the job id counts as new (JobLedger::cancel_charge).
    Uncharged,
    /// The external refund happened: the refund_pending reservation goes, and
    /// the job id counts as new (JobLedger::complete_refund).
    Refunded,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Outcome {
    let opened = ctx.open()?;
    let ledger = JobLedger::builder(opened.store, ctx.clock.clone())
        .namespace(namespace(&args.namespace)?)
        .build()
        .map_err(|e| Failure::library("open the ledger", &e))?;
    let store = opened.name.as_str();
    match args.command {
        Command::List { account, pending } => {
            list(ctx, &ledger, store, account.as_deref(), pending)
        }
        Command::Show { key } => show(ctx, &ledger, store, &key),
        Command::Refund { key } => refund(ctx, &ledger, store, &key),
        Command::Settle { key, outcome } => settle(ctx, &ledger, store, &key, outcome),
    }
}

fn list<S: Store>(
    ctx: &Ctx,
    ledger: &JobLedger<S>,
    store: &str,
    account: Option<&str>,
    pending: bool,
) -> Outcome {
    let mut listed = ledger
        .list(account)
        .map_err(|e| Failure::library(format!("list reservations in store {store}"), &e))?;
    if pending {
        listed.reservations.retain(|r| r.state.is_pending());
    }
    let now = ctx.now_ms();
    if ctx.json {
        for reservation in &listed.reservations {
            print_json_line(&reservation_json(reservation, now));
        }
    } else {
        let mut table = Table::new(&["ACCOUNT", "JOB", "STATE", "ID", "CHARGED", "EXPIRES"]);
        for r in &listed.reservations {
            table.row(vec![
                r.account.clone(),
                r.job_id.clone(),
                state(r).to_owned(),
                r.id.clone(),
                output::time(r.charged_ms),
                output::relative(r.expires_ms, now),
            ]);
        }
        table.print("no reservations");
    }
    report_unreadable(&listed.unreadable)
}

fn show<S: Store>(ctx: &Ctx, ledger: &JobLedger<S>, store: &str, key: &str) -> Outcome {
    let (account, job_id) = split_key(key)?;
    let reservation = lookup(ledger, store, account, job_id)?;
    let now = ctx.now_ms();
    if ctx.json {
        print_json(&reservation_json(&reservation, now));
    } else {
        print_reservation(&reservation, now);
    }
    Ok(Code::Ok)
}

fn refund<S: Store>(ctx: &Ctx, ledger: &JobLedger<S>, store: &str, key: &str) -> Outcome {
    let (account, job_id) = split_key(key)?;
    let reservation = lookup(ledger, store, account, job_id)?;
    let now = ctx.now_ms();
    if !ctx.json {
        print_reservation(&reservation, now);
    }
    if reservation.state.is_pending() {
        return Err(Failure::new(
            Code::Error,
            format!(
                "reservation {account}/{job_id} in store {store} is {}: the service must finish \
                 that side effect first; nothing was changed",
                state(&reservation)
            ),
        ));
    }
    confirm(
        ctx.yes,
        &format!(
            "Refund reservation {account}/{job_id}, so that the job id is charged again next time?"
        ),
    )?;
    // Only the reservation shown and confirmed is refunded, never one made
    // since (the job id reserved anew).
    let refunded = ledger.refund_reservation(&reservation).map_err(|e| {
        Failure::library(
            format!("refund reservation {account}/{job_id} in store {store}"),
            &e,
        )
    })?;
    if !refunded {
        return Err(Failure::new(
            Code::Error,
            format!(
                "reservation {account}/{job_id} (id {}) in store {store} was refunded, replaced or \
                 changed by someone else meanwhile; nothing was changed",
                reservation.id
            ),
        ));
    }
    let refunded = reservation;
    if ctx.json {
        print_json(&json!({ "refunded": reservation_json(&refunded, now) }));
    } else {
        out!(
            "refunded reservation {account}/{job_id} (id {}); the job id counts as new",
            refunded.id
        );
    }
    Ok(Code::Ok)
}

fn settle<S: Store>(
    ctx: &Ctx,
    ledger: &JobLedger<S>,
    store: &str,
    key: &str,
    outcome: Settled,
) -> Outcome {
    let (account, job_id) = split_key(key)?;
    let reservation = lookup(ledger, store, account, job_id)?;
    let now = ctx.now_ms();
    if !ctx.json {
        print_reservation(&reservation, now);
    }
    let (pending, question) = match outcome {
        Settled::Charged => (
            ReservationState::ChargePending,
            "Record that its external charge happened?",
        ),
        Settled::Uncharged => (
            ReservationState::ChargePending,
            "Record that its external charge did not happen, and remove it?",
        ),
        Settled::Refunded => (
            ReservationState::RefundPending,
            "Record that its external refund happened, and remove it?",
        ),
    };
    if reservation.state != pending {
        return Err(Failure::new(
            Code::Error,
            format!(
                "reservation {account}/{job_id} in store {store} is {}, not {}: nothing to settle; nothing was changed",
                state(&reservation),
                state_name(pending)
            ),
        ));
    }
    confirm(
        ctx.yes,
        &format!("Reservation {account}/{job_id}: {question}"),
    )?;
    let failed = |e: jobsafe::Error| {
        Failure::library(
            format!("settle reservation {account}/{job_id} in store {store}"),
            &e,
        )
    };
    let settled = match outcome {
        Settled::Charged => ledger
            .confirm_charge(&reservation)
            .map_err(failed)?
            .is_some_and(|now| now.state == ReservationState::Charged),
        Settled::Uncharged => ledger.cancel_charge(&reservation).map_err(failed)?,
        Settled::Refunded => ledger.complete_refund(&reservation).map_err(failed)?,
    };
    if !settled {
        return Err(Failure::new(
            Code::Error,
            format!(
                "reservation {account}/{job_id} in store {store} changed meanwhile; nothing was settled"
            ),
        ));
    }
    let word = match outcome {
        Settled::Charged => "charged",
        Settled::Uncharged => "uncharged",
        Settled::Refunded => "refunded",
    };
    if ctx.json {
        print_json(&json!({ "settled": word, "reservation": reservation_json(&reservation, now) }));
    } else {
        out!(
            "settled reservation {account}/{job_id} (id {}) as {word}",
            reservation.id
        );
    }
    Ok(Code::Ok)
}

/// `ACCOUNT/JOB_ID`, split at the first `/`: account keys rarely hold one, job
/// ids sometimes do.
fn split_key(key: &str) -> Result<(&str, &str), Failure> {
    match key.split_once('/') {
        Some((account, job_id)) if !account.is_empty() && !job_id.is_empty() => {
            Ok((account, job_id))
        }
        _ => Err(Failure::usage(format!(
            "invalid reservation key {key:?}: expected ACCOUNT/JOB_ID"
        ))),
    }
}

fn lookup<S: Store>(
    ledger: &JobLedger<S>,
    store: &str,
    account: &str,
    job_id: &str,
) -> Result<Reservation, Failure> {
    ledger
        .lookup(account, job_id)
        .map_err(|e| {
            Failure::library(
                format!("read reservation {account}/{job_id} in store {store}"),
                &e,
            )
        })?
        .ok_or_else(|| {
            Failure::not_found(format!(
                "no reservation {account}/{job_id} in store {store}"
            ))
        })
}

fn state(reservation: &Reservation) -> &'static str {
    state_name(reservation.state)
}

fn state_name(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Charged => "charged",
        ReservationState::ChargePending => "charge_pending",
        ReservationState::RefundPending => "refund_pending",
        _ => "unknown",
    }
}

fn print_reservation(r: &Reservation, now: u64) {
    print_fields(&[
        ("account", r.account.clone()),
        ("job", r.job_id.clone()),
        ("id", r.id.clone()),
        ("state", state(r).to_owned()),
        ("fingerprint", output::or_dash(r.fingerprint.as_deref())),
        ("charged", output::time(r.charged_ms)),
        (
            "expires",
            format!(
                "{} ({})",
                output::time(r.expires_ms),
                output::relative(r.expires_ms, now)
            ),
        ),
        (
            "metadata",
            output::json_text(&Value::Object(r.metadata.clone())),
        ),
    ]);
}

fn reservation_json(r: &Reservation, now: u64) -> Value {
    json!({
        "account": r.account,
        "job_id": r.job_id,
        "id": r.id,
        "state": state(r),
        "fingerprint": r.fingerprint,
        "metadata": r.metadata,
        "charged_ms": r.charged_ms,
        "expires_ms": r.expires_ms,
        "expired": r.is_expired_at(now),
        "version": r.version.get(),
    })
}
