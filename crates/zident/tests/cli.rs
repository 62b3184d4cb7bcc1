//! The `zident` binary as an operator runs it: flag names, Istio's environment variables,
//! flags winning over them, and one clear line when the mesh file is wrong.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zident_identity::{SpiffeId, WorkloadKey};
use zident_proto::istio_ca::IstioCertificateRequest;
use zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

const MESH: &str = "trustDomain: cluster.local\n\
identities:\n\
- {spiffeId: 'spiffe://cluster.local/ns/default/sa/gateway', token: gw-token}\n";

/// A running `zident` process, killed when dropped.
struct Zident {
    child: Child,
    addr: String,
}

impl Drop for Zident {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn zident() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zident"));
    cmd.env_remove("MAX_WORKLOAD_CERT_TTL")
        .env_remove("DEFAULT_WORKLOAD_CERT_TTL")
        .env_remove("ROOT_CA_DIR")
        .env("RUST_LOG", "warn");
    cmd
}

/// Starts `zident ca` and waits (with a deadline) for the line that gives its address.
fn start_ca(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Zident {
    let mut cmd = zident();
    cmd.arg("ca")
        .arg("--config")
        .arg(dir.join("mesh.yaml"))
        .arg("--data-dir")
        .arg(dir.join("ca"))
        .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("zident starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("zident ca: listening on ") {
                let _ = tx.send(rest.split(' ').next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("zident ca printed its address");
    Zident { child, addr }
}

async fn ask(z: &Zident, dir: &Path, domain: &str, ttl_secs: i64) -> Result<(), tonic::Status> {
    let root = std::fs::read(dir.join("ca/root-cert.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root))
        .domain_name(domain);
    let channel = Channel::from_shared(format!("https://{}", z.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("TLS to the CA with the requested DNS name");
    let id = SpiffeId::new("spiffe://cluster.local/ns/default/sa/gateway").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: key.csr_pem(&id).unwrap(),
        validity_duration: ttl_secs,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", "Bearer gw-token".parse().unwrap());
    IstioCertificateServiceClient::new(channel)
        .create_certificate(req)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_sets_limits_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let env = [
        ("MAX_WORKLOAD_CERT_TTL", "1h"),
        ("DEFAULT_WORKLOAD_CERT_TTL", "10m"),
    ];

    let z = start_ca(dir.path(), &["--dns-name", "ca.example.test"], &env);
    let err = ask(&z, dir.path(), "ca.example.test", 7200)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    ask(&z, dir.path(), "ca.example.test", 3600).await.unwrap();
    drop(z);

    let z = start_ca(dir.path(), &["--max-ttl", "3h"], &env);
    ask(&z, dir.path(), "localhost", 7200).await.unwrap();
}

#[test]
fn a_broken_mesh_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "trustDomain: cluster.local\nnodes:\n- name: a\n  tokne: x\n",
    )
    .unwrap();
    let out = zident()
        .arg("ca")
        .arg("--config")
        .arg(&mesh)
        .arg("--data-dir")
        .arg(dir.path().join("ca"))
        .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("zident: error: mesh file"), "{err}");
    assert!(
        last.contains("mesh.yaml") && last.contains("tokne") && last.contains("line 4"),
        "{err}"
    );
    // Nothing was created for a CA that did not start.
    assert!(!dir.path().join("ca/ca-key.pem").exists());

    let out = zident()
        .args(["ca", "--default-ttl", "5y", "--config", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
}
