//! Serving a router on a TCP port, in plain HTTP or with the agent's own certificate, within
//! the limits every zident server takes (`zident_listen`): a total and a per-source cap that
//! make room by closing the longest-idle connection, idle, handshake and header timeouts.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use zident_listen::Connections;

use crate::certs::manager::CertificateManager;
use crate::http::own_tls;

async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Serves `router` in plain HTTP on `addr` within `connections`; returns the bound address.
pub(crate) async fn serve(
    addr: SocketAddr,
    router: axum::Router,
    connections: &Arc<Connections>,
    name: &'static str,
    tasks: &mut Vec<JoinHandle<()>>,
) -> std::io::Result<SocketAddr> {
    let (listener, bound) = bind(addr).await?;
    tasks.push(tokio::spawn(zident_listen::serve_http(
        listener,
        router,
        connections.clone(),
        name,
    )));
    Ok(bound)
}

/// Serves `router` over TLS with the agent's own current certificate, within `connections`.
pub(crate) async fn serve_tls(
    addr: SocketAddr,
    router: axum::Router,
    manager: Arc<CertificateManager>,
    own: zident_identity::SpiffeId,
    connections: &Arc<Connections>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> std::io::Result<SocketAddr> {
    let (listener, bound) = bind(addr).await?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(own_tls::OwnCertResolver::new(manager, own)));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tasks.push(tokio::spawn(zident_listen::accept_loop(
        listener,
        connections.clone(),
        "agent metrics (TLS)",
        move |tcp, peer, slot| {
            let (acceptor, router) = (acceptor.clone(), router.clone());
            async move {
                let handshake = tokio::select! {
                    done = tokio::time::timeout(zident_listen::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => done,
                    _ = slot.closing() => return,
                };
                let Ok(Ok(tls)) = handshake else { return };
                zident_listen::serve_connection(tls, peer, router, slot).await;
            }
        },
    )));
    Ok(bound)
}
