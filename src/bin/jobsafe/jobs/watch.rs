//! `jobsafe jobs watch`: a job's events as they are stored, with a status line.

use std::io::Write;
use std::time::Duration;

use jobsafe::jobs::Job;
use jobsafe::{Error, JobState, Store};

use super::{event_json, event_row, job_json};
use crate::cli::Ctx;
use crate::exit::{Code, Failure, Outcome};
use crate::output::{self, print_json_line};

/// The shortest pause between two reads of the store.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Follows job `id` from the event after `after` until its terminal event, and
/// ends with the exit code of how the job ended. The stream, not a snapshot of
/// the record, decides: a job retried after `error` goes on.
pub(super) fn watch<S: Store>(
    ctx: &Ctx,
    jobs: &JobState<S>,
    store: &str,
    id: &str,
    after: u64,
    interval: Duration,
) -> Outcome {
    let gone = |e: &Error| match e {
        Error::JobNotFound { .. } => {
            Failure::not_found(format!("no job {id} in store {store} (or it was deleted)"))
        }
        e => Failure::library(format!("follow job {id} in store {store}"), e),
    };
    // Never a busy loop, whatever --interval says.
    let interval = interval.max(MIN_INTERVAL);
    let mut follower = jobs.follow(id, after, interval).map_err(|e| gone(&e))?;
    let mut status_line = StatusLine::default();
    let mut last_kind = None;
    loop {
        let events = follower.poll().map_err(|e| gone(&e))?;
        if !events.is_empty() {
            status_line.clear();
        }
        for event in &events {
            if ctx.json {
                print_json_line(&event_json(event));
            } else {
                out!("{}", event_row(event).join("  "));
            }
            last_kind = Some(event.kind.clone());
        }
        let job = jobs
            .get(id)
            .map_err(|e| gone(&e))?
            .ok_or_else(|| gone(&Error::JobNotFound { id: id.to_owned() }))?;
        if follower.is_finished() {
            status_line.clear();
            return Ok(finish(ctx, &job, last_kind.as_deref()));
        }
        status_line.show(&describe(&job, ctx.now_ms()));
        ctx.clock.sleep(interval);
    }
}

/// Prints how the job ended and returns its exit code.
fn finish(ctx: &Ctx, job: &Job, terminal: Option<&str>) -> Code {
    let (code, ended) = match terminal {
        Some("done") => (Code::Ok, "complete"),
        Some("cancelled") => (Code::JobCancelled, "cancelled"),
        _ => (Code::JobFailed, "failed"),
    };
    if ctx.json {
        print_json_line(&job_json(job));
    } else {
        let detail = match (&job.error, code) {
            (Some(error), Code::JobFailed) => format!(": {}", error.internal_message()),
            _ => String::new(),
        };
        out!("job {} {ended}{detail}", job.id);
    }
    code
}

fn describe(job: &Job, now: u64) -> String {
    let mut parts = vec![format!("job {}", job.id), job.status.to_string()];
    if let Some(stage) = &job.stage {
        parts.push(format!("stage {stage}"));
    }
    parts.push(format!("attempt {}", job.attempt));
    if let Some(progress) = &job.progress {
        parts.push(progress.clone());
    }
    parts.push(format!("updated {}", output::relative(job.updated_ms, now)));
    parts.join(" · ")
}

/// One line on stderr, rewritten in place with `\r`.
#[derive(Default)]
struct StatusLine {
    /// The text on the terminal now, escaped.
    shown: String,
}

impl StatusLine {
    /// Shows `text` in place of the line shown. It quotes stored text (a
    /// progress message): escaped, a `\r` or ESC in it cannot move the cursor,
    /// and the width cleared next time is the width drawn.
    fn show(&mut self, text: &str) {
        let text = crate::safe_text::for_terminal(text);
        if *text == self.shown {
            return;
        }
        let width = self.shown.chars().count();
        let mut err = std::io::stderr().lock();
        // A status line that cannot be drawn is no reason to stop watching.
        let _ = write!(err, "\r{text:<width$}");
        let _ = err.flush();
        self.shown = text.into_owned();
    }

    fn clear(&mut self) {
        if self.shown.is_empty() {
            return;
        }
        let width = self.shown.chars().count();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{:width$}\r", "");
        let _ = err.flush();
        self.shown.clear();
    }
}
