//! The `relay_server` example as a real process on a loopback port, and a real
//! HTTP client for it (ureq), for its integration tests and its load bench.
//!
//! Cargo gives tests no path to an example's binary, so [`relay_binary`] builds
//! it with the same cargo that runs the tests (`cargo build -p jobsafe
//! --example relay_server --message-format=json`) and takes the path from
//! cargo's own report of the artifact: right whatever the target directory,
//! profile or platform, and a no-op when it is up to date. Cargo holds its build
//! lock only while compiling, so this works from inside `cargo test` and from
//! the load bench's `cargo bench -p jobsafe-bench` (a crate of the same
//! workspace, whose `postgres` feature turns on the library's).
//!
//! Waits are bounded ([`WAIT_BOUND`]) only so that a hung server fails instead
//! of hanging; no result depends on timing.
//!
//! The relay starts with a tokens file of the accounts a test names, each with
//! the token [`token_of`] gives it; a [`Client`] acts for one account (or none)
//! and fails on any error answer that shows an internal key.

use std::error::Error;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// What the harness returns: any error, with a message that says what failed.
pub type Res<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// How long a wait may last before it counts as a hang.
pub const WAIT_BOUND: Duration = Duration::from_secs(120);

/// Calls `check` until it returns `Some`, and returns that; fails with `what`
/// after [`WAIT_BOUND`].
pub fn wait_until<T>(what: &str, mut check: impl FnMut() -> Res<Option<T>>) -> Res<T> {
    let started = Instant::now();
    loop {
        if let Some(found) = check()? {
            return Ok(found);
        }
        if started.elapsed() > WAIT_BOUND {
            return Err(format!("waited {WAIT_BOUND:?} for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The example's binary, built once per process (`release` for the bench).
pub fn relay_binary(release: bool) -> Res<PathBuf> {
    static DEBUG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static RELEASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = if release { &RELEASE } else { &DEBUG };
    cell.get_or_init(|| example_binary("relay_server", release).map_err(|e| e.to_string()))
        .clone()
        .map_err(Into::into)
}

/// Builds the example `name` (with this binary's features, so that the library
/// is not built twice) and returns the path of its executable.
pub fn example_binary(name: &str, release: bool) -> Res<PathBuf> {
    let mut cargo = Command::new(env!("CARGO"));
    // `-p jobsafe`: the example belongs to the root crate, and the load bench
    // runs it from the bench crate of the same workspace.
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "-p",
        "jobsafe",
        "--example",
        name,
        "--message-format=json",
    ]);
    if release {
        cargo.arg("--release");
    }
    // The same features as this binary: the library is not built twice. (The
    // load bench, a package without a `cli` feature, includes this file too.)
    #[allow(unexpected_cfgs)]
    let features: Vec<&str> = [
        ("postgres", cfg!(feature = "postgres")),
        ("cli", cfg!(feature = "cli")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    if !features.is_empty() {
        cargo.args(["--features", &features.join(",")]);
    }
    let output = cargo.stderr(Stdio::piped()).output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p jobsafe --example {name} failed:
{}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == name
            && let Some(path) = message["executable"].as_str()
        {
            return Ok(PathBuf::from(path));
        }
    }
    Err(format!("cargo built {name} but reported no executable").into())
}

/// Texts of the store's internal key layout, which no answer to a client may
/// contain (a JSON body shows a NUL as `\u0000`).
pub const INTERNAL_KEY_TEXTS: [&str; 6] = [
    "\0",
    "\\u0000",
    "ledger/",
    "pipeline/",
    "jobs/job",
    "credits/",
];

/// The token the test harness gives `account` in the relay's tokens file.
pub fn token_of(account: &str) -> String {
    format!("test-token-of-{account}")
}

/// Writes a tokens file for `accounts` at `path`.
pub fn write_tokens(path: &Path, accounts: &[&str]) -> Res {
    let lines: String = accounts
        .iter()
        .map(|account| format!("{account} {}\n", token_of(account)))
        .collect();
    std::fs::write(path, lines)?;
    // Readable by this user only, as the relay asks of a tokens file.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

/// A running relay server.
pub struct Relay {
    process: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stderr: Option<JoinHandle<String>>,
    agent: ureq::Agent,
}

impl Relay {
    /// Starts the relay on state directory `state` (on a free loopback port)
    /// for `accounts` (their tokens file is written beside `state`), with
    /// `options` (`--gate DIR`, `--stage-ms N`, ...), and waits until it
    /// listens.
    pub fn start(state: &Path, accounts: &[&str], options: &[&str], release: bool) -> Res<Relay> {
        let tokens = state.with_extension("tokens");
        write_tokens(&tokens, accounts)?;
        let mut process = Command::new(relay_binary(release)?)
            .arg("--store")
            .arg(state)
            .arg("--tokens")
            .arg(&tokens)
            .args(["--listen", "127.0.0.1:0"])
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stderr_pipe = process.stderr.take().ok_or("no stderr")?;
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        let stdout = process.stdout.take().ok_or("no stdout")?;
        let mut relay = Relay {
            process,
            base: String::new(),
            stderr: Some(stderr),
            agent: agent(),
        };
        // The first lines say what it resumed, then where it listens. The pipe
        // closes if it dies first.
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        relay.base = addr.to_owned();
                        break;
                    }
                }
                _ => return Err(relay.failure("exited before listening").into()),
            }
        }
        // Keep draining stdout so that the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(relay)
    }

    /// Kills the server with SIGKILL: no destructor, no flush, a crash.
    pub fn kill(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Waits for the server to exit on its own, at most `bound`: its exit
    /// status, or an error with its stderr if it is still running then.
    pub fn wait_for_exit(&mut self, bound: Duration) -> Res<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > bound {
                return Err(self.failure(&format!("still ran {bound:?} later")).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What went wrong, with everything the server printed to stderr.
    pub fn failure(&mut self, what: &str) -> String {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default();
        format!("relay server {what}; its stderr:\n{stderr}")
    }

    /// A client acting for `account`, with the token the harness gave it.
    pub fn client(&self, account: &str) -> Client<'_> {
        self.client_with_token(Some(&token_of(account)))
    }

    /// A client sending `token` as its bearer token, or no `Authorization`
    /// header at all.
    pub fn client_with_token(&self, token: Option<&str>) -> Client<'_> {
        Client {
            relay: self,
            authorization: token.map(|token| format!("Bearer {token}")),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Never leave a server running after a test, passed or failed.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A client of a [`Relay`], acting for the account of its token.
pub struct Client<'a> {
    relay: &'a Relay,
    /// The `Authorization` header's value, if it sends one.
    authorization: Option<String>,
}

impl Client<'_> {
    /// `POST path` with `headers` and a JSON `body`: the status and the JSON
    /// answer.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Res<(u16, Value)> {
        let (status, _, answer) = self.send("POST", path, headers, body)?;
        Ok((status, answer))
    }

    /// `GET path`: the status and the JSON answer.
    pub fn get(&self, path: &str) -> Res<(u16, Value)> {
        let (status, _, answer) = self.send("GET", path, &[], "")?;
        Ok((status, answer))
    }

    /// `method path` with `headers` and `body`: the status, the response's
    /// headers and its JSON answer (`null` if empty). Fails on an error answer
    /// that shows an internal key.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Res<(u16, ureq::http::HeaderMap, Value)> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.relay.base));
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if method == "POST" {
            request = request.header("Content-Type", "application/json");
        }
        let mut response = self.relay.agent.run(request.body(body.to_owned())?)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        check_no_internal_keys(status, &text)?;
        let answer = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| format!("{status} {text:?}: {e}"))?
        };
        Ok((status, response.headers().clone(), answer))
    }

    /// The job `id` as its client sees it (`GET /jobs/{id}`).
    pub fn job(&self, id: &str) -> Res<Value> {
        let (status, job) = self.get(&format!("/jobs/{id}"))?;
        if status != 200 {
            return Err(format!("GET /jobs/{id}: {status} {job}").into());
        }
        Ok(job)
    }

    /// Polls job `id` until `done` says so, and returns it as last seen.
    pub fn wait_for_job(&self, id: &str, done: impl Fn(&Value) -> bool) -> Res<Value> {
        let mut last = Value::Null;
        wait_until(&format!("job {id}"), || {
            last = self.job(id)?;
            Ok(done(&last).then(|| last.clone()))
        })
        .map_err(|e| format!("{e}; last seen {last}").into())
    }

    /// The credits `account` has left, as this client is told
    /// (`GET /accounts/{account}`).
    pub fn credits(&self, account: &str) -> Res<u64> {
        let (status, answer) = self.get(&format!("/accounts/{account}"))?;
        answer["credits"]
            .as_u64()
            .ok_or_else(|| format!("no credits in {status} {answer}").into())
    }

    /// Opens job `id`'s event stream, resuming after `last_event_id` if given.
    pub fn events(&self, id: &str, last_event_id: Option<u64>) -> Res<SseStream> {
        match self.open_events(id, last_event_id, &[])? {
            Ok(stream) => Ok(stream),
            Err((status, _, answer)) => {
                Err(format!("GET /jobs/{id}/events: {status} {answer}").into())
            }
        }
    }

    /// Opens job `id`'s event stream with `headers`: the stream, or the
    /// status, headers and JSON answer that refused it.
    pub fn open_events(
        &self,
        id: &str,
        last_event_id: Option<u64>,
        headers: &[(&str, &str)],
    ) -> Res<Result<SseStream, (u16, ureq::http::HeaderMap, Value)>> {
        let mut request = self
            .relay
            .agent
            .get(format!("{}/jobs/{id}/events", self.relay.base));
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last.to_string());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.call()?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.body_mut().read_to_string()?;
            check_no_internal_keys(status, &text)?;
            let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Ok(Err((status, response.headers().clone(), answer)));
        }
        Ok(Ok(SseStream {
            lines: Box::new(BufReader::new(response.into_body().into_reader())),
        }))
    }
}

/// Fails if an error answer shows an internal key.
pub fn check_no_internal_keys(status: u16, answer: &str) -> Res {
    if status < 400 {
        return Ok(());
    }
    match INTERNAL_KEY_TEXTS
        .iter()
        .find(|text| answer.contains(*text))
    {
        Some(text) => Err(format!("a {status} answer shows {text:?}: {answer}").into()),
        None => Ok(()),
    }
}

/// A client that reports every status as a response, not an error.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT_BOUND))
        .build()
        .into()
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    /// Its `id:` (the job event's sequence number).
    pub id: u64,
    /// Its `event:` (the job event's type).
    pub kind: String,
    /// Its `data:`, parsed.
    pub data: Value,
}

/// An open SSE response, read event by event. Dropping it disconnects.
pub struct SseStream {
    lines: Box<dyn BufRead + Send>,
}

impl SseStream {
    /// The next event, or `None` when the server ended the stream.
    pub fn next_event(&mut self) -> Res<Option<SseEvent>> {
        let (mut id, mut kind, mut data) = (None, String::new(), String::new());
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                // A blank line ends an event; keep-alive comments have no id.
                if let Some(id) = id {
                    return Ok(Some(SseEvent {
                        id,
                        kind,
                        data: serde_json::from_str(&data)?,
                    }));
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.parse()?),
                "event" => kind = value.to_owned(),
                "data" => data.push_str(value),
                _ => {} // a comment (empty field name) or a field we do not use
            }
        }
    }

    /// Every event up to the end of the stream.
    pub fn rest(&mut self) -> Res<Vec<SseEvent>> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event()? {
            events.push(event);
        }
        Ok(events)
    }
}
