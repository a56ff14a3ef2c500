//! Listener certificates a reload re-reads (`ListenerCert`): each TLS listener's certificate
//! chain and key are served through a resolver whose key pair is swapped, so SIGHUP or
//! `POST /api/reload` picks up a renewed certificate without touching open connections (a
//! connection keeps the session it made; new handshakes get the new certificate).
//!
//! Cold path: `load` at startup, `read` and `install` at a reload. Per handshake: one atomic
//! load (`resolve`).

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One listener's certificate and key, as files and as the pair in force.
#[derive(Debug)]
pub struct ListenerCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl ListenerCert {
    /// Read `cert` (PEM chain) and `key` (PEM private key); the error names the file and why.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ListenerCert>, String> {
        let pair = read_pair(cert, key)?;
        Ok(Arc::new(ListenerCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
        }))
    }

    /// Read the files again (a reload validates before it installs anything).
    pub fn read(&self) -> Result<Arc<CertifiedKey>, String> {
        read_pair(&self.cert, &self.key).map(Arc::new)
    }

    /// Serve `pair` to new handshakes from now on.
    pub fn install(&self, pair: Arc<CertifiedKey>) {
        self.current.store(pair);
    }

    /// The certificate file (for messages).
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

impl ResolvesServerCert for ListenerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The key pair in `cert` and `key`.
fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let open = |p: &Path| File::open(p).map(BufReader::new).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let der = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key in it", key.display()))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    Ok(CertifiedKey::new(chain, signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_renewed_pair_is_read_and_installed_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "one.test");
        let l = ListenerCert::load(&cert, &key).unwrap();
        let first = l.current.load_full().cert[0].clone();
        let (cert2, key2) = write_pair(dir.path(), "two.test");
        std::fs::copy(&cert2, &cert).unwrap();
        std::fs::copy(&key2, &key).unwrap();
        let renewed = l.read().unwrap();
        assert_ne!(renewed.cert[0], first);
        l.install(renewed);
        assert_ne!(l.current.load_full().cert[0], first);
        std::fs::write(&key, "not a key").unwrap();
        let e = l.read().unwrap_err();
        assert!(e.contains("private key"), "{e}");
    }
}
