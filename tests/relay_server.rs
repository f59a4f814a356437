//! The `relay_server` example, started as a real process on a loopback port and
//! driven with a real HTTP client: duplicate requests charge once; an SSE client
//! that disconnects and reconnects with `Last-Event-ID` gets every event exactly
//! once; a server killed mid-job and restarted finishes the job; a second
//! `POST /index` gets 409 naming the holder; clients never see internal errors.
//!
//! The jobs' stages wait for gate files (`--gate`) that the tests create, so
//! every step waits on state the server shows, never on time. Each test prints
//! one `relay_server:` line with what it saw.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::path::Path;

use jobsafe::jobs::Job;
use serde_json::Value;

use self::common::relay::{Relay, Res, SseEvent, wait_until};

const STAGES: [&str; 3] = ["fetch", "process", "store"];

/// The id in a `POST /jobs` answer.
fn job_id(answer: &Value) -> String {
    answer["job_id"].as_str().unwrap().to_owned()
}

/// Lets stage `stage` of job `job` finish.
fn open_gate(gates: &Path, job: &str, stage: &str) {
    std::fs::write(gates.join(format!("{job}.{stage}")), b"").unwrap();
}

fn gated(dir: &Path) -> (std::path::PathBuf, String) {
    let gates = dir.join("gates");
    std::fs::create_dir_all(&gates).unwrap();
    (gates.clone(), gates.display().to_string())
}

#[test]
fn duplicate_requests_charge_once() -> Res {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(
        &dir.path().join("state"),
        &["--stage-ms", "0", "--credits", "5"],
        false,
    )?;
    let account = ("X-Account", "lic:dup");
    let body = r#"{"kind":"transcribe"}"#;

    // A client retries one request three times.
    let mut ids = HashSet::new();
    let mut charged = Vec::new();
    for _ in 0..3 {
        let (status, answer) = relay.post("/jobs", &[account, ("Idempotency-Key", "k-1")], body)?;
        assert_eq!(status, 202, "{answer}");
        ids.insert(job_id(&answer));
        charged.push(answer["charged"].as_bool().unwrap());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(charged, [true, false, false]);

    // Eight duplicates at once, with the other header.
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| relay.post("/jobs", &[account, ("X-Job-Id", "k-2")], body)))
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().unwrap().unwrap())
            .collect()
    });
    assert!(answers.iter().all(|(status, _)| *status == 202));
    let ids: HashSet<String> = answers.iter().map(|(_, a)| job_id(a)).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let charges = answers.iter().filter(|(_, a)| a["charged"] == true).count();
    assert_eq!(charges, 1, "{answers:?}");
    assert_eq!(relay.credits("lic:dup")?, 3);

    // The same key for another request is refused, and charges nothing.
    let (status, _) = relay.post(
        "/jobs",
        &[account, ("Idempotency-Key", "k-1")],
        r#"{"kind":"other"}"#,
    )?;
    assert_eq!(status, 422);

    // A kind no job can have is refused before anything is charged.
    let too_long = "k".repeat(Job::MAX_KIND_LEN + 1);
    for (key, kind) in [("k-empty", ""), ("k-long", too_long.as_str())] {
        let body = serde_json::json!({ "kind": kind }).to_string();
        let (status, _) = relay.post("/jobs", &[account, ("Idempotency-Key", key)], &body)?;
        assert_eq!(status, 400, "kind of {} bytes", kind.len());
    }
    assert_eq!(relay.credits("lic:dup")?, 3);

    // Spend the rest; the next new job is refused, a retry is still free.
    for key in ["k-3", "k-4", "k-5"] {
        let (status, _) = relay.post("/jobs", &[account, ("Idempotency-Key", key)], body)?;
        assert_eq!(status, 202);
    }
    assert_eq!(relay.credits("lic:dup")?, 0);
    let (status, _) = relay.post("/jobs", &[account, ("Idempotency-Key", "k-6")], body)?;
    assert_eq!(status, 402);
    let (status, answer) = relay.post("/jobs", &[account, ("Idempotency-Key", "k-1")], body)?;
    assert_eq!((status, answer["charged"].as_bool()), (202, Some(false)));

    // Every charged job runs to the end.
    let id = ids.into_iter().next().unwrap();
    let job = relay.wait_for_job(&id, |job| job["status"] == "complete")?;
    assert_eq!(job["stages_done"], serde_json::json!(STAGES));
    let summary = serde_json::json!({ "title": "AN EPISODE ABOUT DURABLE", "words": 6 });
    assert_eq!(job["result"], summary);
    println!("relay_server: 11 requests for 2 idempotency keys charged 2 credits; 5 keys spent 5");
    Ok(())
}

#[test]
fn an_sse_client_that_reconnects_with_last_event_id_gets_every_event_once() -> Res {
    let dir = tempfile::tempdir()?;
    let (gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(&dir.path().join("state"), &["--gate", &gate_arg], false)?;
    let (_, answer) = relay.post("/jobs", &[("Idempotency-Key", "sse-1")], "{}")?;
    let id = job_id(&answer);

    // The first connection reads until the job waits in its first stage.
    let mut first = relay.events(&id, None)?;
    let mut seen: Vec<SseEvent> = Vec::new();
    while let Some(event) = first.next_event()? {
        let waiting = event.kind == "stage" && event.data["stage"] == "fetch";
        seen.push(event);
        if waiting {
            break;
        }
    }
    let last_seen = seen.last().unwrap().id;
    drop(first); // the client goes away

    // While it is away, two stages pass.
    open_gate(&gates, &id, "fetch");
    open_gate(&gates, &id, "process");
    relay.wait_for_job(&id, |job| job["stage"] == "store")?;

    // It comes back: what it missed is replayed, then the rest comes live.
    let mut second = relay.events(&id, Some(last_seen))?;
    let mut replayed = Vec::new();
    while let Some(event) = second.next_event()? {
        let waiting = event.kind == "stage" && event.data["stage"] == "store";
        replayed.push(event);
        if waiting {
            break;
        }
    }
    open_gate(&gates, &id, "store");
    let live = second.rest()?;
    let replayed_count = replayed.len();
    seen.extend(replayed);
    seen.extend(live);

    let ids: Vec<u64> = seen.iter().map(|e| e.id).collect();
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, expected, "every event once, in order, no gap");
    assert_eq!(seen.last().unwrap().kind, "done");
    // The same events as one uninterrupted stream from the start.
    let whole = relay.events(&id, None)?.rest()?;
    assert_eq!(seen, whole);

    // A client that saw `done` and reconnects gets nothing more, and an end.
    let after_done = relay.events(&id, Some(*ids.last().unwrap()))?.rest()?;
    assert!(after_done.is_empty(), "{after_done:?}");
    println!(
        "relay_server: SSE reconnect after event {last_seen}: {replayed_count} replayed, {} events in all, each once",
        ids.len()
    );
    Ok(())
}

#[test]
fn a_job_survives_its_server_being_killed_and_restarted() -> Res {
    for backend in ["log", "dir"] {
        let dir = tempfile::tempdir()?;
        let (gates, gate_arg) = gated(dir.path());
        let state = dir.path().join("state");
        let options = [
            "--gate",
            gate_arg.as_str(),
            "--backend",
            backend,
            "--credits",
            "10",
        ];
        let headers = [("Idempotency-Key", "restart-1"), ("X-Account", "lic:r")];

        let body = r#"{"input":"welcome to the show about crash safety"}"#;
        let first = Relay::start(&state, &options, false)?;
        let (_, answer) = first.post("/jobs", &headers, body)?;
        let id = job_id(&answer);
        open_gate(&gates, &id, "fetch");
        first.wait_for_job(&id, |job| {
            job["stage"] == "process" && job["stages_done"] == serde_json::json!(["fetch"])
        })?;
        first.kill(); // mid-job: in its second stage

        for stage in ["process", "store"] {
            open_gate(&gates, &id, stage);
        }
        let second = Relay::start(&state, &options, false)?;
        // The client, polling the same id, gets the final state.
        let job = second.wait_for_job(&id, |job| job["status"] == "complete")?;
        assert_eq!(job["stages_done"], serde_json::json!(STAGES));
        assert_eq!(job["attempt"], 2, "resumed as a second attempt: {job}");
        // Computed from the artifacts of both processes' stages.
        let summary = serde_json::json!({ "title": "WELCOME TO THE SHOW", "words": 7 });
        assert_eq!(job["result"], summary);

        // The stage finished before the kill was not run again.
        let events = second.events(&id, None)?.rest()?;
        let skipped: Vec<&Value> = events
            .iter()
            .filter(|e| e.kind == "stage_skipped")
            .map(|e| &e.data["stage"])
            .collect();
        assert_eq!(skipped, ["fetch"], "{events:?}");
        let done: Vec<&SseEvent> = events.iter().filter(|e| e.kind == "done").collect();
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].data, summary,
            "the done event carries the result itself"
        );

        // The charge survived the restart: once, and a retry is still free.
        assert_eq!(second.credits("lic:r")?, 9);
        let (status, again) = second.post("/jobs", &headers, body)?;
        assert_eq!((status, job_id(&again)), (202, id.clone()));
        assert_eq!(again["charged"], false);
        assert_eq!(second.credits("lic:r")?, 9);
        println!(
            "relay_server: {backend} store: killed in stage process, restarted, complete at attempt 2 with fetch skipped; charged once"
        );
    }
    Ok(())
}

#[test]
fn a_second_index_request_gets_409_naming_the_holder() -> Res {
    let dir = tempfile::tempdir()?;
    let (gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(&dir.path().join("state"), &["--gate", &gate_arg], false)?;
    let vault = r#"{"resource":"vault-1"}"#;
    let alice = [("X-Account", "lic:i"), ("X-Actor", "alice")];
    let bob = [("X-Account", "lic:i"), ("X-Actor", "bob")];

    let (status, started) = relay.post("/index", &alice, vault)?;
    assert_eq!(status, 202, "{started}");
    let holder_job = job_id(&started);

    let (status, refused) = relay.post("/index", &bob, vault)?;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["holder"]["job_id"], holder_job.as_str());
    assert_eq!(refused["holder"]["actor"], "alice");

    // The lock is per resource.
    let (status, other) = relay.post("/index", &bob, r#"{"resource":"vault-2"}"#)?;
    assert_eq!(status, 202, "{other}");

    // Once the holder's job ends, its lock is released and a new one starts.
    for stage in STAGES {
        open_gate(&gates, &holder_job, stage);
    }
    relay.wait_for_job(&holder_job, |job| job["status"] == "complete")?;
    let started_again = wait_until("the index lock's release", || {
        let (status, answer) = relay.post("/index", &bob, vault)?;
        match status {
            202 => Ok(Some(answer)),
            // Released just after the job's final write.
            409 if answer["holder"]["job_id"] == holder_job.as_str() => Ok(None),
            _ => Err(format!("{status} {answer}").into()),
        }
    })?;
    assert_ne!(job_id(&started_again), holder_job);
    println!("relay_server: second POST /index got 409 naming alice's job; free again after it");
    Ok(())
}

#[test]
fn a_failed_job_shows_clients_no_internal_error_and_refunds_its_credit() -> Res {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(
        &dir.path().join("state"),
        &["--stage-ms", "0", "--credits", "3"],
        false,
    )?;
    let headers = [("Idempotency-Key", "fail-1"), ("X-Account", "lic:f")];
    let (_, answer) = relay.post("/jobs", &headers, r#"{"fail_at":"process"}"#)?;
    let id = job_id(&answer);
    let job = relay.wait_for_job(&id, |job| job["status"] == "failed")?;
    assert_eq!(
        job["error"]["message"],
        "the upstream service could not do this job"
    );
    assert_eq!(job["error"]["code"], "upstream_failed");

    let events = relay.events(&id, None)?.rest()?;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "error");
    // The internal message names a host: nothing a client gets may contain it.
    // Not a bare "503", which a timestamp or an id may hold by chance.
    for text in [job.to_string(), format!("{events:?}")] {
        assert!(!text.contains("asr-3"), "internal text leaked: {text}");
        assert!(
            !text.contains("upstream 503"),
            "internal text leaked: {text}"
        );
    }

    // The credit comes back once the job failed; the key is then new again.
    wait_until("the refund", || {
        Ok((relay.credits("lic:f")? == 3).then_some(()))
    })?;
    let (status, retried) = relay.post("/jobs", &headers, r#"{"fail_at":"process"}"#)?;
    assert_eq!(status, 202);
    assert_eq!(retried["charged"], true);
    assert_ne!(job_id(&retried), id);
    println!("relay_server: failed job shows only its client message; its credit was refunded");
    Ok(())
}

#[test]
fn the_relay_explains_its_options_on_help_and_names_an_unknown_one() -> Res {
    let relay = common::relay::relay_binary(false)?;
    for flag in ["--help", "-h"] {
        let out = std::process::Command::new(&relay).arg(flag).output()?;
        assert!(out.status.success(), "{flag}: {out:?}");
        let usage = String::from_utf8(out.stdout)?;
        assert!(usage.starts_with("usage: relay_server"), "{usage}");
        for option in ["--store", "--backend", "--listen", "--gate", "--lease-ms"] {
            assert!(usage.contains(option), "{flag} does not mention {option}");
        }
    }
    let out = std::process::Command::new(&relay).arg("--bogus").output()?;
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("unknown option --bogus"), "{error}");
    Ok(())
}
