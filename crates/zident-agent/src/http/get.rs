//! One HTTP/1.1 `GET` over a connection the caller has opened (plain TCP to an admin port, TLS
//! to the CA's `/bundle`): the status and the body as text. The caller puts the deadline around
//! it, as every network wait has one.

use http_body_util::BodyExt;
use hyper::rt::{Read, Write};

/// Why a `GET` failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The host or path cannot make a request.
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The connection or the exchange failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// `GET path` with `Host: host` over `io`; the body is read whole (lossily as UTF-8).
pub async fn get<IO>(
    io: IO,
    host: &str,
    path: &str,
) -> Result<(hyper::StatusCode, String), GetError>
where
    IO: Read + Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
