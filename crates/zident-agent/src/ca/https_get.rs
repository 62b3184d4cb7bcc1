//! `GET`s from the CA's TLS port (its `/bundle` and `/crl` endpoints), TLS checked against the
//! trust store, HTTP/1.1, each within a deadline: one on a fresh connection ([`https_get`]), or
//! many on one kept connection ([`KeptConnection`], for what is asked every second).

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;

use crate::http::get::{GetError, Sender, connect, get_if_changed, request};

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

/// A connection to the CA kept open between requests (made again when it fails), so that a
/// poll every second costs the CA one request, not a TLS handshake.
pub(crate) struct KeptConnection {
    config: Arc<rustls::ClientConfig>,
    address: String,
    name: ServerName<'static>,
    sender: Option<Sender>,
}

impl KeptConnection {
    /// Not connected yet: the first request connects.
    pub(crate) fn new(
        config: Arc<rustls::ClientConfig>,
        address: String,
        name: ServerName<'static>,
    ) -> Self {
        Self {
            config,
            address,
            name,
            sender: None,
        }
    }

    async fn open(&self) -> Result<Sender, FetchError> {
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(FetchError::Connect)?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(FetchError::Tls)?;
        Ok(connect(hyper_util::rt::TokioIo::new(tls)).await?)
    }

    /// `GET path` as [`https_get`], on the kept connection; a kept connection that fails (the
    /// CA closed it) is replaced once, at once.
    pub(crate) async fn get(
        &mut self,
        path: &str,
        etag: Option<&str>,
    ) -> Result<(hyper::StatusCode, Option<String>, String), FetchError> {
        let host = self.name.to_str().into_owned();
        for attempt in 0..2 {
            let reused = self.sender.is_some();
            let work = async {
                let mut sender = match self.sender.take() {
                    Some(s) => s,
                    None => self.open().await?,
                };
                let answer = request(&mut sender, &host, path, etag).await?;
                Ok::<_, FetchError>((sender, answer))
            };
            match tokio::time::timeout(FETCH_TIMEOUT, work).await {
                Ok(Ok((sender, answer))) => {
                    self.sender = Some(sender);
                    return Ok(answer);
                }
                Ok(Err(_)) if reused && attempt == 0 => continue,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(FetchError::Timeout),
            }
        }
        Err(FetchError::Timeout)
    }
}
