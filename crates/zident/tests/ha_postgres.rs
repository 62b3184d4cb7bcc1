//! CA replicas on one PostgreSQL (a real server, started by the test in a temporary
//! directory on loopback): one schema and one root however they start, a broken `apply` that
//! changes nothing and a good one every replica follows, rotation handed to another replica
//! when the leader is killed (kill -9) and finished exactly once, and a replica that keeps
//! issuing through a database outage, takes no rotation step, and catches up.
//!
//! Needs Debian's `postgresql` package (.ci/run installs it); skipped with a message without it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zident_ca::datastore::Store;
use zident_testkit::eventually;
use zident_testkit::postgres::Postgres;

const BIN: &str = env!("CARGO_BIN_EXE_zident");
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a replica may take to start serving: the binary's tests start their PostgreSQL
/// servers and replicas all at once, which on two loaded cores took over 30 s once in CI.
const START: Duration = Duration::from_secs(90);

const MESH: &str = "trustDomain: cluster.local
nodes:
- {name: node-a, token: token-a}
workloads:
- {uid: fe, name: frontend, namespace: default, serviceAccount: frontend, node: node-a}
";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct World {
    pg: Postgres,
    dir: tempfile::TempDir,
}

fn setup() -> Option<World> {
    match Postgres::start() {
        Ok(pg) => {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("kek"), [42u8; 32]).unwrap();
            std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
            Some(World { pg, dir })
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot start PostgreSQL here: {e}");
            None
        }
    }
}

struct Replica {
    child: Child,
    name: String,
    dir: PathBuf,
    port: u16,
    metrics_port: u16,
    log: PathBuf,
}

impl World {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn replica(&self, name: &str, import: bool, extra: &[&str]) -> Replica {
        let (port, metrics_port) = (free_port(), free_port());
        let dir = self.path(name);
        let log = self.path(&format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["ca", "--datastore", &self.pg.url(), "--kek-file"])
            .arg(self.path("kek"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--replica-name", name, "--bundle-refresh-hint", "1s"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if import {
            cmd.arg("--config").arg(self.path("mesh.yaml"));
        }
        Replica {
            child: cmd.spawn().expect("start zident ca"),
            name: name.into(),
            dir,
            port,
            metrics_port,
            log,
        }
    }

    fn zident(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("ZIDENT_DATASTORE", self.pg.url())
            .output()
            .expect("zident runs")
    }

    async fn store(&self) -> Store {
        Store::connect(&self.pg.url())
            .await
            .expect("the test reaches the database")
    }
}

impl Replica {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn ready(&self) -> (u16, String) {
        zident_testkit::curl(&[&format!("http://127.0.0.1:{}/ready", self.metrics_port)])
    }

    fn metrics(&self) -> String {
        zident_testkit::curl(&[&format!("http://127.0.0.1:{}/metrics", self.metrics_port)]).1
    }

    fn serving(&self) -> bool {
        self.ready().0 != 0
    }

    /// Waits up to [`START`] until the replica answers (and with `ready`, answers ready);
    /// fails with its log, so a replica that never came up says why.
    async fn started(&self, ready: bool) {
        let deadline = std::time::Instant::now() + START;
        while !(if ready {
            self.ready().0 == 200
        } else {
            self.serving()
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never {} within {START:?}:\n{}",
                self.name,
                if ready { "became ready" } else { "served" },
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks for frontend's certificate as node-a, with lifetime `ttl_secs`.
    async fn issue(&self, ttl_secs: i64) -> Result<Vec<String>, String> {
        self.issue_for("frontend", ttl_secs).await
    }

    /// The replica's SPIFFE bundle (`/bundle`).
    fn bundle(&self) -> zident_identity::TrustBundle {
        let root = self.dir.join("root-cert.pem").display().to_string();
        let url = format!("https://localhost:{}/bundle", self.port);
        let (code, json) = zident_testkit::curl(&["--cacert", &root, &url]);
        assert_eq!(code, 200, "{json}");
        let td = zident_identity::TrustDomain::new("cluster.local").unwrap();
        zident_identity::TrustBundle::from_jwks_json(td, &json).unwrap()
    }

    /// Asks for a JWT-SVID for frontend as node-a.
    async fn jwt(&self) -> Result<String, String> {
        let mut req = tonic::Request::new(zident_proto::zident_ca::CreateJwtSvidRequest {
            spiffe_id: "spiffe://cluster.local/ns/default/sa/frontend".into(),
            audience: vec!["api".into()],
            validity_seconds: 0,
        });
        req.metadata_mut()
            .insert("authorization", "Bearer token-a".parse().unwrap());
        zident_proto::zident_ca::jwt_svid_service_client::JwtSvidServiceClient::new(
            self.channel().await?,
        )
        .create_jwt_svid(req)
        .await
        .map(|r| r.into_inner().token)
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
    }

    async fn channel(&self) -> Result<Channel, String> {
        let root = std::fs::read(self.dir.join("root-cert.pem")).map_err(|e| e.to_string())?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(root))
            .domain_name("localhost");
        Channel::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| e.to_string())
    }

    /// Asks for service account `sa`'s certificate as node-a.
    async fn issue_for(&self, sa: &str, ttl_secs: i64) -> Result<Vec<String>, String> {
        let root = std::fs::read(self.dir.join("root-cert.pem")).map_err(|e| e.to_string())?;
        let id = format!("spiffe://cluster.local/ns/default/sa/{sa}");
        zident_testkit::ca::request_certificate(self.port, &root, "token-a", &id, ttl_secs).await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn logs(replicas: &[&Replica]) -> String {
    replicas
        .iter()
        .map(|r| format!("\n--- {} ---\n{}", r.name, r.output()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_started_at_once_on_an_empty_database_make_one_schema_and_one_root() {
    let Some(w) = setup() else { return };
    let a = w.replica("r1", true, &[]);
    let b = w.replica("r2", true, &[]);
    eventually(DEADLINE, "both replicas serve", || {
        a.serving() && b.serving()
    })
    .await;
    let store = w.store().await;
    let roots = store.roots().await.unwrap();
    assert_eq!(roots.len(), 1, "one root{}", logs(&[&a, &b]));
    assert_eq!(
        store.mesh_history().await.unwrap().len(),
        1,
        "one mesh version"
    );
    let (state, _) = store.rotation().await.unwrap().unwrap();
    assert_eq!((state.active, state.prepared), (1, None));
    let pem = |r: &Replica| std::fs::read_to_string(r.dir.join("root-cert.pem")).unwrap();
    assert_eq!(pem(&a), pem(&b), "both publish the same root");
    assert_eq!(pem(&a).trim(), roots[0].cert_pem.trim());
    // The key is in the database only sealed.
    let sealed = roots[0].key_sealed.clone().unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
    // Both issue under it.
    assert!(a.issue(600).await.is_ok() && b.issue(600).await.is_ok());

    // One JWT-SVID key, sealed in the database like the root key, published by both: a token
    // one replica signs verifies with the other's bundle.
    let jwt_sealed = roots[0].jwt_key_sealed.clone().expect("a JWT-SVID key");
    assert!(!String::from_utf8_lossy(&jwt_sealed).contains("PRIVATE KEY"));
    let keys = a.bundle().jwt_keys().to_vec();
    assert_eq!(keys.len(), 1);
    assert_eq!(b.bundle().jwt_keys(), &keys[..]);
    let token = a.jwt().await.unwrap();
    let valid = zident_identity::jwt::validate(
        &token,
        &keys,
        &zident_identity::TrustDomain::new("cluster.local").unwrap(),
        "api",
        std::time::SystemTime::now(),
    );
    assert!(valid.is_ok(), "{valid:?}");
    assert!(b.jwt().await.is_ok());
    drop((a, b));

    // A database from before JWT-SVIDs (no JWT key on its root): the first replica to start
    // makes one, once, and every replica signs with it.
    let (sql, connection) = tokio_postgres::connect(&w.pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sql.execute("UPDATE zident_roots SET jwt_key_sealed = NULL", &[])
        .await
        .unwrap();
    let (a, b) = (w.replica("r1", false, &[]), w.replica("r2", false, &[]));
    eventually(DEADLINE, "both replicas serve again", || {
        a.serving() && b.serving()
    })
    .await;
    let roots = store.roots().await.unwrap();
    assert!(roots[0].jwt_key_sealed.is_some(), "{}", logs(&[&a, &b]));
    let upgraded = a.bundle().jwt_keys().to_vec();
    assert_eq!(upgraded.len(), 1);
    assert_ne!(upgraded, keys, "a new key, not the old one restored");
    assert_eq!(b.bundle().jwt_keys(), &upgraded[..], "{}", logs(&[&a, &b]));
    assert!(a.jwt().await.is_ok() && b.jwt().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_apply_changes_nothing_and_a_good_one_reaches_every_replica() {
    let Some(w) = setup() else { return };
    let a = w.replica("r1", true, &[]);
    a.started(false).await;
    let b = w.replica("r2", false, &[]);
    b.started(false).await;

    std::fs::write(
        w.path("broken.yaml"),
        MESH.replace("node: node-a}", "node: node-a, colour: red}"),
    )
    .unwrap();
    let out = w.zident(&["ca", "apply", "-f", w.path("broken.yaml").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("colour") && err.contains("nothing stored"),
        "{err}"
    );
    assert_eq!(
        w.store().await.mesh_history().await.unwrap().len(),
        1,
        "nothing stored"
    );

    let good = MESH.to_owned()
        + "- {uid: be, name: backend, namespace: default, serviceAccount: backend, node: node-a}\n";
    std::fs::write(w.path("good.yaml"), &good).unwrap();
    for r in [&a, &b] {
        let refused = r.issue_for("backend", 600).await.unwrap_err();
        assert!(
            refused.contains("permission denied"),
            "not yet in the mesh: {refused}"
        );
    }
    let out = w.zident(&[
        "ca",
        "apply",
        "-f",
        w.path("good.yaml").to_str().unwrap(),
        "--applied-by",
        "test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every replica applies it: the new workload's identity is issued by each.
    for r in [&a, &b] {
        let mut issued = Err(String::new());
        for _ in 0..100 {
            issued = r.issue_for("backend", 600).await;
            if issued.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            issued.is_ok(),
            "{} serves mesh version 2: {issued:?}{}",
            r.name,
            logs(&[r])
        );
        assert_eq!(
            std::fs::read_to_string(r.dir.join("mesh.yaml")).unwrap(),
            good
        );
    }
    let history = w.zident(&["ca", "mesh", "history"]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(text.lines().count() == 3 && text.contains("test"), "{text}");
    let shown = w.zident(&["ca", "mesh", "show", "1"]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout), MESH);
}

/// The leader, from what the replicas report.
async fn leader(w: &World) -> Option<String> {
    w.store()
        .await
        .replicas()
        .await
        .ok()?
        .into_iter()
        .find(|r| r.leader && r.seconds_ago < 2.0)
        .map(|r| r.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_rotation_to_another_replica_and_it_finishes_once() {
    let Some(w) = setup() else { return };
    // A short-lived root, so that prepare is due a few seconds after the first start.
    let extra = ["--root-lifetime", "40s", "--rotate-at", "0.2"];
    let first = w.replica("r1", true, &extra);
    first.started(false).await;
    let mut replicas = vec![
        first,
        w.replica("r2", false, &extra),
        w.replica("r3", false, &extra),
    ];
    eventually(DEADLINE, "three replicas serve", || {
        replicas.iter().all(Replica::serving)
    })
    .await;

    // Prepare is taken by whoever leads; then the leader is killed.
    let store = w.store().await;
    let mut prepared = false;
    for _ in 0..300 {
        if store.rotation().await.unwrap().unwrap().0.prepared == Some(2) {
            prepared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    assert!(prepared, "a replica prepares generation 2{}", logs(&all));
    let name = leader(&w).await.expect("one replica leads");
    let i = replicas.iter().position(|r| r.name == name).unwrap();
    replicas[i].kill9();
    let dead = replicas.remove(i);

    // Issuance goes on at the others, and another replica takes the lead and activates. (The
    // ledger counts whole seconds: a certificate issued in prepare's second counts as issued
    // before it, and activation would wait for its renewal; so issue from the next second.)
    let prepared_at = store.rotation().await.unwrap().unwrap().0.history[0].at;
    while zident_identity::unix_seconds(std::time::SystemTime::now()) <= prepared_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in &replicas {
        assert!(r.issue(600).await.is_ok(), "{} issues", r.name);
    }
    let mut next = None;
    for _ in 0..300 {
        if let Some(n) = leader(&w).await
            && n != name
        {
            next = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = next.unwrap_or_else(|| panic!("another replica leads{}", logs(&[&dead])));
    let mut active = false;
    for _ in 0..300 {
        if store.rotation().await.unwrap().unwrap().0.active == 2 {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    assert!(active, "{next} activates generation 2{}", logs(&all));

    // The new leader is killed in turn; the last replica leads; nothing is done twice.
    let i = replicas.iter().position(|r| r.name == next).unwrap();
    replicas[i].kill9();
    replicas.remove(i);
    let last = replicas[0].name.clone();
    eventually(DEADLINE, "the last replica leads", || {
        futures_lite_block(leader(&w)).as_deref() == Some(last.as_str())
    })
    .await;
    let (state, _) = store.rotation().await.unwrap().unwrap();
    let steps: Vec<(String, u32)> = state
        .history
        .iter()
        .map(|e| (e.phase.clone(), e.generation))
        .collect();
    assert_eq!(
        steps,
        [("prepare".to_owned(), 2), ("activate".to_owned(), 2)],
        "each step once"
    );
    assert_eq!(store.roots().await.unwrap().len(), 2, "one new generation");
    // The survivor serves what the database says, and `zident ca status` agrees.
    let local: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(replicas[0].dir.join("rotation.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(local["active"], 2);
    let status = w.zident(&["ca", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["phase"], "activated");
    assert!(replicas[0].issue(600).await.is_ok());
}

/// Runs a future to completion from a synchronous check (the leader lookup in `eventually`).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_issuing_through_a_database_outage_and_catches_up() {
    let Some(w) = setup() else { return };
    // Prepare falls due about 8 s after the root is made (a root is backdated 2 minutes, so
    // 0.9 of 22 s + 120 s is 128 s into its life): during the outage.
    let started = std::time::Instant::now();
    let r = w.replica(
        "r1",
        true,
        &["--root-lifetime", "22s", "--rotate-at", "0.9"],
    );
    r.started(true).await;
    w.pg.stop().unwrap();
    eventually(DEADLINE, "the replica says it is degraded", || {
        let (code, body) = r.ready();
        code == 503 && body.contains("degraded")
    })
    .await;
    assert!(r.metrics().contains("zident_ca_datastore_degraded 1"));

    // Longer than a certificate's lifetime: certificates keep being issued and renewed.
    // (Waiting out a lifetime is what is tested here, not a way to synchronize.)
    let issued = std::time::Instant::now();
    r.issue(3).await.expect("issues while degraded");
    while issued.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.issue(3).await.expect("renews while degraded");
    // Past the moment prepare fell due: no step was taken without the database.
    while started.elapsed() < Duration::from_secs(11) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let local = std::fs::read_to_string(r.dir.join("rotation.json")).unwrap();
    assert!(
        local.contains("\"prepared\": null"),
        "no rotation step while degraded: {local}"
    );

    w.pg.start_again().unwrap();
    eventually(DEADLINE, "the replica is ready again", || {
        r.ready().0 == 200
    })
    .await;
    let store = w.store().await;
    eventually(
        DEADLINE,
        "what it issued meanwhile reached the database",
        || {
            futures_lite_block(store.issued())
                .map(|i| i.contains_key("spiffe://cluster.local/ns/default/sa/frontend"))
                .unwrap_or(false)
        },
    )
    .await;
    // And the overdue step is taken now, once.
    eventually(DEADLINE, "the overdue prepare is taken", || {
        futures_lite_block(store.rotation())
            .ok()
            .flatten()
            .is_some_and(|(s, _)| s.prepared == Some(2))
    })
    .await;
    assert!(
        r.output().contains("the datastore is away"),
        "{}",
        r.output()
    );
}

/// The serial of frontend's certificate on `agent`, when it has one.
fn serial(agent: &zident_agent::RunningAgent) -> Option<String> {
    agent
        .manager
        .snapshot()
        .into_iter()
        .find(|(id, _)| id.as_str() == "spiffe://cluster.local/ns/default/sa/frontend")
        .and_then(|(_, s)| match s.state {
            zident_agent::CertState::Available(c) => Some(c.serial_hex.clone()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_given_two_replicas_goes_on_with_the_other_when_one_is_killed() {
    let Some(w) = setup() else { return };
    let extra = ["--dns-name", "127.0.0.1"];
    let mut a = w.replica("r1", true, &extra);
    a.started(false).await;
    let b = w.replica("r2", false, &extra);
    b.started(false).await;

    // An agent with nothing but the two addresses, its root and a token; its mesh comes over
    // xDS from whichever replica it reaches.
    let ca = zident_agent::CaClientConfig {
        address: format!("127.0.0.1:{}, 127.0.0.1:{}", a.port, b.port),
        root_ca: a.dir.join("root-cert.pem"),
        token: zident_agent::TokenSource::Literal("token-a".into()),
        cluster_id: "Kubernetes".into(),
        request_timeout: Duration::from_secs(5),
        poll_bundle: false,
    };
    let mut config = zident_agent::AgentConfig::from_control_plane("node-a", None, ca);
    config.secret_ttl = Duration::from_secs(4);
    config.renewal.min_interval = Duration::from_secs(1);
    config.admin_addr = None;
    config.metrics_addr = None;
    config.readiness_addr = None;
    let agent = zident_agent::RunningAgent::start(config, None)
        .await
        .expect("agent starts");
    eventually(DEADLINE, "frontend's certificate arrives", || {
        serial(&agent).is_some()
    })
    .await;
    let status = agent.manager.ca().status();
    assert_eq!(status.replicas.len(), 2, "{status:?}");

    // r1 is killed: renewals go on at r2, and the agent shows which it uses.
    a.kill9();
    let before = serial(&agent);
    let killed = format!("127.0.0.1:{}", a.port);
    eventually(DEADLINE, "a renewal after r1 is gone", || {
        serial(&agent).is_some() && serial(&agent) != before
    })
    .await;
    // Round robin reaches r1 within a renewal or two: it is found unreachable, set aside, and
    // the same request is answered by r2.
    eventually(DEADLINE, "r1 is tried, found gone and set aside", || {
        let s = agent.manager.ca().status();
        s.replicas
            .iter()
            .any(|r| r.address == killed && r.last_error.is_some())
    })
    .await;
    let after_failover = serial(&agent);
    eventually(DEADLINE, "renewals go on after the failover", || {
        serial(&agent).is_some() && serial(&agent) != after_failover
    })
    .await;
    let s = agent.manager.ca().status();
    assert_eq!(
        s.last_replica.as_deref(),
        Some(format!("127.0.0.1:{}", b.port).as_str()),
        "{s:?}"
    );
    // Every renewal after the kill succeeded: no identity became Unavailable.
    assert!(
        agent
            .manager
            .snapshot()
            .iter()
            .all(|(_, s)| matches!(s.state, zident_agent::CertState::Available(_))),
        "{:?}",
        agent.manager.snapshot()
    );
    let xds = agent.xds.as_ref().unwrap().get();
    assert_eq!(xds.resources.get("address"), Some(&1usize), "{xds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_speaks_tls_to_the_database_when_the_url_asks() {
    // A CA and a server certificate for 127.0.0.1, made here.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test database CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let pg = match Postgres::start_tls(&server.pem(), &key.serialize_pem()) {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("SKIPPED: cannot start PostgreSQL here: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let wrong_file = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_file, other_params.self_signed(&other).unwrap().pem()).unwrap();

    // Plain TCP is refused by this server; TLS verified against its CA is accepted.
    let plain = format!("{}?sslmode=disable", pg.url());
    let err = Store::connect(&plain)
        .await
        .err()
        .expect("plain TCP is refused");
    assert!(
        err.to_string().contains("no encryption") || err.to_string().contains("pg_hba"),
        "{err}"
    );
    let tls = format!(
        "{}?sslmode=require&sslrootcert={}",
        pg.url(),
        ca_file.display()
    );
    let store = Store::connect(&tls)
        .await
        .expect("TLS with the right CA connects");
    assert_eq!(store.mesh_history().await.unwrap().len(), 0);
    let _ = store.listen().await;
    // The server's certificate is verified: another CA is refused, with the reason.
    let wrong = format!(
        "{}?sslmode=require&sslrootcert={}",
        pg.url(),
        wrong_file.display()
    );
    let err = Store::connect(&wrong)
        .await
        .err()
        .expect("an unknown CA is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Without a CA file, `require` is refused before connecting, saying what to add.
    let bare = format!("{}?sslmode=require", pg.url());
    let err = Store::connect(&bare)
        .await
        .err()
        .expect("require needs a CA file");
    assert!(err.to_string().contains("sslrootcert"), "{err}");
}

/// The serial of a PEM leaf, lowercase hex as the ledger writes it.
fn leaf_serial(pem: &str) -> String {
    let der = zident_identity::pem::certs_from_pem(pem.as_bytes()).unwrap();
    zident_identity::check_leaf(&der[0]).unwrap().serial_hex
}

/// Whether the CRL file `crl.pem` of `r`'s data dir lists `leaf_pem` (verified against its root).
fn listed(r: &Replica, leaf_pem: &str) -> bool {
    let Ok(pem) = std::fs::read_to_string(r.dir.join("crl.pem")) else {
        return false;
    };
    let Ok(roots) = std::fs::read(r.dir.join("root-cert.pem")) else {
        return false;
    };
    let roots = zident_identity::pem::certs_from_pem(&roots).unwrap_or_default();
    let leaf = zident_identity::pem::certs_from_pem(leaf_pem.as_bytes()).unwrap();
    zident_identity::RevocationList::from_pem(&pem, &roots, std::time::SystemTime::now(), None)
        .is_ok_and(|l| l.is_revoked(&leaf[0]))
}

/// Revocation in the shared datastore: `zident ca revoke --datastore` finds a certificate one
/// replica issued when asked by identity, every replica lists it in its CRLs, a denial of
/// reissue is enforced by every replica, and lifting it is too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_in_the_datastore_reaches_every_replica() {
    let Some(w) = setup() else { return };
    let r1 = w.replica("r1", true, &[]);
    r1.started(true).await;
    let r2 = w.replica("r2", false, &[]);
    r2.started(true).await;
    // Issued by r1 alone; r2 never saw it.
    let chain = r1.issue(3600).await.expect("r1 issues");
    let serial = leaf_serial(&chain[0]);
    let store = w.store().await;
    eventually(
        DEADLINE,
        "r1 recorded the certificate in the datastore",
        || {
            futures_lite_block(store.certificates(std::time::SystemTime::now()))
                .is_ok_and(|issued| issued.iter().any(|c| c.certificate.serial == serial))
        },
    )
    .await;

    let out = w.zident(&[
        "ca",
        "revoke",
        "--identity",
        "spiffe://cluster.local/ns/default/sa/frontend",
        "--reason",
        "keyCompromise",
        "--deny-reissue",
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&serial) && text.contains("every replica"),
        "{text}"
    );
    eventually(DEADLINE, "both replicas list it in their CRLs", || {
        listed(&r1, &chain[0]) && listed(&r2, &chain[0])
    })
    .await;
    // Both refuse the identity's requests while the denial stands.
    for r in [&r1, &r2] {
        eventually(DEADLINE, "the replica refuses the revoked identity", || {
            futures_lite_block(r.issue(3600)).is_err_and(|e| {
                e.contains("revoked: identity spiffe://cluster.local/ns/default/sa/frontend")
            })
        })
        .await;
    }
    let out = w.zident(&["ca", "revocations"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&serial) && text.contains("reissue denied: identity"),
        "{text}"
    );

    // An unknown serial changes nothing.
    let out = w.zident(&["ca", "revoke", "--serial", "abcdef"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no valid certificate with serial abcdef")
    );

    // A replica's data dir is its working copy of the datastore: a change made there alone is
    // refused, naming the datastore (the class: revoke, allow-reissue, rotate).
    for args in [
        &["ca", "revoke", "--serial", serial.as_str()][..],
        &["ca", "allow-reissue", "--node", "node-a"],
        &["ca", "rotate", "prepare"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&r1.dir)
            .env_remove("ZIDENT_DATASTORE")
            .output()
            .expect("zident runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("working copy of a PostgreSQL datastore"),
            "{args:?}: {err}"
        );
    }

    let out = w.zident(&[
        "ca",
        "allow-reissue",
        "--identity",
        "spiffe://cluster.local/ns/default/sa/frontend",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for r in [&r1, &r2] {
        eventually(DEADLINE, "the replica issues again", || {
            futures_lite_block(r.issue(3600)).is_ok()
        })
        .await;
    }
}
