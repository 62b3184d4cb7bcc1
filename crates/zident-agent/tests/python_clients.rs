//! The Workload API serves gRPC clients nobody here wrote and that Rust's h2 alone would refuse:
//! the Python `spiffe` package and plain `grpcio` (gRPC C-core), which send the socket's path as
//! the HTTP/2 `:authority`. They fetch an SVID and the bundles, see a rotation on the stream,
//! and are refused without the security header, against a real agent and CA.
//!
//! JWT-SVIDs are checked the same way, and PyJWT verifies one with the key from the CA's
//! `/bundle`.
//!
//! The Python packages live in a virtual environment that `.ci/run` makes at
//! `target/pyenv` (`python3 -m venv target/pyenv && target/pyenv/bin/pip install spiffe==0.3.2 grpcio==1.85.3 PyJWT[crypto]==2.15.1`),
//! or wherever `ZIDENT_PYTHON` points.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{World, agent_with_sockets, log_text, logs};

use zident_testkit::python;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_spiffe_and_grpcio_clients_are_served() {
    logs();
    let python = python();
    let world = World::new(0).await;
    let (_agent, sockets) = agent_with_sockets(&world, Duration::from_secs(4)).await;
    let socket = sockets.join("default/frontend/agent.sock");
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/workload_api_client.py");

    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(&socket)
            .arg("spiffe://cluster.local/ns/default/sa/frontend")
            .arg("30")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", log_text());
    for check in [
        "ok fetch_x509_svid spiffe://cluster.local/ns/default/sa/frontend",
        "ok fetch_x509_bundles cluster.local",
        "ok rotation",
        "ok grpcio",
        "ok missing_header INVALID_ARGUMENT",
    ] {
        assert!(
            stdout.contains(check),
            "{check:?} missing:\n{stdout}\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_spiffe_and_pyjwt_validate_jwt_svids() {
    logs();
    let python = python();
    let world = World::new(0).await;
    let (_agent, sockets) = agent_with_sockets(&world, Duration::from_secs(3600)).await;
    let socket = sockets.join("default/frontend/agent.sock");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/jwt_client.py");
    let bundle_url = format!("https://localhost:{}/bundle", world.ca_addr.port());
    let root = world.root_ca();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(&socket)
            .arg("spiffe://cluster.local/ns/default/sa/frontend")
            .arg(bundle_url)
            .arg(root)
            .arg("30")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", log_text());
    for check in [
        "ok fetch_jwt_svid spiffe://cluster.local/ns/default/sa/frontend",
        "ok parse_and_validate spiffe://cluster.local/ns/default/sa/frontend",
        "ok validate_wrong_audience",
        "ok validate_jwt_svid",
        "ok pyjwt spiffe://cluster.local/ns/default/sa/frontend",
        "ok pyjwt_wrong_audience",
    ] {
        assert!(
            stdout.contains(check),
            "{check:?} missing:\n{stdout}\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_is_not_http2_is_refused_with_a_line() {
    logs();
    let world = World::new(0).await;
    let (_agent, sockets) = agent_with_sockets(&world, Duration::from_secs(3600)).await;
    let socket = sockets.join("default/frontend/agent.sock");
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Refused: the agent closes the connection (it does not leave it hanging).
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was left open");
    common::eventually(Duration::from_secs(10), "the refusal is logged", || {
        log_text().contains("Workload API connection refused at the HTTP/2 level")
            && log_text().contains("did not start with the HTTP/2 preface")
    })
    .await;
}
