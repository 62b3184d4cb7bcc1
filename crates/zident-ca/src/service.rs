//! The Istio certificate service: `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Each request is judged in a fixed order — authenticate the token, read the CSR, authorize
//! the identity, check the lifetime, sign — and every refusal is logged with its exact reason
//! and counted, while the caller learns only the gRPC status it needs to act on.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tonic::{Request, Response, Status};
use zident_identity::{CsrError, rfc3339, verify_csr_pem};
use zident_proto::istio_ca::istio_certificate_service_server::IstioCertificateService;
use zident_proto::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};

use crate::client_text::clip;
use crate::state::CaState;

/// The metadata key carrying the identity a node agent asks for on a workload's behalf.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The address of the connection a request came in on, set by the server per connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct CaService {
    state: Arc<CaState>,
}

impl CaService {
    /// A service over the shared CA state.
    pub fn new(state: Arc<CaState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let started = Instant::now();
        let metrics = &self.state.metrics;
        metrics.csr_count.inc();
        let peer = peer_of(&request);
        let cluster = request
            .metadata()
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();

        let registry = self.state.authorizer();
        let caller = authenticate(&self.state, &registry, request.metadata(), &peer, "request")
            .await
            .map_err(|(status, reason)| {
                metrics.reject(reason);
                status
            })?;

        let req = request.into_inner();
        let impersonated = match impersonated_identity(&req) {
            Ok(v) => v,
            Err(msg) => {
                metrics.reject("bad_metadata");
                tracing::warn!(target: "zident::ca", %peer, %caller, "refused: {msg}");
                return Err(Status::invalid_argument(msg.to_string()));
            }
        };
        let csr = match verify_csr_pem(&req.csr) {
            Ok(csr) => csr,
            Err(e) => {
                let reason = match e {
                    CsrError::NoUriSan
                    | CsrError::SeveralUriSans(_)
                    | CsrError::BadSpiffeId { .. } => {
                        metrics.id_extraction_err_count.inc();
                        "bad_identity"
                    }
                    _ => {
                        metrics.csr_parsing_err_count.inc();
                        "bad_csr"
                    }
                };
                metrics.reject(reason);
                tracing::warn!(target: "zident::ca", %peer, %caller, "refused CSR: {}", clip(&e.to_string()));
                return Err(Status::invalid_argument(e.to_string()));
            }
        };
        if csr.id.trust_domain_str() != registry.trust_domain().as_str() {
            metrics.id_extraction_err_count.inc();
            metrics.reject("foreign_trust_domain");
            let msg = format!(
                "{} is not in this CA's trust domain {}",
                csr.id,
                registry.trust_domain()
            );
            tracing::warn!(target: "zident::ca", %peer, %caller, "refused: {}", clip(&msg));
            return Err(Status::invalid_argument(msg));
        }
        if let Err(denied) =
            self.state
                .authorize(&registry, &caller, &csr.id, impersonated.as_deref())
        {
            metrics.id_extraction_err_count.inc();
            metrics.reject("permission_denied");
            tracing::warn!(target: "zident::ca", %peer, %caller, identity = %csr.id, "denied: {}", clip(&denied.to_string()));
            return Err(Status::permission_denied("permission denied"));
        }
        // A revoked identity or node whose reissue is denied gets nothing until an operator
        // lifts it (`zident ca allow-reissue`); it is told why, so its agent can say so.
        let node = self.state.caller_node(&caller);
        let node = node.as_deref();
        if let Some(denial) = self
            .state
            .revocations()
            .list
            .denial(csr.id.as_str(), node)
            .cloned()
        {
            metrics.reject("revoked");
            tracing::warn!(target: "zident::ca", %peer, %caller, identity = %csr.id, "refused: {} is revoked ({}) and denied reissue", denial.subject, denial.reason);
            return Err(Status::permission_denied(format!(
                "revoked: {} was revoked ({}) and may not be issued certificates until an operator runs `zident ca allow-reissue`",
                denial.subject, denial.reason
            )));
        }
        let ttl = match self.state.ttl.resolve(req.validity_duration) {
            Ok(ttl) => ttl,
            Err(msg) => {
                metrics.reject("ttl_too_long");
                tracing::warn!(target: "zident::ca", %peer, %caller, identity = %csr.id, "refused: {msg}");
                return Err(Status::invalid_argument(msg.to_string()));
            }
        };
        let authority = self.state.authority();
        let now = SystemTime::now();
        match authority.issue(&csr.id, &csr.public_key, ttl, now) {
            Ok(issued) => {
                metrics.success_cert_issuance_count.inc();
                self.state.ledger.record(
                    csr.id.as_str(),
                    crate::roots::ledger::Issuance {
                        at: zident_identity::unix_seconds(now),
                        not_before: zident_identity::unix_seconds(issued.not_before),
                        not_after: zident_identity::unix_seconds(issued.not_after),
                    },
                    Some(crate::roots::ledger::Certificate {
                        serial: issued.serial_hex.clone(),
                        node: node.map(str::to_owned),
                        issuer: authority.signer_key_id(),
                    }),
                );
                metrics
                    .issue_duration
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(
                    target: "zident::ca",
                    identity = %csr.id,
                    %caller,
                    cluster = %clip(&cluster),
                    serial = %issued.serial_hex,
                    not_after = %rfc3339(issued.not_after),
                    ttl_secs = ttl.as_secs(),
                    "issued certificate"
                );
                let mut response = Response::new(IstioCertificateResponse {
                    cert_chain: issued.chain,
                });
                // The CA's clock, so that agents can measure their skew against it.
                let ms = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                if let Ok(v) = ms.to_string().parse() {
                    response.metadata_mut().insert("zident-ca-time", v);
                }
                Ok(response)
            }
            Err(e) => {
                metrics.csr_sign_err_count.inc();
                metrics.reject("sign_failed");
                tracing::error!(target: "zident::ca", identity = %csr.id, %caller, "signing failed: {e}");
                Err(Status::internal("signing failed; see the CA log"))
            }
        }
    }
}

/// The caller a request's bearer token belongs to: a token of the mesh file, or with
/// `--kubernetes` a ServiceAccount token the API server accepts. A missing or refused token is
/// counted (`citadel_server_authentication_failure_count`) and logged with `peer`, `what` was
/// refused and the exact reason; the caller learns only `Unauthenticated`. The error carries the
/// status to answer and a reason code for the caller's own count.
pub(crate) async fn authenticate(
    state: &CaState,
    registry: &crate::node_authorizer::NodeAuthorizer,
    md: &tonic::metadata::MetadataMap,
    peer: &str,
    what: &str,
) -> Result<crate::node_authorizer::Caller, (Status, &'static str)> {
    let Some(token) = bearer_token(md) else {
        state.metrics.authentication_failure_count.inc();
        tracing::warn!(target: "zident::ca", %peer, "{what} denied: no bearer token in the authorization header");
        return Err((
            Status::unauthenticated("missing \"authorization: Bearer <token>\" metadata"),
            "no_token",
        ));
    };
    let digest = zident_identity::BearerDigest::of(token);
    if let Some(caller) = registry.authenticate(&digest).cloned() {
        return Ok(caller);
    }
    let Some(kube) = state.kube_auth() else {
        state.metrics.authentication_failure_count.inc();
        tracing::warn!(target: "zident::ca", %peer, "{what} denied: unknown bearer token");
        return Err((
            Status::unauthenticated("unknown bearer token"),
            "unknown_token",
        ));
    };
    let (outcome, answered) = kube.authenticate(token, &digest).await;
    state.metrics.token_review(answered, outcome.as_ref().err());
    outcome.map_err(|e| {
        state.metrics.authentication_failure_count.inc();
        tracing::warn!(target: "zident::ca", %peer, "{what} denied: not a mesh file token, and {e}");
        let status = match e {
            zident_kube::ReviewError::Unavailable(_) => Status::unavailable(
                "the token cannot be checked right now; retry",
            ),
            _ => Status::unauthenticated("bearer token refused"),
        };
        (status, e.reason())
    })
}

/// The address a request came from, as the server set it on its connection.
pub(crate) fn peer_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.to_string())
        .unwrap_or_default()
}

fn bearer_token(md: &tonic::metadata::MetadataMap) -> Option<&str> {
    let value = md.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// `ImpersonatedIdentity` metadata that is not a string.
#[derive(Debug, thiserror::Error)]
#[error("metadata {IMPERSONATED_IDENTITY} must be a string")]
struct NotAString;

fn impersonated_identity(req: &IstioCertificateRequest) -> Result<Option<String>, NotAString> {
    use prost_types::value::Kind;
    let Some(meta) = &req.metadata else {
        return Ok(None);
    };
    match meta
        .fields
        .get(IMPERSONATED_IDENTITY)
        .and_then(|v| v.kind.as_ref())
    {
        None => Ok(None),
        Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
        Some(_) => Err(NotAString),
    }
}
