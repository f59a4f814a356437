//! A backend written outside the crate, against the public API alone: a
//! [`Store`] over an in-process record server. It keeps the whole contract, so
//! it passes every clause of the conformance suite (reopen and corruption
//! included) and carries the crate's parts; and each flaw planted in it is
//! reported by the clause about it: a suite that passed every backend would
//! prove nothing.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jobsafe::conformance::{self, Harness};
use jobsafe::lock::{Acquire, LockRequest, Release};
use jobsafe::store::{Applied, BatchOp, ListPage, Quarantined, Scan};
use jobsafe::{
    Batch, Entry, Error, Expect, JobLock, Key, ManualClock, Prefix, Result, Store, Version,
};
use parking_lot::{Condvar, Mutex, RwLock};

/// A deliberate break of the contract, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    None,
    /// `put(Absent)` overwrites like `put(Any)`.
    IgnoresAbsent,
    /// A delete hands its record's version out again (ABA).
    ReusesVersionsAfterDelete,
    /// A batch applies the operations before the one that fails.
    BatchStopsAtConflict,
    /// `list` matches the prefix as a string, not as whole segments.
    ListMatchesPartialSegments,
    /// `list` ignores `after` past the first page.
    ListRestartsPages,
    /// A failed precondition reports no current version.
    ConflictHidesCurrent,
    /// Values of any size are stored: `apply` skips `Batch::validate`.
    IgnoresValueLimit,
    /// `scan` starts each page at the last key but one of the page before.
    ScanOverlapsPages,
    /// `scan` skips the keys written since it started, updates included.
    ScanSkipsUpdated,
    /// A large put draws its version, then waits for the key while other puts
    /// go on, as a database that draws from a sequence before it locks the row
    /// (the write of a large value takes long enough for small ones to pass).
    DrawsVersionBeforeLocking,
}

/// Values this long take the slow path of `Flaw::DrawsVersionBeforeLocking`.
const SLOW_VALUE: usize = 64 << 10;

/// What a record server keeps: encoded records, as a remote key-value service
/// would, so that their bytes can be damaged.
#[derive(Debug, Default)]
struct Records {
    /// Each record as [`encode`] wrote it.
    live: BTreeMap<Key, Vec<u8>>,
    /// The last version handed out, to any key: a version is never used twice,
    /// whatever is deleted or quarantined.
    last_version: u64,
    /// Records moved aside, bytes as they were.
    quarantine: Vec<(Key, Vec<u8>)>,
}

/// A client of a record server. Clients of one server share its records; one
/// lock over them makes every batch atomic for concurrent readers.
#[derive(Debug)]
struct Toy {
    server: Arc<RwLock<Records>>,
    /// The highest version a completed put wrote, for a slow put to wait for
    /// one that drew after it.
    puts_done: Arc<(Mutex<u64>, Condvar)>,
    flaw: Flaw,
}

/// A record's bytes: its version, its value, and a checksum of both.
fn encode(version: Version, value: &[u8]) -> Vec<u8> {
    let mut bytes = version.get().to_be_bytes().to_vec();
    bytes.extend_from_slice(value);
    let sum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&sum.to_be_bytes());
    bytes
}

fn decode(key: &Key, bytes: &[u8]) -> Result<Entry> {
    let corrupt = |reason: &str| Error::Corrupt {
        key: key.clone(),
        path: None,
        reason: reason.to_owned(),
    };
    if bytes.len() < 12 {
        return Err(corrupt("shorter than a version and a checksum"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let (version, value) = body.split_at(8);
    let version = u64::from_be_bytes(version.try_into().unwrap());
    Ok(Entry::new(value.to_vec(), Version::new(version)))
}

impl Toy {
    /// A client of a new, empty server.
    fn new(flaw: Flaw) -> Self {
        Toy {
            server: Arc::default(),
            puts_done: Arc::default(),
            flaw,
        }
    }

    /// Another client of the same server, as a restarted process would open.
    fn reconnect(&self) -> Self {
        Toy {
            server: self.server.clone(),
            puts_done: self.puts_done.clone(),
            flaw: self.flaw,
        }
    }

    /// Records a completed put of `version` and wakes a slow put waiting.
    fn put_done(&self, version: Version) {
        let (done, changed) = &*self.puts_done;
        let mut done = done.lock();
        *done = (*done).max(version.get());
        changed.notify_all();
    }

    /// `Flaw::DrawsVersionBeforeLocking`: draws the version, waits until a put
    /// that drew after it completed (or a while), then writes with the version
    /// drawn, over the later one.
    fn put_drawn_early(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        Entry::check_value(key, value)?;
        let version = {
            let mut records = self.server.write();
            records.last_version += 1;
            Version::new(records.last_version)
        };
        {
            let (done, changed) = &*self.puts_done;
            let mut done = done.lock();
            // Only so that a put nobody follows returns at all: the clause that
            // catches the flaw always has another put coming.
            let deadline = std::time::Instant::now() + Duration::from_millis(200);
            while *done <= version.get() && !changed.wait_until(&mut done, deadline).timed_out() {}
        }
        let mut records = self.server.write();
        self.check(&records, key, expect)?;
        records.live.insert(key.clone(), encode(version, value));
        drop(records);
        self.put_done(version);
        Ok(version)
    }

    /// Flips a bit of the record of `key`, behind the clients' backs; `false`
    /// if there is none.
    fn damage(&self, key: &Key) -> bool {
        match self.server.write().live.get_mut(key) {
            Some(bytes) => {
                bytes[8] ^= 1;
                true
            }
            None => false,
        }
    }

    /// The current record of `key`: an undecodable one is an error, never absent.
    fn current(records: &Records, key: &Key) -> Result<Option<Entry>> {
        records.live.get(key).map(|b| decode(key, b)).transpose()
    }

    /// Checks `expect` against the current record of `key`; returns its version.
    fn check(&self, records: &Records, key: &Key, expect: Expect) -> Result<Option<Version>> {
        let current = Self::current(records, key)?.map(|e| e.version);
        let expect = match (self.flaw, expect) {
            (Flaw::IgnoresAbsent, Expect::Absent) => Expect::Any,
            _ => expect,
        };
        match expect.check(key, current) {
            Err(Error::Conflict { key, expected, .. })
                if self.flaw == Flaw::ConflictHidesCurrent =>
            {
                Err(Error::Conflict {
                    key,
                    expected,
                    current: None,
                })
            }
            other => other.map(|()| current),
        }
    }

    fn write(&self, records: &mut Records, op: &BatchOp, current: Option<Version>) -> Applied {
        match op {
            BatchOp::Put { key, value, .. } => {
                records.last_version += 1;
                let version = Version::new(records.last_version);
                records.live.insert(key.clone(), encode(version, value));
                Applied::Put(version)
            }
            BatchOp::Delete { key, .. } => {
                let existed = records.live.remove(key).is_some();
                if let (Flaw::ReusesVersionsAfterDelete, Some(v)) = (self.flaw, current) {
                    records.last_version = v.get() - 1;
                }
                Applied::Deleted(existed)
            }
        }
    }
}

impl Store for Toy {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        Self::current(&self.server.read(), key)
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        if self.flaw == Flaw::DrawsVersionBeforeLocking && value.len() >= SLOW_VALUE {
            return self.put_drawn_early(key, value, expect);
        }
        let applied = self.apply(&Batch::new().put(key, value, expect))?;
        match applied[..] {
            [Applied::Put(version)] => {
                self.put_done(version);
                Ok(version)
            }
            _ => unreachable!("a put applies as a put: {applied:?}"),
        }
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        let applied = self.apply(&Batch::new().delete(key, expect))?;
        Ok(applied[..] == [Applied::Deleted(true)])
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        if limit == 0 {
            return Err(Error::InvalidArgument(
                "list limit must be at least 1".into(),
            ));
        }
        let after = after.filter(|_| self.flaw != Flaw::ListRestartsPages);
        let matches = |key: &Key| match self.flaw {
            Flaw::ListMatchesPartialSegments => key
                .segments()
                .join("/")
                .starts_with(&prefix.segments().join("/")),
            _ => key.starts_with(prefix),
        };
        let records = self.server.read();
        let mut keys: Vec<Key> = records
            .live
            .keys()
            .filter(|k| after.is_none_or(|a| *k > a) && matches(k))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().cloned()
        } else {
            None
        };
        Ok(ListPage::new(keys, next))
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        if self.flaw != Flaw::IgnoresValueLimit {
            batch.validate()?;
        }
        let mut records = self.server.write();
        if self.flaw == Flaw::BatchStopsAtConflict {
            return batch
                .ops()
                .iter()
                .map(|op| {
                    let current = self.check(&records, op.key(), op.expect())?;
                    Ok(self.write(&mut records, op, current))
                })
                .collect();
        }
        // Every precondition first: a batch that fails changes nothing.
        let currents = batch
            .ops()
            .iter()
            .map(|op| self.check(&records, op.key(), op.expect()))
            .collect::<Result<Vec<_>>>()?;
        Ok(batch
            .ops()
            .iter()
            .zip(currents)
            .map(|(op, current)| self.write(&mut records, op, current))
            .collect())
    }

    fn scan(&self, prefix: &Prefix, page_size: usize) -> Scan<'_> {
        let flaw = self.flaw;
        if !matches!(flaw, Flaw::ScanOverlapsPages | Flaw::ScanSkipsUpdated) {
            return Scan::by_pages(self, prefix.clone(), page_size);
        }
        let prefix = prefix.clone();
        let started = self.server.read().last_version;
        let mut after: Option<Key> = None;
        let mut done = false;
        Scan::new(std::iter::from_fn(move || {
            while !done {
                let page = match self.list(&prefix, after.as_ref(), page_size) {
                    Ok(page) => page,
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                };
                done = page.next.is_none();
                after = match (flaw, &page.keys[..]) {
                    (Flaw::ScanOverlapsPages, [.., again, _]) => Some(again.clone()),
                    _ => page.next,
                };
                let records = self.server.read();
                let keys: Vec<Key> = page
                    .keys
                    .into_iter()
                    .filter(|k| {
                        // Only keys written since the scan began are skipped;
                        // a damaged one is still listed.
                        flaw != Flaw::ScanSkipsUpdated
                            || !Self::current(&records, k)
                                .is_ok_and(|e| e.is_some_and(|e| e.version.get() > started))
                    })
                    .collect();
                if !keys.is_empty() {
                    return Some(Ok(keys));
                }
            }
            None
        }))
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        let mut records = self.server.write();
        let Some(bytes) = records.live.remove(key) else {
            return Ok(None);
        };
        records.quarantine.push((key.clone(), bytes));
        let location = format!("quarantine #{}", records.quarantine.len());
        Ok(Some(Quarantined::new(key.clone(), location)))
    }
}

/// Fresh servers, with a client that has `flaw`.
struct Toys(Flaw);

impl Harness for Toys {
    type Store = Toy;

    fn fresh(&mut self) -> Result<Toy> {
        Ok(Toy::new(self.0))
    }

    fn reopen(&mut self, store: Toy) -> Result<Option<Toy>> {
        let reopened = store.reconnect();
        drop(store);
        Ok(Some(reopened))
    }

    fn corrupt(&mut self, store: &Toy, key: &Key) -> Result<bool> {
        Ok(store.damage(key))
    }

    fn open_another(&mut self, store: &Toy) -> Result<Option<Toy>> {
        Ok(Some(store.reconnect()))
    }
}

jobsafe::conformance_suite!(contract, Toys(Flaw::None), may_skip: []);

#[test]
fn a_job_lock_runs_on_it() {
    let clock = ManualClock::new(1_700_000_000_000);
    let locks = JobLock::new(Toy::new(Flaw::None), Arc::new(clock.clone()));
    let key = Key::new(["reindex"]).unwrap();
    let ttl = Duration::from_secs(60);
    let request = LockRequest::new().actor("worker-1");
    let Acquire::Acquired(first) = locks.acquire(&key, ttl, &request).unwrap() else {
        panic!("a free lock was held");
    };
    assert!(matches!(
        locks.acquire(&key, ttl, &request).unwrap(),
        Acquire::Held(_)
    ));
    let token = first.token();
    assert!(matches!(first.release().unwrap(), Release::Released));
    let Acquire::Acquired(second) = locks.acquire(&key, ttl, &request).unwrap() else {
        panic!("a released lock was held");
    };
    assert!(second.token() > token);
}

/// The clauses a store with `flaw` breaks.
fn violated(flaw: Flaw) -> Vec<&'static str> {
    let report = conformance::run_all(&mut Toys(flaw));
    report.violations().map(|(name, _)| name).collect()
}

#[test]
fn put_absent_that_overwrites_is_caught() {
    let caught = violated(Flaw::IgnoresAbsent);
    assert!(
        caught.contains(&"put_absent_inserts_only_once"),
        "{caught:?}"
    );
    assert!(
        caught.contains(&"concurrent_put_absent_has_exactly_one_winner"),
        "{caught:?}"
    );
}

#[test]
fn versions_reused_after_delete_are_caught() {
    let caught = violated(Flaw::ReusesVersionsAfterDelete);
    assert!(caught.contains(&"versions_are_never_reused"), "{caught:?}");
}

#[test]
fn batch_applied_up_to_its_failure_is_caught() {
    let caught = violated(Flaw::BatchStopsAtConflict);
    // A batch that stops at a damaged record has applied what came before it.
    assert_eq!(
        caught,
        [
            "batch_conflict_changes_nothing",
            "corrupt_record_is_reported_never_absent"
        ]
    );
}

#[test]
fn prefix_matching_part_of_a_segment_is_caught() {
    let caught = violated(Flaw::ListMatchesPartialSegments);
    assert!(
        caught.contains(&"list_is_ordered_and_matches_whole_segments"),
        "{caught:?}"
    );
}

#[test]
fn pages_that_ignore_the_cursor_are_caught() {
    let caught = violated(Flaw::ListRestartsPages);
    assert!(
        caught.contains(&"list_pages_cover_every_key_once"),
        "{caught:?}"
    );
}

#[test]
fn scans_that_return_a_key_twice_are_caught() {
    let caught = violated(Flaw::ScanOverlapsPages);
    assert!(
        caught.contains(&"scan_returns_every_key_once_in_order"),
        "{caught:?}"
    );
}

#[test]
fn scans_that_miss_a_key_updated_during_them_are_caught() {
    let caught = violated(Flaw::ScanSkipsUpdated);
    assert_eq!(
        caught,
        ["scan_returns_a_key_written_during_it_at_most_once"]
    );
}

#[test]
fn conflicts_without_the_current_version_are_caught() {
    let caught = violated(Flaw::ConflictHidesCurrent);
    assert!(
        caught.contains(&"put_absent_inserts_only_once"),
        "{caught:?}"
    );
    assert!(
        caught.contains(&"put_version_is_compare_and_set"),
        "{caught:?}"
    );
}

#[test]
fn values_over_the_limit_that_are_stored_are_caught() {
    let caught = violated(Flaw::IgnoresValueLimit);
    assert!(
        caught.contains(&"value_over_the_limit_is_refused_and_changes_nothing"),
        "{caught:?}"
    );
}

#[test]
fn versions_drawn_before_the_key_is_locked_are_caught() {
    let caught = violated(Flaw::DrawsVersionBeforeLocking);
    assert_eq!(caught, ["versions_follow_real_time_across_handles"]);
}
