//! Plugged-in CA keys (Istio's `cacerts` layout), made with the openssl command line: the
//! three-level chain verifies with openssl, and a change of files is applied or, if broken,
//! refused while the old keys keep signing.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use zident_ca::{CaError, RunningCa};
use zident_identity::pem::certs_from_pem;
use zident_identity::{TrustBundle, TrustDomain, verify_svid};
use zident_testkit::{openssl, openssl_root};

async fn start(dir: &Path, cacerts: &Path) -> Result<RunningCa, CaError> {
    let mut c = config(dir);
    c.root_ca_dir = Some(cacerts.to_owned());
    RunningCa::start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_level_chain_verifies_with_openssl() {
    let (dir, cacerts) = plugged_in_fixture();
    let ca = start(dir.path(), &cacerts).await.unwrap();
    // The data dir publishes the operator's root as the trust bundle.
    assert_eq!(
        std::fs::read(&ca.root_cert_path).unwrap(),
        std::fs::read(cacerts.join("root-cert.pem")).unwrap()
    );
    let mut client = client(&ca).await;
    let (_, chain) = issue_frontend(&mut client, 600).await;
    assert_eq!(chain.len(), 3, "[leaf, intermediate, root]");
    assert_eq!(
        chain[1],
        std::fs::read_to_string(cacerts.join("ca-cert.pem")).unwrap()
    );
    assert!(issuer_cn(&chain[0]).contains("Intermediate One"));

    std::fs::write(dir.path().join("leaf.pem"), &chain[0]).unwrap();
    std::fs::write(dir.path().join("int.pem"), &chain[1]).unwrap();
    let out = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "cacerts/root-cert.pem",
            "-untrusted",
            "int.pem",
            "leaf.pem",
        ],
    );
    assert!(out.contains("leaf.pem: OK"), "{out}");

    // Our verifier agrees, with the intermediate from the chain.
    let bundle = TrustBundle::from_pem(
        TrustDomain::new(TD).unwrap(),
        &std::fs::read(cacerts.join("root-cert.pem")).unwrap(),
    )
    .unwrap();
    let ders: Vec<_> = chain[..2]
        .iter()
        .flat_map(|p| certs_from_pem(p.as_bytes()).unwrap())
        .collect();
    verify_svid(&ders, &bundle, SystemTime::now()).unwrap();
    // Without the intermediate, the leaf does not chain.
    assert!(verify_svid(&ders[..1], &bundle, SystemTime::now()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_are_applied_or_refused() {
    let (dir, cacerts) = plugged_in_fixture();
    let ca = start(dir.path(), &cacerts).await.unwrap();
    let mut client = client(&ca).await;
    let metrics_url = format!("http://{}/metrics", ca.metrics_addr.unwrap());

    // A key that does not match the certificate: refused, the old keys keep signing.
    let good_key = std::fs::read(cacerts.join("ca-key.pem")).unwrap();
    openssl(
        &cacerts,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "other-key.pem",
        ],
    );
    std::fs::copy(cacerts.join("other-key.pem"), cacerts.join("ca-key.pem")).unwrap();
    eventually(Duration::from_secs(20), "the broken key is refused", || {
        curl(&metrics_url, None)
            .contains("zident_ca_config_reloads_total{source=\"root_ca_dir\",outcome=\"rejected\"}")
    })
    .await;
    let data_dir = dir.path().join("ca");
    eventually(
        Duration::from_secs(20),
        "the refusal names the file",
        || refused_for(&data_dir, "does not match the private key in ca-key.pem"),
    )
    .await;
    let (_, chain) = issue_frontend(&mut client, 600).await;
    assert!(issuer_cn(&chain[0]).contains("Intermediate One"));
    std::fs::write(cacerts.join("ca-key.pem"), good_key).unwrap();

    // A new intermediate under the same root: applied; new certificates come from it.
    make_intermediate(&cacerts, "Intermediate Two");
    eventually(
        Duration::from_secs(20),
        "the new intermediate signs",
        || {
            curl(&metrics_url, None).contains(
                "zident_ca_config_reloads_total{source=\"root_ca_dir\",outcome=\"applied\"}",
            )
        },
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, chain) = issue_frontend(&mut client, 600).await;
        if issuer_cn(&chain[0]).contains("Intermediate Two") {
            assert_eq!(chain.len(), 3);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new intermediate never used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_files_stop_the_start_with_the_file_named() {
    let (dir, cacerts) = plugged_in_fixture();
    openssl(
        &cacerts,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca-key.pem",
        ],
    );
    let err = start(dir.path(), &cacerts)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("ca-cert.pem") && err.contains("does not match"),
        "{err}"
    );

    let (dir, cacerts) = plugged_in_fixture();
    // A root-cert.pem that did not sign the intermediate.
    openssl_root(&cacerts, "x.pem", "root-cert.pem", "/O=elsewhere", 10);
    let err = start(dir.path(), &cacerts)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("not signed by any root"), "{err}");
}

/// Reload counters of ROOT_CA_DIR, from the CA's metrics: (applied, rejected).
fn reloads(metrics_url: &str) -> (u64, u64) {
    let text = curl(metrics_url, None);
    let count = |outcome: &str| {
        let key = format!(
            "zident_ca_config_reloads_total{{source=\"root_ca_dir\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("applied"), count("rejected"))
}

fn copy_files(from: &Path, to: &Path, names: &[&str]) {
    for n in names {
        std::fs::copy(from.join(n), to.join(n)).unwrap();
    }
}

const SIGNING: [&str; 3] = ["ca-cert.pem", "ca-key.pem", "cert-chain.pem"];

/// Replacing the plugged-in files with a new root follows the phases: a one-shot swap is
/// refused, the new root is published first, signing moves once nodes had time to fetch it,
/// and the old root leaves once nothing it signed can be valid. Every early step is refused
/// with when it becomes safe, and the old keys keep signing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugged_in_root_goes_through_the_phases() {
    let (dir, cacerts) = plugged_in_fixture();
    let orig = dir.path().join("orig");
    let next = dir.path().join("next");
    std::fs::create_dir(&orig).unwrap();
    std::fs::create_dir(&next).unwrap();
    copy_files(
        &cacerts,
        &orig,
        &[
            "root-cert.pem",
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
        ],
    );
    make_root(&next);
    make_intermediate(&next, "Intermediate Next");
    let root1 = certs_from_pem(&std::fs::read(orig.join("root-cert.pem")).unwrap()).unwrap();
    let root2 = certs_from_pem(&std::fs::read(next.join("root-cert.pem")).unwrap()).unwrap();

    let mut c = config(dir.path());
    c.root_ca_dir = Some(cacerts.clone());
    c.refresh_hint = Duration::from_secs(1);
    c.ttl = zident_ca::TtlPolicy {
        default_ttl: Duration::from_secs(2),
        max_ttl: Duration::from_secs(2),
    };
    // Wide enough that the early steps below are refused even on a loaded machine.
    c.rotation.activate_delay = Some(Duration::from_secs(4));
    c.rotation.retire_margin = Duration::from_secs(3);
    let ca = RunningCa::start(c).await.unwrap();
    let mut client = client(&ca).await;
    let metrics_url = format!("http://{}/metrics", ca.metrics_addr.unwrap());
    let roots_now = || ca.state.authority().bundle().roots().to_vec();
    assert_eq!(ca.state.authority().bundle().sequence(), 1);

    // The outage operators fear: every file swapped to the new root at once. Refused.
    copy_files(
        &next,
        &cacerts,
        &[
            "root-cert.pem",
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
        ],
    );
    let data_dir = dir.path().join("ca");
    eventually(
        Duration::from_secs(20),
        "the one-shot swap is refused",
        || refused_for(&data_dir, "which is not in the bundle yet"),
    )
    .await;
    assert!(reloads(&metrics_url).1 >= 1);
    assert_eq!(roots_now(), root1);
    let (_, chain) = issue_frontend(&mut client, 2).await;
    assert!(issuer_cn(&chain[0]).contains("Intermediate One"));

    // prepare: the old signing files, both roots.
    copy_files(&orig, &cacerts, &SIGNING);
    let both = [
        std::fs::read_to_string(orig.join("root-cert.pem")).unwrap(),
        std::fs::read_to_string(next.join("root-cert.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(cacerts.join("root-cert.pem"), both).unwrap();
    eventually(Duration::from_secs(20), "the new root is published", || {
        roots_now().len() == 2
    })
    .await;
    assert_eq!(ca.state.authority().bundle().sequence(), 2);
    let published = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).unwrap();
    assert_eq!(published.matches("BEGIN CERTIFICATE").count(), 2);

    // activate: the new signing files, written again until the CA takes them; the first
    // attempt comes too early and is refused.
    let rejected = reloads(&metrics_url).1;
    copy_files(&next, &cacerts, &SIGNING);
    eventually(
        Duration::from_secs(20),
        "an early activation is refused",
        || {
            reloads(&metrics_url).1 > rejected
                && refused_for(&data_dir, "too early to sign under root")
        },
    )
    .await;
    let (_, chain) = issue_frontend(&mut client, 2).await;
    assert!(issuer_cn(&chain[0]).contains("Intermediate One"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, chain) = issue_frontend(&mut client, 2).await;
        if issuer_cn(&chain[0]).contains("Intermediate Next") {
            // It chains to the new root alone.
            let mut only_new = TrustBundle::new(TrustDomain::new("cluster.local").unwrap());
            only_new.add_root(root2[0].clone()).unwrap();
            let leaf = certs_from_pem(chain.concat().as_bytes()).unwrap();
            verify_svid(&leaf[..2], &only_new, SystemTime::now()).unwrap();
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "activation never applied"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        copy_files(&next, &cacerts, &SIGNING);
    }

    // retire: the new root alone, refused until the old root's certificates have expired.
    let rejected = reloads(&metrics_url).1;
    copy_files(&next, &cacerts, &["root-cert.pem"]);
    eventually(
        Duration::from_secs(20),
        "an early retire is refused",
        || reloads(&metrics_url).1 > rejected && refused_for(&data_dir, "may be valid until"),
    )
    .await;
    assert_eq!(roots_now().len(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while roots_now() != root2 {
        assert!(std::time::Instant::now() < deadline, "retire never applied");
        tokio::time::sleep(Duration::from_millis(300)).await;
        copy_files(&next, &cacerts, &["root-cert.pem"]);
    }
    assert_eq!(ca.state.authority().bundle().sequence(), 3);
    let state = zident_ca::plugged::read(&data_dir).unwrap().unwrap();
    assert_eq!(
        state.last_refusal, None,
        "an applied change clears the refusal"
    );
}

/// Whether the CA's last refusal of a change of the files, as `zident ca status` shows it, says
/// `why`.
fn refused_for(data_dir: &Path, why: &str) -> bool {
    zident_ca::plugged::read(data_dir)
        .ok()
        .flatten()
        .and_then(|s| s.last_refusal)
        .is_some_and(|r| r.reason.contains(why))
}

/// With plugged-in keys the signer is the operator's intermediate: the CRL is signed by it, a
/// node verifies it with the intermediate above its own certificate, and openssl, given the
/// intermediate, rejects the revoked certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugged_in_intermediate_signs_the_crl_of_what_it_issued() {
    let (dir, cacerts) = plugged_in_fixture();
    let ca = start(dir.path(), &cacerts).await.unwrap();
    let mut client = client(&ca).await;
    let (_, chain) = issue_frontend(&mut client, 600).await;
    let ders: Vec<_> = chain[..2]
        .iter()
        .flat_map(|p| certs_from_pem(p.as_bytes()).unwrap())
        .collect();
    let serial = zident_identity::check_leaf(&ders[0]).unwrap().serial_hex;
    let data = dir.path().join("ca");
    // The ledger is appended by a thread of its own, within milliseconds of the issuance.
    zident_testkit::eventually(
        Duration::from_secs(20),
        "the ledger names the certificate",
        || {
            zident_ca::ledger::certificates(&data, SystemTime::now())
                .iter()
                .any(|c| c.certificate.serial == serial)
        },
    )
    .await;
    zident_ca::revocation::list::revoke(
        &data,
        &zident_ca::revocation::Target::Serial(serial),
        zident_ca::revocation::Reason::KeyCompromise,
        false,
        SystemTime::now(),
    )
    .unwrap();
    let root = certs_from_pem(&std::fs::read(cacerts.join("root-cert.pem")).unwrap()).unwrap();
    let signers: Vec<_> = root.iter().chain(&ders[1..2]).cloned().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pem = std::fs::read_to_string(data.join("crl.pem")).unwrap_or_default();
        if let Ok(list) =
            zident_identity::RevocationList::from_pem(&pem, &signers, SystemTime::now(), None)
            && list.is_revoked(&ders[0])
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CRL never listed it: {pem}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The roots alone do not verify it: the intermediate signed it.
    let pem = std::fs::read_to_string(data.join("crl.pem")).unwrap();
    assert!(
        zident_identity::RevocationList::from_pem(&pem, &root, SystemTime::now(), None).is_err()
    );
    std::fs::write(dir.path().join("leaf.pem"), &chain[0]).unwrap();
    std::fs::write(dir.path().join("int.pem"), &chain[1]).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args(["verify", "-crl_check", "-CAfile", "cacerts/root-cert.pem"])
        .args([
            "-untrusted",
            "int.pem",
            "-CRLfile",
            "ca/crl.pem",
            "leaf.pem",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("certificate revoked"),
        "{text}"
    );
}
