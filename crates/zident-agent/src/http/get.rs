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
    let (status, _, body) = get_if_changed(io, host, path, None).await?;
    Ok((status, body))
}

/// `GET path` as [`get`], with `If-None-Match: etag` when one is given: the status (304 when
/// unchanged), the answer's `ETag`, and the body.
pub async fn get_if_changed<IO>(
    io: IO,
    host: &str,
    path: &str,
    etag: Option<&str>,
) -> Result<(hyper::StatusCode, Option<String>, String), GetError>
where
    IO: Read + Write + Unpin + Send + 'static,
{
    let mut sender = connect(io).await?;
    request(&mut sender, host, path, etag).await
}

/// A connection to send requests on, one after another.
pub type Sender =
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>;

/// Starts HTTP/1.1 on `io`; the connection lives as long as the returned sender.
pub async fn connect<IO>(io: IO) -> Result<Sender, GetError>
where
    IO: Read + Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `GET path` on `sender`, as [`get_if_changed`].
pub async fn request(
    sender: &mut Sender,
    host: &str,
    path: &str,
    etag: Option<&str>,
) -> Result<(hyper::StatusCode, Option<String>, String), GetError> {
    let mut req = hyper::Request::get(path).header(hyper::header::HOST, host);
    if let Some(tag) = etag {
        req = req.header(hyper::header::IF_NONE_MATCH, tag);
    }
    let req = req.body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let tag = resp
        .headers()
        .get(hyper::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, tag, String::from_utf8_lossy(&body).into_owned()))
}
