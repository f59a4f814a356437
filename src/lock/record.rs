//! What a lock record holds, on disk and in memory.

use serde::Serialize;

use crate::attempt::AttemptId;
use crate::fencing::FencingToken;
use crate::key::Key;
use crate::limits;
use crate::process::{ProcessIdentity, ProcessLiveness};
use crate::record::{Extra, Metadata, Record, record_deserialize};
use crate::store::Version;

/// Who asks for a lock, and what they mean to do with it.
///
/// ```
/// use jobsafe::lock::LockRequest;
///
/// let request = LockRequest::new()
///     .actor("user:alice")
///     .meta("chunks_to_embed", 1200)
///     .meta("reason", "vault re-index");
/// assert_eq!(request.metadata()["chunks_to_embed"], 1200);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockRequest {
    actor: Option<String>,
    metadata: Metadata,
    attempt: Option<AttemptId>,
}

impl LockRequest {
    /// Longest [`actor`](LockRequest::actor), in bytes: 256, room for a user,
    /// service or host name. A longer one is refused by
    /// [`JobLock::acquire`](crate::JobLock::acquire) with
    /// [`Error::TooLarge`](crate::Error::TooLarge).
    pub const MAX_ACTOR_LEN: usize = 256;

    /// Longest [`metadata`](LockRequest::metadata), in bytes of its JSON
    /// encoding: 64 KiB. It is rewritten by every renewal and returned to every
    /// caller that finds the lock held; what to tell them fits in far less.
    /// Larger metadata is refused by [`JobLock::acquire`](crate::JobLock::acquire).
    pub const MAX_METADATA_LEN: usize = 64 << 10;

    /// A request with no actor and no metadata.
    pub fn new() -> Self {
        LockRequest::default()
    }

    /// Names who asks (a user, a service, an operator).
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Adds one metadata field.
    pub fn meta(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    /// Replaces all metadata.
    pub fn metadata_map(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Names this acquire, so that repeating it is recognised as the same
    /// call: an acquire whose id is the holder's [job id](LockRecord::job_id)
    /// returns that holder's guard instead of [`Acquire::Held`](super::Acquire::Held).
    /// Repeat an acquire that failed with an
    /// [ambiguous](crate::Error::is_ambiguous) error with the id it carries.
    /// The id becomes the lock's job id, which must be unique per acquire:
    /// never reuse an id for another acquire. Default: a fresh id per call.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use jobsafe::{AttemptId, JobLock, Key, ManualClock, MemStore};
    /// use jobsafe::lock::{Acquire, LockRequest};
    ///
    /// let locks = JobLock::new(MemStore::new(), Arc::new(ManualClock::default()));
    /// let key = Key::new(["reindex", "vault-1"])?;
    /// let request = LockRequest::new().attempt(AttemptId::new());
    /// let ttl = Duration::from_secs(60);
    /// let Acquire::Acquired(first) = locks.acquire(&key, ttl, &request)? else { unreachable!() };
    /// // Its reply was lost, say, and the caller asks again with the same id.
    /// let Acquire::Acquired(again) = locks.acquire(&key, ttl, &request)? else { unreachable!() };
    /// assert_eq!(again.token(), first.token());
    /// # std::mem::forget(first);
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    pub fn attempt(mut self, attempt: AttemptId) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// The attempt id, if one was chosen.
    pub fn attempt_id(&self) -> Option<&AttemptId> {
        self.attempt.as_ref()
    }

    /// The actor, if named.
    pub fn actor_name(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Refuses a request whose fields are over their bounds, for the lock
    /// record at `key`.
    pub(super) fn check(&self, key: &Key) -> crate::Result<()> {
        let actor = self.actor.as_deref();
        limits::check_text("lock actor", key, actor, LockRequest::MAX_ACTOR_LEN)?;
        limits::check_json(
            "lock metadata",
            key,
            &self.metadata,
            LockRequest::MAX_METADATA_LEN,
        )
    }
}

/// A lock as it stands in the store: who holds it, with which fencing token, and
/// until when.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LockRecord {
    /// The lock's key (as given to [`JobLock`](crate::JobLock), without its
    /// namespace).
    pub key: Key,
    /// The holder's job id, unique per successful acquire.
    pub job_id: String,
    /// The holder's fencing token.
    pub token: FencingToken,
    /// Who acquired it, if named.
    pub actor: Option<String>,
    /// Facts about the job.
    pub metadata: Metadata,
    /// When it was acquired, in the lock clock's milliseconds.
    pub started_ms: u64,
    /// When it was last acquired or renewed.
    pub renewed_ms: u64,
    /// When the lease ends: from then on the next acquire takes the lock over.
    pub expires_ms: u64,
    /// The process that acquired the lock or, since, last renewed it, on a store
    /// local to one machine ([`Store::is_machine_local`](crate::Store::is_machine_local)).
    /// `None` on other stores, where `/proc` cannot name it reliably, in records
    /// written before processes were recorded, and once a version that does not
    /// record them renewed the lock. On such a store, once this process has
    /// provably exited the lock is taken over at once: see "Dead holders" in
    /// [`JobLock`](crate::JobLock).
    pub process: Option<ProcessIdentity>,
    /// The store version of the record (changes with every renewal).
    pub version: Version,
}

impl LockRecord {
    /// Whether the lease has ended at `now_ms` (it ends exactly at
    /// [`expires_ms`](LockRecord::expires_ms)).
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }

    /// Whether the holder's [`process`](LockRecord::process) still runs, as far as
    /// this process can tell from `/proc` ([`ProcessLiveness::Unknown`] for a
    /// record without one). Reads `/proc`, changes nothing.
    /// [`JobLock::acquire`](crate::JobLock::acquire) takes a live lease over at
    /// once when this is [`ProcessLiveness::Dead`] and the store is local to this
    /// machine; on a store that is not, it is for information only.
    pub fn holder_liveness(&self) -> ProcessLiveness {
        self.process
            .as_ref()
            .map_or(ProcessLiveness::Unknown, ProcessIdentity::liveness)
    }

    /// The holder in words, for messages: job id and actor.
    pub fn holder(&self) -> String {
        match &self.actor {
            Some(actor) => format!("job {} ({actor})", self.job_id),
            None => format!("job {}", self.job_id),
        }
    }
}

/// The stored form. The fencing token is the store version of the acquiring
/// write, which that write cannot contain; it is recorded from the first renewal
/// on, and until then read from the entry's version.
///
/// `Deserialize` is written by `record_deserialize!`, as derive with
/// `#[serde(flatten)] extra` would read it, without flatten's buffering.
#[derive(Serialize)]
pub(super) struct StoredLock {
    pub(super) job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) token: Option<FencingToken>,
    #[serde(default)]
    pub(super) actor: Option<String>,
    #[serde(default)]
    pub(super) metadata: Metadata,
    pub(super) started_ms: u64,
    pub(super) renewed_ms: u64,
    pub(super) expires_ms: u64,
    /// Absent in records of stores that are not machine-local and in records
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) process: Option<StoredProcess>,
    /// The id of the write that stored this record: the acquire's attempt id
    /// (the job id) or a renewal's own. What a call reads back to learn
    /// whether its write landed. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) write: Option<AttemptId>,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

record_deserialize! {
    StoredLock, "struct StoredLock",
    required [
        job_id = "job_id",
        started_ms = "started_ms",
        renewed_ms = "renewed_ms",
        expires_ms = "expires_ms",
    ],
    defaulted [
        token = "token",
        actor = "actor",
        metadata = "metadata",
        process = "process",
        write = "write",
    ],
    unknown keep(extra),
    build StoredLock {
        job_id,
        token,
        actor,
        metadata,
        started_ms,
        renewed_ms,
        expires_ms,
        process,
        write,
        extra,
    },
}

impl Record for StoredLock {
    const SCHEMA: u32 = 1;
}

impl StoredLock {
    /// The fencing token of this record stored at `version`.
    pub(super) fn token_at(&self, version: Version) -> FencingToken {
        self.token.unwrap_or(FencingToken::new(version.get()))
    }

    /// Whether this record was stored by the write `write`.
    pub(super) fn was_written_by(&self, write: &AttemptId) -> bool {
        self.write.as_ref() == Some(write)
    }

    /// Whether `holder` is the holder of this record stored at `version`.
    pub(super) fn is_held_by(&self, holder: &super::LockHandle, version: Version) -> bool {
        self.job_id == holder.job_id && self.token_at(version) == holder.token
    }

    pub(super) fn into_record(self, key: Key, version: Version) -> LockRecord {
        LockRecord {
            key,
            token: self.token_at(version),
            job_id: self.job_id,
            actor: self.actor,
            metadata: self.metadata,
            started_ms: self.started_ms,
            renewed_ms: self.renewed_ms,
            process: self
                .process
                .filter(|process| process.renewed_ms == self.renewed_ms)
                .map(|process| process.identity),
            expires_ms: self.expires_ms,
            version,
        }
    }
}

/// The process that last acquired or renewed a lock, as stored, with the
/// renewal it made. A version that does not know this field keeps it unchanged
/// when it renews (unknown fields are kept), so the process it names is the
/// holder only while its `renewed_ms` is the record's: the process that renewed
/// since is not known.
///
/// `Deserialize` reads [`ProcessIdentity`]'s fields by name, as the flattened
/// derive did (its `time_ns` defaulted), ignoring unknown ones.
#[derive(Serialize)]
pub(super) struct StoredProcess {
    #[serde(flatten)]
    identity: ProcessIdentity,
    renewed_ms: u64,
}

record_deserialize! {
    StoredProcess, "struct StoredProcess",
    required [
        pid = "pid",
        start_ticks = "start_ticks",
        boot_id = "boot_id",
        pid_ns = "pid_ns",
        renewed_ms = "renewed_ms",
    ],
    defaulted [time_ns = "time_ns"],
    unknown ignore,
    build StoredProcess {
        identity: ProcessIdentity {
            pid,
            start_ticks,
            boot_id,
            pid_ns,
            time_ns,
        },
        renewed_ms,
    },
}

impl StoredProcess {
    /// `process`, recorded by an acquire or renewal at `renewed_ms`.
    pub(super) fn of(process: Option<ProcessIdentity>, renewed_ms: u64) -> Option<Self> {
        process.map(|identity| StoredProcess {
            identity,
            renewed_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;
    use crate::record::same_as_before::{arrange, before, now, rearrangement};

    /// `StoredLock` as derive read it, with `#[serde(flatten)] extra`.
    #[derive(Serialize, Deserialize)]
    struct Derived {
        job_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<FencingToken>,
        #[serde(default)]
        actor: Option<String>,
        #[serde(default)]
        metadata: Metadata,
        started_ms: u64,
        renewed_ms: u64,
        expires_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<DerivedProcess>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        write: Option<AttemptId>,
        #[serde(flatten)]
        extra: Extra,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename = "StoredProcess")]
    struct DerivedProcess {
        #[serde(flatten)]
        identity: ProcessIdentity,
        renewed_ms: u64,
    }

    const NAMES: &[&str] = &[
        "job_id",
        "token",
        "actor",
        "metadata",
        "started_ms",
        "renewed_ms",
        "expires_ms",
        "process",
        "write",
    ];

    fn valid(with_process: bool) -> serde_json::Map<String, serde_json::Value> {
        let process = with_process.then(|| ProcessIdentity {
            pid: 4242,
            start_ticks: 1_234_567,
            boot_id: "8f6c".into(),
            pid_ns: 4_026_531_836,
            time_ns: Some(4_026_531_834),
        });
        let stored = StoredLock {
            job_id: "job-42".into(),
            token: Some(FencingToken::new(17)),
            actor: Some("user:alice".into()),
            metadata: Metadata::from_iter([("chunks".to_owned(), 12.into())]),
            started_ms: 1,
            renewed_ms: 2,
            expires_ms: 3,
            process: StoredProcess::of(process, 2),
            write: Some(AttemptId::new()),
            extra: Extra::new(),
        };
        let key = Key::new(["locks", "vault", "lic:abc"]).unwrap();
        serde_json::from_slice(&crate::record::encode(&key, &stored).unwrap()).unwrap()
    }

    /// A process member rearranged as a record is.
    fn process_member() -> impl Strategy<Value = serde_json::Value> {
        const PROCESS: &[&str] = &[
            "pid",
            "start_ticks",
            "boot_id",
            "pid_ns",
            "time_ns",
            "renewed_ms",
        ];
        rearrangement(PROCESS).prop_map(|change| {
            let process = valid(true)["process"].as_object().unwrap().clone();
            serde_json::from_slice(&arrange(&process, &change)).unwrap()
        })
    }

    proptest! {
        #[test]
        fn decodes_as_the_derived_type_did(
            change in rearrangement(NAMES),
            with_process in any::<bool>(),
            process in proptest::option::of(process_member()),
        ) {
            let mut record = valid(with_process);
            if let Some(process) = process {
                record.insert("process".into(), process);
            }
            let bytes = arrange(&record, &change);
            // The process flattened its identity: see `Outcome::without_reason`.
            prop_assert_eq!(
                now::<StoredLock>(&bytes).without_reason(),
                before::<Derived>(StoredLock::SCHEMA, &bytes).without_reason()
            );
        }
    }
}
