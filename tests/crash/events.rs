//! Job events: a child starts one long-lived job and appends events to it
//! (`append_event`, and every fourth one a `progress` message) until stopped.
//!
//! Each event carries an identity, `c<child>-<n>`, and the child acknowledges
//! it with its sequence number. After each stop the parent checks that the
//! job's events are exactly the sequence numbers of its window, in order, with
//! no gap; that every acknowledged event still inside the window is there, at
//! its sequence number, with its identity, exactly once; that acknowledged
//! sequence numbers only went up; that the job record agrees with its last
//! progress event; and that a job whose start was acknowledged is running.
//! Then it recovers the dead child's job (requeues it), as a restarted service
//! would, for the next child to start.
//!
//! The window is bounded, so the same batches that append also drop the oldest
//! events; an acknowledged event that left the window by that bound is counted
//! apart, never as present.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jobsafe::jobs::{JobStatus, NewJob, RecoveryAction};
use jobsafe::{JobState, ManualClock, Store};
use serde_json::json;

use super::backend::Backend;
use super::part::{ChildContext, Model, Outcome, START_MS, Tally, child_start};

const JOB: &str = "crash-events";
const MAX_EVENTS: u64 = 256;
const STEP_MS: u64 = 3_600_000;

fn jobs(store: Arc<dyn Store>, now_ms: u64) -> JobState<Arc<dyn Store>> {
    JobState::builder(store, Arc::new(ManualClock::new(now_ms)))
        .max_events(MAX_EVENTS)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The identity an event carries, whichever way it was appended.
fn identity(event: &jobsafe::jobs::Event) -> Option<&str> {
    match event.kind.as_str() {
        "chunk" => event.data["id"].as_str(),
        "progress" => event.data["message"].as_str(),
        _ => None,
    }
}

/// The parent's model: every acknowledged event, by sequence number.
pub struct Events {
    backend: Backend,
    root: PathBuf,
    acknowledged: BTreeMap<u64, String>,
    /// Acknowledged events not yet seen in the store by a check.
    unchecked: Vec<u64>,
    started: bool,
    in_flight: bool,
    mid_append: u64,
    dropped_by_bound: u64,
}

impl Events {
    pub fn new(backend: Backend, root: PathBuf) -> Self {
        let store = backend.open(&root).unwrap();
        jobs(store, START_MS)
            .create(NewJob::new("crash").id(JOB))
            .unwrap();
        Events {
            backend,
            root,
            acknowledged: BTreeMap::new(),
            unchecked: Vec::new(),
            started: false,
            in_flight: false,
            mid_append: 0,
            dropped_by_bound: 0,
        }
    }
}

impl Model for Events {
    fn absorb(&mut self, report: &str, tally: &mut Tally) {
        let fields: Vec<&str> = report.split(' ').collect();
        match fields.as_slice() {
            ["begin", ..] => self.in_flight = true,
            ["started", _] => {
                self.in_flight = false;
                self.started = true;
            }
            ["event", seq, id] => {
                self.in_flight = false;
                let seq: u64 = seq.parse().unwrap();
                if let Some((last, _)) = self.acknowledged.last_key_value()
                    && seq <= *last
                {
                    tally.violations.push(format!(
                        "event {id} acknowledged at {seq}, after event {last}"
                    ));
                }
                self.acknowledged.insert(seq, (*id).to_owned());
                self.unchecked.push(seq);
            }
            _ => tally
                .violations
                .push(format!("unexpected report {report:?}")),
        }
    }

    fn check(&mut self, iteration: u64, tally: &mut Tally) {
        if std::mem::take(&mut self.in_flight) {
            self.mid_append += 1;
        }
        let Some(store) = tally.ok(iteration, "reopen", self.backend.open(&self.root)) else {
            return;
        };
        let jobs = jobs(store, child_start(iteration, STEP_MS) + STEP_MS / 2);
        let Some(Some(job)) = tally.ok(iteration, "read the job", jobs.get(JOB)) else {
            tally.violate(iteration, "the job is gone");
            return;
        };
        let Some(page) = tally.ok(iteration, "read the events", jobs.events_since(JOB, 0)) else {
            return;
        };
        let window = job.events;
        let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        if seqs != (window.first_seq..window.next_seq).collect::<Vec<_>>() {
            tally.violate(
                iteration,
                format!(
                    "events {seqs:?} are not the window {}..{}",
                    window.first_seq, window.next_seq
                ),
            );
        }
        if window.next_seq - window.first_seq > MAX_EVENTS {
            tally.violate(iteration, format!("window {window:?} exceeds the bound"));
        }
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for event in &page.events {
            if let Some(id) = identity(event)
                && let Some(earlier) = seen.insert(id, event.seq)
            {
                tally.violate(
                    iteration,
                    format!("event {id} is stored twice, at {earlier} and {}", event.seq),
                );
            }
        }
        for (seq, id) in &self.acknowledged {
            if *seq < window.first_seq {
                continue; // left the window by the bound
            }
            let stored = page.events.iter().find(|e| e.seq == *seq);
            if stored.and_then(identity) != Some(id.as_str()) {
                tally.violate(
                    iteration,
                    format!("acknowledged event {id} at {seq} is {stored:?}"),
                );
            }
        }
        for seq in self.unchecked.drain(..) {
            if seq < window.first_seq {
                self.dropped_by_bound += 1;
            } else {
                tally.acknowledged += 1;
            }
        }
        let last_progress = page.events.iter().rev().find(|e| e.kind == "progress");
        if let Some(event) = last_progress
            && job.progress.as_deref() != event.data["message"].as_str()
        {
            tally.violate(
                iteration,
                format!(
                    "the record says progress {:?}, its last progress event {}",
                    job.progress, event.data
                ),
            );
        }
        if std::mem::take(&mut self.started) && job.status != JobStatus::Running {
            tally.violate(
                iteration,
                format!("acknowledged start, but the job is {}", job.status),
            );
        }

        // A restarted service requeues the dead worker's job.
        tally.ok(
            iteration,
            "recover",
            jobs.recover(Duration::from_secs(60), RecoveryAction::Requeue),
        );
        if let Some(Some(job)) = tally.ok(iteration, "read the job", jobs.get(JOB))
            && job.status != JobStatus::Queued
        {
            tally.violate(
                iteration,
                format!("after recovery the job is {}", job.status),
            );
        }
    }

    fn extra(&self) -> String {
        format!(
            "mid_append={} dropped_by_bound={}",
            self.mid_append, self.dropped_by_bound
        )
    }
}

/// Child: starts the job, then appends events to it until stopped, reporting
/// `begin` before each write and `event <seq> <identity>` after it.
pub fn work(backend: Backend, root: &Path, ctx: &ChildContext) -> Outcome {
    let jobs = jobs(backend.open(root)?, child_start(ctx.iteration, STEP_MS));
    ctx.report("begin start");
    let worker = jobs.start(JOB, None)?;
    ctx.report(&format!("started {}", worker.attempt));
    for n in 0.. {
        let id = format!("c{}-{n}", ctx.iteration);
        ctx.report(&format!("begin event {id}"));
        let seq = if n % 4 == 3 {
            jobs.progress(&worker, &id)?.events.next_seq - 1
        } else {
            jobs.append_event(&worker, "chunk", json!({ "id": id }))?
                .seq
        };
        ctx.report(&format!("event {seq} {id}"));
    }
    Ok(())
}
