//! TLS to upstreams (rustls): the client configs for `wss://` backends and object hosts, their
//! health probes, the `https://` HTTP sink and PostgreSQL; and the handshake over a connected
//! stream.
//!
//! Cold path (a config is built once, when the configuration is read), warm path (one handshake
//! per connection). Roots are the CA file when one is given, else the system's
//! (`rustls-native-certs`, honouring `SSL_CERT_FILE`). Certificates are checked fully unless the
//! configuration says otherwise (`verify: false`, PostgreSQL's `sslmode=require`/`verify-ca`);
//! there is never a plaintext fallback.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Chain to a trusted root and the server name (the default).
    Full,
    /// Chain to a trusted root only (PostgreSQL `verify-ca`).
    ChainOnly,
    /// Nothing (`verify: false`, PostgreSQL `require`/`prefer` without a CA): encryption only.
    None,
}

/// A built rustls client config, compared by the settings that built it (see `ClientTls`).
#[derive(Clone)]
pub struct TlsContext(pub Arc<ClientConfig>);

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsContext")
    }
}

impl PartialEq for TlsContext {
    /// Always equal: the settings next to it decide (files are compared by path).
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for TlsContext {}

/// TLS settings of one upstream (a pool, an object namespace's hosts, an HTTP sink) and the
/// client config built from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// Server name sent as SNI and checked in the certificate; `None`: the upstream's host as
    /// written when it is a name (`names`), its IP address otherwise (no SNI is sent for an IP).
    pub sni: Option<String>,
    /// The host names of upstreams written as names, by resolved address (the default SNI).
    pub names: Vec<(SocketAddr, String)>,
    /// PEM file of the CA certificates trusted; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the server (mutual TLS).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Check the certificate (chain and name); `false` is logged as a warning.
    pub verify: bool,
    /// The rustls config built from the fields above.
    pub context: TlsContext,
}

impl ClientTls {
    /// Build the settings; the error names the file or setting that is wrong.
    pub fn new(
        sni: Option<String>,
        names: Vec<(SocketAddr, String)>,
        ca_file: Option<PathBuf>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
        verify: bool,
    ) -> Result<ClientTls, String> {
        let mode = if verify { Verify::Full } else { Verify::None };
        let config = client_config(ca_file.as_deref(), client_cert.as_deref(), client_key.as_deref(), mode)?;
        Ok(ClientTls { sni, names, ca_file, client_cert, client_key, verify, context: TlsContext(config) })
    }

    /// The server name used for the upstream at `addr`.
    pub fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        let name = self.sni.as_deref().or_else(|| self.names.iter().find(|(a, _)| *a == addr).map(|(_, n)| n.as_str()));
        name.and_then(|n| ServerName::try_from(n.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// A tokio-rustls connector with this config.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.context.0.clone())
    }
}

/// A host as written (`name` of `name:port`), when it is a name rather than an IP address.
pub fn host_name(host_port: &str) -> Option<String> {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && host.parse::<IpAddr>().is_err()).then(|| host.to_string())
}

/// A rustls client config: roots from `ca_file` (else the system's), an optional client
/// certificate, and the certificate check `verify`.
pub fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
    verify: Verify,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots(ca_file)?);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match verify {
        Verify::Full => builder.with_root_certificates(roots),
        Verify::ChainOnly | Verify::None => {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("cannot use the trusted roots: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Relaxed { webpki, chain: verify == Verify::ChainOnly }))
        }
    };
    let config = match (client_cert, client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder.with_client_auth_cert(certs(cert)?, private_key(key)?).map_err(|e| {
            format!("client certificate {} and key {} do not go together: {e}", cert.display(), key.display())
        })?,
        _ => return Err("client_cert and client_key go together; set both or neither".into()),
    };
    Ok(Arc::new(config))
}

/// The trusted roots: every certificate of `ca_file`, or the system's.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in certs(path)? {
                roots.add(c).map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
            }
        }
        None => {
            // Unreadable system certificates are skipped (as libraries using them do); none at
            // all is an error at the first handshake ("UnknownIssuer").
            for c in rustls_native_certs::load_native_certs().unwrap_or_default() {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

/// The certificates of a PEM file (at least one).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: cannot be read: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: has no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: cannot be read: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?
        .ok_or_else(|| format!("{}: has no PEM private key", path.display()))
}

/// A failed handshake's error text with what to check, for log lines and sink errors (rustls
/// names the cause: `invalid peer certificate: UnknownIssuer`, `NotValidForName…`, `Expired`).
pub fn explain(error: &str) -> String {
    let hint = if error.contains("UnknownIssuer") || error.contains("BadSignature") {
        "the certificate is not signed by a trusted CA; check ca_file"
    } else if error.contains("NotValidForName") || error.contains("not valid for name") {
        "the certificate is not valid for the server name; check sni (or the host name)"
    } else if error.contains("Expired") || error.contains("certificate expired") {
        "the server's certificate has expired"
    } else {
        return format!("TLS handshake failed: {error}");
    };
    format!("TLS handshake failed: {hint} ({error})")
}

/// The verifier of `Verify::ChainOnly` (chain checked, name not) and `Verify::None` (nothing
/// checked but the handshake signatures).
#[derive(Debug)]
struct Relaxed {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    chain: bool,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if !self.chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sni_is_the_name_as_written_and_no_name_for_an_ip() {
        assert_eq!(host_name("backend.internal:443").as_deref(), Some("backend.internal"));
        assert_eq!(host_name("10.0.0.1:443"), None);
        assert_eq!(host_name("[::1]:443"), None);
        let addr: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let tls = ClientTls::new(None, vec![(addr, "b.internal".into())], None, None, None, true).unwrap();
        assert_eq!(tls.server_name(addr), ServerName::try_from("b.internal").unwrap());
        let other: SocketAddr = "10.0.0.2:443".parse().unwrap();
        assert!(matches!(tls.server_name(other), ServerName::IpAddress(_)));
    }

    #[test]
    fn half_a_client_certificate_is_an_error() {
        let e = client_config(None, Some(Path::new("/c.pem")), None, Verify::Full).unwrap_err();
        assert!(e.contains("go together"), "{e}");
    }
}
