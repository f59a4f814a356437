//! A job as stored, as shown to clients, and its events.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::attempt::AttemptId;
use crate::fencing::FencingToken;
use crate::record::{Extra, Metadata, Record, record_deserialize};
use crate::store::Version;

pub(crate) const MAX_PROGRESS_LEN: usize = Job::MAX_PROGRESS_LEN;
const MAX_ERROR_LEN: usize = JobError::MAX_LEN;

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobStatus {
    /// Waiting to be started (again, after a transient failure or a retry).
    Queued,
    /// A worker is on it.
    Running,
    /// Done, with a result. Final.
    Complete,
    /// Failed for good; [`JobState::retry`](crate::JobState::retry) starts a new
    /// attempt.
    Failed,
    /// Cancelled. Final.
    Cancelled,
}

impl JobStatus {
    /// Whether nothing but a manual retry can move the job again (complete,
    /// failed and cancelled).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Complete | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The status as a word (`"queued"`, `"running"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Complete => "complete",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with two faces: what a client may see, and what an operator needs.
///
/// ```
/// use jobsafe::jobs::JobError;
///
/// let shown = JobError::new("the transcription service is busy, try again later")
///     .internal("upstream 503 from asr-3.internal:8443 after 30 s")
///     .code("upstream_busy");
/// assert!(!shown.client_message().contains("asr-3"));
///
/// // Without a client message, clients get a fixed sentence, never the internal one.
/// let hidden = JobError::internal_only("panic in decoder: index out of bounds");
/// assert_eq!(hidden.client_message(), JobError::DEFAULT_CLIENT_MESSAGE);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    internal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

impl JobError {
    /// Longest message (client or internal) kept, in bytes; longer ones are cut
    /// at a character boundary.
    pub const MAX_LEN: usize = 2000;

    /// Longest code kept, in bytes; a longer one is cut at a character
    /// boundary, as messages are.
    pub const MAX_CODE_LEN: usize = 128;

    /// What a client is told when a job failed and the caller gave no client
    /// message: a fixed sentence, never derived from the internal message, so
    /// that nothing an operator needs to see (hosts, paths, upstream errors) can
    /// leak.
    pub const DEFAULT_CLIENT_MESSAGE: &'static str = "the job failed";

    /// An error whose message is safe to show clients.
    pub fn new(client_message: impl Into<String>) -> Self {
        JobError {
            client: bounded(client_message.into(), MAX_ERROR_LEN),
            internal: None,
            code: None,
        }
    }

    /// An error known only internally: clients see
    /// [`JobError::DEFAULT_CLIENT_MESSAGE`].
    pub fn internal_only(internal_message: impl Into<String>) -> Self {
        JobError::new(JobError::DEFAULT_CLIENT_MESSAGE).internal(internal_message)
    }

    /// Adds the message for operators (never shown in the client view).
    pub fn internal(mut self, internal_message: impl Into<String>) -> Self {
        self.internal = Some(bounded(internal_message.into(), MAX_ERROR_LEN));
        self
    }

    /// Adds a machine-readable code, shown to clients: at most
    /// [`JobError::MAX_CODE_LEN`] bytes are kept.
    ///
    /// ```
    /// use jobsafe::jobs::JobError;
    ///
    /// let error = JobError::new("the upstream refused").code("upstream_4xx");
    /// assert_eq!(error.error_code(), Some("upstream_4xx"));
    /// let long = JobError::new("x").code("é".repeat(100));
    /// assert_eq!(long.error_code().map(str::len), Some(JobError::MAX_CODE_LEN));
    /// ```
    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(bounded(code.into(), JobError::MAX_CODE_LEN));
        self
    }

    /// What a client may see.
    pub fn client_message(&self) -> &str {
        &self.client
    }

    /// What an operator sees: the internal message, or the client one if there is
    /// none.
    pub fn internal_message(&self) -> &str {
        self.internal.as_deref().unwrap_or(&self.client)
    }

    /// The code, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

/// What a job's events look like from the record: the sequence numbers stored,
/// and how many the bound has dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventWindow {
    /// Sequence number of the oldest stored event (the next one if none).
    pub first_seq: u64,
    /// Sequence number the next event gets. Sequence numbers start at 1.
    pub next_seq: u64,
    /// Events dropped, oldest first, to keep within the bound.
    pub dropped: u64,
}

/// A durable job record.
// `Deserialize` is written by `record_deserialize!`, as derive with
// `#[serde(flatten)] extra` would read it, without flatten's buffering.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Job {
    /// The job's id.
    pub id: String,
    /// What kind of work it is (`"transcribe"`, say).
    pub kind: String,
    /// Who it belongs to (an install id, a user), if given.
    #[serde(default)]
    pub owner: Option<String>,
    /// Where it stands.
    pub status: JobStatus,
    /// The stage it is in, if the worker set one.
    #[serde(default)]
    pub stage: Option<String>,
    /// Stages it finished, in order.
    #[serde(default)]
    pub stages_done: Vec<String>,
    /// Attempts started so far (0 until the first start).
    pub attempt: u32,
    /// The last progress message, at most [`Job::MAX_PROGRESS_LEN`] bytes.
    #[serde(default)]
    pub progress: Option<String>,
    /// The result, exactly as given to `complete`.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// The last error (of a failed attempt, or the final one).
    #[serde(default)]
    pub error: Option<JobError>,
    /// Free-form facts, for operators (not in the client view).
    #[serde(default)]
    pub metadata: Metadata,
    /// When it was created, in the clock's milliseconds.
    pub created_ms: u64,
    /// When its current attempt started.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// When it last changed.
    pub updated_ms: u64,
    /// When it finished.
    #[serde(default)]
    pub completed_ms: Option<u64>,
    /// Not to be started before this time (after a transient failure).
    #[serde(default)]
    pub retry_at_ms: Option<u64>,
    /// The last sign of life from its worker.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    /// The newest fencing token a worker of this job presented.
    #[serde(default)]
    pub fencing: Option<FencingToken>,
    /// Its event log.
    #[serde(default)]
    pub events: EventWindow,
    /// The id of the write that stored this version of the record: what a
    /// call reads back to learn whether its write landed after the store
    /// failed to say. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) write: Option<AttemptId>,
    /// The attempt id of the create that stored the record first, so that a
    /// repeated create is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) created_by: Option<AttemptId>,
    /// The attempt id of the start that began the current attempt, so that a
    /// repeated start is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) started_by: Option<AttemptId>,
    /// The sequence number of the `started` event of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) started_seq: Option<u64>,
    /// Fields written by a newer version, kept on rewrite.
    #[serde(flatten)]
    pub(crate) extra: Extra,
    /// The store version of the record.
    #[serde(skip, default = "zero_version")]
    pub version: Version,
}

fn zero_version() -> Version {
    Version::new(0)
}

// `version` is skipped, so a member of that name is unknown and kept in
// `extra`, as with the derive.
record_deserialize! {
    Job, "struct Job",
    required [
        id = "id",
        kind = "kind",
        status = "status",
        attempt = "attempt",
        created_ms = "created_ms",
        updated_ms = "updated_ms",
    ],
    defaulted [
        owner = "owner",
        stage = "stage",
        stages_done = "stages_done",
        progress = "progress",
        result = "result",
        error = "error",
        metadata = "metadata",
        started_ms = "started_ms",
        completed_ms = "completed_ms",
        retry_at_ms = "retry_at_ms",
        heartbeat_ms = "heartbeat_ms",
        fencing = "fencing",
        events = "events",
        write = "write",
        created_by = "created_by",
        started_by = "started_by",
        started_seq = "started_seq",
    ],
    unknown keep(extra),
    build Job {
        id,
        kind,
        owner,
        status,
        stage,
        stages_done,
        attempt,
        progress,
        result,
        error,
        metadata,
        created_ms,
        started_ms,
        updated_ms,
        completed_ms,
        retry_at_ms,
        heartbeat_ms,
        fencing,
        events,
        write,
        created_by,
        started_by,
        started_seq,
        extra,
        version: zero_version(),
    },
}

impl Record for Job {
    const SCHEMA: u32 = 1;
}

impl Job {
    /// Longest progress message kept, in bytes; longer ones are cut at a
    /// character boundary.
    pub const MAX_PROGRESS_LEN: usize = 200;

    /// Longest [`kind`](Job::kind), in bytes: 256. A kind names a type of work
    /// (`"transcribe"`), is shown to clients and matched by filters; 256 bytes
    /// leave room for namespaced names and none for a payload. A longer one is
    /// refused by [`JobState::create`](crate::JobState::create) with
    /// [`Error::TooLarge`](crate::Error::TooLarge).
    pub const MAX_KIND_LEN: usize = 256;

    /// Longest [`owner`](Job::owner), in bytes: 256, room for a user, install
    /// or license id with a prefix. A longer one is refused by
    /// [`JobState::create`](crate::JobState::create).
    pub const MAX_OWNER_LEN: usize = 256;

    /// Longest [`metadata`](Job::metadata), in bytes of its JSON encoding:
    /// 64 KiB. The record carrying it is rewritten by every transition, so its
    /// size is paid on each; facts for operators fit in far less. Larger
    /// metadata is refused by [`JobState::create`](crate::JobState::create).
    pub const MAX_METADATA_LEN: usize = 64 << 10;

    /// Longest [`result`](Job::result), in bytes of its JSON encoding: 1 MiB.
    /// A result is stored twice (in the record and in the `done` event) and
    /// sent to every client that polls or streams the job: large outputs
    /// belong in files (artifacts), with their path in the result. A larger
    /// one is refused by [`JobState::complete`](crate::JobState::complete);
    /// the job stays running.
    pub const MAX_RESULT_LEN: usize = 1 << 20;

    /// Longest [`stage`](Job::stage) name, in bytes: 1 KiB, as long as a key
    /// segment, so that every stage name a
    /// [`Pipeline`](crate::Pipeline) accepts fits. A longer one is refused by
    /// [`JobState::set_stage`](crate::JobState::set_stage).
    pub const MAX_STAGE_LEN: usize = crate::Key::MAX_SEGMENT_LEN;

    /// Most bytes of stage names in [`stages_done`](Job::stages_done): 64
    /// KiB, room for 64 stages of the longest names, and for thousands of
    /// short ones. Every write rewrites the whole record, so a list that grew
    /// without bound (a stage per item of a long loop) would make each write
    /// slower than the last. A [`set_stage`](crate::JobState::set_stage)
    /// that would pass it is refused ([`Error::TooLarge`](crate::Error::TooLarge));
    /// a stage that starts again from the first ([`Pipeline`](crate::Pipeline)
    /// reruns) clears the list.
    pub const MAX_STAGES_DONE_LEN: usize = 64 * 1024;

    /// The sequence number of the newest event in the job's log, or `None` if it
    /// has none yet. On the job a transition returns, this is the number of the
    /// event that transition appended (the record and the event are written in
    /// one batch), so a writer knows its own event's number under concurrency.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::jobs::NewJob;
    /// use jobsafe::{JobState, ManualClock, MemStore};
    ///
    /// let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::default()));
    /// let job = jobs.create(NewJob::new("export"))?;
    /// assert_eq!(job.last_event_seq(), None);
    /// let claim = jobs.start(&job.id, None)?;
    /// assert_eq!(claim.started_seq, Some(1));
    /// let after = jobs.progress(&claim, "halfway")?;
    /// assert_eq!(after.last_event_seq(), Some(2));
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    pub fn last_event_seq(&self) -> Option<u64> {
        self.events.next_seq.checked_sub(1).filter(|&seq| seq >= 1)
    }

    /// The view of this job a client may see: no internal error message, no
    /// metadata, no fencing or heartbeat details.
    pub fn client_view(&self) -> ClientJob {
        ClientJob {
            id: self.id.clone(),
            kind: self.kind.clone(),
            status: self.status,
            stage: self.stage.clone(),
            stages_done: self.stages_done.clone(),
            attempt: self.attempt,
            progress: self.progress.clone(),
            result: self.result.clone(),
            error: self.error.as_ref().map(|e| ClientError {
                message: e.client.clone(),
                code: e.code.clone(),
            }),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            completed_ms: self.completed_ms,
            retry_at_ms: self.retry_at_ms,
        }
    }
}

/// What an HTTP handler serializes for a client: [`Job::client_view`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClientJob {
    /// The job's id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Where it stands.
    pub status: JobStatus,
    /// Its current stage.
    pub stage: Option<String>,
    /// Stages it finished.
    pub stages_done: Vec<String>,
    /// Attempts started.
    pub attempt: u32,
    /// The last progress message.
    pub progress: Option<String>,
    /// The result, exactly as given.
    pub result: Option<serde_json::Value>,
    /// The client face of the last error.
    pub error: Option<ClientError>,
    /// When it was created.
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
    /// When it finished.
    pub completed_ms: Option<u64>,
    /// When it will be retried after a transient failure.
    pub retry_at_ms: Option<u64>,
}

/// The client face of a [`JobError`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClientError {
    /// The client-safe message.
    pub message: String,
    /// The machine-readable code, if any.
    pub code: Option<String>,
}

/// One event of a job's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// Its sequence number: 1 for a job's first event, one more for each next
    /// (a gap means the bound dropped events, see [`EventWindow::dropped`]).
    pub seq: u64,
    /// What happened (`"progress"`, `"stage"`, `"done"`, `"error"`, or the
    /// caller's own types).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its data, exactly as given.
    pub data: serde_json::Value,
    /// When it was appended, in the clock's milliseconds.
    pub time_ms: u64,
}

impl Record for Event {
    const SCHEMA: u32 = 1;
}

impl Event {
    /// Longest [`kind`](Event::kind) of an event appended with
    /// [`JobState::append_event`](crate::JobState::append_event), in bytes:
    /// 128. It is a type name, sent with every event (an SSE `event:` line);
    /// the transitions' own are a few bytes. A longer one is refused with
    /// [`Error::TooLarge`](crate::Error::TooLarge).
    pub const MAX_KIND_LEN: usize = 128;

    /// Longest [`data`](Event::data) of an event appended with
    /// [`JobState::append_event`](crate::JobState::append_event), in bytes of
    /// its JSON encoding: 64 KiB. A job keeps up to
    /// [`JobState::DEFAULT_MAX_EVENTS`](crate::JobState::DEFAULT_MAX_EVENTS)
    /// events and replays them to each reconnecting client, so an event is a
    /// notice, not a payload. Larger data is refused with
    /// [`Error::TooLarge`](crate::Error::TooLarge). The `done` event carries
    /// the job's result, bounded by [`Job::MAX_RESULT_LEN`] instead.
    pub const MAX_DATA_LEN: usize = 64 << 10;

    /// Whether this event ends the job's stream (`done`, `error`, `cancelled`).
    pub fn is_terminal(&self) -> bool {
        TERMINAL_EVENTS.contains(&self.kind.as_str())
    }
}

/// An event as stored: the event and the id of the write that appended it.
///
/// The write id is what tells a call whose store write failed in a way that
/// may hide its success, and whose job record has moved on since, whether
/// the event at the sequence number it wrote is its own. It stays out of
/// [`Event`], which clients see.
///
/// `Deserialize` reads [`Event`]'s fields by name, as the flattened derive did,
/// ignoring unknown ones.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct StoredEvent {
    #[serde(flatten)]
    pub(crate) event: Event,
    /// Absent in events written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) write: Option<AttemptId>,
}

record_deserialize! {
    StoredEvent, "struct StoredEvent",
    required [seq = "seq", kind = "type", data = "data", time_ms = "time_ms"],
    defaulted [write = "write"],
    unknown ignore,
    build StoredEvent {
        event: Event {
            seq,
            kind,
            data,
            time_ms,
        },
        write,
    },
}

impl Record for StoredEvent {
    const SCHEMA: u32 = Event::SCHEMA;
}

/// The events that end a stream; emitted only by the transitions themselves.
pub(crate) const TERMINAL_EVENTS: [&str; 3] = ["done", "error", "cancelled"];

/// Cuts `text` to at most `max` bytes at a character boundary.
pub(crate) fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::record::same_as_before::{arrange, before, now, rearrangement};

    /// `StoredEvent` as derive read it, flattening `Event`.
    #[derive(Serialize, Deserialize)]
    struct DerivedEvent {
        #[serde(flatten)]
        event: Event,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        write: Option<AttemptId>,
    }

    const NAMES: &[&str] = &["seq", "type", "kind", "data", "time_ms", "write"];

    proptest! {
        #[test]
        fn events_decode_as_the_derived_type_did(change in rearrangement(NAMES)) {
            let stored = StoredEvent {
                event: Event {
                    seq: 3,
                    kind: "progress".into(),
                    data: serde_json::json!({"message": "half way", "n": [1, 2.5]}),
                    time_ms: 1_767_225_600_000,
                },
                write: Some(AttemptId::new()),
            };
            let key = crate::key::Key::new(["jobs", "event", "j", "3"]).unwrap();
            let record = serde_json::from_slice(&crate::record::encode(&key, &stored).unwrap()).unwrap();
            let bytes = arrange(&record, &change);
            // See `Outcome::without_reason`.
            prop_assert_eq!(
                now::<StoredEvent>(&bytes).without_reason(),
                before::<DerivedEvent>(StoredEvent::SCHEMA, &bytes).without_reason()
            );
        }
    }
}
