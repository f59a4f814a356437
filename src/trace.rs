//! What jobsafe tells an operator through the [`tracing`] crate, with the
//! feature `tracing`: a span for each store call, and an event for each
//! decision an operator asks about (a lease lost, a stage failed and retried,
//! a job moved). Without the feature every part of this compiles to nothing;
//! with it and no subscriber listening, each costs a check of a static flag.
//!
//! Targets are the module paths (`jobsafe::store::log`, `jobsafe::lock`, ...),
//! so a filter such as `jobsafe=info,jobsafe::store=debug` picks what to see.

use crate::error::Result;
use crate::key::{Key, Prefix};
use crate::store::Batch;

/// Emits a `tracing` event at `$level` (`info`, `warn`, ...) with the feature
/// `tracing`; nothing without it. The arguments are `tracing`'s: fields, then
/// the message.
macro_rules! report {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        ::tracing::$level!($($arg)+);
    }};
}
pub(crate) use report;

/// Runs one call of a store's API inside a `debug` span `store` naming the
/// backend, the operation and the namespace of `subject` (a key's, a
/// prefix's or a batch's first segment), and ends it with a `debug` event
/// that gives the outcome and the duration.
///
/// The namespace is only worked out when a subscriber listens.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn store_call<T>(
    backend: &'static str,
    operation: &'static str,
    subject: &impl Namespaced,
    call: impl FnOnce() -> Result<T>,
) -> Result<T> {
    #[cfg(feature = "tracing")]
    {
        let span = tracing::debug_span!(
            "store",
            backend,
            operation,
            namespace = tracing::field::Empty
        );
        if span.is_disabled() {
            return call();
        }
        span.record("namespace", subject.namespace());
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let result = call();
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => tracing::debug!(micros, outcome = "ok", "store call"),
            Err(e) => tracing::debug!(
                micros,
                outcome = outcome_of(e),
                error = %e,
                "store call"
            ),
        }
        result
    }
    #[cfg(not(feature = "tracing"))]
    call()
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

/// A batch's first operation's.
impl Namespaced for Batch {
    fn namespace(&self) -> &str {
        self.ops()
            .first()
            .map_or("", |op| first(op.key().segments()))
    }
}
