//! The SPIFFE Workload API and SVID files, checked with clients nobody here wrote: the `spiffe`
//! crate's Workload API client and the openssl command line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use tonic::codegen::tokio_stream::StreamExt;
use zident_agent::workload_api::DeliveryConfig;
use zident_identity::pem::certs_from_pem;
use zident_identity::{CertificateDer, TrustBundle, TrustDomain, verify_svid};

fn socket(dir: &Path, ns: &str, name: &str) -> PathBuf {
    dir.join(ns).join(name).join("agent.sock")
}

async fn spiffe_client(path: &Path) -> spiffe::WorkloadApiClient {
    let endpoint = format!("unix:{}", path.display());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match spiffe::WorkloadApiClient::connect_to(&endpoint).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "cannot connect to {endpoint}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn td() -> spiffe::TrustDomain {
    spiffe::TrustDomain::new("cluster.local").unwrap()
}

fn our_bundle(roots: &[Vec<u8>]) -> TrustBundle {
    let mut b = TrustBundle::new(TrustDomain::new("cluster.local").unwrap());
    for r in roots {
        b.add_root(CertificateDer::from(r.clone())).unwrap();
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_client_gets_its_svid_and_follows_rotations_and_bundle_changes() {
    logs();
    let world = World::new(0).await;
    let (agent, sockets) = agent_with_sockets(&world, Duration::from_secs(4)).await;
    let fe_socket = socket(&sockets, "default", "frontend");
    let client = spiffe_client(&fe_socket).await;

    // The SVID is the workload's, and its chain verifies with the fetched bundle.
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://cluster.local/ns/default/sa/frontend"
    );
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let roots: Vec<Vec<u8>> = bundles
        .get(&td())
        .expect("a bundle for cluster.local")
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let chain: Vec<CertificateDer> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    verify_svid(&chain, &our_bundle(&roots), SystemTime::now()).unwrap();

    // The stream delivers a new SVID on each rotation.
    let mut stream = client.stream_x509_svids().await.unwrap();
    let mut serials = Vec::new();
    while serials.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("a message within 30 s")
            .expect("the stream stays open")
            .expect("a valid SVID");
        let der = next.cert_chain()[0].as_bytes().to_vec();
        let info = zident_identity::check_leaf(&der).unwrap();
        if serials.last() != Some(&info.serial_hex) {
            serials.push(info.serial_hex);
        }
    }
    assert_eq!(
        serials.len(),
        3,
        "three distinct SVIDs across two rotations"
    );

    // The bundle stream delivers an update when the trust bundle changes: add an extra root
    // through the mesh file's caCertificates.
    let mut bundle_stream = client.stream_x509_bundles().await.unwrap();
    let first = bundle_stream.next().await.unwrap().unwrap();
    assert_eq!(first.get(&td()).unwrap().authorities().len(), 1);
    let extra = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut extra = extra;
    extra.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let extra_pem = extra
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    let indented: String = extra_pem.lines().map(|l| format!("    {l}\n")).collect();
    let mesh = mesh(0).replace(
        "workloads:",
        &format!("caCertificates:\n- |\n{indented}workloads:"),
    );
    std::fs::write(world.mesh_path(), mesh).unwrap();
    let updated = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let set = bundle_stream.next().await.unwrap().unwrap();
            if set.get(&td()).unwrap().authorities().len() == 2 {
                return set;
            }
        }
    })
    .await
    .expect("the bundle update arrives");
    assert_eq!(updated.get(&td()).unwrap().authorities().len(), 2);
    // The metrics count that one change (not the initial load) and the two roots.
    let (_, metrics) = curl(&format!("http://{}/metrics", agent.metrics_addr.unwrap()));
    assert!(
        metrics.contains("zident_trust_bundle_changes_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zident_trust_bundle_roots 2\n"),
        "{metrics}"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workload_gets_only_its_own_identity_and_the_header_is_required() {
    logs();
    let world = World::new(0).await;
    let sockets = world.dir.path().join("wl");
    let mut config = world.agent_config(Duration::from_secs(3600));
    config.delivery.socket_dir = Some(sockets.clone());
    let agent = start_agent(config).await;

    let fe = spiffe_client(&socket(&sockets, "default", "frontend")).await;
    let be = spiffe_client(&socket(&sockets, "default", "backend")).await;
    let fe2 = spiffe_client(&socket(&sockets, "default", "frontend-2")).await;
    let ids = [
        fe.fetch_x509_svid().await.unwrap().spiffe_id().to_string(),
        be.fetch_x509_svid().await.unwrap().spiffe_id().to_string(),
        fe2.fetch_x509_svid().await.unwrap().spiffe_id().to_string(),
    ];
    assert_eq!(
        ids,
        [
            "spiffe://cluster.local/ns/default/sa/frontend",
            "spiffe://cluster.local/ns/default/sa/backend",
            "spiffe://cluster.local/ns/default/sa/frontend",
        ]
    );
    // node-b's workload has no socket here.
    assert!(!socket(&sockets, "default", "other").exists());
    // Directory and socket are private.
    use std::os::unix::fs::PermissionsExt;
    let path = socket(&sockets, "default", "frontend");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);

    // A request without the security header: InvalidArgument.
    let channel = tonic::transport::Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    let mut raw =
        zident_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let err = raw
        .fetch_x509svid(zident_proto::workload::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("workload.spiffe.io"),
        "{}",
        err.message()
    );
    // JWT: an audience is required, and the refusal says so.
    let mut req = tonic::Request::new(zident_proto::workload::JwtsvidRequest::default());
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let err = raw.fetch_jwtsvid(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("audience"), "{}", err.message());

    // The workload leaves: its stream ends cleanly and its socket disappears.
    let mut stream = be.stream_x509_svids().await.unwrap();
    stream.next().await.unwrap().unwrap();
    let edited = mesh(0).replace(
        "serviceAccount: backend, node: node-a",
        "serviceAccount: backend, node: node-b",
    );
    std::fs::write(world.mesh_path(), edited).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the stream ends when the workload leaves");
    assert!(end.is_none(), "a clean end of stream, got {end:?}");
    eventually(Duration::from_secs(10), "the socket is removed", || {
        !socket(&sockets, "default", "backend").exists()
    })
    .await;
    drop(agent);
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_files_verify_with_openssl_after_each_rotation() {
    logs();
    let world = World::new(0).await;
    let files = world.dir.path().join("svids");
    let log = world.dir.path().join("rotations.log");
    let mut config = world.agent_config(Duration::from_secs(4));
    config.delivery = DeliveryConfig {
        socket_dir: None,
        svid_dir: Some(files.clone()),
        svid_command: Some(format!(
            "echo \"$ZIDENT_SPIFFE_ID $ZIDENT_SERIAL\" >> {}",
            log.display()
        )),
        ..Default::default()
    };
    let agent = start_agent(config).await;
    let dir = files.join("default/frontend");

    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} versions seen",
            seen.len()
        );
        let Ok(pem) = std::fs::read(dir.join("svid.pem")) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let serial = zident_identity::check_leaf(&certs_from_pem(&pem).unwrap()[0])
            .unwrap()
            .serial_hex;
        if seen.last() == Some(&serial) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // openssl verifies the chain and confirms that key and certificate match.
        let out = openssl(&dir, &["verify", "-CAfile", "bundle.pem", "svid.pem"]);
        assert!(out.contains("svid.pem: OK"), "{out}");
        let cert_key = openssl(&dir, &["x509", "-in", "svid.pem", "-noout", "-pubkey"]);
        let key_pub = openssl(&dir, &["pkey", "-in", "svid_key.pem", "-pubout"]);
        assert_eq!(cert_key, key_pub, "key and certificate match");
        seen.push(serial);
    }
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(dir.join("svid_key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    // The post-rotation command ran after the writes, with the identity and serial.
    eventually(
        Duration::from_secs(10),
        "the command logged each version",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            seen.iter().all(|s| {
                text.contains(&format!(
                    "spiffe://cluster.local/ns/default/sa/frontend {s}"
                ))
            })
        },
    )
    .await;
    drop(agent);
}

/// Whatever is in the way of an SVID file is moved aside and the file served, at the first
/// write and at every renewal after: a directory, a stray file, a link to somewhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_files_heal_whatever_is_in_their_way() {
    logs();
    let world = World::new(0).await;
    let files = world.dir.path().join("svids");
    let dir = files.join("default/frontend");
    std::fs::create_dir_all(dir.join("svid.pem")).unwrap();
    std::fs::write(dir.join("svid.pem/kept.txt"), "someone's data").unwrap();
    std::fs::write(dir.join("svid_key.pem"), "not a key").unwrap();
    std::os::unix::fs::symlink("/nonexistent/bundle.pem", dir.join("bundle.pem")).unwrap();
    let mut config = world.agent_config(Duration::from_secs(4));
    config.delivery = DeliveryConfig {
        socket_dir: None,
        svid_dir: Some(files.clone()),
        ..Default::default()
    };
    let agent = start_agent(config).await;

    let served = |dir: &Path| -> Option<String> {
        let pem = std::fs::read(dir.join("svid.pem")).ok()?;
        let cert = certs_from_pem(&pem).ok()?.into_iter().next()?;
        let serial = zident_identity::check_leaf(&cert).ok()?.serial_hex;
        // The openssl command line, which must accept what is served now.
        let run = |args: &[&str]| {
            Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let verified = run(&["verify", "-CAfile", "bundle.pem", "svid.pem"])?;
        let cert_key = run(&["x509", "-in", "svid.pem", "-noout", "-pubkey"])?;
        let key_pub = run(&["pkey", "-in", "svid_key.pem", "-pubout"])?;
        (verified.contains("svid.pem: OK") && cert_key == key_pub).then_some(serial)
    };
    let first = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = served(&dir) {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the SVID files were never served over what was in the way"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Nothing was deleted: each thing in the way is kept beside, and said.
    assert_eq!(
        std::fs::read_to_string(dir.join(".svid.pem.displaced/kept.txt")).unwrap(),
        "someone's data"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(".svid_key.pem.displaced")).unwrap(),
        "not a key"
    );
    assert_eq!(
        std::fs::read_link(dir.join(".bundle.pem.displaced")).unwrap(),
        Path::new("/nonexistent/bundle.pem")
    );
    zident_testkit::logged("a directory was in the way of an SVID file").await;
    zident_testkit::logged("a link to somewhere else was in the way of an SVID file").await;

    // Broken again after the first write: the next renewal repairs it.
    std::fs::remove_file(dir.join("svid.pem")).unwrap();
    std::fs::create_dir(dir.join("svid.pem")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = served(&dir)
            && s != first
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewal after {first} did not repair svid.pem"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        std::fs::symlink_metadata(dir.join("svid.pem"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    drop(agent);
}
