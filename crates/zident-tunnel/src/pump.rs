//! Bytes between a TCP connection and an HTTP/2 CONNECT stream, both ways, with as few copies
//! as the protocols allow.
//!
//! Towards the stream, the kernel reads straight into a buffer that is then handed to h2
//! whole (no copy into a second buffer). Buffers are of two fixed sizes: small until the tunnel
//! shows it carries a bulk transfer, large from then on, so idle tunnels cost little. From the stream, each DATA frame's bytes go straight to the socket, and the flow-control
//! window is released only once they are written, so a slow reader slows its sender instead of
//! filling memory. Sends wait for window capacity, for the same reason. Each direction ends on
//! its own (a half-close is passed on), and the two run in the connection's own task.

use std::future::poll_fn;
use std::io;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sizes::{COPY_BUFFER, FIRST_READ_BUFFER};

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
        // Small until the tunnel shows it is a bulk transfer (a read fills the buffer, or a
        // buffer's worth has gone through), then large for good.
        let mut size = FIRST_READ_BUFFER;
        let mut buf = BytesMut::with_capacity(size);
        loop {
            if buf.capacity() < size / 4 {
                // A fresh buffer of exactly `size`: the old one is freed once h2 has written
                // what was sent from it. (Growing it with `reserve` can make the allocator map
                // and unmap fresh pages over and over.)
                buf = BytesMut::with_capacity(size);
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
            if size < COPY_BUFFER && (n == room || total >= COPY_BUFFER as u64) {
                size = COPY_BUFFER;
                buf = BytesMut::with_capacity(size);
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
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(h2_io)?;
            let n = chunk.len();
            wr.write_all(&chunk).await?;
            total += n as u64;
            let _ = recv.flow_control().release_capacity(n);
        }
        wr.shutdown().await?;
        Ok::<_, io::Error>(total)
    };
    tokio::try_join!(up, down)
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
