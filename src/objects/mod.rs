//! Objects: named, stateful endpoints where every client of one id reaches one instance.
//!
//! - `id.rs`: read and check the id of a request (warm, pure).
//! - `placement.rs`: rendezvous hashing, id → owner host (warm, pure).
//! - `registry.rs`: live placements, leases, eviction on host failure (warm).
//! - `accounting.rs`: per-object connected and active time → object usage records (warm).
//! - `session.rs`: a client of a built-in object, terminated inside weir (warm): `echo.rs` (the
//!   echo object), `room.rs` (broadcast rooms) with `kept.rs` (the in-memory history, numbered,
//!   and the `?since=` selection), `history.rs` (their history in a file per room, the default)
//!   and `history_pg.rs` (their history shared in PostgreSQL, with `cluster.history`).
//!
//! Cold path: `Objects::build` creates one `Namespace` runtime per `objects[]` entry, with the
//! health checks of its hosts (Pingora load balancers used only for probing, run by the
//! `HealthRunner`; their reports feed the registry) or the state of its built-in kind. A reload
//! builds only the namespaces it adds: one that stays keeps its runtime (its live placements,
//! its room store), so an object never has two owners.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod accounting;
pub mod echo;
pub mod history;
pub mod history_pg;
pub mod id;
pub mod kept;
pub mod placement;
pub mod registry;
pub mod room;
pub mod session;

use crate::billing::UsageLog;
use crate::config::{Backend, BuiltinObject, Config, Namespace as NamespaceConfig, ObjectKind, Pool, Selection};
use crate::metrics::Metrics;
use crate::pools::{HealthListener, HealthRunner, Pools};
use registry::Registry;
use room::Rooms;
use std::sync::Arc;

/// Default time a host whose connection failed stays ineligible when it has no health check.
const DOWN_WITHOUT_HEALTH_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// One namespace at run time.
pub struct Namespace {
    /// Its configuration.
    pub config: NamespaceConfig,
    /// Its live placements.
    pub registry: Arc<Registry>,
    /// The built-in object that serves it, if it is built in.
    pub builtin: Option<session::Object>,
    /// Its hosts' health checks (running while the namespace exists).
    _probes: Option<Pools>,
}

/// Every namespace of one config snapshot, indexed like `Config::objects`.
pub struct Objects {
    namespaces: Vec<Arc<Namespace>>,
}

impl Objects {
    /// Build the namespaces (their hosts' health checks run on `runner`). With `previous` (a
    /// reload's running snapshot), a namespace it has under the same name is kept as it runs;
    /// the names of those whose settings changed are returned (they need a restart).
    pub fn build(
        config: &Config,
        usage: &Arc<UsageLog>,
        metrics: &Metrics,
        runner: &HealthRunner,
        previous: Option<&Objects>,
    ) -> anyhow::Result<(Objects, Vec<String>)> {
        let mut namespaces = Vec::new();
        let mut kept_changed = Vec::new();
        // With `cluster.history`, every room namespace built here shares one PostgreSQL store
        // (connected on first use).
        let shared_history = config
            .cluster
            .as_ref()
            .and_then(|c| c.history.as_ref())
            .map(|h| Arc::new(history_pg::PgHistory::new(&h.postgres, h.ca_file.clone())));
        for ns in &config.objects {
            if let Some(old) = previous.and_then(|p| p.namespaces.iter().find(|o| o.config.name == ns.name)) {
                if format!("{:?}", old.config) != format!("{ns:?}") {
                    kept_changed.push(ns.name.clone());
                }
                namespaces.push(old.clone());
                continue;
            }
            let (builtin, hosts, down_for) = match &ns.kind {
                ObjectKind::Builtin(b) => {
                    let (name, object) = match b {
                        BuiltinObject::Echo => {
                            ("builtin:echo", session::Object::Echo { max_message: config.echo.max_message })
                        }
                        BuiltinObject::Room(room) => {
                            let dir = config.data_dir.join("rooms").join(&ns.name);
                            let shared = shared_history.clone();
                            let rooms = Rooms::new(&ns.name, *room, &dir, shared, metrics).map_err(|e| {
                                anyhow::anyhow!(
                                    "objects `{}`: cannot open the room store {}: {e}",
                                    ns.name,
                                    dir.display()
                                )
                            })?;
                            ("builtin:room", session::Object::Room(Arc::new(rooms)))
                        }
                    };
                    (Some((name.to_string(), object)), Vec::new(), DOWN_WITHOUT_HEALTH_CHECK)
                }
                ObjectKind::Hosts { hosts, health, .. } => {
                    (None, hosts.clone(), health.interval().unwrap_or(DOWN_WITHOUT_HEALTH_CHECK))
                }
            };
            let registry = Arc::new(Registry::new(
                &ns.name,
                builtin.as_ref().map(|(name, _)| name.clone()),
                &hosts,
                ns.idle_window,
                down_for,
                usage.clone(),
                metrics.clone(),
            ));
            let mut probes = None;
            if let ObjectKind::Hosts { hosts, health, tls } = &ns.kind {
                let pool = Pool {
                    name: ns.name.clone(),
                    backends: hosts.iter().map(|(_, a)| Backend::Addr(*a)).collect(),
                    selection: Selection::RoundRobin,
                    health: health.clone(),
                    // The registry moves an unhealthy host's objects (its own listener below).
                    close_unhealthy: true,
                    tls: tls.clone(),
                };
                let r = registry.clone();
                let listener: HealthListener = Arc::new(move |addr, healthy| r.health_changed(addr, healthy));
                probes = Some(Pools::build_with(
                    &[pool],
                    &|b| match b {
                        Backend::Addr(a) => *a,
                        Backend::Builtin(_) => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                    },
                    metrics,
                    &[Some(listener)],
                    runner,
                    None,
                    true,
                )?);
            }
            namespaces.push(Arc::new(Namespace {
                config: ns.clone(),
                registry,
                builtin: builtin.map(|(_, o)| o),
                _probes: probes,
            }));
        }
        Ok((Objects { namespaces }, kept_changed))
    }

    /// Every namespace, in config order.
    pub fn all(&self) -> &[Arc<Namespace>] {
        &self.namespaces
    }

    /// The namespace named `name`.
    pub fn find(&self, name: &str) -> Option<&Arc<Namespace>> {
        self.namespaces.iter().find(|n| n.config.name == name)
    }

    /// Namespace `i` (an index from a route's target).
    pub fn get(&self, i: usize) -> Option<&Arc<Namespace>> {
        self.namespaces.get(i)
    }
}
