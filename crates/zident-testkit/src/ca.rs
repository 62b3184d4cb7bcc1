//! A CA for a test's directory, started in the test process: the configuration every test
//! begins from, a start that waits out a port still held by a CA the test just stopped, and a
//! certificate request as a node agent makes it.

use std::path::Path;
use std::time::{Duration, Instant};

use zident_ca::{CaConfig, RunningCa};

/// The CA of `dir`: the mesh file `dir/mesh.yaml`, its data in `dir/ca`, an ephemeral
/// loopback port and no metrics port. Tests change what they exercise from here.
pub fn ca_config(dir: &Path) -> CaConfig {
    let mut c = CaConfig::new(dir.join("mesh.yaml"));
    c.data_dir = dir.join("ca");
    c.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.metrics_addr = None;
    c
}

/// Starts `config`; a port or data dir still held by a CA stopped a moment ago (a restart
/// on the same port) is tried again for up to 20 s. Any other failure fails the test.
pub async fn start_ca(config: CaConfig) -> RunningCa {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match RunningCa::start(config.clone()).await {
            Ok(ca) => return ca,
            Err(e) if Instant::now() < deadline && e.to_string().contains("in use") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("CA start: {e}"),
        }
    }
}

/// Asks the CA at `port` on loopback (trusting `root_pem`, its name `localhost`) for `id`'s
/// certificate as a node agent does: a CSR for it, `ImpersonatedIdentity` naming it, `token` as
/// the bearer. The chain, or the status as `code: message`.
pub async fn request_certificate(
    port: u16,
    root_pem: &[u8],
    token: &str,
    id: &str,
    ttl_secs: i64,
) -> Result<Vec<String>, String> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    use zident_proto::istio_ca::IstioCertificateRequest;
    use zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let spiffe = zident_identity::SpiffeId::new(id).map_err(|e| e.to_string())?;
    let csr = zident_identity::WorkloadKey::generate()
        .and_then(|k| k.csr_pem(&spiffe))
        .map_err(|e| e.to_string())?;
    let metadata = prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
            },
        )]
        .into(),
    };
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl_secs,
        metadata: Some(metadata),
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|e| format!("token: {e}"))?;
    req.metadata_mut().insert("authorization", bearer);
    IstioCertificateServiceClient::new(channel)
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}
