//! The peer hop, owner side: the peer listener where other instances of the cluster relay the
//! clients of objects this instance owns; and `PeerRelay`, what the relaying side holds.
//!
//! Warm path (once per relayed connection), plus the accept loop (a background service). A
//! peer connection starts with the first line of `cluster::peer` (checked against the shared
//! secret; a bad one gets 403 and is closed), then the client's upgrade request as the relaying
//! instance forwards it. The owner trusts the identity in the line (tenant, client, route,
//! connection id: the relaying instance authenticated the client), claims the object (it must
//! still be the owner: else 503 `object_moving`, which the relaying instance passes on), places
//! it in the namespace's registry, answers 101 and runs the built-in object over the socket.
//!
//! Billing: the relaying instance relays every frame and writes the connection record; the
//! owner writes only the object's record (its occupancy counts relayed members like local
//! ones), never a connection record, so no connection is billed twice.

use super::snapshot::Current;
use super::{handshake, reject::RejectReason};
use crate::accept::AcceptErrors;
use crate::cluster::{peer, Claim, ClaimError, Cluster};
use crate::http1::head;
use crate::http1::upgrade::{accept_key, switching_protocols};
use crate::objects::session;
use crate::relay::scanner::{DirectionCounts, ScanLimits, ScanPolicy};
use crate::relay::tap::Tap;
use crate::relay::timers::Deadline;
use crate::relay::Observer;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{IntCounterVec, IntGauge};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A client relayed to its object's owner instance, counted in `weir_peer_relays_active` while
/// it lives (held by the connection's ending).
pub struct PeerRelay(IntGauge);

impl PeerRelay {
    /// Count one more relayed client on `gauge`.
    pub fn new(gauge: &IntGauge) -> PeerRelay {
        gauge.inc();
        PeerRelay(gauge.clone())
    }

    /// The relay's move signal for a peer hop: its sender is already gone, so the relay treats
    /// the owner as an object host (an owner that goes away gets the client 1012 at once) and
    /// never moves it on its own.
    pub fn move_signal() -> watch::Receiver<bool> {
        watch::channel(false).1
    }
}

impl Drop for PeerRelay {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The owner's tap around a relayed member: counts for the object record, nothing else.
#[derive(Default)]
struct Counting([DirectionCounts; 2]);

impl Observer for Counting {
    fn progress(&mut self, fresh: [&DirectionCounts; 2], _at: std::time::Instant) {
        for (total, more) in self.0.iter_mut().zip(fresh) {
            total.add(more);
        }
    }

    fn totals(&self) -> [DirectionCounts; 2] {
        self.0
    }
}

/// `listener` label of the peer listener's failed accepts in `weir_accept_errors_total`.
pub const LISTENER: &str = "peer";

/// The peer listener (a background service).
pub struct PeerListener {
    /// Bound at startup (so a taken port fails the start); taken by `start`.
    listener: Mutex<Option<std::net::TcpListener>>,
    current: Current,
    cluster: Arc<Cluster>,
    grace: Duration,
    /// `weir_accept_errors_total`, where its failed accepts are counted.
    accept_errors: IntCounterVec,
}

impl PeerListener {
    /// Bind the peer listener of `cluster` (on its `peer.address`); failed accepts are counted
    /// in `accept_errors`.
    pub fn bind(
        cluster: Arc<Cluster>,
        current: Current,
        grace: Duration,
        accept_errors: IntCounterVec,
    ) -> std::io::Result<PeerListener> {
        let listener = std::net::TcpListener::bind(cluster.config().peer_address)?;
        listener.set_nonblocking(true)?;
        Ok(PeerListener { listener: Mutex::new(Some(listener)), current, cluster, grace, accept_errors })
    }
}

#[async_trait]
impl BackgroundService for PeerListener {
    /// Accept peer connections until shutdown; each is served in a task of its own.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std) = crate::sync::lock(&self.listener).take() else { return };
        let listener = match tokio::net::TcpListener::from_std(std) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cluster: the peer listener cannot start");
                return;
            }
        };
        tracing::info!(address = %self.cluster.config().peer_address, "cluster: peer listener");
        // Failed accepts back off, are logged once a second and counted, as on weir's other
        // listeners (`crate::accept`).
        let mut errors = AcceptErrors::new(LISTENER, "cluster peer", &self.accept_errors);
        loop {
            tokio::select! {
                (stream, from) = errors.next(&listener) => {
                    let _ = stream.set_nodelay(true);
                    let owner = Owner { current: self.current.clone(), cluster: self.cluster.clone(), grace: self.grace };
                    tokio::spawn(owner.serve(stream, from, shutdown.clone()));
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

/// What serving one peer connection needs.
struct Owner {
    current: Current,
    cluster: Arc<Cluster>,
    grace: Duration,
}

/// Read the first line (up to `peer::MAX_LINE` bytes, ending in `\r\n`): the line and the
/// bytes read after it. The caller bounds the wait.
async fn read_line(stream: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        let from = buf.len().saturating_sub(1);
        buf.extend_from_slice(chunk.get(..n)?);
        if let Some(at) = buf.get(from..)?.windows(2).position(|w| w == b"\r\n") {
            let end = from + at + 2;
            let rest = buf.split_off(end);
            return Some((buf, rest));
        }
        if buf.len() > peer::MAX_LINE {
            return None;
        }
    }
}

impl Owner {
    async fn refuse(stream: &mut TcpStream, reason: RejectReason) {
        let _ = stream.write_all(&reason.response()).await;
        let _ = stream.flush().await;
    }

    /// Serve one relayed client: check the line, claim and place the object, answer 101, run it.
    async fn serve(self, mut stream: TcpStream, from: SocketAddr, shutdown: ShutdownWatch) {
        let timeouts = self.current.load().config.timeouts;
        // The line and the head together within `request_head`, as a client's head alone.
        let mut deadline = Deadline::default();
        let (start, due) = Deadline::due_in(timeouts.request_head);
        let Some(Some((line, rest))) = deadline.until(start, due, read_line(&mut stream)).await else { return };
        let identity = match peer::verify(&self.cluster.config().secret, &line) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "cluster: peer hop refused");
                let _ = stream.write_all(&forbidden()).await;
                return;
            }
        };
        let Some(Ok(head)) = deadline.until(Deadline::now(), due, head::read_head_from(&mut stream, &rest)).await
        else {
            return;
        };
        let key = match handshake::check_client(&head) {
            Ok(ws) => ws.key,
            Err(reason) => return Self::refuse(&mut stream, reason).await,
        };
        let snap = self.current.load_full();
        let Some(ns) = snap.objects.find(&identity.namespace) else {
            return Self::refuse(&mut stream, RejectReason::UnknownRoute).await;
        };
        let Some(object) = ns.builtin.clone() else {
            return Self::refuse(&mut stream, RejectReason::UnknownRoute).await;
        };
        let guard = match self.cluster.claim(&identity.namespace, &identity.id).await {
            Ok(Claim::Mine(g)) => g,
            Ok(Claim::Elsewhere { .. }) | Err(ClaimError::Stale) => {
                return Self::refuse(&mut stream, RejectReason::ObjectMoving).await;
            }
            Err(ClaimError::Unavailable(_)) => {
                return Self::refuse(&mut stream, RejectReason::ClusterUnavailable).await
            }
        };
        let tenant = identity.tenant.as_deref();
        let mut lease = match ns.registry.place(&identity.id, tenant, &[], timeouts.backend_connect).await {
            Ok(l) => l,
            Err(_) => return Self::refuse(&mut stream, RejectReason::ObjectMoving).await,
        };
        // The relaying instance forwards the client's request target: its `?since=` is here.
        let join = crate::objects::room::Join::of(Some(guard.token()), &head.target);
        lease.keep(guard);
        if stream.write_all(&switching_protocols(&accept_key(&key))).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        lease.connected();
        tracing::debug!(
            from = %identity.from, namespace = %identity.namespace, id = %identity.id,
            connection_id = %identity.connection_id, token = identity.token, "cluster: serving a relayed client"
        );
        let handle = lease.object().clone();
        let early = head.early().to_vec();
        drop(head);
        let chunks = snap.chunks;
        drop(snap);
        let policies = [crate::relay::scanner::Role::Client, crate::relay::scanner::Role::Server]
            .map(|sender| ScanPolicy { sender, allowed_rsv: 0 });
        let limits = ScanLimits { chunks, ..ScanLimits::NONE };
        let tap = Tap::new(stream, early, policies, limits, Counting::default());
        let stops = session::Stops::of(&lease, None);
        let counts = match session::run(object, &identity.id, tap, handle, shutdown, self.grace, stops, join).await {
            (Some(tap), cause) => tap.finish(cause).0.counts,
            (None, _) => Default::default(),
        };
        lease.finish(&counts);
    }
}

/// The answer to a first line that does not check out.
fn forbidden() -> Vec<u8> {
    let body = "peer authentication failed";
    format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
