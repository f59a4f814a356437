//! The relay's state and what its requests do.
//!
//! Requests go through the async face of each manager ([`AsyncJobState`],
//! [`AsyncJobLedger`], [`AsyncJobLock`]): their store calls run on jobsafe's
//! bounded pool, and a request that waits for one holds no thread. The worker
//! threads, which run the blocking pipeline, settle finished jobs through the
//! blocking face of the same managers ([`Relay::settle`]), and startup
//! recovers through it before the runtime starts ([`Relay::recover`]).
//!
//! One store holds everything: the jobs and their checkpoints (a [`Pipeline`]),
//! the credit reservations ([`JobLedger`]) with each account's balance, changed
//! in the same atomic batch as the reservation or refund it pays for, and the
//! index locks ([`JobLock`]).
//!
//! Every job belongs to the account that created it: only that account sees
//! it. Each account may have a bounded number of unfinished jobs
//! ([`QueuedJobs`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jobsafe::jobs::{AsyncJobState, AsyncSubscription, ClientJob, Job, JobStatus, NewJob};
use jobsafe::ledger::{AsyncJobLedger, ChargeRequest, Reservation, Reserve};
use jobsafe::lock::{AsyncAcquire, AsyncJobLock, LockHandle, LockRecord, LockRequest};
use jobsafe::store::{BatchOp, Entry};
use jobsafe::{Error, Expect, JobLedger, JobLock, Key, Pipeline, SharedClock, Store};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::work::STAGES;

/// What the relay keeps everything in.
pub(crate) type Shared = Arc<dyn Store>;

/// The job records, as the pipeline holds them.
type Jobs = AsyncJobState<Arc<Shared>>;

/// A job's events as the HTTP layer streams them.
pub(crate) type Events = AsyncSubscription<Arc<Shared>>;

/// Job metadata fields the relay writes (operators see them; clients do not).
pub(crate) mod meta {
    /// The account charged.
    pub(crate) const ACCOUNT: &str = "account";
    /// The kind of work charged for.
    pub(crate) const BACKEND: &str = "backend";
    /// The idempotency key the job was charged under.
    pub(crate) const CHARGE_KEY: &str = "charge_key";
    /// The stage the simulated work fails at, if asked to.
    pub(crate) const FAIL_AT: &str = "fail_at";
    /// The text the simulated work summarizes.
    pub(crate) const INPUT: &str = "input";
    /// The index lock the job holds and releases when it ends.
    pub(crate) const INDEX_LOCK: &str = "index_lock";
    /// The job a reservation or a lock belongs to.
    pub(crate) const JOB: &str = "job";
}

/// Longest text a job summarizes (the body field `input`). Checked before the
/// charge, so that a job too large to record never costs a credit.
pub(crate) const MAX_INPUT_LEN: usize = 16 << 10;

/// Longest resource name of `POST /index`.
pub(crate) const MAX_RESOURCE_LEN: usize = 128;

/// Why a request could not be served. Only [`RelayError::client_message`] ever
/// reaches a client.
#[derive(Debug)]
pub(crate) enum RelayError {
    /// The account has no credits left.
    NoCredits,
    /// The idempotency key was used before for a different request.
    KeyReused,
    /// The account has as many unfinished jobs as it may have.
    TooManyQueued,
    /// The request is invalid, as this message (written here, never taken
    /// from a store error) tells the client.
    BadRequest(String),
    /// The store refused what the request asked for (a key or a record too
    /// large, say). Its text names internal keys: for the log only.
    Refused(Error),
    /// A reservation belongs to another job than the one being refunded.
    OtherJob,
    /// The store or the disk failed: details for the log only.
    Internal(Error),
    /// An event stream was asked to resume after an event the job does not
    /// have yet, while the job goes on: the client cannot have seen it.
    ResumePastLastEvent,
}

impl From<Error> for RelayError {
    fn from(e: Error) -> Self {
        match e {
            Error::FingerprintMismatch { .. } => RelayError::KeyReused,
            Error::InvalidKey { .. } | Error::InvalidArgument(_) | Error::TooLarge { .. } => {
                RelayError::Refused(e)
            }
            e => RelayError::Internal(e),
        }
    }
}

/// What the relay is configured with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Each account's starting credits.
    pub(crate) credits: u64,
    /// The index lock's lease.
    pub(crate) index_ttl: Duration,
    /// A job runner's lease.
    pub(crate) lease: Duration,
    /// How many unfinished jobs an account may have.
    pub(crate) max_queued: usize,
    /// Whether other relays serve the same store (PostgreSQL): their jobs'
    /// locks are theirs, not left by a crash of this one.
    pub(crate) shared_by_relays: bool,
}

/// A new or deduplicated job.
#[derive(Debug)]
pub(crate) struct Created {
    /// The job's id.
    pub(crate) job_id: String,
    /// Whether this request charged a credit (`false`: a retry of a charged one).
    pub(crate) charged: bool,
}

/// The outcome of `POST /index`.
#[derive(Debug)]
pub(crate) enum IndexStart {
    /// The lock was free: an index job started.
    Started {
        /// The index job.
        job_id: String,
        /// The lock's fencing token.
        token: u64,
        /// When the lock's lease ends if the job never releases it.
        expires_ms: u64,
    },
    /// Another index job holds the lock.
    Held(Box<LockRecord>),
}

/// A request to create a job.
#[derive(Debug)]
pub(crate) struct JobRequest<'a> {
    /// The account charged.
    pub(crate) account: &'a str,
    /// The client's idempotency key, if it sent one.
    pub(crate) key: Option<&'a str>,
    /// What kind of job.
    pub(crate) kind: &'a str,
    /// The request body, fingerprinted so that a key reused for another request
    /// is refused.
    pub(crate) body: &'a [u8],
    /// The stage the simulated work should fail at, if any.
    pub(crate) fail_at: Option<&'a str>,
    /// The text to summarize, if given.
    pub(crate) input: Option<&'a str>,
}

/// The relay: jobs, credits and locks over one store.
#[derive(Clone)]
pub(crate) struct Relay {
    store: Shared,
    /// Runs the jobs, through its `Runner`.
    pipeline: Pipeline<Shared>,
    /// The pipeline's job records, for requests: the same records and the
    /// same live events, since the two faces share one state.
    jobs: Jobs,
    ledger: AsyncJobLedger<Shared>,
    locks: AsyncJobLock<Shared>,
    queued: Arc<QueuedJobs>,
    settings: Settings,
}

impl Relay {
    /// The relay over `store`, whose jobs `pipeline` runs.
    pub(crate) fn new(
        store: Shared,
        pipeline: Pipeline<Shared>,
        settings: Settings,
        clock: SharedClock,
    ) -> Self {
        Relay {
            ledger: AsyncJobLedger::new(JobLedger::new(Arc::clone(&store), clock.clone())),
            locks: AsyncJobLock::new(JobLock::new(Arc::clone(&store), clock)),
            jobs: AsyncJobState::new(pipeline.jobs().clone()),
            store,
            pipeline,
            queued: Arc::default(),
            settings,
        }
    }

    /// The pipeline that runs the jobs.
    pub(crate) fn pipeline(&self) -> &Pipeline<Shared> {
        &self.pipeline
    }

    /// Creates a job, or finds the one created for the same idempotency key,
    /// charging the account one credit only the first time.
    ///
    /// The job id is chosen before the reservation and stored in it, and the
    /// job is created after: a crash in between leaves a reservation whose job
    /// does not exist yet, and the client's retry (or a concurrent duplicate)
    /// creates it under the same id. Of two creators one wins; the other finds
    /// the job there.
    ///
    /// A new job takes one of the account's queued-job slots in the same step
    /// that charges it ([`RelayError::TooManyQueued`] beyond the cap, with
    /// nothing charged); a retry of a charged request is never refused by the
    /// cap, it only finds its job.
    pub(crate) async fn create_job(&self, request: &JobRequest<'_>) -> Result<Created, RelayError> {
        // Refused before the charge: a job that cannot be created must not
        // cost a credit.
        check_job_request(request)?;
        let fresh = uuid::Uuid::now_v7().to_string();
        let key = request.key.unwrap_or(&fresh);
        let charge = ChargeRequest::new()
            .meta(meta::BACKEND, request.kind)
            .fingerprint(format!("sha256:{:x}", Sha256::digest(request.body)))
            .meta(meta::JOB, fresh.as_str());
        let slot = Arc::new(Mutex::new(None));
        let debit = self.debit_and_count(request.account, &fresh, &slot);
        let outcome = self
            .ledger
            .reserve_with(request.account, key, &charge, debit)
            .await?;
        let (reservation, charged) = match outcome {
            Reserve::New(r) => (r, true),
            Reserve::Existing(r) | Reserve::InFlight(r) => (r, false),
        };
        let job_id = job_of(&reservation)?;
        if self.jobs.get(&job_id).await?.is_some() {
            return Ok(Created { job_id, charged });
        }
        let mut new = NewJob::new(request.kind)
            .id(job_id.as_str())
            .owner(request.account)
            .meta(meta::ACCOUNT, request.account)
            .meta(meta::CHARGE_KEY, key);
        if let Some(stage) = request.fail_at {
            new = new.meta(meta::FAIL_AT, stage);
        }
        if let Some(input) = request.input {
            new = new.meta(meta::INPUT, input);
        }
        match self.enqueue(&job_id, new).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {} // a duplicate created it first
            Err(e) => return Err(e.into()),
        }
        // The job exists now and counts until it finishes: created by this
        // request (its slot stays taken), or by a duplicate or an earlier
        // request that died before creating it (counted here).
        self.queued.add(request.account, &job_id);
        let slot = slot.lock().take();
        if job_id == fresh
            && let Some(slot) = slot
        {
            slot.keep();
        }
        // A runner may have run the job to its end already, and `settle`
        // stopped counting it before it was counted here: it would count for
        // ever. `settle` runs only once the job's end is stored, so a job
        // read as finished now was settled, or is about to be.
        // Bookkeeping only: a failed read must not fail a request that
        // charged and made its job.
        match self.jobs.get(&job_id).await {
            Ok(Some(job)) if job.status.is_finished() => {
                self.queued.remove(request.account, &job_id);
            }
            Ok(_) => {}
            Err(e) => eprintln!("relay: reading job {job_id} back after counting it: {e}"),
        }
        Ok(Created { job_id, charged })
    }

    /// The effect of a new reservation for job `fresh` of `account`: the
    /// debit of one credit, and one of the account's queued-job slots, put in
    /// `slot`. It runs on jobsafe's pool, once per attempt at a new
    /// reservation and never for a retry of one; the slot is taken once.
    fn debit_and_count(
        &self,
        account: &str,
        fresh: &str,
        slot: &Arc<Mutex<Option<QueuedSlot>>>,
    ) -> impl FnMut(&Reservation) -> Result<Vec<BatchOp>, RelayError> + Send + 'static {
        let (relay, account, fresh) = (self.clone(), account.to_owned(), fresh.to_owned());
        let slot = Arc::clone(slot);
        move |_| {
            let debit = relay.debit(&account)?;
            let mut slot = slot.lock();
            if slot.is_none() {
                *slot = Some(relay.take_queued_slot(&account, &fresh)?);
            }
            Ok(debit)
        }
    }

    /// Creates job `new` as [`Pipeline::enqueue`] does, through the async
    /// face: its subject is its own id, a UUID made here and so a valid key.
    /// Created through the pipeline's job records, it wakes the runner.
    async fn enqueue(&self, job_id: &str, new: NewJob) -> jobsafe::Result<Job> {
        let subject = Pipeline::SUBJECT_FIELD;
        self.jobs.create(new.meta(subject, job_id)).await
    }

    /// What `account` may see of job `id`; `None` if there is no such job or
    /// it belongs to another account (the same answer, so that a client
    /// learns nothing of other accounts' job ids).
    pub(crate) async fn client_view(
        &self,
        account: &str,
        id: &str,
    ) -> Result<Option<ClientJob>, RelayError> {
        Ok(self
            .owned_job(account, id)
            .await?
            .map(|job| job.client_view()))
    }

    /// Job `id` if it belongs to `account`. Job ids are UUIDs this relay
    /// made: anything else names no job, and never reaches the store.
    async fn owned_job(&self, account: &str, id: &str) -> Result<Option<Job>, RelayError> {
        if uuid::Uuid::try_parse(id).is_err() {
            return Ok(None);
        }
        let job = self.jobs.get(id).await?;
        Ok(job.filter(|job| job.owner.as_deref() == Some(account)))
    }

    /// Job `id`'s events after sequence number `after`, then live ones, ending
    /// after its terminal event; `None` if there is no such job of `account`.
    /// The stream holds no thread while it waits for the job.
    ///
    /// An `after` past the job's last event gives a stream that ends at once
    /// if the job's stream has ended, and is refused
    /// ([`RelayError::ResumePastLastEvent`]) if the job goes on: the client
    /// cannot have seen such an event, and going on from the job's last one
    /// would hide what it missed.
    pub(crate) async fn subscribe(
        &self,
        account: &str,
        id: &str,
        after: u64,
    ) -> Result<Option<Events>, RelayError> {
        if self.owned_job(account, id).await?.is_none() {
            return Ok(None);
        }
        match self.jobs.subscribe(id, after).await {
            Ok(events) => Ok(Some(events)),
            Err(Error::JobNotFound { .. }) => Ok(None), // purged meanwhile
            // The one refusal `subscribe` documents for a job that exists.
            Err(Error::InvalidArgument(_)) => Err(RelayError::ResumePastLastEvent),
            Err(e) => Err(e.into()),
        }
    }

    /// The credits `account` has left.
    pub(crate) async fn balance(&self, account: &str) -> Result<u64, RelayError> {
        let key = balance_key(account)?;
        let entry = self.store.get_async(&key).await?;
        Ok(self.parse_balance(&key, entry)?.0)
    }

    /// Starts an index job on `resource` of `account`, unless one holds its
    /// lock: then the holder's record comes back (the 409 case), from the same
    /// compare-and-set that would have taken the lock.
    pub(crate) async fn start_index(
        &self,
        account: &str,
        resource: &str,
        actor: &str,
    ) -> Result<IndexStart, RelayError> {
        if resource.is_empty() || resource.len() > MAX_RESOURCE_LEN {
            return Err(RelayError::BadRequest(format!(
                "a resource is 1 to {MAX_RESOURCE_LEN} bytes long"
            )));
        }
        let key = Key::new(["index", account, resource])?;
        let job_id = uuid::Uuid::now_v7().to_string();
        let slot = self.take_queued_slot(account, &job_id)?;
        let request = LockRequest::new()
            .actor(actor)
            .meta(meta::JOB, job_id.as_str());
        let guard = match self
            .locks
            .acquire(&key, self.settings.index_ttl, &request)
            .await?
        {
            AsyncAcquire::Held(holder) => return Ok(IndexStart::Held(Box::new(holder))),
            AsyncAcquire::Acquired(guard) => guard,
        };
        let token = guard.token().get();
        let expires_ms = guard.record().expires_ms;
        // From here the job owns the lock and releases it when it ends; if the
        // process dies before the job exists, the lease frees it.
        let handle = guard.into_handle();
        let new = NewJob::new("index")
            .id(job_id.as_str())
            .owner(account)
            .meta(meta::ACCOUNT, account)
            .meta(meta::INDEX_LOCK, encode_handle(&handle)?);
        if let Err(e) = self.enqueue(&job_id, new).await {
            let _ = self.locks.release(&handle).await;
            return Err(e.into());
        }
        slot.keep();
        Ok(IndexStart::Started {
            job_id,
            token,
            expires_ms,
        })
    }

    /// What a job's end requires: a failed job's credit goes back to its
    /// account, and an index job's lock is released. Both are idempotent, so
    /// this runs after every run and again at startup for every finished job,
    /// in case the process died in between. Blocking: for the runner's thread
    /// and startup.
    pub(crate) fn settle(&self, job: &Job) -> Result<(), RelayError> {
        if !job.status.is_finished() {
            return Ok(());
        }
        if let Some(account) = account_of(job) {
            self.queued.remove(account, &job.id);
        }
        if let Some(handle) = job.metadata.get(meta::INDEX_LOCK) {
            // Release only our own lock: never another job's.
            if let Ok(handle) = serde_json::from_value::<LockHandle>(handle.clone()) {
                self.locks.blocking().release(&handle)?;
            }
        }
        if job.status == JobStatus::Failed {
            self.refund(job)?;
        }
        Ok(())
    }

    /// Gives back the credit of failed job `job`, once: the reservation's
    /// removal and the balance change are one batch, and a reservation that
    /// now belongs to another job (the key was reused after an earlier refund)
    /// is left alone.
    fn refund(&self, job: &Job) -> Result<(), RelayError> {
        let text = |field| job.metadata.get(field).and_then(|v| v.as_str());
        let (Some(account), Some(key)) = (text(meta::ACCOUNT), text(meta::CHARGE_KEY)) else {
            return Ok(());
        };
        let refunded = self
            .ledger
            .blocking()
            .refund_with(account, key, |reservation| {
                if job_of(reservation)? != job.id {
                    return Err(RelayError::OtherJob);
                }
                self.credit(account)
            });
        match refunded {
            Ok(_) | Err(RelayError::OtherJob) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The jobs left unfinished (queued, or running when the last process
    /// died), after settling every finished one. On a store of its own this
    /// process is the store's only user (the state directory is locked), so
    /// every subject lock an unfinished job's runner held belongs to a dead
    /// process: it is freed, and the job resumes at once instead of a lease
    /// later. On a store shared by relays (PostgreSQL) the locks may be live
    /// relays', and are left to their leases; every relay's unfinished jobs
    /// then count against the accounts' caps here. Blocking: it runs before
    /// the relay serves anything.
    pub(crate) fn recover(&self) -> Result<Vec<String>, RelayError> {
        let mut unfinished = Vec::new();
        let all = self.pipeline.jobs().list(&Default::default())?;
        for (key, e) in &all.unreadable {
            eprintln!("relay: job record {key} cannot be read, left alone: {e}");
        }
        for job in all.jobs {
            if job.status.is_finished() {
                self.settle(&job)?;
                continue;
            }
            // A runner that died between taking the lock and starting the job,
            // or after requeueing it, left the lock on a queued job too. Not
            // where other relays run jobs of the same store: the lock may be
            // theirs, and their leases end by themselves.
            if !self.settings.shared_by_relays {
                let subject = Pipeline::<Shared>::subject_of(&job);
                self.pipeline.locks().force_release(&Key::new([subject])?)?;
            }
            if let Some(account) = account_of(&job) {
                self.queued.add(account, &job.id);
            }
            unfinished.push(job.id);
        }
        Ok(unfinished)
    }

    /// Counts job `id` as one of `account`'s unfinished jobs, unless the
    /// account has as many as it may have.
    fn take_queued_slot(&self, account: &str, id: &str) -> Result<QueuedSlot, RelayError> {
        QueuedJobs::take(&self.queued, account, id, self.settings.max_queued)
    }

    fn debit(&self, account: &str) -> Result<Vec<BatchOp>, RelayError> {
        let key = balance_key(account)?;
        let (left, expect) = self.read_balance(&key)?;
        let left = left.checked_sub(1).ok_or(RelayError::NoCredits)?;
        Ok(vec![put_balance(key, left, expect)])
    }

    fn credit(&self, account: &str) -> Result<Vec<BatchOp>, RelayError> {
        let key = balance_key(account)?;
        let (left, expect) = self.read_balance(&key)?;
        Ok(vec![put_balance(key, left.saturating_add(1), expect)])
    }

    /// The balance at `key` (the starting grant while absent), and the
    /// precondition that guards a change of it. Blocking: for the ledger's
    /// effects, which run on jobsafe's pool.
    fn read_balance(&self, key: &Key) -> Result<(u64, Expect), RelayError> {
        let entry = self.store.get(key)?;
        self.parse_balance(key, entry)
    }

    /// The balance `entry` holds at `key`, as [`Relay::read_balance`] reads it.
    fn parse_balance(&self, key: &Key, entry: Option<Entry>) -> Result<(u64, Expect), RelayError> {
        match entry {
            None => Ok((self.settings.credits, Expect::Absent)),
            Some(entry) => {
                let left = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| {
                        RelayError::Internal(Error::InvalidArgument(format!(
                            "the balance at {key} is not a number"
                        )))
                    })?;
                Ok((left, Expect::Version(entry.version)))
            }
        }
    }
}

impl RelayError {
    /// The HTTP status and the message a client may see.
    pub(crate) fn client_message(&self) -> (u16, &str) {
        match self {
            RelayError::NoCredits => (402, "no credits left"),
            RelayError::KeyReused => (422, "this idempotency key was used for a different request"),
            RelayError::TooManyQueued => (429, "too many unfinished jobs: wait for one to end"),
            RelayError::BadRequest(why) => (400, why),
            RelayError::Refused(_) => (400, "invalid request"),
            RelayError::ResumePastLastEvent => (
                400,
                "the stream cannot resume after an event the job does not have yet: \
                 reconnect from an id it sent, or from the start",
            ),
            RelayError::OtherJob | RelayError::Internal(_) => (500, "internal error"),
        }
    }
}

/// Refuses a job request that could not be recorded as a job, before anything
/// is charged for it.
fn check_job_request(request: &JobRequest<'_>) -> Result<(), RelayError> {
    if request.kind.is_empty() || request.kind.len() > Job::MAX_KIND_LEN {
        return Err(RelayError::BadRequest(format!(
            "a job kind is 1 to {} bytes long",
            Job::MAX_KIND_LEN
        )));
    }
    if request
        .input
        .is_some_and(|input| input.len() > MAX_INPUT_LEN)
    {
        return Err(RelayError::BadRequest(format!(
            "input is at most {MAX_INPUT_LEN} bytes long"
        )));
    }
    if request
        .fail_at
        .is_some_and(|stage| !STAGES.contains(&stage))
    {
        return Err(RelayError::BadRequest(format!(
            "fail_at names no stage (one of {})",
            STAGES.join(", ")
        )));
    }
    Ok(())
}

/// The account job `job` was created by.
fn account_of(job: &Job) -> Option<&str> {
    job.metadata.get(meta::ACCOUNT).and_then(|v| v.as_str())
}

fn balance_key(account: &str) -> Result<Key, Error> {
    Key::new(["credits", account])
}

fn put_balance(key: Key, left: u64, expect: Expect) -> BatchOp {
    BatchOp::Put {
        key,
        value: left.to_string().into_bytes(),
        expect,
    }
}

/// `handle` as job metadata, for [`Relay::settle`] to release the lock with.
fn encode_handle(handle: &LockHandle) -> Result<serde_json::Value, RelayError> {
    serde_json::to_value(handle).map_err(|e| {
        RelayError::Internal(Error::InvalidArgument(format!(
            "the index lock's handle cannot be encoded: {e}"
        )))
    })
}

/// The job a reservation paid for.
fn job_of(reservation: &Reservation) -> Result<String, RelayError> {
    match reservation.metadata.get(meta::JOB).and_then(|v| v.as_str()) {
        Some(id) => Ok(id.to_owned()),
        None => Err(RelayError::Internal(Error::InvalidArgument(format!(
            "reservation {} of {} names no job",
            reservation.job_id, reservation.account
        )))),
    }
}

/// Each account's unfinished jobs, for the cap on them: counted from the store
/// at start ([`Relay::recover`]), added to as jobs are created and taken from
/// as they finish ([`Relay::settle`]). Sets of ids, so that counting a job
/// twice (a retry, a run settled again) changes nothing.
#[derive(Debug, Default)]
struct QueuedJobs {
    by_account: Mutex<HashMap<String, HashSet<String>>>,
}

impl QueuedJobs {
    /// Counts job `id` for `account` if the account has fewer than `cap`
    /// jobs counted. The count is given back when the returned slot drops,
    /// unless it is [kept](QueuedSlot::keep).
    fn take(
        this: &Arc<QueuedJobs>,
        account: &str,
        id: &str,
        cap: usize,
    ) -> Result<QueuedSlot, RelayError> {
        let mut by_account = this.by_account.lock();
        let jobs = by_account.entry(account.to_owned()).or_default();
        if jobs.len() >= cap && !jobs.contains(id) {
            return Err(RelayError::TooManyQueued);
        }
        jobs.insert(id.to_owned());
        Ok(QueuedSlot {
            jobs: Arc::clone(this),
            account: account.to_owned(),
            id: Some(id.to_owned()),
        })
    }

    /// Counts job `id` for `account`, whatever the cap: the job exists.
    fn add(&self, account: &str, id: &str) {
        let mut by_account = self.by_account.lock();
        let jobs = by_account.entry(account.to_owned()).or_default();
        jobs.insert(id.to_owned());
    }

    /// Stops counting job `id` of `account`.
    fn remove(&self, account: &str, id: &str) {
        let mut by_account = self.by_account.lock();
        if let Some(jobs) = by_account.get_mut(account) {
            jobs.remove(id);
            if jobs.is_empty() {
                by_account.remove(account);
            }
        }
    }
}

/// A job counted against its account's cap before it exists: given back on
/// drop (the request failed) unless kept (the job was created).
#[derive(Debug)]
struct QueuedSlot {
    jobs: Arc<QueuedJobs>,
    account: String,
    /// The job counted; `None` once kept.
    id: Option<String>,
}

impl QueuedSlot {
    /// Keeps the job counted: it exists now, and [`Relay::settle`] stops
    /// counting it when it finishes.
    fn keep(mut self) {
        self.id = None;
    }
}

impl Drop for QueuedSlot {
    fn drop(&mut self) {
        if let Some(id) = &self.id {
            self.jobs.remove(&self.account, id);
        }
    }
}
