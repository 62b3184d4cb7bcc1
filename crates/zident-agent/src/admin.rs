//! The agent's HTTP endpoints: admin (loopback by default, read-only except the log level),
//! readiness, and Prometheus metrics.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use x509_parser::prelude::*;
use zident_identity::pem::to_pem;

use crate::json::rfc3339;
use crate::manager::CertificateManager;
use crate::worker::{CertState, IdentityStatus};

/// The dashboard: one self-contained page (no external assets) that draws each certificate's
/// timeline from `/debug/certs` and refreshes itself.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Reads and changes the log filter at run time (`GET/POST /logging`).
pub trait LogControl: Send + Sync {
    /// The current filter, e.g. `info` or `info,zident::identity=debug`.
    fn level(&self) -> String;
    /// Replaces the filter; the error says what is wrong with it.
    fn set_level(&self, filter: &str) -> Result<(), String>;
}

/// A certificate as the admin endpoints describe it (no key, ever).
fn describe(der: &[u8]) -> Value {
    let pem = to_pem("CERTIFICATE", der);
    match X509Certificate::from_der(der) {
        Ok((_, c)) => json!({
            "subject": c.subject().to_string(),
            "issuer": c.issuer().to_string(),
            "serial_number": zident_identity::serial_hex(c.raw_serial()),
            "valid_from": rfc3339(zident_identity::to_system_time(c.validity().not_before)),
            "valid_until": rfc3339(zident_identity::to_system_time(c.validity().not_after)),
            "sha256": zident_identity::fingerprint(der),
            "pem": pem,
        }),
        Err(e) => json!({ "error": e.to_string(), "pem": pem }),
    }
}

fn certificate_json(id: &zident_identity::SpiffeId, s: &IdentityStatus) -> Value {
    let mut v = json!({
        "spiffe_id": id.to_string(),
        "state": s.state.name(),
        "own": s.own,
    });
    if let Some(o) = v.as_object_mut() {
        if let Some(c) = &s.last {
            o.insert("valid_from".into(), json!(rfc3339(c.not_before)));
            o.insert("valid_until".into(), json!(rfc3339(c.not_after)));
            o.insert("serial_number".into(), json!(c.serial_hex));
            if let Some(root) = &s.signing_root {
                o.insert("root_sha256".into(), json!(root));
            }
            o.insert(
                "chain".into(),
                Value::Array(c.chain.iter().map(|d| describe(d)).collect()),
            );
        }
        if let Some(t) = s.rotation_at {
            o.insert("rotation_at".into(), json!(rfc3339(t)));
        }
        if let Some(t) = s.next_attempt {
            o.insert("next_attempt".into(), json!(rfc3339(t)));
        }
        match (&s.state, &s.last_error) {
            (CertState::Unavailable(reason), _) => {
                o.insert("error".into(), json!(reason));
            }
            (_, Some(e)) => {
                o.insert("error".into(), json!(e));
            }
            _ => {}
        }
    }
    v
}

/// `GET /debug/certs`.
pub fn debug_certs(manager: &CertificateManager) -> Value {
    let certificates: Vec<Value> = manager
        .snapshot()
        .iter()
        .map(|(id, s)| certificate_json(id, s))
        .collect();
    let bundle = manager.trust().bundle();
    json!({
        "certificates": certificates,
        "trust_bundle": bundle.roots().iter().map(|r| describe(r)).collect::<Vec<_>>(),
        "trust_bundle_sequence": bundle.sequence(),
        "events": manager.events(),
        "now": rfc3339(SystemTime::now()),
        // The CA's clock minus this node's (seconds), and when it counts as skewed.
        "clock_skew_seconds": manager.ca().clock().offset(),
        "clock_skew_threshold_seconds": manager.ca().clock().threshold().as_secs_f64(),
    })
}

/// `GET /config_dump`: the `certificates` array in ztunnel's shape, so tools written for
/// ztunnel (e.g. `istioctl ztunnel-config certificate`) read it.
pub fn config_dump(manager: &CertificateManager) -> Value {
    let ztunnel_cert = |der: &[u8]| {
        let d = describe(der);
        json!({
            "pem": d["pem"],
            "serialNumber": d["serial_number"],
            "validFrom": d["valid_from"],
            "expirationTime": d["valid_until"],
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
    json!({ "certificates": certificates })
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
) -> axum::Router {
    let m1 = manager.clone();
    let m2 = manager.clone();
    let m3 = manager;
    let log_get = log.clone();
    axum::Router::new()
        .route("/", get(|| async { axum::response::Html(DASHBOARD) }))
        .route(
            "/debug/certs",
            get(move || async move { Json(debug_certs(&m1)) }),
        )
        .route(
            "/config_dump",
            get(move || async move { Json(config_dump(&m2)) }),
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
                    Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
                }
            }),
        )
}

/// `GET /healthz/ready`: 200 once every local identity has been Available at least once.
pub fn readiness_router(manager: Arc<CertificateManager>) -> axum::Router {
    axum::Router::new().route(
        "/healthz/ready",
        get(move || async move {
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
