//! Envoy's Secret Discovery Service on a workload's socket, checked with an SDS client built
//! from Envoy's published API (the `envoy-types` crate: its generated messages and gRPC
//! client, none of ours). Envoy itself is not installable on this machine (no package, and no
//! network to fetch a build), so the client here plays Envoy's part of the protocol: it asks
//! for `default` and `ROOTCA` as istio-agent's Envoy does, ACKs pushes, NACKs one, and uses
//! the delta and fetch variants. The key it receives is checked against the certificate with
//! the openssl command line.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::StreamExt;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";

async fn connect(path: PathBuf) -> SecretDiscoveryServiceClient<Channel> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no socket at {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channel = Endpoint::from_static("http://localhost")
        .timeout(Duration::from_secs(30))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .expect("connects to the SDS socket");
    SecretDiscoveryServiceClient::new(channel)
}

fn request(names: &[&str], version: &str, nonce: &str, nack: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        node: Some(Node {
            id: "sidecar~127.0.0.2~frontend.default~default.svc.cluster.local".into(),
            ..Default::default()
        }),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: TYPE.into(),
        response_nonce: nonce.into(),
        error_detail: nack.map(|m| RpcStatus {
            code: 3,
            message: m.into(),
            details: vec![],
        }),
        ..Default::default()
    }
}

fn secrets(resp: &DiscoveryResponse) -> Vec<Secret> {
    resp.resources
        .iter()
        .map(|a| {
            assert_eq!(a.type_url, TYPE);
            Secret::decode(a.value.as_slice()).expect("a Secret")
        })
        .collect()
}

fn inline(source: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> Vec<u8> {
    match source.as_ref().and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => b.clone(),
        other => panic!("inline bytes expected, got {other:?}"),
    }
}

/// The chain and key of a `default` secret, checked: the leaf names the workload and the key
/// is the leaf's (openssl compares the public keys). Returns the leaf's serial.
fn check_default(secret: &Secret, dir: &Path) -> String {
    assert_eq!(secret.name, "default");
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("a tls_certificate, got {:?}", secret.r#type);
    };
    let chain = inline(&tls.certificate_chain);
    let key = inline(&tls.private_key);
    std::fs::write(dir.join("chain.pem"), &chain).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    assert_eq!(
        zident_testkit::openssl(dir, &["x509", "-noout", "-pubkey", "-in", "chain.pem"]),
        zident_testkit::openssl(dir, &["pkey", "-pubout", "-in", "key.pem"]),
        "the key matches the certificate"
    );
    let san = zident_testkit::openssl(
        dir,
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            "chain.pem",
        ],
    );
    assert!(san.contains(&format!("URI:{FRONTEND}")), "{san}");
    zident_testkit::openssl(dir, &["x509", "-noout", "-serial", "-in", "chain.pem"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_sds_client_gets_secrets_acks_renewals_and_a_nack_is_handled() {
    logs();
    let world = World::new(0).await;
    // Certificates of 4 s: renewed about every 2 s.
    let (agent, sockets) = agent_with_sockets(&world, Duration::from_secs(4)).await;
    let path = sockets.join("default/frontend/workload-spiffe-uds/socket");
    let scratch = tempfile::tempdir().unwrap();
    let mut client = connect(path.clone()).await;

    // StreamSecrets for `default`, as Envoy opens one stream per secret.
    let (tx, rx) = mpsc::channel(8);
    tx.send(request(&["default"], "", "", None)).await.unwrap();
    let mut pushes = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), pushes.next())
            .await
            .expect("a push within 30 s")
            .expect("the stream stays open")
            .expect("a response")
    };
    let first = next().await;
    let s = secrets(&first);
    assert_eq!(s.len(), 1);
    let serial1 = check_default(&s[0], scratch.path());

    // ACK; the renewal is pushed with a new version and nonce.
    tx.send(request(
        &["default"],
        &first.version_info,
        &first.nonce,
        None,
    ))
    .await
    .unwrap();
    let second = next().await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    let serial2 = check_default(&secrets(&second)[0], scratch.path());
    assert_ne!(serial1, serial2);

    // NACK the next one: counted and logged; nothing is sent again until the certificate
    // changes, and what comes next is a new certificate, not the refused one again.
    tx.send(request(
        &["default"],
        &first.version_info,
        &second.nonce,
        Some("test: refusing this one"),
    ))
    .await
    .unwrap();
    let third = next().await;
    assert_ne!(
        third.version_info, second.version_info,
        "the refused secret is not resent"
    );
    check_default(&secrets(&third)[0], scratch.path());
    tx.send(request(
        &["default"],
        &third.version_info,
        &third.nonce,
        None,
    ))
    .await
    .unwrap();
    let metrics = agent.metrics_addr.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = curl(&format!("http://{metrics}/metrics"));
        if body.contains("zident_sds_events_total{event=\"nack\"} 1")
            && body.contains("zident_sds_events_total{event=\"ack\"} 2")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log_text().contains("test: refusing this one"));
    drop(tx);

    // ROOTCA: the trust bundle as a validation context.
    let (tx, rx) = mpsc::channel(2);
    tx.send(request(&["ROOTCA"], "", "", None)).await.unwrap();
    let mut roots = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = roots.next().await.unwrap().unwrap();
    let s = secrets(&r);
    let Some(secret::Type::ValidationContext(v)) = &s[0].r#type else {
        panic!("a validation_context, got {:?}", s[0].r#type);
    };
    assert_eq!(s[0].name, "ROOTCA");
    assert_eq!(
        String::from_utf8(inline(&v.trusted_ca)).unwrap(),
        std::fs::read_to_string(world.root_ca()).unwrap()
    );
    drop(tx);

    // Any other name is refused with the ones that exist.
    let (tx, rx) = mpsc::channel(2);
    tx.send(request(&["file-cert:/etc/certs/x"], "", "", None))
        .await
        .unwrap();
    let refused = match client.stream_secrets(ReceiverStream::new(rx)).await {
        Err(e) => e,
        Ok(resp) => resp.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("\"default\"") && refused.message().contains("\"ROOTCA\""),
        "{}",
        refused.message()
    );

    // FetchSecrets: both at once.
    let fetched = client
        .fetch_secrets(request(&["default", "ROOTCA"], "", "", None))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = secrets(&fetched).into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["ROOTCA", "default"]);

    // DeltaSecrets: subscribe, receive, ACK, and receive the renewal.
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        type_url: TYPE.into(),
        resource_names_subscribe: vec!["default".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut delta = client
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let d1 = delta.next().await.unwrap().unwrap();
    assert_eq!(d1.resources.len(), 1);
    assert_eq!(d1.resources[0].name, "default");
    let secret =
        Secret::decode(d1.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap();
    let serial = check_default(&secret, scratch.path());
    tx.send(DeltaDiscoveryRequest {
        type_url: TYPE.into(),
        response_nonce: d1.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let d2 = tokio::time::timeout(Duration::from_secs(30), delta.next())
        .await
        .expect("a renewal within 30 s")
        .unwrap()
        .unwrap();
    assert_ne!(d2.resources[0].version, d1.resources[0].version);
    let secret =
        Secret::decode(d2.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap();
    assert_ne!(check_default(&secret, scratch.path()), serial);
}
