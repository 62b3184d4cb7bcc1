//! Revocation reaching the tunnels: two agents and the real CA on loopback. A workload's
//! certificate revoked by serial on the CA's data dir: both agents put the CA's new CRL in
//! force within seconds (measured), the destination node closes the open tunnel of the revoked
//! certificate and refuses a new handshake with it (`revoked`), another workload's tunnel goes
//! on, and the revoked workload's agent replaces its certificate at once. A node revoked with
//! reissue denied: its certificates are refused by the other node, its agent cannot renew
//! (cause `revoked`) until the denial is lifted.

mod common;

use common::{agent, echo, free_port, socks_connect, start_ca, tunnel_observed, until};

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zident_ca::revocation::list::{allow_reissue, revoke};
use zident_ca::revocation::{Reason as CrlReason, Subject, Target};
use zident_identity::CertificateProvider;
use zident_tunnel::{Direction, Observer, Reason};

const FRONTEND: &str = "ns/default/sa/frontend";
const OTHER: &str = "ns/default/sa/other";

/// Writes `what` into `s` and reads it back (an echo workload), within 10 s.
async fn round_trip(s: &mut tokio::net::TcpStream, what: &[u8]) -> std::io::Result<()> {
    let work = async {
        s.write_all(what).await?;
        let mut back = vec![0u8; what.len()];
        s.read_exact(&mut back).await?;
        if back != what {
            return Err(std::io::Error::other("echoed something else"));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| std::io::Error::other("no echo within 10 s"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_and_its_open_tunnels_closed_within_seconds() {
    let hbone_port = free_port(&[[127, 0, 0, 22], [127, 0, 0, 23], [127, 0, 0, 24]]);
    let dir = tempfile::tempdir().unwrap();
    let mesh = "trustDomain: cluster.local\n\
nodes:\n- {name: node-a, token: ta}\n- {name: node-b, token: tb}\n\
workloads:\n\
- {uid: a, name: frontend, namespace: default, serviceAccount: frontend, node: node-a, workloadIps: ['127.0.0.22'], protocol: HBONE}\n\
- {uid: o, name: other, namespace: default, serviceAccount: other, node: node-a, workloadIps: ['127.0.0.24'], protocol: HBONE}\n\
- {uid: b, name: backend, namespace: default, serviceAccount: backend, node: node-b, workloadIps: ['127.0.0.23'], protocol: HBONE}\n";
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    let ca = start_ca(dir.path()).await;
    let data = dir.path().join("ca");
    let a = agent(dir.path(), &ca, "node-a", "ta", Duration::from_secs(3600)).await;
    let b = agent(dir.path(), &ca, "node-b", "tb", Duration::from_secs(3600)).await;
    let (oa, ob) = (Observer::new(), Observer::new());
    let ta = tunnel_observed(&a, "node-a", true, hbone_port, oa.clone()).await;
    let _tb = tunnel_observed(&b, "node-b", false, hbone_port, ob.clone()).await;
    let backend = echo(SocketAddr::from(([127, 0, 0, 23], 0))).await;
    let proxy = ta.socks5_addr.unwrap();

    // Both agents follow the CA's CRLs (none revoked yet).
    until("both agents hold the CA's first CRL", || {
        a.manager.trust().revocations().is_some() && b.manager.trust().revocations().is_some()
    })
    .await;

    // Two open tunnels to the backend: the frontend's and the other workload's.
    let mut from_frontend = socks_connect(proxy, [127, 0, 0, 22], backend)
        .await
        .unwrap();
    let mut from_other = socks_connect(proxy, [127, 0, 0, 24], backend)
        .await
        .unwrap();
    round_trip(&mut from_frontend, b"hello").await.unwrap();
    round_trip(&mut from_other, b"hello").await.unwrap();

    let frontend = common::id(FRONTEND);
    let old = a
        .manager
        .current(&frontend)
        .expect("the frontend's certificate");
    let started = Instant::now();
    let revoked = revoke(
        &data,
        &Target::Serial(old.serial_hex.clone()),
        CrlReason::KeyCompromise,
        false,
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(revoked.len(), 1);

    // Both nodes enforce it: B closes the frontend's open connection, A replaces the
    // certificate. (Printed: the time from revoke to enforcement on each node.)
    let (mut on_a, mut on_b) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_a.is_none() || on_b.is_none() {
        let listed = |m: &zident_agent::CertificateManager| {
            m.trust()
                .revocations()
                .is_some_and(|l| l.is_revoked(&old.chain[0]))
        };
        if on_a.is_none() && listed(&a.manager) {
            on_a = Some(started.elapsed());
        }
        if on_b.is_none() && listed(&b.manager) {
            on_b = Some(started.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "the CRL never reached both nodes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("revoke to enforcement: node-a {on_a:?}, node-b {on_b:?}");
    until("B closes the revoked certificate's connection", || {
        ob.failure_count(Direction::Inbound, Reason::Revoked) >= 1
    })
    .await;
    // The frontend's client, idle (it sends nothing), sees its tunnel end.
    let mut one = [0u8; 1];
    let ended = tokio::time::timeout(Duration::from_secs(10), from_frontend.read(&mut one)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "the revoked certificate's tunnel ends for its idle client: {ended:?}"
    );
    round_trip(&mut from_other, b"still here")
        .await
        .expect("another workload's tunnel is untouched");
    until("A replaces the revoked certificate", || {
        a.manager
            .current(&frontend)
            .is_some_and(|c| c.serial_hex != old.serial_hex)
    })
    .await;
    // A new tunnel from the frontend, with its new certificate.
    let mut again = socks_connect(proxy, [127, 0, 0, 22], backend)
        .await
        .unwrap();
    round_trip(&mut again, b"renewed").await.unwrap();

    // A handshake with the revoked certificate is refused by B, as `revoked`.
    let before = ob.failure_count(Direction::Inbound, Reason::Revoked);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(old.key().pkcs8_der().to_vec()));
    let refused = common::present_to(
        &a,
        old.chain.clone(),
        key,
        "ns/default/sa/backend",
        SocketAddr::from(([127, 0, 0, 23], hbone_port)),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    until("B counts the revoked handshake", || {
        ob.failure_count(Direction::Inbound, Reason::Revoked) > before
    })
    .await;

    // Node A revoked, reissue denied: its certificates are refused, it cannot renew.
    let other = common::id(OTHER);
    let other_old = a.manager.current(&other).expect("other's certificate");
    revoke(
        &data,
        &Target::Node("node-a".into()),
        CrlReason::KeyCompromise,
        true,
        SystemTime::now(),
    )
    .unwrap();
    until("B closes node-a's other connection", || {
        b.manager
            .trust()
            .revocations()
            .is_some_and(|l| l.is_revoked(&other_old.chain[0]))
    })
    .await;
    assert!(
        round_trip(&mut from_other, b"after").await.is_err(),
        "node-a's tunnels are closed"
    );
    until("node-a's identities are Unavailable, revoked", || {
        let snapshot = a.manager.snapshot();
        let s = snapshot.iter().find(|(id, _)| *id == other).map(|(_, s)| s.clone());
        s.is_some_and(|s| {
            matches!(&s.state, zident_agent::CertState::Unavailable(f) if f.cause == zident_identity::Cause::Revoked)
                && s.last_error.as_ref().is_some_and(|e| e.detail.contains("zident ca allow-reissue"))
        })
    })
    .await;
    assert!(
        socks_connect(proxy, [127, 0, 0, 24], backend)
            .await
            .is_err(),
        "no tunnel without a certificate (fail closed)"
    );

    // Lifted: node-a renews.
    assert!(allow_reissue(&data, &Subject::Node("node-a".into())).unwrap());
    until("node-a renews once allowed", || {
        a.manager
            .current(&other)
            .is_some_and(|c| c.serial_hex != other_old.serial_hex)
    })
    .await;
    let mut renewed = socks_connect(proxy, [127, 0, 0, 24], backend)
        .await
        .unwrap();
    round_trip(&mut renewed, b"back").await.unwrap();
}
