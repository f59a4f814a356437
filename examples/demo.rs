//! A small credit-charging job runner on the embedded default store
//! ([`LogStore`]).
//!
//! Each job id is charged one credit exactly once, however often it is
//! submitted: [`JobLedger::reserve_with`] writes the reservation and the balance
//! change in one atomic batch, so a crash can never charge without recording or
//! record without charging. Each job writes its result file atomically. Run it
//! twice on one directory: the second run finds the jobs already charged and
//! their artifacts in place, and charges nothing.
//!
//! ```text
//! cargo run --example demo [WORK_DIR]
//! ```
//!
//! Without `WORK_DIR`, the run works in a new directory under the system temp
//! directory and prints it. The operator tool reads what it wrote:
//! `cargo run --features cli --bin jobsafe -- --store log:WORK_DIR/store ledger list`.

use std::path::PathBuf;
use std::sync::Arc;

use jobsafe::ledger::{ChargeRequest, Reserve};
use jobsafe::store::BatchOp;
use jobsafe::{AtomicWriter, Expect, JobLedger, Key, LogStore, Prefix, Store, SystemClock};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = match std::env::args().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => fresh_work_dir()?,
    };
    let store = Arc::new(LogStore::open(root.join("store"))?);
    let ledger = JobLedger::new(Arc::clone(&store), Arc::new(SystemClock));
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    println!("store: {}", store.root().display());

    let account = "lic:abc123";
    let balance_key = Key::new(["credits", account])?;
    if store.get(&balance_key)?.is_none() {
        store.put(&balance_key, b"10", Expect::Absent)?;
        println!("opened account {account} with 10 credits");
    }

    // The same job submitted three times (a client retrying), and a second job.
    for job_id in ["job-1", "job-1", "job-2", "job-1"] {
        let request = ChargeRequest::new().meta("credits", 1);
        let charge = |_: &_| debit(&store, &balance_key);
        match ledger.reserve_with(account, job_id, &request, charge)? {
            Reserve::New(_) => println!(
                "{job_id}: charged 1 credit, {} left",
                balance(&store, &balance_key)?
            ),
            Reserve::Existing(_) => println!("{job_id}: already charged, retry is free"),
            Reserve::InFlight(_) => println!("{job_id}: its charge is in flight, try later"),
        }
        let artifact = artifacts.join(format!("{job_id}.json"));
        if artifact.exists() {
            println!("{job_id}: artifact already complete, not rewritten");
        } else {
            let body = format!("{{\"job\":\"{job_id}\",\"words\":{}}}", job_id.len() * 100);
            AtomicWriter::new().write(&artifact, body.as_bytes())?;
            println!("{job_id}: wrote {} atomically", artifact.display());
        }
    }

    println!("records now in the store:");
    for key in store.list_all(&Prefix::all())? {
        let entry = store.get(&key)?.ok_or("listed key vanished")?;
        println!(
            "  {key} @ {} = {}",
            entry.version,
            String::from_utf8_lossy(&entry.value)
        );
    }
    Ok(())
}

/// The balance now.
fn balance(store: &LogStore, balance_key: &Key) -> jobsafe::Result<u64> {
    let entry = store
        .get(balance_key)?
        .ok_or_else(|| jobsafe::Error::InvalidArgument(format!("no balance at {balance_key}")))?;
    String::from_utf8_lossy(&entry.value)
        .parse()
        .map_err(|_| jobsafe::Error::InvalidArgument(format!("{balance_key} is not a number")))
}

/// The balance change to apply with a new reservation: one credit less, if
/// the balance is still the one read (the ledger retries if it moved).
fn debit(store: &LogStore, balance_key: &Key) -> jobsafe::Result<Vec<BatchOp>> {
    let entry = store
        .get(balance_key)?
        .ok_or_else(|| jobsafe::Error::InvalidArgument(format!("no balance at {balance_key}")))?;
    let credits = balance(store, balance_key)?;
    if credits == 0 {
        return Err(jobsafe::Error::InvalidArgument("no credits left".into()));
    }
    Ok(vec![BatchOp::Put {
        key: balance_key.clone(),
        value: (credits - 1).to_string().into_bytes(),
        expect: Expect::Version(entry.version),
    }])
}

/// A new directory under the system temp directory, named by time and process.
fn fresh_work_dir() -> std::io::Result<PathBuf> {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let dir = std::env::temp_dir().join(format!("jobsafe-demo-{started}-{}", std::process::id()));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
