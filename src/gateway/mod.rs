//! The gateway: Pingora's HTTP server app that accepts requests, routes them, runs the WebSocket
//! handshake on both sides and hands the two raw streams to the relay.
//!
//! - `head.rs`: reads the request head (bounded), keeping early bytes (warm path).
//! - `handshake.rs`: RFC 6455 client checks, accept key, extension → RSV bits (warm, pure).
//! - `reject.rs`: `RejectReason` → status, body, metric label (warm, pure).
//! - `upstream.rs`: connect (Pingora's connector), forward the upgrade, read the answer (warm).
//! - `http.rs`: Pingora's `ProxyHttp` pipeline for plain HTTP on `http` routes (warm).
//! - `demo.rs`: the demo page served at `GET /` when enabled (warm).
//!
//! Pingora calls `Gateway::process_new_http` once per request on a client connection (its
//! listener, TLS and HTTP/1 session handling stay Pingora's). For an upgrade it runs the
//! handshake, then moves the two streams into a small task of their own that runs the relay to
//! the end and writes the usage record; Pingora's per-request task (and the handshake's state)
//! end at the 101. A WebSocket therefore costs one parked task of about 2 KB, no timer and no
//! wakeup while idle (measured: README "Benchmark").

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod demo;
pub mod handshake;
pub mod head;
pub mod http;
pub mod reject;
pub mod upstream;

use crate::builtin::session;
use crate::config::{Config, Target, Timeouts};
use crate::metering::live::{Live, LiveSet};
use crate::metering::{Meter, ObjectRef, UsageLog};
use crate::metrics::Metrics;
use crate::objects::registry::{Lease, PlaceError};
use crate::objects::{Namespace, Objects};
use crate::pools::{Pools, MAX_CONNECT_ATTEMPTS};
use crate::relay::pump::{code_class, ObjectLink, Relay, RelayReport};
use crate::relay::scanner::{Chunks, Role, ScanPolicy};
use crate::relay::tap::Tap;
use crate::routing::RouteTable;
use async_trait::async_trait;
use head::{HeadError, RequestHead};
use pingora_core::apps::{HttpServerApp, ReusedHttpStream};
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use reject::RejectReason;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use upstream::UpstreamError;

/// An upgraded connection on its way to the relay.
struct Relayed {
    client: Stream,
    backend: Stream,
    /// Bytes each side sent after its handshake head: `[client, backend]`.
    early: [Vec<u8>; 2],
    rsv: u8,
    route: String,
    pool: String,
    /// The connection in the live set (its identity and interim state).
    live: Arc<Live>,
    /// The object placement, on object routes.
    lease: Option<Lease>,
}

/// A connected backend: its address, the stream, and when connecting started.
type Connected = (SocketAddr, Stream, Instant);

/// A client upgrade on its way to a backend, object host or built-in object.
struct Upgrade<'a> {
    stream: Stream,
    head: RequestHead,
    ws: handshake::ClientHandshake,
    route: String,
    /// Pool name, or namespace name on object routes (the `pool` metric label).
    pool: String,
    meter: Meter,
    tls: bool,
    /// The namespace and id, on object routes.
    object: Option<(&'a Namespace, String)>,
}

/// The route label used for requests that matched no route.
const NO_ROUTE: &str = "none";

/// Everything a request needs, built once at startup and shared by every connection.
pub struct Gateway {
    routes: Arc<RouteTable>,
    pools: Arc<Pools>,
    pool_names: Vec<String>,
    objects: Arc<Objects>,
    timeouts: Timeouts,
    grace_period: Duration,
    demo_page: bool,
    connector: TransportConnector,
    metrics: Metrics,
    usage: Arc<UsageLog>,
    live: Arc<LiveSet>,
    /// Tenant of routes that name none.
    default_tenant: Option<String>,
    /// Accept upgrades while the spool cannot be written.
    fail_open: bool,
    /// Per-message chunk sizes the pricing units need from the scanners.
    chunks: Chunks,
    http: Arc<HttpProxy<http::HttpRoutes>>,
}

impl Gateway {
    /// Assemble the gateway from the validated config and the shared parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        routes: Arc<RouteTable>,
        pools: Arc<Pools>,
        objects: Arc<Objects>,
        metrics: Metrics,
        usage: Arc<UsageLog>,
        live: Arc<LiveSet>,
        http: Arc<HttpProxy<http::HttpRoutes>>,
    ) -> Gateway {
        Gateway {
            routes,
            pools,
            objects,
            pool_names: config.pools.iter().map(|p| p.name.clone()).collect(),
            timeouts: config.timeouts,
            grace_period: config.grace_period,
            demo_page: config.demo_page,
            connector: TransportConnector::new(None),
            metrics,
            usage,
            live,
            default_tenant: config.usage.default_tenant.clone(),
            fail_open: config.usage.fail_open,
            chunks: crate::billing::units::chunks(&config.billing_units),
            http,
        }
    }

    /// Serve one request on `stream`: a WebSocket (relayed to its end), plain HTTP on an `http`
    /// route (Pingora's proxy; the stream may come back for the next request), the demo page, or
    /// a rejection.
    async fn serve(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<ReusedHttpStream> {
        let client = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let tls = stream.get_ssl_digest().is_some();
        let mut meter = Meter::start(client);
        meter.tenant = self.default_tenant.clone();
        let mut watch = shutdown.clone();
        let head = tokio::select! {
            head = head::read_head(&mut stream, self.timeouts.request_head) => head,
            _ = watch.wait_for(|down| *down) => return None,
        };
        let head = match head {
            Ok(h) => h,
            Err(HeadError::Closed | HeadError::TimedOut | HeadError::Io(_)) => return None,
            Err(HeadError::TooLarge) => {
                self.reject(&mut stream, RejectReason::HeadTooLarge, None, None).await;
                return None;
            }
            Err(HeadError::Malformed(why)) => {
                tracing::debug!(client = ?client, %why, "malformed request head");
                self.reject(&mut stream, RejectReason::MalformedRequest, None, None).await;
                return None;
            }
        };
        let wants_ws = handshake::wants_websocket(&head);
        if self.demo_page && !wants_ws && head.method == "GET" && head.path() == "/" {
            let _ = stream.write_all(&demo::response()).await;
            let _ = stream.flush().await;
            return None;
        }
        let Some(route) = self.routes.resolve(head.host().as_deref(), head.path()) else {
            let record = wants_ws.then_some(meter);
            self.reject(&mut stream, RejectReason::UnknownRoute, None, record).await;
            return None;
        };
        meter.route = Some(route.name.clone());
        if route.tenant.is_some() {
            meter.tenant = route.tenant.clone();
        }
        if wants_ws && !self.fail_open && !self.usage.spool().healthy() {
            // Usage could not be recorded durably: take no new connections (documented).
            self.reject(&mut stream, RejectReason::SpoolUnavailable, Some(&route.name), Some(meter)).await;
            return None;
        }
        let Target::Pool(pool_index) = route.target else {
            let ns = match route.target {
                Target::Object(n) => self.objects.get(n),
                Target::Pool(_) => None,
            };
            if let Some(ns) = ns {
                self.object_upgrade(stream, head, route.name.clone(), ns, meter, tls, shutdown).await;
            }
            return None;
        };
        let pool = self.pool_names.get(pool_index).cloned().unwrap_or_default();
        meter.pool = Some(pool.clone());
        if route.kind == crate::config::RouteKind::Http && !wants_ws {
            self.metrics.http_requests.with_label_values(&[&route.name]).inc();
            let mut session = ServerSession::new_http1(stream);
            session.set_pipelined_prefix(head.buf);
            session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
            return self.http.process_new_http(session, shutdown).await;
        }
        self.upgrade(stream, head, route.name.clone(), pool_index, pool, meter, tls, shutdown).await;
        None
    }

    /// The WebSocket path: check the client's upgrade, connect to a backend and forward it,
    /// answer the client, and start the relay. Every failure is answered, counted and recorded
    /// here.
    #[allow(clippy::too_many_arguments)]
    async fn upgrade(
        self: &Arc<Self>,
        mut stream: Stream,
        head: RequestHead,
        route: String,
        pool_index: usize,
        pool: String,
        meter: Meter,
        tls: bool,
        shutdown: &ShutdownWatch,
    ) {
        let ws = match handshake::check_client(&head) {
            Ok(ws) => ws,
            Err(reason) => return self.reject(&mut stream, reason, Some(&route), Some(meter)).await,
        };
        let client_ip = meter.client.map(|a| a.ip());
        let connected = match self.connect(pool_index, client_ip).await {
            Ok(b) => b,
            Err(reason) => return self.reject(&mut stream, reason, Some(&route), Some(meter)).await,
        };
        let upgrade = Upgrade { stream, head, ws, route, pool, meter, tls, object: None };
        self.backend_upgrade(upgrade, connected, None, shutdown).await;
    }

    /// The WebSocket path of an object route: check the client's upgrade and the object id,
    /// then run a built-in object or place the id on a host and relay to it.
    #[allow(clippy::too_many_arguments)]
    async fn object_upgrade(
        self: &Arc<Self>,
        mut stream: Stream,
        head: RequestHead,
        route: String,
        ns: &Namespace,
        mut meter: Meter,
        tls: bool,
        shutdown: &ShutdownWatch,
    ) {
        let ws = match handshake::check_client(&head) {
            Ok(ws) => ws,
            Err(reason) => return self.reject(&mut stream, reason, Some(&route), Some(meter)).await,
        };
        let c = &ns.config;
        let id = match crate::objects::id::extract(&c.id_source, &c.id_rules, &head.target, &head.headers) {
            Ok(id) => id,
            Err(e) => {
                let detail = e.to_string();
                tracing::debug!(route, namespace = %c.name, error = %detail, "bad object id");
                return self
                    .reject_with(&mut stream, RejectReason::BadObjectId, &detail, Some(&route), Some(meter))
                    .await;
            }
        };
        meter.object = Some(ObjectRef { namespace: c.name.clone(), id: id.clone() });
        let upgrade = Upgrade { stream, head, ws, route, pool: c.name.clone(), meter, tls, object: Some((ns, id)) };
        if let Some(object) = &ns.builtin {
            return self.builtin_upgrade(upgrade, object.clone(), shutdown).await;
        }
        let Some((_, id)) = &upgrade.object else { return };
        match self.connect_object(ns, id, upgrade.meter.tenant.as_deref()).await {
            Ok((connected, lease)) => self.backend_upgrade(upgrade, connected, Some(lease), shutdown).await,
            Err(reason) => {
                let mut u = upgrade;
                self.reject(&mut u.stream, reason, Some(&u.route), Some(u.meter)).await
            }
        }
    }

    /// Forward the upgrade to the connected backend (or object host), check its answer, answer
    /// the client and start the relay.
    async fn backend_upgrade(
        self: &Arc<Self>,
        u: Upgrade<'_>,
        connected: Connected,
        lease: Option<Lease>,
        shutdown: &ShutdownWatch,
    ) {
        let Upgrade { mut stream, head, ws, route, pool, mut meter, tls, object } = u;
        let (backend_addr, mut backend, connect_started) = connected;
        let client_ip = meter.client.map(|a| a.ip());
        meter.backend = Some(backend_addr.to_string());
        let target = object.as_ref().map(|(ns, id)| upstream::ObjectTarget {
            namespace: &ns.config.name,
            id,
            forward_path: ns.config.forward_path.as_deref(),
        });
        let request = upstream::upgrade_request(&head, client_ip, tls, &meter.id.to_string(), target);
        let answer = match upstream::handshake(&mut backend, &request, self.timeouts.backend_handshake).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%route, backend = %backend_addr, error = %e, "backend handshake failed");
                return self.reject(&mut stream, upstream_reason(&e), Some(&route), Some(meter)).await;
            }
        };
        if answer.status != 101 {
            return self.refused(answer, backend, stream, &route, meter).await;
        }
        let accept_ok =
            answer.headers.get("sec-websocket-accept").as_deref() == Some(handshake::accept_key(&ws.key).as_str());
        if !accept_ok || !answer.headers.has_token("upgrade", "websocket") {
            tracing::warn!(%route, backend = %backend_addr, "backend answered 101 without a valid Sec-WebSocket-Accept/Upgrade");
            return self.reject(&mut stream, RejectReason::BackendBadHandshake, Some(&route), Some(meter)).await;
        }
        self.metrics.backend_connect.with_label_values(&[&pool]).observe(connect_started.elapsed().as_secs_f64());
        meter.subprotocol = answer.headers.get("sec-websocket-protocol");
        let head_101 = answer.buf.get(..answer.head_len).unwrap_or(&[]);
        let Some(meter) = self.answer_101(&mut stream, head_101, meter).await else { return };
        let rsv = handshake::allowed_rsv(answer.headers.get("sec-websocket-extensions").as_deref());
        // Keep only the early bytes (usually none) and hand the two streams to a task of their
        // own: Pingora's per-request task and this handshake's state (heads, buffers, the
        // connector's future) end here, so a long-lived connection carries nothing from its
        // handshake, only the relay (README, "Idle cost").
        let early = [head.early().to_vec(), answer.early().to_vec()];
        drop((head, answer, request));
        let mut lease = lease;
        if let Some(l) = lease.as_mut() {
            l.connected();
        }
        let live = self.live.begin(meter);
        let relayed = Relayed { client: stream, backend, early, rsv, route, pool, live, lease };
        tokio::spawn(self.clone().relay_to_end(relayed, shutdown.clone()));
    }

    /// Send the 101 `head` to the client; if it is gone, record the failed handshake and give
    /// the meter up.
    async fn answer_101(&self, stream: &mut Stream, head: &[u8], meter: Meter) -> Option<Meter> {
        if stream.write_all(head).await.is_ok() && stream.flush().await.is_ok() {
            return Some(meter);
        }
        self.usage.write(&meter.rejected(101, "client_gone", "client closed during the handshake"), "rejection");
        None
    }

    /// The scanner policies of a connection's two directions: `[client, backend]`.
    fn policies(&self, rsv: u8) -> [ScanPolicy; 2] {
        [Role::Client, Role::Server].map(|sender| ScanPolicy { sender, allowed_rsv: rsv, chunks: self.chunks })
    }

    /// Answer the client's upgrade and run a built-in object in a task of its own.
    async fn builtin_upgrade(self: &Arc<Self>, u: Upgrade<'_>, object: session::Object, shutdown: &ShutdownWatch) {
        let Upgrade { mut stream, head, ws, route, pool, meter, object: target, .. } = u;
        let Some((ns, id)) = target else { return };
        let mut lease = match ns.registry.place(&id, meter.tenant.as_deref(), &[], self.timeouts.backend_connect).await
        {
            Ok(l) => l,
            Err(_) => return self.reject(&mut stream, RejectReason::ObjectMoving, Some(&route), Some(meter)).await,
        };
        let answer = session::switching_protocols(&handshake::accept_key(&ws.key));
        let Some(meter) = self.answer_101(&mut stream, &answer, meter).await else { return };
        lease.connected();
        let live = self.live.begin(meter);
        let early = head.early().to_vec();
        drop(head);
        let this = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = this.metrics.connection(&route, &pool);
            let (active, duration) = (conn.active.clone(), conn.duration.clone());
            active.inc();
            let started = Instant::now();
            let [client, server] = this.policies(0);
            let tap = Tap::new(stream, early, client, server, conn, live.clone());
            let handle = lease.object().clone();
            let report = session::run(object, &id, tap, handle, shutdown, this.grace_period).await;
            active.dec();
            duration.observe(started.elapsed().as_secs_f64());
            let report = report.unwrap_or_else(|| {
                tracing::warn!(
                    route,
                    "built-in object session lost its stream; its stop record has the counts last seen"
                );
                live.lost_report()
            });
            this.connection_ended(&route, &pool, &live, Some(lease), &report);
        });
    }

    /// Place `id` on a host of `ns` and connect, moving the id off hosts that refuse.
    async fn connect_object(
        &self,
        ns: &Namespace,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<(Connected, Lease), RejectReason> {
        let started = Instant::now();
        let mut tried = Vec::new();
        let mut last = RejectReason::NoHealthyBackend;
        while tried.len() < MAX_CONNECT_ATTEMPTS {
            let lease = match ns.registry.place(id, tenant, &tried, self.timeouts.backend_connect).await {
                Ok(l) => l,
                Err(PlaceError::NoHost) => break,
                Err(PlaceError::Moving) => return Err(RejectReason::ObjectMoving),
            };
            let (Some(addr), Some(host)) = (lease.addr(), lease.host_index()) else { break };
            tried.push(host);
            match upstream::connect(&self.connector, addr, self.timeouts.backend_connect).await {
                Ok(s) => return Ok(((addr, s, started), lease)),
                Err(e) => {
                    tracing::warn!(namespace = %ns.config.name, host = %addr, error = %e, "cannot connect to object host");
                    last = upstream_reason(&e);
                    lease.connect_failed();
                }
            }
        }
        Err(last)
    }

    /// Relay a connection to its end (the connection's only task), export its metrics and
    /// write its usage record.
    async fn relay_to_end(self: Arc<Self>, c: Relayed, shutdown: ShutdownWatch) {
        let (route, pool) = (c.route.as_str(), c.pool.as_str());
        let mut conn = self.metrics.connection(route, pool);
        conn.active.inc();
        let started = Instant::now();
        let [client_policy, backend_policy] = self.policies(c.rsv);
        let [client_early, backend_early] = &c.early;
        // The relay is built in a block of its own: a local that is borrowed (`link_object`) would
        // otherwise keep its own slot in this task's state for the whole connection (~1 KiB).
        let run = {
            let mut relay =
                Relay::new(c.client, c.backend, client_policy, backend_policy, client_early, backend_early, &mut conn);
            relay.observe_with(c.live.clone());
            if let Some(lease) = &c.lease {
                let object = lease.object().clone();
                relay.link_object(ObjectLink { on_message: Box::new(move || object.touch()), moved: lease.evicted() });
            }
            relay.run(shutdown, self.grace_period)
        };
        let report = run.await;
        conn.active.dec();
        conn.duration.observe(started.elapsed().as_secs_f64());
        self.connection_ended(route, pool, &c.live, c.lease, &report);
    }

    /// Count a finished connection, write its usage record and release its object lease.
    fn connection_ended(&self, route: &str, pool: &str, live: &Live, lease: Option<Lease>, report: &RelayReport) {
        let m = &self.metrics;
        m.connections_total.with_label_values(&[route, pool, report.outcome.as_str()]).inc();
        m.closes.with_label_values(&[route, report.initiator.as_str(), code_class(report.close_code)]).inc();
        if let Some((d, v)) = report.violation {
            m.protocol_violations.with_label_values(&[route, d.as_str(), v.as_str()]).inc();
            tracing::info!(
                route,
                direction = d.as_str(),
                violation = v.as_str(),
                "closed a connection for a protocol violation"
            );
        }
        if report.outcome == crate::relay::pump::Outcome::Moved {
            m.object_evictions.with_label_values(&[pool]).inc();
        }
        let record = self.live.end(live, report);
        tracing::debug!(
            connection_id = %record.connection_id, route, outcome = %record.outcome,
            duration_ms = record.duration_ms, close_code = ?report.close_code, initiator = report.initiator.as_str(),
            "connection ended"
        );
        self.usage.write(&record, "stop");
        if let Some(lease) = lease {
            lease.finish(&report.counts);
        }
    }

    /// Pick a backend and connect, trying up to `MAX_CONNECT_ATTEMPTS` backends.
    async fn connect(&self, pool: usize, client: Option<IpAddr>) -> Result<Connected, RejectReason> {
        let started = Instant::now();
        let mut tried = Vec::new();
        let mut last = RejectReason::NoHealthyBackend;
        while tried.len() < MAX_CONNECT_ATTEMPTS {
            let Some(addr) = self.pools.select(pool, client, &tried) else { break };
            tried.push(addr);
            match upstream::connect(&self.connector, addr, self.timeouts.backend_connect).await {
                Ok(s) => return Ok((addr, s, started)),
                Err(e) => {
                    tracing::warn!(backend = %addr, error = %e, "cannot connect to backend");
                    last = upstream_reason(&e);
                }
            }
        }
        Err(last)
    }

    /// Answer `reason`, count it, and record it when `meter` is given.
    async fn reject(&self, stream: &mut Stream, reason: RejectReason, route: Option<&str>, meter: Option<Meter>) {
        self.reject_with(stream, reason, reason.body(), route, meter).await;
    }

    /// `reject` with `body` as the response body and the record's reason (e.g. which id rule broke).
    async fn reject_with(
        &self,
        stream: &mut Stream,
        reason: RejectReason,
        body: &str,
        route: Option<&str>,
        meter: Option<Meter>,
    ) {
        let _ = stream.write_all(&reason.response_with(body)).await;
        let _ = stream.flush().await;
        let route = route.unwrap_or(NO_ROUTE);
        self.metrics.handshake_rejections.with_label_values(&[route, reason.as_str()]).inc();
        if let Some(meter) = meter {
            tracing::debug!(route, reason = reason.as_str(), status = reason.status(), "handshake rejected");
            let detail = if body == reason.body() { reason.as_str() } else { body };
            self.usage.write(&meter.rejected(reason.status(), reason.outcome(), detail), "rejection");
        }
    }

    /// The backend answered the upgrade with something other than 101: pass it on unchanged.
    async fn refused(
        &self,
        answer: upstream::ResponseHead,
        mut backend: Stream,
        mut client: Stream,
        route: &str,
        meter: Meter,
    ) {
        let status = answer.status;
        tracing::debug!(route, status, "backend refused the upgrade; passing its answer through");
        let _ = upstream::pass_through(answer, &mut backend, &mut client, self.timeouts.backend_handshake).await;
        self.metrics.handshake_rejections.with_label_values(&[route, reject::BACKEND_REFUSED]).inc();
        let reason = format!("backend answered {status}");
        self.usage.write(&meter.rejected(status, reject::BACKEND_REFUSED, &reason), "rejection");
    }
}

fn upstream_reason(e: &UpstreamError) -> RejectReason {
    match e {
        UpstreamError::Unreachable(_) => RejectReason::BackendUnreachable,
        UpstreamError::TimedOut(_) => RejectReason::BackendTimeout,
        UpstreamError::BadResponse(_) => RejectReason::BackendBadHandshake,
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    /// Runs once per request on a client connection, after Pingora's listener (and TLS) accepted
    /// it. Returns the stream when an `http` route's keep-alive connection can take another request.
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session {
            ServerSession::H1(h1) => self.serve(h1.into_inner(), shutdown).await,
            // HTTP/2 is never negotiated on weir's listeners (no ALPN h2, no h2c).
            _ => None,
        }
    }

    async fn http_cleanup(&self) {
        self.http.http_cleanup().await;
    }
}
