//! Object hosts for the tests: real tokio-tungstenite servers that say who they are, echo, and
//! report every connection they served (object id, open and close instants), so a test can
//! prove no id was served by two hosts at once. A host can be killed (every socket dropped at
//! once, like a crashed process) or made to fail its health check (`/healthz` upgrades answer
//! 503) while its WebSockets stay up. A host may speak TLS (`start_tls`).

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// One WebSocket connection an object host served.
#[derive(Debug, Clone)]
pub struct Visit {
    /// `X-Weir-Object-Namespace`.
    pub namespace: String,
    /// `X-Weir-Object-Id`.
    pub id: String,
    /// The request target the host received (path and query).
    pub target: String,
    /// When the host accepted it.
    pub opened: Instant,
    /// When its connection ended at the host (or the host was killed).
    pub closed: Option<Instant>,
}

/// A running object host.
pub struct ObjectHost {
    /// Its name, sent as the first message of every connection (`host:NAME`).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    visits: Arc<Mutex<Vec<Visit>>>,
    healthy: Arc<AtomicBool>,
    close_delay_ms: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ObjectHost {
    /// Start a host named `name` on an ephemeral loopback port.
    pub async fn start(name: &str) -> ObjectHost {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Start a host named `name` on `addr`.
    pub async fn start_on(name: &str, addr: SocketAddr) -> ObjectHost {
        Self::start_full(name, addr, None).await
    }

    /// Start a host named `name` on an ephemeral loopback port that speaks TLS with `cert`
    /// (every connection, health probes included; a client that fails the handshake is dropped).
    pub async fn start_tls(name: &str, cert: &super::tls::TestCert) -> ObjectHost {
        Self::start_full(name, "127.0.0.1:0".parse().unwrap(), Some(cert.acceptor())).await
    }

    async fn start_full(name: &str, addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> ObjectHost {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let host = ObjectHost {
            name: name.to_string(),
            addr,
            visits: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            close_delay_ms: Arc::default(),
            tasks: Arc::default(),
        };
        let (name, visits, healthy, tasks) =
            (host.name.clone(), host.visits.clone(), host.healthy.clone(), host.tasks.clone());
        let delay = host.close_delay_ms.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (name, visits, healthy, delay) = (name.clone(), visits.clone(), healthy.clone(), delay.clone());
                let conn = match tls.clone() {
                    None => tokio::spawn(serve(stream, name, visits, healthy, delay)),
                    Some(acceptor) => tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve(stream, name, visits, healthy, delay).await;
                        }
                    }),
                };
                tasks.lock().unwrap().push(conn);
            }
        });
        host.tasks.lock().unwrap().push(accept);
        host
    }

    /// Every connection served so far.
    pub fn visits(&self) -> Vec<Visit> {
        self.visits.lock().unwrap().clone()
    }

    /// Make `/healthz` upgrades answer 101 (healthy) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// When a close frame arrives, keep serving for `delay` (like an object saving its state)
    /// before the visit ends and the close is answered.
    pub fn set_close_delay(&self, delay: std::time::Duration) {
        self.close_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Crash: stop accepting and drop every open connection now.
    pub fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let now = Instant::now();
        for v in self.visits.lock().unwrap().iter_mut() {
            v.closed.get_or_insert(now);
        }
    }
}

impl Drop for ObjectHost {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    name: String,
    visits: Arc<Mutex<Vec<Visit>>>,
    healthy: Arc<AtomicBool>,
    delay: Arc<AtomicU64>,
) {
    let mut visit = None;
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        if req.uri().path() == "/healthz" {
            if healthy.load(Ordering::SeqCst) {
                return Ok(resp);
            }
            let mut refuse = ErrorResponse::new(None);
            *refuse.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Err(refuse);
        }
        visit = Some(Visit {
            namespace: header("x-weir-object-namespace"),
            id: header("x-weir-object-id"),
            target,
            opened: Instant::now(),
            closed: None,
        });
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let Some(v) = visit else { return }; // a health probe
    let index = {
        let mut all = visits.lock().unwrap();
        all.push(v);
        all.len() - 1
    };
    if ws.send(Message::text(format!("host:{name}"))).await.is_ok() {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                // tungstenite answers the close on the next read, after this delay.
                tokio::time::sleep(std::time::Duration::from_millis(delay.load(Ordering::SeqCst))).await;
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    }
    visits.lock().unwrap()[index].closed.get_or_insert(Instant::now());
    // Answer the close (if any) now that the visit is over.
    let _ = ws.next().await;
}
