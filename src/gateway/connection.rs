//! The one after-101 path: every upgraded connection, relayed to a backend or served by a
//! built-in object, runs to its end (`Gateway::start`: a relay as a `Running` future its caller
//! runs, a built-in object in a task of its own) and is ended here (`Ending::end`: metrics, the
//! stop record, the object lease).
//!
//! Warm path at both ends; in between the relay (or the tap around a built-in object) is the hot
//! path, observed by a `ConnObserver`.

use super::io::Io;
use super::observer::ConnObserver;
use super::peer::PeerRelay;
use super::Gateway;
use crate::admission::caps::Permit;
use crate::metering::live::Live;
use crate::metering::quota::Tenant;
use crate::metrics::ConnMetrics;
use crate::objects::registry::{Lease, ObjectHandle};
use crate::objects::session::{self, Object};
use crate::relay::guard::Guards;
use crate::relay::pump::{Relay, Run};
use crate::relay::report::{Outcome, RelayReport};
use crate::relay::tap::Tap;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// An upgraded connection after its 101.
pub struct Established {
    /// The client stream.
    pub client: Stream,
    /// Bytes the client sent after its request head (scanned and served first).
    pub early: Vec<u8>,
    /// Its metric handles (started counted already).
    pub metrics: crate::metrics::ConnMetrics,
    /// The route's `(max_frame, max_message)`, bytes (0: none), for the scanners.
    pub sizes: (u64, u64),
    /// The route's guards, shared by its connections.
    pub guards: Arc<Guards>,
    /// The chunk sizes its scanners count (the pricing units of its snapshot).
    pub chunks: crate::relay::scanner::Chunks,
    /// Its live-set entry (identity and interim state).
    pub live: Arc<Live>,
    /// The object placement, on object routes.
    pub lease: Option<Lease>,
    /// What serves it.
    pub serve: Serve,
    /// Its share of the admission caps (given back when it ends).
    pub permit: Option<Permit>,
    /// Its tenant's quota counters, when a quota applies.
    pub quota: Option<Arc<Tenant>>,
}

/// What serves an upgraded connection.
pub enum Serve {
    /// The relay to a backend or object host.
    Relay {
        /// The backend stream.
        backend: Io,
        /// Bytes the backend sent after its 101 head.
        early: Vec<u8>,
        /// RSV bits the negotiated extensions allow.
        rsv: u8,
        /// Its share of the backend's open count (pool backends; `least_connections`).
        open: Option<crate::pools::OpenCount>,
        /// Set when the backend is the object's owner instance (the peer hop).
        peer: Option<super::peer::PeerRelay>,
    },
    /// A built-in object, run by weir itself.
    Object {
        /// Which one.
        object: Object,
        /// The object id.
        id: String,
        /// The object's shared accounting.
        handle: ObjectHandle,
        /// How a room member joins (fencing token, `?since=`).
        join: crate::objects::room::Join,
    },
}

/// What ending a connection needs once it has run, besides its live-set entry (which the
/// observer holds): kept beside the running relay (or session), never inside it.
struct Ending {
    gateway: Arc<Gateway>,
    /// The object placement (boxed: 136 bytes, and pool routes have none).
    lease: Option<Box<Lease>>,
    /// Dropped with the ending: the caps count the connection until then (boxed: 64 bytes, held
    /// only when a cap is configured).
    _permit: Option<Box<Permit>>,
    /// Dropped with the ending: the backend's open count holds the connection until then.
    _open: Option<crate::pools::OpenCount>,
    /// Dropped with the ending: `weir_peer_relays_active` counts the connection until then.
    _peer: Option<PeerRelay>,
}

impl Gateway {
    /// Start an upgraded connection's life after its 101. A relay comes back as `Running`, for
    /// the caller to run where it stands (weir's own listeners: in the connection's first task,
    /// once the handshake's state is freed; `listen::Conn`) or to spawn; a built-in object
    /// behind a tap gets a task of its own here (`None`). The relay is built here, and `Running`
    /// is the relay's future plus what ending needs: an idle connection holds nothing else (no
    /// copy of its arguments, no handshake state).
    pub(super) fn start(self: &Arc<Self>, c: Established, shutdown: ShutdownWatch) -> Option<Running> {
        let Established { client, early, metrics, sizes, guards, chunks, live, lease, serve, permit, quota } = c;
        self.metrics.tenant(live.meter.identity().tenant.as_deref()).active.inc();
        let grace = self.grace_period;
        let mut ending = Ending {
            gateway: self.clone(),
            lease: lease.map(Box::new),
            _permit: permit.map(Box::new),
            _open: None,
            _peer: None,
        };
        match serve {
            Serve::Relay { backend, early: backend_early, rsv, open, peer } => {
                let object = ending.lease.as_ref().map(|l| l.object().clone());
                let moved = ending
                    .lease
                    .as_deref()
                    .map(Lease::evicted)
                    .or_else(|| peer.as_ref().map(|_| PeerRelay::move_signal()));
                let observer = ConnObserver::new(metrics, live.clone(), object, quota);
                let (policies, scan_limits) = Self::policies(chunks, rsv, sizes);
                let io = [Io::new(client), backend];
                let relay = Relay::new(io, policies, scan_limits, [&early, &backend_early], observer)
                    .with_guards(&guards, lifetime_share(live.meter.id().as_u128()));
                (ending._open, ending._peer) = (open, peer);
                Some(Running { run: relay.run(grace, moved), ending: Some(ending) })
            }
            Serve::Object { object, id, handle, join } => {
                // Built-in objects touch their accounting per message themselves.
                let route_metrics = metrics.clone();
                let observer = ConnObserver::new(metrics, live.clone(), None, quota);
                let stops = match ending.lease.as_deref() {
                    Some(lease) => session::Stops::of(lease, Some(live.clone())),
                    None => session::Stops { live: Some(live.clone()), moved: None, claim: None },
                };
                let (policies, scan_limits) = Self::policies(chunks, 0, (0, 0));
                let tap = Tap::new(client, early, policies, scan_limits, observer);
                tokio::spawn(async move {
                    let report = match session::run(object, &id, tap, handle, shutdown, grace, stops, join).await {
                        (Some(tap), cause) => tap.finish(cause).0,
                        (None, _) => {
                            tracing::warn!(
                                route = live.meter.identity().route.as_deref().unwrap_or(""),
                                "built-in object session lost its stream; its stop record has the counts last seen"
                            );
                            RelayReport::lost(live.counts())
                        }
                    };
                    ending.end(&live, &route_metrics, &report);
                });
                None
            }
        }
    }
}

/// A relayed connection from its 101 to its end: the relay's future and, beside it, what ending
/// the connection needs (`Ending::end` runs when the relay finishes). Written by hand, not as a
/// combinator around a closure, so its type can be named where it is held (`listen::Conn`).
pub struct Running {
    /// The relay.
    run: Run<Io, ConnObserver>,
    /// Taken when the relay ends.
    ending: Option<Ending>,
}

impl Future for Running {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let (report, observer) = std::task::ready!(Pin::new(&mut this.run).poll(cx));
        let (live, metrics) = (observer.live().clone(), observer.metrics().clone());
        drop(observer);
        if let Some(ending) = this.ending.take() {
            ending.end(&live, &metrics, &report);
        }
        Poll::Ready(())
    }
}

/// A connection's share (in [0, 1)) of its route's lifetime jitter, from the low bits of its id
/// (a v7 UUID's random part): random, and the same if asked twice.
fn lifetime_share(id: u128) -> f64 {
    (id as u64 & 0xFFFF_FFFF) as f64 / (1u64 << 32) as f64
}

impl Ending {
    /// Count a finished connection (its live-set entry `live`), write its stop record and release
    /// its object lease.
    fn end(self, live: &Arc<Live>, metrics: &ConnMetrics, report: &RelayReport) {
        let Ending { gateway, lease, _permit, _open, _peer } = self;
        let identity = live.meter.identity();
        let route = identity.route.as_deref().unwrap_or("");
        let m = &gateway.metrics;
        metrics.count_end(report.outcome, report.initiator, report.close_code, report.cause);
        let tenant = m.tenant(identity.tenant.as_deref());
        tenant.active.dec();
        tenant.connections.inc();
        for (i, c) in report.counts.iter().enumerate() {
            tenant.messages[i].inc_by(c.messages);
            tenant.wire_bytes[i].inc_by(c.wire_bytes);
        }
        if let Some((d, v)) = report.violation {
            m.protocol_violations.with_label_values(&[route, d.as_str(), v.as_str()]).inc();
            tracing::info!(
                route,
                direction = d.as_str(),
                violation = v.as_str(),
                "closed a connection for a protocol violation"
            );
        }
        if report.outcome == Outcome::Moved {
            let ns = identity.object.as_ref().map_or("", |o| &*o.namespace);
            m.object_evictions.with_label_values(&[ns]).inc();
        }
        let record = gateway.live.end(live, report);
        for (unit, value) in &record.units {
            m.units.with_label_values(&[unit.as_str(), &*tenant.label]).inc_by(*value);
        }
        if gateway.quotas.counts_units() {
            // The units between the quota ticker's last count and the end, from the stop record.
            if let Some(t) = record.identity.tenant.as_deref().and_then(|t| gateway.quotas.tenant(t)) {
                gateway.quotas.connection_ended(&t, live.meter.id(), &record.units);
            }
        }
        tracing::debug!(
            connection_id = %record.identity.connection_id, route, outcome = %record.outcome,
            duration_ms = record.duration_ms, close_code = ?report.close_code, initiator = report.initiator.as_str(),
            "connection ended"
        );
        if let Some(log) = &gateway.access {
            let dir = |d: &crate::billing::DirectionUsage| serde_json::json!({"messages": d.messages, "wire_bytes": d.wire_bytes});
            let id = &record.identity;
            log.write(&serde_json::json!({
                "time": record.ended_at.unwrap_or(record.at).to_string(),
                "id": id.connection_id,
                "client": id.client_addr,
                "route": route,
                "tenant": id.tenant,
                "backend": id.backend,
                "object": id.object,
                "status": record.status,
                "duration_ms": record.duration_ms,
                "client_to_backend": dir(&record.client_to_backend),
                "backend_to_client": dir(&record.backend_to_client),
                "close_code": report.close_code,
                "initiator": report.initiator.as_str(),
                "cause": report.cause.as_str(),
            }));
        }
        if let Some(lease) = lease {
            lease.finish(&report.counts);
        }
    }
}

#[cfg(test)]
mod size_report {
    use std::mem::size_of;

    /// What an idle relayed connection holds in weir's memory, piece by piece (README "Idle
    /// cost"): printed with `--nocapture`, and held to the sizes measured when they were last
    /// made smaller (in the test profile; in a release build each `Io` is 8 bytes smaller), so a
    /// field added to a per-connection type is a decision, not an accident. `Run`'s limit is an
    /// edge: in a release build (368 bytes) it fills the connection's task cell to exactly 512
    /// bytes (`-Zprint-type-sizes`: header 32, core 432, trailer 48), and 8 bytes more would take
    /// the cell to jemalloc's 640-byte class. `Live`'s too: with the `Arc`'s counts it fills a
    /// 320-byte block; 8 bytes more take it to 384. `Watch` fills the 160-byte class.
    #[test]
    fn per_connection_state_stays_within_its_measured_sizes() {
        let sizes = [
            (
                "Relay<Io, ConnObserver> (in the connection's task)",
                size_of::<crate::relay::pump::Relay<super::Io, super::ConnObserver>>(),
                360,
            ),
            (
                "Run<Io, ConnObserver> (the relay's future: the relay and what it waits on)",
                size_of::<crate::relay::pump::Run<super::Io, super::ConnObserver>>(),
                384,
            ),
            ("  of it, ConnObserver", size_of::<super::ConnObserver>(), 32),
            ("  of it, one Io (a tokio TcpStream)", size_of::<super::Io>(), 40),
            (
                "  of it, one Scan (a frame scanner; the relay keeps no counters)",
                size_of::<crate::relay::scanner::Scan>(),
                64,
            ),
            ("Ending (beside the relay in the task)", size_of::<super::Ending>(), 40),
            (
                "Live (the live-set entry, shared; the one copy of the counts)",
                size_of::<crate::metering::live::Live>(),
                304,
            ),
            (
                "Identity (behind an Arc in the entry, +16: the 160-byte class; a credential's tenant is its only heap)",
                size_of::<crate::billing::Identity>(),
                144,
            ),
            ("Watch (boxed guard state, with limits on)", size_of::<crate::relay::guard::Watch>(), 160),
            ("Guards (one per route, shared: not per connection)", size_of::<crate::relay::guard::Guards>(), 224),
            (
                "Pingora's L4 stream (no longer held: Io::Tcp)",
                size_of::<pingora_core::protocols::l4::stream::Stream>(),
                usize::MAX,
            ),
        ];
        for (what, size, _) in sizes {
            eprintln!("{size:>6} B  {what}");
        }
        for (what, size, most) in sizes {
            assert!(size <= most, "{what}: {size} bytes, more than the {most} measured");
        }
    }
}
