//! A real CA on loopback, a real gRPC client over TLS, and helpers to ask for certificates.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use prost_types::{Struct, Value, value::Kind};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request};
use zident_ca::{CaConfig, RunningCa};
use zident_identity::{SpiffeId, WorkloadKey};
use zident_proto::istio_ca::IstioCertificateRequest;
use zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use zident_testkit::{openssl, openssl_root};

pub const TD: &str = "cluster.local";
pub const NODE_A_TOKEN: &str = "token-node-a";
pub const NODE_B_TOKEN: &str = "token-node-b";
pub const GW_TOKEN: &str = "token-gateway";

pub const MESH: &str = r#"
trustDomain: cluster.local
nodes:
- name: node-a
  token: "token-node-a"
- name: node-b
  tokenFile: node-b.token
identities:
- spiffeId: spiffe://cluster.local/ns/default/sa/gateway
  token: "token-gateway"
workloads:
- {uid: w1, name: frontend, namespace: default, serviceAccount: frontend, node: node-a, workloadIps: ["127.0.0.2"], protocol: HBONE}
- {uid: w2, name: backend, namespace: default, serviceAccount: backend, node: node-b, workloadIps: ["127.0.0.3"], protocol: HBONE}
"#;

/// A scratch directory with a mesh file, and a CA started on it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub ca: RunningCa,
}

impl Fixture {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// [`Fixture::start`] with the configuration changed by `change`.
    pub async fn start_with(change: impl FnOnce(&mut CaConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
        std::fs::write(dir.path().join("node-b.token"), format!("{NODE_B_TOKEN}\n")).unwrap();
        let mut c = config(dir.path());
        change(&mut c);
        let ca = start_ca(c).await;
        Self { dir, ca }
    }

    pub fn mesh_path(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    pub async fn client(&self) -> IstioCertificateServiceClient<Channel> {
        client(&self.ca).await
    }
}

/// The CA configuration used by the tests: ephemeral ports, data under `dir/ca`.
pub fn config(dir: &Path) -> CaConfig {
    let mut c = zident_testkit::ca::ca_config(dir);
    c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    c
}

pub async fn start_ca(config: CaConfig) -> RunningCa {
    zident_testkit::ca::start_ca(config).await
}

pub async fn client(ca: &RunningCa) -> IstioCertificateServiceClient<Channel> {
    IstioCertificateServiceClient::new(channel(ca).await)
        .max_decoding_message_size(4 << 20)
        .max_encoding_message_size(4 << 20)
}

/// A TLS connection to the CA's port, trusting its root-cert.pem, for any of its services.
pub async fn channel(ca: &RunningCa) -> Channel {
    let root = std::fs::read(&ca.root_cert_path).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root))
        .domain_name("localhost");
    Channel::from_shared(format!("https://{}", ca.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("connects over TLS")
}

pub fn id(path: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://{TD}/{path}")).unwrap()
}

/// A request as istio-agent / ztunnel build it.
pub fn request(
    csr: String,
    ttl_secs: i64,
    token: Option<&str>,
    impersonate: Option<&str>,
) -> Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            Value {
                kind: Some(Kind::StringValue(id.to_string())),
            },
        )]
        .into(),
    });
    let mut req = Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl_secs,
        metadata,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req.metadata_mut()
        .insert("clusterid", "Kubernetes".parse().unwrap());
    req
}

/// Asks node-a for the frontend identity: the usual good request.
pub async fn issue_frontend(
    client: &mut IstioCertificateServiceClient<Channel>,
    ttl_secs: i64,
) -> (WorkloadKey, Vec<String>) {
    let key = WorkloadKey::generate().unwrap();
    let fe = id("ns/default/sa/frontend");
    let resp = client
        .create_certificate(request(
            key.csr_pem(&fe).unwrap(),
            ttl_secs,
            Some(NODE_A_TOKEN),
            Some(fe.as_str()),
        ))
        .await
        .expect("issued");
    (key, resp.into_inner().cert_chain)
}

pub async fn expect_code(
    client: &mut IstioCertificateServiceClient<Channel>,
    req: Request<IstioCertificateRequest>,
    code: Code,
) -> String {
    match client.create_certificate(req).await {
        Ok(_) => panic!("expected {code:?}, got a certificate"),
        Err(status) => {
            assert_eq!(status.code(), code, "status: {status:?}");
            status.message().to_owned()
        }
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[allow(unused_imports)]
pub use zident_testkit::eventually;

/// `GET` over HTTPS or HTTP with curl, trusting `cacert` if given; fails the test unless the
/// answer is a success.
pub fn curl(url: &str, cacert: Option<&Path>) -> String {
    let cacert = cacert.map(|c| c.display().to_string());
    let mut args = vec![url];
    if let Some(c) = &cacert {
        args.extend(["--cacert", c.as_str()]);
    }
    let (code, body) = zident_testkit::curl(&args);
    assert!(
        (200..300).contains(&code),
        "curl {args:?}: HTTP {code}: {body}"
    );
    body
}

/// Reads one metric's value from Prometheus text.
/// The value of the series `series` (a name with its labels, as the text shows it:
/// `name_total{why="x"}`) in the metrics `text`; 0 when there is none yet.
pub fn series(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `--kubernetes` on the test's API server (`kubeconfig`, an admin's unless a test names
/// another): the control plane's namespace `istio-system`, 30 s for the first full list.
pub fn kube_config(kubeconfig: PathBuf) -> zident_ca::KubernetesConfig {
    zident_ca::KubernetesConfig {
        namespace: "istio-system".into(),
        kubeconfig: Some(kubeconfig),
        initial_sync: Duration::from_secs(30),
        ..Default::default()
    }
}

const CA_EXT: &str = "basicConstraints=critical,CA:true,pathlen:0\n\
keyUsage=critical,keyCertSign,cRLSign\n\
subjectKeyIdentifier=hash\n\
authorityKeyIdentifier=keyid\n";

/// A root in `dir/root-key.pem` + `dir/root-cert.pem`.
pub fn make_root(dir: &Path) {
    openssl_root(
        dir,
        "root-key.pem",
        "root-cert.pem",
        "/O=cluster.local/CN=Test Root CA",
        3650,
    );
}

/// An intermediate signed by the root, in Istio's file names. The key is written in SEC1
/// form ("EC PRIVATE KEY"), as many operators' tooling does.
pub fn make_intermediate(dir: &Path, cn: &str) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca-key.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "ca-key.pem",
            "-subj",
            &format!("/O=cluster.local/CN={cn}"),
            "-out",
            "ca.csr",
        ],
    );
    std::fs::write(dir.join("ca.ext"), CA_EXT).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-CAcreateserial",
            "-days",
            "365",
            "-extfile",
            "ca.ext",
            "-out",
            "ca-cert.pem",
        ],
    );
    let chain = [
        std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap(),
        std::fs::read_to_string(dir.join("root-cert.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
}

/// The issuer of the first certificate of `leaf_pem`.
pub fn issuer_cn(leaf_pem: &str) -> String {
    let der = zident_identity::pem::certs_from_pem(leaf_pem.as_bytes())
        .unwrap()
        .remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.issuer().to_string()
}

/// A test directory with the mesh file and node-b's token, and in `cacerts/` a root and an
/// intermediate "Intermediate One" under it, in Istio's file names.
pub fn plugged_in_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("node-b.token"), NODE_B_TOKEN).unwrap();
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir(&cacerts).unwrap();
    make_root(&cacerts);
    make_intermediate(&cacerts, "Intermediate One");
    (dir, cacerts)
}
