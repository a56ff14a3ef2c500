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

/// The connection's TLS, from `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No `sslmode`, or `disable`: plain TCP.
    Off,
    /// `prefer`: TLS when the server offers it, unchecked; plaintext otherwise.
    Prefer,
    /// `require`: TLS or fail; the chain is checked only when a CA is given.
    Require,
    /// `verify-ca`: TLS, the chain checked against the CA.
    VerifyCa,
    /// `verify-full`: TLS, chain and host name checked.
    VerifyFull,
}

impl TlsMode {
    /// The mode and `sslrootcert` of the connection string `url`, and the string without them.
    pub fn of(url: &str) -> Result<(TlsMode, Option<String>), String> {
        let (_, mode, root) = split(url)?;
        Ok((mode, root))
    }
}

/// `url` without `sslmode` and `sslrootcert`, the mode and the root certificate file.
pub fn split(url: &str) -> Result<(String, TlsMode, Option<String>), String> {
    let mut mode = None;
    let mut root = None;
    let mut take = |k: &str, v: String| -> Result<bool, String> {
        match k {
            "sslmode" => {
                mode = Some(match v.as_str() {
                    "disable" => TlsMode::Off,
                    "prefer" | "allow" => TlsMode::Prefer,
                    "require" => TlsMode::Require,
                    "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                        ))
                    }
                });
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(v);
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if let Some((base, query)) =
        url.split_once('?').filter(|_| url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, percent_decode(v))? {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url.to_string()
    } else {
        let mut kept = Vec::new();
        for (k, v) in key_values(url)? {
            if !take(&k, v.clone())? {
                kept.push(format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")));
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode.unwrap_or(TlsMode::Off), root))
}

/// The `key=value` pairs of a libpq keyword/value string (values bare or single-quoted, with
/// backslash escapes).
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("`{key}` has no `=value`; write key=value pairs separated by spaces"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of `{key}` has no closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
