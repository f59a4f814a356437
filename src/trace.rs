//! What jobsafe tells an operator through the [`tracing`] crate, with the
//! feature `tracing`: a span for each store call and each stage run, and an
//! event for each decision an operator asks about (a lease lost, a stage
//! failed and retried, a job moved). Without the feature every part of this
//! compiles to nothing; with it and no subscriber listening, each costs a
//! check of a static flag.
//!
//! Targets are `jobsafe::store` for store calls, `jobsafe::pipeline` for
//! stage runs, and the module paths for the rest (`jobsafe::lock`, ...), so a
//! filter such as `jobsafe=info,jobsafe::store=debug` picks what to see. The
//! crate documentation's "Cargo features" section lists every field.
//!
//! # Identifiers
//!
//! Job ids, account names, lock keys, the key of a record and the messages
//! of a stage's errors are the application's data: often personal data (a
//! customer's account) or secrets (a token used as an id), which logs must
//! not collect by default. So by default a field that would carry one
//! carries its [`fingerprint`] instead, `h:` and 16 hex digits: the same
//! value always gives the same fingerprint, so the events of one job can
//! still be followed and matched to a known id, but the id is not in the
//! logs. The namespace of a store call (a key's first segment: `jobs`,
//! `locks`, or the table-like name an application chose) is shown as is.
//! [`show_identifiers`] turns the values on, for the whole process.
//!
//! ```
//! # #[cfg(feature = "tracing")] {
//! // A service whose logs may hold its users' ids:
//! jobsafe::trace::show_identifiers(true);
//! assert!(jobsafe::trace::identifiers_shown());
//! # }
//! ```
//!
//! To find a job's events without turning them on, look for its fingerprint:
//!
//! ```
//! # #[cfg(feature = "tracing")] {
//! let fingerprint = jobsafe::trace::fingerprint("episode-1");
//! assert!(fingerprint.starts_with("h:"));
//! assert_eq!(fingerprint.len(), 18);
//! # }
//! ```

#[cfg(feature = "tracing")]
use std::cell::Cell;
#[cfg(feature = "tracing")]
use std::fmt;
#[cfg(feature = "tracing")]
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Result;
use crate::key::{Key, Prefix};
use crate::pipeline::RunOutcome;
use crate::store::Batch;

/// Emits a `tracing` event at `$level` (`info`, `warn`, ...) with the feature
/// `tracing`; nothing without it. The arguments are `tracing`'s: fields, then
/// the message. A value the application supplied goes through [`private`].
macro_rules! report {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        ::tracing::$level!($($arg)+);
    }};
}
pub(crate) use report;

// ---------------------------------------------------------------------------
// Identifiers
// ---------------------------------------------------------------------------

#[cfg(feature = "tracing")]
static SHOW_IDENTIFIERS: AtomicBool = AtomicBool::new(false);

/// Whether the fields of jobsafe's spans and events show the identifiers and
/// keys the application supplied (job ids, accounts, lock keys, record keys)
/// and the messages of stage errors as they are (`true`), or only their
/// [`fingerprint`] (`false`, the default). For the whole process, from the
/// next event on.
///
/// Hidden by default because these values are often personal data (an
/// account is a customer) or secrets (an id made of a token), and logs are
/// kept longer and read more widely than the store. Turn them on where the
/// logs may hold them.
///
/// ```
/// jobsafe::trace::show_identifiers(true);
/// assert!(jobsafe::trace::identifiers_shown());
/// jobsafe::trace::show_identifiers(false);
/// ```
#[cfg(feature = "tracing")]
pub fn show_identifiers(show: bool) {
    SHOW_IDENTIFIERS.store(show, Ordering::Relaxed);
}

/// Whether [`show_identifiers`] turned identifiers on.
///
/// ```
/// // Off unless the application turns them on.
/// # jobsafe::trace::show_identifiers(false);
/// assert!(!jobsafe::trace::identifiers_shown());
/// ```
#[cfg(feature = "tracing")]
pub fn identifiers_shown() -> bool {
    SHOW_IDENTIFIERS.load(Ordering::Relaxed)
}

/// What a field shows for `value` while identifiers are hidden: `h:` and the
/// first 8 bytes of its SHA-256, in hex. The same value always gives the same
/// fingerprint, so an operator can follow one job's events, or look for the
/// events of an id they know, without the logs holding the id.
///
/// A key is fingerprinted as it displays: its segments joined by `/`.
///
/// ```
/// use jobsafe::trace::fingerprint;
///
/// assert_eq!(fingerprint("job-1"), fingerprint("job-1"));
/// assert_ne!(fingerprint("job-1"), fingerprint("job-2"));
/// assert!(!fingerprint("job-1").contains("job-1"));
/// ```
#[cfg(feature = "tracing")]
pub fn fingerprint(value: &str) -> String {
    Private(value).hidden().to_string()
}

/// A value the application supplied, as a field shows it: as is once
/// [`show_identifiers`] turned identifiers on, its [`fingerprint`] otherwise.
/// Formatted only when a subscriber records the field.
#[cfg(feature = "tracing")]
pub(crate) fn private<T: fmt::Display>(value: T) -> Private<T> {
    Private(value)
}

/// See [`private`].
#[cfg(feature = "tracing")]
pub(crate) struct Private<T>(T);

#[cfg(feature = "tracing")]
impl<T: fmt::Display> Private<T> {
    fn hidden(&self) -> Fingerprint {
        use fmt::Write as _;
        use sha2::Digest as _;
        let mut hasher = Hasher(sha2::Sha256::new());
        // Writing into a hasher cannot fail.
        let _ = write!(hasher, "{}", self.0);
        let digest = hasher.0.finalize();
        let mut first = [0; 8];
        first.copy_from_slice(&digest[..8]);
        Fingerprint(first)
    }
}

#[cfg(feature = "tracing")]
impl<T: fmt::Display> fmt::Display for Private<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if identifiers_shown() {
            self.0.fmt(f)
        } else {
            self.hidden().fmt(f)
        }
    }
}

#[cfg(feature = "tracing")]
struct Fingerprint([u8; 8]);

#[cfg(feature = "tracing")]
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("h:")?;
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// Hashes what is written into it, so that a value is fingerprinted as it
/// displays without being formatted into a string first.
#[cfg(feature = "tracing")]
struct Hasher(sha2::Sha256);

#[cfg(feature = "tracing")]
impl fmt::Write for Hasher {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        sha2::Digest::update(&mut self.0, s.as_bytes());
        Ok(())
    }
}

/// An error as a field shows it: its whole message once [`show_identifiers`]
/// turned identifiers on. Otherwise what failed, in the library's words, with
/// the key it names fingerprinted and without paths (a store's file names
/// and an artifact's directory are made of keys and job ids) or free text
/// (a reason that may quote a value).
#[cfg(feature = "tracing")]
pub(crate) fn error(e: &crate::Error) -> ErrorField<'_> {
    ErrorField(e)
}

/// See [`error`].
#[cfg(feature = "tracing")]
pub(crate) struct ErrorField<'a>(&'a crate::Error);

#[cfg(feature = "tracing")]
impl fmt::Display for ErrorField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if identifiers_shown() {
            self.0.fmt(f)
        } else {
            redacted(self.0, f)
        }
    }
}

/// Every variant named, so that a new one is not shown unredacted by default.
#[cfg(feature = "tracing")]
fn redacted(e: &crate::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    use crate::Error as E;
    match e {
        E::InvalidKey { .. } => f.write_str("invalid key"),
        E::Conflict { key, .. } => write!(f, "conflict on {}", private(key)),
        E::Corrupt { key, .. } => write!(f, "corrupt record at {}", private(key)),
        E::CorruptFile { .. } => f.write_str("corrupt store file"),
        E::Io { step, source, .. } => write!(f, "{step}: {}", source.kind()),
        E::NotDurable { source, .. } => write!(
            f,
            "written, but the fsync of its directory failed: {}",
            source.kind()
        ),
        E::AlreadyExists { .. } => f.write_str("the file already exists"),
        E::Poisoned { .. } => f.write_str("store poisoned by an earlier failed fsync"),
        E::StoreInUse { exclusive, .. } => f.write_str(if *exclusive {
            "store open in another handle: cannot open it exclusively"
        } else {
            "store held exclusively by another handle"
        }),
        E::Codec { action, key, .. } => write!(f, "cannot {action} record for {}", private(key)),
        E::UnsupportedSchema {
            key,
            found,
            supported,
        } => write!(
            f,
            "record at {} has schema version {found}, newer than supported {supported}",
            private(key)
        ),
        E::StaleToken {
            presented, newest, ..
        } => write!(
            f,
            "stale fencing token: presented {presented}, newest seen {newest}"
        ),
        E::LockTimeout { key, waited_ms, .. } => write!(
            f,
            "lock {} still held after waiting {waited_ms} ms",
            private(key)
        ),
        E::FingerprintMismatch { key, .. } => write!(
            f,
            "{} is reserved for a request with another fingerprint",
            private(key)
        ),
        E::JobNotFound { id } => write!(f, "no job {}", private(id)),
        E::InvalidTransition { id, status, action } => {
            write!(f, "job {} is {status}: cannot {action}", private(id))
        }
        E::StaleWorker { id, .. } => write!(f, "stale worker for job {}", private(id)),
        E::BatchPending { source, .. } => {
            f.write_str("batch committed but not yet applied: ")?;
            redacted(source, f)
        }
        E::InvalidArgument(_) => f.write_str("invalid argument"),
        E::TooLarge {
            what, size, limit, ..
        } => write!(f, "{what} is {size} bytes, over the limit of {limit} bytes"),
        E::Database {
            step, transient, ..
        } => write!(f, "{step}: database server (transient: {transient})"),
        // The object's path holds the job's and subject's directory names.
        E::ObjectStore {
            step, transient, ..
        } => write!(f, "{step}: object storage (transient: {transient})"),
        E::Ambiguous {
            operation,
            key,
            source,
            ..
        } => {
            write!(
                f,
                "{operation} on {} may or may not have taken effect: ",
                private(key)
            )?;
            redacted(source, f)
        }
        E::CorruptRow { table, .. } => write!(f, "corrupt row in table {table}"),
    }
}

// ---------------------------------------------------------------------------
// Flushes
// ---------------------------------------------------------------------------

/// Set once a `store` span is enabled: from then on flushes are counted for
/// the store call under way on their thread. Until then, a flush costs one
/// load of this flag.
#[cfg(feature = "tracing")]
static COUNTING: AtomicBool = AtomicBool::new(false);

#[cfg(feature = "tracing")]
thread_local! {
    /// What the store call under way on this thread has flushed so far;
    /// `None` outside a traced store call.
    static CALL: Cell<Option<Flushes>> = const { Cell::new(None) };
}

#[cfg(feature = "tracing")]
#[derive(Clone, Copy, Default)]
struct Flushes {
    /// fsync and fdatasync calls made, or waited for in a group commit.
    count: u32,
    /// Whether the call led a group commit or joined one.
    group: Option<Group>,
}

#[cfg(feature = "tracing")]
#[derive(Clone, Copy)]
enum Group {
    Led,
    Joined,
}

/// Counts a flush (an fsync or fdatasync of a file or directory) against
/// the store call under way on this thread. Called by the standard vfs,
/// where the system is asked to flush.
#[inline]
pub(crate) fn flushed() {
    #[cfg(feature = "tracing")]
    if COUNTING.load(Ordering::Relaxed) {
        add_flushes(1);
    }
}

#[cfg(feature = "tracing")]
fn add_flushes(count: u32) {
    CALL.with(|call| {
        if let Some(mut flushes) = call.get() {
            flushes.count = flushes.count.saturating_add(count);
            call.set(Some(flushes));
        }
    });
}

/// The flushes counted so far for the store call under way on this thread:
/// a group commit's leader takes the difference across its commit, to hand
/// to the writers that joined it. 0 when nothing counts.
#[inline]
pub(crate) fn flushes_so_far() -> u32 {
    #[cfg(feature = "tracing")]
    if COUNTING.load(Ordering::Relaxed) {
        return CALL.with(|call| call.get().map_or(0, |flushes| flushes.count));
    }
    0
}

/// The store call under way on this thread leads a group commit.
#[inline]
pub(crate) fn led_group() {
    #[cfg(feature = "tracing")]
    set_group(Group::Led);
}

/// The store call under way on this thread joined a group commit whose
/// leader made `flushes` flushes.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
#[inline]
pub(crate) fn joined_group(flushes: u32) {
    #[cfg(feature = "tracing")]
    if COUNTING.load(Ordering::Relaxed) {
        set_group(Group::Joined);
        add_flushes(flushes);
    }
}

#[cfg(feature = "tracing")]
fn set_group(group: Group) {
    if COUNTING.load(Ordering::Relaxed) {
        CALL.with(|call| {
            if let Some(mut flushes) = call.get() {
                flushes.group = Some(group);
                call.set(Some(flushes));
            }
        });
    }
}

/// Counts the flushes of `call`, a store call on this thread; a store call
/// inside it (a quarantine's read, say) adds its own to the outer one's.
#[cfg(feature = "tracing")]
fn counting_flushes<T>(call: impl FnOnce() -> T) -> (T, Flushes) {
    if !COUNTING.load(Ordering::Relaxed) {
        COUNTING.store(true, Ordering::Relaxed);
    }
    let outer = CALL.with(|c| c.replace(Some(Flushes::default())));
    let result = call();
    let own = CALL.with(|c| c.replace(outer)).unwrap_or_default();
    if outer.is_some() {
        add_flushes(own.count);
    }
    (result, own)
}

// ---------------------------------------------------------------------------
// Store calls
// ---------------------------------------------------------------------------

/// A store backend, as its calls' spans name it, and what it can say of its
/// flushes.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct Backend {
    name: &'static str,
    flushes: FlushReport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
enum FlushReport {
    /// The flushes happen elsewhere (a database server's): no `flushes`.
    Unknown,
    /// `flushes`: those made through the standard vfs on the call's thread.
    Counted,
    /// `flushes` and `group`: writes go through a group commit, whose
    /// leader's flushes count for every call of the group.
    Grouped,
}

impl Backend {
    pub(crate) const LOG: Backend = Backend::new("log", FlushReport::Grouped);
    pub(crate) const DIR: Backend = Backend::new("dir", FlushReport::Counted);
    pub(crate) const MEM: Backend = Backend::new("mem", FlushReport::Counted);
    #[cfg(feature = "postgres")]
    pub(crate) const POSTGRES: Backend = Backend::new("postgres", FlushReport::Unknown);
    /// `LogStore`'s async writes: the flushes are made by the pool thread that
    /// leads their group, and are not counted for them.
    #[cfg(feature = "async")]
    pub(crate) const LOG_ASYNC: Backend = Backend::new("log", FlushReport::Unknown);

    const fn new(name: &'static str, flushes: FlushReport) -> Backend {
        Backend { name, flushes }
    }
}

/// Runs one call of a store's API inside a `debug` span `store` naming the
/// backend, the operation and the namespace of `subject` (a key's, a
/// prefix's or a batch's first segment), and ends it with a `debug` event
/// that gives the outcome, the duration and, where the backend can say, the
/// flushes the call made or waited for.
///
/// The namespace is only worked out, and flushes only counted, when a
/// subscriber listens.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
#[inline(always)]
pub(crate) fn store_call<T>(
    backend: Backend,
    operation: &'static str,
    subject: &impl Namespaced,
    call: impl FnOnce() -> Result<T>,
) -> Result<T> {
    // With no subscriber listening at `debug`, all a call costs is one load
    // of the global level filter, inlined into the store's method: not even
    // a disabled span is made.
    #[cfg(feature = "tracing")]
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        return store_call_traced(backend, operation, subject, call);
    }
    call()
}

/// [`store_call`] with a subscriber listening: kept out of line, so that the
/// untraced path stays small.
#[cfg(feature = "tracing")]
#[inline(never)]
fn store_call_traced<T>(
    backend: Backend,
    operation: &'static str,
    subject: &impl Namespaced,
    call: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let span = store_span(backend, operation, subject);
    if span.is_disabled() {
        return call();
    }
    let _entered = span.enter();
    let started = std::time::Instant::now();
    let (result, flushes) = counting_flushes(call);
    store_call_ended(backend, &result, started, flushes);
    result
}

/// [`store_call`] for a call of the async face made as a future, for a
/// backend whose flushes happen elsewhere (a database server's, a pool
/// thread's): its span is entered each time the future is polled, and its
/// event has no `flushes`.
#[cfg(feature = "async")]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) async fn store_call_async<T>(
    backend: Backend,
    operation: &'static str,
    subject: impl Namespaced,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    #[cfg(feature = "tracing")]
    {
        use tracing::Instrument;

        if !tracing::level_enabled!(tracing::Level::DEBUG) {
            return call.await;
        }
        let span = store_span(backend, operation, &subject);
        if span.is_disabled() {
            return call.await;
        }
        let started = std::time::Instant::now();
        let result = call.instrument(span.clone()).await;
        let _entered = span.enter();
        store_call_ended(backend, &result, started, Flushes::default());
        result
    }
    #[cfg(not(feature = "tracing"))]
    call.await
}

/// `future` under the span current where this is called, wherever it is
/// polled: a task spawned for a call stays under its caller's span.
#[cfg(all(feature = "async", feature = "postgres"))]
pub(crate) fn in_current_span<F: std::future::Future>(
    future: F,
) -> impl std::future::Future<Output = F::Output> {
    #[cfg(feature = "tracing")]
    {
        tracing::Instrument::in_current_span(future)
    }
    #[cfg(not(feature = "tracing"))]
    future
}

/// The `store` span of a call, its namespace worked out only when a
/// subscriber listens.
#[cfg(feature = "tracing")]
fn store_span(
    backend: Backend,
    operation: &'static str,
    subject: &impl Namespaced,
) -> tracing::Span {
    let span = tracing::debug_span!(
        target: "jobsafe::store",
        "store",
        backend = backend.name,
        operation,
        namespace = tracing::field::Empty
    );
    if !span.is_disabled() {
        span.record("namespace", subject.namespace());
    }
    span
}

/// The event that ends a store call, inside its span: outcome, duration and,
/// where the backend can say, flushes.
#[cfg(feature = "tracing")]
fn store_call_ended<T>(
    backend: Backend,
    result: &Result<T>,
    started: std::time::Instant,
    flushes: Flushes,
) {
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (outcome, failure) = match result {
        Ok(_) => ("ok", None),
        Err(e) => (outcome_of(e), Some(tracing::field::display(error(e)))),
    };
    let count = (backend.flushes != FlushReport::Unknown).then_some(flushes.count);
    let role = match flushes.group {
        Some(Group::Led) => "led",
        Some(Group::Joined) => "joined",
        None => "none",
    };
    let group = (backend.flushes == FlushReport::Grouped).then_some(role);
    tracing::debug!(
        target: "jobsafe::store",
        micros,
        outcome,
        error = failure,
        flushes = count,
        group,
        "store call"
    );
}

/// The class of a store call's failure, as a field an operator can count by.
#[cfg(feature = "tracing")]
fn outcome_of(e: &crate::Error) -> &'static str {
    if e.is_conflict() {
        "conflict"
    } else if e.is_ambiguous() {
        "ambiguous"
    } else if e.is_transient() {
        "transient"
    } else {
        "failed"
    }
}

/// What a store call is about, named in its span by its namespace: the
/// first segment, which is the namespace of the component that wrote the
/// record, as records are laid out.
pub(crate) trait Namespaced {
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    fn namespace(&self) -> &str;
}

fn first(segments: &[String]) -> &str {
    segments.first().map_or("", String::as_str)
}

impl Namespaced for Key {
    fn namespace(&self) -> &str {
        first(self.segments())
    }
}

impl Namespaced for Prefix {
    fn namespace(&self) -> &str {
        first(self.segments())
    }
}

/// Its subject's, or none.
impl<T: Namespaced> Namespaced for Option<T> {
    fn namespace(&self) -> &str {
        self.as_ref().map_or("", Namespaced::namespace)
    }
}

/// A batch's first operation's.
impl Namespaced for Batch {
    fn namespace(&self) -> &str {
        self.ops()
            .first()
            .map_or("", |op| first(op.key().segments()))
    }
}

// ---------------------------------------------------------------------------
// Stage runs
// ---------------------------------------------------------------------------

/// The span of a stage run.
#[cfg(feature = "tracing")]
macro_rules! stage_span {
    ($name:literal, $stage:expr, $attempt:expr, $job:expr) => {
        tracing::info_span!(
            target: "jobsafe::pipeline",
            $name,
            stage = $stage,
            attempt = $attempt,
            job = %private($job),
        )
    };
}

#[cfg(feature = "tracing")]
thread_local! {
    /// Why the traced stage run under way on this thread failed, once it
    /// has; `None` outside a traced stage run. The run's end event gives it.
    static FAILURE: std::cell::RefCell<Option<Option<StageFailure>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(feature = "tracing")]
struct StageFailure {
    class: &'static str,
    /// The stage's own text: shown through [`private`].
    message: String,
}

/// One run of a pipeline stage (or of the making of a job's result): an
/// `info` span entered on this thread from [`start`](StageRun::start) to
/// [`end`](StageRun::end), which emits the event that gives its outcome.
#[derive(Debug)]
pub(crate) struct StageRun {
    #[cfg(feature = "tracing")]
    span: tracing::span::EnteredSpan,
    #[cfg(feature = "tracing")]
    started: std::time::Instant,
}

impl StageRun {
    /// Enters the span `stage` of the run of `stage` by `attempt` of job `job`.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn start(stage: &str, attempt: u32, job: &str) -> StageRun {
        #[cfg(feature = "tracing")]
        return StageRun::entering(stage_span!("stage", stage, attempt, job));
        #[cfg(not(feature = "tracing"))]
        StageRun {}
    }

    /// Enters the span `result` of the making of job `job`'s result by
    /// `attempt`; `stage` is the last stage, whose failure it counts as.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn start_result(stage: &str, attempt: u32, job: &str) -> StageRun {
        #[cfg(feature = "tracing")]
        return StageRun::entering(stage_span!("result", stage, attempt, job));
        #[cfg(not(feature = "tracing"))]
        StageRun {}
    }

    #[cfg(feature = "tracing")]
    fn entering(span: tracing::Span) -> StageRun {
        if !span.is_disabled() {
            FAILURE.with(|failure| *failure.borrow_mut() = Some(None));
        }
        StageRun {
            span: span.entered(),
            started: std::time::Instant::now(),
        }
    }

    /// Ends the run with an event `stage ended` giving how `ran` ended;
    /// `artifacts` counts what a stage that finished recorded.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn end<T>(
        self,
        ran: &Result<std::result::Result<T, RunOutcome>>,
        artifacts: impl FnOnce(&T) -> Option<usize>,
    ) {
        #[cfg(feature = "tracing")]
        if !self.span.is_disabled() {
            let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let failure = FAILURE.with(|failure| failure.borrow_mut().take().flatten());
            let mut end = StageEnd::of(ran, artifacts);
            // Only where the failure was recorded: a runner that found itself
            // superseded while recording it ends as that.
            if let Some(failure) = failure.as_ref().filter(|_| end.outcome == "failed") {
                end.class = Some(failure.class);
                end.message = Some(&failure.message);
            }
            end.report(micros);
        }
    }
}

/// Tells the traced stage run under way on this thread why it failed, for
/// its end event: the error's `class` (`transient`, `permanent`, or
/// `transient, retries exhausted`) and its message, which is the stage's
/// own text and so shown through [`private`].
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn stage_failed(class: &'static str, message: &str) {
    #[cfg(feature = "tracing")]
    FAILURE.with(|failure| {
        if let Some(slot) = failure.borrow_mut().as_mut() {
            *slot = Some(StageFailure {
                class,
                message: message.to_owned(),
            });
        }
    });
}

/// How a stage run ended, as its end event's fields.
#[cfg(feature = "tracing")]
#[derive(Default)]
struct StageEnd<'a> {
    /// Whether an operator should look: a failure, a lost lease, an error.
    warn: bool,
    outcome: &'static str,
    then: Option<&'static str>,
    class: Option<&'static str>,
    message: Option<&'a str>,
    retry_at_ms: Option<u64>,
    failures: Option<u32>,
    code: Option<&'a str>,
    artifacts: Option<usize>,
    status: Option<crate::jobs::JobStatus>,
    error: Option<&'a crate::Error>,
}

#[cfg(feature = "tracing")]
impl<'a> StageEnd<'a> {
    fn of<T>(
        ran: &'a Result<std::result::Result<T, RunOutcome>>,
        artifacts: impl FnOnce(&T) -> Option<usize>,
    ) -> StageEnd<'a> {
        let outcome = match ran {
            Ok(Ok(done)) => {
                return StageEnd {
                    outcome: "done",
                    artifacts: artifacts(done),
                    ..StageEnd::default()
                };
            }
            Ok(Err(outcome)) => outcome,
            Err(e) => {
                return StageEnd {
                    warn: true,
                    outcome: "error",
                    error: Some(e),
                    ..StageEnd::default()
                };
            }
        };
        match outcome {
            RunOutcome::RetryScheduled {
                retry_at_ms,
                failures,
                error,
                ..
            } => StageEnd {
                warn: true,
                outcome: "failed",
                then: Some("retry"),
                retry_at_ms: Some(*retry_at_ms),
                failures: Some(*failures),
                code: error.error_code(),
                ..StageEnd::default()
            },
            RunOutcome::Failed { error, .. } => StageEnd {
                warn: true,
                outcome: "failed",
                then: Some("failed for good"),
                code: error.error_code(),
                ..StageEnd::default()
            },
            RunOutcome::Cancelled { .. } => StageEnd {
                outcome: "cancelled",
                ..StageEnd::default()
            },
            RunOutcome::Deleted => StageEnd {
                outcome: "deleted",
                ..StageEnd::default()
            },
            RunOutcome::LostLease { .. } => StageEnd {
                warn: true,
                outcome: "lease lost",
                ..StageEnd::default()
            },
            RunOutcome::Superseded { .. } => StageEnd {
                warn: true,
                outcome: "superseded",
                ..StageEnd::default()
            },
            RunOutcome::Abandoned { .. } => StageEnd {
                outcome: "abandoned",
                ..StageEnd::default()
            },
            RunOutcome::NotRunning { status, .. } => StageEnd {
                outcome: "not running",
                status: Some(*status),
                ..StageEnd::default()
            },
            // A run's outcomes that do not end a stage; named should one.
            RunOutcome::Completed => StageEnd {
                outcome: "completed",
                ..StageEnd::default()
            },
            RunOutcome::Busy { .. } | RunOutcome::NotDue { .. } | RunOutcome::NotFound => {
                StageEnd {
                    outcome: "not run",
                    ..StageEnd::default()
                }
            }
        }
    }

    fn report(self, micros: u64) {
        let StageEnd {
            warn,
            outcome,
            then,
            class,
            message,
            retry_at_ms,
            failures,
            code,
            artifacts,
            status,
            error,
        } = self;
        let status = status.map(tracing::field::display);
        // The stage's message when it failed; the store's or the disk's error
        // when the run could not go on.
        let message = message.map(private);
        let error = error.map(crate::trace::error);
        let error = (message.as_ref().map(|m| m as &dyn fmt::Display))
            .or(error.as_ref().map(|e| e as &dyn fmt::Display))
            .map(tracing::field::display);
        if warn {
            tracing::warn!(
                target: "jobsafe::pipeline",
                outcome,
                then,
                retry_at_ms,
                failures,
                class,
                code,
                error,
                micros,
                "stage ended"
            );
        } else {
            tracing::info!(
                target: "jobsafe::pipeline",
                outcome,
                artifacts,
                status,
                micros,
                "stage ended"
            );
        }
    }
}
