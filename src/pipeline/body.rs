//! A stage's body, blocking or async, and the signal that abandons a run
//! whose caller went away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "async")]
use std::task::{Poll, Waker};

#[cfg(feature = "async")]
use parking_lot::Mutex;

use super::error::StageError;
use super::stage::StageContext;

/// A blocking stage.
pub(super) type StageFn = dyn Fn(&mut StageContext<'_>) -> Result<(), StageError> + Send + Sync;

/// An async stage, its future boxed. The future need not be `Send`: it is
/// polled to its end on the one thread that runs the stage.
#[cfg(feature = "async")]
pub(super) type AsyncStageFn = dyn for<'c, 'a> Fn(
        &'c mut StageContext<'a>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), StageError>> + 'c>>
    + Send
    + Sync;

/// What a stage runs.
pub(super) enum StageBody {
    Blocking(Box<StageFn>),
    #[cfg(feature = "async")]
    Async(Box<AsyncStageFn>),
}

impl StageBody {
    /// Runs the stage on this thread; `None` if the run was abandoned while an
    /// async stage waited (its future is dropped then, as a task's is).
    ///
    /// An async stage's future is polled here, with the thread parked while
    /// it waits. Each poll runs inside the tokio runtime of the run's caller,
    /// if it had one (see `AsyncPipeline`), so that the stage may use the
    /// runtime's I/O and timers; the run's own store calls, before and after,
    /// run outside it (a blocking `PgStore` call inside a runtime costs a
    /// thread of its own).
    #[cfg_attr(not(feature = "async"), allow(unused_variables))]
    pub(super) fn run(
        &self,
        ctx: &mut StageContext<'_>,
        abandon: &Abandon,
    ) -> Option<Result<(), StageError>> {
        match self {
            StageBody::Blocking(run) => Some(run(ctx)),
            #[cfg(feature = "async")]
            StageBody::Async(run) => {
                let mut stage = run(ctx);
                crate::pool::block_on(std::future::poll_fn(|cx| {
                    // Looked at before the stage is polled: once its caller
                    // went away, the runtime it uses may be shutting down,
                    // and what the stage would make of that is no result.
                    if abandon.is_set() {
                        return Poll::Ready(None);
                    }
                    let polled = {
                        let _inside = abandon.runtime.as_ref().map(tokio::runtime::Handle::enter);
                        stage.as_mut().poll(cx)
                    };
                    if let Poll::Ready(done) = polled {
                        return Poll::Ready(Some(done));
                    }
                    if abandon.wait(cx.waker()) {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                }))
            }
        }
    }
}

/// Set when whoever awaits a run went away (its future was dropped): the run
/// stops at its next stage boundary, or at once inside an async stage's wait,
/// and leaves the job as a runner that stopped there would (see
/// [`RunOutcome::Abandoned`](super::RunOutcome::Abandoned)).
#[derive(Debug, Default)]
pub(crate) struct Abandon {
    abandoned: AtomicBool,
    #[cfg(feature = "async")]
    waker: Mutex<Option<Waker>>,
    /// The tokio runtime of the run's caller, entered while an async stage is
    /// polled.
    #[cfg(feature = "async")]
    runtime: Option<tokio::runtime::Handle>,
}

impl Abandon {
    /// A signal nobody sets: for the blocking face's runs.
    pub(crate) fn never() -> Arc<Abandon> {
        Arc::new(Abandon::default())
    }

    /// A signal for a run of the async face, whose async stages are polled
    /// inside `runtime`.
    #[cfg(feature = "async")]
    pub(crate) fn in_runtime(runtime: Option<tokio::runtime::Handle>) -> Arc<Abandon> {
        Arc::new(Abandon {
            runtime,
            ..Abandon::default()
        })
    }

    pub(crate) fn is_set(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Sets the signal and wakes the stage waiting on it.
    pub(crate) fn set(&self) {
        self.abandoned.store(true, Ordering::Release);
        #[cfg(feature = "async")]
        if let Some(waker) = self.waker.lock().take() {
            waker.wake();
        }
    }

    /// Whether the signal is set; if not, `waker` is woken when it is.
    #[cfg(feature = "async")]
    fn wait(&self, waker: &Waker) -> bool {
        if self.is_set() {
            return true;
        }
        *self.waker.lock() = Some(waker.clone());
        // Set between the look and the registration: its wake found nothing.
        self.is_set()
    }
}
