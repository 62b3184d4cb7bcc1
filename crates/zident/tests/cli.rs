//! The `zident` binary as an operator runs it: flag names, Istio's environment variables,
//! flags winning over them, and one clear line when the mesh file is wrong.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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

/// `zident agent` with its admin, metrics and readiness endpoints on ephemeral ports.
const AGENT_EPHEMERAL: [&str; 7] = [
    "agent",
    "--admin-addr",
    "127.0.0.1:0",
    "--metrics-addr",
    "127.0.0.1:0",
    "--readiness-addr",
    "127.0.0.1:0",
];

fn zident() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zident"));
    cmd.env_remove("MAX_WORKLOAD_CERT_TTL")
        .env_remove("DEFAULT_WORKLOAD_CERT_TTL")
        .env_remove("ROOT_CA_DIR")
        .env("RUST_LOG", "warn");
    cmd
}

/// Spawns `cmd` and waits (with a deadline) for a stdout line starting with `prefix`; returns
/// the first word after it.
fn spawn_until(mut cmd: Command, prefix: &'static str) -> Zident {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("zident starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.split(' ').next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("zident printed {prefix:?}"));
    Zident { child, addr }
}

/// Starts `zident ca` and waits for the line that gives its address.
fn start_ca(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Zident {
    let mut cmd = zident();
    cmd.arg("ca")
        .arg("--config")
        .arg(dir.join("mesh.yaml"))
        .arg("--data-dir")
        .arg(dir.join("ca"))
        .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .args(extra)
        .envs(env.iter().copied());
    spawn_until(cmd, "zident ca: listening on ")
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

use zident_testkit::curl;

#[test]
fn the_agent_reads_istios_environment_names() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = "trustDomain: cluster.local\n\
nodes:\n- {name: node-a, tokenFile: node-a.token}\n\
workloads:\n- {uid: w, name: web, namespace: default, serviceAccount: web, node: node-a}\n";
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    std::fs::write(dir.path().join("node-a.token"), "secret-a\n").unwrap();
    let ca = start_ca(dir.path(), &[], &[]);
    let port = ca.addr.rsplit(':').next().unwrap().to_owned();

    let mut cmd = zident();
    cmd.args(AGENT_EPHEMERAL)
        .args([
            "--socks5-addr",
            "127.0.0.1:0",
            "--outbound-addr",
            "127.0.0.1:0",
        ])
        .arg("--workload-api-dir")
        .arg(dir.path().join("workload-api"))
        .env("LOCAL_XDS_PATH", dir.path().join("mesh.yaml"))
        .env("NODE_NAME", "node-a")
        .env("CA_ADDR", format!("localhost:{port}"))
        .env("CA_ROOT_CA", dir.path().join("ca/root-cert.pem"))
        .env("AUTH_TOKEN", dir.path().join("node-a.token"))
        .env("SECRET_TTL", "1h")
        .env("TRUST_DOMAIN", "cluster.local")
        .env("CLUSTER_ID", "Kubernetes");
    let agent = spawn_until(cmd, "zident agent: admin at http://");
    let admin = agent.addr.trim_end_matches("/debug/certs").to_owned();

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = curl(&[&format!("http://{admin}/debug/certs")]);
        if code == 200 && body.contains("\"state\":\"Available\"") {
            assert!(
                body.contains("spiffe://cluster.local/ns/default/sa/web"),
                "{body}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never Available: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The tunnel's open connections are listed beside the CA connection (none yet).
    let (code, body) = curl(&[&format!("http://{admin}/debug/connections")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"tunnels\":[]"), "{body}");

    // The log filter can be read and changed at run time, and a bad one is refused.
    let (code, body) = curl(&[&format!("http://{admin}/logging")]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&["-X", "POST", &format!("http://{admin}/logging?level=debug")]);
    assert_eq!((code, body.contains("debug")), (200, true), "{body}");
    let (code, _) = curl(&[
        "-X",
        "POST",
        &format!("http://{admin}/logging?level=no=such=thing"),
    ]);
    assert_eq!(code, 400);
}

#[test]
fn the_agent_says_what_is_missing() {
    let out = zident()
        .args([
            "agent",
            "--config",
            "m.yaml",
            "--node",
            "a",
            "--ca-root-ca",
            "r.pem",
            "--auth-token",
            "t",
        ])
        .env_remove("CA_ADDRESS")
        .env_remove("CA_ADDR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CA_ADDRESS"), "{err}");
}

/// `zident ca rotate` on the data dir of a running CA: the CA serves the new bundle within
/// seconds; a step taken too early is refused with when it becomes safe, and changes nothing.
#[test]
fn ca_rotate_drives_a_running_ca_and_status_shows_the_phases() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = "trustDomain: cluster.local\nnodes:\n- {name: node-a, token: ta}\n";
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    let ca = start_ca(
        dir.path(),
        &["--bundle-refresh-hint", "1s", "--no-auto-rotate"],
        &[],
    );
    let data = dir.path().join("ca");
    let data_arg = data.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = zident().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&["ca", "status", "--data-dir", data_arg]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("phase steady, bundle sequence 1"), "{out}");

    // A second CA on the same data dir stops at once and names the first one's process.
    let mesh_path = dir.path().join("mesh.yaml");
    let (code, out) = run(&[
        "ca",
        "--config",
        mesh_path.to_str().unwrap(),
        "--data-dir",
        data_arg,
        "--listen",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "is in use by another zident CA (pid {})",
            ca.child.id()
        )),
        "{out}"
    );

    let (code, out) = run(&["ca", "rotate", "prepare", "--data-dir", data_arg]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("phase prepared, bundle sequence 2"), "{out}");
    // Too early to activate: refused, with when it will be safe; nothing changes.
    let (code, out) = run(&["ca", "rotate", "activate", "--data-dir", data_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("too early") && out.contains("--force"),
        "{out}"
    );
    let (_, status) = run(&["ca", "status", "--data-dir", data_arg]);
    assert!(status.contains("phase prepared"), "{status}");
    // Each generation shows its own JWT-SVID key: two different kids.
    assert!(status.contains("JWT KEY (KID)"), "{status}");
    // Generation rows: GEN PHASE SERIAL NOT-AFTER KEY KID CERTIFICATE.
    let rows = |status: &str| -> Vec<Vec<String>> {
        status
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|w| w.len() == 7 && w[0].parse::<u32>().is_ok())
            .collect()
    };
    let kids: std::collections::BTreeSet<String> = rows(&status)
        .into_iter()
        .filter(|w| w[1] == "active" || w[1] == "prepared")
        .map(|w| w[5].clone())
        .filter(|k| k != "-")
        .collect();
    assert_eq!(kids.len(), 2, "{status}");

    // The running CA serves both roots (checked with curl, trusting the published file).
    let url = format!(
        "https://localhost:{}/bundle.pem",
        ca.addr.rsplit(':').next().unwrap()
    );
    let root = data.join("root-cert.pem");
    let serves_roots = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (code, body) = curl(&["--cacert", root.to_str().unwrap(), &url]);
            if code == 200 && body.matches("BEGIN CERTIFICATE").count() == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the CA never served {n} roots: {code} {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    serves_roots(2);

    // Once safe, activate; retire is then too early (certificates of up to 90 days may be
    // valid), unless forced.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out) = run(&["ca", "rotate", "activate", "--data-dir", data_arg]);
        if code == Some(0) {
            break;
        }
        assert!(out.contains("too early"), "{out}");
        assert!(std::time::Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out) = run(&["ca", "rotate", "retire", "--data-dir", data_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("may be valid until"), "{out}");
    let (code, out) = run(&["ca", "rotate", "retire", "--data-dir", data_arg, "--force"]);
    assert_eq!(code, Some(0), "{out}");
    let (_, status) = run(&["ca", "status", "--data-dir", data_arg]);
    assert!(
        status.contains("phase steady, bundle sequence 3"),
        "{status}"
    );
    let retired = rows(&status)
        .into_iter()
        .find(|w| w[1] == "retired")
        .unwrap_or_else(|| panic!("a retired generation: {status}"));
    assert_eq!(
        retired[5], "-",
        "a retired generation's JWT key is deleted with its root key: {status}"
    );
    // The CA dropped the old root.
    serves_roots(1);
}

/// For plugged-in keys, `zident ca status` shows the roots the CA knows and why the last
/// change of the files was refused.
#[test]
fn ca_status_for_plugged_in_keys_says_why_the_last_change_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = "ab".repeat(32);
    let state = format!(
        r#"{{"sequence": 2, "published": {{"{root}": 0}}, "signed_until": {{}},
            "signing_root": "{root}", "subjects": {{"{root}": "O=example, CN=Root One"}},
            "last_refusal": {{"at": 1700000000, "reason": "too early to sign under root cd"}}}}"#
    );
    std::fs::write(dir.path().join("plugged-in.json"), state).unwrap();
    let out = zident()
        .args(["ca", "status", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("plugged-in keys"), "{text}");
    assert!(text.contains("bundle sequence 2"), "{text}");
    assert!(text.contains("CN=Root One"), "{text}");
    assert!(
        text.contains(
            "Last change of the files refused at 2023-11-14T22:13:20Z: too early to sign under root cd"
        ),
        "{text}"
    );
}

/// Opens `n` TLS connections to the CA at once and keeps them idle; those the CA did not take
/// within a second are kept as bare TCP connections.
async fn idle_connections(z: &Zident, dir: &Path, n: usize) -> Vec<tokio::net::TcpStream> {
    let root = std::fs::read(dir.join("ca/root-cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in zident_identity::pem::certs_from_pem(&root).unwrap() {
        roots.add(c).unwrap();
    }
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (config, addr) = (config.clone(), z.addr.clone());
        set.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.ok()?;
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            match tokio::time::timeout(Duration::from_secs(1), connect).await {
                Ok(Ok(tls)) => Some(tls.into_inner().0),
                _ => None,
            }
        });
    }
    let mut held = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(tcp)) = r {
            held.push(tcp);
        }
    }
    held
}

/// Waits until every connection in `held` has been closed by the CA.
async fn until_all_closed(held: Vec<tokio::net::TcpStream>, within: Duration) {
    use tokio::io::AsyncReadExt;
    let mut set = tokio::task::JoinSet::new();
    for mut tcp in held {
        set.spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // TLS session tickets, HTTP/2 frames
                }
            }
        });
    }
    tokio::time::timeout(within, async { while set.join_next().await.is_some() {} })
        .await
        .expect("the CA closes idle connections");
}

/// `zident ca` under an open-files limit of 300, with `extra` flags.
fn start_ca_limited(dir: &Path, idle_timeout: &str, extra: &[&str]) -> Zident {
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=300:300")
        .arg(env!("CARGO_BIN_EXE_zident"))
        .arg("ca")
        .arg("--config")
        .arg(dir.join("mesh.yaml"))
        .arg("--data-dir")
        .arg(dir.join("ca"))
        .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .args(["--idle-timeout", idle_timeout])
        .args(extra)
        .env("RUST_LOG", "warn");
    spawn_until(cmd, "zident ca: listening on ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_exhaust_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();

    // More idle connections than the CA's descriptors allow: at its cap (300 less a reserve)
    // each new one closes the longest-idle, so a real request still gets in, at once.
    let z = start_ca_limited(dir.path(), "2s", &[]);
    let held = idle_connections(&z, dir.path(), 400).await;
    ask(&z, dir.path(), "localhost", 3600)
        .await
        .expect("a CreateCertificate among idle connections");
    // And every idle one is closed by the idle timeout.
    until_all_closed(held, Duration::from_secs(20)).await;
    drop(z);

    // With the cap set above the descriptor limit, accept itself fails (EMFILE): the CA backs
    // off, and the idle timeout frees descriptors, so a request still succeeds within its
    // deadline. (An idle timeout longer than the burst of connections takes on a loaded
    // machine, so that none is freed, and accepted, while the burst is still going.)
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let z = start_ca_limited(dir.path(), "8s", &["--max-connections", "1000"]);
    let held = idle_connections(&z, dir.path(), 400).await;
    assert!(held.len() < 400, "some connections were not accepted");
    ask(&z, dir.path(), "localhost", 3600)
        .await
        .expect("a CreateCertificate once idle connections were closed");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_status_names_the_identities_that_still_wait_for_a_prepared_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let z = start_ca(
        dir.path(),
        &["--no-auto-rotate", "--bundle-refresh-hint", "1s"],
        &[],
    );
    // A client gets a certificate before prepare; it learns the new root only when it renews.
    ask(&z, dir.path(), "localhost", 3600).await.unwrap();
    let data = dir.path().join("ca");
    let data_arg = data.to_str().unwrap().to_owned();
    let run = move |args: &[&str]| {
        let out = zident().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&["ca", "rotate", "prepare", "--data-dir", &data_arg]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&["ca", "status", "--data-dir", &data_arg]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("1 identities still wait for the new root"),
        "{out}"
    );
    let (_, out) = run(&["ca", "status", "--data-dir", &data_arg, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["waiting_for_new_root"][0]["id"], "spiffe://cluster.local/ns/default/sa/gateway",
        "{json}"
    );
    // Activation is refused, however long ago the bundle rule was met, until it renews.
    let (code, out) = run(&["ca", "rotate", "activate", "--data-dir", &data_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("too early"), "{out}");
    // It renews (in a later second than prepare: the ledger counts whole seconds, and one
    // issued in the second of prepare counts as before it): nobody waits any more.
    let prepared = json["state"]["history"][0]["at"].as_u64().unwrap();
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while unix() <= prepared {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ask(&z, dir.path(), "localhost", 3600).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = run(&["ca", "status", "--data-dir", &data_arg]);
        if out.contains("none waits") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Debian's libfaketime (package `faketime`), preloaded into the agent itself (the `faketime`
/// wrapper would stand between the test and the process it kills).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// `zident agent` for node-a with its clock moved by `offset` seconds (libfaketime, e.g.
/// `+300`), and its admin address.
fn agent_with_clock(dir: &Path, ca: &Zident, offset: &str) -> (Zident, String) {
    let port = ca.addr.rsplit(':').next().unwrap().to_owned();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zident"));
    cmd.env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", offset)
        .args(AGENT_EPHEMERAL)
        .args(["--no-tunnel", "--no-workload-api"])
        .env("RUST_LOG", "warn")
        .env("LOCAL_XDS_PATH", dir.join("mesh.yaml"))
        .env("NODE_NAME", "node-a")
        .env("CA_ADDR", format!("localhost:{port}"))
        .env("CA_ROOT_CA", dir.join("ca/root-cert.pem"))
        .env("AUTH_TOKEN", "secret-a")
        .env("SECRET_TTL", "60s");
    let agent = spawn_until(cmd, "zident agent: admin at http://");
    let admin = agent.addr.trim_end_matches("/debug/certs").to_owned();
    (agent, admin)
}

/// Waits until `/debug/certs` satisfies `done`.
fn until_certs(
    admin: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = curl(&[&format!("http://{admin}/debug/certs")]);
        if code == 200
            && let Ok(doc) = serde_json::from_str::<serde_json::Value>(&body)
            && done(&doc)
        {
            return doc;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clock_skew_is_measured_and_named_in_both_directions() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "this test needs libfaketime: apt-get install faketime (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mesh = "trustDomain: cluster.local\n\
nodes:\n- {name: node-a, token: secret-a}\n\
workloads:\n- {uid: w, name: web, namespace: default, serviceAccount: web, node: node-a}\n";
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    let ca = start_ca(dir.path(), &[], &[]);

    // 5 minutes ahead, 60 s certificates: each one has "expired" when it arrives. The agent
    // measures the CA's clock on each answer and says the clock is the cause.
    let (agent, admin) = agent_with_clock(dir.path(), &ca, "+300");
    let doc = until_certs(&admin, "the skew is measured and named", |d| {
        d["clock_skew_seconds"]
            .as_f64()
            .is_some_and(|s| (s + 300.0).abs() < 15.0)
            && d["certificates"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("ahead of the CA's"))
    });
    let error = doc["certificates"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("outside its validity") && error.contains("NTP"),
        "{error}"
    );
    drop(agent);

    // 5 minutes behind: the CA's own TLS certificate is not valid yet, and the agent says by
    // how much at least its clock is behind.
    // The cause is the clock, not an unreachable CA, and the skew it implies is a lower
    // bound (5 minutes less the CA's serving certificate's 2-minute backdate), never a
    // measured 0.
    let (agent, admin) = agent_with_clock(dir.path(), &ca, "-300");
    let doc = until_certs(&admin, "the CA link names the skew", |d| {
        d["certificates"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("behind the CA's") && e.contains("NTP"))
    });
    assert_eq!(doc["certificates"][0]["cause"], "clock_skew", "{doc}");
    assert!(doc["clock_skew_seconds"].is_null(), "{doc}");
    let at_least = doc["clock_skew_at_least_seconds"].as_f64().unwrap_or(0.0);
    assert!((at_least - 180.0).abs() < 15.0, "{doc}");
    drop(agent);
}

/// Opens `n` connections to `addr` and leaves each with `partial` sent and nothing more (a
/// SOCKS5 greeting cut short, HTTP headers never ended), as a careless or hostile client would;
/// the ones the OS or the server refuses are not kept.
async fn held_partial(addr: &str, n: usize, partial: &'static [u8]) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    for _ in 0..n {
        let Ok(Ok(mut tcp)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
        else {
            continue;
        };
        if tcp.write_all(partial).await.is_ok() {
            held.push(tcp);
        }
    }
    held
}

/// A SOCKS5 CONNECT to `dst` through `socks`: the stream and the reply code (0 = succeeded).
async fn socks5_request(
    socks: &str,
    dst: std::net::SocketAddrV4,
) -> Result<(tokio::net::TcpStream, u8), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(socks)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(&[5, 1, 0]).await.map_err(|e| e.to_string())?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.map_err(|e| e.to_string())?;
    let mut req = vec![5, 1, 0, 1];
    req.extend(dst.ip().octets());
    req.extend(dst.port().to_be_bytes());
    s.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.map_err(|e| e.to_string())?;
    Ok((s, reply[1]))
}

/// A SOCKS5 CONNECT to `dst` through `socks`: the reply code (0 = succeeded), within 10 s.
async fn socks5_connect(socks: &str, dst: std::net::SocketAddrV4) -> Result<u8, String> {
    tokio::time::timeout(Duration::from_secs(10), socks5_request(socks, dst))
        .await
        .map_err(|_| "no SOCKS5 answer within 10 s".to_owned())?
        .map(|(_, code)| code)
}

/// A port no one listens on now, for a flag that needs one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Opens `n` connections to the Unix socket `path`, each left with `partial` sent.
async fn held_partial_unix(
    path: &Path,
    n: usize,
    partial: &'static [u8],
) -> Vec<tokio::net::UnixStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    for _ in 0..n {
        let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::UnixStream::connect(path),
        )
        .await
        else {
            continue;
        };
        if s.write_all(partial).await.is_ok() {
            held.push(s);
        }
    }
    held
}

/// The X.509-SVID the Workload API socket `path` serves, fetched within 10 s: its SPIFFE ID.
async fn workload_api_svid(path: &Path) -> Result<String, String> {
    let path = path.to_owned();
    let fetch = async move {
        let channel = tonic::transport::Endpoint::try_from("http://[::]:0")
            .map_err(|e| e.to_string())?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
            .await
            .map_err(|e| e.to_string())?;
        let mut client =
            zident_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
                channel,
            );
        let mut req = tonic::Request::new(zident_proto::workload::X509svidRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().map_err(|_| "header")?);
        let mut stream = client
            .fetch_x509svid(req)
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stream ended at once")?;
        first
            .svids
            .first()
            .map(|s| s.spiffe_id.clone())
            .ok_or_else(|| "no SVID in the answer".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| "no Workload API answer within 10 s".to_owned())?
}

/// A TCP server on loopback answering each connection with what it reads (a workload's server).
async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// `payload` sent to `dst` through the SOCKS5 port `socks` and echoed back, within 10 s.
async fn socks5_echo(
    socks: &str,
    dst: std::net::SocketAddr,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std::net::SocketAddr::V4(dst) = dst else {
        return Err("IPv4 only".into());
    };
    let attempt = async {
        let (mut s, code) = socks5_request(socks, dst).await?;
        if code != 0 {
            return Err(format!("SOCKS5 reply {code}"));
        }
        s.write_all(payload).await.map_err(|e| e.to_string())?;
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
        Ok(back)
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "no echo through the tunnel within 10 s".to_owned())?
}

/// Every port of the agent under a low descriptor limit (admin, metrics, readiness, SOCKS5,
/// captured outbound, the HBONE inbound port and the Workload API socket), flooded with
/// connections that never finish their request (partial SOCKS5 greetings, HTTP headers never
/// ended, a TLS ClientHello cut short, an HTTP/2 preface cut short) beyond what its descriptors
/// allow: every port keeps answering new clients (the longest-idle connection makes room), a
/// tunnel carries bytes through the flooded HBONE port, the Workload API serves an SVID,
/// certificates keep renewing, the held connections are closed by the idle timeout, and the
/// log says so a few times, not once per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_held_connections_cannot_starve_the_agents_ports() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = "trustDomain: cluster.local\n\
nodes:\n- {name: node-a, token: secret-a}\n\
workloads:\n- {uid: w, name: web, namespace: default, serviceAccount: web, node: node-a, workloadIps: [\"127.0.0.1\"]}\n";
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    let ca = start_ca(dir.path(), &[], &[]);
    let port = ca.addr.rsplit(':').next().unwrap().to_owned();
    let [socks, capture, metrics, readiness] =
        [(); 4].map(|()| format!("127.0.0.1:{}", free_port()));
    let hbone_port = free_port();
    let hbone = format!("127.0.0.1:{hbone_port}");
    let wapi = dir.path().join("wapi");
    let log_path = dir.path().join("agent.log");
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=256:256")
        .arg(env!("CARGO_BIN_EXE_zident"))
        .args(["agent", "--admin-addr", "127.0.0.1:0"])
        .args(["--metrics-addr", &metrics, "--readiness-addr", &readiness])
        .args(["--socks5-addr", &socks, "--outbound-addr", &capture])
        .args(["--inbound-port", &hbone_port.to_string()])
        .arg("--workload-api-dir")
        .arg(&wapi)
        .args(["--idle-timeout", "4s"])
        .env("RUST_LOG", "warn")
        .env("LOCAL_XDS_PATH", dir.path().join("mesh.yaml"))
        .env("NODE_NAME", "node-a")
        .env("CA_ADDR", format!("localhost:{port}"))
        .env("CA_ROOT_CA", dir.path().join("ca/root-cert.pem"))
        .env("AUTH_TOKEN", "secret-a")
        .env("SECRET_TTL", "6s");
    let agent = {
        // The log goes to stdout with the address line: both are kept in the file.
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("zident agent starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::File::create(&log_path).unwrap(),
        ));
        let err_log = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(err_log.lock().unwrap(), "{line}");
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Write;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log.lock().unwrap(), "{line}");
                if let Some(rest) = line.strip_prefix("zident agent: admin at http://") {
                    let _ = tx.send(rest.split(' ').next().unwrap_or_default().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("admin address");
        Zident { child, addr }
    };
    let admin = agent.addr.trim_end_matches("/debug/certs").to_owned();
    let serial = |d: &serde_json::Value| d["certificates"][0]["serial_number"].clone();
    let first = until_certs(&admin, "the workload's certificate", |d| {
        d["certificates"][0]["state"] == "Available"
    });

    let socket = wapi.join("default/web/agent.sock");
    let echo = echo_server().await;
    // Before the flood: the tunnel and the Workload API work.
    assert_eq!(
        socks5_echo(&socks, echo, b"before").await.as_deref(),
        Ok(&b"before"[..])
    );
    let web = "spiffe://cluster.local/ns/default/sa/web";
    assert_eq!(workload_api_svid(&socket).await.as_deref(), Ok(web));

    // Held connections on every port: more than the agent's 256 descriptors (the log below
    // says the cap was reached).
    let mut held = held_partial(&socks, 80, &[5]).await;
    for http in [&admin, &metrics, &readiness] {
        held.extend(held_partial(http, 60, b"GET /debug/certs HTTP/1.1\r\n").await);
    }
    // A TLS record header of a ClientHello and nothing more.
    held.extend(held_partial(&hbone, 60, &[0x16, 0x03, 0x01, 0x02, 0x00]).await);
    held.extend(held_partial(&capture, 20, b"x").await);
    let held_unix = held_partial_unix(&socket, 60, b"PRI * HTTP/2.0\r\n").await;

    // Every port answers a new client.
    for url in [
        format!("http://{admin}/debug/certs"),
        format!("http://{metrics}/metrics"),
        format!("http://{readiness}/healthz/ready"),
    ] {
        let (code, body) = curl(&[&url]);
        assert_eq!(
            code,
            200,
            "{url} answers during the flood: {body}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    // Bytes go through a tunnel: SOCKS5 in, HBONE through the flooded inbound port, out to
    // the workload's server.
    assert_eq!(
        socks5_echo(&socks, echo, b"during the flood")
            .await
            .as_deref(),
        Ok(&b"during the flood"[..])
    );
    assert_eq!(
        workload_api_svid(&socket).await.as_deref(),
        Ok(web),
        "the Workload API serves during the flood"
    );
    let dst = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 255, 0, 1), 80);
    let reply = socks5_connect(&socks, dst).await;
    // 10.255.0.1 is no workload: the agent answers the request with a refusal (4: host
    // unreachable), which it can only do after reading the whole request.
    assert_eq!(reply, Ok(4), "a SOCKS5 request is carried to its answer");
    // A hundred more refused requests from the same source: each is counted, and said once
    // (with how many were held back when it is said again).
    for _ in 0..100 {
        assert_eq!(socks5_connect(&socks, dst).await, Ok(4));
    }
    // Renewal goes on (6 s certificates renew every 3 s): a new serial.
    until_certs(&admin, "a renewal during the flood", |d| {
        d["certificates"][0]["state"] == "Available" && serial(d) != serial(&first)
    });
    // The held connections are closed (evicted or idle past 4 s).
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt;
        let mut open = held.len();
        for mut tcp in held {
            let mut buf = [0u8; 64];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        open -= 1;
                        break;
                    }
                    Ok(_) => {} // an HTTP error answer before the close
                }
            }
        }
        open
    })
    .await;
    assert_eq!(closed, Ok(0), "every held connection is closed");
    let closed_unix = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt;
        let mut open = held_unix.len();
        for mut s in held_unix {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await
                && n > 0
            {}
            open -= 1;
        }
        open
    })
    .await;
    assert_eq!(
        closed_unix,
        Ok(0),
        "every held Workload API connection is closed"
    );
    drop(agent);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let said = log
        .lines()
        .filter(|l| l.contains("accept failed") || l.contains("closed an idle connection"))
        .count();
    assert!(
        log.contains("closed an idle connection"),
        "the cap was reached and made room: {log}"
    );
    let refused = log
        .lines()
        .filter(|l| l.contains("outbound refused"))
        .count();
    assert!(
        (1..=3).contains(&refused),
        "101 refused requests from one source, said {refused} times:\n{log}"
    );
    assert!(
        said < 20,
        "the flood is said in a few lines, not one per connection: {said}\n{log}"
    );
}

/// A server raises its soft open-files limit to the hard one: most systems start a process at
/// 1,024, which would cap an agent near a thousand connections while the kernel allows far
/// more. The hard limit (the operator's) is kept.
#[test]
fn a_server_raises_its_open_files_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=256:4096")
        .arg(env!("CARGO_BIN_EXE_zident"))
        .arg("ca")
        .arg("--config")
        .arg(dir.path().join("mesh.yaml"))
        .arg("--data-dir")
        .arg(dir.path().join("ca"))
        .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn");
    let z = spawn_until(cmd, "zident ca: listening on ");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", z.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a limits line for open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (fields[3], fields[4]),
        ("4096", "4096"),
        "soft and hard limits: {line}"
    );
}
