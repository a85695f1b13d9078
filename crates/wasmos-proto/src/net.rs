//! Network grants: the `host:port` patterns a task may connect to. Everything else is denied.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One allowed destination: a host (IP address or DNS name) and a port, or any port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetRule {
    pub host: String,
    /// `None` allows every port of the host.
    pub port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a network grant (expected HOST:PORT or HOST:*, e.g. 10.0.0.5:5432, example.com:443, [::1]:8080)"
)]
pub struct NetRuleError(String);

impl FromStr for NetRule {
    type Err = NetRuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || NetRuleError(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
            Some(_) => return Err(err()),
            None => host,
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')));
        if !host_ok {
            return Err(err());
        }
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(err)?),
        };
        Ok(NetRule {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => f.write_str(":*"),
        }
    }
}

/// An address block: `10.0.0.0/8`, `fe80::/10`, or one address (`127.0.0.1` is `/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` (IPv4-mapped IPv6 addresses taken as IPv4) lies in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(self.prefix)))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(u32::from(self.prefix)))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            format!(
                "`{s}` is not an address block (expected e.g. 10.0.0.0/8, fe80::/10 or 127.0.0.1)"
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
        };
        // An IPv4-mapped block (::ffff:a.b.c.d/p) is the IPv4 block a.b.c.d/(p - 96); one
        // shorter than the mapped range covers more than IPv4 and is refused.
        match (addr, addr.to_canonical()) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => Ok(Cidr {
                addr: IpAddr::V4(v4),
                prefix: prefix.checked_sub(96).ok_or_else(err)?,
            }),
            _ => Ok(Cidr { addr, prefix }),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One egress rule: destinations in `net` (on `ports`, all ports when `None`) are allowed or
/// denied. Rules are tried in order and the first that matches decides; see
/// `docs/security.md` for how agents' and roles' rules combine with the built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EgressRule {
    pub allow: bool,
    pub net: Cidr,
    /// An inclusive port range.
    pub ports: Option<(u16, u16)>,
}

impl EgressRule {
    /// Parses `CIDR`, `CIDR:PORT` or `CIDR:LOW-HIGH` (IPv6 blocks with a port in brackets:
    /// `[fd00::/8]:443`) as an allow or deny rule.
    pub fn parse(allow: bool, s: &str) -> Result<EgressRule, String> {
        let err = || {
            format!(
                "`{s}` is not an egress rule (expected CIDR, CIDR:PORT or CIDR:LOW-HIGH, e.g. 10.0.0.0/8:5432, 127.0.0.1, [fd00::/8]:443)"
            )
        };
        let (net, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(err)?;
            let ports = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(err)?),
            };
            (net, ports)
        } else if s.matches(':').count() == 1 {
            let (net, p) = s.split_once(':').ok_or_else(err)?;
            (net, Some(p))
        } else {
            (s, None)
        };
        let net: Cidr = net.parse().map_err(|_| err())?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(err);
        let ports = match ports {
            None | Some("*") => None,
            Some(p) => match p.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (port(lo)?, port(hi)?);
                    if lo > hi {
                        return Err(err());
                    }
                    Some((lo, hi))
                }
                None => {
                    let p = port(p)?;
                    Some((p, p))
                }
            },
        };
        Ok(EgressRule { allow, net, ports })
    }

    /// Whether this rule speaks about `addr`.
    pub fn matches(&self, addr: std::net::SocketAddr) -> bool {
        self.net.contains(addr.ip())
            && self
                .ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&addr.port()))
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allow { "allow " } else { "deny " })?;
        match self.ports {
            None => write!(f, "{}", self.net),
            Some(_) if self.net.addr.is_ipv6() => write!(f, "[{}]", self.net),
            Some(_) => write!(f, "{}", self.net),
        }?;
        match self.ports {
            Some((lo, hi)) if lo == hi => write!(f, ":{lo}"),
            Some((lo, hi)) => write!(f, ":{lo}-{hi}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_wildcards() {
        let r: NetRule = "10.0.0.5:5432".parse().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("10.0.0.5", Some(5432)));
        let r: NetRule = "example.com:*".parse().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("example.com", None));
        let r: NetRule = "[::1]:8080".parse().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", Some(8080)));
        assert_eq!(r.to_string(), "[::1]:8080");
        for bad in [
            "nonsense",
            "host:0",
            "host:99999",
            ":80",
            "a b:80",
            "[zz]:80",
            "host:",
        ] {
            assert!(bad.parse::<NetRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn egress_rules_parse_and_match() {
        let r = EgressRule::parse(true, "10.0.0.0/8:5432").unwrap();
        assert!(r.matches("10.1.2.3:5432".parse().unwrap()));
        assert!(!r.matches("10.1.2.3:5433".parse().unwrap()));
        assert!(!r.matches("11.0.0.1:5432".parse().unwrap()));
        assert_eq!(r.to_string(), "allow 10.0.0.0/8:5432");
        let r = EgressRule::parse(false, "127.0.0.1").unwrap();
        assert!(r.matches("127.0.0.1:80".parse().unwrap()));
        assert!(
            r.matches("[::ffff:127.0.0.1]:80".parse().unwrap()),
            "v4-mapped"
        );
        assert!(!r.matches("127.0.0.2:80".parse().unwrap()));
        let r = EgressRule::parse(true, "[fe80::/10]:443-444").unwrap();
        assert!(r.matches("[fe80::1]:444".parse().unwrap()));
        assert!(!r.matches("[fe80::1]:445".parse().unwrap()));
        assert_eq!(r.to_string(), "allow [fe80::/10]:443-444");
        let r = EgressRule::parse(true, "0.0.0.0/0").unwrap();
        assert!(r.matches("8.8.8.8:53".parse().unwrap()));
        assert!(!r.matches("[2001:db8::1]:53".parse().unwrap()));
        // An IPv4-mapped block is that IPv4 block, not (wrapping) all of IPv4.
        let r = EgressRule::parse(true, "::ffff:127.0.0.2").unwrap();
        assert_eq!(r.to_string(), "allow 127.0.0.2/32");
        assert!(r.matches("127.0.0.2:80".parse().unwrap()));
        assert!(!r.matches("127.0.0.1:80".parse().unwrap()));
        let r = EgressRule::parse(true, "::ffff:10.0.0.0/104").unwrap();
        assert!(r.matches("10.9.9.9:80".parse().unwrap()));
        assert!(!r.matches("11.0.0.1:80".parse().unwrap()));
        for bad in [
            "::ffff:10.0.0.0/95",
            "10.0.0.0/33",
            "10.0.0.0/8:0",
            "host:80",
            "10.0.0.1:9-8",
            "[::1/129]",
            "",
        ] {
            assert!(EgressRule::parse(true, bad).is_err(), "{bad}");
        }
    }
}
