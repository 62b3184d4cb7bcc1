//! The server name an outbound tunnel sends when it reaches a workload through its node's
//! shared HBONE address (`nodes[].address` in the mesh file): the listener there serves many
//! workloads and picks the certificate to present by this name. Through a workload's own
//! address no name is needed (the address decides), and none is sent, as ztunnel sends none.
//!
//! The name is `ip-<address with . and : as ->.hbone.zident`, e.g. `ip-10-0-0-3.hbone.zident`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const SUFFIX: &str = ".hbone.zident";
const PREFIX: &str = "ip-";

/// The server name for the workload at `ip`.
pub fn name_for(ip: IpAddr) -> String {
    let body = match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        // Fully expanded, so the name never has an empty label or a leading dash.
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    };
    format!("{PREFIX}{body}{SUFFIX}")
}

/// The workload address a server name names, if it is one of ours.
pub fn parse(name: &str) -> Option<IpAddr> {
    let body = name
        .to_ascii_lowercase()
        .strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .to_owned();
    let parts: Vec<&str> = body.split('-').collect();
    match parts.len() {
        4 => {
            let octets: Vec<u8> = parts
                .iter()
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some(IpAddr::V4(Ipv4Addr::new(
                octets[0], octets[1], octets[2], octets[3],
            )))
        }
        8 => {
            let segments: Vec<u16> = parts
                .iter()
                .map(|p| u16::from_str_radix(p, 16).ok())
                .collect::<Option<_>>()?;
            let s: [u16; 8] = segments.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(s)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_not_ours() {
        for ip in [
            "10.0.0.3",
            "127.0.0.33",
            "fd00::1",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let name = name_for(ip);
            assert!(
                rustls_pki_types::ServerName::try_from(name.as_str()).is_ok(),
                "{name} must be a valid DNS name"
            );
            assert_eq!(parse(&name), Some(ip), "{name}");
        }
        assert_eq!(
            name_for("10.0.0.3".parse().unwrap()),
            "ip-10-0-0-3.hbone.zident"
        );
        for stranger in [
            "example.com",
            "ip-10-0-0.hbone.zident",
            "ip-10-0-0-300.hbone.zident",
            "ip-10-0-0-3.hbone.zident.evil",
        ] {
            assert_eq!(parse(stranger), None, "{stranger}");
        }
    }
}
