//! jobsafe's writes inside an application's own PostgreSQL transaction (see
//! [`PgStore`], "Transactions of your own"): the managers' own bodies, each
//! store call made on the application's transaction by the store's
//! [`in_transaction`](PgStore::in_transaction) driver.

use std::sync::Arc;
use std::time::Duration;

use crate::drive::{self, Blocking};
use crate::error::Result;
use crate::jobs::{Job, JobState, NewJob};
use crate::key::Key;
use crate::ledger::{ChargeRequest, Insert, JobLedger, ReservationState, Reserve, no_ops};
use crate::lock::{Acquire, AcquireIn, JobLock, LockInTransaction, LockRequest};
use crate::pipeline::Pipeline;
use crate::store::PgStore;
use crate::store::pg::BlockingClient;
use crate::vfs::Vfs;

/// The blocking methods, for managers on a [`PgStore`] or an `Arc` of one
/// (as a [`Pipeline`]'s are).
macro_rules! blocking_within {
    ($($store:ty),*) => {$(
impl JobState<$store> {
    /// [`create`](JobState::create), inside the application's transaction
    /// `tx`: the job exists once `tx` commits, and not if it rolls back (see
    /// [`PgStore`], "Transactions of your own", for what else that changes).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use jobsafe::jobs::NewJob;
    /// use jobsafe::{JobState, PgStore, SystemClock};
    ///
    /// let url = "postgres://app:secret@db.internal/app";
    /// let jobs = JobState::new(PgStore::open(url)?, Arc::new(SystemClock));
    /// let mut db = postgres::Client::connect(url, postgres::NoTls)?;
    /// let mut tx = db.transaction()?;
    /// tx.execute("INSERT INTO exports (id, owner) VALUES ($1, $2)", &[&"exp-7", &"inst-3"])?;
    /// let job = jobs.create_in(&mut tx, NewJob::new("export").id("exp-7"))?;
    /// tx.commit()?; // The export row and its job, together.
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`create`](JobState::create); a server error, after which `tx`
    /// is aborted.
    pub fn create_in(
        &self,
        tx: &mut (impl postgres::GenericClient + Send),
        new: NewJob,
    ) -> Result<Job> {
        let client = BlockingClient::new(tx);
        let store: &PgStore = self.store();
        let drive = store.in_transaction(&client, Blocking);
        drive::blocking(self.create_driven(drive, new))
    }
}

impl JobLedger<$store> {
    /// [`reserve`](JobLedger::reserve), inside the application's
    /// transaction `tx`: the reservation exists once `tx` commits (see
    /// [`PgStore`], "Transactions of your own", for what else that changes).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use jobsafe::ledger::{ChargeRequest, Reserve};
    /// use jobsafe::{JobLedger, PgStore, SystemClock};
    ///
    /// let url = "postgres://app:secret@db.internal/app";
    /// let ledger = JobLedger::new(PgStore::open(url)?, Arc::new(SystemClock));
    /// let mut db = postgres::Client::connect(url, postgres::NoTls)?;
    /// let mut tx = db.transaction()?;
    /// let request = ChargeRequest::new().fingerprint("export:vault-1").meta("credits", 25);
    /// if let Reserve::New(_) = ledger.reserve_in(&mut tx, "acct-9", "job-42", &request)? {
    ///     tx.execute("UPDATE balances SET credits = credits - 25 WHERE account = $1", &[&"acct-9"])?;
    /// }
    /// tx.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`reserve`](JobLedger::reserve); a server error, after which `tx`
    /// is aborted.
    pub fn reserve_in(
        &self,
        tx: &mut (impl postgres::GenericClient + Send),
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
    ) -> Result<Reserve> {
        self.insert_in(tx, account, job_id, request, ReservationState::Charged)
    }

    /// [`reserve_pending`](JobLedger::reserve_pending), inside the
    /// application's transaction `tx`.
    ///
    /// # Errors
    /// As [`reserve_in`](JobLedger::reserve_in).
    pub fn reserve_pending_in(
        &self,
        tx: &mut (impl postgres::GenericClient + Send),
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
    ) -> Result<Reserve> {
        self.insert_in(
            tx,
            account,
            job_id,
            request,
            ReservationState::ChargePending,
        )
    }

    fn insert_in(
        &self,
        tx: &mut (impl postgres::GenericClient + Send),
        account: &str,
        job_id: &str,
        request: &ChargeRequest,
        state: ReservationState,
    ) -> Result<Reserve> {
        let client = BlockingClient::new(tx);
        let store: &PgStore = self.store();
        let drive = store.in_transaction(&client, Blocking);
        let insert = Insert {
            account,
            job_id,
            request,
            state,
        };
        drive::blocking(self.insert_driven(drive, insert, no_ops))
    }
}

impl JobLock<$store> {
    /// [`acquire`](JobLock::acquire), inside the application's transaction
    /// `tx`: the lock is the caller's once `tx` commits, and nobody's if it
    /// rolls back. What it returns is not a guard yet: call
    /// [`committed`](LockInTransaction::committed) after the commit for the
    /// guard that renews and releases the lock (on the store's own
    /// connections, where the lock is visible only from the commit on). Until
    /// `tx` ends it holds the lock's row: another acquire, renewal or release
    /// of the same key waits for it (see [`PgStore`], "Transactions of your
    /// own"), so do not release, or drop, another guard of the same key on
    /// the same thread before `tx` ends. The lease counts from this call,
    /// not from the commit (see [`LockInTransaction`]).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use jobsafe::lock::{AcquireIn, LockRequest};
    /// use jobsafe::{JobLock, Key, PgStore, SystemClock};
    ///
    /// let url = "postgres://app:secret@db.internal/app";
    /// let locks = JobLock::new(PgStore::open(url)?, Arc::new(SystemClock));
    /// let mut db = postgres::Client::connect(url, postgres::NoTls)?;
    /// let mut tx = db.transaction()?;
    /// let key = Key::new(["vault", "vault-1"])?;
    /// let request = LockRequest::new().actor("export-7");
    /// match locks.acquire_in(&mut tx, &key, Duration::from_secs(300), &request)? {
    ///     AcquireIn::Acquired(pending) => {
    ///         tx.execute("UPDATE vaults SET exporting = true WHERE id = $1", &[&"vault-1"])?;
    ///         tx.commit()?; // The flag and the lock, together.
    ///         let guard = pending.committed();
    ///         // ... export, then:
    ///         guard.release()?;
    ///     }
    ///     AcquireIn::Held(holder) => println!("busy until {}", holder.expires_ms),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`acquire`](JobLock::acquire), but never [`Error::Ambiguous`](crate::Error::Ambiguous):
    /// a server error aborts `tx` and is final (roll back and repeat the
    /// whole transaction).
    pub fn acquire_in(
        &self,
        tx: &mut (impl postgres::GenericClient + Send),
        key: &Key,
        ttl: Duration,
        request: &LockRequest,
    ) -> Result<AcquireIn<$store>> {
        let client = BlockingClient::new(tx);
        let store: &PgStore = self.store();
        let drive = store.in_transaction(&client, Blocking);
        Ok(match drive::blocking(self.acquire_driven(drive, key, ttl, request))? {
            Acquire::Acquired(guard) => AcquireIn::Acquired(LockInTransaction::new(guard)),
            Acquire::Held(holder) => AcquireIn::Held(holder),
        })
    }
}

    )*};
}

blocking_within!(PgStore, Arc<PgStore>);

impl<V: Vfs> Pipeline<PgStore, V> {
    /// [`enqueue`](Pipeline::enqueue), inside the application's transaction
    /// `tx`: the job exists once `tx` commits, and a
    /// [`Runner`](crate::pipeline::Runner) on any machine wakes for it then
    /// (see [`JobState::create_in`]).
    ///
    /// # Errors
    /// As [`enqueue`](Pipeline::enqueue); a server error, after which `tx`
    /// is aborted.
    pub fn enqueue_in(
        &self,
        tx: &mut (impl postgres::GenericClient + Send),
        subject: &str,
        new: NewJob,
    ) -> Result<Job> {
        Key::new([subject])?;
        let new = new.meta(Pipeline::SUBJECT_FIELD, subject);
        self.jobs().create_in(tx, new)
    }
}

#[cfg(feature = "async")]
mod async_face {
    use crate::drive::Async;
    use crate::error::Result;
    use crate::jobs::{AsyncJobState, Job, NewJob};
    use crate::ledger::{AsyncJobLedger, ChargeRequest, Insert, ReservationState, Reserve, no_ops};
    use crate::lock::{Acquire, AcquireIn, AsyncJobLock, LockInTransaction, LockRequest};
    use std::sync::Arc;
    use std::time::Duration;

    use crate::key::Key;
    use crate::pipeline::{AsyncPipeline, Pipeline};
    use crate::store::PgStore;
    use crate::store::pg::AsyncClient;
    use crate::vfs::Vfs;

    /// The async methods, for managers on a [`PgStore`] or an `Arc` of one.
    macro_rules! async_within {
        ($($store:ty),*) => {$(

    impl AsyncJobState<$store> {
        /// [`JobState::create_in`](crate::JobState::create_in), on a transaction of the async client
        /// (`tokio_postgres`): the job exists once `tx` commits.
        ///
        /// ```no_run
        /// use std::sync::Arc;
        /// use jobsafe::jobs::{AsyncJobState, NewJob};
        /// use jobsafe::{JobState, PgStore, SystemClock};
        ///
        /// # async fn charge(url: &str) -> Result<(), Box<dyn std::error::Error>> {
        /// let jobs = AsyncJobState::new(JobState::new(PgStore::open(url)?, Arc::new(SystemClock)));
        /// let (mut db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        /// tokio::spawn(connection);
        /// let tx = db.transaction().await?;
        /// tx.execute("INSERT INTO exports (id) VALUES ($1)", &[&"exp-7"]).await?;
        /// let job = jobs.create_in(&tx, NewJob::new("export").id("exp-7")).await?;
        /// tx.commit().await?;
        /// # Ok(())
        /// # }
        /// ```
        ///
        /// # Errors
        /// As [`JobState::create_in`](crate::JobState::create_in).
        pub async fn create_in(
            &self,
            tx: &(impl tokio_postgres::GenericClient + Sync),
            new: NewJob,
        ) -> Result<Job> {
            let jobs = self.blocking();
            let client = AsyncClient(tx);
            let store: &PgStore = jobs.store();
            let drive = store.in_transaction(&client, Async);
            jobs.create_driven(drive, new).await
        }
    }

    impl AsyncJobLedger<$store> {
        /// [`JobLedger::reserve_in`](crate::JobLedger::reserve_in), on a transaction of the async client
        /// (`tokio_postgres`).
        ///
        /// # Errors
        /// As [`JobLedger::reserve_in`](crate::JobLedger::reserve_in).
        pub async fn reserve_in(
            &self,
            tx: &(impl tokio_postgres::GenericClient + Sync),
            account: &str,
            job_id: &str,
            request: &ChargeRequest,
        ) -> Result<Reserve> {
            self.insert_in(tx, account, job_id, request, ReservationState::Charged)
                .await
        }

        /// [`JobLedger::reserve_pending_in`](crate::JobLedger::reserve_pending_in), on a transaction of the async
        /// client (`tokio_postgres`).
        ///
        /// # Errors
        /// As [`JobLedger::reserve_in`](crate::JobLedger::reserve_in).
        pub async fn reserve_pending_in(
            &self,
            tx: &(impl tokio_postgres::GenericClient + Sync),
            account: &str,
            job_id: &str,
            request: &ChargeRequest,
        ) -> Result<Reserve> {
            let state = ReservationState::ChargePending;
            self.insert_in(tx, account, job_id, request, state).await
        }

        async fn insert_in(
            &self,
            tx: &(impl tokio_postgres::GenericClient + Sync),
            account: &str,
            job_id: &str,
            request: &ChargeRequest,
            state: ReservationState,
        ) -> Result<Reserve> {
            let ledger = self.blocking();
            let client = AsyncClient(tx);
            let store: &PgStore = ledger.store();
            let drive = store.in_transaction(&client, Async);
            let insert = Insert {
                account,
                job_id,
                request,
                state,
            };
            ledger.insert_driven(drive, insert, no_ops).await
        }
    }

    impl AsyncJobLock<$store> {
        /// [`JobLock::acquire_in`](crate::JobLock::acquire_in), on a transaction of the async client
        /// (`tokio_postgres`); after the commit,
        /// [`committed_async`](LockInTransaction::committed_async) gives the
        /// async guard.
        ///
        /// # Errors
        /// As [`JobLock::acquire_in`](crate::JobLock::acquire_in).
        pub async fn acquire_in(
            &self,
            tx: &(impl tokio_postgres::GenericClient + Sync),
            key: &Key,
            ttl: Duration,
            request: &LockRequest,
        ) -> Result<AcquireIn<$store>> {
            let lock = self.blocking();
            let client = AsyncClient(tx);
            let store: &PgStore = lock.store();
            let drive = store.in_transaction(&client, Async);
            Ok(match lock.acquire_driven(drive, key, ttl, request).await? {
                Acquire::Acquired(guard) => AcquireIn::Acquired(LockInTransaction::new(guard)),
                Acquire::Held(holder) => AcquireIn::Held(holder),
            })
        }
    }
        )*};
    }

    async_within!(PgStore, Arc<PgStore>);

    impl<V: Vfs> AsyncPipeline<PgStore, V> {
        /// [`Pipeline::enqueue_in`](crate::pipeline::Pipeline::enqueue_in), on a transaction of the async client
        /// (`tokio_postgres`).
        ///
        /// # Errors
        /// As [`Pipeline::enqueue_in`](crate::pipeline::Pipeline::enqueue_in).
        pub async fn enqueue_in(
            &self,
            tx: &(impl tokio_postgres::GenericClient + Sync),
            subject: &str,
            new: NewJob,
        ) -> Result<Job> {
            Key::new([subject])?;
            let new = new.meta(Pipeline::SUBJECT_FIELD, subject);
            self.jobs().create_in(tx, new).await
        }
    }
}
