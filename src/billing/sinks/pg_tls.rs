//! TLS for the PostgreSQL sink: libpq's `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert`, read from the connection string (tokio-postgres knows only
//! the first three and no `sslrootcert`, so both are taken out before it parses the rest), and a
//! rustls connector for tokio-postgres.
//!
//! Background path (a connect of the delivery loop). As in libpq: `require` encrypts without
//! checking the certificate unless a CA is given (then it checks the chain, as `verify-ca`);
//! `verify-full` checks the chain and the host name; `require` and stricter never fall back to
//! plaintext (a server without TLS is an error); `prefer` does when the server has no TLS.

use crate::tls_client::{client_config, Verify};
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

pub use crate::config::pg_url::{split, TlsMode};

/// A rustls connector for `mode` (not `Off`), trusting `ca_file` (else the system roots).
pub fn connector(mode: TlsMode, ca_file: Option<&Path>) -> Result<MakeRustls, String> {
    let verify = match (mode, ca_file) {
        (TlsMode::VerifyFull, _) => Verify::Full,
        (TlsMode::VerifyCa, _) | (TlsMode::Require, Some(_)) => Verify::ChainOnly,
        _ => Verify::None,
    };
    Ok(MakeRustls { config: client_config(ca_file, None, None, verify)? })
}

/// The CA file to trust: the sink's `ca_file`, else the url's `sslrootcert`.
pub fn ca_file(configured: Option<&Path>, sslrootcert: Option<&str>) -> Option<PathBuf> {
    configured.map(Path::to_path_buf).or_else(|| sslrootcert.map(PathBuf::from))
}

/// tokio-postgres' `MakeTlsConnect` over rustls.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<rustls::ClientConfig>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for MakeRustls {
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("host {domain}: {e}")))?;
        Ok(RustlsConnect { config: self.config.clone(), name })
    }
}

/// One connection's TLS handshake.
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for RustlsConnect {
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map_err(|e| io::Error::other(crate::tls_client::explain(&e.to_string())))?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS connection to PostgreSQL (no channel binding).
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_rootcert_are_taken_out_of_both_forms() {
        let (rest, mode, root) =
            split("host=db user=weir sslmode=verify-full sslrootcert='/etc/weir/ca it.pem' dbname=b").unwrap();
        assert_eq!((mode, root.as_deref()), (TlsMode::VerifyFull, Some("/etc/weir/ca it.pem")));
        assert_eq!(rest, "host='db' user='weir' dbname='b'");
        let (rest, mode, root) =
            split("postgresql://weir@db:5432/b?sslmode=require&sslrootcert=%2Fca.pem&application_name=x").unwrap();
        assert_eq!((mode, root.as_deref()), (TlsMode::Require, Some("/ca.pem")));
        assert_eq!(rest, "postgresql://weir@db:5432/b?application_name=x");
        assert_eq!(split("host=db").unwrap().1, TlsMode::Off);
        assert!(split("host=db sslmode=sometimes").unwrap_err().contains("verify-full"));
    }
}
