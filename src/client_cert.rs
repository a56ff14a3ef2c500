//! Client certificates on TLS listeners (mutual TLS, `listeners[].tls.client_auth`): the CA a
//! reload re-reads (`ClientCa`, a swapped rustls verifier), and the verified certificate's
//! subject (`PeerCert`) that `routes[].auth.client_cert` bills as the tenant.
//!
//! How it plugs into Pingora 0.9 (rustls): `TlsSettings::set_client_cert_verifier` takes the
//! verifier, so `ClientCa` is a `ClientCertVerifier` delegating to the verifier built from the
//! CA file in force (rustls' `WebPkiClientVerifier`, swapped by a reload). The peer certificate
//! reaches the gateway through Pingora's post-handshake hook: `TlsSettings::with_callbacks` takes
//! a `TlsAccept` whose `handshake_complete_callback` sees the `TlsRef` (the verified chain); it
//! parses the leaf once into a `PeerCert` (`HandshakeHook`) and returns it, and Pingora stores it in the connection's
//! `SslDigest::extension`, which `Gateway::serve` reads (`peer_cert`). Nothing a client sends
//! in a header can stand in for it: the extension is only ever set by that hook, and only after
//! rustls verified the chain to the CA.
//!
//! Counted in `weir_tls_client_auth_total{listener,result}`: `verified` (a handshake completed
//! with a certificate), `none` (completed without one: `mode: optional`), `rejected` (a
//! certificate that does not chain to the CA, counted when the verifier refuses it). A client
//! that sends no certificate to a `mode: required` listener fails inside rustls before any hook
//! runs, so that case is not counted. Pingora logs every failed handshake itself (`Downstream
//! handshake error from ADDR: …`, level error, one line each, as for any TLS failure); weir's own
//! per-connection lines here are at debug.
//!
//! The verifier offers no CA names (`root_hint_subjects` is empty: the swapped CA cannot lend a
//! borrowed list), so a client with several certificates picks without a hint.
//!
//! Cold path: `ClientCa::load` at startup, `read`/`install` at a reload. Warm path (once per
//! handshake): one atomic load in the verifier, one certificate parse in the callback.

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use prometheus::IntCounter;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether a listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A client without a certificate chaining to the CA fails the TLS handshake.
    Required,
    /// A client may connect without a certificate; one it sends must chain to the CA.
    Optional,
}

/// The subject fields of a verified client certificate (the leaf), as `auth.client_cert` reads
/// them; each `None`/empty when the certificate has no such field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject's first common name (CN).
    pub cn: Option<String>,
    /// The subject's first organization (O).
    pub o: Option<String>,
    /// The subject's first organizational unit (OU).
    pub ou: Option<String>,
    /// The DNS names of the subject alternative name extension, in order.
    pub san_dns: Vec<String>,
}

impl PeerCert {
    /// Parse the subject of a DER certificate; `None` when it does not parse (rustls verified
    /// it already, so that is not expected).
    pub fn parse(der: &[u8]) -> Option<PeerCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let first = |mut it: Box<dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_>| {
            it.find_map(|a| a.as_str().ok().map(str::to_string))
        };
        let san_dns = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(PeerCert {
            cn: first(Box::new(subject.iter_common_name())),
            o: first(Box::new(subject.iter_organization())),
            ou: first(Box::new(subject.iter_organizational_unit())),
            san_dns,
        })
    }
}

/// The verified client certificate of a TLS connection, from the `SslDigest` extension the
/// listener's callback set; `None` on a listener without `client_auth` or without a certificate.
pub fn peer_cert(digest: Option<&pingora_core::protocols::tls::SslDigest>) -> Option<Arc<PeerCert>> {
    digest?.extension.get::<Arc<PeerCert>>().cloned()
}

/// One listener's client-certificate settings: the CA file, the mode and the verifier in force.
#[derive(Debug)]
pub struct ClientCa {
    ca_file: PathBuf,
    mode: Mode,
    current: ArcSwap<Arc<dyn ClientCertVerifier>>,
    rejected: IntCounter,
}

impl ClientCa {
    /// Build the verifier of `ca_file` (PEM, one or more CA certificates) for `mode`;
    /// `rejected` counts certificates refused. The error names the file and why.
    pub fn load(ca_file: &Path, mode: Mode, rejected: IntCounter) -> Result<Arc<ClientCa>, String> {
        let verifier = build(ca_file, mode)?;
        Ok(Arc::new(ClientCa {
            ca_file: ca_file.to_path_buf(),
            mode,
            current: ArcSwap::from_pointee(verifier),
            rejected,
        }))
    }

    /// Build the verifier from the file again (a reload checks it before it installs anything).
    pub fn read(&self) -> Result<Arc<dyn ClientCertVerifier>, String> {
        build(&self.ca_file, self.mode)
    }

    /// Verify new handshakes with `verifier` from now on (open connections keep their session).
    pub fn install(&self, verifier: Arc<dyn ClientCertVerifier>) {
        self.current.store(Arc::new(verifier));
    }

    /// The CA file (for messages).
    pub fn ca_path(&self) -> &Path {
        &self.ca_file
    }
}

/// A rustls client verifier trusting the certificates of `ca_file`.
fn build(ca_file: &Path, mode: Mode) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for c in crate::tls_client::certs(ca_file)? {
        roots.add(c).map_err(|e| format!("{}: not a usable CA certificate: {e}", ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match mode {
        Mode::Required => builder,
        Mode::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| format!("{}: cannot verify client certificates with it: {e}", ca_file.display()))
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == Mode::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The list would borrow from the swapped verifier: offer none (see the module doc).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verdict = self.current.load().verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &verdict {
            self.rejected.inc();
            tracing::debug!(ca_file = %self.ca_file.display(), error = %e, "client certificate rejected");
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}

/// Pingora's post-handshake hook of a `client_auth` listener: parses the verified leaf into a
/// `PeerCert` for the connection's `SslDigest` and counts the handshake.
pub struct HandshakeHook {
    /// The listener's address (for the debug log).
    pub listener: String,
    /// `weir_tls_client_auth_total{listener, result="verified"}`.
    pub verified: IntCounter,
    /// `weir_tls_client_auth_total{listener, result="none"}`.
    pub none: IntCounter,
}

#[async_trait]
impl TlsAccept for HandshakeHook {
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        let Some(der) = tls.peer_certificate_der() else {
            self.none.inc();
            return None;
        };
        let subject = PeerCert::parse(der);
        match &subject {
            Some(s) => {
                self.verified.inc();
                tracing::debug!(listener = %self.listener, cn = ?s.cn, o = ?s.o, ou = ?s.ou, "client certificate verified");
            }
            None => {
                // Verified by rustls but not parsed here: no identity, as if none was sent.
                self.none.inc();
                tracing::debug!(listener = %self.listener, "a verified client certificate did not parse; no identity");
            }
        }
        subject.map(|s| Arc::new(Arc::new(s)) as Arc<dyn Any + Send + Sync>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(dir: &Path, name: &str) -> (rcgen::Certificate, rcgen::KeyPair, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        (cert, key, path)
    }

    fn leaf(ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["svc.tenant-a.example".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "tenant-a");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme");
        params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "billing");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(&key, ca, ca_key).unwrap()
    }

    #[test]
    fn the_subject_fields_are_read_from_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key, _) = ca(dir.path(), "ca");
        let p = PeerCert::parse(leaf(&ca, &ca_key).der()).unwrap();
        assert_eq!(p.cn.as_deref(), Some("tenant-a"));
        assert_eq!(p.o.as_deref(), Some("Acme"));
        assert_eq!(p.ou.as_deref(), Some("billing"));
        assert_eq!(p.san_dns, vec!["svc.tenant-a.example".to_string()]);
        assert_eq!(PeerCert::parse(b"not a certificate"), None);
    }

    #[test]
    fn a_reload_swaps_the_trusted_ca_and_refusals_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (one, one_key, path) = ca(dir.path(), "one");
        let (two, two_key, two_path) = ca(dir.path(), "two");
        let rejected = IntCounter::new("r", "r").unwrap();
        let v = ClientCa::load(&path, Mode::Required, rejected.clone()).unwrap();
        assert!(v.client_auth_mandatory());
        let (a, b) = (leaf(&one, &one_key), leaf(&two, &two_key));
        let now = UnixTime::now();
        assert!(v.verify_client_cert(a.der(), &[], now).is_ok());
        assert!(v.verify_client_cert(b.der(), &[], now).is_err());
        assert_eq!(rejected.get(), 1);
        std::fs::copy(&two_path, &path).unwrap();
        v.install(v.read().unwrap());
        assert!(v.verify_client_cert(b.der(), &[], now).is_ok());
        assert!(v.verify_client_cert(a.der(), &[], now).is_err());
        std::fs::write(&path, "no pem").unwrap();
        let e = v.read().unwrap_err();
        assert!(e.contains("one.pem"), "{e}");
        let optional = ClientCa::load(&two_path, Mode::Optional, rejected).unwrap();
        assert!(optional.offer_client_auth() && !optional.client_auth_mandatory());
    }
}
