//! The whole path with a client nobody here wrote: `curl --socks5` from a workload address,
//! through outbound (SOCKS5 → HBONE mTLS) and inbound (HBONE → workload), to an HTTP server;
//! and 8 MiB echoed both ways at once over HBONE and to a destination outside the mesh.
//! Refusals: an unknown source, a destination whose server presents another identity, and a
//! policy DENY.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use common::{Ca, Certs, Locals, authorizer, curl, http_workload, id};
use zident_tunnel::Target;
use zident_tunnel::{Direction, Observer, Reason};
use zident_tunnel::{Directory, NoRoute, Outbound, Route, Source};
use zident_tunnel::{Inbound, LocalTarget, Serves};

struct Mesh {
    http: SocketAddr,
    inbound: SocketAddr,
    /// An echo workload behind the inbound (HBONE).
    echo: SocketAddr,
    /// An echo destination outside the mesh (`protocol: TCP`: no HBONE, copied as is).
    plain: SocketAddr,
}

impl Directory for Mesh {
    fn source(&self, ip: IpAddr) -> Option<Source> {
        (ip == IpAddr::from([127, 0, 0, 2])).then(|| Source::of(id("ns/default/sa/frontend")))
    }
    fn route(&self, target: &Target) -> Result<Route, NoRoute> {
        let to_backend = |expected| Route {
            target: self.http,
            hbone: Some(self.inbound),
            expected,
        };
        match target {
            Target::Addr(a) if *a == self.http || *a == self.echo => Ok(Route {
                target: *a,
                ..to_backend(vec![id("ns/default/sa/backend")])
            }),
            Target::Addr(a) if *a == self.plain => Ok(Route {
                target: self.plain,
                hbone: None,
                expected: vec![],
            }),
            Target::Host(h, 80) if h == "backend.default.svc.cluster.local" => {
                Ok(to_backend(vec![id("ns/default/sa/backend")]))
            }
            // A destination whose identity is payments, but whose address is backend's.
            Target::Host(h, 80) if h == "payments.default.svc.cluster.local" => {
                Ok(to_backend(vec![id("ns/default/sa/payments")]))
            }
            _ => Err(NoRoute::Unknown),
        }
    }
}

/// Everything the tunnel logs in this test.
fn logs() {
    common::capture_logs("zident::tunnel=info");
}

async fn logged(needle: &str) {
    common::logged(needle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_socks5_and_hbone_reaches_the_workload() {
    logs();
    let ca = Arc::new(Ca::new());
    let bundle = ca.bundle();
    let observer = Observer::new();
    let backend_cert = ca.issue("ns/default/sa/backend");
    let frontend_cert = ca.issue("ns/default/sa/frontend");

    // Workload B and its node's inbound, on B's address.
    let http = http_workload(SocketAddr::from(([127, 0, 0, 3], 0)), "hello from backend").await;
    let echo = common::echo(SocketAddr::from(([127, 0, 0, 3], 0))).await;
    let plain = common::echo(SocketAddr::from(([127, 0, 0, 5], 0))).await;
    let locals = Arc::new(Locals::new(
        vec![(
            IpAddr::from([127, 0, 0, 3]),
            LocalTarget {
                id: id("ns/default/sa/backend"),
                namespace: "default".into(),
                policies: vec![],
            },
        )],
        authorizer("  []\n"),
    ));
    let inbound = Arc::new(Inbound::new(
        Serves::Identity(id("ns/default/sa/backend")),
        Arc::new(Certs::new(
            vec![(id("ns/default/sa/backend"), backend_cert)],
            bundle.clone(),
        )),
        locals.clone(),
        observer.clone(),
    ));
    let inbound_listener = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let inbound_addr = inbound_listener.local_addr().unwrap();
    tokio::spawn(inbound.serve(inbound_listener));

    // Node A's outbound.
    let outbound = Arc::new(Outbound::new(
        Arc::new(Certs::new(
            vec![(id("ns/default/sa/frontend"), frontend_cert)],
            bundle.clone(),
        )),
        Arc::new(Mesh {
            http,
            inbound: inbound_addr,
            echo,
            plain,
        }),
        observer.clone(),
    ));
    let socks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socks_addr = socks.local_addr().unwrap();
    tokio::spawn(outbound.serve_socks5(socks));
    let proxy = socks_addr.to_string();

    // From workload A's address, by IP and by service name; twice, over the pooled connection.
    for _ in 0..2 {
        let (ok, out) = curl(vec![
            "--interface".into(),
            "127.0.0.2".into(),
            "--socks5".into(),
            proxy.clone(),
            format!("http://{http}/"),
        ])
        .await;
        assert!(ok, "{out}");
        assert_eq!(out, "hello from backend");
    }
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.2".into(),
        "--socks5-hostname".into(),
        proxy.clone(),
        "http://backend.default.svc.cluster.local/".into(),
    ])
    .await;
    assert!(ok, "{out}");
    assert_eq!(out, "hello from backend");

    // Megabytes both ways at once, byte for byte, through every buffer size the pumps step
    // through: over HBONE (frames gathered into one write on the receiving side) and to a
    // destination outside the mesh (copied as is).
    for (what, target) in [("HBONE", echo), ("plain TCP", plain)] {
        let stream = common::socks_connect(socks_addr, [127, 0, 0, 2], target)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(echo_through(stream, 8 << 20).await, Ok(()), "{what}");
    }

    // Both ends logged the tunnel with both principals.
    logged("inbound connection").await;
    logged("src=spiffe://cluster.local/ns/default/sa/frontend dst=spiffe://cluster.local/ns/default/sa/backend").await;
    logged("outbound connection").await;

    // An unknown source address is refused.
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.9".into(),
        "--socks5".into(),
        proxy.clone(),
        format!("http://{http}/"),
    ])
    .await;
    assert!(!ok, "{out}");
    logged("reason=unknown_source").await;
    assert_eq!(
        observer.failure_count(Direction::Outbound, Reason::UnknownSource),
        1
    );

    // The server presents backend's SVID where payments was expected: refused.
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.2".into(),
        "--socks5-hostname".into(),
        proxy.clone(),
        "http://payments.default.svc.cluster.local/".into(),
    ])
    .await;
    assert!(!ok, "{out}");
    logged("reason=identity_mismatch").await;
    logged("the server presented spiffe://cluster.local/ns/default/sa/backend, but the destination's identities are").await;
    assert_eq!(
        observer.failure_count(Direction::Outbound, Reason::IdentityMismatch),
        1
    );

    // A source whose certificate the destination does not trust (another root): TLS 1.3
    // lets the client finish before the server checks it, so the client learns of the refusal
    // only from the server's alert. It says so, with the likely cause.
    let other = Ca::new();
    let mut trusting_both = zident_identity::TrustBundle::new(
        zident_identity::TrustDomain::new("cluster.local").unwrap(),
    );
    trusting_both.add_root(ca.cert.der().clone()).unwrap();
    trusting_both.add_root(other.cert.der().clone()).unwrap();
    let trusting_both = Arc::new(trusting_both);
    let foreign = Arc::new(Outbound::new(
        Arc::new(Certs::new(
            vec![(
                id("ns/default/sa/frontend"),
                other.issue("ns/default/sa/frontend"),
            )],
            trusting_both.clone(),
        )),
        Arc::new(Mesh {
            http,
            inbound: inbound_addr,
            echo,
            plain,
        }),
        observer.clone(),
    ));
    let foreign_socks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let foreign_proxy = foreign_socks.local_addr().unwrap().to_string();
    tokio::spawn(foreign.serve_socks5(foreign_socks));
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.2".into(),
        "--socks5".into(),
        foreign_proxy,
        format!("http://{http}/"),
    ])
    .await;
    assert!(!ok, "{out}");
    logged("the peer does not trust this workload's certificate").await;
    assert_eq!(
        observer.failure_count(Direction::Outbound, Reason::UntrustedRoot),
        1
    );

    // A DENY policy at the destination: refused (401 on the wire, "not allowed" to SOCKS).
    locals.set_policies(authorizer(
        "- name: no-frontend\n  namespace: default\n  scope: Namespace\n  action: Deny\n  \
rules:\n  - - - principals: [{Exact: \"cluster.local/ns/default/sa/frontend\"}]\n",
    ));
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.2".into(),
        "--socks5".into(),
        proxy,
        format!("http://{http}/"),
    ])
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("SOCKS5"), "{out}");
    logged("reason=policy_denied").await;
    // Both ends count it: the destination denied it, the source was refused for it.
    assert_eq!(
        observer.failure_count(Direction::Inbound, Reason::PolicyDenied),
        1
    );
    assert_eq!(
        observer.failure_count(Direction::Outbound, Reason::PolicyDenied),
        1
    );
    // Every tunnel that carried bytes has closed and left the table.
    assert!(observer.open_tunnels().is_empty());
}

/// Writes `len` pseudo-random bytes into `stream` while reading them back, then half-closes:
/// the echo must return every byte in order and then the end of the stream.
async fn echo_through(stream: tokio::net::TcpStream, len: usize) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sent = zident_testkit::pseudo_random(len);
    let (mut r, mut w) = stream.into_split();
    let payload = sent.clone();
    let writer = tokio::spawn(async move {
        // Uneven writes, so reads on the far side do not line up with them.
        for chunk in payload.chunks(100_003) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await
    });
    let mut received = Vec::with_capacity(len);
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        r.read_to_end(&mut received),
    )
    .await
    .map_err(|_| format!("{} of {len} bytes came back within 60 s", received.len()))?
    .map_err(|e| e.to_string())?;
    writer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if received != sent {
        return Err(format!(
            "{} bytes came back for {len}, or they differ",
            received.len()
        ));
    }
    Ok(())
}
