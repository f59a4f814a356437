//! A relay that charges one credit per job id, as two processes over one store.
//!
//! The balance and the ledger live in the same `LogStore`, and every charge and
//! refund changes both in one atomic batch. Process A charges a job and is
//! killed with SIGKILL before the job finishes; process B (the restart) finds the
//! unfinished job in the ledger and refunds it. Then retries within the TTL are
//! free, and eight concurrent duplicates of one request charge once. The balance
//! is printed after each step.
//!
//! ```text
//! cargo run --example relay_credits [NEW_STATE_DIR]
//! ```

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use jobsafe::ledger::{ChargeRequest, Reserve};
use jobsafe::store::BatchOp;
use jobsafe::{Error, Expect, JobLedger, Key, LogStore, Store, SystemClock};

const ACCOUNT: &str = "lic:abc123";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--charge-and-work") => {
            let dir = args
                .next()
                .ok_or("--charge-and-work needs the state directory")?;
            let job = args.next().ok_or("--charge-and-work needs a job id")?;
            charge_and_work(Path::new(&dir), &job)
        }
        Some(dir) => relay(Path::new(dir)),
        None => relay(tempfile::tempdir()?.path()),
    }
}

struct Relay {
    store: Arc<LogStore>,
    ledger: JobLedger<Arc<LogStore>>,
}

impl Relay {
    fn open(dir: &Path) -> jobsafe::Result<Self> {
        let store = Arc::new(LogStore::open(dir.join("store"))?);
        let ledger = JobLedger::new(Arc::clone(&store), Arc::new(SystemClock));
        Ok(Relay { store, ledger })
    }

    fn balance(&self) -> jobsafe::Result<i64> {
        let entry = self.store.get(&balance_key()?)?;
        Ok(entry.map_or(0, |e| {
            String::from_utf8_lossy(&e.value).parse().unwrap_or(0)
        }))
    }

    /// The balance change `delta` as an operation guarded by the balance's version.
    fn add(&self, delta: i64) -> jobsafe::Result<Vec<BatchOp>> {
        let key = balance_key()?;
        let entry = self.store.get(&key)?;
        let now = entry.as_ref().map_or(0, |e| {
            String::from_utf8_lossy(&e.value).parse().unwrap_or(0)
        });
        if now + delta < 0 {
            return Err(Error::InvalidArgument(format!(
                "{ACCOUNT} has no credits left"
            )));
        }
        Ok(vec![BatchOp::Put {
            key,
            value: (now + delta).to_string().into_bytes(),
            expect: entry.map_or(Expect::Absent, |e| Expect::Version(e.version)),
        }])
    }

    /// Charges `job` once: the reservation and the debit in one batch.
    fn charge(&self, job: &str) -> jobsafe::Result<Reserve> {
        let request = ChargeRequest::new()
            .meta("backend", "transcribe")
            .meta("tier", "pro");
        self.ledger
            .reserve_with(ACCOUNT, job, &request, |_| self.add(-1))
    }

    fn finish(&self, job: &str) -> jobsafe::Result<()> {
        self.store
            .put(&done_key(job)?, b"done", Expect::Any)
            .map(|_| ())
    }
}

fn balance_key() -> jobsafe::Result<Key> {
    Key::new(["credits", ACCOUNT])
}

fn done_key(job: &str) -> jobsafe::Result<Key> {
    Key::new(["done", ACCOUNT, job])
}

/// Process A: charges `job`, says so, and works on it until killed.
fn charge_and_work(dir: &Path, job: &str) -> Result<(), Box<dyn std::error::Error>> {
    let relay = Relay::open(dir)?;
    let outcome = relay.charge(job)?;
    println!(
        "{} {}",
        matches!(outcome, Reserve::New(_)),
        relay.balance()?
    );
    loop {
        std::thread::park(); // "transcribing"... until SIGKILL
    }
}

fn relay(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(format!("{} is not empty: give a new directory", dir.display()).into());
    }
    let relay = Relay::open(dir)?;
    relay.store.put(&balance_key()?, b"10", Expect::Absent)?;
    println!("{ACCOUNT} starts with {} credits", relay.balance()?);

    println!("1. process A charges job-1 and starts it");
    let mut a = Command::new(std::env::current_exe()?)
        .args([
            "--charge-and-work".as_ref(),
            dir.as_os_str(),
            "job-1".as_ref(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(a.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    println!(
        "   charged: {}; balance {}",
        line.trim().starts_with("true"),
        relay.balance()?
    );
    a.kill()?;
    a.wait()?;
    println!("   process A was killed with SIGKILL before job-1 finished");

    println!("2. process B (the restart) refunds what was charged and never finished");
    let restarted = Relay::open(dir)?;
    for reservation in restarted.ledger.list(Some(ACCOUNT))?.reservations {
        let job = &reservation.job_id;
        if restarted.store.get(&done_key(job)?)?.is_some() {
            continue;
        }
        let refunded = restarted
            .ledger
            .refund_with(ACCOUNT, job, |_| restarted.add(1))?;
        println!(
            "   refunded {job}: {}; balance {}",
            refunded.is_some(),
            restarted.balance()?
        );
    }

    println!("3. job-2 is charged once; its retries within the hour are free");
    for attempt in 1..=3 {
        let outcome = restarted.charge("job-2")?;
        let what = if matches!(outcome, Reserve::New(_)) {
            "charged"
        } else {
            "free retry"
        };
        println!(
            "   attempt {attempt}: {what}; balance {}",
            restarted.balance()?
        );
    }
    restarted.finish("job-2")?;

    println!("4. eight concurrent duplicates of job-3 charge once");
    let charged: usize = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| restarted.charge("job-3")))
            .collect();
        calls
            .into_iter()
            .map(|call| match call.join() {
                Ok(Ok(Reserve::New(_))) => 1,
                _ => 0,
            })
            .sum()
    });
    println!(
        "   {charged} of 8 charged; balance {}",
        restarted.balance()?
    );
    if charged != 1 || restarted.balance()? != 8 {
        return Err("the relay charged the wrong number of credits".into());
    }
    Ok(())
}
