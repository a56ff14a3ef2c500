//! Every Prometheus metric and label name weir exports, as constants.
//!
//! Dashboards (`dashboards/`), the README metrics table and the tests use only these names, so
//! a rename here is the one place a scraper-visible name changes. When adding a metric: add the
//! constant here, register it in `metrics/mod.rs`, and add a row to the README metrics table.

/// Gauge: WebSocket connections currently relayed {route, pool}.
pub const CONNECTIONS_ACTIVE: &str = "weir_connections_active";
/// Counter: WebSocket connections that got their 101 {route, pool}.
pub const CONNECTIONS_STARTED_TOTAL: &str = "weir_connections_started_total";
/// Gauge: always 1; the build's version and commit {version, commit}.
pub const BUILD_INFO: &str = "weir_build_info";
/// Gauge: the process's resident memory, bytes {}.
pub const RESIDENT_MEMORY_BYTES: &str = "weir_resident_memory_bytes";
/// Gauge: bytes in the heap blocks weir holds (jemalloc `stats.allocated`), bytes {}.
pub const HEAP_ALLOCATED_BYTES: &str = "weir_heap_allocated_bytes";
/// Gauge: bytes in the allocator's pages that hold blocks, free slots included (`stats.active`),
/// bytes {}.
pub const HEAP_ACTIVE_BYTES: &str = "weir_heap_active_bytes";
/// Gauge: bytes the allocator keeps resident, its metadata and unreturned free pages included
/// (`stats.resident`), bytes {}.
pub const HEAP_RESIDENT_BYTES: &str = "weir_heap_resident_bytes";
/// Counter: relayed WebSocket connections that ended, by outcome {route, pool, outcome}.
pub const CONNECTIONS_TOTAL: &str = "weir_connections_total";
/// Counter: upgrade requests refused before or during the handshake {route, reason}.
pub const HANDSHAKE_REJECTIONS_TOTAL: &str = "weir_handshake_rejections_total";
/// Histogram: lifetime of relayed connections, seconds {route, pool}.
pub const CONNECTION_DURATION_SECONDS: &str = "weir_connection_duration_seconds";
/// Histogram: round-trip time of weir's keepalive pings, seconds {route, side}.
pub const PEER_RTT_SECONDS: &str = "weir_peer_rtt_seconds";
/// Gauge: share of a tenant's quota used in the current period (1 = all) {tenant, quota}.
pub const QUOTA_UTILISATION: &str = "weir_quota_utilisation";
/// Gauge: WebSocket connections open per tenant (bounded: see `metrics::tenants`) {tenant}.
pub const TENANT_CONNECTIONS_ACTIVE: &str = "weir_tenant_connections_active";
/// Counter: WebSocket connections that ended, per tenant {tenant}.
pub const TENANT_CONNECTIONS_TOTAL: &str = "weir_tenant_connections_total";
/// Counter: data messages of ended connections per tenant and direction {tenant, direction}.
pub const TENANT_MESSAGES_TOTAL: &str = "weir_tenant_messages_total";
/// Counter: wire bytes of ended connections per tenant and direction {tenant, direction}.
pub const TENANT_WIRE_BYTES_TOTAL: &str = "weir_tenant_wire_bytes_total";
/// Counter: pricing units (`billing.units`) of ended connections, per unit and tenant {unit, tenant}.
pub const UNITS_TOTAL: &str = "weir_units_total";
/// Label: a pricing unit's name (`billing.units[].name`).
pub const UNIT: &str = "unit";
/// Counter: TLS handshakes on `client_auth` listeners by client certificate result {listener,
/// result}: `verified`, `none` (optional mode, no certificate) or `rejected` (not from the CA).
pub const TLS_CLIENT_AUTH_TOTAL: &str = "weir_tls_client_auth_total";
/// Counter: config reloads (SIGHUP, `POST /api/reload`) by result {result}: `applied` or `rejected`.
pub const CONFIG_RELOADS_TOTAL: &str = "weir_config_reloads_total";
/// Gauge: always 1; the SHA-256 (first 16 hex digits) of the config file in force {hash}.
pub const CONFIG_INFO: &str = "weir_config_info";
/// Counter: access-log lines dropped because the writer fell behind {}.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "weir_access_log_dropped_total";
/// Counter: frames relayed {route, direction, kind}.
pub const FRAMES_TOTAL: &str = "weir_frames_total";
/// Counter: complete data messages relayed {route, direction}.
pub const MESSAGES_TOTAL: &str = "weir_messages_total";
/// Counter: frame payload bytes relayed {route, direction}.
pub const PAYLOAD_BYTES_TOTAL: &str = "weir_payload_bytes_total";
/// Counter: bytes relayed on the wire, headers included {route, direction}.
pub const WIRE_BYTES_TOTAL: &str = "weir_wire_bytes_total";
/// Counter: connection closes {route, initiator, code_class, cause}.
pub const CLOSES_TOTAL: &str = "weir_closes_total";
/// Counter: RFC 6455 violations that closed a connection {route, direction, reason}.
pub const PROTOCOL_VIOLATIONS_TOTAL: &str = "weir_protocol_violations_total";
/// Histogram: time to connect to a backend and complete its upgrade, seconds {pool}.
pub const BACKEND_CONNECT_SECONDS: &str = "weir_backend_connect_seconds";
/// Gauge: 1 when a backend passes its health check, else 0 {pool, backend}.
pub const BACKEND_HEALTHY: &str = "weir_backend_healthy";
/// Counter: usage records handed to the spool {kind}.
pub const USAGE_RECORDS_TOTAL: &str = "weir_usage_records_total";
/// Counter: usage records that could not be written {kind}.
pub const USAGE_WRITE_ERRORS_TOTAL: &str = "weir_usage_write_errors_total";
/// Counter: plain HTTP requests proxied on `http` routes {route}.
pub const HTTP_REQUESTS_TOTAL: &str = "weir_http_requests_total";
/// Gauge: objects with at least one connection {namespace}.
pub const OBJECTS_ACTIVE: &str = "weir_objects_active";
/// Counter: object ids placed on an owner (an id with no live connection got one) {namespace}.
pub const OBJECT_PLACEMENTS_TOTAL: &str = "weir_object_placements_total";
/// Counter: object ids moved off a failed owner {namespace, reason}.
pub const OBJECT_MOVES_TOTAL: &str = "weir_object_moves_total";
/// Counter: client connections closed with 1012 because their object moved {namespace}.
pub const OBJECT_EVICTIONS_TOTAL: &str = "weir_object_evictions_total";
/// Gauge: instances with a live membership in the cluster's etcd (as this one last read them)
/// {}; 0 without `cluster:`.
pub const CLUSTER_MEMBERS: &str = "weir_cluster_members";
/// Gauge: 1 while this instance holds its etcd lease and etcd answers, else 0 {}.
pub const CLUSTER_HEALTHY: &str = "weir_cluster_healthy";
/// Counter: times this instance lost its etcd lease, or could not confirm it before
/// TTL − margin, and evicted every object it owned (clients closed with 1012) {}.
pub const CLUSTER_LEASE_LOSSES_TOTAL: &str = "weir_cluster_lease_losses_total";
/// Counter: object claims in etcd, by result (`created`, `mine`, `elsewhere`, `failed`)
/// {result}.
pub const OBJECT_CLAIMS_TOTAL: &str = "weir_object_claims_total";
/// Gauge: client connections relayed to an owner instance over the peer hop, from this
/// instance {}.
pub const PEER_RELAYS_ACTIVE: &str = "weir_peer_relays_active";
/// Counter: room clients closed because their send queue was full {namespace}.
pub const ROOM_SLOW_CLIENTS_TOTAL: &str = "weir_room_slow_clients_total";
/// Counter: room messages that could not be written to the history store {namespace}.
pub const ROOM_STORE_ERRORS_TOTAL: &str = "weir_room_store_errors_total";
/// Counter: room appends or opens refused by the shared history's fence (a newer owner) {namespace}.
pub const ROOM_HISTORY_FENCED_TOTAL: &str = "weir_room_history_fenced_total";
/// Gauge: bytes of usage records in the spool's segments on disk.
pub const SPOOL_BYTES: &str = "weir_spool_bytes";
/// Gauge: bytes free (for an unprivileged writer) on the spool's file system {}.
pub const SPOOL_DISK_FREE_BYTES: &str = "weir_spool_disk_free_bytes";
/// Gauge: usage records waiting in memory because the spool cannot be written.
pub const SPOOL_WAITING_RECORDS: &str = "weir_spool_waiting_records";
/// Gauge: 1 while the spool can be written, else 0 (new upgrades get 503 unless fail_open).
pub const SPOOL_HEALTHY: &str = "weir_spool_healthy";
/// Gauge: records in the spool that sink has not got yet {sink}.
pub const SINK_RECORDS_PENDING: &str = "weir_sink_records_pending";
/// Counter: records delivered to a sink {sink}.
pub const SINK_RECORDS_DELIVERED_TOTAL: &str = "weir_sink_records_delivered_total";
/// Counter: failed deliveries (batches) to a sink {sink}.
pub const SINK_DELIVERY_ERRORS_TOTAL: &str = "weir_sink_delivery_errors_total";
/// Gauge: age of the oldest record a sink has not got, seconds {sink}.
pub const SINK_DELIVERY_LAG_SECONDS: &str = "weir_sink_delivery_lag_seconds";

/// Label: route name from config.
pub const ROUTE: &str = "route";
/// Label: pool name from config.
pub const POOL: &str = "pool";
/// Label: backend address from config.
pub const BACKEND: &str = "backend";
/// Label: `client_to_backend` or `backend_to_client`.
pub const DIRECTION: &str = "direction";
/// Label: frame kind: `data` (text, binary, continuation), `ping`, `pong`, `close`.
pub const KIND: &str = "kind";
/// Label: a reject or violation reason from a closed set.
pub const REASON: &str = "reason";
/// Label: who closed first: client, backend or gateway.
pub const INITIATOR: &str = "initiator";
/// Label: close code class: normal (1000), going_away (1001), error (1002–1015), app (3000–4999),
/// none (no close frame).
pub const CODE_CLASS: &str = "code_class";
/// Label: sink name from config.
pub const SINK: &str = "sink";
/// Label: object namespace name from config.
pub const NAMESPACE: &str = "namespace";
/// Label: why a connection ended (see `relay::report::Cause`).
pub const CAUSE: &str = "cause";
/// Label: how a connection ended (see `relay::report::Outcome`).
pub const OUTCOME: &str = "outcome";
/// Label: a reload's result: `applied` or `rejected` (`weir_config_reloads_total`).
pub const RESULT: &str = "result";
/// Label: the config file's hash (`weir_config_info`).
pub const HASH: &str = "hash";
/// Label: the crate version (`weir_build_info`).
pub const VERSION: &str = "version";
/// Label: the git commit weir was built from, or `unknown` (`weir_build_info`).
pub const COMMIT: &str = "commit";
/// Label: a tenant (bounded: see `metering::quota`).
pub const TENANT: &str = "tenant";
/// Label: a quota's name (`<of>_per_<per>`).
pub const QUOTA: &str = "quota";
/// Label: a connection's side: `client` or `backend`.
pub const SIDE: &str = "side";
/// Label: a listener weir runs itself (`gateway`, `echo` for the built-in echo backend, `admin`,
/// `peer` for the cluster's peer listener).
pub const LISTENER: &str = "listener";

/// Counter: spooled records that failed their checksum or did not parse, moved to the
/// quarantine file instead of a sink {}.
pub const SPOOL_QUARANTINED_TOTAL: &str = "weir_spool_quarantined_total";
/// Counter: failed `accept(2)` calls on a listener weir runs itself, by errno class {listener, reason}.
pub const ACCEPT_ERRORS_TOTAL: &str = "weir_accept_errors_total";
/// Gauge: file descriptors the process has open {}.
pub const OPEN_FDS: &str = "weir_open_fds";
/// Gauge: the process's descriptor limit (`RLIMIT_NOFILE` soft) {}.
pub const MAX_FDS: &str = "weir_max_fds";
/// Gauge: bytes of room history on disk {namespace}.
pub const ROOM_STORE_BYTES: &str = "weir_room_store_bytes";
/// Gauge: rooms with a history file on disk {namespace}.
pub const ROOM_STORE_ROOMS: &str = "weir_room_store_rooms";
/// Counter: room history files removed to keep the store within its cap {namespace}.
pub const ROOM_STORE_EVICTIONS_TOTAL: &str = "weir_room_store_evictions_total";
/// Counter: rejections counted in a summary record instead of a record each (over the per-client
/// rate) {}.
pub const REJECTIONS_SUMMARISED_TOTAL: &str = "weir_rejections_summarised_total";
/// Counter: payload bytes relayed with splice(2) between plain TCP sockets {} (registered from
/// `relay::splice::STATS`, which names it itself: the relay imports nothing from weir).
pub const SPLICE_BYTES_TOTAL: &str = "weir_splice_bytes_total";
/// Counter: large frames copied instead of spliced because no pipe was free {}.
pub const SPLICE_FALLBACKS_TOTAL: &str = "weir_splice_fallbacks_total";
/// Gauge: pipes open for splice(2), in use or idle in the pools {}.
pub const SPLICE_PIPES: &str = "weir_splice_pipes";
/// Every metric name above, for tests that check dashboards and docs use only known names.
pub const ALL: &[&str] = &[
    SPLICE_BYTES_TOTAL,
    SPLICE_FALLBACKS_TOTAL,
    SPLICE_PIPES,
    TLS_CLIENT_AUTH_TOTAL,
    CONNECTIONS_ACTIVE,
    CONNECTIONS_TOTAL,
    CONNECTIONS_STARTED_TOTAL,
    BUILD_INFO,
    TENANT_CONNECTIONS_ACTIVE,
    TENANT_CONNECTIONS_TOTAL,
    TENANT_MESSAGES_TOTAL,
    TENANT_WIRE_BYTES_TOTAL,
    UNITS_TOTAL,
    CONFIG_RELOADS_TOTAL,
    CONFIG_INFO,
    RESIDENT_MEMORY_BYTES,
    HEAP_ALLOCATED_BYTES,
    HEAP_ACTIVE_BYTES,
    HEAP_RESIDENT_BYTES,
    HANDSHAKE_REJECTIONS_TOTAL,
    CONNECTION_DURATION_SECONDS,
    PEER_RTT_SECONDS,
    QUOTA_UTILISATION,
    ACCESS_LOG_DROPPED_TOTAL,
    FRAMES_TOTAL,
    MESSAGES_TOTAL,
    PAYLOAD_BYTES_TOTAL,
    WIRE_BYTES_TOTAL,
    CLOSES_TOTAL,
    PROTOCOL_VIOLATIONS_TOTAL,
    BACKEND_CONNECT_SECONDS,
    BACKEND_HEALTHY,
    USAGE_RECORDS_TOTAL,
    USAGE_WRITE_ERRORS_TOTAL,
    HTTP_REQUESTS_TOTAL,
    OBJECTS_ACTIVE,
    OBJECT_PLACEMENTS_TOTAL,
    OBJECT_MOVES_TOTAL,
    OBJECT_EVICTIONS_TOTAL,
    CLUSTER_MEMBERS,
    CLUSTER_HEALTHY,
    CLUSTER_LEASE_LOSSES_TOTAL,
    OBJECT_CLAIMS_TOTAL,
    PEER_RELAYS_ACTIVE,
    ROOM_SLOW_CLIENTS_TOTAL,
    ROOM_STORE_ERRORS_TOTAL,
    ROOM_HISTORY_FENCED_TOTAL,
    SPOOL_BYTES,
    SPOOL_DISK_FREE_BYTES,
    SPOOL_WAITING_RECORDS,
    SPOOL_HEALTHY,
    SINK_RECORDS_PENDING,
    SINK_RECORDS_DELIVERED_TOTAL,
    SINK_DELIVERY_ERRORS_TOTAL,
    SINK_DELIVERY_LAG_SECONDS,
    SPOOL_QUARANTINED_TOTAL,
    ACCEPT_ERRORS_TOTAL,
    OPEN_FDS,
    MAX_FDS,
    ROOM_STORE_BYTES,
    ROOM_STORE_ROOMS,
    ROOM_STORE_EVICTIONS_TOTAL,
    REJECTIONS_SUMMARISED_TOTAL,
];
