//! Responses that are ready together leave in one write.
//!
//! Each gRPC request runs as a task of its own; when it finishes, the connection task wakes
//! and flushes its response at once: one TLS record, one system call and one wake-up of the
//! client per certificate, even when a client has dozens of requests in flight and their
//! answers come microseconds apart. Under that load the writes and the client's wake-ups cost
//! the CA about as much as the signature itself (BENCHMARKS.md, "CA issuance").
//!
//! [`CoalescedWrites`] keeps what the connection writes, and on the first flush lets every
//! other task that is ready run once (it yields) before writing: the responses finished in
//! the meantime go out with it. An idle CA pays one trip through the scheduler; a busy one
//! writes a batch of responses per system call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this many buffered bytes, writes go out without waiting for a flush.
const MAX_BUFFER: usize = 64 * 1024;
/// A drained buffer larger than this is given back rather than kept for the next batch: a
/// connection that once carried a large response (an xDS stream's first push) must not hold
/// 64 KiB for as long as it stays open. A batch of certificates fits in what is kept.
const KEEP: usize = 8 * 1024;

/// A connection whose writes are gathered until the next flush, and whose flush first lets
/// the other ready tasks run once.
pub struct CoalescedWrites<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the inner connection has taken.
    written: usize,
    /// Whether this flush already yielded once.
    yielded: bool,
}

impl<T> CoalescedWrites<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes everything buffered to the inner connection.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > MAX_BUFFER {
            ready!(this.poll_drain(cx))?;
            if data.len() >= MAX_BUFFER {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() && !this.yielded {
            // Woken at once, but queued behind the tasks that are ready now: the responses
            // they finish are written with this one.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the inner connection.
    struct Counting<T> {
        inner: T,
        writes: usize,
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Pin::new(&mut self.inner).poll_write(cx, data)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_arrive_whole_and_in_order() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut conn = CoalescedWrites::new(Counting {
            inner: near,
            writes: 0,
        });
        let mut sent = Vec::new();
        for i in 0..100u32 {
            let chunk = vec![i as u8; 100 + i as usize];
            conn.write_all(&chunk).await.expect("write");
            sent.extend_from_slice(&chunk);
        }
        assert_eq!(
            conn.inner.writes, 0,
            "nothing reaches the connection before a flush"
        );
        conn.flush().await.expect("flush");
        assert_eq!(conn.inner.writes, 1, "one write for the whole batch");
        // Past the buffer's size, writes go out without a flush, a buffer at a time.
        for i in 0..200u32 {
            let chunk = vec![i as u8; 1000];
            conn.write_all(&chunk).await.expect("write");
            sent.extend_from_slice(&chunk);
        }
        let writes = conn.inner.writes - 1;
        assert!((2..=4).contains(&writes), "{writes} writes for 200 KB");
        conn.flush().await.expect("flush");
        assert!(
            conn.buf.capacity() <= KEEP,
            "a drained buffer of {} bytes is kept",
            conn.buf.capacity()
        );
        // A chunk larger than the buffer goes straight through, after what was gathered.
        let big = vec![0xeeu8; MAX_BUFFER * 2];
        conn.write_all(b"before").await.expect("write");
        conn.write_all(&big).await.expect("write");
        conn.shutdown().await.expect("shutdown");
        sent.extend_from_slice(b"before");
        sent.extend_from_slice(&big);
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.expect("read");
        assert!(got == sent, "bytes changed or reordered");
    }
}
