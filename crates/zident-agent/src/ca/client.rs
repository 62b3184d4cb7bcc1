//! Asking the CA for certificates, over gRPC + TLS, the way ztunnel does: bearer token,
//! `clusterid`, and `ImpersonatedIdentity` naming the workload's identity.
//!
//! The channel connects lazily and reconnects on its own; every call has a deadline. What
//! happened last is kept for `/debug/connections`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost_types::{Struct, Value, value::Kind};
use rustls_pki_types::ServerName;
use zident_identity::{Cause, SpiffeId};
use zident_proto::istio_ca::IstioCertificateRequest;
use zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use zident_proto::zident_ca::CreateJwtSvidRequest;
use zident_proto::zident_ca::jwt_svid_service_client::JwtSvidServiceClient;

use crate::ca::endpoints::{CaAddressError, Endpoints};
use crate::ca::ends_early::CaChannel;
use crate::ca::trust::TrustStore;
use crate::config::{CaClientConfig, TokenError, TokenSource};

/// Why a request to the CA failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaError {
    /// No answer: connection refused, TLS failure, deadline.
    #[error("CA unreachable at {address}: {message}")]
    Unreachable {
        /// The CA address.
        address: String,
        /// What the transport said.
        message: String,
    },
    /// TLS to the CA failed on its certificate's validity by this node's clock: the CA is
    /// there, this node's clock disagrees with it.
    #[error("CA at {address} cannot be trusted by this node's clock: {message}")]
    ClockSkew {
        /// The CA address.
        address: String,
        /// What the handshake said, and the skew it implies.
        message: String,
    },
    /// The CA answered with an error status.
    #[error("CA refused the request ({code:?}): {message}")]
    Refused {
        /// gRPC status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The token could not be read.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl CaError {
    /// The typed cause, for consumers and the metric's `reason`.
    pub fn cause(&self) -> Cause {
        match self {
            CaError::Unreachable { .. } => Cause::CaUnreachable,
            CaError::ClockSkew { .. } => Cause::CaClockSkew,
            CaError::Refused { code, message } => match code {
                tonic::Code::Unauthenticated => Cause::Unauthenticated,
                // zident's CA names a revocation whose reissue an operator denied.
                tonic::Code::PermissionDenied if message.starts_with("revoked:") => Cause::Revoked,
                tonic::Code::PermissionDenied => Cause::Denied,
                tonic::Code::InvalidArgument => Cause::InvalidRequest,
                tonic::Code::DeadlineExceeded => Cause::CaTimeout,
                tonic::Code::Unavailable => Cause::CaUnreachable,
                _ => Cause::CaError,
            },
            CaError::Token(_) => Cause::Token,
        }
    }
}

/// The state of the CA connection, as `/debug/connections` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConnectionStatus {
    /// The CA address.
    pub address: String,
    /// Whether the last request got an answer.
    pub connected: bool,
    /// When a request last succeeded.
    #[serde(serialize_with = "crate::http::json::opt_time")]
    pub last_success: Option<SystemTime>,
    /// The last error, if the last request failed.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// The CA's clock minus this node's, seconds, as last measured (`None`: not yet, or a
    /// failed handshake made the measure stale).
    pub clock_skew_seconds: Option<f64>,
    /// What a handshake that failed on the CA's certificate's validity implies: the offset is
    /// at least this (positive: this node is behind), until an exchange measures it.
    pub clock_skew_at_least_seconds: Option<f64>,
    /// The replica that answered last.
    pub last_replica: Option<String>,
    /// Every replica: in use or set aside, requests, last failure.
    pub replicas: Vec<crate::ca::endpoints::EndpointStatus>,
}

/// A client of the Istio certificate service.
pub struct CaClient {
    /// The replicas (one, or several from a list or a name with several addresses).
    endpoints: Endpoints,
    token: TokenSource,
    cluster_id: String,
    address: String,
    status: Mutex<ConnectionStatus>,
    /// What a probe needs: the TLS connector.
    tls: tokio_rustls::TlsConnector,
    /// Signalled when a request finds the CA unreachable.
    down: tokio::sync::Notify,
    /// Counts the times the CA was found answering again after being unreachable.
    back: tokio::sync::watch::Sender<u64>,
    /// This node's clock against the CA's.
    clock: crate::ca::clock::ClockSkew,
}

/// A probe that gets no TCP connection and TLS handshake within this long has failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes while the CA is unreachable start at most this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

impl CaClient {
    /// A client for `config`; connects on first use. The CA's certificate is verified against
    /// `trust` as it is at each connection (see [`crate::ca::tls`]).
    pub fn new(config: &CaClientConfig, trust: Arc<TrustStore>) -> Result<Self, CaAddressError> {
        let address = config.address.trim().to_owned();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(
            crate::ca::tls::client_config(trust, b"h2").map_err(CaAddressError::Tls)?,
        ));
        let endpoints = Endpoints::new(&address, tls.clone(), config.request_timeout)?;
        if endpoints.len() > 1 {
            tracing::info!(target: "zident::identity", replicas = ?endpoints.status().iter().map(|e| e.address.clone()).collect::<Vec<_>>(), "CA replicas: requests go round robin, and past any that does not answer");
        }
        Ok(Self {
            endpoints,
            token: config.token.clone(),
            cluster_id: config.cluster_id.clone(),
            status: Mutex::new(ConnectionStatus {
                address: address.clone(),
                ..Default::default()
            }),
            address,
            tls,
            down: tokio::sync::Notify::new(),
            back: tokio::sync::watch::channel(0).0,
            clock: crate::ca::clock::ClockSkew::new(crate::ca::clock::MAX_BACKDATE),
        })
    }

    /// Complains about clock skew beyond `threshold` instead of [`crate::ca::clock::MAX_BACKDATE`].
    pub fn with_skew_threshold(mut self, threshold: Duration) -> Self {
        self.clock = crate::ca::clock::ClockSkew::new(threshold);
        self
    }

    /// This node's clock against the CA's.
    pub fn clock(&self) -> &crate::ca::clock::ClockSkew {
        &self.clock
    }

    /// Whether the CA answers: a TCP connection and a TLS handshake, nothing more (no
    /// certificate request), within [`PROBE_TIMEOUT`].
    pub async fn probe(&self) -> bool {
        for e in self.endpoints.order() {
            let attempt = async {
                let tcp = tokio::net::TcpStream::connect(&e.address).await?;
                self.tls.connect(e.name.clone(), tcp).await
            };
            if matches!(
                tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
                Ok(Ok(_))
            ) {
                e.answered();
                return true;
            }
        }
        false
    }

    /// Wakes when the CA answers again after a request found it unreachable; the value counts
    /// such returns.
    pub fn back(&self) -> tokio::sync::watch::Receiver<u64> {
        self.back.subscribe()
    }

    /// While requests find the CA unreachable, probes it (at most once per [`PROBE_EVERY`])
    /// and announces on [`Self::back`] the moment it answers, so every identity waiting on it
    /// retries at once instead of at its next backoff step. Runs until the task is dropped.
    pub async fn watch_reachability(self: Arc<Self>) {
        loop {
            self.down.notified().await;
            let since = std::time::Instant::now();
            loop {
                let next = tokio::time::Instant::now() + PROBE_EVERY;
                if self.probe().await {
                    tracing::info!(target: "zident::identity", ca = %self.address, down_for_ms = since.elapsed().as_millis() as u64, "the CA answers again: retrying every identity that waits on it");
                    self.back.send_modify(|n| *n += 1);
                    break;
                }
                tokio::time::sleep_until(next).await;
            }
        }
    }

    /// The address as configured (`host:port`, or several, comma-separated).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The first replica's address, for what asks one replica (the `/bundle` poll).
    pub fn first_address(&self) -> &str {
        &self.endpoints.first().address
    }

    /// The name the first replica's certificate must be valid for: the host of its address.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.endpoints.first().name
    }

    /// A connection to the replica whose turn it is, for another service on the CA's port
    /// (xDS), with its address.
    pub(crate) fn channel(&self) -> (String, CaChannel) {
        let e = self.endpoints.order()[0];
        e.sent();
        (e.address.clone(), e.channel.clone())
    }

    /// Sets replica `address` aside after another service found it unreachable.
    pub(crate) fn unreachable(&self, address: &str, why: &str) {
        if let Some(e) = self.endpoints.find(address) {
            e.unreachable(why);
        }
    }

    /// The `authorization` header value for a request: the current bearer token.
    pub(crate) async fn authorization(
        &self,
    ) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, CaError> {
        let token = self.token.read().await?;
        format!("Bearer {token}")
            .parse()
            .map_err(|_| CaError::Token(TokenError::NotAHeader))
    }

    /// Sends a CSR for `id`; `impersonate` adds `ImpersonatedIdentity` (for workloads; not for
    /// the agent's own identity). Returns the PEM chain as the CA sent it.
    pub async fn sign(
        &self,
        id: &SpiffeId,
        csr: String,
        ttl: Duration,
        impersonate: bool,
    ) -> Result<Vec<String>, CaError> {
        let authorization = self.authorization().await?;
        let metadata = impersonate.then(|| Struct {
            fields: [(
                "ImpersonatedIdentity".to_string(),
                Value {
                    kind: Some(Kind::StringValue(id.to_string())),
                },
            )]
            .into(),
        });
        let cluster_id = self.cluster_id.clone();
        self.ask(move |channel| {
            let mut request = tonic::Request::new(IstioCertificateRequest {
                csr: csr.clone(),
                validity_duration: ttl.as_secs() as i64,
                metadata: metadata.clone(),
            });
            let md = request.metadata_mut();
            md.insert("authorization", authorization.clone());
            if let Ok(v) = cluster_id.parse() {
                md.insert("clusterid", v);
            }
            async move {
                IstioCertificateServiceClient::new(channel)
                    .create_certificate(request)
                    .await
                    .map(|r| r.map(|m| m.cert_chain))
            }
        })
        .await
    }

    /// Asks the CA for a JWT-SVID for `id` (a workload of this node) accepted by `audience`;
    /// the CA's `--jwt-ttl` decides its lifetime. Returns the compact token.
    pub async fn jwt_svid(&self, id: &SpiffeId, audience: &[String]) -> Result<String, CaError> {
        let authorization = self.authorization().await?;
        let (id, audience) = (id.to_string(), audience.to_vec());
        self.ask(move |channel| {
            let mut request = tonic::Request::new(CreateJwtSvidRequest {
                spiffe_id: id.clone(),
                audience: audience.clone(),
                validity_seconds: 0,
            });
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
            async move {
                JwtSvidServiceClient::new(channel)
                    .create_jwt_svid(request)
                    .await
                    .map(|r| r.map(|m| m.token))
            }
        })
        .await
    }

    /// Sends one request, made by `call` for a replica's channel, round robin over the
    /// replicas: one that cannot be reached is set aside and the request goes on to the next;
    /// an answer, even a refusal, ends it. Every call has the channel's deadline.
    async fn ask<T, F, Fut>(&self, call: F) -> Result<T, CaError>
    where
        F: Fn(CaChannel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut outcome = None;
        for e in self.endpoints.order() {
            e.sent();
            let sent = SystemTime::now();
            let result = call(e.channel.clone()).await;
            let received = SystemTime::now();
            let stamped = match &result {
                Ok(resp) => crate::ca::clock::ca_time(resp.metadata()),
                Err(status) => crate::ca::clock::ca_time(status.metadata()),
            };
            if let Some(ca) = stamped {
                self.clock.observe(sent, received, ca);
            }
            let this = match result {
                Ok(resp) => Ok(resp.into_inner()),
                Err(status) => Err(classify(&e.address, status, &self.clock)),
            };
            match &this {
                Err(CaError::Unreachable { message, .. } | CaError::ClockSkew { message, .. }) => {
                    e.unreachable(message);
                    outcome = Some(this);
                }
                _ => {
                    e.answered();
                    self.status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .last_replica = Some(e.address.clone());
                    outcome = Some(this);
                    break;
                }
            }
        }
        let outcome = outcome.unwrap_or_else(|| {
            Err(CaError::Unreachable {
                address: self.address.clone(),
                message: "no CA address".into(),
            })
        });
        self.record(&outcome);
        outcome
    }

    fn record<T>(&self, outcome: &Result<T, CaError>) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(_) => {
                if !s.connected && s.consecutive_failures > 0 {
                    tracing::info!(target: "zident::identity", ca = %self.address, failures = s.consecutive_failures, "SDS connection restored");
                }
                s.connected = true;
                s.last_success = Some(SystemTime::now());
                s.last_error = None;
                s.consecutive_failures = 0;
            }
            Err(e) => {
                // A refusal is an answer: the connection itself works.
                let connected = matches!(e, CaError::Refused { .. });
                let message = e.to_string();
                // istio-agent's words, so its runbook's `grep "SDS connection error"` finds
                // the cause; once when the link fails or its reason changes, not per request.
                if !connected && (s.connected || s.last_error.as_deref() != Some(&message)) {
                    tracing::warn!(target: "zident::identity", ca = %self.address, "SDS connection error: {message}");
                }
                s.connected = connected;
                s.last_error = Some(message);
                s.consecutive_failures += 1;
                if !connected {
                    self.down.notify_one();
                }
            }
        }
    }

    /// What happened last.
    pub fn status(&self) -> ConnectionStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.clock_skew_seconds = self.clock.offset();
        s.clock_skew_at_least_seconds = self.clock.at_least();
        s.replicas = self.endpoints.status();
        s
    }
}

fn classify(address: &str, status: tonic::Status, clock: &crate::ca::clock::ClockSkew) -> CaError {
    use rustls::CertificateError as C;
    let mut message = match status.code() {
        // No answer from the CA: the transport failed or the deadline passed.
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            status.message().to_owned()
        }
        // A connection that broke mid-request comes back as `Unknown: transport error`, made on
        // this side: no answer either. The same code sent by the CA is its answer.
        tonic::Code::Unknown if from_transport(&status) => format!(
            "the connection broke during the request: {}",
            status.message()
        ),
        code => {
            return CaError::Refused {
                code,
                message: status.message().to_owned(),
            };
        }
    };
    // What the handshake's failure says of this node's clock, if it failed on validity.
    let skew = match tls_error(&status) {
        Some(rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature)) => {
            message.push_str(
                ": the CA's TLS certificate chains to no root this node trusts; if the CA's root rotated while this node was down, give it the CA's current root-cert.pem as CA_ROOT_CA",
            );
            false
        }
        Some(rustls::Error::InvalidCertificate(C::NotValidYetContext { time, not_before })) => {
            // The CA's serving certificate is recent: a wait this long means this node is at
            // least that far behind.
            let behind = not_before.as_secs().saturating_sub(time.as_secs());
            clock.observe_bound(behind as f64);
            message.push_str(&format!(
                ": the CA's TLS certificate is not valid for another {behind} s by this node's clock; likely cause: this node's clock is at least {behind} s behind the CA's (fix the clock: NTP)"
            ));
            true
        }
        Some(rustls::Error::InvalidCertificate(C::ExpiredContext { time, not_after })) => {
            // The CA renews its serving certificate at half its life: past its end by this
            // node's clock, this node is at least that far ahead.
            let ahead = time.as_secs().saturating_sub(not_after.as_secs());
            clock.observe_bound(-(ahead as f64));
            message.push_str(&format!(
                ": the CA's TLS certificate expired {ahead} s ago by this node's clock; likely cause: this node's clock is at least {ahead} s ahead of the CA's (fix the clock: NTP)"
            ));
            true
        }
        Some(rustls::Error::InvalidCertificate(C::Expired | C::NotValidYet)) => {
            message.push_str(
                ": the CA's TLS certificate is outside its validity by this node's clock; ",
            );
            message.push_str(&clock.hint().unwrap_or_else(|| {
                "this node's clock agrees with the CA's as last measured".into()
            }));
            true
        }
        _ => false,
    };
    let address = address.to_owned();
    if skew {
        CaError::ClockSkew { address, message }
    } else {
        CaError::Unreachable { address, message }
    }
}

/// Whether `status` was made on this side from a failed connection (tonic's transport, hyper
/// or the OS), rather than sent by the CA.
fn from_transport(status: &tonic::Status) -> bool {
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        if e.is::<tonic::transport::Error>() || e.is::<hyper::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The TLS error under a failed call, if TLS is what failed. The connector's `io::Error` holds
/// it as its inner error, which `source()` skips, so each `io::Error` is opened on the way.
fn tls_error(status: &tonic::Status) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token that cannot be read stops the request before it is sent: the failure names the
    /// file, and the CA link's state is untouched (no failure counted, no probing started).
    #[tokio::test]
    async fn an_unreadable_token_says_nothing_of_the_ca_link() {
        let td = zident_identity::TrustDomain::new("cluster.local").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let root = zident_identity::profile::root_params(
            &td,
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .self_signed(&key)
        .unwrap();
        let trust = Arc::new(TrustStore::new(td, root.pem().as_bytes()).unwrap());
        let config = CaClientConfig {
            address: "127.0.0.1:9".into(),
            root_ca: "unused.pem".into(),
            token: TokenSource::File("/nonexistent/zident-token".into()),
            cluster_id: "Kubernetes".into(),
            request_timeout: Duration::from_secs(1),
            poll_bundle: false,
        };
        let ca = CaClient::new(&config, trust).unwrap();
        let id = SpiffeId::new("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let err = ca
            .sign(&id, "csr".into(), Duration::from_secs(60), true)
            .await
            .unwrap_err();
        assert_eq!(err.cause(), Cause::Token, "{err}");
        assert!(
            err.to_string().contains("/nonexistent/zident-token"),
            "{err}"
        );
        let status = ca.status();
        assert_eq!(status.consecutive_failures, 0, "{status:?}");
        assert_eq!(status.last_error, None, "{status:?}");
    }

    #[test]
    fn a_broken_connection_is_no_answer_and_a_sent_status_is_a_refusal() {
        let clock = crate::ca::clock::ClockSkew::new(Duration::from_secs(120));
        // What tonic makes of a connection reset mid-request: Unknown, with the I/O error as
        // its source.
        let reset = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert_eq!(reset.code(), tonic::Code::Unknown);
        let e = classify("ca:15012", reset, &clock);
        assert_eq!(e.cause(), Cause::CaUnreachable, "{e}");
        assert!(
            e.to_string().starts_with("CA unreachable at ca:15012"),
            "{e}"
        );
        // The same code sent by the CA itself is its answer.
        let sent = tonic::Status::unknown("internal error");
        assert_eq!(classify("ca:15012", sent, &clock).cause(), Cause::CaError);
        let denied = tonic::Status::permission_denied("not yours");
        assert_eq!(classify("ca:15012", denied, &clock).cause(), Cause::Denied);
    }
}
