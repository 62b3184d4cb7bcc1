//! Who is calling the shared Workload API socket. The kernel tells the caller's pid, uid and
//! gid (`SO_PEERCRED`); the pid's network namespace tells its addresses (`/proc/<pid>/net`,
//! which shows the namespace of that process). A caller is the local workload that owns one of
//! those addresses (the same rule the tunnel uses for a connection's source, so one workload
//! has one identity everywhere), or else the workload that declares the caller's user (and
//! group). Anything else is refused, with the reason.

use std::collections::BTreeSet;
use std::net::IpAddr;

use zident_identity::SpiffeId;

use crate::workloads::LocalWorkload;

/// A caller's kernel-given credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Peer {
    /// Its process id (in the agent's pid namespace).
    pub pid: i32,
    /// Its user.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// How a caller was matched to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// An address of its network namespace is the workload's.
    NetworkNamespace,
    /// It runs as the user (and group) the workload declares.
    User,
    /// It reached the workload's own socket.
    Socket,
}

impl Method {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Method::NetworkNamespace => "network_namespace",
            Method::User => "user",
            Method::Socket => "socket",
        }
    }
}

/// Why a caller gets no identity. The caller is told only that it has none; the agent's log
/// says this, with the process, its network namespace and the addresses it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestRefused {
    /// Its network namespace holds addresses of workloads with different identities.
    #[error(
        "pid {pid} (uid {uid}) is in network namespace {netns} holding addresses of workloads with different identities ({}); addresses {addresses}",
        ids.join(", ")
    )]
    AmbiguousNamespace {
        /// The caller's pid.
        pid: i32,
        /// Its uid.
        uid: u32,
        /// Its network namespace.
        netns: String,
        /// The identities its addresses belong to.
        ids: Vec<String>,
        /// The addresses its namespace holds.
        addresses: String,
    },
    /// Neither its addresses nor its user match a workload of this node.
    #[error(
        "pid {pid} (uid {uid}, gid {gid}) is in network namespace {netns} with no workload address (its addresses: {addresses}), and no workload on this node declares its user"
    )]
    NoWorkload {
        /// The caller's pid.
        pid: i32,
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
        /// Its network namespace.
        netns: String,
        /// The addresses its namespace holds.
        addresses: String,
    },
    /// A workload's own socket, reached by another user than the one it runs as.
    #[error("pid {pid} runs as uid {uid}, but {id} is declared to run as uid {owner}")]
    NotTheOwner {
        /// The caller's pid.
        pid: i32,
        /// Its uid.
        uid: u32,
        /// The socket's identity.
        id: String,
        /// The uid the workload runs as.
        owner: u32,
    },
    /// Its user is declared by workloads with different identities.
    #[error(
        "pid {pid} runs as uid {uid}, which workloads with different identities declare ({}); give each its own user",
        ids.join(", ")
    )]
    AmbiguousUser {
        /// The caller's pid.
        pid: i32,
        /// Its uid.
        uid: u32,
        /// The identities that declare the user.
        ids: Vec<String>,
    },
}

/// A caller's identity, or why it has none.
pub type Attested = Result<(SpiffeId, Method), AttestRefused>;

/// Matches `peer` to one of `workloads`.
pub fn attest(peer: Peer, workloads: &[LocalWorkload]) -> Attested {
    let addresses = namespace_addresses(peer.pid);
    let by_address: Vec<&SpiffeId> = workloads
        .iter()
        .filter(|w| w.ips.iter().any(|ip| addresses.contains(ip)))
        .map(|w| &w.id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let names = |ids: &[&SpiffeId]| ids.iter().map(|i| i.as_str().to_owned()).collect();
    match by_address.as_slice() {
        [id] => return Ok(((*id).clone(), Method::NetworkNamespace)),
        [] => {}
        many => {
            return Err(AttestRefused::AmbiguousNamespace {
                pid: peer.pid,
                uid: peer.uid,
                netns: netns(peer.pid),
                ids: names(many),
                addresses: shown(&addresses),
            });
        }
    }
    let by_user: Vec<&SpiffeId> = workloads
        .iter()
        .filter(|w| {
            w.run_as
                .is_some_and(|r| r.uid == peer.uid && r.gid.is_none_or(|g| g == peer.gid))
        })
        .map(|w| &w.id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match by_user.as_slice() {
        [id] => Ok(((*id).clone(), Method::User)),
        [] => Err(AttestRefused::NoWorkload {
            pid: peer.pid,
            uid: peer.uid,
            gid: peer.gid,
            netns: netns(peer.pid),
            addresses: shown(&addresses),
        }),
        many => Err(AttestRefused::AmbiguousUser {
            pid: peer.pid,
            uid: peer.uid,
            ids: names(many),
        }),
    }
}

/// The caller's network namespace as the kernel names it (`net:[4026531840]`).
fn netns(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn shown(addresses: &BTreeSet<IpAddr>) -> String {
    if addresses.is_empty() {
        return "none".into();
    }
    addresses
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The local addresses of `pid`'s network namespace (loopback left out: every namespace has
/// it, so it tells nothing).
pub fn namespace_addresses(pid: i32) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    if let Ok(trie) = std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie")) {
        out.extend(local_v4(&trie));
    }
    if let Ok(inet6) = std::fs::read_to_string(format!("/proc/{pid}/net/if_inet6")) {
        out.extend(local_v6(&inet6));
    }
    out.retain(|a| !a.is_loopback());
    out
}

/// IPv4 addresses a namespace owns: in `fib_trie`, each `|-- a.b.c.d` leaf followed by a
/// `/32 host LOCAL` line.
fn local_v4(trie: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<IpAddr> = None;
    for line in trie.lines() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL")
            && let Some(a) = last
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    out
}

/// IPv6 addresses in `if_inet6`: 32 hex digits first on each line.
fn local_v6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            if hex.len() != 32 {
                return None;
            }
            let mut b = [0u8; 16];
            for (i, chunk) in b.iter_mut().enumerate() {
                *chunk = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
            }
            Some(IpAddr::from(b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unix_users::RunAs;

    const TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.90.0.0
        /24 link UNICAST
     |-- 10.90.0.7
        /32 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.90.0.7
        /32 host LOCAL
";

    fn w(name: &str, sa: &str, ip: &str, run_as: Option<RunAs>) -> LocalWorkload {
        LocalWorkload {
            namespace: "default".into(),
            name: name.into(),
            id: SpiffeId::new(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap(),
            ips: vec![ip.parse().unwrap()],
            run_as,
        }
    }

    #[test]
    fn addresses_of_a_namespace() {
        let v4 = local_v4(TRIE);
        assert_eq!(
            v4,
            [
                "10.90.0.7".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
        let v6 = local_v6(
            "fd000000000000000000000000000007 02 80 00 80     eth0\n00000000000000000000000000000001 01 80 10 80       lo\n",
        );
        assert_eq!(
            v6,
            ["fd00::7".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]
        );
        // This process's own namespace reads, loopback left out.
        assert!(
            namespace_addresses(std::process::id() as i32)
                .iter()
                .all(|a| !a.is_loopback())
        );
    }

    #[test]
    fn a_caller_is_matched_by_user_when_no_address_is_its_own() {
        let me = Peer {
            pid: std::process::id() as i32,
            uid: 4242,
            gid: 4243,
        };
        let ws = [
            w(
                "a",
                "a",
                "203.0.113.1",
                Some(RunAs {
                    uid: 4242,
                    gid: Some(4243),
                }),
            ),
            w("b", "b", "203.0.113.2", None),
        ];
        let (id, how) = attest(me, &ws).unwrap();
        assert_eq!(
            (id.as_str(), how),
            ("spiffe://cluster.local/ns/default/sa/a", Method::User)
        );
        // The wrong group is no match.
        let other = Peer { gid: 1, ..me };
        let err = attest(other, &ws).unwrap_err();
        assert!(
            matches!(
                err,
                AttestRefused::NoWorkload {
                    uid: 4242,
                    gid: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("no workload address"), "{err}");
        // Two identities for one user: refused.
        let both = [
            w(
                "a",
                "a",
                "203.0.113.1",
                Some(RunAs {
                    uid: 4242,
                    gid: None,
                }),
            ),
            w(
                "c",
                "c",
                "203.0.113.3",
                Some(RunAs {
                    uid: 4242,
                    gid: None,
                }),
            ),
        ];
        let err = attest(me, &both).unwrap_err();
        assert!(
            matches!(&err, AttestRefused::AmbiguousUser { uid: 4242, ids, .. } if ids.len() == 2),
            "{err}"
        );
    }
}
