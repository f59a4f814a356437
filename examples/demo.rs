//! A small credit-charging job runner on the embedded default store.
//!
//! Each job id is charged one credit exactly once, however often it is submitted:
//! the reservation and the balance change in one atomic batch, so a crash can never
//! charge without recording or record without charging. Each job writes its result
//! file atomically. Run it twice: the second run finds the jobs already charged and
//! their artifacts in place, and charges nothing.
//!
//! ```text
//! cargo run --example demo [STORE_DIR]
//! ```

use std::path::PathBuf;

use jobsafe::{AtomicWriter, Batch, DirStore, Expect, Key, Prefix, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("jobsafe-demo"));
    let store = DirStore::open(root.join("store"))?;
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
        match charge_once(&store, &balance_key, account, job_id)? {
            Some(left) => println!("{job_id}: charged 1 credit, {left} left"),
            None => println!("{job_id}: already charged, retry is free"),
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

/// Charges one credit for `job_id` unless it was charged before. Returns the new
/// balance, or `None` for a repeat. Retries on a concurrent change of the balance.
fn charge_once(
    store: &DirStore,
    balance_key: &Key,
    account: &str,
    job_id: &str,
) -> jobsafe::Result<Option<u64>> {
    let reservation = Key::new(["ledger", account, job_id])?;
    loop {
        if store.get(&reservation)?.is_some() {
            return Ok(None);
        }
        let balance = store
            .get(balance_key)?
            .ok_or_else(|| jobsafe::Error::InvalidArgument(format!("no account {account}")))?;
        let credits: u64 = String::from_utf8_lossy(&balance.value)
            .parse()
            .map_err(|_| jobsafe::Error::InvalidArgument("balance is not a number".into()))?;
        let left = credits.saturating_sub(1);
        let batch = Batch::new()
            .put(&reservation, br#"{"charged":1}"#.to_vec(), Expect::Absent)
            .put(
                balance_key,
                left.to_string().into_bytes(),
                Expect::Version(balance.version),
            );
        match store.apply(&batch) {
            Ok(_) => return Ok(Some(left)),
            // Someone else charged this job or moved the balance: look again.
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
}
