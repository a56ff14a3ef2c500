//! Config reload without dropping a WebSocket: SIGHUP and `POST /api/reload` re-read the config
//! file, validate it (every error reported, the running config kept), build the new snapshot
//! (`gateway::snapshot`) and swap it in as one. Open connections keep what their snapshot gave
//! them; new requests get the new one.
//!
//! Cold path (one reload at a time). What a snapshot cannot change (listeners, the admin
//! listener, the spool and sinks, quotas, threads, logging, the drain plan) is compared with the
//! running config (`cluster` too) and reported as needing a restart, never applied half-way and never silently
//! ignored. Backends the new config no longer names get their open connections closed over the
//! drain window (`drain.removed_backends: close`, the default) or are left to end (`keep`).

use crate::admin::api::{close_backend, DrainPlan, Reload};
use crate::client_cert::ClientCa;
use crate::config::Config;
use crate::gateway::snapshot::{Current, Parts, Snapshot};
use crate::listener_tls::ListenerCert;
use crate::metering::live::LiveSet;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::Serialize;
use sha2::Digest;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What one applied reload changed.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Changes {
    /// The new config file's hash (`weir_config_info`).
    pub hash: String,
    /// Routes by name.
    pub routes: Diff,
    /// Pools by name (`changed`: their backends, selection or health check).
    pub pools: Diff,
    /// Object namespaces by name.
    pub objects: Diff,
    /// Settings that changed in the file but need a restart to apply (key names).
    pub restart_needed: Vec<String>,
    /// Backends no pool names any more.
    pub removed_backends: Vec<String>,
    /// Their open connections being closed over the drain window.
    pub closing: usize,
    /// TLS listener certificates re-read from their files (renewed ones take effect for new
    /// handshakes).
    pub certificates: usize,
    /// Client CA files (`listeners[].tls.client_auth.ca_file`) re-read (new handshakes are
    /// verified against them).
    pub client_cas: usize,
}

/// The files of the TLS listeners a reload re-reads (same paths; listeners themselves need a
/// restart).
#[derive(Default)]
pub struct ListenerFiles {
    /// Each TLS listener's certificate and key.
    pub certs: Vec<Arc<ListenerCert>>,
    /// Each `client_auth` listener's client CA.
    pub client_cas: Vec<Arc<ClientCa>>,
}

/// Names added, removed and changed between two configs.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Diff {
    /// In the new config only.
    pub added: Vec<String>,
    /// In the running config only.
    pub removed: Vec<String>,
    /// In both, with other settings.
    pub changed: Vec<String>,
}

impl Diff {
    /// Compare items named by `name` and described by their `Debug` form.
    fn of<T: std::fmt::Debug>(old: &[T], new: &[T], name: impl Fn(&T) -> &str) -> Diff {
        let find = |list: &[T], n: &str| list.iter().find(|x| name(x) == n).map(|x| format!("{x:?}"));
        let mut d = Diff::default();
        for x in new {
            match find(old, name(x)) {
                None => d.added.push(name(x).to_string()),
                Some(before) if before != format!("{x:?}") => d.changed.push(name(x).to_string()),
                Some(_) => {}
            }
        }
        d.removed = old.iter().filter(|x| find(new, name(x)).is_none()).map(|x| name(x).to_string()).collect();
        d
    }

    /// Nothing added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Settings a reload cannot apply: the key and whether it differs between `old` and `new`.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    // The usage settings a snapshot carries (default tenant, fail-open) apply on reload.
    let usage = |c: &Config| {
        let mut u = c.usage.clone();
        u.default_tenant = None;
        u.fail_open = false;
        u
    };
    let checks: [(&str, bool); 14] = [
        ("server.threads", old.threads != new.threads),
        ("server.grace_period", old.grace_period != new.grace_period),
        ("server.fd_reserve", old.fd_reserve != new.fd_reserve),
        ("log", differs(&old.log, &new.log)),
        ("listeners", differs(&old.listeners, &new.listeners)),
        ("admin", old.admin != new.admin || old.admin_final_scrape != new.admin_final_scrape),
        ("admin.token", old.admin_token != new.admin_token || old.admin_metrics_public != new.admin_metrics_public),
        ("usage", differs(&usage(old), &usage(new))),
        ("data_dir", old.data_dir != new.data_dir),
        ("echo", differs(&old.echo, &new.echo)),
        ("quotas", old.quotas != new.quotas),
        (
            "drain",
            old.drain_window != new.drain_window
                || old.drain_restart != new.drain_restart
                || old.drain_removed_backends != new.drain_removed_backends,
        ),
        ("access_log", old.access_log != new.access_log),
        ("cluster", differs(&old.cluster, &new.cluster)),
    ];
    checks.into_iter().filter(|(_, d)| *d).map(|(k, _)| k.to_string()).collect()
}

/// The first 16 hex digits of the SHA-256 of `bytes`.
pub fn hash_of(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Reloads the config file into the running process.
pub struct Reloader {
    path: PathBuf,
    current: Current,
    parts: Parts,
    live: Arc<LiveSet>,
    plan: DrainPlan,
    metrics: Metrics,
    /// The TLS listeners' certificates and client CAs, re-read at every reload.
    files: ListenerFiles,
    /// One reload at a time; holds the hash in force.
    hash: Mutex<String>,
}

impl Reloader {
    /// A reloader of the config at `path` into `current`; `hash` is the running file's hash.
    pub fn new(
        path: &Path,
        current: Current,
        parts: Parts,
        live: Arc<LiveSet>,
        plan: DrainPlan,
        hash: String,
        files: ListenerFiles,
    ) -> Arc<Reloader> {
        let metrics = parts.metrics.clone();
        metrics.config_info.with_label_values(&[&hash]).set(1);
        Arc::new(Reloader {
            path: path.to_path_buf(),
            current,
            parts,
            live,
            plan,
            metrics,
            files,
            hash: Mutex::new(hash),
        })
    }

    /// Re-read, validate and apply the config file; `why` names the trigger in the log. The
    /// error lists every problem (the running config is kept).
    pub fn reload(&self, why: &str) -> Result<Changes, Vec<String>> {
        let mut hash = crate::sync::lock(&self.hash);
        let result = self.apply();
        match &result {
            Ok(changes) => {
                self.metrics.config_reloads.with_label_values(&["applied"]).inc();
                if *hash != changes.hash {
                    let _ = self.metrics.config_info.remove_label_values(&[hash.as_str()]);
                }
                self.metrics.config_info.with_label_values(&[&changes.hash]).set(1);
                hash.clone_from(&changes.hash);
                tracing::info!(
                    trigger = why,
                    hash = %changes.hash,
                    routes_added = ?changes.routes.added,
                    routes_removed = ?changes.routes.removed,
                    routes_changed = ?changes.routes.changed,
                    pools_added = ?changes.pools.added,
                    pools_removed = ?changes.pools.removed,
                    pools_changed = ?changes.pools.changed,
                    objects_added = ?changes.objects.added,
                    objects_removed = ?changes.objects.removed,
                    removed_backends = ?changes.removed_backends,
                    closing = changes.closing,
                    restart_needed = ?changes.restart_needed,
                    "config reloaded"
                );
                if !changes.restart_needed.is_empty() {
                    tracing::warn!(keys = ?changes.restart_needed, "config reloaded, but these settings need a restart to apply");
                }
            }
            Err(errors) => {
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(trigger = why, ?errors, "config reload rejected; the running config is kept");
            }
        }
        result
    }

    fn apply(&self) -> Result<Changes, Vec<String>> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| vec![format!("cannot read the config file {}: {e}", self.path.display())])?;
        let config =
            crate::config::load(&self.path).map_err(|e| e.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        let hash = hash_of(&bytes);
        let old = self.current.load_full();
        let (o, n) = (&*old.config, &config);
        let mut changes = Changes {
            hash: hash.clone(),
            routes: Diff::of(&o.routes, &n.routes, |r| &r.name),
            pools: Diff::of(&o.pools, &n.pools, |p| &p.name),
            objects: Diff::of(&o.objects, &n.objects, |ns| &ns.name),
            restart_needed: restart_needed(o, n),
            ..Changes::default()
        };
        // The listeners' certificates are read (and checked) before anything is swapped.
        let mut pairs = Vec::new();
        let mut cert_errors = Vec::new();
        for c in &self.files.certs {
            match c.read() {
                Ok(p) => pairs.push(p),
                Err(e) => cert_errors.push(format!("listeners: TLS certificate {}: {e}", c.cert_path().display())),
            }
        }
        let mut verifiers = Vec::new();
        for c in &self.files.client_cas {
            match c.read() {
                Ok(v) => verifiers.push(v),
                Err(e) => {
                    cert_errors.push(format!("listeners: tls.client_auth.ca_file {}: {e}", c.ca_path().display()))
                }
            }
        }
        if !cert_errors.is_empty() {
            return Err(cert_errors);
        }
        let built = Snapshot::build(config, &self.parts, Some(&old)).map_err(|e| vec![format!("{e:#}")])?;
        for ns in &built.kept_namespaces {
            changes.restart_needed.push(format!("objects `{ns}` (kept as it runs: its live objects keep one owner)"));
            changes.objects.changed.retain(|c| c != ns);
        }
        let new = built.snapshot;
        // Commit: nothing below can fail.
        self.metrics.prepare(&crate::gateway::known_labels(&new.config));
        new.gatekeeper.caps.reconfigure(new.config.admission.clone());
        self.parts.usage.set_units(crate::billing::Units::new(new.config.billing_units.clone()));
        let before: BTreeSet<SocketAddr> = old.pools.addresses().into_iter().collect();
        let after: BTreeSet<SocketAddr> = new.pools.addresses().into_iter().collect();
        let close = new.config.drain_removed_backends;
        self.current.store(Arc::new(new));
        for (c, p) in self.files.certs.iter().zip(pairs) {
            c.install(p);
        }
        for (c, v) in self.files.client_cas.iter().zip(verifiers) {
            c.install(v);
        }
        changes.certificates = self.files.certs.len();
        changes.client_cas = self.files.client_cas.len();
        for addr in before.difference(&after) {
            changes.removed_backends.push(addr.to_string());
            if close {
                changes.closing += close_backend(&self.live, *addr, self.plan, "backend removed by a reload");
            }
        }
        Ok(changes)
    }
}

impl Reload for Reloader {
    fn reload(&self) -> Result<serde_json::Value, Vec<String>> {
        Reloader::reload(self, "api").map(|c| serde_json::to_value(c).unwrap_or_default())
    }
}

/// Reloads on SIGHUP (a Pingora background service: the signal handler lives as long as the
/// server runs).
pub struct OnHangup(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for OnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP: reload with POST /api/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    let reloader = self.0.clone();
                    // Building a snapshot reads files: off the runtime's workers.
                    let _ = tokio::task::spawn_blocking(move || reloader.reload("SIGHUP")).await;
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_added_removed_and_changed_items() {
        let old = [("a", 1), ("b", 1), ("c", 1)];
        let new = [("a", 1), ("b", 2), ("d", 1)];
        let d = Diff::of(&old, &new, |i| i.0);
        assert_eq!(d.added, ["d"]);
        assert_eq!(d.removed, ["c"]);
        assert_eq!(d.changed, ["b"]);
        assert!(Diff::of(&old, &old, |i| i.0).is_empty());
    }

    #[test]
    fn settings_a_snapshot_cannot_carry_need_a_restart() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml")).unwrap();
        let old = crate::config::parse(&text, "config.yaml").unwrap();
        let mut new = old.clone();
        assert!(restart_needed(&old, &new).is_empty());
        new.usage.default_tenant = Some("acme".into());
        new.routes.clear();
        assert!(restart_needed(&old, &new).is_empty(), "routes and the default tenant reload");
        new.threads += 1;
        new.usage.fsync_interval *= 2;
        new.admin = None;
        assert_eq!(restart_needed(&old, &new), ["server.threads", "admin", "usage"]);
    }

    #[test]
    fn the_hash_is_16_hex_digits_of_sha256() {
        assert_eq!(hash_of(b"abc"), "ba7816bf8f01cfea");
    }
}
