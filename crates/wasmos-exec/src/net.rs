//! The network allow-list in the WASI sockets layer: outbound TCP connections to the granted
//! destinations only; no listening, no accepting, no UDP.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use wasmos_proto::{Cidr, EgressRule, NetRule};
use wasmtime_wasi::sockets::SocketAddrUse;

/// The granted destinations as addresses: names are resolved once, when the task starts, so a
/// later DNS change cannot widen what it may reach.
#[derive(Debug, Default)]
pub(crate) struct Allowed {
    rules: BTreeSet<(IpAddr, Option<u16>)>,
}

pub(crate) async fn resolve(rules: &[NetRule]) -> Allowed {
    let mut allowed = Allowed::default();
    for rule in rules {
        if let Ok(ip) = rule.host.parse::<IpAddr>() {
            allowed.rules.insert((ip, rule.port));
            continue;
        }
        // The port given to the resolver is irrelevant: only the addresses are kept.
        match tokio::net::lookup_host((rule.host.as_str(), rule.port.unwrap_or(0))).await {
            Ok(addrs) => {
                for a in addrs {
                    allowed.rules.insert((a.ip(), rule.port));
                }
            }
            Err(e) => tracing::warn!(%rule, "network grant does not resolve: {e}"),
        }
    }
    allowed
}

/// What a task may reach beyond its grants' say-so: the operators' rules (the agent's, then
/// the role's, first match decides), then the built-in protection of the agent's host and
/// its local networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Tried in order; the first rule that matches allows or denies.
    pub rules: Vec<EgressRule>,
    /// Denied unless a rule allows them: see [`EgressPolicy::protected_defaults`].
    pub protected: Vec<Cidr>,
}

impl EgressPolicy {
    /// Loopback, link-local (cloud metadata lives at 169.254.169.254), multicast, broadcast,
    /// unspecified, and every address of the agent's own interfaces.
    pub fn protected_defaults(own: &[IpAddr]) -> Vec<Cidr> {
        let mut out: Vec<Cidr> = [
            "127.0.0.0/8",
            "::1/128",
            "169.254.0.0/16",
            "fe80::/10",
            "224.0.0.0/4",
            "ff00::/8",
            "255.255.255.255/32",
            "0.0.0.0/8",
            "::/128",
        ]
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
        out.extend(own.iter().map(|ip| Cidr {
            addr: ip.to_canonical(),
            prefix: if ip.to_canonical().is_ipv4() { 32 } else { 128 },
        }));
        out
    }

    pub fn permits(&self, addr: SocketAddr) -> bool {
        if let Some(rule) = self.rules.iter().find(|r| r.matches(addr)) {
            return rule.allow;
        }
        !self.protected.iter().any(|c| c.contains(addr.ip()))
    }
}

pub(crate) fn permits(
    allowed: &Allowed,
    policy: &EgressPolicy,
    addr: SocketAddr,
    usage: SocketAddrUse,
) -> bool {
    match usage {
        SocketAddrUse::TcpConnect => {
            let ip = addr.ip().to_canonical();
            let granted = allowed.rules.contains(&(ip, Some(addr.port())))
                || allowed.rules.contains(&(ip, None));
            // The address actually dialled, after any name resolution, meets the policy.
            granted && policy.permits(SocketAddr::new(ip, addr.port()))
        }
        // The implicit bind a connect performs: any local address, an ephemeral port.
        SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_granted_destinations_and_implicit_binds_pass() {
        let rules: Vec<NetRule> = ["127.0.0.1:8080", "10.0.0.1:*", "localhost:9000"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let allowed = resolve(&rules).await;
        let open = EgressPolicy::default();
        let ok = |a: &str, u| permits(&allowed, &open, a.parse().unwrap(), u);
        assert!(ok("127.0.0.1:8080", SocketAddrUse::TcpConnect));
        assert!(!ok("127.0.0.1:8081", SocketAddrUse::TcpConnect));
        assert!(ok("10.0.0.1:22", SocketAddrUse::TcpConnect));
        assert!(
            ok("127.0.0.1:9000", SocketAddrUse::TcpConnect),
            "localhost resolved"
        );
        assert!(
            ok("[::ffff:127.0.0.1]:8080", SocketAddrUse::TcpConnect),
            "v4-mapped"
        );
        assert!(ok("0.0.0.0:0", SocketAddrUse::TcpBind));
        assert!(!ok("0.0.0.0:8080", SocketAddrUse::TcpBind));
        assert!(!ok("127.0.0.1:8080", SocketAddrUse::TcpListen));
        assert!(!ok("127.0.0.1:8080", SocketAddrUse::UdpSend));
    }

    #[tokio::test]
    async fn the_host_and_local_networks_are_out_of_reach_unless_allowed() {
        let rules: Vec<NetRule> = [
            "127.0.0.1:*",
            "169.254.169.254:80",
            "10.0.0.1:5432",
            "192.0.2.7:443",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        let allowed = resolve(&rules).await;
        let own: IpAddr = "192.0.2.7".parse().unwrap();
        let mut policy = EgressPolicy {
            rules: Vec::new(),
            protected: EgressPolicy::protected_defaults(&[own]),
        };
        let ok = |p: &EgressPolicy, a: &str| {
            permits(&allowed, p, a.parse().unwrap(), SocketAddrUse::TcpConnect)
        };
        assert!(!ok(&policy, "127.0.0.1:8080"), "loopback");
        assert!(
            !ok(&policy, "[::ffff:127.0.0.1]:8080"),
            "v4-mapped loopback"
        );
        assert!(!ok(&policy, "169.254.169.254:80"), "cloud metadata");
        assert!(!ok(&policy, "192.0.2.7:443"), "the agent's own address");
        assert!(ok(&policy, "10.0.0.1:5432"), "granted and not protected");
        // An operator allows loopback port 8080 (say, a sidecar) and denies 10/8.
        policy.rules = vec![
            EgressRule::parse(true, "127.0.0.1:8080").unwrap(),
            EgressRule::parse(false, "10.0.0.0/8").unwrap(),
        ];
        assert!(ok(&policy, "127.0.0.1:8080"));
        assert!(!ok(&policy, "127.0.0.1:8081"), "other ports stay protected");
        assert!(
            !ok(&policy, "10.0.0.1:5432"),
            "denied by rule though granted"
        );
        // A rule never widens the task's own grants.
        policy.rules = vec![EgressRule::parse(true, "0.0.0.0/0").unwrap()];
        assert!(!ok(&policy, "8.8.8.8:53"));
    }
}
