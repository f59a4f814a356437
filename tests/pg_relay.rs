//! Two relay processes on one PostgreSQL database, each with a state
//! directory (and artifact directory) of its own, on one test clock: a job
//! created through relay A is streamed through relay B as A runs it; A killed
//! mid-stage leaves the job to B once the lease ends, and B finishes it
//! without running a finished stage again (its artifacts come from the
//! database); A stopped with SIGTERM hands the job over at once, with a lease
//! the clock never reaches. The stages wait for gate files that the test
//! makes; the waits are for events, bounded only so that a hang fails.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::pg::{self, Schemas};
use common::relay::{Relay, Res, SseEvent, SseStream};
use jobsafe::testing::FileClock;
use serde_json::Value;

const START_MS: u64 = 1_700_000_000_000;
const ACCOUNT: &str = "lic:two";

/// Lets stage `stage` of job `job` finish.
fn open_gate(gates: &Path, job: &str, stage: &str) {
    std::fs::write(gates.join(format!("{job}.{stage}")), b"").unwrap();
}

/// Two relays' common ground: the database schema, the clock, the gates.
struct Ground {
    dir: tempfile::TempDir,
    _schemas: Schemas,
    schema: String,
    clock: FileClock,
}

impl Ground {
    fn new() -> Ground {
        let dir = tempfile::tempdir().unwrap();
        let mut schemas = Schemas::default();
        let schema = schemas.fresh();
        std::fs::create_dir_all(dir.path().join("gates")).unwrap();
        let clock = FileClock::create(dir.path().join("clock"), START_MS).unwrap();
        Ground {
            dir,
            _schemas: schemas,
            schema,
            clock,
        }
    }

    fn gates(&self) -> std::path::PathBuf {
        self.dir.path().join("gates")
    }

    /// A relay named `name` (its state directory), with a job lease of
    /// `lease_ms` and a grace period on SIGTERM of `grace_ms`.
    fn relay(&self, name: &str, lease_ms: u64, grace_ms: u64) -> Res<Relay> {
        let gates = self.gates();
        let clock = self.clock.path().to_owned();
        let url = pg::url();
        let (lease, grace) = (lease_ms.to_string(), grace_ms.to_string());
        Relay::start(
            &self.dir.path().join(name),
            &[ACCOUNT],
            &[
                "--postgres",
                &url,
                "--postgres-schema",
                &self.schema,
                "--clock-file",
                clock.to_str().unwrap(),
                "--gate",
                gates.to_str().unwrap(),
                "--lease-ms",
                &lease,
                "--stop-grace-ms",
                &grace,
            ],
            false,
        )
    }
}

/// The events of an SSE stream, read on a thread of their own so that a
/// stream that stalls fails the test with what the relay says, instead of
/// hanging in a read.
struct Events {
    events: std::sync::mpsc::Receiver<Res<Option<SseEvent>>>,
}

impl Events {
    fn of(mut stream: SseStream) -> Events {
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let next = stream.next_event();
                let end = !matches!(next, Ok(Some(_)));
                if tx.send(next).is_err() || end {
                    return;
                }
            }
        });
        Events { events }
    }

    /// The next event; `None` at the end of the stream.
    fn next(&self) -> Res<Option<SseEvent>> {
        match self.events.recv_timeout(STALL) {
            Ok(next) => next,
            Err(_) => Err(format!("no event for {STALL:?}").into()),
        }
    }
}

/// How long a stream may stay silent before the test says where it stalled.
const STALL: Duration = Duration::from_secs(90);

/// Reads `events` until one that `stop` accepts (included); on a stall, the
/// error says what `relay` holds of the job and printed.
fn read_until(
    events: &Events,
    seen: &mut Vec<SseEvent>,
    relay: &mut Relay,
    id: &str,
    stop: impl Fn(&SseEvent) -> bool,
) -> Res {
    loop {
        match events.next() {
            Ok(Some(event)) => {
                let last = stop(&event);
                seen.push(event);
                if last {
                    return Ok(());
                }
            }
            Ok(None) => return Err(format!("the stream ended early: {seen:?}").into()),
            Err(e) => {
                let job = relay.client(ACCOUNT).job(id).map(|j| j.to_string());
                let events: Vec<String> = (seen.iter())
                    .map(|e| format!("{} {} {}", e.id, e.kind, e.data))
                    .collect();
                let said = relay.failure("stalled");
                return Err(format!("{e}; events {events:?}; job {job:?}; {said}").into());
            }
        }
    }
}

fn is_stage(event: &SseEvent, stage: &str) -> bool {
    event.kind == "stage" && event.data["stage"] == stage
}

/// Every event once, in order, ending with `done`.
fn assert_whole(seen: &[SseEvent]) {
    let ids: Vec<u64> = seen.iter().map(|e| e.id).collect();
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, expected, "every event once, in order: {seen:?}");
    assert_eq!(
        seen.last().map(|e| e.kind.as_str()),
        Some("done"),
        "{seen:?}"
    );
}

/// How many times stage `stage` ran to its end, by the progress each run
/// reports last (a skipped stage is entered, and reports nothing).
fn ran(seen: &[SseEvent], stage: &str) -> usize {
    let done = format!("{stage} done");
    seen.iter()
        .filter(|e| e.kind == "progress" && e.data["message"] == done.as_str())
        .count()
}

/// Reads `events` to their end.
fn rest(events: &Events, seen: &mut Vec<SseEvent>, relay: &mut Relay, id: &str) -> Res {
    loop {
        match events.next() {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => return Ok(()),
            Err(_) => return read_until(events, seen, relay, id, |_| false),
        }
    }
}

#[test]
fn pg_a_job_of_a_killed_relay_is_finished_by_the_other_without_running_a_finished_stage_again()
-> Res {
    let ground = Ground::new();
    let gates = ground.gates();
    let a = ground.relay("a", 60_000, 5_000)?;
    let (_, answer) = a
        .client(ACCOUNT)
        .post("/jobs", &[("Idempotency-Key", "k-1")], "{}")?;
    let id = answer["job_id"].as_str().unwrap().to_owned();
    // A runs it; B starts once it does, and streams it.
    a.client(ACCOUNT)
        .wait_for_job(&id, |job| job["stage"] == "fetch")?;
    let mut b = ground.relay("b", 60_000, 5_000)?;
    let events = Events::of(b.client(ACCOUNT).events(&id, None)?);
    let mut seen = Vec::new();
    read_until(&events, &mut seen, &mut b, &id, |e| is_stage(e, "fetch"))?;
    open_gate(&gates, &id, "fetch");
    read_until(&events, &mut seen, &mut b, &id, |e| is_stage(e, "process"))?;

    // A dies in its second stage; its lease ends by the clock.
    a.kill();
    ground.clock.advance(Duration::from_secs(61))?;
    // B takes the job over: the first stage verifies with the artifacts it
    // fetches from the database, and is skipped (or, wrongly, runs again).
    read_until(&events, &mut seen, &mut b, &id, |e| {
        e.kind == "stage_skipped" || (e.kind == "progress" && e.data["message"] == "fetch done")
    })?;
    assert_eq!(
        seen.last().map(|e| e.kind.as_str()),
        Some("stage_skipped"),
        "fetch ran again after the takeover: {seen:?}"
    );
    open_gate(&gates, &id, "process");
    open_gate(&gates, &id, "store");
    rest(&events, &mut seen, &mut b, &id)?;
    assert_whole(&seen);
    assert_eq!(ran(&seen, "fetch"), 1, "fetch ran again: {seen:?}");
    let skipped = seen.iter().find(|e| e.kind == "stage_skipped").unwrap();
    assert_eq!(skipped.data["stage"], "fetch", "{skipped:?}");
    assert!(
        skipped.data["fetched"].as_u64().unwrap_or(0) >= 1,
        "{skipped:?}"
    );
    let job = b.client(ACCOUNT).job(&id)?;
    assert_eq!(job["status"], "complete", "{job}");
    Ok(())
}

#[test]
fn pg_a_relay_stopped_with_sigterm_hands_its_job_over_at_once() -> Res {
    let ground = Ground::new();
    let gates = ground.gates();
    // A lease the clock never reaches: only A's release lets B in.
    let lease_ms = 10 * 60 * 1000;
    let grace_ms = 2_000;
    let mut a = ground.relay("a", lease_ms, grace_ms)?;
    let (_, answer) = a
        .client(ACCOUNT)
        .post("/jobs", &[("Idempotency-Key", "k-1")], "{}")?;
    let id = answer["job_id"].as_str().unwrap().to_owned();
    a.client(ACCOUNT)
        .wait_for_job(&id, |job| job["stage"] == "fetch")?;
    let mut b = ground.relay("b", lease_ms, grace_ms)?;
    let events = Events::of(b.client(ACCOUNT).events(&id, None)?);
    let mut seen = Vec::new();
    read_until(&events, &mut seen, &mut b, &id, |e| is_stage(e, "fetch"))?;

    // SIGTERM while the first stage works: A starts nothing new, and its run
    // goes on within the grace period: the stage ends and is recorded, the
    // next one starts.
    let pid = rustix::process::Pid::from_raw(i32::try_from(a.pid())?).ok_or("no pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    open_gate(&gates, &id, "fetch");
    read_until(&events, &mut seen, &mut b, &id, |e| is_stage(e, "process"))?;
    // The grace period ends by the clock, far before the lease: the run is
    // abandoned at the end of its stage under way, and the job handed over.
    ground
        .clock
        .advance(Duration::from_millis(grace_ms + 1_000))?;
    open_gate(&gates, &id, "process");
    read_until(&events, &mut seen, &mut b, &id, |e| e.kind == "handed_over")?;
    let status = a.wait_for_exit(Duration::from_secs(120))?;
    assert!(status.success(), "{status:?}");
    // B, woken by the handover, runs the rest: fetch is skipped with its
    // artifacts from the database.
    open_gate(&gates, &id, "store");
    rest(&events, &mut seen, &mut b, &id)?;
    assert_whole(&seen);
    assert_eq!(ran(&seen, "fetch"), 1, "fetch ran again: {seen:?}");
    assert!(
        seen.iter()
            .any(|e| e.kind == "stage_skipped" && e.data["stage"] == "fetch"),
        "{seen:?}"
    );
    assert!(
        ground.clock.try_now_ms()? < START_MS + lease_ms,
        "the lease ended"
    );
    let job: Value = b.client(ACCOUNT).job(&id)?;
    assert_eq!(job["status"], "complete", "{job}");
    Ok(())
}
