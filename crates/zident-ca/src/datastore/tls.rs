//! TLS to PostgreSQL with rustls (the one TLS stack of zident), when the `--datastore` URL asks
//! for it: `sslmode=require` (or `prefer`) with `sslrootcert=FILE`, libpq's names for the mode
//! and the CA file. The server's certificate is verified against that file and its host name
//! (libpq's `verify-full`); a mode that would skip verification is not offered.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::StoreError;

/// Splits libpq's `sslrootcert` out of a URL (`?…&sslrootcert=FILE`) or a key=value string,
/// since the PostgreSQL client library reads the rest.
pub(crate) fn take_root_cert(url: &str) -> (String, Option<PathBuf>) {
    // The parameters, and what joins them back: a URL's query, or the key=value string.
    let (base, params, sep) = if url.starts_with("postgres://") || url.starts_with("postgresql://")
    {
        match url.split_once('?') {
            Some((base, query)) => (Some(base), query, '&'),
            None => return (url.to_owned(), None),
        }
    } else {
        (None, url, ' ')
    };
    let mut root = None;
    let kept: Vec<&str> = params
        .split(sep)
        .filter(|kv| !kv.is_empty())
        .filter(|kv| match kv.strip_prefix("sslrootcert=") {
            Some(v) => {
                root = Some(PathBuf::from(v));
                false
            }
            None => true,
        })
        .collect();
    let joined = kept.join(&sep.to_string());
    let rest = match base {
        Some(base) if joined.is_empty() => base.to_owned(),
        Some(base) => format!("{base}?{joined}"),
        None => joined,
    };
    (rest, root)
}

/// A rustls connector trusting the CA certificates in `root`.
#[derive(Clone)]
pub(crate) struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl RustlsConnect {
    pub(crate) fn new(root: &Path) -> Result<Self, StoreError> {
        let unusable = |message: String| StoreError::RootCert {
            path: root.to_owned(),
            message,
        };
        let pem = std::fs::read(root).map_err(|e| unusable(format!("cannot read it: {e}")))?;
        let certs =
            zident_identity::pem::certs_from_pem(&pem).map_err(|e| unusable(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certs {
            roots.add(c).map_err(|e| unusable(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for RustlsConnect {
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, std::io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnector {
            config: self.config.clone(),
            name,
        })
    }
}

/// One handshake.
pub(crate) struct RustlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for RustlsConnector {
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<RustlsStream<S>, std::io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// The TLS stream.
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_file_is_taken_out_of_either_form() {
        assert_eq!(
            take_root_cert("postgres://u@h:5432/db?sslmode=require&sslrootcert=/etc/ca.pem"),
            (
                "postgres://u@h:5432/db?sslmode=require".into(),
                Some("/etc/ca.pem".into())
            )
        );
        assert_eq!(
            take_root_cert("postgres://u@h/db?sslrootcert=ca.pem"),
            ("postgres://u@h/db".into(), Some("ca.pem".into()))
        );
        assert_eq!(
            take_root_cert("host=h sslmode=require sslrootcert=ca.pem user=u"),
            (
                "host=h sslmode=require user=u".into(),
                Some("ca.pem".into())
            )
        );
        assert_eq!(
            take_root_cert("postgres://u@h/db"),
            ("postgres://u@h/db".into(), None)
        );
    }
}
