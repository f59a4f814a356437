//! Two processes contend for one vault's re-index lock.
//!
//! The first process takes the lock and starts a long re-index; a double click
//! starts a second one, which is refused with the holder's record (an HTTP
//! server would answer 409 with it). The first process is then killed with
//! SIGKILL, without releasing: the store is local to this machine and the
//! holder's process is provably gone, so the next acquire takes the lock over
//! at once, with a greater fencing token. A second holder then hangs (SIGSTOP):
//! alive, it keeps its lock until its lease ends, and from that moment the next
//! acquire takes it over. So that the example does not wait out a 16-minute
//! lease, every process reads a file-backed clock that the example moves
//! forward.
//!
//! ```text
//! cargo run --example index_lock [NEW_STATE_DIR]
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use jobsafe::lock::{Acquire, LockRecord, LockRequest};
use jobsafe::testing::FileClock;
use jobsafe::{Clock, DirStore, JobLock, Key, SystemClock};

/// Just past a 15-minute background-function limit, as the service had it.
const TTL: Duration = Duration::from_secs(16 * 60);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--hold") => {
            let dir = PathBuf::from(args.next().ok_or("--hold needs the state directory")?);
            hold(&dir)
        }
        Some(dir) => contend(Path::new(dir)),
        None => contend(tempfile::tempdir()?.path()),
    }
}

fn vault() -> jobsafe::Result<Key> {
    Key::new(["index-jobs", "lic:abc123", "vault-1"])
}

fn open_locks(dir: &Path) -> jobsafe::Result<JobLock<DirStore>> {
    let clock = FileClock::open(dir.join("clock"));
    Ok(JobLock::new(
        DirStore::open(dir.join("store"))?,
        Arc::new(clock),
    ))
}

/// The first process: takes the lock, says so, and "re-indexes" until killed.
fn hold(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let locks = open_locks(dir)?;
    let request = LockRequest::new()
        .actor("user:alice")
        .meta("chunks_to_embed", 1200)
        .meta("estimated_seconds", 540)
        .meta("reason", "vault re-index");
    match locks.acquire(&vault()?, TTL, &request)? {
        Acquire::Acquired(guard) => {
            println!("acquired {}", guard.token().get());
            // Re-indexing... until SIGKILL. The guard is never dropped.
            loop {
                std::thread::park();
            }
        }
        Acquire::Held(holder) => Err(format!("already held by {}", holder.holder()).into()),
    }
}

/// The second process (this one): contends, kills the holder, takes over.
fn contend(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(format!("{} is not empty: give a new directory", dir.display()).into());
    }
    let clock = FileClock::create(dir.join("clock"), SystemClock.now_ms())?;
    println!("state in {}", dir.display());

    println!("1. process A starts a re-index of vault-1");
    let (mut holder, first_token) = start_holder(dir)?;
    println!(
        "   process A (pid {}) holds the lock, fencing token #{first_token}",
        holder.id()
    );

    let locks = open_locks(dir)?;
    let double_click = LockRequest::new()
        .actor("user:alice")
        .meta("reason", "double click");
    println!("2. a double click asks for the same lock");
    match locks.acquire(&vault()?, TTL, &double_click)? {
        Acquire::Held(record) => println!("   409 Conflict: {}", describe(&record, clock.now_ms())),
        Acquire::Acquired(_) => return Err("the second request got a held lock".into()),
    }

    println!("3. process A is killed with SIGKILL mid re-index (it never releases)");
    holder.kill()?;
    holder.wait()?;
    let second_token = match locks.acquire(&vault()?, TTL, &double_click)? {
        Acquire::Acquired(guard) => {
            let token = guard.token().get();
            println!(
                "   taken over at once, its holder provably dead: fencing token #{token} (was #{first_token})"
            );
            guard.release()?;
            token
        }
        Acquire::Held(record) => {
            return Err(format!("a dead holder kept its lock: {}", record.holder()).into());
        }
    };

    println!("4. process B starts a re-index and hangs (SIGSTOP): alive, but stuck");
    let (mut hung, token) = start_holder(dir)?;
    signal(&hung, "STOP")?;
    println!(
        "   process B (pid {}) holds fencing token #{token}",
        hung.id()
    );
    let Acquire::Held(record) = locks.acquire(&vault()?, TTL, &double_click)? else {
        return Err("a live holder's lock was free before its lease ended".into());
    };
    println!(
        "   a live holder keeps its lock: {}",
        describe(&record, clock.now_ms())
    );

    println!("5. time passes to the end of the lease (the example moves its clock)");
    clock.set(record.expires_ms)?;
    let outcome = locks.acquire(&vault()?, TTL, &LockRequest::new().actor("user:alice"))?;
    hung.kill()?;
    hung.wait()?;
    match outcome {
        Acquire::Acquired(guard) => {
            println!(
                "   taken over at expiry: fencing token #{} (after #{second_token} and #{token}); a late write from B would be refused",
                guard.token().get()
            );
            guard.release()?;
            println!("6. the new re-index finished and released the lock");
        }
        Acquire::Held(record) => {
            return Err(format!("not taken over at expiry: {}", record.holder()).into());
        }
    }
    Ok(())
}

/// Starts a holder process; returns it with the fencing token it got.
fn start_holder(dir: &Path) -> Result<(Child, String), Box<dyn std::error::Error>> {
    let mut holder = Command::new(std::env::current_exe()?)
        .arg("--hold")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let token = line
        .trim()
        .strip_prefix("acquired ")
        .ok_or_else(|| format!("the holder did not get the lock: {line:?}"))?
        .to_owned();
    Ok((holder, token))
}

/// Sends `SIG<name>` to `process` with kill(1).
fn signal(process: &Child, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(process.id().to_string())
        .status()?;
    if !status.success() {
        return Err(format!("kill -{name} {} failed", process.id()).into());
    }
    Ok(())
}

fn describe(record: &LockRecord, now_ms: u64) -> String {
    let left = record.expires_ms.saturating_sub(now_ms) / 1000;
    let chunks = record
        .metadata
        .get("chunks_to_embed")
        .map(ToString::to_string)
        .unwrap_or_default();
    format!(
        "re-index already running as {} (token #{}, {chunks} chunks), lease ends in {left} s",
        record.holder(),
        record.token.get()
    )
}
