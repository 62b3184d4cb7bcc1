//! A client of one API server: where it comes from (a kubeconfig, or the pod's service account)
//! and the bounds every call through it has.

use std::time::Duration;

use kube::Client;

use crate::error::SourceError;

/// A client of one API server, and its address for messages.
#[derive(Clone)]
pub struct Connection {
    /// The client.
    pub client: Client,
    /// The server's URL.
    pub server: String,
}

/// Connecting to the API server and sending a request give up after this long, and each call
/// this crate makes itself is bounded by it as a whole.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The API server ends each watch after this long, and the watcher resumes it from the last
/// resourceVersion (kube's default is 290 s).
pub(crate) const WATCH_SECONDS: u32 = 60;

/// No byte from the API server for this long ends a request, a list or a watch: a connection
/// that went silent (a server that froze, a network that drops packets) is noticed within
/// it, where kube's default (295 s) left a dead watch looking healthy for five minutes. A live
/// watch is ended by the server at [`WATCH_SECONDS`] first.
const READ_TIMEOUT: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 15);

impl Connection {
    /// A client from `KUBECONFIG` (or `~/.kube/config`), or the in-cluster service account.
    pub async fn infer() -> Result<Self, SourceError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| SourceError::Client(kube::Error::InferConfig(e)))?;
        Self::with(config)
    }

    /// A client from the kubeconfig file at `path` (its current context).
    pub async fn from_kubeconfig(path: &std::path::Path) -> Result<Self, SourceError> {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| SourceError::Client(kube::Error::InferKubeconfig(e)))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| SourceError::Client(kube::Error::InferKubeconfig(e)))?;
        Self::with(config)
    }

    fn with(mut config: kube::Config) -> Result<Self, SourceError> {
        config.connect_timeout = Some(REQUEST_TIMEOUT);
        config.write_timeout = Some(REQUEST_TIMEOUT);
        config.read_timeout = Some(READ_TIMEOUT);
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(SourceError::Client)?;
        Ok(Self { client, server })
    }
}
