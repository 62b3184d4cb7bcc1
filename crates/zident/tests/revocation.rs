//! Revocation on the CA, checked from outside: `zident ca revoke` by serial, by identity and by
//! node on the data dir of a running CA; the CRLs it then serves at `/crl` and writes to
//! `crl.pem`, read by the `openssl` command line (`openssl crl -verify`, `openssl verify
//! -crl_check`); denials of reissue refusing a node's requests until lifted; and a certificate
//! of the old root revoked after a rotation's activate, listed by the old root's own CRL.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use zident_testkit::ca::{ca_config, request_certificate, start_ca};
use zident_testkit::curl;

const MESH: &str = "trustDomain: cluster.local\n\
nodes:\n- {name: node-a, token: ta}\n- {name: node-b, token: tb}\n\
workloads:\n\
- {uid: w, name: web, namespace: default, serviceAccount: web, node: node-a}\n\
- {uid: d, name: db, namespace: default, serviceAccount: db, node: node-b}\n";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DB: &str = "spiffe://cluster.local/ns/default/sa/db";

/// `zident` with `args`: exit code and everything it printed.
fn zident(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zident"))
        .args(args)
        .output()
        .expect("zident runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `openssl` with `args`: whether it succeeded, and what it printed.
fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (apt-get install openssl; .ci/run does)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The leaf's serial as openssl prints it (uppercase hex).
fn serial_of(dir: &Path, leaf_pem: &str) -> String {
    let path = dir.join("serial-query.pem");
    std::fs::write(&path, leaf_pem).unwrap();
    let (ok, out) = openssl(&["x509", "-noout", "-serial", "-in", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    out.trim().trim_start_matches("serial=").to_owned()
}

/// `/crl` from the CA at `port`, trusting its root.
fn fetch_crl(root: &Path, port: u16) -> (u16, String) {
    curl(&[
        "--cacert",
        root.to_str().unwrap(),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/crl"),
    ])
}

/// Waits until the CA's `/crl` satisfies `check` (the text of `openssl crl -text`): the CRLs.
fn crl_until(
    dir: &Path,
    root: &Path,
    port: u16,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = fetch_crl(root, port);
        if code == 200 {
            // `openssl crl` reads one CRL: each in turn.
            let mut text = String::new();
            for (i, block) in body.split_inclusive("-----END X509 CRL-----\n").enumerate() {
                let path = dir.join(format!("fetched-crl-{i}.pem"));
                std::fs::write(&path, block).unwrap();
                text += &openssl(&["crl", "-noout", "-text", "-in", path.to_str().unwrap()]).1;
            }
            if check(&text) {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the CRL: {what}: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `openssl verify -crl_check` of `leaf_pem` against the roots and CRLs given.
fn verify_with_crl(dir: &Path, roots: &Path, crl: &str, leaf_pem: &str) -> (bool, String) {
    let (crl_path, leaf_path) = (dir.join("check-crl.pem"), dir.join("check-leaf.pem"));
    std::fs::write(&crl_path, crl).unwrap();
    std::fs::write(&leaf_path, leaf_pem).unwrap();
    openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        roots.to_str().unwrap(),
        "-CRLfile",
        crl_path.to_str().unwrap(),
        leaf_path.to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_listed_in_crls_openssl_accepts_and_denied_nodes_cannot_renew() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let ca = start_ca(ca_config(dir.path())).await;
    let port = ca.addr.port();
    let root = ca.root_cert_path.clone();
    let root_pem = std::fs::read(&root).unwrap();
    let data = dir.path().join("ca");
    let data_arg = data.to_str().unwrap();
    let ask = |token: &'static str, id: &'static str| {
        let root_pem = root_pem.clone();
        async move { request_certificate(port, &root_pem, token, id, 3600).await }
    };
    let web = ask("ta", WEB).await.expect("web's certificate");
    let db = ask("tb", DB).await.expect("db's certificate");
    let web_serial = serial_of(dir.path(), &web[0]);
    // The ledger is appended by a thread of its own, within milliseconds of each issuance.
    zident_testkit::eventually(
        Duration::from_secs(20),
        "the ledger names both certificates",
        || zident_ca::ledger::certificates(&data, std::time::SystemTime::now()).len() >= 2,
    )
    .await;

    // The first CRL: signed by the root, with a number, nextUpdate and the root's key
    // identifier, listing nothing; openssl verifies its signature.
    let first = crl_until(dir.path(), &root, port, "the first CRL", |t| {
        t.contains("No Revoked Certificates")
    });
    let crl_path = dir.path().join("first.pem");
    std::fs::write(&crl_path, &first).unwrap();
    let (ok, out) = openssl(&[
        "crl",
        "-noout",
        "-text",
        "-in",
        crl_path.to_str().unwrap(),
        "-CAfile",
        root.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("verify OK"), "{out}");
    for field in [
        "CRL Number",
        "Next Update",
        "Authority Key Identifier",
        "Version 2",
    ] {
        assert!(out.contains(field), "{field} in:\n{out}");
    }
    let (ok, _) = verify_with_crl(dir.path(), &root, &first, &web[0]);
    assert!(ok, "nothing is revoked yet");

    // Revoked by serial, as openssl prints it: listed with its reason within seconds.
    let started = Instant::now();
    let (code, out) = zident(&[
        "ca",
        "revoke",
        "--serial",
        &web_serial,
        "--reason",
        "keyCompromise",
        "--data-dir",
        data_arg,
    ]);
    assert_eq!(code, 0, "{out}");
    let crl = crl_until(dir.path(), &root, port, "web's serial listed", |t| {
        t.contains(&web_serial) && t.contains("Key Compromise")
    });
    eprintln!("revoke to /crl: {:?}", started.elapsed());
    let (ok, out) = verify_with_crl(dir.path(), &root, &crl, &web[0]);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify_with_crl(dir.path(), &root, &crl, &db[0]);
    assert!(ok, "db is not revoked: {out}");
    // The data dir's file holds the same CRLs (what a ztunnel's CRL_PATH reads).
    let file = std::fs::read_to_string(data.join("crl.pem")).unwrap();
    let (ok, out) = verify_with_crl(dir.path(), &root, &file, &web[0]);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    // Without --deny-reissue, web's agent may renew at once.
    let again = ask("ta", WEB)
        .await
        .expect("web is issued a new certificate");
    let (ok, out) = verify_with_crl(dir.path(), &root, &crl, &again[0]);
    assert!(ok, "the new certificate is not revoked: {out}");

    // An unknown serial changes nothing and says why.
    let before = std::fs::read(data.join("revocations.json")).unwrap();
    let (code, out) = zident(&["ca", "revoke", "--serial", "ab:cd", "--data-dir", data_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no valid certificate with serial abcd"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(data.join("revocations.json")).unwrap(),
        before
    );
    let (code, out) = zident(&["ca", "revoke", "--serial", "zz", "--data-dir", data_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a serial number"), "{out}");

    // A node revoked with --deny-reissue: every certificate its token obtained is listed, and
    // its requests are refused saying why; another node's are not.
    let db_serial = serial_of(dir.path(), &db[0]);
    let (code, out) = zident(&[
        "ca",
        "revoke",
        "--node",
        "node-b",
        "--reason",
        "cessation-of-operation",
        "--deny-reissue",
        "--data-dir",
        data_arg,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&db_serial.to_lowercase()), "{out}");
    crl_until(dir.path(), &root, port, "db's serial listed", |t| {
        t.contains(&db_serial) && t.contains(&web_serial)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match ask("tb", DB).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "node-b's request is never refused"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        refused.contains("revoked: node node-b was revoked (cessationOfOperation)"),
        "{refused}"
    );
    ask("ta", WEB).await.expect("node-a is not denied");

    // Listed, then lifted.
    let (code, out) = zident(&["ca", "revocations", "--data-dir", data_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&web_serial.to_lowercase())
            && out.contains("keyCompromise")
            && out.contains("reissue denied: node node-b (cessationOfOperation"),
        "{out}"
    );
    let (code, out) = zident(&[
        "ca",
        "allow-reissue",
        "--node",
        "node-b",
        "--data-dir",
        data_arg,
    ]);
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask("tb", DB).await.is_err() {
        assert!(Instant::now() < deadline, "node-b is never issued again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out) = zident(&[
        "ca",
        "allow-reissue",
        "--node",
        "node-b",
        "--data-dir",
        data_arg,
    ]);
    assert_eq!(
        code, 1,
        "lifting twice says there is nothing to lift: {out}"
    );
    assert!(out.contains("nothing was changed"), "{out}");
}

/// A certificate of the old root, revoked after the new root was activated, is listed by a
/// CRL the old root signs (beside the new root's), which openssl checks with the old root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_the_old_root_revoked_after_activate_is_listed_by_the_old_roots_crl() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let mut config = ca_config(dir.path());
    config.rotation.auto = false;
    let ca = start_ca(config).await;
    let port = ca.addr.port();
    let root = ca.root_cert_path.clone();
    let old_root_pem = std::fs::read(&root).unwrap();
    let old_root = dir.path().join("old-root.pem");
    std::fs::write(&old_root, &old_root_pem).unwrap();
    let data = dir.path().join("ca");
    let data_arg = data.to_str().unwrap();
    let old_leaf = request_certificate(port, &old_root_pem, "ta", WEB, 3600)
        .await
        .expect("web's certificate under the first root");
    let old_serial = serial_of(dir.path(), &old_leaf[0]);

    for phase in ["prepare", "activate"] {
        let (code, out) = zident(&["ca", "rotate", phase, "--force", "--data-dir", data_arg]);
        assert_eq!(code, 0, "{phase}: {out}");
    }
    // Two CRLs once the CA runs on the new root with the old one still trusted.
    crl_until(dir.path(), &root, port, "a CRL per root", |t| {
        t.matches("Certificate Revocation List (CRL)").count() == 2
    });
    let (code, out) = zident(&[
        "ca",
        "revoke",
        "--serial",
        &old_serial,
        "--data-dir",
        data_arg,
    ]);
    assert_eq!(code, 0, "{out}");
    let crl = crl_until(dir.path(), &root, port, "the old certificate listed", |t| {
        t.contains(&old_serial)
    });
    // openssl finds the CRL of the leaf's issuer among them.
    let (ok, out) = verify_with_crl(dir.path(), &old_root, &crl, &old_leaf[0]);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
}
