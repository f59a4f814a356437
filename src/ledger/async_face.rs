//! [`AsyncJobLedger`]: the async face of [`JobLedger`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{
    ChargeRequest, Insert, JobLedger, LedgerList, Reservation, ReservationState, Reserve, no_ops,
};
use crate::drive::Async;
use crate::error::{Error, Result};
use crate::pool;
use crate::store::{BatchOp, Store};

/// The async face of [`JobLedger`]: the same reservations, the same
/// guarantees, and methods of the same names that are `async fn`s and never
/// block the caller's thread.
///
/// Each reserve, refund, confirmation and lookup runs the same body as its
/// blocking twin, with each store call made through the store's own async
/// calls and each wait on the clock a timer: the fingerprints, the one charge
/// per job id and the reading back of a write whose outcome was lost are
/// written once, and no thread is held while the call waits. On a `LogStore`
/// the write joins the group commit; on a `PgStore` each call is a task of
/// the caller's runtime. The `effect` closures of
/// [`reserve_with`](AsyncJobLedger::reserve_with) and its siblings run on the
/// crate's [pool](crate::pool): they may read the store, as their blocking
/// twins' do. The listings ([`list`](AsyncJobLedger::list),
/// [`pending`](AsyncJobLedger::pending),
/// [`purge_expired`](AsyncJobLedger::purge_expired)) run their blocking
/// twins on the pool.
///
/// **Cancellation.** A call stops at its next store call or wait once its
/// future is dropped, as a caller that crashed there would: a write it
/// already made may stand, and it no longer reads back or writes again a
/// write whose reply was lost. What to do after a dropped call is what to do
/// after an [ambiguous](Error::is_ambiguous) error:
/// - a reserve: repeat it with the same [`ChargeRequest::attempt`], which
///   gets the reservation it made as [`Reserve::New`] and never charges
///   twice. Set the attempt before the first call (from the client's
///   idempotency key, say): a dropped call returns no error to take it from;
/// - a change (a confirmation, a refund and its steps): a repeat may report
///   that there was nothing to do, since the dropped call's write may have
///   done it; [`lookup`](AsyncJobLedger::lookup) and
///   [`pending`](AsyncJobLedger::pending) tell what is stored, and a refund
///   left [`RefundPending`](super::ReservationState::RefundPending) is found
///   there, as after a crash.
///
/// ```
/// use std::sync::Arc;
/// use jobsafe::ledger::{AsyncJobLedger, ChargeRequest, Reserve};
/// use jobsafe::{JobLedger, ManualClock, MemStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> jobsafe::Result<()> {
/// let ledger = AsyncJobLedger::new(JobLedger::new(MemStore::new(), Arc::new(ManualClock::new(0))));
/// let request = ChargeRequest::new().fingerprint("sha256:ab12");
/// assert!(matches!(ledger.reserve("acct-1", "job-1", &request).await?, Reserve::New(_)));
/// // The client retried: a free retry, never a second charge.
/// assert!(matches!(ledger.reserve("acct-1", "job-1", &request).await?, Reserve::Existing(_)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncJobLedger<S> {
    ledger: JobLedger<S>,
}

impl<S> Clone for AsyncJobLedger<S> {
    fn clone(&self) -> Self {
        AsyncJobLedger {
            ledger: self.ledger.clone(),
        }
    }
}

impl<S: Store + 'static> AsyncJobLedger<S> {
    /// The async face of `ledger`, sharing its state.
    pub fn new(ledger: JobLedger<S>) -> Self {
        AsyncJobLedger { ledger }
    }

    /// The blocking face, sharing this one's state.
    pub fn blocking(&self) -> &JobLedger<S> {
        &self.ledger
    }

    /// Runs `call` on the pool with a handle of the ledger.
    async fn run<T: Send + 'static, E: Send + 'static>(
        &self,
        call: impl FnOnce(&JobLedger<S>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        let ledger = self.ledger.clone();
        pool::run(move || call(&ledger)).await
    }

    /// [`JobLedger::reserve`].
    ///
    /// # Errors
    /// As [`JobLedger::reserve`].
    pub async fn reserve(
        &self,
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
    ) -> Result<Reserve> {
        let insert = Insert {
            account,
            job_id,
            request,
            state: ReservationState::Charged,
        };
        sendable(self.ledger.insert_driven(Async, insert, no_ops)).await
    }

    /// [`JobLedger::reserve_with`]; `effect` runs on the pool.
    ///
    /// # Errors
    /// As [`JobLedger::reserve_with`].
    pub async fn reserve_with<E: From<Error> + Send + 'static>(
        &self,
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
        effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E> + Send + 'static,
    ) -> Result<Reserve, E> {
        let insert = Insert {
            account,
            job_id,
            request,
            state: ReservationState::Charged,
        };
        sendable(self.ledger.insert_driven(Async, insert, on_pool(effect))).await
    }

    /// [`JobLedger::reserve_pending`].
    ///
    /// # Errors
    /// As [`JobLedger::reserve_pending`].
    pub async fn reserve_pending(
        &self,
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
    ) -> Result<Reserve> {
        let insert = Insert {
            account,
            job_id,
            request,
            state: ReservationState::ChargePending,
        };
        sendable(self.ledger.insert_driven(Async, insert, no_ops)).await
    }

    /// [`JobLedger::confirm_charge`].
    ///
    /// # Errors
    /// As [`JobLedger::confirm_charge`].
    pub async fn confirm_charge(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        sendable(self.ledger.confirm_charge_driven(Async, reservation)).await
    }

    /// [`JobLedger::cancel_charge`].
    ///
    /// # Errors
    /// As [`JobLedger::cancel_charge`].
    pub async fn cancel_charge(&self, reservation: &Reservation) -> Result<bool> {
        sendable(self.ledger.cancel_charge_driven(Async, reservation)).await
    }

    /// [`JobLedger::refund`].
    ///
    /// # Errors
    /// As [`JobLedger::refund`].
    pub async fn refund(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        let refund = self
            .ledger
            .refund_with_driven(Async, account, job_id, no_ops);
        sendable(refund).await
    }

    /// [`JobLedger::refund_with`]; `effect` runs on the pool.
    ///
    /// # Errors
    /// As [`JobLedger::refund_with`].
    pub async fn refund_with<E: From<Error> + Send + 'static>(
        &self,
        account: &str,
        job_id: &str,
        effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E> + Send + 'static,
    ) -> Result<Option<Reservation>, E> {
        let effect = on_pool(effect);
        sendable(
            self.ledger
                .refund_with_driven(Async, account, job_id, effect),
        )
        .await
    }

    /// [`JobLedger::refund_reservation`].
    ///
    /// # Errors
    /// As [`JobLedger::refund_reservation`].
    pub async fn refund_reservation(&self, reservation: &Reservation) -> Result<bool> {
        let refund = self
            .ledger
            .refund_reservation_with_driven(Async, reservation, no_ops);
        Ok(sendable(refund).await?.is_some())
    }

    /// [`JobLedger::refund_reservation_with`]; `effect` runs on the pool.
    ///
    /// # Errors
    /// As [`JobLedger::refund_reservation_with`].
    pub async fn refund_reservation_with<E: From<Error> + Send + 'static>(
        &self,
        reservation: &Reservation,
        effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E> + Send + 'static,
    ) -> Result<Option<Reservation>, E> {
        let effect = on_pool(effect);
        let refund = self
            .ledger
            .refund_reservation_with_driven(Async, reservation, effect);
        sendable(refund).await
    }

    /// [`JobLedger::begin_refund`].
    ///
    /// # Errors
    /// As [`JobLedger::begin_refund`].
    pub async fn begin_refund(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        sendable(self.ledger.begin_refund_driven(Async, account, job_id)).await
    }

    /// [`JobLedger::begin_refund_of`].
    ///
    /// # Errors
    /// As [`JobLedger::begin_refund_of`].
    pub async fn begin_refund_of(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        sendable(self.ledger.begin_refund_of_driven(Async, reservation)).await
    }

    /// [`JobLedger::complete_refund`].
    ///
    /// # Errors
    /// As [`JobLedger::complete_refund`].
    pub async fn complete_refund(&self, reservation: &Reservation) -> Result<bool> {
        sendable(self.ledger.complete_refund_driven(Async, reservation)).await
    }

    /// [`JobLedger::abandon_refund`].
    ///
    /// # Errors
    /// As [`JobLedger::abandon_refund`].
    pub async fn abandon_refund(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        sendable(self.ledger.abandon_refund_driven(Async, reservation)).await
    }

    /// [`JobLedger::lookup`].
    ///
    /// # Errors
    /// As [`JobLedger::lookup`].
    pub async fn lookup(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        sendable(self.ledger.lookup_driven(Async, account, job_id)).await
    }

    /// [`JobLedger::list`].
    ///
    /// # Errors
    /// As [`JobLedger::list`].
    pub async fn list(&self, account: Option<&str>) -> Result<LedgerList> {
        let account = account.map(str::to_owned);
        self.run(move |ledger| ledger.list(account.as_deref()))
            .await
    }

    /// [`JobLedger::pending`].
    ///
    /// # Errors
    /// As [`JobLedger::pending`].
    pub async fn pending(&self) -> Result<LedgerList> {
        self.run(|ledger| ledger.pending()).await
    }

    /// [`JobLedger::purge_expired`].
    ///
    /// # Errors
    /// As [`JobLedger::purge_expired`].
    pub async fn purge_expired(&self, retain: Duration) -> Result<usize> {
        self.run(move |ledger| ledger.purge_expired(retain)).await
    }
}

/// `body`, boxed as the `Send` future it is.
///
/// Proven `Send` here, where the store type is a parameter known to be
/// `'static`: proven in the caller's `async` block instead, the compiler
/// erases the lifetime of a `dyn Store` inside the future's type and can no
/// longer see that it is `'static`, and refuses to send it (an `Arc<dyn
/// Store>` ledger could then not be used in a spawned task).
fn sendable<'a, T>(
    body: impl Future<Output = T> + Send + 'a,
) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(body)
}

/// `effect`, made a side effect of the async face: each call runs on the
/// crate's pool, since it may read the store (see
/// [`reserve_with`](AsyncJobLedger::reserve_with)).
fn on_pool<E: Send + 'static>(
    effect: impl FnMut(&Reservation) -> Result<Vec<BatchOp>, E> + Send + 'static,
) -> impl FnMut(&Reservation) -> pool::Blocking<Result<Vec<BatchOp>, E>> {
    let effect = Arc::new(Mutex::new(effect));
    move |reservation: &Reservation| {
        let (effect, reservation) = (Arc::clone(&effect), reservation.clone());
        pool::run(move || (effect.lock())(&reservation))
    }
}

impl<S: Store + 'static> From<JobLedger<S>> for AsyncJobLedger<S> {
    fn from(ledger: JobLedger<S>) -> Self {
        AsyncJobLedger::new(ledger)
    }
}
