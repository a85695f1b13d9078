//! The network allow-list in the WASI sockets layer: outbound TCP connections to the granted
//! destinations only; no listening, no accepting, no UDP.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use wasmos_proto::NetRule;
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

pub(crate) fn permits(allowed: &Allowed, addr: SocketAddr, usage: SocketAddrUse) -> bool {
    match usage {
        SocketAddrUse::TcpConnect => {
            let ip = addr.ip().to_canonical();
            allowed.rules.contains(&(ip, Some(addr.port()))) || allowed.rules.contains(&(ip, None))
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
        let ok = |a: &str, u| permits(&allowed, a.parse().unwrap(), u);
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
}
