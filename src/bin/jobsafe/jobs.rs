//! `jobsafe jobs`: job records and their events, kept by [`JobState`].

mod watch;

use std::sync::Arc;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use jobsafe::jobs::{Event, Job, JobFilter, JobStatus};
use jobsafe::pipeline::PipelineRecords;
use jobsafe::{JobState, Store};
use serde_json::{Value, json};

use crate::cli::{Ctx, namespace};
use crate::confirm::confirm;
use crate::exit::{Code, EXIT_CODES_HELP, Failure, Outcome};
use crate::locks::report_unreadable;
use crate::output::{self, Table, parse_duration, print_fields, print_json, print_json_line};

/// Options of `jobsafe jobs`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct Args {
    /// The key prefix the jobs live under (JobState::namespace).
    #[arg(long, global = true, default_value = "jobs", value_name = "PREFIX")]
    namespace: String,

    /// The jobs of a Pipeline whose namespace is PREFIX (`pipeline` if no value
    /// is given), under PREFIX/jobs; with it, `retry` also resets the
    /// pipeline's count of transient failures, as Pipeline::retry does.
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

/// A job status, as `--state` takes it.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum State {
    Queued,
    Running,
    Complete,
    Failed,
    Cancelled,
}

impl From<State> for JobStatus {
    fn from(state: State) -> Self {
        match state {
            State::Queued => JobStatus::Queued,
            State::Running => JobStatus::Running,
            State::Complete => JobStatus::Complete,
            State::Failed => JobStatus::Failed,
            State::Cancelled => JobStatus::Cancelled,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List jobs, oldest id first. Changes nothing.
    ///
    /// Reads every job record of the namespace. Records that cannot be read are
    /// reported on stderr, and the exit code is then 1.
    List {
        /// Only jobs in this state.
        #[arg(long, value_enum)]
        state: Option<State>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs of this owner.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Show one job in full, with its internal error message. Changes nothing.
    Show {
        /// The job id.
        id: String,
    },
    /// Print a job's stored events in order. Changes nothing.
    Events {
        /// The job id.
        id: String,
        /// Only events with a sequence number greater than this.
        #[arg(long, default_value_t = 0, value_name = "SEQ")]
        after: u64,
    },
    /// Put a failed job back in the queue for a new attempt (JobState::retry).
    ///
    /// Only a failed job can be retried; its next worker starts attempt n+1.
    /// Appends a `requeued` event. For a Pipeline's jobs this does not reset the
    /// pipeline's count of transient failures: prefer the service's
    /// Pipeline::retry when it offers one.
    Retry {
        /// The job id.
        id: String,
    },
    /// Cancel a queued, running or failed job (JobState::cancel). Final.
    ///
    /// Appends a `cancelled` event; a running worker's next change is refused.
    /// Asks first unless --yes.
    Cancel {
        /// The job id.
        id: String,
    },
    /// Delete old finished jobs with their events (JobState::purge).
    ///
    /// Removes complete, failed and cancelled jobs that finished at least
    /// --older-than ago and, with --queued-older-than, queued jobs never
    /// started that were created that long ago. Running jobs are never purged.
    /// Lists what it would remove and asks first unless --yes; the purge then
    /// decides again on the records as they are, and prints what it removed.
    /// With --pipeline, each job's checkpoints and count of transient failures
    /// go with it (PipelineRecords::purge); its artifact directory stays, for
    /// the service's Pipeline::purge, which removes those of jobs that no
    /// longer exist.
    Purge {
        /// Age after finishing at which a job goes.
        #[arg(long, default_value = "7d", value_parser = parse_duration, value_name = "DUR")]
        older_than: Duration,
        /// Also remove queued jobs never started, created at least this long ago.
        #[arg(long, value_parser = parse_duration, value_name = "DUR")]
        queued_older_than: Option<Duration>,
    },
    /// Follow a job live until it ends, with a progress line (JobState::follow).
    ///
    /// Prints the job's events as they are stored (from the first, or after
    /// --after) and keeps a one-line status on stderr, rewritten in place. Ends
    /// when the job ends: exit code 0 if it completed, 5 if it failed, 6 if it
    /// was cancelled, 3 if it was deleted. With --json: the events as JSON
    /// lines, then the job record as the last line. Changes nothing.
    Watch {
        /// The job id.
        id: String,
        /// Only events with a sequence number greater than this.
        #[arg(long, default_value_t = 0, value_name = "SEQ")]
        after: u64,
        /// How often to read the store.
        #[arg(long, default_value = "500ms", value_parser = parse_duration, value_name = "DUR")]
        interval: Duration,
    },
}

/// Where the jobs are: plain [`JobState`] records, or a Pipeline's.
type Jobs = JobState<Arc<Arc<dyn Store>>>;

pub(crate) fn run(ctx: &Ctx, args: Args) -> Outcome {
    let opened = ctx.open()?;
    let store = opened.name.as_str();
    let (jobs, pipeline): (Jobs, _) = match &args.pipeline {
        Some(prefix) => {
            let records = PipelineRecords::new(opened.store, ctx.clock.clone(), namespace(prefix)?)
                .map_err(|e| Failure::library(format!("pipeline {prefix}"), &e))?;
            (records.jobs().clone(), Some(records))
        }
        None => {
            let jobs = JobState::builder(Arc::new(opened.store), ctx.clock.clone())
                .namespace(namespace(&args.namespace)?)
                .build()
                .map_err(|e| Failure::library("open the job records", &e))?;
            (jobs, None)
        }
    };
    match args.command {
        Command::List { state, kind, owner } => {
            let mut filter = JobFilter::new();
            filter.status = state.map(JobStatus::from);
            filter.kind = kind;
            filter.owner = owner;
            let listed = list(ctx, &jobs, store, &filter);
            if args.pipeline.is_none() && listed_nothing(&jobs, &filter) {
                hint_pipelines(&jobs, &args.namespace);
            }
            listed
        }
        Command::Show { id } => show(ctx, &jobs, store, &id),
        Command::Events { id, after } => events(ctx, &jobs, store, &id, after),
        Command::Retry { id } => retry(ctx, &jobs, pipeline.as_ref(), store, &id),
        Command::Cancel { id } => cancel(ctx, &jobs, store, &id),
        Command::Purge {
            older_than,
            queued_older_than,
        } => purge(
            ctx,
            &jobs,
            pipeline.as_ref(),
            store,
            older_than,
            queued_older_than,
        ),
        Command::Watch {
            id,
            after,
            interval,
        } => watch::watch(ctx, &jobs, store, &id, after, interval),
    }
}

fn list<S: Store>(ctx: &Ctx, jobs: &JobState<S>, store: &str, filter: &JobFilter) -> Outcome {
    let listed = jobs
        .list(filter)
        .map_err(|e| Failure::library(format!("list jobs in store {store}"), &e))?;
    print_jobs(ctx, &listed.jobs, "no jobs");
    report_unreadable(&listed.unreadable)
}

/// Whether an unfiltered listing finds no job at all (errors count as not
/// empty: they were reported).
fn listed_nothing<S: Store>(jobs: &JobState<S>, filter: &JobFilter) -> bool {
    *filter == JobFilter::new()
        && jobs
            .list(filter)
            .is_ok_and(|l| l.jobs.is_empty() && l.unreadable.is_empty())
}

/// Most keys `hint_pipelines` reads: a hint must not cost a scan of a huge store.
const HINT_SCAN_KEYS: usize = 10_000;

/// Tells, on stderr, where a pipeline's jobs are when the plain job namespace
/// is empty: a Pipeline keeps its jobs at `<pipeline>/jobs/job/<id>`, and
/// `jobs list` without `--pipeline` looks only at `<namespace>/job/<id>`.
fn hint_pipelines<S: Store>(jobs: &JobState<S>, namespace: &str) {
    let mut pipelines = std::collections::BTreeSet::new();
    let mut seen = 0;
    for page in jobs.store().scan(&jobsafe::Prefix::all(), 1024) {
        let Ok(keys) = page else { break };
        for key in &keys {
            if let [pipeline @ .., jobs_segment, job, _id] = key.segments()
                && jobs_segment == "jobs"
                && job == "job"
                && !pipeline.is_empty()
            {
                pipelines.insert(pipeline.join("/"));
            }
        }
        seen += keys.len();
        if seen >= HINT_SCAN_KEYS {
            break;
        }
    }
    for pipeline in pipelines {
        err!(
            "hint: no jobs under namespace {namespace}, but a pipeline keeps jobs under \
             {pipeline}: try `jobsafe jobs list --pipeline={pipeline}`"
        );
    }
}

fn print_jobs(ctx: &Ctx, jobs: &[Job], empty: &str) {
    if ctx.json {
        for job in jobs {
            print_json_line(&job_json(job));
        }
        return;
    }
    let now = ctx.now_ms();
    let mut table = Table::new(&[
        "ID",
        "KIND",
        "STATE",
        "STAGE",
        "ATTEMPT",
        "UPDATED",
        "PROGRESS/ERROR",
    ]);
    for job in jobs {
        let note = match (&job.error, job.status) {
            (Some(error), JobStatus::Failed | JobStatus::Queued) => error.internal_message(),
            _ => job.progress.as_deref().unwrap_or(""),
        };
        table.row(vec![
            job.id.clone(),
            job.kind.clone(),
            job.status.to_string(),
            output::or_dash(job.stage.as_deref()),
            job.attempt.to_string(),
            output::relative(job.updated_ms, now),
            output::or_dash(Some(note)),
        ]);
    }
    table.print(empty);
}

fn show<S: Store>(ctx: &Ctx, jobs: &JobState<S>, store: &str, id: &str) -> Outcome {
    let job = get(jobs, store, id)?;
    if ctx.json {
        print_json(&job_json(&job));
    } else {
        print_job(&job, ctx.now_ms());
    }
    Ok(Code::Ok)
}

fn events<S: Store>(ctx: &Ctx, jobs: &JobState<S>, store: &str, id: &str, after: u64) -> Outcome {
    let page = jobs
        .events_since(id, after)
        .map_err(|e| Failure::library(format!("read events of job {id} in store {store}"), &e))?;
    if page.dropped > 0 {
        err!(
            "jobsafe: {} earlier events of job {id} were dropped by the event bound",
            page.dropped
        );
    }
    if ctx.json {
        for event in &page.events {
            print_json_line(&event_json(event));
        }
    } else {
        let mut table = Table::new(&["SEQ", "TIME", "TYPE", "DATA"]);
        for event in &page.events {
            table.row(event_row(event));
        }
        table.print("no events");
    }
    Ok(Code::Ok)
}

fn retry(
    ctx: &Ctx,
    jobs: &Jobs,
    pipeline: Option<&PipelineRecords<Arc<dyn Store>>>,
    store: &str,
    id: &str,
) -> Outcome {
    let retried = match pipeline {
        Some(records) => records.retry(id),
        None => jobs.retry(id),
    };
    let job =
        retried.map_err(|e| Failure::library(format!("retry job {id} in store {store}"), &e))?;
    if ctx.json {
        print_json(&job_json(&job));
    } else {
        out!("job {id} is queued again for attempt {}", job.attempt + 1);
    }
    Ok(Code::Ok)
}

fn cancel<S: Store>(ctx: &Ctx, jobs: &JobState<S>, store: &str, id: &str) -> Outcome {
    let job = get(jobs, store, id)?;
    if matches!(job.status, JobStatus::Complete | JobStatus::Cancelled) {
        return Err(Failure::new(
            Code::Error,
            format!(
                "job {id} in store {store} is {}: cannot cancel it",
                job.status
            ),
        ));
    }
    confirm(
        ctx.yes,
        &format!(
            "Cancel job {id} ({}, {}, attempt {})? This is final.",
            job.kind, job.status, job.attempt
        ),
    )?;
    let job = jobs
        .cancel(id)
        .map_err(|e| Failure::library(format!("cancel job {id} in store {store}"), &e))?;
    if ctx.json {
        print_json(&job_json(&job));
    } else {
        out!("job {id} is cancelled");
    }
    Ok(Code::Ok)
}

fn purge(
    ctx: &Ctx,
    jobs: &Jobs,
    pipeline: Option<&PipelineRecords<Arc<dyn Store>>>,
    store: &str,
    older_than: Duration,
    queued_older_than: Option<Duration>,
) -> Outcome {
    let now = ctx.now_ms();
    let queued_for = queued_older_than.unwrap_or(Duration::MAX);
    let listed = jobs
        .list(&JobFilter::default())
        .map_err(|e| Failure::library(format!("list jobs in store {store}"), &e))?;
    // The purge's own rule, to show what it is about to remove; the purge
    // itself decides again on what is stored then.
    let due: Vec<Job> = listed
        .jobs
        .into_iter()
        .filter(|job| job.is_due_for_purge(now, older_than, queued_for))
        .collect();
    if due.is_empty() {
        if ctx.json {
            print_json(&json!({ "purged": purge_counts_json(&Default::default()) }));
        } else {
            out!("nothing to purge");
        }
        return Ok(Code::Ok);
    }
    if !ctx.json {
        print_jobs(ctx, &due, "");
    }
    confirm(
        ctx.yes,
        &format!("Delete these {} jobs and their events?", due.len()),
    )?;
    let counts = match pipeline {
        Some(records) => records.purge(older_than, queued_for),
        None => jobs.purge(older_than, queued_for),
    };
    let counts =
        counts.map_err(|e| Failure::library(format!("purge jobs in store {store}"), &e))?;
    if ctx.json {
        print_json(&json!({ "purged": purge_counts_json(&counts) }));
    } else {
        out!(
            "purged {} jobs: {} complete, {} failed, {} cancelled, {} queued",
            counts.total(),
            counts.complete,
            counts.failed,
            counts.cancelled,
            counts.queued
        );
    }
    Ok(Code::Ok)
}

fn purge_counts_json(counts: &jobsafe::jobs::PurgeCounts) -> Value {
    json!({
        "total": counts.total(),
        "complete": counts.complete,
        "failed": counts.failed,
        "cancelled": counts.cancelled,
        "queued": counts.queued,
    })
}

fn get<S: Store>(jobs: &JobState<S>, store: &str, id: &str) -> Result<Job, Failure> {
    jobs.get(id)
        .map_err(|e| Failure::library(format!("read job {id} in store {store}"), &e))?
        .ok_or_else(|| Failure::not_found(format!("no job {id} in store {store}")))
}

fn print_job(job: &Job, now: u64) {
    let time = |ms: Option<u64>| match ms {
        Some(ms) => format!("{} ({})", output::time(ms), output::relative(ms, now)),
        None => "-".to_owned(),
    };
    let mut fields = vec![
        ("id", job.id.clone()),
        ("kind", job.kind.clone()),
        ("owner", output::or_dash(job.owner.as_deref())),
        ("state", job.status.to_string()),
        ("stage", output::or_dash(job.stage.as_deref())),
        ("stages done", job.stages_done.join(", ")),
        ("attempt", job.attempt.to_string()),
        ("progress", output::or_dash(job.progress.as_deref())),
        ("created", time(Some(job.created_ms))),
        ("started", time(job.started_ms)),
        ("updated", time(Some(job.updated_ms))),
        ("completed", time(job.completed_ms)),
        ("retry at", time(job.retry_at_ms)),
        ("heartbeat", time(job.heartbeat_ms)),
        (
            "events",
            format!(
                "{}..{} ({} dropped)",
                job.events.first_seq, job.events.next_seq, job.events.dropped
            ),
        ),
    ];
    if let Some(error) = &job.error {
        fields.push(("error", error.internal_message().to_owned()));
        fields.push(("client error", error.client_message().to_owned()));
        fields.push(("error code", output::or_dash(error.error_code())));
    }
    if let Some(result) = &job.result {
        fields.push(("result", output::json_text(result)));
    }
    fields.push((
        "metadata",
        output::json_text(&Value::Object(job.metadata.clone())),
    ));
    print_fields(&fields);
}

/// The job as stored, with its store version.
fn job_json(job: &Job) -> Value {
    let mut value = serde_json::to_value(job).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("version".to_owned(), json!(job.version.get()));
    }
    value
}

fn event_json(event: &Event) -> Value {
    serde_json::to_value(event).unwrap_or(Value::Null)
}

fn event_row(event: &Event) -> Vec<String> {
    vec![
        event.seq.to_string(),
        output::time(event.time_ms),
        event.kind.clone(),
        output::json_text(&event.data),
    ]
}
