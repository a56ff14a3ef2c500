//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is up),
//! `/readyz` (every public listener accepts connections right now: checked by connecting to it,
//! after `owner` confirmed once that the socket on its port is weir's own; the descriptor
//! reserve is not in use: `fds`; and shutdown has not begun), the JSON API (`api`) and the
//! status page at `/` (`status.html`, compiled in: HTML and JavaScript that read
//! the API), on a port of its own.
//!
//! The listener runs outside Pingora's service lifecycle, on a thread and a current-thread tokio
//! runtime of its own (`AdminServer`), so it keeps answering while Pingora drains connections
//! after SIGTERM (Pingora stops every service's listener at once): `/readyz` then answers 503
//! "shutting down: draining N connections", `/metrics` and `/healthz` 200, until `server::run`
//! stops it after the final flush, delivery and `admin.final_scrape`. It learns that shutdown
//! began from Pingora's shutdown watch (`ShutdownWatcher`, a background service: the same signal
//! that stops the public listeners, so `/readyz` never blames a listener for a shutdown) and from
//! its execution phases (`Server::watch_execution_phase`, which SIGINT's fast shutdown sends too).
//!
//! The HTTP is minimal: one request per connection (`Connection: close`), `GET` or `HEAD` (the
//! API also `POST` and `DELETE`, with a `Content-Length` body of at most `MAX_BODY` bytes read
//! within `HEAD_TIMEOUT`; more gets 413), the head read with `http1::head::read_head` (at most `MAX_HEAD_BYTES`, within
//! `HEAD_TIMEOUT`), at most `MAX_CONNECTIONS` served at once. The accept loop backs off on
//! EMFILE/ENFILE as the built-in echo's does (`crate::accept`), counting failures in
//! `weir_accept_errors_total{listener="admin"}`.
//!
//! Cold/warm path: one request at a time from a scraper; never on a client's path.

pub mod api;
pub mod owner;

use crate::accept::AcceptErrors;
use crate::fds::Descriptors;
use crate::http1::head::{read_head, HeadError, RequestHead};
use async_trait::async_trait;
use pingora_core::server::{ExecutionPhase, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use prometheus::{Encoder, IntCounterVec, Registry, TextEncoder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch, Semaphore};

/// The `listener` label of the admin listener's accept errors.
pub const LISTENER: &str = "admin";
/// Longest a readiness connect to a listener may take.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Time a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the answer has to be written.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the answer, how long unread request bytes are drained before the connection is closed
/// (closing with unread bytes would reset the connection and could lose the answer).
const LINGER: Duration = Duration::from_secs(1);
/// Most request bytes drained after the answer.
const LINGER_BYTES: usize = 64 * 1024;
/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request body the API reads (a pushed message), bytes; longer bodies get 413.
pub const MAX_BODY: usize = 64 * 1024;
/// Once the listener is stopped, how long answers in progress get to finish.
const STOP_WAIT: Duration = Duration::from_secs(1);
/// The status page served at `/`: static HTML and JavaScript that read the JSON API.
const STATUS_PAGE: &str = include_str!("status.html");
/// Headers of the status page: its script and style are inline, it talks to this origin only
/// and may not be framed (its Kick buttons must not be clickjacked).
const STATUS_PAGE_HEADERS: &str = "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\n";

/// What the admin endpoints answer from: the metrics registry, the readiness checks and the
/// shutdown state.
pub struct Admin {
    /// What the API acts on (`None`: no API).
    api: Option<api::Ops>,
    /// Who may ask what.
    access: api::Access,
    registry: Registry,
    listeners: Vec<SocketAddr>,
    /// Per listener: its listening socket was seen among this process's own (`owner`), once.
    confirmed: Vec<AtomicBool>,
    fds: Arc<Descriptors>,
    open: Box<dyn Fn() -> usize + Send + Sync>,
    shutting_down: AtomicBool,
    /// The shutdown is a binary upgrade's (Pingora's SIGQUIT): the drain refuses nothing.
    upgrading: AtomicBool,
    /// Pingora's shutdown watch, once `ShutdownWatcher` started.
    pingora_shutdown: OnceLock<ShutdownWatch>,
}

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Content-Type` value.
    pub content_type: String,
    /// The body (not sent to `HEAD`).
    pub body: Vec<u8>,
    /// Add `WWW-Authenticate: Bearer` (a 401).
    pub www_authenticate: bool,
    /// Further header lines, each ending in CRLF (empty for most answers).
    pub headers: &'static str,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: body.as_bytes().to_vec(),
            www_authenticate: false,
            headers: "",
        }
    }

    fn json(status: u16, body: &serde_json::Value) -> Answer {
        let mut body = serde_json::to_vec_pretty(body).unwrap_or_default();
        body.push(b'\n');
        Answer { status, content_type: "application/json".into(), body, www_authenticate: false, headers: "" }
    }

    /// The whole response, head and (unless `head_only`) body, with `Connection: close`.
    pub fn encode(&self, head_only: bool) -> Vec<u8> {
        let reason = http::StatusCode::from_u16(self.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        let allow = match (self.status, self.www_authenticate) {
            (405, _) => "Allow: GET, HEAD, POST, DELETE\r\n",
            (_, true) => "WWW-Authenticate: Bearer realm=\"weir-admin\"\r\n",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}{}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            self.headers
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

impl Admin {
    /// Serve `registry` on `/metrics`; `/readyz` connects to each of `listeners` and checks
    /// that descriptors are left beyond the reserve; once shutdown began it reports `open()`
    /// connections still draining.
    pub fn new(
        registry: Registry,
        listeners: Vec<SocketAddr>,
        fds: Arc<Descriptors>,
        open: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Admin {
        Admin {
            api: None,
            access: api::Access::default(),
            registry,
            confirmed: listeners.iter().map(|_| AtomicBool::new(false)).collect(),
            listeners,
            fds,
            open: Box::new(open),
            shutting_down: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            pingora_shutdown: OnceLock::new(),
        }
    }

    /// Serve the API over `ops`, with `access` rules.
    pub fn with_api(mut self, ops: api::Ops, access: api::Access) -> Admin {
        if access.token.is_none() {
            tracing::info!("admin: no admin.token configured; the /api endpoints answer loopback clients only");
        }
        self.api = Some(ops);
        self.access = access;
        self
    }

    /// Shutdown began: from now on `/readyz` answers 503, and open connections are closed spread
    /// over the drain window (those left at `server.grace_period` get 1001 then). Idempotent.
    pub fn begin_shutdown(&self) {
        if !self.shutting_down.swap(true, Ordering::Relaxed) {
            tracing::info!("admin: shutdown began; /readyz answers 503 until exit, /metrics goes on");
        }
    }

    /// Start the drain of a shutdown (on the caller's runtime).
    pub fn drain_for_shutdown(&self) {
        if let Some(ops) = &self.api {
            api::drain(&ops.live, ops.plan, !self.upgrading.load(Ordering::Relaxed));
        }
    }

    /// True once shutdown began.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed) || self.pingora_shutdown.get().is_some_and(|w| *w.borrow())
    }

    fn draining(&self) -> String {
        format!("shutting down: draining {} connections", (self.open)())
    }

    /// `Ok` when new connections are welcome; otherwise why not.
    pub async fn ready(&self) -> Result<(), String> {
        if self.shutting_down() {
            return Err(self.draining());
        }
        if self.api.as_ref().is_some_and(|ops| ops.live.draining()) {
            return Err(format!("draining (POST /api/drain): {} connections open", (self.open)()));
        }
        if self.fds.exhausted() {
            return Err(format!("the public listeners cannot take new connections: {}", self.fds.describe()));
        }
        for (l, confirmed) in self.listeners.iter().zip(&self.confirmed) {
            if !confirmed.load(Ordering::Relaxed) {
                match owner::listener_owner(std::process::id(), *l) {
                    owner::Owner::Process | owner::Owner::Unknown => confirmed.store(true, Ordering::Relaxed),
                    owner::Owner::Other => {
                        return Err(format!(
                            "listener {l}: another process listens on port {}; weir's own bind is still being retried",
                            l.port()
                        ))
                    }
                    owner::Owner::Nobody => return Err(format!("listener {l} is not listening yet")),
                }
            }
            let mut target = *l;
            if target.ip().is_unspecified() {
                target.set_ip(match target.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            let refused =
                match tokio::time::timeout(READY_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => format!("listener {l} does not accept: {e}"),
                    Err(_) => format!("listener {l} does not accept within {READY_CONNECT_TIMEOUT:?}"),
                };
            // Pingora sets its shutdown watch before it stops a listener: a listener that stopped
            // for the shutdown is reported as the shutdown.
            return Err(if self.shutting_down() { self.draining() } else { refused });
        }
        Ok(())
    }

    /// The answer to `GET path`.
    pub async fn answer(&self, path: &str) -> Answer {
        match path {
            "/metrics" => {
                let encoder = TextEncoder::new();
                let mut out = Vec::new();
                if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
                    return Answer::text(500, &format!("cannot encode metrics: {e}\n"));
                }
                Answer {
                    status: 200,
                    content_type: encoder.format_type().to_string(),
                    body: out,
                    www_authenticate: false,
                    headers: "",
                }
            }
            "/" => Answer {
                status: 200,
                content_type: "text/html; charset=utf-8".into(),
                body: STATUS_PAGE.as_bytes().to_vec(),
                www_authenticate: false,
                headers: STATUS_PAGE_HEADERS,
            },
            "/healthz" => Answer::text(200, "ok\n"),
            "/readyz" => match self.ready().await {
                Ok(()) => Answer::text(200, "ready\n"),
                Err(why) => Answer::text(503, &format!("not ready: {why}\n")),
            },
            _ => Answer::text(404, "not found; try / (the status page), /metrics, /healthz or /readyz\n"),
        }
    }
}

/// True for the execution phases Pingora enters once shutdown begins (any signal).
pub fn shutdown_phase(phase: &ExecutionPhase) -> bool {
    matches!(
        phase,
        ExecutionPhase::GracefulUpgradeTransferringFds
            | ExecutionPhase::GracefulUpgradeCloseTimeout
            | ExecutionPhase::GracefulTerminate
            | ExecutionPhase::ShutdownStarted
            | ExecutionPhase::ShutdownGracePeriod
            | ExecutionPhase::ShutdownRuntimes
            | ExecutionPhase::Terminated
    )
}

/// A Pingora background service that hands Pingora's shutdown watch to `Admin` and marks the
/// start of a graceful shutdown on it.
pub struct ShutdownWatcher(pub Arc<Admin>);

#[async_trait]
impl BackgroundService for ShutdownWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = self.0.pingora_shutdown.set(shutdown.clone());
        if shutdown.wait_for(|s| *s).await.is_ok() {
            self.0.begin_shutdown();
            self.0.drain_for_shutdown();
        }
    }
}

/// The admin listener on its own thread and runtime; `stop` ends it.
pub struct AdminServer {
    admin: Arc<Admin>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Bind `address` and serve `admin` on it from a thread of its own until `stop`. `phases`
    /// (Pingora's `Server::watch_execution_phase`) tells it when shutdown begins; failed accepts
    /// are counted in `accept_errors{listener="admin"}`.
    ///
    /// Start it right before `Server::run` (Pingora would lose this thread if it daemonized;
    /// weir never asks it to). With `wait` (a binary upgrade: the old process still answers on
    /// the address until it exits), a busy address is bound as soon as it is free, within
    /// `wait`.
    pub fn start(
        admin: Arc<Admin>,
        address: SocketAddr,
        accept_errors: &IntCounterVec,
        phases: broadcast::Receiver<ExecutionPhase>,
        wait: Duration,
    ) -> std::io::Result<AdminServer> {
        let bound = match std::net::TcpListener::bind(address) {
            Ok(l) => Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && !wait.is_zero() => {
                tracing::info!(%address, "admin address in use (the old process of an upgrade): taken once it is free");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(l) = &bound {
            l.set_nonblocking(true)?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let errors = AcceptErrors::new(LISTENER, "admin", accept_errors);
        let (stop, stopped) = watch::channel(false);
        let served = admin.clone();
        let thread = std::thread::Builder::new().name("weir-admin".into()).spawn(move || {
            runtime.block_on(async move {
                let Some(listener) = bound_within(bound, address, wait).await else { return };
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin: cannot serve the listener");
                        return;
                    }
                };
                tokio::spawn(watch_phases(served.clone(), phases));
                serve(listener, served, errors, stopped).await;
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?;
        Ok(AdminServer { admin, stop, thread: Some(thread) })
    }

    /// What it serves (to mark the start of shutdown).
    pub fn admin(&self) -> &Arc<Admin> {
        &self.admin
    }

    /// Stop accepting (connections are refused from now on), give answers in progress up to a
    /// second, and wait for the thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("admin: the listener's thread panicked");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Mark the start of shutdown on `admin` when Pingora enters a shutdown phase (or goes away).
/// `bound`, or `address` bound within `wait` (polled every 100 ms: the old process of an
/// upgrade frees it when it exits).
async fn bound_within(
    bound: Option<std::net::TcpListener>,
    address: SocketAddr,
    wait: Duration,
) -> Option<std::net::TcpListener> {
    if bound.is_some() {
        return bound;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match std::net::TcpListener::bind(address).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(l) => {
                tracing::info!(%address, "admin listening (taken over after the upgrade)");
                return Some(l);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::error!(%address, error = %e, "admin: the address did not come free; no admin listener");
                return None;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn watch_phases(admin: Arc<Admin>, mut phases: broadcast::Receiver<ExecutionPhase>) {
    loop {
        match phases.recv().await {
            Ok(phase) if shutdown_phase(&phase) => {
                let upgrade = matches!(
                    phase,
                    ExecutionPhase::GracefulUpgradeTransferringFds | ExecutionPhase::GracefulUpgradeCloseTimeout
                );
                admin.upgrading.store(upgrade, Ordering::Relaxed);
                break;
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    admin.begin_shutdown();
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The accept loop: one task per connection, at most `MAX_CONNECTIONS` at once, backing off on
/// accept errors that retrying does not clear.
async fn serve(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    mut errors: AcceptErrors,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = stopped(&mut stop) => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        tokio::select! {
            () = stopped(&mut stop) => break,
            (stream, _) = errors.next(&listener) => {
                let admin = admin.clone();
                tokio::spawn(async move {
                    respond(&admin, stream).await;
                    drop(permit);
                });
            }
        }
    }
    // New connections are refused from here on; answers in progress get `STOP_WAIT`.
    drop(listener);
    let _ = tokio::time::timeout(STOP_WAIT, slots.acquire_many(MAX_CONNECTIONS as u32)).await;
}

/// Read one request head, answer it, close.
async fn respond(admin: &Admin, mut stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let (answer, head_only) = match read_head(&mut stream, HEAD_TIMEOUT).await {
        Ok(head) if !admin.access.allows(head.path(), peer, head.headers.get("authorization").as_deref()) => {
            let mut a =
                Answer::json(401, &serde_json::json!({"error": "this path needs Authorization: Bearer <admin.token>"}));
            a.www_authenticate = true;
            (a, head.method == "HEAD")
        }
        Ok(head) if head.path().starts_with("/api/") => match &admin.api {
            Some(ops) => {
                let (status, body) = match read_body(&mut stream, &head).await {
                    Ok(body) => {
                        let content_type = head.headers.get("content-type");
                        let request = api::Request { content_type: content_type.as_deref(), body: &body };
                        api::answer(ops, &head.method, &head.target, request).await
                    }
                    Err(reply) => reply,
                };
                (Answer::json(status, &body), head.method == "HEAD")
            }
            None => (Answer::text(404, "no API on this instance\n"), false),
        },
        Ok(head) if head.method == "GET" || head.method == "HEAD" => {
            (admin.answer(head.path()).await, head.method == "HEAD")
        }
        Ok(_) => (Answer::text(405, "method not allowed; use GET\n"), false),
        Err(HeadError::Closed | HeadError::Io(_)) => return,
        Err(HeadError::TimedOut) => (Answer::text(408, "the request head did not arrive in time\n"), false),
        Err(HeadError::TooLarge) => (Answer::text(431, "request head too large\n"), false),
        Err(HeadError::Malformed(why)) => (Answer::text(400, &format!("bad request: {why}\n")), false),
    };
    let bytes = answer.encode(head_only);
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    // Drain what the client still sends (a body, the rest of a head too large) until it closes,
    // bounded, so the close does not reset the connection before the answer is read.
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// The request's body, by its `Content-Length` (none without one): at most `MAX_BODY` bytes,
/// read within `HEAD_TIMEOUT`. A 4xx answer when it cannot be read.
async fn read_body(stream: &mut tokio::net::TcpStream, head: &RequestHead) -> Result<Vec<u8>, api::Reply> {
    let fail = |status: u16, message: &str| (status, serde_json::json!({ "error": message }));
    if head.headers.get("transfer-encoding").is_some() {
        return Err(fail(411, "send the body with a Content-Length, not chunked"));
    }
    let len = match head.headers.get("content-length") {
        None => return Ok(Vec::new()),
        Some(v) => v.trim().parse::<usize>().map_err(|_| fail(400, "Content-Length must be a whole number"))?,
    };
    if len > MAX_BODY {
        return Err(fail(413, &format!("the body is over {MAX_BODY} bytes")));
    }
    let mut body = head.early().get(..len.min(head.early().len())).unwrap_or_default().to_vec();
    let rest = len - body.len();
    if rest > 0 {
        let start = body.len();
        body.resize(len, 0);
        let read = tokio::time::timeout(HEAD_TIMEOUT, stream.read_exact(body.get_mut(start..).unwrap_or_default()));
        match read.await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(fail(400, "the connection closed inside the body")),
            Err(_) => return Err(fail(408, "the request body did not arrive in time")),
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_closed_http_1_1_with_a_length_and_head_has_no_body() {
        let a = Answer::text(503, "not ready: shutting down: draining 2 connections\n");
        let full = String::from_utf8(a.encode(false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{full}");
        assert!(full.contains("\r\nContent-Length: 49\r\n"), "{full}");
        assert!(full.contains("\r\nConnection: close\r\n"), "{full}");
        assert!(full.ends_with("\r\n\r\nnot ready: shutting down: draining 2 connections\n"), "{full}");
        let head = String::from_utf8(a.encode(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 49"), "{head}");
        let m = String::from_utf8(Answer::text(405, "x").encode(false)).unwrap();
        assert!(m.contains("\r\nAllow: GET, HEAD, POST, DELETE\r\n"), "{m}");
    }

    #[tokio::test]
    async fn the_status_page_is_served_at_the_root_with_its_policy() {
        let admin = Admin::new(Registry::new(), Vec::new(), Descriptors::new(0), || 0);
        let page = admin.answer("/").await;
        assert_eq!((page.status, page.content_type.as_str()), (200, "text/html; charset=utf-8"));
        let text = String::from_utf8(page.encode(false)).unwrap();
        assert!(text.contains("\r\nContent-Security-Policy: default-src 'none';"), "{text}");
        assert!(text.contains("frame-ancestors 'none'") && text.contains("/api/summary"));
        assert!(!text.contains("http://") && !text.contains("https://"), "no external resources");
    }

    #[test]
    fn only_shutdown_phases_mark_shutdown() {
        assert!(!shutdown_phase(&ExecutionPhase::Running));
        assert!(!shutdown_phase(&ExecutionPhase::BootstrapComplete));
        assert!(shutdown_phase(&ExecutionPhase::GracefulTerminate));
        assert!(shutdown_phase(&ExecutionPhase::ShutdownStarted));
    }

    #[tokio::test]
    async fn readyz_reports_the_drain_once_shutdown_began() {
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(3));
        let counted = open.clone();
        let admin = Admin::new(Registry::new(), Vec::new(), Descriptors::new(0), move || {
            counted.load(std::sync::atomic::Ordering::Relaxed)
        });
        assert_eq!(admin.answer("/readyz").await.status, 200);
        admin.begin_shutdown();
        let a = admin.answer("/readyz").await;
        assert_eq!((a.status, a.body.as_slice()), (503, &b"not ready: shutting down: draining 3 connections\n"[..]));
        open.store(0, std::sync::atomic::Ordering::Relaxed);
        assert!(String::from_utf8_lossy(&admin.answer("/readyz").await.body).contains("draining 0 connections"));
        assert_eq!(admin.answer("/healthz").await.status, 200);
        assert_eq!(admin.answer("/metrics").await.status, 200);
    }

    #[tokio::test]
    async fn readyz_is_not_fooled_by_another_process_on_a_listener_s_port() {
        // The race it guards: another process takes the port between weir's bind check and
        // Pingora's own (retried) bind, and answers the test connection.
        let (taken, mut holder) = owner::tests::port_held_by_another_process();
        let admin = Admin::new(Registry::new(), vec![taken], Descriptors::new(0), || 0);
        let a = admin.answer("/readyz").await;
        let body = String::from_utf8_lossy(&a.body).into_owned();
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert_eq!(a.status, 503, "{body}");
        assert!(body.contains(&format!("listener {taken}: another process listens on port")), "{body}");

        let own = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = Admin::new(Registry::new(), vec![own.local_addr().unwrap()], Descriptors::new(0), || 0);
        assert_eq!(admin.answer("/readyz").await.status, 200);
        assert!(admin.confirmed[0].load(Ordering::Relaxed), "confirmed once, then only connected to");
    }
}
