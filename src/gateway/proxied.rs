//! The PROXY protocol on `proxy_protocol` listeners: which listeners expect the header, and, on
//! TLS listeners, reading it before the TLS handshake.
//!
//! Warm path (once per connection on a `proxy_protocol` listener). On a plain listener the
//! gateway reads the header itself (`Gateway::serve`). On a TLS listener the header comes before
//! the TLS handshake, which Pingora runs before weir sees the stream: `BeforeTls`, Pingora's
//! pre-TLS callback, reads it off the raw socket (bytes read past the header are given back with
//! `rewind`, so the handshake sees them) and notes the address it names in `Proxied`, keyed by
//! the socket's descriptor; the gateway takes it out once the handshake is done.
//!
//! Why a descriptor is a safe key: Pingora runs the callback, the handshake and the gateway on
//! one task, with the socket open all along, so no other connection can hold that descriptor
//! in between. An entry left behind (a failed TLS handshake) is overwritten by the next
//! connection on the same descriptor before that connection reaches the gateway: stale entries
//! are harmless, and the table never holds more entries than the process's descriptor limit.
//! An entry also notes the socket's own peer, and is only used when that matches.

use crate::http1::proxy::ProxyError;
use crate::sync::lock;
use async_trait::async_trait;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, UniqueID, UniqueIDType};
use pingora_error::{Error, ErrorType};
use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::reject::BAD_PROXY_HEADER;
use super::snapshot::Current;

/// The listener addresses whose connections start with a PROXY header.
#[derive(Debug, Clone, Default)]
pub struct ProxyListeners(Vec<SocketAddr>);

impl ProxyListeners {
    /// The `proxy_protocol` listeners of `listeners`.
    pub fn new(listeners: &[crate::config::Listener]) -> ProxyListeners {
        ProxyListeners(listeners.iter().filter(|l| l.proxy_protocol).map(|l| l.address).collect())
    }

    /// Whether a connection accepted at `local` came through a `proxy_protocol` listener (an
    /// unspecified listener address matches any address with its port).
    pub fn expects(&self, local: Option<SocketAddr>) -> bool {
        let Some(local) = local else { return false };
        self.0.iter().any(|l| l.port() == local.port() && (l.ip().is_unspecified() || l.ip() == local.ip()))
    }

    /// `expects` for a connection with socket digest `digest`. Its local address costs a
    /// getsockname(2), so it is read only when some listener expects PROXY at all.
    pub fn expects_on(&self, digest: Option<&SocketDigest>) -> bool {
        !self.0.is_empty() && self.expects(digest.and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied()))
    }
}

/// Client addresses read from PROXY headers before TLS, by socket descriptor, until the
/// gateway takes them (at most one entry per open descriptor; see the module doc).
#[derive(Debug, Default)]
pub struct Proxied {
    /// Descriptor → (the socket's own peer, the address the header named).
    by_fd: Mutex<HashMap<UniqueIDType, (Option<SocketAddr>, SocketAddr)>>,
}

impl Proxied {
    /// Note the address a header named for the connection on `fd` whose socket peer is `peer`;
    /// `None` (a `LOCAL`/`UNKNOWN` header) forgets what an earlier connection left.
    pub fn note(&self, fd: UniqueIDType, peer: Option<SocketAddr>, client: Option<SocketAddr>) {
        let mut map = lock(&self.by_fd);
        match client {
            Some(c) => map.insert(fd, (peer, c)),
            None => map.remove(&fd),
        };
    }

    /// Take the address noted for the connection on `fd` whose socket peer is `peer`, if any.
    pub fn take(&self, fd: UniqueIDType, peer: Option<SocketAddr>) -> Option<SocketAddr> {
        let (noted_peer, client) = lock(&self.by_fd).remove(&fd)?;
        (noted_peer == peer).then_some(client)
    }

    /// Entries held (for tests).
    pub fn len(&self) -> usize {
        lock(&self.by_fd).len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pingora's pre-TLS callback for the gateway's TLS listeners: on a `proxy_protocol` listener,
/// read the PROXY header (within `timeouts.request_head`) and note its address; a connection
/// without a valid header is dropped and counted as `bad_proxy_header` (one that closes before
/// sending a byte, as `/readyz` does, is not counted). Other listeners' streams pass untouched.
pub struct BeforeTls {
    /// Which listeners expect the header.
    pub listeners: ProxyListeners,
    /// Where addresses are noted for the gateway.
    pub proxied: Arc<Proxied>,
    /// The config in force (for `timeouts.request_head`).
    pub current: Current,
    /// `weir_handshake_rejections_total`.
    pub rejections: IntCounterVec,
}

#[async_trait]
impl PreTlsProcess for BeforeTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora_error::Result<()> {
        let digest = stream.get_socket_digest();
        if !self.listeners.expects_on(digest.as_deref()) {
            return Ok(());
        }
        let peer = digest.as_ref().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let timeout = self.current.load().config.timeouts.request_head;
        match crate::http1::proxy::read(stream, timeout).await {
            Ok((client, rest)) => {
                stream.rewind(&rest);
                self.proxied.note(stream.id(), peer, client);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(?peer, error = ?e, "no valid PROXY header before TLS on a proxy_protocol listener; closed");
                if e != ProxyError::Closed {
                    self.rejections.with_label_values(&[super::NO_ROUTE, BAD_PROXY_HEADER]).inc();
                }
                Err(Error::explain(ErrorType::AcceptError, "no valid PROXY header before TLS"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_match_by_port_and_address() {
        let l = ProxyListeners(vec!["0.0.0.0:8443".parse().unwrap(), "127.0.0.1:9000".parse().unwrap()]);
        assert!(l.expects(Some("10.1.2.3:8443".parse().unwrap())));
        assert!(l.expects(Some("127.0.0.1:9000".parse().unwrap())));
        assert!(!l.expects(Some("127.0.0.2:9000".parse().unwrap())));
        assert!(!l.expects(None));
    }

    #[test]
    fn an_entry_is_taken_once_and_only_by_its_socket() {
        let p = Proxied::default();
        let (peer, client) = (Some("127.0.0.1:5000".parse().unwrap()), "203.0.113.7:1".parse().unwrap());
        p.note(7, peer, Some(client));
        assert_eq!(p.take(7, Some("127.0.0.1:5001".parse().unwrap())), None, "another socket on fd 7");
        p.note(7, peer, Some(client));
        assert_eq!(p.take(7, peer), Some(client));
        assert_eq!(p.take(7, peer), None, "taken");
        // A later connection on the same descriptor overwrites, or (LOCAL) clears.
        p.note(7, peer, Some(client));
        p.note(7, peer, None);
        assert!(p.is_empty());
    }
}
