//! Revocation benchmark, in two parts.
//!
//! 1. **Revoke to enforcement across many agents**: the real `zident ca` process and N agents
//!    (default 100, each a node of its own with one workload, in this process), each following
//!    the CA's CRLs. Each round revokes one agent's certificate on the CA's data dir (as
//!    `zident ca revoke` does), at another point of the one-second polls, and times until
//!    every agent holds a CRL that lists it: median,
//!    90th percentile and slowest agent per round, against the 2 s goal. Also the CA's CPU while
//!    N agents poll (one kept connection each, a 304 a second).
//! 2. **The CRL check per handshake**: full TLS 1.3 handshakes in memory through the tunnel's
//!    own client verifier, without a CRL and with one listing 10,000 serials, in paired rounds:
//!    handshakes per second and their ratio (goal: within 5%).
//!
//! Run: `cargo bench -p zident --bench revocation` (optionally `-- AGENTS`).

mod common;

/// The agent runs in this process: on the allocator the `zident` binary uses (jemalloc), as
/// users run it, not on the C library's malloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use zident_agent::{AgentConfig, CaClientConfig, RunningAgent, TokenSource};
use zident_identity::{CertificateProvider, SpiffeId};

const ROUNDS: usize = 5;
/// Rounds of the first part (revocations at ten points of the poll's second).
const SPREAD_ROUNDS: usize = 10;

fn main() {
    let agents = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(spread(agents));
    runtime.block_on(handshakes());
}

fn mesh(nodes: usize) -> String {
    let mut s = String::from("trustDomain: cluster.local\nnodes:\n");
    for i in 0..nodes {
        s.push_str(&format!("- {{name: node-{i}, token: token-{i}}}\n"));
    }
    s.push_str("workloads:\n");
    for i in 0..nodes {
        s.push_str(&format!(
            "- {{uid: w{i}, name: app-{i}, namespace: bench, serviceAccount: app-{i}, node: node-{i}}}\n"
        ));
    }
    s
}

fn id(i: usize) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://cluster.local/ns/bench/sa/app-{i}")).expect("id")
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn spread(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), mesh(n)).expect("mesh file");
    let ca = common::start_ca(dir.path());
    let port = ca.addr.rsplit(':').next().expect("port").to_owned();
    let mut agents: Vec<RunningAgent> = Vec::with_capacity(n);
    for i in 0..n {
        let client = CaClientConfig {
            address: format!("localhost:{port}"),
            root_ca: dir.path().join("ca/root-cert.pem"),
            token: TokenSource::Literal(format!("token-{i}")),
            cluster_id: "Kubernetes".into(),
            request_timeout: Duration::from_secs(30),
            poll_bundle: true,
        };
        let mut config =
            AgentConfig::new(format!("node-{i}"), dir.path().join("mesh.yaml"), client);
        config.secret_ttl = Duration::from_secs(3600);
        (
            config.admin_addr,
            config.metrics_addr,
            config.readiness_addr,
        ) = (None, None, None);
        agents.push(
            RunningAgent::start(config, None)
                .await
                .expect("agent starts"),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !agents
        .iter()
        .all(|a| a.manager.is_ready() && a.manager.trust().revocations().is_some())
    {
        assert!(
            Instant::now() < deadline,
            "the agents never all held a certificate and a CRL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The CA's CPU while the agents only poll.
    let cpu0 = common::process_cpu(ca.pid());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (common::process_cpu(ca.pid()) - cpu0).as_secs_f64() / 10.0;

    println!("revoke to enforcement, {n} agents (each a node polling /crl every second):");
    println!("round  median ms  p90 ms  slowest ms  vs 2 s goal (median)");
    let mut medians = Vec::new();
    for round in 0..SPREAD_ROUNDS {
        // Revocations come at any moment of the CA's and the agents' one-second polls: each
        // round starts at another point of the second (379 ms apart, modulo a second).
        tokio::time::sleep(Duration::from_millis((round as u64 * 379) % 1000)).await;
        let victim = round % n;
        let cert = agents[victim]
            .manager
            .current(&id(victim))
            .expect("the victim's certificate");
        let leaf = cert.chain[0].clone();
        let started = Instant::now();
        zident_ca::revocation::list::revoke(
            &dir.path().join("ca"),
            &zident_ca::revocation::Target::Serial(cert.serial_hex.clone()),
            zident_ca::revocation::Reason::KeyCompromise,
            false,
            SystemTime::now(),
        )
        .expect("revoke");
        let mut seen: Vec<Option<f64>> = vec![None; n];
        while seen.iter().any(Option::is_none) {
            for (i, a) in agents.iter().enumerate() {
                if seen[i].is_none()
                    && a.manager
                        .trust()
                        .revocations()
                        .is_some_and(|l| l.is_revoked(&leaf))
                {
                    seen[i] = Some(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not every agent enforced it"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let times: Vec<f64> = seen.into_iter().flatten().collect();
        let median = percentile(times.clone(), 0.5);
        println!(
            "{round:>5}  {median:>9.0}  {:>6.0}  {:>10.0}  {:.2}",
            percentile(times.clone(), 0.9),
            percentile(times, 1.0),
            median / 2000.0
        );
        medians.push(median);
        // Let the victim's agent renew before the next round.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "median of rounds: {:.0} ms ({:.2} of the 2 s goal); the CA's CPU while {n} agents poll: {:.1}% of a core",
        common::median(medians.clone()),
        common::median(medians) / 2000.0,
        idle_cpu * 100.0
    );
    drop(agents);
}

/// An in-memory TLS 1.3 handshake: a client presenting `client` to a server verifying it.
async fn handshake(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(a);
    let connect = tokio_rustls::TlsConnector::from(client).connect(
        rustls_pki_types::ServerName::try_from("backend").expect("name"),
        b,
    );
    let (s, c) = tokio::join!(accept, connect);
    let (mut s, mut c) = (s.expect("server side"), c.expect("client side"));
    // The client's certificate is checked once the server reads the client's Finished.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    c.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.expect("read");
}

async fn handshakes() {
    use rcgen::{
        CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
        RevokedCertParams, SerialNumber,
    };
    let now = SystemTime::now();
    let td: zident_identity::TrustDomain = "cluster.local".parse().expect("td");
    let root_key = KeyPair::generate().expect("key");
    let root =
        zident_identity::profile::generation_root_params(&td, 1, now, Duration::from_secs(86400))
            .self_signed(&root_key)
            .expect("root");
    let root_der = root.der().clone();
    let issuer = Issuer::from_ca_cert_der(&root_der, root_key).expect("issuer");
    let leaf = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let id = SpiffeId::new(&format!("spiffe://cluster.local/ns/bench/sa/{name}")).expect("id");
        let cert = zident_identity::profile::leaf_params(
            &id,
            now,
            Duration::from_secs(3600),
            now + Duration::from_secs(86400),
        )
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
        (
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            )),
        )
    };
    // 10,000 revoked serials, none of them the client's.
    let revoked: Vec<RevokedCertParams> = (0..10_000u64)
        .map(|i| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&(0x7000_0000_0000_0000u64 + i).to_be_bytes()),
            revocation_time: now.into(),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    let crl_pem = CertificateRevocationListParams {
        this_update: (now - Duration::from_secs(60)).into(),
        next_update: (now + Duration::from_secs(3600)).into(),
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .expect("crl")
    .pem()
    .expect("pem");
    let list = zident_identity::RevocationList::from_pem(
        &crl_pem,
        std::slice::from_ref(&root_der),
        now,
        None,
    )
    .expect("the CRL verifies");
    assert_eq!(list.count, 10_000);

    let mut bundle = zident_identity::TrustBundle::new(td);
    bundle.add_root(root_der.clone()).expect("root");
    let bundle = Arc::new(bundle);
    let source: zident_tunnel::BundleSource = {
        let b = bundle.clone();
        Arc::new(move || b.clone())
    };
    let (server_chain, server_key) = leaf("backend");
    let (client_chain, client_key) = leaf("frontend");
    let server = |revocations: Option<zident_tunnel::RevocationSource>| {
        let mut verifier = zident_tunnel::SpiffeClientVerifier::new(source.clone());
        if let Some(r) = revocations {
            verifier = verifier.with_revocations(r);
        }
        Arc::new(
            rustls::ServerConfig::builder_with_provider(zident_tunnel::crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls13")
                .with_client_cert_verifier(Arc::new(verifier))
                .with_single_cert(server_chain.clone(), server_key.clone_key())
                .expect("server config"),
        )
    };
    let (_tx, rx) = tokio::sync::watch::channel(Some(Arc::new(list)));
    let plain = server(None);
    let with_crl = server(Some(rx));
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(zident_tunnel::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(zident_tunnel::SpiffeServerVerifier::new(
                source.clone(),
                vec![SpiffeId::new("spiffe://cluster.local/ns/bench/sa/backend").expect("id")],
            )))
            .with_client_auth_cert(client_chain, client_key)
            .expect("client config"),
    );
    const PER_ROUND: usize = 2000;
    println!();
    println!(
        "TLS 1.3 handshakes through the tunnel's client verifier, in memory, {PER_ROUND} per round:"
    );
    println!("round  no CRL /s  10,000-serial CRL /s  ratio");
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let rate = |config: &Arc<rustls::ServerConfig>| {
            let (config, client) = (config.clone(), client.clone());
            async move {
                let started = Instant::now();
                for _ in 0..PER_ROUND {
                    handshake(config.clone(), client.clone()).await;
                }
                PER_ROUND as f64 / started.elapsed().as_secs_f64()
            }
        };
        // Paired, the order alternating from round to round.
        let (a, b) = if round % 2 == 0 {
            let a = rate(&plain).await;
            (a, rate(&with_crl).await)
        } else {
            let b = rate(&with_crl).await;
            (rate(&plain).await, b)
        };
        println!("{round:>5}  {a:>9.0}  {b:>20.0}  {:.3}", b / a);
        ratios.push(b / a);
    }
    println!(
        "median ratio (with CRL / without): {:.3} (goal: at least 0.95)",
        common::median(ratios)
    );
}
