//! `zident ca` end to end: a real CA on loopback, real TLS and gRPC, and verdicts from
//! verifiers nobody here wrote (the openssl command line, the `spiffe` crate, curl).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use tonic::Code;
use x509_parser::prelude::*;
use zident_ca::RunningCa;
use zident_identity::pem::certs_from_pem;
use zident_identity::{TrustBundle, TrustDomain, WorkloadKey, verify_svid};

fn leaf_der(chain: &[String]) -> Vec<u8> {
    certs_from_pem(chain[0].as_bytes()).unwrap()[0].to_vec()
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificate_passes_openssl_spiffe_and_our_verifier() {
    let f = Fixture::start().await;
    let mut client = f.client().await;
    let before = secs(SystemTime::now());
    let (key, chain) = issue_frontend(&mut client, 3600).await;
    let after = secs(SystemTime::now());

    // Istio's shape: [leaf, root bundle]; the last element is what root-cert.pem holds.
    assert_eq!(chain.len(), 2);
    let root_pem = std::fs::read_to_string(&f.ca.root_cert_path).unwrap();
    assert_eq!(chain[1], root_pem);

    // openssl verify, as an operator would.
    let leaf_path = f.dir.path().join("leaf.pem");
    std::fs::write(&leaf_path, &chain[0]).unwrap();
    let out = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&f.ca.root_cert_path)
        .arg(&leaf_path));
    assert!(out.contains(": OK"), "{out}");

    // The spiffe crate's X509-SVID parser.
    let der: Vec<u8> = chain
        .iter()
        .flat_map(|p| certs_from_pem(p.as_bytes()).unwrap())
        .flat_map(|c| c.to_vec())
        .collect();
    let svid = spiffe::X509Svid::parse_from_der(&der, &key.pkcs8_der()).unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://cluster.local/ns/default/sa/frontend"
    );

    // Our own verifier against the published bundle.
    let bundle = TrustBundle::from_pem(TrustDomain::new(TD).unwrap(), root_pem.as_bytes()).unwrap();
    let leaf = zident_identity::CertificateDer::from(leaf_der(&chain));
    let info = verify_svid(std::slice::from_ref(&leaf), &bundle, SystemTime::now()).unwrap();
    assert_eq!(
        info.id.as_str(),
        "spiffe://cluster.local/ns/default/sa/frontend"
    );

    // Every field of the certificate profile (`zident_identity::profile`).
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(cert.subject().to_string(), "O=cluster.local");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "URI SAN must be critical");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(
            "spiffe://cluster.local/ns/default/sa/frontend"
        )]
    );
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature() && ku.value.key_encipherment());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let serial = cert.raw_serial();
    let significant = serial.iter().skip_while(|b| **b == 0).count();
    assert!(
        (15..=16).contains(&significant),
        "128-bit serial, got {serial:02x?}"
    );
    assert_eq!(cert.public_key().raw, key.public_key_spki_der().as_slice());
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert!(
        (before - 120..=after - 120).contains(&nb),
        "notBefore backdated 2 minutes: {nb}"
    );
    assert!(
        (before + 3600..=after + 3600).contains(&na),
        "notAfter = now + TTL: {na}"
    );

    // A short TTL is backdated by a tenth of it, not two minutes.
    let before = secs(SystemTime::now());
    let (_, chain) = issue_frontend(&mut client, 10).await;
    let after = secs(SystemTime::now());
    let short_der = leaf_der(&chain);
    let (_, cert) = X509Certificate::from_der(&short_der).unwrap();
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert!(
        (before - 1..=after - 1).contains(&nb),
        "backdate of 1s for a 10s TTL: {nb}"
    );
    assert!((before + 10..=after + 10).contains(&na));

    // Zero TTL means the CA default (24h); serials differ between certificates.
    let (_, chain2) = issue_frontend(&mut client, 0).await;
    let der2 = leaf_der(&chain2);
    let (_, c2) = X509Certificate::from_der(&der2).unwrap();
    let life = c2.validity().not_after.timestamp() - c2.validity().not_before.timestamp();
    assert_eq!(life, 24 * 3600 + 120);
    assert_ne!(c2.raw_serial(), cert.raw_serial());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_root_and_its_key_stays_private() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("node-b.token"), NODE_B_TOKEN).unwrap();
    let ca = start_ca(config(dir.path())).await;
    let root_before = std::fs::read(&ca.root_cert_path).unwrap();
    let mut grpc = client(&ca).await;
    let (_, chain) = issue_frontend(&mut grpc, 600).await;
    drop(grpc);
    drop(ca);

    let key_mode = std::fs::metadata(dir.path().join("ca/ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let ca = start_ca(config(dir.path())).await;
    assert_eq!(std::fs::read(&ca.root_cert_path).unwrap(), root_before);
    // A second CA on the same data dir is refused, and the first one goes on serving.
    let second = match RunningCa::start(config(dir.path())).await {
        Ok(_) => panic!("a second CA started on the same data dir"),
        Err(e) => e.to_string(),
    };
    assert!(
        second.contains("is in use by another zident CA")
            && second.contains(&format!("(pid {})", std::process::id())),
        "{second}"
    );
    assert_eq!(std::fs::read(&ca.root_cert_path).unwrap(), root_before);
    // A certificate from before the restart still verifies against the bundle after it.
    let leaf_path = dir.path().join("old-leaf.pem");
    std::fs::write(&leaf_path, &chain[0]).unwrap();
    run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca.root_cert_path)
        .arg(&leaf_path));

    // A key whose certificate was lost (crash during first start) gets it re-made.
    drop(ca);
    std::fs::remove_file(dir.path().join("ca/ca-cert.pem")).unwrap();
    let ca = start_ca(config(dir.path())).await;
    let mut grpc = client(&ca).await;
    issue_frontend(&mut grpc, 600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_get_only_what_the_mesh_file_allows() {
    let f = Fixture::start().await;
    let mut client = f.client().await;
    let key = WorkloadKey::generate().unwrap();
    let fe = id("ns/default/sa/frontend");
    let be = id("ns/default/sa/backend");
    let gw = id("ns/default/sa/gateway");
    let csr = |id: &zident_identity::SpiffeId| key.csr_pem(id).unwrap();

    // Impersonating a workload of another node.
    expect_code(
        &mut client,
        request(csr(&be), 600, Some(NODE_A_TOKEN), Some(be.as_str())),
        Code::PermissionDenied,
    )
    .await;
    // The node that does run it, with its token from a tokenFile.
    client
        .create_certificate(request(
            csr(&be),
            600,
            Some(NODE_B_TOKEN),
            Some(be.as_str()),
        ))
        .await
        .unwrap();
    // Impersonation naming one identity and a CSR for another.
    expect_code(
        &mut client,
        request(csr(&be), 600, Some(NODE_A_TOKEN), Some(fe.as_str())),
        Code::PermissionDenied,
    )
    .await;
    // No token; an unknown token; a malformed header.
    expect_code(
        &mut client,
        request(csr(&fe), 600, None, Some(fe.as_str())),
        Code::Unauthenticated,
    )
    .await;
    expect_code(
        &mut client,
        request(csr(&fe), 600, Some("not-a-token"), Some(fe.as_str())),
        Code::Unauthenticated,
    )
    .await;
    // An identity-bound token: its own identity only, and never impersonation.
    client
        .create_certificate(request(csr(&gw), 600, Some(GW_TOKEN), None))
        .await
        .unwrap();
    expect_code(
        &mut client,
        request(csr(&fe), 600, Some(GW_TOKEN), None),
        Code::PermissionDenied,
    )
    .await;
    expect_code(
        &mut client,
        request(csr(&fe), 600, Some(GW_TOKEN), Some(fe.as_str())),
        Code::PermissionDenied,
    )
    .await;
    // The caller learns nothing more than "permission denied".
    let msg = expect_code(
        &mut client,
        request(csr(&be), 600, Some(NODE_A_TOKEN), Some(be.as_str())),
        Code::PermissionDenied,
    )
    .await;
    assert_eq!(msg, "permission denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let f = Fixture::start().await;
    let mut client = f.client().await;
    let fe = id("ns/default/sa/frontend");
    let root_before = std::fs::read(&f.ca.root_cert_path).unwrap();

    let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    let msg = expect_code(
        &mut client,
        request(garbage.into(), 600, Some(NODE_A_TOKEN), Some(fe.as_str())),
        Code::InvalidArgument,
    )
    .await;
    assert!(msg.contains("CSR"), "{msg}");
    expect_code(
        &mut client,
        request(
            "not pem at all".into(),
            600,
            Some(NODE_A_TOKEN),
            Some(fe.as_str()),
        ),
        Code::InvalidArgument,
    )
    .await;

    // Two URI SANs.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = vec![
        rcgen::SanType::URI(fe.as_str().try_into().unwrap()),
        rcgen::SanType::URI(
            "spiffe://cluster.local/ns/default/sa/backend"
                .try_into()
                .unwrap(),
        ),
    ];
    let two = p.serialize_request(&key).unwrap().pem().unwrap();
    let msg = expect_code(
        &mut client,
        request(two, 600, Some(NODE_A_TOKEN), Some(fe.as_str())),
        Code::InvalidArgument,
    )
    .await;
    assert!(msg.contains("2 URI SANs"), "{msg}");

    // A foreign trust domain.
    let foreign =
        zident_identity::SpiffeId::new("spiffe://evil.example/ns/default/sa/frontend").unwrap();
    let wk = WorkloadKey::generate().unwrap();
    let msg = expect_code(
        &mut client,
        request(
            wk.csr_pem(&foreign).unwrap(),
            600,
            Some(NODE_A_TOKEN),
            Some(foreign.as_str()),
        ),
        Code::InvalidArgument,
    )
    .await;
    assert!(msg.contains("trust domain"), "{msg}");

    // A TTL above the maximum (90 days).
    let msg = expect_code(
        &mut client,
        request(
            wk.csr_pem(&fe).unwrap(),
            91 * 86400,
            Some(NODE_A_TOKEN),
            Some(fe.as_str()),
        ),
        Code::InvalidArgument,
    )
    .await;
    assert!(msg.contains("maximum"), "{msg}");

    // A 1 MiB request: refused by the gRPC size limit before any parsing.
    let huge = "A".repeat(1 << 20);
    let status = client
        .create_certificate(request(huge, 600, Some(NODE_A_TOKEN), Some(fe.as_str())))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
        ),
        "{status:?}"
    );
    // A CSR just over 16 KiB (inside the gRPC limit) is refused by the CSR rule.
    let big = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "A".repeat(17 * 1024)
    );
    let msg = expect_code(
        &mut client,
        request(big, 600, Some(NODE_A_TOKEN), Some(fe.as_str())),
        Code::InvalidArgument,
    )
    .await;
    assert!(msg.contains("at most 16384"), "{msg}");

    // The server is alive, the same root signs, and each refusal was counted.
    let (_, chain) = issue_frontend(&mut client, 600).await;
    assert_eq!(std::fs::read(&f.ca.root_cert_path).unwrap(), root_before);
    assert_eq!(chain[1].as_bytes(), root_before.as_slice());
    let metrics = curl(
        &format!("http://{}/metrics", f.ca.metrics_addr.unwrap()),
        None,
    );
    assert_eq!(
        metric(&metrics, "citadel_server_success_cert_issuance_count"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "citadel_server_csr_parsing_err_count"),
        Some(3.0)
    );
    assert_eq!(
        metric(&metrics, "citadel_server_id_extraction_err_count"),
        Some(2.0)
    );
    assert!(
        metrics.contains("zident_ca_requests_rejected_total{reason=\"ttl_too_long\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_all_succeed() {
    let f = Fixture::start().await;
    let fe = id("ns/default/sa/frontend");
    // CSRs first, so the requests really are concurrent.
    let csrs: Vec<String> = (0..200)
        .map(|_| WorkloadKey::generate().unwrap().csr_pem(&fe).unwrap())
        .collect();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(f.client().await);
    }
    let tasks: Vec<_> = csrs
        .into_iter()
        .enumerate()
        .map(|(i, csr)| {
            let mut c = clients[i % clients.len()].clone();
            let fe = fe.clone();
            tokio::spawn(async move {
                c.create_certificate(request(csr, 600, Some(NODE_A_TOKEN), Some(fe.as_str())))
                    .await
                    .map(|r| r.into_inner().cert_chain.len())
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("every request succeeds"), 2);
        ok += 1;
    }
    assert_eq!(ok, 200);
    let metrics = curl(
        &format!("http://{}/metrics", f.ca.metrics_addr.unwrap()),
        None,
    );
    assert_eq!(
        metric(&metrics, "citadel_server_success_cert_issuance_count"),
        Some(200.0)
    );
    assert_eq!(metric(&metrics, "citadel_server_csr_count"), Some(200.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_endpoint_and_metrics_over_the_wire() {
    let f = Fixture::start().await;
    let root = f.ca.root_cert_path.clone();
    let base = format!("https://localhost:{}", f.ca.addr.port());
    let json = curl(&format!("{base}/bundle"), Some(&root));
    let bundle = TrustBundle::from_jwks_json(TrustDomain::new(TD).unwrap(), &json).unwrap();
    assert_eq!(bundle.to_pem(), std::fs::read_to_string(&root).unwrap());
    assert_eq!(bundle.refresh_hint(), Some(Duration::from_secs(300)));
    assert!(bundle.sequence() >= 1);
    assert_eq!(
        curl(&format!("{base}/bundle.pem"), Some(&root)),
        bundle.to_pem()
    );

    // The serving certificate is TLS 1.3 only and names localhost.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &f.ca.addr.to_string(),
            "-tls1_2",
            "-servername",
            "localhost",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "TLS 1.2 must be refused");
    let out = run(Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &f.ca.addr.to_string(),
            "-servername",
            "localhost",
            "-alpn",
            "h2",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(&root)
        .stdin(std::process::Stdio::null()));
    assert!(
        out.contains("TLSv1.3") && out.contains("ALPN protocol: h2"),
        "{out}"
    );

    let metrics = curl(
        &format!("http://{}/metrics", f.ca.metrics_addr.unwrap()),
        None,
    );
    let root_expiry = metric(&metrics, "citadel_server_root_cert_expiry_timestamp").unwrap();
    let ten_years = secs(SystemTime::now()) as f64 + 3650.0 * 86400.0;
    assert!(
        (root_expiry - ten_years).abs() < 86400.0 * 2.0,
        "{root_expiry}"
    );
    for name in [
        "citadel_server_csr_count",
        "citadel_server_authentication_failure_count",
        "citadel_server_csr_parsing_err_count",
        "citadel_server_id_extraction_err_count",
        "citadel_server_csr_sign_err_count",
        "citadel_server_success_cert_issuance_count",
        "citadel_server_cert_chain_expiry_timestamp",
    ] {
        assert!(
            metric(&metrics, name).is_some(),
            "{name} missing:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_file_edits_apply_and_broken_edits_are_rejected() {
    let f = Fixture::start().await;
    let mut client = f.client().await;
    let be = id("ns/default/sa/backend");
    let key = WorkloadKey::generate().unwrap();
    let ask = |client: &mut zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient<_>| {
        let req = request(key.csr_pem(&be).unwrap(), 600, Some(NODE_A_TOKEN), Some(be.as_str()));
        let mut c = client.clone();
        async move { c.create_certificate(req).await.map(|_| ()) }
    };
    assert_eq!(
        ask(&mut client).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Move backend to node-a: node-a may now ask for it.
    let moved = MESH.replace(
        "serviceAccount: backend, node: node-b",
        "serviceAccount: backend, node: node-a",
    );
    std::fs::write(f.mesh_path(), &moved).unwrap();
    let metrics_url = format!("http://{}/metrics", f.ca.metrics_addr.unwrap());
    eventually(Duration::from_secs(20), "the edit is applied", || {
        curl(&metrics_url, None)
            .contains("zident_ca_config_reloads_total{source=\"mesh\",outcome=\"applied\"}")
    })
    .await;
    ask(&mut client).await.unwrap();

    // A typo is rejected and the last good file stays in force.
    std::fs::write(f.mesh_path(), moved.replace("workloads:", "workload:")).unwrap();
    eventually(
        Duration::from_secs(20),
        "the broken edit is rejected",
        || {
            curl(&metrics_url, None)
                .contains("zident_ca_config_reloads_total{source=\"mesh\",outcome=\"rejected\"}")
        },
    )
    .await;
    ask(&mut client).await.unwrap();
    issue_frontend(&mut client, 600).await;
}

/// What a client sends cannot make the CA write kilobytes of log per request: an
/// `ImpersonatedIdentity` of 10 KB that does not match its CSR, and a 10 KB `clusterid`
/// header, are logged cut short and say how much was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_text_in_the_log_is_cut_short() {
    zident_testkit::capture_logs("zident=info");
    let f = Fixture::start().await;
    let mut client = zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient::new(
        channel(&f.ca).await,
    );
    let key = WorkloadKey::generate().unwrap();
    let fe = id("ns/default/sa/frontend");
    let long = format!(
        "spiffe://cluster.local/ns/default/sa/{}",
        "x".repeat(10_000)
    );
    expect_code(
        &mut client,
        request(
            key.csr_pem(&fe).unwrap(),
            3600,
            Some(NODE_A_TOKEN),
            Some(&long),
        ),
        Code::PermissionDenied,
    )
    .await;
    let mut req = request(
        key.csr_pem(&fe).unwrap(),
        3600,
        Some(NODE_A_TOKEN),
        Some(fe.as_str()),
    );
    req.metadata_mut()
        .insert("clusterid", "c".repeat(10_000).parse().unwrap());
    client.create_certificate(req).await.expect("issued");
    zident_testkit::logged("ImpersonatedIdentity spiffe://cluster.local/ns/default/sa/xxx").await;
    zident_testkit::logged("cluster=cccc").await;
    let logs = zident_testkit::captured();
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_000, "a log line of {longest} bytes");
    assert!(logs.contains("more bytes)"), "cut short, and says so");
}
