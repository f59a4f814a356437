//! A worker process is killed with SIGKILL mid-job; a new process finds the job
//! and its events intact up to the kill, recovers it by policy and finishes it.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::child::{self, Child};
use jobsafe::jobs::{JobStatus, NewJob, RecoveryAction};
use jobsafe::{DirStore, JobState, ManualClock};
use serde_json::json;

const TEST: &str = "a_killed_workers_job_is_recovered_intact";
const START_MS: u64 = 1_700_000_000_000;

#[test]
fn a_killed_workers_job_is_recovered_intact() {
    if child::role().as_deref() == Some("job-worker") {
        return work_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let job_id = {
        let jobs = JobState::new(
            DirStore::open(&root).unwrap(),
            Arc::new(ManualClock::new(START_MS)),
        );
        jobs.create(NewJob::new("transcribe").owner("inst-7"))
            .unwrap()
            .id
    };
    let mut vars = child::store_vars(&root);
    vars.insert("JOBSAFE_TEST_JOB", job_id.clone());
    let mut worker = Child::spawn(TEST, "job-worker", &vars);
    let mut acked = Vec::new();
    for _ in 0..10 {
        acked.push(worker.expect_report().parse::<u64>().unwrap());
    }
    acked.extend(worker.kill().iter().map(|r| r.parse::<u64>().unwrap()));

    // The restart: a new process over the same directory.
    let clock = ManualClock::new(START_MS);
    let jobs = JobState::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));
    let job = jobs.get(&job_id).unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
    let events = jobs.events_since(&job_id, 0).unwrap().events;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..job.events.next_seq).collect::<Vec<_>>(),
        "dense, in order"
    );
    for seq in &acked {
        assert!(seqs.contains(seq), "acknowledged event {seq} is missing");
    }
    let last = events.last().unwrap();
    assert_eq!(
        job.progress.as_deref(),
        last.data["message"].as_str(),
        "record and events agree"
    );

    clock.advance(Duration::from_secs(300));
    let recovered = jobs
        .recover(Duration::from_secs(120), RecoveryAction::Requeue)
        .unwrap();
    assert_eq!(recovered.len(), 1);
    let worker = jobs.start(&job_id, None).unwrap();
    assert_eq!(worker.attempt, 2);
    jobs.complete(&worker, json!({"transcript": "..."}))
        .unwrap();
    let events = jobs.events_since(&job_id, 0).unwrap().events;
    assert_eq!(
        events[..seqs.len()]
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        seqs,
        "history kept"
    );
    assert_eq!(events.last().unwrap().kind, "done");
    println!(
        "jobs_multiprocess: events_before_kill={} acknowledged={} recovered_attempt={}",
        seqs.len(),
        acked.len(),
        worker.attempt
    );
}

/// Child: starts the job and reports progress until killed.
fn work_in_child() {
    let jobs = JobState::new(
        DirStore::open(child::store_root()).unwrap(),
        Arc::new(ManualClock::new(START_MS)),
    );
    let worker = jobs.start(&child::var("JOBSAFE_TEST_JOB"), None).unwrap();
    jobs.set_stage(&worker, "transcribe").unwrap();
    for i in 0.. {
        let job = jobs.progress(&worker, &format!("window {i}")).unwrap();
        child::report(&(job.events.next_seq - 1).to_string());
    }
}
