//! IP ranges as policies write them: `10.0.0.0/8`, `2001:db8::/32`, or a bare address.
//!
//! Parsed when the mesh file is read, so a range that cannot be enforced refuses the whole
//! file instead of being dropped later by the tunnel.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a range could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an IP range: {reason} (write e.g. 10.0.0.0/8 or 127.0.0.2)")]
pub struct CidrError {
    input: String,
    reason: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrError {
            input: s.to_owned(),
            reason,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| err("bad address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .map_err(|_| err("bad prefix length"))?,
            None => max,
        };
        if prefix > max {
            return Err(err("prefix length too long for the address family"));
        }
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    /// The range of `prefix` leading bits of `network`; refused when the prefix is longer
    /// than the address family allows (e.g. a range received over xDS).
    pub fn new(network: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError {
                input: format!("{network}/{prefix}"),
                reason: "prefix length too long for the address family",
            });
        }
        Ok(Self { network, prefix })
    }

    /// The address the range was written with.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the range (an IPv4 range never holds an IPv6 address, and back).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        assert!(c("10.0.0.0/8").contains("10.200.1.2".parse().unwrap()));
        assert!(!c("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(c("127.0.0.2").contains("127.0.0.2".parse().unwrap()));
        assert!(!c("127.0.0.2").contains("127.0.0.3".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(c("2001:db8::/32").contains("2001:db8:1::5".parse().unwrap()));
        assert!(!c("2001:db8::/32").contains("10.0.0.1".parse().unwrap()));
        assert!(c("::/0").contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
    }
}
