//! Who is on the other end: the role and name a certificate's `wasmos://` URI SAN proves.

use std::fmt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    Master(String),
    Agent(String),
    Operator(String),
    Tenant { tenant: String, user: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer certificate could not be parsed: {0}")]
    Unparsable(String),
    #[error(
        "the peer certificate names no wasmos identity (expected a URI SAN like wasmos://agent/<name>)"
    )]
    NoIdentity,
    #[error(
        "`{0}` is not a wasmos identity URI (wasmos://master|agent|operator/<name> or wasmos://tenant/<tenant>/<user>; names are lowercase letters, digits, `-` and `_`, host names of agents and masters may also have dots between labels)"
    )]
    BadUri(String),
    #[error("the certificate names more than one wasmos identity; it must name exactly one")]
    SeveralIdentities,
    #[error("`default` is the operators' role and cannot be a tenant")]
    ReservedTenant,
}

/// A tenant, user or operator name: it becomes a role, a file name and part of URIs, so only
/// lowercase letters, digits, `-` and `_`, starting with a letter or digit.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// An agent or master name: a host name is natural, so labels of [`valid_name`] joined by
/// single dots (no empty, `.` or `..` labels).
fn valid_host_name(s: &str) -> bool {
    s.len() <= 63 && s.split('.').all(valid_name)
}

impl Identity {
    pub fn to_uri(&self) -> String {
        match self {
            Identity::Master(n) => format!("wasmos://master/{n}"),
            Identity::Agent(n) => format!("wasmos://agent/{n}"),
            Identity::Operator(n) => format!("wasmos://operator/{n}"),
            Identity::Tenant { tenant, user } => format!("wasmos://tenant/{tenant}/{user}"),
        }
    }

    pub fn from_uri(uri: &str) -> Result<Identity, IdentityError> {
        let bad = || IdentityError::BadUri(uri.to_string());
        let rest = uri.strip_prefix("wasmos://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["master", n] if valid_host_name(n) => Ok(Identity::Master(n.to_string())),
            ["agent", n] if valid_host_name(n) => Ok(Identity::Agent(n.to_string())),
            ["operator", n] if valid_name(n) => Ok(Identity::Operator(n.to_string())),
            ["tenant", "default", _] => Err(IdentityError::ReservedTenant),
            ["tenant", t, u] if valid_name(t) && valid_name(u) => Ok(Identity::Tenant {
                tenant: t.to_string(),
                user: u.to_string(),
            }),
            _ => Err(bad()),
        }
    }

    /// Extracts the identity from a DER certificate's `wasmos://` URI SAN; a certificate
    /// naming several is refused, whichever they are.
    pub fn from_der(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?
            .ok_or(IdentityError::NoIdentity)?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.to_ascii_lowercase().starts_with("wasmos:") => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::NoIdentity),
            [one] => Identity::from_uri(one),
            _ => Err(IdentityError::SeveralIdentities),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

/// The identity proven by the peer's (already CA-verified) client certificate.
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity, IdentityError> {
    let leaf = peer_leaf(conn).ok_or(IdentityError::NoCertificate)?;
    Identity::from_der(leaf.as_ref())
}

/// The peer's own certificate (DER), if it presented one.
pub fn peer_leaf(conn: &quinn::Connection) -> Option<rustls_pki_types::CertificateDer<'static>> {
    peer_chain(conn)?.first().cloned()
}

/// The certificates the peer presented, its own first.
pub fn peer_chain(
    conn: &quinn::Connection,
) -> Option<Vec<rustls_pki_types::CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()
        .map(|chain| *chain)
}

/// The channel (ALPN protocol) the peer and we agreed on.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Whether the connection ended because one side closed it on purpose (a clean shutdown of the
/// peer, or our own) rather than by a failure or timeout.
pub fn closed_on_purpose(conn: &quinn::Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_are_refused() {
        for id in [
            Identity::Master("m1".into()),
            Identity::Agent("a-1".into()),
            Identity::Operator("admin".into()),
            Identity::Tenant {
                tenant: "acme".into(),
                user: "bob".into(),
            },
        ] {
            assert_eq!(Identity::from_uri(&id.to_uri()).unwrap(), id);
        }
        assert_eq!(
            Identity::from_uri("wasmos://agent/host-7.dc1").unwrap(),
            Identity::Agent("host-7.dc1".into())
        );
        for bad in [
            "http://agent/a",
            "wasmos://agent/",
            "wasmos://agent/a/b",
            "wasmos://king/a",
            "wasmos://agent/a b",
            "wasmos://tenant/../x",
            "wasmos://tenant/./x",
            "wasmos://tenant/acme/.",
            "wasmos://tenant/ACME/x",
            "wasmos://tenant//x",
            "wasmos://tenant/acme/",
            "wasmos://tenant/a.b/x",
            "wasmos://tenant/default/x",
            "wasmos://operator/Root",
            "wasmos://agent/a..b",
            "wasmos://agent/.a",
            "wasmos://agent/a.",
            "wasmos://tenant/-x/y",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
    }
}
