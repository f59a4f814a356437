//! Several processes run lock, ledger and job workloads on `PgStore`s through
//! proxies of the test's own ([`common::proxy`]) that break the network under
//! them: a commit's reply lost, a commit dropped, a request cut off by a reset,
//! a connection gone silent, a commit delivered after its client gave up; and,
//! with root and `nft`, a connection whose packets the kernel drops, which
//! only the sockets' keepalives and user timeout can notice.
//!
//! Each child process has its own store (its own pool) with a call deadline
//! of [`STORE_CALL`] and managers whose `resolve_within` makes [`D`] the bound
//! of a whole call; it
//! times every manager call on the machine's monotonic clock, which every
//! process shares. The parent injects the faults for `JOBSAFE_NET_FAULT_SECS`
//! seconds (default [`DEFAULT_SECS`]), then checks:
//!
//! - locks: of two acquires where one ended before the other started, the
//!   later has the higher fencing token; every holder seen in a lock record
//!   (by an acquire that found the lock held, by a look right after an
//!   acquire failed and again a little later, and at the end) is an acquire
//!   that returned `Acquired` or an ambiguous error: a write that landed
//!   behind an error would be a holder nobody knows;
//! - ledger: the balance plus the live reservations is the starting balance,
//!   and no job is charged twice;
//! - jobs: no event is appended twice (a worker appends again after a plain
//!   transient error), no create that returned a plain error made its job,
//!   and no start that returned a plain error left its job running;
//! - no manager call took longer than `D` + 1 s.
//!
//! It prints one summary line (`pg_network_faults: ...`) and fails unless
//! there were no violations and, in a run of 60 s or more, every kind of
//! fault and enough resolved ambiguous outcomes happened.
//!
//! - `JOBSAFE_NET_FAULT_SECS`: how long the faults run (default
//!   [`DEFAULT_SECS`]; CI runs 60).
//! - `JOBSAFE_REQUIRE_NFT=1`: fail, instead of skipping the packet-filter
//!   faults with a loud message, when not root or `nft` is missing. The
//!   filter's nftables table is deleted on every exit the process survives,
//!   and a table left by a killed run is deleted by the next.
//! - `JOBSAFE_NET_FAULT_SLOW_SOCKETS=1`: give the packet filter's stores
//!   socket bounds of a minute; the run must then fail, which shows that it
//!   checks them.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::child::{self, Child};
use common::credits::{balance_key, book, charges_key, read_number};
use common::pg::{self, Schemas};
use common::proxy::{Fault, Proxy};
use jobsafe::jobs::NewJob;
use jobsafe::ledger::{ChargeRequest, Reserve};
use jobsafe::lock::{Acquire, LockRequest};
use jobsafe::store::{Applied, ListPage, Quarantined};
use jobsafe::{
    AttemptId, Batch, Durability, Entry, Error, Expect, JobLedger, JobLock, JobState, Key, PgStore,
    Prefix, SharedClock, Store, SystemClock, Version,
};

const TEST: &str = "network_faults_leave_no_ghost_no_double_charge_and_no_late_call";

/// The deadline of a manager call, by construction: its writes start within
/// [`RESOLVE_WITHIN`], and after the last one comes at most one re-read, each
/// a store call bounded by [`STORE_CALL`].
const D: Duration = Duration::from_secs(2);
/// No manager call may take longer: `D` + 1 s.
const CALL_BOUND: Duration = Duration::from_secs(D.as_secs() + 1);
/// The call deadline of the workloads' stores (`call_timeout`).
const STORE_CALL: Duration = Duration::from_millis(750);
/// How long a manager call keeps re-reading after a write that may have
/// landed, and writing again after one that did not.
const RESOLVE_WITHIN: Duration = Duration::from_millis(500);
const _: () = assert!(
    RESOLVE_WITHIN.as_millis() + 2 * STORE_CALL.as_millis() <= D.as_millis(),
    "a manager call's parts must fit in D"
);
/// The call deadline of the stores the packet filter silences: far beyond
/// [`CALL_BOUND`], so that only the sockets' own timeouts end those calls in
/// time.
const LONG_CALL: Duration = Duration::from_secs(30);
/// The sockets' bounds on those stores.
const USER_TIMEOUT: Duration = Duration::from_secs(1);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the packet filter drops a connection's packets; the proxy then
/// resets it. A client whose sockets did not give up would wait this long.
const FILTERED_FOR: Duration = Duration::from_secs(4);

/// How long a statement of the workloads waits for a row another session
/// writes. A batch cut off before its commit holds its rows until the server
/// ends its session; a call that waited for them and then meets a silent
/// connection takes a store call more, so this wait must stay well within
/// the second a call has beyond `D`.
const LOCK_WAIT: Duration = Duration::from_millis(250);
/// Longest pause of a worker between two of its cycles: the workloads leave
/// the machine some room, so that a call's time is the network's doing.
const PAUSE_MS: u64 = 20;

/// How long after its client gave up a held commit is delivered: past the
/// end of the client's call, re-read included.
const LATE_BY: Duration = Duration::from_secs(1);

const DEFAULT_SECS: u64 = 20;
const CHILDREN: usize = 3;
const THREADS: usize = 2;
const LOCK_TTL: Duration = Duration::from_secs(4);
const HOT_KEYS: usize = 3;
const ACCOUNT: &str = "lic:net";
const INITIAL: i64 = 1_000_000_000;
/// Job ids the ledger children draw from, so that they collide.
const LEDGER_JOBS: u32 = 3_000;

/// What the run must reach.
const MIN_FAULTS_EACH: usize = 20;
const MIN_RESOLVED_EACH: usize = 5;

// ---------------------------------------------------------------------------
// Time shared by processes.

/// Nanoseconds of the machine's monotonic clock, which every process reads
/// alike.
fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap()
}

// ---------------------------------------------------------------------------
// The store wrapper that sees how a manager call's writes went.

#[derive(Clone, Copy, Default)]
struct WriteTrail {
    /// The last write of the current manager call failed transiently.
    last_failed: bool,
}

thread_local! {
    static TRAIL: Cell<WriteTrail> = const { Cell::new(WriteTrail { last_failed: false }) };
}

/// A `PgStore` that records, per thread, whether the last write of the
/// current manager call failed transiently (no write after it).
#[derive(Clone, Debug)]
struct Recording(PgStore);

impl Recording {
    fn begin_call() {
        TRAIL.with(|t| t.set(WriteTrail::default()));
    }

    /// Whether the call that just succeeded found its own write landed after
    /// the write's reply was lost: its last write failed transiently.
    fn resolved_after_failure() -> bool {
        TRAIL.with(|t| t.get().last_failed)
    }

    fn wrote<T>(result: jobsafe::Result<T>) -> jobsafe::Result<T> {
        let failed = result.as_ref().is_err_and(Error::is_transient);
        TRAIL.with(|t| {
            t.set(WriteTrail {
                last_failed: failed,
            })
        });
        result
    }
}

impl Store for Recording {
    fn get(&self, key: &Key) -> jobsafe::Result<Option<Entry>> {
        self.0.get(key)
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> jobsafe::Result<Version> {
        Recording::wrote(self.0.put(key, value, expect))
    }

    fn delete(&self, key: &Key, expect: Expect) -> jobsafe::Result<bool> {
        Recording::wrote(self.0.delete(key, expect))
    }

    fn list(
        &self,
        prefix: &Prefix,
        after: Option<&Key>,
        limit: usize,
    ) -> jobsafe::Result<ListPage> {
        self.0.list(prefix, after, limit)
    }

    fn apply(&self, batch: &Batch) -> jobsafe::Result<Vec<Applied>> {
        Recording::wrote(self.0.apply(batch))
    }

    fn quarantine(&self, key: &Key) -> jobsafe::Result<Option<Quarantined>> {
        self.0.quarantine(key)
    }

    fn is_machine_local(&self) -> bool {
        self.0.is_machine_local()
    }
}

// ---------------------------------------------------------------------------
// Reaching the server, directly or through a proxy.

/// A workload store: call deadline [`STORE_CALL`], short session bounds.
fn workload_store(port: u16, schema: &str) -> PgStore {
    PgStore::builder(&pg::url_through(port))
        .schema(schema)
        .pool_size(u32::try_from(THREADS + 1).unwrap())
        .durability(Durability::AtomicOnly)
        .call_timeout(STORE_CALL)
        .connect_timeout(D)
        .statement_timeout(Duration::from_millis(1_500))
        .lock_timeout(LOCK_WAIT)
        .idle_in_transaction_timeout(Duration::from_secs(1))
        .open()
        .unwrap_or_else(|e| panic!("open a store through the proxy: {e}"))
}

/// A store for the packet filter's faults: a long call deadline, and sockets
/// that give a silent connection up within about two seconds. With
/// `JOBSAFE_NET_FAULT_SLOW_SOCKETS=1` the sockets' bounds are a minute
/// instead, which must make the test fail: it is how to see that it checks
/// them.
fn socket_store(port: u16, schema: &str) -> PgStore {
    let slow = std::env::var("JOBSAFE_NET_FAULT_SLOW_SOCKETS").is_ok_and(|v| v == "1");
    let scale = if slow { 60 } else { 1 };
    PgStore::builder(&pg::url_through(port))
        .schema(schema)
        .pool_size(2)
        .durability(Durability::AtomicOnly)
        .call_timeout(LONG_CALL)
        .connect_timeout(D)
        .statement_timeout(Duration::from_millis(1_500))
        .lock_timeout(LOCK_WAIT)
        .idle_in_transaction_timeout(Duration::from_secs(1))
        .keepalives(KEEPALIVE_IDLE * scale, KEEPALIVE_INTERVAL * scale, 1)
        .tcp_user_timeout(USER_TIMEOUT * scale)
        .open()
        .unwrap_or_else(|e| panic!("open a store through the proxy: {e}"))
}

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

fn hot_key(i: usize) -> Key {
    Key::new(["net", &format!("hot-{i}")]).unwrap()
}

fn ledger_job(i: u32) -> String {
    format!("j{i:05}")
}

// ---------------------------------------------------------------------------
// The packet filter.

/// An nftables table of this process that drops the packets of chosen
/// connections on loopback; deleted when dropped, and on start any left by a
/// process that is gone.
struct Filter {
    table: String,
}

impl Filter {
    /// The filter, or why there is none.
    fn new() -> Result<Filter, String> {
        if !common::is_root() {
            return Err("not root".to_owned());
        }
        if Command::new("nft").arg("--version").output().is_err() {
            return Err("nft is missing (apt-get install nftables)".to_owned());
        }
        Filter::remove_stale();
        let table = format!("jobsafe_test_{}", std::process::id());
        let filter = Filter { table };
        let t = &filter.table;
        filter.nft(&["add", "table", "inet", t])?;
        filter.nft(&[
            "add",
            "set",
            "inet",
            t,
            "conns",
            "{ type inet_service . inet_service; }",
        ])?;
        filter.nft(&[
            "add",
            "chain",
            "inet",
            t,
            "input",
            "{ type filter hook input priority -10; policy accept; }",
        ])?;
        filter.nft(&[
            "add", "rule", "inet", t, "input", "tcp", "sport", ".", "tcp", "dport", "@conns",
            "drop",
        ])?;
        Ok(filter)
    }

    /// Tables of earlier runs whose process is gone.
    fn remove_stale() {
        let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.strip_prefix("table inet ") else {
                continue;
            };
            let Some(pid) = name.strip_prefix("jobsafe_test_") else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("nft")
                    .args(["delete", "table", "inet", name])
                    .status();
            }
        }
    }

    fn nft(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("nft")
            .args(args)
            .output()
            .map_err(|e| format!("run nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn elements(a: u16, b: u16) -> String {
        format!("{{ {a} . {b}, {b} . {a} }}")
    }

    /// Drops every packet between the ports `a` and `b`.
    fn drop_between(&self, a: u16, b: u16) {
        let elements = Filter::elements(a, b);
        self.nft(&["add", "element", "inet", &self.table, "conns", &elements])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Lets them through again.
    fn pass_between(&self, a: u16, b: u16) {
        let elements = Filter::elements(a, b);
        self.nft(&["delete", "element", "inet", &self.table, "conns", &elements])
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        let _ = self.nft(&["delete", "table", "inet", &self.table]);
    }
}

// ---------------------------------------------------------------------------
// The parent.

#[test]
fn network_faults_leave_no_ghost_no_double_charge_and_no_late_call() {
    if let Some(role) = child::role() {
        return in_child(&role);
    }
    let secs: u64 = std::env::var("JOBSAFE_NET_FAULT_SECS")
        .ok()
        .map_or(DEFAULT_SECS, |s| s.parse().unwrap());
    let require_nft = std::env::var("JOBSAFE_REQUIRE_NFT").is_ok_and(|v| v == "1");
    let filter = match Filter::new() {
        Ok(filter) => Some(filter),
        Err(why) if require_nft => {
            panic!("JOBSAFE_REQUIRE_NFT=1 but the packet filter cannot be used: {why}")
        }
        Err(why) => {
            eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
            eprintln!("!!! pg_network_faults: {why}: the packet-filter faults are SKIPPED !!!");
            eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
            None
        }
    };

    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let direct = PgStore::builder(&pg::url()).schema(&schema).open().unwrap();
    direct
        .put(
            &balance_key(ACCOUNT),
            INITIAL.to_string().as_bytes(),
            Expect::Absent,
        )
        .unwrap();

    let upstream = pg::server_addr();
    let proxies: BTreeMap<&str, Proxy> = ["lock", "ledger", "jobs"]
        .into_iter()
        .map(|w| (w, Proxy::start(upstream)))
        .collect();
    // One for each lock child's socket store, so that the packet filter
    // silences one connection of a store at a time.
    let socket_proxies: Vec<Proxy> = (0..CHILDREN).map(|_| Proxy::start(upstream)).collect();

    let mut children = Vec::new();
    for (workload, proxy) in &proxies {
        for (i, socket_proxy) in socket_proxies.iter().enumerate() {
            let mut vars = HashMap::from([
                ("JOBSAFE_NF_SCHEMA", schema.clone()),
                ("JOBSAFE_NF_PORT", proxy.addr().port().to_string()),
                ("JOBSAFE_NF_CHILD", i.to_string()),
                ("JOBSAFE_NF_SOCKET_PORT", "0".to_owned()),
            ]);
            if *workload == "lock" && filter.is_some() {
                vars.insert(
                    "JOBSAFE_NF_SOCKET_PORT",
                    socket_proxy.addr().port().to_string(),
                );
            }
            children.push(Child::spawn(TEST, workload, &vars));
        }
    }
    child::start_together(&mut children);

    // Faults, until the time is up.
    let started = Instant::now();
    let run_for = Duration::from_secs(secs);
    // Lost replies most often: they are what a manager resolves.
    let kinds = [
        Fault::LostReply,
        Fault::DroppedCommit,
        Fault::LostReply,
        Fault::ResetMidRequest,
        Fault::LostReply,
        Fault::Silence { forward: false },
        Fault::LostReply,
        Fault::Silence { forward: true },
        Fault::Delay { after: LATE_BY },
    ];
    let mut next_kind: HashMap<&str, usize> = HashMap::new();
    let mut last_armed: HashMap<&str, Instant> = HashMap::new();
    // Per socket proxy: the connection filtered now, and when the last
    // filter on it ended.
    let mut filtered: Vec<Option<(u16, Instant)>> = vec![None; socket_proxies.len()];
    let mut last_ended: Vec<Instant> = vec![Instant::now(); socket_proxies.len()];
    let mut nft_silences = 0;
    let mut rng = fastrand::Rng::with_seed(7);
    while started.elapsed() < run_for {
        for (workload, proxy) in &proxies {
            let since = last_armed.get(workload).map(Instant::elapsed);
            if proxy.is_armed() || since.is_some_and(|s| s < Duration::from_millis(300)) {
                continue;
            }
            let k = next_kind.entry(workload).or_default();
            proxy.arm(kinds[*k % kinds.len()]);
            *k += 1;
            last_armed.insert(workload, Instant::now());
        }
        if let Some(filter) = &filter {
            for (i, proxy) in socket_proxies.iter().enumerate() {
                let proxy_port = proxy.addr().port();
                match filtered[i] {
                    Some((port, at)) if at.elapsed() >= FILTERED_FOR => {
                        filter.pass_between(port, proxy_port);
                        proxy.kill_connection(port);
                        filtered[i] = None;
                        last_ended[i] = Instant::now();
                    }
                    Some(_) => {}
                    // Alternately a connection waiting for an answer, if
                    // there is one, and any (idle in its pool, most often).
                    None if last_ended[i].elapsed() >= Duration::from_millis(500) => {
                        let mut open = proxy.connections();
                        rng.shuffle(&mut open);
                        if nft_silences % 2 == 0 {
                            open.sort_by_key(|(_, busy)| !busy);
                        }
                        if let Some((port, _)) = open.first() {
                            filter.drop_between(*port, proxy_port);
                            filtered[i] = Some((*port, Instant::now()));
                            nft_silences += 1;
                        }
                    }
                    None => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(filter) = &filter {
        for (i, proxy) in socket_proxies.iter().enumerate() {
            if let Some((port, _)) = filtered[i].take() {
                filter.pass_between(port, proxy.addr().port());
                proxy.kill_connection(port);
            }
        }
    }
    let seconds = started.elapsed().as_secs();

    let mut reports: Vec<String> = Vec::new();
    for c in &mut children {
        c.send("stop");
    }
    for c in children {
        reports.extend(c.finish());
    }
    let nft_used = filter.is_some();
    drop(filter);

    let injected = proxies.values().map(Proxy::injected).fold(
        common::proxy::Injected::default(),
        |mut sum, i| {
            sum.lost_replies += i.lost_replies;
            sum.dropped_commits += i.dropped_commits;
            sum.resets += i.resets;
            sum.silences += i.silences;
            sum.delays += i.delays;
            sum
        },
    );

    let mut violations: Vec<String> = Vec::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut acquires: Vec<AcquireLine> = Vec::new();
    let mut seen_holders: BTreeSet<String> = BTreeSet::new();
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut failed_starts: BTreeSet<String> = BTreeSet::new();
    let mut failed_creates: BTreeSet<String> = BTreeSet::new();
    let mut failed_reserves: BTreeSet<String> = BTreeSet::new();
    for report in &reports {
        let (what, rest) = report.split_once(' ').unwrap_or((report, ""));
        match what {
            "acquire" => {
                let line = AcquireLine::parse(rest);
                if matches!(line.outcome.as_str(), "acquired" | "ambiguous") {
                    known.insert(line.attempt.clone());
                }
                if let Some(holder) = &line.holder {
                    seen_holders.insert(holder.clone());
                }
                acquires.push(line);
            }
            "holder" => {
                seen_holders.insert(rest.to_owned());
            }
            "start-failed" => {
                failed_starts.insert(rest.to_owned());
            }
            "create-failed" => {
                failed_creates.insert(rest.to_owned());
            }
            "reserve-failed" => {
                failed_reserves.insert(rest.to_owned());
            }
            "violation" => violations.push(rest.to_owned()),
            "stats" => {
                for pair in rest.split_whitespace() {
                    let (name, value) = pair.split_once('=').unwrap();
                    let value: u64 = value.parse().unwrap();
                    let total = totals.entry(name.to_owned()).or_default();
                    if name == "longest_call_ms" {
                        *total = (*total).max(value);
                    } else {
                        *total += value;
                    }
                }
            }
            _ => panic!("unexpected report {report:?}"),
        }
    }

    // Locks: fencing tokens in real-time order, and no holder nobody knows.
    check_fencing(&acquires, &mut violations);
    let locks = JobLock::new(direct.clone(), clock());
    for i in 0..HOT_KEYS {
        if let Some(record) = locks.peek(&hot_key(i)).unwrap() {
            seen_holders.insert(record.job_id.clone());
        }
    }
    for holder in &seen_holders {
        if !known.contains(holder) {
            violations.push(format!(
                "lock held by {holder}, an attempt that returned neither Acquired nor an ambiguous error"
            ));
        }
    }

    // Ledger: money conserved, nobody charged twice.
    check_ledger(&direct, &failed_reserves, &mut violations);
    // Jobs: no event twice, no start reported failed that left its job running.
    check_jobs(&direct, &failed_creates, &failed_starts, &mut violations);

    let value = |name: &str| totals.get(name).copied().unwrap_or(0);
    // The resolved outcomes a run must count: of the managers that resolve
    // their own writes in this tree.
    let summary = format!(
        "pg_network_faults: seconds={seconds} ops={} lost_replies={} dropped_commits={} resets={} \
         proxy_silences={} delayed_commits={} nft_silences={} resolved lock={} start={} reserve={} \
         ambiguous_errors={} transient_errors={} violations={} longest_call_ms={}",
        value("ops"),
        injected.lost_replies,
        injected.dropped_commits,
        injected.resets,
        injected.silences,
        injected.delays,
        if nft_used {
            nft_silences.to_string()
        } else {
            "skipped".to_owned()
        },
        value("resolved_lock"),
        value("resolved_start"),
        value("resolved_reserve"),
        value("ambiguous"),
        value("transient"),
        violations.len(),
        value("longest_call_ms"),
    );
    println!("{summary}");
    for v in violations.iter().take(30) {
        eprintln!("violation: {v}");
    }
    assert!(violations.is_empty(), "{} violations", violations.len());

    let mut short = Vec::new();
    for (name, count) in [
        ("lost_replies", injected.lost_replies),
        ("dropped_commits", injected.dropped_commits),
        ("resets", injected.resets),
        ("proxy_silences", injected.silences),
        ("delayed_commits", injected.delays),
    ] {
        if count < MIN_FAULTS_EACH {
            short.push(format!("{name}={count} < {MIN_FAULTS_EACH}"));
        }
    }
    if nft_used && nft_silences < MIN_FAULTS_EACH {
        short.push(format!("nft_silences={nft_silences} < {MIN_FAULTS_EACH}"));
    }
    for name in ["lock", "start", "reserve"] {
        let count = value(&format!("resolved_{name}"));
        if count < MIN_RESOLVED_EACH as u64 {
            short.push(format!("resolved {name}={count} < {MIN_RESOLVED_EACH}"));
        }
    }
    if secs >= 60 {
        assert!(short.is_empty(), "too few: {}", short.join(", "));
    } else if !short.is_empty() {
        println!(
            "pg_network_faults: a run of {secs} s is short of the thresholds of a 60 s run: {}",
            short.join(", ")
        );
    }
}

/// One acquire call, as a child reported it.
struct AcquireLine {
    key: String,
    attempt: String,
    outcome: String,
    token: Option<u64>,
    start_ns: u64,
    end_ns: u64,
    holder: Option<String>,
}

impl AcquireLine {
    fn parse(text: &str) -> AcquireLine {
        let f: Vec<&str> = text.split(' ').collect();
        assert_eq!(f.len(), 7, "acquire line {text:?}");
        let opt = |s: &str| (s != "-").then(|| s.to_owned());
        AcquireLine {
            key: f[0].to_owned(),
            attempt: f[1].to_owned(),
            outcome: f[2].to_owned(),
            token: opt(f[3]).map(|t| t.parse().unwrap()),
            start_ns: f[4].parse().unwrap(),
            end_ns: f[5].parse().unwrap(),
            holder: opt(f[6]),
        }
    }
}

/// Of two acquires on one key where the first ended before the second
/// started, the second has the higher token.
fn check_fencing(acquires: &[AcquireLine], violations: &mut Vec<String>) {
    let mut by_key: BTreeMap<&str, Vec<&AcquireLine>> = BTreeMap::new();
    for a in acquires.iter().filter(|a| a.outcome == "acquired") {
        by_key.entry(&a.key).or_default().push(a);
    }
    for (key, mut list) in by_key {
        // Walk in order of start; keep the highest token among calls that
        // ended before the current one started.
        list.sort_by_key(|a| a.start_ns);
        let mut ended: Vec<&AcquireLine> = list.clone();
        ended.sort_by_key(|a| a.end_ns);
        let mut e = 0;
        let mut highest: Option<&AcquireLine> = None;
        for b in &list {
            while e < ended.len() && ended[e].end_ns < b.start_ns {
                if highest.is_none_or(|h| ended[e].token > h.token) {
                    highest = Some(ended[e]);
                }
                e += 1;
            }
            if let Some(a) = highest
                && b.token <= a.token
            {
                violations.push(format!(
                    "{key}: acquire {} (token {:?}) started after acquire {} (token {:?}) ended, \
                     with a token not above it",
                    b.attempt, b.token, a.attempt, a.token
                ));
            }
        }
    }
}

fn check_ledger(store: &PgStore, failed: &BTreeSet<String>, violations: &mut Vec<String>) {
    let ledger = JobLedger::new(store.clone(), clock());
    let mut charged = 0;
    for i in 0..LEDGER_JOBS {
        let job_id = ledger_job(i);
        let (charges, _) = read_number(store, &charges_key(&job_id)).unwrap();
        let reservation = ledger.lookup(ACCOUNT, &job_id).unwrap();
        if let Some(attempt) = reservation.as_ref().and_then(|r| r.attempt.as_ref())
            && failed.contains(attempt.as_str())
        {
            violations.push(format!(
                "{job_id} is reserved by {attempt}, a reserve that returned a plain error"
            ));
        }
        let reserved = reservation.is_some();
        if !(0..=1).contains(&charges) {
            violations.push(format!("{job_id} is charged {charges} times"));
        }
        if charges != i64::from(reserved) {
            violations.push(format!(
                "{job_id}: charged {charges} times net, reservation live: {reserved}"
            ));
        }
        charged += charges;
    }
    let (balance, _) = read_number(store, &balance_key(ACCOUNT)).unwrap();
    if balance + charged != INITIAL {
        violations.push(format!(
            "money not conserved: balance {balance} + {charged} charged != {INITIAL}"
        ));
    }
}

/// No event twice; no job created by a create, or running under a start,
/// that returned a plain error.
fn check_jobs(
    store: &PgStore,
    failed_creates: &BTreeSet<String>,
    failed_starts: &BTreeSet<String>,
    violations: &mut Vec<String>,
) {
    let jobs = JobState::new(store.clone(), clock());
    let listed = jobs.list(&jobsafe::jobs::JobFilter::new()).unwrap();
    for job in &listed.jobs {
        let page = jobs.events_since(&job.id, 0).unwrap();
        let mut steps = BTreeSet::new();
        for event in page.events.iter().filter(|e| e.kind == "step") {
            if !steps.insert(event.data.to_string()) {
                violations.push(format!("{}: event {} appended twice", job.id, event.data));
            }
        }
        if failed_creates.contains(&job.id) {
            violations.push(format!(
                "{}: its create returned an error, yet it exists",
                job.id
            ));
        }
        // Each job is started by one call (and its repetition) only.
        if failed_starts.contains(&job.id) && job.attempt > 0 {
            violations.push(format!(
                "{}: its start returned an error, yet it is {} at attempt {}",
                job.id,
                job.status.as_str(),
                job.attempt
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// The children.

/// What one child thread counts.
#[derive(Default)]
struct Stats {
    /// The thread, in reports.
    name: String,
    ops: u64,
    resolved_lock: u64,
    resolved_start: u64,
    resolved_reserve: u64,
    ambiguous: u64,
    transient: u64,
    longest_call_ms: u64,
}

impl Stats {
    /// Times one manager call; reports it if it took too long.
    fn call<T>(
        &mut self,
        what: &str,
        f: impl FnOnce() -> jobsafe::Result<T>,
    ) -> (jobsafe::Result<T>, u64, u64) {
        Recording::begin_call();
        let start = mono_ns();
        let result = f();
        let end = mono_ns();
        self.ops += 1;
        let ms = (end - start) / 1_000_000;
        self.longest_call_ms = self.longest_call_ms.max(ms);
        if Duration::from_nanos(end - start) > CALL_BOUND {
            let outcome = match &result {
                Ok(_) => "ok".to_owned(),
                Err(e) => common::error_chain(e),
            };
            child::report(&format!(
                "violation {} {what} took {ms} ms (bound {CALL_BOUND:?}): {outcome}",
                self.name
            ));
        }
        match &result {
            Err(e) if e.is_ambiguous() => self.ambiguous += 1,
            Err(e) if e.is_transient() => self.transient += 1,
            _ => {}
        }
        (result, start, end)
    }

    fn add(&mut self, other: &Stats) {
        self.ops += other.ops;
        self.resolved_lock += other.resolved_lock;
        self.resolved_start += other.resolved_start;
        self.resolved_reserve += other.resolved_reserve;
        self.ambiguous += other.ambiguous;
        self.transient += other.transient;
        self.longest_call_ms = self.longest_call_ms.max(other.longest_call_ms);
    }

    fn line(&self) -> String {
        format!(
            "stats ops={} resolved_lock={} resolved_start={} resolved_reserve={} ambiguous={} \
             transient={} longest_call_ms={}",
            self.ops,
            self.resolved_lock,
            self.resolved_start,
            self.resolved_reserve,
            self.ambiguous,
            self.transient,
            self.longest_call_ms
        )
    }
}

fn in_child(role: &str) {
    let schema = child::var("JOBSAFE_NF_SCHEMA");
    let port: u16 = child::var("JOBSAFE_NF_PORT").parse().unwrap();
    let socket_port: u16 = child::var("JOBSAFE_NF_SOCKET_PORT").parse().unwrap();
    let me: usize = child::var("JOBSAFE_NF_CHILD").parse().unwrap();
    let store = Recording(workload_store(port, &schema));
    let socket = (socket_port != 0).then(|| Recording(socket_store(socket_port, &schema)));
    child::ready_then_wait();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = child::receive();
            stop.store(true, Ordering::SeqCst);
        });
    }
    let mut total = Stats::default();
    std::thread::scope(|s| {
        let mut threads = Vec::new();
        for t in 0..THREADS {
            let (store, stop) = (store.clone(), &stop);
            let name = format!("{role}{me}t{t}");
            threads.push(s.spawn(move || match role {
                "lock" => lock_worker(store, &name, stop),
                "ledger" => ledger_worker(store, &name, stop),
                "jobs" => jobs_worker(store, &name, stop),
                other => panic!("unknown role {other}"),
            }));
        }
        if let Some(socket) = socket.clone() {
            let name = format!("sock{me}");
            let stop = &stop;
            threads.push(s.spawn(move || lock_worker(socket, &name, stop)));
        }
        for thread in threads {
            total.add(&thread.join().unwrap());
        }
    });
    child::report(&total.line());
}

fn lock_worker(store: Recording, name: &str, stop: &AtomicBool) -> Stats {
    let locks = JobLock::builder(store, clock())
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap();
    let mut stats = Stats {
        name: name.to_owned(),
        ..Stats::default()
    };
    let mut rng = fastrand::Rng::new();
    let mut n = 0u64;
    // Keys to look at once more, when: after an acquire failed, right away
    // and once a commit the network held would have landed.
    let mut peeks: Vec<(Key, Instant)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(rng.u64(0..PAUSE_MS)));
        let now = Instant::now();
        for (key, _) in peeks.iter().filter(|(_, at)| *at <= now) {
            if let (Ok(Some(record)), _, _) = stats.call("peek", || locks.peek(key)) {
                child::report(&format!("holder {}", record.job_id));
            }
        }
        peeks.retain(|(_, at)| *at > now);
        n += 1;
        let key = hot_key(rng.usize(0..HOT_KEYS));
        let attempt: AttemptId = format!("{name}-{n}").parse().unwrap();
        let request = LockRequest::new().attempt(attempt.clone());
        let mut tries = 0;
        loop {
            tries += 1;
            let (result, start, end) =
                stats.call("acquire", || locks.acquire(&key, LOCK_TTL, &request));
            let (outcome, token, holder) = match &result {
                Ok(Acquire::Acquired(guard)) => {
                    assert_eq!(guard.job_id(), attempt.as_str());
                    if Recording::resolved_after_failure() {
                        stats.resolved_lock += 1;
                    }
                    ("acquired", Some(guard.token().get()), None)
                }
                Ok(Acquire::Held(record)) => ("held", None, Some(record.job_id.clone())),
                Err(e) if e.is_ambiguous() => ("ambiguous", None, None),
                Err(_) => ("error", None, None),
            };
            child::report(&format!(
                "acquire {key} {attempt} {outcome} {} {start} {end} {}",
                token.map_or("-".to_owned(), |t| t.to_string()),
                holder.as_deref().unwrap_or("-"),
            ));
            match result {
                Ok(Acquire::Acquired(mut guard)) => {
                    std::thread::sleep(Duration::from_millis(rng.u64(0..10)));
                    // A renewal may find the lease lost (a slow acquire and a
                    // slow renewal can outlast it): not a fault of the lock.
                    let _ = stats.call("renew", || guard.renew(LOCK_TTL));
                    let handle = guard.handle();
                    let _ = stats.call("release", || locks.release(&handle));
                    break;
                }
                // Once more with the same attempt: it is recognised if it landed.
                Err(e) if e.is_ambiguous() && tries < 2 => continue,
                Err(e) if !e.is_ambiguous() => {
                    let now = Instant::now();
                    peeks.push((key.clone(), now));
                    peeks.push((key.clone(), now + LATE_BY + RESOLVE_WITHIN));
                    break;
                }
                _ => break,
            }
        }
    }
    stats
}

fn ledger_worker(store: Recording, name: &str, stop: &AtomicBool) -> Stats {
    let ledger = JobLedger::builder(store.clone(), clock())
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap();
    let mut stats = Stats {
        name: name.to_owned(),
        ..Stats::default()
    };
    let mut rng = fastrand::Rng::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(rng.u64(0..PAUSE_MS)));
        n += 1;
        let job_id = ledger_job(rng.u32(0..LEDGER_JOBS));
        let attempt: AttemptId = format!("{name}-{n}").parse().unwrap();
        let request = ChargeRequest::new().attempt(attempt.clone());
        // After an ambiguous try, a plain error of the next says only that
        // the next did nothing: the first may still have landed (or land
        // later, if its session could not be ended), under the same attempt.
        let mut was_ambiguous = false;
        for tries in 1..=2 {
            let (result, _, _) = stats.call("reserve", || {
                ledger.reserve_with(ACCOUNT, &job_id, &request, |_| {
                    book(&store, ACCOUNT, &job_id, 1)
                })
            });
            match result {
                Ok(Reserve::New(_)) => {
                    if Recording::resolved_after_failure() {
                        stats.resolved_reserve += 1;
                    }
                    if rng.u32(0..5) == 0 {
                        let _ = stats.call("refund", || {
                            ledger.refund_with(ACCOUNT, &job_id, |_| {
                                book(&store, ACCOUNT, &job_id, -1)
                            })
                        });
                    }
                }
                // Once more with the same attempt: it is recognised if it
                // landed.
                Err(e) if e.is_ambiguous() && tries < 2 => {
                    was_ambiguous = true;
                    continue;
                }
                Err(e) if !e.is_ambiguous() && !was_ambiguous => {
                    child::report(&format!("reserve-failed {attempt}"));
                }
                _ => {}
            }
            break;
        }
    }
    stats
}

fn jobs_worker(store: Recording, name: &str, stop: &AtomicBool) -> Stats {
    let jobs = JobState::builder(store, clock())
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap();
    let mut stats = Stats {
        name: name.to_owned(),
        ..Stats::default()
    };
    let mut rng = fastrand::Rng::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(rng.u64(0..PAUSE_MS)));
        n += 1;
        let id = format!("{name}-{n}");
        // Each write once more with the same attempt after an ambiguous
        // error: it is recognised if it landed.
        let created: AttemptId = format!("{id}-create").parse().unwrap();
        let mut made = false;
        // As for reserves: a plain error after an ambiguous try is the
        // second try's alone.
        let mut was_ambiguous = false;
        for tries in 1..=2 {
            let (result, _, _) = stats.call("create", || {
                jobs.create(NewJob::new("net").id(&id).attempt(created.clone()))
            });
            match result {
                Ok(_) => made = true,
                Err(e) if e.is_ambiguous() && tries < 2 => {
                    was_ambiguous = true;
                    continue;
                }
                Err(e) if !e.is_ambiguous() && !was_ambiguous => {
                    child::report(&format!("create-failed {id}"));
                }
                Err(_) => {}
            }
            break;
        }
        if !made {
            continue;
        }
        let started: AttemptId = format!("{id}-start").parse().unwrap();
        let mut claim = None;
        let mut was_ambiguous = false;
        for tries in 1..=2 {
            let (result, _, _) = stats.call("start", || jobs.start_attempt(&id, None, &started));
            match result {
                Ok(c) => {
                    if Recording::resolved_after_failure() {
                        stats.resolved_start += 1;
                    }
                    claim = Some(c);
                }
                Err(e) if e.is_ambiguous() && tries < 2 => {
                    was_ambiguous = true;
                    continue;
                }
                Err(e) if !e.is_ambiguous() && !was_ambiguous => {
                    child::report(&format!("start-failed {id}"));
                }
                Err(_) => {}
            }
            break;
        }
        let Some(claim) = claim else {
            continue;
        };
        for step in 0..2 {
            // A plain transient error says the event was not appended: the
            // worker appends it again, and an event found twice is a
            // violation.
            for _ in 0..2 {
                let (appended, _, _) = stats.call("append_event", || {
                    jobs.append_event(&claim, "step", serde_json::json!({ "n": step }))
                });
                match appended {
                    Err(e) if e.is_transient() && !e.is_ambiguous() => {}
                    _ => break,
                }
            }
        }
        let _ = stats.call("complete", || jobs.complete(&claim, serde_json::json!({})));
    }
    stats
}

/// A lock acquire whose commit the network holds, and whose store cannot end
/// the write's session because the fence's own connection is reset, while
/// a fresh connection for the re-read works: the call must not report a
/// plain failure, since the held commit may land afterwards.
///
/// `PgStore` returns the write's error saying that its session could not be
/// ended and the write may still land; the lock's re-read finds no record
/// and its deadline has passed, so it writes no more, and the outcome is
/// open: the error must be ambiguous. Reported as a plain transient error
/// (as it once was), the held commit would land a moment later and the
/// lock be held, for its whole lease, by an attempt whose call reported
/// failure.
#[test]
fn an_acquire_whose_fence_failed_is_not_reported_as_not_landed() {
    if child::role().is_some() {
        return;
    }
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let proxy = Proxy::start(pg::server_addr());
    let store = PgStore::builder(&pg::url_through(proxy.addr().port()))
        .schema(&schema)
        .pool_size(1)
        .call_timeout(D)
        .open()
        .unwrap();
    let locks = JobLock::builder(store, clock())
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap();
    let key = hot_key(0);
    // Warm up: the connection is made and its statements prepared.
    assert!(locks.peek(&key).unwrap().is_none());

    let held_for = Duration::from_secs(3);
    proxy.arm(Fault::Delay { after: held_for });
    let attempt: AttemptId = "fence-repro-1".parse().unwrap();
    let request = LockRequest::new().attempt(attempt.clone());
    let arming = std::thread::scope(|s| {
        let proxy = &proxy;
        let rearm = s.spawn(move || {
            // Once the commit is held, the next request (the fence's) is cut.
            while proxy.injected().delays == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            proxy.arm(Fault::ResetMidRequest);
        });
        let result = locks.acquire(&key, Duration::from_secs(60), &request);
        rearm.join().unwrap();
        result
    });
    let outcome = match &arming {
        Ok(Acquire::Acquired(_)) => "acquired".to_owned(),
        Ok(Acquire::Held(r)) => format!("held by {}", r.job_id),
        Err(e) => format!(
            "error (ambiguous: {}): {}",
            e.is_ambiguous(),
            common::error_chain(e)
        ),
    };
    // The held commit is delivered, and lands.
    std::thread::sleep(held_for + Duration::from_secs(1));
    let holder = locks.peek(&key).unwrap().map(|r| r.job_id);
    println!("fence repro: acquire returned {outcome}; holder now {holder:?}");
    let injected = proxy.injected();
    assert_eq!(
        (injected.delays, injected.resets),
        (1, 1),
        "the faults did not happen as planned"
    );
    if holder.as_deref() == Some(attempt.as_str()) {
        assert!(
            matches!(arming, Ok(Acquire::Acquired(_)))
                || arming.as_ref().is_err_and(Error::is_ambiguous),
            "the lock is held by {attempt}, whose acquire returned {outcome}"
        );
    }
}

/// The same as [`an_acquire_whose_fence_failed_is_not_reported_as_not_landed`]
/// for a reserve: its batch's commit held by the network, the fence's
/// connection reset. The ledger's re-read finds no reservation; the call
/// must return an ambiguous error, since the commit may land after it (and
/// does: the job is then charged under that attempt).
#[test]
fn a_reserve_whose_fence_failed_is_not_reported_as_not_landed() {
    if child::role().is_some() {
        return;
    }
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let proxy = Proxy::start(pg::server_addr());
    let store = PgStore::builder(&pg::url_through(proxy.addr().port()))
        .schema(&schema)
        .pool_size(1)
        .call_timeout(D)
        .lock_timeout(LOCK_WAIT)
        .open()
        .unwrap();
    store
        .put(
            &balance_key(ACCOUNT),
            INITIAL.to_string().as_bytes(),
            Expect::Absent,
        )
        .unwrap();
    let ledger = JobLedger::builder(store.clone(), clock())
        .resolve_within(RESOLVE_WITHIN)
        .build()
        .unwrap();

    let held_for = Duration::from_secs(3);
    proxy.arm(Fault::Delay { after: held_for });
    let attempt: AttemptId = "fence-repro-2".parse().unwrap();
    let request = ChargeRequest::new().attempt(attempt.clone());
    let job_id = ledger_job(1);
    let reserved = std::thread::scope(|s| {
        let proxy = &proxy;
        let rearm = s.spawn(move || {
            while proxy.injected().delays == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            proxy.arm(Fault::ResetMidRequest);
        });
        let result = ledger.reserve_with(ACCOUNT, &job_id, &request, |_| {
            book(&store, ACCOUNT, &job_id, 1)
        });
        rearm.join().unwrap();
        result
    });
    let outcome = match &reserved {
        Ok(r) => format!("{r:?}"),
        Err(e) => format!(
            "error (ambiguous: {}): {}",
            e.is_ambiguous(),
            common::error_chain(e)
        ),
    };
    std::thread::sleep(held_for + Duration::from_secs(1));
    let found = ledger.lookup(ACCOUNT, &job_id).unwrap();
    let by = found.as_ref().and_then(|r| r.attempt.clone());
    println!("fence repro: reserve returned {outcome}; reservation now by {by:?}");
    let injected = proxy.injected();
    assert_eq!(
        (injected.delays, injected.resets),
        (1, 1),
        "the faults did not happen as planned"
    );
    if by.as_ref() == Some(&attempt) {
        assert!(
            reserved.is_ok() || reserved.as_ref().is_err_and(Error::is_ambiguous),
            "{job_id} is reserved by {attempt}, whose reserve returned {outcome}"
        );
    }
}
