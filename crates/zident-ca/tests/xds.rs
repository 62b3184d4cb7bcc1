//! The control plane's xDS stream, spoken to by a plain tonic client over TLS as ztunnel
//! speaks it: wildcard subscriptions, incremental pushes, NACKs, reconnects that send what
//! the client holds, named subscriptions, and the token check.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Fixture, NODE_A_TOKEN, metric};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Code, Streaming};
use zident_proto::istio_security::Authorization;
use zident_proto::istio_workload::{Address, address};
use zident_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use zident_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use zident_xds::{ADDRESS, AUTHORIZATION};

const WAIT: Duration = Duration::from_secs(10);

/// One open stream.
struct Stream {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Stream {
    async fn open(f: &Fixture, token: Option<&str>) -> Result<Self, tonic::Status> {
        Self::open_on(common::channel(&f.ca).await, token).await
    }

    /// A stream on `channel` (one connection may carry several).
    async fn open_on(
        channel: tonic::transport::Channel,
        token: Option<&str>,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let outbound = futures_util::stream::unfold(rx, |mut rx: mpsc::Receiver<_>| async move {
            rx.recv().await.map(|r| (r, rx))
        });
        let mut req = tonic::Request::new(outbound);
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let rx = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(req)
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    async fn send(&self, r: DeltaDiscoveryRequest) {
        self.tx.send(r).await.expect("the stream takes requests");
    }

    /// Subscribes to `type_url` as ztunnel does (wildcard), telling what it holds.
    async fn subscribe(&self, type_url: &str, held: HashMap<String, String>) {
        self.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local".into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            initial_resource_versions: held,
            ..Default::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response within the deadline")
            .expect("the stream stays open")
            .expect("a response, not the end")
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    v.sort();
    v
}

fn workload_ips(r: &DeltaDiscoveryResponse, name: &str) -> Vec<Vec<u8>> {
    let res = r
        .resources
        .iter()
        .find(|x| x.name == name)
        .expect("the resource");
    match Address::decode(res.resource.as_ref().unwrap().value.as_slice())
        .unwrap()
        .r#type
    {
        Some(address::Type::Workload(w)) => w.addresses,
        other => panic!("not a workload: {other:?}"),
    }
}

fn edit(f: &Fixture, from: &str, to: &str) {
    let mesh = std::fs::read_to_string(f.mesh_path()).unwrap();
    assert!(mesh.contains(from), "the mesh holds {from:?}");
    let tmp = f.dir.path().join("mesh.yaml.tmp");
    std::fs::write(&tmp, mesh.replace(from, to)).unwrap();
    std::fs::rename(tmp, f.mesh_path()).unwrap();
}

const POLICY: &str = r#"policies:
- {name: deny-gw, namespace: default, action: Deny, rules: [[[{principals: [{Exact: "cluster.local/ns/default/sa/gateway"}]}]]]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gets_the_mesh_then_only_what_each_edit_changes() {
    let f = Fixture::start().await;
    let mut s = Stream::open(&f, Some(NODE_A_TOKEN)).await.unwrap();
    s.subscribe(ADDRESS, HashMap::new()).await;
    let first = s.next().await;
    assert_eq!(first.type_url, ADDRESS);
    assert_eq!(names(&first), ["w1", "w2"], "every workload, by uid");
    assert_eq!(workload_ips(&first, "w2"), [vec![127, 0, 0, 3]]);
    s.ack(&first).await;
    // A type with nothing in it is answered too: ztunnel is not ready until it is.
    s.subscribe(AUTHORIZATION, HashMap::new()).await;
    let empty = s.next().await;
    assert_eq!(
        (empty.type_url.as_str(), empty.resources.len()),
        (AUTHORIZATION, 0)
    );
    s.ack(&empty).await;

    // One workload changes and a policy appears: exactly those are sent.
    let mesh = std::fs::read_to_string(f.mesh_path()).unwrap();
    let edited = mesh.replace("127.0.0.3", "127.0.0.33") + POLICY;
    std::fs::write(f.dir.path().join("mesh.yaml.tmp"), edited).unwrap();
    std::fs::rename(f.dir.path().join("mesh.yaml.tmp"), f.mesh_path()).unwrap();
    let mut got = HashMap::new();
    while got.len() < 2 {
        let r = s.next().await;
        s.ack(&r).await;
        got.insert(r.type_url.clone(), r);
    }
    let addr = &got[ADDRESS];
    assert_eq!(names(addr), ["w2"], "only the edited workload");
    assert_eq!(workload_ips(addr, "w2"), [vec![127, 0, 0, 33]]);
    assert!(addr.removed_resources.is_empty());
    let pol = &got[AUTHORIZATION];
    assert_eq!(names(pol), ["default/deny-gw"]);
    let p = Authorization::decode(pol.resources[0].resource.as_ref().unwrap().value.as_slice())
        .unwrap();
    assert_eq!(p.action, 1, "DENY");

    // A workload removed: its name is sent as removed, nothing else.
    edit(
        &f,
        "- {uid: w2, name: backend, namespace: default, serviceAccount: backend, node: node-b, workloadIps: [\"127.0.0.33\"], protocol: HBONE}\n",
        "",
    );
    let r = s.next().await;
    assert_eq!(r.type_url, ADDRESS);
    assert_eq!(
        (r.resources.len(), r.removed_resources.clone()),
        (0, vec!["w2".to_owned()])
    );
    s.ack(&r).await;

    // A broken edit is refused by the CA and pushes nothing; the next good one pushes only
    // what it changed against the last good mesh.
    edit(&f, "workloads:", "workloads: [");
    edit(&f, "workloads: [", "workloads:");
    edit(&f, "127.0.0.2\"", "127.0.0.20\"");
    let r = s.next().await;
    assert_eq!(names(&r), ["w1"]);
    assert_eq!(workload_ips(&r, "w1"), [vec![127, 0, 0, 20]]);
    s.ack(&r).await;
    let text = common::curl(
        &format!("http://{}/metrics", f.ca.metrics_addr.unwrap()),
        None,
    );
    assert_eq!(metric(&text, "pilot_xds"), Some(1.0), "{text}");
    assert!(
        metric(&text, "pilot_proxy_convergence_time_count").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_logged_with_the_reason_and_counted() {
    zident_testkit::capture_logs("zident=info");
    let f = Fixture::start().await;
    let mut s = Stream::open(&f, Some(NODE_A_TOKEN)).await.unwrap();
    s.subscribe(ADDRESS, HashMap::new()).await;
    let first = s.next().await;
    s.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "workload w9 has a field this client cannot read".into(),
        }),
        ..Default::default()
    })
    .await;
    zident_testkit::logged("workload w9 has a field this client cannot read").await;
    let text = common::curl(
        &format!("http://{}/metrics", f.ca.metrics_addr.unwrap()),
        None,
    );
    assert!(
        text.contains("pilot_total_xds_rejects{type=\"address\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reconnecting_client_gets_only_what_changed_while_it_was_away() {
    let f = Fixture::start().await;
    let mut s = Stream::open(&f, Some(NODE_A_TOKEN)).await.unwrap();
    s.subscribe(ADDRESS, HashMap::new()).await;
    let first = s.next().await;
    let held: HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(s);

    edit(&f, "127.0.0.2", "127.0.0.22");
    edit(
        &f,
        "- {uid: w2, name: backend, namespace: default, serviceAccount: backend, node: node-b, workloadIps: [\"127.0.0.3\"], protocol: HBONE}\n",
        "",
    );
    // The edit reaches the control plane within a second: poll with fresh streams until
    // one is answered from it.
    let mut again = None;
    for _ in 0..100 {
        let mut s = Stream::open(&f, Some(NODE_A_TOKEN)).await.unwrap();
        s.subscribe(ADDRESS, held.clone()).await;
        let r = s.next().await;
        if r.removed_resources == ["w2"] {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = again.expect("the reconnect is answered with the difference");
    assert_eq!(
        names(&r),
        ["w1"],
        "only the changed workload; w1's old version differs"
    );
    assert_eq!(workload_ips(&r, "w1"), [vec![127, 0, 0, 22]]);
}

#[tokio::test]
async fn named_subscriptions_get_only_their_names() {
    let f = Fixture::start().await;
    let mut s = Stream::open(&f, Some(NODE_A_TOKEN)).await.unwrap();
    // ztunnel's on-demand mode: subscribe to nothing, then to names.
    s.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        resource_names_subscribe: vec!["*".into()],
        resource_names_unsubscribe: vec!["*".into()],
        ..Default::default()
    })
    .await;
    let nothing = s.next().await;
    assert!(nothing.resources.is_empty());
    s.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        resource_names_subscribe: vec!["w2".into(), "missing".into()],
        ..Default::default()
    })
    .await;
    let r = s.next().await;
    assert_eq!(names(&r), ["w2"]);
    // An edit of a workload not subscribed to sends nothing; one of w2 does.
    edit(&f, "127.0.0.2", "127.0.0.22");
    edit(&f, "127.0.0.3", "127.0.0.33");
    let r = s.next().await;
    assert_eq!(names(&r), ["w2"]);
}

#[tokio::test]
async fn a_stream_without_a_known_token_is_refused() {
    let f = Fixture::start().await;
    for token in [None, Some("not-a-token")] {
        let err = match Stream::open(&f, token).await {
            Err(e) => e,
            Ok(mut s) => {
                s.subscribe(ADDRESS, HashMap::new()).await;
                match s.rx.message().await {
                    Err(e) => e,
                    Ok(m) => panic!("answered without a token: {m:?}"),
                }
            }
        };
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    }
}

/// grpcio (gRPC C-core, another HTTP/2 and gRPC implementation than tonic's) reads a first
/// push larger than one of the server's write chunks, ACKs it, half-closes and sees the
/// stream end with status OK; an unknown token and a method zident does not serve get their
/// gRPC codes; 1 KB and 100 KB of garbage in place of a request end the stream with an error. The messages are encoded and decoded by hand in the script, so nothing of
/// zident's protobuf code is on the client's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_reads_the_stream() {
    let f = Fixture::start().await;
    // Enough workloads that the first push spans many of the server's 16 KiB chunks.
    let mut mesh = std::fs::read_to_string(f.mesh_path()).unwrap();
    for i in 0..600 {
        mesh.push_str(&format!(
            "- {{uid: bulk-{i}, name: bulk-{i}, namespace: bulk, serviceAccount: bulk, node: node-a, workloadIps: [\"10.9.{}.{}\"], protocol: HBONE}}\n",
            i / 200,
            i % 200 + 1
        ));
    }
    let tmp = f.dir.path().join("mesh.yaml.tmp");
    std::fs::write(&tmp, mesh).unwrap();
    std::fs::rename(tmp, f.mesh_path()).unwrap();
    // Wait, through a stream of our own, until the CA serves the larger mesh.
    let mut s = Stream::open(&f, Some(NODE_A_TOKEN)).await.unwrap();
    s.subscribe(ADDRESS, HashMap::new()).await;
    let mut held = names(&s.next().await).len();
    while held < 602 {
        held += names(&s.next().await).len();
    }

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/xds_client.py");
    let args = [
        script.display().to_string(),
        f.ca.addr.to_string(),
        f.ca.root_cert_path.display().to_string(),
        NODE_A_TOKEN.to_owned(),
        ADDRESS.to_owned(),
    ];
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(zident_testkit::python())
            .args(args)
            .output(),
    )
    .await
    .expect("the client ends within a minute")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let first = &lines[0];
    assert_eq!(first[0], "first", "{stdout}");
    let bytes: usize = first[1].parse().unwrap();
    assert!(bytes > 3 * 16 * 1024, "a first push of {bytes} bytes");
    assert_eq!(first[2], "602", "every workload: {stdout}");
    assert_eq!(lines[1], ["end", "OK"], "{stdout}\n{stderr}");
    assert_eq!(lines[2], ["refused", "UNAUTHENTICATED"], "{stdout}");
    assert_eq!(lines[3], ["other", "UNIMPLEMENTED"], "{stdout}");
    // Bytes that are no DeltaDiscoveryRequest end the stream with an error, never OK.
    for garbage in &lines[4..6] {
        assert_eq!(garbage[0], "garbage", "{stdout}");
        assert!(
            !["OK", "DEADLINE_EXCEEDED"].contains(&garbage[2]),
            "{stdout}\n{stderr}"
        );
    }
    // The hand-written ACK was read as one, not as a rejection.
    let text = common::curl(
        &format!("http://{}/metrics", f.ca.metrics_addr.unwrap()),
        None,
    );
    assert_eq!(
        metric(&text, "pilot_total_xds_rejects").unwrap_or(0.0),
        0.0,
        "{text}"
    );
}

/// What a client sends cannot inflate the CA's logs or its count of rejections: a real NACK is
/// counted and logged once with its reason cut short; replays of it and replies to nonces the
/// CA never sent are counted apart and logged once per stream; requests for unknown types (a
/// type URL of 100 KB) likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_storm_is_counted_apart_and_logged_once() {
    zident_testkit::capture_logs("zident=info");
    let f = Fixture::start().await;
    let mut s = Stream::open(&f, Some(NODE_A_TOKEN)).await.unwrap();
    s.subscribe(ADDRESS, HashMap::new()).await;
    let first = s.next().await;
    let reason = format!("storm-test {}", "x".repeat(1000));
    let nack = |nonce: &str| DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        response_nonce: nonce.into(),
        error_detail: Some(Status {
            code: 3,
            message: reason.clone(),
        }),
        ..Default::default()
    };
    s.send(nack(&first.nonce)).await;
    for _ in 0..100 {
        s.send(nack(&first.nonce)).await;
    }
    let long_nonce = format!("{}-1", "9".repeat(5000));
    for i in 0..400 {
        let nonce = match i % 4 {
            0 => "999-999".to_owned(),
            1 => "made-up".to_owned(),
            2 => long_nonce.clone(),
            _ => "1-0".to_owned(),
        };
        s.send(nack(&nonce)).await;
    }
    let long_type = format!("type.googleapis.com/{}", "y".repeat(100_000));
    for _ in 0..50 {
        s.send(DeltaDiscoveryRequest {
            type_url: long_type.clone(),
            ..Default::default()
        })
        .await;
    }
    let metrics = || {
        common::curl(
            &format!("http://{}/metrics", f.ca.metrics_addr.unwrap()),
            None,
        )
    };
    let ignored = |why: &str| {
        common::series(
            &metrics(),
            &format!("zident_xds_requests_ignored_total{{why=\"{why}\"}}"),
        )
    };
    common::eventually(WAIT, "every request handled", || {
        ignored("unknown_type") >= 50.0
    })
    .await;
    assert_eq!(ignored("unknown_nonce"), 500.0, "{}", metrics());
    assert_eq!(ignored("unknown_type"), 50.0, "{}", metrics());
    let text = metrics();
    assert!(
        text.contains("pilot_total_xds_rejects{type=\"address\"} 1"),
        "one real rejection: {text}"
    );
    let logs = zident_testkit::captured();
    let lines = |needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(lines("storm-test"), 1, "the real NACK, logged once");
    assert_eq!(
        lines("never sent or already had a reply to"),
        1,
        "unknown nonces, logged once"
    );
    assert_eq!(
        lines("for a type zident does not serve"),
        1,
        "the unknown type, logged once"
    );
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_000, "a log line of {longest} bytes");
    assert!(
        logs.contains("more bytes)"),
        "client text is cut short, and says so"
    );
}

/// One caller cannot hold more streams than its cap, nor one connection carry more than its
/// own: the stream past either is refused with RESOURCE_EXHAUSTED naming the flag, counted by
/// cap and logged once; other callers are not affected, and a closed stream frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_per_caller_and_per_connection() {
    zident_testkit::capture_logs("zident=info");
    let f = Fixture::start_with(|c| {
        c.xds = zident_ca::XdsLimits {
            max_streams: 100,
            max_streams_per_caller: 3,
            max_streams_per_connection: 2,
        }
    })
    .await;
    let shared = common::channel(&f.ca).await;
    let a1 = Stream::open_on(shared.clone(), Some(NODE_A_TOKEN))
        .await
        .unwrap();
    let _a2 = Stream::open_on(shared.clone(), Some(NODE_A_TOKEN))
        .await
        .unwrap();
    let full = Stream::open_on(shared.clone(), Some(NODE_A_TOKEN))
        .await
        .err()
        .expect("a third stream on one connection is refused");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full}");
    assert!(
        full.message().contains("--max-xds-streams-per-connection"),
        "{full}"
    );
    let mut a3 = Stream::open(&f, Some(NODE_A_TOKEN)).await.unwrap();
    a3.subscribe(ADDRESS, HashMap::new()).await;
    assert!(
        !a3.next().await.resources.is_empty(),
        "a stream under the caps is served"
    );
    let mut refused = 0;
    for _ in 0..20 {
        let over = Stream::open(&f, Some(NODE_A_TOKEN))
            .await
            .err()
            .expect("a fourth stream of the caller is refused");
        assert_eq!(over.code(), Code::ResourceExhausted, "{over}");
        assert!(
            over.message().contains("--max-xds-streams-per-caller"),
            "{over}"
        );
        refused += 1;
    }
    // Another caller is not affected.
    let mut b = Stream::open(&f, Some(common::NODE_B_TOKEN)).await.unwrap();
    b.subscribe(ADDRESS, HashMap::new()).await;
    assert!(!b.next().await.resources.is_empty());
    // A closed stream frees its place.
    drop(a1);
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(s) = Stream::open(&f, Some(NODE_A_TOKEN)).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reopened.is_some(),
        "the closed stream's place is given back"
    );
    let text = common::curl(
        &format!("http://{}/metrics", f.ca.metrics_addr.unwrap()),
        None,
    );
    let count = |why: &str| {
        common::series(
            &text,
            &format!("zident_xds_streams_refused_total{{why=\"{why}\"}}"),
        )
    };
    assert_eq!(count("per_connection"), 1.0, "{text}");
    assert!(count("per_caller") >= f64::from(refused), "{text}");
    let logs = zident_testkit::captured();
    let said = logs
        .lines()
        .filter(|l| l.contains("xDS stream refused") && l.contains("per-caller"))
        .count();
    assert_eq!(said, 1, "twenty refusals, one line: {logs}");
}
