//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is up) and
//! `/readyz` (every public listener accepts connections right now: checked by connecting to it,
//! so it turns false when the listeners stop at shutdown, and while the descriptor reserve is in
//! use: `fds`), on a port of its own.
//!
//! Cold/warm path: one request at a time from a scraper; never on a client's path.

use crate::fds::Descriptors;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Longest a readiness connect to a listener may take.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The admin HTTP application.
pub struct Admin {
    registry: Registry,
    listeners: Vec<SocketAddr>,
    fds: Arc<Descriptors>,
}

impl Admin {
    /// Serve `registry` on `/metrics`; `/readyz` connects to each of `listeners` and checks
    /// that descriptors are left beyond the reserve.
    pub fn new(registry: Registry, listeners: Vec<SocketAddr>, fds: Arc<Descriptors>) -> Admin {
        Admin { registry, listeners, fds }
    }

    async fn ready(&self) -> Result<(), String> {
        if self.fds.exhausted() {
            return Err(format!("the public listeners cannot take new connections: {}", self.fds.describe()));
        }
        for l in &self.listeners {
            let mut target = *l;
            if target.ip().is_unspecified() {
                target.set_ip(match target.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            match tokio::time::timeout(READY_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("listener {l} does not accept: {e}")),
                Err(_) => return Err(format!("listener {l} does not accept within {READY_CONNECT_TIMEOUT:?}")),
            }
        }
        Ok(())
    }
}

fn text(status: u16, body: &str) -> Response<Vec<u8>> {
    let mut r = Response::new(body.as_bytes().to_vec());
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                let encoder = TextEncoder::new();
                let mut out = Vec::new();
                if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
                    return text(500, &format!("cannot encode metrics: {e}\n"));
                }
                let mut r = Response::new(out);
                if let Ok(v) = http::HeaderValue::from_str(encoder.format_type()) {
                    r.headers_mut().insert(http::header::CONTENT_TYPE, v);
                }
                r
            }
            "/healthz" => text(200, "ok\n"),
            "/readyz" => match self.ready().await {
                Ok(()) => text(200, "ready\n"),
                Err(why) => text(503, &format!("not ready: {why}\n")),
            },
            _ => text(404, "not found; try /metrics, /healthz or /readyz\n"),
        }
    }
}
