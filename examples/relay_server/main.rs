//! An HTTP relay that runs background jobs with jobsafe, as the relay of the
//! field reports would: a request starts a job and gets its id at once, charged
//! one credit per idempotency key however often it is retried; clients poll the
//! job or stream its events over SSE, resuming with `Last-Event-ID`; a re-index
//! of one resource runs once at a time; and a restart loses nothing: unfinished
//! jobs resume where they stopped.
//!
//! ```text
//! cargo run --example relay_server -- --tokens TOKENS_FILE [--store STATE_DIR] [--listen 127.0.0.1:8080]
//! ```
//!
//! Every request carries `Authorization: Bearer TOKEN`; the token names the
//! account that is charged and that owns the jobs it creates. The tokens file
//! (`--tokens`, required) has one `ACCOUNT TOKEN` pair per line, separated by
//! spaces; blank lines and lines starting with `#` are skipped; an account is
//! 1 to 64 visible ASCII characters, a token 16 to 256 (`openssl rand -hex 32`
//! makes one). Only its accounts exist. A malformed file stops the relay with
//! an error naming the line.
//!
//! | request | answer |
//! |---|---|
//! | `POST /jobs` (headers `Idempotency-Key` or `X-Job-Id`; JSON body `{"kind", "input", "fail_at"}`, all optional) | 202 `{"job_id", "charged"}`; 402 without credits; 422 for a key reused with another body; 429 when the account has `--max-queued` unfinished jobs |
//! | `GET /jobs/{id}` | 200 with the client view of the job; 404, also for another account's job |
//! | `GET /jobs/{id}/events` (header `Last-Event-ID` or `?after=N`) | an SSE stream, one `id:` per event, ending after `done` or `error`; 404 as above; 503 with `Retry-After` when `--max-streams` streams are open |
//! | `GET /accounts/{account}` | 200 `{"account", "credits"}` for the caller's own account; 404 for any other |
//! | `POST /index` (header `X-Actor`; JSON body `{"resource"}`) | 202 `{"job_id"}`; 409 `{"holder"}` while a re-index of it runs; 429 as `POST /jobs` |
//! | any request | 401 with `WWW-Authenticate: Bearer` without a valid token; 400 naming a header the relay reads that is not 1 to its limit of printable ASCII characters; 408 for a body not sent within `--body-timeout-ms`; 413 for a body over 64 KiB |
//!
//! Error answers are `{"error": MESSAGE}` with messages written for clients:
//! store errors, which name internal keys, go to stderr only. `X-Account` is
//! not read: the account is the token's.
//!
//! Options: `--tokens FILE` (required, see above), `--store DIR` (state
//! directory, default `$XDG_STATE_HOME/jobsafe-relay` or
//! `$HOME/.local/state/jobsafe-relay`, created with mode 0700; it must not be
//! a symbolic link, must belong to this user and must not be writable by
//! others), `--backend log|dir` (LogStore or DirStore, default log), `--listen
//! ADDR` (port 0 picks a free port; the address is printed as `listening on
//! http://ADDR`), `--workers N` (default 4), `--stage-ms N` (how long each of
//! a job's three stages works, default 500), `--gate DIR` (stages wait for a
//! file instead: see [`work::Pace::Gate`]), `--credits N` (each account's
//! starting credits, default 100), `--index-ttl-ms N` (the index lock's lease,
//! default 16 minutes), `--lease-ms N` (a job runner's lease, default 30 s),
//! `--max-queued N` (unfinished jobs per account, default 16), `--max-streams
//! N` (open event streams, default 64), `--max-connections N` (default 256),
//! `--header-timeout-ms N` (to send a request's head, and how long a
//! kept-alive connection may idle; default 10 s), `--body-timeout-ms N` (to
//! send a request's body, default 30 s).

mod http;
mod relay;
mod server;
mod state_dir;
mod tokens;
mod work;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jobsafe::{DirStore, LogStore};

use crate::http::Limits;
use crate::relay::{Relay, Settings, Shared};
use crate::server::ConnectionLimits;
use crate::tokens::Tokens;
use crate::work::Pace;

/// What `--help` prints.
const USAGE: &str = "\
usage: relay_server --tokens FILE [--store DIR] [--backend log|dir] [--listen ADDR]
                    [--workers N] [--stage-ms N | --gate DIR] [--credits N]
                    [--index-ttl-ms N] [--lease-ms N] [--max-queued N]
                    [--max-streams N] [--max-connections N]
                    [--header-timeout-ms N] [--body-timeout-ms N]

An HTTP relay running background jobs with jobsafe: POST /jobs, GET /jobs/{id},
GET /jobs/{id}/events (SSE), GET /accounts/{account}, POST /index. Every request
needs `Authorization: Bearer TOKEN`; the token's account is charged and owns the
jobs it creates.

  --tokens FILE          required: one `ACCOUNT TOKEN` pair per line, separated by
                         spaces; blank lines and lines starting with # are skipped.
                         An account is 1 to 64 visible ASCII characters, a token
                         16 to 256 (`openssl rand -hex 32` makes one). Only these
                         accounts exist.
  --store DIR            state directory (default: $XDG_STATE_HOME/jobsafe-relay, or
                         $HOME/.local/state/jobsafe-relay); created with mode 0700,
                         refused if a symbolic link or writable by other users
  --backend log|dir      LogStore (default) or DirStore
  --listen ADDR          address to listen on (default 127.0.0.1:8080; port 0 picks one)
  --workers N            job runner threads (default 4)
  --stage-ms N           how long each of a job's three stages works (default 500)
  --gate DIR             stages wait for a file in DIR instead of sleeping
  --credits N            each account's starting credits (default 100)
  --index-ttl-ms N       the index lock's lease (default 16 minutes)
  --lease-ms N           a job runner's lease (default 30 s)
  --max-queued N         unfinished jobs an account may have (default 16; 429 beyond)
  --max-streams N        event streams open at once (default 64; 503 beyond)
  --max-connections N    connections open at once (default 256; more wait)
  --header-timeout-ms N  time to send a request's head, and the longest a kept-alive
                         connection may idle (default 10 s)
  --body-timeout-ms N    time to send a request's body (default 30 s; 408 after)
  -h, --help             print this and exit
";

/// The largest request body: a job's input is at most 16 KiB.
const MAX_BODY_BYTES: usize = 64 << 10;

/// Blocking-pool threads for store calls, besides one per open event stream:
/// streams can never take every thread that requests need.
const STORE_CALL_THREADS: usize = 64;

/// What the command line asks for.
enum Command {
    Run(Box<Options>),
    Help,
}

/// The command line, parsed.
struct Options {
    tokens: Option<PathBuf>,
    state: Option<PathBuf>,
    backend: String,
    listen: String,
    workers: usize,
    pace: Pace,
    settings: Settings,
    limits: Limits,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
        let mut options = Options::default();
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Ok(Command::Help);
            }
            if !USAGE.contains(&format!("  {flag} ")) {
                return Err(format!("unknown option {flag} (see --help)"));
            }
            let value = args
                .next()
                .ok_or(format!("{flag} needs a value (see --help)"))?;
            options.set(&flag, value)?;
        }
        Ok(Command::Run(Box::new(options)))
    }

    /// Sets option `flag` to `value`.
    fn set(&mut self, flag: &str, value: String) -> Result<(), String> {
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        let millis = || number().map(Duration::from_millis);
        // A cap of 0 would refuse everything: at least 1.
        let cap = || match number()? {
            0 => Err(format!("{flag} must be at least 1")),
            n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        };
        match flag {
            "--tokens" => self.tokens = Some(PathBuf::from(&value)),
            "--store" => self.state = Some(PathBuf::from(&value)),
            "--backend" if value == "log" || value == "dir" => self.backend = value,
            "--backend" => return Err(format!("--backend {value}: expected log or dir")),
            "--listen" => self.listen = value,
            "--workers" => self.workers = cap()?,
            "--stage-ms" => self.pace = Pace::Sleep(millis()?),
            "--gate" => self.pace = Pace::Gate(PathBuf::from(&value)),
            "--credits" => self.settings.credits = number()?,
            "--index-ttl-ms" => self.settings.index_ttl = millis()?,
            "--lease-ms" => self.settings.lease = millis()?,
            "--max-queued" => self.settings.max_queued = cap()?,
            "--max-streams" => self.limits.max_streams = cap()?,
            "--max-connections" => self.limits.connections.max_connections = cap()?,
            "--header-timeout-ms" => self.limits.connections.header_timeout = millis()?,
            "--body-timeout-ms" => self.limits.body_timeout = millis()?,
            _ => return Err(format!("unknown option {flag} (see --help)")),
        }
        Ok(())
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokens: None,
            state: None,
            backend: "log".to_owned(),
            listen: "127.0.0.1:8080".to_owned(),
            workers: 4,
            pace: Pace::Sleep(Duration::from_millis(500)),
            settings: Settings {
                credits: 100,
                index_ttl: Duration::from_secs(16 * 60),
                lease: Duration::from_secs(30),
                max_queued: 16,
            },
            limits: Limits {
                max_streams: 64,
                max_body_bytes: MAX_BODY_BYTES,
                body_timeout: Duration::from_secs(30),
                connections: ConnectionLimits {
                    header_timeout: Duration::from_secs(10),
                    max_connections: 256,
                },
            },
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = match Options::parse(std::env::args().skip(1))? {
        Command::Run(options) => *options,
        Command::Help => {
            print!("{USAGE}");
            return Ok(());
        }
    };
    // Without tokens anyone could act for any account: no open mode.
    let tokens_file = options
        .tokens
        .as_ref()
        .ok_or("--tokens FILE is required: the accounts and their bearer tokens (see --help)")?;
    let tokens = Tokens::load(tokens_file)?;
    let state = match &options.state {
        Some(dir) => dir.clone(),
        None => state_dir::default_dir().ok_or(
            "neither XDG_STATE_HOME nor HOME is set: give the state directory with --store DIR",
        )?,
    };
    state_dir::prepare(&state)?;
    // Held while the relay runs: one relay per state directory.
    let _lock = state_dir::lock(&state)?;

    let root = state.join("store");
    let store: Shared = match options.backend.as_str() {
        "dir" => Arc::new(DirStore::open(&root)?),
        _ => Arc::new(LogStore::open(&root)?),
    };
    let pipeline = work::pipeline(
        Arc::clone(&store),
        state.join("artifacts"),
        options.pace.clone(),
        options.settings.lease,
    )?;
    let relay = Relay::new(store, pipeline, options.settings.clone());
    let unfinished = relay
        .recover()
        .map_err(|e| format!("recovering unfinished jobs: {e:?}"))?;
    let queue = work::start(relay.clone(), options.workers)?;
    println!("{} account(s); state in {}", tokens.len(), state.display());
    println!("resuming {} unfinished job(s)", unfinished.len());
    for id in unfinished {
        queue.send(id)?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(
            options
                .limits
                .max_streams
                .saturating_add(STORE_CALL_THREADS),
        )
        .build()?;
    runtime.block_on(http::serve(
        relay,
        queue,
        tokens,
        &options.listen,
        options.limits,
    ))
}
