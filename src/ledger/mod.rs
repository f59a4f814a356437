//! Idempotent charges: use a [`JobLedger`] so that a job id is charged once
//! however often a client retries it, and refunded exactly once when it fails.
//!
//! [`reserve`](JobLedger::reserve) is one insert-if-absent per (account, job
//! id): the first call gets [`Reserve::New`] and charges, retries get
//! [`Reserve::Existing`] for free until the reservation's time to live passes.
//! A balance kept in the same store changes in the same atomic batch
//! ([`reserve_with`](JobLedger::reserve_with),
//! [`refund_with`](JobLedger::refund_with)); an external payment API is made
//! exactly-once with pending states ([`reserve_pending`](JobLedger::reserve_pending),
//! [`begin_refund`](JobLedger::begin_refund)) and the list of what is
//! [`pending`](JobLedger::pending) after a restart.

#[cfg(feature = "async")]
mod async_face;
mod reservation;

use std::future::{Future, ready};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use async_face::AsyncJobLedger;
pub use reservation::{ChargeRequest, Reservation, ReservationState};

use self::reservation::StoredReservation;
use crate::attempt::AttemptId;
use crate::clock::{SharedClock, millis};
use crate::drive::{self, Blocking, Drive};
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::record as codec;
use crate::resolve::{self, Deadline, LateWrite, may_have_landed};
use crate::store::{Applied, Batch, BatchOp, Entry, Expect, SCAN_PAGE, Store, Version};
use crate::trace::report;

/// How often a write is retried after losing a compare-and-set race before the
/// conflict is returned. Every lost race means another writer succeeded, so this
/// is only reached when a caller's own operations can never apply (an
/// `Expect::Absent` on a key that exists, say).
const MAX_ATTEMPTS: usize = 64;

/// The outcome of a reserve.
#[derive(Clone, Debug, PartialEq)]
pub enum Reserve {
    /// The job id was new: this call reserved it, and its side effects (if any)
    /// were applied with it. Charge now (or, with
    /// [`reserve_with`](JobLedger::reserve_with), already charged). Also the
    /// reservation made by the request's own
    /// [attempt](ChargeRequest::attempt), when the call is repeated: it is
    /// returned as the first call returned it (in its state as stored now),
    /// and nothing is charged again.
    New(Reservation),
    /// The job id is already reserved and charged: a retry, free.
    Existing(Reservation),
    /// The job id is reserved, but its charge is not confirmed yet or a refund of
    /// it is under way ([`Reservation::state`]): neither charge again nor treat
    /// the request as paid; ask the client to retry later.
    InFlight(Reservation),
}

/// Reservations found by [`JobLedger::list`] or [`JobLedger::pending`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct LedgerList {
    /// The reservations, in key order (account, then job id).
    pub reservations: Vec<Reservation>,
    /// Records that could not be read, with the error for each. They are never
    /// dropped or overwritten by the ledger.
    pub unreadable: Vec<(Key, Error)>,
}

/// An idempotency ledger: one reservation per (account, job id), so that a job
/// is charged once however often it is retried.
///
/// [`reserve`](JobLedger::reserve) is a single insert-if-absent: of two
/// concurrent first calls exactly one gets [`Reserve::New`]. A reservation keeps
/// what a refund needs ([`ChargeRequest`]), so that a refund works after a
/// restart without the caller's context; [`refund`](JobLedger::refund) returns it
/// to exactly one caller, after which the job id counts as new. After the TTL
/// (one hour by default) the same job id is new again.
///
/// So a retry that comes after the TTL is charged again. Where the job id
/// also names a job that can outlive the TTL (a long job, or a finished one
/// whose client retries its request), look for the job first: a job already
/// there answers the retry, uncharged (see the README's service example).
/// Or keep the reservations longer: [`ttl`](JobLedgerBuilder::ttl).
///
/// # Side effects exactly once
///
/// The ledger only records; the charge itself is the caller's. Two patterns make
/// it happen exactly once whatever instant the process dies at:
///
/// - **The balance lives in the same store.** Pass the balance change to
///   [`reserve_with`](JobLedger::reserve_with) and
///   [`refund_with`](JobLedger::refund_with): it is applied in the same
///   [`Store::apply`] batch as the reservation, so both happen or neither does.
/// - **The side effect is external** (a payment API).
///   [`reserve_pending`](JobLedger::reserve_pending) records the reservation as
///   [`ChargePending`](ReservationState::ChargePending) before the call; after it
///   succeeds, [`confirm_charge`](JobLedger::confirm_charge). Refunds go
///   [`begin_refund`](JobLedger::begin_refund) → external call →
///   [`complete_refund`](JobLedger::complete_refund). After a crash,
///   [`pending`](JobLedger::pending) lists every side effect that was started and
///   not confirmed; a side effect that failed stays there too. Retrying it with
///   the reservation's [`id`](Reservation::id) as the external API's idempotency
///   key makes it exactly once; without such a key it is at least once, and never
///   lost.
///
/// ```
/// use std::sync::Arc;
/// use jobsafe::ledger::{ChargeRequest, Reservation, Reserve};
/// use jobsafe::store::BatchOp;
/// use jobsafe::{Expect, JobLedger, Key, ManualClock, MemStore, Store};
///
/// let store = Arc::new(MemStore::new());
/// let ledger = JobLedger::new(Arc::clone(&store), Arc::new(ManualClock::new(0)));
/// let balance = Key::new(["credits", "lic:abc"])?;
/// store.put(&balance, b"10", Expect::Absent)?;
///
/// // Charge one credit with the reservation, in one batch.
/// let charge = |_: &Reservation| -> jobsafe::Result<Vec<BatchOp>> {
///     let entry = store.get(&balance)?.expect("opened above");
///     let left: u64 = String::from_utf8_lossy(&entry.value).parse().unwrap_or(0);
///     Ok(vec![BatchOp::Put {
///         key: balance.clone(),
///         value: (left - 1).to_string().into_bytes(),
///         expect: Expect::Version(entry.version),
///     }])
/// };
/// let request = ChargeRequest::new().meta("tier", "pro");
/// assert!(matches!(ledger.reserve_with("lic:abc", "job-1", &request, charge)?, Reserve::New(_)));
/// // The client retries: free.
/// assert!(matches!(ledger.reserve_with("lic:abc", "job-1", &request, charge)?, Reserve::Existing(_)));
/// assert_eq!(store.get(&balance)?.unwrap().value, b"9");
/// # Ok::<(), jobsafe::Error>(())
/// ```
///
/// # A store failure that may hide success
///
/// A store call that fails transiently may still have made its change (on
/// [`PgStore`](crate::PgStore) the commit may have happened and only its reply
/// been lost). Every write of the ledger names itself in the record it stores:
/// a reserve with its [attempt id](ChargeRequest::attempt), kept by the
/// reservation for good, any later change with an id of its own. After such a
/// failure the call reads the reservation back until its
/// [`resolve_within`](JobLedgerBuilder::resolve_within) deadline:
///
/// - its own write is there: the call returns that write's outcome (a reserve
///   whose reply was lost is [`Reserve::New`], never its own
///   [`Existing`](Reserve::Existing), and its charge ops landed with it);
/// - the reservation is unchanged: the write did not land, and the call
///   decides and writes again (at most three writes in all, which fences the
///   failed one off should it still arrive), then fails with the store's
///   transient error, nothing changed (or with [`Error::Ambiguous`], if the
///   store could not rule out that the failed write lands later: a
///   [`PgStore`](crate::PgStore) that could not end its session);
/// - another caller changed it: the call decides again on what is there;
/// - the store stays unreachable until the deadline: the call fails with
///   [`Error::Ambiguous`] carrying the attempt id. Repeat a reserve with that
///   id ([`ChargeRequest::attempt`]): it returns the reservation if the first
///   call made it, and reserves (and charges) if it did not.
///
/// A refund, a cancelled charge and a completed refund delete the reservation,
/// which leaves no record to carry a write id: a reservation gone after the
/// failure counts as removed by this call, one unchanged as not removed. A
/// concurrent removal of the same reservation in that moment is counted as
/// this call's too; with [`refund_with`](JobLedger::refund_with) the balance
/// still changes once, in the batch that landed.
pub struct JobLedger<S> {
    store: Arc<S>,
    clock: SharedClock,
    namespace: Arc<Prefix>,
    ttl_ms: u64,
    resolve_within: Duration,
}

impl<S> Clone for JobLedger<S> {
    fn clone(&self) -> Self {
        JobLedger {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            namespace: Arc::clone(&self.namespace),
            ttl_ms: self.ttl_ms,
            resolve_within: self.resolve_within,
        }
    }
}

impl<S> std::fmt::Debug for JobLedger<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLedger")
            .field("namespace", &self.namespace)
            .field("ttl_ms", &self.ttl_ms)
            .field("resolve_within", &self.resolve_within)
            .finish_non_exhaustive()
    }
}

fn default_namespace() -> Prefix {
    Prefix::new(["ledger"]).unwrap_or_default()
}

/// What is at a ledger key, as far as a reserve is concerned.
enum Found {
    /// The reservation made by this reserve's attempt: the call is repeated.
    Own(Box<Reservation>),
    /// A live reservation: the request is a retry.
    Live(Box<Reservation>),
    /// Nothing live: insert with this precondition.
    Vacant(Expect),
}

impl JobLedger<()> {
    /// How long a reservation makes retries free unless
    /// [`JobLedgerBuilder::ttl`] says otherwise: one hour.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

    /// How long a call keeps re-reading a reservation whose write failed in a
    /// way that may hide its success, by default: 10 s. See
    /// [`JobLedgerBuilder::resolve_within`].
    pub const DEFAULT_RESOLVE_WITHIN: Duration = resolve::DEFAULT_RESOLVE_WITHIN;
}

/// Options for a [`JobLedger`], from [`JobLedger::builder`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use jobsafe::{JobLedger, ManualClock, MemStore, Prefix};
///
/// let ledger = JobLedger::builder(MemStore::new(), Arc::new(ManualClock::default()))
///     .namespace(Prefix::new(["relay", "charges"])?)
///     .ttl(Duration::from_secs(24 * 3600))
///     .resolve_within(Duration::from_secs(30))
///     .build()?;
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct JobLedgerBuilder<S> {
    store: S,
    clock: SharedClock,
    namespace: Prefix,
    ttl: Duration,
    resolve_within: Duration,
}

impl<S: Store> JobLedgerBuilder<S> {
    /// How long a reservation makes retries free. A zero TTL makes every
    /// reserve new: use it only to turn deduplication off. Default:
    /// [`JobLedger::DEFAULT_TTL`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Keeps the reservations under `namespace`, of at least one segment.
    /// Default: `ledger`.
    pub fn namespace(mut self, namespace: Prefix) -> Self {
        self.namespace = namespace;
        self
    }

    /// Bounds how long a write whose store call failed in a way that may hide
    /// its success (see [`Error::is_ambiguous`]) keeps re-reading the
    /// reservation to learn its own write's outcome, counted by the ledger's
    /// clock from the start of the call. A store that stays unreachable that
    /// long makes the call fail with an [ambiguous](Error::is_ambiguous)
    /// error. Zero reads back once. Default:
    /// [`JobLedger::DEFAULT_RESOLVE_WITHIN`].
    ///
    /// The pauses between re-reads are sleeps on the clock: with a
    /// [`ManualClock`](crate::ManualClock) that nothing advances, a store that
    /// keeps failing holds the call until the clock moves. In such a test,
    /// set zero (one re-read, at once) or
    /// [`ManualClock::set_auto_advance`](crate::ManualClock::set_auto_advance).
    pub fn resolve_within(mut self, within: Duration) -> Self {
        self.resolve_within = within;
        self
    }

    /// The ledger.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if the namespace leaves no room for a reservation's
    /// key (account and job id); [`Error::InvalidArgument`] if it is empty.
    pub fn build(self) -> Result<JobLedger<S>> {
        crate::key::check_named_namespace(&self.namespace, "JobLedger")?;
        self.namespace.check_room(2, "JobLedger")?;
        Ok(JobLedger {
            store: Arc::new(self.store),
            clock: self.clock,
            namespace: Arc::new(self.namespace),
            ttl_ms: millis(self.ttl),
            resolve_within: self.resolve_within,
        })
    }
}

impl<S: Store> JobLedger<S> {
    /// A ledger kept in `store` under the key prefix `ledger`, with the default
    /// TTL of one hour, timed by `clock`: the defaults of
    /// [`JobLedger::builder`].
    pub fn new(store: S, clock: SharedClock) -> Self {
        JobLedger {
            store: Arc::new(store),
            clock,
            namespace: Arc::new(default_namespace()),
            ttl_ms: millis(JobLedger::DEFAULT_TTL),
            resolve_within: JobLedger::DEFAULT_RESOLVE_WITHIN,
        }
    }

    /// Options for a ledger kept in `store`, timed by `clock`.
    pub fn builder(store: S, clock: SharedClock) -> JobLedgerBuilder<S> {
        JobLedgerBuilder {
            store,
            clock,
            namespace: default_namespace(),
            ttl: JobLedger::DEFAULT_TTL,
            resolve_within: JobLedger::DEFAULT_RESOLVE_WITHIN,
        }
    }

    /// The clock that decides expiry.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The store the reservations live in.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store key of the reservation of (`account`, `job_id`), for callers
    /// that put it in batches of their own.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if either is empty, contains NUL or is too long.
    pub fn key(&self, account: &str, job_id: &str) -> Result<Key> {
        let segments = self.namespace.segments().iter().map(String::as_str);
        Key::new(segments.chain([account, job_id]))
    }

    /// Reserves (`account`, `job_id`) if it is new: [`Reserve::New`] means the
    /// caller charges, [`Reserve::Existing`] that this is a free retry, and
    /// [`Reserve::InFlight`] that a side effect of the reservation is pending.
    /// A reservation made by the request's own
    /// [attempt](ChargeRequest::attempt) (the call repeated) is
    /// [`Reserve::New`], as the first call returned it.
    ///
    /// A write that fails in a way that may hide its success (the store was
    /// unreachable, and may have committed it) is read back until the
    /// [`resolve_within`](JobLedgerBuilder::resolve_within) deadline: if it
    /// landed, the call returns [`Reserve::New`], never `Existing` for its own
    /// reservation; if it did not, it is written again (see "A store failure
    /// that may hide success" above).
    ///
    /// # Errors
    /// [`Error::FingerprintMismatch`] carrying the stored reservation if the
    /// request's fingerprint differs from a live reservation's;
    /// [`Error::InvalidKey`]; [`Error::TooLarge`] naming the field for a
    /// fingerprint or metadata over [`ChargeRequest::MAX_FINGERPRINT_LEN`] or
    /// [`ChargeRequest::MAX_METADATA_LEN`], with nothing written or read;
    /// [`Error::Corrupt`] naming the key if the stored
    /// reservation cannot be read (never taken for "no reservation");
    /// [`Error::Ambiguous`] with the attempt id if the store failed the write
    /// and stayed unreachable until the deadline (repeat with
    /// [`ChargeRequest::attempt`]); store errors: a transient one only when
    /// the write is known not to have landed.
    pub fn reserve(&self, account: &str, job_id: &str, request: &ChargeRequest) -> Result<Reserve> {
        self.insert(account, job_id, request, ReservationState::Charged, |_| {
            Ok::<_, Error>(Vec::new())
        })
    }

    /// Reserves (`account`, `job_id`) if it is new and, in the same atomic batch,
    /// applies the operations `effect` returns (debiting a balance kept in the same
    /// store, say): both happen or neither does, across crashes too.
    ///
    /// `effect` is called with the reservation about to be stored, once per
    /// attempt: a lost race on the balance or the reservation runs it again, so
    /// it must read what it changes afresh and guard it with `Expect::Version`.
    /// An error from `effect` aborts the reserve with nothing written (an
    /// insufficient balance, say).
    ///
    /// A batch that fails in a way that may hide its success is read back as
    /// by [`reserve`](JobLedger::reserve): the reservation and `effect`'s
    /// operations landed together or not at all, so the reservation being
    /// there is proof of the charge. A batch that landed is [`Reserve::New`];
    /// one that did not is decided and written again (calling `effect` again),
    /// so the balance is never charged twice nor reported charged when it was
    /// not. After an [ambiguous](Error::is_ambiguous) error, repeat with the
    /// attempt id: the balance is charged if, and only if, no reservation of
    /// the attempt exists.
    ///
    /// # Errors
    /// As [`reserve`](JobLedger::reserve) ([`Error::Ambiguous`] included),
    /// `effect`'s errors, and the conflict if `effect`'s operations still
    /// conflict after many attempts.
    pub fn reserve_with<E: From<Error>>(
        &self,
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
        effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E>,
    ) -> Result<Reserve, E> {
        self.insert(account, job_id, request, ReservationState::Charged, effect)
    }

    /// Reserves (`account`, `job_id`) for an external charge: a new reservation is
    /// [`ChargePending`](ReservationState::ChargePending) and listed by
    /// [`pending`](JobLedger::pending) until
    /// [`confirm_charge`](JobLedger::confirm_charge) or
    /// [`cancel_charge`](JobLedger::cancel_charge).
    ///
    /// A write that fails in a way that may hide its success is read back as
    /// by [`reserve`](JobLedger::reserve): a reservation that landed is
    /// [`Reserve::New`], so the caller makes the external charge it reserved.
    ///
    /// # Errors
    /// As [`reserve`](JobLedger::reserve) ([`Error::Ambiguous`] included).
    pub fn reserve_pending(
        &self,
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
    ) -> Result<Reserve> {
        self.insert(
            account,
            job_id,
            request,
            ReservationState::ChargePending,
            |_| Ok::<_, Error>(Vec::new()),
        )
    }

    /// Marks the external charge of `reservation` done. Returns the reservation
    /// as now stored, or `None` if it is no longer there (cancelled or refunded).
    /// Confirming twice is harmless.
    ///
    /// A write that fails in a way that may hide its success is read back
    /// until the [`resolve_within`](JobLedgerBuilder::resolve_within)
    /// deadline: a confirmation that landed returns the reservation as
    /// confirmed; one that did not is written again. After an
    /// [ambiguous](Error::is_ambiguous) error, confirm again.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; [`Error::Ambiguous`] if the store failed the write
    /// and stayed unreachable until the deadline; store errors: a transient
    /// one only when the write is known not to have landed.
    pub fn confirm_charge(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        drive::blocking(self.confirm_charge_driven(Blocking, reservation))
    }

    /// The body of [`confirm_charge`](JobLedger::confirm_charge), for both faces.
    pub(super) async fn confirm_charge_driven(
        &self,
        drive: impl Drive<S>,
        reservation: &Reservation,
    ) -> Result<Option<Reservation>> {
        let decide = |state| match state {
            ReservationState::ChargePending => Transition::To(ReservationState::Charged),
            _ => Transition::Keep,
        };
        let moved = self
            .transition(drive, "confirm charge", reservation, decide)
            .await?;
        Ok(match moved {
            Moved::Changed(now) | Moved::Unchanged(now) => Some(*now),
            Moved::Removed(_) | Moved::Gone => None,
        })
    }

    /// Removes a reservation whose external charge failed for good, so that the
    /// job id is new again. Returns whether it was removed: `false` if it is gone,
    /// was replaced, or its charge is no longer pending.
    ///
    /// A delete that fails in a way that may hide its success is read back
    /// until the [`resolve_within`](JobLedgerBuilder::resolve_within)
    /// deadline: the reservation gone counts as cancelled by this call
    /// (`true`), unchanged as not, and then it is deleted again. After an
    /// [ambiguous](Error::is_ambiguous) error, [`lookup`](JobLedger::lookup)
    /// tells: a reservation still pending was not cancelled.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; [`Error::Ambiguous`] if the store failed the delete
    /// and stayed unreachable until the deadline; store errors: a transient
    /// one only when the delete is known not to have landed.
    pub fn cancel_charge(&self, reservation: &Reservation) -> Result<bool> {
        drive::blocking(self.cancel_charge_driven(Blocking, reservation))
    }

    /// The body of [`cancel_charge`](JobLedger::cancel_charge), for both faces.
    pub(super) async fn cancel_charge_driven(
        &self,
        drive: impl Drive<S>,
        reservation: &Reservation,
    ) -> Result<bool> {
        let decide = |state| match state {
            ReservationState::ChargePending => Transition::Remove,
            _ => Transition::Keep,
        };
        let moved = self
            .transition(drive, "cancel charge", reservation, decide)
            .await?;
        Ok(matches!(moved, Moved::Removed(_)))
    }

    /// Refunds (`account`, `job_id`): removes its charged reservation and returns
    /// it, to exactly one caller however many refund at once; afterwards the job
    /// id counts as new. `None` if there is nothing to refund (never reserved,
    /// already refunded, purged, or a refund in flight). Works after the TTL has
    /// passed, as long as the reservation was neither purged nor replaced by a new
    /// reserve.
    ///
    /// It refunds the reservation stored when the call begins, never one made
    /// during the call (if that one is refunded meanwhile and the job id
    /// reserved again, this returns `None`). To refund a reservation you were
    /// shown earlier, and never a later one, use
    /// [`refund_reservation`](JobLedger::refund_reservation).
    ///
    /// A delete that fails in a way that may hide its success is read back
    /// until the [`resolve_within`](JobLedgerBuilder::resolve_within)
    /// deadline: the reservation gone (or replaced by a later one) counts as
    /// refunded by this call, unchanged as not, and then it is deleted again.
    /// A concurrent refund of the same reservation in that moment is counted
    /// as this call's too (see "A store failure that may hide success" above):
    /// where crediting twice matters, credit in the same batch with
    /// [`refund_with`](JobLedger::refund_with). So is, for a reservation whose
    /// TTL has passed, a new reserve of the job id that replaced it, or
    /// [`purge_expired`](JobLedger::purge_expired) removing it, in that
    /// moment: the delete cannot be told from them, and the call reports a
    /// refund that did not happen (with `refund_with`, `effect`'s operations
    /// did not land either). Refund a reservation before its TTL passes, or
    /// check the balance after such a refund. After an
    /// [ambiguous](Error::is_ambiguous) error, [`lookup`](JobLedger::lookup)
    /// tells: the reservation still there was not refunded.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the charge is still pending (confirm or
    /// cancel it first); [`Error::Corrupt`]; [`Error::Ambiguous`] if the store
    /// failed the delete and stayed unreachable until the deadline; store
    /// errors: a transient one only when the delete is known not to have
    /// landed.
    pub fn refund(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        self.refund_with(account, job_id, |_| Ok::<_, Error>(Vec::new()))
    }

    /// Refunds (`account`, `job_id`) and, in the same atomic batch, applies the
    /// operations `effect` returns (crediting the balance back, say). `effect` is
    /// called once per attempt, like in [`reserve_with`](JobLedger::reserve_with).
    /// Like [`refund`](JobLedger::refund), it refunds only the reservation stored
    /// when the call begins.
    ///
    /// A batch that fails in a way that may hide its success is read back as
    /// by [`refund`](JobLedger::refund). The delete and `effect`'s operations
    /// land together or not at all, so the balance changes at most once per
    /// removed reservation whatever the call reports: a batch that did not
    /// land is decided and written again (calling `effect` again). It changes
    /// once unless the reservation's TTL had passed and a new reserve or a
    /// purge removed it in the moment the call could not see (see
    /// [`refund`](JobLedger::refund)).
    ///
    /// # Errors
    /// As [`refund`](JobLedger::refund) ([`Error::Ambiguous`] included), and
    /// `effect`'s errors.
    pub fn refund_with<E: From<Error>>(
        &self,
        account: &str,
        job_id: &str,
        mut effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E>,
    ) -> Result<Option<Reservation>, E> {
        let effect = |reservation: &Reservation| ready(effect(reservation));
        drive::blocking(self.refund_with_driven(Blocking, account, job_id, effect))
    }

    /// The body of [`refund_with`](JobLedger::refund_with), for both faces.
    pub(super) async fn refund_with_driven<E, F>(
        &self,
        drive: impl Drive<S>,
        account: &str,
        job_id: &str,
        effect: impl FnMut(&Reservation) -> F,
    ) -> Result<Option<Reservation>, E>
    where
        E: From<Error>,
        F: Future<Output = Result<Vec<BatchOp>, E>>,
    {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        let Some(current) = self.refundable_now(drive, account, job_id).await? else {
            return Ok(None);
        };
        self.refund_of(drive, &current, effect, &deadline).await
    }

    /// Refunds `reservation` if it is still the stored one (same
    /// [`id`](Reservation::id)) and charged, as [`refund`](JobLedger::refund)
    /// does, but never a reservation made since `reservation` was read (a new
    /// reserve of the job id after the old one expired and was refunded, say):
    /// for callers that decide on what they were shown, such as an operator
    /// confirming a refund. Returns whether this call removed it; `false` if it
    /// is gone, was replaced, or has a side effect in flight.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::{JobLedger, ManualClock, MemStore};
    /// use jobsafe::ledger::ChargeRequest;
    ///
    /// let ledger = JobLedger::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    /// ledger.reserve("lic:abc", "job-1", &ChargeRequest::new())?;
    /// let shown = ledger.lookup("lic:abc", "job-1")?.expect("just reserved");
    /// assert!(ledger.refund_reservation(&shown)?);
    /// assert!(!ledger.refund_reservation(&shown)?, "refunded once");
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    ///
    /// A delete that fails in a way that may hide its success is read back as
    /// by [`refund`](JobLedger::refund).
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; [`Error::Ambiguous`] if the
    /// store failed the delete and stayed unreachable until the deadline;
    /// store errors: a transient one only when the delete is known not to
    /// have landed.
    pub fn refund_reservation(&self, reservation: &Reservation) -> Result<bool> {
        self.refund_reservation_with(reservation, |_| Ok::<_, Error>(Vec::new()))
            .map(|refunded| refunded.is_some())
    }

    /// Refunds `reservation`, as [`refund_reservation`](JobLedger::refund_reservation)
    /// does, and in the same atomic batch applies the operations `effect` returns
    /// (crediting the balance back, say). Returns the reservation removed, or
    /// `None` if it is gone, was replaced, or has a side effect in flight (then
    /// `effect`'s operations are not applied either).
    ///
    /// A batch that fails in a way that may hide its success is read back as
    /// by [`refund_with`](JobLedger::refund_with).
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; [`Error::Ambiguous`] if the
    /// store failed the batch and stayed unreachable until the deadline; store
    /// errors: a transient one only when the batch is known not to have
    /// landed; `effect`'s errors.
    pub fn refund_reservation_with<E: From<Error>>(
        &self,
        reservation: &Reservation,
        mut effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E>,
    ) -> Result<Option<Reservation>, E> {
        let effect = |reservation: &Reservation| ready(effect(reservation));
        drive::blocking(self.refund_reservation_with_driven(Blocking, reservation, effect))
    }

    /// The body of
    /// [`refund_reservation_with`](JobLedger::refund_reservation_with), for
    /// both faces.
    pub(super) async fn refund_reservation_with_driven<E, F>(
        &self,
        drive: impl Drive<S>,
        reservation: &Reservation,
        effect: impl FnMut(&Reservation) -> F,
    ) -> Result<Option<Reservation>, E>
    where
        E: From<Error>,
        F: Future<Output = Result<Vec<BatchOp>, E>>,
    {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        self.refund_of(drive, reservation, effect, &deadline).await
    }

    /// Refunds `reservation` if it is still the stored one and charged,
    /// applying `effect`'s operations in the same batch.
    async fn refund_of<E, F>(
        &self,
        drive: impl Drive<S>,
        reservation: &Reservation,
        effect: impl FnMut(&Reservation) -> F,
        deadline: &Deadline,
    ) -> Result<Option<Reservation>, E>
    where
        E: From<Error>,
        F: Future<Output = Result<Vec<BatchOp>, E>>,
    {
        let moved = self
            .transition_with(
                drive,
                "refund",
                reservation,
                |state| match state {
                    ReservationState::Charged => Transition::Remove,
                    _ => Transition::Keep,
                },
                effect,
                deadline,
            )
            .await?;
        Ok(match moved {
            Moved::Removed(removed) => Some(*removed),
            Moved::Changed(_) | Moved::Unchanged(_) | Moved::Gone => None,
        })
    }

    /// Starts an external refund of (`account`, `job_id`): marks its charged
    /// reservation [`RefundPending`](ReservationState::RefundPending) and returns
    /// it to exactly one caller. Call the external refund with the reservation's
    /// id as idempotency key, then [`complete_refund`](JobLedger::complete_refund)
    /// (or [`abandon_refund`](JobLedger::abandon_refund) if it will not happen).
    /// `None` if there is nothing to refund or a refund is already in flight (see
    /// [`pending`](JobLedger::pending)). Like [`refund`](JobLedger::refund), it
    /// acts only on the reservation stored when the call begins.
    ///
    /// A write that fails in a way that may hide its success is read back
    /// until the [`resolve_within`](JobLedgerBuilder::resolve_within)
    /// deadline: a start that landed returns the reservation as
    /// [`RefundPending`](ReservationState::RefundPending), to this caller
    /// only; one that did not is written again. After an
    /// [ambiguous](Error::is_ambiguous) error, a start that landed leaves the
    /// reservation in [`pending`](JobLedger::pending), where it is found and
    /// completed (or abandoned) as after a crash.
    ///
    /// # Errors
    /// As [`refund`](JobLedger::refund) ([`Error::Ambiguous`] included).
    pub fn begin_refund(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        drive::blocking(self.begin_refund_driven(Blocking, account, job_id))
    }

    /// The body of [`begin_refund`](JobLedger::begin_refund), for both faces.
    pub(super) async fn begin_refund_driven(
        &self,
        drive: impl Drive<S>,
        account: &str,
        job_id: &str,
    ) -> Result<Option<Reservation>> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        let Some(current) = self.refundable_now(drive, account, job_id).await? else {
            return Ok(None);
        };
        self.begin_refund_within(drive, &current, &deadline).await
    }

    /// Starts an external refund of `reservation`, as
    /// [`begin_refund`](JobLedger::begin_refund) does, if it is still the stored
    /// one (same [`id`](Reservation::id)) and charged: never of a reservation made
    /// since it was read. Returns it marked
    /// [`RefundPending`](ReservationState::RefundPending), or `None` if it is
    /// gone, was replaced, or has a side effect in flight.
    ///
    /// A write that fails in a way that may hide its success is read back as
    /// by [`begin_refund`](JobLedger::begin_refund).
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; [`Error::Ambiguous`] if the
    /// store failed the write and stayed unreachable until the deadline; store
    /// errors: a transient one only when the write is known not to have
    /// landed.
    pub fn begin_refund_of(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        drive::blocking(self.begin_refund_of_driven(Blocking, reservation))
    }

    /// The body of [`begin_refund_of`](JobLedger::begin_refund_of), for both
    /// faces.
    pub(super) async fn begin_refund_of_driven(
        &self,
        drive: impl Drive<S>,
        reservation: &Reservation,
    ) -> Result<Option<Reservation>> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        self.begin_refund_within(drive, reservation, &deadline)
            .await
    }

    /// Starts an external refund of `reservation`, resolving a write that may
    /// have landed by `deadline`.
    async fn begin_refund_within(
        &self,
        drive: impl Drive<S>,
        reservation: &Reservation,
        deadline: &Deadline,
    ) -> Result<Option<Reservation>> {
        let decide = |state| match state {
            ReservationState::Charged => Transition::To(ReservationState::RefundPending),
            _ => Transition::Keep,
        };
        let moved = self
            .transition_with(drive, "begin refund", reservation, decide, no_ops, deadline)
            .await?;
        Ok(match moved {
            Moved::Changed(now) => Some(*now),
            Moved::Unchanged(_) | Moved::Removed(_) | Moved::Gone => None,
        })
    }

    /// Finishes an external refund started by
    /// [`begin_refund`](JobLedger::begin_refund): removes the reservation, so that
    /// the job id counts as new. Returns whether it was removed (`false`: already
    /// completed, abandoned, or not this reservation's refund).
    ///
    /// A delete that fails in a way that may hide its success is read back
    /// until the [`resolve_within`](JobLedgerBuilder::resolve_within)
    /// deadline: the reservation gone (or replaced by a later one) counts as
    /// completed by this call (`true`), unchanged as not, and then it is
    /// deleted again. After an [ambiguous](Error::is_ambiguous) error, complete
    /// again: `false` then means it is done.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; [`Error::Ambiguous`] if the store failed the delete
    /// and stayed unreachable until the deadline; store errors: a transient
    /// one only when the delete is known not to have landed.
    pub fn complete_refund(&self, reservation: &Reservation) -> Result<bool> {
        drive::blocking(self.complete_refund_driven(Blocking, reservation))
    }

    /// The body of [`complete_refund`](JobLedger::complete_refund), for both
    /// faces.
    pub(super) async fn complete_refund_driven(
        &self,
        drive: impl Drive<S>,
        reservation: &Reservation,
    ) -> Result<bool> {
        let decide = |state| match state {
            ReservationState::RefundPending => Transition::Remove,
            _ => Transition::Keep,
        };
        let moved = self
            .transition(drive, "complete refund", reservation, decide)
            .await?;
        Ok(matches!(moved, Moved::Removed(_)))
    }

    /// Gives up an external refund started by
    /// [`begin_refund`](JobLedger::begin_refund) that will not happen (the
    /// payment provider refused it, an operator decided against it): moves the
    /// reservation back to [`Charged`](ReservationState::Charged), so that it
    /// leaves [`pending`](JobLedger::pending), retries of the job id are free
    /// again, and it can be refunded later. Returns it as charged, or `None` if it
    /// is gone, was replaced, or has no refund in flight.
    ///
    /// Call it only once the external refund is known not to have happened: a
    /// refund that did happen must be completed instead.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobsafe::ledger::{ChargeRequest, ReservationState};
    /// use jobsafe::{JobLedger, ManualClock, MemStore};
    ///
    /// let ledger = JobLedger::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    /// ledger.reserve("lic:abc", "job-1", &ChargeRequest::new())?;
    /// let refunding = ledger.begin_refund("lic:abc", "job-1")?.expect("charged");
    /// // ... the payment provider refuses the refund for good ...
    /// let charged = ledger.abandon_refund(&refunding)?.expect("still pending");
    /// assert_eq!(charged.state, ReservationState::Charged);
    /// assert!(ledger.pending()?.reservations.is_empty());
    /// # Ok::<(), jobsafe::Error>(())
    /// ```
    ///
    /// A write that fails in a way that may hide its success is read back
    /// until the [`resolve_within`](JobLedgerBuilder::resolve_within)
    /// deadline: one that landed returns the reservation as charged; one that
    /// did not is written again. After an [ambiguous](Error::is_ambiguous)
    /// error, [`lookup`](JobLedger::lookup) tells: a reservation still
    /// [`RefundPending`](ReservationState::RefundPending) was not moved.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; [`Error::Ambiguous`] if the
    /// store failed the write and stayed unreachable until the deadline; store
    /// errors: a transient one only when the write is known not to have
    /// landed.
    pub fn abandon_refund(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        drive::blocking(self.abandon_refund_driven(Blocking, reservation))
    }

    /// The body of [`abandon_refund`](JobLedger::abandon_refund), for both
    /// faces.
    pub(super) async fn abandon_refund_driven(
        &self,
        drive: impl Drive<S>,
        reservation: &Reservation,
    ) -> Result<Option<Reservation>> {
        let decide = |state| match state {
            ReservationState::RefundPending => Transition::To(ReservationState::Charged),
            _ => Transition::Keep,
        };
        let moved = self
            .transition(drive, "abandon refund", reservation, decide)
            .await?;
        Ok(match moved {
            Moved::Changed(now) => Some(*now),
            Moved::Unchanged(_) | Moved::Removed(_) | Moved::Gone => None,
        })
    }

    /// The reservation of (`account`, `job_id`) if it can be refunded now: `None`
    /// if there is none or its refund is under way.
    async fn refundable_now(
        &self,
        drive: impl Drive<S>,
        account: &str,
        job_id: &str,
    ) -> Result<Option<Reservation>> {
        let key = self.key(account, job_id)?;
        let Some((stored, version)) = self.read_driven(drive, &key).await? else {
            return Ok(None);
        };
        if !refundable(&key, stored.state)? {
            return Ok(None);
        }
        Ok(Some(stored.into_reservation(account, job_id, version)))
    }

    /// The reservation of (`account`, `job_id`) as stored, expired or not
    /// (see [`Reservation::is_expired_at`]). Changes nothing.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; store errors.
    pub fn lookup(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        drive::blocking(self.lookup_driven(Blocking, account, job_id))
    }

    /// The body of [`lookup`](JobLedger::lookup), for both faces.
    pub(super) async fn lookup_driven(
        &self,
        drive: impl Drive<S>,
        account: &str,
        job_id: &str,
    ) -> Result<Option<Reservation>> {
        let key = self.key(account, job_id)?;
        let found = self.read_driven(drive, &key).await?;
        Ok(found.map(|(stored, version)| stored.into_reservation(account, job_id, version)))
    }

    /// Every reservation (of `account`, if given), for administration. Changes
    /// nothing.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store errors. Unreadable records are listed apart.
    pub fn list(&self, account: Option<&str>) -> Result<LedgerList> {
        let mut list = LedgerList::default();
        self.for_each_reservation(account, |read| {
            match read {
                Ok(reservation) => list.reservations.push(reservation),
                Err(unreadable) => list.unreadable.push(unreadable),
            }
            Ok(())
        })?;
        Ok(list)
    }

    /// Calls `f` with each reservation (of `account`, if given) in key order,
    /// read as one [`scan`](Store::scan) reaches it, or with the key and error
    /// of a record that cannot be read; one refunded since the scan saw its key
    /// is skipped. Holds one page of keys: `f` may change or delete the
    /// reservation it is given. Stops at the first error of `f` or of the scan.
    pub(crate) fn for_each_reservation(
        &self,
        account: Option<&str>,
        mut f: impl FnMut(std::result::Result<Reservation, (Key, Error)>) -> Result<()>,
    ) -> Result<()> {
        let mut segments = self.namespace.segments().to_vec();
        segments.extend(account.map(str::to_owned));
        let prefix = Prefix::new(segments)?;
        let depth = self.namespace.segments().len();
        for page in self.store.scan(&prefix, SCAN_PAGE) {
            for key in page? {
                let [account, job_id] = key.segments().get(depth..).unwrap_or_default() else {
                    let reason = "not a ledger key (account, job id)".to_owned();
                    f(Err((
                        key.clone(),
                        Error::Corrupt {
                            key,
                            path: None,
                            reason,
                        },
                    )))?;
                    continue;
                };
                match self.read(&key) {
                    Ok(Some((stored, version))) => {
                        f(Ok(stored.to_reservation(account, job_id, version)))?;
                    }
                    Ok(None) => {} // refunded since the scan saw it
                    Err(e) => f(Err((key, e)))?,
                }
            }
        }
        Ok(())
    }

    /// The reservations whose charge or refund was started and not confirmed:
    /// after a restart, retry each (with the reservation's id as idempotency key)
    /// and confirm or complete it.
    ///
    /// # Errors
    /// As [`list`](JobLedger::list).
    pub fn pending(&self) -> Result<LedgerList> {
        let mut list = self.list(None)?;
        list.reservations.retain(|r| r.state.is_pending());
        Ok(list)
    }

    /// Removes the reservations that expired at least `retain` ago and have no
    /// side effect pending, returning how many. A purged reservation can no
    /// longer be refunded: keep `retain` longer than any refund may come late.
    ///
    /// # Errors
    /// As [`list`](JobLedger::list). A purge stopped by an error may have
    /// removed some reservations, the one it was deleting among them (its
    /// reply may be what was lost): run it again, it removes only what is
    /// left.
    pub fn purge_expired(&self, retain: Duration) -> Result<usize> {
        let now = self.clock.now_ms();
        let retain_ms = millis(retain);
        let mut purged = 0;
        // Deleting as the scan goes: no list of every reservation is held.
        self.for_each_reservation(None, |read| {
            let Ok(reservation) = read else { return Ok(()) };
            if reservation.state.is_pending()
                || now < reservation.expires_ms.saturating_add(retain_ms)
            {
                return Ok(());
            }
            let key = self.key(&reservation.account, &reservation.job_id)?;
            match self
                .store
                .delete(&key, Expect::Version(reservation.version))
            {
                Ok(_) => purged += 1,
                // Refunded, re-reserved or changed since it was read.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e),
            }
            Ok(())
        })?;
        Ok(purged)
    }

    fn insert<E: From<Error>>(
        &self,
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
        state: ReservationState,
        mut effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E>,
    ) -> Result<Reserve, E> {
        let insert = Insert {
            account,
            job_id,
            request,
            state,
        };
        drive::blocking(
            self.insert_driven(Blocking, insert, |reservation: &Reservation| {
                ready(effect(reservation))
            }),
        )
    }

    /// The body of every reserve, for both faces (see [`drive`]): reads what
    /// is stored, decides, and writes the reservation with `effect`'s
    /// operations, retrying lost races and reading back a write whose
    /// outcome was lost.
    pub(crate) async fn insert_driven<
        E: From<Error>,
        F: Future<Output = Result<Vec<BatchOp>, E>>,
    >(
        &self,
        drive: impl Drive<S>,
        insert: Insert<'_>,
        mut effect: impl FnMut(&Reservation) -> F,
    ) -> Result<Reserve, E> {
        let Insert {
            account,
            job_id,
            request,
            state,
        } = insert;
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        let key = self.key(account, job_id)?;
        request.check(&key)?;
        // The caller's attempt, or one drawn when this call first writes:
        // until then no stored reservation can be this call's own, and a
        // duplicate, the usual retry, draws none (a random id costs a
        // system call).
        let mut attempt = request.attempt.clone();
        let mut late = LateWrite::default();
        // How the call ends on `error`: ambiguous while a write of its own
        // may still land.
        let end = |late: &LateWrite, attempt: Option<&AttemptId>, error: Error| match attempt {
            Some(attempt) => late.end("reserve", &key, attempt, error),
            None => error,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let now = self.clock.now_ms();
            let ours = attempt.as_ref();
            let found = self.read_driven(drive, &key).await;
            let found =
                found.and_then(|found| find(found, &key, account, job_id, request, ours, now));
            let found = found.map_err(|e| end(&late, ours, e))?;
            if let Found::Live(existing) = &found {
                // Another's, but a failed write of this call made on
                // absence lands if it is ever deleted.
                late.stored(Expect::Version(existing.version));
                if let Some(ours) = ours
                    && let Some(open) = late.nothing_to_write("reserve", &key, ours)
                {
                    return Err(open.into());
                }
            }
            let expect = match found {
                // This call, repeated: its reserve had landed.
                Found::Own(own) => return Ok(Reserve::New(*own)),
                Found::Live(existing) if existing.state.is_pending() => {
                    return Ok(Reserve::InFlight(*existing));
                }
                Found::Live(existing) => return Ok(Reserve::Existing(*existing)),
                Found::Vacant(expect) => expect,
            };
            late.stored(expect);
            let attempt = &*attempt.get_or_insert_with(AttemptId::new);
            let stored = StoredReservation::new(request, attempt, now, self.ttl_ms, state);
            let bytes = codec::encode(&key, &stored).map_err(|e| end(&late, Some(attempt), e))?;
            let mut reservation = stored.to_reservation(account, job_id, Version::new(0));
            // The caller's error, unless a failed write of this call (with
            // the operations of an earlier try) may still land.
            let ops = match effect(&reservation).await {
                Ok(ops) => ops,
                Err(e) => match late.nothing_to_write("reserve", &key, attempt) {
                    Some(open) => return Err(open.into()),
                    None => return Err(e),
                },
            };
            let written = if ops.is_empty() {
                drive.put(&self.store, &key, bytes, expect).await
            } else {
                let batch = with_ops(Batch::new().put(&key, bytes, expect), ops);
                drive
                    .apply(&self.store, batch)
                    .await
                    .map(|applied| match applied.first() {
                        Some(Applied::Put(version)) => *version,
                        _ => Version::new(0),
                    })
            };
            match written {
                Ok(version) => {
                    reservation.version = version;
                    report!(
                        debug,
                        account = %crate::trace::private(account),
                        job_id = %crate::trace::private(job_id),
                        attempt = %crate::trace::private(attempt),
                        "reservation made"
                    );
                    return Ok(Reserve::New(reservation));
                }
                // Lost a race (on the reservation or the caller's keys): decide
                // again on what is there now.
                Err(e) if e.is_conflict() && tries < MAX_ATTEMPTS => continue,
                Err(e) if may_have_landed(&e) => {
                    late.failed(&e, expect);
                    let reread = deadline.reread_driven(drive, || self.read_driven(drive, &key));
                    match reread.await {
                        // Ours, whatever happened to the reply: the caller's
                        // operations landed with it, in the same batch.
                        Ok(Some((stored, version))) if stored.was_made_by(attempt) => {
                            let reservation = stored.to_reservation(account, job_id, version);
                            report!(
                                info,
                                account = %crate::trace::private(account),
                                job_id = %crate::trace::private(job_id),
                                attempt = %crate::trace::private(attempt),
                                error = %crate::trace::error(&e),
                                "reservation made; its write failed and was read back as landed"
                            );
                            return Ok(Reserve::New(reservation));
                        }
                        // Unchanged: ours did not land, nor did its operations.
                        // Deciding and writing again fences it off, should it
                        // still arrive.
                        Ok(found) if is_unchanged(found.as_ref(), expect) => {
                            if !deadline.may_write_again() {
                                return Err(end(&late, Some(attempt), e).into());
                            }
                        }
                        // Changed by another: decide again on what is there.
                        Ok(_) => {}
                        Err(reread) => {
                            let ambiguous = resolve::ambiguous("reserve", &key, attempt, e, reread);
                            return Err(ambiguous.into());
                        }
                    }
                }
                Err(e) => return Err(end(&late, Some(attempt), e).into()),
            }
        }
    }

    /// Moves `reservation` (if it is still the stored one, by id) as `decide`
    /// says, retrying lost races; `operation` names the call in an ambiguous
    /// error.
    async fn transition(
        &self,
        drive: impl Drive<S>,
        operation: &'static str,
        reservation: &Reservation,
        decide: impl Fn(ReservationState) -> Transition,
    ) -> Result<Moved> {
        let deadline = Deadline::starting_now(&self.clock, self.resolve_within);
        self.transition_with(drive, operation, reservation, decide, no_ops, &deadline)
            .await
    }

    /// [`transition`](JobLedger::transition), applying the operations `effect`
    /// returns in the same batch whenever the reservation changes. A conflict on
    /// the caller's keys is retried like a lost race, at most `MAX_ATTEMPTS`
    /// times in all.
    ///
    /// A write that fails in a way that may hide its success is read back
    /// until `deadline`. A put names itself in the record (`write`), so the
    /// record tells whether it landed. A delete leaves nothing to name itself
    /// in: the reservation gone counts as removed by this call, and unchanged
    /// as not removed; a concurrent removal in that moment counts as this
    /// call's too (its operations, if any, landed with the other call's
    /// delete, so the caller's keys changed once).
    async fn transition_with<E, F>(
        &self,
        drive: impl Drive<S>,
        operation: &'static str,
        reservation: &Reservation,
        decide: impl Fn(ReservationState) -> Transition,
        mut effect: impl FnMut(&Reservation) -> F,
        deadline: &Deadline,
    ) -> Result<Moved, E>
    where
        E: From<Error>,
        F: Future<Output = Result<Vec<BatchOp>, E>>,
    {
        let (account, job_id) = (&reservation.account, &reservation.job_id);
        let key = self.key(account, job_id)?;
        let write = AttemptId::new();
        let mut late = LateWrite::default();
        let end = |late: &LateWrite, error: Error| late.end(operation, &key, &write, error);
        // A delete of this call that may still land, and what it removes:
        // if the reservation is gone, counted as removed by this call, as
        // after a re-read below.
        let mut removing: Option<Reservation> = None;
        let gone = |removing: Option<Reservation>| match removing {
            Some(removed) => Moved::Removed(Box::new(removed)),
            None => Moved::Gone,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let found = self.read_driven(drive, &key).await;
            let Some((mut stored, version)) = found.map_err(|e| end(&late, e))? else {
                return Ok(gone(removing));
            };
            if stored.id != reservation.id {
                // Replaced by a later reservation.
                return Ok(gone(removing));
            }
            let expect = Expect::Version(version);
            late.stored(expect);
            if !late.is_open() {
                removing = None;
            }
            let current = stored.to_reservation(account, job_id, version);
            let new_state = match decide(stored.state) {
                // Nothing to do now, but a write decided before may still
                // land on this very version.
                Transition::Keep => {
                    return match late.nothing_to_write(operation, &key, &write) {
                        Some(open) => Err(open.into()),
                        None => Ok(Moved::Unchanged(Box::new(current))),
                    };
                }
                Transition::Remove => None,
                Transition::To(state) => Some(state),
            };
            // The caller's error, unless a failed write of this call (with
            // the operations of an earlier try) may still land.
            let ops = match effect(&current).await {
                Ok(ops) => ops,
                Err(e) => match late.nothing_to_write(operation, &key, &write) {
                    Some(open) => return Err(open.into()),
                    None => return Err(e),
                },
            };
            let written = match new_state {
                Some(state) => {
                    stored.state = state;
                    stored.write = Some(write.clone());
                    let bytes = codec::encode(&key, &stored).map_err(|e| end(&late, e))?;
                    if ops.is_empty() {
                        drive.put(&self.store, &key, bytes, expect).await.map(Some)
                    } else {
                        let batch = with_ops(Batch::new().put(&key, bytes, expect), ops);
                        drive
                            .apply(&self.store, batch)
                            .await
                            .map(|applied| match applied.first() {
                                Some(Applied::Put(version)) => Some(*version),
                                _ => Some(Version::new(0)),
                            })
                    }
                }
                None if ops.is_empty() => {
                    drive.delete(&self.store, &key, expect).await.map(|_| None)
                }
                None => {
                    let batch = with_ops(Batch::new().delete(&key, expect), ops);
                    drive.apply(&self.store, batch).await.map(|_| None)
                }
            };
            match written {
                Ok(Some(version)) => {
                    report!(
                        debug,
                        account = %crate::trace::private(account),
                        job_id = %crate::trace::private(job_id),
                        operation,
                        state = ?stored.state,
                        "reservation moved"
                    );
                    return Ok(Moved::Changed(Box::new(
                        stored.to_reservation(account, job_id, version),
                    )));
                }
                Ok(None) => {
                    report!(
                        debug,
                        account = %crate::trace::private(account),
                        job_id = %crate::trace::private(job_id),
                        operation,
                        "reservation removed"
                    );
                    return Ok(Moved::Removed(Box::new(current)));
                }
                Err(e) if e.is_conflict() && tries < MAX_ATTEMPTS => continue,
                Err(e) if may_have_landed(&e) => {
                    late.failed(&e, expect);
                    if new_state.is_none() && late.is_open() {
                        removing = Some(current.clone());
                    }
                    let reread = deadline.reread_driven(drive, || self.read_driven(drive, &key));
                    match reread.await {
                        // Ours, whatever happened to the reply.
                        Ok(Some((stored, version)))
                            if new_state.is_some() && stored.was_written_by(&write) =>
                        {
                            let now = stored.to_reservation(account, job_id, version);
                            return Ok(Moved::Changed(Box::new(now)));
                        }
                        // Gone after a delete (or replaced by a later
                        // reservation, which could be made only once it was
                        // gone): counted as removed by this call.
                        Ok(found)
                            if new_state.is_none()
                                && found.as_ref().is_none_or(|(s, _)| s.id != reservation.id) =>
                        {
                            return Ok(Moved::Removed(Box::new(current)));
                        }
                        // Unchanged: ours did not land. Deciding and writing again
                        // fences it off, should it still arrive.
                        Ok(found) if is_unchanged(found.as_ref(), expect) => {
                            if !deadline.may_write_again() {
                                return Err(end(&late, e).into());
                            }
                        }
                        // Changed by another: decide again on what is there.
                        Ok(_) => {}
                        Err(reread) => {
                            let ambiguous = resolve::ambiguous(operation, &key, &write, e, reread);
                            return Err(ambiguous.into());
                        }
                    }
                }
                Err(e) => return Err(end(&late, e).into()),
            }
        }
    }

    fn read(&self, key: &Key) -> Result<Option<(StoredReservation, Version)>> {
        decode(key, self.store.get(key)?)
    }

    /// [`read`](JobLedger::read), through `drive`.
    async fn read_driven(
        &self,
        drive: impl Drive<S>,
        key: &Key,
    ) -> Result<Option<(StoredReservation, Version)>> {
        decode(key, drive.get(&self.store, key).await?)
    }
}

/// The reservation in `entry`, read at `key`.
fn decode(key: &Key, entry: Option<Entry>) -> Result<Option<(StoredReservation, Version)>> {
    match entry {
        None => Ok(None),
        Some(entry) => {
            let stored: StoredReservation = codec::decode(key, &entry.value)?;
            Ok(Some((stored.lift_legacy_fields(), entry.version)))
        }
    }
}

/// What a reserve of (`account`, `job_id`) by `attempt` finds in `found`,
/// the record at `key` read `now`.
fn find(
    found: Option<(StoredReservation, Version)>,
    key: &Key,
    account: &str,
    job_id: &str,
    request: &ChargeRequest,
    attempt: Option<&AttemptId>,
    now: u64,
) -> Result<Found> {
    let Some((stored, version)) = found else {
        return Ok(Found::Vacant(Expect::Absent));
    };
    // The reservation this attempt made stays its own, expired or not:
    // a repeated call never charges again.
    let own = attempt.is_some_and(|attempt| stored.was_made_by(attempt));
    let existing = stored.into_reservation(account, job_id, version);
    if !own && existing.is_expired_at(now) {
        return Ok(Found::Vacant(Expect::Version(version)));
    }
    if let (Some(stored_fp), Some(requested)) = (&existing.fingerprint, &request.fingerprint)
        && stored_fp != requested
    {
        return Err(Error::FingerprintMismatch {
            key: key.clone(),
            requested: requested.clone(),
            stored: Box::new(existing),
        });
    }
    if own {
        return Ok(Found::Own(Box::new(existing)));
    }
    Ok(Found::Live(Box::new(existing)))
}

/// What a reserve asks for, beyond its side effects.
pub(crate) struct Insert<'a> {
    pub(crate) account: &'a str,
    pub(crate) job_id: &'a str,
    pub(crate) request: &'a ChargeRequest,
    /// The state of a new reservation.
    pub(crate) state: ReservationState,
}

/// What [`JobLedger::transition`] does with a reservation in a given state.
enum Transition {
    Keep,
    Remove,
    To(ReservationState),
}

/// Where [`JobLedger::transition`] left a reservation.
enum Moved {
    /// It is not (or no longer) the stored reservation.
    Gone,
    /// This call removed it (as it was).
    Removed(Box<Reservation>),
    /// This call changed it to this.
    Changed(Box<Reservation>),
    /// It is stored as this, unchanged.
    Unchanged(Box<Reservation>),
}

/// Whether the record read back after a failed write (`found`) is the one the
/// write expected (`expect`), so that the write did not land.
fn is_unchanged(found: Option<&(StoredReservation, Version)>, expect: Expect) -> bool {
    match (found, expect) {
        (None, Expect::Absent) => true,
        (Some((_, version)), Expect::Version(expected)) => *version == expected,
        _ => false,
    }
}

/// The side effect of a call that has none.
pub(crate) fn no_ops(_: &Reservation) -> std::future::Ready<Result<Vec<BatchOp>>> {
    ready(Ok(Vec::new()))
}

/// `batch` followed by the caller's `ops`.
fn with_ops(mut batch: Batch, ops: Vec<BatchOp>) -> Batch {
    for op in ops {
        batch.push(op);
    }
    batch
}

/// Whether a reservation in `state` can be refunded now: yes if charged, no if a
/// refund is already under way; an unconfirmed charge is an error, since nobody
/// knows yet whether it happened.
fn refundable(key: &Key, state: ReservationState) -> Result<bool> {
    match state {
        ReservationState::Charged => Ok(true),
        ReservationState::RefundPending => Ok(false),
        ReservationState::ChargePending => Err(Error::InvalidArgument(format!(
            "cannot refund {key}: its charge is still pending; confirm or cancel it first"
        ))),
    }
}
