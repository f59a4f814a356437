//! A background job streams progress events; a subscriber joins late, replays
//! what it missed and follows live to the end; then the store is reopened, as
//! after a restart, and the job and its events are all there.
//!
//! ```text
//! cargo run --example job_events [NEW_STATE_DIR]
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use jobsafe::jobs::NewJob;
use jobsafe::{JobState, LogStore, SystemClock};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1) {
        Some(dir) => run(Path::new(&dir)),
        None => run(tempfile::tempdir()?.path()),
    }
}

fn run(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = dir.join("store");
    let jobs = JobState::new(LogStore::open(&root)?, Arc::new(SystemClock));
    let job = jobs.create(NewJob::new("summarize").owner("inst-7"))?;
    println!(
        "created job {} (queued); the request returns its id at once",
        job.id
    );

    // The worker runs in the background; it waits for the subscriber only so that
    // the example shows both a replay and live events, not to be correct.
    let (joined_tx, joined_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let worker_jobs = jobs.clone();
    let job_id = job.id.clone();
    let worker = std::thread::spawn(move || -> jobsafe::Result<()> {
        let worker = worker_jobs.start(&job_id, None)?;
        worker_jobs.set_stage(&worker, "transcribe")?;
        for window in 1..=3 {
            worker_jobs.append_event(&worker, "window_complete", json!({ "window": window }))?;
        }
        let _ = started_tx.send(());
        let _ = joined_rx.recv(); // the subscriber has joined
        worker_jobs.set_stage(&worker, "analyze")?;
        for window in 4..=5 {
            worker_jobs.append_event(&worker, "window_complete", json!({ "window": window }))?;
        }
        worker_jobs.complete(&worker, json!({ "title": "Episode 12", "windows": 5 }))?;
        Ok(())
    });

    // A client connects late (its SSE stream opened after the job started).
    let _ = started_rx.recv();
    let mut stream = jobs.subscribe(&job.id, 0)?;
    println!("a subscriber joins late and replays from the start:");
    let mut live = false;
    while let Some(event) = stream.try_next_event()? {
        println!("  replay #{} {} {}", event.seq, event.kind, event.data);
    }
    let _ = joined_tx.send(());
    while let Some(event) = stream.next_event()? {
        if !live {
            println!("...then follows live:");
            live = true;
        }
        println!("  live   #{} {} {}", event.seq, event.kind, event.data);
    }
    worker.join().map_err(|_| "the worker panicked")??;
    drop(stream);
    drop(jobs);

    println!("reopening the store, as after a restart:");
    let reopened = JobState::new(LogStore::open(&root)?, Arc::new(SystemClock));
    let job = reopened.get(&job.id)?.ok_or("the job is gone")?;
    println!(
        "  job {} is {}, stages {:?}, result {}",
        job.id,
        job.status,
        job.stages_done,
        job.result.unwrap_or_default()
    );
    let events = reopened.events_since(&job.id, 0)?.events;
    if let Some(last) = events.last() {
        println!(
            "  {} events intact, the last one #{} {}",
            events.len(),
            last.seq,
            last.kind
        );
    }
    Ok(())
}
