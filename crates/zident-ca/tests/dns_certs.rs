//! Certificates with DNS names (`certificates:` in the mesh file) in `--dns-cert-dir`, checked
//! with tools nobody here wrote: `openssl verify -verify_hostname`, and `curl --resolve`
//! against `openssl s_server` serving the files, before and after a renewal, a root rotation
//! step and mesh edits.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use zident_ca::dir_store;
use zident_ca::rotation::Phase;
use zident_testkit::{curl, eventually, openssl};

const WITH_CERT: &str = "certificates:\n- secretName: webhook-tls\n  dnsNames: [hook.zident.test, \"*.hooks.zident.test\"]\n";

fn serial(set: &Path) -> Option<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(set.join("cert-chain.pem"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn verify(set: &Path, host: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .current_dir(set)
        .args([
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-verify_hostname",
            host,
            "cert-chain.pem",
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `openssl s_server` on the files as they are now (it reads them once, at start).
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(set: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Copies, so the server reads one consistent set even if a renewal swaps it meanwhile.
        let copy = tempfile::tempdir().unwrap().keep();
        for f in ["cert-chain.pem", "key.pem"] {
            std::fs::copy(set.join(f), copy.join(f)).unwrap();
        }
        let child = Command::new("openssl")
            .current_dir(&copy)
            .args([
                "s_server",
                "-www",
                "-cert",
                "cert-chain.pem",
                "-key",
                "key.pem",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server runs");
        Self { child, port }
    }

    /// `curl --resolve hook.zident.test:PORT:127.0.0.1` trusting only root-cert.pem, retried
    /// until the server listens.
    async fn fetch(&self, set: &Path, host: &str) -> (u16, String) {
        let resolve = format!("{host}:{}:127.0.0.1", self.port);
        let url = format!("https://{host}:{}/", self.port);
        let root = set.join("root-cert.pem").display().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (code, body) = curl(&["--resolve", &resolve, "--cacert", &root, &url]);
            if code != 0 || std::time::Instant::now() > deadline || !body.contains("onnect") {
                return (code, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_certificates_are_issued_renewed_reissued_and_removed() {
    zident_testkit::capture_logs("info");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node-b.token"), "token-node-b\n").unwrap();
    let mesh_path = dir.path().join("mesh.yaml");
    std::fs::write(&mesh_path, format!("{MESH}{WITH_CERT}")).unwrap();
    let out: PathBuf = dir.path().join("dns");
    let mut c = config(dir.path());
    c.dns_cert_dir = Some(out.clone());
    // Renewed at half of 8 s.
    c.ttl.default_ttl = Duration::from_secs(8);
    c.refresh_hint = Duration::from_secs(1);
    let _ca = start_ca(c).await;
    let set = out.join("webhook-tls");
    eventually(Duration::from_secs(20), "webhook-tls is written", || {
        serial(&set).is_some()
    })
    .await;
    let first = serial(&set).unwrap();

    // The names verify, others do not; no URI SAN; the key is private and matches.
    for host in ["hook.zident.test", "a.hooks.zident.test"] {
        let (ok, said) = verify(&set, host);
        assert!(ok, "{host}: {said}");
    }
    for host in ["other.zident.test", "a.b.hooks.zident.test"] {
        let (ok, said) = verify(&set, host);
        assert!(!ok && said.contains("hostname mismatch"), "{host}: {said}");
    }
    let san = openssl(
        &set,
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            "cert-chain.pem",
        ],
    );
    assert!(
        san.contains("DNS:hook.zident.test") && !san.contains("URI:"),
        "{san}"
    );
    let mode = std::fs::metadata(set.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        openssl(
            &set,
            &["x509", "-noout", "-pubkey", "-in", "cert-chain.pem"]
        ),
        openssl(&set, &["pkey", "-pubout", "-in", "key.pem"])
    );

    // A TLS server on the files, and curl trusting only root-cert.pem.
    let server = Server::start(&set);
    let (code, body) = server.fetch(&set, "hook.zident.test").await;
    assert_eq!(code, 200, "{body}");
    drop(server);

    // Renewed at half its lifetime, not before.
    let issued = SystemTime::now();
    eventually(Duration::from_secs(30), "a renewal", || {
        serial(&set).is_some_and(|s| s != first)
    })
    .await;
    assert!(
        issued.elapsed().unwrap() >= Duration::from_secs(2),
        "renewed too early"
    );
    let server = Server::start(&set);
    let (code, body) = server.fetch(&set, "a.hooks.zident.test").await;
    assert_eq!(code, 200, "{body}");
    drop(server);

    // A root rotation: the new root joins root-cert.pem at prepare; at activate the set is
    // re-issued under it.
    let data = dir.path().join("ca");
    let year = Duration::from_secs(365 * 24 * 3600);
    dir_store::apply(&data, Phase::Prepare, SystemTime::now(), true, year).unwrap();
    eventually(
        Duration::from_secs(20),
        "two roots in root-cert.pem",
        || {
            std::fs::read_to_string(set.join("root-cert.pem"))
                .is_ok_and(|p| p.matches("BEGIN CERTIFICATE").count() == 2)
        },
    )
    .await;
    dir_store::apply(&data, Phase::Activate, SystemTime::now(), true, year).unwrap();
    let new_root = data.join("roots/2/ca-cert.pem");
    eventually(
        Duration::from_secs(20),
        "the set signed by the new root",
        || {
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&new_root)
                .arg(set.join("cert-chain.pem"))
                .output()
                .is_ok_and(|o| o.status.success())
        },
    )
    .await;

    // A bad edit is refused whole and changes nothing on disk.
    let before = listing(&out);
    std::fs::write(
        &mesh_path,
        format!(
            "{MESH}certificates:\n- secretName: webhook-tls\n  dnsNames: [\"bad_name.test\"]\n"
        ),
    )
    .unwrap();
    zident_testkit::logged("mesh file change rejected").await;
    assert!(zident_testkit::captured().contains("bad_name.test"));
    let (ok, said) = verify(&set, "hook.zident.test");
    assert!(ok, "{said}");
    assert_eq!(listing(&out), before);

    // An entry removed is deleted; a new one is written; nothing else in the directory is
    // touched.
    std::fs::write(out.join("operator-notes.txt"), "mine").unwrap();
    std::fs::write(
        &mesh_path,
        format!("{MESH}certificates:\n- secretName: other-tls\n  dnsNames: [other.zident.test]\n"),
    )
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "webhook-tls removed, other-tls written",
        || !set.exists() && serial(&out.join("other-tls")).is_some(),
    )
    .await;
    let (ok, said) = verify(&out.join("other-tls"), "other.zident.test");
    assert!(ok, "{said}");
    let left: Vec<String> = listing(&out)
        .into_iter()
        .filter(|n| !n.starts_with("..zident-other-tls."))
        .collect();
    assert_eq!(left, vec!["operator-notes.txt", "other-tls"]);
}
