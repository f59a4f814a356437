//! A schedule's stored state: where its runs have got to.

use serde::{Deserialize, Serialize};

use crate::Version;
use crate::record::{Extra, Record};

/// What is stored for a schedule, under `<namespace>/schedule/<name>`.
///
/// `next_due_ms` is the cursor: every run due before it has been made (or
/// skipped by the catch-up policy), so a tick makes the runs due from it up
/// to now. It only moves forward, and only by a compare-and-set against the
/// version just read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredSchedule {
    /// The definition the cursor was computed with (`Every`'s display).
    pub(crate) every: String,
    pub(crate) catch_up: String,
    pub(crate) next_due_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_due_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_job: Option<String>,
    /// Runs made, over the schedule's life.
    #[serde(default)]
    pub(crate) runs: u64,
    /// Due runs left out by the catch-up policy, over the schedule's life.
    #[serde(default)]
    pub(crate) skipped: u64,
    pub(crate) updated_ms: u64,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

impl Record for StoredSchedule {
    const SCHEMA: u32 = 1;
}

/// A schedule's stored state, as [`list`](super::list) reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleState {
    /// The schedule's name.
    pub name: String,
    /// Its definition when last ticked, e.g. `every 900000 ms` or
    /// `cron 0 30 3 * * *`.
    pub every: String,
    /// Its catch-up policy when last ticked: `skip after N ms`, `one` or `all`.
    pub catch_up: String,
    /// When its next run is due, in milliseconds since the Unix epoch.
    pub next_due_ms: u64,
    /// The due time of its last run, if it has made one.
    pub last_due_ms: Option<u64>,
    /// The job of its last run.
    pub last_job: Option<String>,
    /// Runs made, over the schedule's life.
    pub runs: u64,
    /// Due runs that the catch-up policy left out, over the schedule's life.
    pub skipped: u64,
    /// When a tick last changed it.
    pub updated_ms: u64,
    /// The record's version.
    pub version: Version,
}

impl ScheduleState {
    pub(crate) fn new(name: String, stored: StoredSchedule, version: Version) -> Self {
        ScheduleState {
            name,
            every: stored.every,
            catch_up: stored.catch_up,
            next_due_ms: stored.next_due_ms,
            last_due_ms: stored.last_due_ms,
            last_job: stored.last_job,
            runs: stored.runs,
            skipped: stored.skipped,
            updated_ms: stored.updated_ms,
            version,
        }
    }
}
