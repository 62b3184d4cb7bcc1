//! Accepting connections within the limits: each accepted connection is admitted to the
//! [`Connections`] table (or refused, when every connection is busy), and a failed accept (out
//! of descriptors, usually) pauses the loop instead of spinning and is logged at most once per
//! [`LOG_EVERY`] with how many failed since.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::limits::LOG_EVERY;
use crate::table::{Connections, Slot};

/// How long the loop pauses after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Accepts on `listener` until the task is dropped (which ends the connections it started):
/// each connection admitted to `connections` is handed to `handle` with its place, which it
/// holds for the connection's life.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    connections: Arc<Connections>,
    name: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut running = JoinSet::new();
    let mut errors = AcceptErrors::new(name);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Over a cap with every connection busy: refused (and logged) by dropping.
                    if let Some(slot) = connections.admit(peer) {
                        running.spawn(handle(tcp, peer, slot));
                    }
                }
                Err(e) => {
                    errors.failed(&e);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
}

/// Logs a failed accept at most once per [`LOG_EVERY`], counting the failures in between.
pub struct AcceptErrors {
    name: &'static str,
    last: Option<Instant>,
    since: u64,
}

impl AcceptErrors {
    /// For the server `name`.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            last: None,
            since: 0,
        }
    }

    /// Records one failure; logs it unless one was logged lately.
    pub fn failed(&mut self, e: &std::io::Error) {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        let hint = if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) {
            " (out of file descriptors: raise the limit, or lower --max-connections)"
        } else {
            ""
        };
        tracing::warn!(target: "zident::listen", server = self.name, failures = self.since, "accept failed: {e}{hint}; backing off");
        self.last = Some(now);
        self.since = 0;
    }
}
