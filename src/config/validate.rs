//! File types → runtime types, collecting every problem (never stopping at the first).
//!
//! Cold path, pure apart from resolving `host:port` names. Each check pushes a `ConfigError`
//! that names the key path, the value and the fix; the caller gets all of them at once.

use super::error::ConfigError;
use super::file::*;
use super::model::*;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default rejection records per client address and window (`usage.rejections_per_client`).
pub const DEFAULT_REJECTIONS_PER_CLIENT: u64 = 20;
/// Default window of `usage.rejections_per_client`.
pub const DEFAULT_REJECTION_WINDOW: Duration = Duration::from_secs(10);
/// Default descriptors kept in reserve (`server.fd_reserve`): enough for the admin listener,
/// backend connects in flight, the spool and the sinks.
pub const DEFAULT_FD_RESERVE: u64 = 256;
/// Default worker threads for the gateway listeners.
pub const DEFAULT_THREADS: usize = 2;
/// Default time the admin listener answers after the last delivery at shutdown
/// (`admin.final_scrape`).
pub const DEFAULT_FINAL_SCRAPE: Duration = Duration::from_secs(2);
/// Longest `admin.final_scrape`.
pub const MAX_FINAL_SCRAPE: Duration = Duration::from_secs(300);
/// Default drain time after SIGTERM.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Default `drain.window`.
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(5);
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
/// Default spool directory.
pub const DEFAULT_SPOOL_DIR: &str = "weir-spool";
/// Default and longest spool fsync interval.
pub const MAX_FSYNC_INTERVAL: Duration = Duration::from_millis(200);
/// Default interim-record interval.
pub const DEFAULT_INTERIM_INTERVAL: Duration = Duration::from_secs(60);
/// Default idle threshold for active time.
pub const DEFAULT_IDLE_THRESHOLD: Duration = Duration::from_secs(30);
/// Default records per sink delivery.
pub const DEFAULT_SINK_BATCH: usize = 500;
/// Default file-sink rotation size, bytes.
pub const DEFAULT_ROTATE_BYTES: u64 = 64 << 20;
/// Default file-sink rotation age.
pub const DEFAULT_ROTATE_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Default HTTP-sink POST timeout.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default state directory.
pub const DEFAULT_DATA_DIR: &str = "weir-data";
/// Default longest object id, bytes.
pub const DEFAULT_ID_MAX_LENGTH: usize = 128;
/// Default allowed object-id characters.
pub const DEFAULT_ID_ALLOWED: &str = "A-Za-z0-9_.-";
/// Default active-time window after an object's message.
pub const DEFAULT_IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Default room history, messages.
pub const DEFAULT_ROOM_HISTORY: usize = 50;
/// Default room send queue per client, messages.
pub const DEFAULT_ROOM_SEND_QUEUE: usize = 256;
/// Default largest room message, bytes.
pub const DEFAULT_ROOM_MAX_MESSAGE: usize = 64 * 1024;
/// Default time a room client has to accept one write before it is closed as too slow.
pub const DEFAULT_ROOM_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Default payload bytes of history kept per room, bytes.
pub const DEFAULT_ROOM_HISTORY_BYTES: usize = 1 << 20;
/// Default most room history files on disk per namespace, count.
pub const DEFAULT_ROOM_MAX_ROOMS_ON_DISK: usize = 10_000;
/// Distinct `chunk` sizes the billing units may use in all (the scanner's `Chunks` slots).
pub const MAX_CHUNK_SIZES: usize = 4;
/// Default largest message of the built-in echo (`echo.max_message`), bytes.
pub const DEFAULT_ECHO_MAX_MESSAGE: usize = 1 << 20;
/// Largest `echo.max_message` allowed, bytes.
pub const MAX_ECHO_MAX_MESSAGE: u64 = 64 << 20;

/// Validate a parsed file; `Err` holds every problem found. Relative paths in it are joined to
/// `dir` (the config file's directory; empty: the working directory) before they are checked.
pub fn validate(f: &FileConfig, dir: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator { errors: Vec::new(), dir: dir.to_path_buf() };
    let config = v.config(f);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(v.errors)
    }
}

pub(super) struct Validator {
    errors: Vec<ConfigError>,
    /// Directory relative paths are resolved against (the config file's).
    dir: PathBuf,
}

impl Validator {
    /// `p` as weir opens it: relative paths are joined to the config file's directory.
    pub(super) fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// How many problems were found so far.
    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(super) fn err(&mut self, key: impl Into<String>, value: impl std::fmt::Display, fix: impl Into<String>) {
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
        let grace_period = self.duration("server.grace_period", f.server.grace_period.as_deref(), DEFAULT_GRACE_PERIOD);
        let fd_reserve = match f.server.fd_reserve {
            None => DEFAULT_FD_RESERVE,
            Some(n) if n <= 1_000_000 => n,
            Some(n) => {
                self.err("server.fd_reserve", n, "must be between 0 and 1000000 descriptors; the default is 256");
                DEFAULT_FD_RESERVE
            }
        };
        let log = self.log(&f.log);
        let upgrade_sock = match f.server.upgrade_sock.as_deref() {
            Some("") => {
                self.err("server.upgrade_sock", "", "must not be empty; name a socket path or leave it out");
                None
            }
            Some(p) if p.len() > 100 => {
                self.err(
                    "server.upgrade_sock",
                    p,
                    "is longer than a Unix socket path may be (100 bytes); pick a shorter path",
                );
                None
            }
            other => other.map(|p| self.path(p)),
        };

        if f.listeners.is_empty() {
            self.err(
                "listeners",
                "",
                "at least one listener is required, e.g. `listeners: [{address: \"127.0.0.1:8080\"}]`",
            );
        }
        let listeners: Vec<(usize, Listener)> =
            f.listeners.iter().enumerate().filter_map(|(i, l)| Some((i, self.listener(i, l)?))).collect();
        let admin = f.admin.as_ref().and_then(|a| self.addr("admin.address", &a.address));
        let admin_final_scrape = self.final_scrape(f.admin.as_ref().and_then(|a| a.final_scrape.as_deref()));
        self.distinct_addresses(&listeners, admin);
        let listeners: Vec<Listener> = listeners.into_iter().map(|(_, l)| l).collect();

        let t = &f.timeouts;
        let timeouts = Timeouts {
            request_head: self.duration(
                "timeouts.request_head",
                t.request_head.as_deref(),
                DEFAULT_REQUEST_HEAD_TIMEOUT,
            ),
            backend_connect: self.duration(
                "timeouts.backend_connect",
                t.backend_connect.as_deref(),
                DEFAULT_BACKEND_CONNECT_TIMEOUT,
            ),
            backend_handshake: self.duration(
                "timeouts.backend_handshake",
                t.backend_handshake.as_deref(),
                DEFAULT_BACKEND_HANDSHAKE_TIMEOUT,
            ),
        };
        let usage = self.usage(&f.usage);
        let pools: Vec<Pool> = f.pools.iter().enumerate().map(|(i, p)| self.pool(i, p)).collect();
        let mut seen = HashSet::new();
        for (i, p) in pools.iter().enumerate() {
            if !p.name.is_empty() && !seen.insert(p.name.clone()) {
                self.err(
                    format!("pools[{i}].name"),
                    &p.name,
                    "is used by an earlier pool; give every pool a unique name",
                );
            }
        }
        let objects: Vec<Namespace> = f.objects.iter().enumerate().filter_map(|(i, o)| self.object(i, o)).collect();
        let mut seen = HashSet::new();
        for (i, o) in f.objects.iter().enumerate() {
            if !seen.insert(o.name.clone()) {
                self.err(
                    format!("objects[{i}].name"),
                    &o.name,
                    "is used by an earlier object namespace; give every namespace a unique name",
                );
            }
        }
        if f.routes.is_empty() {
            self.err("routes", "", "at least one route is required, e.g. `routes: [{path_prefix: /, pool: NAME}]`");
        }
        let global = self.limits("limits", Some(&f.limits));
        let namespace_limits: Vec<_> = f
            .objects
            .iter()
            .enumerate()
            .map(|(i, o)| self.limits(&format!("objects[{i}].limits"), o.limits.as_ref()).over(global))
            .collect();
        let routes: Vec<Route> = f
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let mut route = self.route(i, r, &f.pools, &f.objects, &objects)?;
                let base = match route.target {
                    Target::Object(k) => namespace_limits.get(k).copied().unwrap_or(global),
                    Target::Pool(_) => global,
                };
                route.limits = self.limits(&format!("routes[{i}].limits"), r.limits.as_ref()).over(base).resolve();
                (route.auth, route.origins, route.admission) = self.route_admission(i, r);
                Some(route)
            })
            .collect();
        let mut seen = HashSet::new();
        for (i, r) in routes.iter().enumerate() {
            if !seen.insert((r.host.clone(), r.path_prefix.clone())) {
                self.err(
                    format!("routes[{i}].path_prefix"),
                    &r.path_prefix,
                    "an earlier route has the same host and path prefix; remove one of them",
                );
            }
        }
        // A certificate credential needs a listener that asks for certificates (see also the
        // warning in `warnings` for listeners that do not).
        if !listeners.iter().any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some())) {
            for (i, r) in f.routes.iter().enumerate() {
                if r.auth.as_ref().is_some_and(|a| a.client_cert.is_some()) {
                    self.err(
                        format!("routes[{i}].auth.client_cert"),
                        "",
                        "no listener asks for client certificates, so this method could never admit; add \
                         `tls: {cert, key, client_auth: {ca_file: ...}}` to a listener or remove client_cert",
                    );
                }
            }
        }
        let billing_units = f.billing.as_ref().map(|b| self.billing(b)).unwrap_or_default();
        let echo = self.echo(&f.echo);
        let admission = self.admission(&f.admission);
        let trusted_proxies = self.trusted_proxies(&f.trusted_proxies);
        let quotas = self.quotas(&f.quotas, &billing_units);
        let admin_token = f.admin.as_ref().and_then(|a| self.admin_token(a));
        let drain_window =
            self.duration("drain.window", f.drain.window.as_deref(), DEFAULT_DRAIN_WINDOW.min(grace_period));
        if drain_window > grace_period {
            self.err(
                "drain.window",
                humantime::format_duration(drain_window),
                format!(
                    "must not be longer than server.grace_period ({}); closes after it would never happen",
                    humantime::format_duration(grace_period)
                ),
            );
        }
        let drain_restart = match f.drain.close_code.as_deref() {
            None | Some("going_away") => false,
            Some("restart") => true,
            Some(other) => {
                self.err("drain.close_code", other, "must be `going_away` (1001) or `restart` (1012)");
                false
            }
        };
        let cluster = f.cluster.as_ref().and_then(|c| self.cluster(c));
        if let (Some(c), Some(a)) = (&cluster, admin) {
            if c.peer_address == a {
                self.err("cluster.peer.address", a, "is also the admin listener; give the peer listener its own port");
            }
        }
        if let Some(c) = &cluster {
            if listeners.iter().any(|l: &Listener| l.address == c.peer_address) {
                self.err(
                    "cluster.peer.address",
                    c.peer_address,
                    "is also a public listener; give the peer listener its own port",
                );
            }
        }
        let drain_removed_backends = match f.drain.removed_backends.as_deref() {
            None | Some("close") => true,
            Some("keep") => false,
            Some(other) => {
                self.err("drain.removed_backends", other, "must be `close` (drained over drain.window) or `keep`");
                true
            }
        };
        Config {
            threads,
            grace_period,
            fd_reserve,
            log,
            listeners,
            admin,
            admin_final_scrape,
            timeouts,
            usage,
            demo_page: f.demo_page,
            upgrade_sock,
            data_dir: match f.data_dir.as_deref() {
                None => self.path(DEFAULT_DATA_DIR),
                Some("") => {
                    self.err("data_dir", "", "must not be empty; name a directory such as weir-data");
                    self.path(DEFAULT_DATA_DIR)
                }
                Some(d) => self.path(d),
            },
            objects,
            pools,
            routes,
            billing_units,
            echo,
            admission,
            trusted_proxies,
            quotas,
            admin_token,
            admin_metrics_public: f.admin.as_ref().and_then(|a| a.metrics_public).unwrap_or(false),
            drain_window,
            drain_removed_backends,
            drain_restart,
            access_log: match f.access_log.as_deref() {
                None => None,
                Some("stderr") => Some(AccessLogTarget::Stderr),
                Some("") => {
                    self.err("access_log", "", "must be `stderr` or a file path");
                    None
                }
                Some(path) => Some(AccessLogTarget::File(self.path(path))),
            },
            cluster,
        }
    }

    /// `billing:`: every unit, with chunk sizes given scanner slots in order of first use.
    fn billing(&mut self, b: &FileBilling) -> Vec<UnitRule> {
        let mut sizes: Vec<u32> = Vec::new();
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for (i, u) in b.units.iter().enumerate() {
            let at = format!("billing.units[{i}]");
            let well_formed =
                !u.name.is_empty() && u.name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
            if !well_formed {
                self.err(
                    format!("{at}.name"),
                    &u.name,
                    "must be non-empty and use only lower-case letters, digits and `_`, e.g. apigw_messages",
                );
            } else if !names.insert(u.name.as_str()) {
                self.err(format!("{at}.name"), &u.name, "is used by an earlier unit; give every unit a unique name");
            }
            if u.terms.is_empty() {
                self.err(
                    format!("{at}.terms"),
                    "",
                    "a unit needs at least one term, e.g. `terms: [{of: messages_in}]`",
                );
            }
            let terms = u
                .terms
                .iter()
                .enumerate()
                .filter_map(|(j, t)| self.unit_term(&format!("{at}.terms[{j}]"), t, &mut sizes))
                .collect();
            let round = match u.round.as_deref() {
                None | Some("none") => Rounding::None,
                Some("up") => Rounding::Up,
                Some(other) => {
                    self.err(
                        format!("{at}.round"),
                        other,
                        "must be `none` (keep fractions) or `up` (the ceiling of the sum)",
                    );
                    Rounding::None
                }
            };
            rules.push(UnitRule { name: u.name.clone(), terms, round });
        }
        rules
    }

    /// One `terms[]` entry at key path `at`; `sizes` holds the chunk sizes given slots so far.
    fn unit_term(&mut self, at: &str, t: &FileTerm, sizes: &mut Vec<u32>) -> Option<UnitTerm> {
        let Some(of) = Quantity::from_name(&t.of) else {
            let known: Vec<&str> = Quantity::ALL.iter().map(|q| q.as_str()).collect();
            self.err(format!("{at}.of"), &t.of, format!("is not a quantity; use one of: {}", known.join(", ")));
            return None;
        };
        let per = self.unit_per(at, of, t.per.as_ref());
        let chunk = match t.chunk {
            None => None,
            Some(bytes) => Some(self.unit_chunk(at, of, bytes, sizes)?),
        };
        Some(UnitTerm { of, per: per?, chunk })
    }

    /// A term's divisor in the quantity's own unit (milliseconds for times); 1 when not set.
    fn unit_per(&mut self, at: &str, of: Quantity, per: Option<&FilePer>) -> Option<f64> {
        let key = format!("{at}.per");
        let name = of.as_str();
        if of.is_time() {
            return match per {
                None => {
                    self.err(
                        key,
                        "",
                        format!("`{name}` is a time: set `per` to a duration, e.g. 60s to count minutes"),
                    );
                    None
                }
                Some(FilePer::Number(n)) => {
                    self.err(
                        key,
                        n,
                        format!("`{name}` is a time: write `per` as a duration with a unit, e.g. 60s or 1h"),
                    );
                    None
                }
                Some(FilePer::Text(text)) => match humantime::parse_duration(text) {
                    Ok(d) if !d.is_zero() => Some(d.as_secs_f64() * 1000.0),
                    Ok(_) => {
                        self.err(key, text, "must be greater than zero, e.g. 60s");
                        None
                    }
                    Err(_) => {
                        self.err(
                            key,
                            text,
                            format!("`{name}` is a time: write `per` as a duration with a unit, e.g. 60s or 1h"),
                        );
                        None
                    }
                },
            };
        }
        let (shown, value) = match per {
            None => return Some(1.0),
            Some(FilePer::Number(n)) => (n.to_string(), Some(*n)),
            Some(FilePer::Text(text)) => (text.clone(), text.trim().parse::<f64>().ok()),
        };
        match value {
            Some(n) if n.is_finite() && n > 0.0 => Some(n),
            Some(_) => {
                self.err(key, shown, "must be a number greater than zero, e.g. 20");
                None
            }
            None => {
                self.err(key, shown, format!("`{name}` is a count: write `per` as a plain number, e.g. 20"));
                None
            }
        }
    }

    /// A term's `chunk`: bytes, on message counts only, at most `MAX_CHUNK_SIZES` sizes in all.
    fn unit_chunk(&mut self, at: &str, of: Quantity, bytes: u64, sizes: &mut Vec<u32>) -> Option<ChunkSlot> {
        let key = format!("{at}.chunk");
        if !of.is_messages() {
            self.err(
                key,
                bytes,
                format!(
                    "applies to messages_in and messages_out only; remove it, or count `{}` without chunks",
                    of.as_str()
                ),
            );
            return None;
        }
        let Some(size) = u32::try_from(bytes).ok().filter(|&b| b > 0) else {
            self.err(key, bytes, format!("must be a size in bytes between 1 and {}, e.g. 32768 (32 KiB)", u32::MAX));
            return None;
        };
        let slot = match sizes.iter().position(|&s| s == size) {
            Some(slot) => slot,
            None if sizes.len() < MAX_CHUNK_SIZES => {
                sizes.push(size);
                sizes.len() - 1
            }
            None => {
                let used: Vec<String> = sizes.iter().map(u32::to_string).collect();
                self.err(key, bytes, format!("is one distinct chunk size too many: weir counts at most {MAX_CHUNK_SIZES} at once (in use: {}); reuse one of them", used.join(", ")));
                return None;
            }
        };
        Some(ChunkSlot { bytes: size, slot })
    }

    fn log(&mut self, l: &FileLog) -> LogConfig {
        let level = l.level.clone().unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&level.as_str()) {
            self.err(
                "log.level",
                &level,
                "must be one of error, warn, info, debug, trace, off (RUST_LOG can set finer filters)",
            );
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
            client_auth: t
                .client_auth
                .as_ref()
                .map(|c| self.client_auth(&format!("listeners[{i}].tls.client_auth"), c)),
        });
        let proxy_protocol = l.proxy_protocol.unwrap_or(false);
        Some(Listener { address: address?, tls, proxy_protocol })
    }

    /// `listeners[i].tls.client_auth`: the client CA (read now, so a bad file is reported by
    /// `weir check`) and the mode.
    fn client_auth(&mut self, at: &str, c: &FileClientAuth) -> ClientAuth {
        use crate::client_cert::Mode;
        let mode = match c.mode.as_deref() {
            None | Some("required") => Mode::Required,
            Some("optional") => Mode::Optional,
            Some(other) => {
                self.err(
                    format!("{at}.mode"),
                    other,
                    "must be required (a client without a certificate from ca_file fails the handshake; \
                     the default) or optional",
                );
                Mode::Required
            }
        };
        let ca_file = self.existing_file(&format!("{at}.ca_file"), &c.ca_file);
        if ca_file.is_file() {
            if let Err(e) = crate::tls_client::certs(&ca_file) {
                self.err(format!("{at}.ca_file"), &c.ca_file, format!("{e}; give a PEM file of CA certificates"));
            }
        }
        ClientAuth { ca_file, mode }
    }

    /// `trusted_proxies`: CIDRs (or single addresses).
    fn trusted_proxies(&mut self, list: &[String]) -> Vec<Cidr> {
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let c = Cidr::parse(s);
                if c.is_none() {
                    self.err(
                        format!("trusted_proxies[{i}]"),
                        s,
                        "must be an address or a CIDR, e.g. 10.0.0.0/8 or ::1",
                    );
                }
                c
            })
            .collect()
    }

    pub(super) fn existing_file(&mut self, key: &str, path: &str) -> PathBuf {
        let resolved = self.path(path);
        if !resolved.is_file() {
            self.err(
                key,
                path,
                format!("file not found{}; give the path of a PEM file readable by weir", self.shown_at(path)),
            );
        }
        resolved
    }

    /// ` (at /abs/path)` when `path` is relative and resolved somewhere else, for "not found"
    /// messages; empty otherwise.
    pub(super) fn shown_at(&self, path: &str) -> String {
        let resolved = self.path(path);
        if resolved.as_os_str() == path {
            String::new()
        } else {
            format!(" (at {}, relative to the config file's directory)", resolved.display())
        }
    }

    /// `listeners` carries each listener's index in the file, for the error's key path.
    fn distinct_addresses(&mut self, listeners: &[(usize, Listener)], admin: Option<SocketAddr>) {
        let mut seen = HashSet::new();
        for (i, l) in listeners {
            if !seen.insert(l.address) {
                self.err(
                    format!("listeners[{i}].address"),
                    l.address,
                    "is already used by an earlier listener; use another port",
                );
            }
        }
        if let Some(a) = admin {
            if seen.contains(&a) {
                self.err("admin.address", a, "is also a public listener; give the admin listener its own port");
            }
        }
    }

    /// Resolve `host:port` (port 0 allowed for tests only on listeners; any port on backends).
    pub(super) fn addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
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

    /// `admin.token` / `admin.token_file` (one of them; at least 16 characters).
    fn admin_token(&mut self, a: &FileAdmin) -> Option<String> {
        let token = match (&a.token, &a.token_file) {
            (Some(_), Some(_)) => {
                self.err("admin.token_file", "", "set `token` or `token_file`, not both");
                return None;
            }
            (Some(t), None) => t.clone(),
            (None, Some(path)) => match std::fs::read_to_string(self.path(path)) {
                Ok(text) => text.lines().next().unwrap_or("").trim().to_string(),
                Err(e) => {
                    self.err("admin.token_file", path, format!("cannot be read ({e}){}", self.shown_at(path)));
                    return None;
                }
            },
            (None, None) => return None,
        };
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            self.err(
                "admin.token",
                "(not shown)",
                "must be at least 16 printable characters without spaces, e.g. from `weir key new`",
            );
            return None;
        }
        Some(token)
    }

    /// `admin.final_scrape`: a duration up to `MAX_FINAL_SCRAPE`; zero allowed (no window).
    fn final_scrape(&mut self, value: Option<&str>) -> Duration {
        const KEY: &str = "admin.final_scrape";
        let Some(s) = value else { return DEFAULT_FINAL_SCRAPE };
        match humantime::parse_duration(s) {
            Ok(d) if d <= MAX_FINAL_SCRAPE => d,
            Ok(_) => {
                self.err(KEY, s, "must be at most 5m (the process waits this long before it exits); the default is 2s");
                DEFAULT_FINAL_SCRAPE
            }
            Err(_) => {
                self.err(KEY, s, "is not a duration; write a number with a unit, e.g. \"2s\" (\"0s\": no window)");
                DEFAULT_FINAL_SCRAPE
            }
        }
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(s) = value else { return default };
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(
                    key,
                    s,
                    format!("must be greater than zero; the default is {}", humantime::format_duration(default)),
                );
                default
            }
            Err(_) => {
                self.err(
                    key,
                    s,
                    format!(
                        "is not a duration; write a number with a unit, e.g. \"{}\"",
                        humantime::format_duration(default)
                    ),
                );
                default
            }
        }
    }

    fn pool(&mut self, i: usize, p: &FilePool) -> Pool {
        if p.name.is_empty() || !p.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
            self.err(
                format!("pools[{i}].name"),
                &p.name,
                "must be non-empty and use only letters, digits, `_`, `-` and `.`",
            );
        }
        if p.backends.is_empty() {
            self.err(
                format!("pools[{i}].backends"),
                "",
                "a pool needs at least one backend, e.g. [\"127.0.0.1:9001\"] or [\"builtin:echo\"]",
            );
        }
        let mut backends = Vec::new();
        let mut names = Vec::new();
        for (j, b) in p.backends.iter().enumerate() {
            let key = format!("pools[{i}].backends[{j}]");
            let backend = match b.strip_prefix("builtin:") {
                Some("echo") => Some(Backend::Builtin(BuiltinKind::Echo)),
                Some(other) => {
                    self.err(
                        &key,
                        b,
                        format!("`{other}` is not a built-in server; the built-in backend is `builtin:echo`"),
                    );
                    None
                }
                None => self.addr(&key, b).map(Backend::Addr),
            };
            if let (Some(Backend::Addr(a)), Some(name)) = (&backend, crate::tls_client::host_name(b)) {
                names.push((*a, name));
            }
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
            Some("least_connections") => Selection::LeastConnections,
            Some(other) => {
                self.err(
                    format!("pools[{i}].selection"),
                    other,
                    "must be round_robin, random, ip_hash or least_connections",
                );
                Selection::RoundRobin
            }
        };
        let health = match &p.health_check {
            None => HealthCheck::Tcp { interval: DEFAULT_HEALTH_INTERVAL },
            Some(h) => self.health(&format!("pools[{i}].health_check"), h),
        };
        let tls = p.tls.as_ref().and_then(|t| self.client_tls(&format!("pools[{i}].tls"), t, names));
        if tls.is_some() && backends.iter().any(|b| matches!(b, Backend::Builtin(_))) {
            self.err(
                format!("pools[{i}].tls"),
                "",
                "built-in backends speak plain TCP inside weir; put them in a pool without `tls`",
            );
        }
        Pool {
            name: p.name.clone(),
            backends,
            selection,
            health,
            close_unhealthy: p.close_unhealthy.unwrap_or(true),
            tls,
        }
    }

    /// A backend `tls:` at key path `at`; `names`: the backends written as host names.
    fn client_tls(
        &mut self,
        at: &str,
        t: &FileClientTls,
        names: Vec<(SocketAddr, String)>,
    ) -> Option<crate::tls_client::ClientTls> {
        if let Some(sni) = &t.sni {
            if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
                self.err(format!("{at}.sni"), sni, "is not a DNS name or IP address; write the name in the backend's certificate, e.g. backend.internal");
            }
        }
        let file =
            |v: &mut Self, k: &str, p: &Option<String>| p.as_ref().map(|p| v.existing_file(&format!("{at}.{k}"), p));
        let ca_file = file(self, "ca_file", &t.ca_file);
        let client_cert = file(self, "client_cert", &t.client_cert);
        let client_key = file(self, "client_key", &t.client_key);
        if client_cert.is_some() != client_key.is_some() {
            let (k, missing) =
                if client_cert.is_some() { ("client_cert", "client_key") } else { ("client_key", "client_cert") };
            self.err(
                format!("{at}.{k}"),
                "",
                format!("mutual TLS needs both client_cert and client_key; add {missing} or remove {k}"),
            );
            return None;
        }
        if [&ca_file, &client_cert, &client_key].iter().any(|p| p.as_ref().is_some_and(|p| !p.is_file())) {
            return None;
        }
        let sni = t.sni.clone();
        match crate::tls_client::ClientTls::new(sni, names, ca_file, client_cert, client_key, t.verify.unwrap_or(true))
        {
            Ok(tls) => Some(tls),
            Err(e) => {
                self.err(
                    at,
                    "",
                    format!("{e}; give PEM files (CA certificates, a certificate chain and its private key)"),
                );
                None
            }
        }
    }

    /// A `health_check:` at key path `at` (e.g. `pools[0].health_check`).
    fn health(&mut self, at: &str, h: &FileHealthCheck) -> HealthCheck {
        let interval = self.duration(&format!("{at}.interval"), h.interval.as_deref(), DEFAULT_HEALTH_INTERVAL);
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            self.err(format!("{at}.path"), &path, "must start with `/`, e.g. \"/healthz\"");
        }
        let unused = |v: &mut Self, what: &str| {
            v.err(format!("{at}.{what}"), "", format!("does not apply to kind `{}`; remove it", h.kind));
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
                self.err(format!("{at}.kind"), other, "must be tcp, http, handshake or none");
                HealthCheck::None
            }
        }
    }

    fn route(
        &mut self,
        i: usize,
        r: &FileRoute,
        pools: &[FilePool],
        files: &[FileObject],
        objects: &[Namespace],
    ) -> Option<Route> {
        if !r.path_prefix.starts_with('/') {
            self.err(format!("routes[{i}].path_prefix"), &r.path_prefix, "must start with `/`, e.g. \"/chat\"");
        }
        let kind = match r.kind.as_deref() {
            None | Some("websocket") => RouteKind::WebSocket,
            Some("http") => RouteKind::Http,
            Some(other) => {
                self.err(
                    format!("routes[{i}].kind"),
                    other,
                    "must be `websocket` (upgrades only) or `http` (plain HTTP proxied too)",
                );
                RouteKind::WebSocket
            }
        };
        let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host {
            if h.is_empty() || h.contains(['/', ' ']) {
                self.err(
                    format!("routes[{i}].host"),
                    h,
                    "must be a bare host name such as example.com (no scheme, path or spaces)",
                );
            }
        }
        let name = r.name.clone().unwrap_or_else(|| r.path_prefix.clone());
        let path_prefix = r.path_prefix.trim_end_matches('/').to_string();
        let target = match (&r.pool, &r.object) {
            (Some(pool), None) => {
                let found = pools.iter().position(|p| &p.name == pool);
                if found.is_none() {
                    let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                    self.err(
                        format!("routes[{i}].pool"),
                        pool,
                        format!("no pool has this name; use one of: {}", known.join(", ")),
                    );
                }
                Target::Pool(found?)
            }
            (None, Some(object)) => {
                let found = files.iter().position(|o| &o.name == object);
                if found.is_none() {
                    let known: Vec<&str> = files.iter().map(|o| o.name.as_str()).collect();
                    self.err(
                        format!("routes[{i}].object"),
                        object,
                        format!("no object namespace has this name; use one of: {}", known.join(", ")),
                    );
                }
                if kind == RouteKind::Http {
                    self.err(
                        format!("routes[{i}].kind"),
                        "http",
                        "object routes carry WebSockets only; remove `kind` or set it to websocket",
                    );
                }
                let ns = objects.iter().find(|n| &n.name == object);
                if let Some(IdSource::Path { prefix, .. }) = ns.map(|n| &n.id_source) {
                    if !super::model::prefix_matches(&path_prefix, prefix.trim_end_matches('/')) {
                        self.err(
                            format!("routes[{i}].path_prefix"),
                            &r.path_prefix,
                            format!("never matches the paths of object namespace `{object}` (template prefix {prefix}); use a prefix of it, e.g. {}", prefix.trim_end_matches('/')),
                        );
                    }
                }
                Target::Object(found?)
            }
            _ => {
                self.err(
                    format!("routes[{i}]"),
                    &name,
                    "set exactly one of `pool` (a backend pool) or `object` (an object namespace)",
                );
                return None;
            }
        };
        if let Some(t) = &r.tenant {
            if t.is_empty() || t.len() > 128 || t.chars().any(char::is_control) {
                self.err(format!("routes[{i}].tenant"), t, "must be 1 to 128 printable characters");
            }
        }
        Some(Route {
            name,
            host,
            path_prefix,
            kind,
            target,
            tenant: r.tenant.clone(),
            limits: Limits::default(),
            auth: None,
            origins: None,
            admission: RouteAdmission::default(),
        })
    }

    fn usage(&mut self, u: &FileUsage) -> Usage {
        let non_empty = |v: &mut Self, key: &str, value: Option<&str>, default: &str| match value {
            Some("") => {
                v.err(key, "", format!("must not be empty; the default is {default}"));
                v.path(default)
            }
            Some(p) => v.path(p),
            None => v.path(default),
        };
        let spool_dir = non_empty(self, "usage.spool_dir", u.spool_dir.as_deref(), DEFAULT_SPOOL_DIR);
        let fsync_interval = self.duration("usage.fsync_interval", u.fsync_interval.as_deref(), MAX_FSYNC_INTERVAL);
        if fsync_interval > MAX_FSYNC_INTERVAL {
            self.err(
                "usage.fsync_interval",
                humantime::format_duration(fsync_interval),
                "must be at most 200ms (records may wait that long before they are durable)",
            );
        }
        let interim_interval =
            self.duration("usage.interim_interval", u.interim_interval.as_deref(), DEFAULT_INTERIM_INTERVAL);
        if interim_interval < Duration::from_secs(1) {
            self.err(
                "usage.interim_interval",
                humantime::format_duration(interim_interval),
                "must be at least 1s; the default is 60s",
            );
        }
        let idle_threshold = self.duration("usage.idle_threshold", u.idle_threshold.as_deref(), DEFAULT_IDLE_THRESHOLD);
        let fail_open = match u.on_spool_error.as_deref() {
            None | Some("reject") => false,
            Some("fail_open") => true,
            Some(other) => {
                self.err(
                    "usage.on_spool_error",
                    other,
                    "must be `reject` (refuse new upgrades with 503, the default) or `fail_open`",
                );
                false
            }
        };
        let rejections_per_client = match u.rejections_per_client {
            None => DEFAULT_REJECTIONS_PER_CLIENT,
            Some(n) if n <= 1_000_000 => n,
            Some(n) => {
                self.err(
                    "usage.rejections_per_client",
                    n,
                    "must be between 0 (a record for every rejection) and 1000000; the default is 20",
                );
                DEFAULT_REJECTIONS_PER_CLIENT
            }
        };
        let rejection_window =
            self.duration("usage.rejection_window", u.rejection_window.as_deref(), DEFAULT_REJECTION_WINDOW);
        if rejection_window < Duration::from_secs(1) {
            self.err(
                "usage.rejection_window",
                humantime::format_duration(rejection_window),
                "must be at least 1s; the default is 10s",
            );
        }
        let sinks = match &u.sinks {
            None => {
                let path = non_empty(self, "usage.file", u.file.as_deref(), DEFAULT_USAGE_FILE);
                vec![Sink {
                    name: "file".into(),
                    batch: DEFAULT_SINK_BATCH,
                    kind: SinkKind::File {
                        path,
                        rotate_bytes: DEFAULT_ROTATE_BYTES,
                        rotate_interval: DEFAULT_ROTATE_INTERVAL,
                    },
                }]
            }
            Some(list) => {
                if u.file.is_some() {
                    self.err("usage.file", u.file.as_deref().unwrap_or(""), "is the path of the default file sink; with `usage.sinks` set, give the file sink a `path` instead");
                }
                if list.is_empty() {
                    self.err("usage.sinks", "", "needs at least one sink, e.g. [{kind: file, path: weir-usage.jsonl}]; records are never thrown away");
                }
                let sinks: Vec<Sink> = list.iter().enumerate().filter_map(|(i, s)| self.sink(i, s)).collect();
                let mut seen = HashSet::new();
                for (i, s) in sinks.iter().enumerate() {
                    if !seen.insert(s.name.clone()) {
                        self.err(
                            format!("usage.sinks[{i}].name"),
                            &s.name,
                            "is used by an earlier sink; give each sink a unique `name` (it names its cursor)",
                        );
                    }
                }
                sinks
            }
        };
        Usage {
            spool_dir,
            fsync_interval,
            interim_interval,
            idle_threshold,
            default_tenant: u.default_tenant.clone(),
            fail_open,
            rejections_per_client,
            rejection_window,
            sinks,
        }
    }

    fn sink(&mut self, i: usize, s: &FileSink) -> Option<Sink> {
        let key = |k: &str| format!("usage.sinks[{i}].{k}");
        let name = s.name.clone().unwrap_or_else(|| s.kind.clone());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
            self.err(key("name"), &name, "must use only letters, digits, `_` and `-`");
        }
        let batch = match s.batch {
            None => DEFAULT_SINK_BATCH,
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            Some(n) => {
                self.err(key("batch"), n, "must be between 1 and 100000 records");
                DEFAULT_SINK_BATCH
            }
        };
        let unused = |v: &mut Self, k: &str, set: bool| {
            if set {
                v.err(key(k), "", format!("does not apply to a `{}` sink; remove it", s.kind));
            }
        };
        let kind = match s.kind.as_str() {
            "file" => {
                unused(self, "ca_file", s.ca_file.is_some());
                unused(self, "client_cert", s.client_cert.is_some());
                unused(self, "client_key", s.client_key.is_some());
                unused(self, "auth_header", s.auth_header.is_some());
                unused(self, "url", s.url.is_some());
                unused(self, "table", s.table.is_some());
                unused(self, "timeout", s.timeout.is_some());
                let Some(path) = s.path.clone().filter(|p| !p.is_empty()) else {
                    self.err(key("path"), "", "a file sink needs a path, e.g. weir-usage.jsonl");
                    return None;
                };
                let rotate_bytes = s.rotate_bytes.unwrap_or(DEFAULT_ROTATE_BYTES);
                if rotate_bytes < 4096 {
                    self.err(key("rotate_bytes"), rotate_bytes, "must be at least 4096 bytes");
                }
                let rotate_interval =
                    self.duration(&key("rotate_interval"), s.rotate_interval.as_deref(), DEFAULT_ROTATE_INTERVAL);
                SinkKind::File { path: self.path(&path), rotate_bytes, rotate_interval }
            }
            "postgres" => {
                unused(self, "path", s.path.is_some());
                unused(self, "rotate_bytes", s.rotate_bytes.is_some());
                unused(self, "rotate_interval", s.rotate_interval.is_some());
                unused(self, "timeout", s.timeout.is_some());
                unused(self, "client_cert", s.client_cert.is_some());
                unused(self, "client_key", s.client_key.is_some());
                unused(self, "auth_header", s.auth_header.is_some());
                let Some(url) = s.url.clone().filter(|u| !u.is_empty()) else {
                    self.err(
                        key("url"),
                        "",
                        "a postgres sink needs a connection string, e.g. \"host=127.0.0.1 user=weir dbname=weir\"",
                    );
                    return None;
                };
                let table = s.table.clone().unwrap_or_else(|| "weir_usage".into());
                if table.is_empty()
                    || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || table.starts_with(|c: char| c.is_ascii_digit())
                {
                    self.err(
                        key("table"),
                        &table,
                        "must be a plain SQL identifier: letters, digits and `_`, not starting with a digit",
                    );
                }
                let ca_file = s.ca_file.as_ref().map(|p| self.existing_file(&key("ca_file"), p));
                match crate::config::pg_url::TlsMode::of(&url) {
                    Ok((mode, _)) => {
                        if ca_file.is_some() && mode == crate::config::pg_url::TlsMode::Off {
                            self.err(
                                key("ca_file"),
                                s.ca_file.as_deref().unwrap_or_default(),
                                "applies to TLS only; add sslmode=verify-full (or require) to url, or remove ca_file",
                            );
                        }
                    }
                    Err(e) => self.err(key("url"), &url, e),
                }
                SinkKind::Postgres { url, table, ca_file }
            }
            "http" => {
                unused(self, "path", s.path.is_some());
                unused(self, "rotate_bytes", s.rotate_bytes.is_some());
                unused(self, "rotate_interval", s.rotate_interval.is_some());
                unused(self, "table", s.table.is_some());
                let url = s.url.clone().unwrap_or_default();
                let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
                    (Some(rest), _) => (rest, false),
                    (_, Some(rest)) => (rest, true),
                    _ => {
                        self.err(
                            key("url"),
                            &url,
                            "must be an http:// or https:// URL of the collector, e.g. https://meter.internal/events",
                        );
                        return None;
                    }
                };
                let (authority, path) =
                    rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
                let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
                let port = if https { 443 } else { 80 };
                let addr = if has_port { authority.to_string() } else { format!("{authority}:{port}") };
                let timeout = self.duration(&key("timeout"), s.timeout.as_deref(), DEFAULT_HTTP_TIMEOUT);
                if let Some(h) = &s.auth_header {
                    if h.is_empty() || h.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        self.err(
                            key("auth_header"),
                            "(hidden)",
                            "must be one non-empty line, e.g. \"Bearer ${file:/etc/weir/sink.token}\"",
                        );
                    }
                }
                let resolved = self.addr(&key("url"), &addr)?;
                let tls = if https {
                    let host = authority.rsplit_once(':').filter(|_| has_port).map_or(authority, |(h, _)| h);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let file =
                        |v: &mut Self, k: &str, p: &Option<String>| p.as_ref().map(|p| v.existing_file(&key(k), p));
                    let ca_file = file(self, "ca_file", &s.ca_file);
                    let client_cert = file(self, "client_cert", &s.client_cert);
                    let client_key = file(self, "client_key", &s.client_key);
                    let files_ok =
                        [&ca_file, &client_cert, &client_key].iter().all(|p| p.as_ref().is_none_or(|p| p.is_file()));
                    let built = crate::tls_client::ClientTls::new(
                        Some(host.to_string()),
                        vec![(resolved, host.to_string())],
                        ca_file,
                        client_cert,
                        client_key,
                        true,
                    );
                    match built {
                        Ok(tls) => Some(tls),
                        Err(e) => {
                            if files_ok {
                                self.err(key("ca_file"), "", format!("{e}; give PEM files (CA certificates, a certificate chain and its private key)"));
                            }
                            return None;
                        }
                    }
                } else {
                    for k in ["ca_file", "client_cert", "client_key"] {
                        let set = match k {
                            "ca_file" => s.ca_file.is_some(),
                            "client_cert" => s.client_cert.is_some(),
                            _ => s.client_key.is_some(),
                        };
                        if set {
                            self.err(key(k), "", "applies to https:// URLs only; use https:// or remove it");
                        }
                    }
                    None
                };
                SinkKind::Http {
                    addr,
                    host: authority.to_string(),
                    path,
                    timeout,
                    tls,
                    auth_header: s.auth_header.clone(),
                }
            }
            other => {
                self.err(key("kind"), other, "must be file, postgres or http");
                return None;
            }
        };
        Some(Sink { name, batch, kind })
    }

    fn object(&mut self, i: usize, o: &FileObject) -> Option<Namespace> {
        let key = |k: &str| format!("objects[{i}].{k}");
        if o.name.is_empty() || !o.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
            self.err(key("name"), &o.name, "must be non-empty and use only letters, digits, `_`, `-` and `.`");
        }
        let id_source = self.id_source(i, &o.id);
        let max_length = match o.id.max_length {
            None => DEFAULT_ID_MAX_LENGTH,
            Some(n) if (1..=4096).contains(&n) => n as usize,
            Some(n) => {
                self.err(key("id.max_length"), n, "must be between 1 and 4096 bytes; the default is 128");
                DEFAULT_ID_MAX_LENGTH
            }
        };
        let allowed_text = o.id.allowed.clone().unwrap_or_else(|| DEFAULT_ID_ALLOWED.to_string());
        let allowed = match parse_charset(&allowed_text) {
            Ok(set) => set,
            Err(why) => {
                self.err(
                    key("id.allowed"),
                    &allowed_text,
                    format!("{why}; write ASCII ranges and characters such as \"{DEFAULT_ID_ALLOWED}\""),
                );
                [false; 128]
            }
        };
        let idle_window = self.duration(&key("idle_window"), o.idle_window.as_deref(), DEFAULT_IDLE_WINDOW);
        if let Some(t) = &o.forward_path {
            if !t.starts_with('/') || !t.contains("{id}") {
                self.err(
                    key("forward_path"),
                    t,
                    "must start with `/` and contain {id}, e.g. \"/objects/{namespace}/{id}\"",
                );
            }
        }
        let kind = match (o.builtin.as_deref(), o.hosts.is_empty()) {
            (Some(b), true) => {
                if o.health_check.is_some() {
                    self.err(key("health_check"), "", "built-in objects are not probed; remove health_check");
                }
                if o.forward_path.is_some() {
                    self.err(key("forward_path"), "", "built-in objects do not forward requests; remove forward_path");
                }
                if o.tls.is_some() {
                    self.err(key("tls"), "", "built-in objects are served inside weir; remove tls");
                }
                match b {
                    "echo" => {
                        if o.room.is_some() {
                            self.err(key("room"), "", "applies to `builtin: room` only; remove it");
                        }
                        ObjectKind::Builtin(BuiltinObject::Echo)
                    }
                    "room" => ObjectKind::Builtin(BuiltinObject::Room(self.room(i, o.room.as_ref()))),
                    other => {
                        self.err(key("builtin"), other, "must be `echo` or `room`");
                        return None;
                    }
                }
            }
            (None, false) => {
                if o.room.is_some() {
                    self.err(key("room"), "", "applies to `builtin: room` only; remove it");
                }
                let mut hosts: Vec<(String, SocketAddr)> = Vec::new();
                for (j, h) in o.hosts.iter().enumerate() {
                    if let Some(a) = self.addr(&key(&format!("hosts[{j}]")), h) {
                        if hosts.iter().any(|(k, _)| k == h) {
                            self.err(key(&format!("hosts[{j}]")), h, "is listed twice; list each host once");
                        } else {
                            hosts.push((h.clone(), a));
                        }
                    }
                }
                let health = match &o.health_check {
                    None => HealthCheck::Tcp { interval: DEFAULT_HEALTH_INTERVAL },
                    Some(h) => self.health(&key("health_check"), h),
                };
                let names =
                    hosts.iter().filter_map(|(h, a)| crate::tls_client::host_name(h).map(|n| (*a, n))).collect();
                let tls = o.tls.as_ref().and_then(|t| self.client_tls(&key("tls"), t, names));
                ObjectKind::Hosts { hosts, health, tls }
            }
            _ => {
                self.err(
                    key("builtin"),
                    o.builtin.as_deref().unwrap_or(""),
                    "set exactly one of `builtin` (echo or room) or `hosts` (a list of host:port)",
                );
                return None;
            }
        };
        Some(Namespace {
            name: o.name.clone(),
            id_source: id_source?,
            id_rules: IdRules { max_length, allowed, allowed_text },
            kind,
            forward_path: o.forward_path.clone(),
            idle_window,
        })
    }

    fn id_source(&mut self, i: usize, id: &FileObjectId) -> Option<IdSource> {
        let key = format!("objects[{i}].id");
        let named = |v: &mut Self, k: &str, name: &str| {
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && !b"=&?#:".contains(&b));
            if !ok {
                v.err(format!("{key}.{k}"), name, "must be a non-empty name without spaces, `=`, `&`, `?`, `#` or `:`");
            }
        };
        match (&id.path, &id.query, &id.header) {
            (Some(t), None, None) => {
                let Some((prefix, suffix)) = t.split_once("{id}") else {
                    self.err(format!("{key}.path"), t, "must contain {id} as a whole segment, e.g. \"/rooms/{id}\"");
                    return None;
                };
                if !prefix.starts_with('/')
                    || !prefix.ends_with('/')
                    || !(suffix.is_empty() || suffix.starts_with('/'))
                    || suffix.contains("{id}")
                    || prefix.contains(['?', '#'])
                    || suffix.contains(['?', '#'])
                {
                    self.err(format!("{key}.path"), t, "must start with `/` and contain {id} once, as a whole segment, e.g. \"/rooms/{id}\" or \"/o/{id}/ws\"");
                    return None;
                }
                Some(IdSource::Path { prefix: prefix.to_string(), suffix: suffix.to_string() })
            }
            (None, Some(q), None) => {
                named(self, "query", q);
                Some(IdSource::Query(q.clone()))
            }
            (None, None, Some(h)) => {
                named(self, "header", h);
                Some(IdSource::Header(h.to_ascii_lowercase()))
            }
            _ => {
                self.err(key, "", "set exactly one of `path` (e.g. /rooms/{id}), `query` (a parameter name) or `header` (a header name)");
                None
            }
        }
    }

    /// `echo:`: the built-in echo's message limit.
    fn echo(&mut self, e: &FileEcho) -> EchoConfig {
        let max_message = match e.max_message {
            None => DEFAULT_ECHO_MAX_MESSAGE,
            Some(n) if (1..=MAX_ECHO_MAX_MESSAGE).contains(&n) => n as usize,
            Some(n) => {
                self.err(
                    "echo.max_message",
                    n,
                    format!(
                        "must be a size in bytes between 1 and {MAX_ECHO_MAX_MESSAGE} (64 MiB); the default is \
                         {DEFAULT_ECHO_MAX_MESSAGE} (1 MiB)"
                    ),
                );
                DEFAULT_ECHO_MAX_MESSAGE
            }
        };
        EchoConfig { max_message }
    }

    fn room(&mut self, i: usize, r: Option<&FileRoom>) -> RoomConfig {
        let default = FileRoom::default();
        let r = r.unwrap_or(&default);
        let send_timeout = self.duration(
            &format!("objects[{i}].room.send_timeout"),
            r.send_timeout.as_deref(),
            DEFAULT_ROOM_SEND_TIMEOUT,
        );
        let mut count = |k: &str, v: Option<u64>, default: usize, range: std::ops::RangeInclusive<u64>| match v {
            None => default,
            Some(n) if range.contains(&n) => n as usize,
            Some(n) => {
                self.err(
                    format!("objects[{i}].room.{k}"),
                    n,
                    format!("must be between {} and {}; the default is {default}", range.start(), range.end()),
                );
                default
            }
        };
        RoomConfig {
            history: count("history", r.history, DEFAULT_ROOM_HISTORY, 0..=100_000),
            send_queue: count("send_queue", r.send_queue, DEFAULT_ROOM_SEND_QUEUE, 1..=1_000_000),
            max_message: count("max_message", r.max_message, DEFAULT_ROOM_MAX_MESSAGE, 1..=(64 << 20)),
            send_timeout,
            history_bytes: count("history_bytes", r.history_bytes, DEFAULT_ROOM_HISTORY_BYTES, 1..=(1 << 30)) as u64,
            max_rooms_on_disk: count(
                "max_rooms_on_disk",
                r.max_rooms_on_disk,
                DEFAULT_ROOM_MAX_ROOMS_ON_DISK,
                1..=10_000_000,
            ),
        }
    }
}

/// Parse an allowed-characters set such as `A-Za-z0-9_.-`: ASCII ranges `x-y` and literal
/// characters (a `-` first or last is literal).
pub fn parse_charset(text: &str) -> Result<[bool; 128], String> {
    let mut set = [false; 128];
    let bytes = text.as_bytes();
    if text.is_empty() {
        return Err("must allow at least one character".into());
    }
    if !text.is_ascii() || bytes.iter().any(|b| !b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    let mut k = 0;
    while k < bytes.len() {
        let lo = bytes[k];
        if k + 2 < bytes.len() && bytes[k + 1] == b'-' {
            let hi = bytes[k + 2];
            if hi < lo {
                return Err(format!("range {}-{} is reversed", lo as char, hi as char));
            }
            for b in lo..=hi {
                set[b as usize] = true;
            }
            k += 3;
        } else {
            set[lo as usize] = true;
            k += 1;
        }
    }
    Ok(set)
}
