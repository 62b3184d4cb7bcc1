//! The SOCKS5 handshake (RFC 1928), server side: no authentication, CONNECT only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where the client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address.
    Addr(SocketAddr),
    /// A host name and port.
    Host(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// SOCKS5 reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Ok = 0,
    /// General failure.
    Failure = 1,
    /// Not allowed by ruleset.
    NotAllowed = 2,
    /// Host unreachable.
    HostUnreachable = 4,
    /// Connection refused.
    Refused = 5,
    /// Command not supported.
    CommandNotSupported = 7,
    /// Address type not supported.
    AddressNotSupported = 8,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The stream failed.
    #[error("SOCKS5 handshake I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Not what SOCKS5 says.
    #[error("SOCKS5 protocol error: {0}")]
    Protocol(&'static str),
}

/// Reads the greeting and the request; answers the greeting. The caller sends the reply.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<Target, HandshakeError> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(HandshakeError::Protocol("not SOCKS version 5"));
    }
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        s.write_all(&[5, 0xff]).await?;
        return Err(HandshakeError::Protocol(
            "the client offers no unauthenticated method",
        ));
    }
    s.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Err(HandshakeError::Protocol("bad request version"));
    }
    if req[1] != 1 {
        reply(s, Reply::CommandNotSupported).await?;
        return Err(HandshakeError::Protocol("only CONNECT is supported"));
    }
    let target = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            Target::Addr(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(a)),
                read_port(s).await?,
            ))
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            Target::Addr(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                read_port(s).await?,
            ))
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            s.read_exact(&mut name).await?;
            let name = String::from_utf8(name)
                .map_err(|_| HandshakeError::Protocol("host name is not UTF-8"))?;
            let port = read_port(s).await?;
            match name.parse::<IpAddr>() {
                Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
                Err(_) => Target::Host(name, port),
            }
        }
        _ => {
            reply(s, Reply::AddressNotSupported).await?;
            return Err(HandshakeError::Protocol("unknown address type"));
        }
    };
    Ok(target)
}

async fn read_port<S: AsyncRead + Unpin>(s: &mut S) -> Result<u16, HandshakeError> {
    let mut p = [0u8; 2];
    s.read_exact(&mut p).await?;
    Ok(u16::from_be_bytes(p))
}

/// Sends the reply to the request.
pub async fn reply<S: AsyncWrite + Unpin>(s: &mut S, code: Reply) -> std::io::Result<()> {
    s.write_all(&[5, code as u8, 0, 1, 0, 0, 0, 0, 0, 0]).await
}
