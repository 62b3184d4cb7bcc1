//! A Delta xDS client as ztunnel subscribes (wildcard `istio.workload.Address` and
//! `istio.security.Authorization`, each response ACKed at once), one TLS connection per stream,
//! and reading the CA's metrics: what the xDS benchmarks share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zident_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use zident_proto::xds::{DeltaDiscoveryRequest, Node};

pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";

/// What each stream reports: ADDRESS responses seen, the time of the last, its size, and the
/// names of the resources it carried.
#[derive(Default)]
pub struct Seen {
    pub count: AtomicU64,
    pub last: Mutex<Option<(Instant, SystemTime, usize)>>,
    pub names: Mutex<Vec<String>>,
}

/// A mesh file of `workloads` workloads on 100 nodes and one policy; edit number `edit` moves
/// workload 0 to a new address (edit 0 is the first version).
pub fn mesh(workloads: usize, edit: usize) -> String {
    let mut s = format!(
        "trustDomain: cluster.local\nnodes:\n- {{name: bench-node, token: {}}}\nworkloads:\n",
        super::TOKEN
    );
    for i in 0..workloads {
        // Edit number `edit` moves workload 0 to a new address.
        let ip = if i == 0 {
            format!("10.250.{}.{}", edit / 250, edit % 250 + 1)
        } else {
            format!("10.{}.{}.{}", i / 62500, (i / 250) % 250, i % 250 + 1)
        };
        s.push_str(&format!(
            "- {{uid: w{i}, name: app-{i}, namespace: bench, serviceAccount: app-{}, node: node-{}, workloadIps: [\"{ip}\"], protocol: HBONE}}\n",
            i % 500,
            i % 100
        ));
    }
    s.push_str("policies:\n- {name: allow-bench, namespace: bench, scope: Namespace, action: Allow, rules: [[[{namespaces: [{Exact: bench}]}]]]}\n");
    s
}

/// Waits for `done`, polling every millisecond; panics with `what` after `within`.
pub async fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A subscribed stream that has not been read from: its responses, and where requests go.
pub type Opened = (
    tonic::Streaming<zident_proto::xds::DeltaDiscoveryResponse>,
    mpsc::Sender<DeltaDiscoveryRequest>,
);

/// Opens one stream to the CA at `addr` and subscribes as ztunnel does, reading nothing: a
/// client that never reads holds it as it is.
pub async fn open_unread_stream(addr: &str, root: &[u8]) -> Opened {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    for t in [ADDRESS, AUTHORIZATION] {
        tx.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "ztunnel~10.0.0.1~bench.istio-system~istio-system.svc.cluster.local".into(),
                ..Default::default()
            }),
            type_url: t.into(),
            ..Default::default()
        })
        .await
        .expect("queue");
    }
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut req = tonic::Request::new(outbound);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", super::TOKEN).parse().expect("header"),
    );
    let responses = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(1 << 30)
        .delta_aggregated_resources(req)
        .await
        .expect("stream opens")
        .into_inner();
    (responses, tx)
}

/// Opens one stream to the CA at `addr`, reporting into `seen`.
pub async fn open_stream(addr: &str, root: &[u8], seen: Arc<Seen>) {
    let (mut responses, tx) = open_unread_stream(addr, root).await;
    tokio::spawn(async move {
        while let Ok(Some(r)) = responses.message().await {
            if r.type_url == ADDRESS {
                *seen.last.lock().expect("lock") =
                    Some((Instant::now(), SystemTime::now(), r.encoded_len()));
                *seen.names.lock().expect("lock") =
                    r.resources.iter().map(|x| x.name.clone()).collect();
                seen.count.fetch_add(1, Ordering::SeqCst);
            }
            let ack = DeltaDiscoveryRequest {
                type_url: r.type_url,
                response_nonce: r.nonce,
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                break;
            }
        }
    });
}

/// One sample of a metric in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The CA's /metrics, by plain HTTP/1.1.
pub async fn metrics_text(ca: &super::Ca) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(&ca.metrics)
        .await
        .expect("metrics port");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.expect("response");
    body
}
