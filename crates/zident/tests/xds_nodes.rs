//! One control plane, two nodes, each in its own network namespace on a shared bridge: the
//! agents start with no mesh file and take everything from `zident ca` over xDS. Traffic
//! crosses nodes; a policy added and removed in the control plane's file takes effect on the
//! other node; a workload moves between nodes; the control plane restarts while an agent
//! restarts from its on-disk copy of the mesh.
//!
//! Needs root for the namespaces (CI runs as root); skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zident_testkit::eventually;
use zident_testkit::netns::{Lan, NsProcess, curl_in, ip, whoami_server};

const BIN: &str = env!("CARGO_BIN_EXE_zident");
const DEADLINE: Duration = Duration::from_secs(20);

/// Client `c` on node-a; server `s` on node-b; `m` moves from node-b to node-a.
fn mesh(m_node: &str, deny_client: bool) -> String {
    let policy = if deny_client {
        r#"policies:
  - name: no-client
    namespace: shop
    scope: Namespace
    action: Deny
    rules: [[[{principals: [{Exact: "cluster.local/ns/shop/sa/client"}]}]]]
"#
    } else {
        ""
    };
    format!(
        r#"nodes:
  - name: node-a
    token: token-a
    address: 10.88.0.2
  - name: node-b
    token: token-b
    address: 10.88.0.3
workloads:
  - {{uid: c, name: c, namespace: shop, serviceAccount: client, node: node-a, workloadIps: ["10.88.1.10"], protocol: HBONE}}
  - {{uid: s, name: s, namespace: shop, serviceAccount: server, node: node-b, workloadIps: ["10.88.2.10"], protocol: HBONE}}
  - {{uid: m, name: m, namespace: shop, serviceAccount: mover, node: {m_node}, workloadIps: ["10.88.3.10"], protocol: HBONE}}
{policy}"#
    )
}

struct World {
    dir: tempfile::TempDir,
    lan: Lan,
    cp: String,
    a: String,
    b: String,
}

impl World {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn ca(&self) -> NsProcess {
        let (data, mesh, log) = (self.path("ca"), self.path("mesh.yaml"), self.path("ca.log"));
        NsProcess::spawn(
            &self.cp,
            Path::new(BIN),
            &[
                "ca",
                "--config",
                s(&mesh),
                "--data-dir",
                s(&data),
                "--listen",
                "10.88.0.1:15012",
                "--dns-name",
                "10.88.0.1",
            ],
            &log,
        )
    }

    fn agent(&self, node: &str, ns: &str, host: u8, log: &str) -> NsProcess {
        let root = self.path("ca/root-cert.pem");
        let wapi = self.path(&format!("{node}/wapi"));
        let cache = self.path(&format!("{node}/xds.pb"));
        let inbound = format!("{}:15008", self.lan.addr(host));
        NsProcess::spawn(
            ns,
            Path::new(BIN),
            &[
                "agent",
                "--node",
                node,
                "--ca-address",
                "10.88.0.1:15012",
                "--ca-root-ca",
                s(&root),
                "--auth-token",
                &format!("token-{}", &node[5..]),
                "--inbound-addr",
                &inbound,
                "--no-capture",
                "--secret-ttl",
                "1h",
                "--workload-api-dir",
                s(&wapi),
                "--xds-cache",
                s(&cache),
            ],
            &self.path(log),
        )
    }

    /// A web server for workload `ip` in `ns`, answering `GET /whoami` with `who`.
    fn server(&self, ns: &str, ip: &str, who: &str) -> NsProcess {
        whoami_server(ns, ip, who, self.dir.path())
    }

    fn write_mesh(&self, yaml: &str) {
        let tmp = self.path("mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.path("mesh.yaml")).unwrap();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Client `c` (on node-a) fetches `/whoami` from `target` through node-a's SOCKS5 port.
fn fetch(w: &World, target: &str) -> (u16, String) {
    curl_in(
        &w.a,
        &[
            "--interface",
            "10.88.1.10",
            "--socks5",
            "127.0.0.1:15080",
            &format!("http://{target}:8080/whoami"),
        ],
    )
}

fn admin(ns: &str, path: &str) -> serde_json::Value {
    let (code, body) = curl_in(ns, &[&format!("http://127.0.0.1:15000{path}")]);
    if code != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// Waits until the web server for `ip` in `ns` answers there, without the mesh.
async fn listening(ns: &str, ip: &str) {
    let url = format!("http://{ip}:8080/whoami");
    eventually(DEADLINE, &format!("the web server on {ip} answers"), || {
        curl_in(ns, &[&url]).0 == 200
    })
    .await;
}

fn ready(ns: &str) -> bool {
    curl_in(ns, &["http://127.0.0.1:15021/healthz/ready"]).0 == 200
}

fn holds(ns: &str, identity: &str) -> bool {
    admin(ns, "/debug/certs")["certificates"]
        .as_array()
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["spiffe_id"] == identity && c["state"] == "Available")
        })
}

fn setup() -> Option<World> {
    let mut lan = match Lan::new("zx", 88) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIPPED: cannot make network namespaces here ({e}); run as root");
            return None;
        }
    };
    let cp = lan.node("cp", 1).expect("control plane namespace");
    let a = lan.node("a", 2).expect("node-a namespace");
    let b = lan.node("b", 3).expect("node-b namespace");
    // Workload addresses live on each node's loopback; replies find their way back over the
    // bridge. The mover's address exists on both nodes (it is only ever a destination).
    for (ns, addr) in [
        (&a, "10.88.1.10/32"),
        (&b, "10.88.2.10/32"),
        (&a, "10.88.3.10/32"),
        (&b, "10.88.3.10/32"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", "lo"]).unwrap();
    }
    ip(&["-n", &b, "route", "add", "10.88.1.0/24", "via", "10.88.0.2"]).unwrap();
    ip(&["-n", &a, "route", "add", "10.88.2.0/24", "via", "10.88.0.3"]).unwrap();
    Some(World {
        dir: tempfile::tempdir().unwrap(),
        lan,
        cp,
        a,
        b,
    })
}

#[tokio::test]
async fn agents_with_no_mesh_file_follow_the_control_plane_across_nodes() {
    let Some(w) = setup() else { return };
    w.write_mesh(&mesh("node-b", false));
    let mut ca = w.ca();
    let root = w.path("ca/root-cert.pem");
    eventually(DEADLINE, "the CA publishes its root", || root.exists()).await;
    let _agent_a = w.agent("node-a", &w.a, 2, "a.log");
    let mut agent_b = w.agent("node-b", &w.b, 3, "b.log");
    let _s = w.server(&w.b, "10.88.2.10", "s-on-node-b");
    let _m_b = w.server(&w.b, "10.88.3.10", "m-on-node-b");
    let fail = |what: &str| {
        format!(
            "{what}\n--- ca ---\n{}\n--- node-a ---\n{}\n--- node-b ---\n{}",
            std::fs::read_to_string(w.path("ca.log")).unwrap_or_default(),
            std::fs::read_to_string(w.path("a.log")).unwrap_or_default(),
            std::fs::read_to_string(w.path("b.log")).unwrap_or_default(),
        )
    };

    // Both agents get their mesh over xDS and become ready.
    eventually(DEADLINE, "both agents ready", || ready(&w.a) && ready(&w.b)).await;
    let dump = admin(&w.a, "/config_dump");
    assert_eq!(
        dump["workloads"].as_array().map(Vec::len),
        Some(3),
        "{dump}"
    );
    let conn = admin(&w.a, "/debug/connections");
    assert_eq!(conn["xds"]["connected"], true, "{conn}");
    assert_eq!(conn["xds"]["view_from"], "stream", "{conn}");
    assert_eq!(conn["xds"]["resources"]["address"], 3, "{conn}");
    assert!(holds(&w.b, "spiffe://cluster.local/ns/shop/sa/server"));
    assert!(
        !holds(&w.a, "spiffe://cluster.local/ns/shop/sa/server"),
        "only its node holds it"
    );

    // Traffic from node-a's workload to node-b's, over HBONE between the namespaces.
    listening(&w.b, "10.88.2.10").await;
    listening(&w.b, "10.88.3.10").await;
    let (code, body) = fetch(&w, "10.88.2.10");
    assert_eq!(
        (code, body.as_str()),
        (200, "s-on-node-b"),
        "{}",
        fail("first fetch")
    );

    // A policy added in the control plane's file is enforced on node-b within the deadline…
    w.write_mesh(&mesh("node-b", true));
    eventually(DEADLINE, "the DENY policy takes effect on node-b", || {
        fetch(&w, "10.88.2.10").0 != 200
    })
    .await;
    // Refused by node-b's inbound for the policy, not failed for another reason.
    let (_, metrics) = curl_in(&w.b, &["http://127.0.0.1:15020/metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("zident_tunnel_failures") && l.contains("policy_denied")),
        "{metrics}"
    );
    let dump = admin(&w.b, "/config_dump");
    assert_eq!(dump["policies"][0]["name"], "no-client", "{dump}");
    // …and removed again.
    w.write_mesh(&mesh("node-b", false));
    eventually(DEADLINE, "the DENY policy is lifted", || {
        fetch(&w, "10.88.2.10").0 == 200
    })
    .await;

    // A workload moves from node-b to node-a: its certificate follows, and traffic reaches
    // it where it now runs.
    let (code, body) = fetch(&w, "10.88.3.10");
    assert_eq!(
        (code, body.as_str()),
        (200, "m-on-node-b"),
        "{}",
        fail("mover before")
    );
    let _m_a = w.server(&w.a, "10.88.3.10", "m-on-node-a");
    listening(&w.a, "10.88.3.10").await;
    w.write_mesh(&mesh("node-a", false));
    let mover = "spiffe://cluster.local/ns/shop/sa/mover";
    eventually(DEADLINE, "the mover's identity moves to node-a", || {
        holds(&w.a, mover) && !holds(&w.b, mover)
    })
    .await;
    eventually(DEADLINE, "traffic to the mover reaches node-a", || {
        fetch(&w, "10.88.3.10") == (200, "m-on-node-a".into())
    })
    .await;

    // The control plane goes down; node-b's agent restarts meanwhile and comes back with the
    // mesh it kept on disk.
    ca.kill();
    agent_b.kill();
    let agent_b = w.agent("node-b", &w.b, 3, "b2.log");
    eventually(DEADLINE, "node-b's agent answers again", || {
        admin(&w.b, "/debug/connections")["xds"]["view_from"] == "cache"
    })
    .await;
    let dump = admin(&w.b, "/config_dump");
    assert_eq!(
        dump["workloads"].as_array().map(Vec::len),
        Some(3),
        "{dump}"
    );
    let m = dump["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|x| x["uid"] == "m"))
        .cloned();
    assert_eq!(
        m.map(|m| m["node"].clone()),
        Some("node-a".into()),
        "the cached view is the last one"
    );

    // The control plane returns: node-b reconnects, gets its certificates, serves again.
    let _ca = w.ca();
    eventually(DEADLINE, "node-b's stream is back", || {
        admin(&w.b, "/debug/connections")["xds"]["connected"] == true
    })
    .await;
    eventually(DEADLINE, "traffic to node-b flows again", || {
        fetch(&w, "10.88.2.10") == (200, "s-on-node-b".into())
    })
    .await;
    assert!(
        !agent_b.output().contains("NACK") && !agent_b.output().contains("rejected"),
        "{}",
        agent_b.output()
    );
}
