//! Credentials that can be replaced while endpoints use them: every TLS configuration built
//! from a [`crate::Credentials`] resolves its own certificate and its trust anchors through
//! one shared cell, so a renewed certificate or a new CA set applies to the next handshake
//! without a restart (connections already up keep what they were made with, unless the new CA
//! set no longer vouches for their peer: see `Credentials::close_distrusted`).

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::tls::{NetError, provider};

/// One set of credentials, with what the handshakes derive from it.
pub(crate) struct Material {
    pub(crate) ca: Vec<CertificateDer<'static>>,
    pub(crate) certified: Arc<CertifiedKey>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<dyn ServerCertVerifier>,
}

impl Material {
    pub(crate) fn build(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Material, NetError> {
        let mut roots = RootCertStore::empty();
        for c in &ca {
            roots.add(c.clone())?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| NetError::Verifier(e.to_string()))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| NetError::Verifier(e.to_string()))?;
        // Checks the key is one the provider can use and that it matches the certificate, so
        // a half-written renewal (new certificate, old key) is refused instead of installed.
        let certified = CertifiedKey::from_der(chain, key, &provider())?;
        Ok(Material {
            ca,
            certified: Arc::new(certified),
            client_verifier,
            server_verifier,
        })
    }
}

/// The shared cell, and a count of its replacements to wait on. A poisoned lock only means a
/// panic elsewhere while it was held; the material inside is whole either way (it is
/// replaced, never edited).
#[derive(Clone)]
pub(crate) struct Cell {
    material: Arc<RwLock<Arc<Material>>>,
    replaced: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Cell {
    pub(crate) fn new(m: Material) -> Cell {
        Cell {
            material: Arc::new(RwLock::new(Arc::new(m))),
            replaced: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    pub(crate) fn get(&self) -> Arc<Material> {
        self.material
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set(&self, m: Material) {
        self.replace(Arc::new(m));
    }

    pub(crate) fn replace(&self, m: Arc<Material>) {
        *self
            .material
            .write()
            .unwrap_or_else(PoisonError::into_inner) = m;
        self.replaced.send_modify(|n| *n += 1);
    }

    /// A watch that changes whenever the material is replaced (a renewal, a reload).
    pub(crate) fn replacements(&self) -> tokio::sync::watch::Receiver<u64> {
        self.replaced.subscribe()
    }

    /// Whether the CA set in force vouches for `chain` (a peer's, end-entity first) as a
    /// client certificate. Checked at a time within the certificate's validity: a connection
    /// whose certificate expired since its handshake is not what this asks about.
    pub(crate) fn vouches_for(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((end, rest)) = chain.split_first() else {
            return false;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let at = match crate::pki::validity_of_der(end) {
            Some((from, until)) => now.clamp(from, until.max(from)),
            None => return false,
        };
        let at = UnixTime::since_unix_epoch(Duration::from_secs(at.max(0) as u64));
        self.get()
            .client_verifier
            .verify_client_cert(end, rest, at)
            .is_ok()
    }
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCredentials").finish_non_exhaustive()
    }
}

/// The node's own certificate, as a server and as a client.
#[derive(Debug)]
pub(crate) struct LiveCert(pub(crate) Cell);

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get().certified.clone())
    }
}

impl ResolvesClientCert for LiveCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client certificates checked against the CA set in force, then against the revocation
/// list: a revoked certificate is refused with TLS's own `certificate_revoked` alert, which
/// the peer reports as such.
#[derive(Debug)]
pub(crate) struct LiveClientVerifier {
    pub(crate) live: Cell,
    pub(crate) revoked: crate::RevocationList,
}

impl ClientCertVerifier for LiveClientVerifier {
    // Hints are optional (they help a client with several certificates choose); ours have one.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified =
            self.live
                .get()
                .client_verifier
                .verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.revokes(end_entity.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.live
            .get()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.live
            .get()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.live.get().client_verifier.supported_verify_schemes()
    }
}

/// Servers' (masters') certificates checked against the CA set in force.
#[derive(Debug)]
pub(crate) struct LiveServerVerifier(pub(crate) Cell);

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.get().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .get()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .get()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.get().server_verifier.supported_verify_schemes()
    }
}

/// Where a node's credentials live on disk: the CA set, its certificate and its key.
#[derive(Debug, Clone)]
pub struct CredentialFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CredentialFiles {
    /// The three files' contents, as text.
    pub fn read(&self) -> Result<[String; 3], String> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        Ok([read(&self.ca)?, read(&self.cert)?, read(&self.key)?])
    }

    /// Installs a renewed certificate and its key: checked to make whole credentials with
    /// the CA set on disk, then each file replaced by a rename (the key first, written
    /// private), so a reader sees the old pair or the new one, never half of one for long.
    pub fn install(&self, cert_pem: &str, key_pem: &str) -> Result<crate::Credentials, String> {
        let ca = std::fs::read_to_string(&self.ca)
            .map_err(|e| format!("cannot read {}: {e}", self.ca.display()))?;
        let creds = crate::Credentials::from_pem(&ca, cert_pem, key_pem)
            .map_err(|e| format!("the renewed certificate is unusable: {e}"))?;
        // Not installed unless this node's peers will take it and it is still this node's:
        // a certificate of a CA not (yet) in the CA file would cut the node off.
        let leaf = CertificateDer::from(creds.leaf());
        if !creds.vouches_for(std::slice::from_ref(&leaf)) {
            return Err(format!(
                "the renewed certificate is not signed by a CA in {}; keeping the old one",
                self.ca.display()
            ));
        }
        let held = std::fs::read_to_string(&self.cert)
            .ok()
            .and_then(|pem| crate::pki::identity_of_pem(&pem));
        let renewed = crate::Identity::from_der(leaf.as_ref()).ok();
        if held.is_some() && renewed != held {
            return Err(format!(
                "the renewed certificate names {}, not this node's {}; keeping the old one",
                renewed.map_or_else(|| "no identity".into(), |i| i.to_uri()),
                held.map(|i| i.to_uri()).unwrap_or_default()
            ));
        }
        let tmp = |path: &PathBuf| {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".new");
            PathBuf::from(tmp)
        };
        // Both written in full (and synced) before either replaces the old one: a full disk
        // or a crash while writing leaves the old pair whole.
        for (path, text) in [(&self.key, key_pem), (&self.cert, cert_pem)] {
            crate::write_private(&tmp(path), text.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", tmp(path).display()))?;
        }
        for path in [&self.key, &self.cert] {
            std::fs::rename(tmp(path), path)
                .map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
        }
        Ok(creds)
    }
}

/// How often [`follow_files`] looks at the files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Reloads `creds` whenever the files change (a renewal, a new CA set), checking every
/// `every`; never returns. A change that does not make whole credentials (a certificate
/// written before its key, a bad PEM) is logged and retried at the next look, while the
/// credentials in force stay.
pub async fn follow_files(creds: crate::Credentials, files: CredentialFiles, every: Duration) {
    // Not what the files hold now, but nothing: the first look loads them, so what changed
    // between the credentials' loading and this task's start is not missed.
    let mut last: Option<[String; 3]> = None;
    let mut complained: Option<String> = None;
    loop {
        tokio::time::sleep(every).await;
        let now = match files.read() {
            Ok(now) => now,
            Err(e) => {
                if complained.as_ref() != Some(&e) {
                    tracing::warn!("credentials not reloaded: {e}");
                    complained = Some(e);
                }
                continue;
            }
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        let [ca, cert, key] = &now;
        match creds.reload(ca, cert, key) {
            Ok(()) => {
                tracing::info!(
                    cert = %files.cert.display(),
                    ca = %files.ca.display(),
                    "reloaded certificate and trusted CAs"
                );
                last = Some(now);
                complained = None;
            }
            Err(e) => {
                let e = format!("{}: {e}", files.cert.display());
                if complained.as_ref() != Some(&e) {
                    tracing::warn!("credentials not reloaded: {e}");
                    complained = Some(e);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;

    use crate::pki::{Signer, issue, new_ca, renewal_request, validity_of_der};
    use crate::{Credentials, Identity, peer_leaf};

    fn creds(ca_pem: &str, issued: &crate::pki::Issued) -> Credentials {
        Credentials::from_pem(ca_pem, &issued.cert_pem, &issued.key_pem).unwrap()
    }

    /// Connects a client with `client` credentials to `addr`; Ok(the server's leaf) or why not.
    async fn dial(client: &Credentials, addr: SocketAddr) -> Result<Vec<u8>, String> {
        let endpoint = crate::client_endpoint(client, b"t", addr).unwrap();
        let conn = crate::connect(&endpoint, addr)
            .await
            .map_err(|e| e.to_string())?;
        // The server refuses a client certificate after the client's side of the handshake is
        // done: a round trip tells.
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"ping").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(16).await.map_err(|e| e.to_string())?;
        Ok(peer_leaf(&conn).map(|c| c.to_vec()).unwrap_or_default())
    }

    fn serve(server: &Credentials) -> SocketAddr {
        let endpoint =
            crate::server_endpoint("127.0.0.1:0".parse().unwrap(), server, &[b"t"]).unwrap();
        let addr = endpoint.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let _ = recv.read_to_end(16).await;
                        let _ = send.write_all(b"pong").await;
                        let _ = send.finish();
                    }
                });
            }
        });
        addr
    }

    /// A renewed certificate and a new CA set apply to the next handshakes of endpoints that
    /// were built before them: the CA rollover, step by step, with a live server.
    #[tokio::test]
    async fn reloaded_credentials_apply_to_new_handshakes() {
        let (old_ca, new_ca_) = (new_ca("old").unwrap(), new_ca("new").unwrap());
        let master = Identity::Master("m1".into());
        let agent = Identity::Agent("a1".into());
        let server = creds(
            &old_ca.cert_pem,
            &issue(&old_ca, &master, &[], &[]).unwrap(),
        );
        let addr = serve(&server);
        let old_leaf = issue(&old_ca, &agent, &[], &[]).unwrap();
        let old_client = creds(&old_ca.cert_pem, &old_leaf);
        let first = dial(&old_client, addr).await.unwrap();

        // 1. Both CAs trusted everywhere; nothing else changes.
        let both = format!("{}{}", old_ca.cert_pem, new_ca_.cert_pem);
        let new_leaf = issue(&new_ca_, &agent, &[], &[]).unwrap();
        let new_client = creds(&both, &new_leaf);
        assert!(
            dial(&new_client, addr).await.is_err(),
            "the new CA is not trusted yet"
        );
        let server_leaf = issue(&old_ca, &master, &[], &[]).unwrap();
        server
            .reload(&both, &server_leaf.cert_pem, &server_leaf.key_pem)
            .unwrap();
        dial(&new_client, addr).await.unwrap();
        // The old client is told of the new CA too, its own certificate unchanged.
        old_client
            .reload(&both, &old_leaf.cert_pem, &old_leaf.key_pem)
            .unwrap();
        let renewed = dial(&old_client, addr).await.unwrap();
        assert_ne!(
            renewed, first,
            "the server presents its reloaded certificate"
        );

        // 2. The server moves to a leaf of the new CA: clients trusting both still connect.
        let server_new = issue(&new_ca_, &master, &[], &[]).unwrap();
        server
            .reload(&both, &server_new.cert_pem, &server_new.key_pem)
            .unwrap();
        dial(&old_client, addr).await.unwrap();

        // 3. The old CA is dropped: its leaves are refused, the new ones are not.
        server
            .reload(&new_ca_.cert_pem, &server_new.cert_pem, &server_new.key_pem)
            .unwrap();
        assert!(
            dial(&old_client, addr).await.is_err(),
            "old CA still trusted"
        );
        dial(&new_client, addr).await.unwrap();

        // A certificate with another's key is refused, and what was in force stays.
        let other = issue(&new_ca_, &master, &[], &[]).unwrap();
        let mixed = server.reload(&new_ca_.cert_pem, &other.cert_pem, &server_new.key_pem);
        assert!(mixed.is_err());
        dial(&new_client, addr).await.unwrap();
    }

    /// Whether the CA set in force still vouches for a chain accepted earlier: yes while its
    /// CA is in the set (expired since or not), no once it is dropped, and the wait for that
    /// ends with the reload that drops it.
    #[tokio::test]
    async fn a_dropped_ca_no_longer_vouches_for_its_certificates() {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let (old_ca, new_ca_) = (new_ca("old").unwrap(), new_ca("new").unwrap());
        let both = format!("{}{}", old_ca.cert_pem, new_ca_.cert_pem);
        let master = Identity::Master("m1".into());
        let server_leaf = issue(&new_ca_, &master, &[], &[]).unwrap();
        let server = creds(&both, &server_leaf);
        let chain = |pem: &str| -> Vec<CertificateDer<'static>> {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .map(|c| c.unwrap())
                .collect()
        };
        let agent = Identity::Agent("a1".into());
        let old = chain(&issue(&old_ca, &agent, &[], &[]).unwrap().cert_pem);
        let life = Some(std::time::Duration::from_secs(1));
        let short = crate::pki::issue_for(&old_ca, &agent, &[], &[], life).unwrap();
        let expired = chain(&short.cert_pem);
        let new = chain(&issue(&new_ca_, &agent, &[], &[]).unwrap().cert_pem);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(server.vouches_for(&old));
        assert!(
            server.vouches_for(&expired),
            "expiry is not held against it"
        );
        assert!(server.vouches_for(&new));
        assert!(!server.vouches_for(&[]));

        let waiting = tokio::spawn({
            let server = server.clone();
            let old = old.clone();
            async move { server.until_distrusts(old).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        server
            .reload(
                &new_ca_.cert_pem,
                &server_leaf.cert_pem,
                &server_leaf.key_pem,
            )
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the wait ends with the reload")
            .unwrap();
        assert!(!server.vouches_for(&old));
        assert!(!server.vouches_for(&expired));
        assert!(server.vouches_for(&new));
    }

    /// A renewed pair is installed only if the CA file vouches for it and it names the
    /// identity the files held; otherwise the old pair stays as it was.
    #[test]
    fn only_a_trusted_certificate_of_the_same_identity_is_installed() {
        let ca = new_ca("t").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = crate::CredentialFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("me.pem"),
            key: dir.path().join("me.key"),
        };
        let agent = Identity::Agent("a1".into());
        let first = issue(&ca, &agent, &[], &[]).unwrap();
        std::fs::write(&files.ca, &ca.cert_pem).unwrap();
        std::fs::write(&files.cert, &first.cert_pem).unwrap();
        std::fs::write(&files.key, &first.key_pem).unwrap();
        let foreign = issue(&new_ca("other").unwrap(), &agent, &[], &[]).unwrap();
        let err = files
            .install(&foreign.cert_pem, &foreign.key_pem)
            .unwrap_err();
        assert!(err.contains("not signed by a CA in"), "{err}");
        let other = issue(&ca, &Identity::Agent("a2".into()), &[], &[]).unwrap();
        let err = files.install(&other.cert_pem, &other.key_pem).unwrap_err();
        assert!(err.contains("not this node's wasmos://agent/a1"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&files.cert).unwrap(),
            first.cert_pem
        );
        assert_eq!(std::fs::read_to_string(&files.key).unwrap(), first.key_pem);
        let next = issue(&ca, &agent, &[], &[]).unwrap();
        files.install(&next.cert_pem, &next.key_pem).unwrap();
        assert_eq!(std::fs::read_to_string(&files.cert).unwrap(), next.cert_pem);
    }

    /// A renewal request gets a certificate for the identity the signer names (not the one
    /// the request asks for), with the request's key and the lifetime given.
    #[test]
    fn a_renewal_signs_the_request_key_for_the_callers_identity() {
        let ca = new_ca("t").unwrap();
        let other = new_ca("other").unwrap();
        let both = format!("{}{}", other.cert_pem, ca.cert_pem);
        let signer = Signer::from_pem(&both, &ca.key_pem).unwrap();
        assert!(Signer::from_pem(&other.cert_pem, &ca.key_pem).is_err());
        let tenant = Identity::Tenant {
            tenant: "acme".into(),
            user: "alice".into(),
        };
        let (csr, key) = renewal_request().unwrap();
        let life = std::time::Duration::from_secs(3600);
        let cert = signer.sign_renewal(&tenant, &csr, life).unwrap();
        assert_eq!(
            crate::pki::identity_of_pem(&cert).map(|i| i.to_uri()),
            Some(tenant.to_uri())
        );
        let renewed = Credentials::from_pem(&ca.cert_pem, &cert, &key).unwrap();
        let (from, until) = validity_of_der(&renewed.leaf()).unwrap();
        assert!((until - from - 3660).abs() <= 2, "{from} {until}");
        let mut forged = csr.clone();
        let n = forged.len() - 3;
        forged[n] ^= 1;
        assert!(signer.sign_renewal(&tenant, &forged, life).is_err());
        assert!(
            signer
                .sign_renewal(&Identity::Master("m".into()), &csr, life)
                .is_err()
        );
    }
}
