//! A client nobody here wrote: a real ztunnel, built from istio/ztunnel's source, takes its
//! mesh from `zident ca` over xDS (no local config) and its certificate from the same port,
//! carries traffic to and from a zident agent's workloads (requests, and 32 MiB downloads each
//! way compared byte for byte, so both sides' 1 MiB HTTP/2 frames meet the other's limits),
//! and follows an edit.
//!
//! Runs when `ZTUNNEL_BIN` names a ztunnel binary (build one with `cargo build --release` in
//! ztunnel's source: its default features, aws-lc and jemalloc, as users run it); skipped with
//! a message otherwise. Needs root for the network namespaces.
//!
//! Layout: the control plane, a node running ztunnel in dedicated mode for one workload
//! (`zt-app`), and a node running a zident agent for two (`server`, `client`), each in its own
//! network namespace on one bridge.
//!
//! A second test gives ztunnel `CRL_PATH` on the CRL file `zident ca` writes: once zident
//! revokes the client workload's certificate, ztunnel refuses a handshake with it, while the
//! client's agent, with a new certificate, still gets through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zident_testkit::netns::{Lan, NsProcess, curl_in, ip, whoami_server};
use zident_testkit::{eventually, pseudo_random};

const BIN: &str = env!("CARGO_BIN_EXE_zident");
const DEADLINE: Duration = Duration::from_secs(30);

fn mesh(extra: bool) -> String {
    let extra = if extra {
        "  - {uid: extra, name: extra, namespace: default, serviceAccount: extra, node: node-b, workloadIps: [\"10.89.2.30\"], protocol: HBONE}\n"
    } else {
        ""
    };
    format!(
        r#"nodes:
  - name: node-b
    token: token-b
identities:
  - spiffeId: spiffe://cluster.local/ns/default/sa/zt
    token: token-zt
workloads:
  - {{uid: zt-app, name: zt-app, namespace: default, serviceAccount: zt, node: node-z, workloadIps: ["10.89.3.10"], protocol: HBONE}}
  - {{uid: server, name: server, namespace: default, serviceAccount: server, node: node-b, workloadIps: ["10.89.2.10"], protocol: HBONE}}
  - {{uid: client, name: client, namespace: default, serviceAccount: client, node: node-b, workloadIps: ["10.89.2.20"], protocol: HBONE}}
{extra}"#
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(ns: &str, url: &str) -> serde_json::Value {
    let (code, body) = curl_in(ns, &[url]);
    if code != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

fn ztunnel_workloads(ns: &str) -> Vec<String> {
    let mut uids: Vec<String> = json(ns, "http://127.0.0.1:15000/config_dump")["workloads"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter_map(|w| w["uid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    uids.sort();
    uids
}

/// The ztunnel binary, and three network namespaces on one bridge `10.<subnet>.0.0/24`: the
/// control plane (`.1`), the ztunnel node (`.2`, its workload `10.<subnet>.3.10`) and the zident
/// node (`.3`, workloads `10.<subnet>.2.{10,20,30}`), each routed to the other's workloads.
/// `None`, said, without `ZTUNNEL_BIN` or without root.
fn topology(name: &str, subnet: u8) -> Option<(PathBuf, Lan, [String; 3])> {
    let Some(ztunnel) = std::env::var_os("ZTUNNEL_BIN").map(PathBuf::from) else {
        eprintln!(
            "SKIPPED: set ZTUNNEL_BIN to a ztunnel binary built from istio/ztunnel to run this test"
        );
        return None;
    };
    let mut lan = match Lan::new(name, subnet) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIPPED: cannot make network namespaces here ({e}); run as root");
            return None;
        }
    };
    let cp = lan.node("cp", 1).unwrap();
    let z = lan.node("z", 2).unwrap();
    let b = lan.node("b", 3).unwrap();
    let net = |rest: &str| format!("10.{subnet}.{rest}");
    ip(&["-n", &z, "addr", "add", &net("3.10/32"), "dev", "lo"]).unwrap();
    for addr in ["2.10/32", "2.20/32", "2.30/32"] {
        ip(&["-n", &b, "addr", "add", &net(addr), "dev", "lo"]).unwrap();
    }
    ip(&["-n", &z, "route", "add", &net("2.0/24"), "via", &net("0.3")]).unwrap();
    ip(&["-n", &b, "route", "add", &net("3.0/24"), "via", &net("0.2")]).unwrap();
    Some((ztunnel, lan, [cp, z, b]))
}

/// ztunnel in dedicated mode in `ns` for the workload `zt-app` at `10.<subnet>.3.10`, with only
/// the control plane's address, the root at `root`, its token file `dir/zt.token` and `extra`
/// environment; logs in `dir/ztunnel.log`.
fn spawn_ztunnel(
    ns: &str,
    ztunnel: &Path,
    subnet: u8,
    root: &Path,
    dir: &Path,
    extra: &[&str],
) -> NsProcess {
    let cp = format!("https://10.{subnet}.0.1:15012");
    let mut env = vec![
        format!("XDS_ADDRESS={cp}"),
        format!("CA_ADDRESS={cp}"),
        format!("XDS_ROOT_CA={}", s(root)),
        format!("CA_ROOT_CA={}", s(root)),
        format!("AUTH_TOKEN={}", s(&dir.join("zt.token"))),
        "PROXY_MODE=dedicated".into(),
        "PROXY_WORKLOAD_INFO=default/zt-app/zt".into(),
        // Without a CNI to route replies, the app must answer ztunnel, not the peer.
        "ENABLE_ORIG_SRC=false".into(),
        "NODE_NAME=node-z".into(),
        format!("INSTANCE_IP=10.{subnet}.3.10"),
        "RUST_LOG=info".into(),
    ];
    env.extend(extra.iter().map(|e| e.to_string()));
    env.push(s(ztunnel).to_owned());
    env.extend(["proxy".to_owned(), "ztunnel".to_owned()]);
    let args: Vec<&str> = env.iter().map(String::as_str).collect();
    NsProcess::spawn(ns, Path::new("env"), &args, &dir.join("ztunnel.log"))
}

#[tokio::test]
async fn a_real_ztunnel_takes_its_mesh_from_zident_ca_and_carries_traffic_with_zident() {
    let Some((ztunnel, _lan, [cp, z, b])) = topology("zz", 89) else {
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p);
    std::fs::write(path("mesh.yaml"), mesh(false)).unwrap();
    std::fs::write(path("zt.token"), "token-zt").unwrap();
    let _ca = NsProcess::spawn(
        &cp,
        Path::new(BIN),
        &[
            "ca",
            "--config",
            s(&path("mesh.yaml")),
            "--data-dir",
            s(&path("ca")),
            "--listen",
            "10.89.0.1:15012",
            "--dns-name",
            "10.89.0.1",
        ],
        &path("ca.log"),
    );
    let root = path("ca/root-cert.pem");
    eventually(DEADLINE, "the CA publishes its root", || root.exists()).await;
    let _agent = NsProcess::spawn(
        &b,
        Path::new(BIN),
        &[
            "agent",
            "--node",
            "node-b",
            "--ca-address",
            "10.89.0.1:15012",
            "--ca-root-ca",
            s(&root),
            "--auth-token",
            "token-b",
            "--no-capture",
            "--secret-ttl",
            "1h",
            "--workload-api-dir",
            s(&path("wapi")),
            "--xds-cache",
            s(&path("xds.pb")),
        ],
        &path("agent.log"),
    );
    // ztunnel with nothing but the control plane's address, its root and a token.
    let zt = spawn_ztunnel(
        &z,
        &ztunnel,
        89,
        &root,
        dir.path(),
        &["UNSTABLE_ENABLE_SOCKS5=true"],
    );
    let logs = || {
        format!(
            "\n--- ztunnel ---\n{}\n--- ca ---\n{}\n--- agent ---\n{}",
            zt.output(),
            std::fs::read_to_string(path("ca.log")).unwrap_or_default(),
            std::fs::read_to_string(path("agent.log")).unwrap_or_default()
        )
    };

    // ztunnel receives the mesh: its /config_dump lists zident's workloads.
    eventually(DEADLINE, "ztunnel is ready", || {
        curl_in(&z, &["http://127.0.0.1:15021/healthz/ready"]).0 == 200
    })
    .await;
    assert_eq!(
        ztunnel_workloads(&z),
        ["client", "server", "zt-app"],
        "{}",
        logs()
    );
    eventually(DEADLINE, "the zident agent is ready", || {
        curl_in(&b, &["http://127.0.0.1:15021/healthz/ready"]).0 == 200
    })
    .await;

    let _server = whoami_server(&b, "10.89.2.10", "server-on-zident", dir.path());
    let _zt_app = whoami_server(&z, "10.89.3.10", "zt-app-behind-ztunnel", dir.path());
    for (ns, url) in [
        (&b, "http://10.89.2.10:8080/whoami"),
        (&z, "http://10.89.3.10:8080/whoami"),
    ] {
        eventually(DEADLINE, "a web server answers", || {
            curl_in(ns, &[url]).0 == 200
        })
        .await;
    }

    // ztunnel → zident: the app behind ztunnel reaches the zident agent's workload.
    let (code, body) = curl_in(
        &z,
        &[
            "--socks5",
            "127.0.0.1:15080",
            "http://10.89.2.10:8080/whoami",
        ],
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "server-on-zident"),
        "{}",
        logs()
    );

    // zident → ztunnel: the agent's client workload reaches the app behind ztunnel.
    let (code, body) = curl_in(
        &b,
        &[
            "--interface",
            "10.89.2.20",
            "--socks5",
            "127.0.0.1:15080",
            "http://10.89.3.10:8080/whoami",
        ],
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "zt-app-behind-ztunnel"),
        "{}",
        logs()
    );

    // Megabytes both ways, byte for byte: zident sends (ztunnel's client downloads from the
    // server behind zident) and zident receives (the client behind zident downloads from the
    // app behind ztunnel), each side's 1 MiB frames bounded by what the other advertises.
    let payload = pseudo_random(32 << 20);
    for (server_dir, from_ns, extra, url) in [
        (
            "www-server-on-zident",
            &z,
            &[][..],
            "http://10.89.2.10:8080/big",
        ),
        (
            "www-zt-app-behind-ztunnel",
            &b,
            &["--interface", "10.89.2.20"][..],
            "http://10.89.3.10:8080/big",
        ),
    ] {
        std::fs::write(dir.path().join(server_dir).join("big"), &payload).unwrap();
        let got = dir.path().join("downloaded");
        let _ = std::fs::remove_file(&got);
        let mut args = extra.to_vec();
        args.extend([
            "--max-time",
            "120",
            "--socks5",
            "127.0.0.1:15080",
            "-o",
            s(&got),
            url,
        ]);
        let (code, _) = curl_in(from_ns, &args);
        assert_eq!(code, 200, "{url}{}", logs());
        let received = std::fs::read(&got).unwrap_or_default();
        assert!(
            received == payload,
            "{url}: {} of {} bytes arrived, or they differ{}",
            received.len(),
            payload.len(),
            logs()
        );
    }

    // ztunnel follows an edit of the control plane's file, both ways.
    std::fs::write(path("mesh.tmp"), mesh(true)).unwrap();
    std::fs::rename(path("mesh.tmp"), path("mesh.yaml")).unwrap();
    eventually(DEADLINE, "ztunnel sees the added workload", || {
        ztunnel_workloads(&z).contains(&"extra".to_owned())
    })
    .await;
    std::fs::write(path("mesh.tmp"), mesh(false)).unwrap();
    std::fs::rename(path("mesh.tmp"), path("mesh.yaml")).unwrap();
    eventually(DEADLINE, "ztunnel drops the removed workload", || {
        !ztunnel_workloads(&z).contains(&"extra".to_owned())
    })
    .await;
    assert!(
        !zt.output().contains("NACK") && !zt.output().contains("rejected"),
        "{}",
        logs()
    );
}

/// `openssl s_client` from `ns` to `addr` presenting `cert`/`key` over TLS 1.3 with ALPN h2,
/// for 5 s: what it printed (a refusal arrives as an alert after the handshake).
fn s_client(ns: &str, addr: &str, cert: &Path, key: &Path, root: &Path) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "5", "openssl", "s_client"])
        .args(["-connect", addr, "-tls1_3", "-alpn", "h2", "-ign_eof"])
        .args(["-cert", s(cert), "-key", s(key), "-CAfile", s(root)])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn a_real_ztunnel_with_crl_path_refuses_a_certificate_zident_revoked() {
    let Some((ztunnel, _lan, [cp, z, b])) = topology("zr", 87) else {
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p);
    std::fs::write(path("mesh.yaml"), mesh(false).replace("10.89.", "10.87.")).unwrap();
    std::fs::write(path("zt.token"), "token-zt").unwrap();
    let _ca = NsProcess::spawn(
        &cp,
        Path::new(BIN),
        &[
            "ca",
            "--config",
            s(&path("mesh.yaml")),
            "--data-dir",
            s(&path("ca")),
            "--listen",
            "10.87.0.1:15012",
            "--dns-name",
            "10.87.0.1",
        ],
        &path("ca.log"),
    );
    let (root, crl) = (path("ca/root-cert.pem"), path("ca/crl.pem"));
    eventually(DEADLINE, "the CA publishes its root and its CRL", || {
        root.exists() && crl.exists()
    })
    .await;
    let _agent = NsProcess::spawn(
        &b,
        Path::new(BIN),
        &[
            "agent",
            "--node",
            "node-b",
            "--ca-address",
            "10.87.0.1:15012",
            "--ca-root-ca",
            s(&root),
            "--auth-token",
            "token-b",
            "--no-capture",
            "--secret-ttl",
            "1h",
            "--no-workload-api",
            "--svid-dir",
            s(&path("svids")),
        ],
        &path("agent.log"),
    );
    let crl_path = format!("CRL_PATH={}", s(&crl));
    let zt = spawn_ztunnel(&z, &ztunnel, 87, &root, dir.path(), &[&crl_path]);
    let logs = || {
        format!(
            "\n--- ztunnel ---\n{}\n--- ca ---\n{}\n--- agent ---\n{}",
            zt.output(),
            std::fs::read_to_string(path("ca.log")).unwrap_or_default(),
            std::fs::read_to_string(path("agent.log")).unwrap_or_default()
        )
    };
    eventually(DEADLINE, "ztunnel is ready", || {
        curl_in(&z, &["http://127.0.0.1:15021/healthz/ready"]).0 == 200
    })
    .await;
    let (svid, key) = (
        path("svids/default/client/svid.pem"),
        path("svids/default/client/svid_key.pem"),
    );
    eventually(DEADLINE, "the agent writes the client's SVID files", || {
        svid.exists() && key.exists()
    })
    .await;
    // The client's certificate as it is now, kept for after its revocation.
    let (old_svid, old_key) = (path("old-svid.pem"), path("old-key.pem"));
    std::fs::copy(&svid, &old_svid).unwrap();
    std::fs::copy(&key, &old_key).unwrap();
    let _zt_app = whoami_server(&z, "10.87.3.10", "zt-app-behind-ztunnel", dir.path());
    eventually(DEADLINE, "the app behind ztunnel answers", || {
        curl_in(&z, &["http://10.87.3.10:8080/whoami"]).0 == 200
    })
    .await;
    let through = || {
        curl_in(
            &b,
            &[
                "--interface",
                "10.87.2.20",
                "--socks5",
                "127.0.0.1:15080",
                "http://10.87.3.10:8080/whoami",
            ],
        )
    };
    eventually(
        DEADLINE,
        "zident's client reaches the app behind ztunnel",
        || through() == (200, "zt-app-behind-ztunnel".to_owned()),
    )
    .await;
    // A tunnel from zident's client to the app behind ztunnel, opened with the certificate about
    // to be revoked and held open: a SOCKS5 client that sends nothing and exits when its
    // connection ends.
    const HOLD: &str = r#"import socket
s = socket.socket(); s.bind(('10.87.2.20', 0)); s.connect(('127.0.0.1', 15080))
s.sendall(bytes([5, 1, 0])); s.recv(2)
s.sendall(bytes([5, 1, 0, 1, 10, 87, 3, 10]) + (8080).to_bytes(2, 'big'))
assert s.recv(10)[1] == 0
while s.recv(1024): pass
"#;
    let mut held = std::process::Command::new("ip")
        .args(["netns", "exec", &b, "python3", "-c", HOLD])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs");
    eventually(
        DEADLINE,
        "the held tunnel is open on the zident node",
        || {
            curl_in(&b, &["http://127.0.0.1:15000/debug/connections"])
                .1
                .contains("10.87.3.10:8080")
        },
    )
    .await;
    assert!(
        held.try_wait().unwrap().is_none(),
        "the held tunnel is open"
    );
    let before = s_client(&b, "10.87.3.10:15008", &old_svid, &old_key, &root);
    assert!(
        !before.to_lowercase().contains("certificate revoked"),
        "not revoked yet: {before}"
    );

    // zident revokes the client's certificate; the CA rewrites crl.pem and ztunnel reloads it.
    let (code, out) = {
        let o = std::process::Command::new(BIN)
            .args([
                "ca",
                "revoke",
                "--identity",
                "spiffe://cluster.local/ns/default/sa/client",
            ])
            .args(["--reason", "keyCompromise", "--data-dir", s(&path("ca"))])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    assert_eq!(code, Some(0), "{out}");
    let mut last = String::new();
    eventually(DEADLINE, "ztunnel refuses the revoked certificate", || {
        last = s_client(&b, "10.87.3.10:15008", &old_svid, &old_key, &root);
        last.to_lowercase().contains("certificate revoked")
    })
    .await;
    // ztunnel also closes the open connection of the revoked certificate (its "CRL existing
    // connections" enforcement), and counts it.
    let deadline = std::time::Instant::now() + DEADLINE;
    while held.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = held.kill();
            let metrics = curl_in(&z, &["http://127.0.0.1:15020/metrics"]).1;
            panic!(
                "ztunnel never closed the held tunnel\n--- ztunnel crl metrics ---\n{}{}",
                metrics
                    .lines()
                    .filter(|l| l.contains("crl"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rejected = |text: &str| {
        text.lines().any(|l| {
            l.contains("crl_policy_rejections") && !l.starts_with('#') && !l.ends_with(" 0")
        })
    };
    eventually(DEADLINE, "ztunnel counts the revoked connection", || {
        rejected(&curl_in(&z, &["http://127.0.0.1:15020/metrics"]).1)
    })
    .await;
    // The client's agent replaced the certificate: it still gets through ztunnel.
    eventually(
        DEADLINE,
        "zident's client gets through with its new certificate",
        || through() == (200, "zt-app-behind-ztunnel".to_owned()),
    )
    .await;
    assert!(
        std::fs::read(&svid).unwrap() != std::fs::read(&old_svid).unwrap(),
        "the agent renewed the revoked certificate{}",
        logs()
    );
}
