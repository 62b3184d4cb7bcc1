//! Inbound HBONE over real TLS and HTTP/2 on loopback: CONNECT reaches the workload and bytes
//! flow both ways; policy, bad requests and an unreachable workload get their status codes; a
//! rotation changes the certificate of new connections while an open tunnel keeps working.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{Ca, Certs, Locals, authorizer, echo, id};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zident_tunnel::{Direction, Observer, Reason};
use zident_tunnel::{Inbound, LocalTarget, Serves};
use zident_tunnel::{SpiffeServerVerifier, crypto_provider};

struct Setup {
    inbound: SocketAddr,
    certs: Arc<Certs>,
    locals: Arc<Locals>,
    ca: Arc<Ca>,
    observer: Arc<Observer>,
}

async fn setup() -> Setup {
    let ca = Arc::new(Ca::new());
    let backend = id("ns/default/sa/backend");
    let certs = Arc::new(Certs::new(
        vec![(backend.clone(), ca.issue("ns/default/sa/backend"))],
        ca.bundle(),
    ));
    // This node's workloads: backend (this listener's identity) and payments.
    let target = |sa: &str| LocalTarget {
        id: id(&format!("ns/default/sa/{sa}")),
        namespace: "default".into(),
        policies: vec![],
    };
    let locals = Arc::new(Locals::new(
        vec![
            (IpAddr::from([127, 0, 0, 1]), target("backend")),
            (IpAddr::from([127, 0, 0, 8]), target("payments")),
        ],
        authorizer("  []\n"),
    ));
    let observer = Observer::new();
    let inbound = Arc::new(Inbound::new(
        Serves::Identity(backend),
        certs.clone(),
        locals.clone(),
        observer.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(inbound.serve(listener));
    Setup {
        inbound: addr,
        certs,
        locals,
        ca,
        observer,
    }
}

/// An HBONE client connection as the frontend workload: (sender, serial the server presented).
async fn connect(
    s: &Setup,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    String,
) {
    let client_cert = s.ca.issue("ns/default/sa/frontend");
    let bundle = s.ca.bundle();
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            Arc::new(move || bundle.clone()),
            vec![id("ns/default/sa/backend")],
        )))
        .with_client_auth_cert(
            client_cert.chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                client_cert.key().pkcs8_der().to_vec(),
            )),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.inbound).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("backend.hbone").unwrap(), tcp)
        .await
        .unwrap();
    let served: CertificateDer<'static> = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let serial = zident_identity::check_leaf(&served).unwrap().serial_hex;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    (sender, serial)
}

async fn connect_to(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    method: Method,
    authority: &str,
) -> hyper::Response<hyper::body::Incoming> {
    let req = Request::builder()
        .method(method)
        .uri(authority)
        .body(Empty::new())
        .unwrap();
    sender.send_request(req).await.unwrap()
}

async fn round_trip(resp: hyper::Response<hyper::body::Incoming>, message: &[u8]) -> Vec<u8> {
    let upgraded = hyper::upgrade::on(resp).await.expect("tunnel");
    let mut io = TokioIo::new(upgraded);
    io.write_all(message).await.unwrap();
    let mut buf = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

#[tokio::test]
async fn connect_reaches_the_workload_and_statuses_mean_what_they_say() {
    let s = setup().await;
    let workload = echo("127.0.0.1:0".parse().unwrap()).await;
    let (mut sender, _) = connect(&s).await;

    let resp = connect_to(&mut sender, Method::CONNECT, &workload.to_string()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        round_trip(resp, b"hello through hbone").await,
        b"hello through hbone"
    );

    // Not a workload on this node.
    let resp = connect_to(&mut sender, Method::CONNECT, "127.0.0.9:80").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // A workload of this node, but of another identity than the one this connection was
    // served as: the client checked backend's certificate, so it must not reach payments.
    let resp = connect_to(&mut sender, Method::CONNECT, "127.0.0.8:80").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Not CONNECT.
    let resp = connect_to(&mut sender, Method::GET, &format!("http://{workload}/")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // The HBONE port itself: a tunnel there would loop into this listener.
    let resp = connect_to(&mut sender, Method::CONNECT, &s.inbound.to_string()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // The workload does not answer.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let resp = connect_to(&mut sender, Method::CONNECT, &closed.to_string()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    // A DENY policy for the frontend: 401, applied to new requests at once.
    s.locals.set_policies(authorizer(
        "- name: no-frontend\n  namespace: default\n  scope: Namespace\n  action: Deny\n  \
rules:\n  - - - principals: [{Exact: \"cluster.local/ns/default/sa/frontend\"}]\n",
    ));
    let resp = connect_to(&mut sender, Method::CONNECT, &workload.to_string()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Each refusal was counted under its reason.
    let count = |r| s.observer.failure_count(Direction::Inbound, r);
    assert_eq!(count(Reason::BadRequest), 4);
    assert_eq!(count(Reason::UpstreamUnreachable), 1);
    assert_eq!(count(Reason::PolicyDenied), 1);
}

#[tokio::test]
async fn a_rotation_changes_new_connections_and_keeps_open_tunnels() {
    let s = setup().await;
    let workload = echo("127.0.0.1:0".parse().unwrap()).await;
    let (mut sender, first_serial) = connect(&s).await;
    let resp = connect_to(&mut sender, Method::CONNECT, &workload.to_string()).await;
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut open = TokioIo::new(upgraded);

    // Rotate the server's certificate.
    let rotated = s.ca.issue("ns/default/sa/backend");
    s.certs
        .replace(&id("ns/default/sa/backend"), rotated.clone());

    // The open tunnel still carries bytes.
    open.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");

    // A new connection is served with the new certificate.
    let (_, second_serial) = connect(&s).await;
    assert_ne!(first_serial, second_serial);
    assert_eq!(second_serial, rotated.serial_hex);
}
