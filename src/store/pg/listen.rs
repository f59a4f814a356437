//! Other writers' changes, told to a handle's watchers
//! (`Store::changes_by_others`) through PostgreSQL's `LISTEN`/`NOTIFY`.
//!
//! Every row of a job's record written, changed or deleted notifies the
//! store's channel from a trigger once its transaction commits (see
//! [`Names::channel`] and schema version 2). The payload names the writing handle, by the
//! `jobsafe.writer` setting each of a handle's sessions logs in with, and
//! the key. A handle hears every writer but itself: its own writes are not
//! told, as the [`Store`](crate::Store) contract says.
//!
//! One task per watched handle, on the process's runtime, holds a connection
//! of its own outside the pool (a `LISTEN` lasts as long as its session, and
//! a pool hands sessions around) and reads what the server sends on it. Each
//! time it starts listening (first, and after a lost connection) it tells
//! every watcher: what changed while nobody listened is unknown. So a watch
//! registered before its read is never left waiting for a change the
//! listener missed, only for a reconnection.
//!
//! The connection is the store's, with its TCP keepalives and user timeout,
//! so a vanished server is noticed within those; a query every
//! [`check`](Listener::check) period catches what they cannot (a proxy that
//! keeps the socket alive but forwards nothing). A connection that cannot be
//! made is tried again after 1 s, doubling to 30 s, and the first failure of
//! a streak is reported (tracing) as a warning: until it is made again,
//! other writers' changes are found only by polling.
//!
//! The task holds the handle weakly, and ends within a second of the last
//! watch's drop or the handle's.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_postgres::{AsyncMessage, Notification};

use super::conn::{Connector, RawConnection};
use super::failure::{db_error, timed_out};
use super::pool::Pool;
use super::sql::Names;
use crate::error::{Error, Result};
use crate::key::Prefix;
use crate::store::Changes;
use crate::store::changes::ChangeFeed;

/// How often the task looks whether it is still watched.
const TICK: Duration = Duration::from_secs(1);
/// The longest pause between attempts to connect.
const MOST_BACKOFF: Duration = Duration::from_secs(30);

/// A handle's listener: its watchers, and whether its task runs.
pub(super) struct Listener {
    feed: ChangeFeed,
    /// Whether a task runs. Its handshake with the task's end is sequentially
    /// consistent: each side stores, then loads the other's.
    running: AtomicBool,
    /// The pool, for its connector; the task holds the listener weakly, so
    /// this keeps nothing alive after the handle.
    pool: Pool,
    background: Handle,
    /// Quoted for `LISTEN`.
    channel: String,
    /// This handle's `jobsafe.writer`: its own writes are not told.
    writer: String,
    /// How often a listening connection is asked a query.
    check: Duration,
}

impl Listener {
    pub(super) fn new(
        pool: Pool,
        background: Handle,
        names: &Names,
        writer: String,
        check: Duration,
    ) -> Listener {
        Listener {
            feed: ChangeFeed::default(),
            running: AtomicBool::new(false),
            pool,
            background,
            channel: format!("\"{}\"", names.channel()),
            writer,
            check,
        }
    }

    /// Watches `prefix` from now on, starting the task unless one runs.
    pub(super) fn watch(self: &Arc<Self>, prefix: &Prefix) -> Changes {
        // Registered first: a change after this is told, by a notification
        // or by the task's start.
        let changes = self.feed.watch(prefix);
        if !self.running.swap(true, Ordering::SeqCst) {
            self.background.spawn(run(Arc::downgrade(self)));
        }
        changes
    }

    /// Whether the task should go on: someone watches. If not, it says it
    /// ends, unless a watch came meanwhile and found it still running.
    fn still_watched(&self) -> bool {
        if self.feed.prune() {
            return true;
        }
        self.running.store(false, Ordering::SeqCst);
        // A watch that came just now found the flag set and started no task:
        // this one goes on for it.
        self.feed.prune() && !self.running.swap(true, Ordering::SeqCst)
    }

    fn connector(&self) -> &Connector {
        self.pool.connector()
    }

    /// A connection listening on the store's channel.
    async fn listen(&self) -> Result<(tokio_postgres::Client, RawConnection)> {
        let connector = self.connector();
        let (client, mut connection) = connector.open().await?;
        let statement = format!("LISTEN {}", self.channel);
        let listen = client.batch_execute(&statement);
        // What arrives before the answer is dropped: whoever started
        // listening tells every watcher next.
        let driven = Driven {
            connection: &mut connection,
            heard: |_| {},
        };
        let answer = match first_of(tokio::time::timeout(connector.within, listen), driven).await {
            Either::Left(answer) => answer,
            Either::Right(ended) => return Err(lost(connector, ended.err())),
        };
        match answer {
            Ok(Ok(())) => Ok((client, connection)),
            Ok(Err(e)) => Err(db_error("listen", &connector.server, e)),
            Err(_) => Err(timed_out(
                "listen",
                &connector.server,
                connector.within,
                "the answer",
            )),
        }
    }

    /// Tells the watchers of what `notification` says changed, unless this
    /// handle made the change.
    fn tell(&self, notification: &Notification) {
        match parse(notification.payload()) {
            Some(Told::Key { writer, .. }) | Some(Told::KeyStart { writer })
                if writer == self.writer => {}
            Some(Told::Key { key, .. }) => self.feed.changed_packed([key.as_slice()]),
            // A long key is named by its start only: every watcher is told.
            Some(Told::KeyStart { .. }) | None => self.feed.changed_all(),
        }
    }
}

/// What a notification's payload says.
#[derive(Debug, PartialEq, Eq)]
enum Told<'a> {
    /// The packed key a writer changed.
    Key { writer: &'a str, key: Vec<u8> },
    /// A writer changed a key too long to name.
    KeyStart { writer: &'a str },
}

/// Reads a payload the trigger wrote: `<writer> k<hex key>` or
/// `<writer> p<hex start of key>`. `None` for anything else.
fn parse(payload: &str) -> Option<Told<'_>> {
    let (writer, said) = payload.split_once(' ')?;
    let (kind, hex) = said.split_at_checked(1)?;
    match kind {
        "k" => Some(Told::Key {
            writer,
            key: from_hex(hex)?,
        }),
        "p" => Some(Told::KeyStart { writer }),
        _ => None,
    }
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let digit = |b: u8| char::from(b).to_digit(16);
            u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
        })
        .collect()
}

/// The error of a connection that ended.
fn lost(connector: &Connector, why: Option<tokio_postgres::Error>) -> Error {
    match why {
        Some(e) => db_error("listen", &connector.server, e),
        None => Error::Database {
            step: "listen",
            server: connector.server.clone(),
            transient: true,
            source: "the server closed the connection".into(),
        },
    }
}

/// Drives a connection, handing each notification to `heard`; a future that
/// completes when the connection ends: `Ok` if the server closed it, the
/// error if it failed.
struct Driven<'c, H> {
    connection: &'c mut RawConnection,
    heard: H,
}

impl<H: FnMut(Notification) + Unpin> Future for Driven<'_, H> {
    type Output = std::result::Result<(), tokio_postgres::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this.connection.poll_message(cx) {
                Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => (this.heard)(n),
                // Notices (a `LISTEN` repeated, say) are of no use here.
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Which of two futures completed first.
enum Either<L, R> {
    Left(L),
    Right(R),
}

/// Waits for the first of `left` and `right` to complete (`left` first if
/// both are ready), dropping the other.
async fn first_of<L: Future, R: Future>(left: L, right: R) -> Either<L::Output, R::Output> {
    let (mut left, mut right) = (pin!(left), pin!(right));
    poll_fn(|cx| {
        if let Poll::Ready(done) = left.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(done));
        }
        right.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

/// The task: listens while anyone watches, connecting again after a loss.
async fn run(weak: Weak<Listener>) {
    let mut failures: u32 = 0;
    loop {
        let Some(listener) = weak.upgrade() else {
            return;
        };
        if !listener.still_watched() {
            return;
        }
        let check = listener.check;
        match listener.listen().await {
            Ok((client, connection)) => {
                let since = std::time::Instant::now();
                if failures > 0 {
                    crate::trace::report!(
                        info,
                        server = %listener.connector().server,
                        "listening again for other processes' writes"
                    );
                }
                // What changed while nobody listened is unknown.
                listener.feed.changed_all();
                drop(listener);
                // `None`: nobody watches, and the task has said it ends (a
                // watch from now on starts another), or the handle is gone.
                let ended = serve(&weak, &client, connection, check).await;
                let (Some(ended), Some(listener)) = (ended, weak.upgrade()) else {
                    return;
                };
                // A connection that lasted is a new streak, tried again at
                // once; one lost sooner (a proxy or the server ending idle
                // sessions) goes on with the streak and its pauses, and is
                // not reported again.
                if since.elapsed() >= check {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                report_loss(&listener, &ended, failures);
                drop(listener);
                if failures > 1 && !pause_while_watched(&weak, backoff(failures)).await {
                    return;
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                report_loss(&listener, &e, failures);
                drop(listener);
                if !pause_while_watched(&weak, backoff(failures)).await {
                    return;
                }
            }
        }
    }
}

/// The pause after the `failures`th failure in a row: 1 s, doubling to
/// [`MOST_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1 << failures.clamp(1, 6).saturating_sub(1))
        .min(MOST_BACKOFF)
}

/// Reports the first failure of a streak.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
fn report_loss(listener: &Listener, error: &Error, failures: u32) {
    if failures == 1 {
        crate::trace::report!(
            warn,
            server = %listener.connector().server,
            error = %error,
            "cannot listen for other processes' writes: they are found only by \
             polling until the connection is made again"
        );
    }
}

/// Sleeps `pause`, a tick at a time; whether anyone still watches.
async fn pause_while_watched(weak: &Weak<Listener>, pause: Duration) -> bool {
    let mut left = pause;
    while !left.is_zero() {
        let step = left.min(TICK);
        tokio::time::sleep(step).await;
        left = left.saturating_sub(step);
        match weak.upgrade() {
            Some(listener) if listener.feed.is_watched() => {}
            // The next round finds out for sure, with the handshake.
            Some(_) => return true,
            None => return false,
        }
    }
    true
}

/// Hands what arrives on `connection` to the watchers until it ends or fails
/// a check (`Some` of why) or nobody watches any more (`None`).
async fn serve(
    weak: &Weak<Listener>,
    client: &tokio_postgres::Client,
    mut connection: RawConnection,
    check: Duration,
) -> Option<Error> {
    let heard = |notification: Notification| {
        if let Some(listener) = weak.upgrade() {
            listener.tell(&notification);
        }
    };
    let mut driven = Driven {
        connection: &mut connection,
        heard,
    };
    let mut since_check = Duration::ZERO;
    loop {
        if let Either::Right(ended) = first_of(tokio::time::sleep(TICK), &mut driven).await {
            let listener = weak.upgrade()?;
            return Some(lost(listener.connector(), ended.err()));
        }
        let listener = weak.upgrade()?;
        if !listener.still_watched() {
            return None;
        }
        since_check += TICK;
        if since_check < check {
            continue;
        }
        since_check = Duration::ZERO;
        let within = listener.connector().within;
        let server = listener.connector().server.clone();
        drop(listener);
        // Asked while the connection is driven, or its answer never comes.
        let asked = tokio::time::timeout(within, client.batch_execute("SELECT 1"));
        match first_of(asked, &mut driven).await {
            Either::Left(Ok(Ok(()))) => {}
            Either::Left(Ok(Err(e))) => return Some(db_error("listen", &server, e)),
            Either::Left(Err(_)) => {
                return Some(timed_out(
                    "listen",
                    &server,
                    within,
                    "the answer to a check",
                ));
            }
            Either::Right(ended) => {
                let listener = weak.upgrade()?;
                return Some(lost(listener.connector(), ended.err()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_writer_and_the_key() {
        assert_eq!(
            parse("abc k6a6f627300"),
            Some(Told::Key {
                writer: "abc",
                key: b"jobs\0".to_vec()
            })
        );
        // A session of the application's own has no writer.
        assert_eq!(
            parse(" k00ff"),
            Some(Told::Key {
                writer: "",
                key: vec![0, 255]
            })
        );
        assert_eq!(parse("abc p6a6f"), Some(Told::KeyStart { writer: "abc" }));
        for bad in [
            "", "abc", "abc ", "abc x00", "abc k0", "abc kzz", "abc k6a6",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
