//! A client's upgrade on its way to its target: the client's handshake checks, the object id,
//! connect with retries (pool backends and object hosts through one loop), the backend's answer
//! and the 101 to the client. Every failure is answered, counted and recorded here (through
//! `Gateway::reject`); success hands the connection to the after-101 path (`connection.rs`),
//! and a relay's `Running` future back up to the caller that runs it.
//!
//! Warm path (once per connection).

use super::connection::{Established, Running, Serve};
use super::io::Io;
use super::peer::PeerRelay;
use super::reject::{self, RejectReason};
use super::snapshot::Snapshot;
use super::upstream::{self, UpstreamError};
use super::{handshake, Gateway, Grant, Request};
use crate::admission::auth;
use crate::billing::ObjectRef;
use crate::cluster::{peer, Claim, ClaimError, Cluster};
use crate::http1::upgrade::{accept_key, allowed_rsv, check_answer, switching_protocols, with_subprotocol, Answer};
use crate::metering::{Meter, Rejection};
use crate::objects::registry::{Lease, PlaceError};
use crate::objects::room::Join;
use crate::objects::Namespace;
use crate::pools::MAX_CONNECT_ATTEMPTS;
use crate::relay::timers::Deadline;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

// http1 (a leaf) and the relay name the "on every frame" RSV flag each for itself.
const _: () = assert!(crate::http1::upgrade::RSV_ON_EVERY_FRAME == crate::relay::scanner::RSV_ON_EVERY_FRAME);

/// What serves an upgrade: a route's target.
#[derive(Clone, Copy)]
pub enum Dest<'a> {
    /// A backend of pool `usize`.
    Pool(usize),
    /// The owner of an object of this namespace (a host, or weir itself for built-in objects).
    Object(&'a crate::objects::Namespace),
}

/// Where connecting goes: a pool, the host an object id is placed on, or the owner instance of
/// a built-in object in a cluster (its peer listener, after the first line `line`).
#[derive(Clone, Copy)]
enum Hop<'a> {
    Pool(usize),
    Host(&'a Namespace, &'a str),
    Peer { ns: &'a Namespace, id: &'a str, addr: SocketAddr, line: &'a [u8] },
}

/// A connected backend or object host.
struct Connected {
    addr: SocketAddr,
    stream: Io,
    /// When connecting started (the connect histogram covers connect and upgrade).
    started: Instant,
    /// The object placement, for object hosts.
    lease: Option<Lease>,
    /// Its share of the backend's open count (pool backends), held until the connection ends.
    open: Option<crate::pools::OpenCount>,
}

impl Gateway {
    /// The WebSocket path: check the client's upgrade (and its object id), then serve it from a
    /// built-in object, or connect to a backend or object host and relay.
    pub(super) fn upgrade<'a>(
        self: &'a Arc<Self>,
        req: Request,
        dest: Dest<'a>,
    ) -> impl Future<Output = Option<Running>> + Send + 'a {
        let mut req = req;
        async move {
            let key = match handshake::check_client(&req.head) {
                Ok(ws) => ws.key,
                Err(reason) => {
                    self.reject(&mut req, reason).await;
                    return None;
                }
            };
            let ns = match dest {
                Dest::Pool(i) => return self.relayed(req, &key, Hop::Pool(i)).await,
                Dest::Object(ns) => ns,
            };
            let c = &ns.config;
            let id = match crate::objects::id::extract(&c.id_source, &c.id_rules, &req.head.target, &req.head.headers) {
                Ok(id) => id,
                Err(e) => {
                    let detail = e.to_string();
                    tracing::debug!(route = %req.route, namespace = %c.name, error = %detail, "bad object id");
                    let reason = RejectReason::BadObjectId;
                    self.refuse(&mut req.stream, reason, Some(&detail), &req.route, Some(&req.meter)).await;
                    return None;
                }
            };
            req.meter.identity_mut().object = Some(Box::new(ObjectRef { namespace: c.name.clone(), id: id.clone() }));
            if !auth::object_allowed(&req.grant.objects, &id) {
                tracing::debug!(route = %req.route, namespace = %c.name, "the credential may not open this object");
                self.reject(&mut req, RejectReason::Forbidden).await;
                return None;
            }
            if self.cluster.as_ref().is_some_and(|cl| !cl.healthy()) {
                // Without etcd no instance can tell who owns the object: refuse rather than risk two.
                self.reject(&mut req, RejectReason::ClusterUnavailable).await;
                return None;
            }
            match &ns.builtin {
                // Boxed: its state is the largest of an upgrade's (13.8 KB), and every upgrade's
                // future would be that size and be copied whole (issue 14's handshake profile).
                Some(object) => Box::pin(self.builtin(req, &key, ns, id, object.clone())).await,
                None => self.relayed(req, &key, Hop::Host(ns, &id)).await,
            }
        }
    }

    /// Serve a built-in object: place the id (weir is its owner), answer the 101 and run it.
    async fn builtin(
        self: &Arc<Self>,
        mut req: Request,
        key: &str,
        ns: &Namespace,
        id: String,
        object: crate::objects::session::Object,
    ) -> Option<Running> {
        let mut claim = None;
        if let Some(cluster) = &self.cluster {
            match cluster.claim(&ns.config.name, &id).await {
                Ok(Claim::Mine(guard)) => claim = Some(guard),
                Ok(Claim::Elsewhere { owner, peer, token }) => {
                    tracing::debug!(route = %req.route, namespace = %ns.config.name, %owner, %peer, token, "object owned by another instance; relaying");
                    let line = self.peer_line(&req, cluster, ns, &id, token);
                    return self.relayed(req, key, Hop::Peer { ns, id: &id, addr: peer, line: &line }).await;
                }
                Err(ClaimError::Unavailable(why)) => {
                    tracing::debug!(route = %req.route, namespace = %ns.config.name, %why, "cannot claim the object");
                    self.reject(&mut req, RejectReason::ClusterUnavailable).await;
                    return None;
                }
                Err(ClaimError::Stale) => {
                    self.reject(&mut req, RejectReason::ObjectMoving).await;
                    return None;
                }
            }
        }
        let tenant = req.meter.identity().tenant.clone();
        let connect_timeout = req.snap.config.timeouts.backend_connect;
        let mut lease = match ns.registry.place(&id, tenant.as_deref(), &[], connect_timeout).await {
            Ok(l) => l,
            Err(_) => {
                self.reject(&mut req, RejectReason::ObjectMoving).await;
                return None;
            }
        };
        // The room's store fences its appends with the claim's token; `?since=` asks to resume.
        let join = Join::of(claim.as_ref().map(|g| g.token()), &req.head.target);
        if let Some(guard) = claim {
            lease.keep(guard);
        }
        let plain = switching_protocols(&accept_key(key));
        let answer = with_subprotocol(&plain, req.grant.key_entry.as_deref());
        let early = req.head.early().to_vec();
        let handle = lease.object().clone();
        self.established(req, &answer, early, Some(lease), Serve::Object { object, id, handle, join }).await
    }

    /// The peer hop's first line for `req`: who the client is, as admission established it.
    fn peer_line(&self, req: &Request, cluster: &Cluster, ns: &Namespace, id: &str, token: i64) -> Vec<u8> {
        let who = req.meter.identity();
        let authenticated = req.snap.config.routes.iter().any(|r| *r.name == *req.route && r.auth.is_some());
        let identity = peer::Identity {
            from: cluster.instance().to_string(),
            namespace: ns.config.name.clone(),
            id: id.to_string(),
            token,
            client: req.meter.client().map(|a| a.to_string()),
            tenant: who.tenant.as_deref().map(String::from),
            route: req.route.to_string(),
            connection_id: who.connection_id.to_string(),
            credential: if authenticated { "accepted" } else { "none" }.to_string(),
            at: 0,
        };
        peer::line(&cluster.config().secret, &identity)
    }

    /// Connect to `hop`, forward the upgrade, check the answer, answer the client and relay.
    fn relayed<'a>(
        self: &'a Arc<Self>,
        req: Request,
        key: &'a str,
        hop: Hop<'a>,
    ) -> impl Future<Output = Option<Running>> + Send + 'a {
        let mut req = req;
        async move {
            let snap = req.snap.clone();
            let connected = match self.connect(&snap, hop, &req.meter, &mut req.deadline).await {
                Ok(c) => c,
                Err(reason) => {
                    self.reject(&mut req, reason).await;
                    return None;
                }
            };
            let Connected { addr, stream: mut backend, started, lease, open } = connected;
            req.meter.identity_mut().backend = Some(addr);
            let target = match hop {
                Hop::Host(ns, id) => Some(upstream::ObjectTarget {
                    namespace: &ns.config.name,
                    id,
                    forward_path: ns.config.forward_path.as_deref(),
                }),
                // The owner serves the object itself: the path is not rewritten.
                Hop::Peer { ns, id, .. } => {
                    Some(upstream::ObjectTarget { namespace: &ns.config.name, id, forward_path: None })
                }
                Hop::Pool(_) => None,
            };
            let client_ip = req.meter.client().map(|a| a.ip());
            let connection_id = req.meter.id();
            let tenant = req.meter.identity().tenant.as_deref();
            let mut request = upstream::upgrade_request(&req.head, client_ip, req.tls, connection_id, tenant, target);
            if let Hop::Peer { line, .. } = hop {
                request.splice(0..0, line.iter().copied());
            }
            let wait = snap.config.timeouts.backend_handshake;
            let answer = match upstream::handshake(&mut backend, &request, wait, &mut req.deadline).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(route = %req.route, backend = %addr, error = %e, "backend handshake failed");
                    self.reject(&mut req, upstream_reason(&e)).await;
                    return None;
                }
            };
            drop(request);
            match check_answer(&answer, key) {
                Answer::Accepted => {}
                Answer::Refused(status) => {
                    Box::pin(self.refused(req, answer, backend, status)).await;
                    return None;
                }
                Answer::BadHandshake => {
                    tracing::warn!(route = %req.route, backend = %addr, "backend answered 101 without a valid Sec-WebSocket-Accept/Upgrade");
                    self.reject(&mut req, RejectReason::BackendBadHandshake).await;
                    return None;
                }
            }
            let connect = started.elapsed().as_secs_f64();
            match req.snap.route_handles.get(req.route_index) {
                Some(handles) => handles.backend_connect.observe(connect),
                None => self.metrics.backend_connect.with_label_values(&req.place().labels()).observe(connect),
            }
            req.meter.set_subprotocol(answer.headers.get("sec-websocket-protocol"));
            let rsv = allowed_rsv(answer.headers.get("sec-websocket-extensions").as_deref());
            // Keep only the early bytes (usually none): the heads and buffers of the handshake end
            // here, so a long-lived connection carries nothing from it (README, "Idle cost").
            let early = req.head.early().to_vec();
            let peer = matches!(hop, Hop::Peer { .. }).then(|| PeerRelay::new(&self.metrics.peer_relays_active));
            let serve = Serve::Relay { backend, early: answer.early().to_vec(), rsv, open, peer };
            // A credential sent as the only subprotocol entry is named in the 101 when the backend
            // selected none (a browser that offered one fails a 101 without it).
            let entry =
                req.grant.key_entry.as_deref().filter(|_| answer.headers.get("sec-websocket-protocol").is_none());
            let head_101 = with_subprotocol(answer.head(), entry);
            self.established(req, &head_101, early, lease, serve).await
        }
    }

    /// Send the 101 `head` to the client and start the connection's life after it
    /// (`after_101`); if the client is gone, record the failed handshake instead. Only the write
    /// is awaited here: its future holds the request as it came, nothing taken apart yet.
    fn established<'a>(
        self: &'a Arc<Self>,
        req: Request,
        head_101: &'a [u8],
        early: Vec<u8>,
        lease: Option<Lease>,
        serve: Serve,
    ) -> impl Future<Output = Option<Running>> + Send + 'a {
        let mut req = req;
        async move {
            if req.stream.write_all(head_101).await.is_err() || req.stream.flush().await.is_err() {
                let gone =
                    Rejection { status: 101, outcome: "client_gone", reason: "client closed during the handshake" };
                self.live.reject(&req.meter, gone);
                return None;
            }
            self.after_101(req, early, lease, serve)
        }
    }

    /// The client has its 101: begin the connection's live-set entry and start it.
    fn after_101(
        self: &Arc<Self>,
        req: Request,
        early: Vec<u8>,
        lease: Option<Lease>,
        serve: Serve,
    ) -> Option<Running> {
        let metrics = match req.snap.route_handles.get(req.route_index) {
            Some(handles) => handles.connection(),
            None => self.metrics.connection(&req.route, &req.place()),
        };
        let Request { stream, meter, route_index, shutdown, head, grant, snap, .. } = req;
        drop(head);
        let chunks = snap.chunks;
        // Both built from the snapshot's one route table, so both are there; were they not, the
        // connection would run without guards or size limits rather than panic.
        let (guards, sizes) = match (snap.route_guards.get(route_index), snap.routes.get(route_index)) {
            (Some(guards), Some(route)) => (guards.clone(), (route.limits.max_frame, route.limits.max_message)),
            _ => (Arc::default(), (0, 0)),
        };
        drop(snap);
        let Grant { permit, quota, .. } = grant;
        let mut lease = lease;
        if let Some(l) = lease.as_mut() {
            l.connected();
        }
        let live = self.live.begin(meter);
        let established =
            Established { client: stream, early, metrics, sizes, guards, chunks, live, lease, serve, permit, quota };
        self.start(established, shutdown)
    }

    /// Connect to `hop`: a backend picked from the pool, or the host the object id is placed on,
    /// trying up to `MAX_CONNECT_ATTEMPTS` of them (an object host that refuses is marked down
    /// and its ids move).
    async fn connect(
        &self,
        snap: &Snapshot,
        hop: Hop<'_>,
        meter: &Meter,
        deadline: &mut Deadline,
    ) -> Result<Connected, RejectReason> {
        let timeouts = snap.config.timeouts;
        let started = Instant::now();
        // The backends tried so far: `tried[..attempts]` (on the stack: no allocation per
        // connection).
        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_CONNECT_ATTEMPTS];
        let mut attempts = 0;
        let mut tried_hosts: Vec<usize> = Vec::new();
        let mut last = RejectReason::NoHealthyBackend;
        if let Hop::Peer { addr, .. } = hop {
            // One try: an owner that does not answer is dying; its claim goes with its lease,
            // and the client's retry finds the new owner.
            return match upstream::connect(addr, timeouts.backend_connect, None, deadline).await {
                Ok(stream) => Ok(Connected { addr, stream, started, lease: None, open: None }),
                Err(e) => {
                    tracing::warn!(peer = %addr, error = %e, "cannot reach the owner instance");
                    Err(RejectReason::ObjectMoving)
                }
            };
        }
        let tls = match hop {
            Hop::Pool(pool) => snap.config.pools.get(pool).and_then(|p| p.tls.as_ref()),
            Hop::Host(ns, _) => match &ns.config.kind {
                crate::config::ObjectKind::Hosts { tls, .. } => tls.as_ref(),
                crate::config::ObjectKind::Builtin(_) => None,
            },
            Hop::Peer { .. } => None,
        };
        while attempts < MAX_CONNECT_ATTEMPTS {
            let tried_so_far = tried.get(..attempts).unwrap_or_default();
            let (addr, lease) = match hop {
                Hop::Peer { .. } => break,
                Hop::Pool(pool) => match snap.pools.select(pool, meter.client().map(|a| a.ip()), tried_so_far) {
                    Some(addr) => (addr, None),
                    None => break,
                },
                Hop::Host(ns, id) => {
                    let tenant = meter.identity().tenant.as_deref();
                    let wait = timeouts.backend_connect;
                    let placed = match &self.cluster {
                        // In a cluster an id has one recorded host: it is not tried elsewhere.
                        Some(_) if !tried_hosts.is_empty() => break,
                        // Boxed: etcd's client futures (7 KB) only in a cluster.
                        Some(cluster) => Box::pin(Self::claimed_host(cluster, ns, id, tenant, wait)).await?,
                        None => ns.registry.place(id, tenant, &tried_hosts, wait).await,
                    };
                    let lease = match placed {
                        Ok(l) => l,
                        Err(PlaceError::NoHost) => break,
                        Err(PlaceError::Moving) => return Err(RejectReason::ObjectMoving),
                    };
                    let (Some(addr), Some(host)) = (lease.addr(), lease.host_index()) else { break };
                    tried_hosts.push(host);
                    (addr, Some(lease))
                }
            };
            if let Some(slot) = tried.get_mut(attempts) {
                *slot = addr;
            }
            attempts += 1;
            // Counted from now: concurrent connects see each other (least_connections).
            let open = match hop {
                Hop::Pool(pool) => snap.pools.opened(pool, addr),
                _ => None,
            };
            match upstream::connect(addr, timeouts.backend_connect, tls, deadline).await {
                Ok(stream) => return Ok(Connected { addr, stream, started, lease, open }),
                Err(e) => {
                    tracing::warn!(backend = %addr, error = %e, "cannot connect to backend");
                    // A TLS failure is tried on the next backend like any other, never in plaintext.
                    last = upstream_reason(&e);

                    if let Some(lease) = lease {
                        lease.connect_failed();
                    }
                }
            }
        }
        Err(last)
    }

    /// In a cluster: place `id` on the host recorded for it in etcd (recording this instance's
    /// choice when no instance has connections to it), holding the claim with the lease.
    async fn claimed_host(
        cluster: &Arc<Cluster>,
        ns: &Namespace,
        id: &str,
        tenant: Option<&str>,
        wait: std::time::Duration,
    ) -> Result<Result<Lease, PlaceError>, RejectReason> {
        let choice = ns.registry.choose(id, &[]);
        let claim = match cluster.claim_host(&ns.config.name, id, choice).await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Err(PlaceError::NoHost)),
            Err(ClaimError::Unavailable(why)) => {
                tracing::debug!(namespace = %ns.config.name, %why, "cannot claim the object's host");
                return Err(RejectReason::ClusterUnavailable);
            }
            Err(ClaimError::Stale) => return Err(RejectReason::ObjectMoving),
        };
        let Some(host) = ns.registry.host_named(&claim.host) else {
            tracing::warn!(namespace = %ns.config.name, host = %claim.host, "the host recorded for an id is not among this instance's hosts (do the instances' configs differ?)");
            return Err(RejectReason::ObjectMoving);
        };
        let placed = ns.registry.place_on(id, tenant, host, wait).await;
        Ok(placed.map(|mut lease| {
            lease.keep(claim.guard);
            lease
        }))
    }

    /// The backend answered the upgrade with `status`, not 101: pass its answer on unchanged.
    async fn refused(&self, mut req: Request, answer: crate::http1::head::ResponseHead, mut backend: Io, status: u16) {
        tracing::debug!(route = %req.route, status, "backend refused the upgrade; passing its answer through");
        let timeout = req.snap.config.timeouts.backend_handshake;
        let _ = upstream::pass_through(answer, &mut backend, &mut req.stream, timeout).await;
        self.metrics.handshake_rejections.with_label_values(&[&*req.route, reject::BACKEND_REFUSED]).inc();
        let reason = format!("backend answered {status}");
        self.live.reject(&req.meter, Rejection { status, outcome: reject::BACKEND_REFUSED, reason: &reason });
    }
}

fn upstream_reason(e: &UpstreamError) -> RejectReason {
    match e {
        UpstreamError::Unreachable(_) => RejectReason::BackendUnreachable,
        UpstreamError::TimedOut(_) => RejectReason::BackendTimeout,
        UpstreamError::BadResponse(_) => RejectReason::BackendBadHandshake,
        UpstreamError::Tls(_) => RejectReason::BackendTls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns.
    fn future_size<A, B, C, F>(_f: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An upgrade's future is boxed once per connection (`Gateway::serve`) and so copied whole
    /// there; `relayed` and `established` are inline in it. As `async fn`s they held every
    /// argument twice (the argument, then the body's copy of it) and the rare non-101 answer's
    /// pass-through inline: 5 912, 4 632 and 2 304 bytes in a release build. Written as
    /// functions returning an `async move` block, with the pass-through boxed: 3 216, 2 536 and
    /// 904; and once the request stopped carrying a copy of its route's `limits:` (the 101 path
    /// reads the two sizes it needs from the snapshot), 2 848, 2 344 and 728; since the
    /// handshake's timeouts became one `relay::timers::Deadline`, 2 800, 2 336 and 688 (the test
    /// profile's a few words more). Held to those with a little room, so growth is a decision;
    /// printed with `--nocapture`.
    #[test]
    fn an_upgrade_s_futures_stay_small() {
        let sizes = [
            ("upgrade", future_size(|g: &'static Arc<Gateway>, r: Request, d: Dest<'static>| g.upgrade(r, d)), 2950),
            (
                "relayed",
                future_size(|g: &'static Arc<Gateway>, r: Request, k: &'static str| g.relayed(r, k, Hop::Pool(0))),
                2450,
            ),
            (
                "established",
                future_size(|g: &'static Arc<Gateway>, r: Request, s: Serve| {
                    g.established(r, &[], Vec::new(), None, s)
                }),
                780,
            ),
        ];
        for (what, size, most) in sizes {
            eprintln!("{size:>6} B  {what}");
            assert!(size <= most, "{what}'s future: {size} bytes, more than the {most} measured");
        }
    }
}
