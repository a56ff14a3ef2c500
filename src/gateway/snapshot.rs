//! `Snapshot`: what requests are served with that a reload may change (routes, pools and their
//! backends, object namespaces, limits, auth, origins, caps settings, the pricing units' chunk
//! sizes), built from one config and swapped as one.
//!
//! Cold path: `Snapshot::build` at startup and at every reload (`crate::reload`). Warm path:
//! a request loads the snapshot in force once, when its head is read, and keeps it to its 101;
//! an open connection keeps what its snapshot gave it (its backend, its limits, its object's
//! owner), so a reload never touches it. Parts that did not change are shared with the running
//! snapshot rather than rebuilt: a pool keeps its health state, a namespace its live objects
//! and room store, the caps their counts. Each route's connection metric handles are resolved
//! here too (`route_handles`), so a connection clones them rather than looking them up.

use crate::admission::Gatekeeper;
use crate::billing::{Name, UsageLog};
use crate::config::{Backend, BuiltinKind, Config, Limits, RateLimit, Route, Target};
use crate::metrics::{Metrics, Place, RouteHandles};
use crate::objects::Objects;
use crate::pools::{HealthListener, HealthRunner, Pools};
use crate::relay::guard::{Bucket, Guards, Keepalive, Rate, RateAction};
use crate::relay::scanner::Chunks;
use crate::routing::RouteTable;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The snapshot in force; swapped whole by a reload.
pub type Current = Arc<arc_swap::ArcSwap<Snapshot>>;

/// One config's serving state.
pub struct Snapshot {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Its routes.
    pub routes: RouteTable,
    /// Its backend pools, indexed like `config.pools`.
    pub pools: Arc<Pools>,
    /// Its object namespaces, indexed like `config.objects`.
    pub objects: Arc<Objects>,
    /// Its routes' authentication and the process's caps.
    pub gatekeeper: Gatekeeper,
    /// Per-message chunk sizes its pricing units need from the scanners.
    pub chunks: Chunks,
    /// Each route's connection metric handles, indexed like `routes`.
    pub route_handles: Vec<RouteHandles>,
    /// Each route's guards, indexed like `routes`, shared by its connections.
    pub route_guards: Vec<Arc<Guards>>,
    /// Each route's names as its connections' identities carry them, indexed like `routes`.
    pub route_names: Vec<RouteNames>,
    /// `usage.default_tenant`, as identities carry it.
    pub default_tenant: Option<Name>,
}

/// A route's names for connection identities, made once per snapshot so that a connection
/// holds references to them rather than copies.
pub struct RouteNames {
    /// The route's name.
    pub route: Name,
    /// Its pool's name, on pool routes.
    pub pool: Option<Name>,
    /// Its tenant (`routes[].tenant`), if set.
    pub tenant: Option<Name>,
}

/// What building a snapshot takes from the running process.
pub struct Parts {
    /// The usage log (object namespaces write their records to it).
    pub usage: Arc<UsageLog>,
    /// Metric families.
    pub metrics: Metrics,
    /// Where health checks run.
    pub runner: Arc<HealthRunner>,
    /// The built-in backends bound at startup, by kind.
    pub builtins: HashMap<BuiltinKind, SocketAddr>,
    /// Told when a pool backend's health changes.
    pub on_health: Option<HealthListener>,
}

impl Parts {
    /// The address of a configured backend (`None`: a built-in kind not bound at startup).
    pub fn resolve(&self, b: &Backend) -> Option<SocketAddr> {
        match b {
            Backend::Addr(a) => Some(*a),
            Backend::Builtin(kind) => self.builtins.get(kind).copied(),
        }
    }
}

/// A built snapshot, with what it could not take over from the running one.
pub struct Built {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Namespaces whose settings changed: they keep running as they are until a restart (a
    /// namespace's live objects must keep one owner).
    pub kept_namespaces: Vec<String>,
}

impl Snapshot {
    /// Build the snapshot of `config`, sharing what did not change with `previous`. The error
    /// names what failed (a JWT key file, a room store, a built-in backend not bound).
    pub fn build(config: Config, parts: &Parts, previous: Option<&Snapshot>) -> anyhow::Result<Built> {
        let unbound: Vec<String> = config
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
            .filter(|(_, b)| parts.resolve(b).is_none())
            .map(|(p, b)| {
                format!(
                    "pools `{}`: {} was not in use at startup: restart weir to add it",
                    p.name,
                    crate::pools::backend_label(b)
                )
            })
            .collect();
        if !unbound.is_empty() {
            anyhow::bail!(unbound.join("; "));
        }
        let resolve = |b: &Backend| parts.resolve(b).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let listeners: Vec<Option<HealthListener>> =
            config.pools.iter().map(|p| parts.on_health.clone().filter(|_| p.close_unhealthy)).collect();
        let routes = RouteTable::new(&config);
        let gatekeeper = Gatekeeper::new(routes.iter(), &config.admission, previous.map(|p| &p.gatekeeper.caps))
            .map_err(|e| anyhow::anyhow!(e))?;
        let pools = Pools::build_with(
            &config.pools,
            &resolve,
            &parts.metrics,
            &listeners,
            &parts.runner,
            previous.map(|p| &*p.pools),
            false,
        )
        .map_err(|e| anyhow::anyhow!("building the backend pools: {e}"))?;
        let (objects, kept_namespaces) =
            Objects::build(&config, &parts.usage, &parts.metrics, &parts.runner, previous.map(|p| &*p.objects))?;
        let chunks = crate::billing::units::chunks(&config.billing_units);
        let places: Vec<Place> = routes.iter().map(|r| place(&config, &objects, r)).collect();
        let route_handles = routes.iter().zip(&places).map(|(r, p)| parts.metrics.route_handles(&r.name, p)).collect();
        let route_guards = routes.iter().map(|r| Arc::new(guards(&r.limits))).collect();
        let route_names = routes
            .iter()
            .zip(&places)
            .map(|(r, p)| RouteNames {
                route: Name::from(r.name.as_str()),
                pool: (!p.pool.is_empty()).then(|| Name::from(p.pool.as_str())),
                tenant: r.tenant.as_deref().map(Name::from),
            })
            .collect();
        let default_tenant = config.usage.default_tenant.as_deref().map(Name::from);
        let snapshot = Snapshot {
            config: Arc::new(config),
            routes,
            pools: Arc::new(pools),
            objects: Arc::new(objects),
            gatekeeper,
            chunks,
            route_handles,
            route_guards,
            route_names,
            default_tenant,
        };
        Ok(Built { snapshot, kept_namespaces })
    }

    /// What serves `route` (its metric labels).
    pub fn place(&self, route: &Route) -> Place {
        place(&self.config, &self.objects, route)
    }
}

/// What serves `route` under `config` and its namespaces `objects`.
fn place(config: &Config, objects: &Objects, route: &Route) -> Place {
    match route.target {
        Target::Pool(i) => Place::pool(config.pools.get(i).map_or("", |p| p.name.as_str())),
        Target::Object(i) => Place::namespace(objects.get(i).map_or("", |ns| ns.config.name.as_str())),
    }
}

/// The relay's guards for a route's connections under `limits` (each connection takes its own
/// share of `lifetime_jitter` when its relay starts).
pub fn guards(limits: &Limits) -> Guards {
    let rate = |d: usize| {
        let bucket = |r: &RateLimit| Bucket { per_second: r.per_second as f64, burst: r.burst as f64 };
        let messages = limits.message_rate.filter(|r| r.from[d]);
        let bytes = limits.bandwidth.filter(|r| r.from[d]);
        let throttle = messages.or(bytes)?.throttle;
        Some(Rate {
            messages: messages.as_ref().map(bucket),
            bytes: bytes.as_ref().map(bucket),
            action: if throttle { RateAction::Throttle } else { RateAction::Close },
        })
    };
    Guards {
        idle_timeout: limits.idle_timeout,
        control_is_activity: limits.control_frames_are_activity,
        lifetime: limits.max_lifetime,
        lifetime_jitter: limits.lifetime_jitter,
        lifetime_restart: limits.lifetime_restart,
        close_timeout: limits.close_timeout,
        keepalive: limits.keepalive.map(|k| Keepalive { interval: k.interval, timeout: k.timeout, backend: k.backend }),
        rates: [rate(0), rate(1)],
    }
}
