//! What a reservation holds, on disk and in memory.

use serde::{Deserialize, Serialize};

use crate::record::{Extra, Metadata, Record};
use crate::store::Version;

/// What a caller tells the ledger about a charge: everything a refund will need
/// later without the caller's context (after a restart, say), and an optional
/// request fingerprint.
///
/// ```
/// use jobsafe::ledger::ChargeRequest;
///
/// let request = ChargeRequest::new()
///     .backend("deepgram")
///     .tier("pro")
///     .install_id("inst-7")
///     .license_fingerprint("abc123")
///     .fingerprint("sha256:9f2c...")
///     .meta("minutes", 42);
/// assert_eq!(request.metadata()["minutes"], 42);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChargeRequest {
    pub(super) backend: Option<String>,
    pub(super) tier: Option<String>,
    pub(super) install_id: Option<String>,
    pub(super) license_fingerprint: Option<String>,
    pub(super) fingerprint: Option<String>,
    pub(super) metadata: Metadata,
}

impl ChargeRequest {
    /// A request with nothing recorded.
    pub fn new() -> Self {
        ChargeRequest::default()
    }

    /// The backend that does the job (to route a refund).
    pub fn backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = Some(backend.into());
        self
    }

    /// The pricing tier charged.
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// The installation that asked.
    pub fn install_id(mut self, install_id: impl Into<String>) -> Self {
        self.install_id = Some(install_id.into());
        self
    }

    /// The license the charge goes to.
    pub fn license_fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.license_fingerprint = Some(fingerprint.into());
        self
    }

    /// A digest of the request: a later reserve of the same job id with a
    /// different fingerprint is refused with
    /// [`Error::FingerprintMismatch`](crate::Error::FingerprintMismatch), since it
    /// is not a retry but a different request reusing the id.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Adds one free-form metadata field.
    pub fn meta(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

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
    /// Backend, as requested.
    pub backend: Option<String>,
    /// Tier, as requested.
    pub tier: Option<String>,
    /// Install id, as requested.
    pub install_id: Option<String>,
    /// License fingerprint, as requested.
    pub license_fingerprint: Option<String>,
    /// Request fingerprint, as requested.
    pub fingerprint: Option<String>,
    /// Free-form metadata, as requested.
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
}

impl Reservation {
    /// Whether the job id counts as new again at `now_ms`: the TTL has passed and
    /// no side effect is pending.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms && !self.state.is_pending()
    }
}

/// The stored form.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct StoredReservation {
    pub(super) id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) install_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) license_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub(super) metadata: Metadata,
    pub(super) charged_ms: u64,
    pub(super) expires_ms: u64,
    pub(super) state: ReservationState,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

impl Record for StoredReservation {
    const SCHEMA: u32 = 1;
}

impl StoredReservation {
    pub(super) fn new(
        request: &ChargeRequest,
        now_ms: u64,
        ttl_ms: u64,
        state: ReservationState,
    ) -> Self {
        StoredReservation {
            id: uuid::Uuid::now_v7().to_string(),
            backend: request.backend.clone(),
            tier: request.tier.clone(),
            install_id: request.install_id.clone(),
            license_fingerprint: request.license_fingerprint.clone(),
            fingerprint: request.fingerprint.clone(),
            metadata: request.metadata.clone(),
            charged_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl_ms),
            state,
            extra: Extra::new(),
        }
    }

    pub(super) fn to_reservation(
        &self,
        account: &str,
        job_id: &str,
        version: Version,
    ) -> Reservation {
        Reservation {
            account: account.to_owned(),
            job_id: job_id.to_owned(),
            id: self.id.clone(),
            backend: self.backend.clone(),
            tier: self.tier.clone(),
            install_id: self.install_id.clone(),
            license_fingerprint: self.license_fingerprint.clone(),
            fingerprint: self.fingerprint.clone(),
            metadata: self.metadata.clone(),
            charged_ms: self.charged_ms,
            expires_ms: self.expires_ms,
            state: self.state,
            version,
        }
    }
}
