//! The `relay_server` example, started as a real process on a loopback port and
//! driven with a real HTTP client: duplicate requests charge once; an SSE client
//! that disconnects and reconnects with `Last-Event-ID` gets every event exactly
//! once; a server killed mid-job and restarted finishes the job; a second
//! `POST /index` gets 409 naming the holder; clients never see internal errors.
//!
//! And as a hostile client would try it: only bearer tokens of the tokens file
//! get in, and a job is seen only by its account; unfinished jobs per account
//! and open event streams are capped; a half-sent request is closed after the
//! header timeout; headers that are not printable ASCII are refused; no error
//! answer shows the store's key layout (every client of these tests checks
//! every error answer for it); a planted `relay.lock` link and an unsafe state
//! directory stop the relay.
//!
//! And as a service under load and at its end: two hundred open event streams
//! hold no thread each, and status and create requests go on beside them with
//! small pools; a resume point past a job's last event ends a finished job's
//! stream at once and is refused for a running job; SIGTERM ends every open
//! stream cleanly and exits 0.
//!
//! The jobs' stages wait for gate files (`--gate`) that the tests create, so
//! every step waits on state the server shows, never on time. Each test prints
//! one `relay_server:` line with what it saw.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobsafe::jobs::Job;
use serde_json::Value;

use self::common::relay::{
    INTERNAL_KEY_TEXTS, Relay, Res, SseEvent, relay_binary, token_of, wait_until, write_tokens,
};

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
        &["lic:dup"],
        &["--stage-ms", "0", "--credits", "5"],
        false,
    )?;
    let client = relay.client("lic:dup");
    let body = r#"{"kind":"transcribe"}"#;

    // A client retries one request three times.
    let mut ids = HashSet::new();
    let mut charged = Vec::new();
    for _ in 0..3 {
        let (status, answer) = client.post("/jobs", &[("Idempotency-Key", "k-1")], body)?;
        assert_eq!(status, 202, "{answer}");
        ids.insert(job_id(&answer));
        charged.push(answer["charged"].as_bool().unwrap());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(charged, [true, false, false]);

    // Eight duplicates at once, with the other header.
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| client.post("/jobs", &[("X-Job-Id", "k-2")], body)))
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
    assert_eq!(client.credits("lic:dup")?, 3);

    // The same key for another request is refused, and charges nothing.
    let (status, _) = client.post(
        "/jobs",
        &[("Idempotency-Key", "k-1")],
        r#"{"kind":"other"}"#,
    )?;
    assert_eq!(status, 422);

    // A kind no job can have is refused before anything is charged.
    let too_long = "k".repeat(Job::MAX_KIND_LEN + 1);
    for (key, kind) in [("k-empty", ""), ("k-long", too_long.as_str())] {
        let body = serde_json::json!({ "kind": kind }).to_string();
        let (status, _) = client.post("/jobs", &[("Idempotency-Key", key)], &body)?;
        assert_eq!(status, 400, "kind of {} bytes", kind.len());
    }
    assert_eq!(client.credits("lic:dup")?, 3);

    // Spend the rest; the next new job is refused, a retry is still free.
    for key in ["k-3", "k-4", "k-5"] {
        let (status, _) = client.post("/jobs", &[("Idempotency-Key", key)], body)?;
        assert_eq!(status, 202);
    }
    assert_eq!(client.credits("lic:dup")?, 0);
    let (status, _) = client.post("/jobs", &[("Idempotency-Key", "k-6")], body)?;
    assert_eq!(status, 402);
    let (status, answer) = client.post("/jobs", &[("Idempotency-Key", "k-1")], body)?;
    assert_eq!((status, answer["charged"].as_bool()), (202, Some(false)));

    // Every charged job runs to the end.
    let id = ids.into_iter().next().unwrap();
    let job = client.wait_for_job(&id, |job| job["status"] == "complete")?;
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
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:sse"],
        &["--gate", &gate_arg],
        false,
    )?;
    let client = relay.client("lic:sse");
    let (_, answer) = client.post("/jobs", &[("Idempotency-Key", "sse-1")], "{}")?;
    let id = job_id(&answer);

    // The first connection reads until the job waits in its first stage.
    let mut first = client.events(&id, None)?;
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
    client.wait_for_job(&id, |job| job["stage"] == "store")?;

    // It comes back: what it missed is replayed, then the rest comes live.
    let mut second = client.events(&id, Some(last_seen))?;
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
    let whole = client.events(&id, None)?.rest()?;
    assert_eq!(seen, whole);

    // A client that saw `done` and reconnects gets nothing more, and an end.
    let after_done = client.events(&id, Some(*ids.last().unwrap()))?.rest()?;
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
        let headers = [("Idempotency-Key", "restart-1")];

        let body = r#"{"input":"welcome to the show about crash safety"}"#;
        let first = Relay::start(&state, &["lic:r"], &options, false)?;
        let (_, answer) = first.client("lic:r").post("/jobs", &headers, body)?;
        let id = job_id(&answer);
        open_gate(&gates, &id, "fetch");
        first.client("lic:r").wait_for_job(&id, |job| {
            job["stage"] == "process" && job["stages_done"] == serde_json::json!(["fetch"])
        })?;
        first.kill(); // mid-job: in its second stage

        for stage in ["process", "store"] {
            open_gate(&gates, &id, stage);
        }
        let second = Relay::start(&state, &["lic:r"], &options, false)?;
        let second = second.client("lic:r");
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
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:i"],
        &["--gate", &gate_arg],
        false,
    )?;
    let client = relay.client("lic:i");
    let vault = r#"{"resource":"vault-1"}"#;
    let alice = [("X-Actor", "alice")];
    let bob = [("X-Actor", "bob")];

    let (status, started) = client.post("/index", &alice, vault)?;
    assert_eq!(status, 202, "{started}");
    let holder_job = job_id(&started);

    let (status, refused) = client.post("/index", &bob, vault)?;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["holder"]["job_id"], holder_job.as_str());
    assert_eq!(refused["holder"]["actor"], "alice");

    // The lock is per resource.
    let (status, other) = client.post("/index", &bob, r#"{"resource":"vault-2"}"#)?;
    assert_eq!(status, 202, "{other}");

    // Once the holder's job ends, its lock is released and a new one starts.
    for stage in STAGES {
        open_gate(&gates, &holder_job, stage);
    }
    client.wait_for_job(&holder_job, |job| job["status"] == "complete")?;
    let started_again = wait_until("the index lock's release", || {
        let (status, answer) = client.post("/index", &bob, vault)?;
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
        &["lic:f"],
        &["--stage-ms", "0", "--credits", "3"],
        false,
    )?;
    let client = relay.client("lic:f");
    let headers = [("Idempotency-Key", "fail-1")];
    let (_, answer) = client.post("/jobs", &headers, r#"{"fail_at":"process"}"#)?;
    let id = job_id(&answer);
    let job = client.wait_for_job(&id, |job| job["status"] == "failed")?;
    assert_eq!(
        job["error"]["message"],
        "the upstream service could not do this job"
    );
    assert_eq!(job["error"]["code"], "upstream_failed");

    let events = client.events(&id, None)?.rest()?;
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
        Ok((client.credits("lic:f")? == 3).then_some(()))
    })?;
    let (status, retried) = client.post("/jobs", &headers, r#"{"fail_at":"process"}"#)?;
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
        for option in [
            "--store",
            "--backend",
            "--listen",
            "--gate",
            "--lease-ms",
            "--pool-threads",
            "--max-blocking-threads",
        ] {
            assert!(usage.contains(option), "{flag} does not mention {option}");
        }
    }
    let out = std::process::Command::new(&relay).arg("--bogus").output()?;
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("unknown option --bogus"), "{error}");
    // jobsafe's pool needs two threads: one is refused before anything starts.
    let out = std::process::Command::new(&relay)
        .args(["--pool-threads", "1"])
        .output()?;
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("--pool-threads must be at least 2"),
        "{error}"
    );
    Ok(())
}

/// Starts the relay with `args` and returns what it printed on stderr, once it
/// exited; fails if it exited successfully or started listening.
fn start_expecting_refusal(args: &[&std::ffi::OsStr]) -> Res<String> {
    let mut process = Command::new(relay_binary(false)?)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Its stdout closes when it exits; a relay that starts says so first.
    let stdout = BufReader::new(process.stdout.take().ok_or("no stdout")?);
    for line in stdout.lines() {
        if line?.starts_with("listening on ") {
            let _ = process.kill();
            let _ = process.wait();
            return Err(format!("the relay started with {args:?}").into());
        }
    }
    let output = process.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        return Err(format!("the relay exited successfully with {args:?}: {stderr}").into());
    }
    Ok(stderr)
}

#[test]
fn only_known_tokens_get_in_and_a_job_is_seen_only_by_its_account() -> Res {
    let dir = tempfile::tempdir()?;
    let (_gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:a", "lic:b"],
        &["--gate", &gate_arg, "--credits", "5"],
        false,
    )?;
    let (a, b) = (relay.client("lic:a"), relay.client("lic:b"));

    // The account is the token's: X-Account is not read.
    let (status, answer) = a.post(
        "/jobs",
        &[("Idempotency-Key", "own-1"), ("X-Account", "lic:b")],
        "{}",
    )?;
    assert_eq!(status, 202, "{answer}");
    let id = job_id(&answer);
    assert_eq!((a.credits("lic:a")?, b.credits("lic:b")?), (4, 5));
    assert_eq!(a.job(&id)?["id"], id.as_str());

    // Another account gets what it would for a job that does not exist.
    let (status, theirs) = b.get(&format!("/jobs/{id}"))?;
    let (_, nobodys) = b.get(&format!("/jobs/{}", uuid::Uuid::now_v7()))?;
    assert_eq!((status, &theirs), (404, &nobodys));
    let refused = b
        .open_events(&id, None, &[])?
        .err()
        .map(|(status, _, _)| status);
    assert_eq!(refused, Some(404));
    let (status, _) = b.get("/accounts/lic:a")?;
    assert_eq!(status, 404, "another account's balance");

    // No token, a token of no account in the file, an account name as the
    // token, another scheme: 401 asking for a bearer token, nothing charged.
    let invented = token_of("lic:invented");
    let bearer = format!("Bearer {}", token_of("lic:a"));
    let anonymous = relay.client_with_token(None);
    let attempts: [(&str, Option<&str>); 5] = [
        ("no Authorization", None),
        ("an unknown token", Some(&invented)),
        ("an account name", Some("lic:a")),
        ("a Basic scheme", None),
        ("a token without its scheme", None),
    ];
    let basic = format!("Basic {}", token_of("lic:a"));
    let bare = token_of("lic:a");
    for (what, token) in attempts {
        let client = relay.client_with_token(token);
        let header: Vec<(&str, &str)> = match what {
            "a Basic scheme" => vec![("Authorization", basic.as_str())],
            "a token without its scheme" => vec![("Authorization", bare.as_str())],
            _ => vec![],
        };
        for (method, path) in [("POST", "/jobs".to_owned()), ("GET", format!("/jobs/{id}"))] {
            let (status, headers, _) = client.send(method, &path, &header, "{}")?;
            assert_eq!(status, 401, "{what}: {method} {path}");
            let challenge = headers.get("www-authenticate").map(|v| v.to_str().unwrap());
            assert_eq!(challenge, Some("Bearer"), "{what}");
        }
    }
    let (status, _, _) = anonymous.send("GET", "/accounts/lic:invented", &[], "")?;
    assert_eq!(status, 401);
    // The scheme's name is case-insensitive, as HTTP says.
    let lower = bearer.replacen("Bearer", "bearer", 1);
    let (status, _, _) = anonymous.send(
        "GET",
        &format!("/jobs/{id}"),
        &[("Authorization", &lower)],
        "",
    )?;
    assert_eq!(status, 200);
    assert_eq!((a.credits("lic:a")?, b.credits("lic:b")?), (4, 5));
    println!(
        "relay_server: tokens: another account's job and balance 404; no, unknown or malformed token 401 with WWW-Authenticate: Bearer; X-Account ignored"
    );
    Ok(())
}

#[test]
fn an_account_at_its_cap_of_unfinished_jobs_gets_429_until_one_ends() -> Res {
    let dir = tempfile::tempdir()?;
    let (gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:q", "lic:other"],
        &["--gate", &gate_arg, "--credits", "10", "--max-queued", "2"],
        false,
    )?;
    let (q, other) = (relay.client("lic:q"), relay.client("lic:other"));
    let post = |key: &str| q.post("/jobs", &[("Idempotency-Key", key)], "{}");

    let (_, first) = post("q-1")?;
    let first = job_id(&first);
    assert_eq!(post("q-2")?.0, 202);
    let (status, refused) = post("q-3")?;
    assert_eq!(status, 429, "{refused}");
    let (status, _) = q.post("/index", &[], r#"{"resource":"r"}"#)?;
    assert_eq!(status, 429, "an index job counts too");
    assert_eq!(q.credits("lic:q")?, 8, "a refused job costs nothing");

    // A retry of a charged request is never refused: it finds its job.
    let (status, retried) = post("q-1")?;
    assert_eq!((status, job_id(&retried)), (202, first.clone()));
    // The cap is per account.
    let (status, _) = other.post("/jobs", &[("Idempotency-Key", "q-1")], "{}")?;
    assert_eq!(status, 202);

    // Once a job ends, its slot is free again.
    for stage in STAGES {
        open_gate(&gates, &first, stage);
    }
    q.wait_for_job(&first, |job| job["status"] == "complete")?;
    wait_until("a free slot", || {
        let (status, answer) = post("q-3")?;
        match status {
            202 => Ok(Some(())),
            429 => Ok(None), // settled just after the job's final write
            _ => Err(format!("{status} {answer}").into()),
        }
    })?;
    assert_eq!(q.credits("lic:q")?, 7);
    println!(
        "relay_server: --max-queued 2: third job 429 with nothing charged, a retry still 202, free again once one ended"
    );
    Ok(())
}

#[test]
fn event_streams_beyond_the_cap_get_503_and_a_closed_one_frees_its_slot() -> Res {
    let dir = tempfile::tempdir()?;
    let (_gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:s"],
        &["--gate", &gate_arg, "--max-streams", "2"],
        false,
    )?;
    let client = relay.client("lic:s");
    // Its gates stay shut: the job and its streams never end.
    let (_, answer) = client.post("/jobs", &[], "{}")?;
    let id = job_id(&answer);

    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = client.events(&id, None)?;
        assert!(
            stream.next_event()?.is_some(),
            "a stream that serves events"
        );
        open.push(stream);
    }
    let Err((status, headers, _)) = client.open_events(&id, None, &[])? else {
        panic!("a third stream was opened beyond --max-streams 2");
    };
    assert_eq!(status, 503);
    let retry_after = headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{retry_after:?}"
    );

    // A client goes away: its slot is freed, and a new stream is served.
    drop(open.pop());
    let mut refusals = 0;
    let mut third = wait_until("a free stream slot", || {
        match client.open_events(&id, None, &[])? {
            Ok(stream) => Ok(Some(stream)),
            Err((503, _, _)) => {
                refusals += 1;
                Ok(None)
            }
            Err((status, _, answer)) => Err(format!("{status} {answer}").into()),
        }
    })?;
    assert!(third.next_event()?.is_some());
    println!(
        "relay_server: --max-streams 2: third stream 503 with Retry-After {}; served once one closed ({refusals} more 503s meanwhile)",
        retry_after.unwrap_or_default()
    );
    Ok(())
}

/// One account cannot take every stream slot: beyond its own cap it gets
/// 429, and another account still opens streams on its own jobs.
#[test]
fn an_account_at_its_cap_of_event_streams_gets_429_and_others_are_served() -> Res {
    let dir = tempfile::tempdir()?;
    let (_gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:greedy", "lic:other"],
        &[
            "--gate",
            &gate_arg,
            "--max-streams",
            "4",
            "--max-streams-per-account",
            "2",
        ],
        false,
    )?;
    let greedy = relay.client("lic:greedy");
    let other = relay.client("lic:other");
    // Their gates stay shut: the jobs and their streams never end.
    let greedy_job = job_id(&greedy.post("/jobs", &[], "{}")?.1);
    let other_job = job_id(&other.post("/jobs", &[], "{}")?.1);

    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = greedy.events(&greedy_job, None)?;
        assert!(stream.next_event()?.is_some());
        open.push(stream);
    }
    let Err((status, headers, answer)) = greedy.open_events(&greedy_job, None, &[])? else {
        panic!("a third stream of one account was opened beyond its cap of 2");
    };
    assert_eq!(status, 429, "{answer}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    assert!(answer["error"].is_string(), "{answer}");
    let mut theirs = other.events(&other_job, None)?;
    assert!(theirs.next_event()?.is_some());
    // A stream closed gives its account's slot back.
    drop(open.pop());
    let mut again = wait_until("the account's slot back", || {
        match greedy.open_events(&greedy_job, None, &[])? {
            Ok(stream) => Ok(Some(stream)),
            Err((429, _, _)) => Ok(None),
            Err((status, _, answer)) => Err(format!("{status} {answer}").into()),
        }
    })?;
    assert!(again.next_event()?.is_some());
    println!(
        "relay_server: --max-streams-per-account 2: a third stream of one account 429, another account served"
    );
    Ok(())
}

/// Requests axum itself would refuse in plain text get the relay's own JSON
/// error answers.
#[test]
fn malformed_paths_and_queries_get_json_errors() -> Res {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:j"],
        &["--stage-ms", "0"],
        false,
    )?;
    let client = relay.client("lic:j");
    let id = job_id(&client.post("/jobs", &[], "{}")?.1);
    for path in [
        format!("/jobs/{id}/events?after=-1"),
        format!("/jobs/{id}/events?after=x"),
        "/jobs/%ff%fe".to_owned(),
        "/jobs/%ff/events".to_owned(),
        "/accounts/%ff".to_owned(),
    ] {
        let (status, answer) = client.get(&path)?;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    println!("relay_server: malformed paths and queries: 400 with a JSON error each");
    Ok(())
}

/// Reads from `stream` until the server closes it, within `bound`: what it
/// sent, or an error if it kept the connection open.
fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Res<String> {
    stream.set_read_timeout(Some(bound))?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(String::from_utf8_lossy(&received).into_owned()),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(String::from_utf8_lossy(&received).into_owned());
            }
            Err(e) => return Err(format!("the connection stayed open for {bound:?}: {e}").into()),
        }
    }
}

#[test]
fn a_half_sent_request_is_closed_after_the_header_timeout_while_others_are_served() -> Res {
    const CONNECTIONS: usize = 4;
    let bound = Duration::from_secs(10);
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:t"],
        &[
            "--stage-ms",
            "0",
            "--header-timeout-ms",
            "1000",
            "--body-timeout-ms",
            "1000",
            "--max-connections",
            &CONNECTIONS.to_string(),
        ],
        false,
    )?;
    let addr = relay.base.strip_prefix("http://").unwrap().to_owned();

    // As many clients as the relay takes connections send half a request line
    // and then nothing.
    let started = Instant::now();
    let mut half_sent = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&addr)?;
        stream.write_all(b"GET /accounts/lic:t HT")?;
        half_sent.push(stream);
    }
    // A new client is served all the same.
    let client = relay.client("lic:t");
    assert_eq!(client.credits("lic:t")?, 100);
    // Each half-sent one is closed after the timeout, without an answer.
    for stream in &mut half_sent {
        let received = read_until_closed(stream, bound)?;
        assert!(
            received.is_empty() || received.starts_with("HTTP/1.1 408"),
            "{received:?}"
        );
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "{closed_after:?}"
    );

    // A kept-alive connection that idles after its answer is closed too.
    let mut idle = TcpStream::connect(&addr)?;
    let authorization = format!("Bearer {}", token_of("lic:t"));
    write!(
        idle,
        "GET /accounts/lic:t HTTP/1.1\r\nHost: relay\r\nAuthorization: {authorization}\r\n\r\n"
    )?;
    let answered = read_until_closed(&mut idle, bound)?;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered:?}");

    // A body that stops coming gets 408 after the body timeout.
    let mut slow = TcpStream::connect(&addr)?;
    write!(
        slow,
        "POST /jobs HTTP/1.1\r\nHost: relay\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"input\":"
    )?;
    let answered = read_until_closed(&mut slow, bound)?;
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered:?}");
    assert_eq!(client.credits("lic:t")?, 100, "nothing charged");
    println!(
        "relay_server: header timeout 1 s: {CONNECTIONS} half-sent requests closed after {:.1} s while a new client was served; idle keep-alive closed; stalled body 408",
        closed_after.as_secs_f64()
    );
    Ok(())
}

/// A client that sends requests and never reads the answers fills the
/// socket's buffers, and the relay's writes wait: without a bound, each such
/// connection is held for ever, and a few lock every other client out.
#[test]
fn a_client_that_stops_reading_is_closed_after_the_write_timeout_while_others_are_served() -> Res {
    const CONNECTIONS: usize = 2;
    let bound = Duration::from_secs(10);
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:a", "lic:b"],
        &[
            "--stage-ms",
            "0",
            "--write-timeout-ms",
            "1000",
            "--max-connections",
            &CONNECTIONS.to_string(),
        ],
        false,
    )?;
    let addr = relay.base.strip_prefix("http://").unwrap().to_owned();
    let request = format!(
        "GET /accounts/lic:a HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {}\r\n\r\n",
        token_of("lic:a")
    )
    .repeat(64);

    // As many clients as the relay takes connections pipeline requests and
    // read nothing, until the relay stops reading them (its answers wait) or
    // closes the connection.
    let mut stalled = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&addr)?;
        rustix::net::sockopt::set_socket_recv_buffer_size(&stream, 4096)?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut sent = 0usize;
        while let Ok(n) = stream.write(request.as_bytes()) {
            sent += n;
        }
        assert!(sent > request.len(), "the relay read {sent} bytes only");
        stalled.push(stream);
    }
    // A new client is served all the same: the stalled ones were closed.
    let client = relay.client("lic:b");
    let took = within(bound, "a request beside stalled clients", || {
        assert_eq!(client.credits("lic:b")?, 100);
        Ok(())
    })?;
    for stream in &mut stalled {
        read_until_closed(stream, bound)?;
    }
    println!(
        "relay_server: write timeout 1 s: {CONNECTIONS} clients that stopped reading closed; another served after {:.1} s",
        took.as_secs_f64()
    );
    Ok(())
}

#[test]
fn headers_the_relay_reads_are_refused_unless_printable_ascii_of_bounded_length() -> Res {
    let dir = tempfile::tempdir()?;
    let (_gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:h"],
        &["--gate", &gate_arg, "--credits", "5"],
        false,
    )?;
    let client = relay.client("lic:h");
    let (_, answer) = client.post("/jobs", &[("Idempotency-Key", "h-0")], "{}")?;
    let events = format!("/jobs/{}/events", job_id(&answer));
    let long_key = "k".repeat(129);
    let long_actor = "a".repeat(65);
    let cases = [
        ("POST", "/jobs", "Idempotency-Key", "clé-1"),
        ("POST", "/jobs", "Idempotency-Key", long_key.as_str()),
        ("POST", "/jobs", "Idempotency-Key", ""),
        ("POST", "/jobs", "X-Job-Id", "clé-2"),
        ("POST", "/index", "X-Actor", "zoë"),
        ("POST", "/index", "X-Actor", long_actor.as_str()),
        ("GET", events.as_str(), "Last-Event-ID", "٣"),
        ("GET", events.as_str(), "Last-Event-ID", "three"),
    ];
    for (method, path, name, value) in cases {
        // Sent twice: a retry must not be charged either.
        for _ in 0..2 {
            let (status, _, answer) = client.send(method, path, &[(name, value)], "{}")?;
            assert_eq!(status, 400, "{name}: {value:?}: {answer}");
            let message = answer["error"].as_str().unwrap();
            assert!(message.contains(name), "{message}");
        }
    }
    // Two values of one header: which one counts is ambiguous.
    let (status, _, _) = client.send(
        "POST",
        "/jobs",
        &[("Idempotency-Key", "h-1"), ("Idempotency-Key", "h-2")],
        "{}",
    )?;
    assert_eq!(status, 400);
    // The token's header itself, sent as raw bytes: the HTTP client refuses
    // to send it.
    let addr = relay.base.strip_prefix("http://").unwrap();
    let mut raw = TcpStream::connect(addr)?;
    raw.write_all(
        "POST /jobs HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer tökén-of-lic:h\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{}"
            .as_bytes(),
    )?;
    let answer = read_until_closed(&mut raw, Duration::from_secs(60))?;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid Authorization header"), "{answer}");
    // A request head over 16 KiB (one header the relay does not even read)
    // is refused before any handler runs.
    let mut huge = TcpStream::connect(addr)?;
    write!(
        huge,
        "POST /jobs HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {}\r\nX-Padding: {}\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        token_of("lic:h"),
        "p".repeat(20 * 1024)
    )?;
    let answer = read_until_closed(&mut huge, Duration::from_secs(60))?;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        client.credits("lic:h")?,
        4,
        "only the first job was charged"
    );
    println!(
        "relay_server: {} invalid Idempotency-Key, X-Job-Id, X-Actor, Last-Event-ID and Authorization headers: 400 naming the header, a 20 KiB head 431, nothing charged",
        cases.len() + 2
    );
    Ok(())
}

#[test]
fn no_error_answer_shows_the_stores_key_layout() -> Res {
    let dir = tempfile::tempdir()?;
    let (_gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:k"],
        &["--gate", &gate_arg, "--credits", "3", "--max-queued", "2"],
        false,
    )?;
    // Every answer below is checked by the client for the key layout.
    let client = relay.client("lic:k");
    let long = |n: usize| "x".repeat(n);
    let mut seen = Vec::new();
    let mut expect = |status: u16, got: (u16, Value)| {
        assert_eq!(got.0, status, "{}", got.1);
        let text = got.1.to_string();
        for internal in INTERNAL_KEY_TEXTS {
            assert!(!text.contains(internal), "{text}");
        }
        seen.push(status);
    };
    for path in [
        "/jobs/%00",
        "/jobs/not-a-job",
        "/jobs/%00/events",
        "/accounts/%00",
    ] {
        expect(404, client.get(path)?);
    }
    let json = |value: Value| value.to_string();
    let key = |k: &str| [("Idempotency-Key", k.to_owned())];
    let post = |key: &[(&str, String)], body: &str| {
        let headers: Vec<(&str, &str)> = key.iter().map(|(n, v)| (*n, v.as_str())).collect();
        client.post("/jobs", &headers, body)
    };
    expect(400, post(&key(&long(2000)), "{}")?);
    expect(
        400,
        post(
            &key("k-1"),
            &json(serde_json::json!({ "kind": long(2000) })),
        )?,
    );
    expect(
        400,
        post(
            &key("k-1"),
            &json(serde_json::json!({ "input": long(20 << 10) })),
        )?,
    );
    expect(
        400,
        post(
            &key("k-1"),
            &json(serde_json::json!({ "fail_at": long(2000) })),
        )?,
    );
    expect(400, post(&key("k-1"), "{not json")?);
    expect(
        413,
        post(
            &key("k-1"),
            &json(serde_json::json!({ "input": long(70 << 10) })),
        )?,
    );
    expect(
        400,
        client.post(
            "/index",
            &[],
            &json(serde_json::json!({ "resource": long(2000) })),
        )?,
    );
    expect(
        400,
        client.post("/index", &[("X-Actor", &long(2000))], "{}")?,
    );
    expect(202, post(&key("k-1"), "{}")?);
    expect(422, post(&key("k-1"), r#"{"kind":"other"}"#)?);
    expect(202, post(&key("k-2"), "{}")?);
    expect(429, post(&key("k-3"), "{}")?);
    println!(
        "relay_server: {} error answers (404, 400, 413, 422, 429) to hostile requests, none showing the store's keys",
        seen.iter().filter(|status| **status >= 400).count()
    );
    Ok(())
}

#[test]
fn a_planted_lock_link_and_an_unsafe_state_directory_stop_the_relay() -> Res {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &["lic:l"])?;
    let private_dir = |name: &str| -> Res<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::create_dir(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(path)
    };
    let start = |state: &Path| {
        start_expecting_refusal(&[
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--store".as_ref(),
            state.as_os_str(),
        ])
    };

    // Another user's link to a file of theirs, where the relay takes its lock.
    let target = dir.path().join("precious");
    std::fs::write(&target, b"keep me")?;
    let before = std::fs::metadata(&target)?;
    let state = private_dir("planted")?;
    std::os::unix::fs::symlink(&target, state.join("relay.lock"))?;
    let error = start(&state)?;
    assert!(
        error.contains("relay.lock") && error.contains("symbolic link"),
        "{error}"
    );
    let after = std::fs::metadata(&target)?;
    assert_eq!(std::fs::read(&target)?, b"keep me");
    assert_eq!(
        (after.modified()?, after.permissions().mode()),
        (before.modified()?, before.permissions().mode())
    );

    // The state directory itself a link.
    let real = private_dir("real")?;
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link)?;
    let error = start(&link)?;
    assert!(error.contains("symbolic link"), "{error}");
    assert!(
        !real.join("store").exists(),
        "nothing made through the link"
    );

    // Writable by other users.
    let shared = private_dir("shared")?;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777))?;
    let error = start(&shared)?;
    assert!(error.contains("writable by other users"), "{error}");
    assert!(!shared.join("relay.lock").exists());
    println!(
        "relay_server: planted relay.lock link refused, its target untouched; a linked or world-writable state directory refused"
    );
    Ok(())
}

#[test]
fn the_relay_needs_a_well_formed_tokens_file() -> Res {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let error = start_expecting_refusal(&["--store".as_ref(), state.as_os_str()])?;
    assert!(error.contains("--tokens"), "{error}");

    let good = format!("lic:a {}", token_of("lic:a"));
    let cases = [
        (format!("# accounts\n{good}\nlic:b\n"), "line 3"),
        ("lic:a short\n".to_owned(), "line 1"),
        (format!("{good}\n\n{good}\n"), "line 3"),
        (format!("{good}\nlic:b {}\n", token_of("lic:a")), "line 2"),
        ("# no accounts\n".to_owned(), "no accounts"),
    ];
    let tokens = dir.path().join("tokens");
    for (text, expected) in &cases {
        std::fs::write(&tokens, text)?;
        let error = start_expecting_refusal(&[
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--store".as_ref(),
            state.as_os_str(),
        ])?;
        assert!(error.contains(expected), "{text:?}: {error}");
    }
    // A file another user could have written, and a FIFO, which is refused
    // without waiting for a writer.
    std::fs::write(&tokens, format!("{good}\n"))?;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o666))?;
    let error = start_expecting_refusal(&[
        "--tokens".as_ref(),
        tokens.as_os_str(),
        "--store".as_ref(),
        state.as_os_str(),
    ])?;
    assert!(error.contains("writable by other users"), "{error}");
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )?;
    let error = start_expecting_refusal(&[
        "--tokens".as_ref(),
        fifo.as_os_str(),
        "--store".as_ref(),
        state.as_os_str(),
    ])?;
    assert!(error.contains("not a regular file"), "{error}");
    println!(
        "relay_server: no --tokens, {} malformed tokens files, each refused naming the line, \
         a world-writable one and a FIFO refused",
        cases.len()
    );
    Ok(())
}

/// The number of threads of process `pid`, from `/proc`.
fn thread_count(pid: u32) -> Res<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .ok_or("no Threads: line in /proc/PID/status")?;
    Ok(threads.trim().parse()?)
}

/// Runs `request`, failing if it takes `bound` or more: how long it took.
fn within(bound: Duration, what: &str, request: impl FnOnce() -> Res) -> Res<Duration> {
    let started = Instant::now();
    request()?;
    let took = started.elapsed();
    if took >= bound {
        return Err(format!("{what} took {took:?}").into());
    }
    Ok(took)
}

#[test]
fn two_hundred_open_event_streams_hold_no_thread_each_and_requests_go_on() -> Res {
    const STREAMS: usize = 200;
    const JOBS: usize = 4;
    // Only a stuck server misses it.
    let bound = Duration::from_secs(10);
    let dir = tempfile::tempdir()?;
    let (gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:p"],
        &[
            "--gate",
            &gate_arg,
            "--workers",
            &JOBS.to_string(),
            "--pool-threads",
            "2",
            "--max-blocking-threads",
            "8",
            "--max-streams",
            "256",
            "--max-streams-per-account",
            "256",
            "--max-connections",
            "512",
            "--max-queued",
            "64",
        ],
        false,
    )?;
    let client = relay.client("lic:p");
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let (status, answer) = client.post("/jobs", &[], "{}")?;
        assert_eq!(status, 202, "{answer}");
        ids.push(job_id(&answer));
    }
    // Every job waits in its first stage: its streams wait for it.
    for id in &ids {
        client.wait_for_job(id, |job| job["stage"] == "fetch")?;
    }
    let mut streams = Vec::new();
    for n in 0..STREAMS {
        let mut stream = client.events(&ids[n % JOBS], None)?;
        assert!(stream.next_event()?.is_some(), "stream {n} is served");
        streams.push(stream);
    }
    let mut threads = thread_count(relay.pid())?;

    // Beside them, status and create requests are answered.
    let mut slowest_status = Duration::ZERO;
    let mut slowest_create = Duration::ZERO;
    for round in 0..5 {
        for id in &ids[..JOBS] {
            let took = within(bound, "GET /jobs/{id}", || {
                let job = client.job(id)?;
                assert_eq!(job["status"], "running", "{job}");
                Ok(())
            })?;
            slowest_status = slowest_status.max(took);
        }
        let took = within(bound, "POST /jobs", || {
            let (status, answer) = client.post("/jobs", &[], "{}")?;
            assert_eq!(status, 202, "round {round}: {answer}");
            ids.push(job_id(&answer));
            Ok(())
        })?;
        slowest_create = slowest_create.max(took);
    }
    threads = threads.max(thread_count(relay.pid())?);
    assert!(
        threads < 64,
        "{threads} threads with {STREAMS} streams open: a thread per stream?"
    );

    // The jobs move on: every stream ends after its job's terminal event.
    for stage in STAGES {
        std::fs::write(gates.join(stage), b"")?;
    }
    for (n, stream) in streams.iter_mut().enumerate() {
        let rest = stream.rest()?;
        let last = rest.last().map(|event| event.kind.as_str());
        assert_eq!(last, Some("done"), "stream {n}: {rest:?}");
    }
    for id in &ids {
        client.wait_for_job(id, |job| job["status"] == "complete")?;
    }
    println!(
        "relay_server: {STREAMS} SSE streams open on {JOBS} jobs with --pool-threads 2 --max-blocking-threads 8: {threads} threads in the relay; slowest status {} ms, slowest create {} ms; every stream ended after done",
        slowest_status.as_millis(),
        slowest_create.as_millis()
    );
    Ok(())
}

#[test]
fn a_resume_point_past_the_last_event_ends_a_finished_stream_and_is_refused_for_a_running_job()
-> Res {
    let dir = tempfile::tempdir()?;
    let (gates, gate_arg) = gated(dir.path());
    let relay = Relay::start(
        &dir.path().join("state"),
        &["lic:e"],
        &["--gate", &gate_arg],
        false,
    )?;
    let client = relay.client("lic:e");
    let (_, finished) = client.post("/jobs", &[], "{}")?;
    let finished = job_id(&finished);
    for stage in STAGES {
        open_gate(&gates, &finished, stage);
    }
    client.wait_for_job(&finished, |job| job["status"] == "complete")?;
    let (_, running) = client.post("/jobs", &[], "{}")?;
    let running = job_id(&running);
    client.wait_for_job(&running, |job| job["stage"] == "fetch")?;

    // A finished job: 200, and the stream ends at once with no event.
    let last = client.events(&finished, None)?.rest()?.last().unwrap().id;
    for after in [last + 1, 1000] {
        let events = client.events(&finished, Some(after))?.rest()?;
        assert!(events.is_empty(), "after {after}: {events:?}");
    }
    let (status, _, body) = client.send(
        "GET",
        &format!("/jobs/{finished}/events?after=1000"),
        &[],
        "",
    )?;
    assert_eq!((status, body), (200, Value::Null), "?after=1000");

    // A running job: 400, with a message that names nothing of the store
    // (the client checks every error answer for its key layout).
    let Err((status, _, refused)) = client.open_events(&running, Some(1000), &[])? else {
        panic!("a stream resumed past the last event of a running job");
    };
    assert_eq!(status, 400, "{refused}");
    let message = refused["error"].as_str().unwrap().to_owned();
    assert!(!message.contains(&running), "{message}");
    let (status, _, _) = client.send(
        "GET",
        &format!("/jobs/{running}/events?after=1000"),
        &[],
        "",
    )?;
    assert_eq!(status, 400, "?after=1000");
    // From an event it has, the running job's stream goes on as before.
    let mut resumed = client.events(&running, Some(1))?;
    assert_eq!(resumed.next_event()?.map(|event| event.id), Some(2));
    println!(
        "relay_server: resume past the last event: finished job 200 with no events (Last-Event-ID {}, 1000, ?after=1000); running job 400 {message:?}",
        last + 1
    );
    Ok(())
}

#[test]
fn sigterm_ends_every_open_event_stream_cleanly_and_exits_0() -> Res {
    const STREAMS: usize = 3;
    let bound = Duration::from_secs(10);
    let dir = tempfile::tempdir()?;
    let (gates, gate_arg) = gated(dir.path());
    let state = dir.path().join("state");
    let options = ["--gate", gate_arg.as_str()];
    let mut relay = Relay::start(&state, &["lic:z"], &options, false)?;
    let client = relay.client("lic:z");
    let (_, answer) = client.post("/jobs", &[], "{}")?;
    let id = job_id(&answer);
    client.wait_for_job(&id, |job| job["stage"] == "fetch")?;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut stream = client.events(&id, None)?;
        // Read up to the event of the stage the job waits in: nothing more
        // is due until the relay stops.
        while let Some(event) = stream.next_event()? {
            if event.kind == "stage" && event.data["stage"] == "fetch" {
                break;
            }
        }
        streams.push(stream);
    }

    let pid = rustix::process::Pid::from_raw(i32::try_from(relay.pid())?).ok_or("no pid")?;
    let signalled = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    // Each response ends as a response does: a read of its end, not an
    // error (a reset, or a body cut short).
    for (n, stream) in streams.iter_mut().enumerate() {
        let rest = stream
            .rest()
            .map_err(|e| format!("stream {n} did not end cleanly: {e}"))?;
        assert!(rest.is_empty(), "stream {n}: {rest:?}");
    }
    let ended_after = signalled.elapsed();
    let exit = relay.wait_for_exit(bound)?;
    let exited_after = signalled.elapsed();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    assert!(exited_after < bound, "{exited_after:?}");

    // The job it left in its first stage resumes at the next start.
    for stage in STAGES {
        open_gate(&gates, &id, stage);
    }
    let again = Relay::start(&state, &["lic:z"], &options, false)?;
    let job = again
        .client("lic:z")
        .wait_for_job(&id, |job| job["status"] == "complete")?;
    assert_eq!(job["stages_done"], serde_json::json!(STAGES));
    println!(
        "relay_server: SIGTERM with {STREAMS} event streams open: each ended cleanly after {} ms, exit 0 after {} ms; its job completed after a restart",
        ended_after.as_millis(),
        exited_after.as_millis()
    );
    Ok(())
}
