//! Prometheus metrics: one `Metrics` struct registered on a registry passed in.
//!
//! Cold path: `Metrics::register` at startup. Warm path: `Metrics::connection` resolves the
//! labelled children once per connection into `ConnMetrics`. Hot path: `ConnMetrics` handles are
//! plain atomic adds, applied per relayed chunk so counters move while a connection is open.
//! Labels come from config (route, pool, backend) or closed enums, never from request data, so
//! cardinality is bounded. Names live in `names.rs`.

pub mod names;
pub mod tenants;

use crate::relay::report::{code_class_index, Cause, Outcome, Party, CODE_CLASSES};
use crate::relay::scanner::DirectionCounts;
use crate::relay::Direction;
use names::*;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::sync::Arc;

/// Connection-duration buckets, seconds: from a failed page load to a three-day session.
const DURATION_BUCKETS: &[f64] = &[
    0.1,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
    2.0 * 3600.0,
    4.0 * 3600.0,
    8.0 * 3600.0,
    12.0 * 3600.0,
    24.0 * 3600.0,
    72.0 * 3600.0,
];
/// Backend connect+upgrade buckets, seconds: loopback (sub-ms) to a timing-out backend.
const CONNECT_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Every metric family weir exports.
#[derive(Clone)]
pub struct Metrics {
    /// See `names::CONNECTIONS_ACTIVE`.
    pub connections_active: IntGaugeVec,
    /// See `names::CONNECTIONS_TOTAL`.
    pub connections_total: IntCounterVec,
    /// See `names::CONNECTIONS_STARTED_TOTAL`.
    pub connections_started: IntCounterVec,
    /// See `names::BUILD_INFO`.
    pub build_info: IntGaugeVec,
    /// See `names::RESIDENT_MEMORY_BYTES`.
    pub resident_memory: IntGauge,
    /// See `names::HEAP_ALLOCATED_BYTES` and its two neighbours.
    pub heap: crate::heap::HeapGauges,
    /// See `names::HANDSHAKE_REJECTIONS_TOTAL`.
    pub handshake_rejections: IntCounterVec,
    /// See `names::CONNECTION_DURATION_SECONDS`.
    pub connection_duration: HistogramVec,
    /// See `names::PEER_RTT_SECONDS`.
    pub peer_rtt: HistogramVec,
    /// See `names::QUOTA_UTILISATION`.
    pub quota_utilisation: GaugeVec,
    /// See `names::ACCESS_LOG_DROPPED_TOTAL`.
    pub access_log_dropped: IntCounter,
    /// See `names::TENANT_CONNECTIONS_ACTIVE`.
    pub tenant_active: IntGaugeVec,
    /// See `names::TENANT_CONNECTIONS_TOTAL`.
    pub tenant_connections: IntCounterVec,
    /// See `names::TENANT_MESSAGES_TOTAL`.
    pub tenant_messages: IntCounterVec,
    /// See `names::TENANT_WIRE_BYTES_TOTAL`.
    pub tenant_wire_bytes: IntCounterVec,
    /// See `names::UNITS_TOTAL`.
    pub units: prometheus::CounterVec,
    /// Which tenants have a `tenant` label of their own.
    pub tenant_labels: std::sync::Arc<tenants::TenantLabels>,
    /// See `names::CONFIG_RELOADS_TOTAL`.
    pub config_reloads: IntCounterVec,
    /// See `names::CONFIG_INFO`.
    pub config_info: IntGaugeVec,
    /// See `names::FRAMES_TOTAL`.
    pub frames: IntCounterVec,
    /// See `names::MESSAGES_TOTAL`.
    pub messages: IntCounterVec,
    /// See `names::PAYLOAD_BYTES_TOTAL`.
    pub payload_bytes: IntCounterVec,
    /// See `names::WIRE_BYTES_TOTAL`.
    pub wire_bytes: IntCounterVec,
    /// See `names::CLOSES_TOTAL`.
    pub closes: IntCounterVec,
    /// See `names::PROTOCOL_VIOLATIONS_TOTAL`.
    pub protocol_violations: IntCounterVec,
    /// See `names::BACKEND_CONNECT_SECONDS`.
    pub backend_connect: HistogramVec,
    /// See `names::BACKEND_HEALTHY`.
    pub backend_healthy: IntGaugeVec,
    /// See `names::USAGE_RECORDS_TOTAL`.
    pub usage_records: IntCounterVec,
    /// See `names::USAGE_WRITE_ERRORS_TOTAL`.
    pub usage_write_errors: IntCounterVec,
    /// See `names::HTTP_REQUESTS_TOTAL`.
    pub http_requests: IntCounterVec,
    /// See `names::OBJECTS_ACTIVE`.
    pub objects_active: IntGaugeVec,
    /// See `names::OBJECT_PLACEMENTS_TOTAL`.
    pub object_placements: IntCounterVec,
    /// See `names::OBJECT_MOVES_TOTAL`.
    pub object_moves: IntCounterVec,
    /// See `names::OBJECT_EVICTIONS_TOTAL`.
    pub object_evictions: IntCounterVec,
    /// See `names::CLUSTER_MEMBERS`.
    pub cluster_members: IntGauge,
    /// See `names::CLUSTER_HEALTHY`.
    pub cluster_healthy: IntGauge,
    /// See `names::CLUSTER_LEASE_LOSSES_TOTAL`.
    pub cluster_evictions: IntCounter,
    /// See `names::OBJECT_CLAIMS_TOTAL`.
    pub object_claims: IntCounterVec,
    /// See `names::PEER_RELAYS_ACTIVE`.
    pub peer_relays_active: IntGauge,
    /// See `names::ROOM_SLOW_CLIENTS_TOTAL`.
    pub room_slow_clients: IntCounterVec,
    /// See `names::ROOM_STORE_ERRORS_TOTAL`.
    pub room_store_errors: IntCounterVec,
    /// See `names::ROOM_HISTORY_FENCED_TOTAL`.
    pub room_history_fenced: IntCounterVec,
    /// See `names::SPOOL_BYTES`.
    pub spool_bytes: IntGauge,
    /// See `names::SPOOL_DISK_FREE_BYTES`.
    pub spool_disk_free: IntGauge,
    /// See `names::SPOOL_WAITING_RECORDS`.
    pub spool_waiting: IntGauge,
    /// See `names::SPOOL_HEALTHY`.
    pub spool_healthy: IntGauge,
    /// See `names::SINK_RECORDS_PENDING`.
    pub sink_pending: IntGaugeVec,
    /// See `names::SINK_RECORDS_DELIVERED_TOTAL`.
    pub sink_delivered: IntCounterVec,
    /// See `names::SINK_DELIVERY_ERRORS_TOTAL`.
    pub sink_errors: IntCounterVec,
    /// See `names::SINK_DELIVERY_LAG_SECONDS`.
    pub sink_lag: GaugeVec,
    /// See `names::SPOOL_QUARANTINED_TOTAL`.
    pub spool_quarantined: IntCounter,
    /// See `names::ACCEPT_ERRORS_TOTAL`.
    pub accept_errors: IntCounterVec,
    /// See `names::TLS_CLIENT_AUTH_TOTAL`.
    pub tls_client_auth: IntCounterVec,
    /// See `names::OPEN_FDS`.
    pub open_fds: IntGauge,
    /// See `names::MAX_FDS`.
    pub max_fds: IntGauge,
    /// See `names::ROOM_STORE_BYTES`.
    pub room_store_bytes: IntGaugeVec,
    /// See `names::ROOM_STORE_ROOMS`.
    pub room_store_rooms: IntGaugeVec,
    /// See `names::ROOM_STORE_EVICTIONS_TOTAL`.
    pub room_store_evictions: IntCounterVec,
    /// See `names::REJECTIONS_SUMMARISED_TOTAL`.
    pub rejections_summarised: IntCounter,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn plain_counter(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn plain_gauge(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
    reg.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Create every family and register it on `reg`.
    pub fn register(reg: &Registry) -> prometheus::Result<Metrics> {
        // The relay's process-wide splice counters (it keeps them itself: no handle per connection).
        if let Some(s) = crate::relay::splice::STATS.as_ref() {
            reg.register(Box::new(s.bytes.clone()))?;
            reg.register(Box::new(s.fallbacks.clone()))?;
            reg.register(Box::new(s.pipes.clone()))?;
        }
        Ok(Metrics {
            connections_active: gauge(
                reg,
                CONNECTIONS_ACTIVE,
                "WebSocket connections currently relayed",
                &[ROUTE, POOL, NAMESPACE],
            )?,
            connections_started: counter(
                reg,
                CONNECTIONS_STARTED_TOTAL,
                "WebSocket connections that got their 101",
                &[ROUTE, POOL, NAMESPACE],
            )?,
            build_info: gauge(reg, BUILD_INFO, "Always 1: the build's version and commit", &[VERSION, COMMIT])?,
            resident_memory: plain_gauge(reg, RESIDENT_MEMORY_BYTES, "The process's resident memory, bytes")?,
            heap: crate::heap::HeapGauges {
                allocated: plain_gauge(reg, HEAP_ALLOCATED_BYTES, "Bytes in the heap blocks weir holds")?,
                active: plain_gauge(
                    reg,
                    HEAP_ACTIVE_BYTES,
                    "Bytes in the allocator's pages that hold blocks, their free slots included",
                )?,
                resident: plain_gauge(
                    reg,
                    HEAP_RESIDENT_BYTES,
                    "Bytes the allocator keeps resident, its metadata and unreturned free pages included",
                )?,
            },
            connections_total: counter(
                reg,
                CONNECTIONS_TOTAL,
                "Relayed WebSocket connections that ended, by outcome",
                &[ROUTE, POOL, NAMESPACE, OUTCOME],
            )?,
            handshake_rejections: counter(
                reg,
                HANDSHAKE_REJECTIONS_TOTAL,
                "Upgrade requests refused, by reason",
                &[ROUTE, REASON],
            )?,
            connection_duration: histogram(
                reg,
                CONNECTION_DURATION_SECONDS,
                "Lifetime of relayed WebSocket connections in seconds",
                &[ROUTE, POOL, NAMESPACE],
                DURATION_BUCKETS,
            )?,
            peer_rtt: histogram(
                reg,
                PEER_RTT_SECONDS,
                "Round-trip time of weir's keepalive pings in seconds, by the side pinged",
                &[ROUTE, SIDE],
                CONNECT_BUCKETS,
            )?,
            quota_utilisation: {
                let g = GaugeVec::new(
                    Opts::new(
                        QUOTA_UTILISATION,
                        "Share of a tenant's quota used in the current period (1 = all of it)",
                    ),
                    &[TENANT, QUOTA],
                )?;
                reg.register(Box::new(g.clone()))?;
                g
            },
            tenant_active: gauge(reg, TENANT_CONNECTIONS_ACTIVE, "WebSocket connections open per tenant", &[TENANT])?,
            tenant_connections: counter(
                reg,
                TENANT_CONNECTIONS_TOTAL,
                "WebSocket connections that ended, per tenant",
                &[TENANT],
            )?,
            tenant_messages: counter(
                reg,
                TENANT_MESSAGES_TOTAL,
                "Data messages of ended connections, per tenant and direction",
                &[TENANT, DIRECTION],
            )?,
            tenant_wire_bytes: counter(
                reg,
                TENANT_WIRE_BYTES_TOTAL,
                "Wire bytes of ended connections, per tenant and direction",
                &[TENANT, DIRECTION],
            )?,
            units: {
                let c = prometheus::CounterVec::new(
                    Opts::new(UNITS_TOTAL, "Pricing units of ended connections, per unit and tenant"),
                    &[UNIT, TENANT],
                )?;
                reg.register(Box::new(c.clone()))?;
                c
            },
            tenant_labels: std::sync::Arc::default(),
            config_reloads: counter(reg, CONFIG_RELOADS_TOTAL, "Config reloads by result", &[RESULT])?,
            config_info: gauge(reg, CONFIG_INFO, "Always 1: the hash of the config file in force", &[HASH])?,
            access_log_dropped: plain_counter(
                reg,
                ACCESS_LOG_DROPPED_TOTAL,
                "Access-log lines dropped because the writer fell behind",
            )?,
            frames: counter(reg, FRAMES_TOTAL, "WebSocket frames relayed", &[ROUTE, DIRECTION, KIND])?,
            messages: counter(reg, MESSAGES_TOTAL, "Complete WebSocket data messages relayed", &[ROUTE, DIRECTION])?,
            payload_bytes: counter(
                reg,
                PAYLOAD_BYTES_TOTAL,
                "WebSocket frame payload bytes relayed",
                &[ROUTE, DIRECTION],
            )?,
            wire_bytes: counter(
                reg,
                WIRE_BYTES_TOTAL,
                "Bytes relayed after the upgrade, frame headers included",
                &[ROUTE, DIRECTION],
            )?,
            closes: counter(
                reg,
                CLOSES_TOTAL,
                "Connection closes by initiator, close-code class and cause",
                &[ROUTE, INITIATOR, CODE_CLASS, CAUSE],
            )?,
            protocol_violations: counter(
                reg,
                PROTOCOL_VIOLATIONS_TOTAL,
                "RFC 6455 violations that closed a connection",
                &[ROUTE, DIRECTION, REASON],
            )?,
            backend_connect: histogram(
                reg,
                BACKEND_CONNECT_SECONDS,
                "Time to connect to a backend and complete its upgrade, seconds",
                &[POOL, NAMESPACE],
                CONNECT_BUCKETS,
            )?,
            backend_healthy: gauge(
                reg,
                BACKEND_HEALTHY,
                "1 when the backend passes its health check",
                &[POOL, NAMESPACE, BACKEND],
            )?,
            usage_records: counter(reg, USAGE_RECORDS_TOTAL, "Usage records written", &[KIND])?,
            usage_write_errors: counter(
                reg,
                USAGE_WRITE_ERRORS_TOTAL,
                "Usage records that could not be written",
                &[KIND],
            )?,
            http_requests: counter(reg, HTTP_REQUESTS_TOTAL, "Plain HTTP requests proxied on http routes", &[ROUTE])?,
            objects_active: gauge(reg, OBJECTS_ACTIVE, "Objects with at least one connection", &[NAMESPACE])?,
            object_placements: counter(reg, OBJECT_PLACEMENTS_TOTAL, "Object ids placed on an owner", &[NAMESPACE])?,
            object_moves: counter(
                reg,
                OBJECT_MOVES_TOTAL,
                "Object ids moved off a failed owner, by reason",
                &[NAMESPACE, REASON],
            )?,
            object_evictions: counter(
                reg,
                OBJECT_EVICTIONS_TOTAL,
                "Client connections closed with 1012 because their object moved",
                &[NAMESPACE],
            )?,
            cluster_members: plain_gauge(reg, CLUSTER_MEMBERS, "Instances with a live membership in etcd")?,
            cluster_healthy: plain_gauge(reg, CLUSTER_HEALTHY, "1 while this instance holds its etcd lease")?,
            cluster_evictions: plain_counter(
                reg,
                CLUSTER_LEASE_LOSSES_TOTAL,
                "Times this instance lost its etcd lease (or could not confirm it in time) and evicted its objects",
            )?,
            object_claims: counter(reg, OBJECT_CLAIMS_TOTAL, "Object claims in etcd, by result", &[RESULT])?,
            peer_relays_active: plain_gauge(
                reg,
                PEER_RELAYS_ACTIVE,
                "Client connections relayed to an owner instance over the peer hop",
            )?,
            room_slow_clients: counter(
                reg,
                ROOM_SLOW_CLIENTS_TOTAL,
                "Room clients closed because their send queue was full",
                &[NAMESPACE],
            )?,
            room_store_errors: counter(
                reg,
                ROOM_STORE_ERRORS_TOTAL,
                "Room messages that could not be written to the history store",
                &[NAMESPACE],
            )?,
            room_history_fenced: counter(
                reg,
                ROOM_HISTORY_FENCED_TOTAL,
                "Room appends or opens refused by the shared history's fencing token (a newer owner)",
                &[NAMESPACE],
            )?,
            spool_bytes: plain_gauge(reg, SPOOL_BYTES, "Bytes of usage records in the spool on disk")?,
            spool_disk_free: plain_gauge(reg, SPOOL_DISK_FREE_BYTES, "Bytes free on the spool's file system")?,
            spool_waiting: plain_gauge(
                reg,
                SPOOL_WAITING_RECORDS,
                "Usage records waiting in memory because the spool cannot be written",
            )?,
            spool_healthy: plain_gauge(reg, SPOOL_HEALTHY, "1 while the spool can be written")?,
            sink_pending: gauge(reg, SINK_RECORDS_PENDING, "Spooled records a sink has not got yet", &[SINK])?,
            sink_delivered: counter(reg, SINK_RECORDS_DELIVERED_TOTAL, "Records delivered to a sink", &[SINK])?,
            sink_errors: counter(reg, SINK_DELIVERY_ERRORS_TOTAL, "Failed batch deliveries to a sink", &[SINK])?,
            sink_lag: {
                let g = GaugeVec::new(
                    Opts::new(SINK_DELIVERY_LAG_SECONDS, "Age of the oldest record a sink has not got, seconds"),
                    &[SINK],
                )?;
                reg.register(Box::new(g.clone()))?;
                g
            },
            spool_quarantined: plain_counter(
                reg,
                SPOOL_QUARANTINED_TOTAL,
                "Spooled records that failed their checksum or did not parse, moved to quarantine",
            )?,
            accept_errors: counter(
                reg,
                ACCEPT_ERRORS_TOTAL,
                "Failed accepts on weir's own listeners",
                &[LISTENER, REASON],
            )?,
            tls_client_auth: counter(
                reg,
                TLS_CLIENT_AUTH_TOTAL,
                "TLS handshakes on client_auth listeners by client certificate result",
                &[LISTENER, RESULT],
            )?,
            open_fds: plain_gauge(reg, OPEN_FDS, "File descriptors the process has open")?,
            max_fds: plain_gauge(reg, MAX_FDS, "The process's file descriptor limit (RLIMIT_NOFILE, soft)")?,
            room_store_bytes: gauge(reg, ROOM_STORE_BYTES, "Bytes of room history on disk", &[NAMESPACE])?,
            room_store_rooms: gauge(reg, ROOM_STORE_ROOMS, "Rooms with a history file on disk", &[NAMESPACE])?,
            room_store_evictions: counter(
                reg,
                ROOM_STORE_EVICTIONS_TOTAL,
                "Room history files removed to keep the store within its cap",
                &[NAMESPACE],
            )?,
            rejections_summarised: plain_counter(
                reg,
                REJECTIONS_SUMMARISED_TOTAL,
                "Rejections counted in a summary record instead of a record each",
            )?,
        })
    }

    /// The series of `tenant`'s label (`tenants::TenantLabels`), made on first use.
    pub fn tenant(&self, tenant: Option<&str>) -> std::sync::Arc<tenants::TenantSeries> {
        self.tenant_labels.series(tenant, |label| {
            let per_direction =
                |family: &IntCounterVec| Direction::BOTH.map(|d| family.with_label_values(&[&*label, d.as_str()]));
            tenants::TenantSeries {
                active: self.tenant_active.with_label_values(&[&*label]),
                connections: self.tenant_connections.with_label_values(&[&*label]),
                messages: per_direction(&self.tenant_messages),
                wire_bytes: per_direction(&self.tenant_wire_bytes),
                label,
            }
        })
    }

    /// Start every series whose label values are known at startup at 0, so the first event of
    /// each is visible to `rate()`/`increase()` and failure-only counters exist before a failure
    /// (cold path). Routes come as `(route, pool or namespace)`; `reasons` are the rejection
    /// labels; `namespaces` and `sinks` by name.
    pub fn prepare(&self, known: &Known<'_>) {
        use crate::relay::frame::Violation;
        self.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), build_commit()]).set(1);
        for result in ["applied", "rejected"] {
            let _ = self.config_reloads.with_label_values(&[result]);
        }
        for result in &known.claim_results {
            let _ = self.object_claims.with_label_values(&[result]);
        }
        for t in known.tenants.iter().map(|t| Some(*t)).chain([None]) {
            let series = self.tenant(t);
            for unit in &known.units {
                let _ = self.units.with_label_values(&[*unit, &*series.label]);
            }
        }
        let mut routes: Vec<&str> = known.routes.iter().map(|(r, _)| *r).collect();
        routes.push("none");
        for (route, place) in &known.routes {
            let (route, [pool, ns]) = (*route, place.labels());
            // The connection handles include `weir_connections_total` and `weir_closes_total`.
            drop(self.connection_handles(route, place));
            let _ = self.connections_started.with_label_values(&[route, pool, ns]);
            let _ = self.backend_connect.with_label_values(&[pool, ns]);
            for d in Direction::BOTH {
                for v in Violation::ALL {
                    let _ = self.protocol_violations.with_label_values(&[route, d.as_str(), v.as_str()]);
                }
            }
            let _ = self.http_requests.with_label_values(&[route]);
        }
        for route in routes {
            for reason in &known.reasons {
                let _ = self.handshake_rejections.with_label_values(&[route, reason]);
            }
        }
        for kind in ["start", "interim", "stop", "rejection", "object", "rejections"] {
            let _ = self.usage_records.with_label_values(&[kind]);
            let _ = self.usage_write_errors.with_label_values(&[kind]);
        }
        for ns in &known.namespaces {
            let _ = self.objects_active.with_label_values(&[ns]);
            let _ = self.object_placements.with_label_values(&[ns]);
            for reason in ["health_check", "connect_failed", "claim_lost"] {
                let _ = self.object_moves.with_label_values(&[ns, reason]);
            }
            let _ = self.object_evictions.with_label_values(&[ns]);
        }
        // Counters only: the sink gauges (pending, lag) are set by each delivery loop once it has
        // read its cursor; a 0 before that would claim a sink is caught up.
        for sink in &known.sinks {
            let _ = self.sink_delivered.with_label_values(&[sink]);
            let _ = self.sink_errors.with_label_values(&[sink]);
        }
    }

    /// Resolve the per-connection handles for `route` and `pool` and count the connection as
    /// started (warm path, once per connection, at its 101).
    pub fn connection(&self, route: &str, place: &Place) -> ConnMetrics {
        let [pool, ns] = place.labels();
        self.connections_started.with_label_values(&[route, pool, ns]).inc();
        self.connection_handles(route, place)
    }

    /// The handles of `route` (served by `place`), resolved once for a snapshot: a connection
    /// then clones them (`RouteHandles::connection`) instead of looking up some twenty label
    /// sets (issue 14).
    pub fn route_handles(&self, route: &str, place: &Place) -> RouteHandles {
        let [pool, ns] = place.labels();
        RouteHandles {
            started: self.connections_started.with_label_values(&[route, pool, ns]),
            conn: self.connection_handles(route, place),
            backend_connect: self.backend_connect.with_label_values(&[pool, ns]),
        }
    }

    fn connection_handles(&self, route: &str, place: &Place) -> ConnMetrics {
        let [pool, ns] = place.labels();
        let dir = |d: Direction| DirMetrics {
            frames: FRAME_KINDS.map(|k| self.frames.with_label_values(&[route, d.as_str(), k])),
            messages: self.messages.with_label_values(&[route, d.as_str()]),
            payload_bytes: self.payload_bytes.with_label_values(&[route, d.as_str()]),
            wire_bytes: self.wire_bytes.with_label_values(&[route, d.as_str()]),
        };
        let mut closes = Vec::with_capacity(Party::ALL.len() * CODE_CLASSES.len() * Cause::ALL.len());
        for p in Party::ALL {
            for class in CODE_CLASSES {
                for c in Cause::ALL {
                    closes.push(self.closes.with_label_values(&[route, p.as_str(), class, c.as_str()]));
                }
            }
        }
        let handles = ConnHandles {
            active: self.connections_active.with_label_values(&[route, pool, ns]),
            duration: self.connection_duration.with_label_values(&[route, pool, ns]),
            rtt: ["client", "backend"].map(|side| self.peer_rtt.with_label_values(&[route, side])),
            dirs: [dir(Direction::ClientToBackend), dir(Direction::BackendToClient)],
            ended: Outcome::ALL.map(|o| self.connections_total.with_label_values(&[route, pool, ns, o.as_str()])),
            closes: closes.into_boxed_slice(),
        };
        ConnMetrics { handles: Arc::new(handles) }
    }
}

/// One route's connection metric handles, resolved when its snapshot is built (cold path); a
/// reload builds new ones, and open connections keep theirs (as they keep their route).
#[derive(Clone)]
pub struct RouteHandles {
    /// `weir_connections_started_total` of the route.
    started: IntCounter,
    /// What each connection starts with (every `Reported` count 0).
    conn: ConnMetrics,
    /// `weir_backend_connect_seconds` of the route's pool or namespace.
    pub backend_connect: Histogram,
}

impl RouteHandles {
    /// Count a started connection and give it its handles (warm path: clones, no lookup).
    pub fn connection(&self) -> ConnMetrics {
        self.started.inc();
        self.conn.clone()
    }
}

/// What serves a route, as metric labels: `pool` on pool routes, `namespace` on object routes
/// (the other one empty), as the usage record has `pool` or `object.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// The pool's name, on pool routes (else empty).
    pub pool: String,
    /// The object namespace's name, on object routes (else empty).
    pub namespace: String,
}

impl Place {
    /// A pool route's place.
    pub fn pool(name: &str) -> Place {
        Place { pool: name.to_string(), namespace: String::new() }
    }

    /// An object route's place.
    pub fn namespace(name: &str) -> Place {
        Place { pool: String::new(), namespace: name.to_string() }
    }

    /// `[pool, namespace]` label values.
    pub fn labels(&self) -> [&str; 2] {
        [&self.pool, &self.namespace]
    }

    /// Its name, whichever it is.
    pub fn name(&self) -> &str {
        if self.pool.is_empty() {
            &self.namespace
        } else {
            &self.pool
        }
    }
}

/// The label values known at startup (`Metrics::prepare`).
#[derive(Debug, Default)]
pub struct Known<'a> {
    /// `(route, what serves it)` of every route.
    pub routes: Vec<(&'a str, Place)>,
    /// Every rejection label (`reason` of `weir_handshake_rejections_total`).
    pub reasons: Vec<&'a str>,
    /// Object namespaces.
    pub namespaces: Vec<&'a str>,
    /// Usage sinks.
    pub sinks: Vec<&'a str>,
    /// Tenants the config names (routes, API keys, quotas, the default tenant).
    pub tenants: Vec<&'a str>,
    /// Pricing units (`billing.units` names).
    pub units: Vec<&'a str>,
    /// Results of object claims (`weir_object_claims_total{result}`; from `cluster`, which
    /// metrics does not import).
    pub claim_results: Vec<&'a str>,
}

/// The git commit weir was built from (`build.rs`), or `unknown`.
pub fn build_commit() -> &'static str {
    option_env!("WEIR_COMMIT").filter(|c| !c.is_empty()).unwrap_or("unknown")
}

/// Values of the `kind` label on `weir_frames_total`: data frames (text, binary and
/// continuation) and the three control frames.
pub const FRAME_KINDS: [&str; 4] = ["data", "ping", "pong", "close"];

/// Per-direction counters of one route, resolved once.
struct DirMetrics {
    frames: [IntCounter; 4],
    messages: IntCounter,
    payload_bytes: IntCounter,
    wire_bytes: IntCounter,
}

/// The label handles of one route's connections, shared by all of them.
pub struct ConnHandles {
    /// The active-connections gauge child.
    pub active: IntGauge,
    /// The duration histogram child.
    pub duration: Histogram,
    /// The keepalive RTT histogram children, `[client, backend]`.
    pub rtt: [Histogram; 2],
    dirs: [DirMetrics; 2],
    /// `weir_connections_total` children, by outcome (`Outcome::ALL` order).
    ended: [IntCounter; Outcome::ALL.len()],
    /// `weir_closes_total` children, by initiator, code class and cause (`Party::ALL`,
    /// `CODE_CLASSES`, `Cause::ALL` order), flattened.
    closes: Box<[IntCounter]>,
}

impl ConnHandles {
    /// Count one finished connection of the route: `weir_connections_total{outcome}` and
    /// `weir_closes_total{initiator, code_class, cause}` (warm path: two atomic adds, no label
    /// lookup; issue 14 measured the two lookups at about 1 % of a handshake cycle's
    /// instructions).
    pub fn count_end(&self, outcome: Outcome, initiator: Party, code: Option<u16>, cause: Cause) {
        if let Some(c) = self.ended.get(outcome.index()) {
            c.inc();
        }
        let at = (initiator.index() * CODE_CLASSES.len() + code_class_index(code)) * Cause::ALL.len() + cause.index();
        if let Some(c) = self.closes.get(at) {
            c.inc();
        }
    }
}

/// One connection's metrics: its route's handles, one shared pointer (a connection clones one
/// `Arc`, not 18 handles). What it has added so far is its live-set entry's copy of its counts
/// (`ConnObserver::progress`), so it holds nothing else (warm path to create, hot path to
/// update).
#[derive(Clone)]
pub struct ConnMetrics {
    handles: Arc<ConnHandles>,
}

impl std::ops::Deref for ConnMetrics {
    type Target = ConnHandles;

    fn deref(&self) -> &ConnHandles {
        &self.handles
    }
}

/// Adds `n` to `c` (no atomic add for 0).
fn bump(c: &IntCounter, n: u64) {
    if n != 0 {
        c.inc_by(n);
    }
}

impl ConnMetrics {
    /// Push what direction `d` counted in one wakeup (`fresh`: deltas, never totals). Hot path:
    /// returns at once when nothing moved, otherwise a few atomic adds.
    pub fn add(&self, d: Direction, fresh: &DirectionCounts) {
        let (m, c) = (&self.handles.dirs[d.index()], fresh);
        if c.wire_bytes == 0 {
            return;
        }
        bump(&m.wire_bytes, c.wire_bytes);
        bump(&m.payload_bytes, c.payload_bytes);
        if c.frames != 0 {
            bump(&m.frames[0], c.data_frames);
            bump(&m.frames[1], c.pings);
            bump(&m.frames[2], c.pongs);
            bump(&m.frames[3], c.closes);
            bump(&m.messages, c.messages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::names::ALL;
    use super::*;
    use crate::relay::report::code_class;

    /// Every `weir_*` name in `text` (a metric name ends at a non-identifier character).
    fn names_in(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("weir_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            found.push(tail[..end].to_string());
            rest = &tail[end..];
        }
        found
    }

    fn known(name: &str) -> bool {
        let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        ALL.contains(&base)
    }

    #[test]
    fn every_name_registers_and_is_prefixed() {
        let reg = Registry::new();
        let m = Metrics::register(&reg).unwrap();
        m.connection("r", &Place::pool("p")).active.inc();
        m.handshake_rejections.with_label_values(&["r", "x"]).inc();
        for name in ALL {
            assert!(name.starts_with("weir_"), "{name}");
        }
        let registered: Vec<String> = reg.gather().iter().map(|f| f.name().to_string()).collect();
        assert!(registered.iter().all(|n| known(n)), "{registered:?}");
        // The relay names its splice metrics itself: they are the ones named here.
        for name in [SPLICE_BYTES_TOTAL, SPLICE_FALLBACKS_TOTAL, SPLICE_PIPES] {
            assert!(registered.iter().any(|n| n == name), "{name} is not registered: {registered:?}");
        }
    }

    /// A connection's end lands in the series of its route, outcome, initiator, code class and
    /// cause, for every combination (the handles are kept flattened, so an off-by-one in the
    /// index would count under the wrong labels).
    #[test]
    fn a_connection_s_end_is_counted_under_its_labels() {
        let reg = Registry::new();
        let m = Metrics::register(&reg).unwrap();
        let conn = m.connection("r", &Place::namespace("ns"));
        let codes = [None, Some(1000), Some(1001), Some(1011), Some(4000), Some(2000)];
        for (o, (p, (code, c))) in Outcome::ALL.iter().cycle().zip(
            Party::ALL
                .iter()
                .flat_map(|p| codes.iter().flat_map(move |code| Cause::ALL.iter().map(move |c| (p, (code, c))))),
        ) {
            let before = m.closes.with_label_values(&["r", p.as_str(), code_class(*code), c.as_str()]).get();
            let ended = m.connections_total.with_label_values(&["r", "", "ns", o.as_str()]).get();
            conn.count_end(*o, *p, *code, *c);
            assert_eq!(m.closes.with_label_values(&["r", p.as_str(), code_class(*code), c.as_str()]).get(), before + 1);
            assert_eq!(m.connections_total.with_label_values(&["r", "", "ns", o.as_str()]).get(), ended + 1);
        }
        let total: u64 = reg
            .gather()
            .iter()
            .filter(|f| f.name() == CLOSES_TOTAL)
            .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().value() as u64))
            .sum();
        assert_eq!(total, (Party::ALL.len() * codes.len() * Cause::ALL.len()) as u64);
    }

    /// Grafana dashboards (`*.json`) and Prometheus rule files and their unit tests (`*.yml`) in
    /// `dashboards/` name only known metrics, and the dashboard and the alerts name some.
    #[test]
    fn dashboards_use_only_known_metrics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
        let mut checked = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(ext) = path.extension().and_then(|e| e.to_str()) else { continue };
            let text = std::fs::read_to_string(&path).unwrap();
            match ext {
                "json" => {
                    serde_json::from_str::<serde_json::Value>(&text).unwrap();
                }
                "yml" | "yaml" => {
                    serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap();
                }
                _ => continue,
            }
            for n in names_in(&text) {
                assert!(known(&n), "{} uses unknown metric {n}", path.display());
            }
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            checked.insert(name, names_in(&text).len());
        }
        for file in ["gateway.json", "alerts.yml"] {
            assert!(checked.get(file).is_some_and(|n| *n > 0), "no metrics found in dashboards/{file}: {checked:?}");
        }
    }

    #[test]
    fn readme_metrics_table_lists_exactly_the_known_metrics() {
        let readme =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
        let section = readme.split("## Metrics").nth(1).unwrap().split("\n## ").next().unwrap();
        for n in names_in(section) {
            assert!(known(&n), "README names unknown metric {n}");
        }
        for name in ALL {
            assert!(section.contains(&format!("`{name}`")), "README metrics table misses {name}");
        }
    }
}
