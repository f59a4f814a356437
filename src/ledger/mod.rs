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

mod reservation;

use std::sync::Arc;
use std::time::Duration;

pub use reservation::{ChargeRequest, Reservation, ReservationState};

use self::reservation::StoredReservation;
use crate::attempt::AttemptId;
use crate::clock::{SharedClock, millis};
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::record as codec;
use crate::store::{Applied, Batch, BatchOp, Expect, SCAN_PAGE, Store, Version};

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
pub struct JobLedger<S> {
    store: Arc<S>,
    clock: SharedClock,
    namespace: Arc<Prefix>,
    ttl_ms: u64,
}

impl<S> Clone for JobLedger<S> {
    fn clone(&self) -> Self {
        JobLedger {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            namespace: Arc::clone(&self.namespace),
            ttl_ms: self.ttl_ms,
        }
    }
}

impl<S> std::fmt::Debug for JobLedger<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLedger")
            .field("namespace", &self.namespace)
            .field("ttl_ms", &self.ttl_ms)
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
}

impl<S: Store> JobLedgerBuilder<S> {
    /// How long a reservation makes retries free. A zero TTL makes every
    /// reserve new: use it only to turn deduplication off. Default:
    /// [`JobLedger::DEFAULT_TTL`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Keeps the reservations under `namespace`. Default: `ledger`.
    pub fn namespace(mut self, namespace: Prefix) -> Self {
        self.namespace = namespace;
        self
    }

    /// The ledger.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if the namespace leaves no room for a reservation's
    /// key (account and job id).
    pub fn build(self) -> Result<JobLedger<S>> {
        self.namespace.check_room(2, "JobLedger")?;
        Ok(JobLedger {
            store: Arc::new(self.store),
            clock: self.clock,
            namespace: Arc::new(self.namespace),
            ttl_ms: millis(self.ttl),
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
        }
    }

    /// Options for a ledger kept in `store`, timed by `clock`.
    pub fn builder(store: S, clock: SharedClock) -> JobLedgerBuilder<S> {
        JobLedgerBuilder {
            store,
            clock,
            namespace: default_namespace(),
            ttl: JobLedger::DEFAULT_TTL,
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
    /// # Errors
    /// [`Error::FingerprintMismatch`] carrying the stored reservation if the
    /// request's fingerprint differs from a live reservation's;
    /// [`Error::InvalidKey`]; [`Error::TooLarge`] naming the field for a
    /// fingerprint or metadata over [`ChargeRequest::MAX_FINGERPRINT_LEN`] or
    /// [`ChargeRequest::MAX_METADATA_LEN`], with nothing written or read;
    /// [`Error::Corrupt`] naming the key if the stored
    /// reservation cannot be read (never taken for "no reservation"); store
    /// errors.
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
    /// # Errors
    /// As [`reserve`](JobLedger::reserve), `effect`'s errors, and the conflict
    /// if `effect`'s operations still conflict after many attempts.
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
    /// # Errors
    /// As [`reserve`](JobLedger::reserve).
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
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub fn confirm_charge(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        let moved = self.transition(reservation, |state| match state {
            ReservationState::ChargePending => Transition::To(ReservationState::Charged),
            _ => Transition::Keep,
        })?;
        Ok(match moved {
            Moved::Changed(now) | Moved::Unchanged(now) => Some(*now),
            Moved::Removed(_) | Moved::Gone => None,
        })
    }

    /// Removes a reservation whose external charge failed for good, so that the
    /// job id is new again. Returns whether it was removed: `false` if it is gone,
    /// was replaced, or its charge is no longer pending.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub fn cancel_charge(&self, reservation: &Reservation) -> Result<bool> {
        let moved = self.transition(reservation, |state| match state {
            ReservationState::ChargePending => Transition::Remove,
            _ => Transition::Keep,
        })?;
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
    /// # Errors
    /// [`Error::InvalidArgument`] if the charge is still pending (confirm or
    /// cancel it first); [`Error::Corrupt`]; store errors.
    pub fn refund(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        self.refund_with(account, job_id, |_| Ok::<_, Error>(Vec::new()))
    }

    /// Refunds (`account`, `job_id`) and, in the same atomic batch, applies the
    /// operations `effect` returns (crediting the balance back, say). `effect` is
    /// called once per attempt, like in [`reserve_with`](JobLedger::reserve_with).
    /// Like [`refund`](JobLedger::refund), it refunds only the reservation stored
    /// when the call begins.
    ///
    /// # Errors
    /// As [`refund`](JobLedger::refund), and `effect`'s errors.
    pub fn refund_with<E: From<Error>>(
        &self,
        account: &str,
        job_id: &str,
        effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E>,
    ) -> Result<Option<Reservation>, E> {
        let Some(current) = self.refundable_now(account, job_id)? else {
            return Ok(None);
        };
        self.refund_reservation_with(&current, effect)
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
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; store errors.
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
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; store errors; `effect`'s errors.
    pub fn refund_reservation_with<E: From<Error>>(
        &self,
        reservation: &Reservation,
        effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E>,
    ) -> Result<Option<Reservation>, E> {
        let moved = self.transition_with(
            reservation,
            |state| match state {
                ReservationState::Charged => Transition::Remove,
                _ => Transition::Keep,
            },
            effect,
        )?;
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
    /// # Errors
    /// As [`refund`](JobLedger::refund).
    pub fn begin_refund(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        let Some(current) = self.refundable_now(account, job_id)? else {
            return Ok(None);
        };
        self.begin_refund_of(&current)
    }

    /// Starts an external refund of `reservation`, as
    /// [`begin_refund`](JobLedger::begin_refund) does, if it is still the stored
    /// one (same [`id`](Reservation::id)) and charged: never of a reservation made
    /// since it was read. Returns it marked
    /// [`RefundPending`](ReservationState::RefundPending), or `None` if it is
    /// gone, was replaced, or has a side effect in flight.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; store errors.
    pub fn begin_refund_of(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        let moved = self.transition(reservation, |state| match state {
            ReservationState::Charged => Transition::To(ReservationState::RefundPending),
            _ => Transition::Keep,
        })?;
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
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub fn complete_refund(&self, reservation: &Reservation) -> Result<bool> {
        let moved = self.transition(reservation, |state| match state {
            ReservationState::RefundPending => Transition::Remove,
            _ => Transition::Keep,
        })?;
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
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; store errors.
    pub fn abandon_refund(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        let moved = self.transition(reservation, |state| match state {
            ReservationState::RefundPending => Transition::To(ReservationState::Charged),
            _ => Transition::Keep,
        })?;
        Ok(match moved {
            Moved::Changed(now) => Some(*now),
            Moved::Unchanged(_) | Moved::Removed(_) | Moved::Gone => None,
        })
    }

    /// The reservation of (`account`, `job_id`) if it can be refunded now: `None`
    /// if there is none or its refund is under way.
    fn refundable_now(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        let key = self.key(account, job_id)?;
        let Some((stored, version)) = self.read(&key)? else {
            return Ok(None);
        };
        if !refundable(&key, stored.state)? {
            return Ok(None);
        }
        Ok(Some(stored.to_reservation(account, job_id, version)))
    }

    /// The reservation of (`account`, `job_id`) as stored, expired or not
    /// (see [`Reservation::is_expired_at`]). Changes nothing.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Corrupt`]; store errors.
    pub fn lookup(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        let key = self.key(account, job_id)?;
        Ok(self
            .read(&key)?
            .map(|(stored, version)| stored.to_reservation(account, job_id, version)))
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
    /// As [`list`](JobLedger::list).
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
        let key = self.key(account, job_id)?;
        request.check(&key)?;
        let attempt_id = request.attempt.clone().unwrap_or_default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = self.clock.now_ms();
            let expect = match self.find(&key, account, job_id, request, &attempt_id, now)? {
                // This call, repeated: its reserve had landed.
                Found::Own(own) => return Ok(Reserve::New(*own)),
                Found::Live(existing) if existing.state.is_pending() => {
                    return Ok(Reserve::InFlight(*existing));
                }
                Found::Live(existing) => return Ok(Reserve::Existing(*existing)),
                Found::Vacant(expect) => expect,
            };
            let stored = StoredReservation::new(request, &attempt_id, now, self.ttl_ms, state);
            let bytes = codec::encode(&key, &stored)?;
            let mut reservation = stored.to_reservation(account, job_id, Version::new(0));
            let ops = effect(&reservation)?;
            let written = if ops.is_empty() {
                self.store.put(&key, &bytes, expect)
            } else {
                let mut batch = Batch::new().put(&key, bytes, expect);
                for op in ops {
                    batch.push(op);
                }
                self.store
                    .apply(&batch)
                    .map(|applied| match applied.first() {
                        Some(Applied::Put(version)) => *version,
                        _ => Version::new(0),
                    })
            };
            match written {
                Ok(version) => {
                    reservation.version = version;
                    return Ok(Reserve::New(reservation));
                }
                // Lost a race (on the reservation or the caller's keys): decide
                // again on what is there now.
                Err(e) if e.is_conflict() && attempt < MAX_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn find(
        &self,
        key: &Key,
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
        attempt: &AttemptId,
        now: u64,
    ) -> Result<Found> {
        let Some((stored, version)) = self.read(key)? else {
            return Ok(Found::Vacant(Expect::Absent));
        };
        // The reservation this attempt made stays its own, expired or not:
        // a repeated call never charges again.
        let own = stored.was_made_by(attempt);
        let existing = stored.to_reservation(account, job_id, version);
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

    /// Moves `reservation` (if it is still the stored one, by id) as `decide`
    /// says, retrying lost races.
    fn transition(
        &self,
        reservation: &Reservation,
        decide: impl Fn(ReservationState) -> Transition,
    ) -> Result<Moved> {
        self.transition_with(reservation, decide, |_| Ok::<_, Error>(Vec::new()))
    }

    /// [`transition`](JobLedger::transition), applying the operations `effect`
    /// returns in the same batch whenever the reservation changes. A conflict on
    /// the caller's keys is retried like a lost race, at most `MAX_ATTEMPTS`
    /// times in all.
    fn transition_with<E: From<Error>>(
        &self,
        reservation: &Reservation,
        decide: impl Fn(ReservationState) -> Transition,
        mut effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E>,
    ) -> Result<Moved, E> {
        let (account, job_id) = (&reservation.account, &reservation.job_id);
        let key = self.key(account, job_id)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some((mut stored, version)) = self.read(&key)? else {
                return Ok(Moved::Gone);
            };
            if stored.id != reservation.id {
                return Ok(Moved::Gone); // replaced by a later reservation
            }
            let current = stored.to_reservation(account, job_id, version);
            let new_state = match decide(stored.state) {
                Transition::Keep => return Ok(Moved::Unchanged(Box::new(current))),
                Transition::Remove => None,
                Transition::To(state) => Some(state),
            };
            let ops = effect(&current)?;
            let expect = Expect::Version(version);
            let written = match new_state {
                Some(state) => {
                    stored.state = state;
                    let bytes = codec::encode(&key, &stored)?;
                    if ops.is_empty() {
                        self.store.put(&key, &bytes, expect).map(Some)
                    } else {
                        let batch = with_ops(Batch::new().put(&key, bytes, expect), ops);
                        self.store
                            .apply(&batch)
                            .map(|applied| match applied.first() {
                                Some(Applied::Put(version)) => Some(*version),
                                _ => Some(Version::new(0)),
                            })
                    }
                }
                None if ops.is_empty() => self.store.delete(&key, expect).map(|_| None),
                None => {
                    let batch = with_ops(Batch::new().delete(&key, expect), ops);
                    self.store.apply(&batch).map(|_| None)
                }
            };
            match written {
                Ok(Some(version)) => {
                    return Ok(Moved::Changed(Box::new(
                        stored.to_reservation(account, job_id, version),
                    )));
                }
                Ok(None) => return Ok(Moved::Removed(Box::new(current))),
                Err(e) if e.is_conflict() && attempt < MAX_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn read(&self, key: &Key) -> Result<Option<(StoredReservation, Version)>> {
        match self.store.get(key)? {
            None => Ok(None),
            Some(entry) => {
                let stored: StoredReservation = codec::decode(key, &entry.value)?;
                Ok(Some((stored.lift_legacy_fields(), entry.version)))
            }
        }
    }
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
