//! Bytes between a TCP connection and an HTTP/2 CONNECT stream, both ways, with as few copies
//! and system calls as the protocols allow.
//!
//! Towards the stream, the kernel reads straight into a buffer that is then handed to h2
//! whole (no copy into a second buffer). Buffers grow in steps ([`READ_BUFFERS`]): small until
//! reads fill them, and the smallest is taken only once the socket has bytes to read and let go
//! once they are handed on, so an idle tunnel holds no read buffer at all. From the stream, every DATA frame already
//! received is written to the socket in one `writev`, and the flow-control window is released
//! only once the bytes are written, so a slow reader slows its sender instead of filling
//! memory. (A write per frame woke the workload, on the same core, once per 64 KiB: three
//! times the context switches of ztunnel's receiving node.) Sends wait for window capacity,
//! for the same reason. Each direction ends on its own (a half-close is passed on), and the two
//! run in the connection's own task. A destination without a tunnel (`protocol: TCP`) is
//! copied through the same stepped buffers ([`copy_plain`]).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::sizes::{READ_BUFFERS, WRITE_GATHER, WRITE_SLICES};

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

/// Copies `tcp` ⇄ the stream until both directions have ended. Returns the bytes carried
/// (TCP → stream, stream → TCP).
pub async fn pump(
    tcp: &mut TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
) -> io::Result<(u64, u64)> {
    let (rd, mut wr) = tcp.split();
    let up = async {
        let mut total = 0u64;
        let mut buf = ReadSteps::new();
        loop {
            let n = match buf.read(&rd).await {
                Ok(n) => n,
                Err(e) => {
                    send.send_reset(h2::Reason::CANCEL);
                    return Err(e);
                }
            };
            if n == 0 {
                send.send_data(Bytes::new(), true).map_err(h2_io)?;
                return Ok(total);
            }
            total += n as u64;
            let mut data = buf.take();
            while !data.is_empty() {
                send.reserve_capacity(data.len());
                let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(n)) => n,
                    Some(Err(e)) => return Err(h2_io(e)),
                    None => return Err(io::Error::other("the HTTP/2 stream closed")),
                };
                if granted == 0 {
                    continue;
                }
                let chunk = data.split_to(granted.min(data.len()));
                send.send_data(chunk, false).map_err(h2_io)?;
            }
        }
    };
    let down = async {
        let mut total = 0u64;
        let mut frames = VecDeque::new();
        while gather(&mut recv, &mut frames).await? {
            let n = write_all_frames(&mut wr, &mut frames).await?;
            total += n as u64;
            let _ = recv.flow_control().release_capacity(n);
        }
        wr.shutdown().await?;
        Ok::<_, io::Error>(total)
    };
    tokio::try_join!(up, down)
}

/// Copies `a` ⇄ `b` (a destination with `protocol: TCP`: no tunnel) until both directions
/// have ended, through the same stepped read buffers as a tunnel, so an idle plain connection
/// holds no read buffer either. Returns the bytes carried (a → b, b → a).
pub async fn copy_plain(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64)> {
    let (ar, mut aw) = a.split();
    let (br, mut bw) = b.split();
    tokio::try_join!(copy_one_way(&ar, &mut bw), copy_one_way(&br, &mut aw))
}

async fn copy_one_way(rd: &ReadHalf<'_>, wr: &mut WriteHalf<'_>) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf = ReadSteps::new();
    loop {
        let n = buf.read(rd).await?;
        if n == 0 {
            wr.shutdown().await?;
            return Ok(total);
        }
        wr.write_all(buf.filled()).await?;
        buf.clear();
        total += n as u64;
    }
}

/// A direction's read buffer, in the sizes of [`READ_BUFFERS`]: it moves to the next size
/// after a read that filled it, and never back. At the first size it exists only between the
/// socket becoming readable and the bytes being handed on: 2,000 idle tunnels held 2 MiB of
/// empty 1 KiB buffers, the difference between zident's memory per open tunnel and ztunnel's.
/// At the larger sizes (a bulk transfer) it is kept and read into again.
struct ReadSteps {
    step: usize,
    buf: BytesMut,
}

impl ReadSteps {
    fn new() -> Self {
        Self {
            step: 0,
            buf: BytesMut::new(),
        }
    }

    /// Reads once from `rd`, waiting for it to be readable before taking a buffer; the bytes
    /// of the previous read must have been taken or cleared. Returns how many were read (0: the
    /// end).
    async fn read(&mut self, rd: &ReadHalf<'_>) -> io::Result<usize> {
        let size = READ_BUFFERS[self.step];
        loop {
            rd.readable().await?;
            if self.buf.capacity() < size / 4 {
                // A fresh buffer of exactly this step's size: an old one is freed once what was
                // taken from it is gone. (Growing it with `reserve` can make the allocator map
                // and unmap fresh pages over and over.)
                self.buf = BytesMut::with_capacity(size);
            }
            let room = self.buf.capacity();
            match rd.try_read_buf(&mut self.buf) {
                Ok(n) => {
                    if n == room && self.step + 1 < READ_BUFFERS.len() {
                        self.step += 1;
                    }
                    return Ok(n);
                }
                // The readiness was stale (a new socket starts out ready): wait again, holding
                // no small buffer while waiting.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.release_if_small(),
                Err(e) => return Err(e),
            }
        }
    }

    /// The bytes read, handed off whole (no copy).
    fn take(&mut self) -> Bytes {
        let read = self.buf.split().freeze();
        self.release_if_small();
        read
    }

    /// The bytes read, to be written from here.
    fn filled(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets the bytes read once written; the buffer is read into again.
    fn clear(&mut self) {
        self.buf.clear();
        self.release_if_small();
    }

    /// At the first step, lets the buffer go until the next read finds bytes.
    fn release_if_small(&mut self) {
        if self.step == 0 {
            self.buf = BytesMut::new();
        }
    }
}

/// Waits for a DATA frame, then takes every frame already received as well, up to
/// [`WRITE_GATHER`] bytes. Returns `false` once the stream has ended and nothing was taken.
async fn gather(recv: &mut RecvStream, frames: &mut VecDeque<Bytes>) -> io::Result<bool> {
    let mut ended = false;
    let mut gathered = 0;
    poll_fn(|cx| {
        loop {
            if gathered >= WRITE_GATHER || frames.len() >= WRITE_SLICES {
                return Poll::Ready(Ok(()));
            }
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if !frame.is_empty() {
                        gathered += frame.len();
                        frames.push_back(frame);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_io(e))),
                Poll::Ready(None) => {
                    ended = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending if frames.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(())),
            }
        }
    })
    .await?;
    Ok(!(ended && frames.is_empty()))
}

/// Writes `frames` whole, in as few `writev`s as the socket takes; returns the bytes written.
/// (The slices are built on the stack of each poll, not kept in the tunnel's future: an idle
/// tunnel holds no space for them.)
async fn write_all_frames<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frames: &mut VecDeque<Bytes>,
) -> io::Result<usize> {
    let mut written = 0;
    while !frames.is_empty() {
        let mut n = poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (slice, frame) in slices.iter_mut().zip(frames.iter()) {
                *slice = IoSlice::new(frame);
                count += 1;
            }
            Pin::new(&mut *wr).poll_write_vectored(cx, &slices[..count])
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
        while n > 0 {
            let Some(front) = frames.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                frames.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(written)
}

/// How often an idle HBONE connection is checked with an HTTP/2 PING.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is given up.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves when the peer stops answering PINGs (never, while it answers): the caller then
/// drops the connection, so a half-dead peer cannot hold tunnels or a pool slot forever.
pub async fn keepalive(ping_pong: Option<h2::PingPong>) {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEPALIVE).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(target: "zident::tunnel", "HBONE keepalive failed: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(target: "zident::tunnel", "HBONE peer did not answer a PING within {KEEPALIVE_TIMEOUT:?}; closing the connection");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A socket that takes a few hundred bytes per write leaves frames half written: every
    /// byte still arrives once, in order, and the count returned is what was written.
    #[tokio::test]
    async fn frames_written_in_pieces_arrive_whole_and_in_order() {
        let (mut wr, mut rd) = tokio::io::duplex(777);
        let sizes = [1, 5000, 0, 65_536, 3, 200_000, 17];
        let mut frames: VecDeque<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Bytes::from((0..*n).map(|k| (k * 31 + i) as u8).collect::<Vec<u8>>()))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.map(|_| got)
        });
        let written = write_all_frames(&mut wr, &mut frames).await.unwrap();
        drop(wr);
        assert_eq!(written, expected.len());
        assert!(frames.is_empty());
        assert_eq!(reader.await.unwrap().unwrap(), expected);
    }

    /// A plain connection's bytes go both ways whole through the stepped buffers (past the
    /// 1 KiB and 16 KiB steps), each half-close passed on, and the counts are what was carried.
    #[tokio::test]
    async fn plain_copy_carries_both_ways_through_every_buffer_size() {
        use tokio::net::TcpListener;
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (server_addr, front_addr) = (server.local_addr().unwrap(), front.local_addr().unwrap());
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (up_sent, down_sent) = (up.clone(), down.clone());
        let server_task = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&down_sent).await.unwrap();
            s.shutdown().await.unwrap();
            got
        });
        let proxy = tokio::spawn(async move {
            let (mut a, _) = front.accept().await.unwrap();
            let mut b = TcpStream::connect(server_addr).await.unwrap();
            copy_plain(&mut a, &mut b).await.unwrap()
        });
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        client.write_all(&up_sent).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, down);
        assert_eq!(server_task.await.unwrap(), up);
        assert_eq!(proxy.await.unwrap(), (300_000, 200_000));
    }

    /// An idle connection holds no read buffer: none while it waits for bytes, none once the
    /// few it got were handed on; a read that fills the first size moves to the next, which is
    /// kept for the reads after it.
    #[tokio::test]
    async fn an_idle_direction_holds_no_read_buffer() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (rd, _wr) = server.split();
        let mut steps = ReadSteps::new();

        // Nothing to read: the read waits, and no buffer was taken for it.
        {
            let read = std::pin::pin!(steps.read(&rd));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(read.poll(&mut cx).is_pending());
        }
        assert_eq!(steps.buf.capacity(), 0);

        client.write_all(b"ping").await.unwrap();
        assert_eq!(steps.read(&rd).await.unwrap(), 4);
        assert_eq!(&steps.take()[..], b"ping");
        assert_eq!(steps.buf.capacity(), 0, "the 1 KiB buffer is let go");

        // A read that fills 1 KiB moves to 16 KiB, and that buffer stays.
        client.write_all(&[7u8; 20_000]).await.unwrap();
        let mut got = 0;
        while got < 20_000 {
            got += steps.read(&rd).await.unwrap();
            steps.clear();
        }
        assert!(steps.step >= 1);
        assert!(steps.buf.capacity() > 0, "a bulk transfer's buffer is kept");
    }

    /// More frames than one `writev` takes go out in several, in order.
    #[tokio::test]
    async fn more_frames_than_one_writev_takes() {
        let (mut wr, mut rd) = tokio::io::duplex(1 << 20);
        let mut frames: VecDeque<Bytes> = (0..(WRITE_SLICES * 3 + 5))
            .map(|i| Bytes::from(vec![i as u8; 10]))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let written = write_all_frames(&mut wr, &mut frames).await.unwrap();
        drop(wr);
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        assert_eq!(written, expected.len());
        assert_eq!(got, expected);
    }
}
