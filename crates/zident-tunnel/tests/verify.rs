//! SPIFFE mutual TLS over real sockets: the right identities pass; a wrong server identity, a
//! client from an untrusted root, and a client without a certificate are refused with a reason;
//! a trust bundle change applies to the next handshake.

mod common;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::{Ca, id};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zident_identity::{SpiffeId, TrustBundle, TrustDomain};
use zident_tunnel::{BundleSource, SpiffeClientVerifier, SpiffeServerVerifier, crypto_provider};

struct Bundle(Arc<RwLock<Arc<TrustBundle>>>);

impl Bundle {
    fn of(cas: &[&Ca]) -> Self {
        let b = Self(Arc::new(RwLock::new(Arc::new(TrustBundle::new(
            TrustDomain::new("cluster.local").unwrap(),
        )))));
        for ca in cas {
            b.add(ca);
        }
        b
    }
    fn add(&self, ca: &Ca) {
        let mut next = (**self.0.read().unwrap()).clone();
        next.add_root(ca.cert.der().clone()).unwrap();
        *self.0.write().unwrap() = Arc::new(next);
    }
    fn source(&self) -> BundleSource {
        let b = self.0.clone();
        Arc::new(move || b.read().unwrap().clone())
    }
}

/// A TLS 1.3 server presenting `svid`, requiring client SVIDs; answers "ok" to each connection
/// and reports the outcome of each handshake.
async fn server(
    svid: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    bundle: BundleSource,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>,
) {
    let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(bundle)))
        .with_single_cert(svid.0, svid.1)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let _ = tx.send(Ok(()));
                        let _ = tls.write_all(b"ok").await;
                        let _ = tls.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Connects presenting `svid` (or none), expecting one of `expected`; returns what the server
/// sent, or the error.
async fn client(
    addr: std::net::SocketAddr,
    svid: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    bundle: BundleSource,
    expected: Vec<SpiffeId>,
) -> Result<String, String> {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(bundle, expected)));
    let config = match svid {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("backend.invalid").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut out))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::test]
async fn both_ends_prove_their_identities() {
    let ca = Ca::new();
    let bundle = Bundle::of(&[&ca]);
    let (addr, mut results) =
        server(ca.rustls_svid("ns/default/sa/backend"), bundle.source()).await;

    let got = client(
        addr,
        Some(ca.rustls_svid("ns/default/sa/frontend")),
        bundle.source(),
        vec![id("ns/default/sa/backend")],
    )
    .await;
    assert_eq!(got.as_deref(), Ok("ok"));
    assert_eq!(results.recv().await.unwrap(), Ok(()));

    // The server is a valid SVID of another identity: the client refuses, saying which.
    let err = client(
        addr,
        Some(ca.rustls_svid("ns/default/sa/frontend")),
        bundle.source(),
        vec![id("ns/default/sa/payments")],
    )
    .await
    .unwrap_err();
    assert!(err.contains("IdentityMismatch"), "{err}");
    assert!(
        err.contains("spiffe://cluster.local/ns/default/sa/backend"),
        "{err}"
    );
    assert!(
        err.contains("spiffe://cluster.local/ns/default/sa/payments"),
        "{err}"
    );
}

#[tokio::test]
async fn untrusted_and_missing_client_certificates_are_refused() {
    let ca = Ca::new();
    let stranger = Ca::new();
    let bundle = Bundle::of(&[&ca]);
    let (addr, mut results) =
        server(ca.rustls_svid("ns/default/sa/backend"), bundle.source()).await;
    let expected = vec![id("ns/default/sa/backend")];

    // A client SVID from a root the server does not trust.
    let got = client(
        addr,
        Some(stranger.rustls_svid("ns/default/sa/frontend")),
        bundle.source(),
        expected.clone(),
    )
    .await;
    assert!(got.is_err(), "{got:?}");
    let server_side = results.recv().await.unwrap().unwrap_err();
    assert!(
        server_side.contains("invalid peer certificate"),
        "{server_side}"
    );

    // No client certificate at all.
    let got = client(addr, None, bundle.source(), expected.clone()).await;
    assert!(got.is_err(), "{got:?}");
    let server_side = results.recv().await.unwrap().unwrap_err();
    assert!(
        server_side.to_lowercase().contains("certificate"),
        "{server_side}"
    );

    // openssl s_client without -cert, a client nobody here wrote, is refused too.
    let mut s_client = std::process::Command::new("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-connect",
            &addr.to_string(),
            "-tls1_3",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // "Q" makes s_client quit once connected; the server's verdict is what is checked.
    let mut stdin = s_client.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"Q\n").unwrap();
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || s_client.wait_with_output().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("CONNECTED"),
        "s_client reached the server: {text}"
    );
    let server_side = results.recv().await.unwrap().unwrap_err();
    assert!(
        server_side.to_lowercase().contains("certificate"),
        "{server_side}"
    );

    // Trust the stranger's root: the next handshake passes, no restart needed.
    bundle.add(&stranger);
    let got = client(
        addr,
        Some(stranger.rustls_svid("ns/default/sa/frontend")),
        bundle.source(),
        expected,
    )
    .await;
    assert_eq!(got.as_deref(), Ok("ok"));
}

#[test]
fn a_peer_clock_somewhat_ahead_is_tolerated_and_beyond_it_skew_is_named() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::server::danger::ClientCertVerifier;
    let ca = Ca::new();
    let bundle = Bundle::of(&[&ca]);
    let cert = ca.issue("ns/default/sa/backend");
    // This node's clock 30 s behind the one that issued it: the leaf is "not valid yet".
    let behind = |secs: u64| {
        let t = cert.not_before - Duration::from_secs(secs);
        rustls_pki_types::UnixTime::since_unix_epoch(
            t.duration_since(std::time::UNIX_EPOCH).unwrap(),
        )
    };
    let name = ServerName::try_from("backend").unwrap();
    let server = SpiffeServerVerifier::new(bundle.source(), vec![id("ns/default/sa/backend")]);
    assert!(
        server
            .verify_server_cert(&cert.chain[0], &[], &name, &[], behind(30))
            .is_ok(),
        "within the default tolerance (the CA's 2-minute backdate)"
    );
    let client = SpiffeClientVerifier::new(bundle.source());
    assert!(
        client
            .verify_client_cert(&cert.chain[0], &[], behind(30))
            .is_ok()
    );

    // Beyond the tolerance: refused, and the refusal names the clocks, with by how much.
    for err in [
        server
            .with_skew_tolerance(Duration::from_secs(10))
            .verify_server_cert(&cert.chain[0], &[], &name, &[], behind(30))
            .unwrap_err(),
        SpiffeClientVerifier::new(bundle.source())
            .with_skew_tolerance(Duration::ZERO)
            .verify_client_cert(&cert.chain[0], &[], behind(30))
            .unwrap_err(),
    ] {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        let (reason, detail) = zident_tunnel::tls_failure(&io);
        assert_eq!(reason, zident_tunnel::Reason::CertificateExpired);
        assert!(
            detail.contains("not valid for another 30 s") && detail.contains("clocks disagree"),
            "{detail}"
        );
    }
}
