//! A TCP proxy on loopback between the stores of a test and their PostgreSQL
//! server, that can go silent: stop forwarding in both directions without
//! closing anything, which is what a network partition looks like to both
//! ends. Each connection is forwarded by two threads; everything stops when the
//! proxy is dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

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
                let (client_2, server_2) = (prepare(&client), prepare(&server));
                let (state_up, state_down) = (state.clone(), state.clone());
                thread::spawn(move || upstream(client, server, &state_up));
                thread::spawn(move || downstream(server_2, client_2, &state_down));
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

/// Server to client: bytes as they come, until silence.
fn downstream(mut from: TcpStream, mut to: TcpStream, state: &State) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(n) = read_some(&mut from, &mut buf, state) {
        if state.silent.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    end(&to, state);
}

/// Client to server: whole protocol messages, counted, so that silence can
/// start right after a given request.
fn upstream(mut from: TcpStream, mut to: TcpStream, state: &State) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
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
    end(&to, state);
}

/// The length of the first message in `bytes`, if it is all there.
fn message_len(bytes: &[u8], typed: bool) -> Option<usize> {
    let header = usize::from(typed);
    let len_bytes: [u8; 4] = bytes.get(header..header + 4)?.try_into().ok()?;
    let len = header + u32::from_be_bytes(len_bytes) as usize;
    (bytes.len() >= len).then_some(len)
}
