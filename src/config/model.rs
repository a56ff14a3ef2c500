//! Validated runtime configuration: what the rest of weir reads. Never serde.
//!
//! Cold path: built once at startup by `validate.rs`, then shared read-only (`Arc<Config>`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker threads for the gateway listeners (count, ≥ 1; per kind: plain-TCP and TLS listeners
    /// each run on a runtime of this many; with 1, every service's runtime is single-threaded).
    pub threads: usize,
    /// Time open WebSockets get after SIGTERM before weir closes them with 1001.
    pub grace_period: Duration,
    /// File descriptors kept in reserve (count): new upgrades get 503 once fewer are free.
    pub fd_reserve: u64,
    /// Unix socket of the binary upgrade (`server.upgrade_sock`); `None`: `upgrade.sock` in
    /// `data_dir`.
    pub upgrade_sock: Option<PathBuf>,
    /// Logging settings.
    pub log: LogConfig,
    /// Public listeners (at least one).
    pub listeners: Vec<Listener>,
    /// Admin listener address, if any.
    pub admin: Option<SocketAddr>,
    /// After a graceful shutdown's last flush and delivery, how long the admin listener keeps
    /// answering before the process exits (`admin.final_scrape`).
    pub admin_final_scrape: Duration,
    /// Handshake-phase timeouts.
    pub timeouts: Timeouts,
    /// Usage records: spool, intervals and sinks.
    pub usage: Usage,
    /// Serve the demo page at `GET /`.
    pub demo_page: bool,
    /// Directory for state that survives a restart (room history).
    pub data_dir: PathBuf,
    /// Object namespaces, in file order.
    pub objects: Vec<Namespace>,
    /// Backend pools, in file order.
    pub pools: Vec<Pool>,
    /// Routes, in file order (matching picks the longest prefix).
    pub routes: Vec<Route>,
    /// Billing pricing units (`billing.units`), in file order; empty when none are configured.
    pub billing_units: Vec<UnitRule>,
    /// The built-in echo backend and echo object.
    pub echo: EchoConfig,
    /// Process-wide connection caps and rates.
    pub admission: Admission,
    /// Peers whose `X-Forwarded-For` is believed (`trusted_proxies`).
    pub trusted_proxies: Vec<Cidr>,
    /// Spend caps per tenant (`quotas`), in file order.
    pub quotas: Vec<Quota>,
    /// The admin API's bearer token (`admin.token` or the first line of `admin.token_file`).
    pub admin_token: Option<String>,
    /// `/metrics` answers without the token (`admin.metrics_public`).
    pub admin_metrics_public: bool,
    /// Drains spread their closes over this window (`drain.window`).
    pub drain_window: Duration,
    /// Drains close clients with 1012 instead of 1001 (`drain.close_code: restart`).
    pub drain_restart: bool,
    /// A reload closes the open connections of the backends it removes, over the drain window.
    pub drain_removed_backends: bool,
    /// Where the per-connection access log goes (`access_log`); `None`: no access log.
    pub access_log: Option<AccessLogTarget>,
    /// Object ownership shared with other instances through etcd (`cluster`); `None`: this
    /// process owns its objects alone.
    pub cluster: Option<Cluster>,
}

/// `cluster:` validated.
#[derive(Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Key prefix in etcd.
    pub name: String,
    /// This instance's name, unique in the cluster.
    pub instance: String,
    /// etcd endpoints, `host:port`.
    pub etcd: Vec<String>,
    /// TTL of the instance's etcd lease (whole seconds, 2..=60).
    pub lease_ttl: Duration,
    /// The peer listener's address (published in etcd; other instances connect to it).
    pub peer_address: SocketAddr,
    /// The secret shared by every instance (bytes of the secret file's first line).
    pub secret: Vec<u8>,
    /// The shared room history (`cluster.history`), if set.
    pub history: Option<ClusterHistory>,
}

/// `cluster.history`: built-in rooms keep their history in PostgreSQL.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterHistory {
    /// PostgreSQL connection string (may hold a password: never shown).
    pub postgres: String,
    /// CA file to trust for TLS, resolved against the config's directory.
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ClusterHistory {
    /// The connection string is never shown (it may hold a password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHistory").field("ca_file", &self.ca_file).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Cluster {
    /// The secret is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("instance", &self.instance)
            .field("etcd", &self.etcd)
            .field("lease_ttl", &self.lease_ttl)
            .field("peer_address", &self.peer_address)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard error, beside weir's own log lines.
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

/// A tenant's budget of a quantity per calendar period (`quotas[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Label: `<of>_per_<per>` (e.g. `messages_per_day`), unique per tenant.
    pub name: String,
    /// The tenant; `None` for every tenant (`"*"`), each with its own budget.
    pub tenant: Option<String>,
    /// What is counted.
    pub of: QuotaOf,
    /// The budget per period, in the quantity's unit.
    pub limit: u64,
    /// The calendar period (UTC).
    pub per: QuotaPeriod,
}

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOf {
    /// Data messages, both directions.
    Messages,
    /// Wire bytes, both directions.
    Bytes,
    /// Seconds of open connections.
    ConnectionSeconds,
    /// A pricing unit (`of: unit:<name>`): the index of its rule in `Config::billing_units`.
    Unit(usize),
}

/// A quota's calendar period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    /// Each hour.
    Hour,
    /// Each day.
    Day,
    /// Each calendar month.
    Month,
}

/// Settings of the built-in echo (the `builtin:echo` backend and the `echo` object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoConfig {
    /// Largest message (and frame) a client may send, bytes; a larger one is closed with 1009.
    pub max_message: usize,
}

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Level filter directive (`info`, `debug`, …); `RUST_LOG` overrides it.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// A network in CIDR form (`10.0.0.0/8`, `2001:db8::/32`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `10.0.0.0/8`, `::1`, …; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr: ip, prefix })
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, nw), (got, gw)) = (bits(self.addr), bits(ip));
        if nw != gw {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        net & mask == got & mask
    }
}

#[cfg(test)]
mod cidr_tests {
    use super::Cidr;

    #[test]
    fn cidrs() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains("10.2.3.4".parse().unwrap()));
        assert!(ten.contains("::ffff:10.2.3.4".parse().unwrap()));
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()) && !one.contains("::2".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
    }
}

/// A public listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Address to bind.
    pub address: SocketAddr,
    /// TLS certificate and key paths, when TLS is terminated here.
    pub tls: Option<TlsFiles>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) naming the client.
    pub proxy_protocol: bool,
}

/// PEM certificate chain and key paths.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain path.
    pub cert: PathBuf,
    /// Private key path.
    pub key: PathBuf,
    /// Client certificates asked for (mutual TLS), if any.
    pub client_auth: Option<ClientAuth>,
}

/// `listeners[].tls.client_auth`: the client CA and whether a certificate is required.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM file of the trusted client CAs (re-read on reload).
    pub ca_file: PathBuf,
    /// Required or optional.
    pub mode: crate::client_cert::Mode,
}

/// Handshake-phase timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Time a client has to send its whole request head.
    pub request_head: Duration,
    /// Time to connect to a backend.
    pub backend_connect: Duration,
    /// Time a backend has to answer the upgrade.
    pub backend_handshake: Duration,
}

/// Usage records: where they are spooled and delivered, and how often.
#[derive(Debug, Clone)]
pub struct Usage {
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Longest time between spool fsyncs.
    pub fsync_interval: Duration,
    /// Time between interim records of an open connection.
    pub interim_interval: Duration,
    /// Traffic keeps a connection active this long.
    pub idle_threshold: Duration,
    /// Tenant of routes that name none.
    pub default_tenant: Option<String>,
    /// Keep accepting upgrades when the spool cannot be written.
    pub fail_open: bool,
    /// Rejection records one client address gets per `rejection_window` (count; 0: no limit).
    pub rejections_per_client: u64,
    /// The window of `rejections_per_client`, after which a summary record counts the rest.
    pub rejection_window: Duration,
    /// Delivery targets.
    pub sinks: Vec<Sink>,
}

/// A delivery target of usage records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// Name: cursor file and metric label.
    pub name: String,
    /// Records per delivery.
    pub batch: usize,
    /// What kind of sink.
    pub kind: SinkKind,
}

/// Sink kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// JSON lines in a file, rotated by size and age.
    File {
        /// File path.
        path: PathBuf,
        /// Rotate at this size, bytes.
        rotate_bytes: u64,
        /// Rotate at this age.
        rotate_interval: Duration,
    },
    /// A PostgreSQL table.
    Postgres {
        /// Connection string (its `sslmode` / `sslrootcert` choose TLS).
        url: String,
        /// Table name.
        table: String,
        /// PEM file of the CA certificates trusted for TLS (over the url's `sslrootcert`).
        ca_file: Option<PathBuf>,
    },
    /// An HTTP collector taking CloudEvents batches.
    Http {
        /// Collector address.
        addr: String,
        /// Host header value.
        host: String,
        /// Request path.
        path: String,
        /// Time a POST may take.
        timeout: Duration,
        /// TLS settings, for an `https://` URL.
        tls: Option<crate::tls_client::ClientTls>,
        /// `Authorization` header value sent with every POST (a secret: never logged).
        auth_header: Option<String>,
    },
}

/// A backend pool.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Pool name (metric label).
    pub name: String,
    /// Its backends.
    pub backends: Vec<Backend>,
    /// How a backend is picked.
    pub selection: Selection,
    /// Health probing.
    pub health: HealthCheck,
    /// A backend that fails its health check gets its open connections closed with 1012.
    pub close_unhealthy: bool,
    /// TLS to the backends (and their probes); `None`: plain TCP.
    pub tls: Option<crate::tls_client::ClientTls>,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A network address (`host:port`, resolved at startup).
    Addr(SocketAddr),
    /// A server built into weir.
    Builtin(BuiltinKind),
}

/// The servers weir can run itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinKind {
    /// Echoes every message back.
    Echo,
}

/// Backend selection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Rotate through healthy backends.
    RoundRobin,
    /// Pick a healthy backend at random.
    Random,
    /// Consistent hash of the client IP (same client → same backend while healthy).
    IpHash,
    /// The healthy backend with the fewest open connections (ties: the first listed), counted
    /// per backend from connect to end; `POST /api/pools/{pool}/rebalance` evens a pool out.
    LeastConnections,
}

/// Health probing of a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// No probing: every backend is always healthy.
    None,
    /// TCP connect succeeds, every `interval`.
    Tcp {
        /// Time between probes.
        interval: Duration,
    },
    /// `GET path` answers 2xx, every `interval`.
    Http {
        /// Time between probes.
        interval: Duration,
        /// Request path.
        path: String,
    },
    /// A WebSocket upgrade on `path` answers 101, every `interval`.
    Handshake {
        /// Time between probes.
        interval: Duration,
        /// Request path.
        path: String,
    },
}

/// What a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// WebSocket upgrades only; anything else gets 400 `Expected websocket`.
    WebSocket,
    /// Plain HTTP is proxied through Pingora as well as upgrades.
    Http,
}

impl RouteKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::WebSocket => "websocket",
            RouteKind::Http => "http",
        }
    }
}

/// A route from (host, path prefix) to a pool.
#[derive(Debug, Clone)]
pub struct Route {
    /// Route name (metric label).
    pub name: String,
    /// Lower-cased host to match, if restricted.
    pub host: Option<String>,
    /// Path prefix to match (segment-wise).
    pub path_prefix: String,
    /// What the route accepts.
    pub kind: RouteKind,
    /// What serves the route.
    pub target: Target,
    /// Tenant its usage is billed to.
    pub tenant: Option<String>,
    /// Guards on its open connections (global, then its namespace's, then its own `limits:`).
    pub limits: Limits,
    /// Who may connect (`auth:`); `None` admits anyone.
    pub auth: Option<Auth>,
    /// Which browser origins may connect (`origins:`); `None` admits any.
    pub origins: Option<Origins>,
    /// Connection caps and rates of this route (`admission:` over the global one).
    pub admission: RouteAdmission,
}

/// A route's authentication (`routes[].auth`): credentials are looked for in `sources`, then
/// tried against `methods` in order; the first that accepts one admits the request.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Where a credential may come from.
    pub sources: CredentialSources,
    /// How a credential is verified, in order.
    pub methods: Vec<AuthMethod>,
}

/// Where a credential may come from (all are tried: header, query, subprotocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSources {
    /// Header carrying the credential (`Authorization` takes `Bearer <credential>`; any other
    /// header the bare credential), lower-case.
    pub header: String,
    /// Query parameter carrying the credential, if allowed.
    pub query: Option<String>,
    /// Prefix of a `Sec-WebSocket-Protocol` entry carrying the credential (e.g. `weir.key.`);
    /// the entry is removed before the backend sees the request. `None`: not allowed.
    pub subprotocol: Option<String>,
}

/// One way to verify a credential.
#[derive(Debug, Clone)]
pub enum AuthMethod {
    /// API keys, stored as SHA-256 digests (from the config and a keys file).
    ApiKeys(Vec<ApiKey>),
    /// JSON Web Tokens.
    Jwt(JwtSettings),
    /// An HTTP endpoint that decides (forward authentication); the only method when set.
    External(ExternalAuth),
    /// The client certificate the listener verified (mutual TLS).
    ClientCert(ClientCertAuth),
}

/// `auth.client_cert`: which subject field is the tenant, and which tenants are admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertAuth {
    /// The subject field billed as the tenant.
    pub tenant_from: TenantFrom,
    /// Tenants admitted (`*` wildcards); empty: any.
    pub allow: Vec<String>,
    /// Object ids its connections may open (`*` wildcards); empty: any.
    pub objects: Vec<String>,
}

/// A subject field of a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantFrom {
    /// The common name (CN).
    Cn,
    /// The organization (O).
    O,
    /// The organizational unit (OU).
    Ou,
    /// The first DNS name of the subject alternative names.
    SanDns,
}

/// Forward authentication (`auth.external`): weir asks an HTTP endpoint about each upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalAuth {
    /// `host:port` to connect to (a host name is resolved on every connect).
    pub addr: String,
    /// `Host` header value (the URL's authority as written).
    pub host: String,
    /// Request target sent (path and query).
    pub path: String,
    /// The URL as written (for logs).
    pub url: String,
    /// Request headers forwarded to the endpoint, lower-case.
    pub headers: Vec<String>,
    /// Header of a 2xx answer naming the tenant (lower-case); `None`: the route's tenant.
    pub tenant_header: Option<String>,
    /// Headers of a 2xx answer added to the backend's upgrade request (lower-case).
    pub copy_headers: Vec<String>,
    /// Time for connecting and the whole answer.
    pub timeout: Duration,
    /// How long 2xx, 401 and 403 answers are reused; zero: no cache.
    pub cache_ttl: Duration,
    /// Admit (with the route's tenant) when the endpoint cannot be asked.
    pub allow_on_error: bool,
}

/// One API key (`auth.api_keys[]` or a line of `auth.keys_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// SHA-256 of the key, 32 bytes.
    pub sha256: [u8; 32],
    /// Tenant its connections are billed to.
    pub tenant: String,
    /// Object ids it may open on object routes (`*` wildcards); empty: any.
    pub objects: Vec<String>,
}

/// How JSON Web Tokens are verified (`auth.jwt`).
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSettings {
    /// Accepted algorithms (`HS256`, `RS256`, `ES256`, `EdDSA`).
    pub algorithms: Vec<String>,
    /// Shared secret for HS256.
    pub secret: Option<String>,
    /// PEM public key file for RS256/ES256/EdDSA.
    pub public_key_file: Option<PathBuf>,
    /// JWKS file (re-read when it changes).
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud` (one of), if any.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`.
    pub leeway: Duration,
    /// Claim whose string value is the tenant.
    pub tenant_claim: String,
    /// Claim listing the object ids (with `*` wildcards) the token may open; `None`: any.
    pub objects_claim: Option<String>,
}

/// A route's allowed browser origins (`routes[].origins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origins {
    /// Exact origins (`https://app.example.com`), lower-case.
    pub exact: Vec<String>,
    /// Wildcard origins as (scheme, domain suffix): `https://*.example.com` is
    /// (`https`, `.example.com`).
    pub wildcard: Vec<(String, String)>,
    /// Admit requests without an `Origin` header (non-browser clients).
    pub allow_missing: bool,
}

/// Caps and rates that apply to one route's upgrades (`admission:` resolved for the route).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RouteAdmission {
    /// Most open WebSockets on this route (count; 0: no cap).
    pub max_connections: u64,
}

/// Process-wide admission settings (`admission:`).
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// Most open WebSockets in all (count; 0: no cap).
    pub max_connections: u64,
    /// Most open WebSockets per client address (IPv4 address, IPv6 /64; 0: no cap).
    pub max_connections_per_ip: u64,
    /// Most open WebSockets per tenant (0: no cap).
    pub max_connections_per_tenant: u64,
    /// New connections per second per client address, with a burst (`None`: no limit).
    pub ip_rate: Option<NewConnRate>,
    /// New connections per second per tenant, with a burst (`None`: no limit).
    pub tenant_rate: Option<NewConnRate>,
    /// Client addresses tracked at once (count); beyond it, untracked addresses share one entry.
    pub max_tracked_ips: usize,
}

/// A token bucket of new connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewConnRate {
    /// Connections per second.
    pub per_second: f64,
    /// Most at once.
    pub burst: f64,
}

/// Guards on open connections, resolved for one route (`limits:`). `None`/0 means off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// No data frame for this long closes with 1001 "idle timeout".
    pub idle_timeout: Option<Duration>,
    /// Pings and pongs from the peers count as activity.
    pub control_frames_are_activity: bool,
    /// Most a connection lives.
    pub max_lifetime: Option<Duration>,
    /// Random shortening of each connection's lifetime, at most this much.
    pub lifetime_jitter: Duration,
    /// Close with 1012 (not 1001) at the end of the lifetime.
    pub lifetime_restart: bool,
    /// Time the other side has to answer a close frame.
    pub close_timeout: Option<Duration>,
    /// weir's pings to silent peers.
    pub keepalive: Option<KeepaliveLimits>,
    /// Largest data frame payload, bytes (0: no limit).
    pub max_frame: u64,
    /// Largest data message, bytes (0: no limit).
    pub max_message: u64,
    /// Data messages per second.
    pub message_rate: Option<RateLimit>,
    /// Wire bytes per second.
    pub bandwidth: Option<RateLimit>,
}

/// weir's keepalive pings (`limits.keepalive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveLimits {
    /// A peer silent this long gets a ping.
    pub interval: Duration,
    /// A pinged peer silent this long is dead.
    pub timeout: Duration,
    /// Ping the backend too.
    pub backend: bool,
}

/// A token-bucket rate limit (`limits.message_rate`, `limits.bandwidth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate, messages or bytes per second (> 0).
    pub per_second: u64,
    /// Most sent at once above the rate, messages or bytes.
    pub burst: u64,
    /// Throttle (stop reading) instead of closing with 1008.
    pub throttle: bool,
    /// Limited directions: `[client → backend, backend → client]`.
    pub from: [bool; 2],
}

impl Route {
    /// Whether a request for `path` matches this route's path prefix (see `prefix_matches`).
    pub fn matches_path(&self, path: &str) -> bool {
        prefix_matches(&self.path_prefix, path)
    }
}

/// Segment-wise prefix match: `/chat` matches `/chat`, `/chat/`, `/chat/x`, not `/chatter`.
/// The empty prefix (route `/`) matches everything.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.is_empty() || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// What serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A backend pool: index into `Config::pools`.
    Pool(usize),
    /// An object namespace: index into `Config::objects`.
    Object(usize),
}

/// An object namespace: every client of one id reaches one instance.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Namespace name (metric label, `X-Weir-Object-Namespace`).
    pub name: String,
    /// Where the id comes from.
    pub id_source: IdSource,
    /// What ids are allowed.
    pub id_rules: IdRules,
    /// What serves the objects.
    pub kind: ObjectKind,
    /// Path template sent to hosts (`{namespace}`, `{id}`); `None` keeps the request path.
    pub forward_path: Option<String>,
    /// Window after a message during which an object counts as active.
    pub idle_window: Duration,
}

/// Where an object id is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// A path segment: the path is `prefix` + id + `suffix` (the template `prefix{id}suffix`).
    Path {
        /// Template text before `{id}` (ends with `/`).
        prefix: String,
        /// Template text after `{id}` (empty or starts with `/`).
        suffix: String,
    },
    /// A query parameter with this name.
    Query(String),
    /// A request header with this (lower-case) name.
    Header(String),
}

/// Rules an object id must pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRules {
    /// Longest id, bytes.
    pub max_length: usize,
    /// Allowed ASCII bytes (`allowed[b]` for byte `b < 128`).
    pub allowed: [bool; 128],
    /// The `allowed` setting as written, for error messages.
    pub allowed_text: String,
}

/// What serves a namespace's objects.
#[derive(Debug, Clone)]
pub enum ObjectKind {
    /// A built-in object terminated inside weir.
    Builtin(BuiltinObject),
    /// Object hosts; each id is owned by one of them (rendezvous hashing).
    Hosts {
        /// The hosts as written (the rendezvous key) with their resolved addresses.
        hosts: Vec<(String, SocketAddr)>,
        /// Health probing of the hosts.
        health: HealthCheck,
        /// TLS to the hosts (and their probes); `None`: plain TCP.
        tls: Option<crate::tls_client::ClientTls>,
    },
}

/// The built-in object kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltinObject {
    /// Echoes every message.
    Echo,
    /// A broadcast room with history.
    Room(RoomConfig),
}

/// Settings of the built-in room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomConfig {
    /// Messages kept per room and replayed to joining clients (count).
    pub history: usize,
    /// Messages queued for one client before it is closed as too slow (count).
    pub send_queue: usize,
    /// Largest message a client may send, bytes.
    pub max_message: usize,
    /// Longest a client may take to accept one write (welcome plus history, or a batch of live
    /// messages) before it is closed with 1013 as too slow.
    pub send_timeout: Duration,
    /// Most payload bytes of history kept per room, bytes (the file stays under about twice this).
    pub history_bytes: u64,
    /// Most room history files kept on disk in the namespace (count); the least recently used
    /// rooms without members are removed beyond it.
    pub max_rooms_on_disk: usize,
}

/// A pricing unit (`billing.units[]`): a named sum of terms over one connection's counts, computed
/// by `billing::units`.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitRule {
    /// Unit name (`[a-z0-9_]+`, unique among units).
    pub name: String,
    /// The terms summed, in file order (at least one).
    pub terms: Vec<UnitTerm>,
    /// How the sum is rounded.
    pub round: Rounding,
}

/// One term of a unit: `quantity / per`, the quantity optionally counted per message in chunks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitTerm {
    /// What is counted.
    pub of: Quantity,
    /// Divisor, in the quantity's own unit (count, bytes, or milliseconds for durations); > 0.
    pub per: f64,
    /// Per-message chunking (messages only): each message counts `max(1, ceil(len / bytes))`.
    pub chunk: Option<ChunkSlot>,
}

/// A chunk size and the scanner slot that counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSlot {
    /// Chunk size, in bytes (≥ 1).
    pub bytes: u32,
    /// Index (0–3) into `ScanPolicy::chunks` and `DirectionCounts::chunked`.
    pub slot: usize,
}

/// A quantity a pricing unit can count. `in` is client → backend, `out` backend → client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantity {
    /// HTTP requests on the connection (1: the upgrade), in requests.
    Requests,
    /// Complete data messages client → backend, in messages.
    MessagesIn,
    /// Complete data messages backend → client, in messages.
    MessagesOut,
    /// Frame payload bytes client → backend, in bytes.
    PayloadBytesIn,
    /// Frame payload bytes backend → client, in bytes.
    PayloadBytesOut,
    /// Bytes on the wire (headers included) client → backend, in bytes.
    WireBytesIn,
    /// Bytes on the wire (headers included) backend → client, in bytes.
    WireBytesOut,
    /// Connection lifetime, in milliseconds.
    Duration,
    /// Active time (message-driven, see objects' `idle_window`), in milliseconds.
    ActiveTime,
}

impl Quantity {
    /// Every quantity, in the order the README lists them.
    pub const ALL: [Quantity; 9] = [
        Quantity::Requests,
        Quantity::MessagesIn,
        Quantity::MessagesOut,
        Quantity::PayloadBytesIn,
        Quantity::PayloadBytesOut,
        Quantity::WireBytesIn,
        Quantity::WireBytesOut,
        Quantity::Duration,
        Quantity::ActiveTime,
    ];

    /// The name used in `billing.units[].terms[].of`.
    pub fn as_str(self) -> &'static str {
        match self {
            Quantity::Requests => "requests",
            Quantity::MessagesIn => "messages_in",
            Quantity::MessagesOut => "messages_out",
            Quantity::PayloadBytesIn => "payload_bytes_in",
            Quantity::PayloadBytesOut => "payload_bytes_out",
            Quantity::WireBytesIn => "wire_bytes_in",
            Quantity::WireBytesOut => "wire_bytes_out",
            Quantity::Duration => "duration",
            Quantity::ActiveTime => "active_time",
        }
    }

    /// The quantity called `name` in the config, if any.
    pub fn from_name(name: &str) -> Option<Quantity> {
        Quantity::ALL.into_iter().find(|q| q.as_str() == name)
    }

    /// True for the time quantities (milliseconds; their `per` is a duration).
    pub fn is_time(self) -> bool {
        matches!(self, Quantity::Duration | Quantity::ActiveTime)
    }

    /// True for the message counts (the only quantities that take `chunk`).
    pub fn is_messages(self) -> bool {
        matches!(self, Quantity::MessagesIn | Quantity::MessagesOut)
    }
}

/// How a unit's sum is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Kept as is: fractions allowed.
    None,
    /// Ceiling of the sum (of this connection's terms).
    Up,
}
