//! The serde mirror of `config.yaml`: what the operator writes, nothing more.
//!
//! Cold path (startup, `weir check`). Every struct denies unknown fields so a misspelt key fails
//! loudly; `keys.rs` mirrors these structs key for key (a test compares the two), so that every
//! misspelt key and every value of the wrong kind is reported at once, with its path, before serde
//! reads the file: a key added here goes into `keys.rs` too. Values stay as written (strings for
//! addresses and durations) so that validation can report the key path, the bad value and the fix
//! for every problem at once (see `validate.rs`).

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Process-wide settings handed to Pingora (worker threads, shutdown grace).
    #[serde(default)]
    pub server: FileServer,
    /// Logging: level and format.
    #[serde(default)]
    pub log: FileLog,
    /// Public listeners that accept client connections (at least one).
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub admin: Option<FileAdmin>,
    /// Timeouts for the handshake phase.
    #[serde(default)]
    pub timeouts: FileTimeouts,
    /// Where usage (billing) records go.
    #[serde(default)]
    pub usage: FileUsage,
    /// Serve the built-in demo page at `GET /` on every listener.
    #[serde(default)]
    pub demo_page: bool,
    /// Directory where weir keeps state that must survive a restart (room history). Default:
    /// `weir-data`.
    pub data_dir: Option<String>,
    /// Object namespaces: named, stateful endpoints where every client of one id reaches one
    /// instance.
    #[serde(default)]
    pub objects: Vec<FileObject>,
    /// Named backend pools.
    #[serde(default)]
    pub pools: Vec<FilePool>,
    /// Routes from (host, path prefix) to a pool, tried longest prefix first.
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    /// Billing: pricing units computed from each connection's counts.
    pub billing: Option<FileBilling>,
    /// The built-in echo (the `builtin:echo` backend and the `echo` object).
    #[serde(default)]
    pub echo: FileEcho,
    /// Guards on every open connection (defaults for all routes; object namespaces and routes
    /// override key by key).
    #[serde(default)]
    pub limits: FileLimits,
    /// Connection caps and new-connection rates.
    #[serde(default)]
    pub admission: FileAdmission,
    /// Peers (CIDRs) whose `X-Forwarded-For` names the client. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Spend caps per tenant, enforced in the data path.
    #[serde(default)]
    pub quotas: Vec<FileQuota>,
    /// How drains close open connections.
    #[serde(default)]
    pub drain: FileDrain,
    /// One JSON line per ended connection: `stderr` or a file path. Default: none.
    pub access_log: Option<String>,
    /// Several weir instances that share object ownership through etcd. Default: none (one
    /// process owns its objects alone).
    pub cluster: Option<FileCluster>,
}

/// `cluster:` membership and object claims in etcd, and the peer listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    /// The cluster's name: the prefix of every etcd key weir writes (`<name>/members/…`).
    pub name: String,
    /// This process's name, unique in the cluster (it names the owner of the objects it claims).
    pub instance: String,
    /// etcd endpoints, `host:port` (v3 API, plain HTTP/2).
    pub etcd: Vec<String>,
    /// TTL of this instance's etcd lease (duration, 2s..60s): how long its claims outlive it.
    /// Default: 5s.
    pub lease_ttl: Option<String>,
    /// The peer listener: where other instances relay clients of objects this one owns.
    pub peer: FilePeer,
    /// Where built-in rooms keep their history in the cluster (default: each instance's files).
    pub history: Option<FileClusterHistory>,
}

/// `cluster.history:` the shared room history.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClusterHistory {
    /// PostgreSQL connection string (libpq keywords or `postgresql://` URL; TLS from `sslmode`).
    pub postgres: String,
    /// CA file to trust for TLS (else the string's `sslrootcert`, else the system roots).
    pub ca_file: Option<String>,
}

/// `cluster.peer:` the listener other instances relay to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePeer {
    /// `host:port` to listen on, as the other instances reach it (published in etcd).
    pub address: String,
    /// A file holding the secret every instance shares (first line, at least 16 characters).
    pub secret_file: String,
}

/// One `quotas[]` entry: a tenant's budget of a quantity per calendar period (UTC).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuota {
    /// The tenant, or `"*"` for every tenant (each its own budget).
    pub tenant: String,
    /// What is counted: `messages` (data messages, both directions), `bytes` (wire bytes, both
    /// directions) or `connection_seconds`.
    pub of: String,
    /// The budget per period, in the quantity's unit.
    pub limit: u64,
    /// `hour`, `day` or `month` (UTC calendar periods).
    pub per: String,
}

/// `limits:` guards on open connections (at the top level, in an object namespace or a route;
/// the most specific setting of each key wins). A duration of `0s` or a size of 0 turns a guard
/// off.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// No data frame in either direction for this long: both sides get 1001 "idle timeout"
    /// (duration). Default: 1h.
    pub idle_timeout: Option<String>,
    /// Pings and pongs from the peers count as activity for `idle_timeout`. Default: false.
    pub control_frames_are_activity: Option<bool>,
    /// Most a connection lives (duration): then 1001 "max lifetime" (or 1012 with
    /// `lifetime_close: restart`). Default: 24h.
    pub max_lifetime: Option<String>,
    /// Each connection's lifetime is shortened by a random part of this window (duration), so a
    /// fleet does not reconnect at once. Default: a tenth of `max_lifetime`.
    pub lifetime_jitter: Option<String>,
    /// The close at the end of the lifetime: `going_away` (1001) or `restart` (1012). Default:
    /// going_away.
    pub lifetime_close: Option<String>,
    /// After one side's close frame, the other has this long to answer; then both sockets are
    /// closed (duration). Default: 10s.
    pub close_timeout: Option<String>,
    /// weir's own pings to silent peers.
    pub keepalive: Option<FileKeepalive>,
    /// Largest data frame payload, bytes; a larger one gets 1009 before it is forwarded.
    /// Default: 16777216 (16 MiB).
    pub max_frame: Option<u64>,
    /// Largest data message (all its frames), bytes; the frame that goes over gets 1009 before it
    /// is forwarded. Default: 67108864 (64 MiB).
    pub max_message: Option<u64>,
    /// Data messages per second per connection and direction. Default: off.
    pub message_rate: Option<FileRate>,
    /// Wire bytes per second per connection and direction. Default: off.
    pub bandwidth: Option<FileRate>,
}

/// `limits.keepalive:` weir's pings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeepalive {
    /// A peer silent this long gets a ping (duration; `0s`: no pings). Default: 30s.
    pub interval: Option<String>,
    /// A pinged peer silent this long is dead: the other side gets 1011 (duration). Default: 20s.
    pub timeout: Option<String>,
    /// Ping the backend too, not only the client. Default: false.
    pub backend: Option<bool>,
}

/// `limits.message_rate:` / `limits.bandwidth:` a token bucket per connection and direction.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRate {
    /// Sustained rate, messages (or bytes) per second; 0 turns the limit off.
    pub per_second: Option<u64>,
    /// Most sent at once above the rate, messages (or bytes). Default: `per_second`.
    pub burst: Option<u64>,
    /// `close` (1008 "rate limit") or `throttle` (stop reading the sender until the bucket
    /// refills). Default: close.
    pub action: Option<String>,
    /// Whose sending is limited: `client`, `backend` or `both`. Default: client.
    pub from: Option<String>,
}

/// `echo:` settings of the built-in echo backend and echo object.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEcho {
    /// Largest message (and frame) a client may send to the echo, bytes; a larger one is closed
    /// with 1009. Default: 1048576 (1 MiB).
    pub max_message: Option<u64>,
}

/// `server:` process settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Worker threads for the gateway listeners (count). Default: 2.
    pub threads: Option<u64>,
    /// How long open WebSockets get after SIGTERM before weir closes them with 1001 (duration,
    /// e.g. `10s`). Default: 10s.
    pub grace_period: Option<String>,
    /// File descriptors kept in reserve (count): new upgrades get 503 once fewer are free.
    /// Default: 256.
    pub fd_reserve: Option<u64>,
    /// Unix socket a new weir (`weir run --upgrade`) takes the listening sockets over on (path).
    /// Default: `upgrade.sock` in `data_dir`.
    pub upgrade_sock: Option<String>,
}

/// `log:` settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    /// Minimum level: error, warn, info, debug or trace; `RUST_LOG` overrides it. Default: info.
    pub level: Option<String>,
    /// `text` (human) or `json` (one object per line). Default: text.
    pub format: Option<String>,
}

/// One `listeners[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    /// `host:port` to bind, e.g. `127.0.0.1:8080`.
    pub address: String,
    /// Terminate TLS on this listener (rustls).
    pub tls: Option<FileTls>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load balancer,
    /// naming the client; anything else is closed. Default: false.
    pub proxy_protocol: Option<bool>,
}

/// TLS certificate and key (PEM files).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Path of the PEM certificate chain.
    pub cert: String,
    /// Path of the PEM private key.
    pub key: String,
    /// Ask clients for a certificate (mutual TLS); its verified subject can be a route's
    /// credential (`routes[].auth.client_cert`). Default: none asked.
    pub client_auth: Option<FileClientAuth>,
}

/// `listeners[].tls.client_auth:` client certificates checked on this listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientAuth {
    /// PEM file of the CA certificates a client's certificate must chain to (re-read on reload).
    pub ca_file: String,
    /// `required` (no certificate, or one not from the CA: the TLS handshake fails) or `optional`
    /// (a client may connect without one). Default: required.
    pub mode: Option<String>,
}

/// TLS to a pool's backends or an object namespace's hosts (`tls: {}`: system roots, default SNI).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientTls {
    /// Server name sent (SNI) and checked. Default: the host as written if it is a name.
    pub sni: Option<String>,
    /// PEM file of the trusted CA certificates. Default: the system roots.
    pub ca_file: Option<String>,
    /// PEM certificate chain presented to the server (mutual TLS; with `client_key`).
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
    /// Check the server's certificate (chain and name). Default: true; false is warned about.
    pub verify: Option<bool>,
}

/// `admin:` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    /// `host:port` to bind the admin endpoints on.
    pub address: String,
    /// After SIGTERM, once the last connection ended and the last records were written and
    /// delivered, how long the admin listener keeps answering (so a scraper sees the final
    /// counts) before the process exits (duration, `0s` allowed). Default: 2s.
    pub final_scrape: Option<String>,
    /// Bearer token the admin API (and `/metrics`) requires. Default: none (the API answers
    /// loopback clients only).
    pub token: Option<String>,
    /// A file holding the token (first line), instead of `token`.
    pub token_file: Option<String>,
    /// `/metrics` answers without the token. Default: false.
    pub metrics_public: Option<bool>,
}

/// `drain:` how a drain (SIGTERM, `POST /api/drain`) closes open connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDrain {
    /// Closes are spread over this window (duration). Default: 5s (at most `server.grace_period`).
    pub window: Option<String>,
    /// `going_away` (1001) or `restart` (1012). Default: going_away.
    pub close_code: Option<String>,
    /// What a reload does to the open connections of a backend it removes: `close` (over the
    /// window, with the close code) or `keep` (left to end by themselves). Default: close.
    pub removed_backends: Option<String>,
}

/// `timeouts:` (durations such as `500ms`, `10s`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    /// Time a client has to send its whole request head. Default: 10s.
    pub request_head: Option<String>,
    /// Time to open the TCP (or TLS) connection to a backend. Default: 3s.
    pub backend_connect: Option<String>,
    /// Time the backend has to answer the upgrade request. Default: 10s.
    pub backend_handshake: Option<String>,
}

/// `usage:` records, spool and sinks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUsage {
    /// Path of the default file sink (used when `sinks` is not set). Default: `weir-usage.jsonl`.
    pub file: Option<String>,
    /// Directory of the spool (append-only segments and sink cursors). Default: `weir-spool`.
    pub spool_dir: Option<String>,
    /// Longest time between spool fsyncs (duration, at most 200ms). Default: 200ms.
    pub fsync_interval: Option<String>,
    /// Time between interim records of an open connection (duration). Default: 60s.
    pub interim_interval: Option<String>,
    /// Traffic keeps a connection active this long (duration). Default: 30s.
    pub idle_threshold: Option<String>,
    /// Tenant of routes that name none. Default: none (records carry null).
    pub default_tenant: Option<String>,
    /// When the spool cannot be written: `reject` new upgrades with 503 (default) or `fail_open`.
    pub on_spool_error: Option<String>,
    /// Rejection records one client address gets per `rejection_window` (count); beyond it,
    /// one summary record per window counts the rest (0: a record each, always). Default: 20.
    pub rejections_per_client: Option<u64>,
    /// The window of `rejections_per_client` (duration). Default: 10s.
    pub rejection_window: Option<String>,
    /// Where records are delivered (any number). Default: one file sink at `file`.
    pub sinks: Option<Vec<FileSink>>,
}

/// One `usage.sinks[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    /// `file`, `postgres` or `http`.
    pub kind: String,
    /// Sink name: its cursor and metric label. Default: the kind.
    pub name: Option<String>,
    /// `file`: path of the JSON-lines file.
    pub path: Option<String>,
    /// `file`: rotate when the file reaches this size, bytes. Default: 67108864.
    pub rotate_bytes: Option<u64>,
    /// `file`: rotate when the file is this old (duration). Default: 24h.
    pub rotate_interval: Option<String>,
    /// `postgres`: connection string (`host=… user=… dbname=…` or `postgresql://…`); `http`:
    /// the collector's `http://host:port/path`.
    pub url: Option<String>,
    /// `postgres`: table name (created if missing). Default: `weir_usage`.
    pub table: Option<String>,
    /// Records per delivery (count). Default: 500.
    pub batch: Option<u64>,
    /// `http`: time a POST may take (duration). Default: 10s.
    pub timeout: Option<String>,
    /// `http` (`https://` URLs) and `postgres`: PEM file of the trusted CA certificates.
    /// Default: the system roots (postgres: `sslrootcert` in `url`).
    pub ca_file: Option<String>,
    /// `http` (`https://` URLs): PEM client certificate chain (mutual TLS; with `client_key`).
    pub client_cert: Option<String>,
    /// `http` (`https://` URLs): PEM private key of `client_cert`.
    pub client_key: Option<String>,
    /// `http`: the `Authorization` header value sent with every POST, e.g.
    /// `"Bearer ${file:/etc/weir/sink.token}"`.
    pub auth_header: Option<String>,
}

/// One `pools[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    /// Pool name, referenced by routes and used as a metric label.
    pub name: String,
    /// Backends as `host:port`, or `builtin:echo` for weir's own echo server.
    #[serde(default)]
    pub backends: Vec<String>,
    /// `round_robin` (default), `random` or `ip_hash` (same client IP → same backend).
    pub selection: Option<String>,
    /// How backend health is probed. Default: tcp every 5s.
    pub health_check: Option<FileHealthCheck>,
    /// Close the open connections of a backend that fails its health check (1012, over the
    /// drain window). Default: true.
    pub close_unhealthy: Option<bool>,
    /// Connect to the backends with TLS (`wss://`). Default: plain TCP.
    pub tls: Option<FileClientTls>,
}

/// A pool's `health_check:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    /// `tcp` (connect), `http` (GET `path`, expect 2xx), `handshake` (WebSocket upgrade on
    /// `path`, expect 101) or `none`.
    pub kind: String,
    /// Time between probes (duration). Default: 5s.
    pub interval: Option<String>,
    /// Request path for `http` and `handshake` probes. Default: `/`.
    pub path: Option<String>,
}

/// One `routes[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Metric label and log name of the route. Default: the path prefix.
    pub name: Option<String>,
    /// Only match requests whose `Host` (without port) equals this, case-insensitively.
    pub host: Option<String>,
    /// Match request paths that start with this prefix (segment-wise: `/chat` matches
    /// `/chat` and `/chat/x`, not `/chatter`).
    pub path_prefix: String,
    /// `websocket` (upgrades only; other requests get 400) or `http` (plain HTTP is proxied too).
    pub kind: Option<String>,
    /// The pool that serves this route (set this or `object`).
    pub pool: Option<String>,
    /// Tenant this route's usage is billed to (in every record). Default: `usage.default_tenant`.
    pub tenant: Option<String>,
    /// The object namespace that serves this route (set this or `pool`); WebSocket only.
    pub object: Option<String>,
    /// Guards for this route's connections, key by key over the namespace's and the global ones.
    pub limits: Option<FileLimits>,
    /// Who may connect: API keys and/or JWTs. Default: anyone.
    pub auth: Option<FileAuth>,
    /// Browser origins allowed to connect (`https://app.example.com`, `https://*.example.com`).
    /// Default: any.
    pub origins: Option<Vec<String>>,
    /// With `origins`: admit requests without an `Origin` header (non-browser clients).
    /// Default: true.
    pub allow_no_origin: Option<bool>,
    /// Caps of this route.
    pub admission: Option<FileRouteAdmission>,
}

/// `routes[].auth:` how a route's clients prove who they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    /// API keys as SHA-256 hex digests with their tenant (`weir key new` prints both forms).
    #[serde(default)]
    pub api_keys: Vec<FileApiKey>,
    /// A file of more keys: one `SHA256HEX TENANT` per line (`#` comments).
    pub keys_file: Option<String>,
    /// JSON Web Tokens.
    pub jwt: Option<FileJwt>,
    /// The client certificate the listener verified (`listeners[].tls.client_auth`): its subject
    /// names the tenant. Tried before `api_keys` and `jwt`.
    pub client_cert: Option<FileClientCertAuth>,
    /// Forward authentication: an HTTP endpoint decides (as NGINX `auth_request`, Envoy
    /// `ext_authz`, Traefik ForwardAuth); not combined with the other methods.
    pub external: Option<FileExternalAuth>,
    /// Header carrying the credential; `authorization` takes `Bearer <credential>`. Default:
    /// authorization.
    pub header: Option<String>,
    /// Query parameter carrying the credential. Default: none (not accepted in the URL).
    pub query: Option<String>,
    /// Prefix of a `Sec-WebSocket-Protocol` entry carrying the credential (for browsers); the
    /// entry is removed before the backend sees the request; `""` turns it off. Default:
    /// `weir.key.`.
    pub subprotocol: Option<String>,
}

/// `auth.client_cert:` the verified client certificate as the credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientCertAuth {
    /// The subject field billed as the tenant: `cn`, `o`, `ou` or `san_dns` (the first DNS name
    /// of the subject alternative names). Default: cn.
    pub tenant_from: Option<String>,
    /// Tenants admitted (`*` wildcards), matched against that field. Default: any verified
    /// certificate.
    pub allow: Option<Vec<String>>,
    /// Object ids its connections may open (`*` wildcards). Default: any.
    pub objects: Option<Vec<String>>,
}

/// One `auth.api_keys[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApiKey {
    /// SHA-256 of the key, 64 hex digits.
    pub sha256: String,
    /// Tenant billed for its connections.
    pub tenant: String,
    /// Object ids it may open (`*` wildcards). Default: any.
    pub objects: Option<Vec<String>>,
}

/// `auth.jwt:` JSON Web Token verification.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwt {
    /// Accepted algorithms: HS256, RS256, ES256, EdDSA. Default: the ones the keys allow.
    pub algorithms: Option<Vec<String>>,
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// PEM public key file (RS256, ES256, EdDSA).
    pub public_key_file: Option<String>,
    /// JWKS file, re-read when it changes.
    pub jwks_file: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Clock leeway for `exp`/`nbf` (duration). Default: 30s.
    pub leeway: Option<String>,
    /// Claim holding the tenant. Default: sub.
    pub tenant_claim: Option<String>,
    /// Claim listing the object ids the token may open (`*` wildcards). Default: none (any).
    pub objects_claim: Option<String>,
}

/// `auth.external:` an HTTP endpoint that admits or refuses each upgrade.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileExternalAuth {
    /// The endpoint, `http://host:port/path` (plain HTTP; weir sends `GET path`).
    pub url: String,
    /// Request headers forwarded to it (lower-case names). Default: [authorization, cookie].
    pub headers: Option<Vec<String>>,
    /// Header of its 2xx answer naming the tenant. Default: none (the route's tenant).
    pub tenant_header: Option<String>,
    /// Headers of its 2xx answer added to the upgrade sent to the backend, replacing any the
    /// client sent with those names. Default: none.
    pub copy_headers: Option<Vec<String>>,
    /// Time for connecting and the whole answer (duration). Default: 2s.
    pub timeout: Option<String>,
    /// How long 2xx, 401 and 403 answers are reused for the same forwarded headers (duration;
    /// `0s`: never). Default: 0s.
    pub cache_ttl: Option<String>,
    /// When it cannot be reached or answers badly: `deny` (503) or `allow` (admit with the
    /// route's tenant). Default: deny.
    pub on_error: Option<String>,
}

/// `routes[].admission:` caps of one route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteAdmission {
    /// Most open WebSockets on this route (count; 0: no cap). Default: 0.
    pub max_connections: Option<u64>,
}

/// `admission:` process-wide caps and new-connection rates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmission {
    /// Most open WebSockets in all (count; 0: no cap). Default: 0.
    pub max_connections: Option<u64>,
    /// Most open WebSockets per client address (IPv4, IPv6 /64; 0: no cap). Default: 0.
    pub max_connections_per_ip: Option<u64>,
    /// Most open WebSockets per tenant (0: no cap). Default: 0.
    pub max_connections_per_tenant: Option<u64>,
    /// New connections per client address. Default: none.
    pub ip_rate: Option<FileConnRate>,
    /// New connections per tenant. Default: none.
    pub tenant_rate: Option<FileConnRate>,
    /// Client addresses tracked at once (count). Default: 100000.
    pub max_tracked_ips: Option<u64>,
}

/// A new-connection rate: a token bucket.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnRate {
    /// New connections per second.
    pub per_second: Option<u64>,
    /// Most at once. Default: per_second.
    pub burst: Option<u64>,
}

/// One `objects[]` entry: an object namespace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileObject {
    /// Namespace name, referenced by routes and used as a metric label.
    pub name: String,
    /// Where the object id comes from and what ids are allowed.
    pub id: FileObjectId,
    /// A built-in object kind served inside weir: `echo` or `room` (set this or `hosts`).
    pub builtin: Option<String>,
    /// Object hosts as `host:port` (set this or `builtin`); each id lives on one of them.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// How object hosts' health is probed (hosts only). Default: tcp every 5s.
    pub health_check: Option<FileHealthCheck>,
    /// Path sent to the object host: a template with `{namespace}` and `{id}`, e.g.
    /// `/objects/{namespace}/{id}` (the query string is kept). Default: the path as received.
    pub forward_path: Option<String>,
    /// Window after a message during which an object counts as active (duration). Default: 10s.
    pub idle_window: Option<String>,
    /// Settings of the built-in `room` object.
    pub room: Option<FileRoom>,
    /// Guards for this namespace's connections, key by key over the global ones.
    pub limits: Option<FileLimits>,
    /// Connect to the hosts with TLS (`wss://`; hosts only). Default: plain TCP.
    pub tls: Option<FileClientTls>,
}

/// An object namespace's `id:` source and rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileObjectId {
    /// Path template with one `{id}` segment, e.g. `/rooms/{id}` (set exactly one of path,
    /// query, header).
    pub path: Option<String>,
    /// Query parameter that carries the id, e.g. `room`.
    pub query: Option<String>,
    /// Request header that carries the id, e.g. `X-Room-Id`.
    pub header: Option<String>,
    /// Longest id, bytes (after percent-decoding). Default: 128.
    pub max_length: Option<u64>,
    /// Allowed characters as ASCII ranges and literals, e.g. `A-Za-z0-9_.-`. Default:
    /// `A-Za-z0-9_.-`.
    pub allowed: Option<String>,
}

/// `room:` settings of the built-in room object.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoom {
    /// Messages kept per room and replayed to a joining client (count). Default: 50.
    pub history: Option<u64>,
    /// Messages queued for one client before it is closed as too slow (count). Default: 256.
    pub send_queue: Option<u64>,
    /// Largest message a client may send, bytes. Default: 65536.
    pub max_message: Option<u64>,
    /// Longest a client may take to accept one write (the welcome plus history, or a batch of
    /// live messages) before it is closed with 1013, a duration. Default: 10s.
    pub send_timeout: Option<String>,
    /// Most payload bytes of history kept per room (memory and replay; the file stays under about
    /// twice this), bytes. Default: 1048576 (1 MiB).
    pub history_bytes: Option<u64>,
    /// Most room history files kept on disk in this namespace (count); beyond it the least
    /// recently used rooms without members lose their history. Default: 10000.
    pub max_rooms_on_disk: Option<u64>,
}

/// `billing:` settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBilling {
    /// Pricing units computed from every connection's counts, in file order.
    #[serde(default)]
    pub units: Vec<FileUnit>,
}

/// One `billing.units[]` entry: a named sum of terms.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUnit {
    /// Unit name: lower-case letters, digits and `_`, unique.
    pub name: String,
    /// The terms summed (at least one).
    #[serde(default)]
    pub terms: Vec<FileTerm>,
    /// `none` (keep fractions) or `up` (ceiling of the sum). Default: none.
    pub round: Option<String>,
}

/// One term of a unit: a quantity, optionally counted per message in chunks, divided by `per`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTerm {
    /// The quantity: requests, messages_in, messages_out, payload_bytes_in, payload_bytes_out,
    /// wire_bytes_in, wire_bytes_out, duration or active_time.
    pub of: String,
    /// Divisor: a number for counts and bytes (e.g. 20), a duration for duration and
    /// active_time (e.g. `60s`). Default: 1 (required for durations).
    pub per: Option<FilePer>,
    /// Chunk size in bytes (messages_in / messages_out only): each message counts
    /// `max(1, ceil(len / chunk))`.
    pub chunk: Option<u64>,
}

/// A `per:` value as written: a YAML number, or text (a duration such as `60s`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FilePer {
    /// A plain number, e.g. `20`.
    Number(f64),
    /// Text, e.g. `60s`.
    Text(String),
}

impl std::fmt::Display for FilePer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilePer::Number(n) => write!(f, "{n}"),
            FilePer::Text(t) => f.write_str(t),
        }
    }
}
