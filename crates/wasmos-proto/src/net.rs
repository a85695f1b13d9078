//! Network grants: the `host:port` patterns a task may connect to. Everything else is denied.

use std::fmt;
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
}
