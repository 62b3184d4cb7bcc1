//! What runs beside the CA and the agent in the binary: the tunnel started for an agent's node
//! (and shown by the agent's endpoints), and waiting for the signal to stop. Shared by `zident
//! agent` and `zident up`.

use std::sync::Arc;

use zident_agent::{AgentConfig, RunningAgent};
use zident_ca::RunningCa;
use zident_tunnel::Observer;
use zident_tunnel::{RunningTunnel, TunnelConfig};

use crate::logging::LogHandle;

/// The tunnel's metrics and open connections, shown by the agent's endpoints.
#[derive(Debug)]
struct TunnelPlane(Arc<Observer>);

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

/// Starts the agent of `config` and, unless `tunnel` is `None`, its node's tunnel, whose
/// metrics and connections the agent's endpoints then show.
pub async fn start_node(
    mut config: AgentConfig,
    tunnel: Option<TunnelConfig>,
    log: Arc<LogHandle>,
) -> Result<(RunningAgent, Option<RunningTunnel>), String> {
    let observer = Observer::new();
    if tunnel.is_some() {
        config.data_plane = Some(Arc::new(TunnelPlane(observer.clone())));
    }
    let agent = RunningAgent::start(config, Some(log))
        .await
        .map_err(|e| e.to_string())?;
    let Some(tunnel) = tunnel else {
        return Ok((agent, None));
    };
    let running = zident_tunnel::start(
        tunnel,
        agent.manager.clone(),
        agent.mesh.clone(),
        observer,
        agent.connections.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((agent, Some(running)))
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
