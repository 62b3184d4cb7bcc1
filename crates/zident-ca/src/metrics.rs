//! CA metrics, under istiod's names so existing Istio dashboards work unchanged.
//!
//! istiod exports its counters without the `_total` suffix that OpenMetrics counters carry,
//! so those are encoded as plain samples ([`IstioCounter`]); zident's own metrics follow the
//! usual Prometheus conventions.

use std::time::SystemTime;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A counter exposed as `name value` (no `_total`), the way istiod exposes its counters.
#[derive(Debug, Clone, Default)]
pub struct IstioCounter(Counter);

impl IstioCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }
    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl prometheus_client::metrics::TypedMetric for IstioCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for IstioCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0.get() as i64))
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// Label for [`CaMetrics::rejected`]: why a request was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A short, stable reason code.
    pub reason: &'static str,
}

/// Label for [`CaMetrics::token_reviews`]: where an answer came from and what it was.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabel {
    /// `api` (a TokenReview was sent) or `cache`.
    pub answered: &'static str,
    /// `accepted`, or the refusal's reason code.
    pub result: &'static str,
}

/// Label for [`CaMetrics::root_config_maps`]: what a write of `istio-ca-root-cert` did.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabel {
    /// `created`, `updated` (new roots), `repaired` (someone changed it) or `failed`.
    pub change: &'static str,
}

/// Label for [`CaMetrics::dns_cert_expiry`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabel {
    /// The entry's `secretName`.
    pub secret_name: String,
}

/// Label for [`CaMetrics::config_reloads`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    /// `mesh` or `root_ca_dir`.
    pub source: &'static str,
    /// `applied` or `rejected`.
    pub outcome: &'static str,
}

/// Label for [`CaMetrics::kubernetes_findings`]: an object refused or partly enforced.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabel {
    /// The object's kind (`Pod`, `Service`, …).
    pub kind: &'static str,
    /// Why (`NoServiceAccount`, `DuplicateAddress`, …).
    pub reason: &'static str,
    /// `refused` or `degraded`.
    pub severity: &'static str,
}

/// Every metric the CA exports.
#[derive(Debug)]
pub struct CaMetrics {
    /// Certificate requests received.
    pub csr_count: IstioCounter,
    /// Requests with a missing or unknown token.
    pub authentication_failure_count: IstioCounter,
    /// CSRs that could not be parsed or whose signature failed.
    pub csr_parsing_err_count: IstioCounter,
    /// CSRs whose SPIFFE ID could not be extracted or was not allowed.
    pub id_extraction_err_count: IstioCounter,
    /// Signing failures.
    pub csr_sign_err_count: IstioCounter,
    /// Certificates issued.
    pub success_cert_issuance_count: IstioCounter,
    /// Unix time the earliest root expires.
    pub root_cert_expiry_timestamp: Gauge<i64>,
    /// Unix time the signing chain expires.
    pub cert_chain_expiry_timestamp: Gauge<i64>,
    /// Requests refused, by reason.
    pub rejected: Family<ReasonLabel, Counter>,
    /// ServiceAccount tokens judged, by where the answer came from and what it was.
    pub token_reviews: Family<ReviewLabel, Counter>,
    /// Writes of `istio-ca-root-cert` ConfigMaps, by what they did.
    pub root_config_maps: Family<ChangeLabel, Counter>,
    /// Configuration reloads, by source and outcome.
    pub config_reloads: Family<ReloadLabel, Counter>,
    /// Time to handle an issuance, seconds.
    pub issue_duration: Histogram,
    /// 1 while a replica's shared datastore is unreachable (it serves from its copy).
    pub datastore_degraded: Gauge,
    /// 1 while this replica holds the leader lock (takes rotation steps).
    pub leader: Gauge,
    /// JWT-SVIDs signed.
    pub jwt_svids_issued: Counter,
    /// Unix time each DNS certificate in `--dns-cert-dir` expires.
    pub dns_cert_expiry: Family<SecretLabel, Gauge<i64>>,
    /// Kubernetes objects refused or partly enforced, counted once per version of an object.
    pub kubernetes_findings: Family<FindingLabel, Counter>,
    /// Certificates the CRLs list.
    pub crl_revoked: Gauge,
    /// The CRLs' number.
    pub crl_number: Gauge,
    /// Unix time of the CRLs' nextUpdate.
    pub crl_next_update: Gauge<i64>,
}

impl CaMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            csr_count: Default::default(),
            authentication_failure_count: Default::default(),
            csr_parsing_err_count: Default::default(),
            id_extraction_err_count: Default::default(),
            csr_sign_err_count: Default::default(),
            success_cert_issuance_count: Default::default(),
            root_cert_expiry_timestamp: Default::default(),
            cert_chain_expiry_timestamp: Default::default(),
            rejected: Default::default(),
            token_reviews: Default::default(),
            root_config_maps: Default::default(),
            config_reloads: Default::default(),
            issue_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            datastore_degraded: Gauge::default(),
            leader: Gauge::default(),
            jwt_svids_issued: Counter::default(),
            dns_cert_expiry: Default::default(),
            kubernetes_findings: Default::default(),
            crl_revoked: Gauge::default(),
            crl_number: Gauge::default(),
            crl_next_update: Gauge::default(),
        };
        registry.register(
            "zident_ca_crl_revoked_certificates",
            "Certificates the CA's CRLs list as revoked (and not yet expired)",
            m.crl_revoked.clone(),
        );
        registry.register(
            "zident_ca_crl_number",
            "The CRL number of the CRLs in force",
            m.crl_number.clone(),
        );
        registry.register(
            "zident_ca_crl_next_update_timestamp",
            "Unix time of the nextUpdate of the CRLs in force (they are signed again at half their validity)",
            m.crl_next_update.clone(),
        );
        let istio: [(&str, &str, &IstioCounter); 6] = [
            (
                "citadel_server_csr_count",
                "The number of CSRs received",
                &m.csr_count,
            ),
            (
                "citadel_server_authentication_failure_count",
                "The number of authentication failures",
                &m.authentication_failure_count,
            ),
            (
                "citadel_server_csr_parsing_err_count",
                "The number of errors occurred when parsing the CSR",
                &m.csr_parsing_err_count,
            ),
            (
                "citadel_server_id_extraction_err_count",
                "The number of errors occurred when extracting the ID from CSR",
                &m.id_extraction_err_count,
            ),
            (
                "citadel_server_csr_sign_err_count",
                "The number of errors occurred when signing the CSR",
                &m.csr_sign_err_count,
            ),
            (
                "citadel_server_success_cert_issuance_count",
                "The number of certificates issuances that have succeeded",
                &m.success_cert_issuance_count,
            ),
        ];
        for (name, help, counter) in istio {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "citadel_server_root_cert_expiry_timestamp",
            "The unix timestamp, in seconds, when the CA root cert will expire",
            m.root_cert_expiry_timestamp.clone(),
        );
        registry.register(
            "citadel_server_cert_chain_expiry_timestamp",
            "The unix timestamp, in seconds, when the CA cert chain will expire",
            m.cert_chain_expiry_timestamp.clone(),
        );
        registry.register(
            "zident_ca_requests_rejected",
            "Certificate requests refused, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "zident_ca_token_reviews",
            "Kubernetes ServiceAccount tokens judged, by answered (api: a TokenReview was sent; cache) and result (accepted, or the refusal's reason)",
            m.token_reviews.clone(),
        );
        registry.register(
            "zident_ca_root_config_map_writes",
            "Writes of the istio-ca-root-cert ConfigMap (the CA's roots in every namespace), by change: created, updated (new roots), repaired (someone changed it), failed (retried)",
            m.root_config_maps.clone(),
        );
        registry.register(
            "zident_ca_config_reloads",
            "Reloads of the mesh file or plugged-in CA files, by outcome",
            m.config_reloads.clone(),
        );
        registry.register(
            "zident_ca_datastore_degraded",
            "1 while the shared datastore is unreachable and this replica serves from its copy",
            m.datastore_degraded.clone(),
        );
        registry.register(
            "zident_ca_leader",
            "1 while this replica holds the leader lock and takes root rotation steps",
            m.leader.clone(),
        );
        registry.register(
            "zident_ca_jwt_svids_issued",
            "JWT-SVIDs signed (refusals are counted in zident_ca_requests_rejected)",
            m.jwt_svids_issued.clone(),
        );
        registry.register(
            "zident_ca_dns_certificate_expiry_timestamp",
            "The unix timestamp, in seconds, when each DNS certificate (mesh `certificates:`) expires",
            m.dns_cert_expiry.clone(),
        );
        registry.register(
            "zident_ca_kubernetes_objects_refused",
            "Kubernetes objects left out of the mesh or partly enforced, by kind, reason and severity (once per version of an object)",
            m.kubernetes_findings.clone(),
        );
        registry.register(
            "zident_ca_issue_duration_seconds",
            "Time to authenticate, check and sign one certificate request",
            m.issue_duration.clone(),
        );
        m
    }

    /// Counts a ServiceAccount token judged.
    pub fn token_review(
        &self,
        answered: zident_kube::Answered,
        refused: Option<&zident_kube::ReviewError>,
    ) {
        let answered = match answered {
            zident_kube::Answered::Api => "api",
            zident_kube::Answered::Cache => "cache",
        };
        let result = refused.map_or("accepted", zident_kube::ReviewError::reason);
        self.token_reviews
            .get_or_create(&ReviewLabel { answered, result })
            .inc();
    }

    /// Counts one round of `istio-ca-root-cert` writes.
    pub fn root_config_maps(&self, round: &zident_kube::Round) {
        for (change, n) in [
            ("created", round.created),
            ("updated", round.updated),
            ("repaired", round.repaired),
            ("failed", round.failed),
        ] {
            if n > 0 {
                self.root_config_maps
                    .get_or_create(&ChangeLabel { change })
                    .inc_by(n as u64);
            }
        }
    }

    /// Counts a refused request under `reason`.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Records when DNS certificate `secret_name` expires.
    pub fn set_dns_cert_expiry(&self, secret_name: &str, not_after: SystemTime) {
        self.dns_cert_expiry
            .get_or_create(&SecretLabel {
                secret_name: secret_name.to_owned(),
            })
            .set(zident_identity::unix_seconds(not_after) as i64);
    }

    /// Drops the expiry of a DNS certificate that was deleted.
    pub fn forget_dns_cert(&self, secret_name: &str) {
        self.dns_cert_expiry.remove(&SecretLabel {
            secret_name: secret_name.to_owned(),
        });
    }

    /// Counts a Kubernetes object refused or partly enforced.
    pub fn kubernetes_finding(
        &self,
        kind: &'static str,
        reason: &'static str,
        severity: &'static str,
    ) {
        self.kubernetes_findings
            .get_or_create(&FindingLabel {
                kind,
                reason,
                severity,
            })
            .inc();
    }

    /// Counts a reload outcome.
    pub fn reload(&self, source: &'static str, applied: bool) {
        let outcome = if applied { "applied" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ReloadLabel { source, outcome })
            .inc();
    }

    /// Sets the expiry gauges from an authority.
    pub fn set_expiries(&self, root: Option<SystemTime>, chain: SystemTime) {
        let secs = |t| zident_identity::unix_seconds(t) as i64;
        if let Some(root) = root {
            self.root_cert_expiry_timestamp.set(secs(root));
        }
        self.cert_chain_expiry_timestamp.set(secs(chain));
    }

    /// Sets the CRL gauges from the CRLs in force.
    pub(crate) fn set_crls(&self, crls: &crate::revocation::CrlSet) {
        self.crl_revoked.set(crls.revoked() as i64);
        self.crl_number.set(crls.number as i64);
        self.crl_next_update
            .set(zident_identity::unix_seconds(crls.next_update) as i64);
    }
}

/// Whether the CA is ready, and why not; ready with a note when it serves from a stale view
/// (the CA still issues and pushes the last good mesh, so it stays in its Service).
pub(crate) type Readiness =
    std::sync::Arc<dyn Fn() -> Result<Option<String>, crate::datastore::NotReady> + Send + Sync>;

/// Serves `GET /metrics` (OpenMetrics text), `GET /ready` and, with a cluster source,
/// `GET /debug/kubernetes` on `addr`.
pub(crate) async fn serve_metrics(
    addr: std::net::SocketAddr,
    registry: std::sync::Arc<prometheus_client::registry::Registry>,
    ready: Readiness,
    cluster: Option<std::sync::Arc<std::sync::Mutex<crate::cluster_view::ClusterView>>>,
    limits: zident_listen::ConnectionLimits,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/ready",
            axum::routing::get(move || async move {
                use axum::response::IntoResponse;
                match ready() {
                    Ok(None) => (axum::http::StatusCode::OK, "ready\n".to_string()).into_response(),
                    Ok(Some(note)) => {
                        (axum::http::StatusCode::OK, format!("ready; {note}\n")).into_response()
                    }
                    Err(why) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("{why}\n"),
                    )
                        .into_response(),
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                let mut body = String::new();
                use axum::response::IntoResponse;
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response(),
                    Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }),
        );
    let app = match cluster {
        Some(view) => app.route(
            "/debug/kubernetes",
            axum::routing::get(move || async move {
                let json = view.lock().unwrap_or_else(|e| e.into_inner()).to_json();
                axum::Json(json)
            }),
        ),
        None => app,
    };
    // The same limits as the TLS port (idle, per-source and total caps, a header timeout),
    // in a budget of its own so a flood here cannot close the CA's gRPC connections.
    let connections = zident_listen::Connections::new("CA metrics", limits);
    let task = tokio::spawn(zident_listen::serve_http(
        listener,
        app,
        connections,
        "CA metrics",
    ));
    Ok((bound, task))
}
