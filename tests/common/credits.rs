//! Credits kept as numbers in a store beside a `JobLedger`: an account's
//! balance and each job's charge count, booked in the same batch as the
//! ledger's reservation so that a test can check that every job was charged
//! exactly once, net.

use jobsafe::store::BatchOp;
use jobsafe::{Expect, Key, Store, Version};

/// The job id of the `n`th job of a test: `job-07`.
pub fn job(n: impl std::fmt::Display) -> String {
    format!("job-{n:0>2}")
}

/// Where the balance of `account` is kept.
pub fn balance_key(account: &str) -> Key {
    Key::new(["credits", account]).unwrap_or_else(|e| panic!("balance key: {e}"))
}

/// Where the number of charges of `job_id` is kept.
pub fn charges_key(job_id: &str) -> Key {
    Key::new(["charges", job_id]).unwrap_or_else(|e| panic!("charges key: {e}"))
}

/// The number at `key` (0 if absent, `i64::MIN` if it is not a number) and
/// its version.
pub fn read_number(store: &dyn Store, key: &Key) -> jobsafe::Result<(i64, Option<Version>)> {
    Ok(match store.get(key)? {
        Some(entry) => (
            std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(i64::MIN),
            Some(entry.version),
        ),
        None => (0, None),
    })
}

/// Operations adding `delta` to the job's charge count and taking it from the
/// balance of `account`, each guarded by the version read.
pub fn book(
    store: &dyn Store,
    account: &str,
    job_id: &str,
    delta: i64,
) -> jobsafe::Result<Vec<BatchOp>> {
    let mut ops = Vec::new();
    for (key, sign) in [(balance_key(account), -1), (charges_key(job_id), 1)] {
        let (value, version) = read_number(store, &key)?;
        ops.push(BatchOp::Put {
            key,
            value: (value + sign * delta).to_string().into_bytes(),
            expect: version.map_or(Expect::Absent, Expect::Version),
        });
    }
    Ok(ops)
}
