//! Authorization semantics, case by case: scopes, DENY before ALLOW, the default allow, every
//! match field and its negation, dry runs, and policies that cannot be enforced.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{authorizer, id};
use zident_mesh::MeshFile;
use zident_tunnel::{Authorizer, Connection, Destination};

/// Decides a connection from `src` (identity path, e.g. `ns/default/sa/frontend`) at 127.0.0.2
/// to a workload in namespace `ns` at `dst`.
fn check(
    a: &Authorizer,
    src: Option<&str>,
    ns: &str,
    selected: &[&str],
    dst: &str,
) -> (bool, String) {
    let src_id = src.map(id);
    let selected: Vec<String> = selected.iter().map(|s| s.to_string()).collect();
    let d = a.authorize(
        Destination {
            namespace: ns,
            selected: &selected,
        },
        &Connection {
            source: src_id.as_ref(),
            source_addr: "127.0.0.2".parse().unwrap(),
            destination: dst.parse::<SocketAddr>().unwrap(),
        },
    );
    (d.allowed, d.reason)
}

const FE: Option<&str> = Some("ns/default/sa/frontend");
const OTHER: Option<&str> = Some("ns/other/sa/x");
const DST: &str = "127.0.0.3:8080";

#[test]
fn no_policy_allows_everything() {
    let a = authorizer("  []\n");
    let (ok, reason) = check(&a, FE, "default", &[], DST);
    assert!(ok);
    assert!(reason.contains("no ALLOW policy applies"), "{reason}");
}

#[test]
fn an_allow_policy_must_match_and_scopes_decide_where_it_applies() {
    let a = authorizer(
        "- name: only-frontend\n  namespace: default\n  scope: Namespace\n  action: Allow\n  \
rules:\n  - - - principals: [{Exact: \"cluster.local/ns/default/sa/frontend\"}]\n",
    );
    assert!(check(&a, FE, "default", &[], DST).0);
    let (ok, reason) = check(&a, OTHER, "default", &[], DST);
    assert!(!ok);
    assert!(
        reason.contains("no ALLOW policy matched") && reason.contains("default/only-frontend"),
        "{reason}"
    );
    // No identity at all: denied.
    assert!(!check(&a, None, "default", &[], DST).0);
    // The policy is scoped to namespace default: other namespaces are unaffected.
    assert!(check(&a, OTHER, "payments", &[], DST).0);
}

#[test]
fn deny_wins_over_allow() {
    let a = authorizer(
        "- name: allow-all\n  namespace: default\n  scope: Global\n  action: Allow\n  rules: [[]]\n\
- name: no-other\n  namespace: default\n  scope: Global\n  action: Deny\n  \
rules:\n  - - - namespaces: [{Exact: other}]\n",
    );
    assert!(check(&a, FE, "default", &[], DST).0);
    let (ok, reason) = check(&a, OTHER, "default", &[], DST);
    assert!(!ok);
    assert_eq!(reason, "denied by DENY policy default/no-other");
}

#[test]
fn workload_selector_policies_apply_only_to_workloads_that_name_them() {
    let a = authorizer(
        "- name: lock\n  namespace: default\n  scope: WorkloadSelector\n  action: Deny\n  rules: [[]]\n",
    );
    assert!(check(&a, FE, "default", &[], DST).0);
    assert!(!check(&a, FE, "default", &["default/lock"], DST).0);
}

#[test]
fn empty_rules_match_nothing_but_an_empty_clause_matches() {
    // ALLOW with no rules: nothing matches, so nothing is allowed (Istio's allow-nothing).
    let a = authorizer(
        "- name: nothing\n  namespace: default\n  scope: Global\n  action: Allow\n  rules: []\n",
    );
    assert!(!check(&a, FE, "default", &[], DST).0);
    // ALLOW with one rule of no clauses: everything matches.
    let a = authorizer(
        "- name: all\n  namespace: default\n  scope: Global\n  action: Allow\n  rules: [[]]\n",
    );
    assert!(check(&a, FE, "default", &[], DST).0);
    // A clause holding only an empty match does not match.
    let a = authorizer(
        "- name: empty-match\n  namespace: default\n  scope: Global\n  action: Allow\n  rules: [[[{}]]]\n",
    );
    assert!(!check(&a, FE, "default", &[], DST).0);
}

#[test]
fn every_match_field_and_its_negation() {
    let allow = |m: &str| {
        authorizer(&format!(
            "- name: p\n  namespace: default\n  scope: Global\n  action: Allow\n  rules:\n  - - - {m}\n"
        ))
    };
    let cases: &[(&str, Option<&str>, &str, bool)] = &[
        (
            "principals: [{Prefix: \"cluster.local/ns/default/\"}]",
            FE,
            DST,
            true,
        ),
        (
            "principals: [{Suffix: \"/sa/frontend\"}]",
            OTHER,
            DST,
            false,
        ),
        ("principals: [{Presence: []}]", FE, DST, true),
        ("principals: [{Presence: []}]", None, DST, false),
        (
            "notPrincipals: [{Exact: \"cluster.local/ns/default/sa/frontend\"}]",
            FE,
            DST,
            false,
        ),
        (
            "notPrincipals: [{Exact: \"cluster.local/ns/default/sa/frontend\"}]",
            OTHER,
            DST,
            true,
        ),
        ("namespaces: [{Exact: default}]", FE, DST, true),
        ("namespaces: [{Exact: default}]", OTHER, DST, false),
        ("notNamespaces: [{Exact: other}]", OTHER, DST, false),
        (
            "serviceAccounts: [{namespace: default, serviceAccount: frontend}]",
            FE,
            DST,
            true,
        ),
        (
            "serviceAccounts: [{namespace: default, serviceAccount: frontend}]",
            None,
            DST,
            false,
        ),
        (
            "notServiceAccounts: [{namespace: default, serviceAccount: frontend}]",
            FE,
            DST,
            false,
        ),
        ("sourceIps: [\"127.0.0.0/24\"]", FE, DST, true),
        ("sourceIps: [\"10.0.0.0/8\"]", FE, DST, false),
        ("notSourceIps: [\"127.0.0.2\"]", FE, DST, false),
        ("destinationIps: [\"127.0.0.3\"]", FE, DST, true),
        ("notDestinationIps: [\"127.0.0.0/8\"]", FE, DST, false),
        ("destinationPorts: [8080]", FE, DST, true),
        ("destinationPorts: [9090]", FE, DST, false),
        ("notDestinationPorts: [8080]", FE, DST, false),
        (
            "{namespaces: [{Exact: default}], destinationPorts: [9090]}",
            FE,
            DST,
            false,
        ),
    ];
    for (m, src, dst, want) in cases {
        let m = if m.starts_with('{') {
            m.to_string()
        } else {
            format!("{{{m}}}")
        };
        let a = allow(&m);
        assert_eq!(
            check(&a, *src, "default", &[], dst).0,
            *want,
            "{m} from {src:?}"
        );
    }
    // Clauses AND, matches within a clause OR.
    let a = authorizer(
        "- name: p\n  namespace: default\n  scope: Global\n  action: Allow\n  rules:\n  \
- - [{namespaces: [{Exact: other}]}, {namespaces: [{Exact: default}]}]\n    \
- [{destinationPorts: [8080]}]\n",
    );
    assert!(check(&a, FE, "default", &[], DST).0);
    assert!(!check(&a, FE, "default", &[], "127.0.0.3:9090").0);
}

#[test]
fn dry_run_policies_are_reported_but_never_decide() {
    let yaml = "trustDomain: cluster.local\nnodes: [{name: n, token: t}]\npolicies:\n\
- name: try-deny\n  namespace: default\n  scope: Global\n  action: Deny\n  dryRun: true\n  rules: [[]]\n";
    let mesh = MeshFile::parse(Path::new("m.yaml"), yaml).unwrap();
    let a = Authorizer::new(&mesh);
    let fe = id("ns/default/sa/frontend");
    let d = a.authorize(
        Destination {
            namespace: "default",
            selected: &[],
        },
        &Connection {
            source: Some(&fe),
            source_addr: "127.0.0.2".parse().unwrap(),
            destination: DST.parse().unwrap(),
        },
    );
    assert!(d.allowed);
    assert_eq!(
        d.dry_run,
        vec!["dry-run policy default/try-deny would deny".to_string()]
    );
}

#[test]
fn policies_that_cannot_be_enforced_never_reach_the_tunnel() {
    // The mesh file is refused whole when it is read, on the CA and on every agent alike, so
    // the tunnel never holds a policy it would have to drop.
    let bad = "trustDomain: cluster.local\nnodes: [{name: n, token: t}]\npolicies:\n\
- name: p\n  namespace: default\n  rules:\n  - - - sourceIps: [\"10.0.0.0/40\"]\n";
    let err = MeshFile::parse(Path::new("m.yaml"), bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10.0.0.0/40") && err.contains("prefix length") && err.contains("line 7"),
        "{err}"
    );
    let twice = "trustDomain: cluster.local\nnodes: [{name: n, token: t}]\npolicies:\n\
- {name: p, namespace: default, rules: []}\n- {name: p, namespace: default, rules: []}\n";
    let err = MeshFile::parse(Path::new("m.yaml"), twice)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("policies[1] (default/p).name")
            && err.contains("also policies[0]")
            && err.contains("line 5"),
        "{err}"
    );
}
