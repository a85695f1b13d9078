//! The cluster PKI: a CA and the certificates it signs, each carrying a `wasmos://` URI SAN that
//! names the holder's role. `wasmos dev` and `wasmos cert` both mint certificates here.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Identity;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CA key or certificate is unreadable: {0}")]
    BadCa(String),
    #[error("the issued certificate cannot be used: {0}")]
    Unusable(String),
    #[error("not a valid certificate signing request: {0}")]
    BadRequest(String),
}

/// A CA certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CaBundle {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").finish_non_exhaustive()
    }
}

/// An issued certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

pub fn new_ca(cluster: &str) -> Result<CaBundle, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // Named apart from the cluster's other CAs (a rollover trusts two at once): its creation
    // time, and a random part in case two are made in the same second.
    let made = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut nonce = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| PkiError::BadCa("no randomness for the CA's name".into()))?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    dn.push(
        DnType::CommonName,
        format!("wasmos cluster CA ({cluster}, {made}-{nonce})"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Credentials for `who`, freshly issued by `ca` with no extra names: for tests, benchmarks
/// and clients made in-process.
pub fn issue_credentials(ca: &CaBundle, who: &Identity) -> Result<crate::Credentials, PkiError> {
    let issued = issue(ca, who, &[], &[])?;
    crate::Credentials::from_pem(&ca.cert_pem, &issued.cert_pem, &issued.key_pem)
        .map_err(|e| PkiError::Unusable(e.to_string()))
}

/// The longest lifetime a leaf may be given (about 50 years).
pub const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(50 * 365 * 86_400);

/// How long a leaf `issue` makes is valid when no lifetime is given: until 2074.
pub const FOREVER: Option<std::time::Duration> = None;

/// Issues a certificate for `who`, valid until 2074. Only masters serve: theirs is a TLS server
/// and client certificate with the DNS name every client verifies them by, plus `dns` and `ips`
/// (for HTTPS clients that dial an address). Agents', operators' and tenants' are client
/// certificates only, with no names to serve under: no leaf but a master's can pose as one.
pub fn issue(
    ca: &CaBundle,
    who: &Identity,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<Issued, PkiError> {
    issue_for(ca, who, dns, ips, FOREVER)
}

/// [`issue`] with a lifetime from now (`None`: until 2074).
pub fn issue_for(
    ca: &CaBundle,
    who: &Identity,
    dns: &[String],
    ips: &[IpAddr],
    lifetime: Option<std::time::Duration>,
) -> Result<Issued, PkiError> {
    let params = leaf_params(who, dns, ips, lifetime)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &CaBundle) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::BadCa(e.to_string()))?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| PkiError::BadCa(e.to_string()))
}

fn leaf_params(
    who: &Identity,
    dns: &[String],
    ips: &[IpAddr],
    lifetime: Option<std::time::Duration>,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, who.to_uri());
    params.distinguished_name = dn;
    let mut sans = vec![SanType::URI(who.to_uri().try_into()?)];
    let master = matches!(who, Identity::Master(_));
    if master {
        sans.push(SanType::DnsName(crate::MASTER_SERVER_NAME.try_into()?));
        for d in dns {
            sans.push(SanType::DnsName(d.as_str().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if master {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    match lifetime {
        None => {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2074, 1, 1);
        }
        Some(life) => {
            if life > MAX_LIFETIME {
                return Err(PkiError::Unusable(format!(
                    "a lifetime of at most {} days",
                    MAX_LIFETIME.as_secs() / 86_400
                )));
            }
            // A minute's slack before now, for peers whose clocks run a little behind.
            let now = std::time::SystemTime::now();
            params.not_before = (now - std::time::Duration::from_secs(60)).into();
            params.not_after = (now + life).into();
        }
    }
    Ok(params)
}

/// A certificate signing request for a fresh key, and that key (PEM): what a node sends to
/// be renewed. The request proves the key is the sender's; the names in the certificate come
/// from the sender's current certificate, not from the request.
pub fn renewal_request() -> Result<(Vec<u8>, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "wasmos renewal request");
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// What a master signs renewals with: the CA whose key it was given (`--ca-key`), found
/// among the CAs it trusts (during a rollover it trusts several).
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate whose key signs (DER).
    ca: rustls_pki_types::CertificateDer<'static>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// The CA among `ca_pem`'s certificates whose key `key_pem` is.
    pub fn from_pem(ca_pem: &str, key_pem: &str) -> Result<Signer, PkiError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let cas: Vec<_> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .flatten()
            .collect();
        Signer::from_ders(&cas, key_pem)
    }

    /// The CA among `cas` whose key `key_pem` is.
    pub fn from_ders(
        cas: &[rustls_pki_types::CertificateDer<'_>],
        key_pem: &str,
    ) -> Result<Signer, PkiError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadCa(e.to_string()))?;
        let public = rcgen::PublicKeyData::subject_public_key_info(&key);
        for der in cas {
            let matches = X509Certificate::from_der(der)
                .is_ok_and(|(_, cert)| cert.public_key().raw == public.as_slice());
            if matches {
                let issuer = Issuer::from_ca_cert_der(der, key)
                    .map_err(|e| PkiError::BadCa(e.to_string()))?;
                return Ok(Signer {
                    issuer,
                    ca: der.clone().into_owned(),
                });
            }
        }
        Err(PkiError::BadCa(
            "the CA key belongs to none of the trusted CA certificates".into(),
        ))
    }

    /// Signs the key of `csr` (whose signature must verify) into a client certificate for
    /// `who`, valid for `lifetime` from now. Masters' certificates are not renewed this way:
    /// they carry the names a master serves under, which come from its current certificate
    /// ([`Signer::sign_master_renewal`]).
    pub fn sign_renewal(
        &self,
        who: &Identity,
        csr: &[u8],
        lifetime: std::time::Duration,
    ) -> Result<String, PkiError> {
        if matches!(who, Identity::Master(_)) {
            return Err(PkiError::BadRequest(
                "a master's certificate is renewed by its peers, not as a client's".into(),
            ));
        }
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr);
        let request = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let params = leaf_params(who, &[], &[], Some(lifetime))?;
        Ok(params.signed_by(&request.public_key, &self.issuer)?.pem())
    }

    /// Signs the key of `csr` into a master's certificate for the master whose current
    /// certificate is `current` (DER; the session proved it holds it): the same identity and
    /// the same names it serves under, valid for `lifetime` from now. Only a certificate this
    /// CA signed, valid now, is renewed: masters cannot be revoked, so a leaked master key of
    /// an old CA must not buy a certificate of the new one during a rollover (masters move
    /// to a new CA by hand).
    pub fn sign_master_renewal(
        &self,
        current: &[u8],
        csr: &[u8],
        lifetime: std::time::Duration,
    ) -> Result<String, PkiError> {
        let who = Identity::from_der(current)
            .map_err(|e| PkiError::BadRequest(format!("the current certificate: {e}")))?;
        if !matches!(who, Identity::Master(_)) {
            return Err(PkiError::BadRequest(format!("{who} is not a master")));
        }
        self.check_signed_now(current).map_err(|e| {
            PkiError::BadRequest(format!(
                "{who}'s current certificate is not one this master's CA signed, or is not valid now ({e}); give it a certificate of this CA by hand"
            ))
        })?;
        let (dns, ips) = served_names(current)
            .ok_or_else(|| PkiError::BadRequest("the current certificate is unreadable".into()))?;
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr);
        let request = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let params = leaf_params(&who, &dns, &ips, Some(lifetime))?;
        Ok(params.signed_by(&request.public_key, &self.issuer)?.pem())
    }
}

impl Signer {
    /// Whether `der` was signed by this signer's CA and is valid now.
    fn check_signed_now(&self, der: &[u8]) -> Result<(), String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| e.to_string())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        let cert = rustls_pki_types::CertificateDer::from(der);
        verifier
            .verify_client_cert(&cert, &[], rustls_pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The DNS names (but the one every master has) and addresses a master's certificate (DER)
/// serves under.
fn served_names(der: &[u8]) -> Option<(Vec<String>, Vec<IpAddr>)> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) if *d != crate::MASTER_SERVER_NAME => {
                    dns.push(d.to_string())
                }
                GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                    Ok(v4) => ips.push(IpAddr::from(v4)),
                    Err(_) => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                },
                _ => {}
            }
        }
    }
    Some((dns, ips))
}

/// The first certificate of a PEM text, as DER.
pub fn der_of_pem(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// A PEM certificate's subject and issuer names, as text.
pub fn names_of_pem(pem: &str) -> Option<(String, String)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = der_of_pem(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some((cert.subject().to_string(), cert.issuer().to_string()))
}

/// When a certificate (DER) starts and stops being valid, in seconds since the epoch.
pub fn validity_of_der(der: &[u8]) -> Option<(i64, i64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

pub fn serial_of_pem(pem: &str) -> Option<String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    crate::serial_of_der(der.as_ref())
}

/// The identity the first certificate of a PEM file names, if it names one.
pub fn identity_of_pem(pem: &str) -> Option<Identity> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    Identity::from_der(der.as_ref()).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rustls_pki_types::{CertificateDer, pem::PemObject};

    #[test]
    fn issued_certificates_carry_their_identity() {
        let ca = new_ca("test").unwrap();
        let who = Identity::Tenant {
            tenant: "acme".into(),
            user: "bob".into(),
        };
        let issued = issue(&ca, &who, &[], &[]).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(Identity::from_der(der.as_ref()).unwrap(), who);
        assert_eq!(identity_of_pem(&issued.cert_pem), Some(who));
    }

    #[test]
    fn only_masters_may_serve_and_a_certificate_names_one_identity() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let ca = new_ca("test").unwrap();
        let eku = |who: &Identity| {
            let issued = issue(
                &ca,
                who,
                &["localhost".into()],
                &["127.0.0.1".parse().unwrap()],
            )
            .unwrap();
            let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
            let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
            let eku = cert.extended_key_usage().unwrap().unwrap().value.clone();
            let sans = cert
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .len();
            (eku.server_auth, eku.client_auth, sans)
        };
        assert_eq!(eku(&Identity::Master("m1".into())), (true, true, 4));
        for who in [
            Identity::Agent("a1".into()),
            Identity::Operator("root".into()),
            Identity::Tenant {
                tenant: "acme".into(),
                user: "alice".into(),
            },
        ] {
            assert_eq!(
                eku(&who),
                (false, true, 1),
                "{who}: client-only, its URI alone"
            );
        }
        // Two identities in one certificate: refused, whichever comes first.
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI("wasmos://tenant/evil/bob".try_into().unwrap()),
            SanType::URI("wasmos://operator/root".try_into().unwrap()),
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            Identity::from_der(cert.der()),
            Err(crate::IdentityError::SeveralIdentities)
        );
    }

    #[test]
    fn a_corrupt_ca_key_is_a_clear_error() {
        let mut ca = new_ca("test").unwrap();
        ca.key_pem = "not a key".into();
        let err = issue(&ca, &Identity::Agent("a".into()), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("CA key"), "{err}");
    }

    #[test]
    fn a_renewed_master_keeps_its_identity_and_names() {
        let ca = new_ca("test").unwrap();
        let m1 = Identity::Master("m1".into());
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        let dns = vec!["m1.example".to_string()];
        let issued = issue_for(&ca, &m1, &dns, &[ip, v6], None).unwrap();
        let current = der_of_pem(&issued.cert_pem).unwrap();
        let signer = Signer::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        let (csr, _key) = renewal_request().unwrap();
        let life = std::time::Duration::from_secs(3600);
        let renewed = signer.sign_master_renewal(&current, &csr, life).unwrap();
        let der = der_of_pem(&renewed).unwrap();
        assert_eq!(Identity::from_der(&der).unwrap(), m1);
        assert_eq!(served_names(&der).unwrap(), (dns, vec![ip, v6]));
        let (from, until) = validity_of_der(&der).unwrap();
        assert!(
            (3599..=3600 + 120).contains(&(until - from)),
            "{from}..{until}"
        );
        // Only a master's certificate is renewed as a master's.
        let agent = issue(&ca, &Identity::Agent("a".into()), &[], &[]).unwrap();
        let err = signer
            .sign_master_renewal(&der_of_pem(&agent.cert_pem).unwrap(), &csr, life)
            .unwrap_err();
        assert!(err.to_string().contains("not a master"), "{err}");
        // A master certificate of another CA (an old one, in a rollover) or one that has
        // expired is not renewed.
        let other = new_ca("other").unwrap();
        let foreign = issue(&other, &m1, &[], &[]).unwrap();
        let err = signer
            .sign_master_renewal(&der_of_pem(&foreign.cert_pem).unwrap(), &csr, life)
            .unwrap_err();
        assert!(
            err.to_string().contains("not one this master's CA signed"),
            "{err}"
        );
        let short = issue_for(&ca, &m1, &[], &[], Some(std::time::Duration::from_secs(1)));
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let expired = der_of_pem(&short.unwrap().cert_pem).unwrap();
        assert!(signer.sign_master_renewal(&expired, &csr, life).is_err());
    }
}
