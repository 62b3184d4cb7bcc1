//! One Workload API socket for every workload: each caller gets its own identity and no
//! other. Workloads in their own network namespaces (an interface holding the workload's
//! address) are told apart by those addresses, through the Python `spiffe` package and through
//! the `spiffe` crate; a process in a namespace with no workload address is refused; a
//! workload whose address moves to another identity gets the new one on its next call while
//! its open stream ends. A workload that declares its user is served to a non-root process
//! running as that user (`setpriv`), on the shared socket, on its own socket and in its files;
//! another user is refused and cannot read its key.
//!
//! Needs root (network namespaces, setpriv); skipped with a message otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{NODE, agent_config, eventually, log_text, logs, start_ca};
use zident_testkit::netns::ip;

const WAIT: Duration = Duration::from_secs(20);

fn mesh(one_ip: &str, two_ip: &str) -> String {
    format!(
        "trustDomain: cluster.local
nodes:
- {{name: node-a, token: token-node-a}}
workloads:
- {{uid: w1, name: one, namespace: default, serviceAccount: one, node: node-a, workloadIps: ['{one_ip}']}}
- {{uid: w2, name: two, namespace: default, serviceAccount: two, node: node-a, workloadIps: ['{two_ip}']}}
- {{uid: w3, name: three, namespace: default, serviceAccount: three, node: node-a, workloadIps: ['10.91.0.3']}}
- {{uid: w4, name: runner, namespace: default, serviceAccount: runner, node: node-a, user: 1501, group: 1501}}
"
    )
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ZIDENT_PYTHON") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python3")
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/fetch_svid.py")
}

/// Namespaces named after this process, removed on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A namespace with an interface holding `address` (a veth pair kept inside it: dummy
/// interfaces need a kernel module that containers often lack).
fn namespace(all: &mut Namespaces, name: &str, address: &str) -> Result<String, String> {
    let ns = format!("za{}-{name}", std::process::id() % 100_000);
    ip(&["netns", "add", &ns])?;
    all.0.push(ns.clone());
    ip(&[
        "-n", &ns, "link", "add", "w0", "type", "veth", "peer", "name", "w1",
    ])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{address}/32"),
        "dev",
        "w0",
    ])?;
    ip(&["-n", &ns, "link", "set", "w0", "up"])?;
    ip(&["-n", &ns, "link", "set", "w1", "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    Ok(ns)
}

/// Runs the Python client in `ns` (and as `uid`, when given); returns what it printed.
fn fetch(ns: Option<&str>, uid: Option<u32>, socket: &Path, extra: &[&str]) -> String {
    let mut cmd = Command::new("sh");
    let mut line = String::new();
    if let Some(ns) = ns {
        line.push_str(&format!("ip netns exec {ns} "));
    }
    if let Some(uid) = uid {
        line.push_str(&format!(
            "setpriv --reuid={uid} --regid={uid} --clear-groups "
        ));
    }
    line.push_str(&format!(
        "{} {} {} {}",
        python().display(),
        script().display(),
        socket.display(),
        extra.join(" ")
    ));
    let out = cmd.args(["-c", &line]).output().expect("sh runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `spiffe` crate's client, run by this test binary re-executed inside a namespace (see
/// `spiffe_crate_client`); returns what it printed.
fn fetch_with_the_crate(ns: &str, socket: &Path) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "spiffe_crate_client",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ZIDENT_ATTEST_SOCKET", socket)
        .output()
        .expect("the test binary runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Not a test on its own: with ZIDENT_ATTEST_SOCKET set (by the test above, in a namespace),
/// asks that socket for an X509-SVID with the `spiffe` crate and prints `crate-id <ID>`.
#[tokio::test]
async fn spiffe_crate_client() {
    let Some(socket) = std::env::var_os("ZIDENT_ATTEST_SOCKET") else {
        return;
    };
    let endpoint = format!("unix:{}", Path::new(&socket).display());
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .expect("connects");
    match client.fetch_x509_svid().await {
        Ok(svid) => println!("crate-id {}", svid.spiffe_id()),
        Err(e) => println!("crate-refused {e}"),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_of_the_shared_socket_gets_its_own_identity_and_no_other() {
    if !is_root() || !python().exists() {
        eprintln!("SKIPPED: needs root (network namespaces, setpriv) and target/pyenv (.ci/run)");
        return;
    }
    logs();
    let dir = tempfile::tempdir().unwrap();
    // Non-root callers must be able to reach the sockets' directory.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh("10.91.0.1", "10.91.0.2")).unwrap();
    let ca = start_ca(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut all = Namespaces(vec![]);
    let made = (|| {
        Ok::<_, String>((
            namespace(&mut all, "one", "10.91.0.1")?,
            namespace(&mut all, "two", "10.91.0.2")?,
            namespace(&mut all, "three", "10.91.0.3")?,
            namespace(&mut all, "none", "10.91.0.99")?,
        ))
    })();
    let (one, two, three, none) = match made {
        Ok(n) => n,
        Err(e) => {
            eprintln!("SKIPPED: cannot make network namespaces here: {e}");
            return;
        }
    };
    let shared = dir.path().join("shared.sock");
    let mut config = agent_config(
        &dir.path().join("mesh.yaml"),
        &dir.path().join("ca/root-cert.pem"),
        &format!("localhost:{}", ca.addr.port()),
        Duration::from_secs(3600),
    );
    config.delivery = zident_agent::workload_api::DeliveryConfig {
        shared_socket: Some(shared.clone()),
        socket_dir: Some(dir.path().join("wl")),
        svid_dir: Some(dir.path().join("svid")),
        ..Default::default()
    };
    assert_eq!(config.node, NODE);
    let agent = common::start_agent(config).await;
    eventually(WAIT, "every identity is Available", || {
        common::all_available(&agent)
    })
    .await;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&shared).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o666,
        "the shared socket is open to every local user"
    );

    // Each namespace gets its own workload's identity, through the Python package.
    for (ns, sa) in [(&one, "one"), (&two, "two"), (&three, "three")] {
        let out = tokio::task::spawn_blocking({
            let (ns, shared) = (ns.clone(), shared.clone());
            move || fetch(Some(&ns), None, &shared, &[])
        })
        .await
        .unwrap();
        assert!(
            out.contains(&format!("id spiffe://cluster.local/ns/default/sa/{sa}")),
            "{ns}: {out}\n{}",
            log_text()
        );
    }
    // The same through the `spiffe` crate.
    for (ns, sa) in [(&one, "one"), (&three, "three")] {
        let out = tokio::task::spawn_blocking({
            let (ns, shared) = (ns.clone(), shared.clone());
            move || fetch_with_the_crate(&ns, &shared)
        })
        .await
        .unwrap();
        assert!(
            out.contains(&format!(
                "crate-id spiffe://cluster.local/ns/default/sa/{sa}"
            )),
            "{ns}: {out}"
        );
    }
    let out = fetch_with_the_crate(&none, &shared);
    assert!(out.contains("crate-refused"), "{out}");
    // A namespace that holds no workload's address is refused, and the agent says whom.
    let out = fetch(Some(&none), None, &shared, &[]);
    assert!(
        out.contains("refused") && out.contains("PERMISSION_DENIED"),
        "{out}"
    );
    assert!(
        log_text().contains("10.91.0.99"),
        "the refusal names the caller's addresses"
    );

    // The address of `two` moves to identity `one`… a stream open in `two`'s namespace ends,
    // and the next call there gets `one`.
    let streaming = tokio::task::spawn_blocking({
        let (ns, shared) = (two.clone(), shared.clone());
        move || fetch(Some(&ns), None, &shared, &["--stream", "30"])
    });
    eventually(WAIT, "the stream is listed as a client", || {
        agent
            .delivery
            .clients()
            .list()
            .iter()
            .filter(|c| c.identity.as_deref() == Some("spiffe://cluster.local/ns/default/sa/two"))
            .count()
            >= 1
    })
    .await;
    std::fs::write(
        dir.path().join("mesh.tmp"),
        mesh("10.91.0.1", "10.91.0.77").replace(
            "workloadIps: ['10.91.0.1']",
            "workloadIps: ['10.91.0.1', '10.91.0.2']",
        ),
    )
    .unwrap();
    std::fs::rename(dir.path().join("mesh.tmp"), dir.path().join("mesh.yaml")).unwrap();
    let out = streaming.await.unwrap();
    assert!(
        out.contains("id spiffe://cluster.local/ns/default/sa/two") && out.contains("ended"),
        "{out}"
    );
    let out = fetch(Some(&two), None, &shared, &[]);
    assert!(
        out.contains("id spiffe://cluster.local/ns/default/sa/one"),
        "{out}"
    );

    // A workload that declares its user: served to a non-root process of that user, on the
    // shared socket and on its own, and its files are its own.
    let out = fetch(None, Some(1501), &shared, &[]);
    assert!(
        out.contains("id spiffe://cluster.local/ns/default/sa/runner"),
        "{out}"
    );
    let own = dir.path().join("wl/default/runner/agent.sock");
    let out = fetch(None, Some(1501), &own, &[]);
    assert!(
        out.contains("id spiffe://cluster.local/ns/default/sa/runner"),
        "{out}\n{}",
        log_text()
    );
    let key = dir.path().join("svid/default/runner/svid_key.pem");
    eventually(WAIT, "the runner's SVID files are written", || key.exists()).await;
    let read = |uid: u32| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "cat",
            ])
            .arg(&key)
            .output()
            .unwrap()
    };
    assert!(
        read(1501).status.success(),
        "the declared user reads its key"
    );
    // Another non-root user: refused on the shared socket, cannot open the runner's socket,
    // and cannot read its key.
    let out = fetch(None, Some(1502), &shared, &[]);
    assert!(out.contains("refused"), "{out}");
    // (The directory is 0700 and the runner's: the client cannot even see the socket.)
    let out = fetch(None, Some(1502), &own, &[]);
    assert!(
        out.contains("refused") || out.contains("ermission") || out.contains("does not exist"),
        "{out}"
    );
    assert!(!out.contains("id spiffe://"), "{out}");
    assert!(
        !read(1502).status.success(),
        "another user cannot read the key"
    );

    // /debug/connections lists the clients, and the metric counts the outcomes.
    let stream = tokio::task::spawn_blocking({
        let (ns, shared) = (three.clone(), shared.clone());
        move || fetch(Some(&ns), None, &shared, &["--stream", "5"])
    });
    eventually(WAIT, "/debug/connections lists the open client", || {
        let (_, body) = common::curl(&format!(
            "http://{}/debug/connections",
            agent.admin_addr.unwrap()
        ));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["workload_api_clients"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["identity"] == "spiffe://cluster.local/ns/default/sa/three"
                    && c["method"] == "network_namespace"
                    && c["pid"].as_i64().is_some_and(|p| p > 0)
                    && c["since"].is_string()
            })
        })
    })
    .await;
    let _ = stream.await;
    let (_, metrics) = common::curl(&format!("http://{}/metrics", agent.metrics_addr.unwrap()));
    assert!(
        metrics.contains("zident_workload_api_attestations_total{outcome=\"network_namespace\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"refused\""), "{metrics}");
    assert!(metrics.contains("outcome=\"user\""), "{metrics}");
    drop(ca);
}
