//! A TCP proxy on loopback between the stores of a test and their PostgreSQL
//! server, that injects network faults.
//!
//! It forwards whole frontend protocol messages, a request at a time (the
//! messages up to a `Sync` or a simple `Query`), and knows which request
//! commits a write: it follows the statements each connection prepares (a
//! `Parse` names a statement and carries its SQL, a `Bind` names the
//! statement it runs) and whether the connection is inside a transaction
//! (`BEGIN` ... `COMMIT`, sent as simple queries). A request that writes
//! outside a transaction, or a `COMMIT`, is a commit point.
//!
//! Faults:
//! - [`silence`](Proxy::silence): stop forwarding, both ways, on every
//!   connection, without closing anything, which is what a network partition
//!   looks like to both ends;
//! - [`arm`](Proxy::arm): one [`Fault`] for the next request it fits, on
//!   whichever connection sends it first; the other connections keep working;
//! - [`kill_connection`](Proxy::kill_connection): reset one connection, both
//!   sides;
//! - [`hold_open_connections`](Proxy::hold_open_connections): hold back what
//!   the clients of the connections open now send, until
//!   [`release_held`](Proxy::release_held), while new connections pass.
//!
//! Each connection is forwarded by two threads; everything stops when the
//! proxy is dropped.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a forwarding thread looks up from a quiet socket to see whether
/// the proxy was dropped or the connection is to be reset.
const POLL: Duration = Duration::from_millis(50);

/// How long a lost reply waits for the server to answer the request it
/// forwarded (the answer comes once the commit is done) before it resets.
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// A fault for one request of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// A commit point: the request is forwarded, the server's reply (once it
    /// has committed) is dropped and both sides are reset.
    LostReply,
    /// A commit point: the request is not forwarded and both sides are reset.
    DroppedCommit,
    /// Any request: part of it is forwarded, then both sides are reset.
    ResetMidRequest,
    /// A commit point: the connection stops forwarding, both ways, without
    /// closing, before the request (`forward: false`) or right after it.
    /// Once the client gives up and closes, the server side is closed too.
    Silence { forward: bool },
    /// A commit point: the request is held and the connection goes silent;
    /// once the client has given up and closed, and `after` more has passed,
    /// the request is delivered to the server all the same, as a network that
    /// delays a packet does. A client that returned its error before making
    /// sure the request could not land meets it landed behind its back.
    Delay { after: Duration },
}

impl Fault {
    /// Whether it waits for a request that commits a write.
    fn wants_commit(self) -> bool {
        !matches!(self, Fault::ResetMidRequest)
    }
}

/// How many faults of each kind were injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub lost_replies: usize,
    pub dropped_commits: usize,
    pub resets: usize,
    pub silences: usize,
    pub delays: usize,
}

/// The proxy; dropping it closes every connection through it.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    upstream: SocketAddr,
    silent: AtomicBool,
    /// Requests (a `Sync` or a simple `Query` message from a client) still to
    /// forward before the proxy goes silent; `None`: not armed.
    requests_left: Mutex<Option<usize>>,
    stopped: AtomicBool,
    /// The fault waiting for a request it fits.
    armed: Mutex<Option<Fault>>,
    injected: Mutex<Injected>,
    /// The connections open now, by the client's port.
    conns: Mutex<HashMap<u16, Arc<Conn>>>,
    /// Connections accepted so far; each is numbered in order.
    accepted: AtomicUsize,
    /// Connections numbered below this hold back what their clients send.
    held_below: AtomicUsize,
    /// Whether held connections may forward again.
    released: AtomicBool,
    /// Held connections whose server side has not yet answered or closed
    /// since their release.
    unsettled: AtomicUsize,
}

/// What the two threads of one connection share.
struct Conn {
    client_port: u16,
    /// Its place in the order connections were accepted.
    number: usize,
    /// Whether it held back something its client sent.
    held: AtomicBool,
    /// Whether, held and then released, the server has answered or closed it.
    settled: AtomicBool,
    /// Both threads stop and close their sockets at once, with a reset.
    kill: AtomicBool,
    /// Nothing more is forwarded either way.
    silent: AtomicBool,
    /// Nothing more from the server reaches the client.
    drop_replies: AtomicBool,
    /// `ReadyForQuery` messages the server has sent on this connection.
    ready: AtomicU64,
    /// Whether a request was forwarded and its answer has not come yet.
    in_request: AtomicBool,
}

impl Proxy {
    /// A proxy to `upstream`, listening on a free loopback port.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("bind the proxy's port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the proxy's address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("a nonblocking listener: {e}"));
        let state = Arc::new(State {
            upstream,
            silent: AtomicBool::new(false),
            requests_left: Mutex::new(None),
            stopped: AtomicBool::new(false),
            armed: Mutex::new(None),
            injected: Mutex::new(Injected::default()),
            conns: Mutex::new(HashMap::new()),
            accepted: AtomicUsize::new(0),
            held_below: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            unsettled: AtomicUsize::new(0),
        });
        let accepting = state.clone();
        thread::spawn(move || accept(&listener, &accepting));
        Proxy { addr, state }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding, both ways, on every connection, now and for good;
    /// nothing is closed, and new connections are accepted and left silent.
    pub fn silence(&self) {
        self.state.silent.store(true, Ordering::SeqCst);
    }

    /// Forwards `n` more requests from the clients (each a protocol `Sync` or
    /// simple `Query`, and everything before it), then goes silent as
    /// [`silence`](Proxy::silence) does, cutting any later message off.
    pub fn silence_after_requests(&self, n: usize) {
        *self.state.requests_left.lock() = Some(n);
        if n == 0 {
            self.silence();
        }
    }

    /// Arms `fault` for the next request it fits, on any connection; replaces
    /// a fault armed before that has not fired yet.
    pub fn arm(&self, fault: Fault) {
        *self.state.armed.lock() = Some(fault);
    }

    /// Whether the fault armed last is still waiting for its request.
    pub fn is_armed(&self) -> bool {
        self.state.armed.lock().is_some()
    }

    /// The faults injected so far.
    pub fn injected(&self) -> Injected {
        *self.state.injected.lock()
    }

    /// The client ports of the connections open now, each with whether a
    /// request of it is waiting for the server's answer.
    pub fn connections(&self) -> Vec<(u16, bool)> {
        self.state
            .conns
            .lock()
            .values()
            .map(|c| (c.client_port, c.in_request.load(Ordering::SeqCst)))
            .collect()
    }

    /// Resets the connection from `client_port`, both sides, if it is open.
    pub fn kill_connection(&self, client_port: u16) {
        if let Some(conn) = self.state.conns.lock().get(&client_port) {
            conn.kill.store(true, Ordering::SeqCst);
        }
    }

    /// Holds back, from now on, what the clients of the connections open now
    /// send: a network that delays one connection's packets while new
    /// connections pass. The server hears nothing from them, not even their
    /// closing, until [`release_held`](Proxy::release_held).
    pub fn hold_open_connections(&self) {
        let open = self.state.accepted.load(Ordering::SeqCst);
        self.state.held_below.store(open, Ordering::SeqCst);
    }

    /// Delivers what the held connections held back, their clients' closing
    /// included, and returns once the server answered each or closed it (or
    /// [`child::WAIT_BOUND`](super::child::WAIT_BOUND) passed: a guard only).
    pub fn release_held(&self) {
        self.state.released.store(true, Ordering::SeqCst);
        let bound = Instant::now() + super::child::WAIT_BOUND;
        while self.state.unsettled.load(Ordering::SeqCst) > 0 && Instant::now() < bound {
            thread::sleep(POLL / 5);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
    }
}

fn accept(listener: &TcpListener, state: &Arc<State>) {
    while !state.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, peer)) => {
                let Ok(server) = TcpStream::connect(state.upstream) else {
                    continue;
                };
                let conn = Arc::new(Conn {
                    client_port: peer.port(),
                    number: state.accepted.fetch_add(1, Ordering::SeqCst),
                    held: AtomicBool::new(false),
                    settled: AtomicBool::new(false),
                    kill: AtomicBool::new(false),
                    silent: AtomicBool::new(false),
                    drop_replies: AtomicBool::new(false),
                    ready: AtomicU64::new(0),
                    in_request: AtomicBool::new(false),
                });
                state.conns.lock().insert(peer.port(), conn.clone());
                let (client_2, server_2) = (prepare(&client), prepare(&server));
                let (state_up, state_down) = (state.clone(), state.clone());
                let conn_down = conn.clone();
                // The connection is forgotten once both threads are done.
                let open = Arc::new(AtomicUsize::new(2));
                let open_down = open.clone();
                thread::spawn(move || {
                    upstream(client, server, &state_up, &conn);
                    forget(&state_up, &conn, &open);
                });
                thread::spawn(move || {
                    downstream(server_2, client_2, &state_down, &conn_down);
                    forget(&state_down, &conn_down, &open_down);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL / 4),
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn forget(state: &State, conn: &Conn, open: &AtomicUsize) {
    if open.fetch_sub(1, Ordering::SeqCst) == 1 {
        state.conns.lock().remove(&conn.client_port);
    }
}

impl State {
    /// Whether `conn` holds back what its client sends.
    fn holds(&self, conn: &Conn) -> bool {
        conn.number < self.held_below.load(Ordering::SeqCst)
            && !self.released.load(Ordering::SeqCst)
    }

    /// `conn` held something back, and counts as unsettled until the server
    /// answers after the release.
    fn start_holding(&self, conn: &Conn) {
        if !conn.held.swap(true, Ordering::SeqCst) {
            self.unsettled.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The server answered `conn`, or closed it: settled, if it held
    /// something and has been released.
    fn settle(&self, conn: &Conn) {
        if conn.held.load(Ordering::SeqCst)
            && self.released.load(Ordering::SeqCst)
            && !conn.settled.swap(true, Ordering::SeqCst)
        {
            self.unsettled.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Makes reads of `stream` (by every handle of it) wake up every [`POLL`];
/// returns a second handle, for the other direction.
fn prepare(stream: &TcpStream) -> TcpStream {
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)))
        .and_then(|()| stream.set_nodelay(true))
        .unwrap_or_else(|e| panic!("a socket's read timeout: {e}"));
    stream
        .try_clone()
        .unwrap_or_else(|e| panic!("clone a socket: {e}"))
}

/// Makes the socket's close send a reset: the close happens once every
/// handle of it is dropped.
fn reset_on_close(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO));
}

/// Reads what is there; `None` when the stream ended or failed, the proxy
/// was dropped or the connection is to be reset.
fn read_some(from: &mut TcpStream, buf: &mut [u8], state: &State, conn: &Conn) -> Option<usize> {
    loop {
        if state.stopped.load(Ordering::SeqCst) || conn.kill.load(Ordering::SeqCst) {
            return None;
        }
        match from.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// When a side ends: a connection being reset closes both sides with a reset
/// (as the threads drop their handles); otherwise the other side is told,
/// unless the proxy is silent (a partition carries no goodbye): a silent
/// proxy holds its sockets open until it is dropped.
fn end(to: &TcpStream, state: &State, conn: &Conn) {
    if conn.kill.load(Ordering::SeqCst) {
        reset_on_close(to);
        return;
    }
    while state.silent.load(Ordering::SeqCst) && !state.stopped.load(Ordering::SeqCst) {
        thread::sleep(POLL);
    }
    // A side ending ends the other: a silenced connection whose client gave
    // up is closed at the server too.
    conn.kill.store(true, Ordering::SeqCst);
    reset_on_close(to);
}

/// Server to client: whole messages, each forwarded unless the connection
/// is silent or its replies are dropped.
fn downstream(mut from: TcpStream, mut to: TcpStream, state: &State, conn: &Conn) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    'read: while let Some(n) = read_some(&mut from, &mut buf, state, conn) {
        state.settle(conn);
        pending.extend_from_slice(&buf[..n]);
        while let Some(len) = message_len(&pending, true) {
            let message: Vec<u8> = pending.drain(..len).collect();
            if message[0] == b'Z' {
                conn.in_request.store(false, Ordering::SeqCst);
                conn.ready.fetch_add(1, Ordering::SeqCst);
            }
            if state.silent.load(Ordering::SeqCst)
                || conn.silent.load(Ordering::SeqCst)
                || conn.drop_replies.load(Ordering::SeqCst)
            {
                continue;
            }
            // A held connection's closed client is no reason to stop
            // reading: the server's answer is what settles it.
            if to.write_all(&message).is_err() && !conn.held.load(Ordering::SeqCst) {
                break 'read;
            }
        }
    }
    // Ended: once released, that settles a held connection.
    while conn.held.load(Ordering::SeqCst)
        && !state.released.load(Ordering::SeqCst)
        && !state.stopped.load(Ordering::SeqCst)
    {
        thread::sleep(POLL);
    }
    state.settle(conn);
    end(&to, state, conn);
}

/// What the upstream thread knows of its connection's session.
#[derive(Default)]
struct Session {
    /// Prepared statements: name to SQL.
    statements: HashMap<String, String>,
    in_transaction: bool,
}

impl Session {
    /// Whether the request made of `messages` commits a write, and the
    /// session's state after it.
    fn commits(&mut self, messages: &[Vec<u8>]) -> bool {
        let mut commits = false;
        for message in messages {
            let body = &message[5..];
            match message[0] {
                b'P' => {
                    let mut fields = c_strings(body);
                    let name = fields.next().unwrap_or_default();
                    let sql = fields.next().unwrap_or_default();
                    self.statements.insert(name, sql);
                }
                b'B' => {
                    let mut fields = c_strings(body);
                    let _portal = fields.next();
                    let name = fields.next().unwrap_or_default();
                    let writes = self.statements.get(&name).is_some_and(|sql| writes(sql));
                    commits |= writes && !self.in_transaction;
                }
                b'C' if body.first() == Some(&b'S') => {
                    if let Some(name) = c_strings(&body[1..]).next() {
                        self.statements.remove(&name);
                    }
                }
                b'Q' => {
                    let sql = c_strings(body).next().unwrap_or_default();
                    let first = first_word(&sql);
                    match first.as_str() {
                        "BEGIN" | "START" => self.in_transaction = true,
                        "COMMIT" | "END" => {
                            commits |= self.in_transaction;
                            self.in_transaction = false;
                        }
                        "ROLLBACK" | "ABORT" => self.in_transaction = false,
                        _ => commits |= writes(&sql) && !self.in_transaction,
                    }
                }
                _ => {}
            }
        }
        commits
    }
}

/// The NUL-terminated strings at the start of `bytes`.
fn c_strings(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    bytes
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

fn first_word(sql: &str) -> String {
    sql.split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches(';')
        .to_ascii_uppercase()
}

/// Whether a statement changes rows.
fn writes(sql: &str) -> bool {
    match first_word(sql).as_str() {
        "INSERT" | "UPDATE" | "DELETE" => true,
        "WITH" => {
            let upper = sql.to_ascii_uppercase();
            ["INSERT ", "UPDATE ", "DELETE "]
                .iter()
                .any(|w| upper.contains(w))
        }
        _ => false,
    }
}

/// Client to server: whole protocol messages, a request at a time, so that
/// a fault can take a whole request (or cut one), and silence can start
/// right after a given request.
fn upstream(mut from: TcpStream, mut to: TcpStream, state: &State, conn: &Conn) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut request: Vec<Vec<u8>> = Vec::new();
    let mut session = Session::default();
    let mut held = None;
    // Whole messages held back while the connection is held.
    let mut held_back: Vec<u8> = Vec::new();
    // The first message of a connection (startup, or a cancel request) has no
    // type byte.
    let mut typed = false;
    'read: while let Some(n) = read_some(&mut from, &mut buf, state, conn) {
        pending.extend_from_slice(&buf[..n]);
        while let Some(len) = message_len(&pending, typed) {
            let message: Vec<u8> = pending.drain(..len).collect();
            if state.silent.load(Ordering::SeqCst) || conn.silent.load(Ordering::SeqCst) {
                continue;
            }
            if state.holds(conn) {
                state.start_holding(conn);
                held_back.extend_from_slice(&message);
                typed = true;
                continue;
            }
            if !held_back.is_empty() && to.write_all(&std::mem::take(&mut held_back)).is_err() {
                break 'read;
            }
            if !typed {
                typed = true;
                if to.write_all(&message).is_err() {
                    break 'read;
                }
                continue;
            }
            let kind = message[0];
            request.push(message);
            // The client waits for an answer after these (a password, too);
            // everything before them is sent with them.
            if !matches!(kind, b'S' | b'Q' | b'H' | b'X' | b'p') {
                continue;
            }
            let messages = std::mem::take(&mut request);
            let commits = session.commits(&messages);
            let counted = matches!(kind, b'S' | b'Q');
            let fault = if counted {
                take_fault(state, commits)
            } else {
                None
            };
            match forward(&mut to, &messages, fault, state, conn) {
                Forwarded::Yes => {}
                Forwarded::Stop => break 'read,
                Forwarded::Held(bytes, after) => held = Some((bytes, after)),
            }
            if counted {
                count_request(state);
            }
        }
    }
    // A held connection's client is gone: what it sent, and its end, wait
    // for the release, as delayed packets would.
    while state.holds(conn) && !state.stopped.load(Ordering::SeqCst) {
        thread::sleep(POLL);
    }
    if conn.held.load(Ordering::SeqCst) {
        // Delivered late, then the client's end; the server's answer, or its
        // closing, is read on the other side and settles the connection.
        let _ = to.write_all(&held_back);
        let _ = to.shutdown(Shutdown::Write);
        return;
    }
    if let Some((bytes, after)) = held {
        deliver_late(&mut to, &bytes, after, state, conn);
    }
    end(&to, state, conn);
}

/// Delivers a held request `after` the client is gone, and lets the server
/// answer it (to nobody).
fn deliver_late(to: &mut TcpStream, bytes: &[u8], after: Duration, state: &State, conn: &Conn) {
    let gone = Instant::now();
    while gone.elapsed() < after && !state.stopped.load(Ordering::SeqCst) {
        thread::sleep(POLL);
    }
    let before = conn.ready.load(Ordering::SeqCst);
    if to.write_all(bytes).is_ok() {
        let sent = Instant::now();
        while conn.ready.load(Ordering::SeqCst) == before
            && sent.elapsed() < REPLY_WAIT
            && !state.stopped.load(Ordering::SeqCst)
        {
            thread::sleep(Duration::from_millis(1));
        }
    }
    conn.kill.store(true, Ordering::SeqCst);
}

/// The armed fault, if it fits a request that does or does not commit.
fn take_fault(state: &State, commits: bool) -> Option<Fault> {
    let mut armed = state.armed.lock();
    let fault = (*armed)?;
    if fault.wants_commit() && !commits {
        return None;
    }
    *armed = None;
    let mut injected = state.injected.lock();
    match fault {
        Fault::LostReply => injected.lost_replies += 1,
        Fault::DroppedCommit => injected.dropped_commits += 1,
        Fault::ResetMidRequest => injected.resets += 1,
        Fault::Silence { .. } => injected.silences += 1,
        Fault::Delay { .. } => injected.delays += 1,
    }
    Some(fault)
}

/// Counts a forwarded request against `silence_after_requests`.
fn count_request(state: &State) {
    let mut left = state.requests_left.lock();
    if let Some(n) = left.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            *left = None;
            state.silent.store(true, Ordering::SeqCst);
        }
    }
}

enum Forwarded {
    Yes,
    /// The connection is done for.
    Stop,
    /// Held: these bytes go to the server once the client is gone and the
    /// delay has passed.
    Held(Vec<u8>, Duration),
}

/// Sends one request's messages upstream, or does to them what `fault` says.
fn forward(
    to: &mut TcpStream,
    messages: &[Vec<u8>],
    fault: Option<Fault>,
    state: &State,
    conn: &Conn,
) -> Forwarded {
    let bytes: Vec<u8> = messages.concat();
    let send = |to: &mut TcpStream, bytes: &[u8]| {
        conn.in_request.store(true, Ordering::SeqCst);
        to.write_all(bytes).is_ok()
    };
    match fault {
        None => {
            if send(to, &bytes) {
                Forwarded::Yes
            } else {
                Forwarded::Stop
            }
        }
        Some(Fault::LostReply) => {
            conn.drop_replies.store(true, Ordering::SeqCst);
            let before = conn.ready.load(Ordering::SeqCst);
            if send(to, &bytes) {
                // The server answers once it has committed; the answer goes
                // nowhere.
                let waited = Instant::now();
                while conn.ready.load(Ordering::SeqCst) == before
                    && waited.elapsed() < REPLY_WAIT
                    && !state.stopped.load(Ordering::SeqCst)
                {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            conn.kill.store(true, Ordering::SeqCst);
            Forwarded::Stop
        }
        Some(Fault::DroppedCommit) => {
            conn.kill.store(true, Ordering::SeqCst);
            Forwarded::Stop
        }
        Some(Fault::ResetMidRequest) => {
            let cut = (bytes.len() / 2).max(1);
            let _ = send(to, &bytes[..cut]);
            conn.kill.store(true, Ordering::SeqCst);
            Forwarded::Stop
        }
        Some(Fault::Delay { after }) => {
            conn.drop_replies.store(true, Ordering::SeqCst);
            conn.silent.store(true, Ordering::SeqCst);
            Forwarded::Held(bytes, after)
        }
        Some(Fault::Silence { forward }) => {
            if forward {
                conn.drop_replies.store(true, Ordering::SeqCst);
                let _ = send(to, &bytes);
            }
            conn.silent.store(true, Ordering::SeqCst);
            Forwarded::Yes
        }
    }
}

/// The length of the first message in `bytes`, if it is all there.
fn message_len(bytes: &[u8], typed: bool) -> Option<usize> {
    let header = usize::from(typed);
    let len_bytes: [u8; 4] = bytes.get(header..header + 4)?.try_into().ok()?;
    let len = header + u32::from_be_bytes(len_bytes) as usize;
    (bytes.len() >= len).then_some(len)
}
