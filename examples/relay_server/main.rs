//! An HTTP relay that runs background jobs with jobsafe, as the relay of the
//! field reports would: a request starts a job and gets its id at once, charged
//! one credit per idempotency key however often it is retried; clients poll the
//! job or stream its events over SSE, resuming with `Last-Event-ID`; a re-index
//! of one resource runs once at a time; and a restart loses nothing: unfinished
//! jobs resume where they stopped.
//!
//! ```text
//! cargo run --example relay_server -- --store STATE_DIR [--listen 127.0.0.1:8080]
//! ```
//!
//! | request | answer |
//! |---|---|
//! | `POST /jobs` (headers `Idempotency-Key` or `X-Job-Id`, `X-Account`; JSON body `{"kind", "input", "fail_at"}`, all optional) | 202 `{"job_id", "charged"}`; 402 without credits; 422 for a key reused with another body |
//! | `GET /jobs/{id}` | 200 with the client view of the job; 404 |
//! | `GET /jobs/{id}/events` (header `Last-Event-ID` or `?after=N`) | an SSE stream, one `id:` per event, ending after `done` or `error` |
//! | `GET /accounts/{account}` | 200 `{"account", "credits"}` |
//! | `POST /index` (header `X-Account`, `X-Actor`; JSON body `{"resource"}`) | 202 `{"job_id"}`; 409 `{"holder"}` while a re-index of it runs |
//!
//! Options: `--store DIR` (state directory, default `jobsafe-relay` in the
//! temp directory), `--backend log|dir` (LogStore or DirStore, default log),
//! `--listen ADDR` (port 0 picks a free port; the address is printed as
//! `listening on http://ADDR`), `--workers N` (default 4), `--stage-ms N` (how
//! long each of a job's three stages works, default 500), `--gate DIR` (stages
//! wait for a file instead: see [`work::Pace::Gate`]), `--credits N` (each
//! account's starting credits, default 100), `--index-ttl-ms N` (the index
//! lock's lease, default 16 minutes), `--lease-ms N` (a job runner's lease,
//! default 30 s).

mod http;
mod relay;
mod work;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jobsafe::{DirStore, LogStore};

use crate::relay::{Relay, Shared};
use crate::work::Pace;

/// What `--help` prints.
const USAGE: &str = "\
usage: relay_server [--store DIR] [--backend log|dir] [--listen ADDR] [--workers N]
                    [--stage-ms N | --gate DIR] [--credits N] [--index-ttl-ms N]
                    [--lease-ms N]

An HTTP relay running background jobs with jobsafe: POST /jobs, GET /jobs/{id},
GET /jobs/{id}/events (SSE), GET /accounts/{account}, POST /index.

  --store DIR         state directory (default: jobsafe-relay in the temp directory)
  --backend log|dir   LogStore (default) or DirStore
  --listen ADDR       address to listen on (default 127.0.0.1:8080; port 0 picks one)
  --workers N         job runner threads (default 4)
  --stage-ms N        how long each of a job's three stages works (default 500)
  --gate DIR          stages wait for a file in DIR instead of sleeping
  --credits N         each account's starting credits (default 100)
  --index-ttl-ms N    the index lock's lease (default 16 minutes)
  --lease-ms N        a job runner's lease (default 30 s)
  -h, --help          print this and exit
";

/// What the command line asks for.
enum Command {
    Run(Options),
    Help,
}

/// The command line, parsed.
struct Options {
    state: PathBuf,
    backend: String,
    listen: String,
    workers: usize,
    pace: Pace,
    credits: u64,
    index_ttl: Duration,
    lease: Duration,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
        let mut options = Options {
            state: std::env::temp_dir().join("jobsafe-relay"),
            backend: "log".to_owned(),
            listen: "127.0.0.1:8080".to_owned(),
            workers: 4,
            pace: Pace::Sleep(Duration::from_millis(500)),
            credits: 100,
            index_ttl: Duration::from_secs(16 * 60),
            lease: Duration::from_secs(30),
        };
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
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|e| format!("{flag} {value}: {e}"))
            };
            match flag.as_str() {
                "--store" => options.state = PathBuf::from(&value),
                "--backend" if value == "log" || value == "dir" => options.backend = value,
                "--listen" => options.listen = value,
                "--workers" => options.workers = usize::try_from(number()?).unwrap_or(1),
                "--stage-ms" => options.pace = Pace::Sleep(Duration::from_millis(number()?)),
                "--gate" => options.pace = Pace::Gate(PathBuf::from(&value)),
                "--credits" => options.credits = number()?,
                "--index-ttl-ms" => options.index_ttl = Duration::from_millis(number()?),
                "--lease-ms" => options.lease = Duration::from_millis(number()?),
                "--backend" => {
                    return Err(format!("--backend {value}: expected log or dir"));
                }
                _ => return Err(format!("unknown option {flag} (see --help)")),
            }
        }
        Ok(Command::Run(options))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = match Options::parse(std::env::args().skip(1))? {
        Command::Run(options) => options,
        Command::Help => {
            print!("{USAGE}");
            return Ok(());
        }
    };
    std::fs::create_dir_all(&options.state)?;
    // One relay process per state directory: startup recovery frees the locks
    // of runners that died, which is right only if none of them is alive. The
    // lock is the kernel's, so it goes with the process however it ends.
    let lock_path = options.state.join("relay.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    lock.try_lock()
        .map_err(|e| format!("{} is in use by another relay: {e}", lock_path.display()))?;

    let root = options.state.join("store");
    let store: Shared = match options.backend.as_str() {
        "dir" => Arc::new(DirStore::open(&root)?),
        _ => Arc::new(LogStore::open(&root)?),
    };
    let pipeline = work::pipeline(
        Arc::clone(&store),
        options.state.join("artifacts"),
        options.pace.clone(),
        options.lease,
    )?;
    let relay = Relay::new(store, pipeline, options.credits, options.index_ttl);
    let unfinished = relay
        .recover()
        .map_err(|e| format!("recovering unfinished jobs: {e:?}"))?;
    let queue = work::start(relay.clone(), options.workers)?;
    println!("resuming {} unfinished job(s)", unfinished.len());
    for id in unfinished {
        queue.send(id)?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(http::serve(relay, queue, &options.listen))?;
    drop(lock);
    Ok(())
}
