//! HTTPS with the cluster's mutual TLS: the master's HTTP/JSON API accepts TCP connections
//! through [`HttpsAcceptor`], which requires a client certificate signed by the cluster CA and
//! returns the identity it proves, as the QUIC endpoints do.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::Identity;
use crate::tls::{Credentials, NetError, provider};

/// A TLS stream accepted by [`HttpsAcceptor`].
pub type HttpsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct HttpsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    revoked: crate::RevocationList,
    /// The CA set in force, to drop connections whose CA it no longer trusts.
    creds: Credentials,
}

impl std::fmt::Debug for HttpsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsAcceptor").finish_non_exhaustive()
    }
}

impl HttpsAcceptor {
    pub fn new(creds: &Credentials) -> Result<HttpsAcceptor, NetError> {
        let verifier = creds.client_verifier()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(creds.cert_resolver());
        crate::tls::no_resumption(&mut tls);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            revoked: creds.revocations(),
            creds: creds.clone(),
        })
    }

    /// Returns once the certificate of `stream`'s client is revoked, or its CA is no longer
    /// trusted: a server keeping the connection open (keep-alive, a subscription's stream)
    /// drops it then.
    pub fn until_revoked(
        &self,
        stream: &HttpsStream,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let chain: Vec<_> = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let list = self.revoked.clone();
        let creds = self.creds.clone();
        async move {
            match chain.first().map(|c| c.as_ref().to_vec()) {
                Some(der) => {
                    tokio::select! {
                        () = list.until_revokes(der) => {}
                        () = creds.until_distrusts(chain) => {}
                    }
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Completes the handshake; the error names what went wrong (no or a foreign certificate,
    /// no wasmos identity in it, a client too slow).
    pub async fn accept(&self, tcp: TcpStream) -> Result<(HttpsStream, Identity), String> {
        let accept = self.inner.accept(tcp).into_fallible();
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err((e, tcp))) => {
                tokio::spawn(close_gently(tcp));
                return Err(format!("TLS handshake failed: {e}"));
            }
            Err(_) => return Err("TLS handshake timed out".into()),
        };
        let identity = {
            let (_, conn) = stream.get_ref();
            let cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or("no client certificate")?;
            if self.revoked.revokes(cert.as_ref()) {
                tokio::spawn(close_gently(stream.into_inner().0));
                return Err("certificate revoked".into());
            }
            Identity::from_der(cert.as_ref()).map_err(|e| e.to_string())?
        };
        Ok((stream, identity))
    }
}

/// Closes a refused connection so the client reads the TLS alert that says why: a TLS 1.3
/// client sends its first request with its last handshake message, and a socket closed with
/// that request unread resets the connection, which throws the alert away on the client's
/// side. So: end the sending side after the alert, and read (and drop) what the client sent
/// until it closes, for a moment at most.
async fn close_gently(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
