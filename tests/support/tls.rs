//! TLS for tests: a self-signed certificate for `localhost` in a temporary directory (for a
//! `listeners[].tls`, a backend's `ca_file`, PostgreSQL's `ssl_cert_file`), a rustls client that
//! trusts only it (optionally presenting a client certificate), a rustls acceptor serving it, a
//! `wss://` WebSocket backend, and a CA issuing client certificates (`TestCa`, for mutual TLS).

use super::backends::{ws_config, Backend, Seen};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::WebSocketStream;

/// A WebSocket connection as a `wss://` backend sees it.
pub type Wss = WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>;

/// A generated certificate and key, as PEM files, and the DER a client trusts.
pub struct TestCert {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl TestCert {
    /// A new self-signed certificate for `localhost`.
    pub fn localhost() -> TestCert {
        TestCert::for_names(&["localhost"])
    }

    /// A new self-signed certificate for `names` (an IP address becomes an IP SAN).
    pub fn for_names(names: &[&str]) -> TestCert {
        let certified =
            rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        let key_der = certified.key_pair.serialize_der();
        TestCert { cert, key, der: certified.cert.der().clone(), key_der, _dir: dir }
    }

    /// A TLS acceptor serving this certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// The listener lines (indented by four spaces, for `Weir::start_listener`) that terminate
    /// TLS with this certificate.
    pub fn listener_yaml(&self) -> String {
        format!("    tls:\n      cert: \"{}\"\n      key: \"{}\"\n", self.cert.display(), self.key.display())
    }

    /// Run a TLS client handshake for `localhost` over `io`, trusting only this certificate.
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(&self, io: S) -> std::io::Result<TlsStream<S>> {
        self.connect_as(io, None).await
    }

    /// As `connect`, presenting `client` (a certificate and its key) when the server asks.
    pub async fn connect_as<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
        client: Option<&ClientCert>,
    ) -> std::io::Result<TlsStream<S>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            None => config.with_no_client_auth(),
            Some(c) => config
                .with_client_auth_cert(
                    vec![c.der.clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(c.key_der.clone().into()),
                )
                .unwrap(),
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, io);
        tokio::time::timeout(super::DEADLINE, connect).await.map_err(|_| std::io::Error::other("TLS timed out"))?
    }

    /// The `wss://` URL of `path` at `addr` under this certificate's name.
    pub fn url(addr: SocketAddr, path: &str) -> String {
        format!("wss://localhost:{}{path}", addr.port())
    }
}

/// A `wss://` WebSocket backend serving `cert` that runs `handler` for each connection; the
/// upgrade requests it sees are recorded (`Backend::seen`).
pub async fn wss_backend<F, Fut>(cert: &TestCert, handler: F) -> Backend
where
    F: Fn(Wss) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (seen2, acceptor, handler) = (seen.clone(), cert.acceptor(), Arc::new(handler));
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, acceptor, handler) = (seen2.clone(), acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                // A client that fails the handshake (a wrong CA on weir's side) just ends here.
                let Ok(tls) = acceptor.accept(stream).await else { return };
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, resp: Response| {
                    let path = req.uri().path().to_string();
                    seen.lock().unwrap().push(Seen { path, ..Seen::default() });
                    Ok(resp)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tls, callback, Some(ws_config())).await
                {
                    handler(ws).await;
                }
            });
        }
    });
    Backend::new(addr, seen, task)
}

/// A certificate authority for client certificates: its certificate as a PEM file (a listener's
/// `client_auth.ca_file`) and the means to sign client certificates.
pub struct TestCa {
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
    _dir: tempfile::TempDir,
}

/// A client certificate (DER) and its key, signed by a `TestCa`.
pub struct ClientCert {
    der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("ca.pem");
        std::fs::write(&cert, ca.pem()).unwrap();
        TestCa { cert, ca, key, _dir: dir }
    }

    /// A client certificate with subject CN `cn`, signed by this CA.
    pub fn client(&self, cn: &str) -> ClientCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca, &self.key).unwrap();
        ClientCert { der: cert.der().clone(), key_der: key.serialize_der() }
    }
}

impl TestCert {
    /// The listener lines (as `listener_yaml`) that also ask for client certificates from `ca`
    /// (`mode`: required or optional).
    pub fn mtls_listener_yaml(&self, ca: &std::path::Path, mode: &str) -> String {
        format!(
            "{}      client_auth:\n        ca_file: \"{}\"\n        mode: {mode}\n",
            self.listener_yaml(),
            ca.display()
        )
    }
}
