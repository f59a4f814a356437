//! A bound on how long a connection's write may make no progress.
//!
//! hyper bounds the time to read a request's head, and the relay the time to
//! read its body, but nothing bounds a write: a client that sends requests
//! and never reads the answers (or reads one byte a minute) fills the
//! socket's buffers, and the connection then waits to write for ever,
//! holding one of `--max-connections`. A few such clients lock every other
//! client out for the cost of a few megabytes sent once.
//!
//! [`WriteStall`] wraps the connection's stream: a write or flush that stays
//! pending for the limit fails with `TimedOut`, and hyper drops the
//! connection. The clock runs only while a write waits: an idle connection
//! or an event stream with nothing to send is never cut off by it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// A stream whose writes fail once one has waited `limit` without progress.
pub(crate) struct WriteStall {
    inner: TcpStream,
    limit: Duration,
    /// Started when a write first waits; cleared by any progress.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl WriteStall {
    pub(crate) fn new(inner: TcpStream, limit: Duration) -> Self {
        WriteStall {
            inner,
            limit,
            waiting: None,
        }
    }

    /// `polled`, a write's or flush's result, unless it has waited `limit`.
    fn bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let limit = self.limit;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteStall {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStall {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bound(cx, polled)
    }
}
