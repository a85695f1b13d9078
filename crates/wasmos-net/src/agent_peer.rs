//! Agent-to-agent connections: agents serve the outputs they keep to other agents. Agents'
//! certificates are client certificates only (so no agent can pose as a master), so the
//! dialing agent checks the serving agent's chain to the cluster CA as a client certificate's,
//! and then that it names exactly the agent it meant to reach.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::tls::{Credentials, NetError, bind_for, describe, provider, transport};
use crate::{Identity, peer_identity};

/// The name the dialing agent asks for; the verifier checks the identity instead.
const AGENT_SERVER_NAME: &str = "agent.wasmos";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Accepts a server certificate that is a valid client certificate of the cluster CA naming
/// an agent.
#[derive(Debug)]
struct AgentCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ServerCertVerifier for AgentCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match Identity::from_der(end_entity.as_ref()) {
            Ok(Identity::Agent(_)) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client endpoint for dialing other agents (of `remote`'s address family) on `alpn`,
/// presenting this agent's certificate.
pub fn agent_peer_client(
    creds: &Credentials,
    alpn: &[u8],
    remote: SocketAddr,
) -> Result<quinn::Endpoint, NetError> {
    // The revocations these credentials carry apply here too: a revoked agent cannot serve.
    let inner = creds.client_verifier()?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AgentCertVerifier { inner }))
        .with_client_cert_resolver(creds.cert_resolver());
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| NetError::Verifier(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(Duration::from_secs(1)));
    let bind = bind_for(remote);
    let mut endpoint = crate::udp::bind_endpoint(bind, None)
        .map_err(|source| NetError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Dials agent `agent` at `addr`; fails unless the certificate there names exactly it.
pub async fn connect_agent(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    agent: &str,
) -> Result<quinn::Connection, NetError> {
    let failed = |detail: String| NetError::Connect { addr, detail };
    let connecting = endpoint
        .connect(addr, AGENT_SERVER_NAME)
        .map_err(|e| failed(e.to_string()))?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(failed(describe(&e))),
        Err(_) => return Err(failed(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    };
    match peer_identity(&conn) {
        Ok(Identity::Agent(name)) if name == agent => Ok(conn),
        Ok(other) => {
            conn.close(crate::REFUSED.into(), b"not the agent asked for");
            Err(failed(format!(
                "the peer is {}, not agent {agent}",
                other.to_uri()
            )))
        }
        Err(e) => {
            conn.close(crate::REFUSED.into(), b"no identity");
            Err(failed(e.to_string()))
        }
    }
}
