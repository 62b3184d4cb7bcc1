//! One `GET` from the CA's TLS port (its `/bundle` and `/crl` endpoints): a fresh connection,
//! TLS checked against the trust store, HTTP/1.1, within a deadline.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;

use crate::http::get::{GetError, get_if_changed};

/// A fetch that has not finished in this long has failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fetch from the CA failed; what the node holds stays in force.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// No TCP connection.
    #[error("{0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The HTTP exchange failed.
    #[error(transparent)]
    Http(#[from] GetError),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// `GET https://<address><path>` with the CA's certificate valid for `name`, and
/// `If-None-Match: etag` when one is given: the status, the `ETag` and the body.
pub(crate) async fn https_get(
    config: Arc<rustls::ClientConfig>,
    address: &str,
    name: &ServerName<'static>,
    path: &str,
    etag: Option<&str>,
) -> Result<(hyper::StatusCode, Option<String>, String), FetchError> {
    let work = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(FetchError::Connect)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name.clone(), tcp)
            .await
            .map_err(FetchError::Tls)?;
        let io = hyper_util::rt::TokioIo::new(tls);
        Ok(get_if_changed(io, &name.to_str(), path, etag).await?)
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| FetchError::Timeout)?
}
