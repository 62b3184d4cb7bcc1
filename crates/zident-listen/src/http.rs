//! An axum router served over plain HTTP (1.1 or 2) within the limits: each connection admitted
//! to the table, each request marking it busy, headers that must arrive within
//! [`HEADER_TIMEOUT`], and idle or evicted connections closed (gracefully, for [`GRACE`]).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::accept::accept_loop;
use crate::limits::HEADER_TIMEOUT;
use crate::table::{Closing, Connections, Slot};

/// How long a connection asked to close may finish its requests.
const GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` within `connections`' limits until the task is dropped;
/// `name` is the server's name in log lines.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    connections: Arc<Connections>,
    name: &'static str,
) {
    accept_loop(listener, connections, name, move |tcp, peer, slot| {
        serve_connection(tcp, peer, router.clone(), slot)
    })
    .await
}

/// Serves `router` on one connection's `io` (plain, or TLS set up by the caller) for as long
/// as it lasts or until `slot` says to close it.
pub async fn serve_connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    router: axum::Router,
    slot: Slot,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tracker = slot.tracker();
    let service = tower::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = tracker.busy();
        let answer = router.clone().oneshot(req);
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        closing = slot.closing() => {
            if closing == Closing::Evicted {
                return;
            }
            tracing::debug!(target: "zident::listen", %peer, "closing an idle connection");
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(GRACE, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(target: "zident::listen", %peer, "connection ended: {e}");
    }
}
