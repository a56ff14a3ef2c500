//! Plain HTTP on `http` routes, through Pingora's `ProxyHttp` pipeline (a socket.io app needs
//! its long-polling requests and its upgrade on the same route).
//!
//! Warm path (once per request). The gateway has already read the head and handed it back as a
//! pipelined prefix, so Pingora parses it again here; this module only picks the peer and adds
//! the forwarding headers. Upgrades never come here: the gateway relays them itself.

use crate::config::Timeouts;
use crate::http1::host_without_port;
use crate::pools::Pools;
use crate::routing::RouteTable;
use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};
use std::sync::Arc;

/// The `ProxyHttp` implementation for `http` routes.
pub struct HttpRoutes {
    routes: Arc<RouteTable>,
    pools: Arc<Pools>,
    timeouts: Timeouts,
}

impl HttpRoutes {
    /// Proxy with the shared route table and pools.
    pub fn new(routes: Arc<RouteTable>, pools: Arc<Pools>, timeouts: Timeouts) -> HttpRoutes {
        HttpRoutes { routes, pools, timeouts }
    }
}

fn host_of(session: &Session) -> Option<String> {
    let req = session.req_header();
    let host = req.headers.get("host").and_then(|h| h.to_str().ok()).or_else(|| req.uri.host())?;
    Some(host_without_port(host))
}

#[async_trait]
impl ProxyHttp for HttpRoutes {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    /// Runs in Pingora's `upstream_peer` phase: route again (cheap) and pick a healthy backend.
    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let host = host_of(session);
        let path = session.req_header().uri.path().to_string();
        let route = self
            .routes
            .resolve(host.as_deref(), &path)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(404), "no route"))?;
        let crate::config::Target::Pool(pool) = route.target else {
            return Err(Error::explain(ErrorType::HTTPStatus(400), "object routes carry WebSockets only"));
        };
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let addr = self
            .pools
            .select(pool, client, &[])
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no healthy backend"))?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.timeouts.backend_connect);
        peer.options.total_connection_timeout = Some(self.timeouts.backend_connect);
        peer.options.read_timeout = Some(self.timeouts.backend_handshake);
        Ok(Box::new(peer))
    }

    /// Runs in Pingora's `upstream_request_filter` phase: add `X-Forwarded-For` and
    /// `X-Forwarded-Proto`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            let xff = match req.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.to_string(),
            };
            req.insert_header("X-Forwarded-For", xff)?;
        }
        let tls = session.digest().and_then(|d| d.ssl_digest.as_ref()).is_some();
        req.insert_header("X-Forwarded-Proto", if tls { "https" } else { "http" })?;
        Ok(())
    }
}
