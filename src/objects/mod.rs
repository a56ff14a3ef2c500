//! Objects: named, stateful endpoints where every client of one id reaches one instance.
//!
//! - `id.rs`: read and check the id of a request (warm, pure).
//! - `placement.rs`: rendezvous hashing, id → owner host (warm, pure).
//! - `registry.rs`: live placements, leases, eviction on host failure (warm).
//! - `accounting.rs`: per-object connected and active time → object usage records (warm).
//! - `session.rs`: a client of a built-in object, terminated inside weir (warm): `echo.rs` (the
//!   echo object), `room.rs` (broadcast rooms) with `history.rs` (their durable history).
//!
//! Cold path: `Objects::build` creates one `Namespace` runtime per `objects[]` entry, with the
//! health services of its hosts (Pingora load balancers used only for probing; their reports
//! feed the registry) or the state of its built-in kind.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod accounting;
pub mod echo;
pub mod history;
pub mod id;
pub mod placement;
pub mod registry;
pub mod room;
pub mod session;

use crate::billing::UsageLog;
use crate::config::{Backend, BuiltinObject, Config, Namespace as NamespaceConfig, ObjectKind, Pool, Selection};
use crate::metrics::Metrics;
use crate::pools::{HealthListener, HealthService, Pools};
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
}

/// Every namespace, indexed like `Config::objects`.
pub struct Objects {
    namespaces: Vec<Namespace>,
}

impl Objects {
    /// Build the namespaces; returns them with the health services of their hosts.
    pub fn build(
        config: &Config,
        usage: &Arc<UsageLog>,
        metrics: &Metrics,
    ) -> anyhow::Result<(Objects, Vec<HealthService>)> {
        let mut namespaces = Vec::new();
        let mut services = Vec::new();
        for ns in &config.objects {
            let (builtin, hosts, down_for) = match &ns.kind {
                ObjectKind::Builtin(b) => {
                    let (name, object) = match b {
                        BuiltinObject::Echo => {
                            ("builtin:echo", session::Object::Echo { max_message: config.echo.max_message })
                        }
                        BuiltinObject::Room(room) => {
                            let dir = config.data_dir.join("rooms").join(&ns.name);
                            let rooms = Rooms::new(&ns.name, *room, &dir, metrics).map_err(|e| {
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
                ObjectKind::Hosts { hosts, health } => {
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
            if let ObjectKind::Hosts { hosts, health } = &ns.kind {
                let pool = Pool {
                    name: ns.name.clone(),
                    backends: hosts.iter().map(|(_, a)| Backend::Addr(*a)).collect(),
                    selection: Selection::RoundRobin,
                    health: health.clone(),
                };
                let r = registry.clone();
                let listener: HealthListener = Arc::new(move |addr, healthy| r.health_changed(addr, healthy));
                let (_, health_services) = Pools::build_with(
                    &[pool],
                    &|b| match b {
                        Backend::Addr(a) => *a,
                        Backend::Builtin(_) => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                    },
                    metrics,
                    &[Some(listener)],
                )?;
                services.extend(health_services);
            }
            namespaces.push(Namespace { config: ns.clone(), registry, builtin: builtin.map(|(_, o)| o) });
        }
        Ok((Objects { namespaces }, services))
    }

    /// Namespace `i` (an index from a route's target).
    pub fn get(&self, i: usize) -> Option<&Namespace> {
        self.namespaces.get(i)
    }
}
