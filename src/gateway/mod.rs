//! The gateway: Pingora's HTTP server app that accepts requests, routes them, runs the WebSocket
//! handshake on both sides and hands the connection to the relay or a built-in object.
//!
//! - here: `Gateway`, built once; `serve` reads a request head, takes the config snapshot in
//!   force, routes the request and dispatches over the route's target; every refusal goes
//!   through `refuse` (warm path).
//! - `snapshot.rs`: `Snapshot`, what a reload swaps (routes, pools, objects, auth), built at
//!   startup and by `crate::reload` (cold).
//! - `upgrade.rs`: a client's upgrade to its target: the client checks, the object id, connect
//!   with retries (pools and object hosts alike), the backend's answer, the 101 (warm).
//! - `connection.rs`: the one after-101 path: the relay (`Running`, run by its caller) or a
//!   built-in object behind a tap (a task of its own) runs to the end and ends the connection
//!   (warm; the relay is hot).
//! - `observer.rs`: `ConnObserver`, what listens to a running connection (hot).
//! - `io.rs`: `Io`, a relayed side: a bare tokio socket (so the relay can splice, and an idle
//!   connection holds no wrapper), anything else as Pingora made it (warm).
//! - `handshake.rs`: RFC 6455 client checks (warm, pure). `reject.rs`: `RejectReason` → status,
//!   body, metric label (warm, pure). `upstream.rs`: connect, forward the upgrade, read the
//!   answer (warm). `http.rs`: Pingora's `ProxyHttp` pipeline for plain HTTP on `http` routes
//!   (warm). `demo.rs`: the demo page (warm). `external.rs`: admission by an `auth.external`
//!   endpoint, its verdict applied to the request or passed on to the client (warm).
//!   `proxied.rs`: which listeners expect a PROXY header, and reading it before TLS (warm).
//!
//! - `listen.rs`: the plain-TCP listeners, weir's own accept loop and a connection's one task,
//!   its handshake then its relay (cold: binding; warm: one accept and spawn per connection).
//!
//! `Gateway::process` runs once per client connection and serves its requests: weir's own
//! accept loop calls it for plain-TCP listeners (`listen.rs`), Pingora's listener for TLS
//! listeners (`Tls`, after Pingora's TLS handshake); for an upgrade it returns the relay
//! (`Running`). On a plain-TCP listener the handshake runs boxed in the connection's one task and
//! the box is freed at the 101, where the relay takes the task over; on a TLS listener the relay
//! gets a task of its own at the 101 (Pingora's task, with the handshake's state, then ends). A
//! WebSocket therefore costs one parked task of about half a KB, no timer and no wakeup while
//! idle (measured: README "Idle cost").

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod connection;
pub mod demo;
mod external;
pub mod handshake;
pub mod http;
pub mod io;
pub mod listen;
pub mod observer;
pub mod peer;
pub mod proxied;
pub mod reject;
pub mod snapshot;
pub mod upgrade;
pub mod upstream;

use crate::access::AccessLog;
use crate::admission::caps::{Permit, Refusal};
use crate::admission::{auth, origin};
use crate::config::{Config, Route, RouteKind, Target};
use crate::http1::head::{self, HeadError, RequestHead};
use crate::metering::live::LiveSet;
use crate::metering::quota::{self, Quotas};
use crate::metering::{Meter, Rejection};
use crate::metrics::{Metrics, Place};
use crate::relay::scanner::{Chunks, Role, ScanLimits, ScanPolicy};
use crate::relay::timers::Deadline;
use async_trait::async_trait;
use connection::Running;
use pingora_core::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use reject::RejectReason;
use snapshot::{Current, Snapshot};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The label values the gateway's metrics can take, known from `config` (for
/// `Metrics::prepare`, so every series starts at 0).
pub fn known_labels(config: &Config) -> crate::metrics::Known<'_> {
    let target = |t: &Target| match t {
        Target::Pool(i) => config.pools.get(*i).map(|p| Place::pool(&p.name)),
        Target::Object(i) => config.objects.get(*i).map(|n| Place::namespace(&n.name)),
    };
    crate::metrics::Known {
        routes: config.routes.iter().filter_map(|r| Some((r.name.as_str(), target(&r.target)?))).collect(),
        reasons: RejectReason::ALL
            .iter()
            .map(|r| r.as_str())
            .chain([reject::BACKEND_REFUSED, reject::BAD_PROXY_HEADER])
            .collect(),
        namespaces: config.objects.iter().map(|n| n.name.as_str()).collect(),
        sinks: config.usage.sinks.iter().map(|s| s.name.as_str()).collect(),
        tenants: config_tenants(config),
        units: config.billing_units.iter().map(|u| u.name.as_str()).collect(),
        claim_results: crate::cluster::ClaimResult::ALL.iter().map(|r| r.as_str()).collect(),
    }
}

/// The tenants `config` names, in order, once each: the default tenant, routes' tenants, API
/// keys' tenants and quotas' tenants.
fn config_tenants(config: &Config) -> Vec<&str> {
    let keys = config.routes.iter().flat_map(|r| r.auth.iter().flat_map(|a| &a.methods)).flat_map(|m| match m {
        crate::config::AuthMethod::ApiKeys(keys) => keys.iter().map(|k| k.tenant.as_str()).collect(),
        _ => Vec::new(),
    });
    let all = config
        .usage
        .default_tenant
        .as_deref()
        .into_iter()
        .chain(config.routes.iter().filter_map(|r| r.tenant.as_deref()))
        .chain(keys)
        .chain(config.quotas.iter().filter_map(|q| q.tenant.as_deref()));
    let mut seen = std::collections::HashSet::new();
    all.filter(|t| seen.insert(*t)).collect()
}

/// A refusal by admission: the reason, the record's reason if not the label, a `Retry-After`.
type Refused = (RejectReason, Option<String>, Option<u64>);

/// A refusal on its way out: what the client gets, and the record's reason.
struct Refusing<'a> {
    reason: RejectReason,
    body: &'a str,
    retry_after: Option<u64>,
    record_reason: Option<&'a str>,
}

/// What admission granted an upgrade, carried to its end.
#[derive(Default)]
pub struct Grant {
    /// Object ids the credential may open (`*` wildcards); empty: any.
    pub objects: Vec<String>,
    /// The `Sec-WebSocket-Protocol` entry that carried the credential, when it was the only
    /// entry offered: the 101 names it if the backend selects none (a browser that offered a
    /// subprotocol fails a 101 without one).
    pub key_entry: Option<String>,
    /// The connection's share of the caps; given back when dropped.
    pub permit: Option<Permit>,
    /// Its tenant's quota counters, when a quota applies.
    pub quota: Option<Arc<quota::Tenant>>,
}

/// The route label used for requests that matched no route.
const NO_ROUTE: &str = "none";

/// Everything a request needs, built once at startup and shared by every connection; what a
/// reload changes is in the snapshot in force (`current`).
pub struct Gateway {
    /// The config snapshot new requests are served with.
    current: Current,
    grace_period: Duration,
    metrics: Metrics,
    /// Open connections and the writer of every connection record.
    live: Arc<LiveSet>,
    fds: Arc<crate::fds::Descriptors>,
    http: Arc<HttpProxy<http::HttpRoutes>>,
    quotas: Arc<Quotas>,
    access: Option<Arc<AccessLog>>,
    /// Listener addresses whose connections start with a PROXY header.
    proxy_listeners: proxied::ProxyListeners,
    /// Client addresses read from PROXY headers before TLS (`proxied::BeforeTls`).
    proxied: Arc<proxied::Proxied>,
    /// The cluster that shares object ownership, when `cluster:` is set.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The shared parts a gateway serves with (built by `server`).
pub struct Parts {
    /// The config snapshot in force (routes, pools, objects, auth).
    pub current: Current,
    /// Metric families.
    pub metrics: Metrics,
    /// The live set (metering).
    pub live: Arc<LiveSet>,
    /// Descriptor counts: upgrades are refused while the reserve is in use.
    pub fds: Arc<crate::fds::Descriptors>,
    /// Pingora's proxy for plain HTTP on `http` routes.
    pub http: Arc<HttpProxy<http::HttpRoutes>>,
    /// Tenants' quotas.
    pub quotas: Arc<Quotas>,
    /// The access log, when configured.
    pub access: Option<Arc<AccessLog>>,
    /// The cluster, when `cluster:` is set (object claims and the peer hop).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// One client request on its way through the gateway: built once its head is read and routed,
/// and carried through the upgrade instead of long argument lists.
pub struct Request {
    /// The client stream.
    pub stream: Stream,
    /// Its request head (and the early bytes after it).
    pub head: RequestHead,
    /// The connection's meter (identity and clocks).
    pub meter: Meter,
    /// The client came over TLS.
    pub tls: bool,
    /// The client certificate its listener verified (`listeners[].tls.client_auth`), if any.
    pub peer: Option<Arc<crate::client_cert::PeerCert>>,
    /// Route name (the `route` label): the snapshot's, shared.
    pub route: crate::billing::Name,
    /// Its index in `snap.routes` (and `snap.route_handles`, `snap.route_names`).
    pub route_index: usize,
    /// The config snapshot the request is served with (to its 101).
    pub snap: Arc<Snapshot>,
    /// What admission granted: the object ids the credential may open (empty: any) and the
    /// connection's share of the caps (given back when it ends).
    pub grant: Grant,
    /// Turns true when weir shuts down.
    pub shutdown: ShutdownWatch,
    /// Bounds the handshake's waits (head, connect, answer): one timer entry for all of them.
    pub deadline: Deadline,
}

impl Request {
    /// Its pool, or its namespace on object routes (the `pool` / `namespace` labels): for the
    /// metric families a route's handles do not hold already (cold: made when asked).
    fn place(&self) -> Place {
        self.snap.routes.get(self.route_index).map(|r| self.snap.place(r)).unwrap_or_default()
    }
}

impl Gateway {
    /// Assemble the gateway from the validated config and the shared parts.
    pub fn new(config: &Config, parts: Parts) -> Gateway {
        let Parts { current, metrics, live, fds, http, quotas, access, cluster } = parts;
        Gateway {
            current,
            grace_period: config.grace_period,
            metrics,
            live,
            fds,
            http,
            quotas,
            access,
            proxy_listeners: proxied::ProxyListeners::new(&config.listeners),
            proxied: Arc::new(proxied::Proxied::default()),
            cluster,
        }
    }

    /// Pingora's pre-TLS callback that reads PROXY headers on `proxy_protocol` TLS listeners
    /// for this gateway; `None` when no listener has both.
    pub fn before_tls(&self, config: &Config) -> Option<Arc<dyn pingora_core::listeners::PreTlsProcess>> {
        config.listeners.iter().any(|l| l.proxy_protocol && l.tls.is_some()).then(|| {
            Arc::new(proxied::BeforeTls {
                listeners: self.proxy_listeners.clone(),
                proxied: self.proxied.clone(),
                current: self.current.clone(),
                rejections: self.metrics.handshake_rejections.clone(),
            }) as Arc<dyn pingora_core::listeners::PreTlsProcess>
        })
    }

    /// The client's address: the PROXY header's (already in `client`), then, when that peer is
    /// a trusted proxy, the first untrusted address of `X-Forwarded-For` from the right.
    fn client_address(snap: &Snapshot, client: Option<SocketAddr>, head: &RequestHead) -> Option<SocketAddr> {
        let peer = client?;
        let trusted = |ip: IpAddr| snap.config.trusted_proxies.iter().any(|c| c.contains(ip));
        if !trusted(peer.ip()) {
            return Some(peer);
        }
        let forwarded = crate::http1::proxy::forwarded_client(head.headers.all("x-forwarded-for"), trusted);
        Some(forwarded.map_or(peer, |ip| SocketAddr::new(ip, 0)))
    }

    /// Serve one request on `stream`: a WebSocket (up to its 101; a relay comes back to run),
    /// plain HTTP on an `http` route (Pingora's proxy; the stream may come back for the next
    /// request), the demo page, or a rejection.
    async fn serve(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Next> {
        let (mut client, proxied) = match listen::Accepted::facts(&stream) {
            Some((peer, proxied)) => (Some(peer), proxied),
            None => {
                let digest = stream.get_socket_digest();
                let client = digest.as_ref().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
                (client, self.proxy_listeners.expects_on(digest.as_deref()))
            }
        };
        let ssl = stream.get_ssl_digest();
        let tls = ssl.is_some();
        // Set only by the listener's post-handshake hook, after rustls verified the chain.
        let peer = crate::client_cert::peer_cert(ssl.as_deref());
        drop(ssl);
        let mut already = Vec::new();
        let timeouts = self.current.load().config.timeouts;
        if tls && proxied {
            // Read before the TLS handshake (`proxied::BeforeTls`); none for LOCAL/UNKNOWN.
            client = self.proxied.take(stream.id(), client).or(client);
        } else if proxied {
            // Boxed (its read buffer): only `proxy_protocol` listeners' connections hold it.
            match Box::pin(crate::http1::proxy::read(&mut stream, timeouts.request_head)).await {
                Ok((addr, rest)) => {
                    client = addr.or(client);
                    already = rest;
                }
                Err(e) => {
                    tracing::debug!(peer = ?client, error = ?e, "no valid PROXY header on a proxy_protocol listener; closed");
                    if e != crate::http1::proxy::ProxyError::Closed {
                        self.metrics
                            .handshake_rejections
                            .with_label_values(&[NO_ROUTE, reject::BAD_PROXY_HEADER])
                            .inc();
                    }
                    return None;
                }
            }
        }
        // A shutdown does not cut a head short: a connection accepted just before it (a binary
        // upgrade's old process, say) is answered; the head's own timeout bounds the wait.
        // One deadline for the handshake's waits: the head, the backend's connect and answer.
        let mut deadline = Deadline::default();
        let head = deadline.within(timeouts.request_head, head::read_head_from(&mut stream, &already)).await;
        let head = head.unwrap_or(Err(HeadError::TimedOut));
        drop(already);
        // The snapshot in force once the head is in: the request keeps it to its 101.
        let snap = self.current.load_full();
        let client = match &head {
            Ok(h) => Self::client_address(&snap, client, h),
            Err(_) => client,
        };
        let mut meter = Meter::start(client);
        meter.identity_mut().tenant = snap.default_tenant.clone();
        let head = match head {
            Ok(h) => h,
            Err(HeadError::Closed | HeadError::TimedOut | HeadError::Io(_)) => return None,
            Err(HeadError::TooLarge) => {
                self.refuse(&mut stream, RejectReason::HeadTooLarge, None, NO_ROUTE, None).await;
                return None;
            }
            Err(HeadError::Malformed(why)) => {
                tracing::debug!(client = ?client, %why, "malformed request head");
                self.refuse(&mut stream, RejectReason::MalformedRequest, None, NO_ROUTE, None).await;
                return None;
            }
        };
        // Bytes replayed after a pipelined request are read; relay the socket itself from here.
        let mut stream = http::settle(stream)?;
        let wants_ws = handshake::wants_websocket(&head);
        if let Err(reason) = handshake::check_request(&head) {
            let path = head.path();
            tracing::debug!(client = ?client, reason = reason.as_str(), ?path, "request refused before routing");
            let record = wants_ws.then_some(&meter);
            self.refuse(&mut stream, reason, None, NO_ROUTE, record).await;
            return None;
        }
        if snap.config.demo_page && !wants_ws && head.method == "GET" && head.path() == "/" {
            let _ = stream.write_all(&demo::response()).await;
            let _ = stream.flush().await;
            return None;
        }
        let Some((route_index, route)) = snap.routes.resolve_indexed(head.host().as_deref(), head.path()) else {
            let record = wants_ws.then_some(&meter);
            self.refuse(&mut stream, RejectReason::UnknownRoute, None, NO_ROUTE, record).await;
            return None;
        };
        let names = snap.route_names.get(route_index);
        if let Some(names) = names {
            let identity = meter.identity_mut();
            identity.route = Some(names.route.clone());
            if names.tenant.is_some() {
                identity.tenant = names.tenant.clone();
            }
        }
        let mut req = Request {
            stream,
            head,
            meter,
            tls,
            peer,
            route: names.map_or_else(|| route.name.as_str().into(), |n| n.route.clone()),
            route_index,
            snap: snap.clone(),
            grant: Grant::default(),
            shutdown: shutdown.clone(),
            deadline,
        };
        if wants_ws {
            if let Err((reason, detail, retry)) = self.admit(&mut req, route_index, route).await {
                // An external auth endpoint's refusal was passed on and recorded already.
                if reason != RejectReason::ExternalAuthDenied {
                    let (stream, meter) = (&mut req.stream, Some(&req.meter));
                    self.refuse_with(stream, reason, detail.as_deref(), retry, &req.route, meter).await;
                }
                return None;
            }
        }
        if wants_ws && !snap.config.usage.fail_open && !self.live.recording() {
            // Usage could not be recorded durably: take no new connections (documented).
            self.reject(&mut req, RejectReason::SpoolUnavailable).await;
            return None;
        }
        if wants_ws && self.live.draining() {
            // A drain began (`POST /api/drain`): a balancer moves the client to another instance.
            self.reject(&mut req, RejectReason::Draining).await;
            return None;
        }
        if wants_ws && self.fds.exhausted() {
            // Keep the reserve for the admin listener, backends and the spool (documented).
            self.reject(&mut req, RejectReason::DescriptorsExhausted).await;
            return None;
        }
        if let Some(pool) = names.and_then(|n| n.pool.clone()) {
            req.meter.identity_mut().pool = Some(pool);
        }
        match route.target {
            // Each path after the head is boxed: a connection still sending its head holds only
            // this function's small state, not the largest path's (an upgrade's connect and
            // handshake futures made a half-sent head cost about 31 KiB; README "Security").
            Target::Pool(_) if route.kind == RouteKind::Http && !wants_ws => {
                self.metrics.http_requests.with_label_values(&[&route.name]).inc();
                Box::pin(http::proxy(&self.http, req.stream, req.head, shutdown)).await.map(Next::Reused)
            }
            Target::Pool(i) => Box::pin(self.upgrade(req, upgrade::Dest::Pool(i))).await.map(Next::Relay),
            Target::Object(i) => match snap.objects.get(i) {
                Some(ns) => Box::pin(self.upgrade(req, upgrade::Dest::Object(ns))).await.map(Next::Relay),
                None => None,
            },
        }
    }

    /// The scanner policies of a connection's two directions, `[client, backend]`, and what
    /// both enforce and count: the route's size limits, `(max_frame, max_message)` in bytes
    /// (built-in objects pass zeros, none: they enforce their own), and the chunk sizes.
    fn policies(chunks: Chunks, rsv: u8, (max_frame, max_message): (u64, u64)) -> ([ScanPolicy; 2], ScanLimits) {
        let policies = [Role::Client, Role::Server].map(|sender| ScanPolicy { sender, allowed_rsv: rsv });
        (policies, ScanLimits { chunks, max_frame, max_message })
    }

    /// Refuse `req` with `reason`: answer, count and record it.
    async fn reject(&self, req: &mut Request, reason: RejectReason) {
        self.refuse(&mut req.stream, reason, None, &req.route, Some(&req.meter)).await;
    }

    /// Admission of an upgrade on route `index`, before any backend is touched: the origin, the
    /// credential (its tenant goes into the record; it is removed from the request) and the
    /// caps. A refusal carries the record's reason (a label, never the credential) and a
    /// `Retry-After`. Async for `auth.external` only (`external.rs`).
    async fn admit(&self, req: &mut Request, index: usize, route: &Route) -> Result<(), Refused> {
        if route.origins.as_ref().is_some_and(|o| !origin::allowed(o, &req.head.headers)) {
            return Err((RejectReason::OriginNotAllowed, None, None));
        }
        let snap = req.snap.clone();
        let gatekeeper = &snap.gatekeeper;
        if let Some(ext) = gatekeeper.external(index) {
            // Boxed: the endpoint's HTTP exchange would otherwise size every connection's task.
            Box::pin(self.admit_external(req, ext)).await?;
        }
        if let Some(a) = gatekeeper.auth(index) {
            match a.check(&req.head.target, &req.head.headers, req.peer.as_deref()) {
                Ok(admitted) => {
                    auth::strip(&mut req.head, &admitted.from);
                    req.grant.key_entry = match &admitted.from {
                        auth::Found::Subprotocol(entry) if req.head.headers.get("sec-websocket-protocol").is_none() => {
                            Some(entry.clone())
                        }
                        _ => None,
                    };
                    req.meter.identity_mut().tenant = Some(admitted.tenant.into());
                    req.grant.objects = admitted.objects;
                }
                Err(auth::AuthError::Missing) => return Err((RejectReason::NoCredential, None, None)),
                Err(auth::AuthError::Invalid(why)) => {
                    return Err((RejectReason::BadCredential, Some(format!("bad_credential: {why}")), None));
                }
            }
        }
        let ip = req.meter.client().map(|a| a.ip());
        let tenant = req.meter.identity().tenant.clone();
        if let Some(t) = tenant.as_deref().filter(|_| !self.quotas.is_empty()) {
            if let Some((name, retry)) = self.quotas.refusal(t) {
                let detail = format!("quota {name} exceeded for tenant {t}");
                return Err((RejectReason::QuotaExceeded, Some(detail), Some(retry)));
            }
            req.grant.quota = self.quotas.tenant(t);
        }
        let Some(counter) = gatekeeper.route_counter(index) else { return Ok(()) };
        let permit = gatekeeper.caps.admit(
            counter,
            route.admission.max_connections,
            tenant.as_deref(),
            ip,
            std::time::Instant::now(),
        );
        match permit {
            Ok(p) => req.grant.permit = p,
            Err(Refusal::Full) => return Err((RejectReason::AtCapacity, None, Some(1))),
            Err(Refusal::IpFull) => return Err((RejectReason::ClientAtCapacity, None, Some(1))),
            Err(Refusal::TenantFull) => return Err((RejectReason::TenantAtCapacity, None, Some(1))),
            Err(Refusal::IpRate(s)) => return Err((RejectReason::ClientRateLimited, None, Some(s))),
            Err(Refusal::TenantRate(s)) => return Err((RejectReason::TenantRateLimited, None, Some(s))),
        }
        Ok(())
    }

    /// Answer `reason` on `stream` (with `detail` as the body and the record's reason instead of
    /// the reason's own, e.g. which id rule broke), count it under `route`, and record it when
    /// `meter` is given.
    async fn refuse(
        &self,
        stream: &mut Stream,
        reason: RejectReason,
        detail: Option<&str>,
        route: &str,
        meter: Option<&Meter>,
    ) {
        let body = detail.unwrap_or(reason.body());
        self.answer_refusal(stream, Refusing { reason, body, retry_after: None, record_reason: detail }, route, meter)
            .await;
    }

    /// As `refuse`, with the standard body, `record_reason` in the record instead of the
    /// reason's label (e.g. which credential check failed) and a `Retry-After`.
    async fn refuse_with(
        &self,
        stream: &mut Stream,
        reason: RejectReason,
        record_reason: Option<&str>,
        retry_after: Option<u64>,
        route: &str,
        meter: Option<&Meter>,
    ) {
        // A quota refusal's body names the quota; other bodies never repeat the record's reason.
        let body = match (reason, record_reason) {
            (RejectReason::QuotaExceeded, Some(detail)) => detail,
            _ => reason.body(),
        };
        self.answer_refusal(stream, Refusing { reason, body, retry_after, record_reason }, route, meter).await;
    }

    /// The one way a request is refused: count and record it, then answer. Counted first, so
    /// a client that has its answer finds the refusal in `/metrics` and in the records.
    async fn answer_refusal(&self, stream: &mut Stream, r: Refusing<'_>, route: &str, meter: Option<&Meter>) {
        self.count_refusal(r.reason, r.record_reason, route, meter);
        let _ = stream.write_all(&r.reason.response_with(r.body, r.retry_after)).await;
        let _ = stream.flush().await;
    }

    /// Count and record a refusal already answered.
    fn count_refusal(&self, reason: RejectReason, detail: Option<&str>, route: &str, meter: Option<&Meter>) {
        self.metrics.handshake_rejections.with_label_values(&[route, reason.as_str()]).inc();
        if let Some(meter) = meter {
            tracing::debug!(route, reason = reason.as_str(), status = reason.status(), "handshake rejected");
            let reason_text = detail.unwrap_or(reason.as_str());
            self.live
                .reject(meter, Rejection { status: reason.status(), outcome: reason.outcome(), reason: reason_text });
        }
    }
}

impl Gateway {
    /// Serve one client connection: its requests one after another while an `http` route's
    /// keep-alive connection can take another, until one upgrades: its relay comes back to be
    /// run (`Running`). Called by weir's plain-TCP listener (`listen.rs`) and, for TLS
    /// listeners, by Pingora's (`Tls`).
    pub async fn process(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Running> {
        // One `serve` call site: its future is held once in the connection's task.
        let mut stream = stream;
        loop {
            match self.serve(stream, shutdown).await? {
                Next::Reused(reused) => stream = reused.consume().0,
                Next::Relay(running) => return Some(running),
            }
        }
    }

    /// What ends with the last listener: Pingora's HTTP proxy's cleanup.
    pub async fn cleanup(&self) {
        self.http.http_cleanup().await;
    }
}

/// What a served request leaves for its connection.
// Returned once per connection and moved straight into its task: a box would be an allocation
// more per connection.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// An `http` route's keep-alive connection, ready for its next request.
    Reused(ReusedHttpStream),
    /// An upgraded connection's relay, to run to its end.
    Relay(Running),
}

/// The gateway as Pingora's app for its TLS listeners (Pingora runs the TLS handshake).
pub struct Tls(pub Arc<Gateway>);

#[async_trait]
impl ServerApp for Tls {
    /// Runs once per client connection, after Pingora's listener and TLS accepted it. weir
    /// implements Pingora's `ServerApp` itself rather than `HttpServerApp`: that wrapper's state
    /// (sized for HTTP/2 sessions weir never negotiates) would be held by every connection still
    /// sending its head.
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // In a task of its own: Pingora's task (several KB) is not held by an idle connection.
        if let Some(running) = self.0.process(stream, shutdown).await {
            tokio::spawn(running);
        }
        None
    }

    async fn cleanup(&self) {
        self.0.cleanup().await;
    }
}
