//! Bytes between a TCP connection and an HTTP/2 CONNECT stream, both ways, with as few copies
//! and system calls as the protocols allow.
//!
//! Towards the stream, the kernel reads straight into a buffer that is then handed to h2
//! whole (no copy into a second buffer). Buffers grow in steps ([`READ_BUFFERS`]): small until
//! reads fill them, so idle tunnels cost little. From the stream, every DATA frame already
//! received is written to the socket in one `writev`, and the flow-control window is released
//! only once the bytes are written, so a slow reader slows its sender instead of filling
//! memory. (A write per frame woke the workload, on the same core, once per 64 KiB: three
//! times the context switches of ztunnel's receiving node.) Sends wait for window capacity,
//! for the same reason. Each direction ends on its own (a half-close is passed on), and the two
//! run in the connection's own task.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let (mut rd, mut wr) = tcp.split();
    let up = async {
        let mut total = 0u64;
        let mut step = 0;
        let mut buf = BytesMut::with_capacity(READ_BUFFERS[step]);
        loop {
            if buf.capacity() < READ_BUFFERS[step] / 4 {
                // A fresh buffer of exactly this step's size: the old one is freed once h2 has
                // written what was sent from it. (Growing it with `reserve` can make the
                // allocator map and unmap fresh pages over and over.)
                buf = BytesMut::with_capacity(READ_BUFFERS[step]);
            }
            let room = buf.capacity();
            let n = match rd.read_buf(&mut buf).await {
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
            let mut data = buf.split().freeze();
            if n == room && step + 1 < READ_BUFFERS.len() {
                step += 1;
                buf = BytesMut::with_capacity(READ_BUFFERS[step]);
            }
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
    use tokio::io::AsyncReadExt;

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
