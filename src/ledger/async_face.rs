//! [`AsyncJobLedger`]: the async face of [`JobLedger`].

use std::time::Duration;

use super::{ChargeRequest, JobLedger, LedgerList, Reservation, Reserve};
use crate::error::{Error, Result};
use crate::pool;
use crate::store::{BatchOp, Store};

/// The async face of [`JobLedger`]: the same reservations, the same
/// guarantees, and methods of the same names that are `async fn`s and never
/// block the caller's thread.
///
/// Each method runs its blocking twin on the crate's [pool](crate::pool), so
/// the logic (fingerprints, the one charge per job id, reading back a write
/// whose outcome was unknown) is written once. The `effect` closures of
/// [`reserve_with`](AsyncJobLedger::reserve_with) and its siblings run there
/// too: they may read the store, as their blocking twins' do.
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
        let (account, job_id, request) = (account.to_owned(), job_id.to_owned(), request.clone());
        self.run(move |ledger| ledger.reserve(&account, &job_id, &request))
            .await
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
        let (account, job_id, request) = (account.to_owned(), job_id.to_owned(), request.clone());
        self.run(move |ledger| ledger.reserve_with(&account, &job_id, &request, effect))
            .await
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
        let (account, job_id, request) = (account.to_owned(), job_id.to_owned(), request.clone());
        self.run(move |ledger| ledger.reserve_pending(&account, &job_id, &request))
            .await
    }

    /// [`JobLedger::confirm_charge`].
    ///
    /// # Errors
    /// As [`JobLedger::confirm_charge`].
    pub async fn confirm_charge(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        let reservation = reservation.clone();
        self.run(move |ledger| ledger.confirm_charge(&reservation))
            .await
    }

    /// [`JobLedger::cancel_charge`].
    ///
    /// # Errors
    /// As [`JobLedger::cancel_charge`].
    pub async fn cancel_charge(&self, reservation: &Reservation) -> Result<bool> {
        let reservation = reservation.clone();
        self.run(move |ledger| ledger.cancel_charge(&reservation))
            .await
    }

    /// [`JobLedger::refund`].
    ///
    /// # Errors
    /// As [`JobLedger::refund`].
    pub async fn refund(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        let (account, job_id) = (account.to_owned(), job_id.to_owned());
        self.run(move |ledger| ledger.refund(&account, &job_id))
            .await
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
        let (account, job_id) = (account.to_owned(), job_id.to_owned());
        self.run(move |ledger| ledger.refund_with(&account, &job_id, effect))
            .await
    }

    /// [`JobLedger::refund_reservation`].
    ///
    /// # Errors
    /// As [`JobLedger::refund_reservation`].
    pub async fn refund_reservation(&self, reservation: &Reservation) -> Result<bool> {
        let reservation = reservation.clone();
        self.run(move |ledger| ledger.refund_reservation(&reservation))
            .await
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
        let reservation = reservation.clone();
        self.run(move |ledger| ledger.refund_reservation_with(&reservation, effect))
            .await
    }

    /// [`JobLedger::begin_refund`].
    ///
    /// # Errors
    /// As [`JobLedger::begin_refund`].
    pub async fn begin_refund(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        let (account, job_id) = (account.to_owned(), job_id.to_owned());
        self.run(move |ledger| ledger.begin_refund(&account, &job_id))
            .await
    }

    /// [`JobLedger::begin_refund_of`].
    ///
    /// # Errors
    /// As [`JobLedger::begin_refund_of`].
    pub async fn begin_refund_of(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        let reservation = reservation.clone();
        self.run(move |ledger| ledger.begin_refund_of(&reservation))
            .await
    }

    /// [`JobLedger::complete_refund`].
    ///
    /// # Errors
    /// As [`JobLedger::complete_refund`].
    pub async fn complete_refund(&self, reservation: &Reservation) -> Result<bool> {
        let reservation = reservation.clone();
        self.run(move |ledger| ledger.complete_refund(&reservation))
            .await
    }

    /// [`JobLedger::abandon_refund`].
    ///
    /// # Errors
    /// As [`JobLedger::abandon_refund`].
    pub async fn abandon_refund(&self, reservation: &Reservation) -> Result<Option<Reservation>> {
        let reservation = reservation.clone();
        self.run(move |ledger| ledger.abandon_refund(&reservation))
            .await
    }

    /// [`JobLedger::lookup`].
    ///
    /// # Errors
    /// As [`JobLedger::lookup`].
    pub async fn lookup(&self, account: &str, job_id: &str) -> Result<Option<Reservation>> {
        let (account, job_id) = (account.to_owned(), job_id.to_owned());
        self.run(move |ledger| ledger.lookup(&account, &job_id))
            .await
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

impl<S: Store + 'static> From<JobLedger<S>> for AsyncJobLedger<S> {
    fn from(ledger: JobLedger<S>) -> Self {
        AsyncJobLedger::new(ledger)
    }
}
