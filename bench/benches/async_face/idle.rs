//! What waiting streams cost: the process's threads and the heap bytes per
//! subscription with 100, 1,000 and 10,000 `AsyncSubscription`s open, each
//! waiting in a task of its own on the runtime for its job's next event.
//!
//! Subscriptions are opened one after another (as a server accepts its
//! clients) and spread evenly over the jobs; the heap is counted by the
//! bench's global allocator from just before the first. Then one event is
//! appended to each job, and every waiting subscription must receive it: a
//! stream that waited without listening has no cost worth reporting.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jobsafe::jobs::{AsyncJobState, AsyncSubscription};
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::alloc::Window;
use super::options::Options;
use super::{AnyStore, Started};
use crate::common::{BenchResult, RunDir};

/// How long every waiting subscription may take to receive the last event.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the runtime to poll the last tasks spawned until they wait.
const SETTLE: Duration = Duration::from_millis(50);

/// The process with some number of subscriptions waiting.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Point {
    pub(crate) subscribers: usize,
    /// Threads of the process, where `/proc` tells.
    pub(crate) threads: Option<usize>,
    /// ... of which threads of jobsafe's pool.
    pub(crate) pool_threads: Option<usize>,
    /// Heap bytes gained since before the first subscription.
    pub(crate) bytes: isize,
}

impl Point {
    pub(crate) fn bytes_per_subscriber(&self) -> f64 {
        self.bytes as f64 / self.subscribers as f64
    }
}

/// What the section measured.
#[derive(Clone, Debug)]
pub(crate) struct Idle {
    /// Before the first subscription (0 bytes by definition).
    pub(crate) before: Point,
    pub(crate) points: Vec<Point>,
    /// Heap bytes still gained once every subscription received its event
    /// and was dropped.
    pub(crate) bytes_after_close: isize,
}

/// Opens subscriptions up to each count of `options.idle_counts` in turn,
/// measuring at each.
pub(crate) fn measure(rt: &Runtime, options: &Options, run: &mut RunDir) -> BenchResult<Idle> {
    let started = Started::new(options, &run.fresh("idle")?, 16)?;
    let jobs = AsyncJobState::new(started.jobs.clone());
    let waiting = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<JoinHandle<Result<(), String>>> = Vec::new();

    let window = Window::open();
    let before = point(&window, 0);
    let mut points = Vec::new();
    for &count in &options.idle_counts {
        rt.block_on(async {
            while tasks.len() < count {
                let claim = &started.claims[tasks.len() % started.claims.len()];
                let subscription = jobs.subscribe(&claim.job_id, 1).await?;
                tasks.push(tokio::spawn(wait_for_ping(
                    subscription,
                    Arc::clone(&waiting),
                )));
            }
            while waiting.load(Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(SETTLE).await;
            Ok::<_, jobsafe::Error>(())
        })?;
        points.push(point(&window, count));
    }

    for claim in &started.claims {
        started.jobs.append_event(claim, "ping", json!({}))?;
    }
    rt.block_on(async {
        let all = async {
            for task in tasks {
                task.await
                    .map_err(|e| format!("a subscriber task failed: {e}"))??;
            }
            Ok::<_, String>(())
        };
        tokio::time::timeout(RECEIVE_TIMEOUT, all)
            .await
            .map_err(|_| "waiting subscriptions did not all receive the ping")?
    })?;
    let bytes_after_close = window.net_bytes();
    Ok(Idle {
        before,
        points,
        bytes_after_close,
    })
}

/// A waiting subscriber: counts itself as waiting, then receives one event,
/// which must be the ping that follows `started`.
async fn wait_for_ping(
    mut subscription: AsyncSubscription<AnyStore>,
    waiting: Arc<AtomicUsize>,
) -> Result<(), String> {
    waiting.fetch_add(1, Ordering::SeqCst);
    match subscription.next_event().await {
        Ok(Some(event)) if event.seq == 2 && event.kind == "ping" => Ok(()),
        Ok(Some(event)) => Err(format!(
            "a waiting subscription received {} (sequence number {}), not the ping",
            event.kind, event.seq
        )),
        Ok(None) => Err("a waiting subscription ended without the ping".to_owned()),
        Err(e) => Err(format!("a waiting subscription failed: {e}")),
    }
}

fn point(window: &Window, subscribers: usize) -> Point {
    Point {
        subscribers,
        threads: threads(),
        pool_threads: threads_named("jobsafe-pool"),
        bytes: window.net_bytes(),
    }
}

/// The process's threads, from `Threads:` in `/proc/self/status`; `None`
/// where there is no such file (not Linux).
fn threads() -> Option<usize> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The process's threads named `name` (a thread's name is in
/// `/proc/self/task/<tid>/comm`).
fn threads_named(name: &str) -> Option<usize> {
    let tasks = fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .flatten()
            .filter(|task| {
                fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
            })
            .count(),
    )
}
