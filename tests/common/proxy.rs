//! A TCP proxy on loopback between the stores of a test and their PostgreSQL
//! server, that can go silent: stop forwarding in both directions without
//! closing anything, which is what a network partition looks like to both
//! ends. Each connection is forwarded by two threads; everything stops when the
//! proxy is dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a forwarding thread looks up from a quiet socket to see whether
/// the proxy was dropped.
const POLL: Duration = Duration::from_millis(50);

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
}

impl Proxy {
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
            Ok((client, _)) => {
                let Ok(server) = TcpStream::connect(state.upstream) else {
                    continue;
                };
                let link = Arc::new(Link {
                    number: state.accepted.fetch_add(1, Ordering::SeqCst),
                    held: AtomicBool::new(false),
                    settled: AtomicBool::new(false),
                });
                let (client_2, server_2) = (prepare(&client), prepare(&server));
                let (state_up, state_down) = (state.clone(), state.clone());
                let link_2 = link.clone();
                thread::spawn(move || upstream(client, server, &state_up, &link));
                thread::spawn(move || downstream(server_2, client_2, &state_down, &link_2));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL / 5),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Makes reads of `stream` (by every handle of it) wake up every [`POLL`];
/// returns a second handle, for the other direction.
fn prepare(stream: &TcpStream) -> TcpStream {
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)))
        .unwrap_or_else(|e| panic!("a socket's read timeout: {e}"));
    stream
        .try_clone()
        .unwrap_or_else(|e| panic!("clone a socket: {e}"))
}

/// Reads what is there; `None` when the stream ended or failed, or the proxy
/// was dropped.
fn read_some(from: &mut TcpStream, buf: &mut [u8], state: &State) -> Option<usize> {
    loop {
        if state.stopped.load(Ordering::SeqCst) {
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

/// When a side ends: the other is told, unless the proxy is silent (a
/// partition carries no goodbye); a silent proxy holds its sockets open until
/// it is dropped.
fn end(to: &TcpStream, state: &State) {
    while state.silent.load(Ordering::SeqCst) && !state.stopped.load(Ordering::SeqCst) {
        thread::sleep(POLL);
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// One forwarded connection, as both its threads see it.
struct Link {
    /// Its place in the order connections were accepted.
    number: usize,
    /// Whether it held back something its client sent.
    held: AtomicBool,
    /// Whether, held and then released, the server has answered or closed it.
    settled: AtomicBool,
}

impl State {
    /// Whether `link` holds back what its client sends.
    fn holds(&self, link: &Link) -> bool {
        link.number < self.held_below.load(Ordering::SeqCst)
            && !self.released.load(Ordering::SeqCst)
    }

    /// `link` held something back, and counts as unsettled until the server
    /// answers after the release.
    fn start_holding(&self, link: &Link) {
        if !link.held.swap(true, Ordering::SeqCst) {
            self.unsettled.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The server answered `link`, or closed it: settled, if it held
    /// something and has been released.
    fn settle(&self, link: &Link) {
        if link.held.load(Ordering::SeqCst)
            && self.released.load(Ordering::SeqCst)
            && !link.settled.swap(true, Ordering::SeqCst)
        {
            self.unsettled.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Server to client: bytes as they come, until silence. A held connection's
/// first answer (or end) after its release settles it.
fn downstream(mut from: TcpStream, mut to: TcpStream, state: &State, link: &Link) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(n) = read_some(&mut from, &mut buf, state) {
        state.settle(link);
        if state.silent.load(Ordering::SeqCst) {
            continue;
        }
        // A closed client is no reason to stop reading: the server's answer
        // is what settles a released connection.
        let _ = to.write_all(&buf[..n]);
    }
    // Ended: once released, that settles it.
    while link.held.load(Ordering::SeqCst)
        && !state.released.load(Ordering::SeqCst)
        && !state.stopped.load(Ordering::SeqCst)
    {
        thread::sleep(POLL);
    }
    state.settle(link);
    end(&to, state);
}

/// Client to server: whole protocol messages, counted, so that silence can
/// start right after a given request.
fn upstream(mut from: TcpStream, mut to: TcpStream, state: &State, link: &Link) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    // Whole messages held back while the connection is held.
    let mut held: Vec<u8> = Vec::new();
    // The first message of a connection (startup, or a cancel request) has no
    // type byte.
    let mut typed = false;
    'read: while let Some(n) = read_some(&mut from, &mut buf, state) {
        pending.extend_from_slice(&buf[..n]);
        while let Some(len) = message_len(&pending, typed) {
            let message: Vec<u8> = pending.drain(..len).collect();
            if state.silent.load(Ordering::SeqCst) {
                continue;
            }
            if state.holds(link) {
                state.start_holding(link);
                held.extend_from_slice(&message);
                typed = true;
                continue;
            }
            if !held.is_empty() && to.write_all(&std::mem::take(&mut held)).is_err() {
                break 'read;
            }
            if to.write_all(&message).is_err() {
                break 'read;
            }
            let request = typed && matches!(message[0], b'S' | b'Q');
            typed = true;
            if request {
                let mut left = state.requests_left.lock();
                if let Some(n) = left.as_mut() {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        *left = None;
                        state.silent.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    }
    // A held connection's client is gone: what it sent, and its end, wait
    // for the release, as delayed packets would.
    while state.holds(link) && !state.stopped.load(Ordering::SeqCst) {
        thread::sleep(POLL);
    }
    if link.held.load(Ordering::SeqCst) {
        // Delivered late, then the client's end; the server's answer, or its
        // closing, is read on the other side and settles the connection.
        let _ = to.write_all(&held);
        let _ = to.shutdown(Shutdown::Write);
        return;
    }
    end(&to, state);
}

/// The length of the first message in `bytes`, if it is all there.
fn message_len(bytes: &[u8], typed: bool) -> Option<usize> {
    let header = usize::from(typed);
    let len_bytes: [u8; 4] = bytes.get(header..header + 4)?.try_into().ok()?;
    let len = header + u32::from_be_bytes(len_bytes) as usize;
    (bytes.len() >= len).then_some(len)
}
