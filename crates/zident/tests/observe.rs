//! `zident certs` against a real agent and CA, before and after a rotation, and `zident
//! inspect` verdicts on certificates made by zident and by the openssl command line.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use zident_agent::{AgentConfig, CaClientConfig, CertState, RunningAgent, TokenSource};
use zident_ca::RunningCa;
use zident_testkit::{openssl, openssl_root};

const MESH: &str = "trustDomain: cluster.local\n\
nodes:\n- {name: node-a, token: tok-a}\n\
workloads:\n\
- {uid: a, name: web, namespace: default, serviceAccount: web, node: node-a}\n\
- {uid: b, name: db, namespace: data, serviceAccount: db, node: node-a}\n";

fn zident(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zident"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("zident runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn world(dir: &Path, ttl: Duration) -> (RunningCa, RunningAgent) {
    world_with(dir, ttl, "", None).await
}

/// [`world`] with `extra` appended to the mesh file and the CA's `--dns-cert-dir`.
async fn world_with(
    dir: &Path,
    ttl: Duration,
    extra: &str,
    dns_cert_dir: Option<&Path>,
) -> (RunningCa, RunningAgent) {
    std::fs::write(dir.join("mesh.yaml"), format!("{MESH}{extra}")).unwrap();
    let mut ca = zident_testkit::ca::ca_config(dir);
    ca.refresh_hint = Duration::from_secs(1);
    ca.dns_cert_dir = dns_cert_dir.map(Path::to_owned);
    let ca = RunningCa::start(ca).await.unwrap();
    let client = CaClientConfig {
        address: format!("localhost:{}", ca.addr.port()),
        root_ca: ca.root_cert_path.clone(),
        token: TokenSource::Literal("tok-a".into()),
        cluster_id: "Kubernetes".into(),
        request_timeout: Duration::from_secs(10),
        poll_bundle: true,
    };
    let mut config = AgentConfig::new("node-a", dir.join("mesh.yaml"), client);
    config.secret_ttl = ttl;
    let any = Some("127.0.0.1:0".parse().unwrap());
    (
        config.admin_addr,
        config.metrics_addr,
        config.readiness_addr,
    ) = (any, any, any);
    let agent = RunningAgent::start(config, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent
        .manager
        .snapshot()
        .iter()
        .all(|(_, s)| matches!(s.state, CertState::Available(_)))
    {
        assert!(Instant::now() < deadline, "identities never Available");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (ca, agent)
}

fn web_serial(agent: &RunningAgent) -> String {
    let id = zident_identity::SpiffeId::new("spiffe://cluster.local/ns/default/sa/web").unwrap();
    agent.manager.peek(&id).unwrap().serial_hex.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_shows_the_agents_certificates_before_and_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, agent) = world(dir.path(), Duration::from_secs(6)).await;
    let admin = format!("http://{}", agent.admin_addr.unwrap());

    let run = |format: &'static str| {
        let admin = admin.clone();
        async move {
            tokio::task::spawn_blocking(move || zident(&["certs", "--admin", &admin, "-o", format]))
                .await
                .unwrap()
        }
    };
    let serial = web_serial(&agent);
    let table = run("table").await;
    assert!(table.status.success());
    let text = stdout(&table);
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    let header = text.lines().next().unwrap();
    for column in [
        "IDENTITY",
        "STATE",
        "SERIAL",
        "ROOT",
        "NOT BEFORE",
        "NOT AFTER",
        "ROTATES IN",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let web_row = text
        .lines()
        .find(|l| l.starts_with("spiffe://cluster.local/ns/default/sa/web"))
        .expect("a row for web");
    assert!(
        web_row.contains("Available") && web_row.contains(&serial),
        "{web_row}"
    );
    assert!(text.contains("spiffe://cluster.local/ns/data/sa/db"));
    assert!(text.contains("TRUST BUNDLE ROOT") && text.contains("O=cluster.local"));
    // The clock against the CA's: one machine, so within the threshold.
    let clock = text
        .lines()
        .find(|l| l.starts_with("CLOCK"))
        .expect("a CLOCK line");
    assert!(clock.contains("the CA's: ok"), "{clock}");

    let json = run("json").await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let web = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["identity"] == "spiffe://cluster.local/ns/default/sa/web")
        .unwrap()
        .clone();
    assert_eq!(web["serial"], serial.as_str());
    assert_eq!(web["state"], "Available");
    assert!(
        v["clock_skew_seconds"]
            .as_f64()
            .is_some_and(|s| s.abs() < 5.0),
        "{v}"
    );
    // Which root it chains to, named as the bundle's root is; the table shows it too.
    let root = web["root"].as_str().expect("the root of web's certificate");
    assert_eq!(root.len(), 16);
    assert_eq!(v["trust_bundle"][0]["root"], root);
    assert!(web_row.contains(root), "{web_row}");
    let rotates_in = web["rotates_in_seconds"].as_i64().unwrap();
    assert!((-2..=6).contains(&rotates_in), "{rotates_in}");
    assert!(v["trust_bundle"][0]["expires_in_seconds"].as_i64().unwrap() > 86400 * 3000);

    // After a rotation both formats show the new serial.
    let deadline = Instant::now() + Duration::from_secs(30);
    while web_serial(&agent) == serial {
        assert!(Instant::now() < deadline, "no rotation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rotated = web_serial(&agent);
    assert!(stdout(&run("table").await).contains(&rotated));
    let v: serde_json::Value = serde_json::from_slice(&run("json").await.stdout).unwrap();
    assert!(
        v["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["serial"] == rotated.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_shows_jwt_svids_their_keys_and_the_cas_dns_certificates() {
    use zident_identity::CertificateProvider;
    let dir = tempfile::tempdir().unwrap();
    let dns = dir.path().join("dns");
    let extra = "certificates:\n- {secretName: webhook-tls, dnsNames: [hook.data.svc]}\n";
    let (_ca, agent) = world_with(dir.path(), Duration::from_secs(3600), extra, Some(&dns)).await;
    let admin = format!("http://{}", agent.admin_addr.unwrap());
    let web = zident_identity::SpiffeId::new("spiffe://cluster.local/ns/default/sa/web").unwrap();
    let jwt = agent
        .manager
        .jwt_svid(&web, &["billing".to_string()])
        .await
        .unwrap();
    let certs = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            zident(&args)
        })
        .await
        .unwrap()
    };
    // The agent reads the JWT keys from the CA's /bundle (refresh hint 1 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let out = certs(vec!["certs".into(), "--admin".into(), admin.clone()]).await;
        let text = stdout(&out);
        if text.contains(&format!("JWT-SVID KEYS  {}", &jwt.kid[..16])) {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let row = text
        .lines()
        .find(|l| {
            l.starts_with("spiffe://cluster.local/ns/default/sa/web") && l.contains("billing")
        })
        .unwrap_or_else(|| panic!("a JWT-SVID row for web: {text}"));
    assert!(row.contains(&jwt.kid[..16]), "{row}");
    assert!(
        !text.contains(&jwt.token),
        "the token itself is never shown"
    );
    let v: serde_json::Value = serde_json::from_slice(
        &certs(vec![
            "certs".into(),
            "--admin".into(),
            admin.clone(),
            "-o".into(),
            "json".into(),
        ])
        .await
        .stdout,
    )
    .unwrap();
    assert_eq!(v["jwt_svids"][0]["audience"][0], "billing");
    assert_eq!(v["jwt_keys"][0], jwt.kid.as_str());

    // The CA's DNS certificates, read from its --dns-cert-dir.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dns.join("webhook-tls/cert-chain.pem").exists() {
        assert!(Instant::now() < deadline, "no DNS certificate written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dns_arg = dns.display().to_string();
    let out = certs(vec![
        "certs".into(),
        "--dns-cert-dir".into(),
        dns_arg.clone(),
    ])
    .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("webhook-tls"))
        .unwrap_or_else(|| panic!("a row for webhook-tls: {text}"));
    assert!(
        row.contains("hook.data.svc") && row.contains("chains to root-cert.pem"),
        "{row}"
    );
    let v: serde_json::Value = serde_json::from_slice(
        &certs(vec![
            "certs".into(),
            "--dns-cert-dir".into(),
            dns_arg,
            "-o".into(),
            "json".into(),
        ])
        .await
        .stdout,
    )
    .unwrap();
    assert_eq!(v["dns_certificates"][0]["dns_names"][0], "hook.data.svc");
    assert_eq!(v["dns_certificates"][0]["chains_to_root_cert"], true);
}

#[test]
fn certs_says_clearly_when_the_agent_cannot_be_reached() {
    let out = zident(&["certs", "--admin", "http://127.0.0.1:9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the agent's admin endpoint at http://127.0.0.1:9"),
        "{err}"
    );
}

/// A root and leaves made by the openssl command line, each breaking (or keeping) the rules.
fn openssl_certs(dir: &Path) {
    openssl_root(dir, "root-key.pem", "root.pem", "/O=cluster.local", 3650);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf-key.pem",
            "-subj",
            "/O=cluster.local",
            "-out",
            "leaf.csr",
        ],
    );
    let ext = |name: &str, body: &str| std::fs::write(dir.join(name), body).unwrap();
    let good = "subjectAltName=critical,URI:spiffe://cluster.local/ns/default/sa/web\n\
keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n\
basicConstraints=CA:false\n";
    ext("good.ext", good);
    ext(
        "two-sans.ext",
        &good.replace(
            "sa/web\n",
            "sa/web,URI:spiffe://cluster.local/ns/default/sa/other\n",
        ),
    );
    ext(
        "no-ku.ext",
        "subjectAltName=critical,URI:spiffe://cluster.local/ns/default/sa/web\nbasicConstraints=CA:false\n",
    );
    ext(
        "other-td.ext",
        &good.replace("cluster.local", "other.example"),
    );
    for (name, ext) in [
        ("good", "good.ext"),
        ("two-sans", "two-sans.ext"),
        ("no-ku", "no-ku.ext"),
        ("other-td", "other-td.ext"),
    ] {
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "root.pem",
                "-CAkey",
                "root-key.pem",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
    // Expired: `openssl ca` takes explicit dates.
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "1000000000000001\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca=c\n[c]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\n\
default_md=sha256\npolicy=p\n[p]\norganizationName=optional\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-keyfile",
            "root-key.pem",
            "-cert",
            "root.pem",
            "-in",
            "leaf.csr",
            "-out",
            "expired.pem",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-extfile",
            "good.ext",
        ],
    );
}

/// Runs `zident inspect` in `dir`: (passed, output).
fn inspect(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zident"))
        .current_dir(dir)
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        stdout(&out) + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The output line of one rule.
fn line<'a>(out: &'a str, rule: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(rule))
        .unwrap_or_else(|| panic!("no line for {rule:?} in:\n{out}"))
}

#[test]
fn inspect_gives_the_right_verdict_on_openssl_made_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_certs(d);

    let (ok, out) = inspect(
        d,
        &[
            "good.pem",
            "--bundle",
            "root.pem",
            "--id",
            "spiffe://cluster.local/ns/default/sa/web",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("VALID: every rule passed"), "{out}");
    assert!(line(&out, "the chain verifies to the bundle").contains("PASS"));

    let (ok, out) = inspect(d, &["root.pem"]);
    assert!(!ok);
    assert!(line(&out, "not a CA certificate").contains("FAIL"), "{out}");
    assert!(line(&out, "exactly one URI SAN").contains("FAIL"), "{out}");

    let (ok, out) = inspect(d, &["two-sans.pem"]);
    assert!(!ok);
    assert!(
        line(&out, "exactly one URI SAN").contains("the leaf has 2 URI SANs"),
        "{out}"
    );

    let (ok, out) = inspect(d, &["no-ku.pem"]);
    assert!(!ok);
    assert!(line(&out, "key usage present").contains("FAIL"), "{out}");
    assert!(line(&out, "key usage critical").contains("SKIP"), "{out}");

    let (ok, out) = inspect(d, &["expired.pem", "--bundle", "root.pem"]);
    assert!(!ok);
    assert!(line(&out, "valid now").contains("expired"), "{out}");
    assert!(out.contains("2020-01-02T00:00:00Z"), "{out}");

    let (ok, out) = inspect(d, &["other-td.pem", "--trust-domain", "cluster.local"]);
    assert!(!ok);
    assert!(
        line(&out, "in the expected trust domain").contains("trust domain other.example"),
        "{out}"
    );

    // Signed by a root other than the bundle's.
    openssl_root(d, "x-key.pem", "other-root.pem", "/O=elsewhere", 10);
    let (ok, out) = inspect(d, &["good.pem", "--bundle", "other-root.pem"]);
    assert!(!ok);
    assert!(
        line(&out, "the chain verifies to the bundle").contains("unknown issuer"),
        "{out}"
    );

    // DER input is read too.
    openssl(
        d,
        &[
            "x509", "-in", "good.pem", "-outform", "DER", "-out", "good.der",
        ],
    );
    let (ok, out) = inspect(d, &["good.der", "--bundle", "root.pem"]);
    assert!(ok, "{out}");

    // Unreadable input: a clear error, not a report.
    let (ok, out) = inspect(d, &["missing.pem"]);
    assert!(!ok && out.contains("cannot read missing.pem"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_passes_what_zident_issues() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, agent) = world(dir.path(), Duration::from_secs(3600)).await;
    let id = zident_identity::SpiffeId::new("spiffe://cluster.local/ns/data/sa/db").unwrap();
    let cert = agent.manager.peek(&id).unwrap();
    let pem = zident_identity::pem::certs_to_pem(&cert.chain);
    std::fs::write(dir.path().join("db.pem"), pem).unwrap();
    let root = ca.root_cert_path.display().to_string();
    let d = dir.path().to_owned();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        inspect(
            &d,
            &[
                "db.pem",
                "--bundle",
                &root,
                "--id",
                "spiffe://cluster.local/ns/data/sa/db",
                "--trust-domain",
                "cluster.local",
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_report_read_through_a_closed_pipe_ends_quietly() {
    // `zident inspect good.pem | head -0`: the reader is gone before the first line. The
    // report ends as `cat` would (SIGPIPE), with no panic on stderr.
    let dir = tempfile::tempdir().unwrap();
    openssl_certs(dir.path());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_zident"))
        .current_dir(dir.path())
        .args(["inspect", "good.pem"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc_sigpipe()),
        "{:?}",
        out.status
    );
}

/// SIGPIPE's number on Linux.
fn libc_sigpipe() -> i32 {
    13
}
