//! The relay with many SSE event streams open: what they cost the server
//! (threads, resident memory, descriptors) and what they do to everyone
//! else's requests (status polls and job creation, against the same with no
//! stream open), how fast an event reaches its stream, and whether the server
//! gets back to where it was once they close.
//!
//! The streams watch jobs that do not move: the server runs with `--gate`, so
//! each worker waits on its first job's first stage and every other job stays
//! queued. Nothing is sent on the streams but keep-alive comments, which is
//! the case the async face is built for: a stream that waits holds no thread.
//! Each stream is a plain blocking socket of this process that sent its
//! request and read the response head; it is held, not read, until the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use super::common::latency::Histogram;
use super::common::report::Table;
use super::common::{BenchResult, Config, RunDir};
use super::relay::{Client, Relay, Res, WAIT_BOUND, token_of};
use super::{Load, check, load};

/// Streams open at once in a full run: the figure the relay is meant to hold.
const STREAMS: usize = 1_000;
/// Streams in a smoke run: enough to run every step.
const SMOKE_STREAMS: usize = 20;
/// The server's job runners, all held at the gate.
const WORKERS: usize = 4;
/// Descriptors each process needs besides the streams' sockets: the client
/// threads' connections, the store's files, the standard ones.
const SPARE_FILES: u64 = 256;
/// The stages of the example's jobs, each opened by a gate file `JOB.STAGE`.
const STAGES: [&str; 3] = ["fetch", "process", "store"];
/// How long to wait, after the streams close, for the server to let go of
/// their sockets and of the pool threads it started meanwhile: past the pool's
/// idle timeout (10 s) and the streams' keep-alive period (15 s), the latest a
/// server that notices a client leaving only when it writes to it would take.
const SETTLE_BOUND: Duration = Duration::from_secs(40);

/// What `/proc/PID/status` and `/proc/PID/fd` say of the server at a moment.
#[derive(Clone, Copy, Debug)]
struct Footprint {
    threads: u64,
    rss_kib: u64,
    fds: usize,
}

/// Latencies of the requests made with or without the streams open.
struct Requests {
    status: Load,
    create: Load,
}

/// Runs the section: `threads` client threads making `ops` requests each per
/// operation, as the rest of the bench does.
pub(crate) fn run(config: &Config, dir: &RunDir, threads: usize, ops: usize) -> BenchResult {
    // The relay harness's errors are `Send + Sync`, the bench's are not.
    section(config, dir, threads, ops).map_err(|e| e.to_string().into())
}

/// [`run`], with the relay harness's errors.
fn section(config: &Config, dir: &RunDir, threads: usize, ops: usize) -> Res {
    let streams = if config.smoke() {
        SMOKE_STREAMS
    } else {
        STREAMS
    };
    println!("\n## {} SSE streams open (logstore)\n", thousands(streams));
    // Before the server starts: it inherits the limit, and needs as many
    // descriptors as this process does.
    if let Err(why) = raise_open_files(streams as u64 + SPARE_FILES) {
        println!("Skipped: {why}");
        return Ok(());
    }
    let gate = dir.path().join("sse-gate");
    std::fs::create_dir_all(&gate)?;
    let accounts: Vec<String> = (0..threads).map(|t| format!("lic:{t}")).collect();
    let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let relay = start(dir.path().join("sse").as_path(), &gate, &accounts, streams)?;
    let clients: Vec<_> = accounts.iter().map(|a| relay.client(a)).collect();

    // Job j belongs to account j % threads; its stream acts for that account.
    let jobs = create_jobs(&clients, streams)?;
    // A round whose figures are dropped: the first requests to a new server
    // (connections, caches, the pool's threads) would count against the
    // round without streams only.
    requests(&clients, &jobs, threads, ops, "warm-up")?;
    let without = requests(&clients, &jobs, threads, ops, "without")?;
    let before = footprint(relay.pid())?;

    let opened = Instant::now();
    let (mut open, open_latency) = open_streams(&relay, &accounts, &jobs)?;
    let open_secs = opened.elapsed().as_secs_f64();
    let idle = footprint(relay.pid())?;
    let with = requests(&clients, &jobs, threads, ops, "with")?;
    let during = footprint(relay.pid())?;
    let events = event_latency(&clients, &gate, &jobs, &mut open)?;

    drop(open);
    let closed = Instant::now();
    let after = settle(relay.pid(), &before)?;
    let settle_secs = closed.elapsed().as_secs_f64();
    check_healthy(&relay, &accounts, &jobs)?;
    drop(clients);
    relay.kill();

    let figures = Figures {
        streams,
        before,
        idle,
        during,
        after,
        without,
        with,
        open_secs,
        open_latency,
        events,
        settle_secs,
    };
    figures.print();
    Ok(())
}

/// Raises this process's soft limit on open files to its hard limit if it is
/// below `needed`; an error saying why if even the hard limit is.
fn raise_open_files(needed: u64) -> Result<(), String> {
    let limit = getrlimit(Resource::Nofile);
    // `None` is no limit.
    if limit.current.is_none_or(|soft| soft >= needed) {
        return Ok(());
    }
    if limit.maximum.is_some_and(|hard| hard < needed) {
        return Err(format!(
            "{needed} open files are needed, and the hard limit is {:?}",
            limit.maximum
        ));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .map_err(|e| format!("raising the open files limit failed: {e}"))
}

/// Starts the relay with room for `streams` streams and connections, every
/// stage waiting for its gate file, and no cap an account could hit.
fn start(state: &Path, gate: &Path, accounts: &[&str], streams: usize) -> Res<Relay> {
    let gate = gate.to_str().ok_or("the run directory is not UTF-8")?;
    let max_streams = streams.to_string();
    // The streams, the client threads' connections, and a few to spare.
    let max_connections = (streams + accounts.len() + 64).to_string();
    let workers = WORKERS.to_string();
    Relay::start(
        state,
        accounts,
        &[
            "--gate",
            gate,
            "--workers",
            &workers,
            "--max-streams",
            &max_streams,
            "--max-streams-per-account",
            &max_streams,
            "--max-connections",
            &max_connections,
            "--credits",
            "1000000000",
            "--max-queued",
            "1000000000",
        ],
        true,
    )
}

/// Creates `count` jobs, one client at a time in turn: `(account, job id)`.
fn create_jobs(clients: &[Client<'_>], count: usize) -> Res<Vec<(usize, String)>> {
    (0..count)
        .map(|j| {
            let t = j % clients.len();
            let (status, answer) = clients[t].post("/jobs", &[], r#"{"kind":"transcribe"}"#)?;
            check(status == 202, || format!("POST /jobs: {status} {answer}"))?;
            let id = answer["job_id"].as_str().ok_or("no job_id")?.to_owned();
            Ok((t, id))
        })
        .collect()
}

/// Status polls of the jobs, then creations of new ones (keys named by
/// `phase`), from every client thread at once.
fn requests(
    clients: &[Client<'_>],
    jobs: &[(usize, String)],
    threads: usize,
    ops: usize,
    phase: &str,
) -> Res<Requests> {
    // Thread t polls the jobs of its own account.
    let own: Vec<Vec<&str>> = (0..threads)
        .map(|t| {
            jobs.iter()
                .filter(|(a, _)| *a == t)
                .map(|(_, id)| id.as_str())
                .collect()
        })
        .collect();
    let (status, _) = load(threads, ops, |t, i| {
        let id = own[t][(i * 7) % own[t].len()];
        let (status, job) = clients[t].get(&format!("/jobs/{id}"))?;
        check(status == 200 && job["id"] == id, || {
            format!("GET /jobs/{id}: {status} {job}")
        })?;
        Ok(String::new())
    })
    .map_err(|e| e.to_string())?;
    let (create, _) = load(threads, ops, |t, i| {
        let key = format!("sse-{phase}-{t}-{i}");
        let (status, answer) = clients[t].post(
            "/jobs",
            &[("Idempotency-Key", &key)],
            r#"{"kind":"transcribe"}"#,
        )?;
        check(status == 202 && answer["charged"] == true, || {
            format!("POST /jobs {key}: {status} {answer}")
        })?;
        Ok(String::new())
    })
    .map_err(|e| e.to_string())?;
    Ok(Requests { status, create })
}

/// The server's threads, resident memory and open descriptors now.
fn footprint(pid: u32) -> Res<Footprint> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Res<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))?;
        // What follows "Threads:" or "VmRSS:": "\t12" or "\t  12345 kB".
        let number = line.split_whitespace().next().unwrap_or_default();
        Ok(number.parse()?)
    };
    Ok(Footprint {
        threads: field("Threads:")?,
        rss_kib: field("VmRSS:")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
    })
}

/// One open event stream: its socket, and what has been read from it.
struct Stream {
    socket: TcpStream,
    read: Vec<u8>,
}

impl Stream {
    /// Opens job `id`'s event stream for `account`: sends the request and
    /// reads the response head, which must be a 200.
    fn open(addr: &str, account: &str, id: &str) -> Res<Stream> {
        let mut socket = TcpStream::connect(addr)?;
        // A hung server fails the run instead of hanging it.
        socket.set_read_timeout(Some(WAIT_BOUND))?;
        let request = format!(
            "GET /jobs/{id}/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
            token_of(account)
        );
        socket.write_all(request.as_bytes())?;
        let mut stream = Stream {
            socket,
            read: Vec::new(),
        };
        stream.read_until(|read| read.windows(4).any(|w| w == b"\r\n\r\n"))?;
        if !stream.read.starts_with(b"HTTP/1.1 200") {
            let head = String::from_utf8_lossy(&stream.read);
            return Err(format!("GET /jobs/{id}/events: {head}").into());
        }
        Ok(stream)
    }

    /// Reads until `done` says what has been read is enough.
    fn read_until(&mut self, done: impl Fn(&[u8]) -> bool) -> Res {
        let mut buffer = [0; 4096];
        while !done(&self.read) {
            let n = self.socket.read(&mut buffer)?;
            if n == 0 {
                return Err("the server closed an event stream".into());
            }
            self.read.extend_from_slice(&buffer[..n]);
        }
        Ok(())
    }

    /// How many `progress` events have been read.
    fn progress_events(read: &[u8]) -> usize {
        let marker = b"event: progress\n";
        read.windows(marker.len()).filter(|w| w == marker).count()
    }
}

/// Opens a stream to each job, one after the other: the streams, and how
/// long each took to open.
fn open_streams(
    relay: &Relay,
    accounts: &[&str],
    jobs: &[(usize, String)],
) -> Res<(Vec<Stream>, Histogram)> {
    let addr = relay.base.trim_start_matches("http://");
    let mut latency = Histogram::default();
    let mut open = Vec::with_capacity(jobs.len());
    for (account, id) in jobs {
        let started = Instant::now();
        open.push(Stream::open(addr, accounts[*account], id)?);
        latency.record(started.elapsed());
    }
    Ok((open, latency))
}

/// For each job a worker holds at its gate, opens its stages one at a time
/// and times each from the gate file's creation to the `progress` event on
/// the job's stream. This includes the stage's own work (an artifact written
/// and fsynced, a checkpoint) and up to 5 ms of the gate's polling.
fn event_latency(
    clients: &[Client<'_>],
    gate: &Path,
    jobs: &[(usize, String)],
    open: &mut [Stream],
) -> Res<Histogram> {
    // Jobs were created one at a time and queued in that order, so the
    // workers hold the first ones.
    let held = WORKERS.min(jobs.len());
    for (account, id) in &jobs[..held] {
        clients[*account].wait_for_job(id, |job| job["status"] == "running")?;
    }
    let mut latency = Histogram::default();
    for (j, (_, id)) in jobs[..held].iter().enumerate() {
        for (done, stage) in STAGES.iter().enumerate() {
            let released = Instant::now();
            std::fs::write(gate.join(format!("{id}.{stage}")), b"")?;
            open[j].read_until(|read| Stream::progress_events(read) > done)?;
            latency.record(released.elapsed());
        }
    }
    Ok(latency)
}

/// Waits, at most [`SETTLE_BOUND`], for the server to be back to `before`'s
/// threads and descriptors (or fewer), and returns its footprint then,
/// settled or not: the figures say which.
fn settle(pid: u32, before: &Footprint) -> Res<Footprint> {
    let started = Instant::now();
    loop {
        let now = footprint(pid)?;
        let settled = now.threads <= before.threads && now.fds <= before.fds;
        if settled || started.elapsed() > SETTLE_BOUND {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fails unless the server answers a status request and opens a new stream.
fn check_healthy(relay: &Relay, accounts: &[&str], jobs: &[(usize, String)]) -> Res {
    let (account, id) = jobs.last().ok_or("no jobs")?;
    let job = relay.client(accounts[*account]).job(id)?;
    check(job["id"] == id.as_str(), || {
        format!("GET /jobs/{id}: {job}")
    })?;
    Stream::open(
        relay.base.trim_start_matches("http://"),
        accounts[*account],
        id,
    )?;
    Ok(())
}

/// Everything the section measured.
struct Figures {
    streams: usize,
    before: Footprint,
    idle: Footprint,
    during: Footprint,
    after: Footprint,
    without: Requests,
    with: Requests,
    open_secs: f64,
    open_latency: Histogram,
    events: Histogram,
    settle_secs: f64,
}

impl Figures {
    fn print(&self) {
        let n = thousands(self.streams);
        let mut table = Table::new([
            "server".to_owned(),
            "no streams".to_owned(),
            format!("{n} streams, idle"),
            format!("{n} streams, under load"),
            "streams closed".to_owned(),
        ]);
        let footprints = [self.before, self.idle, self.during, self.after];
        let row = |name: &str, cell: &dyn Fn(&Footprint) -> String| {
            [name.to_owned()]
                .into_iter()
                .chain(footprints.iter().map(cell))
                .collect::<Vec<_>>()
        };
        table.row(row("threads", &|f| f.threads.to_string()));
        table.row(row("resident memory (MiB)", &|f| {
            format!("{:.1}", f.rss_kib as f64 / 1024.0)
        }));
        table.row(row("open descriptors", &|f| f.fds.to_string()));
        println!("{table}");

        let mut requests = Table::new([
            "request: p50, p99 (ms)".to_owned(),
            "no streams".to_owned(),
            format!("{n} streams open"),
        ]);
        let ms = |load: &Load| {
            format!(
                "{:.2}, {:.2}",
                load.latency.quantile_us(0.5) / 1000.0,
                load.latency.quantile_us(0.99) / 1000.0
            )
        };
        requests.row([
            "GET /jobs/{id}".to_owned(),
            ms(&self.without.status),
            ms(&self.with.status),
        ]);
        requests.row([
            "POST /jobs (new key)".to_owned(),
            ms(&self.without.create),
            ms(&self.with.create),
        ]);
        println!("{requests}");

        let rss_per_stream =
            (self.idle.rss_kib as f64 - self.before.rss_kib as f64) / self.streams as f64;
        println!(
            "Opening {n} streams one after the other: {:.2} s (p50 {:.2} ms, p99 {:.2} ms each); \
             {rss_per_stream:.1} KiB of resident memory per stream.",
            self.open_secs,
            self.open_latency.quantile_us(0.5) / 1000.0,
            self.open_latency.quantile_us(0.99) / 1000.0,
        );
        println!(
            "Gate opened to progress event read, {n} streams open: p50 {:.2} ms, max {:.2} ms \
             ({} events; includes the stage's write and up to 5 ms of gate polling).",
            self.events.quantile_us(0.5) / 1000.0,
            self.events.quantile_us(1.0) / 1000.0,
            self.events.count(),
        );
        let settled =
            self.after.threads <= self.before.threads && self.after.fds <= self.before.fds;
        println!(
            "Streams closed: {} after {:.1} s; a status request and a new stream were answered.\n",
            if settled {
                "threads and descriptors back down"
            } else {
                "threads or descriptors NOT back down"
            },
            self.settle_secs,
        );
        let p99 = |load: &Load| load.latency.quantile_us(0.99);
        println!(
            "Verdict: status p99 with {n} streams / without: {:.2}x; \
             threads with {n} streams vs none: {} vs {}.",
            p99(&self.with.status) / p99(&self.without.status).max(f64::MIN_POSITIVE),
            self.during.threads,
            self.before.threads,
        );
        println!(
            r#"{{"bench": "relay_load/sse", "impl": "logstore", "streams": {}, "threads_without": {}, "threads_with": {}, "rss_kib_without": {}, "rss_kib_with": {}, "status_p99_us_without": {:.1}, "status_p99_us_with": {:.1}, "create_p99_us_without": {:.1}, "create_p99_us_with": {:.1}}}"#,
            self.streams,
            self.before.threads,
            self.during.threads,
            self.before.rss_kib,
            self.idle.rss_kib,
            p99(&self.without.status),
            p99(&self.with.status),
            p99(&self.without.create),
            p99(&self.with.create),
        );
    }
}

/// `n` with a comma between thousands (1,000), as the figures are spoken of.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
