//! The conversion both ends share: a mesh sent as xDS resources and read back is the same
//! mesh; a change sends only what changed; a resource that does not read is refused by name.

use std::path::Path;

use prost::Message;
use zident_identity::TrustDomain;
use zident_mesh::MeshFile;
use zident_proto::istio_security as sec;
use zident_xds::{ADDRESS, AUTHORIZATION, MESH, NODE, Resource, Snapshot};

const MESH_YAML: &str = r#"
trustDomain: example.org
caCertificates: []
nodes:
  - name: node-a
    token: secret-a
    address: 10.1.0.1
  - name: node-b
    token: secret-b
    spiffeId: spiffe://example.org/node/node-b
workloads:
  - uid: cluster1//Pod/default/frontend
    name: frontend
    namespace: default
    serviceAccount: frontend
    node: node-a
    workloadIps: ["10.1.0.10", "fd00::10"]
    protocol: HBONE
    workloadName: frontend
    workloadType: deployment
    canonicalName: frontend
    canonicalRevision: v1
    clusterId: cluster1
    user: 1001
    group: apps
  - name: backend
    namespace: shop
    node: node-b
    workloadIps: ["10.2.0.10"]
    protocol: HBONE
    status: Unhealthy
    services:
      shop/backend.shop.svc.cluster.local:
        80: 8080
    authorizationPolicies: ["shop/only-frontend"]
services:
  - name: backend
    namespace: shop
    hostname: backend.shop.svc.cluster.local
    vips: ["/10.96.0.10", "net1/10.96.0.11"]
    ports:
      80: 8080
    subjectAltNames: ["spiffe://example.org/ns/shop/sa/backend"]
    canonical: true
policies:
  - name: only-frontend
    namespace: shop
    scope: WorkloadSelector
    action: Allow
    rules:
      - - - principals: [{Exact: "example.org/ns/default/sa/frontend"}]
            notSourceIps: ["10.9.0.0/16"]
            destinationPorts: [8080]
          - namespaces: [{Prefix: "team-"}]
            notPrincipals: [{Presence: []}]
  - name: deny-debug
    namespace: shop
    scope: Namespace
    action: Deny
    dryRun: true
    rules:
      - - - notDestinationPorts: [80]
            serviceAccounts: [{namespace: default, serviceAccount: debug}]
"#;

fn mesh(yaml: &str) -> MeshFile {
    MeshFile::parse(Path::new("mesh.yaml"), yaml).expect("the test mesh is valid")
}

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

#[test]
fn a_mesh_read_back_is_the_same_mesh() {
    let sent = mesh(MESH_YAML);
    let snapshot = Snapshot::from_mesh(&sent);
    assert_eq!(snapshot.count(MESH), 1);
    assert_eq!(snapshot.count(NODE), 2);
    assert_eq!(snapshot.count(ADDRESS), 3, "two workloads and one service");
    assert_eq!(snapshot.count(AUTHORIZATION), 2);
    // Names as ztunnel keys them.
    assert!(
        snapshot
            .get(ADDRESS, "cluster1//Pod/default/frontend")
            .is_some()
    );
    assert!(
        snapshot
            .get(ADDRESS, "Kubernetes//Pod/shop/backend")
            .is_some()
    );
    assert!(
        snapshot
            .get(ADDRESS, "shop/backend.shop.svc.cluster.local")
            .is_some()
    );
    assert!(snapshot.get(AUTHORIZATION, "shop/only-frontend").is_some());

    let received = snapshot
        .to_mesh(&td())
        .expect("every resource reads")
        .received(&zident_mesh::MeshOrigin::ControlPlane("test:15012".into()))
        .expect("the received mesh passes the mesh rules");
    assert_eq!(
        received.trust_domain.as_str(),
        "example.org",
        "taken from the Mesh resource"
    );
    // Resources arrive keyed by name, so entries come back in name order.
    let by_name = |mut v: Vec<zident_mesh::Authorization>| {
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    assert_eq!(
        by_name(received.policies.clone()),
        by_name(sent.policies.clone())
    );
    assert_eq!(received.services, sent.services);
    assert_eq!(received.nodes.len(), 2);
    for (r, s) in received.nodes.iter().zip(&sent.nodes) {
        assert_eq!(
            (&r.name, r.address, &r.spiffe_id),
            (&s.name, s.address, &s.spiffe_id)
        );
        assert_eq!(
            (&r.token, &r.token_file),
            (&None, &None),
            "tokens never travel"
        );
    }
    let mut expected = sent.workloads.clone();
    // A workload without a uid is given the name it is sent under.
    expected[1].uid = "Kubernetes//Pod/shop/backend".into();
    expected.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut got = received.workloads.clone();
    got.sort_by(|a, b| a.uid.cmp(&b.uid));
    assert_eq!(got, expected);

    // The on-disk copy reads back to the same resources.
    let back = Snapshot::from_bytes(&snapshot.to_bytes()).expect("the cache reads");
    assert_eq!(back, snapshot);
}

#[test]
fn an_edit_changes_only_the_resources_it_touches() {
    let before = Snapshot::from_mesh(&mesh(MESH_YAML));
    let edited = MESH_YAML.replace("10.2.0.10", "10.2.0.11").replace(
        "  - name: deny-debug",
        "  - name: deny-other\n    namespace: shop\n    action: Deny\n  - name: deny-debug",
    );
    let after = Snapshot::from_mesh(&mesh(&edited));
    let addresses = before.delta(&after, ADDRESS);
    assert_eq!(
        addresses
            .changed
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["Kubernetes//Pod/shop/backend"]
    );
    assert!(addresses.removed.is_empty());
    let policies = before.delta(&after, AUTHORIZATION);
    assert_eq!(policies.changed.len(), 1);
    assert_eq!(policies.changed[0].name, "shop/deny-other");
    assert!(before.delta(&after, NODE).is_empty());
    assert!(before.delta(&after, MESH).is_empty());

    let back = after.delta(&before, AUTHORIZATION);
    assert_eq!(back.removed, ["shop/deny-other"]);

    // A client reconnecting with what it held gets the same answer.
    let held = before
        .of(ADDRESS)
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let again = after.delta_from_versions(&held, ADDRESS);
    assert_eq!(again.changed.len(), 1);
    assert!(again.removed.is_empty());

    // Applying the delta on the receiving side gives the newer snapshot.
    let mut client = before.clone();
    for t in zident_xds::TYPES {
        let d = before.delta(&after, t);
        client.apply(
            t,
            d.changed.iter().map(|r| (**r).clone()).collect(),
            &d.removed,
        );
    }
    assert_eq!(client, after);

    // Built from the one before, the newer snapshot is equal, and shares every unchanged
    // resource with it (one allocation for both) while the edited one is its own.
    let shared = Snapshot::from_mesh_sharing(&mesh(&edited), Some(&before));
    assert_eq!(shared, after);
    for t in zident_xds::TYPES {
        for r in shared.of(t) {
            let old = before.get(t, &r.name);
            let same_bytes = old.is_some_and(|o| o.value == r.value);
            assert_eq!(
                old.is_some_and(|o| std::sync::Arc::ptr_eq(o, r)),
                same_bytes,
                "{t} {}",
                r.name
            );
        }
    }
}

#[test]
fn a_resource_that_does_not_read_is_refused_by_name() {
    let mut snapshot = Snapshot::from_mesh(&mesh(MESH_YAML));
    // An action this version does not know must never be read as ALLOW.
    let policy = sec::Authorization {
        name: "future".into(),
        namespace: "shop".into(),
        action: 7,
        ..Default::default()
    };
    snapshot.apply(
        AUTHORIZATION,
        vec![Resource::new("shop/future".into(), policy.encode_to_vec())],
        &[],
    );
    let err = snapshot.to_mesh(&td()).unwrap_err();
    assert_eq!(err.name, "shop/future");
    assert_eq!(
        err.problem,
        zident_xds::Problem::Value(zident_xds::BadValue::Action(7)),
        "{err}"
    );

    let mut snapshot = Snapshot::from_mesh(&mesh(MESH_YAML));
    snapshot.apply(
        ADDRESS,
        vec![Resource::new("broken".into(), vec![0xff, 0xff, 0xff])],
        &[],
    );
    let err = snapshot.to_mesh(&td()).unwrap_err();
    assert!(err.to_string().contains("not a valid message"), "{err}");
}

#[test]
fn a_received_mesh_is_held_to_the_mesh_rules() {
    // Two workloads claiming one address: refused as a file would be.
    let yaml = MESH_YAML.replace("10.2.0.10", "10.1.0.10");
    let parsed: Result<MeshFile, _> = MeshFile::parse(Path::new("m.yaml"), &yaml);
    assert!(parsed.is_err(), "the file itself is refused");
    // Build the same view from resources, as a control plane that is not zident could send.
    let good = Snapshot::from_mesh(&mesh(MESH_YAML));
    let mut bad = good.clone();
    let other = mesh(&MESH_YAML.replace("10.2.0.10", "10.3.0.10"));
    let mut clash = other.workloads[0].clone();
    clash.uid = "intruder".into();
    clash.name = "intruder".into();
    let mut m = other.clone();
    m.workloads = vec![clash];
    let intruder = Snapshot::from_mesh(&m);
    let r = intruder.get(ADDRESS, "intruder").unwrap();
    bad.apply(ADDRESS, vec![(**r).clone()], &[]);
    let err = bad
        .to_mesh(&td())
        .unwrap()
        .received(&zident_mesh::MeshOrigin::ControlPlane("test:15012".into()))
        .unwrap_err();
    assert!(err.to_string().contains("10.1.0.10"), "{err}");
}
