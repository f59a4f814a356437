//! What a reservation holds, on disk and in memory.

use serde::{Deserialize, Serialize};

use crate::attempt::AttemptId;
use crate::key::Key;
use crate::limits;
use crate::record::{Extra, Metadata, Record, record_deserialize};
use crate::store::Version;

/// What a caller tells the ledger about a charge: the caller's own metadata,
/// kept with the reservation so that a refund after a restart knows what to
/// refund without the caller's context, and an optional request fingerprint.
///
/// The metadata is the caller's: which backend ran the job, the tier charged,
/// the install or license it was charged to, the number of minutes. The ledger
/// stores it as given and returns it with the reservation.
///
/// ```
/// use jobsafe::ledger::ChargeRequest;
///
/// let request = ChargeRequest::new()
///     .meta("backend", "deepgram")
///     .meta("tier", "pro")
///     .meta("minutes", 42)
///     .fingerprint("sha256:9f2c...");
/// assert_eq!(request.metadata()["minutes"], 42);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChargeRequest {
    pub(super) fingerprint: Option<String>,
    pub(super) metadata: Metadata,
    pub(super) attempt: Option<AttemptId>,
}

impl ChargeRequest {
    /// Longest [`fingerprint`](ChargeRequest::fingerprint), in bytes: 256,
    /// room for any common digest in hex or base64 with an algorithm prefix
    /// (`sha512:` and 128 hex digits is 135). A longer one is refused by
    /// [`JobLedger::reserve`](crate::JobLedger::reserve) and its siblings with
    /// [`Error::TooLarge`](crate::Error::TooLarge).
    pub const MAX_FINGERPRINT_LEN: usize = 256;

    /// Longest [`metadata`](ChargeRequest::metadata), in bytes of its JSON
    /// encoding: 64 KiB. It is what a refund needs to know (a backend, a tier,
    /// a count), rewritten with every change of the reservation. Larger
    /// metadata is refused by [`JobLedger::reserve`](crate::JobLedger::reserve)
    /// and its siblings.
    pub const MAX_METADATA_LEN: usize = 64 << 10;

    /// A request with nothing recorded.
    pub fn new() -> Self {
        ChargeRequest::default()
    }

    /// A digest of the request: a later reserve of the same job id with a
    /// different fingerprint is refused with
    /// [`Error::FingerprintMismatch`](crate::Error::FingerprintMismatch), since it
    /// is not a retry but a different request reusing the id.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
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

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Names this reserve, so that repeating it is recognised as the same
    /// call: a reserve that finds the reservation made by this attempt id
    /// returns it as [`Reserve::New`](super::Reserve::New), as the first call
    /// did (or would have, had its reply not been lost), instead of
    /// [`Reserve::Existing`](super::Reserve::Existing). Nothing is charged
    /// again. Repeat a reserve that failed with an
    /// [ambiguous](crate::Error::is_ambiguous) error with the id it carries
    /// ([`Error::attempt_id`](crate::Error::attempt_id)).
    ///
    /// The id is stored with the reservation ([`Reservation::attempt`]) and
    /// names one reserve: never reuse it for another. A repeat that finds no
    /// reservation of its job id (the first call did not land, or its
    /// reservation was refunded or purged since) reserves anew, as a first
    /// call does. Default: a fresh id per call.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::ledger::{ChargeRequest, Reserve};
    /// use jobsafe::{AttemptId, JobLedger, ManualClock, MemStore};
    ///
    /// let ledger = JobLedger::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    /// let request = ChargeRequest::new().attempt(AttemptId::new());
    /// let Reserve::New(first) = ledger.reserve("lic:abc", "job-1", &request)? else {
    ///     unreachable!("a new job id")
    /// };
    /// // Its reply was lost, say, and the caller asks again with the same id:
    /// // its own reservation, still to be charged by it, not a free retry.
    /// let Reserve::New(again) = ledger.reserve("lic:abc", "job-1", &request)? else {
    ///     unreachable!("the same attempt")
    /// };
    /// assert_eq!(again.id, first.id);
    /// // Another request for the job id is a retry.
    /// let other = ChargeRequest::new();
    /// assert!(matches!(ledger.reserve("lic:abc", "job-1", &other)?, Reserve::Existing(_)));
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

    /// Refuses a request whose fields are over their bounds, for the
    /// reservation at `key`.
    pub(super) fn check(&self, key: &Key) -> crate::Result<()> {
        let fingerprint = self.fingerprint.as_deref();
        let limit = ChargeRequest::MAX_FINGERPRINT_LEN;
        limits::check_text("reservation fingerprint", key, fingerprint, limit)?;
        let limit = ChargeRequest::MAX_METADATA_LEN;
        limits::check_json("reservation metadata", key, &self.metadata, limit)
    }

    /// Records the backend that does the job, as the metadata field `backend`.
    #[deprecated(since = "0.2.0", note = "use `.meta(\"backend\", backend)`")]
    pub fn backend(self, backend: impl Into<String>) -> Self {
        self.meta(LEGACY_FIELDS[0], backend.into())
    }

    /// Records the tier charged, as the metadata field `tier`.
    #[deprecated(since = "0.2.0", note = "use `.meta(\"tier\", tier)`")]
    pub fn tier(self, tier: impl Into<String>) -> Self {
        self.meta(LEGACY_FIELDS[1], tier.into())
    }

    /// Records the installation that asked, as the metadata field `install_id`.
    #[deprecated(since = "0.2.0", note = "use `.meta(\"install_id\", install_id)`")]
    pub fn install_id(self, install_id: impl Into<String>) -> Self {
        self.meta(LEGACY_FIELDS[2], install_id.into())
    }

    /// Records the license charged, as the metadata field `license_fingerprint`.
    #[deprecated(
        since = "0.2.0",
        note = "use `.meta(\"license_fingerprint\", fingerprint)`"
    )]
    pub fn license_fingerprint(self, fingerprint: impl Into<String>) -> Self {
        self.meta(LEGACY_FIELDS[3], fingerprint.into())
    }
}

/// Fields that reservations written by jobsafe 0.1 kept beside the metadata;
/// they are read into the metadata under these names.
const LEGACY_FIELDS: [&str; 4] = ["backend", "tier", "install_id", "license_fingerprint"];

/// Where a reservation's side effects stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReservationState {
    /// Charged: the charge happened (in the same batch, or confirmed).
    Charged,
    /// Reserved for an external charge that is not confirmed yet. Listed by
    /// [`JobLedger::pending`](crate::JobLedger::pending) until
    /// [`confirm_charge`](crate::JobLedger::confirm_charge) or
    /// [`cancel_charge`](crate::JobLedger::cancel_charge).
    ChargePending,
    /// An external refund was started and is not confirmed yet. Listed by
    /// [`JobLedger::pending`](crate::JobLedger::pending) until
    /// [`complete_refund`](crate::JobLedger::complete_refund).
    RefundPending,
}

impl ReservationState {
    /// Whether a side effect is in flight: such a reservation neither expires nor
    /// is purged.
    pub fn is_pending(self) -> bool {
        !matches!(self, ReservationState::Charged)
    }
}

/// One reservation: a job id charged to an account.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Reservation {
    /// The account charged (a credit key such as `lic:abc123`).
    pub account: String,
    /// The caller's job id.
    pub job_id: String,
    /// Unique per reservation (a UUID): pass it as the idempotency key of an
    /// external charge or refund, so that retrying after a crash cannot apply it
    /// twice.
    pub id: String,
    /// Request fingerprint, as requested.
    pub fingerprint: Option<String>,
    /// The caller's metadata, as requested. A reservation written by jobsafe 0.1
    /// shows its `backend`, `tier`, `install_id` and `license_fingerprint` here
    /// under those names (a metadata field of the same name wins).
    pub metadata: Metadata,
    /// When it was reserved, in the ledger clock's milliseconds.
    pub charged_ms: u64,
    /// From then on the same job id counts as new (unless a side effect is
    /// pending).
    pub expires_ms: u64,
    /// Where its side effects stand.
    pub state: ReservationState,
    /// The store version of the record.
    pub version: Version,
    /// The attempt id of the reserve that made it (the request's
    /// [`attempt`](ChargeRequest::attempt), or a fresh one); `None` for a
    /// reservation written before attempt ids were stored.
    pub attempt: Option<AttemptId>,
}

impl Reservation {
    /// Whether the job id counts as new again at `now_ms`: the TTL has passed and
    /// no side effect is pending.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms && !self.state.is_pending()
    }
}

/// The stored form.
///
/// Jobsafe 0.1 stored `backend`, `tier`, `install_id` and `license_fingerprint`
/// as fields of their own. They are not fields here: they land in `extra` as
/// unknown fields do, and [`StoredReservation::lift_legacy_fields`] moves them
/// into the metadata, so a rewrite keeps them there.
///
/// `Deserialize` is written by `record_deserialize!`, as derive with
/// `#[serde(flatten)] extra` would read it, without flatten's buffering.
#[derive(Clone, Serialize)]
pub(super) struct StoredReservation {
    pub(super) id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub(super) metadata: Metadata,
    pub(super) charged_ms: u64,
    pub(super) expires_ms: u64,
    pub(super) state: ReservationState,
    /// The attempt id of the reserve that made this reservation, kept by every
    /// later write: what a repeated reserve recognises. Absent in records
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) attempt: Option<AttemptId>,
    /// The id of the write that stored this record: the reserve's attempt id,
    /// or a later transition's own. What a call reads back to learn whether
    /// its write landed. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) write: Option<AttemptId>,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

record_deserialize! {
    StoredReservation, "struct StoredReservation",
    required [id = "id", charged_ms = "charged_ms", expires_ms = "expires_ms", state = "state"],
    defaulted [fingerprint = "fingerprint", metadata = "metadata", attempt = "attempt", write = "write"],
    unknown keep(extra),
    build StoredReservation {
        id,
        fingerprint,
        metadata,
        charged_ms,
        expires_ms,
        state,
        attempt,
        write,
        extra,
    },
}

impl Record for StoredReservation {
    const SCHEMA: u32 = 1;
}

impl StoredReservation {
    /// A new reservation, made by the reserve `attempt`.
    pub(super) fn new(
        request: &ChargeRequest,
        attempt: &AttemptId,
        now_ms: u64,
        ttl_ms: u64,
        state: ReservationState,
    ) -> Self {
        StoredReservation {
            id: uuid::Uuid::now_v7().to_string(),
            fingerprint: request.fingerprint.clone(),
            metadata: request.metadata.clone(),
            charged_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl_ms),
            state,
            attempt: Some(attempt.clone()),
            write: Some(attempt.clone()),
            extra: Extra::new(),
        }
    }

    /// Whether this reservation was made by the reserve `attempt`.
    pub(super) fn was_made_by(&self, attempt: &AttemptId) -> bool {
        self.attempt.as_ref() == Some(attempt)
    }

    /// Whether this record was stored by the write `write`.
    pub(super) fn was_written_by(&self, write: &AttemptId) -> bool {
        self.write.as_ref() == Some(write)
    }

    /// Moves the fields jobsafe 0.1 kept beside the metadata into it, under
    /// their names; a metadata field of the same name wins (and the old field is
    /// dropped). Done on every read, so that what is rewritten has them in the
    /// metadata.
    pub(super) fn lift_legacy_fields(mut self) -> Self {
        for name in LEGACY_FIELDS {
            if let Some(value) = self.extra.remove(name)
                && !value.is_null()
            {
                self.metadata.entry(name).or_insert(value);
            }
        }
        self
    }

    /// The reservation this record stores, of (`account`, `job_id`) at
    /// `version`, its fields moved into it.
    pub(super) fn into_reservation(
        self,
        account: &str,
        job_id: &str,
        version: Version,
    ) -> Reservation {
        Reservation {
            account: account.to_owned(),
            job_id: job_id.to_owned(),
            id: self.id,
            fingerprint: self.fingerprint,
            metadata: self.metadata,
            charged_ms: self.charged_ms,
            expires_ms: self.expires_ms,
            state: self.state,
            version,
            attempt: self.attempt,
        }
    }

    /// As [`into_reservation`](Self::into_reservation), the record kept.
    pub(super) fn to_reservation(
        &self,
        account: &str,
        job_id: &str,
        version: Version,
    ) -> Reservation {
        self.clone().into_reservation(account, job_id, version)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;
    use crate::record::same_as_before::{arrange, before, now, rearrangement};

    /// `StoredReservation` as derive read it, with `#[serde(flatten)] extra`.
    #[derive(Serialize, Deserialize)]
    struct Derived {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        #[serde(default, skip_serializing_if = "Metadata::is_empty")]
        metadata: Metadata,
        charged_ms: u64,
        expires_ms: u64,
        state: ReservationState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<AttemptId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        write: Option<AttemptId>,
        #[serde(flatten)]
        extra: Extra,
    }

    const NAMES: &[&str] = &[
        "id",
        "fingerprint",
        "metadata",
        "charged_ms",
        "expires_ms",
        "state",
        "attempt",
        "write",
        "backend",
        "tier",
    ];

    fn valid() -> serde_json::Map<String, serde_json::Value> {
        let request = ChargeRequest::new()
            .meta("backend", "deepgram")
            .meta("minutes", 42)
            .fingerprint("sha256:9f");
        let stored = StoredReservation::new(
            &request,
            &AttemptId::new(),
            1_767_225_600_000,
            86_400_000,
            ReservationState::ChargePending,
        );
        let key = Key::new(["ledger", "lic:abc", "job-1"]).unwrap();
        serde_json::from_slice(&crate::record::encode(&key, &stored).unwrap()).unwrap()
    }

    proptest! {
        #[test]
        fn decodes_as_the_derived_type_did(change in rearrangement(NAMES)) {
            let bytes = arrange(&valid(), &change);
            prop_assert_eq!(
                now::<StoredReservation>(&bytes),
                before::<Derived>(StoredReservation::SCHEMA, &bytes)
            );
        }
    }

    #[test]
    fn legacy_fields_still_land_in_extra_and_are_lifted() {
        let key = Key::new(["ledger", "lic:abc", "job-1"]).unwrap();
        let bytes = br#"{"backend":"deepgram","charged_ms":1,"expires_ms":2,"id":"r","metadata":{"tier":"pro"},"schema":1,"state":"charged","tier":"free","future":true}"#;
        let stored: StoredReservation = crate::record::decode(&key, bytes).unwrap();
        assert_eq!(stored.extra.len(), 3, "{:?}", stored.extra);
        let lifted = stored.lift_legacy_fields();
        assert_eq!(lifted.metadata["backend"], "deepgram");
        assert_eq!(lifted.metadata["tier"], "pro");
        assert_eq!(lifted.extra.keys().collect::<Vec<_>>(), ["future"]);
    }
}
