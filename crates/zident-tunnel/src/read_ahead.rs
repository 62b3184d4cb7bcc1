//! The TCP side of an HBONE connection, read ahead through a buffer that exists only while the
//! socket has bytes to give.
//!
//! rustls asks for 4 KiB at a time, so reading TLS straight from the socket costs about four
//! system calls per 16 KiB record: HBONE connections read ahead, [`TLS_READ_BUFFER`] at a time.
//! A `BufReader` would hold that buffer for the connection's whole life, idle or not; a node
//! with HBONE connections to many peers would hold 64 KiB of empty buffer for each. Here the
//! buffer is taken once the socket is readable and let go the first time a read finds nothing
//! more (the peer has gone quiet); while bytes keep coming it is kept and read into again. A
//! buffer let go waits, one per thread, for the next connection to have bytes: connections that
//! go quiet between every message (many small tunnels opening) would otherwise allocate and
//! free 64 KiB each time (three paired runs without the spare: 1.19–1.23× ztunnel's new
//! connections per second against 1.26–1.36× with a `BufReader`; with it, no difference).

use std::cell::Cell;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::sizes::TLS_READ_BUFFER;

/// A TCP stream whose reads go through a read-ahead buffer held only while data flows.
/// Writes go straight to the socket.
pub(crate) struct ReadAhead {
    tcp: TcpStream,
    /// What was read ahead: `buf[taken..]` is still to be handed out. Its capacity is
    /// [`TLS_READ_BUFFER`] while data flows and zero while the socket is quiet.
    buf: Vec<u8>,
    taken: usize,
}

impl ReadAhead {
    /// Reads `tcp` ahead through a buffer taken when it is needed.
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: Vec::new(),
            taken: 0,
        }
    }

    /// Bytes of buffer held now (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.capacity()
    }

    fn release(&mut self) {
        give_back(std::mem::take(&mut self.buf));
        self.taken = 0;
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.release();
    }
}

thread_local! {
    /// The spare read-ahead buffer of this thread (empty, or of [`TLS_READ_BUFFER`]).
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A read-ahead buffer: this thread's spare, or a new one. (`try_with`: a connection dropped
/// while its thread is being torn down finds no spare and frees its buffer instead of
/// panicking.)
fn take_buffer() -> Vec<u8> {
    let spare = SPARE.try_with(Cell::take).unwrap_or_default();
    if spare.capacity() >= TLS_READ_BUFFER {
        spare
    } else {
        Vec::with_capacity(TLS_READ_BUFFER)
    }
}

/// Keeps `buf` as this thread's spare if it has none; frees it otherwise.
fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() == 0 {
        return;
    }
    buf.clear();
    let _ = SPARE.try_with(|spare| {
        let kept = spare.take();
        spare.set(if kept.capacity() >= buf.capacity() {
            kept
        } else {
            buf
        });
    });
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken == this.buf.len() {
            this.buf.clear();
            this.taken = 0;
            loop {
                if let Err(e) = ready!(this.tcp.poll_read_ready(cx)) {
                    this.release();
                    return Poll::Ready(Err(e));
                }
                if this.buf.capacity() == 0 {
                    this.buf = take_buffer();
                }
                match this.tcp.try_read_buf(&mut this.buf) {
                    // The end: nothing is put in `out`, which says so.
                    Ok(0) => {
                        this.release();
                        return Poll::Ready(Ok(()));
                    }
                    Ok(_) => break,
                    // Caught up with the peer: hold nothing while waiting for more.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.release(),
                    Err(e) => {
                        this.release();
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
        let ahead = &this.buf[this.taken..];
        let n = ahead.len().min(out.remaining());
        out.put_slice(&ahead[..n]);
        this.taken += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, ReadAhead) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, ReadAhead::new(server))
    }

    /// Polls one read of `len` bytes once, with a waker that does nothing.
    fn poll_once(reader: &mut ReadAhead, len: usize) -> Poll<io::Result<usize>> {
        let mut space = vec![0u8; len];
        let mut out = ReadBuf::new(&mut space);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(reader)
            .poll_read(&mut cx, &mut out)
            .map_ok(|()| out.filled().len())
    }

    /// Every byte arrives once and in order through reads smaller than what was read ahead,
    /// and the end is passed on.
    #[tokio::test]
    async fn bytes_arrive_whole_through_small_reads() {
        let (mut client, mut reader) = pair().await;
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = reader.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, expected);
        assert_eq!(reader.held(), 0, "nothing held after the end");
    }

    /// A quiet socket holds no buffer: not before anything arrived, and not once what arrived
    /// was handed out and the next read found nothing.
    #[tokio::test]
    async fn a_quiet_connection_holds_no_buffer() {
        let (mut client, mut reader) = pair().await;
        assert!(poll_once(&mut reader, 4096).is_pending());
        assert_eq!(reader.held(), 0);

        client.write_all(&[9u8; 10_000]).await.unwrap();
        let mut got = 0;
        while got < 10_000 {
            let mut chunk = [0u8; 4096];
            got += reader.read(&mut chunk).await.unwrap();
        }
        assert_eq!(got, 10_000);
        assert!(poll_once(&mut reader, 4096).is_pending());
        assert_eq!(reader.held(), 0, "the read-ahead buffer is let go");

        // And it is taken again when bytes come.
        client.write_all(b"more").await.unwrap();
        let mut chunk = [0u8; 16];
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 4);
        assert_eq!(&chunk[..4], b"more");
    }

    /// However many connections went quiet, the thread keeps one spare buffer, no more.
    #[tokio::test]
    async fn quiet_connections_leave_one_spare_per_thread() {
        let mut pairs = Vec::new();
        for _ in 0..5 {
            pairs.push(pair().await);
        }
        for (client, _) in &mut pairs {
            client.write_all(b"hello").await.unwrap();
        }
        // Every one holds a buffer at once (each has read ahead, none handed out yet)...
        for (_, reader) in &mut pairs {
            let mut first = [0u8; 1];
            assert_eq!(reader.read(&mut first).await.unwrap(), 1);
            assert_eq!(reader.held(), TLS_READ_BUFFER);
        }
        // ...then each hands out the rest and finds nothing more.
        for (_, reader) in &mut pairs {
            assert!(matches!(poll_once(reader, 16), Poll::Ready(Ok(4))));
            assert!(poll_once(reader, 16).is_pending());
            assert_eq!(reader.held(), 0);
        }
        let spare = SPARE.with(|s| {
            let v = s.take();
            let capacity = v.capacity();
            s.set(v);
            capacity
        });
        assert_eq!(spare, TLS_READ_BUFFER);
    }
}
