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
    let msg = error_of("workloads:\n- {namespace: 'bad ns', name: w, node: n}\n");
    assert!(msg.contains("workloads[0] (bad ns/w).namespace"), "{msg}");
    let msg = error_of(
        "workloads:\n- {uid: u, name: a, namespace: a, node: n}\n- {uid: u, name: b, namespace: b, node: n}\n",
    );
    assert!(
        msg.contains("workloads[1] (b/b).uid")
            && msg.contains("also the uid of workloads[0] (a/a)"),
        "{msg}"
    );
}

/// The lines of a small valid mesh, for edits to break.
const GOOD: &str = "\
trustDomain: cluster.local
nodes:
- name: node-a
  token: ta
workloads:
- uid: u1
  name: frontend
  namespace: default
  serviceAccount: frontend
  node: node-a
  workloadIps: [\"127.0.0.2\"]
- uid: u2
  name: backend
  namespace: default
  serviceAccount: backend
  node: node-a
  workloadIps:
  - 127.0.0.3
policies:
- name: p
  namespace: default
  rules:
  - - - sourceIps: [10.0.0.0/8]
";

/// `GOOD` with line `n` (1-based) replaced by `with`.
fn edit(n: usize, with: &str) -> String {
    GOOD.lines()
        .enumerate()
        .map(|(i, l)| if i + 1 == n { with } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that `msg` names the file, `line`, and every one of `says`.
#[track_caller]
fn refused(msg: &str, line: usize, says: &[&str]) {
    assert!(msg.starts_with("mesh file mesh.yaml"), "{msg}");
    assert!(msg.contains(&format!("line {line}")), "line {line}: {msg}");
    for s in says {
        assert!(msg.contains(s), "{s:?}: {msg}");
    }
}

#[test]
fn the_good_mesh_parses() {
    let mesh = parse(GOOD).unwrap();
    assert!(mesh.names_node("node-a") && !mesh.names_node("node-b"));
}

#[test]
fn a_file_that_names_no_node_is_refused() {
    // A truncated save: empty, a lone document marker, or only the trust domain.
    for yaml in [
        "",
        "---\n",
        "---",
        "trustDomain: cluster.local\n",
        "workloads: []\n",
    ] {
        let msg = error_of(yaml);
        assert!(
            msg.contains("names no node") && msg.contains("last good file stays in force"),
            "{yaml:?}: {msg}"
        );
    }
    // ztunnel's local config has no `nodes:`; naming the node on its workloads is enough.
    assert!(parse("workloads:\n- {name: w, namespace: default, node: local}\n").is_ok());
}

#[test]
fn names_follow_kubernetes_rules_so_every_spiffe_id_is_valid() {
    refused(
        &error_of(&edit(9, "  serviceAccount: \"front/end\"")),
        9,
        &[
            "workloads[0] (default/frontend).serviceAccount",
            "DNS-1123 subdomain",
            "front/end",
        ],
    );
    refused(
        &error_of(&edit(8, "  namespace: Default")),
        8,
        &["namespace", "DNS-1123 label", "lowercase"],
    );
    refused(
        &error_of(&edit(7, "  name: ../../etc")),
        7,
        &["workloads[0] (default/../../etc).name", "socket directory"],
    );
    refused(
        &error_of(&edit(21, "  namespace: my_ns")),
        21,
        &["policies[0] (my_ns/p).namespace", "DNS-1123 label"],
    );
}

#[test]
fn a_foreign_trust_domain_is_refused_until_federation_exists() {
    let yaml = GOOD.replace(
        "  node: node-a\n  workloadIps: [",
        "  node: node-a\n  trustDomain: other.org\n  workloadIps: [",
    );
    refused(
        &error_of(&yaml),
        11,
        &[
            "workloads[0] (default/frontend).trustDomain",
            "\"other.org\"",
            "does not federate",
        ],
    );
    // The mesh's own, written out, is fine.
    assert!(
        parse(&GOOD.replace(
            "  node: node-a\n  workloadIps: [",
            "  node: node-a\n  trustDomain: cluster.local\n  workloadIps: ["
        ))
        .is_ok()
    );
    let yaml = edit(4, "  token: ta\n  spiffeId: spiffe://other.org/agent");
    refused(
        &error_of(&yaml),
        5,
        &["nodes[0].spiffeId", "not in the mesh's trust domain"],
    );
    let msg = error_of(
        "nodes: [{name: a, token: t}]\nidentities:\n- {spiffeId: 'spiffe://x.org/gw', token: g}\n",
    );
    refused(&msg, 3, &["identities[0].spiffeId", "x.org"]);
}

#[test]
fn one_address_and_one_uid_per_workload() {
    // backend takes frontend's address: both entries are named, and the line is backend's.
    refused(
        &error_of(&edit(18, "  - 127.0.0.2")),
        18,
        &[
            "workloads[1] (default/backend).workloadIps[0]",
            "127.0.0.2 is also an address of workloads[0] (default/frontend)",
            "other's identity",
        ],
    );
    refused(
        &error_of(&edit(12, "- uid: u1")),
        12,
        &[
            "workloads[1] (default/backend).uid",
            "also the uid of workloads[0] (default/frontend)",
        ],
    );
    // The same address on two networks is two addresses.
    let yaml = edit(18, "  - 127.0.0.2").replace(
        "  serviceAccount: backend\n",
        "  serviceAccount: backend\n  network: other\n",
    );
    assert!(parse(&yaml).is_ok(), "{:?}", parse(&yaml).err());
}

#[test]
fn policies_compile_when_the_file_is_read() {
    let msg = error_of(&edit(23, "  - - - sourceIps: [10.0.0.0/33]"));
    assert!(
        msg.contains("10.0.0.0/33")
            && msg.contains("prefix length too long")
            && msg.contains("line 23"),
        "{msg}"
    );
    let msg = error_of(&edit(23, "  - - - destinationIps: [ten/8]"));
    assert!(msg.contains("\"ten/8\" is not an IP range"), "{msg}");
    let twice = format!("{GOOD}- name: p\n  namespace: default\n");
    refused(
        &error_of(&twice),
        24,
        &[
            "policies[1] (default/p).name",
            "also policies[0]",
            "rename one",
        ],
    );
}

#[test]
fn services_are_checked_too() {
    let base = "nodes: [{name: n, token: t}]\nservices:\n";
    let msg = error_of(&format!(
        "{base}- {{name: s, namespace: default, hostname: s.svc, vips: [\"/not-an-ip\"]}}\n"
    ));
    refused(&msg, 3, &["services[0] (default/s).vips", "not network/ip"]);
    let msg = error_of(&format!(
        "{base}- {{name: s, namespace: default, hostname: s.svc, vips: [\"/10.0.0.1\"]}}\n- {{name: t, namespace: default, hostname: t.svc, vips: [\"/10.0.0.1\"]}}\n"
    ));
    refused(
        &msg,
        4,
        &["services[1] (default/t).vips", "also a VIP of services[0]"],
    );
    let msg = error_of(&format!(
        "{base}- {{name: s, namespace: default, hostname: s.svc, subjectAltNames: [\"spiffe://cluster.local/a//b\"]}}\n"
    ));
    refused(&msg, 3, &["subjectAltNames", "empty segment"]);
    let msg = error_of("nodes: [{name: n, token: t}]\ncaCertificates: [\"not pem\"]\n");
    refused(&msg, 2, &["caCertificates[0]", "PEM"]);
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

#[test]
fn the_example_in_the_docs_loads() {
    let doc = include_str!("../../../docs/mesh-file.md");
    let start = doc.find("```yaml\n").expect("a YAML example") + "```yaml\n".len();
    let end = start + doc[start..].find("```").expect("its end");
    let mesh = parse(&doc[start..end]).unwrap();
    assert_eq!(mesh.workloads[0].workload_type, "deployment");
    assert_eq!(mesh.nodes[0].address, Some("10.0.0.7".parse().unwrap()));
}

#[test]
fn a_running_component_refuses_an_edit_of_its_trust_domain() {
    let running = zident_identity::TrustDomain::new("cluster.local").unwrap();
    let path = Path::new("mesh.yaml");
    let same = parse("trustDomain: cluster.local\nnodes:\n- {name: a, token: t}\n").unwrap();
    assert!(
        same.keeps_trust_domain(&running, &zident_mesh::MeshOrigin::file(path), "the CA")
            .is_ok()
    );
    let other = parse("trustDomain: other.example\nnodes:\n- {name: a, token: t}\n").unwrap();
    let msg = other
        .keeps_trust_domain(&running, &zident_mesh::MeshOrigin::file(path), "the agent")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("trustDomain")
            && msg.contains("from cluster.local to other.example")
            && msg.contains("restart the agent"),
        "{msg}"
    );
}

#[test]
fn dns_certificates_are_read_and_every_bad_entry_is_refused_by_name() {
    let base = "nodes: [{name: n, token: t}]\ncertificates:\n";
    let mesh = parse(&format!(
        "{base}- secretName: webhook-tls\n  dnsNames: [hook.ns.svc, Hook.NS.svc.cluster.local, \"*.hooks.example.com\"]\n"
    ))
    .unwrap();
    assert_eq!(mesh.certificates[0].secret_name, "webhook-tls");
    assert_eq!(mesh.certificates[0].dns_names.len(), 3);

    for (entry, says) in [
        (
            "- {secretName: a, dnsNames: []}",
            &["certificates[0].dnsNames", "at least one"][..],
        ),
        (
            "- {secretName: a, dnsNames: [\"*\"]}",
            &["certificates[0].dnsNames[0]"],
        ),
        ("- {secretName: a, dnsNames: [\"*.com\"]}", &["two labels"]),
        (
            "- {secretName: a, dnsNames: [\"a.*.example.com\"]}",
            &["leftmost label"],
        ),
        (
            "- {secretName: a, dnsNames: [\"*a.example.com\"]}",
            &["leftmost label"],
        ),
        (
            "- {secretName: a, dnsNames: [\"under_score.example.com\"]}",
            &["dnsNames[0]"],
        ),
        (
            "- {secretName: a, dnsNames: [\"-a.example.com\"]}",
            &["dnsNames[0]"],
        ),
        (
            "- {secretName: a, dnsNames: [a.example.com, A.example.com]}",
            &["dnsNames[1]", "twice"],
        ),
        (
            "- {secretName: ../etc, dnsNames: [a.example.com]}",
            &["certificates[0].secretName"],
        ),
        (
            "- {secretName: a/b, dnsNames: [a.example.com]}",
            &["secretName"],
        ),
        (
            "- {secretName: a, dnsNames: [a.example.com]}\n- {secretName: a, dnsNames: [b.example.com]}",
            &["certificates[1].secretName", "used twice"],
        ),
    ] {
        let msg = error_of(&format!("{base}{entry}\n"));
        for s in says {
            assert!(msg.contains(s), "{entry}: {s:?} not in {msg}");
        }
    }
    let long = format!("{}.example.com", "a".repeat(64));
    let msg = error_of(&format!("{base}- {{secretName: a, dnsNames: [{long}]}}\n"));
    assert!(msg.contains("dnsNames[0]"), "{msg}");
}
