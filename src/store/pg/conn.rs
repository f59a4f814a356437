//! One connection: made, its statements prepared once, driven by the thread
//! that holds it, and closed so that the server stops working for it.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, Statement};

use super::failure::{connect_failed, db_error, deadline_passed, timed_out};
use super::sql::Sql;
use super::transport::{Tls, Transport, handshake_refused};
use crate::error::{Error, Result};

/// The server as errors name it: `host:port/database`, never a password.
pub(crate) fn server_name(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match host {
                // No host name holds an `@`: the client split a password with
                // an unencoded `@` at its first one, so what comes before the
                // last is the end of the password.
                tokio_postgres::config::Host::Tcp(name) => {
                    let name = name
                        .rsplit_once('@')
                        .map_or(name.as_str(), |(_, host)| host);
                    format!("{name}:{port}")
                }
                tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        format!("localhost:{}", ports.first().copied().unwrap_or(5432))
    } else {
        hosts.join(",")
    };
    let database = config
        .get_dbname()
        .or_else(|| config.get_user())
        .unwrap_or("postgres");
    format!("{hosts}/{database}")
}

/// What a store needs to make its connections.
pub(crate) struct Connector {
    pub(crate) config: Config,
    /// How connections are secured, cancel requests included.
    pub(crate) transport: Transport,
    pub(crate) sql: Arc<Sql>,
    pub(crate) server: String,
    /// The process's runtime, where what outlives a call runs: cancel
    /// requests, fences, the pool's reaper.
    pub(crate) background: Handle,
    /// How long making a connection may take, login and statements included;
    /// also the bound on a cancel request.
    pub(crate) within: Duration,
}

impl Connector {
    /// A new connection and the future that moves its bytes, which nothing
    /// drives yet: its socket belongs to the runtime this runs on.
    ///
    /// # Errors
    /// The client's error, classified; a transient one if the connection is
    /// not made within [`within`](Connector::within) (the server or the
    /// network silent).
    async fn link(&self) -> Result<(Client, Io)> {
        let (client, connection) = self.open().await?;
        // It ends when the connection fails or the server closes it (the
        // client then reads as closed), or when its client is dropped while it
        // is driven.
        let io: Io = Box::pin(async move {
            let _ = connection.await;
        });
        Ok((client, io))
    }

    /// A new connection and the connection object itself, whose messages
    /// (notifications included) whoever drives it reads; made within
    /// [`within`](Connector::within), as [`link`](Connector::link).
    pub(crate) async fn open(&self) -> Result<(Client, RawConnection)> {
        let attempts = async {
            match self.config.connect(self.transport.tls()).await {
                // `prefer`, as libpq: a handshake refused, then in clear.
                Err(e) if handshake_refused(&e) => match &self.transport.clear_retry {
                    Some(clear) => clear.connect(self.transport.tls()).await,
                    None => Err(e),
                },
                made => made,
            }
        };
        let made = tokio::time::timeout(self.within, attempts).await;
        let (client, connection) = match made {
            Ok(made) => made.map_err(|e| connect_failed(&self.server, e, &self.transport.shown))?,
            Err(_) => {
                return Err(timed_out(
                    "connect",
                    &self.server,
                    self.within,
                    "connection",
                ));
            }
        };
        Ok((client, connection))
    }

    /// A connection without the store's statements, its bytes moved by a task
    /// of the runtime this runs on: for a short errand (a fence) on the
    /// process's runtime.
    pub(crate) async fn bare(&self) -> Result<Bare> {
        let (client, io) = self.link().await?;
        Ok(Bare {
            client,
            _io: IoTask(Some(tokio::spawn(io))),
        })
    }

    /// A connection of the pool's, without the store's statements yet, on a
    /// runtime of its own and driven by whoever holds it. Blocks this thread
    /// (which must not be a runtime's) until it is made, within
    /// [`within`](Connector::within) and what is left of `call`'s deadline.
    pub(crate) fn linked(&self, call: Option<&CallBound>) -> Result<Linked> {
        let driver = Driver::new(&self.server)?;
        let bound = self.bound(call);
        let (client, io) = match driver.run_for(bound.within, self.link()) {
            Some(made) => made?,
            None => return Err(bound.passed("connect", "connection")),
        };
        driver.attach(io);
        Ok(Linked { client, driver })
    }

    /// A connection of the pool's with the store's statements, at the pool's
    /// `generation`. Blocks, as [`linked`](Connector::linked).
    pub(crate) fn connect(&self, generation: u64, call: &CallBound) -> Result<Conn<Driver>> {
        let linked = self.linked(Some(call))?;
        self.prepare(linked, generation, Some(call))
    }

    /// Prepares the store's statements on `linked`, and learns which server
    /// session it is. Blocks, as [`linked`](Connector::linked).
    pub(crate) fn prepare(
        &self,
        linked: Linked,
        generation: u64,
        call: Option<&CallBound>,
    ) -> Result<Conn<Driver>> {
        let Linked { client, driver } = linked;
        let ready = async {
            let statements = Statements::prepare(&client, &self.sql).await?;
            let session = Session::of(&client).await?;
            Ok::<_, tokio_postgres::Error>((statements, session))
        };
        let bound = self.bound(call);
        let (statements, session) = driver
            .run_for(bound.within, ready)
            .ok_or_else(|| bound.passed("prepare statements", "the answer"))?
            .map_err(|e| db_error("prepare statements", &self.server, e))?;
        Ok(Conn {
            link: Link { client, statements },
            session,
            engine: driver,
            tls: self.transport.tls(),
            background: self.background.clone(),
            cancel_within: self.within,
            busy: false,
            generation,
            idle_since: Instant::now(),
        })
    }
}

impl Connector {
    /// A connection of the pool's with the store's statements, for the async
    /// face: its bytes moved by a task of the runtime this runs on, so that no
    /// thread waits for its answers. Made within [`within`](Connector::within)
    /// and what is left of `call`'s deadline, as
    /// [`connect`](Connector::connect).
    #[cfg(feature = "async")]
    pub(crate) async fn connect_spawned(
        &self,
        generation: u64,
        call: &CallBound,
    ) -> Result<Conn<IoTask>> {
        let bound = self.bound(Some(call));
        let Bare { client, _io: io } = tokio::time::timeout(bound.within, self.bare())
            .await
            .map_err(|_| bound.passed("connect", "connection"))??;
        let ready = async {
            let statements = Statements::prepare(&client, &self.sql).await?;
            let session = Session::of(&client).await?;
            Ok::<_, tokio_postgres::Error>((statements, session))
        };
        let bound = self.bound(Some(call));
        let (statements, session) = tokio::time::timeout(bound.within, ready)
            .await
            .map_err(|_| bound.passed("prepare statements", "the answer"))?
            .map_err(|e| db_error("prepare statements", &self.server, e))?;
        Ok(Conn {
            link: Link { client, statements },
            session,
            engine: io,
            tls: self.transport.tls(),
            background: self.background.clone(),
            cancel_within: self.within,
            busy: false,
            generation,
            idle_since: Instant::now(),
        })
    }
}

impl Connector {
    /// The bound of a step of making a connection: [`within`](Connector::within),
    /// or what is left of `call`'s deadline if that is nearer.
    fn bound<'a>(&'a self, call: Option<&'a CallBound>) -> StepBound<'a> {
        let by_call = call.filter(|call| call.left() < self.within);
        StepBound {
            within: by_call.map_or(self.within, CallBound::left),
            by_call,
            connector: self,
        }
    }
}

/// The bound of one step of making a connection, and which bound it is.
struct StepBound<'a> {
    within: Duration,
    /// The call whose deadline is the bound, if it is.
    by_call: Option<&'a CallBound>,
    connector: &'a Connector,
}

impl StepBound<'_> {
    /// The error of a `step` not done within the bound.
    fn passed(&self, step: &'static str, what: &str) -> Error {
        let server = &self.connector.server;
        match self.by_call {
            Some(call) => call.passed(server),
            None => timed_out(step, server, self.connector.within, what),
        }
    }
}

/// A call's bound, for the steps within it (a check-out, a new connection):
/// what is left of its deadline, and what to say when it passes.
pub(crate) struct CallBound {
    pub(crate) step: &'static str,
    /// The deadline as configured, to name in the error.
    pub(crate) deadline: Duration,
    /// When the call must be answered by.
    pub(crate) until: Instant,
}

/// `now + within`, or a moment too far away to matter if that does not fit in
/// an `Instant` (a bound of `Duration::MAX`).
pub(crate) fn later(now: Instant, within: Duration) -> Instant {
    now.checked_add(within)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

impl CallBound {
    pub(crate) fn left(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    pub(crate) fn passed(&self, server: &str) -> Error {
        deadline_passed(self.step, server, self.deadline)
    }
}

/// A connection as the client makes it: the object that moves its bytes and
/// hands out what the server sends unasked.
pub(crate) type RawConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// The future that moves a connection's bytes.
type Io = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's own single-threaded runtime, and the future that moves the
/// connection's bytes. Nothing drives it while the connection waits in the
/// pool (the server sends nothing unasked); the thread that holds it drives it
/// for the length of its request ([`run`](Driver::run)), as the blocking
/// `postgres` client does. So a request costs no hand-off between threads: the
/// caller's thread writes the request, waits on the socket and reads the
/// answer itself.
pub(crate) struct Driver {
    /// Always there; taken only as the driver is dropped, to shut the runtime
    /// down without waiting (a runtime dropped the ordinary way panics if that
    /// happens inside another runtime).
    runtime: Option<Runtime>,
    /// Until the connection ends.
    io: Mutex<Option<Io>>,
}

impl Driver {
    fn new(server: &str) -> Result<Driver> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::Database {
                step: "connect",
                server: server.to_owned(),
                transient: true,
                source: format!("cannot start a connection's runtime: {e}").into(),
            })?;
        Ok(Driver {
            runtime: Some(runtime),
            io: Mutex::new(None),
        })
    }

    fn attach(&self, io: Io) {
        *self.io.lock() = Some(io);
    }

    /// Runs `work` to its end on this thread, moving the connection's bytes
    /// while it waits. This thread must not be a runtime's (see
    /// [`off_runtime`](super::runtime::off_runtime)).
    pub(crate) fn run<F: Future>(&self, work: F) -> F::Output {
        let mut io = self.io.lock();
        let mut work = pin!(work);
        let driven = poll_fn(|cx| {
            // The connection first (it hands what arrived to the request, or
            // ends, closing the client), then the request (which finds its
            // answer, or queues messages, waking the connection to send them).
            let mut drive = |cx: &mut std::task::Context<'_>| {
                if let Some(moving) = io.as_mut()
                    && moving.as_mut().poll(cx).is_ready()
                {
                    // Ended: the client is closed, and its request has seen why.
                    *io = None;
                }
            };
            drive(cx);
            let done = work.as_mut().poll(cx);
            if done.is_ready() {
                // Once more, so that what the request left queued (the close of
                // a one-off statement) is sent now, not when the connection is
                // next used.
                drive(cx);
            }
            done
        });
        match &self.runtime {
            Some(runtime) => runtime.block_on(driven),
            None => unreachable!("a driver's runtime is taken only by its drop"),
        }
    }

    /// Takes in, without waiting, what arrived while the connection sat
    /// unused: the server closing it (a restart, an idle session ended), so
    /// that its client reads as closed before a request is sent on it.
    pub(crate) fn catch_up(&self) {
        // A yield makes the runtime look at its sockets without waiting.
        self.run(tokio::task::yield_now());
    }

    /// As [`run`](Driver::run), for at most `within`: `None` if the work was
    /// not done by then (it is dropped where it stands).
    pub(crate) fn run_for<F: Future>(&self, within: Duration, work: F) -> Option<F::Output> {
        // The timer is made inside the runtime, which it needs.
        self.run(async { tokio::time::timeout(within, work).await.ok() })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The socket closes as its future is dropped.
        self.io.get_mut().take();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A connection of the pool's before it has the store's statements.
pub(crate) struct Linked {
    pub(crate) client: Client,
    pub(crate) driver: Driver,
}

/// A connection before it has the store's statements, its bytes moved by a
/// task. Dropped, it is closed at once.
pub(crate) struct Bare {
    pub(crate) client: Client,
    /// Held for its drop.
    _io: IoTask,
}

/// The task that moves a connection's bytes, for a bare connection or one of
/// the async face's. Dropped, it is aborted, which closes the socket at once,
/// whatever is in flight.
pub(crate) struct IoTask(Option<JoinHandle<()>>);

impl Drop for IoTask {
    fn drop(&mut self) {
        if let Some(io) = self.0.take() {
            io.abort();
        }
    }
}

/// A store's connection with its prepared statements, and what moves its
/// bytes: a [`Driver`] that the thread holding it drives (the blocking face),
/// or an [`IoTask`] on a runtime (the async face).
///
/// While it serves a request it is `busy`; a busy connection that is dropped was
/// abandoned midway (its caller's deadline passed), so its session may still be
/// running a statement or sit in an open transaction holding row locks, and its
/// socket may have gone silent. Dropping it then asks the server to cancel the
/// statement (on a connection of its own) and closes the socket at once,
/// without waiting for an answer that may never come. A connection dropped
/// while idle is closed too; the server ends its session on seeing the socket
/// close.
pub(crate) struct Conn<E> {
    pub(crate) link: Link,
    /// The server session behind the connection.
    pub(crate) session: Session,
    /// Moves the connection's bytes; the socket closes as it is dropped.
    pub(crate) engine: E,
    /// The connector its cancel request is made with, as the connection was.
    tls: Tls,
    background: Handle,
    cancel_within: Duration,
    pub(crate) busy: bool,
    /// The pool's generation when this connection was last known to work.
    pub(crate) generation: u64,
    /// When it was last put back in the pool.
    pub(crate) idle_since: Instant,
}

impl<E> Drop for Conn<E> {
    fn drop(&mut self) {
        if !self.busy {
            return;
        }
        // Best effort, bounded: what the cancel cannot reach (the network is
        // down), the server's own timeouts end. It is made with the store's
        // TLS connector and the connection's own sslmode, which the token
        // carries: a connection made in clear after `prefer`'s refused
        // handshake cancels in clear too.
        let cancel = self.link.client.cancel_token();
        let within = self.cancel_within;
        let tls = Tls::clone(&self.tls);
        self.background.spawn(async move {
            let _ = tokio::time::timeout(within, cancel.cancel_query(tls)).await;
        });
        // The socket closes as `engine` is dropped.
    }
}

/// What the store's operations use of a connection.
pub(crate) struct Link {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
}

/// A server session: its backend's process id and start time, which name it
/// on the server even after a process id is reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) pid: i32,
    /// `backend_start`, as text, to compare.
    pub(crate) started: String,
}

impl Session {
    async fn of(client: &Client) -> std::result::Result<Session, tokio_postgres::Error> {
        let row = client
            .query_one(
                "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(Session {
            pid: row.try_get(0)?,
            started: row.try_get(1)?,
        })
    }
}

/// The statements a store runs on single keys, prepared once per connection so
/// that each operation costs one round trip. (Listings are planned for their
/// bounds each time instead; see [`Sql::list_range`].)
pub(crate) struct Statements {
    pub(crate) get: Statement,
    pub(crate) insert: Statement,
    pub(crate) upsert: Statement,
    pub(crate) update: Statement,
    pub(crate) delete_any: Statement,
    pub(crate) delete_version: Statement,
    pub(crate) quarantine: Statement,
    pub(crate) now_ms: Statement,
}

impl Statements {
    async fn prepare(
        client: &Client,
        sql: &Sql,
    ) -> std::result::Result<Self, tokio_postgres::Error> {
        Ok(Statements {
            get: client.prepare(&sql.get).await?,
            insert: client.prepare(&sql.insert).await?,
            upsert: client.prepare(&sql.upsert).await?,
            update: client.prepare(&sql.update).await?,
            delete_any: client.prepare(&sql.delete_any).await?,
            delete_version: client.prepare(&sql.delete_version).await?,
            quarantine: client.prepare(&sql.quarantine).await?,
            now_ms: client.prepare(super::sql::NOW_MS).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_too_long_for_an_instant_is_a_moment_far_away_not_a_panic() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let far = later(now, Duration::MAX);
        assert!(far >= now + Duration::from_secs(365 * 24 * 3600), "{far:?}");
    }
}
