//! The mesh file: the documented example loads, a ztunnel local config loads, and each kind of
//! mistake is refused with a message that says where.

use std::path::Path;

use zident_mesh::{CallerToken, MeshError, MeshFile, Protocol, Scope, StringMatch};

fn parse(yaml: &str) -> Result<MeshFile, MeshError> {
    MeshFile::parse(Path::new("mesh.yaml"), yaml)
}

#[test]
fn the_documented_example_loads() {
    let mesh = parse(include_str!("mesh-file-example.yaml")).unwrap();
    assert_eq!(mesh.trust_domain.as_str(), "cluster.local");
    assert_eq!(mesh.nodes.len(), 2);
    assert_eq!(mesh.workloads.len(), 2);
    assert_eq!(mesh.workloads[1].protocol, Protocol::Hbone);
    assert_eq!(
        mesh.workloads[1].services["default/backend.default.svc.cluster.local"][&80],
        8080
    );
    assert_eq!(mesh.policies[0].scope, Scope::Namespace);
    assert_eq!(
        mesh.policies[0].rules[0][0][0].principals,
        vec![StringMatch::Exact(
            "cluster.local/ns/default/sa/frontend".into()
        )]
    );
    let on_a: Vec<_> = mesh.identities_on_node("node-a").into_iter().collect();
    assert_eq!(on_a.len(), 1);
    assert_eq!(
        on_a[0].as_str(),
        "spiffe://cluster.local/ns/default/sa/frontend"
    );
}

#[test]
fn a_ztunnel_local_config_loads_unchanged() {
    // Keys zident does not use (waypoint, networkGateway, locality, status, ...) are accepted.
    let yaml = r#"
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
  network: ""
  status: Healthy
  clusterId: Kubernetes
  canonicalName: local
  canonicalRevision: latest
  workloadName: local
  workloadType: deployment
  hostname: ""
  nativeTunnel: false
  capacity: 1
  locality: {region: r1, zone: z1, subzone: ""}
  waypoint: {destination: "/127.0.0.10", hboneMtlsPort: 15008}
  networkGateway: null
  authorizationPolicies: [default/allow-all]
  services:
    "default/example.com": {80: 8080}
policies:
- name: deny-presence
  namespace: default
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - notPrincipals: [{Presence: []}]
        destinationPorts: [9090]
        serviceAccounts: [{namespace: default, serviceAccount: x}]
services:
- name: example
  namespace: default
  hostname: example.com
  vips: ["/127.10.0.1"]
  ports: {80: 8080}
  endpoints: {}
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/other"]
"#;
    let mesh = parse(yaml).unwrap();
    assert_eq!(
        mesh.workloads[0].authorization_policies,
        vec!["default/allow-all"]
    );
    assert_eq!(mesh.services[0].ports[&80], 8080);
    assert!(matches!(
        mesh.policies[0].rules[0][0][0].not_principals[0],
        StringMatch::Presence(_)
    ));
}

/// The error message, which must name what is wrong and, where it can, the line.
fn error_of(yaml: &str) -> String {
    parse(yaml).unwrap_err().to_string()
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let msg = error_of("trustDomain: cluster.local\nnodes:\n- name: a\n  token: t\n  tokn: x\n");
    assert!(msg.contains("tokn") && msg.contains("line 5"), "{msg}");
    let msg = error_of(
        "policies:\n- name: p\n  namespace: d\n  rules:\n  - - - principal: [{Exact: a}]\n",
    );
    assert!(msg.contains("principal") && msg.contains("line 5"), "{msg}");
    let msg = error_of("workload: []\n");
    assert!(msg.contains("workload") && msg.contains("line 1"), "{msg}");
}

#[test]
fn bad_values_are_refused_with_their_line() {
    let msg = error_of("trustDomain: Cluster.Local\n");
    assert!(
        msg.contains("trustDomain") && msg.contains("line 1"),
        "{msg}"
    );
    let msg = error_of("workloads:\n- namespace: a\n  workloadIps: [\"300.1.1.1\"]\n");
    assert!(msg.contains("line 3"), "{msg}");
    let msg = error_of("identities:\n- spiffeId: spiffe://x/a//b\n  token: t\n");
    assert!(
        msg.contains("spiffeId") && msg.contains("empty segment"),
        "{msg}"
    );
    let msg = error_of("workloads:\n- namespace: a\n  protocol: QUIC\n");
    assert!(msg.contains("QUIC") && msg.contains("line 3"), "{msg}");
    let msg = error_of("nodes: [\n");
    assert!(msg.contains("mesh.yaml"), "{msg}");
}

#[test]
fn cross_field_rules() {
    let msg = error_of("nodes:\n- {name: a, token: x, tokenFile: f}\n");
    assert!(
        msg.contains("nodes[0]") && msg.contains("not both"),
        "{msg}"
    );
    let msg = error_of("nodes:\n- {name: a}\n");
    assert!(msg.contains("needs a token"), "{msg}");
    let msg = error_of("nodes:\n- {name: a, token: x}\n- {name: a, token: y}\n");
    assert!(
        msg.contains("nodes[1].name") && msg.contains("twice"),
        "{msg}"
    );
    let msg = error_of("workloads:\n- {namespace: 'bad ns', name: w}\n");
    assert!(msg.contains("workloads[0] (w)"), "{msg}");
    let msg = error_of("workloads:\n- {uid: u, namespace: a}\n- {uid: u, namespace: b}\n");
    assert!(msg.contains("workloads[1].uid"), "{msg}");
}

#[test]
fn tokens_resolve_from_files_relative_to_the_mesh_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/b.token"), "from-file\n").unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(
        &path,
        "nodes:\n- {name: a, token: inline}\n- {name: b, tokenFile: secrets/b.token}\n\
         identities:\n- {spiffeId: 'spiffe://cluster.local/gw', token: gw}\n",
    )
    .unwrap();
    let mesh = MeshFile::load(&path).unwrap();
    let tokens = mesh.resolve_tokens(&path).unwrap();
    assert_eq!(
        tokens,
        vec![
            ("inline".into(), CallerToken::Node("a".into())),
            ("from-file".into(), CallerToken::Node("b".into())),
            (
                "gw".into(),
                CallerToken::Identity("spiffe://cluster.local/gw".parse().unwrap())
            ),
        ]
    );

    std::fs::write(&path, "nodes:\n- {name: a, tokenFile: missing}\n").unwrap();
    let err = MeshFile::load(&path)
        .unwrap()
        .resolve_tokens(&path)
        .unwrap_err();
    assert!(err.to_string().contains("cannot read tokenFile"), "{err}");

    std::fs::write(
        &path,
        "nodes:\n- {name: a, token: same}\n- {name: b, token: same}\n",
    )
    .unwrap();
    let err = MeshFile::load(&path)
        .unwrap()
        .resolve_tokens(&path)
        .unwrap_err();
    assert!(err.to_string().contains("unique"), "{err}");
}

#[test]
fn top_level_errors_find_their_line() {
    let msg = error_of("nodes: []\n\nworkload: []\n");
    assert!(msg.contains("workload") && msg.contains("line 3"), "{msg}");
    let msg = error_of("nodes: []\ntrustDomain: Bad.Domain\n");
    assert!(msg.contains("line 2"), "{msg}");
    let msg = error_of(
        "policies:\n- name: p\n  namespace: d\n  rules:\n  - - - principals: [{Exact: a, Prefix: b}]\n",
    );
    assert!(msg.contains("exactly one of Exact"), "{msg}");
}
