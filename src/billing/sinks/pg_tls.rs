//! TLS for the PostgreSQL sink: libpq's `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert`, read from the connection string (tokio-postgres knows only
//! the first three and no `sslrootcert`, so both are taken out before it parses the rest), and a
//! rustls connector for tokio-postgres.
//!
//! `connect` opens a connection with that TLS (used by the sink and by the shared room history,
//! `objects::history_pg`), within `CONNECT_TIMEOUT`, its connection task spawned.
//!
//! Background path (a connect of the delivery loop, or of the room history). As in libpq: `require` encrypts without
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

/// Longest time to open a connection.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `e` and its causes, `: `-separated (the TLS cause is in a source).
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Open a connection to `url` (a libpq-style connection string or `postgresql://` URL) with
/// the TLS its `sslmode` asks for, trusting `ca_file` (else the url's `sslrootcert`, else the
/// system roots); its connection task is spawned (its end logged at debug as `who`).
pub async fn connect(url: &str, ca_file: Option<&Path>, who: &'static str) -> Result<tokio_postgres::Client, String> {
    use tokio_postgres::config::SslMode;
    let (rest, mode, root) = split(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| format!("connection string: {e}"))?;
    let tls = match mode {
        TlsMode::Off => None,
        _ => {
            let ca_file = self::ca_file(ca_file, root.as_deref());
            let ssl = if mode == TlsMode::Prefer { SslMode::Prefer } else { SslMode::Require };
            config.ssl_mode(ssl);
            Some(connector(mode, ca_file.as_deref())?)
        }
    };
    let connected = async {
        let client = match tls {
            None => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "{who}: connection ended");
                    }
                });
                client
            }
            Some(tls) => {
                let (client, connection) = config.connect(tls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "{who}: connection ended");
                    }
                });
                client
            }
        };
        Ok::<_, tokio_postgres::Error>(client)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connected)
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {}", describe(&e)))
}

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
