//! Two processes contend for one vault's re-index lock.
//!
//! The first process takes the lock and starts a long re-index; a double click
//! starts a second one, which is refused with the holder's record (an HTTP
//! server would answer 409 with it). The first process is then killed with
//! SIGKILL, without releasing: the lock stays held until its lease ends, and from
//! that moment the next acquire takes it over with a greater fencing token. So
//! that the example does not wait out a 16-minute lease, both processes read a
//! file-backed clock that the example moves forward.
//!
//! ```text
//! cargo run --example index_lock [NEW_STATE_DIR]
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    let mut holder = Command::new(std::env::current_exe()?)
        .arg("--hold")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let first_token = line
        .trim()
        .strip_prefix("acquired ")
        .ok_or_else(|| format!("process A did not get the lock: {line:?}"))?
        .to_owned();
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
    let Acquire::Held(record) = locks.acquire(&vault()?, TTL, &double_click)? else {
        return Err("the dead holder's lock was free before its lease ended".into());
    };
    println!(
        "   the lock is still held: {}",
        describe(&record, clock.now_ms())
    );

    println!("4. time passes to the end of the lease (the example moves its clock)");
    clock.set(record.expires_ms)?;
    match locks.acquire(&vault()?, TTL, &LockRequest::new().actor("user:alice"))? {
        Acquire::Acquired(guard) => {
            println!(
                "   taken over at expiry: fencing token #{} (was #{first_token}); a late write from A would be refused",
                guard.token().get()
            );
            guard.release()?;
            println!("5. the new re-index finished and released the lock");
        }
        Acquire::Held(record) => {
            return Err(format!("not taken over at expiry: {}", record.holder()).into());
        }
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
