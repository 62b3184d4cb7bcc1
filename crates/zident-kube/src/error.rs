//! Why the cluster source could not start.

use std::time::Duration;

/// Why the watchers could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The client cannot be built (no kubeconfig, no in-cluster account).
    #[error(
        "cannot configure a Kubernetes client: {0}; set KUBECONFIG, or run in a pod with a service account"
    )]
    Client(#[source] kube::Error),
    /// API discovery failed (the server is not reachable, or refuses us).
    #[error("cannot reach the Kubernetes API at {server}: {source}")]
    Unreachable {
        /// The server.
        server: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A kind did not list in time.
    #[error(
        "the Kubernetes API at {server} did not list {kinds} within {}s: {last_error}; check that the server is up and that the CA's account may list and watch them",
        timeout.as_secs()
    )]
    InitialSync {
        /// The server.
        server: String,
        /// The kinds still missing.
        kinds: String,
        /// How long it waited.
        timeout: Duration,
        /// The watch's last error, if any.
        last_error: String,
    },
}
