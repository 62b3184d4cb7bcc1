//! Serving gRPC on a Unix socket to every gRPC client, not only Rust and Go ones.
//!
//! gRPC C-core (Python, C++, Ruby, PHP, C#), grpc-java and grpc-swift send the socket's path,
//! raw or percent-encoded, as the HTTP/2 `:authority` of each call over a Unix socket. The `h2`
//! crate under tonic checks `:authority` as an HTTP authority and resets every such stream with
//! PROTOCOL_ERROR (hyperium/h2#487, open), so those clients could not use the Workload API.
//! SPIRE's agent serves them.
//!
//! Each accepted connection therefore goes through a relay: HTTP/2 frames are read from the
//! client with h2's own codec, an `:authority` that is not a valid HTTP authority is replaced
//! by `localhost` (on a Unix socket it names nothing: the socket already is the peer), and the
//! frames are written on to tonic through an in-memory pipe. Everything else passes unchanged,
//! frame by frame, with back-pressure: flow control stays end to end between the client and
//! tonic. Header blocks are decoded and encoded again, so each side of the relay keeps its own
//! HPACK state; the settings that bound those (header table and frame sizes) are mirrored into
//! the relay as they pass. A connection that is not HTTP/2 at all is refused with a log line
//! naming what it sent.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use h2::Codec;
use h2::frame::{BytesStr, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;
use tonic::codegen::tokio_stream::Stream;

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A client that has not sent its preface by then is dropped.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pipe to tonic holds this much in each direction before the relay waits.
const PIPE: usize = 256 * 1024;
/// What an `:authority` that is not one becomes.
const LOCAL: &str = "localhost";

/// Starts relaying `client` and returns the end that tonic serves, and the relay's task
/// (aborting it closes the client's socket at once). `socket` names the listening socket in
/// log lines.
pub fn relay(client: UnixStream, socket: String) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (served, ours) = tokio::io::duplex(PIPE);
    let task = tokio::spawn(async move {
        if let Err(refused) = run(client, ours).await {
            match refused {
                Refused::Quiet => {}
                Refused::Protocol(why) => {
                    tracing::warn!(target: "zident::identity", %socket, "Workload API connection refused at the HTTP/2 level: {why}")
                }
            }
        }
    });
    (served, task)
}

/// Why a relay ended early.
enum Refused {
    /// The client or tonic went away: nothing to report.
    Quiet,
    /// The client broke HTTP/2.
    Protocol(String),
}

impl From<io::Error> for Refused {
    fn from(_: io::Error) -> Self {
        Refused::Quiet
    }
}

async fn run(mut client: UnixStream, mut server: DuplexStream) -> Result<(), Refused> {
    let mut preface = [0u8; 24];
    match tokio::time::timeout(PREFACE_TIMEOUT, client.read_exact(&mut preface)).await {
        Ok(Ok(_)) if &preface == PREFACE => {}
        Ok(Ok(_)) => {
            return Err(Refused::Protocol(format!(
                "it did not start with the HTTP/2 preface (got {:?}); the Workload API is gRPC over HTTP/2",
                String::from_utf8_lossy(&preface)
            )));
        }
        Ok(Err(_)) => return Err(Refused::Quiet),
        Err(_) => {
            return Err(Refused::Protocol(format!(
                "no HTTP/2 preface within {PREFACE_TIMEOUT:?}"
            )));
        }
    }
    server.write_all(PREFACE).await?;
    let mut from_client: Codec<UnixStream, Bytes> = Codec::new(client);
    let mut to_server: Codec<DuplexStream, Bytes> = Codec::new(server);
    loop {
        tokio::select! {
            frame = next(&mut from_client) => {
                let frame = match frame {
                    None => return Ok(()),
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return Err(Refused::Protocol(e.to_string())),
                };
                let frame = match frame {
                    Frame::Headers(mut h) => {
                        fix_authority(h.pseudo_mut());
                        Frame::Headers(h)
                    }
                    Frame::Settings(s) if !s.is_ack() => {
                        mirror(&s, &mut from_client, &mut to_server);
                        Frame::Settings(s)
                    }
                    other => other,
                };
                send(&mut to_server, frame).await?;
            }
            frame = next(&mut to_server) => {
                let frame = match frame {
                    None => return Ok(()),
                    Some(Ok(f)) => f,
                    Some(Err(_)) => return Err(Refused::Quiet),
                };
                if let Frame::Settings(s) = &frame
                    && !s.is_ack()
                {
                    mirror(s, &mut to_server, &mut from_client);
                }
                send(&mut from_client, frame).await?;
            }
        }
    }
}

/// Applies settings that `sender`'s peer announced: they bound what `sender`'s codec may send
/// to it, and what the other side of the relay will receive on its behalf.
fn mirror<A, B>(
    s: &h2::frame::Settings,
    toward_announcer: &mut Codec<A, Bytes>,
    other: &mut Codec<B, Bytes>,
) where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Some(size) = s.header_table_size() {
        toward_announcer.set_send_header_table_size(size as usize);
        other.set_recv_header_table_size(size as usize);
    }
    if let Some(size) = s.max_frame_size() {
        toward_announcer.set_max_send_frame_size(size as usize);
        other.set_max_recv_frame_size(size as usize);
    }
    if let Some(size) = s.max_header_list_size() {
        other.set_max_recv_header_list_size(size as usize);
    }
}

/// Replaces an `:authority` that is not an HTTP authority (a socket path) with `localhost`.
fn fix_authority(pseudo: &mut h2::frame::Pseudo) {
    let Some(authority) = &pseudo.authority else {
        return;
    };
    if http::uri::Authority::try_from(authority.as_bytes()).is_ok() {
        return;
    }
    tracing::debug!(target: "zident::identity", authority = %&**authority, "a Unix-socket client sent a path as :authority; serving it as {LOCAL}");
    if let Ok(local) = BytesStr::try_from(Bytes::from_static(LOCAL.as_bytes())) {
        pseudo.authority = Some(local);
    }
}

async fn next<T>(codec: &mut Codec<T, Bytes>) -> Option<Result<Frame, h2::proto::Error>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    poll_fn(|cx| Pin::new(&mut *codec).poll_next(cx)).await
}

async fn send<T>(codec: &mut Codec<T, Bytes>, frame: Frame) -> Result<(), Refused>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    poll_fn(|cx| codec.poll_ready(cx)).await?;
    codec
        .buffer(frame)
        .map_err(|e| Refused::Protocol(e.to_string()))?;
    poll_fn(|cx| codec.flush(cx)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(authority: &str) -> h2::frame::Pseudo {
        h2::frame::Pseudo {
            authority: Some(
                BytesStr::try_from(Bytes::copy_from_slice(authority.as_bytes())).unwrap(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn only_authorities_that_are_not_ones_are_replaced() {
        for path in [
            "/run/spire/agent.sock",
            "%2Frun%2Fagent.sock",
            "unix:/tmp/a b",
        ] {
            let mut p = pseudo(path);
            fix_authority(&mut p);
            assert_eq!(p.authority.as_deref(), Some(LOCAL), "{path}");
        }
        for fine in ["localhost", "127.0.0.1:15000", "agent.example"] {
            let mut p = pseudo(fine);
            fix_authority(&mut p);
            assert_eq!(p.authority.as_deref(), Some(fine));
        }
        let mut none = h2::frame::Pseudo::default();
        fix_authority(&mut none);
        assert!(none.authority.is_none());
    }
}
