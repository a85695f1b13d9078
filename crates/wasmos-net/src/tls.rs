//! QUIC endpoints with mutual TLS 1.3: both sides present a certificate signed by the cluster CA,
//! and the ALPN names the channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::live::Material;
use crate::revoke::RevocationList;

/// The DNS name in every master certificate; clients verify masters by it, whatever address
/// they dial.
pub const MASTER_SERVER_NAME: &str = "master.wasmos";

/// The application close code a master gives a connection it refuses for who the peer is (an
/// identity it cannot read, or a channel that identity may not use).
pub const REFUSED: u32 = 1;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("cannot bind UDP socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("no master answered at {0} within 5s (is it running, and is this the right address?)")]
    ConnectTimeout(SocketAddr),
}

/// A node's trust anchors and its own certificate chain and key, and the revocation list its
/// verifiers consult (empty unless the node is given the replicated one). Clones share the
/// credentials: [`Credentials::reload`] replaces them for every endpoint built from any clone.
#[derive(Clone)]
pub struct Credentials {
    live: crate::live::Cell,
    revoked: RevocationList,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NetError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(NetError::Pem {
            what,
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn material(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Material, NetError> {
    Material::build(
        certs("the CA certificate", ca_pem)?,
        certs("the certificate", cert_pem)?,
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| NetError::Pem {
            what: "the private key",
            detail: e.to_string(),
        })?,
    )
}

impl Credentials {
    /// `ca_pem` may hold several CA certificates (during a CA rollover, the old and the new):
    /// a peer's certificate is accepted if any of them signed it.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, NetError> {
        Ok(Credentials {
            live: crate::live::Cell::new(material(ca_pem, cert_pem, key_pem)?),
            revoked: RevocationList::default(),
        })
    }

    /// Replaces the CA set, certificate and key for every handshake from now on, if they make
    /// whole credentials (the key matches the certificate); otherwise changes nothing.
    pub fn reload(&self, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), NetError> {
        self.live.set(material(ca_pem, cert_pem, key_pem)?);
        Ok(())
    }

    /// Takes `other`'s CA set, certificate and key for every handshake from now on (both
    /// were checked whole when `other` was made).
    pub fn adopt(&self, other: &Credentials) {
        self.live.replace(other.live.get());
    }

    /// The certificate in force (its end-entity certificate, DER; the chain is never empty).
    pub fn leaf(&self) -> Vec<u8> {
        let m = self.live.get();
        m.certified
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// Whether the CA set in force still vouches for the client certificate `chain` (its
    /// own first) was accepted with: not once its CA has been dropped from the set (the last
    /// step of a rollover). Its expiry since is not held against it.
    pub fn vouches_for(&self, chain: &[CertificateDer<'_>]) -> bool {
        self.live.vouches_for(chain)
    }

    /// Returns once the CA set in force no longer vouches for `chain` (never, if it always
    /// does): what a server holding a connection open races against.
    pub async fn until_distrusts(&self, chain: Vec<CertificateDer<'static>>) {
        let mut replaced = self.live.replacements();
        let mut cas = None;
        loop {
            // Checked again only when the CA set changed, not at every renewal.
            let now = Some(self.ca_certs());
            if now != cas {
                if !self.vouches_for(&chain) {
                    return;
                }
                cas = now;
            }
            if replaced.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Closes, whenever the CA set is replaced, the connections of `live` whose client
    /// certificates the new set no longer vouches for; never returns. Each check verifies a
    /// chain, on this task: a change of CA set is a rare, operator-made event.
    pub async fn close_distrusted(&self, live: &crate::LiveConnections) {
        let mut replaced = self.live.replacements();
        let mut cas = self.ca_certs();
        while replaced.changed().await.is_ok() {
            // A renewal replaces the certificate, not the CA set: nothing to check again.
            let now = self.ca_certs();
            if now == cas {
                continue;
            }
            cas = now;
            let closed = live.close_unless(|conn| {
                crate::peer_chain(conn).is_some_and(|chain| self.vouches_for(&chain))
            });
            if closed > 0 {
                tracing::info!(
                    closed,
                    "closed connections whose certificates the trusted CAs no longer vouch for"
                );
            }
        }
    }

    /// The CA certificates in force (DER).
    pub fn ca_certs(&self) -> Vec<CertificateDer<'static>> {
        self.live.get().ca.clone()
    }

    /// These credentials with `list` as the revocation list every verifier built from them
    /// consults (shared: updating `list` later reaches them all).
    pub fn with_revocations(mut self, list: RevocationList) -> Self {
        self.revoked = list;
        self
    }

    /// The revocation list these credentials' verifiers consult.
    pub fn revocations(&self) -> RevocationList {
        self.revoked.clone()
    }

    /// The CA chain check, then the revocation list: for servers verifying their clients.
    pub(crate) fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, NetError> {
        Ok(Arc::new(crate::live::LiveClientVerifier {
            live: self.live.clone(),
            revoked: self.revoked.clone(),
        }))
    }

    /// The node's own certificate, as servers and clients present it.
    pub(crate) fn cert_resolver(&self) -> Arc<crate::live::LiveCert> {
        Arc::new(crate::live::LiveCert(self.live.clone()))
    }

    /// Servers' certificates checked against the CA set in force: for clients.
    pub(crate) fn server_verifier(&self) -> Arc<crate::live::LiveServerVerifier> {
        Arc::new(crate::live::LiveServerVerifier(self.live.clone()))
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn transport(keep_alive: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Agents hold one connection for their lifetime; keep-alives keep NAT bindings and let both
    // sides notice a dead peer within the idle timeout. A killed master sends nothing (UDP has
    // no reset): the idle timeout is the last resort, a watchful client (see
    // [`watchful_client_endpoint`]) notices sooner.
    t.keep_alive_interval(Some(keep_alive));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(6_000).into()));
    Arc::new(t)
}

/// How often a watchful client pings its master: the master's acknowledgements are what tell
/// the client it is alive, so a silence of a few of these means it may be gone.
pub const WATCHFUL_KEEP_ALIVE: Duration = Duration::from_millis(150);

/// A server endpoint that requires a client certificate signed by the cluster CA.
pub fn server_endpoint(
    addr: SocketAddr,
    creds: &Credentials,
    alpns: &[&[u8]],
) -> Result<quinn::Endpoint, NetError> {
    let config = server_config(creds, alpns)?;
    crate::udp::bind_endpoint(addr, Some(config)).map_err(|source| NetError::Bind { addr, source })
}

/// What a server endpoint requires of its clients and presents to them.
pub(crate) fn server_config(
    creds: &Credentials,
    alpns: &[&[u8]],
) -> Result<quinn::ServerConfig, NetError> {
    let verifier = creds.client_verifier()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(creds.cert_resolver());
    no_resumption(&mut tls);
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let quic = QuicServerConfig::try_from(tls).map_err(|e| NetError::Verifier(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(Duration::from_secs(1)));
    Ok(config)
}

/// No session resumption: a resumed session carries the client certificate of its first
/// handshake without verifying it again, which would let a certificate revoked since back in.
/// Every connection pays a full handshake instead (clients hold theirs open for long).
pub(crate) fn no_resumption(tls: &mut rustls::ServerConfig) {
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
}

/// A client endpoint that presents `creds` and speaks `alpn`.
pub fn client_endpoint(
    creds: &Credentials,
    alpn: &[u8],
    remote: SocketAddr,
) -> Result<quinn::Endpoint, NetError> {
    endpoint_with(creds, alpn, remote, Duration::from_secs(1))
}

/// A client endpoint whose connections ping every [`WATCHFUL_KEEP_ALIVE`], for clients that
/// watch their master's liveness (agents): a silent connection is then a sign within half a
/// second, not the idle timeout's six.
pub fn watchful_client_endpoint(
    creds: &Credentials,
    alpn: &[u8],
    remote: SocketAddr,
) -> Result<quinn::Endpoint, NetError> {
    endpoint_with(creds, alpn, remote, WATCHFUL_KEEP_ALIVE)
}

fn endpoint_with(
    creds: &Credentials,
    alpn: &[u8],
    remote: SocketAddr,
    keep_alive: Duration,
) -> Result<quinn::Endpoint, NetError> {
    let config = client_config(creds, alpn, keep_alive)?;
    let bind = bind_for(remote);
    let mut endpoint = crate::udp::bind_endpoint(bind, None)
        .map_err(|source| NetError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// What a client endpoint presents and trusts.
pub(crate) fn client_config(
    creds: &Credentials,
    alpn: &[u8],
    keep_alive: Duration,
) -> Result<quinn::ClientConfig, NetError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(creds.server_verifier())
        .with_client_cert_resolver(creds.cert_resolver());
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| NetError::Verifier(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(keep_alive));
    Ok(config)
}

/// The any-address of `remote`'s family, port 0: where a client endpoint binds.
pub fn bind_for(remote: SocketAddr) -> SocketAddr {
    match remote {
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        SocketAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
    }
}

/// Dials a master and completes the handshake, naming the cause when it fails.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<quinn::Connection, NetError> {
    connect_within(endpoint, addr, CONNECT_TIMEOUT).await
}

/// [`connect`], giving up after `timeout` (a dead master answers nothing at all).
pub async fn connect_within(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, NetError> {
    let connecting = endpoint
        .connect(addr, MASTER_SERVER_NAME)
        .map_err(|e| NetError::Connect {
            addr,
            detail: e.to_string(),
        })?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(NetError::Connect {
            addr,
            detail: describe(&e),
        }),
        Err(_) => Err(NetError::ConnectTimeout(addr)),
    }
}

/// Whether a connection ended because a peer refused the other's certificate or identity: a
/// TLS alert (QUIC's crypto error codes, 0x100 to 0x1ff) or a master's [`REFUSED`] close.
/// Trying again cannot help, so callers stop at once and say why.
pub fn is_refusal(e: &quinn::ConnectionError) -> bool {
    let crypto = |code: u64| (0x100..0x200).contains(&code);
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(t.code.into()),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code.into()),
        quinn::ConnectionError::ApplicationClosed(a) => a.error_code == REFUSED.into(),
        _ => false,
    }
}

/// Turns a connection error into one line that says what most likely went wrong.
pub fn describe(e: &quinn::ConnectionError) -> String {
    let text = e.to_string();
    // TLS's certificate_revoked alert (44), or a master closing a session whose certificate
    // was revoked since.
    if text.contains("Revoked") || text.contains("error 44") || text.contains("certificate revoked")
    {
        return format!(
            "this certificate was revoked by an operator of the cluster ({text}); ask for a new one"
        );
    }
    if text.contains("no longer trusted") {
        return format!(
            "this certificate's CA is no longer trusted by the cluster ({text}); ask for a certificate of its new CA"
        );
    }
    let certificate_problem = text.contains("certificate")
        || text.contains("UnknownIssuer")
        || text.contains("crypto")
        || text.contains("handshake");
    if certificate_problem {
        format!(
            "TLS handshake failed ({text}); the peer's certificate is not signed by this cluster's CA, or ours is not"
        )
    } else {
        text
    }
}
