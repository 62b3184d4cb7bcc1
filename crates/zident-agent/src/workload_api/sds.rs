//! Envoy's Secret Discovery Service for one workload, as istio-agent serves it to a sidecar
//! Envoy: `default` is the workload's certificate chain and key (a `tls_certificate`), `ROOTCA`
//! the trust bundle (a `validation_context`). Any other name is refused with the two that
//! exist.
//!
//! `StreamSecrets` (state of the world) and `DeltaSecrets` (incremental) push again on every
//! renewal and every change of the roots; `FetchSecrets` answers once. Versions and nonces
//! follow the xDS protocol: a request that answers an older nonce is ignored; a NACK (an answer
//! with `error_detail`) is logged with the client's reason and counted, and nothing is sent
//! until the secret changes again, so the client keeps the last one it accepted instead of
//! being sent the one it refused in a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use zident_identity::{CertState, CertificateProvider, SpiffeId, TrustBundle};

use super::attest::AttestRefused;
use zident_proto::envoy_tls::{
    CertificateValidationContext, DataSource, Secret, TlsCertificate, data_source, secret,
};
use zident_proto::sds::secret_discovery_service_server::SecretDiscoveryService;
use zident_proto::xds::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};

/// The type URL of every resource SDS carries.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The workload's certificate and key.
pub const DEFAULT: &str = "default";
/// The trust bundle.
pub const ROOTCA: &str = "ROOTCA";

/// How long `FetchSecrets` waits for a first certificate.
const FETCH_WAIT: Duration = Duration::from_secs(10);

/// Label of `zident_sds_events`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SdsLabel {
    /// `push`, `ack`, `nack` or `refused`.
    pub event: &'static str,
}

/// SDS events of the node, by kind.
pub type SdsEvents = Family<SdsLabel, Counter>;

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// SDS as one workload sees it.
pub struct SdsService<P> {
    id: Result<SpiffeId, AttestRefused>,
    provider: Arc<P>,
    stop: watch::Receiver<bool>,
    events: SdsEvents,
}

impl<P: CertificateProvider> SdsService<P> {
    /// SDS for a caller served as `id`, or refused for the reason it holds.
    pub fn new(
        id: Result<SpiffeId, AttestRefused>,
        provider: Arc<P>,
        stop: watch::Receiver<bool>,
        events: SdsEvents,
    ) -> Self {
        Self {
            id,
            provider,
            stop,
            events,
        }
    }

    fn identity(&self) -> Result<SpiffeId, Status> {
        self.id.clone().map_err(|why| {
            self.count("refused");
            Status::permission_denied(format!("no identity for this caller: {why}"))
        })
    }

    fn count(&self, event: &'static str) {
        self.events.get_or_create(&SdsLabel { event }).inc();
    }

    /// What a stream follows: the caller's certificate, the bundle, the stop signal, and the
    /// counter of its events.
    fn follow(&self) -> Result<Follow, Status> {
        let id = self.identity()?;
        let state = self
            .provider
            .watch(&id)
            .ok_or_else(|| Status::unavailable(format!("{id} is no longer served on this node")))?;
        let events = self.events.clone();
        Ok(Follow {
            state,
            bundle: self.provider.watch_bundle(),
            stop: self.stop.clone(),
            count: Box::new(move |event| {
                events.get_or_create(&SdsLabel { event }).inc();
            }),
        })
    }
}

/// See [`SdsService::follow`].
struct Follow {
    state: watch::Receiver<CertState>,
    bundle: watch::Receiver<Arc<TrustBundle>>,
    stop: watch::Receiver<bool>,
    count: Box<dyn Fn(&'static str) + Send + Sync>,
}

/// Checks the names a client asks for.
fn check_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), Status> {
    for n in names {
        if n != DEFAULT && n != ROOTCA {
            return Err(Status::invalid_argument(format!(
                "no secret named {n:?}: this agent serves \"{DEFAULT}\" (the workload's certificate and key) and \"{ROOTCA}\" (the trust bundle)"
            )));
        }
    }
    Ok(())
}

fn check_type(type_url: &str) -> Result<(), Status> {
    if !type_url.is_empty() && type_url != SECRET_TYPE {
        return Err(Status::invalid_argument(format!(
            "type {type_url:?} is not served here; SDS serves {SECRET_TYPE}"
        )));
    }
    Ok(())
}

/// What a secret is now: its version and the resource. `None` while the workload has no
/// certificate yet (a stream then waits).
fn current(name: &str, state: &CertState, bundle: &TrustBundle) -> Option<(String, Secret)> {
    match name {
        DEFAULT => {
            let CertState::Available(cert) = state else {
                return None;
            };
            let chain = zident_identity::pem::certs_to_pem(&cert.chain);
            let key = zeroize::Zeroizing::new(zident_identity::pem::to_pem(
                "PRIVATE KEY",
                &cert.key().pkcs8_der(),
            ));
            Some((
                cert.serial_hex.clone(),
                Secret {
                    name: DEFAULT.into(),
                    r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                        certificate_chain: Some(inline(chain.into_bytes())),
                        private_key: Some(inline(key.as_bytes().to_vec())),
                    })),
                },
            ))
        }
        _ => {
            let pem = bundle.to_pem();
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pem.as_bytes());
            let version = zident_identity::hex(&digest.as_ref()[..8]);
            Some((
                version,
                Secret {
                    name: ROOTCA.into(),
                    r#type: Some(secret::Type::ValidationContext(
                        CertificateValidationContext {
                            trusted_ca: Some(inline(pem.into_bytes())),
                        },
                    )),
                },
            ))
        }
    }
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
    }
}

fn any(secret: &Secret) -> prost_types::Any {
    prost_types::Any {
        type_url: SECRET_TYPE.into(),
        value: secret.encode_to_vec(),
    }
}

/// Every name in `names` as it is now, or `None` if one is not available yet.
fn all_current(
    names: &BTreeSet<String>,
    state: &CertState,
    bundle: &TrustBundle,
) -> Option<BTreeMap<String, (String, Secret)>> {
    names
        .iter()
        .map(|n| current(n, state, bundle).map(|c| (n.clone(), c)))
        .collect()
}

/// The xDS bookkeeping of one stream's answers: nonces, and what an answer means.
struct Nonces {
    last: u64,
}

enum Answer {
    /// A first request, or one with no nonce: a (re)subscription.
    Subscribe,
    /// Answers a response older than the last: ignored, per the protocol.
    Stale,
    Ack,
    Nack,
}

impl Nonces {
    fn next(&mut self) -> String {
        self.last += 1;
        self.last.to_string()
    }

    /// What a request with `nonce` and `error` means; an ACK or a NACK is counted, and a NACK
    /// logged with the client's reason.
    fn record_answer(
        &self,
        nonce: &str,
        error: Option<&zident_proto::xds::Status>,
        count: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Answer {
        if nonce.is_empty() {
            return Answer::Subscribe;
        }
        if nonce != self.last.to_string() {
            return Answer::Stale;
        }
        match error {
            Some(e) => {
                count("nack");
                tracing::warn!(target: "zident::identity", nonce, "an SDS client rejected the secrets sent (it keeps its last accepted ones): {}", e.message);
                Answer::Nack
            }
            None => {
                count("ack");
                Answer::Ack
            }
        }
    }
}

#[tonic::async_trait]
impl<P: CertificateProvider> SecretDiscoveryService for SdsService<P> {
    type DeltaSecretsStream = Stream_<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Stream_<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let Follow {
            mut state,
            mut bundle,
            mut stop,
            count,
        } = self.follow()?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut names: BTreeSet<String> = BTreeSet::new();
            let mut nonces = Nonces { last: 0 };
            // The version last sent, and whether a change since needs sending.
            let mut sent: Option<String> = None;
            let mut dirty = false;
            loop {
                if dirty && !names.is_empty() {
                    let now = {
                        let s = state.borrow_and_update();
                        let b = bundle.borrow_and_update();
                        all_current(&names, &s, &b)
                    };
                    if let Some(now) = now {
                        let version = now
                            .iter()
                            .map(|(n, (v, _))| format!("{n}={v}"))
                            .collect::<Vec<_>>()
                            .join(",");
                        if sent.as_deref() != Some(&version) {
                            let response = DiscoveryResponse {
                                version_info: version.clone(),
                                resources: now.values().map(|(_, s)| any(s)).collect(),
                                type_url: SECRET_TYPE.into(),
                                nonce: nonces.next(),
                            };
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                            count("push");
                            sent = Some(version);
                        }
                        dirty = false;
                    }
                }
                tokio::select! {
                    next = requests.next() => {
                        let req = match next {
                            Some(Ok(req)) => req,
                            Some(Err(_)) | None => return,
                        };
                        if let Err(e) = check_type(&req.type_url).and_then(|()| check_names(&req.resource_names)) {
                            count("refused");
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        let wanted: BTreeSet<String> = req.resource_names.iter().cloned().collect();
                        match nonces.record_answer(&req.response_nonce, req.error_detail.as_ref(), &*count) {
                            Answer::Stale => continue,
                            Answer::Ack | Answer::Nack => {}
                            Answer::Subscribe => {
                                // A fresh subscription is always answered.
                                sent = None;
                                dirty = true;
                            }
                        }
                        if wanted != names {
                            names = wanted;
                            sent = None;
                            dirty = true;
                        }
                    }
                    changed = state.changed() => {
                        if changed.is_err() { return }
                        dirty = true;
                    }
                    changed = bundle.changed() => {
                        if changed.is_err() { return }
                        dirty = true;
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let Follow {
            mut state,
            mut bundle,
            mut stop,
            count,
        } = self.follow()?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut names: BTreeSet<String> = BTreeSet::new();
            let mut nonces = Nonces { last: 0 };
            // What the client holds, by name: sent, or declared on reconnect.
            let mut held: BTreeMap<String, String> = BTreeMap::new();
            loop {
                let changed: Vec<Resource> = {
                    let s = state.borrow_and_update();
                    let b = bundle.borrow_and_update();
                    names
                        .iter()
                        .filter_map(|n| current(n, &s, &b).map(|c| (n, c)))
                        .filter(|(n, (v, _))| held.get(*n) != Some(v))
                        .map(|(n, (version, secret))| Resource {
                            version,
                            name: n.clone(),
                            resource: Some(any(&secret)),
                        })
                        .collect()
                };
                if !changed.is_empty() {
                    for r in &changed {
                        held.insert(r.name.clone(), r.version.clone());
                    }
                    let response = DeltaDiscoveryResponse {
                        system_version_info: String::new(),
                        resources: changed,
                        type_url: SECRET_TYPE.into(),
                        nonce: nonces.next(),
                        removed_resources: vec![],
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                    count("push");
                }
                tokio::select! {
                    next = requests.next() => {
                        let req = match next {
                            Some(Ok(req)) => req,
                            Some(Err(_)) | None => return,
                        };
                        if let Err(e) = check_type(&req.type_url).and_then(|()| check_names(&req.resource_names_subscribe)) {
                            count("refused");
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        match nonces.record_answer(&req.response_nonce, req.error_detail.as_ref(), &*count) {
                            Answer::Stale => continue,
                            Answer::Ack | Answer::Nack => {}
                            Answer::Subscribe => {
                                for (n, v) in req.initial_resource_versions {
                                    held.insert(n, v);
                                }
                            }
                        }
                        for n in req.resource_names_unsubscribe {
                            names.remove(&n);
                            held.remove(&n);
                        }
                        names.extend(req.resource_names_subscribe);
                    }
                    changed = state.changed() => if changed.is_err() { return },
                    changed = bundle.changed() => if changed.is_err() { return },
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let id = self.identity()?;
        let req = request.into_inner();
        check_type(&req.type_url)?;
        check_names(&req.resource_names)?;
        if req.resource_names.is_empty() {
            return Err(Status::invalid_argument(format!(
                "name the secrets to fetch: \"{DEFAULT}\", \"{ROOTCA}\""
            )));
        }
        let names: BTreeSet<String> = req.resource_names.into_iter().collect();
        if names.contains(DEFAULT) {
            self.provider
                .certificate(&id, FETCH_WAIT)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        let state = self
            .provider
            .watch(&id)
            .map(|w| w.borrow().clone())
            .ok_or_else(|| Status::unavailable(format!("{id} is no longer served on this node")))?;
        let now = all_current(&names, &state, &self.provider.bundle())
            .ok_or_else(|| Status::unavailable(format!("no certificate for {id} yet")))?;
        self.count("push");
        Ok(Response::new(DiscoveryResponse {
            version_info: now
                .iter()
                .map(|(n, (v, _))| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            resources: now.values().map(|(_, s)| any(s)).collect(),
            type_url: SECRET_TYPE.into(),
            nonce: String::new(),
        }))
    }
}
