//! What runs beside the CA and the agent in the binary: the tunnel started for an agent's node
//! (and shown by the agent's endpoints), and waiting for the signal to stop. Shared by `zident
//! agent` and `zident up`.

use std::sync::Arc;

use zident_agent::RunningAgent;
use zident_ca::RunningCa;

/// The tunnel's metrics and open connections, shown by the agent's endpoints.
#[derive(Debug)]
pub struct TunnelPlane(pub Arc<zident_tunnel::observe::Observer>);

impl zident_agent::DataPlane for TunnelPlane {
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.0.register(registry);
    }

    fn connections(&self) -> serde_json::Value {
        serde_json::to_value(self.0.open_tunnels()).unwrap_or_default()
    }

    fn listeners(&self) -> serde_json::Value {
        serde_json::json!({
            "inbound": self.0.listeners().list(),
            "source_fallbacks": self.0.source_fallbacks(),
        })
    }
}

/// Starts the tunnel of an agent's node, unless disabled.
pub async fn start_tunnel(
    agent: &RunningAgent,
    node: &str,
    config: Option<zident_tunnel::node::TunnelConfig>,
    observer: Arc<zident_tunnel::observe::Observer>,
) -> Result<Option<zident_tunnel::node::RunningTunnel>, zident_tunnel::TunnelError> {
    let Some(config) = config else {
        return Ok(None);
    };
    zident_tunnel::node::start(
        config,
        node.to_owned(),
        agent.manager.clone(),
        agent.mesh.clone(),
        observer,
    )
    .await
    .map(Some)
}

/// Waits for Ctrl-C / SIGTERM or for the CA to stop on its own.
pub async fn wait_for_shutdown(ca: &mut RunningCa) {
    tokio::select! {
        _ = ca.wait() => tracing::error!("the CA server stopped"),
        _ = wait_for_signal() => {}
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
        _ = term => tracing::info!("terminated, shutting down"),
    }
}
