//! The agent's HTTP endpoints: admin (loopback by default, read-only except the log level),
//! readiness, and Prometheus metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::certs::manager::CertificateManager;
use crate::certs::worker::CertState;
use crate::http::report::{CertificateReport, CertsReport};

/// The dashboard: one self-contained page (no external assets) that draws each certificate's
/// timeline from `/debug/certs` and refreshes itself.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Reads and changes the log filter at run time (`GET/POST /logging`).
pub trait LogControl: Send + Sync {
    /// The current filter, e.g. `info` or `info,zident::identity=debug`.
    fn level(&self) -> String;
    /// Replaces the filter; the error says what is wrong with it.
    fn set_level(&self, filter: &str) -> Result<(), LogFilterError>;
}

/// Why a log filter was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    /// The filter does not parse (`RUST_LOG` syntax).
    #[error("invalid log filter {filter:?}: {message}")]
    Invalid {
        /// The filter as given.
        filter: String,
        /// What the parser said.
        message: String,
    },
    /// The logger refused the change.
    #[error("cannot change the log filter: {0}")]
    Refused(String),
}

/// `GET /config_dump`: the `certificates` array, and the `workloads`, `services` and
/// `policies` in force (from the mesh file or the control plane), in ztunnel's shape, so tools
/// written for ztunnel (e.g. `istioctl ztunnel-config`) read it.
pub fn config_dump(manager: &CertificateManager, mesh: &zident_mesh::MeshFile) -> Value {
    let ztunnel_cert = |der: &[u8]| {
        let d = CertificateReport::of(der);
        json!({
            "pem": d.pem,
            "serialNumber": d.serial_number,
            "validFrom": d.valid_from,
            "expirationTime": d.valid_until,
        })
    };
    let certificates: Vec<Value> = manager
        .snapshot()
        .iter()
        .map(|(id, s)| {
            let (chain, roots) = match &s.last {
                Some(c) => (
                    c.chain.iter().map(|d| ztunnel_cert(d)).collect::<Vec<_>>(),
                    c.roots.iter().map(|d| ztunnel_cert(d)).collect::<Vec<_>>(),
                ),
                None => (vec![], vec![]),
            };
            let state = match &s.state {
                CertState::Unavailable(reason) => format!("Unavailable: {reason}"),
                other => other.name().to_string(),
            };
            json!({
                "identity": id.to_string(),
                "state": state,
                "certChain": chain,
                "rootCerts": roots,
            })
        })
        .collect();
    json!({
        "certificates": certificates,
        "workloads": mesh.workloads,
        "services": mesh.services,
        "policies": mesh.policies,
        "trustDomain": mesh.trust_domain.to_string(),
    })
}

#[derive(serde::Deserialize)]
struct LevelQuery {
    level: Option<String>,
}

/// The admin routes.
pub fn admin_router(
    manager: Arc<CertificateManager>,
    log: Option<Arc<dyn LogControl>>,
    data_plane: Option<Arc<dyn crate::config::DataPlane>>,
    mesh: tokio::sync::watch::Receiver<Arc<zident_mesh::NodeView>>,
    xds: Option<Arc<crate::xds::status::XdsStatusCell>>,
    workload_api: Option<Arc<crate::workload_api::shared::Clients>>,
) -> axum::Router {
    let m1 = manager.clone();
    let m2 = manager.clone();
    let m3 = manager;
    let log_get = log.clone();
    axum::Router::new()
        .route("/", get(|| async { axum::response::Html(DASHBOARD) }))
        .route(
            "/debug/certs",
            get(move || async move { Json(CertsReport::of(&m1)) }),
        )
        .route(
            "/config_dump",
            get(move || async move {
                let mesh = mesh.borrow().clone();
                Json(config_dump(&m2, mesh.mesh()))
            }),
        )
        .route(
            "/debug/connections",
            get(move || async move {
                let bundle = m3.trust().bundle();
                let ca = m3.ca().status();
                Json(json!({
                    // `sds` as well: istio-agent's runbook reads the CA link under that name.
                    "sds": ca,
                    "ca": ca,
                    "trust_bundle": {
                        "roots": bundle.roots().len(),
                        "sequence": bundle.sequence(),
                        "changes": m3.trust().change_count(),
                    },
                    "tunnels": data_plane.as_ref().map(|p| p.connections()).unwrap_or(json!([])),
                    "listeners": data_plane.as_ref().map(|p| p.listeners()).unwrap_or(json!(null)),
                    // The control plane's stream, when the mesh comes from it.
                    "xds": xds.as_ref().map(|x| x.get()),
                    // Who is connected to the Workload API, and as whom.
                    "workload_api_clients": workload_api.as_ref().map(|c| c.list()).unwrap_or_default(),
                }))
            }),
        )
        .route(
            "/logging",
            get(move || async move {
                match &log_get {
                    Some(l) => Json(json!({ "level": l.level() })).into_response(),
                    None => (
                        StatusCode::NOT_IMPLEMENTED,
                        "log level control is not available",
                    )
                        .into_response(),
                }
            })
            .post(move |Query(q): Query<LevelQuery>| async move {
                let Some(l) = &log else {
                    return (
                        StatusCode::NOT_IMPLEMENTED,
                        "log level control is not available".to_string(),
                    )
                        .into_response();
                };
                let Some(level) = q.level else {
                    return (
                        StatusCode::BAD_REQUEST,
                        "give the new filter as ?level=debug (or e.g. info,zident::identity=debug)"
                            .to_string(),
                    )
                        .into_response();
                };
                match l.set_level(&level) {
                    Ok(()) => {
                        tracing::info!("log level set to {level}");
                        Json(json!({ "level": l.level() })).into_response()
                    }
                    Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                }
            }),
        )
}

/// `GET /healthz/ready`: 200 once a mesh is in force (`mesh_ready`) and every local identity
/// has been Available at least once.
pub fn readiness_router(
    manager: Arc<CertificateManager>,
    mesh_ready: tokio::sync::watch::Receiver<bool>,
) -> axum::Router {
    axum::Router::new().route(
        "/healthz/ready",
        get(move || async move {
            if !*mesh_ready.borrow() {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for the mesh from the control plane (see /debug/connections, xds)\n"
                        .to_string(),
                );
            }
            let (ready, pending) = manager.readiness();
            if ready {
                (StatusCode::OK, "ready\n".to_string())
            } else {
                let list: Vec<String> = pending.iter().map(|i| i.to_string()).collect();
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "waiting for the first certificate of: {}\n",
                        list.join(", ")
                    ),
                )
            }
        }),
    )
}

/// `GET /metrics`.
pub fn metrics_router(registry: Arc<prometheus_client::registry::Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        get(move || async move {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
                    .into_response(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }),
    )
}
