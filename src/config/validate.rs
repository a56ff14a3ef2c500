//! File types → runtime types, collecting every problem (never stopping at the first).
//!
//! Cold path, pure apart from resolving `host:port` names. Each check pushes a `ConfigError`
//! that names the key path, the value and the fix; the caller gets all of them at once.

use super::error::ConfigError;
use super::file::*;
use super::model::*;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Default worker threads for the gateway listeners.
pub const DEFAULT_THREADS: usize = 2;
/// Default drain time after SIGTERM.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Default time a client has to send its request head.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Default backend connect timeout.
pub const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default backend handshake timeout.
pub const DEFAULT_BACKEND_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default health-probe interval.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Default usage file.
pub const DEFAULT_USAGE_FILE: &str = "weir-usage.jsonl";

/// Validate a parsed file; `Err` holds every problem found.
pub fn validate(f: &FileConfig) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator { errors: Vec::new() };
    let config = v.config(f);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(v.errors)
    }
}

struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn err(&mut self, key: impl Into<String>, value: impl std::fmt::Display, fix: impl Into<String>) {
        self.errors.push(ConfigError::new(key, value, fix));
    }

    fn config(&mut self, f: &FileConfig) -> Config {
        let threads = match f.server.threads {
            None => DEFAULT_THREADS,
            Some(n) if (1..=256).contains(&n) => n as usize,
            Some(n) => {
                self.err("server.threads", n, "must be between 1 and 256; the default is 2");
                DEFAULT_THREADS
            }
        };
        let grace_period =
            self.duration("server.grace_period", f.server.grace_period.as_deref(), DEFAULT_GRACE_PERIOD);
        let log = self.log(&f.log);

        if f.listeners.is_empty() {
            self.err("listeners", "", "at least one listener is required, e.g. `listeners: [{address: \"127.0.0.1:8080\"}]`");
        }
        let listeners: Vec<(usize, Listener)> = f
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i, self.listener(i, l)?)))
            .collect();
        let admin = f.admin.as_ref().and_then(|a| self.addr("admin.address", &a.address));
        self.distinct_addresses(&listeners, admin);
        let listeners = listeners.into_iter().map(|(_, l)| l).collect();

        let t = &f.timeouts;
        let timeouts = Timeouts {
            request_head: self.duration("timeouts.request_head", t.request_head.as_deref(), DEFAULT_REQUEST_HEAD_TIMEOUT),
            backend_connect: self.duration("timeouts.backend_connect", t.backend_connect.as_deref(), DEFAULT_BACKEND_CONNECT_TIMEOUT),
            backend_handshake: self.duration("timeouts.backend_handshake", t.backend_handshake.as_deref(), DEFAULT_BACKEND_HANDSHAKE_TIMEOUT),
        };
        let usage_file = match f.usage.file.as_deref() {
            None => PathBuf::from(DEFAULT_USAGE_FILE),
            Some("") => {
                self.err("usage.file", "", "must not be empty; name a file such as weir-usage.jsonl");
                PathBuf::from(DEFAULT_USAGE_FILE)
            }
            Some(p) => PathBuf::from(p),
        };

        let pools: Vec<Pool> = f.pools.iter().enumerate().map(|(i, p)| self.pool(i, p)).collect();
        let mut seen = HashSet::new();
        for (i, p) in pools.iter().enumerate() {
            if !p.name.is_empty() && !seen.insert(p.name.clone()) {
                self.err(format!("pools[{i}].name"), &p.name, "is used by an earlier pool; give every pool a unique name");
            }
        }
        if f.routes.is_empty() {
            self.err("routes", "", "at least one route is required, e.g. `routes: [{path_prefix: /, pool: NAME}]`");
        }
        let routes: Vec<Route> =
            f.routes.iter().enumerate().filter_map(|(i, r)| self.route(i, r, &f.pools)).collect();
        let mut seen = HashSet::new();
        for (i, r) in routes.iter().enumerate() {
            if !seen.insert((r.host.clone(), r.path_prefix.clone())) {
                self.err(format!("routes[{i}].path_prefix"), &r.path_prefix, "an earlier route has the same host and path prefix; remove one of them");
            }
        }
        Config {
            threads,
            grace_period,
            log,
            listeners,
            admin,
            timeouts,
            usage_file,
            demo_page: f.demo_page,
            pools,
            routes,
        }
    }

    fn log(&mut self, l: &FileLog) -> LogConfig {
        let level = l.level.clone().unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&level.as_str()) {
            self.err("log.level", &level, "must be one of error, warn, info, debug, trace, off (RUST_LOG can set finer filters)");
        }
        let format = match l.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.err("log.format", other, "must be `text` or `json`");
                LogFormat::Text
            }
        };
        LogConfig { level, format }
    }

    fn listener(&mut self, i: usize, l: &FileListener) -> Option<Listener> {
        let address = self.addr(&format!("listeners[{i}].address"), &l.address);
        let tls = l.tls.as_ref().map(|t| TlsFiles {
            cert: self.existing_file(&format!("listeners[{i}].tls.cert"), &t.cert),
            key: self.existing_file(&format!("listeners[{i}].tls.key"), &t.key),
        });
        Some(Listener { address: address?, tls })
    }

    fn existing_file(&mut self, key: &str, path: &str) -> PathBuf {
        if !std::path::Path::new(path).is_file() {
            self.err(key, path, "file not found; give the path of a PEM file readable by weir");
        }
        PathBuf::from(path)
    }

    /// `listeners` carries each listener's index in the file, for the error's key path.
    fn distinct_addresses(&mut self, listeners: &[(usize, Listener)], admin: Option<SocketAddr>) {
        let mut seen = HashSet::new();
        for (i, l) in listeners {
            if !seen.insert(l.address) {
                self.err(format!("listeners[{i}].address"), l.address, "is already used by an earlier listener; use another port");
            }
        }
        if let Some(a) = admin {
            if seen.contains(&a) {
                self.err("admin.address", a, "is also a public listener; give the admin listener its own port");
            }
        }
    }

    /// Resolve `host:port` (port 0 allowed for tests only on listeners; any port on backends).
    fn addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(a);
        }
        let has_port = s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !has_port {
            self.err(key, s, format!("is not host:port; write it as \"{}:8080\"", s.trim_end_matches(':')));
            return None;
        }
        match s.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                self.err(key, s, "the host name does not resolve; use an IP address or a resolvable name");
                None
            }
        }
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(s) = value else { return default };
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(key, s, format!("must be greater than zero; the default is {}", humantime::format_duration(default)));
                default
            }
            Err(_) => {
                self.err(key, s, format!("is not a duration; write a number with a unit, e.g. \"{}\"", humantime::format_duration(default)));
                default
            }
        }
    }

    fn pool(&mut self, i: usize, p: &FilePool) -> Pool {
        if p.name.is_empty() || !p.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
            self.err(format!("pools[{i}].name"), &p.name, "must be non-empty and use only letters, digits, `_`, `-` and `.`");
        }
        if p.backends.is_empty() {
            self.err(format!("pools[{i}].backends"), "", "a pool needs at least one backend, e.g. [\"127.0.0.1:9001\"] or [\"builtin:echo\"]");
        }
        let mut backends = Vec::new();
        for (j, b) in p.backends.iter().enumerate() {
            let key = format!("pools[{i}].backends[{j}]");
            let backend = match b.strip_prefix("builtin:") {
                Some("echo") => Some(Backend::Builtin(BuiltinKind::Echo)),
                Some(other) => {
                    self.err(&key, b, format!("`{other}` is not a built-in server; the built-in backend is `builtin:echo`"));
                    None
                }
                None => self.addr(&key, b).map(Backend::Addr),
            };
            if let Some(backend) = backend {
                if backends.contains(&backend) {
                    self.err(&key, b, "is listed twice in this pool; list each backend once");
                } else {
                    backends.push(backend);
                }
            }
        }
        let selection = match p.selection.as_deref() {
            None | Some("round_robin") => Selection::RoundRobin,
            Some("random") => Selection::Random,
            Some("ip_hash") => Selection::IpHash,
            Some(other) => {
                self.err(format!("pools[{i}].selection"), other, "must be round_robin, random or ip_hash");
                Selection::RoundRobin
            }
        };
        let health = match &p.health_check {
            None => HealthCheck::Tcp { interval: DEFAULT_HEALTH_INTERVAL },
            Some(h) => self.health(i, h),
        };
        Pool { name: p.name.clone(), backends, selection, health }
    }

    fn health(&mut self, i: usize, h: &FileHealthCheck) -> HealthCheck {
        let interval = self.duration(&format!("pools[{i}].health_check.interval"), h.interval.as_deref(), DEFAULT_HEALTH_INTERVAL);
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            self.err(format!("pools[{i}].health_check.path"), &path, "must start with `/`, e.g. \"/healthz\"");
        }
        let unused = |v: &mut Self, what: &str| {
            v.err(format!("pools[{i}].health_check.{what}"), "", format!("does not apply to kind `{}`; remove it", h.kind));
        };
        match h.kind.as_str() {
            "none" => {
                if h.interval.is_some() {
                    unused(self, "interval");
                }
                if h.path.is_some() {
                    unused(self, "path");
                }
                HealthCheck::None
            }
            "tcp" => {
                if h.path.is_some() {
                    unused(self, "path");
                }
                HealthCheck::Tcp { interval }
            }
            "http" => HealthCheck::Http { interval, path },
            "handshake" => HealthCheck::Handshake { interval, path },
            other => {
                self.err(format!("pools[{i}].health_check.kind"), other, "must be tcp, http, handshake or none");
                HealthCheck::None
            }
        }
    }

    fn route(&mut self, i: usize, r: &FileRoute, pools: &[FilePool]) -> Option<Route> {
        if !r.path_prefix.starts_with('/') {
            self.err(format!("routes[{i}].path_prefix"), &r.path_prefix, "must start with `/`, e.g. \"/chat\"");
        }
        let kind = match r.kind.as_deref() {
            None | Some("websocket") => RouteKind::WebSocket,
            Some("http") => RouteKind::Http,
            Some(other) => {
                self.err(format!("routes[{i}].kind"), other, "must be `websocket` (upgrades only) or `http` (plain HTTP proxied too)");
                RouteKind::WebSocket
            }
        };
        let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host {
            if h.is_empty() || h.contains(['/', ' ']) {
                self.err(format!("routes[{i}].host"), h, "must be a bare host name such as example.com (no scheme, path or spaces)");
            }
        }
        let name = r.name.clone().unwrap_or_else(|| r.path_prefix.clone());
        let pool = pools.iter().position(|p| p.name == r.pool);
        if pool.is_none() {
            let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            self.err(format!("routes[{i}].pool"), &r.pool, format!("no pool has this name; use one of: {}", known.join(", ")));
        }
        Some(Route { name, host, path_prefix: r.path_prefix.trim_end_matches('/').to_string(), kind, pool: pool? })
    }
}
