//! The SPIFFE Workload API for one caller: `FetchX509SVID` and `FetchX509Bundles` stream the
//! workload's SVID and the trust bundle, with a new full message on every rotation and every
//! bundle change; `FetchJWTSVID` hands out a JWT-SVID for the caller's identity,
//! `FetchJWTBundles` streams the JWT keys on every change of them, and `ValidateJWTSVID`
//! checks a token against them. The identity is decided before: by the socket a workload reaches, or by
//! attesting the caller on the shared socket; a caller that was refused gets
//! `PermissionDenied` with the reason on every call.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use zident_identity::{CertState, CertificateProvider, SpiffeId, TrustBundle, jwt};

use super::attest::AttestRefused;
use zident_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use zident_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};

/// The metadata every Workload API request must carry, so a browser or a confused proxy
/// cannot be tricked into calling the API.
const SECURITY_HEADER: &str = "workload.spiffe.io";

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API as one workload sees it, served from any [`CertificateProvider`].
pub struct WorkloadApiService<P> {
    id: Result<SpiffeId, AttestRefused>,
    provider: Arc<P>,
    /// Becomes true when the workload leaves or the agent stops: streams then end cleanly.
    stop: watch::Receiver<bool>,
}

impl<P: CertificateProvider> WorkloadApiService<P> {
    /// The API for a workload with identity `id`.
    pub fn new(id: SpiffeId, provider: Arc<P>, stop: watch::Receiver<bool>) -> Self {
        Self::for_caller(Ok(id), provider, stop)
    }

    /// The API for a caller attested as `id`, or refused for the reason it holds.
    pub fn for_caller(
        id: Result<SpiffeId, AttestRefused>,
        provider: Arc<P>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self { id, provider, stop }
    }

    fn identity(&self) -> Result<SpiffeId, Status> {
        self.id
            .clone()
            .map_err(|why| Status::permission_denied(format!("no identity for this caller: {why}")))
    }
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req
        .metadata()
        .get(SECURITY_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "security header missing from request: every Workload API call must carry metadata \"{SECURITY_HEADER}: true\""
        ))),
    }
}

fn bundle_der(bundle: &TrustBundle) -> Vec<u8> {
    bundle
        .roots()
        .iter()
        .flat_map(|r| r.iter().copied())
        .collect()
}

fn svid_message(state: &CertState, bundle: &TrustBundle) -> Option<X509svidResponse> {
    let CertState::Available(cert) = state else {
        return None;
    };
    Some(X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: cert.id.to_string(),
            x509_svid: cert.chain.iter().flat_map(|c| c.iter().copied()).collect(),
            x509_svid_key: cert.key().pkcs8_der().to_vec(),
            bundle: bundle_der(bundle),
            hint: String::new(),
        }],
        crl: vec![],
        federated_bundles: HashMap::new(),
    })
}

#[tonic::async_trait]
impl<P: CertificateProvider> SpiffeWorkloadApi for WorkloadApiService<P> {
    type FetchX509SVIDStream = Stream_<X509svidResponse>;
    type FetchX509BundlesStream = Stream_<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream_<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        let id = self.identity()?;
        let mut status = self
            .provider
            .watch(&id)
            .ok_or_else(|| Status::unavailable(format!("{id} is no longer served on this node")))?;
        if let CertState::Unavailable(reason) = &*status.borrow() {
            // A workload asks now: retry at once rather than at the next backoff step (the
            // seam's `current` asks for one when there is no valid certificate).
            let _ = self.provider.current(&id);
            return Err(Status::unavailable(reason.detail.clone()));
        }
        let mut bundle = self.provider.watch_bundle();
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // What was last sent: the leaf's serial and the bundle's sequence.
            let mut sent: Option<(String, u64)> = None;
            loop {
                let item = {
                    let s = status.borrow_and_update();
                    let b = bundle.borrow_and_update();
                    match &*s {
                        CertState::Available(c) => {
                            let key = (c.serial_hex.clone(), b.sequence());
                            (sent.as_ref() != Some(&key)).then(|| {
                                sent = Some(key);
                                svid_message(&s, &b).ok_or_else(|| Status::internal("no SVID"))
                            })
                        }
                        CertState::Unavailable(reason) => {
                            Some(Err(Status::unavailable(reason.detail.clone())))
                        }
                        CertState::Initializing => None,
                    }
                };
                if let Some(item) = item {
                    let last = item.is_err();
                    if tx.send(item).await.is_err() || last {
                        return;
                    }
                }
                tokio::select! {
                    changed = status.changed() => if changed.is_err() { return },
                    changed = bundle.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        self.identity()?;
        let mut bundle = self.provider.watch_bundle();
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let message = {
                    let b = bundle.borrow_and_update();
                    X509BundlesResponse {
                        crl: vec![],
                        bundles: [(b.trust_domain().id_string(), bundle_der(&b))].into(),
                    }
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = bundle.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&request)?;
        let id = self.identity()?;
        let req = request.into_inner();
        if !req.spiffe_id.is_empty() && req.spiffe_id != id.as_str() {
            return Err(Status::permission_denied(format!(
                "this caller is {id}; it cannot have a JWT-SVID for {}",
                req.spiffe_id
            )));
        }
        jwt::check_audience(&req.audience).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let jwt = self
            .provider
            .jwt_svid(&id, &req.audience)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id: id.to_string(),
                svid: jwt.token.clone(),
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        self.identity()?;
        let mut bundle = self.provider.watch_bundle();
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // Sent again only when the JWT keys change, not for every new X.509 root.
            let mut sent: Option<Vec<zident_identity::jwt::JwtKey>> = None;
            loop {
                let message = {
                    let b = bundle.borrow_and_update();
                    if sent.as_deref() == Some(b.jwt_keys()) {
                        None
                    } else {
                        sent = Some(b.jwt_keys().to_vec());
                        Some(b.jwt_jwks_json().map(|json| JwtBundlesResponse {
                            bundles: [(b.trust_domain().id_string(), json.into_bytes())].into(),
                        }))
                    }
                };
                if let Some(message) = message {
                    let message = message.map_err(|e| Status::internal(e.to_string()));
                    let last = message.is_err();
                    if tx.send(message).await.is_err() || last {
                        return;
                    }
                }
                tokio::select! {
                    changed = bundle.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        self.identity()?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must not be empty"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must not be empty"));
        }
        let bundle = self.provider.bundle();
        let valid = jwt::validate(
            &req.svid,
            bundle.jwt_keys(),
            bundle.trust_domain(),
            &req.audience,
            std::time::SystemTime::now(),
        )
        .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: valid.id.to_string(),
            claims: Some(json_struct(valid.claims)),
        }))
    }
}

/// A JSON object as a protobuf `Struct` (the claims of `ValidateJWTSVID`).
fn json_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, json_value(v))).collect(),
    }
}

fn json_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(json_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
