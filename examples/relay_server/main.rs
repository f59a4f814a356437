//! An HTTP relay that runs background jobs with jobsafe, as the relay of the
//! field reports would: a request starts a job and gets its id at once, charged
//! one credit per idempotency key however often it is retried; clients poll the
//! job or stream its events over SSE, resuming with `Last-Event-ID`; a re-index
//! of one resource runs once at a time; and a restart loses nothing: unfinished
//! jobs resume where they stopped.
//!
//! Requests and event streams are served through jobsafe's async face: a
//! store call runs on jobsafe's bounded pool of threads (`--pool-threads`),
//! and a request or an event stream that waits holds no thread, so a thousand
//! open streams cost a thousand small buffers, not a thousand threads. The
//! jobs themselves run through the pipeline's `Runner` (`--workers` at once),
//! which a new job wakes at once.
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
//! | `GET /jobs/{id}/events` (header `Last-Event-ID` or `?after=N`) | an SSE stream, one `id:` per event, ending after `done` or `error` (or when the relay stops); past the last event, a stream that ends at once for a finished job and 400 for one that goes on; 404 as above; 503 with `Retry-After` when `--max-streams` streams are open, 429 with `Retry-After` when the caller's account has `--max-streams-per-account` open |
//! | `GET /accounts/{account}` | 200 `{"account", "credits"}` for the caller's own account; 404 for any other |
//! | `POST /index` (header `X-Actor`; JSON body `{"resource"}`) | 202 `{"job_id"}`, not charged (a re-index is the service's upkeep, and one per resource runs at a time); 409 `{"holder"}` while a re-index of it runs; 429 as `POST /jobs`, whose cap it counts against |
//! | any request | 401 with `WWW-Authenticate: Bearer` without a valid token; 400 naming a header the relay reads that is not 1 to its limit of printable ASCII characters; 408 for a body not sent within `--body-timeout-ms`; 413 for a body over 64 KiB; 431 for a request head over 16 KiB; a client that reads nothing of an answer for `--write-timeout-ms` is disconnected |
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
//! N` (open event streams, default 64), `--max-streams-per-account N` (open
//! event streams of one account, default 16), `--max-connections N` (default 256),
//! `--header-timeout-ms N` (to send a request's head, and how long a
//! kept-alive connection may idle; default 10 s), `--body-timeout-ms N` (to
//! send a request's body, default 30 s), `--write-timeout-ms N` (the longest
//! an answer may wait for its client to read it; default 30 s),
//! `--pool-threads N` (jobsafe's pool,
//! which runs every store call of the requests and streams: see
//! `jobsafe::pool`; at least 2, default 64), `--max-blocking-threads N` (the
//! tokio runtime's blocking pool, which the relay itself does not use; default
//! 16), `--stop-grace-ms N` (see below, default 5 s), `--postgres URL` and
//! `--postgres-schema NAME` (see below), `--clock-file FILE` (a test's
//! clock, shared by its relays; a build with the feature `testing`).
//!
//! With `--postgres URL` (a build with the feature `postgres`), the records
//! are in PostgreSQL, and several relays, each with a state directory of its
//! own, serve one set of accounts and jobs: a job created through one is
//! streamed through another as it runs (the store tells each relay of the
//! others' writes), a relay that dies leaves its jobs to the others once
//! their leases end, and one that stops hands them over at once. The
//! artifacts of finished stages are copied into the database, so the relay
//! that takes a job over skips them. The per-account cap on queued jobs
//! (`--max-queued`) is kept by each relay in memory: it counts the jobs this
//! relay accepted, and the unfinished ones it found at its start, until it
//! sees them end; a job another relay finishes stays counted here until
//! this relay restarts.
//!
//! On SIGTERM or Ctrl-C the relay stops: it stops accepting connections, ends
//! every open event stream (each client sees its response end, and may
//! reconnect with `Last-Event-ID` to another instance or after the restart),
//! lets in-flight requests finish for up to 5 s, and exits 0. The runner
//! starts no further job (`RunnerStop::stop`): a job whose stage ends within
//! the grace period (`--stop-grace-ms`, default 5 s) ends that stage, is
//! recorded and handed over with its lock released, for another instance to
//! take over at once; one still in a stage when the relay exits is resumed by
//! the next start, as after a crash.

mod http;
mod relay;
mod server;
mod state_dir;
mod tokens;
mod work;
mod write_stall;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobsafe::{DirStore, LogStore, SharedClock};
use tokio::signal::unix::{SignalKind, signal};

use crate::http::Limits;
use crate::relay::{Relay, Settings, Shared};
use crate::server::ConnectionLimits;
use crate::tokens::Tokens;
use crate::work::Pace;

/// What `--help` prints.
const USAGE: &str = "\
usage: relay_server --tokens FILE [--store DIR] [--backend log|dir] [--postgres URL]
                    [--listen ADDR]
                    [--workers N] [--stage-ms N | --gate DIR] [--credits N]
                    [--index-ttl-ms N] [--lease-ms N] [--max-queued N]
                    [--max-streams N] [--max-streams-per-account N]
                    [--max-connections N]
                    [--header-timeout-ms N] [--body-timeout-ms N]
                    [--write-timeout-ms N] [--pool-threads N] [--max-blocking-threads N]
                    [--stop-grace-ms N] [--clock-file FILE]

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
  --workers N            jobs run at once (default 4)
  --stage-ms N           how long each of a job's three stages works (default 500)
  --gate DIR             stages wait for a file in DIR instead of sleeping
  --credits N            each account's starting credits (default 100)
  --index-ttl-ms N       the index lock's lease (default 16 minutes)
  --lease-ms N           a job runner's lease (default 30 s)
  --max-queued N         unfinished jobs an account may have (default 16; 429 beyond)
  --max-streams N        event streams open at once (default 64; 503 beyond)
  --max-streams-per-account N
                         event streams one account may have open at once
                         (default 16; 429 beyond)
  --max-connections N    connections open at once (default 256; more wait)
  --header-timeout-ms N  time to send a request's head, and the longest a kept-alive
                         connection may idle (default 10 s)
  --body-timeout-ms N    time to send a request's body (default 30 s; 408 after)
  --write-timeout-ms N   the longest an answer may wait for the client to read it
                         (default 30 s; the connection is closed after)
  --pool-threads N       threads of jobsafe's pool, which runs the store calls of every
                         request and event stream (at least 2, default 64); a
                         request or stream waiting for one holds no thread
  --max-blocking-threads N
                         threads of the tokio runtime's blocking pool, which the
                         relay does not use itself (default 16)
  --stop-grace-ms N      on SIGTERM, how long a job's stage under way may take to
                         end (default 5 s)
  --postgres URL         keep the records in PostgreSQL (a build with the feature
                         `postgres`), so that several relays, each with a state
                         directory of its own, serve one set of jobs: each sees the
                         others' jobs and events at once, and takes over their jobs
                         with the artifacts of their finished stages
  --postgres-schema NAME the schema of the records in that database (default public)
  --clock-file FILE      read time from FILE (a build with the feature `testing`):
                         a test's clock, shared by its relays
  -h, --help             print this and exit

SIGTERM or Ctrl-C stops the relay: open event streams end, in-flight requests
finish (up to 5 s), no job starts, a job's stage under way may end within the
grace period (its job is then handed over, its lock released), and it exits 0.
A job still in a stage is resumed at the next start.
";

/// The largest request body: a job's input is at most 16 KiB.
const MAX_BODY_BYTES: usize = 64 << 10;

/// The tokio runtime's blocking pool, unless `--max-blocking-threads` says
/// otherwise. Store calls run on jobsafe's pool, not there: the runtime needs
/// few, for what it does on them itself.
const MAX_BLOCKING_THREADS: usize = 16;

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
    /// jobsafe's pool bound; its own default if not given.
    pool_threads: Option<usize>,
    max_blocking_threads: usize,
    /// On SIGTERM, how long runs under way may go on.
    stop_grace: Duration,
    /// The PostgreSQL database of the records, shared with other relays.
    postgres: Option<String>,
    /// The schema of the records there.
    postgres_schema: String,
    /// A test's clock.
    clock_file: Option<PathBuf>,
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
            "--max-streams-per-account" => self.limits.max_streams_per_account = cap()?,
            "--max-connections" => self.limits.connections.max_connections = cap()?,
            "--header-timeout-ms" => self.limits.connections.header_timeout = millis()?,
            "--body-timeout-ms" => self.limits.body_timeout = millis()?,
            "--write-timeout-ms" => self.limits.connections.write_timeout = millis()?,
            "--pool-threads" => self.pool_threads = Some(pool_bound(cap()?)?),
            "--max-blocking-threads" => self.max_blocking_threads = cap()?,
            "--stop-grace-ms" => self.stop_grace = millis()?,
            "--postgres" => self.postgres = Some(value),
            "--postgres-schema" => self.postgres_schema = value,
            "--clock-file" => self.clock_file = Some(PathBuf::from(&value)),
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
                shared_by_relays: false,
            },
            limits: Limits {
                max_streams: 64,
                max_streams_per_account: 16,
                max_body_bytes: MAX_BODY_BYTES,
                body_timeout: Duration::from_secs(30),
                connections: ConnectionLimits {
                    header_timeout: Duration::from_secs(10),
                    max_connections: 256,
                    write_timeout: Duration::from_secs(30),
                },
            },
            pool_threads: None,
            max_blocking_threads: MAX_BLOCKING_THREADS,
            stop_grace: Duration::from_secs(5),
            postgres: None,
            postgres_schema: "public".to_owned(),
            clock_file: None,
        }
    }
}

/// `threads` as the bound of jobsafe's pool, refused below its minimum: with
/// one thread, a store call that waits for another could never see it run.
fn pool_bound(threads: usize) -> Result<usize, String> {
    if threads < jobsafe::pool::MIN_THREADS {
        return Err(format!(
            "--pool-threads must be at least {}",
            jobsafe::pool::MIN_THREADS
        ));
    }
    Ok(threads)
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
    let (store, shared_by_relays): (Shared, bool) = match &options.postgres {
        Some(url) => (open_postgres(url, &options.postgres_schema)?, true),
        None if options.backend == "dir" => (Arc::new(DirStore::open(&root)?), false),
        None => (Arc::new(LogStore::open(&root)?), false),
    };
    let clock = open_clock(options.clock_file.as_deref())?;
    let pipeline = work::pipeline(
        Arc::clone(&store),
        state.join("artifacts"),
        options.pace.clone(),
        options.settings.lease,
        Arc::clone(&clock),
        shared_by_relays,
    )?;
    let settings = Settings {
        shared_by_relays,
        ..options.settings.clone()
    };
    let relay = Relay::new(store, pipeline, settings, clock);
    let unfinished = relay
        .recover()
        .map_err(|e| format!("recovering unfinished jobs: {e:?}"))?;
    if let Some(threads) = options.pool_threads {
        jobsafe::pool::set_max_threads(threads)?;
    }
    // The runner's first look finds the unfinished jobs, and resumes them.
    let runner = work::runner(relay.clone(), options.workers);
    let stop_runner = runner.stopper();
    let (report_tx, report) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("relay-runner".to_owned())
        .spawn(move || report_tx.send(runner.run()))?;
    println!("{} account(s); state in {}", tokens.len(), state.display());
    println!("resuming {} unfinished job(s)", unfinished.len());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(options.max_blocking_threads)
        .build()?;
    let grace = options.stop_grace;
    let stopped_at = Arc::new(std::sync::Mutex::new(None));
    let stop = {
        let stopped_at = Arc::clone(&stopped_at);
        async move {
            stop_signal().await;
            println!("stopping");
            stop_runner.stop(grace);
            *stopped_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
    };
    runtime.block_on(http::serve(
        relay,
        tokens,
        &options.listen,
        options.limits,
        stop,
    ))?;
    // A stage still under way when the grace period ends cannot be stopped
    // from outside: the relay exits without it, and the next start resumes
    // its job.
    let since_stop = stopped_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map_or(Duration::ZERO, |at| at.elapsed());
    let wait = (grace + Duration::from_secs(1)).saturating_sub(since_stop);
    match report.recv_timeout(wait) {
        Ok(report) => println!(
            "stopped: {} job(s) completed, {} handed over",
            report.completed,
            report.abandoned.len()
        ),
        Err(_) => println!("stopped, with a stage under way"),
    }
    Ok(())
}

/// The PostgreSQL store at `url`.
#[cfg(feature = "postgres")]
fn open_postgres(url: &str, schema: &str) -> Result<Shared, Box<dyn std::error::Error>> {
    Ok(Arc::new(
        jobsafe::PgStore::builder(url).schema(schema).open()?,
    ))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(_url: &str, _schema: &str) -> Result<Shared, Box<dyn std::error::Error>> {
    Err(
        "--postgres needs a relay built with the feature `postgres` \
         (cargo run --features postgres --example relay_server)"
            .into(),
    )
}

/// The relay's clock: the system's, or a test's shared through `file`.
#[cfg(feature = "testing")]
fn open_clock(file: Option<&Path>) -> Result<SharedClock, Box<dyn std::error::Error>> {
    Ok(match file {
        Some(file) => Arc::new(jobsafe::testing::FileClock::open(file)),
        None => Arc::new(jobsafe::SystemClock),
    })
}

#[cfg(not(feature = "testing"))]
fn open_clock(file: Option<&Path>) -> Result<SharedClock, Box<dyn std::error::Error>> {
    match file {
        Some(_) => Err("--clock-file needs a relay built with the feature `testing`".into()),
        None => Ok(Arc::new(jobsafe::SystemClock)),
    }
}

/// Completes on the first SIGTERM or Ctrl-C (SIGINT). If a handler cannot be
/// installed, the relay runs on without it: it can still be killed, and the
/// next start resumes its jobs.
async fn stop_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("relay: cannot handle Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(e) => {
                eprintln!("relay: cannot handle SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
