//! TLS for tests: a self-signed certificate for `localhost` in a temporary directory (for a
//! `listeners[].tls`) and a rustls client that trusts only it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// A generated certificate and key, as PEM files, and the DER a client trusts.
pub struct TestCert {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl TestCert {
    /// A new self-signed certificate for `localhost`.
    pub fn localhost() -> TestCert {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        TestCert { cert, key, der: certified.cert.der().clone(), _dir: dir }
    }

    /// The listener lines (indented by four spaces, for `Weir::start_listener`) that terminate
    /// TLS with this certificate.
    pub fn listener_yaml(&self) -> String {
        format!("    tls:\n      cert: \"{}\"\n      key: \"{}\"\n", self.cert.display(), self.key.display())
    }

    /// Run a TLS client handshake for `localhost` over `io`, trusting only this certificate.
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(&self, io: S) -> std::io::Result<TlsStream<S>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, io);
        tokio::time::timeout(super::DEADLINE, connect).await.map_err(|_| std::io::Error::other("TLS timed out"))?
    }

    /// The `wss://` URL of `path` at `addr` under this certificate's name.
    pub fn url(addr: SocketAddr, path: &str) -> String {
        format!("wss://localhost:{}{path}", addr.port())
    }
}
