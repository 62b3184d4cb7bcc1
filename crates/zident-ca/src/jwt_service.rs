//! `zident.ca.v1.JwtSvidService/CreateJwtSvid`: JWT-SVIDs, judged as certificates are.
//!
//! The same order as `CreateCertificate`: authenticate the token, read the request, authorize
//! the identity (a node for a workload on it, a workload for itself), check the lifetime,
//! sign. Every refusal is counted under its reason and logged with it; the caller gets the
//! status it can act on.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};
use zident_identity::{SpiffeId, jwt, rfc3339};
use zident_proto::zident_ca::jwt_svid_service_server::JwtSvidService;
use zident_proto::zident_ca::{CreateJwtSvidRequest, CreateJwtSvidResponse};

use crate::client_text::clip;
use crate::node_authorizer::Caller;
use crate::service::{authenticate, peer_of};
use crate::state::CaState;

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct JwtService {
    state: Arc<CaState>,
}

impl JwtService {
    /// A service over the shared CA state.
    pub fn new(state: Arc<CaState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl JwtSvidService for JwtService {
    async fn create_jwt_svid(
        &self,
        request: Request<CreateJwtSvidRequest>,
    ) -> Result<Response<CreateJwtSvidResponse>, Status> {
        let metrics = &self.state.metrics;
        let peer = peer_of(&request);
        let registry = self.state.authorizer();
        let caller = authenticate(
            &self.state,
            &registry,
            request.metadata(),
            &peer,
            "JWT-SVID request",
        )
        .await
        .map_err(|(status, reason)| {
            metrics.reject(reason);
            status
        })?;
        let req = request.into_inner();
        let refuse = |reason: &'static str, msg: String| {
            metrics.reject(reason);
            tracing::warn!(target: "zident::ca", %peer, %caller, "JWT-SVID refused: {}", clip(&msg));
            Status::invalid_argument(msg)
        };
        let id = SpiffeId::new(&req.spiffe_id).map_err(|e| {
            refuse(
                "bad_identity",
                format!("spiffe_id {:?}: {e}", req.spiffe_id),
            )
        })?;
        jwt::check_audience(&req.audience).map_err(|e| refuse("bad_audience", e.to_string()))?;
        // A node asks on behalf of a workload on it (as ImpersonatedIdentity does for
        // certificates); a workload with its own token asks for itself.
        let impersonated = match &caller {
            Caller::Node(_) => Some(id.as_str()),
            Caller::Identity(_) => None,
            Caller::ServiceAccount(sa) => sa.trusted.then_some(id.as_str()),
        };
        if let Err(denied) = self.state.authorize(&registry, &caller, &id, impersonated) {
            metrics.reject("permission_denied");
            tracing::warn!(target: "zident::ca", %peer, %caller, identity = %id, "JWT-SVID denied: {}", clip(&denied.to_string()));
            return Err(Status::permission_denied("permission denied"));
        }
        // The certificate rules, with --jwt-ttl as the default.
        let policy = crate::config::TtlPolicy {
            default_ttl: self.state.jwt_ttl,
            max_ttl: self.state.ttl.max_ttl,
        };
        let ttl = policy
            .resolve(req.validity_seconds)
            .map_err(|e| refuse("ttl_too_long", e.to_string()))?;
        let now = SystemTime::now();
        match self
            .state
            .authority()
            .sign_jwt(&id, &req.audience, now, ttl)
        {
            Ok(signed) => {
                metrics.jwt_svids_issued.inc();
                tracing::info!(
                    target: "zident::ca",
                    identity = %id,
                    %caller,
                    audience = ?signed.audience,
                    expires = %rfc3339(signed.expiry),
                    "issued JWT-SVID"
                );
                Ok(Response::new(CreateJwtSvidResponse {
                    token: signed.token,
                }))
            }
            Err(e) => {
                metrics.reject("sign_failed");
                tracing::error!(target: "zident::ca", identity = %id, %caller, "JWT-SVID signing failed: {e}");
                Err(Status::failed_precondition(e.to_string()))
            }
        }
    }
}
